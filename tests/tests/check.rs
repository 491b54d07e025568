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
        "POSIX timers with their ids",
        "lazy restore (userfaultfd)",
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
    let uffd = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd").unwrap_or_default();
    if uffd.trim() == "0" {
        assert_eq!(
            verdict(&all, "lazy restore (userfaultfd)"),
            "warn",
            "{}",
            out
        );
    }
}

/// `crimg check --json --binfmt-name NAME`: exit status, verdict and detail
/// of the binfmt check.
fn binfmt_verdict(entry: &str) -> (bool, String, String) {
    let out = run(
        binaries().crimg_command(["check", "--json", "--binfmt-name", entry]),
        CLI_TIMEOUT,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("JSON");
    let c = v
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "binfmt_misc entry")
        .expect("a binfmt check")
        .clone();
    (
        out.status.success(),
        c["verdict"].as_str().unwrap().to_owned(),
        c["detail"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn check_says_what_the_binfmt_flags_mean() {
    skip_unless_root!();
    let bins = binaries();
    let entry = crimg_tests::TestBinfmt::register(&bins.loader).unwrap();
    let (ok, verdict, detail) = binfmt_verdict(entry.name());
    assert!(ok, "{detail}");
    assert_eq!(verdict, "ok", "{detail}");
    assert!(
        detail.contains("credentials of whoever runs them") && detail.contains("F:"),
        "{detail}"
    );
}

#[test]
fn check_fails_on_an_entry_that_would_run_images_with_their_owners_credentials() {
    skip_unless_root!();
    let bins = binaries();
    // Another format version's magic: no image of any test matches it, so
    // this dangerous entry never runs anything while it exists.
    let mut magic = image_format::IDENT;
    magic[14] = 0xfe;
    let entry = crimg_tests::TestBinfmt::register_with(&bins.loader, &magic, "FC").unwrap();
    let (ok, verdict, detail) = binfmt_verdict(entry.name());
    assert!(!ok, "crimg check must exit non-zero: {detail}");
    assert_eq!(verdict, "fail", "{detail}");
    assert!(detail.contains("flag C"), "{detail}");
    assert!(detail.contains("image format"), "{detail}");
}
