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
    bpf::{self, Interception, RedirectTarget},
    cgroup::ManagedRoot,
    config::Config,
    control::{
        self, Authorizer, BackendError, ControlBackend, PeerInfo, ProgramStatus, SessionQuery,
        StatusReport,
        api::{PolicyStatus, StoreStatus},
    },
    credentials::Credentials,
    policy::Policy,
    proxy::postgres::cancel::CancelRegistry,
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
    #[error("credentials: {0}")]
    Credentials(#[from] crate::credentials::CredentialsError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
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
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(DaemonError::NotRoot);
    }
    let started = Instant::now();
    let started_at = OffsetDateTime::now_utc();

    let policy = Policy::load_dir(&config.daemon.policy_dir)?;
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

    let root = Arc::new(ManagedRoot::resolve(&config.cgroup.root)?);
    root.ensure()?;

    let listeners = RedirectListeners::bind(&config.redirect)?;
    let netns_cookie = listeners
        .first()
        .map(bpf::netns_cookie)
        .transpose()
        .map_err(DaemonError::NetnsCookie)?
        .unwrap_or_default();
    let mut interception = Interception::install(
        root.path(),
        &config.cgroup.bpffs_dir,
        &RedirectTarget {
            ipv4: config.redirect.ipv4,
            ipv6: config.redirect.ipv6,
            port: config.redirect.port,
            other_daemon_ports: Vec::new(),
            netns_cookie,
        },
    )?;
    let listener_addrs: Vec<String> = listeners
        .local_addrs()
        .iter()
        .map(ToString::to_string)
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
    let backend = Arc::new(Backend {
        started,
        started_at,
        store: store.clone(),
        policy: Arc::clone(&policy),
        policy_dir: config.daemon.policy_dir.clone(),
        root: Arc::clone(&root),
        bpffs_dir: config.cgroup.bpffs_dir.clone(),
        listeners: listener_addrs,
        runtime: tokio::runtime::Handle::current(),
    });

    let context = Arc::new(SessionContext {
        interception,
        root: Arc::clone(&root),
        policy: Arc::clone(&policy),
        store: store.clone(),
        upstream_connect_timeout: Duration::from_millis(
            config.redirect.upstream_connect_timeout_ms,
        ),
        credentials: Arc::new(credentials),
        cancels: Arc::new(CancelRegistry::default()),
        mask_key: crate::credentials::load_or_create_mask_key(&config.daemon.state_dir)?.into(),
    });

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
    tracing::info!("sluice daemon ready");

    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload_policy(&policy, &config.daemon.policy_dir),
        }
    }
    tracing::info!("stopping: agents stay intercepted and are refused until a daemon is back");
    redirect_task.abort();
    let _ = stop_control.send(());
    let _ = control_task.await;
    store.shutdown().await?;
    Ok(())
}

/// Replaces the policy if the directory holds a valid one; otherwise keeps the old.
pub fn reload_policy(policy: &PolicyHandle, dir: &Path) {
    match Policy::load_dir(dir) {
        Ok(new) => {
            let counts = new.counts();
            policy.replace(new);
            tracing::info!(
                agents = counts.agents,
                resources = counts.resources,
                rules = counts.rules,
                "policy reloaded"
            );
        }
        Err(errors) => {
            tracing::error!(%errors, "policy reload rejected: the previous policy stays in force");
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
    started: Instant,
    started_at: OffsetDateTime,
    store: Store,
    policy: Arc<PolicyHandle>,
    policy_dir: PathBuf,
    root: Arc<ManagedRoot>,
    bpffs_dir: PathBuf,
    listeners: Vec<String>,
    runtime: tokio::runtime::Handle,
}

impl ControlBackend for Backend {
    fn status(&self) -> StatusReport {
        let counts = self.policy.current().counts();
        let store_counts = self.store.counts().unwrap_or_default();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            started_at: self.started_at,
            uptime_seconds: self.started.elapsed().as_secs(),
            cgroup_root: self.root.path().display().to_string(),
            programs: bpf::attached_programs(&self.bpffs_dir)
                .into_iter()
                .map(|(name, attached)| ProgramStatus { name, attached })
                .collect(),
            listeners: self.listeners.clone(),
            policy: PolicyStatus {
                dir: self.policy_dir.display().to_string(),
                agents: counts.agents,
                resources: counts.resources,
                rules: counts.rules,
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
        }
    }

    fn list_sessions(&self, query: &SessionQuery) -> Result<Vec<SessionRecord>, BackendError> {
        let mut sessions = self
            .store
            .list_sessions(&SessionFilter {
                agent: query.agent.clone(),
                limit: Some(query.limit),
                since_id: None,
            })
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
            if let Err(error) = store.put_session(&record, Durability::Batched).await {
                tracing::error!(%error, "cannot record a refused control connection");
            }
        });
    }
}
