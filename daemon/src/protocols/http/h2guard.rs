//! The agent's HTTP/2 header blocks, read before hyper reads them.
//!
//! An HTTP/2 request carrying a connection-specific header (`connection`, `keep-alive`,
//! `proxy-connection`, `transfer-encoding`, `upgrade`, or `te` other than `trailers`) is
//! malformed (RFC 9113 §8.2.2), and h2 (under hyper) answers it with a stream reset the
//! request handler never sees: no 400, no record. This layer sits between the agent's
//! bytes and hyper's HTTP/2 server. It decodes every header block with its own HPACK
//! decoder (mirroring the agent's compression state), and writes each block anew for
//! hyper with literal fields only (so hyper's dynamic table stays empty and cannot
//! disagree with the agent's). From a request head with connection-specific fields it
//! drops those fields and adds [`MALFORMED_MARKER`] naming them, which the handler
//! answers with 400 and records; a marker the agent sent itself is removed first.
//! Everything else (DATA, SETTINGS, ...) passes unchanged, and the write side (hyper's
//! answers) is untouched. Hand-written because the HTTP/2 libraries here (h2, hyper)
//! offer no hook before their own validation; loona-hpack does the HPACK decoding.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf as _, BufMut as _, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// The field this layer adds to a request head it found malformed.
pub const MALFORMED_MARKER: &str = "sluice-malformed-request";

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame hyper's HTTP/2 server accepts (the protocol's default, which hyper
/// advertises): header frames beyond it are refused here, and rewritten blocks are cut
/// to it.
const MAX_FRAME: usize = 16_384;
/// The most of one header block (compressed, across CONTINUATIONs) held at once.
const MAX_BLOCK: usize = 256 * 1024;
/// The most of one decoded header list.
const MAX_DECODED: usize = 256 * 1024;
/// The HPACK dynamic table size hyper's server allows (the protocol's default).
const TABLE_SIZE: usize = 4096;

enum State {
    Preface { left: usize },
    FrameHeader,
    Passthrough { left: usize },
}

struct Block {
    stream: u32,
    end_stream: bool,
    fragment: Vec<u8>,
}

/// The agent's end of an HTTP/2 connection, as hyper's server reads it.
pub struct H2RequestGuard<S> {
    inner: S,
    input: BytesMut,
    output: BytesMut,
    state: State,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    last_request_stream: u32,
    failed: Option<String>,
    eof: bool,
}

impl<S> H2RequestGuard<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            inner,
            input: BytesMut::with_capacity(16 * 1024),
            output: BytesMut::with_capacity(16 * 1024),
            state: State::Preface { left: PREFACE_LEN },
            block: None,
            decoder,
            last_request_stream: 0,
            failed: None,
            eof: false,
        }
    }

    /// Moves what the input holds to the output, rewriting header blocks; `false` when
    /// more input is needed.
    fn process(&mut self) -> Result<bool, String> {
        match self.state {
            State::Preface { left } | State::Passthrough { left } => {
                if left == 0 {
                    self.state = State::FrameHeader;
                    return Ok(true);
                }
                if self.input.is_empty() {
                    return Ok(false);
                }
                let take = left.min(self.input.len());
                self.output.extend_from_slice(&self.input.split_to(take));
                let left = left - take;
                self.state = match self.state {
                    State::Preface { .. } => State::Preface { left },
                    _ => State::Passthrough { left },
                };
                Ok(true)
            }
            State::FrameHeader => {
                if self.input.len() < FRAME_HEADER_LEN {
                    return Ok(false);
                }
                let length = (usize::from(self.input[0]) << 16)
                    | (usize::from(self.input[1]) << 8)
                    | usize::from(self.input[2]);
                let kind = self.input[3];
                let flags = self.input[4];
                let stream = u32::from_be_bytes([
                    self.input[5],
                    self.input[6],
                    self.input[7],
                    self.input[8],
                ]) & 0x7fff_ffff;
                if kind != HEADERS && kind != CONTINUATION {
                    if self.block.is_some() {
                        return Err("a header block interrupted by another frame".into());
                    }
                    self.output
                        .extend_from_slice(&self.input.split_to(FRAME_HEADER_LEN));
                    self.state = State::Passthrough { left: length };
                    return Ok(true);
                }
                if length > MAX_FRAME {
                    return Err(format!("a header frame of {length} bytes"));
                }
                if self.input.len() < FRAME_HEADER_LEN + length {
                    return Ok(false);
                }
                self.input.advance(FRAME_HEADER_LEN);
                let payload = self.input.split_to(length);
                self.header_frame(kind, flags, stream, &payload)?;
                Ok(true)
            }
        }
    }

    fn header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<(), String> {
        if stream == 0 {
            return Err("a header frame on stream 0".into());
        }
        if kind == HEADERS {
            if self.block.is_some() {
                return Err("a HEADERS frame inside another header block".into());
            }
            let mut fragment = payload;
            let mut padding = 0;
            if flags & PADDED != 0 {
                let (&length, rest) = fragment
                    .split_first()
                    .ok_or("a padded HEADERS frame without its pad length")?;
                padding = usize::from(length);
                fragment = rest;
            }
            if flags & PRIORITY != 0 {
                fragment = fragment
                    .get(5..)
                    .ok_or("a HEADERS frame too short for its priority")?;
            }
            if padding > fragment.len() {
                return Err("HEADERS padding longer than the frame".into());
            }
            let fragment = &fragment[..fragment.len() - padding];
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                fragment: fragment.to_vec(),
            });
        } else {
            let block = self
                .block
                .as_mut()
                .ok_or("a CONTINUATION frame without a header block")?;
            if block.stream != stream {
                return Err("a CONTINUATION frame on another stream".into());
            }
            block.fragment.extend_from_slice(payload);
        }
        if self
            .block
            .as_ref()
            .is_some_and(|block| block.fragment.len() > MAX_BLOCK)
        {
            return Err(format!("a header block over {MAX_BLOCK} bytes"));
        }
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.finish_block(block)?;
        }
        Ok(())
    }

    fn finish_block(&mut self, block: Block) -> Result<(), String> {
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                decoded += name.len() + value.len() + 32;
                if decoded <= MAX_DECODED {
                    fields.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|error| format!("HPACK: {error:?}"))?;
        if decoded > MAX_DECODED {
            return Err(format!("a header list over {MAX_DECODED} bytes"));
        }
        // A new request opens a stream numbered above every earlier one; any other
        // header block is a stream's trailers.
        let request_head = block.stream > self.last_request_stream;
        if request_head {
            self.last_request_stream = block.stream;
        }
        let mut forbidden: Vec<String> = Vec::new();
        let mut kept = Vec::with_capacity(fields.len() + 1);
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(MALFORMED_MARKER.as_bytes()) {
                continue;
            }
            if request_head && let Some(problem) = connection_specific(&name, &value) {
                forbidden.push(problem);
                continue;
            }
            kept.push((name, value));
        }
        if !forbidden.is_empty() {
            kept.push((
                MALFORMED_MARKER.as_bytes().to_vec(),
                format!(
                    "an HTTP/2 request with connection-specific header {}",
                    forbidden.join(", ")
                )
                .into_bytes(),
            ));
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() * 2);
        for (name, value) in &kept {
            encode_never_indexed(&mut encoded, name, value);
        }
        self.write_block(block.stream, block.end_stream, &encoded);
        Ok(())
    }

    fn write_block(&mut self, stream: u32, end_stream: bool, encoded: &[u8]) {
        let mut chunks = encoded.chunks(MAX_FRAME).peekable();
        let mut first = true;
        if encoded.is_empty() {
            let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
            self.frame_header(0, HEADERS, flags, stream);
            return;
        }
        while let Some(chunk) = chunks.next() {
            let last = chunks.peek().is_none();
            let mut flags = if last { END_HEADERS } else { 0 };
            let kind = if first {
                if end_stream {
                    flags |= END_STREAM;
                }
                HEADERS
            } else {
                CONTINUATION
            };
            self.frame_header(chunk.len(), kind, flags, stream);
            self.output.extend_from_slice(chunk);
            first = false;
        }
    }

    fn frame_header(&mut self, length: usize, kind: u8, flags: u8, stream: u32) {
        let length = length as u32;
        self.output.put_u8((length >> 16) as u8);
        self.output.put_u8((length >> 8) as u8);
        self.output.put_u8(length as u8);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream & 0x7fff_ffff);
    }
}

/// Why a request field is connection-specific, if it is.
fn connection_specific(name: &[u8], value: &[u8]) -> Option<String> {
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    match name.as_str() {
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade" => {
            Some(format!("`{name}`"))
        }
        "te" if !value.trim_ascii().eq_ignore_ascii_case(b"trailers") => {
            Some("`te` other than \"trailers\"".into())
        }
        _ => None,
    }
}

/// An HPACK "literal header field never indexed" with a literal name, no Huffman
/// coding: the agent's own choice of never-indexed fields is kept, and hyper's table
/// is never touched.
fn encode_never_indexed(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x10);
    encode_string(out, name);
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, bytes: &[u8]) {
    encode_integer(out, bytes.len(), 7, 0);
    out.extend_from_slice(bytes);
}

fn encode_integer(out: &mut Vec<u8>, value: usize, prefix_bits: u8, first: u8) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

impl<S: AsyncRead + Unpin> AsyncRead for H2RequestGuard<S> {
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
            match this.process() {
                Ok(true) => continue,
                Ok(false) => {}
                Err(problem) => {
                    tracing::info!(
                        problem,
                        "malformed HTTP/2 from the agent: connection closed"
                    );
                    this.failed = Some(format!("malformed HTTP/2: {problem}"));
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

super::guard_io::write_through!(H2RequestGuard);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt as _;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let length = payload.len() as u32;
        out.extend_from_slice(&length.to_be_bytes()[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    async fn rewrite(input: Vec<u8>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut guard = H2RequestGuard::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        guard.read_to_end(&mut out).await.expect("rewritten");
        assert_eq!(
            &out[..PREFACE_LEN],
            &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]
        );
        let mut rest = &out[PREFACE_LEN..];
        let mut decoder = loona_hpack::Decoder::new();
        let mut fields = Vec::new();
        while !rest.is_empty() {
            let length = usize::from(rest[2]) | usize::from(rest[1]) << 8;
            if rest[3] == HEADERS || rest[3] == CONTINUATION {
                fields.extend(
                    decoder
                        .decode(&rest[9..9 + length])
                        .expect("literal fields"),
                );
            }
            rest = &rest[9 + length..];
        }
        fields
    }

    #[tokio::test]
    async fn connection_specific_fields_become_the_marker() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = encoder.encode(vec![
            (&b":method"[..], &b"GET"[..]),
            (b":path", b"/"),
            (b"connection", b"keep-alive"),
            (b"te", b"gzip"),
            (b"sluice-malformed-request", b"forged"),
        ]);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &block));
        // The same fields again, now from the agent's dynamic table.
        let again = encoder.encode(vec![(&b":method"[..], &b"GET"[..]), (b"x-ok", b"1")]);
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &again));
        let fields = rewrite(input).await;
        let names: Vec<String> = fields
            .iter()
            .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
            .collect();
        assert_eq!(
            names,
            [":method", ":path", MALFORMED_MARKER, ":method", "x-ok"]
        );
        let marker = String::from_utf8_lossy(&fields[2].1);
        assert!(
            marker.contains("`connection`") && marker.contains("te"),
            "{marker}"
        );
    }

    #[tokio::test]
    async fn trailers_and_other_frames_pass() {
        let mut encoder = loona_hpack::Encoder::new();
        let head = encoder.encode(vec![(&b":method"[..], &b"POST"[..]), (b"te", b"trailers")]);
        let trailers = encoder.encode(vec![(&b"grpc-status"[..], &b"0"[..])]);
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &head));
        input.extend(frame(0x0, 0, 1, b"body"));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));
        let fields = rewrite(input).await;
        assert_eq!(fields.len(), 3, "{fields:?}");
        assert_eq!(fields[1], (b"te".to_vec(), b"trailers".to_vec()));
    }

    #[tokio::test]
    async fn a_broken_block_closes_the_connection() {
        let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"x"));
        let mut guard = H2RequestGuard::new(std::io::Cursor::new(input));
        let mut out = Vec::new();
        assert!(guard.read_to_end(&mut out).await.is_err());
    }

    #[test]
    fn integers_use_continuation_bytes() {
        let mut out = Vec::new();
        encode_integer(&mut out, 1337, 5, 0);
        assert_eq!(out, [31, 154, 10]);
    }
}
