//! Finding the loader's gadgets (`syscall; ret` and `rt_sigreturn`) in the
//! task's executable file mappings, which injection runs through too.
//!
//! The scan stops at the first of each. It looks first where they are
//! known to be: the C library, whose `__restore_rt` is the `sa_restorer`
//! of every handler glibc installs (an `rt_sigreturn` gadget) and whose
//! small syscall wrappers (`getpid`, …) end in `syscall; ret`. glibc has
//! both within its first few hundred KiB of code. Only then the other
//! mappings in address order (a static program, Go's runtime). Each
//! mapping is read in chunks, so a hit early in a large one costs little.
//! The handlers' own `sa_restorer` cannot serve as a hint: the handlers
//! are asked by injection, which needs the gadgets first.

use image_format::records::{vma_kind, GadgetsRecord};

use super::task::Task;
use super::Collector;
use crate::gadgets;
use crate::procfs::smaps::SmapsEntry;
use crate::vmas;

/// Bytes read at once.
const CHUNK: u64 = 128 * 1024;

/// Whether `path` names a C library, where the gadgets are looked for
/// first (glibc's `libc.so.6`, older `libc-2.31.so`, musl's `ld-musl-*`,
/// which is its libc).
fn is_libc(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.starts_with("libc.so") || name.starts_with("libc-") || name.starts_with("ld-musl")
}

/// Scan the executable file mappings for the loader's gadgets: the C
/// library first, then the others in address order, each up to the first
/// hit.
pub(super) fn find_gadgets<T: Task>(
    c: &Collector<'_, T>,
    smaps: &[SmapsEntry],
    classes: &[vmas::VmaClass],
) -> GadgetsRecord {
    let mut areas: Vec<&SmapsEntry> = smaps
        .iter()
        .zip(classes)
        .filter(|(e, class)| e.exec && class.kind == vma_kind::FILE)
        .map(|(e, _)| e)
        .collect();
    // Stable: the address order is kept within each group.
    areas.sort_by_key(|e| !is_libc(&e.path));
    let mut g = GadgetsRecord::default();
    for e in areas {
        scan_area(c.task, e.start, e.end, &mut g);
        if g.syscall_ret != 0 && g.rt_sigreturn != 0 {
            break;
        }
    }
    g
}

/// Look for the gadgets still missing in `g` in `[start, end)`, chunk by
/// chunk (overlapping so that no sequence is cut), up to the first hit of
/// each. A chunk that cannot be read (a page past the end of its file) is
/// skipped.
fn scan_area<T: Task>(task: &T, start: u64, end: u64, g: &mut GadgetsRecord) {
    scan_with(|at, len| task.read_mem(at, len), start, end, g);
}

/// The gadgets of a process that is not collected (stopped for a moment
/// before its dump, [`crate::snapshot::protected`]): its executable file
/// mappings among `maps` (C library first), read through `mem`.
pub(crate) fn find_in(maps: &[SmapsEntry], mem: &std::fs::File) -> GadgetsRecord {
    use std::os::unix::fs::FileExt;
    let mut areas: Vec<&SmapsEntry> = maps
        .iter()
        .filter(|e| e.exec && e.path.starts_with('/'))
        .collect();
    areas.sort_by_key(|e| !is_libc(&e.path));
    let mut g = GadgetsRecord::default();
    let read = |at: u64, len: u64| {
        let mut b = vec![0u8; usize::try_from(len).unwrap_or(0)];
        mem.read_exact_at(&mut b, at).map(|()| b)
    };
    for e in areas {
        scan_with(read, e.start, e.end, &mut g);
        if g.syscall_ret != 0 && g.rt_sigreturn != 0 {
            break;
        }
    }
    g
}

fn scan_with(
    read_mem: impl Fn(u64, u64) -> std::io::Result<Vec<u8>>,
    start: u64,
    end: u64,
    g: &mut GadgetsRecord,
) {
    // The patterns are a few bytes long.
    #[allow(clippy::cast_possible_truncation)]
    let overlap = gadgets::LONGEST as u64 - 1;
    let mut at = start;
    while at < end {
        let len = CHUNK.min(end - at);
        if let Ok(bytes) = read_mem(at, len) {
            if g.syscall_ret == 0 {
                g.syscall_ret = gadgets::find_syscall_ret(&bytes, at).unwrap_or(0);
            }
            if g.rt_sigreturn == 0 {
                g.rt_sigreturn = gadgets::find_rt_sigreturn(&bytes, at).unwrap_or(0);
            }
            if g.syscall_ret != 0 && g.rt_sigreturn != 0 {
                return;
            }
        }
        if at + len >= end {
            return;
        }
        at += len - overlap;
    }
}

#[cfg(test)]
mod tests {
    use super::is_libc;

    #[test]
    fn c_libraries_are_recognised_by_file_name() {
        assert!(is_libc("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_libc("/lib/libc-2.31.so"));
        assert!(is_libc("/lib/ld-musl-x86_64.so.1"));
        assert!(!is_libc("/usr/lib/libcrypto.so.3"));
        assert!(!is_libc("/usr/bin/python3.11"));
        assert!(!is_libc("/opt/libc.so.6/bin/app"));
    }
}
