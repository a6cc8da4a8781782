//! The server name an agent's TLS ClientHello asks for, read without consuming it.
//!
//! A connection matched to a resource by host name must, when it opens with TLS, ask
//! for one of that resource's names, and one the resolver gave this agent for the
//! address: otherwise the lookup of one name could carry a connection meant for another
//! host on the same address. The ClientHello is parsed by rustls' `Acceptor`, so no TLS
//! parsing is written here; the bytes stay in the socket for whoever relays them.

use std::time::Duration;

use tokio::net::TcpStream;

/// The largest ClientHello looked at: one full TLS record and its header.
const MAX_CLIENT_HELLO: usize = 16 * 1024 + 5;
/// TLS handshake record type: the first byte of every ClientHello.
const HANDSHAKE_RECORD: u8 = 0x16;

/// What the agent's first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// A ClientHello with this server name (lower case).
    Tls(String),
    /// A ClientHello without a server name (a client dialling an address).
    TlsWithoutName,
    /// Not TLS.
    NotTls,
    /// Nothing sent within the wait (server-speaks-first protocols, or an agent that
    /// waits on purpose): whoever relays must check the first bytes when they come.
    Silent,
    /// It starts like TLS but is no valid ClientHello: sluice cannot tell the name.
    Unreadable(String),
}

/// Peeks at the agent's first bytes for up to `wait`.
pub async fn peek_opening(stream: &TcpStream, wait: Duration) -> Opening {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buffer = vec![0u8; MAX_CLIENT_HELLO];
    let mut seen = 0;
    loop {
        let peeked = match tokio::time::timeout_at(deadline, stream.peek(&mut buffer)).await {
            Err(_) | Ok(Ok(0)) => return opening_so_far(buffer.get(..seen).unwrap_or_default()),
            Ok(Err(error)) => return Opening::Unreadable(error.to_string()),
            Ok(Ok(peeked)) => peeked,
        };
        let bytes = buffer.get(..peeked).unwrap_or_default();
        match parse(bytes) {
            Some(opening) => return opening,
            None if peeked >= MAX_CLIENT_HELLO => {
                return Opening::Unreadable("ClientHello too large".into());
            }
            None if peeked == seen => {
                // No new bytes yet: peek returns at once while data is queued.
                if tokio::time::timeout_at(deadline, tokio::time::sleep(Duration::from_millis(5)))
                    .await
                    .is_err()
                {
                    return opening_so_far(bytes);
                }
            }
            None => seen = peeked,
        }
    }
}

/// The verdict once no more bytes will be waited for.
fn opening_so_far(bytes: &[u8]) -> Opening {
    match parse(bytes) {
        Some(opening) => opening,
        None if bytes.is_empty() => Opening::Silent,
        None => Opening::Unreadable("the ClientHello was cut short".into()),
    }
}

/// What `bytes`, the agent's first, say; `None` while a ClientHello has begun but is
/// not complete.
pub fn parse(bytes: &[u8]) -> Option<Opening> {
    let first = *bytes.first()?;
    if first != HANDSHAKE_RECORD {
        return Some(Opening::NotTls);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut reader = bytes;
    while !reader.is_empty() {
        match acceptor.read_tls(&mut reader) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => return Some(Opening::Unreadable(error.to_string())),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(match accepted.client_hello().server_name() {
            Some(name) => Opening::Tls(name.to_ascii_lowercase()),
            None => Opening::TlsWithoutName,
        }),
        Ok(None) => None,
        Err((error, _)) => Some(Opening::Unreadable(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_not_tls_and_a_broken_hello_is_unreadable() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Some(Opening::NotTls));
        assert!(parse(&[]).is_none());
        assert!(matches!(
            parse(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Some(Opening::Unreadable(_))
        ));
        // A record header promising more than is there: wait for the rest.
        assert!(parse(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).is_none());
    }
}
