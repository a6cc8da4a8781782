//! MySQL and MariaDB statement classification.
//!
//! The MySQL proxy asks the policy about every statement an agent sends, in the same
//! operation classes as PostgreSQL, so this module turns MySQL text into the shared
//! [`Classified`] (one per statement) plus what the proxy must track across statements:
//! prepared statement names, `sql_mode` and character set changes, the current database
//! and `KILL` targets.
//!
//! The server decides where literals, comments and statements end, and that depends on
//! the session: `NO_BACKSLASH_ESCAPES` turns `\'` into a backslash and the end of the
//! string, `ANSI_QUOTES` turns `"..."` into an identifier, versioned comments
//! (`/*!NNNNN ...*/`, MariaDB's `/*M!NNNNNN ...*/`) are executed or skipped depending on
//! the server and its version, and some character sets have multi-byte characters ending
//! in the byte `\`. So the text is first split by an exact lexer ([`lexer`]) under the
//! session's [`MysqlContext`]; versioned comments the server executes are inlined (never
//! dropped), and each statement's tokens are then judged by their leading keywords for
//! the statements sqlparser does not know, or rendered canonically and parsed with
//! sqlparser's MySQL dialect. Whatever cannot be split or judged with certainty is
//! [`Operation::Unparsed`](crate::policy::Operation::Unparsed), which the policy denies unless a rule allows it.
//!
//! A statement that changes `sql_mode`, the character set or the database changes how the
//! server reads the statements after it in the same text (it parses them one at a time),
//! so the rest of the text is lexed under the new settings when they are literals, and is
//! one unparsed statement otherwise.
//!
//! # Class decisions
//!
//! Classes are those of [`crate::sql`], most sensitive first; MySQL specifics:
//!
//! - **read**: `SELECT` (including `INTO @var`), `SHOW` (except below), `DESCRIBE`,
//!   `EXPLAIN` of a read, `HELP`, `CHECKSUM TABLE`, `DO` of read expressions, and
//!   session control: `BEGIN`/`START TRANSACTION`/`COMMIT`/`ROLLBACK`/`SAVEPOINT`/
//!   `RELEASE`, `XA`, `USE`, `UNLOCK TABLES`, `SET NAMES`/`CHARACTER SET`, `SET [SESSION]
//!   TRANSACTION`, `PREPARE` of a read, `EXECUTE` (the class remembered for the name, see
//!   [`PreparedNames`]), `DEALLOCATE`/`DROP PREPARE`, and `SET` of user variables and of
//!   the session variables in [`SESSION_VARIABLES`] (what connectors and `mariadb-dump`
//!   send: `autocommit`, `sql_mode`, `character_set_*`, `time_zone`, `foreign_key_checks`,
//!   `unique_checks`, ...). Expressions on the right of `SET` and in `DO` are judged
//!   like a `SELECT` of them.
//! - **write**: `INSERT`, `REPLACE`, `UPDATE`/`DELETE` with a `WHERE` (single- and
//!   multi-table), `CALL`, `LOCK TABLES`, `SELECT ... FOR UPDATE`/`LOCK IN SHARE MODE`,
//!   sequence functions (`NEXTVAL`, `SETVAL`).
//! - **ddl**: `CREATE`/`ALTER`/`RENAME` of tables, views, indexes, databases and
//!   sequences; `ALTER FUNCTION`/`PROCEDURE`/`EVENT` characteristics.
//! - **dcl**: `GRANT`, `REVOKE`, `CREATE`/`ALTER`/`RENAME USER`, `CREATE ROLE`, `SET
//!   PASSWORD`, `SET ROLE`, `SET DEFAULT ROLE`.
//! - **admin**: `KILL` of a connection id (the proxy checks it is the agent's own, see
//!   [`MysqlStatement::kill`]), `FLUSH`, `OPTIMIZE`/`ANALYZE`/`CHECK`/`REPAIR TABLE`,
//!   `CACHE INDEX`/`LOAD INDEX`, `RESET QUERY CACHE`, `CREATE`/`ALTER SERVER`,
//!   tablespaces, `SET` of any session variable not listed (`sql_log_bin`, `sql_log_off`,
//!   `gtid_*`, `pseudo_*`: they hide statements from logs or act as another connection).
//! - **dangerous**: every `DROP` (tables, databases, users, roles, functions, ...),
//!   `TRUNCATE`, `ALTER TABLE ... DROP/TRUNCATE/DISCARD`, `UPDATE`/`DELETE` without a
//!   `WHERE`; server files (`SELECT ... INTO OUTFILE/DUMPFILE`, `LOAD_FILE()`, `LOAD DATA
//!   [LOCAL]`, `LOAD XML`, `DATA`/`INDEX DIRECTORY`, tables with the `CONNECT`,
//!   `FEDERATED` or `SPIDER` engines); server code (`INSTALL`/`UNINSTALL PLUGIN`/`SONAME`,
//!   `CREATE FUNCTION ... SONAME`); server settings (`SET GLOBAL`, `SET @@global.`, `SET
//!   PERSIST`, `RESET PERSIST`); `SHUTDOWN`/`RESTART`; `KILL USER` and `KILL` of a
//!   computed id; replication and binary logs (`CHANGE MASTER`/`REPLICATION SOURCE`,
//!   `START`/`STOP SLAVE`/`REPLICA`, `RESET MASTER`/`SLAVE`/`REPLICA`, `PURGE BINARY
//!   LOGS`, `BINLOG`, `SHOW BINLOG`/`RELAYLOG EVENTS`); `HANDLER`; any table or column
//!   of the `mysql` schema (account hashes, `USE mysql`, `SHOW CREATE USER`); creating
//!   stored code whose body is a single statement (`CREATE PROCEDURE`/`FUNCTION`/
//!   `TRIGGER`/`EVENT`: it runs later with its definer's rights, unseen by the proxy);
//!   `ANALYZE`/`EXPLAIN ANALYZE` run the statement, so they take its class.
//! - **unparsed**: anything else, including stored code with a `BEGIN ... END` body and
//!   MariaDB's compound statements (`BEGIN NOT ATOMIC`, `IF`, `WHILE`, ...), dynamic SQL
//!   (`PREPARE ... FROM @var`, `EXECUTE IMMEDIATE` of an expression), text the lexer cannot
//!   split with certainty (see [`lexer`]), invalid UTF-8, non-ASCII text in a character set
//!   whose multi-byte characters may end in `\` (big5, cp932, gbk, gb18030, sjis), and
//!   everything under `sql_mode` `ORACLE` or `MSSQL`, and text longer than
//!   [`MAX_MYSQL_SQL_BYTES`].
//!
//! # Known gaps
//!
//! - `EXPLAIN` of a statement takes the statement's class (the server does not run it,
//!   but this keeps `EXPLAIN` from being a way around the parser).
//! - `UPDATE`/`DELETE ... LIMIT n` without a `WHERE` is dangerous, like an unbounded one.
//! - Functions are judged by name; a stored function may do anything its definer may.
//! - Table names are as written; unqualified names are not resolved through the current
//!   database, except that the `mysql` schema is recognised through [`MysqlContext::schema`].
//! - `performance_schema` statement history and `SHOW PROCESSLIST` can show other
//!   sessions' statements with their values; they are `read` like any other table.
//! - Text in a character set other than UTF-8 must be valid UTF-8 to be classified
//!   (plain ASCII always is); anything else is unparsed.

mod cache;
mod classify;
mod lexer;
mod statement;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use statement::SESSION_VARIABLES;

use super::Classified;
use lexer::{Kind, Lexer, Token, Versioned};

/// The `sql_mode` flags that change where literals end.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlSqlMode {
    /// `\` is an ordinary character in strings.
    pub no_backslash_escapes: bool,
    /// `"..."` is an identifier, not a string.
    pub ansi_quotes: bool,
    /// A mode this classifier does not lex (MariaDB's `ORACLE` or `MSSQL`): every
    /// statement is unparsed while it is set.
    pub unsupported: Option<String>,
}

/// Reads an `sql_mode` value (`"STRICT_TRANS_TABLES,ANSI_QUOTES"`, any case, as session
/// tracking or `SELECT @@sql_mode` report it, or as written in `SET sql_mode = '...'`),
/// expanding the combination modes. Names it does not know do not change lexing.
pub fn parse_sql_mode(value: &str) -> MysqlSqlMode {
    let mut mode = MysqlSqlMode::default();
    for name in value.split(',') {
        match name.trim().to_ascii_uppercase().as_str() {
            "NO_BACKSLASH_ESCAPES" => mode.no_backslash_escapes = true,
            "ANSI_QUOTES" | "ANSI" | "DB2" | "MAXDB" | "POSTGRESQL" => mode.ansi_quotes = true,
            name @ ("ORACLE" | "MSSQL") => {
                mode.ansi_quotes = true;
                mode.unsupported = Some(name.to_owned());
            }
            _ => {}
        }
    }
    mode
}

/// The server, as its greeting names it: which versioned comments it executes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFlavor {
    /// MariaDB, with its version as a number (`101119` for 10.11.19).
    MariaDb(u32),
    /// MySQL, with its version as a number (`80036` for 8.0.36).
    MySql(u32),
}

impl ServerFlavor {
    /// From the greeting's server version: `5.5.5-10.11.19-MariaDB-0+deb12u1`,
    /// `10.11.19-MariaDB`, `8.0.36`. `None` when it cannot be read.
    pub fn from_greeting(version: &str) -> Option<Self> {
        let mariadb = version.contains("MariaDB");
        // MariaDB prefixes its real version with `5.5.5-` for old clients.
        let version = match version.strip_prefix("5.5.5-") {
            Some(rest) if mariadb => rest,
            _ => version,
        };
        let mut parts = version
            .split(|c: char| !c.is_ascii_digit())
            .take(3)
            .map(|part| part.parse::<u32>().ok());
        let (major, minor, patch) = (parts.next()??, parts.next()??, parts.next()??);
        if minor > 99 || patch > 99 {
            return None;
        }
        let number = major * 10_000 + minor * 100 + patch;
        Some(if mariadb {
            Self::MariaDb(number)
        } else {
            Self::MySql(number)
        })
    }

    /// Whether this server executes the versioned comment, or `None` when the comment
    /// is ambiguous to it (a six-digit version for MySQL, which reads five).
    fn executes(self, comment: Versioned) -> Option<bool> {
        match (self, comment.version) {
            (Self::MariaDb(_), None) => Some(true),
            (Self::MariaDb(server), Some((version, _))) => Some(
                version <= server && (!(50700..=99999).contains(&version) || comment.mariadb_only),
            ),
            (Self::MySql(_), _) if comment.mariadb_only => Some(false),
            (Self::MySql(_), None) => Some(true),
            (Self::MySql(server), Some((version, 5))) => Some(version <= server),
            (Self::MySql(_), Some(_)) => None,
        }
    }
}

/// What the classifier must know about the connection. The proxy keeps one per session
/// and updates it from session tracking and from [`MysqlStatement::session`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlContext {
    pub sql_mode: MysqlSqlMode,
    /// `character_set_client`, as the server names it (`utf8mb4`, `latin1`, `gbk`).
    pub charset: String,
    /// The server; `None` classifies every version-dependent comment both ways and keeps
    /// the most sensitive result.
    pub server: Option<ServerFlavor>,
    /// The current database, if known.
    pub schema: Option<String>,
}

impl Default for MysqlContext {
    fn default() -> Self {
        Self {
            sql_mode: MysqlSqlMode::default(),
            charset: "utf8mb4".to_owned(),
            server: None,
            schema: None,
        }
    }
}

/// The longest text classified, in bytes; longer text is unparsed. Twice MariaDB's
/// default `max_allowed_packet` (16 MiB): dumps' extended `INSERT`s and large values fit.
/// The lexer is linear and keeps no recursion, and [`crate::sql::MAX_NESTING_COST`] still
/// bounds the parser's depth, so only time and memory grow with it (measured: 16 MiB in
/// under 3 s in a debug build).
pub const MAX_MYSQL_SQL_BYTES: usize = 32 << 20;

/// Character sets with multi-byte characters whose trailing byte may be `\` (0x5C): the
/// server reads such a byte as part of the character, a UTF-8 reading as an escape.
const BACKSLASH_TRAILING_CHARSETS: &[&str] = &["big5", "cp932", "gbk", "gb18030", "sjis"];

/// A change to the session that changes how later statements are read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionChange {
    /// `SET [SESSION] sql_mode = ...`: the new mode, or `None` when it is computed
    /// (`CONCAT(@@sql_mode, ...)`, `DEFAULT`, `@saved`): read it back from the server.
    SqlMode(Option<MysqlSqlMode>),
    /// `SET NAMES`, `SET CHARACTER SET` or `SET character_set_client`: the new client
    /// character set, or `None` when computed or `DEFAULT`.
    Charset(Option<String>),
    /// `USE db`: the new current database.
    Schema(String),
}

/// One statement of MySQL text, as the policy and the proxy see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MysqlStatement {
    pub classified: Classified,
    /// The statement's text with every literal replaced by `?` and comments dropped
    /// (versioned comments kept with their contents), for records.
    pub summary: String,
    /// `PREPARE name FROM '...'`: the name (lower case) and the classes of the text.
    pub prepares: Option<(String, Vec<Classified>)>,
    /// `EXECUTE name`: the name (lower case). Its class is the one remembered for the
    /// name; see [`PreparedNames`].
    pub executes: Option<String>,
    /// `DEALLOCATE PREPARE name` or `DROP PREPARE name`: the name (lower case).
    pub deallocates: Option<String>,
    /// Session changes, in order.
    pub session: Vec<SessionChange>,
    /// `KILL [CONNECTION | QUERY] id`: the connection id and whether only its query is
    /// killed. The proxy must refuse ids that are not its agent's own connections.
    pub kill: Option<(u64, bool)>,
}

impl MysqlStatement {
    fn new(classified: Classified, summary: String) -> Self {
        Self {
            classified,
            summary,
            prepares: None,
            executes: None,
            deallocates: None,
            session: Vec::new(),
            kill: None,
        }
    }

    fn unparsed(summary: String) -> Self {
        Self::new(Classified::unparsed(), summary)
    }
}

/// The classes remembered per prepared statement name on one connection.
#[derive(Clone, Debug, Default)]
pub struct PreparedNames {
    names: HashMap<String, Vec<Classified>>,
}

impl PreparedNames {
    /// Gives an `EXECUTE` the class remembered for its name (the most sensitive of the
    /// prepared text's statements, its kind and tables), or unparsed for a name never
    /// prepared here. Other statements are left alone.
    pub fn resolve(&self, statement: &mut MysqlStatement) {
        let Some(name) = &statement.executes else {
            return;
        };
        let mut resolved = match self.names.get(name) {
            Some(prepared) => merge(prepared.clone()),
            None => Classified::unparsed(),
        };
        resolved.kind = format!("EXECUTE {}", resolved.kind);
        resolved.operation =
            classify::most_sensitive(resolved.operation, statement.classified.operation);
        for table in std::mem::take(&mut statement.classified.tables_read) {
            if !resolved.tables_read.contains(&table) {
                resolved.tables_read.push(table);
            }
        }
        statement.classified = resolved;
    }

    /// Resolves every `EXECUTE` in one text's statements, counting the `PREPARE`s and
    /// `DEALLOCATE`s before it in the same text (the server runs them in order), without
    /// remembering anything: call [`Self::record`] for what the server then ran.
    pub fn resolve_all(&self, statements: &mut [MysqlStatement]) {
        let mut scratch = self.clone();
        for statement in statements {
            scratch.resolve(statement);
            scratch.record(statement);
        }
    }

    /// Remembers what a statement the server ran prepared or deallocated.
    pub fn record(&mut self, statement: &MysqlStatement) {
        if let Some((name, classes)) = &statement.prepares {
            self.names.insert(name.clone(), classes.clone());
        }
        if let Some(name) = &statement.deallocates {
            self.names.remove(name);
        }
    }
}

/// One entry for several: the most sensitive class, the first kind, every table,
/// function and flag.
fn merge(mut statements: Vec<Classified>) -> Classified {
    if statements.is_empty() {
        return Classified::unparsed();
    }
    let mut merged = statements.remove(0);
    for statement in statements {
        merged.operation = classify::most_sensitive(merged.operation, statement.operation);
        extend_unique(&mut merged.tables_read, statement.tables_read);
        extend_unique(&mut merged.tables_written, statement.tables_written);
        extend_unique(&mut merged.functions, statement.functions);
        extend_unique(&mut merged.flags, statement.flags);
    }
    merged
}

fn extend_unique<T: PartialEq>(into: &mut Vec<T>, items: Vec<T>) {
    for item in items {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// The text as the server reads it, or `None` when that is uncertain: invalid UTF-8, or
/// non-ASCII bytes in a character set whose characters may end in `\`.
fn decode<'a>(text: &'a [u8], charset: &str) -> Option<&'a str> {
    let charset = charset.to_ascii_lowercase();
    if BACKSLASH_TRAILING_CHARSETS.contains(&charset.as_str()) && !text.is_ascii() {
        return None;
    }
    std::str::from_utf8(text).ok()
}

/// Classifies every statement in `text`, in order, as the server would split and read
/// it under `context`. Text with only comments and `;` gives an empty list; text that
/// cannot be split with certainty gives unparsed entries (never an empty list).
pub fn classify_mysql(text: &[u8], context: &MysqlContext) -> Vec<MysqlStatement> {
    let Some(text) = decode(text, &context.charset) else {
        return vec![MysqlStatement::unparsed(unparsable(text.len()))];
    };
    if text.len() > MAX_MYSQL_SQL_BYTES {
        return vec![MysqlStatement::unparsed(unparsable(text.len()))];
    }
    let mut context = context.clone();
    let mut statements = Vec::new();
    let mut pos = 0;
    while pos < text.len() {
        if let Some(mode) = &context.sql_mode.unsupported {
            let mut statement = MysqlStatement::unparsed(unparsable(text.len() - pos));
            statement.classified.kind = format!("UNPARSED (sql_mode {mode})");
            statements.push(statement);
            break;
        }
        let (tokens, next) = match Lexer::new(text, pos, &context.sql_mode).statement() {
            Ok(lexed) => lexed,
            Err(_) => {
                statements.push(MysqlStatement::unparsed(unparsable(text.len() - pos)));
                break;
            }
        };
        pos = next;
        if !tokens.iter().any(significant) {
            continue;
        }
        let Some(statement) = statement::classify(text, &tokens, &context) else {
            continue;
        };
        let mut certain = true;
        for change in &statement.session {
            match change {
                SessionChange::SqlMode(Some(mode)) => context.sql_mode = mode.clone(),
                SessionChange::Charset(Some(charset)) => {
                    context.charset = charset.clone();
                    if decode(text.as_bytes().get(pos..).unwrap_or_default(), charset).is_none() {
                        certain = false;
                    }
                }
                SessionChange::Schema(schema) => context.schema = Some(schema.clone()),
                SessionChange::SqlMode(None) | SessionChange::Charset(None) => certain = false,
            }
        }
        statements.push(statement);
        if !certain {
            let rest = text.get(pos..).unwrap_or_default();
            let only_space = Lexer::new(text, pos, &context.sql_mode)
                .statement()
                .is_ok_and(|(tokens, next)| next >= text.len() && !tokens.iter().any(significant));
            if !only_space {
                let mut statement = MysqlStatement::unparsed(unparsable(rest.len()));
                statement.classified.kind = "UNPARSED (after a session change)".to_owned();
                statements.push(statement);
            }
            break;
        }
    }
    statements
}

/// A token the server acts on (not whitespace, comments or `;`).
fn significant(token: &Token) -> bool {
    !matches!(
        token.kind,
        Kind::Space | Kind::Semicolon | Kind::VersionOpen(_) | Kind::VersionClose
    )
}

fn unparsable(len: usize) -> String {
    format!("<unparsable statement: {len} bytes>")
}

/// `text` with every literal replaced by `?` and comments dropped (versioned comments
/// kept, with their contents masked too), for records. Text that cannot be lexed gives
/// `<unparsable statement: N bytes>`, never the text itself.
pub fn literals_masked_mysql(text: &[u8], context: &MysqlContext) -> String {
    classify_mysql(text, context)
        .into_iter()
        .map(|statement| statement.summary)
        .collect::<Vec<_>>()
        .join("; ")
}

/// The summary of one statement's tokens: literals as `?`, comments as one space.
fn summary(tokens: &[Token], text: &str) -> String {
    let mut out = String::new();
    let mut pending_space = false;
    for token in tokens {
        let piece = match &token.kind {
            Kind::Space => {
                pending_space = !out.is_empty();
                continue;
            }
            Kind::Semicolon => continue,
            Kind::Str | Kind::HexStr | Kind::BitStr | Kind::Number => "?",
            Kind::VersionOpen(_)
            | Kind::VersionClose
            | Kind::Word
            | Kind::Ident
            | Kind::Variable
            | Kind::Punct => text.get(token.start..token.end).unwrap_or_default(),
        };
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push_str(piece);
    }
    out
}
