//! Human approvals end to end: a real daemon, a real PostgreSQL, real psql and a
//! tokio-postgres driver as agents, the real `sluice` CLI as the approver, a webhook
//! receiver on loopback, and the Prometheus endpoint scraped over TCP.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    TestDaemon, assert_probe_refused, free_port,
    postgres::{APP_PASSWORD as PASSWORD, PgCommand, PgServer, Rule, shop_server, spawn_pgprobe},
    sluice_bin, text,
};

/// Agents run as this user, so that root may approve them (nobody approves their own).
const AGENT_USER: &str = "nobody";

/// psql as `agent` (with `sluice run` options), running each of `statements` with `-c`.
fn spawn_psql(
    daemon: &TestDaemon,
    server: &PgServer,
    agent: &str,
    run_options: &[&str],
    statements: &[&str],
) -> Child {
    let mut command = PgCommand::agent_with_options(daemon, agent, run_options, "psql")
        .args(["-X", "-A", "-t", "-v", "VERBOSITY=verbose", "-d"])
        .arg(server.conninfo("app", "shop"))
        .password(PASSWORD);
    for statement in statements {
        command = command.arg("-c").arg(statement);
    }
    let mut child = command.spawn();
    drop(child.stdin.take());
    child
}

/// Waits for the child to exit (killing it after 30 s) and returns what it printed.
fn finish(mut child: Child) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "the agent did not finish: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// `sluice approvals list --json`.
fn held(daemon: &TestDaemon) -> Vec<Value> {
    let output = daemon.sluice(&["approvals", "list", "--json"]);
    assert!(
        output.status.success(),
        "approvals list failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("approvals list JSON")
}

fn id_of(hold: &Value) -> String {
    hold["id"].as_u64().expect("approval id").to_string()
}

/// `sluice approve|deny ID --reason REASON` as root, asserting success.
fn decide(daemon: &TestDaemon, verb: &str, hold: &Value, reason: &str) {
    let output = daemon.sluice(&[verb, &id_of(hold), "--reason", reason]);
    assert!(
        output.status.success(),
        "sluice {verb} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The statements of the newest closed session of `agent`.
fn recorded_statements(daemon: &TestDaemon, agent: &str) -> Vec<Value> {
    daemon.show_newest_closed_session(agent)["statements"]
        .as_array()
        .expect("statements")
        .clone()
}

fn find_statement<'a>(statements: &'a [Value], sql: &str) -> &'a Value {
    statements
        .iter()
        .find(|s| text(s, "sql").contains(sql))
        .unwrap_or_else(|| panic!("no statement {sql:?} in {statements:#?}"))
}

/// `GET /metrics` from the test process (outside the managed cgroup).
fn scrape(port: u16) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

fn metrics_config(port: u16) -> String {
    format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n")
}

#[test]
fn an_approved_statement_runs_and_the_approver_is_recorded() {
    let server = shop_server();
    let daemon = TestDaemon::start(&server.policy(
        &["reviewed"],
        &[Rule::review("reviewed", &["read"]).named("reads-need-review")],
    ));
    let psql = spawn_psql(
        &daemon,
        &server,
        "reviewed",
        &["--user", AGENT_USER],
        &["SELECT item FROM orders WHERE id < 10 ORDER BY id"],
    );
    let pid = psql.id();
    let hold = daemon.wait_for_statement_hold("reviewed", "SELECT item FROM orders");
    assert_eq!(hold["pid"], pid, "{hold:#}");
    assert_eq!(hold["uid"], 65534, "{hold:#}");
    assert_eq!(text(&hold, "resource"), "pg");
    assert_eq!(text(&hold, "rule"), "reads-need-review");
    assert_eq!(
        text(&hold, "sql"),
        "SELECT item FROM orders WHERE id < ? ORDER BY id",
        "literals are masked as recorded"
    );
    assert!(!text(&hold, "waiting_since").is_empty());
    // Held: psql is still waiting for its answer.
    std::thread::sleep(Duration::from_millis(300));
    let mut psql = psql;
    assert!(
        psql.try_wait().expect("wait").is_none(),
        "psql did not wait"
    );

    decide(&daemon, "approve", &hold, "ticket OPS-42");
    let output = finish(psql);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["tea", "cake", "jam"],
        "{stdout}"
    );
    assert!(held(&daemon).is_empty());

    let statements = recorded_statements(&daemon, "reviewed");
    let select = find_statement(&statements, "SELECT item FROM orders");
    assert_eq!(select["decision"]["action"], "review");
    assert_eq!(select["rows"], 3);
    let approval = &select["approval"];
    assert_eq!(approval["id"], hold["id"]);
    assert_eq!(approval["outcome"], "approved");
    assert_eq!(approval["approver_uid"], 0);
    assert_eq!(approval["approver_name"], "root");
    assert_eq!(approval["reason"], "ticket OPS-42");
    assert!(approval["waited_ms"].as_u64().expect("waited_ms") >= 300);

    // The audit log has the hold and the decision.
    let session_id = select["session_id"]
        .as_u64()
        .expect("session id")
        .to_string();
    let export = daemon.sluice(&["export", "--format", "jsonl", "--session", &session_id]);
    assert!(export.status.success(), "{export:?}");
    let activities: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|event| event["event"]["activity"].clone())
        .filter(|activity| text(activity, "type").starts_with("approval_"))
        .collect();
    assert_eq!(activities.len(), 2, "{activities:#?}");
    assert_eq!(activities[0]["type"], "approval_requested");
    assert_eq!(activities[0]["approval_id"], hold["id"]);
    assert_eq!(activities[1]["type"], "approval_decided");
    assert_eq!(activities[1]["outcome"], "approved");
    assert_eq!(activities[1]["approver_name"], "root");
    assert_eq!(activities[1]["reason"], "ticket OPS-42");
}

/// Receives one HTTP POST on loopback and hands its body over.
fn webhook_receiver() -> (u16, mpsc::Receiver<(String, Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook receiver");
    let port = listener.local_addr().expect("address").port();
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let Ok((stream, _)) = listener.accept() else {
            return;
        };
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut request_line = String::new();
        reader.read_line(&mut request_line).expect("request line");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().expect("content-length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        let mut stream = stream;
        let _ =
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let body = serde_json::from_slice(&body).expect("webhook body is JSON");
        let _ = sender.send((request_line, body));
    });
    (port, receiver)
}

#[test]
fn a_denied_statement_gets_42501_with_the_reason_the_session_goes_on_and_webhooks_hear_of_it() {
    let server = shop_server();
    let (webhook_port, webhook) = webhook_receiver();
    let daemon = TestDaemon::start_with_config(
        &server.policy(
            &["reviewed"],
            &[
                Rule::allow("reviewed", &["read"]),
                Rule::review("reviewed", &["write"]).named("writes-need-review"),
            ],
        ),
        "",
        &format!("[[approvals.webhook]]\nurl = \"http://127.0.0.1:{webhook_port}/hooks/sluice\"\n"),
    );
    let mark = server.server_log().len();
    let psql = spawn_psql(
        &daemon,
        &server,
        "reviewed",
        &["--user", AGENT_USER],
        &[
            "DELETE FROM orders WHERE id = 1",
            "SELECT count(*) AS after_denial FROM orders",
        ],
    );
    let hold = daemon.wait_for_statement_hold("reviewed", "DELETE FROM orders");

    let (request_line, body) = webhook
        .recv_timeout(Duration::from_secs(15))
        .expect("the webhook was called");
    assert!(
        request_line.starts_with("POST /hooks/sluice "),
        "{request_line}"
    );
    assert_eq!(body["event"], "approval_requested");
    assert_eq!(body["id"], hold["id"]);
    assert_eq!(body["agent"], "reviewed");
    assert_eq!(body["pid"], hold["pid"]);
    assert_eq!(body["uid"], 65534);
    assert_eq!(body["resource"], "pg");
    assert_eq!(body["sql"], "DELETE FROM orders WHERE id = ?");
    assert_eq!(body["rule"], "writes-need-review");
    assert_eq!(body["timeout_seconds"], 300, "the default timeout");
    assert!(
        text(&body, "approve_command").starts_with(&format!("sluice approve {}", id_of(&hold))),
        "{body:#}"
    );

    decide(&daemon, "deny", &hold, "not in change window");
    let output = finish(psql);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("42501"), "{stderr}");
    assert!(
        stderr.contains("denied by root (uid 0): not in change window"),
        "{stderr}"
    );
    assert!(stderr.contains("writes-need-review"), "{stderr}");
    // The same session goes on: the next statement ran and saw nothing deleted.
    assert_eq!(stdout.trim(), "3", "stdout:\n{stdout}\nstderr:\n{stderr}");
    let log = server.server_log_since(mark);
    assert!(
        !log.contains("DELETE FROM orders"),
        "the server ran it:\n{log}"
    );

    let statements = recorded_statements(&daemon, "reviewed");
    let delete = find_statement(&statements, "DELETE FROM orders");
    assert!(text(delete, "error").starts_with("42501"), "{delete:#}");
    assert_eq!(delete["approval"]["outcome"], "denied");
    assert_eq!(delete["approval"]["reason"], "not in change window");
    assert_eq!(delete["approval"]["approver_uid"], 0);
    // All in one session.
    assert_eq!(
        find_statement(&statements, "after_denial")["session_id"],
        delete["session_id"]
    );
}

#[test]
fn a_rule_timeout_denies_the_statement() {
    let server = shop_server();
    let policy = server
        .policy(
            &["reviewed"],
            &[Rule::review("reviewed", &["write"]).named("writes-need-review")],
        )
        .replace(
            "action = \"review\"\n",
            "action = \"review\"\ntimeout = \"2s\"\n",
        );
    let daemon = TestDaemon::start(&policy);
    let psql = spawn_psql(
        &daemon,
        &server,
        "reviewed",
        &["--user", AGENT_USER],
        &["UPDATE orders SET item = 'gone' WHERE id = 2"],
    );
    let hold = daemon.wait_for_statement_hold("reviewed", "UPDATE orders");
    assert_eq!(hold["timeout_seconds"], 2);
    let output = finish(psql);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("42501"), "{stderr}");
    assert!(
        stderr.contains("not approved: nobody approved it within 2s"),
        "{stderr}"
    );
    assert!(held(&daemon).is_empty());
    // Deciding it afterwards finds nothing.
    let late = daemon.sluice(&["approve", &id_of(&hold), "--reason", "too late"]);
    assert!(!late.status.success());
    assert!(
        String::from_utf8_lossy(&late.stderr).contains("no statement is held"),
        "{late:?}"
    );
    assert_eq!(
        server
            .psql_local("app", "shop", "SELECT item FROM orders WHERE id = 2")
            .trim(),
        "cake"
    );
    let statements = recorded_statements(&daemon, "reviewed");
    let update = find_statement(&statements, "UPDATE orders");
    assert_eq!(update["approval"]["outcome"], "timed_out");
    assert_eq!(update["approval"]["approver_uid"], Value::Null);
}

#[test]
fn two_held_agents_do_not_block_each_other() {
    let server = shop_server();
    let metrics_port = free_port();
    let daemon = TestDaemon::start_with_config(
        &server.policy(
            &["first", "second"],
            &[
                Rule::review("first", &["read"]),
                Rule::review("second", &["read"]),
            ],
        ),
        "",
        &metrics_config(metrics_port),
    );
    let mut first = spawn_psql(
        &daemon,
        &server,
        "first",
        &["--user", AGENT_USER],
        &["SELECT item AS first_item FROM orders WHERE id = 1"],
    );
    let first_hold = daemon.wait_for_statement_hold("first", "first_item");
    let second = spawn_psql(
        &daemon,
        &server,
        "second",
        &["--user", AGENT_USER],
        &["SELECT item AS second_item FROM orders WHERE id = 2"],
    );
    let second_hold = daemon.wait_for_statement_hold("second", "second_item");
    assert_ne!(first_hold["id"], second_hold["id"]);
    assert!(
        scrape(metrics_port).contains("sluice_approvals_held 2"),
        "both holds counted"
    );

    // The later hold is approved first and runs; the earlier one keeps waiting.
    decide(&daemon, "approve", &second_hold, "second is fine");
    let output = finish(second);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "cake");
    assert!(
        first.try_wait().expect("wait").is_none(),
        "first stopped waiting"
    );
    let still = held(&daemon);
    assert_eq!(still.len(), 1, "{still:#?}");
    assert_eq!(still[0]["id"], first_hold["id"]);

    decide(&daemon, "approve", &first_hold, "first is fine too");
    let output = finish(first);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "tea");
    let metrics = scrape(metrics_port);
    assert!(metrics.contains("sluice_approvals_held 0"), "{metrics}");
    assert!(
        metrics.contains("sluice_approvals_total{outcome=\"approved\"} 2"),
        "{metrics}"
    );
}

#[test]
fn nobody_approves_their_own_statement() {
    let server = shop_server();
    let daemon = TestDaemon::start_with_config(
        &server.policy(&["root-agent"], &[Rule::review("root-agent", &["read"])]),
        "",
        "[control]\nadmin_group = \"nogroup\"\n",
    );
    // Let the admin group's member reach the socket and read the config.
    std::fs::set_permissions(
        daemon.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    // The agent runs as root, like the approver below.
    let psql = spawn_psql(
        &daemon,
        &server,
        "root-agent",
        &[],
        &["SELECT item FROM orders WHERE id = 3"],
    );
    let hold = daemon.wait_for_statement_hold("root-agent", "SELECT item");
    assert_eq!(hold["uid"], 0);

    let refused = daemon.sluice(&["approve", &id_of(&hold), "--reason", "it is mine"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "root approved its own statement");
    assert!(
        stderr.contains("uid 0 may not decide approval")
            && stderr.contains("nobody approves their own statement"),
        "{stderr}"
    );
    assert_eq!(held(&daemon).len(), 1, "still held after the refusal");

    // Another member of the admin group may.
    let output = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(sluice_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args([
            "approve",
            &id_of(&hold),
            "--reason",
            "checked by the on-call",
        ])
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("runuser");
    assert!(
        output.status.success(),
        "approve as nobody: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = finish(psql);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "jam");
    let statements = recorded_statements(&daemon, "root-agent");
    let select = find_statement(&statements, "SELECT item");
    assert_eq!(select["approval"]["approver_uid"], 65534);
    assert_eq!(select["approval"]["approver_name"], "nobody");
}

/// Runs the tokio-postgres probe as `agent` (uid nobody) on `shop`, with `script` on stdin.
fn spawn_shop_pgprobe(daemon: &TestDaemon, server: &PgServer, agent: &str, script: &str) -> Child {
    let conninfo = format!(
        "host={} port={} user=app password={PASSWORD} dbname=shop",
        server.addr().ip(),
        server.port()
    );
    spawn_pgprobe(
        daemon,
        agent,
        &["--user", AGENT_USER],
        &["run", &conninfo],
        script,
    )
}

#[test]
fn extended_protocol_statements_are_held_at_execute() {
    let server = shop_server();
    let daemon = TestDaemon::start(&server.policy(
        &["driver"],
        &[
            Rule::allow("driver", &["read"]),
            Rule::review("driver", &["write"]).named("writes-need-review"),
        ],
    ));
    let probe = spawn_shop_pgprobe(
        &daemon,
        &server,
        "driver",
        "UPDATE orders SET item = $1 WHERE id = 1|scones\n\
         DELETE FROM orders WHERE id = 3\n\
         SELECT item FROM orders ORDER BY id\n",
    );
    let update = daemon.wait_for_statement_hold("driver", "UPDATE orders");
    assert_eq!(
        text(&update, "sql"),
        "UPDATE orders SET item = $1 WHERE id = ?"
    );
    decide(&daemon, "approve", &update, "price change OPS-7");
    let delete = daemon.wait_for_statement_hold("driver", "DELETE FROM orders");
    decide(&daemon, "deny", &delete, "keep the jam");

    let output = finish(probe);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "pgprobe printed no JSON ({e}): {:?}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let results = report["results"].as_array().expect("results");
    assert_eq!(results[0]["ok"], true, "{report:#}");
    assert_eq!(results[1]["ok"], false, "{report:#}");
    assert_eq!(results[1]["code"], "42501");
    assert!(
        text(&results[1], "message").contains("keep the jam"),
        "{report:#}"
    );
    assert_eq!(
        results[2]["rows"],
        serde_json::json!([["scones"], ["cake"], ["jam"]]),
        "{report:#}"
    );
    let statements = recorded_statements(&daemon, "driver");
    let update = find_statement(&statements, "UPDATE orders");
    assert_eq!(update["approval"]["outcome"], "approved");
    assert_eq!(update["approval"]["reason"], "price change OPS-7");
    // tokio-postgres binds text in binary format; only format and size are recorded.
    assert_eq!(update["parameters"], serde_json::json!(["binary:6"]));
    assert_eq!(
        find_statement(&statements, "DELETE FROM orders")["approval"]["outcome"],
        "denied"
    );
}

#[test]
fn metrics_count_sessions_and_agents_cannot_reach_the_endpoint() {
    let server = shop_server();
    let metrics_port = free_port();
    let daemon = TestDaemon::start_with_config(
        &server.policy(&["reader"], &[Rule::allow("reader", &["read"])]),
        "",
        &metrics_config(metrics_port),
    );
    let psql = spawn_psql(
        &daemon,
        &server,
        "reader",
        &["--user", AGENT_USER],
        &["SELECT count(*) FROM orders", "DROP TABLE orders"],
    );
    let output = finish(psql);
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "3");
    recorded_statements(&daemon, "reader");

    let metrics = scrape(metrics_port);
    for line in [
        "sluice_connections_total{outcome=\"allowed\"} 1",
        "sluice_decisions_total{scope=\"connection\",action=\"allow\"} 1",
        "sluice_decisions_total{scope=\"statement\",action=\"allow\"} 1",
        "sluice_decisions_total{scope=\"statement\",action=\"deny\"} 1",
        "sluice_statement_seconds_count 1",
        "sluice_store_write_seconds_count{durability=\"durable\"}",
        "sluice_approvals_held 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    assert!(
        metrics.contains("sluice_statement_seconds_bucket{le="),
        "{metrics}"
    );

    // An agent may not reach the daemon's metrics port: refused in the kernel, recorded.
    let target = format!("127.0.0.1:{metrics_port}");
    let report = daemon.probe("prober", &["tcp", &target]);
    assert_probe_refused(&report);
    let sessions = daemon.wait_for_sessions(Some("prober"), "the refusal", |s| !s.is_empty());
    assert_eq!(sessions[0]["decision"]["rule"], "kernel:daemon_port");
    assert_eq!(text(&sessions[0], "destination"), target);
    let metrics = scrape(metrics_port);
    assert!(
        metrics.contains("sluice_connections_total{outcome=\"refused_in_kernel\"} 1"),
        "{metrics}"
    );
}

#[test]
fn an_agent_that_goes_away_withdraws_its_hold() {
    let server = shop_server();
    let daemon = TestDaemon::start(&server.policy(
        &["quitter"],
        &[Rule::review("quitter", &["write"]).named("writes-need-review")],
    ));
    let mut psql = spawn_psql(
        &daemon,
        &server,
        "quitter",
        &["--user", AGENT_USER],
        &["DELETE FROM orders WHERE id = 2"],
    );
    let hold = daemon.wait_for_statement_hold("quitter", "DELETE FROM orders");
    psql.kill().expect("kill psql");
    let _ = psql.wait();

    let deadline = Instant::now() + Duration::from_secs(15);
    while !held(&daemon).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the hold stayed after the agent left"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let late = daemon.sluice(&["approve", &id_of(&hold), "--reason", "too late"]);
    assert!(!late.status.success(), "a withdrawn hold was approved");
    let statements = recorded_statements(&daemon, "quitter");
    let delete = find_statement(&statements, "DELETE FROM orders");
    assert_eq!(delete["approval"]["outcome"], "withdrawn");
    assert!(text(delete, "error").starts_with("not run"), "{delete:#}");
    assert_eq!(
        server
            .psql_local("app", "shop", "SELECT count(*) FROM orders")
            .trim(),
        "3"
    );
}

#[test]
fn a_held_statement_is_recorded_when_the_server_goes_away() {
    let mut server = shop_server();
    let daemon = TestDaemon::start(&server.policy(
        &["stranded"],
        &[Rule::review("stranded", &["write"]).named("writes-need-review")],
    ));
    let psql = spawn_psql(
        &daemon,
        &server,
        "stranded",
        &["--user", AGENT_USER],
        &["DELETE FROM orders WHERE id = 2"],
    );
    daemon.wait_for_statement_hold("stranded", "DELETE FROM orders");
    server.stop();
    let output = finish(psql);
    assert!(!output.status.success(), "{output:?}");
    assert!(held(&daemon).is_empty(), "the hold outlived its session");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let statements = recorded_statements(&daemon, "stranded");
        if let Some(delete) = statements
            .iter()
            .find(|s| text(s, "sql").contains("DELETE FROM orders"))
        {
            assert!(text(delete, "error").starts_with("not run"), "{delete:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the held statement was never recorded: {statements:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
