//! A Kubernetes API **stand-in** for the tests: no real kube-apiserver can be installed
//! on these machines (none is packaged for Debian 12, PyPI or npm), so this is a small
//! HTTPS server on loopback that answers the way the API server does for what the
//! tests exercise, nothing more. Everything it serves follows the documented wire
//! shapes (`meta/v1` `Status`, `APIVersions`, `APIGroupList`, `APIResourceList`,
//! `version.Info`, typed objects and `…List`s with `metadata.resourceVersion`), so the
//! clients are real `kubectl` binaries and need no special handling.
//!
//! It serves:
//! - discovery: `/api`, `/apis`, `/api/v1`, `/apis/apps/v1`, `/version`, `/healthz`,
//!   `/livez`, `/readyz`; `/openapi/v2` and `/openapi/v3` answer 404 as servers without
//!   OpenAPI publishing do (kubectl then validates client-side without a schema);
//! - namespaces (cluster-scoped), pods, configmaps, secrets and deployments.apps
//!   (namespaced): get, list (with `fieldSelector=metadata.name=`), create, delete, with
//!   `NotFound` / `AlreadyExists` `Status` errors, and `nodes` (list, get, delete);
//!   request bodies in protobuf get 415 `UnsupportedMediaType`, as from a group
//!   without protobuf (so the tests create from JSON manifests);
//! - watch (`?watch=1`) of a resource list: `ADDED`/`MODIFIED`/`DELETED` events as
//!   newline-delimited JSON, from the given `resourceVersion` on (or every object first
//!   when none is given), until `timeoutSeconds` or the client leaves;
//! - `pods/exec` over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`) and SPDY/3.1,
//!   running the command for real on this machine (`kube/exec.rs` says how and what a
//!   stand-in cannot do);
//! - a request log (method, path, Authorization, Impersonate-* headers) as the witness
//!   of what the upstream really received, and a log of the execs it served.
//!
//! - server-side apply (`PATCH` with `application/apply-patch+yaml`, the body as JSON):
//!   the applied configuration replaces the object; managed fields are not tracked.
//!
//! Not served (the tests say so where it matters): other patch types, attach and
//! port-forward upgrades.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::pki::TestPki;

mod exec;
pub use exec::ExecSeen;

/// The address the stand-in listens on: not 127.0.0.1, so agents' connections are
/// redirected to the daemon.
pub const HOST: &str = "127.0.0.3";

/// What the stand-in received, one entry per request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub authorization: Option<String>,
    pub impersonation: Vec<String>,
    pub accept: Option<String>,
    /// The client presented a certificate the stand-in's client CA verified.
    pub client_certificate: bool,
}

/// Whether the connection a request came on presented a verified client certificate.
#[derive(Clone, Copy)]
struct ClientCertificate(bool);

struct State {
    /// (namespace or "", resource, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    resource_version: u64,
    seen: Vec<Seen>,
    /// Every change, for watches: (namespace, resource, resource version, event).
    changes: tokio::sync::broadcast::Sender<Change>,
    /// Every change so far, for a watch from an older resource version.
    history: Vec<Change>,
}

/// (namespace, resource, resource version, watch event).
type Change = (String, String, u64, Value);

impl State {
    fn change(&mut self, namespace: &str, resource: &str, event: Value) {
        let change = (
            namespace.to_owned(),
            resource.to_owned(),
            self.resource_version,
            event,
        );
        self.history.push(change.clone());
        let _ = self.changes.send(change);
    }
}

impl Default for State {
    fn default() -> Self {
        Self {
            objects: BTreeMap::new(),
            resource_version: 0,
            seen: Vec::new(),
            changes: tokio::sync::broadcast::channel(4096).0,
            history: Vec::new(),
        }
    }
}

/// A running stand-in.
pub struct KubeStandIn {
    pub port: u16,
    /// The CA that signed the stand-in's certificate (the resource's `tls.ca_file`).
    pub ca_file: PathBuf,
    state: Arc<Mutex<State>>,
    execs: Arc<Mutex<Vec<ExecSeen>>>,
    _dir: tempfile::TempDir,
}

impl KubeStandIn {
    /// Starts the stand-in with namespaces `shop` and `kube-system`, pod `shop/web`,
    /// secret `shop/db` (password `hunter2-sluice`), node `worker-1`.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Like [`Self::start`], but every request must come with a client certificate
    /// signed by the CA `client_ca_pem` (else 401 `Unauthorized`), as an API server
    /// with `--client-ca-file` and no other authenticator.
    pub fn start_requiring_client_certificates(client_ca_pem: &str) -> Self {
        Self::start_with(Some(client_ca_pem))
    }

    fn start_with(client_ca_pem: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = TestPki::for_host(HOST);
        let (ca_file, _, _) = pki.write_to(dir.path());
        let state = Arc::new(Mutex::new(State::default()));
        {
            let mut state = state.lock().expect("state");
            for namespace in ["default", "shop", "kube-system"] {
                insert(
                    &mut state,
                    "",
                    "namespaces",
                    json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":namespace},"status":{"phase":"Active"}}),
                );
            }
            insert(
                &mut state,
                "",
                "nodes",
                json!({"apiVersion":"v1","kind":"Node","metadata":{"name":"worker-1"}}),
            );
            insert(
                &mut state,
                "shop",
                "pods",
                json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"web","namespace":"shop"},"spec":{"containers":[{"name":"web","image":"nginx"}]},"status":{"phase":"Running"}}),
            );
            insert(
                &mut state,
                "kube-system",
                "pods",
                json!({"apiVersion":"v1","kind":"Pod","metadata":{"name":"coredns","namespace":"kube-system"},"spec":{"containers":[{"name":"coredns","image":"coredns"}]},"status":{"phase":"Running"}}),
            );
            insert(
                &mut state,
                "shop",
                "secrets",
                json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":"db","namespace":"shop"},"type":"Opaque","data":{"password":"aHVudGVyMi1zbHVpY2U="}}),
            );
        }
        let listener = std::net::TcpListener::bind((HOST, 0)).expect("bind the stand-in");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let config = server_config(&pki, client_ca_pem);
        let require_client_certificate = client_ca_pem.is_some();
        let shared = Arc::clone(&state);
        let execs = Arc::new(Mutex::new(Vec::new()));
        let shared_execs = Arc::clone(&execs);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(serve(
                listener,
                config,
                shared,
                shared_execs,
                require_client_certificate,
            ));
        });
        Self {
            port,
            ca_file,
            state,
            execs,
            _dir: dir,
        }
    }

    /// The server URL a kubeconfig names.
    pub fn server(&self) -> String {
        format!("https://{HOST}:{}", self.port)
    }

    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(HOST.parse().expect("address"), self.port)
    }

    /// The execs the stand-in served so far (logged when each ends).
    pub fn execs(&self) -> Vec<ExecSeen> {
        self.execs.lock().expect("execs").clone()
    }

    /// What the stand-in received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().expect("state").seen.clone()
    }

    /// Whether an object exists now.
    pub fn has(&self, namespace: &str, resource: &str, name: &str) -> bool {
        self.state.lock().expect("state").objects.contains_key(&(
            namespace.to_owned(),
            resource.to_owned(),
            name.to_owned(),
        ))
    }

    /// Adds `count` Secrets to namespace `shop`, each with a distinct value.
    pub fn add_secrets(&self, count: usize) {
        self.add_secrets_of(count, 0);
    }

    /// `count` Secrets in `shop` whose values are `bulk-secret-value-NNNN` padded with
    /// `padding` more bytes.
    pub fn add_secrets_of(&self, count: usize, padding: usize) {
        let mut state = self.state.lock().expect("state");
        let pad = "p".repeat(padding);
        for index in 0..count {
            insert(
                &mut state,
                "shop",
                "secrets",
                json!({"apiVersion":"v1","kind":"Secret","metadata":{"name":format!("bulk-{index:04}"),"namespace":"shop"},"type":"Opaque","data":{"token":base64(&format!("bulk-secret-value-{index:04}{pad}"))}}),
            );
        }
    }
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn insert(state: &mut State, namespace: &str, resource: &str, mut object: Value) {
    state.resource_version += 1;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
    object["metadata"]["uid"] = json!(format!(
        "00000000-0000-0000-0000-{:012}",
        state.resource_version
    ));
    object["metadata"]["creationTimestamp"] = json!("2026-12-06T00:00:00Z");
    let kind =
        if state
            .objects
            .contains_key(&(namespace.to_owned(), resource.to_owned(), name.clone()))
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
    state.change(
        namespace,
        resource,
        json!({"type": kind, "object": object.clone()}),
    );
    state
        .objects
        .insert((namespace.to_owned(), resource.to_owned(), name), object);
}

fn server_config(pki: &TestPki, client_ca_pem: Option<&str>) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
    let certificates: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.certificate_pem.as_bytes())
            .collect::<Result<_, _>>()
            .expect("certificate");
    let key = PrivateKeyDer::from_pem_slice(pki.key_pem.as_bytes()).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                roots
                    .add(certificate.expect("client CA"))
                    .expect("client CA");
            }
            // Unauthenticated clients get through the handshake and a 401, as from
            // an API server.
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certificates, key)
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn serve(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    state: Arc<Mutex<State>>,
    execs: Arc<Mutex<Vec<ExecSeen>>>,
    require_client_certificate: bool,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let state = Arc::clone(&state);
        let execs = Arc::clone(&execs);
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let certified = ClientCertificate(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .is_some_and(|chain| !chain.is_empty()),
            );
            let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let state = Arc::clone(&state);
                let execs = Arc::clone(&execs);
                request.extensions_mut().insert(certified);
                async move {
                    if require_client_certificate && !certified.0 {
                        record_seen(&request, &state);
                        return Ok(status(
                            StatusCode::UNAUTHORIZED,
                            "Unauthorized",
                            "Unauthorized".into(),
                            json!({}),
                        )
                        .map(BodyExt::boxed));
                    }
                    if let Some(watch) = watch(&request, &state) {
                        return Ok::<_, std::convert::Infallible>(watch);
                    }
                    Ok(answer(request, &state, execs).await.map(BodyExt::boxed))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn respond(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A `meta/v1 Status` failure, as the API server writes it.
fn status(
    code: StatusCode,
    reason: &str,
    message: String,
    details: Value,
) -> Response<Full<Bytes>> {
    respond(
        code,
        &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":message,"reason":reason,"details":details,"code":code.as_u16()}),
    )
}

struct Kind {
    resource: &'static str,
    kind: &'static str,
    group_version: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
}

const KINDS: &[Kind] = &[
    Kind {
        resource: "namespaces",
        kind: "Namespace",
        group_version: "v1",
        namespaced: false,
        short_names: &["ns"],
    },
    Kind {
        resource: "nodes",
        kind: "Node",
        group_version: "v1",
        namespaced: false,
        short_names: &["no"],
    },
    Kind {
        resource: "pods",
        kind: "Pod",
        group_version: "v1",
        namespaced: true,
        short_names: &["po"],
    },
    Kind {
        resource: "configmaps",
        kind: "ConfigMap",
        group_version: "v1",
        namespaced: true,
        short_names: &["cm"],
    },
    Kind {
        resource: "secrets",
        kind: "Secret",
        group_version: "v1",
        namespaced: true,
        short_names: &[],
    },
    Kind {
        resource: "deployments",
        kind: "Deployment",
        group_version: "apps/v1",
        namespaced: true,
        short_names: &["deploy"],
    },
];

fn resource_list(group_version: &str) -> Value {
    let resources: Vec<Value> = KINDS
        .iter()
        .filter(|kind| kind.group_version == group_version)
        .map(|kind| {
            json!({
                "name": kind.resource,
                "singularName": kind.kind.to_ascii_lowercase(),
                "namespaced": kind.namespaced,
                "kind": kind.kind,
                "verbs": ["create","delete","deletecollection","get","list","patch","update","watch"],
                "shortNames": kind.short_names,
            })
        })
        .collect();
    json!({"kind":"APIResourceList","apiVersion":"v1","groupVersion":group_version,"resources":resources})
}

async fn answer(
    request: Request<Incoming>,
    state: &Mutex<State>,
    execs: Arc<Mutex<Vec<ExecSeen>>>,
) -> Response<Full<Bytes>> {
    if let Some(response) = answer_exec(request.uri().path(), state) {
        return match response {
            Ok(()) => {
                record_seen(&request, state);
                exec::serve(request, execs)
            }
            Err(response) => {
                record_seen(&request, state);
                response
            }
        };
    }
    let (parts, body) = request.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    state.lock().expect("state").seen.push(seen_of(
        &parts.method,
        &parts.uri,
        &parts.headers,
        &parts.extensions,
    ));
    let content_type = header("content-type");
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().trim_end_matches('/').to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    match path.as_str() {
        "/api" => {
            return respond(
                StatusCode::OK,
                &json!({"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":format!("{HOST}:6443")}]}),
            );
        }
        "/apis" => {
            return respond(
                StatusCode::OK,
                &json!({"kind":"APIGroupList","apiVersion":"v1","groups":[{"name":"apps","versions":[{"groupVersion":"apps/v1","version":"v1"}],"preferredVersion":{"groupVersion":"apps/v1","version":"v1"}}]}),
            );
        }
        "/api/v1" => return respond(StatusCode::OK, &resource_list("v1")),
        "/apis/apps/v1" => return respond(StatusCode::OK, &resource_list("apps/v1")),
        "/version" => {
            return respond(
                StatusCode::OK,
                &json!({"major":"1","minor":"33","gitVersion":"v1.33.0-sluice-stand-in","gitCommit":"0000000000000000000000000000000000000000","gitTreeState":"clean","buildDate":"2026-12-06T00:00:00Z","goVersion":"go1.24.0","compiler":"gc","platform":"linux/amd64"}),
            );
        }
        "/healthz" | "/livez" | "/readyz" => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return response;
        }
        _ => {}
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let rest: &[&str] = match segments.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", "apps", "v1", rest @ ..] => rest,
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".into(),
                json!({}),
            );
        }
    };
    let (namespace, resource, name) = match rest {
        ["namespaces", namespace, resource] if *resource != "status" => {
            (namespace.to_string(), resource.to_string(), None)
        }
        ["namespaces", namespace, resource, name] => (
            namespace.to_string(),
            resource.to_string(),
            Some(name.to_string()),
        ),
        ["namespaces", name] => (String::new(), "namespaces".into(), Some(name.to_string())),
        [resource] => (String::new(), resource.to_string(), None),
        [resource, name] => (String::new(), resource.to_string(), Some(name.to_string())),
        _ => {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".into(),
                json!({}),
            );
        }
    };
    let Some(kind) = KINDS.iter().find(|kind| kind.resource == resource) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        );
    };
    let singular = kind.kind.to_ascii_lowercase();
    let group = if kind.group_version == "v1" {
        ""
    } else {
        "apps"
    };
    let not_found = |name: &str| {
        let what = if group.is_empty() {
            resource.clone()
        } else {
            format!("{resource}.{group}")
        };
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{what} \"{name}\" not found"),
            json!({"name":name,"group":group,"kind":resource}),
        )
    };
    let key = |name: &str| (namespace.clone(), resource.clone(), name.to_owned());
    let mut state = state.lock().expect("state");
    match (parts.method.as_str(), name) {
        ("GET", Some(name)) => match state.objects.get(&key(&name)) {
            Some(object) => respond(StatusCode::OK, object),
            None => not_found(&name),
        },
        ("GET", None) => {
            let only = form_value(&query, "fieldSelector")
                .and_then(|selector| selector.strip_prefix("metadata.name=").map(str::to_owned));
            let items: Vec<Value> = state
                .objects
                .iter()
                .filter(|((ns, res, n), _)| {
                    res == &resource
                        && (namespace.is_empty() || ns == &namespace)
                        && only.as_ref().is_none_or(|only| only == n)
                })
                .map(|(_, object)| object.clone())
                .collect();
            respond(
                StatusCode::OK,
                &json!({"kind":format!("{}List", kind.kind),"apiVersion":kind.group_version,"metadata":{"resourceVersion":state.resource_version.to_string()},"items":items}),
            )
        }
        ("POST", None)
            if content_type
                .as_deref()
                .is_some_and(|value| value.contains("protobuf")) =>
        {
            // Like an API server for a group without protobuf (CRDs, aggregated APIs):
            // clients fall back to JSON on 415.
            status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml".into(),
                json!({}),
            )
        }
        ("POST", None) => {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the object provided is unrecognized".into(),
                    json!({}),
                );
            };
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if state.objects.contains_key(&key(&name)) {
                return status(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    format!("{resource} \"{name}\" already exists"),
                    json!({"name":name,"group":group,"kind":resource}),
                );
            }
            if kind.namespaced {
                object["metadata"]["namespace"] = json!(namespace);
            }
            insert(&mut state, &namespace, &resource, object);
            let created = state.objects.get(&key(&name)).cloned().unwrap_or_default();
            respond(StatusCode::CREATED, &created)
        }
        // Server-side apply: the applied configuration (kubectl sends it as JSON, which
        // is YAML too) becomes the object; field ownership is not tracked.
        ("PATCH", Some(name))
            if content_type
                .as_deref()
                .is_some_and(|value| value.starts_with("application/apply-patch+yaml")) =>
        {
            let Ok(mut object) = serde_json::from_slice::<Value>(&body) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the stand-in reads applied configurations written as JSON".into(),
                    json!({}),
                );
            };
            if object["metadata"]["name"].as_str() != Some(name.as_str()) {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "the name in the body does not match the name in the URL".into(),
                    json!({}),
                );
            }
            if kind.namespaced {
                object["metadata"]["namespace"] = json!(namespace);
            }
            let existed = state.objects.contains_key(&key(&name));
            insert(&mut state, &namespace, &resource, object);
            let applied = state.objects.get(&key(&name)).cloned().unwrap_or_default();
            respond(
                if existed {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                },
                &applied,
            )
        }
        ("DELETE", Some(name)) => match state.objects.remove(&key(&name)) {
            Some(object) => {
                state.resource_version += 1;
                state.change(
                    &namespace,
                    &resource,
                    json!({"type": "DELETED", "object": object}),
                );
                respond(
                    StatusCode::OK,
                    &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","details":{"name":name,"group":group,"kind":resource}}),
                )
            }
            None => not_found(&name),
        },
        (method, _) => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("the stand-in does not serve {method} on {singular}"),
            json!({}),
        ),
    }
}

fn seen_of(
    method: &hyper::Method,
    uri: &hyper::Uri,
    headers: &hyper::HeaderMap,
    extensions: &hyper::http::Extensions,
) -> Seen {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    Seen {
        method: method.to_string(),
        path_and_query: uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default(),
        authorization: header("authorization"),
        impersonation: headers
            .keys()
            .filter(|name| name.as_str().starts_with("impersonate-"))
            .map(|name| name.as_str().to_owned())
            .collect(),
        accept: header("accept"),
        client_certificate: extensions
            .get::<ClientCertificate>()
            .is_some_and(|certified| certified.0),
    }
}

fn record_seen(request: &Request<Incoming>, state: &Mutex<State>) {
    state.lock().expect("state").seen.push(seen_of(
        request.method(),
        request.uri(),
        request.headers(),
        request.extensions(),
    ));
}

/// For `pods/{name}/exec`: `Ok` when the pod exists (the exec is served), the
/// `NotFound` answer when not; `None` for every other path.
fn answer_exec(path: &str, state: &Mutex<State>) -> Option<Result<(), Response<Full<Bytes>>>> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["api", "v1", "namespaces", namespace, "pods", name, "exec"] = segments.as_slice() else {
        return None;
    };
    let exists = state.lock().expect("state").objects.contains_key(&(
        namespace.to_string(),
        "pods".to_owned(),
        name.to_string(),
    ));
    Some(if exists {
        Ok(())
    } else {
        Err(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("pods \"{name}\" not found"),
            json!({"name":name,"kind":"pods"}),
        ))
    })
}

/// Every value of `wanted` in a query, decoded (`command=sh&command=-c`).
fn form_values(query: &str, wanted: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == wanted).then(|| percent_decode(value))
        })
        .collect()
}

type StreamedBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A watch of a resource list (`GET .../secrets?watch=1`): the events from the asked
/// resource version on, one JSON object per line, as the API server streams them.
fn watch(request: &Request<Incoming>, state: &Arc<Mutex<State>>) -> Option<Response<StreamedBody>> {
    let query = request.uri().query().unwrap_or_default();
    let watching = form_value(query, "watch").is_some_and(|v| v == "1" || v == "true");
    if request.method() != hyper::Method::GET || !watching {
        return None;
    }
    let segments: Vec<&str> = request.uri().path().trim_matches('/').split('/').collect();
    let (namespace, resource) = match segments.as_slice() {
        ["api", "v1", "namespaces", namespace, resource]
        | ["apis", "apps", "v1", "namespaces", namespace, resource] => {
            (namespace.to_string(), resource.to_string())
        }
        ["api", "v1", resource] | ["apis", "apps", "v1", resource] => {
            (String::new(), resource.to_string())
        }
        _ => return None,
    };
    record_seen(request, state);
    let since: Option<u64> = form_value(query, "resourceVersion")
        .and_then(|version| version.parse().ok())
        .filter(|version| *version > 0);
    let timeout = form_value(query, "timeoutSeconds")
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or(1800u64);
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(64);
    let wanted =
        move |ns: &str, res: &str| res == resource && (namespace.is_empty() || ns == namespace);
    // What happened before the watch began, then (under the same lock, so nothing is
    // missed) what happens next.
    let (backlog, mut changes) = {
        let state = state.lock().expect("state");
        let backlog: Vec<Value> = match since {
            None => state
                .objects
                .iter()
                .filter(|((ns, res, _), _)| wanted(ns, res))
                .map(|(_, object)| json!({"type":"ADDED","object":object}))
                .collect(),
            Some(since) => state
                .history
                .iter()
                .filter(|(ns, res, version, _)| *version > since && wanted(ns, res))
                .map(|(_, _, _, event)| event.clone())
                .collect(),
        };
        (backlog, state.changes.subscribe())
    };
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
        tokio::pin!(deadline);
        for event in backlog {
            if sender
                .send(Bytes::from(format!("{event}\n")))
                .await
                .is_err()
            {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                change = changes.recv() => {
                    let Ok((ns, res, version, event)) = change else { return };
                    if !wanted(&ns, &res) || since.is_some_and(|since| version <= since) {
                        continue;
                    }
                    if sender.send(Bytes::from(format!("{event}\n"))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let chunk = receiver.recv().await?;
        Some((
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk)),
            receiver,
        ))
    });
    let mut response = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(stream)));
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Some(response)
}

fn form_value(query: &str, wanted: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == wanted).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let Some(hex) = text.get(index + 1..index + 3)
            && let Ok(value) = u8::from_str_radix(hex, 16)
        {
            out.push(value);
            index += 3;
            continue;
        }
        out.push(if bytes[index] == b'+' {
            b' '
        } else {
            bytes[index]
        });
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
