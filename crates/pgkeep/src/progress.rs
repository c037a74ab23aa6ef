//! Progress reporting. The library never prints: commands report phases and byte counts to a
//! [`Progress`] sink; the binary renders it (a bar on a terminal, log lines otherwise).

use std::sync::Arc;

pub trait Progress: Send + Sync {
    /// A new phase; `total` bytes when known.
    fn phase(&self, name: &str, total: Option<u64>);
    /// Bytes done in the current phase.
    fn advance(&self, bytes: u64);
    /// A one-line note for the operator.
    fn note(&self, msg: &str);
    /// The current phase is over.
    fn finish_phase(&self);
}

/// Discards everything (tests, library callers that do not care).
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn note(&self, _: &str) {}
    fn finish_phase(&self) {}
}

pub fn none() -> Arc<dyn Progress> {
    Arc::new(NoProgress)
}
