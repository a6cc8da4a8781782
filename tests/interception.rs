//! The interception path end to end: a real daemon with its programs attached to a
//! real cgroup, agents started with `sluice run`, real TCP servers on loopback.

use std::{net::SocketAddr, time::Duration};

use serde_json::Value;
use sluice_tests::{PROBE_SINKS_POLICY as POLICY, Sink, TestDaemon, assert_probe_refused, text};

/// Connects to `dial` as the agent and checks everything a user would look at.
fn assert_redirected(daemon: &TestDaemon, sink: &Sink, dial: &str, recorded_destination: &str) {
    let report = daemon.probe("probe", &["tcp", dial]);
    assert_eq!(
        report["ok"],
        true,
        "probe failed: {report}\n{}",
        daemon.log()
    );
    // The agent sees the address it dialled as its peer.
    assert_eq!(text(&report, "peer"), dial, "{report}");
    assert_eq!(text(&report, "greeting"), format!("SINK {}", sink.addr));
    assert_eq!(text(&report, "echo"), "hello from the agent");

    let session = daemon.closed_session("probe", recorded_destination);
    assert_eq!(session["decision"]["action"], "allow", "{session:#}");
    assert!(
        text(&session["decision"], "rule").starts_with("probe-reaches-sinks"),
        "{session:#}"
    );
    assert_eq!(text(&session, "agent"), "probe");
    assert_eq!(text(&session, "comm"), "sluice-probe");
    assert!(
        text(&session, "exe").ends_with("/sluice-probe"),
        "{session:#}"
    );
    assert!(session["pid"].as_u64().unwrap_or(0) > 1, "{session:#}");
    assert!(text(&session, "cgroup").ends_with("/probe"), "{session:#}");
    // "hello from the agent\n" up; the greeting and the echo down.
    assert_eq!(session["bytes_up"], 21, "{session:#}");
    let greeting_len = format!("SINK {}\n", sink.addr).len() as u64;
    assert_eq!(
        session["bytes_down"].as_u64(),
        Some(greeting_len + 21),
        "{session:#}"
    );

    // The server saw the daemon's connection, not the agent's.
    let upstream: SocketAddr = text(&session, "upstream_local")
        .parse()
        .expect("upstream_local");
    assert!(
        sink.peers().contains(&upstream),
        "sink peers {:?}, upstream {upstream}",
        sink.peers()
    );
    assert_ne!(text(&report, "local"), upstream.to_string());
    assert_eq!(
        sink.lines_from(upstream),
        vec!["hello from the agent".to_owned()]
    );
}

#[test]
fn ipv4_connections_are_redirected_attributed_and_recorded() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    let dial = sink.addr.to_string();
    assert_redirected(&daemon, &sink, &dial, &dial);
}

#[test]
fn ipv6_connections_are_redirected() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("[::1]:0");
    let dial = sink.addr.to_string();
    assert_redirected(&daemon, &sink, &dial, &dial);
}

#[test]
fn v4_mapped_ipv6_connections_are_handled_as_ipv4() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    let dial = format!("[::ffff:127.0.0.2]:{}", sink.addr.port());
    assert_redirected(&daemon, &sink, &dial, &sink.addr.to_string());
}

#[test]
fn a_denied_destination_is_reset_never_reached_and_recorded() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.3:0");
    let report = daemon.probe("probe", &["tcp", &sink.addr.to_string()]);
    assert_eq!(report["ok"], false, "{report}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        sink.peers().is_empty(),
        "the denied server was reached: {:?}",
        sink.peers()
    );

    let sessions = daemon.wait_for_sessions(Some("probe"), "the denied session", |s| !s.is_empty());
    let session = &sessions[0];
    assert_eq!(text(session, "destination"), sink.addr.to_string());
    assert_eq!(session["decision"]["action"], "deny");
    assert_eq!(session["decision"]["rule"], "default-deny");
    assert_eq!(text(session, "close_reason"), "denied");
    assert_eq!(session["bytes_up"], 0);
}

#[test]
fn an_unknown_agent_is_denied_by_default() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    let report = daemon.probe("stranger", &["tcp", &sink.addr.to_string()]);
    assert_eq!(report["ok"], false, "{report}");
    let sessions = daemon.wait_for_sessions(Some("stranger"), "the stranger's session", |s| {
        !s.is_empty()
    });
    assert_eq!(sessions[0]["decision"]["rule"], "default-deny");
    assert!(sink.peers().is_empty());
}

#[test]
fn processes_outside_the_managed_cgroup_are_never_redirected() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    let mut stream = std::net::TcpStream::connect(sink.addr).expect("direct connect");
    let local = stream.local_addr().expect("local addr");
    let mut greeting = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut stream), &mut greeting)
        .expect("greeting");
    assert_eq!(greeting.trim_end(), format!("SINK {}", sink.addr));
    assert_eq!(
        sink.peers(),
        vec![local],
        "the sink saw someone other than us"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        daemon.sessions(None).is_empty(),
        "an outside connection was recorded"
    );
}

#[test]
fn five_hundred_concurrent_connections_keep_their_own_destinations() {
    let daemon = TestDaemon::start(POLICY);
    let sinks: Vec<Sink> = (0..5).map(|_| Sink::start("127.0.0.2:0")).collect();
    let addrs: Vec<String> = sinks.iter().map(|s| s.addr.to_string()).collect();
    let report = daemon.probe("probe", &["tcp-many", &addrs.join(","), "500"]);
    assert_eq!(report["ok"], true, "{report}\n{}", daemon.log());

    let sessions = daemon.wait_for_sessions(Some("probe"), "500 closed sessions", |s| {
        s.iter().filter(|s| text(s, "state") == "closed").count() == 500
    });
    assert_eq!(sessions.len(), 500);
    for sink in &sinks {
        let for_sink: Vec<&Value> = sessions
            .iter()
            .filter(|s| text(s, "destination") == sink.addr.to_string())
            .collect();
        assert_eq!(for_sink.len(), 100, "sessions for {}", sink.addr);
        // Each session's upstream connection landed on the sink it names.
        let peers = sink.peers();
        for session in for_sink {
            let upstream: SocketAddr = text(session, "upstream_local").parse().unwrap();
            assert!(peers.contains(&upstream), "{session:#}");
            assert_eq!(session["decision"]["action"], "allow");
        }
    }
    let mut ids: Vec<u64> = sessions.iter().filter_map(|s| s["id"].as_u64()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 500, "session ids are not distinct");
}

#[test]
fn with_the_daemon_down_agents_cannot_connect_and_a_restart_resumes() {
    let mut daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    let first = daemon.probe("probe", &["tcp", &sink.addr.to_string()]);
    assert_eq!(first["ok"], true, "{first}");
    daemon.closed_session("probe", &sink.addr.to_string());

    daemon.kill();
    let before = sink.peers().len();
    let refused = daemon.probe("probe", &["tcp", &sink.addr.to_string()]);
    assert_eq!(refused["ok"], false, "{refused}");
    assert!(
        text(&refused, "error").contains("ConnectionRefused"),
        "{refused}"
    );
    let ipv6 = daemon.probe("probe", &["tcp", "[::1]:9"]);
    assert_eq!(ipv6["ok"], false, "{ipv6}");
    assert_eq!(
        sink.peers().len(),
        before,
        "a connection got through with the daemon down"
    );

    daemon.restart();
    let again = daemon.probe("probe", &["tcp", &sink.addr.to_string()]);
    assert_eq!(again["ok"], true, "{again}\n{}", daemon.log());
    let sessions = daemon.wait_for_sessions(Some("probe"), "both sessions", |s| {
        s.iter().filter(|s| text(s, "state") == "closed").count() >= 2
    });
    // Ids keep counting across the restart.
    let ids: Vec<u64> = sessions.iter().filter_map(|s| s["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "ids {ids:?}");
}

#[test]
fn udp_other_than_dns_is_refused_in_the_kernel_and_recorded() {
    let daemon = TestDaemon::start(POLICY);
    let receiver = std::net::UdpSocket::bind("127.0.0.2:0").expect("udp receiver");
    receiver
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let report = daemon.probe(
        "probe",
        &["udp", &receiver.local_addr().unwrap().to_string()],
    );
    assert_probe_refused(&report);
    let mut buffer = [0u8; 64];
    assert!(
        receiver.recv_from(&mut buffer).is_err(),
        "the datagram arrived"
    );

    let sessions = daemon.wait_for_sessions(Some("probe"), "the UDP refusal", |s| !s.is_empty());
    assert_eq!(text(&sessions[0], "transport"), "udp");
    assert_eq!(sessions[0]["decision"]["rule"], "kernel:udp");
}

#[test]
fn agents_cannot_reach_the_daemons_own_port() {
    let daemon = TestDaemon::start(POLICY);
    let target = format!("127.0.0.1:{}", daemon.port);
    let report = daemon.probe("probe", &["tcp", &target]);
    assert_probe_refused(&report);
    let sessions = daemon.wait_for_sessions(Some("probe"), "the refusal", |s| !s.is_empty());
    assert_eq!(sessions[0]["decision"]["rule"], "kernel:daemon_port");
}

/// The daemon's listeners (redirect, resolver, metrics) by port, with the metrics
/// endpoint on, for the daemon-port tests.
fn daemon_with_metrics(policy: &str) -> (TestDaemon, u16) {
    let metrics = sluice_tests::free_port();
    let daemon = TestDaemon::start_with_config(
        policy,
        "",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    (daemon, metrics)
}

/// Waits for `count` refusals recorded as `kernel:daemon_port` and returns their
/// destinations.
fn daemon_port_refusals(daemon: &TestDaemon, count: usize) -> Vec<String> {
    let is_refusal = |s: &Value| s["decision"]["rule"] == "kernel:daemon_port";
    daemon
        .wait_for_sessions(Some("probe"), "the daemon-port refusals", |s| {
            s.iter().filter(|s| is_refusal(s)).count() >= count
        })
        .iter()
        .filter(|s| is_refusal(s))
        .map(|s| text(s, "destination").to_owned())
        .collect()
}

#[test]
fn the_daemons_ports_on_any_local_address_it_listens_on_are_refused() {
    let (daemon, metrics) = daemon_with_metrics(POLICY);
    // The redirect listener and the resolver are on 127.0.0.1 and ::1, metrics on
    // 127.0.0.1 only. The unspecified address connects to a local one; v4-mapped is
    // IPv4.
    let v4 = [
        "127.0.0.1",
        "0.0.0.0",
        "[::ffff:127.0.0.1]",
        "[::ffff:0.0.0.0]",
        "[::]",
    ];
    let mut dials = Vec::new();
    for port in [daemon.port, daemon.dns_port] {
        for host in v4.iter().chain(&["[::1]"]) {
            dials.push(format!("{host}:{port}"));
        }
    }
    for host in v4 {
        dials.push(format!("{host}:{metrics}"));
    }
    for dial in &dials {
        let report = daemon.probe("probe", &["tcp", dial]);
        assert_eq!(report["ok"], false, "{dial}: {report}");
        assert!(
            text(&report, "error").contains("PermissionDenied"),
            "{dial}: {report}"
        );
    }
    let mut refused = daemon_port_refusals(&daemon, dials.len());
    assert_eq!(refused.len(), dials.len(), "{refused:?}");
    // Recorded as dialled (v4-mapped as IPv4, the family the kernel folded it to).
    refused.sort();
    let mut expected: Vec<String> = dials
        .iter()
        .map(|dial| {
            dial.replace("[::ffff:127.0.0.1]", "127.0.0.1")
                .replace("[::ffff:0.0.0.0]", "0.0.0.0")
        })
        .collect();
    expected.sort();
    assert_eq!(refused, expected);
}

#[test]
fn a_service_on_another_loopback_address_with_the_daemons_port_is_reached() {
    // The daemon listens on 127.0.0.1 and ::1 only, so its ports on 127.0.0.2 belong to
    // whoever binds them there: a sink here, which the policy lets the agent reach.
    let (daemon, metrics) = daemon_with_metrics(POLICY);
    for port in [daemon.port, metrics, daemon.dns_port] {
        let sink = Sink::start(&format!("127.0.0.2:{port}"));
        let dial = sink.addr.to_string();
        assert_redirected(&daemon, &sink, &dial, &dial);
    }
    // Still no way into the daemon itself next to them.
    let report = daemon.probe("probe", &["tcp", &format!("127.0.0.1:{metrics}")]);
    assert_probe_refused(&report);
    assert_eq!(daemon_port_refusals(&daemon, 1).len(), 1);
}

/// A network namespace of the test's own, joined to this one by a veth pair: this side
/// `198.18.N.1/30`, the namespace's side `198.18.N.2/30` (198.18.0.0/15 is reserved
/// for benchmarks, so no real network uses it). Deleted on drop.
struct PeerNamespace {
    name: String,
    peer: std::net::Ipv4Addr,
}

impl PeerNamespace {
    fn create() -> Self {
        let id = std::process::id() % 65_000;
        let name = format!("sluice-test-{id}");
        let (host_if, peer_if) = (format!("slh{id}"), format!("slp{id}"));
        let subnet = id % 256;
        let host = format!("198.18.{subnet}.1/30");
        let peer = format!("198.18.{subnet}.2/30");
        let run = |args: &[&str]| {
            let output = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("run ip");
            assert!(
                output.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &name])
            .output();
        run(&["netns", "add", &name]);
        let namespace = Self {
            name: name.clone(),
            peer: format!("198.18.{subnet}.2").parse().expect("address"),
        };
        run(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if, "netns", &name,
        ]);
        run(&["addr", "add", &host, "dev", &host_if]);
        run(&["link", "set", &host_if, "up"]);
        run(&["-n", &name, "addr", "add", &peer, "dev", &peer_if]);
        run(&["-n", &name, "link", "set", &peer_if, "up"]);
        run(&["-n", &name, "link", "set", "lo", "up"]);
        namespace
    }

    /// A [`Sink`] listening on `port` of the namespace's address.
    fn sink(&self, port: u16) -> Sink {
        let path = format!("/run/netns/{}", self.name);
        let address = format!("{}:{port}", self.peer);
        // The listener belongs to the namespace it is created in: create it from a
        // thread that joined the namespace (setns changes only the calling thread).
        std::thread::spawn(move || {
            let namespace = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: a valid namespace fd; only this short-lived thread moves.
            let rc = unsafe {
                libc::setns(
                    std::os::fd::AsRawFd::as_raw_fd(&namespace),
                    libc::CLONE_NEWNET,
                )
            };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            Sink::start(&address)
        })
        .join()
        .expect("sink in the namespace")
    }
}

impl Drop for PeerNamespace {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end, and with it this side's.
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
    }
}

#[test]
fn a_remote_service_on_the_daemons_port_is_reached_and_recorded_normally() {
    let namespace = PeerNamespace::create();
    let policy = format!(
        "{POLICY}\n[[resource]]\nname = \"netns-sink\"\naddresses = [\"{}\"]\n\
         ports = [\"1-65535\"]\nprotocol = \"tcp\"\n\n[[rule]]\n\
         name = \"probe-reaches-sinks-in-the-namespace\"\nagent = \"probe\"\n\
         resource = \"netns-sink\"\noperations = [\"connect\"]\naction = \"allow\"\n",
        namespace.peer
    );
    let (daemon, metrics) = daemon_with_metrics(&policy);
    for port in [daemon.port, metrics] {
        let sink = namespace.sink(port);
        let dial = sink.addr.to_string();
        assert_redirected(&daemon, &sink, &dial, &dial);
    }
    assert!(
        !daemon
            .sessions(Some("probe"))
            .iter()
            .any(|s| s["decision"]["rule"] == "kernel:daemon_port"),
        "{}",
        daemon.log()
    );
}

#[test]
fn sluice_run_refuses_when_the_interception_is_not_installed() {
    let mut daemon = TestDaemon::start(POLICY);
    daemon.kill();
    let detach = daemon.sluice(&["detach"]);
    assert!(detach.status.success());
    let output = daemon.run_agent("probe", "/bin/true", &[]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not installed"), "{stderr}");
}

#[test]
fn sluice_run_exits_with_the_commands_status() {
    let daemon = TestDaemon::start(POLICY);
    let output = daemon.run_agent("probe", "/bin/sh", &["-c", "exit 7"]);
    assert_eq!(output.status.code(), Some(7));
}

#[test]
fn agents_run_as_the_given_user_and_are_recorded_with_their_uid() {
    let daemon = TestDaemon::start(POLICY);
    let sink = Sink::start("127.0.0.2:0");
    let probe = sluice_tests::probe_bin();
    let report = daemon.probe_with(
        "probe",
        &["--user", "nobody"],
        &[probe.to_str().unwrap(), "tcp", &sink.addr.to_string()],
    );
    assert_eq!(report["ok"], true, "{report}");
    let session = daemon.closed_session("probe", &sink.addr.to_string());
    assert_eq!(session["uid"], 65534, "{session:#}");
}

#[test]
fn connects_from_another_network_namespace_are_refused() {
    let daemon = TestDaemon::start(POLICY);
    let probe = sluice_tests::probe_bin();
    // In a fresh namespace 127.0.0.2 would be that namespace's own loopback: a way
    // around the daemon if it were allowed.
    let report = daemon.probe_with(
        "probe",
        &[],
        &[
            "unshare",
            "--net",
            "sh",
            "-c",
            "ip link set lo up; exec \"$0\" \"$@\"",
            probe.to_str().unwrap(),
            "tcp",
            "127.0.0.2:80",
        ],
    );
    assert_probe_refused(&report);
    let sessions = daemon.wait_for_sessions(Some("probe"), "the refusal", |s| !s.is_empty());
    assert_eq!(sessions[0]["decision"]["rule"], "kernel:foreign_netns");
}
