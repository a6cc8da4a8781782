//! The records that sluice's eBPF programs and its daemon exchange through BPF maps.
//!
//! Both sides compile this crate, so every type is `#[repr(C)]`, has no padding the
//! verifier could trip over, and uses fixed-size arrays only. Addresses are kept in
//! memory order (network byte order, exactly as the kernel stores them); ports are
//! kept in host byte order so that neither side has to remember which kernel field
//! stores which order.
#![no_std]

/// `AF_INET` as the kernel numbers it.
pub const AF_INET: u16 = 2;
/// `AF_INET6` as the kernel numbers it.
pub const AF_INET6: u16 = 10;

/// How many of the daemon's own listening endpoints (redirect, resolver, metrics,
/// console, on both families) the programs refuse to let agents reach.
pub const MAX_DAEMON_ENDPOINTS: usize = 8;

/// Map names, shared so the daemon never spells them differently from the programs.
pub mod map_names {
    /// `Array<RedirectConfig, 1>`: written by the daemon, read by every program.
    pub const CONFIG: &str = "SLUICE_CONFIG";
    /// `SkStorage<Origin>`: the original destination of each redirected socket.
    pub const SOCKET_ORIGIN: &str = "SLUICE_SOCKET_ORIGIN";
    /// `LruHashMap<ConnKey, Origin>`: what the daemon looks up for an accepted stream.
    pub const CONNECTIONS: &str = "SLUICE_CONNECTIONS";
    /// `RingBuf`: one `Refusal` for every connect or send the programs refused.
    pub const REFUSALS: &str = "SLUICE_REFUSALS";
    /// `Array<ManagedScope, 1>`: the managed cgroup tree, for the programs that are not
    /// attached to it (the BPF LSM programs are global).
    pub const SCOPE: &str = "SLUICE_SCOPE";
    /// `SkStorage<u32>`: set on every inet socket created inside the managed cgroup.
    pub const MANAGED_SOCKETS: &str = "SLUICE_MANAGED_SOCKETS";
    /// `PerCpuArray<u64, 1>`: packets the egress backstop dropped.
    pub const BACKSTOP_DROPS: &str = "SLUICE_BACKSTOP_DROPS";
    /// `LruHashMap<u64, Origin>`: the last DNS destination of each agent UDP socket,
    /// by socket cookie, for the egress program to file under the datagram's 4-tuple.
    pub const DNS_SOCKETS: &str = "SLUICE_DNS_SOCKETS";
    /// `LruHashMap<ConnKey, Origin>`: who sent the DNS datagrams the daemon's resolver
    /// receives, by their 4-tuple (agent address → resolver listener).
    pub const DNS_QUERIES: &str = "SLUICE_DNS_QUERIES";
}

/// What the daemon tells the programs about itself.
///
/// A zeroed config (the state before the daemon first writes it) has
/// `enabled == 0`, and the programs then refuse every connection: fail closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RedirectConfig {
    /// The cookie of the network namespace the daemon serves; others are refused.
    pub netns_cookie: u64,
    /// The redirect listener's IPv4 address, network byte order.
    pub listen_ip4: u32,
    /// The redirect listener's IPv6 address, network byte order words.
    pub listen_ip6: [u32; 4],
    /// The redirect listener's port, host byte order.
    pub listen_port: u16,
    /// 1 once the daemon has written a valid config.
    pub enabled: u16,
    /// The DNS resolver's UDP port on `listen_ip4`/`listen_ip6`, host byte order. UDP
    /// to port 53 is sent there; 0 means no resolver, and such UDP is refused.
    pub dns_port: u16,
    pub _reserved: u16,
    /// Every address and port the daemon listens on (all loopback: the daemon refuses
    /// to start otherwise). Agents may not connect to them, nor to their ports on the
    /// unspecified address, which the kernel sends to a local one.
    pub daemon_endpoints: [DaemonEndpoint; MAX_DAEMON_ENDPOINTS],
    pub _reserved2: u32,
}

// No padding anywhere (the sizes are the sums of the fields).
const _: () = assert!(core::mem::size_of::<RedirectConfig>() == 200);
const _: () = assert!(core::mem::size_of::<DaemonEndpoint>() == 20);

/// One address and port the daemon listens on; a zero port marks an unused slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DaemonEndpoint {
    /// Network byte order words; for IPv4 only word 0 is used, the rest are 0.
    pub ip: [u32; 4],
    /// Host byte order.
    pub port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
}

/// Where an agent's socket was going, and who opened it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// Original destination address; for IPv4 (including v4-mapped IPv6) only word 0 is used.
    pub dst_ip: [u32; 4],
    /// Original destination port, host byte order.
    pub dst_port: u16,
    /// `AF_INET` or `AF_INET6`: the family of the original destination after v4-mapped
    /// addresses were folded to IPv4.
    pub dst_family: u16,
    /// 1 when the agent's socket is `AF_INET6` but the destination was v4-mapped.
    pub v4_mapped: u32,
    /// Thread-group id (what user space calls the pid).
    pub tgid: u32,
    /// Thread id of the connecting thread.
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// cgroup v2 id of the connecting task (the inode number of its cgroup directory).
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// Filled for DNS sends and for refusals only (0 on redirected TCP connects).
    pub socket_cookie: u64,
    /// `bpf_ktime_get_ns()` at connect; filled like `socket_cookie`.
    pub connect_ns: u64,
    /// The task's comm, NUL padded.
    pub comm: [u8; 16],
}

/// The key under which the egress program files an [`Origin`] for the daemon, from the
/// connection's SYN: the redirected connection's full 4-tuple as the agent's side sees it.
///
/// `src` is the agent's address, `dst` the daemon listener's. v4-mapped IPv6 is folded
/// to IPv4 so that the key matches what the daemon's IPv4 listener sees.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub family: u32,
    pub src_ip: [u32; 4],
    pub dst_ip: [u32; 4],
    /// Host byte order.
    pub src_port: u16,
    /// Host byte order.
    pub dst_port: u16,
}

/// Why a program refused a connect or a send.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// The daemon has not written its config yet (or it was cleared).
    NotConfigured = 1,
    /// The destination is one of the daemon's own listening endpoints (or its port on
    /// the unspecified address).
    DaemonPort = 2,
    /// The socket lives in a network namespace the daemon does not serve.
    ForeignNetns = 3,
    /// UDP to a port other than 53.
    Udp = 4,
    /// A protocol sluice cannot mediate (ICMP ping sockets, SCTP, MPTCP...).
    Protocol = 5,
    /// An inet `SOCK_RAW` socket (cgroup/sock_create).
    RawSocket = 20,
    /// An `AF_PACKET` socket (BPF LSM socket_create).
    PacketSocket = 21,
    /// A socket family sluice does not mediate (vsock, bluetooth, CAN...; BPF LSM).
    SocketFamily = 22,
    /// An inet socket created outside the managed cgroup (passed in over SCM_RIGHTS,
    /// taken with pidfd_getfd), used from inside it (BPF LSM connect/sendmsg).
    ForeignSocket = 23,
    /// A packet the socket hooks did not stop, dropped at cgroup egress.
    SkbBackstop = 24,
}

impl RefusalReason {
    /// Decodes the wire value; unknown values come back as `None`.
    pub fn from_u32(value: u32) -> Option<Self> {
        Some(match value {
            1 => Self::NotConfigured,
            2 => Self::DaemonPort,
            3 => Self::ForeignNetns,
            4 => Self::Udp,
            5 => Self::Protocol,
            20 => Self::RawSocket,
            21 => Self::PacketSocket,
            22 => Self::SocketFamily,
            23 => Self::ForeignSocket,
            24 => Self::SkbBackstop,
            _ => return None,
        })
    }

    /// A stable, lowercase name used in records and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotConfigured => "not_configured",
            Self::DaemonPort => "daemon_port",
            Self::ForeignNetns => "foreign_netns",
            Self::Udp => "udp",
            Self::Protocol => "protocol",
            Self::RawSocket => "raw_socket",
            Self::PacketSocket => "packet_socket",
            Self::SocketFamily => "socket_family",
            Self::ForeignSocket => "foreign_socket",
            Self::SkbBackstop => "skb_backstop",
        }
    }
}

/// One refused connect or send, as the programs report it on the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusal {
    /// A [`RefusalReason`] value.
    pub reason: u32,
    /// The socket's `IPPROTO_*` protocol.
    pub protocol: u32,
    /// Which hook refused: one of the `HOOK_*` values.
    pub hook: u32,
    /// The `SOCK_*` type for refused socket creations, else 0.
    pub socket_type: u32,
    pub origin: Origin,
}

/// `Refusal::hook` for the connect hooks.
pub const HOOK_CONNECT: u32 = 1;
/// `Refusal::hook` for the sendmsg hooks.
pub const HOOK_SENDMSG: u32 = 2;
/// `Refusal::hook` for cgroup/sock_create.
pub const HOOK_SOCK_CREATE: u32 = 20;
/// `Refusal::hook` for BPF LSM socket_create.
pub const HOOK_LSM_SOCKET_CREATE: u32 = 21;
/// `Refusal::hook` for BPF LSM socket_connect.
pub const HOOK_LSM_SOCKET_CONNECT: u32 = 22;
/// `Refusal::hook` for BPF LSM socket_sendmsg.
pub const HOOK_LSM_SOCKET_SENDMSG: u32 = 23;
/// `Refusal::hook` for the cgroup_skb/egress backstop.
pub const HOOK_SKB_EGRESS: u32 = 24;

/// The hook's name as records and logs show it.
pub fn hook_name(hook: u32) -> &'static str {
    match hook {
        HOOK_CONNECT => "connect",
        HOOK_SENDMSG => "sendmsg",
        HOOK_SOCK_CREATE => "cgroup/sock_create",
        HOOK_LSM_SOCKET_CREATE => "lsm/socket_create",
        HOOK_LSM_SOCKET_CONNECT => "lsm/socket_connect",
        HOOK_LSM_SOCKET_SENDMSG => "lsm/socket_sendmsg",
        HOOK_SKB_EGRESS => "cgroup_skb/egress",
        _ => "unknown",
    }
}

/// Where the managed cgroup tree is, for programs that see every task (BPF LSM).
///
/// A task is managed when its cgroup's ancestor at `level` has id `cgroup_id`. A zeroed
/// scope (`enabled == 0`) manages nothing, so global programs never touch other tasks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManagedScope {
    /// cgroup v2 id of the managed root (the inode number of its directory).
    pub cgroup_id: u64,
    /// Depth of the managed root below the cgroup2 mount (the mount itself is 0).
    pub level: u32,
    /// 1 once the daemon has written a valid scope.
    pub enabled: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of them are repr(C), Copy, have no padding-sensitive invariants and
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::DaemonEndpoint {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::Refusal {}
    unsafe impl aya::Pod for super::ManagedScope {}
}
