//! The policy in force ([`crate::governance::policy`]): applied through the president,
//! read from the Registry (parsed once per version), consulted where its decisions are
//! taken, and each decision counted under the rule that decided it.
//!
//! ```text
//!   aamas policy apply F ─► any node ─► president: parse + check, authority ─► ApplyPolicy
//!   submission (president) ─► submission_facts ─► Policy::decide ─► refuse / go on
//!   admission  (president) ─► admission_facts  ─► Policy::decide ─► refuse / go on
//!   dispatch   (mayor)     ─► dispatch_facts per worker ─► pass denied workers over
//!   every decision ─► aamas_policy_decisions_total{at, rule, outcome}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aamas_consensus::ledger::AccountKey;
use aamas_consensus::registry::{ProjectStatus, RegistryCommand};
use aamas_consensus::resources::{Account, Limit, Resource, spent_limit};
use aamas_protocol::NodeKey;
use serde::{Deserialize, Serialize};

use crate::driver::admin::AdminError;
use crate::driver::runtime::{Node, now_ms};
use crate::governance::policy::{self, Decision, Facts, LimitScope, Outcome, Point, Policy};
use crate::net::wire::Rpc;

/// The file `aamas init` writes the default policy to, and the founder applies.
pub const POLICY_FILE: &str = "policy.toml";

/// One rule as `aamas policy show` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleView {
    /// Its name.
    pub name: String,
    /// Its category.
    pub category: String,
    /// Where it is decided.
    pub at: String,
    /// advisory, soft or hard.
    pub enforcement: String,
    /// What a refusal says.
    pub reason: String,
}

/// The policy in force as `aamas policy show` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// 1 for the first applied, one more for each change.
    pub version: u64,
    /// When it was applied, ms since the Unix epoch.
    pub applied_ms: u64,
    /// Its tier preset, if it names one.
    pub tier: Option<String>,
    /// Its rules, the tier's first.
    pub rules: Vec<RuleView>,
    /// The document as applied.
    pub text: String,
}

fn rule_views(policy: &Policy) -> Vec<RuleView> {
    policy
        .rules
        .iter()
        .map(|rule| RuleView {
            name: rule.name.clone(),
            category: rule.category.as_str().to_string(),
            at: rule.at.as_str().to_string(),
            enforcement: rule.enforcement.as_str().to_string(),
            reason: rule.reason.clone(),
        })
        .collect()
}

/// What `aamas policy check` and `POST /api/v1/policy/check` say of a valid document.
pub fn summary(policy: &Policy) -> serde_json::Value {
    serde_json::json!({
        "ok": true,
        "tier": policy.tier,
        "rules": rule_views(policy),
        "resources": policy.resources,
    })
}

impl Node {
    /// The policy in force, parsed; `None` while none was applied. Parsed again only
    /// when the Registry's version changes.
    pub(crate) async fn policy(&self) -> Option<Arc<Policy>> {
        let cached = self
            .policy_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let cached_version = cached.as_ref().map(|(version, _)| *version);
        let (version, text) = self
            .registry(|registry| {
                let document = registry.policy()?;
                let text =
                    (Some(document.version) != cached_version).then(|| document.text.clone());
                Some((document.version, text))
            })
            .await
            .flatten()?;
        let Some(text) = text else {
            return cached.map(|(_, policy)| policy);
        };
        let parsed = match policy::parse(&text) {
            Ok(parsed) => parsed,
            Err(failure) => {
                // Checked by the president before it was committed: only a node of an
                // older version that reads the format differently gets here.
                tracing::error!(version, %failure, "the policy in force does not parse here; deciding without it");
                Policy::default()
            }
        };
        let parsed = Arc::new(parsed);
        *self
            .policy_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((version, parsed.clone()));
        Some(parsed)
    }

    /// The policy in force as `aamas policy show` prints it.
    pub async fn policy_view(&self) -> Option<PolicyView> {
        let policy = self.policy().await?;
        let (version, applied_ms, text) = self
            .registry(|registry| {
                let document = registry.policy()?;
                Some((document.version, document.applied_ms, document.text.clone()))
            })
            .await
            .flatten()?;
        Some(PolicyView {
            version,
            applied_ms,
            tier: policy.tier.map(|tier| format!("{tier:?}").to_lowercase()),
            rules: rule_views(&policy),
            text,
        })
    }

    /// Puts `text` in force as the mesh's policy, once it parses and checks; returns its
    /// version. An invalid document changes nothing (the error names its line).
    pub async fn apply_policy(&self, text: &str) -> Result<u64, AdminError> {
        self.apply_policy_as(self.identity.node_key(), text).await
    }

    /// [`Node::apply_policy`] on behalf of `requester`: this node's own API, or the
    /// member that forwarded the request to the president.
    pub(crate) async fn apply_policy_as(
        &self,
        requester: NodeKey,
        text: &str,
    ) -> Result<u64, AdminError> {
        let parsed = policy::parse(text).map_err(AdminError::BadPolicy)?;
        let Some((peer, addrs)) = self.president_peer()? else {
            crate::roles::authority::president_only(
                requester,
                self.identity.node_key(),
                "apply a policy",
            )
            .map_err(|refusal| self.refused(refusal))?;
            let command = RegistryCommand::ApplyPolicy {
                text: text.to_string(),
                now_ms: now_ms(),
            };
            let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()).into();
            self.propose(&[b"policy", &digest], command)
                .await
                .map_err(AdminError::NotCommitted)?;
            let version = self
                .registry(|registry| registry.policy().map(|document| document.version))
                .await
                .flatten()
                .unwrap_or_default();
            tracing::info!(version, "applied a policy");
            self.put_policy_limits(&parsed.resources).await?;
            return Ok(version);
        };
        let rpc = Rpc::ApplyPolicy {
            text: text.to_string(),
        };
        match self.handle.request(peer, addrs, rpc).await {
            Ok(crate::net::wire::RpcResponse::PolicyApplied { version }) => Ok(version),
            Ok(crate::net::wire::RpcResponse::Refused { reason }) => {
                Err(AdminError::President(crate::net::swarm::Unacked::Refused {
                    reason,
                }))
            }
            Ok(other) => Err(AdminError::President(
                crate::net::swarm::Unacked::Unexpected {
                    answer: format!("{other:?}"),
                },
            )),
            Err(error) => Err(AdminError::President(error.into())),
        }
    }

    /// Judges a decision at `at` by the policy in force, counts it under each rule that
    /// fired (or as allowed), and returns the refusal of the first rule that denies.
    pub(crate) async fn judge(
        &self,
        at: Point,
        facts: &[Facts],
        override_reason: Option<&str>,
    ) -> Result<(), String> {
        let Some(policy) = self.policy().await else {
            return Ok(());
        };
        let decision = policy.decide(at, facts, override_reason);
        self.count_decision(at, &decision, override_reason);
        match decision.denied_by() {
            Some(rule) => Err(rule.refusal()),
            None => Ok(()),
        }
    }

    /// Counts one decision at `at`: each rule that `fired` with how it acted, or one
    /// `allowed` when none did.
    pub(crate) fn count_fired<'a>(
        &self,
        at: Point,
        fired: impl ExactSizeIterator<Item = (&'a str, Outcome)>,
    ) {
        let count = |rule: &str, outcome: &str| {
            self.metrics
                .policy_decisions
                .get_or_create(&crate::metrics::labels(&[
                    ("at", at.as_str()),
                    ("rule", rule),
                    ("outcome", outcome),
                ]))
                .inc();
        };
        if fired.len() == 0 {
            count("-", "allowed");
        }
        for (rule, outcome) in fired {
            count(rule, outcome.as_str());
        }
    }

    fn count_decision(&self, at: Point, decision: &Decision<'_>, override_reason: Option<&str>) {
        let fired = decision.fired.iter();
        self.count_fired(
            at,
            fired.map(|(rule, outcome)| (rule.name.as_str(), *outcome)),
        );
        for (rule, outcome) in &decision.fired {
            match outcome {
                Outcome::Noted => {
                    tracing::info!(rule = %rule.name, at = at.as_str(), reason = %rule.reason, "policy advisory");
                }
                Outcome::Overridden => {
                    tracing::warn!(rule = %rule.name, at = at.as_str(), override_reason = override_reason.unwrap_or_default(), "policy rule overridden");
                }
                Outcome::Denied | Outcome::Deferred => {
                    tracing::info!(rule = %rule.name, at = at.as_str(), outcome = outcome.as_str(), "policy denied");
                }
            }
        }
    }

    /// Each active member's facts for the `policy`'s dispatch rules (peer id, the roles
    /// the Registry knows it holds, its state); `None` when the policy has no dispatch
    /// rules, so that a mayor without them looks nothing up.
    pub(crate) async fn dispatch_rules(
        &self,
        policy: &Policy,
    ) -> Option<Arc<BTreeMap<NodeKey, crate::roles::mayor::WorkerFacts>>> {
        if !policy.has_rules_at(Point::Dispatch) {
            return None;
        }
        let president = self.president_key();
        let workers = self
            .registry(|registry| {
                registry
                    .active_members()
                    .map(|(key, member)| {
                        let facts = crate::roles::mayor::WorkerFacts {
                            peer: key.peer_id(),
                            roles: member_roles(registry, president, key),
                            state: member.state.clone(),
                        };
                        (*key, facts)
                    })
                    .collect()
            })
            .await?;
        Some(Arc::new(workers))
    }

    /// Judges a work message of kind `message` from `sender` by the policy's message
    /// rules (when it has any), counted; the refusal of the first rule that denies.
    /// The policy is the one last read (each work round reads it), so that a message
    /// costs no Registry read unless the policy has message rules.
    pub(crate) async fn judge_message(&self, sender: NodeKey, message: &str) -> Result<(), String> {
        let cached = self
            .policy_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(_, policy)| policy.clone());
        let Some(policy) = cached else {
            return Ok(());
        };
        if !policy.has_rules_at(Point::Message) {
            return Ok(());
        }
        let president = self.president_key();
        let me = self.identity.node_key();
        let facts = self
            .registry(|registry| {
                let sender_state = registry
                    .members()
                    .get(&sender)
                    .and_then(|m| m.state.clone());
                policy::message_facts(
                    message,
                    sender.peer_id(),
                    &member_roles(registry, president, &sender),
                    sender_state,
                    &member_roles(registry, president, &me),
                )
            })
            .await;
        let Some(facts) = facts else {
            return Ok(());
        };
        let decision = policy.decide(Point::Message, &[facts], None);
        self.count_decision(Point::Message, &decision, None);
        match decision.denied_by() {
            Some(rule) => Err(rule.refusal()),
            None => Ok(()),
        }
    }

    /// Which of `cities` (of `state`, in `group`'s Ledger) and which workers spent a hard
    /// limit the `policy` puts on each city or each worker, at the Ledger's clock; and
    /// whether there is any such limit (then each worker runs one of the state's tasks
    /// at a time, so that a limit is overshot by at most one task per worker).
    pub(crate) async fn scoped_spent<T>(
        &self,
        policy: &Policy,
        state: &str,
        group: &aamas_consensus::Group,
        cities: &[(String, T)],
    ) -> (BTreeSet<String>, BTreeSet<NodeKey>, bool) {
        let per_city = policy.resources.scoped_limits_for(state, LimitScope::City);
        let per_worker = policy
            .resources
            .scoped_limits_for(state, LimitScope::Worker);
        if per_city.is_empty() && per_worker.is_empty() {
            return Default::default();
        }
        let names: Vec<&str> = cities.iter().map(|(city, _)| city.as_str()).collect();
        let (held, spent) = group
            .read_local(|machine| {
                let Some(ledger) = machine.ledger() else {
                    return Default::default();
                };
                let clock = ledger.clock_ms();
                let spent = |account: &Account, limits: &BTreeMap<Resource, Limit>| {
                    spent_limit(account, limits, clock).is_some()
                };
                let mut held = BTreeSet::new();
                let mut workers = BTreeSet::new();
                for (key, account) in ledger.accounts() {
                    match key {
                        AccountKey::City(city)
                            if names.contains(&city.as_str()) && spent(account, &per_city) =>
                        {
                            held.insert(city.clone());
                        }
                        AccountKey::Worker(worker) if spent(account, &per_worker) => {
                            workers.insert(*worker);
                        }
                        _ => {}
                    }
                }
                (held, workers)
            })
            .await;
        (held, spent, true)
    }

    /// Projects running, held or awaiting approval (for the submission's
    /// `projects_running`).
    pub(crate) async fn projects_in_flight(&self) -> u64 {
        self.registry(|registry| {
            let open = registry.projects().values().filter(|project| {
                matches!(
                    project.status,
                    ProjectStatus::Running
                        | ProjectStatus::Held
                        | ProjectStatus::AwaitingApproval { .. }
                )
            });
            u64::try_from(open.count()).unwrap_or(u64::MAX)
        })
        .await
        .unwrap_or_default()
    }

    /// The founder's first policy: `DATA_DIR/policy.toml` (written by `aamas init`), if
    /// it is there. One that does not parse is reported and skipped: the mesh runs
    /// without a policy until `aamas policy apply`.
    pub(crate) async fn apply_founding_policy(&self) {
        // Only the first time: a founder that restarts must not undo a later policy.
        if self.registry(|registry| registry.policy().is_some()).await != Some(false) {
            return;
        }
        let path = self.data_dir.join(POLICY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "cannot read the founding policy");
                return;
            }
        };
        match self.apply_policy(&text).await {
            Ok(version) => {
                tracing::info!(version, path = %path.display(), "the founding policy is in force")
            }
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "the founding policy was not applied; apply one with `aamas policy apply`")
            }
        }
    }
}

/// The roles `key` holds as the Registry records them (the president as given): president,
/// governor, mayor; `worker` when it holds none.
fn member_roles(
    registry: &aamas_consensus::registry::Registry,
    president: Option<NodeKey>,
    key: &NodeKey,
) -> Vec<&'static str> {
    let records = || {
        registry
            .states()
            .values()
            .filter_map(|s| s.governor.as_ref())
    };
    let mut roles = Vec::new();
    if president == Some(*key) {
        roles.push("president");
    }
    if records().any(|record| record.node == *key) {
        roles.push("governor");
    }
    if records().any(|record| record.mayors.values().any(|mayor| *mayor == Some(*key))) {
        roles.push("mayor");
    }
    if roles.is_empty() {
        roles.push("worker");
    }
    roles
}
