//! The control API: how the `sluice` CLI (and anything else an administrator runs) talks
//! to the daemon.
//!
//! It is HTTP/1.1 with JSON bodies over a unix socket, so that access is decided by the
//! kernel's view of the peer (`SO_PEERCRED`) rather than by secrets, and so that `curl
//! --unix-socket` works for scripting. The wire format is documented in `docs/api.md`
//! and is a stable interface: fields may be added, never renamed or removed.
//!
//! - [`api`]: the request and response types, shared by server and client.
//! - [`auth`]: who may talk to the daemon (root or the admin group, never an agent).
//! - [`socket`]: creating the socket file with the right owner and mode.
//! - [`server`]: the accept loop; [`routes`]: the one table every route is added to.
//! - [`client`]: the CLI side.

pub mod api;
pub mod auth;
pub mod client;
mod query;
pub mod routes;
pub mod server;
pub mod socket;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

pub use api::{
    BackendError, ControlBackend, DEFAULT_SESSION_LIMIT, ErrorBody, GrantRequest, PolicyStatus,
    ProgramStatus, ReloadReport, RevokeRequest, SessionQuery, StatusReport, StoreStatus,
};
pub use auth::{Authorizer, PeerInfo, Refusal};
pub use client::{ClientError, ControlClient};
pub use server::serve;
pub use socket::{ControlError, bind_control_socket, resolve_admin_group};

/// The backend as the server holds it.
pub type SharedBackend = Arc<dyn ControlBackend>;
