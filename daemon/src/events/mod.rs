//! The audit event: one schema for everything sluice records.
//!
//! Sessions and statements are also kept as records for the CLI's views; the event log
//! is the trail that must be complete, ordered and tamper-evident, and that exporters
//! ship to SIEMs. Every event says who (agent, process), where (resource, source,
//! destination), on which host and what happened. The store gives each event a
//! sequence number and chains it to the previous one by hash ([`StoredEvent`]).
//!
//! This shape is versioned ([`SCHEMA_VERSION`]) and documented for users in
//! `docs/events.md`: fields may be added, never renamed or removed, within a version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    pipeline::Details,
    store::record::{DecisionRecord, SessionRecord, StatementRecord},
};

/// The version of this schema, carried by every event.
pub const SCHEMA_VERSION: u32 = 1;

/// An event as the store keeps it: numbered and chained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// 1, 2, 3... over the store's whole life; never reused, never skipped.
    pub seq: u64,
    /// Hex SHA-256 of the previous stored event (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over `seq`, `prev_hash` and the event's canonical JSON.
    pub hash: String,
    pub event: Event,
}

/// Something that happened, with who and where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// [`SCHEMA_VERSION`] when written.
    pub version: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The host the daemon runs on.
    pub host: String,
    /// Who and where; empty for daemon-wide events.
    #[serde(default)]
    pub context: Context,
    /// What happened.
    pub activity: Activity,
}

impl Event {
    /// An event happening now on this host.
    pub fn now(context: Context, activity: Activity) -> Self {
        Self {
            version: SCHEMA_VERSION,
            time: OffsetDateTime::now_utc(),
            host: host_name().to_owned(),
            context,
            activity,
        }
    }
}

impl Context {
    /// Who and where of a session, from its record.
    pub fn of_session(record: &SessionRecord) -> Self {
        let known = |text: &str| (!text.is_empty()).then(|| text.to_owned());
        Self {
            session_id: Some(record.id),
            agent: known(&record.agent),
            pid: (record.pid != 0).then_some(record.pid),
            uid: Some(record.uid),
            gid: Some(record.gid),
            comm: known(&record.comm),
            exe: record.exe.clone(),
            cgroup: known(&record.cgroup),
            resource: record.resource.clone(),
            source: known(&record.source),
            destination: known(&record.destination),
            transport: known(&record.transport),
            protocol: None,
            identity: record.identity.clone(),
        }
    }
}

impl Activity {
    /// The `session_open` of a session record (allowed or refused).
    pub fn session_open(record: &SessionRecord) -> Self {
        Activity::SessionOpen {
            decision: record.decision.clone(),
        }
    }

    /// The `session_close` of a closed session record.
    pub fn session_close(record: &SessionRecord) -> Self {
        let duration_ms = record.ended_at.map_or(0, |ended| {
            u64::try_from((ended - record.started_at).whole_milliseconds()).unwrap_or(0)
        });
        Activity::SessionClose {
            reason: record.close_reason.clone().unwrap_or_default(),
            bytes_up: record.bytes_up,
            bytes_down: record.bytes_down,
            duration_ms,
        }
    }

    /// The `statement` of a statement record, as decided.
    pub fn statement(record: &StatementRecord) -> Self {
        Activity::Statement {
            statement_seq: record.seq,
            sql: record.sql.clone(),
            operation: record.operation.clone(),
            kind: record.kind.clone(),
            tables: record.tables.clone(),
            parameters: record.parameters.clone(),
            decision: record.decision.clone(),
            details: record.details.clone(),
        }
    }

    /// The `statement_result` of a finished statement record.
    pub fn statement_result(record: &StatementRecord) -> Self {
        Activity::StatementResult {
            statement_seq: record.seq,
            duration_us: record.duration_us,
            rows: record.rows,
            tag: record.tag.clone(),
            error: record.error.clone(),
            masked: record
                .masked
                .iter()
                .map(|(column, count)| (column.clone(), *count))
                .collect(),
            nulled: record.nulled,
        }
    }
}

/// This host's name (the kernel's, read once); empty when unreadable.
pub fn host_name() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_default()
    })
}

/// Who acted and where to: the process behind a session and the destination.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub session_id: Option<u64>,
    /// The managed child cgroup (agent) name.
    pub agent: Option<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    /// The cgroup v2 path of the process, relative to the cgroup2 mount.
    pub cgroup: Option<String>,
    /// The policy resource the destination matched.
    pub resource: Option<String>,
    /// The agent's own address (`ip:port`).
    pub source: Option<String>,
    /// Where the agent was connecting to (`ip:port`).
    pub destination: Option<String>,
    /// `tcp` or `udp`.
    pub transport: Option<String>,
    /// The protocol decoded on the session (`postgres`, `tcp`, `dns`...).
    pub protocol: Option<String>,
    /// The verified workload identity of the agent run (a CI job's repository, ref,
    /// commit, run and actor); absent for runs without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::workload::RunIdentity>,
}

/// What happened. Serialized with a `type` tag in snake case (`session_open`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Activity {
    /// A connection was decided: allowed (about to reach upstream) or refused.
    SessionOpen { decision: DecisionRecord },
    /// A session ended.
    SessionClose {
        reason: String,
        bytes_up: u64,
        bytes_down: u64,
        duration_ms: u64,
    },
    /// An operation (a statement, a request) was decided, before anything was
    /// forwarded upstream. One shape for every protocol (`context.protocol` says which):
    /// `sql` is its summary, `kind` its verb, `tables` its targets.
    Statement {
        /// The operation's number within its session.
        statement_seq: u64,
        /// The summary, with every literal value removed (SQL literals as `?`).
        sql: String,
        operation: String,
        kind: String,
        tables: Vec<String>,
        /// Bound parameters by format and size, never value.
        parameters: Vec<String>,
        decision: DecisionRecord,
        /// What only this protocol knows (left out when there is nothing).
        #[serde(default, skip_serializing_if = "Details::is_none")]
        details: Details,
    },
    /// A statement finished (or never ran).
    StatementResult {
        statement_seq: u64,
        duration_us: Option<u64>,
        rows: Option<u64>,
        tag: Option<String>,
        error: Option<String>,
        /// Column name → values masked in it.
        masked: BTreeMap<String, u64>,
        nulled: u64,
    },
    /// A statement was held for a human's approval.
    ApprovalRequested {
        approval_id: u64,
        statement_seq: u64,
        rule: String,
        /// Seconds until the hold times out and the statement is denied.
        timeout_s: u64,
    },
    /// A held statement was approved, denied or timed out.
    ApprovalDecided {
        approval_id: u64,
        statement_seq: u64,
        /// `approved`, `denied` or `timed_out`.
        outcome: String,
        approver_uid: Option<u32>,
        approver_name: Option<String>,
        reason: Option<String>,
        waited_ms: u64,
    },
    /// A just-in-time grant was created, expired or revoked.
    Grant {
        grant_id: u64,
        /// `created`, `expired` or `revoked`.
        change: String,
        agent: String,
        resource: String,
        operations: Vec<String>,
        #[serde(with = "time::serde::rfc3339::option", default)]
        expires_at: Option<OffsetDateTime>,
        by_uid: Option<u32>,
        by_name: Option<String>,
        reason: Option<String>,
    },
    /// The policy was reloaded, or a reload was rejected and the old policy kept.
    PolicyReload {
        /// `applied` or `rejected`.
        outcome: String,
        /// What triggered it: `start`, `sighup`, `file_change`, `api`.
        trigger: String,
        /// Checker messages when rejected (`file:line:col: message`).
        errors: Vec<String>,
        agents: usize,
        resources: usize,
        rules: usize,
    },
    /// A DNS query from an agent and the resolver's answer.
    Dns {
        name: String,
        /// `A`, `AAAA`, `CNAME`...
        query_type: String,
        /// `NOERROR`, `NXDOMAIN`, `REFUSED`, `SERVFAIL`...
        rcode: String,
        answers: Vec<String>,
    },
    /// A workload identity token was presented for an agent run (`sluice run
    /// --identity`): verified and bound to the run, or refused. The token is never in it.
    Identity {
        /// `bound` or `refused`.
        outcome: String,
        /// The agent the run is for.
        agent: String,
        /// Why the token was refused; empty when bound.
        reason: String,
        /// The run's cgroup (as `/proc/PID/cgroup` spells it) when bound.
        run: Option<String>,
    },
    /// The daemon started or stopped.
    Daemon {
        /// `started` or `stopped`.
        change: String,
        version: String,
    },
    /// Old events were dropped by retention. The chain goes on from `last_dropped_hash`.
    Retention {
        /// Events `first_dropped_seq..=last_dropped_seq` were removed.
        first_dropped_seq: u64,
        last_dropped_seq: u64,
        last_dropped_hash: String,
        /// `age` or `size`.
        reason: String,
    },
}

impl Activity {
    /// The `type` tag this activity serializes with.
    pub fn type_name(&self) -> &'static str {
        match self {
            Activity::SessionOpen { .. } => "session_open",
            Activity::SessionClose { .. } => "session_close",
            Activity::Statement { .. } => "statement",
            Activity::StatementResult { .. } => "statement_result",
            Activity::ApprovalRequested { .. } => "approval_requested",
            Activity::ApprovalDecided { .. } => "approval_decided",
            Activity::Grant { .. } => "grant",
            Activity::PolicyReload { .. } => "policy_reload",
            Activity::Dns { .. } => "dns",
            Activity::Identity { .. } => "identity",
            Activity::Daemon { .. } => "daemon",
            Activity::Retention { .. } => "retention",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_type_names_match_their_serialized_tags() {
        let activity = Activity::Daemon {
            change: "started".into(),
            version: "0.1.0".into(),
        };
        let json = serde_json::to_value(&activity).expect("serialize");
        assert_eq!(json["type"], activity.type_name());
    }
}
