//! The control API end to end: a real hyper server on a real unix socket, the real
//! client, curl run as other users and from inside a real cgroup.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
    sync::oneshot,
    task::JoinHandle,
};

use super::*;
use crate::store::{DecisionRecord, SessionRecord, SessionState, StatementRecord};

struct TestBackend {
    status: StatusReport,
    sessions: Vec<SessionRecord>,
    statements: Vec<StatementRecord>,
    refused: Mutex<Vec<(PeerInfo, String)>>,
}

impl ControlBackend for TestBackend {
    fn status(&self) -> StatusReport {
        self.status.clone()
    }

    fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>, BackendError> {
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .filter(|session| {
                query
                    .agent
                    .as_ref()
                    .is_none_or(|agent| session.agent == *agent)
            })
            .cloned()
            .collect();
        sessions.sort_by_key(|session| std::cmp::Reverse(session.id));
        sessions.truncate(query.limit);
        Ok(sessions)
    }

    fn get_session(&self, id: u64) -> Result<Option<SessionRecord>, BackendError> {
        if id == 666 {
            return Err(BackendError::new("the store is on fire"));
        }
        Ok(self
            .sessions
            .iter()
            .find(|session| session.id == id)
            .cloned())
    }

    fn statements(&self, session_id: u64) -> Result<Option<Vec<StatementRecord>>, BackendError> {
        if session_id == 666 {
            return Err(BackendError::new("the store is on fire"));
        }
        if !self.sessions.iter().any(|session| session.id == session_id) {
            return Ok(None);
        }
        Ok(Some(
            self.statements
                .iter()
                .filter(|statement| statement.session_id == session_id)
                .cloned()
                .collect(),
        ))
    }

    fn refused(&self, peer: &PeerInfo, reason: &str) {
        self.refused
            .lock()
            .expect("lock")
            .push((peer.clone(), reason.to_owned()));
    }
}

impl TestBackend {
    fn refusals(&self) -> Vec<(PeerInfo, String)> {
        self.refused.lock().expect("lock").clone()
    }
}

fn status_report() -> StatusReport {
    StatusReport {
        version: "0.1.0".into(),
        pid: 4242,
        started_at: time::macros::datetime!(2025-01-02 03:04:05 UTC),
        uptime_seconds: 61,
        cgroup_root: "/sys/fs/cgroup/sluice".into(),
        programs: vec![
            ProgramStatus {
                name: "sluice_connect4".into(),
                attached: true,
            },
            ProgramStatus {
                name: "sluice_connect6".into(),
                attached: false,
            },
        ],
        listeners: vec!["127.0.0.1:15001".into(), "[::1]:15001".into()],
        policy: PolicyStatus {
            dir: "/etc/sluice/policies".into(),
            agents: 2,
            resources: 3,
            rules: 5,
            generation: 1,
            loaded_at: time::macros::datetime!(2025-01-02 03:04:05 UTC),
            last_rejected: None,
            active_grants: 0,
        },
        store: StoreStatus {
            path: "/var/lib/sluice/store".into(),
            sessions: 4,
            open: 1,
            denied: 1,
        },
        kernel: "6.1.0-test".into(),
        enforcement: vec![crate::containment::EnforcementRow {
            way_out: "packet_socket".into(),
            expected: "refused".into(),
            enforced: false,
            mechanism: "BPF LSM socket_create".into(),
            detail: "the bpf LSM is not active".into(),
        }],
        backstop_drops: 3,
        exporters: Vec::new(),
    }
}

fn record(id: u64, agent: &str) -> SessionRecord {
    SessionRecord {
        id,
        state: SessionState::Closed,
        agent: agent.into(),
        pid: 100,
        tid: 100,
        uid: 1000,
        gid: 1000,
        comm: "psql".into(),
        exe: Some("/usr/bin/psql".into()),
        cgroup: format!("/sluice/{agent}"),
        source: "10.0.0.2:40000".into(),
        destination: "10.0.0.9:5432".into(),
        upstream_local: Some("10.0.0.1:50000".into()),
        parent_session: None,
        identity: None,
        transport: "tcp".into(),
        resource: Some("orders-db".into()),
        decision: DecisionRecord {
            action: "allow".into(),
            rule: "agents-read-orders".into(),
            reason: "allowed by rule".into(),
        },
        started_at: time::macros::datetime!(2025-01-02 03:04:05 UTC),
        ended_at: Some(time::macros::datetime!(2025-01-02 03:05:00 UTC)),
        bytes_up: 10,
        bytes_down: 20,
        close_reason: Some("client_closed".into()),
    }
}

fn statement(session_id: u64, seq: u64) -> StatementRecord {
    StatementRecord {
        session_id,
        seq,
        sql: "SELECT email FROM customers WHERE id = ?".into(),
        operation: "read".into(),
        kind: "SELECT".into(),
        protocol: "postgres".into(),
        details: Default::default(),
        tables: vec!["customers".into()],
        params: 0,
        decision: DecisionRecord {
            action: "allow".into(),
            rule: "read-customers".into(),
            reason: "allowed by rule read-customers".into(),
        },
        started_at: time::macros::datetime!(2025-01-02 03:04:05.012 UTC),
        duration_us: Some(850),
        rows: Some(1),
        tag: Some("SELECT 1".into()),
        error: None,
        masked: [("email".to_owned(), 1)].into_iter().collect(),
        nulled: 0,
        approval: None,
        identity: None,
        parameters: Vec::new(),
    }
}

/// A running server in its own tempdir; dropping it without `stop` leaks nothing but
/// the task.
struct Harness {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    backend: Arc<TestBackend>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl Harness {
    async fn start(managed_root: &str, admin_gid: Option<u32>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // Other users must reach the socket for the refusal tests.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod tempdir");
        let socket = dir.path().join("run/control.sock");
        let listener = bind_control_socket(&socket, admin_gid).expect("bind");
        let backend = Arc::new(TestBackend {
            status: status_report(),
            sessions: vec![
                record(1, "a"),
                record(2, "a"),
                record(3, "b"),
                record(4, "a"),
            ],
            statements: vec![statement(3, 1), statement(1, 1), statement(3, 2)],
            refused: Mutex::new(Vec::new()),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Authorizer::new(managed_root, admin_gid),
            backend.clone(),
            async move {
                let _ = stopped.await;
            },
        ));
        Self {
            _dir: dir,
            socket,
            backend,
            stop: Some(stop),
            server,
        }
    }

    fn client(&self) -> ControlClient {
        ControlClient::new(&self.socket).with_timeout(Duration::from_secs(10))
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.server)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

const NOT_HERE: &str = "/sluice-control-test-not-a-cgroup";

/// Sends raw bytes, returns everything the server answers until it closes.
async fn raw(socket: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("server answers")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// `curl` through the socket, preceded by `prefix` (e.g. `setpriv ...`): exit code,
/// body, HTTP status.
async fn curl(prefix: &[&str], socket: &Path, path: &str) -> (i32, String, u16) {
    let url = format!("http://localhost{path}");
    let socket = socket.to_str().expect("utf-8 path");
    let curl = [
        "curl",
        "-sS",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
        socket,
        &url,
    ];
    let argv: Vec<&str> = prefix.iter().copied().chain(curl).collect();
    let output = tokio::process::Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .await
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        output.status.code().unwrap_or(-1),
        body.to_owned(),
        code.trim().parse().unwrap_or(0),
    )
}

#[tokio::test]
async fn status_round_trips() {
    let mut harness = Harness::start(NOT_HERE, None).await;
    let status = harness.client().status().await.expect("status");
    assert_eq!(status, status_report());
    assert!(harness.backend.refusals().is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn sessions_filter_by_agent_and_limit() {
    let mut harness = Harness::start(NOT_HERE, None).await;
    let client = harness.client();
    let ids = |sessions: Vec<SessionRecord>| sessions.iter().map(|s| s.id).collect::<Vec<_>>();
    assert_eq!(
        ids(client.list_sessions(None, None).await.expect("all")),
        [4, 3, 2, 1]
    );
    assert_eq!(
        ids(client.list_sessions(Some("a"), None).await.expect("a")),
        [4, 2, 1]
    );
    assert_eq!(
        ids(client
            .list_sessions(Some("a"), Some(2))
            .await
            .expect("a, 2")),
        [4, 2]
    );
    assert!(
        client
            .list_sessions(Some("no such & agent"), None)
            .await
            .expect("none")
            .is_empty()
    );
    let session = client.get_session(3).await.expect("get").expect("found");
    assert_eq!(session, record(3, "b"));
    harness.stop().await;
}

#[tokio::test]
async fn statements_of_a_session_round_trip() {
    let mut harness = Harness::start(NOT_HERE, None).await;
    let client = harness.client();
    assert_eq!(
        client.statements(3).await.expect("statements"),
        Some(vec![statement(3, 1), statement(3, 2)])
    );
    // A session without statements is an empty list, not a 404.
    assert_eq!(client.statements(2).await.expect("none"), Some(vec![]));
    assert_eq!(client.statements(99).await.expect("answered"), None);
    let error = client
        .get::<serde_json::Value>("/v1/sessions/99/statements")
        .await
        .expect_err("404");
    assert!(
        matches!(&error, ClientError::Http { status: 404, message } if message == "no session 99"),
        "{error}"
    );

    // The wire shape, as documented in docs/api.md.
    let (exit, body, code) = curl(&[], &harness.socket, "/v1/sessions/1/statements").await;
    assert_eq!((exit, code), (0, 200), "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let expected = serde_json::json!([{
        "session_id": 1,
        "seq": 1,
        "protocol": "postgres",
        "sql": "SELECT email FROM customers WHERE id = ?",
        "operation": "read",
        "kind": "SELECT",
        "tables": ["customers"],
        "params": 0,
        "parameters": [],
        "decision": {
            "action": "allow",
            "rule": "read-customers",
            "reason": "allowed by rule read-customers"
        },
        "started_at": "2025-01-02T03:04:05.012Z",
        "duration_us": 850,
        "rows": 1,
        "tag": "SELECT 1",
        "error": null,
        "masked": {"email": 1},
        "nulled": 0,
        "approval": null
    }]);
    assert_eq!(body, expected);
    harness.stop().await;
}

#[tokio::test]
async fn missing_session_and_unknown_route_are_404() {
    let mut harness = Harness::start(NOT_HERE, None).await;
    let client = harness.client();
    assert_eq!(client.get_session(99).await.expect("answered"), None);
    let error = client
        .get::<serde_json::Value>("/v1/sessions/99")
        .await
        .expect_err("404");
    assert!(
        matches!(&error, ClientError::Http { status: 404, message } if message == "no session 99"),
        "{error}"
    );
    let error = client
        .get::<serde_json::Value>("/v1/nope")
        .await
        .expect_err("404");
    assert_eq!(error.http_status(), Some(404));
    assert!(
        error.to_string().contains("no such route: GET /v1/nope"),
        "{error}"
    );

    let (_, body, code) = curl(&[], &harness.socket, "/v2/status").await;
    assert_eq!(code, 404);
    let body: ErrorBody = serde_json::from_str(&body).expect("JSON error body");
    assert!(body.error.contains("/v2/status"), "{}", body.error);
    harness.stop().await;
}

#[tokio::test]
async fn bad_queries_are_400_and_backend_errors_500() {
    let mut harness = Harness::start(NOT_HERE, None).await;
    let client = harness.client();
    for (path, needle) in [
        ("/v1/sessions?limit=many", "limit"),
        ("/v1/sessions?limit=-1", "limit"),
        ("/v1/sessions?agnet=a", "unknown query parameter \"agnet\""),
        ("/v1/sessions?agent=a&agent=b", "more than once"),
        ("/v1/sessions?agent=", "empty"),
        ("/v1/sessions?agent=%zz", "percent-escape"),
        ("/v1/sessions/abc", "number"),
        ("/v1/sessions/abc/statements", "number"),
        (
            "/v1/sessions/1/statements?limit=1",
            "unknown query parameter",
        ),
        ("/v1/status?verbose=1", "unknown query parameter"),
    ] {
        let error = client.get::<serde_json::Value>(path).await.expect_err(path);
        assert_eq!(error.http_status(), Some(400), "{path}: {error}");
        assert!(error.to_string().contains(needle), "{path}: {error}");
    }
    for path in ["/v1/sessions/666", "/v1/sessions/666/statements"] {
        let error = client
            .get::<serde_json::Value>(path)
            .await
            .expect_err("500");
        assert!(
            matches!(&error, ClientError::Http { status: 500, message } if message == "the store is on fire"),
            "{path}: {error}"
        );
    }
    harness.stop().await;
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let mut harness = Harness::start(NOT_HERE, None).await;
    let answer = raw(
        &harness.socket,
        b"DELETE /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get"),
        "{answer}"
    );
    assert!(answer.contains("{\"error\":"), "{answer}");
    harness.stop().await;
}

#[tokio::test]
async fn malformed_slow_and_oversized_requests_do_not_hurt_others() {
    let mut harness = Harness::start(NOT_HERE, None).await;

    // A client that sends half a request head and then nothing.
    let mut slow = UnixStream::connect(&harness.socket).await.expect("connect");
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHo")
        .await
        .expect("write");

    let answer = raw(&harness.socket, b"NONSENSE\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");

    let mut oversized =
        b"POST /v1/status HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n".to_vec();
    oversized.extend(std::iter::repeat_n(b'x', 1_100_000));
    let mut stream = UnixStream::connect(&harness.socket).await.expect("connect");
    // The server may close before reading it all.
    let _ = stream.write_all(&oversized).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // The slow client is still connected; everyone else is served.
    let status = harness.client().status().await.expect("status");
    assert_eq!(status.pid, 4242);
    drop(slow);
    harness.stop().await;
}

#[tokio::test]
async fn client_reports_a_missing_or_dead_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("control.sock");
    let error = ControlClient::new(&missing)
        .status()
        .await
        .expect_err("no socket");
    assert!(matches!(error, ClientError::NotRunning { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "the sluice daemon is not running (no control socket at {})",
            missing.display()
        )
    );

    // A socket file nobody accepts on (the daemon died without cleaning up).
    drop(std::os::unix::net::UnixListener::bind(&missing).expect("bind"));
    let error = ControlClient::new(&missing)
        .status()
        .await
        .expect_err("stale socket");
    assert!(matches!(error, ClientError::NotRunning { .. }), "{error:?}");
}

#[tokio::test]
async fn non_root_peer_is_refused_and_reported() {
    let mut harness = Harness::start(NOT_HERE, None).await;
    // Open the file mode so the peer reaches the authorizer.
    std::fs::set_permissions(&harness.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let nobody = [
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
    ];
    let (exit, body, code) = curl(&nobody, &harness.socket, "/v1/status").await;
    assert_eq!((exit, code), (0, 403), "{body}");
    let body: ErrorBody = serde_json::from_str(&body).expect("JSON error body");
    assert!(body.error.contains("uid 65534"), "{}", body.error);
    assert!(body.error.contains("not root"), "{}", body.error);

    let refusals = harness.backend.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let (peer, reason) = &refusals[0];
    assert_eq!((peer.uid, peer.gid), (65534, 65534));
    assert_eq!(peer.user.as_deref(), Some("nobody"));
    assert!(peer.pid.is_some());
    assert!(reason.contains("no admin group"), "{reason}");
    harness.stop().await;
}

#[tokio::test]
async fn admin_group_members_are_allowed() {
    let admin_gid = 4242;
    let mut harness = Harness::start(NOT_HERE, Some(admin_gid)).await;
    let socket_meta = std::fs::metadata(&harness.socket).expect("stat");
    assert_eq!(socket_meta.mode() & 0o7777, 0o660);
    assert_eq!((socket_meta.uid(), socket_meta.gid()), (0, admin_gid));

    // Supplementary membership (read from /proc/PID/status).
    let member = [
        "setpriv", "--reuid", "65534", "--regid", "65534", "--groups", "4242",
    ];
    let (exit, body, code) = curl(&member, &harness.socket, "/v1/status").await;
    assert_eq!((exit, code), (0, 200), "{body}");
    let status: StatusReport = serde_json::from_str(&body).expect("status JSON");
    assert_eq!(status, status_report());

    // Primary group.
    let primary = [
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "4242",
        "--clear-groups",
    ];
    let (_, _, code) = curl(&primary, &harness.socket, "/v1/sessions?limit=1").await;
    assert_eq!(code, 200);

    // Not a member: the socket's mode keeps it out before the authorizer is asked.
    let outsider = [
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
    ];
    let (exit, _, code) = curl(&outsider, &harness.socket, "/v1/status").await;
    assert_eq!((exit, code), (7, 0), "curl cannot connect");
    assert!(harness.backend.refusals().is_empty());

    // With the mode opened up, the authorizer refuses it just the same.
    std::fs::set_permissions(&harness.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod");
    let (_, _, code) = curl(&outsider, &harness.socket, "/v1/status").await;
    assert_eq!(code, 403);
    let refusals = harness.backend.refusals();
    assert_eq!(refusals.len(), 1);
    assert!(refusals[0].1.contains("gid 4242"), "{}", refusals[0].1);
    harness.stop().await;
}

/// A child cgroup of the cgroup2 mount, removed on drop.
struct TestCgroup {
    /// Relative to the mount, as /proc/PID/cgroup shows it.
    relative: String,
    root: PathBuf,
}

impl TestCgroup {
    fn create() -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
        let mount = mounts
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
            })
            .expect("a cgroup2 mount");
        let name = format!("sluice-control-test-{}", std::process::id());
        let root = mount.join(&name);
        std::fs::create_dir_all(root.join("agent")).expect("create test cgroup");
        Self {
            relative: format!("/{name}"),
            root,
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.root.join("agent"));
        let _ = std::fs::remove_dir(&self.root);
    }
}

#[tokio::test]
async fn root_inside_the_managed_cgroup_is_refused() {
    let cgroup = TestCgroup::create();
    let mut harness = Harness::start(&cgroup.relative, None).await;
    let procs = cgroup.root.join("agent/cgroup.procs");
    let script = format!(
        "echo $$ > {} && exec \"$@\"",
        procs.to_str().expect("utf-8 path")
    );
    let prefix = ["sh", "-c", &script, "sh"];
    let (exit, body, code) = curl(&prefix, &harness.socket, "/v1/status").await;
    assert_eq!((exit, code), (0, 403), "{body}");
    let body: ErrorBody = serde_json::from_str(&body).expect("JSON error body");
    assert!(body.error.contains("managed cgroup root"), "{}", body.error);

    let refusals = harness.backend.refusals();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    let (peer, reason) = &refusals[0];
    assert_eq!(peer.uid, 0);
    let expected = format!("{}/agent", cgroup.relative);
    assert_eq!(peer.cgroup.as_deref(), Some(expected.as_str()));
    assert!(reason.contains(&expected), "{reason}");

    // Root outside the managed root is still welcome.
    let (_, _, code) = curl(&[], &harness.socket, "/v1/status").await;
    assert_eq!(code, 200);
    harness.stop().await;
}

#[tokio::test]
async fn client_turns_403_into_permission_denied() {
    // Every process is inside "/", so even this root test process is refused.
    let mut harness = Harness::start("/", None).await;
    let error = harness.client().status().await.expect_err("refused");
    match &error {
        ClientError::PermissionDenied { path, reason } => {
            assert_eq!(path, &harness.socket);
            assert!(reason.contains("managed cgroup root"), "{reason}");
        }
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
    assert_eq!(harness.backend.refusals().len(), 1);
    harness.stop().await;
}

#[tokio::test]
async fn bind_replaces_only_stale_sockets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("new/dir/control.sock");
    let listener = bind_control_socket(&socket, None).expect("bind");
    let parent = std::fs::metadata(socket.parent().expect("parent")).expect("stat dir");
    assert_eq!(parent.mode() & 0o777, 0o755);
    let meta = std::fs::metadata(&socket).expect("stat socket");
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    // Someone is listening: not ours to take.
    let error = bind_control_socket(&socket, None).expect_err("in use");
    assert!(matches!(error, ControlError::InUse { .. }), "{error}");

    // The listener is gone, the file stays: stale, replaced.
    drop(listener);
    assert!(socket.exists());
    let _listener = bind_control_socket(&socket, None).expect("rebind over stale socket");

    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "precious").expect("write");
    let error = bind_control_socket(&file, None).expect_err("not a socket");
    assert!(matches!(error, ControlError::NotASocket { .. }), "{error}");
    assert_eq!(std::fs::read_to_string(&file).expect("kept"), "precious");
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let mut harness = Harness::start(NOT_HERE, None).await;
    let client = harness.client();
    client.status().await.expect("up");
    harness.stop().await;
    // The file stays, nobody accepts on it.
    assert!(harness.socket.exists());
    let error = client.status().await.expect_err("down");
    assert!(matches!(error, ClientError::NotRunning { .. }), "{error:?}");
}

#[test]
fn admin_group_resolves_by_name() {
    assert_eq!(resolve_admin_group("root").expect("root group"), 0);
    let error = resolve_admin_group("no-such-group-sluice").expect_err("missing");
    assert!(error.to_string().contains("no such group"), "{error}");
}

/// Answers from a real store, the way the daemon's backend does.
pub(crate) struct StoreBackend {
    pub store: crate::store::Store,
}

impl ControlBackend for StoreBackend {
    fn status(&self) -> StatusReport {
        status_report()
    }

    fn list_sessions(&self, _query: &SessionQuery) -> Result<Vec<SessionRecord>, BackendError> {
        Ok(Vec::new())
    }

    fn get_session(&self, id: u64) -> Result<Option<SessionRecord>, BackendError> {
        self.store
            .get_session(id)
            .map_err(|error| BackendError::new(error.to_string()))
    }

    fn statements(&self, session_id: u64) -> Result<Option<Vec<StatementRecord>>, BackendError> {
        self.store
            .session_statements(session_id)
            .map_err(|error| BackendError::new(error.to_string()))
    }

    fn refused(&self, _peer: &PeerInfo, _reason: &str) {}
}

#[tokio::test]
async fn statements_are_served_from_a_real_store() {
    use crate::store::{Durability, Store, StoreOptions};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), StoreOptions::default()).expect("open");
    store
        .put_session(&record(5, "a"), Durability::Durable)
        .await
        .expect("put session");
    store
        .put_session(&record(6, "a"), Durability::Durable)
        .await
        .expect("put session");
    for (session_id, seq) in [(5, 2), (6, 1), (5, 1), (7, 1)] {
        store
            .put_statement(&statement(session_id, seq), Durability::Batched)
            .await
            .expect("put statement");
    }
    store.flush().await.expect("flush");

    let socket = dir.path().join("control.sock");
    let listener = bind_control_socket(&socket, None).expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        Authorizer::new(NOT_HERE, None),
        Arc::new(StoreBackend { store }),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = ControlClient::new(&socket).with_timeout(Duration::from_secs(10));
    assert_eq!(
        client.statements(5).await.expect("statements"),
        Some(vec![statement(5, 1), statement(5, 2)])
    );
    assert_eq!(
        client.statements(6).await.expect("statements"),
        Some(vec![statement(6, 1)])
    );
    // Statements stored for a session that is not: still "no such session".
    assert_eq!(client.statements(7).await.expect("answered"), None);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops")
        .expect("server task");
}
