//! Prometheus metrics: what the daemon counts, and the loopback endpoint that serves
//! them (off unless `[metrics] listen` is set).
//!
//! The counters are process-wide ([`global`]), so that the modules that see an event
//! count it in one line without a handle threaded through every constructor; counting
//! costs an atomic add whether or not anyone scrapes. The registry and the text
//! exposition (OpenMetrics, which Prometheus reads) are `prometheus-client`'s.
//!
//! The endpoint is a daemon port: the eBPF programs refuse agents' connections to it
//! like to the redirect listener, and the configuration refuses non-loopback addresses.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, LazyLock},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};

/// Labels of one series: `[(name, value)]`.
type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Scrapes served at once; more wait for the listener's backlog.
const MAX_SCRAPES: usize = 8;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every metric the daemon keeps.
pub struct Metrics {
    registry: Registry,
    connections: Family<Labels, Counter>,
    decisions: Family<Labels2, Counter>,
    /// Statements waiting for a human now.
    pub held_approvals: Gauge,
    approvals: Family<Labels, Counter>,
    masked_values: Counter,
    store_writes: Family<Labels2, Counter>,
    store_write_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    statement_seconds: Histogram,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 1.6 s; anything slower lands in +Inf.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let connections = Family::<Labels, Counter>::default();
        registry.register(
            "connections",
            "Agent connections by outcome (allowed, denied, refused_in_kernel, unidentified, record_failed)",
            connections.clone(),
        );
        let decisions = Family::<Labels2, Counter>::default();
        registry.register(
            "decisions",
            "Policy decisions by scope (connection, statement) and action (allow, deny, review)",
            decisions.clone(),
        );
        let held_approvals = Gauge::default();
        registry.register(
            "approvals_held",
            "Statements held for a human's approval now",
            held_approvals.clone(),
        );
        let approvals = Family::<Labels, Counter>::default();
        registry.register(
            "approvals",
            "Held statements by how they ended (approved, denied, timed_out, withdrawn)",
            approvals.clone(),
        );
        let masked_values = Counter::default();
        registry.register(
            "masked_values",
            "Result values masked (or nulled) on their way to agents",
            masked_values.clone(),
        );
        let store_writes = Family::<Labels2, Counter>::default();
        registry.register(
            "store_writes",
            "Records written to the store by kind (session, statement) and result (ok, error)",
            store_writes.clone(),
        );
        let store_write_seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "store_write_seconds",
            "How long a store write took to return, by durability (durable: on disk; batched: queued)",
            store_write_seconds.clone(),
        );
        let statement_seconds = latency_histogram();
        registry.register(
            "statement_seconds",
            "Statement latency through the proxy, from reaching the daemon to completion",
            statement_seconds.clone(),
        );
        Self {
            registry,
            connections,
            decisions,
            held_approvals,
            approvals,
            masked_values,
            store_writes,
            store_write_seconds,
            statement_seconds,
        }
    }

    /// An agent connection ended its admission with `outcome`.
    pub fn connection(&self, outcome: &'static str) {
        self.connections
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    /// A policy decision: `scope` is `connection` or `statement`.
    pub fn decision(&self, scope: &'static str, action: crate::policy::Action) {
        self.decisions
            .get_or_create(&[("scope", scope), ("action", action.as_str())])
            .inc();
    }

    pub fn approval(&self, outcome: crate::approvals::Outcome) {
        self.approvals
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    pub fn masked(&self, values: u64) {
        self.masked_values.inc_by(values);
    }

    /// A store write of a `kind` record returned after `took`.
    pub fn store_write(&self, kind: &'static str, durable: bool, ok: bool, took: Duration) {
        self.store_writes
            .get_or_create(&[("kind", kind), ("result", if ok { "ok" } else { "error" })])
            .inc();
        self.store_write_seconds
            .get_or_create(&[("durability", if durable { "durable" } else { "batched" })])
            .observe(took.as_secs_f64());
    }

    pub fn statement(&self, took: Duration) {
        self.statement_seconds.observe(took.as_secs_f64());
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The daemon's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

/// Errors starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds the metrics endpoint.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError { addr, source })
}

/// Serves `GET /metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    let permits = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(SCRAPE_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service_fn(scrape));
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, connection).await;
            drop(permit);
        });
    }
}

async fn scrape(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => match global().render() {
            Ok(text) => (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "cannot encode the metrics\n".to_owned(),
            ),
        },
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "the metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_family() {
        let metrics = Metrics::new();
        metrics.connection("allowed");
        metrics.decision("statement", crate::policy::Action::Review);
        metrics.held_approvals.inc();
        metrics.masked(3);
        metrics.store_write("statement", false, true, Duration::from_micros(80));
        metrics.statement(Duration::from_millis(2));
        let text = metrics.render().expect("render");
        for line in [
            "sluice_connections_total{outcome=\"allowed\"} 1",
            "sluice_decisions_total{scope=\"statement\",action=\"review\"} 1",
            "sluice_approvals_held 1",
            "sluice_masked_values_total 3",
            "sluice_store_writes_total{kind=\"statement\",result=\"ok\"} 1",
            "sluice_statement_seconds_count 1",
            "sluice_store_write_seconds_count{durability=\"batched\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
