//! `crimg check` reports what this machine allows, by trying it: as root
//! everything crimg needs works here; as nobody the privileged parts are
//! warnings, not failures.

use std::time::Duration;

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

#[test]
fn check_reports_what_this_machine_allows() {
    skip_unless_root!();
    let out = run(binaries().crimg_command(["check", "--json"]), CLI_TIMEOUT).unwrap();
    assert!(
        out.status.success(),
        "{:?}\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let all = verdicts(&out.stdout);
    for name in [
        "kernel",
        "ptrace seize and interrupt",
        "vDSO layout",
        "XSAVE features (XCR0)",
        "clone3 with set_tid",
    ] {
        assert_eq!(verdict(&all, name), "ok", "{name}: {}", out.stdout);
    }
    assert!(all.iter().all(|(_, v)| v != "fail"), "{}", out.stdout);
}

#[test]
fn unprivileged_check_warns_instead_of_failing() {
    skip_unless_root!();
    let mut command = as_nobody();
    command.arg(&binaries().crimg).args(["check", "--json"]);
    let out = run(command, Duration::from_secs(60)).unwrap();
    assert!(
        out.status.success(),
        "{:?}\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    let all = verdicts(&out.stdout);
    assert_eq!(
        verdict(&all, "checkpoint/restore capability"),
        "warn",
        "{}",
        out.stdout
    );
    assert_eq!(
        verdict(&all, "clone3 with set_tid"),
        "warn",
        "{}",
        out.stdout
    );
    assert_eq!(
        verdict(&all, "ptrace seize and interrupt"),
        "ok",
        "{}",
        out.stdout
    );
}
