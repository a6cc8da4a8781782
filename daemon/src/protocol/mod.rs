//! Protocol codecs for the traffic that sluice relays.
//!
//! The relay alone only counts bytes. To judge what an agent actually does (which
//! statement it runs, which rows come back) the daemon has to understand the
//! application protocol on the connection. Each protocol gets one submodule that
//! frames the byte stream in both directions and decodes the messages the proxy
//! needs, while leaving every other message forwardable byte-for-byte.

pub mod postgres;
