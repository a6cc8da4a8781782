//! Judging one statement's tokens: versioned comments resolved, MySQL statements that
//! sqlparser does not know recognised by their keywords, the rest parsed.

use sqlparser::{dialect::MySqlDialect, parser::Parser, tokenizer::Tokenizer};

use super::{
    MysqlContext, MysqlStatement, SessionChange, cache, classify, classify_mysql,
    lexer::{Kind, Token},
    merge, parse_sql_mode, summary,
};
use crate::{
    policy::Operation,
    sql::{Classified, Flag, guard},
};

/// sqlparser's recursion limit, as for PostgreSQL.
const PARSER_RECURSION_LIMIT: usize = 50;

/// The most version-dependent comments one statement may hold when the server is not
/// known: each doubles the readings classified.
const MAX_UNCERTAIN_COMMENTS: u32 = 4;

/// Session variables that `SET` (without `GLOBAL`/`PERSIST`) may change as `read`-class
/// session control: they shape this connection's output, limits and checks and nothing
/// another session sees; connectors and `mariadb-dump` set them unprompted. Any other
/// variable is `admin` (`sql_log_bin` and `sql_log_off` hide statements from the logs,
/// `pseudo_thread_id` and `gtid_*` act as another connection).
pub const SESSION_VARIABLES: &[&str] = &[
    "autocommit",
    "big_tables",
    "character_set_client",
    "character_set_connection",
    "character_set_database",
    "character_set_results",
    "character_set_server",
    "check_constraint_checks",
    "collation_connection",
    "collation_database",
    "collation_server",
    "completion_type",
    "default_storage_engine",
    "default_tmp_storage_engine",
    "default_week_format",
    "div_precision_increment",
    "explicit_defaults_for_timestamp",
    "foreign_key_checks",
    "group_concat_max_len",
    "innodb_lock_wait_timeout",
    "innodb_strict_mode",
    "insert_id",
    "interactive_timeout",
    "join_buffer_size",
    "last_insert_id",
    "lc_messages",
    "lc_time_names",
    "lock_wait_timeout",
    "long_query_time",
    "max_error_count",
    "max_execution_time",
    "max_heap_table_size",
    "max_join_size",
    "max_sort_length",
    "max_statement_time",
    "note_verbosity",
    "net_read_timeout",
    "net_write_timeout",
    "optimizer_search_depth",
    "optimizer_switch",
    "profiling",
    "query_cache_type",
    "read_buffer_size",
    "session_track_schema",
    "session_track_state_change",
    "session_track_system_variables",
    "session_track_transaction_info",
    "sort_buffer_size",
    "sql_auto_is_null",
    "sql_big_selects",
    "sql_buffer_result",
    "sql_if_exists",
    "sql_mode",
    "sql_notes",
    "sql_quote_show_create",
    "sql_safe_updates",
    "sql_select_limit",
    "sql_warnings",
    "storage_engine",
    "time_zone",
    "timestamp",
    "tmp_table_size",
    "transaction_isolation",
    "transaction_read_only",
    "tx_isolation",
    "tx_read_only",
    "unique_checks",
    "wait_timeout",
];

/// Character set names, as introducers (`_utf8mb4'x'`) spell them.
const CHARSETS: &[&str] = &[
    "armscii8", "ascii", "big5", "binary", "cp1250", "cp1251", "cp1256", "cp1257", "cp850",
    "cp852", "cp866", "cp932", "dec8", "eucjpms", "euckr", "gb18030", "gb2312", "gbk", "geostd8",
    "greek", "hebrew", "hp8", "keybcs2", "koi8r", "koi8u", "latin1", "latin2", "latin5", "latin7",
    "macce", "macroman", "sjis", "swe7", "tis620", "ucs2", "ujis", "utf16", "utf16le", "utf32",
    "utf8", "utf8mb3", "utf8mb4",
];

/// Engines whose tables read server files or reach other servers.
const FOREIGN_ENGINES: &[&str] = &["connect", "federated", "federatedx", "spider"];

/// Classifies one statement's tokens (as the lexer gave them, `;` included).
/// `None` when the server sees nothing to run (everything is in skipped comments).
pub(super) fn classify(
    text: &str,
    tokens: &[Token],
    context: &MysqlContext,
) -> Option<MysqlStatement> {
    let text_summary = summary(tokens, text);
    let mut readings = match readings(tokens, context) {
        Some(readings) => readings,
        None => return Some(MysqlStatement::unparsed(text_summary)),
    };
    readings.retain(|reading| !reading.is_empty());
    if readings.is_empty() {
        return None;
    }
    let mut results: Vec<MysqlStatement> = readings
        .iter()
        .map(|significant| judge(significant, context))
        .collect();
    let mut result = results.remove(0);
    for other in results {
        if other.prepares != result.prepares
            || other.executes != result.executes
            || other.deallocates != result.deallocates
            || other.kill != result.kill
        {
            return Some(MysqlStatement::unparsed(text_summary));
        }
        if other.session != result.session {
            result.session = vec![SessionChange::SqlMode(None)];
        }
        let first_kind = result.classified.kind.clone();
        result.classified = merge(vec![result.classified, other.classified]);
        result.classified.kind = first_kind;
    }
    // A prepared or immediately executed text shows in records too, without its values.
    result.summary = if result.summary.is_empty() {
        text_summary
    } else {
        format!("{text_summary} [text: {}]", result.summary)
    };
    Some(result)
}

/// The significant tokens of every reading the server may take of the statement's
/// versioned comments, or `None` when a comment is ambiguous to the server or too many
/// are uncertain.
fn readings(tokens: &[Token], context: &MysqlContext) -> Option<Vec<Vec<Token>>> {
    let mut decisions = Vec::new();
    let mut uncertain = 0u32;
    for token in tokens {
        if let Kind::VersionOpen(versioned) = token.kind {
            let decision = match context.server {
                Some(server) => Some(server.executes(versioned)?),
                None if versioned.version.is_none() && !versioned.mariadb_only => Some(true),
                None => {
                    uncertain += 1;
                    None
                }
            };
            decisions.push(decision);
        }
    }
    if uncertain > MAX_UNCERTAIN_COMMENTS {
        return None;
    }
    let mut readings = Vec::new();
    for choice in 0..(1u32 << uncertain) {
        let mut significant = Vec::new();
        let mut comment = 0;
        let mut uncertain_index = 0;
        let mut skipping = false;
        for token in tokens {
            match token.kind {
                Kind::VersionOpen(_) => {
                    let executed = match decisions.get(comment).copied().flatten() {
                        Some(executed) => executed,
                        None => {
                            let executed = choice & (1 << uncertain_index) != 0;
                            uncertain_index += 1;
                            executed
                        }
                    };
                    comment += 1;
                    skipping = !executed;
                }
                Kind::VersionClose => skipping = false,
                Kind::Space | Kind::Semicolon => {}
                _ if skipping => {}
                _ => significant.push(token.clone()),
            }
        }
        readings.push(significant);
    }
    Some(readings)
}

fn keyword(tokens: &[Token], index: usize) -> Option<String> {
    tokens.get(index).and_then(Token::keyword)
}

fn is_at(tokens: &[Token], index: usize, word: &str) -> bool {
    tokens.get(index).is_some_and(|token| token.is(word))
}

fn classified(operation: Operation, kind: &str, flags: Vec<Flag>) -> Classified {
    Classified {
        operation,
        kind: kind.to_owned(),
        tables_read: Vec::new(),
        tables_written: Vec::new(),
        functions: Vec::new(),
        flags,
    }
}

/// A statement recognised by its keywords alone.
fn keyword_only(operation: Operation, kind: &str, mut flags: Vec<Flag>) -> MysqlStatement {
    flags.insert(0, Flag::KeywordOnly);
    MysqlStatement::new(classified(operation, kind, flags), String::new())
}

/// Judges one reading of a statement.
fn judge(tokens: &[Token], context: &MysqlContext) -> MysqlStatement {
    let mut statement = by_keywords(tokens, context);
    let classified = &mut statement.classified;
    for (operation, flag) in scan(tokens) {
        classified.operation = classify::most_sensitive(classified.operation, operation);
        if !classified.flags.contains(&flag) {
            classified.flags.push(flag);
        }
    }
    let in_mysql_schema = context
        .schema
        .as_deref()
        .is_some_and(|schema| schema.eq_ignore_ascii_case("mysql"));
    let system_tables: Vec<String> = classified
        .tables_read
        .iter()
        .chain(&classified.tables_written)
        .filter(|table| {
            let mut parts = table.split('.');
            match (parts.next(), parts.next()) {
                (Some(schema), Some(_)) => schema.trim_matches('`').eq_ignore_ascii_case("mysql"),
                (Some(_), None) => in_mysql_schema,
                _ => false,
            }
        })
        .cloned()
        .collect();
    for table in system_tables {
        classified.operation = classify::most_sensitive(classified.operation, Operation::Dangerous);
        let flag = Flag::SystemSchema(table);
        if !classified.flags.contains(&flag) {
            classified.flags.push(flag);
        }
    }
    statement
}

/// Dangerous things anywhere in a statement, whatever parses: server files, `LOAD_FILE`,
/// the `mysql` schema, foreign engines.
fn scan(tokens: &[Token]) -> Vec<(Operation, Flag)> {
    let mut found = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        let next = tokens.get(index + 1);
        let name = token.name().map(str::to_ascii_lowercase);
        if token.is("INTO") && next.is_some_and(|next| next.is("OUTFILE") || next.is("DUMPFILE")) {
            found.push((Operation::Dangerous, Flag::ServerFile));
        }
        if token.is("INFILE")
            || ((token.is("DATA") || token.is("INDEX"))
                && next.is_some_and(|next| next.is("DIRECTORY")))
        {
            found.push((Operation::Dangerous, Flag::ServerFile));
        }
        if let Some(name) = &name {
            if let Some((function, operation)) =
                classify::MYSQL_FUNCTIONS
                    .iter()
                    .find(|(function, operation)| {
                        function == name && *operation == Operation::Dangerous
                    })
            {
                found.push((*operation, Flag::DangerousFunction((*function).to_owned())));
            }
            if name == "mysql" && next.is_some_and(|next| next.is_punct(".")) {
                let table = tokens
                    .get(index + 2)
                    .and_then(Token::name)
                    .map(classify::quote_if_needed)
                    .unwrap_or_else(|| "*".to_owned());
                found.push((
                    Operation::Dangerous,
                    Flag::SystemSchema(format!("mysql.{table}")),
                ));
            }
        }
        if token.is("ENGINE") {
            let value = match next {
                Some(next) if next.is_punct("=") => tokens.get(index + 2),
                other => other,
            };
            if let Some(engine) =
                value.filter(|value| matches!(value.kind, Kind::Word | Kind::Str | Kind::Ident))
                && FOREIGN_ENGINES.contains(&engine.value.to_ascii_lowercase().as_str())
            {
                found.push((
                    Operation::Dangerous,
                    Flag::ForeignEngine(engine.value.to_ascii_lowercase()),
                ));
            }
        }
    }
    found
}

/// Recognises the statement by its leading keywords, parsing what sqlparser knows.
fn by_keywords(tokens: &[Token], context: &MysqlContext) -> MysqlStatement {
    let first = keyword(tokens, 0).unwrap_or_default();
    let second = keyword(tokens, 1).unwrap_or_default();
    // A label (`name: BEGIN ...`) starts a compound statement.
    if tokens.get(1).is_some_and(|token| token.is_punct(":")) {
        return compound("LABEL");
    }
    match first.as_str() {
        "SELECT" | "WITH" | "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "CALL" | "VALUES"
        | "TABLE" => parsed(tokens, None),
        "" if tokens.first().is_some_and(|token| token.is_punct("(")) => parsed(tokens, None),
        "DO" => {
            let mut select = vec![word("SELECT")];
            select.extend_from_slice(tokens.get(1..).unwrap_or_default());
            parsed(&select, Some("DO"))
        }
        "SET" => set(tokens, context),
        "SHOW" => show(tokens),
        "EXPLAIN" | "DESCRIBE" | "DESC" => explain(tokens, context),
        "ANALYZE" => match second.as_str() {
            "TABLE" | "TABLES" | "NO_WRITE_TO_BINLOG" | "LOCAL" => {
                keyword_only(Operation::Admin, "ANALYZE TABLE", Vec::new())
            }
            _ => runs_inner(tokens, 1, context, "ANALYZE"),
        },
        "BEGIN" => match (second.as_str(), tokens.len()) {
            (_, 1) | ("WORK", 2) => keyword_only(Operation::Read, "BEGIN", Vec::new()),
            _ => compound("BEGIN"),
        },
        "IF" | "WHILE" | "LOOP" | "REPEAT" | "CASE" | "FOR" | "DECLARE" => compound(&first),
        "START" => match second.as_str() {
            "TRANSACTION" => parsed_or(tokens, Operation::Read, "BEGIN"),
            "SLAVE" | "REPLICA" | "ALL" | "GROUP_REPLICATION" => replication("START"),
            _ => unparsed(),
        },
        "STOP" => match second.as_str() {
            "SLAVE" | "REPLICA" | "ALL" | "GROUP_REPLICATION" => replication("STOP"),
            _ => unparsed(),
        },
        "COMMIT" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" => {
            parsed_or(tokens, Operation::Read, &first)
        }
        "XA" => keyword_only(Operation::Read, "XA", Vec::new()),
        "HELP" => keyword_only(Operation::Read, "HELP", Vec::new()),
        "USE" => use_database(tokens),
        "LOCK" => {
            let mut statement = parsed(tokens, None);
            if statement.classified.operation == Operation::Unparsed
                && matches!(second.as_str(), "TABLE" | "TABLES")
            {
                statement = keyword_only(Operation::Write, "LOCK TABLES", vec![Flag::Lock]);
            }
            statement
        }
        "UNLOCK" => keyword_only(Operation::Read, "UNLOCK TABLES", Vec::new()),
        "KILL" => kill(tokens),
        "SHUTDOWN" | "RESTART" => keyword_only(Operation::Dangerous, &first, Vec::new()),
        "FLUSH" => keyword_only(Operation::Admin, "FLUSH", Vec::new()),
        "OPTIMIZE" | "REPAIR" | "CHECK" => {
            keyword_only(Operation::Admin, &format!("{first} TABLE"), Vec::new())
        }
        "CHECKSUM" => {
            let mut statement = keyword_only(Operation::Read, "CHECKSUM TABLE", Vec::new());
            statement.classified.tables_read = names_after(tokens, 2);
            statement
        }
        "CACHE" => keyword_only(Operation::Admin, "CACHE INDEX", Vec::new()),
        "RESET" => match second.as_str() {
            "QUERY" => keyword_only(Operation::Admin, "RESET QUERY CACHE", Vec::new()),
            "PERSIST" => keyword_only(
                Operation::Dangerous,
                "RESET PERSIST",
                vec![Flag::ServerParameter("persist".to_owned())],
            ),
            _ => replication("RESET"),
        },
        "PURGE" | "BINLOG" => replication(&first),
        "CHANGE" => match second.as_str() {
            "MASTER" | "REPLICATION" => replication("CHANGE MASTER"),
            _ => unparsed(),
        },
        "HANDLER" => {
            let mut statement = keyword_only(Operation::Dangerous, "HANDLER", vec![Flag::Handler]);
            statement.classified.tables_read = names_after(tokens, 1);
            statement
        }
        "LOAD" => match second.as_str() {
            "DATA" | "XML" => {
                let mut statement = keyword_only(
                    Operation::Dangerous,
                    &format!("LOAD {second}"),
                    vec![Flag::ServerFile],
                );
                if let Some(into) = tokens.iter().position(|token| token.is("TABLE")) {
                    statement.classified.tables_written = names_after(tokens, into + 1);
                }
                statement
            }
            "INDEX" => keyword_only(Operation::Admin, "LOAD INDEX", Vec::new()),
            _ => unparsed(),
        },
        "INSTALL" | "UNINSTALL" => keyword_only(
            Operation::Dangerous,
            &format!("{first} {second}"),
            vec![Flag::LoadLibrary],
        ),
        "GRANT" | "REVOKE" => keyword_only(Operation::Dcl, &first, Vec::new()),
        "CREATE" => create(tokens, context),
        "ALTER" => alter(tokens, context),
        "DROP" => drop(tokens),
        "RENAME" => match second.as_str() {
            "USER" => keyword_only(Operation::Dcl, "RENAME USER", Vec::new()),
            _ => parsed(tokens, None),
        },
        "TRUNCATE" => {
            let statement = parsed(tokens, None);
            if statement.classified.operation == Operation::Unparsed {
                return keyword_only(Operation::Dangerous, "TRUNCATE", vec![Flag::Truncate]);
            }
            statement
        }
        "PREPARE" => prepare(tokens, context),
        "EXECUTE" => execute(tokens, context),
        "DEALLOCATE" => deallocate(tokens, 2),
        _ => parsed(tokens, None),
    }
}

fn unparsed() -> MysqlStatement {
    MysqlStatement::unparsed(String::new())
}

/// A compound statement (`BEGIN NOT ATOMIC`, `IF`, a label): its end cannot be found
/// without a procedural parser.
fn compound(kind: &str) -> MysqlStatement {
    let mut statement = unparsed();
    statement.classified.kind = format!("UNPARSED ({kind} ...)");
    statement.classified.flags.push(Flag::AnonymousCode);
    statement
}

fn replication(kind: &str) -> MysqlStatement {
    keyword_only(Operation::Dangerous, kind, vec![Flag::Replication])
}

fn word(text: &str) -> Token {
    Token {
        kind: Kind::Word,
        start: 0,
        end: 0,
        value: text.to_owned(),
    }
}

/// The (possibly qualified) name starting at `index`, skipping `IF [NOT] EXISTS`.
fn names_after(tokens: &[Token], mut index: usize) -> Vec<String> {
    while tokens
        .get(index)
        .is_some_and(|token| token.is("IF") || token.is("NOT") || token.is("EXISTS"))
    {
        index += 1;
    }
    let mut parts = Vec::new();
    while let Some(name) = tokens.get(index).and_then(Token::name) {
        parts.push(classify::quote_if_needed(name));
        if tokens
            .get(index + 1)
            .is_some_and(|token| token.is_punct("."))
        {
            index += 2;
        } else {
            break;
        }
    }
    if parts.is_empty() {
        Vec::new()
    } else {
        vec![parts.join(".")]
    }
}

/// Renders tokens as text sqlparser's MySQL dialect reads the same way: strings
/// single-quoted with only `\\` and `''` escapes, identifiers back-quoted, character set
/// introducers dropped, one space between tokens.
pub(super) fn render(tokens: &[Token]) -> String {
    let mut out = String::new();
    let mut index = 0;
    while let Some(token) = tokens.get(index) {
        index += 1;
        let next = tokens.get(index);
        let piece = match token.kind {
            // `_utf8mb4'x'`: a character set introducer, not an identifier.
            Kind::Word
                if token.value.starts_with('_')
                    && CHARSETS.contains(
                        &token
                            .value
                            .get(1..)
                            .unwrap_or_default()
                            .to_ascii_lowercase()
                            .as_str(),
                    )
                    && next.is_some_and(|next| {
                        matches!(
                            next.kind,
                            Kind::Str | Kind::HexStr | Kind::BitStr | Kind::Number
                        )
                    }) =>
            {
                continue;
            }
            // `INTO OUTFILE ...`, `INTO DUMPFILE ...`, `INTO @a, @b`: what the rows
            // become, not what is read (the file forms are flagged by `scan`).
            Kind::Word
                if token.is("INTO")
                    && next.is_some_and(|next| {
                        next.is("OUTFILE") || next.is("DUMPFILE") || next.kind == Kind::Variable
                    }) =>
            {
                while let Some(skipped) = tokens.get(index) {
                    let ends = [
                        "FROM", "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "FOR", "LOCK",
                        "UNION", "WINDOW",
                    ]
                    .iter()
                    .any(|word| skipped.is(word))
                        || skipped.is_punct(")");
                    if ends {
                        break;
                    }
                    index += 1;
                }
                continue;
            }
            Kind::Word
                if token.is("LOCK")
                    && tokens.get(index).is_some_and(|t| t.is("IN"))
                    && tokens.get(index + 1).is_some_and(|t| t.is("SHARE"))
                    && tokens.get(index + 2).is_some_and(|t| t.is("MODE")) =>
            {
                index += 3;
                "FOR SHARE".to_owned()
            }
            Kind::Word => {
                let plain = token
                    .value
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && token
                        .value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_');
                if plain {
                    token.value.clone()
                } else {
                    format!("`{}`", token.value.replace('`', "``"))
                }
            }
            Kind::Ident => format!("`{}`", token.value.replace('`', "``")),
            Kind::Str => format!(
                "'{}'",
                token.value.replace('\\', "\\\\").replace('\'', "''")
            ),
            Kind::HexStr => format!("X'{}'", token.value),
            Kind::BitStr => format!("B'{}'", token.value),
            Kind::Number | Kind::Variable | Kind::Punct => token.value.clone(),
            Kind::Semicolon | Kind::Space | Kind::VersionOpen(_) | Kind::VersionClose => continue,
        };
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&piece);
    }
    out
}

/// Parses the rendered tokens as exactly one statement.
fn parse(tokens: &[Token]) -> Option<sqlparser::ast::Statement> {
    let text = render(tokens);
    let dialect = MySqlDialect {};
    let sql_tokens = Tokenizer::new(&dialect, &text)
        .tokenize_with_location()
        .ok()?;
    guard::check_nesting(&sql_tokens).ok()?;
    let mut statements = Parser::new(&dialect)
        .with_recursion_limit(PARSER_RECURSION_LIMIT)
        .with_tokens_with_locations(sql_tokens)
        .parse_statements()
        .ok()?;
    (statements.len() == 1).then(|| statements.remove(0))
}

/// The statement as sqlparser reads it, or unparsed.
fn parsed(tokens: &[Token], kind: Option<&str>) -> MysqlStatement {
    let classified = cache::classified(tokens, || {
        parse(tokens).map(|statement| classify::statement(&statement))
    });
    match classified {
        Some(mut classified) => {
            if let Some(kind) = kind {
                classified.kind = kind.to_owned();
            }
            MysqlStatement::new(classified, String::new())
        }
        None => unparsed(),
    }
}

/// Parsed, or else a keyword-only statement of `operation` (for statements without
/// expressions).
fn parsed_or(tokens: &[Token], operation: Operation, kind: &str) -> MysqlStatement {
    let statement = parsed(tokens, None);
    if statement.classified.operation == Operation::Unparsed {
        keyword_only(operation, kind, Vec::new())
    } else {
        statement
    }
}

/// The class of expressions, judged as `SELECT expressions`.
fn expressions(tokens: &[Token]) -> Classified {
    if tokens.is_empty() {
        return classified(Operation::Read, "SELECT", Vec::new());
    }
    let mut select = vec![word("SELECT")];
    select.extend_from_slice(tokens);
    parsed(&select, None).classified
}

/// Folds `other`'s class, tables, functions and flags into `into`.
fn absorb(into: &mut Classified, other: Classified) {
    let kind = std::mem::take(&mut into.kind);
    *into = merge(vec![std::mem::replace(into, Classified::unparsed()), other]);
    into.kind = kind;
}

/// `SHOW ...`: read, except account definitions and binary logs.
fn show(tokens: &[Token]) -> MysqlStatement {
    let second = keyword(tokens, 1).unwrap_or_default();
    let third = keyword(tokens, 2).unwrap_or_default();
    match (second.as_str(), third.as_str()) {
        ("CREATE", "USER") => {
            return keyword_only(
                Operation::Dangerous,
                "SHOW CREATE USER",
                vec![Flag::SystemSchema("mysql.user".to_owned())],
            );
        }
        ("BINLOG" | "RELAYLOG", _) => return replication("SHOW BINLOG EVENTS"),
        _ => {}
    }
    let statement = parsed(tokens, Some("SHOW"));
    let simple = !tokens
        .iter()
        .any(|token| token.is_punct("(") || token.is("SELECT"));
    if statement.classified.operation == Operation::Unparsed && simple {
        return keyword_only(Operation::Read, "SHOW", Vec::new());
    }
    statement
}

/// `EXPLAIN`/`DESCRIBE`: a table's columns (read), or a statement, which takes that
/// statement's class (and runs it with `ANALYZE`).
fn explain(tokens: &[Token], context: &MysqlContext) -> MysqlStatement {
    let mut index = 1;
    let mut analyze = false;
    loop {
        match keyword(tokens, index).as_deref() {
            Some("EXTENDED" | "PARTITIONS") => index += 1,
            Some("ANALYZE") => {
                analyze = true;
                index += 1;
            }
            Some("FORMAT") => index += 3,
            _ => break,
        }
    }
    match keyword(tokens, index).as_deref() {
        Some(
            "SELECT" | "WITH" | "INSERT" | "REPLACE" | "UPDATE" | "DELETE" | "TABLE" | "VALUES",
        ) => {}
        Some("FOR") => return keyword_only(Operation::Read, "EXPLAIN", Vec::new()),
        _ if tokens.get(index).is_some_and(|token| token.is_punct("(")) => {}
        _ => {
            let mut statement = keyword_only(Operation::Read, "DESCRIBE", Vec::new());
            statement.classified.tables_read = names_after(tokens, index);
            return statement;
        }
    }
    if analyze {
        return runs_inner(tokens, index, context, "EXPLAIN ANALYZE");
    }
    let inner = by_keywords(tokens.get(index..).unwrap_or_default(), context);
    let mut classified = inner.classified;
    classified.kind = "EXPLAIN".to_owned();
    MysqlStatement::new(classified, String::new())
}

/// `ANALYZE stmt` (MariaDB) and `EXPLAIN ANALYZE stmt` run the statement.
fn runs_inner(
    tokens: &[Token],
    mut index: usize,
    context: &MysqlContext,
    kind: &str,
) -> MysqlStatement {
    if keyword(tokens, index).as_deref() == Some("FORMAT") {
        index += 3;
    }
    let inner = by_keywords(tokens.get(index..).unwrap_or_default(), context);
    if inner.prepares.is_some() || inner.executes.is_some() || !inner.session.is_empty() {
        return unparsed();
    }
    let mut classified = inner.classified;
    classified.kind = kind.to_owned();
    classified.flags.push(Flag::ExplainAnalyze);
    MysqlStatement::new(classified, String::new())
}

/// `USE db`.
fn use_database(tokens: &[Token]) -> MysqlStatement {
    let Some(database) = tokens
        .get(1)
        .and_then(Token::name)
        .filter(|_| tokens.len() == 2)
    else {
        return unparsed();
    };
    let mut statement = keyword_only(Operation::Read, "USE", Vec::new());
    if database.eq_ignore_ascii_case("mysql") {
        statement.classified.operation = Operation::Dangerous;
        statement
            .classified
            .flags
            .push(Flag::SystemSchema("mysql".to_owned()));
    }
    statement
        .session
        .push(SessionChange::Schema(database.to_owned()));
    statement
}

/// `KILL [HARD | SOFT] [CONNECTION | QUERY] id`: admin for a literal connection id (the
/// proxy checks whose it is); anything else (`KILL USER`, `QUERY ID`, a computed id)
/// cannot be checked and is dangerous.
fn kill(tokens: &[Token]) -> MysqlStatement {
    let mut index = 1;
    if is_at(tokens, index, "HARD") || is_at(tokens, index, "SOFT") {
        index += 1;
    }
    let mut query_only = false;
    if is_at(tokens, index, "CONNECTION") {
        index += 1;
    } else if is_at(tokens, index, "QUERY") {
        query_only = true;
        index += 1;
    }
    let id = match tokens.get(index..) {
        Some([token]) if token.kind == Kind::Number => token.value.parse::<u64>().ok(),
        _ => None,
    };
    match id {
        Some(id) => {
            let mut statement = keyword_only(Operation::Admin, "KILL", Vec::new());
            statement.kill = Some((id, query_only));
            statement
        }
        None => keyword_only(Operation::Dangerous, "KILL", Vec::new()),
    }
}

/// Skips `OR REPLACE`, `DEFINER = user`, `SQL SECURITY ...`, `ALGORITHM = ...` and the
/// other modifiers before the object type of `CREATE`/`ALTER`; returns its index.
fn object_index(tokens: &[Token]) -> usize {
    let mut index = 1;
    loop {
        match keyword(tokens, index).as_deref() {
            Some("OR") if is_at(tokens, index + 1, "REPLACE") => index += 2,
            Some("ALGORITHM") => index += 3,
            Some("SQL") if is_at(tokens, index + 1, "SECURITY") => index += 3,
            Some("DEFINER") => {
                index += 2;
                // user, 'user', `user`, CURRENT_USER[()], each optionally @host.
                index += 1;
                if tokens.get(index).is_some_and(|token| token.is_punct("(")) {
                    index += 2;
                }
                if tokens.get(index).is_some_and(|token| token.is_punct("@")) {
                    index += 2;
                } else if tokens.get(index).is_some_and(|token| {
                    token.kind == Kind::Variable && !token.value.starts_with("@@")
                }) {
                    index += 1;
                }
            }
            Some(
                "TEMPORARY" | "AGGREGATE" | "ONLINE" | "OFFLINE" | "IGNORE" | "UNIQUE" | "FULLTEXT"
                | "SPATIAL",
            ) => index += 1,
            _ => return index,
        }
    }
}

/// The tokens without the modifiers sqlparser does not know (`DEFINER`, `SQL SECURITY`,
/// `ALGORITHM`), for views.
fn without_modifiers(tokens: &[Token], object: usize) -> Vec<Token> {
    let mut kept: Vec<Token> = tokens.get(..1).unwrap_or_default().to_vec();
    if is_at(tokens, 1, "OR") && is_at(tokens, 2, "REPLACE") {
        kept.extend_from_slice(tokens.get(1..3).unwrap_or_default());
    }
    kept.extend_from_slice(tokens.get(object..).unwrap_or_default());
    kept
}

fn create(tokens: &[Token], context: &MysqlContext) -> MysqlStatement {
    let object_at = object_index(tokens);
    let object = keyword(tokens, object_at).unwrap_or_default();
    let has = |word: &str| tokens.iter().any(|token| token.is(word));
    match object.as_str() {
        "FUNCTION" if has("SONAME") => keyword_only(
            Operation::Dangerous,
            "CREATE FUNCTION",
            vec![Flag::LoadLibrary],
        ),
        "FUNCTION" | "PROCEDURE" | "TRIGGER" | "EVENT" | "PACKAGE" => {
            let kind = format!("CREATE {object}");
            if has("BEGIN") {
                let mut statement = compound(&kind);
                statement.classified.flags.push(Flag::StoredCode);
                statement
            } else {
                keyword_only(Operation::Dangerous, &kind, vec![Flag::StoredCode])
            }
        }
        "USER" | "ROLE" => keyword_only(Operation::Dcl, &format!("CREATE {object}"), Vec::new()),
        "SERVER" | "TABLESPACE" | "LOGFILE" => {
            keyword_only(Operation::Admin, &format!("CREATE {object}"), Vec::new())
        }
        "VIEW" => parsed(&without_modifiers(tokens, object_at), None),
        "TABLE" | "DATABASE" | "SCHEMA" | "INDEX" | "SEQUENCE" => {
            let statement = parsed(tokens, None);
            if statement.classified.operation != Operation::Unparsed || has("SELECT") {
                return statement;
            }
            let mut statement =
                keyword_only(Operation::Ddl, &format!("CREATE {object}"), Vec::new());
            if object == "TABLE" {
                statement.classified.tables_written = names_after(tokens, object_at + 1);
            }
            statement
        }
        _ => {
            let _ = context;
            parsed(tokens, None)
        }
    }
}

fn alter(tokens: &[Token], _context: &MysqlContext) -> MysqlStatement {
    let object_at = object_index(tokens);
    let object = keyword(tokens, object_at).unwrap_or_default();
    let has = |word: &str| tokens.iter().any(|token| token.is(word));
    let kind = format!("ALTER {object}");
    match object.as_str() {
        "USER" => keyword_only(Operation::Dcl, &kind, Vec::new()),
        "TABLE" => {
            let statement = parsed(tokens, None);
            if statement.classified.operation != Operation::Unparsed {
                return statement;
            }
            let mut statement = if has("DROP") || has("DISCARD") {
                keyword_only(Operation::Dangerous, &kind, vec![Flag::Drop])
            } else if has("TRUNCATE") {
                keyword_only(Operation::Dangerous, &kind, vec![Flag::Truncate])
            } else {
                keyword_only(Operation::Ddl, &kind, Vec::new())
            };
            statement.classified.tables_written = names_after(tokens, object_at + 1);
            statement
        }
        "VIEW" => parsed(&without_modifiers(tokens, object_at), None),
        "EVENT" if has("DO") => keyword_only(Operation::Dangerous, &kind, vec![Flag::StoredCode]),
        "DATABASE" | "SCHEMA" | "FUNCTION" | "PROCEDURE" | "EVENT" | "SEQUENCE" | "INDEX" => {
            keyword_only(Operation::Ddl, &kind, Vec::new())
        }
        "SERVER" | "TABLESPACE" | "LOGFILE" | "INSTANCE" => {
            keyword_only(Operation::Admin, &kind, Vec::new())
        }
        _ => unparsed(),
    }
}

fn drop(tokens: &[Token]) -> MysqlStatement {
    let second = keyword(tokens, 1).unwrap_or_default();
    match second.as_str() {
        "PREPARE" => deallocate(tokens, 2),
        "USER" | "ROLE" => keyword_only(
            Operation::Dangerous,
            &format!("DROP {second}"),
            vec![Flag::Drop],
        ),
        _ => {
            let statement = parsed(tokens, None);
            if statement.classified.operation != Operation::Unparsed {
                return statement;
            }
            let object = if second == "TEMPORARY" {
                keyword(tokens, 2).unwrap_or_default()
            } else {
                second.clone()
            };
            let mut statement = keyword_only(
                Operation::Dangerous,
                format!("DROP {object}").trim_end(),
                vec![Flag::Drop],
            );
            if matches!(object.as_str(), "TABLE" | "TABLES" | "VIEW") {
                let at = tokens
                    .iter()
                    .position(|token| token.is(&object))
                    .unwrap_or(1);
                statement.classified.tables_written = names_after(tokens, at + 1);
            }
            statement
        }
    }
}

/// `DEALLOCATE PREPARE name` / `DROP PREPARE name` (name at `index`).
fn deallocate(tokens: &[Token], index: usize) -> MysqlStatement {
    match (
        tokens.get(index).and_then(Token::name),
        tokens.len() == index + 1,
    ) {
        (Some(name), true) if is_at(tokens, index - 1, "PREPARE") => {
            let mut statement = keyword_only(Operation::Read, "DEALLOCATE PREPARE", Vec::new());
            statement.deallocates = Some(name.to_ascii_lowercase());
            statement
        }
        _ => unparsed(),
    }
}

/// The text of consecutive string literals (which MySQL concatenates), if `tokens` are
/// exactly that.
fn literal_text(tokens: &[Token]) -> Option<String> {
    if tokens.is_empty() || !tokens.iter().all(|token| token.kind == Kind::Str) {
        return None;
    }
    Some(tokens.iter().map(|token| token.value.as_str()).collect())
}

/// Classifies SQL text given as a literal (prepared or executed immediately): one
/// statement, read under the same context.
fn inner_text(text: &str, context: &MysqlContext) -> Option<Vec<MysqlStatement>> {
    let statements = classify_mysql(text.as_bytes(), context);
    let simple = statements.len() == 1
        && statements.iter().all(|statement| {
            statement.prepares.is_none()
                && statement.executes.is_none()
                && statement.deallocates.is_none()
                && statement.session.is_empty()
        });
    simple.then_some(statements)
}

fn summaries_of(statements: &[MysqlStatement]) -> String {
    statements
        .iter()
        .map(|statement| statement.summary.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// `PREPARE name FROM 'text'`: judged by the text, which is returned for the proxy to
/// remember. `PREPARE name FROM @var` is dynamic SQL: unparsed.
fn prepare(tokens: &[Token], context: &MysqlContext) -> MysqlStatement {
    let name = tokens
        .get(1)
        .and_then(Token::name)
        .map(str::to_ascii_lowercase);
    let text = if is_at(tokens, 2, "FROM") {
        literal_text(tokens.get(3..).unwrap_or_default())
    } else {
        None
    };
    let (Some(name), Some(text)) = (name, text) else {
        let mut statement = unparsed();
        statement.classified.flags.push(Flag::DynamicSql);
        return statement;
    };
    let Some(inner) = inner_text(&text, context) else {
        return unparsed();
    };
    let summaries = summaries_of(&inner);
    let classes: Vec<Classified> = inner
        .into_iter()
        .map(|statement| statement.classified)
        .collect();
    let mut classified = merge(classes.clone());
    classified.kind = format!("PREPARE {}", classified.kind);
    let mut statement = MysqlStatement::new(classified, summaries);
    statement.prepares = Some((name, classes));
    statement
}

/// `EXECUTE name [USING ...]` (class remembered for the name) or `EXECUTE IMMEDIATE
/// 'text'` (judged by the text).
fn execute(tokens: &[Token], context: &MysqlContext) -> MysqlStatement {
    if is_at(tokens, 1, "IMMEDIATE") {
        let using = tokens.iter().position(|token| token.is("USING"));
        let text_tokens = tokens
            .get(2..using.unwrap_or(tokens.len()))
            .unwrap_or_default();
        let Some(text) = literal_text(text_tokens) else {
            let mut statement = unparsed();
            statement.classified.flags.push(Flag::DynamicSql);
            return statement;
        };
        let Some(inner) = inner_text(&text, context) else {
            return unparsed();
        };
        let summaries = summaries_of(&inner);
        let mut classified = merge(
            inner
                .into_iter()
                .map(|statement| statement.classified)
                .collect(),
        );
        classified.kind = format!("EXECUTE IMMEDIATE {}", classified.kind);
        if let Some(using) = using {
            absorb(
                &mut classified,
                expressions(tokens.get(using + 1..).unwrap_or_default()),
            );
        }
        return MysqlStatement::new(classified, summaries);
    }
    let Some(name) = tokens.get(1).and_then(Token::name) else {
        return unparsed();
    };
    let mut classified = classified(Operation::Read, "EXECUTE", vec![]);
    match tokens.get(2) {
        None => {}
        Some(token) if token.is("USING") => {
            absorb(
                &mut classified,
                expressions(tokens.get(3..).unwrap_or_default()),
            );
        }
        Some(_) => return unparsed(),
    }
    let mut statement = MysqlStatement::new(classified, String::new());
    statement.executes = Some(name.to_ascii_lowercase());
    statement
}

/// Splits at commas outside parentheses.
fn split_commas(tokens: &[Token]) -> Vec<&[Token]> {
    let mut pieces = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, token) in tokens.iter().enumerate() {
        if token.is_punct("(") {
            depth += 1;
        } else if token.is_punct(")") {
            depth = depth.saturating_sub(1);
        } else if token.is_punct(",") && depth == 0 {
            pieces.push(tokens.get(start..index).unwrap_or_default());
            start = index + 1;
        }
    }
    pieces.push(tokens.get(start..).unwrap_or_default());
    pieces
}

/// A single literal or bare word's text (`'ANSI_QUOTES'`, `utf8mb4`, `OFF`, `1`).
fn single_value(tokens: &[Token]) -> Option<&Token> {
    match tokens {
        [token]
            if matches!(
                token.kind,
                Kind::Str | Kind::Word | Kind::Ident | Kind::Number
            ) =>
        {
            Some(token)
        }
        _ => None,
    }
}

/// `SET ...`.
fn set(tokens: &[Token], context: &MysqlContext) -> MysqlStatement {
    let second = keyword(tokens, 1).unwrap_or_default();
    let third = keyword(tokens, 2).unwrap_or_default();
    match (second.as_str(), third.as_str()) {
        ("NAMES", _) => return set_charset(tokens.get(2), "SET NAMES"),
        ("CHARACTER", "SET") => return set_charset(tokens.get(3), "SET CHARACTER SET"),
        ("CHARSET", _) => return set_charset(tokens.get(2), "SET CHARACTER SET"),
        ("PASSWORD", _) => return keyword_only(Operation::Dcl, "SET PASSWORD", Vec::new()),
        ("ROLE", _) => return keyword_only(Operation::Dcl, "SET ROLE", vec![Flag::RoleChange]),
        ("DEFAULT", "ROLE") => {
            return keyword_only(Operation::Dcl, "SET DEFAULT ROLE", vec![Flag::RoleChange]);
        }
        ("STATEMENT", _) => return set_statement(tokens, context),
        ("TRANSACTION", _) | ("SESSION" | "LOCAL", "TRANSACTION") => {
            return keyword_only(Operation::Read, "SET TRANSACTION", Vec::new());
        }
        ("GLOBAL", "TRANSACTION") => {
            return keyword_only(
                Operation::Dangerous,
                "SET TRANSACTION",
                vec![Flag::ServerParameter("transaction".to_owned())],
            );
        }
        _ => {}
    }
    let mut statement = MysqlStatement::new(
        classified(Operation::Read, "SET", Vec::new()),
        String::new(),
    );
    if !assignments(tokens.get(1..).unwrap_or_default(), &mut statement, true) {
        return unparsed();
    }
    statement
}

/// `SET NAMES x` / `SET CHARACTER SET x`.
fn set_charset(value: Option<&Token>, kind: &str) -> MysqlStatement {
    let charset = value
        .filter(|token| matches!(token.kind, Kind::Word | Kind::Str | Kind::Ident))
        .filter(|token| !token.is("DEFAULT"))
        .map(|token| token.value.to_ascii_lowercase());
    let mut statement = keyword_only(Operation::Read, kind, Vec::new());
    statement.session.push(SessionChange::Charset(charset));
    statement
}

/// `SET STATEMENT var = value, ... FOR statement` (MariaDB): the variables apply to the
/// one statement, which is judged as usual.
fn set_statement(tokens: &[Token], context: &MysqlContext) -> MysqlStatement {
    let mut depth = 0usize;
    let mut for_at = None;
    for (index, token) in tokens.iter().enumerate().skip(2) {
        if token.is_punct("(") {
            depth += 1;
        } else if token.is_punct(")") {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && token.is("FOR") {
            for_at = Some(index);
            break;
        }
    }
    let Some(for_at) = for_at else {
        return unparsed();
    };
    let mut variables = MysqlStatement::new(
        classified(Operation::Read, "SET", Vec::new()),
        String::new(),
    );
    if !assignments(
        tokens.get(2..for_at).unwrap_or_default(),
        &mut variables,
        false,
    ) {
        return unparsed();
    }
    let mut inner = by_keywords(tokens.get(for_at + 1..).unwrap_or_default(), context);
    absorb(&mut inner.classified, variables.classified);
    inner
}

/// Judges `SET` assignments into `statement`; `false` when they cannot be read.
/// `session_changes`: whether they outlive the statement (not for `SET STATEMENT`).
fn assignments(tokens: &[Token], statement: &mut MysqlStatement, session_changes: bool) -> bool {
    let mut global_scope = false;
    for assignment in split_commas(tokens) {
        let mut index = 0;
        match keyword(assignment, 0).as_deref() {
            Some("GLOBAL" | "PERSIST" | "PERSIST_ONLY") => {
                global_scope = true;
                index = 1;
            }
            Some("SESSION" | "LOCAL") => index = 1,
            _ => {}
        }
        let Some(operator) = assignment
            .iter()
            .position(|token| token.is_punct("=") || token.is_punct(":="))
        else {
            return false;
        };
        let name_tokens = assignment.get(index..operator).unwrap_or_default();
        let value = assignment.get(operator + 1..).unwrap_or_default();
        if value.is_empty() {
            return false;
        }
        // The variable: `@user`, `@@[scope.]name`, `name` or `scope.name`.
        let (user_variable, scope, name) = match name_tokens {
            [token] if token.kind == Kind::Variable && token.value.starts_with("@@") => {
                let name = token.value.trim_start_matches('@').to_ascii_lowercase();
                match name.split_once('.') {
                    Some((scope, rest)) => (false, Some(scope.to_owned()), rest.to_owned()),
                    None => (false, None, name),
                }
            }
            [token] if token.kind == Kind::Variable => (true, None, token.value.clone()),
            [at, token] if at.is_punct("@") && token.name().is_some() => {
                (true, None, token.value.clone())
            }
            [token] if token.name().is_some() => (false, None, token.value.to_ascii_lowercase()),
            [scope, dot, token]
                if dot.is_punct(".") && scope.name().is_some() && token.name().is_some() =>
            {
                // A structured variable (`keycache.key_buffer_size`): a server setting.
                (
                    false,
                    Some("global".to_owned()),
                    token.value.to_ascii_lowercase(),
                )
            }
            _ => return false,
        };
        let classified = &mut statement.classified;
        if single_value(value).is_none() {
            absorb(classified, expressions(value));
        }
        if user_variable {
            continue;
        }
        let global = global_scope
            || matches!(
                scope.as_deref(),
                Some("global" | "persist" | "persist_only")
            );
        if !global && !matches!(scope.as_deref(), None | Some("session" | "local")) {
            return false;
        }
        if global {
            classified.operation =
                classify::most_sensitive(classified.operation, Operation::Dangerous);
            classified.flags.push(Flag::ServerParameter(name.clone()));
            continue;
        }
        if !SESSION_VARIABLES.contains(&name.as_str()) {
            classified.operation = classify::most_sensitive(classified.operation, Operation::Admin);
            classified.flags.push(Flag::ServerParameter(name.clone()));
            continue;
        }
        if !session_changes {
            continue;
        }
        let literal = single_value(value).filter(|token| !token.is("DEFAULT"));
        match name.as_str() {
            "sql_mode" => statement.session.push(SessionChange::SqlMode(
                literal
                    .filter(|token| matches!(token.kind, Kind::Str | Kind::Word))
                    .map(|token| parse_sql_mode(&token.value)),
            )),
            "character_set_client" => statement.session.push(SessionChange::Charset(
                literal
                    .filter(|token| matches!(token.kind, Kind::Str | Kind::Word | Kind::Ident))
                    .filter(|token| !token.is("NULL"))
                    .map(|token| token.value.to_ascii_lowercase()),
            )),
            _ => {}
        }
    }
    true
}
