//! The live policy end to end: `sluice policy check` through the binary, hot reload
//! (file watch and SIGHUP) under a running psql session, just-in-time grants (expiry and
//! revocation at the next statement), `sluice policy explain` against the live decision,
//! and agents kept away from the daemon's control socket and ports.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    postgres::{APP_PASSWORD as PASSWORD, PgServer, Rule, pg_bin, pg_policy, shop_server},
    text,
};

/// One psql process run as an agent, fed statements one at a time on one session.
struct PsqlSession {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    marks: u32,
}

impl PsqlSession {
    fn start(daemon: &TestDaemon, agent: &str, server: &PgServer) -> Self {
        // stdbuf: psql's stdout is block-buffered on a pipe; each answer is needed at once.
        let script = format!(
            "exec stdbuf -oL -eL {} -X -A -t -d '{}' 2>&1",
            pg_bin("psql").display(),
            server.conninfo("app", "shop")
        );
        let mut command = Command::new(sluice_tests::sluice_bin());
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| k.starts_with("PG")) {
                command.env_remove(key);
            }
        }
        let mut child = command
            .arg("--config")
            .arg(&daemon.config_path)
            .args(["run", "--agent", agent, "--", "sh", "-c", &script])
            .env("SLUICE_LOG", "warn")
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PSQLRC", "/dev/null")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start psql");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
            marks: 0,
        }
    }

    /// Runs one statement and returns everything psql printed for it.
    fn run(&mut self, sql: &str) -> String {
        self.marks += 1;
        let mark = format!("--done-{}--", self.marks);
        writeln!(self.stdin, "{sql}\n\\echo {mark}").expect("write to psql");
        self.stdin.flush().expect("flush psql stdin");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == mark => return out.join("\n"),
                Ok(line) => out.push(line),
                Err(_) => panic!("psql gave no answer to {sql:?}; so far: {out:?}"),
            }
        }
    }

    /// Runs a statement the test expects to go through.
    fn allowed(&mut self, sql: &str) -> String {
        let out = self.run(sql);
        assert!(!out.contains("ERROR"), "{sql:?} was refused: {out}");
        out
    }

    /// Runs a statement the test expects sluice to refuse, by `rule`.
    fn refused(&mut self, sql: &str, rule: &str) -> String {
        let out = self.run(sql);
        assert!(
            out.contains(&format!("denied by policy rule `{rule}`")),
            "{sql:?} was not refused by {rule}: {out}"
        );
        out
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "\\q");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn generation(daemon: &TestDaemon) -> u64 {
    daemon.status_json()["policy"]["generation"]
        .as_u64()
        .expect("generation")
}

/// Waits until the daemon reports policy generation `wanted`.
fn wait_for_generation(daemon: &TestDaemon, wanted: u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while generation(daemon) < wanted {
        assert!(
            Instant::now() < deadline,
            "the policy was not reloaded to generation {wanted}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(generation(daemon), wanted, "{}", daemon.log());
}

fn policy_file(daemon: &TestDaemon) -> PathBuf {
    daemon.dir.path().join("policies").join("test.toml")
}

/// Rewrites a file in place (same inode), as an editor saving over it does.
fn rewrite_in_place(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open policy file");
    file.write_all(text.as_bytes()).expect("write policy file");
}

/// Replaces the policy file with a symlink to `target`, in one rename (one reload).
fn replace_with_symlink(daemon: &TestDaemon, target: &Path) {
    let staged = daemon.dir.path().join("staged-link.toml");
    std::os::unix::fs::symlink(target, &staged).expect("symlink");
    std::fs::rename(&staged, policy_file(daemon)).expect("rename the symlink into place");
}

fn sluice_json(daemon: &TestDaemon, args: &[&str]) -> Value {
    let output = daemon.sluice(args);
    assert!(
        output.status.success(),
        "sluice {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON output")
}

/// The statement records of the agent's only session, once `count` are recorded.
fn statements_of_only_session(daemon: &TestDaemon, agent: &str, count: usize) -> Vec<Value> {
    let sessions = daemon.wait_for_sessions(Some(agent), "the session", |s| !s.is_empty());
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    let id = sessions[0]["id"].as_u64().expect("id");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let show = daemon.show_session(id);
        let statements = show["statements"].as_array().cloned().unwrap_or_default();
        if statements.len() >= count {
            return statements;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {count} statements recorded",
            statements.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The arguments of `sluice grant` giving `app-agent` the operation classes `allow`
/// on `pg` for `duration`, because `reason`.
fn grant_args<'a>(allow: &'a str, duration: &'a str, reason: &'a str) -> Vec<&'a str> {
    vec![
        "grant",
        "--agent",
        "app-agent",
        "--resource",
        "pg",
        "--allow",
        allow,
        "--for",
        duration,
        "--reason",
        reason,
    ]
}

/// [`grant_args`] with `--json`: the grant made.
fn grant_json(daemon: &TestDaemon, allow: &str, duration: &str, reason: &str) -> Value {
    let mut args = grant_args(allow, duration, reason);
    args.push("--json");
    sluice_json(daemon, &args)
}

/// The arguments of `sluice policy explain` for `app-agent` on `pg`, then `what`
/// (`--sql ...`, `--operation ...`, ...).
fn explain_args<'a>(what: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "policy",
        "explain",
        "--agent",
        "app-agent",
        "--resource",
        "pg",
    ];
    args.extend_from_slice(what);
    args
}

/// [`explain_args`] with `--json`: the explanation.
fn explain_json(daemon: &TestDaemon, what: &[&str]) -> Value {
    let mut args = explain_args(what);
    args.push("--json");
    sluice_json(daemon, &args)
}

/// The rule that decided each of `statements` (records).
fn decision_rules(statements: &[Value]) -> Vec<&str> {
    statements
        .iter()
        .map(|s| s["decision"]["rule"].as_str().unwrap_or_default())
        .collect()
}

/// Runs `sluice policy check` on a directory holding `files`.
fn policy_check(files: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write policy file");
    }
    let output = Command::new(sluice_tests::sluice_bin())
        .args(["policy", "check"])
        .arg(dir.path())
        .output()
        .expect("run sluice policy check");
    // Paths relative to the directory, as a user running it there would read them.
    let stderr =
        String::from_utf8_lossy(&output.stderr).replace(&format!("{}/", dir.path().display()), "");
    (output.status.code(), stderr)
}

/// The problem reported at `place` (`FILE:LINE:`), which must carry a column.
fn problem_at<'a>(stderr: &'a str, place: &str) -> &'a str {
    let line = stderr
        .lines()
        .find(|line| line.starts_with(place))
        .unwrap_or_else(|| panic!("no problem reported at {place}:\n{stderr}"));
    let column = line[place.len()..]
        .split(':')
        .next()
        .and_then(|column| column.parse::<u32>().ok());
    assert!(column.is_some_and(|c| c >= 1), "no column in {line}");
    line
}

const BASE_POLICY: &str = "[[agent]]\nname = \"ci-bot\"\n\n\
    [[resource]]\nname = \"orders-db\"\naddresses = [\"127.0.0.2\"]\nports = [5432]\nprotocol = \"postgres\"\n\n\
    [[rule]]\nagent = \"ci-bot\"\nresource = \"orders-db\"\noperations = [\"read\"]\naction = \"allow\"\n";

#[test]
fn policy_check_reports_each_problem_at_its_file_and_line_with_a_failing_exit() {
    assert_eq!(policy_check(&[("10-base.toml", BASE_POLICY)]).0, Some(0));

    let (code, stderr) = policy_check(&[
        ("10-base.toml", BASE_POLICY),
        (
            "20-rules.toml",
            "[[rule]]\nagent = \"ci-bto\"\nresource = \"orders-db\"\naction = \"allow\"\n\n\
             [[rule]]\nagent = \"ci-bot\"\nresource = \"orders-dv\"\naction = \"allow\"\n\n\
             [[rule]]\nagent = \"ci-bot\"\nresource = \"orders-db\"\noperations = [\"read\", \"write\"]\naction = \"deny\"\n",
        ),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(problem_at(&stderr, "20-rules.toml:2:").contains("undefined agent `ci-bto`"));
    assert!(problem_at(&stderr, "20-rules.toml:8:").contains("undefined resource `orders-dv`"));
    let conflict = problem_at(&stderr, "20-rules.toml:11:");
    assert!(
        conflict.contains("conflicts with rule") && conflict.contains("10-base.toml:10"),
        "{conflict}"
    );

    let (code, stderr) = policy_check(&[(
        "30-typo.toml",
        "[[agent]]\nname = \"ci-bot\"\n\n[[rule]]\nagent = \"ci-bot\"\nresorce = \"orders-db\"\naction = \"allow\"\n",
    )]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        problem_at(&stderr, "30-typo.toml:6:").contains("resorce"),
        "{stderr}"
    );

    let (code, stderr) = policy_check(&[("40-broken.toml", "[[agent]]\nname = \"x\"\n[[rule]\n")]);
    assert_eq!(code, Some(1), "{stderr}");
    problem_at(&stderr, "40-broken.toml:3:");
}

#[test]
fn a_running_session_follows_valid_reloads_and_ignores_invalid_ones() {
    let server = shop_server();
    let reader = [Rule::allow("app-agent", &["read"]).named("reads")];
    let writer = [
        Rule::allow("app-agent", &["read"]).named("reads"),
        Rule::allow("app-agent", &["write"]).named("writes"),
    ];
    let daemon = TestDaemon::start(&server.policy(&["app-agent"], &reader));
    assert_eq!(generation(&daemon), 1);
    let mut psql = PsqlSession::start(&daemon, "app-agent", &server);
    assert_eq!(psql.allowed("SELECT count(*) FROM orders;"), "3");
    psql.refused("INSERT INTO orders VALUES (4, 'bread');", "default-deny");

    // Rewritten in place, no signal: the watch picks it up.
    rewrite_in_place(
        &policy_file(&daemon),
        &server.policy(&["app-agent"], &writer),
    );
    wait_for_generation(&daemon, 2);
    assert_eq!(
        psql.allowed("INSERT INTO orders VALUES (4, 'bread');"),
        "INSERT 0 1"
    );

    // An invalid file changes nothing, and says why.
    let broken = server
        .policy(&["app-agent"], &reader)
        .replace("action", "acton");
    rewrite_in_place(&policy_file(&daemon), &broken);
    let deadline = Instant::now() + Duration::from_secs(15);
    let rejected = loop {
        let status = daemon.status_json();
        if !status["policy"]["last_rejected"].is_null() {
            break status["policy"]["last_rejected"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no rejection reported:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(rejected["trigger"], "file_change");
    let errors: Vec<&str> = rejected["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        !errors.is_empty()
            && errors
                .iter()
                .all(|e| e.contains("test.toml:") && e.contains("acton")),
        "{errors:?}"
    );
    assert_eq!(generation(&daemon), 2);
    assert_eq!(
        psql.allowed("INSERT INTO orders VALUES (5, 'milk');"),
        "INSERT 0 1"
    );
    let human = String::from_utf8_lossy(&daemon.sluice(&["status"]).stdout).into_owned();
    assert!(
        human.contains("REJECTED") && human.contains("acton"),
        "{human}"
    );
    assert!(
        daemon.log().contains("policy reload rejected: ") && daemon.log().contains("acton"),
        "{}",
        daemon.log()
    );

    // A change the watch cannot see (the file is a symlink to one elsewhere) waits for
    // SIGHUP.
    let outside = daemon.dir.path().join("outside.toml");
    std::fs::write(&outside, server.policy(&["app-agent"], &writer)).expect("write");
    replace_with_symlink(&daemon, &outside);
    wait_for_generation(&daemon, 3);
    rewrite_in_place(&outside, &server.policy(&["app-agent"], &reader));
    assert_eq!(generation(&daemon), 3);
    let pid = daemon.status_json()["pid"].as_i64().expect("pid");
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    wait_for_generation(&daemon, 4);
    psql.refused("INSERT INTO orders VALUES (6, 'salt');", "default-deny");
    assert_eq!(psql.allowed("SELECT count(*) FROM orders;"), "5");

    // Every statement ran on the one session.
    let statements = statements_of_only_session(&daemon, "app-agent", 6);
    let rules = decision_rules(&statements);
    assert_eq!(
        rules,
        [
            "reads",
            "default-deny",
            "writes",
            "writes",
            "default-deny",
            "reads"
        ],
        "{statements:#?}"
    );
}

#[test]
fn a_grant_lets_a_denied_statement_run_until_it_expires_or_is_revoked() {
    let server = shop_server();
    let daemon = TestDaemon::start(&server.policy(
        &["app-agent"],
        &[
            Rule::allow("app-agent", &["read"]).named("reads"),
            Rule::deny("app-agent", &["ddl"]).named("no-ddl"),
        ],
    ));
    let mut psql = PsqlSession::start(&daemon, "app-agent", &server);
    psql.refused("INSERT INTO orders VALUES (10, 'a');", "default-deny");
    psql.refused("CREATE TABLE notes (id int);", "no-ddl");

    // Bad requests are refused with a reason, and create nothing.
    for (args, why) in [
        (
            ["--resource", "nope", "--for", "1m"],
            "defines no resource `nope`",
        ),
        (
            ["--resource", "pg", "--for", "0s"],
            "duration must be between",
        ),
        (
            ["--resource", "pg", "--for", "31d"],
            "duration must be between",
        ),
    ] {
        let mut all = vec!["grant", "--agent", "app-agent", "--allow", "write"];
        all.extend_from_slice(&args);
        all.extend_from_slice(&["--reason", "x"]);
        let refused = daemon.sluice(&all);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success() && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    }

    let grant = grant_json(&daemon, "write,ddl", "3s", "migration");
    let first = grant["id"].as_u64().expect("grant id");
    assert_eq!(grant["state"], "active");
    assert_eq!(grant["created_by_uid"], 0);
    assert_eq!(grant["created_by"], "root");
    assert_eq!(
        psql.allowed("INSERT INTO orders VALUES (10, 'a');"),
        "INSERT 0 1"
    );
    assert_eq!(psql.allowed("CREATE TABLE notes (id int);"), "CREATE TABLE");
    // Only the classes granted: a dangerous statement stays denied.
    psql.refused("DROP TABLE notes;", "default-deny");

    // Expiry: recorded once, by itself; the next statement is judged without it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all = sluice_json(&daemon, &["grants", "list", "--all", "--json"]);
        if all[0]["state"] == "expired" {
            break;
        }
        assert!(Instant::now() < deadline, "grant never expired: {all:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
    psql.refused("INSERT INTO orders VALUES (11, 'b');", "default-deny");
    assert_eq!(
        sluice_json(&daemon, &["grants", "list", "--json"]),
        Value::Array(vec![])
    );

    let grant = grant_json(&daemon, "write", "10m", "backfill");
    let second = grant["id"].as_u64().expect("grant id");
    assert!(second > first);
    assert_eq!(
        psql.allowed("INSERT INTO orders VALUES (11, 'b');"),
        "INSERT 0 1"
    );
    let revoke = daemon.sluice(&["revoke", &second.to_string(), "--reason", "done"]);
    assert!(revoke.status.success(), "{revoke:?}");
    psql.refused("INSERT INTO orders VALUES (12, 'c');", "default-deny");
    let again = daemon.sluice(&["revoke", &second.to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already revoked"));

    // Records name the grant; the grants list keeps who, why and how each ended.
    let statements = statements_of_only_session(&daemon, "app-agent", 8);
    let rules = decision_rules(&statements);
    let first_rule = format!("grant:{first}");
    let second_rule = format!("grant:{second}");
    assert_eq!(
        rules,
        [
            "default-deny",
            "no-ddl",
            first_rule.as_str(),
            first_rule.as_str(),
            "default-deny",
            "default-deny",
            second_rule.as_str(),
            "default-deny",
        ],
        "{statements:#?}"
    );
    let all = sluice_json(&daemon, &["grants", "list", "--all", "--json"]);
    assert_eq!(all[0]["state"], "revoked");
    assert_eq!(all[0]["revoked_by"], "root");
    assert_eq!(all[0]["revoke_reason"], "done");
    assert_eq!(all[1]["state"], "expired");
    assert_eq!(all[1]["reason"], "migration");
    assert!(daemon.log().contains("grant expired"), "{}", daemon.log());

    // The audit log has each change once, with who and why.
    let events = Command::new("curl")
        .args(["-sf", "--unix-socket"])
        .arg(&daemon.control_socket)
        .arg("http://localhost/v1/events?limit=1000")
        .output()
        .expect("curl /v1/events");
    assert!(events.status.success(), "{events:?}");
    let events: Value = serde_json::from_slice(&events.stdout).expect("events JSON");
    let changes: Vec<(u64, String, Value, Value)> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|stored| &stored["event"]["activity"])
        .filter(|activity| activity["type"] == "grant")
        .map(|grant| {
            (
                grant["grant_id"].as_u64().unwrap_or_default(),
                text(grant, "change").to_owned(),
                grant["by_name"].clone(),
                grant["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (first, "created".into(), "root".into(), "migration".into()),
            (first, "expired".into(), Value::Null, Value::Null),
            (second, "created".into(), "root".into(), "backfill".into()),
            (second, "revoked".into(), "root".into(), "done".into()),
        ],
        "{events:#}"
    );

    // Grants are on disk: a restarted daemon still knows them.
    let mut daemon = daemon;
    drop(psql);
    daemon.restart();
    let all = sluice_json(&daemon, &["grants", "list", "--all", "--json"]);
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all:#}");
}

#[test]
fn explain_agrees_with_the_live_decision() {
    let server = shop_server();
    let daemon = TestDaemon::start(&server.policy(
        &["app-agent"],
        &[
            Rule::allow("app-agent", &["read"]).named("reads"),
            Rule::deny("app-agent", &["write"]).named("no-writes"),
        ],
    ));
    let grant = daemon.sluice(&grant_args("ddl", "10m", "schema change"));
    assert!(grant.status.success(), "{grant:?}");
    let cases = [
        "SELECT item FROM orders WHERE id = 1",
        "INSERT INTO orders VALUES (20, 'x')",
        "UPDATE orders SET item = 'y' WHERE id = 2",
        "CREATE TABLE audit_notes (id int)",
        "DELETE FROM orders",
        "DROP TABLE orders",
        "GRANT SELECT ON orders TO PUBLIC",
        "SELEC broken syntax",
        "VACUUM orders",
    ];
    let mut psql = PsqlSession::start(&daemon, "app-agent", &server);
    let mut explained = Vec::new();
    for sql in cases {
        let online = explain_json(&daemon, &["--sql", sql]);
        let action = text(&online["decision"], "action").to_owned();
        let rule = text(&online["decision"], "rule").to_owned();
        let out = psql.run(&format!("{sql};"));
        if action == "allow" {
            assert!(
                !out.contains("ERROR"),
                "explain allowed {sql:?} by {rule}, live: {out}"
            );
        } else {
            assert!(
                out.contains(&format!("denied by policy rule `{rule}`")),
                "explain said {action} by {rule} for {sql:?}, live: {out}"
            );
        }
        explained.push((action, rule, online));
    }
    let statements = statements_of_only_session(&daemon, "app-agent", cases.len());
    for ((action, rule, online), record) in explained.iter().zip(&statements) {
        assert_eq!(
            record["decision"]["action"], *action,
            "{online:#}\n{record:#}"
        );
        assert_eq!(record["decision"]["rule"], *rule, "{online:#}\n{record:#}");
        assert_eq!(
            record["operation"], online["statements"][0]["operation"],
            "{record:#}"
        );
        assert_eq!(
            record["kind"], online["statements"][0]["kind"],
            "{record:#}"
        );
    }
    let classes: Vec<&str> = explained
        .iter()
        .map(|(_, _, online)| text(&online["statements"][0], "operation"))
        .collect();
    assert_eq!(
        classes,
        [
            "read",
            "write",
            "write",
            "ddl",
            "dangerous",
            "dangerous",
            "dcl",
            "unparsed",
            "admin"
        ]
    );
    assert!(explained[3].1.starts_with("grant:"), "{:#}", explained[3].2);

    // Offline, from the files alone: the same except that grants do not count.
    let policy_dir = daemon.dir.path().join("policies");
    let offline = explain_json(
        &daemon,
        &[
            "--sql",
            cases[3],
            "--policy-dir",
            policy_dir.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(offline["decision"]["rule"], "default-deny", "{offline:#}");
    let human = daemon.sluice(&explain_args(&["--sql", cases[1]]));
    let human = String::from_utf8_lossy(&human.stdout).into_owned();
    assert!(
        human.contains("class write")
            && human.contains("deny by no-writes")
            && human.contains("orders"),
        "{human}"
    );
}

#[test]
fn agents_cannot_use_the_control_socket_or_reach_the_daemons_ports() {
    let mut daemon = TestDaemon::start(
        "[[agent]]\nname = \"probe\"\n\n\
         [[resource]]\nname = \"anything\"\naddresses = [\"127.0.0.0/8\", \"::1\"]\nports = [\"1-65535\"]\n\n\
         [[rule]]\nagent = \"probe\"\nresource = \"anything\"\naction = \"allow\"\n",
    );
    // Every TCP port the daemon can open: the redirect listeners and the metrics endpoint.
    let metrics = format!("127.0.0.1:{}", sluice_tests::free_port());
    let mut config = std::fs::read_to_string(&daemon.config_path).expect("config");
    config.push_str(&format!("[metrics]\nlisten = {metrics:?}\n"));
    std::fs::write(&daemon.config_path, config).expect("write config");
    daemon.restart();
    let socket = daemon.control_socket.to_str().expect("utf-8").to_owned();
    let curl = |options: &[&str]| {
        let mut args = vec!["run", "--agent", "probe"];
        args.extend_from_slice(options);
        args.extend_from_slice(&[
            "--", "curl", "-s", "-o", "/dev/stderr", "-w", "%{http_code}", "-X", "POST",
            "--unix-socket", &socket, "http://localhost/v1/grants",
            "-d", r#"{"agent":"probe","resource":"anything","operations":["write"],"duration_seconds":60,"reason":"self-service"}"#,
        ]);
        daemon.sluice(&args)
    };
    // Root inside the managed cgroup: the daemon answers 403 and records it.
    let as_root = curl(&[]);
    assert_eq!(
        String::from_utf8_lossy(&as_root.stdout),
        "403",
        "{as_root:?}"
    );
    assert!(
        String::from_utf8_lossy(&as_root.stderr).contains("agents may not use the control API")
    );
    // Another user in the cgroup: the socket's mode keeps it out before the daemon sees it.
    let as_nobody = curl(&["--user", "nobody"]);
    assert_eq!(
        String::from_utf8_lossy(&as_nobody.stdout),
        "000",
        "{as_nobody:?}"
    );
    assert_eq!(
        sluice_json(&daemon, &["grants", "list", "--all", "--json"]),
        Value::Array(vec![])
    );

    let mut targets: Vec<String> = daemon.status_json()["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .filter_map(Value::as_str)
        .filter(|listener| !listener.starts_with("udp/"))
        .map(str::to_owned)
        .collect();
    assert_eq!(targets.len(), 2, "{targets:?}");
    targets.push(metrics.clone());
    for target in &targets {
        let report = daemon.probe("probe", &["tcp", target]);
        assert_eq!(report["ok"], false, "{target}: {report}");
        assert!(
            text(&report, "error").contains("PermissionDenied"),
            "{report}"
        );
    }
    let sessions = daemon.wait_for_sessions(Some("probe"), "four refusals", |s| s.len() >= 4);
    let mut refusals: Vec<(String, String)> = sessions
        .iter()
        .map(|s| {
            (
                text(s, "destination").to_owned(),
                text(&s["decision"], "rule").to_owned(),
            )
        })
        .collect();
    refusals.sort();
    let mut expected = vec![
        (metrics, "kernel:daemon_port".to_owned()),
        (
            format!("127.0.0.1:{}", daemon.port),
            "kernel:daemon_port".to_owned(),
        ),
        (
            "control-socket".to_owned(),
            "control:unauthorized".to_owned(),
        ),
        (
            format!("[::1]:{}", daemon.port),
            "kernel:daemon_port".to_owned(),
        ),
    ];
    expected.sort();
    assert_eq!(refusals, expected, "{sessions:#?}");
}

/// The agent and resource of `server.policy`, a read rule under mask profile `pii`,
/// and `pii` redacting `column`.
fn masked_reader_policy(server: &PgServer, column: &str) -> String {
    format!(
        "{}[[rule]]\nname = \"reads\"\nagent = \"app-agent\"\nresource = \"pg\"\n\
         operations = [\"read\"]\naction = \"allow\"\nmask = \"pii\"\n\n\
         [[mask]]\nname = \"pii\"\n\n[[mask.rule]]\ncolumn = {column:?}\nstrategy = \"redact\"\n",
        server.policy(&["app-agent"], &[])
    )
}

#[test]
fn masks_follow_reloads_and_a_grant_keeps_the_readers_mask() {
    let server = shop_server();
    let daemon = TestDaemon::start(&masked_reader_policy(&server, "item"));
    let mut psql = PsqlSession::start(&daemon, "app-agent", &server);
    let query = "SELECT id, item FROM orders WHERE id = 1;";
    assert_eq!(psql.allowed(query), "1|[REDACTED]");

    // The same profile name, new content: the open session masks by the new one.
    rewrite_in_place(&policy_file(&daemon), &masked_reader_policy(&server, "id"));
    wait_for_generation(&daemon, 2);
    assert_eq!(psql.allowed(query), "[REDACTED]|tea");

    // A grant lets the write run, but what comes back is masked as a read would be.
    psql.refused(
        "INSERT INTO orders VALUES (7, 'pie') RETURNING id, item;",
        "default-deny",
    );
    let grant = daemon.sluice(&grant_args("write", "10m", "fix a row"));
    assert!(grant.status.success(), "{grant:?}");
    let out = psql.allowed("INSERT INTO orders VALUES (7, 'pie') RETURNING id, item;");
    assert!(out.lines().any(|line| line == "[REDACTED]|pie"), "{out}");
    let explain = explain_json(&daemon, &["--operation", "write"]);
    assert_eq!(explain["decision"]["mask"], "pii", "{explain:#}");
    assert!(text(&explain["decision"], "rule").starts_with("grant:"));
}

/// What the running daemon decides for `operation` by `app-agent` on `pg`: the rule.
fn live_rule(daemon: &TestDaemon, operation: &str) -> String {
    let explained = explain_json(daemon, &["--operation", operation]);
    text(&explained["decision"], "rule").to_owned()
}

#[test]
fn policy_reload_on_demand_and_after_the_directory_is_replaced() {
    let port = sluice_tests::free_port();
    let reader = pg_policy(
        &["127.0.0.2"],
        port,
        &["app-agent"],
        &[Rule::allow("app-agent", &["read"]).named("reads")],
    );
    let writer = pg_policy(
        &["127.0.0.2"],
        port,
        &["app-agent"],
        &[Rule::allow("app-agent", &["read", "write"]).named("writes")],
    );
    let daemon = TestDaemon::start(&reader);
    assert_eq!(live_rule(&daemon, "write"), "default-deny");

    // Behind a symlink the watch cannot see the edits: `sluice policy reload` applies them.
    let outside = daemon.dir.path().join("outside.toml");
    std::fs::write(&outside, &reader).expect("write");
    replace_with_symlink(&daemon, &outside);
    wait_for_generation(&daemon, 2);
    rewrite_in_place(&outside, &writer.replace("action", "acton"));
    let rejected = daemon.sluice(&["policy", "reload"]);
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert_eq!(rejected.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("test.toml:") && stderr.contains("acton") && stderr.contains("rejected"),
        "{stderr}"
    );
    assert_eq!(
        daemon.status_json()["policy"]["last_rejected"]["trigger"],
        "api"
    );
    assert_eq!(generation(&daemon), 2);
    assert_eq!(live_rule(&daemon, "write"), "default-deny");

    rewrite_in_place(&outside, &writer);
    let applied = daemon.sluice(&["policy", "reload"]);
    assert!(applied.status.success(), "{applied:?}");
    assert!(String::from_utf8_lossy(&applied.stdout).contains("generation 3"));
    assert_eq!(live_rule(&daemon, "write"), "writes");

    // The whole directory swapped for another (as config managers do): watched again.
    let policies = daemon.dir.path().join("policies");
    let replacement = daemon.dir.path().join("policies.new");
    std::fs::create_dir(&replacement).expect("mkdir");
    std::fs::write(replacement.join("test.toml"), &reader).expect("write");
    std::fs::rename(&policies, daemon.dir.path().join("policies.old")).expect("rename");
    std::fs::rename(&replacement, &policies).expect("rename");
    wait_for_generation(&daemon, 4);
    assert_eq!(live_rule(&daemon, "write"), "default-deny");
    rewrite_in_place(&policy_file(&daemon), &writer);
    wait_for_generation(&daemon, 5);
    assert_eq!(live_rule(&daemon, "write"), "writes");
}

/// A resource naming a protocol this sluice has no decoder for. Every protocol the
/// `Protocol` enum names is decoded today, so the test uses one it does not know: the
/// loader must refuse it rather than relay it as opaque TCP (the registry's own gating
/// of known-but-undecoded protocols has unit tests in `policy`).
const UNDECODED: &str = "[[resource]]\nname = \"api\"\naddresses = [\"127.0.0.2\"]\nports = [8080]\nprotocol = \"redis\"\n\n\
    [[rule]]\nagent = \"ci-bot\"\nresource = \"api\"\noperations = [\"read\"]\naction = \"allow\"\n";

const NOT_DECODED: &str = "unknown variant `redis`";

#[test]
fn a_protocol_sluice_cannot_decode_fails_check_reload_and_start() {
    let (code, stderr) = policy_check(&[("10-base.toml", BASE_POLICY), ("20-api.toml", UNDECODED)]);
    assert_eq!(code, Some(1), "{stderr}");
    let problem = problem_at(&stderr, "20-api.toml:5:");
    assert!(problem.contains(NOT_DECODED), "{problem}");

    // A running daemon keeps its policy and says why.
    let mut daemon = TestDaemon::start(BASE_POLICY);
    let policies = daemon.dir.path().join("policies");
    std::fs::write(policies.join("20-api.toml"), UNDECODED).expect("write policy");
    let rejected = daemon.sluice(&["policy", "reload"]);
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert_eq!(rejected.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(NOT_DECODED), "{stderr}");
    assert_eq!(generation(&daemon), 1);
    let errors = daemon.status_json()["policy"]["last_rejected"]["errors"].to_string();
    assert!(errors.contains(NOT_DECODED), "{errors}");

    // And a daemon does not start with it.
    daemon.kill();
    let mut child = Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice daemon");
    let deadline = Instant::now() + Duration::from_secs(30) * sluice_tests::slowdown();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon started with a policy naming an undecoded protocol");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("20-api.toml:5:") && stderr.contains(NOT_DECODED),
        "{stderr}"
    );
}

/// Runs `sluice ARGS` with stdout on a pipe whose reader has already gone (as after
/// `| head -1` has read its line) and returns its exit status and stderr.
fn sluice_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let output = Command::new(sluice_tests::sluice_bin())
        .args(args)
        .env("SLUICE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run sluice");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_cli_exits_quietly_when_its_output_pipe_closes_early() {
    let daemon = TestDaemon::start(BASE_POLICY);
    let config = daemon.config_path.display().to_string();
    let policies = daemon.dir.path().join("policies").display().to_string();
    for args in [
        vec!["--config", &config, "status"],
        vec!["--config", &config, "sessions", "list"],
        vec!["policy", "check", &policies],
    ] {
        let (status, stderr) = sluice_into_closed_pipe(&args);
        assert!(
            stderr.is_empty(),
            "sluice {args:?} wrote to stderr: {stderr}"
        );
        assert_eq!(status.code(), Some(141), "sluice {args:?}: {status}");
    }
}
