//! TODO
pub mod record;
pub use record::*;
