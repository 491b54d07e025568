//! The hand-built `rt_sigreturn` frame that loads a thread's registers
//! (KERNEL.md, "Loading registers"): `struct rt_sigframe { pretcode; ucontext;
//! siginfo }` with `uc_mcontext.fpstate` pointing at a 64-byte-aligned XSAVE
//! area that carries the `_fpx_sw_bytes` and is followed by `FP_XSTATE_MAGIC2`.
//!
//! The frame is laid out as one blob `[frame .. fpstate + xstate_size + 4)`
//! for a given final address, so it can be prepared in the window and copied
//! onto the thread's own stack (or used in the window directly).

use image_format::elf::{
    UserRegs, FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, FX_SW_BYTES_OFFSET, XSAVE_HEADER_OFFSET,
};
use image_format::records::ThreadRecord;

/// `UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS`.
pub const UC_FLAGS: u64 = 1 | 2 | 4;
/// `__USER_CS`, `__USER_DS` on x86_64.
pub const USER_CS: u64 = 0x33;
pub const USER_SS: u64 = 0x2b;
/// `pretcode` + `struct ucontext` (304) + `siginfo_t` (128).
pub const FRAME_SIZE: u64 = 8 + UCONTEXT_SIZE + 128;
pub const UCONTEXT_SIZE: u64 = 304;
/// The ABI red zone below a thread's `rsp` that a signal frame must skip.
pub const RED_ZONE: u64 = 128;
/// Smallest XSAVE area: legacy region + XSAVE header.
pub const XSAVE_MIN: usize = 576;
/// `SS_DISABLE`.
const SS_DISABLE: i32 = 2;

/// Where a frame goes: `frame` is the `pretcode` slot (the ucontext follows
/// at `frame + 8`), `fpstate` the XSAVE area, `end` one past magic2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramePlace {
    pub frame: u64,
    pub fpstate: u64,
    pub end: u64,
}

impl FramePlace {
    /// The kernel's own placement below `sp` (`get_sigframe`): skip the red
    /// zone, XSAVE area 64-aligned, frame below it with `frame + 8` 16-aligned.
    pub fn below(sp: u64, xstate_size: usize) -> Option<FramePlace> {
        let top = sp.checked_sub(RED_ZONE)?;
        let fpstate = top.checked_sub(xstate_size as u64 + 4)? & !63;
        let frame = (fpstate.checked_sub(FRAME_SIZE)? & !15).checked_sub(8)?;
        Some(FramePlace {
            frame,
            fpstate,
            end: fpstate + xstate_size as u64 + 4,
        })
    }

    pub fn len(&self) -> u64 {
        self.end - self.frame
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.frame
    }

    /// `rsp` at the `rt_sigreturn` syscall: the ucontext.
    pub fn ucontext(&self) -> u64 {
        self.frame + 8
    }
}

fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Fill `out` (exactly `place.len()` bytes, zeroed by the caller) with the
/// frame for `regs`, `thread` (mask, altstack) and `xsave` (standard format,
/// `xsave.len()` becomes the xstate size), with `pretcode` in its slot and
/// `xfeatures` as the restore mask.
pub fn write_frame(
    out: &mut [u8],
    place: FramePlace,
    regs: &UserRegs,
    thread: &ThreadRecord,
    xsave: &[u8],
    xfeatures: u64,
    pretcode: u64,
) {
    put_u64(out, 0, pretcode);
    let uc = 8;
    put_u64(out, uc, UC_FLAGS);
    put_u64(out, uc + 8, 0);
    // uc_stack: the thread's sigaltstack (restore_altstack applies it).
    let (ss_sp, ss_flags, ss_size) = if thread.altstack_size == 0 {
        (0, SS_DISABLE, 0)
    } else {
        (
            thread.altstack_sp,
            thread.altstack_flags,
            thread.altstack_size,
        )
    };
    put_u64(out, uc + 16, ss_sp);
    put_u32(out, uc + 24, ss_flags as u32);
    put_u64(out, uc + 32, ss_size);
    let sc = uc + 40;
    let words = [
        regs.r8,
        regs.r9,
        regs.r10,
        regs.r11,
        regs.r12,
        regs.r13,
        regs.r14,
        regs.r15,
        regs.rdi,
        regs.rsi,
        regs.rbp,
        regs.rbx,
        regs.rdx,
        regs.rax,
        regs.rcx,
        regs.rsp,
        regs.rip,
        regs.eflags,
    ];
    for (i, w) in words.iter().enumerate() {
        put_u64(out, sc + 8 * i, *w);
    }
    // cs, gs, fs, ss as four u16 in one word.
    put_u64(out, sc + 8 * 18, USER_CS | USER_SS << 48);
    put_u64(out, sc + 8 * 23, place.fpstate);
    put_u64(out, uc + 296, thread.sigmask);

    let fp = (place.fpstate - place.frame) as usize;
    out[fp..fp + xsave.len()].copy_from_slice(xsave);
    let sw = fp + FX_SW_BYTES_OFFSET;
    out[sw..sw + 48].fill(0);
    put_u32(out, sw, FP_XSTATE_MAGIC1);
    put_u32(out, sw + 4, xsave.len() as u32 + 4);
    put_u64(out, sw + 8, xfeatures);
    put_u32(out, sw + 16, xsave.len() as u32);
    put_u32(out, fp + xsave.len(), FP_XSTATE_MAGIC2);
}

/// `XSTATE_BV` of a standard-format XSAVE area (`None` if too short).
pub fn xstate_bv(xsave: &[u8]) -> Option<u64> {
    let b = xsave.get(XSAVE_HEADER_OFFSET..XSAVE_HEADER_OFFSET + 8)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

/// `XCOMP_BV` (bit 63 set means compacted format, which the loader refuses).
pub fn xcomp_bv(xsave: &[u8]) -> Option<u64> {
    let b = xsave.get(XSAVE_HEADER_OFFSET + 8..XSAVE_HEADER_OFFSET + 16)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_matches_the_kernel() {
        let p = FramePlace::below(0x7fff_0000_1008, 2696).unwrap();
        assert_eq!(p.fpstate % 64, 0);
        assert_eq!(p.ucontext() % 16, 0);
        assert!(p.end <= 0x7fff_0000_1008 - RED_ZONE);
        assert!(p.frame + FRAME_SIZE <= p.fpstate);
        assert!(FramePlace::below(100, 2696).is_none());
    }

    #[test]
    fn frame_fields() {
        let regs = UserRegs {
            rip: 0x401000,
            rsp: 0x7fff_0000_1000,
            rax: 7,
            r8: 8,
            eflags: 0x246,
            ..Default::default()
        };
        let th = ThreadRecord {
            sigmask: 0x55,
            ..Default::default()
        };
        let xsave = [0u8; 832];
        let place = FramePlace::below(regs.rsp, xsave.len()).unwrap();
        let mut out = [0u8; 4096];
        let out = &mut out[..place.len() as usize];
        write_frame(out, place, &regs, &th, &xsave, 0x7, 0xdead);
        let word = |off: usize| u64::from_le_bytes(out[off..off + 8].try_into().unwrap());
        assert_eq!(word(0), 0xdead);
        assert_eq!(word(8), UC_FLAGS);
        assert_eq!(word(8 + 24) as u32 as i32, SS_DISABLE);
        assert_eq!(word(48), 8); // r8
        assert_eq!(word(48 + 13 * 8), 7); // rax
        assert_eq!(word(48 + 16 * 8), 0x401000); // rip
        assert_eq!(word(48 + 15 * 8), 0x7fff_0000_1000); // rsp
        assert_eq!(word(48 + 23 * 8), place.fpstate);
        assert_eq!(word(8 + 296), 0x55);
        let fp = (place.fpstate - place.frame) as usize;
        assert_eq!(&out[fp + 464..fp + 468], &FP_XSTATE_MAGIC1.to_le_bytes());
        assert_eq!(&out[fp + 832..fp + 836], &FP_XSTATE_MAGIC2.to_le_bytes());
    }
}
