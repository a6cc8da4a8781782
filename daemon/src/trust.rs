//! The roots the daemon's own TLS clients trust when a configuration names no CA file:
//! the host's system trust store (what `update-ca-certificates` maintains, where fleets
//! keep their corporate CAs), loaded once. Only a host without one falls back to the
//! compiled-in Mozilla roots, so that nothing silently trusts less than before.

use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;

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

#[cfg(test)]
mod tests {
    #[test]
    fn there_are_always_roots() {
        assert!(!super::default_roots().is_empty());
    }
}
