//! Projects as users see them: submit, list, show, and change by hand (hold, resume,
//! advance). Any node takes the request; the president commits it.

use aamas_consensus::registry::{MAX_NOTE_BYTES, Project, ProjectStatus, RegistryCommand};
use std::collections::BTreeMap;

use aamas_protocol::{NodeKey, Phase};
use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::driver::runtime::{Node, now_ms};
use crate::net::swarm::Unacked;
use crate::net::wire::{Rpc, RpcResponse};
use crate::spec;

/// One phase of a project as `aamas project show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PhaseView {
    /// Its lowercase name.
    pub name: String,
    /// "pending", "running", "held", "awaiting-approval", "done" or "failed".
    pub status: String,
    /// Tasks in the phase.
    pub tasks_total: u32,
    /// Tasks with their one result committed.
    pub tasks_done: u32,
    /// Tasks that failed every attempt (escalated).
    pub tasks_failed: u32,
    /// The rounds of its llm gate's review, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub reviews: Vec<aamas_consensus::registry::Review>,
    /// The note of the person who approved it at its human gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// Why each plan an llm made for it was refused, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plan_refusals: Vec<String>,
}

/// A project as `aamas project show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProjectView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// "running", "completed", "failed", "held" or "awaiting-approval".
    pub status: String,
    /// The current phase's name.
    pub phase: String,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// Every phase of the lifecycle, in order.
    pub phases: Vec<PhaseView>,
    /// What its tasks used of models (filled by `GET /api/v1/projects/{id}?usage=true`,
    /// which reads every state's tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<ProjectUsage>,
}

/// Model use of a project: the sum over its tasks' committed results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Estimated cost, in millionths of the workers' price unit.
    pub cost_micros: u64,
    /// Each task that called a model, by name.
    pub tasks: BTreeMap<String, aamas_consensus::ledger::TaskUsage>,
    /// What every charged attempt of its tasks used, as their workers measured it (the
    /// project's share of its states' accounts).
    #[serde(default)]
    pub used: aamas_consensus::resources::Usage,
}

impl ProjectUsage {
    /// The sum over `tasks`; `None` when none called a model.
    pub fn of(tasks: &[TaskView]) -> Option<ProjectUsage> {
        let mut sum = ProjectUsage::default();
        for task in tasks {
            sum.used.add(&task.used);
            let Some(usage) = &task.usage else { continue };
            sum.prompt_tokens = sum.prompt_tokens.saturating_add(usage.prompt_tokens);
            sum.completion_tokens = sum
                .completion_tokens
                .saturating_add(usage.completion_tokens);
            sum.cost_micros = sum.cost_micros.saturating_add(usage.cost_micros);
            sum.tasks.insert(task.name.clone(), usage.clone());
        }
        (!sum.tasks.is_empty() || !sum.used.is_zero()).then_some(sum)
    }
}

/// How a project's status is written: "running", "held", "completed", "failed" or
/// "awaiting-approval".
pub fn view_status(status: &ProjectStatus) -> &'static str {
    match status {
        ProjectStatus::Running => "running",
        ProjectStatus::Held => "held",
        ProjectStatus::Completed => "completed",
        ProjectStatus::Failed { .. } => "failed",
        ProjectStatus::AwaitingApproval { .. } => "awaiting-approval",
    }
}

/// The view of one project.
pub fn view(id: &str, project: &Project) -> ProjectView {
    let status = view_status(&project.status);
    let reason = match &project.status {
        ProjectStatus::Failed { reason } => Some(reason.clone()),
        _ => None,
    };
    // Phases an llm planned count their planned tasks.
    let spec = spec::ProjectSpec::from_bytes(&project.spec)
        .ok()
        .map(|spec| {
            spec.with_plans(
                project
                    .gates
                    .iter()
                    .filter_map(|(phase, gate)| Some((*phase, gate.plan.as_deref()?))),
            )
        });
    let phases = Phase::ALL
        .iter()
        .map(|phase| {
            let progress = project.progress.get(phase).copied().unwrap_or_default();
            let total = spec
                .as_ref()
                .and_then(|spec| spec.phase(*phase))
                .map_or(progress.tasks_total, |p| {
                    u32::try_from(p.tasks.len()).unwrap_or(u32::MAX)
                });
            let phase_status =
                if *phase < project.phase || project.status == ProjectStatus::Completed {
                    "done"
                } else if *phase > project.phase {
                    "pending"
                } else {
                    status
                };
            let done = if phase_status == "done" {
                total
            } else {
                progress.tasks_done
            };
            PhaseView {
                name: phase.as_str().to_string(),
                status: phase_status.to_string(),
                tasks_total: total,
                tasks_done: done,
                tasks_failed: progress.tasks_failed,
                reviews: project
                    .gates
                    .get(phase)
                    .map(|gate| gate.reviews.clone())
                    .unwrap_or_default(),
                approval: project
                    .gates
                    .get(phase)
                    .and_then(|gate| gate.approval.clone()),
                plan_refusals: project
                    .gates
                    .get(phase)
                    .map(|gate| gate.plan_refusals.clone())
                    .unwrap_or_default(),
            }
        })
        .collect();
    ProjectView {
        id: id.to_string(),
        name: project.name.clone(),
        status: status.to_string(),
        phase: project.phase.as_str().to_string(),
        reason,
        phases,
        usage: None,
    }
}

pub use crate::net::wire::TaskView;

impl Node {
    /// The tasks of a project in the state groups this node takes part in (a node
    /// sees only its own states' Ledgers; ask one node per state for all of them).
    pub async fn project_tasks(&self, id: &str) -> Vec<TaskView> {
        let mut tasks = Vec::new();
        for group in self.groups.ids() {
            let Some(state) = self.state_of_group(group).await else {
                continue;
            };
            let Some(open) = self.groups.get(group) else {
                continue;
            };
            let found: Vec<TaskView> = open
                .read_local(|machine| {
                    machine
                        .ledger()
                        .map(|ledger| {
                            ledger
                                .tasks_of_project(id)
                                .map(|(key, task)| TaskView {
                                    name: key.task.clone(),
                                    state: state.clone(),
                                    phase: task.phase.as_str().to_string(),
                                    status: format!("{:?}", task.status).to_lowercase(),
                                    attempt: task.attempt,
                                    worker: task.worker.map(|w| w.peer_id()),
                                    result: task
                                        .result_digest
                                        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect()),
                                    reason: task.failure.clone(),
                                    reopened: task.reopened,
                                    usage: task.usage.clone(),
                                    used: task.used,
                                })
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .await;
            tasks.extend(found);
        }
        tasks
    }

    /// Every project this node's Registry copy knows.
    pub async fn projects(&self) -> Vec<ProjectView> {
        self.registry(|registry| {
            registry
                .projects()
                .iter()
                .map(|(id, project)| view(id, project))
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// One project.
    pub async fn project(&self, id: &str) -> Option<ProjectView> {
        self.registry(|registry| registry.projects().get(id).map(|project| view(id, project)))
            .await
            .flatten()
    }

    /// The president's peer, or `None` when this node is the president.
    pub(crate) fn president_peer(
        &self,
    ) -> Result<Option<(PeerId, Vec<libp2p::Multiaddr>)>, ProjectError> {
        let (president, peer) = self.president().ok_or(ProjectError::NoPresident)?;
        if president == self.me() {
            return Ok(None);
        }
        let peer: PeerId = peer.parse().map_err(|_| ProjectError::NoPresident)?;
        let addrs = self
            .book
            .get(president)
            .map(|(_, addrs)| addrs)
            .unwrap_or_default();
        Ok(Some((peer, addrs)))
    }

    /// Submits a project spec (TOML); returns its id. The spec is checked here first,
    /// so a bad one is refused (with its line) before anything is sent.
    ///
    /// With a client `request` id (the API's `Idempotency-Key`), the project's id is
    /// derived from it and the spec, so a submission retried after a lost answer or a
    /// failover returns the first project instead of creating a second one.
    pub async fn submit_project(
        &self,
        text: &str,
        submission: Submission<'_>,
    ) -> Result<String, ProjectError> {
        self.submit_project_as(self.identity.node_key(), text, submission)
            .await
    }

    /// [`Node::submit_project`] on behalf of `owner`: this node's own API, or the member
    /// that forwarded the request to the president.
    pub(crate) async fn submit_project_as(
        &self,
        owner: NodeKey,
        text: &str,
        submission: Submission<'_>,
    ) -> Result<String, ProjectError> {
        let Submission {
            request,
            override_reason,
        } = submission;
        let parsed = spec::parse(text).map_err(|error| ProjectError::BadSpec(error.to_string()))?;
        if let Some(request) = request {
            check_request_id(request)?;
        }
        if override_reason.is_some_and(|reason| reason.len() > MAX_NOTE_BYTES) {
            return Err(ProjectError::NoteTooLong);
        }
        let Some((peer, addrs)) = self.president_peer()? else {
            self.check_executors(&parsed).await?;
            let mut hasher = Sha256::new();
            hasher.update(text.as_bytes());
            match request {
                Some(request) => {
                    hasher.update(b"request");
                    hasher.update(request.as_bytes());
                }
                None => {
                    hasher.update(now_ms().to_be_bytes());
                    hasher.update(self.identity.node_key().0);
                }
            }
            let digest = hasher.finalize();
            let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            // A retry of a committed submission is not judged again (it would count
            // itself among the projects running).
            let known = self
                .registry(|registry| registry.projects().contains_key(&id))
                .await
                .unwrap_or(false);
            if !known {
                let running = self.projects_in_flight().await;
                let facts =
                    crate::governance::policy::submission_facts(&parsed, &owner.peer_id(), running);
                self.judge(
                    crate::governance::policy::Point::Submission,
                    &facts,
                    override_reason,
                )
                .await
                .map_err(ProjectError::PolicyDenied)?;
            }
            if planted_lost_ack() {
                tracing::error!(project = %id, "PLANTED BUG: acknowledged, never committed");
                return Ok(id);
            }
            let command = RegistryCommand::SubmitProject {
                id: id.clone(),
                name: parsed.name.clone(),
                spec: parsed.to_bytes(),
                now_ms: now_ms(),
                owner,
            };
            self.propose(&[b"submit", id.as_bytes()], command)
                .await
                .map_err(ProjectError::NotCommitted)?;
            tracing::info!(project = %id, name = %parsed.name, "project accepted");
            return Ok(id);
        };
        let rpc = Rpc::SubmitProject {
            spec: text.to_string(),
            request: request.map(str::to_string),
            override_reason: override_reason.map(str::to_string),
        };
        match self.handle.request(peer, addrs, rpc).await {
            Ok(RpcResponse::Submitted { id }) => Ok(id),
            Ok(RpcResponse::Refused { reason }) => {
                Err(ProjectError::President(Unacked::Refused { reason }))
            }
            Ok(other) => Err(ProjectError::President(Unacked::Unexpected {
                answer: format!("{other:?}"),
            })),
            Err(error) => Err(ProjectError::President(Unacked::Network(error))),
        }
    }

    /// Refuses a project with shell tasks when no member runs them: the mayors give a
    /// shell task only to a worker that does, and it would wait for ever. A member that
    /// joins later with shell finds the next such project accepted.
    async fn check_executors(&self, parsed: &spec::ProjectSpec) -> Result<(), ProjectError> {
        let needs_shell = parsed
            .phases
            .iter()
            .flat_map(|phase| &phase.tasks)
            .any(|task| matches!(task.executor, spec::ExecutorSpec::Shell { .. }));
        if !needs_shell {
            return Ok(());
        }
        let runs_shell = self
            .registry(|registry| {
                registry
                    .active_members()
                    .any(|(_, member)| member.skills.contains(spec::SHELL_SKILL))
            })
            .await
            .unwrap_or(false);
        if runs_shell {
            Ok(())
        } else {
            Err(ProjectError::NoExecutor("shell"))
        }
    }

    /// Holds, resumes or advances a project by hand, or archives a finished one: it
    /// leaves the Registry (freeing its place among [`aamas_consensus::registry::MAX_PROJECTS`])
    /// and each governor forgets its tasks once its copy of the Registry no longer has
    /// it (see [`crate::driver::work::ARCHIVE_GRACE_MS`]).
    /// `approve` and `reject` decide a project awaiting approval at a human gate, with
    /// `note` (approving moves it on, rejecting fails it with the note).
    pub async fn change_project(
        &self,
        id: &str,
        action: &str,
        note: Option<&str>,
    ) -> Result<(), ProjectError> {
        self.change_project_as(self.identity.node_key(), id, action, note)
            .await
    }

    /// [`Node::change_project`] on behalf of `requester`: this node's own API, or the
    /// member that forwarded the request. The president takes it from its own operator
    /// and from the member the project was submitted through
    /// ([`crate::roles::authority::project_change`]).
    pub(crate) async fn change_project_as(
        &self,
        requester: NodeKey,
        id: &str,
        action: &str,
        note: Option<&str>,
    ) -> Result<(), ProjectError> {
        if note.is_some_and(|note| note.len() > MAX_NOTE_BYTES) {
            return Err(ProjectError::NoteTooLong);
        }
        let Some((peer, addrs)) = self.president_peer()? else {
            let (phase, owner, status) = self
                .registry(|registry| {
                    registry
                        .projects()
                        .get(id)
                        .map(|p| (p.phase, p.owner, p.status.clone()))
                })
                .await
                .flatten()
                .ok_or_else(|| ProjectError::NoSuchProject(id.to_string()))?;
            if let Err(refusal) =
                crate::roles::authority::project_change(requester, self.identity.node_key(), owner)
            {
                self.refuse(&refusal);
                return Err(ProjectError::Refused(refusal));
            }
            let command = match action {
                "hold" => RegistryCommand::HoldProject { id: id.into() },
                "resume" => RegistryCommand::ResumeProject { id: id.into() },
                "advance" => RegistryCommand::AdvancePhase {
                    id: id.into(),
                    from: phase,
                    now_ms: crate::driver::runtime::now_ms(),
                },
                "archive" => RegistryCommand::RemoveProject { id: id.into() },
                "approve" | "reject" => match status {
                    ProjectStatus::AwaitingApproval { phase } => RegistryCommand::DecideApproval {
                        id: id.into(),
                        phase,
                        approve: action == "approve",
                        note: note.unwrap_or_default().to_string(),
                        now_ms: crate::driver::runtime::now_ms(),
                    },
                    other => {
                        return Err(ProjectError::NotAwaitingApproval {
                            id: id.to_string(),
                            status: view_status(&other).to_string(),
                        });
                    }
                },
                other => return Err(ProjectError::UnknownAction(other.to_string())),
            };
            let key = [
                id.as_bytes(),
                action.as_bytes(),
                phase.as_str().as_bytes(),
                &now_ms().to_be_bytes(),
            ]
            .concat();
            return self
                .propose(&[b"change", &key], command)
                .await
                .map_err(ProjectError::NotCommitted);
        };
        let rpc = Rpc::ChangeProject {
            id: id.into(),
            action: action.into(),
            note: note.map(str::to_string),
        };
        crate::net::swarm::acked(self.handle.request(peer, addrs, rpc).await)
            .map_err(ProjectError::President)
    }
}

/// How a submission is made besides its spec: the client's request id (a retry with the
/// same one returns the first project) and an operator's reason to override soft policy
/// rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Submission<'a> {
    /// The client's request id (the API's `Idempotency-Key`).
    pub request: Option<&'a str>,
    /// Why soft policy rules may be overridden (the API's `X-Policy-Override`).
    pub override_reason: Option<&'a str>,
}

/// Why a project request (submit, change) failed. Its `Display` is what the API and
/// the CLI show; [`ProjectError::is_client_error`] tells the API's status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectError {
    /// The spec does not parse or breaks a rule (the message names the line).
    #[error("{0}")]
    BadSpec(String),
    /// The client request id is not a plain short word.
    #[error(
        "the request id must be 1 to {MAX_REQUEST_ID_BYTES} characters of A-Z, a-z, 0-9, \
         '_', '-' and '.'"
    )]
    BadRequestId,
    /// No project has that id.
    #[error("no project {0}")]
    NoSuchProject(String),
    /// Not one of hold, resume, advance, archive, approve, reject.
    #[error("unknown action {0:?}: use hold, resume, advance, archive, approve or reject")]
    UnknownAction(String),
    /// Approve or reject of a project that is not awaiting approval.
    #[error("project {id} is {status}, not awaiting approval")]
    NotAwaitingApproval {
        /// The project.
        id: String,
        /// Where it stands.
        status: String,
    },
    /// An approval's note is over [`MAX_NOTE_BYTES`].
    #[error("the note is longer than {MAX_NOTE_BYTES} bytes")]
    NoteTooLong,
    /// The requester may not change this project ([`crate::roles::authority`]).
    #[error(transparent)]
    Refused(crate::roles::authority::Refusal),
    /// The mesh has no president this node knows of (an election is under way).
    #[error("no president right now; try again")]
    NoPresident,
    /// The president took the request but could not commit it.
    #[error("the president could not commit it: {0}")]
    NotCommitted(aamas_consensus::WriteError),
    /// The president refused the forwarded request, or it did not reach it.
    #[error(transparent)]
    President(Unacked),
    /// A policy rule refuses it (the message names the rule and how to override a soft
    /// one).
    #[error("{0}")]
    PolicyDenied(String),
    /// The project has tasks of an executor that no member runs (`--executors`): they
    /// would wait for ever.
    #[error(
        "no member of the mesh runs {0} tasks: start at least one node with \
         --executors builtin,llm,{0}"
    )]
    NoExecutor(&'static str),
}

impl ProjectError {
    /// Whether the request itself is wrong (a 4xx), as opposed to the mesh being unable
    /// to take it right now (a 503: retry, with the same request id).
    pub fn is_client_error(&self) -> bool {
        match self {
            Self::BadSpec(_)
            | Self::BadRequestId
            | Self::NoSuchProject(_)
            | Self::UnknownAction(_)
            | Self::NotAwaitingApproval { .. }
            | Self::NoteTooLong
            | Self::NoExecutor(_)
            | Self::PolicyDenied(_)
            | Self::Refused(_) => true,
            Self::President(Unacked::Refused { .. }) => true,
            Self::NotCommitted(aamas_consensus::WriteError::Rejected(_)) => true,
            Self::NoPresident | Self::NotCommitted(_) | Self::President(_) => false,
        }
    }
}

/// Longest client request id a submission may carry.
pub const MAX_REQUEST_ID_BYTES: usize = 64;

/// A client request id: 1 to [`MAX_REQUEST_ID_BYTES`] of `[A-Za-z0-9_.-]`.
pub fn check_request_id(request: &str) -> Result<(), ProjectError> {
    let fits = (1..=MAX_REQUEST_ID_BYTES).contains(&request.len())
        && request
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if fits {
        Ok(())
    } else {
        Err(ProjectError::BadRequestId)
    }
}

/// The environment variable of the planted bug: set to `1`, a president acknowledges
/// every third project it is asked to submit without committing it. For the fault
/// campaigns' test that a checker catches a lost acknowledgement
/// (`tests/tests/campaigns.rs`) and for nothing else; a node with it set says so at
/// every such acknowledgement.
pub const PLANTED_LOST_ACK: &str = "AAMAS_TEST_PLANTED_BUG_LOST_ACK";

/// Whether this submission is one the planted bug loses.
fn planted_lost_ack() -> bool {
    static PLANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let planted = *PLANTED.get_or_init(|| std::env::var(PLANTED_LOST_ACK).is_ok_and(|v| v == "1"));
    planted && COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 3 == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_short_plain_words() {
        assert!(check_request_id("0123abcd-ef.GH_").is_ok());
        assert!(check_request_id(&"a".repeat(MAX_REQUEST_ID_BYTES)).is_ok());
        assert!(check_request_id("").is_err());
        assert!(check_request_id(&"a".repeat(MAX_REQUEST_ID_BYTES + 1)).is_err());
        assert!(check_request_id("a b").is_err());
        assert!(check_request_id("a/b").is_err());
    }
}
