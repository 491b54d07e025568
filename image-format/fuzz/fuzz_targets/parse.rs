//! Any byte string: parsing never panics, and whatever parses can be walked
//! completely (every note, thread, record, string and segment) without panic.
//! Half the inputs are resealed first (checksums recomputed), so mutations
//! reach the structural checks instead of all stopping at the checksum.
#![no_main]

use image_format::Image;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut owned = data.to_vec();
    if data.first().is_some_and(|b| b & 1 == 1) {
        let _ = image_format::reseal(&mut owned);
    }
    let Ok(img) = Image::parse(&owned) else { return };
    let _ = img.verify_segments();
    for t in img.threads() {
        if let Ok(t) = t {
            let _ = (t.regs(), t.xstate_bv(), t.xfeatures());
        }
    }
    if let Ok(vmas) = img.vmas() {
        for v in vmas {
            let _ = img.string(v.path);
            let _ = img.stored_in(v.start, v.end);
        }
    }
    if let Ok(fds) = img.fds() {
        for f in fds {
            let _ = img.string(f.path);
        }
    }
    let _ = (img.warnings().count(), img.auxv(), img.gadgets(), img.creds());
    for n in img.notes() {
        let _ = n;
    }
});
