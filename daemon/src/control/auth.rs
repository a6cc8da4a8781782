//! Who may use the control API.
//!
//! The rule: root, or a member of the configured admin group, and in either case never
//! a process inside the managed cgroup root. The last part matters because agents may
//! well run as root; the control API can approve their own connections, so reaching it
//! from inside the sandbox would be an escape.
//!
//! Identity comes from `SO_PEERCRED` (fixed by the kernel at `connect()`), membership
//! from `/proc/PID`, read when the connection is accepted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::debug;

/// The authenticated (or refused) peer of a control connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub uid: u32,
    pub gid: u32,
    /// `None` when the kernel could not tell (a peer in another pid namespace).
    pub pid: Option<u32>,
    /// The user name of `uid`, when it resolves.
    pub user: Option<String>,
    /// The peer's cgroup v2 path relative to the cgroup2 mount, when readable.
    pub cgroup: Option<String>,
    /// For requests from the web console by someone signed in through an identity
    /// provider: who the provider says they are (`uid` is then not a person's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Box<crate::approvals::ApproverIdentity>>,
}

impl PeerInfo {
    /// `user` when known, else `uid N`, for log lines and messages.
    pub fn display_name(&self) -> String {
        match &self.user {
            Some(user) => format!("{user} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// Why a peer may not use the control API.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub peer: PeerInfo,
    pub reason: String,
}

/// Decides whether a connecting peer may use the control API.
#[derive(Clone, Debug)]
pub struct Authorizer {
    /// The managed root relative to the cgroup2 mount, always starting with `/`.
    managed_root: PathBuf,
    admin_gid: Option<u32>,
    proc_root: PathBuf,
}

impl Authorizer {
    /// `managed_root` is the managed cgroup root as `/proc/PID/cgroup` shows it: relative
    /// to the cgroup2 mount (`/sluice` for `/sys/fs/cgroup/sluice`; the leading `/` is
    /// optional). `admin_gid` is the admin group, if one is configured.
    pub fn new(managed_root: impl AsRef<Path>, admin_gid: Option<u32>) -> Self {
        Self {
            managed_root: Path::new("/").join(managed_root.as_ref()),
            admin_gid,
            proc_root: PathBuf::from("/proc"),
        }
    }

    /// The managed root as compared against peers' cgroups.
    pub fn managed_root(&self) -> &Path {
        &self.managed_root
    }

    pub fn admin_gid(&self) -> Option<u32> {
        self.admin_gid
    }

    /// Decides for a peer with these `SO_PEERCRED` credentials.
    ///
    /// Blocking: reads `/proc` and may resolve the user name through NSS.
    pub fn authorize(&self, uid: u32, gid: u32, pid: Option<i32>) -> Result<PeerInfo, Refusal> {
        let mut peer = PeerInfo {
            uid,
            gid,
            pid: pid
                .and_then(|pid| u32::try_from(pid).ok())
                .filter(|&pid| pid > 0),
            user: user_name(uid),
            cgroup: None,
            identity: None,
        };
        let refuse = |peer: PeerInfo, reason: String| Err(Refusal { peer, reason });

        // Without a pid there is no way to tell whether the peer is an agent.
        let Some(pid) = peer.pid else {
            return refuse(
                peer,
                "the kernel did not report the peer's process id, so its cgroup cannot be checked"
                    .into(),
            );
        };
        let process = self.proc_root.join(pid.to_string());
        let cgroup_file = process.join("cgroup");
        match std::fs::read_to_string(&cgroup_file) {
            Ok(text) => peer.cgroup = cgroup_v2_path(&text).map(str::to_owned),
            Err(error) => {
                let reason = format!("cannot read {}: {error}", cgroup_file.display());
                return refuse(peer, reason);
            }
        }
        let Some(cgroup) = peer.cgroup.clone() else {
            let reason = format!("process {pid} has no cgroup v2 membership");
            return refuse(peer, reason);
        };
        if Path::new(&cgroup).starts_with(&self.managed_root) {
            let reason = format!(
                "process {pid} runs in cgroup {cgroup}, inside the managed cgroup root {}: \
                 agents may not use the control API",
                self.managed_root.display()
            );
            return refuse(peer, reason);
        }

        if uid == 0 {
            return Ok(peer);
        }
        let Some(admin_gid) = self.admin_gid else {
            let reason = format!(
                "{} is not root and no admin group is configured",
                peer.display_name()
            );
            return refuse(peer, reason);
        };
        if gid == admin_gid || self.in_supplementary_groups(&process, &peer, admin_gid) {
            return Ok(peer);
        }
        let reason = format!(
            "{} is neither root nor a member of the admin group (gid {admin_gid})",
            peer.display_name()
        );
        refuse(peer, reason)
    }

    /// The process's own supplementary groups are exact (they are what the kernel
    /// checks); the group database is the fallback when the process is already gone.
    fn in_supplementary_groups(&self, process: &Path, peer: &PeerInfo, admin_gid: u32) -> bool {
        let status = process.join("status");
        match std::fs::read_to_string(&status) {
            Ok(text) => {
                if let Some(groups) = supplementary_groups(&text) {
                    return groups.contains(&admin_gid);
                }
                debug!(path = %status.display(), "no Groups: line");
            }
            Err(error) => debug!(path = %status.display(), %error, "cannot read"),
        }
        let Some(user) = peer.user.as_deref() else {
            return false;
        };
        let Ok(user) = std::ffi::CString::new(user) else {
            return false;
        };
        nix::unistd::getgrouplist(&user, nix::unistd::Gid::from_raw(peer.gid))
            .map(|groups| groups.iter().any(|group| group.as_raw() == admin_gid))
            .unwrap_or(false)
    }
}

fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|user| user.name)
}

/// The path on the `0::` line of `/proc/PID/cgroup`.
pub(crate) fn cgroup_v2_path(text: &str) -> Option<&str> {
    text.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The gids on the `Groups:` line of `/proc/PID/status`.
pub(crate) fn supplementary_groups(text: &str) -> Option<Vec<u32>> {
    let line = text.lines().find_map(|line| line.strip_prefix("Groups:"))?;
    Some(
        line.split_whitespace()
            .filter_map(|gid| gid.parse().ok())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v2_line_is_found_among_v1_lines() {
        let text = "4:memory:/x\n1:cpu:/\n0::/sluice/agent-a\n";
        assert_eq!(cgroup_v2_path(text), Some("/sluice/agent-a"));
        assert_eq!(cgroup_v2_path("4:memory:/x\n"), None);
    }

    #[test]
    fn groups_line_parses_empty_and_full() {
        assert_eq!(
            supplementary_groups("Uid:\t0\nGroups:\t4 24 27 \nNgid:\t0\n"),
            Some(vec![4, 24, 27])
        );
        assert_eq!(supplementary_groups("Groups:\t\n"), Some(vec![]));
        assert_eq!(supplementary_groups("Uid:\t0\n"), None);
    }

    #[test]
    fn managed_root_is_compared_by_components() {
        let authorizer = Authorizer::new("sluice", None);
        assert_eq!(authorizer.managed_root(), Path::new("/sluice"));
        assert!(Path::new("/sluice/agent").starts_with(authorizer.managed_root()));
        assert!(!Path::new("/sluice-other/agent").starts_with(authorizer.managed_root()));
    }

    #[test]
    fn this_process_as_root_is_allowed_and_named() {
        let authorizer = Authorizer::new("/sluice-test-not-here", None);
        let pid = i32::try_from(std::process::id()).expect("pid fits");
        let peer = authorizer.authorize(0, 0, Some(pid)).expect("root allowed");
        assert_eq!(peer.user.as_deref(), Some("root"));
        assert!(peer.cgroup.is_some());
    }

    #[test]
    fn unknown_pid_is_refused() {
        let authorizer = Authorizer::new("/sluice", None);
        let refusal = authorizer.authorize(0, 0, None).expect_err("no pid");
        assert!(refusal.reason.contains("process id"), "{}", refusal.reason);
    }

    #[test]
    fn non_root_needs_the_admin_group() {
        let pid = i32::try_from(std::process::id()).expect("pid fits");
        let refusal = Authorizer::new("/sluice-test-not-here", None)
            .authorize(65534, 65534, Some(pid))
            .expect_err("no admin group");
        assert!(
            refusal.reason.contains("no admin group"),
            "{}",
            refusal.reason
        );
        let refusal = Authorizer::new("/sluice-test-not-here", Some(4242))
            .authorize(65534, 65534, Some(pid))
            .expect_err("not a member");
        assert!(refusal.reason.contains("gid 4242"), "{}", refusal.reason);
        Authorizer::new("/sluice-test-not-here", Some(65534))
            .authorize(65534, 65534, Some(pid))
            .expect("primary group is the admin group");
    }
}
