//! "Cannot route around": each way out of the managed cgroup, tried from inside it as
//! an unprivileged agent (`sluice run --user nobody`), against sinks on loopback or in a
//! namespace the agent made itself. Each test asserts that the sink got nothing the
//! daemon did not mediate and record. Rows already covered by `interception.rs` are
//! referenced from docs/threat-model.md rather than repeated here.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::{
            fs::PermissionsExt as _,
            net::{UnixListener, UnixStream},
        },
    },
    path::Path,
    time::Duration,
};

use serde_json::Value;
use sluice_tests::{
    PROBE_SINKS_POLICY as POLICY, Sink, TestDaemon, assert_probe_refused, probe_bin, text,
};

/// Runs the probe as agent `probe`, uid nobody, with `args`.
fn as_nobody(daemon: &TestDaemon, args: &[&str]) -> Value {
    let probe = probe_bin();
    let mut command = vec![probe.to_str().expect("utf-8 probe path")];
    command.extend_from_slice(args);
    daemon.probe_with("probe", &["--user", "nobody"], &command)
}

/// Runs the probe as agent `probe`, uid nobody, inside a user and network namespace of
/// its own (`unshare -rn`), where it holds every capability over that namespace.
/// `setup` runs first in the namespace's shell.
fn as_nobody_in_own_netns(daemon: &TestDaemon, setup: &str, args: &[&str]) -> Value {
    as_nobody_in_own_netns_with(daemon, &[], setup, args)
}

/// [`as_nobody_in_own_netns`] with extra `sluice run` options.
fn as_nobody_in_own_netns_with(
    daemon: &TestDaemon,
    run_options: &[&str],
    setup: &str,
    args: &[&str],
) -> Value {
    let probe = probe_bin();
    let script = format!("ip link set lo up; {setup} exec \"$0\" \"$@\"");
    let mut command = vec!["unshare", "-rn", "sh", "-c", &script];
    command.push(probe.to_str().expect("utf-8 probe path"));
    command.extend_from_slice(args);
    let mut options = vec!["--user", "nobody"];
    options.extend_from_slice(run_options);
    daemon.probe_with("probe", &options, &command)
}

/// What `sluice run`'s seccomp filter makes socket(2) return, as the probe prints it.
fn seccomp_refusal() -> String {
    format!("errno {} ", libc::EAFNOSUPPORT)
}

/// The same command outside any managed cgroup, as nobody: what the kernel allows
/// without sluice, so each refusal below is shown to be sluice's.
fn outside_as_nobody_in_own_netns(setup: &str, args: &[&str]) -> Value {
    let probe = probe_bin();
    let script = format!("ip link set lo up; {setup} exec \"$0\" \"$@\"");
    let output = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "unshare", "-rn", "sh", "-c", &script])
        .arg(&probe)
        .args(args)
        .output()
        .expect("run runuser");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "probe printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Waits for the kernel refusals recorded under `rule` and returns them.
fn refusals(daemon: &TestDaemon, rule: &str, count: usize) -> Vec<Value> {
    let sessions = daemon.wait_for_sessions(Some("probe"), rule, |sessions| {
        sessions
            .iter()
            .filter(|s| s["decision"]["rule"] == rule)
            .count()
            >= count
    });
    sessions
        .into_iter()
        .filter(|s| s["decision"]["rule"] == rule)
        .collect()
}

/// One row of the live matrix in `sluice status --json`.
fn matrix_row(daemon: &TestDaemon, way_out: &str) -> Value {
    let status = daemon.status_json();
    status["enforcement"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["way_out"] == way_out).cloned())
        .unwrap_or_else(|| panic!("no {way_out} row in {status:#}"))
}

/// Asserts that the human `sluice status` marks `way_out` as NOT ENFORCED.
fn assert_status_says_not_enforced(daemon: &TestDaemon, way_out: &str) {
    let printed = String::from_utf8_lossy(&daemon.sluice(&["status"]).stdout).into_owned();
    assert!(
        printed
            .lines()
            .any(|l| l.contains(way_out) && l.contains("NOT ENFORCED")),
        "{printed}"
    );
}

/// Asserts that the human `sluice status` marks `way_out` as enforced.
fn assert_status_says_enforced(daemon: &TestDaemon, way_out: &str) {
    let printed = String::from_utf8_lossy(&daemon.sluice(&["status"]).stdout).into_owned();
    assert!(
        printed.lines().any(|l| {
            l.split_whitespace().next() == Some(way_out)
                && l.contains("enforced")
                && !l.contains("NOT ENFORCED")
        }),
        "{printed}"
    );
}

/// Whether this kernel can load BPF LSM programs, found out without asking sluice:
/// bpftool loads a trivial program of that type (`bpftool feature probe`). True in the
/// Debian kernels `cargo xtask vm-test` boots with `lsm=...,bpf`; false on the CI
/// machines, whose lockdown refuses every program that needs a BPF trampoline.
fn bpf_lsm_can_run() -> bool {
    static CAN_RUN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN_RUN.get_or_init(|| {
        let output = std::process::Command::new("bpftool")
            .args(["feature", "probe", "kernel"])
            .output()
            .expect("run bpftool (cargo xtask setup installs it)");
        let features = String::from_utf8_lossy(&output.stdout);
        let lsm = features
            .lines()
            .find(|line| line.contains("program_type lsm "))
            .unwrap_or_else(|| panic!("bpftool printed no lsm program type: {features}"));
        !lsm.contains("NOT available")
    })
}

/// Asserts that the BPF LSM row `way_out` is enforced exactly where the kernel can run
/// the LSM programs, in `sluice status --json` and in the human `sluice status`, and
/// returns whether it is. So the LSM's tests fail if its programs did not load where
/// they can, and the rows may never claim more than the kernel allows.
fn assert_lsm_row_follows_the_kernel(daemon: &TestDaemon, way_out: &str) -> bool {
    let can_run = bpf_lsm_can_run();
    let row = matrix_row(daemon, way_out);
    assert_eq!(
        row["enforced"],
        can_run,
        "this kernel {} run BPF LSM programs, but status says: {row:#}\ndaemon log:\n{}",
        if can_run { "can" } else { "cannot" },
        daemon.log()
    );
    if can_run {
        assert_status_says_enforced(daemon, way_out);
    } else {
        assert!(!text(&row, "detail").is_empty(), "{row:#}");
        assert_status_says_not_enforced(daemon, way_out);
    }
    can_run
}

/// Runs the probe as uid nobody in agent `probe`'s cgroup, put there by a write to
/// `cgroup.procs` as a systemd unit or any other launcher would: no `sluice run`, so no
/// seccomp filter. With `in_cgroup` false, the same outside any managed cgroup.
fn nobody_placed_by_hand(daemon: &TestDaemon, in_cgroup: bool, args: &[&str]) -> Value {
    let cgroup = daemon.cgroup_root.join("probe");
    std::fs::create_dir_all(&cgroup).expect("create the agent's cgroup");
    let procs = if in_cgroup {
        cgroup.join("cgroup.procs")
    } else {
        "/dev/null".into()
    };
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0" && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@""#)
        .arg(procs)
        .arg(probe_bin())
        .args(args)
        .output()
        .expect("run sh");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "probe printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Fails with the status's reason when this kernel does not enforce `way_out`.
fn require_enforced(daemon: &TestDaemon, way_out: &str) {
    let row = matrix_row(daemon, way_out);
    assert_eq!(row["enforced"], true, "not enforced here: {row:#}");
}

/// The closed, allowed session for `destination`, after the sink saw only the daemon.
fn assert_mediated(daemon: &TestDaemon, sink: &Sink, report: &Value) {
    assert_eq!(report["ok"], true, "{report}\n{}", daemon.log());
    assert_eq!(text(report, "peer"), sink.addr.to_string(), "{report}");
    assert_eq!(text(report, "greeting"), format!("SINK {}", sink.addr));
    assert_eq!(text(report, "echo"), "hello from the agent");
    let session = &daemon.closed_session("probe", &sink.addr.to_string());
    assert_eq!(session["decision"]["action"], "allow", "{session:#}");
    assert_eq!(session["uid"], 65534, "{session:#}");
    let upstream: SocketAddr = text(session, "upstream_local").parse().expect("upstream");
    // Every connection the sink saw is the daemon's, and the line came through it.
    assert_eq!(sink.peers(), vec![upstream], "{session:#}");
    assert_eq!(
        sink.lines_from(upstream),
        vec!["hello from the agent".to_owned()]
    );
}

#[test]
fn tcp_fast_open_is_redirected() {
    // The client bit of net.ipv4.tcp_fastopen; without it the kernel would fall back to
    // a plain connect and the test would not test TFO.
    let fastopen = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen").unwrap();
    assert_eq!(
        fastopen.trim().parse::<u32>().unwrap() & 1,
        1,
        "net.ipv4.tcp_fastopen has no client bit"
    );
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    let report = as_nobody(&daemon, &["tfo", &sink.addr.to_string()]);
    assert_mediated(&daemon, &sink, &report);
}

#[test]
fn io_uring_connect_is_redirected() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("[::1]:0");
    let report = as_nobody(&daemon, &["io-uring", &sink.addr.to_string()]);
    assert_mediated(&daemon, &sink, &report);
}

#[test]
fn connected_and_unconnected_udp_is_refused_on_both_families() {
    let daemon = TestDaemon::start(POLICY);
    let receivers: Vec<UdpSocket> = ["127.0.0.2:0", "[::1]:0"]
        .iter()
        .map(|addr| {
            let socket = UdpSocket::bind(addr).expect("udp receiver");
            socket.set_nonblocking(true).unwrap();
            socket
        })
        .collect();
    let mut attempts = 0;
    for receiver in &receivers {
        let addr = receiver.local_addr().unwrap().to_string();
        for mode in ["udp-connect", "udp", "udp-sendmsg"] {
            let report = as_nobody(&daemon, &[mode, &addr]);
            assert_probe_refused(&report);
            attempts += 1;
        }
    }
    let recorded = refusals(&daemon, "kernel:udp", attempts);
    assert_eq!(recorded.len(), attempts);
    assert!(recorded.iter().all(|s| text(s, "transport") == "udp"));
    for receiver in &receivers {
        let mut buffer = [0u8; 64];
        assert!(
            receiver.recv_from(&mut buffer).is_err(),
            "a datagram reached {:?}",
            receiver.local_addr()
        );
    }
}

#[test]
fn quic_is_refused_so_clients_fall_back_to_tcp() {
    let daemon = TestDaemon::start(POLICY);
    // HTTP/3 is UDP to 443; a QUIC client that gets EPERM falls back to TCP.
    let quic = UdpSocket::bind("127.0.0.43:443").expect("udp 443 receiver");
    quic.set_nonblocking(true).unwrap();
    let report = as_nobody(&daemon, &["udp-connect", "127.0.0.43:443"]);
    assert_probe_refused(&report);
    let recorded = refusals(&daemon, "kernel:udp", 1);
    assert_eq!(text(&recorded[0], "destination"), "127.0.0.43:443");
    let mut buffer = [0u8; 64];
    assert!(
        quic.recv_from(&mut buffer).is_err(),
        "a QUIC datagram arrived"
    );

    let sink = Sink::start("127.0.0.2:0");
    let fallback = as_nobody(&daemon, &["tcp", &sink.addr.to_string()]);
    assert_mediated(&daemon, &sink, &fallback);
}

#[test]
fn raw_and_packet_sockets_are_refused_even_in_the_agents_own_user_namespace() {
    let daemon = TestDaemon::start(POLICY);
    require_enforced(&daemon, "raw_socket");
    // Without sluice, nobody gets all four in a namespace of its own.
    let unmanaged = outside_as_nobody_in_own_netns("", &["sockets"]);
    for kind in ["inet_raw", "inet6_raw", "packet", "packet_dgram"] {
        assert_eq!(text(&unmanaged, kind), "created", "{unmanaged}");
    }

    let report = as_nobody_in_own_netns(&daemon, "", &["sockets"]);
    for kind in ["inet_raw", "inet6_raw"] {
        assert!(text(&report, kind).contains("PermissionDenied"), "{report}");
    }
    let raw = refusals(&daemon, "kernel:raw_socket", 2);
    assert!(
        raw.iter()
            .all(|s| text(s, "destination").starts_with("socket(family ")),
        "{raw:#?}"
    );
    assert!(raw.iter().all(|s| text(s, "comm") == "sluice-probe"));

    // In the agent's first namespace it lacks CAP_NET_RAW: the kernel refuses raw
    // sockets with or without sluice.
    let host_netns = as_nobody(&daemon, &["sockets"]);
    for kind in ["inet_raw", "inet6_raw"] {
        assert!(
            text(&host_netns, kind).contains("PermissionDenied"),
            "{host_netns}"
        );
    }
    // `sluice run`'s seccomp filter refuses packet sockets in either namespace, before
    // the kernel (or the LSM) looks at capabilities.
    for (report, kind) in [&report, &host_netns]
        .into_iter()
        .flat_map(|r| [(r, "packet"), (r, "packet_dgram")])
    {
        assert!(
            text(report, kind).contains(&format!("(os error {})", libc::EAFNOSUPPORT)),
            "{report}"
        );
    }
    // Without the filter, the BPF LSM alone.
    let lsm_only = as_nobody_in_own_netns_with(&daemon, &["--no-seccomp"], "", &["sockets"]);
    if assert_lsm_row_follows_the_kernel(&daemon, "packet_socket") {
        for kind in ["packet", "packet_dgram"] {
            assert!(
                text(&lsm_only, kind).contains("PermissionDenied"),
                "{lsm_only}"
            );
        }
        let packet = refusals(&daemon, "kernel:packet_socket", 2);
        assert!(
            packet
                .iter()
                .all(|s| text(s, "destination").starts_with("socket(family 17, ")),
            "{packet:#?}"
        );
    } else {
        // Where the BPF LSM cannot run, status says so and why: a packet socket in the
        // agent's own namespace sees only that namespace's interfaces.
        assert_eq!(text(&lsm_only, "packet"), "created", "{lsm_only}");
    }
}

#[test]
fn sluice_run_refuses_vsock_packet_and_other_unmediated_socket_families_by_seccomp() {
    let daemon = TestDaemon::start(POLICY);
    // Without sluice, nobody gets vsock (where the host has it) and, in a namespace of
    // its own, packet sockets.
    let unmanaged = outside_as_nobody_in_own_netns("", &["families"]);
    assert_eq!(text(&unmanaged, "packet"), "created", "{unmanaged}");

    let refused = seccomp_refusal();
    let host_netns = as_nobody(&daemon, &["families"]);
    let own_netns = as_nobody_in_own_netns(&daemon, "", &["families"]);
    for report in [&host_netns, &own_netns] {
        // socket(2), socketpair(2), and on x86_64 the x32 socket(2) (ENOSYS without the
        // filter where the kernel has no x32).
        for kind in ["vsock", "vsock_pair", "packet", "x32_vsock"] {
            if report.get(kind).is_some() {
                assert!(text(report, kind).starts_with(&refused), "{kind}: {report}");
            }
        }
        // The families sluice mediates (or that reach nothing) are untouched.
        for kind in ["unix", "unix_pair", "inet", "inet6", "netlink"] {
            assert_eq!(text(report, kind), "created", "{kind}: {report}");
        }
    }

    // The opt-out leaves it to the kernel and the BPF LSM.
    let unfiltered = as_nobody_in_own_netns_with(&daemon, &["--no-seccomp"], "", &["families"]);
    let packet_row = matrix_row(&daemon, "packet_socket");
    if assert_lsm_row_follows_the_kernel(&daemon, "packet_socket") {
        for kind in ["vsock", "packet"] {
            assert!(
                text(&unfiltered, kind).starts_with(&format!("errno {} ", libc::EPERM)),
                "{kind}: {unfiltered}"
            );
        }
    } else {
        for kind in ["vsock", "packet"] {
            assert_eq!(text(&unfiltered, kind), text(&unmanaged, kind), "{kind}");
        }
        // Status says what covers the row instead, and what does not.
        let detail = text(&packet_row, "detail");
        assert!(
            detail.contains("agents started by `sluice run` are covered by its seccomp filter"),
            "{packet_row:#}"
        );
        assert!(detail.contains("io_uring"), "{packet_row:#}");
    }
}

#[test]
fn agents_placed_in_the_cgroup_without_sluice_run_get_vsock_packet_and_other_families_refused_by_the_lsm()
 {
    let daemon = TestDaemon::start(POLICY);
    // As a systemd service or any launcher would place it: no seccomp filter.
    let unmanaged = nobody_placed_by_hand(&daemon, false, &["families"]);
    let report = nobody_placed_by_hand(&daemon, true, &["families"]);
    // The families sluice mediates (or that reach nothing) are untouched.
    for kind in ["unix", "unix_pair", "inet", "inet6", "netlink"] {
        assert_eq!(text(&report, kind), "created", "{kind}: {report}");
    }
    if assert_lsm_row_follows_the_kernel(&daemon, "packet_socket") {
        // EPERM from the LSM, before the kernel looks for the family or at capabilities.
        for kind in ["vsock", "vsock_pair", "packet"] {
            assert!(
                text(&report, kind).starts_with(&format!("errno {} ", libc::EPERM)),
                "{kind}: {report}"
            );
        }
        let families = refusals(&daemon, "kernel:socket_family", 2);
        assert!(
            families.iter().all(|s| text(s, "destination")
                .starts_with(&format!("socket(family {}, ", libc::AF_VSOCK))),
            "{families:#?}"
        );
        assert!(families.iter().all(|s| s["uid"] == 65534), "{families:#?}");
        let packet = refusals(&daemon, "kernel:packet_socket", 1);
        assert!(
            text(&packet[0], "destination").starts_with("socket(family 17, "),
            "{packet:#?}"
        );
    } else {
        // The gap the row names: nothing in the cgroup refuses them.
        for kind in ["vsock", "vsock_pair", "packet"] {
            assert_eq!(text(&report, kind), text(&unmanaged, kind), "{kind}");
        }
    }
}

#[test]
fn io_uring_socket_creation_outside_the_mediated_families_is_refused_where_the_lsm_runs() {
    let daemon = TestDaemon::start(POLICY);
    let unmanaged = nobody_placed_by_hand(&daemon, false, &["io-uring-socket"]);
    assert_eq!(text(&unmanaged, "inet"), "created", "{unmanaged}");
    // Under `sluice run`'s seccomp filter, which never sees IORING_OP_SOCKET.
    let report = as_nobody(&daemon, &["io-uring-socket"]);
    assert_eq!(text(&report, "inet"), "created", "{report}");
    if assert_lsm_row_follows_the_kernel(&daemon, "packet_socket") {
        for kind in ["vsock", "packet"] {
            assert!(
                text(&report, kind).starts_with(&format!("errno {} ", libc::EPERM)),
                "{kind}: {report}"
            );
        }
        let family = refusals(&daemon, "kernel:socket_family", 1);
        assert!(
            text(&family[0], "destination")
                .starts_with(&format!("socket(family {}, ", libc::AF_VSOCK)),
            "{family:#?}"
        );
        refusals(&daemon, "kernel:packet_socket", 1);
    } else {
        // seccomp does not see it, and status says so.
        for kind in ["vsock", "packet"] {
            assert_eq!(text(&report, kind), text(&unmanaged, kind), "{kind}");
        }
        let row = matrix_row(&daemon, "packet_socket");
        assert!(text(&row, "detail").contains("IORING_OP_SOCKET"), "{row:#}");
    }
}

#[test]
fn an_unprivileged_new_network_namespace_cannot_connect() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    // In its own namespace 127.0.0.2 would be the agent's own loopback.
    let report = as_nobody_in_own_netns(&daemon, "", &["tcp", &sink.addr.to_string()]);
    assert_probe_refused(&report);
    let recorded = refusals(&daemon, "kernel:foreign_netns", 1);
    assert_eq!(recorded[0]["uid"], 65534, "{recorded:#?}");
    assert!(sink.peers().is_empty());
}

/// What the process outside the cgroup hands the agent over SCM_RIGHTS.
enum Passed {
    /// A fresh, unconnected TCP socket.
    UnconnectedTcp(SocketAddr),
    /// A TCP stream already connected to the sink.
    ConnectedTcp(TcpStream),
    /// An unbound UDP socket.
    Udp(UdpSocket),
}

/// Listens on a unix socket outside the cgroup and passes one descriptor to whoever
/// connects. Returns the socket's path.
fn pass_descriptor(dir: &Path, passed: Passed) -> std::path::PathBuf {
    let path = dir.join("fd-channel.sock");
    let listener = UnixListener::bind(&path).expect("bind fd channel");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::thread::spawn(move || {
        let (channel, _) = listener.accept().expect("accept fd channel");
        let unconnected: OwnedFd;
        let fd: RawFd = match &passed {
            Passed::UnconnectedTcp(target) => {
                let family = if target.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                };
                // SAFETY: plain socket(2); the descriptor is owned, so closed on return.
                let raw = unsafe { libc::socket(family, libc::SOCK_STREAM, 0) };
                assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
                // SAFETY: a fresh descriptor nobody else owns.
                unconnected = unsafe { OwnedFd::from_raw_fd(raw) };
                unconnected.as_raw_fd()
            }
            Passed::ConnectedTcp(stream) => stream.as_raw_fd(),
            Passed::Udp(socket) => socket.as_raw_fd(),
        };
        send_fd(&channel, fd);
        // Keep our copy open until the agent is done with its own.
        let mut done = [0u8; 1];
        let _ = (&channel).read(&mut done);
    });
    path
}

fn send_fd(channel: &UnixStream, fd: RawFd) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: all-zero is a valid msghdr; the buffers outlive the call; the cmsg macros
    // stay inside `control`, which has room for one descriptor.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &raw mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
        let header = libc::CMSG_FIRSTHDR(&raw const message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
        assert_eq!(
            libc::sendmsg(channel.as_raw_fd(), &raw const message, 0),
            1,
            "sendmsg SCM_RIGHTS: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[test]
fn sockets_passed_in_from_outside_the_cgroup_are_refused_on_connect_and_send() {
    let daemon = TestDaemon::start(POLICY);
    require_enforced(&daemon, "foreign_socket");
    let sink = Sink::start("127.0.0.2:0");
    let receiver = UdpSocket::bind("127.0.0.2:0").expect("udp receiver");
    receiver.set_nonblocking(true).unwrap();

    // 1. An unconnected TCP socket: the agent connects it itself. Its cgroup is the
    //    test's, so connect4 would not redirect it.
    let dir = tempfile::tempdir().unwrap();
    let channel = pass_descriptor(dir.path(), Passed::UnconnectedTcp(sink.addr));
    let report = as_nobody(
        &daemon,
        &[
            "fd-recv",
            channel.to_str().unwrap(),
            "connect",
            &sink.addr.to_string(),
        ],
    );
    assert_probe_refused(&report);

    // 3. A UDP socket: the agent sends a datagram with it.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let channel = pass_descriptor(dir.path(), Passed::Udp(udp));
    let report = as_nobody(
        &daemon,
        &[
            "fd-recv",
            channel.to_str().unwrap(),
            "sendto",
            &receiver.local_addr().unwrap().to_string(),
        ],
    );
    assert_probe_refused(&report);

    let recorded = refusals(&daemon, "kernel:foreign_socket", 2);
    assert!(recorded.iter().all(|s| s["uid"] == 65534), "{recorded:#?}");
    let mut transports: Vec<&str> = recorded.iter().map(|s| text(s, "transport")).collect();
    transports.sort_unstable();
    assert_eq!(transports, ["tcp", "udp"], "{recorded:#?}");
    let destinations: Vec<&str> = recorded.iter().map(|s| text(s, "destination")).collect();
    assert!(
        destinations.contains(&sink.addr.to_string().as_str()),
        "{recorded:#?}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(sink.peers().is_empty(), "{:?}", sink.peers());
    let mut buffer = [0u8; 64];
    assert!(
        receiver.recv_from(&mut buffer).is_err(),
        "a datagram arrived"
    );
}

#[test]
fn sends_on_a_socket_connected_outside_the_cgroup_are_refused_where_the_bpf_lsm_runs() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    let connected = TcpStream::connect(sink.addr).expect("connect outside the cgroup");
    let our_end = connected.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let channel = pass_descriptor(dir.path(), Passed::ConnectedTcp(connected));
    let report = as_nobody(&daemon, &["fd-recv", channel.to_str().unwrap(), "send"]);

    if assert_lsm_row_follows_the_kernel(&daemon, "foreign_connected_socket") {
        assert_probe_refused(&report);
        let recorded = refusals(&daemon, "kernel:foreign_socket", 1);
        assert_eq!(text(&recorded[0], "transport"), "tcp");
        std::thread::sleep(Duration::from_millis(200));
        assert!(sink.lines_from(our_end).is_empty());
    } else {
        // Without the BPF LSM this is the same limit as a relay outside the cgroup (the
        // process that connected could relay anyway), and status says so.
        assert_eq!(report["ok"], true, "{report}");
    }
}

#[test]
fn a_unix_socket_to_a_relay_outside_the_cgroup_is_a_documented_limit() {
    let daemon = TestDaemon::start(POLICY);
    // The limit is stated where operators look.
    let row = matrix_row(&daemon, "unix_relay");
    assert_eq!(row["enforced"], false, "{row:#}");
    assert!(text(&row, "detail").contains("not mediated"), "{row:#}");
    assert_status_says_not_enforced(&daemon, "unix_relay");

    // And it is real: a relay outside the cgroup hears the agent.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("relay.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let relay = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 5];
        stream.read_exact(&mut request).unwrap();
        stream.write_all(b"relayed").unwrap();
        request
    });
    let report = as_nobody(&daemon, &["unix", path.to_str().unwrap(), "hello"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(text(&report, "response"), "relayed");
    assert_eq!(&relay.join().unwrap(), b"hello");
}

#[test]
fn a_non_root_agent_cannot_leave_the_managed_cgroup() {
    let daemon = TestDaemon::start(POLICY);
    require_enforced(&daemon, "leave_cgroup");
    let mount = sluice_tests::cgroup2_mount();
    // Another agent's cgroup exists once something ran there.
    let other = daemon.run_agent("other", "/bin/true", &[]);
    assert!(other.status.success(), "{other:?}");
    let targets = [
        mount.join("cgroup.procs"),
        daemon.cgroup_root.join("cgroup.procs"),
        daemon.cgroup_root.join("other").join("cgroup.procs"),
    ];
    let targets: Vec<&str> = targets.iter().map(|p| p.to_str().unwrap()).collect();
    let mut args = vec!["leave-cgroup"];
    args.extend_from_slice(&targets);

    for report in [
        as_nobody(&daemon, &args),
        // Root in a user namespace of its own owns nothing of the cgroup tree either.
        as_nobody_in_own_netns(&daemon, "", &args),
    ] {
        assert_eq!(report["ok"], false, "{report}");
        for target in &targets {
            assert!(
                text(&report["attempts"], target).contains("PermissionDenied"),
                "{report}"
            );
        }
        assert!(text(&report, "cgroup").ends_with("/probe"), "{report}");
    }
}

#[test]
fn agents_cannot_use_the_control_socket_and_root_agents_are_recorded() {
    let daemon = TestDaemon::start(POLICY);
    let socket = daemon.control_socket.to_str().unwrap().to_owned();
    let request = "GET /v1/status HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n";

    // nobody cannot even open it (mode 0660, root's group).
    let report = as_nobody(&daemon, &["unix", &socket, request]);
    assert_probe_refused(&report);

    // Root inside the cgroup gets through the mode, and the daemon refuses and records.
    let probe = probe_bin();
    let report = daemon.probe_with(
        "probe",
        &[],
        &[probe.to_str().unwrap(), "unix", &socket, request],
    );
    let response = text(&report, "response");
    assert!(response.starts_with("HTTP/1.1 403"), "{report}");
    assert!(!response.contains("\"programs\""), "{report}");
    let recorded = refusals(&daemon, "control:unauthorized", 1);
    assert_eq!(text(&recorded[0], "destination"), "control-socket");
}

#[test]
fn the_egress_backstop_drops_replies_to_peers_that_connect_in() {
    let daemon = TestDaemon::start(POLICY);
    require_enforced(&daemon, "backstop");
    let before = daemon.status_json()["backstop_drops"].as_u64().unwrap();
    // An agent that listens and waits for a colluding peer outside to connect in: no
    // sock_addr hook runs for accept or for what the agent sends back, so only the
    // backstop stands between the agent and that peer.
    let addr: SocketAddr = {
        let probe_port = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        probe_port.local_addr().unwrap()
    };
    let agent = {
        let listen = addr.to_string();
        let daemon_ref = &daemon;
        std::thread::scope(|scope| {
            let agent = scope.spawn(move || as_nobody(daemon_ref, &["serve", &listen]));
            let mut received = Vec::new();
            // The agent starts listening once `sluice run` is done, which is slow in emulation.
            let deadline =
                std::time::Instant::now() + Duration::from_secs(4) * sluice_tests::slowdown();
            while std::time::Instant::now() < deadline {
                // The handshake itself needs the agent's SYN-ACK, which is dropped.
                if let Ok(mut stream) =
                    TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                {
                    stream
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let _ = stream.read_to_end(&mut received);
                    break;
                }
            }
            assert!(
                received.is_empty(),
                "the peer outside heard the agent: {:?}",
                String::from_utf8_lossy(&received)
            );
            agent.join().expect("agent thread")
        })
    };
    assert_eq!(
        agent["ok"], false,
        "a peer outside reached the agent: {agent}"
    );

    let recorded = refusals(&daemon, "kernel:skb_backstop", 1);
    assert_eq!(text(&recorded[0], "transport"), "tcp", "{recorded:#?}");
    assert_ne!(
        text(&recorded[0], "destination"),
        format!("127.0.0.1:{}", daemon.port)
    );
    let after = daemon.status_json()["backstop_drops"].as_u64().unwrap();
    assert!(after > before, "drops {before} -> {after}");
}

#[test]
fn the_egress_backstop_drops_icmp_echo_from_ping_sockets() {
    let daemon = TestDaemon::start(POLICY);
    require_enforced(&daemon, "backstop");
    // No sock_addr hook runs for a ping socket's sendto (sendmsg4/6 are UDP only). Where
    // net.ipv4.ping_group_range admits the agent (many distributions admit everyone)
    // that is ICMP, with any payload, to anywhere. Here the agent admits itself in a
    // namespace of its own; without sluice the echo is answered there.
    let admit = "echo '0 0' > /proc/sys/net/ipv4/ping_group_range;";
    let unmanaged = outside_as_nobody_in_own_netns(admit, &["ping", "127.0.0.1"]);
    assert_eq!(unmanaged["reply"], true, "{unmanaged}");
    let before = daemon.status_json()["backstop_drops"].as_u64().unwrap();

    let report = as_nobody_in_own_netns(&daemon, admit, &["ping", "127.0.0.1"]);
    assert_eq!(report["reply"], false, "the echo got out: {report}");
    // The drop at egress comes back to the sender as EPERM.
    assert!(
        text(&report, "send_error").contains("PermissionDenied"),
        "{report}"
    );
    let recorded = refusals(&daemon, "kernel:skb_backstop", 1);
    assert_eq!(text(&recorded[0], "destination"), "127.0.0.1:0");
    assert_eq!(text(&recorded[0], "transport"), "ipproto-1");
    assert_eq!(text(&recorded[0], "comm"), "sluice-probe");
    let after = daemon.status_json()["backstop_drops"].as_u64().unwrap();
    assert!(after > before, "drops {before} -> {after}");
}
