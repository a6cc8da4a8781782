//! The few HTTP requests identity needs: OIDC discovery, the JWKS, (in `sluice run`)
//! GitHub's token request endpoint, and the web console's OIDC token endpoint (a form
//! POST).
//!
//! `https://` is verified against the system trust store (`/etc/ssl/certs`), falling
//! back to the Mozilla roots when the host has none. Plain `http://` is accepted only
//! for loopback addresses (`127.0.0.0/8`, `::1`, `localhost`): a local test issuer or a
//! sidecar, never a key set fetched in clear over a network. Plain hyper over one
//! connection per request, since hyper and rustls are in the tree and these requests
//! are rare.

use std::{net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::{Request, Uri, header};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore, pki_types::ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The longest one request may take, connect to the end of the body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest body accepted (a JWKS is a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{0}")]
    Url(String),
    #[error("{url}: {why}")]
    Request { url: String, why: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: u16 },
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    path: String,
}

/// Checks that `url` is `https://HOST...`, or `http://` to a loopback host.
pub fn check_url(url: &str) -> Result<(), String> {
    parse(url).map(|_| ())
}

fn parse(url: &str) -> Result<Target, String> {
    let uri: Uri = url
        .parse()
        .map_err(|error| format!("invalid URL {url:?}: {error}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: credentials in the URL are not supported"));
    }
    let host = authority.host().trim_matches(['[', ']']).to_owned();
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") if is_loopback(&host) => false,
        Some("http") => {
            return Err(format!(
                "{url:?}: plain http is accepted only for loopback addresses; use https"
            ));
        }
        _ => return Err(format!("{url:?} must start with https://")),
    };
    Ok(Target {
        tls,
        port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        authority: authority.as_str().to_owned(),
        host,
        path: uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    })
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// GETs `url` (with `Authorization: Bearer` when `bearer` is given) and returns the body
/// of a 2xx answer.
pub async fn get(url: &str, bearer: Option<&str>) -> Result<Bytes, HttpError> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    exchange(url, hyper::Method::GET, authorization, None).await
}

/// POSTs `form` (`application/x-www-form-urlencoded`) to `url` with HTTP basic
/// authentication as `user`/`password` (an OAuth client's id and secret, each
/// form-urlencoded first as RFC 6749 2.3.1 asks) and returns the body of a 2xx answer.
pub async fn post_form(
    url: &str,
    (user, password): (&str, &str),
    form: &[(&str, &str)],
) -> Result<Bytes, HttpError> {
    use base64::Engine as _;
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        encode(user),
        encode(password)
    ));
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    exchange(
        url,
        hyper::Method::POST,
        Some(format!("Basic {basic}")),
        Some(Bytes::from(body)),
    )
    .await
}

async fn exchange(
    url: &str,
    method: hyper::Method,
    authorization: Option<String>,
    form: Option<Bytes>,
) -> Result<Bytes, HttpError> {
    let target = parse(url).map_err(HttpError::Url)?;
    let failed = |why: String| HttpError::Request {
        url: url.to_owned(),
        why,
    };
    let work = async {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|error| failed(format!("cannot connect: {error}")))?;
        let mut request = Request::builder()
            .method(method)
            .uri(target.path.as_str())
            .header(header::HOST, target.authority.as_str())
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("sluice/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        if form.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = request
            .body(Full::new(form.unwrap_or_default()))
            .map_err(|error| failed(error.to_string()))?;
        let response = if target.tls {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|error| failed(format!("bad server name: {error}")))?;
            let stream = TlsConnector::from(tls_config())
                .connect(name, stream)
                .await
                .map_err(|error| failed(format!("TLS: {error}")))?;
            send(TokioIo::new(stream), request).await
        } else {
            send(TokioIo::new(stream), request).await
        }
        .map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            return Err(HttpError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|body| body.to_bytes())
            .map_err(|error| failed(format!("reading the body: {error}")))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, work)
        .await
        .map_err(|_| failed(format!("no answer within {REQUEST_TIMEOUT:?}")))?
}

async fn send<S>(
    io: TokioIo<S>,
    request: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())
}

/// The system's trust store, or the Mozilla roots when it has none; built once.
fn tls_config() -> Arc<ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            for bundle in [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ] {
                use rustls::pki_types::{CertificateDer, pem::PemObject as _};
                let Ok(certificates) = CertificateDer::pem_file_iter(bundle) else {
                    continue;
                };
                for certificate in certificates.flatten() {
                    let _ = roots.add(certificate);
                }
                if !roots.is_empty() {
                    break;
                }
            }
            if roots.is_empty() {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
                .unwrap_or_else(|_| {
                    ClientConfig::builder()
                        .with_root_certificates(RootCertStore::empty())
                        .with_no_client_auth()
                });
            Arc::new(config)
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_url("https://token.actions.githubusercontent.com").is_ok());
        assert!(check_url("http://127.0.0.1:8080/issuer").is_ok());
        assert!(check_url("http://[::1]:8080").is_ok());
        assert!(check_url("http://localhost:1").is_ok());
        assert!(check_url("http://issuer.example").is_err());
        assert!(check_url("ftp://127.0.0.1").is_err());
        assert!(check_url("https://user:pw@issuer.example").is_err());
    }
}
