//! Masking a result set's DataRows on their way to the agent.
//!
//! This is the proxy's byte path for masked results, so it is written not to allocate
//! per row: a row is read in place from its frame and written straight into the
//! connection's output buffer, each value either copied, masked into the buffer by
//! [`Masker::mask_into`], or replaced by NULL, with the lengths patched afterwards.
//! Columns that cannot change (no rule, or detectors on a type whose text can hold no
//! match) are copied without calling the masker; a result with no such column is
//! forwarded frame by frame without being decoded.
//!
//! A row the fast reader cannot take (malformed) goes through the codec's decoder,
//! which reports what is wrong; the same decoded path is the tests' oracle.

use std::{collections::BTreeMap, sync::Arc};

use bytes::{Buf, BufMut, BytesMut};

use super::{
    Column, ProxyError, ResultMask,
    codec::{BackendMessage, EncodeError, Format, Frame, backend::encode_data_row},
};
use crate::masking::{
    ColumnAction, ColumnInfo, ColumnPlan, MaskOutcome, MaskScratch, Masker, Written,
    strictest_plan_per_column,
};

/// A result set being masked.
///
/// RowDescription gives a column's table only as an OID. When the statement reads one
/// table, that is the table; when it reads several, the column is planned as if from
/// each of them and the strictest outcome is used: over-masking, never a leak.
pub(super) struct ActiveMask {
    masker: Arc<Masker>,
    /// One plan per candidate table; empty when the columns are unknown, and then every
    /// value is sent as NULL.
    plans: Vec<ColumnPlan>,
    /// For each column, the plan that masks it most.
    strictest: Vec<usize>,
    /// For each column, whether its values go out as they came (see [`copied`]).
    copied: Vec<bool>,
    /// No column can change: rows are forwarded untouched.
    forward_rows: bool,
    names: Vec<String>,
    nulled: u64,
    scratch: MaskScratch,
}

/// Types whose binary format is their text: text, varchar, bpchar, name, json, xml,
/// unknown, char.
const TEXT_LIKE_TYPES: &[u32] = &[25, 1043, 1042, 19, 114, 142, 705, 18];

/// Types whose text form no detector can match: bool (`t`/`f`), int2, int4 and oid (at
/// most ten digits after an optional `-`: no detector matches fewer than 13 digits
/// without separators, `@`, `:`, `+`, upper case or a letter).
/// `tests::no_detector_matches_small_integers` checks it.
const NO_MATCH_TYPES: &[u32] = &[16, 21, 23, 26];

/// Whether `column`'s values go out unchanged under `action`: no rule, or detectors
/// on text that cannot hold a match.
fn copied(action: ColumnAction, column: &Column) -> bool {
    match action {
        ColumnAction::Keep => true,
        ColumnAction::Detectors => {
            column.format == Format::Text && NO_MATCH_TYPES.contains(&column.type_oid)
        }
        ColumnAction::WholeValue | ColumnAction::Null => false,
    }
}

impl ActiveMask {
    pub(super) fn new(mask: &ResultMask, columns: Option<&[Column]>) -> Self {
        let Some(columns) = columns else {
            return Self {
                masker: Arc::clone(&mask.masker),
                plans: Vec::new(),
                strictest: Vec::new(),
                copied: Vec::new(),
                forward_rows: false,
                names: Vec::new(),
                nulled: 0,
                scratch: MaskScratch::default(),
            };
        };
        let candidates: Vec<Option<&str>> = if mask.tables.is_empty() {
            vec![None]
        } else {
            mask.tables.iter().map(|t| Some(t.as_str())).collect()
        };
        let plans: Vec<ColumnPlan> = candidates
            .iter()
            .map(|candidate| {
                let infos: Vec<ColumnInfo<'_>> = columns
                    .iter()
                    .map(|column| ColumnInfo {
                        name: &column.name,
                        table: candidate.filter(|_| column.table_oid != 0),
                        text_like: column.format == Format::Text
                            || TEXT_LIKE_TYPES.contains(&column.type_oid),
                    })
                    .collect();
                mask.masker.plan(&infos)
            })
            .collect();
        let strictest = strictest_plan_per_column(&plans, columns.len());
        let copied: Vec<bool> = columns
            .iter()
            .zip(&strictest)
            .enumerate()
            .map(|(index, (column, &plan))| {
                plans
                    .get(plan)
                    .is_some_and(|plan| copied(plan.action(index), column))
            })
            .collect();
        Self {
            forward_rows: copied.iter().all(|&c| c),
            copied,
            plans,
            strictest,
            masker: Arc::clone(&mask.masker),
            names: columns.iter().map(|c| c.name.clone()).collect(),
            nulled: 0,
            scratch: MaskScratch::default(),
        }
    }

    /// The plan that decides `column`; `None` when the columns are unknown.
    fn plan_for(&self, column: usize) -> Option<&ColumnPlan> {
        self.plans
            .get(self.strictest.get(column).copied().unwrap_or(0))
    }

    /// Rewrites a DataRow into `out`, masking what the plan says.
    pub(super) fn mask_row(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), ProxyError> {
        if self.forward_rows {
            out.extend_from_slice(frame.as_bytes());
            return Ok(());
        }
        let start = out.len();
        match self.mask_row_in_place(frame.body(), out) {
            Some(Ok(())) => Ok(()),
            Some(Err(error)) => {
                out.truncate(start);
                Err(ProxyError::Encode(error))
            }
            None => {
                out.truncate(start);
                self.mask_row_decoded(frame, out)
            }
        }
    }

    /// The byte path: reads the DataRow body in place and writes the masked row to
    /// `out`. `None` when the body is not a well-formed DataRow.
    fn mask_row_in_place(
        &mut self,
        body: &[u8],
        out: &mut BytesMut,
    ) -> Option<Result<(), EncodeError>> {
        let (count, mut rest) = body.split_first_chunk::<2>()?;
        let count = usize::try_from(i16::from_be_bytes(*count)).ok()?;
        // Checked whole before anything is masked, so a malformed row counts nothing.
        if !well_formed(rest, count) {
            return None;
        }
        let start = out.len();
        out.reserve(body.len() + 5);
        out.put_u8(b'D');
        out.put_i32(0);
        out.put_u16(count as u16);
        for column in 0..count {
            let (len, after) = rest.split_first_chunk::<4>()?;
            let len = i32::from_be_bytes(*len);
            if len == -1 {
                out.put_i32(-1);
                rest = after;
                continue;
            }
            let (value, after) = after.split_at_checked(usize::try_from(len).ok()?)?;
            rest = after;
            if self.copied.get(column).copied().unwrap_or(false) {
                out.put_i32(len);
                out.put_slice(value);
                continue;
            }
            let len_at = out.len();
            out.put_i32(0);
            let plan = self
                .plans
                .get(self.strictest.get(column).copied().unwrap_or(0));
            let written = match plan {
                Some(plan) => self
                    .masker
                    .mask_into(plan, column, value, &mut self.scratch, out),
                None => Written::Nulled,
            };
            match written {
                Written::Unchanged => {
                    patch_len(out, len_at, len);
                    out.put_slice(value);
                }
                Written::Masked { .. } => {
                    let written = out.len() - len_at - 4;
                    let Ok(len) = i32::try_from(written) else {
                        return Some(Err(too_large("DataRow value", written)));
                    };
                    patch_len(out, len_at, len);
                }
                Written::Nulled => {
                    self.nulled += 1;
                    out.truncate(len_at);
                    out.put_i32(-1);
                }
            }
        }
        if !rest.is_empty() {
            return None;
        }
        let len = out.len() - start - 1;
        let Ok(len) = i32::try_from(len) else {
            return Some(Err(too_large("message", len)));
        };
        patch_len(out, start + 1, len);
        Some(Ok(()))
    }

    /// The same through the codec: decodes the row, masks each value into its own
    /// buffer and encodes the row anew. Reports malformed rows.
    fn mask_row_decoded(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), ProxyError> {
        let BackendMessage::DataRow { values } =
            BackendMessage::decode(frame).map_err(ProxyError::ServerMessage)?
        else {
            out.extend_from_slice(frame.as_bytes());
            return Ok(());
        };
        let mut masked: Vec<Option<std::borrow::Cow<'_, [u8]>>> = Vec::with_capacity(values.len());
        for (column, value) in values.iter().enumerate() {
            let Some(value) = value else {
                masked.push(None);
                continue;
            };
            let outcome = match self.plan_for(column) {
                Some(plan) => self.masker.mask_value(plan, column, value),
                None => MaskOutcome::Nulled,
            };
            if matches!(outcome, MaskOutcome::Nulled) {
                self.nulled += 1;
            }
            masked.push(outcome.into_wire(value));
        }
        let refs: Vec<Option<&[u8]>> = masked.iter().map(|v| v.as_deref()).collect();
        encode_data_row(&refs, out).map_err(ProxyError::Encode)
    }

    /// Values masked per column name, and values nulled.
    pub(super) fn counts(&self) -> (BTreeMap<String, u64>, u64) {
        let mut by_column = BTreeMap::new();
        for (column, name) in self.names.iter().enumerate() {
            let count = self.plan_for(column).map_or(0, |plan| plan.masked(column));
            if count > 0 {
                *by_column.entry(name.clone()).or_insert(0) += count;
            }
        }
        (by_column, self.nulled)
    }
}

/// Takes the whole DataRows at the front of `buffer`, the rest of a result whose first
/// row the proxy has handled (so its masking is decided), and writes them to `out`:
/// masked in place by `mask`, or copied in one piece when nothing in them can change.
/// Returns how many rows it took.
///
/// This is the relay's path for large results: no frame is split off the buffer (a
/// reference count taken and dropped per row) and no per-row dispatch runs. It stops
/// at the first frame that is not a whole DataRow, has a length outside `4..=max_len`,
/// or is a row the in-place reader cannot take; the frame decoder and
/// [`ActiveMask::mask_row`] then take that frame as before and report what is wrong.
pub(super) fn take_data_rows(
    buffer: &mut BytesMut,
    mut mask: Option<&mut ActiveMask>,
    max_len: usize,
    out: &mut BytesMut,
) -> u64 {
    let masking = mask.as_deref().is_some_and(|active| !active.forward_rows);
    let mut rows = 0;
    let mut taken = 0;
    while let Some(&[b'D', a, b, c, d]) = buffer.get(taken..taken + 5) {
        let Ok(len) = usize::try_from(i32::from_be_bytes([a, b, c, d])) else {
            break;
        };
        if !(4..=max_len).contains(&len) {
            break;
        }
        let Some(body) = buffer.get(taken + 5..taken + 1 + len) else {
            break;
        };
        if masking && let Some(active) = mask.as_deref_mut() {
            let start = out.len();
            if !matches!(active.mask_row_in_place(body, out), Some(Ok(()))) {
                out.truncate(start);
                break;
            }
        }
        taken += 1 + len;
        rows += 1;
    }
    if !masking && let Some(run) = buffer.get(..taken) {
        out.extend_from_slice(run);
    }
    buffer.advance(taken);
    rows
}

/// Whether `values` is exactly `count` values, each NULL (-1) or a length and as many
/// bytes.
fn well_formed(mut values: &[u8], count: usize) -> bool {
    for _ in 0..count {
        let Some((len, after)) = values.split_first_chunk::<4>() else {
            return false;
        };
        let len = i32::from_be_bytes(*len);
        values = match usize::try_from(len) {
            Ok(len) => match after.get(len..) {
                Some(after) => after,
                None => return false,
            },
            Err(_) if len == -1 => after,
            Err(_) => return false,
        };
    }
    values.is_empty()
}

fn patch_len(out: &mut BytesMut, at: usize, len: i32) {
    if let Some(slot) = out.get_mut(at..at + 4) {
        slot.copy_from_slice(&len.to_be_bytes());
    }
}

fn too_large(what: &'static str, len: usize) -> EncodeError {
    EncodeError::TooLarge {
        what,
        len,
        max: i32::MAX as usize,
    }
}

#[cfg(test)]
mod tests;
