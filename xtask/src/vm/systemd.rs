//! `cargo xtask vm-test --systemd`: the package on a machine whose PID 1 is systemd.
//!
//! virtme-ng's guests share this machine's root and run their command from virtme's
//! own init; with `--systemd` it boots this machine's systemd over a read-only 9p root,
//! with every unit this machine has and no `/lib/modules` for the guest's kernel, which
//! hung under TCG. So this builds its own guest instead: a minimal Debian root with
//! systemd and the kernel package installed (mmdebstrap from the same apt sources as
//! this machine, so its initramfs finds the virtio disk), written into an ext4 image
//! with `mkfs.ext4 -d` (no loop mount) and booted with QEMU directly, the image opened
//! with `-snapshot` so every run starts from the same state. One unit in the image
//! mounts a 9p share from the host and runs the script found there, then powers off.
//!
//! The script is `tests/systemd-guest.sh`, given two packages of the debug `sluice`
//! built by `vm-test` (stripped of debug info) at two versions, so the upgrade is a
//! real one. Everything is cached under `target/vm-test/systemd/` and rebuilt when the
//! recipe below changes.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result};

use super::{
    Cache, GUEST_LSM, GuestReport, KernelSeries, Options, SuiteReport, parse_smoke, read_result,
    resolve_kernel_package, run_timed_guest,
};
use crate::shell::{note, part, run};

/// Debian packages of the guest besides its kernel: systemd as init, udev for the
/// devices, python3 for the test agent and sinks, and what the package's scripts call.
const GUEST_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "initramfs-tools",
    "python3",
    "procps",
    "iproute2",
];

/// Units the guest does not need: timers that would start work mid-test, gettys.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
    "getty-static.service",
];

/// The unit that runs the host's script: it mounts the share, runs `run.sh` and powers
/// the guest off. `Type=exec` so that boot completes while it runs (the script waits
/// for `systemctl is-system-running`).
const RUNNER_UNIT: &str = "[Unit]
Description=cargo xtask vm-test: the host's script
[Service]
Type=exec
ExecStartPre=/bin/mkdir -p /run/vmtest
ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmtest /run/vmtest
ExecStart=/bin/sh /run/vmtest/run.sh
StandardOutput=journal+console
FailureAction=poweroff
[Install]
WantedBy=multi-user.target
";

/// What the guest runs; results land next to it in the share.
const RUN_SCRIPT: &str = r#"#!/bin/sh
R=/run/vmtest
uname -r > $R/kernel
cat /sys/kernel/security/lsm > $R/lsm 2>&1
echo "$(cat /proc/1/comm) $(systemctl is-system-running --wait)" > $R/pid1
cut -d' ' -f1 /proc/uptime > $R/booted-after
start=$(date +%s)
sh $R/systemd-guest.sh $R/old.deb $R/new.deb > $R/systemd.out 2> $R/systemd.err
echo "$? $(( $(date +%s) - start ))" > $R/systemd.rc
journalctl -b --no-pager > $R/journal.txt 2>&1
systemctl poweroff --no-block
"#;

/// A bootable guest: the kernel and initramfs from its root, and the root image.
pub(super) struct Image {
    vmlinuz: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
}

/// Everything that decides the image's content; a change rebuilds it.
fn recipe(kernel_package: &str) -> String {
    format!(
        "packages: {kernel_package} {}\nmasked: {}\nunit:\n{RUNNER_UNIT}",
        GUEST_PACKAGES.join(" "),
        MASKED_UNITS.join(" ")
    )
}

fn image_dir(cache: &Cache, series: &KernelSeries) -> PathBuf {
    cache.root.join("systemd").join(series.label)
}

/// Builds the guest image for `series` unless the cached one has the same recipe.
pub(super) fn ensure_image(cache: &Cache, series: &KernelSeries) -> Result<Image> {
    part(&format!("systemd guest image, kernel {}", series.label));
    let kernel_package = resolve_kernel_package(series)?;
    let dir = image_dir(cache, series);
    let recipe = recipe(&kernel_package);
    let image = Image {
        vmlinuz: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        disk: dir.join("root.img"),
    };
    if fs::read_to_string(dir.join("recipe")).ok().as_deref() == Some(recipe.as_str()) {
        note(&format!("{} is built, skipping", dir.display()));
        return Ok(image);
    }
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::create_dir_all(&dir)?;
    let rootfs = dir.join("rootfs");
    let mut include = vec![kernel_package.as_str()];
    include.extend(GUEST_PACKAGES);
    // The guest must match this machine's Debian (the package links against its libc):
    // the same release and the same apt sources.
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--mode=root", "--variant=minbase", "--quiet"])
        .arg(format!("--include={}", include.join(",")))
        .arg("bookworm")
        .arg(&rootfs);
    let host_sources = Path::new("/etc/apt/sources.list.d/debian.sources");
    if host_sources.is_file() {
        mmdebstrap.arg(host_sources);
    }
    let started = Instant::now();
    run(mmdebstrap.stdin(Stdio::null())).context("fix: apt-get install mmdebstrap")?;
    note(&format!(
        "mmdebstrap took {:.0} s",
        started.elapsed().as_secs_f64()
    ));

    let systemd_dir = rootfs.join("etc/systemd/system");
    fs::write(systemd_dir.join("sluice-vmtest.service"), RUNNER_UNIT)?;
    let wants = systemd_dir.join("multi-user.target.wants");
    fs::create_dir_all(&wants)?;
    std::os::unix::fs::symlink(
        "/etc/systemd/system/sluice-vmtest.service",
        wants.join("sluice-vmtest.service"),
    )?;
    for unit in MASKED_UNITS {
        let path = systemd_dir.join(unit);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink("/dev/null", path)?;
    }
    fs::write(rootfs.join("etc/hostname"), "sluice-guest\n")?;
    fs::write(
        rootfs.join("etc/fstab"),
        "LABEL=sluice-root / ext4 rw 0 1\n",
    )?;

    let boot = |prefix: &str| -> Result<PathBuf> {
        fs::read_dir(rootfs.join("boot"))?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .with_context(|| format!("the guest root has no /boot/{prefix}*"))
    };
    fs::copy(boot("vmlinuz-")?, &image.vmlinuz)?;
    fs::copy(boot("initrd.img-")?, &image.initrd)?;
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "sluice-root", "-d"])
        .arg(&rootfs)
        .arg(&image.disk)
        .arg("3G"))
    .context("fix: apt-get install e2fsprogs")?;
    fs::remove_dir_all(&rootfs)?;
    fs::write(dir.join("recipe"), recipe)?;
    Ok(image)
}

/// The two packages the guest installs and upgrades between: the debug binary this
/// task built, without its debug info, at the workspace's version and one above it.
fn stage_packages(workspace: &Path, sluice: &Path, share: &Path) -> Result<()> {
    let stripped = share.join("sluice");
    run(Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&stripped)
        .arg(sluice))
    .context("fix: apt-get install binutils")?;
    let version = crate::package::workspace_version(workspace)?;
    for (name, version) in [
        ("old", version.clone()),
        ("new", format!("{version}+vmtest1")),
    ] {
        let out = share.join(format!("build-{name}"));
        let deb = crate::package::build_deb(
            workspace,
            &stripped,
            &out,
            &version,
            crate::package::Compression::Fast,
        )?;
        fs::rename(&deb, share.join(format!("{name}.deb")))?;
        fs::remove_dir_all(&out)?;
    }
    fs::remove_file(&stripped)?;
    Ok(())
}

fn results_dir(cache: &Cache, series: &KernelSeries) -> PathBuf {
    cache
        .root
        .join("results")
        .join(format!("{}-systemd", series.label))
}

/// Boots the systemd guest for `series` and runs `tests/systemd-guest.sh` in it.
pub(super) fn run_guest(
    workspace: &Path,
    cache: &Cache,
    series: &KernelSeries,
    image: &Image,
    sluice: &Path,
    options: &Options,
) -> Result<GuestReport> {
    let share = results_dir(cache, series);
    if share.exists() {
        fs::remove_dir_all(&share)?;
    }
    fs::create_dir_all(&share)?;
    stage_packages(workspace, sluice, &share)?;
    fs::copy(
        workspace.join("tests/systemd-guest.sh"),
        share.join("systemd-guest.sh"),
    )?;
    fs::write(share.join("run.sh"), RUN_SCRIPT)?;

    let mut command = Command::new("timeout");
    command
        .arg(options.guest_timeout.as_secs().to_string())
        .arg("qemu-system-x86_64")
        .args(qemu_args(image, &share))
        .stdin(Stdio::null())
        .stdout(fs::File::create(share.join("qemu.out"))?)
        .stderr(fs::File::create(share.join("qemu.err"))?);
    let what = format!("systemd guest under TCG; output in {}", share.display());
    let (status, elapsed) = run_timed_guest(&mut command, &what, "qemu-system-x86_64", options)?;
    let read = |name: &str| read_result(&share, name);
    let rc = read("systemd.rc");
    let mut fields = rc.split_whitespace().map(|f| f.parse::<u64>().ok());
    let exit = fields.next().flatten().map(|c| c as i32);
    let seconds = fields.next().flatten().unwrap_or(0);
    let (passed, failed, ignored) = parse_smoke(&read("systemd.out"));
    let pid1 = read("pid1");
    note(&format!(
        "PID 1 and system state: {pid1:?}; booted after {} s (guest clock)",
        read("booted-after")
    ));
    let report = GuestReport {
        label: format!("{} systemd", series.label),
        kernel_release: read("kernel"),
        lsm: read("lsm"),
        // The guest powers off cleanly when its script ran; its status is the script's.
        exit: match (status.code(), pid1.starts_with("systemd ")) {
            (Some(0), true) => exit,
            (Some(0), false) => Some(1),
            (code, _) => code,
        },
        elapsed,
        suites: vec![SuiteReport {
            name: "systemd".to_owned(),
            exit,
            seconds,
            passed,
            failed,
            ignored,
        }],
        results_dir: share,
    };
    print!("{}", report.render());
    Ok(report)
}

fn qemu_args(image: &Image, share: &Path) -> Vec<String> {
    let mut append = String::new();
    let _ = write!(
        append,
        "root=LABEL=sluice-root rw console=ttyS0 {GUEST_LSM} systemd.show_status=error"
    );
    [
        "-nodefaults",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "2",
        "-m",
        "2G",
        "-display",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        "-serial".to_owned(),
        format!("file:{}", share.join("console.log").display()),
        "-kernel".to_owned(),
        image.vmlinuz.display().to_string(),
        "-initrd".to_owned(),
        image.initrd.display().to_string(),
        "-append".to_owned(),
        append,
        "-drive".to_owned(),
        format!("file={},if=virtio,format=raw", image.disk.display()),
        // Writes go to a temporary file: every run boots the image as built.
        "-snapshot".to_owned(),
        "-virtfs".to_owned(),
        format!(
            "local,path={},mount_tag=vmtest,security_model=none,id=vmtest",
            share.display()
        ),
    ])
    .collect()
}
