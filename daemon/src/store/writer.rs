//! The store's single writer: the only code that mutates the database.
//!
//! One thread owns the write side so that group commit is simple and ordering is total:
//! it drains the command queue and stages the drained writes (seq and hash chain are
//! assigned here, in order). Batched writes stay staged, across drains, until something
//! needs them committed: a durable waiter, a batched `append` (answered once committed;
//! a batched `append_all` is not answered and stays staged), retention, a scan, a flush
//! or shutdown, the staged size cap, a reader of the records (see [`ReadGate`]) or the
//! flush deadline of the oldest staged write. Then everything
//! staged is appended to the record log as one record (statements and events live
//! there only) and its sessions, if any, are applied as one sled transaction; the log
//! is fdatasync'ed once if any waiter needs durability (or the deadline passed), and
//! the waiters are answered. A batched write is therefore
//! committed and made durable at most the flush interval after it was queued, as
//! before, but a lone client's statements share one commit instead of paying one each.
//! sled's own flush runs on a checkpoint thread (see [`Checkpointer`]), never between
//! a group and its waiters. Errors are answered, logged and counted; the loop itself only ends when
//! the queue is closed (every [`super::Store`] dropped, or a shutdown).
//!
//! While it holds batched writes staged the writer does not listen to the queue, so
//! that batched senders (one per statement on a busy proxy) do not wake its thread one
//! by one: it drains the queue when the oldest staged write is due, when a command
//! someone waits on (durable writes, flushes, retention, ...) or a reader wakes it
//! through the [`ReadGate`], or when the queue is half full.
//!
//! The thread runs a small current-thread tokio runtime of its own, only to wait on
//! the queue with a deadline; its sled calls block that thread alone.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::Deserialize;
use sled::Transactional;
use time::OffsetDateTime;
use tokio::{
    sync::{Notify, mpsc, oneshot, watch},
    time::Instant,
};

use super::{
    COUNTS_KEY, LAST_SESSION_ID_KEY, SessionRecord, SessionState, StoreCounts, StoreError,
    StoreStats, decode_record, decode_session_key, encode_counts, encode_record,
    events::{
        ChainLink, EVENT_LOG_KEY, EventLogState, chain_hash, encode_value, event_time, split_value,
        to_hex, write_head_file,
    },
    journal::{Entry, entries, push_event, push_session, push_statement},
    log::{LOG_APPLIED_KEY, LOG_DROPPED_KEY, LogShared, log_error, reindex},
    segment::scan_span,
    session_key,
};
use crate::events::{Activity, Context, Event};

/// Most writes kept staged (uncommitted) across drains before they are committed.
const MAX_STAGED_WRITES: usize = 2048;
/// Most encoded bytes kept staged across drains before they are committed.
const MAX_STAGED_BYTES: usize = 1024 * 1024;
/// The longest a reader waits for the writer to commit what it has staged; past it
/// (a writer stuck in a slow flush, or gone) the read goes ahead with what is committed.
const READ_GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// How readers of the records get to see writes the writer holds staged: every command
/// is counted once queued, the writer says through which count it has committed, and a
/// read waits (briefly, blocking) until the writer has committed every command queued
/// before it, waking the writer to commit at once.
#[derive(Default)]
pub(super) struct ReadGate {
    /// Commands queued so far.
    queued: AtomicU64,
    state: Mutex<GateState>,
    committed: Condvar,
    /// Wakes the writer to commit what it holds staged.
    wake: Notify,
}

#[derive(Default)]
struct GateState {
    /// Commands received by the writer and committed (or answered, or dropped by a
    /// failed commit): nothing of them is staged any more.
    committed: u64,
    /// Readers waiting for a commit.
    waiters: usize,
    /// The writer has stopped: nothing is staged any more.
    closed: bool,
}

impl ReadGate {
    /// Wakes the writer to apply what is queued (it does not listen to the queue while
    /// it holds batched writes staged).
    pub fn wake_writer(&self) {
        self.wake.notify_one();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one command queued for the writer.
    pub fn queued(&self) {
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// Returns once every command queued before the call is committed, so that a read
    /// sees it. Cheap when nothing is staged; otherwise blocks for one commit.
    pub fn commit_staged(&self) {
        let target = self.queued.load(Ordering::Acquire);
        let mut state = self.lock();
        if state.committed >= target || state.closed {
            return;
        }
        state.waiters += 1;
        self.wake.notify_one();
        let deadline = std::time::Instant::now() + READ_GATE_TIMEOUT;
        while state.committed < target && !state.closed {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::warn!("store read went ahead without the writer's newest writes");
                break;
            }
            state = self
                .committed
                .wait_timeout(state, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        state.waiters -= 1;
    }

    /// Whether a reader waits for the writer to commit.
    fn has_waiters(&self) -> bool {
        self.lock().waiters > 0
    }

    /// The first `received` commands the writer received hold nothing staged any more.
    fn set_committed(&self, received: u64) {
        let mut state = self.lock();
        state.committed = state.committed.max(received);
        if state.waiters > 0 {
            self.committed.notify_all();
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        self.committed.notify_all();
    }
}

/// What woke the writer's loop.
enum Woke {
    Command(Command),
    /// A sender that needs its command applied soon, or a reader (see [`ReadGate`]).
    Wake,
    /// The oldest staged or unflushed batched write is due on disk.
    Deadline,
}

/// An answer channel for a caller awaiting a write.
pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What callers ask of the writer.
pub(super) enum Command {
    Put(PutRequest),
    PutStatement(StatementPut),
    Append(AppendRequest),
    /// Drop what retention says is too old or too much; answered after a flush.
    Retain {
        rule: RetentionRule,
        now: OffsetDateTime,
        reply: Reply<Option<RetentionOutcome>>,
    },
    /// Answer once everything queued before is flushed.
    Flush {
        reply: Reply<()>,
    },
    /// Close every open record; answered with how many, after a flush.
    CloseInterrupted {
        reason: String,
        ended_at: OffsetDateTime,
        reply: Reply<usize>,
    },
    /// Write what is queued, flush, stop.
    Shutdown {
        reply: Reply<()>,
    },
}

impl Command {
    /// Whether the writer must be woken for it: someone waits on it, or it is not a
    /// batched write (which may wait for the writer's next drain, at most the flush
    /// interval away).
    pub fn wakes_writer(&self) -> bool {
        match self {
            Command::Put(put) => put.reply.is_some(),
            Command::PutStatement(put) => put.reply.is_some(),
            Command::Append(append) => append.reply.is_some() || append.durable,
            Command::Retain { .. }
            | Command::Flush { .. }
            | Command::CloseInterrupted { .. }
            | Command::Shutdown { .. } => true,
        }
    }
}

/// One session record to insert or replace, already encoded by the caller.
pub(super) struct PutRequest {
    pub id: u64,
    pub encoded: Vec<u8>,
    pub summary: RecordSummary,
    /// Events (encoded JSON) appended in the same commit as the record.
    pub events: Vec<Vec<u8>>,
    pub queued_at: std::time::Instant,
    /// `Some` for a durable write: answered after the flush.
    pub reply: Option<Reply<()>>,
}

/// One statement record to insert or replace, already encoded by the caller.
pub(super) struct StatementPut {
    /// `(session id, seq)` as the `statements` tree's key.
    pub key: [u8; 16],
    pub encoded: Vec<u8>,
    /// Events (encoded JSON) appended in the same commit as the record.
    pub events: Vec<Vec<u8>>,
    pub queued_at: std::time::Instant,
    /// `Some` for a durable write: answered after the flush.
    pub reply: Option<Reply<()>>,
    /// With a reply: answered once committed (journaled: it survives the daemon's
    /// death), without waiting for a sync.
    pub committed_only: bool,
}

/// One event to append, its JSON already encoded by the caller.
pub(super) struct AppendRequest {
    pub encoded: Vec<u8>,
    pub queued_at: std::time::Instant,
    /// Answered with the event's seq: after the flush when `durable`, else after the
    /// commit. `None` for a batched append nobody waits for (`append_all`): it stays
    /// staged like a batched put, so a hot path's events never force a commit each.
    pub reply: Option<Reply<u64>>,
    pub durable: bool,
}

/// What retention keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetentionRule {
    /// Events older than this are dropped.
    pub max_age: Option<Duration>,
    /// Above this many bytes of events, the oldest are dropped down to 90% of it.
    pub max_bytes: Option<u64>,
}

/// What one retention pass dropped.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RetentionOutcome {
    pub first_dropped_seq: u64,
    pub last_dropped_seq: u64,
    pub events_dropped: u64,
    pub sessions_dropped: u64,
    pub statements_dropped: u64,
    /// `age` or `size`.
    pub reason: &'static str,
    /// The seq of the `retention` event recording it.
    pub retention_seq: u64,
}

/// The event log's part of the writer.
pub(super) struct EventLog {
    pub state: EventLogState,
    /// The store directory, for the head file.
    pub dir: PathBuf,
    /// Publishes the newest flushed seq.
    pub durable: Arc<watch::Sender<u64>>,
}

/// The parts of a record that [`StoreCounts`] depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RecordSummary {
    pub open: bool,
    pub denied: bool,
}

impl RecordSummary {
    pub fn of(record: &SessionRecord) -> Self {
        Self {
            open: record.state == SessionState::Open,
            denied: record.decision.action == "deny",
        }
    }

    /// Reads the summary of a stored record without decoding all of it.
    pub fn decode(id: u64, value: &[u8]) -> Result<Self, StoreError> {
        #[derive(Deserialize)]
        struct StoredDecision {
            action: String,
        }
        #[derive(Deserialize)]
        struct StoredSummary {
            state: SessionState,
            decision: StoredDecision,
        }
        let stored: StoredSummary =
            serde_json::from_slice(value).map_err(|source| StoreError::Decode {
                key: format!("session {id}"),
                source,
            })?;
        Ok(Self {
            open: stored.state == SessionState::Open,
            denied: stored.decision.action == "deny",
        })
    }
}

/// The writer's counters, shared with [`super::Store::stats`].
#[derive(Default)]
pub(super) struct WriterStats {
    commits: AtomicU64,
    flushes: AtomicU64,
    records_written: AtomicU64,
    statements_written: AtomicU64,
    failed_commits: AtomicU64,
    failed_flushes: AtomicU64,
}

impl WriterStats {
    pub fn snapshot(&self) -> StoreStats {
        StoreStats {
            commits: self.commits.load(Ordering::Relaxed),
            flushes: self.flushes.load(Ordering::Relaxed),
            records_written: self.records_written.load(Ordering::Relaxed),
            statements_written: self.statements_written.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            failed_flushes: self.failed_flushes.load(Ordering::Relaxed),
        }
    }
}

/// Writes staged for one sled transaction.
#[derive(Default)]
struct Group {
    sessions: sled::Batch,
    /// The newest summary staged per id, so a second write of an id in the same group
    /// counts against the first one rather than against what is stored.
    staged_summaries: HashMap<u64, RecordSummary>,
    transitions: Vec<(Option<RecordSummary>, RecordSummary)>,
    highest_id: u64,
    /// Statement keys staged in this group (each once).
    staged_statements: HashSet<[u8; 16]>,
    /// The newest event staged, which the next one links to.
    event_head: Option<ChainLink>,
    new_events: u64,
    /// Retention: the records removed, and the new base of the chain.
    new_base: Option<ChainLink>,
    removed_sessions: Vec<RecordSummary>,
    /// Retention: the log's segments up to this LSN are removed after the commit.
    dropped_through: Option<u64>,
    /// Everything staged, as the journal records it (see `journal.rs`).
    journal: Vec<u8>,
}

impl Group {
    fn stage(
        &mut self,
        id: u64,
        encoded: Vec<u8>,
        previous: Option<RecordSummary>,
        current: RecordSummary,
    ) {
        push_session(&mut self.journal, id, &encoded);
        self.sessions.insert(&session_key(id), encoded);
        self.staged_summaries.insert(id, current);
        self.transitions.push((previous, current));
        self.highest_id = self.highest_id.max(id);
    }

    /// Stages a statement (counted when the log notes it, if its key is new).
    fn stage_statement(&mut self, key: [u8; 16], encoded: &[u8]) {
        push_statement(&mut self.journal, &key, encoded);
        self.staged_statements.insert(key);
    }

    /// Session records staged.
    fn records(&self) -> usize {
        self.transitions.len()
    }

    /// Statement records staged (each key once).
    fn statement_records(&self) -> usize {
        self.staged_statements.len()
    }

    fn is_empty(&self) -> bool {
        self.records() == 0
            && self.statement_records() == 0
            && self.new_events == 0
            && self.new_base.is_none()
    }

    /// Chains an encoded event after `committed` (or the newest staged) and stages it.
    fn stage_event(&mut self, committed: ChainLink, json: &[u8]) -> u64 {
        let previous = self.event_head.unwrap_or(committed);
        let seq = previous.seq + 1;
        let hash = chain_hash(seq, &previous.hash, json);
        let value = encode_value(&previous.hash, &hash, json);
        push_event(&mut self.journal, seq, &value);
        self.event_head = Some(ChainLink { seq, hash });
        self.new_events += 1;
        seq
    }
}

/// Caller puts staged into a [`Group`], with who waits for them.
#[derive(Default)]
struct StagedPuts {
    group: Group,
    durable_replies: Vec<Reply<()>>,
    /// Appends answered with their seq after the flush, and after the commit.
    durable_appends: Vec<(Reply<u64>, u64)>,
    committed_appends: Vec<(Reply<u64>, u64)>,
    /// Puts answered once committed (in the journal), before any sync.
    committed_puts: Vec<Reply<()>>,
    batched: usize,
    oldest_batched: Option<std::time::Instant>,
    /// Writes staged and their encoded bytes, for the staged size cap.
    writes: usize,
    bytes: usize,
}

impl StagedPuts {
    /// Counts one staged write of `bytes` encoded bytes against the staged size cap.
    fn count(&mut self, bytes: usize) {
        self.writes += 1;
        self.bytes += bytes;
    }

    fn over_cap(&self) -> bool {
        self.writes >= MAX_STAGED_WRITES || self.bytes >= MAX_STAGED_BYTES
    }

    /// When the oldest staged batched write is due on disk.
    fn deadline(&self, flush_interval: Duration) -> Option<Instant> {
        self.oldest_batched
            .map(|oldest| Instant::from_std(oldest) + flush_interval)
    }

    /// Registers who waits for a staged put: a durable caller, or the flush deadline.
    fn wait(&mut self, reply: Option<Reply<()>>, queued_at: std::time::Instant) {
        match reply {
            Some(reply) => self.durable_replies.push(reply),
            None => {
                self.batched += 1;
                self.oldest_batched = Some(match self.oldest_batched {
                    Some(oldest) => oldest.min(queued_at),
                    None => queued_at,
                });
            }
        }
    }
}

/// A waiter whose own part succeeded or failed; the flush result is added to it.
enum PendingReply {
    Unit(Reply<()>, Result<(), StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
    Seq(Reply<u64>, Result<u64, StoreError>),
    Retained(
        Reply<Option<RetentionOutcome>>,
        Result<Option<RetentionOutcome>, StoreError>,
    ),
}

impl PendingReply {
    fn answer(self, flush: Option<&Result<(), StoreError>>) {
        let flush_result = || match flush {
            Some(Err(error)) => Err(error.clone_for_waiter()),
            _ => Ok(()),
        };
        // A caller that went away no longer needs its answer.
        match self {
            PendingReply::Unit(reply, outcome) => {
                let _ = reply.send(outcome.and_then(|()| flush_result()));
            }
            PendingReply::Count(reply, outcome) => {
                let _ = reply.send(outcome.and_then(|count| flush_result().map(|()| count)));
            }
            PendingReply::Seq(reply, outcome) => {
                let _ = reply.send(outcome.and_then(|seq| flush_result().map(|()| seq)));
            }
            PendingReply::Retained(reply, outcome) => {
                let _ = reply.send(outcome.and_then(|done| flush_result().map(|()| done)));
            }
        }
    }
}

pub(super) struct Writer {
    db: sled::Db,
    sessions: sled::Tree,
    meta: sled::Tree,
    /// The counts as committed; the next commit stores them updated.
    counts: StoreCounts,
    persisted_last_session_id: u64,
    next_session_id: Arc<AtomicU64>,
    stats: Arc<WriterStats>,
    flush_interval: Duration,
    /// When the oldest committed-but-unflushed batched write is due on disk.
    flush_deadline: Option<Instant>,
    /// Most commands applied in one group.
    max_group: usize,
    log: EventLog,
    /// The newest seq known flushed (journal or sled).
    flushed_seq: u64,
    /// The newest seq the head file names (flushed in sled).
    head_file_seq: u64,
    /// Batched writes staged but not committed yet (only batched waiters: anything with
    /// a waiter that needs a commit is committed in the drain it arrived in).
    staged: StagedPuts,
    gate: Arc<ReadGate>,
    /// Commands received so far, for the [`ReadGate`].
    received: u64,
    /// The record log: statements and events live there only (see `log.rs`).
    records: Arc<LogShared>,
    /// The newest log LSN whose sessions sled holds (committed, maybe not flushed).
    applied: u64,
    checkpointer: Checkpointer,
    syncer: Syncer,
}

/// sled's flushes, off the writer's thread: the log already holds every committed
/// group durably, so sled's flush (which hands its writes to sled's I/O threads and
/// waits) never holds up a group commit. Requests coalesce. sled holds sessions only,
/// so it is asked to flush only after groups that changed sessions.
struct Checkpointer {
    requests: Option<std::sync::mpsc::Sender<u64>>,
    /// The newest journal LSN sled holds on disk.
    durable_lsn: Arc<AtomicU64>,
    /// The newest LSN asked for (or flushed in the foreground).
    requested: u64,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn start(db: sled::Db, stats: Arc<WriterStats>, applied: u64) -> Result<Self, StoreError> {
        let (requests, received) = std::sync::mpsc::channel::<u64>();
        let durable_lsn = Arc::new(AtomicU64::new(applied));
        let durable = Arc::clone(&durable_lsn);
        let thread = std::thread::Builder::new()
            .name("sluice-store-ckpt".into())
            .spawn(move || {
                while let Ok(mut lsn) = received.recv() {
                    while let Ok(newer) = received.try_recv() {
                        lsn = newer;
                    }
                    match db.flush() {
                        Ok(_) => {
                            durable.fetch_max(lsn, Ordering::AcqRel);
                        }
                        Err(error) => {
                            stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(%error, "store flush (checkpoint) failed");
                        }
                    }
                }
            })
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            requests: Some(requests),
            durable_lsn,
            requested: applied,
            thread: Some(thread),
        })
    }

    /// Asks for a sled flush covering everything committed up to log LSN `lsn`.
    fn request(&mut self, lsn: u64) {
        if lsn <= self.requested {
            return;
        }
        self.requested = lsn;
        if let Some(requests) = &self.requests {
            let _ = requests.send(lsn);
        }
    }
}

impl Drop for Checkpointer {
    /// Lets the thread finish its flush and release sled before the store's drop ends.
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("store checkpoint thread panicked");
        }
    }
}

/// Durable waiters' fdatasyncs, off the writer's thread: while the disk syncs one
/// group the writer goes on committing the next (and answering commits nobody syncs
/// for, such as strict mode's results), so a sync never holds up a commit. Requests
/// that queue up during a sync share the next one. Each request is answered only
/// after a sync that began after its group was appended.
struct Syncer {
    requests: Option<std::sync::mpsc::Sender<SyncRequest>>,
    thread: Option<JoinHandle<()>>,
}

struct SyncRequest {
    handle: super::segment::SyncHandle,
    /// The newest event appended before the request: durable once synced.
    head: ChainLink,
    replies: Vec<PendingReply>,
}

/// How often, at most, the sync thread rewrites `events.head`.
const HEAD_FILE_EVERY: Duration = Duration::from_secs(1);

impl Syncer {
    fn start(
        stats: Arc<WriterStats>,
        durable: Arc<watch::Sender<u64>>,
        dir: PathBuf,
    ) -> Result<Self, StoreError> {
        let (requests, received) = std::sync::mpsc::channel::<SyncRequest>();
        let thread = std::thread::Builder::new()
            .name("sluice-store-sync".into())
            .spawn(move || {
                let mut head_written = (0u64, std::time::Instant::now());
                while let Ok(first) = received.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = received.try_recv() {
                        batch.push(more);
                    }
                    let Some(newest) = batch.last() else {
                        continue;
                    };
                    stats.flushes.fetch_add(1, Ordering::Relaxed);
                    let synced = newest.handle.sync().map_err(|error| {
                        stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%error, "store journal sync failed");
                        StoreError::Journal(error.to_string())
                    });
                    if synced.is_ok() {
                        let head = batch.iter().map(|request| request.head).max_by_key(|head| head.seq);
                        if let Some(head) = head {
                            durable.send_if_modified(|published| {
                                let newer = head.seq > *published;
                                if newer {
                                    *published = head.seq;
                                }
                                newer
                            });
                            // The newest synced event, for `verify` and the next open
                            // to notice a log that lost it (not more often than this:
                            // a rename per sync would cost strict mode).
                            if head.seq > head_written.0
                                && head_written.1.elapsed() >= HEAD_FILE_EVERY
                            {
                                match write_head_file(&dir, head) {
                                    Ok(()) => head_written = (head.seq, std::time::Instant::now()),
                                    Err(error) => tracing::warn!(%error, seq = head.seq, "cannot update events.head"),
                                }
                            }
                        }
                    }
                    for request in batch {
                        for reply in request.replies {
                            reply.answer(Some(&synced));
                        }
                    }
                }
            })
            .map_err(StoreError::Spawn)?;
        Ok(Self {
            requests: Some(requests),
            thread: Some(thread),
        })
    }
}

impl Drop for Syncer {
    /// Answers what is queued (after its sync) before the writer goes.
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("store sync thread panicked");
        }
    }
}

/// Starts `writer` on its own thread, serving `commands` until the queue closes.
pub(super) fn spawn(
    writer: Writer,
    commands: mpsc::Receiver<Command>,
) -> Result<JoinHandle<()>, StoreError> {
    let (started, start_result) = std::sync::mpsc::sync_channel(1);
    // The runtime is built on the thread itself: dropping one from async code panics.
    let thread = std::thread::Builder::new()
        .name("sluice-store".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build();
            match runtime {
                Ok(runtime) => {
                    let _ = started.send(Ok(()));
                    runtime.block_on(writer.run(commands));
                }
                Err(error) => {
                    let _ = started.send(Err(error));
                }
            }
        })
        .map_err(StoreError::Spawn)?;
    match start_result.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(StoreError::Spawn(error))
        }
        Err(_) => {
            let _ = thread.join();
            Err(StoreError::Spawn(std::io::Error::other(
                "the store writer thread exited while starting",
            )))
        }
    }
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        db: sled::Db,
        sessions: sled::Tree,
        meta: sled::Tree,
        counts: StoreCounts,
        persisted_last_session_id: u64,
        next_session_id: Arc<AtomicU64>,
        stats: Arc<WriterStats>,
        flush_interval: Duration,
        max_group: usize,
        log: EventLog,
        gate: Arc<ReadGate>,
        records: Arc<LogShared>,
        applied: u64,
    ) -> Result<Self, StoreError> {
        let flushed_seq = log.state.head.seq;
        let checkpointer = Checkpointer::start(db.clone(), Arc::clone(&stats), applied)?;
        let syncer = Syncer::start(
            Arc::clone(&stats),
            Arc::clone(&log.durable),
            log.dir.clone(),
        )?;
        Ok(Self {
            db,
            sessions,
            meta,
            counts,
            persisted_last_session_id,
            next_session_id,
            stats,
            flush_interval,
            flush_deadline: None,
            max_group: max_group.max(1),
            log,
            flushed_seq,
            head_file_seq: flushed_seq,
            staged: StagedPuts::default(),
            gate,
            received: 0,
            records,
            applied,
            checkpointer,
            syncer,
        })
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut shutdown_replies = Vec::new();
        let gate = Arc::clone(&self.gate);
        loop {
            let deadline = match (
                self.flush_deadline,
                self.staged.deadline(self.flush_interval),
            ) {
                (Some(flush), Some(staged)) => Some(flush.min(staged)),
                (flush, staged) => flush.or(staged),
            };
            // While batched writes are staged the queue is not listened to: batched
            // senders then hand over without waking this thread each (those with a
            // waiter, and a filling queue, wake it through the gate), and what they
            // queued is drained when woken or when the oldest staged write is due.
            let listening = self.staged.oldest_batched.is_none();
            let woke = tokio::select! {
                biased;
                next = commands.recv(), if listening => match next {
                    Some(command) => Woke::Command(command),
                    None => break,
                },
                () = gate.wake.notified() => Woke::Wake,
                () = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)),
                    if deadline.is_some() => Woke::Deadline,
            };
            let mut drained = Vec::new();
            let on_deadline = matches!(woke, Woke::Deadline);
            if let Woke::Command(first) = woke {
                drained.push(first);
            }
            while drained.len() < self.max_group {
                match commands.try_recv() {
                    Ok(command) => drained.push(command),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        // Every store dropped: commit, then listen to see the end.
                        gate.wake.notify_one();
                        break;
                    }
                }
            }
            if drained.is_empty() {
                // Nothing queued: commit what is staged, flush on schedule.
                let mut replies = Vec::new();
                self.commit_staged(&mut replies);
                if on_deadline {
                    self.tick(replies);
                } else {
                    for reply in replies {
                        reply.answer(None);
                    }
                }
                continue;
            }
            if drained.len() >= self.max_group {
                // More may be queued: drain again at once rather than at the deadline.
                gate.wake.notify_one();
            }
            self.received += drained.len() as u64;
            if self.apply(drained, &mut shutdown_replies) {
                // Commands already queued are still received and applied.
                commands.close();
            }
        }
        let mut replies = Vec::new();
        self.commit_staged(&mut replies);
        // Ids handed out since the last commit are persisted too, so that a clean
        // restart never reuses one.
        let last_handed_out = self
            .next_session_id
            .load(Ordering::Relaxed)
            .saturating_sub(1);
        if last_handed_out > self.persisted_last_session_id {
            let _ = self.commit(Group::default());
        }
        let flushed = self.flush();
        self.gate.close();
        for reply in replies {
            reply.answer(Some(&flushed));
        }
        for reply in shutdown_replies {
            PendingReply::Unit(reply, Ok(())).answer(Some(&flushed));
        }
    }

    /// Commits what is staged (if anything) and tells waiting readers.
    fn commit_staged(&mut self, replies: &mut Vec<PendingReply>) {
        let staged = std::mem::take(&mut self.staged);
        self.commit_puts(staged, replies);
        self.gate.set_committed(self.received);
    }

    /// Applies one drained group of commands; `true` when one of them was a shutdown.
    fn apply(&mut self, drained: Vec<Command>, shutdown_replies: &mut Vec<Reply<()>>) -> bool {
        let mut staged = std::mem::take(&mut self.staged);
        let mut replies = Vec::new();
        // A durable waiter needs the journal synced; flushes, retention, closing
        // interrupted sessions and shutdown flush sled itself.
        let mut must_sync = false;
        let mut must_flush = false;
        let mut must_commit = false;
        let mut shutting_down = false;
        for command in drained {
            match command {
                Command::Put(put) => {
                    must_sync |= put.reply.is_some();
                    self.stage_put(&mut staged, put);
                }
                Command::PutStatement(put) => {
                    must_sync |= put.reply.is_some() && !put.committed_only;
                    must_commit |= put.committed_only;
                    self.stage_statement(&mut staged, put);
                }
                Command::Append(append) => {
                    must_sync |= append.durable;
                    let seq = staged
                        .group
                        .stage_event(self.log.state.head, &append.encoded);
                    staged.count(append.encoded.len());
                    match append.reply {
                        Some(reply) if append.durable => {
                            staged.durable_appends.push((reply, seq));
                        }
                        Some(reply) => {
                            // Answered once committed (visible to readers), as documented.
                            must_commit = true;
                            staged.committed_appends.push((reply, seq));
                            staged.wait(None, append.queued_at);
                        }
                        // Nobody waits: staged like a batched put, committed and flushed
                        // with the rest by the flush deadline (at once if durable).
                        None => staged.wait(None, append.queued_at),
                    }
                }
                Command::Retain { rule, now, reply } => {
                    self.commit_puts(std::mem::take(&mut staged), &mut replies);
                    must_flush = true;
                    let outcome = self.retain(rule, now);
                    replies.push(PendingReply::Retained(reply, outcome));
                }
                Command::Flush { reply } => {
                    must_flush = true;
                    replies.push(PendingReply::Unit(reply, Ok(())));
                }
                Command::CloseInterrupted {
                    reason,
                    ended_at,
                    reply,
                } => {
                    // Writes queued before it must be visible to its scan.
                    self.commit_puts(std::mem::take(&mut staged), &mut replies);
                    must_flush = true;
                    let outcome = self.close_open_sessions(&reason, ended_at);
                    replies.push(PendingReply::Count(reply, outcome));
                }
                Command::Shutdown { reply } => {
                    shutting_down = true;
                    shutdown_replies.push(reply);
                }
            }
        }
        let now = Instant::now();
        let staged_due = staged
            .deadline(self.flush_interval)
            .is_some_and(|deadline| deadline <= now);
        let commit = must_flush
            || must_sync
            || must_commit
            || shutting_down
            || staged_due
            || staged.over_cap()
            || staged.group.is_empty()
            || self.gate.has_waiters();
        self.staged = staged;
        if commit {
            self.commit_staged(&mut replies);
        }
        // Otherwise only batched writes are staged: they wait for a later commit, at the
        // latest when the oldest of them is due on disk.

        let deadline_passed = self.flush_deadline.is_some_and(|deadline| deadline <= now);
        // Anyone waiting for durability gets the log's sync (which also refuses on a
        // full disk, even when sled's preallocated files could still take the write);
        // sled's own flush follows on its schedule or when asked for.
        if must_flush {
            let flushed = self.flush();
            for reply in replies {
                reply.answer(Some(&flushed));
            }
        } else if must_sync || deadline_passed {
            // The durable waiters are answered by the syncer once the journal is synced.
            if deadline_passed {
                self.tick(replies);
            } else {
                self.request_sync(replies);
            }
        } else {
            for reply in replies {
                reply.answer(None);
            }
        }
        shutting_down
    }

    fn stage_put(&self, staged: &mut StagedPuts, put: PutRequest) {
        let previous = match staged.group.staged_summaries.get(&put.id) {
            Some(summary) => Ok(Some(*summary)),
            None => self.stored_summary(put.id),
        };
        let previous = match previous {
            Ok(previous) => previous,
            Err(error) => {
                match put.reply {
                    Some(reply) => {
                        let _ = reply.send(Err(error));
                    }
                    None => {
                        self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(session = put.id, %error, "batched session write dropped");
                    }
                }
                return;
            }
        };
        // An id given by the caller is never handed out again.
        self.next_session_id
            .fetch_max(put.id.saturating_add(1), Ordering::Relaxed);
        staged.count(put.encoded.len() + put.events.iter().map(Vec::len).sum::<usize>());
        staged
            .group
            .stage(put.id, put.encoded, previous, put.summary);
        for event in &put.events {
            staged.group.stage_event(self.log.state.head, event);
        }
        staged.wait(put.reply, put.queued_at);
    }

    fn stage_statement(&self, staged: &mut StagedPuts, put: StatementPut) {
        staged.count(put.encoded.len() + put.events.iter().map(Vec::len).sum::<usize>());
        staged.group.stage_statement(put.key, &put.encoded);
        for event in &put.events {
            staged.group.stage_event(self.log.state.head, event);
        }
        match put.reply {
            Some(reply) if put.committed_only => {
                staged.committed_puts.push(reply);
                staged.wait(None, put.queued_at);
            }
            reply => staged.wait(reply, put.queued_at),
        }
    }

    fn stored_summary(&self, id: u64) -> Result<Option<RecordSummary>, StoreError> {
        self.sessions
            .get(session_key(id))
            .map_err(StoreError::Read)?
            .map(|value| RecordSummary::decode(id, &value))
            .transpose()
    }

    /// Commits staged caller puts and queues their answers for after the flush.
    fn commit_puts(&mut self, staged: StagedPuts, replies: &mut Vec<PendingReply>) {
        if staged.group.is_empty() {
            return;
        }
        let records = staged.group.records();
        let statements = staged.group.statement_records();
        match self.commit(staged.group) {
            Ok(()) => {
                if let Some(oldest) = staged.oldest_batched {
                    let due = Instant::from_std(oldest) + self.flush_interval;
                    self.flush_deadline = Some(match self.flush_deadline {
                        Some(deadline) => deadline.min(due),
                        None => due,
                    });
                }
                for reply in staged.durable_replies {
                    replies.push(PendingReply::Unit(reply, Ok(())));
                }
                for (reply, seq) in staged.committed_appends {
                    let _ = reply.send(Ok(seq));
                }
                for reply in staged.committed_puts {
                    let _ = reply.send(Ok(()));
                }
                for (reply, seq) in staged.durable_appends {
                    replies.push(PendingReply::Seq(reply, Ok(seq)));
                }
            }
            Err(error) => {
                if staged.batched > 0 {
                    tracing::error!(
                        records,
                        statements,
                        batched = staged.batched,
                        %error,
                        "batched writes lost: store commit failed"
                    );
                }
                for reply in staged.durable_replies {
                    replies.push(PendingReply::Unit(reply, Err(error.clone_for_waiter())));
                }
                for (reply, _) in staged.committed_appends {
                    let _ = reply.send(Err(error.clone_for_waiter()));
                }
                for reply in staged.committed_puts {
                    let _ = reply.send(Err(error.clone_for_waiter()));
                }
                for (reply, _) in staged.durable_appends {
                    replies.push(PendingReply::Seq(reply, Err(error.clone_for_waiter())));
                }
            }
        }
    }

    /// Appends `group` to the record log (statements and events live there only) and,
    /// when it changes sessions or the store's bookkeeping, applies that to sled as one
    /// transaction. A group of statements and events costs one `write` and no sled
    /// insert.
    fn commit(&mut self, group: Group) -> Result<(), StoreError> {
        let mut counts = self.counts;
        for (previous, current) in &group.transitions {
            counts.record_transition(*previous, *current);
        }
        let last_session_id = self.persisted_last_session_id.max(group.highest_id).max(
            self.next_session_id
                .load(Ordering::Relaxed)
                .saturating_sub(1),
        );
        let last_session_id_encoded = session_key(last_session_id);
        for removed in &group.removed_sessions {
            counts.sessions = counts.sessions.saturating_sub(1);
            if removed.denied {
                counts.denied = counts.denied.saturating_sub(1);
            }
        }
        let mut log_state = self.log.state;
        if let Some(base) = group.new_base {
            log_state.base = base;
        }
        if let Some(head) = group.event_head {
            log_state.head = head;
        }
        log_state.events += group.new_events;
        // The log first: what it holds is committed (a crash replays its sessions).
        let logged = if group.journal.is_empty() {
            None
        } else {
            let mut records = self.records.lock();
            match records.log.append(&group.journal) {
                Ok(lsn) => {
                    let segment = records.log.active_first_lsn();
                    match records.index.note(lsn, segment, &group.journal) {
                        Ok(noted) => {
                            counts.statements =
                                counts.statements.saturating_add(noted.new_statements);
                        }
                        Err(reason) => {
                            tracing::error!(lsn, %reason, "store log: a group did not index")
                        }
                    }
                    if let Some(base) = group.new_base {
                        records.base = base;
                    }
                    Some(lsn)
                }
                Err(error) => {
                    self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%error, "store log write failed");
                    return Err(log_error(error));
                }
            }
        };
        let sled_needed = !group.transitions.is_empty()
            || !group.removed_sessions.is_empty()
            || group.new_base.is_some()
            || last_session_id > self.persisted_last_session_id;
        if sled_needed {
            let counts_encoded = encode_counts(&counts)?;
            let log_state_encoded = group.new_base.map(|_| log_state.encode()).transpose()?;
            let logged_encoded = logged.map(u64::to_be_bytes);
            let dropped_encoded = group.dropped_through.map(u64::to_be_bytes);
            let result: sled::transaction::TransactionResult<(), std::convert::Infallible> =
                (&self.sessions, &self.meta).transaction(|(sessions, meta)| {
                    sessions.apply_batch(&group.sessions)?;
                    meta.insert(COUNTS_KEY, counts_encoded.as_slice())?;
                    meta.insert(LAST_SESSION_ID_KEY, &last_session_id_encoded[..])?;
                    if let Some(state) = &log_state_encoded {
                        meta.insert(EVENT_LOG_KEY, state.as_slice())?;
                    }
                    if let Some(dropped) = &dropped_encoded {
                        meta.insert(LOG_DROPPED_KEY, &dropped[..])?;
                    }
                    if let Some(lsn) = &logged_encoded {
                        meta.insert(LOG_APPLIED_KEY, &lsn[..])?;
                    }
                    Ok(())
                });
            match result {
                Ok(()) => {
                    if let Some(lsn) = logged {
                        self.applied = lsn;
                    }
                    self.persisted_last_session_id = last_session_id;
                }
                Err(sled::transaction::TransactionError::Abort(never)) => match never {},
                Err(sled::transaction::TransactionError::Storage(error)) => {
                    if logged.is_some() {
                        // The log holds a group sled refused: nothing may follow it
                        // there (its events' numbers would be handed out again), so the
                        // log takes no more writes until restart, which replays it.
                        self.records
                            .lock()
                            .log
                            .fail(format!("sled refused group: {error}"));
                    }
                    self.stats.failed_commits.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        records = group.records(),
                        statements = group.statement_records(),
                        %error,
                        "store commit failed"
                    );
                    return Err(StoreError::Commit(error));
                }
            }
        }
        self.counts = counts;
        self.log.state = log_state;
        self.stats.commits.fetch_add(1, Ordering::Relaxed);
        self.stats
            .records_written
            .fetch_add(group.records() as u64, Ordering::Relaxed);
        self.stats
            .statements_written
            .fetch_add(group.statement_records() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Rewrites every open record as closed, in one commit.
    fn close_open_sessions(
        &mut self,
        reason: &str,
        ended_at: OffsetDateTime,
    ) -> Result<usize, StoreError> {
        // The maintained counts say whether the scan can be skipped.
        if self.counts.open == 0 {
            return Ok(0);
        }
        let mut group = Group::default();
        for entry in self.sessions.iter() {
            let (key, value) = entry.map_err(StoreError::Read)?;
            let id = decode_session_key(&key)?;
            let mut record = decode_record(id, &value)?;
            if record.state != SessionState::Open {
                continue;
            }
            let previous = RecordSummary::of(&record);
            record.state = SessionState::Closed;
            record.ended_at = Some(ended_at);
            record.close_reason = Some(reason.to_owned());
            let encoded = encode_record(&record)?;
            group.stage(id, encoded, Some(previous), RecordSummary::of(&record));
        }
        let closed = group.records();
        if closed > 0 {
            self.commit(group)?;
        }
        tracing::info!(closed, reason, "closed interrupted sessions");
        Ok(closed)
    }

    /// Tells subscribers that everything committed is on disk, and (after a full
    /// flush, `in_sled`) the head file.
    fn publish_flushed(&mut self, in_sled: bool) {
        let head = self.log.state.head;
        if in_sled && head.seq > self.head_file_seq {
            self.head_file_seq = head.seq;
            if let Err(error) = write_head_file(&self.log.dir, head) {
                tracing::warn!(%error, seq = head.seq, "cannot update events.head");
            }
        }
        if head.seq <= self.flushed_seq {
            return;
        }
        self.flushed_seq = head.seq;
        self.log.durable.send_replace(head.seq);
    }

    /// One retention pass: drops the oldest segments of the record log past `rule`
    /// (with the statements and events they hold) and the closed sessions that ended
    /// before the newest dropped event, and appends a `retention` event, in one commit.
    /// The log is cut at segment boundaries: the segment being appended to is sealed
    /// first when it must go too.
    fn retain(
        &mut self,
        rule: RetentionRule,
        now: OffsetDateTime,
    ) -> Result<Option<RetentionOutcome>, StoreError> {
        let cutoff = rule.max_age.map(|age| now - age);
        let (bounds, total) = {
            let records = self.records.lock();
            (records.log.segment_bounds(), records.log.total_bytes())
        };
        let over_size = rule.max_bytes.is_some_and(|max| total > max);
        let size_target = rule.max_bytes.map_or(0, |max| max / 10 * 9);
        let mut left = total;
        let mut first_dropped = None;
        let mut last_dropped: Option<(ChainLink, OffsetDateTime)> = None;
        let mut dropped_through = None;
        let mut by_age_only = true;
        for (first_lsn, last_lsn, bytes) in &bounds {
            if last_lsn < first_lsn {
                break;
            }
            // The segment's first and last events.
            let span = self.records.lock().log.segment_span(*first_lsn);
            let Some(span) = span else { break };
            let mut first_event = None;
            let mut last_event: Option<(u64, [u8; 32], Vec<u8>)> = None;
            scan_span(&span, 0, |_, payload| {
                for entry in entries(payload).unwrap_or_default() {
                    if let Entry::Event { seq, value } = entry
                        && let Some((_, hash, json)) = split_value(value)
                    {
                        first_event.get_or_insert(seq);
                        last_event = Some((seq, hash, json.to_vec()));
                    }
                }
                Ok(true)
            })
            .map_err(log_error)?;
            let time = match &last_event {
                Some((seq, _, json)) => Some(event_time(*seq, json)?),
                None => None,
            };
            let too_old = cutoff.is_some_and(|cutoff| time.is_none_or(|time| time < cutoff));
            let too_much = over_size && left > size_target;
            if !too_old && !too_much {
                break;
            }
            by_age_only &= too_old;
            left = left.saturating_sub(*bytes);
            dropped_through = Some(*last_lsn);
            if let Some(first) = first_event {
                first_dropped.get_or_insert(first);
            }
            if let (Some((seq, hash, _)), Some(time)) = (last_event, time) {
                last_dropped = Some((ChainLink { seq, hash }, time));
            }
        }
        let (Some(first_dropped), Some((last, last_time)), Some(dropped_through)) =
            (first_dropped, last_dropped, dropped_through)
        else {
            return Ok(None);
        };
        {
            // The active segment goes too: seal it, so it can be removed whole.
            let mut records = self.records.lock();
            if dropped_through >= records.log.active_first_lsn() {
                records.log.seal().map_err(log_error)?;
            }
        }
        let mut group = Group::default();
        let mut removed_ids = HashSet::new();
        for entry in self.sessions.iter() {
            let (key, value) = entry.map_err(StoreError::Read)?;
            let id = decode_session_key(&key)?;
            let record = decode_record(id, &value)?;
            if record.started_at > last_time {
                break;
            }
            let ended_before_cut = record.ended_at.is_some_and(|ended| ended <= last_time);
            if record.state != SessionState::Closed || !ended_before_cut {
                continue;
            }
            group.sessions.remove(&key);
            group.removed_sessions.push(RecordSummary::of(&record));
            removed_ids.insert(id);
        }
        // The statements of sessions that stay are carried into the log's newest
        // segment, so they outlive the segments that go (as a session's statements
        // always went with the session, not with the events).
        for (key, value) in self
            .records
            .carried_statements(dropped_through, &removed_ids)?
        {
            group.stage_statement(key, &value);
        }
        let reason = if by_age_only { "age" } else { "size" };
        group.new_base = Some(last);
        group.dropped_through = Some(dropped_through);
        let event = Event::now(
            Context::default(),
            Activity::Retention {
                first_dropped_seq: first_dropped,
                last_dropped_seq: last.seq,
                last_dropped_hash: to_hex(&last.hash),
                reason: reason.into(),
            },
        );
        let json = serde_json::to_vec(&event).map_err(|source| StoreError::EncodeEvent {
            activity: "retention",
            source,
        })?;
        let retention_seq = group.stage_event(self.log.state.head, &json);
        let sessions_dropped = group.removed_sessions.len() as u64;
        self.commit(group)?;
        // On disk (the retention event, the new base, the sessions gone) before the
        // segments are removed: a crash in between removes them at the next open.
        self.flush()?;
        let statements_before = self.counts.statements;
        let spans = {
            let mut records = self.records.lock();
            records
                .log
                .remove_through(dropped_through)
                .map_err(log_error)?;
            records.log.spans_from(0)
        };
        let index = reindex(&spans)?;
        let statements_after = index.statements;
        self.records.lock().index = index;
        self.counts.statements = statements_after;
        let outcome = RetentionOutcome {
            first_dropped_seq: first_dropped,
            last_dropped_seq: last.seq,
            events_dropped: last.seq + 1 - first_dropped,
            sessions_dropped,
            statements_dropped: statements_before.saturating_sub(statements_after),
            reason,
            retention_seq,
        };
        tracing::info!(
            first_dropped_seq = outcome.first_dropped_seq,
            last_dropped_seq = outcome.last_dropped_seq,
            sessions = outcome.sessions_dropped,
            statements = outcome.statements_dropped,
            reason,
            "retention dropped old events"
        );
        Ok(Some(outcome))
    }

    /// Syncs the log and flushes sled, for everything committed so far.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let synced = self.records.lock().log.sync();
        if let Err(error) = synced {
            self.stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "store log sync failed");
            self.flush_deadline = Some(Instant::now() + self.flush_interval);
            return Err(log_error(error));
        }
        match self.db.flush() {
            Ok(_bytes) => {
                self.flush_deadline = None;
                self.publish_flushed(true);
                self.checkpointer.requested = self.checkpointer.requested.max(self.applied);
                self.checkpointer
                    .durable_lsn
                    .fetch_max(self.applied, Ordering::AcqRel);
                Ok(())
            }
            Err(error) => {
                self.stats.failed_flushes.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "store flush failed");
                // Retried after an interval rather than in a tight loop.
                self.flush_deadline = Some(Instant::now() + self.flush_interval);
                Err(StoreError::Flush(error))
            }
        }
    }

    /// At the flush deadline: batched writes become durable through the log's sync,
    /// and sled (when sessions changed) is asked to flush in the background.
    fn tick(&mut self, replies: Vec<PendingReply>) {
        self.request_sync(replies);
        self.checkpointer.request(self.applied);
        self.flush_deadline = None;
    }

    /// Hands `replies` to the syncer, to be answered after the log's next sync.
    fn request_sync(&mut self, replies: Vec<PendingReply>) {
        let request = SyncRequest {
            handle: self.records.lock().log.sync_handle(),
            head: self.log.state.head,
            replies,
        };
        if let Some(requests) = &self.syncer.requests
            && let Err(unsent) = requests.send(request)
        {
            // The sync thread is gone (it panicked): answer here.
            let synced = unsent.0.handle.sync().map_err(log_error);
            for reply in unsent.0.replies {
                reply.answer(Some(&synced));
            }
        }
        if self.applied > self.checkpointer.requested {
            let due = Instant::now() + self.flush_interval;
            self.flush_deadline = Some(self.flush_deadline.map_or(due, |d| d.min(due)));
        }
    }
}

impl StoreError {
    /// A copy of a commit error for one of several waiters of the same group.
    fn clone_for_waiter(&self) -> StoreError {
        match self {
            StoreError::Commit(error) => StoreError::Commit(error.clone()),
            StoreError::Flush(error) => StoreError::Flush(error.clone()),
            StoreError::Read(error) => StoreError::Read(error.clone()),
            StoreError::Journal(error) => StoreError::Journal(error.clone()),
            other => StoreError::Commit(sled::Error::Unsupported(other.to_string())),
        }
    }
}
