//! SSH: transparent interception with a host CA, brokered logins, per-channel judging
//! and terminal recording. See `proxy.rs` for the connection, `command.rs` for how a
//! command line becomes an operation class, `ca.rs` for how `ssh` trusts the daemon.

pub mod ca;
pub mod command;
pub mod proxy;
pub mod recording;
