//! SSH through sluice with the real OpenSSH: an agent with no key of its own reaches a
//! real sshd through the daemon, which presents a host certificate from its CA, logs in
//! with its own key, judges every channel request and records it.

use std::{process::Output, time::Duration};

use serde_json::Value;
use sluice_tests::{
    TestDaemon,
    ssh::{HOST, SshClient, SshServer, write_file},
};

const AGENT: &str = "deployer";

fn rule(operations: &str, action: &str) -> String {
    format!(
        "[[rule]]\nagent = {AGENT:?}\nresource = \"hosts\"\noperations = [{operations}]\naction = {action:?}\n\n"
    )
}

fn start(server: &SshServer, rules: &str) -> (TestDaemon, SshClient) {
    let daemon = TestDaemon::start_with_credentials(
        &server.policy("hosts", &[AGENT], rules),
        &server.credentials("ssh-key"),
    );
    let client = SshClient::new(&daemon);
    (daemon, client)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn explain(output: &Output, daemon: &TestDaemon, server: &SshServer) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}\ndaemon:\n{}\nsshd:\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr),
        daemon.log(),
        server.log()
    )
}

/// The statements (channel requests) of every closed session of the agent.
fn requests(daemon: &TestDaemon, at_least: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = Vec::new();
        for session in daemon.sessions(Some(AGENT)) {
            let id = session["id"].as_u64().expect("id");
            let shown = daemon.show_session(id);
            if let Some(statements) = shown["statements"].as_array() {
                all.extend(statements.iter().cloned());
            }
        }
        if all.len() >= at_least || std::time::Instant::now() > deadline {
            return all;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_keyless_agent_runs_commands_like_directly() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"*\"", "allow"));
    let command = "echo out; echo err >&2; exit 3";
    let through = client.ssh(&daemon, AGENT, &server, &[], command);
    let direct = server.direct_ssh(Some(&server.client_key), command);
    assert_eq!(
        through.status.code(),
        Some(3),
        "{}",
        explain(&through, &daemon, &server)
    );
    assert_eq!(text(&through.stdout), text(&direct.stdout));
    assert_eq!(text(&through.stderr), text(&direct.stderr));
    assert_eq!(text(&through.stdout), "out\n");
    assert_eq!(
        text(&through.stderr),
        "err\n",
        "no host key prompt or warning"
    );

    // 50 MB through stdin and back through stdout, intact (sshd rekeys every 1 MB).
    let mut data = vec![0u8; 50 * 1024 * 1024];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for chunk in data.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    let input = write_file(client.dir.path(), "input.bin", &data);
    let mut args = client.options();
    args.extend([
        "-p".into(),
        server.port.to_string(),
        format!("root@{HOST}"),
        "cat".into(),
    ]);
    let echoed = client.run(&daemon, AGENT, "ssh", &args, Some(&input));
    assert!(
        echoed.status.success(),
        "{}",
        explain(&echoed, &daemon, &server)
    );
    assert!(
        echoed.stdout == data,
        "50 MB came back altered ({} bytes)",
        echoed.stdout.len()
    );

    // The daemon's host key was never written down.
    assert_eq!(
        std::fs::read_to_string(&client.user_known_hosts).unwrap(),
        "",
        "the user known_hosts stays empty"
    );
    let global = std::fs::read_to_string(&client.global_known_hosts).unwrap();
    assert_eq!(
        global.lines().filter(|l| !l.starts_with('#')).count(),
        1,
        "only the CA line: {global}"
    );
    assert!(
        global.contains("@cert-authority * ssh-ed25519 "),
        "{global}"
    );
    // `uninstall` takes back only its own line; without it the daemon is a stranger.
    let path = client.global_known_hosts.to_str().unwrap();
    let removed = daemon.sluice(&["ssh-ca", "uninstall", "--known-hosts", path]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert_eq!(
        std::fs::read_to_string(&client.global_known_hosts).unwrap(),
        "# the test's own global known_hosts\n"
    );
    let stranger = client.ssh(&daemon, AGENT, &server, &[], "true");
    assert_eq!(stranger.status.code(), Some(255));
    assert!(
        text(&stranger.stderr).contains("Host key verification failed"),
        "{}",
        text(&stranger.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&client.user_known_hosts).unwrap(),
        "",
        "StrictHostKeyChecking=yes wrote nothing"
    );

    // Each request is a record with its command, class and exit status.
    let records = requests(&daemon, 2);
    let compound = records
        .iter()
        .find(|r| r["sql"] == command)
        .expect("the command's record");
    assert_eq!(compound["operation"], "unparsed");
    assert_eq!(compound["tag"], "exit 3");
    let cat = records
        .iter()
        .find(|r| r["sql"] == "cat")
        .expect("cat's record");
    assert_eq!(cat["decision"]["action"], "allow");
}

#[test]
fn a_direct_keyless_ssh_is_refused_by_the_server() {
    let server = SshServer::start();
    let direct = server.direct_ssh(None, "true");
    assert_eq!(direct.status.code(), Some(255));
    assert!(
        text(&direct.stderr).contains("Permission denied"),
        "{}",
        text(&direct.stderr)
    );
}

#[test]
fn command_classes_decide_allowed_denied_and_compound() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"read\", \"write\"", "allow"));
    let victim = server.dir.path().join("victim");
    std::fs::write(&victim, "still here").unwrap();

    let allowed = client.ssh(
        &daemon,
        AGENT,
        &server,
        &[],
        &format!("cat {}", victim.display()),
    );
    assert!(
        allowed.status.success(),
        "{}",
        explain(&allowed, &daemon, &server)
    );
    assert_eq!(text(&allowed.stdout), "still here");

    let denied = client.ssh(
        &daemon,
        AGENT,
        &server,
        &[],
        &format!("rm -rf {}", victim.display()),
    );
    assert_eq!(
        denied.status.code(),
        Some(1),
        "{}",
        explain(&denied, &daemon, &server)
    );
    assert!(
        text(&denied.stderr).contains("sluice: denied"),
        "{}",
        text(&denied.stderr)
    );
    assert!(victim.exists(), "a denied command never reaches the server");

    let compound = client.ssh(
        &daemon,
        AGENT,
        &server,
        &[],
        &format!("cat {0}; rm -f {0}", victim.display()),
    );
    assert_eq!(compound.status.code(), Some(1));
    assert!(text(&compound.stderr).contains("sluice: denied"));
    assert!(
        victim.exists(),
        "a compound command is unparsed, not allowed by read/write"
    );

    let records = requests(&daemon, 3);
    let classes: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["operation"].as_str().unwrap_or_default(),
                r["decision"]["action"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(classes.contains(&("read", "allow")), "{classes:?}");
    assert!(classes.contains(&("dangerous", "deny")), "{classes:?}");
    assert!(classes.contains(&("unparsed", "deny")), "{classes:?}");

    // Exported as OCSF SSH Activity (4007): a refused command fails, an allowed succeeds.
    let exported = daemon.sluice(&["export", "--format", "ocsf"]);
    assert!(exported.status.success(), "{}", text(&exported.stderr));
    let events: Vec<Value> = text(&exported.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let ssh: Vec<&Value> = events.iter().filter(|e| e["class_uid"] == 4007).collect();
    assert!(ssh.iter().any(|e| e["status"] == "Failure"), "{events:#?}");
    assert!(ssh.iter().any(|e| e["status"] == "Success"), "{events:#?}");
}

#[test]
fn forwards_agent_and_x11_are_refused_and_the_connection_goes_on() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"*\"", "allow"));
    let target = sluice_tests::free_port();
    // ssh asks for agent forwarding only with an agent socket, and for X11 only with a
    // DISPLAY: neither needs to exist for the request to be sent.
    let agent_path = client.dir.path().join("agent.sock");
    let mut ssh_agent = std::process::Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !agent_path.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent_socket = "ForwardAgent=yes".to_owned();
    for (flag, value) in [
        ("-R", format!("{target}:127.0.0.1:22")),
        ("-o", agent_socket),
        ("-X", String::new()),
    ] {
        // The agent holds no key: it is there only to be forwarded (or not).
        let mut args: Vec<String> = client
            .options()
            .into_iter()
            .map(|option| {
                if option == "IdentityAgent=none" {
                    format!("IdentityAgent={}", agent_path.display())
                } else {
                    option
                }
            })
            .collect();
        args.extend(["-o".into(), "ExitOnForwardFailure=yes".into(), flag.into()]);
        if !value.is_empty() {
            args.push(value.clone());
        }
        args.extend([
            "-p".into(),
            server.port.to_string(),
            format!("root@{HOST}"),
            "echo ran".into(),
        ]);
        let output = client.run_with_env(
            &daemon,
            AGENT,
            "ssh",
            &args,
            None,
            &[("DISPLAY", "127.0.0.1:99")],
        );
        match flag {
            // A refused remote forward ends the session under ExitOnForwardFailure.
            "-R" => assert_ne!(
                output.status.code(),
                Some(0),
                "{}",
                explain(&output, &daemon, &server)
            ),
            // Agent and X11 forwarding are refused; the command still runs.
            _ => {
                assert!(
                    output.status.success(),
                    "{flag}: {}",
                    explain(&output, &daemon, &server)
                );
                assert_eq!(text(&output.stdout), "ran\n");
            }
        }
    }
    let _ = ssh_agent.kill();
    let _ = ssh_agent.wait();
    // Each refused request's record lands when its session's writes are flushed: wait
    // for all three kinds, not for any three records (the commands have theirs too).
    let kinds = ["tcpip-forward", "auth-agent-req", "x11-req"];
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let records = loop {
        let records = requests(&daemon, kinds.len());
        let all_there = kinds
            .iter()
            .all(|kind| records.iter().any(|r| r["kind"] == *kind));
        if all_there || std::time::Instant::now() > deadline {
            break records;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for request in kinds {
        let record = records
            .iter()
            .find(|r| r["kind"] == request)
            .unwrap_or_else(|| panic!("no {request} record in {records:#?}\n{}", daemon.log()));
        assert_eq!(record["decision"]["action"], "deny");
    }
}

#[test]
fn control_master_sessions_are_each_judged() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"read\"", "allow"));
    let socket = client.dir.path().join("cm.sock");
    let socket_option = format!("ControlPath={}", socket.display());
    let master = client.ssh(
        &daemon,
        AGENT,
        &server,
        &[
            "-o",
            "ControlMaster=yes",
            "-o",
            &socket_option,
            "-o",
            "ControlPersist=30",
            "-f",
            "-N",
        ],
        "",
    );
    assert!(
        master.status.success(),
        "{}",
        explain(&master, &daemon, &server)
    );
    let shared = ["-o", "ControlMaster=no", "-o", socket_option.as_str()];
    let first = client.ssh(&daemon, AGENT, &server, &shared, "uname -s");
    assert_eq!(
        (first.status.code(), text(&first.stdout).as_str()),
        (Some(0), "Linux\n"),
        "{}",
        explain(&first, &daemon, &server)
    );
    // Each multiplexed client gets its own command's exit status. (sshd sends EOF
    // before the status: relayed in that order, the status used to be lost now and
    // then, and the client exited 255.)
    const RUNS: usize = 30;
    // Simple commands (a `read` rule allows them) ending 0, 1 and 2.
    let command_of = |run: usize| match run % 3 {
        0 => (format!("echo run {run}"), 0),
        1 => (format!("test -e /nonexistent/run-{run}"), 1),
        _ => (format!("ls /nonexistent/run-{run}"), 2),
    };
    for run in 0..RUNS {
        let (command, status) = command_of(run);
        let output = client.ssh(&daemon, AGENT, &server, &shared, &command);
        let expected_out = if status == 0 {
            format!("run {run}\n")
        } else {
            String::new()
        };
        assert_eq!(
            (output.status.code(), text(&output.stdout)),
            (Some(status), expected_out),
            "{command}: {}",
            explain(&output, &daemon, &server)
        );
    }
    let denied = client.ssh(&daemon, AGENT, &server, &shared, "touch /tmp/never");
    assert_eq!(denied.status.code(), Some(1));
    let second = client.ssh(&daemon, AGENT, &server, &shared, "id -u");
    assert_eq!(
        text(&second.stdout),
        "0\n",
        "{}",
        explain(&second, &daemon, &server)
    );
    let _ = client.ssh(
        &daemon,
        AGENT,
        &server,
        &["-O", "exit", "-o", &socket_option],
        "",
    );
    let sessions = daemon.sessions(Some(AGENT));
    assert_eq!(sessions.len(), 1, "one connection: {sessions:#?}");
    let expected = 3 + RUNS;
    let records = requests(&daemon, expected);
    assert_eq!(records.len(), expected, "{records:#?}");
    for run in 0..RUNS {
        let (command, status) = command_of(run);
        let record = records
            .iter()
            .find(|r| r["sql"] == command.as_str())
            .unwrap_or_else(|| panic!("no record of {command}: {records:#?}"));
        assert_eq!(record["tag"], format!("exit {status}"));
    }
}

#[test]
fn a_pinned_host_key_mismatch_is_refused_and_says_why() {
    let server = SshServer::start();
    let impostor = SshServer::start();
    // The resource pins the other server's key.
    let policy = server
        .policy("hosts", &[AGENT], &rule("\"*\"", "allow"))
        .replace(&server.pinned_known_hosts().display().to_string(), &{
            let path = server.dir.path().join("wrong_known_hosts");
            std::fs::write(
                &path,
                format!("[{HOST}]:{} {}\n", server.port, impostor.host_public_key),
            )
            .unwrap();
            path.display().to_string()
        });
    let daemon = TestDaemon::start_with_credentials(&policy, &server.credentials("ssh-key"));
    let client = SshClient::new(&daemon);
    let output = client.ssh(&daemon, AGENT, &server, &[], "echo ran");
    assert_eq!(
        output.status.code(),
        Some(255),
        "{}",
        explain(&output, &daemon, &server)
    );
    assert!(
        text(&output.stderr).contains("upstream_host_key_mismatch"),
        "{}",
        text(&output.stderr)
    );
    let sessions = daemon.wait_for_sessions(Some(AGENT), "the closed session", |s| {
        s.iter().any(|s| s["state"] == "closed")
    });
    assert!(
        sessions[0]["close_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("upstream_host_key_mismatch"),
        "{sessions:#?}"
    );
}

/// Runs `git args` in `dir` (as the test, not through sluice); it must succeed.
fn git_in(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        text(&output.stderr)
    );
    text(&output.stdout).trim().to_owned()
}

/// A bare repository on the test's sshd, seeded with one commit on `main` and `old`,
/// and the agent's clone of it made through sluice.
struct GitRepos {
    bare: std::path::PathBuf,
    work: std::path::PathBuf,
    ssh_command: String,
}

impl GitRepos {
    fn clone_through(server: &SshServer, daemon: &TestDaemon, client: &SshClient) -> Self {
        let bare = server.dir.path().join("app.git");
        git_in(
            server.dir.path(),
            &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
        );
        let seed = server.dir.path().join("seed");
        std::fs::create_dir(&seed).unwrap();
        git_in(&seed, &["init", "-q", "-b", "main"]);
        std::fs::write(seed.join("README"), "hello\n").unwrap();
        git_in(&seed, &["add", "README"]);
        git_in(&seed, &["commit", "-qm", "one"]);
        git_in(
            &seed,
            &["push", "-q", bare.to_str().unwrap(), "main", "main:old"],
        );
        let repos = Self {
            bare,
            work: client.dir.path().join("work"),
            ssh_command: client.git_ssh_command(),
        };
        let url = format!("ssh://root@{HOST}:{}{}", server.port, repos.bare.display());
        let cloned = repos.agent_git(
            daemon,
            client,
            &["clone", "-q", &url, repos.work.to_str().unwrap()],
        );
        assert!(
            cloned.status.success(),
            "{}",
            explain(&cloned, daemon, server)
        );
        assert_eq!(
            std::fs::read_to_string(repos.work.join("README")).unwrap(),
            "hello\n"
        );
        repos
    }

    /// `git args` run by the agent through sluice.
    fn agent_git(&self, daemon: &TestDaemon, client: &SshClient, args: &[&str]) -> Output {
        let env = [("GIT_SSH_COMMAND", self.ssh_command.as_str())];
        let mut all = vec![
            "-c".to_owned(),
            "user.name=t".to_owned(),
            "-c".to_owned(),
            "user.email=t@t".to_owned(),
        ];
        if self.work.exists() {
            all.extend(["-C".to_owned(), self.work.display().to_string()]);
        }
        all.extend(args.iter().map(|s| (*s).to_owned()));
        client.run_with_env(daemon, AGENT, "git", &all, None, &env)
    }

    /// A commit in the agent's clone; returns its id.
    fn commit(&self, file: &str, content: &str, message: &str) -> String {
        std::fs::write(self.work.join(file), content).unwrap();
        git_in(&self.work, &["add", file]);
        git_in(&self.work, &["commit", "-qm", message]);
        git_in(&self.work, &["rev-parse", "HEAD"])
    }

    /// What `rev` is on the server; empty when it does not exist.
    fn on_server(&self, rev: &str) -> String {
        let output = std::process::Command::new("git")
            .args(["--git-dir", self.bare.to_str().unwrap(), "rev-parse", "-q"])
            .args(["--verify", rev])
            .output()
            .unwrap();
        text(&output.stdout).trim().to_owned()
    }
}

/// The `git-push` records of the agent, once `count` of them are there.
fn push_records(daemon: &TestDaemon, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pushes: Vec<Value> = requests(daemon, 0)
            .into_iter()
            .filter(|r| r["kind"] == "git-push")
            .collect();
        if pushes.len() >= count || std::time::Instant::now() > deadline {
            return pushes;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn git_clone_and_push_are_judged_and_a_branch_deletion_refused() {
    let server = SshServer::start();
    let (daemon, client) = start(
        &server,
        &(rule("\"read\", \"write\"", "allow") + &rule("\"dangerous\"", "deny")),
    );
    let repos = GitRepos::clone_through(&server, &daemon, &client);
    let two = repos.commit("README", "hello again\n", "two");
    let pushed = repos.agent_git(&daemon, &client, &["push", "-q", "origin", "main"]);
    assert!(
        pushed.status.success(),
        "{}",
        explain(&pushed, &daemon, &server)
    );
    assert_eq!(repos.on_server("refs/heads/main"), two);

    let deleted = repos.agent_git(&daemon, &client, &["push", "-q", "origin", ":old"]);
    assert!(!deleted.status.success(), "a branch deletion is refused");
    assert!(
        text(&deleted.stderr)
            .contains("[remote rejected] old (sluice: delete: denied by policy rule"),
        "{}",
        text(&deleted.stderr)
    );
    assert!(
        !repos.on_server("refs/heads/old").is_empty(),
        "the branch is still there"
    );

    let pushes = push_records(&daemon, 2);
    let push = pushes
        .iter()
        .find(|r| r["decision"]["action"] == "deny")
        .unwrap_or_else(|| panic!("{pushes:#?}"));
    assert_eq!(push["operation"], "dangerous");
    assert!(
        push["sql"]
            .as_str()
            .unwrap()
            .contains("delete refs/heads/old")
    );
    let allowed = pushes
        .iter()
        .find(|r| r["decision"]["action"] == "allow")
        .unwrap_or_else(|| panic!("{pushes:#?}"));
    assert_eq!(allowed["operation"], "write");
    assert_eq!(allowed["sql"], "git push: update refs/heads/main");
}

#[test]
fn a_force_push_is_refused_while_fast_forwards_and_merges_pass() {
    let server = SshServer::start();
    let (daemon, client) = start(
        &server,
        &(rule("\"read\", \"write\"", "allow") + &rule("\"dangerous\"", "deny")),
    );
    let repos = GitRepos::clone_through(&server, &daemon, &client);
    let push = |args: &[&str]| {
        let mut all = vec!["push", "origin"];
        all.extend_from_slice(args);
        repos.agent_git(&daemon, &client, &all)
    };

    // A fast-forward of two commits, one of them a 2 MB file.
    repos.commit("big.bin", &"0123456789abcdef".repeat(128 * 1024), "big");
    let ahead = repos.commit("README", "two\n", "two");
    let pushed = push(&["main"]);
    assert!(
        pushed.status.success(),
        "{}",
        explain(&pushed, &daemon, &server)
    );
    assert_eq!(repos.on_server("refs/heads/main"), ahead);

    // A merge: two parents, one of them a side branch's commit the server never saw.
    git_in(&repos.work, &["checkout", "-q", "-b", "side", "HEAD~1"]);
    repos.commit("side.txt", "side\n", "side");
    git_in(&repos.work, &["checkout", "-q", "main"]);
    repos.commit("main.txt", "main\n", "main");
    git_in(&repos.work, &["merge", "-q", "--no-edit", "side"]);
    let merge = git_in(&repos.work, &["rev-parse", "HEAD"]);
    assert_eq!(
        git_in(&repos.work, &["rev-list", "--parents", "-n1", "HEAD"])
            .split(' ')
            .count(),
        3,
        "a merge commit"
    );
    let pushed = push(&["main"]);
    assert!(
        pushed.status.success(),
        "{}",
        explain(&pushed, &daemon, &server)
    );
    assert_eq!(repos.on_server("refs/heads/main"), merge);

    // Rewritten history: the merge replaced by another commit, force-pushed.
    git_in(&repos.work, &["reset", "-q", "--hard", "HEAD~1"]);
    let rewritten = repos.commit("README", "rewritten\n", "rewritten");
    let started = std::time::Instant::now();
    let forced = push(&["--force", "main"]);
    let took = started.elapsed();
    assert!(!forced.status.success(), "a force-push is refused");
    let stderr = text(&forced.stderr);
    assert!(
        stderr.contains(
            "[remote rejected] main -> main (sluice: force-push (not a fast-forward: the old commit is not an ancestor"
        ),
        "{}",
        explain(&forced, &daemon, &server)
    );
    assert_eq!(
        repos.on_server("refs/heads/main"),
        merge,
        "the server's main is unchanged"
    );
    // Objects of a refused pack may be left unreferenced, never referenced.
    assert!(!git_in(&repos.bare, &["for-each-ref"]).contains(&rewritten));
    // A rewind to a commit the server already has sends no commit: not provable, refused.
    git_in(&repos.work, &["reset", "-q", "--hard", &ahead]);
    let rewound = push(&["--force", "main"]);
    assert!(!rewound.status.success(), "a rewind is refused");
    assert_eq!(repos.on_server("refs/heads/main"), merge);

    let pushes = push_records(&daemon, 4);
    let refused: Vec<&Value> = pushes
        .iter()
        .filter(|r| r["decision"]["action"] == "deny")
        .collect();
    assert_eq!(refused.len(), 2, "{pushes:#?}");
    for record in &refused {
        assert_eq!(record["operation"], "dangerous");
        let summary = record["sql"].as_str().unwrap();
        assert!(
            summary.starts_with("git push: force-push refs/heads/main (not a fast-forward: "),
            "{summary}"
        );
        assert!(
            record["error"]
                .as_str()
                .unwrap_or_default()
                .contains("denied by policy rule"),
            "{record:#?}"
        );
    }
    for why in ["not an ancestor", "not in the pack"] {
        assert!(
            refused
                .iter()
                .any(|r| r["sql"].as_str().unwrap().contains(why)),
            "{why}: {refused:#?}"
        );
    }
    let allowed = pushes
        .iter()
        .filter(|r| r["decision"]["action"] == "allow")
        .count();
    assert_eq!(allowed, 2, "{pushes:#?}");
    eprintln!("the refused force-push took {took:?}");
}

#[test]
fn protected_and_read_only_refs_hold_while_other_refs_move() {
    let server = SshServer::start();
    let rules = format!(
        "[[rule]]\nagent = {AGENT:?}\nresource = \"hosts\"\noperations = [\"read\", \"write\", \"dangerous\"]\n\
         ssh = {{ protected_refs = [\"refs/heads/main\"], read_only_refs = [\"refs/tags/*\"] }}\naction = \"allow\"\n"
    );
    let (daemon, client) = start(&server, &rules);
    let repos = GitRepos::clone_through(&server, &daemon, &client);
    let push = |args: &[&str]| {
        let mut all = vec!["push", "origin"];
        all.extend_from_slice(args);
        repos.agent_git(&daemon, &client, &all)
    };
    let main = repos.on_server("refs/heads/main");

    // Another branch may be force-pushed (the rule allows `dangerous`).
    git_in(&repos.work, &["checkout", "-q", "-b", "feature"]);
    let feature = repos.commit("f.txt", "one\n", "feature");
    assert!(push(&["feature"]).status.success());
    git_in(&repos.work, &["reset", "-q", "--hard", "main"]);
    let rewritten = repos.commit("f.txt", "rewritten\n", "feature, rewritten");
    let forced = push(&["--force", "feature"]);
    assert!(
        forced.status.success(),
        "{}",
        explain(&forced, &daemon, &server)
    );
    assert_eq!(repos.on_server("refs/heads/feature"), rewritten);
    assert_ne!(feature, rewritten);

    // main moves forward...
    git_in(&repos.work, &["checkout", "-q", "main"]);
    let ahead = repos.commit("README", "ahead\n", "ahead");
    let pushed = push(&["main"]);
    assert!(
        pushed.status.success(),
        "{}",
        explain(&pushed, &daemon, &server)
    );
    assert_eq!(repos.on_server("refs/heads/main"), ahead);
    assert_ne!(ahead, main);

    // ...but may not be force-pushed or deleted.
    let forced = push(&["--force", "feature:main"]);
    assert!(!forced.status.success());
    assert!(
        text(&forced.stderr).contains("refs/heads/main is protected by rule"),
        "{}",
        text(&forced.stderr)
    );
    assert_eq!(repos.on_server("refs/heads/main"), ahead);
    let deleted = push(&[":main"]);
    assert!(!deleted.status.success());
    assert_eq!(repos.on_server("refs/heads/main"), ahead);

    // Tags are read-only: none may be created.
    git_in(&repos.work, &["tag", "v1"]);
    let tagged = push(&["v1"]);
    assert!(!tagged.status.success());
    assert!(
        text(&tagged.stderr).contains("refs/tags/v1 is read-only under rule"),
        "{}",
        text(&tagged.stderr)
    );
    assert!(repos.on_server("refs/tags/v1").is_empty());

    let pushes = push_records(&daemon, 6);
    let reasons: Vec<&str> = pushes
        .iter()
        .filter(|r| r["decision"]["action"] == "deny")
        .map(|r| r["decision"]["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 3, "{pushes:#?}");
    for why in [
        "refs/heads/main is protected by rule `test.toml:12` (ssh.protected_refs): a force-push (not a fast-forward",
        "refs/heads/main is protected by rule `test.toml:12` (ssh.protected_refs): deleting it is refused",
        "refs/tags/v1 is read-only under rule `test.toml:12` (ssh.read_only_refs): create refused",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(why)),
            "{why}: {reasons:?}"
        );
    }
}

#[test]
fn legacy_scp_reads_are_allowed_and_writes_denied() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"read\"", "allow"));
    let remote = server.dir.path().join("remote.txt");
    std::fs::write(&remote, "remote data\n").unwrap();
    let local = client.dir.path().join("copy.txt");
    let mut args = client.options();
    args.extend([
        "-O".into(),
        "-P".into(),
        server.port.to_string(),
        format!("root@{HOST}:{}", remote.display()),
        local.display().to_string(),
    ]);
    let read = client.run(&daemon, AGENT, "scp", &args, None);
    assert!(
        read.status.success(),
        "{}",
        explain(&read, &daemon, &server)
    );
    assert_eq!(std::fs::read_to_string(&local).unwrap(), "remote data\n");

    let target = server.dir.path().join("uploaded.txt");
    let mut args = client.options();
    args.extend([
        "-O".into(),
        "-P".into(),
        server.port.to_string(),
        local.display().to_string(),
        format!("root@{HOST}:{}", target.display()),
    ]);
    let write = client.run(&daemon, AGENT, "scp", &args, None);
    assert!(
        !write.status.success(),
        "{}",
        explain(&write, &daemon, &server)
    );
    assert!(!target.exists());
}

#[test]
fn hostile_bytes_and_a_slowloris_leave_the_daemon_serving() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"*\"", "allow"));
    let address = format!("{HOST}:{}", server.port);
    // A slowloris: a banner one byte every 200 ms, then silence, held open meanwhile.
    let slow = std::process::Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["run", "--agent", AGENT, "--", "python3", "-c"])
        .arg(format!(
            "import socket, time\ns = socket.create_connection(('{HOST}', {port}))\n\
             for b in b'SSH-2.0-slow':\n    s.send(bytes([b])); time.sleep(0.2)\ntime.sleep(30)\n",
            port = server.port
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let probe = sluice_tests::probe_bin();
    let probe = probe.to_str().unwrap();
    // Garbage instead of a banner; a banner and then a garbage packet; a banner and a
    // packet claiming 4 GB.
    for hex in [
        "00ffee0d0a".repeat(50),
        format!("{}{}", hex_of(b"SSH-2.0-hostile\r\n"), "ff".repeat(256)),
        format!("{}{}", hex_of(b"SSH-2.0-hostile\r\n"), "fffffff0"),
    ] {
        let _ = daemon.run_agent(AGENT, probe, &["raw", &address, &hex]);
    }
    let output = client.ssh(&daemon, AGENT, &server, &[], "echo still serving");
    assert!(
        output.status.success(),
        "{}",
        explain(&output, &daemon, &server)
    );
    assert_eq!(text(&output.stdout), "still serving\n");
    let mut slow = slow;
    let _ = slow.kill();
    let _ = slow.wait();
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_interactive_shell_is_admin_recorded_and_replayed() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"admin\"", "allow"));
    let script = write_file(
        client.dir.path(),
        "typed.txt",
        b"echo hello-from-the-shell\nexit 7\n",
    );
    let mut args = client.options();
    args.extend([
        "-tt".into(),
        "-p".into(),
        server.port.to_string(),
        format!("root@{HOST}"),
    ]);
    let shell = client.run(&daemon, AGENT, "ssh", &args, Some(&script));
    assert_eq!(
        shell.status.code(),
        Some(7),
        "{}",
        explain(&shell, &daemon, &server)
    );
    assert!(text(&shell.stdout).contains("hello-from-the-shell"));
    let records = requests(&daemon, 1);
    let record = records
        .iter()
        .find(|r| r["kind"] == "shell")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(record["operation"], "admin");
    assert_eq!(record["tag"], "exit 7");
    let session = daemon.sessions(Some(AGENT))[0]["id"].as_u64().unwrap();
    let replay = daemon.sluice(&["replay", &session.to_string(), "--speed", "0"]);
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let replayed = text(&replay.stdout);
    assert!(replayed.contains("terminal recording"), "{replayed}");
    assert!(replayed.contains("hello-from-the-shell"), "{replayed}");
    assert!(replayed.contains("[exit 7]"), "{replayed}");

    // Without `admin`, a shell is refused and nothing runs.
    let (daemon, client) = start(&server, &rule("\"read\"", "allow"));
    let refused = client.run(
        &daemon,
        AGENT,
        "ssh",
        &{
            let mut args = client.options();
            args.extend([
                "-tt".into(),
                "-p".into(),
                server.port.to_string(),
                format!("root@{HOST}"),
            ]);
            args
        },
        Some(&script),
    );
    assert_ne!(refused.status.code(), Some(7));
    assert!(!text(&refused.stdout).contains("hello-from-the-shell"));
}

#[test]
fn a_jump_through_one_server_to_another_is_intercepted_again() {
    let jump = SshServer::start();
    let inner = SshServer::start();
    let policy = format!(
        "[[agent]]\nname = {AGENT:?}\n\n\
         [[resource]]\nname = \"jump\"\naddresses = [{HOST:?}]\nports = [{jump_port}]\nprotocol = \"ssh\"\n\
         credential = \"jump-key\"\nknown_hosts = {jump_known:?}\n\n\
         [[resource]]\nname = \"inner\"\naddresses = [{HOST:?}]\nports = [{inner_port}]\nprotocol = \"ssh\"\n\
         credential = \"inner-key\"\nknown_hosts = {inner_known:?}\n\n\
         [[rule]]\nagent = {AGENT:?}\nresource = \"jump\"\noperations = [\"read\"]\naction = \"allow\"\n\n\
         [[rule]]\nagent = {AGENT:?}\nresource = \"inner\"\noperations = [\"read\"]\naction = \"allow\"\n",
        jump_port = jump.port,
        inner_port = inner.port,
        jump_known = jump.pinned_known_hosts().display().to_string(),
        inner_known = inner.pinned_known_hosts().display().to_string(),
    );
    let credentials = format!(
        "{}{}",
        jump.credentials("jump-key"),
        inner.credentials("inner-key")
    );
    let daemon = TestDaemon::start_with_credentials(&policy, &credentials);
    let client = SshClient::new(&daemon);
    let jump_spec = format!(
        "-oProxyCommand=ssh {} -W %h:%p -p {} root@{HOST}",
        client.options().join(" "),
        jump.port
    );
    let output = client.ssh(&daemon, AGENT, &inner, &[&jump_spec], "cat /etc/hostname");
    assert!(
        output.status.success(),
        "{}",
        explain(&output, &daemon, &inner)
    );
    // A forward to a destination no rule allows is refused.
    let unknown = sluice_tests::free_port();
    let refused = client.ssh(
        &daemon,
        AGENT,
        &jump,
        &["-W", &format!("{HOST}:{unknown}")],
        "",
    );
    assert_ne!(refused.status.code(), Some(0));
    // Two SSH sessions through the daemon (the jump and, nested, the inner one), plus the
    // refused forward's.
    let sessions = daemon.sessions(Some(AGENT));
    let inner_sessions: Vec<&Value> = sessions
        .iter()
        .filter(|s| s["destination"] == format!("{HOST}:{}", inner.port))
        .collect();
    assert!(!inner_sessions.is_empty(), "{sessions:#?}");
    assert!(
        inner_sessions
            .iter()
            .any(|s| !s["parent_session"].is_null()),
        "the inner session is nested in the jump's: {sessions:#?}"
    );
}

/// `ssh` as `agent` running as user `nobody` (root approves; nobody approves their own).
fn spawn_ssh_as_nobody(
    daemon: &TestDaemon,
    client: &SshClient,
    server: &SshServer,
    extra: &[&str],
    command: &str,
) -> std::process::Child {
    let mut args = client.options();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(["-p".into(), server.port.to_string(), format!("root@{HOST}")]);
    if !command.is_empty() {
        args.push(command.into());
    }
    std::process::Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["run", "--agent", AGENT, "--user", "nobody", "--", "ssh"])
        .args(&args)
        .env("SLUICE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_held_command_waits_for_approval_while_other_channels_work() {
    let server = SshServer::start();
    let (daemon, client) = start(
        &server,
        &(rule("\"read\"", "allow") + &rule("\"write\"", "review")),
    );
    let shared = client.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let control = format!("ControlPath={}", shared.join("cm.sock").display());
    let master = spawn_ssh_as_nobody(
        &daemon,
        &client,
        &server,
        &["-o", "ControlMaster=yes", "-o", &control, "-N"],
        "",
    );
    let socket = shared.join("cm.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no control master: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mux = ["-o", "ControlMaster=no", "-o", control.as_str()];
    let marker = server.dir.path().join("approved-marker");
    let held = spawn_ssh_as_nobody(
        &daemon,
        &client,
        &server,
        &mux,
        &format!("touch {}", marker.display()),
    );
    let hold = daemon.wait_for_hold(Duration::from_secs(20), |_| true);
    assert!(!marker.exists(), "held, not run");
    // Meanwhile another channel of the same connection runs.
    let other = spawn_ssh_as_nobody(&daemon, &client, &server, &mux, "uname -s");
    let other = sluice_tests::ssh::wait_with_timeout(other, Duration::from_secs(60));
    assert_eq!(
        text(&other.stdout),
        "Linux\n",
        "{}",
        explain(&other, &daemon, &server)
    );
    assert!(!marker.exists());
    let approved = daemon.sluice(&[
        "approve",
        &hold["id"].as_u64().unwrap().to_string(),
        "--reason",
        "change window",
    ]);
    assert!(approved.status.success(), "{}", text(&approved.stderr));
    let held = sluice_tests::ssh::wait_with_timeout(held, Duration::from_secs(60));
    assert_eq!(
        held.status.code(),
        Some(0),
        "{}",
        explain(&held, &daemon, &server)
    );
    assert!(marker.exists(), "ran once approved");
    let mut master = master;
    let _ = master.kill();
    let _ = master.wait();
    let records = requests(&daemon, 2);
    let touch = records
        .iter()
        .find(|r| r["sql"].as_str().unwrap_or_default().starts_with("touch"))
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(touch["approval"]["outcome"], "approved");
}

#[test]
fn command_rules_narrow_by_glob() {
    let server = SshServer::start();
    let rules = format!(
        "[[rule]]\nagent = {AGENT:?}\nresource = \"hosts\"\noperations = [\"read\", \"write\", \"unparsed\"]\n\
         ssh = {{ commands = [\"echo allowed *\", \"systemctl restart app\"] }}\naction = \"allow\"\n"
    );
    let (daemon, client) = start(&server, &rules);
    let allowed = client.ssh(&daemon, AGENT, &server, &[], "echo allowed by glob");
    assert!(
        allowed.status.success(),
        "{}",
        explain(&allowed, &daemon, &server)
    );
    assert_eq!(text(&allowed.stdout), "allowed by glob\n");
    for refused in [
        "echo something else",
        // A glob never spans a separator, even where `unparsed` is allowed.
        "echo allowed x; id",
        "echo allowed $(id)",
    ] {
        let output = client.ssh(&daemon, AGENT, &server, &[], refused);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{refused}: {}",
            explain(&output, &daemon, &server)
        );
        assert!(
            text(&output.stderr).contains("sluice: denied"),
            "{}",
            text(&output.stderr)
        );
        assert_eq!(text(&output.stdout), "", "{refused} never ran");
    }
}

/// `sftp -b BATCH` (and `scp` in its default SFTP mode) as the agent.
fn sftp_tool(
    daemon: &TestDaemon,
    client: &SshClient,
    server: &SshServer,
    program: &str,
    args: &[String],
) -> Output {
    let mut all = client.options();
    all.extend(["-P".into(), server.port.to_string()]);
    all.extend(args.iter().cloned());
    client.run(daemon, AGENT, program, &all, None)
}

#[test]
fn sftp_and_scp_reads_are_allowed_writes_and_removes_refused_and_the_session_goes_on() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"read\"", "allow"));
    let remote = server.dir.path().join("remote.txt");
    std::fs::write(&remote, "remote data\n").unwrap();
    let local = write_file(client.dir.path(), "local.txt", b"local data\n");
    let uploaded = server.dir.path().join("uploaded.txt");
    let fetched = client.dir.path().join("fetched.txt");
    // `-` before a batch command: go on after it fails. The refused upload, removal
    // and mkdir come first; the download after them shows the session went on.
    let batch = write_file(
        client.dir.path(),
        "batch",
        format!(
            "-put {local} {uploaded}\n-rm {remote}\n-mkdir {dir}\nget {remote} {fetched}\n",
            local = local.display(),
            uploaded = uploaded.display(),
            remote = remote.display(),
            dir = server.dir.path().join("newdir").display(),
            fetched = fetched.display(),
        )
        .as_bytes(),
    );
    let output = sftp_tool(
        &daemon,
        &client,
        &server,
        "sftp",
        &[
            "-b".into(),
            batch.display().to_string(),
            format!("root@{HOST}"),
        ],
    );
    assert!(
        output.status.success(),
        "{}",
        explain(&output, &daemon, &server)
    );
    assert_eq!(std::fs::read_to_string(&fetched).unwrap(), "remote data\n");
    assert!(
        !uploaded.exists(),
        "the refused upload never reached the server"
    );
    assert!(
        remote.exists(),
        "the refused removal never reached the server"
    );
    assert!(!server.dir.path().join("newdir").exists());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("Permission denied"), "{stderr}");

    // A refused request in a batch without `-` ends it with a failure.
    let strict = write_file(
        client.dir.path(),
        "strict",
        format!("put {} {}\n", local.display(), uploaded.display()).as_bytes(),
    );
    let output = sftp_tool(
        &daemon,
        &client,
        &server,
        "sftp",
        &[
            "-b".into(),
            strict.display().to_string(),
            format!("root@{HOST}"),
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        explain(&output, &daemon, &server)
    );
    assert!(!uploaded.exists());

    // scp speaks SFTP by default (OpenSSH ≥ 9.0): a download is allowed, an upload
    // refused.
    let copied = client.dir.path().join("copied.txt");
    let read = sftp_tool(
        &daemon,
        &client,
        &server,
        "scp",
        &[
            format!("root@{HOST}:{}", remote.display()),
            copied.display().to_string(),
        ],
    );
    assert!(
        read.status.success(),
        "{}",
        explain(&read, &daemon, &server)
    );
    assert_eq!(std::fs::read_to_string(&copied).unwrap(), "remote data\n");
    let write = sftp_tool(
        &daemon,
        &client,
        &server,
        "scp",
        &[
            local.display().to_string(),
            format!("root@{HOST}:{}", uploaded.display()),
        ],
    );
    assert!(
        !write.status.success(),
        "{}",
        explain(&write, &daemon, &server)
    );
    assert!(!uploaded.exists());

    // Each file request is a record with its class and decision.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let records = loop {
        let records = requests(&daemon, 1);
        let sftp: Vec<Value> = records
            .into_iter()
            .filter(|r| r["kind"].as_str().unwrap_or_default().starts_with("sftp-"))
            .collect();
        let has = |verb: &str, action: &str| {
            sftp.iter().any(|r| {
                r["sql"].as_str().unwrap_or_default().starts_with(verb)
                    && r["decision"]["action"] == action
            })
        };
        if (has("sftp open", "deny") && has("sftp remove", "deny") && has("sftp open", "allow"))
            || std::time::Instant::now() > deadline
        {
            break sftp;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let find = |prefix: &str, action: &str| {
        records
            .iter()
            .find(|r| {
                r["sql"].as_str().unwrap_or_default().starts_with(prefix)
                    && r["decision"]["action"] == action
            })
            .unwrap_or_else(|| panic!("no {action} {prefix}: {records:#?}"))
    };
    assert_eq!(find("sftp open", "allow")["operation"], "read");
    assert_eq!(find("sftp open", "deny")["operation"], "write");
    assert_eq!(find("sftp remove", "deny")["operation"], "dangerous");
    assert_eq!(find("sftp mkdir", "deny")["operation"], "write");
}

/// Drives `program args` in a pseudo-terminal of `rows`×`cols`: once `ready` appears,
/// resizes the terminal to 50×132 and types `stty size` until the remote shell reports
/// the new size, then types `exit 5`. Exits with the program's status.
const PTY_DRIVER: &str = r#"
import fcntl, os, pty, select, struct, sys, termios, time
def size(fd, rows, cols):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
pid, fd = pty.fork()
if pid == 0:
    size(0, 24, 80)
    os.execvp(sys.argv[1], sys.argv[1:])
seen = b""
def read_for(seconds):
    global seen
    deadline = time.time() + seconds
    while time.time() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return False
            if not chunk:
                return False
            seen += chunk
    return True
def wait_for(text, seconds):
    deadline = time.time() + seconds
    while text not in seen and time.time() < deadline:
        if not read_for(0.2):
            break
    return text in seen
os.write(fd, b"echo READY$((6*7))\n")
if not wait_for(b"READY42", 60):
    sys.stderr.write("no prompt: %r\n" % seen); sys.exit(90)
size(fd, 50, 132)
for attempt in range(100):
    os.write(fd, b"stty size\n")
    if wait_for(b"50 132", 0.5):
        break
else:
    sys.stderr.write("the size never changed: %r\n" % seen); sys.exit(91)
os.write(fd, b"exit 5\n")
while read_for(1.0):
    pass
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.exit(os.waitstatus_to_exitcode(status))
"#;

#[test]
fn a_terminal_resize_is_kept_in_the_recording() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"admin\"", "allow"));
    let mut args = vec![
        "-c".to_owned(),
        PTY_DRIVER.to_owned(),
        sluice_tests::sluice_bin().display().to_string(),
        "--config".into(),
        daemon.config_path.display().to_string(),
        "run".into(),
        "--agent".into(),
        AGENT.into(),
        "--".into(),
        "ssh".into(),
    ];
    args.extend(client.options());
    args.extend([
        "-t".into(),
        "-p".into(),
        server.port.to_string(),
        format!("root@{HOST}"),
    ]);
    let child = std::process::Command::new("python3")
        .args(&args)
        .env("SLUICE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = sluice_tests::ssh::wait_with_timeout(child, Duration::from_secs(120));
    assert_eq!(
        output.status.code(),
        Some(5),
        "{}",
        explain(&output, &daemon, &server)
    );
    let records = requests(&daemon, 1);
    let shell = records
        .iter()
        .find(|r| r["kind"] == "shell")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(shell["tag"], "exit 5");
    let session = daemon.sessions(Some(AGENT))[0]["id"].as_u64().unwrap();
    let replay = daemon.sluice(&["replay", &session.to_string(), "--speed", "0"]);
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let replayed = text(&replay.stdout);
    assert!(
        replayed.contains("[terminal resized to 132x50]"),
        "{replayed}"
    );
    // The resize comes before the output that shows it.
    let resized = replayed.find("[terminal resized to 132x50]").unwrap();
    let shown = replayed.rfind("50 132").expect("stty's answer replayed");
    assert!(resized < shown, "{replayed}");
}

#[test]
fn rsync_pulls_are_allowed_and_pushes_denied() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"read\"", "allow"));
    let remote = server.dir.path().join("remote.txt");
    std::fs::write(&remote, "remote data\n").unwrap();
    let ssh = format!("ssh {} -p {}", client.options().join(" "), server.port);
    let rsync = |from: String, to: String| {
        client.run(
            &daemon,
            AGENT,
            "rsync",
            &["-e".into(), ssh.clone(), from, to],
            None,
        )
    };
    let pulled = client.dir.path().join("pulled.txt");
    let pull = rsync(
        format!("root@{HOST}:{}", remote.display()),
        pulled.display().to_string(),
    );
    assert!(
        pull.status.success(),
        "{}",
        explain(&pull, &daemon, &server)
    );
    assert_eq!(std::fs::read_to_string(&pulled).unwrap(), "remote data\n");

    let pushed = server.dir.path().join("pushed.txt");
    let push = rsync(
        pulled.display().to_string(),
        format!("root@{HOST}:{}", pushed.display()),
    );
    assert!(
        !push.status.success(),
        "{}",
        explain(&push, &daemon, &server)
    );
    assert!(
        text(&push.stderr).contains("sluice: denied"),
        "{}",
        text(&push.stderr)
    );
    assert!(
        !pushed.exists(),
        "the refused push never reached the server"
    );

    let records = requests(&daemon, 2);
    let rsyncs: Vec<(&str, &str)> = records
        .iter()
        .filter(|r| r["kind"] == "rsync")
        .map(|r| {
            (
                r["operation"].as_str().unwrap_or_default(),
                r["decision"]["action"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(rsyncs.contains(&("read", "allow")), "{records:#?}");
    assert!(rsyncs.contains(&("write", "deny")), "{records:#?}");
}

#[test]
fn a_login_with_a_certificate_from_sluices_user_ca() {
    // The server trusts sluice's CA for user certificates and has no key of sluice's
    // in its authorized_keys.
    let server = SshServer::start_with(|dir| {
        format!(
            "TrustedUserCAKeys {}\n",
            dir.join("trusted_user_ca.pub").display()
        )
    });
    std::fs::write(server.dir.path().join("authorized_keys"), "").unwrap();
    let daemon = TestDaemon::start_with_credentials(
        &server.policy("hosts", &[AGENT], &rule("\"read\"", "allow")),
        "[ssh-key]\nssh_user_ca = true\nuser = \"root\"\n",
    );
    let shown = daemon.sluice(&["ssh-ca", "show"]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let ca_key = text(&shown.stdout)
        .lines()
        .find_map(|line| {
            line.split_once("@cert-authority * ")
                .map(|(_, key)| key.to_owned())
        })
        .unwrap_or_else(|| panic!("no CA line in {}", text(&shown.stdout)));
    std::fs::write(
        server.dir.path().join("trusted_user_ca.pub"),
        format!("{ca_key}\n"),
    )
    .unwrap();
    let client = SshClient::new(&daemon);
    let output = client.ssh(&daemon, AGENT, &server, &[], "id -un");
    assert_eq!(
        (output.status.code(), text(&output.stdout).as_str()),
        (Some(0), "root\n"),
        "{}",
        explain(&output, &daemon, &server)
    );
    // sshd accepted a certificate signed by the CA, for this resource.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !server
        .log()
        .contains("Accepted certificate ID \"sluice:hosts\"")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "sshd did not log the certificate:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_force_push_held_for_review_lands_once_approved() {
    let server = SshServer::start();
    let (daemon, client) = start(
        &server,
        &(rule("\"read\", \"write\"", "allow") + &rule("\"dangerous\"", "review")),
    );
    let repos = GitRepos::clone_through(&server, &daemon, &client);
    let before = repos.on_server("refs/heads/main");
    git_in(
        &repos.work,
        &["commit", "-q", "--amend", "-m", "one, rewritten"],
    );
    let rewritten = git_in(&repos.work, &["rev-parse", "HEAD"]);
    // The approver (root) may not be the agent: the push runs as nobody.
    let chmod = std::process::Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&repos.work)
        .status()
        .unwrap();
    assert!(chmod.success());
    let pushing = std::process::Command::new(sluice_tests::sluice_bin())
        .arg("--config")
        .arg(&daemon.config_path)
        .args(["run", "--agent", AGENT, "--user", "nobody", "--", "git"])
        .args(["-c", "safe.directory=*", "-C"])
        .arg(&repos.work)
        .args(["push", "--force", "origin", "main"])
        .env("SLUICE_LOG", "warn")
        .env("GIT_SSH_COMMAND", &repos.ssh_command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let hold = daemon.wait_for_hold(Duration::from_secs(30), |_| true);
    // Held with the whole pack but its trailer at the server: nothing changed yet.
    assert_eq!(repos.on_server("refs/heads/main"), before);
    let approved = daemon.sluice(&[
        "approve",
        &hold["id"].as_u64().unwrap().to_string(),
        "--reason",
        "history cleanup",
    ]);
    assert!(approved.status.success(), "{}", text(&approved.stderr));
    let pushed = sluice_tests::ssh::wait_with_timeout(pushing, Duration::from_secs(60));
    assert!(
        pushed.status.success(),
        "{}",
        explain(&pushed, &daemon, &server)
    );
    assert_eq!(repos.on_server("refs/heads/main"), rewritten);
    let pushes = push_records(&daemon, 1);
    let forced = pushes
        .iter()
        .find(|r| r["operation"] == "dangerous")
        .unwrap_or_else(|| panic!("{pushes:#?}"));
    assert_eq!(forced["approval"]["outcome"], "approved");
    assert!(
        forced["sql"]
            .as_str()
            .unwrap()
            .starts_with("git push: force-push refs/heads/main (not a fast-forward")
    );
}

#[test]
fn a_push_with_a_broken_pack_is_refused_and_changes_nothing() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rule("\"read\", \"write\"", "allow"));
    let repos = GitRepos::clone_through(&server, &daemon, &client);
    let main = repos.on_server("refs/heads/main");
    // An update of main announced by hand, then a pack whose only object is no zlib
    // stream.
    let line = format!(
        "{main} {} refs/heads/main\0report-status side-band-64k\n",
        "1".repeat(40)
    );
    let mut input = format!("{:04x}{line}0000", line.len() + 4).into_bytes();
    input.extend_from_slice(b"PACK\0\0\0\x02\0\0\0\x01");
    input.extend_from_slice(&[0x95, 0x0a]);
    input.extend_from_slice(&[0x42; 64]);
    let stdin = write_file(client.dir.path(), "broken-push", &input);
    let mut args = client.options();
    args.extend([
        "-p".into(),
        server.port.to_string(),
        format!("root@{HOST}"),
        format!("git-receive-pack '{}'", repos.bare.display()),
    ]);
    let pushed = client.run(&daemon, AGENT, "ssh", &args, Some(&stdin));
    assert_eq!(
        pushed.status.code(),
        Some(1),
        "{}",
        explain(&pushed, &daemon, &server)
    );
    assert!(
        text(&pushed.stderr).contains("sluice: protocol_error: unreadable pack"),
        "{}",
        text(&pushed.stderr)
    );
    assert_eq!(repos.on_server("refs/heads/main"), main);
    // The daemon goes on serving.
    let again = repos.agent_git(&daemon, &client, &["fetch", "-q", "origin"]);
    assert!(
        again.status.success(),
        "{}",
        explain(&again, &daemon, &server)
    );
    let records = requests(&daemon, 3);
    assert!(
        records.iter().any(|r| r["kind"] == "git-receive-pack"
            && r["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("protocol_error: unreadable pack")),
        "{records:#?}"
    );
}

#[test]
fn a_sha256_repository_is_judged_by_ref_too() {
    let server = SshServer::start();
    let (daemon, client) = start(
        &server,
        &(rule("\"read\", \"write\"", "allow") + &rule("\"dangerous\"", "deny")),
    );
    let bare = server.dir.path().join("sha256.git");
    git_in(
        server.dir.path(),
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            "--object-format=sha256",
            bare.to_str().unwrap(),
        ],
    );
    let repos = GitRepos {
        bare,
        work: client.dir.path().join("work256"),
        ssh_command: client.git_ssh_command(),
    };
    let url = format!("ssh://root@{HOST}:{}{}", server.port, repos.bare.display());
    let cloned = repos.agent_git(
        &daemon,
        &client,
        &["clone", "-q", &url, repos.work.to_str().unwrap()],
    );
    assert!(
        cloned.status.success(),
        "{}",
        explain(&cloned, &daemon, &server)
    );
    let push = |args: &[&str]| {
        let mut all = vec!["push", "origin"];
        all.extend_from_slice(args);
        repos.agent_git(&daemon, &client, &all)
    };
    repos.commit("a.txt", "one\n", "one");
    assert!(push(&["main"]).status.success(), "a creation");
    let two = repos.commit("a.txt", "two\n", "two");
    assert_eq!(two.len(), 64);
    let pushed = push(&["main"]);
    assert!(
        pushed.status.success(),
        "{}",
        explain(&pushed, &daemon, &server)
    );
    assert_eq!(repos.on_server("refs/heads/main"), two);
    git_in(
        &repos.work,
        &["commit", "-q", "--amend", "-m", "two, rewritten"],
    );
    let forced = push(&["--force", "main"]);
    assert!(!forced.status.success());
    assert!(
        text(&forced.stderr).contains("not an ancestor"),
        "{}",
        explain(&forced, &daemon, &server)
    );
    assert_eq!(repos.on_server("refs/heads/main"), two);
}
