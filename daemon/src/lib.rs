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
//!
//! The layout, from the bottom up:
//!
//! ```text
//! core        policy, grants, approvals, store, events, export, masking, sql, metrics, ...
//!               (know no protocol)
//! pipeline    Operation, judge (policy + grants + review holds + masks), operation
//!               records and events: what every L7 protocol shares
//! protocols/  one module per protocol (postgres, mysql, ...), each reaching the rest only
//!   mod.rs      through the pipeline and the core; mod.rs is the registry, the one place
//!               that names them (one registration line per protocol)
//! session     a connection's life: identify, decide, record, dispatch through the registry
//! ```
//!
//! `protocols::layout` (a test) checks that nothing else names a protocol module and that
//! protocols do not name each other.

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
pub mod recording;
pub mod redirect;
pub mod refusals;
pub mod relay;
pub mod seccomp;
pub mod session;
pub mod sql;
pub mod store;
pub mod trust;
pub mod ui;
pub mod workload;
