//! The session commands: argument parsing, and `replay` against a real control socket
//! served from a real store.

use std::{sync::Arc, time::Duration};

use clap::Parser;
use time::macros::datetime;

use super::*;
use crate::{
    control::{Authorizer, bind_control_socket, serve, tests::StoreBackend},
    store::{DecisionRecord, Durability, SessionState, Store, StoreOptions},
};

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied()))
}

fn replay_args(args: &[&str]) -> ReplayArgs {
    match parse(args).expect("parses").command {
        Command::Replay(args) => args,
        other => panic!("expected replay, got {other:?}"),
    }
}

#[test]
fn replay_takes_a_speed_or_instant() {
    let args = replay_args(&["replay", "42"]);
    assert_eq!(
        (args.id, args.speed, args.instant, args.json),
        (42, 1.0, false, false)
    );
    let args = replay_args(&["replay", "42", "--speed", "2.5", "--json"]);
    assert_eq!((args.speed, args.json), (2.5, true));
    assert_eq!(replay_args(&["replay", "7", "--speed", "0"]).speed, 0.0);
    assert!(replay_args(&["replay", "7", "--instant"]).instant);

    for bad in [
        &["replay", "7", "--speed", "-1"][..],
        &["replay", "7", "--speed", "fast"],
        &["replay", "7", "--speed", "NaN"],
        &["replay", "7", "--speed", "inf"],
        &["replay", "7", "--speed", "0.0000001"],
        &["replay", "7", "--speed", "2", "--instant"],
        &["replay", "seven"],
        &["replay"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?} should be refused");
    }
}

#[test]
fn sessions_show_takes_json() {
    match parse(&["sessions", "show", "3", "--json"])
        .expect("parses")
        .command
    {
        Command::Sessions(SessionsCommand::Show { id, json }) => assert_eq!((id, json), (3, true)),
        other => panic!("expected sessions show, got {other:?}"),
    }
}

#[test]
fn the_end_of_a_session_is_told_relative_to_its_start() {
    let mut session: SessionRecord = serde_json::from_value(serde_json::json!({
        "id": 1, "state": "closed", "agent": "a", "pid": 1, "tid": 1, "uid": 0, "gid": 0,
        "comm": "psql", "exe": null, "cgroup": "/sluice/a", "source": "", "destination": "",
        "transport": "tcp", "resource": null,
        "decision": {"action": "allow", "rule": "r", "reason": ""},
        "started_at": "2025-01-02T03:04:05Z", "ended_at": "2025-01-02T03:04:17.5Z",
        "bytes_up": 0, "bytes_down": 0, "close_reason": "client_closed"
    }))
    .expect("session JSON");
    assert_eq!(
        session_end(&session),
        "session ended at +12.500s: client_closed"
    );
    session.ended_at = None;
    assert_eq!(session_end(&session), "session still open");
}

pub(super) fn session(id: u64) -> SessionRecord {
    SessionRecord {
        id,
        state: SessionState::Closed,
        agent: "agent-a".into(),
        pid: 4711,
        tid: 4711,
        uid: 1000,
        gid: 1000,
        comm: "psql".into(),
        exe: Some("/usr/bin/psql".into()),
        cgroup: "/sluice/agent-a".into(),
        source: "10.0.0.2:40000".into(),
        destination: "10.0.0.9:5432".into(),
        upstream_local: None,
        parent_session: None,
        identity: None,
        transport: "tcp".into(),
        resource: Some("orders-db".into()),
        decision: DecisionRecord {
            action: "allow".into(),
            rule: "agents-read-orders".into(),
            reason: "allowed".into(),
        },
        started_at: datetime!(2025-01-02 03:04:05 UTC),
        ended_at: Some(datetime!(2025-01-02 03:05:00 UTC)),
        bytes_up: 0,
        bytes_down: 0,
        close_reason: Some("client_closed".into()),
    }
}

fn statement(session_id: u64, seq: u64, offset_ms: i64) -> StatementRecord {
    StatementRecord {
        session_id,
        seq,
        sql: format!("SELECT {seq}"),
        operation: "read".into(),
        kind: "SELECT".into(),
        protocol: "postgres".into(),
        details: Default::default(),
        tables: vec![],
        params: 0,
        decision: DecisionRecord {
            action: "allow".into(),
            rule: "read".into(),
            reason: String::new(),
        },
        started_at: datetime!(2025-01-02 03:04:05 UTC) + time::Duration::milliseconds(offset_ms),
        duration_us: Some(100),
        rows: Some(1),
        tag: Some("SELECT 1".into()),
        error: None,
        masked: Default::default(),
        nulled: 0,
        approval: None,
        identity: None,
        parameters: Vec::new(),
    }
}

/// A control server answering from a real store holding session 9 with statements at
/// +0.2 s, +0.4 s and +0.8 s.
struct Daemon {
    _dir: tempfile::TempDir,
    client: ControlClient,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Daemon {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("store"), StoreOptions::default()).expect("open");
        store
            .put_session(&session(9), Durability::Durable)
            .await
            .expect("put session");
        for (seq, offset_ms) in [(1, 200), (2, 400), (3, 800)] {
            store
                .put_statement(&statement(9, seq, offset_ms), Durability::Durable)
                .await
                .expect("put statement");
        }
        let socket = dir.path().join("control.sock");
        let listener = bind_control_socket(&socket, None).expect("bind");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Authorizer::new("/sluice-cli-test-not-a-cgroup", None),
            Arc::new(StoreBackend { store }),
            async move {
                let _ = stopped.await;
            },
        ));
        let client = ControlClient::new(&socket).with_timeout(Duration::from_secs(10));
        Self {
            _dir: dir,
            client,
            stop,
            server,
        }
    }

    async fn replay(&self, args: &[&str]) -> (Result<(), CliError>, String, Duration) {
        let args = replay_args(args);
        let mut out = Vec::new();
        let started = std::time::Instant::now();
        let result = replay(&self.client, &args, 120, &mut out).await;
        let elapsed = started.elapsed();
        (
            result,
            String::from_utf8(out).expect("utf-8 output"),
            elapsed,
        )
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

#[tokio::test]
async fn replay_prints_statements_in_recorded_time() {
    let daemon = Daemon::start().await;

    let (result, out, elapsed) = daemon.replay(&["replay", "9", "--speed", "2"]).await;
    result.expect("replay");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "replaying session 9 of agent-a (psql pid 4711, tcp/10.0.0.9:5432): 3 statement(s), at 2x",
            "+0.200s  allow  read  SELECT  100us  1 row  SELECT 1",
            "+0.400s  allow  read  SELECT  100us  1 row  SELECT 2",
            "+0.800s  allow  read  SELECT  100us  1 row  SELECT 3",
            "session ended at +55.000s: client_closed",
        ]
    );
    // The last statement is due at 0.8 s / 2; the session's end is not waited for.
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(2_000), "{elapsed:?}");

    let (result, out, elapsed) = daemon.replay(&["replay", "9", "--instant", "--json"]).await;
    result.expect("replay");
    let replayed: Vec<StatementRecord> = out
        .lines()
        .map(|line| serde_json::from_str(line).expect("one statement per line"))
        .collect();
    assert_eq!(
        replayed,
        [
            statement(9, 1, 200),
            statement(9, 2, 400),
            statement(9, 3, 800)
        ]
    );
    assert!(elapsed < Duration::from_millis(400), "{elapsed:?}");

    let (result, _, _) = daemon.replay(&["replay", "10", "--speed", "0"]).await;
    assert!(
        matches!(result, Err(CliError::NoSuchSession(10))),
        "{result:?}"
    );
    daemon.stop().await;
}
