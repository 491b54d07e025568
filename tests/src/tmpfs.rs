//! A tmpfs mounted for one test (a small one to fill, a read-only or
//! `noexec` one), detached when the guard drops, even on panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{MntFlags, MsFlags};

/// A tmpfs mounted on a directory for the life of the guard.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mount a tmpfs with mount(8) `options` (`size=1m,mode=0700`,
    /// `ro,size=1m`) on `dir`, made first if missing.
    pub fn mount(dir: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "crimg-test"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }

    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// Remount it `noexec` (the mount's flags only).
    pub fn make_noexec(&self) {
        nix::mount::mount(
            None::<&str>,
            &self.0,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .unwrap_or_else(|err| panic!("remount {} noexec: {err}", self.0.display()));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, MntFlags::MNT_DETACH);
    }
}
