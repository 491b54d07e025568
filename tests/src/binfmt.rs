//! A binfmt_misc entry for crimg images that lives only as long as a test.
//!
//! [`TestBinfmt::register`] writes
//! `:crimg-test-<pid>-<n>:M:0:<magic>::<loader>:F` to
//! `/proc/sys/fs/binfmt_misc/register`; dropping the guard writes `-1` to
//! that entry's own file. The harness never writes to an entry it did not
//! create, so a system-wide `crimg` entry (from `crimg binfmt install`) is
//! left alone.
//!
//! Which entry runs an image: the kernel keeps entries in a list, adds each
//! new one at the head (`list_add` in `bm_register_write`) and uses the first
//! that matches. The test's entry, registered after any system-wide one, is
//! therefore the one used while it exists. Both would run a crimg loader; the
//! test's runs the loader of the build under test. With the `F` flag the
//! kernel opens the interpreter at registration time, so the entry keeps
//! using that exact file even if it is rebuilt or removed meanwhile.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where binfmt_misc is mounted.
pub const BINFMT_MISC_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// Bytes 0..16 of every crimg image: the ELF64 little-endian ident with
/// `CRIMG` and the format version 1 in the padding bytes.
pub const CRIMG_MAGIC: [u8; 16] = [
    0x7f, 0x45, 0x4c, 0x46, 0x02, 0x01, 0x01, 0x00, 0x00, b'C', b'R', b'I', b'M', b'G', 0x01, 0x00,
];

/// Entries this process registered so far, for unique names.
static ENTRIES_MADE: AtomicU32 = AtomicU32::new(0);

/// What went wrong with binfmt_misc.
#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    #[error("cannot mount binfmt_misc on {dir}")]
    Mount {
        dir: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("interpreter path {path} cannot be registered: {why}")]
    BadInterpreter { path: PathBuf, why: &'static str },
    #[error("cannot register binfmt_misc entry {name} through {register}")]
    Register {
        name: String,
        register: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Mount binfmt_misc if it is not mounted (a container may not have it).
/// The mount is left in place afterwards: it is system state that other
/// programs expect, and mounting it twice is harmless.
pub fn ensure_mounted() -> Result<(), BinfmtError> {
    if Path::new(BINFMT_MISC_DIR).join("register").exists() {
        return Ok(());
    }
    nix::mount::mount(
        Some("binfmt_misc"),
        BINFMT_MISC_DIR,
        Some("binfmt_misc"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|source| BinfmtError::Mount {
        dir: BINFMT_MISC_DIR,
        source,
    })
}

/// The names of the registered entries (every file but `register` and
/// `status`).
pub fn entry_names() -> Result<Vec<String>, BinfmtError> {
    let dir = Path::new(BINFMT_MISC_DIR);
    let read_error = |source| BinfmtError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let name = entry.map_err(read_error)?.file_name();
        let name = name.to_string_lossy();
        if name != "register" && name != "status" {
            names.push(name.into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// The line that registers entry `name` for crimg images with
/// `interpreter`: `:name:M:0:\x7f\x45...::/path/to/crimg-loader:F`.
pub fn register_line(name: &str, interpreter: &Path) -> Result<String, BinfmtError> {
    register_line_with(name, interpreter, &CRIMG_MAGIC, "F")
}

/// [`register_line`] with another magic and other flags.
pub fn register_line_with(
    name: &str,
    interpreter: &Path,
    magic: &[u8],
    flags: &str,
) -> Result<String, BinfmtError> {
    let path = interpreter
        .to_str()
        .ok_or_else(|| BinfmtError::BadInterpreter {
            path: interpreter.to_path_buf(),
            why: "not UTF-8",
        })?;
    if path.contains([':', '\n']) {
        return Err(BinfmtError::BadInterpreter {
            path: interpreter.to_path_buf(),
            why: "contains ':' or a newline, the register format's separators",
        });
    }
    if !interpreter.is_absolute() {
        return Err(BinfmtError::BadInterpreter {
            path: interpreter.to_path_buf(),
            why: "not an absolute path",
        });
    }
    let magic: String = magic.iter().map(|byte| format!("\\x{byte:02x}")).collect();
    Ok(format!(":{name}:M:0:{magic}::{path}:{flags}"))
}

/// A binfmt_misc entry registered by this test, removed when dropped.
#[derive(Debug)]
pub struct TestBinfmt {
    name: String,
    entry: PathBuf,
}

impl TestBinfmt {
    /// Register a uniquely named entry (`crimg-test-<pid>-<n>`) that runs
    /// crimg images with `interpreter` (the loader under test), mounting
    /// binfmt_misc first if needed. Needs root.
    pub fn register(interpreter: &Path) -> Result<TestBinfmt, BinfmtError> {
        Self::register_with(interpreter, &CRIMG_MAGIC, "F")
    }

    /// [`TestBinfmt::register`] with another magic and other flags (a
    /// magic no image has keeps the entry from running other tests' images).
    pub fn register_with(
        interpreter: &Path,
        magic: &[u8],
        flags: &str,
    ) -> Result<TestBinfmt, BinfmtError> {
        ensure_mounted()?;
        let serial = ENTRIES_MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("crimg-test-{}-{serial}", std::process::id());
        let line = register_line_with(&name, interpreter, magic, flags)?;
        let register = Path::new(BINFMT_MISC_DIR).join("register");
        fs::OpenOptions::new()
            .write(true)
            .open(&register)
            .and_then(|mut file| file.write_all(line.as_bytes()))
            .map_err(|source| BinfmtError::Register {
                name: name.clone(),
                register: register.clone(),
                source,
            })?;
        let entry = Path::new(BINFMT_MISC_DIR).join(&name);
        Ok(TestBinfmt { name, entry })
    }

    /// The entry's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry's file under binfmt_misc.
    pub fn entry_path(&self) -> &Path {
        &self.entry
    }

    /// What the kernel says about the entry (`enabled`, `interpreter ...`,
    /// `flags: F`, `offset 0`, `magic 7f454c46...`).
    pub fn describe(&self) -> Result<String, BinfmtError> {
        fs::read_to_string(&self.entry).map_err(|source| BinfmtError::Read {
            path: self.entry.clone(),
            source,
        })
    }
}

impl Drop for TestBinfmt {
    fn drop(&mut self) {
        // Writing -1 to the entry's own file removes exactly this entry. If
        // it fails (already removed), there is nothing left to clean up.
        if let Ok(mut file) = fs::OpenOptions::new().write(true).open(&self.entry) {
            let _ = file.write_all(b"-1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness spells the magic out on its own, as an independent check
    /// of the format; a new format version must update both.
    #[test]
    fn magic_is_the_format_ident() {
        assert_eq!(
            CRIMG_MAGIC,
            image_format::IDENT,
            "image_format::IDENT changed (a new format version?): update CRIMG_MAGIC"
        );
    }

    #[test]
    fn register_line_escapes_the_magic() {
        let line = register_line("crimg-test-1-0", Path::new("/opt/crimg-loader")).unwrap();
        assert_eq!(
            line,
            ":crimg-test-1-0:M:0:\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x43\\x52\\x49\\x4d\\x47\\x01\\x00::/opt/crimg-loader:F"
        );
    }

    #[test]
    fn register_line_refuses_unusable_paths() {
        assert!(register_line("x", Path::new("relative/loader")).is_err());
        assert!(register_line("x", Path::new("/a:b/loader")).is_err());
    }
}
