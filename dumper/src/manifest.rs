//! `manifest.json`: which image belongs to which process, and how the
//! processes relate. Versioned, written atomically.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

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
        let earlier = read_earlier(&dir.join(FILE_NAME))
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

/// Write `manifest` into `file` (an anonymous file of the output
/// directory, see `outdir`) and make it durable; it gets its name only when
/// the dump is published, so no name is ever opened for writing.
pub fn write_to(file: &File, manifest: &Manifest) -> io::Result<()> {
    let mut json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    json.push(b'\n');
    let mut f = file;
    f.write_all(&json)?;
    f.sync_all()
}

/// The bytes of an earlier `manifest.json`, if it is a regular file: a
/// symlink in its place is not followed (`O_NOFOLLOW`), nor is a FIFO
/// waited on.
fn read_earlier(path: &Path) -> Option<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut f, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
    fn an_earlier_manifest_behind_a_symlink_is_not_read() {
        let dir = std::env::temp_dir().join(format!("crimg-manifest-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).unwrap();
        let elsewhere = dir.join("elsewhere.json");
        let earlier = Manifest::new(vec![ManifestProcess {
            pid: 9,
            ppid: 1,
            pgid: 9,
            sid: 9,
            image: "elsewhere.json".into(),
            threads: vec![9],
        }]);
        fs::write(&elsewhere, serde_json::to_vec(&earlier).unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(FILE_NAME)).unwrap();
        assert!(read_earlier(&dir.join(FILE_NAME)).is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod with_process_tests {
    use super::*;
    use std::fs;

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
