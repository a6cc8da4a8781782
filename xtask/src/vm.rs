//! `cargo xtask vm-test`: the end-to-end tests inside Debian's own kernels, with the BPF
//! LSM active.
//!
//! The development and CI machines cannot load BPF LSM programs (lockdown), and their
//! `/dev/kvm` cannot run stock kernels, so the rows of the threat model that rest on the
//! LSM can only be proven in an emulated machine. This task fetches Debian's kernel
//! packages (`apt-get download`, unpacked with `dpkg-deb -x`, never installed), boots each
//! one under QEMU's TCG through virtme-ng (from PyPI, in a venv of its own) with this
//! machine's root file system shared read-only, and runs the test binaries built here
//! inside the guest as root. Results come back through one writable directory.
//!
//! Everything is cached under `target/vm-test/` and skipped when present. See
//! `/work/shared/design/field-notes-real-hosts.md` for why these tools and flags.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

mod systemd;

use crate::{
    setup,
    shell::{capture, cargo, note, part, run, step},
};

/// The Debian packages the VM needs on the host: QEMU, and what virtme-ng's guest init
/// uses from the shared root (udev creates `/dev/virtio-ports/*`, through which the
/// guest's exit status comes back; busybox and kmod for its init and modules).
pub const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "udev",
    "busybox-static",
    "kmod",
    "python3-venv",
    // The systemd guest's root (see `systemd`).
    "mmdebstrap",
    "e2fsprogs",
    "binutils",
];

/// virtme-ng, pinned: its command line is what this module speaks.
const VIRTME_NG: &str = "virtme-ng==1.42";

/// The LSMs the guest kernels boot with: Debian's defaults plus `bpf`.
const GUEST_LSM: &str = "lsm=lockdown,capability,landlock,yama,apparmor,bpf";

/// How much slower than the host the tests' waits for the daemon may be in a guest:
/// TCG emulates every instruction, and loading and verifying the programs is CPU-bound.
const GUEST_SLOWDOWN: u32 = 6;

/// A kernel series the VM tests run on, and how to find Debian's current package for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSeries {
    /// `6.1`, `6.12`: what `--kernel` takes and the results are labelled with.
    pub label: &'static str,
    /// Meta packages whose dependency names the current signed image, in order of
    /// preference. The unsigned image (the same kernel) is that name plus `-unsigned`.
    meta_packages: &'static [&'static str],
}

/// Every series `--kernel all` runs: bookworm's own kernel and bookworm-security's 6.12.
pub const KERNELS: &[KernelSeries] = &[
    KernelSeries {
        label: "6.1",
        meta_packages: &["linux-image-amd64"],
    },
    KernelSeries {
        label: "6.12",
        meta_packages: &["linux-image-6.12-amd64", "linux-image-amd64"],
    },
];

/// A test binary of the `sluice-tests` package and the filter it runs with by default.
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    pub name: &'static str,
    /// Test name filter when the caller gives none (`None`: every test).
    default_filter: Option<&'static str>,
    /// Tests left out in guests (libtest `--skip`), each for a reason in [`SUITES`].
    skip: &'static [&'static str],
    /// Nothing in it depends on the kernel beyond what the other suites cover: it runs
    /// in the first guest of a run only.
    first_kernel_only: bool,
}

/// The suites `vm-test` runs by default: the cgroup programs and LSM rows, DNS, and one
/// PostgreSQL session end to end as a smoke test of the protocol path.
pub const SUITES: &[Suite] = &[
    Suite {
        name: "bypass",
        default_filter: None,
        skip: &[],
        first_kernel_only: false,
    },
    Suite {
        name: "interception",
        default_filter: None,
        // A load test (500 connections at once, 10 s each): under TCG it measures the
        // emulator, and the kernel paths it crosses are the ones every other test does.
        skip: &["five_hundred_concurrent_connections_keep_their_own_destinations"],
        first_kernel_only: false,
    },
    Suite {
        name: "dns",
        default_filter: None,
        skip: &[],
        first_kernel_only: false,
    },
    Suite {
        name: "postgres",
        default_filter: Some("psql_as_an_agent_prints_exactly_what_it_prints_directly"),
        skip: &[],
        // The protocol path over a redirected TCP connection (interception covers the
        // redirect on every kernel); about 300 s under TCG, mostly the server's start.
        first_kernel_only: true,
    },
];

/// What one `vm-test` run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub kernels: Vec<KernelSeries>,
    pub suites: Vec<Suite>,
    /// Arguments for every test binary (a name filter, `--exact`, ...); empty for the
    /// suites' defaults.
    pub test_args: Vec<String>,
    /// Wall-clock limit for one guest (boot, tests, shutdown).
    pub guest_timeout: Duration,
    /// A `.deb` (`cargo xtask package`) to install, use, upgrade and purge in each guest
    /// with `tests/package-smoke.sh`, after the suites.
    pub deb: Option<PathBuf>,
    /// Also boot a guest with systemd as PID 1 per kernel and run
    /// `tests/systemd-guest.sh` there (see `systemd`).
    pub systemd: bool,
}

/// Parses `--kernel`: `6.1`, `6.12` or `all`.
pub fn parse_kernels(value: &str) -> Result<Vec<KernelSeries>> {
    if value == "all" {
        return Ok(KERNELS.to_vec());
    }
    value
        .split(',')
        .map(|label| {
            KERNELS
                .iter()
                .find(|k| k.label == label.trim())
                .copied()
                .with_context(|| {
                    format!("unknown kernel {label:?}: use 6.1, 6.12 or all (comma-separated)")
                })
        })
        .collect()
}

/// Parses `--suites`: names from [`SUITES`], comma-separated, or `none`.
pub fn parse_suites(value: &str) -> Result<Vec<Suite>> {
    if value == "none" {
        return Ok(Vec::new());
    }
    value
        .split(',')
        .map(|name| {
            SUITES
                .iter()
                .find(|s| s.name == name.trim())
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = SUITES.iter().map(|s| s.name).collect();
                    format!("unknown suite {name:?}: use {}", known.join(", "))
                })
        })
        .collect()
}

/// Where the kernels, the venv and the results live.
struct Cache {
    root: PathBuf,
}

impl Cache {
    fn new(target_dir: &Path) -> Self {
        Self {
            root: target_dir.join("vm-test"),
        }
    }
    fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }
    fn kernels(&self) -> PathBuf {
        self.root.join("kernels")
    }
    fn venv(&self) -> PathBuf {
        self.root.join("venv")
    }
    fn results(&self, kernel: &KernelSeries) -> PathBuf {
        self.root.join("results").join(kernel.label)
    }
}

/// Whether this machine can run the VM tests at all: QEMU is installed or installable.
/// `Err` carries why not, for the skip message.
pub fn prepare_host() -> Result<()> {
    setup::ensure_packages(VM_PACKAGES)
        .context("the VM tests need QEMU (qemu-system-x86) and virtme-ng's helpers from Debian")?;
    if capture(Command::new("qemu-system-x86_64").arg("--version")).is_err() {
        bail!("qemu-system-x86_64 does not run on this machine");
    }
    Ok(())
}

/// What `cargo xtask test` runs in guests by default: the `bypass` suite, which holds
/// every BPF LSM row, on 6.12, and the systemd guest (the package, sluice.service and
/// an agent service; about 6 minutes cold, 3.5 once its image is cached). The full
/// matrix (both kernels, every suite) takes longer than CI's budget under TCG:
/// `cargo xtask vm-test --systemd` runs it.
pub const CI_KERNELS: &str = "6.12";
pub const CI_SUITES: &str = "bypass";

/// The VM step of `cargo xtask test`: `kernels` as `--kernel` takes it, or `off`.
/// Skipped, saying why, only when this machine cannot run QEMU at all; any other
/// failure (a download, a guest, a test) fails the step.
pub fn in_test_task(workspace: &Path, target_dir: &Path, kernels: &str) -> Result<()> {
    if kernels == "off" {
        println!("(--vm off: skipping the VM tests; the BPF LSM rows are not proven by this run)");
        return Ok(());
    }
    if let Err(why) = prepare_host() {
        println!(
            "SKIPPED: this machine cannot run QEMU ({why:#}), so the BPF LSM rows are not              proven by this run. `cargo xtask vm-test` runs them where QEMU can be installed."
        );
        return Ok(());
    }
    let options = Options {
        kernels: parse_kernels(kernels)?,
        suites: parse_suites(CI_SUITES)?,
        test_args: Vec::new(),
        guest_timeout: Duration::from_secs(1500),
        deb: None,
        systemd: true,
    };
    vm_test(workspace, target_dir, &options)
}

/// Runs the whole task; fails when any test in any guest failed.
pub fn vm_test(workspace: &Path, target_dir: &Path, options: &Options) -> Result<()> {
    let started = Instant::now();
    step("vm host packages", prepare_host)?;
    step("setup", || setup::all(workspace))?;
    let cache = Cache::new(target_dir);
    let vng = step("virtme-ng", || ensure_virtme_ng(&cache))?;
    let mut kernels = Vec::new();
    let mut images = Vec::new();
    step("kernels", || {
        for series in &options.kernels {
            kernels.push((*series, ensure_kernel(&cache, series)?));
            if options.systemd {
                images.push(systemd::ensure_image(&cache, series)?);
            }
        }
        Ok(())
    })?;
    let binaries = step("build", || build_test_binaries(workspace, &options.suites))?;
    let prepared = started.elapsed();

    let mut reports = Vec::new();
    let virtme_guest = !options.suites.is_empty() || options.deb.is_some();
    for (index, (series, kernel)) in kernels.iter().enumerate() {
        if virtme_guest {
            let mut binaries = binaries.clone();
            if index > 0 {
                binaries
                    .suites
                    .retain(|(suite, _)| !suite.first_kernel_only);
            }
            let report = step(&format!("guest {}", series.label), || {
                run_guest(workspace, &cache, &vng, series, kernel, &binaries, options)
            })?;
            reports.push(report);
        }
        if let Some(image) = images.get(index) {
            let report = step(&format!("systemd guest {}", series.label), || {
                systemd::run_guest(workspace, &cache, series, image, &binaries.sluice, options)
            })?;
            reports.push(report);
        }
    }

    println!("\n=== vm-test results ===");
    println!("(host preparation and build: {})", seconds(prepared));
    let mut failed = false;
    for report in &reports {
        print!("{}", report.render());
        failed |= !report.passed();
    }
    println!("total: {}", seconds(started.elapsed()));
    if failed {
        bail!(
            "vm-test failed; the guests' full output is in {}",
            cache.root.join("results").display()
        );
    }
    println!("\nall guests passed");
    Ok(())
}

fn seconds(duration: Duration) -> String {
    format!("{:.0} s", duration.as_secs_f64())
}

/// Makes `target/vm-test/venv` with virtme-ng, unless it is there at the pinned version.
/// Returns the `vng` executable.
fn ensure_virtme_ng(cache: &Cache) -> Result<PathBuf> {
    part(&format!("{VIRTME_NG} in {}", cache.venv().display()));
    let vng = cache.venv().join("bin/vng");
    let wanted = VIRTME_NG.rsplit("==").next().unwrap_or_default();
    if let Ok(version) = capture(Command::new(&vng).arg("--version"))
        && version.split_whitespace().last() == Some(wanted)
    {
        note(&format!("{} is installed, skipping", version.trim()));
        return Ok(vng);
    }
    // Debian's python3 (python3-venv), not whatever python3 comes first on PATH.
    run(Command::new("/usr/bin/python3")
        .args(["-m", "venv", "--clear"])
        .arg(cache.venv()))
    .context("fix: apt-get install python3-venv")?;
    run(Command::new(cache.venv().join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            VIRTME_NG,
        ])
        .stdin(Stdio::null()))
    .context("installing virtme-ng from PyPI failed; check access to pypi.org")?;
    Ok(vng)
}

/// An unpacked kernel package.
#[derive(Clone, Debug)]
pub struct UnpackedKernel {
    /// The package name (`linux-image-6.12.118+deb12-amd64-unsigned`).
    pub package: String,
    pub vmlinuz: PathBuf,
}

/// The unsigned image package of `series` that apt currently offers.
fn resolve_kernel_package(series: &KernelSeries) -> Result<String> {
    for meta in series.meta_packages {
        let Ok(depends) = capture(Command::new("apt-cache").args(["depends", meta])) else {
            continue;
        };
        if let Some(image) = image_dependency(&depends, series.label) {
            return Ok(format!("{image}-unsigned"));
        }
    }
    bail!(
        "apt knows no {} kernel image (looked at the dependencies of {}); \
         check that bookworm and bookworm-security are in apt's sources and run apt-get update",
        series.label,
        series.meta_packages.join(", ")
    )
}

/// The `linux-image-<label>.*` package a meta package's `apt-cache depends` output names.
fn image_dependency(depends: &str, label: &str) -> Option<String> {
    let prefix = format!("linux-image-{label}.");
    depends.lines().find_map(|line| {
        let name = line.trim().strip_prefix("Depends:")?.trim();
        (name.starts_with(&prefix) && name.ends_with("-amd64")).then(|| name.to_owned())
    })
}

fn ensure_kernel(cache: &Cache, series: &KernelSeries) -> Result<UnpackedKernel> {
    part(&format!("Debian kernel {}", series.label));
    let package = resolve_kernel_package(series)?;
    let dir = cache.kernels().join(&package);
    if let Some(vmlinuz) = find_vmlinuz(&dir)
        && dir.join(".unpacked").is_file()
    {
        note(&format!("{package} is unpacked, skipping"));
        return Ok(UnpackedKernel { package, vmlinuz });
    }
    fs::create_dir_all(cache.debs())?;
    let deb = find_deb(&cache.debs(), &package);
    let deb = match deb {
        Some(deb) => deb,
        None => {
            run(Command::new("apt-get")
                .args(["download", "-q"])
                .arg(&package)
                .current_dir(cache.debs())
                .stdin(Stdio::null()))
            .context("fix: apt-get update, then run vm-test again")?;
            find_deb(&cache.debs(), &package)
                .with_context(|| format!("apt-get download left no {package}_*.deb"))?
        }
    };
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let vmlinuz =
        find_vmlinuz(&dir).with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    fs::write(dir.join(".unpacked"), "")?;
    // The .deb is not needed once unpacked.
    let _ = fs::remove_file(&deb);
    Ok(UnpackedKernel { package, vmlinuz })
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let name = entry.file_name().into_string().ok()?;
        (name.starts_with(&prefix) && name.ends_with(".deb")).then(|| entry.path())
    })
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir.join("boot"))
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.starts_with("vmlinuz-").then(|| entry.path())
        })
}

/// The binaries the guest runs, all built on the host.
#[derive(Clone, Debug)]
pub struct TestBinaries {
    pub sluice: PathBuf,
    pub probe: PathBuf,
    pub pgprobe: PathBuf,
    /// Each suite's test executable.
    pub suites: Vec<(Suite, PathBuf)>,
}

fn build_test_binaries(workspace: &Path, suites: &[Suite]) -> Result<TestBinaries> {
    if suites.is_empty() {
        // Only the package's binary is needed (the systemd guest).
        run(cargo(workspace).args(["build", "-p", "sluice", "--bins"]))?;
    } else {
        run(cargo(workspace).args(["build", "--workspace", "--exclude", "sluice-ebpf", "--bins"]))?;
    }
    let debug = crate::target_dir(workspace).join("debug");
    let mut binaries = TestBinaries {
        sluice: debug.join("sluice"),
        probe: debug.join("sluice-probe"),
        pgprobe: debug.join("sluice-pgprobe"),
        suites: Vec::new(),
    };
    if suites.is_empty() {
        // `cargo test --no-run` without `--test` would build every test target.
        return Ok(binaries);
    }
    let mut command = cargo(workspace);
    command.args([
        "test",
        "-p",
        "sluice-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    for suite in suites {
        command.args(["--test", suite.name]);
    }
    println!("$ {}", crate::shell::display(&command));
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .context("could not run cargo test --no-run")?;
    if !output.status.success() {
        bail!("building the test binaries failed ({})", output.status);
    }
    let executables = test_executables(&String::from_utf8_lossy(&output.stdout))?;
    for suite in suites {
        let path = executables
            .iter()
            .find(|(name, _)| name == suite.name)
            .map(|(_, path)| path.clone())
            .with_context(|| format!("cargo built no test executable named {}", suite.name))?;
        binaries.suites.push((*suite, path));
    }
    Ok(binaries)
}

/// The (target name, executable) of every test target in cargo's JSON messages.
fn test_executables(messages: &str) -> Result<Vec<(String, PathBuf)>> {
    let mut found = Vec::new();
    for line in messages.lines().filter(|l| l.starts_with('{')) {
        let message: serde_json::Value =
            serde_json::from_str(line).context("cargo printed a line that is not JSON")?;
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_test = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(executable)) = (
            is_test,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            found.push((name.to_owned(), PathBuf::from(executable)));
        }
    }
    Ok(found)
}

/// The shell script the guest runs as its only command: prepares what the tests expect
/// of a host (bpffs, securityfs, loopback), then runs each suite, writing its output and
/// exit status into `results`. Exits non-zero when any suite failed.
fn guest_script(
    workspace: &Path,
    results: &Path,
    binaries: &TestBinaries,
    test_args: &[String],
    deb: Option<&Path>,
) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let path = |p: &Path| quote(&p.display().to_string());
    let mut script = String::new();
    let _ = writeln!(script, "#!/bin/sh\n# Written by cargo xtask vm-test.");
    let _ = writeln!(script, "R={}", path(results));
    script.push_str(
        "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf\n\
         mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security\n\
         ip link set lo up\n\
         uname -r > \"$R/kernel\"\n\
         cat /sys/kernel/security/lsm > \"$R/lsm\" 2>&1\n\
         failed=0\n",
    );
    let _ = writeln!(
        script,
        "export SLUICE_BIN={} SLUICE_PROBE={} SLUICE_PGPROBE={} TMPDIR=/tmp RUST_BACKTRACE=1 SLUICE_TEST_SLOWDOWN={}",
        path(&binaries.sluice),
        path(&binaries.probe),
        path(&binaries.pgprobe),
        GUEST_SLOWDOWN
    );
    // cargo test runs test binaries from their package's directory.
    let _ = writeln!(script, "cd {}", path(&workspace.join("tests")));
    for (suite, executable) in &binaries.suites {
        let mut args: Vec<String> = if test_args.is_empty() {
            suite
                .default_filter
                .map(|f| vec![f.to_owned()])
                .unwrap_or_default()
        } else {
            test_args.to_vec()
        };
        for skipped in suite.skip {
            args.extend(["--skip".to_owned(), (*skipped).to_owned()]);
        }
        args.push("--test-threads=2".to_owned());
        let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
        let _ = writeln!(
            script,
            "start=$(date +%s)\n\
             {exe} {args} > \"$R/{name}.out\" 2> \"$R/{name}.err\"\n\
             rc=$?\n\
             echo \"$rc $(( $(date +%s) - start ))\" > \"$R/{name}.rc\"\n\
             [ \"$rc\" = 0 ] || failed=1",
            exe = path(executable),
            args = args.join(" "),
            name = suite.name,
        );
    }
    if let Some(deb) = deb {
        let _ = writeln!(
            script,
            "start=$(date +%s)\n\
             sh {smoke} {deb} > \"$R/package.out\" 2> \"$R/package.err\"\n\
             rc=$?\n\
             echo \"$rc $(( $(date +%s) - start ))\" > \"$R/package.rc\"\n\
             [ \"$rc\" = 0 ] || failed=1",
            smoke = path(&workspace.join("tests/package-smoke.sh")),
            deb = path(deb),
        );
    }
    script.push_str("exit $failed\n");
    script
}

/// What one guest did.
#[derive(Debug)]
pub struct GuestReport {
    pub label: String,
    pub kernel_release: String,
    pub lsm: String,
    pub exit: Option<i32>,
    pub elapsed: Duration,
    pub suites: Vec<SuiteReport>,
    pub results_dir: PathBuf,
}

/// One suite's outcome inside a guest.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SuiteReport {
    pub name: String,
    /// The binary's exit status; `None` when it never finished (the guest died).
    pub exit: Option<i32>,
    pub seconds: u64,
    pub passed: usize,
    pub failed: Vec<String>,
    pub ignored: usize,
}

impl GuestReport {
    fn passed(&self) -> bool {
        self.exit == Some(0)
            && !self.suites.is_empty()
            && self.suites.iter().all(|s| s.exit == Some(0))
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kernel {} ({}), lsm={}: {} in {}",
            self.label,
            if self.kernel_release.is_empty() {
                "did not boot"
            } else {
                &self.kernel_release
            },
            self.lsm,
            if self.passed() { "PASSED" } else { "FAILED" },
            seconds(self.elapsed)
        );
        for suite in &self.suites {
            let status = match suite.exit {
                Some(0) => "ok".to_owned(),
                Some(code) => format!("FAILED (exit {code})"),
                None => "DID NOT FINISH".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {:<13} {:<16} {:>3} passed, {} failed, {} ignored, {} s",
                suite.name,
                status,
                suite.passed,
                suite.failed.len(),
                suite.ignored,
                suite.seconds
            );
            for name in &suite.failed {
                let _ = writeln!(out, "      failed: {name}");
            }
            if suite.exit != Some(0) {
                let _ = writeln!(
                    out,
                    "      output: {}/{}.out and .err",
                    self.results_dir.display(),
                    suite.name
                );
            }
        }
        if self.exit != Some(0) && self.suites.iter().all(|s| s.exit == Some(0)) {
            let _ = writeln!(
                out,
                "  the guest exited with {:?}; its console is in {}/vng.out and vng.err",
                self.exit,
                self.results_dir.display()
            );
        }
        out
    }
}

/// Reads libtest's output: counts and the names of failed tests.
fn parse_libtest(output: &str) -> (usize, Vec<String>, usize) {
    let mut passed = 0;
    let mut failed = Vec::new();
    let mut ignored = 0;
    for line in output.lines() {
        let Some(rest) = line.strip_prefix("test ") else {
            continue;
        };
        let Some((name, outcome)) = rest.rsplit_once(" ... ") else {
            continue;
        };
        match outcome.trim() {
            "ok" => passed += 1,
            "FAILED" => failed.push(name.to_owned()),
            outcome if outcome.starts_with("ignored") => ignored += 1,
            _ => {}
        }
    }
    (passed, failed, ignored)
}

/// Reads `tests/package-smoke.sh`'s `ok - ...` / `not ok - ...` lines.
fn parse_smoke(output: &str) -> (usize, Vec<String>, usize) {
    let passed = output.lines().filter(|l| l.starts_with("ok - ")).count();
    let failed = output
        .lines()
        .filter_map(|l| l.strip_prefix("not ok - "))
        .map(str::to_owned)
        .collect();
    (passed, failed, 0)
}

/// Copies the binaries the guest runs next to its results. The guest reads them through
/// 9p for its whole run, and a `cargo build` on the host meanwhile (another task, an
/// editor) rewrites `target/debug/*`: the guest's daemon then died with SIGSEGV.
fn snapshot_binaries(binaries: &TestBinaries, dir: &Path) -> Result<TestBinaries> {
    fs::create_dir_all(dir)?;
    let copy = |from: &Path| -> Result<PathBuf> {
        let to = dir.join(from.file_name().context("a binary has a file name")?);
        fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
        Ok(to)
    };
    Ok(TestBinaries {
        sluice: copy(&binaries.sluice)?,
        probe: copy(&binaries.probe)?,
        pgprobe: copy(&binaries.pgprobe)?,
        suites: binaries
            .suites
            .iter()
            .map(|(suite, path)| Ok((*suite, copy(path)?)))
            .collect::<Result<_>>()?,
    })
}

fn run_guest(
    workspace: &Path,
    cache: &Cache,
    vng: &Path,
    series: &KernelSeries,
    kernel: &UnpackedKernel,
    binaries: &TestBinaries,
    options: &Options,
) -> Result<GuestReport> {
    let results = cache.results(series);
    if results.exists() {
        fs::remove_dir_all(&results)?;
    }
    fs::create_dir_all(&results)?;
    let binaries = &snapshot_binaries(binaries, &results.join("bin"))?;
    let script_path = results.join("guest.sh");
    fs::write(
        &script_path,
        guest_script(
            workspace,
            &results,
            binaries,
            &options.test_args,
            options.deb.as_deref(),
        ),
    )?;
    let venv_bin = cache.venv().join("bin");
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("timeout");
    command
        .arg(format!("{}", options.guest_timeout.as_secs()))
        .arg(vng)
        .arg("--run")
        .arg(&kernel.vmlinuz)
        .args([
            "--disable-kvm",
            "--force-9p",
            "--cpus",
            "2",
            "--memory",
            "3G",
        ])
        .args(["--append", GUEST_LSM])
        .arg("--rwdir")
        .arg(&results)
        .arg("--exec")
        .arg(format!("sh {}", script_path.display()))
        .env("PATH", path)
        .stdin(Stdio::null())
        // Captured separately: one file for both lost output (field notes).
        .stdout(fs::File::create(results.join("vng.out"))?)
        .stderr(fs::File::create(results.join("vng.err"))?);
    let what = format!(
        "{} under TCG; output in {}",
        kernel.package,
        results.display()
    );
    let (status, elapsed) = run_timed_guest(&mut command, &what, "vng", options)?;
    let read = |name: &str| read_result(&results, name);
    let names: Vec<&str> = binaries
        .suites
        .iter()
        .map(|(suite, _)| suite.name)
        .chain(options.deb.as_ref().map(|_| "package"))
        .collect();
    let suites = names
        .into_iter()
        .map(|name| {
            let rc = read(&format!("{name}.rc"));
            let mut fields = rc.split_whitespace().map(|f| f.parse::<u64>().ok());
            let exit = fields.next().flatten().map(|c| c as i32);
            let seconds = fields.next().flatten().unwrap_or(0);
            let output = read(&format!("{name}.out"));
            let (passed, failed, ignored) = if name == "package" {
                parse_smoke(&output)
            } else {
                parse_libtest(&output)
            };
            SuiteReport {
                name: name.to_owned(),
                exit,
                seconds,
                passed,
                failed,
                ignored,
            }
        })
        .collect();
    let report = GuestReport {
        label: series.label.to_owned(),
        kernel_release: read("kernel"),
        lsm: read("lsm"),
        exit: status.code(),
        elapsed,
        suites,
        results_dir: results,
    };
    print!("{}", report.render());
    Ok(report)
}

/// Runs a guest `command` (wrapped in coreutils' `timeout`), saying what runs and
/// whether the guest hit the time limit; returns its status and how long it ran.
fn run_timed_guest(
    command: &mut Command,
    what: &str,
    program: &str,
    options: &Options,
) -> Result<(std::process::ExitStatus, std::time::Duration)> {
    println!("$ {}", crate::shell::display(command));
    note(what);
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("could not start {program} (timeout from coreutils)"))?;
    if status.code() == Some(124) {
        note(&format!(
            "the guest hit the {} s limit and was stopped",
            options.guest_timeout.as_secs()
        ));
    }
    Ok((status, started.elapsed()))
}

/// A file the guest wrote into its results folder, trimmed; empty when missing.
fn read_result(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_current_image_is_read_from_the_meta_packages_dependencies() {
        let bookworm = "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n";
        assert_eq!(
            image_dependency(bookworm, "6.1").as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        // The 6.1 meta package never stands in for 6.12, nor the cloud flavour for amd64.
        assert_eq!(image_dependency(bookworm, "6.12"), None);
        let security = "linux-image-6.12-amd64\n  Depends: linux-image-6.12.118+deb12-amd64\n";
        assert_eq!(
            image_dependency(security, "6.12").as_deref(),
            Some("linux-image-6.12.118+deb12-amd64")
        );
        let cloud = "x\n  Depends: linux-image-6.12.118+deb12-cloud-amd64x\n";
        assert_eq!(image_dependency(cloud, "6.12"), None);
    }

    #[test]
    fn kernels_and_suites_parse_by_name() {
        assert_eq!(parse_kernels("all").unwrap(), KERNELS);
        assert_eq!(parse_kernels("6.12").unwrap()[0].label, "6.12");
        assert_eq!(parse_kernels("6.1,6.12").unwrap().len(), 2);
        assert!(parse_kernels("5.10").is_err());
        let suites = parse_suites("bypass,postgres").unwrap();
        assert_eq!(
            suites.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["bypass", "postgres"]
        );
        assert!(parse_suites("mysql").is_err());
    }

    #[test]
    fn test_executables_are_found_in_cargos_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"sluice-probe"},"executable":"/t/debug/sluice-probe"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"bypass"},"executable":"/t/debug/deps/bypass-0123"}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"sluice_tests"},"executable":null}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            test_executables(messages).unwrap(),
            [(
                "bypass".to_owned(),
                PathBuf::from("/t/debug/deps/bypass-0123")
            )]
        );
    }

    #[test]
    fn libtest_output_gives_counts_and_failed_names() {
        let output = "running 3 tests\n\
                      test a_is_fine ... ok\n\
                      test b_breaks ... FAILED\n\
                      test c_later ... ignored, needs a thing\n\
                      \n\
                      test result: FAILED. 1 passed; 1 failed; 1 ignored\n";
        assert_eq!(parse_libtest(output), (1, vec!["b_breaks".to_owned()], 1));
    }

    #[test]
    fn the_guest_script_runs_every_suite_and_records_each_exit_status() {
        let binaries = TestBinaries {
            sluice: "/w/target/debug/sluice".into(),
            probe: "/w/target/debug/sluice-probe".into(),
            pgprobe: "/w/target/debug/sluice-pgprobe".into(),
            suites: vec![
                (SUITES[0], "/w/target/debug/deps/bypass-1".into()),
                (SUITES[3], "/w/target/debug/deps/postgres-2".into()),
            ],
        };
        let script = guest_script(Path::new("/w"), Path::new("/w/r"), &binaries, &[], None);
        assert!(script.contains("'/w/target/debug/deps/bypass-1' '--test-threads=2' >"));
        assert!(script.contains(
            "'/w/target/debug/deps/postgres-2' 'psql_as_an_agent_prints_exactly_what_it_prints_directly' '--test-threads=2'"
        ));
        assert!(script.contains("\"$R/postgres.rc\""));
        assert!(script.ends_with("exit $failed\n"));
        let filtered = guest_script(
            Path::new("/w"),
            Path::new("/w/r"),
            &binaries,
            &["vsock".to_owned()],
            Some(Path::new("/w/sluice.deb")),
        );
        assert!(filtered.contains("sh '/w/tests/package-smoke.sh' '/w/sluice.deb' >"));
        assert!(filtered.contains("'/w/target/debug/deps/postgres-2' 'vsock' '--test-threads=2'"));
    }
}
