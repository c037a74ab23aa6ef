//! Reports over the repository: list (later: info, rpo, metrics).

pub mod list;
pub mod rpo;
