//! The hand-built `rt_sigreturn` frame that loads a thread's registers
//! (KERNEL.md, "Loading registers"): `struct rt_sigframe { pretcode; ucontext;
//! siginfo }` with `uc_mcontext.fpstate` pointing at a 64-byte-aligned XSAVE
//! area that carries the `_fpx_sw_bytes` and is followed by `FP_XSTATE_MAGIC2`.
//!
//! The frame is laid out as one blob `[frame .. fpstate + xstate_size + 4)`
//! for a given final address, so it can be prepared in the window and copied
//! onto the thread's own stack (or used in the window directly).

use core::mem::{offset_of, size_of};

use image_format::elf::{
    FpxSwBytes, UserRegs, FP_XSTATE_MAGIC1, FP_XSTATE_MAGIC2, FX_SW_BYTES_OFFSET,
    XSAVE_HEADER_OFFSET,
};
use image_format::records::ThreadRecord;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS`.
pub const UC_FLAGS: u64 = 1 | 2 | 4;
/// `__USER_CS`, `__USER_DS` on x86_64.
pub const USER_CS: u16 = 0x33;
pub const USER_SS: u16 = 0x2b;
/// `pretcode` + `struct ucontext` (304) + `siginfo_t` (128).
pub const FRAME_SIZE: u64 = size_of::<RtSigframe>() as u64;
pub const UCONTEXT_SIZE: u64 = size_of::<Ucontext>() as u64;
/// The ABI red zone below a thread's `rsp` that a signal frame must skip.
pub const RED_ZONE: u64 = 128;
/// Smallest XSAVE area: legacy region + XSAVE header.
pub const XSAVE_MIN: usize = 576;
/// `SS_DISABLE`.
const SS_DISABLE: i32 = 2;

/// `stack_t` (`uc_stack`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct StackT {
    pub ss_sp: u64,
    pub ss_flags: i32,
    pub _pad: u32,
    pub ss_size: u64,
}

/// `struct sigcontext` (x86_64, `uc_mcontext`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Sigcontext {
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub rdx: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rsp: u64,
    pub rip: u64,
    pub eflags: u64,
    pub cs: u16,
    pub gs: u16,
    pub fs: u16,
    pub ss: u16,
    pub err: u64,
    pub trapno: u64,
    pub oldmask: u64,
    pub cr2: u64,
    /// Address of the XSAVE area.
    pub fpstate: u64,
    pub reserved1: [u64; 8],
}

/// `struct ucontext` as `rt_sigreturn` reads it (`uc_sigmask` is the
/// kernel's 8-byte `sigset_t`).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Ucontext {
    pub uc_flags: u64,
    pub uc_link: u64,
    pub uc_stack: StackT,
    pub uc_mcontext: Sigcontext,
    pub uc_sigmask: u64,
}

/// `struct rt_sigframe`: the return address `rt_sigreturn` was "called"
/// from (the restorer), the ucontext, the siginfo.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct RtSigframe {
    pub pretcode: u64,
    pub uc: Ucontext,
    pub info: [u8; 128],
}

// The kernel's sizes and the offsets `rt_sigreturn` reads
// (arch/x86/include/uapi/asm/sigcontext.h, asm/sigframe.h).
const _: () = assert!(size_of::<StackT>() == 24);
const _: () = assert!(size_of::<Sigcontext>() == 256);
const _: () = assert!(offset_of!(Sigcontext, fpstate) == 184);
const _: () = assert!(size_of::<Ucontext>() == 304);
const _: () = assert!(offset_of!(Ucontext, uc_mcontext) == 40);
const _: () = assert!(offset_of!(Ucontext, uc_sigmask) == 296);
const _: () = assert!(size_of::<RtSigframe>() == 8 + 304 + 128);
const _: () = assert!(FX_SW_BYTES_OFFSET + size_of::<FpxSwBytes>() <= XSAVE_HEADER_OFFSET);

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
        self.frame + offset_of!(RtSigframe, uc) as u64
    }
}

/// Fill `out` (exactly `place.len()` bytes, zeroed by the caller) with the
/// frame for `regs`, `thread` (mask, altstack) and `xsave` (standard format,
/// `xsave.len()` becomes the xstate size), with `pretcode` in its slot and
/// `xfeatures` as the restore mask.
///
/// # Panics
/// If `out` is not `place.len()` bytes or `xsave` is shorter than
/// [`XSAVE_MIN`] or longer than 4 GiB: the planner checks both first.
pub fn write_frame(
    out: &mut [u8],
    place: FramePlace,
    regs: &UserRegs,
    thread: &ThreadRecord,
    xsave: &[u8],
    xfeatures: u64,
    pretcode: u64,
) {
    // uc_stack: the thread's sigaltstack (restore_altstack applies it).
    let uc_stack = if thread.altstack_size == 0 {
        StackT {
            ss_flags: SS_DISABLE,
            ..StackT::default()
        }
    } else {
        StackT {
            ss_sp: thread.altstack_sp,
            ss_flags: thread.altstack_flags,
            _pad: 0,
            ss_size: thread.altstack_size,
        }
    };
    let frame = RtSigframe {
        pretcode,
        uc: Ucontext {
            uc_flags: UC_FLAGS,
            uc_link: 0,
            uc_stack,
            uc_mcontext: Sigcontext {
                r8: regs.r8,
                r9: regs.r9,
                r10: regs.r10,
                r11: regs.r11,
                r12: regs.r12,
                r13: regs.r13,
                r14: regs.r14,
                r15: regs.r15,
                rdi: regs.rdi,
                rsi: regs.rsi,
                rbp: regs.rbp,
                rbx: regs.rbx,
                rdx: regs.rdx,
                rax: regs.rax,
                rcx: regs.rcx,
                rsp: regs.rsp,
                rip: regs.rip,
                eflags: regs.eflags,
                cs: USER_CS,
                ss: USER_SS,
                fpstate: place.fpstate,
                ..Sigcontext::default()
            },
            uc_sigmask: thread.sigmask,
        },
        info: [0; 128],
    };
    out[..size_of::<RtSigframe>()].copy_from_slice(frame.as_bytes());

    let fp = usize::try_from(place.fpstate - place.frame).expect("a frame is small");
    let xstate_size = u32::try_from(xsave.len()).expect("an XSAVE area is small");
    out[fp..fp + xsave.len()].copy_from_slice(xsave);
    let sw = FpxSwBytes {
        magic1: FP_XSTATE_MAGIC1,
        extended_size: xstate_size + 4,
        xfeatures,
        xstate_size,
        padding: [0; 7],
    };
    let at = fp + FX_SW_BYTES_OFFSET;
    out[at..at + size_of::<FpxSwBytes>()].copy_from_slice(sw.as_bytes());
    let end = fp + xsave.len();
    out[end..end + 4].copy_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
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
// The test reads the frame at the kernel's offsets, written out by hand on
// purpose (a second source, against the structs); its values are small.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]
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
        // cs, gs, fs, ss; then _fpx_sw_bytes: extended size, xfeatures,
        // xstate size.
        assert_eq!(word(48 + 18 * 8), 0x33 | 0x2b << 48);
        let sw = |off: usize| u32::from_le_bytes(out[fp + off..fp + off + 4].try_into().unwrap());
        assert_eq!(sw(468), 836);
        assert_eq!(word(fp + 472), 7);
        assert_eq!(sw(480), 832);
    }
}
