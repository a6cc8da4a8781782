//! A session's statements as a timeline for humans: what `sluice sessions show` lists
//! under the session and what `sluice replay` prints as the statements "happen".
//!
//! Both are pure functions of the records (plus a line width and a speed), so that the
//! format and the replay's timing are tested without a daemon, a terminal or a clock.
//! One statement is one line: where it sits in the session, what was decided and by
//! which rule, what it was and how it ended, what was masked, then its SQL (literals
//! already replaced by `?` when recorded) cut to fit the line.

use std::time::Duration;

use time::OffsetDateTime;

use crate::store::{SessionRecord, StatementRecord};

/// Line width when stdout is not a terminal.
pub const DEFAULT_WIDTH: usize = 120;
/// The SQL keeps at least this many characters, even past the line width.
const MIN_SQL_CHARS: usize = 24;
/// Cells longer than this are cut, so that one long value does not push the SQL off
/// the screen (the rule already says why a statement was denied, and the SQLSTATE
/// leads a server error; `--json` has everything in full).
const MAX_RULE_CHARS: usize = 24;
const MAX_KIND_CHARS: usize = 16;
const MAX_OUTCOME_CHARS: usize = 40;
const MAX_MASKED_CHARS: usize = 32;
const MAX_APPROVAL_CHARS: usize = 56;
/// The aligned columns: offset, decision, rule, kind, duration.
const ALIGNED: usize = 5;

/// Column widths shared by every line of one session's timeline.
#[derive(Clone, Debug)]
pub struct Timeline {
    started_at: OffsetDateTime,
    widths: [usize; ALIGNED],
}

/// The cells of one line. The aligned columns are padded to the widest of the
/// timeline; the outcome and masking vary too much to align, and follow unpadded (so
/// the SQL gets the room they do not use).
struct Cells {
    aligned: [String; ALIGNED],
    /// How a held statement's approval ended; empty for statements never held.
    approval: String,
    outcome: String,
    masked: String,
    sql: String,
}

impl Timeline {
    /// Lays out the timeline of `statements` within `session`.
    pub fn new(session: &SessionRecord, statements: &[StatementRecord]) -> Self {
        let mut timeline = Self {
            started_at: session.started_at,
            widths: [0; ALIGNED],
        };
        for statement in statements {
            let cells = timeline.cells(statement);
            for (width, cell) in timeline.widths.iter_mut().zip(&cells.aligned) {
                *width = (*width).max(cell.chars().count());
            }
        }
        timeline
    }

    /// One statement's line, at most `width` characters unless the cells before the
    /// SQL already take (nearly) all of it.
    pub fn line(&self, statement: &StatementRecord, width: usize) -> String {
        let cells = self.cells(statement);
        let mut line = String::new();
        for (index, (cell, width)) in cells.aligned.iter().zip(self.widths).enumerate() {
            let padding = width.saturating_sub(cell.chars().count());
            // Numbers are right-aligned: the offset and the duration.
            if index == 0 || index == ALIGNED - 1 {
                line.extend(std::iter::repeat_n(' ', padding));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', padding));
            }
            line.push_str("  ");
        }
        for cell in [&cells.approval, &cells.outcome, &cells.masked] {
            if !cell.is_empty() {
                line.push_str(cell);
                line.push_str("  ");
            }
        }
        let room = width
            .saturating_sub(line.chars().count())
            .max(MIN_SQL_CHARS);
        line.push_str(&cut(&cells.sql, room));
        line
    }

    /// The statement's offset from the session's start.
    pub fn offset(&self, statement: &StatementRecord) -> time::Duration {
        statement.started_at - self.started_at
    }

    fn cells(&self, statement: &StatementRecord) -> Cells {
        Cells {
            aligned: [
                format_offset(self.offset(statement)),
                decision_label(&statement.decision.action).to_owned(),
                cut(&statement.decision.rule, MAX_RULE_CHARS),
                cut(&statement.kind, MAX_KIND_CHARS),
                statement
                    .duration_us
                    .map_or_else(|| "-".to_owned(), format_duration_us),
            ],
            approval: cut(&approval(statement), MAX_APPROVAL_CHARS),
            outcome: cut(&outcome(statement), MAX_OUTCOME_CHARS),
            masked: cut(&masking(statement), MAX_MASKED_CHARS),
            // One line per statement: newlines and runs of blanks become one space.
            sql: statement
                .sql
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        }
    }
}

/// Every statement's line, in the order given.
pub fn timeline_lines(
    session: &SessionRecord,
    statements: &[StatementRecord],
    width: usize,
) -> Vec<String> {
    let timeline = Timeline::new(session, statements);
    statements
        .iter()
        .map(|statement| timeline.line(statement, width))
        .collect()
}

/// When each statement is due in a replay, counted from the replay's start: its offset
/// from the session's start divided by `speed`. Never earlier than the statement before
/// (pipelined statements may be recorded slightly out of time order), never before the
/// start. A `speed` of 0 (or one that is not a positive number) means no waiting.
pub fn replay_schedule(
    session: &SessionRecord,
    statements: &[StatementRecord],
    speed: f64,
) -> Vec<Duration> {
    let instant = !(speed.is_finite() && speed > 0.0);
    let mut due = Duration::ZERO;
    statements
        .iter()
        .map(|statement| {
            if !instant {
                let offset = (statement.started_at - session.started_at).as_seconds_f64();
                // Negative or unrepresentable offsets (a clock step) clamp to the bounds.
                let at =
                    Duration::try_from_secs_f64(offset.max(0.0) / speed).unwrap_or(Duration::MAX);
                due = due.max(at);
            }
            due
        })
        .collect()
}

/// `+0.012s`: seconds with milliseconds, signed.
pub fn format_offset(offset: time::Duration) -> String {
    let millis = offset.whole_milliseconds();
    let sign = if millis < 0 { '-' } else { '+' };
    let millis = millis.unsigned_abs();
    format!("{sign}{}.{:03}s", millis / 1000, millis % 1000)
}

/// `850us`, `1.2ms`, `3.40s`.
fn format_duration_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else {
        format!("{:.2}s", us as f64 / 1e6)
    }
}

/// `allow`, `DENY` (shouting, so denials stand out), `review`.
fn decision_label(action: &str) -> &str {
    match action {
        "deny" => "DENY",
        other => other,
    }
}

/// `approved by root (uid 0) after 4.1s: ticket OPS-42`; empty when never held.
fn approval(statement: &StatementRecord) -> String {
    let Some(approval) = &statement.approval else {
        return String::new();
    };
    let by = match (approval.approver_uid, &approval.approver_name) {
        (Some(uid), Some(name)) => format!(" by {name} (uid {uid})"),
        (Some(uid), None) => format!(" by uid {uid}"),
        _ => String::new(),
    };
    format!(
        "{}{by} after {}: {}",
        approval.outcome.replace('_', " "),
        format_duration_us(approval.waited_ms.saturating_mul(1000)),
        approval.reason
    )
}

/// How the statement ended: its error, else its rows, else its tag.
fn outcome(statement: &StatementRecord) -> String {
    if let Some(error) = &statement.error {
        return format!("error {error}");
    }
    match (statement.rows, &statement.tag) {
        (Some(1), _) => "1 row".to_owned(),
        (Some(rows), _) => format!("{rows} rows"),
        (None, Some(tag)) => tag.clone(),
        (None, None) => "-".to_owned(),
    }
}

/// `masked email=3 ssn=1, nulled 2`; empty when nothing was masked.
fn masking(statement: &StatementRecord) -> String {
    let mut parts = Vec::new();
    if !statement.masked.is_empty() {
        let columns: Vec<String> = statement
            .masked
            .iter()
            .map(|(column, count)| format!("{column}={count}"))
            .collect();
        parts.push(format!("masked {}", columns.join(" ")));
    }
    if statement.nulled > 0 {
        parts.push(format!("nulled {}", statement.nulled));
    }
    parts.join(", ")
}

/// `text` in at most `max` characters, ending in `…` when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.truncate(cut.trim_end().len());
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::store::DecisionRecord;

    fn session() -> SessionRecord {
        SessionRecord {
            ended_at: Some(datetime!(2025-01-02 03:04:09 UTC)),
            ..crate::cli::tests::session(42)
        }
    }

    fn statement(seq: u64, at: OffsetDateTime, action: &str, sql: &str) -> StatementRecord {
        StatementRecord {
            session_id: 42,
            seq,
            sql: sql.into(),
            operation: "read".into(),
            kind: "SELECT".into(),
            protocol: "postgres".into(),
            details: Default::default(),
            tables: vec![],
            params: 0,
            decision: DecisionRecord {
                action: action.into(),
                rule: "read-orders".into(),
                reason: String::new(),
            },
            started_at: at,
            duration_us: Some(850),
            rows: Some(3),
            tag: Some("SELECT 3".into()),
            error: None,
            masked: Default::default(),
            nulled: 0,
            approval: None,
            identity: None,
            parameters: Vec::new(),
        }
    }

    fn statements() -> Vec<StatementRecord> {
        let select = statement(
            1,
            datetime!(2025-01-02 03:04:05.012 UTC),
            "allow",
            "SELECT id, email\n  FROM customers\n WHERE id = ?",
        );
        let mut masked = statement(
            2,
            datetime!(2025-01-02 03:04:06.5 UTC),
            "allow",
            "SELECT email, ssn FROM customers",
        );
        masked.duration_us = Some(1_250);
        masked.rows = Some(1);
        masked.masked = [("email".to_owned(), 1), ("ssn".to_owned(), 1)]
            .into_iter()
            .collect();
        masked.nulled = 2;
        let mut denied = statement(
            3,
            datetime!(2025-01-02 03:04:08.25 UTC),
            "deny",
            "DELETE FROM orders WHERE id = ?",
        );
        denied.decision.rule = "no-writes".into();
        denied.kind = "DELETE".into();
        denied.duration_us = Some(2_500_000);
        denied.rows = None;
        denied.tag = None;
        denied.error = Some("42501: denied by rule no-writes".into());
        let mut review = statement(
            4,
            datetime!(2025-01-02 03:04:08.25 UTC),
            "review",
            "UPDATE orders SET state = ?",
        );
        review.kind = "UPDATE".into();
        review.duration_us = None;
        review.rows = None;
        review.tag = None;
        vec![select, masked, denied, review]
    }

    #[test]
    fn a_held_statement_shows_who_decided_and_why() {
        let mut held = statement(
            1,
            datetime!(2025-01-02 03:04:05 UTC),
            "review",
            "DELETE FROM t",
        );
        held.approval = Some(crate::store::ApprovalRecord {
            id: 17,
            outcome: "approved".into(),
            approver_uid: Some(1001),
            approver_name: Some("alice".into()),
            approver_identity: None,
            reason: "ticket OPS-42".into(),
            waited_ms: 4_100,
        });
        let line = timeline_lines(&session(), &[held], 200).remove(0);
        assert!(
            line.contains("approved by alice (uid 1001) after 4.10s: ticket OPS-42"),
            "{line}"
        );
    }

    #[test]
    fn timeline_lines_line_up_and_say_what_happened() {
        let lines = timeline_lines(&session(), &statements(), 200);
        assert_eq!(
            lines,
            [
                "+0.012s  allow   read-orders  SELECT  850us  3 rows  \
                 SELECT id, email FROM customers WHERE id = ?",
                "+1.500s  allow   read-orders  SELECT  1.2ms  1 row  masked email=1 ssn=1, nulled 2  \
                 SELECT email, ssn FROM customers",
                "+3.250s  DENY    no-writes    DELETE  2.50s  error 42501: denied by rule no-writes  \
                 DELETE FROM orders WHERE id = ?",
                "+3.250s  review  read-orders  UPDATE      -  -  UPDATE orders SET state = ?",
            ]
        );
    }

    #[test]
    fn sql_is_cut_to_the_width_and_empty_columns_take_no_room() {
        let statements = &statements()[..1];
        let lines = timeline_lines(&session(), statements, 80);
        assert_eq!(
            lines,
            ["+0.012s  allow  read-orders  SELECT  850us  3 rows  SELECT id, email FROM custo…"]
        );
        assert_eq!(lines[0].chars().count(), 80);
        // A cut never leaves a blank before the ellipsis.
        let lines = timeline_lines(&session(), statements, 85);
        assert!(
            lines[0].ends_with(" SELECT id, email FROM customers…"),
            "{}",
            lines[0]
        );
        // However narrow the line, some SQL remains.
        let narrow = timeline_lines(&session(), statements, 10);
        assert!(
            narrow[0].ends_with("  SELECT id, email FROM c…"),
            "{}",
            narrow[0]
        );
        assert!(timeline_lines(&session(), &[], 80).is_empty());
    }

    #[test]
    fn long_columns_are_cut() {
        let mut long = statements()[2].clone();
        long.decision.rule = "r".repeat(100);
        long.error = Some(format!("XX000: {}", "e".repeat(100)));
        let line = timeline_lines(&session(), &[long], 400).remove(0);
        assert!(line.contains(&format!("{}…  ", "r".repeat(23))), "{line}");
        assert!(
            line.contains(&format!("error XX000: {}…  ", "e".repeat(26))),
            "{line}"
        );
    }

    #[test]
    fn offsets_and_durations_read_naturally() {
        assert_eq!(format_offset(time::Duration::milliseconds(12)), "+0.012s");
        assert_eq!(format_offset(time::Duration::seconds(3723)), "+3723.000s");
        assert_eq!(format_offset(time::Duration::milliseconds(-3)), "-0.003s");
        assert_eq!(format_duration_us(0), "0us");
        assert_eq!(format_duration_us(999), "999us");
        assert_eq!(format_duration_us(1_000), "1.0ms");
        assert_eq!(format_duration_us(999_949), "999.9ms");
        assert_eq!(format_duration_us(12_345_678), "12.35s");
    }

    #[test]
    fn replay_waits_by_recorded_offsets_divided_by_speed() {
        let ms = Duration::from_millis;
        let statements = statements();
        assert_eq!(
            replay_schedule(&session(), &statements, 1.0),
            [ms(12), ms(1_500), ms(3_250), ms(3_250)]
        );
        assert_eq!(
            replay_schedule(&session(), &statements, 2.0),
            [ms(6), ms(750), ms(1_625), ms(1_625)]
        );
        assert_eq!(
            replay_schedule(&session(), &statements, 0.5),
            [ms(24), ms(3_000), ms(6_500), ms(6_500)]
        );
        for instant in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                replay_schedule(&session(), &statements, instant),
                [Duration::ZERO; 4],
                "{instant}"
            );
        }
        assert!(replay_schedule(&session(), &[], 1.0).is_empty());
    }

    #[test]
    fn replay_never_goes_back_in_time() {
        let mut statements = statements();
        // Recorded before the session started (a clock step), then out of order.
        statements[0].started_at = datetime!(2025-01-02 03:04:04 UTC);
        statements[2].started_at = datetime!(2025-01-02 03:04:05.1 UTC);
        let ms = Duration::from_millis;
        assert_eq!(
            replay_schedule(&session(), &statements, 1.0),
            [ms(0), ms(1_500), ms(1_500), ms(3_250)]
        );
    }
}
