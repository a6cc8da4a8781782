//! Which server connection ids belong to which agent, so that an agent's `KILL` reaches
//! only its own sessions (the MySQL counterpart of PostgreSQL's cancel keys).
//!
//! The proxy mirrors the server's greeting, so an agent sees the real connection id of
//! each of its sessions and names it in `KILL [QUERY] n`, typically from a second
//! connection (the `mariadb` client's Ctrl-C does this).

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

/// Connection ids of live proxied sessions, by upstream.
#[derive(Default)]
pub struct KillRegistry {
    owners: Mutex<HashMap<(SocketAddr, u32), String>>,
}

/// Keeps a connection id registered while the session lives.
pub struct KillGuard {
    registry: Arc<KillRegistry>,
    key: (SocketAddr, u32),
}

impl KillRegistry {
    pub fn register(self: &Arc<Self>, upstream: SocketAddr, id: u32, agent: &str) -> KillGuard {
        if let Ok(mut owners) = self.owners.lock() {
            owners.insert((upstream, id), agent.to_owned());
        }
        KillGuard {
            registry: Arc::clone(self),
            key: (upstream, id),
        }
    }

    /// Whether connection `id` on `upstream` is a live session of `agent`.
    pub fn owned_by(&self, upstream: SocketAddr, id: u32, agent: &str) -> bool {
        self.owners
            .lock()
            .map(|owners| {
                owners
                    .get(&(upstream, id))
                    .is_some_and(|owner| owner == agent)
            })
            .unwrap_or(false)
    }
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if let Ok(mut owners) = self.registry.owners.lock() {
            owners.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_owned_while_their_session_lives() {
        let registry = Arc::new(KillRegistry::default());
        let upstream: SocketAddr = "127.0.0.1:3306".parse().unwrap();
        let guard = registry.register(upstream, 5, "a");
        assert!(registry.owned_by(upstream, 5, "a"));
        assert!(!registry.owned_by(upstream, 5, "b"));
        drop(guard);
        assert!(!registry.owned_by(upstream, 5, "a"));
    }
}
