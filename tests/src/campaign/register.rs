//! A full linearizability check of the campaign's register history.
//!
//! The search is Wing and Gong's, with Lowe's memo of the configurations already tried
//! (the set of operations linearized, and the register's value), as Porcupine and
//! Knossos run it. The history is a list of call and return events in time order; the
//! search takes the earliest call it can, in turn, as the next operation of a sequential
//! order, removes it from the list, and starts again from the list's head. Reaching a
//! return whose operation is still pending means no such order exists under the choices
//! made: it undoes the last one and tries the next call. A write without an answer
//! returns at infinity, so it may take effect at any time after it was sent, or never
//! (last, where nothing reads it).
//!
//! The search is exact, and exponential in the worst case: it gives up after a bounded
//! number of steps ([`STEP_LIMIT`]) and says so, rather than answering either way.

use std::collections::HashSet;

use serde::Serialize;

use super::RegisterOp;

/// Steps after which the search gives up. A campaign's history (a few hundred writes
/// and reads) takes a few thousand.
pub const STEP_LIMIT: u64 = 20_000_000;

/// What the search found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Some order of the operations is a sequential register's and keeps real time.
    Linearizable {
        /// Steps the search took.
        steps: u64,
    },
    /// No order is.
    NotLinearizable {
        /// The most operations any order tried placed, of all.
        placed: usize,
        /// The operation none of those orders could place before its answer came.
        stuck: String,
    },
    /// The search gave up after [`STEP_LIMIT`] steps.
    GaveUp,
}

impl Verdict {
    /// The verdict in a sentence.
    pub fn describe(&self) -> String {
        match self {
            Self::Linearizable { steps } => {
                format!("linearizable (a full search, {steps} steps)")
            }
            Self::NotLinearizable { placed, stuck } => format!(
                "not linearizable: no order of the register's history fits; the longest \
                 placed {placed} operations, and none could place {stuck}"
            ),
            Self::GaveUp => {
                format!("not decided: the linearizability search gave up after {STEP_LIMIT} steps")
            }
        }
    }
}

/// A call or return event of one operation.
#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    call: bool,
    /// Index of the matching event (the call's return, the return's call).
    pair: usize,
}

/// Checks `ops` (unique written values; a register that starts with no value, `None`)
/// for linearizability, trying at most `limit` steps.
pub fn check(ops: &[RegisterOp], limit: u64) -> Verdict {
    // A write without an answer whose value nobody read changes nothing: an order with
    // it is one without it, and one without it takes it last. Left in, every such write
    // could be placed at any point, which multiplies the configurations to try.
    let read: HashSet<u64> = ops
        .iter()
        .filter(|op| !op.write)
        .filter_map(|op| op.value)
        .collect();
    let kept: Vec<RegisterOp> = ops
        .iter()
        .filter(|op| {
            !op.write || op.complete_ms.is_some() || op.value.is_some_and(|v| read.contains(&v))
        })
        .cloned()
        .collect();
    search(&kept, limit)
}

fn search(ops: &[RegisterOp], limit: u64) -> Verdict {
    // Events in time order; at one instant calls come first, so that operations that
    // touch are concurrent (the checker never orders what the clock does not).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.invoke_ms, false, i));
        order.push((op.complete_ms.unwrap_or(u64::MAX), true, i));
    }
    order.sort_unstable();
    let mut events: Vec<Event> = order
        .iter()
        .map(|&(_, is_return, op)| Event {
            op,
            call: !is_return,
            pair: 0,
        })
        .collect();
    let mut call_of = vec![0; ops.len()];
    for (at, event) in events.iter().enumerate() {
        if event.call {
            call_of[event.op] = at;
        }
    }
    for at in 0..events.len() {
        if !events[at].call {
            let call = call_of[events[at].op];
            events[at].pair = call;
            events[call].pair = at;
        }
    }
    // A doubly linked list over the events; `HEAD` is a sentinel before the first.
    const HEAD: usize = usize::MAX;
    let n = events.len();
    let mut next: Vec<usize> = (1..=n).collect();
    let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
    if n > 0 {
        prev[0] = HEAD;
    }
    let mut first = if n > 0 { 0 } else { n };
    // `n` ends the list.
    let unlink = |at: usize, first: &mut usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (before, after) = (prev[at], next[at]);
        if before == HEAD {
            *first = after;
        } else {
            next[before] = after;
        }
        if after < n {
            prev[after] = before;
        }
    };
    let relink = |at: usize, first: &mut usize, next: &mut Vec<usize>, prev: &mut Vec<usize>| {
        let (before, after) = (prev[at], next[at]);
        if before == HEAD {
            *first = at;
        } else {
            next[before] = at;
        }
        if after < n {
            prev[after] = at;
        }
    };

    let mut placed = vec![0u64; ops.len().div_ceil(64)];
    let mut value: Option<u64> = None;
    let mut seen: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let (mut deepest, mut stuck_at) = (0usize, None);
    let mut steps = 0u64;
    let mut at = first;
    while first < n {
        steps += 1;
        if steps > limit {
            return Verdict::GaveUp;
        }
        let event = events[at];
        if event.call {
            let op = &ops[event.op];
            let after = if op.write {
                Some(op.value)
            } else {
                (op.value == value).then_some(value)
            };
            if let Some(after) = after {
                placed[event.op / 64] |= 1 << (event.op % 64);
                if seen.insert((placed.clone(), after)) {
                    stack.push((at, value));
                    value = after;
                    unlink(at, &mut first, &mut next, &mut prev);
                    unlink(event.pair, &mut first, &mut next, &mut prev);
                    at = first;
                    continue;
                }
                placed[event.op / 64] &= !(1 << (event.op % 64));
            }
            at = next[at];
        } else {
            // An operation whose answer came before any order could place it.
            if stack.len() >= deepest {
                deepest = stack.len();
                stuck_at = Some(event.op);
            }
            let Some((call, before)) = stack.pop() else {
                break;
            };
            let op = events[call].op;
            relink(events[call].pair, &mut first, &mut next, &mut prev);
            relink(call, &mut first, &mut next, &mut prev);
            placed[op / 64] &= !(1 << (op % 64));
            value = before;
            at = next[call];
        }
    }
    if first >= n {
        return Verdict::Linearizable { steps };
    }
    let stuck = stuck_at.map_or_else(String::new, |op| {
        let op = &ops[op];
        format!(
            "{} of {:?} at host {} over {} .. {:?} ms",
            if op.write { "the write" } else { "the read" },
            op.value,
            op.host,
            op.invoke_ms,
            op.complete_ms
        )
    });
    Verdict::NotLinearizable {
        placed: deepest,
        stuck,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::{Rng, stale_reads};

    fn op(write: bool, value: Option<u64>, invoke_ms: u64, complete_ms: Option<u64>) -> RegisterOp {
        RegisterOp {
            write,
            value,
            host: 1,
            invoke_ms,
            complete_ms,
        }
    }

    /// Whether some order of `ops` is a register's and keeps real time, by trying every
    /// order (a write without an answer may also be left out): the definition itself.
    fn by_every_order(ops: &[RegisterOp]) -> bool {
        fn extend(ops: &[RegisterOp], used: &mut Vec<bool>, value: Option<u64>) -> bool {
            let pending: Vec<usize> = (0..ops.len()).filter(|&i| !used[i]).collect();
            // Done once every operation with an answer is placed.
            if pending.iter().all(|&i| ops[i].complete_ms.is_none()) {
                return true;
            }
            for &i in &pending {
                // `i` may go next only if no pending operation ended before it began.
                let blocked = pending.iter().any(|&j| {
                    ops[j]
                        .complete_ms
                        .is_some_and(|done| done < ops[i].invoke_ms)
                });
                if blocked {
                    continue;
                }
                let after = if ops[i].write {
                    ops[i].value
                } else if ops[i].value == value {
                    value
                } else {
                    continue;
                };
                used[i] = true;
                let found = extend(ops, used, after);
                used[i] = false;
                if found {
                    return true;
                }
            }
            false
        }
        extend(ops, &mut vec![false; ops.len()], None)
    }

    /// A random history of up to seven operations over a few milliseconds: writes of
    /// 1, 2, .. in turn, some without an answer, and reads of any of those values, of
    /// none, or of one never written.
    fn random_history(rng: &mut Rng) -> Vec<RegisterOp> {
        let len = 1 + rng.below(7) as usize;
        let mut written = 0;
        (0..len)
            .map(|_| {
                let invoke = rng.below(12);
                let complete = invoke + rng.below(6);
                if rng.below(2) == 0 {
                    written += 1;
                    let answered = rng.below(4) != 0;
                    op(true, Some(written), invoke, answered.then_some(complete))
                } else {
                    let value = rng.below(5);
                    op(false, (value > 0).then_some(value), invoke, Some(complete))
                }
            })
            .collect()
    }

    #[test]
    fn the_search_agrees_with_trying_every_order_on_random_histories() {
        let mut rng = Rng::new(2026);
        let (mut linearizable, mut not) = (0, 0);
        for _ in 0..10_000 {
            let history = random_history(&mut rng);
            let expected = by_every_order(&history);
            let verdict = check(&history, STEP_LIMIT);
            match (&verdict, expected) {
                (Verdict::Linearizable { .. }, true) => linearizable += 1,
                (Verdict::NotLinearizable { .. }, false) => not += 1,
                _ => panic!("{verdict:?}, but by every order {expected}: {history:?}"),
            }
            // Every stale read the cheaper checker finds is a real violation.
            if !stale_reads(&history).is_empty() {
                assert!(!expected, "{:?} in {history:?}", stale_reads(&history));
            }
        }
        // Both answers were exercised, many times.
        assert!(linearizable > 1_000 && not > 1_000, "{linearizable} {not}");
    }

    #[test]
    fn a_read_of_an_overwritten_value_is_found_and_a_lost_write_may_take_effect_late() {
        let history = vec![
            op(true, Some(1), 0, Some(10)),
            op(true, Some(2), 20, Some(30)),
            op(false, Some(1), 40, Some(50)),
        ];
        let Verdict::NotLinearizable { placed, stuck } = check(&history, STEP_LIMIT) else {
            panic!("a stale read passed");
        };
        assert_eq!(placed, 2);
        assert!(
            stuck.starts_with("the read of Some(1) at host 1 over 40"),
            "{stuck}"
        );
        // A write without an answer took effect long after it was sent, and the next
        // write after that.
        let late = vec![
            op(true, Some(1), 0, None),
            op(false, None, 10, Some(20)),
            op(true, Some(2), 30, Some(40)),
            op(false, Some(2), 50, Some(60)),
            op(false, Some(1), 65, Some(70)),
        ];
        assert!(
            matches!(check(&late, STEP_LIMIT), Verdict::Linearizable { .. }),
            "the lost write of 1 took effect after 2 was read"
        );
        // But only once: 2 is never read again. The cheaper checker cannot tell (it
        // orders writes only by their answers).
        let mut twice = late.clone();
        twice.push(op(false, Some(2), 75, Some(80)));
        assert!(
            matches!(check(&twice, STEP_LIMIT), Verdict::NotLinearizable { .. }),
            "{:?}",
            check(&twice, STEP_LIMIT)
        );
        assert!(stale_reads(&twice).is_empty());
        let concurrent = vec![
            op(true, Some(1), 0, None),
            op(false, None, 10, Some(20)),
            op(false, Some(1), 50, Some(60)),
            op(true, Some(2), 65, Some(70)),
            op(false, Some(2), 80, Some(90)),
        ];
        assert!(
            matches!(check(&concurrent, STEP_LIMIT), Verdict::Linearizable { .. }),
            "{:?}",
            check(&concurrent, STEP_LIMIT)
        );
        assert_eq!(check(&concurrent, 3), Verdict::GaveUp);
        assert_eq!(check(&[], 1), Verdict::Linearizable { steps: 0 });
    }

    #[test]
    fn a_long_history_of_one_writer_and_many_readers_is_checked_quickly() {
        // What a campaign records: a write every 300 ms at the president, reads every
        // 150 ms at random hosts, some reads concurrent with writes, some writes lost.
        let mut rng = Rng::new(7);
        let mut history = Vec::new();
        let mut value = None;
        for round in 0..400u64 {
            let at = round * 300;
            let lost = rng.below(20) == 0;
            history.push(op(true, Some(round + 1), at, (!lost).then_some(at + 40)));
            let before = value;
            if !lost {
                value = Some(round + 1);
            }
            // A read over the write sees the old or the new value; one after it, the new.
            let over = if rng.below(2) == 0 { before } else { value };
            history.push(op(false, over, at + 10, Some(at + 50)));
            history.push(op(false, value, at + 150, Some(at + 160)));
        }
        let verdict = check(&history, STEP_LIMIT);
        let Verdict::Linearizable { steps } = verdict else {
            panic!("{verdict:?}");
        };
        assert!(steps < 1_000_000, "{steps} steps");
        // The same history with one read made stale is refused.
        let last_read = history.len() - 1;
        history[last_read].value = Some(1);
        assert!(matches!(
            check(&history, STEP_LIMIT),
            Verdict::NotLinearizable { .. }
        ));
    }
}
