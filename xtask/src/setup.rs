//! `cargo xtask setup`: makes a fresh Debian machine able to build and test sluice.
//!
//! The daemon's build script compiles the eBPF programs with the nightly toolchain,
//! which needs its `rust-src`, and links them with `bpf-linker`. bpf-linker is built
//! against LLVM, and Debian 12 has no development package for the nightly's LLVM, so
//! we build it against the nightly's own `libLLVM` through a prefix directory of
//! symlinks. The built binary keeps that prefix as its runpath, which is why the
//! prefix lives in the user's cache directory and not in a temporary one.
//!
//! Each check runs first and skips what is already done, so setup is cheap enough
//! to run before every build. We never install toolchains: that is the user's call.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::shell::{capture, cargo, note, part, run};

/// Debian packages the integration tests and `cargo xtask run` rely on: `ip` for
/// network namespaces, a PostgreSQL server and `psql` for the protocol tests, and
/// Python for the scripted test clients. Extend it as tests need more.
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "postgresql",
    "postgresql-client",
    "python3",
    // tests/dns.rs: a real upstream resolver and a real DNS client.
    "dnsmasq-base",
    "bind9-dnsutils",
    // tests/export.rs: a real syslog collector, over TCP and over TLS (ossl driver).
    "rsyslog",
    "rsyslog-openssl",
    // tests/http.rs: real HTTPS upstreams (nginx, git-http-backend behind fcgiwrap) and
    // real agents (curl, git, python requests and httpx).
    "nginx",
    "fcgiwrap",
    "git",
    "curl",
    "python3-requests",
    "python3-httpx",
    // python h2: an HTTP/2 client that can be made to send forbidden header fields.
    "python3-h2",
    // tests/mysql.rs: a real MariaDB server and its clients, the Python connectors and
    // sysbench; `cargo xtask bench` runs sysbench through sluice too.
    "mariadb-server",
    "mariadb-client",
    "python3-pymysql",
    "python3-mysqldb",
    "sysbench",
    // tests/bypass.rs: whether the kernel can load BPF LSM programs, asked of bpftool.
    "bpftool",
    // tests/identity.rs: the test issuer's RSA keys (ring cannot generate RSA keys).
    "openssl",
    // tests/ssh.rs: a real sshd, and the real ssh, scp, sftp, git and rsync as agents.
    "openssh-server",
    "openssh-client",
    "git",
    "rsync",
    // tests/console.rs: a real browser (driven by playwright-core, see NODE_PACKAGES)
    // and Node.js with npm to run the driver.
    "chromium",
    "chromium-driver",
    "nodejs",
];

/// npm packages the tests run with Node.js, pinned, installed into a private directory
/// ([`NODE_DIR`] under the target directory), never globally: playwright-core drives
/// Debian's Chromium in tests/console.rs (it never downloads a browser of its own), and
/// oidc-provider is the identity provider the console signs in with there.
pub const NODE_PACKAGES: &[(&str, &str)] =
    &[("playwright-core", "1.65.2"), ("oidc-provider", "9.13.3")];

/// Where [`NODE_PACKAGES`] go, relative to the workspace; tests find them there
/// (`SLUICE_NODE_MODULES` overrides).
pub const NODE_DIR: &str = "target/console-node";

/// Everything: the Rust toolchain parts, then the Debian packages.
pub fn all(workspace: &Path) -> Result<()> {
    toolchain(workspace)?;
    ensure_packages(TEST_PACKAGES)?;
    ensure_node_packages(workspace)
}

/// Installs whichever of [`NODE_PACKAGES`] are missing (or at another version) into
/// [`NODE_DIR`] with npm.
pub fn ensure_node_packages(workspace: &Path) -> Result<()> {
    let dir = workspace.join(NODE_DIR);
    let specs: Vec<String> = NODE_PACKAGES
        .iter()
        .map(|(name, version)| format!("{name}@{version}"))
        .collect();
    part(&format!(
        "npm packages in {}: {}",
        dir.display(),
        specs.join(", ")
    ));
    let installed_version = |name: &str| -> Option<String> {
        let manifest = dir.join("node_modules").join(name).join("package.json");
        let text = fs::read_to_string(manifest).ok()?;
        let marker = "\"version\"";
        let rest = &text[text.find(marker)? + marker.len()..];
        let start = rest.find('"')? + 1;
        let end = start + rest[start..].find('"')?;
        Some(rest[start..end].to_owned())
    };
    if NODE_PACKAGES
        .iter()
        .all(|(name, version)| installed_version(name).as_deref() == Some(*version))
    {
        note("all installed, skipping");
        return Ok(());
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    run(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--no-save",
            "--prefix",
        ])
        .arg(&dir)
        .args(&specs)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdin(Stdio::null()))
    .with_context(|| {
        format!(
            "fix: check npm's registry access, then: npm install --prefix {} {}",
            dir.display(),
            specs.join(" ")
        )
    })?;
    Ok(())
}

/// What `cargo build` needs: the nightly with `rust-src`, and `bpf-linker`.
pub fn toolchain(workspace: &Path) -> Result<()> {
    require_nightly()?;
    let sysroot = nightly_sysroot()?;
    ensure_rust_src(&sysroot)?;
    ensure_bpf_linker(workspace, &sysroot)
}

fn require_nightly() -> Result<()> {
    part("nightly toolchain");
    let list = capture(Command::new("rustup").args(["toolchain", "list"]))
        .context("sluice is built with rustup toolchains; install rustup from https://rustup.rs")?;
    match list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .find(|name| is_plain_nightly(name))
    {
        Some(name) => {
            note(&format!("{name} is installed, skipping"));
            Ok(())
        }
        None => bail!(
            "the nightly toolchain is not installed; it builds sluice's eBPF programs \
             (setup does not install toolchains).\n    \
             fix: rustup toolchain install nightly --profile minimal, \
             then run `cargo xtask setup` again"
        ),
    }
}

/// `nightly` or `nightly-<host>`, the toolchain `+nightly` selects; not a dated one.
fn is_plain_nightly(name: &str) -> bool {
    name == "nightly"
        || name
            .strip_prefix("nightly-")
            .is_some_and(|host| !host.starts_with(|c: char| c.is_ascii_digit()))
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot = capture(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn ensure_rust_src(sysroot: &Path) -> Result<()> {
    part("rust-src for nightly");
    let library = sysroot.join("lib/rustlib/src/rust/library");
    if library.is_dir() {
        note("already installed, skipping");
        return Ok(());
    }
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context(
            "installing rust-src failed.\n    \
             fix: check access to static.rust-lang.org, then run `cargo xtask setup` again",
        )?;
    if !library.is_dir() {
        bail!(
            "`rustup component add rust-src` succeeded but {} is still missing",
            library.display()
        );
    }
    Ok(())
}

fn ensure_bpf_linker(workspace: &Path, sysroot: &Path) -> Result<()> {
    part("bpf-linker");
    if let Some(version) = bpf_linker_version(Path::new("bpf-linker")) {
        note(&format!("{version} is on PATH, skipping"));
        return Ok(());
    }
    let bin_dir = cargo_bin_dir()?;
    let installed = bin_dir.join("bpf-linker");
    if let Some(version) = bpf_linker_version(&installed) {
        bail!(
            "{version} is installed at {} but that directory is not on PATH.\n    \
             fix: export PATH=\"{}:$PATH\"",
            installed.display(),
            bin_dir.display()
        );
    }

    let llvm = NightlyLlvm::find(sysroot)?;
    let prefix = llvm_prefix_dir()?;
    link_llvm_prefix(&prefix, &llvm)?;
    note(&format!(
        "building bpf-linker against the nightly's LLVM {} (takes about a minute)",
        llvm.major
    ));
    // --force: a stale install (its libLLVM gone after a nightly update) must be replaced.
    run(cargo(workspace)
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", llvm.major)))
    .with_context(|| {
        format!(
            "building bpf-linker failed; it needs a bpf-linker release with the `llvm-{}` \
             feature and the symlinks in {}/lib",
            llvm.major,
            prefix.display()
        )
    })?;
    match bpf_linker_version(Path::new("bpf-linker")) {
        Some(version) => {
            note(&format!("installed {version}"));
            Ok(())
        }
        None => bail!(
            "bpf-linker was installed but does not run from PATH.\n    \
             fix: export PATH=\"{}:$PATH\"",
            bin_dir.display()
        ),
    }
}

/// The first line of `<program> --version`, if it runs successfully.
fn bpf_linker_version(program: &Path) -> Option<String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|output| output.status.success())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    Some(
        stdout
            .lines()
            .next()
            .unwrap_or("bpf-linker")
            .trim()
            .to_owned(),
    )
}

/// Where `cargo install` puts binaries.
fn cargo_bin_dir() -> Result<PathBuf> {
    let root = std::env::var_os("CARGO_INSTALL_ROOT")
        .or_else(|| std::env::var_os("CARGO_HOME"))
        .map(PathBuf::from)
        .or_else(|| home_dir().ok().map(|home| home.join(".cargo")))
        .context("cannot tell where cargo installs binaries: set HOME or CARGO_HOME")?;
    Ok(root.join("bin"))
}

fn home_dir() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .context("HOME is not set")
}

/// `~/.cache/sluice/llvm-prefix` (honouring `XDG_CACHE_HOME`).
fn llvm_prefix_dir() -> Result<PathBuf> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => home_dir()?.join(".cache"),
    };
    Ok(cache.join("sluice/llvm-prefix"))
}

/// The nightly's shared LLVM library, `libLLVM.so.<MAJOR>.<MINOR>-rust-<VERSION>-nightly`.
#[derive(Debug)]
struct NightlyLlvm {
    path: PathBuf,
    file_name: String,
    major: u32,
}

impl NightlyLlvm {
    fn find(sysroot: &Path) -> Result<Self> {
        let lib = sysroot.join("lib");
        let mut found: Vec<Self> = fs::read_dir(&lib)
            .with_context(|| format!("reading {}", lib.display()))?
            .filter_map(|entry| {
                let file_name = entry.ok()?.file_name().into_string().ok()?;
                let major = llvm_major_from_file_name(&file_name)?;
                Some(Self {
                    path: lib.join(&file_name),
                    file_name,
                    major,
                })
            })
            .collect();
        found.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        match found.pop() {
            Some(llvm) => Ok(llvm),
            None => bail!(
                "no libLLVM.so.<MAJOR>.<MINOR>-rust-<VERSION>-nightly in {}; bpf-linker is \
                 built against it.\n    fix: rustup toolchain install nightly --force \
                 (a broken or unusual nightly install)",
                lib.display()
            ),
        }
    }
}

/// The LLVM major version in a name like `libLLVM.so.22.1-rust-1.97.0-nightly`.
fn llvm_major_from_file_name(name: &str) -> Option<u32> {
    let (llvm_version, rust_version) = name.strip_prefix("libLLVM.so.")?.split_once("-rust-")?;
    rust_version
        .strip_suffix("-nightly")
        .filter(|v| !v.is_empty())?;
    let (major, minor) = llvm_version.split_once('.')?;
    minor.parse::<u32>().ok()?;
    major.parse().ok()
}

/// Makes `<prefix>/lib` hold `libLLVM.so` and `<file name>`, both linking to the
/// nightly's library: the first for linking, the second (its soname) for loading.
fn link_llvm_prefix(prefix: &Path, llvm: &NightlyLlvm) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // Links left from an earlier nightly would point at a library that is gone.
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with("libLLVM"))
        {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for name in ["libLLVM.so", llvm.file_name.as_str()] {
        let link = lib.join(name);
        symlink(&llvm.path, &link).with_context(|| format!("creating {}", link.display()))?;
    }
    note(&format!(
        "{}/{{libLLVM.so,{}}} -> {}",
        lib.display(),
        llvm.file_name,
        llvm.path.display()
    ));
    Ok(())
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Installs whichever of `packages` are missing, with apt, refreshing the package
/// lists at most once per run.
pub fn ensure_packages(packages: &[&str]) -> Result<()> {
    part(&format!("Debian packages: {}", packages.join(", ")));
    let mut missing = Vec::new();
    for &package in packages {
        if !is_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        note("all installed, skipping");
        return Ok(());
    }
    let missing = missing.join(" ");
    note(&format!("missing: {missing}"));
    if !crate::is_root() {
        bail!(
            "installing Debian packages needs root.\n    \
             fix: sudo apt-get install --no-install-recommends {missing}"
        );
    }
    let apt_get = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        cmd
    };
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        run(apt_get().arg("update"))?;
    }
    run(apt_get()
        .args(["install", "-y", "--no-install-recommends"])
        .args(missing.split(' ')))
    .with_context(|| format!("fix: check apt's sources, then: apt-get install {missing}"))?;
    Ok(())
}

fn is_installed(package: &str) -> Result<bool> {
    let output = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "could not run dpkg-query: setup installs packages on Debian only; \
                 elsewhere install the equivalent of `{package}` by hand"
            )
        })?;
    Ok(output.status.success()
        && dpkg_status_is_installed(&String::from_utf8_lossy(&output.stdout)))
}

/// dpkg's status is `<want> <error> <state>`; only the state `installed` counts
/// (not `config-files`, `half-configured`, `not-installed`, ...).
fn dpkg_status_is_installed(status: &str) -> bool {
    status.split_whitespace().nth(2) == Some("installed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_nightly_is_told_from_dated_ones() {
        assert!(is_plain_nightly("nightly"));
        assert!(is_plain_nightly("nightly-x86_64-unknown-linux-gnu"));
        assert!(!is_plain_nightly(
            "nightly-2025-06-01-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_plain_nightly("stable-x86_64-unknown-linux-gnu"));
    }

    #[test]
    fn llvm_major_is_read_from_the_versioned_library_only() {
        assert_eq!(
            llvm_major_from_file_name("libLLVM.so.22.1-rust-1.97.0-nightly"),
            Some(22)
        );
        assert_eq!(
            llvm_major_from_file_name("libLLVM.so.20.1-rust-1.88.0-nightly"),
            Some(20)
        );
        assert_eq!(
            llvm_major_from_file_name("libLLVM-22-rust-1.97.0-nightly.so"),
            None
        );
        assert_eq!(
            llvm_major_from_file_name("libLLVM.so.22.1-rust-1.95.0-stable"),
            None
        );
        assert_eq!(llvm_major_from_file_name("libLLVM.so"), None);
    }

    #[test]
    fn dpkg_status_counts_only_installed() {
        assert!(dpkg_status_is_installed("install ok installed"));
        assert!(dpkg_status_is_installed("hold ok installed"));
        assert!(!dpkg_status_is_installed("unknown ok not-installed"));
        assert!(!dpkg_status_is_installed("deinstall ok config-files"));
        assert!(!dpkg_status_is_installed("install ok half-configured"));
        assert!(!dpkg_status_is_installed(""));
    }
}
