//! Tests against real sled databases in temporary directories.
//!
//! Durability is checked by copying the store's files while it is still open and
//! opening the copy: that sees exactly what reached the files, as a crash would.

use std::{collections::BTreeSet, path::Path, time::Duration};

use time::{OffsetDateTime, UtcOffset, macros::datetime};

use super::*;

fn options(flush_interval: Duration) -> StoreOptions {
    StoreOptions {
        flush_interval,
        queue_capacity: 64,
        audit_durability: Durability::Durable,
    }
}

fn record(id: u64, agent: &str, state: SessionState, action: &str) -> SessionRecord {
    SessionRecord {
        id,
        state,
        agent: agent.to_owned(),
        pid: 4242,
        tid: 4243,
        uid: 1000,
        gid: 1000,
        comm: "psql".into(),
        exe: Some("/usr/bin/psql".into()),
        cgroup: format!("/sluice/{agent}"),
        source: "127.0.0.1:40000".into(),
        destination: "127.0.0.1:5432".into(),
        upstream_local: None,
        parent_session: None,
        identity: None,
        transport: "tcp".into(),
        resource: Some("orders-db".into()),
        decision: DecisionRecord {
            action: action.to_owned(),
            rule: "test-rule".into(),
            reason: "because the test says so".into(),
        },
        started_at: datetime!(2025-01-02 03:04:05 UTC),
        ended_at: match state {
            SessionState::Open => None,
            SessionState::Closed => Some(datetime!(2025-01-02 03:04:06 UTC)),
        },
        bytes_up: 0,
        bytes_down: 0,
        close_reason: match state {
            SessionState::Open => None,
            SessionState::Closed => Some("client_closed".into()),
        },
    }
}

/// Copies a directory tree, as a crash would leave it on disk.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read store dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy store file");
        }
    }
}

/// Opens a copy of the store's files as they are on disk right now.
fn open_disk_copy(store: &Store, scratch: &Path) -> Store {
    let copy = scratch.join("crash-copy");
    if copy.exists() {
        std::fs::remove_dir_all(&copy).expect("remove old copy");
    }
    copy_dir(store.path(), &copy);
    Store::open(&copy, options(Duration::from_millis(20))).expect("open disk copy")
}

#[tokio::test]
async fn records_round_trip_and_updates_replace_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        &dir.path().join("store"),
        options(Duration::from_millis(20)),
    )
    .expect("open store");

    let id = store.next_session_id();
    assert_eq!(id, 1);
    let mut session = record(id, "agent-a", SessionState::Open, "allow");
    store
        .put_session(&session, Durability::Durable)
        .await
        .expect("durable put");
    assert_eq!(store.get_session(id).expect("get"), Some(session.clone()));
    assert_eq!(store.get_session(id + 1).expect("get missing"), None);

    session.state = SessionState::Closed;
    session.ended_at = Some(datetime!(2025-01-02 03:05:00 UTC));
    session.bytes_up = 123;
    session.bytes_down = 4567;
    session.close_reason = Some("upstream_closed".into());
    store
        .put_session(&session, Durability::Batched)
        .await
        .expect("batched put");
    store.flush().await.expect("flush");
    assert_eq!(store.get_session(id).expect("get"), Some(session));
    assert_eq!(
        store.counts().expect("counts"),
        StoreCounts {
            sessions: 1,
            open: 0,
            denied: 0,
            statements: 0,
        }
    );
}

#[tokio::test]
async fn the_store_directory_is_created_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state").join("store");
    let store = Store::open(&path, StoreOptions::default()).expect("open store");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    assert_eq!(store.path(), path);
}

#[tokio::test]
async fn a_second_open_of_the_same_directory_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = Store::open(dir.path(), StoreOptions::default()).expect("open store");
    let error = Store::open(dir.path(), StoreOptions::default()).expect_err("locked");
    assert!(matches!(error, StoreError::Open { .. }), "{error}");
}

#[tokio::test]
async fn session_ids_keep_increasing_across_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let store = Store::open(&path, StoreOptions::default()).expect("open");
        assert_eq!(store.next_session_id(), 1);
        assert_eq!(store.next_session_id(), 2);
        store
            .put_session(
                &record(1, "a", SessionState::Open, "allow"),
                Durability::Durable,
            )
            .await
            .expect("put");
    }
    {
        let store = Store::open(&path, StoreOptions::default()).expect("reopen");
        // Id 2 was handed out (never stored) before the restart: not reused.
        assert_eq!(store.next_session_id(), 3);
    }
    {
        let store = Store::open(&path, StoreOptions::default()).expect("reopen");
        // Id 3 was handed out after the last commit, and persisted on clean drop.
        assert_eq!(store.next_session_id(), 4);
        // A record stored under an id the store never handed out moves the counter.
        store
            .put_session(
                &record(100, "a", SessionState::Open, "allow"),
                Durability::Batched,
            )
            .await
            .expect("put");
        store.flush().await.expect("flush");
        assert_eq!(store.next_session_id(), 101);
    }
    let store = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(store.next_session_id(), 102);
}

#[tokio::test]
async fn a_durable_put_is_on_disk_when_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let session = record(1, "agent-a", SessionState::Open, "allow");
    {
        // A long interval: only the durable write itself can cause the flush.
        let store = Store::open(&path, options(Duration::from_secs(3600))).expect("open");
        store
            .put_session(&session, Durability::Durable)
            .await
            .expect("durable put");
        let crashed = open_disk_copy(&store, dir.path());
        assert_eq!(crashed.get_session(1).expect("get"), Some(session.clone()));
        assert_eq!(crashed.counts().expect("counts").open, 1);
    }
    let reopened = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(reopened.get_session(1).expect("get"), Some(session));
}

#[tokio::test]
async fn a_batched_put_reaches_disk_within_the_flush_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let interval = Duration::from_millis(1500);
    let store = Store::open(&dir.path().join("store"), options(interval)).expect("open");
    let session = record(1, "agent-a", SessionState::Closed, "allow");
    store
        .put_session(&session, Durability::Batched)
        .await
        .expect("batched put");

    // Not yet flushed: a crash now would lose it (this is what makes the check below
    // meaningful).
    let crashed = open_disk_copy(&store, dir.path());
    assert_eq!(crashed.get_session(1).expect("get"), None);
    drop(crashed);
    assert_eq!(store.stats().flushes, 0);

    tokio::time::sleep(interval + Duration::from_millis(500)).await;
    assert_eq!(store.stats().flushes, 1);
    let crashed = open_disk_copy(&store, dir.path());
    assert_eq!(crashed.get_session(1).expect("get"), Some(session));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_durable_puts_share_flushes() {
    const WRITERS: u64 = 500;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Store::open(&path, options(Duration::from_millis(20))).expect("open");

    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = store.next_session_id();
                store
                    .put_session(
                        &record(id, "agent-a", SessionState::Open, "allow"),
                        Durability::Durable,
                    )
                    .await
                    .map(|()| id)
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for task in tasks {
        ids.insert(task.await.expect("task").expect("durable put"));
    }
    assert_eq!(ids, (1..=WRITERS).collect::<BTreeSet<_>>());

    let stats = store.stats();
    assert_eq!(stats.records_written, WRITERS);
    assert!(stats.flushes < WRITERS, "{stats:?}");
    assert!(stats.commits < WRITERS, "{stats:?}");
    assert_eq!(
        store.counts().expect("counts"),
        StoreCounts {
            sessions: WRITERS,
            open: WRITERS,
            denied: 0,
            statements: 0,
        }
    );

    drop(store);
    let reopened = Store::open(&path, StoreOptions::default()).expect("reopen");
    let stored = reopened
        .list_sessions(&SessionFilter::default())
        .expect("list");
    assert_eq!(
        stored.iter().map(|session| session.id).collect::<Vec<_>>(),
        (1..=WRITERS).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn close_interrupted_closes_what_was_open_at_the_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let finished = record(2, "agent-a", SessionState::Closed, "deny");
    {
        let store = Store::open(&path, StoreOptions::default()).expect("open");
        for session in [
            record(1, "agent-a", SessionState::Open, "allow"),
            finished.clone(),
            record(3, "agent-b", SessionState::Open, "review"),
        ] {
            store
                .put_session(&session, Durability::Durable)
                .await
                .expect("put");
        }
    }

    let store = Store::open(&path, StoreOptions::default()).expect("reopen");
    let before = OffsetDateTime::now_utc();
    let closed = store
        .close_interrupted("daemon_restart")
        .await
        .expect("close interrupted");
    assert_eq!(closed, 2);
    for id in [1, 3] {
        let session = store.get_session(id).expect("get").expect("stored");
        assert_eq!(session.state, SessionState::Closed);
        assert_eq!(session.close_reason.as_deref(), Some("daemon_restart"));
        let ended_at = session.ended_at.expect("ended_at set");
        assert!(ended_at >= before - Duration::from_secs(1), "{ended_at}");
    }
    assert_eq!(store.get_session(2).expect("get"), Some(finished));
    assert_eq!(
        store.counts().expect("counts"),
        StoreCounts {
            sessions: 3,
            open: 0,
            denied: 1,
            statements: 0,
        }
    );
    assert_eq!(
        store
            .close_interrupted("daemon_restart")
            .await
            .expect("again"),
        0
    );

    // Durable when it returns.
    let crashed = open_disk_copy(&store, dir.path());
    assert_eq!(crashed.counts().expect("counts").open, 0);
}

#[tokio::test]
async fn list_filters_by_agent_since_and_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
    for id in 1..=10 {
        let agent = if id % 2 == 0 { "even" } else { "odd" };
        store
            .put_session(
                &record(id, agent, SessionState::Closed, "allow"),
                Durability::Batched,
            )
            .await
            .expect("put");
    }
    store.flush().await.expect("flush");
    let ids = |filter: SessionFilter| -> Vec<u64> {
        store
            .list_sessions(&filter)
            .expect("list")
            .iter()
            .map(|session| session.id)
            .collect()
    };

    assert_eq!(ids(SessionFilter::default()), (1..=10).collect::<Vec<_>>());
    let even = || SessionFilter {
        agent: Some("even".into()),
        ..SessionFilter::default()
    };
    assert_eq!(ids(even()), vec![2, 4, 6, 8, 10]);
    assert_eq!(
        ids(SessionFilter {
            limit: Some(2),
            ..even()
        }),
        vec![8, 10]
    );
    assert_eq!(
        ids(SessionFilter {
            since_id: Some(4),
            ..even()
        }),
        vec![6, 8, 10]
    );
    assert_eq!(
        ids(SessionFilter {
            since_id: Some(3),
            limit: Some(3),
            ..SessionFilter::default()
        }),
        vec![8, 9, 10]
    );
    assert_eq!(
        ids(SessionFilter {
            limit: Some(0),
            ..SessionFilter::default()
        }),
        Vec::<u64>::new()
    );
    assert_eq!(
        ids(SessionFilter {
            since_id: Some(u64::MAX),
            ..SessionFilter::default()
        }),
        Vec::<u64>::new()
    );
    assert_eq!(
        ids(SessionFilter {
            agent: Some("nobody".into()),
            ..SessionFilter::default()
        }),
        Vec::<u64>::new()
    );
}

#[tokio::test]
async fn counts_follow_updates_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let expected = StoreCounts {
        sessions: 3,
        open: 1,
        denied: 1,
        statements: 0,
    };
    {
        let store = Store::open(&path, StoreOptions::default()).expect("open");
        assert_eq!(store.counts().expect("counts"), StoreCounts::default());
        let mut first = record(1, "a", SessionState::Open, "allow");
        store
            .put_session(&first, Durability::Durable)
            .await
            .expect("put");
        // The same id twice in one group counts once.
        first.state = SessionState::Closed;
        let batched = store.put_session(&first, Durability::Batched);
        let second = record(2, "a", SessionState::Open, "review");
        let durable = store.put_session(&second, Durability::Durable);
        let (batched, durable) = tokio::join!(batched, durable);
        batched.expect("batched");
        durable.expect("durable");
        store
            .put_session(
                &record(3, "b", SessionState::Closed, "deny"),
                Durability::Durable,
            )
            .await
            .expect("put");
        assert_eq!(store.counts().expect("counts"), expected);
    }
    let store = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(store.counts().expect("counts"), expected);
}

#[tokio::test]
async fn an_unencodable_record_is_an_error_and_the_store_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
    let mut session = record(1, "a", SessionState::Open, "allow");
    // RFC 3339 has no way to write an offset with seconds.
    let odd_offset = UtcOffset::from_hms(1, 2, 3).expect("offset");
    session.started_at = session.started_at.to_offset(odd_offset);
    let error = store
        .put_session(&session, Durability::Durable)
        .await
        .expect_err("unencodable");
    assert!(matches!(error, StoreError::Encode { id: 1, .. }), "{error}");

    let fine = record(2, "a", SessionState::Open, "allow");
    store
        .put_session(&fine, Durability::Durable)
        .await
        .expect("put after error");
    assert_eq!(store.get_session(2).expect("get"), Some(fine));
    assert_eq!(store.get_session(1).expect("get"), None);
}

#[tokio::test]
async fn writes_after_shutdown_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        &dir.path().join("store"),
        options(Duration::from_secs(3600)),
    )
    .expect("open");
    let session = record(1, "a", SessionState::Closed, "allow");
    store
        .put_session(&session, Durability::Batched)
        .await
        .expect("put");
    let other_handle = store.clone();
    store.shutdown().await.expect("shutdown");

    // The batched write was flushed by the shutdown.
    let crashed = open_disk_copy(&store, dir.path());
    assert_eq!(crashed.get_session(1).expect("get"), Some(session));

    let error = other_handle
        .put_session(
            &record(2, "a", SessionState::Open, "allow"),
            Durability::Durable,
        )
        .await
        .expect_err("closed");
    assert!(matches!(error, StoreError::Closed), "{error}");
    assert!(matches!(
        other_handle.flush().await,
        Err(StoreError::Closed)
    ));
    // Reads still work.
    assert_eq!(other_handle.counts().expect("counts").sessions, 1);
}

/// A tmpfs mounted for one test, detached again when dropped.
struct TinyTmpfs {
    dir: tempfile::TempDir,
}

impl TinyTmpfs {
    /// `None` where mounting is not permitted (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = format!("size={size},mode=0700");
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .ok()?;
        Some(Self { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn oversized_records_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
    let mut session = record(1, "a", SessionState::Open, "allow");
    session.exe = Some("x".repeat(MAX_RECORD_BYTES));
    let error = store
        .put_session(&session, Durability::Durable)
        .await
        .expect_err("too large");
    assert!(
        matches!(error, StoreError::TooLarge { id: 1, .. }),
        "{error}"
    );
    assert_eq!(store.get_session(1).expect("get"), None);
}

#[tokio::test]
async fn a_full_disk_is_reported_and_the_writer_keeps_serving() {
    let Some(tmpfs) = TinyTmpfs::mount("2m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs CAP_SYS_ADMIN)");
        return;
    };
    let store =
        Store::open(&tmpfs.path().join("store"), StoreOptions::default()).expect("open on tmpfs");
    let saved = record(1, "a", SessionState::Open, "allow");
    store
        .put_session(&saved, Durability::Durable)
        .await
        .expect("put with room to spare");

    // Take every block that is left.
    let mut filler = std::fs::File::create(tmpfs.path().join("filler")).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);

    // Writes still fit in the pages already holding earlier ones; a few more do not.
    let mut first_error = None;
    for id in 2..1000 {
        let put = store
            .put_session(
                &record(id, "a", SessionState::Open, "allow"),
                Durability::Durable,
            )
            .await;
        if let Err(error) = put {
            first_error = Some(error);
            break;
        }
    }
    let error = first_error.expect("the disk fills up");
    assert!(
        matches!(
            error,
            StoreError::Commit(_) | StoreError::Flush(_) | StoreError::Journal(_)
        ),
        "{error}"
    );
    let stats = store.stats();
    assert!(stats.failed_commits + stats.failed_flushes > 0, "{stats:?}");

    // The writer is still there and answers with the disk's verdict, not `Closed`.
    let again = store
        .put_session(
            &record(5000, "a", SessionState::Open, "allow"),
            Durability::Durable,
        )
        .await;
    assert!(
        matches!(
            again,
            Err(StoreError::Commit(_) | StoreError::Flush(_) | StoreError::Journal(_))
        ),
        "{again:?}"
    );
    let flushed = store.flush().await;
    assert!(
        matches!(flushed, Err(StoreError::Flush(_) | StoreError::Journal(_))),
        "{flushed:?}"
    );
    assert_eq!(store.get_session(1).expect("reads still work"), Some(saved));
    drop(store);
}

fn statement(session_id: u64, seq: u64) -> StatementRecord {
    StatementRecord {
        session_id,
        seq,
        sql: format!("SELECT name, email FROM customers WHERE id = ? -- {seq}"),
        operation: "read".into(),
        kind: "SELECT".into(),
        protocol: "postgres".into(),
        details: Default::default(),
        tables: vec!["customers".into()],
        params: 1,
        decision: DecisionRecord {
            action: "allow".into(),
            rule: "read-customers".into(),
            reason: "allowed by rule read-customers".into(),
        },
        started_at: datetime!(2025-01-02 03:04:05.250 UTC),
        duration_us: Some(1200),
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

fn seqs(statements: &[StatementRecord]) -> Vec<(u64, u64)> {
    statements
        .iter()
        .map(|statement| (statement.session_id, statement.seq))
        .collect()
}

#[tokio::test]
async fn statements_round_trip_in_seq_order_per_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let store = Store::open(&path, options(Duration::from_millis(20))).expect("open");
        // Out of order, across sessions whose ids share low bytes, with seqs that sort
        // differently as little-endian bytes or as text (2 < 10 < 256).
        for (session_id, seq) in [(256, 1), (1, 10), (2, 1), (1, 256), (1, 2), (1, 1)] {
            store
                .put_statement(&statement(session_id, seq), Durability::Batched)
                .await
                .expect("put statement");
        }
        let mut denied = statement(1, 3);
        denied.decision.action = "deny".into();
        denied.rows = None;
        denied.error = Some("42501: denied by rule no-writes".into());
        store
            .put_statement(&denied, Durability::Durable)
            .await
            .expect("durable put statement");

        let first = store.statements(1).expect("statements of 1");
        assert_eq!(seqs(&first), [(1, 1), (1, 2), (1, 3), (1, 10), (1, 256)]);
        assert_eq!(first[2], denied);
        assert_eq!(first[0], statement(1, 1));
        assert_eq!(seqs(&store.statements(2).expect("2")), [(2, 1)]);
        assert_eq!(seqs(&store.statements(256).expect("256")), [(256, 1)]);
        assert!(store.statements(3).expect("none").is_empty());
        assert_eq!(store.counts().expect("counts").statements, 7);
        assert_eq!(store.stats().statements_written, 7);
        // Statements are not sessions.
        assert_eq!(store.counts().expect("counts").sessions, 0);
        assert_eq!(store.stats().records_written, 0);

        // A rewrite (the statement completed) replaces it and is not counted again,
        // also when both writes land in one group.
        let mut done = statement(1, 256);
        done.rows = Some(42);
        let again = store.put_statement(&done, Durability::Batched);
        let mut later = done.clone();
        later.tag = Some("SELECT 42".into());
        let last = store.put_statement(&later, Durability::Durable);
        let (again, last) = tokio::join!(again, last);
        again.expect("rewrite");
        last.expect("rewrite again");
        assert_eq!(store.statements(1).expect("1")[4], later);
        assert_eq!(store.counts().expect("counts").statements, 7);
    }
    let store = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(store.counts().expect("counts").statements, 7);
    assert_eq!(store.statements(1).expect("1").len(), 5);
}

#[tokio::test]
async fn a_durable_statement_is_on_disk_when_it_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A long interval: only the durable write itself can cause the flush.
    let store = Store::open(
        &dir.path().join("store"),
        options(Duration::from_secs(3600)),
    )
    .expect("open");
    let session = record(1, "agent-a", SessionState::Open, "allow");
    store
        .put_session(&session, Durability::Durable)
        .await
        .expect("put session");
    // A batched statement queued before the durable one rides along in its flush.
    store
        .put_statement(&statement(1, 1), Durability::Batched)
        .await
        .expect("batched");
    store
        .put_statement(&statement(1, 2), Durability::Durable)
        .await
        .expect("durable");
    let crashed = open_disk_copy(&store, dir.path());
    assert_eq!(
        crashed.statements(1).expect("statements"),
        [statement(1, 1), statement(1, 2)]
    );
    assert_eq!(crashed.counts().expect("counts").statements, 2);
}

#[tokio::test]
async fn a_batched_statement_reaches_disk_within_the_flush_interval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let interval = Duration::from_millis(1500);
    let store = Store::open(&dir.path().join("store"), options(interval)).expect("open");
    store
        .put_statement(&statement(7, 1), Durability::Batched)
        .await
        .expect("batched put");
    // Not on disk yet.
    let crashed = open_disk_copy(&store, dir.path());
    assert!(crashed.statements(7).expect("read copy").is_empty());
    drop(crashed);
    assert_eq!(store.stats().flushes, 0);

    tokio::time::sleep(interval + Duration::from_millis(500)).await;
    assert_eq!(store.stats().flushes, 1);
    let crashed = open_disk_copy(&store, dir.path());
    assert_eq!(crashed.statements(7).expect("read copy"), [statement(7, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_statements_and_sessions_share_commits_and_flushes() {
    const SESSIONS: u64 = 20;
    const STATEMENTS: u64 = 25;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), options(Duration::from_millis(20))).expect("open");

    let tasks: Vec<_> = (1..=SESSIONS)
        .map(|session_id| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .put_session(
                        &record(session_id, "agent-a", SessionState::Open, "allow"),
                        Durability::Durable,
                    )
                    .await?;
                for seq in 1..=STATEMENTS {
                    let durability = if seq % 5 == 0 {
                        Durability::Durable
                    } else {
                        Durability::Batched
                    };
                    store
                        .put_statement(&statement(session_id, seq), durability)
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("writes");
    }
    store.flush().await.expect("flush");

    let stats = store.stats();
    let writes = SESSIONS * (STATEMENTS + 1);
    assert_eq!(stats.statements_written, SESSIONS * STATEMENTS);
    assert_eq!(stats.records_written, SESSIONS);
    assert!(stats.commits < writes, "{stats:?}");
    assert!(stats.flushes < SESSIONS * 6, "{stats:?}");
    let counts = store.counts().expect("counts");
    assert_eq!(counts.statements, SESSIONS * STATEMENTS);
    assert_eq!(counts.sessions, SESSIONS);
    for session_id in 1..=SESSIONS {
        let stored = store.statements(session_id).expect("statements");
        assert_eq!(
            seqs(&stored),
            (1..=STATEMENTS)
                .map(|seq| (session_id, seq))
                .collect::<Vec<_>>()
        );
    }
}

#[tokio::test]
async fn oversized_or_unencodable_statements_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open");
    let mut huge = statement(1, 1);
    huge.sql = "x".repeat(MAX_RECORD_BYTES);
    let error = store
        .put_statement(&huge, Durability::Durable)
        .await
        .expect_err("too large");
    assert!(
        matches!(
            error,
            StoreError::StatementTooLarge {
                session_id: 1,
                seq: 1,
                ..
            }
        ),
        "{error}"
    );

    let mut odd = statement(1, 2);
    // RFC 3339 has no way to write an offset with seconds.
    odd.started_at = odd
        .started_at
        .to_offset(UtcOffset::from_hms(1, 2, 3).expect("offset"));
    let error = store
        .put_statement(&odd, Durability::Batched)
        .await
        .expect_err("unencodable");
    assert!(
        matches!(
            error,
            StoreError::EncodeStatement {
                session_id: 1,
                seq: 2,
                ..
            }
        ),
        "{error}"
    );

    store
        .put_statement(&statement(1, 3), Durability::Durable)
        .await
        .expect("put after errors");
    assert_eq!(seqs(&store.statements(1).expect("read")), [(1, 3)]);
    assert_eq!(store.counts().expect("counts").statements, 1);
}

#[tokio::test]
async fn statements_are_counted_at_open_when_the_counts_are_missing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    {
        let store = Store::open(&path, StoreOptions::default()).expect("open");
        store
            .put_session(
                &record(1, "a", SessionState::Open, "deny"),
                Durability::Durable,
            )
            .await
            .expect("put");
        for seq in 1..=3 {
            store
                .put_statement(&statement(1, seq), Durability::Durable)
                .await
                .expect("put statement");
        }
    }
    {
        // A store written before the counts key existed.
        let db = sled::open(&path).expect("open raw");
        db.open_tree(META_TREE)
            .expect("meta")
            .remove(COUNTS_KEY)
            .expect("remove counts");
        db.flush().expect("flush raw");
    }
    let store = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(
        store.counts().expect("counts"),
        StoreCounts {
            sessions: 1,
            open: 1,
            denied: 1,
            statements: 3,
        }
    );
    // Persisted right away, not only with the next write.
    drop(store);
    let store = Store::open(&path, StoreOptions::default()).expect("reopen");
    assert_eq!(store.counts().expect("counts").statements, 3);
    assert!(store.inner.meta.get(COUNTS_KEY).expect("read").is_some());
}

#[test]
fn counts_written_before_statements_existed_still_decode() {
    let counts: StoreCounts =
        serde_json::from_str(r#"{"sessions":4,"open":1,"denied":2}"#).expect("old counts");
    assert_eq!(
        counts,
        StoreCounts {
            sessions: 4,
            open: 1,
            denied: 2,
            statements: 0,
        }
    );
    assert_eq!(
        decode_statement_key(&statement_key(258, 3)).expect("decode"),
        (258, 3)
    );
    assert!(matches!(
        decode_statement_key(&[0; 8]),
        Err(StoreError::CorruptStatementKey { len: 8 })
    ));
}

#[tokio::test]
async fn reads_see_batched_writes_the_writer_holds_staged() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A long interval: batched writes stay staged until something needs them.
    let store = Store::open(dir.path(), options(Duration::from_secs(60))).expect("open");
    store
        .put_session(
            &record(1, "a", SessionState::Open, "allow"),
            Durability::Durable,
        )
        .await
        .expect("open record");
    let commits = store.stats().commits;
    for seq in 1..=20 {
        store
            .put_statement(&statement(1, seq), Durability::Batched)
            .await
            .expect("batched statement");
    }
    store
        .put_session(
            &record(1, "a", SessionState::Closed, "allow"),
            Durability::Batched,
        )
        .await
        .expect("close record");
    // The read commits what is staged first, and sees all of it.
    let session = store.get_session(1).expect("get").expect("stored");
    assert_eq!(session.state, SessionState::Closed);
    assert_eq!(store.statements(1).expect("statements").len(), 20);
    assert_eq!(store.counts().expect("counts").statements, 20);
    let stats = store.stats();
    assert!(
        stats.commits - commits < 21,
        "batched writes share commits: {} commits for 21 writes",
        stats.commits - commits
    );
    // Readers that find nothing staged do not wait.
    assert_eq!(store.statements(1).expect("statements again").len(), 20);
    store.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn staged_batched_writes_never_hold_up_senders_or_durable_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A long interval and a small queue: the writer holds batched writes staged
    // without listening to the queue, so only the gate's wake-ups keep things moving.
    let store = Store::open(
        dir.path(),
        StoreOptions {
            queue_capacity: 4,
            ..options(Duration::from_secs(60))
        },
    )
    .expect("open");
    store
        .put_session(
            &record(1, "a", SessionState::Open, "allow"),
            Durability::Durable,
        )
        .await
        .expect("open record");
    // Far more batched writes than the queue holds: a filling queue wakes the writer.
    tokio::time::timeout(Duration::from_secs(10), async {
        for seq in 1..=200 {
            store
                .put_statement(&statement(1, seq), Durability::Batched)
                .await
                .expect("batched statement");
        }
    })
    .await
    .expect("batched senders are not held up for the flush interval");
    // A durable write behind staged batched ones is answered at once, with them.
    tokio::time::timeout(
        Duration::from_secs(10),
        store.put_session(
            &record(1, "a", SessionState::Closed, "allow"),
            Durability::Durable,
        ),
    )
    .await
    .expect("a durable write wakes the writer")
    .expect("close record");
    assert_eq!(store.counts().expect("counts").statements, 200);
    // A last batched write stays staged; dropping the store still writes it promptly.
    store
        .put_statement(&statement(1, 201), Durability::Batched)
        .await
        .expect("batched statement");
    let dropped = std::time::Instant::now();
    drop(store);
    assert!(dropped.elapsed() < Duration::from_secs(10));
    let store = Store::open(dir.path(), options(Duration::from_secs(60))).expect("reopen");
    assert_eq!(store.statements(1).expect("statements").len(), 201);
}
