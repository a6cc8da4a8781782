//! The protocols the daemon decodes, one module each.

pub mod http;
