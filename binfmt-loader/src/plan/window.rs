//! The bootstrap window: where its parts lie ([`WindowLayout`]) and where
//! in the address space it goes ([`choose_window`]: free in the loader's
//! layout and in the target's).

use image_format::records::{vma_flags, vma_kind};

use super::abi::{layout, HEADER_BYTES};
use super::{PlanError, PlanInput, Range, PAGE, TASK_SIZE};
use crate::frame;

/// Free pages kept between the window and its neighbours, so it never merges
/// with them and never sits in a stack's guard gap.
pub const WINDOW_GAP: u64 = PAGE;
/// Growsdown stacks keep this much free below them (`stack_guard_gap`).
pub const STACK_GUARD_GAP: u64 = 256 * PAGE;
/// The trampoline's own stack.
pub const WINDOW_STACK: u64 = 4 * PAGE;
/// Each other thread's stack in the window: it runs only the trampoline,
/// with every signal blocked, so it needs a few words.
pub const THREAD_STACK: u64 = PAGE;

/// Bytes reserved per op for its failure message.
pub(super) const LABEL_BYTES: usize = 112;

pub(super) const fn page_up(x: u64) -> u64 {
    (x + PAGE - 1) & !(PAGE - 1)
}

/// Offsets of the window's parts, from its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLayout {
    pub size: u64,
    pub code_off: u64,
    pub ops_off: u64,
    pub ops_cap: usize,
    pub data_off: u64,
    pub data_len: u64,
    pub stack_top_off: u64,
    /// The other threads' stacks, [`THREAD_STACK`] each, in thread order.
    pub thread_stacks_off: u64,
    pub park_off: u64,
}

impl WindowLayout {
    pub fn for_input(input: &PlanInput<'_>) -> WindowLayout {
        let others = input.threads.len().saturating_sub(1);
        let ops_cap = 64
            + others * 22
            + input.vmas.len() * 16
            + input.loads.len()
            + input.sigactions.len()
            + input.rlimits.len()
            + input.fd_moves.len() * 2
            + input.keep_fds.len()
            + input.pending.len()
            + input.terminals.len() * 2
            + input.itimers.len()
            + input.epoll_adds.len()
            + input.inotify_drains.len() * super::inotify::DRAIN_OPS
            + input.timerfd_arms.len() * 2
            + 2
            + 3 * input.posix_timers.len()
            + if input.barrier.is_some() {
                super::barrier::BARRIER_OPS
            } else {
                0
            }
            // The fill by copies: source mmap, close, munmap; a register
            // per area and a load cut at each area boundary.
            + if input.fill_uffd.is_some() {
                3 + 2 * input.vmas.len()
            } else {
                0
            }
            + if input.lazy.is_some() {
                super::lazy::ops_for(input.vmas.len())
            } else {
                0
            };
        let code_off = HEADER_BYTES;
        let ops_off = (code_off + input.trampoline.len() as u64 + 63) & !63;
        let data_off = ops_off + (ops_cap * layout::OP_SIZE) as u64;
        let data_len = (ops_cap * LABEL_BYTES) as u64
            + input
                .threads
                .iter()
                .map(|t| 2 * (frame::FRAME_SIZE + t.xsave.len() as u64 + 256) + 640)
                .sum::<u64>()
            + others as u64 * (512 + 32 + 4 * image_format::records::MAX_GROUPS as u64)
            + input.auxv.len() as u64
            + 32 * input.sigactions.len() as u64
            + 16 * input.rlimits.len() as u64
            + 32 * input.itimers.len() as u64
            + (64 + 8 + 32 + 16) * input.posix_timers.len() as u64
            + 128 * input.pending.len() as u64
            + 48 * input.terminals.len() as u64
            + 16 * input.epoll_adds.len() as u64
            + if input.inotify_drains.is_empty() {
                0
            } else {
                super::inotify::DRAIN_BYTES as u64 + 8
            }
            + 48 * input.timerfd_arms.len() as u64
            + 4 * image_format::records::MAX_GROUPS as u64
            + if input.fill_uffd.is_some() {
                // A uffdio_copy per piece, a uffdio_register per area.
                (crate::sys::uffd::COPY_SIZE + 8) as u64
                    * (input.loads.len() + 2 * input.vmas.len()) as u64
            } else {
                0
            }
            + if input.lazy.is_some() {
                super::lazy::data_for(input.vmas.len()) as u64
            } else {
                0
            }
            + 16
            + 1024;
        let stack_top_off = page_up(data_off + data_len) + WINDOW_STACK;
        let thread_stacks_off = stack_top_off;
        let park_off = thread_stacks_off + others as u64 * THREAD_STACK;
        let park_len = input.loader_vdso.span().map_or(0, |s| s.len());
        WindowLayout {
            size: park_off + park_len,
            code_off,
            ops_off,
            ops_cap,
            data_off,
            data_len,
            stack_top_off,
            thread_stacks_off,
            park_off,
        }
    }
}

/// Lowest address `>= lo` where `size` bytes fit with [`WINDOW_GAP`] free on
/// both sides, below `hi`, given `occupied` (sorted in place by start).
pub fn find_free(occupied: &mut [Range], size: u64, lo: u64, hi: u64) -> Option<u64> {
    occupied.sort_unstable();
    let mut cursor = page_up(lo.max(WINDOW_GAP));
    for r in occupied.iter() {
        if r.end.saturating_add(WINDOW_GAP) <= cursor {
            continue;
        }
        if r.start >= cursor.checked_add(size)?.checked_add(WINDOW_GAP)? {
            return Some(cursor);
        }
        cursor = cursor.max(page_up(r.end).checked_add(WINDOW_GAP)?);
    }
    (cursor.checked_add(size)? <= hi).then_some(cursor)
}

/// Fill `scratch` with everything the window must avoid; returns the count.
/// `scratch` needs `vmas + loader_maps + 4` entries.
pub fn occupied_ranges(input: &PlanInput<'_>, scratch: &mut [Range]) -> usize {
    let mut n = 0;
    let mut add = |r: Range| {
        if n < scratch.len() {
            scratch[n] = r;
            n += 1;
        }
    };
    for v in input.vmas {
        let mut r = v.range();
        if v.flags & vma_flags::GROWSDOWN != 0 || v.kind == vma_kind::STACK {
            r.start = r.start.saturating_sub(STACK_GUARD_GAP);
        }
        add(r);
    }
    for r in input.loader_maps {
        add(*r);
    }
    if let Some(mut r) = input.loader_stack {
        r.start = r.start.saturating_sub(STACK_GUARD_GAP);
        add(r);
    }
    for r in input.loader_vdso.parts() {
        add(*r);
    }
    n
}

/// Choose the window: free in both layouts.
pub fn choose_window(input: &PlanInput<'_>, scratch: &mut [Range]) -> Result<Range, PlanError> {
    let size = WindowLayout::for_input(input).size;
    let n = occupied_ranges(input, scratch);
    let lo = input.mmap_min_addr.max(0x10000);
    let start =
        find_free(&mut scratch[..n], size, lo, TASK_SIZE).ok_or(PlanError::NoWindow { size })?;
    Ok(Range {
        start,
        end: start + size,
    })
}
