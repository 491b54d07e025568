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
/// The manifest version this crate writes. Version 1 (one process, no
/// shared objects) is still read.
pub const VERSION: u32 = 2;
/// The oldest version read.
pub const OLDEST_VERSION: u32 = 1;
/// File name of the manifest in the output directory.
pub const FILE_NAME: &str = "manifest.json";

/// A manifest that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a crimg manifest: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not a crimg manifest (format {found:?}, expected {FORMAT:?})")]
    Format { found: String },
    #[error("manifest version {found} is not supported (this reader knows versions {OLDEST_VERSION} to {VERSION})")]
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

/// A dump: the tree of processes crdump froze together (the pid it was
/// given, `root`, and every descendant), which image holds each, and the
/// objects two or more of them hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The pid crdump was given: the tree's root (0 in a version-1
    /// manifest, whose one process is the root).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub root: i32,
    /// Every process of the tree, zombies too, sorted by pid.
    pub processes: Vec<ManifestProcess>,
    /// The objects held by more than one process of the tree, and the
    /// root's stdio that other processes of the tree hold too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<SharedObject>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestProcess {
    pub pid: i32,
    /// The parent's pid (outside the tree for the root).
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    /// Image file name, relative to the manifest (`None` for a zombie:
    /// nothing of it is left to save but its exit status).
    pub image: Option<String>,
    /// Thread ids, the leader first (empty for a zombie).
    pub threads: Vec<i32>,
    /// `/proc/P/comm`, for messages and listings.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comm: String,
    /// The controlling terminal's device number (`stat` field 7, 0: none).
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub tty_nr: u64,
    /// The foreground process group of that terminal (`stat` field 8;
    /// 0 or -1: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tpgid: i32,
    /// A zombie (exited, not yet reaped by its parent): its wait status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zombie: Option<WaitStatus>,
}

/// How a zombie ended, as `waitpid` will tell its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitStatus {
    /// `_exit(code)`.
    Exited(i32),
    /// Killed by that signal.
    Signaled(i32),
}

impl WaitStatus {
    /// From the raw status (`stat` field 52, as `waitpid` gives it).
    pub fn from_raw(raw: i32) -> Self {
        if raw & 0x7f == 0 {
            WaitStatus::Exited((raw >> 8) & 0xff)
        } else {
            WaitStatus::Signaled(raw & 0x7f)
        }
    }
}

/// What kind of object several processes hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedKind {
    /// One open file description of a regular file, directory or device
    /// (one offset, one set of status flags).
    File,
    /// A pipe: its ends' descriptions, with the data in it.
    Pipe,
    /// A FIFO opened by path: its descriptions, with the data in it.
    Fifo,
    /// One open file description of an eventfd, signalfd, timerfd or
    /// inotify instance.
    Event,
    /// A memfd or shared anonymous memory (a shmem inode): its fds and the
    /// areas that map it.
    Shmem,
    /// Not the tree's: the root's stdio fd `caller_fd` (a terminal, or a
    /// pipe or socket whose other end is outside the tree), which the
    /// restorer takes from its own caller, as a direct run does.
    Caller,
}

/// One object held by more than one process of the tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedObject {
    pub kind: SharedKind,
    /// For [`SharedKind::Caller`]: the root's stdio fd (0, 1 or 2) it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller_fd: Option<i32>,
    /// Where each process has it.
    pub holders: Vec<Holder>,
}

/// One place a process holds a shared object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: i32,
    /// The fd number; `None` for an area mapping a shmem object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fd: Option<i32>,
    /// Which open file description of the object the fd is on, 1-based
    /// within the object (a pipe's read end and write end are two; a file
    /// shared after fork is one): holders with the same `desc` share one
    /// offset and one set of flags. 0 for an area.
    #[serde(default)]
    pub desc: u32,
    /// For a shmem object: its 1-based index in that process's image's
    /// SHMEM note (the `object` of its fd and area records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shmem: Option<u32>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl Manifest {
    /// A manifest of one process without shared objects.
    pub fn new(processes: Vec<ManifestProcess>) -> Self {
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            root: processes.first().map_or(0, |p| p.pid),
            processes,
            shared: Vec::new(),
        }
    }

    /// The tree's root: `root`, or in a version-1 manifest its process.
    pub fn root_pid(&self) -> Option<i32> {
        if self.root != 0 {
            Some(self.root)
        } else {
            self.processes.first().map(|p| p.pid)
        }
    }

    /// The process `pid`.
    pub fn process(&self, pid: i32) -> Option<&ManifestProcess> {
        self.processes.iter().find(|p| p.pid == pid)
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
        if !(OLDEST_VERSION..=VERSION).contains(&header.version) {
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
            .filter(|p| {
                p.pid != process.pid && p.image.as_ref().is_some_and(|i| dir.join(i).is_file())
            })
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
            image: Some("task-5.crimg".into()),
            threads: vec![5, 6],
            comm: String::new(),
            tty_nr: 0,
            tpgid: 0,
            zombie: None,
        }]);
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["format"], "crimg-manifest");
        assert_eq!(v["version"], 2);
        assert_eq!(v["root"], 5);
        assert_eq!(v["processes"][0]["image"], "task-5.crimg");
        assert_eq!(v["processes"][0]["threads"][1], 6);
    }

    /// Version 1 as the dumper wrote it: it must keep parsing.
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
    fn version_1_is_still_read() {
        let m = Manifest::parse(GOLDEN_V1.as_bytes()).unwrap();
        assert_eq!(m.processes[0].threads, vec![5, 6]);
        assert_eq!(m.processes[0].image.as_deref(), Some("task-5.crimg"));
        assert_eq!(m.root_pid(), Some(5));
        assert!(m.shared.is_empty());
    }

    /// Version 2 exactly as the dumper writes it: this text must keep
    /// parsing, and keep being what is written, while the version is 2.
    const GOLDEN_V2: &str = r#"{
  "format": "crimg-manifest",
  "version": 2,
  "root": 10,
  "processes": [
    {
      "pid": 10,
      "ppid": 1,
      "pgid": 10,
      "sid": 10,
      "image": "task-10.crimg",
      "threads": [
        10
      ],
      "comm": "sh",
      "tty_nr": 34816,
      "tpgid": 10
    },
    {
      "pid": 11,
      "ppid": 10,
      "pgid": 10,
      "sid": 10,
      "image": null,
      "threads": [],
      "comm": "true",
      "zombie": {
        "exited": 3
      }
    }
  ],
  "shared": [
    {
      "kind": "pipe",
      "holders": [
        {
          "pid": 10,
          "fd": 1,
          "desc": 1
        },
        {
          "pid": 12,
          "fd": 0,
          "desc": 2
        }
      ]
    },
    {
      "kind": "caller",
      "caller_fd": 2,
      "holders": [
        {
          "pid": 10,
          "fd": 2,
          "desc": 1
        }
      ]
    },
    {
      "kind": "shmem",
      "holders": [
        {
          "pid": 10,
          "desc": 0,
          "shmem": 1
        }
      ]
    }
  ]
}
"#;

    #[test]
    fn version_2_is_stable() {
        let m = Manifest::parse(GOLDEN_V2.as_bytes()).unwrap();
        assert_eq!(m.root_pid(), Some(10));
        assert_eq!(m.process(11).unwrap().zombie, Some(WaitStatus::Exited(3)));
        assert_eq!(m.shared[0].kind, SharedKind::Pipe);
        assert_eq!(m.shared[1].caller_fd, Some(2));
        assert_eq!(m.shared[2].holders[0].shmem, Some(1));
        assert_eq!(String::from_utf8(m.to_bytes()).unwrap(), GOLDEN_V2);
    }

    #[test]
    fn wait_status_from_raw() {
        assert_eq!(WaitStatus::from_raw(3 << 8), WaitStatus::Exited(3));
        assert_eq!(WaitStatus::from_raw(9), WaitStatus::Signaled(9));
        // A core dump flag (0x80) does not change the signal.
        assert_eq!(WaitStatus::from_raw(0x80 | 11), WaitStatus::Signaled(11));
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
            image: Some("elsewhere.json".into()),
            threads: vec![9],
            comm: String::new(),
            tty_nr: 0,
            tpgid: 0,
            zombie: None,
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
            image: Some(format!("task-{pid}.crimg")),
            threads: vec![pid],
            comm: String::new(),
            tty_nr: 0,
            tpgid: 0,
            zombie: None,
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
