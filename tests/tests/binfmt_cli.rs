//! `crimg binfmt install|status|uninstall` under an entry name of this
//! test's own (never the system's `crimg` entry): registering twice is
//! idempotent (the second registers again, so flag F pins the loader file
//! now at the path), status reports it, uninstall removes it.

use crimg_tests::cli::{run, CLI_TIMEOUT};
use crimg_tests::{binaries, skip_unless_root};

fn crimg(args: &[&str]) -> (Option<i32>, String) {
    let out = run(binaries().crimg_command(args), CLI_TIMEOUT).unwrap();
    (out.status.code(), format!("{}{}", out.stdout, out.stderr))
}

/// Removes the entry if the test stops half way.
struct Entry(String);

impl Drop for Entry {
    fn drop(&mut self) {
        let path = format!("/proc/sys/fs/binfmt_misc/{}", self.0);
        if std::path::Path::new(&path).exists() {
            let _ = std::fs::write(path, "-1");
        }
    }
}

#[test]
fn install_is_idempotent_and_uninstall_removes_it() {
    skip_unless_root!();
    let entry = Entry(format!("crimg-test-cli-{}", std::process::id()));
    let name = entry.0.as_str();
    let loader = binaries().loader.display().to_string();
    let install = [
        "binfmt",
        "install",
        "--name",
        name,
        "--no-persist",
        "--loader",
        &loader,
    ];

    let (code, out) = crimg(&install);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(": registered"), "{out}");
    let (code, out) = crimg(&install);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("registered again"), "{out}");

    let (code, out) = crimg(&["binfmt", "status", "--name", name, "--json"]);
    assert_eq!(code, Some(0), "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["registered"], true, "{out}");
    assert_eq!(status["entry"]["interpreter"], loader.as_str(), "{out}");
    assert_eq!(status["entry"]["flags"], "F", "{out}");
    assert_eq!(
        status["persisted"], false,
        "--no-persist wrote /etc/binfmt.d: {out}"
    );

    let (code, out) = crimg(&["binfmt", "uninstall", "--name", name]);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = crimg(&["binfmt", "status", "--name", name]);
    assert_eq!(code, Some(3), "status of a removed entry: {out}");
    assert!(out.contains("not registered"), "{out}");
}
