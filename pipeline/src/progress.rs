//! Progress reporting: the library reports through [`Progress`]; the binary draws it with the
//! shared [`cxr_dataset::log::Reporter`] (human, quiet or JSON).

use cxr_dataset::log::Reporter;

/// Receives progress of long stages. Implementations must be cheap and thread-safe.
pub trait Progress: Sync {
    fn start(&self, stage: &str, total: u64);
    fn advance(&self, n: u64);
    fn finish(&self);
    /// A one-off message (e.g. that a build resumes).
    fn note(&self, _message: &str) {}
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}

impl Progress for Reporter {
    fn start(&self, stage: &str, total: u64) {
        Reporter::start(self, stage, total);
    }

    fn advance(&self, n: u64) {
        Reporter::advance(self, n);
    }

    fn finish(&self) {
        Reporter::finish(self);
    }

    fn note(&self, message: &str) {
        self.line(&format!("  {message}"));
    }
}
