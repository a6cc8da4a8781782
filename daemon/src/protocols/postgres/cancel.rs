//! Cancel keys, remapped.
//!
//! The agent never sees the server's BackendKeyData: it gets a random key of the
//! daemon's, registered here with the real one. A CancelRequest arrives on a new
//! connection; the daemon looks the key up, checks it belongs to the same agent and
//! upstream, and sends the real key to the server. A guessed or stale key cancels
//! nothing.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;

/// The real key behind a key handed to an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelTarget {
    pub agent: String,
    pub upstream: SocketAddr,
    pub pid: i32,
    pub secret_key: Bytes,
}

/// All live sessions' keys.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    keys: Mutex<HashMap<(i32, Bytes), CancelTarget>>,
}

impl CancelRegistry {
    /// Registers `target` under a fresh random key of the same length and returns the
    /// key to give the agent. The entry goes away when the guard is dropped.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> (i32, Bytes, CancelGuard) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // Positive, like a real pid, so clients print it sensibly.
            let pid = (rand::random::<u32>() >> 1) as i32;
            let secret: Vec<u8> = (0..target.secret_key.len().max(4))
                .map(|_| rand::random::<u8>())
                .collect();
            let key = (pid, Bytes::from(secret));
            if keys.contains_key(&key) {
                continue;
            }
            keys.insert(key.clone(), target);
            let guard = CancelGuard {
                registry: Arc::clone(self),
                key: key.clone(),
            };
            return (key.0, key.1, guard);
        }
    }

    /// The real key for `(pid, secret_key)`, if `agent` owns it.
    pub fn lookup(&self, agent: &str, pid: i32, secret_key: &[u8]) -> Option<CancelTarget> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(&(pid, Bytes::copy_from_slice(secret_key)))
            .filter(|target| target.agent == agent)
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Removes a session's key when the session ends.
#[derive(Debug)]
pub struct CancelGuard {
    registry: Arc<CancelRegistry>,
    key: (i32, Bytes),
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(agent: &str) -> CancelTarget {
        CancelTarget {
            agent: agent.into(),
            upstream: "127.0.0.2:5432".parse().unwrap(),
            pid: 4242,
            secret_key: Bytes::from_static(&[1, 2, 3, 4]),
        }
    }

    #[test]
    fn keys_are_remapped_owned_and_forgotten_with_the_session() {
        let registry = Arc::new(CancelRegistry::default());
        let (pid, key, guard) = registry.register(target("ci-bot"));
        assert_ne!((pid, &key[..]), (4242, &[1u8, 2, 3, 4][..]));
        assert_eq!(registry.lookup("ci-bot", pid, &key), Some(target("ci-bot")));
        assert_eq!(registry.lookup("other-agent", pid, &key), None);
        assert_eq!(registry.lookup("ci-bot", 4242, &[1, 2, 3, 4]), None);
        drop(guard);
        assert_eq!(registry.lookup("ci-bot", pid, &key), None);
        assert!(registry.is_empty());
    }
}
