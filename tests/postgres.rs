//! PostgreSQL clients as agents: a real server on 127.0.0.2, the real psql, pgbench,
//! pg_dump and pg_restore started with `sluice run`, and a real daemon in between.
//!
//! These tests check what a user sees, so they hold whether the daemon relays the
//! connection as bytes or decodes PostgreSQL on the way: outputs identical to a direct
//! run, consistent server-side state, complete session records, and denied agents never
//! reaching the server.

use std::process::Output;

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    postgres::{PgCommand, PgServer, Rule},
    text,
};

const AGENT: &str = "analyst";
const PASSWORD: &str = "analyst-secret";
/// An agent the policy knows but gives no rule: denied by default.
const OUTSIDER: &str = "outsider";

/// A server with role `analyst`, and a daemon letting agent `analyst` do anything on it.
fn setup() -> (PgServer, TestDaemon) {
    let pg = PgServer::start();
    pg.create_role(AGENT, PASSWORD);
    let daemon = TestDaemon::start(&pg.policy(&[AGENT, OUTSIDER], &[Rule::allow(AGENT, &["*"])]));
    (pg, daemon)
}

fn psql_agent(daemon: &TestDaemon) -> PgCommand {
    PgCommand::agent(daemon, AGENT, "psql").password(PASSWORD)
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).expect("UTF-8 output")
}

/// Waits for at least `min` closed sessions of `exe_name` (e.g. `psql`) and checks each
/// names the agent, the tool, the database's address and resource, and moved bytes both
/// ways. Returns them.
fn closed_sessions_of(
    daemon: &TestDaemon,
    pg: &PgServer,
    exe_name: &str,
    min: usize,
) -> Vec<Value> {
    let suffix = format!("/{exe_name}");
    let of_tool = |s: &&Value| text(s, "exe").ends_with(&suffix);
    let sessions =
        daemon.wait_for_sessions(Some(AGENT), &format!("{min} {exe_name} sessions"), |all| {
            all.iter()
                .filter(of_tool)
                .filter(|s| text(s, "state") == "closed")
                .count()
                >= min
        });
    let sessions: Vec<Value> = sessions
        .iter()
        .filter(of_tool)
        .filter(|s| text(s, "state") == "closed")
        .cloned()
        .collect();
    for session in &sessions {
        assert_eq!(text(session, "agent"), AGENT, "{session:#}");
        assert_eq!(text(session, "comm"), exe_name, "{session:#}");
        assert_eq!(
            text(session, "destination"),
            pg.addr().to_string(),
            "{session:#}"
        );
        assert_eq!(text(session, "resource"), "pg", "{session:#}");
        assert_eq!(text(session, "transport"), "tcp", "{session:#}");
        assert_eq!(session["decision"]["action"], "allow", "{session:#}");
        assert_eq!(
            session["decision"]["rule"], "analyst-allow-all",
            "{session:#}"
        );
        assert!(session["bytes_up"].as_u64().unwrap_or(0) > 0, "{session:#}");
        assert!(
            session["bytes_down"].as_u64().unwrap_or(0) > 0,
            "{session:#}"
        );
    }
    sessions
}

/// A psql script covering what an analyst does: DDL, inserts, NULLs, unicode, large
/// values both ways, COPY both ways, multi-statement queries, notices, prepared
/// statements, and errors (inside a transaction, then ROLLBACK; and outside one).
fn psql_script() -> (String, usize) {
    // ~480 KB in one statement from the client, and back in one row.
    let big: String = (0..30_000).map(|i| format!("{i:05}-ü€🦀|")).collect();
    let script = format!(
        r#"CREATE TABLE items (
    id int PRIMARY KEY,
    name text,
    price numeric(10, 2),
    note text,
    tags text[],
    data jsonb,
    blob bytea
);
COMMENT ON TABLE items IS 'things — with ünïcödé';
INSERT INTO items VALUES
    (1, 'plain', 1.50, NULL, '{{a,b}}', '{{"k": [1, null]}}', '\x00ff'),
    (2, 'ünïcödé — 日本語 — 🦀', NULL, '', NULL, NULL, NULL),
    (3, NULL, 0, E'tab\there\nnewline', '{{NULL}}', 'null', '\x');
SELECT * FROM items ORDER BY id;
\pset null '<null>'
SELECT * FROM items ORDER BY id;
\x on
SELECT * FROM items WHERE id = 2;
\x off
SELECT id, name IS NULL AS no_name, coalesce(note, 'was null') AS note FROM items ORDER BY id;
SELECT NULL::int AS a, NULL::text AS b, ARRAY[NULL, 1] AS c, ROW(NULL, 'x') AS d;
SELECT 1 AS one \; SELECT 'two' AS two \; SELECT NULL AS three;
INSERT INTO items (id) VALUES (4) \; SELECT 1 / 0 \; INSERT INTO items (id) VALUES (5);
SELECT count(*) AS after_failed_multi FROM items WHERE id IN (4, 5);
BEGIN;
INSERT INTO items (id, name) VALUES (10, 'inside the transaction');
SELECT 1 / 0;
SELECT 'after the error';
ROLLBACK;
SELECT count(*) AS rolled_back FROM items WHERE id = 10;
BEGIN;
INSERT INTO items (id, name) VALUES (11, 'committed');
SAVEPOINT s;
INSERT INTO items (id) VALUES (1);
ROLLBACK TO SAVEPOINT s;
COMMIT;
INSERT INTO items (id) VALUES (1);
SELECT no_such_column FROM items;
SELEKT 1;
DO $$ BEGIN RAISE NOTICE 'notice with ünïcödé %', 42; END $$;
PREPARE by_id(int) AS SELECT id, name FROM items WHERE id = $1;
EXECUTE by_id(2);
EXECUTE by_id(11);
COPY items (id, name, note) FROM stdin;
20	copied	\N
21	çöpy 🦀	tab\there
\.
COPY (SELECT id, name, note, tags FROM items ORDER BY id) TO stdout;
COPY (SELECT id, name, note FROM items ORDER BY id) TO stdout WITH (FORMAT csv, HEADER);
CREATE TABLE big (id int PRIMARY KEY, v text);
INSERT INTO big VALUES (1, '{big}');
INSERT INTO big SELECT 2, repeat('wide ✓ ', 200000);
SELECT id, length(v), md5(v) FROM big ORDER BY id;
SELECT v FROM big WHERE id = 1;
SELECT g, md5(g::text), CASE WHEN g % 3 = 0 THEN NULL ELSE g * 1.5 END AS maybe FROM generate_series(1, 3000) g;
SELECT count(*), sum(length(v)) FROM big;
DROP TABLE big;
\echo done
"#
    );
    (script, big.len())
}

#[test]
fn psql_as_an_agent_prints_exactly_what_it_prints_directly() {
    let (pg, daemon) = setup();
    pg.create_database("direct_db", AGENT);
    pg.create_database("agent_db", AGENT);
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("analyst.sql");
    let (script_text, big_len) = psql_script();
    std::fs::write(&script, script_text).expect("write script");
    let psql_args = |db: &str| {
        vec![
            "-X".to_owned(),
            "-v".to_owned(),
            "ON_ERROR_STOP=0".to_owned(),
            "-f".to_owned(),
            script.display().to_string(),
            pg.conninfo(AGENT, db),
        ]
    };

    let direct = PgCommand::direct("psql")
        .password(PASSWORD)
        .args(psql_args("direct_db"))
        .success();
    let agent = psql_agent(&daemon).args(psql_args("agent_db")).success();

    let (direct_out, agent_out) = (stdout(&direct), stdout(&agent));
    let direct_err = String::from_utf8_lossy(&direct.stderr);
    // The script really ran: the direct run has the results and errors we expect.
    assert!(direct_out.contains("ünïcödé — 日本語 — 🦀"), "{direct_out}");
    assert!(
        direct_out.contains(" rolled_back \n-------------\n           0"),
        "{direct_out}"
    );
    assert!(direct_out.contains("(3000 rows)") && direct_out.ends_with("done\n"));
    assert!(
        direct_err.contains("ERROR:  division by zero"),
        "{direct_err}"
    );
    assert!(
        direct_err.contains("current transaction is aborted"),
        "{direct_err}"
    );
    assert!(
        direct_err.contains("NOTICE:  notice with ünïcödé 42"),
        "{direct_err}"
    );

    assert_eq!(agent.status.code(), direct.status.code());
    assert!(
        agent_out == direct_out,
        "stdout differs as an agent (first difference at byte {})",
        first_difference(&agent_out, &direct_out)
    );
    assert_eq!(String::from_utf8_lossy(&agent.stderr), direct_err);

    // Both databases ended up the same.
    let state = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM items t";
    assert_eq!(
        pg.psql_local(AGENT, "agent_db", state),
        pg.psql_local(AGENT, "direct_db", state)
    );
    // And the agent's run went through the daemon: one psql session.
    let sessions = closed_sessions_of(&daemon, &pg, "psql", 1);
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    // The large value went up in the INSERT and came down in the SELECT.
    assert!(
        sessions[0]["bytes_up"].as_u64().unwrap() > big_len as u64,
        "{:#}",
        sessions[0]
    );
    assert!(
        sessions[0]["bytes_down"].as_u64().unwrap() > big_len as u64,
        "{:#}",
        sessions[0]
    );
}

fn first_difference(a: &str, b: &str) -> usize {
    a.bytes()
        .zip(b.bytes())
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// `pgbench -i -s 1`, then 4 clients × 50 transactions in `mode`, all as the agent.
fn pgbench_as_an_agent(mode: &str) {
    let (pg, daemon) = setup();
    pg.create_database("bench", AGENT);
    let conninfo = pg.conninfo(AGENT, "bench");
    let pgbench = || PgCommand::agent(&daemon, AGENT, "pgbench").password(PASSWORD);

    pgbench().args(["-i", "-s", "1", "-q", &conninfo]).success();
    let run = pgbench()
        .args([
            "-M", mode, "-c", "4", "-j", "2", "-t", "50", "-n", &conninfo,
        ])
        .success();
    let report = stdout(&run);
    assert!(report.contains(&format!("query mode: {mode}")), "{report}");
    assert!(
        report.contains("number of transactions actually processed: 200/200"),
        "{report}"
    );

    // What the server holds agrees with what pgbench reported.
    let state = pg.psql_local(
        "postgres",
        "bench",
        "SELECT (SELECT count(*) FROM pgbench_history), \
                (SELECT sum(abalance) FROM pgbench_accounts), \
                (SELECT sum(tbalance) FROM pgbench_tellers), \
                (SELECT sum(bbalance) FROM pgbench_branches), \
                (SELECT sum(delta) FROM pgbench_history), \
                (SELECT count(*) FROM pgbench_accounts)",
    );
    let values: Vec<&str> = state.split('|').collect();
    assert_eq!(values[0], "200", "history rows: {state}");
    assert_eq!(values[1], values[4], "sum(abalance) != sum(delta): {state}");
    assert_eq!(values[2], values[4], "sum(tbalance) != sum(delta): {state}");
    assert_eq!(values[3], values[4], "sum(bbalance) != sum(delta): {state}");
    assert_eq!(values[5], "100000", "{state}");

    // -i connects once; the run once more plus once per client.
    let sessions = closed_sessions_of(&daemon, &pg, "pgbench", 6);
    assert!(sessions.len() >= 6, "{sessions:#?}");
}

#[test]
fn pgbench_simple_protocol_as_an_agent() {
    pgbench_as_an_agent("simple");
}

#[test]
fn pgbench_extended_protocol_as_an_agent() {
    pgbench_as_an_agent("extended");
}

#[test]
fn pgbench_prepared_statements_as_an_agent() {
    pgbench_as_an_agent("prepared");
}

/// Tables, a view, a function, an enum, constraints, sequences, NULLs, unicode and a
/// large row: created by the analyst, so the analyst can dump and restore them. (No large
/// objects: pg_dump reads those through libpq's fast-path function calls, which the
/// PostgreSQL proxy refuses.)
const SHOP: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE customers (
    id serial PRIMARY KEY,
    name text NOT NULL,
    email text UNIQUE,
    mood mood,
    tags text[],
    profile jsonb,
    created timestamptz NOT NULL DEFAULT '2024-01-01 00:00:00+00'
);
COMMENT ON TABLE customers IS 'people who buy things — ünïcödé';
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers (id),
    amount numeric(12, 2) CHECK (amount >= 0),
    note text,
    payload bytea,
    placed date
);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE VIEW big_spenders AS
    SELECT c.id, c.name, sum(o.amount) AS total
    FROM customers c JOIN orders o ON o.customer_id = c.id
    GROUP BY c.id, c.name HAVING sum(o.amount) > 1000;
CREATE FUNCTION order_total(cid int) RETURNS numeric LANGUAGE sql STABLE
    AS $$ SELECT coalesce(sum(amount), 0) FROM orders WHERE customer_id = cid $$;
INSERT INTO customers (name, email, mood, tags, profile)
    SELECT 'customer ' || i || ' ☃',
           CASE WHEN i % 7 = 0 THEN NULL ELSE 'c' || i || '@example.test' END,
           (ARRAY['sad', 'ok', 'happy'])[1 + i % 3]::mood,
           ARRAY['t' || i % 5, NULL],
           jsonb_build_object('i', i, 'even', i % 2 = 0, 'name', 'ü' || i)
    FROM generate_series(1, 2000) i;
INSERT INTO orders (customer_id, amount, note, payload, placed)
    SELECT 1 + i % 2000, (i * 7.31)::numeric(12, 2),
           CASE WHEN i % 11 = 0 THEN NULL ELSE repeat('n', i % 300) END,
           decode(md5(i::text), 'hex'),
           date '2024-01-01' + i % 365
    FROM generate_series(1, 20000) i;
INSERT INTO orders (customer_id, amount, note, payload)
    SELECT 1, 1, repeat('large ', 200000),
           string_agg(decode(md5(g::text), 'hex'), ''::bytea ORDER BY g)
    FROM generate_series(1, 50000) g;
"#;

/// Checksums of every table's rows and the sequences.
const CHECKSUMS: &str = r#"
SELECT 'customers', count(*), md5(string_agg(t::text, E'\n' ORDER BY id)) FROM customers t;
SELECT 'orders', count(*), md5(string_agg(t::text, E'\n' ORDER BY id)) FROM orders t;
SELECT 'big_spenders', count(*), md5(string_agg(t::text, E'\n' ORDER BY id)) FROM big_spenders t;
SELECT 'order_total', order_total(1), order_total(2000);
SELECT 'sequences', last_value, is_called FROM customers_id_seq;
SELECT 'sequences', last_value, is_called FROM orders_id_seq;
"#;

#[test]
fn pg_dump_and_pg_restore_as_an_agent_reproduce_the_database() {
    let (pg, daemon) = setup();
    pg.create_database("shop", AGENT);
    pg.create_database("restored", AGENT);
    pg.psql_local(AGENT, "shop", SHOP);

    // pg_dump's archive comes through the daemon on stdout and goes back in on stdin.
    let dump = PgCommand::agent(&daemon, AGENT, "pg_dump")
        .password(PASSWORD)
        .args(["-Fc", "-d", &pg.conninfo(AGENT, "shop")])
        .success();
    assert!(
        dump.stdout.starts_with(b"PGDMP"),
        "not a custom-format archive"
    );
    assert!(
        dump.stdout.len() > 100_000,
        "archive of {} bytes",
        dump.stdout.len()
    );
    PgCommand::agent(&daemon, AGENT, "pg_restore")
        .password(PASSWORD)
        .args(["--exit-on-error", "-d", &pg.conninfo(AGENT, "restored")])
        .stdin(dump.stdout)
        .success();

    let schema = |db: &str| {
        let output = PgCommand::direct("pg_dump")
            .args(["--schema-only", "-h"])
            .arg(pg.socket_dir())
            .args(["-p", &pg.port().to_string(), "-U", "postgres", db])
            .success();
        // Recent pg_dump releases guard their output with a random `\restrict` key.
        stdout(&output)
            .lines()
            .filter(|line| !line.starts_with("\\restrict ") && !line.starts_with("\\unrestrict "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let source_schema = schema("shop");
    assert!(
        source_schema.contains("CREATE VIEW public.big_spenders"),
        "{source_schema}"
    );
    assert!(
        source_schema.contains("CREATE FUNCTION public.order_total"),
        "{source_schema}"
    );
    assert_eq!(schema("restored"), source_schema);

    let source = pg.psql_local(AGENT, "shop", CHECKSUMS);
    assert!(source.contains("customers|2000|"), "{source}");
    assert!(source.contains("orders|20001|"), "{source}");
    assert_eq!(pg.psql_local(AGENT, "restored", CHECKSUMS), source);

    closed_sessions_of(&daemon, &pg, "pg_dump", 1);
    closed_sessions_of(&daemon, &pg, "pg_restore", 1);
}

#[test]
fn the_server_sees_the_daemons_connection_recorded_in_the_session() {
    let (pg, daemon) = setup();
    pg.create_database("shop", AGENT);
    let output = psql_agent(&daemon)
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT current_user, current_database()",
        ])
        .arg(pg.conninfo(AGENT, "shop"))
        .success();
    assert_eq!(stdout(&output), "analyst|shop\n");

    let sessions = closed_sessions_of(&daemon, &pg, "psql", 1);
    let upstream = text(&sessions[0], "upstream_local").to_owned();
    assert!(!upstream.is_empty(), "{:#}", sessions[0]);
    // The connection the server logged is the daemon's, as the session says, and it
    // ran the agent's statement.
    let log = pg.server_log();
    assert_eq!(PgServer::tcp_connections_in(&log), vec![upstream], "{log}");
    assert!(
        log.contains("analyst@shop LOG:  statement: SELECT current_user, current_database()"),
        "{log}"
    );
}

#[test]
fn psql_over_ipv6_as_an_agent() {
    let (pg, daemon) = setup();
    let Some(v6) = pg.addr_v6() else {
        eprintln!("skipped: ::1 is not available on this host");
        return;
    };
    pg.create_database("shop", AGENT);
    let output = psql_agent(&daemon)
        .args([
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT 'über ' || inet_server_addr()",
        ])
        .arg(pg.conninfo_v6(AGENT, "shop"))
        .success();
    assert_eq!(stdout(&output), "über ::1/128\n");
    let sessions = daemon.wait_for_sessions(Some(AGENT), "the IPv6 session", |s| {
        s.iter().any(|s| text(s, "state") == "closed")
    });
    assert_eq!(text(&sessions[0], "destination"), v6.to_string());
    assert_eq!(text(&sessions[0], "resource"), "pg");
    assert!(sessions[0]["bytes_down"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn an_agent_without_a_rule_cannot_connect_and_never_reaches_the_server() {
    let (pg, daemon) = setup();
    pg.create_database("shop", AGENT);
    let before = pg.server_log().len();

    let denied = PgCommand::agent(&daemon, OUTSIDER, "psql")
        .password(PASSWORD)
        .args(["-X", "-c", "SELECT 'outsider was here'"])
        .arg(pg.conninfo(AGENT, "shop"))
        .output();
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert_eq!(denied.status.code(), Some(2), "psql: {stderr}");
    assert!(
        stderr.contains(&format!(
            "connection to server at \"127.0.0.2\", port {} failed",
            pg.port()
        )),
        "{stderr}"
    );
    assert!(denied.stdout.is_empty());

    let sessions = daemon.wait_for_sessions(Some(OUTSIDER), "the denied session", |s| {
        !s.is_empty() && s.iter().all(|s| text(s, "state") == "closed")
    });
    assert_eq!(sessions.len(), 1, "{sessions:#?}");
    assert_eq!(sessions[0]["decision"]["action"], "deny");
    assert_eq!(sessions[0]["decision"]["rule"], "default-deny");
    assert_eq!(text(&sessions[0], "resource"), "pg");
    assert_eq!(text(&sessions[0], "destination"), pg.addr().to_string());

    // The allowed agent's connection right after shows up in the log; the outsider's
    // never did.
    psql_agent(&daemon)
        .args(["-X", "-c", "SELECT 'analyst was here'"])
        .arg(pg.conninfo(AGENT, "shop"))
        .success();
    let log = pg.wait_for_log("the analyst's statement", |log| {
        log[before..].contains("analyst was here")
    });
    let since = &log[before..];
    assert_eq!(PgServer::tcp_connections_in(since).len(), 1, "{since}");
    assert!(!since.contains("outsider was here"), "{since}");
}
