//! The agent's HTTP/1.1 request framing, checked before hyper reads it, on every request
//! of a kept-alive connection.
//!
//! hyper quietly accepts some smuggling shapes (it lets Transfer-Encoding win over
//! Content-Length, folds repeated equal lengths, takes a bare LF as a line end). sluice
//! re-serialises every request, so none of them can smuggle a second request past it,
//! but a proxy that reads a request differently from the server behind it should refuse
//! it rather than guess. This layer follows the message framing (Content-Length and
//! chunked bodies) to find each request head, checks it with
//! [`check_head`](super::proxy::check_head), and replaces a refused head with a
//! minimal one carrying [`MALFORMED_MARKER`] and `connection: close`, which the handler
//! answers with 400 and records; nothing after it is read. A malformed chunk framing
//! fails the read, so hyper fails the body and the handler refuses it. After an upgrade
//! or CONNECT head the bytes are no longer HTTP and pass unchecked (the handler closes
//! the connection when the upgrade is not granted). Hand-written: hyper has no hook for
//! the raw bytes of a head, and this needs only framing, not a parser.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::{h2guard::MALFORMED_MARKER, proxy::check_head};

/// The longest request head looked at (hyper's own limit is larger: above this the
/// request is refused here).
const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size line (with extensions) or trailer line.
const MAX_LINE: usize = 4096;

enum State {
    Head,
    Fixed {
        left: u64,
    },
    ChunkSize,
    ChunkData {
        left: u64,
    },
    ChunkEnd,
    Trailers,
    /// No longer HTTP/1 (after an upgrade or CONNECT head).
    Opaque,
    /// A refused head was replaced: nothing more is read.
    Ended,
}

/// The agent's end of an HTTP/1.1 connection, as hyper's server reads it.
pub struct H1RequestGuard<S> {
    inner: S,
    input: BytesMut,
    output: BytesMut,
    state: State,
    failed: Option<String>,
    eof: bool,
}

/// How a checked head frames what follows it.
enum Framing {
    Length(u64),
    Chunked,
    Opaque,
}

impl<S> H1RequestGuard<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(16 * 1024),
            state: State::Head,
            failed: None,
            eof: false,
        }
    }

    /// Moves what the input holds to the output; `false` when more input is needed.
    fn process(&mut self) -> Result<bool, String> {
        if self.input.is_empty() {
            return Ok(false);
        }
        match self.state {
            State::Head => {
                // Empty lines before a request line are allowed and ignored.
                if self.input.starts_with(b"\r\n") {
                    self.pass(2);
                    return Ok(true);
                }
                let end = head_end(&self.input);
                let Some(end) = end else {
                    if self.input.len() > MAX_HEAD {
                        let head = self.input.split_to(self.input.len());
                        self.replace(&head, &format!("a request head over {MAX_HEAD} bytes"));
                    } else if self.eof {
                        // An incomplete head at the end: hyper reports it.
                        self.pass(self.input.len());
                    }
                    return Ok(self.eof || matches!(self.state, State::Ended));
                };
                let head = self.input.split_to(end);
                match check_head(&head)
                    .map_err(str::to_owned)
                    .and_then(|()| framing(&head))
                {
                    Ok(framing) => {
                        self.output.extend_from_slice(&head);
                        self.state = match framing {
                            Framing::Length(0) => State::Head,
                            Framing::Length(left) => State::Fixed { left },
                            Framing::Chunked => State::ChunkSize,
                            Framing::Opaque => State::Opaque,
                        };
                    }
                    Err(problem) => self.replace(&head, &problem),
                }
                Ok(true)
            }
            State::Fixed { left } | State::ChunkData { left } => {
                let take = left.min(self.input.len() as u64);
                self.pass(take as usize);
                let left = left - take;
                self.state = match self.state {
                    State::Fixed { .. } if left == 0 => State::Head,
                    State::Fixed { .. } => State::Fixed { left },
                    _ if left == 0 => State::ChunkEnd,
                    _ => State::ChunkData { left },
                };
                Ok(true)
            }
            State::ChunkEnd => {
                if self.input.len() < 2 {
                    return Ok(false);
                }
                if &self.input[..2] != b"\r\n" {
                    return Err("a chunk not ended by CRLF".into());
                }
                self.pass(2);
                self.state = State::ChunkSize;
                Ok(true)
            }
            State::ChunkSize | State::Trailers => {
                let Some(newline) = self.input.iter().position(|&b| b == b'\n') else {
                    if self.input.len() > MAX_LINE {
                        return Err("a chunk-size or trailer line too long".into());
                    }
                    return Ok(false);
                };
                let line = &self.input[..newline + 1];
                let Some(content) = line.strip_suffix(b"\r\n") else {
                    return Err("a bare LF in the chunked body".into());
                };
                if content.contains(&b'\r') {
                    return Err("a bare CR in the chunked body".into());
                }
                if matches!(self.state, State::Trailers) {
                    if content.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
                        return Err("obsolete line folding in the trailers".into());
                    }
                    self.state = if content.is_empty() {
                        State::Head
                    } else {
                        State::Trailers
                    };
                } else {
                    let size = chunk_size(content)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData { left: size }
                    };
                }
                self.pass(newline + 1);
                Ok(true)
            }
            State::Opaque => {
                self.pass(self.input.len());
                Ok(true)
            }
            State::Ended => {
                self.input.clear();
                Ok(false)
            }
        }
    }

    fn pass(&mut self, count: usize) {
        let bytes = self.input.split_to(count);
        self.output.extend_from_slice(&bytes);
    }

    /// Replaces a refused head with one the handler answers with 400.
    fn replace(&mut self, head: &[u8], problem: &str) {
        let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
        let mut words = line.split(|&b| b == b' ');
        let method = words
            .next()
            .filter(|word| !word.is_empty() && word.iter().all(u8::is_ascii_alphabetic))
            .unwrap_or(b"GET");
        let target = words
            .next()
            .filter(|word| word.first() == Some(&b'/') && word.iter().all(|b| b.is_ascii_graphic()))
            .unwrap_or(b"/");
        self.output.extend_from_slice(method);
        self.output.extend_from_slice(b" ");
        self.output.extend_from_slice(target);
        self.output.extend_from_slice(
            format!(
                " HTTP/1.1\r\n{MALFORMED_MARKER}: {problem}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        self.input.clear();
        self.state = State::Ended;
    }
}

/// Where a request head ends (after its empty line), if it has.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = memchr::memmem::find(bytes, b"\r\n\r\n").map(|at| at + 4);
    let lf = memchr::memmem::find(bytes, b"\n\n").map(|at| at + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How a head (already checked: CRLF lines, no folding, at most one framing header)
/// frames its body.
fn framing(head: &[u8]) -> Result<Framing, String> {
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = lines.next().unwrap_or_default();
    if request_line.starts_with(b"CONNECT ") {
        return Ok(Framing::Opaque);
    }
    let mut framing = Framing::Length(0);
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"upgrade") {
            return Ok(Framing::Opaque);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 18 {
                return Err("a Content-Length that is not one decimal number".into());
            }
            let length = std::str::from_utf8(value)
                .ok()
                .and_then(|value| value.parse().ok())
                .ok_or("a Content-Length that is not one decimal number")?;
            framing = Framing::Length(length);
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            if !last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("a Transfer-Encoding that does not end in chunked".into());
            }
            framing = Framing::Chunked;
        }
    }
    Ok(framing)
}

/// A chunk-size line's size (extensions after `;` are allowed and ignored).
fn chunk_size(line: &[u8]) -> Result<u64, String> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(format!(
            "an invalid chunk size {:?}",
            String::from_utf8_lossy(&line[..line.len().min(32)])
        ));
    }
    let text = std::str::from_utf8(digits).map_err(|_| "an invalid chunk size".to_owned())?;
    u64::from_str_radix(text, 16).map_err(|_| "an invalid chunk size".to_owned())
}

impl<S: AsyncRead + Unpin> AsyncRead for H1RequestGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.output.is_empty() {
                let take = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output.split_to(take));
                return Poll::Ready(Ok(()));
            }
            if let Some(problem) = &this.failed {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    problem.clone(),
                )));
            }
            if matches!(this.state, State::Ended) {
                // The replaced head says `connection: close`: hyper answers and closes.
                return Poll::Pending;
            }
            match this.process() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(problem) => {
                    tracing::info!(problem, "malformed HTTP/1.1 body framing from the agent");
                    this.failed = Some(format!("malformed request: {problem}"));
                    continue;
                }
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            std::task::ready!(super::guard_io::read_more(
                &mut this.inner,
                cx,
                &mut this.input,
                &mut this.eof
            ))?;
        }
    }
}

super::guard_io::write_through!(H1RequestGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    async fn through(input: &[u8]) -> (String, bool) {
        let mut guard = H1RequestGuard::new(std::io::Cursor::new(input.to_vec()));
        let mut out = Vec::new();
        let mut chunk = [0u8; 1024];
        let mut failed = false;
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(50), guard.read(&mut chunk))
                .await
            {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(read)) => out.extend_from_slice(&chunk[..read]),
                Ok(Err(_)) => {
                    failed = true;
                    break;
                }
            }
        }
        (String::from_utf8_lossy(&out).into_owned(), failed)
    }

    #[tokio::test]
    async fn valid_requests_pass_unchanged() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nT: 1\r\n\r\n\
            GET /c HTTP/1.1\r\n\r\n";
        let (out, failed) = through(input).await;
        assert!(!failed);
        assert_eq!(out.as_bytes(), input);
    }

    #[tokio::test]
    async fn a_later_hostile_head_is_replaced_and_nothing_follows() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
            POST /b HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na\
            GET /smuggled HTTP/1.1\r\n\r\n";
        let (out, failed) = through(input).await;
        assert!(!failed);
        assert!(out.starts_with("POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nsluice-malformed-request: more than one Content-Length\r\n"), "{out}");
        assert!(!out.contains("smuggled"), "{out}");
        // A body that says to look like a head is a body.
        let (out, _) =
            through(b"POST /a HTTP/1.1\r\nContent-Length: 24\r\n\r\nGET /x HTTP/1.1\n\nabcdefg")
                .await;
        assert!(!out.contains(MALFORMED_MARKER), "{out}");
    }

    #[tokio::test]
    async fn bad_chunks_fail_the_read() {
        for body in [
            "zz\r\nabc\r\n0\r\n\r\n",
            "3\nabc\r\n0\r\n\r\n",
            "3\r\nabcX\r\n",
            "-1\r\n",
        ] {
            let input = format!("POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
            let (_, failed) = through(input.as_bytes()).await;
            assert!(failed, "{body:?}");
        }
    }

    #[test]
    fn framing_is_read_from_the_head() {
        assert!(matches!(
            framing(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            Ok(Framing::Opaque)
        ));
        assert!(framing(b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n").is_err());
        assert!(framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
    }
}
