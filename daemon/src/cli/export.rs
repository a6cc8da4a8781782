//! `sluice export`: the event log, or one session's part of it, printed once in a SIEM
//! format. The daemon holds the store's lock, so events come page by page through the
//! control API (`GET /v1/events`) and are formatted here, with the exporters' own
//! functions.

use std::io::Write as _;

use clap::Args;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::CliError;
use crate::{
    control::ControlClient,
    export::{Format, render, select::EventPage},
};

/// Events asked for per request.
const PAGE: usize = 1000;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The output format: one event per line.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Only events at or after this time (RFC 3339, e.g. 2026-01-02T03:04:05Z).
    #[arg(long, value_parser = parse_time)]
    pub since: Option<OffsetDateTime>,
    /// Only this session's events.
    #[arg(long)]
    pub session: Option<u64>,
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|error| format!("{text:?} is not an RFC 3339 time: {error}"))
}

/// Prints every matching event, oldest first, then returns.
pub async fn export(client: &ControlClient, args: ExportArgs) -> Result<(), CliError> {
    let mut after = 0;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    loop {
        let mut path = format!("/v1/events?after={after}&limit={PAGE}");
        if let Some(session) = args.session {
            path.push_str(&format!("&session={session}"));
        }
        if let Some(since) = args.since {
            let since = since
                .format(&Rfc3339)
                .map_err(|error| CliError::System(error.to_string()))?;
            path.push_str(&format!("&since={}", since.replace('+', "%2B")));
        }
        let page: EventPage = client.get(&path).await?;
        for event in &page.events {
            let line =
                render(args.format, event).map_err(|error| CliError::System(error.to_string()))?;
            writeln!(out, "{line}").map_err(CliError::Output)?;
        }
        if !page.more || page.next_after <= after {
            break;
        }
        after = page.next_after;
    }
    out.flush().map_err(CliError::Output)
}
