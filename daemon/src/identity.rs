//! Who is behind an accepted connection, and where it was really going.
//!
//! The programs filed a record under the connection's 4-tuple; this module turns the
//! accepted stream's peer and local addresses into that key, takes the record, and adds
//! what only user space can see: the executable, the cgroup path and the agent name.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use sluice_common::{AF_INET, AF_INET6, ConnKey, Origin};

use crate::{bpf::Interception, cgroup::ManagedRoot};

/// The process behind a redirected connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The managed child cgroup, i.e. the agent's name.
    pub agent: String,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    /// `None` when the process exited before the daemon looked.
    pub exe: Option<String>,
    /// cgroup v2 path relative to the mount (`/sluice/ci-bot`).
    pub cgroup: String,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    /// The verified workload identity bound to the process's agent run (`sluice run
    /// --identity`), if any.
    pub workload: Option<std::sync::Arc<crate::workload::Verified>>,
}

/// A redirected connection, identified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirected {
    pub identity: Identity,
    /// The agent's own address.
    pub source: SocketAddr,
    /// Where the agent was connecting to.
    pub destination: SocketAddr,
}

/// Why a connection could not be identified. The daemon refuses such connections.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "no redirect record for {peer} → {local}: not from the managed cgroup, or the record was lost"
    )]
    NoRecord { peer: SocketAddr, local: SocketAddr },
    #[error("cgroup {cgroup_id} of pid {pid} is not an agent cgroup under the managed root")]
    NotAnAgent { pid: u32, cgroup_id: u64 },
}

/// Identifies the connection accepted from `peer` on `local`.
///
/// The record is filed before the agent's SYN leaves, so it is normally there at once;
/// a short retry covers a reader that raced a concurrent map update.
pub async fn identify(
    interception: &Interception,
    root: &ManagedRoot,
    peer: SocketAddr,
    local: SocketAddr,
) -> Result<Redirected, IdentityError> {
    let key = conn_key(peer, local);
    let mut origin = interception.take_origin(&key);
    for _ in 0..3 {
        if origin.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        origin = interception.take_origin(&key);
    }
    let origin = origin.ok_or(IdentityError::NoRecord { peer, local })?;
    Ok(Redirected {
        destination: destination_of(&origin),
        identity: identity_of(root, &origin)?,
        source: peer,
    })
}

/// The process behind a record the programs filed, as far as user space can still see.
pub fn identity_of(root: &ManagedRoot, origin: &Origin) -> Result<Identity, IdentityError> {
    let agent = root
        .agent_for_cgroup_id(origin.cgroup_id)
        .ok_or(IdentityError::NotAnAgent {
            pid: origin.tgid,
            cgroup_id: origin.cgroup_id,
        })?;
    let exe = std::fs::read_link(format!("/proc/{}/exe", origin.tgid))
        .ok()
        .map(|path| path.display().to_string());
    let cgroup = crate::cgroup::cgroup_path_of(origin.tgid)
        .unwrap_or_else(|| format!("{}/{agent}", root.cgroup_path()));
    let workload = crate::workload::runs::installed()
        .and_then(|runs| runs.lookup(origin.cgroup_id, Some(&cgroup)))
        .map(|binding| std::sync::Arc::new(binding.identity.clone()));
    Ok(Identity {
        agent,
        pid: origin.tgid,
        tid: origin.tid,
        uid: origin.uid,
        gid: origin.gid,
        comm: comm_string(&origin.comm),
        exe,
        cgroup,
        cgroup_id: origin.cgroup_id,
        netns_cookie: origin.netns_cookie,
        workload,
    })
}

/// The 4-tuple key as the programs file it: v4-mapped addresses folded to IPv4.
pub fn conn_key(peer: SocketAddr, local: SocketAddr) -> ConnKey {
    let (family, src_ip) = ip_words(peer.ip());
    let (_, dst_ip) = ip_words(local.ip());
    ConnKey {
        family: u32::from(family),
        src_ip,
        dst_ip,
        src_port: peer.port(),
        dst_port: local.port(),
    }
}

fn ip_words(ip: IpAddr) -> (u16, [u32; 4]) {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => (AF_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            (AF_INET6, [word(0), word(4), word(8), word(12)])
        }
    }
}

/// The original destination recorded by the programs.
pub fn destination_of(origin: &Origin) -> SocketAddr {
    let ip = if origin.dst_family == AF_INET6 {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.chunks_exact_mut(4).zip(origin.dst_ip) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(octets))
    } else {
        IpAddr::V4(Ipv4Addr::from(origin.dst_ip[0].to_ne_bytes()))
    };
    SocketAddr::new(ip, origin.dst_port)
}

/// A comm array as text, up to its first NUL.
pub fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(comm.get(..end).unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_mapped_peers_key_like_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        let plain: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        assert_eq!(conn_key(mapped, local), conn_key(plain, local));
        assert_eq!(conn_key(plain, local).family, u32::from(AF_INET));
    }

    #[test]
    fn destinations_round_trip_through_the_record_layout() {
        for text in ["127.0.0.2:5432", "[::1]:443", "[2001:db8::7]:22"] {
            let addr: SocketAddr = text.parse().unwrap();
            let (family, words) = ip_words(addr.ip());
            let origin = Origin {
                dst_ip: words,
                dst_port: addr.port(),
                dst_family: family,
                ..Origin::default()
            };
            assert_eq!(destination_of(&origin), addr);
        }
    }

    #[test]
    fn comm_stops_at_nul() {
        assert_eq!(comm_string(b"psql\0\0\0\0\0\0\0\0\0\0\0\0"), "psql");
        assert_eq!(comm_string(b"0123456789abcdef"), "0123456789abcdef");
    }
}
