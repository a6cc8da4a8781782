//! Watches the policy directory and asks for a reload when a policy file changes.
//!
//! inotify (through nix) on the directory itself: files written in place
//! (`IN_CLOSE_WRITE`), renamed in or out (editors' and config managers' atomic
//! replaces, including a swapped `..data` symlink), created, deleted or re-permissioned.
//! Editors write in several steps, so events are debounced: the reload runs once the
//! directory has been quiet for [`DEBOUNCE`]. A change to a file outside the directory
//! that a symlink points to is not seen; SIGHUP covers it. When the directory itself is
//! removed or renamed the watch is lost; [`run`] sets it up again once the directory is
//! back and reloads then, since changes may have been missed meanwhile.

use std::{
    os::fd::{AsFd as _, AsRawFd, RawFd},
    path::{Path, PathBuf},
    time::Duration,
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::io::unix::AsyncFd;

/// How long the directory must be quiet before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// How often to try to watch again a directory that cannot be watched.
const RETRY: Duration = Duration::from_secs(1);

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
                    | AddWatchFlags::IN_DELETE_SELF
                    | AddWatchFlags::IN_MOVE_SELF
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
                Ok(events) => {
                    let lost = AddWatchFlags::IN_IGNORED
                        | AddWatchFlags::IN_DELETE_SELF
                        | AddWatchFlags::IN_MOVE_SELF;
                    if events.iter().any(|event| event.mask.intersects(lost)) {
                        return Err(std::io::Error::other(
                            "the policy directory was removed or renamed",
                        ));
                    }
                    return Ok(());
                }
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(errno) => return Err(errno.into()),
            }
        }
    }
}

/// Watches `dir` for the daemon's lifetime and calls `reload` after each change.
pub async fn run(dir: PathBuf, reload: impl Fn()) {
    let mut missed = false;
    loop {
        let watch = match PolicyWatch::new(&dir) {
            Ok(watch) => watch,
            Err(error) => {
                if !missed {
                    tracing::error!(%error, "policy files are not watched (SIGHUP reloads); retrying");
                }
                missed = true;
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if missed {
            tracing::info!(dir = %dir.display(), "policy directory watched again");
            reload();
        }
        loop {
            match watch.changed().await {
                Ok(()) => reload(),
                Err(error) => {
                    tracing::warn!(%error, "policy directory watch lost; setting it up again");
                    missed = true;
                    break;
                }
            }
        }
    }
}
