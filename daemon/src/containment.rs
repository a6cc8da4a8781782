//! Which ways out of the managed cgroup this kernel closes, and how.
//!
//! The promise is that an agent reaches nothing except through the daemon. Most of it
//! rests on programs every supported kernel has (`bpf::PROGRAMS`, which the daemon
//! refuses to run without); the rest needs the BPF LSM, which a kernel may lack or not
//! have active. This module attaches the LSM programs where they can run, writes the
//! managed scope they key on, and turns what it found into the matrix that
//! `sluice status` prints: each way out, whether it is closed here, and why not.
//! Missing features are reported, never silently skipped.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use aya::{
    Btf, Ebpf,
    maps::{Array, MapData, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSockAddr, Lsm, links::FdLink},
};
use serde::{Deserialize, Serialize};
use sluice_common::{ManagedScope, map_names};

use crate::bpf::{BpfError, attached_programs};

/// The BPF LSM programs, each with its hook. They are global, keyed on the managed
/// scope, and optional: without the bpf LSM the rows they close say so.
pub const LSM_PROGRAMS: &[(&str, &str)] = &[
    ("sluice_lsm_socket_create", "socket_create"),
    ("sluice_lsm_socket_connect", "socket_connect"),
    ("sluice_lsm_socket_sendmsg", "socket_sendmsg"),
];

/// Hooks attached to the cgroup2 root, so that they also run for sockets created outside
/// the managed cgroup; they refuse only what a managed task does with such a socket.
pub const ROOT_PROGRAMS: &[&str] = &[
    "sluice_foreign_connect4",
    "sluice_foreign_connect6",
    "sluice_foreign_sendmsg4",
    "sluice_foreign_sendmsg6",
];

/// `LSM_ID_BPF` of the `lsm_list_modules` syscall (include/uapi/linux/lsm.h).
const LSM_ID_BPF: u64 = 109;
/// `lsm_list_modules` (6.8+): the same number on every architecture's generic table.
const SYS_LSM_LIST_MODULES: libc::c_long = 461;

/// What the daemon found out about the kernel's optional features at start.
#[derive(Clone, Debug, Default)]
pub struct KernelSupport {
    /// `None` when the LSM programs are attached; otherwise why not.
    pub lsm_missing: Option<String>,
    /// `None` when the cgroup2-root hooks are attached; otherwise why not.
    pub root_hooks_missing: Option<String>,
    /// Whether the kernel has the unix sock_addr hooks (6.7+).
    pub unix_hooks_in_kernel: bool,
}

/// One row of the matrix, as `GET /v1/status` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnforcementRow {
    /// A stable identifier: `tcp`, `tcp_fast_open`, `udp`, `quic`, `raw_socket`,
    /// `packet_socket`, `netns`, `foreign_socket`, `foreign_connected_socket`,
    /// `unix_relay`, `io_uring`,
    /// `leave_cgroup`, `daemon_endpoints`, `backstop`, `daemon_down`.
    pub way_out: String,
    /// What happens to an agent that tries it.
    pub expected: String,
    /// Whether this kernel and this daemon enforce it right now.
    pub enforced: bool,
    /// The kernel mechanism, with its minimum kernel.
    pub mechanism: String,
    /// Why it is not enforced, or a limit worth knowing; empty otherwise.
    pub detail: String,
}

/// Writes the managed scope (the root's cgroup id and depth) for the global programs.
pub fn write_scope(ebpf: &mut Ebpf, cgroup: &Path) -> Result<(), BpfError> {
    let metadata = fs::metadata(cgroup).map_err(|source| BpfError::Cgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    let mount = crate::cgroup::cgroup2_mount().map_err(|error| BpfError::Cgroup {
        path: cgroup.to_owned(),
        source: std::io::Error::other(error.to_string()),
    })?;
    let level = cgroup
        .strip_prefix(&mount)
        .map(|relative| relative.components().count())
        .unwrap_or(0);
    if level == 0 {
        // The global programs would then manage every task on the machine.
        return Err(BpfError::Cgroup {
            path: cgroup.to_owned(),
            source: std::io::Error::other("the managed root must be below the cgroup2 mount"),
        });
    }
    let scope = ManagedScope {
        cgroup_id: metadata.ino(),
        level: u32::try_from(level).unwrap_or(u32::MAX),
        enabled: 1,
    };
    let map = ebpf
        .map_mut(map_names::SCOPE)
        .ok_or(BpfError::MissingMap("SLUICE_SCOPE"))?;
    let mut array: Array<&mut MapData, ManagedScope> =
        Array::try_from(map).map_err(|source| BpfError::Map {
            name: "SLUICE_SCOPE",
            source,
        })?;
    array.set(0, scope, 0).map_err(|source| BpfError::Map {
        name: "SLUICE_SCOPE",
        source,
    })
}

/// Loads, attaches and pins the optional programs: the cgroup2-root hooks, and the LSM
/// programs if the bpf LSM is active. Returns what the kernel supports; a failure is
/// reported there and logged, never fatal.
pub fn attach_optional_programs(
    ebpf: &mut Ebpf,
    links_dir: &Path,
    generation: u128,
) -> KernelSupport {
    let root_hooks_missing = attach_root_programs(ebpf, links_dir, generation).err();
    if let Some(why) = &root_hooks_missing {
        tracing::warn!(
            reason = %why,
            "NOT ENFORCED: sockets passed in from outside the cgroup; see `sluice status`"
        );
    }
    let lsm_missing = match bpf_lsm_active() {
        Ok(true) => attach_all_lsm(ebpf, links_dir, generation).err(),
        Ok(false) => Some(
            "the bpf LSM is not active on this kernel (it needs CONFIG_BPF_LSM and `bpf` in \
             the lsm= boot parameter)"
                .to_owned(),
        ),
        Err(why) => Some(format!("cannot tell whether the bpf LSM is active: {why}")),
    };
    if let Some(why) = &lsm_missing {
        tracing::warn!(
            reason = %why,
            "NOT ENFORCED: packet sockets and sends on sockets connected outside the cgroup; see `sluice status`"
        );
    }
    KernelSupport {
        lsm_missing,
        root_hooks_missing,
        unix_hooks_in_kernel: kernel_at_least(6, 7),
    }
}

fn attach_root_programs(ebpf: &mut Ebpf, links_dir: &Path, generation: u128) -> Result<(), String> {
    let mount = crate::cgroup::cgroup2_mount().map_err(|error| error.to_string())?;
    let root = fs::File::open(&mount)
        .map_err(|error| format!("cannot open the cgroup2 root {}: {error}", mount.display()))?;
    for &name in ROOT_PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} is missing from the eBPF object"))?;
        let program: &mut CgroupSockAddr = program
            .try_into()
            .map_err(|error| format!("{name}: {error}"))?;
        program
            .load()
            .map_err(|error| format!("{name}: loading: {}", tidy(&error.to_string())))?;
        let id = program
            .attach(&root, CgroupAttachMode::Single)
            .map_err(|error| format!("{name}: attaching: {error}"))?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|error| format!("{name}: {error}"))?
            .try_into()
            .map_err(|error| format!("{name}: not a pinnable link: {error}"))?;
        pin(link, links_dir, name, generation)?;
    }
    Ok(())
}

/// A load error without aya's empty "Verifier output:" tail.
fn tidy(error: &str) -> String {
    let trimmed = error.trim_end();
    trimmed
        .strip_suffix("Verifier output:")
        .map_or(trimmed, |head| head.trim_end().trim_end_matches('.'))
        .to_owned()
}

fn pin(link: FdLink, links_dir: &Path, name: &str, generation: u128) -> Result<(), String> {
    // bpffs refuses names with a dot.
    let pin_path = links_dir.join(format!("{name}-{generation}"));
    link.pin(&pin_path)
        .map(drop)
        .map_err(|error| format!("{name}: pinning {}: {error}", pin_path.display()))
}

fn attach_all_lsm(ebpf: &mut Ebpf, links_dir: &Path, generation: u128) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|error| format!("no kernel BTF: {error}"))?;
    for &(name, hook) in LSM_PROGRAMS {
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} is missing from the eBPF object"))?;
        let program: &mut Lsm = program
            .try_into()
            .map_err(|error| format!("{name}: {error}"))?;
        program
            .load(hook, &btf)
            .map_err(|error| format!("{name}: loading: {}", tidy(&error.to_string())))?;
        let id = program
            .attach()
            .map_err(|error| format!("{name}: attaching: {error}"))?;
        let link: FdLink = program
            .take_link(id)
            .map_err(|error| format!("{name}: {error}"))?
            .into();
        pin(link, links_dir, name, generation)?;
    }
    Ok(())
}

/// Whether the bpf LSM is in the kernel's active LSM list.
fn bpf_lsm_active() -> Result<bool, String> {
    let mut ids = [0u64; 32];
    let mut size = u32::try_from(std::mem::size_of_val(&ids)).unwrap_or(0);
    // SAFETY: ids and size are valid for writes of the sizes given.
    let count =
        unsafe { libc::syscall(SYS_LSM_LIST_MODULES, ids.as_mut_ptr(), &raw mut size, 0u32) };
    if let Ok(count) = usize::try_from(count) {
        return Ok(ids.iter().take(count).any(|&id| id == LSM_ID_BPF));
    }
    // Before 6.8 only securityfs tells.
    match fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(list) => Ok(list.trim().split(',').any(|lsm| lsm == "bpf")),
        Err(error) => Err(format!(
            "lsm_list_modules failed ({}) and /sys/kernel/security/lsm is unreadable ({error})",
            std::io::Error::last_os_error()
        )),
    }
}

fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(uname) = nix::sys::utsname::uname() else {
        return false;
    };
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse::<u32>().ok());
    let (Some(have_major), Some(have_minor)) = (parts.next(), parts.next()) else {
        return false;
    };
    (have_major, have_minor) >= (major, minor)
}

/// Packets the egress backstop dropped since the maps were created.
pub fn backstop_drops(bpffs_dir: &Path) -> Option<u64> {
    let map = MapData::from_pin(bpffs_dir.join("maps").join(map_names::BACKSTOP_DROPS)).ok()?;
    let drops: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(aya::maps::Map::PerCpuArray(map)).ok()?;
    let per_cpu = drops.get(&0, 0).ok()?;
    Some(per_cpu.iter().sum())
}

/// Which optional programs (cgroup2-root hooks, LSM) have a pinned, so attached, link
/// under `bpffs_dir`.
pub fn attached_optional_programs(bpffs_dir: &Path) -> Vec<(String, bool)> {
    let links: Vec<String> = fs::read_dir(bpffs_dir.join("links"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ROOT_PROGRAMS
        .iter()
        .copied()
        .chain(LSM_PROGRAMS.iter().map(|(name, _)| *name))
        .map(|name| {
            let attached = links
                .iter()
                .any(|link| link.rsplit_once('-').is_some_and(|(p, _)| p == name));
            (name.to_owned(), attached)
        })
        .collect()
}

/// The live matrix: what the attached programs and this kernel close right now.
pub fn matrix(
    bpffs_dir: &Path,
    cgroup_root: &Path,
    support: &KernelSupport,
) -> Vec<EnforcementRow> {
    let mut attached: Vec<(String, bool)> = attached_programs(bpffs_dir);
    attached.extend(attached_optional_programs(bpffs_dir));
    let missing = |names: &[&str]| -> Vec<String> {
        names
            .iter()
            .filter(|name| !attached.iter().any(|(n, a)| n == *name && *a))
            .map(|name| (*name).to_owned())
            .collect()
    };
    let row = |way_out: &str, expected: &str, mechanism: &str, needs: &[&str], limit: &str| {
        let not_attached = missing(needs);
        EnforcementRow {
            way_out: way_out.to_owned(),
            expected: expected.to_owned(),
            enforced: not_attached.is_empty(),
            mechanism: mechanism.to_owned(),
            detail: if not_attached.is_empty() {
                limit.to_owned()
            } else {
                format!("not attached: {}", not_attached.join(", "))
            },
        }
    };
    let lsm_row = |way_out: &str, expected: &str, mechanism: &str, needs: &[&str]| {
        let mut r = row(way_out, expected, mechanism, needs, "");
        if let Some(why) = &support.lsm_missing {
            r.enforced = false;
            r.detail = why.clone();
        }
        r
    };
    const CONNECT: &[&str] = &["sluice_connect4", "sluice_connect6", "sluice_skb_egress"];
    const UDP: &[&str] = &[
        "sluice_connect4",
        "sluice_connect6",
        "sluice_sendmsg4",
        "sluice_sendmsg6",
    ];
    vec![
        row(
            "tcp",
            "redirected",
            "cgroup/connect4, connect6 (4.17) rewrite; cgroup_skb/egress files the origin from the SYN (5.2); v4-mapped IPv6 folded to IPv4",
            CONNECT,
            "",
        ),
        row(
            "tcp_fast_open",
            "redirected",
            "cgroup/connect4, connect6: sendto(MSG_FASTOPEN) runs the pre-connect hook",
            CONNECT,
            "",
        ),
        row(
            "udp",
            "refused, except DNS",
            "cgroup/connect4, connect6 (connected), sendmsg4, sendmsg6 (4.18, unconnected)",
            UDP,
            "",
        ),
        row(
            "dns",
            "answered by the daemon's resolver and recorded; the named server is never reached",
            "UDP port 53: cgroup/connect4, connect6, sendmsg4, sendmsg6 rewrite to the resolver, cgroup_skb/egress files the sender, recvmsg4, recvmsg6 restore the source (5.2); TCP port 53 through the redirect listener",
            &[
                "sluice_connect4",
                "sluice_connect6",
                "sluice_sendmsg4",
                "sluice_sendmsg6",
                "sluice_recvmsg4",
                "sluice_recvmsg6",
                "sluice_skb_egress",
            ],
            "",
        ),
        row(
            "quic",
            "refused, so clients fall back to TCP",
            "the UDP hooks: QUIC is UDP",
            UDP,
            "",
        ),
        row(
            "raw_socket",
            "refused",
            "cgroup/sock_create (4.10; 5.11 for its socket marker)",
            &["sluice_sock_create"],
            "",
        ),
        {
            let mut r = lsm_row(
                "packet_socket",
                "refused, and every family but unix, inet, netlink and AF_ALG (AF_VSOCK too)",
                "BPF LSM socket_create keyed by the task's cgroup (5.7, bpf LSM active); \
                 defence in depth: a seccomp filter on agents started by `sluice run`",
                &["sluice_lsm_socket_create"],
            );
            if !r.enforced {
                r.detail = format!("{}; {}", r.detail, seccomp_coverage());
            }
            r
        },
        row(
            "netns",
            "refused",
            "netns cookie check in connect4/6 and sendmsg4/6 (5.7)",
            UDP,
            "",
        ),
        {
            let mut r = row(
                "foreign_socket",
                "refused on connect and on unconnected sends",
                "connect4/6 and sendmsg4/6 attached to the cgroup2 root, keyed by the task's \
                 cgroup, and a socket marker set by cgroup/sock_create (5.11)",
                &[ROOT_PROGRAMS, &["sluice_sock_create"]].concat(),
                "",
            );
            if let Some(why) = &support.root_hooks_missing {
                r.enforced = false;
                r.detail = why.clone();
            }
            r
        },
        lsm_row(
            "foreign_connected_socket",
            "refused on send",
            "BPF LSM socket_sendmsg keyed by the task's cgroup (5.7, bpf LSM active)",
            &["sluice_lsm_socket_sendmsg"],
        ),
        EnforcementRow {
            way_out: "unix_relay".into(),
            expected: "documented limit".into(),
            enforced: false,
            mechanism: "cgroup/connect_unix, sendmsg_unix (6.7)".into(),
            detail: if support.unix_hooks_in_kernel {
                "this kernel has the unix sock_addr hooks, but aya 0.14 cannot attach them: a \
                 unix socket to a relay outside the cgroup is not mediated"
                    .into()
            } else {
                "this kernel has no unix sock_addr hooks (6.7+): a unix socket to a relay \
                 outside the cgroup is not mediated"
                    .into()
            },
        },
        row(
            "io_uring",
            "redirected",
            "cgroup/connect4, connect6: IORING_OP_CONNECT runs the same hook",
            CONNECT,
            "",
        ),
        leave_cgroup_row(cgroup_root),
        row(
            "daemon_endpoints",
            "refused and recorded",
            "connect4/6 refuse the daemon's ports; the control socket refuses peers in the \
             managed cgroup",
            &["sluice_connect4", "sluice_connect6"],
            "",
        ),
        row(
            "backstop",
            "dropped and counted",
            "cgroup_skb/egress (4.10; 5.8 for its ring buffer)",
            &["sluice_skb_egress"],
            "",
        ),
        row(
            "daemon_down",
            "fail closed",
            "links pinned on bpffs stay attached: connects go to a listener that is not there",
            CONNECT,
            "",
        ),
    ]
}

/// What covers the `packet_socket` row when the LSM program does not run.
fn seccomp_coverage() -> String {
    let io_uring = if kernel_at_least(5, 19) {
        "except sockets created through io_uring (IORING_OP_SOCKET), which seccomp does not see"
    } else {
        "this kernel (before 5.19) has no io_uring socket creation to slip past it"
    };
    format!(
        "agents started by `sluice run` are covered by its seccomp filter (socket and \
         socketpair fail with EAFNOSUPPORT outside unix, inet, netlink and AF_ALG; not with \
         --no-seccomp), {io_uring}; agents placed in the cgroup otherwise are not"
    )
}

/// Leaving needs write access to another cgroup's `cgroup.procs`: the tree must be
/// root-owned and not writable by others.
fn leave_cgroup_row(cgroup_root: &Path) -> EnforcementRow {
    let detail = match fs::metadata(cgroup_root) {
        Ok(metadata) if metadata.uid() == 0 && metadata.permissions().mode() & 0o022 == 0 => {
            String::new()
        }
        Ok(metadata) => format!(
            "the managed root is owned by uid {} with mode {:o}",
            metadata.uid(),
            metadata.permissions().mode() & 0o7777
        ),
        Err(error) => format!("cannot inspect the managed root: {error}"),
    };
    EnforcementRow {
        way_out: "leave_cgroup".into(),
        expected: "fails for a non-root agent".into(),
        enforced: detail.is_empty(),
        mechanism: "a root-owned cgroup tree: moving needs write access to cgroup.procs".into(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(rows: &'a [EnforcementRow], way_out: &str) -> &'a EnforcementRow {
        rows.iter()
            .find(|r| r.way_out == way_out)
            .unwrap_or_else(|| panic!("no row {way_out}"))
    }

    #[test]
    fn nothing_attached_means_nothing_enforced_and_each_row_says_what_is_missing() {
        let bpffs = tempfile::tempdir().unwrap();
        let rows = matrix(
            bpffs.path(),
            Path::new("/nonexistent"),
            &KernelSupport::default(),
        );
        assert_eq!(rows.len(), 16);
        assert!(rows.iter().all(|r| !r.enforced), "{rows:#?}");
        assert_eq!(
            row(&rows, "raw_socket").detail,
            "not attached: sluice_sock_create"
        );
        assert!(
            row(&rows, "leave_cgroup")
                .detail
                .starts_with("cannot inspect the managed root")
        );
    }

    #[test]
    fn attached_links_enforce_their_rows_and_missing_kernel_features_are_named() {
        let bpffs = tempfile::tempdir().unwrap();
        let links = bpffs.path().join("links");
        fs::create_dir(&links).unwrap();
        let every_program = crate::bpf::PROGRAMS
            .iter()
            .map(|(name, _)| *name)
            .chain(ROOT_PROGRAMS.iter().copied())
            .chain(LSM_PROGRAMS.iter().map(|(name, _)| *name));
        for name in every_program {
            fs::write(links.join(format!("{name}-1")), "").unwrap();
        }
        let managed_root = tempfile::tempdir().unwrap();
        fs::set_permissions(managed_root.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let support = KernelSupport {
            lsm_missing: Some("the bpf LSM is not active".into()),
            root_hooks_missing: None,
            unix_hooks_in_kernel: true,
        };
        let rows = matrix(bpffs.path(), managed_root.path(), &support);
        for enforced in [
            "tcp",
            "udp",
            "dns",
            "raw_socket",
            "foreign_socket",
            "backstop",
        ] {
            assert!(row(&rows, enforced).enforced, "{enforced}: {rows:#?}");
        }
        let foreign = row(&rows, "foreign_connected_socket");
        assert!(!foreign.enforced);
        assert_eq!(foreign.detail, "the bpf LSM is not active");
        let packet = row(&rows, "packet_socket");
        assert!(!packet.enforced);
        assert!(
            packet
                .detail
                .starts_with("the bpf LSM is not active; agents started by `sluice run` are covered by its seccomp filter"),
            "{packet:#?}"
        );
        let unix = row(&rows, "unix_relay");
        assert!(!unix.enforced);
        assert!(unix.detail.contains("aya 0.14 cannot attach them"));
        // Enforced exactly when the directory is root's (it is when tests run as root).
        let root_owned = fs::metadata(managed_root.path()).unwrap().uid() == 0;
        assert_eq!(row(&rows, "leave_cgroup").enforced, root_owned, "{rows:#?}");
        fs::set_permissions(managed_root.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let rows = matrix(bpffs.path(), managed_root.path(), &support);
        assert!(!row(&rows, "leave_cgroup").enforced);
        assert!(row(&rows, "leave_cgroup").detail.contains("mode 777"));
    }

    #[test]
    fn load_errors_lose_an_empty_verifier_tail() {
        assert_eq!(
            tidy(
                "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1). Verifier output: "
            ),
            "the BPF_PROG_LOAD syscall returned Operation not permitted (os error 1)"
        );
        assert_eq!(
            tidy("Verifier output: R1 invalid"),
            "Verifier output: R1 invalid"
        );
    }
}
