//! DNS from agents: every query, UDP or TCP, to whatever server the agent names, is
//! answered by the daemon's resolver, which asks the configured upstream (a real
//! dnsmasq on loopback), judges the query by policy and records it. The server the
//! agent named never sees a packet.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{TestDaemon, free_port, text};

const POLICY: &str = r#"
[[agent]]
name = "resolver-user"

[[agent]]
name = "other-agent"

[[resource]]
name = "dns"
addresses = ["0.0.0.0/0", "::/0"]
ports = [53]
protocol = "dns"

[[rule]]
agent = "resolver-user"
resource = "dns"
operations = ["read"]
action = "allow"

[[rule]]
agent = "other-agent"
resource = "dns"
operations = ["read"]
action = "allow"
"#;

/// A private dnsmasq answering from a hosts file, on `listen`.
struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    fn start(listen: &str, hosts: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let hosts_file = dir.path().join("hosts");
        std::fs::write(&hosts_file, hosts).expect("write hosts");
        let port = free_port();
        let child = Command::new(dnsmasq_bin())
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--user=root",
                "--group=root",
                "--local-ttl=60",
            ])
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .arg(format!("--listen-address={listen}"))
            .arg(format!("--port={port}"))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq (cargo xtask setup installs dnsmasq-base)");
        let addr: SocketAddr = format!("{listen}:{port}").parse().expect("dnsmasq address");
        let server = Self {
            child,
            addr,
            _dir: dir,
        };
        server.wait_until_answering();
        server
    }

    fn wait_until_answering(&self) {
        // Under emulation (a slowdown factor) dnsmasq's start and dig's run take longer.
        let deadline = Instant::now() + Duration::from_secs(10) * sluice_tests::slowdown();
        while Instant::now() < deadline {
            let output = Command::new("dig")
                .args([
                    &format!("@{}", self.addr.ip()),
                    "-p",
                    &self.addr.port().to_string(),
                    "+time=1",
                    "+tries=1",
                    "ready.invalid",
                ])
                .output()
                .expect("run dig (cargo xtask setup installs bind9-dnsutils)");
            if String::from_utf8_lossy(&output.stdout).contains("status:") {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("dnsmasq on {} did not come up", self.addr);
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dnsmasq_bin() -> PathBuf {
    ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("dnsmasq"))
}

/// A UDP and a TCP socket on `ip:53` standing in for the server agents name: they
/// must never receive anything.
struct NamedServerSink {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl NamedServerSink {
    fn start(ip: &str) -> Self {
        let udp = UdpSocket::bind(format!("{ip}:53")).expect("bind the UDP sink on port 53");
        udp.set_nonblocking(true).expect("nonblocking");
        let tcp = TcpListener::bind(format!("{ip}:53")).expect("bind the TCP sink on port 53");
        tcp.set_nonblocking(true).expect("nonblocking");
        Self { udp, tcp }
    }

    fn assert_untouched(&self) {
        let mut buffer = [0u8; 2048];
        let datagram = self.udp.recv_from(&mut buffer);
        assert!(
            datagram.is_err(),
            "the named server got a datagram: {datagram:?}"
        );
        let connection = self.tcp.accept();
        assert!(
            connection.is_err(),
            "the named server got a connection: {connection:?}"
        );
    }
}

/// A dnsmasq on `listen` answering from `hosts`, and a daemon with [`POLICY`] whose
/// resolver forwards to it (keep the dnsmasq alive as long as the daemon).
fn daemon_with_upstream(listen: &str, hosts: &str) -> (Dnsmasq, TestDaemon) {
    let upstream = Dnsmasq::start(listen, hosts);
    let daemon = TestDaemon::start_with_dns(POLICY, &[upstream.addr]);
    (upstream, daemon)
}

/// Runs `python3 -c script args...` as `resolver-user`, as the unprivileged `nobody`.
fn python_as_resolver_user(daemon: &TestDaemon, script: &str, args: &[&str]) -> Output {
    let mut all = vec![
        "run",
        "--agent",
        "resolver-user",
        "--user",
        "nobody",
        "--",
        "python3",
        "-c",
        script,
    ];
    all.extend_from_slice(args);
    daemon.sluice(&all)
}

/// Runs `dig` as `agent`, as the unprivileged `nobody`, and returns its stdout.
fn dig_as(daemon: &TestDaemon, agent: &str, args: &[&str]) -> String {
    // Under emulation (a slowdown factor) the daemon's first answer can take longer.
    let time = format!("+time={}", 3 * sluice_tests::slowdown());
    let mut all = vec!["run", "--agent", agent, "--user", "nobody", "--", "dig"];
    all.extend_from_slice(&[time.as_str(), "+tries=1"]);
    all.extend_from_slice(args);
    let output = daemon.sluice(&all);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits for the recorded DNS statement whose query text is `query` and whose
/// answer is in, and returns (session, statement).
fn recorded_query(daemon: &TestDaemon, agent: &str, query: &str) -> (Value, Value) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        for session in daemon.sessions(Some(agent)) {
            let Some(id) = session["id"].as_u64() else {
                continue;
            };
            let shown = daemon.show_session(id);
            let statements = shown["statements"].as_array().cloned().unwrap_or_default();
            if let Some(statement) = statements
                .into_iter()
                .find(|s| text(s, "sql") == query && !text(s, "tag").is_empty())
            {
                return (shown["session"].clone(), statement);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no record of `{query}` by {agent}; sessions {:#?}\nlog:\n{}",
            daemon.sessions(Some(agent)),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn udp_queries_to_any_server_are_answered_by_the_resolver_and_recorded() {
    let (_upstream, daemon) = daemon_with_upstream("127.0.54.1", "10.53.0.7 db.internal\n");
    let named = NamedServerSink::start("127.0.53.1");

    let answer = dig_as(
        &daemon,
        "resolver-user",
        &["@127.0.53.1", "-p", "53", "db.internal", "A"],
    );
    // dig checks that the reply came from the server it asked: the recvmsg program
    // rewrote the resolver's address back to 127.0.53.1.
    assert!(answer.contains("status: NOERROR"), "{answer}");
    assert!(answer.contains("10.53.0.7"), "{answer}");
    assert!(answer.contains("SERVER: 127.0.53.1#53"), "{answer}");
    named.assert_untouched();

    let (session, statement) = recorded_query(&daemon, "resolver-user", "A db.internal");
    assert_eq!(text(&session, "transport"), "udp");
    assert_eq!(text(&session, "destination"), "127.0.53.1:53");
    assert_eq!(session["uid"], 65534, "{session}");
    assert!(text(&session, "exe").ends_with("/dig"), "{session}");
    assert_eq!(text(&session, "resource"), "dns");
    assert_eq!(session["decision"]["action"], "allow");
    assert_eq!(text(&statement, "tag"), "NOERROR A 10.53.0.7");

    // The audit event log has the query and its answer too.
    let id = session["id"].as_u64().expect("session id").to_string();
    let export = daemon.sluice(&["export", "--format", "jsonl", "--session", &id]);
    let events: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let dns = events
        .iter()
        .map(|stored| &stored["event"])
        .find(|event| event["activity"]["type"] == "dns")
        .unwrap_or_else(|| panic!("no dns event in {events:#?}"));
    assert_eq!(dns["activity"]["name"], "db.internal");
    assert_eq!(dns["activity"]["query_type"], "A");
    assert_eq!(dns["activity"]["rcode"], "NOERROR");
    assert_eq!(
        dns["activity"]["answers"],
        serde_json::json!(["A 10.53.0.7"])
    );
    assert_eq!(dns["context"]["agent"], "resolver-user");
    assert_eq!(dns["context"]["uid"], 65534);
    assert_eq!(dns["context"]["destination"], "127.0.53.1:53");
}

#[test]
fn tcp_queries_are_answered_by_the_resolver_too() {
    let (_upstream, daemon) = daemon_with_upstream("127.0.54.2", "10.53.0.8 tcp.internal\n");
    let named = NamedServerSink::start("127.0.53.2");

    let answer = dig_as(
        &daemon,
        "resolver-user",
        &["+tcp", "@127.0.53.2", "-p", "53", "tcp.internal", "A"],
    );
    assert!(answer.contains("status: NOERROR"), "{answer}");
    assert!(answer.contains("10.53.0.8"), "{answer}");
    named.assert_untouched();

    let (session, statement) = recorded_query(&daemon, "resolver-user", "A tcp.internal");
    assert_eq!(text(&session, "transport"), "tcp");
    assert_eq!(text(&session, "destination"), "127.0.53.2:53");
    assert_eq!(text(&statement, "tag"), "NOERROR A 10.53.0.8");
}

#[test]
fn ipv6_queries_are_answered_and_appear_to_come_from_the_named_server() {
    let (_upstream, daemon) = daemon_with_upstream("127.0.54.3", "10.53.0.9 six.internal\n");

    // Nothing may listen on [::1]:53 for this to prove anything: dig would then get
    // "connection refused" instead of an answer.
    let answer = dig_as(
        &daemon,
        "resolver-user",
        &["@::1", "-p", "53", "six.internal", "A"],
    );
    assert!(answer.contains("status: NOERROR"), "{answer}");
    assert!(answer.contains("10.53.0.9"), "{answer}");
    assert!(answer.contains("SERVER: ::1#53"), "{answer}");
    let (session, _) = recorded_query(&daemon, "resolver-user", "A six.internal");
    assert_eq!(text(&session, "destination"), "[::1]:53");
}

#[test]
fn agents_without_a_dns_rule_are_refused_and_nothing_is_asked() {
    let (_upstream, daemon) = daemon_with_upstream("127.0.54.4", "10.53.0.10 secret.internal\n");
    let named = NamedServerSink::start("127.0.53.4");

    let answer = dig_as(
        &daemon,
        "stranger",
        &["@127.0.53.4", "-p", "53", "secret.internal", "A"],
    );
    assert!(answer.contains("status: REFUSED"), "{answer}");
    assert!(!answer.contains("10.53.0.10"), "{answer}");
    named.assert_untouched();

    let (session, statement) = recorded_query(&daemon, "stranger", "A secret.internal");
    assert_eq!(session["decision"]["rule"], "default-deny");
    assert_eq!(statement["decision"]["action"], "deny");
    assert_eq!(text(&statement, "tag"), "REFUSED");
}

#[test]
fn malformed_queries_get_formerr_or_nothing_and_the_resolver_keeps_working() {
    let (_upstream, daemon) = daemon_with_upstream("127.0.54.5", "10.53.0.11 after.internal\n");
    let named = NamedServerSink::start("127.0.53.5");

    // A header claiming one question that is not there, then three bytes.
    let script = r#"
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(bytes([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0xff]), ("127.0.53.5", 53))
reply, source = s.recvfrom(512)
print("id=%02x%02x rcode=%d from=%s:%d" % (reply[0], reply[1], reply[3] & 15, source[0], source[1]))
s.sendto(b"abc", ("127.0.53.5", 53))
s.settimeout(1)
try:
    s.recvfrom(512)
    print("short=answered")
except socket.timeout:
    print("short=dropped")
"#;
    let output = python_as_resolver_user(&daemon, script, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("id=1234 rcode=1 from=127.0.53.5:53"),
        "{stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("short=dropped"), "{stdout}");

    let answer = dig_as(
        &daemon,
        "resolver-user",
        &["@127.0.53.5", "-p", "53", "after.internal", "A"],
    );
    assert!(answer.contains("10.53.0.11"), "{answer}");
    named.assert_untouched();
    let (_, malformed) = recorded_query(&daemon, "resolver-user", "<malformed: 14 bytes>");
    assert_eq!(text(&malformed, "tag"), "FORMERR");
}

#[test]
fn a_hostname_resource_matches_only_after_this_agents_own_lookup() {
    let service = sluice_tests::Sink::start("127.0.55.1:0");
    let upstream = Dnsmasq::start("127.0.54.6", "127.0.55.1 db.internal\n");
    let policy = format!(
        r#"{POLICY}
[[resource]]
name = "internal-db"
hostnames = ["db.internal"]
ports = [{port}]

[[rule]]
name = "resolver-user-reaches-db"
agent = "resolver-user"
resource = "internal-db"
operations = ["connect"]
action = "allow"

[[rule]]
agent = "other-agent"
resource = "internal-db"
operations = ["connect"]
action = "allow"
"#,
        port = service.addr.port()
    );
    let daemon = TestDaemon::start_with_dns(&policy, &[upstream.addr]);
    let dial = service.addr.to_string();
    let connect_as = |agent: &str| {
        let probe = sluice_tests::probe_bin();
        daemon.probe_with(
            agent,
            &["--user", "nobody"],
            &[probe.to_str().expect("utf-8 probe path"), "tcp", &dial],
        )
    };

    // No lookup yet: the address is no resource, so it is denied.
    let report = connect_as("resolver-user");
    assert_eq!(report["ok"], false, "{report}");

    // Another agent's lookup does not count for this one.
    let answer = dig_as(
        &daemon,
        "other-agent",
        &["@127.0.55.53", "db.internal", "A"],
    );
    assert!(answer.contains("127.0.55.1"), "{answer}");
    let report = connect_as("resolver-user");
    assert_eq!(report["ok"], false, "{report}");
    assert!(service.peers().is_empty(), "{:?}", service.peers());

    // After its own lookup, the connection is the host-named resource.
    let answer = dig_as(
        &daemon,
        "resolver-user",
        &["@127.0.55.53", "db.internal", "A"],
    );
    assert!(answer.contains("127.0.55.1"), "{answer}");
    let report = connect_as("resolver-user");
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(service.peers().len(), 1);

    let sessions = daemon.wait_for_sessions(Some("resolver-user"), "the connections", |s| {
        s.iter().filter(|s| text(s, "destination") == dial).count() == 3
    });
    let mut decisions: Vec<(String, String)> = sessions
        .iter()
        .filter(|s| text(s, "destination") == dial)
        .map(|s| {
            (
                text(&s["decision"], "rule").to_owned(),
                text(s, "resource").to_owned(),
            )
        })
        .collect();
    decisions.sort();
    assert_eq!(
        decisions,
        vec![
            ("default-deny".to_owned(), String::new()),
            ("default-deny".to_owned(), String::new()),
            (
                "resolver-user-reaches-db".to_owned(),
                "internal-db".to_owned()
            ),
        ]
    );
}

/// A TCP service that counts, per connection, the bytes it received before the other
/// side closed or sent its first chunk (it answers nothing and closes after one read).
struct ByteWitness {
    addr: SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl ByteWitness {
    fn start(addr: &str) -> Self {
        use std::io::Read as _;
        let listener = TcpListener::bind(addr).expect("bind the witness");
        let addr = listener.local_addr().expect("witness address");
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (received_in, accepted_in) = (received.clone(), accepted.clone());
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                accepted_in.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let received = received_in.clone();
                std::thread::spawn(move || {
                    let mut buffer = [0u8; 4096];
                    let read = stream.read(&mut buffer).unwrap_or(0);
                    received.lock().expect("witness lock").push(read);
                });
            }
        });
        Self {
            addr,
            received,
            accepted,
        }
    }

    /// The bytes each finished connection received, once every accepted connection
    /// has finished.
    fn received(&self) -> Vec<usize> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let received = self.received.lock().expect("witness lock").clone();
            if received.len() == self.accepted.load(std::sync::atomic::Ordering::SeqCst)
                || Instant::now() > deadline
            {
                return received;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A TLS service on `service_ip` behind a resource named `allowed`, which the agent's
/// own lookups resolve along with `other.internal` to the same address (dnsmasq on
/// `dnsmasq_ip`), and a Python agent that opens a TLS connection to it naming
/// `argv[1]` after a pause of `argv[2]` seconds.
struct NamedTls {
    service: ByteWitness,
    daemon: TestDaemon,
    script: String,
    _upstream: Dnsmasq,
}

impl NamedTls {
    fn start(service_ip: &str, dnsmasq_ip: &str, allowed: &str, resource: &str) -> Self {
        let service = ByteWitness::start(&format!("{service_ip}:0"));
        let upstream = Dnsmasq::start(
            dnsmasq_ip,
            &format!("{service_ip} {allowed}\n{service_ip} other.internal\n"),
        );
        let port = service.addr.port();
        let policy = format!(
            "{POLICY}\n[[resource]]\nhostnames = [\"{allowed}\"]\nports = [{port}]\n{resource}"
        );
        let daemon = TestDaemon::start_with_dns(&policy, &[upstream.addr]);
        for name in [allowed, "other.internal"] {
            let answer = dig_as(&daemon, "resolver-user", &["@127.0.55.53", name, "A"]);
            assert!(answer.contains(service_ip), "{answer}");
        }
        // The TLS handshake itself fails either way (the service is no TLS server):
        // what matters is whether the ClientHello reached the service.
        let script = format!(
            r#"
import socket, ssl, sys, time
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("{service_ip}", {port}), timeout=5)
time.sleep(float(sys.argv[2]))
try:
    context.wrap_socket(s, server_hostname=sys.argv[1])
except Exception as error:
    print(type(error).__name__)
"#
        );
        Self {
            service,
            daemon,
            script,
            _upstream: upstream,
        }
    }

    fn hello(&self, server_name: &str, pause: &str) {
        python_as_resolver_user(&self.daemon, &self.script, &[server_name, pause]);
    }

    /// Waits until a ClientHello beyond the `before` already seen reaches the service.
    fn wait_for_a_hello_after(&self, before: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.service.received().iter().filter(|b| **b > 0).count() == before {
            assert!(
                Instant::now() < deadline,
                "{what} never reached the service: {}",
                self.daemon.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn tls_to_a_hostname_resource_must_ask_for_one_of_its_names() {
    let tls = NamedTls::start(
        "127.0.55.2",
        "127.0.54.7",
        "web.internal",
        r#"name = "internal-web"

[[rule]]
name = "resolver-user-reaches-web"
agent = "resolver-user"
resource = "internal-web"
operations = ["connect"]
action = "allow"
"#,
    );
    let denials = |sessions: &[Value]| -> Vec<Value> {
        sessions
            .iter()
            .filter(|s| {
                text(&s["decision"], "rule") == "tls-server-name" && text(s, "state") == "closed"
            })
            .cloned()
            .collect()
    };

    // Resolved by this agent to this address, but not a name of the resource: refused
    // whether the ClientHello comes at once or after a pause that outlasts the daemon's
    // first look (as an agent waiting on purpose would, and as Python's handshake does
    // under emulation): the first bytes are checked all the same.
    for (pause, seen) in [("0", 1), ("1.5", 2)] {
        tls.hello("other.internal", pause);
        let sessions = tls
            .daemon
            .wait_for_sessions(Some("resolver-user"), "the denial", |s| {
                denials(s).len() >= seen
            });
        for denied in denials(&sessions) {
            assert!(
                text(&denied["decision"], "reason").contains("other.internal"),
                "{denied}"
            );
        }
        let received = tls.service.received();
        assert!(
            received.iter().all(|bytes| *bytes == 0),
            "a refused ClientHello reached the service: {received:?}"
        );
    }

    for pause in ["0", "1.5"] {
        let before = tls.service.received().iter().filter(|b| **b > 0).count();
        tls.hello("web.internal", pause);
        tls.wait_for_a_hello_after(before, &format!("the allowed ClientHello (pause {pause})"));
    }
}

#[test]
fn an_http_resource_named_by_host_checks_a_late_client_hello_too() {
    let tls = NamedTls::start(
        "127.0.55.3",
        "127.0.54.11",
        "api.internal",
        r#"name = "internal-api"
protocol = "http"

[[rule]]
name = "resolver-user-reads-api"
agent = "resolver-user"
resource = "internal-api"
operations = ["read"]
action = "allow"
"#,
    );
    // The ClientHello comes after the daemon's first look at the connection is over:
    // the HTTP handler, which would dial the upstream with the name asked for, checks it.
    tls.hello("other.internal", "1.5");
    let is_refused = |s: &Value| {
        text(s, "resource") == "internal-api"
            && text(s, "state") == "closed"
            && text(s, "close_reason").contains("other.internal")
    };
    let sessions = tls
        .daemon
        .wait_for_sessions(Some("resolver-user"), "the refusal", |s| {
            s.iter().any(is_refused)
        });
    let refused = sessions
        .iter()
        .find(|s| is_refused(s))
        .expect("the refused session");
    assert!(
        text(refused, "close_reason").starts_with("denied: TLS asks for"),
        "{refused}"
    );
    let received = tls.service.received();
    assert!(
        received.is_empty(),
        "the upstream was dialled for a refused name: {received:?}"
    );

    // The resource's own name passes the check, and the upstream is dialled (it is no
    // TLS server, so the handshake goes no further).
    tls.hello("api.internal", "1.5");
    tls.wait_for_a_hello_after(0, "the allowed name");
}

#[test]
fn glibc_lookups_go_through_the_resolver_whatever_resolv_conf_names() {
    let (_upstream, daemon) = daemon_with_upstream("127.0.54.8", "10.53.0.12 glibc.internal\n");
    // The agent sees a resolv.conf naming a loopback server with nothing on it (in a
    // mount namespace of its own), so a failed redirect could not leave the host.
    let resolv_conf = daemon.dir.path().join("agent-resolv.conf");
    std::fs::write(&resolv_conf, "nameserver 127.0.53.8\n").expect("write resolv.conf");
    let script = format!(
        "mount --bind {} /etc/resolv.conf && exec runuser -u nobody -- python3 -c \
         \"import socket; print(socket.getaddrinfo('glibc.internal', 80, socket.AF_INET)[0][4][0])\"",
        resolv_conf.display()
    );
    let output = daemon.sluice(&[
        "run",
        "--agent",
        "resolver-user",
        "--",
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "10.53.0.12",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (session, _) = recorded_query(&daemon, "resolver-user", "A glibc.internal");
    assert_eq!(text(&session, "destination"), "127.0.53.8:53");
    assert_eq!(session["uid"], 65534, "{session}");
}

#[test]
fn connected_and_v4_mapped_sockets_see_the_server_they_named() {
    let (_upstream, daemon) = daemon_with_upstream("127.0.54.9", "10.53.0.13 mapped.internal\n");
    let named = NamedServerSink::start("127.0.53.9");
    let script = r#"
import socket
query = bytes([0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]) + b"\x06mapped\x08internal\x00\x00\x01\x00\x01"
c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
c.settimeout(3)
c.connect(("127.0.53.9", 53))
c.send(query)
reply = c.recv(512)
print("connected peer=%s:%d rcode=%d answers=%d" % (c.getpeername() + (reply[3] & 15, reply[7])))
m = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
m.settimeout(3)
m.sendto(query, ("::ffff:127.0.53.9", 53))
reply, source = m.recvfrom(512)
print("mapped rcode=%d answers=%d from=%s:%d" % (reply[3] & 15, reply[7], source[0], source[1]))
"#;
    let output = python_as_resolver_user(&daemon, script, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A connected UDP socket (as glibc uses) still has the server it named as its peer.
    assert!(
        stdout.contains("connected peer=127.0.53.9:53 rcode=0 answers=1"),
        "{stdout} {stderr}"
    );
    // v4-mapped IPv6 is IPv4 on the wire, and the reply still comes "from" the server.
    assert!(
        stdout.contains("mapped rcode=0 answers=1 from=::ffff:127.0.53.9:53"),
        "{stdout} {stderr}"
    );
    named.assert_untouched();
}

#[test]
fn with_the_daemon_down_dns_fails_closed() {
    let (_upstream, mut daemon) = daemon_with_upstream("127.0.54.10", "10.53.0.14 down.internal\n");
    let named = NamedServerSink::start("127.0.53.10");
    daemon.kill();
    // The programs stay attached: the query goes where no resolver listens.
    let answer = dig_as(
        &daemon,
        "resolver-user",
        &["@127.0.53.10", "-p", "53", "down.internal", "A"],
    );
    assert!(!answer.contains("10.53.0.14"), "{answer}");
    // dig ran, and was refused (ICMP port unreachable from loopback) or timed out.
    assert!(
        answer.contains("no servers could be reached") || answer.contains("connection refused"),
        "{answer}"
    );
    named.assert_untouched();
}
