//! `ioctl(PAGEMAP_SCAN)` on `/proc/P/pagemap` (Linux 6.7+): the ranges of
//! an address range whose pages are present or swapped, found by walking
//! the page tables, which skips unpopulated tables. Reading `pagemap`
//! itself costs 8 bytes per page, populated or not: about 28 ms per GiB,
//! ten minutes for the terabytes of shadow memory an AddressSanitizer build
//! reserves.
//!
//! # References
//! `Documentation/admin-guide/mm/pagemap.rst` ("PAGEMAP_SCAN IOCTL"),
//! `include/uapi/linux/fs.h` (`struct pm_scan_arg`, `struct page_region`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// `PAGE_IS_PRESENT`, `PAGE_IS_SWAPPED`.
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}
const _: () = assert!(std::mem::size_of::<PmScanArg>() == 96);

/// `struct page_region`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `_IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = (3 << 30) | (96 << 16) | ((b'f' as u64) << 8) | 16;

/// The `[start, end)` ranges of pages present or swapped within
/// `[start, end)`, in address order, appended to `out`. An error (ENOTTY
/// or EINVAL before Linux 6.7) means the caller reads pagemap instead.
pub fn present_or_swapped(
    pagemap: &File,
    start: u64,
    end: u64,
    out: &mut Vec<(u64, u64)>,
) -> io::Result<()> {
    let mut regions = [PageRegion::default(); 512];
    let mut at = start;
    while at < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: at,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..PmScanArg::default()
        };
        // SAFETY: `arg` is a live pm_scan_arg of the size it states; `vec`
        // points at `regions`, `vec_len` entries the kernel may fill, both
        // outliving the call.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = usize::try_from(n).unwrap_or(0).min(regions.len());
        for r in &regions[..n] {
            match out.last_mut() {
                Some(last) if last.1 == r.start => last.1 = r.end,
                _ => out.push((r.start, r.end)),
            }
        }
        if arg.walk_end <= at {
            // No progress: stop rather than spin (the kernel always moves on).
            return Err(io::Error::other("PAGEMAP_SCAN made no progress"));
        }
        at = arg.walk_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_touched_pages_of_a_large_reservation() {
        const LEN: usize = 4 << 30;
        const PAGE: usize = 4096;
        // SAFETY: a fresh private anonymous reservation, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: advice on the reservation made above; huge pages would
        // make the present ranges 2 MiB wide.
        unsafe { libc::madvise(base, LEN, libc::MADV_NOHUGEPAGE) };
        let base = base as usize;
        let touched = [0, 2 * PAGE, 3 * PAGE, LEN / 2, LEN - PAGE];
        for off in touched {
            // SAFETY: inside the reservation made above.
            unsafe { ((base + off) as *mut u8).write_volatile(1) };
        }
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let mut out = Vec::new();
        let r = present_or_swapped(&pagemap, base as u64, (base + LEN) as u64, &mut out);
        // SAFETY: the reservation is not used after this.
        unsafe { libc::munmap(base as *mut libc::c_void, LEN) };
        if let Err(e) = r {
            // Linux before 6.7: the caller falls back to reading pagemap.
            eprintln!("PAGEMAP_SCAN unavailable here: {e}");
            return;
        }
        let b = base as u64;
        let p = PAGE as u64;
        let l = LEN as u64;
        assert_eq!(
            out,
            vec![
                (b, b + p),
                (b + 2 * p, b + 4 * p),
                (b + l / 2, b + l / 2 + p),
                (b + l - p, b + l)
            ]
        );
    }
}
