//! Whether this test may do what it needs (ptrace any process, register
//! binfmt_misc entries), and a uniform way to skip when it may not.
//!
//! A skip is honest only where root may be missing: CI runs as root, and
//! there a test that finds itself unprivileged is a broken setup, not a
//! pass. `CRIMG_TESTS_REQUIRE_ROOT=1` (which `tools/test.sh` sets when `CI`
//! is set) turns every [`skip_unless_root!`] into a failure.

/// The variable that makes root required: `1` means a test that needs root
/// fails instead of skipping.
pub const REQUIRE_ROOT_VAR: &str = "CRIMG_TESTS_REQUIRE_ROOT";

/// The effective user is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether this run says root is required ([`REQUIRE_ROOT_VAR`] is `1`).
pub fn root_required() -> bool {
    std::env::var_os(REQUIRE_ROOT_VAR).is_some_and(|v| v == "1")
}

/// What a test that needs root does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootDecision {
    Run,
    Skip,
    Fail,
}

/// Run as root; otherwise skip, or fail when root is required.
pub fn root_decision(is_root: bool, required: bool) -> RootDecision {
    match (is_root, required) {
        (true, _) => RootDecision::Run,
        (false, false) => RootDecision::Skip,
        (false, true) => RootDecision::Fail,
    }
}

/// Print the line that marks a test as skipped, `skipped: <reason>`.
/// (Cargo's test runner has no skip state: the test passes, and this line in
/// its output says it did nothing.)
pub fn report_skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

/// Whether the calling test must stop because it is not root: `true` after
/// printing `skipped: <reason>`; panics instead when root is required.
#[track_caller]
pub fn skip_without_root(reason: &str) -> bool {
    match root_decision(is_root(), root_required()) {
        RootDecision::Run => false,
        RootDecision::Skip => {
            report_skip(reason);
            true
        }
        RootDecision::Fail => panic!(
            "{reason}, and {REQUIRE_ROOT_VAR}=1 says this run has root: not skipping (run the tests as root, or unset {REQUIRE_ROOT_VAR})"
        ),
    }
}

/// Return from the calling test (printing `skipped: ...`) unless running as
/// root; fail instead when [`REQUIRE_ROOT_VAR`] is `1`.
///
/// ```ignore
/// #[test]
/// fn dumps_counter() {
///     crimg_tests::skip_unless_root!();
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! skip_unless_root {
    () => {
        if $crate::privilege::skip_without_root("needs root (ptrace, binfmt_misc)") {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::{root_decision, RootDecision};

    #[test]
    fn without_root_a_test_skips_unless_root_is_required() {
        assert_eq!(root_decision(true, false), RootDecision::Run);
        assert_eq!(root_decision(true, true), RootDecision::Run);
        assert_eq!(root_decision(false, false), RootDecision::Skip);
        assert_eq!(root_decision(false, true), RootDecision::Fail);
    }
}
