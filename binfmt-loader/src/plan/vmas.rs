//! The plan's memory steps: park this kernel's vDSO block in the window,
//! unmap everything of the loader, build every target VMA, fill its stored
//! pages, give it its final protections, advice and flags, and move the
//! vDSO block onto the target's old addresses. Also the checks of the
//! stored pages against the VMAs that come first.

use image_format::records::{prot, vma_flags, vma_kind};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::abi::{int_arg, op_kind, rule};
use super::builder::Builder;
use super::{PlanError, PlanInput, Range, TargetVma, PAGE, TASK_SIZE};
use crate::mm_state;
use crate::sys::{self, nr};

fn madvise_for(flags: u32) -> impl Iterator<Item = (u64, &'static str)> {
    const TABLE: [(u32, u64, &str); 7] = [
        (vma_flags::DONTDUMP, 16, "MADV_DONTDUMP"),
        (vma_flags::DONTFORK, 10, "MADV_DONTFORK"),
        (vma_flags::HUGEPAGE, 14, "MADV_HUGEPAGE"),
        (vma_flags::NOHUGEPAGE, 15, "MADV_NOHUGEPAGE"),
        (vma_flags::WIPEONFORK, 18, "MADV_WIPEONFORK"),
        (vma_flags::RANDOM, 1, "MADV_RANDOM"),
        (vma_flags::SEQUENTIAL, 2, "MADV_SEQUENTIAL"),
    ];
    TABLE
        .into_iter()
        .filter(move |(bit, _, _)| flags & bit != 0)
        .map(|(_, advice, name)| (advice, name))
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
    }
    Ok(())
}

/// Step 3b: every stored page run, read from the image into place.
pub(super) fn fill_pages(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for l in input.loads {
        b.op(
            op_kind::PREAD_ALL,
            rule::OK,
            nr::PREAD64,
            [int_arg(input.image_fd), l.vaddr, l.len, l.offset, 0, 0],
            0,
            format_args!("pread pages {:#x}+{:#x}", l.vaddr, l.len),
        )?;
    }
    Ok(())
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
            // Advice is a hint; a kernel without THP refuses MADV_HUGEPAGE.
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
