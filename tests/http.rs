//! HTTP(S) through sluice with real clients and a real nginx: TLS interception with the
//! local CA (agents trust it through the bundle `sluice run` hands them, nothing else
//! reconfigured), per-request policy, credential injection with scrubbing, masking,
//! hostile requests, and the records — with nginx's access log as the witness of what
//! the upstream really received.

use std::{
    io::Read as _,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    http::{
        API_NAME, HOST, Nginx, OTHER_NAME, PYTHON, TOKEN, curl, daemon, policy, wait_for_requests,
    },
    slowdown, sluice_bin, text,
};

const READ_ALL: &str = r#"
[[rule]]
name = "read-api"
agent = "ci-bot"
resource = "*"
operations = ["read"]
action = "allow"
"#;

fn record_for<'a>(records: &'a [Value], needle: &str) -> &'a Value {
    records
        .iter()
        .find(|record| text(record, "sql").contains(needle))
        .unwrap_or_else(|| panic!("no record for {needle}: {records:#?}"))
}

#[test]
fn curl_over_https_gets_the_injected_token_used_but_never_sees_it() {
    let nginx = Nginx::start();
    let daemon = daemon(&policy(&nginx, None, READ_ALL));
    for version in ["--http1.1", "--http2"] {
        let (ok, body, stderr) = curl(
            &daemon,
            None,
            &[
                version,
                "-i",
                "-H",
                "Authorization: Bearer agent-own-token",
                "--resolve",
                &nginx.resolve(API_NAME),
                &nginx.url(API_NAME, "/echo"),
            ],
        );
        assert!(ok, "curl {version} failed: {stderr}\n{}", daemon.log());
        assert!(
            body.contains("authorization=Bearer [sluice:scrubbed]"),
            "{body}"
        );
        assert!(
            body.to_ascii_lowercase()
                .contains("x-echo-authorization: bearer [sluice:scrubbed]"),
            "{body}"
        );
        assert!(!body.contains(TOKEN), "the token reached the agent: {body}");
        assert!(!body.contains("agent-own-token"), "{body}");
    }
    // nginx received the real token, never the agent's own, over both protocols.
    let log = nginx.access_log_of(2);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert!(
        log.iter()
            .all(|line| line.contains(&format!("auth=\"Bearer {TOKEN}\""))),
        "{log:#?}"
    );
    assert!(log[0].contains("proto=HTTP/1.1"), "{log:#?}");
    assert!(log[1].contains("proto=HTTP/2.0"), "{log:#?}");

    let records = wait_for_requests(&daemon, nginx.tls_port, |records| records.len() >= 2);
    let echo = record_for(&records, "GET api.test/echo");
    assert_eq!(text(echo, "operation"), "read");
    assert_eq!(text(echo, "tag"), "200");
    assert_eq!(echo["decision"]["rule"], "read-api");
    assert_eq!(echo["tables"][0], "api.test");
    let parameters = echo["parameters"].to_string();
    assert!(parameters.contains("credential=api-token"), "{parameters}");
    assert!(parameters.contains("header=authorization"), "{parameters}");
    assert!(
        echo["masked"]["scrubbed"].as_u64().unwrap_or(0) >= 2,
        "{echo:#}"
    );

    // Nothing secret in the store's records or the daemon's log.
    assert!(!serde_json::to_string(&records).unwrap().contains(TOKEN));
    assert!(!daemon.log().contains(TOKEN), "token in the daemon log");
    // Nor anywhere in the state directory's files (the store, the event log), read raw.
    let state = daemon_config(&daemon).with_file_name("state");
    let mut pending = vec![state];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("state dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                assert!(
                    !bytes
                        .windows(TOKEN.len())
                        .any(|window| window == TOKEN.as_bytes()),
                    "the token is in {}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn each_request_is_judged_a_denied_delete_gets_403_and_the_connection_stays_usable() {
    let nginx = Nginx::start();
    let rules = format!(
        r#"{READ_ALL}
[[rule]]
name = "comment-only"
agent = "ci-bot"
resource = "api"
operations = ["write"]
http = {{ methods = ["POST"], paths = ["/api/repos/acme/*/issues/*/comments"] }}
action = "allow"
"#
    );
    let daemon = daemon(&policy(&nginx, None, &rules));
    let resolve = nginx.resolve(API_NAME);
    // One curl, one kept-alive connection: DELETE, then GET, then two POSTs.
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "--http1.1",
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code} %{num_connects}\n",
            "-X",
            "DELETE",
            &nginx.url(API_NAME, "/api/repos/acme/api"),
            "--next",
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code} %{num_connects}\n",
            &nginx.url(API_NAME, "/api/repos/acme/api"),
            "--next",
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code} %{num_connects}\n",
            "-d",
            "{}",
            &nginx.url(API_NAME, "/api/repos/acme/api/issues/7/comments"),
            "--next",
            "--resolve",
            &resolve,
            "-w",
            "\n%{http_code} %{num_connects}\n",
            "-d",
            "{}",
            &nginx.url(API_NAME, "/api/repos/acme/api/labels"),
        ],
    );
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = body.lines().collect();
    // 403 with a JSON body naming the rule (no rule: the default deny).
    let denial: Value = serde_json::from_str(lines[0]).expect("JSON denial");
    assert_eq!(denial["rule"], "default-deny", "{denial}");
    assert_eq!(lines[1], "403 1", "{body}");
    assert!(lines[2].contains("\"method\":\"GET\""), "{body}");
    assert_eq!(lines[3], "200 0", "the connection was reused: {body}");
    assert_eq!(lines[5], "200 0", "{body}");
    let narrowed: Value = serde_json::from_str(lines[6]).expect("JSON denial");
    assert!(text(&narrowed, "reason").contains("write"), "{narrowed}");
    assert_eq!(lines[7], "403 0", "{body}");

    let log = nginx.access_log_of(2);
    assert_eq!(
        log.len(),
        2,
        "only the allowed requests reached nginx: {log:#?}"
    );
    assert!(
        log[0].starts_with("GET /api/repos/acme/api 200"),
        "{log:#?}"
    );
    assert!(
        log[1].starts_with("POST /api/repos/acme/api/issues/7/comments 200"),
        "{log:#?}"
    );

    let records = wait_for_requests(&daemon, nginx.tls_port, |records| records.len() >= 4);
    let delete = record_for(&records, "DELETE api.test/api/repos/acme/api");
    assert_eq!(text(delete, "operation"), "dangerous");
    assert_eq!(delete["decision"]["action"], "deny");
    assert_eq!(text(delete, "tag"), "403");
    let post = record_for(
        &records,
        "POST api.test/api/repos/acme/api/issues/7/comments",
    );
    assert_eq!(post["decision"]["rule"], "comment-only");
    assert_eq!(text(post, "tag"), "200");

    // `policy explain --http` decides as the proxy did, path normalisation included.
    for (request, rule) in [
        ("DELETE https://api.test/api/repos/acme/api", "default-deny"),
        (
            "POST https://api.test/api/repos/acme/x/issues/1/comments",
            "comment-only",
        ),
        ("GET /api/repos/acme/api/../other", "read-api"),
    ] {
        let output = daemon.sluice(&[
            "policy",
            "explain",
            "--agent",
            "ci-bot",
            "--resource",
            "api",
            "--http",
            request,
            "--json",
        ]);
        assert!(output.status.success(), "{output:?}");
        let explained: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        assert_eq!(
            explained["decision"]["rule"], rule,
            "{request}: {explained:#}"
        );
    }
    let narrowed = daemon.sluice(&[
        "policy",
        "explain",
        "--agent",
        "ci-bot",
        "--resource",
        "api",
        "--http",
        "POST https://api.test/api/repos/acme/api/labels",
        "--json",
    ]);
    let explained: Value = serde_json::from_slice(&narrowed.stdout).expect("JSON");
    assert_eq!(explained["decision"]["action"], "deny", "{explained:#}");
}

#[test]
fn connect_through_https_proxy_opens_a_judged_and_intercepted_tunnel() {
    let nginx = Nginx::start();
    let proxy = r#"
[[resource]]
name = "egress-proxy"
addresses = ["127.0.0.3"]
ports = [3128]
protocol = "http"

[[rule]]
agent = "ci-bot"
resource = "egress-proxy"
operations = ["connect"]
action = "allow"

[[rule]]
agent = "ci-bot"
resource = "api"
operations = ["read"]
action = "allow"
"#;
    let daemon = daemon(&policy(&nginx, None, proxy));
    let url = nginx.url(HOST, "/echo");
    let output = daemon.run_agent(
        "ci-bot",
        "env",
        &[
            "HTTPS_PROXY=http://127.0.0.3:3128",
            "curl",
            "-sS",
            "--max-time",
            "60",
            &url,
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout} {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log()
    );
    // Intercepted inside the tunnel: the token was injected and scrubbed on the way back.
    assert!(
        stdout.contains("authorization=Bearer [sluice:scrubbed]"),
        "{stdout}"
    );
    let log = nginx.access_log_of(1);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert!(
        log[0].contains(&format!("auth=\"Bearer {TOKEN}\"")),
        "{log:#?}"
    );
    // The tunnel is a session of its own, linked to the proxy connection.
    let tunnel = daemon.closed_session("ci-bot", &format!("{HOST}:{}", nginx.tls_port));
    assert!(tunnel["parent_session"].as_u64().is_some(), "{tunnel:#}");
    let parent = daemon.closed_session("ci-bot", "127.0.0.3:3128");
    assert!(
        text(&parent, "close_reason").starts_with("http_connect: tunnel session"),
        "{parent:#}"
    );

    // CONNECT to a destination no rule allows is refused with 403.
    let output = daemon.run_agent(
        "ci-bot",
        "env",
        &[
            "HTTPS_PROXY=http://127.0.0.3:3128",
            "curl",
            "-sS",
            "--max-time",
            "20",
            "https://127.0.0.9:4443/",
        ],
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("403"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_held_post_goes_upstream_only_once_approved() {
    let nginx = Nginx::start();
    let rules = format!(
        r#"{READ_ALL}
[[rule]]
name = "writes-need-a-human"
agent = "ci-bot"
resource = "api"
operations = ["write"]
action = "review"
timeout = "60s"
"#
    );
    let daemon = daemon(&policy(&nginx, None, &rules));
    let mut agent = std::process::Command::new(sluice_bin())
        .arg("--config")
        .arg(daemon_config(&daemon))
        .args([
            "run", "--agent", "ci-bot", "--user", "nobody", "--", "curl", "-sS",
        ])
        .args([
            "--resolve",
            &nginx.resolve(API_NAME),
            "-d",
            "{\"title\":\"x\"}",
        ])
        .arg(nginx.url(API_NAME, "/api/repos/acme/api/issues"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start curl");
    let hold = daemon.wait_for_hold(Duration::from_secs(30) * slowdown(), |hold| {
        hold["sql"]
            .as_str()
            .is_some_and(|sql| sql.contains("POST api.test/api/repos/acme/api/issues"))
    });
    assert!(
        nginx.access_log().is_empty(),
        "nothing went upstream while held"
    );
    let id = hold["id"].as_u64().expect("hold id").to_string();
    let approved = daemon.sluice(&["approve", &id, "--reason", "ticket OPS-7"]);
    assert!(approved.status.success(), "{approved:?}");
    let status = wait_child(&mut agent);
    let mut out = String::new();
    agent
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(status.success(), "{out}");
    assert!(out.contains("\"method\":\"POST\""), "{out}");
    let log = nginx.access_log_of(1);
    assert!(
        log[0].starts_with("POST /api/repos/acme/api/issues 200"),
        "{log:#?}"
    );
    let records = wait_for_requests(&daemon, nginx.tls_port, |records| !records.is_empty());
    let post = record_for(&records, "POST api.test/api/repos/acme/api/issues");
    assert_eq!(post["approval"]["outcome"], "approved");
    assert_eq!(post["approval"]["reason"], "ticket OPS-7");
}

#[test]
fn host_and_sni_must_agree_and_redirects_are_not_followed() {
    let nginx = Nginx::start();
    let daemon = daemon(&policy(&nginx, None, READ_ALL));
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "--resolve",
            &nginx.resolve(API_NAME),
            "-H",
            &format!("Host: {OTHER_NAME}"),
            "-w",
            "\n%{http_code}",
            &nginx.url(API_NAME, "/api/x"),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(body.ends_with("421"), "{body}");
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "--resolve",
            &nginx.resolve(API_NAME),
            "-w",
            "\n%{http_code} %{redirect_url}",
            &nginx.url(API_NAME, "/redirect"),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(body.contains("302 https://other.test"), "{body}");
    let log = nginx.access_log_of(1);
    assert_eq!(log.len(), 1, "{log:#?}");
    assert!(log[0].starts_with("GET /redirect 302"), "{log:#?}");
}

#[test]
fn a_client_that_does_not_trust_the_sluice_ca_is_recorded_as_such() {
    let nginx = Nginx::start();
    let daemon = daemon(&policy(&nginx, None, READ_ALL));
    // curl told to trust only nginx's own CA refuses sluice's certificate.
    let ca = nginx.ca_file.display().to_string();
    let (ok, _, stderr) = curl(
        &daemon,
        None,
        &[
            "--cacert",
            &ca,
            "--resolve",
            &nginx.resolve(API_NAME),
            &nginx.url(API_NAME, "/api/x"),
        ],
    );
    assert!(
        !ok,
        "curl accepted sluice's certificate with only nginx's CA"
    );
    assert!(stderr.contains("certificate"), "{stderr}");
    let session = daemon.closed_session("ci-bot", &format!("{HOST}:{}", nginx.tls_port));
    assert!(
        text(&session, "close_reason").contains("client does not trust the sluice CA"),
        "{session:#}"
    );
    assert!(daemon.log().contains("client does not trust the sluice CA"));
    assert!(nginx.access_log().is_empty());
}

#[test]
fn passthrough_only_where_the_resource_says_so() {
    let nginx = Nginx::start();
    let daemon = daemon(&policy(
        &nginx,
        Some("tls = { mode = \"passthrough\" }"),
        &format!("{READ_ALL}\n"),
    ));
    // The agent sees nginx's own certificate: it trusts nginx's CA and nothing else.
    let ca = nginx.ca_file.display().to_string();
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "--cacert",
            &ca,
            "--resolve",
            &nginx.resolve(API_NAME),
            &nginx.url(API_NAME, "/api/x"),
        ],
    );
    assert!(ok, "{stderr}\n{}", daemon.log());
    assert!(body.contains("\"method\":\"GET\""), "{body}");
    // No injection without interception.
    let log = nginx.access_log_of(1);
    assert!(
        log.first().is_some_and(|line| line.contains("auth=\"-\"")),
        "{log:?}"
    );
    let session = daemon.closed_session("ci-bot", &format!("{HOST}:{}", nginx.tls_port));
    assert!(
        text(&session, "close_reason").starts_with("tls_passthrough"),
        "{session:#}"
    );
}

#[test]
fn hostile_paths_and_method_overrides_are_judged_as_what_they_are() {
    let nginx = Nginx::start();
    let rules = r#"
[[rule]]
name = "public-reads"
agent = "ci-bot"
resource = "*"
operations = ["read"]
http = { paths = ["/api/public/**"] }
action = "allow"

[[rule]]
name = "public-writes"
agent = "ci-bot"
resource = "*"
operations = ["write"]
http = { paths = ["/api/public/**"] }
action = "allow"
"#;
    let daemon = daemon(&policy(&nginx, None, rules));
    let resolve = nginx.resolve(API_NAME);
    let status_of = |extra: &[&str], path: &str| -> String {
        let url = nginx.url(API_NAME, path);
        let mut args = vec![
            "--path-as-is",
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        let (ok, body, stderr) = curl(&daemon, None, &args);
        assert!(ok, "{stderr}");
        body
    };
    assert_eq!(status_of(&[], "/api/public/a"), "200");
    // Dot-segments resolve before matching: this is /api/private.
    assert_eq!(status_of(&[], "/api/public/../private"), "403");
    // Percent-decoded unreserved characters and merged slashes: /api/private again.
    assert_eq!(status_of(&[], "/api//%70rivate"), "403");
    // Ambiguous: an encoded slash or dot, or climbing above the root.
    assert_eq!(status_of(&[], "/api/public%2f..%2fprivate"), "400");
    assert_eq!(status_of(&[], "/api/public/%2e%2e/private"), "400");
    assert_eq!(status_of(&[], "/../api/public/a"), "400");
    // A POST that says it is a DELETE is judged as a DELETE (dangerous: no rule).
    assert_eq!(
        status_of(
            &["-X", "POST", "-H", "X-HTTP-Method-Override: DELETE"],
            "/api/public/a"
        ),
        "403"
    );
    assert_eq!(
        status_of(&["-d", "_method=DELETE&x=1"], "/api/public/a"),
        "403"
    );
    assert_eq!(status_of(&["-d", "x=1"], "/api/public/a"), "200");
    // TRACE is dangerous.
    assert_eq!(status_of(&["-X", "TRACE"], "/api/public/a"), "403");

    let log = nginx.access_log_of(2);
    assert_eq!(
        log.len(),
        2,
        "only the two allowed requests reached nginx: {log:#?}"
    );
    assert!(
        log.iter().all(|line| line.contains("/api/public/a 200")),
        "{log:#?}"
    );
}

#[test]
fn malformed_requests_get_400_and_the_daemon_keeps_serving() {
    let nginx = Nginx::start();
    let writes = r#"
[[rule]]
agent = "ci-bot"
resource = "api-plain"
operations = ["write"]
action = "allow"
"#;
    let daemon = daemon(&policy(&nginx, None, &format!("{READ_ALL}{writes}")));
    let port = nginx.plain_port.to_string();
    // Raw bytes from a real agent process (python's socket), each on a new connection.
    let script = r#"
import socket, sys, json
host, port = sys.argv[1], int(sys.argv[2])
cases = {
  "cl_and_te": b"POST /api/a HTTP/1.1\r\nHost: H\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "two_cl": b"POST /api/a HTTP/1.1\r\nHost: H\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
  "same_cl_twice": b"POST /api/a HTTP/1.1\r\nHost: H\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
  "obs_fold": b"GET /api/a HTTP/1.1\r\nHost: H\r\nX-A: 1\r\n  folded\r\n\r\n",
  "bare_cr": b"GET /api/a HTTP/1.1\r\nHost: H\rX-A: 1\r\n\r\n",
  "bad_chunk": b"POST /api/a HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
  "garbage": b"\x00\x01\x02 not http\r\n\r\n",
  "ok": b"GET /api/a HTTP/1.1\r\nHost: H\r\nConnection: close\r\n\r\n",
}
out = {}
for name, data in cases.items():
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(data.replace(b"Host: H", b"Host: " + host.encode()))
    got = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk: break
            got += chunk
            if b"\r\n\r\n" in got and name != "ok": break
    except Exception as e:
        pass
    s.close()
    out[name] = got.split(b"\r\n", 1)[0].decode("latin-1")
print(json.dumps(out))
"#;
    let output = daemon.run_agent("ci-bot", PYTHON, &["-c", script, HOST, &port]);
    assert!(output.status.success(), "{output:?}");
    let statuses: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for case in [
        "cl_and_te",
        "two_cl",
        "same_cl_twice",
        "obs_fold",
        "bare_cr",
        "bad_chunk",
    ] {
        let line = text(&statuses, case);
        assert!(
            line.starts_with("HTTP/1.1 400"),
            "{case}: {line:?}\n{statuses:#}"
        );
    }
    assert_eq!(
        text(&statuses, "garbage"),
        "",
        "not HTTP: refused without an answer"
    );
    assert!(
        text(&statuses, "ok").starts_with("HTTP/1.1 200"),
        "{statuses:#}"
    );
    let log = nginx.access_log_of(1);
    assert_eq!(
        log.len(),
        1,
        "only the well-formed request reached nginx: {log:#?}"
    );
}

#[test]
fn masked_json_and_h2_multiplexed_requests_each_judged() {
    let nginx = Nginx::start();
    let rules = r#"
[[mask]]
name = "pii"
[[mask.rule]]
column = "email"
strategy = "redact"
[[mask.rule]]
detectors = ["credit_card"]
strategy = "redact"

[[rule]]
name = "users-masked"
agent = "ci-bot"
resource = "*"
operations = ["read"]
http = { paths = ["/users.json", "/api/**"] }
mask = "pii"
action = "allow"
"#;
    let daemon = daemon(&policy(&nginx, None, rules));
    let resolve = nginx.resolve(API_NAME);
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &["--resolve", &resolve, &nginx.url(API_NAME, "/users.json")],
    );
    assert!(ok, "{stderr}\n{}", daemon.log());
    let users: Value = serde_json::from_str(&body).expect("JSON");
    let ada = &users["users"][0];
    assert_eq!(ada["name"], "Ada");
    assert_ne!(ada["email"], "ada@example.com", "{body}");
    assert!(!body.contains("4111 1111 1111 1111"), "{body}");
    assert!(!body.contains("bob@example.org"), "{body}");

    // Three requests multiplexed on one h2 connection, each judged on its own.
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "--http2",
            "-Z",
            "--resolve",
            &resolve,
            "-w",
            "%{http_code} %{url_effective}\n",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            &nginx.url(API_NAME, "/api/one"),
            &nginx.url(API_NAME, "/hello.txt"),
            &nginx.url(API_NAME, "/api/two"),
        ],
    );
    assert!(ok, "{stderr}");
    let mut lines: Vec<&str> = body.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "{body}");
    assert!(
        lines[0].starts_with("200 ") && lines[1].starts_with("200 "),
        "{body}"
    );
    assert!(
        lines[2].starts_with("403 ") && lines[2].ends_with("/hello.txt"),
        "{body}"
    );
    let records = wait_for_requests(&daemon, nginx.tls_port, |records| records.len() >= 4);
    let users = record_for(&records, "GET api.test/users.json");
    assert!(
        users["masked"]["email"].as_u64().unwrap_or(0) == 2,
        "{users:#}"
    );
    let log = nginx.access_log_of(2);
    assert!(
        log.iter()
            .filter(|line| line.contains("proto=HTTP/2.0"))
            .count()
            >= 2,
        "{log:#?}"
    );
    assert!(
        !log.iter().any(|line| line.contains("hello.txt")),
        "{log:#?}"
    );
}

#[test]
fn a_large_download_streams_with_bounded_daemon_memory() {
    // 128 MiB, not the 1 GiB of the issue: the tests run the debug build, which on a
    // loaded 2-core machine moved these 128 MiB in ~20 s (1 GiB would take ~3 min, far
    // over the suite's budget). Still far more than the daemon's memory may grow by;
    // release throughput is in BENCHMARKS.md (HTTPS).
    const SIZE: u64 = 128 * 1024 * 1024;
    let nginx = Nginx::with_big_file(SIZE);
    let daemon = daemon(&policy(&nginx, None, READ_ALL));
    let pid = daemon_pid(&daemon);
    let before = sluice_tests::memory_kib(pid, "VmRSS:");
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "--max-time",
            "600",
            "--resolve",
            &nginx.resolve(API_NAME),
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            &nginx.url(API_NAME, "/big.bin"),
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(body, SIZE.to_string());
    let peak = sluice_tests::memory_kib(pid, "VmHWM:");
    assert!(
        peak < before + 48 * 1024,
        "the daemon grew from {before} KiB to a peak of {peak} KiB while streaming {SIZE} bytes"
    );
    let records = wait_for_requests(&daemon, nginx.tls_port, |records| !records.is_empty());
    let big = record_for(&records, "GET api.test/big.bin");
    assert!(
        big["parameters"]
            .to_string()
            .contains(&format!("bytes_down={SIZE}")),
        "{big:#}"
    );
}

#[test]
fn python_requests_and_httpx_work_without_reconfiguration() {
    let nginx = Nginx::start();
    let daemon = daemon(&policy(&nginx, None, READ_ALL));
    let url = nginx.url(HOST, "/api/py");
    let script = "import sys, requests, httpx\n\
        r = requests.get(sys.argv[1]); print(r.status_code, r.text)\n\
        x = httpx.get(sys.argv[1]); print(x.status_code, x.text)\n";
    let output = daemon.run_agent("ci-bot", PYTHON, &["-c", script, &url]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log()
    );
    assert_eq!(
        stdout.matches("200 {\"method\":\"GET\"").count(),
        2,
        "{stdout}"
    );
    let node = daemon.run_agent(
        "ci-bot",
        "node",
        &[
            "-e",
            &format!("fetch({url:?}).then(r => r.text().then(t => console.log(r.status, t)))"),
        ],
    );
    let stdout = String::from_utf8_lossy(&node.stdout);
    assert!(
        node.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&node.stderr)
    );
    assert!(stdout.starts_with("200 {\"method\":\"GET\""), "{stdout}");
    assert_eq!(nginx.access_log_of(3).len(), 3);
}

fn daemon_config(daemon: &TestDaemon) -> std::path::PathBuf {
    daemon
        .control_socket
        .parent()
        .expect("daemon dir")
        .join("sluice.toml")
}

fn wait_child(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the agent did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn daemon_pid(daemon: &TestDaemon) -> u32 {
    // The daemon is the process whose command line names this test's config.
    let config = daemon_config(daemon).display().to_string();
    for entry in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&config) && cmdline.ends_with(" daemon ") {
            return pid;
        }
    }
    panic!("no daemon process for {config}");
}

#[test]
fn server_sent_events_arrive_unbuffered_and_websockets_are_relayed() {
    let nginx = Nginx::start();
    let server = sluice_tests::http::TestServer::start();
    let events = format!(
        r#"
[[resource]]
name = "events"
addresses = ["{HOST}"]
ports = [{port}]
protocol = "http"
"#,
        port = server.port
    );
    let daemon = daemon(&policy(&nginx, None, &format!("{events}{READ_ALL}")));
    let config = daemon_config(&daemon);
    let mut agent = std::process::Command::new(sluice_bin())
        .arg("--config")
        .arg(&config)
        .args([
            "run",
            "--agent",
            "ci-bot",
            "--",
            "curl",
            "-sS",
            "-N",
            "--max-time",
            "60",
        ])
        .arg(format!("http://{HOST}:{}/sse", server.port))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start curl");
    let stdout = agent.stdout.take().expect("stdout");
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The second event is only sent once the first reached the agent: a buffering
    // proxy would never deliver the first.
    let first = received
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("the first event never reached the agent:\n{}", daemon.log()));
    assert_eq!(first, "data: one");
    server.release();
    let rest: Vec<String> = received.iter().collect();
    assert!(rest.contains(&"data: two".to_owned()), "{rest:?}");
    assert!(wait_child(&mut agent).success());

    // A WebSocket upgrade is judged (GET: read) and then relayed both ways.
    let script = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)
s.sendall(b"GET /ws HTTP/1.1\r\nHost: " + sys.argv[1].encode() + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1024)
print(head.split(b"\r\n")[0].decode())
s.sendall(b"ping over the upgrade")
got = b""
while len(got) < 21:
    got += s.recv(1024)
print(got.decode())
"#;
    let output = daemon.run_agent(
        "ci-bot",
        PYTHON,
        &["-c", script, HOST, &server.port.to_string()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout} {:?}", output);
    assert!(stdout.starts_with("HTTP/1.1 101"), "{stdout}");
    assert!(stdout.contains("ping over the upgrade"), "{stdout}");
    let records = wait_for_requests(&daemon, server.port, |records| records.len() >= 2);
    let upgrade = record_for(&records, "GET 127.0.0.2/ws");
    assert_eq!(text(upgrade, "tag"), "101");
}

#[test]
fn git_clone_and_push_over_https() {
    let nginx = Nginx::start();
    let rules = format!(
        r#"{READ_ALL}
[[rule]]
name = "git-over-http"
agent = "ci-bot"
resource = "api"
operations = ["write"]
http = {{ methods = ["POST"], paths = ["/git/*/git-upload-pack", "/git/*/git-receive-pack"] }}
action = "allow"
"#
    );
    let daemon = daemon(&policy(&nginx, None, &rules));
    let work = tempfile::tempdir().expect("tempdir");
    let clone = work.path().join("clone");
    let clone_text = clone.display().to_string();
    let url = nginx.url(HOST, "/git/repo.git");
    let output = daemon.run_agent("ci-bot", "git", &["clone", "-q", &url, &clone_text]);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        daemon.log()
    );
    assert_eq!(
        std::fs::read_to_string(clone.join("README")).expect("cloned file"),
        "seeded\n"
    );
    std::fs::write(clone.join("NOTES"), "from the agent\n").expect("write");
    let git = |args: &[&str]| {
        let mut all = vec!["-C", clone_text.as_str()];
        all.extend_from_slice(args);
        let output = daemon.run_agent("ci-bot", "git", &all);
        assert!(
            output.status.success(),
            "git {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            daemon.log()
        );
    };
    git(&["add", "NOTES"]);
    git(&[
        "-c",
        "user.name=agent",
        "-c",
        "user.email=a@test",
        "commit",
        "-q",
        "-m",
        "from the agent",
    ]);
    git(&["push", "-q", "origin", "main"]);
    assert_eq!(nginx.git_log(), vec!["from the agent", "seed"]);
    let log = nginx.access_log_of(1);
    assert!(
        log.iter()
            .any(|line| line.starts_with("POST /git/repo.git/git-receive-pack 200")),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .all(|line| line.contains(&format!("auth=\"Bearer {TOKEN}\""))),
        "{log:#?}"
    );
}

#[test]
fn a_response_that_cannot_be_scrubbed_is_refused() {
    let nginx = Nginx::start();
    let server = sluice_tests::http::TestServer::start();
    let encoded = format!(
        r#"
[[resource]]
name = "encoded"
addresses = ["{HOST}"]
ports = [{port}]
protocol = "http"
credential = "api-token"
"#,
        port = server.port
    );
    let daemon = daemon(&policy(&nginx, None, &format!("{encoded}{READ_ALL}")));
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "-w",
            "\n%{http_code}",
            &format!("http://{HOST}:{}/encoded", server.port),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(body.ends_with("502"), "{body}");
    assert!(
        body.contains("`zstd`, which sluice cannot decode"),
        "{body}"
    );
    assert!(!body.contains("opaque"), "{body}");
}

#[test]
fn compressed_responses_are_decoded_to_be_scrubbed_and_masked() {
    let nginx = Nginx::start();
    let server = sluice_tests::http::TestServer::start();
    let rules = format!(
        r#"
[[resource]]
name = "encoded"
addresses = ["{HOST}"]
ports = [{port}]
protocol = "http"
credential = "api-token"

[[mask]]
name = "pii"
[[mask.rule]]
column = "email"
strategy = "redact"

[[rule]]
name = "users-masked"
agent = "ci-bot"
resource = "api"
operations = ["read"]
http = {{ paths = ["/gz/**"] }}
mask = "pii"
action = "allow"
"#,
        port = server.port
    );
    let daemon = daemon(&policy(&nginx, None, &format!("{rules}{READ_ALL}")));
    // An echo that answers in gzip or br although sluice asked for identity: decoded,
    // scrubbed, and handed over plain; the token never reaches the agent in any form.
    for (path, agent_asks) in [
        ("/gzip-echo", None),
        ("/br-echo", None),
        ("/gzip-echo", Some("--compressed")),
    ] {
        let url = format!("http://{HOST}:{}{path}", server.port);
        let mut args = vec!["-i", url.as_str()];
        args.extend(agent_asks);
        let (ok, body, stderr) = curl(&daemon, None, &args);
        assert!(ok, "{path}: {stderr}\n{}", daemon.log());
        assert!(
            body.contains("authorization=Bearer [sluice:scrubbed]"),
            "{path}: {body}"
        );
        assert!(
            !body.contains(TOKEN),
            "{path}: the token reached the agent: {body}"
        );
        assert!(
            !body.to_ascii_lowercase().contains("content-encoding"),
            "{path}: {body}"
        );
    }
    // Decoding stops at its cap: a small body that expands past it is refused.
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "-w",
            "\n%{http_code}",
            &format!("http://{HOST}:{}/gzip-bomb", server.port),
        ],
    );
    assert!(ok, "{stderr}");
    assert!(body.ends_with("502"), "{body}");
    assert!(body.contains("decodes to more than"), "{body}");

    // nginx serving only a gzip file (gzip_static always): masked like the plain one.
    let (ok, body, stderr) = curl(
        &daemon,
        None,
        &[
            "--resolve",
            &nginx.resolve(API_NAME),
            &nginx.url(API_NAME, "/gz/users.json"),
        ],
    );
    assert!(ok, "{stderr}");
    let users: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(users["users"][0]["name"], "Ada", "{body}");
    assert_ne!(users["users"][0]["email"], "ada@example.com", "{body}");
    assert!(!body.contains("bob@example.org"), "{body}");
    let log = nginx.access_log_of(1);
    assert!(
        log.len() == 1 && log[0].contains("/gz/users.json 200"),
        "{log:#?}"
    );
    let records = wait_for_requests(&daemon, nginx.tls_port, |records| !records.is_empty());
    let users = record_for(&records, "GET api.test/gz/users.json");
    assert_eq!(users["masked"]["email"].as_u64(), Some(2), "{users:#}");
}

#[test]
fn h2_requests_with_connection_specific_headers_get_400_and_never_reach_nginx() {
    let nginx = Nginx::start();
    let daemon = daemon(&policy(&nginx, None, READ_ALL));
    // A real HTTP/2 client (python h2 over ssl, trusting the bundle `sluice run` sets in
    // SSL_CERT_FILE) made to send what HTTP/2 forbids, one request after another on one
    // connection.
    let script = r#"
import socket, ssl, sys, json
import h2.config, h2.connection, h2.events
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context()
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection((host, port), timeout=20), server_hostname=name)
assert sock.selected_alpn_protocol() == "h2", sock.selected_alpn_protocol()
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
    client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False,
    validate_inbound_headers=False))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
cases = [
    ("connection", [("connection", "keep-alive")]),
    ("keep_alive", [("keep-alive", "timeout=5")]),
    ("proxy_connection", [("proxy-connection", "keep-alive")]),
    ("transfer_encoding", [("transfer-encoding", "chunked")]),
    ("upgrade", [("upgrade", "websocket")]),
    ("te_gzip", [("te", "gzip")]),
    ("te_trailers", [("te", "trailers")]),
    ("ok", []),
]
out = {}
for case, extra in cases:
    stream = conn.get_next_available_stream_id()
    headers = [(":method", "GET"), (":scheme", "https"), (":authority", "%s:%d" % (name, port)),
               (":path", "/api/" + case)] + extra
    conn.send_headers(stream, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    status, body, done = None, b"", False
    while not done:
        data = sock.recv(65536)
        if not data:
            out[case] = "connection closed"
            print(json.dumps(out)); sys.exit(0)
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                status = dict(event.headers)[b":status"].decode()
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                done = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                status, done = "reset", True
        sock.sendall(conn.data_to_send())
    out[case] = "%s %s" % (status, body.decode("latin-1"))
print(json.dumps(out))
"#;
    let port = nginx.tls_port.to_string();
    let output = daemon.run_agent("ci-bot", PYTHON, &["-c", script, HOST, &port, API_NAME]);
    assert!(output.status.success(), "{output:?}\n{}", daemon.log());
    let answers: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    for case in [
        "connection",
        "keep_alive",
        "proxy_connection",
        "transfer_encoding",
        "upgrade",
        "te_gzip",
    ] {
        let answer = text(&answers, case);
        assert!(
            answer.starts_with("400 ") && answer.contains("connection-specific header"),
            "{case}: {answer:?}\n{answers:#}"
        );
    }
    for case in ["te_trailers", "ok"] {
        let answer = text(&answers, case);
        assert!(
            answer.starts_with("200 "),
            "{case}: {answer:?}\n{answers:#}"
        );
    }
    // Only the two well-formed requests reached nginx (the last one is logged after the
    // others would have been).
    let log = nginx.access_log_of(2);
    assert_eq!(log.len(), 2, "{log:#?}");
    assert!(
        log[0].contains("/api/te_trailers") && log[1].contains("/api/ok"),
        "{log:#?}"
    );
    let records = wait_for_requests(&daemon, nginx.tls_port, |records| records.len() >= 8);
    let refused = record_for(&records, "GET api.test/api/upgrade");
    assert!(
        text(refused, "error").contains("connection-specific header `upgrade`"),
        "{refused:#}"
    );
}

#[test]
fn smuggling_shapes_on_a_kept_alive_connection_get_400_and_never_reach_nginx() {
    let nginx = Nginx::start();
    let writes = r#"
[[rule]]
agent = "ci-bot"
resource = "*"
operations = ["write"]
action = "allow"
"#;
    let daemon = daemon(&policy(&nginx, None, &format!("{READ_ALL}{writes}")));
    // Each case on its own connection (plain and TLS): a valid request first, answered
    // and kept alive, then the hostile one on the same connection.
    let script = r#"
import socket, ssl, sys, json
host, plain, tls, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cases = {
  "cl_and_te": b"POST /api/bad HTTP/1.1\r\nHost: H\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
  "te_and_cl": b"POST /api/bad HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
  "two_cl": b"POST /api/bad HTTP/1.1\r\nHost: H\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
  "same_cl_twice": b"POST /api/bad HTTP/1.1\r\nHost: H\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
  "cl_list": b"POST /api/bad HTTP/1.1\r\nHost: H\r\nContent-Length: 1, 1\r\n\r\na",
  "obs_fold": b"GET /api/bad HTTP/1.1\r\nHost: H\r\nX-A: 1\r\n  folded\r\n\r\n",
  "bare_cr": b"GET /api/bad HTTP/1.1\r\nHost: H\rX-A: 1\r\n\r\n",
  "bare_lf": b"GET /api/bad HTTP/1.1\nHost: H\nX-A: 1\n\n",
  "bad_chunk": b"POST /api/bad HTTP/1.1\r\nHost: H\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}

def read_response(s):
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = s.recv(65536)
        if not chunk:
            return got.split(b"\r\n", 1)[0].decode("latin-1")
        got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.split(b"\r\n", 1)[0].decode("latin-1")

out = {}
for transport, port in (("plain", plain), ("tls", tls)):
    authority = host if transport == "plain" else name
    for case, data in cases.items():
        s = socket.create_connection((host, port), timeout=20)
        if transport == "tls":
            s = ssl.create_default_context().wrap_socket(s, server_hostname=name)
        s.sendall(("GET /api/first-%s-%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (transport, case, authority)).encode())
        first = read_response(s)
        s.sendall(data.replace(b"Host: H", b"Host: " + authority.encode()))
        out["%s %s" % (transport, case)] = [first, read_response(s)]
        s.close()
print(json.dumps(out))
"#;
    let plain = nginx.plain_port.to_string();
    let tls = nginx.tls_port.to_string();
    let output = daemon.run_agent(
        "ci-bot",
        PYTHON,
        &["-c", script, HOST, &plain, &tls, API_NAME],
    );
    assert!(output.status.success(), "{output:?}\n{}", daemon.log());
    let answers: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let cases = answers.as_object().expect("cases");
    assert_eq!(cases.len(), 18, "{answers:#}");
    let wrong: Vec<String> = cases
        .iter()
        .filter(|(_, answer)| {
            !(answer[0]
                .as_str()
                .is_some_and(|line| line.starts_with("HTTP/1.1 200"))
                && answer[1]
                    .as_str()
                    .is_some_and(|line| line.starts_with("HTTP/1.1 400")))
        })
        .map(|(case, answer)| format!("{case}: {answer}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "the first request answered 200, then the hostile one 400: {wrong:#?}"
    );
    // nginx saw the 18 valid first requests and nothing else (it logs each as it ends;
    // a hostile request reaching it would be logged after the first of its connection).
    let log = nginx.access_log_of(18);
    assert_eq!(log.len(), 18, "{log:#?}");
    assert!(
        log.iter().all(|line| line.contains("/api/first-")),
        "{log:#?}"
    );
}

#[test]
fn grpc_style_trailers_pass_over_h2_and_are_scrubbed() {
    let nginx = Nginx::start();
    let server = sluice_tests::http::TestServer::start_h2c();
    let rules = format!(
        r#"
[[resource]]
name = "grpc"
addresses = ["{HOST}"]
ports = [{port}]
protocol = "http"
credential = "api-token"

[[rule]]
agent = "ci-bot"
resource = "grpc"
operations = ["write"]
action = "allow"
"#,
        port = server.port
    );
    let daemon = daemon(&policy(&nginx, None, &format!("{rules}{READ_ALL}")));
    // A real HTTP/2 client (python h2, cleartext with prior knowledge) calling a gRPC
    // method: `te: trailers`, a framed message, and the status in the trailers.
    let script = r#"
import socket, sys, json
import h2.config, h2.connection, h2.events
host, port = sys.argv[1], int(sys.argv[2])
sock = socket.create_connection((host, port), timeout=20)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
stream = conn.get_next_available_stream_id()
conn.send_headers(stream, [(":method", "POST"), (":scheme", "http"),
    (":authority", "%s:%d" % (host, port)), (":path", "/grpc"),
    ("content-type", "application/grpc"), ("te", "trailers")])
conn.send_data(stream, b"\x00\x00\x00\x00\x02hi", end_stream=True)
sock.sendall(conn.data_to_send())
out = {"data": ""}
done = False
while not done:
    data = sock.recv(65536)
    if not data:
        break
    for event in conn.receive_data(data):
        if isinstance(event, h2.events.ResponseReceived):
            out["headers"] = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, h2.events.DataReceived):
            out["data"] += event.data.decode("latin-1")
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            out["trailers"] = {k.decode(): v.decode() for k, v in event.headers}
        elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
            done = True
    sock.sendall(conn.data_to_send())
print(json.dumps(out))
"#;
    let port = server.port.to_string();
    let output = daemon.run_agent("ci-bot", PYTHON, &["-c", script, HOST, &port]);
    assert!(output.status.success(), "{output:?}\n{}", daemon.log());
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(answer["headers"][":status"], "200", "{answer:#}");
    assert_eq!(answer["headers"]["content-type"], "application/grpc");
    assert!(text(&answer, "data").ends_with("hello"), "{answer:#}");
    assert_eq!(answer["trailers"]["grpc-status"], "0", "{answer:#}");
    // The upstream received the injected token (it echoes it in grpc-message), and
    // the agent gets it scrubbed.
    assert_eq!(
        answer["trailers"]["grpc-message"], "Bearer [sluice:scrubbed]",
        "{answer:#}"
    );
    assert!(!answer.to_string().contains(TOKEN));
    let records = wait_for_requests(&daemon, server.port, |records| !records.is_empty());
    let call = record_for(&records, "POST 127.0.0.2/grpc");
    assert_eq!(text(call, "tag"), "200", "{call:#}");
}

#[test]
fn expect_100_continue_is_answered_only_once_the_held_request_is_approved() {
    let nginx = Nginx::start();
    let rules = format!(
        r#"{READ_ALL}
[[rule]]
name = "writes-need-a-human"
agent = "ci-bot"
resource = "api"
operations = ["write"]
action = "review"
timeout = "60s"
"#
    );
    let daemon = daemon(&policy(&nginx, None, &rules));
    let marker = tempfile::NamedTempFile::new().expect("marker");
    let marker_path = marker.path().with_extension("approved");
    // The agent sends the head with `Expect: 100-continue` and waits for the interim
    // answer before sending its body; it notes whether the approval came first.
    let script = r#"
import socket, ssl, sys, os
host, port, name, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = ssl.create_default_context().wrap_socket(
    socket.create_connection((host, port), timeout=50), server_hostname=name)
body = b'{"title":"x"}'
s.sendall(b"POST /api/held HTTP/1.1\r\nHost: " + name.encode() +
    b"\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: " +
    str(len(body)).encode() + b"\r\n\r\n")
got = b""
while b"\r\n\r\n" not in got:
    chunk = s.recv(4096)
    if not chunk:
        break
    got += chunk
print("interim:", got.split(b"\r\n")[0].decode(), "approved-before:", os.path.exists(marker))
s.sendall(body)
rest = got.split(b"\r\n\r\n", 1)[1]
while b"\r\n\r\n" not in rest:
    chunk = s.recv(4096)
    if not chunk:
        break
    rest += chunk
print("final:", rest.split(b"\r\n")[0].decode())
"#;
    let port = nginx.tls_port.to_string();
    let mut agent = std::process::Command::new(sluice_bin())
        .arg("--config")
        .arg(daemon_config(&daemon))
        .args([
            "run", "--agent", "ci-bot", "--user", "nobody", "--", PYTHON, "-c",
        ])
        .args([script, HOST, &port, API_NAME])
        .arg(&marker_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the agent");
    let hold = daemon.wait_for_hold(Duration::from_secs(30) * slowdown(), |hold| {
        hold["sql"]
            .as_str()
            .is_some_and(|sql| sql.contains("POST api.test/api/held"))
    });
    assert!(nginx.access_log().is_empty(), "nothing upstream while held");
    std::fs::write(&marker_path, "approved").expect("marker");
    let id = hold["id"].as_u64().expect("hold id").to_string();
    let approved = daemon.sluice(&["approve", &id, "--reason", "ok"]);
    assert!(approved.status.success(), "{approved:?}");
    let status = wait_child(&mut agent);
    let mut out = String::new();
    agent
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("output");
    let _ = std::fs::remove_file(&marker_path);
    assert!(status.success(), "{out}\n{}", daemon.log());
    assert!(
        out.contains("interim: HTTP/1.1 100 Continue approved-before: True"),
        "{out}"
    );
    assert!(out.contains("final: HTTP/1.1 200"), "{out}");
    let log = nginx.access_log_of(1);
    assert!(log[0].starts_with("POST /api/held 200"), "{log:#?}");
}
