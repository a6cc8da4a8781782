//! Primitive reads and writes of the PostgreSQL wire format, shared by the frontend
//! and backend codecs: big-endian integers, NUL-terminated strings, length-prefixed
//! values and format codes.
//!
//! Every read is bounds-checked and returns a [`DecodeError`] instead of panicking:
//! the bytes come from untrusted peers. Every message write goes through
//! [`write_message`], which back-patches the length and leaves the buffer untouched
//! when an encoder rejects its input.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Why a frame's body is not a well-formed message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The body ended before `what` was complete.
    #[error("{what}: message ends early")]
    UnexpectedEof { what: &'static str },
    /// A string field has no terminating NUL inside the body.
    #[error("{what}: string is not NUL-terminated")]
    MissingNul { what: &'static str },
    /// A string field the proxy must judge is not valid UTF-8.
    #[error("{what}: string is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    /// A count of items is negative.
    #[error("{what}: invalid count {count}")]
    InvalidCount { what: &'static str, count: i64 },
    /// A value length is below -1 (-1 means NULL) or outside the allowed range.
    #[error("{what}: invalid length {len}")]
    InvalidLength { what: &'static str, len: i64 },
    /// A field holds a value the protocol does not define.
    #[error("{what}: invalid value {value}")]
    InvalidValue { what: &'static str, value: i64 },
    /// Bytes are left after the last field of the message.
    #[error("{what}: {count} trailing bytes")]
    TrailingBytes { what: &'static str, count: usize },
    /// The message type byte is not one this direction of the protocol defines.
    #[error("unknown message type {:?}", char::from(*tag))]
    UnknownTag { tag: u8 },
    /// The frame is not the message a context-specific decoder was asked for.
    #[error("expected message type {:?}, found {found:?}", char::from(*expected))]
    UnexpectedTag { expected: u8, found: Option<u8> },
    /// A startup-phase frame where a typed message was expected, or the reverse.
    #[error("startup packet where a typed message was expected")]
    UnexpectedStartup,
    /// The startup packet's code is neither protocol 3 nor a known request code.
    #[error("unknown startup code {code}")]
    UnknownStartupCode { code: i32 },
}

/// Why an encoder refused its input (the destination buffer is left unchanged).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncodeError {
    /// A string would be cut short by an embedded NUL, corrupting the framing.
    #[error("{what}: contains a NUL byte")]
    InteriorNul { what: &'static str },
    /// A string that the protocol uses as a terminator when empty.
    #[error("{what}: must not be empty")]
    Empty { what: &'static str },
    /// A length or count that does not fit its wire field.
    #[error("{what}: {len} exceeds the protocol limit {max}")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A value the protocol does not allow in this field.
    #[error("{what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
}

/// Format code of a parameter or column value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Code 0: the value is text in the client encoding.
    Text,
    /// Code 1: the value uses the type's binary send/receive format.
    Binary,
}

impl Format {
    /// The wire code of this format.
    pub fn code(self) -> i16 {
        match self {
            Format::Text => 0,
            Format::Binary => 1,
        }
    }

    pub(crate) fn from_code(code: i16, what: &'static str) -> Result<Self, DecodeError> {
        match code {
            0 => Ok(Format::Text),
            1 => Ok(Format::Binary),
            other => Err(DecodeError::InvalidValue {
                what,
                value: i64::from(other),
            }),
        }
    }
}

/// Bounds-checked cursor over a frame. Slices borrow from (or share) the frame's `Bytes`.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf` starting at `pos` (just past the frame header).
    pub(crate) fn new(buf: &'a Bytes, pos: usize) -> Self {
        Self { buf, pos }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn rest_slice(&self) -> &'a [u8] {
        let all: &'a [u8] = self.buf;
        all.get(self.pos..).unwrap_or(&[])
    }

    /// The next `n` bytes as a borrowed slice.
    pub(crate) fn slice(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let out = self
            .rest_slice()
            .get(..n)
            .ok_or(DecodeError::UnexpectedEof { what })?;
        self.pos = self.pos.saturating_add(n);
        Ok(out)
    }

    /// The next `n` bytes as a zero-copy slice of the frame.
    pub(crate) fn bytes(&mut self, n: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        let out = self.slice(n, what)?;
        // `slice` succeeded, so start..start+n is in range.
        Ok(self.buf.slice(start..start.saturating_add(out.len())))
    }

    /// Everything left in the frame, zero-copy.
    pub(crate) fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.buf.len());
        self.pos = self.buf.len();
        self.buf.slice(start..)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        self.slice(N, what)?
            .try_into()
            .map_err(|_| DecodeError::UnexpectedEof { what })
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// The raw bytes of a NUL-terminated string, without the NUL.
    pub(crate) fn cstr_bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let rest = self.rest_slice();
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul { what })?;
        let s = rest.get(..nul).ok_or(DecodeError::MissingNul { what })?;
        self.pos = self.pos.saturating_add(nul).saturating_add(1);
        Ok(s)
    }

    /// A NUL-terminated string that must be valid UTF-8.
    pub(crate) fn cstr(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.cstr_bytes(what)?).map_err(|_| DecodeError::InvalidUtf8 { what })
    }

    /// A NUL-terminated string, invalid UTF-8 replaced by U+FFFD (borrowed when valid).
    pub(crate) fn cstr_lossy(&mut self, what: &'static str) -> Result<Cow<'a, str>, DecodeError> {
        Ok(String::from_utf8_lossy(self.cstr_bytes(what)?))
    }

    /// A NUL-terminated string, zero-copy, without the NUL and without UTF-8 checks.
    pub(crate) fn cstr_raw(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let start = self.pos;
        let s = self.cstr_bytes(what)?;
        Ok(self.buf.slice(start..start.saturating_add(s.len())))
    }

    /// An Int32 length followed by that many bytes; length -1 is SQL NULL.
    pub(crate) fn nullable(&mut self, what: &'static str) -> Result<Option<Bytes>, DecodeError> {
        let len = self.i32(what)?;
        if len == -1 {
            return Ok(None);
        }
        let n = usize::try_from(len).map_err(|_| DecodeError::InvalidLength {
            what,
            len: i64::from(len),
        })?;
        self.bytes(n, what).map(Some)
    }

    /// A non-negative Int16 item count.
    pub(crate) fn count(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.i16(what)?;
        usize::try_from(n).map_err(|_| DecodeError::InvalidCount {
            what,
            count: i64::from(n),
        })
    }

    /// A `Vec` capacity for `count` items of at least `min_size` bytes each, bounded
    /// by what the frame can actually hold, so a hostile count cannot force a large
    /// allocation.
    pub(crate) fn capacity(&self, count: usize, min_size: usize) -> usize {
        count.min(self.remaining().checked_div(min_size).unwrap_or(0))
    }

    /// `count` Int16 format codes.
    pub(crate) fn formats(
        &mut self,
        count: usize,
        what: &'static str,
    ) -> Result<Vec<Format>, DecodeError> {
        let mut out = Vec::with_capacity(self.capacity(count, 2));
        for _ in 0..count {
            out.push(Format::from_code(self.i16(what)?, what)?);
        }
        Ok(out)
    }

    /// An Int16 count followed by that many format codes.
    pub(crate) fn counted_formats(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<Format>, DecodeError> {
        let n = self.count(what)?;
        self.formats(n, what)
    }

    /// An Int16 count followed by that many nullable values.
    pub(crate) fn counted_values(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<Option<Bytes>>, DecodeError> {
        let n = self.count(what)?;
        let mut out = Vec::with_capacity(self.capacity(n, 4));
        for _ in 0..n {
            out.push(self.nullable(what)?);
        }
        Ok(out)
    }

    /// Succeeds only if the whole body was consumed.
    pub(crate) fn finish(self, what: &'static str) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { what, count }),
        }
    }
}

/// Appends one message: the optional type byte, a length placeholder, then whatever
/// `body` writes; the length is patched afterwards. On error `dst` is truncated back
/// to where it was.
pub(crate) fn write_message(
    dst: &mut BytesMut,
    tag: Option<u8>,
    body: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = dst.len();
    if let Some(tag) = tag {
        dst.put_u8(tag);
    }
    let len_at = dst.len();
    dst.put_i32(0);
    let result = body(dst).and_then(|()| {
        let len = dst.len().saturating_sub(len_at);
        let wire = i32::try_from(len).map_err(|_| EncodeError::TooLarge {
            what: "message",
            len,
            max: i32::MAX as usize,
        })?;
        if let Some(slot) = dst.get_mut(len_at..len_at.saturating_add(4)) {
            slot.copy_from_slice(&wire.to_be_bytes());
        }
        Ok(())
    });
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

/// Appends `s` and its terminating NUL, refusing embedded NULs.
pub(crate) fn put_cstr(
    dst: &mut BytesMut,
    s: &[u8],
    what: &'static str,
) -> Result<(), EncodeError> {
    if s.contains(&0) {
        return Err(EncodeError::InteriorNul { what });
    }
    dst.put_slice(s);
    dst.put_u8(0);
    Ok(())
}

/// Appends an Int32 length and the bytes, or -1 for NULL.
pub(crate) fn put_nullable(
    dst: &mut BytesMut,
    value: Option<&[u8]>,
    what: &'static str,
) -> Result<(), EncodeError> {
    match value {
        None => dst.put_i32(-1),
        Some(v) => {
            let len = i32::try_from(v.len()).map_err(|_| EncodeError::TooLarge {
                what,
                len: v.len(),
                max: i32::MAX as usize,
            })?;
            dst.put_i32(len);
            dst.put_slice(v);
        }
    }
    Ok(())
}

/// Appends an Int16 item count.
pub(crate) fn put_count(
    dst: &mut BytesMut,
    n: usize,
    what: &'static str,
) -> Result<(), EncodeError> {
    let count = i16::try_from(n).map_err(|_| EncodeError::TooLarge {
        what,
        len: n,
        max: i16::MAX as usize,
    })?;
    dst.put_i16(count);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reads_fields_and_reports_eof() {
        let buf = Bytes::from_static(b"\x00\x01\xff\xff\xff\xffab\0\x00\x00\x00\x02xyrest");
        let mut r = Reader::new(&buf, 0);
        assert_eq!(r.i16("a"), Ok(1));
        assert_eq!(r.i32("b"), Ok(-1));
        assert_eq!(r.cstr("c"), Ok("ab"));
        assert_eq!(r.nullable("d"), Ok(Some(Bytes::from_static(b"xy"))));
        assert_eq!(r.rest(), Bytes::from_static(b"rest"));
        assert_eq!(r.u8("e"), Err(DecodeError::UnexpectedEof { what: "e" }));
        assert_eq!(r.cstr("f"), Err(DecodeError::MissingNul { what: "f" }));
        assert!(r.finish("g").is_ok());
    }

    #[test]
    fn reader_rejects_bad_lengths_counts_and_utf8() {
        let buf = Bytes::from_static(b"\xff\xff\xff\xfe");
        assert_eq!(
            Reader::new(&buf, 0).nullable("v"),
            Err(DecodeError::InvalidLength { what: "v", len: -2 })
        );
        let buf = Bytes::from_static(b"\xff\xff");
        assert_eq!(
            Reader::new(&buf, 0).count("n"),
            Err(DecodeError::InvalidCount {
                what: "n",
                count: -1
            })
        );
        let buf = Bytes::from_static(b"\x7f\xff\xff\xff");
        assert_eq!(
            Reader::new(&buf, 0).nullable("v"),
            Err(DecodeError::UnexpectedEof { what: "v" })
        );
        let buf = Bytes::from_static(b"\xc3\x28\0");
        assert_eq!(
            Reader::new(&buf, 0).cstr("s"),
            Err(DecodeError::InvalidUtf8 { what: "s" })
        );
        assert_eq!(
            Reader::new(&buf, 0).cstr_lossy("s"),
            Ok(Cow::from("\u{fffd}("))
        );
        let buf = Bytes::from_static(b"\x00\x02");
        assert_eq!(
            Reader::new(&buf, 0).formats(1, "f"),
            Err(DecodeError::InvalidValue {
                what: "f",
                value: 2
            })
        );
    }

    #[test]
    fn zero_copy_slices_share_the_frame() {
        let buf = Bytes::from_static(b"\x00\x00\x00\x03abc");
        let v = Reader::new(&buf, 0).nullable("v").ok().flatten();
        let v = v.unwrap_or_default();
        assert_eq!(v.as_ptr(), buf.as_ptr().wrapping_add(4));
    }

    #[test]
    fn write_message_patches_length_and_rolls_back() {
        let mut dst = BytesMut::from(&b"keep"[..]);
        assert!(write_message(&mut dst, Some(b'Q'), |d| put_cstr(d, b"x", "s")).is_ok());
        assert_eq!(&dst[..], b"keepQ\x00\x00\x00\x06x\0");
        let err = write_message(&mut dst, Some(b'Q'), |d| put_cstr(d, b"a\0b", "s"));
        assert_eq!(err, Err(EncodeError::InteriorNul { what: "s" }));
        assert_eq!(&dst[..], b"keepQ\x00\x00\x00\x06x\0");
        let mut dst = BytesMut::new();
        assert_eq!(
            put_count(&mut dst, 40_000, "n"),
            Err(EncodeError::TooLarge {
                what: "n",
                len: 40_000,
                max: 32_767
            })
        );
    }
}
