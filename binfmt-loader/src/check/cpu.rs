//! CPU and register state: every thread's saved XSAVE features must be
//! enabled by this CPU (XCR0) and permitted to this process, and each
//! thread's XSAVE area must be one `rt_sigreturn` can load.

use core::fmt;

use image_format::Image;

use super::os::Os;
use super::CheckError;
use crate::frame;
use crate::plan::ThreadInput;

/// The threads, leader first, with their XSAVE areas cut to what this
/// process restores, and the XSAVE features the plan restores (XCR0 ∩
/// permitted).
pub fn check_threads(
    os: &impl Os,
    image: &Image<'static>,
) -> Result<(&'static [ThreadInput<'static>], u64), CheckError> {
    let count = usize::try_from(image.thread_count()).unwrap_or(usize::MAX);
    let threads = crate::sys::map_table::<ThreadInput<'static>>(count)
        .map_err(|errno| CheckError::Scratch { errno })?;
    let mut nthreads = 0;
    for (slot, tv) in threads.iter_mut().zip(image.threads()) {
        let tv = tv.map_err(|error| CheckError::Corrupt { error })?;
        *slot = ThreadInput {
            record: tv.record,
            regs: tv.regs(),
            xsave: tv.xsave,
        };
        nthreads += 1;
    }
    if nthreads == 0 {
        return Err(CheckError::NoThread);
    }
    let threads = &mut threads[..nthreads];

    // CPU: every feature the saved state holds must be enabled here.
    let xcr0 = os.xcr0().ok_or(CheckError::NoXsave)?;
    let mut bv = 0;
    for t in threads.iter() {
        bv |= frame::xstate_bv(t.xsave).unwrap_or(0);
    }
    if bv & !xcr0 != 0 {
        return Err(CheckError::CpuLacks {
            missing: bv & !xcr0,
        });
    }
    // ... and permitted to this process. Dynamic features (AMX tile data)
    // must be asked for, as the task once did; a kernel without the
    // permission API has no dynamic features, so XCR0 is the answer there.
    let mut permitted = os.xcomp_perm().unwrap_or(xcr0);
    let wanted = bv & !permitted;
    if wanted != 0 {
        let highest = 63 - wanted.leading_zeros();
        if os.request_xcomp_perm(highest).is_ok() {
            permitted = os.xcomp_perm().unwrap_or(permitted);
        }
        if bv & !permitted != 0 {
            return Err(CheckError::NotPermitted {
                missing: bv & !permitted,
            });
        }
    }
    let features = xcr0 & permitted;
    // Each CPUID is a VM exit under a hypervisor (5-10 µs on the project's
    // machines, more than the rest of this step): each component's end is
    // asked once, and only when needed. When every enabled feature is
    // permitted, leaf 0xD's own total is the size they take.
    let ends = ComponentEnds::new(os);
    let user_size = if features == xcr0 {
        usize::try_from(os.xsave_size())
            .unwrap_or(usize::MAX)
            .max(frame::XSAVE_MIN)
    } else {
        permitted_xsave_size(features, |i| ends.get(i))
    };
    let mxcsr_mask = os.mxcsr_mask();
    for t in threads.iter_mut() {
        t.xsave = cut_xsave(t.xsave, user_size);
        // An area of `user_size` bytes holds every permitted component
        // (the last of them ends there): only a shorter one needs the
        // exact end of each component it claims.
        let holds_all = t.xsave.len() >= user_size;
        let component_end = |i| {
            if holds_all {
                u32::try_from(user_size).unwrap_or(u32::MAX)
            } else {
                ends.get(i)
            }
        };
        validate_xsave(t.xsave, features, mxcsr_mask, component_end).map_err(|fault| {
            CheckError::BadXsave {
                tid: t.record.tid,
                fault,
            }
        })?;
    }
    Ok((threads, features))
}

/// [`Os::xsave_component_end`], asked at most once per component.
struct ComponentEnds<'a, O: Os> {
    os: &'a O,
    known: [core::cell::Cell<Option<u32>>; 64],
}

impl<'a, O: Os> ComponentEnds<'a, O> {
    fn new(os: &'a O) -> Self {
        ComponentEnds {
            os,
            known: [const { core::cell::Cell::new(None) }; 64],
        }
    }

    fn get(&self, i: u32) -> u32 {
        let Some(slot) = usize::try_from(i).ok().and_then(|i| self.known.get(i)) else {
            return self.os.xsave_component_end(i);
        };
        slot.get().unwrap_or_else(|| {
            let end = self.os.xsave_component_end(i);
            slot.set(Some(end));
            end
        })
    }
}

/// [`frame::XSAVE_MIN`] (576) as a component end.
const XSAVE_MIN_U32: u32 = 576;
const _: () = assert!(XSAVE_MIN_U32 as usize == frame::XSAVE_MIN);

/// The size of the XSAVE frame `rt_sigreturn` restores in full for
/// `features` (XCR0 ∩ what this process is permitted). A larger frame (e.g.
/// sized for AMX it was not granted) gets only the legacy SSE state back.
pub fn permitted_xsave_size(features: u64, component_end: impl Fn(u32) -> u32) -> usize {
    (2..63)
        .filter(|i| features & (1 << i) != 0)
        .map(component_end)
        .max()
        .unwrap_or(0)
        .max(XSAVE_MIN_U32) as usize
}

/// A thread's saved XSAVE area cut to `user_size`: the standard format puts
/// components at fixed offsets, so the permitted prefix holds all of them.
pub fn cut_xsave(xsave: &[u8], user_size: usize) -> &[u8] {
    let len = xsave
        .len()
        .min(user_size)
        .max(frame::XSAVE_MIN.min(xsave.len()));
    &xsave[..len]
}

/// What is wrong with a saved XSAVE area (see [`validate_xsave`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XsaveFault {
    /// Shorter than the legacy region and the XSAVE header.
    TooShort { len: usize },
    /// `XCOMP_BV` is not zero (standard format has none).
    XcompBv { value: u64 },
    /// The header's reserved bytes 16..64 are not zero.
    HeaderReserved,
    /// MXCSR sets bits this CPU's MXCSR_MASK does not allow.
    Mxcsr { mxcsr: u32, mask: u32 },
    /// `XSTATE_BV` names a component not enabled and permitted here.
    Feature { bit: u32 },
    /// A component in `XSTATE_BV` ends past the saved area.
    Truncated { bit: u32, end: u32, len: usize },
}

impl fmt::Display for XsaveFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            XsaveFault::TooShort { len } => {
                write!(f, "{len} bytes, shorter than legacy area + header")
            }
            XsaveFault::XcompBv { value } => write!(f, "XCOMP_BV is {value:#x}, not 0"),
            XsaveFault::HeaderReserved => write!(f, "reserved header bytes are not zero"),
            XsaveFault::Mxcsr { mxcsr, mask } => {
                write!(
                    f,
                    "MXCSR {mxcsr:#x} sets bits outside this CPU's MXCSR_MASK {mask:#x}"
                )
            }
            XsaveFault::Feature { bit } => {
                write!(
                    f,
                    "XSTATE_BV holds component {bit}, not enabled and permitted here"
                )
            }
            XsaveFault::Truncated { bit, end, len } => write!(
                f,
                "component {bit} ends at byte {end}, past the {len} bytes saved"
            ),
        }
    }
}

/// Check a standard-format XSAVE area the way XRSTOR will (a #GP in
/// `rt_sigreturn` kills the task silently): `XCOMP_BV` zero, the header's
/// reserved bytes zero, MXCSR within `mxcsr_mask`, and every component in
/// `XSTATE_BV` among `features` and inside the area (`component_end(i)`:
/// where component `i` ends, CPUID leaf 0xD).
pub fn validate_xsave(
    xsave: &[u8],
    features: u64,
    mxcsr_mask: u32,
    component_end: impl Fn(u32) -> u32,
) -> Result<(), XsaveFault> {
    use image_format::elf::XSAVE_HEADER_OFFSET as HDR;
    let too_short = XsaveFault::TooShort { len: xsave.len() };
    let header = xsave.get(HDR..HDR + 64).ok_or(too_short)?;
    let u64_at = |b: &[u8], off: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[off..off + 8]);
        u64::from_le_bytes(w)
    };
    let xstate_bv = u64_at(header, 0);
    let xcomp_bv = u64_at(header, 8);
    if xcomp_bv != 0 {
        return Err(XsaveFault::XcompBv { value: xcomp_bv });
    }
    if header[16..].iter().any(|&b| b != 0) {
        return Err(XsaveFault::HeaderReserved);
    }
    let mxcsr = u32::from_le_bytes([xsave[24], xsave[25], xsave[26], xsave[27]]);
    if mxcsr & !mxcsr_mask != 0 {
        return Err(XsaveFault::Mxcsr {
            mxcsr,
            mask: mxcsr_mask,
        });
    }
    for bit in 0..64 {
        if xstate_bv & (1 << bit) == 0 {
            continue;
        }
        if features & (1 << bit) == 0 {
            return Err(XsaveFault::Feature { bit });
        }
        // x87 and SSE live in the legacy region, present by the length check.
        if bit >= 2 {
            let end = component_end(bit);
            if usize::try_from(end).map_or(true, |end| end > xsave.len()) {
                return Err(XsaveFault::Truncated {
                    bit,
                    end,
                    len: xsave.len(),
                });
            }
        }
    }
    Ok(())
}
