//! MySQL and MariaDB through sluice, against a real MariaDB 10.11 on loopback: logins
//! brokered with the resource's credential, every statement judged and recorded,
//! refused commands and statements that never reach the server (its general log says
//! so), masked rows, and real clients (mariadb, mariadb-dump, pymysql, MySQLdb,
//! sysbench) seeing through sluice what they see directly.

use std::process::Output;

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    mysql::{MariaServer, MyRule},
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
