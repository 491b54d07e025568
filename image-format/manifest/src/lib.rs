//! `manifest.json`: which image belongs to which process, and how the
//! processes relate. A format of its own beside the image format (the
//! dumper writes it, the tree restorer reads it): it names itself
//! (`format`) and carries its own `version`, which [`Manifest::parse`]
//! checks before anything else is trusted. The dumper makes it durable and
//! gives it its name atomically (`dumper::publish`).

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

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

/// A manifest that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a crimg manifest: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not a crimg manifest (format {found:?}, expected {FORMAT:?})")]
    Format { found: String },
    #[error("manifest version {found} is not supported (this reader knows version {VERSION})")]
    Version { found: u32 },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Only the fields that say what a file is, read before the rest: a newer
/// version may change everything else.
#[derive(Deserialize)]
struct Header {
    format: String,
    version: u32,
}

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

    /// Parse a manifest, refusing another format and another version
    /// before the processes are decoded.
    pub fn parse(bytes: &[u8]) -> Result<Self, ManifestError> {
        let header: Header = serde_json::from_slice(bytes).map_err(ManifestError::Json)?;
        if header.format != FORMAT {
            return Err(ManifestError::Format {
                found: header.format,
            });
        }
        if header.version != VERSION {
            return Err(ManifestError::Version {
                found: header.version,
            });
        }
        serde_json::from_slice(bytes).map_err(ManifestError::Json)
    }

    /// Read and parse the `manifest.json` of dump directory `dir`. A
    /// symlink in its place is refused (`O_NOFOLLOW`), and so is anything
    /// but a regular file.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(FILE_NAME);
        let bytes = read_regular(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        Manifest::parse(&bytes)
    }

    /// The manifest as written: pretty JSON and a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain strings and integers cannot fail.
        let mut json = serde_json::to_vec_pretty(self).unwrap_or_default();
        json.push(b'\n');
        json
    }

    /// The manifest `dir` will have with `process` dumped into it: the
    /// processes an earlier dump listed there (whose images still exist)
    /// and `process`, which replaces an entry for the same pid. A missing,
    /// unreadable or foreign `manifest.json` lists nothing to keep.
    pub fn with_process(dir: &Path, process: ManifestProcess) -> Self {
        let earlier = Manifest::read(dir).map(|m| m.processes).unwrap_or_default();
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
/// directory, see `dumper::outdir`) and make it durable; it gets its name only when
/// the dump is published, so no name is ever opened for writing.
pub fn write_to(file: &File, manifest: &Manifest) -> io::Result<()> {
    let mut f = file;
    f.write_all(&manifest.to_bytes())?;
    f.sync_all()
}

/// The bytes of `path` if it is a regular file: a symlink in its place is
/// not followed (`O_NOFOLLOW`), nor is a FIFO waited on.
fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut f, &mut bytes)?;
    Ok(bytes)
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

    /// Version 1 exactly as the dumper writes it: this text must keep
    /// parsing, and keep being what is written, while the version is 1.
    const GOLDEN_V1: &str = r#"{
  "format": "crimg-manifest",
  "version": 1,
  "processes": [
    {
      "pid": 5,
      "ppid": 1,
      "pgid": 5,
      "sid": 5,
      "image": "task-5.crimg",
      "threads": [
        5,
        6
      ]
    }
  ]
}
"#;

    #[test]
    fn version_1_is_stable() {
        let m = Manifest::parse(GOLDEN_V1.as_bytes()).unwrap();
        assert_eq!(m.processes[0].threads, vec![5, 6]);
        assert_eq!(String::from_utf8(m.to_bytes()).unwrap(), GOLDEN_V1);
    }

    #[test]
    fn the_reader_checks_format_and_version() {
        let m = Manifest::new(vec![]);
        assert_eq!(Manifest::parse(&m.to_bytes()).unwrap(), m);
        let mut newer = serde_json::to_value(&m).unwrap();
        newer["version"] = (VERSION + 1).into();
        // A newer version may change the processes' shape: not decoded.
        newer["processes"] = "something else".into();
        let bytes = serde_json::to_vec(&newer).unwrap();
        assert!(matches!(
            Manifest::parse(&bytes),
            Err(ManifestError::Version { found }) if found == VERSION + 1
        ));
        let mut foreign = serde_json::to_value(&m).unwrap();
        foreign["format"] = "something".into();
        let bytes = serde_json::to_vec(&foreign).unwrap();
        assert!(matches!(
            Manifest::parse(&bytes),
            Err(ManifestError::Format { .. })
        ));
        assert!(matches!(
            Manifest::parse(b"[1, 2]"),
            Err(ManifestError::Json(_))
        ));
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
        assert!(read_regular(&dir.join(FILE_NAME)).is_err());
        assert!(matches!(
            Manifest::read(&dir),
            Err(ManifestError::Io { .. })
        ));
        // The same file in its place is read.
        fs::remove_file(dir.join(FILE_NAME)).unwrap();
        fs::copy(&elsewhere, dir.join(FILE_NAME)).unwrap();
        assert_eq!(Manifest::read(&dir).unwrap(), earlier);
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
