//! The courier: work messages to one member travel together.
//!
//! ```text
//!   send_work(to, work) ─► lane (to, kind) ─► a carrier free? ─► one envelope, 1..=256 messages
//!                          waits (bounded)     else the next       └─► one answer per message
//!                                              carrier takes it
//! ```
//!
//! Under load a mayor hands hundreds of attempts to five workers and proposes hundreds
//! of writes to one governor within a millisecond; one envelope each meant a seal, an
//! open and a request-response stream per message. The courier keeps at most
//! [`MAX_CARRIERS`] envelopes in flight per lane (a member and a message kind, since an
//! envelope's header names one kind); what is queued meanwhile leaves together in the
//! next one, so a message alone (the idle case) leaves at once and a burst costs a few
//! envelopes. Each message still gets its own answer: the receiver handles them one by
//! one, as if they had come alone, and answers each.
//!
//! Bounds: a batch holds at most [`MAX_BATCH_ITEMS`] messages and [`MAX_BATCH_BYTES`]
//! of them (a larger message travels alone); a lane queues at most [`MAX_WAITING`],
//! beyond which a message is refused at once ([`Backlogged`]) and its sender retries as
//! for any undelivered message.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use aamas_protocol::NodeKey;
use tokio::sync::oneshot;

/// Most messages in one envelope.
pub const MAX_BATCH_ITEMS: usize = 256;
/// Most encoded bytes of the messages in one envelope; one larger message travels
/// alone. Well under the envelope's 1 MiB bound.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
/// Envelopes in flight to one lane at once.
pub const MAX_CARRIERS: usize = 2;
/// Messages one lane holds waiting for a carrier.
pub const MAX_WAITING: usize = 4_096;

/// A lane: the recipient and whether its messages are Commands (else Reports).
pub type Lane = (NodeKey, bool);

/// A lane already holds [`MAX_WAITING`] messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_WAITING} work messages already wait for this member")]
pub struct Backlogged;

/// One queued message: its encoding and where its answer goes.
#[derive(Debug)]
pub struct Parcel<A> {
    /// The message, postcard.
    pub bytes: Vec<u8>,
    /// Its action (the envelope's, when it travels alone).
    pub action: &'static str,
    /// Its answer.
    pub reply: oneshot::Sender<A>,
}

#[derive(Debug)]
struct Queue<A> {
    waiting: VecDeque<Parcel<A>>,
    carriers: usize,
}

impl<A> Default for Queue<A> {
    fn default() -> Self {
        Self {
            waiting: VecDeque::new(),
            carriers: 0,
        }
    }
}

/// The lanes and what waits in them; `A` is a message's answer.
#[derive(Debug)]
pub struct Courier<A> {
    lanes: Mutex<BTreeMap<Lane, Queue<A>>>,
}

impl<A> Default for Courier<A> {
    fn default() -> Self {
        Self {
            lanes: Mutex::new(BTreeMap::new()),
        }
    }
}

impl<A> Courier<A> {
    /// Queues `parcel` on `lane`. `Ok(true)`: the caller must start a carrier for the lane
    /// (it holds one of the lane's [`MAX_CARRIERS`] slots until [`Courier::next`] returns
    /// `None`); `Ok(false)`: a carrier already running will take it.
    pub fn queue(&self, lane: Lane, parcel: Parcel<A>) -> Result<bool, Backlogged> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let queue = lanes.entry(lane).or_default();
        if queue.waiting.len() >= MAX_WAITING {
            return Err(Backlogged);
        }
        queue.waiting.push_back(parcel);
        if queue.carriers < MAX_CARRIERS {
            queue.carriers += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// The next batch for a carrier of `lane`: the oldest waiting messages, at most
    /// [`MAX_BATCH_ITEMS`] and [`MAX_BATCH_BYTES`] (the first one always). `None` when
    /// nothing waits: the carrier's slot is given back and it stops.
    pub fn next(&self, lane: Lane) -> Option<Vec<Parcel<A>>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let queue = lanes.get_mut(&lane)?;
        // A message whose sender stopped waiting (it timed out, or its node is stopping)
        // is not sent: its sender already counts it as undelivered and will try again.
        queue.waiting.retain(|parcel| !parcel.reply.is_closed());
        let Some(first) = queue.waiting.pop_front() else {
            queue.carriers = queue.carriers.saturating_sub(1);
            if queue.carriers == 0 {
                lanes.remove(&lane);
            }
            return None;
        };
        let mut bytes = first.bytes.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_ITEMS {
            match queue.waiting.front() {
                Some(parcel) if bytes + parcel.bytes.len() <= MAX_BATCH_BYTES => {
                    bytes += parcel.bytes.len();
                    batch.extend(queue.waiting.pop_front());
                }
                _ => break,
            }
        }
        Some(batch)
    }

    /// Messages waiting in every lane (for tests and the log).
    pub fn waiting(&self) -> usize {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.values().map(|queue| queue.waiting.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(byte: u8) -> Lane {
        (NodeKey([byte; 32]), true)
    }

    fn parcel(len: usize) -> (Parcel<u32>, oneshot::Receiver<u32>) {
        let (reply, answer) = oneshot::channel();
        (
            Parcel {
                bytes: vec![0; len],
                action: "test",
                reply,
            },
            answer,
        )
    }

    /// Queues a message of `len` bytes whose sender waits (its answer kept in `held`).
    fn send(
        courier: &Courier<u32>,
        lane: Lane,
        len: usize,
        held: &mut Vec<oneshot::Receiver<u32>>,
    ) -> Result<bool, Backlogged> {
        let (parcel, answer) = parcel(len);
        held.push(answer);
        courier.queue(lane, parcel)
    }

    #[test]
    fn a_message_alone_leaves_at_once_and_a_burst_leaves_together() {
        let mut held = Vec::new();
        let courier = Courier::default();
        // The first two messages each start a carrier; the rest wait for them.
        let starts: Vec<bool> = (0..10)
            .map(|_| send(&courier, lane(1), 10, &mut held).expect("room"))
            .collect();
        assert_eq!(starts[..3], [true, true, false]);
        assert!(starts[2..].iter().all(|start| !start));
        let first = courier.next(lane(1)).expect("a batch");
        assert_eq!(first.len(), 10, "everything queued leaves in one envelope");
        // Both carriers find nothing more and give their slots back.
        assert!(courier.next(lane(1)).is_none());
        assert!(courier.next(lane(1)).is_none());
        assert_eq!(courier.waiting(), 0);
        // The lane is free again: the next message starts a carrier.
        assert!(send(&courier, lane(1), 10, &mut held).expect("room"));
    }

    #[test]
    fn lanes_are_separate() {
        let courier = Courier::default();
        let mut held = Vec::new();
        assert!(send(&courier, lane(1), 1, &mut held).expect("room"));
        assert!(send(&courier, lane(2), 1, &mut held).expect("room"));
        assert!(send(&courier, (NodeKey([1; 32]), false), 1, &mut held).expect("room"));
        assert_eq!(courier.next(lane(2)).map(|batch| batch.len()), Some(1));
        assert_eq!(courier.waiting(), 2);
    }

    #[test]
    fn a_batch_is_bounded_by_count_and_bytes() {
        let courier = Courier::default();
        let mut held = Vec::new();
        for _ in 0..MAX_BATCH_ITEMS + 5 {
            let _ = send(&courier, lane(1), 1, &mut held).expect("room");
        }
        assert_eq!(
            courier.next(lane(1)).map(|b| b.len()),
            Some(MAX_BATCH_ITEMS)
        );
        assert_eq!(courier.next(lane(1)).map(|b| b.len()), Some(5));

        // Bytes: two of half the budget fit, the third waits; one over the budget travels alone.
        for len in [
            MAX_BATCH_BYTES / 2,
            MAX_BATCH_BYTES / 2,
            1,
            MAX_BATCH_BYTES * 2,
            1,
        ] {
            let _ = send(&courier, lane(1), len, &mut held).expect("room");
        }
        let sizes =
            |batch: Vec<Parcel<u32>>| batch.iter().map(|p| p.bytes.len()).collect::<Vec<_>>();
        assert_eq!(
            courier.next(lane(1)).map(sizes),
            Some(vec![MAX_BATCH_BYTES / 2, MAX_BATCH_BYTES / 2])
        );
        assert_eq!(courier.next(lane(1)).map(sizes), Some(vec![1]));
        assert_eq!(
            courier.next(lane(1)).map(sizes),
            Some(vec![MAX_BATCH_BYTES * 2])
        );
        assert_eq!(courier.next(lane(1)).map(sizes), Some(vec![1]));
    }

    #[test]
    fn a_full_lane_refuses_at_once() {
        let courier = Courier::default();
        let mut held = Vec::new();
        for _ in 0..MAX_WAITING {
            let _ = send(&courier, lane(1), 1, &mut held).expect("room");
        }
        assert_eq!(send(&courier, lane(1), 1, &mut held), Err(Backlogged));
        // Other lanes are not held up.
        assert!(send(&courier, lane(2), 1, &mut held).expect("room"));
    }

    #[test]
    fn a_message_whose_sender_stopped_waiting_is_not_sent() {
        let courier = Courier::default();
        let (gone, answer) = parcel(1);
        let mut held = Vec::new();
        let _ = courier.queue(lane(1), gone);
        drop(answer);
        let _ = send(&courier, lane(1), 2, &mut held);
        let sizes: Vec<usize> = courier
            .next(lane(1))
            .expect("a batch")
            .iter()
            .map(|p| p.bytes.len())
            .collect();
        assert_eq!(sizes, [2]);
    }

    #[test]
    fn answers_reach_each_sender() {
        let courier = Courier::default();
        let (first, mut a) = parcel(1);
        let (second, mut b) = parcel(1);
        let _ = courier.queue(lane(1), first);
        let _ = courier.queue(lane(1), second);
        for (i, parcel) in courier
            .next(lane(1))
            .expect("a batch")
            .into_iter()
            .enumerate()
        {
            let _ = parcel.reply.send(u32::try_from(i).expect("small"));
        }
        assert_eq!((a.try_recv(), b.try_recv()), (Ok(0), Ok(1)));
    }
}
