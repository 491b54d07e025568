//! `manifest.json`: which image belongs to which process, and how the
//! processes relate. Versioned, written atomically.

use std::fs::{self, File, OpenOptions};
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
}

/// Write `manifest` as `dir/manifest.json`: to a temporary file, fsynced,
/// then renamed over the old one.
pub fn write(dir: &Path, manifest: &Manifest) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(manifest).map_err(io::Error::other)?;
    let tmp = dir.join(format!(".{FILE_NAME}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&json)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(FILE_NAME))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
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
}
