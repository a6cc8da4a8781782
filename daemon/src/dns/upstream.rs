//! Asking the configured upstream resolvers: UDP with a timeout per server, or TCP
//! (two-byte length framing, RFC 1035 §4.2.2) for queries that came over TCP.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
};

/// The largest DNS message over either transport.
pub const MAX_MESSAGE: usize = 65_535;

/// Which transport to ask the upstream over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Tcp => "tcp",
        }
    }
}

/// Why one upstream gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("{server}: no answer within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("{server}: {source}")]
    Io {
        server: SocketAddr,
        source: std::io::Error,
    },
}

/// Sends `query` (whose id is `id`) to `server` and returns the reply with the same
/// id. Replies with another id (stale or spoofed) are ignored until the timeout.
pub async fn exchange(
    server: SocketAddr,
    transport: Transport,
    query: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Vec<u8>, UpstreamError> {
    let attempt = async {
        match transport {
            Transport::Udp => exchange_udp(server, query, id).await,
            Transport::Tcp => exchange_tcp(server, query).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result.map_err(|source| UpstreamError::Io { server, source }),
        Err(_) => Err(UpstreamError::Timeout { server, timeout }),
    }
}

async fn exchange_udp(server: SocketAddr, query: &[u8], id: u16) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let socket = UdpSocket::bind(bind).await?;
    // A connected socket only receives datagrams from `server`.
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; MAX_MESSAGE];
    loop {
        let length = socket.recv(&mut buffer).await?;
        let reply = buffer.get(..length).unwrap_or_default();
        if reply.len() >= 2 && u16::from_be_bytes([reply[0], reply[1]]) == id {
            return Ok(reply.to_vec());
        }
    }
}

async fn exchange_tcp(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await?;
    write_framed(&mut stream, query).await?;
    read_framed(&mut stream)
        .await?
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
}

/// Writes one length-prefixed message.
pub async fn write_framed<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut W,
    message: &[u8],
) -> std::io::Result<()> {
    let length = u16::try_from(message.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message too long"))?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(message);
    writer.write_all(&framed).await?;
    writer.flush().await
}

/// Reads one length-prefixed message; `None` at a clean end of stream.
pub async fn read_framed<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 2];
    match reader.read_exact(&mut length).await {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
    reader.read_exact(&mut message).await?;
    Ok(Some(message))
}
