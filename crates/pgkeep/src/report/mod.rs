//! Reports over the repository and the server: list, rpo, metrics.

pub mod list;
pub mod metrics;
pub mod rpo;
