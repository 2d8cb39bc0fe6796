//! Invariant checkers that run during every scenario.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// A broken invariant, with what was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Violation {
    /// Two presidents in one federal term.
    TwoPresidents {
        /// The term.
        term: u64,
        /// The peer ids that each claimed it.
        presidents: Vec<String>,
    },
    /// Two different results committed for one task.
    TwoResults {
        /// The project.
        project: String,
        /// The task.
        task: String,
        /// The result digests seen.
        results: Vec<String>,
    },
    /// Two governors of one state in one term of its group.
    TwoGovernors {
        /// The state.
        state: String,
        /// The term.
        term: u64,
        /// The peer ids that each claimed it.
        governors: Vec<String>,
    },
    /// A task of a completed project has no committed result.
    TaskLost {
        /// The project.
        project: String,
        /// The task.
        task: String,
    },
    /// After healing, a member is in no state or in several.
    Misplaced {
        /// The member's peer id.
        member: String,
        /// The states it is in.
        states: Vec<String>,
    },
    /// Honest gossip stopped arriving while the mesh was flooded.
    HonestTrafficStalled {
        /// What was seen.
        detail: String,
    },
    /// Tasks completed, but no node's event bus published a TaskCompletion.
    EventsMissing {
        /// What was seen.
        detail: String,
    },
    /// An acknowledged project did not complete.
    ProjectLost {
        /// The project.
        project: String,
        /// Its last status.
        status: String,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::TwoPresidents { term, presidents } => {
                write!(f, "two presidents in federal term {term}: {presidents:?}")
            }
            Violation::TwoResults {
                project,
                task,
                results,
            } => write!(
                f,
                "task {project}/{task} has two committed results: {results:?}"
            ),
            Violation::TwoGovernors {
                state,
                term,
                governors,
            } => write!(
                f,
                "two governors of state {state} in its term {term}: {governors:?}"
            ),
            Violation::TaskLost { project, task } => write!(
                f,
                "task {project}/{task} of a completed project has no committed result"
            ),
            Violation::Misplaced { member, states } => write!(
                f,
                "after healing, member {member} belongs to {} states ({states:?}), not one",
                states.len()
            ),
            Violation::HonestTrafficStalled { detail } => {
                write!(f, "honest traffic stalled during the flood: {detail}")
            }
            Violation::EventsMissing { detail } => {
                write!(f, "the event buses missed what happened: {detail}")
            }
            Violation::ProjectLost { project, status } => {
                write!(
                    f,
                    "acknowledged project {project} ended {status}, not completed"
                )
            }
        }
    }
}

/// The share of live nodes every honest probe must reach during a flood.
pub const FLOOD_REACH: f64 = 0.9;

/// Watches what nodes say and records every violation.
#[derive(Debug, Default)]
pub struct Checker {
    presidents: BTreeMap<u64, BTreeSet<String>>,
    governors: BTreeMap<(String, u64), BTreeSet<String>>,
    results: BTreeMap<(String, String), BTreeSet<String>>,
    violations: Vec<Violation>,
}

impl Checker {
    /// A node that is president says so for `term` (a node names the leader of the term
    /// it is in; only a self-claim is evidence of leadership).
    pub fn president(&mut self, term: u64, president: &str) {
        let seen = self.presidents.entry(term).or_default();
        if seen.insert(president.to_string()) && seen.len() == 2 {
            self.violations.push(Violation::TwoPresidents {
                term,
                presidents: seen.iter().cloned().collect(),
            });
        }
    }

    /// A node says it governs `state` in `term` of the state's group.
    pub fn governor(&mut self, state: &str, term: u64, governor: &str) {
        let seen = self.governors.entry((state.to_string(), term)).or_default();
        if seen.insert(governor.to_string()) && seen.len() == 2 {
            self.violations.push(Violation::TwoGovernors {
                state: state.to_string(),
                term,
                governors: seen.iter().cloned().collect(),
            });
        }
    }

    /// After healing: each member with the states the hierarchy places it in.
    pub fn placement<'a>(&mut self, members: impl IntoIterator<Item = (&'a str, Vec<String>)>) {
        for (member, states) in members {
            if states.len() != 1 {
                self.violations.push(Violation::Misplaced {
                    member: member.to_string(),
                    states,
                });
            }
        }
    }

    /// A completed project's tasks: each must have a committed result.
    pub fn project_tasks<'a>(&mut self, project: &str, tasks: impl IntoIterator<Item = &'a str>) {
        for task in tasks {
            if !self
                .results
                .contains_key(&(project.to_string(), task.to_string()))
            {
                self.violations.push(Violation::TaskLost {
                    project: project.to_string(),
                    task: task.to_string(),
                });
            }
        }
    }

    /// During a flood, an honest probe reached `reached` of `expected` live nodes. It
    /// must reach at least [`FLOOD_REACH`] of them: a node under attack may miss one, but
    /// traffic must not stall. (The misses measured before 2026-11-25, up to 7 of 48 for
    /// a probe, were the join race, not the flood: the last joiners could not yet check
    /// the probe's sender; the simulator now waits for that before a scenario starts.)
    pub fn flood_probe(&mut self, reached: usize, expected: usize) {
        if (reached as f64) < FLOOD_REACH * expected as f64 {
            self.violations.push(Violation::HonestTrafficStalled {
                detail: format!("a probe reached {reached} of {expected} live nodes"),
            });
        }
    }

    /// During a flood, `starved` live nodes received none of the honest probes.
    pub fn flood_starved(&mut self, starved: &[String]) {
        if !starved.is_empty() {
            self.violations.push(Violation::HonestTrafficStalled {
                detail: format!("nodes {starved:?} received none of the honest probes"),
            });
        }
    }

    /// A replica of a state's Ledger holds `result` for a task.
    pub fn result(&mut self, project: &str, task: &str, result: &str) {
        let key = (project.to_string(), task.to_string());
        let seen = self.results.entry(key).or_default();
        if seen.insert(result.to_string()) && seen.len() == 2 {
            self.violations.push(Violation::TwoResults {
                project: project.to_string(),
                task: task.to_string(),
                results: seen.iter().cloned().collect(),
            });
        }
    }

    /// `completed` tasks have results, and the nodes' event buses published
    /// `task_completions` TaskCompletion events: none at all means the buses miss what
    /// the Ledgers commit. (Not every success must have its event: a governor that loses
    /// its lead while a write commits does not see it applied.)
    pub fn task_events(&mut self, completed: usize, task_completions: u64) {
        if completed > 0 && task_completions == 0 {
            self.violations.push(Violation::EventsMissing {
                detail: format!("{completed} tasks completed, no TaskCompletion event"),
            });
        }
    }

    /// An acknowledged project ended with `status`.
    pub fn project_ended(&mut self, project: &str, status: &str) {
        if status != "completed" {
            self.violations.push(Violation::ProjectLost {
                project: project.to_string(),
                status: status.to_string(),
            });
        }
    }

    /// Every violation so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// Governor terms seen, over every state.
    pub fn governor_terms(&self) -> usize {
        self.governors.len()
    }

    /// Terms in which a president was seen.
    pub fn terms(&self) -> usize {
        self.presidents.len()
    }

    /// Tasks with a committed result seen.
    pub fn tasks_with_results(&self) -> usize {
        self.results.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_president_in_a_term_is_a_violation() {
        let mut checker = Checker::default();
        checker.president(3, "a");
        checker.president(3, "a");
        checker.president(4, "b");
        assert!(checker.violations().is_empty());
        checker.president(4, "c");
        assert_eq!(
            checker.violations(),
            [Violation::TwoPresidents {
                term: 4,
                presidents: vec!["b".into(), "c".into()]
            }]
        );
    }

    #[test]
    fn completed_tasks_without_any_task_event_are_a_violation() {
        let mut checker = Checker::default();
        checker.task_events(0, 0);
        checker.task_events(10, 3);
        assert!(checker.violations().is_empty());
        checker.task_events(10, 0);
        assert_eq!(
            checker.violations()[0].to_string(),
            "the event buses missed what happened: 10 tasks completed, no TaskCompletion event"
        );
    }

    #[test]
    fn a_second_governor_in_a_state_term_is_a_violation() {
        let mut checker = Checker::default();
        checker.governor("technical", 2, "a");
        checker.governor("market", 2, "b");
        checker.governor("technical", 3, "c");
        assert!(checker.violations().is_empty());
        checker.governor("technical", 3, "d");
        assert!(
            checker.violations()[0]
                .to_string()
                .starts_with("two governors of state technical in its term 3")
        );
    }

    #[test]
    fn misplaced_members_lost_tasks_and_stalled_probes_are_violations() {
        let mut checker = Checker::default();
        checker.placement([("a", vec!["technical".to_string()])]);
        checker.flood_probe(5, 5);
        checker.result("p", "t1", "aa");
        checker.project_tasks("p", ["t1"]);
        assert!(checker.violations().is_empty());
        checker.placement([("b", vec![]), ("c", vec!["x".into(), "y".into()])]);
        checker.flood_probe(4, 5);
        checker.flood_probe(90, 100);
        checker.flood_starved(&[]);
        checker.project_tasks("p", ["t1", "t2"]);
        let found: Vec<String> = checker
            .violations()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(
            found[0].contains("member b belongs to 0 states"),
            "{found:?}"
        );
        assert!(found[2].contains("reached 4 of 5"), "{found:?}");
        assert!(found[3].contains("task p/t2"), "{found:?}");
    }

    #[test]
    fn a_second_result_for_a_task_is_a_violation() {
        let mut checker = Checker::default();
        checker.result("p", "t", "aa");
        checker.result("p", "t", "aa");
        assert!(checker.violations().is_empty());
        checker.result("p", "t", "bb");
        assert_eq!(checker.violations().len(), 1);
        assert!(
            checker.violations()[0]
                .to_string()
                .contains("two committed results")
        );
    }
}
