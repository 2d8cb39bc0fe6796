//! The federal group's replicated state: the [`Registry`].
//!
//! A pure, deterministic state machine: the president proposes [`RegistryCommand`]s and
//! every replica applies the committed ones in log order with [`Registry::apply`]. Time
//! comes in the commands (`now_ms`, chosen by the proposer), never from a clock, and every
//! map is a `BTreeMap`, so replicas agree and their snapshots are byte-identical.
//!
//! ```text
//!   Registry ── members     NodeKey → Member (identity, addrs, skills, capacity, state)
//!            ── states      name    → StateInfo (budget, spent, Raft group, governor)
//!            ── projects    id      → Project (spec, phase, status, progress per phase)
//!            ── policies    key     → value
//!            ── policy      the policy document in force (text, version, when applied)
//!            ── alerts      id → Alert (PerformanceAlerts, until acknowledged and crowded out)
//!            ── join_tokens digest  → JoinToken (expiry, uses left, revoked), from first use
//!                                     or revocation until expiry
//!            ── group_keys  epoch (current and previous) → NodeKey → wrapped group key
//! ```
//!
//! A command is checked in full before anything changes, so a rejected command leaves the
//! registry as it was. Request ids are deduplicated by the caller; beyond that, a command
//! whose effect is already in place (an identical admission or submission) succeeds again
//! without changing anything.

use std::collections::{BTreeMap, BTreeSet};

use crate::resources::{Limit, Resource};
use aamas_protocol::{NodeKey, Phase, PublicIdentity};
use serde::{Deserialize, Serialize};

/// Most members held, active and left together.
pub const MAX_MEMBERS: usize = 100_000;
/// Most states.
pub const MAX_STATES: usize = 64;
/// Most projects, finished ones included until [`RegistryCommand::RemoveProject`].
pub const MAX_PROJECTS: usize = 1_024;
/// Most policies.
pub const MAX_POLICIES: usize = 1_024;
/// Most join-token digests recorded at once.
pub const MAX_JOIN_TOKENS: usize = 10_000;
/// Longest name in bytes: states, projects, skills, policy keys; in the ledger also cities,
/// tasks and resources.
pub const MAX_NAME_BYTES: usize = 256;
/// Most addresses a member advertises.
pub const MAX_ADDRS_PER_MEMBER: usize = 16;
/// Longest address (a multiaddr), in bytes.
pub const MAX_ADDR_BYTES: usize = 512;
/// Most skills a member advertises.
pub const MAX_SKILLS_PER_MEMBER: usize = 64;
/// Largest project spec, in bytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// Largest sum of all project specs, in bytes; bounds the snapshot.
pub const MAX_SPEC_BYTES_TOTAL: usize = 64 << 20;
/// Longest policy value, in bytes.
pub const MAX_POLICY_VALUE_BYTES: usize = 4_096;
/// Largest policy document, in bytes.
pub const MAX_POLICY_DOCUMENT_BYTES: usize = 512 * 1024;
/// Most alerts kept; when full, the oldest acknowledged one makes room.
pub const MAX_ALERTS: usize = 1_024;
/// Longest failure or escalation reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1_024;
/// Largest group key wrapped for one member, in bytes.
pub const MAX_WRAPPED_KEY_BYTES: usize = 256;
/// Group-key epochs kept: the current and the previous one, so that messages sealed just
/// before a rotation still open.
pub const GROUP_KEY_EPOCHS_KEPT: usize = 2;
/// The usual states of a fresh mesh (seed phase 2). Not created automatically: the
/// president proposes [`RegistryCommand::AddState`] for each.
pub const DEFAULT_STATES: [&str; 4] = ["technical", "financial", "market", "operations"];

/// Whether a member takes part in the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Admitted and not removed.
    Active,
    /// Removed; its record stays so that its key remains known.
    Left,
    /// Removed by an operator ([`RegistryCommand::EvictMember`]): its key is refused
    /// from then on, and it is never admitted again.
    Evicted,
}

/// A member of the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its signing key, encryption key and their binding.
    pub identity: PublicIdentity,
    /// Its listen addresses (multiaddrs).
    pub addrs: Vec<String>,
    /// What it can do.
    pub skills: BTreeSet<String>,
    /// How many tasks it takes at once.
    pub capacity: u32,
    /// The state it is placed in; always `None` once it has left.
    pub state: Option<String>,
    /// Active or left.
    pub status: MemberStatus,
    /// When it was last admitted, in the proposer's milliseconds.
    pub joined_ms: u64,
}

impl Member {
    /// Sets the addresses, skills and capacity; returns whether any of them changed.
    fn set_profile(&mut self, addrs: &[String], skills: &BTreeSet<String>, capacity: u32) -> bool {
        if self.addrs == addrs && self.skills == *skills && self.capacity == capacity {
            return false;
        }
        self.addrs = addrs.to_vec();
        self.skills.clone_from(skills);
        self.capacity = capacity;
        true
    }
}

/// Most voters recorded for a state group's founding.
pub const MAX_STATE_VOTERS: usize = 7;
/// Most cities a governor reports.
pub const MAX_REPORTED_CITIES: usize = 256;

/// A state: its budget (in the budget's smallest unit), its Raft group and its governor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateInfo {
    /// What the state may spend in total.
    pub budget: u64,
    /// What it has spent; never more than `budget`.
    pub spent: u64,
    /// Its Raft group, once the president has founded it.
    pub group: Option<StateGroup>,
    /// Its governor as last reported, once it has one.
    pub governor: Option<GovernorRecord>,
    /// Its limits by resource, set by the president (`aamas resources set`, or an
    /// approved ResourceRequest); the governor copies them into the state's Ledger.
    pub limits: BTreeMap<Resource, Limit>,
    /// Bumped by every change to `limits`.
    pub limits_version: u64,
}

impl StateInfo {
    /// Members that hold a copy of its Ledger, as far as the Registry knows: the voters
    /// its governor last reported, then its founding voters.
    pub fn known_voters(&self) -> Vec<NodeKey> {
        let mut voters: Vec<NodeKey> = self
            .governor
            .as_ref()
            .map(|g| g.voters.clone())
            .unwrap_or_default();
        if let Some(group) = &self.group {
            voters.extend(group.voters.iter().copied());
        }
        voters
    }
}

/// Most ResourceRequests kept; the oldest decided ones make room.
pub const MAX_RESOURCE_REQUESTS: usize = 1_024;

/// A request for more of a resource than a state's hard limit allows, raised by a mayor
/// whose tasks wait, carried up by its governor, decided by the president's operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequest {
    /// The state.
    pub state: String,
    /// The resource whose limit is spent.
    pub resource: Resource,
    /// How much more it asks for.
    pub amount: u64,
    /// Why, for a person.
    pub reason: String,
    /// When it was raised, in the proposer's milliseconds.
    pub raised_ms: u64,
    /// The mayor that raised it.
    pub raised_by: NodeKey,
    /// The governor that carried it up.
    pub via: NodeKey,
    /// The decision, once taken.
    pub decision: Option<ResourceDecision>,
}

/// A decision on a [`ResourceRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDecision {
    /// Approved (the limit rose by `amount`) or denied.
    pub approved: bool,
    /// How much the limit rose (0 when denied).
    pub amount: u64,
    /// Who decided: `operator` or `policy`.
    pub by: String,
    /// The decider's note.
    pub note: String,
    /// When, in the proposer's milliseconds.
    pub decided_ms: u64,
}

/// How a state's Raft group was founded. Recorded once: exactly one node (the founder)
/// ever initialises the group, so two incarnations of one state can never both exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateGroup {
    /// The Raft group id; never the federal group's.
    pub id: u64,
    /// The member that initialises the group; one of `voters`.
    pub founder: NodeKey,
    /// The first voters. The group's leader changes them later through Raft.
    pub voters: Vec<NodeKey>,
}

/// A state's governor (the leader of its group) as it reported itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernorRecord {
    /// The governor.
    pub node: NodeKey,
    /// The state group's term in which it leads.
    pub term: u64,
    /// Its cities and their mayors (if a lease holds).
    pub mayors: BTreeMap<String, Option<NodeKey>>,
    /// The group's voters.
    pub voters: Vec<NodeKey>,
}

/// Where a project stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProjectStatus {
    /// Work on the current phase goes on.
    Running,
    /// Paused by the president.
    Held,
    /// Past its launch phase.
    Completed,
    /// Given up.
    Failed {
        /// Why.
        reason: String,
    },
    /// Every task of `phase` succeeded and its gates but the human one passed: waits for
    /// a person to approve or reject it ([`RegistryCommand::DecideApproval`]).
    AwaitingApproval {
        /// The phase waiting.
        phase: Phase,
    },
}

impl ProjectStatus {
    /// Whether the project is completed or failed: nothing more happens to it.
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Completed | Self::Failed { .. })
    }
}

/// Task counts of one phase of a project, as the state groups report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseProgress {
    /// Tasks planned.
    pub tasks_total: u32,
    /// Tasks that succeeded.
    pub tasks_done: u32,
    /// Tasks that failed or were escalated.
    pub tasks_failed: u32,
}

impl PhaseProgress {
    /// Whether done and failed tasks together are at most the total.
    pub fn is_consistent(&self) -> bool {
        u64::from(self.tasks_done) + u64::from(self.tasks_failed) <= u64::from(self.tasks_total)
    }
}

/// What a phase's gates decided ([`RegistryCommand::RecordReview`],
/// [`RegistryCommand::DecideApproval`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseGate {
    /// The reviews of its llm gate, one per round, oldest first.
    pub reviews: Vec<Review>,
    /// The note of the person who approved it.
    pub approval: Option<String>,
    /// The tasks an llm planned for it, once a plan passed the president's checks
    /// (encoded by the node, opaque here; [`RegistryCommand::SetPlan`]).
    pub plan: Option<Vec<u8>>,
    /// Why each refused plan was refused, oldest first
    /// ([`RegistryCommand::RefusePlan`]).
    pub plan_refusals: Vec<String>,
}

/// One round of an llm gate's review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Whether the reviewer accepted the phase's work.
    pub approved: bool,
    /// What the reviewer said.
    pub feedback: String,
    /// The tasks the reviewer sent back, by their names in the spec.
    pub reopen: Vec<String>,
}

/// Most review rounds one phase records.
pub const MAX_REVIEW_ROUNDS: usize = 16;
/// Longest review feedback or approval note.
pub const MAX_FEEDBACK_BYTES: usize = 4_096;
/// Longest note of a person's approval or rejection (it becomes the failure reason).
pub const MAX_NOTE_BYTES: usize = 900;
/// Most tasks one review sends back.
pub const MAX_REOPENED_TASKS: usize = 256;
/// Most bytes of a phase's committed plan.
pub const MAX_PLAN_BYTES: usize = 64 * 1024;
/// Most refused plans one phase records.
pub const MAX_PLAN_REFUSALS: usize = 8;

/// A project driven through the eight phases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// Its human-readable name.
    pub name: String,
    /// Its specification, opaque here.
    pub spec: Vec<u8>,
    /// Its current phase (stays `Launch` once completed).
    pub phase: Phase,
    /// Running, held, completed or failed.
    pub status: ProjectStatus,
    /// Task counts of the phases reached so far.
    pub progress: BTreeMap<Phase, PhaseProgress>,
    /// When it was submitted, in the proposer's milliseconds.
    pub submitted_ms: u64,
    /// When it completed or failed, in the proposer's milliseconds.
    pub ended_ms: Option<u64>,
    /// The member it was submitted through: besides the president's own operator, the
    /// only member that may hold, resume, advance or archive it.
    pub owner: NodeKey,
    /// What the gates of the phases reached so far decided.
    pub gates: BTreeMap<Phase, PhaseGate>,
}

/// A PerformanceAlert as the Registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The metric that crossed its threshold, e.g. `worker_failures_in_a_row`.
    pub metric: String,
    /// The member it is about.
    pub subject: NodeKey,
    /// The metric's value, in thousandths of its unit.
    pub value_milli: i64,
    /// The threshold it crossed, same unit.
    pub threshold_milli: i64,
    /// What happened, for a person.
    pub message: String,
    /// When it was raised, in the proposer's milliseconds.
    pub raised_ms: u64,
    /// The member that raised it (a mayor or governor).
    pub raised_by: NodeKey,
    /// When and with what note a person acknowledged it.
    pub acknowledged: Option<(u64, String)>,
}

/// The policy document in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDocument {
    /// 1 for the first applied, one more for each change.
    pub version: u64,
    /// The document (TOML), as applied.
    pub text: String,
    /// When it was applied, in the proposer's milliseconds.
    pub applied_ms: u64,
}

/// A join token, known only by its digest. Recorded at its first use (with the terms
/// it carries) or its revocation, and kept until it expires, so that a used-up or revoked
/// token is never counted anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Valid while `now_ms < expires_ms`.
    pub expires_ms: u64,
    /// Admissions still allowed; 0 once used up or revoked.
    pub uses_left: u32,
    /// Revoked by an operator.
    pub revoked: bool,
}

/// The terms a join token carries, signed by its issuer; the proposer has verified the
/// signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenTerms {
    /// SHA-256 of the token: how the Registry names it.
    pub digest: [u8; 32],
    /// Valid while `now_ms < expires_ms`.
    pub expires_ms: u64,
    /// Admissions it allows in all.
    pub uses: u32,
}

/// A command to the federal group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryCommand {
    /// Creates a state; adding it again with the same budget is a no-op.
    AddState {
        /// Its name.
        name: String,
        /// Its budget.
        budget: u64,
    },
    /// Admits a node, spending one use of the join token if one is given. Admitting an
    /// active member again with the same identity only refreshes its addresses, skills and
    /// capacity and spends no token use.
    AdmitMember {
        /// Its identity; the proposer has verified the binding signature.
        identity: PublicIdentity,
        /// Its listen addresses.
        addrs: Vec<String>,
        /// Its skills.
        skills: BTreeSet<String>,
        /// Tasks it takes at once.
        capacity: u32,
        /// The proposer's time, for the token's expiry and `joined_ms`.
        now_ms: u64,
        /// The join token it presented (none for the founder).
        token: Option<TokenTerms>,
    },
    /// Replaces an active member's addresses, skills and capacity.
    UpdateMember {
        /// The member.
        node: NodeKey,
        /// Its addresses.
        addrs: Vec<String>,
        /// Its skills.
        skills: BTreeSet<String>,
        /// Its capacity.
        capacity: u32,
    },
    /// Places an active member in an existing state.
    PlaceMember {
        /// The member.
        node: NodeKey,
        /// The state.
        state: String,
    },
    /// Marks a member as left and unplaces it; removing a left member is a no-op.
    RemoveMember {
        /// The member.
        node: NodeKey,
    },
    /// Evicts a member: it is unplaced and its key is refused from then on (it can
    /// never be admitted again). Evicting it again is a no-op.
    EvictMember {
        /// The member.
        node: NodeKey,
    },
    /// Revokes a join token, used or not: it admits no one from then on. Revoking it
    /// again, or once it has expired, is a no-op.
    RevokeJoinToken {
        /// SHA-256 of the token.
        digest: [u8; 32],
        /// Its expiry: the record is kept until then.
        expires_ms: u64,
        /// The proposer's time.
        now_ms: u64,
    },
    /// Accepts a project in its first phase. The same id with the same name and spec again
    /// is a no-op; with other content it is rejected.
    SubmitProject {
        /// Its id, unique in the mesh.
        id: String,
        /// Its name.
        name: String,
        /// Its specification.
        spec: Vec<u8>,
        /// The proposer's time.
        now_ms: u64,
        /// The member it was submitted through.
        owner: NodeKey,
    },
    /// Records the task counts of a phase the project has reached.
    SetProjectProgress {
        /// The project.
        id: String,
        /// The phase.
        phase: Phase,
        /// Its counts.
        progress: PhaseProgress,
    },
    /// Moves a running project from `from` to the next phase, or completes it after launch.
    AdvancePhase {
        /// The project.
        id: String,
        /// The phase it must be in, so that a repeated command never skips a phase.
        from: Phase,
        /// When, in the proposer's milliseconds (the end of a project it completes).
        now_ms: u64,
    },
    /// Pauses a running project; holding a held project is a no-op.
    HoldProject {
        /// The project.
        id: String,
    },
    /// Resumes a held project; resuming a running project is a no-op.
    ResumeProject {
        /// The project.
        id: String,
    },
    /// Gives up a running or held project; failing it again for the same reason is a no-op.
    FailProject {
        /// The project.
        id: String,
        /// Why.
        reason: String,
        /// When, in the proposer's milliseconds.
        now_ms: u64,
    },
    /// Forgets a completed or failed project; forgetting an unknown one is a no-op.
    RemoveProject {
        /// The project.
        id: String,
    },
    /// Puts a policy document in force as the next version; the same text again is a
    /// no-op. The proposer has parsed and checked it (the Registry does not read it).
    ApplyPolicy {
        /// The document (TOML).
        text: String,
        /// The proposer's time.
        now_ms: u64,
    },
    /// Records a PerformanceAlert; while an unacknowledged one of the same metric and
    /// subject is open, a new one is a no-op.
    RaiseAlert {
        /// The alert (unacknowledged).
        alert: Alert,
    },
    /// Acknowledges an alert; acknowledging it again is a no-op.
    AckAlert {
        /// Its id.
        id: u64,
        /// A person's note.
        note: String,
        /// The proposer's time.
        now_ms: u64,
    },
    /// Sets a policy.
    SetPolicy {
        /// Its key.
        key: String,
        /// Its value.
        value: String,
    },
    /// Sets a state's budget, never below what it has spent.
    SetBudget {
        /// The state.
        state: String,
        /// The budget.
        budget: u64,
    },
    /// Spends from a state's budget; rejected if that would go over it.
    Spend {
        /// The state.
        state: String,
        /// How much.
        amount: u64,
    },
    /// Records how a state's Raft group is founded. The same founding again is a no-op;
    /// another founding of a state that has one is rejected.
    FoundStateGroup {
        /// The state.
        state: String,
        /// Its group.
        group: StateGroup,
    },
    /// Records a state's governor. Accepted for a later term, or the same term and the
    /// same governor (new mayors); anything else is stale and rejected.
    RecordGovernor {
        /// The state.
        state: String,
        /// Its governor.
        governor: GovernorRecord,
    },
    /// Records round `round` (from 1) of the review of the project's current phase.
    /// The same review again is a no-op; any other round than the next is rejected.
    RecordReview {
        /// The project.
        id: String,
        /// The phase it must be in.
        phase: Phase,
        /// The round.
        round: u32,
        /// The review.
        review: Review,
    },
    /// Makes a running project wait in `phase` for a person's decision
    /// ([`ProjectStatus::AwaitingApproval`]); repeating it is a no-op.
    AwaitApproval {
        /// The project.
        id: String,
        /// The phase it must be in.
        phase: Phase,
    },
    /// A person's decision on a project awaiting approval: approving moves it to the
    /// next phase (or completes it after launch), rejecting fails it with the note.
    DecideApproval {
        /// The project.
        id: String,
        /// The phase it must be waiting in.
        phase: Phase,
        /// Approve (true) or reject.
        approve: bool,
        /// Why, in the person's words (may be empty).
        note: String,
        /// When, in the proposer's milliseconds (the end of a project it finishes).
        now_ms: u64,
    },
    /// Commits the tasks an llm planned for the project's current phase. The same plan
    /// again is a no-op; another once one is committed is rejected.
    SetPlan {
        /// The project.
        id: String,
        /// The phase it must be in.
        phase: Phase,
        /// The planned tasks, encoded by the node.
        plan: Vec<u8>,
    },
    /// Records that planning attempt `attempt` (from 1) of the project's current phase
    /// was refused, and why. The same refusal again is a no-op; any other attempt than
    /// the next is rejected.
    RefusePlan {
        /// The project.
        id: String,
        /// The phase it must be in.
        phase: Phase,
        /// The attempt.
        attempt: u32,
        /// Why the plan was refused (the planner's next brief names it).
        reason: String,
    },
    /// Starts the next group-key epoch, keeping only it and the previous one. Repeating the
    /// rotation to the current epoch with the same keys is a no-op.
    RotateGroupKey {
        /// Exactly the current epoch plus one.
        epoch: u64,
        /// The new group key wrapped for each recipient, all active members.
        wrapped: BTreeMap<NodeKey, Vec<u8>>,
    },
    /// Sets (or with `None` removes) a state's limit on one resource.
    SetLimit {
        /// The state.
        state: String,
        /// The resource.
        resource: Resource,
        /// The limit.
        limit: Option<Limit>,
    },
    /// Records a ResourceRequest. While one of the same state and resource is open, it
    /// stands and this is a no-op.
    RaiseResourceRequest {
        /// The request (undecided).
        request: ResourceRequest,
    },
    /// Decides an open ResourceRequest: approving raises the state's limit on its
    /// resource by `amount` in the same step. Deciding it again is a no-op.
    DecideResourceRequest {
        /// Its id.
        id: u64,
        /// The decision.
        decision: ResourceDecision,
    },
    // New variants go last: postcard writes a variant's index, and logs already on
    // disk hold the old ones.
    /// Gives members admitted since the current epoch began that epoch's key, each
    /// wrapped for itself. Entries the epoch already has are kept as they are, so
    /// repeating it is a no-op.
    ShareGroupKey {
        /// Exactly the current epoch.
        epoch: u64,
        /// The current key wrapped for each new recipient, all active members.
        wrapped: BTreeMap<NodeKey, Vec<u8>>,
    },
}

/// The result of applying a [`RegistryCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegistryResponse {
    /// Applied, or already in effect.
    Ok,
    /// The node is an active member.
    Admitted {
        /// The node.
        node: NodeKey,
    },
    /// The project moved on.
    PhaseAdvanced {
        /// Its new phase, or `None` when it completed after launch.
        to: Option<Phase>,
    },
    /// Not applied; nothing changed.
    Rejected {
        /// What was wrong and what to do about it.
        reason: String,
    },
}

/// The federal group's replicated state; changed only through [`Registry::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    members: BTreeMap<NodeKey, Member>,
    states: BTreeMap<String, StateInfo>,
    projects: BTreeMap<String, Project>,
    policies: BTreeMap<String, String>,
    policy: Option<PolicyDocument>,
    alerts: BTreeMap<u64, Alert>,
    next_alert: u64,
    join_tokens: BTreeMap<[u8; 32], JoinToken>,
    group_key_epoch: u64,
    group_keys: BTreeMap<u64, BTreeMap<NodeKey, Vec<u8>>>,
    /// Bumped by every change to `members`: readers that rebuild something from every
    /// member (a node's peer book, its inbox roster) skip the rebuild while it stays.
    members_version: u64,
    resource_requests: BTreeMap<u64, ResourceRequest>,
    next_resource_request: u64,
}

/// A handler's result: the response, or why the command is rejected.
type Outcome = Result<RegistryResponse, String>;

const OK: Outcome = Ok(RegistryResponse::Ok);

impl Registry {
    /// Applies one committed command. Never panics; a rejected command changes nothing.
    pub fn apply(&mut self, command: &RegistryCommand) -> RegistryResponse {
        use RegistryCommand as C;
        let outcome = match command {
            C::AddState { name, budget } => self.add_state(name, *budget),
            C::AdmitMember {
                identity,
                addrs,
                skills,
                capacity,
                now_ms,
                token,
            } => self.admit_member(identity, addrs, skills, *capacity, *now_ms, token.as_ref()),
            C::UpdateMember {
                node,
                addrs,
                skills,
                capacity,
            } => self.update_member(node, addrs, skills, *capacity),
            C::PlaceMember { node, state } => self.place_member(node, state),
            C::RemoveMember { node } => self.remove_member(node),
            C::EvictMember { node } => self.evict_member(node),
            C::RevokeJoinToken {
                digest,
                expires_ms,
                now_ms,
            } => self.revoke_join_token(*digest, *expires_ms, *now_ms),
            C::SubmitProject {
                id,
                name,
                spec,
                now_ms,
                owner,
            } => self.submit_project(id, name, spec, *now_ms, *owner),
            C::SetProjectProgress {
                id,
                phase,
                progress,
            } => self.set_project_progress(id, *phase, *progress),
            C::AdvancePhase { id, from, now_ms } => self.advance_phase(id, *from, *now_ms),
            C::HoldProject { id } => self.hold_or_resume(id, ProjectStatus::Held),
            C::ResumeProject { id } => self.hold_or_resume(id, ProjectStatus::Running),
            C::FailProject { id, reason, now_ms } => self.fail_project(id, reason, *now_ms),
            C::RemoveProject { id } => self.remove_project(id),
            C::SetPolicy { key, value } => self.set_policy(key, value),
            C::ApplyPolicy { text, now_ms } => self.apply_policy(text, *now_ms),
            C::RaiseAlert { alert } => self.raise_alert(alert),
            C::AckAlert { id, note, now_ms } => self.ack_alert(*id, note, *now_ms),
            C::SetBudget { state, budget } => self.set_budget(state, *budget),
            C::Spend { state, amount } => self.spend(state, *amount),
            C::RotateGroupKey { epoch, wrapped } => self.rotate_group_key(*epoch, wrapped),
            C::ShareGroupKey { epoch, wrapped } => self.share_group_key(*epoch, wrapped),
            C::FoundStateGroup { state, group } => self.found_state_group(state, group),
            C::RecordGovernor { state, governor } => self.record_governor(state, governor),
            C::RecordReview {
                id,
                phase,
                round,
                review,
            } => self.record_review(id, *phase, *round, review),
            C::AwaitApproval { id, phase } => self.await_approval(id, *phase),
            C::DecideApproval {
                id,
                phase,
                approve,
                note,
                now_ms,
            } => self.decide_approval(id, *phase, (*approve, note), *now_ms),
            C::SetPlan { id, phase, plan } => self.set_plan(id, *phase, plan),
            C::RefusePlan {
                id,
                phase,
                attempt,
                reason,
            } => self.refuse_plan(id, *phase, *attempt, reason),
            C::SetLimit {
                state,
                resource,
                limit,
            } => self.set_limit(state, *resource, *limit),
            C::RaiseResourceRequest { request } => self.raise_resource_request(request),
            C::DecideResourceRequest { id, decision } => {
                self.decide_resource_request(*id, decision)
            }
        };
        outcome.unwrap_or_else(|reason| RegistryResponse::Rejected { reason })
    }

    fn add_state(&mut self, name: &str, budget: u64) -> Outcome {
        check_name("state name", name)?;
        if let Some(existing) = self.states.get(name) {
            if existing.budget != budget {
                return Err(format!(
                    "state {name:?} exists; change its budget with SetBudget"
                ));
            }
            return OK;
        }
        if self.states.len() >= MAX_STATES {
            return Err(full("states", MAX_STATES));
        }
        let info = StateInfo {
            budget,
            ..StateInfo::default()
        };
        self.states.insert(name.to_owned(), info);
        OK
    }

    fn admit_member(
        &mut self,
        identity: &PublicIdentity,
        addrs: &[String],
        skills: &BTreeSet<String>,
        capacity: u32,
        now_ms: u64,
        token: Option<&TokenTerms>,
    ) -> Outcome {
        let node = identity.node;
        check_profile(addrs, skills)?;
        if let Some(member) = self.members.get_mut(&node) {
            if member.status == MemberStatus::Evicted {
                return Err(evicted(&node));
            }
            if member.status == MemberStatus::Active {
                if member.identity != *identity {
                    return Err(format!(
                        "{node} is a member with another key; remove it first"
                    ));
                }
                // A repeated admission (a retry, or a restart with new addresses) refreshes
                // the profile and spends no token use: the node was admitted already.
                if member.set_profile(addrs, skills, capacity) {
                    self.members_version += 1;
                }
                return Ok(RegistryResponse::Admitted { node });
            }
        } else if self.members.len() >= MAX_MEMBERS {
            return Err(full("members", MAX_MEMBERS));
        }
        if let Some(terms) = token {
            self.spend_join_token(&node, terms, now_ms)?;
        }
        let member = Member {
            identity: *identity,
            addrs: addrs.to_vec(),
            skills: skills.clone(),
            capacity,
            state: None,
            status: MemberStatus::Active,
            joined_ms: now_ms,
        };
        self.members.insert(node, member);
        self.members_version += 1;
        Ok(RegistryResponse::Admitted { node })
    }

    fn update_member(
        &mut self,
        node: &NodeKey,
        addrs: &[String],
        skills: &BTreeSet<String>,
        capacity: u32,
    ) -> Outcome {
        check_profile(addrs, skills)?;
        if self
            .active_member_mut(node)?
            .set_profile(addrs, skills, capacity)
        {
            self.members_version += 1;
        }
        OK
    }

    fn place_member(&mut self, node: &NodeKey, state: &str) -> Outcome {
        check_name("state name", state)?;
        if !self.states.contains_key(state) {
            return Err(format!("no state {state:?}; add it with AddState"));
        }
        let member = self.active_member_mut(node)?;
        if member.state.as_deref() != Some(state) {
            member.state = Some(state.to_owned());
            self.members_version += 1;
        }
        OK
    }

    fn remove_member(&mut self, node: &NodeKey) -> Outcome {
        let Some(member) = self.members.get_mut(node) else {
            return Err(format!("{node} is not a member"));
        };
        if member.status == MemberStatus::Evicted {
            return OK;
        }
        if member.status != MemberStatus::Left || member.state.is_some() {
            member.status = MemberStatus::Left;
            member.state = None;
            self.members_version += 1;
        }
        OK
    }

    fn evict_member(&mut self, node: &NodeKey) -> Outcome {
        let Some(member) = self.members.get_mut(node) else {
            return Err(format!("{node} is not a member"));
        };
        if member.status != MemberStatus::Evicted {
            member.status = MemberStatus::Evicted;
            member.state = None;
            self.members_version += 1;
        }
        OK
    }

    fn active_member_mut(&mut self, node: &NodeKey) -> Result<&mut Member, String> {
        match self.members.get_mut(node) {
            Some(member) if member.status == MemberStatus::Active => Ok(member),
            Some(member) if member.status == MemberStatus::Evicted => Err(evicted(node)),
            Some(_) => Err(format!("{node} has left the mesh; admit it again first")),
            None => Err(format!("{node} is not a member; admit it first")),
        }
    }

    /// Spends one use of a join token, recording it at its first use. Checks everything
    /// before it changes anything.
    fn spend_join_token(&mut self, node: &NodeKey, terms: &TokenTerms, now_ms: u64) -> Outcome {
        let known = self.join_tokens.get(&terms.digest).copied();
        let token = known.unwrap_or(JoinToken {
            expires_ms: terms.expires_ms,
            uses_left: terms.uses,
            revoked: false,
        });
        if token.revoked {
            return Err(format!("the join token of {node} was revoked"));
        }
        if now_ms >= token.expires_ms {
            let expires_ms = token.expires_ms;
            return Err(format!(
                "the join token of {node} expired at {expires_ms} ms"
            ));
        }
        if token.uses_left == 0 {
            let uses = terms.uses;
            return Err(format!(
                "the join token of {node} is used up (it allowed {uses} admissions)"
            ));
        }
        if known.is_none() {
            self.make_room_for_token(now_ms)?;
        }
        let uses_left = token.uses_left - 1;
        self.join_tokens
            .insert(terms.digest, JoinToken { uses_left, ..token });
        OK
    }

    fn revoke_join_token(&mut self, digest: [u8; 32], expires_ms: u64, now_ms: u64) -> Outcome {
        if let Some(token) = self.join_tokens.get_mut(&digest) {
            token.revoked = true;
            token.uses_left = 0;
            return OK;
        }
        if now_ms >= expires_ms {
            // Expired: it admits no one anyway.
            return OK;
        }
        self.make_room_for_token(now_ms)?;
        let token = JoinToken {
            expires_ms,
            uses_left: 0,
            revoked: true,
        };
        self.join_tokens.insert(digest, token);
        OK
    }

    /// Forgets the expired tokens when one more would not fit; fails, changing nothing,
    /// when the live ones fill [`MAX_JOIN_TOKENS`].
    fn make_room_for_token(&mut self, now_ms: u64) -> Outcome {
        if self.join_tokens.len() < MAX_JOIN_TOKENS {
            return OK;
        }
        let live = self.join_tokens.values();
        if live.filter(|token| now_ms < token.expires_ms).count() >= MAX_JOIN_TOKENS {
            return Err(full("join tokens", MAX_JOIN_TOKENS));
        }
        self.join_tokens
            .retain(|_, token| now_ms < token.expires_ms);
        OK
    }

    fn submit_project(
        &mut self,
        id: &str,
        name: &str,
        spec: &[u8],
        now_ms: u64,
        owner: NodeKey,
    ) -> Outcome {
        check_name("project id", id)?;
        check_name("project name", name)?;
        check_size("project spec", spec.len(), MAX_SPEC_BYTES)?;
        if let Some(existing) = self.projects.get(id) {
            if existing.name != name || existing.spec != spec {
                return Err(format!("project id {id:?} is taken; choose another id"));
            }
            return OK;
        }
        if self.projects.len() >= MAX_PROJECTS {
            return Err(full("projects", MAX_PROJECTS));
        }
        let total: usize = self
            .projects
            .values()
            .map(|project| project.spec.len())
            .sum();
        check_size(
            "sum of project specs",
            total + spec.len(),
            MAX_SPEC_BYTES_TOTAL,
        )?;
        let project = Project {
            name: name.to_owned(),
            spec: spec.to_vec(),
            phase: Phase::Initiation,
            status: ProjectStatus::Running,
            progress: BTreeMap::new(),
            gates: BTreeMap::new(),
            submitted_ms: now_ms,
            ended_ms: None,
            owner,
        };
        self.projects.insert(id.to_owned(), project);
        OK
    }

    fn project_mut(&mut self, id: &str) -> Result<&mut Project, String> {
        check_name("project id", id)?;
        let project = self.projects.get_mut(id);
        project.ok_or_else(|| format!("no project {id:?}; submit it first"))
    }

    fn set_project_progress(&mut self, id: &str, phase: Phase, progress: PhaseProgress) -> Outcome {
        if !progress.is_consistent() {
            return Err(format!("inconsistent progress {progress:?}"));
        }
        let project = self.project_mut(id)?;
        if phase > project.phase {
            let current = project.phase;
            return Err(format!(
                "project {id:?} is in {current:?}, before {phase:?}"
            ));
        }
        project.progress.insert(phase, progress);
        OK
    }

    fn advance_phase(&mut self, id: &str, from: Phase, now_ms: u64) -> Outcome {
        let project = self.project_mut(id)?;
        if project.status != ProjectStatus::Running {
            let status = &project.status;
            return Err(format!("project {id:?} is {status:?}, not running"));
        }
        if project.phase != from {
            let current = project.phase;
            return Err(format!(
                "project {id:?} is in phase {current:?}, not {from:?}"
            ));
        }
        let to = from.next();
        match to {
            Some(next) => project.phase = next,
            None => {
                project.status = ProjectStatus::Completed;
                project.ended_ms = Some(now_ms);
            }
        }
        Ok(RegistryResponse::PhaseAdvanced { to })
    }

    /// Holds (`Held`) or resumes (`Running`) a project that is not finished.
    fn hold_or_resume(&mut self, id: &str, status: ProjectStatus) -> Outcome {
        let project = self.project_mut(id)?;
        if project.status.is_finished() {
            return Err(format!("project {id:?} is finished"));
        }
        project.status = status;
        OK
    }

    fn fail_project(&mut self, id: &str, reason: &str, now_ms: u64) -> Outcome {
        check_size("failure reason", reason.len(), MAX_REASON_BYTES)?;
        let project = self.project_mut(id)?;
        match &project.status {
            ProjectStatus::Running
            | ProjectStatus::Held
            | ProjectStatus::AwaitingApproval { .. } => {}
            ProjectStatus::Failed { reason: earlier } if earlier == reason => return OK,
            ProjectStatus::Failed { .. } => return Err(format!("project {id:?} failed already")),
            ProjectStatus::Completed => return Err(format!("project {id:?} is completed")),
        }
        let reason = reason.to_owned();
        project.status = ProjectStatus::Failed { reason };
        project.ended_ms = Some(now_ms);
        OK
    }

    /// The project, running in `phase`.
    fn running_in(&mut self, id: &str, phase: Phase) -> Result<&mut Project, String> {
        let project = self.project_mut(id)?;
        if project.status != ProjectStatus::Running {
            let status = &project.status;
            return Err(format!("project {id:?} is {status:?}, not running"));
        }
        if project.phase != phase {
            let current = project.phase;
            return Err(format!(
                "project {id:?} is in phase {current:?}, not {phase:?}"
            ));
        }
        Ok(project)
    }

    fn record_review(&mut self, id: &str, phase: Phase, round: u32, review: &Review) -> Outcome {
        check_size("review feedback", review.feedback.len(), MAX_FEEDBACK_BYTES)?;
        check_size("reopened tasks", review.reopen.len(), MAX_REOPENED_TASKS)?;
        for task in &review.reopen {
            check_name("task name", task)?;
        }
        let project = self.running_in(id, phase)?;
        let reviews = project
            .gates
            .get(&phase)
            .map_or(&[][..], |gate| &gate.reviews);
        // Checked before the gate's entry is made: a refused review changes nothing.
        let new = next_in_order(reviews, round, review, MAX_REVIEW_ROUNDS).map_err(|order| {
            order.describe(id, phase, "review round", "review rounds of a phase")
        })?;
        if !new {
            return OK;
        }
        project
            .gates
            .entry(phase)
            .or_default()
            .reviews
            .push(review.clone());
        OK
    }

    fn set_plan(&mut self, id: &str, phase: Phase, plan: &[u8]) -> Outcome {
        if plan.is_empty() {
            return Err(format!("project {id:?}: an empty plan"));
        }
        check_size("plan", plan.len(), MAX_PLAN_BYTES)?;
        let project = self.running_in(id, phase)?;
        match project
            .gates
            .get(&phase)
            .and_then(|gate| gate.plan.as_deref())
        {
            Some(committed) if committed == plan => OK,
            Some(_) => Err(format!(
                "project {id:?}: phase {phase:?} has a plan already"
            )),
            None => {
                project.gates.entry(phase).or_default().plan = Some(plan.to_vec());
                OK
            }
        }
    }

    fn refuse_plan(&mut self, id: &str, phase: Phase, attempt: u32, reason: &str) -> Outcome {
        check_size("plan refusal", reason.len(), MAX_FEEDBACK_BYTES)?;
        let project = self.running_in(id, phase)?;
        let gate = project.gates.get(&phase);
        if gate.is_some_and(|gate| gate.plan.is_some()) {
            return Err(format!(
                "project {id:?}: phase {phase:?} has a plan already"
            ));
        }
        let refusals = gate.map_or(&[][..], |gate| &gate.plan_refusals);
        let reason = reason.to_owned();
        let new =
            next_in_order(refusals, attempt, &reason, MAX_PLAN_REFUSALS).map_err(|order| {
                order.describe(id, phase, "planning attempt", "refused plans of a phase")
            })?;
        if !new {
            return OK;
        }
        project
            .gates
            .entry(phase)
            .or_default()
            .plan_refusals
            .push(reason);
        OK
    }

    fn await_approval(&mut self, id: &str, phase: Phase) -> Outcome {
        let project = self.project_mut(id)?;
        if project.status == (ProjectStatus::AwaitingApproval { phase }) {
            return OK;
        }
        let project = self.running_in(id, phase)?;
        project.status = ProjectStatus::AwaitingApproval { phase };
        OK
    }

    fn decide_approval(
        &mut self,
        id: &str,
        phase: Phase,
        (approve, note): (bool, &str),
        now_ms: u64,
    ) -> Outcome {
        check_size("approval note", note.len(), MAX_NOTE_BYTES)?;
        let project = self.project_mut(id)?;
        let waiting = ProjectStatus::AwaitingApproval { phase };
        if project.status != waiting {
            let status = &project.status;
            return Err(format!(
                "project {id:?} is {status:?}, not awaiting approval of phase {phase:?}"
            ));
        }
        if !approve {
            let reason = format!(
                "rejected at the approval of phase {}: {}",
                phase.as_str(),
                if note.is_empty() {
                    "no note given"
                } else {
                    note
                }
            );
            project.status = ProjectStatus::Failed { reason };
            project.ended_ms = Some(now_ms);
            return OK;
        }
        project.gates.entry(phase).or_default().approval = Some(note.to_owned());
        project.status = ProjectStatus::Running;
        let to = phase.next();
        match to {
            Some(next) => project.phase = next,
            None => {
                project.status = ProjectStatus::Completed;
                project.ended_ms = Some(now_ms);
            }
        }
        Ok(RegistryResponse::PhaseAdvanced { to })
    }

    fn remove_project(&mut self, id: &str) -> Outcome {
        check_name("project id", id)?;
        let Some(project) = self.projects.get(id) else {
            return OK;
        };
        if !project.status.is_finished() {
            return Err(format!("project {id:?} is not finished; fail it first"));
        }
        self.projects.remove(id);
        OK
    }

    fn raise_alert(&mut self, alert: &Alert) -> Outcome {
        check_name("alert metric", &alert.metric)?;
        check_size("alert message", alert.message.len(), MAX_REASON_BYTES)?;
        if alert.acknowledged.is_some() {
            return Err("an alert is raised unacknowledged".to_owned());
        }
        let open = self.alerts.values().any(|open| {
            open.acknowledged.is_none()
                && open.metric == alert.metric
                && open.subject == alert.subject
        });
        if open {
            return OK;
        }
        if self.alerts.len() >= MAX_ALERTS {
            let oldest_acknowledged = self
                .alerts
                .iter()
                .find(|(_, alert)| alert.acknowledged.is_some())
                .map(|(id, _)| *id);
            match oldest_acknowledged {
                Some(id) => {
                    self.alerts.remove(&id);
                }
                None => return Err(full("unacknowledged alerts", MAX_ALERTS)),
            }
        }
        self.next_alert += 1;
        self.alerts.insert(self.next_alert, alert.clone());
        OK
    }

    fn set_limit(&mut self, state: &str, resource: Resource, limit: Option<Limit>) -> Outcome {
        let info = self.state_mut(state)?;
        if info.limits.get(&resource).copied() == limit {
            return OK;
        }
        match limit {
            Some(limit) => info.limits.insert(resource, limit),
            None => info.limits.remove(&resource),
        };
        info.limits_version += 1;
        OK
    }

    fn raise_resource_request(&mut self, request: &ResourceRequest) -> Outcome {
        check_size("request reason", request.reason.len(), MAX_REASON_BYTES)?;
        if request.decision.is_some() {
            return Err("a ResourceRequest is raised undecided".to_owned());
        }
        self.state_mut(&request.state)?;
        let open = self.resource_requests.values().any(|open| {
            open.decision.is_none()
                && open.state == request.state
                && open.resource == request.resource
        });
        if open {
            return OK;
        }
        if self.resource_requests.len() >= MAX_RESOURCE_REQUESTS {
            let oldest_decided = self
                .resource_requests
                .iter()
                .find(|(_, request)| request.decision.is_some())
                .map(|(id, _)| *id);
            match oldest_decided {
                Some(id) => {
                    self.resource_requests.remove(&id);
                }
                None => return Err(full("open resource requests", MAX_RESOURCE_REQUESTS)),
            }
        }
        self.next_resource_request += 1;
        self.resource_requests
            .insert(self.next_resource_request, request.clone());
        OK
    }

    fn decide_resource_request(&mut self, id: u64, decision: &ResourceDecision) -> Outcome {
        check_size("decision note", decision.note.len(), MAX_NOTE_BYTES)?;
        check_name("decider", &decision.by)?;
        let Some(request) = self.resource_requests.get(&id) else {
            return Err(format!("no resource request {id}"));
        };
        if request.decision.is_some() {
            return OK;
        }
        let (state, resource) = (request.state.clone(), request.resource);
        if decision.approved {
            let info = self.state_mut(&state)?;
            if let Some(limit) = info.limits.get_mut(&resource) {
                limit.amount = limit.amount.saturating_add(decision.amount);
                info.limits_version += 1;
            }
        }
        let mut decided = decision.clone();
        if !decided.approved {
            decided.amount = 0;
        }
        if let Some(request) = self.resource_requests.get_mut(&id) {
            request.decision = Some(decided);
        }
        OK
    }

    fn ack_alert(&mut self, id: u64, note: &str, now_ms: u64) -> Outcome {
        check_size("acknowledgement note", note.len(), MAX_NOTE_BYTES)?;
        let Some(alert) = self.alerts.get_mut(&id) else {
            return Err(format!("no alert {id}"));
        };
        if alert.acknowledged.is_none() {
            alert.acknowledged = Some((now_ms, note.to_owned()));
        }
        OK
    }

    fn apply_policy(&mut self, text: &str, now_ms: u64) -> Outcome {
        check_size("policy document", text.len(), MAX_POLICY_DOCUMENT_BYTES)?;
        let version = match &self.policy {
            Some(current) if current.text == text => return OK,
            Some(current) => current.version + 1,
            None => 1,
        };
        self.policy = Some(PolicyDocument {
            version,
            text: text.to_owned(),
            applied_ms: now_ms,
        });
        OK
    }

    fn set_policy(&mut self, key: &str, value: &str) -> Outcome {
        check_name("policy key", key)?;
        check_size("policy value", value.len(), MAX_POLICY_VALUE_BYTES)?;
        if !self.policies.contains_key(key) && self.policies.len() >= MAX_POLICIES {
            return Err(full("policies", MAX_POLICIES));
        }
        self.policies.insert(key.to_owned(), value.to_owned());
        OK
    }

    fn state_mut(&mut self, state: &str) -> Result<&mut StateInfo, String> {
        check_name("state name", state)?;
        let info = self.states.get_mut(state);
        info.ok_or_else(|| format!("no state {state:?}; add it with AddState"))
    }

    fn found_state_group(&mut self, state: &str, group: &StateGroup) -> Outcome {
        if group.id == 0 {
            return Err("group 0 is the federal group".into());
        }
        if group.voters.is_empty() || group.voters.len() > MAX_STATE_VOTERS {
            return Err(format!(
                "a state group has 1 to {MAX_STATE_VOTERS} voters, not {}",
                group.voters.len()
            ));
        }
        if !group.voters.contains(&group.founder) {
            return Err("the founder must be one of the voters".into());
        }
        if let Some(voter) = group.voters.iter().find(|voter| !self.is_active(voter)) {
            return Err(format!("voter {voter} is not an active member"));
        }
        let taken = self.states.iter().any(|(name, info)| {
            name != state && info.group.as_ref().is_some_and(|g| g.id == group.id)
        });
        if taken {
            return Err(format!("group {} belongs to another state", group.id));
        }
        let info = self.state_mut(state)?;
        match &info.group {
            Some(existing) if existing == group => OK,
            Some(_) => Err(format!("state {state:?} already has a group")),
            None => {
                info.group = Some(group.clone());
                OK
            }
        }
    }

    fn record_governor(&mut self, state: &str, governor: &GovernorRecord) -> Outcome {
        if governor.mayors.len() > MAX_REPORTED_CITIES {
            return Err(full("reported cities", MAX_REPORTED_CITIES));
        }
        if governor.voters.len() > MAX_STATE_VOTERS {
            return Err(full("reported voters", MAX_STATE_VOTERS));
        }
        for city in governor.mayors.keys() {
            check_name("city name", city)?;
        }
        if !self.is_active(&governor.node) {
            return Err(format!(
                "governor {} is not an active member",
                governor.node
            ));
        }
        let info = self.state_mut(state)?;
        if info.group.is_none() {
            return Err(format!("state {state:?} has no group yet"));
        }
        match &info.governor {
            Some(current) if current == governor => return OK,
            Some(current) if governor.term < current.term => {
                return Err(format!(
                    "stale: state {state:?} is at term {}, not {}",
                    current.term, governor.term
                ));
            }
            Some(current) if governor.term == current.term && governor.node != current.node => {
                return Err(format!(
                    "state {state:?} already has governor {} in term {}",
                    current.node, current.term
                ));
            }
            _ => {}
        }
        info.governor = Some(governor.clone());
        OK
    }

    fn set_budget(&mut self, state: &str, budget: u64) -> Outcome {
        let info = self.state_mut(state)?;
        if budget < info.spent {
            let spent = info.spent;
            return Err(format!(
                "state {state:?} has spent {spent}, more than {budget}"
            ));
        }
        info.budget = budget;
        OK
    }

    fn spend(&mut self, state: &str, amount: u64) -> Outcome {
        let info = self.state_mut(state)?;
        match info.spent.checked_add(amount) {
            Some(spent) if spent <= info.budget => {
                info.spent = spent;
                OK
            }
            _ => {
                let left = info.budget.saturating_sub(info.spent);
                Err(format!(
                    "state {state:?} has {left} left, not {amount}; raise its budget"
                ))
            }
        }
    }

    fn rotate_group_key(&mut self, epoch: u64, wrapped: &BTreeMap<NodeKey, Vec<u8>>) -> Outcome {
        if epoch == self.group_key_epoch && self.group_keys.get(&epoch) == Some(wrapped) {
            return OK;
        }
        if Some(epoch) != self.group_key_epoch.checked_add(1) {
            let current = self.group_key_epoch;
            return Err(format!("group-key epoch {epoch} does not follow {current}"));
        }
        if wrapped.is_empty() {
            return Err(format!("group-key epoch {epoch} has no recipients"));
        }
        self.check_wrapped_keys(wrapped)?;
        // Keep the previous epoch: messages sealed just before the rotation still open.
        self.group_keys.retain(|kept, _| *kept >= epoch - 1);
        self.group_keys.insert(epoch, wrapped.clone());
        self.group_key_epoch = epoch;
        OK
    }

    fn share_group_key(&mut self, epoch: u64, wrapped: &BTreeMap<NodeKey, Vec<u8>>) -> Outcome {
        let current = self.group_key_epoch;
        if epoch != current || current == 0 {
            return Err(format!(
                "group-key epoch {epoch} is not the current one ({current})"
            ));
        }
        self.check_wrapped_keys(wrapped)?;
        let keys = self.group_keys.entry(epoch).or_default();
        for (node, key) in wrapped {
            keys.entry(*node).or_insert_with(|| key.clone());
        }
        OK
    }

    /// Every key is for an active member and of a sane size.
    fn check_wrapped_keys(&self, wrapped: &BTreeMap<NodeKey, Vec<u8>>) -> Outcome {
        for (node, key) in wrapped {
            if !self.is_active(node) {
                return Err(format!(
                    "group key wrapped for {node}, not an active member"
                ));
            }
            if key.is_empty() {
                return Err(format!("empty group key wrapped for {node}"));
            }
            check_size("wrapped group key", key.len(), MAX_WRAPPED_KEY_BYTES)?;
        }
        OK
    }

    /// Checks the invariants; only a bug can break them, so this panics.
    pub fn validate(&self) {
        assert!(self.resource_requests.len() <= MAX_RESOURCE_REQUESTS);
        for request in self.resource_requests.values() {
            assert!(
                self.states.contains_key(&request.state),
                "request of no state"
            );
        }
        assert!(self.members.len() <= MAX_MEMBERS);
        for (node, member) in &self.members {
            assert_eq!(*node, member.identity.node, "member keyed by another key");
            assert_eq!(check_profile(&member.addrs, &member.skills), Ok(()));
            if let Some(state) = &member.state {
                assert_eq!(member.status, MemberStatus::Active, "left member placed");
                assert!(self.states.contains_key(state), "member in unknown state");
            }
        }
        assert!(self.states.len() <= MAX_STATES);
        for (name, info) in &self.states {
            assert_eq!(check_name("state", name), Ok(()));
            assert!(info.spent <= info.budget, "state {name:?} overspent");
            if let Some(group) = &info.group {
                assert_ne!(group.id, 0, "state {name:?} in the federal group");
                assert!(group.voters.contains(&group.founder));
                let same_id = self
                    .states
                    .values()
                    .filter(|other| other.group.as_ref().is_some_and(|g| g.id == group.id));
                assert_eq!(same_id.count(), 1, "group {} shared", group.id);
            }
            assert!(info.governor.is_none() || info.group.is_some());
        }
        assert!(self.projects.len() <= MAX_PROJECTS);
        let mut spec_bytes_total = 0;
        for (id, project) in &self.projects {
            assert_eq!(check_name("project id", id), Ok(()));
            assert_eq!(check_name("project name", &project.name), Ok(()));
            assert!(project.spec.len() <= MAX_SPEC_BYTES);
            spec_bytes_total += project.spec.len();
            if project.status == ProjectStatus::Completed {
                assert_eq!(project.phase, Phase::Launch, "{id:?} completed early");
            }
            if let ProjectStatus::Failed { reason } = &project.status {
                assert!(reason.len() <= MAX_REASON_BYTES);
            }
            for (phase, progress) in &project.progress {
                assert!(*phase <= project.phase, "{id:?} has progress ahead");
                assert!(progress.is_consistent(), "{id:?} progress inconsistent");
            }
            if let ProjectStatus::AwaitingApproval { phase } = &project.status {
                assert_eq!(*phase, project.phase, "{id:?} awaits another phase");
            }
            for (phase, gate) in &project.gates {
                assert!(*phase <= project.phase, "{id:?} has a gate ahead");
                assert!(gate.reviews.len() <= MAX_REVIEW_ROUNDS);
                assert!(gate.plan.as_ref().is_none_or(|p| p.len() <= MAX_PLAN_BYTES));
                assert!(gate.plan_refusals.len() <= MAX_PLAN_REFUSALS);
                assert!(
                    gate.approval
                        .as_ref()
                        .is_none_or(|n| n.len() <= MAX_NOTE_BYTES)
                );
            }
        }
        assert!(spec_bytes_total <= MAX_SPEC_BYTES_TOTAL);
        assert!(self.policies.len() <= MAX_POLICIES);
        assert!(self.alerts.len() <= MAX_ALERTS);
        assert!(self.alerts.keys().all(|id| *id <= self.next_alert));
        if let Some(policy) = &self.policy {
            assert!(policy.version >= 1 && policy.text.len() <= MAX_POLICY_DOCUMENT_BYTES);
        }
        for (key, value) in &self.policies {
            assert_eq!(check_name("policy key", key), Ok(()));
            assert!(value.len() <= MAX_POLICY_VALUE_BYTES);
        }
        assert!(self.join_tokens.len() <= MAX_JOIN_TOKENS);
        let revoked_spent = |token: &JoinToken| !token.revoked || token.uses_left == 0;
        assert!(self.join_tokens.values().all(revoked_spent));
        let current = self.group_key_epoch;
        assert!(self.group_keys.len() <= GROUP_KEY_EPOCHS_KEPT);
        assert_eq!(self.group_keys.contains_key(&current), current > 0);
        for (epoch, wrapped) in &self.group_keys {
            assert!(*epoch <= current && *epoch >= current.saturating_sub(1));
            assert!(!wrapped.is_empty() && wrapped.len() <= MAX_MEMBERS);
            let size_ok = |key: &Vec<u8>| !key.is_empty() && key.len() <= MAX_WRAPPED_KEY_BYTES;
            assert!(wrapped.values().all(size_ok), "bad wrapped key in {epoch}");
        }
    }

    /// A counter that changes whenever any member is admitted, updated, placed or
    /// removed, and only then: equal versions of one group's Registry hold the same
    /// members.
    pub fn members_version(&self) -> u64 {
        self.members_version
    }

    /// All members, active and left.
    pub fn members(&self) -> &BTreeMap<NodeKey, Member> {
        &self.members
    }

    /// The members an operator evicted: their keys are refused.
    pub fn evicted_members(&self) -> impl Iterator<Item = &NodeKey> {
        let members = self.members.iter();
        members
            .filter(|(_, member)| member.status == MemberStatus::Evicted)
            .map(|(key, _)| key)
    }

    /// Whether `node` is an active member.
    pub fn is_active(&self, node: &NodeKey) -> bool {
        let member = self.members.get(node);
        member.is_some_and(|member| member.status == MemberStatus::Active)
    }

    /// Active members in node-key order.
    pub fn active_members(&self) -> impl Iterator<Item = (&NodeKey, &Member)> {
        let members = self.members.iter();
        members.filter(|(_, member)| member.status == MemberStatus::Active)
    }

    /// Active members placed in `state`.
    pub fn members_in_state<'a>(
        &'a self,
        state: &'a str,
    ) -> impl Iterator<Item = (&'a NodeKey, &'a Member)> {
        let members = self.active_members();
        members.filter(move |(_, member)| member.state.as_deref() == Some(state))
    }

    /// Active members not placed in any state yet.
    pub fn unplaced_members(&self) -> impl Iterator<Item = (&NodeKey, &Member)> {
        self.active_members()
            .filter(|(_, member)| member.state.is_none())
    }

    /// The number of active members of every state, empty states included.
    pub fn member_count_by_state(&self) -> BTreeMap<&str, usize> {
        let mut counts: BTreeMap<&str, usize> =
            self.states.keys().map(|name| (name.as_str(), 0)).collect();
        let placed = self
            .active_members()
            .filter_map(|(_, m)| m.state.as_deref());
        for state in placed {
            if let Some(count) = counts.get_mut(state) {
                *count += 1;
            }
        }
        counts
    }

    /// All states by name.
    pub fn states(&self) -> &BTreeMap<String, StateInfo> {
        &self.states
    }

    /// All projects by id.
    pub fn projects(&self) -> &BTreeMap<String, Project> {
        &self.projects
    }

    /// All policies by key.
    pub fn policies(&self) -> &BTreeMap<String, String> {
        &self.policies
    }

    /// The policy document in force, if one was applied.
    pub fn policy(&self) -> Option<&PolicyDocument> {
        self.policy.as_ref()
    }

    /// The alerts kept, by id (oldest first).
    pub fn alerts(&self) -> &BTreeMap<u64, Alert> {
        &self.alerts
    }

    /// The ResourceRequests kept, by id (oldest first).
    pub fn resource_requests(&self) -> &BTreeMap<u64, ResourceRequest> {
        &self.resource_requests
    }

    /// Recorded join tokens by digest.
    pub fn join_tokens(&self) -> &BTreeMap<[u8; 32], JoinToken> {
        &self.join_tokens
    }

    /// The current group-key epoch; 0 before the first rotation.
    pub fn group_key_epoch(&self) -> u64 {
        self.group_key_epoch
    }

    /// The wrapped group keys of a kept epoch (the current or the previous one).
    pub fn group_keys(&self, epoch: u64) -> Option<&BTreeMap<NodeKey, Vec<u8>>> {
        self.group_keys.get(&epoch)
    }
}

/// Checks a member's addresses and skills against their bounds.
fn check_profile(addrs: &[String], skills: &BTreeSet<String>) -> Result<(), String> {
    check_size("address list", addrs.len(), MAX_ADDRS_PER_MEMBER)?;
    for addr in addrs {
        check_size("address", addr.len(), MAX_ADDR_BYTES)?;
    }
    check_size("skill set", skills.len(), MAX_SKILLS_PER_MEMBER)?;
    skills
        .iter()
        .try_for_each(|skill| check_name("skill", skill))
}

/// Checks a name (state, project, skill, policy, city, task, resource): not empty, at most
/// [`MAX_NAME_BYTES`], no control characters (names reach logs and the API).
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    check_size(what, name.len(), MAX_NAME_BYTES)?;
    if name.chars().any(char::is_control) {
        return Err(format!("the {what} {name:?} has control characters"));
    }
    Ok(())
}

/// Checks a size (bytes or entries) against its limit.
pub(crate) fn check_size(what: &str, size: usize, max: usize) -> Result<(), String> {
    if size > max {
        return Err(format!(
            "the {what} has size {size}, over the limit of {max}"
        ));
    }
    Ok(())
}

/// The reason for refusing to grow a collection that is full.
/// Why an item numbered from 1 (a review round, a planning attempt) was not taken.
enum OutOfOrder {
    /// Not the next number.
    NotNext { number: usize, next: usize },
    /// The next, but past the bound.
    Full { max: usize },
}

impl OutOfOrder {
    fn describe(&self, id: &str, phase: Phase, item: &str, items: &str) -> String {
        match self {
            Self::NotNext { number, next } => format!(
                "project {id:?}: {item} {number} of phase {phase:?} is not the next ({next})"
            ),
            Self::Full { max } => full(items, *max),
        }
    }
}

/// Whether `item`, numbered `number` from 1, is new to `recorded` (true: record it) or
/// the one recorded under that number again (false: a retry, a no-op); any other number
/// than the next, or one past `max`, is refused.
fn next_in_order<T: PartialEq>(
    recorded: &[T],
    number: u32,
    item: &T,
    max: usize,
) -> Result<bool, OutOfOrder> {
    let number = usize::try_from(number).unwrap_or(usize::MAX);
    if number >= 1 && recorded.get(number - 1) == Some(item) {
        return Ok(false);
    }
    let next = recorded.len() + 1;
    if number != next {
        return Err(OutOfOrder::NotNext { number, next });
    }
    if number > max {
        return Err(OutOfOrder::Full { max });
    }
    Ok(true)
}

fn full(what: &str, max: usize) -> String {
    format!("the registry holds the maximum of {max} {what}; remove some first")
}

fn evicted(node: &NodeKey) -> String {
    format!("{node} was evicted from the mesh; its key is never admitted again")
}

#[cfg(test)]
mod tests {
    use aamas_protocol::{ByteArray, EncryptionKey};
    use sha2::Digest as _;

    use super::*;
    use super::{RegistryCommand as C, RegistryResponse as R};

    fn node(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn identity(n: u8) -> PublicIdentity {
        let (encryption, binding) = (EncryptionKey([n; 32]), ByteArray([n; 64]));
        PublicIdentity {
            node: node(n),
            encryption,
            binding,
        }
    }

    fn admit(n: u8, token: Option<TokenTerms>) -> C {
        C::AdmitMember {
            identity: identity(n),
            addrs: vec![format!("/ip4/10.0.0.{n}/tcp/4001")],
            skills: BTreeSet::from(["rust".to_owned()]),
            capacity: 2,
            now_ms: 1_000,
            token,
        }
    }

    fn add_state(name: &str, budget: u64) -> C {
        let name = name.to_owned();
        C::AddState { name, budget }
    }

    fn place(n: u8, state: &str) -> C {
        let state = state.to_owned();
        C::PlaceMember {
            node: node(n),
            state,
        }
    }

    /// The terms of token `digest`.
    fn token(digest: u8, expires_ms: u64, uses: u32) -> Option<TokenTerms> {
        Some(TokenTerms {
            digest: [digest; 32],
            expires_ms,
            uses,
        })
    }

    fn revoke(digest: u8, expires_ms: u64) -> C {
        C::RevokeJoinToken {
            digest: [digest; 32],
            expires_ms,
            now_ms: 1_000,
        }
    }

    fn submit(id: &str, spec: &[u8]) -> C {
        let (id, name, spec) = (id.to_owned(), "Demo".to_owned(), spec.to_vec());
        C::SubmitProject {
            id,
            name,
            spec,
            now_ms: 5,
            owner: NodeKey([9; 32]),
        }
    }

    fn progress(phase: Phase, tasks_total: u32, tasks_done: u32, tasks_failed: u32) -> C {
        let progress = PhaseProgress {
            tasks_total,
            tasks_done,
            tasks_failed,
        };
        let id = "p1".to_owned();
        C::SetProjectProgress {
            id,
            phase,
            progress,
        }
    }

    fn advance(from: Phase) -> C {
        let id = "p1".to_owned();
        C::AdvancePhase {
            id,
            from,
            now_ms: 2_000,
        }
    }

    fn p1(make: fn(String) -> C) -> C {
        make("p1".to_owned())
    }

    fn spend(amount: u64) -> C {
        let state = "market".to_owned();
        C::Spend { state, amount }
    }

    fn budget(state: &str, budget: u64) -> C {
        let state = state.to_owned();
        C::SetBudget { state, budget }
    }

    /// Member `n`'s wrapped key is `len` bytes of `n`.
    fn wrapped(keys: &[(u8, usize)]) -> BTreeMap<NodeKey, Vec<u8>> {
        keys.iter()
            .map(|&(n, len)| (node(n), vec![n; len]))
            .collect()
    }

    fn rotate(epoch: u64, keys: &[(u8, usize)]) -> C {
        C::RotateGroupKey {
            epoch,
            wrapped: wrapped(keys),
        }
    }

    fn share(epoch: u64, keys: &[(u8, usize)]) -> C {
        C::ShareGroupKey {
            epoch,
            wrapped: wrapped(keys),
        }
    }

    /// Applies and checks the invariants, as every test step does.
    fn run(registry: &mut Registry, command: &C) -> R {
        let response = registry.apply(command);
        registry.validate();
        response
    }

    /// Applies `command`, which must be rejected with a reason containing `needle` and
    /// change nothing.
    fn refused(registry: &mut Registry, command: &C, needle: &str) {
        let before = registry.clone();
        match run(registry, command) {
            R::Rejected { reason } => assert!(reason.contains(needle), "{reason:?}"),
            other => panic!("{command:?} was not rejected: {other:?}"),
        }
        assert_eq!(*registry, before);
    }

    fn run_ok(registry: &mut Registry, commands: &[C]) {
        for command in commands {
            let response = run(registry, command);
            assert!(
                !matches!(response, R::Rejected { .. }),
                "{command:?}: {response:?}"
            );
        }
    }

    fn rejected(response: &R) -> bool {
        matches!(response, R::Rejected { .. })
    }

    #[test]
    fn an_approved_resource_request_raises_its_states_limit_once() {
        use crate::resources::{Limit, Period, Resource};
        let mut registry = Registry::default();
        let limit = Limit {
            amount: 100,
            period: Period::Day,
            hard: true,
        };
        let set = C::SetLimit {
            state: "north".into(),
            resource: Resource::MoneyMicros,
            limit: Some(limit),
        };
        refused(&mut registry, &set, "no state");
        run_ok(&mut registry, &[add_state("north", 0), set.clone(), set]);
        assert_eq!(registry.states()["north"].limits_version, 1);
        let request = ResourceRequest {
            state: "north".into(),
            resource: Resource::MoneyMicros,
            amount: 50,
            reason: "tasks wait".into(),
            raised_ms: 1,
            raised_by: node(1),
            via: node(2),
            decision: None,
        };
        let raise = C::RaiseResourceRequest {
            request: request.clone(),
        };
        // One open request per state and resource.
        run_ok(&mut registry, &[raise.clone(), raise.clone()]);
        assert_eq!(registry.resource_requests().len(), 1);
        let decision = |approved| ResourceDecision {
            approved,
            amount: 50,
            by: "operator".into(),
            note: "ok".into(),
            decided_ms: 2,
        };
        refused(
            &mut registry,
            &C::DecideResourceRequest {
                id: 9,
                decision: decision(true),
            },
            "no resource request 9",
        );
        let approve = C::DecideResourceRequest {
            id: 1,
            decision: decision(true),
        };
        run_ok(&mut registry, &[approve.clone(), approve]);
        let info = &registry.states()["north"];
        assert_eq!(
            (
                info.limits[&Resource::MoneyMicros].amount,
                info.limits_version
            ),
            (150, 2)
        );
        // Decided: the next one is a new request; denying changes no limit.
        run_ok(
            &mut registry,
            &[
                raise,
                C::DecideResourceRequest {
                    id: 2,
                    decision: decision(false),
                },
            ],
        );
        let info = &registry.states()["north"];
        assert_eq!(info.limits[&Resource::MoneyMicros].amount, 150);
        let denied = registry.resource_requests()[&2].decision.clone();
        assert_eq!(denied.map(|d| (d.approved, d.amount)), Some((false, 0)));
    }

    /// Two states, members 1 and 2 (1 placed; 2 admitted with a three-use token 7, so
    /// two uses are left) and project p1.
    fn populated() -> Registry {
        let mut registry = Registry::default();
        let setup = [
            add_state("technical", 100),
            add_state("market", 50),
            admit(1, None),
            admit(2, token(7, 2_000, 3)),
            place(1, "technical"),
            submit("p1", b"spec"),
        ];
        run_ok(&mut registry, &setup);
        registry
    }

    #[test]
    fn rejected_commands_change_nothing() {
        let mut rekeyed = admit(1, None);
        if let C::AdmitMember { identity, .. } = &mut rekeyed {
            identity.encryption = EncryptionKey([99; 32]);
        }
        let mut crowded = admit(3, None);
        if let C::AdmitMember { addrs, .. } = &mut crowded {
            *addrs = vec!["a".to_owned(); MAX_ADDRS_PER_MEMBER + 1];
        }
        let oversized_spec = vec![0u8; MAX_SPEC_BYTES + 1];
        let fail = |id: String| C::FailProject {
            id,
            reason: "x".repeat(MAX_REASON_BYTES + 1),
            now_ms: 2_000,
        };
        let table = [
            (add_state("", 1), "is empty"),
            (
                add_state(&"x".repeat(MAX_NAME_BYTES + 1), 1),
                "over the limit of 256",
            ),
            (add_state("bad\nname", 1), "control characters"),
            (add_state("technical", 7), "SetBudget"),
            (admit(3, token(9, 2_000, 0)), "used up (it allowed 0"),
            (admit(3, token(9, 1_000, 1)), "expired at 1000 ms"),
            (rekeyed, "another key"),
            (crowded, "address list has size 17"),
            (place(2, "nowhere"), "no state \"nowhere\""),
            (place(9, "market"), "not a member"),
            (C::RemoveMember { node: node(9) }, "not a member"),
            (C::EvictMember { node: node(9) }, "not a member"),
            (submit("p1", b"other spec"), "is taken"),
            (submit("p2", &oversized_spec), "project spec has size"),
            (
                progress(Phase::Initiation, 1, 1, 1),
                "inconsistent progress",
            ),
            (progress(Phase::Design, 0, 0, 0), "before Design"),
            (advance(Phase::Design), "not Design"),
            (p1(|id| C::RemoveProject { id }), "not finished"),
            (p1(fail), "failure reason has size"),
            (spend(51), "has 50 left, not 51"),
            (spend(u64::MAX), "raise its budget"),
            (budget("nowhere", 1), "no state"),
            (rotate(2, &[(1, 48)]), "does not follow 0"),
            (rotate(1, &[]), "no recipients"),
            (rotate(1, &[(9, 48)]), "not an active member"),
            (share(1, &[(1, 48)]), "not the current one (0)"),
            (
                rotate(1, &[(1, MAX_WRAPPED_KEY_BYTES + 1)]),
                "wrapped group key has size",
            ),
        ];
        for (command, needle) in table {
            let mut registry = populated();
            let before = registry.clone();
            match run(&mut registry, &command) {
                R::Rejected { reason } => assert!(reason.contains(needle), "{reason:?}"),
                other => panic!("{command:?} was not rejected: {other:?}"),
            }
            assert_eq!(registry, before, "{command:?} changed the registry");
        }
    }

    #[test]
    fn gates_record_reviews_in_rounds_and_wait_for_a_person() {
        let mut registry = populated();
        let phase = registry.projects()["p1"].phase;
        let id = || "p1".to_owned();
        let record = |round: u32, approved: bool| C::RecordReview {
            id: id(),
            phase,
            round,
            review: Review {
                approved,
                feedback: "add the error cases".to_owned(),
                reopen: vec!["a".to_owned()],
            },
        };
        refused(&mut registry, &record(2, false), "not the next (1)");
        assert_eq!(run(&mut registry, &record(1, false)), R::Ok);
        assert_eq!(run(&mut registry, &record(1, false)), R::Ok, "a retry");
        refused(&mut registry, &record(1, true), "not the next (2)");
        assert_eq!(registry.projects()["p1"].gates[&phase].reviews.len(), 1);

        let decide = |approve: bool, note: &str| C::DecideApproval {
            id: id(),
            phase,
            approve,
            note: note.to_owned(),
            now_ms: 2_000,
        };
        refused(&mut registry, &decide(true, ""), "not awaiting approval");
        let wait = C::AwaitApproval { id: id(), phase };
        assert_eq!(run(&mut registry, &wait), R::Ok);
        assert_eq!(run(&mut registry, &wait), R::Ok, "a retry");
        let waiting = ProjectStatus::AwaitingApproval { phase };
        assert_eq!(registry.projects()["p1"].status, waiting);
        refused(&mut registry, &advance(phase), "not running");
        refused(&mut registry, &record(2, true), "not running");
        refused(
            &mut registry,
            &decide(true, &"n".repeat(MAX_NOTE_BYTES + 1)),
            "approval note has size",
        );

        let mut rejected = registry.clone();
        assert_eq!(
            run(&mut registry, &decide(true, "as agreed with finance")),
            R::PhaseAdvanced { to: phase.next() }
        );
        let project = &registry.projects()["p1"];
        assert_eq!(project.status, ProjectStatus::Running);
        assert_eq!(Some(project.phase), phase.next());
        assert_eq!(
            project.gates[&phase].approval.as_deref(),
            Some("as agreed with finance")
        );
        refused(
            &mut registry,
            &decide(true, "again"),
            "not awaiting approval",
        );

        assert_eq!(
            run(&mut rejected, &decide(false, "not what we asked")),
            R::Ok
        );
        match &rejected.projects()["p1"].status {
            ProjectStatus::Failed { reason } => {
                assert!(reason.contains("not what we asked"), "{reason}");
                assert!(reason.contains(phase.as_str()), "{reason}");
            }
            other => panic!("a rejection left it {other:?}"),
        }
    }

    #[test]
    fn a_plan_is_committed_once_after_refusals_counted_in_order() {
        let mut registry = populated();
        let phase = registry.projects()["p1"].phase;
        let refuse = |attempt: u32, reason: &str| C::RefusePlan {
            id: "p1".to_owned(),
            phase,
            attempt,
            reason: reason.to_owned(),
        };
        let set = |plan: &[u8]| C::SetPlan {
            id: "p1".to_owned(),
            phase,
            plan: plan.to_vec(),
        };
        refused(&mut registry, &refuse(2, "a cycle"), "not the next (1)");
        assert_eq!(run(&mut registry, &refuse(1, "a cycle")), R::Ok);
        assert_eq!(run(&mut registry, &refuse(1, "a cycle")), R::Ok, "a retry");
        refused(&mut registry, &refuse(1, "too many"), "not the next (2)");
        refused(&mut registry, &set(&[]), "an empty plan");
        refused(
            &mut registry,
            &set(&vec![1; MAX_PLAN_BYTES + 1]),
            "plan has size",
        );
        assert_eq!(run(&mut registry, &set(b"tasks")), R::Ok);
        assert_eq!(run(&mut registry, &set(b"tasks")), R::Ok, "a retry");
        refused(&mut registry, &set(b"other"), "has a plan already");
        refused(&mut registry, &refuse(2, "late"), "has a plan already");
        let gate = &registry.projects()["p1"].gates[&phase];
        assert_eq!(gate.plan.as_deref(), Some(&b"tasks"[..]));
        assert_eq!(gate.plan_refusals, vec!["a cycle".to_owned()]);
    }

    #[test]
    fn repeated_commands_take_effect_once() {
        let table = [
            add_state("operations", 10),
            admit(1, token(7, 2_000, 3)),
            admit(3, None),
            place(2, "market"),
            C::RemoveMember { node: node(2) },
            C::EvictMember { node: node(2) },
            revoke(7, 2_000),
            revoke(8, 2_000),
            submit("p1", b"spec"),
            submit("p2", b"spec"),
            progress(Phase::Initiation, 3, 1, 1),
            p1(|id| C::HoldProject { id }),
            p1(|id| C::ResumeProject { id }),
            p1(|id| C::FailProject {
                id,
                reason: "cancelled".to_owned(),
                now_ms: 2_000,
            }),
            C::SetPolicy {
                key: "max_retries".to_owned(),
                value: "3".to_owned(),
            },
            C::ApplyPolicy {
                text: "tier = \"starter\"\n".to_owned(),
                now_ms: 7,
            },
            budget("market", 80),
            rotate(1, &[(1, 80), (2, 80)]),
        ];
        for command in table {
            let mut registry = populated();
            let first = run(&mut registry, &command);
            assert!(!rejected(&first), "{command:?}: {first:?}");
            let once = registry.clone();
            assert_eq!(
                run(&mut registry, &command),
                first,
                "{command:?} answered anew"
            );
            assert_eq!(registry, once, "{command:?} took effect twice");
        }
    }

    #[test]
    fn the_members_version_moves_with_the_members_and_only_with_them() {
        let mut registry = populated();
        let mut version = registry.members_version();
        let mut moved = |registry: &Registry| {
            let now = registry.members_version();
            let changed = now != version;
            version = now;
            changed
        };
        run_ok(&mut registry, &[admit(3, None)]);
        assert!(moved(&registry), "a new member");
        run_ok(&mut registry, &[admit(3, None)]);
        assert!(!moved(&registry), "the same admission again");
        run_ok(
            &mut registry,
            &[C::SetPolicy {
                key: "p".into(),
                value: "t".into(),
            }],
        );
        assert!(!moved(&registry), "a change outside the members");
        run_ok(&mut registry, &[C::RemoveMember { node: node(3) }]);
        assert!(moved(&registry), "a member left");
    }

    #[test]
    fn join_tokens_are_spent_once_per_new_member() {
        let mut registry = populated();
        let uses_left =
            |registry: &Registry| registry.join_tokens().get(&[7; 32]).map(|t| t.uses_left);
        assert_eq!(uses_left(&registry), Some(2), "recorded at its first use");
        assert_eq!(
            run(&mut registry, &admit(3, token(7, 2_000, 3))),
            R::Admitted { node: node(3) }
        );
        assert_eq!(uses_left(&registry), Some(1));
        // Admitting the same active member again spends nothing.
        assert_eq!(
            run(&mut registry, &admit(3, token(7, 2_000, 3))),
            R::Admitted { node: node(3) }
        );
        assert_eq!(uses_left(&registry), Some(1));
        assert_eq!(
            run(&mut registry, &admit(4, token(7, 2_000, 3))),
            R::Admitted { node: node(4) }
        );
        // Used up: kept until it expires, so it is not counted anew.
        assert_eq!(uses_left(&registry), Some(0));
        refused(
            &mut registry,
            &admit(5, token(7, 2_000, 3)),
            "used up (it allowed 3 admissions)",
        );
        assert!(!registry.members().contains_key(&node(5)));

        let mut late = admit(6, token(8, 3_000, 5));
        if let C::AdmitMember { now_ms, .. } = &mut late {
            *now_ms = 3_000;
        }
        refused(&mut registry, &late, "expired at 3000 ms");
        assert!(!registry.join_tokens().contains_key(&[8; 32]));
    }

    #[test]
    fn a_revoked_token_admits_no_one_whether_used_or_not() {
        let mut registry = populated();
        // Token 7 has been used once; token 8 never.
        run_ok(&mut registry, &[revoke(7, 2_000), revoke(8, 2_000)]);
        refused(&mut registry, &admit(3, token(7, 2_000, 3)), "was revoked");
        refused(&mut registry, &admit(4, token(8, 2_000, 9)), "was revoked");
        let revoked = registry.join_tokens()[&[8; 32]];
        assert!(revoked.revoked && revoked.uses_left == 0);
        // An expired token is not recorded: it admits no one anyway.
        run_ok(&mut registry, &[revoke(9, 1_000)]);
        assert!(!registry.join_tokens().contains_key(&[9; 32]));
    }

    #[test]
    fn tokens_past_their_expiry_make_room_for_new_ones() {
        let mut registry = populated();
        for i in 0..MAX_JOIN_TOKENS - 1 {
            let digest: [u8; 32] = sha2::Sha256::digest(i.to_be_bytes()).into();
            registry.join_tokens.insert(
                digest,
                JoinToken {
                    expires_ms: 1_500,
                    uses_left: 1,
                    revoked: false,
                },
            );
        }
        assert_eq!(registry.join_tokens().len(), MAX_JOIN_TOKENS);
        refused(&mut registry, &admit(3, token(9, 9_000, 1)), "maximum of");
        let mut later = admit(3, token(9, 9_000, 1));
        if let C::AdmitMember { now_ms, .. } = &mut later {
            *now_ms = 2_000;
        }
        run_ok(&mut registry, &[later]);
        assert_eq!(registry.join_tokens().len(), 1, "expired ones forgotten");
    }

    #[test]
    fn a_policy_document_is_versioned_and_the_same_text_again_changes_nothing() {
        let mut registry = populated();
        let apply = |text: &str, now_ms| C::ApplyPolicy {
            text: text.to_owned(),
            now_ms,
        };
        assert_eq!(registry.policy(), None);
        run_ok(&mut registry, &[apply("a", 1), apply("a", 2)]);
        let first = registry.policy().cloned().expect("applied");
        assert_eq!((first.version, first.applied_ms), (1, 1));
        run_ok(&mut registry, &[apply("b", 3)]);
        assert_eq!(
            registry.policy().map(|p| (p.version, p.text.as_str())),
            Some((2, "b"))
        );
        let oversized = "x".repeat(MAX_POLICY_DOCUMENT_BYTES + 1);
        refused(
            &mut registry,
            &apply(&oversized, 4),
            "policy document has size",
        );
    }

    fn alert(subject: u8) -> C {
        C::RaiseAlert {
            alert: Alert {
                metric: "worker_failures_in_a_row".to_owned(),
                subject: node(subject),
                value_milli: 3_000,
                threshold_milli: 3_000,
                message: "failing".to_owned(),
                raised_ms: 1,
                raised_by: node(1),
                acknowledged: None,
            },
        }
    }

    #[test]
    fn an_alert_stays_open_once_until_acknowledged_and_old_ones_make_room() {
        let mut registry = populated();
        run_ok(&mut registry, &[alert(2), alert(2), alert(3)]);
        assert_eq!(
            registry.alerts().len(),
            2,
            "one open alert per metric and subject"
        );
        let ack = |id, note: &str| C::AckAlert {
            id,
            note: note.to_owned(),
            now_ms: 9,
        };
        run_ok(
            &mut registry,
            &[ack(1, "replaced its disk"), ack(1, "again")],
        );
        assert_eq!(
            registry.alerts()[&1].acknowledged,
            Some((9, "replaced its disk".to_owned()))
        );
        refused(&mut registry, &ack(7, ""), "no alert 7");
        run_ok(&mut registry, &[alert(2)]);
        assert_eq!(
            registry.alerts().keys().copied().collect::<Vec<_>>(),
            [1, 2, 3]
        );
        // Full: the oldest acknowledged one makes room; with none, a new one is refused.
        let C::RaiseAlert { alert: open } = alert(4) else {
            unreachable!()
        };
        for id in 4..=u64::try_from(MAX_ALERTS).unwrap_or(u64::MAX) {
            let mut other = open.clone();
            other.subject = NodeKey(sha2::Sha256::digest(id.to_be_bytes()).into());
            registry.alerts.insert(id, other);
        }
        registry.next_alert = u64::try_from(MAX_ALERTS).unwrap_or(u64::MAX);
        run_ok(&mut registry, &[alert(5)]);
        assert_eq!(registry.alerts().len(), MAX_ALERTS);
        assert!(
            !registry.alerts().contains_key(&1),
            "the acknowledged one made room"
        );
        refused(
            &mut registry,
            &alert(6),
            "maximum of 1024 unacknowledged alerts",
        );
    }

    #[test]
    fn an_evicted_member_is_unplaced_and_never_admitted_again() {
        let mut registry = populated();
        let version = registry.members_version();
        run_ok(&mut registry, &[C::EvictMember { node: node(1) }]);
        assert_ne!(registry.members_version(), version);
        let member = &registry.members()[&node(1)];
        assert_eq!(
            (member.status, &member.state),
            (MemberStatus::Evicted, &None)
        );
        assert!(!registry.is_active(&node(1)));
        assert_eq!(registry.evicted_members().collect::<Vec<_>>(), [&node(1)]);
        refused(&mut registry, &admit(1, None), "was evicted");
        refused(&mut registry, &admit(1, token(7, 2_000, 3)), "was evicted");
        refused(&mut registry, &place(1, "market"), "was evicted");
        // Leaving does not undo an eviction.
        run_ok(&mut registry, &[C::RemoveMember { node: node(1) }]);
        assert_eq!(registry.members()[&node(1)].status, MemberStatus::Evicted);
    }

    #[test]
    fn members_leave_rejoin_and_are_counted_by_state() {
        let mut registry = populated();
        let update = |n| C::UpdateMember {
            node: node(n),
            addrs: vec![],
            skills: BTreeSet::from(["finance".to_owned()]),
            capacity: 8,
        };
        run_ok(
            &mut registry,
            &[admit(3, None), place(3, "technical"), update(2)],
        );
        let counts = registry.member_count_by_state();
        assert_eq!(counts, BTreeMap::from([("market", 0), ("technical", 2)]));
        assert_eq!(registry.unplaced_members().count(), 1);
        assert_eq!(registry.members()[&node(2)].capacity, 8);

        run_ok(&mut registry, &[C::RemoveMember { node: node(1) }]);
        let left = &registry.members()[&node(1)];
        assert_eq!((left.status, &left.state), (MemberStatus::Left, &None));
        let technical: Vec<NodeKey> = registry
            .members_in_state("technical")
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(technical, [node(3)]);
        assert!(rejected(&run(&mut registry, &update(1))));

        let mut rejoin = admit(1, None);
        if let C::AdmitMember { now_ms, .. } = &mut rejoin {
            *now_ms = 9_000;
        }
        assert_eq!(run(&mut registry, &rejoin), R::Admitted { node: node(1) });
        let back = &registry.members()[&node(1)];
        assert_eq!((back.status, back.joined_ms), (MemberStatus::Active, 9_000));
    }

    #[test]
    fn a_project_walks_all_phases_then_completes() {
        let mut registry = populated();
        for (from, to) in Phase::ALL.into_iter().zip(Phase::ALL.into_iter().skip(1)) {
            assert_eq!(
                run(&mut registry, &advance(from)),
                R::PhaseAdvanced { to: Some(to) }
            );
            // The same command again is refused: a retry never skips a phase.
            assert!(rejected(&run(&mut registry, &advance(from))));
        }
        let hold = p1(|id| C::HoldProject { id });
        assert_eq!(run(&mut registry, &hold), R::Ok);
        assert!(rejected(&run(&mut registry, &advance(Phase::Launch))));
        run_ok(&mut registry, &[p1(|id| C::ResumeProject { id })]);
        let completed = R::PhaseAdvanced { to: None };
        assert_eq!(run(&mut registry, &advance(Phase::Launch)), completed);
        let project = &registry.projects()["p1"];
        assert_eq!(
            (project.phase, &project.status),
            (Phase::Launch, &ProjectStatus::Completed)
        );
        // Its end is recorded, from the command that completed it.
        assert_eq!(project.ended_ms, Some(2_000));
        assert!(rejected(&run(&mut registry, &hold)));
        assert_eq!(run(&mut registry, &p1(|id| C::RemoveProject { id })), R::Ok);
        assert!(registry.projects().is_empty());
    }

    #[test]
    fn budgets_are_never_overspent() {
        let mut registry = populated();
        assert_eq!(run(&mut registry, &spend(30)), R::Ok);
        assert_eq!(run(&mut registry, &spend(20)), R::Ok);
        assert!(rejected(&run(&mut registry, &spend(1))));
        assert!(rejected(&run(&mut registry, &budget("market", 49))));
        let market = StateInfo {
            budget: 50,
            spent: 50,
            ..StateInfo::default()
        };
        assert_eq!(registry.states().get("market"), Some(&market));
    }

    fn found(state: &str, id: u64, voters: &[u8]) -> C {
        let group = StateGroup {
            id,
            founder: node(voters[0]),
            voters: voters.iter().map(|&n| node(n)).collect(),
        };
        let state = state.to_owned();
        C::FoundStateGroup { state, group }
    }

    fn governor(state: &str, n: u8, term: u64) -> C {
        let mayors = BTreeMap::from([(format!("{state}-1"), Some(node(n)))]);
        let governor = GovernorRecord {
            node: node(n),
            term,
            mayors,
            voters: vec![node(n)],
        };
        let state = state.to_owned();
        C::RecordGovernor { state, governor }
    }

    #[test]
    fn a_state_group_is_founded_once_and_governors_only_move_forward() {
        let mut registry = populated();
        assert!(rejected(&run(&mut registry, &governor("technical", 1, 1))));
        assert!(rejected(&run(&mut registry, &found("technical", 0, &[1]))));
        assert!(rejected(&run(&mut registry, &found("technical", 5, &[3]))));
        assert!(rejected(&run(&mut registry, &found("nowhere", 5, &[1]))));
        assert_eq!(run(&mut registry, &found("technical", 5, &[1, 2])), R::Ok);
        assert_eq!(run(&mut registry, &found("technical", 5, &[1, 2])), R::Ok);
        assert!(rejected(&run(&mut registry, &found("technical", 6, &[2]))));
        assert!(rejected(&run(&mut registry, &found("market", 5, &[2]))));
        assert_eq!(run(&mut registry, &governor("technical", 1, 3)), R::Ok);
        assert!(rejected(&run(&mut registry, &governor("technical", 2, 3))));
        assert!(rejected(&run(&mut registry, &governor("technical", 2, 2))));
        assert_eq!(run(&mut registry, &governor("technical", 2, 4)), R::Ok);
        let record = registry.states()["technical"].governor.clone();
        assert_eq!(record.map(|g| (g.node, g.term)), Some((node(2), 4)));
    }

    #[test]
    fn only_two_group_key_epochs_are_kept() {
        let mut registry = populated();
        for epoch in 1..=3 {
            assert_eq!(run(&mut registry, &rotate(epoch, &[(1, 48)])), R::Ok);
        }
        assert_eq!(registry.group_key_epoch(), 3);
        assert!(registry.group_keys(1).is_none());
        assert!(registry.group_keys(2).is_some() && registry.group_keys(3).is_some());
    }

    #[test]
    fn a_shared_group_key_adds_new_recipients_and_keeps_the_others() {
        let mut registry = populated();
        assert_eq!(run(&mut registry, &rotate(1, &[(1, 48)])), R::Ok);
        let mut share = share(1, &[(1, 80), (2, 80)]);
        assert_eq!(run(&mut registry, &share), R::Ok);
        let keys = registry.group_keys(1).expect("epoch 1");
        assert_eq!(
            keys[&node(1)],
            vec![1; 48],
            "an existing entry was replaced"
        );
        assert_eq!(keys[&node(2)], vec![2; 80]);
        let before = registry.clone();
        assert_eq!(run(&mut registry, &share), R::Ok, "a repeat is a no-op");
        assert_eq!(registry, before);
        if let C::ShareGroupKey { wrapped, .. } = &mut share {
            wrapped.insert(node(9), vec![9; 80]);
        }
        assert!(rejected(&run(&mut registry, &share)), "9 is not a member");
        assert_eq!(registry, before);
    }

    #[test]
    fn full_collections_refuse_to_grow() {
        let mut registry = Registry::default();
        for n in 0..MAX_STATES {
            assert_eq!(run(&mut registry, &add_state(&format!("s{n}"), 1)), R::Ok);
        }
        let before = registry.clone();
        assert!(rejected(&run(&mut registry, &add_state("one-too-many", 1))));
        assert_eq!(registry, before);
    }

    #[test]
    fn snapshots_round_trip() {
        let mut registry = populated();
        run_ok(
            &mut registry,
            &[rotate(1, &[(1, 80)]), progress(Phase::Initiation, 2, 1, 0)],
        );
        let bytes = postcard::to_allocvec(&registry).expect("encode");
        let back: Registry = postcard::from_bytes(&bytes).expect("decode");
        back.validate();
        assert_eq!(back, registry);
    }

    /// Logs on disk hold commands by postcard's variant index: a variant inserted
    /// anywhere but last would make them decode as another command.
    #[test]
    fn commands_keep_their_variant_index_on_disk() {
        let tag = |command: &C| postcard::to_allocvec(command).expect("encode")[0];
        assert_eq!(tag(&add_state("s", 1)), 0);
        assert_eq!(tag(&rotate(1, &[(1, 48)])), 27);
        assert_eq!(tag(&share(1, &[(1, 48)])), 31);
    }
}
