//! Property tests: any payload sealed for 1–16 recipients is opened by every recipient
//! and by no one else.

mod common;

use aamas_protocol::*;
use common::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_recipient_opens_and_no_one_else_does(
        payload in payload(),
        recipients in 1usize..=16,
        topic in "[a-z/0-9]{1,64}",
    ) {
        // Members 1..=recipients receive; the last member is a member but not a recipient.
        let mesh = Mesh::new(recipients + 2);
        let to: Vec<PublicIdentity> = (1..=recipients).map(|i| mesh.members[i].public()).collect();
        let mut sealer = mesh.sealer();
        let sealed = sealer.seal(&mesh.members[0], NOW_MS, Outgoing {
            topic: &topic,
            payload: &payload,
            to: To::Members(&to),
            ttl_ms: TTL_MS,
        }).expect("seal");

        for index in 1..=recipients {
            let mut receiver = mesh.receiver();
            let delivery = receiver
                .receive(NOW_MS + 1, &sealed.bytes, &mesh.members[index], &mesh.roster)
                .expect("recipient accepts");
            let Delivery::Opened(opened) = delivery else {
                panic!("recipient {index} could not open");
            };
            prop_assert_eq!(&opened.payload, &payload);
            prop_assert_eq!(opened.header.id, sealed.id);
            prop_assert_eq!(opened.header.sender, mesh.members[0].node_key());
            prop_assert_eq!(opened.header.kind, payload.kind());
            prop_assert_eq!(&opened.header.topic, &topic);
            prop_assert_eq!(
                opened.header.audience,
                Audience::Members(to.iter().map(|member| member.node).collect())
            );
        }

        // A member that is not a recipient validates and relays, but gets no payload.
        let bystander = &mesh.members[recipients + 1];
        let delivery = mesh.receiver()
            .receive(NOW_MS + 1, &sealed.bytes, bystander, &mesh.roster)
            .expect("bystander accepts for relay");
        prop_assert!(matches!(delivery, Delivery::Relay(ref header) if header.id == sealed.id));

        // Headers are readable by anyone (relays route on them); contents are not.
        let inspected = inspect(&sealed.bytes, Limits::default()).expect("structure");
        prop_assert_eq!(inspected.id, sealed.id);
    }

    #[test]
    fn group_messages_open_for_every_holder_of_the_epoch_key(payload in payload()) {
        let mut mesh = Mesh::new(4);
        let key = GroupKey::generate(7).expect("rng");
        let copy = GroupKey::from_bytes(7, *key.secret_bytes());
        mesh.roster.insert_group_key(copy);
        let sealed = mesh.sealer().seal(&mesh.members[0], NOW_MS, Outgoing {
            topic: "aamas/1/test/all",
            payload: &payload,
            to: To::Group(&key),
            ttl_ms: TTL_MS,
        }).expect("seal");
        for member in &mesh.members {
            let delivery = mesh.receiver()
                .receive(NOW_MS, &sealed.bytes, member, &mesh.roster)
                .expect("accept");
            let Delivery::Opened(opened) = delivery else { panic!("group message not opened") };
            prop_assert_eq!(&opened.payload, &payload);
            prop_assert_eq!(opened.header.audience, Audience::Group { epoch: 7 });
        }
    }
}
