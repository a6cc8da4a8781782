//! The CLI side of human approvals: `approvals list`, `approve` and `deny`.
//!
//! The approver is whoever runs the command: the daemon takes the uid from the control
//! socket's peer credentials, so nothing here names a user.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use time::OffsetDateTime;

use super::{CliError, print_json, timestamp};
use crate::{
    approvals::HeldStatement,
    control::{ControlClient, api::ApprovalAnswer, api::ApprovalDecision},
};

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Statements held for a human's approval, oldest first.
    List {
        /// Print JSON (an array of held statements, see docs/api.md).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct DecideArgs {
    /// The approval id (`sluice approvals list`).
    pub id: u64,
    /// Why; recorded with the statement.
    #[arg(long)]
    pub reason: String,
    /// Print the recorded decision as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn list(client: &ControlClient, json: bool) -> Result<ExitCode, CliError> {
    let held: Vec<HeldStatement> = client.get("/v1/approvals").await?;
    if json {
        print_json(&held);
        return Ok(ExitCode::SUCCESS);
    }
    if held.is_empty() {
        println!("no statements are waiting for approval");
        return Ok(ExitCode::SUCCESS);
    }
    let now = OffsetDateTime::now_utc();
    println!(
        "{:>5}  {:<12}  {:>7}  {:>6}  {:<16}  {:<20}  {:>8}  {:>9}  STATEMENT",
        "ID", "AGENT", "PID", "UID", "RESOURCE", "WAITING SINCE", "WAITING", "TIMES OUT"
    );
    for statement in &held {
        let since = timestamp(statement.waiting_since);
        println!(
            "{:>5}  {:<12}  {:>7}  {:>6}  {:<16}  {:<20}  {:>7}s  {:>8}s  {}",
            statement.id,
            statement.agent,
            statement.pid,
            statement.uid,
            statement.resource,
            since.get(..19).unwrap_or(&since),
            (now - statement.waiting_since).whole_seconds().max(0),
            (statement.expires_at - now).whole_seconds().max(0),
            statement.sql,
        );
        if let Some(identity) = &statement.identity {
            println!("{:>5}  identity: {}", "", identity.summary());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice approve` (`approve = true`) and `sluice deny`.
pub async fn decide(
    client: &ControlClient,
    args: DecideArgs,
    approve: bool,
) -> Result<ExitCode, CliError> {
    let verb = if approve { "approve" } else { "deny" };
    let answer: ApprovalAnswer = client
        .post(
            &format!("/v1/approvals/{}/{verb}", args.id),
            &ApprovalDecision {
                reason: args.reason,
            },
        )
        .await?;
    if args.json {
        print_json(&answer);
    } else {
        println!(
            "approval {} {} by {} (uid {}): {}\n  {} pid {} on {}: {}",
            answer.id,
            answer.outcome,
            answer.approver_name.as_deref().unwrap_or("?"),
            answer
                .approver_uid
                .map_or_else(|| "none".to_owned(), |uid| uid.to_string()),
            answer.reason,
            answer.statement.agent,
            answer.statement.pid,
            answer.statement.resource,
            answer.statement.sql,
        );
    }
    Ok(ExitCode::SUCCESS)
}
