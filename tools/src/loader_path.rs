//! Finding the loader binary (`crimg-loader`).
//!
//! In order: `$CRIMG_LOADER`; beside the running tool (a cargo target
//! directory or an install prefix's `bin/`); the install location
//! `/usr/local/lib/crimg/crimg-loader`.

use std::path::{Path, PathBuf};

pub const LOADER_NAME: &str = "crimg-loader";
pub const INSTALLED_LOADER: &str = "/usr/local/lib/crimg/crimg-loader";

/// The candidates, in the order they are tried.
pub fn candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("CRIMG_LOADER") {
        c.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(Path::parent)
    {
        c.push(dir.join(LOADER_NAME));
        c.push(dir.join("../lib/crimg").join(LOADER_NAME));
    }
    c.push(PathBuf::from(INSTALLED_LOADER));
    c
}

/// The first candidate that exists, made absolute.
pub fn find() -> Option<PathBuf> {
    candidates()
        .into_iter()
        .find(|p| p.is_file())
        .and_then(|p| p.canonicalize().ok())
}
