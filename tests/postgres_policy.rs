//! Statement-level policy on a real PostgreSQL: denials with SQLSTATE 42501 that never
//! reach the server, sessions that stay usable, cancel, and credential brokering.
//! Clients are real: psql (simple protocol) and tokio-postgres (extended protocol).

use std::time::Duration;

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    pki::TestPki,
    postgres::{APP_PASSWORD as PASSWORD, PgCommand, PgServer, Rule, shop_server, spawn_pgprobe},
    text,
};

/// Agent `app-agent` may read `pg`.
fn reader_rules() -> [Rule; 1] {
    [Rule::allow("app-agent", &["read"])]
}

fn reader_policy(server: &PgServer) -> String {
    server.policy(&["app-agent"], &reader_rules())
}

/// Runs the tokio-postgres probe as `agent` and parses its report.
fn pgprobe_as(daemon: &TestDaemon, agent: &str, args: &[&str], stdin: &str) -> Value {
    let output = spawn_pgprobe(daemon, agent, &[], args, stdin)
        .wait_with_output()
        .expect("run pgprobe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "pgprobe printed no JSON ({e}): {stdout:?} {:?}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn every_denied_class_gets_42501_never_reaches_the_server_and_the_session_goes_on() {
    let server = shop_server();
    let daemon = TestDaemon::start(&server.policy(
        &["analyst"],
        &[Rule::allow("analyst", &["read", "write"]).named("analyst-reads-and-writes")],
    ));
    let mark = server.server_log().len();
    let script = "\\set VERBOSITY verbose\n\
        SELECT count(*) AS before FROM orders;\n\
        DROP TABLE orders;\n\
        SELECT 'alive after drop' AS probe;\n\
        BEGIN;\n\
        INSERT INTO orders VALUES (4, 'bread');\n\
        TRUNCATE orders;\n\
        SELECT count(*) AS inside FROM orders;\n\
        COMMIT;\n\
        DELETE FROM orders;\n\
        GRANT SELECT ON orders TO PUBLIC;\n\
        COPY orders TO PROGRAM 'cat';\n\
        SELECT pg_read_file('/etc/hostname');\n\
        SELEC broken syntax here;\n\
        SELECT count(*) AS after FROM orders;\n";
    let output = PgCommand::agent(&daemon, "analyst", "psql")
        .args(["-X", "-A", "-t", "-d", &server.conninfo("app", "shop")])
        .password(PASSWORD)
        .stdin(script.as_bytes().to_vec())
        .arg("-f")
        .arg("-")
        .output();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Every allowed statement ran on the same session, in order.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| !l.is_empty()
                && *l != "BEGIN"
                && *l != "COMMIT"
                && !l.starts_with("INSERT"))
            .collect::<Vec<_>>(),
        vec!["3", "alive after drop", "4", "4"],
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let denials: Vec<&str> = stderr.lines().filter(|l| l.contains("42501")).collect();
    assert_eq!(denials.len(), 7, "expected 7 denials in:\n{stderr}");
    for denial in &denials {
        assert!(denial.contains("sluice:"), "{denial}");
    }
    assert!(
        stderr.contains("denied by policy rule `default-deny`"),
        "{stderr}"
    );

    // The server never saw any of them.
    let log = server.server_log_since(mark);
    for statement in [
        "DROP TABLE",
        "TRUNCATE",
        "DELETE FROM",
        "GRANT",
        "TO PROGRAM",
        "pg_read_file",
        "SELEC broken",
    ] {
        assert!(
            !log.contains(statement),
            "the server executed {statement}:\n{log}"
        );
    }
    assert!(log.contains("INSERT INTO orders VALUES (4"), "{log}");

    // And each statement is recorded with its decision.
    let shown = daemon.show_newest_closed_session("analyst");
    let statements = shown["statements"].as_array().expect("statements");
    let denied: Vec<&Value> = statements
        .iter()
        .filter(|s| s["decision"]["action"] == "deny")
        .collect();
    assert_eq!(denied.len(), 7, "{shown:#}");
    let drop = statements
        .iter()
        .find(|s| text(s, "kind").starts_with("DROP"))
        .expect("the DROP is recorded");
    assert_eq!(drop["operation"], "dangerous");
    assert!(text(drop, "error").starts_with("42501"), "{drop:#}");
    let select = statements
        .iter()
        .find(|s| text(s, "sql").contains("AS before"))
        .expect("the first SELECT is recorded");
    assert_eq!(select["rows"], 1);
    assert_eq!(select["decision"]["rule"], "analyst-reads-and-writes");
    assert_eq!(shown["session"]["resource"], "pg");
}

#[test]
fn extended_protocol_denials_keep_the_session_usable() {
    let server = shop_server();
    let daemon = TestDaemon::start(&reader_policy(&server));
    let mark = server.server_log().len();
    let report = pgprobe_as(
        &daemon,
        "app-agent",
        &["run", &driver_conninfo(&server)],
        "SELECT item FROM orders ORDER BY id\n\
         UPDATE orders SET item = 'stolen' WHERE id = 1\n\
         SELECT item FROM orders WHERE id = 1\n\
         DROP TABLE orders\n\
         SELECT count(*)::text FROM orders\n",
    );
    assert_eq!(report["ok"], true, "{report:#}");
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 5);
    assert_eq!(
        results[0]["rows"],
        serde_json::json!([["tea"], ["cake"], ["jam"]])
    );
    assert_eq!(results[1]["code"], "42501", "{report:#}");
    assert_eq!(results[2]["rows"], serde_json::json!([["tea"]]));
    assert_eq!(results[3]["code"], "42501");
    assert_eq!(results[4]["rows"], serde_json::json!([["3"]]));
    let log = server.server_log_since(mark);
    assert!(!log.contains("stolen"), "{log}");
    assert!(!log.contains("DROP TABLE"), "{log}");
}

#[test]
fn bound_parameters_are_recorded_by_format_and_size_never_by_value() {
    let server = shop_server();
    let daemon = TestDaemon::start(&reader_policy(&server));
    let report = pgprobe_as(
        &daemon,
        "app-agent",
        &["run", &driver_conninfo(&server)],
        "SELECT count(*)::text FROM orders WHERE item <> $1|secret-param-value\n",
    );
    assert_eq!(
        report["results"][0]["rows"],
        serde_json::json!([["3"]]),
        "{report:#}"
    );
    let shown = daemon.show_newest_closed_session("app-agent");
    let statement = &shown["statements"][0];
    assert_eq!(statement["params"], 1, "{shown:#}");
    assert_eq!(
        statement["parameters"],
        serde_json::json!(["binary:18"]),
        "{shown:#}"
    );
    assert!(!shown.to_string().contains("secret-param-value"));
    let mut stored = Vec::new();
    for file in walk(&daemon.dir.path().join("state")) {
        stored.extend(std::fs::read(file).unwrap_or_default());
    }
    assert!(!String::from_utf8_lossy(&stored).contains("secret-param-value"));
}

#[test]
fn prepared_statements_run_many_times_through_the_proxy() {
    let server = shop_server();
    let daemon = TestDaemon::start(&reader_policy(&server));
    let report = pgprobe_as(
        &daemon,
        "app-agent",
        &[
            "prepared",
            &driver_conninfo(&server),
            "SELECT item FROM orders WHERE id = 2",
            "20",
        ],
        "",
    );
    let results = report["results"].as_array().expect("results");
    assert_eq!(results.len(), 20, "{report:#}");
    assert!(
        results
            .iter()
            .all(|r| r["rows"] == serde_json::json!([["cake"]])),
        "{report:#}"
    );
}

#[test]
fn a_cancel_from_the_agent_reaches_the_right_backend() {
    let server = shop_server();
    let daemon = TestDaemon::start(&reader_policy(&server));
    let report = pgprobe_as(
        &daemon,
        "app-agent",
        &["cancel", &driver_conninfo(&server)],
        "",
    );
    assert_eq!(report["cancelled"], true, "{report:#}");
    assert!(
        report["elapsed_ms"].as_u64().unwrap_or(u64::MAX) < 10_000,
        "{report:#}"
    );
    assert_eq!(
        report["after"],
        serde_json::json!([["still usable"]]),
        "{report:#}"
    );
    // The cancel went out on its own connection, recorded as such.
    let sessions = daemon.wait_for_sessions(Some("app-agent"), "the cancel session", |s| {
        s.iter()
            .any(|s| text(s, "close_reason") == "cancel_forwarded")
    });
    assert!(sessions.len() >= 2);
}

#[test]
fn brokered_credentials_log_in_for_an_agent_that_has_no_password() {
    let server = shop_server();
    let policy = server.policy(&["app-agent"], &reader_rules()).replace(
        "protocol = \"postgres\"",
        "protocol = \"postgres\"\ncredential = \"shop-app\"",
    );
    let credentials = format!("[shop-app]\nuser = \"app\"\npassword = \"{PASSWORD}\"\n");
    let daemon = TestDaemon::start_with_credentials(&policy, &credentials);
    // The agent asks for some other user and gives no password at all.
    let output = PgCommand::agent(&daemon, "app-agent", "psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-d",
            &server.conninfo("nobody-in-particular", "shop"),
        ])
        .args([
            "-c",
            "SELECT current_user || ' sees ' || count(*) FROM orders",
        ])
        .output();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "app sees 3");

    // Nothing the agent can see holds the password: not its environment, not the
    // credentials file (root-only).
    let env = daemon.run_agent("app-agent", "/usr/bin/env", &[]);
    assert!(env.status.success());
    assert!(!String::from_utf8_lossy(&env.stdout).contains(PASSWORD));
    let credentials_path = daemon.dir.path().join("credentials.toml");
    let read = daemon.sluice(&[
        "run",
        "--agent",
        "app-agent",
        "--user",
        "nobody",
        "--",
        "/bin/cat",
        credentials_path.to_str().expect("utf-8 path"),
    ]);
    assert!(
        !read.status.success(),
        "the agent read the credentials file"
    );
    assert!(!String::from_utf8_lossy(&read.stdout).contains(PASSWORD));
}

#[test]
fn a_wrong_brokered_credential_gives_the_agent_a_clean_auth_error() {
    let server = shop_server();
    let policy = server.policy(&["app-agent"], &reader_rules()).replace(
        "protocol = \"postgres\"",
        "protocol = \"postgres\"\ncredential = \"shop-app\"",
    );
    let daemon = TestDaemon::start_with_credentials(
        &policy,
        "[shop-app]\nuser = \"app\"\npassword = \"not-the-password\"\n",
    );
    let output = PgCommand::agent(&daemon, "app-agent", "psql")
        .args([
            "-X",
            "-w",
            "-d",
            &server.conninfo("app", "shop"),
            "-c",
            "SELECT 1",
        ])
        .timeout(Duration::from_secs(30))
        .output();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("could not log in to `pg` with its brokered credential"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}

#[test]
fn hostile_bytes_are_a_recorded_protocol_error_and_the_next_session_is_served() {
    let server = shop_server();
    let daemon = TestDaemon::start(&reader_policy(&server));
    let target = server.addr().to_string();
    let startup = startup_hex("app", "shop");
    let hostile = [
        // A startup packet claiming 2 GiB.
        "7fffffff00030000".to_owned(),
        // A valid startup, then a Query frame whose length is below 4.
        format!("{startup}5100000002"),
        // A valid startup, then random bytes.
        format!("{startup}deadbeef133742ff0011"),
    ];
    for bytes in &hostile {
        let report = daemon.probe("app-agent", &["raw", &target, bytes]);
        assert_eq!(report["ok"], true, "{report}");
    }
    let sessions = daemon.wait_for_sessions(Some("app-agent"), "three closed sessions", |s| {
        s.iter().filter(|s| text(s, "state") == "closed").count() >= 3
    });
    let errors = sessions
        .iter()
        .filter(|s| text(s, "close_reason").starts_with("protocol_error"))
        .count();
    assert_eq!(errors, hostile.len(), "{sessions:#?}");
    // The daemon is fine: the next session works.
    let output = PgCommand::agent(&daemon, "app-agent", "psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-d",
            &server.conninfo("app", "shop"),
            "-c",
            "SELECT count(*) FROM orders",
        ])
        .password(PASSWORD)
        .output();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "3",
        "{output:?}"
    );
}

/// A StartupMessage (protocol 3.0) for `user` on `database`, as hex.
fn startup_hex(user: &str, database: &str) -> String {
    let mut body = vec![0, 3, 0, 0];
    for (key, value) in [("user", user), ("database", database)] {
        body.extend_from_slice(key.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tokio-postgres connection string for `app` on `shop`, password included.
fn driver_conninfo(server: &PgServer) -> String {
    format!(
        "host={} port={} user=app password={PASSWORD} dbname=shop",
        server.addr().ip(),
        server.port()
    )
}

const PLANTED: [&str; 4] = [
    "alice@example.com",
    "4111 1111 1111 1111",
    "078-05-1120",
    "bob@example.org",
];

/// A policy where `analyst` reads `pg` through mask profile `pii`.
fn masking_policy(server: &PgServer) -> String {
    let policy = server.policy(
        &["analyst"],
        &[Rule::allow("analyst", &["read"]).named("analyst-reads-masked")],
    );
    let policy = policy.replace("action = \"allow\"", "action = \"allow\"\nmask = \"pii\"");
    format!(
        "{policy}\n[[mask]]\nname = \"pii\"\n\n\
         [[mask.rule]]\ncolumn = \"*email*\"\nstrategy = \"hash\"\n\n\
         [[mask.rule]]\ndetectors = [\"credit_card\", \"us_ssn\", \"email\"]\nstrategy = \"redact\"\n"
    )
}

fn plant(server: &PgServer) {
    server.psql_local(
        "app",
        "shop",
        "CREATE TABLE customers (id int, email text, note text, age int); \
         INSERT INTO customers VALUES \
           (1, 'alice@example.com', 'card 4111 1111 1111 1111, ssn 078-05-1120', 31), \
           (2, 'bob@example.org', 'writes from bob@example.org', 42); \
         CREATE TABLE invoices (customer_email text, total int); \
         INSERT INTO invoices VALUES ('alice@example.com', 10), ('bob@example.org', 20);",
    );
}

#[test]
fn planted_pii_is_masked_in_text_and_binary_results_and_never_stored() {
    let server = shop_server();
    plant(&server);
    let daemon = TestDaemon::start(&masking_policy(&server));

    // Text format (psql).
    let output = PgCommand::agent(&daemon, "analyst", "psql")
        .args(["-X", "-A", "-t", "-d", &server.conninfo("app", "shop")])
        .args([
            "-c",
            "SELECT id, email, note, age FROM customers ORDER BY id",
        ])
        .args(["-c", "SELECT customer_email FROM invoices ORDER BY total"])
        .password(PASSWORD)
        .output();
    let text_out = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{output:?}");
    for value in PLANTED {
        assert!(!text_out.contains(value), "{value} leaked:\n{text_out}");
    }
    let lines: Vec<&str> = text_out.lines().collect();
    assert_eq!(lines.len(), 4, "{text_out}");
    let alice: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(alice[0], "1");
    assert!(alice[1].starts_with("h:"), "{text_out}");
    assert_eq!(alice[2], "card [CREDIT_CARD], ssn [US_SSN]");
    assert_eq!(alice[3], "31", "unmasked columns are untouched");
    assert_eq!(lines[1].split('|').nth(2), Some("writes from [EMAIL]"));
    // Hashes are stable, so masked columns still join across tables.
    assert_eq!(lines[2], alice[1], "{text_out}");
    assert_eq!(Some(lines[3]), lines[1].split('|').nth(1), "{text_out}");

    // Binary format (tokio-postgres asks for binary results).
    let report = pgprobe_as(
        &daemon,
        "analyst",
        &["run", &driver_conninfo(&server)],
        "SELECT email, note FROM customers ORDER BY id\n",
    );
    let binary = report.to_string();
    for value in PLANTED {
        assert!(!binary.contains(value), "{value} leaked:\n{report:#}");
    }
    assert_eq!(report["results"][0]["rows"][0][0], alice[1], "{report:#}");
    assert_eq!(
        report["results"][0]["rows"][0][1],
        "card [CREDIT_CARD], ssn [US_SSN]"
    );

    // The records count what was masked, per column.
    let shown = daemon.show_newest_closed_session("analyst");
    let masked = &shown["statements"][0]["masked"];
    assert_eq!(masked["email"], 2, "{shown:#}");
    assert_eq!(masked["note"], 2, "{shown:#}");

    // No planted value reached the store's files or the daemon's log.
    let mut stored = Vec::new();
    for entry in walk(&daemon.dir.path().join("state")) {
        stored.extend(std::fs::read(entry).unwrap_or_default());
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.len() > 1000, "the store is suspiciously empty");
    for value in PLANTED {
        assert!(!stored.contains(value), "{value} is in the store files");
        assert!(
            !daemon.log().contains(value),
            "{value} is in the daemon log"
        );
    }
}

#[test]
fn copy_out_is_refused_under_a_mask_profile() {
    let server = shop_server();
    plant(&server);
    let daemon = TestDaemon::start(&masking_policy(&server));
    let output = PgCommand::agent(&daemon, "analyst", "psql")
        .args(["-X", "-d", &server.conninfo("app", "shop")])
        .args(["-c", "COPY customers TO STDOUT"])
        .password(PASSWORD)
        .output();
    assert!(!output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("alice"), "{stdout}");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("COPY output cannot be masked"),
        "{output:?}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A CA and a server certificate for 127.0.0.2 signed by it, as PEM:
/// (ca certificate, server certificate, server key).
fn test_pki() -> (String, String, String) {
    let pki = TestPki::for_host("127.0.0.2");
    (pki.ca_pem, pki.certificate_pem, pki.key_pem)
}

fn tls_policy(server: &PgServer, ca_file: &std::path::Path) -> String {
    server.policy(&["app-agent"], &reader_rules()).replace(
        "protocol = \"postgres\"",
        &format!(
            "protocol = \"postgres\"\ntls = {{ mode = \"verify-full\", ca_file = {:?} }}",
            ca_file
        ),
    )
}

#[test]
fn the_daemon_speaks_verified_tls_upstream_for_an_agent_that_does_not() {
    let (ca, certificate, key) = test_pki();
    let server = PgServer::start_tls_only(&certificate, &key);
    server.create_role("app", PASSWORD);
    server.create_database("shop", "app");
    let pki = tempfile::tempdir().expect("tempdir");
    let ca_file = pki.path().join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write CA");

    // The server turns plain TCP away...
    let direct = PgCommand::direct("psql")
        .args([
            "-X",
            "-d",
            &server.conninfo("app", "shop"),
            "-c",
            "SELECT 1",
        ])
        .password(PASSWORD)
        .output();
    assert!(!direct.status.success(), "the server accepted plain TCP");

    // ...yet the agent, speaking plain TCP to the daemon, gets in over verified TLS.
    let daemon = TestDaemon::start(&tls_policy(&server, &ca_file));
    let output = PgCommand::agent(&daemon, "app-agent", "psql")
        .args(["-X", "-A", "-t", "-d", &server.conninfo("app", "shop")])
        .args([
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .password(PASSWORD)
        .output();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "t");
}

#[test]
fn an_upstream_certificate_from_an_unknown_ca_is_refused() {
    let (_, certificate, key) = test_pki();
    let (other_ca, _, _) = test_pki();
    let server = PgServer::start_tls_only(&certificate, &key);
    server.create_role("app", PASSWORD);
    server.create_database("shop", "app");
    let pki = tempfile::tempdir().expect("tempdir");
    let ca_file = pki.path().join("other-ca.pem");
    std::fs::write(&ca_file, other_ca).expect("write CA");
    let daemon = TestDaemon::start(&tls_policy(&server, &ca_file));
    let output = PgCommand::agent(&daemon, "app-agent", "psql")
        .args([
            "-X",
            "-d",
            &server.conninfo("app", "shop"),
            "-c",
            "SELECT 1",
        ])
        .password(PASSWORD)
        .output();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no verified TLS connection"), "{stderr}");
    let sessions = daemon.wait_for_sessions(Some("app-agent"), "the failed session", |s| {
        s.iter()
            .any(|s| text(s, "close_reason").starts_with("upstream_tls"))
    });
    assert!(!sessions.is_empty());
}

#[test]
fn a_server_that_reads_backslashes_in_strings_fails_closed() {
    let server = shop_server();
    // A role default: no SET the classifier could see.
    server.psql_admin("ALTER ROLE app SET standard_conforming_strings = off");
    let daemon = TestDaemon::start(&reader_policy(&server));
    let mark = server.server_log().len();
    let output = PgCommand::agent(&daemon, "app-agent", "psql")
        .args(["-X", "-d", &server.conninfo("app", "shop")])
        .args(["-c", "SELECT count(*) FROM orders"])
        .password(PASSWORD)
        .output();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("standard-conforming-strings-off"),
        "{stderr}"
    );
    assert!(!server.server_log_since(mark).contains("count(*)"));
}

#[test]
fn agents_that_ask_for_tls_get_it_from_the_daemon_with_the_configured_certificate() {
    let (ca, certificate, key) = test_pki();
    let server = shop_server();
    let pki = tempfile::tempdir().expect("tempdir");
    let ca_file = pki.path().join("ca.pem");
    let certificate_file = pki.path().join("agent-facing.pem");
    let key_file = pki.path().join("agent-facing.key");
    std::fs::write(&ca_file, ca).expect("write CA");
    std::fs::write(&certificate_file, certificate).expect("write certificate");
    std::fs::write(&key_file, key).expect("write key");
    let policy = server
        .policy(&["app-agent"], &reader_rules())
        .replace(
            "protocol = \"postgres\"",
            &format!(
                "protocol = \"postgres\"\nagent_tls = {{ cert_file = {certificate_file:?}, key_file = {key_file:?} }}"
            ),
        );
    let daemon = TestDaemon::start(&policy);
    // The agent insists on TLS and verifies the name it dialled against the CA.
    let conninfo = format!(
        "host=127.0.0.2 port={} user=app dbname=shop sslmode=verify-full sslrootcert={}",
        server.port(),
        ca_file.display()
    );
    let output = PgCommand::agent(&daemon, "app-agent", "psql")
        .args([
            "-X",
            "-d",
            &conninfo,
            "-c",
            "\\conninfo",
            "-c",
            "SELECT count(*) FROM orders",
        ])
        .password(PASSWORD)
        .output();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("SSL connection"), "{stdout}");
    assert!(stdout.contains(" 3\n"), "{stdout}");
    // Without TLS configured for the resource, the same agent is told 'N'.
    let plain = TestDaemon::start(&reader_policy(&server));
    let refused = PgCommand::agent(&plain, "app-agent", "psql")
        .args(["-X", "-d", &conninfo, "-c", "SELECT 1"])
        .password(PASSWORD)
        .output();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("server does not support SSL"),
        "{refused:?}"
    );
}

#[test]
fn table_qualified_mask_rules_hold_in_joins() {
    let server = shop_server();
    plant(&server);
    let policy = server
        .policy(
            &["analyst"],
            &[Rule::allow("analyst", &["read"]).named("analyst-reads-masked")],
        )
        .replace("action = \"allow\"", "action = \"allow\"\nmask = \"notes\"");
    let policy = format!(
        "{policy}\n[[mask]]\nname = \"notes\"\n\n\
         [[mask.rule]]\ntable = \"customers\"\ncolumn = \"note\"\nstrategy = \"redact\"\n"
    );
    let daemon = TestDaemon::start(&policy);
    let output = PgCommand::agent(&daemon, "analyst", "psql")
        .args(["-X", "-A", "-t", "-d", &server.conninfo("app", "shop")])
        .args([
            "-c",
            "SELECT c.note, i.total FROM customers c JOIN invoices i \
             ON i.customer_email = c.email ORDER BY i.total",
        ])
        .password(PASSWORD)
        .output();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "[REDACTED]|10\n[REDACTED]|20"
    );
}

/// The daemon caches a statement's classification by its shape (literals replaced), so
/// a statement of the same shape as one judged before must still be judged on its own
/// when its literals carry meaning: `WHERE 1 = 1` deletes every row, `WHERE 1 = 2` none;
/// `set_config('log_statement', ...)` changes a server setting, `set_config
/// ('application_name', ...)` only the session's name. In both orders, on one session.
#[test]
fn statements_of_one_shape_with_meaning_carrying_literals_are_judged_apart() {
    let server = shop_server();
    let daemon = TestDaemon::start(&server.policy(
        &["analyst"],
        &[Rule::allow("analyst", &["read", "write"]).named("analyst-reads-and-writes")],
    ));
    let mark = server.server_log().len();
    let script = "\\set VERBOSITY verbose\n\
        DELETE FROM orders WHERE 1 = 2;\n\
        DELETE FROM orders WHERE 1 = 1;\n\
        DELETE FROM orders WHERE 1 = 2;\n\
        SELECT set_config('application_name', 'shape-one', false);\n\
        SELECT set_config('log_statement', 'all', false);\n\
        SELECT set_config('application_name', 'shape-two', false);\n\
        DELETE FROM orders WHERE 2 = 2;\n\
        SELECT count(*) AS left_over FROM orders;\n";
    let output = PgCommand::agent(&daemon, "analyst", "psql")
        .args(["-X", "-A", "-t", "-d", &server.conninfo("app", "shop")])
        .password(PASSWORD)
        .stdin(script.as_bytes().to_vec())
        .arg("-f")
        .arg("-")
        .output();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stdout.lines().filter(|l| !l.is_empty()).collect::<Vec<_>>(),
        vec!["DELETE 0", "DELETE 0", "shape-one", "shape-two", "3"],
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let denials = stderr.lines().filter(|l| l.contains("42501")).count();
    assert_eq!(denials, 3, "expected 3 denials in:\n{stderr}");

    // The server never saw the refused ones.
    let log = server.server_log_since(mark);
    for refused in ["WHERE 1 = 1", "WHERE 2 = 2", "log_statement"] {
        assert!(!log.contains(refused), "the server ran `{refused}`:\n{log}");
    }
    assert!(log.contains("WHERE 1 = 2"), "{log}");

    let shown = daemon.show_newest_closed_session("analyst");
    let statements = shown["statements"].as_array().expect("statements");
    let verdicts: Vec<(String, String)> = statements
        .iter()
        .filter(|s| text(s, "sql").contains("DELETE") || text(s, "sql").contains("set_config"))
        .map(|s| {
            (
                text(s, "operation").to_owned(),
                text(&s["decision"], "action").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            ("write", "allow"),
            ("dangerous", "deny"),
            ("write", "allow"),
            ("read", "allow"),
            ("admin", "deny"),
            ("read", "allow"),
            ("dangerous", "deny"),
        ]
        .map(|(operation, action)| (operation.to_owned(), action.to_owned())),
        "{shown:#}"
    );
}
