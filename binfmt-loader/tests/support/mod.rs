//! Locating the `crimg-loader` binary for the end-to-end tests.

use std::path::PathBuf;

/// `$CRIMG_LOADER` (e.g. a release build), else the binary cargo built for
/// these tests.
pub fn loader_path() -> PathBuf {
    std::env::var_os("CRIMG_LOADER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crimg-loader")))
}
