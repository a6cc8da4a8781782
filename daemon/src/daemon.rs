//! `sluice daemon`: wires the modules together and runs until told to stop.
//!
//! Start-up order matters for failing closed: the listeners are bound before the
//! programs are attached, so a redirected connect always finds someone listening, and
//! the store is open before anything is accepted. On exit the programs stay attached:
//! agents cannot connect anywhere until a daemon is back.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use time::OffsetDateTime;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    approvals::{ApprovalBroker, Approver, DecideError, HeldStatement, webhook::Notifier},
    bpf::{self, Interception, RedirectTarget},
    cgroup::ManagedRoot,
    config::Config,
    containment::{self, KernelSupport},
    control::api::ApprovalAnswer,
    control::{
        self, Authorizer, BackendError, ControlBackend, PeerInfo, ProgramStatus, SessionQuery,
        StatusReport,
        api::{PolicyStatus, StoreStatus},
    },
    control::{GrantRequest, ReloadReport, RevokeRequest, routes::ApiError},
    credentials::Credentials,
    events::Activity,
    grants::{Actor, GrantBook, GrantError, NewGrant},
    policy::{ExplainQuestion, Explanation, Grant, Policy},
    redirect::RedirectListeners,
    session::{PolicyHandle, SessionContext},
    store::{Durability, SessionFilter, SessionRecord, StatementRecord, Store, StoreOptions},
};

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the daemon must run as root (it attaches eBPF programs and manages cgroups)")]
    NotRoot,
    #[error("cannot create the state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("policy: {0}")]
    Policy(#[from] crate::policy::PolicyErrors),
    #[error("identity: {0}")]
    Identity(String),
    #[error("credentials: {0}")]
    Credentials(#[from] crate::credentials::CredentialsError),
    #[error("protocol handler: {0}")]
    Protocol(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Export(#[from] crate::export::runner::ExportError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] crate::cgroup::CgroupError),
    #[error("redirect listener: {0}")]
    Listen(#[from] crate::redirect::BindError),
    #[error("cannot read the network namespace cookie: {0}")]
    NetnsCookie(std::io::Error),
    #[error("eBPF: {0}")]
    Bpf(#[from] crate::bpf::BpfError),
    #[error("control socket: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("signal handler: {0}")]
    Signal(std::io::Error),
    #[error("grants: {0}")]
    Grants(#[from] crate::grants::GrantError),
    #[error("approvals: {0}")]
    Approvals(#[from] crate::approvals::ids::IdError),
    #[error("approvals configuration: {0}")]
    ApprovalsConfig(String),
    #[error("metrics: {0}")]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("web console: {0}")]
    Ui(#[from] crate::ui::server::UiBindError),
    #[error("web console: {0}")]
    UiConfig(String),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();

    // Policies may name only the configured identity issuers.
    crate::workload::set_known_issuers(&config.identity);
    let policy = Policy::load_dir(&config.daemon.policy_dir, &enforceable_protocols())?;
    let credentials = Credentials::load(&config.daemon.credentials_file)?;
    let policy = Arc::new(PolicyHandle::new(policy));

    create_private_dir(&config.daemon.state_dir)?;
    let store = Store::open(&config.store_dir(), StoreOptions::from(&config.store))?;
    let interrupted = store.close_interrupted("daemon_restart").await?;
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "sessions left open by the previous daemon were closed"
        );
    }

    let grants = Arc::new(GrantBook::load(store.clone(), Arc::clone(&policy))?);
    tokio::spawn(crate::grants::run_expiry(Arc::clone(&grants)));

    let root = Arc::new(ManagedRoot::resolve(&config.cgroup.root)?);
    root.ensure()?;
    let workload = Arc::new(
        crate::workload::Workload::start(&config.identity, &config.daemon.state_dir)
            .map_err(DaemonError::Identity)?,
    );

    let listeners = RedirectListeners::bind(&config.redirect)?;
    let netns_cookie = listeners
        .first()
        .map(bpf::netns_cookie)
        .transpose()
        .map_err(DaemonError::NetnsCookie)?
        .unwrap_or_default();
    // Bound before the programs send agents' DNS here, like the redirect listeners.
    let dns_sockets = if config.dns.port == 0 {
        tracing::warn!("[dns] port = 0: the resolver is off and agents' DNS is refused");
        Vec::new()
    } else {
        crate::dns::bind_udp(
            config.redirect.ipv4,
            config.redirect.ipv6_enabled.then_some(config.redirect.ipv6),
            config.dns.port,
        )
        .map_err(|source| crate::redirect::BindError {
            address: std::net::SocketAddr::new(config.redirect.ipv4.into(), config.dns.port),
            source,
        })?
    };
    let dns_addrs: Vec<std::net::SocketAddr> = dns_sockets
        .iter()
        .filter_map(|socket| socket.local_addr().ok())
        .collect();
    // Bound before the programs are attached, so they know the port to refuse agents.
    let metrics_listener = match config.metrics.listen {
        Some(addr) => Some(crate::metrics::bind(addr).await?),
        None => None,
    };
    // The console's port too: agents are refused it in the kernel.
    let ui_listener = match config.ui.listen {
        Some(addr) => Some(crate::ui::server::bind(addr).await?),
        None => None,
    };
    // Every listener the daemon has, by address: agents are refused all of them. The
    // redirect addresses as configured, so an IPv6 listener that failed to bind stays
    // refused too.
    let redirect = &config.redirect;
    let daemon_endpoints: Vec<std::net::SocketAddr> = std::iter::once(std::net::SocketAddr::new(
        redirect.ipv4.into(),
        redirect.port,
    ))
    .chain(
        redirect
            .ipv6_enabled
            .then(|| std::net::SocketAddr::new(redirect.ipv6.into(), redirect.port)),
    )
    .chain(dns_addrs.iter().copied())
    .chain(
        metrics_listener
            .iter()
            .chain(ui_listener.iter())
            .filter_map(|listener| listener.local_addr().ok()),
    )
    .collect();
    let mut interception = Interception::install(
        root.path(),
        &config.cgroup.bpffs_dir,
        &RedirectTarget {
            ipv4: config.redirect.ipv4,
            ipv6: config.redirect.ipv6,
            port: config.redirect.port,
            daemon_endpoints,
            netns_cookie,
            dns_port: if dns_addrs.is_empty() {
                0
            } else {
                config.dns.port
            },
        },
    )?;
    let listener_addrs: Vec<String> = listeners
        .local_addrs()
        .iter()
        .map(ToString::to_string)
        .chain(dns_addrs.iter().map(|address| format!("udp/{address}")))
        .collect();
    tracing::info!(
        cgroup = %root.path().display(),
        listeners = ?listener_addrs,
        policy_dir = %config.daemon.policy_dir.display(),
        store = %store.path().display(),
        "interception attached"
    );

    if let Some(refusals) = interception.take_refusals() {
        tokio::spawn(crate::refusals::record_refusals(
            refusals,
            Arc::clone(&root),
            store.clone(),
        ));
    }

    let admin_gid = config
        .control
        .admin_group
        .as_deref()
        .map(control::resolve_admin_group)
        .transpose()?;
    let control_listener = control::bind_control_socket(&config.control.socket, admin_gid)?;
    let approvals = Arc::new(ApprovalBroker::new(
        &config.daemon.state_dir.join("approval-ids"),
        crate::approvals::parse_duration(&config.approvals.default_timeout)
            .map_err(|error| DaemonError::ApprovalsConfig(error.to_string()))?,
        Notifier::start(&config.approvals.webhook, config.ui.base_url())
            .map_err(DaemonError::ApprovalsConfig)?,
    )?);
    if let Some(listener) = metrics_listener {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics served at /metrics");
        }
        tokio::spawn(crate::metrics::serve(listener));
    }
    let exporters = crate::export::runner::Exporters::start(
        &config.exports,
        &store,
        &config.daemon.state_dir,
        &credentials,
    )?;
    let sign_ins = config
        .ui
        .base_url()
        .map(|base_url| Arc::new(crate::ui::SignIns::new(base_url)));
    let oidc =
        match (&config.ui.oidc, config.ui.base_url()) {
            (Some(oidc), Some(base_url)) => {
                let secret = credentials
                .get(&oidc.client_secret_credential)
                .and_then(|credential| {
                    if credential.password.expose().is_empty() {
                        credential.bearer.as_ref().map(|bearer| bearer.expose().to_owned())
                    } else {
                        Some(credential.password.expose().to_owned())
                    }
                })
                .ok_or_else(|| {
                    DaemonError::UiConfig(format!(
                        "ui.oidc.client_secret_credential: the credentials file has no entry {:?} \
                         with a password (the client secret)",
                        oidc.client_secret_credential
                    ))
                })?;
                Some(Arc::new(crate::ui::oidc::Oidc::new(
                    oidc.clone(),
                    secret,
                    &base_url,
                )))
            }
            _ => None,
        };
    let backend = Arc::new(Backend {
        sign_ins: sign_ins.clone(),
        exporters: exporters.statuses(),
        approvals: Arc::clone(&approvals),
        started,
        started_at,
        store: store.clone(),
        policy: Arc::clone(&policy),
        policy_dir: config.daemon.policy_dir.clone(),
        grants: Arc::clone(&grants),
        root: Arc::clone(&root),
        bpffs_dir: config.cgroup.bpffs_dir.clone(),
        kernel_support: interception.kernel_support().clone(),
        listeners: listener_addrs,
        runtime: tokio::runtime::Handle::current(),
        workload: Arc::clone(&workload),
    });

    let registry = Arc::new(crate::protocols::Registry::standard());
    registry
        .prepare(&config.daemon.state_dir, config.control.socket.parent())
        .map_err(DaemonError::Protocol)?;
    let interception = Arc::new(interception);
    let dns = (!dns_sockets.is_empty()).then(|| {
        let upstreams = config.dns.effective_upstreams(&dns_addrs);
        tracing::info!(?upstreams, "DNS resolver ready");
        Arc::new(crate::dns::Resolver::new(
            &config.dns,
            upstreams,
            Arc::clone(&policy),
            store.clone(),
            Arc::default(),
            Arc::clone(&root),
        ))
    });
    if let Some(resolver) = &dns {
        for socket in dns_sockets {
            tokio::spawn(Arc::clone(resolver).serve_udp(socket, Arc::clone(&interception)));
        }
    }
    let context = Arc::new(SessionContext {
        interception,
        dns,
        root: Arc::clone(&root),
        policy: Arc::clone(&policy),
        store: store.clone(),
        upstream_connect_timeout: Duration::from_millis(
            config.redirect.upstream_connect_timeout_ms,
        ),
        credentials: Arc::new(credentials),
        registry,
        mask_key: crate::credentials::load_or_create_mask_key(&config.daemon.state_dir)?.into(),
        approvals,
    });

    if let (Some(listener), Some(sign_ins)) = (ui_listener, sign_ins) {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "web console served (sign in with `sluice ui login`)");
        }
        tokio::spawn(crate::ui::server::serve(
            listener,
            Arc::new(crate::ui::server::Console {
                sign_ins,
                oidc,
                backend: Arc::clone(&backend) as control::SharedBackend,
                approvals: Arc::clone(&context.approvals),
            }),
        ));
    }
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signal)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let (stop_control, control_stopped) = tokio::sync::oneshot::channel::<()>();
    let control_task = tokio::spawn(control::serve(
        control_listener,
        Authorizer::new(root.cgroup_path(), admin_gid),
        backend,
        async {
            let _ = control_stopped.await;
        },
    ));
    let redirect_task = tokio::spawn(listeners.serve(context));
    {
        let policy = Arc::clone(&policy);
        let dir = config.daemon.policy_dir.clone();
        let watch_store = store.clone();
        tokio::spawn(crate::policy_watch::run(dir.clone(), move || {
            reload_policy(&policy, &dir, "file_change", &watch_store);
        }));
    }
    crate::audit::record(
        &store,
        crate::audit::daemon_change("started"),
        Durability::Durable,
    )
    .await;
    crate::audit::record_policy_reload(&store, {
        let counts = policy.current().counts();
        Activity::PolicyReload {
            outcome: "applied".into(),
            trigger: "start".into(),
            errors: Vec::new(),
            agents: counts.agents,
            resources: counts.resources,
            rules: counts.rules,
        }
    });
    if let Some(rule) = crate::audit::retention_rule(&config.store) {
        tokio::spawn(crate::audit::run_retention(store.clone(), rule));
    }
    tracing::info!("sluice daemon ready");

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => {
                reload_policy(&policy, &config.daemon.policy_dir, "sighup", &store);
            }
        }
    }
    tracing::info!("stopping: agents stay intercepted and are refused until a daemon is back");
    redirect_task.abort();
    let _ = stop_control.send(());
    let _ = control_task.await;
    crate::audit::record(
        &store,
        crate::audit::daemon_change("stopped"),
        Durability::Durable,
    )
    .await;
    exporters.shutdown().await;
    store.shutdown().await?;
    Ok(())
}

/// What policies may name: the protocols the core serves and every registered decoder.
pub fn enforceable_protocols() -> crate::policy::SupportedProtocols {
    crate::protocols::Registry::standard().supported()
}

/// Replaces the policy if the directory holds a valid one; otherwise keeps the old one
/// and logs each problem on a line of its own. `trigger` says why (`sighup`,
/// `file_change`, `api`).
pub fn reload_policy(
    policy: &PolicyHandle,
    dir: &Path,
    trigger: &str,
    store: &Store,
) -> ReloadReport {
    match Policy::load_dir(dir, &enforceable_protocols()) {
        Ok(new) => {
            let counts = new.counts();
            crate::audit::record_policy_reload(
                store,
                Activity::PolicyReload {
                    outcome: "applied".into(),
                    trigger: trigger.into(),
                    errors: Vec::new(),
                    agents: counts.agents,
                    resources: counts.resources,
                    rules: counts.rules,
                },
            );
            let generation = policy.replace(new);
            tracing::info!(
                trigger,
                generation,
                agents = counts.agents,
                resources = counts.resources,
                rules = counts.rules,
                "policy reloaded"
            );
            ReloadReport {
                applied: true,
                generation,
                errors: Vec::new(),
            }
        }
        Err(errors) => {
            let errors: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            for error in &errors {
                tracing::error!(trigger, "policy reload rejected: {error}");
            }
            tracing::error!(
                trigger,
                problems = errors.len(),
                "policy reload rejected: the previous policy stays in force"
            );
            crate::audit::record_policy_reload(
                store,
                Activity::PolicyReload {
                    outcome: "rejected".into(),
                    trigger: trigger.into(),
                    errors: errors.clone(),
                    agents: 0,
                    resources: 0,
                    rules: 0,
                },
            );
            policy.rejected(trigger, errors.clone());
            ReloadReport {
                applied: false,
                generation: policy.reload_status().generation,
                errors,
            }
        }
    }
}

fn create_private_dir(path: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let error = |source| DaemonError::StateDir {
        path: path.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(error)
}

/// Answers the control API from the daemon's live state.
struct Backend {
    /// The web console's sign-ins, when it is on.
    sign_ins: Option<Arc<crate::ui::SignIns>>,
    exporters: crate::export::runner::ExporterStatuses,
    approvals: Arc<ApprovalBroker>,
    started: Instant,
    started_at: OffsetDateTime,
    store: Store,
    policy: Arc<PolicyHandle>,
    policy_dir: PathBuf,
    grants: Arc<GrantBook>,
    root: Arc<ManagedRoot>,
    bpffs_dir: PathBuf,
    kernel_support: KernelSupport,
    listeners: Vec<String>,
    runtime: tokio::runtime::Handle,
    workload: Arc<crate::workload::Workload>,
}

impl ControlBackend for Backend {
    fn bind_run(
        &self,
        peer: &PeerInfo,
        request: crate::workload::BindRequest,
    ) -> Result<crate::workload::BindAnswer, ApiError> {
        // 422, not 403: the caller may use the API; it is the token that is refused.
        let forbidden =
            |message: String| ApiError::new(hyper::StatusCode::UNPROCESSABLE_ENTITY, message);
        crate::cgroup::validate_agent_name(&request.agent)
            .map_err(|error| ApiError::bad_request(error.to_string()))?;
        // Every attempt is an audit event (`identity`), bound or refused; never the token.
        let record = |outcome: &str,
                      reason: String,
                      run: Option<String>,
                      identity: Option<crate::workload::RunIdentity>| {
            let context = crate::events::Context {
                agent: Some(request.agent.clone()),
                pid: peer.pid,
                uid: Some(peer.uid),
                gid: Some(peer.gid),
                cgroup: run.clone(),
                identity,
                ..Default::default()
            };
            let activity = Activity::Identity {
                outcome: outcome.to_owned(),
                agent: request.agent.clone(),
                reason,
                run,
            };
            self.runtime.block_on(self.store.append(
                crate::events::Event::now(context, activity),
                Durability::Durable,
            ))
        };
        let refuse = |message: String| {
            tracing::warn!(agent = %request.agent, peer = %peer.display_name(), %message, "identity token refused");
            if let Err(error) = record("refused", message.clone(), None, None) {
                tracing::error!(%error, "cannot record the refused identity token");
            }
            forbidden(format!("identity token refused: {message}"))
        };
        let verified = self
            .runtime
            .block_on(self.workload.verifier.verify(&request.token))
            .map_err(|error| refuse(error.to_string()))?;
        if let Some(issuer) = &request.issuer
            && &verified.record.issuer != issuer
        {
            return Err(refuse(format!(
                "the token verified as issuer {:?}, not {issuer:?}",
                verified.record.issuer
            )));
        }
        let agent_dir = self
            .root
            .ensure_agent(&request.agent)
            .map_err(|error| ApiError::internal(error.to_string()))?;
        let agent_cgroup = format!(
            "{}/{}",
            self.root.cgroup_path().trim_end_matches('/'),
            request.agent
        );
        let binding = self
            .workload
            .runs
            .bind(&request.agent, &agent_dir, &agent_cgroup, verified)
            .map_err(|error| ApiError::internal(error.to_string()))?;
        // A run the audit log does not know of is not started: fail closed.
        if let Err(error) = record(
            "bound",
            String::new(),
            Some(binding.cgroup_path.clone()),
            Some(binding.identity.record.clone()),
        ) {
            self.workload.runs.unbind(binding.cgroup_id);
            return Err(ApiError::internal(format!(
                "cannot record the identity binding, so the run is not started: {error}"
            )));
        }
        tracing::info!(
            agent = %request.agent,
            run = %binding.cgroup_path,
            identity = %binding.identity.record.summary(),
            token_sha256 = %binding.identity.record.token_sha256,
            peer = %peer.display_name(),
            "run bound to a verified workload identity"
        );
        Ok(crate::workload::BindAnswer {
            run_dir: binding.dir.clone(),
            identity: binding.identity.record.clone(),
        })
    }

    fn ui_login(
        &self,
        peer: &PeerInfo,
        request: &crate::ui::LoginRequest,
    ) -> Result<crate::ui::LoginAnswer, ApiError> {
        let Some(sign_ins) = &self.sign_ins else {
            return Err(ApiError::not_found(
                "the web console is off: set [ui] listen in the configuration",
            ));
        };
        sign_ins.issue(peer, request).map_err(ApiError::bad_request)
    }

    fn approvals(&self) -> Result<Vec<HeldStatement>, ApiError> {
        Ok(self.approvals.list())
    }

    fn decided_approvals(&self) -> Result<Vec<crate::approvals::Decided>, ApiError> {
        Ok(self.approvals.recent_decisions())
    }

    fn decide_approval(
        &self,
        peer: &PeerInfo,
        id: u64,
        approve: bool,
        reason: &str,
    ) -> Result<ApprovalAnswer, ApiError> {
        let approver = Approver {
            uid: peer.identity.is_none().then_some(peer.uid),
            name: peer.user.clone(),
            identity: peer.identity.as_deref().cloned(),
        };
        let statement = self
            .approvals
            .decide(id, approve, approver, reason)
            .map_err(|error| {
                let status = match error {
                    DecideError::NotFound(_) => hyper::StatusCode::NOT_FOUND,
                    DecideError::SelfApproval { .. }
                    | DecideError::SelfApprovalByIdentity { .. } => hyper::StatusCode::FORBIDDEN,
                    DecideError::Withdrawn(_) => hyper::StatusCode::CONFLICT,
                    DecideError::BadReason => hyper::StatusCode::BAD_REQUEST,
                };
                ApiError::new(status, error.to_string())
            })?;
        tracing::info!(
            approval = id,
            approve,
            approver = %peer.display_name(),
            "approval decided through the control API"
        );
        Ok(ApprovalAnswer {
            id,
            outcome: if approve { "approved" } else { "denied" }.to_owned(),
            approver_uid: peer.identity.is_none().then_some(peer.uid),
            approver_name: peer.user.clone(),
            approver_identity: peer.identity.as_deref().cloned(),
            reason: reason.trim().to_owned(),
            statement,
        })
    }

    fn verify_events(&self) -> Result<crate::store::VerifyReport, ApiError> {
        self.store
            .verify_events()
            .map_err(|error| ApiError::internal(error.to_string()))
    }

    fn events(
        &self,
        query: &crate::export::select::EventQuery,
    ) -> Result<crate::export::select::EventPage, ApiError> {
        crate::export::select::select_events(&self.store, query)
            .map_err(|error| ApiError::internal(error.to_string()))
    }

    fn status(&self) -> StatusReport {
        let counts = self.policy.current().counts();
        let reload = self.policy.reload_status();
        let now = OffsetDateTime::now_utc();
        let store_counts = self.store.counts().unwrap_or_default();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: self.started_at,
            uptime_seconds: self.started.elapsed().as_secs(),
            cgroup_root: self.root.path().display().to_string(),
            programs: bpf::attached_programs(&self.bpffs_dir)
                .into_iter()
                .chain(containment::attached_optional_programs(&self.bpffs_dir))
                .map(|(name, attached)| ProgramStatus { name, attached })
                .collect(),
            listeners: self.listeners.clone(),
            policy: PolicyStatus {
                dir: self.policy_dir.display().to_string(),
                agents: counts.agents,
                resources: counts.resources,
                rules: counts.rules,
                generation: reload.generation,
                loaded_at: reload.loaded_at,
                last_rejected: reload.last_rejected,
                active_grants: self
                    .policy
                    .grants()
                    .iter()
                    .filter(|grant| grant.in_force_at(now))
                    .count(),
            },
            store: StoreStatus {
                path: self.store.path().display().to_string(),
                sessions: store_counts.sessions,
                open: store_counts.open,
                denied: store_counts.denied,
            },
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
            enforcement: containment::matrix(
                &self.bpffs_dir,
                self.root.path(),
                &self.kernel_support,
            ),
            backstop_drops: containment::backstop_drops(&self.bpffs_dir).unwrap_or_default(),
            exporters: self.exporters.statuses(),
        }
    }

    fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>, BackendError> {
        let policy = self.policy.current();
        let protocol_of = |name: &str| {
            policy
                .resource(name)
                .map(|resource| resource.protocol.as_str())
        };
        let mut sessions = self
            .store
            .list_sessions_where(
                &SessionFilter {
                    agent: query.agent.clone(),
                    limit: Some(query.limit),
                    since_id: None,
                },
                |session| query.matches(session, protocol_of),
            )
            .map_err(|e| BackendError::new(e.to_string()))?;
        sessions.reverse();
        Ok(sessions)
    }

    fn get_session(&self, id: u64) -> Result<Option<SessionRecord>, BackendError> {
        self.store
            .get_session(id)
            .map_err(|e| BackendError::new(e.to_string()))
    }

    fn statements(&self, session_id: u64) -> Result<Option<Vec<StatementRecord>>, BackendError> {
        self.store
            .session_statements(session_id)
            .map_err(|error| BackendError::new(error.to_string()))
    }

    fn recordings(
        &self,
        session_id: u64,
    ) -> Result<Vec<crate::control::api::Recording>, BackendError> {
        let recordings = self
            .store
            .recordings(session_id)
            .map_err(|error| BackendError::new(error.to_string()))?;
        Ok(recordings
            .into_iter()
            .map(|(seq, cast)| crate::control::api::Recording {
                seq,
                cast: String::from_utf8_lossy(&cast).into_owned(),
            })
            .collect())
    }

    fn reload_policy(&self) -> Result<ReloadReport, ApiError> {
        Ok(reload_policy(
            &self.policy,
            &self.policy_dir,
            "api",
            &self.store,
        ))
    }

    fn explain(&self, question: &ExplainQuestion) -> Result<Explanation, ApiError> {
        self.policy
            .explain(question)
            .map_err(|error| ApiError::bad_request(error.to_string()))
    }

    fn grants(&self) -> Result<Vec<Grant>, ApiError> {
        self.grants.list().map_err(grant_error)
    }

    fn create_grant(&self, peer: &PeerInfo, request: GrantRequest) -> Result<Grant, ApiError> {
        self.grants
            .create(
                NewGrant {
                    agent: request.agent,
                    resource: request.resource,
                    operations: request.operations,
                    duration: Duration::from_secs(request.duration_seconds),
                    reason: request.reason,
                },
                &Actor::from_peer(peer),
            )
            .map_err(grant_error)
    }

    fn revoke_grant(
        &self,
        peer: &PeerInfo,
        id: u64,
        request: RevokeRequest,
    ) -> Result<Grant, ApiError> {
        self.grants
            .revoke(id, &Actor::from_peer(peer), request.reason)
            .map_err(grant_error)
    }

    fn refused(&self, peer: &PeerInfo, reason: &str) {
        let agent = peer
            .cgroup
            .as_deref()
            .filter(|cgroup| self.root.contains_cgroup_path(cgroup))
            .and_then(|cgroup| cgroup.rsplit('/').next())
            .unwrap_or_default()
            .to_owned();
        let record = SessionRecord {
            agent,
            pid: peer.pid.unwrap_or_default(),
            uid: peer.uid,
            gid: peer.gid,
            exe: peer.pid.and_then(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .ok()
                    .map(|p| p.display().to_string())
            }),
            cgroup: peer.cgroup.clone().unwrap_or_default(),
            destination: "control-socket".into(),
            transport: "unix".into(),
            ..SessionRecord::refused(self.store.next_session_id(), "control:unauthorized", reason)
        };
        let store = self.store.clone();
        self.runtime.spawn(async move {
            if let Err(error) = crate::audit::record_refused(&store, &record).await {
                tracing::error!(%error, "cannot record a refused control connection");
            }
        });
    }
}

fn grant_error(error: GrantError) -> ApiError {
    match error {
        GrantError::Invalid(_) => ApiError::bad_request(error.to_string()),
        GrantError::NotFound(_) => ApiError::not_found(error.to_string()),
        GrantError::NotActive { .. } => {
            ApiError::new(hyper::StatusCode::CONFLICT, error.to_string())
        }
        GrantError::Store(_) | GrantError::Unrecorded { .. } => {
            ApiError::internal(error.to_string())
        }
    }
}
