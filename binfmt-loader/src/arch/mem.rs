//! `memcpy`, `memmove`, `memset`, `memcmp`, `bcmp` for the `crimg-loader`
//! binary, which links no libc (the compiler emits calls to these). Included
//! by `src/main.rs` only; host builds use libc's.
//!
//! # Safety
//! Each function has the C contract: the caller passes valid ranges of `n`
//! bytes. They are written with string instructions, never with Rust loops
//! the compiler could turn back into calls to themselves.

use core::arch::asm;

/// `memcpy(dst, src, n)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees `n` valid bytes at both, not overlapping.
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _, options(nostack, preserves_flags));
    }
    dst
}

/// `memmove(dst, src, n)`: copies backwards when `dst` is above `src`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: a forward copy is correct when dst is below src or the
        // ranges do not overlap.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: the caller guarantees `n` valid bytes at both; copying from
    // the last byte down with the direction flag set handles the overlap,
    // and the flag is cleared again as the ABI requires.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            inout("rcx") n => _,
            options(nostack),
        );
    }
    dst
}

/// `memset(dst, c, n)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // C's memset stores `c` converted to unsigned char: its low byte.
    let byte = c.to_le_bytes()[0];
    // SAFETY: the caller guarantees `n` writable bytes at `dst`.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") byte, options(nostack, preserves_flags));
    }
    dst
}

/// `memcmp(a, b, n)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: the caller guarantees `n` readable bytes at both; volatile
        // reads keep the compiler from turning this loop into a memcmp call.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `bcmp(a, b, n)`: zero when equal.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// `strlen(s)` (the optimiser turns NUL-scanning loops into calls to it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: the caller passes a NUL-terminated string; volatile reads keep
    // this loop from being turned back into a call to strlen.
    while unsafe { core::ptr::read_volatile(s.add(n)) } != 0 {
        n += 1;
    }
    n
}
