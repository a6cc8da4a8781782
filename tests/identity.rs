//! Workload identity: a CI job's OIDC token, verified by the daemon against an issuer the
//! tests make (real ES256 and RS256 keys, discovery and JWKS over HTTP on loopback), bound
//! to the agent run, required by policy, and carried by every record and export, while
//! the token itself reaches neither the agent nor any file.

use std::{path::Path, process::Output, time::Duration};

use serde_json::{Value, json};
use sluice_tests::{
    TestDaemon,
    oidc::{
        AUDIENCE, IssuerServer, SigningKey, github_claims, gitlab_claims, hs256, issuer_config,
        jti, kubernetes_claims, now, unsigned,
    },
    postgres::{APP_PASSWORD, PgCommand, shop_server},
};

/// Writes `token` to a file in the daemon's directory and runs `command` as `agent` with
/// `--identity file=...`.
fn run_with_token(daemon: &TestDaemon, agent: &str, token: &str, command: &[&str]) -> Output {
    let path = daemon.dir.path().join(format!("token-{}", jti()));
    std::fs::write(&path, token).expect("write the token file");
    let source = format!("file={}", path.display());
    let mut args = vec!["run", "--agent", agent, "--identity", &source, "--"];
    args.extend_from_slice(command);
    let output = daemon.sluice(&args);
    let _ = std::fs::remove_file(&path);
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `true` with the token and asserts it was refused for a reason containing `why`.
fn assert_refused(daemon: &TestDaemon, token: &str, why: &str) {
    let output = run_with_token(daemon, "ci", token, &["/bin/true"]);
    assert!(
        !output.status.success(),
        "a token that should be refused ({why}) was accepted: {}",
        stderr(&output)
    );
    let message = stderr(&output);
    assert!(
        message.contains("identity token refused") && message.contains(why),
        "refused, but not for {why:?}: {message}"
    );
}

fn assert_accepted(daemon: &TestDaemon, token: &str) -> String {
    let output = run_with_token(daemon, "ci", token, &["/bin/true"]);
    assert!(
        output.status.success(),
        "a valid token was refused: {}",
        stderr(&output)
    );
    stderr(&output)
}

/// Every file under `dir` (recursively) and the daemon log, searched for `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path)
                && bytes
                    .windows(needle.len())
                    .any(|window| window == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn tokens_verify_only_when_issuer_audience_time_algorithm_and_signature_hold_and_once() {
    let server = IssuerServer::start();
    let github = SigningKey::es256("gh-1");
    let gitlab = SigningKey::rs256("gl-1");
    let cluster = SigningKey::rs256("k8s-1");
    server.publish("github", &[&github]);
    server.publish("gitlab", &[&gitlab]);
    server.publish("k8s", &[&cluster]);
    let config = [
        issuer_config(&server, "github", &["ES256"], ""),
        issuer_config(&server, "gitlab", &["RS256"], ""),
        issuer_config(&server, "k8s", &["RS256"], ""),
    ]
    .join("\n");
    let daemon = TestDaemon::start_with_config("", "", &config);
    let iss = server.issuer("github");

    // Valid tokens shaped like each CI system's.
    let main = github.sign(&github_claims(&iss, AUDIENCE, "refs/heads/main"));
    let said = assert_accepted(&daemon, &main);
    assert!(
        said.contains(
            "identity verified: github repo:acme/api ref:refs/heads/main sha:9f1c2e7d4b6a8c0e1f2a3b4c5d6e7f8091a2b3c4 run:4411 actor:alice"
        ),
        "{said}"
    );
    let said = assert_accepted(
        &daemon,
        &gitlab.sign(&gitlab_claims(
            &server.issuer("gitlab"),
            AUDIENCE,
            "refs/heads/main",
        )),
    );
    assert!(
        said.contains("gitlab repo:acme/api ref:refs/heads/main"),
        "{said}"
    );
    assert!(said.contains("run:9001 actor:bob"), "{said}");
    let said = assert_accepted(
        &daemon,
        &cluster.sign(&kubernetes_claims(&server.issuer("k8s"), AUDIENCE)),
    );
    assert!(
        said.contains("k8s sub:system:serviceaccount:deploy:deployer"),
        "{said}"
    );

    // Each token binds one run: the same token again is refused.
    assert_refused(&daemon, &main, "already used");

    // An issuer nobody configured, and a configured issuer's name on another's key.
    let mut claims = github_claims(&server.issuer("evil"), AUDIENCE, "refs/heads/main");
    assert_refused(&daemon, &github.sign(&claims), "is not configured");
    claims["iss"] = json!(server.issuer("gitlab"));
    assert_refused(
        &daemon,
        &github.sign(&claims),
        "not among the issuer's configured algorithms",
    );

    // Another audience.
    let claims = github_claims(&iss, "sts.amazonaws.com", "refs/heads/main");
    assert_refused(&daemon, &github.sign(&claims), "audience");

    // Expired, and not valid yet (both well past the 60 s leeway).
    let mut claims = github_claims(&iss, AUDIENCE, "refs/heads/main");
    claims["iat"] = json!(now() - 1200);
    claims["nbf"] = json!(now() - 1200);
    claims["exp"] = json!(now() - 900);
    assert_refused(&daemon, &github.sign(&claims), "expired");
    let mut claims = github_claims(&iss, AUDIENCE, "refs/heads/main");
    claims["nbf"] = json!(now() + 900);
    assert_refused(&daemon, &github.sign(&claims), "not valid before");

    // `alg: none`, and HS256 keyed with the issuer's public key (algorithm confusion).
    let claims = github_claims(&iss, AUDIENCE, "refs/heads/main");
    assert_refused(&daemon, &unsigned(&claims, "gh-1"), "never accepted");
    let public_x = github.jwk()["x"].as_str().expect("x").to_owned();
    assert_refused(
        &daemon,
        &hs256(&claims, "gh-1", public_x.as_bytes()),
        "never accepted",
    );

    // A changed payload under a real signature.
    let genuine = github.sign(&github_claims(&iss, AUDIENCE, "refs/heads/feature/x"));
    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    let forged = github_claims(&iss, AUDIENCE, "refs/heads/main");
    parts[1] = base64_url(&forged.to_string());
    assert_refused(&daemon, &parts.join("."), "signature does not verify");

    // Every attempt is an audit event, bound or refused, and the export names why.
    let export = daemon.sluice(&["export", "--format", "jsonl"]);
    let export = String::from_utf8_lossy(&export.stdout).into_owned();
    let identity_events: Vec<Value> = export
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event.pointer("/event/activity/type") == Some(&json!("identity")))
        .collect();
    let outcome = |event: &Value| {
        event["event"]["activity"]["outcome"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(
        identity_events
            .iter()
            .filter(|e| outcome(e).as_deref() == Some("bound"))
            .count(),
        3,
        "{export}"
    );
    assert_eq!(
        identity_events
            .iter()
            .filter(|e| outcome(e).as_deref() == Some("refused"))
            .count(),
        9,
        "{export}"
    );
    assert!(
        export.contains("already used") && export.contains("audience"),
        "{export}"
    );

    // No token, no file: the raw tokens appear in no store file, state file or log.
    for token in [&main, &genuine] {
        let found = files_containing(daemon.dir.path(), token);
        assert!(found.is_empty(), "a raw token was written to {found:?}");
        let signature = token.rsplit('.').next().expect("signature part");
        let found = files_containing(daemon.dir.path(), signature);
        assert!(
            found.is_empty(),
            "a token's signature was written to {found:?}"
        );
    }
}

fn base64_url(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[test]
fn unknown_keys_are_fetched_once_per_cooldown_and_stale_keys_stop_verifying() {
    let server = IssuerServer::start();
    let old = SigningKey::es256("key-old");
    let new = SigningKey::es256("key-new");
    server.publish("github", &[&old]);
    let config = issuer_config(
        &server,
        "github",
        &["ES256"],
        "refresh = \"1h\"\nrefetch_cooldown = \"2s\"\nmax_stale = \"5s\"",
    );
    let daemon = TestDaemon::start_with_config("", "", &config);
    let iss = server.issuer("github");
    let token = |key: &SigningKey| key.sign(&github_claims(&iss, AUDIENCE, "refs/heads/main"));
    assert_accepted(&daemon, &token(&old));

    // A token signed with a key the issuer has not published yet: one refetch, then no
    // more until the cooldown has passed.
    std::thread::sleep(Duration::from_millis(2100));
    let before = server.jwks_fetches();
    assert_refused(&daemon, &token(&new), "no key \"key-new\"");
    assert_eq!(
        server.jwks_fetches(),
        before + 1,
        "an unknown kid refetches once"
    );
    assert_refused(&daemon, &token(&new), "no key \"key-new\"");
    assert_eq!(
        server.jwks_fetches(),
        before + 1,
        "within the cooldown, no refetch"
    );

    // The issuer rotates: the new key verifies after the next refetch.
    server.publish("github", &[&old, &new]);
    std::thread::sleep(Duration::from_millis(2100));
    assert_accepted(&daemon, &token(&new));
    let fetched_at = std::time::Instant::now();

    // The issuer goes down: the keys fetched last keep verifying until max_stale.
    server.set_up(false);
    assert_accepted(&daemon, &token(&old));
    assert_accepted(&daemon, &token(&new));
    std::thread::sleep(Duration::from_secs(6).saturating_sub(fetched_at.elapsed()));
    assert_refused(&daemon, &token(&new), "past max_stale");

    // Back up: the next token refreshes the set and verifies.
    server.set_up(true);
    std::thread::sleep(Duration::from_millis(2100));
    assert_accepted(&daemon, &token(&new));
    assert!(
        daemon.log().contains("cannot fetch the key set"),
        "the outage is logged"
    );
}

#[test]
fn a_daemon_restarted_offline_verifies_with_the_persisted_keys_and_remembers_used_tokens() {
    let server = IssuerServer::start();
    let key = SigningKey::rs256("gl-1");
    server.publish("gitlab", &[&key]);
    // A second issuer for an air-gapped host: keys from a file, no fetching at all.
    let airgapped = SigningKey::es256("airgap-1");
    let tmp = tempfile::tempdir().expect("tempdir");
    let jwks_file = tmp.path().join("jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [airgapped.jwk()]}).to_string()).expect("jwks");
    let airgapped_config = format!(
        "[[identity.issuer]]\nname = \"airgapped\"\nissuer = \"https://ci.airgapped.invalid\"\naudience = {AUDIENCE:?}\nalgorithms = [\"ES256\"]\njwks_file = {jwks_file:?}\n"
    );
    let config = format!(
        "{}\n{airgapped_config}",
        issuer_config(&server, "gitlab", &["RS256"], "")
    );
    let mut daemon = TestDaemon::start_with_config("", "", &config);
    let iss = server.issuer("gitlab");
    let first = key.sign(&gitlab_claims(&iss, AUDIENCE, "refs/heads/main"));
    assert_accepted(&daemon, &first);

    server.set_up(false);
    daemon.restart();
    let fetches = server.jwks_fetches();
    assert_accepted(
        &daemon,
        &key.sign(&gitlab_claims(&iss, AUDIENCE, "refs/heads/main")),
    );
    assert_eq!(
        server.jwks_fetches(),
        fetches,
        "verified from the persisted set"
    );
    assert_refused(&daemon, &first, "already used");

    let said = assert_accepted(
        &daemon,
        &airgapped.sign(&github_claims(
            "https://ci.airgapped.invalid",
            AUDIENCE,
            "refs/heads/main",
        )),
    );
    assert!(
        said.contains("airgapped sub:repo:acme/api:ref:refs/heads/main"),
        "{said}"
    );
}

#[test]
fn the_agent_never_sees_the_token_in_its_environment_or_arguments() {
    let server = IssuerServer::start();
    let key = SigningKey::es256("gh-1");
    server.publish("github", &[&key]);
    let config = issuer_config(&server, "github", &["ES256"], "");
    let daemon = TestDaemon::start_with_config("", "", &config);
    let iss = server.issuer("github");
    // Prints the agent's environment, its own argv and its parent's.
    let script = "tr '\\0' '\\n' < /proc/self/environ; echo ---; \
                  tr '\\0' ' ' < /proc/self/cmdline; echo; tr '\\0' ' ' < /proc/$PPID/cmdline; echo";
    let run = |scrub: bool, token: &str| {
        let endpoint = server.github_request_endpoint("request-secret-42", token);
        let mut args = vec!["run", "--agent", "ci", "--identity", "github"];
        if scrub {
            args.push("--scrub-token-source");
        }
        args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
        let output = std::process::Command::new(sluice_tests::sluice_bin())
            .arg("--config")
            .arg(&daemon.config_path)
            .args(&args)
            .env("ACTIONS_ID_TOKEN_REQUEST_URL", &endpoint)
            .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-secret-42")
            .env("SLUICE_LOG", "warn")
            .output()
            .expect("run sluice");
        assert!(output.status.success(), "{}", stderr(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let token = key.sign(&github_claims(&iss, AUDIENCE, "refs/heads/main"));
    let seen = run(false, &token);
    let signature = token.rsplit('.').next().expect("signature");
    assert!(!seen.contains(signature), "the agent saw the token: {seen}");
    assert!(
        seen.contains("ACTIONS_ID_TOKEN_REQUEST_URL="),
        "without scrubbing the request variables stay: {seen}"
    );
    assert_eq!(server.requested_audiences(), vec![AUDIENCE.to_owned()]);

    let token = key.sign(&github_claims(&iss, AUDIENCE, "refs/heads/main"));
    let seen = run(true, &token);
    assert!(
        !seen.contains(token.rsplit('.').next().expect("signature")),
        "{seen}"
    );
    assert!(
        !seen.contains("ACTIONS_ID_TOKEN_REQUEST"),
        "scrubbed: {seen}"
    );
    assert!(!seen.contains("request-secret-42"), "scrubbed: {seen}");

    // GitLab hands the token over in a variable: that variable never reaches the agent.
    let gitlab_token = key.sign(&github_claims(&iss, AUDIENCE, "refs/heads/main"));
    let output = std::process::Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args([
            "run",
            "--agent",
            "ci",
            "--identity",
            "gitlab=SLUICE_ID_TOKEN",
            "--identity-issuer",
            "github",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .env("SLUICE_ID_TOKEN", &gitlab_token)
        .env("SLUICE_LOG", "warn")
        .output()
        .expect("run sluice");
    assert!(output.status.success(), "{}", stderr(&output));
    let seen = String::from_utf8_lossy(&output.stdout);
    assert!(!seen.contains("SLUICE_ID_TOKEN"), "{seen}");
    assert!(
        !seen.contains(gitlab_token.rsplit('.').next().expect("signature")),
        "{seen}"
    );
}

/// The policy of the README's walkthrough: `deployer` is GitHub's acme (owner 4242) deploy
/// workflow; it may read `pg` from any ref and write only from main.
fn deployer_policy(port: u16) -> String {
    format!(
        r#"[[agent]]
name = "deployer"
identity = {{ issuer = "github", claims = {{ repository_owner_id = "4242", job_workflow_ref = "acme/api/.github/workflows/deploy.yml@*" }} }}

[[resource]]
name = "pg"
addresses = ["127.0.0.2"]
ports = [{port}]
protocol = "postgres"

[[rule]]
name = "deployer-reads"
agent = "deployer"
resource = "pg"
operations = ["read"]
action = "allow"

[[rule]]
name = "main-writes"
agent = "deployer"
resource = "pg"
operations = ["write"]
action = "allow"
when = {{ claims = {{ ref = "refs/heads/main" }} }}
"#
    )
}

#[test]
fn the_same_agent_writes_from_main_but_not_from_a_feature_branch_and_records_say_who() {
    let pg = shop_server();
    let server = IssuerServer::start();
    let key = SigningKey::rs256("gh-rsa");
    server.publish("github", &[&key]);
    // GitHub's real issuer URL cannot be served here, so the owner pin is required of
    // the test issuer through its own name: `github` on loopback is not shared. The
    // shared-issuer check itself is unit-tested (policy::tests).
    let config = issuer_config(&server, "github", &["RS256"], "");
    let daemon = TestDaemon::start_with_config(&deployer_policy(pg.port()), "", &config);
    let iss = server.issuer("github");

    let psql = |git_ref: &str, sql: &str| {
        let token = key.sign(&github_claims(&iss, AUDIENCE, git_ref));
        let path = daemon.dir.path().join(format!("token-{}", jti()));
        std::fs::write(&path, &token).expect("token file");
        let source = format!("file={}", path.display());
        let output =
            PgCommand::agent_with_options(&daemon, "deployer", &["--identity", &source], "psql")
                .password(APP_PASSWORD)
                .args([
                    "-X",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-At",
                    "-h",
                    "127.0.0.2",
                    "-p",
                ])
                .arg(pg.port().to_string())
                .args(["-U", "app", "-d", "shop", "-c", sql])
                .output();
        let _ = std::fs::remove_file(&path);
        (output, token)
    };

    let (output, main_token) = psql(
        "refs/heads/main",
        "INSERT INTO orders VALUES (10, 'from main')",
    );
    assert!(
        output.status.success(),
        "main may write: {}",
        stderr(&output)
    );
    let (output, feature_token) = psql(
        "refs/heads/feature/x",
        "INSERT INTO orders VALUES (11, 'from a branch')",
    );
    assert!(!output.status.success(), "a feature branch may not write");
    let message = stderr(&output);
    eprintln!("the feature branch's write, as psql reported it:\n{message}");
    assert!(
        message.contains("42501") || message.contains("denied"),
        "{message}"
    );
    assert!(
        message.contains("refs/heads/feature/x"),
        "the refusal says which claim failed: {message}"
    );
    let (output, _) = psql("refs/heads/feature/x", "SELECT count(*) FROM orders");
    assert!(
        output.status.success(),
        "a feature branch may read: {}",
        stderr(&output)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "4");

    // Without an identity the process is not `deployer` at all.
    let output = PgCommand::agent(&daemon, "deployer", "psql")
        .password(APP_PASSWORD)
        .args(["-X", "-At", "-h", "127.0.0.2", "-p"])
        .arg(pg.port().to_string())
        .args(["-U", "app", "-d", "shop", "-c", "SELECT 1"])
        .output();
    assert!(!output.status.success(), "no identity, no access");

    // The session records say who: repository, ref, commit, run and actor.
    let sessions = daemon.sessions(Some("deployer"));
    let with_identity: Vec<&Value> = sessions
        .iter()
        .filter(|s| !s["identity"].is_null())
        .collect();
    assert_eq!(with_identity.len(), 3, "{sessions:#?}");
    let refs: Vec<&str> = with_identity
        .iter()
        .map(|s| s["identity"]["claims"]["ref"].as_str().expect("ref"))
        .collect();
    assert!(
        refs.contains(&"refs/heads/main") && refs.contains(&"refs/heads/feature/x"),
        "{refs:?}"
    );
    let first = with_identity[0]["identity"].clone();
    assert_eq!(first["issuer"], "github");
    assert_eq!(first["claims"]["repository"], "acme/api");
    assert_eq!(first["claims"]["actor"], "alice");
    assert_eq!(first["claims"]["run_id"], "4411");
    assert_eq!(
        first["subject"]
            .as_str()
            .map(|s| s.starts_with("repo:acme/api:ref:")),
        Some(true)
    );

    let id = with_identity[0]["id"].as_u64().expect("id").to_string();
    let shown = daemon.sluice(&["sessions", "show", &id]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    eprintln!("sluice sessions show {id}:\n{shown}");
    assert!(
        shown.contains("identity       github repo:acme/api ref:refs/heads/"),
        "{shown}"
    );
    assert!(shown.contains("run:4411 actor:alice"), "{shown}");

    // OCSF: the statements of the run carry the actor and the token's issuer.
    let export = daemon.sluice(&["export", "--format", "ocsf"]);
    assert!(export.status.success(), "{}", stderr(&export));
    let export = String::from_utf8_lossy(&export.stdout).into_owned();
    let statements: Vec<Value> = export
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|event| event["unmapped"]["activity"] == "statement")
        .collect();
    assert!(!statements.is_empty(), "{export}");
    for event in &statements {
        assert_eq!(event["actor"]["user"]["name"], "alice", "{event:#}");
        assert_eq!(event["actor"]["user"]["org"]["name"], "acme", "{event:#}");
        assert_eq!(
            event["actor"]["session"]["issuer"],
            iss.as_str(),
            "{event:#}"
        );
        assert!(
            event["unmapped"]["identity"]["claims"]["sha"].is_string(),
            "{event:#}"
        );
    }
    assert!(
        statements
            .iter()
            .any(
                |e| e["unmapped"]["identity"]["claims"]["ref"] == "refs/heads/feature/x"
                    && e["status"] != "Success"
            ),
        "the refused write is exported with its ref"
    );

    // The raw tokens are nowhere: store, state, log or export.
    for token in [&main_token, &feature_token] {
        let signature = token.rsplit('.').next().expect("signature");
        assert!(files_containing(daemon.dir.path(), signature).is_empty());
        assert!(!export.contains(signature));
    }
}

#[test]
fn a_held_write_shows_the_approver_who_asked_and_its_record_keeps_the_identity() {
    let pg = shop_server();
    let server = IssuerServer::start();
    let key = SigningKey::es256("gh-1");
    server.publish("github", &[&key]);
    let policy = deployer_policy(pg.port()).replace(
        "operations = [\"write\"]\naction = \"allow\"",
        "operations = [\"write\"]\naction = \"review\"",
    );
    let daemon = TestDaemon::start_with_config(
        &policy,
        "",
        &issuer_config(&server, "github", &["ES256"], ""),
    );
    let token = key.sign(&github_claims(
        &server.issuer("github"),
        AUDIENCE,
        "refs/heads/main",
    ));
    let path = daemon.dir.path().join("token.jwt");
    std::fs::write(&path, &token).expect("token file");
    let source = format!("file={}", path.display());
    let mut psql = PgCommand::agent_with_options(
        &daemon,
        "deployer",
        &["--identity", &source, "--user", "nobody"],
        "psql",
    )
    .password(APP_PASSWORD)
    .args([
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
        "-h",
        "127.0.0.2",
        "-p",
    ])
    .arg(pg.port().to_string())
    .args([
        "-U",
        "app",
        "-d",
        "shop",
        "-c",
        "UPDATE orders SET item = 'scones' WHERE id = 2",
    ])
    .spawn();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let hold = loop {
        let listed = daemon.sluice(&["approvals", "list", "--json"]);
        let held: Vec<Value> = serde_json::from_slice(&listed.stdout).expect("approvals JSON");
        if let Some(hold) = held.into_iter().next() {
            break hold;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was held: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        hold["identity"]["claims"]["repository"], "acme/api",
        "{hold:#}"
    );
    assert_eq!(hold["identity"]["claims"]["actor"], "alice", "{hold:#}");
    assert_eq!(
        hold["identity"]["claims"]["ref"], "refs/heads/main",
        "{hold:#}"
    );
    let listed = daemon.sluice(&["approvals", "list"]);
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains("identity: github repo:acme/api ref:refs/heads/main"),
        "{listed}"
    );

    let id = hold["id"].as_u64().expect("id").to_string();
    let approved = daemon.sluice(&["approve", &id, "--reason", "release 1.2"]);
    assert!(approved.status.success(), "{}", stderr(&approved));
    let status = psql.wait().expect("psql");
    assert!(status.success(), "the approved write ran");
    assert_eq!(
        pg.psql_local("app", "shop", "SELECT item FROM orders WHERE id = 2")
            .trim(),
        "scones"
    );

    let session = daemon
        .sessions(Some("deployer"))
        .into_iter()
        .next()
        .expect("a session");
    let id = session["id"].as_u64().expect("id").to_string();
    let shown = daemon.sluice(&["sessions", "show", &id, "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("show JSON");
    let statement = &shown["statements"][0];
    assert_eq!(
        statement["approval"]["outcome"], "approved",
        "{statement:#}"
    );
    assert_eq!(
        statement["identity"]["claims"]["sha"], "9f1c2e7d4b6a8c0e1f2a3b4c5d6e7f8091a2b3c4",
        "{statement:#}"
    );
    assert_eq!(
        statement["identity"]["subject"],
        "repo:acme/api:ref:refs/heads/main"
    );
}

#[test]
fn a_run_keeps_its_identity_across_a_daemon_restart_and_is_unbound_when_it_ends() {
    let server = IssuerServer::start();
    let key = SigningKey::es256("gh-1");
    server.publish("github", &[&key]);
    let mut daemon = TestDaemon::start_with_config(
        sluice_tests::PROBE_SINKS_POLICY,
        "",
        &issuer_config(&server, "github", &["ES256"], ""),
    );
    let sink = sluice_tests::Sink::start("127.0.0.2:0");
    let dial = sink.addr.to_string();
    let token = key.sign(&github_claims(
        &server.issuer("github"),
        AUDIENCE,
        "refs/heads/main",
    ));
    let token_path = daemon.dir.path().join("token.jwt");
    std::fs::write(&token_path, &token).expect("token file");
    let source = format!("file={}", token_path.display());
    // The run waits for a go file, so that the daemon restarts while it runs.
    let go = daemon.dir.path().join("go");
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.1; done; exec {probe} tcp {dial}",
        go = go.display(),
        probe = sluice_tests::probe_bin().display(),
    );
    let run = std::process::Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args([
            "run",
            "--agent",
            "probe",
            "--identity",
            &source,
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .env("SLUICE_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the run");
    let runs_file = daemon.dir.path().join("state/identity/runs.json");
    let bound = |file: &Path| {
        std::fs::read_to_string(file).is_ok_and(|text| text.contains("\"agent\":\"probe\""))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !bound(&runs_file) {
        assert!(
            std::time::Instant::now() < deadline,
            "the run was not bound: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    daemon.restart();
    std::fs::write(&go, "").expect("go");
    let output = run.wait_with_output().expect("the run");
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("no probe report ({e}): {}", stderr(&output)));
    assert_eq!(report["ok"], true, "{report}");
    let session = daemon.closed_session("probe", &dial);
    assert_eq!(
        session["identity"]["claims"]["ref"], "refs/heads/main",
        "{session:#}"
    );
    assert_eq!(
        session["identity"]["claims"]["repository"], "acme/api",
        "{session:#}"
    );

    // The run ended: its binding and its cgroup go.
    let run_cgroup = sluice_tests::cgroup2_mount().join(
        session["cgroup"]
            .as_str()
            .expect("cgroup")
            .trim_start_matches('/'),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bound(&runs_file) || run_cgroup.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the ended run is still bound ({}) or its cgroup {} remains",
            bound(&runs_file),
            run_cgroup.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(daemon.log().contains("run ended; identity unbound"));
}
