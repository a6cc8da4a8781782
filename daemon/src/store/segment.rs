//! An append-only segment log: the store's journal of group commits.
//!
//! The store's writer appends one record per group commit (every session, statement and
//! event of the group, see `journal.rs`) and, when someone waits for durability, calls
//! [`SegmentLog::sync`]: one `fdatasync` for every session waiting on that group, which
//! is how strict mode's group commit reaches the disk's own latency instead of waiting
//! on sled's flush (which hands the write to sled's I/O thread and waits for it).
//!
//! # Format
//!
//! The log is a directory of segment files named by the number (LSN) of their first
//! record, `{lsn:020}.seg`. A record is framed as
//!
//! | bytes | field                                           |
//! |-------|-------------------------------------------------|
//! | 4     | payload length, little endian                   |
//! | 4     | CRC-32 of the LSN, length and payload            |
//! | 8     | LSN, little endian (consecutive, from 1)        |
//! | n     | payload                                         |
//!
//! A segment is sealed (fdatasync'ed) once it reaches its size limit and the next
//! record starts a new file (the directory is fsync'ed so the new name survives).
//! An in-memory sparse index (one LSN and offset per [`INDEX_EVERY`] bytes) finds a
//! record without scanning the segment from its start.
//!
//! # Recovery
//!
//! [`SegmentLog::open`] walks every segment. A record that does not check out (short
//! frame, bad CRC, wrong LSN) at the end of the newest segment is a torn write: the
//! file is truncated at the last valid record, so a half-written record is never read.
//! Anything else (damage in a sealed segment, or valid records after a bad one) is
//! corruption and fails the open: dropping it would silently lose audit records.
//!
//! # Why hand-written
//!
//! The crates looked at either run their own background threads and batching
//! (okaywal's checkpointer and sync batching duplicate the writer's group commit) or
//! are unmaintained; what is needed here is ~300 lines over `std::fs`, with the CRC
//! from `crc32fast` (already in the tree through sled).

use std::{
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

/// Bytes of a record's frame before its payload.
pub const FRAME_HEADER: usize = 16;
/// A sparse index entry per this many bytes of segment.
pub const INDEX_EVERY: u64 = 64 * 1024;
/// Largest payload accepted (a group commit is bounded well below it by the writer).
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;
/// Free space below which [`SegmentLog::sync`] refuses: a write can still land in the
/// slack of a file's last block on a full disk, and sled (which the journal feeds)
/// could not take it; a durable write there must fail, not pass on borrowed room.
pub const MIN_FREE_BYTES: u64 = 1024 * 1024;

/// Errors of the segment log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("journal I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal segment {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the journal failed earlier ({0}) and accepts no more writes until restart")]
    Failed(String),
    #[error("a journal record of {0} bytes is larger than allowed")]
    TooLarge(usize),
    #[error(
        "no space left on the store's disk ({available} bytes free, {needed} needed): refusing durable writes"
    )]
    DiskFull { available: u64, needed: u64 },
}

/// What [`SegmentLog::open`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Bytes cut off the newest segment (a torn write); 0 when it ended cleanly.
    pub truncated_bytes: u64,
    /// Records found.
    pub records: u64,
}

struct Segment {
    first_lsn: u64,
    /// The LSN of its last record; `first_lsn - 1` while empty.
    last_lsn: u64,
    path: PathBuf,
    len: u64,
    /// `(lsn, offset)`, ascending: the first record and one per [`INDEX_EVERY`] bytes.
    index: Vec<(u64, u64)>,
}

impl Segment {
    fn note(&mut self, lsn: u64, offset: u64, frame_len: u64) {
        let indexed_to = self.index.last().map(|(_, at)| *at);
        if indexed_to.is_none_or(|at| offset >= at + INDEX_EVERY) {
            self.index.push((lsn, offset));
        }
        self.last_lsn = lsn;
        self.len = offset + frame_len;
    }
}

/// The log: sealed segments plus the one being appended to.
pub struct SegmentLog {
    dir: PathBuf,
    segments: Vec<Segment>,
    active: Arc<File>,
    max_segment_bytes: u64,
    /// Set after a failed sync: the kernel may have dropped the unsynced pages, so
    /// nothing written since the last good sync can be trusted to be on disk.
    failed: Arc<Mutex<Option<String>>>,
    /// Frame buffer reused across appends.
    frame: Vec<u8>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io {
        path: path.to_owned(),
        source,
    }
}

fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}.seg"))
}

pub(super) fn crc(lsn: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&lsn.to_le_bytes());
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// One frame read from `bytes` at `offset`: `Ok((lsn, payload range))` or why not.
fn read_frame(bytes: &[u8], offset: usize) -> Result<(u64, std::ops::Range<usize>), String> {
    let header = bytes
        .get(offset..offset + FRAME_HEADER)
        .ok_or("short frame header")?;
    let len = u32::from_le_bytes(header[0..4].try_into().map_err(|_| "header")?) as usize;
    let stored_crc = u32::from_le_bytes(header[4..8].try_into().map_err(|_| "header")?);
    let lsn = u64::from_le_bytes(header[8..16].try_into().map_err(|_| "header")?);
    if len > MAX_PAYLOAD {
        return Err(format!("length {len} is implausible"));
    }
    let start = offset + FRAME_HEADER;
    let payload = bytes.get(start..start + len).ok_or("short payload")?;
    if crc(lsn, payload) != stored_crc {
        return Err("checksum mismatch".into());
    }
    Ok((lsn, start..start + len))
}

fn check_failed(failed: &Mutex<Option<String>>) -> Result<(), LogError> {
    match &*failed.lock().unwrap_or_else(PoisonError::into_inner) {
        Some(why) => Err(LogError::Failed(why.clone())),
        None => Ok(()),
    }
}

fn set_failed(failed: &Mutex<Option<String>>, why: String) {
    failed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert(why);
}

/// Syncs the segment being appended to, from any thread (see [`SegmentLog::sync_handle`]).
pub struct SyncHandle {
    file: Arc<File>,
    failed: Arc<Mutex<Option<String>>>,
    path: PathBuf,
}

impl SyncHandle {
    /// Makes every record appended before the handle was taken durable (one
    /// `fdatasync`; sealed segments were synced when sealed). Refuses while the disk
    /// has under [`MIN_FREE_BYTES`] free. After a failed sync the log refuses every
    /// later append and sync: the kernel may have dropped the unsynced pages.
    pub fn sync(&self) -> Result<(), LogError> {
        check_failed(&self.failed)?;
        if let Ok(stats) = nix::sys::statvfs::fstatvfs(&*self.file) {
            let available = stats
                .blocks_available()
                .saturating_mul(stats.fragment_size());
            if available < MIN_FREE_BYTES {
                return Err(LogError::DiskFull {
                    available,
                    needed: MIN_FREE_BYTES,
                });
            }
        }
        if let Err(source) = self.file.sync_data() {
            set_failed(&self.failed, source.to_string());
            return Err(LogError::Io {
                path: self.path.clone(),
                source,
            });
        }
        Ok(())
    }
}

/// A stretch of one segment to read: records `lsn..=last_lsn` at bytes `offset..end`.
#[derive(Clone, Debug)]
pub struct Span {
    pub path: PathBuf,
    pub segment_first_lsn: u64,
    pub lsn: u64,
    pub offset: u64,
    pub end: u64,
    pub last_lsn: u64,
}

/// Reads the records of `span` in order, handing those numbered `from` or above to
/// `visit` until it returns `false` (then `Ok(false)`). Streams through a buffer: a
/// segment is never read whole. A record that does not check out is corruption.
pub fn scan_span(
    span: &Span,
    from: u64,
    mut visit: impl FnMut(u64, &[u8]) -> Result<bool, LogError>,
) -> Result<bool, LogError> {
    let file = File::open(&span.path).map_err(io_error(&span.path))?;
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, file);
    reader
        .seek(SeekFrom::Start(span.offset))
        .map_err(io_error(&span.path))?;
    let mut offset = span.offset;
    let mut payload = Vec::new();
    let mut header = [0u8; FRAME_HEADER];
    let corrupt = |offset: u64, reason: String| LogError::Corrupt {
        path: span.path.clone(),
        offset,
        reason,
    };
    let mut lsn = span.lsn;
    while lsn <= span.last_lsn && offset < span.end {
        reader
            .read_exact(&mut header)
            .map_err(|error| corrupt(offset, format!("short frame header: {error}")))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let stored_crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let mut found = [0u8; 8];
        found.copy_from_slice(&header[8..16]);
        let found = u64::from_le_bytes(found);
        if len > MAX_PAYLOAD || offset + (FRAME_HEADER + len) as u64 > span.end {
            return Err(corrupt(offset, format!("length {len} is implausible")));
        }
        payload.resize(len, 0);
        reader
            .read_exact(&mut payload)
            .map_err(|error| corrupt(offset, format!("short payload: {error}")))?;
        if crc(found, &payload) != stored_crc {
            return Err(corrupt(offset, "checksum mismatch".into()));
        }
        if found != lsn {
            return Err(corrupt(
                offset,
                format!("record {found} where {lsn} was expected"),
            ));
        }
        if lsn >= from && !visit(lsn, &payload)? {
            return Ok(false);
        }
        offset += (FRAME_HEADER + len) as u64;
        lsn += 1;
    }
    Ok(true)
}

fn fsync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(dir))
}

impl SegmentLog {
    /// Opens (or creates, mode 0700) the log in `dir`, recovering a torn tail. When the
    /// log is empty its first record gets LSN `next_lsn_if_empty`; when every record it
    /// holds is at or below `applied` (already stored elsewhere) and the caller asks to
    /// continue after a later LSN, a fresh segment starts at `next_lsn_if_empty`.
    pub fn open(
        dir: &Path,
        max_segment_bytes: u64,
        next_lsn_if_empty: u64,
    ) -> Result<(SegmentLog, Recovery), LogError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error(dir))?;
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io_error(dir))? {
            let entry = entry.map_err(io_error(dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|name| name.strip_suffix(".seg")) else {
                continue;
            };
            if let Ok(first) = stem.parse::<u64>() {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments: Vec<Segment> = Vec::new();
        let count = firsts.len();
        for (position, first_lsn) in firsts.into_iter().enumerate() {
            let newest = position + 1 == count;
            let path = segment_path(dir, first_lsn);
            let segment = Self::scan(&path, first_lsn, newest, &mut recovery)?;
            if let Some(previous) = segments.last()
                && previous.last_lsn + 1 != segment.first_lsn
            {
                return Err(LogError::Corrupt {
                    path: segment.path,
                    offset: 0,
                    reason: format!(
                        "starts at record {} but the segment before ends at {}",
                        segment.first_lsn, previous.last_lsn
                    ),
                });
            }
            segments.push(segment);
        }
        let fresh = segments
            .last()
            .is_none_or(|last| last.last_lsn + 1 < next_lsn_if_empty);
        if fresh {
            // Nothing here, or only records older than what the caller has applied:
            // those segments are not needed any more.
            for old in segments.drain(..) {
                std::fs::remove_file(&old.path).map_err(io_error(&old.path))?;
            }
            let path = segment_path(dir, next_lsn_if_empty.max(1));
            File::create(&path).map_err(io_error(&path))?;
            fsync_dir(dir)?;
            segments.push(Segment {
                first_lsn: next_lsn_if_empty.max(1),
                last_lsn: next_lsn_if_empty.max(1) - 1,
                path,
                len: 0,
                index: Vec::new(),
            });
        }
        let Some(last) = segments.last() else {
            return Err(LogError::Failed("no segment after open".into()));
        };
        let mut active = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .open(&last.path)
            .map_err(io_error(&last.path))?;
        active
            .seek(SeekFrom::Start(last.len))
            .map_err(io_error(&last.path))?;
        Ok((
            SegmentLog {
                dir: dir.to_owned(),
                segments,
                active: Arc::new(active),
                max_segment_bytes: max_segment_bytes.max(FRAME_HEADER as u64 + 1),
                failed: Arc::default(),
                frame: Vec::new(),
            },
            recovery,
        ))
    }

    /// Walks one segment, building its index; truncates a torn tail of the newest.
    fn scan(
        path: &Path,
        first_lsn: u64,
        newest: bool,
        recovery: &mut Recovery,
    ) -> Result<Segment, LogError> {
        let mut bytes = Vec::new();
        File::open(path)
            .and_then(|mut file| file.read_to_end(&mut bytes))
            .map_err(io_error(path))?;
        let mut segment = Segment {
            first_lsn,
            last_lsn: first_lsn - 1,
            path: path.to_owned(),
            len: 0,
            index: Vec::new(),
        };
        let mut offset = 0;
        while offset < bytes.len() {
            let checked = read_frame(&bytes, offset).and_then(|(lsn, payload)| {
                if lsn == segment.last_lsn + 1 {
                    Ok(payload)
                } else {
                    Err(format!(
                        "record {lsn} where record {} was expected",
                        segment.last_lsn + 1
                    ))
                }
            });
            match checked {
                Ok(payload) => {
                    let frame_len = (payload.end - offset) as u64;
                    segment.note(segment.last_lsn + 1, offset as u64, frame_len);
                    recovery.records += 1;
                    offset = payload.end;
                }
                Err(reason) => {
                    let valid_later = (offset + 1..bytes.len()).any(|at| {
                        read_frame(&bytes, at).is_ok_and(|(lsn, _)| lsn > segment.last_lsn)
                    });
                    if !newest || valid_later {
                        return Err(LogError::Corrupt {
                            path: path.to_owned(),
                            offset: offset as u64,
                            reason,
                        });
                    }
                    // A torn write at the tail: cut it off.
                    let file = OpenOptions::new()
                        .write(true)
                        .open(path)
                        .map_err(io_error(path))?;
                    file.set_len(offset as u64).map_err(io_error(path))?;
                    file.sync_all().map_err(io_error(path))?;
                    recovery.truncated_bytes += (bytes.len() - offset) as u64;
                    tracing::warn!(
                        path = %path.display(),
                        offset,
                        cut = bytes.len() - offset,
                        %reason,
                        "journal: torn tail truncated"
                    );
                    break;
                }
            }
        }
        Ok(segment)
    }

    /// The LSN of the newest record (the one before the first record when empty).
    pub fn last_lsn(&self) -> u64 {
        self.segments.last().map_or(0, |segment| segment.last_lsn)
    }

    /// The LSN of the oldest record kept.
    #[cfg(test)]
    pub fn first_lsn(&self) -> u64 {
        self.segments.first().map_or(1, |segment| segment.first_lsn)
    }

    /// Segment files kept.
    #[cfg(test)]
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn active_segment(&mut self) -> Result<&mut Segment, LogError> {
        self.segments
            .last_mut()
            .ok_or_else(|| LogError::Failed("no active segment".into()))
    }

    /// Appends one record (one `write`), rotating first when the active segment is
    /// full; returns its LSN. Not durable until [`Self::sync`]. A failed write is cut
    /// off again, so the log stays a sequence of whole records.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        check_failed(&self.failed)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(LogError::TooLarge(payload.len()));
        }
        let frame_len = (FRAME_HEADER + payload.len()) as u64;
        let active = self.active_segment()?;
        if active.len > 0 && active.len + frame_len > self.max_segment_bytes {
            self.rotate()?;
        }
        let lsn = self.last_lsn() + 1;
        self.frame.clear();
        self.frame
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.frame
            .extend_from_slice(&crc(lsn, payload).to_le_bytes());
        self.frame.extend_from_slice(&lsn.to_le_bytes());
        self.frame.extend_from_slice(payload);
        let written = (&*self.active).write_all(&self.frame);
        let active = self
            .segments
            .last_mut()
            .ok_or_else(|| LogError::Failed("no active segment".into()))?;
        let offset = active.len;
        if let Err(source) = written {
            // Cut off what part of the frame made it, so the next record follows the
            // last whole one; if even that fails, nothing more may be appended.
            let cut = self
                .active
                .set_len(offset)
                .and_then(|()| (&*self.active).seek(SeekFrom::Start(offset)).map(|_| ()));
            if let Err(cut_error) = cut {
                set_failed(&self.failed, format!("{source}; then {cut_error}"));
            }
            return Err(LogError::Io {
                path: active.path.clone(),
                source,
            });
        }
        active.note(lsn, offset, frame_len);
        Ok(lsn)
    }

    /// Makes every appended record durable (one `fdatasync` of the active segment;
    /// sealed segments were synced when sealed). After a failed sync the log refuses
    /// every later append and sync: the kernel may have dropped the unsynced pages.
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.sync_handle().sync()
    }

    /// A handle that syncs what was appended so far from another thread (the writer's
    /// syncer), sharing the log's failed state.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            file: Arc::clone(&self.active),
            failed: Arc::clone(&self.failed),
            path: self
                .segments
                .last()
                .map(|segment| segment.path.clone())
                .unwrap_or_default(),
        }
    }

    /// Seals the active segment (synced) and starts a new one after it.
    fn rotate(&mut self) -> Result<(), LogError> {
        self.sync()?;
        let first_lsn = self.last_lsn() + 1;
        let path = segment_path(&self.dir, first_lsn);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path))?;
        fsync_dir(&self.dir)?;
        self.active = Arc::new(file);
        self.segments.push(Segment {
            first_lsn,
            last_lsn: first_lsn - 1,
            path,
            len: 0,
            index: Vec::new(),
        });
        Ok(())
    }

    /// Refuses every later append and sync, saying `why`.
    pub fn fail(&mut self, why: String) {
        set_failed(&self.failed, why);
    }

    /// Deletes sealed segments whose every record is at or below `lsn` (stored
    /// elsewhere for good). The active segment is always kept.
    pub fn remove_through(&mut self, lsn: u64) -> Result<usize, LogError> {
        let mut removed = 0;
        while self.segments.len() > 1 && self.segments[0].last_lsn <= lsn {
            let segment = self.segments.remove(0);
            std::fs::remove_file(&segment.path).map_err(io_error(&segment.path))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Every record with an LSN above `after`, oldest first, found through the sparse
    /// index.
    pub fn read_after(&self, after: u64) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        let mut records = Vec::new();
        let first = after.saturating_add(1);
        let start = self
            .segments
            .partition_point(|segment| segment.last_lsn < first);
        for segment in &self.segments[start..] {
            if segment.last_lsn < segment.first_lsn {
                continue;
            }
            // The last index entry at or before `first`.
            let at = segment.index.partition_point(|(lsn, _)| *lsn <= first);
            let (mut lsn, offset) = match at {
                0 => (segment.first_lsn, 0),
                at => segment.index[at - 1],
            };
            let mut file = File::open(&segment.path).map_err(io_error(&segment.path))?;
            file.seek(SeekFrom::Start(offset))
                .map_err(io_error(&segment.path))?;
            let mut bytes = Vec::new();
            file.take(segment.len - offset)
                .read_to_end(&mut bytes)
                .map_err(io_error(&segment.path))?;
            let mut position = 0;
            while lsn <= segment.last_lsn {
                let (found, payload) =
                    read_frame(&bytes, position).map_err(|reason| LogError::Corrupt {
                        path: segment.path.clone(),
                        offset: offset + position as u64,
                        reason,
                    })?;
                if found != lsn {
                    return Err(LogError::Corrupt {
                        path: segment.path.clone(),
                        offset: offset + position as u64,
                        reason: format!("record {found} where {lsn} was expected"),
                    });
                }
                if lsn >= first {
                    records.push((lsn, bytes[payload.clone()].to_vec()));
                }
                position = payload.end;
                lsn += 1;
            }
        }
        Ok(records)
    }

    /// Where to read every record from `from` on: one span per segment, starting at
    /// the sparse index entry at or before `from`. A snapshot: records appended later
    /// are not in it, and the files may be read without holding the log.
    pub fn spans_from(&self, from: u64) -> Vec<Span> {
        let start = self
            .segments
            .partition_point(|segment| segment.last_lsn < from);
        self.segments[start..]
            .iter()
            .filter(|segment| segment.last_lsn >= segment.first_lsn)
            .map(|segment| {
                let at = segment.index.partition_point(|(lsn, _)| *lsn <= from);
                let (lsn, offset) = match at {
                    0 => (segment.first_lsn, 0),
                    at => segment.index[at - 1],
                };
                Span {
                    path: segment.path.clone(),
                    segment_first_lsn: segment.first_lsn,
                    lsn,
                    offset,
                    end: segment.len,
                    last_lsn: segment.last_lsn,
                }
            })
            .collect()
    }

    /// Every record of the segment whose first record is `segment_first_lsn`.
    pub fn segment_span(&self, segment_first_lsn: u64) -> Option<Span> {
        self.segments
            .iter()
            .find(|segment| segment.first_lsn == segment_first_lsn)
            .filter(|segment| segment.last_lsn >= segment.first_lsn)
            .map(|segment| Span {
                path: segment.path.clone(),
                segment_first_lsn: segment.first_lsn,
                lsn: segment.first_lsn,
                offset: 0,
                end: segment.len,
                last_lsn: segment.last_lsn,
            })
    }

    /// `(first LSN, last LSN, bytes)` of every segment kept, oldest first.
    pub fn segment_bounds(&self) -> Vec<(u64, u64, u64)> {
        self.segments
            .iter()
            .map(|segment| (segment.first_lsn, segment.last_lsn, segment.len))
            .collect()
    }

    /// The first LSN of the segment being appended to.
    pub fn active_first_lsn(&self) -> u64 {
        self.segments.last().map_or(1, |segment| segment.first_lsn)
    }

    /// Bytes of every segment kept.
    pub fn total_bytes(&self) -> u64 {
        self.segments.iter().map(|segment| segment.len).sum()
    }

    /// Seals the active segment now (when it holds anything), so that everything
    /// appended so far can be removed segment by segment.
    pub fn seal(&mut self) -> Result<(), LogError> {
        check_failed(&self.failed)?;
        if self.active_segment()?.len > 0 {
            self.rotate()?;
        }
        Ok(())
    }

    /// The record numbered `lsn`, if kept.
    #[cfg(test)]
    pub fn get(&self, lsn: u64) -> Result<Option<Vec<u8>>, LogError> {
        if lsn == 0 {
            return Ok(None);
        }
        let found = self.read_after(lsn - 1)?;
        Ok(found
            .into_iter()
            .next()
            .filter(|(found, _)| *found == lsn)
            .map(|(_, payload)| payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: u64) -> Vec<u8> {
        format!("record {n} ")
            .repeat(1 + (n as usize % 7))
            .into_bytes()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|entry| entry.expect("entry").path())
            .collect();
        paths.sort();
        paths
    }

    #[test]
    fn records_round_trip_across_rotation_and_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, recovery) = SegmentLog::open(dir.path(), 1024, 1).expect("open");
        assert_eq!(recovery, Recovery::default());
        for n in 1..=200 {
            assert_eq!(log.append(&payload(n)).expect("append"), n);
        }
        log.sync().expect("sync");
        assert!(log.segment_count() > 5, "{} segments", log.segment_count());
        assert_eq!(segments(dir.path()).len(), log.segment_count());
        drop(log);
        let (log, recovery) = SegmentLog::open(dir.path(), 1024, 1).expect("reopen");
        assert_eq!(recovery.records, 200);
        assert_eq!(recovery.truncated_bytes, 0);
        assert_eq!(log.last_lsn(), 200);
        let all = log.read_after(0).expect("read");
        assert_eq!(all.len(), 200);
        for (n, (lsn, bytes)) in (1..).zip(&all) {
            assert_eq!(*lsn, n);
            assert_eq!(*bytes, payload(n));
        }
    }

    #[test]
    fn the_sparse_index_finds_any_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20, 1).expect("open");
        let big = vec![7u8; 20_000];
        for n in 1..=100 {
            let mut record = big.clone();
            record.extend_from_slice(&payload(n));
            log.append(&record).expect("append");
        }
        // ~2 MB in 1 MiB segments, an index entry every 64 KiB.
        assert!(log.segment_count() >= 2);
        assert!(log.segments.iter().all(|s| s.index.len() > 1));
        for n in [1, 2, 31, 50, 51, 99, 100] {
            let found = log.get(n).expect("get").expect("kept");
            assert!(found.ends_with(&payload(n)), "record {n}");
        }
        assert_eq!(log.get(101).expect("get"), None);
        assert_eq!(log.read_after(97).expect("read").len(), 3);
        assert_eq!(log.read_after(100).expect("read").len(), 0);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_whole_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20, 1).expect("open");
        for n in 1..=10 {
            log.append(&payload(n)).expect("append");
        }
        log.sync().expect("sync");
        drop(log);
        let path = segments(dir.path()).pop().expect("segment");
        let whole = std::fs::metadata(&path).expect("meta").len();
        // Half of an eleventh record, as a crash mid-write leaves it.
        let mut frame = Vec::new();
        let record = payload(11);
        frame.extend_from_slice(&(record.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc(11, &record).to_le_bytes());
        frame.extend_from_slice(&11u64.to_le_bytes());
        frame.extend_from_slice(&record[..record.len() / 2]);
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(&frame).expect("write");
        drop(file);

        let (mut log, recovery) = SegmentLog::open(dir.path(), 1 << 20, 1).expect("reopen");
        assert_eq!(recovery.records, 10);
        assert_eq!(recovery.truncated_bytes, frame.len() as u64);
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), whole);
        assert_eq!(log.last_lsn(), 10);
        // Appending carries on right after the last whole record.
        assert_eq!(log.append(b"eleven").expect("append"), 11);
        drop(log);
        let (log, _) = SegmentLog::open(dir.path(), 1 << 20, 1).expect("reopen");
        assert_eq!(log.get(11).expect("get").as_deref(), Some(&b"eleven"[..]));
    }

    #[test]
    fn a_checksum_mismatch_at_the_tail_is_cut_and_inside_the_log_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = SegmentLog::open(dir.path(), 1 << 20, 1).expect("open");
        for n in 1..=10 {
            log.append(&payload(n)).expect("append");
        }
        drop(log);
        let path = segments(dir.path()).pop().expect("segment");
        let bytes = std::fs::read(&path).expect("read");

        // The last record's payload damaged: a torn tail, cut off.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        std::fs::write(&path, &damaged).expect("write");
        let (log, recovery) = SegmentLog::open(dir.path(), 1 << 20, 1).expect("reopen");
        assert_eq!(log.last_lsn(), 9);
        assert!(recovery.truncated_bytes > 0);
        drop(log);

        // A record in the middle damaged, whole records after it: corruption.
        let mut damaged = bytes.clone();
        damaged[FRAME_HEADER + 2] ^= 0xff;
        std::fs::write(&path, &damaged).expect("write");
        match SegmentLog::open(dir.path(), 1 << 20, 1) {
            Err(LogError::Corrupt { offset, reason, .. }) => {
                assert_eq!(offset, 0);
                assert!(reason.contains("checksum"), "{reason}");
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("a damaged record inside the log was accepted"),
        }
        // The file was left as it was for inspection.
        assert_eq!(std::fs::read(&path).expect("read"), damaged);
    }

    #[test]
    fn damage_in_a_sealed_segment_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = SegmentLog::open(dir.path(), 256, 1).expect("open");
        for n in 1..=40 {
            log.append(&payload(n)).expect("append");
        }
        drop(log);
        let first = segments(dir.path()).remove(0);
        let mut bytes = std::fs::read(&first).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(&first, bytes).expect("write");
        assert!(matches!(
            SegmentLog::open(dir.path(), 256, 1),
            Err(LogError::Corrupt { .. })
        ));
    }

    #[test]
    fn applied_segments_are_removed_and_numbering_continues() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut log, _) = SegmentLog::open(dir.path(), 256, 1).expect("open");
        for n in 1..=40 {
            log.append(&payload(n)).expect("append");
        }
        let before = log.segment_count();
        let removed = log.remove_through(20).expect("remove");
        assert!(removed > 0 && log.segment_count() == before - removed);
        assert!(log.first_lsn() <= 21, "record 21 is kept");
        let kept = log.read_after(20).expect("read");
        assert_eq!(kept.first().map(|(lsn, _)| *lsn), Some(21));
        assert_eq!(kept.len(), 20);
        // Everything applied: only the active segment stays.
        log.remove_through(40).expect("remove");
        assert_eq!(log.segment_count(), 1);
        drop(log);
        // Reopened after a store that applied up to 50 (the journal was behind):
        // numbering continues after it.
        let (mut log, _) = SegmentLog::open(dir.path(), 256, 51).expect("reopen");
        assert_eq!(log.append(b"next").expect("append"), 51);
        assert_eq!(log.read_after(0).expect("read").len(), 1);
    }
}
