//! sluice's eBPF programs, attached to the managed cgroup by the daemon.
//!
//! They turn every outbound TCP connect of an agent into a connect to the daemon's
//! redirect listener, and leave behind where it was going and who asked:
//!
//! 1. `sluice_connect4`/`sluice_connect6` (cgroup/connect4, cgroup/connect6) record the
//!    original destination and the task's identity in socket-local storage and in a
//!    cookie-keyed hand-off map, then rewrite the destination to the listener.
//! 2. `sluice_sock_ops` (sock_ops, `TCP_CONNECT_CB`) moves the record to a map keyed by
//!    the connection's full 4-tuple, which the daemon looks up with the accepted stream's
//!    peer and local addresses.
//! 3. `sluice_getpeername4`/`sluice_getpeername6` show the agent its original peer.
//! 4. `sluice_sendmsg4`/`sluice_sendmsg6` refuse unconnected UDP other than DNS.
//!
//! Everything that is not TCP to a served namespace is refused and reported on a ring
//! buffer, so the daemon can record it. An unconfigured program refuses everything.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // Only the bpf target has programs; the host build exists so workspace tools work.
}
