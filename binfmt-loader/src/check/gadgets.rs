//! The gadgets the last thread leaves through (`syscall; ret` and
//! `rt_sigreturn`, found by the dumper): usable only when the rebuilt
//! memory holds that code at the recorded addresses, in an executable area.

use image_format::records::{vma_kind, GadgetsRecord};
use image_format::Image;

use super::os::Os;
use crate::plan::TargetVma;
use crate::sys::Errno;

/// The recorded gadgets, when both are where they say with the right
/// bytes (the stored pages, else the mapped file). The threads jump to
/// them with the window gone: anything else would kill the task with
/// nothing left to say why. Said when they are not used.
pub fn check_gadgets(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    vmas: &[TargetVma],
) -> Option<GadgetsRecord> {
    let g = image.gadgets();
    let mut ok = g.syscall_ret != 0 && g.rt_sigreturn != 0;
    if ok {
        let stored = || image.segments().map(|s| (s.vaddr, image.segment_bytes(&s)));
        let read_file = |fd: i32, off: u64, buf: &mut [u8]| {
            let mut n = 0;
            while n < buf.len() {
                let at = off.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                match os.pread(fd, &mut buf[n..], at) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
        };
        for (what, addr, patterns) in [
            ("syscall; ret", g.syscall_ret, &SYSCALL_RET[..]),
            ("rt_sigreturn", g.rt_sigreturn, &RT_SIGRETURN[..]),
        ] {
            let mut code = [0u8; 16];
            let fits = target_code(addr, vmas, stored(), read_file, &mut code)
                .is_some_and(|n| patterns.iter().any(|p| code[..n].starts_with(p)));
            if !fits {
                os.report(
                    name,
                    format_args!(
                        "warning: the recorded {what} gadget at {addr:#x} is not that code in executable memory; not used"
                    ),
                );
                ok = false;
            }
        }
    }
    // Multi-threaded tasks leave the window through the gadgets too (the
    // plan counts the threads out with FUTEX_WAKE_OP made from outside it).
    if !ok {
        os.report(name, format_args!("warning: the image records no gadgets: the loader's bootstrap window stays mapped in the task"));
    }
    ok.then_some(g)
}

/// `syscall; ret`.
pub const SYSCALL_RET: [&[u8]; 1] = [&[0x0f, 0x05, 0xc3]];
/// `mov $15, %eax; syscall`, and glibc's `__restore_rt` form `mov $15,
/// %rax; syscall`.
pub const RT_SIGRETURN: [&[u8]; 2] = [
    &[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
    &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05],
];

/// The bytes the restored task will have at `addr` (up to `out.len()`, not
/// past its VMA): the stored pages (`stored`: address and bytes) where they
/// cover it, else the mapped file's (`read_file(fd, offset, buf)`), else
/// zero. `None` unless `addr` lies in an executable VMA the plan builds.
pub fn target_code<'a>(
    addr: u64,
    vmas: &[TargetVma],
    stored: impl Iterator<Item = (u64, &'a [u8])>,
    mut read_file: impl FnMut(i32, u64, &mut [u8]),
    out: &mut [u8],
) -> Option<usize> {
    let v = vmas.iter().find(|v| v.start <= addr && addr < v.end)?;
    let special = matches!(
        v.kind,
        vma_kind::VDSO | vma_kind::VVAR | vma_kind::VVAR_VCLOCK | vma_kind::VSYSCALL
    );
    if special || v.prot & image_format::records::prot::EXEC == 0 {
        return None;
    }
    // Offsets below are within `out` (a few bytes), so they fit a usize.
    let off = |x: u64| usize::try_from(x).ok();
    let n = out.len().min(off(v.end - addr).unwrap_or(usize::MAX));
    let out = &mut out[..n];
    out.fill(0);
    if v.fd >= 0 {
        read_file(v.fd, v.pgoff.checked_add(addr - v.start)?, out);
    }
    let end = addr.checked_add(u64::try_from(n).ok()?)?;
    for (vaddr, bytes) in stored {
        let from = vaddr.max(addr);
        let to = vaddr
            .saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX))
            .min(end);
        if from < to {
            out[off(from - addr)?..off(to - addr)?]
                .copy_from_slice(&bytes[off(from - vaddr)?..off(to - vaddr)?]);
        }
    }
    Some(n)
}
