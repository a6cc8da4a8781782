//! Exporting the audit event log: a real daemon with real sessions through the eBPF
//! redirect, shipping to a real rsyslog (TCP and TLS), to a Splunk-HEC-speaking HTTPS
//! receiver, and printing with `sluice export`.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sluice_tests::{
    Sink, TestDaemon, free_port,
    pki::TestPki,
    postgres::{PgCommand, PgServer, Rule},
    text,
};

/// Agent `probe` may reach anything on 127.0.0.2.
const POLICY: &str = r#"
[[agent]]
name = "probe"

[[resource]]
name = "sinks"
addresses = ["127.0.0.2"]
ports = ["1-65535"]
protocol = "tcp"

[[rule]]
name = "probe-reaches-sinks"
agent = "probe"
resource = "sinks"
operations = ["connect"]
action = "allow"
"#;

const WAIT: Duration = Duration::from_secs(30);

/// Runs `count` TCP sessions as agent `probe` and waits until they are all closed.
fn run_sessions(daemon: &TestDaemon, sink: &Sink, count: usize) {
    let before = daemon.sessions(Some("probe")).len();
    for _ in 0..count {
        let report = daemon.probe("probe", &["tcp", &sink.addr.to_string()]);
        assert_eq!(
            report["ok"],
            true,
            "probe failed: {report}\n{}",
            daemon.log()
        );
    }
    daemon.wait_for_sessions(Some("probe"), "closed sessions", |sessions| {
        sessions.len() >= before + count && sessions.iter().all(|s| text(s, "state") == "closed")
    });
}

/// `sluice export --format FORMAT [extra...]`, one line per event.
fn export(daemon: &TestDaemon, format: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["export", "--format", format];
    args.extend_from_slice(extra);
    let output = daemon.sluice(&args);
    assert!(
        output.status.success(),
        "sluice export failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8 export")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The seq of every event in the log, from `sluice export --format jsonl`.
fn all_seqs(daemon: &TestDaemon) -> Vec<u64> {
    export(daemon, "jsonl", &[])
        .iter()
        .map(|line| {
            let event: Value = serde_json::from_str(line).expect("jsonl line");
            event["seq"].as_u64().expect("seq")
        })
        .collect()
}

/// The exporter named `name` in `sluice status --json`.
fn exporter_status(daemon: &TestDaemon, name: &str) -> Value {
    let status = daemon.status_json();
    status["exporters"]
        .as_array()
        .and_then(|exporters| exporters.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no exporter {name} in {status:#}"))
}

/// Waits until `seen()` holds every seq in the log.
fn wait_for_delivery(daemon: &TestDaemon, what: &str, seen: impl Fn() -> Vec<u64>) -> Vec<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let expected = all_seqs(daemon);
        let delivered = seen();
        let delivered_set: BTreeSet<u64> = delivered.iter().copied().collect();
        if !expected.is_empty() && expected.iter().all(|seq| delivered_set.contains(seq)) {
            return delivered;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: delivered {delivered:?}, the log has {expected:?}\nlog:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, written as PEM files in `dir`:
/// (ca, certificate, key).
fn test_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    TestPki::for_host("127.0.0.1").write_to(dir)
}

/// A real rsyslogd in the foreground with a private configuration: imtcp on a loopback
/// port (TLS through the ossl driver when asked), every message's MSGID and MSG
/// written to one file.
struct Rsyslog {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Rsyslog {
    fn start(tls: Option<(&Path, &Path, &Path)>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let tls_config = match tls {
            None => String::new(),
            Some((ca, certificate, key)) => format!(
                "global(DefaultNetstreamDriver=\"ossl\" DefaultNetstreamDriverCAFile={ca:?} \
                 DefaultNetstreamDriverCertFile={certificate:?} DefaultNetstreamDriverKeyFile={key:?})\n"
            ),
        };
        let driver = if tls.is_some() {
            " StreamDriver.Name=\"ossl\" StreamDriver.Mode=\"1\" StreamDriver.AuthMode=\"anon\""
        } else {
            ""
        };
        let config = format!(
            "global(workDirectory={work:?} maxMessageSize=\"64k\")\n{tls_config}\
             module(load=\"imtcp\"{driver})\n\
             input(type=\"imtcp\" address=\"127.0.0.1\" port=\"{port}\")\n\
             template(name=\"exported\" type=\"string\" string=\"%app-name% %msgid% %msg%\\n\")\n\
             action(type=\"omfile\" file={out:?} template=\"exported\")\n",
            work = dir.path(),
            out = dir.path().join("received.log"),
        );
        std::fs::write(dir.path().join("rsyslog.conf"), config).expect("write rsyslog.conf");
        let mut rsyslog = Self {
            dir,
            port,
            child: None,
        };
        rsyslog.launch();
        rsyslog
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn launch(&mut self) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("rsyslogd.stderr"))
            .expect("rsyslog stderr");
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(self.dir.path().join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.path().join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start rsyslogd (cargo xtask setup installs rsyslog)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("rsyslogd exited with {status}:\n{}", self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "rsyslogd did not listen:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and waits for it to exit (it writes what it received first).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.stderr")).unwrap_or_default()
    }

    /// Every message received so far: (app name, msgid, msg).
    fn messages(&self) -> Vec<(String, String, String)> {
        std::fs::read_to_string(self.dir.path().join("received.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ' ');
                Some((
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                    parts.next()?.to_owned(),
                ))
            })
            .collect()
    }

    /// The OCSF `metadata.sequence` of every message, in arrival order.
    fn seqs(&self) -> Vec<u64> {
        self.messages()
            .iter()
            .map(|(_, _, msg)| {
                let event: Value = serde_json::from_str(msg).unwrap_or_else(|e| {
                    panic!("rsyslog got a message that is not OCSF JSON ({e}): {msg}")
                });
                event["metadata"]["sequence"]
                    .as_u64()
                    .expect("metadata.sequence")
            })
            .collect()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}

fn syslog_export(name: &str, address: &str, tls: Option<&Path>) -> String {
    let tls = match tls {
        None => String::new(),
        Some(ca) => format!("transport = \"tls\"\nca_file = {ca:?}\n"),
    };
    format!(
        "[[export]]\nkind = \"syslog\"\nname = \"{name}\"\nformat = \"ocsf\"\naddress = \"{address}\"\nbatch_size = 50\n{tls}"
    )
}

/// Each seq once and in order: the deliveries are exactly the log.
fn assert_exactly_once_in_order(delivered: &[u64], log: &[u64]) {
    assert_eq!(delivered, log, "delivered events differ from the log");
}

#[test]
fn syslog_over_tcp_gets_every_event_once_in_order_and_nothing_is_lost_while_it_is_down() {
    let mut rsyslog = Rsyslog::start(None);
    let sink = Sink::start("127.0.0.2:0");
    let daemon =
        TestDaemon::start_with_config(POLICY, "", &syslog_export("siem", &rsyslog.address(), None));

    run_sessions(&daemon, &sink, 3);
    let delivered = wait_for_delivery(&daemon, "steady state", || rsyslog.seqs());
    assert_exactly_once_in_order(&delivered, &all_seqs(&daemon));
    let messages = rsyslog.messages();
    assert!(
        messages.iter().all(|(app, _, _)| app == "sluice"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|(_, msgid, _)| msgid == "session_open"),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|(_, msgid, _)| msgid == "session_close"),
        "{messages:?}"
    );

    // The collector goes away; sessions go on; the exporter notices and holds its cursor.
    rsyslog.stop();
    let before_outage = all_seqs(&daemon).len();
    run_sessions(&daemon, &sink, 3);
    let deadline = Instant::now() + WAIT;
    loop {
        let status = exporter_status(&daemon, "siem");
        if status["last_error"].is_string() && status["lag"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the exporter never reported the outage: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(all_seqs(&daemon).len() >= before_outage + 6);

    rsyslog.launch();
    let delivered = wait_for_delivery(&daemon, "after the restart", || rsyslog.seqs());
    let log = all_seqs(&daemon);
    // No gaps: every event arrived, in order. At least once allows one page sent again
    // if the collector died mid-page; here it stopped between pages, so none was.
    let mut unique = delivered.clone();
    unique.dedup();
    assert_eq!(unique, log, "gaps or reordering across the outage");
    assert!(
        delivered.len() - unique.len() <= 50,
        "more duplicates than one page: {delivered:?}"
    );
    let status = exporter_status(&daemon, "siem");
    assert_eq!(status["lag"], 0, "{status:#}");
    assert_eq!(status["last_error"], Value::Null, "{status:#}");
    assert_eq!(status["cursor"].as_u64(), log.last().copied(), "{status:#}");
}

#[test]
fn syslog_over_tls_gets_every_event_once_in_order() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, certificate, key) = test_pki(pki.path());
    let rsyslog = Rsyslog::start(Some((&ca, &certificate, &key)));
    let sink = Sink::start("127.0.0.2:0");
    let daemon = TestDaemon::start_with_config(
        POLICY,
        "",
        &syslog_export("siem-tls", &rsyslog.address(), Some(&ca)),
    );
    run_sessions(&daemon, &sink, 3);
    let delivered = wait_for_delivery(&daemon, "over TLS", || rsyslog.seqs());
    assert_exactly_once_in_order(&delivered, &all_seqs(&daemon));
}

#[test]
fn syslog_over_tls_refuses_a_collector_it_cannot_verify() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, certificate, key) = test_pki(pki.path());
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = test_pki(other.path());
    let rsyslog = Rsyslog::start(Some((&ca, &certificate, &key)));
    let daemon = TestDaemon::start_with_config(
        POLICY,
        "",
        &syslog_export("untrusted", &rsyslog.address(), Some(&other_ca)),
    );
    let deadline = Instant::now() + WAIT;
    loop {
        let status = exporter_status(&daemon, "untrusted");
        if let Some(error) = status["last_error"].as_str() {
            assert!(error.contains("TLS"), "{status:#}");
            assert_eq!(status["cursor"], 0, "{status:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS error reported: {status:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rsyslog.messages().is_empty(), "{:?}", rsyslog.messages());
}

/// One request the HEC receiver saw, and what it answered.
#[derive(Clone, Debug)]
struct HecRequest {
    path: String,
    authorization: String,
    api_key: String,
    content_type: String,
    body: String,
    answered: u16,
}

/// An HTTPS receiver speaking HEC's protocol: answers 503 to the first `failures`
/// requests, then 200.
struct HecReceiver {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<HecRequest>>>,
}

impl HecReceiver {
    fn start(certificate: &Path, key: &Path, failures: usize) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
            .expect("certificate")
            .collect::<Result<_, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_file(key).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind HEC");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("HEC address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicUsize::new(failures));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let seen = Arc::clone(&seen);
                    let failures = Arc::clone(&failures);
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = service_fn(move |request: Request<Incoming>| {
                            let seen = Arc::clone(&seen);
                            let failures = Arc::clone(&failures);
                            async move {
                                let path = request.uri().path().to_owned();
                                let header = |name: &str| {
                                    request
                                        .headers()
                                        .get(name)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_owned()
                                };
                                let authorization = header("authorization");
                                let api_key = header("x-api-key");
                                let content_type = header("content-type");
                                let body = request
                                    .into_body()
                                    .collect()
                                    .await
                                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                                    .unwrap_or_default();
                                let fail = failures
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok();
                                let (status, answer) = if fail {
                                    (503, r#"{"text":"Server is busy","code":9}"#)
                                } else {
                                    (200, r#"{"text":"Success","code":0}"#)
                                };
                                seen.lock().unwrap().push(HecRequest {
                                    path,
                                    authorization,
                                    api_key,
                                    content_type,
                                    body,
                                    answered: status,
                                });
                                Ok::<_, Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(Bytes::from(answer)))
                                        .expect("response"),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        Self { addr, requests }
    }

    fn requests(&self) -> Vec<HecRequest> {
        self.requests.lock().unwrap().clone()
    }

    /// The envelopes of every accepted request, in order.
    fn accepted_envelopes(&self) -> Vec<Value> {
        self.requests()
            .iter()
            .filter(|request| request.answered == 200)
            .flat_map(|request| envelopes(&request.body))
            .collect()
    }
}

/// A HEC body: JSON envelopes one after the other.
fn envelopes(body: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("HEC body is not concatenated JSON ({e}): {body}"))
}

#[test]
fn hec_gets_batches_with_the_token_and_every_event_in_order_after_503s() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, certificate, key) = test_pki(pki.path());
    let hec = HecReceiver::start(&certificate, &key, 3);
    let sink = Sink::start("127.0.0.2:0");
    let config = format!(
        "[[export]]\nkind = \"hec\"\nname = \"splunk\"\nformat = \"ocsf\"\nurl = \"https://127.0.0.1:{port}\"\n\
         token_credential = \"splunk-hec\"\nca_file = {ca:?}\nbatch_size = 100\nbatch_interval_ms = 1000\n",
        port = hec.addr.port(),
    );
    let daemon = TestDaemon::start_with_config(
        POLICY,
        "[splunk-hec]\nuser = \"hec\"\npassword = \"00000000-1111-2222-3333-444444444444\"\n",
        &config,
    );
    run_sessions(&daemon, &sink, 4);
    let delivered = wait_for_delivery(&daemon, "HEC", || {
        hec.accepted_envelopes()
            .iter()
            .map(|envelope| {
                envelope["event"]["metadata"]["sequence"]
                    .as_u64()
                    .expect("sequence")
            })
            .collect()
    });
    assert_exactly_once_in_order(&delivered, &all_seqs(&daemon));

    let requests = hec.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.path == "/services/collector/event"),
        "{requests:#?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.authorization == "Splunk 00000000-1111-2222-3333-444444444444"),
        "{requests:#?}"
    );
    // Three 503s, each followed by the same page again: retried whole, not reordered.
    assert_eq!(
        requests[..3].iter().map(|r| r.answered).collect::<Vec<_>>(),
        [503; 3]
    );
    assert_eq!(requests[3].answered, 200);
    for failed in &requests[..3] {
        assert_eq!(failed.body, requests[3].body);
    }
    assert!(
        requests
            .iter()
            .any(|r| r.answered == 200 && envelopes(&r.body).len() > 1),
        "no batch held more than one event: {requests:#?}"
    );
    for envelope in hec.accepted_envelopes() {
        assert!(
            envelope["time"].as_f64().is_some_and(|t| t > 1.6e9),
            "{envelope}"
        );
        assert!(!text(&envelope, "host").is_empty(), "{envelope}");
        assert_eq!(envelope["source"], "sluice");
        assert_eq!(envelope["sourcetype"], "sluice:ocsf");
        assert!(envelope["event"]["class_uid"].is_u64(), "{envelope}");
    }
    let status = exporter_status(&daemon, "splunk");
    assert_eq!(status["lag"], 0, "{status:#}");
}

/// The required fields of OCSF's base event and of classes 4001 and 6005.
fn assert_ocsf_event(event: &Value) {
    for field in [
        "activity_id",
        "category_uid",
        "class_uid",
        "type_uid",
        "severity_id",
        "time",
    ] {
        assert!(event[field].is_u64(), "{field} in {event:#}");
    }
    assert_eq!(
        event["type_uid"].as_u64(),
        Some(
            event["class_uid"].as_u64().unwrap_or(0) * 100
                + event["activity_id"].as_u64().unwrap_or(0)
        )
    );
    for field in ["name", "vendor_name", "version"] {
        assert!(event["metadata"]["product"][field].is_string(), "{event:#}");
    }
    assert!(event["metadata"]["version"].is_string(), "{event:#}");
    match event["class_uid"].as_u64() {
        Some(6005) => {
            assert!(event["actor"]["process"]["pid"].is_u64(), "{event:#}");
            assert!(event["src_endpoint"]["ip"].is_string(), "{event:#}");
            assert!(event["query_info"]["query_string"].is_string(), "{event:#}");
            assert_eq!(event["database"]["type_id"], 1, "{event:#}");
        }
        Some(4001) => {
            assert!(event["src_endpoint"]["port"].is_u64(), "{event:#}");
            assert!(event["dst_endpoint"]["ip"].is_string(), "{event:#}");
            assert_eq!(event["connection_info"]["direction_id"], 2, "{event:#}");
        }
        _ => {}
    }
}

#[test]
fn sluice_export_prints_a_postgres_session_in_every_format() {
    const AGENT: &str = "analyst";
    const PASSWORD: &str = "analyst-secret";
    let pg = PgServer::start();
    pg.create_role(AGENT, PASSWORD);
    let daemon = TestDaemon::start(&pg.policy(&[AGENT], &[Rule::allow(AGENT, &["*"])]));
    let output = PgCommand::agent(&daemon, AGENT, "psql")
        .password(PASSWORD)
        .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2"])
        .arg(pg.conninfo(AGENT, "postgres"))
        .output();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "42\n");
    let sessions = daemon.wait_for_sessions(Some(AGENT), "the psql session", |sessions| {
        sessions.iter().any(|s| text(s, "state") == "closed")
    });
    let session_number = sessions[0]["id"].as_u64().expect("session id");
    let session_id = session_number.to_string();
    let session = ["--session", session_id.as_str()];

    // jsonl: the stored events, parsed back, all of this session, chained in seq order.
    let stored: Vec<Value> = export(&daemon, "jsonl", &session)
        .iter()
        .map(|line| serde_json::from_str(line).expect("jsonl parses"))
        .collect();
    let types: Vec<&str> = stored
        .iter()
        .map(|e| text(&e["event"]["activity"], "type"))
        .collect();
    assert_eq!(types.first(), Some(&"session_open"), "{types:?}");
    assert_eq!(types.last(), Some(&"session_close"), "{types:?}");
    assert!(
        types.contains(&"statement") && types.contains(&"statement_result"),
        "{types:?}"
    );
    assert!(
        stored
            .iter()
            .all(|e| e["event"]["context"]["session_id"].as_u64() == Some(session_number))
    );
    assert!(
        stored
            .windows(2)
            .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64())
    );

    // OCSF: network activity for the connection, datastore activity for the query.
    let ocsf: Vec<Value> = export(&daemon, "ocsf", &session)
        .iter()
        .map(|line| serde_json::from_str(line).expect("OCSF parses"))
        .collect();
    assert_eq!(ocsf.len(), stored.len());
    for event in &ocsf {
        assert_ocsf_event(event);
    }
    let classes: BTreeSet<u64> = ocsf
        .iter()
        .filter_map(|e| e["class_uid"].as_u64())
        .collect();
    assert_eq!(classes, BTreeSet::from([4001, 6005]));
    let query = ocsf
        .iter()
        .find(|e| {
            e["type_uid"] == 600504 && text(&e["query_info"], "query_string").contains("SELECT")
        })
        .expect("a Datastore Activity: Query event");
    assert_eq!(query["actor"]["process"]["name"], "psql", "{query:#}");
    assert_eq!(
        query["dst_endpoint"]["port"].as_u64(),
        Some(u64::from(pg.port()))
    );

    // ECS and CEF: one line per event, the right shapes.
    let ecs = export(&daemon, "ecs", &session);
    assert_eq!(ecs.len(), stored.len());
    for line in &ecs {
        let document: Value = serde_json::from_str(line).expect("ECS parses");
        assert!(document["@timestamp"].is_string() && document["event"]["kind"] == "event");
        assert_eq!(document["process"]["name"], "psql");
    }
    let cef = export(&daemon, "cef", &session);
    assert_eq!(cef.len(), stored.len());
    for (line, event) in cef.iter().zip(&stored) {
        let header: Vec<&str> = line.splitn(8, '|').collect();
        assert_eq!(header.len(), 8, "{line}");
        assert_eq!(&header[..3], ["CEF:0", "sluice", "sluice"]);
        assert_eq!(header[4], text(&event["event"]["activity"], "type"));
        assert!(header[6].parse::<u8>().is_ok_and(|s| s <= 10), "{line}");
        assert!(
            header[7].contains(&format!("externalId={}", event["seq"])),
            "{line}"
        );
    }

    // --since in the future: nothing; a session that does not exist: nothing.
    assert!(export(&daemon, "jsonl", &["--since", "2999-01-01T00:00:00Z"]).is_empty());
    assert!(export(&daemon, "jsonl", &["--session", "999999"]).is_empty());
    let bad = daemon.sluice(&["export", "--format", "jsonl", "--since", "yesterday"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("RFC 3339"));
}

#[test]
fn a_webhook_gets_ndjson_pages_with_its_headers_and_retries_until_accepted() {
    let pki = tempfile::tempdir().expect("tempdir");
    let (ca, certificate, key) = test_pki(pki.path());
    let receiver = HecReceiver::start(&certificate, &key, 2);
    let sink = Sink::start("127.0.0.2:0");
    let config = format!(
        "[[export]]\nkind = \"webhook\"\nname = \"hook\"\nformat = \"jsonl\"\nurl = \"https://127.0.0.1:{port}/ingest?source=sluice\"\n\
         ca_file = {ca:?}\nsecret_header = \"x-api-key\"\nsecret_credential = \"hook-key\"\nheaders = {{ x-tenant = \"t1\" }}\n",
        port = receiver.addr.port(),
    );
    let daemon = TestDaemon::start_with_config(
        POLICY,
        "[hook-key]\nuser = \"-\"\npassword = \"key-123\"\n",
        &config,
    );
    run_sessions(&daemon, &sink, 2);
    let accepted = || -> Vec<u64> {
        receiver
            .requests()
            .iter()
            .filter(|r| r.answered == 200)
            .flat_map(|r| r.body.lines().map(str::to_owned).collect::<Vec<_>>())
            .map(|line| {
                let event: Value = serde_json::from_str(&line).expect("NDJSON line");
                event["seq"].as_u64().expect("seq")
            })
            .collect()
    };
    let delivered = wait_for_delivery(&daemon, "webhook", accepted);
    assert_exactly_once_in_order(&delivered, &all_seqs(&daemon));
    let requests = receiver.requests();
    assert_eq!(requests[0].answered, 503);
    assert_eq!(requests[1].answered, 503);
    for request in &requests {
        assert_eq!(request.path, "/ingest");
        assert_eq!(request.api_key, "key-123");
        assert_eq!(request.content_type, "application/x-ndjson");
    }
}

/// The seqs in a rotated set of jsonl files, oldest file first.
fn rotated_seqs(path: &Path) -> Vec<u64> {
    let mut files: Vec<PathBuf> = (1..=50)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .filter(|file| file.exists())
        .collect();
    files.push(path.to_owned());
    files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            assert!(text.len() <= 4096, "{} outgrew max_bytes", file.display());
            text.lines()
                .map(|line| {
                    let event: Value = serde_json::from_str(line).expect("jsonl line");
                    event["seq"].as_u64().expect("seq")
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_file_exporter_rotates_and_resumes_from_its_cursor_after_the_daemon_is_killed() {
    let out = tempfile::tempdir().expect("tempdir");
    let path = out.path().join("events.jsonl");
    let config = format!(
        "[[export]]\nkind = \"file\"\nname = \"archive\"\nformat = \"jsonl\"\npath = {path:?}\nmax_bytes = 4096\nkeep = 50\n"
    );
    let sink = Sink::start("127.0.0.2:0");
    let mut daemon = TestDaemon::start_with_config(POLICY, "", &config);
    run_sessions(&daemon, &sink, 4);
    let delivered = wait_for_delivery(&daemon, "file", || rotated_seqs(&path));
    assert_exactly_once_in_order(&delivered, &all_seqs(&daemon));
    assert!(
        out.path().join("events.jsonl.1").exists(),
        "no rotation happened"
    );

    // A crash: the daemon is killed, started again, and more sessions happen.
    daemon.kill();
    daemon.restart();
    run_sessions(&daemon, &sink, 2);
    let delivered = wait_for_delivery(&daemon, "file after a crash", || rotated_seqs(&path));
    let mut unique = delivered.clone();
    unique.dedup();
    assert_eq!(
        unique,
        all_seqs(&daemon),
        "gaps or reordering across the crash"
    );
    // The cursor was persisted after each acknowledged page: the restart resent nothing
    // (at most one page could have been in flight when it was killed; none was).
    assert_eq!(delivered, unique);
}
