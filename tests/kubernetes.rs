//! kubectl through sluice against a Kubernetes API **stand-in** (`tests/support/kube.rs`:
//! no real API server can be installed on these machines, so a small HTTPS server on
//! loopback answers with the API server's documented wire shapes). The clients are the
//! real kubectl binaries from the machine image; the stand-in's request log is the
//! witness of what the upstream really received.

use std::path::{Path, PathBuf};

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    kube::{HOST, KubeStandIn},
    text,
};

/// The token the daemon injects; kubectl never holds it.
const TOKEN: &str = "kube-bot-token-0123456789abcdef";
/// The stand-in's Secret `shop/db`, base64 (`hunter2-sluice`).
const SECRET_B64: &str = "aHVudGVyMi1zbHVpY2U=";
/// The base64 of `sluice:masked`.
const MASKED_B64: &str = "c2x1aWNlOm1hc2tlZA==";

/// kubectl speaking WebSocket (v5.channel.k8s.io) for exec, with SPDY as its fallback.
const KUBECTL_WEBSOCKET: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
/// kubectl speaking SPDY only.
const KUBECTL_SPDY: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.28";

/// kubectl 1.33 (WebSocket streaming) from the machine image, else Debian's.
fn kubectl() -> PathBuf {
    for candidate in [
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
        "/usr/lib/google-cloud-sdk/bin/kubectl",
        "/usr/bin/kubectl",
    ] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!("no kubectl: install the google-cloud-sdk kubectl or Debian's kubernetes-client");
}

/// A typical policy: `deployer` reads everything in `shop` (Secrets masked), writes
/// pods, configmaps and deployments there; nothing else (deletes, other namespaces,
/// nodes, exec, impersonation) is allowed.
fn policy(stand_in: &KubeStandIn, extra_rules: &str) -> String {
    format!(
        r#"
[[agent]]
name = "deployer"

[[resource]]
name = "cluster"
addresses = ["{HOST}"]
ports = [{port}]
protocol = "kubernetes"
credential = "kube-bot"
tls = {{ mode = "verify-full", ca_file = {ca:?} }}

[[rule]]
name = "shop-read"
agent = "deployer"
resource = "cluster"
operations = ["read"]
kubernetes = {{ namespaces = ["shop"] }}
action = "allow"

[[rule]]
name = "shop-write"
agent = "deployer"
resource = "cluster"
operations = ["write"]
kubernetes = {{ namespaces = ["shop"], resources = ["pods", "configmaps", "deployments"] }}
action = "allow"
{extra_rules}
"#,
        port = stand_in.port,
        ca = stand_in.ca_file,
    )
}

struct Setup {
    stand_in: KubeStandIn,
    daemon: TestDaemon,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

fn setup(extra_rules: &str) -> Setup {
    let stand_in = KubeStandIn::start();
    let credentials = format!("[kube-bot]\nbearer = \"{TOKEN}\"\n");
    setup_with(
        stand_in,
        &credentials,
        extra_rules,
        tempfile::tempdir().expect("tempdir"),
    )
}

/// The daemon in front of `stand_in` with this credentials file, and the agent's
/// kubeconfig in `dir`.
fn setup_with(
    stand_in: KubeStandIn,
    credentials: &str,
    extra_rules: &str,
    dir: tempfile::TempDir,
) -> Setup {
    let daemon = TestDaemon::start_with_credentials(&policy(&stand_in, extra_rules), credentials);
    // The agent's kubeconfig: the cluster's own server URL, sluice's CA, no credentials.
    let output = daemon.sluice(&["kubeconfig", "--resource", "cluster", "--namespace", "shop"]);
    assert!(
        output.status.success(),
        "sluice kubeconfig: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    assert!(text.contains(&stand_in.server()), "{text}");
    assert!(text.contains("certificate-authority-data:"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, text).expect("kubeconfig");
    Setup {
        stand_in,
        daemon,
        dir,
        kubeconfig,
    }
}

impl Setup {
    /// Runs kubectl as agent `deployer`: (success, stdout, stderr).
    fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl_with(kubectl().to_str().expect("path"), args)
    }

    /// Runs this kubectl binary as agent `deployer`.
    fn kubectl_with(&self, kubectl: &str, args: &[&str]) -> (bool, String, String) {
        let kubeconfig = self.kubeconfig.display().to_string();
        let cache = self.dir.path().join("cache").display().to_string();
        let mut all: Vec<&str> = vec![
            "run",
            "--agent",
            "deployer",
            "--kubeconfig",
            &kubeconfig,
            "--",
            kubectl,
            "--cache-dir",
            &cache,
            "--request-timeout=30s",
        ];
        all.extend_from_slice(args);
        let output = self.daemon.sluice(&all);
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// Runs this kubectl binary as agent `deployer` and returns its whole output.
    fn kubectl_output(&self, kubectl: &str, args: &[&str]) -> std::process::Output {
        let kubeconfig = self.kubeconfig.display().to_string();
        let cache = self.dir.path().join("cache").display().to_string();
        let mut all: Vec<&str> = vec![
            "run",
            "--agent",
            "deployer",
            "--kubeconfig",
            &kubeconfig,
            "--",
            kubectl,
            "--cache-dir",
            &cache,
            "--request-timeout=30s",
        ];
        all.extend_from_slice(args);
        self.daemon.sluice(&all)
    }

    /// The request records of the agent's sessions to the stand-in.
    fn records(&self) -> Vec<Value> {
        let mut all = Vec::new();
        for session in self.daemon.sessions(Some("deployer")) {
            let destination = session["destination"].as_str().unwrap_or_default();
            if !destination.ends_with(&format!(":{}", self.stand_in.port)) {
                continue;
            }
            let id = session["id"].as_u64().expect("session id");
            let shown = self.daemon.show_session(id);
            all.extend(
                shown["statements"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        all
    }

    fn wait_for_record(&self, summary: &str) -> Value {
        self.wait_for_record_with(summary, |_| true)
    }

    /// Waits for a record of `summary` that also satisfies `done`.
    fn wait_for_record_with(&self, summary: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if let Some(record) = self
                .records()
                .into_iter()
                .find(|record| text(record, "sql") == summary && done(record))
            {
                return record;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no record `{summary}`: {:#?}\n{}",
                self.records(),
                self.daemon.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn assert_forbidden(result: &(bool, String, String), rule: &str) {
    let (ok, stdout, stderr) = result;
    assert!(!ok, "kubectl should have failed: {stdout}");
    assert!(
        stderr.contains("Error from server (Forbidden): sluice denied this request"),
        "kubectl did not print a normal Forbidden error: {stderr}"
    );
    assert!(
        stderr.contains(rule),
        "the error names no rule {rule}: {stderr}"
    );
}

#[test]
fn kubectl_reads_and_writes_in_its_namespace_and_nothing_else() {
    sluice_tests::require_root();
    let setup = setup("");
    let (ok, stdout, stderr) = setup.kubectl(&["get", "pods", "-n", "shop"]);
    assert!(ok, "get pods failed: {stderr}\n{}", setup.daemon.log());
    assert!(stdout.contains("web"), "{stdout}");

    // Another namespace, a namespace delete and a node delete: kubectl's own errors.
    assert_forbidden(
        &setup.kubectl(&["get", "pods", "-n", "kube-system"]),
        "default-deny",
    );
    assert_forbidden(
        &setup.kubectl(&["delete", "namespace", "shop"]),
        "default-deny",
    );
    assert!(setup.stand_in.has("", "namespaces", "shop"));
    assert_forbidden(
        &setup.kubectl(&["delete", "node", "worker-1"]),
        "default-deny",
    );
    assert!(setup.stand_in.has("", "nodes", "worker-1"));

    // Writes where the rule allows them, not deletes.
    // From a manifest (kubectl's typed `create configmap` sends protobuf, which the
    // stand-in does not decode; manifests go as JSON).
    let manifest = setup.dir.path().join("app.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"app"},"data":{"mode":"blue"}}"#,
    )
    .expect("manifest");
    let (ok, _, stderr) = setup.kubectl(&[
        "create",
        "-n",
        "shop",
        "--validate=false",
        "-f",
        manifest.to_str().expect("path"),
    ]);
    assert!(ok, "create configmap failed: {stderr}");
    assert!(setup.stand_in.has("shop", "configmaps", "app"));
    assert_forbidden(
        &setup.kubectl(&["delete", "configmap", "app", "-n", "shop"]),
        "default-deny",
    );
    assert!(setup.stand_in.has("shop", "configmaps", "app"));

    // `policy explain` maps requests the same way, in kubectl's words or raw.
    for (question, expected) in [
        ("delete namespaces shop", "deny"),
        ("DELETE /api/v1/nodes/worker-1", "deny"),
        ("get secrets -n shop db", "allow"),
        ("create configmaps -n shop", "allow"),
        ("GET /api/v1/namespaces/shop/pods?watch=1", "allow"),
        ("create pods/exec -n shop web", "deny"),
    ] {
        let output = setup.daemon.sluice(&[
            "policy",
            "explain",
            "--agent",
            "deployer",
            "--resource",
            "cluster",
            "--kubernetes",
            question,
            "--json",
        ]);
        assert!(output.status.success(), "{output:?}");
        let explanation: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        assert_eq!(
            explanation["decision"]["action"], expected,
            "{question}: {explanation:#}"
        );
    }

    // One record per request, in Kubernetes terms.
    let delete = setup.wait_for_record("delete namespaces shop");
    assert_eq!(text(&delete, "operation"), "dangerous");
    assert_eq!(text(&delete, "kind"), "kubernetes");
    assert_eq!(delete["decision"]["action"], "deny", "{delete:#}");
    let parameters = delete["parameters"].to_string();
    assert!(parameters.contains("verb=delete"), "{parameters}");
    assert!(parameters.contains("resource=namespaces"), "{parameters}");
    let create = setup.wait_for_record("create configmaps -n shop");
    assert_eq!(create["decision"]["action"], "allow", "{create:#}");
    assert_eq!(text(&create, "tag"), "201");

    // The stand-in never saw a forbidden request, and every request it saw carried
    // the daemon's token.
    let seen = setup.stand_in.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|request| request.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "{seen:#?}"
    );
    assert!(
        !seen
            .iter()
            .any(|request| request.method == "DELETE"
                || request.path_and_query.contains("kube-system")),
        "a denied request reached the API: {seen:#?}"
    );
}

#[test]
fn secrets_are_masked_and_the_injected_token_never_reaches_kubectl() {
    sluice_tests::require_root();
    let setup = setup("");
    let (ok, stdout, stderr) = setup.kubectl(&["get", "secret", "db", "-n", "shop", "-o", "yaml"]);
    assert!(ok, "get secret failed: {stderr}\n{}", setup.daemon.log());
    assert!(
        !stdout.contains(SECRET_B64),
        "the Secret's value reached the agent: {stdout}"
    );
    assert!(stdout.contains(MASKED_B64), "{stdout}");
    assert!(stdout.contains("name: db"), "{stdout}");
    let record = setup.wait_for_record("get secrets -n shop db");
    assert!(
        record["masked"]["secret_values"].as_u64().unwrap_or(0) >= 1,
        "{record:#}"
    );

    // kubectl's own token is replaced, and the injected one is never shown to it.
    let (ok, stdout, stderr) = setup.kubectl(&[
        "--token",
        "agent-own-token",
        "-v=9",
        "get",
        "pods",
        "-n",
        "shop",
    ]);
    assert!(ok, "{stderr}");
    assert!(
        !stdout.contains(TOKEN) && !stderr.contains(TOKEN),
        "{stdout}{stderr}"
    );
    let seen = setup.stand_in.seen();
    assert!(
        seen.iter()
            .all(|request| request.authorization.as_deref() == Some(&format!("Bearer {TOKEN}"))),
        "{seen:#?}"
    );
}

#[test]
fn exec_and_port_forward_are_refused_at_the_upgrade() {
    sluice_tests::require_root();
    let setup = setup("");
    // 1.33 tries WebSocket (a GET) then SPDY (a POST); 1.28 speaks SPDY only. Both are
    // judged as pods/exec whatever the method, at the upgrade.
    for kubectl in [KUBECTL_WEBSOCKET, KUBECTL_SPDY] {
        let exec = setup.kubectl_with(kubectl, &["exec", "web", "-n", "shop", "--", "true"]);
        assert_forbidden(&exec, "default-deny");
        assert!(
            exec.2.contains("create pods/exec -n shop web"),
            "{}",
            exec.2
        );
        let (ok, _, stderr) = setup.kubectl_with(
            kubectl,
            &["port-forward", "pod/web", "-n", "shop", "18080:80"],
        );
        assert!(!ok);
        assert!(
            stderr.contains(
                "error upgrading connection: sluice denied this request (rule default-deny)"
            ) && stderr.contains("pods/portforward -n shop web"),
            "{kubectl}: {stderr}"
        );
    }
    let seen = setup.stand_in.seen();
    assert!(
        !seen
            .iter()
            .any(|request| request.path_and_query.contains("/exec")
                || request.path_and_query.contains("/portforward")),
        "a refused upgrade reached the API: {seen:#?}"
    );
    for summary in [
        "get pods/exec -n shop web",
        "create pods/exec -n shop web",
        "get pods/portforward -n shop web",
        "create pods/portforward -n shop web",
    ] {
        let record = setup.wait_for_record(summary);
        assert_eq!(text(&record, "operation"), "admin", "{record:#}");
        assert_eq!(record["decision"]["action"], "deny", "{record:#}");
    }
}

#[test]
fn impersonation_is_refused() {
    sluice_tests::require_root();
    let setup = setup("");
    // Discovery first, without impersonation (kubectl caches it), as a user would have.
    let (ok, _, stderr) = setup.kubectl(&["get", "pods", "-n", "shop"]);
    assert!(ok, "{stderr}");
    assert_forbidden(
        &setup.kubectl(&["get", "pods", "-n", "shop", "--as", "system:admin"]),
        "default-deny",
    );
    assert!(
        setup
            .stand_in
            .seen()
            .iter()
            .all(|request| request.impersonation.is_empty()),
        "an impersonating request reached the API"
    );
    let record = setup.wait_for_record("list pods -n shop (impersonating)");
    assert_eq!(text(&record, "operation"), "dcl");
}

#[test]
fn a_thousand_secrets_are_masked_item_by_item() {
    sluice_tests::require_root();
    let setup = setup("");
    // A first list warms the daemon's connection, TLS and discovery up.
    let (ok, _, stderr) = setup.kubectl(&["get", "secrets", "-n", "shop"]);
    assert!(ok, "{stderr}");
    let pid = setup.daemon.pid();
    let before = sluice_tests::memory_kib(pid, "VmRSS:");
    // Each value padded to 16 KiB: the list is ~21 MiB of base64, well over the most a
    // response body may be buffered whole for masking (8 MiB), so it only passes item
    // by item, and over what the daemon may grow by.
    setup.stand_in.add_secrets_of(1000, 16 * 1024);
    let (ok, stdout, stderr) = setup.kubectl(&["get", "secrets", "-n", "shop", "-o", "json"]);
    assert!(ok, "{stderr}\n{}", setup.daemon.log());
    let peak = sluice_tests::memory_kib(pid, "VmHWM:");
    assert!(
        peak < before + 12 * 1024,
        "the daemon grew from {before} KiB to a peak of {peak} KiB masking a 21 MiB list"
    );
    let list: Value = serde_json::from_str(&stdout).expect("kubectl printed JSON");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1001);
    // base64 of "bulk-secret-value-": no original value got through.
    assert!(!stdout.contains("YnVsay1zZWNyZXQtdmFsdWUt"));
    assert!(
        items.iter().all(|item| item["data"]
            .as_object()
            .is_some_and(|data| data.values().all(|value| value == MASKED_B64))),
        "an item was not masked"
    );
    let record = setup.wait_for_record("list secrets -n shop");
    assert_eq!(record["masked"]["secret_values"], 1001, "{record:#}");
}

#[test]
fn a_pod_delete_is_held_until_a_human_approves_it() {
    sluice_tests::require_root();
    let setup = setup(
        r#"
[[rule]]
name = "pod-deletes-need-a-human"
agent = "deployer"
resource = "cluster"
operations = ["dangerous"]
kubernetes = { resources = ["pods"], namespaces = ["shop"] }
action = "review"
timeout = "60s"
"#,
    );
    // Discovery first, so that the held request is the delete itself.
    let (ok, _, stderr) = setup.kubectl(&["get", "pods", "-n", "shop"]);
    assert!(ok, "{stderr}");
    let config = setup
        .daemon
        .control_socket
        .parent()
        .expect("daemon dir")
        .join("sluice.toml");
    // The agent runs as `nobody`: nobody approves their own requests.
    use std::os::unix::fs::PermissionsExt as _;
    let cache = setup.dir.path().join("nobody-cache");
    std::fs::create_dir_all(&cache).expect("cache dir");
    for (path, mode) in [
        (setup.dir.path(), 0o755),
        (cache.as_path(), 0o777),
        (setup.kubeconfig.as_path(), 0o644),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let agent = std::process::Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&config)
        .args([
            "run",
            "--agent",
            "deployer",
            "--user",
            "nobody",
            "--kubeconfig",
        ])
        .arg(&setup.kubeconfig)
        .args(["--", KUBECTL_WEBSOCKET, "--cache-dir"])
        .arg(&cache)
        .args([
            "--request-timeout=90s",
            "delete",
            "pod",
            "web",
            "-n",
            "shop",
            "--wait=false",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kubectl");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let hold = loop {
        let output = setup.daemon.sluice(&["approvals", "list", "--json"]);
        let holds: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        if let Some(hold) = holds
            .into_iter()
            .find(|hold| text(hold, "sql") == "delete pods -n shop web")
        {
            break hold;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no hold:\n{}",
            setup.daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(
        setup.stand_in.has("shop", "pods", "web"),
        "the pod went while held"
    );
    assert!(
        !setup
            .stand_in
            .seen()
            .iter()
            .any(|request| request.method == "DELETE")
    );
    let id = hold["id"].as_u64().expect("hold id").to_string();
    let approved = setup
        .daemon
        .sluice(&["approve", &id, "--reason", "ticket OPS-9"]);
    assert!(approved.status.success(), "{approved:?}");
    let output = agent.wait_with_output().expect("kubectl ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("pod \"web\" deleted"), "{stdout}");
    assert!(!setup.stand_in.has("shop", "pods", "web"));
    let record = setup.wait_for_record("delete pods -n shop web");
    assert_eq!(record["approval"]["outcome"], "approved", "{record:#}");
    assert_eq!(record["approval"]["reason"], "ticket OPS-9");
}

/// A kubeconfig for talking to the stand-in directly (not through sluice): its CA and
/// the daemon's token, to compare kubectl's behaviour with and without sluice.
fn direct_kubeconfig(stand_in: &KubeStandIn, dir: &Path) -> PathBuf {
    let path = dir.join("direct-kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: direct\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: bot\n  user:\n    token: {TOKEN}\ncontexts:\n- name: direct\n  context:\n    cluster: direct\n    user: bot\n    namespace: shop\ncurrent-context: direct\n",
            server = stand_in.server(),
            ca = stand_in.ca_file.display(),
        ),
    )
    .expect("kubeconfig");
    path
}

/// Runs kubectl against the stand-in directly: (exit code, stdout, stderr).
fn kubectl_direct(kubectl: &str, kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--request-timeout=30s")
        .args(args)
        .output()
        .expect("run kubectl");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The command every exec test runs: output on both streams and a distinctive exit.
const EXEC_SCRIPT: &str = "echo hi from web; echo oops >&2; exit 3";

const EXEC_RULE: &str = r#"
[[rule]]
name = "exec-into-web"
agent = "deployer"
resource = "cluster"
operations = ["admin"]
kubernetes = { namespaces = ["shop"], resources = ["pods/exec"], names = ["web"] }
action = "allow"
"#;

#[test]
fn exec_is_recorded_and_replayed_with_its_exit_code() {
    sluice_tests::require_root();
    let setup = setup(EXEC_RULE);
    let direct = direct_kubeconfig(&setup.stand_in, setup.dir.path());
    for (kubectl, protocol) in [
        (KUBECTL_WEBSOCKET, "v5.channel.k8s.io"),
        (KUBECTL_SPDY, "SPDY/3.1+v4.channel.k8s.io"),
    ] {
        let args = ["exec", "web", "-n", "shop", "--", "sh", "-c", EXEC_SCRIPT];
        // Directly against the stand-in, as a baseline.
        let (code, stdout, stderr) = kubectl_direct(kubectl, &direct, &args);
        assert_eq!(code, 3, "{kubectl} direct: {stdout}{stderr}");
        assert_eq!(stdout, "hi from web\n", "{kubectl} direct");
        assert!(stderr.contains("oops"), "{kubectl} direct: {stderr}");
        // Through sluice: the same output and exit code.
        let before = setup.stand_in.execs().len();
        let output = setup.kubectl_output(kubectl, &args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(3),
            "{kubectl} through sluice: {stdout}{stderr}\n{}",
            setup.daemon.log()
        );
        assert_eq!(stdout, "hi from web\n", "{kubectl} through sluice");
        assert!(stderr.contains("oops"), "{stderr}");
        let execs = setup.stand_in.execs();
        assert_eq!(execs.len(), before + 1, "{execs:#?}");
        assert_eq!(execs[before].protocol, protocol);
        assert_eq!(execs[before].exit_code, Some(3));
        assert_eq!(execs[before].command, ["sh", "-c", EXEC_SCRIPT]);
    }
    for (kubectl, summary) in [
        (KUBECTL_WEBSOCKET, "get pods/exec -n shop web"),
        (KUBECTL_SPDY, "create pods/exec -n shop web"),
    ] {
        // Recorded once the stream has ended.
        let record = setup.wait_for_record_with(summary, |record| {
            record["parameters"].to_string().contains("stream=")
        });
        assert_eq!(text(&record, "operation"), "admin", "{record:#}");
        assert_eq!(record["decision"]["rule"], "exec-into-web", "{record:#}");
        let parameters = record["parameters"].to_string();
        assert!(record["duration_us"].as_u64().is_some(), "{record:#}");
        if kubectl == KUBECTL_WEBSOCKET {
            // Decoded: the exit code from the error channel, each stream's bytes.
            assert_eq!(text(&record, "tag"), "exit 3", "{record:#}");
            assert!(
                parameters.contains("stream=websocket v5.channel.k8s.io"),
                "{parameters}"
            );
            assert!(parameters.contains("stdout=12"), "{parameters}");
            assert!(parameters.contains("stderr=5"), "{parameters}");
            assert!(parameters.contains("exit=3"), "{parameters}");
        } else {
            // SPDY: judged at the upgrade, bytes and duration recorded.
            assert_eq!(text(&record, "tag"), "101", "{record:#}");
            assert!(parameters.contains("stream=spdy"), "{parameters}");
        }
        let down: u64 = parameters
            .split(['"', ','])
            .find_map(|p| p.strip_prefix("bytes_down="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(down > 0, "{parameters}");
    }

    // The WebSocket exec replays as a terminal: its output and exit code.
    let session = setup
        .daemon
        .sessions(Some("deployer"))
        .into_iter()
        .find(|session| {
            let id = session["id"].as_u64().unwrap_or_default();
            setup.daemon.show_session(id)["statements"]
                .as_array()
                .is_some_and(|statements| {
                    statements
                        .iter()
                        .any(|s| text(s, "sql") == "get pods/exec -n shop web")
                })
        })
        .expect("the exec's session");
    let id = session["id"].as_u64().expect("id").to_string();
    let replay = setup.daemon.sluice(&["replay", &id, "--instant"]);
    let replayed = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{replay:?}");
    assert!(replayed.contains("get pods/exec -n shop web"), "{replayed}");
    assert!(replayed.contains("hi from web"), "{replayed}");
    assert!(replayed.contains("oops"), "{replayed}");
    assert!(replayed.contains("[exit 3]"), "{replayed}");
}

#[test]
fn watched_secrets_are_masked_event_by_event() {
    sluice_tests::require_root();
    let setup = setup("");
    let kubeconfig = setup.kubeconfig.display().to_string();
    let cache = setup.dir.path().join("cache").display().to_string();
    let config = setup
        .daemon
        .control_socket
        .parent()
        .expect("daemon dir")
        .join("sluice.toml");
    let mut agent = std::process::Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&config)
        .args([
            "run",
            "--agent",
            "deployer",
            "--kubeconfig",
            &kubeconfig,
            "--",
        ])
        .args([KUBECTL_WEBSOCKET, "--cache-dir", &cache])
        .args(["get", "secrets", "-n", "shop", "-w", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kubectl");
    let stdout = agent.stdout.take().expect("stdout");
    let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let printed = std::sync::Arc::clone(&printed);
        std::thread::spawn(move || {
            use std::io::Read as _;
            let mut stdout = stdout;
            let mut buffer = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                printed
                    .lock()
                    .expect("printed")
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        })
    };
    let wait_for = |what: &dyn Fn() -> bool, about: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !what() {
            assert!(
                std::time::Instant::now() < deadline,
                "{about}: kubectl printed {}\n{}",
                printed.lock().expect("printed"),
                setup.daemon.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    // The watch is open once the stand-in has seen it.
    wait_for(
        &|| {
            setup
                .stand_in
                .seen()
                .iter()
                .any(|request| request.path_and_query.contains("watch="))
        },
        "no watch reached the stand-in",
    );
    // A Secret created now arrives as a watch event, masked.
    setup.stand_in.add_secrets(1);
    wait_for(
        &|| {
            printed
                .lock()
                .expect("printed")
                .contains("\"name\": \"bulk-0000\"")
        },
        "the watch event never arrived",
    );
    let _ = agent.kill();
    let _ = agent.wait();
    let _ = reader.join();
    let printed = printed.lock().expect("printed").clone();
    assert!(!printed.contains(SECRET_B64), "{printed}");
    // base64 of "bulk-secret-value-".
    assert!(!printed.contains("YnVsay1zZWNyZXQtdmFsdWUt"), "{printed}");
    assert_eq!(printed.matches(MASKED_B64).count(), 2, "{printed}");
    let record = setup.wait_for_record_with("watch secrets -n shop", |record| {
        record["masked"]["secret_values"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(text(&record, "operation"), "read", "{record:#}");
}

#[test]
fn a_client_certificate_is_presented_for_kubectl_which_holds_none() {
    sluice_tests::require_root();
    // The bot's client certificate, and a stand-in that accepts nothing else.
    let client = sluice_tests::pki::TestPki::for_host("kube-bot");
    let stand_in = KubeStandIn::start_requiring_client_certificates(&client.ca_pem);
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).expect("keys dir");
    let (_, cert_file, key_file) = client.write_to(&keys);
    // Without it, the API refuses (kubectl holds a token, no certificate).
    let direct = direct_kubeconfig(&stand_in, dir.path());
    let (code, _, stderr) = kubectl_direct(KUBECTL_WEBSOCKET, &direct, &["get", "pods"]);
    assert_ne!(code, 0);
    assert!(
        stderr.contains("the server has asked for the client to provide credentials"),
        "{stderr}"
    );
    let setup = setup_with(
        stand_in,
        &format!(
            "[kube-bot]\ncert_file = {:?}\nkey_file = {:?}\n",
            cert_file.display().to_string(),
            key_file.display().to_string()
        ),
        "",
        dir,
    );
    let before = setup.stand_in.seen().len();
    // Through sluice, with the agent's own token on the command line: it gets through
    // on the daemon's certificate, and the token is stripped.
    let (ok, stdout, stderr) =
        setup.kubectl(&["--token", "agent-own-token", "get", "pods", "-n", "shop"]);
    assert!(ok, "{stderr}\n{}", setup.daemon.log());
    assert!(stdout.contains("web"), "{stdout}");
    let seen = setup.stand_in.seen();
    assert!(seen.len() > before);
    assert!(
        seen[before..]
            .iter()
            .all(|request| request.client_certificate && request.authorization.is_none()),
        "{:#?}",
        &seen[before..]
    );
    let record = setup.wait_for_record("list pods -n shop");
    assert!(
        record["parameters"]
            .to_string()
            .contains("credential=kube-bot"),
        "{record:#}"
    );
}

#[test]
fn server_side_apply_is_a_write_judged_per_namespace() {
    sluice_tests::require_root();
    let setup = setup("");
    let manifest = setup.dir.path().join("settings.json");
    std::fs::write(
        &manifest,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"settings"},"data":{"mode":"green"}}"#,
    )
    .expect("manifest");
    let manifest = manifest.display().to_string();
    let apply = |namespace: &str| {
        setup.kubectl(&[
            "apply",
            "--server-side",
            "--validate=false",
            "-n",
            namespace,
            "-f",
            &manifest,
        ])
    };
    let (ok, stdout, stderr) = apply("shop");
    assert!(ok, "{stderr}\n{}", setup.daemon.log());
    assert!(
        stdout.contains("configmap/settings serverside-applied"),
        "{stdout}"
    );
    assert!(setup.stand_in.has("shop", "configmaps", "settings"));
    assert_forbidden(&apply("kube-system"), "default-deny");
    assert!(!setup.stand_in.has("kube-system", "configmaps", "settings"));
    let allowed = setup.wait_for_record("patch configmaps -n shop settings");
    assert_eq!(text(&allowed, "operation"), "write", "{allowed:#}");
    assert_eq!(allowed["decision"]["rule"], "shop-write", "{allowed:#}");
    let denied = setup.wait_for_record("patch configmaps -n kube-system settings");
    assert_eq!(denied["decision"]["action"], "deny", "{denied:#}");
    assert!(
        setup
            .stand_in
            .seen()
            .iter()
            .all(|request| !(request.method == "PATCH"
                && request.path_and_query.contains("kube-system"))),
        "a denied apply reached the API"
    );
}

#[test]
fn exec_stdin_is_recorded_and_closed_with_the_v5_signal() {
    sluice_tests::require_root();
    let setup = setup(EXEC_RULE);
    let config = setup
        .daemon
        .control_socket
        .parent()
        .expect("daemon dir")
        .join("sluice.toml");
    let cache = setup.dir.path().join("cache");
    let mut agent = std::process::Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&config)
        .args(["run", "--agent", "deployer", "--kubeconfig"])
        .arg(&setup.kubeconfig)
        .args(["--", KUBECTL_WEBSOCKET, "--cache-dir"])
        .arg(&cache)
        .args([
            "--request-timeout=30s",
            "exec",
            "-i",
            "web",
            "-n",
            "shop",
            "--",
            "sh",
            "-c",
            "read line; echo got $line",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start kubectl");
    {
        use std::io::Write as _;
        let mut stdin = agent.stdin.take().expect("stdin");
        stdin.write_all(b"hello\n").expect("write stdin");
        // Dropped: kubectl sees EOF and sends v5's close signal for stdin.
    }
    let output = agent.wait_with_output().expect("kubectl ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(stdout, "got hello\n");
    let execs = setup.stand_in.execs();
    assert_eq!(execs.len(), 1, "{execs:#?}");
    assert_eq!(execs[0].stdin, b"hello\n");
    assert!(execs[0].stdin_closed, "{execs:#?}");
    let record = setup.wait_for_record_with("get pods/exec -n shop web", |record| {
        record["parameters"].to_string().contains("stream=")
    });
    let parameters = record["parameters"].to_string();
    assert_eq!(text(&record, "tag"), "exit 0", "{record:#}");
    for expected in ["stdin=6", "stdin=closed", "stdout=10", "exit=0"] {
        assert!(parameters.contains(expected), "{expected}: {parameters}");
    }
}
