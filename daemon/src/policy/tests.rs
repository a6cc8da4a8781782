use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use super::*;

fn policy(text: &str) -> Policy {
    match Policy::from_sources(&[(PathBuf::from("test.toml"), text.to_owned())]) {
        Ok(policy) => policy,
        Err(errors) => panic!("policy should load:\n{errors}"),
    }
}

/// The diagnostics of a policy that must not load, as `line:col: message`.
fn errors_of(sources: &[(&str, &str)]) -> Vec<String> {
    let sources: Vec<(PathBuf, String)> = sources
        .iter()
        .map(|(path, text)| (PathBuf::from(path), (*text).to_owned()))
        .collect();
    match Policy::from_sources(&sources) {
        Ok(_) => panic!("policy should not load"),
        Err(PolicyErrors(diagnostics)) => diagnostics.iter().map(ToString::to_string).collect(),
    }
}

fn errors(text: &str) -> Vec<String> {
    errors_of(&[("test.toml", text)])
}

fn assert_one_error(text: &str, location: &str, needle: &str) {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let expected_prefix = format!("test.toml:{location}: ");
    assert!(
        errors[0].starts_with(&expected_prefix) && errors[0].contains(needle),
        "expected `{expected_prefix}...{needle}...`, got {errors:#?}"
    );
}

fn facts(agent: &str) -> AgentFacts<'_> {
    AgentFacts {
        agent,
        uid: 1000,
        exe: None,
        workload: None,
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test socket address")
}

fn policies_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

// --- the shipped policies -------------------------------------------------------------

#[test]
fn every_shipped_policy_directory_loads() {
    for dir in [policies_dir(), policies_dir().join("examples")] {
        let policy = match Policy::load_dir(&dir, &SupportedProtocols::all()) {
            Ok(policy) => policy,
            Err(errors) => panic!("{} should load:\n{errors}", dir.display()),
        };
        assert!(policy.counts().rules > 0, "{} has rules", dir.display());
        assert!(check_dir(&dir, &SupportedProtocols::all()).is_empty());
    }
}

#[test]
fn every_example_file_loads_on_its_own() {
    let dir = policies_dir().join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        if path
            .extension()
            .is_some_and(|extension| extension == "toml")
        {
            let text = std::fs::read_to_string(&path).expect("example text");
            if let Err(errors) = Policy::from_sources(&[(path.clone(), text)]) {
                panic!("{} should load:\n{errors}", path.display());
            }
            seen += 1;
        }
    }
    assert!(seen >= 3, "only {seen} example files");
}

#[test]
fn default_policy_lets_demo_reach_its_two_services_and_nothing_else() {
    let policy =
        Policy::load_dir(&policies_dir(), &SupportedProtocols::all()).expect("default policy");
    let demo = facts("demo");

    let postgres = policy.decide_connection(&demo, addr("127.0.0.1:5432"));
    assert_eq!(postgres.action, Action::Allow, "{}", postgres.reason);
    assert_eq!(postgres.resource.as_deref(), Some("local-postgres"));
    let http = policy.decide_connection(&demo, addr("127.0.0.2:8080"));
    assert_eq!(http.action, Action::Allow, "{}", http.reason);
    assert_eq!(
        policy
            .resource_for(addr("127.0.0.1:5432"))
            .map(|r| r.protocol),
        Some(Protocol::Postgres)
    );

    assert_eq!(
        policy
            .decide(&demo, Some("local-postgres"), Operation::Read)
            .action,
        Action::Allow
    );
    assert_eq!(
        policy
            .decide(&demo, Some("local-postgres"), Operation::Dangerous)
            .action,
        Action::Deny
    );
    let elsewhere = policy.decide_connection(&demo, addr("127.0.0.3:443"));
    assert_eq!(elsewhere.action, Action::Deny);
    assert_eq!(elsewhere.rule, DEFAULT_DENY_RULE);
    let stranger = policy.decide_connection(&facts("other"), addr("127.0.0.1:5432"));
    assert_eq!(stranger.action, Action::Deny);
}

#[test]
fn examples_keep_the_writer_away_from_ddl_and_let_analytics_only_read() {
    let policy = Policy::load_dir(&policies_dir().join("examples"), &SupportedProtocols::all())
        .expect("examples");
    let worker = facts("orders-worker");
    let orders = Some("orders-db");
    assert_eq!(
        policy.decide(&worker, orders, Operation::Write).action,
        Action::Allow
    );
    for operation in [Operation::Ddl, Operation::Dangerous] {
        let decision = policy.decide(&worker, orders, operation);
        assert_eq!(decision.action, Action::Deny);
        assert_eq!(decision.rule, "orders-worker-never-drops");
    }
    assert_eq!(
        policy.decide(&worker, orders, Operation::Admin).action,
        Action::Review
    );

    let analyst = AgentFacts {
        agent: "analytics",
        uid: 1001,
        exe: Some(Path::new("/usr/bin/psql")),
        workload: None,
    };
    let connect = policy.decide_connection(&analyst, addr("[fd00:20::7]:6432"));
    assert_eq!(connect.action, Action::Allow, "{}", connect.reason);
    assert_eq!(connect.rule, "analytics-reads-warehouse");
    assert_eq!(
        policy
            .decide(&analyst, Some("warehouse"), Operation::Write)
            .action,
        Action::Deny
    );
}

// --- decisions ------------------------------------------------------------------------

const DB_AND_AGENTS: &str = r#"
[[agent]]
name = "ci-bot"

[[agent]]
name = "restricted"
uids = [1000]
exe = ["/usr/bin/psql"]

[[resource]]
name = "db"
addresses = ["10.0.0.0/8", "fd00::/8"]
ports = [5432]
protocol = "postgres"
"#;

fn with_rules(rules: &str) -> Policy {
    policy(&format!("{DB_AND_AGENTS}\n{rules}"))
}

#[test]
fn no_matching_rule_is_a_default_deny_with_a_reason() {
    let policy = with_rules("");
    let decision = policy.decide_connection(&facts("ci-bot"), addr("10.1.2.3:5432"));
    assert_eq!(decision.action, Action::Deny);
    assert_eq!(decision.rule, "default-deny");
    assert_eq!(decision.resource.as_deref(), Some("db"));
    assert!(decision.reason.contains("ci-bot"), "{}", decision.reason);
    assert!(
        decision.reason.contains("10.1.2.3:5432"),
        "{}",
        decision.reason
    );
    let empty = Policy::default();
    assert_eq!(
        empty
            .decide(&facts("ci-bot"), None, Operation::Connect)
            .action,
        Action::Deny
    );
}

#[test]
fn a_named_agent_beats_the_wildcard() {
    let policy = with_rules(
        r#"
[[rule]]
name = "nobody-writes"
agent = "*"
resource = "db"
operations = ["write"]
action = "deny"

[[rule]]
name = "ci-bot-writes"
agent = "ci-bot"
resource = "db"
operations = ["write"]
action = "allow"
"#,
    );
    let ci_bot = policy.decide(&facts("ci-bot"), Some("db"), Operation::Write);
    assert_eq!(
        (ci_bot.action, ci_bot.rule.as_str()),
        (Action::Allow, "ci-bot-writes")
    );
    assert!(ci_bot.reason.contains("ci-bot-writes"), "{}", ci_bot.reason);
    let other = policy.decide(&facts("someone"), Some("db"), Operation::Write);
    assert_eq!(
        (other.action, other.rule.as_str()),
        (Action::Deny, "nobody-writes")
    );
}

#[test]
fn a_named_resource_beats_the_wildcard_and_an_explicit_operation_beats_star() {
    let policy = with_rules(
        r#"
[[rule]]
name = "ci-bot-anything-anywhere"
agent = "ci-bot"
resource = "*"
operations = ["*"]
action = "allow"

[[rule]]
name = "ci-bot-db-review"
agent = "ci-bot"
resource = "db"
operations = ["*"]
action = "review"

[[rule]]
name = "ci-bot-db-no-ddl"
agent = "ci-bot"
resource = "db"
operations = ["ddl"]
action = "deny"
"#,
    );
    let bot = facts("ci-bot");
    assert_eq!(
        policy.decide(&bot, None, Operation::Write).rule,
        "ci-bot-anything-anywhere"
    );
    let write = policy.decide(&bot, Some("db"), Operation::Write);
    assert_eq!(
        (write.action, write.rule.as_str()),
        (Action::Review, "ci-bot-db-review")
    );
    let ddl = policy.decide(&bot, Some("db"), Operation::Ddl);
    assert_eq!(
        (ddl.action, ddl.rule.as_str()),
        (Action::Deny, "ci-bot-db-no-ddl")
    );
    // "*" as the resource also covers destinations that are no resource.
    let elsewhere = policy.decide_connection(&bot, addr("192.0.2.1:443"));
    assert_eq!(elsewhere.action, Action::Allow);
    assert_eq!(elsewhere.resource, None);
}

#[test]
fn at_equal_specificity_deny_beats_review_beats_allow() {
    // The loader refuses such ties (see `conflicting_rules_are_reported_at_the_later_rule`);
    // the decision code still settles them safely whatever order they come in.
    let base = with_rules("");
    let rule = |name: &str, action: Action| Rule {
        mask: None,
        when: None,
        ssh: None,
        timeout: None,
        http: None,
        kubernetes: None,
        name: name.to_owned(),
        agent: Selector::Named("ci-bot".to_owned()),
        resource: Selector::Named("db".to_owned()),
        operations: OperationSet {
            wildcard: false,
            classes: vec![Operation::Read],
        },
        action,
        location: Location {
            file: PathBuf::from("test.toml"),
            line: 1,
            column: 1,
        },
    };
    let tied = |rules: Vec<Rule>| Policy {
        agents: base.agents.clone(),
        resources: base.resources.clone(),
        rules,
        masks: Default::default(),
    };
    let bot = facts("ci-bot");
    for order in [
        vec![
            rule("a", Action::Allow),
            rule("r", Action::Review),
            rule("d", Action::Deny),
        ],
        vec![
            rule("d", Action::Deny),
            rule("r", Action::Review),
            rule("a", Action::Allow),
        ],
    ] {
        let decision = tied(order).decide(&bot, Some("db"), Operation::Read);
        assert_eq!(
            (decision.action, decision.rule.as_str()),
            (Action::Deny, "d")
        );
    }
    let decision = tied(vec![rule("a", Action::Allow), rule("r", Action::Review)]).decide(
        &bot,
        Some("db"),
        Operation::Read,
    );
    assert_eq!(decision.action, Action::Review);
}

#[test]
fn cidrs_match_their_own_address_family_only() {
    let policy = policy(
        r#"
[[resource]]
name = "v4-net"
addresses = ["10.0.0.0/8"]
ports = [5432]

[[resource]]
name = "v6-loopback"
addresses = ["::1"]
ports = [5432]

[[resource]]
name = "v6-everything"
addresses = ["::/0"]
ports = [80]
"#,
    );
    let name_of = |destination: &str| {
        policy
            .resource_for(addr(destination))
            .map(|resource| resource.name.clone())
    };
    assert_eq!(name_of("10.255.0.1:5432").as_deref(), Some("v4-net"));
    assert_eq!(name_of("11.0.0.1:5432"), None);
    assert_eq!(name_of("10.0.0.1:5433"), None);
    assert_eq!(name_of("[::1]:5432").as_deref(), Some("v6-loopback"));
    assert_eq!(
        name_of("[2001:db8::1]:80").as_deref(),
        Some("v6-everything")
    );
    // IPv4 destinations never match IPv6 networks, not even ::/0 ...
    assert_eq!(name_of("127.0.0.1:5432"), None);
    assert_eq!(name_of("192.0.2.1:80"), None);
    // ... and an IPv4-mapped IPv6 destination is the IPv4 address it reaches.
    assert_eq!(name_of("[::ffff:10.1.2.3]:5432").as_deref(), Some("v4-net"));
    assert_eq!(name_of("[::ffff:192.0.2.1]:80"), None);
}

#[test]
fn the_most_specific_resource_wins_and_ties_go_to_the_first() {
    let policy = policy(
        r#"
[[resource]]
name = "network"
addresses = ["10.0.0.0/8"]
ports = ["1-65535"]

[[resource]]
name = "host-any-port"
addresses = ["10.0.0.5"]
ports = ["1-65535"]

[[resource]]
name = "host-web-range"
addresses = ["10.0.0.5"]
ports = ["8000-8080"]

[[resource]]
name = "host-one-port"
addresses = ["10.0.0.5"]
ports = ["8080"]

[[resource]]
name = "host-one-port-again"
addresses = ["10.0.0.5"]
ports = [8080]
"#,
    );
    let name_of = |destination: &str| {
        policy
            .resource_for(addr(destination))
            .map(|resource| resource.name.as_str())
    };
    assert_eq!(name_of("10.9.9.9:22"), Some("network"));
    assert_eq!(name_of("10.0.0.5:22"), Some("host-any-port"));
    assert_eq!(name_of("10.0.0.5:8000"), Some("host-web-range"));
    assert_eq!(name_of("10.0.0.5:8081"), Some("host-any-port"));
    assert_eq!(name_of("10.0.0.5:8080"), Some("host-one-port"));
}

#[test]
fn port_ranges_are_inclusive() {
    let policy = policy(
        r#"
[[agent]]
name = "web"

[[resource]]
name = "apis"
addresses = ["127.0.0.0/8"]
ports = ["8000-8080", 9000]

[[rule]]
agent = "web"
resource = "apis"
operations = ["connect"]
action = "allow"
"#,
    );
    let web = facts("web");
    for (port, expected) in [
        (7999, Action::Deny),
        (8000, Action::Allow),
        (8080, Action::Allow),
        (8081, Action::Deny),
        (9000, Action::Allow),
    ] {
        let destination = SocketAddr::from(([127, 0, 0, 9], port));
        assert_eq!(
            policy.decide_connection(&web, destination).action,
            expected,
            "port {port}"
        );
    }
}

#[test]
fn uid_and_exe_constraints_decide_who_is_the_agent() {
    let policy = with_rules(
        r#"
[[rule]]
name = "restricted-reads"
agent = "restricted"
resource = "db"
operations = ["read"]
action = "allow"

[[rule]]
name = "anyone-reviewed"
agent = "*"
resource = "db"
operations = ["read"]
action = "review"
"#,
    );
    let psql = Path::new("/usr/bin/psql");
    let genuine = AgentFacts {
        agent: "restricted",
        uid: 1000,
        exe: Some(psql),
        workload: None,
    };
    assert_eq!(
        policy.decide(&genuine, Some("db"), Operation::Read).rule,
        "restricted-reads"
    );
    let wrong_uid = AgentFacts { uid: 0, ..genuine };
    let wrong_exe = AgentFacts {
        exe: Some(Path::new("/usr/bin/curl")),
        workload: None,
        ..genuine
    };
    let unknown_exe = AgentFacts {
        exe: None,
        workload: None,
        ..genuine
    };
    for impostor in [wrong_uid, wrong_exe, unknown_exe] {
        let decision = policy.decide(&impostor, Some("db"), Operation::Read);
        assert_eq!(
            (decision.action, decision.rule.as_str()),
            (Action::Review, "anyone-reviewed"),
            "{impostor:?}"
        );
        assert!(
            decision.reason.contains("constraints"),
            "{}",
            decision.reason
        );
    }
}

#[test]
fn connect_is_implied_by_allow_or_review_rules_on_the_resource() {
    let policy = with_rules(
        r#"
[[rule]]
name = "ci-bot-reads"
agent = "ci-bot"
resource = "db"
operations = ["read"]
action = "allow"

[[rule]]
name = "restricted-writes-reviewed"
agent = "restricted"
resource = "db"
operations = ["write"]
action = "review"

[[rule]]
name = "nobody-drops"
agent = "*"
resource = "db"
operations = ["dangerous"]
action = "deny"
"#,
    );
    let destination = addr("10.0.0.1:5432");
    let ci_bot = policy.decide_connection(&facts("ci-bot"), destination);
    assert_eq!(
        (ci_bot.action, ci_bot.rule.as_str()),
        (Action::Allow, "ci-bot-reads")
    );
    assert!(
        ci_bot.reason.contains("implies connect"),
        "{}",
        ci_bot.reason
    );
    let restricted = AgentFacts {
        agent: "restricted",
        uid: 1000,
        exe: Some(Path::new("/usr/bin/psql")),
        workload: None,
    };
    let reviewed = policy.decide_connection(&restricted, destination);
    assert_eq!(
        (reviewed.action, reviewed.rule.as_str()),
        (Action::Allow, "restricted-writes-reviewed")
    );
    // A deny rule implies nothing.
    let other = policy.decide_connection(&facts("other"), destination);
    assert_eq!(
        (other.action, other.rule.as_str()),
        (Action::Deny, "default-deny")
    );
    // Implied connect is per resource.
    let elsewhere = policy.decide_connection(&facts("ci-bot"), addr("192.0.2.1:5432"));
    assert_eq!(elsewhere.action, Action::Deny);
}

#[test]
fn rules_that_mention_connect_outrank_implied_connect() {
    let policy = with_rules(
        r#"
[[rule]]
name = "ci-bot-reads"
agent = "ci-bot"
resource = "db"
operations = ["read"]
action = "allow"

[[rule]]
name = "ci-bot-may-not-connect"
agent = "ci-bot"
resource = "db"
operations = ["connect"]
action = "deny"

[[rule]]
name = "nobody-anywhere"
agent = "*"
resource = "*"
operations = ["*"]
action = "deny"

[[rule]]
name = "restricted-reads"
agent = "restricted"
resource = "db"
operations = ["read"]
action = "allow"
"#,
    );
    let destination = addr("10.0.0.1:5432");
    let ci_bot = policy.decide_connection(&facts("ci-bot"), destination);
    assert_eq!(
        (ci_bot.action, ci_bot.rule.as_str()),
        (Action::Deny, "ci-bot-may-not-connect")
    );
    // A broader catch-all deny is less specific than the agent's own rule on the resource.
    let restricted = AgentFacts {
        agent: "restricted",
        uid: 1000,
        exe: Some(Path::new("/usr/bin/psql")),
        workload: None,
    };
    let allowed = policy.decide_connection(&restricted, destination);
    assert_eq!(
        (allowed.action, allowed.rule.as_str()),
        (Action::Allow, "restricted-reads")
    );
    let stranger = policy.decide_connection(&facts("stranger"), destination);
    assert_eq!(
        (stranger.action, stranger.rule.as_str()),
        (Action::Deny, "nobody-anywhere")
    );
}

#[test]
fn rules_without_a_name_are_named_after_their_file_and_line() {
    let policy = with_rules(
        r#"
[[rule]]
agent = "ci-bot"
resource = "db"
action = "allow"
"#,
    );
    let rule = &policy.rules()[0];
    assert_eq!(rule.name, "test.toml:17");
    assert!(rule.operations.wildcard, "operations default to *");
    assert_eq!(
        policy
            .decide(&facts("ci-bot"), Some("db"), Operation::Admin)
            .rule,
        "test.toml:17"
    );
    assert_eq!(
        policy.counts(),
        PolicyCounts {
            agents: 2,
            resources: 1,
            rules: 1
        }
    );
}

#[test]
fn decisions_become_session_record_decisions() {
    let decision = with_rules("").decide(&facts("x"), None, Operation::Read);
    let record = decision.record();
    assert_eq!(record.action, "deny");
    assert_eq!(record.rule, "default-deny");
    assert_eq!(record.reason, decision.reason);
    let json = serde_json::to_value(&decision).expect("json");
    assert_eq!(json["action"], "deny");
}

// --- diagnostics ----------------------------------------------------------------------

#[test]
fn toml_syntax_errors_point_at_the_character() {
    assert_one_error(
        "[[agent]]\nname = \"a\"\n[[rule]\n",
        "3:8",
        "unclosed array table",
    );
    assert_one_error("[[agent]]\nname = \"a\n", "2:10", "invalid basic string");
}

#[test]
fn unknown_keys_are_errors_with_their_position() {
    assert_one_error(
        "[[agent]]\nname = \"a\"\nuid = [1]\n",
        "3:1",
        "unknown field `uid`",
    );
    assert_one_error(
        "[[agents]]\nname = \"a\"\n",
        "1:3",
        "unknown field `agents`",
    );
    assert_one_error(
        "[[resource]]\nname = \"r\"\naddresses = [\"::1\"]\nports = [1]\n  hostname = \"db\"\n",
        "5:3",
        "unknown field `hostname`",
    );
}

#[test]
fn missing_keys_and_wrong_types_are_errors() {
    assert_one_error(
        "[[agent]]\nname = \"a\"\n\n[[rule]]\nagent = \"a\"\nresource = \"*\"\n",
        "4:1",
        "missing field `action`",
    );
    assert_one_error(
        "[[rule]]\nagent = \"*\"\nresource = \"*\"\naction = \"permit\"\n",
        "4:10",
        "unknown variant `permit`",
    );
    assert_one_error(
        "[[resource]]\nname = \"r\"\naddresses = [\"::1\"]\nports = [1]\nprotocol = \"redis\"\n",
        "5:12",
        "unknown variant `redis`",
    );
    assert_one_error(
        "[[agent]]\nname = \"a\"\nuids = [-1]\n",
        "3:9",
        "integer `-1`, expected u32",
    );
}

#[test]
fn invalid_values_are_all_reported_at_their_position() {
    let text = r#"[[resource]]
name = "r"
addresses = ["10.0.0.0/33", "db.internal", "10.1.0.0/8", "::1"]
ports = [0, 70000, "9-1", "http", true, 22]
"#;
    let errors = errors(text);
    let expected = [
        ("3:14", "`10.0.0.0/33` is not an IP address or CIDR"),
        ("3:29", "`db.internal` is not an IP address or CIDR"),
        ("3:44", "did you mean 10.0.0.0/8?"),
        ("4:10", "port 0 is out of range"),
        ("4:13", "port 70000 is out of range"),
        ("4:20", "is backwards"),
        ("4:27", "`http` is not a port number"),
        ("4:35", "not a boolean"),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, (location, needle)) in errors.iter().zip(expected) {
        assert!(
            error.starts_with(&format!("test.toml:{location}: ")) && error.contains(needle),
            "expected {location} {needle}, got {error}"
        );
    }
}

#[test]
fn empty_lists_are_errors() {
    assert_one_error(
        "[[resource]]\nname = \"r\"\naddresses = []\nports = [1]\n",
        "3:13",
        "`addresses` must list at least one",
    );
    assert_one_error(
        "[[resource]]\nname = \"r\"\naddresses = [\"::1\"]\nports = []\n",
        "4:9",
        "`ports` must list at least one",
    );
    assert_one_error(
        "[[agent]]\nname = \"a\"\nuids = []\n",
        "3:8",
        "`uids` must not be empty",
    );
    assert_one_error(
        "[[rule]]\nagent = \"*\"\nresource = \"*\"\noperations = []\naction = \"deny\"\n",
        "4:14",
        "`operations` must not be empty",
    );
}

#[test]
fn bad_names_exes_and_operations_are_errors() {
    assert_one_error(
        "[[agent]]\nname = \"a\"\nexe = [\"psql\"]\n",
        "3:8",
        "must be an absolute path",
    );
    assert_one_error("[[agent]]\nname = \"../x\"\n", "2:8", "invalid agent name");
    assert_one_error(
        "[[resource]]\nname = \"*\"\naddresses = [\"::1\"]\nports = [1]\n",
        "2:8",
        "invalid resource name `*`",
    );
    assert_one_error(
        "[[rule]]\nname = \"default-deny\"\nagent = \"*\"\nresource = \"*\"\naction = \"deny\"\n",
        "2:8",
        "reserved",
    );
    assert_one_error(
        "[[rule]]\nagent = \"*\"\nresource = \"*\"\noperations = [\"read\", \"select\"]\naction = \"allow\"\n",
        "4:23",
        "unknown operation class `select`",
    );
}

#[test]
fn duplicate_names_are_reported_where_they_repeat() {
    let agent = "[[agent]]\nname = \"bot\"\n";
    assert_eq!(
        errors_of(&[("a.toml", agent), ("b.toml", &format!("\n{agent}"))]),
        ["b.toml:3:8: duplicate agent name `bot` (first defined at a.toml:2:8)"]
    );

    let resource = "[[resource]]\nname = \"db\"\naddresses = [\"::1\"]\nports = [1]\n";
    assert_eq!(
        errors(&format!("{resource}{resource}")),
        ["test.toml:6:8: duplicate resource name `db` (first defined at test.toml:2:8)"]
    );

    let rule = "[[rule]]\nname = \"r\"\nagent = \"*\"\nresource = \"*\"\naction = \"deny\"\n";
    assert_eq!(
        errors(&format!("{rule}{rule}")),
        ["test.toml:7:8: duplicate rule name `r` (first defined at test.toml:2:8)"]
    );
}

#[test]
fn undefined_references_are_reported_at_the_reference() {
    let errors =
        errors("[[rule]]\nagent = \"ghost\"\nresource = \"nowhere\"\naction = \"allow\"\n");
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].starts_with("test.toml:2:9: rule refers to undefined agent `ghost`"));
    assert!(errors[1].starts_with("test.toml:3:12: rule refers to undefined resource `nowhere`"));

    // Definitions in another file count.
    let defined = "[[agent]]\nname = \"ghost\"\n";
    let rule = "[[rule]]\nagent = \"ghost\"\nresource = \"*\"\naction = \"allow\"\n";
    let sources = [
        (PathBuf::from("b.toml"), rule.to_owned()),
        (PathBuf::from("a.toml"), defined.to_owned()),
    ];
    assert!(Policy::from_sources(&sources).is_ok());

    // When a file does not parse, its definitions are unknown: no guessing.
    let errors = errors_of(&[("a.toml", "[[agent]\n"), ("b.toml", rule)]);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].starts_with("a.toml:1:9: "), "{errors:#?}");
}

#[test]
fn conflicting_rules_are_reported_at_the_later_rule() {
    let rules = r#"
[[rule]]
name = "reads-ok"
agent = "ci-bot"
resource = "db"
operations = ["read", "write"]
action = "allow"

[[rule]]
name = "no-writes"
agent = "ci-bot"
resource = "db"
operations = ["write", "ddl"]
action = "deny"

[[rule]]
name = "ddl-reviewed"
agent = "ci-bot"
resource = "db"
operations = ["*"]
action = "review"
"#;
    let text = format!("{DB_AND_AGENTS}{rules}");
    let found = errors(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    let error = &found[0];
    assert!(
        error.starts_with("test.toml:23:1: rule `no-writes` conflicts"),
        "{error}"
    );
    assert!(
        error.contains("rule `reads-ok` (test.toml:16:1)"),
        "{error}"
    );
    assert!(error.contains("operations write"), "{error}");

    // Different specificity (explicit vs "*", named vs "*") is no conflict.
    let fine = text.replace("[\"write\", \"ddl\"]", "[\"ddl\"]");
    assert!(Policy::from_sources(&[(PathBuf::from("t.toml"), fine)]).is_ok());
    // Two "*" lists with different actions are.
    let found = errors(&format!(
        "{DB_AND_AGENTS}{}",
        r#"
[[rule]]
agent = "*"
resource = "*"
action = "allow"

[[rule]]
agent = "*"
resource = "*"
operations = ["*"]
action = "deny"
"#
    ));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("test.toml:21:1: rule `test.toml:21` conflicts"),
        "{found:#?}"
    );
    assert!(
        found[0].contains("rule `test.toml:16` (test.toml:16:1)"),
        "{found:#?}"
    );
}

// --- directories ----------------------------------------------------------------------

#[test]
fn a_directory_loads_its_toml_files_in_name_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("20-rules.toml"),
        "[[rule]]\nagent = \"bot\"\nresource = \"*\"\naction = \"allow\"\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("10-agents.toml"),
        "[[agent]]\nname = \"bot\"\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not toml [[").expect("write");
    std::fs::write(dir.path().join(".hidden.toml"), "not toml [[").expect("write");
    std::fs::create_dir(dir.path().join("nested.toml")).expect("mkdir");

    let policy = Policy::load_dir(dir.path(), &SupportedProtocols::all()).expect("loads");
    assert_eq!(
        policy.counts(),
        PolicyCounts {
            agents: 1,
            resources: 0,
            rules: 1
        }
    );
    assert_eq!(policy.rules()[0].name, "20-rules.toml:1");
    assert_eq!(
        policy.rules()[0].location.file,
        dir.path().join("20-rules.toml")
    );

    std::fs::write(dir.path().join("30-bad.toml"), "[[agent]]\nname = 3\n").expect("write");
    let diagnostics = check_dir(dir.path(), &SupportedProtocols::all());
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!(diagnostics[0].file, dir.path().join("30-bad.toml"));
    assert_eq!((diagnostics[0].line, diagnostics[0].column), (2, 8));
}

#[test]
fn an_empty_directory_denies_everything_but_a_missing_one_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy =
        Policy::load_dir(dir.path(), &SupportedProtocols::all()).expect("empty dir is a policy");
    assert_eq!(policy.counts(), PolicyCounts::default());
    assert_eq!(
        policy
            .decide_connection(&facts("any"), addr("127.0.0.1:80"))
            .action,
        Action::Deny
    );

    let missing = dir.path().join("missing");
    let diagnostics = check_dir(&missing, &SupportedProtocols::all());
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].line, 0);
    let shown = diagnostics[0].to_string();
    assert!(
        shown.starts_with(&format!(
            "{}: cannot read policy directory",
            missing.display()
        )),
        "{shown}"
    );
}

#[test]
fn a_review_rule_carries_its_timeout_into_the_decision() {
    let policy = with_rules(
        "[[rule]]\nname = \"writes-need-review\"\nagent = \"ci-bot\"\nresource = \"db\"\n\
         operations = [\"write\"]\naction = \"review\"\ntimeout = \"90s\"\n",
    );
    let decision = policy.decide(&facts("ci-bot"), Some("db"), Operation::Write);
    assert_eq!(decision.action, Action::Review);
    assert_eq!(decision.timeout, Some(std::time::Duration::from_secs(90)));
}

#[test]
fn a_timeout_is_refused_outside_review_rules_and_when_malformed() {
    let rule = |action: &str, timeout: &str| {
        format!(
            "{DB_AND_AGENTS}\n[[rule]]\nagent = \"ci-bot\"\nresource = \"db\"\naction = \"{action}\"\ntimeout = \"{timeout}\"\n"
        )
    };
    let errors = errors(&rule("allow", "90s"));
    assert!(
        errors.len() == 1 && errors[0].contains("only to rules with action = \"review\""),
        "{errors:#?}"
    );
    let errors = super::tests::errors(&rule("review", "soon"));
    assert!(
        errors.len() == 1 && errors[0].contains("invalid duration"),
        "{errors:#?}"
    );
}

#[test]
fn default_policy_lets_demo_resolve_names_and_no_one_else() {
    let policy =
        Policy::load_dir(&policies_dir(), &SupportedProtocols::all()).expect("default policy");
    let dns = policy
        .resource_for(addr("10.9.8.7:53"))
        .map(|r| r.name.as_str());
    assert_eq!(dns, Some("dns"));
    let demo = policy.decide(&facts("demo"), dns, Operation::Read);
    assert_eq!(demo.action, Action::Allow, "{}", demo.reason);
    let stranger = policy.decide(&facts("other"), dns, Operation::Read);
    assert_eq!(stranger.action, Action::Deny);
}

const HOST_NAMED: &str = r#"
[[resource]]
name = "exact"
hostnames = ["DB.internal."]
ports = [5432]

[[resource]]
name = "wide"
hostnames = ["*.internal"]
ports = ["1-65535"]

[[resource]]
name = "by-address"
addresses = ["10.0.0.0/8"]
ports = [5432]
"#;

#[test]
fn host_name_resources_match_only_through_names_and_prefer_the_exact_name() {
    let policy = policy(HOST_NAMED);
    let destination = addr("10.1.2.3:5432");
    let names = |list: &[&str]| list.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    // Without names, only the address resource can match.
    assert_eq!(
        policy.resource_for(destination).map(|r| r.name.as_str()),
        Some("by-address")
    );
    assert!(policy.resource_for_host_names(destination, &[]).is_none());
    let by_name = |list: &[&str]| {
        policy
            .resource_for_host_names(destination, &names(list))
            .map(|r| r.name.clone())
    };
    assert_eq!(by_name(&["db.internal"]).as_deref(), Some("exact"));
    assert_eq!(by_name(&["x.db.internal"]).as_deref(), Some("wide"));
    assert_eq!(
        by_name(&["x.db.internal", "db.internal"]).as_deref(),
        Some("exact")
    );
    // A wildcard does not match its own suffix, nor a name merely ending like it.
    assert_eq!(by_name(&["internal"]), None);
    assert_eq!(by_name(&["notinternal"]), None);
    assert_eq!(by_name(&["db.example"]), None);
    // The port still has to match.
    assert_eq!(
        policy
            .resource_for_host_names(addr("10.1.2.3:80"), &names(&["db.internal"]))
            .map(|r| r.name.as_str()),
        Some("wide")
    );
}

#[test]
fn host_names_are_checked_and_a_resource_needs_addresses_or_host_names() {
    assert_one_error(
        "[[resource]]\nname = \"r\"\nhostnames = [\"bad name\"]\nports = [1]\n",
        "3:14",
        "is not a host name",
    );
    assert_one_error(
        "[[resource]]\nname = \"r\"\nhostnames = [\"*\"]\nports = [1]\n",
        "3:14",
        "is not a host name",
    );
    assert_one_error(
        "[[resource]]\nname = \"r\"\nhostnames = []\nports = [1]\n",
        "3:13",
        "at least one host name",
    );
    assert_one_error(
        "[[resource]]\nname = \"r\"\nports = [1]\n",
        "2:8",
        "needs `addresses`",
    );
}

#[test]
fn http_narrowed_rules_speak_only_about_http_requests() {
    let policy = with_rules(
        r#"
[[resource]]
name = "api"
addresses = ["10.9.9.9"]
ports = [443]
protocol = "http"

[[rule]]
name = "public-reads"
agent = "ci-bot"
resource = "*"
operations = ["read"]
http = { paths = ["/public/**"] }
action = "allow"
"#,
    );
    // Not a way into other protocols: a SQL read on `db` is no HTTP request.
    let sql = policy.decide(&facts("ci-bot"), Some("db"), Operation::Read);
    assert_eq!(sql.action, Action::Deny);
    let connect = policy.decide(&facts("ci-bot"), Some("api"), Operation::Connect);
    assert_eq!(connect.action, Action::Allow);
    let public = ("GET", "api.test", "/public/a");
    let private = ("GET", "api.test", "/private");
    assert_eq!(
        policy
            .decide_http(&facts("ci-bot"), "api", Operation::Read, public)
            .action,
        Action::Allow
    );
    assert_eq!(
        policy
            .decide_http(&facts("ci-bot"), "api", Operation::Read, private)
            .action,
        Action::Deny
    );
    let errors = errors(&format!(
        "{DB_AND_AGENTS}\n[[rule]]\nagent = \"ci-bot\"\nresource = \"db\"\noperations = [\"read\"]\nhttp = {{ paths = [\"/x\"] }}\naction = \"allow\"\n"
    ));
    assert!(errors.iter().any(|e| e.contains("not http")), "{errors:#?}");
}

#[test]
fn a_protocol_no_handler_decodes_is_refused_where_its_resource_is_defined() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("api.toml"),
        "[[resource]]\nname = \"api\"\naddresses = [\"127.0.0.1\"]\nports = [8080]\nprotocol = \"http\"\n\n\
         [[rule]]\nname = \"read-api\"\nagent = \"*\"\nresource = \"api\"\noperations = [\"read\"]\naction = \"allow\"\n",
    )
    .expect("write");
    let core = SupportedProtocols::core().with([Protocol::Postgres]);
    let diagnostics = check_dir(dir.path(), &core);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(diagnostics[0].line, 1);
    assert_eq!(
        diagnostics[0].message,
        "resource `api`: protocol `http` is not decoded by this sluice yet: its rules could not be enforced"
    );
    assert!(Policy::load_dir(dir.path(), &core).is_err());
    // Registering a decoder for it lifts the refusal.
    let with_http = core.with([Protocol::Http]);
    assert!(check_dir(dir.path(), &with_http).is_empty());
    for protocol in ["mysql", "kubernetes", "ssh"] {
        // An ssh resource also needs its credential and pinned host keys to be valid.
        let ssh_keys = if protocol == "ssh" {
            format!(
                "credential = \"key\"\nknown_hosts = {:?}\n",
                dir.path().join("api.toml").display().to_string()
            )
        } else {
            String::new()
        };
        std::fs::write(
            dir.path().join("api.toml"),
            format!("[[resource]]\nname = \"api\"\naddresses = [\"127.0.0.1\"]\nports = [8080]\nprotocol = \"{protocol}\"\n{ssh_keys}"),
        )
        .expect("write");
        let diagnostics = check_dir(dir.path(), &SupportedProtocols::core());
        assert!(
            diagnostics.iter().any(|d| d
                .message
                .contains(&format!("protocol `{protocol}` is not decoded"))),
            "{protocol}: {diagnostics:?}"
        );
    }
}

fn ssh_rule(ssh: &str, action: &str) -> String {
    // Any regular file will do as known_hosts here.
    let known_hosts = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    format!(
        "[[agent]]\nname = \"a\"\n\n[[resource]]\nname = \"git\"\naddresses = [\"10.0.0.1\"]\nports = [22]\n\
         protocol = \"ssh\"\ncredential = \"k\"\nknown_hosts = {known_hosts:?}\n\n\
         [[rule]]\nname = \"r\"\nagent = \"a\"\nresource = \"git\"\noperations = [\"write\"]\nssh = {ssh}\naction = \"{action}\"\n"
    )
}

#[test]
fn ssh_ref_protections_load_and_match_whole_ref_names() {
    let loaded = policy(&ssh_rule(
        r#"{ protected_refs = ["refs/heads/main"], read_only_refs = ["refs/tags/*"] }"#,
        "allow",
    ));
    let ssh = loaded.rule_named("r").unwrap().ssh.clone().unwrap();
    assert!(ssh.protects("refs/heads/main"));
    assert!(!ssh.protects("refs/heads/main2"));
    assert!(!ssh.protects("refs/heads/feature"));
    assert!(ssh.read_only("refs/tags/v1"));
    assert!(
        ssh.read_only("refs/tags/v1/rc;$(x)"),
        "`*` spans `/` and shell characters"
    );
    assert!(!ssh.read_only("refs/heads/tags/x"));
    // Without `commands` the table narrows nothing, SFTP requests included.
    assert!(ssh.admits(None) && ssh.admits(Some("git-receive-pack 'x'")));

    for (table, action, needle) in [
        (
            r#"{ protected = ["refs/heads/main"] }"#,
            "allow",
            "unknown field `protected`",
        ),
        (
            r#"{ protected_refs = ["main"] }"#,
            "allow",
            "`main` is not a full ref name",
        ),
        (
            r#"{ protected_refs = ["refs/heads/main"] }"#,
            "deny",
            "a deny rule",
        ),
        (
            r#"{ read_only_refs = [] }"#,
            "allow",
            "at least one ref glob",
        ),
        (
            "{}",
            "allow",
            "must name `commands`, `protected_refs` or `read_only_refs`",
        ),
    ] {
        let errors = errors(&ssh_rule(table, action));
        assert!(
            errors.iter().any(|error| error.contains(needle)),
            "{table}: {errors:#?}"
        );
    }
}
