//! The planner's property tests: random layouts planned and run on a
//! model of the address space.

// Fixture addresses and window offsets are small host values; the casts
// between them are the tests' shorthand, not the planner's logic.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use super::*;
use crate::frame;
use crate::mm_state;
use crate::sys::{self, nr};
use abi::tramp::FUTEX_WAKE_OP_PRIVATE;
use image_format::records::prot;
use std::collections::BTreeMap;
use std::vec::Vec;
use thread_ops::{frame_on_stack, ARCH_SET_FS, FIRST_USE_AREA, PR_SET_NO_NEW_PRIVS};

/// xorshift64*: deterministic random layouts without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn random_ranges(rng: &mut Rng, n: usize, lo: u64, hi: u64) -> Vec<Range> {
    let mut out: Vec<Range> = Vec::new();
    for _ in 0..n {
        let start = (lo + rng.below((hi - lo) / PAGE) * PAGE) & !(PAGE - 1);
        let len = (1 + rng.below(64)) * PAGE;
        let r = Range {
            start,
            end: (start + len).min(hi),
        };
        if !r.is_empty() && out.iter().all(|o| !o.overlaps(&r)) {
            out.push(r);
        }
    }
    out.sort();
    out
}

#[test]
fn find_free_is_the_lowest_fit() {
    let mut rng = Rng(0x1234_5678);
    for _ in 0..2000 {
        let (lo, hi) = (0x10000, 0x10000 + 4096 * PAGE);
        let n = rng.below(40) as usize;
        let mut occ = random_ranges(&mut rng, n, 0, hi + 64 * PAGE);
        let size = (1 + rng.below(200)) * PAGE;
        let valid = |a: u64, occ: &[Range]| {
            a >= lo
                && a.is_multiple_of(PAGE)
                && a + size <= hi
                && occ.iter().all(|r| {
                    !r.overlaps(&Range {
                        start: a - WINDOW_GAP,
                        end: a + size + WINDOW_GAP,
                    })
                })
        };
        let got = find_free(&mut occ, size, lo, hi);
        // The only candidates are `lo` and just past each range's gap.
        let mut cands: Vec<u64> = occ.iter().map(|r| r.end + WINDOW_GAP).collect();
        cands.push(lo);
        let best = cands.into_iter().filter(|&a| valid(a, &occ)).min();
        assert_eq!(got, best, "size {size:#x} occupied {occ:x?}");
    }
}

/// A simple model of an address space: page → protection.
#[derive(Default)]
struct Model {
    pages: BTreeMap<u64, u64>,
    written: BTreeMap<u64, u32>,
}

impl Model {
    fn map(&mut self, start: u64, len: u64, prot: u64) {
        for p in (start..start + len).step_by(PAGE as usize) {
            self.pages.insert(p, prot);
        }
    }
    fn unmap(&mut self, start: u64, len: u64) {
        let end = start.saturating_add(len);
        let gone: Vec<u64> = self.pages.range(start..end).map(|(k, _)| *k).collect();
        for p in gone {
            self.pages.remove(&p);
        }
    }
    fn apply(&mut self, op: &Op) {
        let a = op.args;
        match (op.kind, op.nr) {
            (op_kind::SYSCALL, nr::MMAP) => {
                assert!(a[3] & (sys::MAP_FIXED | sys::MAP_FIXED_NOREPLACE) != 0);
                if a[3] & sys::MAP_FIXED_NOREPLACE != 0 {
                    assert!(
                        self.pages.range(a[0]..a[0] + a[1]).next().is_none(),
                        "MAP_FIXED_NOREPLACE over a mapping at {:#x}",
                        a[0]
                    );
                }
                self.map(a[0], a[1], a[2]);
            }
            (op_kind::SYSCALL, nr::MUNMAP) => self.unmap(a[0], a[1]),
            (op_kind::SYSCALL, nr::MPROTECT) => {
                for p in (a[0]..a[0] + a[1]).step_by(PAGE as usize) {
                    assert!(self.pages.contains_key(&p), "mprotect of unmapped {p:#x}");
                    self.pages.insert(p, a[2]);
                }
            }
            (op_kind::SYSCALL, nr::MREMAP) => {
                let moved: Vec<(u64, u64)> = self
                    .pages
                    .range(a[0]..a[0] + a[1])
                    .map(|(k, v)| (*k, *v))
                    .collect();
                assert_eq!(
                    moved.len() as u64,
                    a[1] / PAGE,
                    "mremap of a hole at {:#x}",
                    a[0]
                );
                self.unmap(a[0], a[1]);
                self.unmap(a[4], a[2]);
                for (k, v) in moved {
                    self.pages.insert(k - a[0] + a[4], v);
                }
            }
            (op_kind::PREAD_ALL, _) => {
                for p in (a[1]..a[1] + a[2]).step_by(PAGE as usize) {
                    let prot = self.pages.get(&p).copied();
                    assert!(
                        prot.is_some_and(|x| x & sys::PROT_WRITE != 0),
                        "pread into {p:#x} ({prot:?})"
                    );
                    *self.written.entry(p).or_default() += 1;
                }
            }
            (op_kind::MEMCPY, _) => {
                let first = a[0] & !(PAGE - 1);
                for p in (first..a[0] + a[2]).step_by(PAGE as usize) {
                    assert!(
                        self.pages.get(&p).is_some_and(|x| x & sys::PROT_WRITE != 0),
                        "memcpy to {p:#x}"
                    );
                }
            }
            _ => {}
        }
    }
}

/// The userfaultfd number the fixtures give the plan.
const UFFD: i32 = 77;

/// The fill through a userfaultfd, on top of [`Model`]: which areas are
/// registered, where the image is mapped, and that every `UFFDIO_COPY`
/// puts the right image pages into a registered, writable area.
#[derive(Default)]
struct FillModel {
    registered: Vec<Range>,
    /// Address of the image mapping and the image offset it starts at.
    source: Option<(u64, u64, u64)>,
    closed: bool,
    copies: usize,
}

impl FillModel {
    fn read_struct<const N: usize>(buf: &[u8], window: Range, addr: u64) -> [u64; N] {
        let off = (addr - window.start) as usize;
        core::array::from_fn(|i| {
            u64::from_le_bytes(buf[off + 8 * i..off + 8 * i + 8].try_into().unwrap())
        })
    }

    fn apply(&mut self, m: &mut Model, inp: &PlanInput<'_>, op: &Op, buf: &[u8], window: Range) {
        let a = op.args;
        let uffd = inp.fill_uffd.map(|fd| fd as u64);
        match op.nr {
            nr::MMAP if a[4] == inp.image_fd as u64 && op.kind == op_kind::SYSCALL => {
                assert!(self.source.is_none(), "the image is mapped once");
                assert_eq!(a[2], sys::PROT_READ);
                self.source = Some((a[0], a[1], a[5]));
            }
            nr::MUNMAP if self.source.is_some_and(|(at, _, _)| at == a[0]) => {
                assert!(self.closed, "the image unmapped before the copies end");
            }
            sys::uffd::NR_IOCTL if Some(a[0]) == uffd => {
                assert!(!self.closed, "ioctl on the closed userfaultfd");
                match a[1] {
                    sys::uffd::UFFDIO_REGISTER => {
                        let [start, len, mode, _] = Self::read_struct::<4>(buf, window, a[2]);
                        assert_eq!(mode, sys::uffd::REGISTER_MODE_MISSING);
                        let v = inp
                            .vmas
                            .iter()
                            .find(|v| v.start == start && v.end == start + len)
                            .expect("registers a whole area");
                        assert!(copies_by_uffd(v), "{v:x?} registered");
                        self.registered.push(v.range());
                    }
                    sys::uffd::UFFDIO_COPY => {
                        let [dst, src, len, mode, _] = Self::read_struct::<5>(buf, window, a[2]);
                        assert_eq!(mode, 0);
                        assert!(
                            self.registered
                                .iter()
                                .any(|r| r.start <= dst && dst + len <= r.end),
                            "copy to {dst:#x}+{len:#x} outside a registered area"
                        );
                        let (at, maplen, offset) = self.source.expect("the image mapped");
                        assert!(at <= src && src + len <= at + maplen);
                        for p in (dst..dst + len).step_by(PAGE as usize) {
                            let want = inp
                                .loads
                                .iter()
                                .find(|l| l.vaddr <= p && p < l.vaddr + l.len)
                                .map(|l| l.offset + (p - l.vaddr))
                                .expect("a stored page");
                            assert_eq!(offset + (src + (p - dst) - at), want, "page {p:#x}");
                            let prot = m.pages.get(&p).copied();
                            assert!(
                                prot.is_some_and(|x| x & sys::PROT_WRITE != 0),
                                "copy into {p:#x} ({prot:?})"
                            );
                            *m.written.entry(p).or_default() += 1;
                        }
                        self.copies += 1;
                    }
                    other => panic!("unexpected userfaultfd ioctl {other:#x}"),
                }
            }
            nr::CLOSE if Some(a[0]) == uffd => {
                assert!(!self.closed, "the userfaultfd closed twice");
                self.closed = true;
            }
            nr::MPROTECT | mm_state::NR_MLOCK => {
                assert!(
                    uffd.is_none() || self.closed,
                    "an area finished while the userfaultfd is open"
                );
            }
            _ => {}
        }
    }

    fn check_done(&self, inp: &PlanInput<'_>) {
        if inp.fill_uffd.is_some() {
            assert!(self.closed, "the userfaultfd is never closed");
            let copyable = inp.loads.iter().any(|l| {
                inp.vmas
                    .iter()
                    .any(|v| copies_by_uffd(v) && v.start < l.vaddr + l.len && l.vaddr < v.end)
            });
            assert_eq!(self.copies > 0, copyable, "copies made: {}", self.copies);
        } else {
            assert_eq!(self.copies, 0);
        }
    }
}

struct Fixture {
    vmas: Vec<TargetVma>,
    loads: Vec<PageLoad>,
    loader_maps: Vec<Range>,
    loader_vdso: VdsoBlock,
    target_vdso: VdsoBlock,
    threads: Vec<ThreadInput<'static>>,
}

/// Every thread's (zeroed) XSAVE area in the fixtures.
static XSAVE: [u8; 832] = [0; 832];

fn vdso_at(base: u64) -> VdsoBlock {
    let mut b = VdsoBlock::default();
    b.push(Range {
        start: base,
        end: base + 4 * PAGE,
    });
    b.push(Range {
        start: base + 4 * PAGE,
        end: base + 6 * PAGE,
    });
    b.push(Range {
        start: base + 6 * PAGE,
        end: base + 8 * PAGE,
    });
    b
}

fn fixture(rng: &mut Rng) -> Fixture {
    let hi = 0x7fff_0000_0000;
    let target_vdso = vdso_at(0x7ffd_0000_0000);
    let mut vmas: Vec<TargetVma> = random_ranges(rng, 30, 0x40_0000, 0x7ffc_0000_0000)
        .into_iter()
        .map(|r| TargetVma {
            start: r.start,
            end: r.end,
            prot: (rng.below(8)) as u32,
            flags: if rng.below(4) == 0 {
                vma_flags::DONTDUMP
            } else {
                0
            },
            fd: if rng.below(3) == 0 { 7 } else { -1 },
            kind: vma_kind::ANON,
            pgoff: 0,
        })
        .collect();
    // The stack, with its frame room.
    let stack = TargetVma {
        start: 0x7ffe_0000_0000,
        end: 0x7ffe_0002_0000,
        prot: 3,
        flags: vma_flags::GROWSDOWN,
        kind: vma_kind::STACK,
        fd: -1,
        pgoff: 0,
    };
    vmas.push(stack);
    for (i, p) in target_vdso.parts().iter().enumerate() {
        let kind = [vma_kind::VVAR, vma_kind::VVAR_VCLOCK, vma_kind::VDSO][i];
        vmas.push(TargetVma {
            start: p.start,
            end: p.end,
            prot: 1,
            kind,
            fd: -1,
            ..Default::default()
        });
    }
    vmas.sort_by_key(|v| v.start);
    let mut loads = Vec::new();
    let mut off = 0x10000;
    for v in vmas.iter().filter(|v| !v.is_special()) {
        let pages = (v.end - v.start) / PAGE;
        let mut p = 0;
        while p < pages {
            let skip = rng.below(4);
            let len = 1 + rng.below(4);
            if p + skip + len > pages {
                break;
            }
            loads.push(PageLoad {
                vaddr: v.start + (p + skip) * PAGE,
                offset: off,
                len: len * PAGE,
                fd: 9,
                _pad: 0,
            });
            off += len * PAGE;
            p += skip + len;
        }
    }
    let loader_maps = random_ranges(rng, 8, 0x40_0000, hi);
    let loader_vdso = vdso_at(0x7fff_1000_0000);
    let regs = UserRegs {
        rsp: stack.end - 0x100,
        rip: 0x40_1000,
        ..Default::default()
    };
    let mut threads = std::vec![ThreadInput {
        record: ThreadRecord {
            tid: 100,
            ..Default::default()
        },
        regs,
        xsave: &XSAVE,
    }];
    // Other threads, each on its own (glibc-style) stack mapping; now
    // and then one whose rsp leaves no room for a frame on its stack.
    let others = rng.below(4);
    let odd_one = (rng.below(3) == 0).then(|| rng.below(others.max(1)));
    for k in 0..others {
        let start = 0x7ffc_8000_0000 + k * 0x10_0000;
        let v = TargetVma {
            start,
            end: start + 0x8_0000,
            prot: 3,
            kind: vma_kind::ANON,
            fd: -1,
            ..Default::default()
        };
        vmas.push(v);
        let rsp = if odd_one == Some(k) {
            // Right at the bottom: the frame would fall below the VMA.
            v.start + 0x200
        } else {
            v.end - 0x40 - 8 * rng.below(64)
        };
        threads.push(ThreadInput {
            record: ThreadRecord {
                tid: 101 + k as i32,
                ..Default::default()
            },
            regs: UserRegs {
                rsp,
                rip: 0x40_1100,
                fs_base: 0x1000 * (k + 1),
                ..Default::default()
            },
            xsave: &XSAVE,
        });
    }
    vmas.sort_by_key(|v| v.start);
    Fixture {
        vmas,
        loads,
        loader_maps,
        loader_vdso,
        target_vdso,
        threads,
    }
}

fn input<'a>(f: &'a Fixture, gadgets: bool) -> PlanInput<'a> {
    PlanInput {
        epoll_adds: &[],
        inotify_drains: &[],
        timerfd_arms: &[],
        image_fd: 9,
        fill_uffd: None,
        lazy: None,
        late_seals: &[],
        vmas: &f.vmas,
        loads: &f.loads,
        loader_maps: &f.loader_maps,
        loader_stack: None,
        loader_vdso: f.loader_vdso,
        target_vdso: f.target_vdso,
        mm: MmRecord::default(),
        auxv: &[6, 0, 0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        exe_fd: Some(11),
        sigactions: &[],
        rlimits: &[],
        personality: 0,
        umask: 0o22,
        cwd_fd: Some(12),
        fd_moves: &[
            FdMove {
                from: 13,
                to: 0,
                cloexec: 0,
            },
            FdMove {
                from: 14,
                to: 5,
                cloexec: 1,
            },
        ],
        keep_fds: &[1, 2],
        terminals: &[],
        err_fd: Some(20),
        barrier: None,
        threads: &f.threads,
        set_tids: true,
        xfeatures: 3,
        pid: 100,
        pending: &[],
        itimers: &[],
        posix_timers: &[],
        creds: None,
        no_new_privs: false,
        gadgets: gadgets.then_some(GadgetsRecord {
            syscall_ret: 0x40_2000,
            rt_sigreturn: 0x40_2010,
        }),
        mmap_min_addr: 0x10000,
        mdwe: 0,
        trampoline: crate::arch::trampoline_code(),
    }
}

/// The loader's own stack keeps its guard gap free, like the target's:
/// a window placed right below it would be refused by the kernel's
/// stack guard or break the loader's stack growth.
#[test]
fn the_window_keeps_clear_of_the_loaders_stack_guard_gap() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..50 {
        let f = fixture(&mut rng);
        let mut inp = input(&f, true);
        let n = f.vmas.len() + f.loader_maps.len() + 4;
        let free = choose_window(&inp, &mut std::vec![Range::default(); n]).unwrap();
        // A stack just above where the window would go.
        let stack = Range {
            start: free.end + 2 * PAGE,
            end: free.end + 2 * PAGE + 32 * PAGE,
        };
        inp.loader_stack = Some(stack);
        let w = choose_window(&inp, &mut std::vec![Range::default(); n]).unwrap();
        let guarded = Range {
            start: stack.start.saturating_sub(STACK_GUARD_GAP),
            end: stack.end,
        };
        assert!(!w.overlaps(&guarded), "window {w:x?} stack {stack:x?}");
        assert_ne!(w, free);
    }
}

#[test]
fn plans_rebuild_the_target_layout_exactly() {
    let mut rng = Rng(0xfeed_beef);
    for round in 0..200 {
        let f = fixture(&mut rng);
        let mut inp = input(&f, round % 2 == 0);
        // Every fourth round fills through a userfaultfd.
        if round % 4 < 2 {
            inp.fill_uffd = Some(UFFD);
        }
        let mut scratch = std::vec![Range::default(); f.vmas.len() + f.loader_maps.len() + 4];
        let window = choose_window(&inp, &mut scratch).unwrap();
        for r in f
            .vmas
            .iter()
            .map(|v| v.range())
            .chain(f.loader_maps.iter().copied())
            .chain(f.loader_vdso.parts().iter().copied())
        {
            assert!(!r.overlaps(&window), "window {window:x?} overlaps {r:x?}");
        }
        let mut buf = std::vec![0u8; window.len() as usize];
        let summary = build_plan(&inp, window, &mut buf).unwrap();
        let all_on_stack = f
            .threads
            .iter()
            .all(|t| frame_on_stack(&inp, t.regs.rsp, t.xsave.len()).is_some());
        assert_eq!(summary.window_left, round % 2 != 0 || !all_on_stack);
        check_threads(&f, &inp, window, &buf, &summary);

        // Run the ops on the model.
        let mut m = Model::default();
        for r in &f.loader_maps {
            m.map(r.start, r.len(), 5);
        }
        for r in f.loader_vdso.parts() {
            m.map(r.start, r.len(), 1);
        }
        m.map(window.start, window.len(), 7);
        let ops = window_ops(&buf);
        assert_eq!(ops.len(), summary.ops);
        let mut fill = FillModel::default();
        for op in ops {
            fill.apply(&mut m, &inp, op, &buf, window);
            m.apply(op);
        }
        fill.check_done(&inp);
        // Every target page mapped with its final protection.
        for v in f.vmas.iter().filter(|v| !v.is_special()) {
            for p in (v.start..v.end).step_by(PAGE as usize) {
                assert_eq!(
                    m.pages.get(&p),
                    Some(&u64::from(v.prot)),
                    "page {p:#x} of {v:x?}"
                );
            }
        }
        // The vDSO block sits where the target had it.
        for p in f.target_vdso.parts() {
            assert!(m.pages.contains_key(&p.start));
        }
        // Every stored page written exactly once, nothing else written.
        let mut expected = BTreeMap::new();
        for l in &f.loads {
            for p in (l.vaddr..l.vaddr + l.len).step_by(PAGE as usize) {
                expected.insert(p, 1u32);
            }
        }
        assert_eq!(m.written, expected);
        // Nothing else is left but the window (the gadgets unmap it).
        for &p in m.pages.keys() {
            let in_target = f.vmas.iter().any(|v| v.start <= p && p < v.end);
            let in_window = window.start <= p && p < window.end;
            assert!(in_target || in_window, "stray page {p:#x}");
        }
        // The last op leaves; failure labels name their op.
        let last = ops.last().unwrap();
        assert!(matches!(
            last.kind,
            op_kind::GADGET_EXIT | op_kind::GADGET_WAKE_EXIT | op_kind::SIGRETURN
        ));
        assert_eq!(op_label(&buf, &ops[0]), b"rt_sigprocmask block all");
    }
}

/// The other threads: each cloned once, in order, onto its own stack in
/// the window; every frame in its own place; the lists end right.
/// The plan's table of threads to create before the point of no return.
fn clones_of(buf: &[u8], window: Range, s: &PlanSummary) -> Vec<ThreadClone> {
    (0..s.nclones)
        .map(|k| {
            let off = (s.clones - window.start) as usize + k * 32;
            ThreadClone::read_from_prefix(&buf[off..]).unwrap().0
        })
        .collect()
}

fn check_threads(
    f: &Fixture,
    inp: &PlanInput<'_>,
    window: Range,
    buf: &[u8],
    summary: &PlanSummary,
) {
    let left = summary.window_left;
    let lay = WindowLayout::for_input(inp);
    let (h, _) = WindowHeader::read_from_prefix(buf).unwrap();
    let ops = window_ops(buf);
    let leader = &ops[..h.op_count as usize];
    let at = |addr: u64| (addr - window.start) as usize;
    let word = |addr: u64| u64::from_le_bytes(buf[at(addr)..at(addr) + 8].try_into().unwrap());
    let clones = clones_of(buf, window, summary);
    assert_eq!(clones.len(), f.threads.len() - 1);
    // No thread is cloned by the plan: they exist before it runs and
    // wait for the leader's word that the memory is back.
    let built = leader
        .iter()
        .filter(|o| o.kind == op_kind::STORE_WAKE)
        .collect::<Vec<_>>();
    if clones.is_empty() {
        assert!(built.is_empty());
    } else {
        assert_eq!(built.len(), 2, "built, then go");
    }
    // Parts of the window no thread stack may touch.
    let mut taken = std::vec![
        Range {
            start: window.start,
            end: window.start + lay.data_off + lay.data_len
        },
        Range {
            start: window.start + lay.stack_top_off - WINDOW_STACK,
            end: window.start + lay.stack_top_off,
        },
        Range {
            start: window.start + lay.park_off,
            end: window.end
        },
    ];
    let mut lists = std::vec![(h.ops, h.op_count)];
    for (k, c) in clones.iter().enumerate() {
        let t = &f.threads[k + 1];
        assert_eq!(c.tid, t.record.tid);
        assert_eq!(word(c.args), CLONE_THREAD_FLAGS);
        let (stack, size) = (word(c.args + 40), word(c.args + 48));
        let r = Range {
            start: stack,
            end: stack + size,
        };
        assert!(
            r.start >= window.start && r.end <= window.end,
            "stack {r:x?} outside {window:x?}"
        );
        assert!(size >= THREAD_STACK && stack % 16 == 0);
        for o in &taken {
            assert!(
                !o.overlaps(&r),
                "thread {} stack {r:x?} overlaps {o:x?}",
                t.record.tid
            );
        }
        taken.push(r);
        // set_tid: the recorded tid, one level.
        let set_tid = word(c.args + 64);
        assert_eq!(word(c.args + 72), 1);
        assert_eq!(
            buf[at(set_tid)..at(set_tid) + 4],
            t.record.tid.to_le_bytes()
        );
        lists.push((c.ops, c.count));
    }
    // Each list lies in the op array, disjoint from the others, and
    // ends in a jump into the thread's frame.
    let mut covered = 0;
    let mut frames: Vec<Range> = Vec::new();
    for (k, &(addr, count)) in lists.iter().enumerate() {
        let first = ((addr - h.ops) / layout::OP_SIZE as u64) as usize;
        assert_eq!(first, covered, "list {k} does not follow the previous one");
        covered += count as usize;
        let list = &ops[first..first + count as usize];
        let last = list.last().unwrap();
        let t = &f.threads[k];
        let expected = match (k, left) {
            (_, true) => op_kind::SIGRETURN,
            (0, false) => op_kind::GADGET_EXIT,
            (_, false) => op_kind::GADGET_WAKE_EXIT,
        };
        assert_eq!(last.kind, expected, "end of list {k}");
        if k > 0 {
            // First of all: wait until the leader has built the memory.
            assert_eq!(list[0].kind, op_kind::WAIT_EQ);
            assert_eq!(list[0].args[..2], built[0].args[..2]);
            assert!(
                list.iter()
                    .any(|o| o.kind == op_kind::WAIT_EQ && o.args[..2] == built[1].args[..2]),
                "list {k} never waits for go"
            );
            assert!(
                list.iter()
                    .any(|o| o.nr == nr::PERSONALITY && o.args[0] == u64::from(inp.personality)),
                "list {k} does not set its personality"
            );
            let fs = list
                .iter()
                .find(|o| o.nr == nr::ARCH_PRCTL && o.args[0] == ARCH_SET_FS)
                .unwrap();
            assert_eq!(fs.args[1], t.regs.fs_base);
        }
        // Its frame: on its own stack below the red zone, or in the
        // window's data.
        let frame = match list.iter().find(|o| o.kind == op_kind::MEMCPY) {
            Some(copy) => {
                let r = Range {
                    start: copy.args[0],
                    end: copy.args[0] + copy.args[2],
                };
                assert!(
                    r.end <= t.regs.rsp - frame::RED_ZONE,
                    "frame {r:x?} in the red zone"
                );
                let v = f
                    .vmas
                    .iter()
                    .find(|v| v.start <= r.start && r.start < v.end)
                    .unwrap();
                assert!(
                    r.end <= v.end && t.regs.rsp <= v.end,
                    "frame {r:x?} leaves {v:x?}"
                );
                r
            }
            None => {
                let uc = last.args[0];
                let r = Range {
                    start: uc - 8,
                    end: uc - 8 + frame::FRAME_SIZE,
                };
                let data = Range {
                    start: window.start + lay.data_off,
                    end: window.start + lay.data_off + lay.data_len,
                };
                assert!(
                    data.start <= r.start && r.end <= data.end,
                    "frame {r:x?} outside the data"
                );
                r
            }
        };
        for o in &frames {
            assert!(!o.overlaps(&frame), "frames {o:x?} and {frame:x?} overlap");
        }
        frames.push(frame);
    }
    assert_eq!(covered, ops.len());
    if f.threads.len() > 1 {
        // The leader lets them go, and waits for all to count out before
        // it unmaps the window.
        let wake = leader
            .iter()
            .rposition(|o| o.kind == op_kind::STORE_WAKE)
            .unwrap();
        let go = leader[wake].args[0];
        // They wait for `built` (first) and for `go`, nothing else.
        assert!(ops[h.op_count as usize..]
            .iter()
            .filter(|o| o.kind == op_kind::WAIT_EQ)
            .all(|o| o.args[0] == go || o.args[0] == built[0].args[0]));
        // The leader waits for every other thread to count out (the
        // window may go, and the error fd may close), then closes the
        // error fd; only its leave ops follow.
        let wait = &leader[leader.len() - 4];
        assert_eq!(wait.kind, op_kind::WAIT_EQ);
        assert_eq!(wait.args[1], 0);
        let count = &buf[at(wait.args[0])..at(wait.args[0]) + 4];
        assert_eq!(count, (f.threads.len() as u32 - 1).to_le_bytes());
        if !left {
            for o in ops.iter().filter(|o| o.kind == op_kind::GADGET_WAKE_EXIT) {
                assert_eq!(o.args[2], wait.args[0]);
                assert_eq!(o.args[3], FUTEX_OP_DECREMENT);
            }
        } else {
            let count_outs = ops
                .iter()
                .filter(|o| o.nr == nr::FUTEX && o.kind == op_kind::SYSCALL)
                .inspect(|o| {
                    assert_eq!(
                        o.args,
                        [
                            wait.args[0],
                            FUTEX_WAKE_OP_PRIVATE,
                            1,
                            0,
                            wait.args[0],
                            FUTEX_OP_DECREMENT
                        ]
                    )
                })
                .count();
            assert_eq!(count_outs, f.threads.len() - 1);
        }
    }
    // The loader's stderr (fd 20 here) survives the fd step and is
    // closed by the leader right before it leaves.
    let close = &leader[leader.len() - 3];
    assert_eq!((close.nr, close.args[0]), (nr::CLOSE, 20));
    for o in ops.iter().filter(|o| o.nr == nr::CLOSE_RANGE) {
        assert!(!(o.args[0]..=o.args[1]).contains(&20), "{o:?}");
    }
}

#[test]
fn per_thread_signals_go_to_the_new_tids() {
    let mut rng = Rng(5);
    let mut f = fixture(&mut rng);
    while f.threads.len() < 3 {
        f = fixture(&mut rng);
    }
    let mut info = [0u8; 128];
    info[0] = 10;
    let pending = [
        PendingSignalRecord {
            tid: 0,
            _pad: 0,
            siginfo: info,
        },
        PendingSignalRecord {
            tid: f.threads[2].record.tid,
            _pad: 0,
            siginfo: info,
        },
        PendingSignalRecord {
            tid: f.threads[0].record.tid,
            _pad: 0,
            siginfo: info,
        },
    ];
    for set_tids in [true, false] {
        // Either way the plan reads the tid clone3 wrote.
        let mut inp = input(&f, true);
        inp.pending = &pending;
        inp.set_tids = set_tids;
        let mut scratch = std::vec![Range::default(); 64];
        let window = choose_window(&inp, &mut scratch).unwrap();
        let mut buf = std::vec![0u8; window.len() as usize];
        let summary = build_plan(&inp, window, &mut buf).unwrap();
        let ops = window_ops(&buf);
        let header = WindowHeader::read_from_prefix(&buf).unwrap().0;
        let leader = &ops[..header.op_count as usize];
        let is_queue = |o: &&Op| matches!(o.nr, nr::RT_SIGQUEUEINFO | nr::RT_TGSIGQUEUEINFO);
        let clones = clones_of(&buf, window, &summary);
        let at = |addr: u64| (addr - window.start) as usize;
        let parent_tid = |k: usize| {
            let a = at(clones[k].args + 24);
            u64::from_le_bytes(buf[a..a + 8].try_into().unwrap())
        };
        let list = |k: usize| {
            let first = (clones[k].ops - header.ops) as usize / layout::OP_SIZE;
            &ops[first..first + clones[k].count as usize]
        };

        // The leader queues the process-wide signal and its own.
        let queued: Vec<&Op> = leader.iter().filter(is_queue).collect();
        assert_eq!(queued.len(), 2);
        assert_eq!(queued[0].nr, nr::RT_SIGQUEUEINFO);
        assert_eq!(queued[1].rule, rule::OK);
        assert_eq!(queued[1].args[..2], [100, 100]);
        assert!(!list(0).iter().any(|o| is_queue(&o)));

        // Thread 2 queues its own, to its own tid, before it waits for go.
        let own = list(1);
        let q = own.iter().position(|o| is_queue(&o)).unwrap();
        let wait = own
            .iter()
            .rposition(|o| o.kind == op_kind::WAIT_EQ)
            .unwrap();
        assert!(q < wait);
        assert_eq!(own.iter().filter(is_queue).count(), 1);
        assert_eq!(own[q].nr, nr::RT_TGSIGQUEUEINFO);
        assert_eq!(own[q].args[0], 100);
        // Its tid is read from where clone3 wrote it: the recorded one
        // with set_tid, or a new one if that was taken (or without).
        assert_eq!(own[q].rule, rule::OK | rule::LOAD_ARG1);
        assert_eq!(own[q].args[1], parent_tid(1));
    }
}

#[test]
fn refuses_pages_outside_vmas_and_mismatched_vdso() {
    let mut rng = Rng(7);
    let mut f = fixture(&mut rng);
    f.loads.push(PageLoad {
        vaddr: 0x1000_0000_0000 - PAGE,
        offset: 0,
        len: PAGE,
        fd: 9,
        _pad: 0,
    });
    let inp = input(&f, true);
    let mut buf = std::vec![0u8; WindowLayout::for_input(&inp).size as usize];
    let w = Range {
        start: 0x10000,
        end: 0x10000 + buf.len() as u64,
    };
    assert!(matches!(
        build_plan(&inp, w, &mut buf),
        Err(PlanError::LoadOutsideVmas { .. })
    ));
    f.loads.pop();
    f.target_vdso.parts[2].end += PAGE;
    let inp = input(&f, true);
    assert_eq!(build_plan(&inp, w, &mut buf), Err(PlanError::VdsoMismatch));
}

#[test]
fn dry_run_prints_every_op() {
    let mut rng = Rng(99);
    let f = fixture(&mut rng);
    let inp = input(&f, true);
    let mut scratch = std::vec![Range::default(); 64];
    let window = choose_window(&inp, &mut scratch).unwrap();
    let mut buf = std::vec![0u8; window.len() as usize];
    let s = build_plan(&inp, window, &mut buf).unwrap();
    let mut text = std::string::String::new();
    write_plan(&buf, &mut text).unwrap();
    assert_eq!(text.lines().count(), s.ops);
    let leaves = if s.window_left {
        "rt_sigreturn"
    } else {
        "gadget-exit"
    };
    assert!(
        text.contains("prctl") && text.contains("pread-all") && text.contains(leaves),
        "{text}"
    );
    // The other threads are created before the plan runs; each has
    // its own op list, printed after the leader's.
    assert_eq!(s.nclones, f.threads.len() - 1);
    assert_eq!(
        text.lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("personality"))
            .count(),
        f.threads.len(),
        "{text}"
    );
}

/// no_new_privs is set in every thread, after its credentials, and only
/// when the image had it.
#[test]
fn no_new_privs_comes_after_each_threads_credentials() {
    let mut rng = Rng(7);
    let f = fixture(&mut rng);
    for nnp in [false, true] {
        let mut inp = input(&f, true);
        inp.no_new_privs = nnp;
        let mut creds = <CredsRecord as zerocopy::FromZeros>::new_zeroed();
        creds.uid = [1000; 4];
        creds.gid = [1000; 4];
        inp.creds = Some(creds);
        let mut scratch = std::vec![Range::default(); 64];
        let window = choose_window(&inp, &mut scratch).unwrap();
        let mut buf = std::vec![0u8; window.len() as usize];
        build_plan(&inp, window, &mut buf).unwrap();
        let ops = window_ops(&buf);
        let labels: Vec<std::string::String> = ops
            .iter()
            .map(|op| std::string::String::from_utf8_lossy(op_label(&buf, op)).into_owned())
            .collect();
        let nnp_at: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i].starts_with("prctl PR_SET_NO_NEW_PRIVS"))
            .collect();
        let uid_at: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i].starts_with("setresuid"))
            .collect();
        assert_eq!(uid_at.len(), f.threads.len());
        if !nnp {
            assert!(nnp_at.is_empty());
            continue;
        }
        assert_eq!(nnp_at.len(), f.threads.len(), "{labels:?}");
        for (n, u) in nnp_at.iter().zip(&uid_at) {
            assert_eq!(*n, u + 1, "{labels:?}");
            assert_eq!(ops[*n].args[0], PR_SET_NO_NEW_PRIVS);
        }
    }
}

/// With AMX tile data in the restore mask every thread first uses it
/// (an XRSTOR of its init state from a zeroed, aligned area) right
/// before it loads its frame; without it, no thread does.
#[test]
fn every_thread_first_uses_dynamic_features_before_its_frame() {
    let mut rng = Rng(11);
    let f = fixture(&mut rng);
    for xfeatures in [0x207u64, 0x6_0207] {
        let mut inp = input(&f, true);
        inp.xfeatures = xfeatures;
        let mut scratch = std::vec![Range::default(); 64];
        let window = choose_window(&inp, &mut scratch).unwrap();
        let mut buf = std::vec![0u8; window.len() as usize];
        let summary = build_plan(&inp, window, &mut buf).unwrap();
        let ops = window_ops(&buf);
        let header = WindowHeader::read_from_prefix(&buf).unwrap().0;
        let mut lists = std::vec![&ops[..header.op_count as usize]];
        for c in clones_of(&buf, window, &summary) {
            let first = (c.ops - header.ops) as usize / layout::OP_SIZE;
            lists.push(&ops[first..first + c.count as usize]);
        }
        assert_eq!(lists.len(), f.threads.len());
        for list in lists {
            let uses: Vec<usize> = (0..list.len())
                .filter(|&i| list[i].kind == op_kind::XRSTOR_FIRST_USE)
                .collect();
            if xfeatures & XFEATURE_MASK_USER_DYNAMIC == 0 {
                assert!(uses.is_empty());
                continue;
            }
            assert_eq!(uses.len(), 1);
            let op = &list[uses[0]];
            assert_eq!(op.args[1], XFEATURE_MASK_USER_DYNAMIC);
            assert_eq!(op.args[0] % 64, 0);
            let at = (op.args[0] - window.start) as usize;
            assert!(buf[at..at + FIRST_USE_AREA].iter().all(|&b| b == 0));
            // After it only the frame copy and the jump.
            assert!(list[uses[0] + 1..].iter().all(|o| matches!(
                o.kind,
                op_kind::MEMCPY
                    | op_kind::SIGRETURN
                    | op_kind::GADGET_EXIT
                    | op_kind::GADGET_WAKE_EXIT
            )));
        }
    }
}

#[test]
fn area_flags_and_mdwe_reach_the_plan() {
    let mut rng = Rng(11);
    let mut f = fixture(&mut rng);
    let ordinary = |v: &TargetVma| !v.is_special() && v.fd < 0 && v.kind == vma_kind::ANON;
    let mut picked = f.vmas.iter_mut().filter(|v| ordinary(v));
    let reserved = picked.next().expect("an anonymous area");
    reserved.flags |= vma_flags::NORESERVE | vma_flags::LOCKED;
    let reserved = reserved.start;
    let accounted = picked.next().expect("a second anonymous area");
    accounted.flags |= vma_flags::ACCOUNT;
    accounted.prot = prot::READ;
    let accounted = accounted.start;
    let mut inp = input(&f, true);
    inp.mdwe = 1;
    let mut scratch = std::vec![Range::default(); 64];
    let window = choose_window(&inp, &mut scratch).unwrap();
    let mut buf = std::vec![0u8; window.len() as usize];
    build_plan(&inp, window, &mut buf).unwrap();
    let ops = window_ops(&buf);
    let mmap_of = |start| {
        ops.iter()
            .find(|op| op.nr == nr::MMAP && op.args[0] == start)
            .expect("an mmap of the area")
    };
    assert_ne!(mmap_of(reserved).args[3] & mm_state::MAP_NORESERVE, 0);
    assert!(ops
        .iter()
        .any(|op| op.nr == mm_state::NR_MLOCK && op.args[0] == reserved));
    // Accounted once, so mapped writable first and then made read-only.
    assert_ne!(mmap_of(accounted).args[2] & sys::PROT_WRITE, 0);
    assert!(ops.iter().any(|op| op.nr == nr::MPROTECT
        && op.args[0] == accounted
        && op.args[2] == u64::from(prot::READ)));
    let mdwe = ops
        .iter()
        .position(|op| op.nr == nr::PRCTL && op.args[0] == mm_state::PR_SET_MDWE)
        .expect("a PR_SET_MDWE op");
    assert_eq!(ops[mdwe].args[1], 1);
    let last_area_op = ops
        .iter()
        .rposition(|op| matches!(op.nr, nr::MMAP | nr::MPROTECT))
        .unwrap();
    assert!(
        mdwe > last_area_op,
        "PR_SET_MDWE at op {mdwe}, area op at {last_area_op}"
    );
}

#[test]
fn read_only_shared_file_mappings_stay_shared_unless_filled() {
    let v = TargetVma {
        start: 0x10000,
        end: 0x20000,
        prot: prot::READ,
        flags: vma_flags::MAYSHARE,
        kind: vma_kind::FILE,
        fd: 5,
        ..Default::default()
    };
    assert!(maps_read_only_shared(&v, false));
    assert!(!maps_read_only_shared(&v, true));
    assert!(!maps_read_only_shared(&TargetVma { fd: -1, ..v }, false));
    assert!(!maps_read_only_shared(
        &TargetVma {
            flags: vma_flags::MAYSHARE | vma_flags::SHARED,
            ..v
        },
        false
    ));
}

/// The POSIX timers: created between the restore-ids prctl's on and off,
/// each with its own id, clock and sigevent (a thread's timer naming the
/// tid the thread has now), and armed after the interval timers.
#[test]
fn posix_timers_are_created_with_their_ids_and_armed_after_the_itimers() {
    use crate::posix_timers::{PR_TIMER_CREATE_RESTORE_IDS, SIGEVENT_TID};
    use image_format::records::{sigev_notify, PosixTimerRecord, TimerSpec};
    let mut rng = Rng(11);
    let mut f = fixture(&mut rng);
    while f.threads.len() < 3 {
        f = fixture(&mut rng);
    }
    let to_thread = sigev_notify::SIGNAL | sigev_notify::THREAD_ID;
    let spec = |sec, nsec| TimerSpec { sec, nsec };
    let timers = [
        // A periodic process signal, armed.
        PosixTimerRecord {
            id: 7,
            clock: 1,
            signo: 35,
            notify: sigev_notify::SIGNAL,
            value: 0x1234,
            interval: spec(0, 20_000_000),
            left: spec(0, 5_000_000),
            ..PosixTimerRecord::default()
        },
        // To the leader, disarmed.
        PosixTimerRecord {
            id: 3,
            clock: 0,
            signo: 10,
            notify: to_thread,
            tid: f.threads[0].record.tid,
            ..PosixTimerRecord::default()
        },
        // To the third thread, armed.
        PosixTimerRecord {
            id: 12,
            clock: 7,
            signo: 36,
            notify: to_thread,
            tid: f.threads[2].record.tid,
            value: 0xfeed_face_cafe,
            interval: spec(1, 0),
            left: spec(3600, 1),
            ..PosixTimerRecord::default()
        },
    ];
    let itimers = [ItimerRecord {
        which: 0,
        _pad: 0,
        interval: image_format::elf::Timeval { sec: 1, usec: 0 },
        value: image_format::elf::Timeval { sec: 1, usec: 0 },
    }];
    let mut inp = input(&f, true);
    inp.posix_timers = &timers;
    inp.itimers = &itimers;
    let mut scratch = std::vec![Range::default(); 64];
    let window = choose_window(&inp, &mut scratch).unwrap();
    let mut buf = std::vec![0u8; window.len() as usize];
    let summary = build_plan(&inp, window, &mut buf).unwrap();
    let ops = window_ops(&buf);
    let header = WindowHeader::read_from_prefix(&buf).unwrap().0;
    let leader = &ops[..header.op_count as usize];
    let at = |addr: u64| (addr - window.start) as usize;
    let word = |addr: u64| u32::from_le_bytes(buf[at(addr)..at(addr) + 4].try_into().unwrap());
    let prctl = |arg: u64| {
        leader
            .iter()
            .position(|o| o.nr == nr::PRCTL && o.args[..2] == [PR_TIMER_CREATE_RESTORE_IDS, arg])
            .unwrap()
    };
    let (on, off) = (prctl(1), prctl(0));
    let creates: Vec<usize> = (0..leader.len())
        .filter(|&i| leader[i].nr == sys::nr::TIMER_CREATE)
        .collect();
    assert_eq!(creates.len(), 3);
    assert!(creates.iter().all(|&i| on < i && i < off));
    for (&i, t) in creates.iter().zip(&timers) {
        let o = &leader[i];
        assert_eq!(o.rule, rule::OK);
        assert_eq!(o.args[0], abi::int_arg(t.clock));
        // The id wanted at the third argument, the sigevent at the second.
        assert_eq!(word(o.args[2]), t.id as u32);
        let ev = o.args[1];
        let value = u64::from_le_bytes(buf[at(ev)..at(ev) + 8].try_into().unwrap());
        assert_eq!(value, t.value);
        assert_eq!((word(ev + 8), word(ev + 12)), (t.signo, t.notify));
    }
    // The leader's timer names the loader's pid (the leader's tid now).
    assert_eq!(word(leader[creates[1]].args[1] + SIGEVENT_TID as u64), 100);
    // The other thread's: copied from where clone3 wrote its tid, right
    // before its timer_create.
    let copy = &leader[creates[2] - 1];
    let clones = clones_of(&buf, window, &summary);
    let parent_tid = {
        let a = at(clones[1].args + 24);
        u64::from_le_bytes(buf[a..a + 8].try_into().unwrap())
    };
    assert_eq!(copy.kind, op_kind::MEMCPY);
    assert_eq!(
        copy.args[..3],
        [
            leader[creates[2]].args[1] + SIGEVENT_TID as u64,
            parent_tid,
            4
        ]
    );
    // Armed: only those with time left, after the itimers, with their
    // interval and time left, before the other threads are let go.
    let setitimer = leader
        .iter()
        .position(|o| o.nr == sys::nr::SETITIMER)
        .unwrap();
    let armed: Vec<usize> = (0..leader.len())
        .filter(|&i| leader[i].nr == sys::nr::TIMER_SETTIME)
        .collect();
    assert_eq!(armed.len(), 2);
    assert!(armed.iter().all(|&i| i > setitimer && i > off));
    let go = leader
        .iter()
        .rposition(|o| o.kind == op_kind::STORE_WAKE)
        .unwrap();
    assert!(armed.iter().all(|&i| i < go));
    for (&i, t) in armed.iter().zip([&timers[0], &timers[2]]) {
        let o = &leader[i];
        assert_eq!((o.args[0], o.args[1], o.args[3]), (t.id as u64, 0, 0));
        let a = at(o.args[2]);
        let got: Vec<i64> = (0..4)
            .map(|k| i64::from_le_bytes(buf[a + 8 * k..a + 8 * k + 8].try_into().unwrap()))
            .collect();
        assert_eq!(
            got,
            [t.interval.sec, t.interval.nsec, t.left.sec, t.left.nsec]
        );
    }
    // A timer for a thread the input lacks is refused, not guessed.
    let mut lost = timers;
    lost[2].tid = 99_999;
    inp.posix_timers = &lost;
    let mut buf = std::vec![0u8; window.len() as usize];
    assert_eq!(
        build_plan(&inp, window, &mut buf),
        Err(PlanError::TimerThread {
            id: 12,
            tid: 99_999
        })
    );
}

/// A late seal (`F_SEAL_FUTURE_WRITE`) is added after every area is
/// mapped, filled and given its protections, before the vDSO moves.
#[test]
fn late_seals_come_after_the_areas_are_filled() {
    use super::LateSeal;
    let mut rng = Rng(3);
    let f = fixture(&mut rng);
    let seals = [LateSeal {
        fd: 33,
        seals: 0x10,
    }];
    let mut inp = input(&f, true);
    inp.late_seals = &seals;
    let mut scratch = std::vec![Range::default(); 64];
    let window = choose_window(&inp, &mut scratch).unwrap();
    let mut buf = std::vec![0u8; window.len() as usize];
    build_plan(&inp, window, &mut buf).unwrap();
    let ops = window_ops(&buf);
    let seal = ops
        .iter()
        .position(|o| o.nr == nr::FCNTL && o.args[..3] == [33, 1033, 0x10])
        .expect("an F_ADD_SEALS op");
    let last = |n: u64| ops.iter().rposition(|o| o.nr == n).unwrap_or(0);
    assert!(seal > last(nr::MMAP) && seal > last(nr::PREAD64));
    if let Some(m) = ops.iter().rposition(|o| o.nr == nr::MPROTECT) {
        assert!(seal > m || ops[m].args[0] >= window.start, "{seal} {m}");
    }
}

/// A tree restore's barrier: after the memory, the threads and the
/// pending signals, before every timer and the credentials; its fds kept
/// through the close_ranges and closed right after it. A placed fd's
/// close-on-exec is an `F_SETFD`, not a dup3 onto itself.
#[test]
fn the_barrier_waits_before_timers_and_credentials_with_its_fds_kept() {
    use crate::args::Barrier;
    use image_format::records::{sigev_notify, PosixTimerRecord, TimerSpec};
    let mut rng = Rng(21);
    let mut f = fixture(&mut rng);
    while f.threads.len() < 2 {
        f = fixture(&mut rng);
    }
    let mut info = [0u8; 128];
    info[0] = 10;
    let pending = [PendingSignalRecord {
        tid: 0,
        _pad: 0,
        siginfo: info,
    }];
    let itimers = [ItimerRecord {
        which: 0,
        _pad: 0,
        interval: image_format::elf::Timeval { sec: 1, usec: 0 },
        value: image_format::elf::Timeval { sec: 1, usec: 0 },
    }];
    let timers = [PosixTimerRecord {
        id: 7,
        clock: 1,
        signo: 35,
        notify: sigev_notify::SIGNAL,
        left: TimerSpec { sec: 1, nsec: 0 },
        ..PosixTimerRecord::default()
    }];
    let moves = [
        FdMove {
            from: 13,
            to: 0,
            cloexec: 0,
        },
        FdMove {
            from: 7,
            to: 7,
            cloexec: 1,
        },
    ];
    let mut creds = <CredsRecord as zerocopy::FromZeros>::new_zeroed();
    creds.uid = [1000; 4];
    creds.gid = [1000; 4];
    let plan = |barrier: Option<Barrier>| {
        let mut inp = input(&f, true);
        inp.pending = &pending;
        inp.itimers = &itimers;
        inp.posix_timers = &timers;
        inp.creds = Some(creds);
        inp.fd_moves = &moves;
        inp.keep_fds = &[1, 2, 7];
        inp.barrier = barrier;
        let mut scratch = std::vec![Range::default(); 64];
        let window = choose_window(&inp, &mut scratch).unwrap();
        let mut buf = std::vec![0u8; window.len() as usize];
        build_plan(&inp, window, &mut buf).unwrap();
        let header = WindowHeader::read_from_prefix(&buf).unwrap().0;
        let leader: Vec<Op> = window_ops(&buf)[..header.op_count as usize].to_vec();
        let labels: Vec<std::string::String> = leader
            .iter()
            .map(|op| std::string::String::from_utf8_lossy(op_label(&buf, op)).into_owned())
            .collect();
        let byte_at = |addr: u64| buf[(addr - window.start) as usize];
        let written = leader
            .iter()
            .find(|o| o.kind == op_kind::SYSCALL && o.nr == nr::WRITE)
            .map(|o| byte_at(o.args[1]));
        (leader, labels, written)
    };
    let (ops, labels, written) = plan(Some(Barrier { ready: 60, go: 61 }));
    let at = |what: &dyn Fn(&Op) -> bool| ops.iter().position(what).unwrap();
    let write = at(&|o| o.kind == op_kind::SYSCALL && o.nr == nr::WRITE);
    assert_eq!(ops[write].args[..3], [60, ops[write].args[1], 1]);
    assert_eq!((ops[write].rule, ops[write].expect), (rule::EQ, 1));
    assert_eq!(written, Some(1));
    // Then the read of exactly one byte from G, then both closed.
    let read = &ops[write + 1];
    assert_eq!((read.nr, read.args[0], read.args[2]), (nr::READ, 61, 1));
    assert_eq!((read.rule, read.expect), (rule::EQ, 1));
    assert!(labels[write + 1].contains("read the barrier's go byte from fd 61"));
    assert_eq!((ops[write + 2].nr, ops[write + 2].args[0]), (nr::CLOSE, 60));
    assert_eq!((ops[write + 3].nr, ops[write + 3].args[0]), (nr::CLOSE, 61));
    // After the memory, the fds, the threads' go-ahead to build and the
    // pending signals; before the timers and the credentials.
    let last = |what: &dyn Fn(&Op) -> bool| ops.iter().rposition(what).unwrap();
    assert!(write > last(&|o| o.nr == nr::RT_SIGQUEUEINFO));
    assert!(write > last(&|o| o.nr == nr::CLOSE_RANGE));
    assert!(write > last(&|o| o.nr == nr::PREAD64 || o.kind == op_kind::PREAD_ALL));
    assert!(write > last(&|o| o.nr == nr::MMAP));
    assert!(write < at(&|o| o.nr == nr::SETITIMER));
    assert!(write < at(&|o| o.nr == nr::TIMER_CREATE));
    assert!(write < at(&|o| o.nr == nr::SETRESUID));
    // No close_range closes R or G; the placed fd 7 is kept too.
    for o in ops.iter().filter(|o| o.nr == nr::CLOSE_RANGE) {
        for fd in [7, 60, 61] {
            assert!(!(o.args[0]..=o.args[1]).contains(&fd), "{:?}", o.args);
        }
    }
    let setfd = at(&|o| o.nr == nr::FCNTL);
    assert_eq!(ops[setfd].args[..3], [7, 2, 1]);
    assert!(!ops.iter().any(|o| o.nr == nr::DUP3 && o.args[0] == 7));

    // Without a barrier: none of it, and R and G are closed like any fd.
    let (ops2, _, written) = plan(None);
    assert_eq!(written, None);
    // The four barrier ops, and the close_range split around R and G.
    assert_eq!(ops2.len() + 5, ops.len());
    assert!(!ops2
        .iter()
        .any(|o| o.kind == op_kind::SYSCALL && matches!(o.nr, nr::READ | nr::WRITE)));
    assert!(ops2
        .iter()
        .filter(|o| o.nr == nr::CLOSE_RANGE)
        .any(|o| (o.args[0]..=o.args[1]).contains(&60)));
}

/// THP advice is given right after an area's `mmap`, before any page is
/// read into it (the fill's first write into each 2 MiB range then faults
/// in a huge page), and not again after the fill; other advice still
/// comes once the pages are in.
#[test]
fn thp_advice_comes_before_the_fill() {
    let mut rng = Rng(17);
    let mut f = fixture(&mut rng);
    let filled = |v: &TargetVma, loads: &[PageLoad]| {
        loads
            .iter()
            .any(|l| l.vaddr < v.end && v.start < l.vaddr + l.len)
    };
    let loads = f.loads.clone();
    let mut picked = f
        .vmas
        .iter_mut()
        .filter(|v| !v.is_special() && v.fd < 0 && filled(v, &loads));
    let huge = picked.next().expect("an anonymous area with pages");
    huge.flags |= vma_flags::HUGEPAGE | vma_flags::DONTFORK;
    let huge = huge.range();
    let nohuge = picked.next().map(|v| {
        v.flags |= vma_flags::NOHUGEPAGE;
        v.range()
    });
    let inp = input(&f, true);
    let mut scratch = std::vec![Range::default(); 64];
    let window = choose_window(&inp, &mut scratch).unwrap();
    let mut buf = std::vec![0u8; window.len() as usize];
    build_plan(&inp, window, &mut buf).unwrap();
    let ops = window_ops(&buf);
    let in_area = |op: &Op, r: Range| op.args[1] < r.end && r.start < op.args[1] + op.args[2];
    for (r, advice) in [(Some(huge), mm_state::MADV_HUGEPAGE)]
        .into_iter()
        .chain([(nohuge, mm_state::MADV_NOHUGEPAGE)])
    {
        let Some(r) = r else { continue };
        let advised: Vec<usize> = ops
            .iter()
            .enumerate()
            .filter(|(_, o)| o.nr == nr::MADVISE && o.args[0] == r.start && o.args[2] == advice)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(advised.len(), 1, "one THP advice for {r:?}: {advised:?}");
        let mmap = ops
            .iter()
            .position(|o| o.nr == nr::MMAP && o.args[0] == r.start)
            .unwrap();
        let first_read = ops
            .iter()
            .position(|o| o.kind == op_kind::PREAD_ALL && in_area(o, r))
            .expect("a pread into the area");
        assert!(
            mmap < advised[0] && advised[0] < first_read,
            "mmap at op {mmap}, advice at {}, first pread at {first_read}",
            advised[0]
        );
    }
    let dontfork = ops
        .iter()
        .position(|o| o.nr == nr::MADVISE && o.args[0] == huge.start && o.args[2] == 10)
        .expect("MADV_DONTFORK");
    let last_read = ops
        .iter()
        .rposition(|o| o.kind == op_kind::PREAD_ALL && in_area(o, huge))
        .unwrap();
    assert!(dontfork > last_read);
}

/// Stage 1 makes a userfaultfd only when enough is copied to pay for it:
/// a few pages, or pages only in areas a copy cannot fill (a file's, a
/// `MADV_HUGEPAGE` area's), go by `pread`.
#[test]
fn a_userfaultfd_is_made_only_for_large_anonymous_fills() {
    let anon = TargetVma {
        start: 0x1000_0000,
        end: 0x2000_0000,
        prot: prot::READ | prot::WRITE,
        kind: vma_kind::ANON,
        fd: -1,
        ..Default::default()
    };
    let load = |len| PageLoad {
        vaddr: anon.start,
        offset: 0x4000,
        len,
        fd: 9,
        _pad: 0,
    };
    assert!(!wants_fill_copies(&[anon], &[load(16 * PAGE)]));
    assert!(wants_fill_copies(&[anon], &[load(64 << 20)]));
    let huge = TargetVma {
        flags: vma_flags::HUGEPAGE,
        ..anon
    };
    assert!(!wants_fill_copies(&[huge], &[load(64 << 20)]));
    let file = TargetVma {
        kind: vma_kind::FILE,
        fd: 5,
        ..anon
    };
    assert!(!wants_fill_copies(&[file], &[load(64 << 20)]));
}
