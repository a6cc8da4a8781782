//! sluice's eBPF programs, attached to the managed cgroup by the daemon.
//!
//! They turn every outbound TCP connect of an agent into a connect to the daemon's
//! redirect listener, and leave behind where it was going and who asked:
//!
//! 1. `sluice_connect4`/`sluice_connect6` (cgroup/connect4, cgroup/connect6) record the
//!    original destination and the task's identity in socket-local storage, then
//!    rewrite the destination to the listener.
//! 2. The egress backstop (cgroup_skb/egress, see `containment`) copies the socket's
//!    record, as the connection's SYN leaves, to a map keyed by the connection's full
//!    4-tuple, which the daemon looks up with the accepted stream's peer and local
//!    addresses. (sock_ops did this until 2026-12: it ran five times per connection.)
//! 3. `sluice_getpeername4`/`sluice_getpeername6` show the agent its original peer.
//! 4. `sluice_sendmsg4`/`sluice_sendmsg6` refuse unconnected UDP other than DNS.
//! 5. DNS: UDP to port 53, connected (connect4/6) or not (sendmsg4/6), is rewritten to
//!    the daemon's resolver port; the egress backstop (cgroup_skb/egress) files
//!    the sender under each query's 4-tuple, and `sluice_recvmsg4`/`sluice_recvmsg6`
//!    (5.2) make the replies appear to come from the server the agent asked. TCP to
//!    port 53 is redirected like any TCP; the daemon hands it to its resolver.
//! 6. `containment` closes the other ways out: raw and packet sockets, sockets passed
//!    in from outside the cgroup, and an egress backstop for packets no hook saw.
//!
//! Everything that is not TCP to a served namespace is refused and reported on a ring
//! buffer, so the daemon can record it. An unconfigured program refuses everything.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod containment;
#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Only the bpf target has programs; the host build exists so workspace tools work.
}

/// The kernel loads BPF LSM programs (and lets programs call GPL-only helpers) only when
/// the object declares a license it lists as GPL-compatible, and Apache-2.0, the rest of
/// the workspace's, is not on that list. So this crate is licensed MIT OR GPL-2.0 (its
/// Cargo.toml), declared to the kernel as "Dual MIT/GPL".
#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
