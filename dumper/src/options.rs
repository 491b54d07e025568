//! What the caller of a dump asks for besides the default.

/// What to do besides the default (kill after a complete dump).
#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// Detach and let the process run on instead of killing it.
    pub leave_running: bool,
    /// Dump even when some state cannot be kept; what is lost is listed in
    /// the image's warnings and the report.
    pub force: bool,
}
