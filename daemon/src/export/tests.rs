//! The formats over one event of every activity type.

use std::collections::BTreeMap;

use serde_json::Value;
use time::macros::datetime;

use super::{Format, cef, ocsf, render};
use crate::{
    events::{Activity, Context, Event, SCHEMA_VERSION, StoredEvent},
    store::DecisionRecord,
};

fn decision(action: &str) -> DecisionRecord {
    DecisionRecord {
        action: action.into(),
        rule: "rule|one".into(),
        reason: "because=policy\nsecond line".into(),
    }
}

fn session_context() -> Context {
    Context {
        session_id: Some(7),
        agent: Some("agent-a".into()),
        pid: Some(4711),
        uid: Some(1000),
        gid: Some(1000),
        comm: Some("psql".into()),
        exe: Some("/usr/bin/psql".into()),
        cgroup: Some("/sluice/agent-a".into()),
        resource: Some("orders-db".into()),
        source: Some("127.0.0.1:40000".into()),
        destination: Some("[::1]:5432".into()),
        transport: Some("tcp".into()),
        protocol: Some("postgres".into()),
        identity: None,
    }
}

/// One event of every activity type, the daemon-wide ones without a context.
fn every_activity() -> Vec<StoredEvent> {
    let activities = vec![
        (
            true,
            Activity::SessionOpen {
                decision: decision("allow"),
            },
        ),
        (
            true,
            Activity::SessionOpen {
                decision: decision("deny"),
            },
        ),
        (
            true,
            Activity::SessionClose {
                reason: "client_closed".into(),
                bytes_up: 10,
                bytes_down: 20,
                duration_ms: 30,
            },
        ),
        (
            true,
            Activity::Statement {
                statement_seq: 1,
                sql: "SELECT * FROM t WHERE a = ?".into(),
                operation: "read".into(),
                kind: "SELECT".into(),
                tables: vec!["t".into()],
                parameters: vec![],
                details: Default::default(),
                decision: decision("allow"),
            },
        ),
        (
            true,
            Activity::StatementResult {
                statement_seq: 1,
                duration_us: Some(1500),
                rows: Some(2),
                tag: Some("SELECT 2".into()),
                error: None,
                masked: BTreeMap::from([("email".to_owned(), 2)]),
                nulled: 0,
            },
        ),
        (
            true,
            Activity::ApprovalRequested {
                approval_id: 3,
                statement_seq: 2,
                rule: "review-writes".into(),
                timeout_s: 60,
            },
        ),
        (
            true,
            Activity::ApprovalDecided {
                approval_id: 3,
                statement_seq: 2,
                outcome: "denied".into(),
                approver_uid: Some(0),
                approver_name: Some("root".into()),
                reason: None,
                waited_ms: 1200,
            },
        ),
        (
            false,
            Activity::Grant {
                grant_id: 1,
                change: "created".into(),
                agent: "agent-a".into(),
                resource: "orders-db".into(),
                operations: vec!["write".into()],
                expires_at: Some(datetime!(2026-01-01 01:00 UTC)),
                by_uid: Some(0),
                by_name: Some("root".into()),
                reason: Some("ticket 12".into()),
            },
        ),
        (
            false,
            Activity::PolicyReload {
                outcome: "rejected".into(),
                trigger: "sighup".into(),
                errors: vec!["a.toml:1:1: bad".into()],
                agents: 1,
                resources: 2,
                rules: 3,
            },
        ),
        (
            true,
            Activity::Dns {
                name: "example.org".into(),
                query_type: "A".into(),
                rcode: "NXDOMAIN".into(),
                answers: vec![],
            },
        ),
        (
            false,
            Activity::Identity {
                outcome: "refused".into(),
                agent: "deployer".into(),
                reason: "the token expired".into(),
                run: None,
            },
        ),
        (
            false,
            Activity::Daemon {
                change: "started".into(),
                version: "0.1.0".into(),
            },
        ),
        (
            false,
            Activity::Retention {
                first_dropped_seq: 1,
                last_dropped_seq: 9,
                last_dropped_hash: "ab".repeat(32),
                reason: "age".into(),
            },
        ),
    ];
    activities
        .into_iter()
        .enumerate()
        .map(|(index, (with_context, activity))| StoredEvent {
            seq: index as u64 + 1,
            prev_hash: "0".repeat(64),
            hash: format!("{index:064x}"),
            event: Event {
                version: SCHEMA_VERSION,
                time: datetime!(2026-01-02 03:04:05.678 UTC),
                host: "host-1".into(),
                context: if with_context {
                    session_context()
                } else {
                    Context::default()
                },
                activity,
            },
        })
        .collect()
}

fn integer(value: &Value, path: &str) -> i64 {
    value
        .pointer(path)
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("{path} is not an integer in {value:#}"))
}

fn object<'a>(value: &'a Value, path: &str) -> &'a serde_json::Map<String, Value> {
    value
        .pointer(path)
        .and_then(Value::as_object)
        .unwrap_or_else(|| panic!("{path} is not an object in {value:#}"))
}

fn string<'a>(value: &'a Value, path: &str) -> &'a str {
    value
        .pointer(path)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| panic!("{path} is not a non-empty string in {value:#}"))
}

/// The required attributes of each class (OCSF 1.8 schema files), by class uid.
fn class_required(class_uid: i64, event: &Value) {
    match class_uid {
        6005 => {
            object(event, "/actor");
            object(event, "/src_endpoint");
            // Present and a string; a result's SQL is in its statement's event.
            assert!(event["query_info"]["query_string"].is_string(), "{event:#}");
            integer(event, "/database/type_id");
        }
        4001 => {
            object(event, "/src_endpoint");
            object(event, "/dst_endpoint");
            integer(event, "/connection_info/direction_id");
        }
        4003 => {
            string(event, "/query/hostname");
            for answer in event["answers"].as_array().expect("answers") {
                string(answer, "/rdata");
            }
            integer(event, "/rcode_id");
        }
        3002 | 3003 => {
            object(event, "/user");
        }
        3005 => {
            object(event, "/user");
            assert!(event["privileges"].is_array(), "privileges: {event:#}");
        }
        6002 => {
            string(event, "/app/name");
            string(event, "/app/vendor_name");
        }
        1008 => {
            object(event, "/actor");
            integer(event, "/device/type_id");
        }
        other => panic!("unexpected class {other}"),
    }
}

#[test]
fn ocsf_events_carry_every_required_field_of_their_class() {
    let mut classes = std::collections::BTreeSet::new();
    for stored in every_activity() {
        let line = render(Format::Ocsf, &stored).expect("render");
        let event: Value = serde_json::from_str(&line).expect("OCSF is JSON");
        let class_uid = integer(&event, "/class_uid");
        let activity_id = integer(&event, "/activity_id");
        assert_eq!(
            class_uid,
            i64::from(ocsf::class_of(&stored.event.activity).uid)
        );
        assert_eq!(integer(&event, "/type_uid"), class_uid * 100 + activity_id);
        assert_eq!(integer(&event, "/category_uid"), class_uid / 1000);
        assert!(
            (1..=6).contains(&integer(&event, "/severity_id"))
                || integer(&event, "/severity_id") == 99
        );
        assert_eq!(integer(&event, "/time"), 1_767_323_045_678);
        assert_eq!(string(&event, "/metadata/version"), ocsf::SCHEMA_VERSION);
        string(&event, "/metadata/product/name");
        string(&event, "/metadata/product/vendor_name");
        string(&event, "/metadata/product/version");
        assert_eq!(integer(&event, "/metadata/sequence"), stored.seq as i64);
        // actor needs one of process, user, app_name...; endpoints one of ip, name, hostname...
        let actor = object(&event, "/actor");
        assert!(
            actor.contains_key("process")
                || actor.contains_key("user")
                || actor.contains_key("app_name")
        );
        for endpoint in ["/src_endpoint", "/dst_endpoint"] {
            let endpoint = object(&event, endpoint);
            assert!(
                endpoint.contains_key("ip")
                    || endpoint.contains_key("name")
                    || endpoint.contains_key("hostname")
            );
        }
        class_required(class_uid, &event);
        classes.insert(class_uid);
    }
    assert_eq!(
        classes.into_iter().collect::<Vec<_>>(),
        vec![1008, 3002, 3003, 3005, 4001, 4003, 6002, 6005]
    );
}

#[test]
fn ocsf_maps_a_session_and_a_statement_as_a_siem_expects() {
    let events = every_activity();
    let open: Value =
        serde_json::from_str(&render(Format::Ocsf, &events[0]).expect("render")).expect("json");
    assert_eq!(open["activity_id"], 1);
    assert_eq!(open["actor"]["process"]["pid"], 4711);
    assert_eq!(open["actor"]["process"]["file"]["path"], "/usr/bin/psql");
    assert_eq!(open["actor"]["user"]["uid"], "1000");
    assert_eq!(open["src_endpoint"]["ip"], "127.0.0.1");
    assert_eq!(open["dst_endpoint"]["ip"], "::1");
    assert_eq!(open["dst_endpoint"]["port"], 5432);
    let refused: Value =
        serde_json::from_str(&render(Format::Ocsf, &events[1]).expect("render")).expect("json");
    assert_eq!(refused["activity_id"], 5);
    assert_eq!(refused["disposition"], "Blocked");
    assert_eq!(refused["type_uid"], 400105);
    let statement: Value =
        serde_json::from_str(&render(Format::Ocsf, &events[3]).expect("render")).expect("json");
    assert_eq!(statement["type_uid"], 600504);
    assert_eq!(
        statement["query_info"]["query_string"],
        "SELECT * FROM t WHERE a = ?"
    );
    assert_eq!(statement["unmapped"]["tables"][0], "t");
}

#[test]
fn ecs_documents_have_the_core_fields() {
    for stored in every_activity() {
        let document: Value =
            serde_json::from_str(&render(Format::Ecs, &stored).expect("render")).expect("json");
        assert_eq!(document["@timestamp"], "2026-01-02T03:04:05.678Z");
        assert_eq!(document["ecs"]["version"], super::ecs::ECS_VERSION);
        assert_eq!(document["event"]["kind"], "event");
        assert!(
            document["event"]["category"]
                .as_array()
                .is_some_and(|c| !c.is_empty())
        );
        assert!(
            document["event"]["type"]
                .as_array()
                .is_some_and(|t| !t.is_empty())
        );
        assert_eq!(
            document["event"]["action"],
            stored.event.activity.type_name()
        );
        assert!(
            ["success", "failure", "unknown"]
                .contains(&document["event"]["outcome"].as_str().unwrap_or(""))
        );
        assert_eq!(document["host"]["hostname"], "host-1");
        if stored.event.context.pid.is_some() {
            assert_eq!(document["process"]["pid"], 4711);
            assert_eq!(document["process"]["executable"], "/usr/bin/psql");
            // The actor: the agent's uid, or the approver deciding its statement.
            let actor = if matches!(stored.event.activity, Activity::ApprovalDecided { .. }) {
                "0"
            } else {
                "1000"
            };
            assert_eq!(document["user"]["id"], actor);
            assert_eq!(document["source"]["ip"], "127.0.0.1");
            assert_eq!(document["destination"]["port"], 5432);
        }
    }
}

#[test]
fn cef_escapes_its_header_and_extensions() {
    assert_eq!(cef::header(r"a|b\c"), r"a\|b\\c");
    assert_eq!(
        cef::extension_value("a=b\\c\nd\re|f"),
        "a\\=b\\\\c\\nd\\re|f"
    );
    let events = every_activity();
    let line = render(Format::Cef, &events[1]).expect("render");
    assert!(!line.contains('\n'));
    let header: Vec<&str> = line.splitn(8, '|').collect();
    assert_eq!(header.len(), 8, "{line}");
    assert_eq!(
        &header[..4],
        ["CEF:0", "sluice", "sluice", super::PRODUCT_VERSION]
    );
    assert_eq!(header[4], "session_open");
    assert_eq!(header[5], "connection deny");
    assert_eq!(header[6], "6");
    assert!(header[7].contains(r"cs3=rule|one"), "{line}");
    assert!(
        header[7].contains(r"reason=because\=policy\nsecond line"),
        "{line}"
    );
    assert!(
        header[7].contains("src=127.0.0.1 spt=40000 dst=::1 dpt=5432"),
        "{line}"
    );
    for stored in &events {
        let line = render(Format::Cef, stored).expect("render");
        assert!(line.starts_with("CEF:0|sluice|sluice|"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }
}

#[test]
fn jsonl_is_the_stored_event_as_it_is() {
    for stored in every_activity() {
        let line = render(Format::Jsonl, &stored).expect("render");
        let parsed: StoredEvent = serde_json::from_str(&line).expect("parses back");
        assert_eq!(parsed, stored);
    }
}

/// An operation event of `protocol` with `details`, as its decoder would record it.
fn operation_event(protocol: &str, kind: &str, details: crate::pipeline::Details) -> StoredEvent {
    StoredEvent {
        seq: 9,
        prev_hash: "0".repeat(64),
        hash: "1".repeat(64),
        event: Event {
            version: SCHEMA_VERSION,
            time: datetime!(2026-01-02 03:04:05.678 UTC),
            host: "host-1".into(),
            context: Context {
                protocol: Some(protocol.into()),
                resource: Some("api".into()),
                ..session_context()
            },
            activity: Activity::Statement {
                statement_seq: 3,
                sql: format!("{kind} ?"),
                operation: "read".into(),
                kind: kind.into(),
                tables: vec![],
                parameters: vec![],
                decision: decision("allow"),
                details,
            },
        },
    }
}

fn ocsf_of(stored: &StoredEvent) -> Value {
    serde_json::from_str(&render(Format::Ocsf, stored).expect("render")).expect("OCSF is JSON")
}

#[test]
fn operations_map_to_the_ocsf_class_of_their_protocol_with_its_required_fields() {
    use crate::pipeline::Details;

    let sql = ocsf_of(&operation_event(
        "mysql",
        "SELECT",
        Details::Sql {
            tables_read: vec!["t".into()],
            tables_written: vec![],
            database: None,
        },
    ));
    assert_eq!(integer(&sql, "/class_uid"), 6005);
    assert_eq!(integer(&sql, "/activity_id"), 4);
    string(&sql, "/query_info/query_string");
    string(&sql, "/database/type");

    let http = ocsf_of(&operation_event(
        "http",
        "GET",
        Details::Http {
            method: "GET".into(),
            host: "api.internal".into(),
            path: "/v1/users".into(),
            query_keys: vec!["page".into()],
            status: Some(200),
        },
    ));
    assert_eq!(integer(&http, "/class_uid"), 4002);
    assert_eq!(integer(&http, "/category_uid"), 4);
    assert_eq!(integer(&http, "/activity_id"), 3);
    assert_eq!(integer(&http, "/type_uid"), 400_203);
    assert_eq!(string(&http, "/http_request/http_method"), "GET");
    assert_eq!(string(&http, "/http_request/url/path"), "/v1/users");
    assert_eq!(string(&http, "/http_request/url/hostname"), "api.internal");
    assert_eq!(integer(&http, "/http_response/code"), 200);
    assert!(http.pointer("/dst_endpoint").is_some());
    assert!(http.pointer("/query_info").is_none(), "{http}");
    assert_eq!(string(&http, "/action"), "Allowed");

    let kubernetes = ocsf_of(&operation_event(
        "kubernetes",
        "delete pods",
        Details::Kubernetes {
            verb: "delete".into(),
            group: String::new(),
            resource: "pods".into(),
            subresource: None,
            namespace: Some("prod".into()),
            name: Some("web-1".into()),
        },
    ));
    assert_eq!(integer(&kubernetes, "/class_uid"), 6003);
    assert_eq!(integer(&kubernetes, "/activity_id"), 4);
    assert_eq!(string(&kubernetes, "/api/operation"), "delete");
    string(&kubernetes, "/api/service/name");
    assert!(kubernetes.pointer("/actor").is_some());
    assert!(kubernetes.pointer("/src_endpoint").is_some());
    assert_eq!(string(&kubernetes, "/resources/0/type"), "pods");
    assert_eq!(string(&kubernetes, "/resources/0/name"), "web-1");

    let ssh = ocsf_of(&operation_event(
        "ssh",
        "exec",
        Details::Ssh {
            request: "exec".into(),
            command: Some("uptime".into()),
            forward: None,
        },
    ));
    assert_eq!(integer(&ssh, "/class_uid"), 4007);
    assert_eq!(integer(&ssh, "/category_uid"), 4);
    assert_eq!(integer(&ssh, "/type_uid"), 400_706);
    assert!(ssh.pointer("/src_endpoint").is_some() && ssh.pointer("/dst_endpoint").is_some());
    assert_eq!(string(&ssh, "/unmapped/ssh/command"), "uptime");
}
