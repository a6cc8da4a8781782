//! OCSF 1.8 events (schema.ocsf.io), one class per kind of activity.
//!
//! | activity | class | activity_id |
//! |---|---|---|
//! | `session_open` | Network Activity 4001 | 1 Open, 5 Refuse when denied |
//! | `session_close` | Network Activity 4001 | 2 Close |
//! | `statement`, `statement_result` of SQL (`postgres`, `mysql`) | Datastore Activity 6005 | 4 Query |
//! | `statement`, `statement_result` of `http` | HTTP Activity 4002 | the method (3 Get, 6 Post, 9 Patch...) |
//! | `statement`, `statement_result` of `kubernetes` | API Activity 6003 | 1 Create, 2 Read, 3 Update, 4 Delete |
//! | `statement`, `statement_result` of `ssh` | SSH Activity 4007 | 6 Traffic |
//! | `dns` | DNS Activity 4003 | 2 Response |
//! | `approval_requested`, `approval_decided` | Authorize Session 3003 | 99 Other, 1 Assign Privileges |
//! | `grant` | User Access Management 3005 | 1 Assign / 2 Revoke Privileges |
//! | `daemon`, `policy_reload` | Application Lifecycle 6002 | 3 Start, 4 Stop, 8 Update |
//! | `retention` | Event Log Activity 1008 | 2 Delete |
//!
//! Why these: an approval is a human authorizing an agent's session to do one more
//! thing, which is what Authorize Session reports; a grant adds or removes privileges of
//! an agent for a while (User Access Management); the daemon and its policy are an
//! application that starts, stops and is updated (Application Lifecycle); retention
//! deletes records from an event log (Event Log Activity).
//!
//! Every event carries the base event's required fields (`activity_id`, `category_uid`,
//! `class_uid`, `type_uid` = class × 100 + activity, `severity_id`, `time` in ms,
//! `metadata.product`, `metadata.version`), plus `actor`, `src_endpoint`,
//! `dst_endpoint` and `device`, and each class's own required objects (`user`,
//! `privileges`, `app`, `query_info`...). Fields OCSF has no place for (the chain hash,
//! the agent, the rule) are under `unmapped`.

use serde_json::{Map, Value, json};

use super::{
    PRODUCT, PRODUCT_VERSION, Severity, decision_severity, epoch_ms, process_fields, socket_addr,
};
use crate::{
    events::{Activity, Context, StoredEvent},
    pipeline::Details,
};

/// The OCSF schema version these events follow.
pub const SCHEMA_VERSION: &str = "1.8.0";

/// An OCSF class: its uid, name and category.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    pub uid: u32,
    pub name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
}

pub const NETWORK_ACTIVITY: Class = Class {
    uid: 4001,
    name: "Network Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
pub const DNS_ACTIVITY: Class = Class {
    uid: 4003,
    name: "DNS Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
pub const HTTP_ACTIVITY: Class = Class {
    uid: 4002,
    name: "HTTP Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
pub const API_ACTIVITY: Class = Class {
    uid: 6003,
    name: "API Activity",
    category_uid: 6,
    category_name: "Application Activity",
};
pub const DATASTORE_ACTIVITY: Class = Class {
    uid: 6005,
    name: "Datastore Activity",
    category_uid: 6,
    category_name: "Application Activity",
};
pub const SSH_ACTIVITY: Class = Class {
    uid: 4007,
    name: "SSH Activity",
    category_uid: 4,
    category_name: "Network Activity",
};
pub const APPLICATION_LIFECYCLE: Class = Class {
    uid: 6002,
    name: "Application Lifecycle",
    category_uid: 6,
    category_name: "Application Activity",
};
pub const AUTHENTICATION: Class = Class {
    uid: 3002,
    name: "Authentication",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
pub const AUTHORIZE_SESSION: Class = Class {
    uid: 3003,
    name: "Authorize Session",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
pub const USER_ACCESS: Class = Class {
    uid: 3005,
    name: "User Access Management",
    category_uid: 3,
    category_name: "Identity & Access Management",
};
pub const EVENT_LOG_ACTIVITY: Class = Class {
    uid: 1008,
    name: "Event Log Activity",
    category_uid: 1,
    category_name: "System Activity",
};

/// The class an event maps to: an operation's by the protocol that decoded it.
pub fn class_for(activity: &Activity, context: &Context) -> Class {
    match activity {
        Activity::Statement { .. } | Activity::StatementResult { .. } => {
            operation_class(context.protocol.as_deref())
        }
        other => class_of(other),
    }
}

/// The class of an operation (`statement` and `statement_result` events) of `protocol`.
pub fn operation_class(protocol: Option<&str>) -> Class {
    match protocol {
        Some("http") => HTTP_ACTIVITY,
        Some("kubernetes") => API_ACTIVITY,
        Some("ssh") => SSH_ACTIVITY,
        _ => DATASTORE_ACTIVITY,
    }
}

/// The class an activity maps to, whatever its protocol (operations: as SQL).
pub fn class_of(activity: &Activity) -> Class {
    match activity {
        Activity::SessionOpen { .. } | Activity::SessionClose { .. } => NETWORK_ACTIVITY,
        Activity::Statement { .. } | Activity::StatementResult { .. } => DATASTORE_ACTIVITY,
        Activity::Dns { .. } => DNS_ACTIVITY,
        Activity::ApprovalRequested { .. } | Activity::ApprovalDecided { .. } => AUTHORIZE_SESSION,
        Activity::Grant { .. } => USER_ACCESS,
        Activity::Identity { .. } => AUTHENTICATION,
        Activity::Daemon { .. } | Activity::PolicyReload { .. } => APPLICATION_LIFECYCLE,
        Activity::Retention { .. } => EVENT_LOG_ACTIVITY,
    }
}

/// Outcome of an activity, as OCSF `status_id`.
#[derive(Clone, Copy)]
enum Status {
    Unknown = 0,
    Success = 1,
    Failure = 2,
}

/// The class-specific part of an event, filled by [`activity_fields`].
struct Mapped {
    activity_id: u32,
    activity_name: &'static str,
    severity: Severity,
    status: Status,
    status_detail: Option<String>,
    message: String,
    fields: Map<String, Value>,
}

/// `stored` as an OCSF event object.
pub fn event(stored: &StoredEvent) -> Value {
    let event = &stored.event;
    let class = class_for(&event.activity, &event.context);
    let mut mapped = activity_fields(&event.activity, &event.context, &event.host);
    let is_operation = matches!(
        event.activity,
        Activity::Statement { .. } | Activity::StatementResult { .. }
    );
    if is_operation && class != DATASTORE_ACTIVITY {
        operation_fields(class, &event.activity, &event.context, &mut mapped);
    }

    let type_uid = u64::from(class.uid) * 100 + u64::from(mapped.activity_id);
    let mut object = json!({
        "activity_id": mapped.activity_id,
        "activity_name": mapped.activity_name,
        "category_uid": class.category_uid,
        "category_name": class.category_name,
        "class_uid": class.uid,
        "class_name": class.name,
        "type_uid": type_uid,
        "type_name": format!("{}: {}", class.name, mapped.activity_name),
        "severity_id": severity_id(mapped.severity),
        "severity": severity_name(mapped.severity),
        "status_id": mapped.status as u32,
        "status": status_name(mapped.status),
        "time": epoch_ms(event.time),
        "message": mapped.message,
        "metadata": {
            "version": SCHEMA_VERSION,
            "product": {
                "name": PRODUCT,
                "vendor_name": PRODUCT,
                "version": PRODUCT_VERSION,
            },
            "uid": stored.hash,
            "sequence": stored.seq,
            "log_name": "sluice events",
            "log_version": event.version.to_string(),
        },
        "actor": actor(&event.context),
        "src_endpoint": src_endpoint(&event.context, &event.host),
        "dst_endpoint": dst_endpoint(&event.context, &event.host),
        "device": {"hostname": event.host, "type_id": 0, "type": "Unknown"},
        "unmapped": unmapped(stored),
    });
    let mut fields = mapped.fields;
    if let (Some(Value::Object(extra)), Some(Value::Object(unmapped))) =
        (fields.remove(UNMAPPED_EXTRA), object.get_mut("unmapped"))
    {
        unmapped.extend(extra);
    }
    if let Some(object) = object.as_object_mut() {
        if let Some(detail) = mapped.status_detail {
            object.insert("status_detail".into(), Value::String(detail));
        }
        object.extend(fields);
    }
    object
}

fn activity_fields(activity: &Activity, context: &Context, host: &str) -> Mapped {
    let mut fields = Map::new();
    let destination = context.destination.as_deref().unwrap_or("-");
    match activity {
        Activity::SessionOpen { decision } => {
            let allowed = decision.action == "allow";
            security_control(&mut fields, &decision.action, &decision.rule);
            fields.insert("connection_info".into(), connection_info(context));
            if let Some(protocol) = &context.protocol {
                fields.insert("app_protocol_name".into(), json!(protocol));
            }
            Mapped {
                activity_id: if allowed { 1 } else { 5 },
                activity_name: if allowed { "Open" } else { "Refuse" },
                severity: decision_severity(&decision.action),
                status: if allowed {
                    Status::Success
                } else {
                    Status::Failure
                },
                status_detail: Some(decision.reason.clone()),
                message: format!(
                    "{} connection to {destination}: {}",
                    decision.action, decision.reason
                ),
                fields,
            }
        }
        Activity::SessionClose {
            reason,
            bytes_up,
            bytes_down,
            duration_ms,
        } => {
            fields.insert("connection_info".into(), connection_info(context));
            fields.insert(
                "traffic".into(),
                json!({
                    "bytes_out": bytes_up,
                    "bytes_in": bytes_down,
                    "bytes": bytes_up.saturating_add(*bytes_down),
                }),
            );
            fields.insert("duration".into(), json!(duration_ms));
            Mapped {
                activity_id: 2,
                activity_name: "Close",
                severity: Severity::Informational,
                status: Status::Success,
                status_detail: Some(reason.clone()),
                message: format!("connection to {destination} closed: {reason}"),
                fields,
            }
        }
        Activity::Statement {
            statement_seq,
            sql,
            kind,
            tables,
            decision,
            ..
        } => {
            datastore(&mut fields, context, *statement_seq, sql, tables);
            security_control(&mut fields, &decision.action, &decision.rule);
            Mapped {
                activity_id: 4,
                activity_name: "Query",
                severity: decision_severity(&decision.action),
                status: if decision.action == "allow" {
                    Status::Success
                } else {
                    Status::Failure
                },
                status_detail: Some(decision.reason.clone()),
                message: format!("{kind} {}: {}", decision.action, decision.reason),
                fields,
            }
        }
        Activity::StatementResult {
            statement_seq,
            duration_us,
            rows,
            tag,
            error,
            ..
        } => {
            datastore(&mut fields, context, *statement_seq, "", &[]);
            if let Some(duration_us) = duration_us {
                fields.insert("duration".into(), json!(duration_us / 1000));
            }
            let message = match (error, tag) {
                (Some(error), _) => format!("statement {statement_seq} failed: {error}"),
                (None, Some(tag)) => format!("statement {statement_seq} completed: {tag}"),
                (None, None) => format!("statement {statement_seq} completed"),
            };
            if let Some(rows) = rows {
                fields.insert("count".into(), json!(rows));
            }
            Mapped {
                activity_id: 4,
                activity_name: "Query",
                severity: if error.is_some() {
                    Severity::Low
                } else {
                    Severity::Informational
                },
                status: if error.is_some() {
                    Status::Failure
                } else {
                    Status::Success
                },
                status_detail: error.clone().or_else(|| tag.clone()),
                message,
                fields,
            }
        }
        Activity::Dns {
            name,
            query_type,
            rcode,
            answers,
        } => {
            fields.insert(
                "query".into(),
                json!({"hostname": name, "type": query_type, "class": "IN"}),
            );
            let answers: Vec<Value> = answers
                .iter()
                .map(|answer| json!({"rdata": answer}))
                .collect();
            fields.insert("answers".into(), Value::Array(answers));
            let (rcode_id, rcode_name) = dns_rcode(rcode);
            fields.insert("rcode_id".into(), json!(rcode_id));
            fields.insert("rcode".into(), json!(rcode_name));
            Mapped {
                activity_id: 2,
                activity_name: "Response",
                severity: Severity::Informational,
                status: if rcode_id == 0 {
                    Status::Success
                } else {
                    Status::Failure
                },
                status_detail: Some(rcode.clone()),
                message: format!("DNS {query_type} {name}: {rcode}"),
                fields,
            }
        }
        Activity::ApprovalRequested {
            approval_id,
            statement_seq,
            rule,
            timeout_s,
        } => {
            authorize_session(&mut fields, context, *statement_seq);
            insert_unmapped_extra(
                &mut fields,
                json!({"approval_id": approval_id, "rule": rule, "timeout_s": timeout_s}),
            );
            Mapped {
                activity_id: 99,
                activity_name: "Other",
                severity: Severity::Low,
                status: Status::Unknown,
                status_detail: Some("approval requested".into()),
                message: format!(
                    "approval {approval_id} requested for statement {statement_seq} (rule {rule})"
                ),
                fields,
            }
        }
        Activity::ApprovalDecided {
            approval_id,
            statement_seq,
            outcome,
            approver_uid,
            approver_name,
            reason,
            waited_ms,
        } => {
            authorize_session(&mut fields, context, *statement_seq);
            insert_unmapped_extra(
                &mut fields,
                json!({
                    "approval_id": approval_id,
                    "outcome": outcome,
                    "approver": {"uid": approver_uid, "name": approver_name},
                    "waited_ms": waited_ms,
                }),
            );
            let approved = outcome == "approved";
            Mapped {
                activity_id: 1,
                activity_name: "Assign Privileges",
                severity: if approved {
                    Severity::Informational
                } else {
                    Severity::Low
                },
                status: if approved {
                    Status::Success
                } else {
                    Status::Failure
                },
                status_detail: Some(reason.clone().unwrap_or_else(|| outcome.clone())),
                message: format!("approval {approval_id} for statement {statement_seq}: {outcome}"),
                fields,
            }
        }
        Activity::Grant {
            grant_id,
            change,
            agent,
            resource,
            operations,
            expires_at,
            by_uid,
            by_name,
            reason,
        } => {
            fields.insert(
                "user".into(),
                json!({"name": agent, "type_id": 99, "type": "Agent"}),
            );
            fields.insert("privileges".into(), json!(operations));
            fields.insert("resource".into(), json!({"name": resource}));
            if by_uid.is_some() || by_name.is_some() {
                fields.insert(
                    "actor".into(),
                    json!({"user": {"uid": by_uid.map(|uid| uid.to_string()), "name": by_name}}),
                );
            }
            insert_unmapped_extra(
                &mut fields,
                json!({
                    "grant_id": grant_id,
                    "change": change,
                    "expires_at": expires_at.and_then(|at| at.format(&time::format_description::well_known::Rfc3339).ok()),
                }),
            );
            let created = change == "created";
            Mapped {
                activity_id: if created { 1 } else { 2 },
                activity_name: if created {
                    "Assign Privileges"
                } else {
                    "Revoke Privileges"
                },
                severity: Severity::Low,
                status: Status::Success,
                status_detail: reason.clone(),
                message: format!("grant {grant_id} {change}: {agent} on {resource}"),
                fields,
            }
        }
        Activity::Identity {
            outcome,
            agent,
            reason,
            run,
        } => {
            let bound = outcome == "bound";
            let mut user = Map::new();
            match &context.identity {
                Some(identity) => {
                    user.insert(
                        "name".into(),
                        json!(identity.actor().unwrap_or(&identity.subject)),
                    );
                    user.insert("credential_uid".into(), json!(identity.token_sha256));
                    if let Some(owner) = identity.owner() {
                        user.insert("org".into(), json!({"name": owner}));
                    }
                }
                None => {
                    user.insert("name".into(), json!(agent));
                }
            }
            fields.insert("user".into(), Value::Object(user));
            fields.insert("auth_protocol_id".into(), json!(99));
            fields.insert("auth_protocol".into(), json!("OIDC"));
            insert_unmapped_extra(&mut fields, json!({"run": run}));
            Mapped {
                activity_id: 1,
                activity_name: "Logon",
                severity: if bound {
                    Severity::Informational
                } else {
                    Severity::Medium
                },
                status: if bound {
                    Status::Success
                } else {
                    Status::Failure
                },
                status_detail: (!reason.is_empty()).then(|| reason.clone()),
                message: format!("workload identity for agent {agent} {outcome}"),
                fields,
            }
        }
        Activity::Daemon { change, version } => {
            fields.insert("app".into(), app(version));
            let started = change == "started";
            Mapped {
                activity_id: if started { 3 } else { 4 },
                activity_name: if started { "Start" } else { "Stop" },
                severity: Severity::Informational,
                status: Status::Success,
                status_detail: None,
                message: format!("sluice daemon {change} on {host}"),
                fields,
            }
        }
        Activity::PolicyReload {
            outcome,
            trigger,
            errors,
            agents,
            resources,
            rules,
        } => {
            fields.insert("app".into(), app(PRODUCT_VERSION));
            insert_unmapped_extra(
                &mut fields,
                json!({"trigger": trigger, "errors": errors, "agents": agents, "resources": resources, "rules": rules}),
            );
            let applied = outcome == "applied";
            Mapped {
                activity_id: 8,
                activity_name: "Update",
                severity: if applied {
                    Severity::Informational
                } else {
                    Severity::Medium
                },
                status: if applied {
                    Status::Success
                } else {
                    Status::Failure
                },
                status_detail: Some(if errors.is_empty() {
                    outcome.clone()
                } else {
                    errors.join("; ")
                }),
                message: format!("policy reload ({trigger}) {outcome}"),
                fields,
            }
        }
        Activity::Retention {
            first_dropped_seq,
            last_dropped_seq,
            last_dropped_hash,
            reason,
        } => {
            fields.insert("log_name".into(), json!("sluice events"));
            fields.insert("log_provider".into(), json!(PRODUCT));
            insert_unmapped_extra(
                &mut fields,
                json!({
                    "first_dropped_seq": first_dropped_seq,
                    "last_dropped_seq": last_dropped_seq,
                    "last_dropped_hash": last_dropped_hash,
                }),
            );
            Mapped {
                activity_id: 2,
                activity_name: "Delete",
                severity: Severity::Informational,
                status: Status::Success,
                status_detail: Some(reason.clone()),
                message: format!(
                    "events {first_dropped_seq}..={last_dropped_seq} dropped by retention ({reason})"
                ),
                fields,
            }
        }
    }
}

/// Re-maps an operation of a protocol that is no datastore into its class: HTTP
/// Activity (`http_request`, `http_response`), API Activity (`api`, `resources`) or
/// SSH Activity. The datastore objects go; the decision, status and message stay.
fn operation_fields(class: Class, activity: &Activity, context: &Context, mapped: &mut Mapped) {
    for datastore_only in ["query_info", "database", "table", "type_id", "type"] {
        mapped.fields.remove(datastore_only);
    }
    let (details, verb) = match activity {
        Activity::Statement { details, kind, .. } => (Some(details), kind.as_str()),
        _ => (None, ""),
    };
    let seq = match activity {
        Activity::Statement { statement_seq, .. }
        | Activity::StatementResult { statement_seq, .. } => *statement_seq,
        _ => 0,
    };
    let uid = format!("{}/{seq}", context.session_id.unwrap_or_default());
    let (activity_id, activity_name) = if class == HTTP_ACTIVITY {
        let method = match details {
            Some(Details::Http { method, .. }) => method.as_str(),
            _ => verb,
        };
        let mut request = json!({"uid": uid});
        if !method.is_empty() {
            request["http_method"] = json!(method);
        }
        if let Some(Details::Http {
            host,
            path,
            query_keys,
            status,
            ..
        }) = details
        {
            request["url"] = json!({"hostname": host, "path": path});
            if !query_keys.is_empty() {
                insert_unmapped_extra(&mut mapped.fields, json!({"query_keys": query_keys}));
            }
            if let Some(status) = status {
                mapped
                    .fields
                    .insert("http_response".into(), json!({"code": status}));
            }
        }
        mapped.fields.insert("http_request".into(), request);
        http_method_activity(method)
    } else if class == API_ACTIVITY {
        let mut api = json!({"operation": verb, "request": {"uid": uid}, "service": {"name": context.resource.clone().unwrap_or_default()}});
        if let Some(Details::Kubernetes {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        }) = details
        {
            api["operation"] = json!(verb);
            if !group.is_empty() {
                api["group"] = json!({"name": group});
            }
            let kind = match subresource {
                Some(subresource) => format!("{resource}/{subresource}"),
                None => resource.clone(),
            };
            let mut object = json!({"type": kind});
            if let Some(name) = name {
                object["name"] = json!(name);
            }
            if let Some(namespace) = namespace {
                object["namespace"] = json!(namespace);
            }
            mapped.fields.insert("resources".into(), json!([object]));
        }
        let operation = api["operation"].as_str().unwrap_or_default().to_owned();
        mapped.fields.insert("api".into(), api);
        kubernetes_verb_activity(&operation)
    } else {
        if let Some(Details::Ssh {
            request,
            command,
            forward,
        }) = details
        {
            insert_unmapped_extra(
                &mut mapped.fields,
                json!({"ssh": {"request": request, "command": command, "forward": forward}}),
            );
        }
        mapped
            .fields
            .insert("connection_info".into(), connection_info(context));
        (6, "Traffic")
    };
    mapped.activity_id = activity_id;
    mapped.activity_name = activity_name;
}

/// HTTP Activity's activity for a method.
fn http_method_activity(method: &str) -> (u32, &'static str) {
    match method.to_ascii_uppercase().as_str() {
        "CONNECT" => (1, "Connect"),
        "DELETE" => (2, "Delete"),
        "GET" => (3, "Get"),
        "HEAD" => (4, "Head"),
        "OPTIONS" => (5, "Options"),
        "POST" => (6, "Post"),
        "PUT" => (7, "Put"),
        "TRACE" => (8, "Trace"),
        "PATCH" => (9, "Patch"),
        _ => (99, "Other"),
    }
}

/// API Activity's activity for a Kubernetes verb.
fn kubernetes_verb_activity(verb: &str) -> (u32, &'static str) {
    match verb {
        "create" => (1, "Create"),
        "get" | "list" | "watch" => (2, "Read"),
        "update" | "patch" => (3, "Update"),
        "delete" | "deletecollection" => (4, "Delete"),
        _ => (99, "Other"),
    }
}

/// Datastore Activity's objects: the statement, the database and its first table.
fn datastore(
    fields: &mut Map<String, Value>,
    context: &Context,
    statement_seq: u64,
    sql: &str,
    tables: &[String],
) {
    let uid = format!("{}/{statement_seq}", context.session_id.unwrap_or_default());
    fields.insert(
        "query_info".into(),
        json!({"uid": uid, "query_string": sql}),
    );
    let mut database = json!({"type_id": 1, "type": "Relational"});
    if let Some(resource) = &context.resource {
        database["name"] = json!(resource);
    }
    fields.insert("database".into(), database);
    if let Some(table) = tables.first() {
        fields.insert("table".into(), json!({"name": table}));
    }
    fields.insert("type_id".into(), json!(1));
    fields.insert("type".into(), json!("Database"));
    if !tables.is_empty() {
        insert_unmapped_extra(fields, json!({"tables": tables}));
    }
}

/// The security-control profile: what the policy did and which rule decided.
fn security_control(fields: &mut Map<String, Value>, action: &str, rule: &str) {
    let (action_id, action_name, disposition_id, disposition) = match action {
        "allow" => (1, "Allowed", 1, "Allowed"),
        "review" => (3, "Observed", 6, "Alert"),
        _ => (2, "Denied", 2, "Blocked"),
    };
    fields.insert("action_id".into(), json!(action_id));
    fields.insert("action".into(), json!(action_name));
    fields.insert("disposition_id".into(), json!(disposition_id));
    fields.insert("disposition".into(), json!(disposition));
    fields.insert("policy".into(), json!({"name": rule}));
}

/// Outbound, from the agent, over the session's transport.
fn connection_info(context: &Context) -> Value {
    let transport = context.transport.as_deref().unwrap_or("tcp");
    let protocol_num = match transport {
        "udp" => 17,
        _ => 6,
    };
    json!({
        "direction_id": 2,
        "direction": "Outbound",
        "protocol_name": transport,
        "protocol_num": protocol_num,
    })
}

/// The process behind the event, or the daemon itself for daemon-wide events.
fn actor(context: &Context) -> Value {
    if context.pid.is_none() && context.uid.is_none() && context.agent.is_none() {
        return json!({"app_name": PRODUCT});
    }
    let mut process = process_fields(context);
    if let Some(exe) = &context.exe {
        let name = exe.rsplit('/').next().unwrap_or(exe);
        process.insert(
            "file".into(),
            json!({"name": name, "path": exe, "type_id": 1, "type": "Regular File"}),
        );
    }
    let mut user = context.uid.map(|uid| json!({"uid": uid.to_string()}));
    if let Some(user) = &user {
        process.insert("user".into(), user.clone());
    }
    // A verified workload identity names the person and organisation behind the run,
    // and the token (by hash) that proved it.
    if let Some(identity) = &context.identity {
        let mut named = Map::new();
        if let Some(uid) = context.uid {
            named.insert("uid".into(), json!(uid.to_string()));
        }
        named.insert(
            "name".into(),
            json!(identity.actor().unwrap_or(&identity.subject)),
        );
        named.insert("credential_uid".into(), json!(identity.token_sha256));
        if let Some(owner) = identity.owner() {
            named.insert("org".into(), json!({"name": owner}));
        }
        user = Some(Value::Object(named));
    }
    let mut actor = Map::new();
    if !process.is_empty() {
        actor.insert("process".into(), Value::Object(process));
    }
    if let Some(user) = user {
        actor.insert("user".into(), user);
    }
    if let Some(agent) = &context.agent {
        actor.insert("app_name".into(), json!(agent));
    }
    if context.session_id.is_some() {
        actor.insert("session".into(), session(context));
    }
    Value::Object(actor)
}

/// The agent as an OCSF user: its uid, and the agent's name.
fn agent_user(context: &Context) -> Value {
    let mut user = Map::new();
    if let Some(uid) = context.uid {
        user.insert("uid".into(), json!(uid.to_string()));
    }
    user.insert(
        "name".into(),
        json!(context.agent.as_deref().unwrap_or("unknown")),
    );
    Value::Object(user)
}

/// Authorize Session's required objects for a held statement: the agent, the
/// privilege it asks for (running that statement) and its session.
fn authorize_session(fields: &mut Map<String, Value>, context: &Context, statement_seq: u64) {
    fields.insert("user".into(), agent_user(context));
    fields.insert(
        "privileges".into(),
        json!([format!("statement {statement_seq}")]),
    );
    fields.insert("session".into(), session(context));
}

fn session(context: &Context) -> Value {
    let mut session = json!({"uid": context.session_id.map(|id| id.to_string())});
    if let (Some(identity), Some(object)) = (&context.identity, session.as_object_mut()) {
        object.insert("issuer".into(), json!(identity.issuer_url));
        object.insert("credential_uid".into(), json!(identity.token_sha256));
    }
    session
}

fn src_endpoint(context: &Context, host: &str) -> Value {
    endpoint(context.source.as_deref(), host)
}

fn dst_endpoint(context: &Context, host: &str) -> Value {
    let mut endpoint = endpoint(context.destination.as_deref(), host);
    if let (Some(resource), Some(object)) = (&context.resource, endpoint.as_object_mut()) {
        object.insert("svc_name".into(), json!(resource));
    }
    endpoint
}

/// An `ip:port` as an endpoint; anything else by name; the host when there is none.
fn endpoint(address: Option<&str>, host: &str) -> Value {
    match (socket_addr(address), address) {
        (Some(addr), _) => json!({"ip": addr.ip().to_string(), "port": addr.port()}),
        (None, Some(name)) => json!({"name": name, "hostname": host}),
        (None, None) => json!({"hostname": host}),
    }
}

fn app(version: &str) -> Value {
    json!({"name": PRODUCT, "vendor_name": PRODUCT, "version": version})
}

/// sluice's own fields: where the event sits in the chain, and who and where.
fn unmapped(stored: &StoredEvent) -> Value {
    let context = &stored.event.context;
    json!({
        "seq": stored.seq,
        "hash": stored.hash,
        "prev_hash": stored.prev_hash,
        "activity": stored.event.activity.type_name(),
        "session_id": context.session_id,
        "agent": context.agent,
        "resource": context.resource,
        "cgroup": context.cgroup,
        "protocol": context.protocol,
        "identity": context.identity,
    })
}

/// Where [`activity_fields`] leaves fields for `unmapped`; [`event`] merges them in.
const UNMAPPED_EXTRA: &str = "unmapped_extra";

/// Adds activity-specific fields to `unmapped`.
fn insert_unmapped_extra(fields: &mut Map<String, Value>, extra: Value) {
    let slot = fields
        .entry(UNMAPPED_EXTRA)
        .or_insert_with(|| Value::Object(Map::new()));
    if let (Some(slot), Value::Object(extra)) = (slot.as_object_mut(), extra) {
        slot.extend(extra);
    }
}

fn severity_id(severity: Severity) -> u32 {
    match severity {
        Severity::Informational => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
    }
}

fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Informational => "Informational",
        Severity::Low => "Low",
        Severity::Medium => "Medium",
    }
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Unknown => "Unknown",
        Status::Success => "Success",
        Status::Failure => "Failure",
    }
}

/// An rcode name as OCSF's `rcode_id` and caption.
fn dns_rcode(rcode: &str) -> (u32, &'static str) {
    match rcode.to_ascii_uppercase().as_str() {
        "NOERROR" => (0, "NoError"),
        "FORMERR" => (1, "FormError"),
        "SERVFAIL" => (2, "ServError"),
        "NXDOMAIN" => (3, "NXDomain"),
        "NOTIMP" => (4, "NotImp"),
        "REFUSED" => (5, "Refused"),
        _ => (99, "Other"),
    }
}
