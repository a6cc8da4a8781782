//! The protocol registry (the pipeline helper's; a placeholder until it lands).

pub mod ssh;
