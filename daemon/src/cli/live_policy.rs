//! The CLI side of the live policy: `policy reload`, `policy explain`, `grant`,
//! `grants list` and `revoke`.
//!
//! Explain without `--policy-dir` asks the daemon, so active grants count; with it, it
//! loads the directory and decides through the same [`PolicyHandle`] the daemon uses.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

use super::{CliError, print_json, timestamp};
use crate::{
    control::{ControlClient, GrantRequest, ReloadReport, RevokeRequest},
    policy::{ExplainQuestion, Explanation, Grant, Operation, Policy, PolicyHandle},
};

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The agent (managed cgroup name).
    #[arg(long)]
    pub agent: String,
    /// The resource's name in the policy.
    #[arg(long)]
    pub resource: String,
    /// SQL to classify and decide, as the resource's proxy (PostgreSQL or MySQL) would.
    #[arg(
        long,
        conflicts_with = "operation",
        required_unless_present = "operation"
    )]
    pub sql: Option<String>,
    /// An operation class to decide (`connect`, `read`, `write`, ...).
    #[arg(long)]
    pub operation: Option<Operation>,
    /// The process's uid (default: the agent's first `uids` entry, else 0).
    #[arg(long)]
    pub uid: Option<u32>,
    /// The process's executable (default: the agent's first `exe` entry).
    #[arg(long)]
    pub exe: Option<String>,
    /// Decide as for an agent run whose verified workload identity has these claims
    /// (a JSON object, like '{"ref": "refs/heads/main", "repository_owner_id": "4242"}'),
    /// from the agent's `identity` issuer.
    #[arg(long, value_name = "JSON", value_parser = parse_claims)]
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
    /// Decide offline with this policy directory instead of asking the daemon (grants
    /// then do not count).
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Print the explanation as JSON (see docs/api.md).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    /// The agent (managed cgroup name).
    #[arg(long)]
    pub agent: String,
    /// The resource's name in the policy.
    #[arg(long)]
    pub resource: String,
    /// Operation classes to allow, comma separated (`write,ddl`).
    #[arg(long, value_delimiter = ',', required = true, value_parser = grant_class)]
    pub allow: Vec<Operation>,
    /// How long: `90s`, `30m`, `2h`, `1d`.
    #[arg(long = "for", value_parser = crate::grants::parse_duration)]
    pub duration: std::time::Duration,
    /// Why (recorded with the grant).
    #[arg(long)]
    pub reason: String,
    /// Print the grant as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One class a grant allows: named, never `*`.
fn grant_class(text: &str) -> Result<Operation, String> {
    if text == "*" {
        return Err(
            "a grant names the classes it allows (like write,ddl): `*` is not accepted".into(),
        );
    }
    text.parse()
        .map_err(|error: crate::policy::UnknownOperation| error.to_string())
}

#[derive(Debug, Subcommand)]
pub enum GrantsCommand {
    /// List grants, newest first: those in force, or all with `--all`.
    List {
        /// Also list expired and revoked grants.
        #[arg(long)]
        all: bool,
        /// Print JSON (an array of grants, see docs/api.md).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// The grant's id.
    pub id: u64,
    /// Why (recorded with the revocation).
    #[arg(long)]
    pub reason: Option<String>,
}

fn parse_claims(text: &str) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::from_str(text) {
        Ok(serde_json::Value::Object(claims)) => Ok(claims),
        Ok(_) => Err("the claims must be a JSON object".into()),
        Err(error) => Err(format!("the claims are not JSON: {error}")),
    }
}

/// `sluice policy reload`: exit 0 when the new policy is in force, 1 when rejected.
pub async fn reload(client: &ControlClient) -> Result<ExitCode, CliError> {
    let report: ReloadReport = client.post("/v1/policy/reload", &()).await?;
    if report.applied {
        println!("policy reloaded: generation {}", report.generation);
        return Ok(ExitCode::SUCCESS);
    }
    for error in &report.errors {
        eprintln!("{error}");
    }
    eprintln!(
        "policy reload rejected ({} error(s)): generation {} stays in force",
        report.errors.len(),
        report.generation
    );
    Ok(ExitCode::FAILURE)
}

/// `sluice policy explain`.
pub async fn explain(
    client: impl FnOnce() -> Result<ControlClient, CliError>,
    args: ExplainArgs,
) -> Result<ExitCode, CliError> {
    let question = ExplainQuestion {
        agent: args.agent,
        resource: args.resource,
        sql: args.sql,
        operation: args.operation,
        uid: args.uid,
        exe: args.exe,
        claims: args.claims,
    };
    let explanation: Explanation = match &args.policy_dir {
        Some(dir) => {
            let policy = match Policy::load_dir(dir, &crate::daemon::enforceable_protocols()) {
                Ok(policy) => policy,
                Err(errors) => {
                    for diagnostic in &errors.0 {
                        eprintln!("{diagnostic}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            match PolicyHandle::new(policy).explain(&question) {
                Ok(explanation) => explanation,
                Err(error) => {
                    eprintln!("sluice: {error}");
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        None => client()?.post("/v1/policy/explain", &question).await?,
    };
    if args.json {
        print_json(&explanation);
    } else {
        print_explanation(&explanation, args.policy_dir.is_some());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_explanation(explanation: &Explanation, offline: bool) {
    println!(
        "agent `{}` (uid {}{}) on resource `{}`{}",
        explanation.agent,
        explanation.uid,
        explanation
            .exe
            .as_deref()
            .map(|exe| format!(", exe {exe}"))
            .unwrap_or_default(),
        explanation.resource,
        if offline {
            " (offline: grants not counted)"
        } else {
            ""
        }
    );
    for (index, statement) in explanation.statements.iter().enumerate() {
        let tables: Vec<&str> = statement
            .tables_read
            .iter()
            .chain(&statement.tables_written)
            .map(String::as_str)
            .collect();
        println!(
            "statement {}: class {}{}{}",
            index + 1,
            statement.operation,
            if statement.kind.is_empty() {
                String::new()
            } else {
                format!(", kind {}", statement.kind)
            },
            if tables.is_empty() {
                String::new()
            } else {
                format!(", tables {}", tables.join(", "))
            }
        );
        println!(
            "  decision: {} by {}{}",
            statement.decision.action,
            statement.decision.rule,
            statement
                .decision
                .mask
                .as_deref()
                .map(|mask| format!(", mask {mask}"))
                .unwrap_or_default()
        );
        println!("  why: {}", statement.decision.reason);
    }
    if explanation.statements.len() > 1 {
        println!(
            "the agent gets: {} by {}",
            explanation.decision.action, explanation.decision.rule
        );
    }
}

/// `sluice grant`.
pub async fn grant(client: &ControlClient, args: GrantArgs) -> Result<ExitCode, CliError> {
    let request = GrantRequest {
        agent: args.agent,
        resource: args.resource,
        operations: args.allow,
        duration_seconds: args.duration.as_secs(),
        reason: args.reason,
    };
    let grant: Grant = client.post("/v1/grants", &request).await?;
    if args.json {
        print_json(&grant);
    } else {
        println!(
            "grant {} created: agent `{}` may {} on `{}` until {}",
            grant.id,
            grant.agent,
            grant.operation_names().join(","),
            grant.resource,
            timestamp(grant.expires_at)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice grants list`.
pub async fn list(client: &ControlClient, all: bool, json: bool) -> Result<ExitCode, CliError> {
    let now = time::OffsetDateTime::now_utc();
    let grants: Vec<Grant> = client
        .get::<Vec<Grant>>("/v1/grants")
        .await?
        .into_iter()
        .filter(|grant| all || grant.in_force_at(now))
        .collect();
    if json {
        print_json(&grants);
        return Ok(ExitCode::SUCCESS);
    }
    if grants.is_empty() {
        println!("no grants{}", if all { "" } else { " in force" });
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>5}  {:<8}  {:<16}  {:<16}  {:<16}  {:<20}  {:<12}  REASON",
        "ID", "STATE", "AGENT", "RESOURCE", "ALLOW", "EXPIRES", "BY"
    );
    for grant in &grants {
        let state = if grant.state == crate::policy::GrantState::Active && !grant.in_force_at(now) {
            "expired"
        } else {
            grant.state.as_str()
        };
        println!(
            "{:>5}  {:<8}  {:<16}  {:<16}  {:<16}  {:<20}  {:<12}  {}",
            grant.id,
            state,
            grant.agent,
            grant.resource,
            grant.operation_names().join(","),
            timestamp(grant.expires_at),
            grant
                .created_by
                .clone()
                .unwrap_or_else(|| format!("uid {}", grant.created_by_uid)),
            grant.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice revoke`.
pub async fn revoke(client: &ControlClient, args: RevokeArgs) -> Result<ExitCode, CliError> {
    let grant: Grant = client
        .post(
            &format!("/v1/grants/{}/revoke", args.id),
            &RevokeRequest {
                reason: args.reason,
            },
        )
        .await?;
    println!(
        "grant {} revoked: agent `{}` on `{}` is judged without it from its next statement",
        grant.id, grant.agent, grant.resource
    );
    Ok(ExitCode::SUCCESS)
}
