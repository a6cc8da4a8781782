//! Builds the eBPF programs (`ebpf/sluice-ebpf`) with the nightly toolchain and
//! bpf-linker, so that `cargo build` alone yields a daemon with its programs embedded.
//!
//! `cargo xtask setup` installs what this needs; the check below says so when it is
//! missing instead of failing deep inside a nested cargo.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let object = out_dir.join("sluice");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // Leave an empty object; the daemon refuses to start with it and says why.
        if !object.exists() {
            std::fs::write(&object, b"").context("writing the placeholder eBPF object")?;
        }
        return Ok(());
    }
    let have_linker = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_linker {
        return Err(anyhow!(
            "bpf-linker is not on PATH: run `cargo xtask setup` once (it installs the nightly's \
             rust-src and builds bpf-linker against the nightly's LLVM)"
        ));
    }
    let package = aya_build::Package {
        name: "sluice-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ebpf/sluice-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
        .context("building the eBPF programs (try `cargo xtask setup`)")
}
