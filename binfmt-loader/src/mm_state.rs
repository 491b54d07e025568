//! What a restored area carries beyond its mapping and protections, and the
//! mm-wide memory settings: how the image's VMA flags become `mmap` flags
//! and the ops that follow the page fill (`MADV_MERGEABLE`, `mlock`), which
//! areas must be mapped writable first so their commit charge
//! (`VM_ACCOUNT`) is what it was, and the process's THP and KSM settings.
//!
//! The mm-wide settings are applied right after stage 1 ([`apply_mm`]),
//! once every check passed: the mm outlives the plan's teardown, and a
//! kernel that refuses one is then reported before the point of no return.

use core::fmt;

use image_format::records::{
    prot, vma_flags, vma_kind, PROCESS_COREDUMP_FILTER_KNOWN, PROCESS_COREDUMP_FILTER_MASK,
    PROCESS_COREDUMP_FILTER_SHIFT, PROCESS_KSM_MERGE_ANY, PROCESS_MDWE_NO_INHERIT,
    PROCESS_MDWE_REFUSE_EXEC_GAIN, PROCESS_THP_DISABLED, PROCESS_THP_EXCEPT_ADVISED,
};

use crate::plan::TargetVma;
use crate::sys::{self, nr, Errno};

/// `MAP_TYPE`, and the `MAP_DROPPABLE` type (Linux 6.11+).
const MAP_TYPE: u64 = 0x0f;
pub const MAP_DROPPABLE: u64 = 0x08;
pub const MAP_NORESERVE: u64 = 0x4000;
/// `MADV_MERGEABLE`.
pub const MADV_MERGEABLE: u64 = 12;
/// `mlock`, `mlock2` and `MLOCK_ONFAULT`.
pub const NR_MLOCK: u64 = 149;
pub const NR_MLOCK2: u64 = 325;
pub const MLOCK_ONFAULT: u64 = 1;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_THP_DISABLE_EXCEPT_ADVISED: u64 = 2;
const PR_SET_MEMORY_MERGE: u64 = 67;
/// `PR_SET_MDWE`, `PR_GET_MDWE` and their bits.
pub const PR_SET_MDWE: u64 = 65;
const PR_GET_MDWE: u64 = 66;
const PR_MDWE_REFUSE_EXEC_GAIN: u64 = 1;
const PR_MDWE_NO_INHERIT: u64 = 2;

/// The `prctl(PR_SET_MDWE)` argument for `ProcessRecord::flags`, 0 for
/// none. Memory-deny-write-execute forbids making an area executable that
/// was not, which the plan does while it builds the areas: it is set after
/// the areas are final (in the plan, not here).
pub fn mdwe_bits(process_flags: u32) -> u64 {
    if process_flags & PROCESS_MDWE_REFUSE_EXEC_GAIN == 0 {
        return 0;
    }
    PR_MDWE_REFUSE_EXEC_GAIN
        | if process_flags & PROCESS_MDWE_NO_INHERIT != 0 {
            PR_MDWE_NO_INHERIT
        } else {
            0
        }
}

/// `mmap` flags for `v`, from the plan's choice of `MAP_SHARED`/`MAP_PRIVATE`
/// and placement flags: `MAP_NORESERVE` when the area had `nr`, and a
/// private anonymous droppable area mapped `MAP_DROPPABLE`.
pub fn mmap_flags(v: &TargetVma, flags: u64) -> u64 {
    let mut f = flags;
    if v.flags & vma_flags::DROPPABLE != 0 && v.fd < 0 && f & MAP_TYPE == sys::MAP_PRIVATE {
        f = (f & !MAP_TYPE) | MAP_DROPPABLE;
    }
    if v.flags & vma_flags::NORESERVE != 0 {
        f |= MAP_NORESERVE;
    }
    f
}

/// A private area that was charged to the commit count (`ac`) but is not
/// writable now: mapped writable first and `mprotect`ed to its protections
/// afterwards, as the task once did, so it is charged again (the kernel
/// keeps `VM_ACCOUNT` when an area loses `PROT_WRITE`).
pub fn write_first(v: &TargetVma) -> bool {
    v.flags & vma_flags::ACCOUNT != 0
        && v.flags & vma_flags::SHARED == 0
        && v.kind != vma_kind::SHARED_ANON
        && v.prot & prot::WRITE == 0
}

/// `MADV_POPULATE_WRITE` (Linux 5.14+).
pub const MADV_POPULATE_WRITE: u64 = 23;

/// For a [`write_first`] anonymous area that receives no stored pages: the
/// `madvise(MADV_POPULATE_WRITE)` of its first page, made before its
/// `mprotect`. The kernel drops `VM_ACCOUNT` when an anonymous area that
/// never faulted (no anon_vma) loses `PROT_WRITE`; one written (zero) page
/// gives it the anon_vma the task's area had, since its charge survived.
pub fn charge_op(v: &TargetVma, gets_pages: bool) -> Option<[u64; 6]> {
    (write_first(v) && !gets_pages && v.fd < 0 && v.end > v.start).then_some([
        v.start,
        4096,
        MADV_POPULATE_WRITE,
        0,
        0,
        0,
    ])
}

/// Would the kernel merge `v`, mapped fresh, into `prev` before it (and
/// does the plan keep them apart)? Both private, adjacent, anonymous, with
/// the same protections and flags: a new area has no anon_vma, so nothing
/// keeps it apart. The task's kernel kept them apart (each had its
/// anon_vma, or an `mremap` moved one), so the plan must too.
///
/// Only areas that may be mapped writable without changing their commit
/// charge take part (writable, charged already, or no-reserve): mapping a
/// never-charged read-only area writable would add `ac`, a worse change
/// than a merged boundary.
pub fn merges_into(prev: &TargetVma, v: &TargetVma) -> bool {
    let private = |x: &TargetVma| {
        !x.is_special()
            && x.kind != vma_kind::SHARED_ANON
            && x.flags & (vma_flags::SHARED | vma_flags::MAYSHARE | vma_flags::GROWSDOWN) == 0
            && (x.prot & prot::WRITE != 0
                || x.flags & (vma_flags::ACCOUNT | vma_flags::NORESERVE) != 0)
    };
    // Anonymous only: a file mapping's page written to give it an anon_vma
    // could lie past the end of the file (EFAULT after the point of no
    // return); files mapped twice at following offsets are rare.
    prev.end == v.start
        && private(prev)
        && private(v)
        && prev.fd < 0
        && v.fd < 0
        && prev.prot == v.prot
        && prev.flags == v.flags
}

/// How the plan keeps area `i` of `vmas` apart from its neighbours, if it
/// must: `None` when no neighbour would merge with it, else whether it is
/// the one of a pair that differs while the areas are built (every other
/// area of a run of would-be merged areas): mapped with `PROT_READ`
/// flipped, so the `mmap` does not merge it, and advised [`apart_advice`]
/// until its pages are in, so its first fault does not share its
/// neighbour's anon_vma (the kernel reuses an adjacent area's anon_vma
/// when only the protections differ). Each such area is mapped writable,
/// gets one written page (its own anon_vma, which then keeps the kernel
/// from merging it), and is `mprotect`ed to its protections afterwards.
pub fn kept_apart(vmas: &[TargetVma], i: usize) -> Option<bool> {
    let joins_prev = |k: usize| k > 0 && merges_into(&vmas[k - 1], &vmas[k]);
    let joins_next = vmas
        .get(i + 1)
        .is_some_and(|next| merges_into(&vmas[i], next));
    if !joins_prev(i) && !joins_next {
        return None;
    }
    let mut first = i;
    while joins_prev(first) {
        first -= 1;
    }
    Some((i - first) % 2 == 1)
}

/// `MADV_NORMAL`, `MADV_RANDOM`, `MADV_SEQUENTIAL`.
pub const MADV_NORMAL: u64 = 0;
const MADV_RANDOM: u64 = 1;
const MADV_SEQUENTIAL: u64 = 2;

/// The read-ahead advice that makes a [`kept_apart`] area's flags differ
/// from its neighbours' while its pages are filled (cleared with
/// `MADV_NORMAL` afterwards; the area's own advice is applied after that).
pub fn apart_advice(v: &TargetVma) -> u64 {
    if v.flags & vma_flags::RANDOM != 0 {
        MADV_SEQUENTIAL
    } else {
        MADV_RANDOM
    }
}

/// A syscall the plan makes for an area once its pages are in and its
/// protections final: `(nr, args, name)`; a failure is an error (the stage-1
/// probes and limit checks make it one the kernel does not return).
pub fn after_fill_ops(v: &TargetVma) -> impl Iterator<Item = (u64, [u64; 6], &'static str)> {
    let len = v.end - v.start;
    let merge = (v.flags & vma_flags::MERGEABLE != 0).then_some((
        nr::MADVISE,
        [v.start, len, MADV_MERGEABLE, 0, 0, 0],
        "madvise MADV_MERGEABLE",
    ));
    let lock = if v.flags & vma_flags::LOCKONFAULT != 0 {
        (
            NR_MLOCK2,
            [v.start, len, MLOCK_ONFAULT, 0, 0, 0],
            "mlock2 MLOCK_ONFAULT",
        )
    } else {
        (NR_MLOCK, [v.start, len, 0, 0, 0, 0], "mlock")
    };
    let lock = (v.flags & vma_flags::LOCKED != 0).then_some(lock);
    merge.into_iter().chain(lock)
}

/// `ENOMEM`.
const ENOMEM: u64 = 12;

/// The errno an after-fill op `nr` of `v` may return although it did its
/// work, for the plan's `OK_OR_ERRNO` rule. `mlock` sets the lock flag,
/// then faults the pages in and returns ENOMEM when some cannot be (the
/// kernel's `__mm_populate` turns EFAULT into ENOMEM): always so for a
/// `PROT_NONE` area (a locked thread-stack guard page after `mlockall`),
/// and for a file area whose last pages lie past the end of the file.
/// `mlockall` ignores those failures; the plan does too, for these areas
/// only. The ENOMEM that refuses the lock (`RLIMIT_MEMLOCK`) is ruled out
/// in stage 1 (`crate::memlimits`). `MLOCK_ONFAULT` faults nothing in.
pub fn lock_fault_errno(v: &TargetVma, nr: u64) -> Option<u64> {
    (nr == NR_MLOCK && (v.prot & (prot::READ | prot::WRITE | prot::EXEC) == 0 || v.fd >= 0))
        .then_some(ENOMEM)
}

/// What this kernel refused of the image's memory state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmStateError {
    pub what: &'static str,
    pub errno: Errno,
}

impl fmt::Display for MmStateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this kernel refuses {} ({}), which the task had; it cannot be restored here",
            self.what, self.errno
        )
    }
}

/// Try on a scratch page each area kind the image needs that an older
/// kernel (or one built without it) would refuse after the point of no
/// return; and that the kernel knows memory-deny-write-execute, if the
/// task had it.
pub fn probe_kernel(vmas: &[TargetVma], process_flags: u32) -> Result<(), MmStateError> {
    if mdwe_bits(process_flags) != 0 {
        sys::mm::prctl_numbers(PR_GET_MDWE, 0, 0).map_err(|errno| MmStateError {
            what: "prctl(PR_SET_MDWE)",
            errno,
        })?;
    }
    let any = |bit: u32| vmas.iter().any(|v| v.flags & bit != 0);
    if any(vma_flags::DROPPABLE) {
        sys::mm::probe_anon_page(MAP_DROPPABLE, None).map_err(|errno| MmStateError {
            what: "MAP_DROPPABLE areas",
            errno,
        })?;
    }
    let charged = vmas.iter().any(|v| charge_op(v, false).is_some())
        || (0..vmas.len()).any(|i| kept_apart(vmas, i).is_some());
    if charged {
        sys::mm::probe_anon_page(sys::MAP_PRIVATE, Some(MADV_POPULATE_WRITE)).map_err(|errno| {
            MmStateError {
                what: "MADV_POPULATE_WRITE, needed to keep a read-only area's commit charge",
                errno,
            }
        })?;
    }
    if any(vma_flags::MERGEABLE) {
        sys::mm::probe_anon_page(sys::MAP_PRIVATE, Some(MADV_MERGEABLE)).map_err(|errno| {
            MmStateError {
                what: "MADV_MERGEABLE (KSM)",
                errno,
            }
        })?;
    }
    Ok(())
}

/// `MADV_HUGEPAGE`, `MADV_NOHUGEPAGE`.
pub const MADV_HUGEPAGE: u64 = 14;
pub const MADV_NOHUGEPAGE: u64 = 15;

/// The plan's THP advice (`MADV_HUGEPAGE`/`MADV_NOHUGEPAGE`) is a hint it
/// does not check: on a kernel without transparent huge pages it is lost.
/// Returns the kernel's answer when the image has such advice and this
/// kernel refuses it, for a warning.
pub fn thp_advice_refused(vmas: &[TargetVma]) -> Option<Errno> {
    let advised = vmas
        .iter()
        .any(|v| v.flags & (vma_flags::HUGEPAGE | vma_flags::NOHUGEPAGE) != 0);
    if !advised {
        return None;
    }
    sys::mm::probe_anon_page(sys::MAP_PRIVATE, Some(MADV_HUGEPAGE)).err()
}

/// `0x…` text of the coredump filter in `process_flags`, for
/// `/proc/self/coredump_filter`, into `buf`; `None` when the image does not
/// know it.
pub fn coredump_filter_text(process_flags: u32, buf: &mut [u8; 8]) -> Option<&[u8]> {
    if process_flags & PROCESS_COREDUMP_FILTER_KNOWN == 0 {
        return None;
    }
    let filter = (process_flags & PROCESS_COREDUMP_FILTER_MASK) >> PROCESS_COREDUMP_FILTER_SHIFT;
    buf[..2].copy_from_slice(b"0x");
    for (i, slot) in buf[2..5].iter_mut().enumerate() {
        let nibble = (filter >> (8 - 4 * i)) & 0xf;
        *slot = b"0123456789abcdef"[nibble as usize];
    }
    Some(&buf[..5])
}

/// The mm-wide settings of `ProcessRecord::flags`, set on this process
/// (whose mm the task inherits): THP disabled, KSM merging everything, the
/// coredump filter (inherited from the caller otherwise). Settings the task
/// did not have are left as the kernel made them for a new program.
pub fn apply_mm(process_flags: u32) -> Result<(), MmStateError> {
    let mut text = [0u8; 8];
    if let Some(text) = coredump_filter_text(process_flags, &mut text) {
        sys::mm::write_own_proc_file(b"/proc/self/coredump_filter", text).map_err(|errno| {
            MmStateError {
                what: "writing /proc/self/coredump_filter",
                errno,
            }
        })?;
    }
    if process_flags & PROCESS_THP_DISABLED != 0 {
        let except = if process_flags & PROCESS_THP_EXCEPT_ADVISED != 0 {
            PR_THP_DISABLE_EXCEPT_ADVISED
        } else {
            0
        };
        sys::mm::prctl_numbers(PR_SET_THP_DISABLE, 1, except).map_err(|errno| MmStateError {
            what: "prctl(PR_SET_THP_DISABLE)",
            errno,
        })?;
    }
    if process_flags & PROCESS_KSM_MERGE_ANY != 0 {
        sys::mm::prctl_numbers(PR_SET_MEMORY_MERGE, 1, 0).map_err(|errno| MmStateError {
            what: "prctl(PR_SET_MEMORY_MERGE)",
            errno,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vma(flags: u32, prot: u32, fd: i32) -> TargetVma {
        TargetVma {
            start: 0x10000,
            end: 0x30000,
            prot,
            flags,
            kind: if fd >= 0 {
                vma_kind::FILE
            } else {
                vma_kind::ANON
            },
            fd,
            ..TargetVma::default()
        }
    }

    #[test]
    fn coredump_filter_as_text() {
        let mut buf = [0u8; 8];
        assert_eq!(coredump_filter_text(0, &mut buf), None);
        let flags = PROCESS_COREDUMP_FILTER_KNOWN | 0x1f3 << PROCESS_COREDUMP_FILTER_SHIFT;
        assert_eq!(coredump_filter_text(flags, &mut buf), Some(&b"0x1f3"[..]));
        let flags = PROCESS_COREDUMP_FILTER_KNOWN;
        assert_eq!(coredump_filter_text(flags, &mut buf), Some(&b"0x000"[..]));
    }

    #[test]
    fn mmap_flags_keep_noreserve_and_droppable() {
        let base = sys::MAP_PRIVATE | sys::MAP_ANONYMOUS | sys::MAP_FIXED;
        assert_eq!(mmap_flags(&vma(0, 3, -1), base), base);
        assert_eq!(
            mmap_flags(&vma(vma_flags::NORESERVE, 3, -1), base),
            base | MAP_NORESERVE
        );
        let dropped = mmap_flags(
            &vma(vma_flags::DROPPABLE | vma_flags::NORESERVE, 3, -1),
            base,
        );
        assert_eq!(dropped & MAP_TYPE, MAP_DROPPABLE);
        assert_eq!(dropped & !MAP_TYPE, (base & !MAP_TYPE) | MAP_NORESERVE);
        // Only private anonymous memory can be droppable.
        let shared = sys::MAP_SHARED | sys::MAP_FIXED;
        assert_eq!(mmap_flags(&vma(vma_flags::DROPPABLE, 1, 5), shared), shared);
    }

    #[test]
    fn accounted_read_only_areas_are_mapped_writable_first() {
        assert!(write_first(&vma(vma_flags::ACCOUNT, prot::READ, -1)));
        assert!(write_first(&vma(vma_flags::ACCOUNT, 0, 7)));
        assert!(!write_first(&vma(
            vma_flags::ACCOUNT,
            prot::READ | prot::WRITE,
            -1
        )));
        assert!(!write_first(&vma(0, prot::READ, -1)));
        assert!(!write_first(&vma(
            vma_flags::ACCOUNT | vma_flags::SHARED,
            prot::READ,
            7
        )));
    }

    #[test]
    fn accounted_anonymous_areas_without_pages_get_a_written_page() {
        let v = vma(vma_flags::ACCOUNT, 0, -1);
        assert_eq!(
            charge_op(&v, false).map(|a| (a[0], a[1], a[2])),
            Some((0x10000, 4096, MADV_POPULATE_WRITE))
        );
        assert_eq!(charge_op(&v, true), None);
        assert_eq!(charge_op(&vma(vma_flags::ACCOUNT, 0, 7), false), None);
        assert_eq!(charge_op(&vma(0, 0, -1), false), None);
    }

    #[test]
    fn runs_of_would_be_merged_areas_alternate() {
        let area = |start: u64, prot: u32, flags: u32| TargetVma {
            start,
            end: start + 0x1000,
            prot,
            flags,
            kind: vma_kind::ANON,
            fd: -1,
            ..TargetVma::default()
        };
        let vmas = [
            area(0x10000, 3, 0),
            area(0x11000, 3, 0),
            area(0x12000, 3, 0),
            // Other protections: the kernel keeps it apart by itself.
            area(0x13000, 1, 0),
            // Not adjacent.
            area(0x20000, 3, 0),
            area(0x21000, 3, vma_flags::DONTFORK),
        ];
        let roles: std::vec::Vec<Option<bool>> =
            (0..vmas.len()).map(|i| kept_apart(&vmas, i)).collect();
        assert_eq!(
            roles,
            [Some(false), Some(true), Some(false), None, None, None]
        );
        // Read-only and never charged: mapping it writable would charge it.
        let ro = [area(0x40000, 1, 0), area(0x41000, 1, 0)];
        assert_eq!(kept_apart(&ro, 0), None);
        let ro_charged = [
            area(0x40000, 1, vma_flags::ACCOUNT),
            area(0x41000, 1, vma_flags::ACCOUNT),
        ];
        assert_eq!(kept_apart(&ro_charged, 1), Some(true));
        let mut file = area(0x30000, 1, vma_flags::ACCOUNT);
        file.fd = 5;
        file.kind = vma_kind::FILE;
        let next = TargetVma {
            start: 0x31000,
            end: 0x32000,
            pgoff: 0x1000,
            ..file
        };
        // Files are left to the kernel (see `merges_into`).
        assert!(!merges_into(&file, &next));
    }

    #[test]
    fn only_locks_that_may_fault_short_accept_enomem() {
        assert_eq!(
            lock_fault_errno(&vma(vma_flags::LOCKED, 0, -1), NR_MLOCK),
            Some(12)
        );
        assert_eq!(
            lock_fault_errno(&vma(vma_flags::LOCKED, 1, 4), NR_MLOCK),
            Some(12)
        );
        assert_eq!(
            lock_fault_errno(&vma(vma_flags::LOCKED, 3, -1), NR_MLOCK),
            None
        );
        assert_eq!(
            lock_fault_errno(&vma(vma_flags::LOCKED, 0, -1), NR_MLOCK2),
            None
        );
        assert_eq!(
            lock_fault_errno(&vma(vma_flags::MERGEABLE, 0, -1), nr::MADVISE),
            None
        );
    }

    #[test]
    fn mergeable_and_locked_areas_get_their_ops() {
        let names = |flags| {
            let mut out = [""; 2];
            for (slot, (_, _, name)) in out.iter_mut().zip(after_fill_ops(&vma(flags, 3, -1))) {
                *slot = name;
            }
            out
        };
        assert_eq!(names(0), ["", ""]);
        assert_eq!(names(vma_flags::LOCKED), ["mlock", ""]);
        assert_eq!(
            names(vma_flags::LOCKED | vma_flags::LOCKONFAULT | vma_flags::MERGEABLE),
            ["madvise MADV_MERGEABLE", "mlock2 MLOCK_ONFAULT"]
        );
        let (nr, args, _) = after_fill_ops(&vma(vma_flags::LOCKED | vma_flags::LOCKONFAULT, 3, -1))
            .next()
            .unwrap();
        assert_eq!(
            (nr, args[0], args[1], args[2]),
            (NR_MLOCK2, 0x10000, 0x20000, 1)
        );
    }
}
