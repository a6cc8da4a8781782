//! Lines appended to a file, rotated by size (`PATH` → `PATH.1` → ... → `PATH.keep`).
//!
//! Acknowledged once written and `fsync`ed: one `fsync` per page, so a page of 500
//! events costs one disk sync. The file is created 0600: it is audit data.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use super::{Line, SinkError};
use crate::export::config::FileConfig;

pub struct FileSink {
    config: FileConfig,
}

impl FileSink {
    pub fn new(config: FileConfig) -> Self {
        Self { config }
    }

    pub async fn send(&mut self, lines: &[Line]) -> Result<(), SinkError> {
        let config = self.config.clone();
        let texts: Vec<String> = lines
            .iter()
            .map(|line| format!("{}\n", line.text))
            .collect();
        tokio::task::spawn_blocking(move || append(&config, &texts))
            .await
            .map_err(|error| SinkError::Io {
                what: "file exporter task".into(),
                source: std::io::Error::other(error.to_string()),
            })?
    }
}

/// Appends `lines`, rotating before a line would take the file past `max_bytes` (a
/// single longer line gets a file of its own); syncs every file it wrote to.
fn append(config: &FileConfig, lines: &[String]) -> Result<(), SinkError> {
    let path = &config.path;
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| SinkError::Io { what, source }
    };
    let open = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io("cannot open"))
    };
    let mut file = open()?;
    let mut size = file.metadata().map_err(io("cannot stat"))?.len();
    for line in lines {
        let len = line.len() as u64;
        if size > 0 && size.saturating_add(len) > config.max_bytes {
            file.sync_data().map_err(io("cannot sync"))?;
            rotate(path, config.keep)?;
            file = open()?;
            size = 0;
        }
        file.write_all(line.as_bytes())
            .map_err(io("cannot write"))?;
        size = size.saturating_add(len);
    }
    file.sync_data().map_err(io("cannot sync"))
}

/// `PATH.(keep-1)` → `PATH.keep`, ..., `PATH` → `PATH.1`; with `keep` 0 the file is
/// simply removed.
fn rotate(path: &Path, keep: u32) -> Result<(), SinkError> {
    let numbered = |n: u32| -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    };
    let rename = |from: &Path, to: &Path| match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SinkError::Io {
            what: format!("cannot rotate {} to {}", from.display(), to.display()),
            source,
        }),
    };
    if keep == 0 {
        return std::fs::remove_file(path).map_err(|source| SinkError::Io {
            what: format!("cannot remove {}", path.display()),
            source,
        });
    }
    for n in (1..keep).rev() {
        rename(&numbered(n), &numbered(n + 1))?;
    }
    rename(path, &numbered(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(seq: u64, text: &str) -> Line {
        Line {
            seq,
            time: time::OffsetDateTime::UNIX_EPOCH,
            host: "h".into(),
            activity: "daemon",
            syslog_severity: 6,
            text: text.into(),
        }
    }

    #[tokio::test]
    async fn rotates_by_size_and_keeps_only_the_newest_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let mut sink = FileSink::new(FileConfig {
            name: "f".into(),
            format: crate::export::Format::Jsonl,
            path: path.clone(),
            max_bytes: 4096,
            keep: 2,
        });
        let text = "x".repeat(1500);
        for seq in 1..=10 {
            sink.send(&[line(seq, &format!("{seq:02}{text}"))])
                .await
                .expect("send");
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let current = read(&path);
        let first = read(&dir.path().join("events.jsonl.1"));
        let second = read(&dir.path().join("events.jsonl.2"));
        assert!(!dir.path().join("events.jsonl.3").exists());
        // Two 1503-byte lines fit under 4096 bytes, three do not.
        assert_eq!(current.lines().count(), 2);
        assert!(current.starts_with("09"), "{}", &current[..2]);
        assert!(first.starts_with("07") && second.starts_with("05"));
        for file in [&current, &first, &second] {
            assert!(file.len() <= 4096);
        }
        // One page larger than max_bytes is split across files too.
        let page: Vec<Line> = (11..=14)
            .map(|seq| line(seq, &format!("{seq:02}{text}")))
            .collect();
        sink.send(&page).await.expect("send");
        assert_eq!(read(&path).lines().count(), 2);
        assert!(read(&path).starts_with("13"));
        assert!(read(&dir.path().join("events.jsonl.1")).starts_with("11"));
    }
}
