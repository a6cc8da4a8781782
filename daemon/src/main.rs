//! The `sluice` binary: parses the command line, sets up logging, and reports errors.

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    exit_quietly_when_stdout_closes();
    let cli = sluice::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match sluice::cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            // Show the whole cause chain: aya and io errors keep the useful part there.
            let mut message = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !message.contains(&cause_text) {
                    message = format!("{message}: {cause_text}");
                }
                source = cause.source();
            }
            eprintln!("sluice: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `sluice status | head -1`: once the reader of stdout has gone, printing fails with
/// EPIPE and `println!` panics. That is no failure of sluice's, so the process ends
/// quietly with the status a SIGPIPE would have given it (141), for every subcommand.
/// Any other panic is reported as usual. SIGPIPE itself stays ignored (Rust's default),
/// so that a socket peer going away stays an error the daemon and the control client
/// can report instead of a silent death.
fn exit_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        // `failed printing to stdout: Broken pipe (os error 32)`
        if message.starts_with("failed printing to stdout")
            && message.to_ascii_lowercase().contains("broken pipe")
        {
            std::process::exit(141);
        }
        report(info);
    }));
}
