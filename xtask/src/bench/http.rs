//! HTTPS with keep-alive against nginx, four ways side by side: `wrk` directly; through
//! nginx as a TLS-terminating reverse proxy that injects a token (the anchor: what a
//! user would deploy instead); through sluice (interception with the local CA,
//! per-request policy, a record per request); and through sluice injecting a token
//! (responses then scrubbed of it, as the anchor's are not). Plus MB/s of one large
//! download each way (curl).
//!
//! The part starts its own nginx upstream (one worker) and nginx proxy (two workers)
//! with a throwaway CA made by `openssl`, on 127.0.0.2. Ways take turns within a round;
//! the report gives the median of the rounds.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    Options,
    report::median,
    servers::{Scratch, Sluice, StoreMode, free_port},
};
use crate::shell::{capture, note, part};

/// Where nginx listens: not 127.0.0.1, so the agent's connections are redirected.
const HOST: &str = "127.0.0.2";
/// The token the anchor and sluice inject (long enough for sluice to scrub).
const TOKEN: &str = "bench-token-0123456789abcdef";
/// wrk's threads and connections.
const THREADS: u32 = 2;
const CONNECTIONS: u32 = 16;
/// The large download.
const BIG_BYTES: u64 = 256 * 1024 * 1024;

/// One way from the client to nginx.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    Direct,
    NginxProxy,
    Sluice,
    SluiceInjecting,
}

impl Way {
    pub const ALL: [Way; 4] = [
        Way::Direct,
        Way::NginxProxy,
        Way::Sluice,
        Way::SluiceInjecting,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Way::Direct => "direct",
            Way::NginxProxy => "nginx reverse proxy (injects the token)",
            Way::Sluice => "sluice (policy + records)",
            Way::SluiceInjecting => "sluice + injected token (responses scrubbed)",
        }
    }
}

/// What one way measured over the rounds.
#[derive(Clone, Debug)]
pub struct WayRuns {
    pub way: Way,
    pub requests_per_s: Vec<f64>,
    pub p99_ms: Vec<f64>,
    pub errors: Vec<u64>,
    pub download_mb_s: Vec<f64>,
}

pub type Measured = Vec<WayRuns>;

struct Nginx {
    child: Child,
}

impl Nginx {
    fn start(dir: &Path, name: &str, workers: u32, servers: &str, ports: &[u16]) -> Result<Self> {
        let root = dir.join(name);
        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            fs::create_dir_all(root.join("tmp").join(temp))?;
        }
        let r = root.display();
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes {workers};\nuser root;\n\
             pid {r}/nginx.pid;\nerror_log {r}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n access_log off;\n client_body_temp_path {r}/tmp/body;\n\
             proxy_temp_path {r}/tmp/proxy;\n fastcgi_temp_path {r}/tmp/fastcgi;\n\
             uwsgi_temp_path {r}/tmp/uwsgi;\n scgi_temp_path {r}/tmp/scgi;\n\
             keepalive_requests 1000000;\n keepalive_timeout 120s;\n\
             default_type application/octet-stream;\n{servers}\n}}\n"
        );
        let path = root.join("nginx.conf");
        fs::write(&path, config)?;
        let log = root.join("error.log");
        let mut child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(&root)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (cargo xtask setup installs it)")?;
        for port in ports {
            let address: SocketAddr = format!("{HOST}:{port}").parse()?;
            let deadline = Instant::now() + Duration::from_secs(20);
            while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "nginx `{name}` exited ({status}): {}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                if Instant::now() > deadline {
                    bail!("nginx `{name}` did not listen on {address}");
                }
                sleep(Duration::from_millis(50));
            }
        }
        Ok(Self { child })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a certificate for 127.0.0.2, made by `openssl`: (ca.pem, cert, key).
fn make_pki(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = dir.join("ca.key");
    let ca = dir.join("ca.pem");
    let key = dir.join("server.key");
    let csr = dir.join("server.csr");
    let cert = dir.join("server.pem");
    let ext = dir.join("server.ext");
    fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{HOST},DNS:api.bench\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )?;
    capture(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=sluice bench CA"])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca),
    )
    .context("openssl: the bench CA (cargo xtask setup installs openssl)")?;
    capture(
        Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-subj", &format!("/CN={HOST}")])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    )
    .context("openssl: the server key")?;
    capture(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
    )
    .context("openssl: the server certificate")?;
    Ok((ca, cert, key))
}

/// What wrk printed: requests/s, p99 in ms, and errors (non-2xx and socket errors).
pub fn parse_wrk(output: &str) -> Result<(f64, f64, u64)> {
    let mut requests = None;
    let mut p99 = None;
    let mut errors = 0;
    for line in output.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Requests/sec:") {
            requests = rest.trim().parse::<f64>().ok();
        } else if let Some(rest) = line.strip_prefix("99%") {
            p99 = duration_ms(rest.trim());
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            errors += rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    match (requests, p99) {
        (Some(requests), Some(p99)) => Ok((requests, p99, errors)),
        _ => bail!("no Requests/sec or 99% latency in wrk's output"),
    }
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let value: f64 = text[..split].parse().ok()?;
    match &text[split..] {
        "us" => Some(value / 1000.0),
        "ms" => Some(value),
        "s" => Some(value * 1000.0),
        "m" => Some(value * 60_000.0),
        _ => None,
    }
}

/// Runs the part.
pub fn run(scratch: &Scratch, binary: &Path, options: &Options) -> Result<Measured> {
    let dir = scratch.path.join("http");
    fs::create_dir_all(dir.join("www"))?;
    let (ca, cert, key) = make_pki(&dir)?;
    fs::write(dir.join("www/small.json"), "{\"ok\":true}\n")?;
    fs::File::create(dir.join("www/big.bin"))?.set_len(BIG_BYTES)?;
    // The upstream listens twice: sluice's plain resource and its injecting one.
    let upstream_port = free_port(HOST)?;
    let injected_port = free_port(HOST)?;
    let proxy_port = free_port(HOST)?;
    let tls = format!(
        "ssl_certificate {};\n ssl_certificate_key {};\n",
        cert.display(),
        key.display()
    );
    let www = dir.join("www");
    let upstream = Nginx::start(
        &dir,
        "upstream",
        1,
        &format!(
            " server {{\n listen {HOST}:{upstream_port} ssl;\n listen {HOST}:{injected_port} ssl;\n\
             {tls} root {};\n location = /api {{ default_type application/json; \
             return 200 '{{\"ok\":true}}'; }}\n }}",
            www.display()
        ),
        &[upstream_port, injected_port],
    )?;
    let proxy = Nginx::start(
        &dir,
        "proxy",
        2,
        &format!(
            " upstream backend {{ server {HOST}:{upstream_port}; keepalive 64; }}\n\
             server {{\n listen {HOST}:{proxy_port} ssl;\n {tls}\
             location / {{\n proxy_pass https://backend;\n proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n proxy_set_header Authorization \"Bearer {TOKEN}\";\n\
             proxy_ssl_verify on;\n proxy_ssl_trusted_certificate {};\n\
             proxy_ssl_name api.bench;\n proxy_ssl_session_reuse on;\n proxy_buffering on;\n }}\n }}",
            ca.display()
        ),
        &[proxy_port],
    )?;
    let daemon_dir = scratch.path.join("sluice-http");
    fs::create_dir_all(&daemon_dir)?;
    let credentials = daemon_dir.join("credentials.toml");
    fs::write(
        &credentials,
        format!("[bench-token]\nbearer = \"{TOKEN}\"\n"),
    )?;
    fs::set_permissions(
        &credentials,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let policy = format!(
        "[[agent]]\nname = \"bench\"\n\n\
         [[resource]]\nname = \"api\"\naddresses = [\"{HOST}\"]\nports = [{upstream_port}]\n\
         protocol = \"http\"\ntls = {{ ca_file = {ca:?} }}\n\n\
         [[resource]]\nname = \"api-token\"\naddresses = [\"{HOST}\"]\nports = [{injected_port}]\n\
         protocol = \"http\"\ncredential = \"bench-token\"\ntls = {{ ca_file = {ca:?} }}\n\n\
         [[rule]]\nname = \"bench-read\"\nagent = \"bench\"\nresource = \"*\"\n\
         operations = [\"read\"]\nhttp = {{ methods = [\"GET\"], paths = [\"/api\", \"/big.bin\"] }}\n\
         action = \"allow\"\n"
    );
    let daemon = Sluice::start(scratch, binary, "http", &policy, StoreMode::Batched, None)?;
    let port_of = |way: Way| match way {
        Way::Direct | Way::Sluice => upstream_port,
        Way::NginxProxy => proxy_port,
        Way::SluiceInjecting => injected_port,
    };
    let command = |way: Way, program: &str| match way {
        Way::Sluice | Way::SluiceInjecting => daemon.agent_command("bench", program),
        _ => Command::new(program),
    };
    let mut measured: Measured = Way::ALL
        .iter()
        .map(|&way| WayRuns {
            way,
            requests_per_s: Vec::new(),
            p99_ms: Vec::new(),
            errors: Vec::new(),
            download_mb_s: Vec::new(),
        })
        .collect();
    part(&format!(
        "wrk -t{THREADS} -c{CONNECTIONS} over HTTPS keep-alive, {} s per run; curl of {} MiB",
        options.seconds,
        BIG_BYTES >> 20
    ));
    for round in 1..=options.rounds {
        for runs in &mut measured {
            let way = runs.way;
            let url = format!("https://{HOST}:{}", port_of(way));
            let output = capture(
                command(way, "wrk")
                    .args(["-t", &THREADS.to_string(), "-c", &CONNECTIONS.to_string()])
                    .args(["-d", &format!("{}s", options.seconds), "--latency"])
                    .arg(format!("{url}/api")),
            )
            .with_context(|| format!("wrk {}", way.label()))?;
            let (requests, p99, errors) =
                parse_wrk(&output).with_context(|| format!("wrk printed:\n{output}"))?;
            let speed = capture(
                command(way, "curl")
                    .args(["-sS", "-k", "-o", "/dev/null", "-w", "%{speed_download}"])
                    .arg(format!("{url}/big.bin")),
            )
            .with_context(|| format!("curl {}", way.label()))?;
            let mb_s = speed.trim().parse::<f64>().unwrap_or(0.0) / 1e6;
            note(&format!(
                "round {round}: {}: {requests:.0} req/s, p99 {p99:.2} ms, {errors} errors, {mb_s:.0} MB/s",
                way.label()
            ));
            runs.requests_per_s.push(requests);
            runs.p99_ms.push(p99);
            runs.errors.push(errors);
            runs.download_mb_s.push(mb_s);
        }
    }
    drop(daemon);
    drop(proxy);
    drop(upstream);
    Ok(measured)
}

pub fn render(measured: &Measured) -> String {
    let of = |way: Way| measured.iter().find(|runs| runs.way == way);
    let anchor = of(Way::NginxProxy);
    let direct = of(Way::Direct);
    let mut out = format!(
        "## HTTPS (wrk)\n\n\
         `wrk -t{THREADS} -c{CONNECTIONS}` over HTTPS with keep-alive, GET of a 12-byte JSON \
         answer from nginx (one worker), and `curl` of a {} MiB file. The anchor is nginx as \
         a TLS-terminating reverse proxy (two workers, upstream keep-alive, upstream \
         certificate verified, a token injected): what a user would deploy instead. sluice \
         intercepts TLS with its local CA, verifies the upstream, judges each request \
         against an `http` rule and records it (batched store); `+ injected token` also \
         injects a bearer token and scrubs it from every response body, which the anchor \
         does not do.\n\n\
         | way | req/s | p99 ms | req/s / anchor | p99 / anchor | req/s / direct | download MB/s | errors |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
        BIG_BYTES >> 20
    );
    let ratio = |value: f64, base: Option<f64>| match base {
        Some(base) if base > 0.0 => format!("{:.2}", value / base),
        _ => String::new(),
    };
    for runs in measured {
        let requests = median(&runs.requests_per_s);
        let p99 = median(&runs.p99_ms);
        out.push_str(&format!(
            "| {} | {requests:.0} | {p99:.2} | {} | {} | {} | {:.0} | {} |\n",
            runs.way.label(),
            ratio(requests, anchor.map(|a| median(&a.requests_per_s))),
            ratio(p99, anchor.map(|a| median(&a.p99_ms))),
            ratio(requests, direct.map(|d| median(&d.requests_per_s))),
            median(&runs.download_mb_s),
            runs.errors.iter().sum::<u64>(),
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_gives_rate_p99_and_errors() {
        let output = "Running 2s test @ https://127.0.0.2:1/api\n  2 threads and 16 connections\n\
            \x20 Latency Distribution\n     50%  512.00us\n     75%    1.01ms\n     90%    2.00ms\n\
            \x20    99%    4.50ms\n  20000 requests in 2.00s, 3.00MB read\n\
            \x20 Socket errors: connect 0, read 2, write 0, timeout 1\n\
            \x20 Non-2xx or 3xx responses: 3\nRequests/sec:  10000.50\nTransfer/sec:      1.50MB\n";
        let (requests, p99, errors) = parse_wrk(output).expect("parsed");
        assert_eq!(requests, 10000.5);
        assert_eq!(p99, 4.5);
        assert_eq!(errors, 6);
        assert_eq!(duration_ms("812.00us"), Some(0.812));
        assert_eq!(duration_ms("1.50s"), Some(1500.0));
    }
}
