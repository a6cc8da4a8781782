//! Records what the eBPF programs refused before it ever reached the daemon.
//!
//! UDP other than DNS, connects from another network namespace, connects to the
//! daemon's own ports, raw and packet sockets, sockets passed in from outside the
//! cgroup, packets the egress backstop dropped: the kernel refuses these and reports
//! each on a ring buffer. This task drains it into the store as denied
//! sessions, so refused attempts are as visible as denied connections.

use std::{os::fd::AsRawFd, sync::Arc};

use aya::maps::{MapData, RingBuf};
use sluice_common::{HOOK_LSM_SOCKET_CREATE, HOOK_SOCK_CREATE, Refusal, RefusalReason, hook_name};
use tokio::io::unix::AsyncFd;

use crate::{
    cgroup::ManagedRoot,
    identity::{comm_string, destination_of},
    store::{SessionRecord, Store},
};

const IPPROTO_UDP: u32 = 17;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

struct RingFd(RingBuf<MapData>);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Drains the refusal ring buffer forever.
pub async fn record_refusals(ring: RingBuf<MapData>, root: Arc<ManagedRoot>, store: Store) {
    // SAFETY: the AsyncFd owns the ring buffer, so the fd stays open while registered.
    let registered =
        unsafe { AsyncFd::register_with_interest(RingFd(ring), tokio::io::Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => {
            tracing::error!(%error, "cannot watch the refusal ring buffer: refusals will not be recorded");
            return;
        }
    };
    loop {
        let mut guard = match ring.readable_mut().await {
            Ok(guard) => guard,
            Err(error) => {
                tracing::error!(%error, "refusal ring buffer failed");
                return;
            }
        };
        let mut refusals = Vec::new();
        while let Some(item) = guard.get_inner_mut().0.next() {
            if let Some(refusal) = parse(&item) {
                refusals.push(refusal);
            }
        }
        guard.clear_ready();
        for refusal in refusals {
            let record = refusal_record(store.next_session_id(), &refusal, &root);
            tracing::info!(
                agent = %record.agent,
                destination = %record.destination,
                rule = %record.decision.rule,
                "refused in the kernel"
            );
            crate::metrics::global().connection("refused_in_kernel");
            if let Err(error) = crate::audit::record_refused(&store, &record).await {
                tracing::error!(%error, "cannot record a refusal");
            }
        }
    }
}

fn parse(bytes: &[u8]) -> Option<Refusal> {
    if bytes.len() < std::mem::size_of::<Refusal>() {
        return None;
    }
    // SAFETY: Refusal is repr(C) plain data, valid for any bit pattern, and the length
    // was checked; read_unaligned copes with the ring's alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Refusal>()) })
}

fn refusal_record(id: u64, refusal: &Refusal, root: &ManagedRoot) -> SessionRecord {
    let origin = &refusal.origin;
    let reason = RefusalReason::from_u32(refusal.reason);
    let reason_name = reason.map_or("unknown", RefusalReason::as_str);
    let hook = hook_name(refusal.hook);
    // A refused socket() has no destination: name what was asked for instead.
    let destination = if matches!(refusal.hook, HOOK_SOCK_CREATE | HOOK_LSM_SOCKET_CREATE) {
        format!(
            "socket(family {}, type {}, protocol {})",
            origin.dst_family, refusal.socket_type, refusal.protocol
        )
    } else {
        destination_of(origin).to_string()
    };
    SessionRecord {
        agent: root
            .agent_for_cgroup_id(origin.cgroup_id)
            .unwrap_or_default(),
        pid: origin.tgid,
        tid: origin.tid,
        uid: origin.uid,
        gid: origin.gid,
        comm: comm_string(&origin.comm),
        exe: std::fs::read_link(format!("/proc/{}/exe", origin.tgid))
            .ok()
            .map(|p| p.display().to_string()),
        cgroup: crate::cgroup::cgroup_path_of(origin.tgid).unwrap_or_default(),
        destination,
        transport: match (refusal.protocol, refusal.socket_type) {
            (IPPROTO_UDP, _) | (0, SOCK_DGRAM) => "udp".into(),
            (6, _) | (0, SOCK_STREAM) => "tcp".into(),
            (other, _) => format!("ipproto-{other}"),
        },
        ..SessionRecord::refused(
            id,
            format!("kernel:{reason_name}"),
            format!("refused in the {hook} hook: {}", describe(reason)),
        )
    }
}

fn describe(reason: Option<RefusalReason>) -> &'static str {
    match reason {
        Some(RefusalReason::NotConfigured) => "the interception was not configured",
        Some(RefusalReason::DaemonPort) => "agents may not reach the daemon's own ports",
        Some(RefusalReason::ForeignNetns) => {
            "the socket is in a network namespace sluice does not serve"
        }
        Some(RefusalReason::Udp) => "UDP other than DNS is not allowed",
        Some(RefusalReason::Protocol) => "sluice cannot mediate this protocol",
        Some(RefusalReason::RawSocket) => "raw IP sockets are not allowed",
        Some(RefusalReason::PacketSocket) => "packet sockets are not allowed",
        Some(RefusalReason::SocketFamily) => "sluice cannot mediate this socket family",
        Some(RefusalReason::ForeignSocket) => {
            "the socket was created outside the managed cgroup and passed in"
        }
        Some(RefusalReason::SkbBackstop) => {
            "a packet that no socket hook mediated was dropped at egress"
        }
        None => "unknown reason",
    }
}
