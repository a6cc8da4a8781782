//! Relaying the server's answer to one command, packet by packet, in order: OK and ERR,
//! result sets (text or binary rows, several for a CALL), PREPARE replies, cursor
//! FETCHes and FIELD_LIST. On the way it reads what the daemon must know (tracked
//! `sql_mode`, rows, errors, prepared statement ids), masks rows a profile covers,
//! drops session state from OK packets for agents that did not ask for it, and answers
//! a LOCAL INFILE request with an empty file instead of passing it on.
//!
//! Every packet sent to the agent is numbered from the command's sequence id by the
//! daemon, so a rewritten, dropped or re-split packet leaves no gap.

use std::{collections::BTreeMap, sync::Arc};

use bytes::{BufMut as _, Bytes, BytesMut};

use super::{
    Proxy, ProxyError,
    wire::{self, Column, ErrPacket, OkPacket, Reader, caps, status},
};
use crate::masking::{
    ColumnAction, ColumnInfo, ColumnPlan, MaskScratch, Masker, Written, strictest_plan_per_column,
};

/// What answer a command gets.
#[derive(Clone, Debug)]
pub enum Expect {
    /// OK or ERR.
    Simple,
    /// Result sets in the text protocol (COM_QUERY), or OK/ERR.
    Text,
    /// Result sets in the binary protocol (COM_STMT_EXECUTE), or OK/ERR.
    Binary,
    /// COM_STMT_PREPARE's reply.
    Prepare,
    /// Binary rows of a cursor, with the columns its EXECUTE announced.
    Fetch(Vec<Column>),
    /// Column definitions ended by EOF (COM_FIELD_LIST).
    FieldList,
}

/// How a command's result rows are masked: the profile, and the tables the statement
/// reads (the candidates for a column without an origin table).
#[derive(Clone)]
pub struct MaskSpec {
    pub masker: Arc<Masker>,
    pub tables: Vec<String>,
}

/// What the daemon learnt from an answer.
#[derive(Debug, Default)]
pub struct Outcome {
    pub rows: u64,
    pub affected: u64,
    pub error: Option<String>,
    pub tag: Option<String>,
    pub masked: BTreeMap<String, u64>,
    pub nulled: u64,
    /// The server asked for a client file (and got an empty one).
    pub local_infile: bool,
    /// A PREPARE's statement id, parameter and column counts.
    pub prepared: Option<(u32, u16, u16)>,
    /// The columns of the last result set.
    pub columns: Vec<Column>,
    /// New values of tracked variables.
    pub sql_mode: Option<String>,
    pub charset_client: Option<String>,
    /// The current database, when the server reported a change.
    pub schema: Option<String>,
}

struct Relay<'p, 's> {
    proxy: &'p mut Proxy<'s>,
    seq: u8,
    /// The sequence id the server's next packet in this exchange carries.
    upstream_next: u8,
    outcome: Outcome,
}

pub async fn relay(
    proxy: &mut Proxy<'_>,
    expect: Expect,
    seq: u8,
    mask: Option<&MaskSpec>,
) -> Result<Outcome, ProxyError> {
    let mut relay = Relay {
        proxy,
        seq,
        upstream_next: seq,
        outcome: Outcome::default(),
    };
    match expect {
        Expect::Simple => {
            let packet = relay.next().await?;
            relay.terminal(&packet)?;
        }
        Expect::Text => relay.results(false, mask).await?,
        Expect::Binary => relay.results(true, mask).await?,
        Expect::Prepare => relay.prepare().await?,
        Expect::Fetch(columns) => {
            let mut active = mask.map(|spec| ActiveMask::new(spec, &columns, true));
            relay.rows(true, &columns, active.as_mut()).await?;
            if let Some(active) = active {
                active.add_counts(&mut relay.outcome);
            }
        }
        Expect::FieldList => loop {
            let packet = relay.next().await?;
            if packet.first() == Some(&0xFF) || wire::is_end_marker(&packet) {
                relay.terminal(&packet)?;
                break;
            }
            relay.send(&packet);
        },
    }
    relay.proxy.agent.flush().await?;
    Ok(relay.outcome)
}

impl Relay<'_, '_> {
    fn deprecate_eof(&self) -> bool {
        self.proxy.agent_caps & caps::DEPRECATE_EOF != 0
    }

    /// The next packet from the server, flushing what is queued for the agent first
    /// when the server has not sent it yet.
    async fn next(&mut self) -> Result<Bytes, ProxyError> {
        loop {
            if let Some(packet) = self.proxy.upstream.buffered()? {
                self.upstream_next = packet.next_seq;
                return Ok(packet.payload);
            }
            self.proxy.agent.flush().await?;
            if !self.proxy.upstream.read_more().await? {
                return Err(ProxyError::UpstreamClosed("in the middle of an answer"));
            }
        }
    }

    fn send(&mut self, payload: &[u8]) {
        self.seq = self.proxy.agent.queue(self.seq, payload);
    }

    /// An OK, ERR or end-of-rows packet, relayed; returns its status flags.
    fn terminal(&mut self, payload: &Bytes) -> Result<u16, ProxyError> {
        match payload.first() {
            Some(0xFF) => {
                let error = ErrPacket::decode(payload).map_err(ProxyError::ServerMessage)?;
                self.outcome.error = Some(format!(
                    "{} ({}): {}",
                    error.code, error.sql_state, error.message
                ));
                self.send(payload);
                Ok(0)
            }
            Some(0x00) => self.ok(payload),
            Some(0xFE) if self.deprecate_eof() => self.ok(payload),
            Some(0xFE) => {
                self.send(payload);
                Ok(wire::end_marker_status(payload, false))
            }
            _ => Err(ProxyError::ServerMessage(wire::DecodeError::Invalid(
                "expected OK, ERR or EOF",
            ))),
        }
    }

    /// An OK packet: tracked variables read, session state dropped for an agent that
    /// did not negotiate it.
    fn ok(&mut self, payload: &Bytes) -> Result<u16, ProxyError> {
        let upstream_tracks = self.proxy.upstream_caps & caps::SESSION_TRACK != 0;
        let agent_tracks = self.proxy.agent_caps & caps::SESSION_TRACK != 0;
        let ok = OkPacket::decode(payload, upstream_tracks).map_err(ProxyError::ServerMessage)?;
        for (name, value) in ok.system_variables() {
            if name.eq_ignore_ascii_case(b"sql_mode") {
                self.outcome.sql_mode = Some(String::from_utf8_lossy(&value).into_owned());
            } else if name.eq_ignore_ascii_case(b"character_set_client") {
                self.outcome.charset_client = Some(String::from_utf8_lossy(&value).into_owned());
            }
        }
        if let Some(schema) = ok.schema() {
            self.outcome.schema = Some(String::from_utf8_lossy(&schema).into_owned());
        }
        if ok.header == 0 {
            self.outcome.affected += ok.affected_rows;
        }
        if upstream_tracks == agent_tracks {
            self.send(payload);
        } else {
            let mut rewritten = BytesMut::with_capacity(payload.len());
            ok.encode(agent_tracks, &mut rewritten);
            self.send(&rewritten);
        }
        Ok(ok.status)
    }

    /// One or more result sets (or OK/ERR) of a query or an EXECUTE.
    async fn results(&mut self, binary: bool, mask: Option<&MaskSpec>) -> Result<(), ProxyError> {
        loop {
            let first = self.next().await?;
            let status = match first.first() {
                Some(0x00 | 0xFF) => self.terminal(&first)?,
                Some(0xFB) => {
                    self.local_infile().await?;
                    continue;
                }
                _ => self.result_set(&first, binary, mask).await?,
            };
            if first.first() == Some(&0xFF) || status & status::MORE_RESULTS_EXISTS == 0 {
                return Ok(());
            }
        }
    }

    /// The server asked for a client file: it gets an empty one (an empty packet), and
    /// the agent never hears of it. The daemon reads no file for an agent.
    async fn local_infile(&mut self) -> Result<(), ProxyError> {
        tracing::warn!("the server asked for a LOCAL INFILE: sending an empty file");
        self.outcome.local_infile = true;
        // The request was the server's packet n; the empty file is packet n + 1.
        self.proxy.upstream.queue(self.upstream_next, &[]);
        self.proxy.upstream.flush().await
    }

    /// A result set from its column count on; returns the status of its end marker.
    async fn result_set(
        &mut self,
        count_packet: &Bytes,
        binary: bool,
        mask: Option<&MaskSpec>,
    ) -> Result<u16, ProxyError> {
        let count = Reader::new(count_packet, "a column count")
            .lenenc_int()
            .map_err(ProxyError::ServerMessage)?;
        self.send(count_packet);
        let mut columns = Vec::with_capacity(count.min(4096) as usize);
        let mut definitions = Vec::with_capacity(columns.capacity());
        for _ in 0..count {
            let definition = self.next().await?;
            columns.push(Column::decode(&definition).map_err(ProxyError::ServerMessage)?);
            definitions.push(definition);
        }
        let mut active = mask.map(|spec| ActiveMask::new(spec, &columns, binary));
        for (index, definition) in definitions.iter().enumerate() {
            match &active {
                Some(active) if active.retype(index) => {
                    self.send(&retyped_as_text(definition));
                }
                _ => self.send(definition),
            }
        }
        if !self.deprecate_eof() {
            let eof = self.next().await?;
            let status = self.terminal(&eof)?;
            if status & status::CURSOR_EXISTS != 0 {
                self.outcome.columns = columns;
                return Ok(status);
            }
        }
        let status = self.rows(binary, &columns, active.as_mut()).await?;
        if let Some(active) = active {
            active.add_counts(&mut self.outcome);
        }
        self.outcome.columns = columns;
        Ok(status)
    }

    /// Rows up to their end marker (or an ERR); returns the end marker's status.
    async fn rows(
        &mut self,
        binary: bool,
        columns: &[Column],
        mut active: Option<&mut ActiveMask>,
    ) -> Result<u16, ProxyError> {
        loop {
            let row = self.next().await?;
            if row.first() == Some(&0xFF) || wire::is_end_marker(&row) {
                return self.terminal(&row);
            }
            self.outcome.rows += 1;
            match active.as_deref_mut() {
                Some(active) if active.masks_anything => {
                    let masked = if binary {
                        active.mask_binary_row(&row, columns)
                    } else {
                        active.mask_text_row(&row)
                    }
                    .map_err(ProxyError::ServerMessage)?;
                    self.send(masked);
                }
                _ => self.send(&row),
            }
        }
    }

    /// A PREPARE reply: the statement OK, then parameter and column definitions.
    async fn prepare(&mut self) -> Result<(), ProxyError> {
        let first = self.next().await?;
        if first.first() != Some(&0x00) {
            self.terminal(&first)?;
            return Ok(());
        }
        let mut reader = Reader::new(&first, "a PREPARE reply");
        let _ = reader.u8();
        let id = reader.u32().map_err(ProxyError::ServerMessage)?;
        let columns = reader.u16().map_err(ProxyError::ServerMessage)?;
        let params = reader.u16().map_err(ProxyError::ServerMessage)?;
        self.outcome.prepared = Some((id, params, columns));
        self.send(&first);
        for count in [params, columns] {
            for _ in 0..count {
                let definition = self.next().await?;
                self.send(&definition);
            }
            if count > 0 && !self.deprecate_eof() {
                let eof = self.next().await?;
                self.send(&eof);
            }
        }
        Ok(())
    }
}

/// A column definition re-announced as a UTF-8 string, for a value the masking turns
/// into text (a masked number or date would not parse as one).
fn retyped_as_text(definition: &[u8]) -> Bytes {
    let mut reader = Reader::new(definition, "a column definition");
    for _ in 0..6 {
        if reader.lenenc_str().is_err() {
            return Bytes::copy_from_slice(definition);
        }
    }
    // Then: lenenc 0x0c, charset u16, length u32, type u8, flags u16, decimals u8.
    let fixed = definition.len() - reader.remaining();
    let mut out = BytesMut::from(definition);
    if let Some(fixed_part) = out.get_mut(fixed + 1..fixed + 11) {
        fixed_part[0..2].copy_from_slice(&45u16.to_le_bytes());
        fixed_part[2..6].copy_from_slice(&(1u32 << 24).to_le_bytes());
        // VAR_STRING, no flags (not NUM, not BINARY), no decimals.
        fixed_part[6] = 253;
        fixed_part[7..9].copy_from_slice(&0u16.to_le_bytes());
        fixed_part[9] = 0;
    }
    out.freeze()
}

/// The masking of one result set.
///
/// A column with an origin (`org_table.org_name`) is planned for that table. A column
/// without one (an expression, `CONCAT(email)`) is planned as if it came from each
/// table the statement reads, and the strictest plan wins: over-masking, never a leak.
///
/// Rows are on the byte path: a masked row is rewritten into buffers kept here from
/// row to row (values masked by [`Masker::mask_into`]), so a result set allocates
/// nothing per row once they have grown to size.
struct ActiveMask {
    masker: Arc<Masker>,
    plans: Vec<ColumnPlan>,
    strictest: Vec<usize>,
    names: Vec<String>,
    text_like: Vec<bool>,
    column_types: Vec<u8>,
    /// For each column, whether its text-protocol values go out as they came without
    /// being looked at (see [`copied`]).
    copied: Vec<bool>,
    /// Whether any column may change; when not, rows are relayed untouched.
    masks_anything: bool,
    nulled: u64,
    scratch: MaskScratch,
    /// The masked value being written.
    value: Vec<u8>,
    /// The masked row being written.
    row: BytesMut,
    /// A binary row's NULL bitmap, updated as values are nulled.
    bitmap: Vec<u8>,
}

/// Integer types whose text form is at most ten digits and a sign: TINY, SHORT, LONG,
/// INT24 and YEAR (LONGLONG is not: a 16-digit BIGINT can be a card number).
const NO_MATCH_TYPES: &[u8] = &[1, 2, 3, 9, 13];

/// Whether a text-protocol column's values go out unchanged under `action` without a
/// look: no rule, or detectors on an integer that no detector can match (no detector
/// matches fewer than 13 digits without separators, `@`, `:`, `+` or a letter; the
/// PostgreSQL proxy's `no_detector_matches_small_integers` test checks every 32-bit
/// form).
fn copied(action: ColumnAction, column: &Column) -> bool {
    match action {
        ColumnAction::Keep => true,
        ColumnAction::Detectors => NO_MATCH_TYPES.contains(&column.column_type),
        ColumnAction::WholeValue | ColumnAction::Null => false,
    }
}

impl ActiveMask {
    fn new(spec: &MaskSpec, columns: &[Column], binary: bool) -> Self {
        let candidates: Vec<Option<&str>> = if spec.tables.is_empty() {
            vec![None]
        } else {
            spec.tables.iter().map(|t| Some(t.as_str())).collect()
        };
        let text_like: Vec<bool> = columns
            .iter()
            .map(|c| {
                if binary {
                    c.binary_text_like()
                } else {
                    c.text_like()
                }
            })
            .collect();
        let qualified: Vec<String> = columns
            .iter()
            .map(|c| {
                if c.schema.is_empty() {
                    c.org_table.clone()
                } else {
                    format!("{}.{}", c.schema, c.org_table)
                }
            })
            .collect();
        let plans: Vec<ColumnPlan> = candidates
            .iter()
            .map(|candidate| {
                let infos: Vec<ColumnInfo<'_>> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, column)| ColumnInfo {
                        name: if column.org_name.is_empty() {
                            &column.name
                        } else {
                            &column.org_name
                        },
                        table: if column.org_table.is_empty() {
                            *candidate
                        } else {
                            Some(qualified[i].as_str())
                        },
                        text_like: text_like[i],
                    })
                    .collect();
                spec.masker.plan(&infos)
            })
            .collect();
        let strictest = strictest_plan_per_column(&plans, columns.len());
        let mut active = Self {
            masker: Arc::clone(&spec.masker),
            masks_anything: plans.iter().any(ColumnPlan::masks_anything),
            plans,
            strictest,
            names: columns.iter().map(|c| c.name.clone()).collect(),
            text_like,
            column_types: columns.iter().map(|c| c.column_type).collect(),
            copied: Vec::new(),
            nulled: 0,
            scratch: MaskScratch::default(),
            value: Vec::new(),
            row: BytesMut::new(),
            bitmap: Vec::new(),
        };
        active.copied = columns
            .iter()
            .enumerate()
            .map(|(index, column)| copied(active.action(index), column))
            .collect();
        active
    }

    fn plan_for(&self, column: usize) -> Option<&ColumnPlan> {
        self.plans
            .get(self.strictest.get(column).copied().unwrap_or(0))
    }

    fn action(&self, column: usize) -> ColumnAction {
        self.plan_for(column)
            .map_or(ColumnAction::Null, |plan| plan.action(column))
    }

    /// Whether a column's masked values are text where the server announced another
    /// type: it is then announced as a string.
    fn retype(&self, column: usize) -> bool {
        let action = self.action(column);
        let text_type = |t: u8| matches!(t, 15 | 247 | 248 | 249 | 250 | 251 | 252 | 253 | 254);
        matches!(action, ColumnAction::WholeValue | ColumnAction::Detectors)
            && self
                .column_types
                .get(column)
                .is_some_and(|t| !text_type(*t))
    }

    /// Masks one value of `column` into `self.value` (for [`Written::Masked`]).
    fn mask_value(&mut self, column: usize, value: &[u8]) -> Written {
        self.value.clear();
        let plan = self
            .plans
            .get(self.strictest.get(column).copied().unwrap_or(0));
        let written = match plan {
            Some(plan) => {
                self.masker
                    .mask_into(plan, column, value, &mut self.scratch, &mut self.value)
            }
            None => Written::Nulled,
        };
        if written == Written::Nulled {
            self.nulled += 1;
        }
        written
    }

    /// A text-protocol row: one length-encoded string (or 0xFB for NULL) per column.
    fn mask_text_row(&mut self, row: &[u8]) -> Result<&[u8], wire::DecodeError> {
        let mut reader = Reader::new(row, "a text row");
        let mut out = std::mem::take(&mut self.row);
        out.clear();
        out.reserve(row.len());
        let mut column = 0;
        let result = loop {
            if reader.remaining() == 0 {
                break Ok(());
            }
            let before = reader.remaining();
            let value = match reader.lenenc_bytes() {
                Ok(value) => value,
                Err(error) => break Err(error),
            };
            let raw = &row[row.len() - before..row.len() - reader.remaining()];
            match value {
                None => out.put_u8(0xFB),
                Some(_) if self.copied.get(column).copied().unwrap_or(false) => {
                    out.extend_from_slice(raw);
                }
                Some(value) => match self.mask_value(column, value) {
                    Written::Unchanged => out.extend_from_slice(raw),
                    Written::Masked { .. } => wire::put_lenenc_bytes(&mut out, &self.value),
                    Written::Nulled => out.put_u8(0xFB),
                },
            }
            column += 1;
        };
        self.row = out;
        result.map(|()| &self.row[..])
    }

    /// A binary-protocol row: 0x00, the NULL bitmap (offset 2), then each non-NULL
    /// value in its type's encoding. A value the masking turns into text stays a
    /// length-encoded string (its column is announced as one); a value that cannot be
    /// masked in place becomes NULL.
    fn mask_binary_row(
        &mut self,
        row: &[u8],
        columns: &[Column],
    ) -> Result<&[u8], wire::DecodeError> {
        let bitmap_len = (columns.len() + 7 + 2) / 8;
        let mut out = std::mem::take(&mut self.row);
        let result = self.binary_row_into(row, columns, bitmap_len, &mut out);
        self.row = out;
        result.map(|()| &self.row[..])
    }

    fn binary_row_into(
        &mut self,
        row: &[u8],
        columns: &[Column],
        bitmap_len: usize,
        out: &mut BytesMut,
    ) -> Result<(), wire::DecodeError> {
        let mut reader = Reader::new(row, "a binary row");
        let header = reader.u8()?;
        let mut bitmap = std::mem::take(&mut self.bitmap);
        bitmap.clear();
        bitmap.extend_from_slice(reader.take(bitmap_len)?);
        out.clear();
        out.reserve(row.len());
        out.put_u8(header);
        // The bitmap is written once the values have been masked.
        out.extend_from_slice(&bitmap);
        let mut result = Ok(());
        for (index, column) in columns.iter().enumerate() {
            let bit = index + 2;
            let is_null = bitmap
                .get(bit / 8)
                .is_some_and(|byte| byte & (1 << (bit % 8)) != 0);
            if is_null {
                continue;
            }
            let value = if let Some(width) = wire::binary_fixed_width(column.column_type) {
                reader.take(width).map(|raw| (raw, raw))
            } else if wire::binary_is_temporal(column.column_type) {
                let before = reader;
                reader
                    .u8()
                    .and_then(|length| reader.take(usize::from(length)))
                    .map(|value| {
                        let raw =
                            &row[row.len() - before.remaining()..row.len() - reader.remaining()];
                        (raw, value)
                    })
            } else {
                let before = reader;
                reader.lenenc_str().map(|value| {
                    let raw = &row[row.len() - before.remaining()..row.len() - reader.remaining()];
                    (raw, value)
                })
            };
            let (raw, value) = match value {
                Ok(value) => value,
                Err(error) => {
                    result = Err(error);
                    break;
                }
            };
            let null = match self.action(index) {
                ColumnAction::Keep => {
                    out.extend_from_slice(raw);
                    false
                }
                ColumnAction::Null => {
                    self.nulled += 1;
                    true
                }
                ColumnAction::WholeValue | ColumnAction::Detectors => {
                    if self.text_like.get(index).copied().unwrap_or(false) {
                        match self.mask_value(index, value) {
                            Written::Unchanged => {
                                out.extend_from_slice(raw);
                                false
                            }
                            Written::Masked { .. } if self.value == value => {
                                out.extend_from_slice(raw);
                                false
                            }
                            Written::Masked { .. } => {
                                wire::put_lenenc_bytes(out, &self.value);
                                false
                            }
                            Written::Nulled => true,
                        }
                    } else {
                        self.nulled += 1;
                        true
                    }
                }
            };
            if null && let Some(byte) = bitmap.get_mut(bit / 8) {
                *byte |= 1 << (bit % 8);
            }
        }
        if let Some(slot) = out.get_mut(1..1 + bitmap.len()) {
            slot.copy_from_slice(&bitmap);
        }
        self.bitmap = bitmap;
        result
    }

    fn add_counts(&self, outcome: &mut Outcome) {
        for (column, name) in self.names.iter().enumerate() {
            let count = self.plan_for(column).map_or(0, |plan| plan.masked(column));
            if count > 0 {
                *outcome.masked.entry(name.clone()).or_insert(0) += count;
            }
        }
        outcome.nulled += self.nulled;
    }
}

/// Each bound parameter of an EXECUTE as its type and size (`binary:4`, `NULL`),
/// never its value. Types are remembered per statement: an EXECUTE carries them only
/// when it binds new ones.
pub fn parameter_summary(reader: &mut Reader<'_>, params: u16, types: &mut Vec<u8>) -> Vec<String> {
    let count = usize::from(params);
    if count == 0 {
        return Vec::new();
    }
    let unknown = || vec!["binary:?".to_owned(); count];
    let Ok(bitmap) = reader.take(count.div_ceil(8)) else {
        return unknown();
    };
    let bitmap = bitmap.to_vec();
    match reader.u8() {
        Ok(1) => {
            let Ok(raw) = reader.take(2 * count) else {
                return unknown();
            };
            *types = raw.chunks(2).map(|pair| pair[0]).collect();
        }
        Ok(_) => {}
        Err(_) => return unknown(),
    }
    let mut summary = Vec::with_capacity(count);
    for index in 0..count {
        if bitmap
            .get(index / 8)
            .is_some_and(|b| b & (1 << (index % 8)) != 0)
        {
            summary.push("NULL".to_owned());
            continue;
        }
        let Some(&kind) = types.get(index) else {
            summary.push("binary:?".to_owned());
            continue;
        };
        let size = if let Some(width) = wire::binary_fixed_width(kind) {
            reader.take(width).map(|_| width)
        } else if wire::binary_is_temporal(kind) {
            reader
                .u8()
                .and_then(|n| reader.take(usize::from(n)).map(|_| usize::from(n)))
        } else {
            reader.lenenc_str().map(<[u8]>::len)
        };
        match size {
            Ok(size) => summary.push(format!("binary:{size}")),
            Err(_) => {
                summary.resize(count, "binary:?".to_owned());
                break;
            }
        }
    }
    summary
}
