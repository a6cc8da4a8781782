//! The names that make a statement sensitive: functions and session parameters.
//!
//! Kept apart from the classifier so the lists can be read (and reviewed) on their own.

use crate::policy::Operation;

/// Functions whose call alone gives a statement a class, anywhere in it (select list,
/// `WHERE`, `FROM`, subqueries, CTEs, defaults).
///
/// Matched case-insensitively on the function's last name part, whatever its schema or
/// quoting (`pg_catalog.pg_read_file`, `"PG_READ_FILE"`): a same-named user function is
/// judged like the built-in, which fails closed. A trailing `*` matches any suffix.
///
/// `set_config` is not listed: it is judged like the `SET` it performs (see
/// [`SESSION_PARAMETERS`]), so pg_dump's `set_config('search_path', '', false)` stays
/// `read`. Terminating and cancelling backends are `admin`, as the policy documentation
/// lists them; they destroy no data.
pub const SENSITIVE_FUNCTIONS: &[(&str, Operation)] = &[
    // The server's file system (superuser or pg_read_server_files/pg_write_server_files).
    ("pg_read_file", Operation::Dangerous),
    ("pg_read_binary_file", Operation::Dangerous),
    ("pg_stat_file", Operation::Dangerous),
    ("pg_ls_*", Operation::Dangerous),
    ("lo_import", Operation::Dangerous),
    ("lo_export", Operation::Dangerous),
    // adminpack: writes, renames and deletes server files.
    ("pg_file_write", Operation::Dangerous),
    ("pg_file_rename", Operation::Dangerous),
    ("pg_file_unlink", Operation::Dangerous),
    ("pg_file_sync", Operation::Dangerous),
    ("pg_file_read", Operation::Dangerous),
    ("pg_file_length", Operation::Dangerous),
    ("pg_logdir_ls", Operation::Dangerous),
    // Other servers, or SQL text this classifier never sees.
    ("dblink*", Operation::Dangerous),
    ("query_to_xml*", Operation::Dangerous),
    ("ts_stat", Operation::Dangerous),
    ("ts_rewrite", Operation::Dangerous),
    ("crosstab*", Operation::Dangerous),
    ("connectby", Operation::Dangerous),
    ("xpath_table", Operation::Dangerous),
    // Server administration.
    ("pg_terminate_backend", Operation::Admin),
    ("pg_cancel_backend", Operation::Admin),
    ("pg_reload_conf", Operation::Admin),
    ("pg_rotate_logfile*", Operation::Admin),
    ("pg_switch_wal", Operation::Admin),
    ("pg_switch_xlog", Operation::Admin),
    ("pg_create_restore_point", Operation::Admin),
    ("pg_promote", Operation::Admin),
    ("pg_backup_start", Operation::Admin),
    ("pg_backup_stop", Operation::Admin),
    ("pg_start_backup", Operation::Admin),
    ("pg_stop_backup", Operation::Admin),
    ("pg_wal_replay_*", Operation::Admin),
    ("pg_stat_reset*", Operation::Admin),
    ("pg_log_backend_memory_contexts", Operation::Admin),
    ("pg_create_physical_replication_slot", Operation::Admin),
    ("pg_create_logical_replication_slot", Operation::Admin),
    ("pg_copy_physical_replication_slot", Operation::Admin),
    ("pg_copy_logical_replication_slot", Operation::Admin),
    ("pg_drop_replication_slot", Operation::Admin),
    ("pg_replication_slot_advance", Operation::Admin),
    ("pg_logical_slot_*", Operation::Admin),
    ("pg_replication_origin_*", Operation::Admin),
    ("pg_import_system_collations", Operation::Admin),
    // Data changes outside INSERT/UPDATE/DELETE.
    ("nextval", Operation::Write),
    ("setval", Operation::Write),
    ("lo_create", Operation::Write),
    ("lo_creat", Operation::Write),
    ("lo_from_bytea", Operation::Write),
    ("lo_put", Operation::Write),
    ("lo_unlink", Operation::Write),
    ("lowrite", Operation::Write),
    ("lo_truncate*", Operation::Write),
    ("pg_notify", Operation::Write),
];

/// Parameters that `SET` (and `set_config`) may change as `read`-class session control:
/// they shape this session's output, planning and timeouts and nothing another session
/// sees. Planner switches (`enable_*`) are allowed too. Everything else is `admin`: server
/// and superuser settings (`session_replication_role`, `log_*`) and custom variables
/// (`app.tenant_id`), which row-level security policies may read. `role` and
/// `session_authorization` are `dcl`.
///
/// Two entries are checked by value: `standard_conforming_strings` only `on` (off, the
/// server lexes strings differently than this classifier: dangerous) and
/// `client_encoding` only UTF-8 (the proxy decodes statements as UTF-8).
pub const SESSION_PARAMETERS: &[&str] = &[
    "application_name",
    "array_nulls",
    "bytea_output",
    "check_function_bodies",
    "client_encoding",
    "client_min_messages",
    "cpu_index_tuple_cost",
    "cpu_operator_cost",
    "cpu_tuple_cost",
    "cursor_tuple_fraction",
    "datestyle",
    "default_statistics_target",
    "default_table_access_method",
    "default_tablespace",
    "default_text_search_config",
    "default_toast_compression",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "effective_cache_size",
    "effective_io_concurrency",
    "extra_float_digits",
    "from_collapse_limit",
    "geqo",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "intervalstyle",
    "jit",
    "join_collapse_limit",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "maintenance_work_mem",
    "max_parallel_workers_per_gather",
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "plan_cache_mode",
    "quote_all_identifiers",
    "random_page_cost",
    "row_security",
    "search_path",
    "seq_page_cost",
    "standard_conforming_strings",
    "statement_timeout",
    "synchronize_seqscans",
    "temp_buffers",
    "temp_tablespaces",
    "timezone",
    "transaction_deferrable",
    "transaction_isolation",
    "transaction_read_only",
    "transaction_timeout",
    "work_mem",
    "xmlbinary",
    "xmloption",
];

/// The class a call to `name` (the function's last name part) gives, if it is listed.
pub(super) fn function_class(name: &str) -> Option<Operation> {
    SENSITIVE_FUNCTIONS
        .iter()
        .find(|(pattern, _)| name_matches(pattern, name))
        .map(|&(_, class)| class)
}

/// The dangerous and admin entries of [`SENSITIVE_FUNCTIONS`] whose name appears in
/// `text` (a function body), with the class each gives.
pub(super) fn functions_named_in(text: &str) -> Vec<(&'static str, Operation)> {
    let text = text.to_ascii_lowercase();
    SENSITIVE_FUNCTIONS
        .iter()
        .filter(|(_, class)| matches!(class, Operation::Dangerous | Operation::Admin))
        .filter(|(pattern, _)| text.contains(pattern.trim_end_matches('*')))
        .map(|&(pattern, class)| (pattern.trim_end_matches('*'), class))
        .collect()
}

fn name_matches(pattern: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// What setting a parameter amounts to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ParameterClass {
    /// Plain session state: `read`.
    Session,
    /// `role`, `session_authorization`: `dcl`.
    Role,
    /// Anything else: `admin`.
    Server,
    /// `standard_conforming_strings` off: `dangerous`.
    ConformingStringsOff,
}

/// Classifies setting parameter `name` (any case) to `value`, the literal text of the
/// value when it is a single literal.
pub(super) fn parameter_class(name: &str, value: Option<&str>) -> ParameterClass {
    let name = name.to_ascii_lowercase();
    let value = value.map(str::to_ascii_lowercase);
    match name.as_str() {
        "role" | "session_authorization" => ParameterClass::Role,
        "standard_conforming_strings" => match value.as_deref() {
            Some("on" | "true" | "yes" | "1") => ParameterClass::Session,
            _ => ParameterClass::ConformingStringsOff,
        },
        "client_encoding" => match value.as_deref() {
            Some("utf8" | "utf-8" | "unicode" | "default") => ParameterClass::Session,
            _ => ParameterClass::Server,
        },
        _ if name.starts_with("enable_") || SESSION_PARAMETERS.contains(&name.as_str()) => {
            ParameterClass::Session
        }
        _ => ParameterClass::Server,
    }
}
