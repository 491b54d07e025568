//! How the page copy reports how far it has got.

/// Told how far the page copy has got, e.g. to draw a progress bar.
pub trait Progress {
    /// `done` of `total` page bytes are written.
    fn bytes(&mut self, done: u64, total: u64);
}

/// A [`Progress`] that ignores everything.
pub struct NoProgress;

impl Progress for NoProgress {
    fn bytes(&mut self, _done: u64, _total: u64) {}
}
