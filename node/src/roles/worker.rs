//! The worker's core: which attempts this node runs, and delivering each one's outcome to
//! its city's mayor until the mayor acknowledges it or the delivery window closes. Pure,
//! in the style of openraft's engine: the driver feeds [`Input`]s with the time, the core
//! queues [`Command`]s, and the driver drains them ([`Worker::drain`]) into executor runs
//! and sealed deliveries, whose completions come back as inputs.
//!
//! ```text
//!   Execute(key, attempt)        ──► Run            (a free slot, not running already)
//!                                 ◄── Err(Busy)      (every slot taken: the mayor retries)
//!                                 ◄── Err(Reserved)  (a free slot kept for a state of
//!                                                     higher policy priority that waits)
//!   Finished(key, attempt, out)  ──► Deliver        (to the city's mayor)
//!   Undelivered(key, attempt)        retried after a backoff (50 ms, doubling to 2 s)
//!   Tick                         ──► Deliver        (retries that are due)
//!                                ──► GaveUp         (the delivery window closed)
//!   Delivered(key, attempt)          done: the attempt is forgotten
//! ```
//!
//! The spec was checked before the core sees the Execute ([`crate::roles::authority::execute`]);
//! the core only keeps the books. `O` is the outcome as the executor gives it: the core
//! carries it without looking inside.
//!
//! A worker lent to several states arbitrates its slots by the policy's state priorities
//! (`[resources] priority`): a state whose Execute it refused as busy within the last
//! [`RESERVE_MS`] keeps the next free slot from states of lower priority, so that its
//! mayor's next try (every round) takes it. Without priorities, first come first served.

use std::collections::{BTreeMap, VecDeque};

use aamas_consensus::ledger::TaskKey;
use aamas_protocol::NodeKey;

/// How long a worker keeps trying to deliver an outcome.
pub const OUTCOME_DELIVERY_MS: u64 = 120_000;
/// The first wait after a failed delivery; it doubles up to [`MAX_BACKOFF_MS`].
pub const FIRST_BACKOFF_MS: u64 = 50;
/// The longest wait between two deliveries of one outcome.
pub const MAX_BACKOFF_MS: u64 = 2_000;
/// How long a state refused as busy keeps a free slot from states of lower priority: a
/// few of its mayor's rounds, after which it is taken to have gone elsewhere.
pub const RESERVE_MS: u64 = 1_000;
/// Most states whose refused Executes a worker remembers.
pub const MAX_WAITING_STATES: usize = 64;

/// Why the worker does not take an attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot is running an attempt.
    #[error("busy: all {capacity} slots are running tasks")]
    Busy {
        /// The worker's slots.
        capacity: usize,
    },
    /// A slot is free, but kept for a state of higher priority whose tasks wait for it.
    #[error("the free slot is kept for state {state}, of higher priority ({priority} > {mine})")]
    Reserved {
        /// The state it is kept for.
        state: String,
        /// That state's priority.
        priority: i64,
        /// The priority of the state refused.
        mine: i64,
    },
}

/// What the worker learns.
#[derive(Debug)]
pub enum Input<O> {
    /// A mayor hands this worker an attempt (already authorised and its spec checked).
    Execute {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
        /// The city whose mayor gets the outcome.
        city: String,
        /// The state whose task it is (its priority decides between states).
        state: String,
        /// The mayor that sent it: the outcome goes back to it first.
        mayor: NodeKey,
    },
    /// The executor finished an attempt.
    Finished {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
        /// What it produced.
        outcome: O,
    },
    /// The mayor acknowledged the outcome.
    Delivered {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
    },
    /// A delivery failed (no mayor known, refused, timed out): try again later.
    Undelivered {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
    },
    /// Time passed: retries that are due go out, expired deliveries are given up.
    Tick,
}

/// What the worker asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<O> {
    /// Run the attempt's executor; feed back [`Input::Finished`].
    Run {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
    },
    /// Send the outcome to `city`'s mayor: `mayor`, who sent the attempt, else the
    /// mayor on record (the lease moved on); feed back [`Input::Delivered`] or
    /// [`Input::Undelivered`].
    Deliver {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
        /// The city.
        city: String,
        /// The mayor that sent the attempt.
        mayor: NodeKey,
        /// The outcome.
        outcome: O,
    },
    /// No mayor took the outcome within [`OUTCOME_DELIVERY_MS`]: it is dropped (the
    /// mayor gives the attempt up as lost and runs it again elsewhere).
    GaveUp {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Stage<O> {
    Running,
    Delivering {
        outcome: O,
        /// Whether a delivery is in flight (no second one until it answers).
        sending: bool,
        next_ms: u64,
        backoff_ms: u64,
        deadline_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Attempt<O> {
    city: String,
    mayor: NodeKey,
    stage: Stage<O>,
}

/// The worker's state: the attempts it runs or delivers. Soft: after a restart the
/// mayor loses the attempts in flight and runs them again.
#[derive(Debug)]
pub struct Worker<O> {
    capacity: usize,
    attempts: BTreeMap<(TaskKey, u32), Attempt<O>>,
    queued: VecDeque<Command<O>>,
    /// Each state's priority, from the policy (0 for a state not named).
    priorities: BTreeMap<String, i64>,
    /// States refused as busy, and when last.
    waiting: BTreeMap<String, u64>,
}

impl<O: Clone> Worker<O> {
    /// A worker with `capacity` slots (at least one).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            attempts: BTreeMap::new(),
            queued: VecDeque::new(),
            priorities: BTreeMap::new(),
            waiting: BTreeMap::new(),
        }
    }

    /// The states' priorities in force (the policy's `[resources] priority`).
    pub fn priorities(&self) -> &BTreeMap<String, i64> {
        &self.priorities
    }

    /// Puts the states' priorities in force.
    pub fn set_priorities(&mut self, priorities: BTreeMap<String, i64>) {
        self.priorities = priorities;
    }

    fn priority(&self, state: &str) -> i64 {
        self.priorities.get(state).copied().unwrap_or(0)
    }

    /// The waiting state of highest priority above `mine`, refused within
    /// [`RESERVE_MS`] of `now_ms`.
    fn reserved_for(&self, now_ms: u64, mine: i64) -> Option<(&str, i64)> {
        self.waiting
            .iter()
            .filter(|(_, since)| now_ms.saturating_sub(**since) <= RESERVE_MS)
            .map(|(state, _)| (state.as_str(), self.priority(state)))
            .filter(|(_, priority)| *priority > mine)
            .max_by_key(|(_, priority)| *priority)
    }

    /// Attempts whose executor is running.
    pub fn running(&self) -> usize {
        self.attempts
            .values()
            .filter(|attempt| matches!(attempt.stage, Stage::Running))
            .count()
    }

    /// Whether any attempt is running here or waits for its outcome's delivery.
    pub fn holds_attempts(&self) -> bool {
        !self.attempts.is_empty()
    }

    /// Attempts whose outcome waits for a mayor.
    pub fn delivering(&self) -> usize {
        self.attempts.len() - self.running()
    }

    /// Takes one input at `now_ms`. Only an Execute can be refused; a repeated Execute
    /// of an attempt held here is accepted without running it twice.
    pub fn handle(&mut self, now_ms: u64, input: Input<O>) -> Result<(), Refused> {
        match input {
            Input::Execute {
                key,
                attempt,
                city,
                state,
                mayor,
            } => {
                let slot = (key, attempt);
                if self.attempts.contains_key(&slot) {
                    return Ok(());
                }
                let mine = self.priority(&state);
                if self.running() >= self.capacity {
                    self.waiting
                        .retain(|_, since| now_ms.saturating_sub(*since) <= RESERVE_MS);
                    if self.waiting.len() < MAX_WAITING_STATES || self.waiting.contains_key(&state)
                    {
                        self.waiting.insert(state, now_ms);
                    }
                    return Err(Refused::Busy {
                        capacity: self.capacity,
                    });
                }
                if let Some((kept_for, priority)) = self.reserved_for(now_ms, mine) {
                    return Err(Refused::Reserved {
                        state: kept_for.to_string(),
                        priority,
                        mine,
                    });
                }
                self.waiting.remove(&state);
                self.attempts.insert(
                    slot.clone(),
                    Attempt {
                        city,
                        mayor,
                        stage: Stage::Running,
                    },
                );
                self.queued.push_back(Command::Run {
                    key: slot.0,
                    attempt,
                });
            }
            Input::Finished {
                key,
                attempt,
                outcome,
            } => {
                let Some(held) = self.attempts.get_mut(&(key.clone(), attempt)) else {
                    return Ok(());
                };
                if !matches!(held.stage, Stage::Running) {
                    return Ok(());
                }
                held.stage = Stage::Delivering {
                    outcome: outcome.clone(),
                    sending: true,
                    next_ms: now_ms,
                    backoff_ms: FIRST_BACKOFF_MS,
                    deadline_ms: now_ms.saturating_add(OUTCOME_DELIVERY_MS),
                };
                let (city, mayor) = (held.city.clone(), held.mayor);
                self.queued.push_back(Command::Deliver {
                    key,
                    attempt,
                    city,
                    mayor,
                    outcome,
                });
            }
            Input::Delivered { key, attempt } => {
                let slot = (key, attempt);
                if matches!(
                    self.attempts.get(&slot),
                    Some(Attempt {
                        stage: Stage::Delivering { .. },
                        ..
                    })
                ) {
                    self.attempts.remove(&slot);
                }
            }
            Input::Undelivered { key, attempt } => {
                if let Some(Attempt {
                    stage:
                        Stage::Delivering {
                            sending,
                            next_ms,
                            backoff_ms,
                            ..
                        },
                    ..
                }) = self.attempts.get_mut(&(key, attempt))
                {
                    *sending = false;
                    *next_ms = now_ms.saturating_add(*backoff_ms);
                    *backoff_ms = (*backoff_ms * 2).min(MAX_BACKOFF_MS);
                }
            }
            Input::Tick => {
                let mut expired = Vec::new();
                for ((key, attempt), held) in &mut self.attempts {
                    let Stage::Delivering {
                        outcome,
                        sending,
                        next_ms,
                        deadline_ms,
                        ..
                    } = &mut held.stage
                    else {
                        continue;
                    };
                    if now_ms >= *deadline_ms {
                        expired.push((key.clone(), *attempt));
                    } else if !*sending && now_ms >= *next_ms {
                        *sending = true;
                        self.queued.push_back(Command::Deliver {
                            key: key.clone(),
                            attempt: *attempt,
                            city: held.city.clone(),
                            mayor: held.mayor,
                            outcome: outcome.clone(),
                        });
                    }
                }
                for (key, attempt) in expired {
                    self.attempts.remove(&(key.clone(), attempt));
                    self.queued.push_back(Command::GaveUp { key, attempt });
                }
            }
        }
        Ok(())
    }

    /// The commands queued since the last drain, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = Command<O>> + '_ {
        self.queued.drain(..)
    }

    /// Checks the invariants; only a bug breaks them.
    pub fn validate(&self) {
        assert!(self.running() <= self.capacity, "more running than slots");
        assert!(
            self.waiting.len() <= MAX_WAITING_STATES,
            "waiting states over their bound"
        );
        for ((key, attempt), held) in &self.attempts {
            assert!(*attempt >= 1, "{key}: attempt 0 held");
            if let Stage::Delivering {
                next_ms,
                backoff_ms,
                deadline_ms,
                ..
            } = &held.stage
            {
                assert!(*backoff_ms <= MAX_BACKOFF_MS, "{key}: backoff over its cap");
                assert!(
                    *next_ms <= deadline_ms.saturating_add(MAX_BACKOFF_MS),
                    "{key}: retry after the deadline"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(task: &str) -> TaskKey {
        TaskKey {
            project: "p".into(),
            task: task.into(),
        }
    }

    fn execute(task: &str, attempt: u32) -> Input<&'static str> {
        execute_for("technical", task, attempt)
    }

    fn execute_for(state: &str, task: &str, attempt: u32) -> Input<&'static str> {
        Input::Execute {
            key: key(task),
            attempt,
            city: "c-1".into(),
            state: state.into(),
            mayor: NodeKey([9; 32]),
        }
    }

    fn deliver(task: &str, attempt: u32, outcome: &'static str) -> Command<&'static str> {
        Command::Deliver {
            key: key(task),
            attempt,
            city: "c-1".into(),
            mayor: NodeKey([9; 32]),
            outcome,
        }
    }

    fn drained(worker: &mut Worker<&'static str>) -> Vec<Command<&'static str>> {
        worker.validate();
        worker.drain().collect()
    }

    #[test]
    fn a_free_slot_goes_to_the_waiting_state_of_higher_priority() {
        let finish = |worker: &mut Worker<&'static str>, now_ms: u64, task: &str| {
            let finished = Input::Finished {
                key: key(task),
                attempt: 1,
                outcome: "done",
            };
            assert_eq!(worker.handle(now_ms, finished), Ok(()));
        };
        let mut worker = Worker::new(1);
        worker.set_priorities(BTreeMap::from([("technical".to_string(), 10)]));
        assert_eq!(worker.handle(0, execute_for("market", "m1", 1)), Ok(()));
        // technical waits for the only slot...
        assert_eq!(
            worker.handle(10, execute_for("technical", "t1", 1)),
            Err(Refused::Busy { capacity: 1 })
        );
        finish(&mut worker, 20, "m1");
        drained(&mut worker);
        // ...so when it frees, market's next task is refused and technical's taken.
        assert_eq!(
            worker.handle(30, execute_for("market", "m2", 1)),
            Err(Refused::Reserved {
                state: "technical".into(),
                priority: 10,
                mine: 0
            })
        );
        assert_eq!(worker.handle(40, execute_for("technical", "t1", 1)), Ok(()));
        // technical no longer waits: first come again once the slot frees.
        finish(&mut worker, 50, "t1");
        assert_eq!(worker.handle(60, execute_for("market", "m2", 1)), Ok(()));
        // A state of higher priority that stopped asking keeps nothing past RESERVE_MS.
        assert_eq!(
            worker.handle(70, execute_for("technical", "t2", 1)),
            Err(Refused::Busy { capacity: 1 })
        );
        finish(&mut worker, 80, "m2");
        assert_eq!(
            worker.handle(80 + RESERVE_MS + 1, execute_for("market", "m3", 1)),
            Ok(())
        );
        drained(&mut worker);
    }

    #[test]
    fn an_attempt_runs_once_and_only_in_a_free_slot() {
        let mut worker = Worker::new(1);
        assert_eq!(worker.handle(0, execute("a", 1)), Ok(()));
        assert_eq!(
            drained(&mut worker),
            vec![Command::Run {
                key: key("a"),
                attempt: 1
            }]
        );
        // The mayor resends before it hears the acknowledgement: accepted, not rerun.
        assert_eq!(worker.handle(1, execute("a", 1)), Ok(()));
        assert_eq!(drained(&mut worker), vec![]);
        // Another task while the only slot runs: refused, nothing queued.
        assert_eq!(
            worker.handle(2, execute("b", 1)),
            Err(Refused::Busy { capacity: 1 })
        );
        assert_eq!(drained(&mut worker), vec![]);
        // Finished: the slot is free while the outcome is delivered.
        worker
            .handle(
                3,
                Input::Finished {
                    key: key("a"),
                    attempt: 1,
                    outcome: "ok",
                },
            )
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker), vec![deliver("a", 1, "ok")]);
        assert_eq!((worker.running(), worker.delivering()), (0, 1));
        assert_eq!(worker.handle(4, execute("b", 1)), Ok(()));
        assert_eq!(
            drained(&mut worker),
            vec![Command::Run {
                key: key("b"),
                attempt: 1
            }]
        );
    }

    #[test]
    fn an_outcome_is_delivered_until_acknowledged_with_backoff() {
        let mut worker = Worker::new(2);
        worker
            .handle(0, execute("a", 1))
            .expect("as the test sets it up");
        worker
            .handle(
                10,
                Input::Finished {
                    key: key("a"),
                    attempt: 1,
                    outcome: "ok",
                },
            )
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker).len(), 2);
        // In flight: a tick sends no second copy.
        worker
            .handle(20, Input::Tick)
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker), vec![]);
        // Refused: retried after 50 ms, then after 100 ms.
        worker
            .handle(
                30,
                Input::Undelivered {
                    key: key("a"),
                    attempt: 1,
                },
            )
            .expect("as the test sets it up");
        worker
            .handle(79, Input::Tick)
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker), vec![]);
        worker
            .handle(80, Input::Tick)
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker), vec![deliver("a", 1, "ok")]);
        worker
            .handle(
                90,
                Input::Undelivered {
                    key: key("a"),
                    attempt: 1,
                },
            )
            .expect("as the test sets it up");
        worker
            .handle(189, Input::Tick)
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker), vec![]);
        worker
            .handle(190, Input::Tick)
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker), vec![deliver("a", 1, "ok")]);
        // Acknowledged: forgotten, nothing more goes out.
        worker
            .handle(
                200,
                Input::Delivered {
                    key: key("a"),
                    attempt: 1,
                },
            )
            .expect("as the test sets it up");
        worker
            .handle(10_000, Input::Tick)
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker), vec![]);
        assert_eq!((worker.running(), worker.delivering()), (0, 0));
    }

    #[test]
    fn an_outcome_nobody_takes_is_given_up_when_the_window_closes() {
        let mut worker = Worker::new(1);
        worker
            .handle(0, execute("a", 3))
            .expect("as the test sets it up");
        worker
            .handle(
                0,
                Input::Finished {
                    key: key("a"),
                    attempt: 3,
                    outcome: "out",
                },
            )
            .expect("as the test sets it up");
        drained(&mut worker);
        let mut now = 0;
        while now < OUTCOME_DELIVERY_MS {
            worker
                .handle(
                    now,
                    Input::Undelivered {
                        key: key("a"),
                        attempt: 3,
                    },
                )
                .expect("as the test sets it up");
            now += MAX_BACKOFF_MS;
            worker
                .handle(now.min(OUTCOME_DELIVERY_MS - 1), Input::Tick)
                .expect("as the test sets it up");
            worker.validate();
            worker.drain().for_each(drop);
        }
        worker
            .handle(OUTCOME_DELIVERY_MS, Input::Tick)
            .expect("as the test sets it up");
        assert_eq!(
            drained(&mut worker),
            vec![Command::GaveUp {
                key: key("a"),
                attempt: 3
            }]
        );
        assert_eq!(worker.delivering(), 0);
        // A late acknowledgement of a given-up attempt changes nothing.
        worker
            .handle(
                OUTCOME_DELIVERY_MS + 1,
                Input::Delivered {
                    key: key("a"),
                    attempt: 3,
                },
            )
            .expect("as the test sets it up");
        assert_eq!(drained(&mut worker), vec![]);
    }

    #[test]
    fn a_stray_finish_or_acknowledgement_is_ignored() {
        let mut worker: Worker<&'static str> = Worker::new(1);
        worker
            .handle(
                0,
                Input::Finished {
                    key: key("x"),
                    attempt: 1,
                    outcome: "?",
                },
            )
            .expect("as the test sets it up");
        worker
            .handle(
                0,
                Input::Delivered {
                    key: key("x"),
                    attempt: 1,
                },
            )
            .expect("as the test sets it up");
        // A running attempt is not ended by an acknowledgement it never asked for.
        worker
            .handle(0, execute("a", 1))
            .expect("as the test sets it up");
        worker
            .handle(
                1,
                Input::Delivered {
                    key: key("a"),
                    attempt: 1,
                },
            )
            .expect("as the test sets it up");
        assert_eq!(worker.running(), 1);
        assert_eq!(
            drained(&mut worker),
            vec![Command::Run {
                key: key("a"),
                attempt: 1
            }]
        );
    }
}
