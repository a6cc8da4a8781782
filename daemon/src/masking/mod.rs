//! The masking engine: decides which result values an agent may not see in clear and
//! rewrites them.
//!
//! Policies decide whether an agent may run a query; masking decides what the answer
//! may show. The engine is protocol-independent: a protocol proxy describes each result
//! set's columns once ([`Masker::plan`]), then hands over each value
//! ([`Masker::mask_value`]) and writes back whatever comes out, fixing the lengths on
//! the wire itself.
//!
//! A [`MaskProfile`] holds rules of two kinds:
//!
//! - **column rules** (`table` and/or `column`) mask whole values of the columns they
//!   name;
//! - **detector rules** (`detectors`, optionally narrowed by `table`/`column`) look
//!   inside text values and mask only the spans a detector ([`detect`]) recognises.
//!
//! Each rule has a [`Strategy`]: redact, partial or keyed hash.
//!
//! Original values never leave this module except as the proxy's own input: nothing
//! here logs, stores or `Debug`-prints a value, and the HMAC key is used to key the
//! hasher and then dropped.

pub mod detect;
mod profile;
mod strategy;
#[cfg(test)]
mod tests;

use std::{
    borrow::Cow,
    fmt,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::BufMut;
use thiserror::Error;

pub use detect::{Detector, DetectorSet, Span};
pub use profile::{MaskProfile, MaskRule, StrategyKind};
pub use strategy::{DEFAULT_KEEP_LAST, HASH_BYTES, HASH_PREFIX, MIN_KEY_LEN, REDACTED, Strategy};

use profile::{CompiledRule, Target};
use strategy::Hasher;

/// Why a profile cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MaskError {
    #[error("a masking profile needs a non-empty name")]
    EmptyName,
    #[error("masking profile `{profile}`, rule {rule}: {problem}")]
    Rule {
        profile: String,
        /// 1-based position of the rule in the profile.
        rule: usize,
        problem: RuleProblem,
    },
    #[error(
        "masking profile `{profile}` hashes values, but the HMAC key has {len} bytes \
         (at least {MIN_KEY_LEN} are needed)"
    )]
    KeyTooShort { profile: String, len: usize },
}

/// What is wrong with one rule.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RuleProblem {
    #[error("a rule needs `table`, `column` or `detectors`")]
    NoTarget,
    #[error("`detectors` is empty (use [\"*\"] for all detectors)")]
    EmptyDetectors,
    #[error(
        "unknown detector `{0}` (known: email, credit_card, us_ssn, iban, phone, jwt, \
         aws_access_key, github_token, private_key, ipv4, ipv6, or \"*\")"
    )]
    UnknownDetector(String),
    #[error("`column` is empty")]
    EmptyColumn,
    #[error("`table` = `{0}` is not a table name")]
    BadTable(String),
    #[error("`keep_last` only goes with strategy = \"partial\"")]
    KeepLastWithoutPartial,
}

/// What the proxy knows about a result column.
#[derive(Clone, Copy, Debug)]
pub struct ColumnInfo<'a> {
    pub name: &'a str,
    /// The table the column comes from (`table` or `schema.table`), when the protocol
    /// says (PostgreSQL: a table OID in RowDescription).
    pub table: Option<&'a str>,
    /// Whether the value bytes are text: any type in text format, or a textual type
    /// (text, varchar, char, name, json, xml) in binary format. Detectors only look
    /// at text; whole-value masking of a non-text value yields NULL.
    pub text_like: bool,
}

/// What happens to a column's values in one result set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnAction {
    /// Sent as is.
    Keep,
    /// Every value is replaced (a column rule on a text value). The proxy should
    /// announce the column as text, since the replacement is text.
    WholeValue,
    /// Text values are scanned and matching spans replaced.
    Detectors,
    /// Every value becomes NULL (a column rule on a non-text binary value, which no
    /// text replacement can stand in for).
    Null,
}

impl ColumnAction {
    /// How much of a value the action may take away: keep < detectors < whole < null.
    fn strictness(self) -> u8 {
        match self {
            ColumnAction::Keep => 0,
            ColumnAction::Detectors => 1,
            ColumnAction::WholeValue => 2,
            ColumnAction::Null => 3,
        }
    }
}

/// For each of `columns` columns, the index of the plan that treats it most strictly.
/// When a result set could come from several tables, each gets a plan and a column
/// follows the strictest, since the proxy cannot tell which table it came from.
pub fn strictest_plan_per_column(plans: &[ColumnPlan], columns: usize) -> Vec<usize> {
    (0..columns)
        .map(|column| {
            (0..plans.len())
                .max_by_key(|&p| plans[p].action(column).strictness())
                .unwrap_or(0)
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Entry {
    Keep,
    Whole(Strategy),
    Null,
    Detect(DetectPlan),
}

#[derive(Clone, Copy)]
struct DetectPlan {
    set: DetectorSet,
    /// Per detector (by [`Detector::index`]); only entries in `set` are meaningful.
    strategies: [Strategy; Detector::ALL.len()],
}

/// How to mask one result set's columns, with per-column counts of masked values.
/// Made by [`Masker::plan`]; a column index out of range is treated as masked to NULL.
pub struct ColumnPlan {
    entries: Vec<Entry>,
    masked: Box<[AtomicU64]>,
}

impl ColumnPlan {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any column may change: when not, rows can be forwarded untouched.
    pub fn masks_anything(&self) -> bool {
        self.entries.iter().any(|e| !matches!(e, Entry::Keep))
    }

    pub fn action(&self, column: usize) -> ColumnAction {
        match self.entries.get(column) {
            Some(Entry::Keep) => ColumnAction::Keep,
            Some(Entry::Whole(_)) => ColumnAction::WholeValue,
            Some(Entry::Detect(_)) => ColumnAction::Detectors,
            Some(Entry::Null) | None => ColumnAction::Null,
        }
    }

    /// How many values of `column` were masked (or nulled) so far.
    pub fn masked(&self, column: usize) -> u64 {
        self.masked
            .get(column)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// [`ColumnPlan::masked`] for every column, in order.
    pub fn masked_counts(&self) -> Vec<u64> {
        self.masked
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    fn count(&self, column: usize) {
        if let Some(c) = self.masked.get(column) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl fmt::Debug for ColumnPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let actions: Vec<_> = (0..self.len()).map(|c| self.action(c)).collect();
        f.debug_struct("ColumnPlan")
            .field("actions", &actions)
            .field("masked", &self.masked_counts())
            .finish()
    }
}

/// What to send instead of a value.
pub enum MaskOutcome<'a> {
    /// Send the original.
    Unchanged,
    /// Send `value`. `detector` is the detector of the first masked span (detector
    /// rules), `None` for column rules.
    Masked {
        value: Cow<'a, [u8]>,
        detector: Option<&'static str>,
    },
    /// Send NULL.
    Nulled,
}

impl<'a> MaskOutcome<'a> {
    /// The bytes to put on the wire in place of `original`; `None` means NULL.
    pub fn into_wire(self, original: &'a [u8]) -> Option<Cow<'a, [u8]>> {
        match self {
            MaskOutcome::Unchanged => Some(Cow::Borrowed(original)),
            MaskOutcome::Masked { value, .. } => Some(value),
            MaskOutcome::Nulled => None,
        }
    }

    pub fn is_unchanged(&self) -> bool {
        matches!(self, MaskOutcome::Unchanged)
    }
}

/// Shows lengths and detectors, never the bytes.
impl fmt::Debug for MaskOutcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaskOutcome::Unchanged => f.write_str("Unchanged"),
            MaskOutcome::Masked { value, detector } => f
                .debug_struct("Masked")
                .field("len", &value.len())
                .field("detector", detector)
                .finish(),
            MaskOutcome::Nulled => f.write_str("Nulled"),
        }
    }
}

/// What [`Masker::mask_into`] did with a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Nothing appended: send the original.
    Unchanged,
    /// The masked value was appended. `detector` as in [`MaskOutcome::Masked`].
    Masked { detector: Option<&'static str> },
    /// Nothing appended: send NULL.
    Nulled,
}

/// Working memory of [`Masker::mask_into`], kept by the caller between values so the
/// byte path does not allocate.
#[derive(Default)]
pub struct MaskScratch {
    spans: Vec<Span>,
}

/// A compiled profile with its HMAC key: built once, shared by every connection.
pub struct Masker {
    profile: String,
    rules: Vec<CompiledRule>,
    hasher: Option<Hasher>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("profile", &self.profile)
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl Masker {
    /// Compiles `profile`. `hmac_key` keys `hash` rules (at least [`MIN_KEY_LEN`]
    /// bytes when the profile has any; ignored otherwise) and is not kept.
    pub fn new(profile: &MaskProfile, hmac_key: &[u8]) -> Result<Masker, MaskError> {
        let rules = profile.compile()?;
        let hasher = if rules.iter().any(CompiledRule::has_hash) {
            if hmac_key.len() < MIN_KEY_LEN {
                return Err(MaskError::KeyTooShort {
                    profile: profile.name.clone(),
                    len: hmac_key.len(),
                });
            }
            Hasher::new(hmac_key)
        } else {
            None
        };
        Ok(Masker {
            profile: profile.name.clone(),
            rules,
            hasher,
        })
    }

    pub fn profile_name(&self) -> &str {
        &self.profile
    }

    /// Decides, once per result set, what happens to each column. The first column
    /// rule that applies masks the whole value; otherwise, for each detector, the
    /// first detector rule that applies and names it sets its strategy.
    pub fn plan(&self, columns: &[ColumnInfo<'_>]) -> ColumnPlan {
        let entries: Vec<Entry> = columns.iter().map(|c| self.entry(c)).collect();
        let masked = entries.iter().map(|_| AtomicU64::new(0)).collect();
        ColumnPlan { entries, masked }
    }

    fn entry(&self, column: &ColumnInfo<'_>) -> Entry {
        let whole = self
            .rules
            .iter()
            .find(|r| matches!(r.target, Target::Whole) && r.applies_to(column));
        if let Some(rule) = whole {
            return if column.text_like {
                Entry::Whole(rule.strategy)
            } else {
                Entry::Null
            };
        }
        if !column.text_like {
            return Entry::Keep;
        }
        let mut plan = DetectPlan {
            set: DetectorSet::EMPTY,
            strategies: [Strategy::Redact; Detector::ALL.len()],
        };
        for rule in &self.rules {
            let Target::Detect(set) = rule.target else {
                continue;
            };
            if !rule.applies_to(column) {
                continue;
            }
            for d in set.iter() {
                if !plan.set.contains(d) {
                    plan.set.insert(d);
                    if let Some(s) = plan.strategies.get_mut(d.index()) {
                        *s = rule.strategy;
                    }
                }
            }
        }
        if plan.set.is_empty() {
            Entry::Keep
        } else {
            Entry::Detect(plan)
        }
    }

    /// Masks one value of `column` as `plan` says. SQL NULLs are not values: the proxy
    /// keeps them as they are.
    pub fn mask_value<'a>(
        &self,
        plan: &ColumnPlan,
        column: usize,
        value: &'a [u8],
    ) -> MaskOutcome<'a> {
        let mut out = Vec::new();
        match self.mask_into(plan, column, value, &mut MaskScratch::default(), &mut out) {
            Written::Unchanged => MaskOutcome::Unchanged,
            Written::Nulled => MaskOutcome::Nulled,
            Written::Masked { detector } => MaskOutcome::Masked {
                value: Cow::Owned(out),
                detector,
            },
        }
    }

    /// [`Masker::mask_value`] for a proxy's byte path: a masked value is appended to
    /// `out` (the proxy's output buffer) and nothing is allocated once `scratch` and
    /// `out` have grown to size. Nothing is appended for [`Written::Unchanged`] (send
    /// the original) and [`Written::Nulled`] (send NULL).
    pub fn mask_into<B: BufMut>(
        &self,
        plan: &ColumnPlan,
        column: usize,
        value: &[u8],
        scratch: &mut MaskScratch,
        out: &mut B,
    ) -> Written {
        let written = match plan.entries.get(column) {
            Some(Entry::Keep) => return Written::Unchanged,
            Some(Entry::Null) | None => Written::Nulled,
            Some(Entry::Whole(strategy)) => {
                self.apply(*strategy, None, value, out);
                Written::Masked { detector: None }
            }
            Some(Entry::Detect(detect)) => {
                let spans = &mut scratch.spans;
                spans.clear();
                detect::scan(value, detect.set, spans);
                if spans.is_empty() {
                    return Written::Unchanged;
                }
                detect::merge(spans);
                let mut pos = 0;
                for span in spans.iter() {
                    out.put_slice(value.get(pos..span.start).unwrap_or_default());
                    let strategy = detect
                        .strategies
                        .get(span.detector.index())
                        .copied()
                        .unwrap_or(Strategy::Redact);
                    let text = value.get(span.range()).unwrap_or_default();
                    self.apply(strategy, Some(span.detector), text, out);
                    pos = span.end;
                }
                out.put_slice(value.get(pos..).unwrap_or_default());
                Written::Masked {
                    detector: spans.first().map(|s| s.detector.name()),
                }
            }
        };
        plan.count(column);
        written
    }

    fn apply<B: BufMut>(
        &self,
        strategy: Strategy,
        detector: Option<Detector>,
        text: &[u8],
        out: &mut B,
    ) {
        let marker = || detector.map_or(REDACTED, Detector::marker).as_bytes();
        match strategy {
            Strategy::Redact => out.put_slice(marker()),
            Strategy::Partial { keep_last } => strategy::partial(text, keep_last, out),
            // `new` made a hasher for every profile with a hash rule; redact otherwise.
            Strategy::Hash => match &self.hasher {
                Some(hasher) => hasher.write(text, out),
                None => out.put_slice(marker()),
            },
        }
    }
}
