//! Mesh administration: join tokens (listed, revoked) and members (evicted). Any node
//! takes the request; the president checks who asks ([`crate::roles::authority`]) and
//! commits it, as for projects ([`crate::driver::projects`]).
//!
//! ```text
//!   aamas token revoke T ─► any node ─► president: authority::revoke_token ─► RevokeJoinToken
//!   aamas members remove ID ─► any node ─► president: authority::evict ─► EvictMember,
//!                                          then out of the federal group
//!   every node, when the Registry's members change: evicted keys leave the peer book and
//!   are blocked by the swarm (connections closed and refused)
//! ```

use aamas_consensus::WriteError;
use aamas_consensus::registry::RegistryCommand;
use aamas_protocol::NodeKey;
use serde::{Deserialize, Serialize};

use crate::driver::projects::ProjectError;
use crate::driver::runtime::{Node, now_ms};
use crate::net::swarm::Unacked;
use crate::net::wire::{Rpc, RpcResponse};
use crate::roles::authority::Refusal;
use crate::token::{JoinToken, TokenError};

/// A join token as `aamas token list` prints it: the Registry knows it from its first
/// use or its revocation until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    /// The first 16 hex digits of its SHA-256.
    pub digest: String,
    /// When it stops admitting, ms since the Unix epoch.
    pub expires_ms: u64,
    /// Admissions it still allows.
    pub uses_left: u32,
    /// "usable", "used up", "revoked" or "expired".
    pub status: String,
}

/// Why an administration request failed. Its `Display` is what the API and the CLI
/// show; [`AdminError::status`] is the API's status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The token does not parse, is for another mesh or is forged.
    #[error(transparent)]
    BadToken(TokenError),
    /// Not a member's peer id.
    #[error("{0:?} is not a peer id of an ed25519 key (as `aamas members` prints them)")]
    BadMemberId(String),
    /// No member has that id.
    #[error("no member {0}")]
    NoSuchMember(String),
    /// No ResourceRequest has that id.
    #[error("no resource request {0}; `aamas resources requests` lists them")]
    NoSuchRequest(u64),
    /// No alert has that id.
    #[error("no alert {0}; `aamas alerts` lists them")]
    NoSuchAlert(u64),
    /// A member that had to take part did not answer.
    #[error("a member did not answer: {0}")]
    Unreachable(String),
    /// The requester may not do it.
    #[error(transparent)]
    Refused(Refusal),
    /// The mesh has no president this node knows of.
    #[error("no president right now; try again")]
    NoPresident,
    /// A note over [`aamas_consensus::registry::MAX_NOTE_BYTES`].
    #[error(
        "the note is longer than {} bytes",
        aamas_consensus::registry::MAX_NOTE_BYTES
    )]
    NoteTooLong,
    /// The policy document does not parse or check (the error names the line).
    #[error("the policy is invalid: {0}")]
    BadPolicy(crate::governance::policy::PolicyError),
    /// The president could not commit it, or the Registry refused it.
    #[error("the president could not commit it: {0}")]
    NotCommitted(WriteError),
    /// The president refused the forwarded request, or it did not reach it.
    #[error(transparent)]
    President(Unacked),
}

impl AdminError {
    /// The HTTP status the API answers with: the request's own fault is a 4xx; a mesh
    /// that cannot take it right now is a 503, worth retrying.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadToken(_) | Self::BadMemberId(_) | Self::BadPolicy(_) | Self::NoteTooLong => {
                400
            }
            Self::Refused(_) | Self::President(Unacked::Refused { .. }) => 403,
            Self::NoSuchMember(_) | Self::NoSuchRequest(_) | Self::NoSuchAlert(_) => 404,
            Self::NotCommitted(WriteError::Rejected(_)) => 409,
            Self::NoPresident
            | Self::NotCommitted(_)
            | Self::President(_)
            | Self::Unreachable(_) => 503,
        }
    }
}

impl From<ProjectError> for AdminError {
    fn from(_: ProjectError) -> Self {
        // [`Node::president_peer`] fails only when no president is known.
        Self::NoPresident
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Node {
    /// The join tokens the Registry knows (used or revoked, not yet expired), soonest
    /// to expire first.
    pub async fn join_tokens(&self) -> Vec<TokenView> {
        let now = now_ms();
        let mut tokens: Vec<TokenView> = self
            .registry(|registry| {
                registry
                    .join_tokens()
                    .iter()
                    .map(|(digest, token)| TokenView {
                        digest: hex(&digest[..8]),
                        expires_ms: token.expires_ms,
                        uses_left: token.uses_left,
                        status: match token {
                            _ if token.revoked => "revoked",
                            _ if now >= token.expires_ms => "expired",
                            _ if token.uses_left == 0 => "used up",
                            _ => "usable",
                        }
                        .to_string(),
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        tokens.sort_by(|a, b| (a.expires_ms, &a.digest).cmp(&(b.expires_ms, &b.digest)));
        tokens
    }

    /// Revokes a join token (its text, as `aamas token create` printed it): it admits no
    /// one from then on, whether it was used or not.
    pub async fn revoke_token(&self, text: &str) -> Result<(), AdminError> {
        self.revoke_token_as(self.identity.node_key(), text).await
    }

    /// [`Node::revoke_token`] on behalf of `requester`: this node's own API, or the member
    /// that forwarded the request to the president.
    pub(crate) async fn revoke_token_as(
        &self,
        requester: NodeKey,
        text: &str,
    ) -> Result<(), AdminError> {
        let token = JoinToken::decode(text).map_err(AdminError::BadToken)?;
        // Mesh and signature; an expired token may be revoked (a no-op).
        token
            .verify(self.mesh.mesh, 0)
            .map_err(AdminError::BadToken)?;
        let Some((peer, addrs)) = self.president_peer()? else {
            crate::roles::authority::revoke_token(
                requester,
                self.identity.node_key(),
                token.issuer,
            )
            .map_err(|refusal| self.refused(refusal))?;
            let terms = token.terms();
            let command = RegistryCommand::RevokeJoinToken {
                digest: terms.digest,
                expires_ms: terms.expires_ms,
                now_ms: now_ms(),
            };
            self.propose(&[b"revoke", &terms.digest], command)
                .await
                .map_err(AdminError::NotCommitted)?;
            tracing::info!(token = %hex(&terms.digest[..8]), "revoked a join token");
            return Ok(());
        };
        let rpc = Rpc::RevokeToken {
            token: text.trim().to_string(),
        };
        crate::net::swarm::acked(self.handle.request(peer, addrs, rpc).await)
            .map_err(AdminError::President)
    }

    /// Evicts the member with peer id `id`: it loses its seats (the groups it sat in
    /// heal around it), and every member refuses its key from then on.
    pub async fn evict_member(&self, id: &str) -> Result<(), AdminError> {
        let node = NodeKey::from_peer_id(id).ok_or_else(|| AdminError::BadMemberId(id.into()))?;
        self.evict_member_as(self.identity.node_key(), node).await
    }

    /// [`Node::evict_member`] on behalf of `requester`: this node's own API, or the member
    /// that forwarded the request to the president.
    pub(crate) async fn evict_member_as(
        &self,
        requester: NodeKey,
        node: NodeKey,
    ) -> Result<(), AdminError> {
        let Some((peer, addrs)) = self.president_peer()? else {
            crate::roles::authority::evict(requester, self.identity.node_key(), node)
                .map_err(|refusal| self.refused(refusal))?;
            let known = self
                .registry(|registry| registry.members().contains_key(&node))
                .await
                .unwrap_or(false);
            if !known {
                return Err(AdminError::NoSuchMember(node.peer_id()));
            }
            self.propose(&[b"evict", &node.0], RegistryCommand::EvictMember { node })
                .await
                .map_err(AdminError::NotCommitted)?;
            tracing::warn!(member = %node.peer_id(), "evicted a member");
            // Its federal seat now, rather than once it counts as dead: the evicted node
            // may be alive and well. State groups heal around it as around a dead voter
            // (it is no longer an active member, and no member answers it).
            if let Some(federal) = self.federal() {
                let id = crate::driver::runtime::node_id(&node);
                if let Err(error) = aamas_consensus::remove_member(&federal, id).await {
                    tracing::warn!(%error, "taking the evicted member out of the federal group failed; healing will");
                }
            }
            self.enforce_evictions().await;
            return Ok(());
        };
        let rpc = Rpc::EvictMember { node };
        crate::net::swarm::acked(self.handle.request(peer, addrs, rpc).await)
            .map_err(AdminError::President)
    }

    /// An operator's request that member `requester` forwarded to this node as
    /// president (a project's submission or change, a token's revocation, an eviction, a
    /// policy, an alert or its acknowledgement), answered with what it did or why not.
    pub(crate) async fn handle_forwarded(&self, requester: NodeKey, rpc: Rpc) -> RpcResponse {
        fn answer<T, E: std::fmt::Display>(
            result: Result<T, E>,
            done: impl FnOnce(T) -> RpcResponse,
        ) -> RpcResponse {
            match result {
                Ok(value) => done(value),
                Err(reason) => RpcResponse::Refused {
                    reason: reason.to_string(),
                },
            }
        }
        let ack = |()| RpcResponse::Ack;
        match rpc {
            Rpc::SubmitProject {
                spec,
                request,
                override_reason,
            } => {
                let submission = crate::driver::projects::Submission {
                    request: request.as_deref(),
                    override_reason: override_reason.as_deref(),
                };
                let submitted = self.submit_project_as(requester, &spec, submission).await;
                answer(submitted, |id| RpcResponse::Submitted { id })
            }
            Rpc::ChangeProject { id, action, note } => answer(
                self.change_project_as(requester, &id, &action, note.as_deref())
                    .await,
                ack,
            ),
            Rpc::RevokeToken { token } => {
                answer(self.revoke_token_as(requester, &token).await, ack)
            }
            Rpc::EvictMember { node } => answer(self.evict_member_as(requester, node).await, ack),
            Rpc::ApplyPolicy { text } => {
                answer(self.apply_policy_as(requester, &text).await, |version| {
                    RpcResponse::PolicyApplied { version }
                })
            }
            Rpc::RaiseAlert { alert } => answer(self.record_alert_as(requester, alert).await, ack),
            Rpc::AckAlert { id, note } => answer(self.ack_alert(id, &note).await, ack),
            Rpc::RaiseResourceRequest { request } => {
                answer(self.carry_resource_request(requester, request).await, ack)
            }
            Rpc::SetLimit {
                state,
                resource,
                limit,
            } => answer(
                self.set_limit_as(requester, &state, resource, limit).await,
                ack,
            ),
            Rpc::DecideResourceRequest {
                id,
                approve,
                amount,
                note,
            } => answer(
                self.decide_resource_request_as(requester, id, approve, amount, &note)
                    .await,
                ack,
            ),
            _ => RpcResponse::Refused {
                reason: "not an operator's request".into(),
            },
        }
    }

    /// Counts a refusal (as [`Node::refuse`] does for RPCs) and turns it into the error.
    pub(crate) fn refused(&self, refusal: Refusal) -> AdminError {
        self.refuse(&refusal);
        AdminError::Refused(refusal)
    }

    /// Takes the Registry's evicted members out of the peer book and has the swarm
    /// close and refuse their connections. Runs when the Registry's members change; each
    /// evicted member is blocked once.
    pub(crate) async fn enforce_evictions(&self) {
        let me = self.identity.node_key();
        let evicted: Vec<NodeKey> = self
            .registry(|registry| registry.evicted_members().copied().collect())
            .await
            .unwrap_or_default();
        for key in evicted {
            let Some((id, peer)) = self.ids_of(&key) else {
                continue;
            };
            let first = self
                .blocked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(peer);
            if !first {
                continue;
            }
            if key == me {
                tracing::error!(
                    "this node was evicted from the mesh: its key is refused by every member; \
                     stop it, and join a new identity (a fresh data dir) with a new token"
                );
                continue;
            }
            self.book.remove(id);
            self.handle.block(peer).await;
            self.metrics.members_evicted.inc();
        }
    }
}
