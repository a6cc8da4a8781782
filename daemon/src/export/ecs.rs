//! Elastic Common Schema (ECS 8.11) documents.
//!
//! `event.category` and `event.type` use only ECS's allowed values, so Elastic's
//! dashboards and detection rules pick the events up; what ECS has no field for (the
//! chain, the agent, the activity's own fields) goes under `sluice.*`.

use serde_json::{Map, Value, json};
use time::format_description::well_known::Rfc3339;

use super::{PRODUCT, PRODUCT_VERSION, process_fields, socket_addr};
use crate::events::{Activity, Context, StoredEvent};

/// The ECS version these documents follow.
pub const ECS_VERSION: &str = "8.11.0";

/// `stored` as an ECS document.
pub fn event(stored: &StoredEvent) -> Value {
    let event = &stored.event;
    let context = &event.context;
    let (category, kinds, outcome) = classify(&event.activity);
    let mut ecs_event = json!({
        "kind": "event",
        "category": category,
        "type": kinds,
        "action": event.activity.type_name(),
        "outcome": outcome,
        "sequence": stored.seq,
        "id": stored.hash,
        "dataset": "sluice.events",
        "module": PRODUCT,
        "provider": PRODUCT,
    });
    if let Some(duration_ns) = duration_ns(&event.activity) {
        ecs_event["duration"] = json!(duration_ns);
    }
    let mut document = json!({
        "@timestamp": event.time.format(&Rfc3339).unwrap_or_default(),
        "ecs": {"version": ECS_VERSION},
        "message": message(&event.activity, context),
        "event": ecs_event,
        "host": {"hostname": event.host, "name": event.host},
        "observer": {"product": PRODUCT, "vendor": PRODUCT, "version": PRODUCT_VERSION, "type": "proxy"},
        "sluice": {
            "seq": stored.seq,
            "hash": stored.hash,
            "prev_hash": stored.prev_hash,
            "schema_version": event.version,
            "session_id": context.session_id,
            "agent": context.agent,
            "resource": context.resource,
            "cgroup": context.cgroup,
            "activity": event.activity,
        },
    });
    let Some(object) = document.as_object_mut() else {
        return document;
    };
    if let Some(process) = process(context) {
        object.insert("process".into(), process);
    }
    if let Some(uid) = context.uid {
        object.insert("user".into(), json!({"id": uid.to_string()}));
    }
    if let Some(identity) = &context.identity {
        let user = object.entry("user").or_insert_with(|| json!({}));
        if let Some(user) = user.as_object_mut() {
            user.insert(
                "name".into(),
                json!(identity.actor().unwrap_or(&identity.subject)),
            );
        }
        if let Some(owner) = identity.owner() {
            object.insert("organization".into(), json!({"name": owner}));
        }
        if let Some(sluice) = object.get_mut("sluice").and_then(Value::as_object_mut) {
            sluice.insert("identity".into(), json!(identity));
        }
    }
    if let Some(source) = endpoint(context.source.as_deref()) {
        object.insert("source".into(), source);
    }
    if let Some(destination) = endpoint(context.destination.as_deref()) {
        object.insert("destination".into(), destination);
    }
    let mut network = Map::new();
    if let Some(transport) = &context.transport {
        network.insert("transport".into(), json!(transport));
    }
    if let Some(protocol) = &context.protocol {
        network.insert("protocol".into(), json!(protocol));
    }
    if !network.is_empty() {
        network.insert("direction".into(), json!("egress"));
        object.insert("network".into(), Value::Object(network));
    }
    activity_fields(object, &event.activity);
    document
}

/// ECS `event.category`, `event.type` and `event.outcome` of an activity.
fn classify(activity: &Activity) -> (Vec<&'static str>, Vec<&'static str>, &'static str) {
    let decided = |action: &str| match action {
        "allow" => ("allowed", "success"),
        "review" => ("info", "unknown"),
        _ => ("denied", "failure"),
    };
    match activity {
        Activity::SessionOpen { decision } => {
            let (kind, outcome) = decided(&decision.action);
            (vec!["network"], vec!["connection", "start", kind], outcome)
        }
        Activity::SessionClose { .. } => (vec!["network"], vec!["connection", "end"], "success"),
        Activity::Identity { outcome, .. } => (
            vec!["authentication"],
            vec!["start"],
            if outcome == "bound" {
                "success"
            } else {
                "failure"
            },
        ),
        Activity::Statement { decision, .. } => {
            let (kind, outcome) = decided(&decision.action);
            (vec!["database"], vec!["access", kind], outcome)
        }
        Activity::StatementResult { error, .. } => (
            vec!["database"],
            vec!["access", "end"],
            if error.is_some() {
                "failure"
            } else {
                "success"
            },
        ),
        Activity::Dns { rcode, .. } => (
            vec!["network"],
            vec!["protocol"],
            if rcode.eq_ignore_ascii_case("NOERROR") {
                "success"
            } else {
                "failure"
            },
        ),
        Activity::ApprovalRequested { .. } => (vec!["iam"], vec!["admin", "info"], "unknown"),
        Activity::ApprovalDecided { outcome, .. } => {
            if outcome == "approved" {
                (vec!["iam"], vec!["admin", "allowed"], "success")
            } else {
                (vec!["iam"], vec!["admin", "denied"], "failure")
            }
        }
        Activity::Grant { change, .. } => {
            let kind = if change == "created" {
                "creation"
            } else {
                "deletion"
            };
            (vec!["iam"], vec!["change", kind], "success")
        }
        Activity::PolicyReload { outcome, .. } => (
            vec!["configuration"],
            vec!["change"],
            if outcome == "applied" {
                "success"
            } else {
                "failure"
            },
        ),
        Activity::Daemon { change, .. } => (
            vec!["process"],
            vec![if change == "started" { "start" } else { "end" }],
            "success",
        ),
        Activity::Retention { .. } => (vec!["database"], vec!["deletion"], "success"),
    }
}

fn duration_ns(activity: &Activity) -> Option<u64> {
    match activity {
        Activity::SessionClose { duration_ms, .. } => Some(duration_ms.saturating_mul(1_000_000)),
        Activity::StatementResult {
            duration_us: Some(duration_us),
            ..
        } => Some(duration_us.saturating_mul(1_000)),
        _ => None,
    }
}

fn message(activity: &Activity, context: &Context) -> String {
    let destination = context.destination.as_deref().unwrap_or("-");
    match activity {
        Activity::SessionOpen { decision } => format!(
            "{} connection to {destination} (rule {})",
            decision.action, decision.rule
        ),
        Activity::SessionClose { reason, .. } => {
            format!("connection to {destination} closed: {reason}")
        }
        Activity::Statement { kind, decision, .. } => {
            format!("{kind} {} (rule {})", decision.action, decision.rule)
        }
        Activity::StatementResult {
            statement_seq,
            error,
            ..
        } => match error {
            Some(error) => format!("statement {statement_seq} failed: {error}"),
            None => format!("statement {statement_seq} completed"),
        },
        Activity::Dns {
            name,
            query_type,
            rcode,
            ..
        } => format!("DNS {query_type} {name}: {rcode}"),
        Activity::ApprovalRequested { approval_id, .. } => {
            format!("approval {approval_id} requested")
        }
        Activity::ApprovalDecided {
            approval_id,
            outcome,
            ..
        } => format!("approval {approval_id} {outcome}"),
        Activity::Grant {
            grant_id, change, ..
        } => format!("grant {grant_id} {change}"),
        Activity::PolicyReload {
            outcome, trigger, ..
        } => format!("policy reload ({trigger}) {outcome}"),
        Activity::Identity { outcome, agent, .. } => {
            format!("workload identity for agent {agent} {outcome}")
        }
        Activity::Daemon { change, .. } => format!("sluice daemon {change}"),
        Activity::Retention {
            first_dropped_seq,
            last_dropped_seq,
            ..
        } => format!("events {first_dropped_seq}..={last_dropped_seq} dropped by retention"),
    }
}

fn process(context: &Context) -> Option<Value> {
    let mut process = process_fields(context);
    if let Some(exe) = &context.exe {
        process.insert("executable".into(), json!(exe));
    }
    if let Some(uid) = context.uid {
        process.insert("user".into(), json!({"id": uid.to_string()}));
    }
    (!process.is_empty()).then_some(Value::Object(process))
}

fn endpoint(address: Option<&str>) -> Option<Value> {
    let address = address?;
    Some(match socket_addr(Some(address)) {
        Some(addr) => json!({
            "address": address,
            "ip": addr.ip().to_string(),
            "port": addr.port(),
        }),
        None => json!({"address": address}),
    })
}

/// ECS fields specific to an activity.
fn activity_fields(object: &mut Map<String, Value>, activity: &Activity) {
    match activity {
        Activity::SessionOpen { decision } | Activity::Statement { decision, .. } => {
            object.insert("rule".into(), json!({"name": decision.rule}));
            if let Some(Value::Object(event)) = object.get_mut("event") {
                event.insert("reason".into(), json!(decision.reason));
            }
        }
        Activity::SessionClose {
            bytes_up,
            bytes_down,
            ..
        } => {
            if let Some(Value::Object(source)) = object.get_mut("source") {
                source.insert("bytes".into(), json!(bytes_up));
            }
            if let Some(Value::Object(destination)) = object.get_mut("destination") {
                destination.insert("bytes".into(), json!(bytes_down));
            }
            if let Some(Value::Object(network)) = object.get_mut("network") {
                network.insert("bytes".into(), json!(bytes_up.saturating_add(*bytes_down)));
            }
        }
        Activity::Dns {
            name,
            query_type,
            rcode,
            answers,
        } => {
            let answers: Vec<Value> = answers.iter().map(|data| json!({"data": data})).collect();
            object.insert(
                "dns".into(),
                json!({
                    "type": "answer",
                    "question": {"name": name, "type": query_type},
                    "response_code": rcode,
                    "answers": answers,
                }),
            );
        }
        Activity::ApprovalDecided {
            approver_uid: Some(uid),
            approver_name,
            ..
        } => {
            object.insert(
                "user".into(),
                json!({"id": uid.to_string(), "name": approver_name}),
            );
        }
        _ => {}
    }
}
