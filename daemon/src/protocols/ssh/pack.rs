//! Reads the pack a `git push` sends, as it streams past, to learn which ref updates
//! are fast-forwards.
//!
//! A push names each ref update as `old new ref`; whether `new` descends from `old`
//! (a fast-forward) or rewrites history (a force-push) is only in the commits the pack
//! carries. So the pack is forwarded to the server while it is read here, except its
//! trailer (the checksum that ends it): without the trailer `git-receive-pack` has an
//! incomplete pack and updates nothing, so a push refused once the whole pack has been
//! read never completes on the server.
//!
//! What is read: the `PACK` header, each object's type and size, its delta base
//! (`OFS_DELTA` offset or `REF_DELTA` id) and its zlib stream, inflated only to find
//! where it ends. Only commits are kept: their text (a delta may be based on them) and
//! their parents; blobs and trees are inflated into a scratch buffer and dropped. A
//! commit's id is hashed from its own content, so a commit found under an id really
//! has the parents read from it. Deltas whose base is a commit read earlier are
//! resolved; any other delta (a thin pack's base outside the pack, a tree, a blob) is
//! of unknown type and counts as no commit. What is held is capped
//! ([`MAX_HELD`]); beyond it nothing is proven.
//!
//! [`PackScanner::fast_forward`] walks from `new` through the pack's commits: only a
//! walk that reaches `old` proves a fast-forward. Everything else (a `new` already on
//! the server, so not in the pack; a base outside the pack; the cap) is *not proven*,
//! and the caller treats it as a force-push.
//!
//! Hand-written rather than gix-pack: gix-pack reads packs from a blocking `BufRead`
//! and checks the trailer itself, while the proxy gets the stream as SSH channel
//! messages in an async task and must know exactly where the objects end to hold the
//! trailer back; its streaming reader also pulls in tempfile/fs/hashing crates that
//! this ~550-line reader does not need. flate2 (already a dependency) inflates.

use std::collections::{HashMap, HashSet, VecDeque};

use flate2::{Decompress, FlushDecompress, Status};
use sha1::{Digest, Sha1};
use sha2::Sha256;

/// The most commit data (text and parent lists) kept from one pack; beyond it the
/// scanner keeps reading (to find the trailer) but proves nothing.
pub const MAX_HELD: usize = 32 * 1024 * 1024;

/// The repository's object format, from the push's `object-format=` capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectFormat {
    Sha1,
    Sha256,
}

impl ObjectFormat {
    /// From the capabilities of a push's first command line (sha1 when none is named);
    /// `None` for a format this reader does not know.
    pub fn from_capabilities<'a>(capabilities: impl IntoIterator<Item = &'a str>) -> Option<Self> {
        for capability in capabilities {
            if let Some(format) = capability.strip_prefix("object-format=") {
                return match format {
                    "sha1" => Some(Self::Sha1),
                    "sha256" => Some(Self::Sha256),
                    _ => None,
                };
            }
        }
        Some(Self::Sha1)
    }

    pub fn id_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    fn hash_object(self, kind: &str, content: &[u8]) -> Vec<u8> {
        let header = format!("{kind} {}\0", content.len());
        match self {
            Self::Sha1 => {
                let mut hasher = Sha1::new();
                hasher.update(header.as_bytes());
                hasher.update(content);
                hasher.finalize().to_vec()
            }
            Self::Sha256 => {
                let mut hasher = Sha256::new();
                hasher.update(header.as_bytes());
                hasher.update(content);
                hasher.finalize().to_vec()
            }
        }
    }
}

/// Why a pack cannot be read: the push is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackError {
    #[error("not a pack (no PACK header)")]
    Signature,
    #[error("pack version {0} is not 2 or 3")]
    Version(u32),
    #[error("bad object header at offset {0}")]
    ObjectHeader(u64),
    #[error("object type {kind} at offset {offset} does not exist")]
    ObjectType { kind: u8, offset: u64 },
    #[error("bad delta base offset at {0}")]
    BaseOffset(u64),
    #[error("object at offset {0}: {1}")]
    Inflate(u64, String),
    #[error("object at offset {0} inflates to another size than its header says")]
    Size(u64),
    #[error("bytes after the pack's trailer")]
    TrailingBytes,
}

/// What an object read earlier is, as far as deltas based on it care.
enum Base {
    /// A commit, by id (its text is in `PackScanner::texts`).
    Commit(Vec<u8>),
}

/// The object being inflated.
struct Inflating {
    offset: u64,
    size: u64,
    decompress: Decompress,
    /// Where its inflated bytes go: kept (a commit or a delta on a commit) or dropped.
    keep: Option<Vec<u8>>,
    what: Pending,
}

enum Pending {
    Commit,
    /// A delta on the commit with this id.
    DeltaOnCommit(Vec<u8>),
    /// Anything else: read to find its end.
    Other,
}

enum Stage {
    Header,
    Object,
    Inflate(Box<Inflating>),
    Trailer,
}

/// Reads a pack as it streams past; see the module doc.
pub struct PackScanner {
    format: ObjectFormat,
    stage: Stage,
    /// Bytes received and not yet read (a partial object header, the trailer).
    pending: Vec<u8>,
    /// Stream offset of `pending[0]`.
    offset: u64,
    objects: u32,
    read: u32,
    /// Commits by pack offset (for `OFS_DELTA` bases).
    by_offset: HashMap<u64, Base>,
    /// Commit texts by id (delta bases) and their parents.
    texts: HashMap<Vec<u8>, Vec<u8>>,
    parents: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    held: usize,
    /// Set once more than [`MAX_HELD`] would have been kept: nothing is proven.
    over_cap: bool,
    scratch: Vec<u8>,
}

impl PackScanner {
    pub fn new(format: ObjectFormat) -> Self {
        Self {
            format,
            stage: Stage::Header,
            pending: Vec::new(),
            offset: 0,
            objects: 0,
            read: 0,
            by_offset: HashMap::new(),
            texts: HashMap::new(),
            parents: HashMap::new(),
            held: 0,
            over_cap: false,
            scratch: vec![0; 32 * 1024],
        }
    }

    /// Reads `data`; returns the bytes that may go on to the server now: everything up
    /// to what has been read as pack content, never the trailer.
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<u8>, PackError> {
        self.pending.extend_from_slice(data);
        let mut at = 0;
        loop {
            match &mut self.stage {
                Stage::Header => {
                    let Some(header) = self.pending.get(at..at + 12) else {
                        break;
                    };
                    if &header[..4] != b"PACK" {
                        return Err(PackError::Signature);
                    }
                    let version = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                    if version != 2 && version != 3 {
                        return Err(PackError::Version(version));
                    }
                    self.objects =
                        u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
                    at += 12;
                    self.stage = if self.objects == 0 {
                        Stage::Trailer
                    } else {
                        Stage::Object
                    };
                }
                Stage::Object => {
                    let offset = self.offset + at as u64;
                    let Some((header_len, inflating)) =
                        self.object_header(&self.pending[at..], offset)?
                    else {
                        break;
                    };
                    at += header_len;
                    self.stage = Stage::Inflate(Box::new(inflating));
                }
                Stage::Inflate(inflating) => {
                    let input = &self.pending[at..];
                    let before = inflating.decompress.total_in();
                    let produced_before = inflating.decompress.total_out();
                    let status = inflating
                        .decompress
                        .decompress(input, &mut self.scratch, FlushDecompress::None)
                        .map_err(|error| PackError::Inflate(inflating.offset, error.to_string()))?;
                    let used = (inflating.decompress.total_in() - before) as usize;
                    let produced = (inflating.decompress.total_out() - produced_before) as usize;
                    at += used;
                    if inflating.decompress.total_out() > inflating.size {
                        return Err(PackError::Size(inflating.offset));
                    }
                    if let Some(keep) = inflating.keep.as_mut() {
                        keep.extend_from_slice(&self.scratch[..produced]);
                    }
                    match status {
                        Status::StreamEnd => {
                            if inflating.decompress.total_out() != inflating.size {
                                return Err(PackError::Size(inflating.offset));
                            }
                            let Stage::Inflate(done) =
                                std::mem::replace(&mut self.stage, Stage::Object)
                            else {
                                unreachable!("matched above");
                            };
                            self.finish_object(*done);
                            self.read += 1;
                            if self.read == self.objects {
                                self.stage = Stage::Trailer;
                            }
                        }
                        Status::Ok | Status::BufError => {
                            if used == 0 && produced == 0 {
                                break;
                            }
                        }
                    }
                }
                Stage::Trailer => {
                    if self.pending.len() - at > self.format.id_len() {
                        return Err(PackError::TrailingBytes);
                    }
                    break;
                }
            }
        }
        let passed: Vec<u8> = self.pending.drain(..at).collect();
        self.offset += at as u64;
        Ok(passed)
    }

    /// Whether every object and the whole trailer have arrived.
    pub fn complete(&self) -> bool {
        matches!(self.stage, Stage::Trailer) && self.pending.len() == self.format.id_len()
    }

    /// The trailer, held back by [`Self::feed`] (complete once [`Self::complete`]).
    pub fn take_trailer(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }

    /// Objects the pack says it holds.
    pub fn object_count(&self) -> u32 {
        self.objects
    }

    /// Commits read from the pack.
    pub fn commit_count(&self) -> usize {
        self.parents.len()
    }

    /// Bytes of commit data held.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Parses one object header at the start of `bytes`: `None` when more bytes are
    /// needed, else its length and the inflation to run.
    fn object_header(
        &self,
        bytes: &[u8],
        offset: u64,
    ) -> Result<Option<(usize, Inflating)>, PackError> {
        let mut at = 0;
        let Some(&first) = bytes.first() else {
            return Ok(None);
        };
        at += 1;
        let kind = (first >> 4) & 7;
        let mut size = u64::from(first & 0x0f);
        let mut shift = 4;
        let mut byte = first;
        while byte & 0x80 != 0 {
            let Some(&next) = bytes.get(at) else {
                return Ok(None);
            };
            at += 1;
            if shift > 57 {
                return Err(PackError::ObjectHeader(offset));
            }
            size |= u64::from(next & 0x7f) << shift;
            shift += 7;
            byte = next;
        }
        let what = match kind {
            1 => Pending::Commit,
            2..=4 => Pending::Other,
            6 => {
                let Some(&first) = bytes.get(at) else {
                    return Ok(None);
                };
                at += 1;
                let mut distance = u64::from(first & 0x7f);
                let mut byte = first;
                while byte & 0x80 != 0 {
                    let Some(&next) = bytes.get(at) else {
                        return Ok(None);
                    };
                    at += 1;
                    distance = distance
                        .checked_add(1)
                        .and_then(|d| d.checked_mul(128))
                        .ok_or(PackError::BaseOffset(offset))?
                        | u64::from(next & 0x7f);
                    byte = next;
                }
                if distance == 0 || distance > offset {
                    return Err(PackError::BaseOffset(offset));
                }
                match self.by_offset.get(&(offset - distance)) {
                    Some(Base::Commit(id)) => Pending::DeltaOnCommit(id.clone()),
                    None => Pending::Other,
                }
            }
            7 => {
                let len = self.format.id_len();
                let Some(id) = bytes.get(at..at + len) else {
                    return Ok(None);
                };
                at += len;
                if self.texts.contains_key(id) {
                    Pending::DeltaOnCommit(id.to_vec())
                } else {
                    Pending::Other
                }
            }
            kind => return Err(PackError::ObjectType { kind, offset }),
        };
        let keep = match what {
            Pending::Other => None,
            _ if self.over_cap => None,
            _ => Some(Vec::with_capacity(size.min(64 * 1024) as usize)),
        };
        Ok(Some((
            at,
            Inflating {
                offset,
                size,
                decompress: Decompress::new(true),
                keep,
                what,
            },
        )))
    }

    fn finish_object(&mut self, done: Inflating) {
        let Some(data) = done.keep else {
            return;
        };
        let text = match done.what {
            Pending::Other => return,
            Pending::Commit => data,
            Pending::DeltaOnCommit(base) => {
                let Some(base) = self.texts.get(&base) else {
                    return;
                };
                match apply_delta(base, &data) {
                    Some(text) => text,
                    // A bad delta: git rejects the pack; here it is simply no commit.
                    None => return,
                }
            }
        };
        let Some(parents) = commit_parents(&text, self.format) else {
            return;
        };
        let cost = text.len() + parents.len() * self.format.id_len() + 64;
        if self.held + cost > MAX_HELD {
            self.over_cap = true;
            return;
        }
        self.held += cost;
        let id = self.format.hash_object("commit", &text);
        self.by_offset.insert(done.offset, Base::Commit(id.clone()));
        self.parents.insert(id.clone(), parents);
        self.texts.insert(id, text);
    }

    /// Whether the pack proves that `new` descends from `old` (both hex ids).
    pub fn fast_forward(&self, old: &str, new: &str) -> Ancestry {
        let (Some(old), Some(new)) = (decode_hex(old), decode_hex(new)) else {
            return Ancestry::NotProven("an id is not hexadecimal".into());
        };
        if old == new {
            return Ancestry::FastForward;
        }
        if !self.parents.contains_key(&new) {
            return Ancestry::NotProven(if self.over_cap {
                format!("the pack holds more commit data than the {MAX_HELD}-byte cap")
            } else {
                "the new commit is not in the pack (already on the server, or sent as a delta on an object outside the pack)".into()
            });
        }
        let mut seen: HashSet<&[u8]> = HashSet::new();
        let mut queue: VecDeque<&[u8]> = VecDeque::from([new.as_slice()]);
        while let Some(id) = queue.pop_front() {
            if !seen.insert(id) {
                continue;
            }
            let Some(parents) = self.parents.get(id) else {
                // A commit the server already has: the pack's history ends here.
                continue;
            };
            for parent in parents {
                if parent == &old {
                    return Ancestry::FastForward;
                }
                queue.push_back(parent);
            }
        }
        Ancestry::NotProven(if self.over_cap {
            format!("the pack holds more commit data than the {MAX_HELD}-byte cap")
        } else {
            "the old commit is not an ancestor of the new one in the pushed history".into()
        })
    }
}

/// Whether an update is a proven fast-forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ancestry {
    FastForward,
    /// Why not.
    NotProven(String),
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect()
}

/// The parents a commit's text names, read as git reads them: the `tree` line first,
/// then the `parent` lines right after it; a `parent` line anywhere else is not a
/// parent to git, so it is none here either (else a crafted commit could "prove" a
/// fast-forward git would not see). `None` when it is no commit.
fn commit_parents(text: &[u8], format: ObjectFormat) -> Option<Vec<Vec<u8>>> {
    let id = |hex: &[u8]| {
        decode_hex(std::str::from_utf8(hex).ok()?).filter(|id| id.len() == format.id_len())
    };
    let mut lines = text.split(|&b| b == b'\n');
    id(lines.next()?.strip_prefix(b"tree ")?)?;
    let mut parents = Vec::new();
    for line in lines {
        match line.strip_prefix(b"parent ") {
            Some(hex) => parents.push(id(hex)?),
            None => break,
        }
    }
    Some(parents)
}

/// Reads a delta's little-endian base-128 size.
fn delta_size(delta: &[u8], at: &mut usize) -> Option<usize> {
    let mut size: usize = 0;
    let mut shift = 0;
    loop {
        let byte = *delta.get(*at)?;
        *at += 1;
        if shift > 56 {
            return None;
        }
        size |= usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some(size);
        }
    }
}

/// Applies a git delta to `base`; `None` when it is malformed or larger than the cap.
fn apply_delta(base: &[u8], delta: &[u8]) -> Option<Vec<u8>> {
    let mut at = 0;
    if delta_size(delta, &mut at)? != base.len() {
        return None;
    }
    let target = delta_size(delta, &mut at)?;
    if target > MAX_HELD {
        return None;
    }
    let mut out = Vec::with_capacity(target);
    while let Some(&command) = delta.get(at) {
        at += 1;
        if command & 0x80 != 0 {
            let mut offset = 0usize;
            for bit in 0..4 {
                if command & (1 << bit) != 0 {
                    offset |= usize::from(*delta.get(at)?) << (8 * bit);
                    at += 1;
                }
            }
            let mut size = 0usize;
            for bit in 0..3 {
                if command & (0x10 << bit) != 0 {
                    size |= usize::from(*delta.get(at)?) << (8 * bit);
                    at += 1;
                }
            }
            if size == 0 {
                size = 0x10000;
            }
            out.extend_from_slice(base.get(offset..offset.checked_add(size)?)?);
        } else if command != 0 {
            let len = usize::from(command);
            out.extend_from_slice(delta.get(at..at + len)?);
            at += len;
        } else {
            return None;
        }
        if out.len() > target {
            return None;
        }
    }
    (out.len() == target).then_some(out)
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use super::*;

    /// A scratch repository driven by the real `git`.
    struct Repo {
        dir: tempfile::TempDir,
    }

    impl Repo {
        fn new(format: &str) -> Self {
            let repo = Self {
                dir: tempfile::tempdir().unwrap(),
            };
            repo.git(&[
                "init",
                "-q",
                "-b",
                "main",
                &format!("--object-format={format}"),
            ]);
            repo
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn git(&self, args: &[&str]) -> String {
            self.git_with_input(args, None)
        }

        fn git_with_input(&self, args: &[&str], input: Option<&str>) -> String {
            String::from_utf8(self.git_bytes(args, input))
                .unwrap()
                .trim()
                .to_owned()
        }

        fn git_bytes(&self, args: &[&str], input: Option<&str>) -> Vec<u8> {
            use std::io::Write as _;
            let mut child = Command::new("git")
                .current_dir(self.path())
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(input.unwrap_or_default().as_bytes())
                .unwrap();
            drop(stdin);
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            output.stdout
        }

        /// Commits a change to `file` with `message`; returns the new commit's id.
        fn commit(&self, file: &str, content: &str, message: &str) -> String {
            std::fs::write(self.path().join(file), content).unwrap();
            self.git(&["add", file]);
            self.git(&["commit", "-q", "-m", message]);
            self.git(&["rev-parse", "HEAD"])
        }

        /// What `git push` would send for `new` to a server that has `old`.
        fn pack(&self, new: &str, old: Option<&str>, extra: &[&str]) -> Vec<u8> {
            let mut revs = format!("{new}\n");
            if let Some(old) = old {
                revs.push_str(&format!("^{old}\n"));
            }
            let mut args = vec!["pack-objects", "--revs", "--stdout", "-q"];
            args.extend_from_slice(extra);
            self.git_bytes(&args, Some(&revs))
        }
    }

    /// Feeds `pack` in `chunk`-sized pieces; checks that everything but the trailer is
    /// passed on, in order, and that the trailer is held.
    fn scan(pack: &[u8], format: ObjectFormat, chunk: usize) -> PackScanner {
        let mut scanner = PackScanner::new(format);
        let mut passed = Vec::new();
        for piece in pack.chunks(chunk) {
            assert!(!scanner.complete());
            passed.extend(scanner.feed(piece).unwrap());
        }
        assert!(scanner.complete(), "the whole pack was read");
        assert_eq!(
            passed.len(),
            pack.len() - format.id_len(),
            "all but the trailer"
        );
        passed.extend(scanner.take_trailer());
        assert_eq!(passed, pack);
        scanner
    }

    #[test]
    fn a_pushed_history_that_extends_the_old_commit_is_a_fast_forward() {
        let repo = Repo::new("sha1");
        let one = repo.commit("a.txt", "one\n", "one");
        let two = repo.commit("a.txt", "two\n", "two");
        let three = repo.commit("b.txt", &"x".repeat(100_000), "three");
        let pack = repo.pack(&three, Some(&one), &["--thin", "--delta-base-offset"]);
        for chunk in [1, 7, 4096, pack.len()] {
            let scanner = scan(&pack, ObjectFormat::Sha1, chunk);
            assert_eq!(scanner.commit_count(), 2);
            assert_eq!(scanner.fast_forward(&one, &three), Ancestry::FastForward);
            assert_eq!(scanner.fast_forward(&two, &three), Ancestry::FastForward);
            assert!(matches!(
                scanner.fast_forward(&three, &one),
                Ancestry::NotProven(_)
            ));
        }
    }

    #[test]
    fn a_rewritten_history_is_not_proven() {
        let repo = Repo::new("sha1");
        let one = repo.commit("a.txt", "one\n", "one");
        let two = repo.commit("a.txt", "two\n", "two");
        repo.git(&["reset", "-q", "--hard", &one]);
        let rewritten = repo.commit("a.txt", "other two\n", "two, rewritten");
        let pack = repo.pack(&rewritten, Some(&two), &["--thin", "--delta-base-offset"]);
        let scanner = scan(&pack, ObjectFormat::Sha1, 100);
        let Ancestry::NotProven(why) = scanner.fast_forward(&two, &rewritten) else {
            panic!("a force-push proven a fast-forward");
        };
        assert!(why.contains("not an ancestor"), "{why}");
        // Going back to a commit the server has sends no commit at all.
        let empty = repo.pack(&one, Some(&two), &[]);
        let scanner = scan(&empty, ObjectFormat::Sha1, 100);
        assert_eq!(scanner.object_count(), 0);
        let Ancestry::NotProven(why) = scanner.fast_forward(&two, &one) else {
            panic!("a rewind proven a fast-forward");
        };
        assert!(why.contains("not in the pack"), "{why}");
    }

    #[test]
    fn a_merge_is_walked_through_both_parents() {
        let repo = Repo::new("sha1");
        let base = repo.commit("a.txt", "base\n", "base");
        repo.git(&["checkout", "-q", "-b", "side"]);
        let side = repo.commit("s.txt", "side\n", "side");
        repo.git(&["checkout", "-q", "main"]);
        let main = repo.commit("m.txt", "main\n", "main");
        repo.git(&["merge", "-q", "--no-edit", "side"]);
        let merge = repo.git(&["rev-parse", "HEAD"]);
        // The server has `side` only: main's own commit is in the pack, `side` is not.
        let pack = repo.pack(&merge, Some(&side), &["--delta-base-offset"]);
        let scanner = scan(&pack, ObjectFormat::Sha1, 333);
        assert_eq!(scanner.fast_forward(&side, &merge), Ancestry::FastForward);
        // The server has `main`'s commit and base.
        let pack = repo.pack(&merge, Some(&main), &[]);
        let scanner = scan(&pack, ObjectFormat::Sha1, 333);
        assert_eq!(scanner.fast_forward(&main, &merge), Ancestry::FastForward);
        // `base` is reached through `side`, which is in this pack.
        assert_eq!(scanner.fast_forward(&base, &merge), Ancestry::FastForward);
        assert!(matches!(
            scanner.fast_forward(&merge, &main),
            Ancestry::NotProven(_)
        ));
    }

    #[test]
    fn commits_stored_as_deltas_are_resolved() {
        let repo = Repo::new("sha1");
        let body = "A long description that repeats. ".repeat(200);
        let first = repo.commit("a.txt", "0\n", &format!("change 0\n\n{body}"));
        let mut last = first.clone();
        for n in 1..12 {
            last = repo.commit("a.txt", &format!("{n}\n"), &format!("change {n}\n\n{body}"));
        }
        for extra in [&["--delta-base-offset"][..], &[][..]] {
            // Without --delta-base-offset, in-pack bases are named by id (REF_DELTA).
            let pack = repo.pack(&last, None, extra);
            let packs = tempfile::tempdir().unwrap();
            let file = packs.path().join("p.pack");
            std::fs::write(&file, &pack).unwrap();
            repo.git(&["index-pack", file.to_str().unwrap()]);
            let listing = repo.git(&["verify-pack", "-v", file.to_str().unwrap()]);
            let delta_commits = listing
                .lines()
                .filter(|line| line.contains(" commit ") && line.split_whitespace().count() > 5)
                .count();
            assert!(
                delta_commits > 0,
                "the pack stores commits as deltas:\n{listing}"
            );
            let scanner = scan(&pack, ObjectFormat::Sha1, 1000);
            assert_eq!(scanner.commit_count(), 12);
            assert_eq!(scanner.fast_forward(&first, &last), Ancestry::FastForward);
        }
    }

    #[test]
    fn sha256_repositories_are_read() {
        let repo = Repo::new("sha256");
        let one = repo.commit("a.txt", "one\n", "one");
        let two = repo.commit("a.txt", "two\n", "two");
        assert_eq!(two.len(), 64);
        let pack = repo.pack(&two, Some(&one), &["--thin", "--delta-base-offset"]);
        let scanner = scan(&pack, ObjectFormat::Sha256, 50);
        assert_eq!(scanner.fast_forward(&one, &two), Ancestry::FastForward);
        assert_eq!(
            ObjectFormat::from_capabilities(["report-status", "object-format=sha256"]),
            Some(ObjectFormat::Sha256)
        );
        assert_eq!(
            ObjectFormat::from_capabilities(["report-status"]),
            Some(ObjectFormat::Sha1)
        );
        assert_eq!(ObjectFormat::from_capabilities(["object-format=md5"]), None);
    }

    #[test]
    fn broken_packs_are_errors() {
        let repo = Repo::new("sha1");
        let one = repo.commit("a.txt", "one\n", "one");
        let pack = repo.pack(&one, None, &[]);
        assert_eq!(
            PackScanner::new(ObjectFormat::Sha1).feed(b"PAC! and more"),
            Err(PackError::Signature)
        );
        let mut longer = pack.clone();
        longer.extend_from_slice(b"extra");
        assert_eq!(
            PackScanner::new(ObjectFormat::Sha1).feed(&longer),
            Err(PackError::TrailingBytes)
        );
        let mut corrupt = pack.clone();
        corrupt[14] ^= 0xff;
        corrupt[15] ^= 0xff;
        assert!(PackScanner::new(ObjectFormat::Sha1).feed(&corrupt).is_err());
        // An object count beyond what is sent: the pack never completes.
        let mut short = pack[..pack.len() - 20].to_vec();
        short[11] += 1;
        let mut scanner = PackScanner::new(ObjectFormat::Sha1);
        scanner.feed(&short).unwrap();
        assert!(!scanner.complete());
        assert!(apply_delta(b"abc", &[3, 3, 0]).is_none());
        let tree = "a".repeat(40);
        let (one, two) = ("1".repeat(40), "2".repeat(40));
        assert_eq!(
            commit_parents(
                format!("tree {tree}\nparent {one}\nauthor x\nparent {two}\n\nmsg\nparent {two}\n")
                    .as_bytes(),
                ObjectFormat::Sha1
            ),
            Some(vec![vec![0x11; 20]]),
            "only the parent lines right after the tree line count, as in git"
        );
        assert_eq!(
            commit_parents(
                format!("author x\ntree {tree}\n").as_bytes(),
                ObjectFormat::Sha1
            ),
            None
        );
        assert_eq!(
            apply_delta(b"abc", &[3, 3, 0x91, 1, 2, 1, b'z']).unwrap(),
            b"bcz"
        );
    }
}
