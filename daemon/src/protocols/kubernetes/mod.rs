//! The Kubernetes API: every request judged in Kubernetes terms (verb, API group,
//! resource, subresource, namespace, name), Secrets masked, exec recorded.
//!
//! Kubernetes is HTTPS, so the transport (TLS interception with sluice's CA, upstream
//! verification, credential injection, hyper on both sides, one record per request)
//! is the `http` protocol's; this module supplies what differs: the API server's own
//! request mapping ([`request`]), judging and `Status` answers ([`dialect`]), and the
//! masking of Secrets ([`mask`]). It is the one protocol module built on another: it
//! plugs into `http` through that module's [`crate::protocols::http::Dialect`] hook
//! rather than copying the transport.

pub mod dialect;
pub mod kubeconfig;
pub mod mask;
pub mod request;

pub use dialect::Kubernetes;

use std::path::Path;

use crate::{
    pipeline::{BoxFuture, ByteStream, Closed, Dial, SessionInfo, Upstream},
    policy::Protocol,
};

/// The `kubernetes` protocol handler: the `http` handler's transport with the
/// [`Kubernetes`] dialect.
pub struct Handler(super::http::Handler);

impl Default for Handler {
    fn default() -> Self {
        Self(super::http::Handler::with_dialect(
            Protocol::Kubernetes,
            Kubernetes::dialect(),
        ))
    }
}

impl super::ProtocolHandler for Handler {
    fn protocol(&self) -> Protocol {
        Protocol::Kubernetes
    }

    fn dial(&self) -> Dial {
        self.0.dial()
    }

    fn prepare(&self, state_dir: &Path, public_dir: Option<&Path>) -> Result<(), String> {
        self.0.prepare(state_dir, public_dir)
    }

    fn serve<'a>(
        &'a self,
        session: SessionInfo,
        agent: Box<dyn ByteStream>,
        upstream: Upstream,
    ) -> BoxFuture<'a, Closed> {
        self.0.serve(session, agent, upstream)
    }
}
