//! `sluice verify`: checks the event log's hash chain and reports its first break.
//!
//! sled lets one process at a time open a store, so with a daemon up the daemon walks
//! the chain (`GET /v1/events/verify`); with none, the CLI opens the store itself.

use std::{path::PathBuf, process::ExitCode};

use clap::Args;

use super::CliError;
use crate::{
    config::Config,
    control::{ClientError, ControlClient},
    store::{VerifyReport, events::verify_dir},
};

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Verify the store in this directory directly (no daemon may have it open).
    /// Default: ask the running daemon, or open the configured store when none runs.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the check; exit status 0 when the chain is whole, 1 at a break.
pub fn verify(config_path: &std::path::Path, args: VerifyArgs) -> Result<ExitCode, CliError> {
    let report = match args.store {
        Some(dir) => verify_offline(dir)?,
        None => {
            let config = Config::load(config_path)?;
            let client = ControlClient::new(config.control.socket.clone());
            let asked = super::runtime()?.block_on(client.get::<VerifyReport>("/v1/events/verify"));
            match asked {
                Ok(report) => report,
                Err(ClientError::NotRunning { .. }) => verify_offline(config.store_dir())?,
                Err(error) => return Err(error.into()),
            }
        }
    };
    if args.json {
        super::print_json(&report);
    } else {
        print_report(&report);
    }
    Ok(if report.chain_break.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Opens and walks the store; a store sled cannot read is an error, never a panic.
fn verify_offline(dir: PathBuf) -> Result<VerifyReport, CliError> {
    match std::panic::catch_unwind(|| verify_dir(&dir)) {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(source)) => Err(CliError::Verify {
            dir,
            reason: source.to_string(),
        }),
        Err(_) => Err(CliError::Verify {
            dir,
            reason: "sled cannot read its files (damaged?)".into(),
        }),
    }
}

fn print_report(report: &VerifyReport) {
    match &report.chain_break {
        None => {
            match (report.first_seq, report.last_seq) {
                (Some(first), Some(last)) => println!(
                    "event log intact: {} events, seq {first} to {last}",
                    report.events
                ),
                _ => println!("event log intact: no events"),
            }
            if report.dropped_before > 0 {
                println!(
                    "events up to seq {} were dropped by retention (recorded)",
                    report.dropped_before
                );
            }
        }
        Some(found) => {
            println!(
                "event log broken at seq {}: {}: {}",
                found.seq, found.kind, found.detail
            );
            println!(
                "{} events before it verified{}",
                report.events,
                report
                    .first_seq
                    .map(|first| format!(" (from seq {first})"))
                    .unwrap_or_default()
            );
        }
    }
}
