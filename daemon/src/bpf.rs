//! Loads sluice's eBPF programs, attaches them to the managed cgroup and pins them.
//!
//! The links and maps are pinned on bpffs so that the programs stay attached when the
//! daemon stops or crashes: an agent's connects then go to a listener that is not
//! there and are refused (fail closed). A restarted daemon reuses the pinned maps,
//! attaches fresh links and only then drops the old ones, so there is no moment at
//! which an agent's connect goes out unredirected.
//!
//! The programs themselves and their minimum kernels are documented in
//! `ebpf/sluice-ebpf`.

use std::{
    ffi::CString,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, IterableMap as _, MapData, RingBuf},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSock, CgroupSockAddr, links::FdLink,
    },
};
use sluice_common::{
    AF_INET, AF_INET6, ConnKey, DaemonEndpoint, MAX_DAEMON_ENDPOINTS, Origin, RedirectConfig,
    map_names,
};

use crate::containment::KernelSupport;

/// The programs' object file, built by `build.rs`.
static PROGRAMS_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice"));

/// Every program, as named in the object, with its kind.
pub const PROGRAMS: &[(&str, ProgramKind)] = &[
    ("sluice_connect4", ProgramKind::SockAddr),
    ("sluice_connect6", ProgramKind::SockAddr),
    ("sluice_sendmsg4", ProgramKind::SockAddr),
    ("sluice_sendmsg6", ProgramKind::SockAddr),
    ("sluice_getpeername4", ProgramKind::SockAddr),
    ("sluice_getpeername6", ProgramKind::SockAddr),
    ("sluice_sock_create", ProgramKind::SockCreate),
    ("sluice_skb_egress", ProgramKind::SkbEgress),
    ("sluice_recvmsg4", ProgramKind::SockAddr),
    ("sluice_recvmsg6", ProgramKind::SockAddr),
];

/// The attach families the programs belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    SockAddr,
    /// cgroup/sock_create.
    SockCreate,
    /// cgroup_skb on egress.
    SkbEgress,
}

/// Errors setting up or using the interception.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "this sluice binary was built without its eBPF programs (AYA_BUILD_SKIP); rebuild it normally"
    )]
    NoPrograms,
    #[error("cannot prepare the bpffs directory {path}: {source}")]
    Bpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot mount bpffs at /sys/fs/bpf: {0}")]
    MountBpffs(nix::Error),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("program {name} could not be attached as a pinnable link (kernel 5.7+): {source}")]
    Link {
        name: &'static str,
        source: aya::programs::links::LinkError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("more than {MAX_DAEMON_ENDPOINTS} daemon listeners to protect")]
    TooManyDaemonEndpoints,
    #[error(
        "the daemon listens on {0}, which is not a loopback address: the programs keep agents \
         off the daemon's own listeners by address, and only loopback ones are protected"
    )]
    NonLoopbackListener(SocketAddr),
}

/// What the programs need to know about the daemon.
#[derive(Clone, Debug)]
pub struct RedirectTarget {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub port: u16,
    /// Every address and port the daemon listens on (redirect, resolver, metrics,
    /// console), which agents must not reach. Each must be a loopback address.
    pub daemon_endpoints: Vec<SocketAddr>,
    /// The network namespace the daemon serves.
    pub netns_cookie: u64,
    /// The DNS resolver's UDP port on `ipv4`/`ipv6`; 0 refuses agents' DNS.
    pub dns_port: u16,
}

/// The attached programs and the maps the daemon reads.
pub struct Interception {
    // Keeps the programs and map fds alive for the daemon's lifetime.
    _ebpf: Ebpf,
    connections: Mutex<BpfHashMap<MapData, ConnKey, Origin>>,
    /// The same map's fd, for taking a record in one system call (see [`take_record`]).
    connections_fd: OwnedFd,
    /// Set once the kernel said it cannot look up and delete in one call (before 5.14).
    lookup_and_delete_unsupported: AtomicBool,
    dns_queries: BpfHashMap<MapData, ConnKey, Origin>,
    refusals: Option<RingBuf<MapData>>,
    bpffs_dir: PathBuf,
    kernel_support: KernelSupport,
}

impl Interception {
    /// Loads the programs, points them at `target`, attaches them to `cgroup` and pins
    /// everything under `bpffs_dir`.
    pub fn install(
        cgroup: &Path,
        bpffs_dir: &Path,
        target: &RedirectTarget,
    ) -> Result<Self, BpfError> {
        if PROGRAMS_OBJECT.is_empty() {
            return Err(BpfError::NoPrograms);
        }
        ensure_bpffs()?;
        let maps_dir = bpffs_dir.join("maps");
        let links_dir = bpffs_dir.join("links");
        for dir in [bpffs_dir, &maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(|source| BpfError::Bpffs {
                path: dir.to_owned(),
                source,
            })?;
        }

        let mut ebpf = match load(&maps_dir) {
            Ok(ebpf) => ebpf,
            Err(error) => {
                // Pinned maps from an incompatible build: start them afresh.
                tracing::warn!(%error, "pinned maps unusable, recreating them");
                remove_dir_entries(&maps_dir);
                load(&maps_dir)?
            }
        };
        write_config(&mut ebpf, target)?;
        crate::containment::write_scope(&mut ebpf, cgroup)?;

        let cgroup_dir = fs::File::open(cgroup).map_err(|source| BpfError::Cgroup {
            path: cgroup.to_owned(),
            source,
        })?;
        let old_links = pinned_links(&links_dir);
        let generation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // Cgroup bpf_links always coexist with other links; `Single` means flags 0,
        // which is what link_create takes for cgroups.
        for &(name, kind) in PROGRAMS {
            let program = ebpf
                .program_mut(name)
                .ok_or(BpfError::MissingProgram(name))?;
            let program_error = |source| BpfError::Program { name, source };
            // Only bpf_link attachments (kernel 5.7+) can be pinned.
            let link_error = |source| BpfError::Link { name, source };
            // The program types share no attach trait in aya, hence the macro.
            macro_rules! load_attach_take {
                ($program_type:ty) => {{
                    let program: &mut $program_type = program.try_into().map_err(program_error)?;
                    program.load().map_err(program_error)?;
                    let id = program
                        .attach(&cgroup_dir, CgroupAttachMode::Single)
                        .map_err(program_error)?;
                    program
                        .take_link(id)
                        .map_err(program_error)?
                        .try_into()
                        .map_err(link_error)?
                }};
            }
            let link: FdLink = match kind {
                ProgramKind::SockAddr => load_attach_take!(CgroupSockAddr),
                ProgramKind::SockCreate => load_attach_take!(CgroupSock),
                ProgramKind::SkbEgress => {
                    let program: &mut CgroupSkb = program.try_into().map_err(program_error)?;
                    program.load().map_err(program_error)?;
                    let id = program
                        .attach(
                            &cgroup_dir,
                            CgroupSkbAttachType::Egress,
                            CgroupAttachMode::Single,
                        )
                        .map_err(program_error)?;
                    program
                        .take_link(id)
                        .map_err(program_error)?
                        .try_into()
                        .map_err(link_error)?
                }
            };
            // bpffs refuses names with a dot.
            let pin_path = links_dir.join(format!("{name}-{generation}"));
            link.pin(&pin_path).map_err(|source| BpfError::Pin {
                path: pin_path.clone(),
                source,
            })?;
        }
        let kernel_support =
            crate::containment::attach_optional_programs(&mut ebpf, &links_dir, generation);
        // The new links are in place: now the old ones can go.
        for old in old_links {
            if let Err(error) = fs::remove_file(&old) {
                tracing::warn!(path = %old.display(), %error, "cannot remove an old pinned link");
            }
        }

        let connections: BpfHashMap<MapData, ConnKey, Origin> =
            take_map(&mut ebpf, map_names::CONNECTIONS)?;
        let connections_fd = connections
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| BpfError::Bpffs {
                path: maps_dir.join(map_names::CONNECTIONS),
                source,
            })?;
        let dns_queries = take_map(&mut ebpf, map_names::DNS_QUERIES)?;
        let refusals = take_map(&mut ebpf, map_names::REFUSALS)?;
        Ok(Self {
            _ebpf: ebpf,
            connections: Mutex::new(connections),
            connections_fd,
            lookup_and_delete_unsupported: AtomicBool::new(false),
            dns_queries,
            refusals: Some(refusals),
            bpffs_dir: bpffs_dir.to_owned(),
            kernel_support,
        })
    }

    /// Takes the record the programs filed for a redirected connection, by its 4-tuple
    /// as the agent's side sees it. The record is removed: each is used once.
    pub fn take_origin(&self, key: &ConnKey) -> Option<Origin> {
        if !self.lookup_and_delete_unsupported.load(Ordering::Relaxed) {
            match take_record(self.connections_fd.as_fd(), key) {
                Ok(origin) => return origin,
                Err(error) if lookup_and_delete_unsupported(&error) => {
                    self.lookup_and_delete_unsupported
                        .store(true, Ordering::Relaxed);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot take a connection record");
                    return None;
                }
            }
        }
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let origin = connections.get(key, 0).ok()?;
        let _ = connections.remove(key);
        Some(origin)
    }

    /// Who sent the DNS datagram that reached the resolver from `peer` on `local`. The
    /// record stays (a socket sends many queries); each datagram refreshes it.
    pub fn dns_origin(&self, peer: SocketAddr, local: SocketAddr) -> Option<Origin> {
        self.dns_queries
            .get(&crate::identity::conn_key(peer, local), 0)
            .ok()
    }

    /// What the optional kernel features looked like at install.
    pub fn kernel_support(&self) -> &KernelSupport {
        &self.kernel_support
    }

    /// The refusal ring buffer; it can be taken once, by the task that drains it.
    pub fn take_refusals(&mut self) -> Option<RingBuf<MapData>> {
        self.refusals.take()
    }

    /// Which programs have a pinned (so attached) link right now.
    pub fn attached_programs(&self) -> Vec<(String, bool)> {
        attached_programs(&self.bpffs_dir)
    }
}

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM`, which hash maps take from kernel 5.14 on: one
/// system call per accepted connection instead of a lookup and a delete. aya 0.14 offers
/// it for queues and stacks only, hence the raw call. `None` when there is no record.
fn take_record(map: BorrowedFd<'_>, key: &ConnKey) -> std::io::Result<Option<Origin>> {
    const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    /// The part of `union bpf_attr` the map element commands read.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut origin = Origin::default();
    let attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: (&raw mut origin) as u64,
        flags: 0,
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size given; key and value point
    // at a ConnKey and an Origin, the map's key and value types, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_AND_DELETE_ELEM,
            &raw const attr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if rc == 0 {
        return Ok(Some(origin));
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(error)
    }
}

/// Whether `error` says the kernel cannot look up and delete a hash map element in one
/// call (EINVAL or ENOTSUPP before 5.14).
fn lookup_and_delete_unsupported(error: &std::io::Error) -> bool {
    /// The kernel-internal ENOTSUPP, which the bpf syscall can leak to user space.
    const ENOTSUPP: i32 = 524;
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
    )
}

/// Which of [`PROGRAMS`] have a pinned link under `bpffs_dir`.
pub fn attached_programs(bpffs_dir: &Path) -> Vec<(String, bool)> {
    let links = pinned_links(&bpffs_dir.join("links"));
    PROGRAMS
        .iter()
        .map(|(name, _)| {
            let attached = links.iter().any(|link| {
                link.file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.rsplit_once('-'))
                    .is_some_and(|(program, _)| program == *name)
            });
            ((*name).to_owned(), attached)
        })
        .collect()
}

/// Detaches the programs and forgets the pinned maps: what `sluice detach` does.
/// Agents in the managed cgroup are no longer intercepted afterwards.
pub fn uninstall(bpffs_dir: &Path) -> Result<usize, BpfError> {
    let links = pinned_links(&bpffs_dir.join("links"));
    let count = links.len();
    for link in links {
        fs::remove_file(&link).map_err(|source| BpfError::Bpffs { path: link, source })?;
    }
    remove_dir_entries(&bpffs_dir.join("maps"));
    for dir in [
        bpffs_dir.join("links"),
        bpffs_dir.join("maps"),
        bpffs_dir.to_owned(),
    ] {
        let _ = fs::remove_dir(dir);
    }
    Ok(count)
}

/// Takes the map `name` out of `ebpf` as the typed map `M`.
fn take_map<M>(ebpf: &mut Ebpf, name: &'static str) -> Result<M, BpfError>
where
    M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(BpfError::MissingMap(name))?;
    M::try_from(map).map_err(|source| BpfError::Map { name, source })
}

fn load(maps_dir: &Path) -> Result<Ebpf, aya::EbpfError> {
    let mut loader = EbpfLoader::new();
    for name in [
        map_names::CONFIG,
        map_names::SOCKET_ORIGIN,
        map_names::CONNECTIONS,
        map_names::REFUSALS,
        map_names::SCOPE,
        map_names::MANAGED_SOCKETS,
        map_names::BACKSTOP_DROPS,
        map_names::DNS_SOCKETS,
        map_names::DNS_QUERIES,
    ] {
        loader.map_pin_path(name, maps_dir.join(name));
    }
    loader.load(PROGRAMS_OBJECT)
}

fn write_config(ebpf: &mut Ebpf, target: &RedirectTarget) -> Result<(), BpfError> {
    let daemon_endpoints = daemon_endpoints(&target.daemon_endpoints)?;
    let config = RedirectConfig {
        netns_cookie: target.netns_cookie,
        listen_ip4: u32::from_ne_bytes(target.ipv4.octets()),
        listen_ip6: ip6_words(&target.ipv6),
        listen_port: target.port,
        enabled: 1,
        dns_port: target.dns_port,
        _reserved: 0,
        daemon_endpoints,
        _reserved2: 0,
    };
    let map = ebpf
        .map_mut(map_names::CONFIG)
        .ok_or(BpfError::MissingMap("SLUICE_CONFIG"))?;
    let mut array: Array<&mut MapData, RedirectConfig> =
        Array::try_from(map).map_err(|source| BpfError::Map {
            name: "SLUICE_CONFIG",
            source,
        })?;
    array.set(0, config, 0).map_err(|source| BpfError::Map {
        name: "SLUICE_CONFIG",
        source,
    })
}

/// An IPv6 address as the programs keep it: four words in network byte order.
fn ip6_words(ip: &Ipv6Addr) -> [u32; 4] {
    let octets = ip.octets();
    let word = |i: usize| {
        u32::from_ne_bytes([
            octets[4 * i],
            octets[4 * i + 1],
            octets[4 * i + 2],
            octets[4 * i + 3],
        ])
    };
    [word(0), word(1), word(2), word(3)]
}

/// The daemon's listeners as the programs match them. Only loopback listeners can be
/// protected by address (a wildcard one would be reachable on every address of the
/// host), so any other refuses the whole installation: fail closed.
fn daemon_endpoints(
    listeners: &[SocketAddr],
) -> Result<[DaemonEndpoint; MAX_DAEMON_ENDPOINTS], BpfError> {
    if listeners.len() > MAX_DAEMON_ENDPOINTS {
        return Err(BpfError::TooManyDaemonEndpoints);
    }
    let mut endpoints = [DaemonEndpoint::default(); MAX_DAEMON_ENDPOINTS];
    for (slot, listener) in endpoints.iter_mut().zip(listeners) {
        if !listener.ip().is_loopback() {
            return Err(BpfError::NonLoopbackListener(*listener));
        }
        *slot = match listener.ip() {
            IpAddr::V4(ip) => DaemonEndpoint {
                ip: [u32::from_ne_bytes(ip.octets()), 0, 0, 0],
                port: listener.port(),
                family: AF_INET,
            },
            IpAddr::V6(ip) => DaemonEndpoint {
                ip: ip6_words(&ip),
                port: listener.port(),
                family: AF_INET6,
            },
        };
    }
    Ok(endpoints)
}

fn pinned_links(links_dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(links_dir)
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn remove_dir_entries(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let _ = fs::remove_file(entry.path());
    }
}

/// Mounts bpffs at /sys/fs/bpf unless a bpf file system is already there.
fn ensure_bpffs() -> Result<(), BpfError> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        fields.nth(1) == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if mounted {
        return Ok(());
    }
    nix::mount::mount(
        Some("bpf"),
        "/sys/fs/bpf",
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(BpfError::MountBpffs)
}

/// The network namespace cookie of the namespace `socket` lives in.
pub fn netns_cookie(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `path` is on a bpf file system (used by `sluice status` and `run`).
pub fn is_pinned(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct; c_path is NUL terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &raw mut stat) };
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// Raw fd of the refusal ring buffer, for registering with tokio.
pub fn ring_fd(ring: &RingBuf<MapData>) -> std::os::fd::RawFd {
    ring.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    #[test]
    fn loopback_listeners_become_endpoints_in_network_order() {
        let endpoints = daemon_endpoints(&[
            addr("127.0.0.1:15001"),
            addr("[::1]:15001"),
            addr("127.0.0.5:9"),
        ])
        .expect("loopback listeners");
        assert_eq!(endpoints[0].family, AF_INET);
        assert_eq!(
            endpoints[0].ip,
            [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0]
        );
        assert_eq!(endpoints[0].port, 15001);
        assert_eq!(endpoints[1].family, AF_INET6);
        assert_eq!(endpoints[1].ip, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
        assert_eq!(endpoints[2].port, 9);
        assert!(endpoints[3..].iter().all(|e| e.port == 0));
    }

    #[test]
    fn a_listener_off_loopback_refuses_the_installation() {
        for listener in ["0.0.0.0:9", "[::]:9", "10.1.2.3:9", "[::ffff:127.0.0.1]:9"] {
            assert!(
                matches!(
                    daemon_endpoints(&[addr("127.0.0.1:1"), addr(listener)]),
                    Err(BpfError::NonLoopbackListener(_))
                ),
                "{listener}"
            );
        }
        let too_many = vec![addr("127.0.0.1:1"); MAX_DAEMON_ENDPOINTS + 1];
        assert!(matches!(
            daemon_endpoints(&too_many),
            Err(BpfError::TooManyDaemonEndpoints)
        ));
    }
}
