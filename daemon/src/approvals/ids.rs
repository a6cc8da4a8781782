//! Approval ids that are never reused, not even across daemon restarts or crashes.
//!
//! An operator approves by id, so an id from yesterday's notification must never name
//! today's statement. Ids are handed out from blocks reserved on disk: the file holds
//! the first id not yet reserved and is rewritten (write, fsync, rename) before any id
//! of a new block is used. A crash skips at most the rest of a block, never repeats.
//! A file of its own rather than the store keeps holds independent of the store's
//! writer queue, on which a held statement must not wait.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

/// How many ids one write to disk reserves.
const BLOCK: u64 = 64;

#[derive(Debug, thiserror::Error)]
#[error("approval ids in {path}: {message}")]
pub struct IdError {
    pub path: PathBuf,
    pub message: String,
}

/// Hands out increasing approval ids, starting at 1.
#[derive(Debug)]
pub struct IdAllocator {
    path: PathBuf,
    next: u64,
    /// The first id not covered by the reservation on disk.
    reserved_until: u64,
}

impl IdAllocator {
    /// Opens (or starts) the id file at `path`.
    pub fn open(path: &Path) -> Result<Self, IdError> {
        let error = |message: String| IdError {
            path: path.to_owned(),
            message,
        };
        let next = match std::fs::read_to_string(path) {
            Ok(text) => text
                .trim()
                .parse::<u64>()
                .map_err(|_| error(format!("not a number: {:?}", text.trim())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 1,
            Err(e) => return Err(error(e.to_string())),
        };
        Ok(Self {
            path: path.to_owned(),
            next: next.max(1),
            reserved_until: next.max(1),
        })
    }

    /// The next id; reserves a new block on disk first when the current one is used up.
    pub fn allocate(&mut self) -> Result<u64, IdError> {
        if self.next >= self.reserved_until {
            let until = self.next.saturating_add(BLOCK);
            self.persist(until)?;
            self.reserved_until = until;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }

    fn persist(&self, until: u64) -> Result<(), IdError> {
        let error = |e: std::io::Error| IdError {
            path: self.path.clone(),
            message: e.to_string(),
        };
        let temporary = self.path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(error)?;
        writeln!(file, "{until}").map_err(error)?;
        file.sync_all().map_err(error)?;
        std::fs::rename(&temporary, &self.path).map_err(error)?;
        if let Some(parent) = self.path.parent()
            && let Ok(dir) = std::fs::File::open(parent)
        {
            dir.sync_all().map_err(error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_are_not_reused_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("approval-ids");
        let mut ids = IdAllocator::open(&path).expect("open");
        assert_eq!(ids.allocate().expect("id"), 1);
        assert_eq!(ids.allocate().expect("id"), 2);
        // A restart (or crash) after two ids: the next starts past the reserved block.
        let mut reopened = IdAllocator::open(&path).expect("reopen");
        let third = reopened.allocate().expect("id");
        assert!(third > 2, "{third}");
        for _ in 0..200 {
            reopened.allocate().expect("id");
        }
        let last = reopened.allocate().expect("id");
        let mut again = IdAllocator::open(&path).expect("reopen");
        assert!(again.allocate().expect("id") > last);
    }

    #[test]
    fn a_corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("approval-ids");
        std::fs::write(&path, "twelve").expect("write");
        assert!(IdAllocator::open(&path).is_err());
    }
}
