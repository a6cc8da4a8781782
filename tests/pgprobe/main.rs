//! `sluice-pgprobe`: a tokio-postgres client for the end-to-end tests.
//!
//! psql speaks the simple protocol; this speaks the extended one (Parse/Bind/Execute,
//! binary results), as most application drivers do. The tests run it with `sluice run`
//! and read one JSON report on stdout.
//!
//! - `run CONNINFO`: runs each line of stdin (`SQL|param|param...`) as one statement (an
//!   unnamed prepared statement each, parameters bound as text) and reports every result: rows as text, or the SQLSTATE and
//!   message; later statements still run after an error, on the same session.
//! - `prepared CONNINFO SQL COUNT`: prepares SQL once, executes it COUNT times.
//! - `cancel CONNINFO`: starts `SELECT pg_sleep(30)`, cancels it after 300 ms through
//!   the cancel token, and reports how it ended and how long it took.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls, Row, error::SqlState};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let report = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["run", conninfo] => run(conninfo).await,
        ["prepared", conninfo, sql, count] => prepared(conninfo, sql, count).await,
        ["cancel", conninfo] => cancel(conninfo).await,
        _ => Err(format!(
            "usage: sluice-pgprobe run|prepared|cancel CONNINFO ...; got {args:?}"
        )),
    };
    match report {
        Ok(report) => println!("{report}"),
        Err(error) => println!("{}", json!({"ok": false, "error": error})),
    }
}

async fn connect(conninfo: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .map_err(|e| format!("connect: {}", describe(&e)))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => error.to_string(),
    }
}

fn text_rows(rows: &[Row]) -> Value {
    rows.iter()
        .map(|row| {
            (0..row.len())
                .map(|i| match row.try_get::<_, Option<String>>(i) {
                    Ok(Some(text)) => json!(text),
                    Ok(None) => Value::Null,
                    Err(_) => json!("<not text>"),
                })
                .collect::<Value>()
        })
        .collect()
}

fn failure(sql: &str, error: &tokio_postgres::Error) -> Value {
    let db = error.as_db_error();
    json!({
        "sql": sql,
        "ok": false,
        "code": db.map(|db| db.code().code()),
        "message": db.map_or_else(|| error.to_string(), |db| db.message().to_owned()),
    })
}

async fn run(conninfo: &str) -> Result<Value, String> {
    let client = connect(conninfo).await?;
    let mut script = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut script)
        .map_err(|e| format!("stdin: {e}"))?;
    let mut results = Vec::new();
    for line in script.lines().filter(|line| !line.trim().is_empty()) {
        // `SQL|p1|p2`: text parameters bound to $1, $2...
        let mut parts = line.split('|');
        let sql = parts.next().unwrap_or_default();
        let params: Vec<&str> = parts.collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        results.push(match client.query(sql, &params).await {
            Ok(rows) => json!({"sql": sql, "ok": true, "rows": text_rows(&rows)}),
            Err(error) => failure(sql, &error),
        });
    }
    Ok(json!({"ok": true, "results": results}))
}

async fn prepared(conninfo: &str, sql: &str, count: &str) -> Result<Value, String> {
    let client = connect(conninfo).await?;
    let count: usize = count.parse().map_err(|e| format!("count: {e}"))?;
    let statement = client
        .prepare(sql)
        .await
        .map_err(|e| format!("prepare: {}", describe(&e)))?;
    let mut results = Vec::new();
    for _ in 0..count {
        results.push(match client.query(&statement, &[]).await {
            Ok(rows) => json!({"ok": true, "rows": text_rows(&rows)}),
            Err(error) => failure(sql, &error),
        });
    }
    Ok(json!({"ok": true, "results": results}))
}

async fn cancel(conninfo: &str) -> Result<Value, String> {
    let client = connect(conninfo).await?;
    let token = client.cancel_token();
    let started = Instant::now();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await.map_err(|e| e.to_string())
    });
    let outcome = client.query("SELECT pg_sleep(30)", &[]).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let cancel_sent = canceller.await.map_err(|e| e.to_string()).and_then(|r| r);
    let cancelled = matches!(&outcome, Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED));
    // The session must still work after the cancel.
    let after = client
        .query("SELECT 'still usable'::text", &[])
        .await
        .map(|rows| text_rows(&rows))
        .map_err(|e| describe(&e));
    Ok(json!({
        "ok": true,
        "cancelled": cancelled,
        "cancel_sent": cancel_sent.is_ok(),
        "cancel_error": cancel_sent.err(),
        "elapsed_ms": elapsed_ms,
        "after": after.unwrap_or_else(|e| json!(e)),
    }))
}
