//! MySQL and MariaDB through sluice, against a real MariaDB 10.11 on loopback: logins
//! brokered with the resource's credential, every statement judged and recorded,
//! refused commands and statements that never reach the server (its general log says
//! so), masked rows, and real clients (mariadb, mariadb-dump, pymysql, MySQLdb,
//! sysbench) seeing through sluice what they see directly.

use std::process::Output;

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    mysql::{MariaServer, MyRule, agent_command, run_with_timeout},
    text,
};

const APP_PASSWORD: &str = "app-Secret-pw-41";

/// A server with database `shop`, user `app` (native password) and table `orders`
/// with 3 rows.
fn shop() -> MariaServer {
    let server = MariaServer::start();
    server.admin(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(40)); \
         INSERT INTO shop.orders VALUES (1, 'tea'), (2, 'cake'), (3, 'jam')",
    );
    server.create_user("app", APP_PASSWORD);
    server
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "client failed: {}\n{}",
        stderr(output),
        stdout(output)
    );
    stdout(output)
}

/// A daemon brokering `app` for `agents` under `rules`.
fn brokered(server: &MariaServer, agents: &[&str], rules: &[MyRule]) -> TestDaemon {
    TestDaemon::start_with_credentials(
        &server.policy(agents, Some("shop-app"), rules),
        &server.credentials("shop-app", "app", APP_PASSWORD),
    )
}

/// The statements recorded in `agent`'s sessions, newest session last.
fn statements(daemon: &TestDaemon, agent: &str) -> Vec<Value> {
    let sessions = daemon.sessions(Some(agent));
    let mut all = Vec::new();
    for session in sessions.iter().rev() {
        let id = session["id"].as_u64().expect("session id");
        let shown = daemon.show_session(id);
        all.extend(shown["statements"].as_array().cloned().unwrap_or_default());
    }
    all
}

/// Waits for a recorded statement matching `predicate`.
fn wait_for_statement(
    daemon: &TestDaemon,
    agent: &str,
    what: &str,
    predicate: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let all = statements(daemon, agent);
        if let Some(found) = all.iter().find(|s| predicate(s)) {
            return found.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no recorded statement {what}; recorded: {all:#?}\nlog:\n{}",
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn a_brokered_agent_reads_and_is_refused_a_drop_that_never_reaches_the_server() {
    let server = shop();
    let daemon = brokered(&server, &["bot"], &[MyRule::allow("bot", &["read"])]);
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &[
            "-N",
            "-B",
            "-e",
            "SELECT CONCAT(CURRENT_USER(), ' sees ', COUNT(*)) FROM orders",
        ],
    );
    assert_eq!(assert_ok(&output).trim(), "app@% sees 3");

    let output = server.client_as(&daemon, "bot", "shop", &["-e", "DROP TABLE orders"]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("sluice: DROP TABLE denied by policy rule"),
        "{error}"
    );
    assert!(!server.general_log().contains("DROP TABLE"));
    assert_eq!(server.admin("SELECT COUNT(*) FROM shop.orders").trim(), "3");

    let refused = wait_for_statement(&daemon, "bot", "for the DROP", |s| {
        text(s, "kind") == "DROP TABLE"
    });
    assert_eq!(refused["decision"]["action"], "deny", "{refused:#}");
    let read = wait_for_statement(&daemon, "bot", "for the SELECT", |s| {
        text(s, "kind") == "SELECT"
    });
    assert_eq!(read["rows"], 1, "{read:#}");
    assert!(!daemon.log().contains(APP_PASSWORD));
}

/// The classification cache shares a statement's class between statements of the same
/// shape (only their literals differ), except where a literal decides what the statement
/// does: `WHERE 1 = 1` changes every row (dangerous), `WHERE 1 = 0` none (a write).
#[test]
fn same_shape_statements_whose_literals_carry_meaning_are_judged_apart() {
    let server = shop();
    let daemon = brokered(
        &server,
        &["bot"],
        &[MyRule::allow("bot", &["read", "write"])],
    );
    // One session, one statement per COM_QUERY; --force goes on past each refusal.
    let script = "SELECT item FROM orders WHERE id = 1; \
         SELECT item FROM orders WHERE id = 2; \
         UPDATE orders SET item = 'none' WHERE 1 = 0; \
         UPDATE orders SET item = 'every-row-1' WHERE 1 = 1; \
         UPDATE orders SET item = 'none' WHERE 2 = 0; \
         DELETE FROM orders WHERE '0abc'; \
         DELETE FROM orders WHERE '1abc'; \
         UPDATE orders SET item = 'every-row-2' WHERE 7 = 7; \
         UPDATE orders SET item = 'biscuit' WHERE id = 3";
    let mut client = agent_command(&daemon, "bot", std::path::Path::new("/usr/bin/mariadb"));
    client
        .args(server.client_args("agent-user", "shop"))
        .args(["--force", "-N", "-B"]);
    let output = run_with_timeout(client, Some(script.replace("; ", ";\n").into_bytes()));
    let out = stdout(&output);
    assert!(
        out.contains("tea") && out.contains("cake"),
        "{out}\n{}",
        stderr(&output)
    );
    let refusals = stderr(&output)
        .matches("sluice: UPDATE denied by policy rule")
        .count()
        + stderr(&output)
            .matches("sluice: DELETE denied by policy rule")
            .count();
    assert_eq!(refusals, 3, "{}", stderr(&output));
    // No tautology reached the server; the bounded writes did.
    let log = server.general_log();
    assert!(
        !log.contains("every-row") && !log.contains("'1abc'"),
        "{log}"
    );
    assert!(
        log.contains("WHERE 2 = 0") && log.contains("'0abc'"),
        "{log}"
    );
    assert_eq!(
        server
            .admin("SELECT GROUP_CONCAT(item ORDER BY id) FROM shop.orders")
            .trim(),
        "tea,cake,biscuit"
    );

    let all = wait_for_statement(&daemon, "bot", "for the last UPDATE", |s| {
        text(s, "sql").contains("id = ?") && text(s, "kind") == "UPDATE"
    });
    assert_eq!(all["decision"]["action"], "allow", "{all:#}");
    let recorded = statements(&daemon, "bot");
    let judged: Vec<(String, String, String)> = recorded
        .iter()
        .filter(|s| matches!(text(s, "kind"), "UPDATE" | "DELETE"))
        .map(|s| {
            (
                text(s, "kind").to_owned(),
                text(s, "operation").to_owned(),
                text(&s["decision"], "action").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("UPDATE", "write", "allow"),
        ("UPDATE", "dangerous", "deny"),
        ("UPDATE", "write", "allow"),
        ("DELETE", "write", "allow"),
        ("DELETE", "dangerous", "deny"),
        ("UPDATE", "dangerous", "deny"),
        ("UPDATE", "write", "allow"),
    ]
    .iter()
    .map(|(kind, class, action)| ((*kind).into(), (*class).into(), (*action).into()))
    .collect();
    assert_eq!(judged, expected, "{recorded:#?}");
}

/// Runs the raw client (tests/mysql/raw_client.py) as `agent` with `commands` (hex);
/// returns its JSON lines.
fn raw_client(
    daemon: &TestDaemon,
    agent: &str,
    server: &MariaServer,
    commands: &[&str],
) -> Vec<Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/mysql/raw_client.py");
    let mut command = agent_command(daemon, agent, std::path::Path::new("/usr/bin/python3"));
    command
        .arg(script)
        .arg(sluice_tests::mysql::HOST)
        .arg(server.port().to_string())
        .args(commands);
    let output = run_with_timeout(command, None);
    assert_ok(&output)
        .lines()
        .map(|line| serde_json::from_str(line).expect("raw client JSON"))
        .collect()
}

/// The general log's lines about statements and commands of agents (not the daemon's
/// own session set-up, nor the test's admin connection).
fn agent_traffic(server: &MariaServer) -> String {
    server
        .general_log()
        .lines()
        .filter(|line| {
            !line.contains("session_track_system_variables")
                && !line.contains("@@session.sql_mode, @@session.character_set_client")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn statements_hidden_in_versioned_comments_are_judged_and_never_reach_the_server() {
    let server = shop();
    let daemon = brokered(&server, &["bot"], &[MyRule::allow("bot", &["read"])]);
    // MariaDB runs the contents of /*M!...*/: a DROP...
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &["-e", "/*M!100100 DROP TABLE orders */"],
    );
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("denied by policy rule"),
        "{}",
        stderr(&output)
    );
    // ...and a column reading the account table, smuggled into a harmless SELECT.
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &[
            "-e",
            "SELECT 1 /*M!100100 ,(SELECT COUNT(*) FROM mysql.user) */",
        ],
    );
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("denied by policy rule"),
        "{}",
        stderr(&output)
    );

    let log = agent_traffic(&server);
    assert!(!log.contains("DROP TABLE"), "{log}");
    assert!(!log.contains("mysql.user"), "{log}");
    assert_eq!(server.admin("SELECT COUNT(*) FROM shop.orders").trim(), "3");
    wait_for_statement(&daemon, "bot", "for the versioned DROP", |s| {
        text(s, "kind") == "DROP TABLE" && s["decision"]["action"] == "deny"
    });
    wait_for_statement(&daemon, "bot", "for the smuggled column", |s| {
        s["decision"]["action"] == "deny" && text(s, "sql").contains("mysql.user")
    });
}

#[test]
fn no_backslash_escapes_cannot_smuggle_a_second_statement() {
    let server = shop();
    let daemon = brokered(&server, &["bot"], &[MyRule::allow("bot", &["read"])]);
    // Under NO_BACKSLASH_ESCAPES the string ends at \' and a DROP follows; the client
    // (which does not know the mode) sends it all as one query.
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &[
            "-e",
            "SET sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES'); \
             SELECT 'a\\' ; DROP TABLE orders; -- '",
        ],
    );
    assert!(!output.status.success(), "{}", stdout(&output));
    assert!(stderr(&output).contains("sluice:"), "{}", stderr(&output));
    let log = agent_traffic(&server);
    assert!(log.contains("NO_BACKSLASH_ESCAPES"), "the SET ran: {log}");
    assert!(!log.contains("DROP TABLE"), "{log}");
    assert_eq!(server.admin("SELECT COUNT(*) FROM shop.orders").trim(), "3");
    wait_for_statement(&daemon, "bot", "for the smuggle", |s| {
        s["decision"]["action"] == "deny" && text(s, "sql").contains("DROP")
    });
    // Turning off the session tracking the daemon reads sql_mode from is refused too.
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &["-e", "SET @@session.session_track_system_variables = ''"],
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("mysql-session-tracking"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn malformed_packets_end_only_their_own_session() {
    let server = shop();
    let daemon = brokered(&server, &["bot"], &[MyRule::allow("bot", &["read"])]);
    // A login request that is three bytes of nothing, then a packet claiming 16 MB
    // that never comes: each session ends, the daemon goes on.
    let script = format!(
        "import socket\n\
         for junk in [b'\\x03\\x00\\x00\\x01abc', b'\\xff\\xff\\xff\\x01' + b'x' * 100]:\n\
         \x20   s = socket.create_connection(('{host}', {port}), timeout=10)\n\
         \x20   s.recv(4096)\n\
         \x20   s.sendall(junk)\n\
         \x20   s.shutdown(socket.SHUT_WR)\n\
         \x20   print(len(s.recv(4096)))\n",
        host = sluice_tests::mysql::HOST,
        port = server.port()
    );
    let mut command = agent_command(&daemon, "bot", std::path::Path::new("/usr/bin/python3"));
    command.args(["-c", &script]);
    assert_ok(&run_with_timeout(command, None));
    daemon.wait_for_sessions(
        Some("bot"),
        "two sessions ended by protocol errors",
        |sessions| {
            sessions
                .iter()
                .filter(|s| text(s, "close_reason").starts_with("protocol_error"))
                .count()
                == 2
        },
    );
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &["-N", "-B", "-e", "SELECT COUNT(*) FROM orders"],
    );
    assert_eq!(assert_ok(&output).trim(), "3");
}

#[test]
fn raw_admin_commands_are_refused_recorded_and_the_session_stays_usable() {
    let server = shop();
    let daemon = brokered(&server, &["bot"], &[MyRule::allow("bot", &["*"])]);
    // Directly, COM_SET_OPTION turns multi-statements on mid-session: the test can
    // see the difference.
    let set_option = "1b0000";
    let two_statements = format!("03{}", hex(b"SELECT 1; SELECT 2"));
    let direct = {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/mysql/raw_client.py");
        server.admin("CREATE USER 'raw'@'%'");
        let mut command = std::process::Command::new("/usr/bin/python3");
        command
            .arg(script)
            .arg(sluice_tests::mysql::HOST)
            .arg(server.port().to_string())
            .arg(set_option)
            .arg(&two_statements);
        run_with_timeout(command, None)
    };
    let direct: Vec<Value> = assert_ok(&direct)
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert_ne!(direct[2]["answer"]["first"], 0xFF, "{direct:?}");
    assert_eq!(
        direct[3]["answer"]["first"], 1,
        "two statements ran directly: {direct:?}"
    );

    let shutdown = "0800";
    let binlog_dump = "12040000000000010000006d7973716c2d62696e2e303030303031";
    let ping = "0e";
    let answers = raw_client(
        &daemon,
        "bot",
        &server,
        &[shutdown, binlog_dump, set_option, &two_statements, ping],
    );
    assert_eq!(answers[1]["login"]["first"], 0, "{answers:?}");
    for (index, name) in [
        (2, "COM_SHUTDOWN"),
        (3, "COM_BINLOG_DUMP"),
        (4, "COM_SET_OPTION"),
    ] {
        let answer = &answers[index]["answer"];
        assert_eq!(answer["first"], 0xFF, "{name}: {answers:?}");
        assert!(text(answer, "message").contains(name), "{answer}");
    }
    assert_eq!(
        answers[5]["answer"]["first"], 0xFF,
        "multi-statements stay off: {answers:?}"
    );
    assert_eq!(
        answers[6]["answer"]["first"], 0,
        "PING after the refusals: {answers:?}"
    );
    assert!(
        server.try_admin("SELECT 1").status.success(),
        "the server is up"
    );
    let log = agent_traffic(&server);
    assert!(!log.contains("Binlog Dump"), "{log}");
    assert_eq!(
        log.matches("SELECT 1; SELECT 2").count(),
        1,
        "only the direct one: {log}"
    );
    for name in ["COM_SHUTDOWN", "COM_BINLOG_DUMP", "COM_SET_OPTION"] {
        wait_for_statement(&daemon, "bot", name, |s| {
            text(s, "kind") == name && s["decision"]["action"] == "deny"
        });
    }
}

#[test]
fn file_access_is_refused_before_the_server_sees_it() {
    let server = shop();
    let daemon = brokered(
        &server,
        &["bot"],
        &[MyRule::allow("bot", &["read", "write"])],
    );
    let outfile = server_dir_file(&server, "leak.txt");
    for sql in [
        format!("SELECT * FROM orders INTO OUTFILE '{outfile}'"),
        "SELECT LOAD_FILE('/etc/hostname')".to_owned(),
        "LOAD DATA LOCAL INFILE '/etc/hostname' INTO TABLE orders".to_owned(),
        "LOAD DATA INFILE '/etc/hostname' INTO TABLE orders".to_owned(),
    ] {
        let output = server.client_as(&daemon, "bot", "shop", &["--local-infile=1", "-e", &sql]);
        assert!(!output.status.success(), "{sql}: {}", stdout(&output));
        assert!(
            stderr(&output).contains("denied by policy rule"),
            "{sql}: {}",
            stderr(&output)
        );
    }
    assert!(!std::path::Path::new(&outfile).exists());
    let log = agent_traffic(&server);
    assert!(!log.contains("OUTFILE"), "{log}");
    assert!(!log.contains("LOAD_FILE"), "{log}");
    assert!(!log.contains("LOAD DATA"), "{log}");
    wait_for_statement(&daemon, "bot", "for LOAD DATA LOCAL", |s| {
        text(s, "sql").contains("LOCAL INFILE") && s["decision"]["action"] == "deny"
    });
}

/// A path next to the server's files that a successful INTO OUTFILE would create.
fn server_dir_file(server: &MariaServer, name: &str) -> String {
    let datadir = server.admin("SELECT @@datadir");
    format!("{}/../{name}", datadir.trim().trim_end_matches('/'))
}

#[test]
fn a_refused_prepare_cannot_be_executed_by_name_or_by_statement_id() {
    let server = shop();
    let daemon = brokered(&server, &["bot"], &[MyRule::allow("bot", &["read"])]);
    // SQL-level PREPARE/EXECUTE.
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &["-e", "PREPARE s FROM 'DROP TABLE orders'"],
    );
    assert!(!output.status.success());
    let output = server.client_as(&daemon, "bot", "shop", &["-e", "EXECUTE s"]);
    assert!(!output.status.success());
    // Binary protocol: COM_STMT_PREPARE, then COM_STMT_EXECUTE of statement id -1 (the
    // last prepared, as MariaDB clients pipeline it).
    let prepare = format!("16{}", hex(b"DROP TABLE orders"));
    let execute_last = "17ffffffff0001000000";
    let answers = raw_client(&daemon, "bot", &server, &[&prepare, execute_last, "0e"]);
    assert_eq!(answers[2]["answer"]["first"], 0xFF, "{answers:?}");
    assert!(
        text(&answers[2]["answer"], "message").contains("denied"),
        "{answers:?}"
    );
    assert_eq!(answers[3]["answer"]["first"], 0xFF, "{answers:?}");
    assert_eq!(answers[4]["answer"]["first"], 0, "{answers:?}");
    let log = agent_traffic(&server);
    assert!(!log.contains("DROP TABLE"), "{log}");
    assert_eq!(server.admin("SELECT COUNT(*) FROM shop.orders").trim(), "3");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_agent_kills_its_own_queries_but_not_another_agents_connection() {
    let server = shop();
    let daemon = brokered(
        &server,
        &["bot", "other"],
        &[
            MyRule::allow("bot", &["read"]),
            MyRule::allow("other", &["read"]),
        ],
    );
    let sleeper = |agent: &'static str| {
        let mut command = agent_command(&daemon, agent, std::path::Path::new("/usr/bin/mariadb"));
        command.args(server.client_args("x", "shop")).args([
            "-N",
            "-B",
            "-e",
            &format!("SELECT SLEEP(30) AS {agent}_sleeps"),
        ]);
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sleeper")
    };
    let bot_sleeper = sleeper("bot");
    let id = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let id = server.admin(
                "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE '%bot_sleeps%' AND INFO NOT LIKE '%PROCESSLIST%'",
            );
            if !id.trim().is_empty() {
                break id.trim().to_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the sleeper never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // Another agent may not kill it.
    let output = server.client_as(&daemon, "other", "shop", &["-e", &format!("KILL {id}")]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not a session of this agent"),
        "{}",
        stderr(&output)
    );
    // Its own agent may, from a second connection.
    let started = std::time::Instant::now();
    let output = server.client_as(&daemon, "bot", "shop", &["-e", &format!("KILL QUERY {id}")]);
    assert_ok(&output);
    let sleeper_output = bot_sleeper.wait_with_output().expect("sleeper");
    assert!(started.elapsed() < std::time::Duration::from_secs(25));
    assert!(
        stderr(&sleeper_output).contains("interrupted"),
        "{}{}",
        stdout(&sleeper_output),
        stderr(&sleeper_output)
    );
    let log = agent_traffic(&server);
    assert_eq!(log.matches(&format!("KILL {id}")).count(), 0, "{log}");
    wait_for_statement(&daemon, "other", "for the refused KILL", |s| {
        text(s, "kind").starts_with("KILL") && s["decision"]["action"] == "deny"
    });
}

#[test]
fn brokering_logs_in_with_native_and_ed25519_credentials_and_a_wrong_one_fails_cleanly() {
    let server = shop();
    server.create_ed25519_user("ed", "ed-Secret-pw-77");
    let daemon = TestDaemon::start_with_credentials(
        &server.policy(
            &["bot"],
            Some("shop-ed"),
            &[MyRule::allow("bot", &["read"])],
        ),
        &server.credentials("shop-ed", "ed", "ed-Secret-pw-77"),
    );
    // ed25519: the server switches the daemon to client_ed25519 and checks its signature.
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &[
            "-N",
            "-B",
            "-e",
            "SELECT CURRENT_USER(), COUNT(*) FROM orders",
        ],
    );
    assert_eq!(assert_ok(&output).trim(), "ed@%\t3");
    assert!(
        server.general_log().contains("ed@127.0.0.1"),
        "logged in as ed"
    );

    assert!(!daemon.log().contains("ed-Secret-pw-77"));

    // A wrong credential: a clean MySQL error, no secret, recorded.
    let daemon = TestDaemon::start_with_credentials(
        &server.policy(
            &["bot"],
            Some("shop-wrong"),
            &[MyRule::allow("bot", &["read"])],
        ),
        &server.credentials("shop-wrong", "app", "not-the-Password-9"),
    );
    let output = server.client_as(&daemon, "bot", "shop", &["-e", "SELECT 1"]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(error.contains("ERROR 1045"), "{error}");
    assert!(
        error.contains("could not log in to `db` with its brokered credential"),
        "{error}"
    );
    assert!(!error.contains("not-the-Password-9"), "{error}");
    assert!(!daemon.log().contains("not-the-Password-9"));
    daemon.wait_for_sessions(Some("bot"), "the failed login's session", |sessions| {
        sessions
            .iter()
            .any(|s| text(s, "close_reason").starts_with("upstream_auth_failed"))
    });
}

#[test]
fn without_a_brokered_credential_the_agents_own_login_is_relayed() {
    let server = shop();
    let daemon =
        TestDaemon::start(&server.policy(&["bot"], None, &[MyRule::allow("bot", &["read"])]));
    let mut command = agent_command(&daemon, "bot", std::path::Path::new("/usr/bin/mariadb"));
    command
        .args(server.client_args("app", "shop"))
        .arg(format!("--password={APP_PASSWORD}"))
        .args(["-N", "-B", "-e", "SELECT CURRENT_USER()"]);
    assert_eq!(assert_ok(&run_with_timeout(command, None)).trim(), "app@%");
    let mut command = agent_command(&daemon, "bot", std::path::Path::new("/usr/bin/mariadb"));
    command.args(server.client_args("app", "shop")).args([
        "--password=wrong-one",
        "-e",
        "SELECT 1",
    ]);
    let output = run_with_timeout(command, None);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("Access denied"),
        "{}",
        stderr(&output)
    );
}

/// A hostile "server" that asks the client for a file (0xFB + name) whatever it is
/// asked, and reports what the client sent back.
fn rogue_server() -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    use std::io::{Read as _, Write as _};
    let listener = std::net::TcpListener::bind((sluice_tests::mysql::HOST, 0)).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut socket, _)) = listener.accept() else {
            return;
        };
        let _ = socket.set_read_timeout(Some(std::time::Duration::from_secs(20)));
        let send = |socket: &mut std::net::TcpStream, seq: u8, payload: &[u8]| {
            let mut packet = (payload.len() as u32).to_le_bytes()[..3].to_vec();
            packet.push(seq);
            packet.extend_from_slice(payload);
            socket.write_all(&packet)
        };
        let read = |socket: &mut std::net::TcpStream| -> Option<(u8, Vec<u8>)> {
            let mut header = [0u8; 4];
            socket.read_exact(&mut header).ok()?;
            let length =
                usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
            let mut payload = vec![0u8; length];
            socket.read_exact(&mut payload).ok()?;
            Some((header[3], payload))
        };
        // CLIENT_MYSQL | LONG_FLAG | CONNECT_WITH_DB | LOCAL_FILES | PROTOCOL_41 |
        // TRANSACTIONS | SECURE_CONNECTION | MULTI_RESULTS | PLUGIN_AUTH | SESSION_TRACK
        let capabilities: u32 =
            1 | 4 | 8 | 128 | 512 | 8192 | 32768 | (1 << 17) | (1 << 19) | (1 << 23);
        let mut greeting = vec![10];
        greeting.extend_from_slice(b"5.5.5-10.11.99-MariaDB-rogue\0");
        greeting.extend_from_slice(&7u32.to_le_bytes());
        greeting.extend_from_slice(b"abcdefgh\0");
        greeting.extend_from_slice(&(capabilities as u16).to_le_bytes());
        greeting.push(45);
        greeting.extend_from_slice(&2u16.to_le_bytes());
        greeting.extend_from_slice(&((capabilities >> 16) as u16).to_le_bytes());
        greeting.push(21);
        greeting.extend_from_slice(&[0; 10]);
        greeting.extend_from_slice(b"ijklmnopqrst\0");
        greeting.extend_from_slice(b"mysql_native_password\0");
        let ok = [0u8, 0, 0, 2, 0, 0, 0];
        if send(&mut socket, 0, &greeting).is_err() || read(&mut socket).is_none() {
            return;
        }
        let _ = send(&mut socket, 2, &ok);
        while let Some((_, command)) = read(&mut socket) {
            let text = String::from_utf8_lossy(&command[1..]).into_owned();
            if command.first() != Some(&3) {
                return;
            }
            if text.contains("session_track_system_variables") {
                let _ = send(&mut socket, 1, &ok);
            } else if text.contains("@@session.sql_mode") {
                let column = |name: &str| {
                    let mut def = Vec::new();
                    for part in ["def", "", "", "", name, ""] {
                        def.push(part.len() as u8);
                        def.extend_from_slice(part.as_bytes());
                    }
                    def.extend_from_slice(&[0x0c, 45, 0, 0, 1, 0, 0, 253, 0, 0, 0, 0, 0]);
                    def
                };
                let eof = [0xFE, 0, 0, 2, 0];
                let mut row = vec![19];
                row.extend_from_slice(b"STRICT_TRANS_TABLES");
                row.push(7);
                row.extend_from_slice(b"utf8mb4");
                let _ = send(&mut socket, 1, &[2]);
                let _ = send(&mut socket, 2, &column("a"));
                let _ = send(&mut socket, 3, &column("b"));
                let _ = send(&mut socket, 4, &eof);
                let _ = send(&mut socket, 5, &row);
                let _ = send(&mut socket, 6, &eof);
            } else {
                let mut request = vec![0xFB];
                request.extend_from_slice(b"/etc/shadow");
                let _ = send(&mut socket, 1, &request);
                let Some((seq, file)) = read(&mut socket) else {
                    return;
                };
                let _ = sender.send(file);
                let _ = send(&mut socket, seq.wrapping_add(1), &ok);
            }
        }
    });
    (port, receiver)
}

#[test]
fn a_rogue_servers_local_infile_request_gets_an_empty_file_and_is_recorded() {
    let (port, files) = rogue_server();
    let policy = format!(
        "[[agent]]\nname = \"bot\"\n\n[[resource]]\nname = \"rogue\"\naddresses = [\"{}\"]\nports = [{port}]\nprotocol = \"mysql\"\ncredential = \"any\"\n\n\
         [[rule]]\nname = \"bot-reads\"\nagent = \"bot\"\nresource = \"rogue\"\noperations = [\"read\"]\naction = \"allow\"\n",
        sluice_tests::mysql::HOST
    );
    let daemon =
        TestDaemon::start_with_credentials(&policy, "[any]\nuser = \"u\"\npassword = \"p\"\n");
    let mut command = agent_command(&daemon, "bot", std::path::Path::new("/usr/bin/mariadb"));
    command
        .args([
            "--no-defaults",
            "--protocol=TCP",
            "--local-infile=1",
            "--skip-ssl",
        ])
        .arg(format!("--host={}", sluice_tests::mysql::HOST))
        .arg(format!("--port={port}"))
        .args(["--user=x", "-e", "SELECT 1"]);
    let output = run_with_timeout(command, None);
    assert_ok(&output);
    let file = files
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("the rogue server got an answer");
    assert!(
        file.is_empty(),
        "the server got {} bytes of a file",
        file.len()
    );
    wait_for_statement(&daemon, "bot", "for the LOCAL INFILE request", |s| {
        text(s, "kind") == "LOCAL INFILE"
    });
}

const PLANTED: &[&str] = &[
    "alice@example.com",
    "4111 1111 1111 1111",
    "078-05-1120",
    "bob@example.org",
];

#[test]
fn planted_pii_is_masked_in_text_and_binary_results_and_never_stored() {
    let server = shop();
    server.admin(
        "CREATE TABLE shop.customers (id INT, email VARCHAR(80), note TEXT, age INT); \
         INSERT INTO shop.customers VALUES \
           (1, 'alice@example.com', 'card 4111 1111 1111 1111, ssn 078-05-1120', 31), \
           (2, 'bob@example.org', 'writes from bob@example.org', 42); \
         CREATE TABLE shop.invoices (customer_email VARCHAR(80), total INT); \
         INSERT INTO shop.invoices VALUES ('alice@example.com', 10), ('bob@example.org', 20)",
    );
    let policy = server.policy(
        &["analyst"],
        Some("shop-app"),
        &[MyRule::allow("analyst", &["read"]).with("mask = \"pii\"")],
    ) + "[[mask]]\nname = \"pii\"\n\n\
           [[mask.rule]]\ncolumn = \"*email*\"\nstrategy = \"hash\"\n\n\
           [[mask.rule]]\ndetectors = [\"credit_card\", \"us_ssn\", \"email\"]\nstrategy = \"redact\"\n";
    let daemon = TestDaemon::start_with_credentials(
        &policy,
        &server.credentials("shop-app", "app", APP_PASSWORD),
    );

    // Text protocol (the mariadb client).
    let output = server.client_as(
        &daemon,
        "analyst",
        "shop",
        &[
            "-N",
            "-B",
            "-e",
            "SELECT id, email, note, age FROM customers ORDER BY id; \
             SELECT customer_email FROM invoices ORDER BY total; \
             SELECT CONCAT('<', email, '>') AS e FROM customers ORDER BY id",
        ],
    );
    let text_out = assert_ok(&output);
    for value in PLANTED {
        assert!(!text_out.contains(value), "{value} leaked:\n{text_out}");
    }
    let lines: Vec<&str> = text_out.lines().collect();
    assert_eq!(lines.len(), 6, "{text_out}");
    let alice: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(alice[0], "1");
    assert!(alice[1].starts_with("h:"), "{text_out}");
    assert_eq!(alice[2], "card [CREDIT_CARD], ssn [US_SSN]");
    assert_eq!(alice[3], "31", "unmasked columns are untouched");
    // Hashes are stable, so masked columns still join across tables.
    assert_eq!(lines[2], alice[1], "{text_out}");
    // An expression over a masked column has no origin: masked as strictly.
    assert!(!lines[4].contains("example"), "{text_out}");

    // Binary protocol (prepared statements).
    let answers = raw_client(
        &daemon,
        "analyst",
        &server,
        &["stmt:SELECT id, email, note, age FROM shop.customers ORDER BY id"],
    );
    let binary = answers[2].to_string();
    for value in PLANTED {
        assert!(!binary.contains(value), "{value} leaked:\n{binary}");
    }
    let rows = &answers[2]["stmt"]["rows"];
    assert_eq!(rows[0][0], 1, "{binary}");
    assert_eq!(rows[0][1], alice[1], "{binary}");
    assert_eq!(rows[0][2], "card [CREDIT_CARD], ssn [US_SSN]", "{binary}");
    assert_eq!(rows[0][3], 31, "{binary}");

    // The records count what was masked, per column.
    let masked = wait_for_statement(&daemon, "analyst", "with masked columns", |s| {
        s["masked"]["email"] == 2
    });
    assert_eq!(masked["masked"]["note"], 2, "{masked:#}");

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

/// Every file under `dir`.
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

/// A policy allowing everything, brokering `app`.
fn open_daemon(server: &MariaServer) -> TestDaemon {
    brokered(server, &["bot"], &[MyRule::allow("bot", &["*"])])
}

/// Creates `shop.types`: one column per kind of value a client decodes differently,
/// rows with NULLs, non-ASCII text in two charsets, binary bytes and a 20 MB value.
fn plant_types(server: &MariaServer) {
    server.admin(
        "CREATE TABLE shop.types ( \
           id INT PRIMARY KEY, u VARCHAR(40) CHARACTER SET utf8mb4, \
           l VARCHAR(40) CHARACTER SET latin1, b VARBINARY(64), j JSON, d DATE, \
           dt DATETIME(6), t TIME(3), ts TIMESTAMP NULL, dec_ DECIMAL(30,10), f FLOAT, \
           g DOUBLE, bits BIT(12), e ENUM('tea','cake'), s SET('a','b','c'), y YEAR, \
           big BIGINT UNSIGNED, tiny TINYINT, lt LONGTEXT); \
         INSERT INTO shop.types VALUES \
           (1, 'naïve ☕ 🍰', 'café', UNHEX('00FF7F80015C27'), '{\"k\": [1, \"two\", null]}', \
            '2024-02-29', '2024-02-29 13:14:15.123456', '-838:59:59.000', '2024-01-01 00:00:01', \
            '-12345678901234567890.0123456789', 3.25, -1.5e300, b'101010101010', 'cake', 'a,c', \
            2155, 18446744073709551615, -128, 'short'), \
           (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
            NULL, NULL, NULL, NULL, NULL), \
           (3, '', '', '', '[]', '0001-01-01', '9999-12-31 23:59:59.999999', '00:00:00', NULL, \
            '0', 0, 0, b'0', 'tea', '', 1901, 0, 127, REPEAT('x', 20 * 1024 * 1024))",
    );
}

#[test]
fn the_mariadb_client_sees_every_column_type_as_it_does_directly() {
    let server = shop();
    plant_types(&server);
    let daemon = open_daemon(&server);
    for query in [
        "SELECT * FROM types ORDER BY id",
        "SELECT id, HEX(b), LENGTH(lt), MD5(lt), CHARSET(l), COLLATION(u) FROM types ORDER BY id",
        "SHOW CREATE TABLE types",
    ] {
        let args = ["-B", "--column-type-info", "-e", query];
        let direct = assert_ok(&server.client_direct("app", APP_PASSWORD, "shop", &args));
        let through = assert_ok(&server.client_as(&daemon, "bot", "shop", &args));
        assert!(direct.len() > 100, "{direct}");
        assert!(
            direct == through,
            "{query}: through sluice differs:\n{}",
            first_difference(&direct, &through)
        );
    }
    // The binary protocol too (the 20 MB value, split over two packets, excepted: the
    // raw client reads single packets).
    let query = "stmt:SELECT id, u, l, b, j, d, dt, t, ts, dec_, f, g, bits, e, s, y, big, tiny FROM shop.types ORDER BY id";
    server.admin("CREATE USER 'raw'@'%' IDENTIFIED BY ''; GRANT SELECT ON shop.* TO 'raw'@'%'");
    let direct = {
        let mut command = std::process::Command::new("/usr/bin/python3");
        command
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/mysql/raw_client.py"))
            .arg(sluice_tests::mysql::HOST)
            .arg(server.port().to_string())
            .arg(query);
        assert_ok(&run_with_timeout(command, None))
    };
    let direct: Value = serde_json::from_str(direct.lines().nth(2).expect("rows")).expect("JSON");
    let through = raw_client(&daemon, "bot", &server, &[query]);
    assert_eq!(
        direct["stmt"]["rows"].as_array().map(Vec::len),
        Some(3),
        "{direct}"
    );
    assert_eq!(direct, through[2], "binary rows differ");
}

fn first_difference(a: &str, b: &str) -> String {
    let at = a
        .bytes()
        .zip(b.bytes())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let from = at.saturating_sub(80);
    format!(
        "lengths {} and {}; at byte {at}:\n direct: {:?}\nthrough: {:?}",
        a.len(),
        b.len(),
        a.get(from..(at + 80).min(a.len())).unwrap_or_default(),
        b.get(from..(at + 80).min(b.len())).unwrap_or_default()
    )
}

#[test]
fn a_procedure_with_several_result_sets_comes_back_whole() {
    let server = shop();
    let mut command = std::process::Command::new("/usr/bin/mariadb");
    command
        .args(["--no-defaults", "-u", "root", "shop"])
        .arg(format!(
            "--socket={}",
            server.admin("SELECT @@socket").trim()
        ));
    assert_ok(&run_with_timeout(
        command,
        Some(
            b"DELIMITER //\nCREATE PROCEDURE report(IN n INT) BEGIN \
              SELECT id, item FROM orders WHERE id <= n ORDER BY id; \
              SELECT COUNT(*) AS total FROM orders; \
              UPDATE orders SET item = item WHERE id = 1; \
              SELECT 'done' AS status, n; END//\nDELIMITER ;\n"
                .to_vec(),
        ),
    ));
    let daemon = open_daemon(&server);
    let args = ["-e", "CALL report(2); SELECT 'after' AS next"];
    let direct = assert_ok(&server.client_direct("app", APP_PASSWORD, "shop", &args));
    let through = assert_ok(&server.client_as(&daemon, "bot", "shop", &args));
    assert!(
        direct.contains("total") && direct.contains("done") && direct.contains("after"),
        "{direct}"
    );
    assert_eq!(direct, through);
    wait_for_statement(&daemon, "bot", "for the CALL", |s| {
        text(s, "kind") == "CALL" && s["rows"].as_u64() >= Some(4)
    });
}

#[test]
fn a_dump_restored_through_sluice_equals_the_original() {
    let server = shop();
    plant_types(&server);
    server.admin("CREATE DATABASE shop_copy; GRANT ALL ON shop_copy.* TO 'app'@'%'");
    let daemon = open_daemon(&server);
    let dump_args = |host_args: Vec<String>, database: &str| -> Vec<String> {
        let mut args: Vec<String> = host_args.into_iter().filter(|a| a != "shop").collect();
        args.extend([
            "--skip-dump-date".into(),
            "--skip-comments".into(),
            database.into(),
        ]);
        args
    };
    // Dump through sluice, restore through sluice.
    let mut command = sluice_tests::mysql::agent_command(
        &daemon,
        "bot",
        std::path::Path::new("/usr/bin/mariadb-dump"),
    );
    command.args(dump_args(server.client_args("x", "shop"), "shop"));
    let dump = run_with_timeout(command, None);
    assert!(dump.status.success(), "{}", stderr(&dump));
    assert!(
        dump.stdout.len() > 20 * 1024 * 1024,
        "the dump holds the 20 MB value"
    );
    let mut command = sluice_tests::mysql::agent_command(
        &daemon,
        "bot",
        std::path::Path::new("/usr/bin/mariadb"),
    );
    command.args(server.client_args("x", "shop_copy"));
    assert_ok(&run_with_timeout(command, Some(dump.stdout.clone())));
    // Directly: the original and the copy dump the same, and as the dump through sluice.
    let direct = |database: &str| {
        let mut command = std::process::Command::new("/usr/bin/mariadb-dump");
        command
            .args(dump_args(server.client_args("app", "shop"), database))
            .arg(format!("--password={APP_PASSWORD}"));
        let output = run_with_timeout(command, None);
        assert!(output.status.success(), "{}", stderr(&output));
        output.stdout
    };
    let original = direct("shop");
    let copy = direct("shop_copy");
    assert!(
        original == dump.stdout,
        "the dump through sluice differs from the direct one"
    );
    assert!(
        original == copy,
        "the restored copy differs from the original"
    );
}

const PY_CLIENT: &str = r#"
import decimal, json, os, sys
driver = sys.argv[1]
if driver == "pymysql":
    import pymysql as db
    connect = lambda: db.connect(host=sys.argv[2], port=int(sys.argv[3]), user="app",
        password=os.environ.get("DB_PASSWORD", ""), database="shop", charset="utf8mb4")
else:
    import MySQLdb as db
    connect = lambda: db.connect(host=sys.argv[2], port=int(sys.argv[3]), user="app",
        passwd=os.environ.get("DB_PASSWORD", ""), db="shop", charset="utf8mb4")
conn = connect()
out = []
cur = conn.cursor()
cur.execute("SELECT id, u, l, HEX(b), j, d, dt, t, dec_, f, g, e, s, y, big, tiny FROM types WHERE id < 3 ORDER BY id")
out.append(repr(cur.fetchall()))
out.append(repr([d[:2] for d in cur.description]))
cur.execute("INSERT INTO orders VALUES (%s, %s)", (10, "it's \"quoted\" \\ ☕"))
cur.executemany("INSERT INTO orders VALUES (%s, %s)", [(11, "a"), (12, None)])
conn.commit()
cur.execute("START TRANSACTION")
cur.execute("DELETE FROM orders WHERE id = %s", (11,))
conn.rollback()
cur.execute("SELECT * FROM orders WHERE id >= 10 ORDER BY id")
out.append(repr(cur.fetchall()))
cur.execute("DELETE FROM orders WHERE id >= 10")
conn.commit()
out.append(repr(cur.rowcount))
try:
    cur.execute("SELECT * FROM no_such_table")
except Exception as e:
    out.append(repr(e.args[0]))
conn.ping()
conn.close()
print("\n".join(out))
"#;

#[test]
fn pymysql_and_mysqldb_see_through_sluice_what_they_see_directly() {
    let server = shop();
    plant_types(&server);
    let daemon = open_daemon(&server);
    for driver in ["pymysql", "MySQLdb"] {
        let mut direct = std::process::Command::new("/usr/bin/python3");
        direct
            .args(["-c", PY_CLIENT, driver, sluice_tests::mysql::HOST])
            .arg(server.port().to_string())
            .env("DB_PASSWORD", APP_PASSWORD);
        let direct = assert_ok(&run_with_timeout(direct, None));
        let mut through = agent_command(&daemon, "bot", std::path::Path::new("/usr/bin/python3"));
        through
            .args(["-c", PY_CLIENT, driver, sluice_tests::mysql::HOST])
            .arg(server.port().to_string());
        let through = assert_ok(&run_with_timeout(through, None));
        assert!(
            direct.contains("café") && direct.contains("1146"),
            "{driver}: {direct}"
        );
        assert_eq!(direct, through, "{driver}");
    }
}

/// `sysbench LUA` against the server, directly or as `agent`.
fn sysbench(server: &MariaServer, daemon: Option<&TestDaemon>, lua: &str, args: &[&str]) -> Output {
    let mut all: Vec<String> = vec![
        lua.into(),
        "--db-driver=mysql".into(),
        format!("--mysql-host={}", sluice_tests::mysql::HOST),
        format!("--mysql-port={}", server.port()),
        "--mysql-user=app".into(),
        "--mysql-db=shop".into(),
        "--mysql-ssl=off".into(),
        "--tables=2".into(),
        "--table-size=1000".into(),
    ];
    if daemon.is_none() {
        all.push(format!("--mysql-password={APP_PASSWORD}"));
    }
    all.extend(args.iter().map(|a| (*a).to_owned()));
    let mut command = match daemon {
        Some(daemon) => agent_command(daemon, "bot", std::path::Path::new("/usr/bin/sysbench")),
        None => std::process::Command::new("/usr/bin/sysbench"),
    };
    command.args(&all);
    run_with_timeout(command, None)
}

#[test]
fn sysbench_runs_without_errors_through_sluice_in_both_statement_modes() {
    let server = shop();
    let daemon = open_daemon(&server);
    assert_ok(&sysbench(&server, None, "oltp_read_write", &["prepare"]));
    for lua in ["oltp_read_only", "oltp_read_write"] {
        for mode in ["auto", "disable"] {
            let output = sysbench(
                &server,
                Some(&daemon),
                lua,
                &[
                    "--threads=2",
                    "--time=4",
                    &format!("--db-ps-mode={mode}"),
                    "run",
                ],
            );
            let report = assert_ok(&output);
            assert!(report.contains("transactions:"), "{lua} {mode}: {report}");
            let errors = report
                .lines()
                .find(|line| line.trim_start().starts_with("ignored errors:"))
                .unwrap_or_default();
            // sysbench ignores only the server's deadlock and lock-wait errors (1213,
            // 1020, 1205), which two writers may meet directly too: read-only runs
            // must have none; read-write runs may, and the consistency check below
            // still holds.
            if lua == "oltp_read_only" {
                assert!(errors.contains(" 0 "), "{lua} {mode}: {errors}\n{report}");
            }
        }
    }
    // The consistency check sysbench cannot do: the tables hold what they held.
    assert_eq!(
        server.admin("SELECT COUNT(*) FROM shop.sbtest1").trim(),
        "1000"
    );
}

/// One long-lived pymysql connection run as an agent: each statement written to it is
/// executed in the same session and answered with one JSON line.
struct PySession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

const PY_SESSION: &str = r#"
import json, sys, pymysql
conn = pymysql.connect(host=sys.argv[1], port=int(sys.argv[2]), user="x", password="",
                       database="shop", autocommit=True)
for line in sys.stdin:
    cur = conn.cursor()
    try:
        cur.execute(line.strip())
        print(json.dumps({"rows": [list(map(str, row)) for row in cur.fetchall()]}), flush=True)
    except pymysql.MySQLError as error:
        print(json.dumps({"error": [error.args[0], str(error.args[1])]}), flush=True)
"#;

impl PySession {
    fn start(daemon: &TestDaemon, agent: &str, server: &MariaServer) -> Self {
        // As `nobody`: root may approve what it holds, and nobody approves their own.
        let mut child = std::process::Command::new(sluice_tests::sluice_bin())
            .arg("--config")
            .arg(&daemon.config_path)
            .args([
                "run",
                "--agent",
                agent,
                "--user",
                "nobody",
                "--",
                "/usr/bin/python3",
            ])
            .args(["-c", PY_SESSION, sluice_tests::mysql::HOST])
            .arg(server.port().to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("start the python session");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        Self {
            child,
            stdin,
            stdout,
        }
    }

    /// Sends `sql` without waiting for its answer.
    fn send(&mut self, sql: &str) {
        use std::io::Write as _;
        writeln!(self.stdin, "{sql}").expect("write to the session");
        self.stdin.flush().expect("flush");
    }

    /// The answer to the statement sent before.
    fn answer(&mut self) -> Value {
        use std::io::BufRead as _;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read the answer");
        serde_json::from_str(&line).unwrap_or_else(|_| panic!("not an answer: {line:?}"))
    }

    fn run(&mut self, sql: &str) -> Value {
        self.send(sql);
        self.answer()
    }

    /// Runs `sql`, which must succeed; returns its rows.
    fn allowed(&mut self, sql: &str) -> Value {
        let answer = self.run(sql);
        assert!(answer["error"].is_null(), "{sql}: {answer}");
        answer["rows"].clone()
    }

    /// Runs `sql`, which must be refused by sluice naming `why`.
    fn refused(&mut self, sql: &str, why: &str) {
        let answer = self.run(sql);
        let message = answer["error"][1].as_str().unwrap_or_default().to_owned();
        assert!(
            message.contains("sluice") && message.contains(why),
            "{sql}: {answer}"
        );
    }
}

impl Drop for PySession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_statement_under_review_waits_for_a_human_and_runs_or_is_refused() {
    let server = shop();
    let daemon = brokered(
        &server,
        &["bot"],
        &[
            MyRule::allow("bot", &["read"]),
            MyRule::review("bot", &["write"]),
        ],
    );
    let mut session = PySession::start(&daemon, "bot", &server);
    assert_eq!(
        session.allowed("SELECT COUNT(*) FROM orders"),
        serde_json::json!([["3"]])
    );

    session.send("INSERT INTO orders VALUES (4, 'bread')");
    let hold = daemon.wait_for_statement_hold("bot", "INSERT INTO orders");
    assert_eq!(text(&hold, "resource"), "db");
    assert_eq!(
        text(&hold, "sql"),
        "INSERT INTO orders VALUES (?, ?)",
        "literals masked"
    );
    assert!(
        !server.general_log().contains("bread"),
        "held: not sent yet"
    );
    let id = hold["id"].as_u64().expect("id").to_string();
    let approve = daemon.sluice(&["approve", &id, "--reason", "ticket OPS-7"]);
    assert!(approve.status.success(), "{}", stderr(&approve));
    assert!(session.answer()["error"].is_null());
    assert_eq!(
        server
            .admin("SELECT item FROM shop.orders WHERE id = 4")
            .trim(),
        "bread"
    );

    session.send("DELETE FROM orders WHERE id = 4");
    let hold = daemon.wait_for_statement_hold("bot", "DELETE FROM orders");
    let id = hold["id"].as_u64().expect("id").to_string();
    let deny = daemon.sluice(&["deny", &id, "--reason", "not today"]);
    assert!(deny.status.success(), "{}", stderr(&deny));
    let answer = session.answer();
    let message = answer["error"][1].as_str().unwrap_or_default();
    assert!(
        message.contains("denied by root") && message.contains("not today"),
        "{answer}"
    );
    // The session goes on.
    assert_eq!(
        session.allowed("SELECT COUNT(*) FROM orders"),
        serde_json::json!([["4"]])
    );
    assert!(!server.general_log().contains("DELETE FROM orders"));

    let insert = wait_for_statement(&daemon, "bot", "for the approved INSERT", |s| {
        text(s, "kind") == "INSERT" && !s["approval"].is_null()
    });
    assert_eq!(insert["approval"]["outcome"], "approved", "{insert:#}");
    assert_eq!(insert["approval"]["reason"], "ticket OPS-7");
    let delete = wait_for_statement(&daemon, "bot", "for the refused DELETE", |s| {
        text(s, "kind") == "DELETE" && !s["approval"].is_null()
    });
    assert_eq!(delete["approval"]["outcome"], "denied", "{delete:#}");
}

#[test]
fn a_grant_lets_a_refused_statement_run_until_it_is_revoked() {
    let server = shop();
    let daemon = brokered(&server, &["bot"], &[MyRule::allow("bot", &["read"])]);
    let mut session = PySession::start(&daemon, "bot", &server);
    session.refused("INSERT INTO orders VALUES (4, 'bread')", "default-deny");
    let grant = daemon.sluice(&[
        "grant",
        "--agent",
        "bot",
        "--resource",
        "db",
        "--allow",
        "write",
        "--for",
        "10m",
        "--reason",
        "backfill",
        "--json",
    ]);
    assert!(grant.status.success(), "{}", stderr(&grant));
    let grant: Value = serde_json::from_slice(&grant.stdout).expect("grant JSON");
    session.allowed("INSERT INTO orders VALUES (4, 'bread')");
    let id = grant["id"].as_u64().expect("grant id").to_string();
    let revoke = daemon.sluice(&["revoke", &id, "--reason", "done"]);
    assert!(revoke.status.success(), "{}", stderr(&revoke));
    session.refused("INSERT INTO orders VALUES (5, 'milk')", "default-deny");
    assert_eq!(server.admin("SELECT COUNT(*) FROM shop.orders").trim(), "4");
}

#[test]
fn a_running_session_follows_reloads_even_for_statements_prepared_before() {
    let server = shop();
    let reader = [MyRule::allow("bot", &["read"])];
    let writer = [
        MyRule::allow("bot", &["read"]),
        MyRule::allow("bot", &["write"]),
    ];
    let policy = |rules: &[MyRule]| server.policy(&["bot"], Some("shop-app"), rules);
    let daemon = brokered(&server, &["bot"], &reader);
    let mut session = PySession::start(&daemon, "bot", &server);
    session.refused("INSERT INTO orders VALUES (4, 'bread')", "default-deny");

    let policy_file = daemon.dir.path().join("policies").join("test.toml");
    let generation = |daemon: &TestDaemon| daemon.status_json()["policy"]["generation"].as_u64();
    let reload = |rules: &[MyRule], wanted: u64| {
        std::fs::write(&policy_file, policy(rules)).expect("rewrite the policy");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while generation(&daemon) < Some(wanted) {
            assert!(
                std::time::Instant::now() < deadline,
                "no reload:\n{}",
                daemon.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    reload(&writer, 2);
    session.allowed("INSERT INTO orders VALUES (4, 'bread')");
    session.allowed("PREPARE add_row FROM 'INSERT INTO orders VALUES (5, ''milk'')'");

    // Prepared while writes were allowed; executed after they no longer are.
    reload(&reader, 3);
    session.refused("EXECUTE add_row", "default-deny");
    assert_eq!(server.admin("SELECT COUNT(*) FROM shop.orders").trim(), "4");
    assert!(!server.general_log().contains("EXECUTE add_row"));
}

#[test]
fn the_daemon_speaks_verified_tls_upstream_for_an_agent_that_does_not() {
    let pki = sluice_tests::pki::TestPki::for_host(sluice_tests::mysql::HOST);
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, certificate, key) = pki.write_to(dir.path());
    let server = MariaServer::start_tls(&certificate, &key, &ca);
    server.admin(
        "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT); \
         CREATE USER 'tls'@'%' IDENTIFIED BY 'tls-Secret-pw' REQUIRE SSL; \
         GRANT ALL ON shop.* TO 'tls'@'%'",
    );
    let policy = |ca_file: &std::path::Path| {
        server
            .policy(&["bot"], Some("shop-tls"), &[MyRule::allow("bot", &["read"])])
            .replace(
                "protocol = \"mysql\"",
                &format!(
                    "protocol = \"mysql\"\ntls = {{ mode = \"verify-full\", ca_file = {ca_file:?} }}"
                ),
            )
    };
    let credentials = server.credentials("shop-tls", "tls", "tls-Secret-pw");
    let daemon = TestDaemon::start_with_credentials(&policy(&ca), &credentials);
    // The agent speaks plain MySQL; the server sees TLS (the user requires it).
    let output = server.client_as(
        &daemon,
        "bot",
        "shop",
        &[
            "-N",
            "-B",
            "-e",
            "SELECT CURRENT_USER(), VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'",
        ],
    );
    assert_eq!(assert_ok(&output).trim(), "tls@%\t1");
    drop(daemon);

    // A CA that did not sign the server's certificate: refused, nothing relayed.
    let other = sluice_tests::pki::TestPki::for_host(sluice_tests::mysql::HOST);
    let other_dir = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = other.write_to(other_dir.path());
    let daemon = TestDaemon::start_with_credentials(&policy(&other_ca), &credentials);
    let output = server.client_as(&daemon, "bot", "shop", &["-e", "SELECT 1"]);
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("no verified TLS connection to `db`"),
        "{error}"
    );
    assert!(!error.contains("tls-Secret-pw"));
}
