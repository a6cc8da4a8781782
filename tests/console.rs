//! The web console in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/console/drive.cjs`, installed by `cargo xtask setup` into a private
//! directory), against a real daemon serving the console on loopback, with real psql
//! and PostgreSQL, a real sshd and ssh, and the real `sluice ui login` for sign-in.
//! Screenshots of each page are kept under `target/console-screenshots/`.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use sluice_tests::{
    PROBE_SINKS_POLICY, Sink, TestDaemon, assert_probe_refused, free_port,
    postgres::{APP_PASSWORD, PgCommand, PgServer, Rule, shop_server},
    ssh::{HOST as SSH_HOST, SshClient, SshServer, write_file},
    text,
};

/// Agents run as this user, so that root may approve them (nobody approves their own).
const AGENT_USER: &str = "nobody";

/// A daemon serving the console on a port of its own.
struct Console {
    daemon: TestDaemon,
    port: u16,
}

impl Console {
    fn start(policy: &str, credentials: &str) -> Self {
        let port = free_port();
        let daemon = TestDaemon::start_with_config(
            policy,
            credentials,
            &format!("[ui]\nlisten = \"127.0.0.1:{port}\"\n"),
        );
        Self { daemon, port }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `sluice ui login --json [extra]` as root: the one-time URL.
    fn login(&self, extra: &[&str]) -> String {
        let mut args = vec!["ui", "login", "--json"];
        args.extend_from_slice(extra);
        let output = self.daemon.sluice(&args);
        assert!(
            output.status.success(),
            "sluice ui login: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let answer: Value = serde_json::from_slice(&output.stdout).expect("login JSON");
        let url = text(&answer, "url").to_owned();
        assert!(
            url.starts_with(&format!("{}/login?token=", self.base())),
            "{url}"
        );
        url
    }
}

/// Where this test's screenshots go.
fn shots(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/console-screenshots")
        .join(test);
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

/// The private npm packages (`cargo xtask setup`), or `$SLUICE_NODE_MODULES`.
fn node_modules() -> PathBuf {
    std::env::var_os("SLUICE_NODE_MODULES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-node/node_modules"),
        PathBuf::from,
    )
}

/// Runs browser scenario `scenario` of drive.cjs and returns its JSON result.
fn browser(scenario: &str, args: &Value) -> Value {
    let modules = node_modules();
    assert!(
        modules.join("playwright-core").exists(),
        "playwright-core is not installed in {} (run cargo xtask setup)",
        modules.display()
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("console/drive.cjs");
    let child = Command::new("node")
        .arg(script)
        .arg(scenario)
        .arg(args.to_string())
        .env("SLUICE_NODE_MODULES", &modules)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node (Debian's nodejs)");
    let output = finish(child, Duration::from_secs(120));
    assert!(
        output.status.success(),
        "browser scenario {scenario} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("scenario {scenario} printed no JSON ({error}): {stdout}"))
}

/// Runs a browser scenario that prints `READY` once it waits for something, runs
/// `when_ready` then, and returns the scenario's JSON result (its last line).
fn browser_live(scenario: &str, args: &Value, when_ready: impl FnOnce()) -> Value {
    use std::io::BufRead as _;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("console/drive.cjs");
    let mut child = Command::new("node")
        .arg(script)
        .arg(scenario)
        .arg(args.to_string())
        .env("SLUICE_NODE_MODULES", node_modules())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    let stdout = child.stdout.take().expect("stdout");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let first = receiver.recv_timeout(Duration::from_secs(60));
    if first.as_deref() != Ok("READY") {
        let _ = child.kill();
        let output = child.wait_with_output().expect("output");
        panic!(
            "browser scenario {scenario} did not get ready ({first:?}): {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    when_ready();
    let result = receiver.recv_timeout(Duration::from_secs(90));
    let output = finish(child, Duration::from_secs(30));
    assert!(
        output.status.success(),
        "browser scenario {scenario} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = result.expect("the scenario's result line");
    serde_json::from_str(&line).unwrap_or_else(|error| panic!("{error}: {line}"))
}

/// Waits for the child to exit (killing it after `timeout`) and returns what it printed.
fn finish(mut child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "the child did not finish: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// psql as `agent` (as [`AGENT_USER`]), running each of `statements` with `-c`.
fn spawn_psql(console: &Console, server: &PgServer, agent: &str, statements: &[&str]) -> Child {
    let mut command =
        PgCommand::agent_with_options(&console.daemon, agent, &["--user", AGENT_USER], "psql")
            .args(["-X", "-v", "VERBOSITY=verbose", "-d"])
            .arg(server.conninfo("app", "shop"))
            .password(APP_PASSWORD);
    for statement in statements {
        command = command.arg("-c").arg(statement);
    }
    let mut child = command.spawn();
    drop(child.stdin.take());
    child
}

/// The approval id of a hold as `sluice approvals list --json` shows it.
fn hold_id(hold: &Value) -> u64 {
    hold["id"].as_u64().expect("approval id")
}

fn review_policy(server: &PgServer, agent: &str) -> String {
    server.policy(
        &[agent],
        &[
            Rule::allow(agent, &["read"]),
            Rule::review(agent, &["write"]).named("writes-need-review"),
        ],
    )
}

/// A raw HTTP/1.1 exchange with the console, for what a browser hides (headers).
fn raw_http(port: u16, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the console");
    stream.write_all(request.as_bytes()).expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response
}

#[test]
fn a_one_time_sign_in_url_works_once_then_expires() {
    let console = Console::start(PROBE_SINKS_POLICY, "");
    let url = console.login(&[]);
    let result = browser(
        "login_once",
        &json!({ "url": url, "shots": shots("sign_in") }),
    );
    assert_eq!(result["first"]["signedIn"], true, "{result:#}");
    assert_eq!(result["path"], "/sessions", "{result:#}");
    assert_eq!(result["first"]["heading"], "Sessions", "{result:#}");
    assert_eq!(result["second"]["signedIn"], false, "{result:#}");
    assert!(
        text(&result["second"], "message").contains("already used or has expired"),
        "{result:#}"
    );

    // A URL past its validity is refused though never used.
    let short = console.login(&["--valid-for", "1s"]);
    let issued = Instant::now();
    while issued.elapsed() < Duration::from_millis(1500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let late = browser("sign_in", &json!({ "url": short }));
    assert_eq!(late["signedIn"], false, "{late:#}");

    // The session cookie is HttpOnly and SameSite=Strict; pages need it.
    let token = console
        .login(&[])
        .split_once("token=")
        .expect("token")
        .1
        .to_owned();
    let body = format!("token={token}");
    let response = raw_http(
        console.port,
        &format!(
            "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(response.starts_with("HTTP/1.1 303"), "{response}");
    let cookie = response
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie: {response}"));
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    let anonymous = raw_http(
        console.port,
        "GET /api/v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
}

#[test]
fn a_held_update_approved_in_the_browser_runs_and_psql_sees_update_1() {
    let server = shop_server();
    let console = Console::start(&review_policy(&server, "reviewed"), "");
    // The queue is open before anything is held: the hold is pushed to it (SSE).
    let mut psql = None;
    let result = browser_live(
        "decide",
        &json!({
            "url": console.login(&[]), "base": console.base(), "live": true, "verb": "approve",
            "reason": "ticket OPS-9", "shots": shots("approve"),
        }),
        || {
            psql = Some(spawn_psql(
                &console,
                &server,
                "reviewed",
                &["UPDATE orders SET item = 'scone' WHERE id = 2"],
            ));
        },
    );
    let psql = psql.expect("psql started");
    let id = result["id"].as_u64().expect("the approval the browser saw");
    let decided = text(&result, "decided");
    assert!(
        decided.contains(&format!(
            "Approval #{id} approved by root (uid 0): ticket OPS-9"
        )),
        "{result:#}"
    );
    let output = finish(psql, Duration::from_secs(30));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("UPDATE 1"),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        server.psql_local("app", "shop", "SELECT item FROM orders WHERE id = 2"),
        "scone"
    );
    let statements = console.daemon.show_newest_closed_session("reviewed")["statements"].clone();
    let update = statements
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| text(s, "sql").contains("UPDATE orders"))
        .cloned()
        .expect("the update's record");
    assert_eq!(update["approval"]["outcome"], "approved");
    assert_eq!(update["approval"]["approver_uid"], 0);
    assert_eq!(update["approval"]["reason"], "ticket OPS-9");
}

#[test]
fn viewers_and_requests_without_csrf_cannot_decide_and_a_denials_reason_reaches_the_agent() {
    let server = shop_server();
    let console = Console::start(&review_policy(&server, "reviewed"), "");
    let psql = spawn_psql(
        &console,
        &server,
        "reviewed",
        &["DELETE FROM orders WHERE id = 3"],
    );
    let id = hold_id(
        &console
            .daemon
            .wait_for_statement_hold("reviewed", "DELETE FROM orders"),
    );

    let viewer = browser(
        "viewer",
        &json!({
            "url": console.login(&["--viewer"]), "base": console.base(), "id": id,
            "shots": shots("viewer"),
        }),
    );
    assert_eq!(viewer["buttons"], 0, "a viewer sees no buttons: {viewer:#}");
    assert_eq!(viewer["forged"]["role"], "viewer");
    assert_eq!(viewer["forged"]["status"], 403, "{viewer:#}");
    assert!(
        text(&viewer["forged"], "body").contains("viewers cannot"),
        "{viewer:#}"
    );

    let csrf = browser(
        "csrf",
        &json!({ "url": console.login(&[]), "base": console.base(), "id": id }),
    );
    for case in ["missing", "wrong"] {
        assert_eq!(csrf[case]["status"], 403, "{csrf:#}");
        assert!(text(&csrf[case], "body").contains("CSRF"), "{csrf:#}");
    }
    // Nothing was decided: still held.
    assert_eq!(
        hold_id(
            &console
                .daemon
                .wait_for_statement_hold("reviewed", "DELETE FROM orders")
        ),
        id
    );

    browser(
        "decide",
        &json!({
            "url": console.login(&[]), "base": console.base(), "id": id, "verb": "deny",
            "reason": "not in the change window", "shots": shots("deny"),
        }),
    );
    let output = finish(psql, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("42501"), "{stderr}");
    assert!(
        stderr.contains("denied by root (uid 0): not in the change window"),
        "{stderr}"
    );
    assert_eq!(
        server.psql_local("app", "shop", "SELECT count(*) FROM orders"),
        "3"
    );
}

#[test]
fn filters_narrow_the_sessions_and_agents_cannot_reach_the_console() {
    let sink = Sink::start("127.0.0.2:0");
    let console = Console::start(PROBE_SINKS_POLICY, "");
    let target = sink.addr.to_string();
    let report = console.daemon.probe("probe", &["tcp", &target]);
    assert_eq!(report["ok"], true, "{report}");

    // An agent may not reach the console's port: refused in the kernel, recorded.
    let console_addr = format!("127.0.0.1:{}", console.port);
    let refused = console.daemon.probe("prober", &["tcp", &console_addr]);
    assert_probe_refused(&refused);
    let sessions = console
        .daemon
        .wait_for_sessions(Some("prober"), "the refusal", |s| !s.is_empty());
    assert_eq!(sessions[0]["decision"]["rule"], "kernel:daemon_port");
    assert_eq!(text(&sessions[0], "destination"), console_addr);
    console
        .daemon
        .wait_for_sessions(Some("probe"), "the probe's closed session", |s| {
            s.iter().any(|s| text(s, "state") == "closed")
        });

    let result = browser(
        "filters",
        &json!({
            "url": console.login(&[]), "base": console.base(), "shots": shots("filters"),
            "filters": {
                "agent": { "agent": "probe" },
                "denied": { "decision": "deny" },
                "agent_and_denied": { "agent": "probe", "decision": "deny" },
            },
        }),
    );
    let agents = |name: &str| -> Vec<String> {
        let rows = if name == "all" {
            &result[name]
        } else {
            &result[name]["rows"]
        };
        rows.as_array()
            .unwrap_or_else(|| panic!("{result:#}"))
            .iter()
            .map(|row| text(row, "agent").to_owned())
            .collect()
    };
    let all = agents("all");
    assert!(
        all.contains(&"probe".to_owned()) && all.contains(&"prober".to_owned()),
        "{result:#}"
    );
    assert_eq!(agents("agent"), ["probe"], "{result:#}");
    assert_eq!(agents("denied"), ["prober"], "{result:#}");
    assert!(agents("agent_and_denied").is_empty(), "{result:#}");
    assert!(
        text(&result["denied"], "url").ends_with("/sessions?decision=deny"),
        "{result:#}"
    );

    // Grants: created and revoked from the browser, recorded as the person who did it.
    let grants = browser(
        "grants",
        &json!({
            "url": console.login(&[]), "base": console.base(), "shots": shots("grants"),
            "agent": "probe", "resource": "sinks-v4", "operations": "connect",
            "reason": "debugging OPS-3", "revoke_reason": "done",
        }),
    );
    assert!(text(&grants, "created").contains("active"), "{grants:#}");
    assert!(
        text(&grants, "created").contains("debugging OPS-3"),
        "{grants:#}"
    );
    assert!(text(&grants, "revoked").contains("revoked"), "{grants:#}");
    let output = console
        .daemon
        .sluice(&["grants", "list", "--all", "--json"]);
    let listed: Value = serde_json::from_slice(&output.stdout).expect("grants JSON");
    assert_eq!(listed[0]["state"], "revoked", "{listed:#}");
    assert_eq!(listed[0]["created_by"], "root", "{listed:#}");
    assert_eq!(listed[0]["revoke_reason"], "done", "{listed:#}");
}

#[test]
fn an_ssh_recording_plays_in_the_browser_and_every_page_renders() {
    const AGENT: &str = "deployer";
    let server = SshServer::start();
    let policy = server.policy(
        "hosts",
        &[AGENT],
        &format!(
            "[[rule]]\nagent = {AGENT:?}\nresource = \"hosts\"\noperations = [\"admin\"]\naction = \"allow\"\n"
        ),
    );
    let console = Console::start(&policy, &server.credentials("ssh-key"));
    let client = SshClient::new(&console.daemon);
    let script = write_file(
        client.dir.path(),
        "typed.txt",
        b"echo hello-from-the-browser-test\nexit 3\n",
    );
    let mut args = client.options();
    args.extend([
        "-tt".into(),
        "-p".into(),
        server.port.to_string(),
        format!("root@{SSH_HOST}"),
    ]);
    let shell = client.run(&console.daemon, AGENT, "ssh", &args, Some(&script));
    assert_eq!(shell.status.code(), Some(3), "{}", console.daemon.log());
    let session = console
        .daemon
        .closed_session(AGENT, &format!("{SSH_HOST}:{}", server.port));
    let session = session["id"].as_u64().expect("session id");
    // The recording is stored as the channel ends; wait until the CLI replays it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let replay = console
            .daemon
            .sluice(&["replay", &session.to_string(), "--speed", "0"]);
        if String::from_utf8_lossy(&replay.stdout).contains("hello-from-the-browser-test") {
            break;
        }
        assert!(Instant::now() < deadline, "no recording: {replay:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let replay = browser(
        "replay",
        &json!({
            "url": console.login(&[]), "base": console.base(), "session": session,
            "shots": shots("replay"),
        }),
    );
    assert!(
        text(&replay, "screen").contains("hello-from-the-browser-test"),
        "{replay:#}"
    );
    assert!(
        !text(&replay, "atStart").contains("hello-from-the-browser-test"),
        "seeking to the start clears the screen: {replay:#}"
    );
    assert!(text(&replay, "timeline").contains("shell"), "{replay:#}");

    let pages = browser(
        "screenshots",
        &json!({
            "url": console.login(&["--viewer"]), "base": console.base(), "session": session,
            "shots": shots("pages"),
        }),
    );
    assert_eq!(pages["sessions"], "Sessions");
    assert_eq!(pages["session"], format!("Session #{session}"));
    assert_eq!(pages["approvals"], "Approvals");
    assert_eq!(pages["grants"], "Grants");
    assert_eq!(pages["status"], "Status");
}

/// npm's oidc-provider on a loopback port (tests/console/provider.mjs), stopped on drop.
struct Provider {
    child: Child,
    issuer: String,
}

impl Provider {
    fn start(client_id: &str, client_secret: &str, redirect_uri: &str) -> Self {
        use std::io::BufRead as _;
        let port = free_port();
        let mut child = Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("console/provider.mjs"))
            .env("SLUICE_NODE_MODULES", node_modules())
            .env("PROVIDER_PORT", port.to_string())
            .env("CLIENT_ID", client_id)
            .env("CLIENT_SECRET", client_secret)
            .env("REDIRECT_URI", redirect_uri)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run node");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(issuer) = line.strip_prefix("READY ") {
                    let _ = sender.send(issuer.to_owned());
                }
            }
        });
        let issuer = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("oidc-provider did not start (cargo xtask setup installs it)");
        Self { child, issuer }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn approvers_sign_in_through_the_identity_provider_and_their_identity_is_recorded() {
    let server = shop_server();
    let ui_port = free_port();
    let provider = Provider::start(
        "sluice-console",
        "console-secret",
        &format!("http://127.0.0.1:{ui_port}/oidc/callback"),
    );
    let daemon = TestDaemon::start_with_config(
        &review_policy(&server, "reviewed"),
        "[ui-oidc]\nuser = \"sluice-console\"\npassword = \"console-secret\"\n",
        &format!(
            "[ui]\nlisten = \"127.0.0.1:{ui_port}\"\n[ui.oidc]\nissuer = {issuer:?}\n\
             client_id = \"sluice-console\"\nclient_secret_credential = \"ui-oidc\"\n\
             approver_groups = [\"sre\"]\n",
            issuer = provider.issuer
        ),
    );
    let console = Console {
        daemon,
        port: ui_port,
    };
    let psql = spawn_psql(
        &console,
        &server,
        "reviewed",
        &["UPDATE orders SET item = 'bun' WHERE id = 1"],
    );
    let id = hold_id(
        &console
            .daemon
            .wait_for_statement_hold("reviewed", "UPDATE orders"),
    );

    // bob is in no approver group: a viewer.
    let bob = browser(
        "oidc",
        &json!({ "base": console.base(), "login": "bob", "id": id, "shots": shots("oidc") }),
    );
    assert!(
        text(&bob, "who").contains("bob@example.test · viewer"),
        "{bob:#}"
    );
    assert_eq!(bob["buttons"], 0, "{bob:#}");

    let alice = browser(
        "oidc",
        &json!({
            "base": console.base(), "login": "alice", "id": id, "reason": "change OPS-12",
            "shots": shots("oidc"),
        }),
    );
    assert!(
        text(&alice, "who").contains("alice@example.test · approver"),
        "{alice:#}"
    );
    assert!(
        text(&alice, "decided").contains(&format!(
            "Approval #{id} approved by alice@example.test (via {}, groups sre): change OPS-12",
            provider.issuer
        )),
        "{alice:#}"
    );
    let output = finish(psql, Duration::from_secs(30));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("UPDATE 1"),
        "{output:?}"
    );
    let statements = console.daemon.show_newest_closed_session("reviewed")["statements"].clone();
    let update = statements
        .as_array()
        .expect("statements")
        .iter()
        .find(|s| text(s, "sql").contains("UPDATE orders"))
        .cloned()
        .expect("the update's record");
    let approval = &update["approval"];
    assert_eq!(approval["outcome"], "approved", "{update:#}");
    assert_eq!(approval["approver_uid"], Value::Null, "{update:#}");
    assert_eq!(approval["approver_name"], "alice@example.test");
    assert_eq!(
        approval["approver_identity"]["issuer"],
        provider.issuer.as_str()
    );
    assert_eq!(approval["approver_identity"]["subject"], "alice");
    assert_eq!(approval["approver_identity"]["email"], "alice@example.test");
    assert_eq!(approval["approver_identity"]["groups"], json!(["sre"]));
}
