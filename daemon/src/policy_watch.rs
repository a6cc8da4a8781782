//! Watches the policy directory and asks for a reload when a policy file changes.
//!
//! inotify (through nix) on the directory itself: files written in place
//! (`IN_CLOSE_WRITE`), renamed in or out (editors' and config managers' atomic
//! replaces, including a swapped `..data` symlink), created, deleted or re-permissioned.
//! Editors write in several steps, so events are debounced: the reload runs once the
//! directory has been quiet for [`DEBOUNCE`]. A change to a file outside the directory
//! that a symlink points to is not seen; SIGHUP covers it.

use std::{
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// How long the directory must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Why the watch could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch the policy directory {dir}: {source}")]
pub struct WatchError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

/// The inotify instance, as tokio's reactor needs it.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// A watch on one policy directory.
pub struct PolicyWatch {
    inotify: AsyncFd<InotifyFd>,
}

impl PolicyWatch {
    /// Starts watching `dir`. Must run inside the tokio runtime.
    pub fn new(dir: &Path) -> Result<Self, WatchError> {
        let error = |source: std::io::Error| WatchError {
            dir: dir.to_owned(),
            source,
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|errno| error(errno.into()))?;
        inotify
            .add_watch(
                dir,
                AddWatchFlags::IN_CLOSE_WRITE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_ATTRIB
                    | AddWatchFlags::IN_ONLYDIR,
            )
            .map_err(|errno| error(errno.into()))?;
        // SAFETY: the AsyncFd owns the Inotify, so its fd stays open while registered.
        let inotify = unsafe {
            AsyncFd::register_with_interest(InotifyFd(inotify), tokio::io::Interest::READABLE)
        }
        .map_err(|registration| error(registration.into_parts().1))?;
        Ok(Self { inotify })
    }

    /// Waits for a change to the directory, then for [`DEBOUNCE`] of quiet.
    pub async fn changed(&self) -> std::io::Result<()> {
        self.next_events().await?;
        loop {
            tokio::select! {
                events = self.next_events() => events?,
                () = tokio::time::sleep(DEBOUNCE) => return Ok(()),
            }
        }
    }

    /// Waits for and drains at least one batch of events.
    async fn next_events(&self) -> std::io::Result<()> {
        loop {
            let mut ready = self.inotify.readable().await?;
            match ready.get_inner().0.read_events() {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}
