//! The protocol registry: which protocols this sluice decodes, and their handlers.
//!
//! Each protocol lives in its own module below this one and reaches the rest of the
//! daemon only through the [`crate::pipeline`] (judge, hold, mask, record) and the core
//! modules. Nothing outside `protocols/` names a protocol module: `session.rs`
//! dispatches through [`Registry::handler`], and the policy loader learns which
//! protocols can be enforced from [`Registry::supported`]. Protocol modules never
//! import each other; a connection carried inside another (an HTTP CONNECT tunnel, an
//! SSH forward) goes back through the registry as a nested session
//! ([`crate::pipeline::SessionInfo::nested`]).
//!
//! Adding a protocol is its module plus one line in [`Registry::standard`].

pub mod http;
pub mod kubernetes;
pub mod mysql;
pub mod postgres;
pub mod ssh;

/// sluice's SSH CA, for `sluice ssh-ca` (which makes OpenSSH trust it).
pub use ssh::ca as ssh_ca;

/// sluice's local CA (for `sluice ca` and `sluice run`, which hand it to agents).
pub use http::ca as local_ca;
/// The hook a protocol carried over HTTP(S) plugs into the `http` transport with
/// (Kubernetes is the `http` handler with its dialect, registered below).
pub use http::{BodyFilter, Dialect, Exchange, Judged, Relayed};
/// Kubernetes request mapping and kubeconfigs, for `sluice policy explain
/// --kubernetes` and `sluice kubeconfig`.
pub use kubernetes::{
    dialect::summary as kubernetes_summary, kubeconfig as kubernetes_kubeconfig,
    request as kubernetes_request,
};

#[cfg(test)]
mod layout;

use std::path::Path;

use crate::{
    pipeline::{BoxFuture, ByteStream, Closed, Dial, SessionInfo, Upstream},
    policy::{Protocol, SupportedProtocols},
};

/// A protocol decoder: runs one session of its protocol to the end.
pub trait ProtocolHandler: Send + Sync {
    /// The protocol resources name in policy files.
    fn protocol(&self) -> Protocol;

    /// Loads what the handler keeps across sessions from the daemon's state directory
    /// (the HTTP handler's local CA), once at start. `public_dir` is world-readable
    /// (next to the control socket) for what agents may read.
    fn prepare(&self, _state_dir: &Path, _public_dir: Option<&Path>) -> Result<(), String> {
        Ok(())
    }

    /// Whether `session.rs` dials the upstream first ([`Dial::BySession`], the
    /// default) or the handler does.
    fn dial(&self) -> Dial {
        Dial::BySession
    }

    /// Serves one session: `agent` is the agent's side (a redirected TCP connection or
    /// a nested tunnel), `upstream` as [`Self::dial`] asked. Returns why it ended.
    fn serve<'a>(
        &'a self,
        session: SessionInfo,
        agent: Box<dyn ByteStream>,
        upstream: Upstream,
    ) -> BoxFuture<'a, Closed>;
}

/// The handlers of the protocols this build decodes.
pub struct Registry {
    handlers: Vec<Box<dyn ProtocolHandler>>,
}

impl Registry {
    /// Every protocol sluice decodes: one registration line per protocol.
    pub fn standard() -> Self {
        let mut registry = Self::empty();
        registry.register(postgres::Handler::default());
        registry.register(http::Handler::default());
        registry.register(mysql::Handler::default());
        registry.register(http::Handler::with_dialect(
            Protocol::Kubernetes,
            kubernetes::Kubernetes::dialect(),
        ));
        registry.register(ssh::Handler);
        registry
    }

    /// No decoded protocol: connections are relayed as TCP (and DNS answered).
    pub fn empty() -> Self {
        Self {
            handlers: Vec::new(),
        }
    }

    /// Adds (or replaces) the handler of its protocol.
    pub fn register(&mut self, handler: impl ProtocolHandler + 'static) {
        self.handlers
            .retain(|existing| existing.protocol() != handler.protocol());
        self.handlers.push(Box::new(handler));
    }

    /// Runs every handler's [`ProtocolHandler::prepare`]; the first error names its
    /// protocol.
    pub fn prepare(&self, state_dir: &Path, public_dir: Option<&Path>) -> Result<(), String> {
        for handler in &self.handlers {
            handler
                .prepare(state_dir, public_dir)
                .map_err(|error| format!("{}: {error}", handler.protocol()))?;
        }
        Ok(())
    }

    /// The handler of `protocol`; `None` for the protocols the core serves (`tcp`,
    /// `dns`) and for those no handler decodes.
    pub fn handler(&self, protocol: Protocol) -> Option<&dyn ProtocolHandler> {
        self.handlers
            .iter()
            .find(|handler| handler.protocol() == protocol)
            .map(Box::as_ref)
    }

    /// The protocols a policy may name: the core's (`tcp`, `dns`) and every
    /// registered handler's.
    pub fn supported(&self) -> SupportedProtocols {
        SupportedProtocols::core().with(self.handlers.iter().map(|handler| handler.protocol()))
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::standard()
    }
}
