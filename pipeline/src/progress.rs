//! Progress reporting: the library reports through [`Progress`]; only the binary draws.

/// Receives progress of long stages. Implementations must be cheap and thread-safe.
pub trait Progress: Sync {
    fn start(&self, stage: &str, total: u64);
    fn advance(&self, n: u64);
    fn finish(&self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn finish(&self) {}
}
