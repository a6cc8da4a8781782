//! Developer and CI tasks for sluice, run as `cargo xtask <task>` (an alias in
//! `.cargo/config.toml`).
//!
//! Building sluice needs more than cargo (a nightly with `rust-src` and a
//! `bpf-linker` matched to its LLVM), and testing it needs root and a few Debian
//! packages. These tasks put all of that in one place, so the README's commands and
//! CI (`.ci/run`) do exactly the same thing on a fresh machine.

mod bench;
mod package;
mod setup;
mod shell;
mod vm;

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use crate::shell::{cargo, run, step};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Set-up, build, run and test sluice"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Prepare this (Debian) machine to build and test sluice, skipping what is done.
    Setup,
    /// Build the `sluice` binary (daemon and CLI).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build in release mode and run the daemon with the workspace's policies (as root).
    Run {
        /// Extra arguments for `sluice daemon`, after `--`.
        #[arg(last = true)]
        daemon_args: Vec<OsString>,
    },
    /// Lint, build and run every test, as CI does (as root).
    /// Measure sluice against direct PostgreSQL and PgBouncer; write BENCHMARKS.md (as root).
    Bench {
        /// A short, small run for developing the bench (figures are not stable).
        #[arg(long)]
        quick: bool,
        /// Rounds per figure (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Seconds per pgbench run (default 5; 2 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
        /// Where to write the report (default BENCHMARKS.md in the workspace).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Run only these parts, comma-separated: pgbench, large, connect, profile, sysbench,
        /// http, idle, internals (for developing the bench; the report then has gaps).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Measure this sluice binary instead of building one (to compare two builds
        /// side by side; the `internals` part builds its example if it is missing).
        #[arg(long)]
        binary: Option<PathBuf>,
    },
    /// Build the Debian package (target/package/sluice_VERSION_amd64.deb): the binary,
    /// the systemd units, /etc/sluice/sluice.toml and a default-deny policy.
    Package {
        /// The package version (default: the workspace's).
        #[arg(long)]
        version: Option<String>,
    },
    /// Run the end-to-end tests inside Debian's 6.1 and 6.12 kernels with the BPF LSM
    /// active, under QEMU (TCG) through virtme-ng (as root). Downloads what it needs.
    VmTest {
        /// Which kernels: 6.1, 6.12 or all (comma-separated).
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Which test binaries, comma-separated: bypass, interception, dns, postgres
        /// (postgres runs one smoke test unless a filter is given).
        #[arg(long, default_value = "bypass,interception,dns,postgres")]
        suites: String,
        /// Seconds one guest may take, boot to shutdown.
        #[arg(long, default_value_t = 1500)]
        guest_timeout: u64,
        /// Also install this package (`cargo xtask package`) in each guest and run
        /// tests/package-smoke.sh: install, agent slice, restart, upgrade, purge.
        #[arg(long)]
        deb: Option<PathBuf>,
        /// Also boot a minimal Debian guest with systemd as PID 1 per kernel and run
        /// tests/systemd-guest.sh there: the package installed, sluice.service, an
        /// agent service, restart and upgrade. `--suites none --systemd` runs only that.
        #[arg(long)]
        systemd: bool,
        /// Arguments for every test binary, after `--` (e.g. a test name filter).
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy`.
        #[arg(long)]
        no_lint: bool,
        /// Kernels for the VM step (the bypass suite with the BPF LSM, under QEMU):
        /// 6.1, 6.12, all, or off. `cargo xtask vm-test` runs every suite.
        #[arg(long, default_value = vm::CI_KERNELS)]
        vm: String,
        /// Extra arguments for `cargo test`, after `--` (e.g. a test name filter).
        #[arg(last = true)]
        cargo_test_args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run_task(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Just the chain of messages: they say what failed and how to fix it.
            eprintln!("\nerror: {error}");
            for cause in error.chain().skip(1) {
                eprintln!("caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> Result<()> {
    let workspace = workspace_root()?;
    match task {
        Task::Setup => step("setup", || setup::all(&workspace)),
        Task::Build { release } => build(&workspace, release),
        Task::Run { daemon_args } => run_daemon(&workspace, &daemon_args),
        Task::Bench {
            quick,
            rounds,
            seconds,
            output,
            only,
            binary,
        } => {
            require_root("bench", "it attaches eBPF programs and starts servers")?;
            let output = output.unwrap_or_else(|| workspace.join("BENCHMARKS.md"));
            let mut options = if quick {
                bench::Options::quick(output)
            } else {
                bench::Options::full(output)
            };
            if let Some(rounds) = rounds {
                options.rounds = rounds.max(1);
                options.command.push_str(&format!(" --rounds {rounds}"));
            }
            if let Some(seconds) = seconds {
                options.seconds = seconds.max(1);
                options.command.push_str(&format!(" --seconds {seconds}"));
            }
            if !only.is_empty() {
                options
                    .command
                    .push_str(&format!(" --only {}", only.join(",")));
                options.only = only;
            }
            if let Some(binary) = binary {
                options
                    .command
                    .push_str(&format!(" --binary {}", binary.display()));
                options.binary = Some(binary);
            }
            bench::run_bench(&workspace, options)
        }
        Task::Test {
            no_lint,
            vm,
            cargo_test_args,
        } => test(&workspace, no_lint, &vm, &cargo_test_args),
        Task::Package { version } => {
            let target = target_dir(&workspace);
            step("setup", || setup::toolchain(&workspace))?;
            package::package(&workspace, &target, version.as_deref()).map(drop)
        }
        Task::VmTest {
            kernel,
            suites,
            guest_timeout,
            deb,
            systemd,
            test_args,
        } => {
            require_root(
                "vm-test",
                "it installs QEMU and writes the guests' results as root",
            )?;
            let options = vm::Options {
                kernels: vm::parse_kernels(&kernel)?,
                suites: vm::parse_suites(&suites)?,
                test_args,
                guest_timeout: std::time::Duration::from_secs(guest_timeout),
                deb: deb.map(std::path::absolute).transpose()?,
                systemd,
            };
            vm::vm_test(&workspace, &target_dir(&workspace), &options)
        }
    }
}

fn build(workspace: &Path, release: bool) -> Result<()> {
    step("setup", || setup::toolchain(workspace))?;
    step("build", || {
        let mut cmd = cargo(workspace);
        cmd.args(["build", "-p", "sluice"]);
        if release {
            cmd.arg("--release");
        }
        run(&mut cmd)
    })
}

fn run_daemon(workspace: &Path, daemon_args: &[OsString]) -> Result<()> {
    require_root(
        "run",
        "the daemon loads eBPF programs and attaches them to cgroups",
    )?;
    step("setup", || setup::all(workspace))?;
    step("build", || {
        run(cargo(workspace).args(["build", "-p", "sluice", "--release"]))
    })?;
    let binary = target_dir(workspace).join("release/sluice");
    let mut daemon = std::process::Command::new(&binary);
    daemon
        .arg("daemon")
        .arg("--policy-dir")
        .arg(workspace.join("policies"))
        .args(daemon_args);
    println!("\n=== run ===\n$ {}", shell::display(&daemon));
    // exec, not spawn: the daemon takes over this process, so Ctrl-C reaches it.
    let error = daemon.exec();
    Err(error).with_context(|| format!("could not start {}", binary.display()))
}

fn test(
    workspace: &Path,
    no_lint: bool,
    vm_kernels: &str,
    cargo_test_args: &[OsString],
) -> Result<()> {
    require_root(
        "test",
        "the integration tests create cgroups and attach eBPF programs",
    )?;
    step("setup", || setup::all(workspace))?;
    if no_lint {
        println!("\n(--no-lint: skipping fmt and clippy)");
    } else {
        step("fmt", || {
            run(cargo(workspace).args(["fmt", "--all", "--", "--check"]))
        })?;
        step("clippy", || {
            run(cargo(workspace).args([
                "clippy",
                "--workspace",
                "--exclude",
                "sluice-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    }
    // The integration tests start the binaries themselves, so they must exist first.
    step("build", || {
        run(cargo(workspace).args(["build", "--workspace", "--exclude", "sluice-ebpf", "--bins"]))
    })?;
    let debug = target_dir(workspace).join("debug");
    step("test", || {
        run(cargo(workspace)
            .env("SLUICE_BIN", debug.join("sluice"))
            .env("SLUICE_PROBE", debug.join("sluice-probe"))
            // Every suite runs even after one fails, so one run shows every failure.
            .args([
                "test",
                "--no-fail-fast",
                "--workspace",
                "--exclude",
                "sluice-ebpf",
            ])
            .args(cargo_test_args))
    })?;
    // A test filter is for the host's tests: the VM step runs only without one.
    let vm_kernels = if cargo_test_args.is_empty() {
        vm_kernels
    } else {
        "off"
    };
    step("vm-test", || {
        vm::in_test_task(workspace, &target_dir(workspace), vm_kernels)
    })?;
    println!("\nall steps passed");
    Ok(())
}

/// Whether this process's effective uid is 0, read from `/proc/self/status`
/// (`Uid: <real> <effective> <saved> <fs>`) to keep xtask free of libc bindings.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|uids| uids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn require_root(task: &str, why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {task}` must run as root: {why}.\n    \
             fix: run it from a root shell, or: sudo -E env \"PATH=$PATH\" cargo xtask {task}"
        );
    }
    Ok(())
}

/// The workspace root: cargo tells a running package its manifest directory, and
/// this crate sits one level below the root.
fn workspace_root() -> Result<PathBuf> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest_dir
        .parent()
        .context("xtask's manifest directory has no parent")?
        .to_path_buf();
    if !root.join("Cargo.toml").is_file() {
        bail!("{} is not the sluice workspace root", root.display());
    }
    Ok(root)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
fn target_dir(workspace: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn everything_after_the_first_double_dash_goes_to_cargo_test() {
        let cli = Cli::try_parse_from([
            "xtask",
            "test",
            "--no-lint",
            "--",
            "a_filter",
            "--",
            "--nocapture",
        ])
        .unwrap();
        let Task::Test {
            no_lint,
            cargo_test_args,
            ..
        } = cli.task
        else {
            panic!("parsed as another task");
        };
        assert!(no_lint);
        assert_eq!(cargo_test_args, ["a_filter", "--", "--nocapture"]);
    }

    #[test]
    fn extra_args_need_a_double_dash() {
        assert!(Cli::try_parse_from(["xtask", "test", "a_filter"]).is_err());
        assert!(Cli::try_parse_from(["xtask", "run", "--verbose"]).is_err());
    }
}
