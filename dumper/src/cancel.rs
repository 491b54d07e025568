//! Cancelling a running dump from a signal handler: one process-wide flag
//! that collection and the page copy check between steps.

use std::sync::atomic::{AtomicBool, Ordering};

static CANCEL: AtomicBool = AtomicBool::new(false);

/// Ask a running dump to stop and detach. Async-signal-safe (one atomic
/// store): call it from a SIGINT/SIGTERM handler.
pub fn request_cancel() {
    CANCEL.store(true, Ordering::SeqCst);
}

/// Whether [`request_cancel`] was called.
pub fn cancel_requested() -> bool {
    CANCEL.load(Ordering::SeqCst)
}
