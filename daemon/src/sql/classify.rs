//! Classification of one parsed statement.
//!
//! sqlparser's visitor walks the whole tree (it guards its own recursion) and calls the
//! [`Collector`] for every statement, query, table, relation and expression in it, so
//! nested statements (data-modifying CTEs, `PREPARE`, `COPY (query)`) and functions
//! anywhere count without a hand-written walk that could miss a corner.

use std::{
    collections::{HashMap, HashSet},
    ops::ControlFlow,
};

use sqlparser::ast::{
    AlterSchemaOperation, AlterTableOperation, BinaryOperator, CopySource, CopyTarget,
    CreateFunctionBody, Expr, FromTable, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    ObjectName, ObjectNamePart, ObjectType, Query, Select, Set, SetExpr, Statement, TableAlias,
    TableFactor, TableObject, Value, Visit, Visitor,
};

use super::{
    Classified, Flag,
    functions::{self, ParameterClass},
};
use crate::policy::Operation;

/// Languages whose functions cannot reach outside the database. Anything else (C,
/// `internal`, `plpython3u`, `plperlu`, ...) runs native or unrestricted code.
const TRUSTED_LANGUAGES: &[&str] = &[
    "sql", "plpgsql", "plperl", "pltcl", "plv8", "pllua", "plrust",
];

/// How far `WHERE` clauses are searched for tautologies.
const TAUTOLOGY_DEPTH: usize = 16;

/// Classifies one statement.
pub(super) fn statement(statement: &Statement) -> Classified {
    // EXPLAIN without ANALYZE only plans the statement; with ANALYZE it runs it.
    let mut inner = statement;
    let mut explain: Option<bool> = None;
    while let Statement::Explain {
        statement,
        analyze,
        options,
        ..
    } = inner
    {
        let runs = *analyze
            || options.as_deref().is_some_and(|options| {
                options.iter().any(|option| {
                    option.name.value.eq_ignore_ascii_case("analyze")
                        && !option.arg.as_ref().is_some_and(is_false)
                })
            });
        explain = Some(explain.unwrap_or(true) && runs);
        inner = statement;
    }

    let mut collector = Collector::new();
    let _ = inner.visit(&mut collector);
    match explain {
        None => collector.finish(kind_of(inner)),
        Some(true) => {
            collector.flag(Flag::ExplainAnalyze, false);
            collector.finish("EXPLAIN".to_owned())
        }
        Some(false) => collector.plan_only().finish("EXPLAIN".to_owned()),
    }
}

/// What a statement is, for [`Classified::kind`].
fn kind_of(statement: &Statement) -> String {
    let kind = match statement {
        Statement::Query(query) => return query_kind(query),
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Merge(_) => "MERGE",
        Statement::Copy { .. } => "COPY",
        Statement::Truncate(_) => "TRUNCATE",
        Statement::Drop { object_type, .. } => return format!("DROP {object_type}"),
        Statement::DropFunction(_) => "DROP FUNCTION",
        Statement::DropDomain(_) => "DROP DOMAIN",
        Statement::DropProcedure { .. } => "DROP PROCEDURE",
        Statement::DropPolicy(_) => "DROP POLICY",
        Statement::DropExtension(_) => "DROP EXTENSION",
        Statement::DropOperator(_) => "DROP OPERATOR",
        Statement::DropOperatorFamily(_) => "DROP OPERATOR FAMILY",
        Statement::DropOperatorClass(_) => "DROP OPERATOR CLASS",
        Statement::DropTrigger(_) => "DROP TRIGGER",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateView(view) if view.materialized => "CREATE MATERIALIZED VIEW",
        Statement::CreateView(_) => "CREATE VIEW",
        Statement::CreateVirtualTable { .. } => "CREATE VIRTUAL TABLE",
        Statement::CreateIndex(_) => "CREATE INDEX",
        Statement::CreateSchema { .. } => "CREATE SCHEMA",
        Statement::CreateDatabase { .. } => "CREATE DATABASE",
        Statement::CreateFunction(_) => "CREATE FUNCTION",
        Statement::CreateProcedure { .. } => "CREATE PROCEDURE",
        Statement::CreateTrigger(_) => "CREATE TRIGGER",
        Statement::CreateSequence { .. } => "CREATE SEQUENCE",
        Statement::CreateDomain(_) => "CREATE DOMAIN",
        Statement::CreateType { .. } => "CREATE TYPE",
        Statement::CreateOperator(_) => "CREATE OPERATOR",
        Statement::CreateOperatorFamily(_) => "CREATE OPERATOR FAMILY",
        Statement::CreateOperatorClass(_) => "CREATE OPERATOR CLASS",
        Statement::CreateTextSearch(_) => "CREATE TEXT SEARCH",
        Statement::CreateCollation(_) => "CREATE COLLATION",
        Statement::CreateExtension(_) => "CREATE EXTENSION",
        Statement::CreateServer(_) => "CREATE SERVER",
        Statement::CreateRole(_) => "CREATE ROLE",
        Statement::CreateUser(_) => "CREATE USER",
        Statement::CreatePolicy(_) => "CREATE POLICY",
        Statement::AlterTable(_) => "ALTER TABLE",
        Statement::AlterSchema(_) => "ALTER SCHEMA",
        Statement::AlterIndex { .. } => "ALTER INDEX",
        Statement::AlterView { .. } => "ALTER VIEW",
        Statement::AlterFunction(_) => "ALTER FUNCTION",
        Statement::AlterType(_) => "ALTER TYPE",
        Statement::AlterCollation(_) => "ALTER COLLATION",
        Statement::AlterOperator(_) => "ALTER OPERATOR",
        Statement::AlterOperatorFamily(_) => "ALTER OPERATOR FAMILY",
        Statement::AlterOperatorClass(_) => "ALTER OPERATOR CLASS",
        Statement::AlterTextSearch(_) => "ALTER TEXT SEARCH",
        Statement::AlterRole { .. } => "ALTER ROLE",
        Statement::AlterUser(_) => "ALTER USER",
        Statement::AlterPolicy(_) => "ALTER POLICY",
        Statement::Comment { .. } => "COMMENT",
        Statement::Grant(_) => "GRANT",
        Statement::Revoke(_) => "REVOKE",
        Statement::Deny(_) => "DENY",
        Statement::Analyze(_) => "ANALYZE",
        Statement::Vacuum(_) => "VACUUM",
        Statement::Load { .. } => "LOAD",
        Statement::Set(Set::SetRole { .. }) => "SET ROLE",
        Statement::Set(Set::SetSessionAuthorization(_)) => "SET SESSION AUTHORIZATION",
        Statement::Set(Set::SetTransaction { .. }) => "SET TRANSACTION",
        Statement::Set(_) => "SET",
        Statement::Reset(_) => "RESET",
        Statement::Discard { .. } => "DISCARD",
        Statement::StartTransaction { .. } => "BEGIN",
        Statement::Commit { .. } => "COMMIT",
        Statement::Rollback { .. } => "ROLLBACK",
        Statement::Savepoint { .. } => "SAVEPOINT",
        Statement::ReleaseSavepoint { .. } => "RELEASE",
        Statement::Prepare { .. } => "PREPARE",
        Statement::Execute { .. } => "EXECUTE",
        Statement::Deallocate { .. } => "DEALLOCATE",
        Statement::Declare { .. } => "DECLARE",
        Statement::Fetch { .. } => "FETCH",
        Statement::Close { .. } => "CLOSE",
        Statement::LISTEN { .. } => "LISTEN",
        Statement::UNLISTEN { .. } => "UNLISTEN",
        Statement::NOTIFY { .. } => "NOTIFY",
        Statement::Lock(_) => "LOCK",
        Statement::Call(_) => "CALL",
        Statement::Explain { .. } | Statement::ExplainTable { .. } => "EXPLAIN",
        statement if is_show(statement) => "SHOW",
        _ => "UNKNOWN",
    };
    kind.to_owned()
}

/// The kind of a query: what its body does (`WITH ... INSERT` is an `INSERT`).
fn query_kind(query: &Query) -> String {
    let mut body = query.body.as_ref();
    // Parenthesised queries nest only as deep as the parser's recursion limit.
    loop {
        match body {
            SetExpr::Query(inner) => body = inner.body.as_ref(),
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            SetExpr::Select(select) if select.into.is_some() => return "SELECT INTO".to_owned(),
            SetExpr::Select(_) => return "SELECT".to_owned(),
            SetExpr::Values(_) => return "VALUES".to_owned(),
            SetExpr::Table(_) => return "TABLE".to_owned(),
            SetExpr::Insert(statement)
            | SetExpr::Update(statement)
            | SetExpr::Delete(statement)
            | SetExpr::Merge(statement) => return kind_of(statement),
        }
    }
}

/// Names without duplicates, in order of first appearance.
#[derive(Default)]
struct Names {
    items: Vec<String>,
    seen: HashSet<String>,
}

impl Names {
    fn insert(&mut self, name: String) {
        if !self.seen.contains(&name) {
            self.seen.insert(name.clone());
            self.items.push(name);
        }
    }
}

/// Collects what one statement does while sqlparser walks it.
struct Collector {
    /// The class from the statements themselves.
    operation: Operation,
    /// The class from the functions called (kept apart for plain `EXPLAIN`).
    function_operation: Operation,
    /// Flags, each with whether a function call raised it.
    flags: Vec<(Flag, bool)>,
    seen_flags: HashSet<Flag>,
    read: Names,
    written: Names,
    functions: Names,
    /// Addresses of names in the tree that are not tables read (targets, functions).
    not_read: HashSet<usize>,
    /// CTE names in scope, with how many enclosing queries define each.
    ctes: HashMap<String, usize>,
    /// The CTE names each enclosing query defined, to take them out of scope again.
    cte_scopes: Vec<Vec<String>>,
}

impl Collector {
    fn new() -> Self {
        Self {
            operation: Operation::Read,
            function_operation: Operation::Read,
            flags: Vec::new(),
            seen_flags: HashSet::new(),
            read: Names::default(),
            written: Names::default(),
            functions: Names::default(),
            not_read: HashSet::new(),
            ctes: HashMap::new(),
            cte_scopes: Vec::new(),
        }
    }

    fn finish(self, kind: String) -> Classified {
        Classified {
            operation: most_sensitive(self.operation, self.function_operation),
            kind,
            tables_read: self.read.items,
            tables_written: self.written.items,
            functions: self.functions.items,
            flags: self.flags.into_iter().map(|(flag, _)| flag).collect(),
        }
    }

    /// For plain `EXPLAIN`: nothing runs, so only the functions named keep their class
    /// (a planner may evaluate some) and every table is only read.
    fn plan_only(mut self) -> Self {
        self.operation = Operation::Read;
        self.flags.retain(|(_, from_function)| *from_function);
        for name in std::mem::take(&mut self.written).items {
            self.read.insert(name);
        }
        self
    }

    fn escalate(&mut self, operation: Operation) {
        self.operation = most_sensitive(self.operation, operation);
    }

    fn flag(&mut self, flag: Flag, from_function: bool) {
        if self.seen_flags.insert(flag.clone()) {
            self.flags.push((flag, from_function));
        }
    }

    fn escalate_with(&mut self, operation: Operation, flag: Flag) {
        self.escalate(operation);
        self.flag(flag, false);
    }

    fn escalate_function(&mut self, operation: Operation, flag: Flag) {
        self.function_operation = most_sensitive(self.function_operation, operation);
        self.flag(flag, true);
    }

    /// `name` is written by the statement, not read.
    fn target(&mut self, name: &ObjectName) {
        self.not_read.insert(address(name));
        self.written.insert(object_name(name));
    }

    fn target_factor(&mut self, factor: &TableFactor) {
        if let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        {
            match only_table(name, alias.as_ref()) {
                Some(table) => {
                    self.not_read.insert(address(name));
                    self.written.insert(table);
                }
                None => self.target(name),
            }
        }
    }

    fn function(&mut self, name: &ObjectName, args: &[FunctionArg]) {
        self.not_read.insert(address(name));
        let full_name = object_name(name);
        self.functions.insert(full_name.clone());
        let last = last_part(name);
        if last == "set_config" {
            self.set_config(args);
            return;
        }
        match functions::function_class(&last) {
            Some(Operation::Dangerous) => {
                self.escalate_function(Operation::Dangerous, Flag::DangerousFunction(full_name))
            }
            Some(Operation::Admin) => {
                self.escalate_function(Operation::Admin, Flag::AdminFunction(full_name))
            }
            Some(Operation::Write) => {
                self.escalate_function(Operation::Write, Flag::WriteFunction(full_name))
            }
            Some(other) => self.function_operation = most_sensitive(self.function_operation, other),
            None => {}
        }
    }

    /// `set_config(name, value, is_local)` is a `SET`.
    fn set_config(&mut self, args: &[FunctionArg]) {
        // Only literals: a bare word here is a column, not a name.
        let literal = |arg: &FunctionArg| match arg {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr @ Expr::Value(_))) => {
                literal_text(expr)
            }
            _ => None,
        };
        match args.first().and_then(literal) {
            Some(name) => {
                let value = args.get(1).and_then(literal);
                self.parameter(&name, value.as_deref(), true);
            }
            None => self.escalate_function(
                Operation::Admin,
                Flag::AdminFunction("set_config".to_owned()),
            ),
        }
    }

    fn parameter(&mut self, name: &str, value: Option<&str>, from_function: bool) {
        let (operation, flag) = match functions::parameter_class(name, value) {
            ParameterClass::Session => return,
            ParameterClass::Role => (Operation::Dcl, Flag::RoleChange),
            ParameterClass::Server => (
                Operation::Admin,
                Flag::ServerParameter(name.to_ascii_lowercase()),
            ),
            ParameterClass::ConformingStringsOff => {
                (Operation::Dangerous, Flag::ConformingStringsOff)
            }
        };
        if from_function {
            self.escalate_function(operation, flag);
        } else {
            self.escalate_with(operation, flag);
        }
    }

    fn set(&mut self, set: &Set) {
        match set {
            Set::SingleAssignment {
                variable, values, ..
            } => {
                let value = match values.as_slice() {
                    [value] => literal_text(value),
                    _ => None,
                };
                self.parameter(&object_name(variable), value.as_deref(), false);
            }
            Set::ParenthesizedAssignments { variables, values } => {
                for (index, variable) in variables.iter().enumerate() {
                    let value = values.get(index).and_then(literal_text);
                    self.parameter(&object_name(variable), value.as_deref(), false);
                }
            }
            Set::MultipleAssignments { assignments } => {
                for assignment in assignments {
                    let value = literal_text(&assignment.value);
                    self.parameter(&object_name(&assignment.name), value.as_deref(), false);
                }
            }
            Set::SetRole { .. } | Set::SetSessionAuthorization(_) => {
                self.escalate_with(Operation::Dcl, Flag::RoleChange)
            }
            Set::SetNames { charset_name, .. } => {
                self.parameter("client_encoding", Some(&charset_name.value), false)
            }
            Set::SetTimeZone { .. } | Set::SetNamesDefault {} | Set::SetTransaction { .. } => {}
            _ => self.escalate_with(Operation::Unparsed, Flag::Unclassified),
        }
    }

    /// `UPDATE`/`DELETE` without a `WHERE`, or with a tautology, changes every row.
    fn check_where(&mut self, selection: Option<&Expr>) {
        if selection.is_none_or(|expr| is_tautology(expr, 0)) {
            self.escalate_with(Operation::Dangerous, Flag::NoWhere);
        }
    }

    fn language(&mut self, language: Option<&Ident>) {
        if let Some(language) = language {
            let name = language.value.to_ascii_lowercase();
            if !TRUSTED_LANGUAGES.contains(&name.as_str()) {
                self.escalate_with(Operation::Dangerous, Flag::UntrustedLanguage(name));
            }
        }
    }

    /// A function body given as a string is not parsed; look for sensitive names in it.
    fn function_body(&mut self, body: Option<&CreateFunctionBody>) {
        let text = match body {
            Some(CreateFunctionBody::AsBeforeOptions { body, .. })
            | Some(CreateFunctionBody::AsAfterOptions(body)) => literal_text(body),
            _ => None,
        };
        for (name, operation) in text
            .as_deref()
            .map(functions::functions_named_in)
            .unwrap_or_default()
        {
            let flag = match operation {
                Operation::Admin => Flag::AdminFunction(name.to_owned()),
                _ => Flag::DangerousFunction(name.to_owned()),
            };
            self.escalate_with(operation, flag);
        }
    }

    /// The statement-level effects of one (top-level or nested) statement.
    fn statement(&mut self, statement: &Statement) {
        match statement {
            Statement::Query(_) => {}
            Statement::Insert(insert) => {
                self.escalate(Operation::Write);
                match &insert.table {
                    TableObject::TableName(name) => self.target(name),
                    TableObject::TableFunction(function) => {
                        self.function(&function.name, function_args(&function.args))
                    }
                    _ => self.escalate_with(Operation::Unparsed, Flag::Unclassified),
                }
            }
            Statement::Update(update) => {
                self.escalate(Operation::Write);
                self.target_factor(&update.table.relation);
                self.check_where(update.selection.as_ref());
            }
            Statement::Delete(delete) => {
                self.escalate(Operation::Write);
                for name in &delete.tables {
                    self.target(name);
                }
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                for table in from {
                    self.target_factor(&table.relation);
                }
                self.check_where(delete.selection.as_ref());
            }
            Statement::Merge(merge) => {
                self.escalate(Operation::Write);
                self.target_factor(&merge.table);
            }
            Statement::Copy {
                source, to, target, ..
            } => {
                match target {
                    CopyTarget::Program { .. } => {
                        self.escalate_with(Operation::Dangerous, Flag::CopyProgram)
                    }
                    CopyTarget::File { .. } => {
                        self.escalate_with(Operation::Dangerous, Flag::CopyFile)
                    }
                    CopyTarget::Stdin | CopyTarget::Stdout => {}
                }
                if let CopySource::Table { table_name, .. } = source {
                    if *to {
                        self.not_read.insert(address(table_name));
                        self.read.insert(object_name(table_name));
                    } else {
                        self.escalate(Operation::Write);
                        self.target(table_name);
                    }
                }
            }
            Statement::Truncate(truncate) => {
                self.escalate_with(Operation::Dangerous, Flag::Truncate);
                for table in &truncate.table_names {
                    self.target(&table.name);
                }
            }
            Statement::Drop {
                object_type, names, ..
            } => {
                self.escalate_with(Operation::Dangerous, Flag::Drop);
                if matches!(
                    object_type,
                    ObjectType::Table | ObjectType::View | ObjectType::MaterializedView
                ) {
                    for name in names {
                        self.target(name);
                    }
                }
            }
            Statement::DropFunction(_)
            | Statement::DropDomain(_)
            | Statement::DropProcedure { .. }
            | Statement::DropPolicy(_)
            | Statement::DropExtension(_)
            | Statement::DropOperator(_)
            | Statement::DropOperatorFamily(_)
            | Statement::DropOperatorClass(_)
            | Statement::DropTrigger(_) => self.escalate_with(Operation::Dangerous, Flag::Drop),
            Statement::CreateTable(create) => {
                self.escalate(Operation::Ddl);
                self.target(&create.name);
            }
            Statement::CreateView(view) => {
                self.escalate(Operation::Ddl);
                self.target(&view.name);
            }
            Statement::CreateVirtualTable { name, .. } | Statement::AlterView { name, .. } => {
                self.escalate(Operation::Ddl);
                self.target(name);
            }
            Statement::CreateIndex(index) => {
                self.escalate(Operation::Ddl);
                self.target(&index.table_name);
            }
            Statement::AlterTable(alter) => {
                self.escalate(Operation::Ddl);
                self.target(&alter.name);
                for operation in &alter.operations {
                    match operation {
                        AlterTableOperation::DropColumn { .. }
                        | AlterTableOperation::DropPartitions { .. } => {
                            self.escalate_with(Operation::Dangerous, Flag::Drop)
                        }
                        AlterTableOperation::OwnerTo { .. }
                        | AlterTableOperation::EnableRowLevelSecurity
                        | AlterTableOperation::DisableRowLevelSecurity
                        | AlterTableOperation::ForceRowLevelSecurity
                        | AlterTableOperation::NoForceRowLevelSecurity => {
                            self.escalate(Operation::Dcl)
                        }
                        _ => {}
                    }
                }
            }
            Statement::AlterSchema(alter) => {
                self.escalate(Operation::Ddl);
                if alter
                    .operations
                    .iter()
                    .any(|operation| matches!(operation, AlterSchemaOperation::OwnerTo { .. }))
                {
                    self.escalate(Operation::Dcl);
                }
            }
            Statement::CreateFunction(function) => {
                self.escalate(Operation::Ddl);
                self.language(function.language.as_ref());
                self.function_body(function.function_body.as_ref());
            }
            Statement::CreateTrigger(trigger) => {
                self.escalate(Operation::Ddl);
                self.target(&trigger.table_name);
                // The trigger calls its function on every matching row from now on.
                if let Some(body) = &trigger.exec_body {
                    self.function(&body.func_desc.name, &[]);
                }
            }
            Statement::CreateProcedure { language, .. } => {
                self.escalate(Operation::Ddl);
                self.language(language.as_ref());
            }
            Statement::AlterIndex { .. }
            | Statement::AlterFunction(_)
            | Statement::AlterType(_)
            | Statement::AlterCollation(_)
            | Statement::AlterOperator(_)
            | Statement::AlterOperatorFamily(_)
            | Statement::AlterOperatorClass(_)
            | Statement::AlterTextSearch(_)
            | Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateSequence { .. }
            | Statement::CreateDomain(_)
            | Statement::CreateType { .. }
            | Statement::CreateOperator(_)
            | Statement::CreateOperatorFamily(_)
            | Statement::CreateOperatorClass(_)
            | Statement::CreateTextSearch(_)
            | Statement::CreateCollation(_)
            | Statement::Comment { .. } => self.escalate(Operation::Ddl),
            Statement::CreateExtension(_)
            | Statement::CreateServer(_)
            | Statement::Analyze(_)
            | Statement::Vacuum(_) => self.escalate(Operation::Admin),
            Statement::CreateRole(_)
            | Statement::CreateUser(_)
            | Statement::AlterRole { .. }
            | Statement::AlterUser(_)
            | Statement::CreatePolicy(_)
            | Statement::AlterPolicy(_)
            | Statement::Grant(_)
            | Statement::Revoke(_)
            | Statement::Deny(_) => self.escalate(Operation::Dcl),
            Statement::Load { .. } => self.escalate_with(Operation::Dangerous, Flag::LoadLibrary),
            Statement::Set(set) => self.set(set),
            Statement::Execute {
                name: Some(_),
                immediate: false,
                ..
            } => {}
            Statement::Reset(_)
            | Statement::Discard { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Prepare { .. }
            | Statement::Deallocate { .. }
            | Statement::Declare { .. }
            | Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::Explain { .. }
            | Statement::ExplainTable { .. } => {}
            statement if is_show(statement) => {}
            Statement::NOTIFY { .. } => self.escalate(Operation::Write),
            Statement::Lock(_) => self.escalate_with(Operation::Write, Flag::Lock),
            Statement::Call(function) => {
                self.escalate(Operation::Write);
                self.function(&function.name, function_args(&function.args));
            }
            _ => self.escalate_with(Operation::Unparsed, Flag::Unclassified),
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        self.statement(statement);
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        let mut names = Vec::new();
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                let name = ident_name(&cte.alias.name);
                *self.ctes.entry(name.clone()).or_default() += 1;
                names.push(name);
                if matches!(
                    cte.query.body.as_ref(),
                    SetExpr::Insert(_)
                        | SetExpr::Update(_)
                        | SetExpr::Delete(_)
                        | SetExpr::Merge(_)
                ) {
                    self.escalate_with(Operation::Write, Flag::ModifyingCte);
                }
            }
        }
        self.cte_scopes.push(names);
        if !query.locks.is_empty() {
            self.escalate_with(Operation::Write, Flag::Lock);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &Query) -> ControlFlow<()> {
        for name in self.cte_scopes.pop().unwrap_or_default() {
            if let Some(count) = self.ctes.get_mut(&name) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.ctes.remove(&name);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        if let Some(into) = &select.into {
            self.escalate_with(Operation::Write, Flag::SelectInto);
            for target in &into.targets {
                if let Some(name) = expr_name(target) {
                    self.written.insert(name);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            // `FROM f(...)`: a set-returning function, not a table.
            TableFactor::Table {
                name,
                args: Some(args),
                ..
            } => self.function(name, &args.args),
            TableFactor::Function { name, args, .. } => self.function(name, args),
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } if !self.not_read.contains(&address(name)) => {
                if let Some(table) = only_table(name, alias.as_ref()) {
                    self.not_read.insert(address(name));
                    self.read.insert(table);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if self.not_read.contains(&address(relation)) {
            return ControlFlow::Continue(());
        }
        if let [ObjectNamePart::Identifier(ident)] = relation.0.as_slice()
            && self.ctes.contains_key(&ident_name(ident))
        {
            return ControlFlow::Continue(());
        }
        self.read.insert(object_name(relation));
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        if let Expr::Function(function) = expr {
            self.function(&function.name, function_args(&function.args));
        }
        ControlFlow::Continue(())
    }
}

/// Orders classes by sensitivity: `unparsed` over `dangerous` over `dcl` over `admin`
/// over `ddl` over `write` over `read` (spelled out, not left to the enum's order).
pub(super) fn most_sensitive(a: Operation, b: Operation) -> Operation {
    fn rank(operation: Operation) -> u8 {
        match operation {
            Operation::Connect => 0,
            Operation::Read => 1,
            Operation::Write => 2,
            Operation::Ddl => 3,
            Operation::Admin => 4,
            Operation::Dcl => 5,
            Operation::Dangerous => 6,
            Operation::Unparsed => 7,
        }
    }
    if rank(b) > rank(a) { b } else { a }
}

/// The address of a name in the tree, to recognise it when the visitor reaches it.
pub(super) fn address(name: &ObjectName) -> usize {
    std::ptr::from_ref(name) as usize
}

fn function_args(args: &FunctionArguments) -> &[FunctionArg] {
    match args {
        FunctionArguments::List(list) => &list.args,
        FunctionArguments::None | FunctionArguments::Subquery(_) => &[],
    }
}

/// One identifier as PostgreSQL resolves it: unquoted folds to lower case.
fn ident_name(ident: &Ident) -> String {
    if ident.quote_style.is_none() {
        return ident.value.to_ascii_lowercase();
    }
    let plain = ident
        .value
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_lowercase() || first == '_' || !first.is_ascii())
        && ident.value.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$' || !c.is_ascii()
        });
    if plain {
        ident.value.clone()
    } else {
        format!("\"{}\"", ident.value.replace('"', "\"\""))
    }
}

/// A qualified name, each part as [`ident_name`] gives it, joined with dots.
pub(super) fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => ident_name(ident),
            ObjectNamePart::Function(_) => "?".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The table behind `FROM ONLY t`, which sqlparser reads as table `ONLY` aliased `t`.
/// Unquoted `only` is a reserved word in PostgreSQL, never a table name.
fn only_table(name: &ObjectName, alias: Option<&TableAlias>) -> Option<String> {
    match (name.0.as_slice(), alias) {
        ([ObjectNamePart::Identifier(ident)], Some(alias))
            if ident.quote_style.is_none() && ident.value.eq_ignore_ascii_case("only") =>
        {
            Some(ident_name(&alias.name))
        }
        _ => None,
    }
}

/// A function's own name, lower case whatever its quoting, for matching lists.
fn last_part(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(ident)) => ident.value.to_ascii_lowercase(),
        _ => String::new(),
    }
}

/// The name a `SELECT ... INTO` target expression spells.
fn expr_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident_name(ident)),
        Expr::CompoundIdentifier(idents) => {
            Some(idents.iter().map(ident_name).collect::<Vec<_>>().join("."))
        }
        _ => None,
    }
}

thread_local! {
    /// Set when classifying on this thread read a literal's value (see
    /// [`reading_literals`]).
    static LITERAL_READ: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `classify` and says whether it read the value of any literal: a classification
/// that did may differ for another statement of the same shape, so it is not shared
/// (see `super::cache`).
pub(super) fn reading_literals<T>(classify: impl FnOnce() -> T) -> (T, bool) {
    LITERAL_READ.with(|read| read.set(false));
    let result = classify();
    (result, LITERAL_READ.with(std::cell::Cell::get))
}

pub(super) fn note_literal_read() {
    LITERAL_READ.with(|read| read.set(true));
}

/// The text of a literal or bare word (`on`, `'UTF8'`, `3`, `true`).
fn literal_text(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(value) => {
            note_literal_read();
            match &value.value {
                Value::SingleQuotedString(text)
                | Value::EscapedStringLiteral(text)
                | Value::UnicodeStringLiteral(text)
                | Value::Number(text, _) => Some(text.clone()),
                Value::DollarQuotedString(dollar) => Some(dollar.value.clone()),
                Value::Boolean(value) => Some(value.to_string()),
                _ => None,
            }
        }
        Expr::Identifier(ident) => Some(ident.value.clone()),
        _ => None,
    }
}

/// Whether an option argument says "false" (`EXPLAIN (ANALYZE false)`).
fn is_false(expr: &Expr) -> bool {
    literal_text(expr).is_some_and(|text| {
        matches!(
            text.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0" | "f" | "n" | "of"
        )
    })
}

/// Conditions true for every row: `true`, `1 = 1`, `'a' = 'a'`, `id = id`, and `OR`/`AND`
/// of such. Not exhaustive; it catches the habitual ways to write "every row".
fn is_tautology(expr: &Expr, depth: usize) -> bool {
    if depth > TAUTOLOGY_DEPTH {
        return false;
    }
    match expr {
        Expr::Value(value) => matches!(value.value, Value::Boolean(true)),
        Expr::Nested(inner) | Expr::IsTrue(inner) | Expr::IsNotFalse(inner) => {
            is_tautology(inner, depth + 1)
        }
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Or => is_tautology(left, depth + 1) || is_tautology(right, depth + 1),
            BinaryOperator::And => is_tautology(left, depth + 1) && is_tautology(right, depth + 1),
            BinaryOperator::Eq | BinaryOperator::LtEq | BinaryOperator::GtEq => {
                // `1 = 1` against `1 = 2`: only two literals compare by value.
                if matches!(
                    (left.as_ref(), right.as_ref()),
                    (Expr::Value(_), Expr::Value(_))
                ) {
                    note_literal_read();
                }
                left == right
                    && matches!(
                        left.as_ref(),
                        Expr::Value(_) | Expr::Identifier(_) | Expr::CompoundIdentifier(_)
                    )
            }
            _ => false,
        },
        _ => false,
    }
}

/// Every form of `SHOW`: read-only, and named `SHOW` in records.
pub(super) fn is_show(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowStatus { .. }
            | Statement::ShowCreate { .. }
            | Statement::ShowColumns { .. }
            | Statement::ShowTables { .. }
            | Statement::ShowFunctions { .. }
            | Statement::ShowDatabases { .. }
            | Statement::ShowSchemas { .. }
            | Statement::ShowViews { .. }
            | Statement::ShowCollation { .. }
            | Statement::ShowCatalogs { .. }
            | Statement::ShowObjects(_)
            | Statement::ShowCharset(_)
            | Statement::ShowProcessList { .. }
    )
}
