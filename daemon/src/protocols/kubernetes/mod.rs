//! The Kubernetes API: every request judged in Kubernetes terms (verb, API group,
//! resource, subresource, namespace, name), Secrets masked, exec recorded.
//!
//! Kubernetes is HTTPS, so the transport (TLS interception with sluice's CA, upstream
//! verification, credential injection, hyper on both sides, one record per request)
//! is the `http` protocol's; this module supplies what differs: the API server's own
//! request mapping ([`request`]), judging and `Status` answers ([`dialect`]), the
//! masking of Secrets ([`mask`]), and the recording of exec/attach streams
//! ([`stream`]). It is the one protocol carried by another: the
//! registry registers the `http` handler with this module's [`Kubernetes`] dialect
//! (the [`crate::protocols::Dialect`] hook), so the transport is not copied.

pub mod dialect;
pub mod kubeconfig;
pub mod mask;
pub mod request;
pub mod stream;

pub use dialect::Kubernetes;
