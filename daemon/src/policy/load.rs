//! Turns policy files into a checked [`Policy`], or into every diagnostic worth fixing.
//!
//! Loading runs in phases so that one mistake does not hide the others: each file is
//! parsed on its own (a syntax or shape error stops only that file), then all agents and
//! resources are checked, then the rules that refer to them, then conflicts between rules.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::model::AgentIdentity;
use super::{
    Policy,
    model::{
        Action, Agent, AgentTls, HostPattern, HttpNarrowing, KubernetesNarrowing, Location,
        Operation, OperationSet, PortRange, Protocol, Resource, Rule, Selector, TlsMode,
        UpstreamTls,
    },
};
use crate::{config::line_column, masking::MaskProfile, workload::ClaimPatterns};

/// Rule name reserved for "no rule matched".
pub const DEFAULT_DENY_RULE: &str = "default-deny";

/// One problem in a policy, at a 1-based line and column (both 0 when the problem is the
/// file or directory as a whole, e.g. it cannot be read).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(formatter, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                formatter,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every diagnostic found while loading a policy; never empty.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", list(.0))]
pub struct PolicyErrors(pub Vec<Diagnostic>);

fn list(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(Diagnostic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

// The file format. Unknown keys are errors so that a typo cannot weaken a policy.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    agent: Vec<Spanned<AgentSpec>>,
    #[serde(default)]
    resource: Vec<Spanned<ResourceSpec>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    mask: Vec<Spanned<MaskProfile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentSpec {
    name: Spanned<String>,
    uids: Option<Spanned<Vec<u32>>>,
    exe: Option<Spanned<Vec<Spanned<String>>>>,
    /// `{ issuer = NAME, claims = {...} }`: runs with this verified workload identity only.
    identity: Option<Spanned<IdentitySpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentitySpec {
    issuer: Spanned<String>,
    claims: Option<Spanned<toml::value::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenSpec {
    claims: Spanned<toml::value::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceSpec {
    name: Spanned<String>,
    addresses: Option<Spanned<Vec<Spanned<String>>>>,
    /// Host names (`db.internal`, `*.corp.example`) matched through the resolver.
    hostnames: Option<Spanned<Vec<Spanned<String>>>>,
    ports: Spanned<Vec<Spanned<toml::Value>>>,
    #[serde(default)]
    protocol: Protocol,
    /// A name in the daemon's credentials file: the daemon logs in upstream with it.
    credential: Option<String>,
    /// SSH: a known_hosts file pinning the upstream host keys.
    known_hosts: Option<Spanned<std::path::PathBuf>>,
    #[serde(default)]
    tls: UpstreamTls,
    agent_tls: Option<Spanned<AgentTls>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Option<Spanned<String>>,
    agent: Spanned<String>,
    resource: Spanned<String>,
    operations: Option<Spanned<Vec<Spanned<String>>>>,
    action: Action,
    /// A `[[mask]]` profile applied to what this rule lets the agent read.
    mask: Option<Spanned<String>>,
    /// How long a statement held for review waits before it is denied (`review` only).
    timeout: Option<Spanned<String>>,
    /// HTTP resources: `{ methods, paths, hosts }`.
    http: Option<Spanned<HttpNarrowing>>,
    /// `{ claims = {...} }`: the rule applies only to runs whose workload identity matches.
    when: Option<Spanned<WhenSpec>>,
    /// Kubernetes resources: `{ verbs, api_groups, resources, namespaces, names }`.
    kubernetes: Option<Spanned<KubernetesNarrowing>>,
    /// `{ commands = [...] }`: the rule covers only SSH commands matching these globs.
    ssh: Option<Spanned<SshSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SshSpec {
    commands: Option<Vec<String>>,
    protected_refs: Option<Vec<String>>,
    read_only_refs: Option<Vec<String>>,
}

struct ParsedFile<'a> {
    path: &'a Path,
    text: &'a str,
    content: PolicyFile,
}

impl ParsedFile<'_> {
    fn locate(&self, span: Range<usize>) -> Location {
        locate(self.path, self.text, span)
    }
}

fn locate(file: &Path, text: &str, span: Range<usize>) -> Location {
    let (line, column) = line_column(text, span.start);
    Location {
        file: file.to_owned(),
        line,
        column,
    }
}

fn diagnostic(at: &Location, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        file: at.file.clone(),
        line: at.line,
        column: at.column,
        message: message.into(),
    }
}

/// Reads every `*.toml` file directly in `dir` (sorted by name; dot-files skipped).
pub(super) fn load_dir(dir: &Path) -> Result<Policy, PolicyErrors> {
    let whole_dir_error = |message: String| {
        PolicyErrors(vec![Diagnostic {
            file: dir.to_owned(),
            line: 0,
            column: 0,
            message,
        }])
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|error| whole_dir_error(format!("cannot read policy directory: {error}")))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|error| whole_dir_error(format!("cannot list policy directory: {error}")))?;
        let path = entry.path();
        let is_policy_name = path
            .extension()
            .is_some_and(|extension| extension == "toml")
            && !entry.file_name().to_string_lossy().starts_with('.');
        // `Path::is_file` follows symlinks, so a linked policy file is loaded too.
        if is_policy_name && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();

    let mut sources = Vec::with_capacity(paths.len());
    let mut diagnostics = Vec::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push((path, text)),
            Err(error) => diagnostics.push(Diagnostic {
                file: path,
                line: 0,
                column: 0,
                message: format!("cannot read policy file: {error}"),
            }),
        }
    }
    match (from_sources(&sources), diagnostics.is_empty()) {
        (Ok(policy), true) => Ok(policy),
        (Ok(_), false) => Err(PolicyErrors(diagnostics)),
        (Err(PolicyErrors(more)), _) => {
            diagnostics.extend(more);
            Err(PolicyErrors(diagnostics))
        }
    }
}

/// Builds a policy from `(path, text)` pairs, in the order given.
pub(super) fn from_sources(sources: &[(PathBuf, String)]) -> Result<Policy, PolicyErrors> {
    let mut builder = Builder::default();
    let mut parsed = Vec::with_capacity(sources.len());
    let mut every_file_parsed = true;
    for (path, text) in sources {
        match toml::from_str::<PolicyFile>(text) {
            Ok(content) => parsed.push(ParsedFile {
                path,
                text,
                content,
            }),
            Err(error) => {
                every_file_parsed = false;
                let at = locate(path, text, error.span().unwrap_or(0..0));
                builder
                    .diagnostics
                    .push(diagnostic(&at, error.message().trim_end()));
            }
        }
    }

    for file in &parsed {
        for profile in &file.content.mask {
            builder.add_mask(file, profile);
        }
    }
    for file in &parsed {
        for agent in &file.content.agent {
            builder.add_agent(file, agent);
        }
        for resource in &file.content.resource {
            builder.add_resource(file, resource);
        }
    }
    for file in &parsed {
        for rule in &file.content.rule {
            // A definition may sit in a file that failed to parse: do not guess.
            builder.add_rule(file, rule, every_file_parsed);
        }
    }
    builder.check_conflicts();
    builder.check_http_narrowing();

    if builder.diagnostics.is_empty() {
        Ok(Policy {
            agents: builder.agents,
            resources: builder.resources,
            rules: builder.rules,
            masks: builder.masks,
        })
    } else {
        Err(PolicyErrors(builder.diagnostics))
    }
}

#[derive(Default)]
struct Builder {
    masks: std::collections::BTreeMap<String, MaskProfile>,
    agents: Vec<Agent>,
    resources: Vec<Resource>,
    rules: Vec<Rule>,
    /// Where each name was first defined, per kind, for duplicate reports.
    agent_names: HashMap<String, Location>,
    resource_names: HashMap<String, Location>,
    rule_names: HashMap<String, Location>,
    diagnostics: Vec<Diagnostic>,
}

impl Builder {
    fn report(&mut self, at: &Location, message: impl Into<String>) {
        self.diagnostics.push(diagnostic(at, message));
    }

    /// Checks a name's shape and uniqueness; `false` means it was reported.
    fn claim_name(&mut self, kind: NameKind, name: &str, at: &Location) -> bool {
        if let Some(problem) = kind.problem_with(name) {
            self.report(
                at,
                format!("invalid {} name `{name}`: {problem}", kind.noun()),
            );
            return false;
        }
        let names = match kind {
            NameKind::Agent => &mut self.agent_names,
            NameKind::Resource => &mut self.resource_names,
            NameKind::Rule => &mut self.rule_names,
        };
        if let Some(first) = names.get(name) {
            let message = format!(
                "duplicate {} name `{name}` (first defined at {first})",
                kind.noun()
            );
            self.report(at, message);
            return false;
        }
        names.insert(name.to_owned(), at.clone());
        true
    }

    fn add_agent(&mut self, file: &ParsedFile<'_>, spec: &Spanned<AgentSpec>) {
        let location = file.locate(spec.span());
        let spec = spec.get_ref();
        let name_at = file.locate(spec.name.span());
        let mut valid = self.claim_name(NameKind::Agent, spec.name.get_ref(), &name_at);

        let uids = match &spec.uids {
            Some(uids) if uids.get_ref().is_empty() => {
                self.report(
                    &file.locate(uids.span()),
                    "`uids` must not be empty (leave it out to admit every uid)",
                );
                valid = false;
                None
            }
            Some(uids) => Some(uids.get_ref().clone()),
            None => None,
        };
        let exe = match &spec.exe {
            Some(paths) if paths.get_ref().is_empty() => {
                self.report(
                    &file.locate(paths.span()),
                    "`exe` must not be empty (leave it out to admit every executable)",
                );
                valid = false;
                None
            }
            Some(paths) => {
                let mut absolute = Vec::with_capacity(paths.get_ref().len());
                for path in paths.get_ref() {
                    let candidate = PathBuf::from(path.get_ref());
                    if candidate.is_absolute() {
                        absolute.push(candidate);
                    } else {
                        self.report(
                            &file.locate(path.span()),
                            format!("`exe` entry `{}` must be an absolute path", path.get_ref()),
                        );
                        valid = false;
                    }
                }
                Some(absolute)
            }
            None => None,
        };
        let identity = match &spec.identity {
            None => None,
            Some(identity_spec) => {
                let identity = self.agent_identity(file, spec.name.get_ref(), identity_spec);
                valid &= identity.is_some();
                identity
            }
        };
        if valid {
            self.agents.push(Agent {
                name: spec.name.get_ref().clone(),
                uids,
                exe,
                identity,
                location,
            });
        }
    }

    /// Checks an agent's `identity`: a configured issuer, well-formed claims, and for an
    /// issuer every organisation can get tokens from, an exact owner claim.
    fn agent_identity(
        &mut self,
        file: &ParsedFile<'_>,
        agent: &str,
        spec: &Spanned<IdentitySpec>,
    ) -> Option<AgentIdentity> {
        let at = file.locate(spec.span());
        let spec = spec.get_ref();
        let claims = match &spec.claims {
            None => None,
            Some(table) => match ClaimPatterns::from_toml(table.get_ref()) {
                Ok(patterns) => Some(patterns),
                Err(problem) => {
                    self.report(
                        &file.locate(table.span()),
                        format!("`identity.claims`: {problem}"),
                    );
                    return None;
                }
            },
        };
        let issuer = spec.issuer.get_ref();
        let known = crate::workload::known_issuers();
        let Some((_, url)) = known.iter().find(|(name, _)| name == issuer) else {
            self.report(
                &file.locate(spec.issuer.span()),
                format!(
                    "unknown identity issuer `{issuer}`: configure it in sluice.toml with [[identity.issuer]] name = \"{issuer}\""
                ),
            );
            return None;
        };
        if let Some(owners) = crate::workload::claims::owner_claims(url)
            && !owners
                .iter()
                .any(|owner| claims.as_ref().is_some_and(|claims| claims.pins(owner)))
        {
            self.report(
                &at,
                format!(
                    "agent `{agent}` is bound to issuer `{issuer}` ({url}), which issues tokens to every organisation: pin the owner with an exact claim ({}), or another organisation's job could be this agent",
                    owners.join(" or ")
                ),
            );
            return None;
        }
        Some(AgentIdentity {
            issuer: issuer.clone(),
            claims,
        })
    }

    fn add_resource(&mut self, file: &ParsedFile<'_>, spec: &Spanned<ResourceSpec>) {
        let location = file.locate(spec.span());
        let spec = spec.get_ref();
        let name_at = file.locate(spec.name.span());
        let mut valid = self.claim_name(NameKind::Resource, spec.name.get_ref(), &name_at);

        if spec.addresses.is_none() && spec.hostnames.is_none() {
            self.report(
                &name_at,
                "a resource needs `addresses` (IP addresses or CIDRs) or `hostnames`",
            );
            valid = false;
        }
        if let Some(addresses) = spec.addresses.as_ref().filter(|a| a.get_ref().is_empty()) {
            self.report(
                &file.locate(addresses.span()),
                "`addresses` must list at least one IP address or CIDR",
            );
            valid = false;
        }
        if let Some(hostnames) = spec.hostnames.as_ref().filter(|h| h.get_ref().is_empty()) {
            self.report(
                &file.locate(hostnames.span()),
                "`hostnames` must list at least one host name",
            );
            valid = false;
        }
        let mut hostnames = Vec::new();
        for hostname in spec.hostnames.iter().flat_map(|h| h.get_ref()) {
            match HostPattern::parse(hostname.get_ref()) {
                Ok(pattern) => hostnames.push(pattern),
                Err(problem) => {
                    self.report(&file.locate(hostname.span()), problem);
                    valid = false;
                }
            }
        }
        let mut addresses = Vec::new();
        for address in spec.addresses.iter().flat_map(|a| a.get_ref()) {
            match parse_network(address.get_ref()) {
                Ok(network) => addresses.push(network),
                Err(problem) => {
                    self.report(&file.locate(address.span()), problem);
                    valid = false;
                }
            }
        }

        if spec.ports.get_ref().is_empty() {
            self.report(
                &file.locate(spec.ports.span()),
                "`ports` must list at least one port or range",
            );
            valid = false;
        }
        let mut ports = Vec::with_capacity(spec.ports.get_ref().len());
        for port in spec.ports.get_ref() {
            match parse_port_range(port.get_ref()) {
                Ok(range) => ports.push(range),
                Err(problem) => {
                    self.report(&file.locate(port.span()), problem);
                    valid = false;
                }
            }
        }

        if let Some(agent_tls) = &spec.agent_tls {
            for path in [
                &agent_tls.get_ref().cert_file,
                &agent_tls.get_ref().key_file,
            ] {
                if !path.is_file() {
                    self.report(
                        &file.locate(agent_tls.span()),
                        format!("agent_tls file {} does not exist", path.display()),
                    );
                    valid = false;
                }
            }
        }

        if spec.protocol != Protocol::Http
            && spec.tls.mode == TlsMode::Disable
            && (spec.tls.ca_file.is_some() || spec.tls.server_name.is_some())
        {
            self.report(
                &name_at,
                "`tls` names a ca_file or server_name but no mode: set tls.mode = \"verify-full\"",
            );
            valid = false;
        }
        if spec.tls.mode == TlsMode::Passthrough && spec.protocol != Protocol::Http {
            self.report(
                &name_at,
                "tls.mode = \"passthrough\" applies only to resources with protocol = \"http\"",
            );
            valid = false;
        }
        if let Some(known_hosts) = &spec.known_hosts {
            if spec.protocol != Protocol::Ssh {
                self.report(
                    &file.locate(known_hosts.span()),
                    "`known_hosts` pins SSH host keys: only for `protocol = \"ssh\"`",
                );
                valid = false;
            } else if !known_hosts.get_ref().is_file() {
                self.report(
                    &file.locate(known_hosts.span()),
                    format!(
                        "known_hosts file {} does not exist",
                        known_hosts.get_ref().display()
                    ),
                );
                valid = false;
            }
        } else if spec.protocol == Protocol::Ssh {
            self.report(
                &location,
                "an ssh resource needs `known_hosts`: the upstream host keys the daemon accepts",
            );
            valid = false;
        }
        if spec.protocol == Protocol::Ssh && spec.credential.is_none() {
            self.report(
                &location,
                "an ssh resource needs `credential`: the daemon logs in upstream, agents hold no key",
            );
            valid = false;
        }

        if valid {
            self.resources.push(Resource {
                name: spec.name.get_ref().clone(),
                addresses,
                hostnames,
                ports,
                protocol: spec.protocol,
                credential: spec.credential.clone(),
                known_hosts: spec.known_hosts.as_ref().map(|path| path.get_ref().clone()),
                tls: spec.tls.clone(),
                agent_tls: spec.agent_tls.as_ref().map(|tls| tls.get_ref().clone()),
                location,
            });
        }
    }

    fn add_rule(
        &mut self,
        file: &ParsedFile<'_>,
        spec: &Spanned<RuleSpec>,
        check_references: bool,
    ) {
        let location = file.locate(spec.span());
        let spec = spec.get_ref();
        let mut valid = true;

        let name = match &spec.name {
            Some(name) => {
                let name_at = file.locate(name.span());
                valid &= self.claim_name(NameKind::Rule, name.get_ref(), &name_at);
                name.get_ref().clone()
            }
            None => {
                let file_name = file.path.file_name().map_or_else(
                    || file.path.display().to_string(),
                    |name| name.to_string_lossy().into_owned(),
                );
                let generated = format!("{file_name}:{}", location.line);
                valid &= self.claim_name(NameKind::Rule, &generated, &location);
                generated
            }
        };

        let agent = Selector::parse(spec.agent.get_ref());
        if let Selector::Named(agent_name) = &agent
            && check_references
            && !self.agent_names.contains_key(agent_name)
        {
            self.report(
                &file.locate(spec.agent.span()),
                format!("rule refers to undefined agent `{agent_name}` (define it with [[agent]] or use \"*\")"),
            );
            valid = false;
        }
        let resource = Selector::parse(spec.resource.get_ref());
        if let Selector::Named(resource_name) = &resource
            && check_references
            && !self.resource_names.contains_key(resource_name)
        {
            self.report(
                &file.locate(spec.resource.span()),
                format!("rule refers to undefined resource `{resource_name}` (define it with [[resource]] or use \"*\")"),
            );
            valid = false;
        }

        let operations = match &spec.operations {
            None => OperationSet {
                wildcard: true,
                classes: Vec::new(),
            },
            Some(list) if list.get_ref().is_empty() => {
                self.report(
                    &file.locate(list.span()),
                    "`operations` must not be empty (leave it out, or write [\"*\"], for every operation)",
                );
                valid = false;
                OperationSet::default()
            }
            Some(list) => {
                let mut set = OperationSet::default();
                for word in list.get_ref() {
                    if word.get_ref() == "*" {
                        set.wildcard = true;
                        continue;
                    }
                    match word.get_ref().parse::<Operation>() {
                        Ok(operation) => set.classes.push(operation),
                        Err(error) => {
                            self.report(&file.locate(word.span()), error.to_string());
                            valid = false;
                        }
                    }
                }
                set.classes.sort();
                set.classes.dedup();
                set
            }
        };

        let mask = spec.mask.as_ref().map(|mask| mask.get_ref().clone());
        if let Some(mask_spec) = &spec.mask
            && check_references
            && !self.masks.contains_key(mask_spec.get_ref())
        {
            self.report(
                &file.locate(mask_spec.span()),
                format!(
                    "rule refers to undefined mask profile `{}` (define it with [[mask]])",
                    mask_spec.get_ref()
                ),
            );
            valid = false;
        }

        let timeout = match &spec.timeout {
            None => None,
            Some(text) if spec.action != Action::Review => {
                self.report(
                    &file.locate(text.span()),
                    format!(
                        "`timeout` applies only to rules with action = \"review\", not \"{}\"",
                        spec.action
                    ),
                );
                valid = false;
                None
            }
            Some(text) => match crate::approvals::parse_duration(text.get_ref()) {
                Ok(timeout) => Some(timeout),
                Err(error) => {
                    self.report(&file.locate(text.span()), error.to_string());
                    valid = false;
                    None
                }
            },
        };

        let http = spec.http.as_ref().map(|http| {
            let mut narrowing = http.get_ref().clone();
            let at = file.locate(http.span());
            if let Some(methods) = &mut narrowing.methods {
                for method in methods.iter_mut() {
                    *method = method.to_ascii_uppercase();
                    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
                        self.report(&at, format!("`{method}` is not an HTTP method"));
                        valid = false;
                    }
                }
            }
            for path in narrowing.paths.iter().flatten() {
                if !path.starts_with('/') {
                    self.report(&at, format!("http path `{path}` must start with `/`"));
                    valid = false;
                }
            }
            for list in [&narrowing.methods, &narrowing.paths, &narrowing.hosts] {
                if list.as_ref().is_some_and(Vec::is_empty) {
                    self.report(
                        &at,
                        "an `http` list must not be empty (leave it out to match all)",
                    );
                    valid = false;
                }
            }
            narrowing
        });
        let when = match &spec.when {
            None => None,
            Some(when) => match ClaimPatterns::from_toml(when.get_ref().claims.get_ref()) {
                Ok(patterns) => Some(patterns),
                Err(problem) => {
                    self.report(
                        &file.locate(when.get_ref().claims.span()),
                        format!("`when.claims`: {problem}"),
                    );
                    valid = false;
                    None
                }
            },
        };

        let kubernetes = spec.kubernetes.as_ref().map(|kubernetes| {
            let mut narrowing = kubernetes.get_ref().clone();
            let at = file.locate(kubernetes.span());
            const VERBS: [&str; 10] = [
                "*",
                "get",
                "list",
                "watch",
                "create",
                "update",
                "patch",
                "delete",
                "deletecollection",
                "proxy",
            ];
            if let Some(verbs) = &mut narrowing.verbs {
                for verb in verbs.iter_mut() {
                    *verb = verb.to_ascii_lowercase();
                    if !VERBS.contains(&verb.as_str()) {
                        self.report(
                            &at,
                            format!(
                                "`{verb}` is not a Kubernetes verb (one of {})",
                                VERBS.join(", ")
                            ),
                        );
                        valid = false;
                    }
                }
            }
            for resource in narrowing.resources.iter().flatten() {
                let well_formed = match resource.split_once('/') {
                    None => !resource.is_empty(),
                    Some((res, sub)) => !res.is_empty() && !sub.is_empty() && !sub.contains('/'),
                };
                if !well_formed || resource.contains(char::is_uppercase) {
                    self.report(
                        &at,
                        format!(
                            "kubernetes resource `{resource}` must be `resource`, `resource/subresource`, `*` or `*/subresource`, in lower case"
                        ),
                    );
                    valid = false;
                }
            }
            for list in [
                &narrowing.verbs,
                &narrowing.api_groups,
                &narrowing.resources,
                &narrowing.namespaces,
                &narrowing.names,
            ] {
                if list.as_ref().is_some_and(Vec::is_empty) {
                    self.report(
                        &at,
                        "a `kubernetes` list must not be empty (leave it out to match all)",
                    );
                    valid = false;
                }
            }
            narrowing
        });
        let ssh = spec.ssh.as_ref().and_then(|narrowing| {
            let at = file.locate(narrowing.span());
            let table = narrowing.get_ref();
            let mut problems = Vec::new();
            if table.commands.as_ref().is_some_and(Vec::is_empty) {
                problems.push("`ssh.commands` must list at least one command glob".to_owned());
            }
            let refs = [&table.protected_refs, &table.read_only_refs];
            if table.commands.is_none() && refs.iter().all(|list| list.is_none()) {
                problems.push(
                    "`ssh` must name `commands`, `protected_refs` or `read_only_refs`".to_owned(),
                );
            }
            for (key, list) in ["protected_refs", "read_only_refs"].iter().zip(refs) {
                match list {
                    Some(globs) if globs.is_empty() => {
                        problems.push(format!("`ssh.{key}` must list at least one ref glob"));
                    }
                    Some(_) if spec.action == Action::Deny => problems.push(format!(
                        "`ssh.{key}` limits what an allow or review rule lets through; a deny rule refuses every push anyway"
                    )),
                    Some(globs) => {
                        for glob in globs.iter().filter(|glob| !glob.starts_with("refs/")) {
                            problems.push(format!(
                                "`ssh.{key}`: `{glob}` is not a full ref name (write `refs/heads/{glob}` for a branch, `refs/tags/...` for tags)"
                            ));
                        }
                    }
                    None => {}
                }
            }
            if !problems.is_empty() {
                for problem in problems {
                    self.report(&at, problem);
                }
                valid = false;
                return None;
            }
            Some(crate::policy::SshNarrowing {
                commands: table.commands.clone().unwrap_or_default(),
                protected_refs: table.protected_refs.clone().unwrap_or_default(),
                read_only_refs: table.read_only_refs.clone().unwrap_or_default(),
            })
        });

        if valid {
            self.rules.push(Rule {
                name,
                agent,
                resource,
                operations,
                action: spec.action,
                mask,
                timeout,
                http,
                when,
                kubernetes,
                ssh,
                location,
            });
        }
    }

    fn add_mask(&mut self, file: &ParsedFile<'_>, spec: &Spanned<MaskProfile>) {
        let at = file.locate(spec.span());
        let profile = spec.get_ref();
        if let Err(error) = profile.check() {
            self.report(&at, format!("invalid mask profile: {error}"));
            return;
        }
        if self.masks.contains_key(&profile.name) {
            self.report(
                &at,
                format!("mask profile `{}` is defined twice", profile.name),
            );
            return;
        }
        self.masks.insert(profile.name.clone(), profile.clone());
    }

    /// Reports `http` narrowing on rules for a named resource that is not `http`: a
    /// narrowing that could never apply must not load.
    fn check_http_narrowing(&mut self) {
        let mut problems = Vec::new();
        for rule in self.rules.iter().filter(|rule| rule.http.is_some()) {
            if let Selector::Named(name) = &rule.resource
                && let Some(resource) = self.resources.iter().find(|r| &r.name == name)
                && resource.protocol != Protocol::Http
            {
                problems.push(diagnostic(
                    &rule.location,
                    format!(
                        "rule `{}` narrows by `http` but resource `{name}` speaks {}, not http",
                        rule.name, resource.protocol
                    ),
                ));
            }
        }
        for rule in self.rules.iter().filter(|rule| rule.kubernetes.is_some()) {
            if let Selector::Named(name) = &rule.resource
                && let Some(resource) = self.resources.iter().find(|r| &r.name == name)
                && resource.protocol != Protocol::Kubernetes
            {
                problems.push(diagnostic(
                    &rule.location,
                    format!(
                        "rule `{}` narrows by `kubernetes` but resource `{name}` speaks {}, not kubernetes",
                        rule.name, resource.protocol
                    ),
                ));
            }
        }
        self.diagnostics.extend(problems);
    }

    /// Reports pairs of rules that tie on specificity yet disagree on the action.
    fn check_conflicts(&mut self) {
        let mut conflicts = Vec::new();
        for (index, later) in self.rules.iter().enumerate() {
            for earlier in self.rules.iter().take(index) {
                if earlier.agent == later.agent
                    && earlier.resource == later.resource
                    && earlier.action != later.action
                    && earlier.http == later.http
                    && earlier.when == later.when
                    && earlier.kubernetes == later.kubernetes
                    && earlier.ssh == later.ssh
                    && earlier
                        .operations
                        .overlaps_at_same_specificity(&later.operations)
                {
                    let shared = shared_operations(&earlier.operations, &later.operations);
                    conflicts.push(diagnostic(
                        &later.location,
                        format!(
                            "rule `{}` conflicts with rule `{}` ({}): both match agent `{}`, resource `{}` and operations {} equally specifically, but one says {} and the other {}",
                            later.name,
                            earlier.name,
                            earlier.location,
                            later.agent,
                            later.resource,
                            shared,
                            later.action,
                            earlier.action,
                        ),
                    ));
                }
            }
        }
        self.diagnostics.extend(conflicts);
    }
}

fn shared_operations(first: &OperationSet, second: &OperationSet) -> String {
    let mut words: Vec<&str> = first
        .classes
        .iter()
        .filter(|class| second.classes.contains(class))
        .map(|class| class.as_str())
        .collect();
    if first.wildcard && second.wildcard {
        words.insert(0, "*");
    }
    words.join(", ")
}

#[derive(Clone, Copy)]
enum NameKind {
    Agent,
    Resource,
    Rule,
}

impl NameKind {
    fn noun(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Resource => "resource",
            Self::Rule => "rule",
        }
    }

    fn problem_with(self, name: &str) -> Option<&'static str> {
        if name.is_empty() {
            return Some("names must not be empty");
        }
        if name == "*" {
            return Some("`*` means \"any\" in rules and cannot be a name");
        }
        if name.chars().any(char::is_control) {
            return Some("names must not contain control characters");
        }
        match self {
            // The name is a cgroup directory.
            Self::Agent if name.contains('/') || name == "." || name == ".." => {
                Some("agent names are cgroup names: no `/`, not `.` or `..`")
            }
            Self::Rule if name == DEFAULT_DENY_RULE => {
                Some("`default-deny` is reserved for decisions no rule made")
            }
            _ => None,
        }
    }
}

/// Parses `192.0.2.1`, `10.0.0.0/8`, `::1` or `fd00::/8`.
fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(address) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(address));
    }
    let network: IpNet = text.parse().map_err(|_| {
        format!("`{text}` is not an IP address or CIDR (like 10.0.0.0/8 or fd00::/8)")
    })?;
    if network.trunc() != network {
        return Err(format!(
            "`{text}` has bits set past its /{} prefix; did you mean {}?",
            network.prefix_len(),
            network.trunc()
        ));
    }
    Ok(network)
}

/// Parses `5432`, `"5432"` or `"8000-8080"`.
fn parse_port_range(value: &toml::Value) -> Result<PortRange, String> {
    let port_number = |number: i64| -> Result<u16, String> {
        u16::try_from(number)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("port {number} is out of range (1-65535)"))
    };
    let port_text = |text: &str| -> Result<u16, String> {
        let number: i64 = text
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a port number"))?;
        port_number(number)
    };
    match value {
        toml::Value::Integer(number) => {
            let port = port_number(*number)?;
            Ok(PortRange {
                first: port,
                last: port,
            })
        }
        toml::Value::String(text) => {
            let (first, last) = match text.split_once('-') {
                Some((first, last)) => (port_text(first)?, port_text(last)?),
                None => {
                    let port = port_text(text)?;
                    (port, port)
                }
            };
            if first > last {
                return Err(format!(
                    "port range `{text}` is backwards (write it as \"{last}-{first}\")"
                ));
            }
            Ok(PortRange { first, last })
        }
        other => Err(format!(
            "a port is a number or a range like \"8000-8080\", not a {}",
            other.type_str()
        )),
    }
}
