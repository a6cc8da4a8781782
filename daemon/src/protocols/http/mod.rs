//! HTTP(S): every request judged on its own, credentials injected so agents never hold
//! them, and every request recorded.
//!
//! A redirected connection to an `http` resource is recognised by its first bytes: a
//! TLS ClientHello (intercepted with sluice's local CA, see [`tls`] and [`ca`]), an
//! HTTP/1.x request line, or the HTTP/2 cleartext preface. Anything else is refused.
//! hyper serves the agent's side (HTTP/1.1 and HTTP/2) and a hyper client speaks to the
//! upstream over one connection kept 1:1 with the agent's, so nothing is ever pooled
//! across agents or hosts. Requests are re-serialised by hyper, never forwarded as the
//! agent's raw bytes, and redirects are passed to the agent, never followed.

pub mod ca;
mod mask;
mod proxy;
pub mod request;
pub mod scrub;
pub mod tls;

pub use proxy::{HttpSession, serve};
