//! The roots the daemon's own TLS clients trust when a configuration names no CA file:
//! the host's system trust store (what `update-ca-certificates` maintains, where fleets
//! keep their corporate CAs), loaded once. Only a host without one falls back to the
//! compiled-in Mozilla roots, so that nothing silently trusts less than before.
//!
//! It also builds the two rustls configurations the database protocols share: the
//! client side toward a `verify-full` upstream, and the server side that terminates an
//! agent's TLS with a resource's `agent_tls` certificate.

use std::sync::{Arc, OnceLock};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

use crate::policy::{AgentTls, UpstreamTls};

/// The system's trusted roots, or the Mozilla roots when the system has none.
pub fn default_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let loaded = rustls_native_certs::load_native_certs();
        for error in &loaded.errors {
            tracing::warn!(%error, "cannot load part of the system trust store");
        }
        let (added, ignored) = store.add_parsable_certificates(loaded.certs);
        if store.is_empty() {
            tracing::warn!("the system trust store is empty: using the compiled-in Mozilla roots");
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            tracing::debug!(added, ignored, "system trust store loaded");
        }
        Arc::new(store)
    }))
}

/// The client configuration for an upstream with `tls.mode = "verify-full"`: the
/// chain must lead to the resource's `ca_file`, or to [`default_roots`] without one.
/// The error names the file and what is wrong with it.
pub fn upstream_client_config(tls: &UpstreamTls) -> Result<ClientConfig, String> {
    let roots = match &tls.ca_file {
        Some(path) => {
            let file_error = |e: &dyn std::fmt::Display| format!("CA file {}: {e}", path.display());
            let mut roots = RootCertStore::empty();
            for certificate in CertificateDer::pem_file_iter(path).map_err(|e| file_error(&e))? {
                roots
                    .add(certificate.map_err(|e| file_error(&e))?)
                    .map_err(|e| file_error(&e))?;
            }
            Arc::new(roots)
        }
        None => default_roots(),
    };
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
}

/// The server configuration that terminates an agent's TLS with the resource's
/// `agent_tls` certificate and key.
pub fn agent_server_config(tls: &AgentTls) -> Result<ServerConfig, String> {
    let file_error =
        |path: &std::path::Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let chain = CertificateDer::pem_file_iter(&tls.cert_file)
        .map_err(|e| file_error(&tls.cert_file, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(&tls.cert_file, &e))?;
    let key =
        PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| file_error(&tls.key_file, &e))?;
    ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("agent certificate: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn there_are_always_roots() {
        assert!(!super::default_roots().is_empty());
    }
}
