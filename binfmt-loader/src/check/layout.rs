//! The loader's own layout, from `/proc/self/maps`: every mapping the
//! window must avoid, its stack and the kernel's fresh vDSO block (which
//! must have the target's shape: the plan moves it onto the old one).

use super::os::Os;
use super::scratch::{Scratch, MAPS_TEXT, MAX_MAPS};
use super::CheckError;
use crate::maps::{self, MapKind, MapsEntry};
use crate::plan::{Range, VdsoBlock};

/// What the window search needs of the loader's layout.
pub struct LoaderLayout {
    pub maps: &'static [Range],
    pub stack: Option<Range>,
    pub vdso: VdsoBlock,
}

/// Read it (last in stage 1, so every mapping made before is in the list)
/// and compare the vDSO block with the target's.
pub fn read_loader_layout(
    os: &impl Os,
    target_vdso: &VdsoBlock,
    scratch: &mut Scratch,
) -> Result<LoaderLayout, CheckError> {
    // In scratch memory, not on the stack: the stack probes would touch
    // (fault in) all of its pages, the read fills only what the text needs.
    let text = scratch.take::<u8>("maps text", MAPS_TEXT)?;
    let n = os
        .read_file(b"/proc/self/maps", text)
        .map_err(|errno| CheckError::ProcMaps { errno })?;
    // A full buffer may have cut the list: a mapping the window search
    // does not know of would be unmapped or overlapped after the point of
    // no return.
    if n == text.len() {
        return Err(CheckError::ProcMapsTooLong { limit: text.len() });
    }
    let mut parsed = [MapsEntry::default(); MAX_MAPS];
    let count = maps::parse_maps(&text[..n], &mut parsed)
        .map_err(|error| CheckError::ProcMapsParse { error })?;
    let (maps, stack, vdso) = loader_ranges(&parsed[..count], scratch)?;
    if !target_vdso.parts().is_empty() && !vdso.same_shape(target_vdso) {
        return Err(CheckError::VdsoLayout);
    }
    Ok(LoaderLayout { maps, stack, vdso })
}

/// The kernel's vDSO block among `entries` (`[vvar]`, `[vvar_vclock]`,
/// `[vdso]`, in order): what the plan moves onto the target's (`crimg
/// check` judges it too).
pub fn vdso_block(entries: &[MapsEntry]) -> VdsoBlock {
    let mut vdso = VdsoBlock::default();
    for e in entries {
        if matches!(e.kind, MapKind::Vvar | MapKind::VvarVclock | MapKind::Vdso) {
            vdso.push(Range {
                start: e.start,
                end: e.end,
            });
        }
    }
    vdso
}

/// Whether a vDSO block can be moved as one: its parts adjacent, in order,
/// ending with `[vdso]` itself (`kinds`: what each part is).
pub fn vdso_block_movable(block: &VdsoBlock, last_is_vdso: bool) -> bool {
    last_is_vdso
        && !block.parts().is_empty()
        && block.parts().windows(2).all(|w| w[0].end == w[1].start)
}

/// Every mapping but `[vsyscall]` (out of reach, it stays), the stack and
/// the vDSO block among them.
fn loader_ranges(
    entries: &[MapsEntry],
    scratch: &mut Scratch,
) -> Result<(&'static [Range], Option<Range>, VdsoBlock), CheckError> {
    let out = scratch.take::<Range>("loader maps", entries.len())?;
    let vdso = vdso_block(entries);
    let mut stack = None;
    let mut n = 0;
    for e in entries {
        let r = Range {
            start: e.start,
            end: e.end,
        };
        match e.kind {
            MapKind::Vsyscall => continue,
            MapKind::Stack => stack = Some(r),
            _ => {}
        }
        // One slot per entry: `n` < `entries.len()`.
        if let Some(slot) = out.get_mut(n) {
            *slot = r;
            n += 1;
        }
    }
    Ok((&out[..n], stack, vdso))
}
