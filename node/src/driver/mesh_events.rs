//! Events across the mesh: the group key that seals them, their gossip, and the
//! membership and leader changes every node reads from its Registry copy.
//!
//! ```text
//!   president: members without the current key ─► ShareGroupKey (each wrapped for itself)
//!              a recipient gone (left, evicted)  ─► RotateGroupKey (new key for those left)
//!   every node: its wrapped keys in the Registry ─► unwrap ─► inbox (open) + newest (seal)
//!   a role decides or commits an event ─► own bus + gossip on `all` or `state/<name>`,
//!                                         sealed under the newest group key
//!   gossip opened (a Notification) ─► own bus, with its origin and state
//! ```
//!
//! A member evicted or gone gets no key of any epoch after it left: the president rotates
//! as soon as a recipient of the current key is no longer a member, and a key is wrapped
//! (HPKE) for each recipient alone. Events are best effort (gossip): the Registry and
//! the Ledgers, not the stream, are the record.

use std::collections::{BTreeMap, BTreeSet};

use aamas_consensus::registry::RegistryCommand;
use aamas_protocol::{Event, GroupKey, NodeKey, Notification, Opened, Payload, PublicIdentity};

use crate::driver::runtime::{Node, now_ms};
use crate::events::{BusEvent, Role};
use crate::messaging::Authority;
use crate::metrics::labels;

/// Most members a ShareGroupKey gives the key to at once (a Registry entry stays small
/// while a thousand members join).
pub const SHARE_BATCH: usize = 256;

/// Where an event travels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every member (`all`).
    All,
    /// The members of a state, and every node that serves an event stream.
    State(String),
}

/// What a node last saw of the hierarchy in its Registry copy.
#[derive(Debug, Default)]
pub struct HierarchySeen {
    president: Option<NodeKey>,
    governors: BTreeMap<String, NodeKey>,
    members: Option<BTreeSet<NodeKey>>,
}

/// What the president does about the group key.
#[derive(Debug, PartialEq, Eq)]
enum KeyPlan {
    /// Nothing to do.
    Keep,
    /// A new epoch for every member: none yet, or a recipient of the current key left.
    Rotate,
    /// Give the current key to these members.
    Share(Vec<NodeKey>),
}

/// Decides from the current epoch's recipients and the active members.
fn plan_key(epoch: u64, recipients: &BTreeSet<NodeKey>, members: &BTreeSet<NodeKey>) -> KeyPlan {
    if members.is_empty() {
        return KeyPlan::Keep;
    }
    if epoch == 0 || !recipients.is_subset(members) {
        return KeyPlan::Rotate;
    }
    let missing: Vec<NodeKey> = members
        .difference(recipients)
        .take(SHARE_BATCH)
        .copied()
        .collect();
    if missing.is_empty() {
        KeyPlan::Keep
    } else {
        KeyPlan::Share(missing)
    }
}

impl Node {
    /// The president keeps the group key: rotated when a recipient left, shared with
    /// members admitted since. The key of a rotation is made and wrapped here.
    pub(crate) async fn keep_group_key(&self) {
        let mesh = self.mesh.mesh;
        let look = self
            .registry(|registry| {
                let epoch = registry.group_key_epoch();
                let current = registry.group_keys(epoch);
                let recipients: BTreeSet<NodeKey> = current
                    .map(|keys| keys.keys().copied().collect())
                    .unwrap_or_default();
                let mine = current.and_then(|keys| keys.get(&self.identity.node_key()).cloned());
                let members: BTreeMap<NodeKey, PublicIdentity> = registry
                    .active_members()
                    .map(|(key, member)| (*key, member.identity))
                    .collect();
                (epoch, recipients, mine, members)
            })
            .await;
        let Some((epoch, recipients, mine, members)) = look else {
            return;
        };
        let keys: BTreeSet<NodeKey> = members.keys().copied().collect();
        let plan = plan_key(epoch, &recipients, &keys);
        // Sharing needs the current key: the one this node holds, else its own wrapped
        // entry opened (only then, not every round); a president without it rotates.
        let current = match plan {
            KeyPlan::Share(_) => {
                let held = self
                    .group_key
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .as_ref()
                    .filter(|held| held.epoch() == epoch)
                    .map(copy);
                held.or_else(|| {
                    mine.and_then(|wrapped| GroupKey::unwrap(mesh, epoch, &wrapped, &self.identity))
                })
            }
            _ => None,
        };
        let plan = match plan {
            KeyPlan::Share(_) if current.is_none() => KeyPlan::Rotate,
            plan => plan,
        };
        let (command, what) = match plan {
            KeyPlan::Keep => return,
            KeyPlan::Rotate => {
                let Ok(key) = GroupKey::generate(epoch + 1) else {
                    tracing::warn!("no randomness for a new group key");
                    return;
                };
                let wrapped = wrap_for(&key, mesh, members.values());
                (
                    RegistryCommand::RotateGroupKey {
                        epoch: epoch + 1,
                        wrapped,
                    },
                    "rotated",
                )
            }
            KeyPlan::Share(missing) => {
                let Some(key) = current else { return };
                let wrapped = wrap_for(&key, mesh, missing.iter().filter_map(|m| members.get(m)));
                (RegistryCommand::ShareGroupKey { epoch, wrapped }, "shared")
            }
        };
        let request = format!("group-key {what} {epoch} {}", keys.len());
        match self.propose(&[request.as_bytes()], command).await {
            Ok(()) => tracing::info!(epoch, members = keys.len(), "group key {what}"),
            Err(error) => tracing::debug!(%error, "group key not {what}"),
        }
    }

    /// Every node takes the group keys the Registry wrapped for it that it does not hold
    /// yet: into the inbox (to open events) and, the newest, for sealing.
    pub(crate) async fn learn_group_keys(&self) {
        let me = self.identity.node_key();
        let held = self.group_key_epoch();
        let wrapped = self
            .registry(|registry| {
                let epoch = registry.group_key_epoch();
                [epoch.saturating_sub(1), epoch]
                    .into_iter()
                    .filter(|epoch| *epoch > held)
                    .filter_map(|epoch| {
                        Some((epoch, registry.group_keys(epoch)?.get(&me)?.clone()))
                    })
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
        for (epoch, wrapped) in wrapped {
            let Some(key) = GroupKey::unwrap(self.mesh.mesh, epoch, &wrapped, &self.identity)
            else {
                tracing::warn!(epoch, "the group key wrapped for this node does not open");
                continue;
            };
            self.inbox.insert_group_key(copy(&key));
            let mut newest = self
                .group_key
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if newest.as_ref().is_none_or(|held| held.epoch() < epoch) {
                *newest = Some(key);
                self.metrics.group_key_epoch.set(epoch as i64);
                tracing::debug!(epoch, "group key taken");
            }
        }
    }

    /// The newest group-key epoch this node holds (0: none).
    pub fn group_key_epoch(&self) -> u64 {
        self.group_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map_or(0, GroupKey::epoch)
    }

    /// Publishes an event this node decided or committed: on its own bus, and to the
    /// mesh sealed under the group key (counted; not sent before this node holds one).
    pub(crate) async fn emit(&self, event: Event, scope: Scope) {
        let state = match &scope {
            Scope::All => None,
            Scope::State(state) => Some(state.clone()),
        };
        let origin = self.identity.node_key().peer_id();
        self.events.publish(
            now_ms(),
            BusEvent::Mesh {
                event: event.clone(),
                origin,
                state,
            },
            &self.metrics,
        );
        let key = self
            .group_key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(copy);
        let outcome = match key {
            None => "no_group_key",
            Some(key) => {
                let topic = match &scope {
                    Scope::All => self.topics.all(),
                    Scope::State(state) => self.topics.state(state),
                };
                let payload = Payload::Notification(Notification { event });
                match self
                    .publish(&topic, &payload, aamas_protocol::To::Group(&key))
                    .await
                {
                    Ok(()) => "sent",
                    Err(error) => {
                        tracing::debug!(%error, "event not gossiped");
                        "failed"
                    }
                }
            }
        };
        self.metrics
            .events_gossiped
            .get_or_create(&labels(&[("outcome", outcome)]))
            .inc();
    }

    /// Puts an event opened from gossip on this node's bus.
    pub(crate) fn take_event(&self, opened: &Opened) {
        let Payload::Notification(Notification { event }) = &opened.payload else {
            return;
        };
        let prefix = self.topics.state("");
        let state = opened
            .header
            .topic
            .strip_prefix(&prefix)
            .map(str::to_string);
        self.events.publish_from(
            now_ms(),
            opened.header.created_ms,
            BusEvent::Mesh {
                event: event.clone(),
                origin: opened.header.sender.peer_id(),
                state,
            },
            &self.metrics,
        );
    }

    /// Subscribes to every state's topic, so that this node streams the tasks' events
    /// of states it is not a member of (called while it serves an event stream).
    pub(crate) async fn follow_state_events(&self) {
        let states: Vec<String> = self
            .registry(|registry| registry.states().keys().cloned().collect())
            .await
            .unwrap_or_default();
        for state in states {
            let new = self
                .states_followed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(state.clone());
            if new {
                self.handle.subscribe(&self.topics.state(&state)).await;
            }
        }
    }

    /// Compares the hierarchy in the Registry with what this node saw last, and puts
    /// the changes on its bus: a new president or governor, members admitted or gone.
    /// `members` is `None` when the members did not change.
    pub(crate) fn note_hierarchy(&self, authority: &Authority, members: Option<&[PublicIdentity]>) {
        let members: Option<BTreeSet<NodeKey>> =
            members.map(|members| members.iter().map(|member| member.node).collect());
        let mut seen = self
            .hierarchy_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changes = hierarchy_changes(&seen, authority, members.as_ref());
        seen.president = authority.president;
        seen.governors.clone_from(&authority.governors);
        if members.is_some() {
            seen.members = members;
        }
        drop(seen);
        let now = now_ms();
        for change in changes {
            self.events.publish(now, change, &self.metrics);
        }
    }
}

/// The changes from `seen` to the hierarchy now; none for what `seen` had not seen yet.
fn hierarchy_changes(
    seen: &HierarchySeen,
    authority: &Authority,
    members: Option<&BTreeSet<NodeKey>>,
) -> Vec<BusEvent> {
    let mut changes = Vec::new();
    let first = seen.members.is_none() && seen.president.is_none() && seen.governors.is_empty();
    if first {
        return changes;
    }
    if seen.president != authority.president {
        changes.push(BusEvent::LeaderChange {
            role: Role::President,
            holder: authority.president.map(|key| key.peer_id()),
        });
    }
    let states: BTreeSet<&String> = seen
        .governors
        .keys()
        .chain(authority.governors.keys())
        .collect();
    for state in states {
        let now = authority.governors.get(state);
        if seen.governors.get(state) != now {
            changes.push(BusEvent::LeaderChange {
                role: Role::Governor {
                    state: state.clone(),
                },
                holder: now.map(NodeKey::peer_id),
            });
        }
    }
    if let (Some(before), Some(now)) = (&seen.members, members) {
        for gone in before.difference(now) {
            changes.push(BusEvent::Membership {
                member: gone.peer_id(),
                joined: false,
            });
        }
        for new in now.difference(before) {
            changes.push(BusEvent::Membership {
                member: new.peer_id(),
                joined: true,
            });
        }
    }
    changes
}

/// `key` wrapped for each of `members` (a member whose key cannot be wrapped is left
/// out, and warned about: it has an invalid encryption key).
fn wrap_for<'a>(
    key: &GroupKey,
    mesh: aamas_protocol::MeshId,
    members: impl Iterator<Item = &'a PublicIdentity>,
) -> BTreeMap<NodeKey, Vec<u8>> {
    members
        .filter_map(|member| match key.wrap_for(mesh, member) {
            Ok(wrapped) => Some((member.node, wrapped)),
            Err(error) => {
                tracing::warn!(node = %member.node, %error, "group key not wrapped");
                None
            }
        })
        .collect()
}

fn copy(key: &GroupKey) -> GroupKey {
    GroupKey::from_bytes(key.epoch(), *key.secret_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn keys(ns: &[u8]) -> BTreeSet<NodeKey> {
        ns.iter().map(|n| key(*n)).collect()
    }

    #[test]
    fn the_key_rotates_when_a_recipient_left_and_is_shared_with_newcomers() {
        assert_eq!(plan_key(0, &keys(&[]), &keys(&[])), KeyPlan::Keep);
        assert_eq!(plan_key(0, &keys(&[]), &keys(&[1])), KeyPlan::Rotate);
        assert_eq!(plan_key(3, &keys(&[1, 2]), &keys(&[1, 2])), KeyPlan::Keep);
        assert_eq!(
            plan_key(3, &keys(&[1, 2]), &keys(&[1, 2, 3])),
            KeyPlan::Share(vec![key(3)])
        );
        // Evicted: 2 must not read what follows, newcomers or not.
        assert_eq!(plan_key(3, &keys(&[1, 2]), &keys(&[1, 3])), KeyPlan::Rotate);
        let many: Vec<u8> = (0..=255).collect();
        match plan_key(1, &keys(&[0]), &keys(&many)) {
            KeyPlan::Share(missing) => assert_eq!(missing.len(), SHARE_BATCH.min(255)),
            other => panic!("expected a share, got {other:?}"),
        }
    }

    #[test]
    fn hierarchy_changes_name_new_leaders_and_members_after_the_first_look() {
        let authority = |president: u8, governor: u8| Authority {
            president: Some(key(president)),
            governors: [("technical".to_string(), key(governor))].into(),
            ..Authority::default()
        };
        let first = HierarchySeen::default();
        assert!(hierarchy_changes(&first, &authority(1, 2), Some(&keys(&[1, 2]))).is_empty());
        let seen = HierarchySeen {
            president: Some(key(1)),
            governors: [("technical".to_string(), key(2))].into(),
            members: Some(keys(&[1, 2, 3])),
        };
        assert!(hierarchy_changes(&seen, &authority(1, 2), None).is_empty());
        let changes = hierarchy_changes(&seen, &authority(2, 3), Some(&keys(&[2, 3, 4])));
        let labels: Vec<(&str, Option<&str>)> = changes
            .iter()
            .map(|change| (change.label(), change.state()))
            .collect();
        assert_eq!(
            labels,
            vec![
                ("leader_change", None),
                ("leader_change", Some("technical")),
                ("membership", None),
                ("membership", None),
            ]
        );
        assert_eq!(
            changes[2],
            BusEvent::Membership {
                member: key(1).peer_id(),
                joined: false
            }
        );
        assert_eq!(
            changes[3],
            BusEvent::Membership {
                member: key(4).peer_id(),
                joined: true
            }
        );
    }
}
