//! Stage 1's check of the values the plan hands to the kernel unchanged.
//!
//! The image's XXH3 checksums only say the bytes are the ones the dumper wrote; a
//! value the kernel refuses (an address past `TASK_SIZE`, an rlimit
//! resource it does not have, an auxv larger than `mm->saved_auxv`) would
//! fail its op after the point of no return and kill the task. Everything
//! here is pure: one pass over the records, before anything is opened.

use core::fmt;

use image_format::elf::Timeval;
use image_format::records::{
    prot, vma_kind, ItimerRecord, MmRecord, PendingSignalRecord, RlimitRecord, ThreadRecord,
    VmaRecord,
};

use crate::plan::TASK_SIZE;

/// Where the kernel puts `[vsyscall]`: the one mapping above `TASK_SIZE`.
pub const VSYSCALL_START: u64 = 0xffff_ffff_ff60_0000;
pub const VSYSCALL_END: u64 = VSYSCALL_START + 0x1000;

/// `sizeof(mm->saved_auxv)`, which `PR_SET_MM_MAP` refuses to exceed
/// (`auxv_size > sizeof(mm->saved_auxv)`: EINVAL). It is
/// `AT_VECTOR_SIZE * 8` with `AT_VECTOR_SIZE = 2 * (AT_VECTOR_SIZE_ARCH +
/// AT_VECTOR_SIZE_BASE + 1)`. `AT_VECTOR_SIZE_BASE` is 22 since Linux 6.3
/// (AT_RSEQ_FEATURE_SIZE and AT_RSEQ_ALIGN; later kernels only raise it)
/// and x86_64's `AT_VECTOR_SIZE_ARCH` is 2 (AT_SYSINFO_EHDR,
/// AT_MINSIGSTKSZ) or 3 with IA32 emulation. The smaller, 2 * (2 + 22 + 1)
/// = 50 words = 400 bytes, is the bound every such kernel accepts; a real
/// x86_64 auxv (about 23 pairs with AT_NULL, 368 bytes) fits.
pub const MAX_AUXV_BYTES: usize = 400;

/// `RLIM_NLIMITS`.
pub const RLIMIT_COUNT: u32 = 16;
/// `ITIMER_PROF`, the highest `which` of `setitimer`.
pub const ITIMER_MAX: u32 = 2;
/// `_NSIG`.
pub const MAX_SIGNAL: u32 = 64;
/// `sizeof(struct robust_list_head)`: the only length `set_robust_list` takes.
pub const ROBUST_LIST_LEN: u64 = 24;
/// `ORIG_RSEQ_SIZE`: the smallest `struct rseq` the kernel registers; its
/// address must be aligned to this much.
pub const RSEQ_MIN_LEN: u32 = 32;

/// `USEC_PER_SEC`: a `timeval`'s microseconds are below this (`timeval_valid`).
pub const USEC_PER_SEC: i64 = 1_000_000;
/// The protection bits a VMA may carry (`PROT_READ | PROT_WRITE |
/// PROT_EXEC`); `mmap` and `mprotect` refuse others or change their meaning
/// (`PROT_SEM`, `PROT_GROWSDOWN`, pkeys are not recorded).
pub const VMA_PROT_BITS: u32 = prot::READ | prot::WRITE | prot::EXEC;

/// A value of the image the kernel would refuse after the point of no return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueError {
    /// A VMA outside `[mmap_min_addr, TASK_SIZE)` (other than `[vsyscall]`),
    /// or empty, or not page aligned.
    VmaRange {
        start: u64,
        end: u64,
        min: u64,
    },
    /// An mm field outside `[mmap_min_addr, TASK_SIZE)`.
    MmField {
        field: &'static str,
        value: u64,
        min: u64,
    },
    /// An mm range whose start is above its end.
    MmOrder {
        start_field: &'static str,
        start: u64,
        end: u64,
    },
    /// The auxv is not whole (key, value) pairs, or is larger than the
    /// kernel keeps.
    AuxvLength {
        len: usize,
    },
    RlimitResource {
        resource: u32,
    },
    ItimerWhich {
        which: u32,
    },
    SignalNumber {
        tid: i32,
        signo: u32,
    },
    /// A pending signal for a thread the image does not have.
    SignalTid {
        tid: i32,
        signo: u32,
    },
    RobustListLen {
        tid: i32,
        len: u64,
    },
    Rseq {
        tid: i32,
        addr: u64,
        len: u32,
    },
    /// An rseq area that no writable VMA holds whole (or past `TASK_SIZE`):
    /// the kernel writes it on the thread's first return to user space and
    /// kills the task with SIGSEGV.
    RseqUnmapped {
        tid: i32,
        addr: u64,
        len: u32,
    },
    /// An interval timer value `setitimer` refuses (`timeval_valid`: seconds
    /// not negative, microseconds in `0..1_000_000`).
    ItimerValue {
        which: u32,
        sec: i64,
        usec: i64,
    },
    /// Protection bits other than read, write and execute.
    VmaProt {
        start: u64,
        prot: u32,
    },
    /// An `fs_base`/`gs_base` `arch_prctl` refuses (not below `TASK_SIZE`).
    SegmentBase {
        tid: i32,
        which: &'static str,
        value: u64,
    },
    /// The brk and data sizes exceed `RLIMIT_DATA`, which `PR_SET_MM_MAP`
    /// checks (`check_data_rlimit`).
    MmDataLimit {
        size: u64,
        limit: u64,
    },
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ValueError::VmaRange { start, end, min } => write!(
                f,
                "VMA {start:#x}-{end:#x} is not a page-aligned range in [{min:#x}, {TASK_SIZE:#x}) (mmap_min_addr, TASK_SIZE)"
            ),
            ValueError::MmField { field, value, min } => write!(
                f,
                "mm field {field} {value:#x} is outside [{min:#x}, {TASK_SIZE:#x}) (mmap_min_addr, TASK_SIZE)"
            ),
            ValueError::MmOrder {
                start_field,
                start,
                end,
            } => write!(
                f,
                "mm field {start_field} {start:#x} is not before its end {end:#x} (as PR_SET_MM_MAP requires)"
            ),
            ValueError::AuxvLength { len } => write!(
                f,
                "auxv of {len} bytes is not whole 16-byte pairs of at most {MAX_AUXV_BYTES} bytes"
            ),
            ValueError::RlimitResource { resource } => write!(
                f,
                "rlimit resource {resource} (the kernel has {RLIMIT_COUNT})"
            ),
            ValueError::ItimerWhich { which } => {
                write!(f, "interval timer {which} (the kernel has 0..={ITIMER_MAX})")
            }
            ValueError::SignalNumber { tid, signo } => write!(
                f,
                "pending signal number {signo} (thread {tid}) is not in 1..={MAX_SIGNAL}"
            ),
            ValueError::SignalTid { tid, signo } => write!(
                f,
                "pending signal {signo} is for thread {tid}, which the image does not have"
            ),
            ValueError::RobustListLen { tid, len } => write!(
                f,
                "thread {tid}'s robust_list_len {len} is not {ROBUST_LIST_LEN}"
            ),
            ValueError::Rseq { tid, addr, len } => write!(
                f,
                "thread {tid}'s rseq area {addr:#x} (length {len}) is not {RSEQ_MIN_LEN}-byte aligned and at least {RSEQ_MIN_LEN} bytes"
            ),
            ValueError::RseqUnmapped { tid, addr, len } => write!(
                f,
                "thread {tid}'s rseq area {addr:#x} (length {len}) is not inside one writable memory area of the task"
            ),
            ValueError::ItimerValue { which, sec, usec } => write!(
                f,
                "interval timer {which} holds {sec} s {usec} us, not a valid timeval (seconds >= 0, microseconds in 0..{USEC_PER_SEC})"
            ),
            ValueError::VmaProt { start, prot } => write!(
                f,
                "VMA at {start:#x} has protection {prot:#x}, with bits other than read, write and execute ({VMA_PROT_BITS:#x})"
            ),
            ValueError::SegmentBase { tid, which, value } => write!(
                f,
                "thread {tid}'s {which} {value:#x} is not a user address (below {TASK_SIZE:#x})"
            ),
            ValueError::MmDataLimit { size, limit } => write!(
                f,
                "brk and data segment sizes ({size} bytes) exceed this process's RLIMIT_DATA ({limit} bytes), which PR_SET_MM_MAP enforces"
            ),
        }
    }
}

/// Every value the image hands the kernel, checked the way the kernel will.
/// `threads` gives the thread records (for rseq, robust lists and the tids
/// pending signals may name); `vmas` is walked again for each rseq area.
/// Pure: the loader's stage 1 and the dumper's self-check both call it
/// (through [`crate::rules::check_image`]).
#[allow(clippy::too_many_arguments)]
pub fn validate_values(
    vmas: impl Iterator<Item = VmaRecord> + Clone,
    mm: &MmRecord,
    auxv_len: usize,
    rlimits: impl Iterator<Item = RlimitRecord>,
    itimers: impl Iterator<Item = ItimerRecord>,
    pending: impl Iterator<Item = PendingSignalRecord>,
    threads: impl Iterator<Item = ThreadRecord> + Clone,
    mmap_min_addr: u64,
) -> Result<(), ValueError> {
    for v in vmas.clone() {
        check_vma(v.start, v.end, v.kind, mmap_min_addr)?;
        if v.prot & !VMA_PROT_BITS != 0 {
            return Err(ValueError::VmaProt {
                start: v.start,
                prot: v.prot,
            });
        }
    }
    check_mm(mm, mmap_min_addr)?;
    if !auxv_len.is_multiple_of(16) || auxv_len > MAX_AUXV_BYTES {
        return Err(ValueError::AuxvLength { len: auxv_len });
    }
    for r in rlimits {
        if r.resource >= RLIMIT_COUNT {
            return Err(ValueError::RlimitResource {
                resource: r.resource,
            });
        }
    }
    for t in itimers {
        if t.which > ITIMER_MAX {
            return Err(ValueError::ItimerWhich { which: t.which });
        }
        for tv in [t.interval, t.value] {
            if !timeval_valid(&tv) {
                return Err(ValueError::ItimerValue {
                    which: t.which,
                    sec: tv.sec,
                    usec: tv.usec,
                });
            }
        }
    }
    for p in pending {
        let signo = u32::from_le_bytes([p.siginfo[0], p.siginfo[1], p.siginfo[2], p.siginfo[3]]);
        if !(1..=MAX_SIGNAL).contains(&signo) {
            return Err(ValueError::SignalNumber { tid: p.tid, signo });
        }
        if p.tid != 0 && !threads.clone().any(|t| t.tid == p.tid) {
            return Err(ValueError::SignalTid { tid: p.tid, signo });
        }
    }
    for t in threads {
        let len_ok = match t.robust_list_len {
            0 => t.robust_list_head == 0,
            n => n == ROBUST_LIST_LEN,
        };
        if !len_ok {
            return Err(ValueError::RobustListLen {
                tid: t.tid,
                len: t.robust_list_len,
            });
        }
        if t.rseq_len != 0
            && (t.rseq_len < RSEQ_MIN_LEN || !t.rseq_addr.is_multiple_of(u64::from(RSEQ_MIN_LEN)))
        {
            return Err(ValueError::Rseq {
                tid: t.tid,
                addr: t.rseq_addr,
                len: t.rseq_len,
            });
        }
        if t.rseq_len != 0 && !in_writable_vma(vmas.clone(), t.rseq_addr, t.rseq_len) {
            return Err(ValueError::RseqUnmapped {
                tid: t.tid,
                addr: t.rseq_addr,
                len: t.rseq_len,
            });
        }
    }
    Ok(())
}

/// `timeval_valid`: what `setitimer` accepts.
fn timeval_valid(tv: &Timeval) -> bool {
    tv.sec >= 0 && (0..USEC_PER_SEC).contains(&tv.usec)
}

/// Whether `[addr, addr + len)` lies in one writable VMA below `TASK_SIZE`.
fn in_writable_vma(mut vmas: impl Iterator<Item = VmaRecord>, addr: u64, len: u32) -> bool {
    let Some(end) = addr.checked_add(u64::from(len)) else {
        return false;
    };
    end <= TASK_SIZE && vmas.any(|v| v.start <= addr && end <= v.end && v.prot & prot::WRITE != 0)
}

/// A thread's `fs_base` and `gs_base`, which the plan sets with
/// `arch_prctl`: it refuses (EPERM) anything not below `TASK_SIZE_MAX`
/// (the plan's [`TASK_SIZE`] on 4-level paging).
pub fn check_segment_bases(tid: i32, fs_base: u64, gs_base: u64) -> Result<(), ValueError> {
    for (which, value) in [("fs_base", fs_base), ("gs_base", gs_base)] {
        if value >= TASK_SIZE {
            return Err(ValueError::SegmentBase { tid, which, value });
        }
    }
    Ok(())
}

/// `check_data_rlimit` of `PR_SET_MM_MAP`: the brk area and the data
/// segment together within `RLIMIT_DATA` (soft limit; infinity: no limit).
/// The plan sets the mm fields before the image's own limits, so the limit
/// is the loader's.
pub fn check_mm_data_limit(mm: &MmRecord, rlimit_data: u64) -> Result<(), ValueError> {
    const RLIM_INFINITY: u64 = u64::MAX;
    if rlimit_data == RLIM_INFINITY {
        return Ok(());
    }
    let size =
        (mm.brk.wrapping_sub(mm.start_brk)).saturating_add(mm.end_data.wrapping_sub(mm.start_data));
    if size > rlimit_data {
        return Err(ValueError::MmDataLimit {
            size,
            limit: rlimit_data,
        });
    }
    Ok(())
}

fn check_vma(start: u64, end: u64, kind: u32, min: u64) -> Result<(), ValueError> {
    if kind == vma_kind::VSYSCALL && start == VSYSCALL_START && end == VSYSCALL_END {
        return Ok(());
    }
    let aligned = start.is_multiple_of(4096) && end.is_multiple_of(4096);
    if !aligned || start >= end || start < min || end > TASK_SIZE {
        return Err(ValueError::VmaRange { start, end, min });
    }
    Ok(())
}

/// The kernel's `mmap_min_addr` is at least `CONFIG_LSM_MMAP_MIN_ADDR`
/// (65536 in the usual configurations) where security modules are built
/// in, whatever `vm.mmap_min_addr` (the DAC bound, which is what the
/// sysctl shows) says; `PR_SET_MM_MAP` checks against the larger.
pub const LSM_MMAP_MIN_ADDR: u64 = 65536;

/// `validate_prctl_map_addr`: every field in `[mmap_min_addr, TASK_SIZE)`
/// (`start_stack` too), `start_code < end_code`, the other pairs ordered.
fn check_mm(mm: &MmRecord, min: u64) -> Result<(), ValueError> {
    let min = min.max(LSM_MMAP_MIN_ADDR);
    let value = mm.start_stack;
    if value < min || value >= TASK_SIZE {
        return Err(ValueError::MmField {
            field: "start_stack",
            value,
            min,
        });
    }
    let pairs = [
        ("start_code", mm.start_code, "end_code", mm.end_code),
        ("start_data", mm.start_data, "end_data", mm.end_data),
        ("start_brk", mm.start_brk, "brk", mm.brk),
        ("arg_start", mm.arg_start, "arg_end", mm.arg_end),
        ("env_start", mm.env_start, "env_end", mm.env_end),
    ];
    for (start_field, start, end_field, end) in pairs {
        for (field, value) in [(start_field, start), (end_field, end)] {
            if value < min || value >= TASK_SIZE {
                return Err(ValueError::MmField { field, value, min });
            }
        }
        // The code range may not be empty; the others may.
        if start > end || (start_field == "start_code" && start == end) {
            return Err(ValueError::MmOrder {
                start_field,
                start,
                end,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 0x10000;

    fn mm() -> MmRecord {
        MmRecord {
            start_code: 0x40_0000,
            end_code: 0x40_1000,
            start_data: 0x60_0000,
            end_data: 0x60_1000,
            start_brk: 0x70_0000,
            brk: 0x70_2000,
            start_stack: 0x7fff_0000_0000,
            arg_start: 0x7fff_0000_1000,
            arg_end: 0x7fff_0000_1100,
            env_start: 0x7fff_0000_1100,
            env_end: 0x7fff_0000_1200,
        }
    }

    fn vma(start: u64, end: u64, kind: u32) -> VmaRecord {
        VmaRecord {
            start,
            end,
            kind,
            ..Default::default()
        }
    }

    fn thread(tid: i32) -> ThreadRecord {
        ThreadRecord {
            tid,
            ..Default::default()
        }
    }

    fn signal(tid: i32, signo: u32) -> PendingSignalRecord {
        let mut p = PendingSignalRecord {
            tid,
            _pad: 0,
            siginfo: [0; 128],
        };
        p.siginfo[..4].copy_from_slice(&signo.to_le_bytes());
        p
    }

    struct Case {
        vmas: Vec<VmaRecord>,
        mm: MmRecord,
        auxv: usize,
        rlimits: Vec<RlimitRecord>,
        itimers: Vec<ItimerRecord>,
        pending: Vec<PendingSignalRecord>,
        threads: Vec<ThreadRecord>,
    }

    fn sound() -> Case {
        let mut t = thread(100);
        t.robust_list_head = 0x7f00_0000_0000;
        t.robust_list_len = 24;
        t.rseq_addr = 0x7f00_0000_0020;
        t.rseq_len = 32;
        Case {
            vmas: vec![
                vma(0x40_0000, 0x40_1000, vma_kind::FILE),
                VmaRecord {
                    prot: prot::READ | prot::WRITE,
                    ..vma(0x7f00_0000_0000, 0x7f00_0000_1000, vma_kind::ANON)
                },
                vma(VSYSCALL_START, VSYSCALL_END, vma_kind::VSYSCALL),
            ],
            mm: mm(),
            auxv: 23 * 16,
            rlimits: vec![RlimitRecord {
                resource: 15,
                ..Default::default()
            }],
            itimers: vec![ItimerRecord {
                which: 2,
                ..Default::default()
            }],
            pending: vec![signal(0, 64), signal(100, 1)],
            threads: vec![t, thread(101)],
        }
    }

    fn run(c: &Case) -> Result<(), ValueError> {
        validate_values(
            c.vmas.iter().copied(),
            &c.mm,
            c.auxv,
            c.rlimits.iter().copied(),
            c.itimers.iter().copied(),
            c.pending.iter().copied(),
            c.threads.iter().copied(),
            MIN,
        )
    }

    #[test]
    fn a_sound_image_passes() {
        assert_eq!(run(&sound()), Ok(()));
    }

    #[test]
    fn vmas_outside_the_user_range_are_refused() {
        for (start, end, kind) in [
            (TASK_SIZE, TASK_SIZE + 0x1000, vma_kind::ANON),
            (TASK_SIZE - 0x1000, TASK_SIZE + 0x1000, vma_kind::ANON),
            (0x1000, 0x2000, vma_kind::ANON),
            (0x2000, 0x2000, vma_kind::ANON),
            (0x20_0800, 0x20_1000, vma_kind::ANON),
            // Only the real [vsyscall] may lie above TASK_SIZE.
            (VSYSCALL_START, VSYSCALL_END, vma_kind::ANON),
            (
                VSYSCALL_START + 0x1000,
                VSYSCALL_END + 0x1000,
                vma_kind::VSYSCALL,
            ),
        ] {
            let mut c = sound();
            c.vmas.push(vma(start, end, kind));
            assert_eq!(
                run(&c),
                Err(ValueError::VmaRange {
                    start,
                    end,
                    min: MIN
                })
            );
        }
        let mut c = sound();
        c.vmas
            .push(vma(TASK_SIZE - 0x1000, TASK_SIZE, vma_kind::STACK));
        assert_eq!(run(&c), Ok(()));
    }

    #[test]
    fn mm_fields_must_be_ordered_user_addresses() {
        let mut c = sound();
        c.mm.end_code = c.mm.start_code - 1;
        assert!(matches!(
            run(&c),
            Err(ValueError::MmOrder {
                start_field: "start_code",
                ..
            })
        ));
        let mut c = sound();
        c.mm.brk = c.mm.start_brk - 0x1000;
        assert!(matches!(
            run(&c),
            Err(ValueError::MmOrder {
                start_field: "start_brk",
                ..
            })
        ));
        let mut c = sound();
        c.mm.env_end = TASK_SIZE;
        assert_eq!(
            run(&c),
            Err(ValueError::MmField {
                field: "env_end",
                value: TASK_SIZE,
                min: MIN
            })
        );
        let mut c = sound();
        c.mm.start_data = 0x1000;
        assert!(matches!(
            run(&c),
            Err(ValueError::MmField {
                field: "start_data",
                ..
            })
        ));
        let mut c = sound();
        c.mm.arg_start = c.mm.arg_end + 1;
        assert!(matches!(
            run(&c),
            Err(ValueError::MmOrder {
                start_field: "arg_start",
                ..
            })
        ));
    }

    #[test]
    fn auxv_must_be_whole_pairs_that_fit_saved_auxv() {
        for len in [8, 24, MAX_AUXV_BYTES + 16] {
            let mut c = sound();
            c.auxv = len;
            assert_eq!(run(&c), Err(ValueError::AuxvLength { len }));
        }
        let mut c = sound();
        c.auxv = MAX_AUXV_BYTES;
        assert_eq!(run(&c), Ok(()));
        c.auxv = 0;
        assert_eq!(run(&c), Ok(()));
    }

    #[test]
    fn rlimit_and_itimer_numbers_are_bounded() {
        let mut c = sound();
        c.rlimits[0].resource = 16;
        assert_eq!(run(&c), Err(ValueError::RlimitResource { resource: 16 }));
        let mut c = sound();
        c.itimers[0].which = 3;
        assert_eq!(run(&c), Err(ValueError::ItimerWhich { which: 3 }));
    }

    #[test]
    fn pending_signals_need_a_number_and_a_known_thread() {
        for signo in [0, 65, u32::MAX] {
            let mut c = sound();
            c.pending.push(signal(0, signo));
            assert_eq!(run(&c), Err(ValueError::SignalNumber { tid: 0, signo }));
        }
        let mut c = sound();
        c.pending.push(signal(999, 10));
        assert_eq!(
            run(&c),
            Err(ValueError::SignalTid {
                tid: 999,
                signo: 10
            })
        );
        let mut c = sound();
        c.pending.push(signal(101, 10));
        assert_eq!(run(&c), Ok(()));
    }

    #[test]
    fn robust_list_and_rseq_take_what_the_kernel_takes() {
        let mut c = sound();
        c.threads[0].robust_list_len = 16;
        assert_eq!(
            run(&c),
            Err(ValueError::RobustListLen { tid: 100, len: 16 })
        );
        for (addr, len) in [(0x7f00_0000_0010, 32), (0x7f00_0000_0020, 16)] {
            let mut c = sound();
            c.threads[0].rseq_addr = addr;
            c.threads[0].rseq_len = len;
            assert_eq!(
                run(&c),
                Err(ValueError::Rseq {
                    tid: 100,
                    addr,
                    len
                })
            );
        }
        let mut c = sound();
        c.threads[0].rseq_len = 0;
        c.threads[0].rseq_addr = 3;
        c.threads[0].robust_list_head = 0;
        c.threads[0].robust_list_len = 0;
        assert_eq!(run(&c), Ok(()));
    }

    #[test]
    fn start_stack_and_an_empty_code_range_are_refused() {
        let mut c = sound();
        c.mm.start_stack = 0x1000;
        assert!(matches!(
            run(&c),
            Err(ValueError::MmField {
                field: "start_stack",
                ..
            })
        ));
        let mut c = sound();
        c.mm.end_code = c.mm.start_code;
        assert!(matches!(
            run(&c),
            Err(ValueError::MmOrder {
                start_field: "start_code",
                ..
            })
        ));
        // An empty data or brk range is what PR_SET_MM_MAP accepts.
        let mut c = sound();
        c.mm.end_data = c.mm.start_data;
        c.mm.brk = c.mm.start_brk;
        assert_eq!(run(&c), Ok(()));
    }

    #[test]
    fn itimer_values_must_be_valid_timevals() {
        for (sec, usec) in [(0, 1_000_000), (0, -1), (-1, 0), (1, i64::MAX)] {
            let mut c = sound();
            c.itimers[0].value = Timeval { sec, usec };
            assert_eq!(
                run(&c),
                Err(ValueError::ItimerValue {
                    which: 2,
                    sec,
                    usec
                })
            );
            let mut c = sound();
            c.itimers[0].interval = Timeval { sec, usec };
            assert!(matches!(run(&c), Err(ValueError::ItimerValue { .. })));
        }
        let mut c = sound();
        c.itimers[0].value = Timeval {
            sec: 5,
            usec: 999_999,
        };
        assert_eq!(run(&c), Ok(()));
    }

    #[test]
    fn rseq_areas_must_lie_in_writable_memory() {
        for addr in [
            0x7f00_0000_1000,
            0x40_0000,
            0x7f00_0000_0fe0 + 0x40,
            TASK_SIZE,
        ] {
            let mut c = sound();
            c.threads[0].rseq_addr = addr;
            assert_eq!(
                run(&c),
                Err(ValueError::RseqUnmapped {
                    tid: 100,
                    addr,
                    len: 32
                }),
                "{addr:#x}"
            );
        }
        // Straddling the end of its VMA.
        let mut c = sound();
        c.threads[0].rseq_addr = 0x7f00_0000_0fe0;
        c.threads[0].rseq_len = 64;
        assert!(matches!(run(&c), Err(ValueError::RseqUnmapped { .. })));
        let mut c = sound();
        c.threads[0].rseq_addr = 0x7f00_0000_0fe0;
        assert_eq!(run(&c), Ok(()));
    }

    #[test]
    fn vma_protections_are_read_write_exec_only() {
        for bad in [0x8, 0x0100_0000, 0x0200_0000, 0x10] {
            let mut c = sound();
            c.vmas[0].prot = prot::READ | bad;
            assert_eq!(
                run(&c),
                Err(ValueError::VmaProt {
                    start: 0x40_0000,
                    prot: prot::READ | bad
                })
            );
        }
    }

    #[test]
    fn segment_bases_must_be_user_addresses() {
        assert_eq!(check_segment_bases(7, 0x7f00_0000_0000, 0), Ok(()));
        assert_eq!(
            check_segment_bases(7, 0x8000_0000_0000, 0),
            Err(ValueError::SegmentBase {
                tid: 7,
                which: "fs_base",
                value: 0x8000_0000_0000
            })
        );
        assert!(matches!(
            check_segment_bases(7, 0, 0xffff_8000_0000_0000),
            Err(ValueError::SegmentBase {
                which: "gs_base",
                ..
            })
        ));
    }

    #[test]
    fn brk_and_data_must_fit_rlimit_data() {
        let m = mm();
        // brk 0x2000 + data 0x1000.
        assert_eq!(check_mm_data_limit(&m, u64::MAX), Ok(()));
        assert_eq!(check_mm_data_limit(&m, 0x3000), Ok(()));
        assert_eq!(
            check_mm_data_limit(&m, 0x2fff),
            Err(ValueError::MmDataLimit {
                size: 0x3000,
                limit: 0x2fff
            })
        );
    }
}
