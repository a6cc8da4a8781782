//! The session store: sluice's audit trail on disk.
//!
//! Every connection an agent makes (allowed or not) gets one [`SessionRecord`], kept in a
//! sled database in the daemon's store directory; every statement decoded inside a
//! session (a PostgreSQL query, say) gets one [`StatementRecord`], kept with the audit
//! events in the store's own append-only record log (`log/`, see `log.rs` and
//! `segment.rs`). The daemon writes a session's open record *durably* before it sends
//! the first byte upstream, so no traffic ever leaves the host without a record of it
//! surviving a crash.
//!
//! # Layout
//!
//! sled:
//!
//! | tree         | key                                   | value                                  |
//! |--------------|---------------------------------------|----------------------------------------|
//! | `sessions`   | session id, `u64` big-endian          | the [`SessionRecord`] as JSON          |
//! | `meta`       | `counts`                              | [`StoreCounts`] as JSON                |
//! | `meta`       | `last_session_id`                     | highest session id ever handed out, BE |
//! | `grants`     | grant id, `u64` big-endian            | the [`Grant`](crate::policy::Grant) as JSON |
//! | `recordings` | session id BE, then seq `u64` BE      | an asciicast v3 terminal recording     |
//! | `meta`       | `event_log`                           | the event log's retention base         |
//! | `meta`       | `log_applied`, `log_format`, `log_dropped_through` | the record log's bookkeeping |
//!
//! The record log, `log/`: one checksummed record per group commit of the writer,
//! holding the group's sessions (replayed into sled after a crash), statements (key:
//! session id BE, seq BE; value: the [`StatementRecord`] as JSON) and events (key: seq;
//! value: prev hash, hash, event JSON, see [`events`]). sled never sees a statement or
//! an event: the high-rate path costs one `write` per group instead of three sled
//! inserts per statement. An in-memory index (per session: the segments holding its
//! statements; sparse event marks by seq) is built at open.
//!
//! Big-endian keys make sled's byte order the id order, so scans run oldest to newest.
//! The event log goes through the same writer as the records, so a record and the
//! events describing it land in one atomic commit; retention runs there too.
//!
//! # One writer, group commit
//!
//! All mutations are commands sent over a bounded queue (callers wait for room: that is
//! the backpressure) to a single writer thread (see `writer.rs`). The writer drains
//! whatever is queued, appends it to the record log as one record (one `write`), applies
//! its sessions (if any) as one sled transaction, fdatasyncs the log once for the lot
//! (on a sync thread), then answers the waiters. Under load, many durable writes share
//! one fdatasync. sled itself is flushed in the background (a checkpoint thread) at most
//! `flush_interval` after a session changed.
//!
//! * [`Durability::Durable`]: the call returns once the write is durable (log synced).
//! * [`Durability::Batched`]: the call returns once the write is queued; the writer
//!   keeps batched writes staged in memory (bounded by count and bytes) and commits and
//!   syncs them together at most `flush_interval` after they were queued, or sooner
//!   when a durable write, a read or the size cap needs it. If a batched write later
//!   fails, the caller has already moved on: the failure is logged and counted in
//!   [`StoreStats::failed_commits`].
//!
//! A failed commit or flush is reported (as [`StoreError`]) to every waiter of that
//! group; the writer itself never stops on an error and keeps serving. Note that sled
//! 0.34 keeps the first I/O error it meets (a full disk, say) and fails every later
//! write with it, and the log refuses writes after a failed sync (the kernel may have
//! dropped the unsynced pages) and durable writes while its disk has under 1 MiB free:
//! the store then refuses writes, and the daemon fails closed. Reads keep working.
//!
//! # Reads
//!
//! Sessions are read from sled, statements and events from the log's files (through
//! the index), from the caller's thread: in-memory lookups or short scans, fast enough
//! to call from async code. They see every committed write, flushed or not. Reads of
//! sessions, statements and counts first make the writer commit every write queued
//! before them (blocking for one commit when it holds any staged), so they see
//! everything written before the read, as if batched writes were committed at once.
//! The event log's readers see flushed events only, and so never wait.
//!
//! # Counts
//!
//! [`StoreCounts`] is maintained by the writer: sessions in the same sled transaction
//! as the records it counts, statements in the log's index; [`Store::counts`] is one
//! key lookup, never a scan. A store without the counts key (created before it
//! existed) is counted once at open.
//!
//! # Session ids
//!
//! [`Store::next_session_id`] is an in-memory counter, starting at 1. Every commit that
//! touches sled persists the highest id handed out so far, and at open the counter
//! resumes after the larger of that and the highest stored session id. Ids therefore
//! never repeat across restarts; the one exception is an id handed out after the last
//! such commit before a crash, which no stored record can mention.

pub mod events;
mod grants;
mod journal;
mod log;
pub mod record;
mod segment;
mod writer;

#[cfg(test)]
mod event_tests;
#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod tests;

use std::{
    os::unix::fs::DirBuilderExt,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

pub use events::{BreakKind, ChainBreak, VerifyReport};
pub use record::*;
pub use writer::{RetentionOutcome, RetentionRule};

use crate::config::StoreConfig;
use writer::{Command, PutRequest, ReadGate, RecordSummary, StatementPut, Writer, WriterStats};

/// The sled tree holding one record per session.
const SESSIONS_TREE: &str = "sessions";
/// The sled tree holding one record per statement, keyed by (session id, seq).
const STATEMENTS_TREE: &str = "statements";
/// The sled tree holding the store's own bookkeeping.
const META_TREE: &str = "meta";
/// The sled tree holding one just-in-time grant per key (grant id, `u64` big-endian).
const GRANTS_TREE: &str = "grants";
/// The sled tree holding terminal recordings by (session id, operation seq).
const RECORDINGS_TREE: &str = "recordings";
/// `meta` key of the maintained [`StoreCounts`].
const COUNTS_KEY: &[u8] = b"counts";
/// `meta` key of the highest session id handed out, `u64` big-endian.
const LAST_SESSION_ID_KEY: &[u8] = b"last_session_id";

/// Largest encoded record accepted. sled 0.34 writes larger values to separate blob
/// files, and a failed blob write (a full disk) leaves its log stuck: every later flush
/// would hang instead of failing. Real records are well under a kilobyte.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// Upper bound of sled's page cache: the store is append-mostly and read rarely.
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

/// Errors from the store. The daemon fails closed on any of them for the session at hand.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the store in {path}: {source}")]
    Open { path: PathBuf, source: sled::Error },
    #[error("cannot start the store writer: {0}")]
    Spawn(std::io::Error),
    #[error("store read failed: {0}")]
    Read(sled::Error),
    #[error("store write failed: {0}")]
    Commit(sled::Error),
    #[error("store flush failed: {0}")]
    Flush(sled::Error),
    #[error("cannot encode session {id}: {source}")]
    Encode { id: u64, source: serde_json::Error },
    #[error("cannot encode the store's counts: {0}")]
    EncodeCounts(serde_json::Error),
    #[error("session {id} encodes to {len} bytes, more than the {max} a record may have")]
    TooLarge { id: u64, len: usize, max: usize },
    #[error("stored value {key} is unreadable: {source}")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
    #[error("stored session key is {len} bytes long, expected 8")]
    CorruptKey { len: usize },
    #[error("cannot encode statement {seq} of session {session_id}: {source}")]
    EncodeStatement {
        session_id: u64,
        seq: u64,
        source: serde_json::Error,
    },
    #[error(
        "statement {seq} of session {session_id} encodes to {len} bytes, more than the {max} a record may have"
    )]
    StatementTooLarge {
        session_id: u64,
        seq: u64,
        len: usize,
        max: usize,
    },
    #[error("stored statement key is {len} bytes long, expected 16")]
    CorruptStatementKey { len: usize },
    #[error("the store is shut down")]
    Closed,
    #[error("{what} is corrupt: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("cannot encode a {activity} event: {source}")]
    EncodeEvent {
        activity: &'static str,
        source: serde_json::Error,
    },
    #[error("a {activity} event encodes to {len} bytes, more than the {max} an event may have")]
    EventTooLarge {
        activity: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "the event log lost events: event {flushed_seq} was flushed (events.head) but the store ends at event {stored_seq}; \
         run `sluice verify`, keep a copy of the store, and remove events.head to accept the loss"
    )]
    LostEvents { flushed_seq: u64, stored_seq: u64 },
    #[error("cannot encode grant {id}: {source}")]
    EncodeGrant { id: u64, source: serde_json::Error },
    #[error("store journal failed: {0}")]
    Journal(String),
}

/// When a write call may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After the write is on disk (flushed). For records that must survive a crash
    /// before the daemon acts, such as a session's open record.
    Durable,
    /// As soon as the write is queued; it is flushed within the flush interval.
    Batched,
}

/// How the store runs.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Longest time a batched write waits for its flush.
    pub flush_interval: Duration,
    /// How many writes may wait for the writer before callers wait for room.
    pub queue_capacity: usize,
    /// How audit events are written ([`Store::audit_durability`]): `Durable` in strict
    /// mode, `Batched` in batched mode.
    pub audit_durability: Durability,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self::from(&StoreConfig::default())
    }
}

impl From<&StoreConfig> for StoreOptions {
    fn from(config: &StoreConfig) -> Self {
        Self {
            flush_interval: Duration::from_millis(config.flush_interval_ms),
            queue_capacity: 1024,
            audit_durability: match config.durability {
                crate::config::AuditDurability::Strict => Durability::Durable,
                crate::config::AuditDurability::Batched => Durability::Batched,
            },
        }
    }
}

/// Which sessions [`Store::list_sessions`] returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only sessions of this agent (managed child cgroup name).
    pub agent: Option<String>,
    /// At most this many: the newest ones.
    pub limit: Option<usize>,
    /// Only sessions with an id strictly greater than this.
    pub since_id: Option<u64>,
}

/// Totals over all stored sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounts {
    /// Stored session records.
    pub sessions: u64,
    /// Records still in [`SessionState::Open`].
    pub open: u64,
    /// Records whose decision was `deny`.
    pub denied: u64,
    /// Stored statement records (absent from counts written before statements existed,
    /// when there were none).
    #[serde(default)]
    pub statements: u64,
}

/// What the writer has done since the store was opened (not persisted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StoreStats {
    /// Group commits applied (one sled transaction each).
    pub commits: u64,
    /// Flushes (fsyncs) attempted.
    pub flushes: u64,
    /// Session records written by successful commits.
    pub records_written: u64,
    /// Statement records written by successful commits.
    pub statements_written: u64,
    /// Group commits that failed.
    pub failed_commits: u64,
    /// Flushes that failed.
    pub failed_flushes: u64,
}

/// A handle on the store; clones share one database and one writer.
///
/// The writer stops, after a final flush, when the last clone is dropped (the drop
/// waits for it, so the directory can be reopened right after) or on [`Store::shutdown`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    sessions: sled::Tree,
    meta: sled::Tree,
    /// Written directly (rare, administrator-driven), not through the writer.
    grants: sled::Tree,
    /// Statements and the audit event log (see `log.rs`); appended only by the writer.
    records: Arc<log::LogShared>,
    /// Terminal recordings (asciicast v3) of SSH channels, by session id and operation
    /// seq; written directly (once per channel, at its end).
    recordings: sled::Tree,
    /// The newest flushed event seq, published by the writer.
    durable_events: tokio::sync::watch::Receiver<u64>,
    audit_durability: Durability,
    next_session_id: Arc<AtomicU64>,
    stats: Arc<WriterStats>,
    /// Lets reads of the records see the writes the writer holds staged.
    gate: Arc<ReadGate>,
    /// `None` only while dropping.
    commands: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
}

impl Store {
    /// Opens (or creates, mode 0700) the store in `dir` and starts its writer.
    ///
    /// Blocking: call it before serving, not from a busy async task.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        let open_error = |source| StoreError::Open {
            path: dir.to_owned(),
            source,
        };
        // sled's own periodic flush is off: the writer decides when data is durable.
        let db = open_sled(dir).map_err(open_error)?;
        let sessions = db.open_tree(SESSIONS_TREE).map_err(open_error)?;
        let meta = db.open_tree(META_TREE).map_err(open_error)?;
        let grants = db.open_tree(GRANTS_TREE).map_err(open_error)?;
        let recordings = db.open_tree(RECORDINGS_TREE).map_err(open_error)?;
        // The record log (migrated from an older store first); the sessions of what it
        // holds beyond sled's last flush (a crash) go into sled.
        let records = log::open(
            dir,
            &log::Trees {
                db: &db,
                sessions: &sessions,
                meta: &meta,
            },
        )?;
        let applied = log::read_u64(&meta, log::LOG_APPLIED_KEY)?;
        let head = records.index.head.unwrap_or(records.base);
        let event_log = events::EventLogState {
            head,
            base: records.base,
            events: 0,
            bytes: 0,
        };
        events::check_flushed_head(dir, event_log.head)?;
        let (durable_sender, durable_events) = tokio::sync::watch::channel(event_log.head.seq);

        let mut counts = match read_counts(&meta)? {
            Some(counts) => counts,
            None => {
                // Stored at once, so that `counts` (which reads the key) is right
                // before the first write.
                let counts = count_records(&sessions)?;
                meta.insert(COUNTS_KEY, encode_counts(&counts)?)
                    .map_err(StoreError::Commit)?;
                db.flush().map_err(StoreError::Flush)?;
                counts
            }
        };
        // Statements are counted in the log's index.
        counts.statements = records.index.statements;
        let records = Arc::new(log::LogShared::new(records));
        let last_session_id = last_session_id(&sessions, &meta)?;
        let next_session_id = Arc::new(AtomicU64::new(last_session_id.saturating_add(1)));
        let stats = Arc::new(WriterStats::default());
        let gate = Arc::new(ReadGate::default());

        let queue_capacity = options.queue_capacity.max(1);
        let (commands, receiver) = mpsc::channel(queue_capacity);
        let writer = Writer::new(
            db,
            sessions.clone(),
            meta.clone(),
            counts,
            last_session_id,
            Arc::clone(&next_session_id),
            Arc::clone(&stats),
            options.flush_interval,
            queue_capacity,
            writer::EventLog {
                state: event_log,
                dir: dir.to_owned(),
                durable: Arc::new(durable_sender),
            },
            Arc::clone(&gate),
            Arc::clone(&records),
            applied,
        )?;
        let writer = writer::spawn(writer, receiver)?;

        Ok(Store {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                sessions,
                meta,
                grants,
                records,
                recordings,
                durable_events,
                audit_durability: options.audit_durability,
                next_session_id,
                stats,
                gate,
                commands: Some(commands),
                writer: Some(writer),
            }),
        })
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.dir
    }

    /// Hands out the next session id: increasing, never 0, never reused (see the module
    /// docs for the one crash-time exception).
    pub fn next_session_id(&self) -> u64 {
        self.inner.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Inserts or replaces the record stored under `record.id`.
    ///
    /// With [`Durability::Durable`] it returns once the record is flushed, with
    /// [`Durability::Batched`] once it is queued. If the future is dropped after the
    /// record was queued, the write still happens.
    pub async fn put_session(
        &self,
        record: &SessionRecord,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let encoded = encode_record(record)?;
        let mut put = PutRequest {
            id: record.id,
            encoded,
            summary: RecordSummary::of(record),
            events: Vec::new(),
            queued_at: Instant::now(),
            reply: None,
        };
        match durability {
            Durability::Batched => self.send(Command::Put(put)).await,
            Durability::Durable => {
                let (reply, answer) = oneshot::channel();
                put.reply = Some(reply);
                self.send(Command::Put(put)).await?;
                answer.await.map_err(|_| StoreError::Closed)?
            }
        }
    }

    /// The record of session `id`, if stored.
    pub fn get_session(&self, id: u64) -> Result<Option<SessionRecord>, StoreError> {
        self.inner.gate.commit_staged();
        self.inner
            .sessions
            .get(session_key(id))
            .map_err(StoreError::Read)?
            .map(|value| decode_record(id, &value))
            .transpose()
    }

    /// The records matching `filter`, in ascending id order (the newest `limit` ones
    /// when a limit is given).
    pub fn list_sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRecord>, StoreError> {
        self.list_sessions_where(filter, |_| true)
    }

    /// [`Store::list_sessions`], keeping only the records `keep` accepts (before the
    /// limit counts them).
    pub fn list_sessions_where(
        &self,
        filter: &SessionFilter,
        keep: impl Fn(&SessionRecord) -> bool,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let first_id = match filter.since_id {
            None => 0,
            Some(since_id) => match since_id.checked_add(1) {
                Some(first_id) => first_id,
                None => return Ok(Vec::new()),
            },
        };
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut records = Vec::new();
        if limit == 0 {
            return Ok(records);
        }
        self.inner.gate.commit_staged();
        // Newest first, so a limit stops the scan early; reversed at the end.
        for entry in self.inner.sessions.range(session_key(first_id)..).rev() {
            let (key, value) = entry.map_err(StoreError::Read)?;
            let record = decode_record(decode_session_key(&key)?, &value)?;
            if filter
                .agent
                .as_ref()
                .is_some_and(|agent| *agent != record.agent)
                || !keep(&record)
            {
                continue;
            }
            records.push(record);
            if records.len() >= limit {
                break;
            }
        }
        records.reverse();
        Ok(records)
    }

    /// Inserts or replaces statement `record.seq` of session `record.session_id`, through
    /// the same writer and group commit as sessions (see [`Store::put_session`] for what
    /// each [`Durability`] waits for). The session itself is not checked: callers write
    /// its open record first, durably.
    pub async fn put_statement(
        &self,
        record: &StatementRecord,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let mut put = StatementPut {
            key: statement_key(record.session_id, record.seq),
            encoded: encode_statement(record)?,
            events: Vec::new(),
            queued_at: Instant::now(),
            reply: None,
            committed_only: false,
        };
        match durability {
            Durability::Batched => self.send(Command::PutStatement(put)).await,
            Durability::Durable => {
                let (reply, answer) = oneshot::channel();
                put.reply = Some(reply);
                self.send(Command::PutStatement(put)).await?;
                answer.await.map_err(|_| StoreError::Closed)?
            }
        }
    }

    /// Stores the terminal recording (asciicast v3) of operation `seq` of a session. It
    /// becomes durable with the store's next flush.
    pub async fn put_recording(
        &self,
        session_id: u64,
        seq: u64,
        cast: Vec<u8>,
    ) -> Result<(), StoreError> {
        self.inner
            .recordings
            .insert(statement_key(session_id, seq), cast)
            .map_err(StoreError::Commit)?;
        Ok(())
    }

    /// The terminal recordings of a session, by operation seq.
    pub fn recordings(&self, session_id: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.inner
            .recordings
            .scan_prefix(session_key(session_id))
            .map(|entry| {
                let (key, value) = entry.map_err(StoreError::Read)?;
                let seq = key
                    .get(8..16)
                    .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
                    .map(u64::from_be_bytes)
                    .unwrap_or_default();
                Ok((seq, value.to_vec()))
            })
            .collect()
    }

    /// Every stored statement of session `session_id`, in seq order; empty when it has
    /// none (or there is no such session: ask [`Store::get_session`] to tell them apart).
    pub fn statements(&self, session_id: u64) -> Result<Vec<StatementRecord>, StoreError> {
        self.inner.gate.commit_staged();
        self.inner.records.statements(session_id)
    }

    /// The statements of session `session_id`, or `None` when there is no such session
    /// (its record is always written before any of its statements).
    pub fn session_statements(
        &self,
        session_id: u64,
    ) -> Result<Option<Vec<StatementRecord>>, StoreError> {
        if self.get_session(session_id)?.is_none() {
            return Ok(None);
        }
        self.statements(session_id).map(Some)
    }

    /// Totals over all committed records; one key lookup.
    pub fn counts(&self) -> Result<StoreCounts, StoreError> {
        self.inner.gate.commit_staged();
        let mut counts = read_counts(&self.inner.meta)?.unwrap_or_default();
        counts.statements = self.inner.records.lock().index.statements;
        Ok(counts)
    }

    /// What the writer has done since open: commits, flushes, failures.
    pub fn stats(&self) -> StoreStats {
        self.inner.stats.snapshot()
    }

    /// Closes every record still [`SessionState::Open`] with `reason` and `ended_at` =
    /// now, durably; returns how many. For daemon startup, before any session opens:
    /// sessions opened concurrently would be closed too.
    pub async fn close_interrupted(&self, reason: &str) -> Result<usize, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::CloseInterrupted {
            reason: reason.to_owned(),
            ended_at: OffsetDateTime::now_utc(),
            reply,
        })
        .await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Returns once every write queued before this call is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Flush { reply }).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Writes and flushes everything queued, then stops the writer: later writes on any
    /// clone fail with [`StoreError::Closed`]. Reads keep working until the last clone
    /// is dropped.
    pub async fn shutdown(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Shutdown { reply }).await?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    async fn send(&self, command: Command) -> Result<(), StoreError> {
        let commands = self.inner.commands.as_ref().ok_or(StoreError::Closed)?;
        let wake = command.wakes_writer();
        commands
            .send(command)
            .await
            .map_err(|_| StoreError::Closed)?;
        // Counted once queued, so that a later read waits for it to be committed.
        self.inner.gate.queued();
        // A batched write wakes the writer only when the queue is half full: the writer
        // drains it anyway when the oldest batched write it holds is due.
        if wake || commands.capacity().saturating_mul(2) <= commands.max_capacity() {
            self.inner.gate.wake_writer();
        }
        Ok(())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    /// Closing the queue makes the writer drain it, flush and exit; waiting for that
    /// releases sled's lock on the directory before the drop returns.
    fn drop(&mut self) {
        drop(self.commands.take());
        // The writer may hold batched writes staged without listening to the queue.
        self.gate.wake_writer();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(dir = %self.dir.display(), "store writer thread panicked");
        }
    }
}

/// Opens sled in `dir`. A store dropped just before (a restart in the same process)
/// may still hold sled's lock for a moment while sled's I/O threads let go of the
/// files: a lock held by someone else is retried for up to a second.
fn open_sled(dir: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let opened = sled::Config::new()
            .path(dir)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .flush_every_ms(None)
            .open();
        match opened {
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// The sled key of session `id`.
fn session_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn decode_session_key(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StoreError::CorruptKey { len: key.len() })?;
    Ok(u64::from_be_bytes(bytes))
}

fn encode_record(record: &SessionRecord) -> Result<Vec<u8>, StoreError> {
    let encoded = serde_json::to_vec(record).map_err(|source| StoreError::Encode {
        id: record.id,
        source,
    })?;
    if encoded.len() > MAX_RECORD_BYTES {
        return Err(StoreError::TooLarge {
            id: record.id,
            len: encoded.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    Ok(encoded)
}

fn decode_record(id: u64, value: &[u8]) -> Result<SessionRecord, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Decode {
        key: format!("session {id}"),
        source,
    })
}

/// The sled key of statement `seq` of session `session_id`: the session's key first, so
/// that a session's statements share a prefix and sort by seq.
fn statement_key(session_id: u64, seq: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&session_id.to_be_bytes());
    key[8..].copy_from_slice(&seq.to_be_bytes());
    key
}

#[cfg(test)]
fn decode_statement_key(key: &[u8]) -> Result<(u64, u64), StoreError> {
    let corrupt = || StoreError::CorruptStatementKey { len: key.len() };
    let (session_id, seq) = key.split_at_checked(8).ok_or_else(corrupt)?;
    let session_id: [u8; 8] = session_id.try_into().map_err(|_| corrupt())?;
    let seq: [u8; 8] = seq.try_into().map_err(|_| corrupt())?;
    Ok((u64::from_be_bytes(session_id), u64::from_be_bytes(seq)))
}

fn encode_statement(record: &StatementRecord) -> Result<Vec<u8>, StoreError> {
    let encoded = serde_json::to_vec(record).map_err(|source| StoreError::EncodeStatement {
        session_id: record.session_id,
        seq: record.seq,
        source,
    })?;
    if encoded.len() > MAX_RECORD_BYTES {
        return Err(StoreError::StatementTooLarge {
            session_id: record.session_id,
            seq: record.seq,
            len: encoded.len(),
            max: MAX_RECORD_BYTES,
        });
    }
    Ok(encoded)
}

fn decode_statement(
    session_id: u64,
    seq: u64,
    value: &[u8],
) -> Result<StatementRecord, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Decode {
        key: format!("statement {seq} of session {session_id}"),
        source,
    })
}

fn encode_counts(counts: &StoreCounts) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(counts).map_err(StoreError::EncodeCounts)
}

fn read_counts(meta: &sled::Tree) -> Result<Option<StoreCounts>, StoreError> {
    let Some(value) = meta.get(COUNTS_KEY).map_err(StoreError::Read)? else {
        return Ok(None);
    };
    serde_json::from_slice(&value)
        .map(Some)
        .map_err(|source| StoreError::Decode {
            key: "meta counts".into(),
            source,
        })
}

/// Counts the sessions by scanning them: only for stores without a counts key.
fn count_records(sessions: &sled::Tree) -> Result<StoreCounts, StoreError> {
    let mut counts = StoreCounts::default();
    for entry in sessions.iter() {
        let (key, value) = entry.map_err(StoreError::Read)?;
        let id = decode_session_key(&key)?;
        counts.record_transition(None, RecordSummary::decode(id, &value)?);
    }
    Ok(counts)
}

/// The highest session id handed out before: the persisted mark or the newest record.
fn last_session_id(sessions: &sled::Tree, meta: &sled::Tree) -> Result<u64, StoreError> {
    let persisted = match meta.get(LAST_SESSION_ID_KEY).map_err(StoreError::Read)? {
        Some(value) => decode_session_key(&value)?,
        None => 0,
    };
    let newest_record = match sessions.last().map_err(StoreError::Read)? {
        Some((key, _)) => decode_session_key(&key)?,
        None => 0,
    };
    Ok(persisted.max(newest_record))
}

impl StoreCounts {
    /// Accounts for one record going from `previous` (`None`: not stored yet) to `current`.
    fn record_transition(&mut self, previous: Option<RecordSummary>, current: RecordSummary) {
        match previous {
            None => self.sessions = self.sessions.saturating_add(1),
            Some(previous) => {
                if previous.open {
                    self.open = self.open.saturating_sub(1);
                }
                if previous.denied {
                    self.denied = self.denied.saturating_sub(1);
                }
            }
        }
        if current.open {
            self.open = self.open.saturating_add(1);
        }
        if current.denied {
            self.denied = self.denied.saturating_add(1);
        }
    }
}
