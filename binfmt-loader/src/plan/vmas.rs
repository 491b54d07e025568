//! The plan's memory steps: park this kernel's vDSO block in the window,
//! unmap everything of the loader, build every target VMA, fill its stored
//! pages, give it its final protections, advice and flags, and move the
//! vDSO block onto the target's old addresses. Also the checks of the
//! stored pages against the VMAs that come first.

use image_format::records::{prot, vma_flags, vma_kind};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::abi::{int_arg, op_kind, rule};
use super::builder::Builder;
use super::{PageLoad, PlanError, PlanInput, Range, TargetVma, PAGE, TASK_SIZE};
use crate::mm_state;
use crate::sys::{self, nr, uffd};

/// The advice an area gets once its pages are in.
fn madvise_for(flags: u32) -> impl Iterator<Item = (u64, &'static str)> {
    const TABLE: [(u32, u64, &str); 5] = [
        (vma_flags::DONTDUMP, 16, "MADV_DONTDUMP"),
        (vma_flags::DONTFORK, 10, "MADV_DONTFORK"),
        (vma_flags::WIPEONFORK, 18, "MADV_WIPEONFORK"),
        (vma_flags::RANDOM, 1, "MADV_RANDOM"),
        (vma_flags::SEQUENTIAL, 2, "MADV_SEQUENTIAL"),
    ];
    TABLE
        .into_iter()
        .filter(move |(bit, _, _)| flags & bit != 0)
        .map(|(_, advice, name)| (advice, name))
}

/// The THP advice an area gets right after its `mmap`, before its pages
/// are filled: the fill's first write into each 2 MiB-aligned range of an
/// area advised `MADV_HUGEPAGE` then faults in a huge page (given after
/// the fill, the area kept the 4 KiB pages the fill made; `khugepaged`
/// collapses them only slowly, if at all), and an area advised
/// `MADV_NOHUGEPAGE` gets none under THP `always`.
fn thp_advice_for(flags: u32) -> Option<(u64, &'static str)> {
    if flags & vma_flags::HUGEPAGE != 0 {
        Some((mm_state::MADV_HUGEPAGE, "MADV_HUGEPAGE"))
    } else if flags & vma_flags::NOHUGEPAGE != 0 {
        Some((mm_state::MADV_NOHUGEPAGE, "MADV_NOHUGEPAGE"))
    } else {
        None
    }
}

/// Check the VMAs (page-aligned, sorted, not overlapping) and the loads
/// against them: each load lies in restorable, non-shared-file VMAs that
/// cover it without holes.
pub(super) fn check_loads(input: &PlanInput<'_>) -> Result<(), PlanError> {
    let mut prev_end = 0;
    for v in input.vmas {
        if v.start % PAGE != 0 || v.end % PAGE != 0 || v.end <= v.start || v.start < prev_end {
            return Err(PlanError::BadVma { start: v.start });
        }
        prev_end = v.end;
    }
    for l in input.loads {
        let mut at = l.vaddr;
        let end = l.vaddr + l.len;
        while at < end {
            let i = input.vmas.partition_point(|v| v.end <= at);
            let v = input
                .vmas
                .get(i)
                .filter(|v| v.start <= at && !v.is_special());
            let v = v.ok_or(PlanError::LoadOutsideVmas { vaddr: at })?;
            if v.is_shared_file() {
                return Err(PlanError::LoadInSharedFile { vaddr: at });
            }
            at = v.end;
        }
    }
    Ok(())
}

/// A read-only shared file mapping (`MAP_SHARED` of a read-only fd: the
/// kernel keeps `VM_MAYSHARE` but not `VM_SHARED`) is mapped shared again,
/// so the task keeps seeing the file's changes; its fd is read-only like the
/// task's was. Not when stored pages must be written into it (they would
/// need write access the fd does not give): then it stays private, with a
/// stage-1 warning.
pub fn maps_read_only_shared(v: &TargetVma, gets_pages: bool) -> bool {
    v.fd >= 0
        && v.flags & vma_flags::MAYSHARE != 0
        && v.flags & vma_flags::SHARED == 0
        && v.prot & prot::WRITE == 0
        && !gets_pages
}

fn vma_gets_pages(input: &PlanInput<'_>, v: &TargetVma) -> bool {
    input.loads.iter().any(|l| {
        (Range {
            start: l.vaddr,
            end: l.vaddr + l.len,
        })
        .overlaps(&v.range())
    })
}

/// The VMAs the plan maps, with their index in `input.vmas` (the kernel's
/// special mappings are moved or left alone instead).
fn restorable<'a>(input: &PlanInput<'a>) -> impl Iterator<Item = (usize, &'a TargetVma)> {
    input
        .vmas
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_special())
}

/// `mremap` the `len` bytes at `from` to exactly `to`.
fn move_to(
    b: &mut Builder<'_>,
    from: u64,
    len: u64,
    to: u64,
    what: core::fmt::Arguments<'_>,
) -> Result<(), PlanError> {
    b.sys_eq(
        nr::MREMAP,
        [
            from,
            len,
            len,
            sys::MREMAP_MAYMOVE | sys::MREMAP_FIXED,
            to,
            0,
        ],
        to,
        what,
    )
}

/// Step 1: park this kernel's vDSO block at `park` in the window, keeping
/// its spacing.
pub(super) fn park_vdso(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    park: u64,
) -> Result<(), PlanError> {
    let Some(span) = input.loader_vdso.span() else {
        return Ok(());
    };
    for p in input.loader_vdso.parts() {
        let to = park + (p.start - span.start);
        move_to(
            b,
            p.start,
            p.len(),
            to,
            format_args!("mremap vdso part {:#x} to {to:#x}", p.start),
        )?;
    }
    Ok(())
}

/// Step 2: unmap everything of the loader below and above the window.
pub(super) fn unmap_loader(b: &mut Builder<'_>, window: Range) -> Result<(), PlanError> {
    b.sys(
        rule::OK,
        nr::MUNMAP,
        [0, window.start, 0, 0, 0, 0],
        format_args!("munmap below window"),
    )?;
    b.sys(
        rule::OK,
        nr::MUNMAP,
        [window.end, TASK_SIZE - window.end, 0, 0, 0, 0],
        format_args!("munmap above window"),
    )
}

/// Step 3: map every target VMA at its address; one that gets stored pages
/// (or must be charged once, see [`mm_state::write_first`]) is writable
/// until they are in.
pub(super) fn build_vmas(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for (i, v) in restorable(input) {
        let fill = vma_gets_pages(input, v);
        let apart = mm_state::kept_apart(input.vmas, i);
        let writable_first = fill || mm_state::write_first(v) || apart.is_some();
        let mut p = u64::from(v.prot) | if writable_first { sys::PROT_WRITE } else { 0 };
        if apart == Some(true) {
            p ^= sys::PROT_READ;
        }
        let shared = v.flags & vma_flags::SHARED != 0 || maps_read_only_shared(v, fill);
        let (flags, fd, off) = if v.fd >= 0 {
            (
                // A shared memory object's areas are all mapped from its
                // one memfd, shared, so they see each other's writes.
                if shared || v.kind == vma_kind::SHARED_ANON {
                    sys::MAP_SHARED
                } else {
                    sys::MAP_PRIVATE
                } | sys::MAP_FIXED,
                int_arg(v.fd),
                v.pgoff,
            )
        } else {
            let mut f = sys::MAP_ANONYMOUS | sys::MAP_FIXED;
            f |= if shared || v.kind == vma_kind::SHARED_ANON {
                sys::MAP_SHARED
            } else {
                sys::MAP_PRIVATE
            };
            if v.flags & vma_flags::GROWSDOWN != 0 {
                f |= sys::MAP_GROWSDOWN;
            }
            (f, u64::MAX, 0)
        };
        let flags = mm_state::mmap_flags(v, flags);
        b.sys_eq(
            nr::MMAP,
            [v.start, v.end - v.start, p, flags, fd, off],
            v.start,
            format_args!("mmap {:#x}-{:#x}", v.start, v.end),
        )?;
        if apart == Some(true) {
            b.sys(
                rule::OK,
                nr::MADVISE,
                [v.start, v.end - v.start, mm_state::apart_advice(v), 0, 0, 0],
                format_args!("madvise {:#x} apart", v.start),
            )?;
        }
        if let Some((advice, name)) = thp_advice_for(v.flags) {
            // Advice is a hint; a kernel without THP refuses it (stage 1
            // warns, `mm_state::thp_advice_refused`).
            b.sys(
                rule::ANY,
                nr::MADVISE,
                [v.start, v.end - v.start, advice, 0, 0, 0],
                format_args!("madvise {:#x} {name}", v.start),
            )?;
        }
    }
    Ok(())
}

/// Step 3b: every stored page run, read from the image into place, or,
/// when stage 1 made a userfaultfd ([`PlanInput::fill_uffd`]), copied
/// with `UFFDIO_COPY` into the areas that allow it ([`fill_by_copy`]).
pub(super) fn fill_pages(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    window: Range,
) -> Result<(), PlanError> {
    if let Some(lazy) = input.lazy {
        return super::lazy::fill_and_hand_over(b, input, lazy);
    }
    if let Some(uffd) = input.fill_uffd {
        if let Some(src) = copy_source(input, window) {
            return fill_by_copy(b, input, uffd, src);
        }
        // Nothing to copy: the fd must not stay in the task.
        close_uffd(b, uffd)?;
    }
    for l in input.loads {
        pread_pages(b, l)?;
    }
    Ok(())
}

fn pread_pages(b: &mut Builder<'_>, l: &PageLoad) -> Result<(), PlanError> {
    b.op(
        op_kind::PREAD_ALL,
        rule::OK,
        nr::PREAD64,
        [int_arg(l.fd), l.vaddr, l.len, l.offset, 0, 0],
        0,
        format_args!("pread pages {:#x}+{:#x}", l.vaddr, l.len),
    )
}

/// Register area `v` with the userfaultfd `uffd` in missing mode (its
/// pages then come by `UFFDIO_COPY`, from the plan or the page server).
pub(super) fn register_missing(
    b: &mut Builder<'_>,
    uffd: i32,
    v: &TargetVma,
) -> Result<(), PlanError> {
    let reg = [v.start, v.end - v.start, uffd::REGISTER_MODE_MISSING, 0];
    let at = b.put(reg.as_bytes(), 8)?;
    b.sys(
        rule::OK,
        uffd::NR_IOCTL,
        [int_arg(uffd), uffd::UFFDIO_REGISTER, at, 0, 0, 0],
        format_args!("UFFDIO_REGISTER {:#x}-{:#x}", v.start, v.end),
    )
}

fn close_uffd(b: &mut Builder<'_>, uffd: i32) -> Result<(), PlanError> {
    b.sys(
        rule::OK,
        nr::CLOSE,
        [int_arg(uffd), 0, 0, 0, 0, 0],
        format_args!("close userfaultfd {uffd}"),
    )
}

/// May the fill put pages into `v` with `UFFDIO_COPY`? A private
/// anonymous area (userfaultfd's missing mode covers anonymous memory,
/// not private file mappings), not a growsdown stack, not droppable, and
/// not advised `MADV_HUGEPAGE`: a copy makes 4 KiB pages, a `pread` into
/// such an area makes the huge pages it had.
pub fn copies_by_uffd(v: &TargetVma) -> bool {
    !v.is_special()
        && v.fd < 0
        && matches!(v.kind, vma_kind::ANON | vma_kind::HEAP)
        && v.flags
            & (vma_flags::SHARED
                | vma_flags::MAYSHARE
                | vma_flags::GROWSDOWN
                | vma_flags::DROPPABLE
                | vma_flags::HUGEPAGE)
            == 0
}

/// Each stored page run cut at the VMA boundaries it crosses (a copy must
/// stay inside one registered area), with the VMA it lies in.
pub(super) fn pieces<'a>(
    input: &PlanInput<'a>,
) -> impl Iterator<Item = (PageLoad, &'a TargetVma)> + 'a {
    let vmas = input.vmas;
    input.loads.iter().flat_map(move |l| {
        let end = l.vaddr + l.len;
        let first = vmas.partition_point(|v| v.end <= l.vaddr);
        vmas[first..]
            .iter()
            .take_while(move |v| v.start < end)
            .map(move |v| {
                let start = v.start.max(l.vaddr);
                let stop = v.end.min(end);
                let piece = PageLoad {
                    vaddr: start,
                    offset: l.offset + (start - l.vaddr),
                    len: stop - start,
                    ..*l
                };
                (piece, v)
            })
    })
}

/// Copies pay off from this many bytes on: below it the userfaultfd's
/// own calls cost more than the zeroing they save (a small process's few
/// pages go by `pread`, with no fd made).
const COPY_WORTH: u64 = 2 << 20;

/// Should stage 1 make a userfaultfd for the fill of `loads` into `vmas`?
pub fn wants_fill_copies(vmas: &[TargetVma], loads: &[PageLoad]) -> bool {
    let copied: u64 = loads
        .iter()
        .flat_map(|l| {
            let end = l.vaddr + l.len;
            let first = vmas.partition_point(|v| v.end <= l.vaddr);
            vmas[first..]
                .iter()
                .take_while(move |v| v.start < end)
                .filter(|v| copies_by_uffd(v))
                .map(move |v| v.end.min(end) - v.start.max(l.vaddr))
        })
        .sum();
    copied >= COPY_WORTH
}

/// A piece that goes in by `UFFDIO_COPY` (whole pages at page-aligned
/// image offsets, in an area that allows it).
pub(super) fn is_copied(piece: &PageLoad, v: &TargetVma) -> bool {
    copies_by_uffd(v)
        && piece.vaddr.is_multiple_of(PAGE)
        && piece.len.is_multiple_of(PAGE)
        && piece.offset.is_multiple_of(PAGE)
}

/// Where the copies read from: the image's pages mapped read-only at
/// `addr`, `len` bytes from image offset `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CopySource {
    pub addr: u64,
    pub len: u64,
    pub offset: u64,
}

/// The image range the copies need, and a place for its mapping free in
/// the target's layout and outside the window (the loader's own mappings
/// are gone by then); `None` when nothing is copied.
pub(super) fn copy_source(input: &PlanInput<'_>, window: Range) -> Option<CopySource> {
    let (mut lo, mut hi) = (u64::MAX, 0);
    for (p, v) in pieces(input) {
        if is_copied(&p, v) && p.fd == input.image_fd {
            lo = lo.min(p.offset);
            hi = hi.max(p.offset + p.len);
        }
    }
    if hi <= lo {
        return None;
    }
    let len = hi - lo;
    let gap = super::window::WINDOW_GAP;
    let busy = |v: &TargetVma| {
        let mut r = v.range();
        if v.flags & vma_flags::GROWSDOWN != 0 || v.kind == vma_kind::STACK {
            r.start = r.start.saturating_sub(super::window::STACK_GUARD_GAP);
        }
        r
    };
    let occupied = || input.vmas.iter().map(busy).chain([window]);
    let free = |at: u64| {
        at.checked_add(len + gap)
            .is_some_and(|end| end <= TASK_SIZE)
            && occupied().all(|r| r.end + gap <= at || at + len + gap <= r.start)
    };
    let first = input.mmap_min_addr.max(0x10000).next_multiple_of(PAGE) + gap;
    let addr = [first]
        .into_iter()
        .chain(occupied().map(|r| r.end.next_multiple_of(PAGE) + gap))
        .filter(|&at| free(at))
        .min()?;
    Some(CopySource {
        addr,
        len,
        offset: lo,
    })
}

/// The fill through the userfaultfd `uffd`: the image's pages mapped
/// read-only at `src`, each area that takes copies registered, each piece
/// copied (`UFFDIO_COPY`: the kernel allocates the page and copies into
/// it, no zeroing, no fault) or read with `pread` where a copy cannot go;
/// then the fd is closed, which unregisters the areas (before their final
/// protections: nothing of userfaultfd stays), and the source unmapped.
fn fill_by_copy(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    uffd: i32,
    src: CopySource,
) -> Result<(), PlanError> {
    b.sys_eq(
        nr::MMAP,
        [
            src.addr,
            src.len,
            sys::PROT_READ,
            sys::MAP_PRIVATE | sys::MAP_FIXED_NOREPLACE,
            int_arg(input.image_fd),
            src.offset,
        ],
        src.addr,
        format_args!("mmap image pages {:#x}+{:#x}", src.offset, src.len),
    )?;
    // A parent image's pages (an incremental image) are not in the mapped
    // source: read before the areas are registered (a `pread` into a
    // registered area would fault with no one to serve it).
    for (p, _) in pieces(input) {
        if p.fd != input.image_fd {
            pread_pages(b, &p)?;
        }
    }
    let mut last = None;
    for (p, v) in pieces(input) {
        if !is_copied(&p, v) || p.fd != input.image_fd || last == Some(v.start) {
            continue;
        }
        last = Some(v.start);
        register_missing(b, uffd, v)?;
    }
    for (p, v) in pieces(input) {
        if p.fd != input.image_fd {
            continue;
        }
        if !is_copied(&p, v) {
            pread_pages(b, &p)?;
            continue;
        }
        let copy = [p.vaddr, src.addr + (p.offset - src.offset), p.len, 0, 0];
        let at = b.put(copy.as_bytes(), 8)?;
        b.sys(
            rule::OK,
            uffd::NR_IOCTL,
            [int_arg(uffd), uffd::UFFDIO_COPY, at, 0, 0, 0],
            format_args!("UFFDIO_COPY pages {:#x}+{:#x}", p.vaddr, p.len),
        )?;
    }
    close_uffd(b, uffd)?;
    b.sys(
        rule::OK,
        nr::MUNMAP,
        [src.addr, src.len, 0, 0, 0, 0],
        format_args!("munmap image pages"),
    )
}

/// Step 3c: once the pages are in, each VMA's commit charge, final
/// protection, advice and flags (locks, KSM, ...).
pub(super) fn finish_vmas(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for (i, v) in restorable(input) {
        let fill = vma_gets_pages(input, v);
        let apart = mm_state::kept_apart(input.vmas, i);
        let populate = match apart {
            Some(_) if !fill => Some([v.start, PAGE, mm_state::MADV_POPULATE_WRITE, 0, 0, 0]),
            Some(_) => None,
            None => mm_state::charge_op(v, fill),
        };
        if let Some(args) = populate {
            b.sys(
                rule::OK,
                nr::MADVISE,
                args,
                format_args!("madvise {:#x} MADV_POPULATE_WRITE", v.start),
            )?;
        }
        let writable_first = fill || mm_state::write_first(v);
        if apart.is_some() || (writable_first && v.prot & prot::WRITE == 0) {
            b.sys(
                rule::OK,
                nr::MPROTECT,
                [v.start, v.end - v.start, u64::from(v.prot), 0, 0, 0],
                format_args!("mprotect {:#x}", v.start),
            )?;
        }
        if apart == Some(true) {
            // The advice below puts the area's own read-ahead flags back.
            b.sys(
                rule::OK,
                nr::MADVISE,
                [v.start, v.end - v.start, mm_state::MADV_NORMAL, 0, 0, 0],
                format_args!("madvise {:#x} MADV_NORMAL", v.start),
            )?;
        }
        for (advice, name) in madvise_for(v.flags) {
            b.sys(
                rule::ANY,
                nr::MADVISE,
                [v.start, v.end - v.start, advice, 0, 0, 0],
                format_args!("madvise {:#x} {name}", v.start),
            )?;
        }
        for (nr, args, name) in mm_state::after_fill_ops(v) {
            let (rule, errno) = match mm_state::lock_fault_errno(v, nr) {
                Some(errno) => (rule::OK_OR_ERRNO, errno),
                None => (rule::OK, 0),
            };
            b.op(
                op_kind::SYSCALL,
                rule,
                nr,
                args,
                errno,
                format_args!("{name} {:#x}-{:#x}", v.start, v.end),
            )?;
        }
    }
    Ok(())
}

/// Seals a shared memory object gets once its areas are built and
/// filled: a memfd sealed `F_SEAL_FUTURE_WRITE` keeps the writable shared
/// mappings made before the seal, and refuses new ones (stage 1 seals
/// every other object before the plan maps it).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct LateSeal {
    pub fd: i32,
    pub seals: u32,
}

/// `fcntl`'s `F_ADD_SEALS`.
const F_ADD_SEALS: u64 = 1033;

/// Step 3d: the late seals ([`LateSeal`]), after every area of their
/// objects has its pages and protections.
pub(super) fn late_seals(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for s in input.late_seals {
        b.sys(
            rule::OK,
            nr::FCNTL,
            [int_arg(s.fd), F_ADD_SEALS, u64::from(s.seals), 0, 0, 0],
            format_args!("fcntl {} F_ADD_SEALS {:#x}", s.fd, s.seals),
        )?;
    }
    Ok(())
}

/// Step 4: the parked vDSO block onto the target's old addresses (parts
/// the target did not have are unmapped).
pub(super) fn place_vdso(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    park: u64,
) -> Result<(), PlanError> {
    let Some(span) = input.loader_vdso.span() else {
        return Ok(());
    };
    let target = input.target_vdso.parts();
    for (i, p) in input.loader_vdso.parts().iter().enumerate() {
        let from = park + (p.start - span.start);
        if let Some(t) = target.get(i) {
            move_to(
                b,
                from,
                p.len(),
                t.start,
                format_args!("mremap vdso part to {:#x}", t.start),
            )?;
        } else {
            b.sys(
                rule::OK,
                nr::MUNMAP,
                [from, p.len(), 0, 0, 0, 0],
                format_args!("munmap unused vdso part"),
            )?;
        }
    }
    Ok(())
}
