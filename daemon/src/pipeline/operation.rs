//! What an agent asks a resource to do, in one shape for every protocol.
//!
//! A protocol decodes its own requests (a SQL statement, an HTTP request, a Kubernetes
//! API call, an SSH channel request) and describes each as an [`Operation`]: the class
//! the policy judges, a verb and targets for people, a summary with no literal values,
//! and a typed [`Details`] for what only that protocol has. The judge, the records, the
//! events and the exporters work from this shape alone, so they know no protocol.

use super::Details;
use crate::{policy::Protocol, sql::Classified};

/// The operation class the policy judges (`read`, `write`, `ddl`, `dcl`, `admin`,
/// `dangerous`, `unparsed`; `connect` is the session's own).
pub use crate::policy::Operation as Class;

/// Longest summary kept in a record, after literal masking.
pub const MAX_SUMMARY: usize = 16 * 1024;

/// One operation, as decoded and before it is judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub protocol: Protocol,
    pub class: Class,
    /// What is done: `SELECT`, `CREATE TABLE`, `GET`, `exec`, `get pods`...
    pub verb: String,
    /// What it is done to: tables, URL paths, Kubernetes objects, commands.
    pub targets: Vec<String>,
    /// The request with every literal value removed (SQL literals as `?`, no query
    /// string values, no header values). Never holds a secret or a masked value.
    pub summary: String,
    /// Each parameter as its format and size (`text:11`, `binary:4`, `NULL`), never
    /// its value.
    pub parameters: Vec<String>,
    /// What only this protocol knows, as plain data rules can narrow on.
    pub details: Details,
    /// Set when the response to this operation cannot be masked (a COPY stream, say):
    /// says why, and the judge refuses the operation under any mask profile.
    pub unmaskable: Option<String>,
}

impl Operation {
    /// A classified SQL statement of `protocol` (`summary`: its text with literals
    /// masked, e.g. by [`crate::sql::literals_masked`]; cut to [`MAX_SUMMARY`] here).
    pub fn sql(protocol: Protocol, statement: &Classified, summary: String) -> Self {
        let unmaskable = crate::policy::unmaskable_output(statement).map(str::to_owned);
        Self {
            protocol,
            class: statement.operation,
            verb: statement.kind.clone(),
            targets: statement
                .tables_read
                .iter()
                .chain(&statement.tables_written)
                .cloned()
                .collect(),
            summary: truncated(summary),
            parameters: Vec::new(),
            details: Details::Sql {
                tables_read: statement.tables_read.clone(),
                tables_written: statement.tables_written.clone(),
                database: None,
            },
            unmaskable,
        }
    }

    /// An operation with no details: class, verb and summary only.
    pub fn new(protocol: Protocol, class: Class, verb: impl Into<String>, summary: String) -> Self {
        Self {
            protocol,
            class,
            verb: verb.into(),
            targets: Vec::new(),
            summary: truncated(summary),
            parameters: Vec::new(),
            details: Details::None,
            unmaskable: None,
        }
    }
}

/// `summary` cut to [`MAX_SUMMARY`] bytes on a character boundary, marked with ` …`.
pub fn truncated(mut summary: String) -> String {
    if summary.len() > MAX_SUMMARY {
        let mut end = MAX_SUMMARY;
        while !summary.is_char_boundary(end) {
            end -= 1;
        }
        summary.truncate(end);
        summary.push_str(" …");
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sql_statement_becomes_an_operation_with_its_tables() {
        let statement = crate::sql::classify_or_unparsed("INSERT INTO t SELECT * FROM s").remove(0);
        let operation = Operation::sql(Protocol::Postgres, &statement, "INSERT ...".into());
        assert_eq!(operation.class, Class::Write);
        assert_eq!(operation.verb, "INSERT");
        assert!(operation.targets.contains(&"t".to_owned()), "{operation:?}");
        assert!(operation.unmaskable.is_none());
        let copy = crate::sql::classify_or_unparsed("COPY t TO STDOUT").remove(0);
        assert!(
            Operation::sql(Protocol::Postgres, &copy, String::new())
                .unmaskable
                .is_some()
        );
    }

    #[test]
    fn long_summaries_are_cut_on_a_character_boundary() {
        let cut = truncated("é".repeat(MAX_SUMMARY));
        assert!(cut.len() <= MAX_SUMMARY + " …".len());
        assert!(cut.ends_with(" …"));
    }
}
