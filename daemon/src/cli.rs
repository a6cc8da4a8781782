//! The `sluice` command line: argument parsing and each subcommand's client side.
//!
//! Everything that talks to a running daemon goes through the control API; `run` and
//! `detach` work on the cgroup and bpffs directly because they must work (and fail
//! closed) while no daemon is up.

mod agent;
mod approvals;
mod ca;
mod export;
mod live_policy;
mod ssh_ca;
#[cfg(test)]
mod tests;
mod timeline;
mod ui;
mod verify;

use std::{
    ffi::OsString,
    io::Write,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand};
use time::format_description::well_known::Rfc3339;

use crate::{
    bpf,
    cgroup::ManagedRoot,
    config::{Config, DEFAULT_CONFIG_PATH},
    control::{ClientError, ControlClient, StatusReport},
    store::{SessionRecord, StatementRecord},
};
use timeline::{Timeline, replay_schedule, timeline_lines};

/// sluice: one inspectable choke point for everything your agents connect to.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, propagate_version = true)]
pub struct Cli {
    /// The daemon's configuration file.
    #[arg(long, global = true, env = "SLUICE_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the programs, listen, decide, relay and record.
    Daemon(DaemonArgs),
    /// Run a command as an agent, inside the managed cgroup.
    Run(RunArgs),
    /// Show whether the daemon is up and the interception attached.
    Status {
        /// Print the status as JSON (see docs/api.md).
        #[arg(long)]
        json: bool,
    },
    /// List and inspect recorded sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Replay a recorded session's statements in recorded time, for reading along.
    /// Nothing is sent to any server: this replays the record, not the traffic.
    Replay(ReplayArgs),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Grant an agent extra operations on a resource for a while (just in time).
    Grant(live_policy::GrantArgs),
    /// List just-in-time grants.
    #[command(subcommand)]
    Grants(live_policy::GrantsCommand),
    /// Revoke a grant: the agent's next statement is judged without it.
    Revoke(live_policy::RevokeArgs),
    /// Statements held for a human's approval.
    #[command(subcommand)]
    Approvals(approvals::ApprovalsCommand),
    /// Let a held statement run; the reason is recorded with it.
    Approve(approvals::DecideArgs),
    /// Refuse a held statement: the agent gets SQLSTATE 42501 with the reason.
    Deny(approvals::DecideArgs),
    /// Print the audit event log (or part of it) in a SIEM format, one event per line.
    Export(export::ExportArgs),
    /// Check the audit event log's hash chain; exit 1 at the first break, naming it.
    Verify(verify::VerifyArgs),
    /// The local CA that intercepts agents' TLS to `http` resources.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Print a kubeconfig for a `kubernetes` resource: the cluster's server URL,
    /// sluice's CA, no credentials (the daemon injects its own).
    Kubeconfig(KubeconfigArgs),
    /// Trust sluice's SSH CA in known_hosts (`install`, `uninstall`, `show`), so that
    /// intercepted `ssh` connections are accepted without prompts.
    #[command(subcommand, name = "ssh-ca")]
    SshCa(ssh_ca::SshCaCommand),
    /// Detach the programs and drop their pinned maps. Agents are no longer
    /// intercepted afterwards; use when uninstalling.
    Detach,
    /// Make systemd services agents (a drop-in per unit).
    #[command(subcommand)]
    Agent(agent::AgentCommand),
    /// The web console (`[ui] listen`): `sluice ui login` prints a one-time sign-in URL.
    #[command(subcommand)]
    Ui(ui::UiCommand),
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Overrides `daemon.policy_dir`.
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Overrides `daemon.state_dir`.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The agent's name: the managed child cgroup the command runs in.
    #[arg(long)]
    pub agent: String,
    /// Run the command as this user (name or uid), with its primary group.
    #[arg(long)]
    pub user: Option<String>,
    /// Start the agent without the seccomp filter that refuses socket(2) and
    /// socketpair(2) for every family but unix, inet, inet6, netlink and AF_ALG. Weakens
    /// containment: where the BPF LSM does not run, the agent can then open AF_VSOCK,
    /// bluetooth, CAN and other sockets that no cgroup hook sees.
    #[arg(long)]
    pub no_seccomp: bool,
    /// Obtain the CI job's identity token and have the daemon verify it and bind it to
    /// this run before the command starts: `github`, `gitlab=VARIABLE`, `buildkite`,
    /// `circleci`, `kubernetes=PATH` or `file=PATH`. The token is handed over the control
    /// socket, never put in the command's arguments or environment; the run is refused
    /// when it does not verify.
    #[arg(long, value_name = "SOURCE")]
    pub identity: Option<crate::workload::source::TokenSource>,
    /// The configured issuer (`[[identity.issuer]] name`) the token must verify as;
    /// by default the one named like the source (`github`, ...), whose audience is
    /// requested from GitHub and Buildkite.
    #[arg(long, value_name = "NAME", requires = "identity")]
    pub identity_issuer: Option<String>,
    /// Also remove from the command's environment what lets it mint more tokens
    /// (`ACTIONS_ID_TOKEN_REQUEST_URL`/`_TOKEN`, `BUILDKITE_AGENT_ACCESS_TOKEN`).
    #[arg(long, requires = "identity")]
    pub scrub_token_source: bool,
    /// Point KUBECONFIG at this file (see `sluice kubeconfig`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// The `kubernetes` resource (policy name).
    #[arg(long)]
    pub resource: String,
    /// The server URL, when the resource's first host name or address and port are not
    /// what clients use.
    #[arg(long)]
    pub server: Option<String>,
    /// The context's default namespace.
    #[arg(long)]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// List sessions, newest first.
    List {
        /// Only this agent's sessions.
        #[arg(long)]
        agent: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON (an array of session records, see docs/api.md).
        #[arg(long)]
        json: bool,
    },
    /// Show one session and the timeline of its statements.
    Show {
        id: u64,
        /// Print JSON: `{"session": ..., "statements": [...]}` (see docs/api.md).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The session to replay.
    pub id: u64,
    /// How many times faster than recorded (0.5 is half speed); 0 means no waiting.
    #[arg(long, default_value_t = 1.0, value_parser = parse_speed)]
    pub speed: f64,
    /// Print every statement at once (same as `--speed 0`).
    #[arg(long, conflicts_with = "speed")]
    pub instant: bool,
    /// Print each statement as one line of JSON (a statement record, see docs/api.md).
    #[arg(long)]
    pub json: bool,
}

/// Plays an asciicast v3 recording: each output event after its interval (divided by
/// `speed`; 0 plays without waiting), then the exit status.
async fn play_cast(cast: &str, speed: f64, out: &mut impl Write) -> Result<(), CliError> {
    for line in cast.lines().skip(1) {
        let Ok((interval, code, data)) = serde_json::from_str::<(f64, String, String)>(line) else {
            continue;
        };
        if speed > 0.0 && interval > 0.0 {
            // Long pauses are capped like asciinema's idle limit: nobody waits minutes.
            let wait = (interval / speed).min(2.0);
            tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
        }
        match code.as_str() {
            "o" => out.write_all(data.as_bytes()).map_err(CliError::Output)?,
            "x" => write!(out, "\r\n[exit {data}]").map_err(CliError::Output)?,
            // The player cannot resize the viewer's terminal: it says so instead.
            "r" => write!(out, "\r\n[terminal resized to {data}]\r\n").map_err(CliError::Output)?,
            _ => {}
        }
        out.flush().map_err(CliError::Output)?;
    }
    Ok(())
}

/// Replay speeds outside this range would only mean waiting for ever or not at all.
const MIN_SPEED: f64 = 0.001;
const MAX_SPEED: f64 = 1_000_000.0;

fn parse_speed(text: &str) -> Result<f64, String> {
    let speed: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if speed == 0.0 || (MIN_SPEED..=MAX_SPEED).contains(&speed) {
        Ok(speed)
    } else {
        Err(format!(
            "the speed must be 0 (no waiting) or between {MIN_SPEED} and {MAX_SPEED}"
        ))
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy directory; errors are printed as FILE:LINE:COL.
    Check { dir: PathBuf },
    /// Make the daemon reload its policy directory now.
    Reload,
    /// Say how a statement or operation would be decided, by which rule or grant, and why.
    Explain(live_policy::ExplainArgs),
}

/// Errors of the CLI's own commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error(transparent)]
    Bpf(#[from] crate::bpf::BpfError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error(
        "the interception is not installed ({missing} not attached under {bpffs}): start `sluice daemon` first; refusing to run an unprotected agent"
    )]
    NotIntercepted { missing: String, bpffs: String },
    #[error("no session {0}")]
    NoSuchSession(u64),
    #[error("unknown user {0}")]
    UnknownUser(String),
    #[error("{0}")]
    System(String),
    #[error("cannot verify the store in {}: {reason}", dir.display())]
    Verify { dir: PathBuf, reason: String },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error(
        "cannot install the seccomp filter that refuses unmediated socket families ({0}); refusing to start the agent (`sluice run --no-seccomp` starts it without, weakening containment)"
    )]
    Seccomp(String),
    #[error("cannot run {command}: {source}")]
    Exec {
        command: String,
        source: std::io::Error,
    },
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    // Policies checked or explained here may name only the configured identity issuers;
    // an unreadable configuration leaves none, so such policies are refused.
    if let Command::Policy(_) = &cli.command
        && let Ok(config) = Config::load(&cli.config)
    {
        crate::workload::set_known_issuers(&config.identity);
    }
    match cli.command {
        Command::Policy(PolicyCommand::Check { dir }) => Ok(policy_check(&dir)),
        Command::Policy(PolicyCommand::Reload) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(live_policy::reload(&client))
        }
        Command::Policy(PolicyCommand::Explain(args)) => {
            runtime()?.block_on(live_policy::explain(|| client(&cli.config), args))
        }
        Command::Grant(args) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(live_policy::grant(&client, args))
        }
        Command::Grants(live_policy::GrantsCommand::List { all, json }) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(live_policy::list(&client, all, json))
        }
        Command::Revoke(args) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(live_policy::revoke(&client, args))
        }
        Command::Approvals(approvals::ApprovalsCommand::List { json }) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(approvals::list(&client, json))
        }
        Command::Approve(args) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(approvals::decide(&client, args, true))
        }
        Command::Deny(args) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(approvals::decide(&client, args, false))
        }
        Command::Ui(ui::UiCommand::Login(args)) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(ui::login(&client, args))
        }
        Command::Verify(args) => verify::verify(&cli.config, args),
        Command::Export(args) => {
            let client = client(&cli.config)?;
            runtime()?.block_on(export::export(&client, args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(args) => run_agent(&Config::load(&cli.config)?, args),
        Command::Detach => detach(&Config::load(&cli.config)?),
        Command::Ca(command) => ca::run(&Config::load(&cli.config)?, command),
        Command::Agent(command) => agent::run(&Config::load(&cli.config)?, command),
        Command::Kubeconfig(args) => kubeconfig(&Config::load(&cli.config)?, &args),
        Command::SshCa(command) => ssh_ca::run(&Config::load(&cli.config)?, command),
        Command::Daemon(args) => {
            let mut config = Config::load(&cli.config)?;
            if let Some(dir) = args.policy_dir {
                config.daemon.policy_dir = dir;
            }
            if let Some(dir) = args.state_dir {
                config.daemon.state_dir = dir;
            }
            daemon_runtime()?.block_on(crate::daemon::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let client = client(&cli.config)?;
            let status = runtime()?.block_on(client.status())?;
            if json {
                print_json(&status);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(SessionsCommand::List { agent, limit, json }) => {
            let client = client(&cli.config)?;
            let sessions =
                runtime()?.block_on(client.list_sessions(agent.as_deref(), Some(limit)))?;
            if json {
                print_json(&sessions);
            } else {
                print_session_table(&sessions);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions(SessionsCommand::Show { id, json }) => {
            let client = client(&cli.config)?;
            let (session, statements) =
                runtime()?.block_on(session_with_statements(&client, id))?;
            if json {
                print_json(&SessionShow {
                    session: &session,
                    statements: &statements,
                });
            } else {
                print_session(&session);
                print_timeline(&session, &statements);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay(args) => {
            let client = client(&cli.config)?;
            let mut out = std::io::stdout().lock();
            match runtime()?.block_on(replay(&client, &args, line_width(), &mut out)) {
                // The reader went away (`| head`): the replay just ends there.
                Err(CliError::Output(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => Err(error),
                Ok(()) => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

/// `sluice sessions show --json`: the session and its statements.
#[derive(serde::Serialize)]
struct SessionShow<'a> {
    session: &'a SessionRecord,
    statements: &'a [StatementRecord],
}

async fn session_with_statements(
    client: &ControlClient,
    id: u64,
) -> Result<(SessionRecord, Vec<StatementRecord>), CliError> {
    let session = client
        .get_session(id)
        .await?
        .ok_or(CliError::NoSuchSession(id))?;
    let statements = client
        .statements(id)
        .await?
        .ok_or(CliError::NoSuchSession(id))?;
    Ok((session, statements))
}

/// Writes the session's statements to `out` as they happened, sleeping between them by
/// the recorded offsets divided by the speed; `width` bounds the text lines.
async fn replay(
    client: &ControlClient,
    args: &ReplayArgs,
    width: usize,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let (session, statements) = session_with_statements(client, args.id).await?;
    let speed = if args.instant { 0.0 } else { args.speed };
    // A session with terminal recordings (SSH) replays its terminals.
    let recordings = client.recordings(args.id).await.unwrap_or_default();
    if !recordings.is_empty() && !args.json {
        writeln!(
            out,
            "replaying session {} of {} ({} pid {}, {}/{}): {} terminal recording(s)",
            session.id,
            session.agent,
            session.comm,
            session.pid,
            session.transport,
            session.destination,
            recordings.len(),
        )
        .map_err(CliError::Output)?;
        for recording in &recordings {
            let what = statements
                .iter()
                .find(|statement| statement.seq == recording.seq)
                .map(|statement| statement.sql.clone())
                .unwrap_or_default();
            writeln!(out, "--- operation {}: {what}", recording.seq).map_err(CliError::Output)?;
            play_cast(&recording.cast, speed, out).await?;
            writeln!(out).map_err(CliError::Output)?;
        }
        return Ok(());
    }
    let timeline = Timeline::new(&session, &statements);
    if !args.json {
        let pace = if speed > 0.0 {
            format!("at {speed}x")
        } else {
            "without waiting".to_owned()
        };
        writeln!(
            out,
            "replaying session {} of {} ({} pid {}, {}/{}): {} statement(s), {pace}",
            session.id,
            session.agent,
            session.comm,
            session.pid,
            session.transport,
            session.destination,
            statements.len(),
        )
        .map_err(CliError::Output)?;
    }
    let start = tokio::time::Instant::now();
    let schedule = replay_schedule(&session, &statements, speed);
    for (statement, due) in statements.iter().zip(schedule) {
        // Measured from the start, so printing never makes the replay drift.
        tokio::time::sleep(due.saturating_sub(start.elapsed())).await;
        let line = if args.json {
            serde_json::to_string(statement).map_err(|error| {
                CliError::Output(std::io::Error::new(std::io::ErrorKind::InvalidData, error))
            })?
        } else {
            timeline.line(statement, width)
        };
        writeln!(out, "{line}").map_err(CliError::Output)?;
        out.flush().map_err(CliError::Output)?;
    }
    if !args.json {
        writeln!(out, "{}", session_end(&session)).map_err(CliError::Output)?;
    }
    Ok(())
}

/// How the session ended, relative to its start.
fn session_end(session: &SessionRecord) -> String {
    match session.ended_at {
        None => "session still open".to_owned(),
        Some(ended_at) => format!(
            "session ended at {}: {}",
            timeline::format_offset(ended_at - session.started_at),
            session.close_reason.as_deref().unwrap_or("-")
        ),
    }
}

fn print_timeline(session: &SessionRecord, statements: &[StatementRecord]) {
    println!();
    if statements.is_empty() {
        println!("no statements recorded");
        return;
    }
    println!("statements ({}):", statements.len());
    for line in timeline_lines(session, statements, line_width()) {
        println!("{line}");
    }
    println!("{}", session_end(session));
}

/// The terminal's width when stdout is one, else [`timeline::DEFAULT_WIDTH`].
fn line_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `size`, which outlives the call.
    let result = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    if result == 0 && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        timeline::DEFAULT_WIDTH
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
}

/// The daemon's runtime: one worker thread per two cores, at least one, unless
/// `TOKIO_WORKER_THREADS` says otherwise. The daemon shares its host with the agents'
/// clients and servers. With a worker per core, tokio wakes an idle worker to steal
/// each session woken by its socket: on a 2-core host that doubled the daemon's context
/// switches per statement and cost 10–15 % more CPU per transaction (BENCHMARKS.md).
fn daemon_runtime() -> Result<tokio::runtime::Runtime, CliError> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        builder.worker_threads((cores / 2).max(1));
    }
    builder.enable_all().build().map_err(CliError::Runtime)
}

fn client(config_path: &Path) -> Result<ControlClient, CliError> {
    Ok(ControlClient::new(
        Config::load(config_path)?.control.socket,
    ))
}

fn policy_check(dir: &Path) -> ExitCode {
    let diagnostics = crate::policy::check_dir(dir, &crate::daemon::enforceable_protocols());
    if diagnostics.is_empty() {
        println!("{}: ok", dir.display());
        return ExitCode::SUCCESS;
    }
    for diagnostic in &diagnostics {
        eprintln!("{diagnostic}");
    }
    eprintln!("{} error(s)", diagnostics.len());
    ExitCode::FAILURE
}

/// Places this process in the agent's cgroup, drops privileges, and execs the command.
/// Refuses when the programs are not attached: an agent must never run unprotected.
fn kubeconfig(config: &Config, args: &KubeconfigArgs) -> Result<ExitCode, CliError> {
    use crate::protocols::{kubernetes_kubeconfig as kubeconfig, local_ca as ca};
    let policy = crate::policy::Policy::load_dir(
        &config.daemon.policy_dir,
        &crate::daemon::enforceable_protocols(),
    )
    .map_err(|errors| CliError::System(format!("the policy does not load:\n{errors}")))?;
    let resource = policy
        .resource(&args.resource)
        .filter(|resource| resource.protocol == crate::policy::Protocol::Kubernetes)
        .ok_or_else(|| {
            CliError::System(format!(
                "no resource `{}` with protocol = \"kubernetes\" in {}",
                args.resource,
                config.daemon.policy_dir.display()
            ))
        })?;
    let server = match &args.server {
        Some(server) => server.clone(),
        None => kubeconfig::server_url(resource).ok_or_else(|| {
            CliError::System(format!(
                "resource `{}` has no address or host name to name as the server: give --server",
                args.resource
            ))
        })?,
    };
    let ca = ca::LocalCa::load(&ca::CaPaths::in_state_dir(&config.daemon.state_dir)).map_err(
        |error| CliError::System(format!("the local CA: {error} (start the daemon once)")),
    )?;
    print!(
        "{}",
        kubeconfig::kubeconfig(
            &resource.name,
            &server,
            ca.certificate_pem(),
            args.namespace.as_deref()
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn run_agent(config: &Config, args: RunArgs) -> Result<ExitCode, CliError> {
    let root = ManagedRoot::resolve(&config.cgroup.root)?;
    let missing: Vec<String> = bpf::attached_programs(&config.cgroup.bpffs_dir)
        .into_iter()
        .filter(|(_, attached)| !attached)
        .map(|(name, _)| name)
        .collect();
    if !root.exists() || !missing.is_empty() {
        return Err(CliError::NotIntercepted {
            missing: if missing.is_empty() {
                "the managed cgroup".into()
            } else {
                missing.join(", ")
            },
            bpffs: config.cgroup.bpffs_dir.display().to_string(),
        });
    }
    let user = args.user.as_deref().map(resolve_user).transpose()?;
    // The token is fetched and the run bound before this process enters the managed
    // cgroup: from inside it, neither the issuer nor the control socket is reachable.
    let mut hidden_variables = Vec::new();
    match &args.identity {
        Some(source) => {
            let run_dir = bind_identity(config, &args, source)?;
            let procs = run_dir.join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string()).map_err(|error| {
                CliError::System(format!(
                    "cannot enter the run cgroup {}: {error}",
                    run_dir.display()
                ))
            })?;
            hidden_variables.extend(source.token_variables());
            if args.scrub_token_source {
                hidden_variables.extend(source.minting_variables().iter().map(|v| (*v).to_owned()));
            }
        }
        None => root.enter(&args.agent, std::process::id())?,
    }

    let (program, rest) = args
        .command
        .split_first()
        .ok_or_else(|| CliError::System("no command given".into()))?;
    let mut command = std::process::Command::new(program);
    command.args(rest);
    for variable in &hidden_variables {
        command.env_remove(variable);
    }
    // Agents trust the local CA without reconfiguration: every runtime's variable
    // points at the system roots plus the sluice CA.
    if let Some(bundle) = ca::bundle_path(config) {
        for variable in crate::protocols::local_ca::TRUST_VARIABLES {
            command.env(variable, &bundle);
        }
    }
    if let Some(kubeconfig) = &args.kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    if let Some(user) = user {
        let (uid, gid) = (user.uid, user.gid);
        let name = std::ffi::CString::new(user.name.as_bytes())
            .map_err(|_| CliError::UnknownUser(user.name.clone()))?;
        // SAFETY: runs between fork and exec; only async-signal-safe calls.
        unsafe {
            command.pre_exec(move || {
                nix::unistd::initgroups(&name, gid)?;
                nix::unistd::setgid(gid)?;
                nix::unistd::setuid(uid)?;
                Ok(())
            });
        }
        command.env("USER", &user.name).env("HOME", &user.dir);
    }
    // Last before exec, after dropping to the user: defence in depth for the
    // `packet_socket` row, see crate::seccomp.
    let seccomp_failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if !args.no_seccomp {
        let filter =
            crate::seccomp::AgentFilter::new().map_err(|e| CliError::Seccomp(e.to_string()))?;
        let failed = seccomp_failed.clone();
        // SAFETY: runs just before exec in this very process (Command::exec does not
        // fork); installing allocates nothing.
        unsafe {
            command.pre_exec(move || {
                filter.install().inspect_err(|_| {
                    failed.store(true, std::sync::atomic::Ordering::Relaxed);
                })
            });
        }
    }
    let error = command.exec();
    if seccomp_failed.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(CliError::Seccomp(error.to_string()));
    }
    Err(CliError::Exec {
        command: program.to_string_lossy().into_owned(),
        source: error,
    })
}

/// Obtains the job's token, has the daemon verify it and bind it to a new run cgroup of
/// the agent, and returns that cgroup's directory. The token lives only in this
/// process's memory and the control connection's body.
fn bind_identity(
    config: &Config,
    args: &RunArgs,
    source: &crate::workload::source::TokenSource,
) -> Result<PathBuf, CliError> {
    let configured = config
        .identity
        .validate()
        .map_err(|error| CliError::System(format!("identity configuration: {error}")))?;
    let issuer = match &args.identity_issuer {
        Some(name) => Some(
            configured
                .iter()
                .find(|issuer| &issuer.name == name)
                .ok_or_else(|| {
                    CliError::System(format!(
                        "no [[identity.issuer]] named {name:?} in the configuration"
                    ))
                })?,
        ),
        None => configured
            .iter()
            .find(|issuer| Some(issuer.name.as_str()) == source.usual_issuer_name())
            .or_else(|| {
                (*source == crate::workload::source::TokenSource::Github)
                    .then(|| {
                        configured
                            .iter()
                            .find(|issuer| issuer.issuer == crate::workload::source::GITHUB_ISSUER)
                    })
                    .flatten()
            })
            .or_else(|| (configured.len() == 1).then(|| &configured[0])),
    };
    let audience = issuer
        .map(|issuer| issuer.audience.clone())
        .unwrap_or_default();
    let client = ControlClient::new(config.control.socket.clone());
    let answer: crate::workload::BindAnswer = runtime()?.block_on(async {
        let token = source.obtain(&audience).await.map_err(|error| {
            CliError::System(format!("cannot obtain the identity token: {error}"))
        })?;
        let request = crate::workload::BindRequest {
            agent: args.agent.clone(),
            issuer: args.identity_issuer.clone(),
            token,
        };
        client
            .post("/v1/identity/runs", &request)
            .await
            .map_err(|error| match error {
                ClientError::Http { message, .. } => CliError::System(message),
                other => CliError::System(format!("cannot bind the identity: {other}")),
            })
    })?;
    eprintln!("sluice: identity verified: {}", answer.identity.summary());
    Ok(answer.run_dir)
}

fn resolve_user(user: &str) -> Result<nix::unistd::User, CliError> {
    let found = match user.parse::<u32>() {
        Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    found
        .map_err(|e| CliError::System(format!("looking up user {user}: {e}")))?
        .ok_or_else(|| CliError::UnknownUser(user.to_owned()))
}

fn detach(config: &Config) -> Result<ExitCode, CliError> {
    let links = bpf::uninstall(&config.cgroup.bpffs_dir)?;
    println!(
        "detached {links} program link(s) from {}",
        config.cgroup.bpffs_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("sluice: cannot encode JSON: {error}"),
    }
}

fn print_status(status: &StatusReport) {
    let attached = status.programs.iter().filter(|p| p.attached).count();
    println!(
        "daemon:     up (pid {}, version {}, up {}s)",
        status.pid, status.version, status.uptime_seconds
    );
    println!("kernel:     {}", status.kernel);
    println!("cgroup:     {}", status.cgroup_root);
    println!("programs:   {attached}/{} attached", status.programs.len());
    for program in &status.programs {
        let state = if program.attached {
            "attached"
        } else {
            "NOT ATTACHED"
        };
        println!("  {:<22} {state}", program.name);
    }
    println!("listeners:  {}", status.listeners.join(", "));
    println!(
        "policy:     {} ({} agents, {} resources, {} rules)",
        status.policy.dir, status.policy.agents, status.policy.resources, status.policy.rules
    );
    println!(
        "            generation {}, loaded {}, {} grant(s) in force",
        status.policy.generation,
        timestamp(status.policy.loaded_at),
        status.policy.active_grants
    );
    if let Some(rejected) = &status.policy.last_rejected {
        println!(
            "            last reload REJECTED at {} ({}); the policy above stays in force:",
            timestamp(rejected.at),
            rejected.trigger
        );
        for error in &rejected.errors {
            println!("              {error}");
        }
    }
    println!(
        "store:      {} ({} sessions, {} open, {} denied)",
        status.store.path, status.store.sessions, status.store.open, status.store.denied
    );
    print_enforcement(status);
    print_exporters(status);
}

/// Each exporter: how far it got, how far behind it is, and its last failure.
fn print_exporters(status: &StatusReport) {
    if status.exporters.is_empty() {
        println!("exporters:  none configured");
        return;
    }
    println!("exporters:");
    for exporter in &status.exporters {
        println!(
            "  {:<16} {:<8} {:<6} cursor {}, lag {}, {} exported",
            exporter.name,
            exporter.kind,
            exporter.format,
            exporter.cursor,
            exporter.lag,
            exporter.exported
        );
        if let (Some(error), Some(at)) = (&exporter.last_error, exporter.last_error_at) {
            println!("  {:<16} last error at {}: {error}", "", timestamp(at));
        }
    }
}

/// The live "cannot route around" matrix: one line per way out, the reason below it.
fn print_enforcement(status: &StatusReport) {
    let enforced = status.enforcement.iter().filter(|r| r.enforced).count();
    println!(
        "containment: {enforced}/{} ways out closed here, {} packet(s) dropped by the backstop",
        status.enforcement.len(),
        status.backstop_drops
    );
    for row in &status.enforcement {
        let state = if row.enforced {
            "enforced"
        } else {
            "NOT ENFORCED"
        };
        println!("  {:<24} {state:<13} {}", row.way_out, row.expected);
        println!("  {:<24} {:<13} by {}", "", "", row.mechanism);
        if !row.detail.is_empty() {
            println!("  {:<24} {:<13} {}", "", "", row.detail);
        }
    }
}

fn timestamp(at: time::OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

fn print_session_table(sessions: &[SessionRecord]) {
    println!(
        "{:>6}  {:<20}  {:<12}  {:>7}  {:<16}  {:<24}  {:<28}  {:>9}  {:>9}  CLOSE",
        "ID", "STARTED", "AGENT", "PID", "COMM", "DESTINATION", "DECISION", "UP", "DOWN"
    );
    for session in sessions {
        let started = timestamp(session.started_at);
        let decision = format!("{} ({})", session.decision.action, session.decision.rule);
        println!(
            "{:>6}  {:<20}  {:<12}  {:>7}  {:<16}  {:<24}  {:<28}  {:>9}  {:>9}  {}",
            session.id,
            started.get(..19).unwrap_or(&started),
            session.agent,
            session.pid,
            session.comm,
            format!("{}/{}", session.transport, session.destination),
            decision,
            session.bytes_up,
            session.bytes_down,
            session.close_reason.as_deref().unwrap_or("open"),
        );
    }
}

fn print_session(session: &SessionRecord) {
    let field = |name: &str, value: &str| println!("{name:<14} {value}");
    field("id", &session.id.to_string());
    field("agent", &session.agent);
    field(
        "process",
        &format!(
            "pid {} tid {} uid {} gid {} comm {}",
            session.pid, session.tid, session.uid, session.gid, session.comm
        ),
    );
    field("exe", session.exe.as_deref().unwrap_or("(gone)"));
    field("cgroup", &session.cgroup);
    if let Some(identity) = &session.identity {
        field("identity", &identity.summary());
        field("  subject", &identity.subject);
        field("  token", &format!("sha256:{}", identity.token_sha256));
    }
    field("source", &session.source);
    field(
        "destination",
        &format!("{}/{}", session.transport, session.destination),
    );
    field("resource", session.resource.as_deref().unwrap_or("-"));
    field(
        "decision",
        &format!(
            "{} by rule {}: {}",
            session.decision.action, session.decision.rule, session.decision.reason
        ),
    );
    field(
        "upstream via",
        session.upstream_local.as_deref().unwrap_or("-"),
    );
    field("started", &timestamp(session.started_at));
    field(
        "ended",
        &session
            .ended_at
            .map_or_else(|| "(open)".to_owned(), timestamp),
    );
    field(
        "bytes",
        &format!("{} up, {} down", session.bytes_up, session.bytes_down),
    );
    field("closed by", session.close_reason.as_deref().unwrap_or("-"));
}
