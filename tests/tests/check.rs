//! `crimg check` reports what this machine allows, by trying it: as root
//! everything crimg needs works here; as nobody the privileged parts are
//! warnings, not failures.

use crimg_tests::cli::{run, CLI_TIMEOUT};
use crimg_tests::roundtrip::as_nobody;
use crimg_tests::{binaries, skip_unless_root};

fn verdicts(json: &str) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_str(json).expect("crimg check --json prints JSON");
    v.as_array()
        .expect("a list of checks")
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn verdict<'a>(all: &'a [(String, String)], name: &str) -> &'a str {
    &all.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {all:?}"))
        .1
}

/// Runs `crimg check --json` (as `command`), which must succeed; its
/// verdicts by check name, and its output for messages.
fn run_check(command: std::process::Command) -> (Vec<(String, String)>, String) {
    let out = run(command, CLI_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "{:?}\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    (verdicts(&out.stdout), out.stdout)
}

#[test]
fn check_reports_what_this_machine_allows() {
    skip_unless_root!();
    let (all, out) = run_check(binaries().crimg_command(["check", "--json"]));
    for name in [
        "kernel",
        "ptrace seize and interrupt",
        "vDSO layout",
        "XSAVE features (XCR0)",
        "clone3 with set_tid",
    ] {
        assert_eq!(verdict(&all, name), "ok", "{name}: {}", out);
    }
    assert!(all.iter().all(|(_, v)| v != "fail"), "{}", out);
}

#[test]
fn unprivileged_check_warns_instead_of_failing() {
    skip_unless_root!();
    let mut command = as_nobody();
    command.arg(&binaries().crimg).args(["check", "--json"]);
    let (all, out) = run_check(command);
    assert_eq!(
        verdict(&all, "checkpoint/restore capability"),
        "warn",
        "{}",
        out
    );
    assert_eq!(verdict(&all, "clone3 with set_tid"), "warn", "{}", out);
    assert_eq!(verdict(&all, "ptrace seize and interrupt"), "ok", "{}", out);
}
