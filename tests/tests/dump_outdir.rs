//! Where crdump writes: no path it writes can be redirected by a planted
//! link, a directory others can write into is refused unless forced, and a
//! process it may not trace is reported as such.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crimg_tests::cli::{run, CLI_TIMEOUT};
use crimg_tests::process::CheckTrigger;
use crimg_tests::roundtrip::{as_nobody, NOBODY};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, Workload};

fn loop_workload() -> Workload {
    Workload::start("loop.py", ["--interval-ms", "20"])
}

fn crdump_args(command: &mut Command, pid: i32, out: &Path, extra: &[&str]) {
    command
        .arg(&binaries().crdump)
        .arg("--pid")
        .arg(pid.to_string())
        .arg("-o")
        .arg(out)
        .arg("--leave-running")
        .args(extra);
}

#[test]
fn planted_symlinks_are_never_followed() {
    skip_unless_root!();
    let dir = scratch_dir();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700)).unwrap();
    let mut w = loop_workload();
    let pid = w.pid();
    // The names crdump used or uses: final ones, and the temporary ones of
    // earlier versions (with crdump's own pid, which is the shell's after
    // `exec`). The shell plants those, then becomes crdump.
    for name in ["manifest.json".to_owned(), format!("task-{pid}.crimg")] {
        symlink(&victim, out.join(name)).unwrap();
    }
    let mut shifted = Command::new("sh");
    shifted.arg("-c").arg(
        r#"v="$1"; o="$2"; p="$3"; shift 3; ln -s "$v" "$o/.manifest.json.tmp-$$" && ln -s "$v" "$o/.task-$p.crimg.tmp-$$" && exec "$@""#,
    );
    shifted
        .arg("sh")
        .arg(&victim)
        .arg(&out)
        .arg(pid.to_string());
    crdump_args(&mut shifted, pid, &out, &[]);
    let r = run(shifted, CLI_TIMEOUT).expect("run crdump");
    assert_eq!(
        fs::read(&victim).unwrap(),
        b"precious",
        "the victim was overwritten; crdump: {r:?}"
    );
    assert!(r.status.success(), "{r:?}");
    for name in ["manifest.json".to_owned(), format!("task-{pid}.crimg")] {
        let meta = fs::symlink_metadata(out.join(&name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is not the dump's file");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["processes"][0]["pid"], pid, "{manifest:#}");
    w.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn a_directory_others_can_write_into_is_refused_unless_forced() {
    skip_unless_root!();
    let dir = scratch_dir();
    let out = dir.path().join("shared");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o777)).unwrap();
    let mut w = loop_workload();
    let mut command = Command::new(&binaries().crdump);
    command
        .arg("--pid")
        .arg(w.pid().to_string())
        .arg("-o")
        .arg(&out)
        .arg("--leave-running");
    let r = run(command, CLI_TIMEOUT).expect("run crdump");
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains(out.to_str().unwrap())
            && lines[0].contains("writable by other users")
            && lines[0].contains("--force"),
        "{}",
        lines[0]
    );
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0, "files left");
    w.expect_pass(CheckTrigger::Stdin);

    let mut forced = Command::new(&binaries().crdump);
    forced
        .arg("--pid")
        .arg(w.pid().to_string())
        .arg("-o")
        .arg(&out)
        .arg("--leave-running")
        .arg("--force");
    let r = run(forced, CLI_TIMEOUT).expect("run crdump --force");
    assert!(r.status.success(), "{r:?}");
    assert!(out.join(format!("task-{}.crimg", w.pid())).is_file());
    w.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn a_process_of_another_user_is_reported_as_such() {
    skip_unless_root!();
    let dir = scratch_dir();
    // A place nobody can write to, so that only the trace is refused.
    let mine = dir.path().join("nobody");
    fs::create_dir(&mine).unwrap();
    let (uid, gid) = {
        let u = nix::unistd::User::from_name(NOBODY)
            .ok()
            .flatten()
            .expect("user nobody exists");
        (u.uid, u.gid)
    };
    nix::unistd::chown(&mine, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut w = loop_workload();
    let mut command = as_nobody();
    crdump_args(&mut command, w.pid(), &mine.join("out"), &[]);
    let r = run(command, CLI_TIMEOUT).expect("run crdump as nobody");
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let line = r.stderr.trim_end();
    assert!(
        line.contains(&format!("pid {}", w.pid()))
            && line.contains("permission denied")
            && line.contains("uid 0")
            && !line.contains("debugger"),
        "{line}"
    );
    w.expect_pass(CheckTrigger::Stdin);
}
