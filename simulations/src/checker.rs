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
            Violation::ProjectLost { project, status } => {
                write!(
                    f,
                    "acknowledged project {project} ended {status}, not completed"
                )
            }
        }
    }
}

/// Watches what nodes say and records every violation.
#[derive(Debug, Default)]
pub struct Checker {
    presidents: BTreeMap<u64, BTreeSet<String>>,
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
