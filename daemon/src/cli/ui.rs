//! `sluice ui`: the web console from the command line (a sign-in URL for hosts without
//! an identity provider).

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{CliError, print_json, timestamp};
use crate::{control::ControlClient, ui::LoginAnswer, ui::LoginRequest};

#[derive(Debug, Subcommand)]
pub enum UiCommand {
    /// Print a one-time sign-in URL for the console: it works once, within its validity,
    /// and signs the browser in as you (root or the admin group), able to approve
    /// unless `--viewer`.
    Login(LoginArgs),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Sign in as a viewer, who sees everything and decides nothing.
    #[arg(long)]
    pub viewer: bool,
    /// How long the URL works ("90s", "5m"; at most 1h).
    #[arg(long, default_value = "5m")]
    pub valid_for: String,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn login(client: &ControlClient, args: LoginArgs) -> Result<ExitCode, CliError> {
    let validity = crate::approvals::parse_duration(&args.valid_for)
        .map_err(|error| CliError::System(format!("--valid-for: {error}")))?;
    let answer: LoginAnswer = client
        .post(
            "/v1/ui/login",
            &LoginRequest {
                viewer: args.viewer,
                valid_for_seconds: Some(validity.as_secs().max(1)),
            },
        )
        .await?;
    if args.json {
        print_json(&answer);
    } else {
        println!("{}", answer.url);
        eprintln!(
            "open it once in your browser before {} (signs in as {})",
            timestamp(answer.expires_at),
            match answer.role {
                crate::ui::Role::Approver => "an approver",
                crate::ui::Role::Viewer => "a viewer",
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
