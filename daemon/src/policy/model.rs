//! The checked policy's building blocks: what the loader produces and the decision code
//! reads. Every value here has already been validated, so matching cannot fail.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::AgentFacts;

/// What a rule tells sluice to do with the operations it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the operation through.
    Allow,
    /// Refuse the operation.
    Deny,
    /// Hold the operation for a human; it does not go through without an approval.
    Review,
}

impl Action {
    /// The name used in policy files, records and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Review => "review",
        }
    }

    /// Breaks ties between equally specific rules: deny beats review beats allow.
    pub(super) fn severity(self) -> u8 {
        match self {
            Self::Allow => 0,
            Self::Review => 1,
            Self::Deny => 2,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// A word that is not an operation class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown operation class `{0}` (expected `*`, connect, read, write, ddl, dcl, admin, dangerous or unparsed)"
)]
pub struct UnknownOperation(pub String);

/// The class of an operation, the same for every protocol.
///
/// A protocol decoder gives each operation exactly one class; when several fit, the most
/// sensitive one counts (`dangerous` over `dcl` over `admin` over `ddl` over `write` over
/// `read`), so that `DROP TABLE` is `dangerous` and not merely `ddl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Opening a connection to the destination (for database protocols: up to and
    /// including authentication). Decided once per connection.
    Connect,
    /// Reads data without changing it: `SELECT`, `SHOW`, `COPY ... TO`; HTTP `GET`/`HEAD`.
    Read,
    /// Changes data: `INSERT`, `UPDATE`/`DELETE` with a `WHERE`, `COPY ... FROM`; HTTP
    /// `POST`/`PUT`/`PATCH`.
    Write,
    /// Changes the schema without destroying data: `CREATE`, `ALTER`, `COMMENT`.
    Ddl,
    /// Changes who may do what: `GRANT`, `REVOKE`, `CREATE ROLE`, `ALTER USER`.
    Dcl,
    /// Administers the server: `VACUUM`, `CHECKPOINT`, `ALTER SYSTEM`, terminating backends.
    Admin,
    /// Destroys data or is hard to undo: `DROP`, `TRUNCATE`, `UPDATE`/`DELETE` without a
    /// `WHERE`; HTTP `DELETE`.
    Dangerous,
    /// Anything the decoder could not classify (unknown syntax, a protocol it does not
    /// decode). Denied unless a rule says otherwise, like everything else.
    Unparsed,
}

impl Operation {
    /// Every class, in declaration order.
    pub const ALL: [Operation; 8] = [
        Self::Connect,
        Self::Read,
        Self::Write,
        Self::Ddl,
        Self::Dcl,
        Self::Admin,
        Self::Dangerous,
        Self::Unparsed,
    ];

    /// The name used in policy files, records and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Read => "read",
            Self::Write => "write",
            Self::Ddl => "ddl",
            Self::Dcl => "dcl",
            Self::Admin => "admin",
            Self::Dangerous => "dangerous",
            Self::Unparsed => "unparsed",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = UnknownOperation;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|operation| operation.as_str() == text)
            .ok_or_else(|| UnknownOperation(text.to_owned()))
    }
}

/// The protocol a resource speaks, which picks the decoder for its connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes: only the connection itself is judged.
    #[default]
    Tcp,
    Postgres,
    Mysql,
    Http,
    Kubernetes,
    Ssh,
    /// DNS (UDP and TCP port 53), answered by the daemon's resolver: each query is the
    /// operation `read`.
    Dns,
}

impl Protocol {
    /// The name used in policy files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
            Self::Http => "http",
            Self::Kubernetes => "kubernetes",
            Self::Ssh => "ssh",
            Self::Dns => "dns",
        }
    }

    /// Every protocol a policy file can name.
    pub const ALL: [Protocol; 7] = [
        Self::Tcp,
        Self::Postgres,
        Self::Mysql,
        Self::Http,
        Self::Kubernetes,
        Self::Ssh,
        Self::Dns,
    ];
}

/// The protocols whose rules this sluice can enforce: `tcp` and `dns` (the core relays
/// and resolves them) and each protocol with a registered decoder. The binary gets it
/// from the protocol registry and hands it to the policy loader, which refuses a
/// policy naming any other: a rule that would never be applied must not load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupportedProtocols(Vec<Protocol>);

impl SupportedProtocols {
    /// Only what the core serves itself: `tcp` and `dns`.
    pub fn core() -> Self {
        Self(vec![Protocol::Tcp, Protocol::Dns])
    }

    /// Every protocol (for tests of the policy model alone).
    pub fn all() -> Self {
        Self(Protocol::ALL.to_vec())
    }

    /// These and `more`.
    pub fn with(mut self, more: impl IntoIterator<Item = Protocol>) -> Self {
        for protocol in more {
            if !self.0.contains(&protocol) {
                self.0.push(protocol);
            }
        }
        self
    }

    pub fn contains(&self, protocol: Protocol) -> bool {
        self.0.contains(&protocol)
    }

    pub fn iter(&self) -> impl Iterator<Item = Protocol> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Where something was defined: 1-based line and column in a policy file.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}:{}:{}",
            self.file.display(),
            self.line,
            self.column
        )
    }
}

/// An inclusive range of ports; a single port is a range of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// How many ports the range holds; the narrower range is the more specific.
    pub fn width(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(formatter, "{}", self.first)
        } else {
            write!(formatter, "{}-{}", self.first, self.last)
        }
    }
}

/// A process that counts as an agent the rules can name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Agent {
    /// The managed cgroup the agent runs in (`sluice run --agent NAME`).
    pub name: String,
    /// When set, only processes with one of these uids are this agent.
    pub uids: Option<Vec<u32>>,
    /// When set, only processes running one of these executables are this agent.
    pub exe: Option<Vec<PathBuf>>,
    /// When set, only processes of an agent run with a verified workload identity of
    /// this issuer, whose claims match, are this agent.
    pub identity: Option<AgentIdentity>,
    pub location: Location,
}

/// `identity = { issuer, claims }` on an agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    /// A configured issuer's name (`[[identity.issuer]] name`).
    pub issuer: String,
    /// What the token's claims must match; `None`: any token of the issuer.
    pub claims: Option<crate::workload::ClaimPatterns>,
}

impl AgentIdentity {
    /// Why `workload` is not this identity; `None` when it is.
    pub fn mismatch(&self, workload: Option<&crate::workload::Verified>) -> Option<String> {
        let Some(workload) = workload else {
            return Some("its run has no verified workload identity".into());
        };
        if workload.record.issuer != self.issuer {
            return Some(format!(
                "its identity is from issuer `{}`, not `{}`",
                workload.record.issuer, self.issuer
            ));
        }
        self.claims
            .as_ref()
            .and_then(|claims| claims.first_mismatch(&workload.claims))
    }
}

impl Agent {
    /// Whether the process is this agent: same cgroup name and every constraint met.
    pub fn admits(&self, facts: &AgentFacts<'_>) -> bool {
        facts.agent == self.name && self.satisfies_constraints(facts)
    }

    /// Whether the process meets the `uids` and `exe` constraints (ignoring the name).
    pub(super) fn satisfies_constraints(&self, facts: &AgentFacts<'_>) -> bool {
        let uid_ok = self
            .uids
            .as_ref()
            .is_none_or(|uids| uids.contains(&facts.uid));
        let exe_ok = self.exe.as_ref().is_none_or(|allowed| {
            facts
                .exe
                .is_some_and(|exe| allowed.iter().any(|path| path == exe))
        });
        let identity_ok = self
            .identity
            .as_ref()
            .is_none_or(|required| required.mismatch(facts.workload).is_none());
        uid_ok && exe_ok && identity_ok
    }
}

/// How well a destination matches a resource; the greater value is the more specific.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct AddressMatch {
    prefix_len: u8,
    /// `u32::MAX - width`, so that a narrower port range compares greater.
    port_narrowness: u32,
}

/// Something agents connect to: a set of addresses and ports speaking one protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resource {
    pub name: String,
    /// Addresses and networks; a bare address is a /32 (IPv4) or /128 (IPv6).
    pub addresses: Vec<IpNet>,
    /// Host names: a destination matches when the daemon's resolver answered one of
    /// them with the destination's address to the same agent, within the answer's TTL.
    pub hostnames: Vec<HostPattern>,
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
    /// The credential the daemon authenticates upstream with (a name in the
    /// credentials file); `None` passes the agent's own authentication through.
    pub credential: Option<String>,
    /// TLS from the daemon to the upstream.
    pub tls: UpstreamTls,
    /// SSH: the upstream host keys the daemon accepts (a known_hosts file).
    pub known_hosts: Option<PathBuf>,
    /// When set, agents that ask for TLS get it, terminated by the daemon with this
    /// certificate; otherwise their SSLRequest is answered 'N'.
    pub agent_tls: Option<AgentTls>,
    pub location: Location,
}

/// The certificate the daemon presents to agents that ask for TLS.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentTls {
    /// PEM certificate chain, for the name the agents dial.
    pub cert_file: std::path::PathBuf,
    /// PEM private key (root-only).
    pub key_file: std::path::PathBuf,
}

/// TLS on the daemon's upstream connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// Optional for `http` resources, whose upstream TLS follows the agent's.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM file with the CA certificates to trust; the system roots when absent.
    pub ca_file: Option<std::path::PathBuf>,
    /// The name to verify the server's certificate against; the resource's address
    /// when absent.
    pub server_name: Option<String>,
}

/// How the daemon secures its upstream connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS with the certificate chain and the server name verified.
    VerifyFull,
    /// HTTP resources only: the agent's TLS is relayed as opaque bytes, not
    /// intercepted (for pinned clients and mTLS upstreams); only the connection is
    /// judged and the session is recorded as passthrough.
    Passthrough,
}

impl Resource {
    /// Whether the destination is this resource, and how specifically.
    ///
    /// The destination must already be canonical (IPv4-mapped IPv6 turned into IPv4).
    pub(super) fn match_destination(&self, destination: SocketAddr) -> Option<AddressMatch> {
        let ip: IpAddr = destination.ip();
        let prefix_len = self
            .addresses
            .iter()
            .filter(|network| network.contains(&ip))
            .map(IpNet::prefix_len)
            .max()?;
        let width = self
            .ports
            .iter()
            .filter(|range| range.contains(destination.port()))
            .map(|range| range.width())
            .min()?;
        Some(AddressMatch {
            prefix_len,
            port_narrowness: u32::MAX - width,
        })
    }

    /// Whether a destination the agent was told `names` stand for is this resource by
    /// host name, and how specifically: (name specificity, port narrowness).
    pub(super) fn match_host_names(&self, port: u16, names: &[String]) -> Option<(usize, u32)> {
        let name_match = self
            .hostnames
            .iter()
            .flat_map(|pattern| names.iter().filter_map(|name| pattern.match_name(name)))
            .max()?;
        let width = self
            .ports
            .iter()
            .filter(|range| range.contains(port))
            .map(|range| range.width())
            .min()?;
        Some((name_match, u32::MAX - width))
    }
}

/// A host name in a resource: exact (`db.internal`) or every name below a domain
/// (`*.corp.example`). Lower case, without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// `*.SUFFIX`: any name ending in `.SUFFIX` (not `SUFFIX` itself).
    Below(String),
}

impl HostPattern {
    /// Parses `db.internal` or `*.corp.example`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim_end_matches('.').to_ascii_lowercase();
        let (below, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(format!(
                "`{text}` is not a host name (like db.internal) or a wildcard (like *.corp.example)"
            ));
        }
        Ok(if below {
            Self::Below(name.to_owned())
        } else {
            Self::Exact(name.to_owned())
        })
    }

    /// Whether `name` (lower case, no trailing dot) is matched; the greater the
    /// returned value, the more specific the match (exact beats any wildcard, a longer
    /// suffix beats a shorter one).
    pub fn match_name(&self, name: &str) -> Option<usize> {
        match self {
            Self::Exact(exact) => (name == exact).then_some(usize::MAX),
            Self::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.'))
                .then_some(suffix.len()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => formatter.write_str(name),
            Self::Below(suffix) => write!(formatter, "*.{suffix}"),
        }
    }
}

/// A rule's agent or resource: a name, or `*` for any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Selector {
    Any,
    Named(String),
}

impl Selector {
    pub(super) fn parse(text: &str) -> Self {
        if text == "*" {
            Self::Any
        } else {
            Self::Named(text.to_owned())
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => formatter.write_str("*"),
            Self::Named(name) => formatter.write_str(name),
        }
    }
}

/// How a rule's operation list matched an operation; later variants are more specific.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum OperationMatch {
    /// Only for `connect`: implied by an allow or review rule for other operations.
    Implied,
    /// Through `*`.
    Wildcard,
    /// The operation is listed by name.
    Explicit,
}

/// The operations a rule covers: classes listed by name, and/or `*` for all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct OperationSet {
    /// `*` was listed.
    pub wildcard: bool,
    /// Classes listed by name, sorted, without repeats.
    pub classes: Vec<Operation>,
}

impl OperationSet {
    pub(super) fn match_of(&self, operation: Operation) -> Option<OperationMatch> {
        if self.classes.contains(&operation) {
            Some(OperationMatch::Explicit)
        } else if self.wildcard {
            Some(OperationMatch::Wildcard)
        } else {
            None
        }
    }

    /// Whether some operation is covered by both sets at the same specificity.
    pub(super) fn overlaps_at_same_specificity(&self, other: &Self) -> bool {
        (self.wildcard && other.wildcard)
            || self
                .classes
                .iter()
                .any(|class| other.classes.contains(class))
    }
}

impl fmt::Display for OperationSet {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words: Vec<&str> = self.classes.iter().map(|class| class.as_str()).collect();
        if self.wildcard {
            words.insert(0, "*");
        }
        formatter.write_str(&words.join(", "))
    }
}

/// One rule: which agent may do which operations on which resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The `name` key, or `FILE:LINE` of the rule's table when it has none.
    pub name: String,
    pub agent: Selector,
    pub resource: Selector,
    pub operations: OperationSet,
    pub action: Action,
    /// The mask profile applied to what the rule lets through.
    pub mask: Option<String>,
    /// How long a statement this `review` rule holds may wait for a human before it
    /// is denied; `None`: the daemon's `[approvals] default_timeout`.
    pub timeout: Option<std::time::Duration>,
    /// HTTP resources: the rule covers only requests with these methods, paths and hosts.
    pub http: Option<HttpNarrowing>,
    /// `when = { claims = {...} }`: the rule applies only to agent runs whose verified
    /// workload identity has matching claims (a run without one never matches).
    pub when: Option<crate::workload::ClaimPatterns>,
    /// Kubernetes resources: the rule covers only requests with these verbs, groups,
    /// resources, namespaces and names.
    pub kubernetes: Option<KubernetesNarrowing>,
    /// `ssh = { commands = [...] }`: the rule covers only SSH requests whose command
    /// line matches one of these globs (it still implies `connect`);
    /// `protected_refs`/`read_only_refs` limit the git pushes it lets through.
    pub ssh: Option<SshNarrowing>,
    pub location: Location,
}

/// A rule's `ssh` table: its narrowing to SSH commands and the refs it protects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct SshNarrowing {
    /// Globs over the command line as the agent sent it: `*` any run of characters,
    /// `?` one; neither matches a shell separator or substitution. Empty: every
    /// command (a table that only protects refs).
    pub commands: Vec<String>,
    /// Ref globs a push under this rule may only move forward: a force-push (any
    /// update not proven a fast-forward) or a deletion of one is refused, even where
    /// the rule allows `dangerous`.
    pub protected_refs: Vec<String>,
    /// Ref globs no push under this rule may create, update or delete.
    pub read_only_refs: Vec<String>,
}

impl SshNarrowing {
    pub fn matches(&self, command: &str) -> bool {
        self.commands.is_empty()
            || self
                .commands
                .iter()
                .any(|glob| command_glob_matches(glob, command))
    }

    /// Whether the rule judges an SSH request with `command` (SFTP requests have
    /// none): only a table without `commands` judges those.
    pub fn admits(&self, command: Option<&str>) -> bool {
        self.commands.is_empty() || command.is_some_and(|command| self.matches(command))
    }

    pub fn protects(&self, git_ref: &str) -> bool {
        self.protected_refs
            .iter()
            .any(|glob| ref_glob_matches(glob, git_ref))
    }

    pub fn read_only(&self, git_ref: &str) -> bool {
        self.read_only_refs
            .iter()
            .any(|glob| ref_glob_matches(glob, git_ref))
    }
}

/// Whether the ref glob `glob` matches the full ref name `name`: `*` is any run of
/// characters (`/` included: `refs/tags/*` covers `refs/tags/v1/rc`), `?` one,
/// everything else itself. Unlike command globs, nothing is unmatchable: a ref name
/// may hold `;` or `$`, and a protection must not miss it.
pub fn ref_glob_matches(glob: &str, name: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut g, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if g < glob.len() && (glob[g] == '?' || (glob[g] != '*' && glob[g] == name[n])) {
            g += 1;
            n += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some((g, n));
            g += 1;
        } else if let Some((star_g, star_n)) = star {
            g = star_g + 1;
            n = star_n + 1;
            star = Some((star_g, n));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

/// Whether `glob` matches the command line `text`: `*` is any run of characters, `?`
/// one character, everything else itself. Neither wildcard matches a character that
/// separates or substitutes in a shell (`;&|<>$\`()` or a line break), so `systemctl
/// status *` does not let `systemctl status x; rm -rf /` through.
pub fn command_glob_matches(glob: &str, text: &str) -> bool {
    const UNMATCHABLE: &[char] = &[';', '&', '|', '<', '>', '$', '`', '(', ')', '\n', '\r'];
    let glob: Vec<char> = glob.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && glob[g] == '?' && !UNMATCHABLE.contains(&text[t]) {
            g += 1;
            t += 1;
        } else if g < glob.len() && glob[g] == '*' {
            star = Some((g, t));
            g += 1;
        } else if g < glob.len() && glob[g] == text[t] {
            g += 1;
            t += 1;
        } else if let Some((star_g, star_t)) = star
            && !UNMATCHABLE.contains(&text[star_t])
        {
            g = star_g + 1;
            t = star_t + 1;
            star = Some((star_g, t));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == '*')
}

impl Rule {
    /// Whether the rule's `when` condition holds for the process (always, without one).
    pub fn applies_to(&self, facts: &AgentFacts<'_>) -> bool {
        self.when.as_ref().is_none_or(|when| {
            facts
                .workload
                .is_some_and(|workload| when.matches(&workload.claims))
        })
    }
}

/// `http = { methods, paths, hosts }` on a rule: each list, when present, must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpNarrowing {
    /// Upper-case method names.
    pub methods: Option<Vec<String>>,
    /// Globs over the normalised path: `*` within a segment, `**` across segments.
    pub paths: Option<Vec<String>>,
    /// Host globs (`api.example.com`, `*.example.com`).
    pub hosts: Option<Vec<String>>,
}

impl HttpNarrowing {
    /// Whether a request with this method, host (lower case) and normalised path is
    /// covered.
    pub fn matches(&self, method: &str, host: &str, path: &str) -> bool {
        let methods = self
            .methods
            .as_ref()
            .is_none_or(|methods| methods.iter().any(|m| m.eq_ignore_ascii_case(method)));
        let paths = self
            .paths
            .as_ref()
            .is_none_or(|paths| paths.iter().any(|glob| glob_matches(glob, path)));
        let hosts = self.hosts.as_ref().is_none_or(|hosts| {
            hosts
                .iter()
                .any(|glob| glob_matches(&glob.to_ascii_lowercase(), host))
        });
        methods && paths && hosts
    }
}

impl fmt::Display for HttpNarrowing {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(methods) = &self.methods {
            parts.push(format!("methods {}", methods.join("|")));
        }
        if let Some(paths) = &self.paths {
            parts.push(format!("paths {}", paths.join("|")));
        }
        if let Some(hosts) = &self.hosts {
            parts.push(format!("hosts {}", hosts.join("|")));
        }
        formatter.write_str(&parts.join(", "))
    }
}

/// `kubernetes = { verbs, api_groups, resources, namespaces, names }` on a rule: each
/// list, when present, must match (see `policies/README.md`, "Kubernetes").
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesNarrowing {
    /// Lower-case verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, `proxy`) or `*`.
    pub verbs: Option<Vec<String>>,
    /// API groups (`""` is the core group, `apps`...) or `*`.
    pub api_groups: Option<Vec<String>>,
    /// As in RBAC: `pods` (no subresource), `pods/exec`, `pods/*`, `*/scale`, `*`.
    pub resources: Option<Vec<String>>,
    /// Namespace globs; a cluster-scoped request has no namespace and matches none.
    pub namespaces: Option<Vec<String>>,
    /// Object name globs; a request without a name (list, create) matches none.
    pub names: Option<Vec<String>>,
}

/// A Kubernetes request as rules see it (the protocol module maps it).
#[derive(Clone, Copy, Debug, Default)]
pub struct KubernetesRequest<'a> {
    /// `false` for discovery, `/version`, `/openapi`, health: only `verbs` narrows those.
    pub is_resource_request: bool,
    pub verb: &'a str,
    pub api_group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
}

impl KubernetesNarrowing {
    /// Whether the request is covered.
    pub fn matches(&self, request: &KubernetesRequest<'_>) -> bool {
        let verbs = self.verbs.as_ref().is_none_or(|verbs| {
            verbs
                .iter()
                .any(|verb| verb == "*" || verb.eq_ignore_ascii_case(request.verb))
        });
        if !request.is_resource_request {
            return verbs;
        }
        let groups = self.api_groups.as_ref().is_none_or(|groups| {
            groups
                .iter()
                .any(|group| group == "*" || group == request.api_group)
        });
        let resources = self.resources.as_ref().is_none_or(|resources| {
            resources.iter().any(|pattern| {
                rbac_resource_matches(pattern, request.resource, request.subresource)
            })
        });
        let namespaces = self.namespaces.as_ref().is_none_or(|namespaces| {
            !request.namespace.is_empty()
                && namespaces
                    .iter()
                    .any(|glob| glob_matches(glob, request.namespace))
        });
        let names = self.names.as_ref().is_none_or(|names| {
            !request.name.is_empty() && names.iter().any(|glob| glob_matches(glob, request.name))
        });
        verbs && groups && resources && namespaces && names
    }

    /// Whether `resources` lists `resource` (or `resource/subresource`) by its own name,
    /// not through a wildcard: how a rule opts in to Secrets in plain and to
    /// port-forwarding.
    pub fn names_resource(&self, resource_path: &str) -> bool {
        self.resources
            .as_ref()
            .is_some_and(|resources| resources.iter().any(|listed| listed == resource_path))
    }
}

/// RBAC's resource matching: `*`, `res`, `res/sub`, `res/*`, `*/sub`.
fn rbac_resource_matches(pattern: &str, resource: &str, subresource: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('/') {
        None => subresource.is_empty() && pattern == resource,
        Some((res, sub)) => {
            !subresource.is_empty()
                && (res == "*" || res == resource)
                && (sub == "*" || sub == subresource)
        }
    }
}

impl fmt::Display for KubernetesNarrowing {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (label, list) in [
            ("verbs", &self.verbs),
            ("api_groups", &self.api_groups),
            ("resources", &self.resources),
            ("namespaces", &self.namespaces),
            ("names", &self.names),
        ] {
            if let Some(list) = list {
                parts.push(format!("{label} {}", list.join("|")));
            }
        }
        formatter.write_str(&parts.join(", "))
    }
}

/// Whether a glob (`*` = any run of characters except `/`, `**` = anything) matches.
pub fn glob_matches(glob: &str, text: &str) -> bool {
    fn matches(glob: &[u8], text: &[u8]) -> bool {
        match glob.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) if rest.first() == Some(&b'*') => {
                let rest = &rest[1..];
                (0..=text.len()).any(|skip| matches(rest, &text[skip..]))
            }
            Some((b'*', rest)) => {
                let limit = text.iter().position(|&b| b == b'/').unwrap_or(text.len());
                (0..=limit).any(|skip| matches(rest, &text[skip..]))
            }
            Some((&byte, rest)) => text.first() == Some(&byte) && matches(rest, &text[1..]),
        }
    }
    matches(glob.as_bytes(), text.as_bytes())
}

/// How specifically a rule matched; compared field by field, in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Specificity {
    pub agent_named: bool,
    pub resource_named: bool,
    pub operation: OperationMatch,
    /// An `http` narrowing that matched beats a rule without one.
    pub narrowed: bool,
    /// The rule has a `when` condition (which held): it beats the same rule without.
    pub conditioned: bool,
}
