//! What the dumper's live tests share: a root check, a scratch directory,
//! a C target program compiled for the test, and a guard that kills it.
#![allow(dead_code)] // each test file uses a different part

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir =
            TempDir(std::env::temp_dir().join(format!("crimg-{name}-{}", std::process::id())));
        let _ = std::fs::remove_dir_all(&dir.0);
        std::fs::create_dir(&dir.0).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Compiles `source` into `dir/target`; `None` (after saying so) when there
/// is no C compiler, so the caller can skip.
pub fn compile_c(dir: &Path, source: &str) -> Option<PathBuf> {
    let src = dir.join("target.c");
    let bin = dir.join("target");
    std::fs::write(&src, source).unwrap();
    match Command::new("cc").arg("-o").arg(&bin).arg(&src).status() {
        Ok(s) if s.success() => Some(bin),
        Ok(s) => panic!("cc failed: {s}"),
        Err(e) => {
            eprintln!("skipped: no C compiler (cc): {e}");
            None
        }
    }
}

/// A started program; killed (our child, so by its own pid) on drop.
pub struct Target(pub Child);

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
