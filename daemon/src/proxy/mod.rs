//! Protocol-aware proxies. They take over from the plain byte relay for resources
//! whose protocol sluice understands, so that policy can judge each statement.

pub mod postgres;
