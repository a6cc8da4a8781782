//! Masking profiles as written in policy files (`[[mask]]` with `[[mask.rule]]`), and
//! their validated, compiled form.

use serde::Deserialize;

use super::{
    ColumnInfo, MaskError, RuleProblem,
    detect::{Detector, DetectorSet},
    strategy::{DEFAULT_KEEP_LAST, Strategy},
};

/// A named set of masking rules: one `[[mask]]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskProfile {
    pub name: String,
    #[serde(default)]
    pub rule: Vec<MaskRule>,
}

/// One `[[mask.rule]]`. Which columns it applies to (`table`, `column`) and whether it
/// masks whole values or only what `detectors` find; see `README-section.md`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// Table name, exact and case-insensitive; `schema.table` or just `table`.
    #[serde(default)]
    pub table: Option<String>,
    /// Column name glob (`*` and `?`), case-insensitive.
    #[serde(default)]
    pub column: Option<String>,
    /// Detector names, or `"*"` for all of them.
    #[serde(default)]
    pub detectors: Option<Vec<String>>,
    pub strategy: StrategyKind,
    /// Only with `strategy = "partial"`; default 4.
    #[serde(default)]
    pub keep_last: Option<usize>,
}

/// The `strategy` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    Redact,
    Partial,
    Hash,
}

impl MaskProfile {
    /// Checks the profile without building a masker (for `sluice policy check`).
    pub fn check(&self) -> Result<(), MaskError> {
        self.compile().map(drop)
    }

    pub(crate) fn compile(&self) -> Result<Vec<CompiledRule>, MaskError> {
        if self.name.trim().is_empty() {
            return Err(MaskError::EmptyName);
        }
        self.rule
            .iter()
            .enumerate()
            .map(|(k, rule)| {
                rule.compile().map_err(|problem| MaskError::Rule {
                    profile: self.name.clone(),
                    rule: k + 1,
                    problem,
                })
            })
            .collect()
    }
}

impl MaskRule {
    fn compile(&self) -> Result<CompiledRule, RuleProblem> {
        let strategy = match (self.strategy, self.keep_last) {
            (StrategyKind::Redact, None) => Strategy::Redact,
            (StrategyKind::Hash, None) => Strategy::Hash,
            (StrategyKind::Partial, keep) => Strategy::Partial {
                keep_last: keep.unwrap_or(DEFAULT_KEEP_LAST),
            },
            (_, Some(_)) => return Err(RuleProblem::KeepLastWithoutPartial),
        };
        let table = match &self.table {
            Some(t) if t.trim().is_empty() || t.starts_with('.') || t.ends_with('.') => {
                return Err(RuleProblem::BadTable(t.clone()));
            }
            Some(t) => Some(t.to_ascii_lowercase()),
            None => None,
        };
        let column = match &self.column {
            Some(c) if c.is_empty() => return Err(RuleProblem::EmptyColumn),
            Some(c) => Some(c.to_ascii_lowercase()),
            None => None,
        };
        let target = match &self.detectors {
            None => {
                if table.is_none() && column.is_none() {
                    return Err(RuleProblem::NoTarget);
                }
                Target::Whole
            }
            Some(names) if names.is_empty() => return Err(RuleProblem::EmptyDetectors),
            Some(names) => {
                let mut set = DetectorSet::EMPTY;
                for name in names {
                    if name == "*" {
                        set = DetectorSet::ALL;
                    } else {
                        let d = Detector::from_name(name)
                            .ok_or_else(|| RuleProblem::UnknownDetector(name.clone()))?;
                        set.insert(d);
                    }
                }
                Target::Detect(set)
            }
        };
        Ok(CompiledRule {
            table,
            column,
            target,
            strategy,
        })
    }
}

pub(crate) struct CompiledRule {
    /// Lower case.
    table: Option<String>,
    /// Lower-case glob.
    column: Option<String>,
    pub(crate) target: Target,
    pub(crate) strategy: Strategy,
}

#[derive(Clone, Copy)]
pub(crate) enum Target {
    Whole,
    Detect(DetectorSet),
}

impl CompiledRule {
    pub(crate) fn applies_to(&self, column: &ColumnInfo<'_>) -> bool {
        let table_ok = match (&self.table, column.table) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(rule), Some(actual)) => same_table(rule, actual),
        };
        table_ok
            && self
                .column
                .as_deref()
                .is_none_or(|glob| glob_match(glob.as_bytes(), column.name.as_bytes()))
    }

    pub(crate) fn has_hash(&self) -> bool {
        self.strategy == Strategy::Hash
    }
}

/// `rule` (lower case) names `actual`. When only one side has a schema, the table
/// names alone are compared: masking one column too many beats one too few.
fn same_table(rule: &str, actual: &str) -> bool {
    let split = |s: &str| -> (Option<String>, String) {
        match s.rsplit_once('.') {
            Some((schema, table)) => (
                Some(schema.to_ascii_lowercase()),
                table.to_ascii_lowercase(),
            ),
            None => (None, s.to_ascii_lowercase()),
        }
    };
    let (rule_schema, rule_table) = split(rule);
    let (schema, table) = split(actual);
    rule_table == table
        && match (rule_schema, schema) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
}

/// Glob match of `text` against `pattern` (lower case): `*` is any run, `?` any one
/// byte; ASCII letters compare case-insensitively. Linear backtracking on the last
/// `*`, so no blow-up on hostile names.
pub(crate) fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        let tc = text.get(t).map(u8::to_ascii_lowercase);
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&pc) if pc == b'?' || Some(pc) == tc => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .unwrap_or_default()
        .iter()
        .all(|&c| c == b'*')
}
