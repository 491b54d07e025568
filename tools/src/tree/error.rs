//! The one error of a tree restore, naming the pid, fd or path at fault;
//! each variant says which exit code class it belongs to.

use std::path::PathBuf;

/// Why a tree cannot be (or was not) restored.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The dump directory itself.
    #[error("{dir}: {source}")]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{dir}: {source}")]
    Manifest {
        dir: PathBuf,
        #[source]
        source: image_manifest::ManifestError,
    },
    #[error("{dir}: the manifest {why}")]
    BadManifest { dir: PathBuf, why: String },
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: crate::image_file::ImageFileError,
    },
    #[error("pid {pid} ({path}): {why}")]
    ImageRefused {
        pid: i32,
        path: PathBuf,
        why: String,
    },
    /// The process tree cannot be made as it was.
    #[error("pid {pid}: {why}")]
    Shape { pid: i32, why: String },
    /// `by`: who has it ([`super::pids::taken_by`]).
    #[error("pid {pid} is taken (by {by}); restore with --pidns")]
    PidTaken { pid: i32, by: String },
    #[error("pid {pid} fd {fd}: {why}")]
    Object { pid: i32, fd: i32, why: String },
    #[error("{what}: {source}")]
    Os {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A process of the tree failed to restore (or died before the tree
    /// resumed); `why` is its own message where it sent one.
    #[error("pid {pid}: {why}")]
    Process { pid: i32, why: String },
}

impl TreeError {
    /// The process's exit code for this error (documented in `--help`):
    /// 1 a bad dump or something this machine refuses before anything is
    /// made, 2 a pid taken, 3 a process that failed to restore.
    pub fn exit_code(&self) -> u8 {
        match self {
            TreeError::PidTaken { .. } => 2,
            TreeError::Process { .. } | TreeError::Object { .. } | TreeError::Os { .. } => 3,
            _ => 1,
        }
    }
}
