//! Relays bytes both ways between an agent and its upstream, counting them.
//!
//! Counts are kept in shared counters rather than returned at the end, so a session
//! that dies on an error still records how much crossed. A half-close is passed on
//! (the other direction keeps flowing); an error in either direction ends both.
//! Plain TCP sessions use this; protocol-aware sessions replace it with their codec.
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
}

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
        }
    }
}

/// Relays until both directions are closed or one fails.
pub async fn relay(agent: TcpStream, upstream: TcpStream, counts: &ByteCounts) -> RelayEnd {
    let (mut agent_read, mut agent_write) = agent.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let up = copy_counting(&mut agent_read, &mut upstream_write, &counts.up);
    let down = copy_counting(&mut upstream_read, &mut agent_write, &counts.down);
    tokio::pin!(up, down);

    tokio::select! {
        result = &mut up => match result {
            // The reading side's error names who failed; a write error is the other side.
            Err(CopyError { on_read, error }) => RelayEnd::Error {
                side: if on_read { Side::Agent } else { Side::Upstream },
                message: error.to_string(),
            },
            Ok(()) => match down.await {
                Ok(()) => RelayEnd::Closed { first: Side::Agent },
                Err(CopyError { on_read, error }) => RelayEnd::Error {
                    side: if on_read { Side::Upstream } else { Side::Agent },
                    message: error.to_string(),
                },
            },
        },
        result = &mut down => match result {
            Err(CopyError { on_read, error }) => RelayEnd::Error {
                side: if on_read { Side::Upstream } else { Side::Agent },
                message: error.to_string(),
            },
            Ok(()) => match up.await {
                Ok(()) => RelayEnd::Closed { first: Side::Upstream },
                Err(CopyError { on_read, error }) => RelayEnd::Error {
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

struct CopyError {
    on_read: bool,
    error: std::io::Error,
}

/// Copies until EOF, then shuts the writer down (passing the half-close on).
async fn copy_counting<W>(
    reader: &mut OwnedReadHalf,
    writer: &mut W,
    counter: &AtomicU64,
) -> Result<(), CopyError>
where
    W: AsyncWrite + Unpin,
{
    let read_error = |error| CopyError {
        on_read: true,
        error,
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        if buffer.capacity() == 0 {
            reader.readable().await.map_err(read_error)?;
            buffer = Vec::with_capacity(BUFFER_SIZE);
        }
        let read = match reader.try_read_buf(&mut buffer) {
            Ok(read) => read,
            // Dry (or a spurious wake-up): give the buffer back while waiting.
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                buffer = Vec::new();
                continue;
            }
            Err(error) => return Err(read_error(error)),
        };
        if read == 0 {
            return writer.shutdown().await.map_err(|error| CopyError {
                on_read: false,
                error,
            });
        }
        writer.write_all(&buffer).await.map_err(|error| CopyError {
            on_read: false,
            error,
        })?;
        buffer.clear();
        counter.fetch_add(read as u64, Ordering::Relaxed);
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
}
