//! Exec and attach streams of the Kubernetes API, recorded as they pass.
//!
//! kubectl 1.30 and later speak WebSocket (`v5.channel.k8s.io`, else
//! `v4.channel.k8s.io`): each binary message is one channel byte and data, 0 stdin,
//! 1 stdout, 2 stderr, 3 error (a `meta/v1 Status` carrying the exit code), 4 resize
//! (`{"Width":W,"Height":H}`), and in v5 255 close (`[255, 0]` half-closes stdin). The
//! relay forwards every byte unchanged both ways and decodes a copy: frame headers with
//! tungstenite's own parser ([`FrameHeader::parse`]; its message layer would re-frame
//! the stream, which a transparent relay must not), payloads unmasked and split into
//! channels here, as they stream (a frame is never buffered whole). What it decodes
//! becomes an asciicast recording (stdin as input, stdout and stderr as output, resizes
//! kept, the exit code last) and the request record's tag and parameters.
//!
//! The request is narrowed to what can be decoded: only the v5 and v4 subprotocols are
//! offered upstream and no extension (so no compressed frames). A stream that cannot be
//! decoded anyway (a compressed or text frame, a malformed header) is closed: an exec
//! sluice cannot record does not go on.
//!
//! SPDY/3.1 (kubectl 1.28 and earlier) has no Rust crate under a usable licence, so a
//! SPDY exec is judged at the upgrade and recorded as its bytes and duration.

use std::{
    io::Cursor,
    sync::{Arc, Mutex},
};

use hyper::{
    HeaderMap,
    header::{self, HeaderValue},
    upgrade::Upgraded,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tungstenite::protocol::frame::{
    FrameHeader,
    coding::{Control, Data, OpCode},
};

use crate::{protocols::Relayed, recording::Cast};

/// The subprotocols whose channels this module decodes, most preferred first.
pub const DECODED_SUBPROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The most of the error channel kept (a `Status` is a few hundred bytes).
const MAX_STATUS: usize = 64 * 1024;

/// How an upgraded request streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    WebSocket,
    Spdy,
    Other,
}

impl StreamKind {
    pub fn of(headers: &HeaderMap) -> Option<Self> {
        let upgrade = headers.get(header::UPGRADE)?.to_str().ok()?.trim();
        Some(if upgrade.eq_ignore_ascii_case("websocket") {
            Self::WebSocket
        } else if upgrade.to_ascii_lowercase().starts_with("spdy/") {
            Self::Spdy
        } else {
            Self::Other
        })
    }
}

/// Narrows a WebSocket exec/attach request to what [`relay_websocket`] decodes: the
/// decoded subprotocols the agent offered (or one it did not, so that the handshake
/// fails rather than run undecoded), and no extensions.
pub fn offer_decodable(headers: &mut HeaderMap) {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|protocol| protocol.trim().to_owned())
        .collect();
    let kept: Vec<&str> = DECODED_SUBPROTOCOLS
        .into_iter()
        .filter(|wanted| offered.iter().any(|protocol| protocol == wanted))
        .collect();
    let value = if kept.is_empty() {
        DECODED_SUBPROTOCOLS[1].to_owned()
    } else {
        kept.join(", ")
    };
    headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
}

/// Relays an upgraded stream without decoding it, counting bytes (SPDY, port-forward).
pub async fn relay_counted(agent: Upgraded, upstream: Upgraded, stream: String) -> Relayed {
    let channels = relay(agent, upstream, false).await;
    Relayed {
        bytes_up: channels.bytes_up,
        bytes_down: channels.bytes_down,
        parameters: vec![format!("stream={stream}")],
        ..Relayed::default()
    }
}

/// Which way bytes go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// From the agent: frames are masked; stdin, resize and close channels.
    Up,
    /// From the API server: stdout, stderr and error channels.
    Down,
}

/// What the decoded channels have said so far.
struct Channels {
    cast: Cast,
    stdin: u64,
    stdout: u64,
    stderr: u64,
    resizes: u64,
    stdin_closed: bool,
    status: Vec<u8>,
    bytes_up: u64,
    bytes_down: u64,
    /// Why decoding stopped, if it did.
    failure: Option<String>,
}

impl Channels {
    fn new() -> Self {
        Self {
            cast: Cast::new(None),
            stdin: 0,
            stdout: 0,
            stderr: 0,
            resizes: 0,
            stdin_closed: false,
            status: Vec::new(),
            bytes_up: 0,
            bytes_down: 0,
            failure: None,
        }
    }

    fn data(&mut self, direction: Direction, channel: u8, data: &[u8]) {
        match (direction, channel) {
            (Direction::Up, 0) => {
                self.stdin += data.len() as u64;
                self.cast.input(data);
            }
            (Direction::Up, 4) => {
                // One resize is a small JSON object; it may arrive in pieces, which the
                // parse below simply skips.
                if let Ok(size) = serde_json::from_slice::<serde_json::Value>(data) {
                    let dimension = |key: &str| {
                        size.get(key)
                            .and_then(serde_json::Value::as_u64)
                            .and_then(|n| u32::try_from(n).ok())
                    };
                    if let (Some(width), Some(height)) = (dimension("Width"), dimension("Height")) {
                        self.resizes += 1;
                        self.cast.resize(width, height);
                    }
                }
            }
            (Direction::Up, 255) if data.first() == Some(&0) => self.stdin_closed = true,
            (Direction::Down, 1) => {
                self.stdout += data.len() as u64;
                self.cast.output(data);
            }
            (Direction::Down, 2) => {
                self.stderr += data.len() as u64;
                self.cast.output(data);
            }
            (Direction::Down, 3) => {
                let room = MAX_STATUS.saturating_sub(self.status.len());
                self.status.extend_from_slice(&data[..data.len().min(room)]);
            }
            _ => {}
        }
    }
}

/// The exit code an error channel's `Status` carries: `Success` is 0, a
/// `NonZeroExitCode` failure names it in its `ExitCode` cause. `Err` is any other
/// failure's message.
pub fn exit_code(status: &[u8]) -> Result<Option<i64>, String> {
    if status.is_empty() {
        return Ok(None);
    }
    let status: serde_json::Value = serde_json::from_slice(status)
        .map_err(|error| format!("the error channel is not a Status: {error}"))?;
    match status.get("status").and_then(serde_json::Value::as_str) {
        Some("Success") => Ok(Some(0)),
        _ if status.get("reason").and_then(serde_json::Value::as_str)
            == Some("NonZeroExitCode") =>
        {
            let code = status
                .pointer("/details/causes")
                .and_then(serde_json::Value::as_array)
                .into_iter()
                .flatten()
                .filter(|cause| {
                    cause.get("reason").and_then(serde_json::Value::as_str) == Some("ExitCode")
                })
                .find_map(|cause| cause.get("message")?.as_str()?.parse::<i64>().ok());
            code.map(Some)
                .ok_or_else(|| "a NonZeroExitCode Status without an exit code".to_owned())
        }
        _ => Err(status
            .get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("the exec failed")
            .to_owned()),
    }
}

/// Splits one direction's bytes into frames and their payloads into channels, as they
/// stream.
struct FrameDecoder {
    direction: Direction,
    head: Vec<u8>,
    /// The frame whose payload is streaming: bytes left, mask and offset in it, and
    /// whether it is a data frame.
    remaining: u64,
    mask: Option<[u8; 4]>,
    mask_offset: usize,
    in_data_frame: bool,
    /// The channel of the data message in progress (`None` before its first byte).
    channel: Option<u8>,
    /// A data message is in progress (its final frame not seen yet).
    in_message: bool,
}

impl FrameDecoder {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            head: Vec::new(),
            remaining: 0,
            mask: None,
            mask_offset: 0,
            in_data_frame: false,
            channel: None,
            in_message: false,
        }
    }

    /// Decodes `bytes` into `channels`; `Err` when the stream cannot be decoded.
    fn push(&mut self, mut bytes: &[u8], channels: &mut Channels) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = usize::try_from(self.remaining)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                let mut payload = bytes[..take].to_vec();
                bytes = &bytes[take..];
                self.remaining -= take as u64;
                if let Some(mask) = self.mask {
                    for byte in &mut payload {
                        *byte ^= mask[self.mask_offset % 4];
                        self.mask_offset += 1;
                    }
                }
                if self.in_data_frame {
                    let mut data = payload.as_slice();
                    if self.channel.is_none() {
                        self.channel = data.first().copied();
                        data = &data[1..];
                    }
                    if let Some(channel) = self.channel
                        && !data.is_empty()
                    {
                        channels.data(self.direction, channel, data);
                    }
                }
                continue;
            }
            let needed = 14usize.saturating_sub(self.head.len()).min(bytes.len());
            let before = self.head.len();
            self.head.extend_from_slice(&bytes[..needed]);
            let mut cursor = Cursor::new(self.head.as_slice());
            let parsed = FrameHeader::parse(&mut cursor)
                .map_err(|error| format!("malformed WebSocket frame: {error}"))?;
            let Some((header, length)) = parsed else {
                bytes = &bytes[needed..];
                continue;
            };
            let used = usize::try_from(cursor.position()).unwrap_or(self.head.len());
            bytes = &bytes[used - before..];
            self.head.clear();
            self.start_frame(&header, length)?;
        }
        Ok(())
    }

    fn start_frame(&mut self, header: &FrameHeader, length: u64) -> Result<(), String> {
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err("a WebSocket frame uses an extension sluice did not offer".into());
        }
        if (self.direction == Direction::Up) != header.mask.is_some() {
            return Err("a WebSocket frame is masked the wrong way".into());
        }
        self.remaining = length;
        self.mask = header.mask;
        self.mask_offset = 0;
        self.in_data_frame = false;
        match header.opcode {
            OpCode::Data(Data::Binary) => {
                if self.in_message {
                    return Err("a WebSocket message began inside another".into());
                }
                self.channel = None;
                self.in_data_frame = true;
            }
            OpCode::Data(Data::Continue) => {
                if !self.in_message {
                    return Err("a WebSocket continuation frame outside a message".into());
                }
                self.in_data_frame = true;
            }
            OpCode::Data(Data::Text) => {
                return Err(
                    "a text WebSocket message (base64 channels are not decoded): closed".into(),
                );
            }
            OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
                return Err("a WebSocket frame with a reserved opcode".into());
            }
            OpCode::Control(_) => {
                if !header.is_final || length > 125 {
                    return Err("a malformed WebSocket control frame".into());
                }
                return Ok(());
            }
        }
        self.in_message = !header.is_final;
        Ok(())
    }
}

/// Copies one direction, decoding what passes. Returns when the source ends (the
/// destination is then shut down) or decoding fails.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    direction: Direction,
    decode: bool,
    channels: &Mutex<Channels>,
) -> Result<(), ()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = FrameDecoder::new(direction);
    let mut buffer = vec![0u8; 32 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return Ok(());
            }
            Ok(read) => read,
        };
        let chunk = &buffer[..read];
        {
            let mut channels = channels
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match direction {
                Direction::Up => channels.bytes_up += read as u64,
                Direction::Down => channels.bytes_down += read as u64,
            }
            if decode && let Err(problem) = decoder.push(chunk, &mut channels) {
                channels.failure = Some(problem);
                return Err(());
            }
        }
        if to.write_all(chunk).await.is_err() {
            return Ok(());
        }
    }
}

/// Relays both ways to the end (or until decoding fails, then both close), counting
/// and, with `decode`, decoding the WebSocket channels.
async fn relay(agent: Upgraded, upstream: Upgraded, decode: bool) -> Channels {
    let channels = Arc::new(Mutex::new(Channels::new()));
    let (agent_read, agent_write) = tokio::io::split(TokioIo::new(agent));
    let (upstream_read, upstream_write) = tokio::io::split(TokioIo::new(upstream));
    {
        let up = pump(agent_read, upstream_write, Direction::Up, decode, &channels);
        let down = pump(
            upstream_read,
            agent_write,
            Direction::Down,
            decode,
            &channels,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        // Both directions to their ends, unless decoding fails: then both close.
        while !(up_done && down_done) {
            tokio::select! {
                result = &mut up, if !up_done => {
                    up_done = true;
                    if result.is_err() { break; }
                }
                result = &mut down, if !down_done => {
                    down_done = true;
                    if result.is_err() { break; }
                }
            }
        }
    }
    // The pumps are done, so this is the only reference left.
    let mut channels = channels
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    std::mem::replace(&mut *channels, Channels::new())
}

/// Relays an exec/attach WebSocket, recording its channels; `protocol` is the
/// subprotocol the API server chose.
pub async fn relay_websocket(agent: Upgraded, upstream: Upgraded, protocol: String) -> Relayed {
    let channels = relay(agent, upstream, true).await;
    let mut cast = channels.cast;
    let mut parameters = vec![
        format!("stream=websocket {protocol}"),
        format!("stdin={}", channels.stdin),
        format!("stdout={}", channels.stdout),
        format!("stderr={}", channels.stderr),
        format!("resizes={}", channels.resizes),
    ];
    if channels.stdin_closed {
        parameters.push("stdin=closed".into());
    }
    let mut error = channels.failure;
    let mut tag = None;
    match exit_code(&channels.status) {
        Ok(Some(code)) => {
            parameters.push(format!("exit={code}"));
            tag = Some(format!("exit {code}"));
            cast.exit(u32::try_from(code).unwrap_or(u32::MAX));
        }
        Ok(None) => {}
        Err(message) => {
            error.get_or_insert(message);
        }
    }
    Relayed {
        bytes_up: channels.bytes_up,
        bytes_down: channels.bytes_down,
        tag,
        parameters,
        error,
        recording: Some(cast.finish()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(opcode: u8, fin: bool, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let mask_bit = if mask.is_some() { 0x80 } else { 0 };
        if payload.len() < 126 {
            out.push(mask_bit | payload.len() as u8);
        } else {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        let mut payload = payload.to_vec();
        if let Some(mask) = mask {
            out.extend_from_slice(&mask);
            for (index, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[index % 4];
            }
        }
        out.extend_from_slice(&payload);
        out
    }

    fn channels() -> Channels {
        Channels::new()
    }

    #[test]
    fn channels_are_decoded_across_fragments_and_byte_by_byte() {
        let mut stream = Vec::new();
        stream.extend(frame(2, true, None, b"\x01"));
        stream.extend(frame(2, false, None, b"\x01hello "));
        stream.extend(frame(9, true, None, b"ping"));
        stream.extend(frame(0, true, None, b"world\n"));
        stream.extend(frame(2, true, None, &[&[2u8][..], &[b'e'; 300]].concat()));
        stream.extend(frame(
            2,
            true,
            None,
            br#"{"metadata":{},"status":"Failure","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#
                .iter()
                .fold(vec![3u8], |mut all, byte| {
                    all.push(*byte);
                    all
                })
                .as_slice(),
        ));
        let mut whole = channels();
        FrameDecoder::new(Direction::Down)
            .push(&stream, &mut whole)
            .unwrap();
        let mut split = channels();
        let mut decoder = FrameDecoder::new(Direction::Down);
        for byte in &stream {
            decoder
                .push(std::slice::from_ref(byte), &mut split)
                .unwrap();
        }
        for decoded in [whole, split] {
            assert_eq!(decoded.stdout, 12);
            assert_eq!(decoded.stderr, 300);
            assert_eq!(exit_code(&decoded.status), Ok(Some(3)));
            let text = String::from_utf8(decoded.cast.finish()).unwrap();
            let (_, events) = crate::recording::parse(&text).unwrap();
            let output: String = events
                .iter()
                .filter(|event| event.code == "o")
                .map(|event| event.data.as_str())
                .collect();
            assert_eq!(output, format!("hello world\n{}", "e".repeat(300)));
        }
    }

    #[test]
    fn agent_frames_are_unmasked_into_stdin_resize_and_close() {
        let mask = Some([1, 2, 3, 4]);
        let mut stream = Vec::new();
        stream.extend(frame(2, true, mask, b"\x00ls -l\n"));
        stream.extend(frame(
            2,
            true,
            mask,
            br#"{"Width":120,"Height":40}"#
                .iter()
                .fold(vec![4u8], |mut all, b| {
                    all.push(*b);
                    all
                })
                .as_slice(),
        ));
        stream.extend(frame(2, true, mask, &[255, 0]));
        let mut decoded = channels();
        FrameDecoder::new(Direction::Up)
            .push(&stream, &mut decoded)
            .unwrap();
        assert_eq!(decoded.stdin, 6);
        assert_eq!(decoded.resizes, 1);
        assert!(decoded.stdin_closed);
        let text = String::from_utf8(decoded.cast.finish()).unwrap();
        assert!(text.contains(r#""i","ls -l\n""#), "{text}");
        assert!(text.contains(r#""r","120x40""#), "{text}");
    }

    #[test]
    fn undecodable_streams_are_refused() {
        for (direction, bytes) in [
            // Unmasked from the agent.
            (Direction::Up, frame(2, true, None, b"\x00x")),
            // Masked from the server.
            (
                Direction::Down,
                frame(2, true, Some([1, 1, 1, 1]), b"\x01x"),
            ),
            // Compressed (RSV1).
            (Direction::Down, {
                let mut f = frame(2, true, None, b"\x01x");
                f[0] |= 0x40;
                f
            }),
            // Text (base64 channels).
            (Direction::Down, frame(1, true, None, b"1aGk=")),
            // A continuation with no message.
            (Direction::Down, frame(0, true, None, b"x")),
        ] {
            let mut decoded = channels();
            assert!(
                FrameDecoder::new(direction)
                    .push(&bytes, &mut decoded)
                    .is_err()
            );
        }
    }

    #[test]
    fn exit_codes_come_from_the_status() {
        assert_eq!(
            exit_code(br#"{"metadata":{},"status":"Success"}"#),
            Ok(Some(0))
        );
        assert_eq!(exit_code(b""), Ok(None));
        assert!(exit_code(br#"{"status":"Failure","message":"container not found"}"#).is_err());
        assert!(exit_code(b"not json").is_err());
    }

    #[test]
    fn only_decodable_subprotocols_are_offered() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v5.channel.k8s.io, v4.channel.k8s.io, base64.channel.k8s.io"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static("permessage-deflate"),
        );
        offer_decodable(&mut headers);
        assert_eq!(
            headers[header::SEC_WEBSOCKET_PROTOCOL],
            "v5.channel.k8s.io, v4.channel.k8s.io"
        );
        assert!(!headers.contains_key(header::SEC_WEBSOCKET_EXTENSIONS));
        let mut base64_only = HeaderMap::new();
        base64_only.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("base64.channel.k8s.io"),
        );
        offer_decodable(&mut base64_only);
        assert_eq!(
            base64_only[header::SEC_WEBSOCKET_PROTOCOL],
            "v4.channel.k8s.io"
        );
    }
}
