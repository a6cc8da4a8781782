//! Splits a PostgreSQL v3 byte stream into whole frames, in either direction.
//!
//! The proxy decodes only the frames it has to judge or rewrite and forwards the
//! rest untouched, so a [`Frame`] keeps its raw bytes, header included. Two framings
//! exist on the wire:
//!
//! - the startup phase (frontend only): untyped packets `Int32 length` + body, where
//!   the body starts with a protocol version or a request code (SSL, GSS encryption,
//!   cancel);
//! - the regular phase: `Byte1 type` + `Int32 length` + body.
//!
//! In both, the length counts itself but not the type byte. The decoder refuses
//! lengths below the header size and above a configurable maximum as soon as the
//! header is buffered, so a hostile peer cannot make the proxy buffer unbounded data.
//! A [`FrameError`] is fatal for the stream: there is no way to resynchronise.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use super::wire::Reader;

/// Protocol version 3.0 as sent in a StartupMessage (`3 << 16`).
pub const PROTOCOL_VERSION_3_0: i32 = 196_608;
/// Request code of a CancelRequest packet.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// Request code of an SSLRequest packet.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// Request code of a GSSENCRequest packet.
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;

/// Default limit on a regular frame's length field: large DataRow and CopyData
/// messages are legitimate, but not without bound.
pub const DEFAULT_MAX_FRAME_LEN: usize = 64 << 20;
/// Default limit on a startup packet, the same as the server's
/// `MAX_STARTUP_PACKET_LENGTH`.
pub const DEFAULT_MAX_STARTUP_LEN: usize = 10_000;
/// Longest cancel secret key: 4 bytes in protocol 3.0, up to 256 from 3.2 on.
pub const MAX_SECRET_KEY_LEN: usize = 256;

/// First byte of a TLS handshake record, sent by clients using direct TLS.
const TLS_HANDSHAKE: u8 = 0x16;

/// Which framing the next bytes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Untyped length-prefixed packets (client's first packets only).
    Startup,
    /// Typed messages.
    Regular,
}

/// One whole frame, exactly as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    tag: Option<u8>,
    bytes: Bytes,
}

impl Frame {
    /// Message type byte, or `None` for a startup-phase packet.
    pub fn tag(&self) -> Option<u8> {
        self.tag
    }

    /// The raw frame, header included: forward this to pass the frame on unchanged.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The raw frame, header included.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Size of the header: 5 for typed messages, 4 for startup packets.
    pub fn header_len(&self) -> usize {
        if self.tag.is_some() { 5 } else { 4 }
    }

    /// Total size on the wire.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the frame has no body.
    pub fn is_empty(&self) -> bool {
        self.body().is_empty()
    }

    /// The body after the header (for a startup packet it begins with the code).
    pub fn body(&self) -> &[u8] {
        self.bytes.get(self.header_len()..).unwrap_or(&[])
    }

    /// The version or request code of a startup packet.
    pub fn startup_code(&self) -> Option<i32> {
        if self.tag.is_some() {
            return None;
        }
        self.reader().i32("startup code").ok()
    }

    /// A cursor over the body.
    pub(crate) fn reader(&self) -> Reader<'_> {
        Reader::new(&self.bytes, self.header_len())
    }
}

/// Why the stream cannot be framed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is smaller than the header it must count.
    #[error("invalid frame length {len}")]
    InvalidLength { len: i32 },
    /// The length field is above the configured maximum.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    Oversized { len: usize, max: usize },
    /// A startup packet whose code is neither protocol 3.x nor a known request.
    #[error("unknown startup packet code {code}")]
    UnknownStartupCode { code: i32 },
    /// The client began a TLS handshake without an SSLRequest (direct TLS).
    #[error("client started a TLS handshake without SSLRequest (direct TLS is not supported)")]
    DirectTls,
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    /// The answer to SSLRequest/GSSENCRequest was not `S`, `G`, `N` or an error.
    #[error("unexpected byte {byte:#04x} in answer to an encryption request")]
    UnexpectedNegotiationByte { byte: u8 },
}

/// Streaming frame decoder over a `BytesMut` read buffer.
///
/// Call [`decode`](Self::decode) after each read; it returns `Ok(None)` until a
/// whole frame is buffered and never consumes a partial frame.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    phase: Phase,
    max_frame_len: usize,
    max_startup_len: usize,
}

impl FrameDecoder {
    /// A decoder starting in `phase` with default limits.
    pub fn new(phase: Phase) -> Self {
        Self {
            phase,
            max_frame_len: DEFAULT_MAX_FRAME_LEN,
            max_startup_len: DEFAULT_MAX_STARTUP_LEN,
        }
    }

    /// For the client → server direction: starts in the startup phase and switches
    /// to regular framing after the StartupMessage.
    pub fn frontend() -> Self {
        Self::new(Phase::Startup)
    }

    /// For the server → client direction: regular framing throughout. (The one-byte
    /// answer to an encryption request is read with [`decode_negotiation_response`].)
    pub fn backend() -> Self {
        Self::new(Phase::Regular)
    }

    /// Limit on a regular frame's length field.
    pub fn with_max_frame_len(mut self, max: usize) -> Self {
        self.max_frame_len = max;
        self
    }

    /// Limit on a startup packet's length field.
    pub fn with_max_startup_len(mut self, max: usize) -> Self {
        self.max_startup_len = max;
        self
    }

    /// The framing the next frame will be read with.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Forces the framing, e.g. after the proxy handled the startup itself.
    pub fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    /// Takes the next whole frame off the front of `buf`, if one is buffered.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.phase {
            Phase::Startup => self.decode_startup(buf),
            Phase::Regular => self.decode_regular(buf),
        }
    }

    /// Like [`decode`](Self::decode), for when the peer has closed: leftover bytes
    /// that do not make a whole frame are an error.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: buf.len(),
            }),
        }
    }

    fn decode_startup(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.first() == Some(&TLS_HANDSHAKE) {
            return Err(FrameError::DirectTls);
        }
        let Some(len) = peek_i32(buf, 0) else {
            return Ok(None);
        };
        // Length, then at least the 4-byte code.
        if len < 8 {
            return Err(FrameError::InvalidLength { len });
        }
        let total = checked_len(len, self.max_startup_len)?;
        let Some(code) = peek_i32(buf, 4) else {
            return Ok(None);
        };
        let valid_len = match code {
            SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => total == 8,
            CANCEL_REQUEST_CODE => (16..=12 + MAX_SECRET_KEY_LEN).contains(&total),
            _ if code >> 16 == 3 => true,
            _ => return Err(FrameError::UnknownStartupCode { code }),
        };
        if !valid_len {
            return Err(FrameError::InvalidLength { len });
        }
        if buf.len() < total {
            return Ok(None);
        }
        if code >> 16 == 3 {
            self.phase = Phase::Regular;
        }
        Ok(Some(Frame {
            tag: None,
            bytes: buf.split_to(total).freeze(),
        }))
    }

    fn decode_regular(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let (Some(&tag), Some(len)) = (buf.first(), peek_i32(buf, 1)) else {
            return Ok(None);
        };
        if len < 4 {
            return Err(FrameError::InvalidLength { len });
        }
        let total = checked_len(len, self.max_frame_len)?.saturating_add(1);
        if buf.len() < total {
            return Ok(None);
        }
        Ok(Some(Frame {
            tag: Some(tag),
            bytes: buf.split_to(total).freeze(),
        }))
    }
}

/// The big-endian Int32 at `at`, if buffered.
fn peek_i32(buf: &[u8], at: usize) -> Option<i32> {
    let b: [u8; 4] = buf.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(i32::from_be_bytes(b))
}

/// A non-negative length field checked against `max`.
fn checked_len(len: i32, max: usize) -> Result<usize, FrameError> {
    let n = usize::try_from(len).map_err(|_| FrameError::InvalidLength { len })?;
    if n > max {
        return Err(FrameError::Oversized { len: n, max });
    }
    Ok(n)
}

/// The server's one-byte answer to SSLRequest or GSSENCRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NegotiationResponse {
    /// `S`: proceed with a TLS handshake.
    Ssl,
    /// `G`: proceed with GSSAPI encryption.
    Gss,
    /// `N`: no encryption; the client may continue in plaintext.
    Refused,
    /// `E`: an ErrorResponse follows (left in the buffer for the frame decoder).
    ErrorFollows,
}

/// Reads the server's answer to an encryption request off the front of `buf`.
pub fn decode_negotiation_response(
    buf: &mut BytesMut,
) -> Result<Option<NegotiationResponse>, FrameError> {
    let Some(&byte) = buf.first() else {
        return Ok(None);
    };
    let answer = match byte {
        b'S' => NegotiationResponse::Ssl,
        b'G' => NegotiationResponse::Gss,
        b'N' => NegotiationResponse::Refused,
        b'E' => return Ok(Some(NegotiationResponse::ErrorFollows)),
        byte => return Err(FrameError::UnexpectedNegotiationByte { byte }),
    };
    buf.advance(1);
    Ok(Some(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(dec: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = dec.decode_eof(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    #[test]
    fn regular_frames_keep_raw_bytes() {
        let wire = b"Z\x00\x00\x00\x05IS\x00\x00\x00\x04";
        let frames = decode_all(&mut FrameDecoder::backend(), wire).unwrap_or_default();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].tag(), Some(b'Z'));
        assert_eq!(&frames[0].as_bytes()[..], b"Z\x00\x00\x00\x05I");
        assert_eq!(frames[0].body(), b"I");
        assert_eq!(frames[1].tag(), Some(b'S'));
        assert!(frames[1].is_empty());
        assert_eq!(frames[1].len(), 5);
    }

    #[test]
    fn returns_none_until_whole_frame_is_buffered() {
        let mut dec = FrameDecoder::backend();
        let mut buf = BytesMut::new();
        for b in b"Z\x00\x00\x00\x05" {
            buf.extend_from_slice(&[*b]);
            assert_eq!(dec.decode(&mut buf), Ok(None));
        }
        assert_eq!(buf.len(), 5, "a partial frame is never consumed");
        buf.extend_from_slice(b"T");
        let f = dec.decode(&mut buf).ok().flatten();
        assert_eq!(f.map(|f| f.body().to_vec()), Some(b"T".to_vec()));
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_switches_to_regular_but_encryption_requests_do_not() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&8i32.to_be_bytes());
        wire.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        wire.extend_from_slice(&8i32.to_be_bytes());
        wire.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
        wire.extend_from_slice(&9i32.to_be_bytes());
        wire.extend_from_slice(&PROTOCOL_VERSION_3_0.to_be_bytes());
        wire.push(0);
        wire.extend_from_slice(b"X\x00\x00\x00\x04");
        let mut dec = FrameDecoder::frontend();
        let frames = decode_all(&mut dec, &wire).unwrap_or_default();
        let codes: Vec<_> = frames.iter().map(|f| f.startup_code()).collect();
        assert_eq!(
            codes,
            [
                Some(SSL_REQUEST_CODE),
                Some(GSSENC_REQUEST_CODE),
                Some(PROTOCOL_VERSION_3_0),
                None
            ]
        );
        assert_eq!(frames[3].tag(), Some(b'X'));
        assert_eq!(dec.phase(), Phase::Regular);
    }

    #[test]
    fn rejects_bad_lengths_early() {
        let mut buf = BytesMut::from(&b"Q\x00\x00\x00\x03"[..]);
        assert_eq!(
            FrameDecoder::backend().decode(&mut buf),
            Err(FrameError::InvalidLength { len: 3 })
        );
        let mut buf = BytesMut::from(&b"D\xff\xff\xff\xff"[..]);
        assert_eq!(
            FrameDecoder::backend().decode(&mut buf),
            Err(FrameError::InvalidLength { len: -1 })
        );
        // Oversized is reported from the header alone, before the body arrives.
        let mut buf = BytesMut::from(&b"D\x00\x01\x00\x01"[..]);
        assert_eq!(
            FrameDecoder::backend()
                .with_max_frame_len(65_536)
                .decode(&mut buf),
            Err(FrameError::Oversized {
                len: 65_537,
                max: 65_536
            })
        );
        let mut buf = BytesMut::from(&b"\x00\x00\x27\x11"[..]);
        assert_eq!(
            FrameDecoder::frontend().decode(&mut buf),
            Err(FrameError::Oversized {
                len: 10_001,
                max: 10_000
            })
        );
        let mut buf = BytesMut::from(&b"\x00\x00\x00\x07"[..]);
        assert_eq!(
            FrameDecoder::frontend().decode(&mut buf),
            Err(FrameError::InvalidLength { len: 7 })
        );
    }

    #[test]
    fn rejects_bad_startup_codes_and_request_lengths() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&8i32.to_be_bytes());
        wire.extend_from_slice(&(2i32 << 16).to_be_bytes());
        assert_eq!(
            decode_all(&mut FrameDecoder::frontend(), &wire),
            Err(FrameError::UnknownStartupCode { code: 2 << 16 })
        );
        let mut wire = Vec::new();
        wire.extend_from_slice(&12i32.to_be_bytes());
        wire.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        assert_eq!(
            decode_all(&mut FrameDecoder::frontend(), &wire),
            Err(FrameError::InvalidLength { len: 12 })
        );
        let mut wire = Vec::new();
        wire.extend_from_slice(&12i32.to_be_bytes());
        wire.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
        assert_eq!(
            decode_all(&mut FrameDecoder::frontend(), &wire),
            Err(FrameError::InvalidLength { len: 12 })
        );
        let mut buf = BytesMut::from(&b"\x16\x03\x01\x02\x00"[..]);
        assert_eq!(
            FrameDecoder::frontend().decode(&mut buf),
            Err(FrameError::DirectTls)
        );
    }

    #[test]
    fn eof_inside_a_frame_is_truncated() {
        let mut buf = BytesMut::from(&b"C\x00\x00\x00\x09SEL"[..]);
        assert_eq!(
            FrameDecoder::backend().decode_eof(&mut buf),
            Err(FrameError::Truncated { buffered: 8 })
        );
        let mut buf = BytesMut::new();
        assert_eq!(FrameDecoder::backend().decode_eof(&mut buf), Ok(None));
    }

    #[test]
    fn negotiation_byte() {
        let mut buf = BytesMut::from(&b"NR"[..]);
        assert_eq!(
            decode_negotiation_response(&mut buf),
            Ok(Some(NegotiationResponse::Refused))
        );
        assert_eq!(&buf[..], b"R");
        let mut buf = BytesMut::from(&b"E\x00"[..]);
        assert_eq!(
            decode_negotiation_response(&mut buf),
            Ok(Some(NegotiationResponse::ErrorFollows))
        );
        assert_eq!(
            buf.len(),
            2,
            "the ErrorResponse stays for the frame decoder"
        );
        assert_eq!(decode_negotiation_response(&mut BytesMut::new()), Ok(None));
        assert_eq!(
            decode_negotiation_response(&mut BytesMut::from(&b"x"[..])),
            Err(FrameError::UnexpectedNegotiationByte { byte: b'x' })
        );
    }
}
