//! Where crdump writes: no path it writes can be redirected by a planted
//! link, a directory others can write into is refused unless forced, and a
//! process it may not trace is reported as such.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
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

/// Dump `w` into a fresh 0700 `out` in which symlinks to a victim file
/// outside were planted at the final names and at the temporary names in
/// `temporaries` (`{pid}`: the target's pid; `$$`: crdump's own, which is
/// the planting shell's after `exec`); the victim must stay unchanged and
/// the dump must succeed, its files replacing the links.
fn dump_among_planted_links(w: &mut Workload, temporaries: &[&str]) {
    let dir = scratch_dir();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o700)).unwrap();
    let pid = w.pid();
    let finals = ["manifest.json".to_owned(), format!("task-{pid}.crimg")];
    for name in &finals {
        symlink(&victim, out.join(name)).unwrap();
    }
    let mut plant = String::from(r#"v="$1"; o="$2"; shift 2; "#);
    for t in temporaries {
        plant.push_str(&format!(
            r#"ln -s "$v" "$o/{}" || exit 99; "#,
            t.replace("{pid}", &pid.to_string())
        ));
    }
    plant.push_str(r#"exec "$@""#);
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(plant)
        .arg("sh")
        .arg(&victim)
        .arg(&out);
    crdump_args(&mut command, pid, &out, &[]);
    let r = run(command, CLI_TIMEOUT).expect("run crdump");
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&victim).unwrap()),
        "precious",
        "links at {temporaries:?}: the victim was overwritten; crdump: {r:?}"
    );
    assert!(r.status.success(), "links at {temporaries:?}: {r:?}");
    for name in &finals {
        let meta = fs::symlink_metadata(out.join(name)).unwrap();
        assert!(meta.file_type().is_file(), "{name} is not the dump's file");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["processes"][0]["pid"], pid, "{manifest:#}");
    w.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn planted_symlinks_are_never_followed() {
    skip_unless_root!();
    let mut w = loop_workload();
    // The final names only; with the manifest's old temporary name; with
    // the image's old temporary name too.
    dump_among_planted_links(&mut w, &[]);
    dump_among_planted_links(&mut w, &[".manifest.json.tmp-$$"]);
    dump_among_planted_links(
        &mut w,
        &[".manifest.json.tmp-$$", ".task-{pid}.crimg.tmp-$$"],
    );
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
    // Search permission only: crdump walks the path as the kernel would.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o711)).unwrap();
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

/// uid and gid of user nobody.
fn nobody_ids() -> (u32, u32) {
    let u = nix::unistd::User::from_name(NOBODY)
        .ok()
        .flatten()
        .expect("user nobody exists");
    (u.uid.as_raw(), u.gid.as_raw())
}

fn crdump_into(w: &Workload, out: &Path) -> crimg_tests::cli::RunOutput {
    let mut command = Command::new(&binaries().crdump);
    command
        .arg("--pid")
        .arg(w.pid().to_string())
        .arg("-o")
        .arg(out)
        .arg("--leave-running");
    run(command, CLI_TIMEOUT).expect("run crdump")
}

#[test]
fn a_symlink_planted_by_another_user_is_refused_and_an_own_one_followed() {
    skip_unless_root!();
    let dir = scratch_dir();
    let (uid, gid) = nobody_ids();
    // Root's directory, with a manifest of its own.
    let victim = dir.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(victim.join("manifest.json"), b"precious").unwrap();
    // nobody's directory, with nobody's link to it.
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).unwrap();
    let planted = shared.join("out");
    symlink(&victim, &planted).unwrap();
    std::os::unix::fs::lchown(&planted, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(&shared, Some(uid), Some(gid)).unwrap();
    let mut w = loop_workload();
    let r = crdump_into(&w, &planted);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains(planted.to_str().unwrap()) && lines[0].contains("symlink"),
        "{}",
        lines[0]
    );
    assert_eq!(fs::read(victim.join("manifest.json")).unwrap(), b"precious");
    assert_eq!(fs::read_dir(&victim).unwrap().count(), 1, "files left");
    w.expect_pass(CheckTrigger::Stdin);

    // Root's own link in root's own directory: followed.
    let mine = dir.path().join("mine");
    fs::create_dir(&mine).unwrap();
    fs::set_permissions(&mine, fs::Permissions::from_mode(0o700)).unwrap();
    let real = dir.path().join("real");
    fs::create_dir(&real).unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
    symlink("../real", mine.join("out")).unwrap();
    let r = crdump_into(&w, &mine.join("out"));
    assert!(r.status.success(), "{r:?}");
    assert!(real.join(format!("task-{}.crimg", w.pid())).is_file());
    assert!(real.join("manifest.json").is_file());
    w.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn a_missing_directory_is_not_created_where_others_could_swap_it() {
    skip_unless_root!();
    let dir = scratch_dir();
    let (uid, gid) = nobody_ids();
    let open = dir.path().join("open");
    fs::create_dir(&open).unwrap();
    std::os::unix::fs::chown(&open, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
    let out = open.join("new");
    let mut w = loop_workload();
    let r = crdump_into(&w, &out);
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", r.stderr);
    assert!(
        lines[0].contains(open.to_str().unwrap())
            && lines[0].contains("not sticky")
            && lines[0].contains("--force"),
        "{}",
        lines[0]
    );
    assert!(!out.exists(), "created anyway");
    w.expect_pass(CheckTrigger::Stdin);
    // Sticky, as a shared /tmp: nobody else can rename what crdump makes.
    fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
    let r = crdump_into(&w, &out);
    assert!(r.status.success(), "{r:?}");
    let meta = fs::metadata(&out).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o700));
    w.expect_pass(CheckTrigger::Stdin);
}
