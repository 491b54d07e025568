//! Registering the loader with the kernel's binfmt_misc, so that running a
//! task image runs the loader with it.
//!
//! The entry matches the 16 bytes of crimg's `e_ident` at offset 0 (the ELF
//! magic plus `CRIMG` and the format version in the padding), so ordinary
//! ELF executables and plain core files are never taken for images. Flag `F`
//! opens the interpreter at registration, so it keeps working from other
//! mount namespaces and chroots; `C` (credentials from the image) is never
//! used. The same line goes to `/etc/binfmt.d/` so systemd-binfmt restores
//! it at boot.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The system-wide entry's name.
pub const DEFAULT_NAME: &str = "crimg";
/// Where binfmt_misc lives.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";
/// Flags of crimg's entries: open the interpreter now.
pub const FLAGS: &str = "F";

#[derive(Debug, thiserror::Error)]
pub enum BinfmtError {
    #[error("binfmt_misc is not available at {dir} and could not be mounted: {source}")]
    NotMounted { dir: PathBuf, source: io::Error },
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the loader {path} does not exist or is not executable")]
    NoLoader { path: PathBuf },
    #[error("binfmt entry name {name:?} is not valid (letters, digits, '-', '_' and '.' only)")]
    BadName { name: String },
    #[error("the loader path {path} contains ':' or a newline, which binfmt_misc cannot take")]
    BadPath { path: PathBuf },
}

/// Where an entry is registered and what it is called.
#[derive(Clone, Debug)]
pub struct Binfmt {
    pub dir: PathBuf,
    pub name: String,
}

/// A registered entry, as binfmt_misc reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct EntryStatus {
    pub name: String,
    pub enabled: bool,
    pub interpreter: PathBuf,
    pub flags: String,
    pub magic: String,
}

/// What `install` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstallOutcome {
    Registered,
    /// The same entry was there; it was registered again so that the loader
    /// file flag `F` pins is the one at the path now (an upgrade replaces
    /// the file, and the old entry would keep running the old one).
    Refreshed,
    /// An entry of the same name with another interpreter or magic.
    Replaced,
}

/// The `register` line for an entry.
pub fn register_line(name: &str, interpreter: &Path) -> String {
    format!(
        ":{name}:M:0:{}::{}:{FLAGS}",
        image_writer::binfmt_magic(),
        interpreter.display()
    )
}

/// The magic as binfmt_misc prints it in an entry's status (hex, no escapes).
/// The magic crimg's entries match, as binfmt_misc prints it.
pub fn magic_hex() -> String {
    image_format::IDENT
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "register"
        && name != "status"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Binfmt {
    pub fn new(name: &str) -> Result<Self, BinfmtError> {
        if !valid_name(name) {
            return Err(BinfmtError::BadName {
                name: name.to_owned(),
            });
        }
        Ok(Binfmt {
            dir: PathBuf::from(BINFMT_DIR),
            name: name.to_owned(),
        })
    }

    fn entry_path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// Mounts binfmt_misc if it is not mounted yet.
    pub fn ensure_mounted(&self) -> Result<(), BinfmtError> {
        if self.dir.join("register").exists() {
            return Ok(());
        }
        let status = std::process::Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(&self.dir)
            .status()
            .map_err(|source| BinfmtError::NotMounted {
                dir: self.dir.clone(),
                source,
            })?;
        if !status.success() || !self.dir.join("register").exists() {
            return Err(BinfmtError::NotMounted {
                dir: self.dir.clone(),
                source: io::Error::other(format!("mount exited with {status}")),
            });
        }
        Ok(())
    }

    /// The entry's current registration, if any.
    pub fn status(&self) -> Result<Option<EntryStatus>, BinfmtError> {
        let path = self.entry_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(BinfmtError::Io {
                    action: "read",
                    path,
                    source,
                })
            }
        };
        let mut st = EntryStatus {
            name: self.name.clone(),
            enabled: false,
            interpreter: PathBuf::new(),
            flags: String::new(),
            magic: String::new(),
        };
        for line in text.lines() {
            if line == "enabled" {
                st.enabled = true;
            } else if let Some(v) = line.strip_prefix("interpreter ") {
                st.interpreter = PathBuf::from(v);
            } else if let Some(v) = line.strip_prefix("flags: ") {
                st.flags = v.to_owned();
            } else if let Some(v) = line.strip_prefix("magic ") {
                st.magic = v.to_owned();
            }
        }
        Ok(Some(st))
    }

    fn write_control(&self, path: &Path, line: &str) -> Result<(), BinfmtError> {
        let io_err = |source| BinfmtError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_err)?;
        f.write_all(line.as_bytes()).map_err(io_err)
    }

    fn remove_entry(&self) -> Result<(), BinfmtError> {
        self.write_control(&self.entry_path(), "-1")
    }

    /// Registers `loader` under this entry's name; idempotent. An existing
    /// entry of the same name is registered anew: with another interpreter
    /// or magic it is replaced, and even when it is the same, flag `F` holds
    /// the loader file opened at its registration, which an upgrade of the
    /// loader has since replaced.
    pub fn install(&self, loader: &Path) -> Result<InstallOutcome, BinfmtError> {
        check_loader(loader)?;
        self.ensure_mounted()?;
        let mut outcome = InstallOutcome::Registered;
        if let Some(st) = self.status()? {
            let same = st.enabled
                && st.interpreter == loader
                && st.flags == FLAGS
                && st.magic == magic_hex();
            self.remove_entry()?;
            outcome = if same {
                InstallOutcome::Refreshed
            } else {
                InstallOutcome::Replaced
            };
        }
        self.write_control(
            &self.dir.join("register"),
            &register_line(&self.name, loader),
        )?;
        Ok(outcome)
    }

    /// Removes the entry; false when it was not registered.
    pub fn uninstall(&self) -> Result<bool, BinfmtError> {
        if self.status()?.is_none() {
            return Ok(false);
        }
        self.remove_entry()?;
        Ok(true)
    }
}

fn check_loader(loader: &Path) -> Result<(), BinfmtError> {
    use std::os::unix::fs::PermissionsExt;
    let s = loader.to_string_lossy();
    if s.contains(':') || s.contains('\n') {
        return Err(BinfmtError::BadPath {
            path: loader.to_owned(),
        });
    }
    match fs::metadata(loader) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        _ => Err(BinfmtError::NoLoader {
            path: loader.to_owned(),
        }),
    }
}

/// The `/etc/binfmt.d` file that makes the entry survive a reboot.
pub fn persist_path(name: &str) -> PathBuf {
    PathBuf::from(format!("/etc/binfmt.d/{name}.conf"))
}

/// Writes (or rewrites) the boot-time registration file.
pub fn persist(name: &str, loader: &Path) -> Result<PathBuf, BinfmtError> {
    let path = persist_path(name);
    let io_err = |action, source| BinfmtError::Io {
        action,
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| io_err("create the directory of", e))?;
    }
    let text = format!(
        "# crimg task images run through the crimg loader (written by `crimg binfmt install`)\n{}\n",
        register_line(name, loader)
    );
    fs::write(&path, text).map_err(|e| io_err("write", e))?;
    Ok(path)
}

/// Removes the boot-time registration file; false when there was none.
pub fn unpersist(name: &str) -> Result<bool, BinfmtError> {
    let path = persist_path(name);
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(BinfmtError::Io {
            action: "remove",
            path,
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_line_escapes_every_magic_byte() {
        let line = register_line("crimg", Path::new("/usr/local/lib/crimg/crimg-loader"));
        assert_eq!(
            line,
            ":crimg:M:0:\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x43\\x52\\x49\\x4d\\x47\\x01\\x00::/usr/local/lib/crimg/crimg-loader:F"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(Binfmt::new("crimg-test-1").is_ok());
        for bad in ["", "register", "status", "a/b", "a:b", "a b"] {
            assert!(Binfmt::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn magic_matches_what_binfmt_misc_prints() {
        assert_eq!(magic_hex(), "7f454c4602010100004352494d470100");
    }
}
