//! The managed cgroup: where agents run and where the programs are attached.
//!
//! sluice owns one cgroup v2 directory (the managed root, `sluice` under the cgroup2
//! mount by default). Each agent runs in a child directory named after it, so the agent
//! of a connection is the child cgroup its process was in. The tree is created
//! root-owned, which is what keeps a non-root agent from moving itself out.
//!
//! On a systemd host the managed root is a slice (`sluice.slice`, shipped in
//! `packaging/`), and an agent's child is the slice systemd makes for
//! `Slice=sluice-AGENT.slice` (`-` in the agent's name escaped as `\x2d`, as
//! `systemd-escape` does, so it stays one level). `sluice run` uses the same child, so
//! services and `sluice run` share one naming scheme in one tree.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

/// Errors finding or managing the cgroup tree.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 file system is mounted (looked in /proc/mounts); sluice needs cgroup v2")]
    NoCgroup2,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move process {pid} into {path}: {source}")]
    Enter {
        pid: u32,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "invalid agent name {0:?}: use 1-64 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    InvalidAgentName(String),
    #[error("the managed cgroup root {0} is not inside the cgroup2 mount")]
    OutsideMount(PathBuf),
}

/// Finds the cgroup2 mount point in `/proc/mounts`.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|source| CgroupError::Read {
        path: "/proc/mounts".into(),
        source,
    })?;
    parse_cgroup2_mount(&mounts).ok_or(CgroupError::NoCgroup2)
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_path(target)))
    })
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(path: &str) -> String {
    path.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Checks an agent name: it becomes a directory name and appears in every record.
pub fn validate_agent_name(name: &str) -> Result<(), CgroupError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with("cgroup.")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(CgroupError::InvalidAgentName(name.to_owned()))
    }
}

/// The managed cgroup root, resolved against the cgroup2 mount.
#[derive(Debug)]
pub struct ManagedRoot {
    mount: PathBuf,
    path: PathBuf,
    /// cgroup id (directory inode) → agent name, filled on demand.
    agents_by_id: Mutex<HashMap<u64, String>>,
}

impl ManagedRoot {
    /// Resolves `configured` (relative to the cgroup2 mount, or absolute) without
    /// touching the file system beyond finding the mount.
    pub fn resolve(configured: &Path) -> Result<Self, CgroupError> {
        let mount = cgroup2_mount()?;
        let path = if configured.is_absolute() {
            configured.to_owned()
        } else {
            mount.join(configured)
        };
        if !path.starts_with(&mount) || path == mount {
            return Err(CgroupError::OutsideMount(path));
        }
        Ok(Self {
            mount,
            path,
            agents_by_id: Mutex::new(HashMap::new()),
        })
    }

    /// The absolute path of the managed root.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The managed root as cgroup paths in `/proc/PID/cgroup` spell it (`/sluice`).
    pub fn cgroup_path(&self) -> String {
        let relative = self.path.strip_prefix(&self.mount).unwrap_or(&self.path);
        format!("/{}", relative.display())
    }

    /// `sluice` for a root named `sluice.slice`: agents' children are then slices too.
    fn slice_prefix(&self) -> Option<&str> {
        self.path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_suffix(".slice"))
            .filter(|prefix| !prefix.is_empty())
    }

    /// The name of agent `name`'s directory under the root: the name itself, or under a
    /// slice root `sluice-NAME.slice`.
    pub fn agent_dir_name(&self, name: &str) -> String {
        match self.slice_prefix() {
            Some(prefix) => agent_slice_name(prefix, name),
            None => name.to_owned(),
        }
    }

    /// The agent a child directory of the root belongs to; `None` for a directory that
    /// is no agent's (under a slice root, anything but `PREFIX-AGENT.slice`).
    pub fn agent_of_dir_name(&self, dir_name: &str) -> Option<String> {
        let agent = match self.slice_prefix() {
            Some(prefix) => agent_of_slice_name(prefix, dir_name)?,
            None => dir_name.to_owned(),
        };
        validate_agent_name(&agent).ok()?;
        Some(agent)
    }

    /// Creates the root (root-owned, 0755) if it does not exist yet.
    pub fn ensure(&self) -> Result<(), CgroupError> {
        create_dir(&self.path)
    }

    /// Whether the root directory exists.
    pub fn exists(&self) -> bool {
        self.path.is_dir()
    }

    /// The directory of agent `name`, created if needed.
    pub fn ensure_agent(&self, name: &str) -> Result<PathBuf, CgroupError> {
        validate_agent_name(name)?;
        let dir = self.path.join(self.agent_dir_name(name));
        create_dir(&dir)?;
        Ok(dir)
    }

    /// Moves process `pid` into agent `name`'s cgroup.
    pub fn enter(&self, name: &str, pid: u32) -> Result<(), CgroupError> {
        let dir = self.ensure_agent(name)?;
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Enter {
            pid,
            path: dir,
            source,
        })
    }

    /// The agent whose cgroup (or a cgroup below it) has id `cgroup_id`.
    ///
    /// A cgroup id is the inode number of its directory, so this works even after the
    /// process that connected has exited.
    pub fn agent_for_cgroup_id(&self, cgroup_id: u64) -> Option<String> {
        if let Some(agent) = self.lock_agents().get(&cgroup_id) {
            return Some(agent.clone());
        }
        let mut found = HashMap::new();
        let entries = fs::read_dir(&self.path).ok()?;
        for entry in entries.flatten() {
            let Some(agent) = entry
                .file_name()
                .to_str()
                .and_then(|name| self.agent_of_dir_name(name))
            else {
                continue;
            };
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                index_cgroup_ids(&entry.path(), &agent, &mut found, 0);
            }
        }
        let mut agents = self.lock_agents();
        agents.extend(found);
        agents.get(&cgroup_id).cloned()
    }

    fn lock_agents(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        // A poisoned cache is still a valid cache.
        self.agents_by_id
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `cgroup_path` (as in `/proc/PID/cgroup`) is the managed root or below it.
    pub fn contains_cgroup_path(&self, cgroup_path: &str) -> bool {
        let root = self.cgroup_path();
        cgroup_path == root
            || cgroup_path
                .strip_prefix(&root)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// `PREFIX-AGENT.slice`, with `-` in the agent's name escaped as systemd does
/// (`systemd-escape`): a bare `-` in a slice name means one level deeper.
pub fn agent_slice_name(prefix: &str, agent: &str) -> String {
    format!("{prefix}-{}.slice", agent.replace('-', "\\x2d"))
}

/// The agent named by slice `PREFIX-AGENT.slice`; `None` for any other name, including
/// deeper slices (`PREFIX-a-b.slice` lives below `PREFIX-a.slice`, never here).
pub fn agent_of_slice_name(prefix: &str, slice: &str) -> Option<String> {
    let escaped = slice
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .strip_suffix(".slice")?;
    if escaped.is_empty() || escaped.contains('-') {
        return None;
    }
    Some(escaped.replace("\\x2d", "-"))
}

/// Records the ids of `dir` and its descendants (bounded depth) as belonging to `agent`.
fn index_cgroup_ids(dir: &Path, agent: &str, found: &mut HashMap<u64, String>, depth: usize) {
    const MAX_DEPTH: usize = 16;
    let Ok(metadata) = fs::metadata(dir) else {
        return;
    };
    found.insert(metadata.ino(), agent.to_owned());
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            index_cgroup_ids(&entry.path(), agent, found, depth + 1);
        }
    }
}

fn create_dir(path: &Path) -> Result<(), CgroupError> {
    match fs::DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The cgroup v2 path of `pid` (the `0::` line of `/proc/PID/cgroup`).
pub fn cgroup_path_of(pid: u32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_among_v1_mounts() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            parse_cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }

    #[test]
    fn agent_names_cannot_escape_or_collide_with_control_files() {
        for good in ["ci-bot", "a", "agent_7.prod"] {
            assert!(validate_agent_name(good).is_ok(), "{good}");
        }
        for bad in ["", "..", "../x", "a/b", ".hidden", "cgroup.procs", "a b"] {
            assert!(validate_agent_name(bad).is_err(), "{bad}");
        }
        assert!(validate_agent_name(&"x".repeat(65)).is_err());
    }

    fn root_at(path: &str) -> ManagedRoot {
        ManagedRoot {
            mount: PathBuf::from("/sys/fs/cgroup"),
            path: PathBuf::from(path),
            agents_by_id: Mutex::new(HashMap::new()),
        }
    }

    #[test]
    fn under_a_plain_root_an_agents_directory_is_its_name() {
        let root = root_at("/sys/fs/cgroup/sluice");
        assert_eq!(root.slice_prefix(), None);
        assert_eq!(root.agent_dir_name("ci-bot"), "ci-bot");
        assert_eq!(root.agent_of_dir_name("ci-bot").as_deref(), Some("ci-bot"));
        assert_eq!(root.agent_of_dir_name("cgroup.procs"), None);
    }

    #[test]
    fn under_a_slice_root_agents_are_the_slices_systemd_makes_for_them() {
        let root = root_at("/sys/fs/cgroup/sluice.slice");
        assert_eq!(root.slice_prefix(), Some("sluice"));
        // `Slice=sluice-reporter.slice` in a unit, and `sluice run --agent reporter`.
        assert_eq!(root.agent_dir_name("reporter"), "sluice-reporter.slice");
        assert_eq!(
            root.agent_of_dir_name("sluice-reporter.slice").as_deref(),
            Some("reporter")
        );
        // A `-` in the name is escaped so the slice stays one level below the root.
        assert_eq!(root.agent_dir_name("ci-bot"), r"sluice-ci\x2dbot.slice");
        assert_eq!(
            root.agent_of_dir_name(r"sluice-ci\x2dbot.slice").as_deref(),
            Some("ci-bot")
        );
        for name in ["ci-bot", "a", "agent_7.prod", "x-y-z"] {
            assert_eq!(
                root.agent_of_dir_name(&root.agent_dir_name(name))
                    .as_deref(),
                Some(name)
            );
        }
        // Whatever else systemd or an operator puts there is no agent.
        for other in [
            "sluice.service",
            "reporter",
            "sluice-.slice",
            "other-reporter.slice",
            "sluice-a-b.slice",
            "sluice-reporter.scope",
            r"sluice-..\x2fetc.slice",
        ] {
            assert_eq!(root.agent_of_dir_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_slice_root_names_the_same_agent_for_every_cgroup_below_its_slice() {
        let mount = tempfile::tempdir().unwrap();
        let root_path = mount.path().join("sluice.slice");
        let service = root_path
            .join("sluice-reporter.slice")
            .join("reporter.service");
        std::fs::create_dir_all(&service).unwrap();
        std::fs::create_dir_all(root_path.join("unrelated.scope")).unwrap();
        let root = ManagedRoot {
            mount: mount.path().to_owned(),
            path: root_path.clone(),
            agents_by_id: Mutex::new(HashMap::new()),
        };
        let id = |path: &Path| fs::metadata(path).unwrap().ino();
        assert_eq!(
            root.agent_for_cgroup_id(id(&service)).as_deref(),
            Some("reporter")
        );
        assert_eq!(
            root.agent_for_cgroup_id(id(&root_path.join("unrelated.scope"))),
            None
        );
        // `sluice run --agent reporter` lands in the service's slice.
        assert_eq!(
            root.ensure_agent("reporter").unwrap(),
            root_path.join("sluice-reporter.slice")
        );
    }

    #[test]
    fn managed_root_contains_only_its_own_subtree() {
        let root = ManagedRoot {
            mount: PathBuf::from("/sys/fs/cgroup"),
            path: PathBuf::from("/sys/fs/cgroup/sluice"),
            agents_by_id: Mutex::new(HashMap::new()),
        };
        assert!(root.contains_cgroup_path("/sluice"));
        assert!(root.contains_cgroup_path("/sluice/ci-bot"));
        assert!(!root.contains_cgroup_path("/sluice-other"));
        assert!(!root.contains_cgroup_path("/"));
    }
}
