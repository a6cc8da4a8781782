//! Each exporter's cursor: the seq of the last event its sink acknowledged, in
//! `STATE_DIR/export/NAME.cursor` (decimal, one line).
//!
//! A file per exporter rather than a store tree: cursors move at the sinks' pace, from
//! the exporters' own tasks, and need no atomicity with the log; a file written to a
//! temporary name, synced and renamed over the old one survives crashes whole, and
//! keeps the store's single writer for the audit trail alone.

use std::{
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

/// A cursor file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error("cursor {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cursor {path} holds {text:?}, not a sequence number")]
    Corrupt { path: PathBuf, text: String },
}

/// Where one exporter's cursor lives.
#[derive(Clone, Debug)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// The cursor of exporter `name` under `state_dir`.
    pub fn new(state_dir: &Path, name: &str) -> Self {
        Self {
            path: state_dir.join("export").join(format!("{name}.cursor")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored cursor; 0 (start of the log) when there is none yet.
    pub fn load(&self) -> Result<u64, CursorError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map_err(|_| CursorError::Corrupt {
                path: self.path.clone(),
                text: text.chars().take(40).collect(),
            }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(source) => Err(self.error(source)),
        }
    }

    /// Replaces the cursor durably (temporary file, fsync, rename, fsync of the dir).
    pub fn store(&self, seq: u64) -> Result<(), CursorError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| self.error(source))?;
        let temporary = self.path.with_extension("cursor.tmp");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(|source| self.error(source))?;
        writeln!(file, "{seq}").map_err(|source| self.error(source))?;
        file.sync_all().map_err(|source| self.error(source))?;
        std::fs::rename(&temporary, &self.path).map_err(|source| self.error(source))?;
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> CursorError {
        CursorError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_survives_reopening_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cursor = CursorFile::new(dir.path(), "siem");
        assert_eq!(cursor.load().expect("load"), 0);
        cursor.store(41).expect("store");
        cursor.store(42).expect("store");
        assert_eq!(
            CursorFile::new(dir.path(), "siem").load().expect("load"),
            42
        );
        std::fs::write(cursor.path(), "forty-two").expect("write");
        assert!(matches!(cursor.load(), Err(CursorError::Corrupt { .. })));
    }
}
