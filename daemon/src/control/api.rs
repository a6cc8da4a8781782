//! The control API's wire types and the interface the daemon implements to answer it.
//!
//! Everything here is serialized as documented in `docs/api.md`, which is also the
//! `--json` output of the CLI: fields may be added, never renamed or removed.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{auth::PeerInfo, routes::ApiError};
use crate::{
    policy::{ExplainQuestion, Explanation, Grant, Operation, RejectedReload},
    store::{SessionRecord, StatementRecord},
};

/// How many sessions `GET /v1/sessions` returns when the request names no `limit`.
pub const DEFAULT_SESSION_LIMIT: usize = 100;

/// What the daemon is doing, as `GET /v1/status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    pub uptime_seconds: u64,
    /// The managed cgroup root, as an absolute path on the cgroup2 mount.
    pub cgroup_root: String,
    /// Every eBPF program the daemon manages and whether it is attached.
    pub programs: Vec<ProgramStatus>,
    /// The redirect listeners' addresses (`ip:port`).
    pub listeners: Vec<String>,
    pub policy: PolicyStatus,
    pub store: StoreStatus,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// Every way out of the managed cgroup and whether this kernel closes it.
    #[serde(default)]
    pub enforcement: Vec<crate::containment::EnforcementRow>,
    /// Packets the egress backstop dropped (pinned maps survive restarts).
    #[serde(default)]
    pub backstop_drops: u64,
    /// Each configured exporter: cursor, lag, last error.
    #[serde(default)]
    pub exporters: Vec<crate::export::runner::ExporterStatus>,
}

/// One eBPF program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: String,
    pub attached: bool,
}

/// The loaded policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// The policy directory.
    pub dir: String,
    pub agents: usize,
    pub resources: usize,
    pub rules: usize,
    /// 1 for the policy loaded at start, +1 per applied reload.
    pub generation: u64,
    /// When the policy in force was loaded.
    #[serde(with = "time::serde::rfc3339")]
    pub loaded_at: OffsetDateTime,
    /// The most recent rejected reload since start; `null` when none.
    pub last_rejected: Option<RejectedReload>,
    /// Just-in-time grants in force.
    pub active_grants: usize,
}

/// The session store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStatus {
    /// The store's directory.
    pub path: String,
    /// Every session recorded.
    pub sessions: u64,
    /// Sessions still relaying.
    pub open: u64,
    /// Sessions the policy refused.
    pub denied: u64,
}

/// The filter of `GET /v1/sessions`: every field given must match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionQuery {
    /// Only this agent's sessions.
    pub agent: Option<String>,
    /// At most this many, newest first.
    pub limit: usize,
    /// Only sessions to this policy resource.
    #[serde(default)]
    pub resource: Option<String>,
    /// Only sessions whose resource speaks this protocol (`postgres`, `ssh`, ...; `tcp`
    /// for opaque ones and sessions that matched no resource).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Only sessions with this decision (`allow`, `deny`, `review`).
    #[serde(default)]
    pub decision: Option<String>,
    /// Only sessions started at or after this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// Only sessions started before this time.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// Only sessions of runs whose workload identity names this repository.
    #[serde(default)]
    pub repository: Option<String>,
    /// Only sessions of runs whose workload identity names this actor.
    #[serde(default)]
    pub actor: Option<String>,
}

impl Default for SessionQuery {
    fn default() -> Self {
        Self {
            agent: None,
            limit: DEFAULT_SESSION_LIMIT,
            resource: None,
            protocol: None,
            decision: None,
            since: None,
            until: None,
            repository: None,
            actor: None,
        }
    }
}

impl SessionQuery {
    /// Whether `session` passes every filter but `agent` and `limit` (which the store's
    /// scan applies); `protocol_of` names a resource's protocol.
    pub fn matches(
        &self,
        session: &SessionRecord,
        protocol_of: impl Fn(&str) -> Option<&'static str>,
    ) -> bool {
        let claim = |names: &[&str]| -> Option<&str> {
            let identity = session.identity.as_ref()?;
            names
                .iter()
                .find_map(|name| identity.claims.get(*name))
                .map(String::as_str)
        };
        let protocol = session
            .resource
            .as_deref()
            .and_then(&protocol_of)
            .unwrap_or("tcp");
        self.resource
            .as_ref()
            .is_none_or(|resource| session.resource.as_ref() == Some(resource))
            && self
                .protocol
                .as_ref()
                .is_none_or(|wanted| wanted == protocol)
            && self
                .decision
                .as_ref()
                .is_none_or(|action| *action == session.decision.action)
            && self.since.is_none_or(|since| session.started_at >= since)
            && self.until.is_none_or(|until| session.started_at < until)
            && self.repository.as_ref().is_none_or(|repository| {
                claim(&["repository", "project_path", "pipeline_slug"]) == Some(repository)
            })
            && self.actor.as_ref().is_none_or(|actor| {
                session
                    .identity
                    .as_ref()
                    .and_then(|identity| identity.actor())
                    == Some(actor.as_str())
            })
    }
}

/// The answer of `POST /v1/policy/reload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Whether the new policy is now in force.
    pub applied: bool,
    /// The generation in force after the attempt.
    pub generation: u64,
    /// `FILE:LINE:COL: message` per problem when rejected; empty when applied.
    pub errors: Vec<String>,
}

/// The body of `POST /v1/grants`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRequest {
    pub agent: String,
    pub resource: String,
    pub operations: Vec<Operation>,
    /// How long it stays in force, from now.
    pub duration_seconds: u64,
    pub reason: String,
}

/// The body of `POST /v1/grants/{id}/revoke`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    #[serde(default)]
    pub reason: Option<String>,
}

/// The body of `POST /v1/approvals/{id}/approve` and `POST /v1/approvals/{id}/deny`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    /// Why; recorded with the statement (required, at most 1000 characters).
    pub reason: String,
}

/// The answer to an approve or deny: the decision as recorded, and what was held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalAnswer {
    pub id: u64,
    /// `approved` or `denied`.
    pub outcome: String,
    /// The approver's local uid; `null` for someone signed in to the web console
    /// through an identity provider (then `approver_identity` says who).
    pub approver_uid: Option<u32>,
    pub approver_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_identity: Option<crate::approvals::ApproverIdentity>,
    pub reason: String,
    pub statement: crate::approvals::HeldStatement,
}

/// The body of every error response: `{"error": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// A backend failure; the message reaches the client in a 500 response.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub message: String,
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

/// What the control server needs from the daemon.
///
/// Methods are called from blocking threads (`spawn_blocking`), so they may do store
/// I/O directly.
pub trait ControlBackend: Send + Sync + 'static {
    fn status(&self) -> StatusReport;
    /// Sessions matching `query`, newest first, at most `query.limit`.
    fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>, BackendError>;
    fn get_session(&self, id: u64) -> Result<Option<SessionRecord>, BackendError>;
    /// Every recorded statement of session `session_id`, in seq order; `None` when
    /// there is no such session (a session without statements is `Some` and empty).
    fn statements(&self, session_id: u64) -> Result<Option<Vec<StatementRecord>>, BackendError>;
    /// The terminal recordings (asciicast v3) of a session, by operation seq
    /// (`GET /v1/sessions/{id}/recordings`).
    fn recordings(&self, _session_id: u64) -> Result<Vec<Recording>, BackendError> {
        Ok(Vec::new())
    }
    /// A peer was refused access to the control API, once per connection.
    fn refused(&self, peer: &PeerInfo, reason: &str);

    /// Reloads the policy directory (`POST /v1/policy/reload`).
    fn reload_policy(&self) -> Result<ReloadReport, ApiError> {
        Err(ApiError::not_found("this daemon does not reload policies"))
    }
    /// Explains a decision with the live policy and grants (`POST /v1/policy/explain`).
    fn explain(&self, _question: &ExplainQuestion) -> Result<Explanation, ApiError> {
        Err(ApiError::not_found(
            "this daemon does not explain decisions",
        ))
    }
    /// Every grant, newest first (`GET /v1/grants`).
    fn grants(&self) -> Result<Vec<Grant>, ApiError> {
        Err(ApiError::not_found("this daemon has no grants"))
    }
    /// Creates a grant on behalf of `peer` (`POST /v1/grants`).
    fn create_grant(&self, _peer: &PeerInfo, _request: GrantRequest) -> Result<Grant, ApiError> {
        Err(ApiError::not_found("this daemon has no grants"))
    }
    /// Statements held for approval, oldest first (`GET /v1/approvals`).
    fn approvals(&self) -> Result<Vec<crate::approvals::HeldStatement>, ApiError> {
        Err(ApiError::not_found("this daemon holds no approvals"))
    }
    /// The last holds that ended, newest first (`GET /v1/approvals/decided`).
    fn decided_approvals(&self) -> Result<Vec<crate::approvals::Decided>, ApiError> {
        Err(ApiError::not_found("this daemon holds no approvals"))
    }
    /// Approves (or denies) held statement `id` on behalf of `peer`
    /// (`POST /v1/approvals/{id}/approve`, `.../deny`).
    fn decide_approval(
        &self,
        _peer: &PeerInfo,
        _id: u64,
        _approve: bool,
        _reason: &str,
    ) -> Result<ApprovalAnswer, ApiError> {
        Err(ApiError::not_found("this daemon holds no approvals"))
    }
    /// Revokes a grant on behalf of `peer` (`POST /v1/grants/{id}/revoke`).
    fn revoke_grant(
        &self,
        _peer: &PeerInfo,
        _id: u64,
        _request: RevokeRequest,
    ) -> Result<Grant, ApiError> {
        Err(ApiError::not_found("this daemon has no grants"))
    }
    /// Verifies a CI job's identity token and binds it to a new run cgroup of the agent
    /// (`POST /v1/identity/runs`, what `sluice run --identity` calls before the agent starts).
    fn bind_run(
        &self,
        _peer: &PeerInfo,
        _request: crate::workload::BindRequest,
    ) -> Result<crate::workload::BindAnswer, ApiError> {
        Err(ApiError::not_found(
            "this daemon verifies no workload identity",
        ))
    }
    /// A one-time sign-in URL for the web console (`POST /v1/ui/login`, what `sluice ui
    /// login` calls).
    fn ui_login(
        &self,
        _peer: &PeerInfo,
        _request: &crate::ui::LoginRequest,
    ) -> Result<crate::ui::LoginAnswer, ApiError> {
        Err(ApiError::not_found(
            "the web console is off: set [ui] listen in the configuration",
        ))
    }
    /// Walks the event log's hash chain (`GET /v1/events/verify`).
    fn verify_events(&self) -> Result<crate::store::VerifyReport, ApiError> {
        Err(ApiError::not_found("this daemon keeps no event log"))
    }
    /// A page of the event log (`GET /v1/events`).
    fn events(
        &self,
        _query: &crate::export::select::EventQuery,
    ) -> Result<crate::export::select::EventPage, ApiError> {
        Err(ApiError::not_found("this daemon keeps no event log"))
    }
}

/// One terminal recording of a session: the operation it belongs to and its asciicast
/// v3 text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Recording {
    pub seq: u64,
    pub cast: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(resource: Option<&str>, action: &str, claims: &[(&str, &str)]) -> SessionRecord {
        let mut record = SessionRecord::refused(1, "r", "why");
        record.resource = resource.map(str::to_owned);
        record.decision.action = action.to_owned();
        record.started_at = time::macros::datetime!(2026-12-06 04:00 UTC);
        if !claims.is_empty() {
            record.identity = Some(crate::workload::RunIdentity {
                issuer: "github".into(),
                issuer_url: "https://token.actions.githubusercontent.com".into(),
                subject: "repo:acme/api:ref:refs/heads/main".into(),
                claims: claims
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                    .collect(),
                token_sha256: String::new(),
                verified_at: record.started_at,
            });
        }
        record
    }

    #[test]
    fn session_filters_all_have_to_match() {
        let protocol_of = |name: &str| (name == "pg").then_some("postgres");
        let ci = session(
            Some("pg"),
            "allow",
            &[("repository", "acme/api"), ("actor", "octocat")],
        );
        let plain = session(None, "deny", &[]);
        let query = |edit: fn(&mut SessionQuery)| {
            let mut query = SessionQuery::default();
            edit(&mut query);
            query
        };
        let all = SessionQuery::default();
        assert!(all.matches(&ci, protocol_of) && all.matches(&plain, protocol_of));
        let postgres = query(|q| q.protocol = Some("postgres".into()));
        assert!(postgres.matches(&ci, protocol_of) && !postgres.matches(&plain, protocol_of));
        let tcp = query(|q| q.protocol = Some("tcp".into()));
        assert!(!tcp.matches(&ci, protocol_of) && tcp.matches(&plain, protocol_of));
        let denied = query(|q| q.decision = Some("deny".into()));
        assert!(!denied.matches(&ci, protocol_of) && denied.matches(&plain, protocol_of));
        let repository = query(|q| q.repository = Some("acme/api".into()));
        assert!(repository.matches(&ci, protocol_of) && !repository.matches(&plain, protocol_of));
        let other_actor = query(|q| q.actor = Some("mallory".into()));
        assert!(!other_actor.matches(&ci, protocol_of));
        let actor = query(|q| {
            q.actor = Some("octocat".into());
            q.resource = Some("pg".into());
        });
        assert!(actor.matches(&ci, protocol_of));
        let later = query(|q| q.since = Some(time::macros::datetime!(2026-12-06 04:01 UTC)));
        assert!(!later.matches(&ci, protocol_of));
        let window = query(|q| {
            q.since = Some(time::macros::datetime!(2026-12-06 04:00 UTC));
            q.until = Some(time::macros::datetime!(2026-12-06 04:01 UTC));
        });
        assert!(window.matches(&ci, protocol_of));
    }
}
