//! SQL statement classification for policy decisions.
//!
//! The PostgreSQL proxy asks the policy about every statement an agent sends. The policy
//! speaks in operation classes (`read`, `write`, `ddl`, ...), so this module turns SQL
//! text into one [`Classified`] per statement: its single most sensitive class, what it
//! is, which tables it reads and writes, which functions it calls and why it is
//! sensitive. It also masks literals so statements can be recorded without their values.
//!
//! The text is hostile: it comes from the agent. Everything here fails closed. Text that
//! does not parse is an error (the caller then uses [`Operation::Unparsed`], which the
//! policy denies unless a rule allows it), and so is text too long or too deeply nested
//! to handle within a bounded time and stack.
//!
//! # Class decisions
//!
//! Each statement gets exactly one class, the most sensitive that applies (`dangerous` >
//! `dcl` > `admin` > `ddl` > `write` > `read`); anything the classifier does not know is
//! `unparsed`, which outranks them all.
//!
//! - **read**: `SELECT`, `VALUES`, `SHOW`, `COPY ... TO STDOUT`, `EXPLAIN` without
//!   `ANALYZE` (the plan only; the explained statement does not run, but the
//!   functions it names still count), `LISTEN`/`UNLISTEN`, and session control:
//!   `BEGIN`/`COMMIT`/`ROLLBACK`/`SAVEPOINT`, `DISCARD`, `RESET`, `PREPARE` of a read,
//!   `EXECUTE`, `DEALLOCATE`, `DECLARE` of a read, `FETCH`, `CLOSE`, `SET TRANSACTION`,
//!   `SET TIME ZONE` and `SET` of the session parameters in [`SESSION_PARAMETERS`]. Session
//!   control changes nothing another session can see, and clients (psql, pg_dump, every
//!   driver) send it unprompted, so denying it would break them.
//! - **write**: `INSERT`, `UPDATE`/`DELETE` with a `WHERE`, `MERGE`, `COPY ... FROM
//!   STDIN`, `SELECT ... INTO`, `SELECT ... FOR UPDATE/SHARE`, `LOCK`, `NOTIFY`,
//!   `REFRESH MATERIALIZED VIEW`, `CALL` (a procedure may change anything it likes),
//!   data-modifying CTEs and the functions of class write in [`SENSITIVE_FUNCTIONS`]
//!   (`nextval`, `setval`, large-object writes, `pg_notify`).
//! - **ddl**: `CREATE`/`ALTER`/`COMMENT ON` of tables, views, indexes, functions,
//!   schemas, sequences, types, domains, triggers, databases.
//! - **dcl**: `GRANT`, `REVOKE`, `CREATE`/`ALTER ROLE`/`USER`, `ALTER DEFAULT
//!   PRIVILEGES`, `REASSIGN OWNED`, `... OWNER TO`, row-level security (`CREATE`/`ALTER
//!   POLICY`, `ALTER TABLE ... ENABLE/DISABLE/FORCE ROW LEVEL SECURITY`), `SET ROLE`, `SET
//!   SESSION AUTHORIZATION` and `set_config('role', ...)`.
//! - **admin**: `VACUUM`, `ANALYZE`, `CHECKPOINT`, `CLUSTER`, `REINDEX`, `ALTER SYSTEM`,
//!   `CREATE EXTENSION` (installs server-side code), `CREATE SERVER` (points the database
//!   at other hosts), `SET`/`set_config` of any parameter not in [`SESSION_PARAMETERS`]
//!   (server settings, custom `app.*` variables that row-level security may depend on),
//!   and the admin functions in [`SENSITIVE_FUNCTIONS`] (terminating backends, reloading
//!   the configuration, replication slots).
//! - **dangerous**: every `DROP` (including `DROP ROLE`: dangerous outranks dcl),
//!   `ALTER TABLE ... DROP COLUMN`, `TRUNCATE`, `UPDATE`/`DELETE` without a `WHERE` (or
//!   with a trivially true one such as `WHERE true` or `WHERE 1 = 1`), `COPY` to or from
//!   a program or a server file, `DO` blocks (anonymous code can do anything), `LOAD`
//!   (native code in the server), functions in untrusted languages or C, turning
//!   `standard_conforming_strings` off (it changes how the server splits the text, see
//!   below) and the dangerous functions in [`SENSITIVE_FUNCTIONS`] anywhere in the
//!   statement (server files, `dblink`, functions that run SQL text we cannot see).
//!
//! `set_config(name, value, local)` is judged like `SET name = value`, which is what it
//! does: pg_dump starts with `SELECT pg_catalog.set_config('search_path', '', false)`,
//! and that stays `read`.
//!
//! # Known gaps
//!
//! - Functions are judged by name only. A user-defined function may do anything its
//!   owner may; calling one counts as `read`. Creating one is `ddl` (its body is scanned
//!   for the names of sensitive functions, which catches the obvious, not `EXECUTE`d
//!   strings built at run time), so `ddl` together with `read` is close to everything
//!   the database user may do.
//! - `PREPARE` is judged by the statement it prepares; `EXECUTE` is `read`, trusting that
//!   the statement was judged when it was prepared on this connection.
//! - sqlparser does not know every PostgreSQL statement. Statements it cannot parse are
//!   errors, except a few without expressions that are recognised by their leading
//!   keywords (see [`Flag::KeywordOnly`]): `CHECKPOINT`, `VACUUM`, `CLUSTER`, `REINDEX`,
//!   `ALTER SYSTEM`, `DO`, `DROP ...`, `GRANT`, `REVOKE`, `ALTER DEFAULT PRIVILEGES`,
//!   `REASSIGN OWNED`, `REFRESH MATERIALIZED VIEW`, `CREATE`/`ALTER SEQUENCE`.
//!   Unsupported forms such as `TABLE t`, `COPY ... WITH (FREEZE ON)` (pgbench -i on
//!   PostgreSQL 14+), `FROM ONLY schema.t`, `ROWS FROM (...)`, `WHERE CURRENT OF`, `ALTER
//!   VIEW ... RENAME`, `CREATE TABLESPACE` or `ALTER DATABASE` are unparsed.
//! - Classification assumes `standard_conforming_strings = on` (the default since
//!   PostgreSQL 9.1): with it off, `\'` inside `'...'` no longer ends the string and the
//!   server would split the text differently than this parser. Turning it off through
//!   `SET`/`set_config` is dangerous; the proxy should also watch the server's
//!   `ParameterStatus` for it (a role or database default can turn it off too).
//! - Table names are as written: unqualified names are not resolved through the
//!   `search_path`, and a CTE name hides a table of the same name in the whole query
//!   that defines it (including in CTEs defined before it).
//! - Statements longer than [`MAX_SQL_BYTES`] or nested deeper than the parser's limit or
//!   [`MAX_NESTING_COST`] are errors (unparsed), even when PostgreSQL would accept them.

mod cache;
mod classify;
mod fallback;
mod functions;
mod guard;
mod mask;
pub mod mysql;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};
use sqlparser::{
    dialect::PostgreSqlDialect,
    parser::Parser,
    tokenizer::{Token, TokenWithSpan, Tokenizer},
};

pub use cache::classify_and_mask;
pub use functions::{SENSITIVE_FUNCTIONS, SESSION_PARAMETERS};
pub use guard::{MAX_NESTING_COST, MAX_SQL_BYTES};
pub use mask::literals_masked;

use crate::policy::Operation;

/// sqlparser's own recursion limit (statements, expressions, parentheses). Its default;
/// named here because the stack safety of this module depends on it.
const PARSER_RECURSION_LIMIT: usize = 50;

/// One SQL statement, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classified {
    /// The single most sensitive class of the statement.
    pub operation: Operation,
    /// What the statement is, in upper case: `SELECT`, `INSERT`, `CREATE TABLE`, `COPY`,
    /// `EXPLAIN`, `DROP TABLE`, ... (`UNPARSED` when it could not be classified).
    pub kind: String,
    /// Tables (and views) the statement reads, in order of appearance, without
    /// duplicates. Names are as written (schema-qualified only if written so); unquoted
    /// parts are lower-cased, quoted parts keep their case and are shown in double quotes
    /// when they need them (`"MySchema".users`).
    pub tables_read: Vec<String>,
    /// Tables whose rows or definition the statement changes, named like `tables_read`.
    pub tables_written: Vec<String>,
    /// Every function called anywhere in the statement (subqueries, CTEs, defaults, `FROM`
    /// clauses), named like tables, without duplicates.
    pub functions: Vec<String>,
    /// Why the statement is sensitive, without duplicates.
    pub flags: Vec<Flag>,
}

impl Classified {
    /// The entry for text that could not be classified.
    pub fn unparsed() -> Self {
        Self {
            operation: Operation::Unparsed,
            kind: "UNPARSED".to_owned(),
            tables_read: Vec::new(),
            tables_written: Vec::new(),
            functions: Vec::new(),
            flags: Vec::new(),
        }
    }
}

/// A reason a statement is sensitive. Shown in records and decisions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flag {
    /// `UPDATE` or `DELETE` without a `WHERE`, or with a trivially true one.
    NoWhere,
    /// `TRUNCATE`.
    Truncate,
    /// `DROP` of any object, or `ALTER TABLE ... DROP COLUMN`.
    Drop,
    /// `COPY ... TO PROGRAM` or `FROM PROGRAM`: runs a shell command on the server.
    CopyProgram,
    /// `COPY` to or from a file on the server.
    CopyFile,
    /// `SELECT ... INTO`: creates and fills a table.
    SelectInto,
    /// A `WITH` query containing `INSERT`, `UPDATE`, `DELETE` or `MERGE`.
    ModifyingCte,
    /// `EXPLAIN ANALYZE`: the explained statement runs.
    ExplainAnalyze,
    /// `SELECT ... FOR UPDATE/SHARE` or `LOCK TABLE`.
    Lock,
    /// `SET ROLE`, `SET SESSION AUTHORIZATION` or `set_config('role', ...)`.
    RoleChange,
    /// `SET` or `set_config` of a parameter that is not plain session state.
    ServerParameter(String),
    /// `standard_conforming_strings` turned off: the server would lex later statements
    /// differently than this classifier.
    ConformingStringsOff,
    /// A `DO` block: anonymous code.
    AnonymousCode,
    /// `LOAD`: loads a shared library into the server.
    LoadLibrary,
    /// A function or procedure created in C, `internal` or an untrusted language.
    UntrustedLanguage(String),
    /// A call to (or, in a function body, the name of) a dangerous function.
    DangerousFunction(String),
    /// A call to an administrative function.
    AdminFunction(String),
    /// A call to a function that changes data (`nextval`, `setval`, large objects).
    WriteFunction(String),
    /// Recognised by its leading keywords only: sqlparser cannot parse the statement,
    /// so no tables or functions were extracted.
    KeywordOnly,
    /// A statement sqlparser parsed but this classifier does not know.
    Unclassified,
    /// Reads or writes a file on the database server, or has the client send one (MySQL
    /// `SELECT ... INTO OUTFILE`, `LOAD DATA [LOCAL]`, `DATA DIRECTORY`).
    ServerFile,
    /// Names a table or column of MySQL's `mysql` schema (accounts, password hashes).
    SystemSchema(String),
    /// A replication or binary log statement (MySQL `CHANGE MASTER`, `BINLOG`, ...).
    Replication,
    /// Creates code stored in the server that runs later (procedures, functions,
    /// triggers, events).
    StoredCode,
    /// MySQL `HANDLER`: direct row access below the SQL layer.
    Handler,
    /// SQL text built at run time (`PREPARE ... FROM @var`), which cannot be judged.
    DynamicSql,
    /// A storage engine that reaches server files or other servers (MariaDB `CONNECT`,
    /// `FEDERATED`, `SPIDER`).
    ForeignEngine(String),
}

impl fmt::Display for Flag {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoWhere => formatter.write_str("no-where"),
            Self::Truncate => formatter.write_str("truncate"),
            Self::Drop => formatter.write_str("drop"),
            Self::CopyProgram => formatter.write_str("copy-program"),
            Self::CopyFile => formatter.write_str("copy-file"),
            Self::SelectInto => formatter.write_str("select-into"),
            Self::ModifyingCte => formatter.write_str("modifying-cte"),
            Self::ExplainAnalyze => formatter.write_str("explain-analyze"),
            Self::Lock => formatter.write_str("lock"),
            Self::RoleChange => formatter.write_str("role-change"),
            Self::ServerParameter(name) => write!(formatter, "server-parameter:{name}"),
            Self::ConformingStringsOff => formatter.write_str("conforming-strings-off"),
            Self::AnonymousCode => formatter.write_str("anonymous-code"),
            Self::LoadLibrary => formatter.write_str("load-library"),
            Self::UntrustedLanguage(name) => write!(formatter, "untrusted-language:{name}"),
            Self::DangerousFunction(name) => write!(formatter, "dangerous-function:{name}"),
            Self::AdminFunction(name) => write!(formatter, "admin-function:{name}"),
            Self::WriteFunction(name) => write!(formatter, "write-function:{name}"),
            Self::KeywordOnly => formatter.write_str("keyword-only"),
            Self::Unclassified => formatter.write_str("unclassified"),
            Self::ServerFile => formatter.write_str("server-file"),
            Self::SystemSchema(name) => write!(formatter, "system-schema:{name}"),
            Self::Replication => formatter.write_str("replication"),
            Self::StoredCode => formatter.write_str("stored-code"),
            Self::Handler => formatter.write_str("handler"),
            Self::DynamicSql => formatter.write_str("dynamic-sql"),
            Self::ForeignEngine(name) => write!(formatter, "foreign-engine:{name}"),
        }
    }
}

/// Why SQL text could not be classified. The caller treats it as [`Operation::Unparsed`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// Longer than [`MAX_SQL_BYTES`].
    #[error("SQL text of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { len: usize, max: usize },
    /// Nested deeper than [`MAX_NESTING_COST`] allows.
    #[error("SQL text is nested too deeply to classify safely")]
    TooComplex,
    /// The tokenizer rejected the text (an unterminated string, say).
    #[error("SQL text does not tokenize: {0}")]
    Tokenize(String),
    /// The parser rejected the text, or hit its recursion limit.
    #[error("SQL text does not parse: {0}")]
    Parse(String),
}

/// Classifies every statement in `sql`, in order. Empty text (or only comments and
/// semicolons) gives an empty list.
pub fn classify(sql: &str) -> Result<Vec<Classified>, SqlError> {
    let tokens = tokenize(sql)?;
    guard::check_nesting(&tokens)?;
    match parse(tokens.clone()) {
        Ok(statements) => Ok(statements.iter().map(classify::statement).collect()),
        // Whole-text parse failed: retry statement by statement so that the few
        // statements sqlparser lacks can still be recognised by their keywords.
        Err(error) => split_statements(&tokens)
            .into_iter()
            .map(|piece| match parse(piece.to_vec()) {
                Ok(statements) => Ok(statements.iter().map(classify::statement).collect()),
                Err(_) => fallback::by_keywords(piece)
                    .map(|classified| vec![classified])
                    .ok_or_else(|| error.clone()),
            })
            .collect::<Result<Vec<Vec<_>>, _>>()
            .map(|pieces| pieces.into_iter().flatten().collect()),
    }
}

/// Like [`classify`], but text that cannot be classified gives a single
/// [`Classified::unparsed`] entry, so the policy fails closed.
pub fn classify_or_unparsed(sql: &str) -> Vec<Classified> {
    classify(sql).unwrap_or_else(|_| vec![Classified::unparsed()])
}

/// The SQL dialects the proxies speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    Postgres,
    Mysql,
}

impl Dialect {
    /// The dialect of a resource's protocol, if it speaks SQL.
    pub fn of(protocol: crate::policy::Protocol) -> Option<Self> {
        match protocol {
            crate::policy::Protocol::Postgres => Some(Self::Postgres),
            crate::policy::Protocol::Mysql => Some(Self::Mysql),
            _ => None,
        }
    }
}

/// Classifies `sql` as the proxy of `dialect` does on a fresh connection, failing closed
/// like [`classify_or_unparsed`]. For MySQL that is the default `sql_mode` and an unknown
/// server version, so version-dependent comments are read both ways (see
/// [`mysql::classify_mysql`]).
pub fn classify_dialect(dialect: Dialect, sql: &str) -> Vec<Classified> {
    match dialect {
        Dialect::Postgres => classify_or_unparsed(sql),
        Dialect::Mysql => mysql::classify_mysql(sql.as_bytes(), &mysql::MysqlContext::default())
            .into_iter()
            .map(|statement| statement.classified)
            .collect(),
    }
}

fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, SqlError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(SqlError::TooLong {
            len: sql.len(),
            max: MAX_SQL_BYTES,
        });
    }
    Tokenizer::new(&PostgreSqlDialect {}, sql)
        .tokenize_with_location()
        .map_err(|error| SqlError::Tokenize(error.message))
}

fn parse(tokens: Vec<TokenWithSpan>) -> Result<Vec<sqlparser::ast::Statement>, SqlError> {
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|error| SqlError::Parse(without_found_token(&error.to_string())))
}

/// Drops the offending token from a parser message ("Expected: X, found: 'secret' at
/// Line: 1, Column: 8"): it may be a literal, and errors end up in logs.
fn without_found_token(message: &str) -> String {
    match (message.find(", found: "), message.rfind(" at Line: ")) {
        (Some(found), Some(at)) if found < at => {
            format!(
                "{}{}",
                message.get(..found).unwrap_or_default(),
                message.get(at..).unwrap_or_default()
            )
        }
        (Some(found), _) => message.get(..found).unwrap_or_default().to_owned(),
        _ => message.to_owned(),
    }
}

/// Splits tokens at semicolons into statements that contain more than whitespace.
fn split_statements(tokens: &[TokenWithSpan]) -> Vec<&[TokenWithSpan]> {
    tokens
        .split(|token| token.token == Token::SemiColon)
        .filter(|piece| {
            piece
                .iter()
                .any(|token| !matches!(token.token, Token::Whitespace(_) | Token::EOF))
        })
        .collect()
}
