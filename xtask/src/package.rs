//! `cargo xtask package`: the Debian package for agent hosts.
//!
//! The package is laid out in a staging directory and built with Debian's own
//! `dpkg-deb --root-owner-group --build`, which every Debian machine has (it is how dpkg
//! itself builds packages). cargo-deb would do the same from `Cargo.toml` metadata, but
//! it adds a tool to install for what is one directory tree and a control file.
//! The files shipped come from `packaging/`: the units, the configuration and the
//! default-deny policy (both conffiles), and the maintainer scripts.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::shell::{capture, cargo, note, part, run, step};

/// Where each packaged file comes from (relative to the workspace) and goes (absolute
/// in the package), with its mode.
const FILES: &[(&str, &str, u32)] = &[
    (
        "packaging/systemd/sluice.service",
        "/lib/systemd/system/sluice.service",
        0o644,
    ),
    (
        "packaging/systemd/sluice.slice",
        "/lib/systemd/system/sluice.slice",
        0o644,
    ),
    ("packaging/sluice.toml", "/etc/sluice/sluice.toml", 0o644),
    (
        "packaging/policies/00-default-deny.toml",
        "/etc/sluice/policies/00-default-deny.toml",
        0o644,
    ),
    ("README.md", "/usr/share/doc/sluice/README.md", 0o644),
    (
        "docs/threat-model.md",
        "/usr/share/doc/sluice/threat-model.md",
        0o644,
    ),
    (
        "policies/README.md",
        "/usr/share/doc/sluice/policies/README.md",
        0o644,
    ),
];

/// Files under `/etc` that dpkg keeps as the administrator edited them.
const CONFFILES: &[&str] = &[
    "/etc/sluice/sluice.toml",
    "/etc/sluice/policies/00-default-deny.toml",
];

const MAINTAINER_SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];

/// Builds the release binary and the package; returns the `.deb`'s path.
pub fn package(workspace: &Path, target_dir: &Path, version: Option<&str>) -> Result<PathBuf> {
    step("build", || {
        run(cargo(workspace).args(["build", "-p", "sluice", "--release"]))
    })?;
    step("package", || {
        let version = match version {
            Some(version) => version.to_owned(),
            None => workspace_version(workspace)?,
        };
        let binary = target_dir.join("release/sluice");
        let out_dir = target_dir.join("package");
        build_deb(workspace, &binary, &out_dir, &version, Compression::Xz)
    })
}

/// The `[workspace.package] version` of the root `Cargo.toml`.
pub(crate) fn workspace_version(workspace: &Path) -> Result<String> {
    let manifest = fs::read_to_string(workspace.join("Cargo.toml"))?;
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package && let Some(value) = line.strip_prefix("version") {
            let value = value.trim_start().trim_start_matches('=').trim();
            return Ok(value.trim_matches('"').to_owned());
        }
    }
    bail!("no version in [workspace.package] of Cargo.toml")
}

fn control(version: &str, installed_kib: u64) -> String {
    format!(
        "Package: sluice\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: sluice developers <sluice@example.invalid>\n\
         Installed-Size: {installed_kib}\n\
         Depends: libc6 (>= 2.36), libgcc-s1\n\
         Recommends: systemd\n\
         Section: net\n\
         Priority: optional\n\
         Description: one inspectable choke point for AI agents' connections\n \
         eBPF cgroup programs redirect every outbound connection of the agents in\n \
         sluice.slice to a local daemon, which identifies the process, judges each\n \
         operation by policy, brokers credentials and records every session.\n \
         Needs Linux 6.1 or later with BTF; the BPF LSM (lsm=...,bpf) closes more ways out.\n"
    )
}

/// How `dpkg-deb` compresses the package.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Compression {
    /// What Debian ships: xz.
    Xz,
    /// gzip -1, for packages that only a test guest installs (seconds, not a minute).
    Fast,
}

pub(crate) fn build_deb(
    workspace: &Path,
    binary: &Path,
    out_dir: &Path,
    version: &str,
    compression: Compression,
) -> Result<PathBuf> {
    let root = out_dir.join(format!("sluice_{version}_amd64"));
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    let place = |to: &str, from: &Path, mode: u32| -> Result<()> {
        let dest = root.join(to.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().context("a packaged path has a parent")?)?;
        fs::copy(from, &dest)
            .with_context(|| format!("copying {} to {}", from.display(), dest.display()))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    part("files");
    place("/usr/bin/sluice", binary, 0o755)?;
    for (from, to, mode) in FILES {
        place(to, &workspace.join(from), *mode)?;
    }
    let debian = root.join("DEBIAN");
    fs::create_dir_all(&debian)?;
    for script in MAINTAINER_SCRIPTS {
        place(
            &format!("/DEBIAN/{script}"),
            &workspace.join("packaging/debian").join(script),
            0o755,
        )?;
    }
    let conffiles: String = CONFFILES.iter().map(|f| format!("{f}\n")).collect();
    fs::write(debian.join("conffiles"), conffiles)?;
    let installed_kib = directory_size(&root)? / 1024 + 1;
    fs::write(debian.join("control"), control(version, installed_kib))?;
    let deb = out_dir.join(format!("sluice_{version}_amd64.deb"));
    part("dpkg-deb");
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .args(match compression {
            Compression::Xz => ["-Zxz", "-z6"],
            Compression::Fast => ["-Zgzip", "-z1"],
        })
        .arg("--build")
        .arg(&root)
        .arg(&deb))
    .context("fix: apt-get install dpkg (dpkg-deb builds the package)")?;
    note(&capture(Command::new("dpkg-deb").arg("--info").arg(&deb))?);
    note(&format!("built {}", deb.display()));
    Ok(deb)
}

fn directory_size(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let metadata = entry.metadata()?;
        total += if metadata.is_dir() {
            directory_size(&entry.path())?
        } else {
            metadata.len()
        };
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn every_packaged_file_and_script_exists() {
        let workspace = workspace();
        for (from, _, _) in FILES {
            assert!(workspace.join(from).is_file(), "{from}");
        }
        for script in MAINTAINER_SCRIPTS {
            assert!(
                workspace.join("packaging/debian").join(script).is_file(),
                "{script}"
            );
        }
        for conffile in CONFFILES {
            assert!(FILES.iter().any(|(_, to, _)| to == conffile), "{conffile}");
        }
    }

    #[test]
    fn the_version_comes_from_the_workspace_manifest() {
        let version = workspace_version(&workspace()).unwrap();
        assert!(version.split('.').count() >= 3, "{version}");
    }

    #[test]
    fn a_package_built_from_a_stand_in_binary_has_the_layout_dpkg_expects() {
        let out = tempfile_dir();
        let binary = out.join("sluice-stand-in");
        fs::write(&binary, "#!/bin/sh\n").unwrap();
        let deb = build_deb(&workspace(), &binary, &out, "0.0.1", Compression::Fast).unwrap();
        let listing = capture(Command::new("dpkg-deb").arg("--contents").arg(&deb)).unwrap();
        for path in [
            "./usr/bin/sluice",
            "./lib/systemd/system/sluice.service",
            "./lib/systemd/system/sluice.slice",
            "./etc/sluice/sluice.toml",
            "./etc/sluice/policies/00-default-deny.toml",
        ] {
            assert!(listing.contains(path), "{path} missing:\n{listing}");
        }
        assert!(listing.contains("root/root"), "{listing}");
        let conffiles = capture(
            Command::new("dpkg-deb")
                .arg("-I")
                .arg(&deb)
                .arg("conffiles"),
        )
        .unwrap();
        assert_eq!(conffiles.lines().collect::<Vec<_>>(), CONFFILES);
        let _ = fs::remove_dir_all(&out);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-package-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
