//! What a successful dump did: the report `crdump` prints.

use std::path::PathBuf;
use std::time::Duration;

/// One memory area and how much of it went into the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaStat {
    pub start: u64,
    pub end: u64,
    /// One of `image_format::records::vma_kind`.
    pub kind: u32,
    /// `PROT_*` bits.
    pub prot: u32,
    pub path: String,
    pub stored_pages: u64,
}

/// Where the time of a dump went.
#[derive(Clone, Copy, Debug, Default)]
pub struct Phases {
    pub freeze: Duration,
    pub collect: Duration,
    /// Copying pages and writing the image (into the page cache).
    pub write: Duration,
    /// Making the image and manifest durable (fsync) and renaming them into
    /// place: the process is killed only after this.
    pub sync: Duration,
    /// `--leave-running`: making the copy-on-write snapshot children and
    /// copying what they do not carry, while frozen (part of `collect`'s
    /// frozen time, not of `write`).
    pub snapshot: Duration,
    /// `--leave-running`: the longest a process was stopped again, after
    /// its image was written, to reap its snapshot child.
    pub reap_stop: Duration,
    /// `--leave-running --snapshot` write-protected: how long the process
    /// was stopped, before the freeze, to make its userfaultfd (counted in
    /// [`DumpReport::frozen_for`]).
    pub arm_stop: Duration,
}

/// What a successful dump did.
#[derive(Clone, Debug)]
pub struct DumpReport {
    pub pid: i32,
    pub threads: Vec<i32>,
    pub image: PathBuf,
    pub manifest: PathBuf,
    /// Size of the image file.
    pub bytes_written: u64,
    /// Pages whose contents are in the image.
    pub pages_stored: u64,
    /// From the start of the freeze to the release.
    pub duration: Duration,
    /// How long the process was stopped before the image was complete.
    pub frozen_for: Duration,
    /// Time spent freezing, collecting state, and writing the image.
    pub phases: Phases,
    pub vmas: Vec<VmaStat>,
    /// State that could not be kept (only with `force`, plus notes).
    pub warnings: Vec<String>,
    /// The process was left running (else it was killed).
    pub left_running: bool,
    /// The other live processes of the tree (the root's report only; the
    /// times above are the tree's).
    pub others: Vec<DumpReport>,
    /// The tree's zombies and how they ended (the root's report only).
    pub zombies: Vec<(i32, image_manifest::WaitStatus)>,
    /// How many objects the manifest lists as shared in the tree.
    pub shared_objects: usize,
    /// An incremental image: what it stored and took from its parent.
    pub incremental: Option<crate::incremental::Split>,
    /// A snapshot dump: the method used (and why not the other).
    pub snapshot_method: Option<String>,
}

impl DumpReport {
    /// The root's report, then every other process's.
    pub fn processes(&self) -> impl Iterator<Item = &DumpReport> {
        std::iter::once(self).chain(&self.others)
    }
}
