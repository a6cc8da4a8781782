//! The sluice daemon and CLI, as a library so the binary stays a thin edge.
//!
//! A redirected connection flows one way through these modules:
//!
//! ```text
//! redirect (accept) → identity (who, where to) → policy (decide) → store (open record,
//! durable) → relay (upstream, byte counts) → store (close record)
//! ```
//!
//! `bpf` and `cgroup` set the interception up; `control` serves the CLI; `cli` is the
//! client side of every subcommand.

pub mod approvals;
pub mod audit;
pub mod bpf;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod containment;
pub mod control;
pub mod credentials;
pub mod daemon;
pub mod dns;
pub mod events;
pub mod export;
pub mod grants;
pub mod identity;
pub mod masking;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod policy_watch;
pub mod protocols;
pub mod redirect;
pub mod refusals;
pub mod relay;
pub mod seccomp;
pub mod session;
pub mod sql;
pub mod store;
pub mod workload;
