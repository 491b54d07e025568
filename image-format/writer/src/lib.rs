//! Writing crimg task images.
//!
//! [`model::TaskState`] is the collected state of one task as plain data;
//! [`write::write_image`] lays it out as an image (see the `image-format`
//! crate for the format) and streams page contents into place.
//!
//! This crate is apart from `image-format` so that it may use `std`: the
//! static no_std loader depends on `image-format`, and cargo unifies a
//! crate's features across a workspace build.

#![forbid(unsafe_code)]
// Conversions between widths are checked or say why they fit: a length
// truncated on its way into a header is an image the reader misreads.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod model;
pub mod parent;
pub mod sequential;
pub mod write;

pub use write::{
    write_image, write_image_linked, write_image_with, PageSource, WriteError, WriteOptions,
};

/// The binfmt_misc magic string for [`image_format::IDENT`], escaped as the
/// `register` file expects (`\xHH` for every byte, so no byte is taken as a
/// separator).
pub fn binfmt_magic() -> String {
    image_format::IDENT
        .iter()
        .map(|b| format!("\\x{b:02x}"))
        .collect()
}
