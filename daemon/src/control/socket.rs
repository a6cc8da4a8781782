//! The control socket file: created where the configuration says, owned root:ADMIN with
//! mode 0660, so that the filesystem already keeps out everyone the authorizer would
//! refuse (the authorizer still decides; the mode is a second wall).

use std::{
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
};

use tokio::net::UnixListener;
use tracing::{info, warn};

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to replace {path}: it exists and is not a socket")]
    NotASocket { path: PathBuf },
    #[error("another process is already serving the control socket {path}")]
    InUse { path: PathBuf },
    #[error("cannot remove the stale control socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind the control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set owner and mode of the control socket {path}: {source}")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("admin group {name:?}: {message}")]
    AdminGroup { name: String, message: String },
}

/// The gid of the configured admin group.
pub fn resolve_admin_group(name: &str) -> Result<u32, ControlError> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(ControlError::AdminGroup {
            name: name.to_owned(),
            message: "no such group".into(),
        }),
        Err(errno) => Err(ControlError::AdminGroup {
            name: name.to_owned(),
            message: errno.desc().to_owned(),
        }),
    }
}

/// Binds the control socket at `path`, owned by root and `admin_gid` (root's group when
/// `None`), mode 0660.
///
/// Creates a missing parent directory (0755). A leftover socket from an earlier run is
/// replaced, unless a process still answers on it; anything else at `path` is an error.
/// Must be called inside a tokio runtime.
pub fn bind_control_socket(
    path: &Path,
    admin_gid: Option<u32>,
) -> Result<UnixListener, ControlError> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|source| ControlError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
    }
    remove_stale_socket(path)?;

    let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
        path: path.to_owned(),
        source,
    })?;
    // Between bind and chmod the socket has the umask's mode; peers that slip in are
    // still checked by the authorizer.
    let permissions = || -> std::io::Result<()> {
        std::os::unix::fs::chown(path, Some(0), Some(admin_gid.unwrap_or(0)))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
    };
    permissions().map_err(|source| ControlError::Permissions {
        path: path.to_owned(),
        source,
    })?;
    info!(path = %path.display(), gid = admin_gid.unwrap_or(0), "control socket bound");
    Ok(listener)
}

fn remove_stale_socket(path: &Path) -> Result<(), ControlError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Inspect {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
        });
    }
    // A socket someone still accepts on belongs to a running daemon: never steal it.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ControlError::InUse {
            path: path.to_owned(),
        });
    }
    warn!(path = %path.display(), "removing stale control socket");
    std::fs::remove_file(path).map_err(|source| ControlError::RemoveStale {
        path: path.to_owned(),
        source,
    })
}
