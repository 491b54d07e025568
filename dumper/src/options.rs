//! What the caller of a dump asks for besides the default.

/// What to do besides the default (kill after a complete dump).
#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// Detach and let the process run on instead of killing it.
    pub leave_running: bool,
    /// With `leave_running`: copy the pages a fork carries from a
    /// copy-on-write snapshot child after the tree resumes
    /// ([`crate::snapshot`]) instead of while it is frozen.
    pub snapshot: bool,
    /// With `snapshot`: always the copy-on-write child, never the
    /// write-protected snapshot ([`crate::snapshot::protected`]).
    pub fork_snapshot: bool,
    /// A snapshot dump's smaps of the tree, read before the freeze
    /// ([`crate::snapshot::Presample`]; set by [`crate::dump`]).
    pub presample: Option<std::sync::Arc<crate::snapshot::Presample>>,
    /// The process whose `uw` areas (registered with userfaultfd for
    /// write-protection) are this dump's own ([`crate::snapshot::protected`];
    /// set by [`crate::dump`]): no state of the process.
    pub own_uffd: Option<i32>,
    /// Dump even when some state cannot be kept; what is lost is listed in
    /// the image's warnings and the report.
    pub force: bool,
    /// The most bytes of one file's content saved in the image where pages
    /// of a mapping cannot carry it (deleted files, write-sealed memfds,
    /// small shared-mapped files kept to be recreated); `None`:
    /// [`DEFAULT_GHOST_LIMIT`].
    pub ghost_limit: Option<u64>,
    /// The tree the process is dumped with (set by [`crate::dump`] for
    /// every process it collects; `None`: a process alone, whose children
    /// are refused).
    pub tree: Option<TreeView>,
    /// The tree restorer's own rules (`crrestore-tree`'s plan, a pure
    /// function of the manifest), run on the manifest before any image is
    /// written: a tree the restorer would refuse is refused here, and the
    /// tree left running. `None`: not checked (the library alone cannot
    /// link the restorer, which links it).
    pub tree_rules: Option<TreeRules>,
    /// `--parent PREV`: write incremental images over `PREV`'s
    /// ([`crate::incremental`]).
    pub parent: Option<std::path::PathBuf>,
    /// With `leave_running`: track the pages written from this dump on
    /// (`crate::incremental::track`), for the next `--parent` dump.
    pub track: bool,
}

/// Why the tree restorer would refuse the tree `manifest` describes.
pub type TreeRules = fn(&image_manifest::Manifest) -> Result<(), String>;

/// What the collection of one process of a tree must know of the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeView {
    /// The tree's root (the pid crdump was given).
    pub root: i32,
    /// Every process of the tree (zombies too), sorted.
    pub pids: Vec<i32>,
    /// This process's fds that are on one open file description with a
    /// stdio fd of the root that the loader inherits from the caller
    /// (`binfmt_loader::rules::fd_is_inherited`): (fd, the root's fd).
    /// They are the caller's here too, whoever else holds them.
    pub caller_fds: Vec<(i32, i32)>,
}

impl TreeView {
    /// Whether `pid` is a process of the tree.
    pub fn contains(&self, pid: i32) -> bool {
        self.pids.binary_search(&pid).is_ok()
    }

    /// The root's stdio fd that fd `fd` of this process is a copy of.
    pub fn caller_fd(&self, fd: i32) -> Option<i32> {
        self.caller_fds
            .iter()
            .find(|&&(f, _)| f == fd)
            .map(|&(_, n)| n)
    }
}

/// `--ghost-limit` by default: 4 MiB (CRIU's is 1 MiB; a JVM's perf-data
/// file is 32 KiB). The content goes into the image's notes, which a
/// reader accepts up to 64 MiB in all.
pub const DEFAULT_GHOST_LIMIT: u64 = 4 << 20;

impl DumpOptions {
    /// The `--ghost-limit` in force.
    pub fn ghost_limit(&self) -> u64 {
        self.ghost_limit.unwrap_or(DEFAULT_GHOST_LIMIT)
    }

    /// Split the other processes holding one of this process's objects
    /// into those of the tree and those outside it.
    pub fn split_holders(&self, others: &[i32]) -> (Vec<i32>, Vec<i32>) {
        match &self.tree {
            Some(t) => others.iter().partition(|&&p| t.contains(p)),
            None => (Vec::new(), others.to_vec()),
        }
    }
}
