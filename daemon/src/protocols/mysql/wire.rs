//! The MySQL/MariaDB messages the proxy reads or writes: the greeting, the login
//! request, OK/ERR/EOF, column definitions and result rows, with the capability bits
//! that change their layout.

use bytes::{BufMut as _, BytesMut};

/// Capability bits. MariaDB's extensions (sent in the greeting's filler when
/// [`CLIENT_MYSQL`] is clear) are kept shifted into the high 32 bits.
pub mod caps {
    pub const CLIENT_MYSQL: u64 = 1;
    pub const CONNECT_WITH_DB: u64 = 1 << 3;
    pub const COMPRESS: u64 = 1 << 5;
    pub const LOCAL_FILES: u64 = 1 << 7;
    pub const PROTOCOL_41: u64 = 1 << 9;
    pub const SSL: u64 = 1 << 11;
    pub const SECURE_CONNECTION: u64 = 1 << 15;
    pub const MULTI_STATEMENTS: u64 = 1 << 16;
    pub const PLUGIN_AUTH: u64 = 1 << 19;
    pub const CONNECT_ATTRS: u64 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_DATA: u64 = 1 << 21;
    pub const SESSION_TRACK: u64 = 1 << 23;
    pub const DEPRECATE_EOF: u64 = 1 << 24;
    pub const OPTIONAL_RESULTSET_METADATA: u64 = 1 << 25;
    pub const ZSTD_COMPRESSION: u64 = 1 << 26;
    pub const QUERY_ATTRIBUTES: u64 = 1 << 27;
    pub const MULTI_FACTOR_AUTH: u64 = 1 << 28;
    pub const CAPABILITY_EXTENSION: u64 = 1 << 29;
    pub const SSL_VERIFY_SERVER_CERT: u64 = 1 << 30;
    /// MariaDB: progress reports inside a response.
    pub const MARIADB_PROGRESS: u64 = 1 << 32;
    /// MariaDB: COM_MULTI.
    pub const MARIADB_COM_MULTI: u64 = 1 << 33;
    /// MariaDB: COM_STMT_BULK_EXECUTE.
    pub const MARIADB_STMT_BULK: u64 = 1 << 34;
    /// MariaDB: extended type information in column definitions.
    pub const MARIADB_EXTENDED_METADATA: u64 = 1 << 35;
    /// MariaDB: EXECUTE replies without column definitions.
    pub const MARIADB_CACHE_METADATA: u64 = 1 << 36;
    /// MariaDB: per-row results of bulk operations.
    pub const MARIADB_BULK_UNIT_RESULTS: u64 = 1 << 37;

    /// Never negotiated through the proxy, on either side: each either hides
    /// packets from the proxy (compression), changes what a command carries in ways the
    /// proxy does not read (query attributes, bulk), hides column definitions the
    /// masking needs (optional/cached metadata), interleaves packets a relay takes for
    /// the end of a response (progress), or lets the server read a client file.
    pub const STRIPPED: u64 = COMPRESS
        | ZSTD_COMPRESSION
        | LOCAL_FILES
        | QUERY_ATTRIBUTES
        | OPTIONAL_RESULTSET_METADATA
        | MULTI_FACTOR_AUTH
        | CAPABILITY_EXTENSION
        | SSL_VERIFY_SERVER_CERT
        | MULTI_STATEMENTS
        | MARIADB_PROGRESS
        | MARIADB_COM_MULTI
        | MARIADB_STMT_BULK
        | MARIADB_EXTENDED_METADATA
        | MARIADB_CACHE_METADATA
        | MARIADB_BULK_UNIT_RESULTS
        // Undefined MariaDB bits: whatever they mean, the proxy does not speak them.
        | !((1u64 << 38) - 1);
}

/// Server status flags.
pub mod status {
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    pub const CURSOR_EXISTS: u16 = 0x0040;
    pub const SESSION_STATE_CHANGED: u16 = 0x4000;
}

/// Why a message does not decode.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{0} is truncated")]
    Truncated(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
}

/// Reads protocol fields from a payload.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, what }
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated(self.what));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A length-encoded integer; `None` for the 0xFB NULL marker.
    pub fn lenenc(&mut self) -> Result<Option<u64>, DecodeError> {
        let first = self.u8()?;
        let take = |r: &mut Self, n: usize| -> Result<u64, DecodeError> {
            let b = r.take(n)?;
            Ok(b.iter()
                .rev()
                .fold(0u64, |v, byte| v << 8 | u64::from(*byte)))
        };
        Ok(match first {
            0xFB => None,
            0xFC => Some(take(self, 2)?),
            0xFD => Some(take(self, 3)?),
            0xFE => Some(take(self, 8)?),
            0xFF => return Err(DecodeError::Invalid("0xFF is not a length-encoded integer")),
            small => Some(u64::from(small)),
        })
    }

    pub fn lenenc_int(&mut self) -> Result<u64, DecodeError> {
        self.lenenc()?
            .ok_or(DecodeError::Invalid("unexpected NULL marker"))
    }

    /// A length-encoded string; `None` for NULL.
    pub fn lenenc_bytes(&mut self) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.lenenc()? {
            None => Ok(None),
            Some(n) => {
                let n = usize::try_from(n).map_err(|_| DecodeError::Truncated(self.what))?;
                self.take(n).map(Some)
            }
        }
    }

    pub fn lenenc_str(&mut self) -> Result<&'a [u8], DecodeError> {
        self.lenenc_bytes()?
            .ok_or(DecodeError::Invalid("unexpected NULL marker"))
    }

    /// Bytes up to a NUL (consumed); all the rest when there is none.
    pub fn nul_str(&mut self) -> &'a [u8] {
        match memchr::memchr(0, self.bytes) {
            Some(end) => {
                let (head, tail) = self.bytes.split_at(end);
                self.bytes = &tail[1..];
                head
            }
            None => self.rest(),
        }
    }
}

pub fn put_lenenc_int(out: &mut BytesMut, value: u64) {
    if value < 0xFB {
        out.put_u8(value as u8);
    } else if value <= 0xFFFF {
        out.put_u8(0xFC);
        out.put_u16_le(value as u16);
    } else if value <= 0xFF_FFFF {
        out.put_u8(0xFD);
        out.put_uint_le(value, 3);
    } else {
        out.put_u8(0xFE);
        out.put_u64_le(value);
    }
}

pub fn put_lenenc_bytes(out: &mut BytesMut, value: &[u8]) {
    put_lenenc_int(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// The server's greeting (HandshakeV10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    pub version: Vec<u8>,
    pub connection_id: u32,
    /// 20 bytes for the usual plugins (the two parts joined, without the NUL).
    pub nonce: Vec<u8>,
    /// With MariaDB's extensions in the high 32 bits.
    pub capabilities: u64,
    pub charset: u8,
    pub status: u16,
    pub plugin: String,
}

impl Greeting {
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "the server greeting");
        if r.u8()? != 10 {
            return Err(DecodeError::Invalid(
                "the server greeting is not protocol version 10",
            ));
        }
        let version = r.nul_str().to_vec();
        let connection_id = r.u32()?;
        let mut nonce = r.take(8)?.to_vec();
        r.u8()?;
        let lower = u64::from(r.u16()?);
        let charset = r.u8()?;
        let status = r.u16()?;
        let upper = u64::from(r.u16()?);
        let nonce_length = r.u8()?;
        r.take(6)?;
        let mariadb = u64::from(r.u32()?);
        let mut capabilities = lower | upper << 16;
        if capabilities & caps::CLIENT_MYSQL == 0 {
            capabilities |= mariadb << 32;
        }
        if capabilities & caps::SECURE_CONNECTION != 0 {
            let part2 = usize::from(nonce_length).saturating_sub(8).max(13);
            let part2 = r.take(part2.min(r.remaining()))?;
            // The second part ends with a NUL that is not part of the nonce.
            let part2 = part2.strip_suffix(&[0]).unwrap_or(part2);
            nonce.extend_from_slice(part2);
        }
        let plugin = if capabilities & caps::PLUGIN_AUTH != 0 {
            String::from_utf8_lossy(r.nul_str()).into_owned()
        } else {
            String::new()
        };
        Ok(Self {
            version,
            connection_id,
            nonce,
            capabilities,
            charset,
            status,
            plugin,
        })
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(10);
        out.extend_from_slice(&self.version);
        out.put_u8(0);
        out.put_u32_le(self.connection_id);
        let (part1, part2) = self.nonce.split_at(self.nonce.len().min(8));
        out.extend_from_slice(part1);
        out.put_bytes(0, 8 - part1.len());
        out.put_u8(0);
        out.put_u16_le(self.capabilities as u16);
        out.put_u8(self.charset);
        out.put_u16_le(self.status);
        out.put_u16_le((self.capabilities >> 16) as u16);
        out.put_u8(if self.capabilities & caps::PLUGIN_AUTH != 0 {
            (self.nonce.len() + 1) as u8
        } else {
            0
        });
        out.put_bytes(0, 6);
        out.put_u32_le(if self.capabilities & caps::CLIENT_MYSQL == 0 {
            (self.capabilities >> 32) as u32
        } else {
            0
        });
        if self.capabilities & caps::SECURE_CONNECTION != 0 {
            out.extend_from_slice(part2);
            out.put_bytes(0, 12usize.saturating_sub(part2.len()) + 1);
        }
        if self.capabilities & caps::PLUGIN_AUTH != 0 {
            out.extend_from_slice(self.plugin.as_bytes());
            out.put_u8(0);
        }
    }
}

/// The client's login request (HandshakeResponse41), or its SSL request prefix.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginRequest {
    pub capabilities: u64,
    pub max_packet: u32,
    pub charset: u8,
    /// Only the 32-byte prefix: the client asks for TLS next.
    pub ssl_request: bool,
    pub user: Vec<u8>,
    pub auth_response: Vec<u8>,
    pub database: Option<Vec<u8>>,
    pub plugin: Option<String>,
    /// Connection attributes (`_client_name`, `program_name`, ...), raw.
    pub attributes: Option<Vec<u8>>,
}

impl LoginRequest {
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "the login request");
        let mut capabilities = u64::from(r.u32()?);
        if capabilities & caps::PROTOCOL_41 == 0 {
            return Err(DecodeError::Invalid(
                "the client does not speak protocol 4.1",
            ));
        }
        let max_packet = r.u32()?;
        let charset = r.u8()?;
        r.take(19)?;
        let mariadb = u64::from(r.u32()?);
        if capabilities & caps::CLIENT_MYSQL == 0 {
            capabilities |= mariadb << 32;
        }
        let mut request = Self {
            capabilities,
            max_packet,
            charset,
            ..Self::default()
        };
        if r.remaining() == 0 {
            request.ssl_request = capabilities & caps::SSL != 0;
            if !request.ssl_request {
                return Err(DecodeError::Truncated("the login request"));
            }
            return Ok(request);
        }
        request.user = r.nul_str().to_vec();
        request.auth_response = if capabilities & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
            r.lenenc_str()?.to_vec()
        } else if capabilities & caps::SECURE_CONNECTION != 0 {
            let n = r.u8()?;
            r.take(usize::from(n))?.to_vec()
        } else {
            r.nul_str().to_vec()
        };
        if capabilities & caps::CONNECT_WITH_DB != 0 && r.remaining() > 0 {
            request.database = Some(r.nul_str().to_vec());
        }
        if capabilities & caps::PLUGIN_AUTH != 0 && r.remaining() > 0 {
            request.plugin = Some(String::from_utf8_lossy(r.nul_str()).into_owned());
        }
        if capabilities & caps::CONNECT_ATTRS != 0 && r.remaining() > 0 {
            request.attributes = Some(r.lenenc_str()?.to_vec());
        }
        Ok(request)
    }

    /// The 32-byte prefix alone when `ssl_request`, else the whole request.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut capabilities = self.capabilities;
        if self.database.is_some() {
            capabilities |= caps::CONNECT_WITH_DB;
        } else {
            capabilities &= !caps::CONNECT_WITH_DB;
        }
        if self.attributes.is_none() {
            capabilities &= !caps::CONNECT_ATTRS;
        }
        out.put_u32_le(capabilities as u32);
        out.put_u32_le(self.max_packet);
        out.put_u8(self.charset);
        out.put_bytes(0, 19);
        out.put_u32_le(if capabilities & caps::CLIENT_MYSQL == 0 {
            (capabilities >> 32) as u32
        } else {
            0
        });
        if self.ssl_request {
            return;
        }
        out.extend_from_slice(&self.user);
        out.put_u8(0);
        if capabilities & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
            put_lenenc_bytes(out, &self.auth_response);
        } else {
            out.put_u8(self.auth_response.len().min(255) as u8);
            out.extend_from_slice(&self.auth_response[..self.auth_response.len().min(255)]);
        }
        if let Some(database) = &self.database {
            out.extend_from_slice(database);
            out.put_u8(0);
        }
        if capabilities & caps::PLUGIN_AUTH != 0 {
            out.extend_from_slice(self.plugin.as_deref().unwrap_or_default().as_bytes());
            out.put_u8(0);
        }
        if let Some(attributes) = &self.attributes {
            put_lenenc_bytes(out, attributes);
        }
    }
}

/// An OK packet (header 0x00, or 0xFE when it ends a result set under DEPRECATE_EOF).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OkPacket {
    pub header: u8,
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
    pub info: Vec<u8>,
    /// The session-state block, raw (only with SESSION_TRACK and the state-changed flag).
    pub session_state: Option<Vec<u8>>,
}

impl OkPacket {
    pub fn decode(payload: &[u8], session_track: bool) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "an OK packet");
        let header = r.u8()?;
        let affected_rows = r.lenenc_int()?;
        let last_insert_id = r.lenenc_int()?;
        let status = r.u16()?;
        let warnings = r.u16()?;
        let mut ok = Self {
            header,
            affected_rows,
            last_insert_id,
            status,
            warnings,
            ..Self::default()
        };
        if session_track {
            if r.remaining() > 0 {
                ok.info = r.lenenc_str()?.to_vec();
            }
            if status & status::SESSION_STATE_CHANGED != 0 && r.remaining() > 0 {
                ok.session_state = Some(r.lenenc_str()?.to_vec());
            }
        } else {
            ok.info = r.rest().to_vec();
        }
        Ok(ok)
    }

    pub fn encode(&self, session_track: bool, out: &mut BytesMut) {
        out.put_u8(self.header);
        put_lenenc_int(out, self.affected_rows);
        put_lenenc_int(out, self.last_insert_id);
        let mut status = self.status;
        if !session_track || self.session_state.is_none() {
            status &= !status::SESSION_STATE_CHANGED;
        }
        out.put_u16_le(status);
        out.put_u16_le(self.warnings);
        if session_track {
            match &self.session_state {
                Some(state) => {
                    put_lenenc_bytes(out, &self.info);
                    put_lenenc_bytes(out, state);
                }
                None if !self.info.is_empty() => put_lenenc_bytes(out, &self.info),
                None => {}
            }
        } else {
            out.extend_from_slice(&self.info);
        }
    }

    /// The session-state entries, as (type, data).
    fn state_entries(&self) -> Vec<(u8, &[u8])> {
        let mut found = Vec::new();
        let Some(state) = &self.session_state else {
            return found;
        };
        let mut r = Reader::new(state, "session state");
        while r.remaining() > 0 {
            let Ok(kind) = r.u8() else { break };
            let Ok(data) = r.lenenc_str() else { break };
            found.push((kind, data));
        }
        found
    }

    /// System variables the session-state block reports changed, as (name, value).
    pub fn system_variables(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.state_entries()
            .into_iter()
            // SESSION_TRACK_SYSTEM_VARIABLES
            .filter(|(kind, _)| *kind == 0)
            .filter_map(|(_, data)| {
                let mut entry = Reader::new(data, "a system variable");
                match (entry.lenenc_str(), entry.lenenc_str()) {
                    (Ok(name), Ok(value)) => Some((name.to_vec(), value.to_vec())),
                    _ => None,
                }
            })
            .collect()
    }

    /// The new current database, when the session-state block reports one.
    pub fn schema(&self) -> Option<Vec<u8>> {
        self.state_entries()
            .into_iter()
            // SESSION_TRACK_SCHEMA
            .find(|(kind, _)| *kind == 1)
            .and_then(|(_, data)| {
                Reader::new(data, "a schema")
                    .lenenc_str()
                    .ok()
                    .map(<[u8]>::to_vec)
            })
    }
}

/// An ERR packet's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    pub sql_state: String,
    pub message: String,
}

impl ErrPacket {
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "an ERR packet");
        r.u8()?;
        let code = r.u16()?;
        let mut sql_state = String::new();
        if r.remaining() > 0 && r.bytes[0] == b'#' {
            r.u8()?;
            sql_state = String::from_utf8_lossy(r.take(5)?).into_owned();
        }
        Ok(Self {
            code,
            sql_state,
            message: String::from_utf8_lossy(r.rest()).into_owned(),
        })
    }

    pub fn new(code: u16, sql_state: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            sql_state: sql_state.to_owned(),
            message: message.into(),
        }
    }

    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u8(0xFF);
        out.put_u16_le(self.code);
        out.put_u8(b'#');
        let mut state = self.sql_state.as_bytes().to_vec();
        state.resize(5, b'0');
        out.extend_from_slice(&state);
        out.extend_from_slice(self.message.as_bytes());
    }
}

/// Whether `payload` is an EOF packet, or an OK packet ending a result set (header
/// 0xFE): a row can only start with 0xFE when it is 16 MB or longer.
pub fn is_end_marker(payload: &[u8]) -> bool {
    payload.first() == Some(&0xFE) && payload.len() < 0xFF_FFFF
}

/// The status flags of an EOF packet or a 0xFE-headed OK packet.
pub fn end_marker_status(payload: &[u8], deprecate_eof: bool) -> u16 {
    if deprecate_eof {
        OkPacket::decode(payload, false).map_or(0, |ok| ok.status)
    } else {
        let mut r = Reader::new(payload, "an EOF packet");
        let _ = r.u8();
        let _ = r.u16();
        r.u16().unwrap_or(0)
    }
}

/// Column types whose binary-protocol values have a fixed width.
pub fn binary_fixed_width(column_type: u8) -> Option<usize> {
    match column_type {
        // TINY
        1 => Some(1),
        // SHORT, YEAR
        2 | 13 => Some(2),
        // LONG, INT24, FLOAT
        3 | 9 | 4 => Some(4),
        // LONGLONG, DOUBLE
        8 | 5 => Some(8),
        // NULL
        6 => Some(0),
        _ => None,
    }
}

/// Date and time types: a one-byte length then that many bytes, in the binary protocol.
pub fn binary_is_temporal(column_type: u8) -> bool {
    matches!(column_type, 7 | 10 | 11 | 12 | 14)
}

/// The charset number MySQL uses for binary strings.
pub const BINARY_CHARSET: u16 = 63;

/// One result column definition (ColumnDefinition41).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Column {
    pub schema: String,
    pub table: String,
    pub org_table: String,
    pub name: String,
    pub org_name: String,
    pub charset: u16,
    pub column_type: u8,
}

impl Column {
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(payload, "a column definition");
        let text = |r: &mut Reader<'_>| -> Result<String, DecodeError> {
            Ok(String::from_utf8_lossy(r.lenenc_str()?).into_owned())
        };
        let _catalog = text(&mut r)?;
        let schema = text(&mut r)?;
        let table = text(&mut r)?;
        let org_table = text(&mut r)?;
        let name = text(&mut r)?;
        let org_name = text(&mut r)?;
        let _fixed = r.lenenc_int()?;
        let charset = r.u16()?;
        let _length = r.u32()?;
        let column_type = r.u8()?;
        Ok(Self {
            schema,
            table,
            org_table,
            name,
            org_name,
            charset,
            column_type,
        })
    }

    /// Whether values of this column are text in the binary protocol: string types
    /// in a non-binary charset, and DECIMAL (sent as its digits).
    pub fn binary_text_like(&self) -> bool {
        match self.column_type {
            // DECIMAL, NEWDECIMAL, JSON
            0 | 246 | 245 => true,
            // VARCHAR, ENUM, SET, TINY/MEDIUM/LONG BLOB, BLOB, VAR_STRING, STRING
            15 | 247 | 248 | 249 | 250 | 251 | 252 | 253 | 254 => self.charset != BINARY_CHARSET,
            _ => false,
        }
    }

    /// Whether text-protocol values are text (everything but binary strings).
    pub fn text_like(&self) -> bool {
        !(self.charset == BINARY_CHARSET
            && matches!(
                self.column_type,
                15 | 249 | 250 | 251 | 252 | 253 | 254 | 255
            ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mariadb_greeting_round_trips() {
        let greeting = Greeting {
            version: b"5.5.5-10.11.19-MariaDB-0+deb12u1".to_vec(),
            connection_id: 42,
            nonce: (1..=20).collect(),
            capabilities: caps::PROTOCOL_41
                | caps::SECURE_CONNECTION
                | caps::PLUGIN_AUTH
                | caps::DEPRECATE_EOF
                | caps::MARIADB_PROGRESS
                | caps::MARIADB_CACHE_METADATA,
            charset: 45,
            status: 0x0002,
            plugin: "mysql_native_password".into(),
        };
        let mut out = BytesMut::new();
        greeting.encode(&mut out);
        assert_eq!(Greeting::decode(&out).unwrap(), greeting);
    }

    #[test]
    fn a_login_request_round_trips() {
        let request = LoginRequest {
            capabilities: caps::PROTOCOL_41
                | caps::SECURE_CONNECTION
                | caps::PLUGIN_AUTH
                | caps::PLUGIN_AUTH_LENENC_DATA
                | caps::CONNECT_WITH_DB
                | caps::CONNECT_ATTRS
                | caps::MARIADB_STMT_BULK,
            max_packet: 1 << 24,
            charset: 45,
            ssl_request: false,
            user: b"agent".to_vec(),
            auth_response: vec![9; 20],
            database: Some(b"shop".to_vec()),
            plugin: Some("mysql_native_password".into()),
            attributes: Some(b"\x0c_client_name\x07mariadb".to_vec()),
        };
        let mut out = BytesMut::new();
        request.encode(&mut out);
        assert_eq!(LoginRequest::decode(&out).unwrap(), request);
        let ssl = LoginRequest {
            ssl_request: true,
            capabilities: caps::PROTOCOL_41 | caps::SSL,
            attributes: None,
            database: None,
            ..request
        };
        let mut out = BytesMut::new();
        ssl.encode(&mut out);
        assert_eq!(out.len(), 32);
        assert!(LoginRequest::decode(&out).unwrap().ssl_request);
    }

    #[test]
    fn ok_packets_report_tracked_variables() {
        // affected 0, insert 0, status with SESSION_STATE_CHANGED, no warnings, no info,
        // state: system variable sql_mode = ANSI_QUOTES.
        let mut entry = BytesMut::new();
        put_lenenc_bytes(&mut entry, b"sql_mode");
        put_lenenc_bytes(&mut entry, b"ANSI_QUOTES");
        let mut state = BytesMut::new();
        state.put_u8(0);
        put_lenenc_bytes(&mut state, &entry);
        let ok = OkPacket {
            header: 0,
            status: 0x0002 | status::SESSION_STATE_CHANGED,
            session_state: Some(state.to_vec()),
            ..OkPacket::default()
        };
        let mut out = BytesMut::new();
        ok.encode(true, &mut out);
        let decoded = OkPacket::decode(&out, true).unwrap();
        assert_eq!(
            decoded.system_variables(),
            vec![(b"sql_mode".to_vec(), b"ANSI_QUOTES".to_vec())]
        );
        // Re-encoded for a client without session tracking, the flag goes too.
        let mut plain = BytesMut::new();
        decoded.encode(false, &mut plain);
        let plain = OkPacket::decode(&plain, false).unwrap();
        assert_eq!(plain.status, 0x0002);
    }

    #[test]
    fn errors_and_length_encoded_integers_decode() {
        let mut out = BytesMut::new();
        ErrPacket::new(1045, "28000", "Access denied").encode(&mut out);
        let err = ErrPacket::decode(&out).unwrap();
        assert_eq!((err.code, err.sql_state.as_str()), (1045, "28000"));
        for value in [
            0u64,
            250,
            251,
            0xFFFF,
            0x10000,
            0xFF_FFFF,
            0x100_0000,
            u64::MAX,
        ] {
            let mut out = BytesMut::new();
            put_lenenc_int(&mut out, value);
            assert_eq!(Reader::new(&out, "x").lenenc_int().unwrap(), value);
        }
        assert_eq!(Reader::new(&[0xFB], "x").lenenc().unwrap(), None);
        assert!(Reader::new(&[0xFC, 1], "x").lenenc().is_err());
    }
}
