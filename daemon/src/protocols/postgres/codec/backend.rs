//! Messages the server sends: decoding for the proxy to inspect or rewrite them
//! (DataRow for masking, BackendKeyData for remapping), and encoders for what the
//! proxy synthesizes towards the agent (a refusal as ErrorResponse, a masked
//! DataRow, its own BackendKeyData, ReadyForQuery, the SSL refusal byte).
//!
//! Decoded messages borrow from their [`Frame`]: values are zero-copy `Bytes`
//! slices. Server text is decoded lossily (invalid UTF-8 becomes U+FFFD, borrowed
//! when valid): it is informational, and a server may legitimately send non-UTF-8
//! text (e.g. an early error in the server encoding), which must not kill the
//! session. Values (DataRow, CopyData) are never interpreted here.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{Frame, MAX_SECRET_KEY_LEN};
use super::wire::{
    DecodeError, EncodeError, Format, Reader, put_count, put_cstr, put_nullable, write_message,
};

/// An Authentication request (`R`), by its Int32 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication<'a> {
    /// 0: authentication succeeded.
    Ok,
    /// 3: send the password in clear.
    CleartextPassword,
    /// 5: send `md5(md5(password + user) + salt)`.
    Md5Password { salt: [u8; 4] },
    /// 10: start SASL with one of these mechanisms.
    Sasl { mechanisms: Vec<Cow<'a, str>> },
    /// 11: server-first message.
    SaslContinue { data: Bytes },
    /// 12: server-final message.
    SaslFinal { data: Bytes },
    /// Any other method (Kerberos, GSS, SSPI...), body kept raw.
    Unsupported { code: i32, data: Bytes },
}

/// Transaction status reported by ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// `I`: not in a transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    /// The status byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            TransactionStatus::Idle => b'I',
            TransactionStatus::InTransaction => b'T',
            TransactionStatus::Failed => b'E',
        }
    }
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    pub name: Cow<'a, str>,
    /// OID of the source table, 0 if the column is not a plain table column.
    pub table_oid: u32,
    /// Attribute number in that table, 0 otherwise.
    pub column_attr: i16,
    pub type_oid: u32,
    /// Negative for variable-width types.
    pub type_size: i16,
    pub type_modifier: i32,
    pub format: Format,
}

/// Overall and per-column formats of a Copy{In,Out,Both}Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResponse {
    pub format: Format,
    pub column_formats: Vec<Format>,
}

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Panic,
    Warning,
    Notice,
    Debug,
    Info,
    Log,
}

impl Severity {
    /// The non-localized name the server sends in field `V`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse, in wire order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic<'a> {
    /// (field type, value): `S` severity, `V` non-localized severity, `C` SQLSTATE,
    /// `M` message, `D` detail, `H` hint, `P` position...
    pub fields: Vec<(u8, Cow<'a, str>)>,
}

impl<'a> Diagnostic<'a> {
    /// A diagnostic with severity (both `S` and `V`), SQLSTATE code and message.
    pub fn new(
        severity: Severity,
        code: impl Into<Cow<'a, str>>,
        message: impl Into<Cow<'a, str>>,
    ) -> Self {
        Self {
            fields: vec![
                (b'S', Cow::Borrowed(severity.as_str())),
                (b'V', Cow::Borrowed(severity.as_str())),
                (b'C', code.into()),
                (b'M', message.into()),
            ],
        }
    }

    /// Adds a `D` (detail) field.
    pub fn with_detail(mut self, detail: impl Into<Cow<'a, str>>) -> Self {
        self.fields.push((b'D', detail.into()));
        self
    }

    /// Adds an `H` (hint) field.
    pub fn with_hint(mut self, hint: impl Into<Cow<'a, str>>) -> Self {
        self.fields.push((b'H', hint.into()));
        self
    }

    /// The first field of type `kind`.
    pub fn field(&self, kind: u8) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v.as_ref())
    }

    /// Severity, preferring the non-localized `V` over `S`.
    pub fn severity(&self) -> Option<&str> {
        self.field(b'V').or_else(|| self.field(b'S'))
    }

    /// SQLSTATE code (`C`).
    pub fn code(&self) -> Option<&str> {
        self.field(b'C')
    }

    /// Primary message (`M`).
    pub fn message(&self) -> Option<&str> {
        self.field(b'M')
    }

    /// Detail (`D`).
    pub fn detail(&self) -> Option<&str> {
        self.field(b'D')
    }

    /// Hint (`H`).
    pub fn hint(&self) -> Option<&str> {
        self.field(b'H')
    }

    fn decode(r: &mut Reader<'a>) -> Result<Self, DecodeError> {
        let mut fields = Vec::new();
        loop {
            match r.u8("diagnostic field type")? {
                0 => break,
                kind => fields.push((kind, r.cstr_lossy("diagnostic field value")?)),
            }
        }
        Ok(Self { fields })
    }

    fn encode(&self, tag: u8, dst: &mut BytesMut) -> Result<(), EncodeError> {
        write_message(dst, Some(tag), |dst| {
            for (kind, value) in &self.fields {
                if *kind == 0 {
                    return Err(EncodeError::Invalid {
                        what: "diagnostic field type",
                        reason: "0 terminates the field list",
                    });
                }
                if *kind == b'C' && !is_sqlstate(value) {
                    return Err(EncodeError::Invalid {
                        what: "SQLSTATE code",
                        reason: "must be 5 characters of 0-9 and A-Z",
                    });
                }
                dst.put_u8(*kind);
                put_cstr(dst, value.as_bytes(), "diagnostic field value")?;
            }
            dst.put_u8(0);
            Ok(())
        })
    }
}

fn is_sqlstate(code: &str) -> bool {
    code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
}

/// One message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendMessage<'a> {
    /// `R`
    Authentication(Authentication<'a>),
    /// `S`
    ParameterStatus {
        name: Cow<'a, str>,
        value: Cow<'a, str>,
    },
    /// `K`: `secret_key` is 4 bytes in protocol 3.0, up to 256 from 3.2 on.
    BackendKeyData { pid: i32, secret_key: Bytes },
    /// `Z`
    ReadyForQuery { status: TransactionStatus },
    /// `T`
    RowDescription { fields: Vec<FieldDescription<'a>> },
    /// `D`: column values, `None` for SQL NULL; slices of the frame.
    DataRow { values: Vec<Option<Bytes>> },
    /// `C`: e.g. `SELECT 1`, `INSERT 0 3`.
    CommandComplete { tag: Cow<'a, str> },
    /// `E`
    ErrorResponse(Diagnostic<'a>),
    /// `N`
    NoticeResponse(Diagnostic<'a>),
    /// `I`
    EmptyQueryResponse,
    /// `1`
    ParseComplete,
    /// `2`
    BindComplete,
    /// `3`
    CloseComplete,
    /// `n`
    NoData,
    /// `s`
    PortalSuspended,
    /// `t`
    ParameterDescription { type_oids: Vec<u32> },
    /// `G`
    CopyInResponse(CopyResponse),
    /// `H`
    CopyOutResponse(CopyResponse),
    /// `W`
    CopyBothResponse(CopyResponse),
    /// `d`: a chunk of COPY TO STDOUT (or replication) data.
    CopyData(Bytes),
    /// `c`
    CopyDone,
    /// `A`: a NOTIFY delivered to this session.
    NotificationResponse {
        pid: i32,
        channel: Cow<'a, str>,
        payload: Cow<'a, str>,
    },
    /// `v`: the server supports an older minor version or not all `_pq_` options.
    NegotiateProtocolVersion {
        newest_minor: i32,
        unrecognized_options: Vec<Cow<'a, str>>,
    },
    /// `V`: result of a fast-path FunctionCall.
    FunctionCallResponse { value: Option<Bytes> },
}

impl<'a> BackendMessage<'a> {
    /// Decodes a frame read from the server.
    pub fn decode(frame: &'a Frame) -> Result<Self, DecodeError> {
        let Some(tag) = frame.tag() else {
            return Err(DecodeError::UnexpectedStartup);
        };
        let mut r = frame.reader();
        let msg = match tag {
            b'R' => BackendMessage::Authentication(decode_authentication(&mut r)?),
            b'S' => BackendMessage::ParameterStatus {
                name: r.cstr_lossy("ParameterStatus name")?,
                value: r.cstr_lossy("ParameterStatus value")?,
            },
            b'K' => {
                let pid = r.i32("BackendKeyData pid")?;
                let secret_key = r.rest();
                if !(4..=MAX_SECRET_KEY_LEN).contains(&secret_key.len()) {
                    return Err(DecodeError::InvalidLength {
                        what: "BackendKeyData secret key",
                        len: i64::try_from(secret_key.len()).unwrap_or(i64::MAX),
                    });
                }
                BackendMessage::BackendKeyData { pid, secret_key }
            }
            b'Z' => BackendMessage::ReadyForQuery {
                status: match r.u8("ReadyForQuery status")? {
                    b'I' => TransactionStatus::Idle,
                    b'T' => TransactionStatus::InTransaction,
                    b'E' => TransactionStatus::Failed,
                    other => {
                        return Err(DecodeError::InvalidValue {
                            what: "ReadyForQuery status",
                            value: i64::from(other),
                        });
                    }
                },
            },
            b'T' => {
                let n = r.count("RowDescription field count")?;
                // Each field is at least a NUL and 18 bytes of attributes.
                let mut fields = Vec::with_capacity(r.capacity(n, 19));
                for _ in 0..n {
                    fields.push(FieldDescription {
                        name: r.cstr_lossy("RowDescription field name")?,
                        table_oid: r.u32("RowDescription table")?,
                        column_attr: r.i16("RowDescription column")?,
                        type_oid: r.u32("RowDescription type")?,
                        type_size: r.i16("RowDescription type size")?,
                        type_modifier: r.i32("RowDescription type modifier")?,
                        format: Format::from_code(
                            r.i16("RowDescription format")?,
                            "RowDescription format",
                        )?,
                    });
                }
                BackendMessage::RowDescription { fields }
            }
            b'D' => BackendMessage::DataRow {
                values: r.counted_values("DataRow value")?,
            },
            b'C' => BackendMessage::CommandComplete {
                tag: r.cstr_lossy("CommandComplete tag")?,
            },
            b'E' => BackendMessage::ErrorResponse(Diagnostic::decode(&mut r)?),
            b'N' => BackendMessage::NoticeResponse(Diagnostic::decode(&mut r)?),
            b'I' => BackendMessage::EmptyQueryResponse,
            b'1' => BackendMessage::ParseComplete,
            b'2' => BackendMessage::BindComplete,
            b'3' => BackendMessage::CloseComplete,
            b'n' => BackendMessage::NoData,
            b's' => BackendMessage::PortalSuspended,
            b't' => {
                let n = r.count("ParameterDescription count")?;
                let mut type_oids = Vec::with_capacity(r.capacity(n, 4));
                for _ in 0..n {
                    type_oids.push(r.u32("ParameterDescription type")?);
                }
                BackendMessage::ParameterDescription { type_oids }
            }
            b'G' => BackendMessage::CopyInResponse(decode_copy_response(&mut r)?),
            b'H' => BackendMessage::CopyOutResponse(decode_copy_response(&mut r)?),
            b'W' => BackendMessage::CopyBothResponse(decode_copy_response(&mut r)?),
            b'd' => BackendMessage::CopyData(r.rest()),
            b'c' => BackendMessage::CopyDone,
            b'A' => BackendMessage::NotificationResponse {
                pid: r.i32("NotificationResponse pid")?,
                channel: r.cstr_lossy("NotificationResponse channel")?,
                payload: r.cstr_lossy("NotificationResponse payload")?,
            },
            b'v' => {
                let newest_minor = r.i32("NegotiateProtocolVersion minor")?;
                let n = r.i32("NegotiateProtocolVersion option count")?;
                let n = usize::try_from(n).map_err(|_| DecodeError::InvalidCount {
                    what: "NegotiateProtocolVersion option count",
                    count: i64::from(n),
                })?;
                let mut unrecognized_options = Vec::with_capacity(r.capacity(n, 1));
                for _ in 0..n {
                    unrecognized_options.push(r.cstr_lossy("NegotiateProtocolVersion option")?);
                }
                BackendMessage::NegotiateProtocolVersion {
                    newest_minor,
                    unrecognized_options,
                }
            }
            b'V' => BackendMessage::FunctionCallResponse {
                value: r.nullable("FunctionCallResponse value")?,
            },
            tag => return Err(DecodeError::UnknownTag { tag }),
        };
        r.finish("backend message")?;
        Ok(msg)
    }
}

fn decode_authentication<'a>(r: &mut Reader<'a>) -> Result<Authentication<'a>, DecodeError> {
    Ok(match r.i32("Authentication code")? {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => {
            let salt = r.slice(4, "MD5 salt")?;
            Authentication::Md5Password {
                salt: salt
                    .try_into()
                    .map_err(|_| DecodeError::UnexpectedEof { what: "MD5 salt" })?,
            }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr_lossy("SASL mechanism")?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            Authentication::Sasl { mechanisms }
        }
        11 => Authentication::SaslContinue { data: r.rest() },
        12 => Authentication::SaslFinal { data: r.rest() },
        code => Authentication::Unsupported {
            code,
            data: r.rest(),
        },
    })
}

fn decode_copy_response(r: &mut Reader<'_>) -> Result<CopyResponse, DecodeError> {
    let format = Format::from_code(
        i16::from(r.u8("copy overall format")?),
        "copy overall format",
    )?;
    let column_formats = r.counted_formats("copy column format")?;
    Ok(CopyResponse {
        format,
        column_formats,
    })
}

/// Appends an ErrorResponse.
pub fn encode_error_response(diag: &Diagnostic<'_>, dst: &mut BytesMut) -> Result<(), EncodeError> {
    diag.encode(b'E', dst)
}

/// Appends a NoticeResponse.
pub fn encode_notice_response(
    diag: &Diagnostic<'_>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    diag.encode(b'N', dst)
}

/// Appends a DataRow; `None` is SQL NULL.
pub fn encode_data_row(values: &[Option<&[u8]>], dst: &mut BytesMut) -> Result<(), EncodeError> {
    write_message(dst, Some(b'D'), |dst| {
        put_count(dst, values.len(), "DataRow column count")?;
        for v in values {
            put_nullable(dst, *v, "DataRow value")?;
        }
        Ok(())
    })
}

/// Appends a BackendKeyData (4-byte key for protocol 3.0, up to 256 bytes for 3.2).
pub fn encode_backend_key_data(
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
    write_message(dst, Some(b'K'), |dst| {
        dst.put_i32(pid);
        dst.put_slice(secret_key);
        Ok(())
    })
}

/// Appends a ReadyForQuery.
pub fn encode_ready_for_query(status: TransactionStatus, dst: &mut BytesMut) {
    dst.put_u8(b'Z');
    dst.put_i32(5);
    dst.put_u8(status.byte());
}

/// Appends the `N` byte that refuses an SSLRequest or GSSENCRequest.
pub fn encode_encryption_refused(dst: &mut BytesMut) {
    dst.put_u8(b'N');
}

#[cfg(test)]
mod tests {
    use super::super::frame::FrameDecoder;
    use super::*;

    fn frames(wire: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(wire);
        let mut dec = FrameDecoder::backend();
        let mut out = Vec::new();
        loop {
            match dec.decode_eof(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => return out,
                Err(e) => panic!("framing failed: {e}"),
            }
        }
    }

    fn one(wire: &[u8]) -> Frame {
        let mut all = frames(wire);
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn authentication_requests() {
        let cases: Vec<(Vec<u8>, Authentication<'_>)> = vec![
            (msg(b'R', b"\0\0\0\0"), Authentication::Ok),
            (msg(b'R', b"\0\0\0\x03"), Authentication::CleartextPassword),
            (
                msg(b'R', b"\0\0\0\x05\x01\x02\x03\x04"),
                Authentication::Md5Password { salt: [1, 2, 3, 4] },
            ),
            (
                msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"),
                Authentication::Sasl {
                    mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()],
                },
            ),
            (
                msg(b'R', b"\0\0\0\x0br=abc,s=c2FsdA==,i=4096"),
                Authentication::SaslContinue {
                    data: Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096"),
                },
            ),
            (
                msg(b'R', b"\0\0\0\x0cv=c2ln"),
                Authentication::SaslFinal {
                    data: Bytes::from_static(b"v=c2ln"),
                },
            ),
            (
                msg(b'R', b"\0\0\0\x07"),
                Authentication::Unsupported {
                    code: 7,
                    data: Bytes::new(),
                },
            ),
        ];
        for (wire, expected) in cases {
            let f = one(&wire);
            assert_eq!(
                BackendMessage::decode(&f),
                Ok(BackendMessage::Authentication(expected))
            );
        }
        let f = one(&msg(b'R', b"\0\0\0\x05\x01\x02"));
        assert_eq!(
            BackendMessage::decode(&f),
            Err(DecodeError::UnexpectedEof { what: "MD5 salt" })
        );
        let f = one(&msg(b'R', b"\0\0\0\x0aSCRAM"));
        assert_eq!(
            BackendMessage::decode(&f),
            Err(DecodeError::MissingNul {
                what: "SASL mechanism"
            })
        );
    }

    #[test]
    fn session_setup_messages() {
        let f = one(&msg(b'S', b"server_version\x0015.8\0"));
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::ParameterStatus {
                name: "server_version".into(),
                value: "15.8".into()
            })
        );
        let f = one(&msg(b'K', b"\x00\x00\x10\x00\x12\x34\x56\x78"));
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::BackendKeyData {
                pid: 4096,
                secret_key: Bytes::from_static(b"\x12\x34\x56\x78")
            })
        );
        let f = one(&msg(b'K', b"\x00\x00\x10\x00\x12"));
        assert!(matches!(
            BackendMessage::decode(&f),
            Err(DecodeError::InvalidLength { len: 1, .. })
        ));
        for (byte, status) in [
            (b'I', TransactionStatus::Idle),
            (b'T', TransactionStatus::InTransaction),
            (b'E', TransactionStatus::Failed),
        ] {
            let f = one(&msg(b'Z', &[byte]));
            assert_eq!(
                BackendMessage::decode(&f),
                Ok(BackendMessage::ReadyForQuery { status })
            );
        }
        let f = one(&msg(b'Z', b"Q"));
        assert!(matches!(
            BackendMessage::decode(&f),
            Err(DecodeError::InvalidValue { .. })
        ));
        let f = one(&msg(b'v', b"\0\0\0\0\0\0\0\x01_pq_.x\0"));
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::NegotiateProtocolVersion {
                newest_minor: 0,
                unrecognized_options: vec!["_pq_.x".into()]
            })
        );
    }

    #[test]
    fn row_description_and_data_row() {
        let mut body = vec![0, 2];
        body.extend_from_slice(
            b"id\0\x00\x00\x40\x01\x00\x01\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00",
        );
        body.extend_from_slice(
            b"ssn\0\x00\x00\x40\x01\x00\x02\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x01",
        );
        let f = one(&msg(b'T', &body));
        let Ok(BackendMessage::RowDescription { fields }) = BackendMessage::decode(&f) else {
            panic!("not a RowDescription: {:?}", BackendMessage::decode(&f));
        };
        assert_eq!(
            fields,
            [
                FieldDescription {
                    name: "id".into(),
                    table_oid: 16385,
                    column_attr: 1,
                    type_oid: 23,
                    type_size: 4,
                    type_modifier: -1,
                    format: Format::Text,
                },
                FieldDescription {
                    name: "ssn".into(),
                    table_oid: 16385,
                    column_attr: 2,
                    type_oid: 25,
                    type_size: -1,
                    type_modifier: -1,
                    format: Format::Binary,
                },
            ]
        );
        assert!(
            matches!(fields[0].name, Cow::Borrowed(_)),
            "names borrow the frame"
        );

        let f = one(&msg(
            b'D',
            b"\x00\x03\x00\x00\x00\x0242\xff\xff\xff\xff\x00\x00\x00\x00",
        ));
        let Ok(BackendMessage::DataRow { values }) = BackendMessage::decode(&f) else {
            panic!("not a DataRow");
        };
        assert_eq!(
            values,
            [Some(Bytes::from_static(b"42")), None, Some(Bytes::new())]
        );
        let v = values.first().cloned().flatten().unwrap_or_default();
        assert!(
            f.as_bytes().as_ptr_range().contains(&v.as_ptr()),
            "zero-copy"
        );

        // A value running past the end of the frame.
        let f = one(&msg(b'D', b"\x00\x01\x00\x00\x00\x09abc"));
        assert_eq!(
            BackendMessage::decode(&f),
            Err(DecodeError::UnexpectedEof {
                what: "DataRow value"
            })
        );
        // Column count claims more than the frame holds.
        let f = one(&msg(b'T', b"\x7f\xff"));
        assert!(BackendMessage::decode(&f).is_err());
    }

    #[test]
    fn query_cycle_messages() {
        let f = one(&msg(b'C', b"INSERT 0 3\0"));
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::CommandComplete {
                tag: "INSERT 0 3".into()
            })
        );
        for (tag, expected) in [
            (b'I', BackendMessage::EmptyQueryResponse),
            (b'1', BackendMessage::ParseComplete),
            (b'2', BackendMessage::BindComplete),
            (b'3', BackendMessage::CloseComplete),
            (b'n', BackendMessage::NoData),
            (b's', BackendMessage::PortalSuspended),
            (b'c', BackendMessage::CopyDone),
        ] {
            assert_eq!(BackendMessage::decode(&one(&msg(tag, b""))), Ok(expected));
        }
        let f = one(&msg(b't', b"\x00\x02\x00\x00\x00\x17\x00\x00\x00\x19"));
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::ParameterDescription {
                type_oids: vec![23, 25]
            })
        );
        let copy = CopyResponse {
            format: Format::Text,
            column_formats: vec![Format::Text, Format::Text],
        };
        let body = b"\x00\x00\x02\x00\x00\x00\x00";
        assert_eq!(
            BackendMessage::decode(&one(&msg(b'G', body))),
            Ok(BackendMessage::CopyInResponse(copy.clone()))
        );
        assert_eq!(
            BackendMessage::decode(&one(&msg(b'H', body))),
            Ok(BackendMessage::CopyOutResponse(copy.clone()))
        );
        assert_eq!(
            BackendMessage::decode(&one(&msg(b'W', body))),
            Ok(BackendMessage::CopyBothResponse(copy))
        );
        assert_eq!(
            BackendMessage::decode(&one(&msg(b'd', b"1\tx\n"))),
            Ok(BackendMessage::CopyData(Bytes::from_static(b"1\tx\n")))
        );
        let f = one(&msg(b'A', b"\x00\x00\x00\x2achan\0hello\0"));
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::NotificationResponse {
                pid: 42,
                channel: "chan".into(),
                payload: "hello".into()
            })
        );
        let f = one(&msg(b'V', b"\xff\xff\xff\xff"));
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::FunctionCallResponse { value: None })
        );
        assert_eq!(
            BackendMessage::decode(&one(&msg(b'I', b"x"))),
            Err(DecodeError::TrailingBytes {
                what: "backend message",
                count: 1
            })
        );
        assert_eq!(
            BackendMessage::decode(&one(&msg(b'?', b""))),
            Err(DecodeError::UnknownTag { tag: b'?' })
        );
    }

    #[test]
    fn error_and_notice_fields() {
        // As PostgreSQL 15 sends it for `SELECT * FROM nope`.
        let body = b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0\
Fparse_relation.c\0L1392\0RparserOpenTable\0\0";
        let f = one(&msg(b'E', body));
        let Ok(BackendMessage::ErrorResponse(d)) = BackendMessage::decode(&f) else {
            panic!("not an ErrorResponse");
        };
        assert_eq!(d.severity(), Some("ERROR"));
        assert_eq!(d.code(), Some("42P01"));
        assert_eq!(d.message(), Some("relation \"nope\" does not exist"));
        assert_eq!(d.field(b'P'), Some("15"));
        assert_eq!(d.detail(), None);
        assert_eq!(d.fields.len(), 8);

        // Non-UTF-8 server text is kept, lossily.
        let f = one(&msg(b'N', b"SNOTICE\0Mcaf\xe9\0\0"));
        let Ok(BackendMessage::NoticeResponse(d)) = BackendMessage::decode(&f) else {
            panic!("not a NoticeResponse");
        };
        assert_eq!(d.severity(), Some("NOTICE"));
        assert_eq!(d.message(), Some("caf\u{fffd}"));

        let f = one(&msg(b'E', b"SERROR\0"));
        assert_eq!(
            BackendMessage::decode(&f),
            Err(DecodeError::UnexpectedEof {
                what: "diagnostic field type"
            })
        );
    }

    #[test]
    fn encoders_round_trip() {
        let diag = Diagnostic::new(Severity::Error, "42501", "blocked by sluice policy")
            .with_detail(String::from("statement: DROP TABLE users"))
            .with_hint("ask the operator");
        let mut buf = BytesMut::new();
        assert!(encode_error_response(&diag, &mut buf).is_ok());
        let f = one(&buf);
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::ErrorResponse(diag.clone()))
        );
        assert_eq!(diag.hint(), Some("ask the operator"));
        let mut buf = BytesMut::new();
        assert!(encode_notice_response(&diag, &mut buf).is_ok());
        assert!(matches!(
            BackendMessage::decode(&one(&buf)),
            Ok(BackendMessage::NoticeResponse(_))
        ));

        let row: [Option<&[u8]>; 4] = [Some(b"1"), None, Some(b""), Some(b"***-**-6789")];
        let mut buf = BytesMut::new();
        assert!(encode_data_row(&row, &mut buf).is_ok());
        assert_eq!(
            &buf[..],
            b"D\x00\x00\x00\x22\x00\x04\x00\x00\x00\x011\xff\xff\xff\xff\x00\x00\x00\x00\
\x00\x00\x00\x0b***-**-6789"
        );
        let f = one(&buf);
        let expected: Vec<Option<Bytes>> =
            row.iter().map(|v| v.map(Bytes::copy_from_slice)).collect();
        assert_eq!(
            BackendMessage::decode(&f),
            Ok(BackendMessage::DataRow { values: expected })
        );

        let mut buf = BytesMut::new();
        assert!(encode_backend_key_data(77, b"\x01\x02\x03\x04", &mut buf).is_ok());
        assert_eq!(
            BackendMessage::decode(&one(&buf)),
            Ok(BackendMessage::BackendKeyData {
                pid: 77,
                secret_key: Bytes::from_static(b"\x01\x02\x03\x04")
            })
        );

        let mut buf = BytesMut::new();
        encode_ready_for_query(TransactionStatus::InTransaction, &mut buf);
        assert_eq!(
            BackendMessage::decode(&one(&buf)),
            Ok(BackendMessage::ReadyForQuery {
                status: TransactionStatus::InTransaction
            })
        );

        let mut buf = BytesMut::new();
        encode_encryption_refused(&mut buf);
        assert_eq!(
            super::super::frame::decode_negotiation_response(&mut buf),
            Ok(Some(super::super::frame::NegotiationResponse::Refused))
        );
    }

    #[test]
    fn encoders_refuse_what_would_corrupt_the_stream() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        let bad_code = Diagnostic::new(Severity::Error, "4250", "x");
        assert!(matches!(
            encode_error_response(&bad_code, &mut buf),
            Err(EncodeError::Invalid { .. })
        ));
        let nul = Diagnostic::new(Severity::Fatal, "28000", "a\0b");
        assert_eq!(
            encode_error_response(&nul, &mut buf),
            Err(EncodeError::InteriorNul {
                what: "diagnostic field value"
            })
        );
        let zero_kind = Diagnostic {
            fields: vec![(0, "x".into())],
        };
        assert!(encode_error_response(&zero_kind, &mut buf).is_err());
        let too_many = vec![None; 40_000];
        assert!(matches!(
            encode_data_row(&too_many, &mut buf),
            Err(EncodeError::TooLarge { .. })
        ));
        assert!(encode_backend_key_data(1, b"abc", &mut buf).is_err());
        assert_eq!(&buf[..], b"keep");
    }
}
