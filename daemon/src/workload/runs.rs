//! Verified identities bound to agent runs.
//!
//! `sluice run --identity` asks the daemon (over the control socket, before the agent
//! starts) to verify its token; the daemon then makes the run its own cgroup below the
//! agent's (`AGENT/run-N`), binds the identity to that cgroup's id, and the launcher
//! moves itself into it and execs the agent. Every connection from that cgroup (or below)
//! carries the identity. The binding lasts until the run's cgroup is empty, not until the
//! token expires (GitHub's live five minutes), and is persisted so that a daemon restart
//! keeps it.

use std::{
    collections::HashMap,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use super::Verified;

/// How long a run cgroup may stay empty after binding before the launcher is presumed
/// gone (it moves itself in right after the daemon answers).
const ENTER_GRACE: Duration = Duration::from_secs(60);
/// How often run cgroups are checked for having emptied.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// One bound run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Binding {
    /// The run cgroup's id (its directory's inode).
    pub cgroup_id: u64,
    /// The run cgroup's absolute directory.
    pub dir: PathBuf,
    /// The run cgroup as `/proc/PID/cgroup` spells it (`/sluice/deployer/run-…`).
    pub cgroup_path: String,
    pub agent: String,
    pub identity: Verified,
    /// Seconds since the epoch when it was bound.
    pub bound_at: u64,
    /// Whether a process has been seen in it.
    #[serde(default)]
    pub populated: bool,
}

static INSTALLED: std::sync::OnceLock<Arc<Runs>> = std::sync::OnceLock::new();

/// Makes `runs` the daemon's bound runs (once; later calls are ignored).
pub fn install(runs: Arc<Runs>) {
    let _ = INSTALLED.set(runs);
}

/// The daemon's bound runs, when identity is set up (always, in the daemon).
pub fn installed() -> Option<&'static Arc<Runs>> {
    INSTALLED.get()
}

/// Every bound run, by cgroup id.
pub struct Runs {
    bindings: RwLock<HashMap<u64, Arc<Binding>>>,
    persist_to: Option<PathBuf>,
}

/// Why a run could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot create the run cgroup {}: {source}", dir.display())]
    Create {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl Runs {
    /// Bindings persisted under `state_dir` are restored (those whose cgroup still exists).
    pub fn new(state_dir: Option<&Path>) -> Self {
        let persist_to = state_dir.map(|dir| dir.join("identity").join("runs.json"));
        let restored: Vec<Binding> = persist_to
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|text| serde_json::from_slice(&text).ok())
            .unwrap_or_default();
        let bindings = restored
            .into_iter()
            .filter(|binding| {
                std::fs::metadata(&binding.dir).is_ok_and(|meta| meta.ino() == binding.cgroup_id)
            })
            .map(|binding| (binding.cgroup_id, Arc::new(binding)))
            .collect();
        Self {
            bindings: RwLock::new(bindings),
            persist_to,
        }
    }

    /// Creates a run cgroup in `agent_dir` and binds `identity` to it; returns its directory.
    /// `agent_cgroup` is the agent's cgroup as `/proc/PID/cgroup` spells it.
    pub fn bind(
        &self,
        agent: &str,
        agent_dir: &Path,
        agent_cgroup: &str,
        identity: Verified,
    ) -> Result<Arc<Binding>, RunError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut attempt = 0u32;
        let dir = loop {
            let dir = agent_dir.join(format!(
                "run-{}-{}",
                now.as_millis(),
                rand::random::<u16>().wrapping_add(attempt as u16)
            ));
            match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
                Ok(()) => break dir,
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(source) => return Err(RunError::Create { dir, source }),
            }
        };
        let cgroup_id = std::fs::metadata(&dir)
            .map_err(|source| RunError::Create {
                dir: dir.clone(),
                source,
            })?
            .ino();
        let run_name = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let binding = Arc::new(Binding {
            cgroup_id,
            cgroup_path: format!("{}/{run_name}", agent_cgroup.trim_end_matches('/')),
            dir,
            agent: agent.to_owned(),
            identity,
            bound_at: now.as_secs(),
            populated: false,
        });
        self.write().insert(cgroup_id, Arc::clone(&binding));
        self.persist();
        Ok(binding)
    }

    /// The identity bound to the run whose cgroup is `cgroup_id`, or that contains
    /// `cgroup_path` (as `/proc/PID/cgroup` spells it, for processes in a cgroup below).
    pub fn lookup(&self, cgroup_id: u64, cgroup_path: Option<&str>) -> Option<Arc<Binding>> {
        let bindings = self.read();
        if let Some(binding) = bindings.get(&cgroup_id) {
            return Some(Arc::clone(binding));
        }
        drop(bindings);
        self.lookup_path(cgroup_path?)
    }

    /// The identity bound to the run whose cgroup is `path` or contains it.
    pub fn lookup_path(&self, path: &str) -> Option<Arc<Binding>> {
        self.read()
            .values()
            .find(|binding| {
                path.strip_prefix(binding.cgroup_path.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .cloned()
    }

    /// Ends the binding of run `cgroup_id` now and removes its (still empty) cgroup.
    pub fn unbind(&self, cgroup_id: u64) {
        if let Some(binding) = self.write().remove(&cgroup_id) {
            let _ = std::fs::remove_dir(&binding.dir);
            self.persist();
        }
    }

    /// How many runs are bound.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ends every binding whose run is over (its cgroup emptied, or never entered
    /// within [`ENTER_GRACE`]) and removes the run's cgroup.
    pub fn sweep(&self) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut changed = false;
        let current: Vec<Arc<Binding>> = self.read().values().cloned().collect();
        for binding in current {
            let populated = std::fs::read_to_string(binding.dir.join("cgroup.events"))
                .ok()
                .map(|events| events.lines().any(|line| line == "populated 1"));
            let ended = match populated {
                None => true,
                Some(true) => {
                    if !binding.populated {
                        let mut seen = (*binding).clone();
                        seen.populated = true;
                        self.write().insert(seen.cgroup_id, Arc::new(seen));
                        changed = true;
                    }
                    false
                }
                Some(false) => {
                    binding.populated
                        || now.saturating_sub(binding.bound_at) > ENTER_GRACE.as_secs()
                }
            };
            if ended {
                self.write().remove(&binding.cgroup_id);
                changed = true;
                let _ = std::fs::remove_dir(&binding.dir);
                tracing::info!(
                    agent = %binding.agent,
                    run = %binding.dir.display(),
                    identity = %binding.identity.record.summary(),
                    "run ended; identity unbound"
                );
            }
        }
        if changed {
            self.persist();
        }
    }

    /// Sweeps every [`WATCH_INTERVAL`] for as long as the daemon runs.
    pub fn spawn_watch(self: &Arc<Self>) {
        let runs = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_INTERVAL);
            loop {
                tick.tick().await;
                let runs = Arc::clone(&runs);
                let _ = tokio::task::spawn_blocking(move || runs.sweep()).await;
            }
        });
    }

    fn persist(&self) {
        let Some(path) = &self.persist_to else {
            return;
        };
        let all: Vec<Binding> = self.read().values().map(|b| (**b).clone()).collect();
        if let Err(error) = super::jwks::persist(path, &all) {
            tracing::warn!(path = %path.display(), %error, "cannot persist the run bindings");
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Arc<Binding>>> {
        self.bindings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<u64, Arc<Binding>>> {
        self.bindings
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The identity bound to the run process `pid` is in, if any (and if it still runs).
pub fn identity_of_pid(pid: u32) -> Option<super::RunIdentity> {
    let path = crate::cgroup::cgroup_path_of(pid)?;
    installed()?
        .lookup_path(&path)
        .map(|binding| binding.identity.record.clone())
}
