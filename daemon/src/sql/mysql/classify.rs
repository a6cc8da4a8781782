//! Classification of one statement sqlparser parsed from canonical MySQL text.
//!
//! Like the PostgreSQL classifier, sqlparser's visitor walks the whole tree and a
//! [`Collector`] notes every statement, relation and function in it; the MySQL rules
//! differ in names (MySQL identifiers keep their case; quoting does not change them), in
//! `SELECT ... INTO` (user variables, not a new table), in functions and in the statements
//! that exist at all.

use std::{
    collections::{HashMap, HashSet},
    ops::ControlFlow,
};

use sqlparser::ast::{
    AlterTableOperation, BinaryOperator, Expr, FromTable, Ident, ObjectName, ObjectNamePart, Query,
    SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Value, Visit, Visitor,
};

/// Shared with the PostgreSQL classifier; the other MySQL modules reach them here.
pub(super) use super::super::classify::most_sensitive;
use super::super::classify::{address, is_show, note_literal_read};
use super::super::{Classified, Flag};
use crate::policy::Operation;

/// Functions whose call alone gives a statement a class. Matched on the function's last
/// name part, any case.
pub(super) const MYSQL_FUNCTIONS: &[(&str, Operation)] = &[
    // Reads a server file.
    ("load_file", Operation::Dangerous),
    // lib_mysqludf_sys: runs shell commands once installed.
    ("sys_exec", Operation::Dangerous),
    ("sys_eval", Operation::Dangerous),
    // MariaDB sequences.
    ("nextval", Operation::Write),
    ("setval", Operation::Write),
];

/// How far `WHERE` clauses are searched for tautologies.
const TAUTOLOGY_DEPTH: usize = 16;

/// `db.table` as written (MySQL keeps each part's case; see `ident_name`).
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

/// One identifier as written, without quotes unless it needs them to read back.
pub(super) fn ident_name(ident: &Ident) -> String {
    quote_if_needed(&ident.value)
}

pub(super) fn quote_if_needed(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        format!("`{}`", name.replace('`', "``"))
    }
}

/// Classifies one parsed statement. `kind` overrides the statement's own kind.
pub(super) fn statement(statement: &Statement) -> Classified {
    let mut collector = Collector::default();
    let _ = statement.visit(&mut collector);
    collector.finish(kind_of(statement))
}

/// What a statement is, for [`Classified::kind`].
fn kind_of(statement: &Statement) -> String {
    let kind = match statement {
        Statement::Query(query) => return query_kind(query),
        Statement::Insert(insert) if insert.replace_into => "REPLACE",
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Truncate(_) => "TRUNCATE",
        Statement::Drop { object_type, .. } => return format!("DROP {object_type}"),
        Statement::DropFunction(_) => "DROP FUNCTION",
        Statement::DropProcedure { .. } => "DROP PROCEDURE",
        Statement::DropTrigger(_) => "DROP TRIGGER",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateView(_) => "CREATE VIEW",
        Statement::CreateIndex(_) => "CREATE INDEX",
        Statement::CreateSchema { .. } => "CREATE SCHEMA",
        Statement::CreateDatabase { .. } => "CREATE DATABASE",
        Statement::CreateSequence { .. } => "CREATE SEQUENCE",
        Statement::CreateRole(_) => "CREATE ROLE",
        Statement::CreateServer(_) => "CREATE SERVER",
        Statement::AlterTable(_) => "ALTER TABLE",
        Statement::AlterView { .. } => "ALTER VIEW",
        Statement::AlterIndex { .. } => "ALTER INDEX",
        Statement::AlterSchema(_) => "ALTER SCHEMA",
        Statement::RenameTable(_) => "RENAME TABLE",
        Statement::Grant(_) => "GRANT",
        Statement::Revoke(_) => "REVOKE",
        Statement::StartTransaction { .. } => "BEGIN",
        Statement::Commit { .. } => "COMMIT",
        Statement::Rollback { .. } => "ROLLBACK",
        Statement::Savepoint { .. } => "SAVEPOINT",
        Statement::ReleaseSavepoint { .. } => "RELEASE",
        Statement::LockTables { .. } => "LOCK TABLES",
        Statement::UnlockTables => "UNLOCK TABLES",
        Statement::Call(_) => "CALL",
        Statement::ExplainTable { .. } => "DESCRIBE",
        Statement::Use(_) => "USE",
        statement if is_show(statement) => "SHOW",
        _ => "UNKNOWN",
    };
    kind.to_owned()
}

/// The kind of a query: what its body does.
fn query_kind(query: &Query) -> String {
    let mut body = query.body.as_ref();
    loop {
        match body {
            SetExpr::Query(inner) => body = inner.body.as_ref(),
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
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
        if self.seen.insert(name.clone()) {
            self.items.push(name);
        }
    }
}

/// Collects what one statement does while sqlparser walks it.
#[derive(Default)]
struct Collector {
    operation: Option<Operation>,
    flags: Vec<Flag>,
    read: Names,
    written: Names,
    functions: Names,
    /// Addresses of names in the tree that are not tables read (targets, functions).
    not_read: HashSet<usize>,
    /// CTE names in scope, with how many enclosing queries define each.
    ctes: HashMap<String, usize>,
    cte_scopes: Vec<Vec<String>>,
}

impl Collector {
    fn finish(self, kind: String) -> Classified {
        Classified {
            operation: self.operation.unwrap_or(Operation::Read),
            kind,
            tables_read: self.read.items,
            tables_written: self.written.items,
            functions: self.functions.items,
            flags: self.flags,
        }
    }

    fn escalate(&mut self, operation: Operation) {
        self.operation = Some(most_sensitive(
            self.operation.unwrap_or(Operation::Read),
            operation,
        ));
    }

    fn escalate_with(&mut self, operation: Operation, flag: Flag) {
        self.escalate(operation);
        if !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }

    fn target(&mut self, name: &ObjectName) {
        self.not_read.insert(address(name));
        self.written.insert(object_name(name));
    }

    fn target_tables(&mut self, tables: &TableWithJoins) {
        for factor in
            std::iter::once(&tables.relation).chain(tables.joins.iter().map(|join| &join.relation))
        {
            if let TableFactor::Table {
                name, args: None, ..
            } = factor
            {
                self.target(name);
            }
        }
    }

    fn function(&mut self, name: &ObjectName) {
        self.not_read.insert(address(name));
        let full_name = object_name(name).to_ascii_lowercase();
        self.functions.insert(full_name.clone());
        let last = match name.0.last() {
            Some(ObjectNamePart::Identifier(ident)) => ident.value.to_ascii_lowercase(),
            _ => String::new(),
        };
        match MYSQL_FUNCTIONS.iter().find(|(listed, _)| *listed == last) {
            Some((_, Operation::Dangerous)) => {
                self.escalate_with(Operation::Dangerous, Flag::DangerousFunction(full_name))
            }
            Some((_, Operation::Write)) => {
                self.escalate_with(Operation::Write, Flag::WriteFunction(full_name))
            }
            Some((_, other)) => self.escalate(*other),
            None => {}
        }
    }

    /// `UPDATE`/`DELETE` without a `WHERE`, or with a tautology, changes every row.
    fn check_where(&mut self, selection: Option<&Expr>) {
        if selection.is_none_or(|expr| is_tautology(expr, 0)) {
            self.escalate_with(Operation::Dangerous, Flag::NoWhere);
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
                    _ => self.escalate_with(Operation::Unparsed, Flag::Unclassified),
                }
            }
            Statement::Update(update) => {
                self.escalate(Operation::Write);
                // Multi-table UPDATE may assign to any table it joins.
                self.target_tables(&update.table);
                self.check_where(update.selection.as_ref());
            }
            Statement::Delete(delete) => {
                self.escalate(Operation::Write);
                let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) =
                    &delete.from;
                if delete.tables.is_empty() {
                    for tables in from {
                        self.target_tables(tables);
                    }
                } else {
                    // `DELETE a, b FROM ...`: the named tables (or aliases) lose rows.
                    for name in &delete.tables {
                        self.target(name);
                    }
                }
                self.check_where(delete.selection.as_ref());
            }
            Statement::Truncate(truncate) => {
                self.escalate_with(Operation::Dangerous, Flag::Truncate);
                for table in &truncate.table_names {
                    self.target(&table.name);
                }
            }
            Statement::Drop { names, .. } => {
                self.escalate_with(Operation::Dangerous, Flag::Drop);
                for name in names {
                    self.target(name);
                }
            }
            Statement::DropFunction(_)
            | Statement::DropProcedure { .. }
            | Statement::DropTrigger(_) => self.escalate_with(Operation::Dangerous, Flag::Drop),
            Statement::CreateTable(create) => {
                self.escalate(Operation::Ddl);
                self.target(&create.name);
            }
            Statement::CreateView(view) => {
                self.escalate(Operation::Ddl);
                self.target(&view.name);
            }
            Statement::AlterView { name, .. } => {
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
                    if matches!(
                        operation,
                        AlterTableOperation::DropColumn { .. }
                            | AlterTableOperation::DropPartitions { .. }
                    ) {
                        self.escalate_with(Operation::Dangerous, Flag::Drop);
                    }
                }
            }
            Statement::RenameTable(renames) => {
                self.escalate(Operation::Ddl);
                for rename in renames {
                    self.target(&rename.old_name);
                    self.target(&rename.new_name);
                }
            }
            Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateSequence { .. }
            | Statement::AlterIndex { .. }
            | Statement::AlterSchema(_) => self.escalate(Operation::Ddl),
            Statement::CreateServer(_) => self.escalate(Operation::Admin),
            Statement::CreateRole(_) | Statement::Grant(_) | Statement::Revoke(_) => {
                self.escalate(Operation::Dcl)
            }
            Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::UnlockTables
            | Statement::ExplainTable { .. } => {}
            statement if is_show(statement) => {}
            Statement::LockTables { .. } => self.escalate_with(Operation::Write, Flag::Lock),
            Statement::Call(function) => {
                self.escalate(Operation::Write);
                self.function(&function.name);
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

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => self.function(name),
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
            self.function(&function.name);
        }
        ControlFlow::Continue(())
    }
}

/// Conditions true for every row: `true`, `1 = 1`, `id = id`, and `OR`/`AND` of such.
fn is_tautology(expr: &Expr, depth: usize) -> bool {
    if depth > TAUTOLOGY_DEPTH {
        return false;
    }
    match expr {
        Expr::Value(value) => {
            // The value decides: such a classification is not shared by shape.
            note_literal_read();
            match &value.value {
                Value::Boolean(true) => true,
                // MySQL reads a non-zero number as true, and a string by its numeric prefix
                // (`'1'`, `'1abc'`).
                Value::Number(number, _) => number.parse::<f64>().is_ok_and(|n| n != 0.0),
                Value::SingleQuotedString(text) => {
                    let text = text.trim_start();
                    let prefix = text
                        .char_indices()
                        .take_while(|&(index, c)| {
                            c.is_ascii_digit() || c == '.' || (index == 0 && matches!(c, '-' | '+'))
                        })
                        .count();
                    text.get(..prefix)
                        .and_then(|number| number.parse::<f64>().ok())
                        .is_some_and(|n| n != 0.0)
                }
                _ => false,
            }
        }
        Expr::Nested(inner) | Expr::IsTrue(inner) | Expr::IsNotFalse(inner) => {
            is_tautology(inner, depth + 1)
        }
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::Or => is_tautology(left, depth + 1) || is_tautology(right, depth + 1),
            BinaryOperator::And => is_tautology(left, depth + 1) && is_tautology(right, depth + 1),
            BinaryOperator::Eq | BinaryOperator::LtEq | BinaryOperator::GtEq => {
                // `1 = 1` against `1 = 2`; a literal against a column is never equal.
                if matches!(left.as_ref(), Expr::Value(_))
                    && matches!(right.as_ref(), Expr::Value(_))
                {
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
