//! Which pages of a VMA go into the image, decided from its
//! `/proc/P/pagemap` entries; and merging them into [`PageRun`]s.
//!
//! Pure functions over pagemap entries, so the policy is tested without a
//! process (against a page-by-page oracle in the tests).

use image_format::PAGE_SIZE;
use image_writer::model::PageRun;

/// pagemap bit 63: page present in RAM.
pub const PM_PRESENT: u64 = 1 << 63;
/// pagemap bit 62: page swapped (or another swap-type entry).
pub const PM_SWAPPED: u64 = 1 << 62;
/// pagemap bit 61: file page or shared anonymous page.
pub const PM_FILE_OR_SHARED: u64 = 1 << 61;
/// pagemap bit 58: a guard region (`MADV_GUARD_INSTALL`), not readable.
pub const PM_GUARD_REGION: u64 = 1 << 58;
/// pagemap bits 0-54: the page frame number (0 when hidden).
pub const PM_PFN_MASK: u64 = (1 << 55) - 1;

/// What a VMA's pages need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagePolicy {
    /// Private anonymous memory (heap, stack, anon): every page present or
    /// swapped that is not the shared zero page.
    Anonymous,
    /// Private file mapping: only the copied-on-write (anonymous) pages; the
    /// file supplies the rest.
    PrivateFile,
    /// Nothing: shared file mappings (the file holds the data) and kernel
    /// areas (`[vvar]`, `[vdso]`, `[vsyscall]`).
    Nothing,
}

/// Whether one page, described by its pagemap entry, is stored.
pub fn is_stored(entry: u64, policy: PagePolicy, zero_pfn: Option<u64>) -> bool {
    if entry & PM_GUARD_REGION != 0 {
        return false;
    }
    let present = entry & PM_PRESENT != 0;
    let swapped = entry & PM_SWAPPED != 0;
    let is_zero = present && zero_pfn.is_some_and(|z| entry & PM_PFN_MASK == z);
    match policy {
        PagePolicy::Nothing => false,
        PagePolicy::Anonymous => swapped || (present && !is_zero),
        PagePolicy::PrivateFile => {
            swapped || (present && entry & PM_FILE_OR_SHARED == 0 && !is_zero)
        }
    }
}

/// `PAGEMAP_SCAN` categories (`include/uapi/linux/fs.h`): a file page (not
/// anonymous), present, swapped (also a pte marker: a guard region, a
/// userfaultfd write-protect marker), the shared zero page.
pub const PAGE_IS_FILE: u64 = 1 << 2;
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;
pub const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// A range of pages that `PAGEMAP_SCAN` puts in the same categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// What the scan's categories say of a region's pages under `policy`:
/// `Some(stored)` for present pages, decided as [`is_stored`] decides from
/// pagemap (the zero page, also the huge one, is never stored; a private
/// file mapping stores only its anonymous pages); `None` for swapped
/// ones, whose entries (a guard region is "swapped" too) pagemap tells.
pub fn region_stored(categories: u64, policy: PagePolicy) -> Option<bool> {
    if categories & PAGE_IS_SWAPPED != 0 {
        return None;
    }
    let present = categories & PAGE_IS_PRESENT != 0;
    let zero = categories & PAGE_IS_PFNZERO != 0;
    let file = categories & PAGE_IS_FILE != 0;
    Some(match policy {
        PagePolicy::Nothing => false,
        PagePolicy::Anonymous => present && !zero,
        PagePolicy::PrivateFile => present && !zero && !file,
    })
}

/// No run (so no segment of the image) crosses a multiple of this address:
/// a segment is checksummed as a whole, and a lazy restore's page server
/// verifies a segment before it copies any page of it, so a fault waits
/// for the hash of its segment (about 0.4 ms for 4 MiB, 0.1 s for 1 GiB).
pub const MAX_RUN: u64 = 4 << 20;

/// Append `[addr, addr + len)` to `runs`, merging it with the last run when
/// they touch and the last run lies in the same VMA (starting at `vma_start`),
/// cut at every multiple of [`MAX_RUN`].
pub fn push_run(runs: &mut Vec<PageRun>, vma_start: u64, addr: u64, len: u64) {
    let end = addr + len;
    let mut at = addr;
    while at < end {
        let cut = ((at / MAX_RUN) + 1).saturating_mul(MAX_RUN).min(end);
        let piece = cut - at;
        match runs.last_mut() {
            Some(last) if last.end() == at && at > vma_start && !at.is_multiple_of(MAX_RUN) => {
                last.len += piece;
            }
            _ => runs.push(PageRun {
                start: at,
                len: piece,
            }),
        }
        at = cut;
    }
}

/// Select the stored pages among `entries`, the pagemap entries of the pages
/// starting at `addr` (a part of the VMA starting at `vma_start`), and
/// append them to `runs` as merged runs. Returns the number of pages stored.
pub fn select(
    runs: &mut Vec<PageRun>,
    vma_start: u64,
    addr: u64,
    entries: &[u64],
    policy: PagePolicy,
    zero_pfn: Option<u64>,
) -> u64 {
    let mut stored = 0;
    let mut i = 0;
    while i < entries.len() {
        if !is_stored(entries[i], policy, zero_pfn) {
            i += 1;
            continue;
        }
        let first = i;
        while i < entries.len() && is_stored(entries[i], policy, zero_pfn) {
            i += 1;
        }
        let n = (i - first) as u64;
        push_run(
            runs,
            vma_start,
            addr + first as u64 * PAGE_SIZE,
            n * PAGE_SIZE,
        );
        stored += n;
    }
    stored
}

/// Turn data extents of a shared-memory object (from `SEEK_DATA`/`SEEK_HOLE`
/// on the mapped file, as file offsets) into runs of the VMA
/// `[vma_start, vma_end)` that maps the object from `pgoff`. Returns the
/// number of pages stored.
pub fn select_extents(
    runs: &mut Vec<PageRun>,
    vma_start: u64,
    vma_end: u64,
    pgoff: u64,
    extents: &[(u64, u64)],
) -> u64 {
    let mut stored = 0;
    let vma_len = vma_end - vma_start;
    for &(from, to) in extents {
        // Clip to the part of the object the VMA maps, then to whole pages.
        let lo = from.max(pgoff);
        let hi = to.min(pgoff.saturating_add(vma_len));
        if lo >= hi {
            continue;
        }
        let lo = lo & !(PAGE_SIZE - 1);
        let hi = image_format::page_align_up(hi);
        push_run(runs, vma_start, vma_start + (lo - pgoff), hi - lo);
        stored += (hi - lo) / PAGE_SIZE;
    }
    stored
}

#[cfg(test)]
// Fixtures: register bits written as the signed values they hold, and
// small counts, on purpose.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]
mod tests {
    use super::*;

    const ZERO: u64 = 0x1234;

    fn present(pfn: u64) -> u64 {
        PM_PRESENT | pfn
    }

    #[test]
    fn policy_table() {
        let file = PM_PRESENT | PM_FILE_OR_SHARED | 77;
        let z = Some(ZERO);
        assert!(is_stored(present(5), PagePolicy::Anonymous, z));
        assert!(!is_stored(present(ZERO), PagePolicy::Anonymous, z));
        assert!(is_stored(present(ZERO), PagePolicy::Anonymous, None));
        assert!(is_stored(PM_SWAPPED, PagePolicy::Anonymous, z));
        assert!(!is_stored(0, PagePolicy::Anonymous, z));
        assert!(!is_stored(
            PM_SWAPPED | PM_GUARD_REGION,
            PagePolicy::Anonymous,
            z
        ));
        assert!(!is_stored(file, PagePolicy::PrivateFile, z));
        assert!(is_stored(present(9), PagePolicy::PrivateFile, z));
        assert!(is_stored(PM_SWAPPED, PagePolicy::PrivateFile, z));
        assert!(!is_stored(present(9), PagePolicy::Nothing, z));
    }

    /// A small deterministic generator, so the property test needs no crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
    }

    #[test]
    fn runs_match_a_page_by_page_oracle() {
        let mut rng = Lcg(42);
        for _ in 0..500 {
            // A few adjacent VMAs, each read in one or two chunks.
            let mut runs = Vec::new();
            let mut oracle = Vec::new();
            let mut vmas = Vec::new();
            let mut addr = 0x10000u64;
            for _ in 0..(1 + rng.next() % 4) {
                let npages = 1 + rng.next() % 40;
                let policy = match rng.next() % 3 {
                    0 => PagePolicy::Anonymous,
                    1 => PagePolicy::PrivateFile,
                    _ => PagePolicy::Nothing,
                };
                let entries: Vec<u64> = (0..npages)
                    .map(|_| match rng.next() % 5 {
                        0 => 0,
                        1 => present(ZERO),
                        2 => PM_PRESENT | PM_FILE_OR_SHARED | 3,
                        3 => PM_SWAPPED,
                        _ => present(100 + rng.next() % 10),
                    })
                    .collect();
                let split = (rng.next() % (npages + 1)) as usize;
                let mut n = select(&mut runs, addr, addr, &entries[..split], policy, Some(ZERO));
                n += select(
                    &mut runs,
                    addr,
                    addr + split as u64 * PAGE_SIZE,
                    &entries[split..],
                    policy,
                    Some(ZERO),
                );
                let mut expect = 0;
                for (i, &e) in entries.iter().enumerate() {
                    if is_stored(e, policy, Some(ZERO)) {
                        oracle.push(addr + i as u64 * PAGE_SIZE);
                        expect += 1;
                    }
                }
                assert_eq!(n, expect);
                vmas.push((addr, addr + npages * PAGE_SIZE));
                addr += npages * PAGE_SIZE;
            }
            // Same pages, sorted, no overlap, each run inside one VMA, and
            // maximal within a VMA.
            let pages: Vec<u64> = runs
                .iter()
                .flat_map(|r| (0..r.len / PAGE_SIZE).map(move |i| r.start + i * PAGE_SIZE))
                .collect();
            assert_eq!(pages, oracle);
            for w in runs.windows(2) {
                assert!(w[0].end() <= w[1].start);
                if w[0].end() == w[1].start {
                    assert!(
                        vmas.iter().any(|v| v.0 == w[1].start)
                            || w[1].start.is_multiple_of(MAX_RUN),
                        "mergeable runs left apart"
                    );
                }
            }
            for r in &runs {
                assert!(
                    vmas.iter().any(|v| v.0 <= r.start && r.end() <= v.1),
                    "run crosses a VMA"
                );
                assert!(
                    r.start / MAX_RUN == (r.end() - 1) / MAX_RUN,
                    "run crosses a multiple of MAX_RUN"
                );
            }
        }
    }

    #[test]
    fn runs_are_cut_at_multiples_of_max_run() {
        const MIB: u64 = 1 << 20;
        let mut runs = Vec::new();
        push_run(&mut runs, 0, 3 * MIB, 10 * MIB);
        // Touching the last run and in its VMA: merged up to the next cut.
        push_run(&mut runs, 0, 13 * MIB, MIB);
        let got: Vec<(u64, u64)> = runs.iter().map(|r| (r.start / MIB, r.len / MIB)).collect();
        assert_eq!(got, [(3, 1), (4, 4), (8, 4), (12, 2)]);
    }

    #[test]
    fn scan_categories_decide_as_pagemap_entries_do() {
        let z = Some(ZERO);
        // (categories, the pagemap entry of such a page).
        let cases = [
            (PAGE_IS_PRESENT, present(5)),
            (PAGE_IS_PRESENT | PAGE_IS_PFNZERO, present(ZERO)),
            (
                PAGE_IS_PRESENT | PAGE_IS_FILE,
                PM_PRESENT | PM_FILE_OR_SHARED | 77,
            ),
        ];
        for policy in [
            PagePolicy::Anonymous,
            PagePolicy::PrivateFile,
            PagePolicy::Nothing,
        ] {
            for (categories, entry) in cases {
                assert_eq!(
                    region_stored(categories, policy),
                    Some(is_stored(entry, policy, z)),
                    "{categories:#x} under {policy:?}"
                );
            }
            // Swapped (or a marker): pagemap decides.
            assert_eq!(region_stored(PAGE_IS_SWAPPED, policy), None);
            assert_eq!(
                region_stored(PAGE_IS_SWAPPED | PAGE_IS_PRESENT, policy),
                None
            );
        }
    }

    #[test]
    fn extents_are_clipped_to_the_mapping() {
        let mut runs = Vec::new();
        // VMA maps object bytes [0x2000, 0x6000) at 0x10000.
        let n = select_extents(
            &mut runs,
            0x10000,
            0x14000,
            0x2000,
            &[(0, 0x3000), (0x4800, 0x9000)],
        );
        assert_eq!(
            runs,
            vec![
                PageRun {
                    start: 0x10000,
                    len: 0x1000
                },
                PageRun {
                    start: 0x12000,
                    len: 0x2000
                }
            ]
        );
        assert_eq!(n, 3);
    }
}
