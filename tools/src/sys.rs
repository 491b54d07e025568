//! The few operations of the tools that need `unsafe`.
//!
//! # Safety
//! Each function states the contract its callers rely on.

use std::fs::File;

/// `mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0)` of a whole file.
///
/// # Safety (of the caller's use)
/// The mapping is private and read-only. Another process truncating the file
/// while it is read would raise SIGBUS: images are written once (temporary
/// name, then rename) and never modified in place, which every reader of
/// crimg images relies on.
///
/// # References
/// mmap(2)
pub fn map_readonly(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: read-only private mapping of a file that is replaced by rename,
    // never truncated in place (see above).
    unsafe { memmap2::Mmap::map(file) }
}

extern "C" fn on_interrupt(_sig: libc::c_int) {
    // Async-signal-safe: one atomic store. The dump notices it at its next
    // check, detaches every thread and removes its temporary files.
    dumper::request_cancel();
}

/// `sigaction(SIGINT|SIGTERM|SIGHUP, on_interrupt)`: a dump interrupted by
/// Ctrl-C or a polite kill detaches cleanly instead of dying with the target
/// still stopped under ptrace.
///
/// # References
/// sigaction(2)
pub fn cancel_dump_on_interrupt() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value;
        // the handler only performs an atomic store, which is
        // async-signal-safe, and stays valid for the life of the program.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}
