//! Resources (seed §6.2): each state's accounts of what its attempts used, its limits
//! per period, and the ResourceRequests that go up the hierarchy when a hard limit holds
//! its tasks back.
//!
//! ```text
//!   aamas resources set STATE RESOURCE AMOUNT --per day ─► president ─► Registry SetLimit
//!   governor: Registry limits (newer version) ──────────► Ledger SetLimits
//!   worker:   attempt measured ─► outcome ─► mayor ─► Ledger ChargeAttempt, then the result
//!   mayor:    a hard limit spent ─► holds its pending tasks (the Ledger refuses them too)
//!             ─► RaiseResourceRequest ─► governor (checks the mayor) ─► president
//!             (checks the governor) ─► Registry RaiseResourceRequest
//!   president: a request no larger than the policy's `approve_up_to` is approved at once
//!   aamas resources approve ID ─► president ─► Registry DecideResourceRequest: the limit
//!             rises in the same step; the governor copies it; the mayor dispatches again
//!   aamas policy apply ─► president ─► SetLimit for each `[[resources.limit]]` that differs
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aamas_consensus::Group;
use aamas_consensus::ledger::{AccountKey, LedgerCommand};
use aamas_consensus::registry::{RegistryCommand, ResourceDecision, ResourceRequest};
use aamas_consensus::resources::{Account, Limit, Period, Resource, Usage};
use aamas_protocol::NodeKey;
use serde::{Deserialize, Serialize};

use crate::driver::admin::AdminError;
use crate::driver::runtime::{Node, now_ms};
use crate::governance::policy::LimitScope;
use crate::net::wire::{Rpc, RpcResponse, StateAccounts};
use crate::roles::authority::Refusal;

/// How often a mayor whose tasks a spent limit holds back asks again about the same limit
/// (the Registry keeps one open request per state and resource, so asking again only
/// covers a lost one); a limit raised since is asked about at once.
pub const RESOURCE_ASK_EVERY_MS: u64 = 30_000;
/// What a mayor asked about: a state's resource, for its hard limit (a request) or its
/// soft one (an alert).
pub(crate) type Ask = (String, Resource, bool);

/// How long a direct question to another member (its accounts, a request) may take.
const ASK_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One limit of a state and what was used against it in its current window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LimitView {
    /// The resource.
    #[schema(value_type = String)]
    pub resource: Resource,
    /// Most per period.
    pub amount: u64,
    /// The period.
    #[schema(value_type = String)]
    pub period: Period,
    /// Hard (dispatch stops) or soft (an alert).
    pub hard: bool,
    /// Used in the current window; `None` when no copy of the state's Ledger answered.
    pub used: Option<u64>,
}

/// A state's resources as `aamas resources show` prints them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateResources {
    /// The state.
    pub state: String,
    /// Its limits with their use.
    pub limits: Vec<LimitView>,
    /// Everything its attempts used; `None` when no copy of its Ledger answered.
    #[schema(value_type = Option<Object>)]
    pub used: Option<Usage>,
    /// Attempts charged.
    pub attempts: u64,
    /// Use by city.
    #[schema(value_type = Object)]
    pub cities: BTreeMap<String, Usage>,
    /// Use by worker (peer id).
    #[schema(value_type = Object)]
    pub workers: BTreeMap<String, Usage>,
    /// The hard limit that holds its tasks back, if one does.
    #[schema(value_type = Option<String>)]
    pub spent: Option<Resource>,
    /// The Registry's version of its limits.
    pub limits_version: u64,
    /// The version its Ledger enforces (the governor copies newer ones in); `None` when
    /// no copy of its Ledger answered.
    pub limits_in_force: Option<u64>,
    /// The policy's limits on each of its cities and each worker, with who spent them.
    #[serde(default)]
    pub scoped: Vec<ScopedLimitView>,
}

/// A limit the policy puts on each city or each worker of a state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScopedLimitView {
    /// city or worker.
    #[schema(value_type = String)]
    pub of: crate::governance::policy::LimitScope,
    /// The resource.
    #[schema(value_type = String)]
    pub resource: Resource,
    /// Most per period, for each.
    pub amount: u64,
    /// The period.
    #[schema(value_type = String)]
    pub period: Period,
    /// The cities (names) or workers (peer ids) that spent it at the Ledger's clock:
    /// nothing more is dispatched to or through them until their next period.
    pub spent_by: Vec<String>,
}

/// A ResourceRequest as `aamas resources requests` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestView {
    /// Its id (for `approve` and `deny`).
    pub id: u64,
    /// The state.
    pub state: String,
    /// The resource.
    pub resource: Resource,
    /// How much more it asks for.
    pub amount: u64,
    /// Why.
    pub reason: String,
    /// When it was raised, ms since the Unix epoch.
    pub raised_ms: u64,
    /// The mayor that raised it (peer id).
    pub raised_by: String,
    /// The governor that carried it up (peer id).
    pub via: String,
    /// "open", "approved" or "denied".
    pub status: String,
    /// The decision, once taken.
    pub decision: Option<ResourceDecision>,
}

impl Node {
    /// Every state's limits and use: from this node's Ledger copies, and for the other
    /// states from one of their voters.
    pub async fn resources(&self) -> Vec<StateResources> {
        type Known = (String, (BTreeMap<Resource, Limit>, u64), Vec<NodeKey>);
        let policy = self.policy().await.unwrap_or_default();
        let policy = &policy;
        let states: Vec<Known> = self
            .registry(|registry| {
                registry
                    .states()
                    .iter()
                    .map(|(name, info)| {
                        let limits = (info.limits.clone(), info.limits_version);
                        (name.clone(), limits, info.known_voters())
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        let looks = states
            .into_iter()
            .map(|(state, limits, voters)| async move {
                let accounts = self.state_accounts(&state, &voters).await;
                let scoped = [LimitScope::City, LimitScope::Worker]
                    .into_iter()
                    .flat_map(|of| {
                        let limits = policy.resources.scoped_limits_for(&state, of);
                        limits
                            .into_iter()
                            .map(move |(resource, limit)| (of, resource, limit))
                    })
                    .collect();
                state_resources(state, &limits, scoped, accounts.as_ref())
            });
        futures::future::join_all(looks).await
    }

    /// The accounts of `state`: this node's Ledger copy, or the first of `voters` that
    /// answers.
    async fn state_accounts(&self, state: &str, voters: &[NodeKey]) -> Option<StateAccounts> {
        if let Some(accounts) = self.local_accounts(state).await {
            return Some(accounts);
        }
        for voter in voters {
            let rpc = Rpc::StateAccounts {
                state: state.to_string(),
            };
            if let Ok(RpcResponse::Accounts(Some(found))) = self.ask_member(*voter, rpc).await {
                return Some(found);
            }
        }
        None
    }

    /// The accounts of `state` from this node's copy of its Ledger, if it has one.
    pub(crate) async fn local_accounts(&self, state: &str) -> Option<StateAccounts> {
        let group = self.group_of_state(state).await?;
        group
            .read_local(|machine| {
                machine.ledger().map(|ledger| StateAccounts {
                    accounts: ledger
                        .accounts()
                        .iter()
                        .map(|(key, account)| (key.clone(), *account))
                        .collect(),
                    clock_ms: ledger.clock_ms(),
                    limits_version: ledger.limits().1,
                })
            })
            .await
    }

    /// This node's copy of `state`'s group, if it holds one.
    async fn group_of_state(&self, state: &str) -> Option<Group> {
        for id in self.groups.ids() {
            if self.state_of_group(id).await.as_deref() == Some(state) {
                return self.groups.get(id);
            }
        }
        None
    }

    /// Sets (or with `None` removes) `state`'s limit on `resource`: the president's own
    /// operator only.
    pub async fn set_limit(
        &self,
        state: &str,
        resource: Resource,
        limit: Option<Limit>,
    ) -> Result<(), AdminError> {
        self.set_limit_as(self.identity.node_key(), state, resource, limit)
            .await
    }

    /// [`Node::set_limit`] on behalf of `requester`.
    pub(crate) async fn set_limit_as(
        &self,
        requester: NodeKey,
        state: &str,
        resource: Resource,
        limit: Option<Limit>,
    ) -> Result<(), AdminError> {
        let Some((peer, addrs)) = self.president_peer()? else {
            crate::roles::authority::president_only(
                requester,
                self.identity.node_key(),
                "set resource limits",
            )
            .map_err(|refusal| self.refused(refusal))?;
            let command = RegistryCommand::SetLimit {
                state: state.to_string(),
                resource,
                limit,
            };
            let encoded = postcard::to_stdvec(&command).unwrap_or_default();
            let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&encoded).into();
            let version = self
                .registry(|registry| registry.states().get(state).map(|s| s.limits_version))
                .await
                .flatten()
                .unwrap_or_default();
            self.propose(&[b"limit", &digest, &version.to_be_bytes()], command)
                .await
                .map_err(AdminError::NotCommitted)?;
            tracing::info!(state, %resource, ?limit, "set a resource limit");
            return Ok(());
        };
        let rpc = Rpc::SetLimit {
            state: state.to_string(),
            resource,
            limit,
        };
        crate::net::swarm::acked(self.handle.request(peer, addrs, rpc).await)
            .map_err(AdminError::President)
    }

    /// The ResourceRequests the Registry keeps, oldest first.
    pub async fn resource_requests(&self) -> Vec<RequestView> {
        self.registry(|registry| {
            registry
                .resource_requests()
                .iter()
                .map(|(id, request)| RequestView {
                    id: *id,
                    state: request.state.clone(),
                    resource: request.resource,
                    amount: request.amount,
                    reason: request.reason.clone(),
                    raised_ms: request.raised_ms,
                    raised_by: request.raised_by.peer_id(),
                    via: request.via.peer_id(),
                    status: match &request.decision {
                        None => "open",
                        Some(decision) if decision.approved => "approved",
                        Some(_) => "denied",
                    }
                    .to_string(),
                    decision: request.decision.clone(),
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Approves (raising the limit by `amount`, by default what was asked) or denies
    /// ResourceRequest `id`: the president's own operator only.
    pub async fn decide_resource_request(
        &self,
        id: u64,
        approve: bool,
        amount: Option<u64>,
        note: &str,
    ) -> Result<(), AdminError> {
        self.decide_resource_request_as(self.identity.node_key(), id, approve, amount, note)
            .await
    }

    /// [`Node::decide_resource_request`] on behalf of `requester`.
    pub(crate) async fn decide_resource_request_as(
        &self,
        requester: NodeKey,
        id: u64,
        approve: bool,
        amount: Option<u64>,
        note: &str,
    ) -> Result<(), AdminError> {
        if note.len() > aamas_consensus::registry::MAX_NOTE_BYTES {
            return Err(AdminError::NoteTooLong);
        }
        let Some((peer, addrs)) = self.president_peer()? else {
            crate::roles::authority::president_only(
                requester,
                self.identity.node_key(),
                "decide resource requests",
            )
            .map_err(|refusal| self.refused(refusal))?;
            let asked = self
                .registry(|registry| registry.resource_requests().get(&id).map(|r| r.amount))
                .await
                .flatten()
                .ok_or(AdminError::NoSuchRequest(id))?;
            let decision = ResourceDecision {
                approved: approve,
                amount: if approve { amount.unwrap_or(asked) } else { 0 },
                by: "operator".to_string(),
                note: note.to_string(),
                decided_ms: now_ms(),
            };
            tracing::info!(
                id,
                approve,
                amount = decision.amount,
                "decided a ResourceRequest"
            );
            let command = RegistryCommand::DecideResourceRequest { id, decision };
            return self
                .propose(&[b"decide-resources", &id.to_be_bytes()], command)
                .await
                .map_err(AdminError::NotCommitted);
        };
        let rpc = Rpc::DecideResourceRequest {
            id,
            approve,
            amount,
            note: note.to_string(),
        };
        crate::net::swarm::acked(self.handle.request(peer, addrs, rpc).await)
            .map_err(AdminError::President)
    }

    /// A mayor whose tasks of `state` a spent hard limit holds back asks for more, at
    /// most every [`RESOURCE_ASK_EVERY_MS`] per state and resource, in the background.
    pub(crate) fn ask_for_resources(
        &self,
        state: &str,
        governor: NodeKey,
        spent: (Resource, Limit, u64),
        waiting: usize,
    ) {
        let (resource, limit, used) = spent;
        if !self.due_to_ask(state, resource, &limit) {
            return;
        }
        let now = now_ms();
        let me = self.identity.node_key();
        let request = ResourceRequest {
            state: state.to_string(),
            resource,
            // As much again as the limit: the operator may approve another amount.
            amount: limit.amount.max(1),
            reason: format!(
                "{waiting} task(s) wait: {used} {resource} used of the hard limit of {} \
                 per {}",
                limit.amount, limit.period
            ),
            raised_ms: now,
            raised_by: me,
            via: governor,
            decision: None,
        };
        tracing::warn!(state, %resource, used, limit = limit.amount, waiting, "a hard limit holds tasks back: asking for more");
        let Some(node) = self.this.upgrade() else {
            return;
        };
        self.spawn(async move {
            let sent = if governor == me {
                node.carry_resource_request(me, request).await
            } else {
                let rpc = Rpc::RaiseResourceRequest { request };
                node.ask_member(governor, rpc)
                    .await
                    .and_then(|answer| match answer {
                        RpcResponse::Ack => Ok(()),
                        RpcResponse::Refused { reason } => {
                            Err(AdminError::President(crate::net::swarm::Unacked::Refused {
                                reason,
                            }))
                        }
                        other => Err(AdminError::Unreachable(format!("{other:?}"))),
                    })
            };
            if let Err(error) = sent {
                tracing::warn!(%error, "a ResourceRequest did not reach the president");
            }
        });
    }

    /// As president, puts the limits a just-applied policy names on the states (each one
    /// that differs from the state's; limits the policy does not name stay).
    pub(crate) async fn put_policy_limits(
        &self,
        resources: &crate::governance::policy::Resources,
    ) -> Result<(), AdminError> {
        if resources.limits.is_empty() {
            return Ok(());
        }
        let states: Vec<(String, BTreeMap<Resource, Limit>)> = self
            .registry(|registry| {
                registry
                    .states()
                    .iter()
                    .map(|(name, info)| (name.clone(), info.limits.clone()))
                    .collect()
            })
            .await
            .unwrap_or_default();
        for (state, current) in states {
            for (resource, limit) in resources.limits_for(&state) {
                if current.get(&resource) != Some(&limit) {
                    self.set_limit(&state, resource, Some(limit)).await?;
                }
            }
        }
        Ok(())
    }

    /// As president, judges the open request of `state` and `resource` that was just
    /// raised (with every other open one: [`Node::arbitrate_requests`]).
    async fn approve_by_policy(&self, state: &str, resource: Resource) -> Result<(), AdminError> {
        match self.policy().await {
            Some(policy) => {
                self.arbitrate_requests(&policy, Some((state, resource)))
                    .await
            }
            None => Ok(()),
        }
    }

    /// As president: `policy`'s verdict on every open ResourceRequest, the states of
    /// higher priority first ([`crate::governance::policy::Resources::arbitrate`]), and
    /// the approvals committed. A verdict is counted when it is new for its request (just
    /// raised, or changed by a policy applied since) or an approval, so a request waiting
    /// for the next period is counted once. `fresh` names a request just raised.
    pub(crate) async fn arbitrate_requests(
        &self,
        policy: &crate::governance::policy::Policy,
        fresh: Option<(&str, Resource)>,
    ) -> Result<(), AdminError> {
        use crate::governance::policy::{OpenRequest, Verdict};
        let resources = &policy.resources;
        // Between requests only a pool that renewed can change a verdict.
        if fresh.is_none() && resources.pool.is_empty() {
            return Ok(());
        }
        if resources.approve_up_to.is_empty() {
            if let Some((_, resource)) = fresh {
                self.count_request_verdict(resource, Verdict::OverApproveUpTo);
            }
            return Ok(());
        }
        // One arbitration at a time: each reads what the approvals before it granted. The
        // lock keeps each open request's last verdict, so that a verdict is counted once
        // per request, when it is new (a policy applied since can change it).
        let mut last_verdicts = self.arbitrating.lock().await;
        let now = now_ms();
        let since = resources.pool_period.window_start(now);
        let looked = self
            .registry(|registry| {
                let mut open = Vec::new();
                let mut granted: BTreeMap<Resource, u64> = BTreeMap::new();
                for (id, request) in registry.resource_requests() {
                    match &request.decision {
                        None => open.push(OpenRequest {
                            id: *id,
                            state: request.state.clone(),
                            resource: request.resource,
                            amount: request.amount,
                        }),
                        Some(decision)
                            if decision.approved
                                && decision.by == "policy"
                                && decision.decided_ms >= since =>
                        {
                            let so_far = granted.entry(request.resource).or_default();
                            *so_far = so_far.saturating_add(decision.amount);
                        }
                        Some(_) => {}
                    }
                }
                (open, granted)
            })
            .await;
        let Some((open, granted)) = looked else {
            return Ok(());
        };
        // Forget the requests decided since (bounded by the open ones).
        let open_ids: BTreeSet<u64> = open.iter().map(|request| request.id).collect();
        last_verdicts.retain(|id, _| open_ids.contains(id));
        if open.is_empty() {
            return Ok(());
        }
        let verdicts = resources.arbitrate(&open, &granted);
        // Every verdict is counted before any approval commits: whoever sees an approval
        // also sees the refusals decided with it.
        for (request, verdict) in &verdicts {
            let changed = last_verdicts.insert(request.id, *verdict) != Some(*verdict);
            if changed || *verdict == Verdict::Approve {
                self.count_request_verdict(request.resource, *verdict);
            }
        }
        for (request, verdict) in verdicts {
            if verdict != Verdict::Approve {
                continue;
            }
            let id = request.id;
            let (state, resource, amount) = (&request.state, request.resource, request.amount);
            let decision = ResourceDecision {
                approved: true,
                amount,
                by: "policy".to_string(),
                note: format!("at most the policy's approve_up_to for {resource}, within its pool"),
                decided_ms: now,
            };
            tracing::info!(id, state, %resource, amount, "a ResourceRequest approved by policy");
            let command = RegistryCommand::DecideResourceRequest { id, decision };
            self.propose(&[b"decide-resources", &id.to_be_bytes()], command)
                .await
                .map_err(AdminError::NotCommitted)?;
        }
        Ok(())
    }

    fn count_request_verdict(
        &self,
        resource: Resource,
        verdict: crate::governance::policy::Verdict,
    ) {
        let outcome = match verdict {
            crate::governance::policy::Verdict::Approve => "allowed",
            _ => "referred",
        };
        self.metrics
            .policy_decisions
            .get_or_create(&crate::metrics::labels(&[
                ("at", "resource_request"),
                ("rule", verdict.rule()),
                ("outcome", outcome),
            ]))
            .inc();
        tracing::debug!(%resource, rule = verdict.rule(), outcome, "a ResourceRequest judged by policy");
    }

    /// A mayor of `state` whose soft limit is reached raises a PerformanceAlert (at most
    /// every [`RESOURCE_ASK_EVERY_MS`] per state and resource; the Registry keeps one
    /// open alert per metric and subject).
    pub(crate) fn alert_soft_limit(&self, state: &str, reached: (Resource, Limit, u64)) {
        let (resource, limit, used) = reached;
        if !self.due_to_ask(state, resource, &limit) {
            return;
        }
        let me = self.identity.node_key();
        let milli = |amount: u64| i64::try_from(amount.saturating_mul(1_000)).unwrap_or(i64::MAX);
        let alert = aamas_consensus::registry::Alert {
            metric: format!("soft_limit_{resource}"),
            subject: me,
            value_milli: milli(used),
            threshold_milli: milli(limit.amount),
            message: format!(
                "state {state} used {used} {resource} of its soft limit of {} per {}",
                limit.amount, limit.period
            ),
            raised_ms: now_ms(),
            raised_by: me,
            acknowledged: None,
        };
        tracing::warn!(state, %resource, used, limit = limit.amount, "a soft limit is reached");
        let Some(node) = self.this.upgrade() else {
            return;
        };
        self.spawn(async move {
            if let Err(error) = node.record_alert_as(me, alert).await {
                tracing::warn!(%error, "the soft-limit alert was not recorded");
            }
        });
    }

    /// Whether this node, as a mayor, is due to ask about `state`'s `resource` (a
    /// request for a hard limit, an alert for a soft one) reached at `limit`: at once for
    /// a limit it has not asked about (a raised one is another), then every
    /// [`RESOURCE_ASK_EVERY_MS`]. Notes that it asks.
    fn due_to_ask(&self, state: &str, resource: Resource, limit: &Limit) -> bool {
        let now = now_ms();
        let mut asked = self
            .resource_asks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let last = asked
            .entry((state.to_string(), resource, limit.hard))
            .or_insert((0, limit.amount));
        if last.1 == limit.amount && now.saturating_sub(last.0) < RESOURCE_ASK_EVERY_MS {
            return false;
        }
        *last = (now, limit.amount);
        true
    }

    /// Carries a ResourceRequest one step up: as the governor of its state, from one of
    /// the state's mayors (the request names the governor as `via`), to the president;
    /// as the president, from the governor of record, into the Registry.
    pub(crate) async fn carry_resource_request(
        &self,
        sender: NodeKey,
        request: ResourceRequest,
    ) -> Result<(), AdminError> {
        let me = self.identity.node_key();
        if request.via == sender && sender != me {
            return self.record_resource_request(sender, request).await;
        }
        // The governor's step: only from a mayor of the state, for itself.
        let Some(group) = self.governed_group(&request.state).await else {
            return Err(self.refused(Refusal::NotTheGovernor {
                state: request.state.clone(),
            }));
        };
        let now = now_ms();
        let is_mayor = group
            .read_local(|machine| {
                machine.ledger().is_some_and(|ledger| {
                    ledger.cities().keys().any(|city| {
                        ledger
                            .mayor_at(city, now)
                            .is_some_and(|l| l.mayor == sender)
                    })
                })
            })
            .await;
        if !is_mayor || request.raised_by != sender || request.via != me {
            return Err(self.refused(Refusal::NotTheMayor {
                city: format!("of state {}", request.state),
            }));
        }
        let Some((peer, addrs)) = self.president_peer()? else {
            return self.record_resource_request(me, request).await;
        };
        let rpc = Rpc::RaiseResourceRequest { request };
        crate::net::swarm::acked(self.handle.request(peer, addrs, rpc).await)
            .map_err(AdminError::President)
    }

    /// As president, records a request `governor` carried up, if it governs the state.
    async fn record_resource_request(
        &self,
        governor: NodeKey,
        request: ResourceRequest,
    ) -> Result<(), AdminError> {
        if self.president_peer()?.is_some() {
            return Err(AdminError::NoPresident);
        }
        let of_record = self
            .registry(|registry| {
                let info = registry.states().get(&request.state)?;
                info.governor.as_ref().map(|record| record.node)
            })
            .await
            .flatten();
        if of_record != Some(governor) {
            return Err(self.refused(Refusal::NotTheGovernor {
                state: request.state.clone(),
            }));
        }
        let key = [
            request.state.as_bytes(),
            request.resource.name().as_bytes(),
            &request.raised_ms.to_be_bytes(),
        ]
        .concat();
        let (state, resource) = (request.state.clone(), request.resource);
        // The seed's event, for the resources it has a kind of the same unit for.
        let event = seed_kind(resource).map(|kind| aamas_protocol::Event::ResourceRequest {
            resource: kind,
            amount: request.amount,
            reason: request.reason.clone(),
        });
        let command = RegistryCommand::RaiseResourceRequest { request };
        self.propose(&[b"resource-request", &key], command)
            .await
            .map_err(AdminError::NotCommitted)?;
        if let Some(event) = event {
            // Decided by the president for the mesh: every member hears of it.
            self.emit(event, crate::driver::mesh_events::Scope::All)
                .await;
        }
        self.metrics
            .resource_requests
            .get_or_create(&crate::metrics::labels(&[("resource", resource.name())]))
            .inc();
        self.approve_by_policy(&state, resource).await
    }

    /// Asks member `key` directly, bounded by [`ASK_LIMIT`].
    async fn ask_member(&self, key: NodeKey, rpc: Rpc) -> Result<RpcResponse, AdminError> {
        self.ask_within(&key, rpc, ASK_LIMIT)
            .await
            .map_err(|error| AdminError::Unreachable(error.to_string()))
    }

    /// The group of `state` if this node governs it (leads its group).
    async fn governed_group(&self, state: &str) -> Option<Group> {
        let governed = self.governed().await;
        governed
            .into_iter()
            .find(|(name, _)| name == state)
            .map(|(_, group)| group)
    }

    /// As governor, copies each governed state's limits from the Registry into its
    /// Ledger when the Registry's are newer; only the write goes to the background.
    pub(crate) async fn sync_limits(self: &Arc<Self>, governed: &[(String, Group)]) {
        let wanted: BTreeMap<String, (BTreeMap<Resource, Limit>, u64)> = self
            .registry(|registry| {
                governed
                    .iter()
                    .filter_map(|(state, _)| {
                        let info = registry.states().get(state)?;
                        (info.limits_version > 0)
                            .then(|| (state.clone(), (info.limits.clone(), info.limits_version)))
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        for (state, group) in governed {
            let Some((limits, version)) = wanted.get(state) else {
                continue;
            };
            let have = group
                .read_local(|machine| machine.ledger().map(|ledger| ledger.limits().1))
                .await
                .unwrap_or_default();
            if *version <= have {
                continue;
            }
            let command = LedgerCommand::SetLimits {
                version: *version,
                limits: limits.clone(),
                now_ms: now_ms(),
            };
            let (state, group, node, version) =
                (state.clone(), group.clone(), Arc::clone(self), *version);
            self.spawn(async move {
                let key: [&[u8]; 3] = [b"limits", state.as_bytes(), &version.to_be_bytes()];
                match node.ledger_write(&group, &key, command).await {
                    Ok(_) => tracing::info!(state, version, "limits copied into the Ledger"),
                    Err(error) => tracing::debug!(state, %error, "limits not copied yet"),
                }
            });
        }
    }
}

/// A state's view from its limits and (when a copy answered) its accounts.
fn state_resources(
    state: String,
    (limits, limits_version): &(BTreeMap<Resource, Limit>, u64),
    scoped: Vec<(LimitScope, Resource, Limit)>,
    accounts: Option<&StateAccounts>,
) -> StateResources {
    let find = |key: &AccountKey| -> Option<Account> {
        let accounts = accounts?;
        let found = accounts.accounts.iter().find(|(k, _)| k == key);
        Some(found.map(|(_, account)| *account).unwrap_or_default())
    };
    let state_account = find(&AccountKey::State);
    let clock = accounts.map_or(0, |a| a.clock_ms);
    let limits: Vec<LimitView> = limits
        .iter()
        .map(|(resource, limit)| LimitView {
            resource: *resource,
            amount: limit.amount,
            period: limit.period,
            hard: limit.hard,
            used: state_account.map(|account| account.used(*resource, limit.period, clock)),
        })
        .collect();
    let spent = limits
        .iter()
        .find(|view| view.hard && view.used.is_some_and(|used| used >= view.amount))
        .map(|view| view.resource);
    let (mut cities, mut workers) = (BTreeMap::new(), BTreeMap::new());
    for (key, account) in accounts.map(|a| a.accounts.as_slice()).unwrap_or_default() {
        match key {
            AccountKey::State => {}
            AccountKey::City(city) => {
                cities.insert(city.clone(), account.total);
            }
            AccountKey::Worker(worker) => {
                workers.insert(worker.peer_id(), account.total);
            }
        }
    }
    let all = accounts.map(|a| a.accounts.as_slice()).unwrap_or_default();
    let scoped = scoped
        .into_iter()
        .map(|(of, resource, limit)| {
            let spent_by = all
                .iter()
                .filter(|(_, account)| account.used(resource, limit.period, clock) >= limit.amount)
                .filter_map(|(key, _)| match (key, of) {
                    (AccountKey::City(city), LimitScope::City) => Some(city.clone()),
                    (AccountKey::Worker(worker), LimitScope::Worker) => Some(worker.peer_id()),
                    _ => None,
                })
                .collect();
            ScopedLimitView {
                of,
                resource,
                amount: limit.amount,
                period: limit.period,
                spent_by,
            }
        })
        .collect();
    StateResources {
        state,
        limits,
        scoped,
        used: state_account.map(|account| account.total),
        attempts: state_account.map_or(0, |account| account.attempts),
        cities,
        workers,
        spent,
        limits_version: *limits_version,
        limits_in_force: accounts.map(|a| a.limits_version),
    }
}

/// The seed's kind of `resource` (seed §6.2), where one measures it in the same unit;
/// API calls and memory over time (KiB·s) have none.
fn seed_kind(resource: Resource) -> Option<aamas_protocol::ResourceKind> {
    use aamas_protocol::ResourceKind;
    match resource {
        Resource::CpuMs => Some(ResourceKind::ComputeMilliCpuSeconds),
        Resource::Tokens => Some(ResourceKind::LlmTokens),
        Resource::MoneyMicros => Some(ResourceKind::BudgetUnits),
        Resource::StorageBytes => Some(ResourceKind::StorageBytes),
        Resource::ApiCalls | Resource::MemoryKibS => None,
    }
}
