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
