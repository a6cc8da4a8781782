use super::*;
use crate::policy::Operation::{self, Admin, Dangerous, Dcl, Ddl, Read, Unparsed, Write};

/// One statement and everything its classification must say.
struct Case {
    sql: &'static str,
    operation: Operation,
    kind: &'static str,
    read: &'static [&'static str],
    written: &'static [&'static str],
    flags: Vec<Flag>,
}

fn case(
    sql: &'static str,
    operation: Operation,
    kind: &'static str,
    read: &'static [&'static str],
    written: &'static [&'static str],
    flags: Vec<Flag>,
) -> Case {
    Case {
        sql,
        operation,
        kind,
        read,
        written,
        flags,
    }
}

fn dangerous_fn(name: &str) -> Flag {
    Flag::DangerousFunction(name.to_owned())
}

/// Real statements from psql, pg_dump, pgbench, ORMs and attackers.
fn cases() -> Vec<Case> {
    vec![
        // psql \dt
        case(
            r#"SELECT n.nspname as "Schema",
  c.relname as "Name",
  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as "Type",
  pg_catalog.pg_get_userbyid(c.relowner) as "Owner"
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam
WHERE c.relkind IN ('r','p','')
      AND n.nspname <> 'pg_catalog'
      AND n.nspname !~ '^pg_toast'
      AND n.nspname <> 'information_schema'
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 1,2;"#,
            Read,
            "SELECT",
            &[
                "pg_catalog.pg_class",
                "pg_catalog.pg_namespace",
                "pg_catalog.pg_am",
            ],
            &[],
            vec![],
        ),
        // psql \d users (lookup)
        case(
            r#"SELECT c.oid,
  n.nspname,
  c.relname
FROM pg_catalog.pg_class c
     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default
  AND pg_catalog.pg_table_is_visible(c.oid)
ORDER BY 2, 3;"#,
            Read,
            "SELECT",
            &["pg_catalog.pg_class", "pg_catalog.pg_namespace"],
            &[],
            vec![],
        ),
        // psql \d users (columns)
        case(
            r#"SELECT a.attname,
  pg_catalog.format_type(a.atttypid, a.atttypmod),
  (SELECT pg_catalog.pg_get_expr(d.adbin, d.adrelid, true)
   FROM pg_catalog.pg_attrdef d
   WHERE d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.atthasdef),
  a.attnotnull,
  (SELECT c.collname FROM pg_catalog.pg_collation c, pg_catalog.pg_type t
   WHERE c.oid = a.attcollation AND t.oid = a.atttypid AND a.attcollation <> t.typcollation) AS attcollation,
  a.attidentity,
  a.attgenerated
FROM pg_catalog.pg_attribute a
WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;"#,
            Read,
            "SELECT",
            &[
                "pg_catalog.pg_attrdef",
                "pg_catalog.pg_collation",
                "pg_catalog.pg_type",
                "pg_catalog.pg_attribute",
            ],
            &[],
            vec![],
        ),
        // psql \l
        case(
            r#"SELECT
  d.datname as "Name",
  pg_catalog.pg_get_userbyid(d.datdba) as "Owner",
  pg_catalog.pg_encoding_to_char(d.encoding) as "Encoding",
  pg_catalog.array_to_string(d.datacl, E'\n') AS "Access privileges"
FROM pg_catalog.pg_database d
ORDER BY 1;"#,
            Read,
            "SELECT",
            &["pg_catalog.pg_database"],
            &[],
            vec![],
        ),
        // psql \du
        case(
            r#"SELECT r.rolname, r.rolsuper, r.rolinherit,
  r.rolcreaterole, r.rolcreatedb, r.rolcanlogin,
  r.rolconnlimit, r.rolvaliduntil,
  ARRAY(SELECT b.rolname
        FROM pg_catalog.pg_auth_members m
        JOIN pg_catalog.pg_roles b ON (m.roleid = b.oid)
        WHERE m.member = r.oid) as memberof
, r.rolreplication
, r.rolbypassrls
FROM pg_catalog.pg_roles r
WHERE r.rolname !~ '^pg_'
ORDER BY 1;"#,
            Read,
            "SELECT",
            &["pg_catalog.pg_auth_members", "pg_catalog.pg_roles"],
            &[],
            vec![],
        ),
        // psql \dn
        case(
            r#"SELECT n.nspname AS "Name",
  pg_catalog.pg_get_userbyid(n.nspowner) AS "Owner"
FROM pg_catalog.pg_namespace n
WHERE n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'
ORDER BY 1;"#,
            Read,
            "SELECT",
            &["pg_catalog.pg_namespace"],
            &[],
            vec![],
        ),
        case(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
            Read,
            "SELECT",
            &["information_schema.tables"],
            &[],
            vec![],
        ),
        case("SELECT version()", Read, "SELECT", &[], &[], vec![]),
        // pg_dump's preamble
        case("SET statement_timeout = 0;", Read, "SET", &[], &[], vec![]),
        case("SET lock_timeout = 0;", Read, "SET", &[], &[], vec![]),
        case(
            "SET idle_in_transaction_session_timeout = 0;",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case(
            "SET client_encoding = 'UTF8';",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case(
            "SET standard_conforming_strings = on;",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case(
            "SELECT pg_catalog.set_config('search_path', '', false);",
            Read,
            "SELECT",
            &[],
            &[],
            vec![],
        ),
        case(
            "SET check_function_bodies = false;",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case("SET xmloption = content;", Read, "SET", &[], &[], vec![]),
        case(
            "SET client_min_messages = warning;",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case("SET row_security = off;", Read, "SET", &[], &[], vec![]),
        case(
            "SET default_tablespace = '';",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case(
            "SET default_table_access_method = heap;",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case("SET extra_float_digits TO 3", Read, "SET", &[], &[], vec![]),
        case(
            "SET synchronize_seqscans TO off",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case(
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            Read,
            "BEGIN",
            &[],
            &[],
            vec![],
        ),
        // pg_dump's output
        case(
            "CREATE TABLE public.users (id integer NOT NULL, email text);",
            Ddl,
            "CREATE TABLE",
            &[],
            &["public.users"],
            vec![],
        ),
        case(
            "ALTER TABLE public.users OWNER TO postgres;",
            Dcl,
            "ALTER TABLE",
            &[],
            &["public.users"],
            vec![],
        ),
        case(
            "ALTER TABLE ONLY public.users ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq'::regclass);",
            Ddl,
            "ALTER TABLE",
            &[],
            &["public.users"],
            vec![Flag::WriteFunction("nextval".to_owned())],
        ),
        case(
            "SELECT pg_catalog.setval('public.users_id_seq', 42, true);",
            Write,
            "SELECT",
            &[],
            &[],
            vec![Flag::WriteFunction("pg_catalog.setval".to_owned())],
        ),
        case(
            "COPY public.users (id, email) FROM stdin;",
            Write,
            "COPY",
            &[],
            &["public.users"],
            vec![],
        ),
        case(
            "ALTER TABLE ONLY public.users ADD CONSTRAINT users_pkey PRIMARY KEY (id);",
            Ddl,
            "ALTER TABLE",
            &[],
            &["public.users"],
            vec![],
        ),
        case(
            "CREATE INDEX users_email_idx ON public.users USING btree (email);",
            Ddl,
            "CREATE INDEX",
            &[],
            &["public.users"],
            vec![],
        ),
        case(
            "COMMENT ON TABLE public.users IS 'people';",
            Ddl,
            "COMMENT",
            &[],
            &[],
            vec![],
        ),
        case(
            "GRANT SELECT ON TABLE public.users TO analyst;",
            Dcl,
            "GRANT",
            &[],
            &[],
            vec![],
        ),
        case(
            "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
            Dcl,
            "REVOKE",
            &[],
            &[],
            vec![],
        ),
        case(
            "CREATE SEQUENCE public.users_id_seq AS integer START WITH 1 INCREMENT BY 1 NO MINVALUE NO MAXVALUE CACHE 1;",
            Ddl,
            "CREATE SEQUENCE",
            &[],
            &[],
            vec![Flag::KeywordOnly],
        ),
        // pgbench's tpcb-like transaction
        case("BEGIN;", Read, "BEGIN", &[], &[], vec![]),
        case(
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
            Write,
            "UPDATE",
            &[],
            &["pgbench_accounts"],
            vec![],
        ),
        case(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            Read,
            "SELECT",
            &["pgbench_accounts"],
            &[],
            vec![],
        ),
        case(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
            Write,
            "INSERT",
            &[],
            &["pgbench_history"],
            vec![],
        ),
        case("END;", Read, "COMMIT", &[], &[], vec![]),
        // pgbench -i
        case(
            "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            Dangerous,
            "DROP TABLE",
            &[],
            &[
                "pgbench_accounts",
                "pgbench_branches",
                "pgbench_history",
                "pgbench_tellers",
            ],
            vec![Flag::Drop],
        ),
        case(
            "create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))",
            Ddl,
            "CREATE TABLE",
            &[],
            &["pgbench_history"],
            vec![],
        ),
        case(
            "create table pgbench_accounts(aid int not null,bid int,abalance int,filler char(84)) with (fillfactor=100)",
            Ddl,
            "CREATE TABLE",
            &[],
            &["pgbench_accounts"],
            vec![],
        ),
        case(
            "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            Dangerous,
            "TRUNCATE",
            &[],
            &[
                "pgbench_accounts",
                "pgbench_branches",
                "pgbench_history",
                "pgbench_tellers",
            ],
            vec![Flag::Truncate],
        ),
        case(
            "insert into pgbench_branches(bid,bbalance) values(1,0)",
            Write,
            "INSERT",
            &[],
            &["pgbench_branches"],
            vec![],
        ),
        case(
            "copy pgbench_accounts from stdin",
            Write,
            "COPY",
            &[],
            &["pgbench_accounts"],
            vec![],
        ),
        case(
            "vacuum analyze pgbench_branches",
            Admin,
            "VACUUM",
            &[],
            &[],
            vec![Flag::KeywordOnly],
        ),
        case(
            "alter table pgbench_branches add primary key (bid)",
            Ddl,
            "ALTER TABLE",
            &[],
            &["pgbench_branches"],
            vec![],
        ),
        // Everyday application statements
        case(
            "DELETE FROM sessions WHERE expires < now()",
            Write,
            "DELETE",
            &[],
            &["sessions"],
            vec![],
        ),
        case(
            "INSERT INTO users (email) VALUES ('a@b.c') ON CONFLICT (email) DO UPDATE SET seen = now() RETURNING id",
            Write,
            "INSERT",
            &[],
            &["users"],
            vec![],
        ),
        case(
            "INSERT INTO archive SELECT * FROM orders WHERE created < '2020-01-01'",
            Write,
            "INSERT",
            &["orders"],
            &["archive"],
            vec![],
        ),
        case(
            "UPDATE orders o SET total = s.total FROM staging s WHERE o.id = s.id",
            Write,
            "UPDATE",
            &["staging"],
            &["orders"],
            vec![],
        ),
        case(
            "DELETE FROM orders USING customers c WHERE orders.customer_id = c.id AND c.banned",
            Write,
            "DELETE",
            &["customers"],
            &["orders"],
            vec![],
        ),
        case(
            "UPDATE users SET n = n + 1 WHERE id IN (SELECT id FROM users WHERE stale)",
            Write,
            "UPDATE",
            &["users"],
            &["users"],
            vec![],
        ),
        case(
            "MERGE INTO stock s USING incoming i ON s.id = i.id WHEN MATCHED THEN UPDATE SET qty = s.qty + i.qty WHEN NOT MATCHED THEN INSERT VALUES (i.id, i.qty)",
            Write,
            "MERGE",
            &["incoming"],
            &["stock"],
            vec![],
        ),
        case(
            "SELECT count(*) FROM users WHERE id IN (SELECT user_id FROM orders)",
            Read,
            "SELECT",
            &["users", "orders"],
            &[],
            vec![],
        ),
        case(
            "SELECT u.id FROM users u JOIN LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id LIMIT 1) x ON true",
            Read,
            "SELECT",
            &["users", "orders"],
            &[],
            vec![],
        ),
        case(
            "WITH recent AS (SELECT * FROM orders WHERE created > now() - interval '1 day') SELECT count(*) FROM recent",
            Read,
            "SELECT",
            &["orders"],
            &[],
            vec![],
        ),
        case(
            "SELECT * FROM generate_series(1, 10) g",
            Read,
            "SELECT",
            &[],
            &[],
            vec![],
        ),
        case(
            "SELECT 1 UNION ALL SELECT 2",
            Read,
            "SELECT",
            &[],
            &[],
            vec![],
        ),
        case(
            "VALUES (1, 'a'), (2, 'b')",
            Read,
            "VALUES",
            &[],
            &[],
            vec![],
        ),
        case("SHOW search_path", Read, "SHOW", &[], &[], vec![]),
        case(
            r#"SELECT * FROM "users" JOIN Public.Orders ON true JOIN "Audit"."Log" ON true"#,
            Read,
            "SELECT",
            &["users", "public.orders", r#""Audit"."Log""#],
            &[],
            vec![],
        ),
        case(
            r"SELECT * FROM users WHERE name = E'O\'Brien'",
            Read,
            "SELECT",
            &["users"],
            &[],
            vec![],
        ),
        case(
            "SELECT $$ DROP TABLE users $$",
            Read,
            "SELECT",
            &[],
            &[],
            vec![],
        ),
        // sqlparser reads `ONLY t` as table `ONLY` aliased `t`.
        case(
            "SELECT xmin, * FROM ONLY t",
            Read,
            "SELECT",
            &["t"],
            &[],
            vec![],
        ),
        case(
            "DELETE FROM ONLY t WHERE a = 1",
            Write,
            "DELETE",
            &[],
            &["t"],
            vec![],
        ),
        case(
            "UPDATE ONLY t SET a = 1 WHERE b = 2",
            Write,
            "UPDATE",
            &[],
            &["t"],
            vec![],
        ),
        case(
            "SELECT * FROM big /* ; DROP TABLE big; */",
            Read,
            "SELECT",
            &["big"],
            &[],
            vec![],
        ),
        // Session control
        case(
            "SET search_path TO app, public",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case(
            "SET LOCAL statement_timeout = '5s'",
            Read,
            "SET",
            &[],
            &[],
            vec![],
        ),
        case("SET TIME ZONE 'UTC'", Read, "SET", &[], &[], vec![]),
        case(
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Read,
            "SET TRANSACTION",
            &[],
            &[],
            vec![],
        ),
        case("SAVEPOINT s", Read, "SAVEPOINT", &[], &[], vec![]),
        case(
            "ROLLBACK TO SAVEPOINT s",
            Read,
            "ROLLBACK",
            &[],
            &[],
            vec![],
        ),
        case("RELEASE SAVEPOINT s", Read, "RELEASE", &[], &[], vec![]),
        case("DISCARD ALL", Read, "DISCARD", &[], &[], vec![]),
        case("RESET ALL", Read, "RESET", &[], &[], vec![]),
        case(
            "PREPARE q (int) AS SELECT * FROM users WHERE id = $1",
            Read,
            "PREPARE",
            &["users"],
            &[],
            vec![],
        ),
        case("EXECUTE q(1)", Read, "EXECUTE", &[], &[], vec![]),
        case("DEALLOCATE q", Read, "DEALLOCATE", &[], &[], vec![]),
        case(
            "DECLARE c CURSOR FOR SELECT * FROM big",
            Read,
            "DECLARE",
            &["big"],
            &[],
            vec![],
        ),
        case("FETCH 100 FROM c", Read, "FETCH", &[], &[], vec![]),
        case("CLOSE c", Read, "CLOSE", &[], &[], vec![]),
        case("LISTEN jobs", Read, "LISTEN", &[], &[], vec![]),
        case("NOTIFY jobs, 'x'", Write, "NOTIFY", &[], &[], vec![]),
        // Writes in disguise
        case(
            "SELECT nextval('orders_id_seq')",
            Write,
            "SELECT",
            &[],
            &[],
            vec![Flag::WriteFunction("nextval".to_owned())],
        ),
        case(
            "SELECT pg_notify('jobs', 'x')",
            Write,
            "SELECT",
            &[],
            &[],
            vec![Flag::WriteFunction("pg_notify".to_owned())],
        ),
        case(
            "WITH moved AS (DELETE FROM queue WHERE id < 10 RETURNING *) INSERT INTO archive SELECT * FROM moved",
            Write,
            "INSERT",
            &[],
            &["queue", "archive"],
            vec![Flag::ModifyingCte],
        ),
        case(
            "WITH gone AS (DELETE FROM queue RETURNING *) SELECT count(*) FROM gone",
            Dangerous,
            "SELECT",
            &[],
            &["queue"],
            vec![Flag::ModifyingCte, Flag::NoWhere],
        ),
        case(
            "SELECT * INTO backup_users FROM users",
            Write,
            "SELECT INTO",
            &["users"],
            &["backup_users"],
            vec![Flag::SelectInto],
        ),
        case(
            "SELECT * FROM accounts WHERE id = 1 FOR UPDATE",
            Write,
            "SELECT",
            &["accounts"],
            &[],
            vec![Flag::Lock],
        ),
        case(
            "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE",
            Write,
            "LOCK",
            &["accounts"],
            &[],
            vec![Flag::Lock],
        ),
        case("CALL process_queue(10)", Write, "CALL", &[], &[], vec![]),
        case(
            "REFRESH MATERIALIZED VIEW daily",
            Write,
            "REFRESH MATERIALIZED VIEW",
            &[],
            &[],
            vec![Flag::KeywordOnly],
        ),
        // EXPLAIN
        case(
            "EXPLAIN SELECT * FROM users",
            Read,
            "EXPLAIN",
            &["users"],
            &[],
            vec![],
        ),
        case(
            "EXPLAIN DELETE FROM users",
            Read,
            "EXPLAIN",
            &["users"],
            &[],
            vec![],
        ),
        case(
            "EXPLAIN ANALYZE DELETE FROM users",
            Dangerous,
            "EXPLAIN",
            &[],
            &["users"],
            vec![Flag::NoWhere, Flag::ExplainAnalyze],
        ),
        case(
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 WHERE id = 2",
            Write,
            "EXPLAIN",
            &[],
            &["t"],
            vec![Flag::ExplainAnalyze],
        ),
        case(
            "EXPLAIN (ANALYZE false) UPDATE t SET a = 1",
            Read,
            "EXPLAIN",
            &["t"],
            &[],
            vec![],
        ),
        case(
            "EXPLAIN SELECT pg_read_file('/etc/passwd')",
            Dangerous,
            "EXPLAIN",
            &[],
            &[],
            vec![dangerous_fn("pg_read_file")],
        ),
        // Schema changes
        case(
            "CREATE VIEW active_users AS SELECT * FROM users WHERE active",
            Ddl,
            "CREATE VIEW",
            &["users"],
            &["active_users"],
            vec![],
        ),
        case(
            "CREATE TABLE t2 AS SELECT * FROM t1",
            Ddl,
            "CREATE TABLE",
            &["t1"],
            &["t2"],
            vec![],
        ),
        case(
            "CREATE MATERIALIZED VIEW mv AS SELECT 1",
            Ddl,
            "CREATE MATERIALIZED VIEW",
            &[],
            &["mv"],
            vec![],
        ),
        case(
            "CREATE SCHEMA IF NOT EXISTS app",
            Ddl,
            "CREATE SCHEMA",
            &[],
            &[],
            vec![],
        ),
        case(
            "CREATE DATABASE scratch",
            Ddl,
            "CREATE DATABASE",
            &[],
            &[],
            vec![],
        ),
        case(
            "CREATE FUNCTION h(a int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT a + 1'",
            Ddl,
            "CREATE FUNCTION",
            &[],
            &[],
            vec![],
        ),
        case(
            "CREATE FUNCTION f() RETURNS text LANGUAGE plpython3u AS $$ return open('/etc/passwd').read() $$",
            Dangerous,
            "CREATE FUNCTION",
            &[],
            &[],
            vec![Flag::UntrustedLanguage("plpython3u".to_owned())],
        ),
        case(
            "CREATE FUNCTION g() RETURNS text LANGUAGE sql AS $$ SELECT pg_read_file('/etc/passwd') $$",
            Dangerous,
            "CREATE FUNCTION",
            &[],
            &[],
            vec![dangerous_fn("pg_read_file")],
        ),
        case(
            "CREATE TRIGGER audit AFTER UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION pg_read_file()",
            Dangerous,
            "CREATE TRIGGER",
            &[],
            &["accounts"],
            vec![dangerous_fn("pg_read_file")],
        ),
        case(
            "CREATE EXTENSION IF NOT EXISTS pgcrypto",
            Admin,
            "CREATE EXTENSION",
            &[],
            &[],
            vec![],
        ),
        case(
            "ALTER TABLE users DROP COLUMN ssn",
            Dangerous,
            "ALTER TABLE",
            &[],
            &["users"],
            vec![Flag::Drop],
        ),
        // Access control
        case(
            "ALTER TABLE users ENABLE ROW LEVEL SECURITY",
            Dcl,
            "ALTER TABLE",
            &[],
            &["users"],
            vec![],
        ),
        case(
            "CREATE POLICY tenant ON orders USING (tenant_id = current_setting('app.tenant')::int)",
            Dcl,
            "CREATE POLICY",
            &["orders"],
            &[],
            vec![],
        ),
        case(
            "CREATE ROLE agent LOGIN PASSWORD 'secret'",
            Dcl,
            "CREATE ROLE",
            &[],
            &[],
            vec![],
        ),
        case(
            "ALTER ROLE agent SUPERUSER",
            Dcl,
            "ALTER ROLE",
            &[],
            &[],
            vec![],
        ),
        case(
            "GRANT pg_read_server_files TO agent",
            Dcl,
            "GRANT",
            &[],
            &[],
            vec![Flag::KeywordOnly],
        ),
        case(
            "SET ROLE admin",
            Dcl,
            "SET ROLE",
            &[],
            &[],
            vec![Flag::RoleChange],
        ),
        case(
            "SET SESSION AUTHORIZATION postgres",
            Dcl,
            "SET SESSION AUTHORIZATION",
            &[],
            &[],
            vec![Flag::RoleChange],
        ),
        case(
            "SELECT set_config('role', 'postgres', false)",
            Dcl,
            "SELECT",
            &[],
            &[],
            vec![Flag::RoleChange],
        ),
        // Administration
        case("VACUUM", Admin, "VACUUM", &[], &[], vec![]),
        case("ANALYZE users", Admin, "ANALYZE", &["users"], &[], vec![]),
        case(
            "CHECKPOINT",
            Admin,
            "CHECKPOINT",
            &[],
            &[],
            vec![Flag::KeywordOnly],
        ),
        case(
            "CLUSTER users USING users_pkey",
            Admin,
            "CLUSTER",
            &[],
            &[],
            vec![Flag::KeywordOnly],
        ),
        case(
            "REINDEX TABLE users",
            Admin,
            "REINDEX",
            &[],
            &[],
            vec![Flag::KeywordOnly],
        ),
        case(
            "ALTER SYSTEM SET work_mem = '1GB'",
            Admin,
            "ALTER SYSTEM",
            &[],
            &[],
            vec![Flag::KeywordOnly],
        ),
        case(
            "SET session_replication_role = replica",
            Admin,
            "SET",
            &[],
            &[],
            vec![Flag::ServerParameter("session_replication_role".to_owned())],
        ),
        case(
            "SET app.tenant_id = '42'",
            Admin,
            "SET",
            &[],
            &[],
            vec![Flag::ServerParameter("app.tenant_id".to_owned())],
        ),
        case(
            "SELECT set_config(name, setting, false) FROM saved_settings",
            Admin,
            "SELECT",
            &["saved_settings"],
            &[],
            vec![Flag::AdminFunction("set_config".to_owned())],
        ),
        case(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'bob'",
            Admin,
            "SELECT",
            &["pg_stat_activity"],
            &[],
            vec![Flag::AdminFunction("pg_terminate_backend".to_owned())],
        ),
        case(
            "SELECT pg_catalog.pg_reload_conf()",
            Admin,
            "SELECT",
            &[],
            &[],
            vec![Flag::AdminFunction("pg_catalog.pg_reload_conf".to_owned())],
        ),
        // Dangerous
        case(
            "DELETE FROM sessions",
            Dangerous,
            "DELETE",
            &[],
            &["sessions"],
            vec![Flag::NoWhere],
        ),
        case(
            "UPDATE users SET name = 'x'",
            Dangerous,
            "UPDATE",
            &[],
            &["users"],
            vec![Flag::NoWhere],
        ),
        case(
            "UPDATE users SET admin = true WHERE 1 = 1",
            Dangerous,
            "UPDATE",
            &[],
            &["users"],
            vec![Flag::NoWhere],
        ),
        case(
            "DELETE FROM users WHERE id = id OR false",
            Dangerous,
            "DELETE",
            &[],
            &["users"],
            vec![Flag::NoWhere],
        ),
        case(
            "DROP ROLE agent",
            Dangerous,
            "DROP ROLE",
            &[],
            &[],
            vec![Flag::Drop],
        ),
        case(
            "DROP DATABASE scratch",
            Dangerous,
            "DROP DATABASE",
            &[],
            &[],
            vec![Flag::Drop],
        ),
        case(
            "DROP INDEX CONCURRENTLY users_email_idx",
            Dangerous,
            "DROP INDEX",
            &[],
            &[],
            vec![Flag::KeywordOnly, Flag::Drop],
        ),
        case(
            "COPY users TO STDOUT WITH (FORMAT csv)",
            Read,
            "COPY",
            &["users"],
            &[],
            vec![],
        ),
        case(
            "COPY users TO '/tmp/users.csv'",
            Dangerous,
            "COPY",
            &["users"],
            &[],
            vec![Flag::CopyFile],
        ),
        case(
            "COPY users FROM PROGRAM 'curl http://x'",
            Dangerous,
            "COPY",
            &[],
            &["users"],
            vec![Flag::CopyProgram],
        ),
        case(
            "COPY (SELECT * FROM users) TO PROGRAM 'gzip > /tmp/x'",
            Dangerous,
            "COPY",
            &["users"],
            &[],
            vec![Flag::CopyProgram],
        ),
        case(
            "SELECT pg_read_file('/etc/passwd')",
            Dangerous,
            "SELECT",
            &[],
            &[],
            vec![dangerous_fn("pg_read_file")],
        ),
        case(
            "SELECT * FROM pg_catalog.pg_ls_dir('.')",
            Dangerous,
            "SELECT",
            &[],
            &[],
            vec![dangerous_fn("pg_catalog.pg_ls_dir")],
        ),
        case(
            r#"SELECT id FROM users WHERE id IN (SELECT length("PG_READ_FILE"('x')))"#,
            Dangerous,
            "SELECT",
            &["users"],
            &[],
            vec![dangerous_fn(r#""PG_READ_FILE""#)],
        ),
        case(
            "SELECT dblink_exec('host=x', 'DROP TABLE t')",
            Dangerous,
            "SELECT",
            &[],
            &[],
            vec![dangerous_fn("dblink_exec")],
        ),
        case(
            "SELECT lo_import('/etc/passwd')",
            Dangerous,
            "SELECT",
            &[],
            &[],
            vec![dangerous_fn("lo_import")],
        ),
        case(
            "SELECT query_to_xml('DELETE FROM users RETURNING *', true, false, '')",
            Dangerous,
            "SELECT",
            &[],
            &[],
            vec![dangerous_fn("query_to_xml")],
        ),
        case(
            "INSERT INTO loot SELECT pg_read_file('/etc/shadow')",
            Dangerous,
            "INSERT",
            &[],
            &["loot"],
            vec![dangerous_fn("pg_read_file")],
        ),
        case(
            "DO $$ BEGIN PERFORM pg_sleep(1); END $$",
            Dangerous,
            "DO",
            &[],
            &[],
            vec![Flag::KeywordOnly, Flag::AnonymousCode],
        ),
        case(
            "LOAD 'auto_explain'",
            Dangerous,
            "LOAD",
            &[],
            &[],
            vec![Flag::LoadLibrary],
        ),
        case(
            "SET standard_conforming_strings = off",
            Dangerous,
            "SET",
            &[],
            &[],
            vec![Flag::ConformingStringsOff],
        ),
        case(
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            Dangerous,
            "SELECT",
            &[],
            &[],
            vec![Flag::ConformingStringsOff],
        ),
    ]
}

#[test]
fn real_world_statements() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let classified = match classify(case.sql) {
            Ok(classified) => classified,
            Err(error) => {
                failures.push(format!("{}\n  error: {error}", case.sql));
                continue;
            }
        };
        let [one] = classified.as_slice() else {
            failures.push(format!("{}\n  {} statements", case.sql, classified.len()));
            continue;
        };
        let expected = (
            case.operation,
            case.kind,
            case.read.to_vec(),
            case.written.to_vec(),
            case.flags.clone(),
        );
        let actual = (
            one.operation,
            one.kind.as_str(),
            one.tables_read
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            one.tables_written
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            one.flags.clone(),
        );
        if expected != actual {
            failures.push(format!(
                "{}\n  expected {expected:?}\n  actual   {actual:?}",
                case.sql
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn functions_are_collected_everywhere() {
    let classified = classify(
        "WITH a AS (SELECT lower(name) FROM users) \
         SELECT upper(x), (SELECT max(id) FROM orders WHERE id > abs(-1)) \
         FROM a, generate_series(1, 2) WHERE coalesce(x, '') <> md5('y')",
    )
    .expect("parses");
    let [one] = classified.as_slice() else {
        panic!("one statement expected: {classified:?}");
    };
    for name in ["lower", "upper", "max", "abs", "generate_series", "md5"] {
        assert!(
            one.functions.iter().any(|function| function == name),
            "{name} missing from {:?}",
            one.functions
        );
    }
    let create =
        classify("CREATE TABLE t (id int DEFAULT nextval('s'), at timestamptz DEFAULT now())")
            .expect("parses");
    assert_eq!(create[0].functions, ["nextval", "now"]);
}

#[test]
fn pgbench_script_is_one_entry_per_statement() {
    let script = "BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;
SELECT abalance FROM pgbench_accounts WHERE aid = $1;
UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;
UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);
END;";
    let classified = classify(script).expect("parses");
    let summary: Vec<(Operation, &str)> = classified
        .iter()
        .map(|one| (one.operation, one.kind.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (Read, "BEGIN"),
            (Write, "UPDATE"),
            (Read, "SELECT"),
            (Write, "UPDATE"),
            (Write, "UPDATE"),
            (Write, "INSERT"),
            (Read, "COMMIT"),
        ]
    );
}

#[test]
fn multi_statement_strings() {
    let operations = |sql: &str| -> Vec<Operation> {
        classify(sql)
            .expect("classifies")
            .iter()
            .map(|one| one.operation)
            .collect()
    };
    assert_eq!(operations("SELECT 1; DROP TABLE users"), [Read, Dangerous]);
    assert_eq!(operations("SELECT 1;;SELECT 2;"), [Read, Read]);
    // With standard_conforming_strings on, a backslash does not escape the quote: the
    // server runs the DROP, so it must be seen.
    assert_eq!(
        operations(r"SELECT 'a\'; DROP TABLE t; --'"),
        [Read, Dangerous]
    );
    assert_eq!(operations(r"SELECT E'a\'; DROP TABLE t; --'"), [Read]);
    assert_eq!(operations("SELECT $x$ ; DROP TABLE t; $x$"), [Read]);
    assert_eq!(
        operations("SELECT 1 /* /* nested */ ; DROP TABLE t; */"),
        [Read]
    );
    // Statements sqlparser lacks, next to ones it parses.
    assert_eq!(operations("CHECKPOINT; SELECT 1"), [Admin, Read]);
    assert_eq!(
        operations("VACUUM (VERBOSE) users; DROP OWNED BY agent"),
        [Admin, Dangerous]
    );
    // One statement nothing recognises spoils the whole text.
    assert!(classify("CHECKPOINT; SELEC 1").is_err());
    assert!(classify("SELECT 1; TABLE users").is_err());
}

#[test]
fn empty_text_has_no_statements() {
    for sql in [
        "",
        "   \n\t",
        "-- nothing\n",
        "/* nothing */",
        ";",
        " ; ;; ",
    ] {
        assert_eq!(classify(sql), Ok(Vec::new()), "{sql:?}");
        assert!(classify_or_unparsed(sql).is_empty(), "{sql:?}");
    }
}

#[test]
fn unparsable_text_fails_closed() {
    for sql in [
        "SELEC 1",
        "SELECT 'unterminated",
        "TABLE users",
        "COPY t FROM stdin WITH (FREEZE ON)",
        "SELECT * FROM ROWS FROM (generate_series(1, 2))",
        "CREATE TABLESPACE ts LOCATION '/tmp'",
        "\u{0}\u{1}\u{2}",
    ] {
        assert!(classify(sql).is_err(), "{sql:?} classified");
        assert_eq!(
            classify_or_unparsed(sql),
            [Classified::unparsed()],
            "{sql:?}"
        );
    }
    assert_eq!(Classified::unparsed().operation, Unparsed);
    assert!(matches!(
        classify("SELECT 'open"),
        Err(SqlError::Tokenize(_))
    ));
}

#[test]
fn parse_errors_do_not_repeat_literals() {
    let Err(SqlError::Parse(message)) = classify("SELECT * FROM t WHERE a = 1 'hunter2'") else {
        panic!("parse error expected");
    };
    assert!(!message.contains("hunter2"), "{message}");
    assert!(message.contains("Line: 1"), "{message}");
}

/// Runs `f` on a thread with the stack of a tokio worker, so a stack overflow fails the
/// test instead of hiding in the test harness's larger main stack.
fn on_worker_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    on_worker_stack(|| {
        let parentheses = format!("SELECT {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(classify(&parentheses).is_err());
        let subqueries = format!(
            "SELECT * FROM {}SELECT 1{}",
            "(".repeat(5_000),
            ")".repeat(5_000)
        );
        assert!(classify(&subqueries).is_err());
        let unbalanced = "(".repeat(100_000);
        assert!(classify(&unbalanced).is_err());
        let nots = format!("SELECT {}true", "NOT ".repeat(100_000));
        assert!(classify(&nots).is_err());
    });
}

#[test]
fn long_chains_are_refused_before_they_overflow() {
    on_worker_stack(|| {
        let chains = [
            format!("SELECT 1{}", "+1".repeat(200_000)),
            format!("SELECT a{}", "::int".repeat(100_000)),
            format!("SELECT a{}", "[1]".repeat(100_000)),
            format!("SELECT a{}", " IS NULL".repeat(100_000)),
            format!("SELECT a{}", "->1".repeat(100_000)),
            format!("SELECT CAST(a AS int{})", "[]".repeat(100_000)),
            format!("SELECT 1{}", " UNION SELECT 1".repeat(50_000)),
            format!("SELECT 1, 2{}", " UNION SELECT 1, 2".repeat(50_000)),
            format!("DELETE FROM t WHERE a = 1{}", " OR a = 1".repeat(100_000)),
        ];
        for sql in &chains {
            assert_eq!(classify(sql), Err(SqlError::TooComplex), "{}", &sql[..40]);
        }
    });
}

#[test]
fn chains_under_the_limit_are_classified() {
    on_worker_stack(|| {
        let links = MAX_NESTING_COST / 2 - 10;
        let sum = format!("SELECT 1{}", "+1".repeat(links));
        assert_eq!(classify(&sum).map(|c| c[0].operation), Ok(Read), "sum");
        let subscripts = format!("SELECT a{}", "[1]".repeat(MAX_NESTING_COST - 10));
        assert_eq!(
            classify(&subscripts).map(|c| c[0].operation),
            Ok(Read),
            "subscripts"
        );
        let unions = format!("SELECT 1{}", " UNION SELECT 1".repeat(MAX_NESTING_COST / 5));
        assert_eq!(
            classify(&unions).map(|c| c[0].operation),
            Ok(Read),
            "unions"
        );
    });
}

#[test]
fn huge_lists_are_fine() {
    on_worker_stack(|| {
        let in_list = format!(
            "SELECT * FROM t WHERE id IN (1{})",
            (2..150_000).map(|n| format!(",{n}")).collect::<String>()
        );
        assert!(in_list.len() < MAX_SQL_BYTES);
        let classified = classify(&in_list).expect("parses");
        assert_eq!(classified[0].operation, Read);
        assert_eq!(classified[0].tables_read, ["t"]);

        let values = format!(
            "INSERT INTO t VALUES (1, 'a'){}",
            ", (1, 'a')".repeat(50_000)
        );
        assert_eq!(classify(&values).map(|c| c[0].operation), Ok(Write));

        let functions = format!(
            "SELECT {}",
            (0..20_000)
                .map(|n| format!("dblink{n}()"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let classified = classify(&functions).expect("parses");
        assert_eq!(classified[0].operation, Dangerous);
        assert_eq!(classified[0].functions.len(), 20_000);
    });
}

#[test]
fn oversized_text_is_refused() {
    let sql = format!("SELECT '{}'", "x".repeat(MAX_SQL_BYTES));
    assert!(matches!(classify(&sql), Err(SqlError::TooLong { .. })));
    assert_eq!(
        literals_masked(&sql),
        format!("<unparsable statement: {} bytes>", sql.len())
    );
}

/// Statement fragments, glued at random: whatever comes out must classify or fail
/// without a panic, on a worker-sized stack.
#[test]
fn random_fragments_never_panic() {
    const FRAGMENTS: &[&str] = &[
        "SELECT ",
        "FROM ",
        "t",
        " WHERE ",
        "(",
        ")",
        "[",
        "]",
        ",",
        ";",
        "'",
        "$$",
        "E'\\'",
        "--",
        "/*",
        "*/",
        "\"",
        "1",
        "+",
        "::",
        "UNION ",
        "DELETE ",
        "DROP ",
        "COPY ",
        "TO ",
        "PROGRAM ",
        "WITH ",
        "AS ",
        "set_config(",
        "pg_read_file",
        "EXPLAIN ",
        "ANALYZE ",
        "DO ",
        "VACUUM ",
        "\u{0}",
        "é",
        "$1",
        " ",
        "\n",
        "INSERT INTO ",
        "VALUES ",
        "CASE ",
        "WHEN ",
        "END ",
        "SET ",
        "ROLE ",
        "=",
    ];
    on_worker_stack(|| {
        let mut state: u64 = 0x5eed;
        for _ in 0..3_000 {
            let mut sql = String::new();
            for _ in 0..(state % 40) {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let index = usize::try_from(state >> 33).unwrap_or(0) % FRAGMENTS.len();
                sql.push_str(FRAGMENTS[index]);
            }
            let _ = classify(&sql);
            let _ = classify_or_unparsed(&sql);
            let masked = literals_masked(&sql);
            assert!(!masked.contains("pg_read_file'"), "{masked}");
        }
    });
}

#[test]
fn literals_are_masked() {
    let cases = [
        (
            "SELECT * FROM users WHERE email = 'a@b.c' AND id = 42",
            "SELECT * FROM users WHERE email = ? AND id = ?",
        ),
        ("SELECT $tag$secret$tag$, $$also secret$$", "SELECT ?, ?"),
        (
            r"SELECT E'it\'s', U&'d\0061t', B'101', X'ff'",
            "SELECT ?, ?, ?, ?",
        ),
        ("SELECT 'it''s' || 'x'", "SELECT ? || ?"),
        ("SELECT -1.5e3, .5", "SELECT -?, ?"),
        (
            "SELECT now() - interval '1 day'",
            "SELECT now() - interval ?",
        ),
        (
            "ALTER ROLE agent PASSWORD 'hunter2'",
            "ALTER ROLE agent PASSWORD ?",
        ),
        (
            r#"SELECT "Weird""Name" FROM "T" WHERE x = $1"#,
            r#"SELECT "Weird""Name" FROM "T" WHERE x = $1"#,
        ),
        ("SELECT 1 /* token=abc */ FROM t", "SELECT ?   FROM t"),
        ("UPDATE t SET a = 3 -- was 2\n", "UPDATE t SET a = ?  \n"),
    ];
    for (sql, expected) in cases {
        assert_eq!(literals_masked(sql), expected, "{sql}");
    }
    assert_eq!(
        literals_masked("SELECT 'unterminated"),
        "<unparsable statement: 20 bytes>"
    );
}

#[test]
fn flags_display_for_records() {
    assert_eq!(Flag::NoWhere.to_string(), "no-where");
    assert_eq!(
        dangerous_fn("pg_read_file").to_string(),
        "dangerous-function:pg_read_file"
    );
    assert_eq!(
        Flag::ServerParameter("app.tenant".to_owned()).to_string(),
        "server-parameter:app.tenant"
    );
}

#[test]
fn sensitive_function_names_match_any_schema_and_case() {
    for name in [
        "pg_read_file",
        "PG_READ_FILE",
        "Pg_Ls_Dir",
        "dblink_connect_u",
    ] {
        assert_eq!(functions::function_class(name), Some(Dangerous), "{name}");
    }
    assert_eq!(functions::function_class("pg_cancel_backend"), Some(Admin));
    assert_eq!(functions::function_class("setval"), Some(Write));
    assert_eq!(functions::function_class("lower"), None);
    assert_eq!(functions::function_class("set_config"), None);
}
