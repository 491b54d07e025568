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

use crate::pages::{ScanRegion, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};

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
    scan(
        pagemap,
        start,
        end,
        present_or_swapped_with(PAGE_IS_PRESENT | PAGE_IS_SWAPPED),
        |r| match out.last_mut() {
            Some(last) if last.1 == r.start => last.1 = r.end,
            _ => out.push((r.start, r.end)),
        },
    )
}

/// The regions of pages present or swapped within `[start, end)`, each
/// with its categories (`PAGE_IS_PRESENT`, `_SWAPPED`, `_FILE`,
/// `_PFNZERO`: the kernel starts a new region where they change), in
/// address order, appended to `out`: what deciding which pages to store
/// needs, without reading pagemap (8 bytes a page, one `pread` per range).
/// An error means the caller reads pagemap instead.
pub fn regions(pagemap: &File, start: u64, end: u64, out: &mut Vec<ScanRegion>) -> io::Result<()> {
    let mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_FILE | PAGE_IS_PFNZERO;
    scan(
        pagemap,
        start,
        end,
        present_or_swapped_with(mask),
        |r| match out.last_mut() {
            Some(last) if last.end == r.start && last.categories == r.categories => {
                last.end = r.end;
            }
            _ => out.push(ScanRegion {
                start: r.start,
                end: r.end,
                categories: r.categories,
            }),
        },
    )
}

/// `PAGE_IS_WRITTEN`: written since the range was write-protected (an
/// area registered with a userfaultfd for async write-protect).
const PAGE_IS_WRITTEN: u64 = 1 << 1;

/// The ranges of `[start, end)` written since they were protected, in
/// address order (the range must be an area registered for async
/// write-protect: elsewhere a page's bit says nothing;
/// `PM_SCAN_CHECK_WPASYNC` cannot tell, it wants `WP_UNPOPULATED`).
pub fn written(pagemap: &File, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let which = Which {
        all_of: PAGE_IS_WRITTEN,
        any_of: 0,
        report: PAGE_IS_WRITTEN,
    };
    scan(pagemap, start, end, which, |r| match out.last_mut() {
        Some(last) if last.1 == r.start => last.1 = r.end,
        _ => out.push((r.start, r.end)),
    })?;
    Ok(out)
}

/// Which pages a scan reports (`category_mask`: all of these;
/// `category_anyof_mask`: one of these, when not 0) and which categories
/// it tells of them (`return_mask`).
#[derive(Clone, Copy)]
struct Which {
    all_of: u64,
    any_of: u64,
    report: u64,
}

/// The pages present or swapped, reporting `report`.
fn present_or_swapped_with(report: u64) -> Which {
    Which {
        all_of: 0,
        any_of: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        report,
    }
}

/// `PAGEMAP_SCAN` over `[start, end)` for the pages `which` selects;
/// `each` gets every region in address order.
fn scan(
    pagemap: &File,
    start: u64,
    end: u64,
    which: Which,
    mut each: impl FnMut(&PageRegion),
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
            category_mask: which.all_of,
            category_anyof_mask: which.any_of,
            return_mask: which.report,
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
            each(r);
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

    /// A fresh private anonymous `MAP_NORESERVE` reservation of `len`
    /// bytes without huge pages (they would make the present ranges 2 MiB
    /// wide); the caller unmaps it.
    pub(super) fn reservation(len: usize) -> *mut libc::c_void {
        // SAFETY: a new mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        // SAFETY: advice on the reservation just made.
        unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
        base
    }

    #[test]
    fn finds_the_touched_pages_of_a_large_reservation() {
        const LEN: usize = 4 << 30;
        const PAGE: usize = 4096;
        let base = reservation(LEN);
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

#[cfg(test)]
mod category_tests {
    use super::tests::reservation;
    use super::*;
    use crate::pages::{self, PagePolicy};
    use std::os::unix::fs::FileExt;

    /// The pages of `[start, end)` stored under `policy`, page by page from
    /// pagemap (the oracle).
    fn stored_by_pagemap(
        pagemap: &File,
        start: u64,
        end: u64,
        policy: PagePolicy,
        zero_pfn: Option<u64>,
    ) -> Vec<u64> {
        let mut out = Vec::new();
        let mut entry = [0u8; 8];
        let mut ranges = Vec::new();
        present_or_swapped(pagemap, start, end, &mut ranges).unwrap();
        for (from, to) in ranges {
            for page in (from..to).step_by(4096) {
                pagemap.read_exact_at(&mut entry, page / 4096 * 8).unwrap();
                if pages::is_stored(u64::from_le_bytes(entry), policy, zero_pfn) {
                    out.push(page);
                }
            }
        }
        out
    }

    /// The same pages, from the scan's categories.
    fn stored_by_categories(pagemap: &File, start: u64, end: u64, policy: PagePolicy) -> Vec<u64> {
        let mut found = Vec::new();
        regions(pagemap, start, end, &mut found).unwrap();
        let mut out = Vec::new();
        for r in found {
            let stored = pages::region_stored(r.categories, policy)
                .expect("no swap here: every region is decided");
            if stored {
                out.extend((r.start..r.end).step_by(4096));
            }
        }
        out
    }

    #[test]
    fn categories_store_what_pagemap_stores() {
        const LEN: usize = 2 << 30;
        const PAGE: usize = 4096;
        let Some(zero_pfn) = crate::sys::process::zero_page_pfn().ok().flatten() else {
            eprintln!("skipped: page frame numbers are hidden (not root)");
            return;
        };
        let base = reservation(LEN);
        let b = base as usize;
        // Written pages, runs of them, pages only read (the zero page), and
        // a read page right after a written one.
        for i in 0..300usize {
            let off = (i * 1021 * PAGE) % (LEN / 2);
            // SAFETY: inside the reservation made above.
            unsafe {
                if i % 3 == 0 {
                    std::ptr::read_volatile((b + off) as *const u8);
                } else {
                    ((b + off) as *mut u8).write_volatile(1);
                }
                std::ptr::read_volatile((b + off + PAGE) as *const u8);
            }
        }
        for off in (LEN / 2..LEN / 2 + 64 * PAGE).step_by(PAGE) {
            // SAFETY: inside the reservation made above.
            unsafe { ((b + off) as *mut u8).write_volatile(2) };
        }
        let pagemap = File::open("/proc/self/pagemap").unwrap();
        let (start, end) = (b as u64, (b + LEN) as u64);
        let mut result = Ok(());
        for policy in [PagePolicy::Anonymous, PagePolicy::PrivateFile] {
            let want = stored_by_pagemap(&pagemap, start, end, policy, Some(zero_pfn));
            let got = stored_by_categories(&pagemap, start, end, policy);
            if want != got || want.len() < 200 + 64 {
                result = Err(format!(
                    "{policy:?}: pagemap stores {} pages, the categories {}",
                    want.len(),
                    got.len()
                ));
            }
        }
        // A private file mapping: a page read from the file (not stored)
        // and one written (copied on write: stored).
        let file = crate::sys::process::memfd(c"category-test").unwrap();
        file.write_all_at(&[7u8; 2 * PAGE], 0).unwrap();
        // SAFETY: a private mapping of the two pages of a file of ours.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(map, libc::MAP_FAILED);
        // SAFETY: inside the two-page mapping made above.
        unsafe {
            std::ptr::read_volatile(map.cast::<u8>());
            (map.cast::<u8>().add(PAGE)).write_volatile(9);
        }
        let (fs, fe) = (map as u64, map as u64 + 2 * PAGE as u64);
        let want = stored_by_pagemap(&pagemap, fs, fe, PagePolicy::PrivateFile, Some(zero_pfn));
        let got = stored_by_categories(&pagemap, fs, fe, PagePolicy::PrivateFile);
        // SAFETY: neither mapping is used after this.
        unsafe {
            libc::munmap(map, 2 * PAGE);
            libc::munmap(base, LEN);
        }
        result.unwrap();
        assert_eq!(want, vec![fs + PAGE as u64]);
        assert_eq!(got, want);
    }
}
