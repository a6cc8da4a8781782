//! The session record: one per connection (or refused attempt), as stored and as the
//! control API and `sluice sessions ... --json` print it.
//!
//! This shape is part of sluice's stable interface (documented in `docs/api.md`):
//! fields may be added, never renamed or removed.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pipeline::Details;

/// Whether a session is still relaying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Allowed and still relaying.
    Open,
    /// Finished; `ended_at` and `close_reason` say when and why.
    Closed,
}

/// The decision that let a session through or stopped it, and which rule made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// `allow`, `deny` or `review`.
    pub action: String,
    /// The deciding rule's name (`default-deny` when no rule matched).
    pub rule: String,
    /// A sentence for humans.
    pub reason: String,
}

/// One connection from an agent, allowed or not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: u64,
    pub state: SessionState,
    /// The managed child cgroup the process ran in.
    pub agent: String,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The task's comm at connect time.
    pub comm: String,
    /// `/proc/PID/exe` at accept time; `None` when the process was already gone.
    pub exe: Option<String>,
    /// The cgroup v2 path of the process, relative to the cgroup2 mount.
    pub cgroup: String,
    /// The agent's own address (`ip:port`).
    pub source: String,
    /// Where the agent was connecting to (`ip:port`).
    pub destination: String,
    /// The daemon's own address on its upstream connection, to match server-side logs.
    #[serde(default)]
    pub upstream_local: Option<String>,
    /// The session this one was carried inside (an HTTP CONNECT tunnel, an SSH
    /// forward); `None` for a connection the kernel redirected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_session: Option<u64>,
    /// The verified workload identity of the agent run (`sluice run --identity`): the
    /// CI job's issuer, subject and recorded claims. Absent for runs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::workload::RunIdentity>,
    /// `tcp` or `udp`.
    pub transport: String,
    /// The policy resource the destination matched, if any.
    pub resource: Option<String>,
    pub decision: DecisionRecord,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// Bytes from the agent to the upstream.
    pub bytes_up: u64,
    /// Bytes from the upstream to the agent.
    pub bytes_down: u64,
    /// Why it ended: `client_closed`, `upstream_closed`, `denied`, `upstream_unreachable`,
    /// `daemon_restart`, an I/O error, ...
    pub close_reason: Option<String>,
}

impl SessionRecord {
    /// A connection refused before any byte was relayed, by `rule` for `reason`.
    /// Callers fill in what they know of who and where with struct update syntax.
    pub fn refused(id: u64, rule: impl Into<String>, reason: impl Into<String>) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            id,
            state: SessionState::Closed,
            agent: String::new(),
            pid: 0,
            tid: 0,
            uid: 0,
            gid: 0,
            comm: String::new(),
            exe: None,
            cgroup: String::new(),
            source: String::new(),
            destination: String::new(),
            upstream_local: None,
            parent_session: None,
            identity: None,
            transport: "tcp".into(),
            resource: None,
            decision: DecisionRecord {
                action: "deny".into(),
                rule: rule.into(),
                reason: reason.into(),
            },
            started_at: now,
            ended_at: Some(now),
            bytes_up: 0,
            bytes_down: 0,
            close_reason: Some("denied".into()),
        }
    }

    /// Marks the record closed at `at` for `reason`.
    pub fn close(&mut self, at: OffsetDateTime, reason: String) {
        self.state = SessionState::Closed;
        self.ended_at = Some(at);
        self.close_reason = Some(reason);
    }
}

/// One operation inside a session (a SQL statement, an HTTP request, a Kubernetes API
/// call, an SSH channel request, a DNS query): what was asked, what was decided, and
/// how it ended. Values covered by a mask rule never appear here: `sql` (the summary)
/// has its literal values removed and parameters are counted, not kept.
///
/// The field names are those of the PostgreSQL-era statement record, kept for the
/// stable API: `sql` is the operation's summary, `operation` its class, `kind` its
/// verb, `tables` its targets. `protocol` and `details` were added later; records
/// stored before them read with `protocol` empty (PostgreSQL or DNS: the session's
/// resource says which) and no details.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    pub session_id: u64,
    /// 1, 2, 3... within the session, in the order the agent sent them.
    pub seq: u64,
    /// The protocol that decoded it: `postgres`, `mysql`, `http`, `kubernetes`, `ssh`,
    /// `dns`; empty in records stored before it was recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// The operation's summary: the statement or request with every literal value
    /// removed (SQL literals as `?`).
    pub sql: String,
    /// The operation class the policy judged (`read`, `write`, `ddl`, ...).
    pub operation: String,
    /// The verb: the statement kind (`SELECT`, `CREATE TABLE`), the HTTP method, the
    /// Kubernetes verb, the SSH request.
    pub kind: String,
    /// The targets: tables, URL paths, Kubernetes objects, commands.
    #[serde(default)]
    pub tables: Vec<String>,
    /// What only this protocol knows (tables read and written, method/host/path...).
    #[serde(default, skip_serializing_if = "Details::is_none")]
    pub details: Details,
    /// How many bound parameters it carried (extended protocol).
    #[serde(default)]
    pub params: usize,
    /// Each bound parameter as its format and size (`text:11`, `binary:4`, `NULL`):
    /// values are never recorded, like the literals in `sql`.
    #[serde(default)]
    pub parameters: Vec<String>,
    pub decision: DecisionRecord,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// Microseconds from the statement reaching the daemon to its completion.
    pub duration_us: Option<u64>,
    /// Rows returned or affected.
    pub rows: Option<u64>,
    /// The server's command tag (`SELECT 3`, `INSERT 0 1`).
    pub tag: Option<String>,
    /// The error the agent got (ours for a denial, or the server's), as `SQLSTATE: message`.
    pub error: Option<String>,
    /// Column name → how many values were masked in it.
    #[serde(default)]
    pub masked: std::collections::BTreeMap<String, u64>,
    /// Values set to NULL because they could not be masked in place (binary formats).
    #[serde(default)]
    pub nulled: u64,
    /// For a statement a `review` rule held: how the hold ended and who decided.
    #[serde(default)]
    pub approval: Option<ApprovalRecord>,
    /// The verified workload identity of the agent run that sent it (as its session's
    /// `identity`); absent for runs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::workload::RunIdentity>,
}

/// The PostgreSQL-era name of [`OperationRecord`].
pub type StatementRecord = OperationRecord;

impl OperationRecord {
    /// A statement as it reaches the daemon, before it runs: started now, with no
    /// tables, parameters, outcome or masking yet. Callers fill in the rest with struct
    /// update syntax.
    pub fn begun(
        session_id: u64,
        seq: u64,
        sql: String,
        operation: String,
        kind: String,
        decision: DecisionRecord,
    ) -> Self {
        Self {
            session_id,
            seq,
            protocol: String::new(),
            sql,
            operation,
            kind,
            tables: Vec::new(),
            details: Details::None,
            params: 0,
            parameters: Vec::new(),
            decision,
            started_at: OffsetDateTime::now_utc(),
            duration_us: None,
            rows: None,
            tag: None,
            error: None,
            masked: Default::default(),
            nulled: 0,
            approval: None,
            identity: None,
        }
    }
}

/// How a held statement's approval ended, as recorded with the statement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// The approval id (`sluice approve ID`).
    pub id: u64,
    /// `approved`, `denied`, `timed_out` or `withdrawn` (the session ended first).
    pub outcome: String,
    /// The approver's uid and user name (`SO_PEERCRED` of the control connection);
    /// `None` unless a human decided.
    pub approver_uid: Option<u32>,
    pub approver_name: Option<String>,
    /// For a decision made in the web console by someone signed in through an identity
    /// provider: the provider's issuer, subject, email and groups for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver_identity: Option<crate::approvals::ApproverIdentity>,
    /// The approver's reason, or why the daemon decided.
    pub reason: String,
    /// How long the statement waited, in milliseconds.
    pub waited_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A statement record as sluice stored it before operations had a protocol and
    /// details (PostgreSQL only).
    const STORED_BEFORE_OPERATIONS: &str = r#"{"session_id":7,"seq":2,"sql":"SELECT email FROM customers WHERE id = ?","operation":"read","kind":"SELECT","tables":["customers"],"params":1,"parameters":["text:2"],"decision":{"action":"allow","rule":"support-read","reason":"rule `support-read` allows read"},"started_at":"2026-11-30T10:00:00Z","duration_us":812,"rows":1,"tag":"SELECT 1","error":null,"masked":{"email":1},"nulled":0,"approval":null}"#;

    #[test]
    fn statement_records_stored_before_operations_still_read() {
        let record: OperationRecord =
            serde_json::from_str(STORED_BEFORE_OPERATIONS).expect("an old record decodes");
        assert_eq!(record.session_id, 7);
        assert_eq!(record.seq, 2);
        assert_eq!(record.protocol, "");
        assert_eq!(record.details, Details::None);
        assert_eq!(record.kind, "SELECT");
        assert_eq!(record.tables, ["customers"]);
        assert_eq!(record.parameters, ["text:2"]);
        assert_eq!(record.masked.get("email"), Some(&1));
        // Written back, it is what it was: nothing new appears in old records.
        let again: serde_json::Value = serde_json::to_value(&record).expect("encodes");
        let before: serde_json::Value =
            serde_json::from_str(STORED_BEFORE_OPERATIONS).expect("valid JSON");
        assert_eq!(again, before);
    }

    #[test]
    fn operation_records_keep_their_protocol_and_details() {
        let record = OperationRecord {
            protocol: "http".into(),
            details: Details::Http {
                method: "DELETE".into(),
                host: "api.internal".into(),
                path: "/v1/users/?".into(),
                query_keys: vec!["force".into()],
                status: Some(204),
            },
            ..OperationRecord::begun(
                3,
                1,
                "DELETE /v1/users/?".into(),
                "dangerous".into(),
                "DELETE".into(),
                DecisionRecord {
                    action: "deny".into(),
                    rule: "no-deletes".into(),
                    reason: "no".into(),
                },
            )
        };
        let json = serde_json::to_string(&record).expect("encodes");
        assert!(
            json.contains(r#""details":{"type":"http","method":"DELETE""#),
            "{json}"
        );
        let back: OperationRecord = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, record);
    }
}
