//! The SSH proxy: the agent's SSH connection ends here, the server's starts here.
//!
//! Toward the agent a russh server presents a fresh host key with a certificate from
//! sluice's CA and accepts any login (the agent's identity comes from the kernel);
//! toward the server a russh client checks the pinned host key and logs in with the
//! daemon's credential. In between, nothing passes through unread: each channel
//! request (exec, shell, subsystem, env, pty, forwards) is judged on its own through
//! a [`Gate`], and only the allowed ones are replayed upstream, so a denied command
//! never reaches the server. One connection may carry many channels (ControlMaster);
//! each runs as its own future, so a request held for review stalls only its channel.
//!
//! russh traps this module avoids: handler callbacks run inside the connection's loop
//! (a hold there would stall keepalives and every channel), so callbacks only hand
//! work over; every channel's queue is drained (one full queue blocks them all); and
//! each direction of a channel is pumped separately, so a full window one way never
//! stops the other.

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt as _, stream::FuturesUnordered};
use russh::{
    Channel, ChannelId, ChannelMsg, MethodKind, MethodSet,
    keys::{Certificate, PrivateKey, PrivateKeyWithHashAlg, ssh_key},
    server::{self, Auth, Session},
};
use tokio::sync::{mpsc, oneshot};

use super::{
    ca::HostIdentity,
    command::{self, ExecCommand, PushedRef},
    push::{PushGuard, Refused},
    sftp,
};
use crate::{
    pipeline::{BoxFuture, ByteStream},
    policy::Operation,
    recording::Cast,
};

/// Environment variables an agent may set on the server: the locale and git's protocol
/// version. `BASH_ENV`, `LD_PRELOAD` and their like change what runs.
pub fn env_allowed(name: &str) -> bool {
    name == "LANG" || name == "GIT_PROTOCOL" || name.starts_with("LC_")
}

/// The most agent input buffered while its channel's request is held for review.
const MAX_BUFFERED_WHILE_HELD: usize = 1024 * 1024;
/// How long a channel waits for the agent to close its side after the server closed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// How long the server's EOF is held back waiting for the exit status (see
/// [`pump_down`]); sshd sends it within milliseconds, other servers may send none
/// until the client closes.
const EOF_HOLD: Duration = Duration::from_secs(5);

/// One channel request, decoded, for the policy.
#[derive(Clone, Debug)]
pub struct Request {
    /// `exec`, `shell`, `subsystem`, `env`, `x11-req`, `auth-agent-req`,
    /// `tcpip-forward`, `direct-tcpip`, `git-receive-pack` (its ref updates)...
    pub request: &'static str,
    pub class: Operation,
    /// The record's verb: `exec`, `git-receive-pack`, `scp`, `shell`, `sftp`...
    pub verb: String,
    /// The command line of an exec, the subsystem's name, the forward's `host:port`.
    pub command: Option<String>,
    /// What the record shows.
    pub summary: String,
    /// Set for requests sluice refuses whatever the policy says (forwards it cannot
    /// follow, agent forwarding, X11): why.
    pub refused: Option<&'static str>,
    /// A `git push`: the refs it changes, for the rule's `protected_refs` and
    /// `read_only_refs`.
    pub pushed: Vec<PushedRef>,
}

/// What the policy (and a human, for `review`) said.
pub struct Verdict<T> {
    pub allowed: bool,
    /// For a refusal: the sentence the agent reads.
    pub message: String,
    pub ticket: T,
}

/// How a judged request ended.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub exit_status: Option<u32>,
    pub exit_signal: Option<String>,
    /// Bytes the agent sent, the server's stdout and stderr.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub bytes_err: u64,
    /// Why it did not run or did not end normally.
    pub error: Option<String>,
    /// The terminal recording (asciicast v3) of a shell or an exec's output.
    pub cast: Option<Vec<u8>>,
    pub started: Option<Instant>,
}

/// What the proxy needs from the pipeline: judge each request (holding it under
/// `review` until a human decides or `agent_gone` fires) and record how it ended.
pub trait Gate: Sync {
    type Ticket: Send;
    fn decide(
        &self,
        request: Request,
        agent_gone: oneshot::Receiver<()>,
    ) -> impl Future<Output = Verdict<Self::Ticket>> + Send;
    fn finish(&self, ticket: Self::Ticket, outcome: Outcome) -> impl Future<Output = ()> + Send;
    /// Whether the policy would refuse `request` outright (a `review` is no refusal);
    /// nothing is recorded.
    fn refuses(&self, request: &Request) -> bool;
    /// Opens a `direct-tcpip` forward as a nested session and accepts the channel, or
    /// rejects it; `Err` says why not.
    fn forward(
        &self,
        host: String,
        port: u16,
        channel: Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
    ) -> impl Future<Output = Result<(), String>> + Send;
}

/// How the daemon logs in upstream.
#[derive(Clone)]
pub struct UpstreamLogin {
    /// The user to log in as; `None`: the user the agent named.
    pub user: Option<String>,
    pub key: Arc<PrivateKey>,
    /// A user certificate for `key`, when the credential is sluice's user CA.
    pub certificate: Option<Certificate>,
    /// Pinned host keys of the server (a known_hosts file).
    pub known_hosts: PathBuf,
    /// Names the server is pinned under: the IP literal and any host name.
    pub host_names: Vec<String>,
    pub port: u16,
}

/// Everything one proxied connection needs.
pub struct ProxyConfig {
    pub identity: HostIdentity,
    pub login: UpstreamLogin,
    pub destination: SocketAddr,
}

/// Events from the russh handler (inside the agent connection's loop) to the proxy.
enum Event {
    /// The agent logged in and the upstream login succeeded.
    LoggedIn(russh::client::Handle<UpstreamHandler>),
    /// A session channel to open upstream and accept (or reject).
    Session {
        channel: Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
    },
    DirectTcpip {
        channel: Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
        host: String,
        port: u32,
    },
    /// A request refused outright (remote forward, X11 channel...), to record.
    Refused(Request),
    /// What the agent offered to log in with: only a public key's fingerprint.
    OfferedKey(String),
}

/// Runs one proxied connection; returns the close reason.
pub async fn serve<G: Gate>(
    gate: &G,
    config: ProxyConfig,
    agent: Box<dyn ByteStream>,
    upstream: Box<dyn ByteStream>,
) -> String {
    let (events, mut incoming) = mpsc::unbounded_channel();
    let failure = Arc::new(Mutex::new(None::<String>));
    let handler = AgentHandler {
        events,
        login: config.login.clone(),
        upstream: Some(upstream),
        connected: None,
        failure: Arc::clone(&failure),
        logged_in: false,
    };
    let server_config = Arc::new(server::Config {
        server_id: russh::SshId::Standard("SSH-2.0-sluice".into()),
        methods: MethodSet::from(
            &[
                MethodKind::None,
                MethodKind::PublicKey,
                MethodKind::Password,
                MethodKind::KeyboardInteractive,
            ][..],
        ),
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![config.identity.key],
        certificates: vec![config.identity.certificate],
        inactivity_timeout: Some(Duration::from_secs(3600)),
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 4,
        nodelay: true,
        ..Default::default()
    });
    let running = match server::run_stream(server_config, agent, handler).await {
        Ok(running) => running,
        Err(error) => return format!("protocol_error: agent handshake: {error}"),
    };
    let server_handle = running.handle();
    let mut running = std::pin::pin!(running);
    let mut upstream: Option<russh::client::Handle<UpstreamHandler>> = None;
    let mut channels: FuturesUnordered<BoxFuture<'_, ()>> = FuturesUnordered::new();
    let mut offered_keys = Vec::new();
    let ended = loop {
        tokio::select! {
            result = &mut running => break result,
            Some(()) = channels.next(), if !channels.is_empty() => {}
            Some(event) = incoming.recv() => match event {
                Event::LoggedIn(handle) => upstream = Some(handle),
                Event::OfferedKey(fingerprint) => offered_keys.push(fingerprint),
                Event::Refused(request) => {
                    channels.push(Box::pin(refuse_outright(gate, request)));
                }
                Event::Session { channel, reply } => {
                    let Some(upstream) = &upstream else {
                        reply.reject(russh::ChannelOpenFailure::AdministrativelyProhibited).await;
                        continue;
                    };
                    match upstream.channel_open_session().await {
                        Ok(upstream_channel) => {
                            reply.accept().await;
                            channels.push(Box::pin(serve_channel(
                                gate,
                                channel,
                                upstream_channel,
                                server_handle.clone(),
                            )));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "upstream refused a session channel");
                            reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
                        }
                    }
                }
                Event::DirectTcpip { channel, reply, host, port } => {
                    channels.push(Box::pin(forward(gate, channel, reply, host, port)));
                }
            },
        }
    };
    // Requests refused in the connection's last moments are still recorded (an agent
    // with ExitOnForwardFailure leaves right after its refused forward).
    while let Ok(event) = incoming.try_recv() {
        if let Event::Refused(request) = event {
            channels.push(Box::pin(refuse_outright(gate, request)));
        }
    }
    // The agent is gone: let the channels see it and record their ends.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while channels.next().await.is_some() {}
    })
    .await;
    if let Some(upstream) = upstream {
        let _ = upstream
            .disconnect(russh::Disconnect::ByApplication, "", "")
            .await;
    }
    if !offered_keys.is_empty() {
        tracing::info!(keys = ?offered_keys, "the agent offered keys of its own (not used)");
    }
    let failure = failure.lock().ok().and_then(|mut failure| failure.take());
    match (ended, failure) {
        (_, Some(failure)) => failure,
        (Ok(()), None) => "client_closed".into(),
        (Err(error), None) => format!("agent: {error}"),
    }
}

/// Records a request refused outright.
async fn refuse_outright<G: Gate>(gate: &G, request: Request) {
    let (_gone, agent_gone) = oneshot::channel();
    let verdict = gate.decide(request, agent_gone).await;
    gate.finish(verdict.ticket, Outcome::default()).await;
}

/// Judges a request that has no stream of its own to wait on (an SFTP request, a
/// push's ref updates) and records its end at once. `Some`: why it was refused.
pub(super) async fn judge_and_record<G: Gate>(gate: &G, request: Request) -> Option<String> {
    let (_gone, agent_gone) = oneshot::channel();
    let verdict = gate.decide(request, agent_gone).await;
    let refused = (!verdict.allowed).then(|| verdict.message.clone());
    gate.finish(
        verdict.ticket,
        Outcome {
            error: refused.clone(),
            ..Outcome::default()
        },
    )
    .await;
    refused
}

/// A `direct-tcpip` channel: judged as a new connection to its target and dispatched
/// like one, so a forward to PostgreSQL is decoded and a jump to another SSH server is
/// intercepted again.
async fn forward<G: Gate>(
    gate: &G,
    channel: Channel<server::Msg>,
    reply: server::ChannelOpenHandle,
    host: String,
    port: u32,
) {
    let Ok(port) = u16::try_from(port) else {
        reply.reject(russh::ChannelOpenFailure::ConnectFailed).await;
        return;
    };
    let id = channel.id();
    if let Err(error) = gate.forward(host.clone(), port, channel, reply).await {
        tracing::info!(%error, %host, port, ?id, "forward refused");
    }
}

/// The agent side of one connection, inside russh's loop: logs in upstream, hands
/// channels to [`serve`] and refuses what is never allowed.
struct AgentHandler {
    events: mpsc::UnboundedSender<Event>,
    login: UpstreamLogin,
    upstream: Option<Box<dyn ByteStream>>,
    /// The upstream connection, once the host key checked out.
    connected: Option<russh::client::Handle<UpstreamHandler>>,
    /// Why the session cannot go on (host key mismatch, failed upstream login).
    failure: Arc<Mutex<Option<String>>>,
    logged_in: bool,
}

impl AgentHandler {
    fn fail(&self, reason: String) {
        tracing::warn!(%reason, "ssh session refused");
        if let Ok(mut failure) = self.failure.lock() {
            failure.get_or_insert(reason);
        }
    }

    fn failed(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|failure| failure.clone())
    }

    /// Connects upstream and checks the pinned host key (once).
    async fn connect(&mut self) {
        let Some(stream) = self.upstream.take() else {
            return;
        };
        let mismatch = Arc::new(Mutex::new(None));
        let handler = UpstreamHandler {
            login: self.login.clone(),
            mismatch: Arc::clone(&mismatch),
        };
        let config = Arc::new(russh::client::Config {
            inactivity_timeout: Some(Duration::from_secs(3600)),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        });
        match russh::client::connect_stream(config, stream, handler).await {
            Ok(handle) => self.connected = Some(handle),
            Err(error) => {
                let why = mismatch
                    .lock()
                    .ok()
                    .and_then(|mismatch| mismatch.clone())
                    .unwrap_or_else(|| format!("upstream_error: {error}"));
                self.fail(why);
            }
        }
    }

    /// Logs in upstream as `user` (or the credential's user); whatever the agent
    /// offered is not used.
    async fn login(&mut self, user: &str) -> Auth {
        if self.logged_in {
            return Auth::Accept;
        }
        if self.failed().is_some() {
            return Auth::reject();
        }
        let Some(mut handle) = self.connected.take() else {
            return Auth::reject();
        };
        let user = self.login.user.clone().unwrap_or_else(|| user.to_owned());
        let result = match &self.login.certificate {
            Some(certificate) => {
                handle
                    .authenticate_openssh_cert(
                        user.clone(),
                        Arc::clone(&self.login.key),
                        certificate.clone(),
                    )
                    .await
            }
            None => {
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .ok()
                    .flatten()
                    .flatten();
                handle
                    .authenticate_publickey(
                        user.clone(),
                        PrivateKeyWithHashAlg::new(Arc::clone(&self.login.key), hash),
                    )
                    .await
            }
        };
        match result {
            Ok(result) if result.success() => {
                self.logged_in = true;
                let _ = self.events.send(Event::LoggedIn(handle));
                Auth::Accept
            }
            Ok(_) => {
                self.fail(format!(
                    "upstream_auth_failed: the server refused the daemon's credential for user `{user}`"
                ));
                Auth::reject()
            }
            Err(error) => {
                self.fail(format!("upstream_auth_failed: {error}"));
                Auth::reject()
            }
        }
    }
}

impl server::Handler for AgentHandler {
    type Error = russh::Error;

    /// Sent with the agent's first login attempt: the upstream connection is made
    /// now, so a host key mismatch reaches the agent's terminal, not just the record.
    async fn authentication_banner(&mut self) -> Result<Option<String>, Self::Error> {
        self.connect().await;
        Ok(self
            .failed()
            .map(|why| format!("sluice: refused: {why}\r\n")))
    }

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        Ok(self.login(user).await)
    }

    async fn auth_password(&mut self, user: &str, _password: &str) -> Result<Auth, Self::Error> {
        // The password is neither kept nor forwarded.
        Ok(self.login(user).await)
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = offer
            .public_key
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string();
        let _ = self.events.send(Event::OfferedKey(fingerprint));
        Ok(self.login(user).await)
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        _key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.login(user).await)
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        _response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        Ok(self.login(user).await)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<server::Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = self.events.send(Event::Session { channel, reply });
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<server::Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = self.events.send(Event::DirectTcpip {
            channel,
            reply,
            host: host_to_connect.to_owned(),
            port: port_to_connect,
        });
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<server::Msg>,
        socket_path: &str,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(
            "direct-streamlocal",
            socket_path,
            "unix socket forwarding is refused",
        );
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<server::Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        reply
            .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(
            "tcpip-forward",
            &format!("{address}:{port}"),
            "remote port forwarding is refused",
        );
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(
            "streamlocal-forward",
            socket_path,
            "remote unix socket forwarding is refused",
        );
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        _channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("auth-agent-req", "", "agent forwarding is refused");
        Ok(false)
    }
}

impl AgentHandler {
    fn refused(&self, request: &'static str, target: &str, why: &'static str) {
        let _ = self.events.send(Event::Refused(Request {
            request,
            class: Operation::Unparsed,
            verb: request.to_owned(),
            command: (!target.is_empty()).then(|| target.to_owned()),
            summary: format!("{request} {target}").trim_end().to_owned(),
            refused: Some(why),
            pushed: Vec::new(),
        }));
    }
}

/// The daemon's side toward the server: accepts only the pinned host key.
pub struct UpstreamHandler {
    login: UpstreamLogin,
    mismatch: Arc<Mutex<Option<String>>>,
}

impl UpstreamHandler {
    fn check(&self, key: &ssh_key::PublicKey) -> Result<(), String> {
        let path = &self.login.known_hosts;
        let fingerprint = key.fingerprint(ssh_key::HashAlg::Sha256);
        let mut changed = false;
        for name in &self.login.host_names {
            match russh::keys::check_known_hosts_path(name, self.login.port, key, path) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(russh::keys::Error::KeyChanged { .. }) => changed = true,
                Err(error) => {
                    return Err(format!(
                        "upstream_host_key: cannot read {}: {error}",
                        path.display()
                    ));
                }
            }
        }
        let names = self.login.host_names.join(", ");
        Err(if changed {
            format!(
                "upstream_host_key_mismatch: the server presented {fingerprint}, which is not the key pinned for {names} in {}",
                path.display()
            )
        } else {
            format!(
                "upstream_host_key_unknown: the server's key {fingerprint} is not pinned for {names} in {}",
                path.display()
            )
        })
    }
}

impl russh::client::Handler for UpstreamHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            russh::keys::PublicKeyOrCertificate::Certificate(certificate) => {
                ssh_key::PublicKey::new(certificate.public_key().clone(), "")
            }
        };
        match self.check(&key) {
            Ok(()) => Ok(true),
            Err(why) => {
                if let Ok(mut mismatch) = self.mismatch.lock() {
                    *mismatch = Some(why);
                }
                Ok(false)
            }
        }
    }
}

/// What a channel was opened for, once its start request is known.
struct Started {
    pty: bool,
    receive_pack: bool,
    /// The channel speaks SFTP: each file request is judged.
    sftp: bool,
}

/// Serves one session channel: its requests until one starts something (exec, shell,
/// subsystem), then both directions until it closes.
async fn serve_channel<G: Gate>(
    gate: &G,
    mut agent: Channel<server::Msg>,
    mut upstream: Channel<russh::client::Msg>,
    server: server::Handle,
) {
    let id = agent.id();
    let mut pty: Option<(u32, u32, String)> = None;
    loop {
        let Some(message) = agent.wait().await else {
            let _ = upstream.close().await;
            return;
        };
        match message {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                let sent = upstream
                    .request_pty(
                        true,
                        &term,
                        col_width,
                        row_height,
                        pix_width,
                        pix_height,
                        &terminal_modes,
                    )
                    .await;
                let ok = sent.is_ok() && upstream_reply(&mut upstream).await;
                if ok {
                    pty = Some((col_width, row_height, term));
                }
                reply(&server, id, ok).await;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                let ok = env_allowed(&variable_name)
                    && upstream
                        .set_env(true, variable_name.clone(), variable_value)
                        .await
                        .is_ok()
                    && upstream_reply(&mut upstream).await;
                if !env_allowed(&variable_name) {
                    tracing::debug!(name = %variable_name, "env request refused");
                }
                reply(&server, id, ok).await;
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                let _ = upstream
                    .window_change(col_width, row_height, pix_width, pix_height)
                    .await;
            }
            ChannelMsg::RequestX11 { .. } => {
                let _ = gate_refusal(gate, "x11-req", "X11 forwarding is refused").await;
                reply(&server, id, false).await;
            }
            ChannelMsg::AgentForward { .. } => {
                // Answered (refused) and recorded by the handler.
            }
            ChannelMsg::Exec { command, .. } => {
                let exec = command::classify_exec(&command);
                let request = exec_request(&exec);
                let receive_pack = exec.kind == "git-receive-pack";
                let started = Started {
                    pty: pty.is_some(),
                    receive_pack,
                    sftp: false,
                };
                run_started(
                    gate,
                    agent,
                    upstream,
                    server,
                    request,
                    started,
                    pty,
                    Start::Exec(command),
                )
                .await;
                return;
            }
            ChannelMsg::RequestShell { .. } => {
                let request = Request {
                    request: "shell",
                    class: Operation::Admin,
                    verb: "shell".into(),
                    command: None,
                    summary: if pty.is_some() {
                        "interactive shell (pty)".into()
                    } else {
                        "shell (no pty)".into()
                    },
                    refused: None,
                    pushed: Vec::new(),
                };
                let started = Started {
                    pty: pty.is_some(),
                    receive_pack: false,
                    sftp: false,
                };
                run_started(
                    gate,
                    agent,
                    upstream,
                    server,
                    request,
                    started,
                    pty,
                    Start::Shell,
                )
                .await;
                return;
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                // SFTP is decoded: starting it is only connecting, each file request
                // is judged on its own. Any other subsystem can do anything the login
                // may, so it passes only where `unparsed` is allowed.
                let sftp = name == "sftp";
                let request = Request {
                    request: "subsystem",
                    class: if sftp {
                        Operation::Connect
                    } else {
                        Operation::Unparsed
                    },
                    verb: name.clone(),
                    command: Some(name.clone()),
                    summary: format!("subsystem {name}"),
                    refused: None,
                    pushed: Vec::new(),
                };
                let started = Started {
                    pty: false,
                    receive_pack: false,
                    sftp,
                };
                run_started(
                    gate,
                    agent,
                    upstream,
                    server,
                    request,
                    started,
                    None,
                    Start::Subsystem(name),
                )
                .await;
                return;
            }
            ChannelMsg::Eof => {
                let _ = upstream.eof().await;
            }
            ChannelMsg::Close => {
                let _ = upstream.close().await;
                return;
            }
            ChannelMsg::Data { .. } | ChannelMsg::ExtendedData { .. } => {
                // Data before anything started has nowhere to go.
            }
            _ => {}
        }
    }
}

async fn gate_refusal<G: Gate>(gate: &G, request: &'static str, why: &'static str) {
    refuse_outright(
        gate,
        Request {
            request,
            class: Operation::Unparsed,
            verb: request.into(),
            command: None,
            summary: request.into(),
            refused: Some(why),
            pushed: Vec::new(),
        },
    )
    .await;
}

fn exec_request(exec: &ExecCommand) -> Request {
    Request {
        request: "exec",
        class: exec.class,
        verb: exec.kind.to_owned(),
        command: Some(exec.line.clone()),
        summary: exec.line.clone(),
        refused: None,
        pushed: Vec::new(),
    }
}

/// Answers the agent's pending channel request.
async fn reply(server: &server::Handle, id: ChannelId, ok: bool) {
    let _ = if ok {
        server.channel_success(id).await
    } else {
        server.channel_failure(id).await
    };
}

/// Waits for the server's answer to the request just sent upstream.
async fn upstream_reply(upstream: &mut Channel<russh::client::Msg>) -> bool {
    loop {
        match upstream.wait().await {
            Some(ChannelMsg::Success) => return true,
            Some(ChannelMsg::Failure) | None | Some(ChannelMsg::Close) => return false,
            Some(_) => {}
        }
    }
}

enum Start {
    Exec(Vec<u8>),
    Shell,
    Subsystem(String),
}

/// Judges the request that starts the channel, then runs it or refuses it.
#[allow(clippy::too_many_arguments)]
async fn run_started<G: Gate>(
    gate: &G,
    mut agent: Channel<server::Msg>,
    mut upstream: Channel<russh::client::Msg>,
    server: server::Handle,
    request: Request,
    started: Started,
    pty: Option<(u32, u32, String)>,
    start: Start,
) {
    let id = agent.id();
    let begun = Instant::now();
    let is_exec = matches!(start, Start::Exec(_));
    let line = request.command.clone().unwrap_or_default();
    if is_exec {
        // An exec is answered at once: whatever the verdict, the agent learns it as the
        // command's output and exit status. (A late answer would be lost: russh forgets
        // that a reply is owed once the agent sends a request that wants none, such as
        // OpenSSH's `eow@openssh.com` at the end of its input, which comes during a hold.)
        reply(&server, id, true).await;
    }
    // While the request is judged (and perhaps held for a human), the agent's input is
    // read and kept, so its queue never blocks the connection's other channels.
    let (gone, agent_gone) = oneshot::channel();
    let mut gone = Some(gone);
    let mut early: Vec<ChannelMsg> = Vec::new();
    let mut early_bytes = 0usize;
    let verdict = {
        let mut deciding = std::pin::pin!(gate.decide(request, agent_gone));
        loop {
            tokio::select! {
                verdict = &mut deciding => break verdict,
                message = agent.wait(), if gone.is_some() => match message {
                    None | Some(ChannelMsg::Close) => {
                        if let Some(gone) = gone.take() {
                            let _ = gone.send(());
                        }
                    }
                    Some(message) => {
                        if let ChannelMsg::Data { data } = &message {
                            early_bytes += data.len();
                        }
                        early.push(message);
                        if early_bytes > MAX_BUFFERED_WHILE_HELD
                            && let Some(gone) = gone.take()
                        {
                            let _ = gone.send(());
                        }
                    }
                },
            }
        }
    };
    let mut outcome = Outcome {
        started: Some(begun),
        ..Outcome::default()
    };
    if gone.is_none() {
        outcome.error = Some("the agent closed the channel before it ran".into());
        let _ = upstream.close().await;
        gate.finish(verdict.ticket, outcome).await;
        return;
    }
    if !verdict.allowed {
        if is_exec {
            // The command "ran" and failed: the agent's ssh prints why and exits 1,
            // and the connection's other channels go on.
            let message = format!("sluice: {}\r\n", verdict.message);
            let _ = agent.extended_data(1, message.as_bytes()).await;
            let _ = agent.exit_status(1).await;
            let _ = agent.eof().await;
            let _ = agent.close().await;
            outcome.exit_status = Some(1);
        } else {
            // The request fails and its channel closes: nothing else can start on it.
            reply(&server, id, false).await;
            let message = format!("sluice: {}\r\n", verdict.message);
            let _ = agent.extended_data(1, message.as_bytes()).await;
            let _ = agent.close().await;
        }
        outcome.error = Some(verdict.message);
        let _ = upstream.close().await;
        gate.finish(verdict.ticket, outcome).await;
        return;
    }
    let sent = match &start {
        Start::Exec(command) => upstream.exec(true, command.clone()).await,
        Start::Shell => upstream.request_shell(true).await,
        Start::Subsystem(name) => upstream.request_subsystem(true, name.clone()).await,
    };
    let ok = sent.is_ok() && upstream_reply(&mut upstream).await;
    if !is_exec {
        reply(&server, id, ok).await;
    }
    if !ok {
        if is_exec {
            let _ = agent
                .extended_data(1, &b"sluice: the server refused to run the command\r\n"[..])
                .await;
            let _ = agent.exit_status(1).await;
            let _ = agent.eof().await;
            let _ = agent.close().await;
        }
        outcome.error = Some("the server refused the request".into());
        let _ = upstream.close().await;
        gate.finish(verdict.ticket, outcome).await;
        return;
    }
    let cast = Cast::new(
        pty.as_ref()
            .map(|(cols, rows, term)| (*cols, *rows, term.clone())),
    );
    let counts = Arc::new(Mutex::new(Counts::default()));
    let (agent_read, agent_write) = agent.split();
    let (upstream_read, upstream_write) = upstream.split();
    // SFTP: statuses of sluice's for refused requests, slipped in between the
    // server's packets.
    let (inspect, injected) = if started.sftp {
        let (statuses, injected) = mpsc::channel(STATUSES_IN_FLIGHT);
        (Inspect::Sftp(statuses), Some(injected))
    } else if started.receive_pack {
        (Inspect::ReceivePack(PushGuard::new(line)), None)
    } else {
        (Inspect::Nothing, None)
    };
    // Terminal resizes the agent sends, for the recording.
    let (resized, resizes) = mpsc::channel(RESIZES_IN_FLIGHT);
    let up = pump_up(
        gate,
        agent_read,
        upstream_write,
        early,
        inspect,
        Arc::clone(&counts),
        resized,
    );
    let down = pump_down(
        upstream_read,
        agent_write,
        server.clone(),
        id,
        cast,
        started.pty,
        injected,
        resizes,
    );
    let mut up = std::pin::pin!(up);
    let mut down = std::pin::pin!(down);
    let (cast, down_result, refused) = tokio::select! {
        (cast, result) = &mut down => {
            // The server closed: give the agent's side a moment to close too.
            let refused = tokio::time::timeout(CLOSE_GRACE, &mut up)
                .await
                .ok()
                .flatten()
                .map(|refused| refused.message);
            (cast, result, refused)
        }
        refused = &mut up => match refused {
            Some(refused) => {
                // A refused push (or SFTP stream): the server's side is already closed
                // and what it still says is only receive-pack's complaint about the
                // pack it never got whole, so it is not waited for. The agent gets
                // receive-pack's report (`ng REF REASON`) if its git asked for one,
                // why on stderr, and exit status 1, at once.
                if let Some(report) = refused.report {
                    let _ = server.data(id, Bytes::from(report)).await;
                }
                let message = format!("sluice: {}\r\n", refused.message);
                let _ = server.extended_data(id, 1, Bytes::from(message.into_bytes())).await;
                let _ = server.exit_status_request(id, 1).await;
                let _ = server.eof(id).await;
                let _ = server.close(id).await;
                let result = DownResult {
                    bytes_out: 0,
                    bytes_err: 0,
                    exit_status: Some(1),
                    exit_signal: None,
                };
                (Vec::new(), result, Some(refused.message))
            }
            None => {
                let finished = tokio::time::timeout(CLOSE_GRACE, &mut down).await;
                let (cast, result) = finished.unwrap_or_else(|_| {
                    (
                        Vec::new(),
                        DownResult {
                            bytes_out: 0,
                            bytes_err: 0,
                            exit_status: Some(1),
                            exit_signal: None,
                        },
                    )
                });
                (cast, result, None)
            }
        }
    };
    let counts = counts
        .lock()
        .map(|counts| counts.clone())
        .unwrap_or_default();
    outcome.bytes_in = counts.bytes_in;
    outcome.bytes_out = down_result.bytes_out;
    outcome.bytes_err = down_result.bytes_err;
    outcome.exit_status = down_result.exit_status;
    outcome.exit_signal = down_result.exit_signal;
    outcome.cast = Some(cast);
    if let Some(refused) = refused {
        outcome.error = Some(refused);
    }
    gate.finish(verdict.ticket, outcome).await;
}

#[derive(Clone, Default)]
struct Counts {
    bytes_in: u64,
}

struct DownResult {
    bytes_out: u64,
    bytes_err: u64,
    exit_status: Option<u32>,
    exit_signal: Option<String>,
}

/// How many bytes of agent data a channel reads ahead of what the server accepted.
/// russh grants the agent more window as soon as data arrives and pushes back only by
/// blocking the connection's loop, which would also stop the server's output from
/// reaching the agent (and so the server from reading more): a deadlock for full-duplex
/// streams such as `cat`. Reading ahead breaks that cycle for everything up to this
/// much in flight. Counted in bytes, not messages: OpenSSH sends stdin in 16 KiB
/// packets, so a count of messages held half of what it promised and a 50 MB `cat`
/// deadlocked whenever the server side lagged by more than 32 MiB (a loaded host).
/// Beyond this, the agent's connection waits (and a full-duplex stream can stall): the
/// price of bounded memory until russh lets a server withhold window.
const READ_AHEAD_BYTES: usize = 64 * 1024 * 1024;

/// How many terminal resizes may wait for the recording; more are left out of it.
const RESIZES_IN_FLIGHT: usize = 64;

/// How many refusals of SFTP requests may wait to be slipped into the server's
/// stream; the agent's requests wait beyond that.
const STATUSES_IN_FLIGHT: usize = 64;

/// What the agent → server pump reads in the stream, beyond counting it.
enum Inspect {
    Nothing,
    /// `git-receive-pack`: the push, judged by ref.
    ReceivePack(PushGuard),
    /// The SFTP subsystem: every request; refusals are answered through the sender.
    Sftp(mpsc::Sender<Bytes>),
}

/// Agent → server. For a `git push`, the ref updates are read and judged before any
/// of them is forwarded; on SFTP, each request. Returns why the channel was refused,
/// if it was.
async fn pump_up<G: Gate>(
    gate: &G,
    agent: russh::ChannelReadHalf,
    upstream: russh::ChannelWriteHalf<russh::client::Msg>,
    early: Vec<ChannelMsg>,
    inspect: Inspect,
    counts: Arc<Mutex<Counts>>,
    resized: mpsc::Sender<(u32, u32)>,
) -> Option<Refused> {
    // Each queued message holds permits for its bytes until it is written upstream.
    let budget = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BYTES));
    let (ahead, mut queued) = mpsc::unbounded_channel();
    let read = async move {
        let mut agent = agent;
        let mut pending = early.into_iter();
        loop {
            let message = match pending.next() {
                Some(message) => Some(message),
                None => agent.wait().await,
            };
            let last = matches!(message, None | Some(ChannelMsg::Close));
            let size = match &message {
                Some(ChannelMsg::Data { data } | ChannelMsg::ExtendedData { data, .. }) => {
                    u32::try_from(data.len().min(READ_AHEAD_BYTES)).unwrap_or(u32::MAX)
                }
                _ => 0,
            };
            let Ok(permit) = budget.clone().acquire_many_owned(size).await else {
                return;
            };
            if ahead.send((message, permit)).is_err() || last {
                return;
            }
        }
    };
    let write = async move {
        let (mut push, mut sftp) = match inspect {
            Inspect::Nothing => (None, None),
            Inspect::ReceivePack(guard) => (Some(guard), None),
            Inspect::Sftp(statuses) => (None, Some((sftp::Framer::default(), statuses))),
        };
        loop {
            // The permit goes when this iteration has written the message upstream.
            let Some((Some(message), _permit)) = queued.recv().await else {
                let _ = upstream.close().await;
                return None;
            };
            match message {
                ChannelMsg::Data { data } => {
                    if let Ok(mut counts) = counts.lock() {
                        counts.bytes_in += data.len() as u64;
                    }
                    if let Some((framer, statuses)) = sftp.as_mut() {
                        framer.push(&data);
                        if let Err(refused) = relay_sftp(gate, framer, statuses, &upstream).await {
                            let _ = upstream.close().await;
                            return Some(Refused {
                                message: refused,
                                report: None,
                                server_gone: false,
                            });
                        }
                        continue;
                    }
                    if let Some(guard) = push.as_mut() {
                        // Unreadable or refused pushes go no further.
                        match guard.relay(gate, &data, &upstream).await {
                            Ok(()) => {}
                            // receive-pack ended on its own: its end reaches the agent.
                            Err(stop) if stop.server_gone => return None,
                            Err(refused) => {
                                let _ = upstream.close().await;
                                return Some(refused);
                            }
                        }
                        continue;
                    }
                    if upstream.data_bytes(data).await.is_err() {
                        return None;
                    }
                }
                ChannelMsg::Eof => {
                    if let Some(Err(refused)) = push.as_ref().map(PushGuard::at_eof) {
                        let _ = upstream.close().await;
                        return Some(refused);
                    }
                    let _ = upstream.eof().await;
                }
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    let _ = resized.try_send((col_width, row_height));
                    let _ = upstream
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await;
                }
                ChannelMsg::Signal { signal } => {
                    let _ = upstream.signal(signal).await;
                }
                ChannelMsg::Close => {
                    let _ = upstream.close().await;
                    return None;
                }
                _ => {}
            }
        }
    };
    let mut read = std::pin::pin!(read);
    let mut write = std::pin::pin!(write);
    tokio::select! {
        refused = &mut write => refused,
        () = &mut read => write.await,
    }
}

/// Forwards the whole SFTP requests `framer` holds, each judged first; a refused one
/// is answered with a permission-denied status instead. `Err`: the stream is not SFTP,
/// or the server is gone.
async fn relay_sftp<G: Gate>(
    gate: &G,
    framer: &mut sftp::Framer,
    statuses: &mpsc::Sender<Bytes>,
    upstream: &russh::ChannelWriteHalf<russh::client::Msg>,
) -> Result<(), String> {
    // Requests that need no judgement go on together.
    let mut passed = BytesMut::new();
    while let Some(packet) = framer.next_packet().map_err(|error| error.to_string())? {
        let (id, class, verb, summary) = match sftp::classify(&packet) {
            sftp::Judged::Pass => {
                passed.extend_from_slice(&packet);
                continue;
            }
            sftp::Judged::Request {
                id,
                class,
                verb,
                summary,
            } => (id, class, verb, summary),
        };
        if !passed.is_empty() {
            upstream
                .data_bytes(passed.split().freeze())
                .await
                .map_err(|_| "the server closed the channel".to_owned())?;
        }
        let request = Request {
            request: "sftp",
            class,
            verb: format!("sftp-{verb}"),
            command: None,
            summary: format!("sftp {summary}"),
            refused: None,
            pushed: Vec::new(),
        };
        match judge_and_record(gate, request).await {
            None => upstream
                .data_bytes(packet)
                .await
                .map_err(|_| "the server closed the channel".to_owned())?,
            Some(why) => statuses
                .send(sftp::permission_denied(id, &format!("sluice: {why}")))
                .await
                .map_err(|_| "the agent's side of the channel is gone".to_owned())?,
        }
    }
    if !passed.is_empty() {
        upstream
            .data_bytes(passed.freeze())
            .await
            .map_err(|_| "the server closed the channel".to_owned())?;
    }
    Ok(())
}

/// Server → agent, in order: data, stderr, exit status or signal, EOF, close.
///
/// sshd often sends its EOF (the command's output ended) before the exit status (the
/// command was reaped). Relayed in that order, the agent, having sent its own EOF, may
/// close the channel at once; russh answers that close and forgets the channel, so the
/// exit status that follows is dropped and a multiplexed `ssh` exits 255. So the EOF is
/// held until the exit status or signal, or the server's close, has been relayed: the
/// agent cannot close before it has the status.
#[allow(clippy::too_many_arguments)]
async fn pump_down(
    mut upstream: russh::ChannelReadHalf,
    agent: russh::ChannelWriteHalf<server::Msg>,
    server: server::Handle,
    id: ChannelId,
    mut cast: Cast,
    pty: bool,
    mut injected: Option<mpsc::Receiver<Bytes>>,
    mut resizes: mpsc::Receiver<(u32, u32)>,
) -> (Vec<u8>, DownResult) {
    let mut result = DownResult {
        bytes_out: 0,
        bytes_err: 0,
        exit_status: None,
        exit_signal: None,
    };
    let mut eof_held = false;
    // SFTP: the server's stream is passed on in whole packets only, so that a status
    // of sluice's (`injected`) can go in between two of them.
    let mut framer = injected.as_ref().map(|_| sftp::Framer::default());
    loop {
        let at_boundary = framer.as_ref().is_none_or(sftp::Framer::at_boundary);
        let status = async {
            match injected.as_mut() {
                Some(statuses) => statuses.recv().await,
                None => std::future::pending().await,
            }
        };
        let eof_hold = async {
            if eof_held {
                tokio::time::sleep(EOF_HOLD).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let message = tokio::select! {
            // A resize is recorded before output the server sent after it.
            biased;
            Some((cols, rows)) = resizes.recv() => {
                cast.resize(cols, rows);
                continue;
            }
            Some(status) = status, if at_boundary => {
                if agent.data_bytes(status).await.is_err() {
                    break;
                }
                continue;
            }
            message = upstream.wait() => message,
            () = eof_hold => {
                // A server that sends no status until the agent closes.
                eof_held = false;
                let _ = agent.eof().await;
                continue;
            }
        };
        let ended = matches!(message, None | Some(ChannelMsg::Eof | ChannelMsg::Close));
        if ended && let Some(framer) = framer.as_mut() {
            let rest = framer.take_rest();
            if !rest.is_empty() {
                let _ = agent.data_bytes(rest).await;
            }
        }
        let Some(message) = message else {
            if eof_held {
                let _ = agent.eof().await;
            }
            let _ = agent.close().await;
            break;
        };
        match message {
            ChannelMsg::Data { data } => {
                result.bytes_out += data.len() as u64;
                let data = match framer.as_mut() {
                    None => {
                        cast.output(&data);
                        data
                    }
                    Some(framer) => {
                        framer.push(&data);
                        let mut whole = BytesMut::new();
                        loop {
                            match framer.next_packet() {
                                Ok(Some(packet)) => whole.extend_from_slice(&packet),
                                Ok(None) => break,
                                Err(error) => {
                                    // Not SFTP: pass on what came; nothing can be
                                    // slipped in any more, so the agent's side stops
                                    // (its next refusal cannot be sent).
                                    tracing::warn!(%error, "the server's SFTP stream");
                                    whole.extend_from_slice(&framer.take_rest());
                                    injected = None;
                                    break;
                                }
                            }
                        }
                        whole.freeze()
                    }
                };
                if injected.is_none() {
                    framer = None;
                }
                if !data.is_empty() && agent.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                result.bytes_err += data.len() as u64;
                if !pty {
                    cast.output(&data);
                }
                if agent.extended_data_bytes(ext, data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::ExitStatus { exit_status } => {
                result.exit_status = Some(exit_status);
                cast.exit(exit_status);
                let _ = agent.exit_status(exit_status).await;
                if std::mem::take(&mut eof_held) {
                    let _ = agent.eof().await;
                }
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                result.exit_signal = Some(format!("{signal_name:?}"));
                let _ = server
                    .exit_signal_request(id, signal_name, core_dumped, error_message, lang_tag)
                    .await;
                if std::mem::take(&mut eof_held) {
                    let _ = agent.eof().await;
                }
            }
            ChannelMsg::Eof => {
                if result.exit_status.is_some() || result.exit_signal.is_some() {
                    let _ = agent.eof().await;
                } else {
                    eof_held = true;
                }
            }
            ChannelMsg::Close => {
                if eof_held {
                    let _ = agent.eof().await;
                }
                let _ = agent.close().await;
                break;
            }
            _ => {}
        }
    }
    (cast.finish(), result)
}
