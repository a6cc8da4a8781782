//! The journal in front of sled: durable writes wait for one journal sync (shared by a
//! group), and a store whose sled never flushed them gets them back from the journal.
//!
//! As in `tests.rs`, a crash is a copy of the store's files taken while it runs.

use std::{path::Path, time::Duration};

use time::macros::datetime;

use super::{
    events::verify_dir,
    journal::{JOURNAL_DIR, SEGMENT_BYTES},
    *,
};
use crate::events::{Activity, Context, Event};

/// sled flushes only when told: what a copy holds past that came from the journal.
fn options(durability: Durability) -> StoreOptions {
    StoreOptions {
        flush_interval: Duration::from_secs(3600),
        queue_capacity: 256,
        audit_durability: durability,
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

fn crash_copy(store: &Store, scratch: &Path, name: &str) -> std::path::PathBuf {
    let copy = scratch.join(name);
    copy_dir(store.path(), &copy);
    copy
}

fn session(id: u64) -> SessionRecord {
    SessionRecord {
        agent: "agent-a".into(),
        destination: "127.0.0.1:5432".into(),
        state: SessionState::Open,
        ended_at: None,
        close_reason: None,
        decision: DecisionRecord {
            action: "allow".into(),
            rule: "r".into(),
            reason: "allowed".into(),
        },
        started_at: datetime!(2025-01-02 03:04:05 UTC),
        ..SessionRecord::refused(id, "r", "allowed")
    }
}

fn statement(session_id: u64, seq: u64) -> StatementRecord {
    StatementRecord {
        started_at: datetime!(2025-01-02 03:04:05 UTC),
        ..StatementRecord::begun(
            session_id,
            seq,
            format!("INSERT INTO load VALUES (?) -- {seq}"),
            "write".into(),
            "INSERT".into(),
            DecisionRecord {
                action: "allow".into(),
                rule: "r".into(),
                reason: "allowed".into(),
            },
        )
    }
}

fn statement_event(record: &StatementRecord) -> Event {
    Event::now(
        Context {
            session_id: Some(record.session_id),
            ..Context::default()
        },
        Activity::statement(record),
    )
}

/// The journal's segment files.
fn segments(store: &Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(store.join(JOURNAL_DIR))
        .expect("journal dir")
        .map(|entry| entry.expect("entry").path())
        .collect();
    paths.sort();
    paths
}

#[tokio::test]
async fn durable_events_survive_a_crash_that_sled_never_flushed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    store
        .put_session(&session(1), Durability::Durable)
        .await
        .expect("session");
    for seq in 1..=20 {
        let record = statement(1, seq);
        store
            .append(statement_event(&record), Durability::Durable)
            .await
            .expect("durable event");
        store
            .put_statement_with_events(&record, &[], Durability::Batched)
            .await
            .expect("record");
    }
    let stats = store.stats();
    assert_eq!(
        stats.flushes, 21,
        "one journal sync per durable write: {stats:?}"
    );
    let copy = crash_copy(&store, dir.path(), "crash");

    let report = verify_dir(&copy).expect("offline verify applies the journal");
    assert_eq!(report.chain_break, None, "{report:?}");
    assert_eq!(report.last_seq, Some(20));
    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    let events = crashed.events_after(0, 100).expect("events");
    assert_eq!(events.len(), 20);
    for (seq, stored) in (1..).zip(&events) {
        assert!(
            matches!(stored.event.activity, Activity::Statement { statement_seq, .. } if statement_seq == seq),
            "{stored:?}"
        );
    }
    assert_eq!(crashed.get_session(1).expect("get"), Some(session(1)));
    // Every record written before the last durable write went with its group.
    assert_eq!(crashed.statements(1).expect("statements").len(), 19);
    assert_eq!(crashed.counts().expect("counts").statements, 19);
    assert_eq!(crashed.verify_events().expect("verify").chain_break, None);
}

#[tokio::test]
async fn a_committed_result_survives_the_daemons_death_without_a_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    store
        .put_session(&session(3), Durability::Durable)
        .await
        .expect("session");
    let syncs = store.stats().flushes;
    let record = statement(3, 1);
    let result = Event::now(Context::default(), Activity::statement_result(&record));
    store
        .put_statement_with_events_committed(&record, &[result])
        .await
        .expect("committed");
    // Journaled (the page cache survives a killed process), not synced.
    assert_eq!(store.stats().flushes, syncs);
    let copy = crash_copy(&store, dir.path(), "crash");
    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    assert_eq!(crashed.statements(3).expect("statements"), vec![record]);
    assert_eq!(crashed.events_after(0, 10).expect("events").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_durable_writers_share_journal_syncs() {
    const SESSIONS: u64 = 16;
    const STATEMENTS: u64 = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    let tasks: Vec<_> = (1..=SESSIONS)
        .map(|id| {
            let store = store.clone();
            tokio::spawn(async move {
                store.put_session(&session(id), Durability::Durable).await?;
                for seq in 1..=STATEMENTS {
                    let record = statement(id, seq);
                    store
                        .append_all(vec![statement_event(&record)], Durability::Durable)
                        .await?;
                    store
                        .put_statement_with_events_committed(&record, &[])
                        .await?;
                }
                Ok::<_, StoreError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("writes");
    }
    let stats = store.stats();
    let durable_writes = SESSIONS * (STATEMENTS + 1);
    assert!(
        stats.flushes < durable_writes,
        "no sync was shared: {stats:?}"
    );
    let copy = crash_copy(&store, dir.path(), "crash");
    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    assert_eq!(
        crashed.counts().expect("counts").statements,
        SESSIONS * STATEMENTS
    );
    for id in 1..=SESSIONS {
        assert_eq!(
            crashed.statements(id).expect("statements").len() as u64,
            STATEMENTS
        );
    }
    assert_eq!(crashed.verify_events().expect("verify").chain_break, None);
}

#[tokio::test]
async fn a_torn_journal_tail_is_cut_and_the_rest_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    for id in 1..=5 {
        store
            .put_session(&session(id), Durability::Durable)
            .await
            .expect("session");
    }
    let copy = crash_copy(&store, dir.path(), "crash");
    // Half a sixth group, as a crash mid-write (or a power cut before its sync)
    // leaves it.
    let last = segments(&copy).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("read");
    let whole = bytes.len();
    bytes.extend_from_slice(&[0x40, 0, 0, 0, 1, 2, 3, 4, 6, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    std::fs::write(&last, &bytes).expect("write");

    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    let ids: Vec<u64> = crashed
        .list_sessions(&SessionFilter::default())
        .expect("list")
        .iter()
        .map(|record| record.id)
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    assert_eq!(
        std::fs::metadata(&last).expect("meta").len() as usize,
        whole
    );
    // Writing carries on after the last whole group.
    crashed
        .put_session(&session(6), Durability::Durable)
        .await
        .expect("after recovery");
}

#[tokio::test]
async fn a_damaged_journal_group_fails_the_open_instead_of_losing_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store"), options(Durability::Durable)).expect("open");
    for id in 1..=5 {
        store
            .put_session(&session(id), Durability::Durable)
            .await
            .expect("session");
    }
    let copy = crash_copy(&store, dir.path(), "crash");
    let last = segments(&copy).pop().expect("a segment");
    let mut bytes = std::fs::read(&last).expect("read");
    // Inside the first group: whole groups follow it.
    bytes[30] ^= 0x20;
    std::fs::write(&last, &bytes).expect("write");
    match Store::open(&copy, options(Durability::Durable)) {
        Err(StoreError::Journal(reason)) => assert!(reason.contains("corrupt"), "{reason}"),
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("a store whose journal lost a durable group opened"),
    }
}

#[tokio::test]
async fn flushed_groups_leave_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Store::open(&path, options(Durability::Durable)).expect("open");
    store
        .put_session(&session(1), Durability::Durable)
        .await
        .expect("session");
    // Enough statement text for a few segments.
    let big = "x".repeat(60_000);
    let mut seq = 0;
    let mut journaled = 0;
    while journaled < 3 * SEGMENT_BYTES as usize {
        seq += 1;
        let record = StatementRecord {
            sql: big.clone(),
            ..statement(1, seq)
        };
        store
            .put_statement_with_events_committed(&record, &[])
            .await
            .expect("put");
        journaled += big.len();
    }
    assert!(segments(&path).len() >= 3, "{:?}", segments(&path));
    store.flush().await.expect("flush");
    assert_eq!(segments(&path).len(), 1, "{:?}", segments(&path));
    drop(store);
    let reopened = Store::open(&path, options(Durability::Durable)).expect("reopen");
    assert_eq!(
        reopened.statements(1).expect("statements").len() as u64,
        seq
    );
}

#[tokio::test]
async fn sled_catches_up_in_the_background_and_the_journal_shrinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store");
    let store = Store::open(
        &path,
        StoreOptions {
            flush_interval: Duration::from_millis(50),
            ..options(Durability::Durable)
        },
    )
    .expect("open");
    store
        .put_session(&session(1), Durability::Durable)
        .await
        .expect("session");
    let big = "x".repeat(60_000);
    for seq in 1..=(3 * SEGMENT_BYTES / 60_000) {
        let record = StatementRecord {
            sql: big.clone(),
            ..statement(1, seq)
        };
        store
            .put_statement_with_events(&record, &[], Durability::Durable)
            .await
            .expect("put");
    }
    // No flush asked for: the checkpoint thread flushes sled after the deadline, and
    // the writer then drops the segments sled holds.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while segments(&path).len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "journal never shrank: {:?}",
            segments(&path)
        );
        store
            .put_session(&session(1), Durability::Durable)
            .await
            .expect("put");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // sled alone (the journal emptied) has everything.
    let copy = crash_copy(&store, dir.path(), "crash");
    std::fs::remove_dir_all(copy.join(JOURNAL_DIR)).expect("remove the journal");
    let crashed = Store::open(&copy, options(Durability::Durable)).expect("open the copy");
    assert_eq!(
        crashed.statements(1).expect("statements").len() as u64,
        3 * SEGMENT_BYTES / 60_000
    );
}
