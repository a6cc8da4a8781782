//! A real nginx per test serving HTTPS (HTTP/1.1 and HTTP/2) and plain HTTP on
//! `127.0.0.2` with a throwaway CA, its access log as the witness of what the upstream
//! really received, and policies for an `http` resource in front of it.
//!
//! nginx runs in the foreground as root with its own prefix, config, logs and temp
//! paths in a temporary directory, so tests run in parallel without seeing each other.
//! Its endpoints:
//!
//! - `/echo`: answers with the Authorization header it received, in the body and in an
//!   `X-Echo-Authorization` response header (a reflecting endpoint, to prove scrubbing);
//! - `/api/...`: answers any method with `{"method": ..., "uri": ...}`;
//! - `/users.json`: a JSON document with e-mail addresses and card numbers;
//! - `/big.bin`: a large file (see [`Nginx::with_big_file`]);
//! - `/redirect`: a 302 to another host.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{TestDaemon, free_port, pki::TestPki};

/// The address nginx listens on: not 127.0.0.1, so agents' connections are redirected.
pub const HOST: &str = "127.0.0.2";
/// The names nginx's certificate holds (besides [`HOST`]).
pub const API_NAME: &str = "api.test";
pub const OTHER_NAME: &str = "other.test";

/// The token the credentials file holds for the `api` resource; agents never see it.
pub const TOKEN: &str = "ghp_sluiceTestToken0123456789abcdef";

/// Where `/usr/bin/python3` (Debian's, with python3-requests and python3-httpx) is.
pub const PYTHON: &str = "/usr/bin/python3";

/// A running nginx.
pub struct Nginx {
    child: Child,
    fcgiwrap: Option<Child>,
    dir: tempfile::TempDir,
    /// HTTPS (HTTP/1.1 and h2 by ALPN).
    pub tls_port: u16,
    /// Plain HTTP/1.1.
    pub plain_port: u16,
    /// The CA that signed nginx's certificate (the daemon's `tls.ca_file`).
    pub ca_file: PathBuf,
}

impl Nginx {
    pub fn start() -> Self {
        Self::with_big_file(0)
    }

    /// nginx with `/big.bin` of `big_bytes` bytes (a sparse file: zeros).
    pub fn with_big_file(big_bytes: u64) -> Self {
        crate::require_root();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let www = root.join("www");
        std::fs::create_dir_all(&www).expect("www");
        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(root.join("tmp").join(temp)).expect("temp dir");
        }
        std::fs::write(
            www.join("users.json"),
            r#"{"users":[{"name":"Ada","email":"ada@example.com","card":"4111 1111 1111 1111"},{"name":"Bob","email":"bob@example.org","card":"5500 0000 0000 0004"}]}"#,
        )
        .expect("users.json");
        std::fs::write(www.join("hello.txt"), "hello from nginx\n").expect("hello");
        // /gz/users.json: only its gzip form, served as such whatever the client asks.
        std::fs::create_dir_all(www.join("gz")).expect("gz dir");
        std::fs::write(
            www.join("gz/users.json.gz"),
            gzip_bytes(&std::fs::read(www.join("users.json")).expect("users.json")),
        )
        .expect("users.json.gz");
        let big = std::fs::File::create(www.join("big.bin")).expect("big.bin");
        big.set_len(big_bytes).expect("size big.bin");

        let (ca_file, cert_file, key_file) =
            TestPki::for_hosts(&[API_NAME, OTHER_NAME, HOST]).write_to(root);

        let tls_port = free_port();
        let plain_port = free_port();
        let dir_text = root.display();
        let server_body = format!(
            r#"
        access_log {dir_text}/access.log witness;
        root {dir_text}/www;
        location = /echo {{
            default_type text/plain;
            add_header X-Echo-Authorization $http_authorization always;
            return 200 "authorization=$http_authorization\n";
        }}
        location /api/ {{
            default_type application/json;
            return 200 '{{"method":"$request_method","uri":"$uri"}}';
        }}
        location ~ ^/git(/.*)$ {{
            client_max_body_size 0;
            fastcgi_pass unix:{dir_text}/fcgiwrap.sock;
            include /etc/nginx/fastcgi_params;
            fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
            fastcgi_param GIT_PROJECT_ROOT {dir_text}/git;
            fastcgi_param GIT_HTTP_EXPORT_ALL "";
            fastcgi_param PATH_INFO $1;
        }}
        location /gz/ {{
            gzip_static always;
        }}
        location = /redirect {{
            return 302 https://{OTHER_NAME}:{tls_port}/api/elsewhere;
        }}
"#
        );
        let config = format!(
            r#"
daemon off;
master_process off;
user root;
pid {dir_text}/nginx.pid;
error_log {dir_text}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format witness '$request_method $request_uri $status host=$host auth="$http_authorization" override="$http_x_http_method_override" proto=$server_protocol bytes=$body_bytes_sent';
    client_body_temp_path {dir_text}/tmp/body;
    proxy_temp_path {dir_text}/tmp/proxy;
    fastcgi_temp_path {dir_text}/tmp/fastcgi;
    uwsgi_temp_path {dir_text}/tmp/uwsgi;
    scgi_temp_path {dir_text}/tmp/scgi;
    types {{ application/json json; text/plain txt; application/octet-stream bin; }}
    default_type application/octet-stream;
    server {{
        listen {HOST}:{tls_port} ssl http2;
        server_name {API_NAME} {OTHER_NAME} {HOST};
        ssl_certificate {cert};
        ssl_certificate_key {key};
{server_body}
    }}
    server {{
        listen {HOST}:{plain_port};
        server_name {API_NAME} {OTHER_NAME} {HOST};
{server_body}
    }}
}}
"#,
            cert = cert_file.display(),
            key = key_file.display(),
        );
        // A bare repository served by git-http-backend through fcgiwrap, with one
        // commit, pushable (http.receivepack).
        let fcgiwrap = std::path::Path::new("/usr/sbin/fcgiwrap")
            .exists()
            .then(|| {
                let git = root.join("git");
                std::fs::create_dir_all(&git).expect("git dir");
                let bare = git.join("repo.git");
                let work = root.join("seed");
                for args in [
                    vec![
                        "init",
                        "-q",
                        "--bare",
                        "-b",
                        "main",
                        bare.to_str().expect("utf-8"),
                    ],
                    vec!["init", "-q", "-b", "main", work.to_str().expect("utf-8")],
                ] {
                    run_git(None, &args);
                }
                std::fs::write(work.join("README"), "seeded\n").expect("seed file");
                run_git(Some(&work), &["add", "README"]);
                run_git(
                    Some(&work),
                    &[
                        "-c",
                        "user.name=seed",
                        "-c",
                        "user.email=seed@test",
                        "commit",
                        "-q",
                        "-m",
                        "seed",
                    ],
                );
                run_git(
                    Some(&work),
                    &["push", "-q", bare.to_str().expect("utf-8"), "main"],
                );
                run_git(Some(&bare), &["config", "http.receivepack", "true"]);
                Command::new("/usr/sbin/fcgiwrap")
                    .arg("-s")
                    .arg(format!("unix:{}", root.join("fcgiwrap.sock").display()))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start fcgiwrap")
            });
        let config_path = root.join("nginx.conf");
        std::fs::write(&config_path, config).expect("nginx.conf");
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx (cargo xtask setup installs it)");
        let nginx = Self {
            child,
            fcgiwrap,
            dir,
            tls_port,
            plain_port,
            ca_file,
        };
        nginx.wait_listening();
        nginx
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [self.tls_port, self.plain_port] {
            while TcpStream::connect((HOST, port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "nginx did not listen on {HOST}:{port}: {}",
                    std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// The access log lines so far (nginx writes each as the request ends).
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The access log once it holds at least `lines` lines. nginx logs a
    /// request as it finalises it, which for FastCGI can come a moment after
    /// the client already has the whole response; a test that reads the log
    /// right after curl returns would race it.
    pub fn access_log_of(&self, lines: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access_log();
            if log.len() >= lines || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `https://NAME:PORT/PATH`.
    pub fn url(&self, name: &str, path: &str) -> String {
        format!("https://{name}:{}{path}", self.tls_port)
    }

    /// `http://127.0.0.2:PORT/PATH`.
    pub fn plain_url(&self, path: &str) -> String {
        format!("http://{HOST}:{}{path}", self.plain_port)
    }

    /// curl's `--resolve` for `name` on the HTTPS port.
    pub fn resolve(&self, name: &str) -> String {
        format!("{name}:{}:{HOST}", self.tls_port)
    }

    /// The directory nginx serves.
    pub fn www(&self) -> PathBuf {
        self.dir.path().join("www")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(fcgiwrap) = &mut self.fcgiwrap {
            let _ = fcgiwrap.kill();
            let _ = fcgiwrap.wait();
        }
    }
}

fn run_git(dir: Option<&Path>, args: &[&str]) {
    let mut command = Command::new("git");
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command.args(args).output().expect("run git");
    assert!(output.status.success(), "git {args:?}: {output:?}");
}

impl Nginx {
    /// The commits of the served repository's `main`, newest first (subjects).
    pub fn git_log(&self) -> Vec<String> {
        let output = Command::new("git")
            .arg("-C")
            .arg(self.dir.path().join("git/repo.git"))
            .args(["log", "--format=%s", "main"])
            .output()
            .expect("git log");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn nginx_bin() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

/// A policy with agent `ci-bot`, resource `api` (nginx's HTTPS port, protocol http,
/// verified against nginx's CA, credential `api-token`), resource `api-plain` (its
/// plain HTTP port) and `rules` (TOML `[[rule]]` tables). `resource_extra` is added to
/// the `api` resource table (for example `tls = { mode = "passthrough" }` replaces the
/// verification, so it must be given whole).
pub fn policy(nginx: &Nginx, resource_tls: Option<&str>, rules: &str) -> String {
    let tls = resource_tls.map_or_else(
        || format!("tls = {{ ca_file = {:?} }}", nginx.ca_file),
        str::to_owned,
    );
    format!(
        r#"
[[agent]]
name = "ci-bot"

[[resource]]
name = "api"
addresses = ["{HOST}"]
ports = [{tls_port}]
protocol = "http"
credential = "api-token"
{tls}

[[resource]]
name = "api-plain"
addresses = ["{HOST}"]
ports = [{plain_port}]
protocol = "http"

{rules}
"#,
        tls_port = nginx.tls_port,
        plain_port = nginx.plain_port,
    )
}

/// The credentials file for [`policy`].
pub fn credentials() -> String {
    format!("[api-token]\nbearer = \"{TOKEN}\"\n")
}

/// A daemon for `policy` with [`credentials`], whose published trust bundle the
/// `nobody` user can read (agents that run as another user than root).
pub fn daemon(policy: &str) -> TestDaemon {
    let daemon = TestDaemon::start_with_credentials(policy, &credentials());
    if let Some(dir) = daemon.control_socket.parent() {
        open_for_traversal(dir);
    }
    daemon
}

fn open_for_traversal(dir: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
        .expect("chmod the daemon's directory");
}

/// Runs curl as agent `ci-bot` (root unless `user`), with `args`, and returns
/// (exit status success, stdout, stderr).
pub fn curl(daemon: &TestDaemon, user: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut all: Vec<&str> = vec!["run", "--agent", "ci-bot"];
    if let Some(user) = user {
        all.extend(["--user", user]);
    }
    all.extend(["--", "curl", "-sS", "--max-time", "60"]);
    all.extend_from_slice(args);
    let output = daemon.sluice(&all);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The request records of the agent's sessions to `destination_port`, oldest first.
pub fn requests(daemon: &TestDaemon, port: u16) -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    let mut sessions = daemon.sessions(Some("ci-bot"));
    sessions.reverse();
    for session in sessions {
        let destination = session["destination"].as_str().unwrap_or_default();
        if !destination.ends_with(&format!(":{port}")) {
            continue;
        }
        let id = session["id"].as_u64().expect("session id");
        let shown = daemon.show_session(id);
        for statement in shown["statements"].as_array().into_iter().flatten() {
            all.push(statement.clone());
        }
    }
    all
}

/// Waits until `predicate` holds for the request records (they are written as each
/// response ends), or panics with what there is.
pub fn wait_for_requests(
    daemon: &TestDaemon,
    port: u16,
    predicate: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = requests(daemon, port);
        if predicate(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "request records never matched: {records:#?}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A small HTTP/1.1 server (hyper, plain TCP on [`HOST`]) for what nginx cannot do:
/// `/sse` sends `data: one`, then `data: two` only once [`TestServer::release`] is
/// called (so a test can prove the first event reached the agent unbuffered), and
/// `/ws` upgrades to an echo of whatever the client sends, `/encoded` answers in
/// `zstd` whatever the request asked for, `/gzip-echo` and `/br-echo` echo the
/// Authorization received, compressed, `/gzip-bomb` is 16 MiB in a few KiB, and
/// `/grpc` ends its body with trailers (over HTTP/2: [`TestServer::start_h2c`]).
pub struct TestServer {
    pub port: u16,
    release: std::sync::Arc<tokio::sync::Notify>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start() -> Self {
        Self::serve(false)
    }

    /// The same endpoints over cleartext HTTP/2 (prior knowledge), where `/grpc`
    /// answers gRPC-style: a body, then trailers.
    pub fn start_h2c() -> Self {
        Self::serve(true)
    }

    fn serve(h2: bool) -> Self {
        let listener = std::net::TcpListener::bind((HOST, 0)).expect("bind test server");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("address").port();
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let notify = std::sync::Arc::clone(&release);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let notify = std::sync::Arc::clone(&notify);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |request| {
                                let notify = std::sync::Arc::clone(&notify);
                                async move { Ok::<_, std::convert::Infallible>(answer(request, notify)) }
                            });
                            let io = hyper_util::rt::TokioIo::new(stream);
                            if h2 {
                                let _ = hyper::server::conn::http2::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection(io, service)
                                .await;
                            } else {
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, service)
                                    .with_upgrades()
                                    .await;
                            }
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Self {
            port,
            release,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// Lets `/sse` send its second event and end.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type TestBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

fn answer(
    mut request: hyper::Request<hyper::body::Incoming>,
    release: std::sync::Arc<tokio::sync::Notify>,
) -> hyper::Response<TestBody> {
    use http_body_util::BodyExt as _;
    match request.uri().path() {
        "/sse" => {
            let (sender, receiver) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
            tokio::spawn(async move {
                let _ = sender
                    .send(bytes::Bytes::from_static(b"data: one\n\n"))
                    .await;
                release.notified().await;
                let _ = sender
                    .send(bytes::Bytes::from_static(b"data: two\n\n"))
                    .await;
            });
            hyper::Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(ChannelBody(receiver).boxed())
                .expect("response")
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut io = hyper_util::rt::TokioIo::new(upgraded);
                let mut buffer = [0u8; 1024];
                loop {
                    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                    match io.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(read) => {
                            if io.write_all(&buffer[..read]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
            hyper::Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .body(http_body_util::Empty::new().boxed())
                .expect("response")
        }
        // A body in an encoding sluice does not decode (upstreams do this).
        "/encoded" => hyper::Response::builder()
            .header("content-type", "text/plain")
            .header("content-encoding", "zstd")
            .body(
                http_body_util::Full::new(bytes::Bytes::from_static(
                    b"\x28\xb5\x2f\xfd\x04\x58\x31\x00\x00opaque",
                ))
                .boxed(),
            )
            .expect("response"),
        // The Authorization received, echoed compressed whatever the client asked for.
        "/gzip-echo" | "/br-echo" => {
            let echo = format!(
                "authorization={}\n",
                request
                    .headers()
                    .get("authorization")
                    .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
                    .unwrap_or_default()
            );
            let gzip = request.uri().path() == "/gzip-echo";
            let body = if gzip {
                gzip_bytes(echo.as_bytes())
            } else {
                brotli_bytes(echo.as_bytes())
            };
            hyper::Response::builder()
                .header("content-type", "text/plain")
                .header("content-encoding", if gzip { "gzip" } else { "br" })
                .header("content-length", body.len())
                .body(http_body_util::Full::new(bytes::Bytes::from(body)).boxed())
                .expect("response")
        }
        // gRPC-style: a message, then the status in trailers (which also echo the
        // Authorization received, to prove trailers are scrubbed too).
        "/grpc" => {
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
            if let Some(authorization) = request.headers().get("authorization") {
                trailers.insert("grpc-message", authorization.clone());
            }
            let frames: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>> = vec![
                Ok(hyper::body::Frame::data(bytes::Bytes::from_static(
                    b"\x00\x00\x00\x00\x05hello",
                ))),
                Ok(hyper::body::Frame::trailers(trailers)),
            ];
            hyper::Response::builder()
                .header("content-type", "application/grpc")
                .body(http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed())
                .expect("response")
        }
        // 16 MiB of zeros in a few KiB of gzip: more than sluice decodes to inspect.
        "/gzip-bomb" => hyper::Response::builder()
            .header("content-type", "text/plain")
            .header("content-encoding", "gzip")
            .body(
                http_body_util::Full::new(bytes::Bytes::from(gzip_bytes(&vec![0u8; 16 << 20])))
                    .boxed(),
            )
            .expect("response"),
        _ => hyper::Response::builder()
            .status(404)
            .body(http_body_util::Empty::new().boxed())
            .expect("response"),
    }
}

/// `bytes` compressed with gzip.
pub fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// `bytes` compressed with brotli.
pub fn brotli_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::BrotliCompress(
        &mut &bytes[..],
        &mut out,
        &brotli::enc::BrotliEncoderParams::default(),
    )
    .expect("brotli");
    out
}

/// A body fed by a channel, one data frame per message.
struct ChannelBody(tokio::sync::mpsc::Receiver<bytes::Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0
            .poll_recv(context)
            .map(|chunk| chunk.map(|data| Ok(hyper::body::Frame::data(data))))
    }
}
