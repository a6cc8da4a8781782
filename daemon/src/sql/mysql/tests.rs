use super::*;
use crate::{policy::Operation, sql::Flag};

fn mariadb() -> MysqlContext {
    MysqlContext {
        server: ServerFlavor::from_greeting("5.5.5-10.11.19-MariaDB-0+deb12u1"),
        ..MysqlContext::default()
    }
}

fn classify_in(sql: &str, context: &MysqlContext) -> Vec<MysqlStatement> {
    classify_mysql(sql.as_bytes(), context)
}

fn classes_in(sql: &str, context: &MysqlContext) -> Vec<(Operation, String)> {
    classify_in(sql, context)
        .into_iter()
        .map(|statement| (statement.classified.operation, statement.classified.kind))
        .collect()
}

fn one(sql: &str) -> Classified {
    let mut statements = classify_in(sql, &mariadb());
    assert_eq!(statements.len(), 1, "{sql}: {statements:#?}");
    statements.remove(0).classified
}

#[track_caller]
fn assert_class(sql: &str, expected: Operation) {
    let classified = one(sql);
    assert_eq!(classified.operation, expected, "{sql}: {classified:#?}");
}

fn no_backslash_escapes() -> MysqlContext {
    MysqlContext {
        sql_mode: parse_sql_mode("STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES"),
        ..mariadb()
    }
}

// --- The field notes' bypasses ---------------------------------------------------------

#[test]
fn mariadb_versioned_comment_is_executed_not_dropped() {
    let statements = classes_in("/*M!100100 DROP TABLE t */", &mariadb());
    assert_eq!(
        statements,
        vec![(Operation::Dangerous, "DROP TABLE".to_owned())]
    );
    let classified = one("/*M!100100 DROP TABLE t */");
    assert_eq!(classified.tables_written, vec!["t"]);
}

#[test]
fn column_smuggled_in_a_mariadb_comment_is_seen() {
    let classified = one("SELECT 1 /*M!100100 ,(SELECT COUNT(*) FROM mysql.user) */");
    assert_eq!(classified.operation, Operation::Dangerous);
    assert!(classified.tables_read.contains(&"mysql.user".to_owned()));
    assert!(
        classified
            .flags
            .contains(&Flag::SystemSchema("mysql.user".to_owned()))
    );
}

#[test]
fn no_backslash_escapes_smuggle_is_two_statements() {
    let sql = r"SELECT 'a\' ; DROP TABLE x; -- '";
    let statements = classes_in(sql, &no_backslash_escapes());
    assert_eq!(
        statements,
        vec![
            (Operation::Read, "SELECT".to_owned()),
            (Operation::Dangerous, "DROP TABLE".to_owned()),
        ]
    );
    // Without the mode the same text is one string: one SELECT.
    assert_eq!(
        classes_in(sql, &mariadb()),
        vec![(Operation::Read, "SELECT".to_owned())]
    );
}

#[test]
fn sql_mode_changed_in_the_same_text_is_followed() {
    // A literal mode: the rest is lexed under it.
    let sql = r"SET sql_mode = 'NO_BACKSLASH_ESCAPES'; SELECT 'a\' ; DROP TABLE x; -- '";
    let statements = classes_in(sql, &mariadb());
    assert_eq!(
        statements,
        vec![
            (Operation::Read, "SET".to_owned()),
            (Operation::Read, "SELECT".to_owned()),
            (Operation::Dangerous, "DROP TABLE".to_owned()),
        ]
    );
    // A computed mode: the rest cannot be read.
    let sql = r"SET sql_mode=CONCAT(@@sql_mode,',NO_BACKSLASH_ESCAPES'); SELECT 'a\' ; DROP TABLE x; -- '";
    let statements = classify_in(sql, &mariadb());
    assert_eq!(statements.len(), 2, "{statements:#?}");
    assert_eq!(statements[0].session, vec![SessionChange::SqlMode(None)]);
    assert_eq!(statements[1].classified.operation, Operation::Unparsed);
}

#[test]
fn ansi_quotes_turns_double_quotes_into_identifiers() {
    let ansi = MysqlContext {
        sql_mode: parse_sql_mode("ANSI"),
        ..mariadb()
    };
    let classified = classify_in(r#"SELECT * FROM "secret""#, &ansi);
    assert_eq!(classified[0].classified.tables_read, vec!["secret"]);
    // Without it, the same text is a string, and `"a;b"` hides no statement either way.
    assert_eq!(
        classes_in(r#"SELECT "a; DROP TABLE t""#, &mariadb()),
        vec![(Operation::Read, "SELECT".to_owned())]
    );
    // A double-quoted identifier under ANSI_QUOTES cannot hide a `'`.
    let sql = r#"SELECT "it's" FROM t; DROP TABLE t; -- '"#;
    assert_eq!(
        classes_in(sql, &ansi),
        vec![
            (Operation::Read, "SELECT".to_owned()),
            (Operation::Dangerous, "DROP TABLE".to_owned()),
        ]
    );
}

#[test]
fn unsupported_sql_modes_make_everything_unparsed() {
    let oracle = MysqlContext {
        sql_mode: parse_sql_mode("PIPES_AS_CONCAT,ANSI_QUOTES,ORACLE"),
        ..mariadb()
    };
    assert_eq!(classes_in("SELECT 1", &oracle)[0].0, Operation::Unparsed);
}

// --- Lexing: fail closed ---------------------------------------------------------------

#[test]
fn uncertain_text_is_unparsed() {
    for sql in [
        "SELECT 'unterminated",
        "SELECT `unterminated",
        "SELECT 1 /* unterminated",
        "SELECT 1 /* nested /* */ */",
        "SELECT 1 /*! 2 /* x */ */",
        "SELECT 1 /*!40101 ; DROP TABLE t */",
        "SELECT 1 /*!40101 -- x */",
        "SELECT 1 /*!40101 # x */",
        "SELECT 1 /*!40101 , '*/' */",
        "SELECT 1 */",
        "SELECT 1 /*!1234 x */",
        "SELECT \\N",
        "SELECT 1\u{0}",
        "SELECT `a` FROM 😀t",
        "SELECT x'4' ",
    ] {
        let statements = classify_in(sql, &mariadb());
        assert!(
            statements
                .iter()
                .any(|statement| statement.classified.operation == Operation::Unparsed),
            "{sql:?}: {statements:#?}"
        );
    }
    // Invalid UTF-8.
    let statements = classify_mysql(b"SELECT '\xff'", &mariadb());
    assert_eq!(statements[0].classified.operation, Operation::Unparsed);
}

#[test]
fn backslash_trailing_charsets_fail_closed_on_non_ascii() {
    let gbk = MysqlContext {
        charset: "gbk".to_owned(),
        ..mariadb()
    };
    // 0xBF 0x5C is one GBK character: the server sees no escape where UTF-8 readers do.
    let statements = classify_mysql(b"SELECT '\xbf\\' ; DROP TABLE t; -- '", &gbk);
    assert_eq!(statements[0].classified.operation, Operation::Unparsed);
    assert_eq!(classes_in("SELECT 1", &gbk)[0].0, Operation::Read);
    // Switching to such a charset in the same text makes non-ASCII rest unparsed.
    let statements = classify_in("SET NAMES gbk; SELECT 'é'", &mariadb());
    assert_eq!(statements[1].classified.operation, Operation::Unparsed);
}

#[test]
fn comments_follow_the_server_rules() {
    // `--` needs a space (or control character) after it.
    assert_eq!(one("SELECT 1--1").operation, Operation::Read);
    assert_eq!(
        classes_in("SELECT 1 --\tx\n; DROP TABLE t", &mariadb()),
        vec![
            (Operation::Read, "SELECT".to_owned()),
            (Operation::Dangerous, "DROP TABLE".to_owned()),
        ]
    );
    assert_eq!(
        classes_in("SELECT 1 # ; DROP TABLE t\n", &mariadb()),
        vec![(Operation::Read, "SELECT".to_owned())]
    );
    // Only comments: nothing to judge.
    assert!(classify_in("/* x */ -- y\n;", &mariadb()).is_empty());
    // Strings hide comment markers and semicolons.
    assert_eq!(
        classes_in(
            "SELECT '-- ;', \"/*\", 'a''b;', 'c\\';d' FROM t",
            &mariadb()
        )
        .len(),
        1
    );
}

#[test]
fn versioned_comments_follow_the_server_version() {
    // MariaDB skips MySQL 5.7+ versions and versions newer than itself.
    assert_eq!(
        one("DELETE FROM t /*!50700 WHERE id = 1 */").operation,
        Operation::Dangerous
    );
    assert_eq!(
        one("DELETE FROM t /*!40101 WHERE id = 1 */").operation,
        Operation::Write
    );
    assert_eq!(
        one("DELETE FROM t /*M!999999 WHERE id = 1 */").operation,
        Operation::Dangerous
    );
    // MySQL reads /*M! as a comment and six digits ambiguously.
    let mysql = MysqlContext {
        server: ServerFlavor::from_greeting("8.0.36"),
        ..MysqlContext::default()
    };
    assert_eq!(classes_in("/*M!100100 DROP TABLE t */", &mysql), vec![]);
    assert_eq!(
        classes_in("SELECT 1 /*!50700 , 2 */", &mysql)[0].0,
        Operation::Read
    );
    assert_eq!(
        classes_in("SELECT 1 /*!100100 , 2 */", &mysql)[0].0,
        Operation::Unparsed
    );
    // Unknown server: both readings, the most sensitive wins.
    let unknown = MysqlContext::default();
    assert_eq!(
        classes_in("DELETE FROM t /*!50700 WHERE id = 1 */", &unknown)[0].0,
        Operation::Dangerous
    );
    assert_eq!(
        classes_in("/*M!100100 DROP TABLE t */", &unknown)[0].0,
        Operation::Dangerous
    );
}

#[test]
fn server_flavor_from_greetings() {
    assert_eq!(
        ServerFlavor::from_greeting("5.5.5-10.11.19-MariaDB-0+deb12u1"),
        Some(ServerFlavor::MariaDb(101119))
    );
    assert_eq!(
        ServerFlavor::from_greeting("11.4.2-MariaDB"),
        Some(ServerFlavor::MariaDb(110402))
    );
    assert_eq!(
        ServerFlavor::from_greeting("8.0.36-0ubuntu0.22.04.1"),
        Some(ServerFlavor::MySql(80036))
    );
    assert_eq!(ServerFlavor::from_greeting("garbage"), None);
}

// --- Classes ---------------------------------------------------------------------------

#[test]
fn dangerous_statements() {
    for sql in [
        "SELECT a INTO OUTFILE '/tmp/x' FROM t",
        "SELECT a FROM t INTO DUMPFILE '/tmp/x'",
        "SELECT LOAD_FILE('/etc/passwd')",
        "SELECT * FROM t WHERE a = load_file('/etc/shadow')",
        "LOAD DATA INFILE '/etc/passwd' INTO TABLE t",
        "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t",
        "LOAD XML INFILE '/x.xml' INTO TABLE t",
        "CREATE FUNCTION sys_exec RETURNS INTEGER SONAME 'lib_mysqludf_sys.so'",
        "CREATE AGGREGATE FUNCTION f RETURNS STRING SONAME 'udf.so'",
        "INSTALL PLUGIN x SONAME 'x.so'",
        "INSTALL SONAME 'auth_ed25519'",
        "UNINSTALL PLUGIN x",
        "SET GLOBAL general_log_file = '/var/www/shell.php'",
        "SET @@global.general_log = 1",
        "SET PERSIST max_connections = 10",
        "SET autocommit = 1, @@GLOBAL.max_connections = 5",
        "SET GLOBAL TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "DROP USER u",
        "DROP ROLE r",
        "SHUTDOWN",
        "KILL USER bob",
        "KILL (SELECT 1)",
        "CHANGE MASTER TO MASTER_HOST='evil'",
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST='evil'",
        "START SLAVE",
        "STOP REPLICA",
        "PURGE BINARY LOGS TO 'mysql-bin.000010'",
        "BINLOG 'base64'",
        "RESET MASTER",
        "SHOW BINLOG EVENTS",
        "HANDLER t OPEN",
        "SELECT user, authentication_string FROM mysql.user",
        "SELECT * FROM `mysql`.`global_priv`",
        "UPDATE mysql.user SET plugin = '' WHERE user = 'root'",
        "SHOW CREATE USER root",
        "USE mysql",
        "CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET NEW.a = 1",
        "CREATE PROCEDURE p() SELECT 1",
        "CREATE DEFINER=`root`@`localhost` EVENT e ON SCHEDULE EVERY 1 HOUR DO DELETE FROM t",
        "CREATE TABLE t (a INT) ENGINE=CONNECT TABLE_TYPE=CSV FILE_NAME='/etc/passwd'",
        "CREATE TABLE t (a INT) DATA DIRECTORY='/tmp'",
        "DROP TABLE t",
        "DROP DATABASE d",
        "TRUNCATE TABLE db.t",
        "DELETE FROM t",
        "UPDATE t SET a = 1",
        "UPDATE t SET a = 1 WHERE 1",
        "DELETE FROM t WHERE '1abc'",
        "DELETE FROM t WHERE id = id OR 2",
        "ALTER TABLE t DROP COLUMN c",
        "ANALYZE DELETE FROM t",
    ] {
        assert_class(sql, Operation::Dangerous);
    }
}

#[test]
fn dcl_admin_ddl_statements() {
    for sql in [
        "GRANT SELECT ON db.* TO 'u'@'h'",
        "REVOKE ALL ON *.* FROM u",
        "CREATE USER 'u'@'h' IDENTIFIED BY 'p'",
        "ALTER USER u IDENTIFIED BY 'x'",
        "RENAME USER a TO b",
        "CREATE ROLE r",
        "SET ROLE r",
        "SET DEFAULT ROLE r FOR u",
        "SET PASSWORD = PASSWORD('x')",
        "SET PASSWORD FOR u = 'x'",
    ] {
        assert_class(sql, Operation::Dcl);
    }
    for sql in [
        "KILL 5",
        "KILL QUERY 5",
        "FLUSH PRIVILEGES",
        "OPTIMIZE TABLE t",
        "ANALYZE TABLE t",
        "CHECK TABLE t",
        "REPAIR TABLE t",
        "SET @@SESSION.SQL_LOG_BIN = 0",
        "SET sql_log_off = 1",
        "CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (HOST 'x')",
        "RESET QUERY CACHE",
    ] {
        assert_class(sql, Operation::Admin);
    }
    for sql in [
        "CREATE TABLE t (a INT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE DATABASE d",
        "ALTER TABLE t ADD COLUMN c INT",
        "ALTER TABLE `t` DISABLE KEYS",
        "RENAME TABLE a TO b",
        "CREATE INDEX i ON t (a)",
        "CREATE ALGORITHM=UNDEFINED DEFINER=`root`@`localhost` SQL SECURITY DEFINER VIEW v AS SELECT a FROM t",
    ] {
        assert_class(sql, Operation::Ddl);
    }
}

#[test]
fn kill_reports_its_target() {
    let statements = classify_in("KILL QUERY 42", &mariadb());
    assert_eq!(statements[0].kill, Some((42, true)));
    let statements = classify_in("KILL CONNECTION 7", &mariadb());
    assert_eq!(statements[0].kill, Some((7, false)));
    let statements = classify_in("KILL 7", &mariadb());
    assert_eq!(statements[0].kill, Some((7, false)));
}

#[test]
fn reads_and_writes() {
    for sql in [
        "SELECT @@version",
        "SELECT @@session.tx_isolation",
        "SELECT a INTO @x FROM t",
        "SELECT a, b FROM t WHERE id = 1 INTO @x, @y",
        "SELECT * FROM information_schema.tables",
        "SHOW VARIABLES LIKE 'x%'",
        "SHOW GRANTS FOR 'r'@'h'",
        "SHOW FULL PROCESSLIST",
        "SHOW ENGINE INNODB STATUS",
        "SHOW CREATE TABLE t",
        "DESCRIBE t",
        "EXPLAIN SELECT * FROM t",
        "BEGIN",
        "START TRANSACTION READ ONLY",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT a",
        "RELEASE SAVEPOINT a",
        "XA START 'x'",
        "UNLOCK TABLES",
        "USE shop",
        "DO 1",
        "HELP 'select'",
        "SELECT 1 FROM DUAL",
        "SELECT `a`.`b` FROM `db`.`t` AS `a`",
        "SELECT _utf8mb4'abc', _binary 'x', N'y', X'41', 0x41, B'01'",
    ] {
        assert_class(sql, Operation::Read);
    }
    for sql in [
        "INSERT INTO t VALUES (1)",
        "REPLACE INTO t VALUES (1)",
        "INSERT INTO t SET a = 1",
        "INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)",
        "UPDATE t SET a = 1 WHERE id = 2",
        "DELETE FROM t WHERE id = 2",
        "DELETE FROM t WHERE 'abc'",
        "DELETE t1 FROM t1 JOIN t2 ON t1.a = t2.a WHERE t2.b = 1",
        "UPDATE t1 JOIN t2 ON t1.a = t2.a SET t1.b = 2 WHERE t2.c = 1",
        "CALL p(1)",
        "LOCK TABLES t READ, u WRITE",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t LOCK IN SHARE MODE",
        "SELECT NEXTVAL(s)",
    ] {
        assert_class(sql, Operation::Write);
    }
}

#[test]
fn unparsed_statements() {
    for sql in [
        "BEGIN NOT ATOMIC SELECT 1; END",
        "lbl: LOOP SELECT 1; END LOOP",
        "IF 1 THEN DROP TABLE t; END IF",
        "CREATE PROCEDURE p() BEGIN SELECT 1; END",
        "PREPARE s FROM @sql",
        "EXECUTE IMMEDIATE CONCAT('DROP ', 'TABLE t')",
        "FROBNICATE THE DATABASE",
        "SELECT FROM WHERE",
    ] {
        let statements = classify_in(sql, &mariadb());
        assert!(
            statements
                .iter()
                .any(|statement| statement.classified.operation == Operation::Unparsed),
            "{sql}: {statements:#?}"
        );
    }
}

#[test]
fn tables_are_schema_qualified_as_written() {
    let classified =
        one("INSERT INTO shop.Orders (id) SELECT id FROM `Shop`.`Cart` c JOIN t2 ON 1");
    assert_eq!(classified.tables_written, vec!["shop.Orders"]);
    assert_eq!(classified.tables_read, vec!["Shop.Cart", "t2"]);
    let classified = one("DELETE t1 FROM t1 JOIN t2 ON t1.a = t2.a WHERE t2.b = 1");
    assert_eq!(classified.tables_written, vec!["t1"]);
    assert!(classified.tables_read.contains(&"t2".to_owned()));
    // In the mysql schema, bare names are mysql's.
    let context = MysqlContext {
        schema: Some("mysql".to_owned()),
        ..mariadb()
    };
    assert_eq!(
        classes_in("SELECT * FROM user", &context)[0].0,
        Operation::Dangerous
    );
    // USE in the same text counts for what follows.
    assert_eq!(
        classes_in("USE mysql; SELECT * FROM user", &mariadb())[1].0,
        Operation::Dangerous
    );
}

// --- Prepared statements ---------------------------------------------------------------

#[test]
fn prepare_classifies_its_text_and_execute_uses_it() {
    let mut names = PreparedNames::default();
    let statements = classify_in(
        "PREPARE s FROM 'DELETE FROM t'; EXECUTE s; PREPARE r FROM \"SELECT ? FROM t\"",
        &mariadb(),
    );
    assert_eq!(statements.len(), 3);
    assert_eq!(statements[0].classified.operation, Operation::Dangerous);
    let (name, prepared) = statements[0].prepares.clone().expect("prepares");
    assert_eq!(name, "s");
    assert_eq!(prepared[0].kind, "DELETE");
    names.record(&statements[0]);
    let mut execute = statements[1].clone();
    assert_eq!(execute.executes.as_deref(), Some("s"));
    names.resolve(&mut execute);
    assert_eq!(execute.classified.operation, Operation::Dangerous);
    assert_eq!(execute.classified.kind, "EXECUTE DELETE");
    assert_eq!(statements[2].classified.operation, Operation::Read);

    // Unknown names are unparsed; DEALLOCATE forgets.
    let mut unknown = classify_in("EXECUTE S USING @a", &mariadb()).remove(0);
    let deallocate = classify_in("DEALLOCATE PREPARE S", &mariadb()).remove(0);
    assert_eq!(deallocate.deallocates.as_deref(), Some("s"));
    names.record(&deallocate);
    names.resolve(&mut unknown);
    assert_eq!(unknown.classified.operation, Operation::Unparsed);
    // PREPARE and EXECUTE in one text: the EXECUTE gets the class prepared before it.
    let mut statements = classify_in("PREPARE d FROM 'DROP TABLE t'; EXECUTE d", &mariadb());
    names.resolve_all(&mut statements);
    assert_eq!(statements[1].classified.operation, Operation::Dangerous);
    assert_eq!(statements[1].classified.kind, "EXECUTE DROP TABLE");
    let drop = classify_in("DROP PREPARE s", &mariadb()).remove(0);
    assert_eq!(drop.deallocates.as_deref(), Some("s"));
    assert_eq!(drop.classified.operation, Operation::Read);
}

#[test]
fn prepared_text_uses_the_session_mode() {
    // Under NO_BACKSLASH_ESCAPES the prepared text `SELECT '\'; DROP...` is two
    // statements, which PREPARE refuses: unparsed, never a read.
    let statements = classify_in(
        r"PREPARE s FROM 'SELECT ''\''; DROP TABLE t; -- '''",
        &no_backslash_escapes(),
    );
    assert_ne!(statements[0].classified.operation, Operation::Read);
    let statements = classify_in("EXECUTE IMMEDIATE 'DROP TABLE t'", &mariadb());
    assert_eq!(statements[0].classified.operation, Operation::Dangerous);
}

// --- Session statements ----------------------------------------------------------------

#[test]
fn connector_and_dump_session_statements_are_reads() {
    for sql in [
        "SET @@session.autocommit=OFF",
        "SET autocommit=0",
        "SET NAMES utf8mb4",
        "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
        "SET CHARACTER SET utf8",
        "SET character_set_results = NULL",
        "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET TIME_ZONE='+00:00'",
        "SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT",
        "SET @a := 1",
        "SET @@session.session_track_system_variables='*'",
        "/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */",
        "/*!40101 SET NAMES utf8mb4 */",
        "/*!40103 SET @OLD_TIME_ZONE=@@TIME_ZONE */",
        "/*!40103 SET TIME_ZONE='+00:00' */",
        "/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */",
        "/*!40014 SET @OLD_FOREIGN_KEY_CHECKS=@@FOREIGN_KEY_CHECKS, FOREIGN_KEY_CHECKS=0 */",
        "/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */",
        "/*!40111 SET @OLD_SQL_NOTES=@@SQL_NOTES, SQL_NOTES=0 */",
        "/*M!100616 SET @OLD_NOTE_VERBOSITY=@@NOTE_VERBOSITY, NOTE_VERBOSITY=0 */",
        "/*!40101 SET character_set_client = utf8 */",
        "/*!40101 SET SQL_MODE=@OLD_SQL_MODE */",
        "/*!40000 ALTER TABLE `t` DISABLE KEYS */",
    ] {
        let statements = classify_in(sql, &mariadb());
        assert_eq!(statements.len(), 1, "{sql}: {statements:#?}");
        let operation = statements[0].classified.operation;
        let expected = if sql.contains("ALTER TABLE") {
            Operation::Ddl
        } else {
            Operation::Read
        };
        assert_eq!(operation, expected, "{sql}: {statements:#?}");
    }
}

#[test]
fn session_changes_are_reported() {
    let statements = classify_in(
        "SET SESSION sql_mode = 'ANSI_QUOTES,STRICT_ALL_TABLES'; SET NAMES latin1; USE shop",
        &mariadb(),
    );
    assert_eq!(
        statements[0].session,
        vec![SessionChange::SqlMode(Some(MysqlSqlMode {
            ansi_quotes: true,
            ..MysqlSqlMode::default()
        }))]
    );
    assert_eq!(
        statements[1].session,
        vec![SessionChange::Charset(Some("latin1".to_owned()))]
    );
    assert_eq!(
        statements[2].session,
        vec![SessionChange::Schema("shop".to_owned())]
    );
    let statements = classify_in("SET sql_mode = DEFAULT", &mariadb());
    assert_eq!(statements[0].session, vec![SessionChange::SqlMode(None)]);
}

#[test]
fn set_values_are_judged_as_expressions() {
    assert_class("SET @a = (SELECT pw FROM mysql.user)", Operation::Dangerous);
    assert_class("SET @a = LOAD_FILE('/etc/passwd')", Operation::Dangerous);
    let classified = one("SET @a = (SELECT secret FROM vault)");
    assert_eq!(classified.operation, Operation::Read);
    assert_eq!(classified.tables_read, vec!["vault"]);
    assert_class(
        "SET STATEMENT max_statement_time=1 FOR DROP TABLE t",
        Operation::Dangerous,
    );
    assert_class(
        "SET STATEMENT max_statement_time=1 FOR SELECT 1",
        Operation::Read,
    );
    // The server lexes the whole statement under the session's mode, before the
    // statement's own sql_mode applies (checked against MariaDB 10.11): one SELECT.
    assert_eq!(
        classes_in(
            r"SET STATEMENT sql_mode='NO_BACKSLASH_ESCAPES' FOR SELECT 'a\' ; DROP TABLE x; -- '",
            &mariadb()
        ),
        vec![(Operation::Read, "SELECT".to_owned())]
    );
}

// --- Clients ---------------------------------------------------------------------------

#[test]
fn sysbench_statements() {
    for (sql, expected) in [
        ("SELECT c FROM sbtest1 WHERE id=1", Operation::Read),
        (
            "SELECT c FROM sbtest1 WHERE id BETWEEN 1 AND 100",
            Operation::Read,
        ),
        (
            "SELECT SUM(k) FROM sbtest1 WHERE id BETWEEN 1 AND 100",
            Operation::Read,
        ),
        (
            "SELECT c FROM sbtest1 WHERE id BETWEEN 1 AND 100 ORDER BY c",
            Operation::Read,
        ),
        (
            "SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN 1 AND 100 ORDER BY c",
            Operation::Read,
        ),
        ("UPDATE sbtest1 SET k=k+1 WHERE id=5", Operation::Write),
        ("UPDATE sbtest1 SET c='x' WHERE id=5", Operation::Write),
        ("DELETE FROM sbtest1 WHERE id=5", Operation::Write),
        (
            "INSERT INTO sbtest1 (id, k, c, pad) VALUES (5, 1, 'x', 'y')",
            Operation::Write,
        ),
        ("BEGIN", Operation::Read),
        ("COMMIT", Operation::Read),
        ("SELECT c FROM sbtest1 WHERE id=?", Operation::Read),
        (
            "CREATE TABLE sbtest1(id INTEGER NOT NULL AUTO_INCREMENT, k INTEGER DEFAULT '0' NOT NULL, c CHAR(120) DEFAULT '' NOT NULL, pad CHAR(60) DEFAULT '' NOT NULL, PRIMARY KEY (id)) /*! ENGINE = innodb */",
            Operation::Ddl,
        ),
        ("CREATE INDEX k_1 ON sbtest1(k)", Operation::Ddl),
        ("DROP TABLE IF EXISTS sbtest1", Operation::Dangerous),
    ] {
        assert_class(sql, expected);
    }
}

#[test]
fn multi_statement_text_judges_every_statement() {
    let statements = classes_in(
        "SELECT 1; INSERT INTO t VALUES (1);; GRANT ALL ON *.* TO x",
        &mariadb(),
    );
    assert_eq!(
        statements,
        vec![
            (Operation::Read, "SELECT".to_owned()),
            (Operation::Write, "INSERT".to_owned()),
            (Operation::Dcl, "GRANT".to_owned()),
        ]
    );
}

// --- Records ---------------------------------------------------------------------------

#[test]
fn summaries_have_no_values() {
    let masked = literals_masked_mysql(
        b"SELECT * FROM t WHERE email = 'a@b.c' AND n = 42 AND h = x'AB' /* secret */ -- x\n",
        &mariadb(),
    );
    assert_eq!(
        masked,
        "SELECT * FROM t WHERE email = ? AND n = ? AND h = ?"
    );
    let masked = literals_masked_mysql(b"CREATE USER 'u'@'h' IDENTIFIED BY 'hunter2'", &mariadb());
    assert!(!masked.contains("hunter2"), "{masked}");
    let masked = literals_masked_mysql(b"/*!40101 SET NAMES 'utf8' */", &mariadb());
    assert_eq!(masked, "/*!40101 SET NAMES ? */");
    let masked = literals_masked_mysql(b"SELECT 'unterminated", &mariadb());
    assert_eq!(masked, "<unparsable statement: 20 bytes>");
    let masked = literals_masked_mysql(
        "PREPARE s FROM 'SELECT * FROM t WHERE a = ''secret'''".as_bytes(),
        &mariadb(),
    );
    assert_eq!(
        masked,
        "PREPARE s FROM ? [text: SELECT * FROM t WHERE a = ?]"
    );
}

#[test]
fn parse_sql_mode_reads_tracked_values() {
    assert_eq!(
        parse_sql_mode("STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_AUTO_CREATE_USER"),
        MysqlSqlMode::default()
    );
    let mode = parse_sql_mode("no_backslash_escapes, ansi_quotes");
    assert!(mode.no_backslash_escapes && mode.ansi_quotes);
    assert!(parse_sql_mode("POSTGRESQL").ansi_quotes);
    assert_eq!(
        parse_sql_mode("MSSQL").unsupported.as_deref(),
        Some("MSSQL")
    );
}

// --- The dialect entry point (`sluice policy explain --sql`) ---------------------------

#[test]
fn explain_classifies_with_the_resource_dialect() {
    use crate::{
        policy::Protocol,
        sql::{Dialect, classify_dialect},
    };
    assert_eq!(Dialect::of(Protocol::Mysql), Some(Dialect::Mysql));
    assert_eq!(Dialect::of(Protocol::Postgres), Some(Dialect::Postgres));
    assert_eq!(Dialect::of(Protocol::Http), None);
    // MySQL-only statements and comments are known to the MySQL dialect only.
    let mysql = classify_dialect(
        Dialect::Mysql,
        "/*M!100100 DROP TABLE t */; LOAD DATA INFILE '/x' INTO TABLE t",
    );
    assert_eq!(
        mysql
            .iter()
            .map(|statement| statement.operation)
            .collect::<Vec<_>>(),
        vec![Operation::Dangerous, Operation::Dangerous]
    );
    let postgres = classify_dialect(
        Dialect::Postgres,
        "/*M!100100 DROP TABLE t */; LOAD DATA INFILE '/x' INTO TABLE t",
    );
    assert_eq!(postgres.len(), 1);
    assert_eq!(postgres[0].operation, Operation::Unparsed);
    // Backquoted names are MySQL identifiers.
    let mysql = classify_dialect(Dialect::Mysql, "SELECT `e-mail` FROM `shop`.`users`");
    assert_eq!(mysql[0].tables_read, vec!["shop.users"]);
}

// --- What real clients send (mariadb-dump 10.11, connectors) ----------------------------

#[test]
fn mariadb_dump_reading_side_is_read() {
    for sql in [
        "/*!40100 SET @@SQL_MODE='' */",
        "/*!40103 SET TIME_ZONE='+00:00' */",
        "SHOW VARIABLES LIKE 'gtid\\_mode'",
        "SHOW /*!50002 GLOBAL */ VARIABLES LIKE 'ndbinfo\\_version'",
        "START TRANSACTION /*!40100 WITH CONSISTENT SNAPSHOT */",
        "SELECT LOGFILE_GROUP_NAME, FILE_NAME, TOTAL_EXTENTS FROM INFORMATION_SCHEMA.FILES WHERE FILE_TYPE = 'UNDO LOG' AND FILE_NAME IS NOT NULL GROUP BY LOGFILE_GROUP_NAME, FILE_NAME ORDER BY LOGFILE_GROUP_NAME",
        "SHOW CREATE DATABASE IF NOT EXISTS `shop`",
        "show table status like 'orders'",
        "SET SQL_QUOTE_SHOW_CREATE=1",
        "SET SESSION character_set_results = 'binary'",
        "show create table `orders`",
        "SET SESSION character_set_results = 'utf8mb4'",
        "show fields from `orders`",
        "SELECT /*!40001 SQL_NO_CACHE */ `id`, `email` FROM `orders`",
        "use `shop`",
        "select @@collation_database",
        "SHOW TRIGGERS LIKE 'orders'",
        "SAVEPOINT sp",
        "ROLLBACK TO SAVEPOINT sp",
        "RELEASE SAVEPOINT sp",
        "UNLOCK TABLES",
    ] {
        let statements = classify_in(sql, &mariadb());
        assert_eq!(statements.len(), 1, "{sql}: {statements:#?}");
        assert_eq!(
            statements[0].classified.operation,
            Operation::Read,
            "{sql}: {statements:#?}"
        );
    }
    assert_class(
        "LOCK TABLES `orders` READ /*!32311 LOCAL */",
        Operation::Write,
    );
}

#[test]
fn mariadb_dump_restore_side() {
    let restore = [
        (
            "/*!40101 SET @saved_cs_client     = @@character_set_client */",
            Operation::Read,
        ),
        (
            "/*!40101 SET character_set_client = utf8mb4 */",
            Operation::Read,
        ),
        (
            "/*!40101 SET character_set_client = @saved_cs_client */",
            Operation::Read,
        ),
        ("DROP TABLE IF EXISTS `orders`", Operation::Dangerous),
        (
            "CREATE TABLE `orders` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `email` varchar(255) DEFAULT NULL,\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB AUTO_INCREMENT=3 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci",
            Operation::Ddl,
        ),
        ("LOCK TABLES `orders` WRITE", Operation::Write),
        (
            "/*!40000 ALTER TABLE `orders` DISABLE KEYS */",
            Operation::Ddl,
        ),
        (
            "INSERT INTO `orders` VALUES\n(1,'a@example.com'),\n(2,'it\\'s \\\\ \"quoted\"')",
            Operation::Write,
        ),
        (
            "/*!40000 ALTER TABLE `orders` ENABLE KEYS */",
            Operation::Ddl,
        ),
        (
            "CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop` /*!40100 DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci */",
            Operation::Ddl,
        ),
        ("/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */", Operation::Read),
        ("/*!40101 SET SQL_MODE=@OLD_SQL_MODE */", Operation::Read),
        (
            "/*!40014 SET FOREIGN_KEY_CHECKS=@OLD_FOREIGN_KEY_CHECKS */",
            Operation::Read,
        ),
        (
            "/*!40101 SET CHARACTER_SET_RESULTS=@OLD_CHARACTER_SET_RESULTS */",
            Operation::Read,
        ),
        (
            "/*!40101 SET COLLATION_CONNECTION=@OLD_COLLATION_CONNECTION */",
            Operation::Read,
        ),
        (
            "/*M!100616 SET NOTE_VERBOSITY=@OLD_NOTE_VERBOSITY */",
            Operation::Read,
        ),
        ("/*!40111 SET SQL_NOTES=@OLD_SQL_NOTES */", Operation::Read),
    ];
    for (sql, expected) in restore {
        let statements = classify_in(sql, &mariadb());
        assert_eq!(statements.len(), 1, "{sql}: {statements:#?}");
        assert_eq!(
            statements[0].classified.operation, expected,
            "{sql}: {statements:#?}"
        );
    }
}

#[test]
fn connector_session_statements() {
    for sql in [
        // mysql-connector-python
        "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
        "SET @@session.autocommit = OFF",
        "SELECT @@version",
        // PyMySQL / MySQLdb
        "SET AUTOCOMMIT = 0",
        "SELECT VERSION()",
        // Connector/J and MariaDB Connector/J
        "SET character_set_results = NULL",
        "SELECT @@max_allowed_packet,@@system_time_zone,@@time_zone,@@auto_increment_increment",
        "set autocommit=1, session_track_schema=1, session_track_system_variables = CONCAT(@@global.session_track_system_variables,',auto_increment_increment')",
        "SHOW WARNINGS",
        "SELECT DATABASE()",
    ] {
        assert_class(sql, Operation::Read);
    }
    // A computed sql_mode is read, and reported as unknown so the proxy re-reads it.
    let statements = classify_in(
        "SET sql_mode = concat(@@sql_mode,',STRICT_TRANS_TABLES')",
        &mariadb(),
    );
    assert_eq!(statements[0].classified.operation, Operation::Read);
    assert_eq!(statements[0].session, vec![SessionChange::SqlMode(None)]);
}

#[test]
fn character_set_introducers_are_literals_only_for_character_sets() {
    assert_class(
        "SELECT * FROM t WHERE a = _latin1'x' AND b = _binary 0x41",
        Operation::Read,
    );
    // `_id` is no character set: it stays a column (aliased), and nothing is dropped.
    let classified = one("SELECT _id 'x' FROM t");
    assert_eq!(classified.tables_read, vec!["t"]);
}

#[test]
fn lexer_never_panics_on_fragments() {
    // Deterministic pseudo-random texts built from the characters that matter to the
    // lexer, under every mode: each gives a result (possibly unparsed), never a panic.
    let fragments = [
        "'",
        "\"",
        "`",
        "\\",
        "/*",
        "*/",
        "/*!",
        "/*M!",
        "40101",
        "100100",
        "--",
        "-- ",
        "#",
        "\n",
        ";",
        "@",
        "@@",
        "x'",
        "b'",
        "N'",
        "_utf8mb4",
        "SELECT",
        "DROP",
        "TABLE",
        "t",
        ".",
        "é",
        "0x",
        "1e",
        " ",
        "(",
        ")",
        ",",
        "=",
        ":=",
        "\u{0}",
        "\u{1F600}",
    ];
    let modes = [
        MysqlSqlMode::default(),
        parse_sql_mode("NO_BACKSLASH_ESCAPES"),
        parse_sql_mode("ANSI_QUOTES"),
        parse_sql_mode("NO_BACKSLASH_ESCAPES,ANSI_QUOTES"),
    ];
    let mut state: u64 = 0x5eed;
    for _ in 0..2000 {
        let mut text = String::new();
        for _ in 0..12 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            text.push_str(fragments[(state >> 33) as usize % fragments.len()]);
        }
        for mode in &modes {
            for server in [
                None,
                ServerFlavor::from_greeting("10.11.19-MariaDB"),
                ServerFlavor::from_greeting("8.0.36"),
            ] {
                let context = MysqlContext {
                    sql_mode: mode.clone(),
                    server,
                    ..MysqlContext::default()
                };
                let statements = classify_mysql(text.as_bytes(), &context);
                let masked = literals_masked_mysql(text.as_bytes(), &context);
                assert!(
                    statements
                        .iter()
                        .all(|statement| !statement.classified.kind.is_empty())
                );
                assert!(
                    masked.len() <= text.len() * 4 + 64,
                    "{text:?} -> {masked:?}"
                );
            }
        }
    }
}

#[test]
fn long_statements_up_to_the_limit_are_classified() {
    // A dump's extended INSERT or a large value: far above PostgreSQL's 1 MiB limit.
    let mut sql = String::from("INSERT INTO t VALUES ('");
    sql.push_str(&"x\\'y".repeat(1024 * 1024));
    sql.push_str("')");
    assert!(sql.len() > 4 << 20);
    assert_eq!(
        classes_in(&sql, &mariadb()),
        vec![(Operation::Write, "INSERT".to_owned())]
    );
    let too_long = "x".repeat(MAX_MYSQL_SQL_BYTES + 1);
    assert_eq!(classes_in(&too_long, &mariadb())[0].0, Operation::Unparsed);
}
