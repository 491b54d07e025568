//! Searching bytes with the C library's `memmem`, which is vectorised:
//! the gadget scan covers megabytes of a task's code while it is frozen,
//! and a plain Rust loop over `windows()` is slow in unoptimised builds.
//!
//! # Safety
//!
//! `memmem` only reads the two buffers, within the lengths passed.

/// `memmem(haystack, needle)`: the offset of the first occurrence of
/// `needle` in `haystack` (`None` for an empty needle).
///
/// # References
/// memmem(3)
pub fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    // SAFETY: both pointers and lengths come from live slices; memmem reads
    // at most that many bytes of each and returns a pointer into haystack
    // or NULL.
    let p = unsafe {
        libc::memmem(
            haystack.as_ptr().cast(),
            haystack.len(),
            needle.as_ptr().cast(),
            needle.len(),
        )
    };
    if p.is_null() {
        None
    } else {
        Some(p as usize - haystack.as_ptr() as usize)
    }
}
