//! The crimg task image.
//!
//! A task image is a valid ELF64 `ET_CORE` file for x86_64 (so `readelf`
//! and `gdb` read it) whose unused `e_ident` bytes carry crimg's magic and
//! format version (so binfmt_misc can recognise it and run the loader):
//!
//! * one `PT_NOTE` segment: the standard core notes debuggers read (per
//!   thread `NT_PRSTATUS`, `NT_PRFPREG`, `NT_X86_XSTATE`; `NT_PRPSINFO`,
//!   `NT_AUXV`, `NT_FILE`), then crimg's own notes ([`records`]), the last
//!   of which is a checksum record;
//! * `PT_LOAD` segments holding only the pages that carry data, each
//!   page-aligned in the file so the loader can read it straight into place.
//!
//! The reader ([`read`]) parses a byte slice without allocating and checks
//! every length and bound before trusting it. The writer is the
//! `image-writer` crate: this one stays `no_std` with no features, because
//! the static loader depends on it and cargo unifies features.
//!
//! Checksums are XXH3-64 ([`checksum`]): fast on baseline x86_64 without
//! run-time CPU detection, which a `no_std` crate cannot do.

#![no_std]
#![forbid(unsafe_code)]
// Every conversion between widths is checked (`try_from`, `from`) or says
// why it cannot lose bits: a truncated offset or length in a format reader
// is a bounds check that passes by accident.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod chain;
pub mod elf;
pub mod read;
pub mod records;
pub mod seal;
pub mod text;

pub use read::{Image, ImageError};
pub use seal::reseal;

/// Page size of every image (x86_64).
pub const PAGE_SIZE: u64 = 4096;

/// Bytes 9..14 of `e_ident` (the ELF padding): crimg's magic.
pub const IDENT_MAGIC: [u8; 5] = *b"CRIMG";
/// Byte 14 of `e_ident`: the image format version. Independent of the crate
/// version; bumped only for changes an old loader must refuse.
pub const FORMAT_VERSION: u8 = 1;
/// The oldest image format version this build still reads (see
/// [`records`] for how versions work, and `tests/golden/` for the image that
/// holds the reader to it).
pub const OLDEST_FORMAT_VERSION: u8 = 1;

/// The full `e_ident` of every crimg image. binfmt_misc matches these 16
/// bytes at offset 0 (see `image_writer::binfmt_magic`).
pub const IDENT: [u8; 16] = {
    let mut id = [0u8; 16];
    id[0] = 0x7f;
    id[1] = b'E';
    id[2] = b'L';
    id[3] = b'F';
    id[4] = elf::ELFCLASS64;
    id[5] = elf::ELFDATA2LSB;
    id[6] = elf::EV_CURRENT;
    id[7] = elf::ELFOSABI_NONE;
    id[8] = 0;
    id[9] = IDENT_MAGIC[0];
    id[10] = IDENT_MAGIC[1];
    id[11] = IDENT_MAGIC[2];
    id[12] = IDENT_MAGIC[3];
    id[13] = IDENT_MAGIC[4];
    id[14] = FORMAT_VERSION;
    id[15] = 0;
    id
};

/// Round `x` up to a multiple of the page size (saturating).
pub const fn page_align_up(x: u64) -> u64 {
    match x.checked_add(PAGE_SIZE - 1) {
        Some(v) => v & !(PAGE_SIZE - 1),
        None => !(PAGE_SIZE - 1),
    }
}

/// True when `x` is a multiple of the page size.
pub const fn is_page_aligned(x: u64) -> bool {
    x.is_multiple_of(PAGE_SIZE)
}

/// The checksum of crimg images: XXH3, 64 bits, seed 0.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// An incremental [`checksum`].
pub use xxhash_rust::xxh3::Xxh3 as Checksummer;
