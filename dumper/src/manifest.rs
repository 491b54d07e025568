//! `manifest.json`: which image belongs to which process, and how the
//! processes relate. Versioned, written atomically.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The value of `format`.
pub const FORMAT: &str = "crimg-manifest";
/// The manifest version this crate writes.
pub const VERSION: u32 = 1;
/// File name of the manifest in the output directory.
pub const FILE_NAME: &str = "manifest.json";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub processes: Vec<ManifestProcess>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestProcess {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Image file name, relative to the manifest.
    pub image: String,
    /// Thread ids, the leader first.
    pub threads: Vec<i32>,
}

impl Manifest {
    pub fn new(processes: Vec<ManifestProcess>) -> Self {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            processes,
        }
    }

    /// The manifest `dir` will have with `process` dumped into it: the
    /// processes an earlier dump listed there (whose images still exist)
    /// and `process`, which replaces an entry for the same pid. A missing,
    /// unreadable or foreign `manifest.json` lists nothing to keep.
    pub fn with_process(dir: &Path, process: ManifestProcess) -> Self {
        let earlier = fs::read(dir.join(FILE_NAME))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Manifest>(&bytes).ok())
            .filter(|m| m.format == FORMAT && m.version == VERSION)
            .map(|m| m.processes)
            .unwrap_or_default();
        let mut processes: Vec<ManifestProcess> = earlier
            .into_iter()
            .filter(|p| p.pid != process.pid && dir.join(&p.image).is_file())
            .collect();
        processes.push(process);
        processes.sort_by_key(|p| p.pid);
        Manifest::new(processes)
    }
}

/// A manifest written and fsynced under a temporary name in its directory,
/// not yet in place: [`Self::commit`] renames it to `manifest.json`.
/// Dropped uncommitted, the temporary file is removed.
pub struct PendingManifest {
    tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

/// Write `manifest` to a temporary file in `dir` and fsync it; nothing is
/// visible under `manifest.json` until [`PendingManifest::commit`].
pub fn write_temp(dir: &Path, manifest: &Manifest) -> io::Result<PendingManifest> {
    let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    let pending = PendingManifest {
        tmp: dir.join(format!(".{FILE_NAME}.tmp-{}", std::process::id())),
        dest: dir.join(FILE_NAME),
        committed: false,
    };
    let mut f: File = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&pending.tmp)?;
    f.write_all(&json)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(pending)
}

impl PendingManifest {
    /// Where the manifest goes (`dir/manifest.json`).
    pub fn path(&self) -> &Path {
        &self.dest
    }

    /// Rename the manifest into place, replacing an older one. The caller
    /// fsyncs the directory (once, after renaming the images too).
    pub fn commit(mut self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingManifest {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let m = Manifest::new(vec![ManifestProcess {
            pid: 5,
            ppid: 1,
            pgid: 5,
            sid: 5,
            image: "task-5.crimg".into(),
            threads: vec![5, 6],
        }]);
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["format"], "crimg-manifest");
        assert_eq!(v["version"], 1);
        assert_eq!(v["processes"][0]["image"], "task-5.crimg");
        assert_eq!(v["processes"][0]["threads"][1], 6);
    }

    #[test]
    fn nothing_is_visible_until_commit() {
        let dir = std::env::temp_dir().join(format!("crimg-manifest-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        let m = Manifest::new(Vec::new());
        let pending = write_temp(&dir, &m).unwrap();
        assert!(!dir.join(FILE_NAME).exists());
        drop(pending);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "temporary file left"
        );
        write_temp(&dir, &m).unwrap().commit().unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
        let back: Manifest =
            serde_json::from_slice(&fs::read(dir.join(FILE_NAME)).unwrap()).unwrap();
        assert_eq!(back, m);
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod with_process_tests {
    use super::*;

    fn entry(pid: i32) -> ManifestProcess {
        ManifestProcess {
            pid,
            ppid: 1,
            pgid: pid,
            sid: pid,
            image: format!("task-{pid}.crimg"),
            threads: vec![pid],
        }
    }

    #[test]
    fn keeps_earlier_dumps_whose_images_exist() {
        let dir = std::env::temp_dir().join(format!("crimg-manifest-merge-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        // Nothing there yet: just the new process.
        assert_eq!(
            Manifest::with_process(&dir, entry(20)).processes,
            vec![entry(20)]
        );
        let earlier = Manifest::new(vec![entry(10), entry(20), entry(30)]);
        fs::write(dir.join(FILE_NAME), serde_json::to_vec(&earlier).unwrap()).unwrap();
        fs::write(dir.join("task-10.crimg"), b"").unwrap();
        fs::write(dir.join("task-20.crimg"), b"").unwrap();
        // 30's image is gone; 20 is replaced by the new dump of 20.
        let mut again = entry(20);
        again.threads = vec![20, 21];
        let m = Manifest::with_process(&dir, again.clone());
        assert_eq!(m.processes, vec![entry(10), again]);
        // A foreign file is not trusted.
        fs::write(dir.join(FILE_NAME), b"{\"something\": 1}").unwrap();
        assert_eq!(
            Manifest::with_process(&dir, entry(5)).processes,
            vec![entry(5)]
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
