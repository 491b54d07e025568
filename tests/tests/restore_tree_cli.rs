//! `crrestore-tree`'s command line and its refusals: usage errors, a
//! missing or corrupt manifest, a pid that is taken (checked before
//! anything is created), and a process whose loader fails (everything
//! created is killed, one line names the pid and the loader's message);
//! and a process group whose leader is gone, made again by a stand-in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crimg_tests::cli::{self, CLI_TIMEOUT};
use crimg_tests::paths::find_binary;
use crimg_tests::process::only_stdio;
use crimg_tests::{binaries, scratch_dir, ChildGuard, PidGuard};

fn crrestore_tree() -> PathBuf {
    find_binary("crrestore-tree").unwrap_or_else(|e| panic!("{e}"))
}

/// `crrestore-tree ARGS`: (exit code, stdout, stderr).
fn run<I, S>(args: I) -> (Option<i32>, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(crrestore_tree());
    c.args(args);
    let out = cli::run(c, CLI_TIMEOUT).unwrap();
    (out.status.code(), out.stdout, out.stderr)
}

#[test]
fn usage_errors_exit_1_and_help_lists_the_exit_codes() {
    let (code, _, err) = run::<[&str; 0], &str>([]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("Usage"), "{err}");
    let (code, _, err) = run(["dir", "--no-such-flag"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, _, err) = run(["dir", "--stdio", "sideways"]);
    assert_eq!(code, Some(1), "{err}");
    let (code, out, _) = run(["--help"]);
    assert_eq!(code, Some(0));
    for needle in ["--pidns", "--wait", "--stdio", "Exit codes", "2    a pid"] {
        assert!(out.contains(needle), "no {needle:?} in --help:\n{out}");
    }
}

#[test]
fn a_missing_or_corrupt_manifest_is_refused_before_anything_runs() {
    let scratch = scratch_dir();
    let dir = scratch.path();
    let (code, _, err) = run([dir.join("no-such-dump")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no-such-dump"), "{err}");
    let (code, _, err) = run([dir]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("manifest.json") && err.contains("No such file"),
        "{err}"
    );
    fs::write(dir.join("manifest.json"), b"{ not json").unwrap();
    let (code, _, err) = run([dir]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a crimg manifest"), "{err}");
    // A manifest whose image is missing: named, exit 1.
    fs::write(
        dir.join("manifest.json"),
        br#"{"format": "crimg-manifest", "version": 2, "root": 4321,
            "processes": [{"pid": 4321, "ppid": 1, "pgid": 4321, "sid": 4321,
                           "image": "task-4321.crimg", "threads": [4321]}]}"#,
    )
    .unwrap();
    let (code, _, err) = run([dir]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("task-4321.crimg"), "{err}");
    // An image name that leads out of the directory.
    fs::write(
        dir.join("manifest.json"),
        br#"{"format": "crimg-manifest", "version": 2, "root": 4321,
            "processes": [{"pid": 4321, "ppid": 1, "pgid": 4321, "sid": 4321,
                           "image": "../elsewhere.crimg", "threads": [4321]}]}"#,
    )
    .unwrap();
    let (code, _, err) = run([dir]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a file of the directory"), "{err}");
}

/// `sh -c 'count | cat > LOG'` in `scratch`, running: the shell's guard
/// and its two children's.
struct Pipeline {
    sh: ChildGuard,
    children: Vec<PidGuard>,
    log: PathBuf,
}

fn start_pipeline(scratch: &Path) -> Pipeline {
    let log = scratch.join("LOG");
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!(
        "i=0; while :; do i=$((i+1)); echo $i; sleep 0.02; done | cat > {}",
        log.display()
    ));
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    only_stdio(&mut c);
    let sh = ChildGuard::new("pipeline", c.spawn().unwrap());
    let pid = sh.pid();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Running once the log has lines and both children are there.
    let children = loop {
        let kids: Vec<i32> = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let lines = fs::read_to_string(&log).map_or(0, |t| t.lines().count());
        if kids.len() == 2 && lines >= 3 {
            break kids;
        }
        assert!(Instant::now() < deadline, "the pipeline did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    Pipeline {
        sh,
        children: children
            .into_iter()
            .filter_map(|p| PidGuard::new(p).ok())
            .collect(),
        log,
    }
}

/// Wait until none of `pids` exists (a killed process's orphans are
/// reaped by init, slowly here).
fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < deadline, "pids {pids:?} stay taken");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `pid` runs (exists and is not a zombie).
fn runs(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
        })
        .unwrap_or(false)
}

#[test]
fn a_taken_pid_is_named_before_anything_is_created() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let p = start_pipeline(scratch.path());
    let bins = binaries();
    let out = scratch.path().join("dump");
    let dump = cli::run(bins.crdump_command(p.sh.pid(), &out, true), CLI_TIMEOUT).unwrap();
    assert!(dump.status.success(), "crdump: {}", dump.stderr);
    // The tree runs on (--leave-running): its pids are taken.
    let (code, _, err) = run([&out]);
    assert_eq!(code, Some(2), "{err}");
    let expected = format!(
        "crrestore-tree: pid {} is taken (by \"sh\"); restore with --pidns",
        p.sh.pid()
    );
    assert_eq!(err.trim_end(), expected);
    // Nothing was created: the running tree is the only one, untouched.
    assert!(runs(p.sh.pid()));
    for c in &p.children {
        assert!(runs(c.pid()));
    }
    drop(p);
}

#[test]
fn a_loader_that_fails_gets_every_process_killed_and_is_named() {
    crimg_tests::skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        let scratch = scratch_dir();
        let p = start_pipeline(scratch.path());
        let sh = p.sh.pid();
        let children: Vec<i32> = p.children.iter().map(PidGuard::pid).collect();
        let bins = binaries();
        let out = scratch.path().join("dump");
        let dump = cli::run(bins.crdump_command(sh, &out, false), CLI_TIMEOUT).unwrap();
        assert!(dump.status.success(), "crdump: {}", dump.stderr);
        let log = p.log.clone();
        drop(p);
        let mut all = vec![sh];
        all.extend(&children);
        wait_gone(&all);
        // cat's open file is gone: its loader refuses, after its parent and
        // sibling were made.
        fs::remove_file(&log).unwrap();
        let (code, _, err) = run([&out]);
        crimg_tests::tree::panic_if_pid_taken(code, &err);
        assert_eq!(code, Some(3), "{err}");
        let line = err
            .lines()
            .find(|l| l.starts_with("crrestore-tree:"))
            .unwrap_or_default();
        let cat = children
            .iter()
            .copied()
            .find(|&c| line.contains(&format!("pid {c}:")))
            .unwrap_or_else(|| panic!("the error names neither child: {err}"));
        assert!(
            line.contains("LOG"),
            "the loader's message is relayed: {err}"
        );
        assert_eq!(
            err.lines()
                .filter(|l| l.starts_with("crrestore-tree:"))
                .count(),
            1,
            "{err}"
        );
        // Everything created is dead by the time crrestore-tree has said so
        // (zombies waiting for init at most), killed, not left to notice on
        // their own that the orchestrator is gone.
        let running: Vec<i32> = all.iter().copied().filter(|&p| runs(p)).collect();
        assert!(
            running.is_empty(),
            "pids {running:?} still run after the failure of {cat}"
        );
        assert!(!log.exists(), "no restored cat wrote the log");
    });
}

/// A session leader P whose child L made a process group, had its sibling
/// M join it, and exited: M is left in group L, whose leader is gone.
const GROUP_WITHOUT_LEADER: &str = r#"
import os, time, sys, signal
out = sys.argv[1]
os.setsid()
r, w = os.pipe()
L = os.fork()
if L == 0:
    os.setpgid(0, 0)
    os.write(w, b"x")
    time.sleep(0.2)
    os._exit(0)
os.read(r, 1)
M = os.fork()
if M == 0:
    os.setpgid(0, L)
    def check(*a):
        with open(out, "a") as f:
            f.write(f"M pgid={os.getpgid(0)} sid={os.getsid(0)} ppid={os.getppid()} leader={int(os.path.exists(f'/proc/{L}'))}\n")
    signal.signal(signal.SIGUSR1, check)
    while True:
        time.sleep(0.05)
os.waitpid(L, 0)
with open(out, "a") as f:
    f.write(f"P {os.getpid()} {L} {M}\n")
while True:
    time.sleep(0.05)
"#;

/// Wait until `path` has a line starting with `prefix` after its first
/// `skip` such lines; that line.
fn wait_line(path: &Path, prefix: &str, skip: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().filter(|l| l.starts_with(prefix)).nth(skip) {
            return l.to_owned();
        }
        assert!(Instant::now() < deadline, "no {prefix:?} line in {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_group_whose_leader_is_gone_is_joined_again_through_a_stand_in() {
    crimg_tests::skip_unless_root!();
    crimg_tests::tree::retrying_taken_pids(|| {
        let scratch = scratch_dir();
        let out = scratch.path().join("facts");
        let mut c = Command::new("python3");
        c.arg("-c").arg(GROUP_WITHOUT_LEADER).arg(&out);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        only_stdio(&mut c);
        let mut p = ChildGuard::new("group", c.spawn().unwrap());
        let line = wait_line(&out, "P ", 0);
        let ids: Vec<i32> = line
            .split(' ')
            .skip(1)
            .filter_map(|s| s.parse().ok())
            .collect();
        let (pid, leader, member) = (ids[0], ids[1], ids[2]);
        let m = PidGuard::new(member).unwrap();
        let bins = binaries();
        let dump_dir = scratch.path().join("dump");
        let dump = cli::run(bins.crdump_command(pid, &dump_dir, false), CLI_TIMEOUT).unwrap();
        assert!(dump.status.success(), "crdump: {}", dump.stderr);
        p.wait_exit(Duration::from_secs(10)).unwrap();
        drop(m);
        wait_gone(&[pid, member, leader]);

        let (code, _, err) = run([&dump_dir]);
        crimg_tests::tree::panic_if_pid_taken(code, &err);
        assert_eq!(code, Some(0), "{err}");
        let _p = PidGuard::new(pid).unwrap();
        let m = PidGuard::new(member).unwrap();
        m.signal(nix::sys::signal::Signal::SIGUSR1).unwrap();
        let facts = wait_line(&out, "M ", 0);
        assert_eq!(
            facts,
            format!("M pgid={leader} sid={pid} ppid={pid} leader=0"),
            "the member is in its leaderless group again, and no stand-in is left"
        );
    });
}
