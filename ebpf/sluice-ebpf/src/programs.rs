//! The programs themselves. See the crate docs for how they fit together.
//!
//! Minimum kernels (each program's own note is on it): the whole set needs 5.8 for the
//! getpeername hooks and `bpf_get_netns_cookie` in sock_addr programs (5.7), BPF ring
//! buffers (5.8) and socket-local storage in sock_addr programs.

use core::ffi::c_void;

use crate::containment::{ManagedSocket, SLUICE_MANAGED_SOCKETS};
use aya_ebpf::{
    btf_maps::{Array, LruHashMap, RingBuf, SkStorage},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_sk_fullsock, bpf_sk_storage_get,
    },
    macros::{btf_map, cgroup_sock_addr},
    programs::{SkBuffContext, SockAddrContext},
};
use sluice_common::{
    AF_INET, AF_INET6, ConnKey, HOOK_CONNECT, HOOK_SENDMSG, MAX_DAEMON_ENDPOINTS, Origin,
    RedirectConfig, Refusal, RefusalReason,
};

pub(crate) const ALLOW: i32 = 1;
pub(crate) const REFUSE: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const DNS_PORT: u16 = 53;
/// `::ffff:0:0/96`, the third word of a v4-mapped address in network byte order.
const V4_MAPPED_WORD: u32 = 0xffffu32.to_be();

#[btf_map]
pub(crate) static SLUICE_CONFIG: Array<RedirectConfig, 1> = Array::new();

/// Where a redirected socket was going, for sockets without a [`ManagedSocket`]
/// element (created before cgroup/sock_create was attached): every other socket keeps
/// its origin in that element.
#[btf_map]
static SLUICE_SOCKET_ORIGIN: SkStorage<Origin> = SkStorage::new();

#[btf_map]
static SLUICE_CONNECTIONS: LruHashMap<ConnKey, Origin, 65536> = LruHashMap::new();

#[btf_map]
pub(crate) static SLUICE_REFUSALS: RingBuf<Refusal, { 256 * 1024 }> = RingBuf::new();

#[btf_map]
static SLUICE_DNS_SOCKETS: LruHashMap<u64, Origin, 16384> = LruHashMap::new();

#[btf_map]
static SLUICE_DNS_QUERIES: LruHashMap<ConnKey, Origin, 16384> = LruHashMap::new();

/// An original destination, with v4-mapped IPv6 already folded to IPv4.
#[derive(Clone, Copy)]
struct Destination {
    ip: [u32; 4],
    port: u16,
    family: u16,
    v4_mapped: bool,
}

#[inline(always)]
pub(crate) fn enabled_config() -> Option<&'static RedirectConfig> {
    let config = SLUICE_CONFIG.get(0)?;
    (config.enabled == 1).then_some(config)
}

/// What a redirected connection's record carries from the kernel: the destination, who
/// connected (pid, tid, uid, gid, comm, cgroup) and the namespace. The socket cookie
/// and the time, which the daemon does not use, are left to refusals and DNS; comm
/// stays (a 16-byte copy here against a `/proc` read per connection in the daemon).
#[inline(always)]
fn origin_for(destination: &Destination, netns_cookie: u64) -> Origin {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    Origin {
        dst_ip: destination.ip,
        dst_port: destination.port,
        dst_family: destination.family,
        v4_mapped: destination.v4_mapped as u32,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns_cookie,
        socket_cookie: 0,
        connect_ns: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

/// A refused connect or send is reported with the socket cookie and the time too.
#[inline(always)]
fn refuse_with(
    reason: RefusalReason,
    protocol: u32,
    hook: u32,
    ctx: &SockAddrContext,
    mut origin: Origin,
) -> i32 {
    origin.socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast::<c_void>()) };
    origin.connect_ns = unsafe { bpf_ktime_get_ns() };
    refuse(reason, protocol, hook, origin)
}

#[inline(always)]
fn refuse(reason: RefusalReason, protocol: u32, hook: u32, origin: Origin) -> i32 {
    // A full ring buffer loses the report, never the refusal.
    let _ = SLUICE_REFUSALS.output(
        Refusal {
            reason: reason as u32,
            protocol,
            hook,
            socket_type: 0,
            origin,
        },
        0,
    );
    REFUSE
}

/// Whether a connect to `destination` would reach one of the daemon's own listeners:
/// one of their exact addresses and ports, or their port on the unspecified address
/// (0.0.0.0 and `::`, which the kernel sends to a local address). The daemon listens
/// on loopback only, so the same port on any other address is somebody else's.
#[inline(always)]
fn is_daemon_endpoint(config: &RedirectConfig, destination: &Destination) -> bool {
    let ip = destination.ip;
    let unspecified = ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 0;
    let mut i = 0;
    while i < MAX_DAEMON_ENDPOINTS {
        let endpoint = &config.daemon_endpoints[i];
        if endpoint.port != 0
            && endpoint.port == destination.port
            && (unspecified
                || (endpoint.family == destination.family
                    && endpoint.ip[0] == ip[0]
                    && endpoint.ip[1] == ip[1]
                    && endpoint.ip[2] == ip[2]
                    && endpoint.ip[3] == ip[3]))
        {
            return true;
        }
        i += 1;
    }
    false
}

#[inline(always)]
fn is_listener(config: &RedirectConfig, destination: &Destination) -> bool {
    if destination.port != config.listen_port {
        return false;
    }
    if destination.family == AF_INET {
        destination.ip[0] == config.listen_ip4
    } else {
        destination.ip == config.listen_ip6
    }
}

/// The common decision of both connect hooks. Returns `ALLOW` after rewriting the
/// destination, or `REFUSE`.
#[inline(always)]
fn handle_connect(ctx: &SockAddrContext, destination: Destination) -> i32 {
    let sock_addr = unsafe { &*ctx.sock_addr };
    let protocol = sock_addr.protocol;
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast::<c_void>()) };
    let origin = origin_for(&destination, netns_cookie);

    let Some(config) = enabled_config() else {
        return refuse_with(
            RefusalReason::NotConfigured,
            protocol,
            HOOK_CONNECT,
            ctx,
            origin,
        );
    };
    if netns_cookie != config.netns_cookie {
        return refuse_with(
            RefusalReason::ForeignNetns,
            protocol,
            HOOK_CONNECT,
            ctx,
            origin,
        );
    }
    match protocol {
        IPPROTO_TCP => {}
        IPPROTO_UDP if destination.port == DNS_PORT => {
            return redirect_dns(ctx, config, &destination, origin, HOOK_CONNECT);
        }
        IPPROTO_UDP => return refuse_with(RefusalReason::Udp, protocol, HOOK_CONNECT, ctx, origin),
        _ => return refuse_with(RefusalReason::Protocol, protocol, HOOK_CONNECT, ctx, origin),
    }

    // Another instance of these programs (the previous daemon's, while a restarted one
    // takes over) already redirected this socket: leave it as it is. Only a connect to
    // the listener itself can be one, so only then is the socket's record looked up.
    if is_listener(config, &destination) && !redirected_origin(socket_of(ctx)).is_null() {
        return ALLOW;
    }
    if is_daemon_endpoint(config, &destination) {
        return refuse_with(
            RefusalReason::DaemonPort,
            protocol,
            HOOK_CONNECT,
            ctx,
            origin,
        );
    }

    // The record on the socket is all: the egress program files it under the 4-tuple
    // when the SYN leaves.
    if !store_origin(ctx, origin) {
        return refuse_with(
            RefusalReason::NotConfigured,
            protocol,
            HOOK_CONNECT,
            ctx,
            origin,
        );
    }
    point_at_daemon(ctx, config, &destination, config.listen_port);
    ALLOW
}

/// Records `origin` on the socket, for the SYN's filing, getpeername and recvmsg: in its
/// [`ManagedSocket`] element, or in an element of its own for a socket that has none.
/// `false` when the kernel could not store it (out of memory): without it the daemon
/// could not tell where the connection was going, so the caller refuses.
#[inline(always)]
fn store_origin(ctx: &SockAddrContext, origin: Origin) -> bool {
    let sk = socket_of(ctx);
    let managed = unsafe { storage_of(&SLUICE_MANAGED_SOCKETS, sk) }.cast::<ManagedSocket>();
    if !managed.is_null() {
        unsafe { (*managed).origin = origin };
        return true;
    }
    let stored = unsafe { SLUICE_SOCKET_ORIGIN.get_or_insert_ptr_mut(ctx, None) };
    if stored.is_null() {
        return false;
    }
    unsafe { *stored = origin };
    true
}

/// The hook's socket.
#[inline(always)]
fn socket_of(ctx: &SockAddrContext) -> *mut c_void {
    unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk }.cast()
}

/// `map`'s element on socket `sk` (which must be a socket pointer the verifier
/// accepts), or null. Never creates one.
#[inline(always)]
unsafe fn storage_of<T>(map: &T, sk: *mut c_void) -> *mut c_void {
    unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(map).cast_mut().cast(),
            sk,
            core::ptr::null_mut(),
            0,
        )
    }
}

/// The origin connect4/6 or sendmsg4/6 recorded on socket `sk`, or null when they did
/// not redirect it.
#[inline(always)]
fn redirected_origin(sk: *mut c_void) -> *const Origin {
    let managed = unsafe { storage_of(&SLUICE_MANAGED_SOCKETS, sk) }.cast::<ManagedSocket>();
    if !managed.is_null() && unsafe { (*managed).origin.dst_family } != 0 {
        return unsafe { &raw const (*managed).origin };
    }
    unsafe { storage_of(&SLUICE_SOCKET_ORIGIN, sk) }.cast::<Origin>()
}

/// Points the connect or send at the daemon's `port` on the listener's address of the
/// socket's family (v4-mapped for v4-mapped destinations).
#[inline(always)]
fn point_at_daemon(
    ctx: &SockAddrContext,
    config: &RedirectConfig,
    destination: &Destination,
    port: u16,
) {
    if destination.family == AF_INET && !destination.v4_mapped {
        rewrite4(ctx, config, port);
    } else {
        rewrite6(ctx, config, destination.v4_mapped, port);
    }
}

/// Sends a UDP DNS connect or datagram to the daemon's resolver instead. The socket
/// keeps its original destination (for recvmsg and getpeername) and the cookie map
/// keeps who sent it, for the egress program to file under the datagram's 4-tuple.
/// Without both records the resolver could not tell who asked, so it is refused.
#[inline(always)]
fn redirect_dns(
    ctx: &SockAddrContext,
    config: &RedirectConfig,
    destination: &Destination,
    mut origin: Origin,
    hook: u32,
) -> i32 {
    if config.dns_port == 0 {
        return refuse_with(RefusalReason::Udp, IPPROTO_UDP, hook, ctx, origin);
    }
    origin.socket_cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast::<c_void>()) };
    origin.connect_ns = unsafe { bpf_ktime_get_ns() };
    if !store_origin(ctx, origin)
        || SLUICE_DNS_SOCKETS
            .insert(origin.socket_cookie, origin, 0)
            .is_err()
    {
        return refuse(RefusalReason::NotConfigured, IPPROTO_UDP, hook, origin);
    }
    point_at_daemon(ctx, config, destination, config.dns_port);
    ALLOW
}

/// Points an IPv4 connect or send at the daemon's `port`. Only valid in the v4 hooks.
#[inline(always)]
fn rewrite4(ctx: &SockAddrContext, config: &RedirectConfig, port: u16) {
    write4(ctx, config.listen_ip4, port);
}

/// Points an IPv6 connect or send at the daemon's `port` (its v4-mapped form for
/// v4-mapped destinations). Only valid in the v6 hooks.
#[inline(always)]
fn rewrite6(ctx: &SockAddrContext, config: &RedirectConfig, v4_mapped: bool, port: u16) {
    write6(ctx, v4_mapped, config.listen_ip4, &config.listen_ip6, port);
}

/// Writes `ip4` and `port` (host order) into the hook's address. Only valid in the v4
/// hooks.
#[inline(always)]
fn write4(ctx: &SockAddrContext, ip4: u32, port: u16) {
    unsafe {
        let sock_addr = &mut *ctx.sock_addr;
        sock_addr.user_ip4 = ip4;
        sock_addr.user_port = port.to_be() as u32;
    }
}

/// Writes `ip6`, or `ip4` in its v4-mapped form when `v4_mapped`, and `port` (host
/// order) into the hook's address. Only valid in the v6 hooks.
#[inline(always)]
fn write6(ctx: &SockAddrContext, v4_mapped: bool, ip4: u32, ip6: &[u32; 4], port: u16) {
    unsafe {
        let sock_addr = &mut *ctx.sock_addr;
        if v4_mapped {
            sock_addr.user_ip6[0] = 0;
            sock_addr.user_ip6[1] = 0;
            sock_addr.user_ip6[2] = V4_MAPPED_WORD;
            sock_addr.user_ip6[3] = ip4;
        } else {
            sock_addr.user_ip6[0] = ip6[0];
            sock_addr.user_ip6[1] = ip6[1];
            sock_addr.user_ip6[2] = ip6[2];
            sock_addr.user_ip6[3] = ip6[3];
        }
        sock_addr.user_port = port.to_be() as u32;
    }
}

#[inline(always)]
fn destination4(ctx: &SockAddrContext) -> Destination {
    let sock_addr = unsafe { &*ctx.sock_addr };
    Destination {
        ip: [sock_addr.user_ip4, 0, 0, 0],
        port: u16::from_be(sock_addr.user_port as u16),
        family: AF_INET,
        v4_mapped: false,
    }
}

#[inline(always)]
fn destination6(ctx: &SockAddrContext) -> Destination {
    let sock_addr = unsafe { &*ctx.sock_addr };
    // Word by word: the verifier rejects a read through an offset context pointer.
    let ip = [
        sock_addr.user_ip6[0],
        sock_addr.user_ip6[1],
        sock_addr.user_ip6[2],
        sock_addr.user_ip6[3],
    ];
    let port = u16::from_be(sock_addr.user_port as u16);
    if ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD {
        Destination {
            ip: [ip[3], 0, 0, 0],
            port,
            family: AF_INET,
            v4_mapped: true,
        }
    } else {
        Destination {
            ip,
            port,
            family: AF_INET6,
            v4_mapped: false,
        }
    }
}

/// Redirects IPv4 TCP connects. Minimum kernel: 5.8 (netns cookie 5.7, ring buffer 5.8).
#[cgroup_sock_addr(connect4)]
pub fn sluice_connect4(ctx: SockAddrContext) -> i32 {
    handle_connect(&ctx, destination4(&ctx))
}

/// Redirects IPv6 TCP connects; v4-mapped destinations are handled as IPv4.
/// Minimum kernel: 5.8.
#[cgroup_sock_addr(connect6)]
pub fn sluice_connect6(ctx: SockAddrContext) -> i32 {
    handle_connect(&ctx, destination6(&ctx))
}

#[inline(always)]
fn handle_sendmsg(ctx: &SockAddrContext, destination: Destination) -> i32 {
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.sock_addr.cast::<c_void>()) };
    let origin = origin_for(&destination, netns_cookie);
    let Some(config) = enabled_config() else {
        return refuse_with(
            RefusalReason::NotConfigured,
            protocol,
            HOOK_SENDMSG,
            ctx,
            origin,
        );
    };
    if netns_cookie != config.netns_cookie {
        return refuse_with(
            RefusalReason::ForeignNetns,
            protocol,
            HOOK_SENDMSG,
            ctx,
            origin,
        );
    }
    if protocol == IPPROTO_UDP && destination.port == DNS_PORT {
        return redirect_dns(ctx, config, &destination, origin, HOOK_SENDMSG);
    }
    refuse_with(RefusalReason::Udp, protocol, HOOK_SENDMSG, ctx, origin)
}

/// Sends unconnected IPv4 UDP to port 53 to the daemon's resolver and refuses other
/// UDP. Minimum kernel: 5.8.
#[cgroup_sock_addr(sendmsg4)]
pub fn sluice_sendmsg4(ctx: SockAddrContext) -> i32 {
    handle_sendmsg(&ctx, destination4(&ctx))
}

/// Sends unconnected IPv6 UDP to port 53 (v4-mapped included) to the daemon's
/// resolver and refuses other UDP. Minimum kernel: 5.8.
#[cgroup_sock_addr(sendmsg6)]
pub fn sluice_sendmsg6(ctx: SockAddrContext) -> i32 {
    handle_sendmsg(&ctx, destination6(&ctx))
}

/// Shows the agent the destination it asked for. Minimum kernel: 5.8.
#[cgroup_sock_addr(getpeername4)]
pub fn sluice_getpeername4(ctx: SockAddrContext) -> i32 {
    let origin = redirected_origin(socket_of(&ctx));
    if origin.is_null() {
        return ALLOW;
    }
    let origin = unsafe { &*origin };
    write4(&ctx, origin.dst_ip[0], origin.dst_port);
    ALLOW
}

/// Shows the agent the destination it asked for, v4-mapped where it asked that way.
/// Minimum kernel: 5.8.
#[cgroup_sock_addr(getpeername6)]
pub fn sluice_getpeername6(ctx: SockAddrContext) -> i32 {
    let origin = redirected_origin(socket_of(&ctx));
    if origin.is_null() {
        return ALLOW;
    }
    let origin = unsafe { &*origin };
    write6(
        &ctx,
        origin.v4_mapped == 1,
        origin.dst_ip[0],
        &origin.dst_ip,
        origin.dst_port,
    );
    ALLOW
}

/// Makes a reply from the daemon's resolver appear to come from the server the agent
/// asked. Minimum kernel: 5.2 (recvmsg hooks); recvmsg programs must return 1.
#[cgroup_sock_addr(recvmsg4)]
pub fn sluice_recvmsg4(ctx: SockAddrContext) -> i32 {
    let Some(config) = enabled_config() else {
        return ALLOW;
    };
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    if config.dns_port == 0
        || sock_addr.user_ip4 != config.listen_ip4
        || u16::from_be(sock_addr.user_port as u16) != config.dns_port
    {
        return ALLOW;
    }
    let origin = redirected_origin(socket_of(&ctx));
    if origin.is_null() {
        return ALLOW;
    }
    let origin = unsafe { &*origin };
    if origin.dst_family == AF_INET {
        write4(&ctx, origin.dst_ip[0], origin.dst_port);
    }
    ALLOW
}

/// The IPv6 twin of [`sluice_recvmsg4`], for replies to IPv6 and v4-mapped queries.
/// Minimum kernel: 5.2.
#[cgroup_sock_addr(recvmsg6)]
pub fn sluice_recvmsg6(ctx: SockAddrContext) -> i32 {
    let Some(config) = enabled_config() else {
        return ALLOW;
    };
    let sock_addr = unsafe { &mut *ctx.sock_addr };
    let source = [
        sock_addr.user_ip6[0],
        sock_addr.user_ip6[1],
        sock_addr.user_ip6[2],
        sock_addr.user_ip6[3],
    ];
    let from_resolver = if is_v4_mapped(&source) {
        source[3] == config.listen_ip4
    } else {
        source == config.listen_ip6
    };
    if config.dns_port == 0
        || !from_resolver
        || u16::from_be(sock_addr.user_port as u16) != config.dns_port
    {
        return ALLOW;
    }
    let origin = redirected_origin(socket_of(&ctx));
    if origin.is_null() {
        return ALLOW;
    }
    let origin = unsafe { &*origin };
    // An IPv6 socket's unconnected send to a v4-mapped address runs the sendmsg4 hook,
    // which records a plain IPv4 origin: shown v4-mapped here all the same.
    write6(
        &ctx,
        origin.v4_mapped == 1 || origin.dst_family == AF_INET,
        origin.dst_ip[0],
        &origin.dst_ip,
        origin.dst_port,
    );
    ALLOW
}

const IP_HEADER_PROTOCOL: usize = 9;
const IP6_HEADER_NEXT: usize = 6;
const IP6_HEADER_LEN: usize = 40;

/// Files who sent a DNS datagram bound for the daemon's resolver under the datagram's
/// 4-tuple, which the resolver looks up with its `recv_from` address. The connect hook
/// runs before a UDP socket has a port, so only the packet carries the source port.
/// Called by the egress backstop (`containment`) for the packets it lets through to the
/// resolver: one program per packet, not two.
#[inline(always)]
pub(crate) fn file_dns_query(ctx: &SkBuffContext) -> Option<()> {
    let config = enabled_config()?;
    if config.dns_port == 0 {
        return None;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast::<c_void>()) };
    let origin = *unsafe { SLUICE_DNS_SOCKETS.get(cookie) }?;
    let version = ctx.load::<u8>(0).ok()? >> 4;
    let mut key = ConnKey::default();
    let udp_offset = if version == 4 {
        if ctx.load::<u8>(IP_HEADER_PROTOCOL).ok()? != IPPROTO_UDP as u8 {
            return None;
        }
        key.family = AF_INET as u32;
        key.src_ip[0] = ctx.load::<u32>(12).ok()?;
        key.dst_ip[0] = ctx.load::<u32>(16).ok()?;
        usize::from(ctx.load::<u8>(0).ok()? & 0x0f) * 4
    } else if version == 6 {
        if ctx.load::<u8>(IP6_HEADER_NEXT).ok()? != IPPROTO_UDP as u8 {
            return None;
        }
        key.family = AF_INET6 as u32;
        key.src_ip = [
            ctx.load::<u32>(8).ok()?,
            ctx.load::<u32>(12).ok()?,
            ctx.load::<u32>(16).ok()?,
            ctx.load::<u32>(20).ok()?,
        ];
        key.dst_ip = [
            ctx.load::<u32>(24).ok()?,
            ctx.load::<u32>(28).ok()?,
            ctx.load::<u32>(32).ok()?,
            ctx.load::<u32>(36).ok()?,
        ];
        IP6_HEADER_LEN
    } else {
        return None;
    };
    key.src_port = u16::from_be(ctx.load::<u16>(udp_offset).ok()?);
    key.dst_port = u16::from_be(ctx.load::<u16>(udp_offset + 2).ok()?);
    if key.dst_port != config.dns_port {
        return None;
    }
    SLUICE_DNS_QUERIES.insert(key, origin, 0).ok()
}

/// `true` for `::ffff:a.b.c.d`.
#[inline(always)]
fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD
}

const TCP_FLAGS_OFFSET: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Files a redirected connection's record under its 4-tuple as its SYN leaves, for the
/// daemon to look up with the accepted stream's peer and local addresses. Called by the
/// egress backstop (`containment`) for the TCP packets it lets through to the listener,
/// so a connection costs no program run of its own here: sock_ops, which did this
/// before, ran for five callbacks per connection (four of them useless, none can be
/// turned off). Each SYN (a retransmitted one too) files the record again, before the
/// daemon can accept the connection; none is sent after the handshake. The record is
/// the one connect4/6 left on the socket; a socket without one was not redirected.
/// The packet is the kernel's own SYN (agents cannot craft packets: raw and packet
/// sockets are refused), and IPv6 extension headers never reach here (the backstop
/// drops such packets), so the TCP header follows the fixed IPv6 header.
#[inline(always)]
pub(crate) fn file_connection(ctx: &SkBuffContext) -> Option<()> {
    let first = ctx.load::<u8>(0).ok()?;
    let version = first >> 4;
    let tcp_offset = if version == 4 {
        usize::from(first & 0x0f) * 4
    } else {
        IP6_HEADER_LEN
    };
    let flags = ctx.load::<u8>(tcp_offset + TCP_FLAGS_OFFSET).ok()?;
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return None;
    }
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    let origin = redirected_origin(full.cast());
    if origin.is_null() {
        return None;
    }
    let mut key = ConnKey::default();
    if version == 4 {
        key.family = AF_INET as u32;
        key.src_ip[0] = ctx.load::<u32>(12).ok()?;
        key.dst_ip[0] = ctx.load::<u32>(16).ok()?;
    } else {
        key.family = AF_INET6 as u32;
        key.src_ip = [
            ctx.load::<u32>(8).ok()?,
            ctx.load::<u32>(12).ok()?,
            ctx.load::<u32>(16).ok()?,
            ctx.load::<u32>(20).ok()?,
        ];
        key.dst_ip = [
            ctx.load::<u32>(24).ok()?,
            ctx.load::<u32>(28).ok()?,
            ctx.load::<u32>(32).ok()?,
            ctx.load::<u32>(36).ok()?,
        ];
    }
    key.src_port = u16::from_be(ctx.load::<u16>(tcp_offset).ok()?);
    key.dst_port = u16::from_be(ctx.load::<u16>(tcp_offset + 2).ok()?);
    SLUICE_CONNECTIONS.insert(key, unsafe { *origin }, 0).ok()
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
