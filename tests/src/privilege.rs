//! Whether this test may do what it needs (ptrace any process, register
//! binfmt_misc entries), and a uniform way to skip when it may not.

/// The effective user is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Print the line that marks a test as skipped, `skipped: <reason>`.
/// (Cargo's test runner has no skip state: the test passes, and this line in
/// its output says it did nothing.)
pub fn report_skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

/// Return from the calling test (printing `skipped: ...`) unless running as
/// root.
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
        if !$crate::privilege::is_root() {
            $crate::privilege::report_skip("needs root (ptrace, binfmt_misc)");
            return;
        }
    };
}
