//! What the real-program tests (`tests/programs_*.rs`) share: finding the
//! program (skipping or failing when it is missing), free loopback ports,
//! asking a server with `curl`, the dump-kill-run round trip through the
//! test's binfmt entry, and waits that poll a condition with a deadline.
//!
//! A missing program is a skip only where the run may lack it: without
//! root (tools/test.sh installs them as root) and outside CI. As root, or
//! with `CRIMG_TESTS_REQUIRE_ROOT=1`, it is a failure.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{run, Binaries, Dump};
use crate::java::on_path;
use crate::privilege::{is_root, report_skip, root_required};
use crate::process::{Workload, LINE_TIMEOUT};

/// How long a program may take to get ready.
pub const PROGRAM_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// `program` on `PATH`; `None` after printing `skipped: …` when it is
/// missing and this run may lack it. Panics when it is missing as root or
/// under CI (`package` names what tools/test.sh installs).
#[track_caller]
pub fn require_program(program: &str, package: &str) -> Option<PathBuf> {
    if let Some(path) = on_path(program) {
        return Some(path);
    }
    let why = format!(
        "no `{program}` on PATH (Debian package {package}; tools/test.sh installs it as root)"
    );
    if is_root() || root_required() {
        panic!("{why}");
    }
    report_skip(&why);
    None
}

/// A loopback TCP port that was free a moment ago (bound to port 0, then
/// released), for programs that must be told their port.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// `curl -sS --max-time 10 <url>`: the body, or why it failed.
pub fn curl(url: &str) -> Result<String, String> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", url]);
    match run(c, Duration::from_secs(20)) {
        Ok(out) if out.status.success() => Ok(out.stdout),
        Ok(out) => Err(format!("curl {url}: {} {}", out.status, out.stderr.trim())),
        Err(e) => Err(format!("curl {url}: {e}")),
    }
}

/// Poll `probe` until it returns `Some`, for at most `timeout`; `what`
/// names the awaited thing in the panic, with the last probe's note.
#[track_caller]
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not after {timeout:?}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Dump `program` (killing it), wait until it is gone, and run its image
/// as a program (`./task-P.crimg`, through the test's binfmt entry) with
/// piped stdio: the restored process. A refused dump panics with crdump's
/// reasons, named as the first blocker of `what`.
#[track_caller]
pub fn dump_and_run_image(
    bins: &Binaries,
    what: &str,
    program: &mut Workload,
    out: &Path,
) -> (Dump, Workload) {
    let dump = dump_or_panic(bins, what, program.pid(), out);
    program
        .wait_exit(LINE_TIMEOUT)
        .unwrap_or_else(|e| panic!("crdump did not kill {what}: {e}"));
    let restored = Workload::spawn_command(&format!("restored {what}"), Command::new(&dump.image))
        .unwrap_or_else(|e| panic!("cannot run the image of {what}: {e}"));
    (dump, restored)
}

/// `crdump --pid <pid> -o <out>`, panicking with `crdump refused <what>: …`.
#[track_caller]
pub fn dump_or_panic(bins: &Binaries, what: &str, pid: i32, out: &Path) -> Dump {
    bins.dump(pid, out, false)
        .unwrap_or_else(|e| panic!("crdump refused {what} (pid {pid}): {e}"))
}

/// Panic unless the restored process is still running (it may have died
/// right after the loader jumped): its stderr and exit status say why.
#[track_caller]
pub fn expect_running(restored: &mut Workload, what: &str) {
    if let Some(status) = restored.child().try_status() {
        restored.wait_exit(LINE_TIMEOUT).ok();
        panic!(
            "the restored {what} exited ({status})\n{}",
            restored.stderr_report()
        );
    }
}

/// `tests/workloads/programs/<name>`: the source of a program test's script.
pub fn program_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("workloads/programs")
        .join(name)
}

/// Start `command` (only its stdio open, piped) as `what` and wait for its
/// `READY` line; panics with its stderr if it does not come.
#[track_caller]
pub fn start_ready(what: &str, command: Command) -> Workload {
    let mut w = Workload::spawn_command(what, command).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = w.wait_ready(PROGRAM_READY_TIMEOUT) {
        panic!("{what} did not get ready: {e}\n{}", w.stderr_report());
    }
    w
}

/// The `PREFIX n` lines of `lines` as a tick stream (`GOT 5` → tick 5), so
/// any numbered stream is checked like `TICK n`.
pub fn numbered(lines: &[String], prefix: &str) -> crate::TickStream {
    let as_ticks: Vec<String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix(prefix))
        .map(|n| format!("TICK {}", n.trim()))
        .collect();
    crate::TickStream::from_lines(&as_ticks).unwrap_or_else(|e| panic!("{prefix}lines: {e}"))
}
