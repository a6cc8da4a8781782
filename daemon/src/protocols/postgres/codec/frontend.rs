//! Messages the client (the agent) sends: decoding for the proxy to judge them, and
//! encoders for what the proxy itself sends upstream.
//!
//! Decoded messages borrow from their [`Frame`]: strings are `&str` slices and
//! values are zero-copy `Bytes`, so judging a statement copies nothing and the frame
//! can still be forwarded unchanged afterwards.
//!
//! Strings are decoded strictly: invalid UTF-8 is a [`DecodeError::InvalidUtf8`],
//! never a lossy replacement, because the proxy judges this text and must not judge
//! something other than what the server would run. (Clients must therefore use
//! `client_encoding=UTF8`; the proxy can enforce that from the startup parameters.)
//! Password bytes are the exception: they are kept raw and never interpreted.
//!
//! Type `p` carries PasswordMessage, SASLInitialResponse, SASLResponse and
//! GSSResponse; only the authentication exchange tells them apart, so
//! [`FrontendMessage::decode`] returns it raw as [`FrontendMessage::AuthResponse`]
//! and [`PasswordMessage`], [`SaslInitialResponse`] and [`SaslResponse`] each decode
//! it in their context.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{
    CANCEL_REQUEST_CODE, Frame, GSSENC_REQUEST_CODE, MAX_SECRET_KEY_LEN, PROTOCOL_VERSION_3_0,
    SSL_REQUEST_CODE,
};
use super::wire::{
    DecodeError, EncodeError, Format, Reader, put_cstr, put_nullable, write_message,
};

/// Protocol version requested by a StartupMessage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolVersion {
    pub major: u16,
    pub minor: u16,
}

impl ProtocolVersion {
    /// Version 3.0, the one every server since 7.4 speaks.
    pub const V3_0: Self = Self { major: 3, minor: 0 };

    /// The Int32 code on the wire (`major << 16 | minor`).
    pub fn code(self) -> i32 {
        (i32::from(self.major) << 16) | i32::from(self.minor)
    }

    fn from_code(code: i32) -> Self {
        Self {
            major: u16::try_from(code >> 16).unwrap_or(u16::MAX),
            minor: u16::try_from(code & 0xffff).unwrap_or(u16::MAX),
        }
    }
}

/// StartupMessage: the version and the session parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup<'a> {
    pub version: ProtocolVersion,
    /// In wire order: `user`, `database`, `application_name`, `options`, GUCs,
    /// `_pq_.*` protocol options...
    pub parameters: Vec<(&'a str, &'a str)>,
}

impl<'a> Startup<'a> {
    /// The value of parameter `name`, if sent.
    pub fn parameter(&self, name: &str) -> Option<&'a str> {
        self.parameters
            .iter()
            .find(|(k, _)| *k == name)
            .map(|&(_, v)| v)
    }

    /// The `user` parameter (required by the server).
    pub fn user(&self) -> Option<&'a str> {
        self.parameter("user")
    }

    /// The `database` parameter (defaults to the user name on the server).
    pub fn database(&self) -> Option<&'a str> {
        self.parameter("database")
    }
}

/// CancelRequest: asks the server to cancel the query running in another session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelRequest {
    pub pid: i32,
    /// 4 bytes in protocol 3.0; up to 256 from 3.2 on.
    pub secret_key: Bytes,
}

/// Parse: creates a prepared statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Empty for the unnamed statement.
    pub statement: &'a str,
    pub query: &'a str,
    /// OIDs of the parameter types the client specified (0 = unspecified).
    pub param_types: Vec<u32>,
}

/// Bind: creates a portal from a prepared statement and parameter values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Empty for the unnamed portal.
    pub portal: &'a str,
    pub statement: &'a str,
    /// Empty (all text), one (applies to all) or one per parameter.
    pub param_formats: Vec<Format>,
    /// Parameter values, `None` for SQL NULL; slices of the frame.
    pub params: Vec<Option<Bytes>>,
    /// Same convention as `param_formats`, for the result columns.
    pub result_formats: Vec<Format>,
}

impl Bind<'_> {
    /// The format of parameter `i` under the zero/one/per-item convention.
    pub fn param_format(&self, i: usize) -> Format {
        format_at(&self.param_formats, i)
    }

    /// The format of result column `i` under the zero/one/per-item convention.
    pub fn result_format(&self, i: usize) -> Format {
        format_at(&self.result_formats, i)
    }
}

fn format_at(formats: &[Format], i: usize) -> Format {
    match formats {
        [] => Format::Text,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(Format::Text),
    }
}

/// Whether Describe/Close names a prepared statement or a portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `S`
    Statement,
    /// `P`
    Portal,
}

impl Target {
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("describe/close kind")? {
            b'S' => Ok(Target::Statement),
            b'P' => Ok(Target::Portal),
            other => Err(DecodeError::InvalidValue {
                what: "describe/close kind",
                value: i64::from(other),
            }),
        }
    }
}

/// FunctionCall: the legacy fast-path call of a function by OID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCall {
    pub function_oid: u32,
    pub arg_formats: Vec<Format>,
    pub args: Vec<Option<Bytes>>,
    pub result_format: Format,
}

/// One message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage<'a> {
    Startup(Startup<'a>),
    SslRequest,
    GssEncRequest,
    CancelRequest(CancelRequest),
    /// `Q`: simple query, possibly several statements.
    Query {
        sql: &'a str,
    },
    /// `P`
    Parse(Parse<'a>),
    /// `B`
    Bind(Bind<'a>),
    /// `D`
    Describe {
        target: Target,
        name: &'a str,
    },
    /// `E`: `max_rows` 0 means no limit.
    Execute {
        portal: &'a str,
        max_rows: i32,
    },
    /// `C`
    Close {
        target: Target,
        name: &'a str,
    },
    /// `S`
    Sync,
    /// `H`
    Flush,
    /// `d`: a chunk of COPY FROM STDIN data.
    CopyData(Bytes),
    /// `c`
    CopyDone,
    /// `f`
    CopyFail {
        message: &'a str,
    },
    /// `F`
    FunctionCall(FunctionCall),
    /// `X`
    Terminate,
    /// `p`: the raw body of a password, SASL or GSS response; decode it with
    /// [`PasswordMessage`], [`SaslInitialResponse`] or [`SaslResponse`].
    AuthResponse(Bytes),
}

impl<'a> FrontendMessage<'a> {
    /// Decodes a frame read from the client (either phase).
    pub fn decode(frame: &'a Frame) -> Result<Self, DecodeError> {
        let Some(tag) = frame.tag() else {
            return decode_startup(frame);
        };
        let mut r = frame.reader();
        let msg = match tag {
            b'Q' => FrontendMessage::Query {
                sql: r.cstr("Query text")?,
            },
            b'P' => {
                let statement = r.cstr("Parse statement name")?;
                let query = r.cstr("Parse query")?;
                let n = r.count("Parse parameter type count")?;
                let mut param_types = Vec::with_capacity(r.capacity(n, 4));
                for _ in 0..n {
                    param_types.push(r.u32("Parse parameter type")?);
                }
                FrontendMessage::Parse(Parse {
                    statement,
                    query,
                    param_types,
                })
            }
            b'B' => FrontendMessage::Bind(Bind {
                portal: r.cstr("Bind portal name")?,
                statement: r.cstr("Bind statement name")?,
                param_formats: r.counted_formats("Bind parameter format")?,
                params: r.counted_values("Bind parameter value")?,
                result_formats: r.counted_formats("Bind result format")?,
            }),
            b'D' => FrontendMessage::Describe {
                target: Target::decode(&mut r)?,
                name: r.cstr("Describe name")?,
            },
            b'E' => FrontendMessage::Execute {
                portal: r.cstr("Execute portal name")?,
                max_rows: r.i32("Execute row limit")?,
            },
            b'C' => FrontendMessage::Close {
                target: Target::decode(&mut r)?,
                name: r.cstr("Close name")?,
            },
            b'S' => FrontendMessage::Sync,
            b'H' => FrontendMessage::Flush,
            b'd' => FrontendMessage::CopyData(r.rest()),
            b'c' => FrontendMessage::CopyDone,
            b'f' => FrontendMessage::CopyFail {
                message: r.cstr("CopyFail message")?,
            },
            b'F' => {
                let function_oid = r.u32("FunctionCall function")?;
                let arg_formats = r.counted_formats("FunctionCall argument format")?;
                let args = r.counted_values("FunctionCall argument")?;
                let result_format = Format::from_code(
                    r.i16("FunctionCall result format")?,
                    "FunctionCall result format",
                )?;
                FrontendMessage::FunctionCall(FunctionCall {
                    function_oid,
                    arg_formats,
                    args,
                    result_format,
                })
            }
            b'X' => FrontendMessage::Terminate,
            b'p' => FrontendMessage::AuthResponse(r.rest()),
            tag => return Err(DecodeError::UnknownTag { tag }),
        };
        r.finish("frontend message")?;
        Ok(msg)
    }
}

fn decode_startup(frame: &Frame) -> Result<FrontendMessage<'_>, DecodeError> {
    let mut r = frame.reader();
    let code = r.i32("startup code")?;
    let msg = match code {
        SSL_REQUEST_CODE => FrontendMessage::SslRequest,
        GSSENC_REQUEST_CODE => FrontendMessage::GssEncRequest,
        CANCEL_REQUEST_CODE => {
            let pid = r.i32("CancelRequest pid")?;
            let secret_key = r.rest();
            if !(4..=MAX_SECRET_KEY_LEN).contains(&secret_key.len()) {
                return Err(DecodeError::InvalidLength {
                    what: "CancelRequest secret key",
                    len: i64::try_from(secret_key.len()).unwrap_or(i64::MAX),
                });
            }
            FrontendMessage::CancelRequest(CancelRequest { pid, secret_key })
        }
        code if code >> 16 == 3 => {
            let mut parameters = Vec::new();
            loop {
                let name = r.cstr("startup parameter name")?;
                if name.is_empty() {
                    break;
                }
                parameters.push((name, r.cstr("startup parameter value")?));
            }
            FrontendMessage::Startup(Startup {
                version: ProtocolVersion::from_code(code),
                parameters,
            })
        }
        code => return Err(DecodeError::UnknownStartupCode { code }),
    };
    r.finish("startup packet")?;
    Ok(msg)
}

/// The body of a `p` frame, checked to be one.
fn auth_response(frame: &Frame) -> Result<Reader<'_>, DecodeError> {
    match frame.tag() {
        Some(b'p') => Ok(frame.reader()),
        found => Err(DecodeError::UnexpectedTag {
            expected: b'p',
            found,
        }),
    }
}

/// PasswordMessage: answer to AuthenticationCleartextPassword or MD5Password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordMessage {
    /// Raw bytes without the NUL (the password, or `md5` + hex digest), not checked
    /// for UTF-8.
    pub password: Bytes,
}

impl PasswordMessage {
    /// Decodes a `p` frame sent after a password request.
    pub fn decode(frame: &Frame) -> Result<Self, DecodeError> {
        let mut r = auth_response(frame)?;
        let password = r.cstr_raw("PasswordMessage password")?;
        r.finish("PasswordMessage")?;
        Ok(Self { password })
    }
}

/// SASLInitialResponse: the chosen mechanism and the client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitialResponse<'a> {
    pub mechanism: &'a str,
    /// `None` when the client sent length -1.
    pub data: Option<Bytes>,
}

impl<'a> SaslInitialResponse<'a> {
    /// Decodes the first `p` frame sent after AuthenticationSASL.
    pub fn decode(frame: &'a Frame) -> Result<Self, DecodeError> {
        let mut r = auth_response(frame)?;
        let mechanism = r.cstr("SASL mechanism")?;
        let data = r.nullable("SASL initial response")?;
        r.finish("SASLInitialResponse")?;
        Ok(Self { mechanism, data })
    }
}

/// SASLResponse: a later step of the SASL exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslResponse {
    pub data: Bytes,
}

impl SaslResponse {
    /// Decodes a `p` frame sent after AuthenticationSASLContinue.
    pub fn decode(frame: &Frame) -> Result<Self, DecodeError> {
        let mut r = auth_response(frame)?;
        Ok(Self { data: r.rest() })
    }
}

/// Appends a StartupMessage. Parameter names must be non-empty (an empty name ends
/// the list on the wire).
pub fn encode_startup(
    version: ProtocolVersion,
    parameters: &[(&str, &str)],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    write_message(dst, None, |dst| {
        dst.put_i32(version.code());
        for (name, value) in parameters {
            if name.is_empty() {
                return Err(EncodeError::Empty {
                    what: "startup parameter name",
                });
            }
            put_cstr(dst, name.as_bytes(), "startup parameter name")?;
            put_cstr(dst, value.as_bytes(), "startup parameter value")?;
        }
        dst.put_u8(0);
        Ok(())
    })
}

/// Appends a StartupMessage for protocol 3.0.
pub fn encode_startup_v3(
    parameters: &[(&str, &str)],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    debug_assert_eq!(ProtocolVersion::V3_0.code(), PROTOCOL_VERSION_3_0);
    encode_startup(ProtocolVersion::V3_0, parameters, dst)
}

/// Appends an SSLRequest.
pub fn encode_ssl_request(dst: &mut BytesMut) {
    dst.put_i32(8);
    dst.put_i32(SSL_REQUEST_CODE);
}

/// Appends a CancelRequest.
pub fn encode_cancel_request(
    pid: i32,
    secret_key: &[u8],
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if !(4..=MAX_SECRET_KEY_LEN).contains(&secret_key.len()) {
        return Err(EncodeError::Invalid {
            what: "cancel secret key",
            reason: "must be 4 to 256 bytes long",
        });
    }
    write_message(dst, None, |dst| {
        dst.put_i32(CANCEL_REQUEST_CODE);
        dst.put_i32(pid);
        dst.put_slice(secret_key);
        Ok(())
    })
}

/// Appends a PasswordMessage (cleartext password or `md5`-prefixed digest).
pub fn encode_password_message(password: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
    write_message(dst, Some(b'p'), |dst| put_cstr(dst, password, "password"))
}

/// Appends a SASLInitialResponse.
pub fn encode_sasl_initial_response(
    mechanism: &str,
    data: Option<&[u8]>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    if mechanism.is_empty() {
        return Err(EncodeError::Empty {
            what: "SASL mechanism",
        });
    }
    write_message(dst, Some(b'p'), |dst| {
        put_cstr(dst, mechanism.as_bytes(), "SASL mechanism")?;
        put_nullable(dst, data, "SASL initial response")
    })
}

/// Appends a SASLResponse.
pub fn encode_sasl_response(data: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
    write_message(dst, Some(b'p'), |dst| {
        dst.put_slice(data);
        Ok(())
    })
}

/// Appends a simple Query.
pub fn encode_query(sql: &str, dst: &mut BytesMut) -> Result<(), EncodeError> {
    write_message(dst, Some(b'Q'), |dst| {
        put_cstr(dst, sql.as_bytes(), "query")
    })
}

/// Appends a Terminate.
pub fn encode_terminate(dst: &mut BytesMut) {
    dst.put_u8(b'X');
    dst.put_i32(4);
}

#[cfg(test)]
mod tests {
    use super::super::frame::FrameDecoder;
    use super::*;

    /// The single frame in `wire`, decoded with `dec`.
    fn frame_with(dec: &mut FrameDecoder, wire: &[u8]) -> Frame {
        let mut buf = BytesMut::from(wire);
        let frame = dec.decode_eof(&mut buf);
        assert!(buf.is_empty(), "one whole frame expected");
        match frame {
            Ok(Some(f)) => f,
            other => panic!("no frame: {other:?}"),
        }
    }

    fn regular(wire: &[u8]) -> Frame {
        frame_with(&mut FrameDecoder::backend(), wire)
    }

    fn startup(wire: &[u8]) -> Frame {
        frame_with(&mut FrameDecoder::frontend(), wire)
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn startup_message_from_libpq_bytes() {
        // Bytes as psql 15 sends them (parameters trimmed).
        let wire = b"\x00\x00\x00\x4c\x00\x03\x00\x00user\0agent\0database\0app\0\
application_name\0psql\0client_encoding\0UTF8\0\0";
        let f = startup(wire);
        let Ok(FrontendMessage::Startup(s)) = FrontendMessage::decode(&f) else {
            panic!("not a startup: {:?}", FrontendMessage::decode(&f));
        };
        assert_eq!(s.version, ProtocolVersion::V3_0);
        assert_eq!(s.user(), Some("agent"));
        assert_eq!(s.database(), Some("app"));
        assert_eq!(s.parameter("application_name"), Some("psql"));
        assert_eq!(s.parameters.len(), 4);
        assert_eq!(s.parameter("options"), None);
    }

    #[test]
    fn startup_requests() {
        let f = startup(b"\x00\x00\x00\x08\x04\xd2\x16\x2f");
        assert_eq!(FrontendMessage::decode(&f), Ok(FrontendMessage::SslRequest));
        let f = startup(b"\x00\x00\x00\x08\x04\xd2\x16\x30");
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::GssEncRequest)
        );
        let f = startup(b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef");
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::CancelRequest(CancelRequest {
                pid: 12345,
                secret_key: Bytes::from_static(b"\xde\xad\xbe\xef"),
            }))
        );
    }

    #[test]
    fn malformed_startup_is_a_typed_error() {
        // Parameter value missing its NUL.
        let f = startup(b"\x00\x00\x00\x0d\x00\x03\x00\x00user\0");
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::MissingNul {
                what: "startup parameter value"
            })
        );
        // Bytes after the terminating empty name.
        let f = startup(b"\x00\x00\x00\x0b\x00\x03\x00\x00\0xy");
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::TrailingBytes {
                what: "startup packet",
                count: 2
            })
        );
        let f = startup(b"\x00\x00\x00\x0b\x00\x03\x00\x00\xff\0\0");
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::InvalidUtf8 {
                what: "startup parameter name"
            })
        );
    }

    #[test]
    fn simple_query_and_friends() {
        let f = regular(b"Q\x00\x00\x00\x0dSELECT 1\0");
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::Query { sql: "SELECT 1" })
        );
        for (wire, expected) in [
            (&b"S\x00\x00\x00\x04"[..], FrontendMessage::Sync),
            (b"H\x00\x00\x00\x04", FrontendMessage::Flush),
            (b"c\x00\x00\x00\x04", FrontendMessage::CopyDone),
            (b"X\x00\x00\x00\x04", FrontendMessage::Terminate),
        ] {
            assert_eq!(FrontendMessage::decode(&regular(wire)), Ok(expected));
        }
        let f = regular(b"d\x00\x00\x00\x07a\tb");
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::CopyData(Bytes::from_static(b"a\tb")))
        );
        let f = regular(b"f\x00\x00\x00\x09oops\0");
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::CopyFail { message: "oops" })
        );
        let f = regular(b"S\x00\x00\x00\x05x");
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::TrailingBytes {
                what: "frontend message",
                count: 1
            })
        );
        let f = regular(b"Q\x00\x00\x00\x06\xff\0");
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::InvalidUtf8 { what: "Query text" })
        );
        let f = regular(b"?\x00\x00\x00\x04");
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::UnknownTag { tag: b'?' })
        );
    }

    #[test]
    fn extended_query_messages() {
        let wire = msg(b'P', b"s1\0SELECT $1::int\0\x00\x01\x00\x00\x00\x17");
        let f = regular(&wire);
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::Parse(Parse {
                statement: "s1",
                query: "SELECT $1::int",
                param_types: vec![23],
            }))
        );

        let wire = msg(
            b'B',
            b"p1\0s1\0\x00\x01\x00\x01\x00\x02\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00",
        );
        let f = regular(&wire);
        let Ok(FrontendMessage::Bind(b)) = FrontendMessage::decode(&f) else {
            panic!("not a Bind: {:?}", FrontendMessage::decode(&f));
        };
        assert_eq!((b.portal, b.statement), ("p1", "s1"));
        assert_eq!(b.param_formats, [Format::Binary]);
        assert_eq!(b.params, [Some(Bytes::from_static(b"42")), None]);
        assert_eq!(b.param_format(1), Format::Binary);
        assert_eq!(b.result_format(3), Format::Text);
        assert!(b.result_formats.is_empty());
        // The value is a slice of the frame, not a copy.
        let v = b.params.first().cloned().flatten().unwrap_or_default();
        assert!(f.as_bytes().as_ptr_range().contains(&v.as_ptr()));

        let f = regular(&msg(b'D', b"Pp1\0"));
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::Describe {
                target: Target::Portal,
                name: "p1"
            })
        );
        let f = regular(&msg(b'C', b"S\0"));
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::Close {
                target: Target::Statement,
                name: ""
            })
        );
        let f = regular(&msg(b'E', b"\0\x00\x00\x00\x64"));
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::Execute {
                portal: "",
                max_rows: 100
            })
        );
        let f = regular(&msg(b'D', b"Xname\0"));
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::InvalidValue {
                what: "describe/close kind",
                value: i64::from(b'X')
            })
        );
        let f = regular(&msg(
            b'F',
            b"\x00\x00\x0b\xb8\x00\x00\x00\x01\x00\x00\x00\x01z\x00\x01",
        ));
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::FunctionCall(FunctionCall {
                function_oid: 3000,
                arg_formats: vec![],
                args: vec![Some(Bytes::from_static(b"z"))],
                result_format: Format::Binary,
            }))
        );
    }

    #[test]
    fn hostile_counts_do_not_allocate_or_panic() {
        // Claims 32767 parameters in a tiny frame.
        let f = regular(&msg(b'B', b"\0\0\x00\x00\x7f\xff\x00\x00\x00\x01"));
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::UnexpectedEof {
                what: "Bind parameter value"
            })
        );
        let f = regular(&msg(b'B', b"\0\0\x00\x00\x00\x01\xff\xff\xff\xf0"));
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::InvalidLength {
                what: "Bind parameter value",
                len: -16
            })
        );
        let f = regular(&msg(b'P', b"\0q\0\xff\xff"));
        assert_eq!(
            FrontendMessage::decode(&f),
            Err(DecodeError::InvalidCount {
                what: "Parse parameter type count",
                count: -1
            })
        );
    }

    #[test]
    fn auth_responses_by_context() {
        let mut buf = BytesMut::new();
        assert!(encode_password_message(b"md5abc", &mut buf).is_ok());
        let f = regular(&buf);
        assert_eq!(
            PasswordMessage::decode(&f),
            Ok(PasswordMessage {
                password: Bytes::from_static(b"md5abc")
            })
        );
        assert!(matches!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::AuthResponse(b)) if &b[..] == b"md5abc\0"
        ));

        let mut buf = BytesMut::new();
        let first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO";
        assert!(encode_sasl_initial_response("SCRAM-SHA-256", Some(first), &mut buf).is_ok());
        let f = regular(&buf);
        assert_eq!(
            SaslInitialResponse::decode(&f),
            Ok(SaslInitialResponse {
                mechanism: "SCRAM-SHA-256",
                data: Some(Bytes::copy_from_slice(first)),
            })
        );
        let mut buf = BytesMut::new();
        assert!(encode_sasl_initial_response("X", None, &mut buf).is_ok());
        assert_eq!(
            SaslInitialResponse::decode(&regular(&buf)).map(|s| s.data),
            Ok(None)
        );

        let mut buf = BytesMut::new();
        assert!(encode_sasl_response(b"c=biws,r=abc,p=xyz", &mut buf).is_ok());
        let f = regular(&buf);
        assert_eq!(
            SaslResponse::decode(&f),
            Ok(SaslResponse {
                data: Bytes::from_static(b"c=biws,r=abc,p=xyz")
            })
        );
        let q = regular(b"Q\x00\x00\x00\x05\0");
        assert_eq!(
            SaslResponse::decode(&q),
            Err(DecodeError::UnexpectedTag {
                expected: b'p',
                found: Some(b'Q')
            })
        );
        assert_eq!(
            SaslInitialResponse::decode(&regular(&msg(b'p', b"SCRAM\0\x00\x00\x00\x09ab"))),
            Err(DecodeError::UnexpectedEof {
                what: "SASL initial response"
            })
        );
    }

    #[test]
    fn encoders_round_trip() {
        let params = [
            ("user", "agent"),
            ("database", "app"),
            ("options", "-c a=b"),
        ];
        let mut buf = BytesMut::new();
        assert!(encode_startup_v3(&params, &mut buf).is_ok());
        let f = startup(&buf);
        assert_eq!(
            FrontendMessage::decode(&f),
            Ok(FrontendMessage::Startup(Startup {
                version: ProtocolVersion::V3_0,
                parameters: params.to_vec(),
            }))
        );
        let v32 = ProtocolVersion { major: 3, minor: 2 };
        let mut buf = BytesMut::new();
        assert!(encode_startup(v32, &[], &mut buf).is_ok());
        assert!(matches!(
            FrontendMessage::decode(&startup(&buf)),
            Ok(FrontendMessage::Startup(s)) if s.version == v32
        ));

        let mut buf = BytesMut::new();
        encode_ssl_request(&mut buf);
        assert_eq!(
            FrontendMessage::decode(&startup(&buf)),
            Ok(FrontendMessage::SslRequest)
        );

        let key = [7u8; 32];
        let mut buf = BytesMut::new();
        assert!(encode_cancel_request(-5, &key, &mut buf).is_ok());
        assert_eq!(
            FrontendMessage::decode(&startup(&buf)),
            Ok(FrontendMessage::CancelRequest(CancelRequest {
                pid: -5,
                secret_key: Bytes::copy_from_slice(&key),
            }))
        );

        let mut buf = BytesMut::new();
        assert!(encode_query("SELECT 'é'", &mut buf).is_ok());
        assert_eq!(
            FrontendMessage::decode(&regular(&buf)),
            Ok(FrontendMessage::Query { sql: "SELECT 'é'" })
        );

        let mut buf = BytesMut::new();
        encode_terminate(&mut buf);
        assert_eq!(&buf[..], b"X\x00\x00\x00\x04");
    }

    #[test]
    fn encoders_refuse_what_would_corrupt_the_stream() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        assert_eq!(
            encode_query("SELECT 1\0; DROP TABLE t", &mut buf),
            Err(EncodeError::InteriorNul { what: "query" })
        );
        assert_eq!(
            encode_startup_v3(&[("", "x")], &mut buf),
            Err(EncodeError::Empty {
                what: "startup parameter name"
            })
        );
        assert!(encode_cancel_request(1, &[1, 2], &mut buf).is_err());
        assert!(encode_sasl_initial_response("", None, &mut buf).is_err());
        assert_eq!(&buf[..], b"prefix", "a refused encode writes nothing");
    }
}
