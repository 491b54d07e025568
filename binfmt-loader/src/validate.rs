//! Stage 1's check of the values the plan hands to the kernel unchanged.
//!
//! The image's CRC only says the bytes are the ones the dumper wrote; a
//! value the kernel refuses (an address past `TASK_SIZE`, an rlimit
//! resource it does not have, an auxv larger than `mm->saved_auxv`) would
//! fail its op after the point of no return and kill the task. Everything
//! here is pure: one pass over the records, before anything is opened.

use core::fmt;

use image_format::records::{
    vma_kind, ItimerRecord, MmRecord, PendingSignalRecord, RlimitRecord, ThreadRecord, VmaRecord,
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
                "mm field {start_field} {start:#x} is above its end {end:#x}"
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
        }
    }
}

/// Every value the image hands the kernel, checked the way the kernel will.
/// `threads` gives the thread records (for rseq, robust lists and the tids
/// pending signals may name).
#[allow(clippy::too_many_arguments)]
pub fn validate_values<'a>(
    vmas: impl Iterator<Item = VmaRecord>,
    mm: &MmRecord,
    auxv_len: usize,
    rlimits: &[RlimitRecord],
    itimers: &[ItimerRecord],
    pending: &[PendingSignalRecord],
    threads: impl Iterator<Item = &'a ThreadRecord> + Clone,
    mmap_min_addr: u64,
) -> Result<(), ValueError> {
    for v in vmas {
        check_vma(v.start, v.end, v.kind, mmap_min_addr)?;
    }
    check_mm(mm, mmap_min_addr)?;
    if !auxv_len.is_multiple_of(16) || auxv_len > MAX_AUXV_BYTES {
        return Err(ValueError::AuxvLength { len: auxv_len });
    }
    if let Some(r) = rlimits.iter().find(|r| r.resource >= RLIMIT_COUNT) {
        return Err(ValueError::RlimitResource {
            resource: r.resource,
        });
    }
    if let Some(t) = itimers.iter().find(|t| t.which > ITIMER_MAX) {
        return Err(ValueError::ItimerWhich { which: t.which });
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

fn check_mm(mm: &MmRecord, min: u64) -> Result<(), ValueError> {
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
        if start > end {
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
            &c.rlimits,
            &c.itimers,
            &c.pending,
            c.threads.iter(),
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
}
