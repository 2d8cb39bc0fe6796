//! What a group's log means: requests carrying Registry or Ledger commands, applied
//! exactly once per request id.
//!
//! ```text
//!   group 0 (federal) ── Machine::Registry ── members, states, projects, policies, ...
//!   group s (state s) ── Machine::Ledger   ── cities, mayors, tasks, resource use
//! ```

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::ledger::{Ledger, LedgerCommand, LedgerResponse};
use crate::registry::{Registry, RegistryCommand, RegistryResponse};
use crate::types::{GroupId, RequestId};

/// The federal group: its leader is the president, its state machine the Registry.
pub const FEDERAL_GROUP: GroupId = 0;

/// How many applied request ids a group remembers for de-duplication. A retry of a
/// request that is more than this many requests old would apply again; clients retry
/// within seconds, so the window is many orders of magnitude wider than needed.
pub const MAX_REMEMBERED_REQUESTS: usize = 100_000;

/// A command for one of the two state machines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// For the federal group.
    Registry(RegistryCommand),
    /// For a state group.
    Ledger(LedgerCommand),
}

/// An entry proposed to a group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the proposer, unique per intended effect; a retry reuses it.
    pub id: RequestId,
    /// What to do.
    pub command: Command,
}

/// One log entry: the requests that arrived together, committed with one fsync (group
/// commit). Each keeps its own id and gets its own response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The requests, applied in order.
    pub requests: Vec<Request>,
}

impl From<Request> for Batch {
    fn from(request: Request) -> Self {
        Self {
            requests: vec![request],
        }
    }
}

/// The responses to one log entry: one per request of its [`Batch`] (none for blank and
/// membership entries).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// In the order of the batch's requests.
    pub responses: Vec<Response>,
}

/// What applying an entry produced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A blank or membership entry: nothing for the state machine.
    #[default]
    Nothing,
    /// The Registry's answer.
    Registry(RegistryResponse),
    /// The Ledger's answer.
    Ledger(LedgerResponse),
    /// The command was for the other kind of group; nothing changed.
    WrongGroup,
}

/// The response to one applied entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// What the state machine answered (the first time, for a duplicate).
    pub outcome: Outcome,
    /// The request id had been applied before: this is a retry, and nothing changed.
    pub duplicate: bool,
}

/// A group's state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Machine {
    /// The federal group's.
    Registry(Registry),
    /// A state group's.
    Ledger(Ledger),
}

impl Machine {
    /// The empty state machine of `group`.
    pub fn for_group(group: GroupId) -> Self {
        if group == FEDERAL_GROUP {
            Machine::Registry(Registry::default())
        } else {
            Machine::Ledger(Ledger::default())
        }
    }

    /// The Registry, if this is the federal group.
    pub fn registry(&self) -> Option<&Registry> {
        match self {
            Machine::Registry(registry) => Some(registry),
            Machine::Ledger(_) => None,
        }
    }

    /// The Ledger, if this is a state group.
    pub fn ledger(&self) -> Option<&Ledger> {
        match self {
            Machine::Ledger(ledger) => Some(ledger),
            Machine::Registry(_) => None,
        }
    }

    fn apply(&mut self, command: &Command) -> Outcome {
        match (self, command) {
            (Machine::Registry(registry), Command::Registry(command)) => {
                Outcome::Registry(registry.apply(command))
            }
            (Machine::Ledger(ledger), Command::Ledger(command)) => {
                Outcome::Ledger(ledger.apply(command))
            }
            _ => Outcome::WrongGroup,
        }
    }

    /// Checks the state machine's invariants (panics on a violation: only a bug can
    /// cause one).
    pub fn validate(&self) {
        match self {
            Machine::Registry(registry) => registry.validate(),
            Machine::Ledger(ledger) => ledger.validate(),
        }
    }
}

/// A state machine with the memory of which requests it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Applied {
    pub machine: Machine,
    outcomes: BTreeMap<RequestId, Outcome>,
    order: VecDeque<RequestId>,
}

impl Applied {
    pub fn new(group: GroupId) -> Self {
        Self {
            machine: Machine::for_group(group),
            outcomes: BTreeMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Applies every request of `batch`.
    pub fn apply_batch(&mut self, batch: &Batch) -> BatchResponse {
        BatchResponse {
            responses: batch
                .requests
                .iter()
                .map(|request| self.apply(request))
                .collect(),
        }
    }

    /// Applies `request` unless its id was applied before.
    pub fn apply(&mut self, request: &Request) -> Response {
        if let Some(outcome) = self.outcomes.get(&request.id) {
            return Response {
                outcome: outcome.clone(),
                duplicate: true,
            };
        }
        let outcome = self.machine.apply(&request.command);
        self.outcomes.insert(request.id, outcome.clone());
        self.order.push_back(request.id);
        while self.order.len() > MAX_REMEMBERED_REQUESTS {
            if let Some(oldest) = self.order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
        if cfg!(debug_assertions) {
            self.machine.validate();
        }
        Response {
            outcome,
            duplicate: false,
        }
    }
}
