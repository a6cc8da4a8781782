//! ArcSight Common Event Format lines:
//! `CEF:0|sluice|sluice|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSIONS`.
//!
//! The signature is the activity's type (`session_open`, `statement`...), the severity
//! is on CEF's 0–10 scale. Header fields escape `\` and `|`; extension values escape
//! `\`, `=` and line ends, as the CEF specification asks. Extension keys are CEF's own
//! (`rt`, `src`, `spt`, `dst`, `dpt`, `spid`, `sproc`, `suid`, `act`, `outcome`...) or
//! labelled custom strings (`cs1Label=agent cs1=...`).

use std::fmt::Write as _;

use super::{PRODUCT, PRODUCT_VERSION, Severity, decision_severity, epoch_ms, socket_addr};
use crate::{
    events::{Activity, StoredEvent},
    store::DecisionRecord,
};

/// `stored` as one CEF line.
pub fn event(stored: &StoredEvent) -> String {
    let event = &stored.event;
    let context = &event.context;
    let mut extensions: Vec<(&str, String)> = vec![
        ("rt", epoch_ms(event.time).to_string()),
        ("dvchost", event.host.clone()),
        ("externalId", stored.seq.to_string()),
    ];
    if let Some(source) = socket_addr(context.source.as_deref()) {
        extensions.push(("src", source.ip().to_string()));
        extensions.push(("spt", source.port().to_string()));
    }
    match socket_addr(context.destination.as_deref()) {
        Some(destination) => {
            extensions.push(("dst", destination.ip().to_string()));
            extensions.push(("dpt", destination.port().to_string()));
        }
        None => {
            if let Some(destination) = &context.destination {
                extensions.push(("dhost", destination.clone()));
            }
        }
    }
    if let Some(transport) = &context.transport {
        extensions.push(("proto", transport.to_ascii_uppercase()));
    }
    if let Some(protocol) = &context.protocol {
        extensions.push(("app", protocol.clone()));
    }
    if let Some(pid) = context.pid {
        extensions.push(("spid", pid.to_string()));
    }
    if let Some(comm) = &context.comm {
        extensions.push(("sproc", comm.clone()));
    }
    if let Some(uid) = context.uid {
        extensions.push(("suid", uid.to_string()));
    }
    if let Some(exe) = &context.exe {
        extensions.push(("filePath", exe.clone()));
    }
    if let Some(session_id) = context.session_id {
        extensions.push(("cn1Label", "session".into()));
        extensions.push(("cn1", session_id.to_string()));
    }
    if let Some(agent) = &context.agent {
        extensions.push(("cs1Label", "agent".into()));
        extensions.push(("cs1", agent.clone()));
    }
    if let Some(resource) = &context.resource {
        extensions.push(("cs2Label", "resource".into()));
        extensions.push(("cs2", resource.clone()));
    }
    if let Some(identity) = &context.identity {
        extensions.push((
            "suser",
            identity.actor().unwrap_or(&identity.subject).to_owned(),
        ));
        extensions.push(("flexString1Label", "identity".into()));
        extensions.push(("flexString1", identity.summary()));
        extensions.push(("flexString2Label", "identity_subject".into()));
        extensions.push(("flexString2", identity.subject.clone()));
    }
    let (name, severity) = activity_extensions(&event.activity, &mut extensions);
    extensions.push(("cs6Label", "hash".into()));
    extensions.push(("cs6", stored.hash.clone()));

    let mut line = format!(
        "CEF:0|{}|{}|{}|{}|{}|{}|",
        header(PRODUCT),
        header(PRODUCT),
        header(PRODUCT_VERSION),
        header(event.activity.type_name()),
        header(&name),
        cef_severity(severity),
    );
    for (index, (key, value)) in extensions.iter().enumerate() {
        if index > 0 {
            line.push(' ');
        }
        let _ = write!(line, "{key}={}", extension_value(value));
    }
    line
}

/// The event's name and severity, and its activity's own extensions.
fn activity_extensions(
    activity: &Activity,
    extensions: &mut Vec<(&str, String)>,
) -> (String, Severity) {
    match activity {
        Activity::SessionOpen { decision: d } => {
            push_decision(extensions, d);
            (
                format!("connection {}", d.action),
                decision_severity(&d.action),
            )
        }
        Activity::SessionClose {
            reason,
            bytes_up,
            bytes_down,
            duration_ms,
        } => {
            extensions.push(("out", bytes_up.to_string()));
            extensions.push(("in", bytes_down.to_string()));
            extensions.push(("reason", reason.clone()));
            extensions.push(("cn2Label", "duration_ms".into()));
            extensions.push(("cn2", duration_ms.to_string()));
            ("connection closed".into(), Severity::Informational)
        }
        Activity::Statement {
            statement_seq,
            sql,
            kind,
            decision: d,
            ..
        } => {
            push_decision(extensions, d);
            extensions.push(("cs4Label", "query".into()));
            extensions.push(("cs4", sql.clone()));
            extensions.push(("cn3Label", "statement".into()));
            extensions.push(("cn3", statement_seq.to_string()));
            (format!("{kind} {}", d.action), decision_severity(&d.action))
        }
        Activity::StatementResult {
            statement_seq,
            rows,
            error,
            ..
        } => {
            extensions.push(("cn3Label", "statement".into()));
            extensions.push(("cn3", statement_seq.to_string()));
            if let Some(rows) = rows {
                extensions.push(("cnt", rows.to_string()));
            }
            if let Some(error) = error {
                extensions.push(("reason", error.clone()));
            }
            extensions.push((
                "outcome",
                if error.is_some() {
                    "failure"
                } else {
                    "success"
                }
                .into(),
            ));
            if error.is_some() {
                ("statement failed".into(), Severity::Low)
            } else {
                ("statement completed".into(), Severity::Informational)
            }
        }
        Activity::Dns {
            name,
            query_type,
            rcode,
            answers,
        } => {
            extensions.push(("destinationDnsDomain", name.clone()));
            extensions.push(("cs4Label", "query_type".into()));
            extensions.push(("cs4", query_type.clone()));
            extensions.push(("cs5Label", "answers".into()));
            extensions.push(("cs5", answers.join(",")));
            extensions.push(("outcome", rcode.clone()));
            (format!("DNS {query_type}"), Severity::Informational)
        }
        Activity::ApprovalRequested {
            approval_id, rule, ..
        } => {
            extensions.push(("cs3Label", "rule".into()));
            extensions.push(("cs3", rule.clone()));
            extensions.push(("cn2Label", "approval".into()));
            extensions.push(("cn2", approval_id.to_string()));
            ("approval requested".into(), Severity::Low)
        }
        Activity::ApprovalDecided {
            approval_id,
            outcome,
            approver_name,
            ..
        } => {
            extensions.push(("cn2Label", "approval".into()));
            extensions.push(("cn2", approval_id.to_string()));
            extensions.push(("outcome", outcome.clone()));
            if let Some(approver) = approver_name {
                extensions.push(("duser", approver.clone()));
            }
            (format!("approval {outcome}"), Severity::Low)
        }
        Activity::Grant {
            grant_id,
            change,
            operations,
            ..
        } => {
            extensions.push(("cn2Label", "grant".into()));
            extensions.push(("cn2", grant_id.to_string()));
            extensions.push(("cs4Label", "operations".into()));
            extensions.push(("cs4", operations.join(",")));
            (format!("grant {change}"), Severity::Low)
        }
        Activity::PolicyReload {
            outcome, errors, ..
        } => {
            extensions.push(("outcome", outcome.clone()));
            if !errors.is_empty() {
                extensions.push(("reason", errors.join("; ")));
            }
            let severity = if outcome == "applied" {
                Severity::Informational
            } else {
                Severity::Medium
            };
            (format!("policy reload {outcome}"), severity)
        }
        Activity::Identity {
            outcome, reason, ..
        } => {
            extensions.push(("outcome", outcome.clone()));
            if !reason.is_empty() {
                extensions.push(("reason", reason.clone()));
            }
            let severity = if outcome == "bound" {
                Severity::Informational
            } else {
                Severity::Medium
            };
            (format!("workload identity {outcome}"), severity)
        }
        Activity::Daemon { change, .. } => (format!("daemon {change}"), Severity::Informational),
        Activity::Retention {
            first_dropped_seq,
            last_dropped_seq,
            reason,
            ..
        } => {
            extensions.push(("reason", reason.clone()));
            extensions.push(("cs4Label", "dropped".into()));
            extensions.push(("cs4", format!("{first_dropped_seq}..={last_dropped_seq}")));
            (
                "events dropped by retention".into(),
                Severity::Informational,
            )
        }
    }
}

/// What the policy decided, and which rule.
fn push_decision(extensions: &mut Vec<(&str, String)>, decision: &DecisionRecord) {
    extensions.push(("act", decision.action.clone()));
    extensions.push(("cs3Label", "rule".into()));
    extensions.push(("cs3", decision.rule.clone()));
    extensions.push(("reason", decision.reason.clone()));
    let outcome = if decision.action == "allow" {
        "success"
    } else {
        "failure"
    };
    extensions.push(("outcome", outcome.into()));
}

/// CEF's 0–10 severity.
fn cef_severity(severity: Severity) -> u8 {
    match severity {
        Severity::Informational => 1,
        Severity::Low => 3,
        Severity::Medium => 6,
    }
}

/// A header field: `\` and `|` escaped; a line end would end the record, so it becomes a
/// space.
pub fn header(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' | '\n' => out.push(' '),
            _ => out.push(ch),
        }
    }
    out
}

/// An extension value: `\`, `=` and line ends escaped.
pub fn extension_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '=' => out.push_str("\\="),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            _ => out.push(ch),
        }
    }
    out
}
