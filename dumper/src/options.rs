//! What the caller of a dump asks for besides the default.

/// What to do besides the default (kill after a complete dump).
#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// Detach and let the process run on instead of killing it.
    pub leave_running: bool,
    /// Dump even when some state cannot be kept; what is lost is listed in
    /// the image's warnings and the report.
    pub force: bool,
    /// The most bytes of one file's content saved in the image where pages
    /// of a mapping cannot carry it (deleted files, write-sealed memfds,
    /// small shared-mapped files kept to be recreated); `None`:
    /// [`DEFAULT_GHOST_LIMIT`].
    pub ghost_limit: Option<u64>,
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
}
