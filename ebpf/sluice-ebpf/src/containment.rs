//! The programs that keep an agent from routing around the redirect.
//!
//! The sock_addr hooks in `programs` see connects and sends of inet sockets that were
//! created inside the managed cgroup. These close the other ways out:
//!
//! - `sluice_sock_create` (cgroup/sock_create): refuses inet `SOCK_RAW` sockets, which
//!   an agent gets inside its own user namespace, and marks every inet socket created
//!   in the cgroup so the LSM programs can tell a foreign one.
//! - `sluice_lsm_socket_create` (BPF LSM socket_create): refuses `AF_PACKET` and every
//!   family sluice does not mediate, for tasks in the managed tree.
//! - `sluice_foreign_connect4/6`, `sluice_foreign_sendmsg4/6` (sock_addr hooks attached
//!   to the cgroup2 root, so they run for every socket): refuse connecting, or sending
//!   unconnected datagrams on, an inet socket that was created outside the cgroup
//!   (passed in over SCM_RIGHTS, taken with pidfd_getfd) when a task in the managed tree
//!   does it. The managed cgroup's own hooks run for the socket's cgroup, so they would
//!   never see such a socket. They decide by the calling task, never touch a socket of
//!   the managed cgroup, and let everything else through.
//! - `sluice_lsm_socket_connect`/`sluice_lsm_socket_sendmsg` (BPF LSM): the same check
//!   for connect and for every send, so also on a socket connected outside.
//! - `sluice_skb_egress` (cgroup_skb/egress): the backstop. It drops every packet of the
//!   cgroup's sockets that is not bound for the daemon, counts it and reports it; of
//!   the packets it lets through it files, for the daemon, the record of each
//!   redirected connection as its SYN leaves (`programs::file_connection`) and the
//!   sender of each DNS datagram (`programs::file_dns_query`).
//!
//! BPF LSM programs are global, so they first check that the calling task is inside
//! the managed tree (`SLUICE_SCOPE`); a zeroed scope manages nothing. They read three
//! kernel struct fields at fixed offsets (aya has no CO-RE): `socket.type` (4), `socket.sk` (24)
//! and `sock_common.skc_family` (16), unchanged since 5.3; the verifier checks both reads
//! against the running kernel's BTF, so a different layout fails the load loudly.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_SK_STORAGE_GET_F_CREATE,
    btf_maps::{Array, PerCpuArray, SkStorage},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_comm,
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_get_socket_uid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_sk_fullsock, bpf_sk_storage_get, bpf_skb_cgroup_id,
    },
    macros::{btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, lsm},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext},
};
use sluice_common::{
    AF_INET, AF_INET6, HOOK_CONNECT, HOOK_LSM_SOCKET_CONNECT, HOOK_LSM_SOCKET_CREATE,
    HOOK_LSM_SOCKET_SENDMSG, HOOK_SENDMSG, HOOK_SKB_EGRESS, HOOK_SOCK_CREATE, ManagedScope, Origin,
    Refusal, RefusalReason,
};

use crate::programs::{ALLOW, REFUSE, SLUICE_REFUSALS, enabled_config};

const SOCK_RAW: u32 = 3;
const AF_UNIX: u16 = 1;
const AF_NETLINK: u16 = 16;
const AF_PACKET: u16 = 17;
const AF_ALG: u16 = 38;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const EPERM: i32 = 1;
/// `offsetof(struct socket, sk)` since 5.3.
const SOCKET_SK_OFFSET: usize = 24;
/// `offsetof(struct socket, type)`.
const SOCKET_TYPE_OFFSET: usize = 4;
/// `offsetof(struct sock_common, skc_family)`.
const SKC_FAMILY_OFFSET: usize = 16;

#[btf_map]
static SLUICE_SCOPE: Array<ManagedScope, 1> = Array::new();

/// Who created a socket in the managed cgroup. Its presence marks the socket as made
/// inside; the backstop reports the creator, since a cgroup_skb program cannot ask for
/// the current task on 6.12 and older (and the task sending a packet need not own it).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct SocketOwner {
    tgid: u32,
    tid: u32,
    uid: u32,
    gid: u32,
    comm: [u8; 16],
}

/// Everything sluice keeps on an inet socket created in the managed cgroup, in one
/// storage element: who created it (its presence marks the socket as made inside) and,
/// once connect4/6 or sendmsg4/6 redirected it, where it was going (`origin.dst_family`
/// is 0 until then). One element, not two: each costs an allocation per socket.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ManagedSocket {
    pub owner: SocketOwner,
    _reserved: u32,
    pub origin: Origin,
}

#[btf_map]
pub(crate) static SLUICE_MANAGED_SOCKETS: SkStorage<ManagedSocket> = SkStorage::new();

#[btf_map]
static SLUICE_BACKSTOP_DROPS: PerCpuArray<u64, 1> = PerCpuArray::new();

/// The calling task's identity, for a refusal that has no destination.
#[inline(always)]
fn task_origin(family: u16) -> Origin {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    Origin {
        dst_family: family,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        connect_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..Origin::default()
    }
}

#[inline(always)]
fn report(reason: RefusalReason, protocol: u32, hook: u32, socket_type: u32, origin: Origin) {
    // A full ring buffer loses the report, never the refusal.
    let _ = SLUICE_REFUSALS.output(
        Refusal {
            reason: reason as u32,
            protocol,
            hook,
            socket_type,
            origin,
        },
        0,
    );
}

/// Whether the calling task is inside the managed tree.
#[inline(always)]
fn current_is_managed() -> bool {
    let Some(scope) = SLUICE_SCOPE.get(0) else {
        return false;
    };
    // Level 0 is the whole machine: never a valid scope.
    if scope.enabled != 1 || scope.level == 0 {
        return false;
    }
    unsafe { bpf_get_current_ancestor_cgroup_id(scope.level as i32) == scope.cgroup_id }
}

/// Refuses inet raw sockets and marks every other inet socket created in the cgroup.
/// Minimum kernel: 5.11 (socket-local storage from cgroup/sock_create); the ring
/// buffer needs 5.8.
#[cgroup_sock(sock_create)]
pub fn sluice_sock_create(ctx: SockContext) -> i32 {
    let sock = unsafe { &*ctx.sock };
    if sock.type_ == SOCK_RAW {
        report(
            RefusalReason::RawSocket,
            sock.protocol,
            HOOK_SOCK_CREATE,
            sock.type_,
            task_origin(sock.family as u16),
        );
        return REFUSE;
    }
    let marker = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&SLUICE_MANAGED_SOCKETS)
                .cast_mut()
                .cast(),
            ctx.sock.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    }
    .cast::<ManagedSocket>();
    if marker.is_null() {
        // Unmarked, the LSM would refuse the socket's every use: refuse it now, loudly.
        report(
            RefusalReason::NotConfigured,
            sock.protocol,
            HOOK_SOCK_CREATE,
            sock.type_,
            task_origin(sock.family as u16),
        );
        return REFUSE;
    }
    // A new element is zeroed: no origin yet.
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    unsafe {
        (*marker).owner = SocketOwner {
            tgid: (pid_tgid >> 32) as u32,
            tid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        };
    }
    ALLOW
}

/// Refuses `AF_PACKET` and every family sluice does not mediate for managed tasks.
/// Unix, inet, netlink and AF_ALG (local crypto) are left to the other hooks.
/// Minimum kernel: 5.7 with the bpf LSM active (`lsm=...,bpf`); 5.8 for the ring buffer.
#[lsm(hook = "socket_create")]
pub fn sluice_lsm_socket_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(4);
    if previous != 0 {
        return previous;
    }
    let family: i32 = ctx.arg(0);
    let socket_type: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    if kern != 0 || !current_is_managed() {
        return 0;
    }
    let family = family as u16;
    if matches!(family, AF_UNIX | AF_INET | AF_INET6 | AF_NETLINK | AF_ALG) {
        return 0;
    }
    let reason = if family == AF_PACKET {
        RefusalReason::PacketSocket
    } else {
        RefusalReason::SocketFamily
    };
    report(
        reason,
        protocol as u32,
        HOOK_LSM_SOCKET_CREATE,
        socket_type as u32,
        task_origin(family),
    );
    -EPERM
}

/// Refuses a managed task's connect or send on an inet socket created outside the
/// cgroup. Runs for every socket on the machine: anything else passes untouched.
#[inline(always)]
fn refuse_foreign_sock_addr(ctx: &SockAddrContext, hook: u32, family: u16) -> i32 {
    if !current_is_managed() {
        return ALLOW;
    }
    if !unsafe { SLUICE_MANAGED_SOCKETS.get_ptr_mut(ctx) }.is_null() {
        return ALLOW;
    }
    let sock_addr = unsafe { &*ctx.sock_addr };
    let mut origin = task_origin(family);
    origin.dst_port = u16::from_be(sock_addr.user_port as u16);
    if family == AF_INET {
        origin.dst_ip[0] = sock_addr.user_ip4;
    } else {
        origin.dst_ip = [
            sock_addr.user_ip6[0],
            sock_addr.user_ip6[1],
            sock_addr.user_ip6[2],
            sock_addr.user_ip6[3],
        ];
    }
    report(
        RefusalReason::ForeignSocket,
        sock_addr.protocol,
        hook,
        sock_addr.type_,
        origin,
    );
    REFUSE
}

/// Refuses connecting a socket passed in from outside (IPv4). Attached to the cgroup2
/// root. Minimum kernel: 5.8 (ring buffer; connect4 is 4.17).
#[cgroup_sock_addr(connect4)]
pub fn sluice_foreign_connect4(ctx: SockAddrContext) -> i32 {
    refuse_foreign_sock_addr(&ctx, HOOK_CONNECT, AF_INET)
}

/// Refuses connecting a socket passed in from outside (IPv6). Attached to the cgroup2
/// root. Minimum kernel: 5.8.
#[cgroup_sock_addr(connect6)]
pub fn sluice_foreign_connect6(ctx: SockAddrContext) -> i32 {
    refuse_foreign_sock_addr(&ctx, HOOK_CONNECT, AF_INET6)
}

/// Refuses unconnected sends on a socket passed in from outside (IPv4). Attached to the
/// cgroup2 root. Minimum kernel: 5.8.
#[cgroup_sock_addr(sendmsg4)]
pub fn sluice_foreign_sendmsg4(ctx: SockAddrContext) -> i32 {
    refuse_foreign_sock_addr(&ctx, HOOK_SENDMSG, AF_INET)
}

/// Refuses unconnected sends on a socket passed in from outside (IPv6). Attached to the
/// cgroup2 root. Minimum kernel: 5.8.
#[cgroup_sock_addr(sendmsg6)]
pub fn sluice_foreign_sendmsg6(ctx: SockAddrContext) -> i32 {
    refuse_foreign_sock_addr(&ctx, HOOK_SENDMSG, AF_INET6)
}

/// The `struct sock *` of a `struct socket *`, as a BTF pointer the verifier tracks.
#[inline(always)]
fn socket_sk(socket: *const u8) -> *mut c_void {
    unsafe { core::ptr::read_volatile(socket.add(SOCKET_SK_OFFSET).cast::<*mut c_void>()) }
}

/// Fills in where a refused connect or send was going: the address the caller gave
/// (`address`, a kernel copy of its sockaddr; null when it gave none), else for a
/// connected IPv4 socket its peer. Left unset when neither is known.
#[inline(always)]
fn fill_destination(origin: &mut Origin, address: *const u8, sk: *const u8) {
    if !address.is_null() {
        let family = unsafe { bpf_probe_read_kernel(address.cast::<u16>()) }.unwrap_or(0);
        let port = unsafe { bpf_probe_read_kernel(address.add(2).cast::<u16>()) }.unwrap_or(0);
        if family == AF_INET {
            // struct sockaddr_in: the address at 4.
            origin.dst_ip[0] =
                unsafe { bpf_probe_read_kernel(address.add(4).cast::<u32>()) }.unwrap_or(0);
            origin.dst_port = u16::from_be(port);
            return;
        }
        if family == AF_INET6 {
            // struct sockaddr_in6: the address at 8.
            origin.dst_ip = unsafe { bpf_probe_read_kernel(address.add(8).cast::<[u32; 4]>()) }
                .unwrap_or([0; 4]);
            origin.dst_port = u16::from_be(port);
            return;
        }
    }
    if origin.dst_family == AF_INET {
        // struct sock_common: skc_daddr at 0, skc_dport at 12.
        origin.dst_ip[0] = unsafe { bpf_probe_read_kernel(sk.cast::<u32>()) }.unwrap_or(0);
        let port = unsafe { bpf_probe_read_kernel(sk.add(12).cast::<u16>()) }.unwrap_or(0);
        origin.dst_port = u16::from_be(port);
    }
}

/// Refuses a managed task's use of an inet socket created outside the cgroup.
/// `address` is the sockaddr the caller named, or null.
#[inline(always)]
fn check_foreign_socket(socket: *const u8, address: *const u8, hook: u32) -> i32 {
    if !current_is_managed() {
        return 0;
    }
    let sk = socket_sk(socket);
    if sk.is_null() {
        return 0;
    }
    let family =
        unsafe { core::ptr::read_volatile(sk.cast::<u8>().add(SKC_FAMILY_OFFSET).cast::<u16>()) };
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let marker = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&SLUICE_MANAGED_SOCKETS)
                .cast_mut()
                .cast(),
            sk,
            core::ptr::null_mut(),
            0,
        )
    };
    if !marker.is_null() {
        return 0;
    }
    let socket_type =
        unsafe { core::ptr::read_volatile(socket.add(SOCKET_TYPE_OFFSET).cast::<i16>()) };
    let mut origin = task_origin(family);
    fill_destination(&mut origin, address, sk.cast::<u8>());
    report(
        RefusalReason::ForeignSocket,
        0,
        hook,
        socket_type as u32,
        origin,
    );
    -EPERM
}

/// Refuses connecting a socket created outside the cgroup. Minimum kernel: 5.7 with
/// the bpf LSM active; 5.8 for the ring buffer.
#[lsm(hook = "socket_connect")]
pub fn sluice_lsm_socket_connect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let socket: *const u8 = ctx.arg(0);
    let address: *const u8 = ctx.arg(1);
    check_foreign_socket(socket, address, HOOK_LSM_SOCKET_CONNECT)
}

/// Refuses sending on a socket created outside the cgroup (already connected, or
/// unconnected UDP). Minimum kernel: 5.7 with the bpf LSM active; 5.8 for the ring
/// buffer.
#[lsm(hook = "socket_sendmsg")]
pub fn sluice_lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    let socket: *const u8 = ctx.arg(0);
    let message: *const u8 = ctx.arg(1);
    // struct msghdr: msg_name (a kernel copy of the address, or null) comes first.
    let address = if message.is_null() {
        core::ptr::null()
    } else {
        unsafe { bpf_probe_read_kernel(message.cast::<*const u8>()) }.unwrap_or(core::ptr::null())
    };
    check_foreign_socket(socket, address, HOOK_LSM_SOCKET_SENDMSG)
}

/// A packet's network and transport header fields the backstop needs.
struct Packet {
    family: u16,
    protocol: u8,
    dst_ip: [u32; 4],
    dst_port: u16,
}

#[inline(always)]
fn parse_packet(ctx: &SkBuffContext) -> Option<Packet> {
    let version = ctx.load::<u8>(0).ok()? >> 4;
    if version == 4 {
        let header_len = usize::from(ctx.load::<u8>(0).ok()? & 0x0f) * 4;
        let protocol = ctx.load::<u8>(9).ok()?;
        let dst_port = if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP {
            u16::from_be(ctx.load::<u16>(header_len + 2).ok()?)
        } else {
            0
        };
        Some(Packet {
            family: AF_INET,
            protocol,
            dst_ip: [ctx.load::<u32>(16).ok()?, 0, 0, 0],
            dst_port,
        })
    } else if version == 6 {
        // Extension headers are not walked: such packets are not the daemon's, and drop.
        let protocol = ctx.load::<u8>(6).ok()?;
        let dst_port = if protocol == IPPROTO_TCP || protocol == IPPROTO_UDP {
            u16::from_be(ctx.load::<u16>(40 + 2).ok()?)
        } else {
            0
        };
        Some(Packet {
            family: AF_INET6,
            protocol,
            dst_ip: [
                ctx.load::<u32>(24).ok()?,
                ctx.load::<u32>(28).ok()?,
                ctx.load::<u32>(32).ok()?,
                ctx.load::<u32>(36).ok()?,
            ],
            dst_port,
        })
    } else {
        None
    }
}

/// Whether the packet goes to the daemon: TCP to its redirect listener, or UDP to its
/// DNS resolver.
#[inline(always)]
fn is_for_daemon(packet: &Packet) -> bool {
    let Some(config) = enabled_config() else {
        return false;
    };
    let to_listener_ip = if packet.family == AF_INET {
        packet.dst_ip[0] == config.listen_ip4
    } else {
        packet.dst_ip == config.listen_ip6
    };
    if !to_listener_ip {
        return false;
    }
    match packet.protocol {
        IPPROTO_TCP => packet.dst_port == config.listen_port,
        IPPROTO_UDP => config.dns_port != 0 && packet.dst_port == config.dns_port,
        _ => false,
    }
}

/// Who created the packet's socket if it was made in the managed cgroup; zeroes if
/// not known.
#[inline(always)]
fn socket_owner(ctx: &SkBuffContext) -> SocketOwner {
    let unknown = SocketOwner {
        tgid: 0,
        tid: 0,
        uid: 0,
        gid: 0,
        comm: [0; 16],
    };
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return unknown;
    }
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return unknown;
    }
    let owner = unsafe {
        bpf_sk_storage_get(
            core::ptr::from_ref(&SLUICE_MANAGED_SOCKETS)
                .cast_mut()
                .cast(),
            full.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<ManagedSocket>();
    if owner.is_null() {
        unknown
    } else {
        unsafe { (*owner).owner }
    }
}

/// The backstop: drops every packet of the cgroup's sockets that is not bound for the
/// daemon, counts it and reports it. Outbound connects and sends never reach it; what
/// does is traffic no sock_addr hook sees, such as the replies on a connection a peer
/// outside made to an agent's listening socket (accept and sends on an accepted
/// socket run no hook). Packets of an unconfigured daemon are dropped too. Of the
/// packets it lets through, a redirected connection's SYN files the connection's record
/// for the daemon and a DNS datagram its sender.
/// Minimum kernel: 5.8 (ring buffer; cgroup_skb itself is 4.10, socket-local storage
/// and `bpf_sk_fullsock` in it 5.2).
#[cgroup_skb(egress)]
pub fn sluice_skb_egress(ctx: SkBuffContext) -> i32 {
    // Every field defined on every path: the verifier refuses a copy of an undefined
    // register, which an `Option` payload can leave behind.
    let packet = parse_packet(&ctx).unwrap_or(Packet {
        family: 0,
        protocol: 0,
        dst_ip: [0; 4],
        dst_port: 0,
    });
    if packet.family != 0 && is_for_daemon(&packet) {
        if packet.protocol == IPPROTO_UDP {
            let _ = crate::programs::file_dns_query(&ctx);
        } else {
            let _ = crate::programs::file_connection(&ctx);
        }
        return 1;
    }
    if let Some(drops) = SLUICE_BACKSTOP_DROPS.get_ptr_mut(0) {
        unsafe { *drops += 1 };
    }
    // The socket's cgroup and owner, not whichever task happens to be running (which
    // a cgroup_skb program cannot even ask for on 6.12 and older).
    let mut origin = Origin {
        cgroup_id: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
        uid: unsafe { bpf_get_socket_uid(ctx.skb.skb) },
        connect_ns: unsafe { bpf_ktime_get_ns() },
        ..Origin::default()
    };
    let owner = socket_owner(&ctx);
    origin.tgid = owner.tgid;
    origin.tid = owner.tid;
    origin.gid = owner.gid;
    origin.comm = owner.comm;
    origin.dst_family = packet.family;
    origin.dst_ip = packet.dst_ip;
    origin.dst_port = packet.dst_port;
    report(
        RefusalReason::SkbBackstop,
        u32::from(packet.protocol),
        HOOK_SKB_EGRESS,
        0,
        origin,
    );
    0
}
