//! Relays bytes both ways between an agent and its upstream, counting them.
//!
//! Counts are kept in shared counters rather than returned at the end, so a session
//! that dies on an error still records how much crossed. A half-close is passed on
//! (the other direction keeps flowing); an error in either direction ends both.
//! Plain TCP sessions use this; protocol-aware sessions replace it with their codec.
//!
//! A session may hold back the agent's first bytes until a [`FirstBytesCheck`] has
//! seen enough of them: the TLS server name of a host-named resource is checked this
//! way when the agent sent nothing before the relay began (the server may speak
//! first), so waiting out the daemon's first look never lets a ClientHello through
//! unchecked.
//!
//! A direction holds its copy buffer only while bytes are flowing: it waits for
//! readability with no buffer, reads into uninitialised capacity, and gives the buffer
//! back once the socket runs dry. An idle connection then costs no buffer memory
//! (`cargo xtask bench` measures the daemon's memory per idle connection), and a busy
//! one pays one allocation per burst, not per read.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{
    io::{AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, tcp::OwnedReadHalf},
};

const BUFFER_SIZE: usize = 64 * 1024;

/// Bytes that crossed so far, readable while the relay runs.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// Agent → upstream.
    pub up: AtomicU64,
    /// Upstream → agent.
    pub down: AtomicU64,
}

impl ByteCounts {
    /// (up, down) right now.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        )
    }
}

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their sending direction; `first` says who closed first.
    Closed { first: Side },
    /// An I/O error on one side ended the session.
    Error { side: Side, message: String },
    /// The agent's first bytes were refused by the session's check; none reached
    /// the upstream.
    Refused { reason: String },
}

/// What a check of the agent's first bytes says about what it has seen so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstBytes {
    /// Not enough to decide: hold them and read more.
    NeedMore,
    /// Forward them, and everything after, unchecked.
    Pass,
    /// End the session without forwarding them.
    Refuse(String),
}

/// Looks at everything the agent sent so far, until it says `Pass` or `Refuse`.
pub type FirstBytesCheck<'a> = Box<dyn FnMut(&[u8]) -> FirstBytes + Send + 'a>;

/// The most the agent's first bytes are held for a check; a check that still needs
/// more after this refuses.
pub const MAX_HELD_FIRST_BYTES: usize = 32 * 1024;

/// One end of a relayed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Agent,
    Upstream,
}

impl RelayEnd {
    /// The close reason recorded with the session.
    pub fn close_reason(&self) -> String {
        match self {
            Self::Closed { first: Side::Agent } => "client_closed".into(),
            Self::Closed {
                first: Side::Upstream,
            } => "upstream_closed".into(),
            Self::Error {
                side: Side::Agent,
                message,
            } => format!("client_error: {message}"),
            Self::Error {
                side: Side::Upstream,
                message,
            } => format!("upstream_error: {message}"),
            Self::Refused { reason } => format!("denied: {reason}"),
        }
    }
}

/// Relays until both directions are closed or one fails.
pub async fn relay(agent: TcpStream, upstream: TcpStream, counts: &ByteCounts) -> RelayEnd {
    relay_checked(agent, upstream, counts, None).await
}

/// Relays as [`relay`] does, but holds the agent's first bytes back from the
/// upstream until `check` passes them (the upstream's bytes flow meanwhile).
pub async fn relay_checked(
    agent: TcpStream,
    upstream: TcpStream,
    counts: &ByteCounts,
    check: Option<FirstBytesCheck<'_>>,
) -> RelayEnd {
    let (mut agent_read, mut agent_write) = agent.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = copy_counting(&mut agent_read, &mut upstream_write, &counts.up, check);
    let down = copy_counting(&mut upstream_read, &mut agent_write, &counts.down, None);
    tokio::pin!(up, down);

    tokio::select! {
        result = &mut up => match result {
            Err(CopyError::Refused(reason)) => RelayEnd::Refused { reason },
            // The reading side's error names who failed; a write error is the other side.
            Err(CopyError::Io { on_read, error }) => RelayEnd::Error {
                side: if on_read { Side::Agent } else { Side::Upstream },
                message: error.to_string(),
            },
            Ok(()) => match down.await {
                Ok(()) => RelayEnd::Closed { first: Side::Agent },
                Err(CopyError::Refused(reason)) => RelayEnd::Refused { reason },
                Err(CopyError::Io { on_read, error }) => RelayEnd::Error {
                    side: if on_read { Side::Upstream } else { Side::Agent },
                    message: error.to_string(),
                },
            },
        },
        result = &mut down => match result {
            Err(CopyError::Refused(reason)) => RelayEnd::Refused { reason },
            Err(CopyError::Io { on_read, error }) => RelayEnd::Error {
                side: if on_read { Side::Upstream } else { Side::Agent },
                message: error.to_string(),
            },
            Ok(()) => match up.await {
                Ok(()) => RelayEnd::Closed { first: Side::Upstream },
                Err(CopyError::Refused(reason)) => RelayEnd::Refused { reason },
                Err(CopyError::Io { on_read, error }) => RelayEnd::Error {
                    side: if on_read { Side::Agent } else { Side::Upstream },
                    message: error.to_string(),
                },
            },
        },
    }
}

/// Closes `stream` with an RST, so the peer's next read fails at once instead of
/// seeing a clean end of stream. A zero linger never blocks the dropping thread.
pub fn reset(stream: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(error) =
        nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger)
    {
        tracing::debug!(%error, "cannot set SO_LINGER; closing normally");
    }
    drop(stream);
}

enum CopyError {
    Io {
        on_read: bool,
        error: std::io::Error,
    },
    Refused(String),
}

/// Copies until EOF, then shuts the writer down (passing the half-close on). With a
/// `check`, the first bytes are held until it passes them.
async fn copy_counting<W>(
    reader: &mut OwnedReadHalf,
    writer: &mut W,
    counter: &AtomicU64,
    mut check: Option<FirstBytesCheck<'_>>,
) -> Result<(), CopyError>
where
    W: AsyncWrite + Unpin,
{
    let read_error = |error| CopyError::Io {
        on_read: true,
        error,
    };
    let write_error = |error| CopyError::Io {
        on_read: false,
        error,
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        if buffer.capacity() == 0 {
            reader.readable().await.map_err(read_error)?;
            buffer = Vec::with_capacity(BUFFER_SIZE);
        }
        let before = buffer.len();
        let read = match reader.try_read_buf(&mut buffer) {
            Ok(read) => read,
            // Dry (or a spurious wake-up): give the buffer back while waiting, unless
            // it holds first bytes still being checked.
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                if buffer.is_empty() {
                    buffer = Vec::new();
                } else {
                    reader.readable().await.map_err(read_error)?;
                }
                continue;
            }
            Err(error) => return Err(read_error(error)),
        };
        if read == 0 {
            if check.is_some() && before > 0 {
                return Err(CopyError::Refused(
                    "the agent closed before its first bytes could be checked".into(),
                ));
            }
            return writer.shutdown().await.map_err(write_error);
        }
        if let Some(looking) = check.as_mut() {
            match looking(&buffer) {
                FirstBytes::Pass => check = None,
                FirstBytes::Refuse(reason) => return Err(CopyError::Refused(reason)),
                FirstBytes::NeedMore if buffer.len() >= MAX_HELD_FIRST_BYTES => {
                    return Err(CopyError::Refused(format!(
                        "the agent's first {} bytes did not settle the check",
                        buffer.len()
                    )));
                }
                FirstBytes::NeedMore => {
                    buffer.reserve(BUFFER_SIZE.min(MAX_HELD_FIRST_BYTES));
                    continue;
                }
            }
        }
        writer.write_all(&buffer).await.map_err(write_error)?;
        counter.fetch_add(buffer.len() as u64, Ordering::Relaxed);
        buffer.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{io::AsyncReadExt as _, net::TcpListener};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), server.unwrap().0)
    }

    #[tokio::test]
    async fn relays_both_ways_and_counts_each_direction() {
        let (mut agent, agent_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let counts = ByteCounts::default();
        let relay = relay(agent_side, upstream_side, &counts);
        let peers = async {
            agent.write_all(b"hello upstream").await.unwrap();
            let mut got = [0u8; 14];
            upstream.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"hello upstream");
            upstream.write_all(b"hi").await.unwrap();
            upstream.shutdown().await.unwrap();
            let mut back = Vec::new();
            agent.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, b"hi");
            agent.shutdown().await.unwrap();
        };
        let (end, ()) = tokio::join!(relay, peers);
        assert_eq!(
            end,
            RelayEnd::Closed {
                first: Side::Upstream
            }
        );
        assert_eq!(counts.snapshot(), (14, 2));
    }

    #[tokio::test]
    async fn a_reset_agent_ends_the_session_and_keeps_the_counts() {
        let (mut agent, agent_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let counts = ByteCounts::default();
        let relay = relay(agent_side, upstream_side, &counts);
        let peers = async {
            agent.write_all(b"abc").await.unwrap();
            let mut got = [0u8; 3];
            upstream.read_exact(&mut got).await.unwrap();
            reset(agent);
        };
        let (end, ()) = tokio::join!(relay, peers);
        assert!(
            matches!(
                end,
                RelayEnd::Error {
                    side: Side::Agent,
                    ..
                }
            ),
            "{end:?}"
        );
        assert_eq!(counts.snapshot().0, 3);
    }
    #[tokio::test]
    async fn held_first_bytes_reach_the_upstream_only_once_the_check_passes() {
        let (mut agent, agent_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let counts = ByteCounts::default();
        let check: FirstBytesCheck<'_> = Box::new(|seen: &[u8]| {
            if seen.len() < 6 {
                FirstBytes::NeedMore
            } else {
                FirstBytes::Pass
            }
        });
        let relay = relay_checked(agent_side, upstream_side, &counts, Some(check));
        let peers = async {
            // The upstream speaks first; its bytes are not held.
            upstream.write_all(b"banner").await.unwrap();
            let mut banner = [0u8; 6];
            agent.read_exact(&mut banner).await.unwrap();
            agent.write_all(b"abc").await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            agent.write_all(b"def").await.unwrap();
            let mut got = [0u8; 6];
            upstream.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"abcdef");
            agent.shutdown().await.unwrap();
            // The agent's close reaches the upstream before the upstream closes.
            let mut rest = Vec::new();
            upstream.read_to_end(&mut rest).await.unwrap();
            upstream.shutdown().await.unwrap();
        };
        let (end, ()) = tokio::join!(relay, peers);
        assert_eq!(end, RelayEnd::Closed { first: Side::Agent });
        assert_eq!(counts.snapshot(), (6, 6));
    }

    #[tokio::test]
    async fn refused_first_bytes_never_reach_the_upstream() {
        let (mut agent, agent_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let counts = ByteCounts::default();
        let check: FirstBytesCheck<'_> =
            Box::new(|_: &[u8]| FirstBytes::Refuse("not for this resource".into()));
        let relay = relay_checked(agent_side, upstream_side, &counts, Some(check));
        let peers = async {
            agent.write_all(b"hostile").await.unwrap();
        };
        let (end, ()) = tokio::join!(relay, peers);
        assert_eq!(
            end,
            RelayEnd::Refused {
                reason: "not for this resource".into()
            }
        );
        assert_eq!(end.close_reason(), "denied: not for this resource");
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert!(got.is_empty(), "{got:?}");
        assert_eq!(counts.snapshot().0, 0);
    }
}
