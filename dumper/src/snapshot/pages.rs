//! The page selection of a deferred area, from a process's pagemap: the
//! same per-page policy as the frozen dump's (`crate::pages`), run after
//! the tree was resumed, on the snapshot child (whose page tables a fork
//! copied from the original's for these areas).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use image_format::PAGE_SIZE;
use image_writer::model::PageRun;

use super::DeferredArea;
use crate::pages;

/// Pagemap entries read per call (64 MiB of address space = 128 KiB).
const CHUNK_PAGES: usize = 16384;
/// From this size on, an area is walked with `PAGEMAP_SCAN` first (a
/// reservation of terabytes is mostly empty page tables).
const SCAN_FROM: u64 = 1 << 30;

/// Append the stored pages of `area` (from `pagemap`, `/proc/P/pagemap`)
/// to `runs`; returns how many pages. An entry equal to `marker` (a
/// userfaultfd write-protect marker) is a page not there.
pub(super) fn select_area(
    pagemap: &File,
    area: &DeferredArea,
    zero_pfn: Option<u64>,
    marker: Option<u64>,
    runs: &mut Vec<PageRun>,
) -> io::Result<u64> {
    let mut ranges = Vec::new();
    if area.end - area.start < SCAN_FROM
        || crate::sys::pagemap_scan::present_or_swapped(pagemap, area.start, area.end, &mut ranges)
            .is_err()
    {
        ranges = vec![(area.start, area.end)];
    }
    let mut raw = vec![0u8; CHUNK_PAGES * 8];
    let mut entries = Vec::with_capacity(CHUNK_PAGES);
    let mut stored = 0;
    for (from, to) in ranges {
        let mut addr = from;
        while addr < to {
            // At most CHUNK_PAGES, so the count fits.
            let n = usize::try_from((to - addr) / PAGE_SIZE)
                .unwrap_or(CHUNK_PAGES)
                .min(CHUNK_PAGES);
            let bytes = &mut raw[..n * 8];
            pagemap.read_exact_at(bytes, addr / PAGE_SIZE * 8)?;
            entries.clear();
            entries.extend(
                bytes
                    .chunks_exact(8)
                    .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                    .map(|e| if Some(e) == marker { 0 } else { e }),
            );
            stored += pages::select(runs, area.start, addr, &entries, area.policy, zero_pfn);
            addr += entries.len() as u64 * PAGE_SIZE;
        }
    }
    Ok(stored)
}
