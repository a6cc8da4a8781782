//! HTTP(S): every request judged on its own, credentials injected so agents never hold
//! them, and every request recorded.
//!
//! A redirected connection to an `http` resource is recognised by its first bytes: a
//! TLS ClientHello (intercepted with sluice's local CA, see [`tls`] and [`ca`]), an
//! HTTP/1.x request line, or the HTTP/2 cleartext preface. Anything else is refused.
//! hyper serves the agent's side (HTTP/1.1 and HTTP/2) and a hyper client speaks to the
//! upstream over one connection kept 1:1 with the agent's, so nothing is ever pooled
//! across agents or hosts. Requests are re-serialised by hyper, never forwarded as the
//! agent's raw bytes, and redirects are passed to the agent, never followed.

pub mod ca;
mod decode;
mod guard_io;
mod h1guard;
mod h2guard;
mod mask;
mod proxy;
pub mod request;
pub mod scrub;
pub mod tls;

use proxy::serve;
pub use proxy::{BodyFilter, Dialect, Exchange, Judged, Relayed};

use std::{
    path::Path,
    sync::{Arc, OnceLock},
};

use crate::{
    pipeline::{BoxFuture, ByteStream, Closed, Dial, SessionInfo, Upstream},
    policy::Protocol,
};

/// The `http` protocol handler: holds the local CA for every session.
pub struct Handler {
    ca: OnceLock<Arc<ca::LocalCa>>,
    protocol: Protocol,
    dialect: Option<Arc<dyn Dialect>>,
}

impl Default for Handler {
    fn default() -> Self {
        Self {
            ca: OnceLock::new(),
            protocol: Protocol::Http,
            dialect: None,
        }
    }
}

impl Handler {
    /// The handler of a protocol carried over HTTP(S) (Kubernetes): this module's
    /// transport, judged and answered by `dialect`.
    pub fn with_dialect(protocol: Protocol, dialect: Arc<dyn Dialect>) -> Self {
        Self {
            ca: OnceLock::new(),
            protocol,
            dialect: Some(dialect),
        }
    }
}

impl super::ProtocolHandler for Handler {
    fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The handler dials: a CONNECT names the proxy's own address, never dialled.
    fn dial(&self) -> Dial {
        Dial::ByHandler
    }

    fn prepare(&self, state_dir: &Path, public_dir: Option<&Path>) -> Result<(), String> {
        let local = ca::LocalCa::load_or_create(&ca::CaPaths::in_state_dir(state_dir))
            .map_err(|error| format!("local CA: {error}"))?;
        if let Some(dir) = public_dir {
            match ca::publish(local.certificate_pem(), dir) {
                Ok(bundle) => tracing::info!(
                    bundle = %bundle.display(),
                    fingerprint = %local.fingerprint(),
                    "local CA ready (agents started with `sluice run` trust it)"
                ),
                Err(error) => tracing::warn!(%error, "cannot publish the local CA for agents"),
            }
        }
        let _ = self.ca.set(Arc::new(local));
        Ok(())
    }

    fn serve<'a>(
        &'a self,
        session: SessionInfo,
        agent: Box<dyn ByteStream>,
        upstream: Upstream,
    ) -> BoxFuture<'a, Closed> {
        Box::pin(async move {
            let Some(ca) = self.ca.get() else {
                return Closed::from("local_ca: not loaded".to_owned());
            };
            drop(upstream);
            let (reason, upstream_local) =
                serve(session, Arc::clone(ca), agent, self.dialect.clone()).await;
            Closed {
                reason,
                upstream_local,
            }
        })
    }
}
