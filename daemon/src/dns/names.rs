//! Which host names the resolver answered to each agent for each address, until the
//! answer's TTL runs out.
//!
//! Policy resources may name hosts (`hostnames = ["db.internal"]`); a connection
//! matches such a resource only when this agent looked the name up through sluice and
//! got the destination address back. The cache is per agent, so one agent's lookups
//! never widen another's reach.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How many (agent, address) pairs the cache holds. When full, and nothing has
/// expired, new answers are not learnt: connections by host name then fail closed.
const MAX_ADDRESSES: usize = 65_536;
/// How many names one address keeps per agent.
const MAX_NAMES_PER_ADDRESS: usize = 16;
/// Answers with a shorter TTL (dnsmasq's hosts answers have 0) are kept this long, so
/// the connection that follows a lookup can still match.
pub const MIN_TTL: Duration = Duration::from_secs(5);
/// No answer is trusted for longer than this.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// (agent, address) → the names it was given, each with its expiry.
type Entries = HashMap<(String, IpAddr), Vec<(String, Instant)>>;

/// Address → names, per agent, with expiry.
#[derive(Debug, Default)]
pub struct NameCache {
    entries: Mutex<Entries>,
}

impl NameCache {
    /// Records that `agent` was told `name` has address `ip`, for `ttl`.
    pub fn learn(&self, agent: &str, ip: IpAddr, name: &str, ttl: Duration) {
        let now = Instant::now();
        let expires = now + ttl.clamp(MIN_TTL, MAX_TTL);
        let name = normalize(name);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (agent.to_owned(), canonical(ip));
        if !entries.contains_key(&key) && entries.len() >= MAX_ADDRESSES {
            entries.retain(|_, names| {
                names.retain(|(_, expiry)| *expiry > now);
                !names.is_empty()
            });
            if entries.len() >= MAX_ADDRESSES {
                tracing::warn!(agent, %ip, name, "host name cache full: answer not learnt");
                return;
            }
        }
        let names = entries.entry(key).or_default();
        names.retain(|(known, expiry)| *expiry > now && *known != name);
        if names.len() >= MAX_NAMES_PER_ADDRESS {
            names.remove(0);
        }
        names.push((name, expires));
    }

    /// The unexpired names `agent` was given for `ip`.
    pub fn names(&self, agent: &str, ip: IpAddr) -> Vec<String> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&(agent.to_owned(), canonical(ip)))
            .map(|names| {
                names
                    .iter()
                    .filter(|(_, expiry)| *expiry > now)
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Lower case, without the root's trailing dot: the form policy patterns use.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_per_agent_and_per_address() {
        let cache = NameCache::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        cache.learn("a", ip, "DB.Internal.", Duration::from_secs(60));
        assert_eq!(cache.names("a", ip), vec!["db.internal".to_owned()]);
        assert!(cache.names("b", ip).is_empty());
        assert!(cache.names("a", "10.1.2.4".parse().unwrap()).is_empty());
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(cache.names("a", mapped), vec!["db.internal".to_owned()]);
    }

    #[test]
    fn relearning_a_name_keeps_one_entry() {
        let cache = NameCache::default();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        cache.learn("a", ip, "x.example", Duration::from_secs(60));
        cache.learn("a", ip, "x.example", Duration::from_secs(60));
        assert_eq!(cache.names("a", ip).len(), 1);
    }
}
