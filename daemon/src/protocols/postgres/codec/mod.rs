//! PostgreSQL frontend/backend protocol (v3) for a proxy that sits between an agent
//! and its database.
//!
//! The proxy reads frames from both sides, decodes the ones it must judge
//! (statements) or rewrite (DataRow for masking, BackendKeyData remapping, a
//! synthesized ErrorResponse) and forwards everything else byte-for-byte:
//!
//! - [`frame`]: streaming framing of both phases over `BytesMut`, with size limits;
//! - [`frontend`]: client messages, plus encoders for what the proxy sends upstream;
//! - [`backend`]: server messages, plus encoders for what the proxy sends the agent.
//!
//! The framing and codecs are hand-written on purpose: there is no dominant
//! proxy-side codec crate. `pgwire` is built around implementing a server,
//! `postgres-protocol` only parses the backend side (it is the client's half), and
//! neither keeps raw frames for unchanged forwarding. The protocol is small and
//! stable, and owning the parser lets every read be bounds-checked against hostile
//! bytes and every decoded value borrow the frame instead of copying it.

pub mod backend;
pub mod frame;
pub mod frontend;
mod wire;

#[cfg(test)]
mod tests;

pub use backend::{BackendMessage, Diagnostic, Severity, TransactionStatus};
pub use frame::{Frame, FrameDecoder, FrameError, NegotiationResponse, Phase};
pub use frontend::FrontendMessage;
pub use wire::{DecodeError, EncodeError, Format};
