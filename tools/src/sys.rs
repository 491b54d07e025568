//! The few operations of the tools that need `unsafe`.
//!
//! # Safety
//! Each function states the contract its callers rely on.

use std::fs::File;

/// `mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0)` of a whole file.
///
/// # Safety (of the caller's use)
/// The mapping is private and read-only, so nothing the program does can
/// change what it reads. What it cannot rule out is another process
/// truncating the file while it is mapped: reading past the new end then
/// raises SIGBUS. crimg writes images under a temporary name and renames
/// them into place, never truncating one, so that takes someone else
/// rewriting the image during `crimg info` or `verify`; the tool then dies
/// of the signal instead of reporting an error, which is accepted.
///
/// # References
/// mmap(2)
pub fn map_readonly(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: a read-only private mapping of a file we opened; the only
    // hazard, a concurrent truncation raising SIGBUS, is described above
    // and cannot corrupt memory.
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
