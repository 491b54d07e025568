//! Will the kernel let the plan build the task's memory? The limits that
//! `mmap` and `mlock` apply, checked in stage 1 against every area the plan
//! maps, so that an image this machine cannot hold is refused with one line
//! before anything changes instead of failing with ENOMEM after the point of
//! no return.
//!
//! The rules are the kernel's (`mm/mmap.c`, `mm/util.c`, `mm/mlock.c`):
//! - `may_expand_vm`: the total mapped size against `RLIMIT_AS`, and the
//!   private writable non-stack areas ("data") against `RLIMIT_DATA`;
//! - `accountable_mapping` + `__vm_enough_memory`: a private area mapped
//!   writable without `VM_NORESERVE`, and shared anonymous memory (shmem)
//!   without it, is charged to the commit count. `vm.overcommit_memory` 0
//!   refuses one charge larger than RAM + swap, 1 allows all, 2 refuses
//!   when `Committed_AS` would reach `CommitLimit` (less the admin reserve
//!   without `CAP_SYS_ADMIN`, and the user reserve). `MAP_NORESERVE` is
//!   ignored in mode 2;
//! - `mlock`: the locked areas against `RLIMIT_MEMLOCK`, unless
//!   `CAP_IPC_LOCK`.
//!
//! The plan maps every area before it lowers any protection, and an area
//! that receives stored pages is mapped writable, so the peak is what is
//! checked. The limits in force are this process's: the image's rlimits are
//! set only after the areas exist.

use core::fmt;

use image_format::records::{prot, vma_flags, vma_kind};

use crate::mm_state;
use crate::plan::{PageLoad, Range, TargetVma};

const PAGE: u64 = 4096;
/// Areas of the bootstrap window (one mapping; more if a kernel splits it)
/// and of the vDSO block, for the `vm.max_map_count` check.
const WINDOW_AREAS: u64 = 2;
const VDSO_AREAS: u64 = 3;
const RLIM_INFINITY: u64 = u64::MAX;

/// What the kernel's limits are for this process and machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryFacts {
    /// `vm.overcommit_memory`; `None` when it could not be read (the
    /// commit checks are then skipped).
    pub overcommit: Option<u32>,
    pub commit_limit_kb: u64,
    pub committed_kb: u64,
    pub mem_total_kb: u64,
    pub swap_total_kb: u64,
    pub admin_reserve_kb: u64,
    pub user_reserve_kb: u64,
    /// Soft limits in bytes (`RLIM_INFINITY`: none).
    pub rlimit_as: u64,
    pub rlimit_data: u64,
    pub rlimit_memlock: u64,
    pub cap_sys_admin: bool,
    pub cap_ipc_lock: bool,
    /// `vm.max_map_count`; `None` when it could not be read.
    pub max_map_count: Option<u64>,
}

/// The limit the task's memory does not fit in; sizes in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitError {
    AddressSpace {
        need: u64,
        limit: u64,
    },
    Data {
        need: u64,
        limit: u64,
    },
    /// `vm.overcommit_memory` 0: one area is larger than RAM + swap.
    Heuristic {
        start: u64,
        len: u64,
        most: u64,
    },
    /// `vm.overcommit_memory` 2.
    Strict {
        need: u64,
        room: u64,
    },
    Memlock {
        need: u64,
        limit: u64,
    },
    /// More areas than `vm.max_map_count`.
    MapCount {
        need: u64,
        limit: u64,
    },
}

impl fmt::Display for LimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const K: u64 = 1024;
        match *self {
            LimitError::MapCount { need, limit } => write!(
                f,
                "the task's memory needs {need} areas while it is restored, more than this machine's vm.max_map_count ({limit})"
            ),
            LimitError::AddressSpace { need, limit } => write!(
                f,
                "the task's memory areas take {} KiB of address space, more than this process's RLIMIT_AS ({} KiB)",
                need / K,
                limit / K
            ),
            LimitError::Data { need, limit } => write!(
                f,
                "the task's private writable memory takes {} KiB, more than this process's RLIMIT_DATA ({} KiB)",
                need / K,
                limit / K
            ),
            LimitError::Heuristic { start, len, most } => write!(
                f,
                "the task's memory area at {start:#x} ({} KiB, charged to the commit count) is larger than this machine's RAM and swap ({} KiB); vm.overcommit_memory 0 refuses it",
                len / K,
                most / K
            ),
            LimitError::Strict { need, room } => write!(
                f,
                "the task's memory needs {} KiB of commit charge, this machine has {} KiB left (vm.overcommit_memory 2, CommitLimit - Committed_AS)",
                need / K,
                room / K
            ),
            LimitError::Memlock { need, limit } => write!(
                f,
                "the task had {} KiB locked (mlock), more than this process's RLIMIT_MEMLOCK ({} KiB), and CAP_IPC_LOCK is missing",
                need / K,
                limit / K
            ),
        }
    }
}

/// How the plan maps `v`, as far as the limits care.
struct Mapped {
    len: u64,
    /// Mapped with `PROT_WRITE` at some point before the final `mprotect`.
    writable: bool,
    shared: bool,
    /// Shared anonymous memory: shmem charges its whole size, whatever the
    /// protections (a shared file mapping is charged nothing).
    shmem: bool,
    stack: bool,
}

/// Some stored pages lie in `v`. `sorted`: the loads are in address order
/// without overlaps (as the writer makes them), so a binary search does.
fn gets_pages(v: &TargetVma, loads: &[PageLoad], sorted: bool) -> bool {
    let overlaps = |l: &PageLoad| {
        (Range {
            start: l.vaddr,
            end: l.vaddr.saturating_add(l.len),
        })
        .overlaps(&v.range())
    };
    if sorted {
        let i = loads.partition_point(|l| l.vaddr.saturating_add(l.len) <= v.start);
        loads.get(i).is_some_and(overlaps)
    } else {
        loads.iter().any(overlaps)
    }
}

fn mapped(v: &TargetVma, loads: &[PageLoad], sorted: bool, kept_apart: bool) -> Mapped {
    let gets_pages = gets_pages(v, loads, sorted) || kept_apart;
    Mapped {
        len: v.end - v.start,
        writable: v.prot & prot::WRITE != 0 || gets_pages || mm_state::write_first(v),
        shared: v.kind == vma_kind::SHARED_ANON
            || (v.fd >= 0 && v.flags & (vma_flags::SHARED | vma_flags::MAYSHARE) != 0),
        shmem: v.kind == vma_kind::SHARED_ANON,
        stack: v.kind == vma_kind::STACK || v.flags & vma_flags::GROWSDOWN != 0,
    }
}

/// Check the plan's areas (`vmas`, special ones skipped) and its
/// `window_bytes` window (private writable anonymous memory) against
/// `facts`.
pub fn check(
    vmas: &[TargetVma],
    loads: &[PageLoad],
    window_bytes: u64,
    facts: &MemoryFacts,
) -> Result<(), LimitError> {
    let mode = facts.overcommit;
    let sorted = loads
        .windows(2)
        .all(|w| w[0].vaddr.saturating_add(w[0].len) <= w[1].vaddr);
    let window = Mapped {
        len: window_bytes,
        writable: true,
        shared: false,
        shmem: false,
        stack: false,
    };
    // The kernel's vDSO block is not added: it is parked in the window
    // (`window_bytes` has its room) before any area is built, and moved
    // out of it onto the target's old addresses after.
    let mut total = 0u64;
    let mut data = 0u64;
    let mut charged = 0u64;
    let mut locked = 0u64;
    let most_one_charge = facts
        .mem_total_kb
        .saturating_add(facts.swap_total_kb)
        .saturating_mul(1024);
    let areas = vmas
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_special())
        .map(|(i, v)| {
            let apart = mm_state::kept_apart(vmas, i).is_some();
            (v.start, v.flags, mapped(v, loads, sorted, apart))
        })
        .chain([(0, 0, window)]);
    for (start, flags, m) in areas {
        total = total.saturating_add(m.len);
        if m.writable && !m.shared && !m.stack {
            data = data.saturating_add(m.len);
        }
        // MAP_NORESERVE counts only when overcommit is allowed at all.
        let noreserve = flags & vma_flags::NORESERVE != 0 && mode != Some(2);
        let is_charged = !noreserve && (m.shmem || (m.writable && !m.shared));
        if is_charged {
            charged = charged.saturating_add(m.len);
            if mode == Some(0) && m.len > most_one_charge {
                return Err(LimitError::Heuristic {
                    start,
                    len: m.len,
                    most: most_one_charge,
                });
            }
        }
        if flags & vma_flags::LOCKED != 0 {
            locked = locked.saturating_add(m.len);
        }
    }
    if let Some(limit) = facts.max_map_count {
        // Every area of the task, the window, and the vDSO block (three
        // parts, counted once whether the target had them or not), all at
        // once after the loader's own areas are gone.
        let areas = vmas.iter().filter(|v| !v.is_special()).count();
        let need = u64::try_from(areas)
            .unwrap_or(u64::MAX)
            .saturating_add(WINDOW_AREAS + VDSO_AREAS);
        if need > limit {
            return Err(LimitError::MapCount { need, limit });
        }
    }
    if facts.rlimit_as != RLIM_INFINITY && total > facts.rlimit_as {
        return Err(LimitError::AddressSpace {
            need: total,
            limit: facts.rlimit_as,
        });
    }
    if facts.rlimit_data != RLIM_INFINITY && data > facts.rlimit_data {
        return Err(LimitError::Data {
            need: data,
            limit: facts.rlimit_data,
        });
    }
    if mode == Some(2) {
        let mut allowed = facts.commit_limit_kb.saturating_mul(1024);
        if !facts.cap_sys_admin {
            allowed = allowed.saturating_sub(facts.admin_reserve_kb.saturating_mul(1024));
        }
        let user_reserve = (total / PAGE / 32)
            .saturating_mul(PAGE)
            .min(facts.user_reserve_kb.saturating_mul(1024));
        allowed = allowed.saturating_sub(user_reserve);
        let room = allowed.saturating_sub(facts.committed_kb.saturating_mul(1024));
        if charged >= room {
            return Err(LimitError::Strict {
                need: charged,
                room,
            });
        }
    }
    if locked > 0 && !facts.cap_ipc_lock && locked > facts.rlimit_memlock {
        return Err(LimitError::Memlock {
            need: locked,
            limit: facts.rlimit_memlock,
        });
    }
    Ok(())
}

/// `RLIMIT_DATA`, `RLIMIT_MEMLOCK`, `RLIMIT_AS`.
const RLIMIT_DATA: u32 = 2;
const RLIMIT_MEMLOCK: u32 = 8;
const RLIMIT_AS: u32 = 9;
use crate::creds::cap::{IPC_LOCK as CAP_IPC_LOCK, SYS_ADMIN as CAP_SYS_ADMIN};

/// A decimal number at the start of `text` (after blanks), or `None`.
fn leading_number(text: &[u8]) -> Option<u64> {
    let digits = text.iter().skip_while(|b| b.is_ascii_whitespace());
    let mut n: Option<u64> = None;
    for &b in digits {
        if !b.is_ascii_digit() {
            break;
        }
        n = Some(
            n.unwrap_or(0)
                .saturating_mul(10)
                .saturating_add(u64::from(b - b'0')),
        );
    }
    n
}

/// The value of `key:` in `/proc/meminfo` text (kB).
fn meminfo_kb(text: &[u8], key: &[u8]) -> Option<u64> {
    text.split(|&b| b == b'\n').find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(b":")?;
        leading_number(rest)
    })
}

fn sysctl(path: &[u8]) -> Option<u64> {
    let mut buf = [0u8; 64];
    let n = crate::sys::read_small_file(path, &mut buf).ok()?;
    leading_number(&buf[..n])
}

/// Whether `uid_map` (the text of `/proc/self/uid_map`) is the initial
/// user namespace's: one line mapping every uid onto itself.
fn is_initial_uid_map(uid_map: &[u8]) -> bool {
    let mut fields = uid_map
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty());
    let mut next = || fields.next().and_then(leading_number);
    (next(), next(), next(), next()) == (Some(0), Some(0), Some(u64::from(u32::MAX)), None)
}

/// Whether this process is in the initial user namespace. `CAP_IPC_LOCK`
/// (mlock) and `CAP_SYS_ADMIN` (the admin reserve) count for `mm` limits
/// only there (`capable()`, not `ns_capable()`), while the CapEff line of
/// `/proc/self/status` tells the caps in the current user namespace: root
/// of `unshare -U -r` has them all but may lock no more than
/// `RLIMIT_MEMLOCK`. Unknown (no `/proc`) counts as not initial.
fn in_initial_user_ns() -> bool {
    let mut map = [0u8; 256];
    crate::sys::read_small_file(b"/proc/self/uid_map", &mut map)
        .is_ok_and(|n| is_initial_uid_map(&map[..n]))
}

/// This process's and this machine's limits, as the kernel will apply them.
/// A `/proc` file that cannot be read leaves its check out. Only what
/// [`check`] uses under this machine's `vm.overcommit_memory` is read
/// (each `/proc` file costs an open, the kernel's formatting and a parse;
/// stage 1's fixed cost is mostly such reads): RAM and swap by `sysinfo`
/// for mode 0, `/proc/meminfo` and the reserves for mode 2 only, and the
/// user namespace (for the capabilities) only when mode 2 or a `locked`
/// area needs them. What is not read stays 0 / `false`.
pub fn read_facts(effective_caps: u64, locked: bool) -> MemoryFacts {
    let overcommit = sysctl(b"/proc/sys/vm/overcommit_memory").and_then(|m| u32::try_from(m).ok());
    let strict = overcommit == Some(2);
    let effective_caps = if (strict || locked) && in_initial_user_ns() {
        effective_caps
    } else {
        0
    };
    let (mut commit_limit, mut committed, mut total, mut swap) = (0, 0, 0, 0);
    let mut reserves = (0, 0);
    if strict {
        let mut meminfo = [0u8; 8192];
        let n = crate::sys::read_small_file(b"/proc/meminfo", &mut meminfo).unwrap_or(0);
        let meminfo = &meminfo[..n];
        let kb = |key: &[u8]| meminfo_kb(meminfo, key);
        if let (Some(a), Some(b), Some(c)) =
            (kb(b"CommitLimit"), kb(b"Committed_AS"), kb(b"MemTotal"))
        {
            (commit_limit, committed, total) = (a, b, c);
        }
        swap = kb(b"SwapTotal").unwrap_or(0);
        reserves = (
            sysctl(b"/proc/sys/vm/admin_reserve_kbytes").unwrap_or(0),
            sysctl(b"/proc/sys/vm/user_reserve_kbytes").unwrap_or(0),
        );
    } else if overcommit == Some(0) {
        // The same totals as meminfo's MemTotal and SwapTotal.
        if let Ok(size) = crate::sys::machine::memory_size() {
            (total, swap) = (size.ram / 1024, size.swap / 1024);
        }
    }
    let soft = |resource| crate::sys::get_rlimit(resource).map_or(RLIM_INFINITY, |(cur, _)| cur);
    MemoryFacts {
        // Without the machine's size there is nothing to compare with.
        overcommit: overcommit.filter(|&m| m == 1 || total != 0),
        commit_limit_kb: commit_limit,
        committed_kb: committed,
        mem_total_kb: total,
        swap_total_kb: swap,
        admin_reserve_kb: reserves.0,
        user_reserve_kb: reserves.1,
        rlimit_as: soft(RLIMIT_AS),
        rlimit_data: soft(RLIMIT_DATA),
        rlimit_memlock: soft(RLIMIT_MEMLOCK),
        cap_sys_admin: effective_caps & (1 << CAP_SYS_ADMIN) != 0,
        cap_ipc_lock: effective_caps & (1 << CAP_IPC_LOCK) != 0,
        max_map_count: sysctl(b"/proc/sys/vm/max_map_count"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn facts() -> MemoryFacts {
        MemoryFacts {
            overcommit: Some(0),
            commit_limit_kb: 12 << 20,
            committed_kb: 1 << 20,
            mem_total_kb: 24 << 20,
            swap_total_kb: 0,
            admin_reserve_kb: 8192,
            user_reserve_kb: 131072,
            rlimit_as: RLIM_INFINITY,
            rlimit_data: RLIM_INFINITY,
            rlimit_memlock: 8 << 20,
            cap_sys_admin: false,
            cap_ipc_lock: false,
            max_map_count: Some(65530),
        }
    }

    fn anon(start: u64, len: u64, prot: u32, flags: u32) -> TargetVma {
        TargetVma {
            start,
            end: start + len,
            prot,
            flags,
            kind: vma_kind::ANON,
            fd: -1,
            ..TargetVma::default()
        }
    }

    const RW: u32 = prot::READ | prot::WRITE;

    #[test]
    fn more_areas_than_max_map_count_are_refused() {
        let vmas: Vec<TargetVma> = (0..100)
            .map(|i| anon(0x1000_0000 + i * 0x2000, PAGE, RW, 0))
            .collect();
        let limited = |n| MemoryFacts {
            max_map_count: Some(n),
            ..facts()
        };
        let need = 100 + WINDOW_AREAS + VDSO_AREAS;
        assert_eq!(check(&vmas, &[], PAGE, &limited(need)), Ok(()));
        assert_eq!(
            check(&vmas, &[], PAGE, &limited(need - 1)),
            Err(LimitError::MapCount {
                need,
                limit: need - 1
            })
        );
    }

    #[test]
    fn meminfo_values() {
        let text = b"MemTotal:       24683584 kB\nSwapTotal:             0 kB\nCommitLimit:    12341792 kB\nCommitted_AS:      59160 kB\n";
        assert_eq!(meminfo_kb(text, b"MemTotal"), Some(24683584));
        assert_eq!(meminfo_kb(text, b"Committed_AS"), Some(59160));
        assert_eq!(meminfo_kb(text, b"SwapTotal"), Some(0));
        assert_eq!(meminfo_kb(text, b"Commit"), None);
        assert_eq!(leading_number(b"2\n"), Some(2));
        assert_eq!(leading_number(b"x"), None);
    }

    #[test]
    fn only_the_identity_uid_map_is_the_initial_user_namespace() {
        assert!(is_initial_uid_map(b"         0          0 4294967295\n"));
        assert!(!is_initial_uid_map(b"         0          0 4294967294\n"));
        assert!(!is_initial_uid_map(b"         0       1000          1\n"));
        assert!(!is_initial_uid_map(b"0 0 4294967295\n0 0 1\n"));
        assert!(!is_initial_uid_map(b""));
    }

    #[test]
    fn noreserve_is_not_charged_unless_overcommit_is_strict() {
        let big = [anon(0x1000_0000, 64 * GIB, RW, vma_flags::NORESERVE)];
        assert_eq!(check(&big, &[], 1 << 20, &facts()), Ok(()));
        let accounted = [anon(0x1000_0000, 64 * GIB, RW, vma_flags::ACCOUNT)];
        assert!(matches!(
            check(&accounted, &[], 1 << 20, &facts()),
            Err(LimitError::Heuristic {
                start: 0x1000_0000,
                ..
            })
        ));
        let always = MemoryFacts {
            overcommit: Some(1),
            ..facts()
        };
        assert_eq!(check(&accounted, &[], 1 << 20, &always), Ok(()));
        let strict = MemoryFacts {
            overcommit: Some(2),
            ..facts()
        };
        assert!(matches!(
            check(&big, &[], 1 << 20, &strict),
            Err(LimitError::Strict { .. })
        ));
        let small = [anon(0x1000_0000, GIB, RW, 0)];
        assert_eq!(check(&small, &[], 1 << 20, &strict), Ok(()));
    }

    #[test]
    fn read_only_areas_are_charged_only_when_filled_or_accounted() {
        let strict = MemoryFacts {
            overcommit: Some(2),
            commit_limit_kb: 3 << 20,
            ..facts()
        };
        let ro = [anon(0x1000_0000, 4 * GIB, prot::READ, 0)];
        assert_eq!(check(&ro, &[], 0, &strict), Ok(()));
        let filled = [PageLoad {
            vaddr: 0x1000_0000,
            offset: 0,
            len: PAGE,
            ..PageLoad::default()
        }];
        assert!(check(&ro, &filled, 0, &strict).is_err());
        let accounted = [anon(0x1000_0000, 4 * GIB, prot::READ, vma_flags::ACCOUNT)];
        assert!(check(&accounted, &[], 0, &strict).is_err());
        let mut shmem = anon(0x1000_0000, 4 * GIB, prot::READ, vma_flags::SHARED);
        shmem.kind = vma_kind::SHARED_ANON;
        assert!(check(&[shmem], &[], 0, &strict).is_err());
    }

    #[test]
    fn stored_pages_found_sorted_or_not() {
        let v = anon(0x10000, 0x10000, prot::READ, 0);
        let load = |vaddr| PageLoad {
            vaddr,
            offset: 0,
            len: PAGE,
            ..PageLoad::default()
        };
        for sorted in [true, false] {
            assert!(gets_pages(
                &v,
                &[load(0x1000), load(0x1f000), load(0x40000)],
                sorted
            ));
            assert!(!gets_pages(&v, &[load(0x1000), load(0x20000)], sorted));
            assert!(!gets_pages(&v, &[], sorted));
        }
        assert!(gets_pages(&v, &[load(0x40000), load(0x10000)], false));
    }

    #[test]
    fn rlimits_as_data_and_memlock() {
        let vmas = [
            anon(0x1000_0000, GIB, RW, 0),
            anon(0x8000_0000, GIB, prot::READ, 0),
            TargetVma {
                kind: vma_kind::STACK,
                flags: vma_flags::GROWSDOWN,
                ..anon(0x7000_0000_0000, 8 << 20, RW, 0)
            },
        ];
        let limited = |rlimit_as, rlimit_data| MemoryFacts {
            rlimit_as,
            rlimit_data,
            ..facts()
        };
        let window = 1 << 20;
        let total = 2 * GIB + (8 << 20) + window;
        assert_eq!(
            check(&vmas, &[], window, &limited(total, GIB + window)),
            Ok(())
        );
        assert_eq!(
            check(&vmas, &[], window, &limited(total - 1, RLIM_INFINITY)),
            Err(LimitError::AddressSpace {
                need: total,
                limit: total - 1
            })
        );
        assert!(matches!(
            check(&vmas, &[], window, &limited(RLIM_INFINITY, GIB)),
            Err(LimitError::Data { .. })
        ));
        let locked = [anon(0x1000_0000, 16 << 20, RW, vma_flags::LOCKED)];
        assert!(matches!(
            check(&locked, &[], 0, &facts()),
            Err(LimitError::Memlock { need, .. }) if need == 16 << 20
        ));
        let capable = MemoryFacts {
            cap_ipc_lock: true,
            ..facts()
        };
        assert_eq!(check(&locked, &[], 0, &capable), Ok(()));
    }

    #[test]
    fn sysinfo_gives_what_meminfo_says_for_mode_0() {
        let mut text = [0u8; 8192];
        let n = crate::sys::read_small_file(b"/proc/meminfo", &mut text).unwrap();
        let size = crate::sys::machine::memory_size().unwrap();
        assert_eq!(Some(size.ram / 1024), meminfo_kb(&text[..n], b"MemTotal"));
        assert_eq!(Some(size.swap / 1024), meminfo_kb(&text[..n], b"SwapTotal"));
        // Mode 0 judges one charge against the two.
        let facts = read_facts(0, false);
        if facts.overcommit == Some(0) {
            assert_eq!(facts.mem_total_kb, size.ram / 1024);
            assert_eq!(facts.swap_total_kb, size.swap / 1024);
        }
    }
}
