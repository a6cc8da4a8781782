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

/// How many of the daemon's own TCP ports the programs refuse to let agents reach.
pub const MAX_DAEMON_PORTS: usize = 4;

/// Map names, shared so the daemon never spells them differently from the programs.
pub mod map_names {
    /// `Array<RedirectConfig, 1>`: written by the daemon, read by every program.
    pub const CONFIG: &str = "SLUICE_CONFIG";
    /// `SkStorage<Origin>`: the original destination of each redirected socket.
    pub const SOCKET_ORIGIN: &str = "SLUICE_SOCKET_ORIGIN";
    /// `LruHashMap<u64, Origin>`: connect → sock_ops hand-off, keyed by socket cookie.
    pub const PENDING: &str = "SLUICE_PENDING";
    /// `LruHashMap<ConnKey, Origin>`: what the daemon looks up for an accepted stream.
    pub const CONNECTIONS: &str = "SLUICE_CONNECTIONS";
    /// `RingBuf`: one `Refusal` for every connect or send the programs refused.
    pub const REFUSALS: &str = "SLUICE_REFUSALS";
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
    /// The daemon's own TCP ports (host byte order, 0 = unused slot). Agents may not connect to them.
    pub daemon_ports: [u16; MAX_DAEMON_PORTS],
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
    pub socket_cookie: u64,
    /// `bpf_ktime_get_ns()` at connect.
    pub connect_ns: u64,
    /// The task's comm, NUL padded.
    pub comm: [u8; 16],
}

/// The key under which sock_ops files an [`Origin`] for the daemon: the redirected
/// connection's full 4-tuple as the agent's side sees it.
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
    /// The destination is one of the daemon's own ports.
    DaemonPort = 2,
    /// The socket lives in a network namespace the daemon does not serve.
    ForeignNetns = 3,
    /// UDP to a port other than 53.
    Udp = 4,
    /// A protocol sluice cannot mediate (ICMP ping sockets, SCTP, MPTCP...).
    Protocol = 5,
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
    /// Which hook refused: 1 = connect, 2 = sendmsg.
    pub hook: u32,
    pub _reserved: u32,
    pub origin: Origin,
}

/// `Refusal::hook` for the connect hooks.
pub const HOOK_CONNECT: u32 = 1;
/// `Refusal::hook` for the sendmsg hooks.
pub const HOOK_SENDMSG: u32 = 2;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all four are repr(C), Copy, have no padding-sensitive invariants and
    // every bit pattern is a valid value.
    unsafe impl aya::Pod for super::RedirectConfig {}
    unsafe impl aya::Pod for super::Origin {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::Refusal {}
}
