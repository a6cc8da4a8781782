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
