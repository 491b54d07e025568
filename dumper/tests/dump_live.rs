//! Dump real processes (started here, killed by pid in a Drop guard) and
//! check that they run on after `leave_running`, die otherwise, and that the
//! image parses. Needs root (ptrace of non-children works for any tracer
//! with CAP_SYS_PTRACE; map_files and PFNs need CAP_SYS_ADMIN): skips
//! otherwise, saying why.

mod common;
use common::is_root;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

use dumper::{DumpOptions, NoProgress};
use image_format::records::{restart, vma_kind};
use image_format::Image;

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (ptrace, /proc/P/map_files, pagemap PFNs)");
            return;
        }
    };
}

/// A started workload; killed by pid on drop.
struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Workload {
    /// Start `python3 -c script`; wait until it prints its first line.
    fn python(script: &str) -> (Self, String) {
        let mut child = Command::new("python3")
            // Close what the test harness leaks (cargo's jobserver pipe):
            // the workload's fds are part of what is checked.
            .args([
                "-u",
                "-c",
                &format!("import os\nos.closerange(3, 65536)\n{script}"),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut w = Workload {
            child,
            stdin,
            stdout,
        };
        let first = w.line();
        (w, first)
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.stdout.read_line(&mut s).expect("read workload output");
        s.trim_end().to_owned()
    }

    fn send(&mut self, s: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(s.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("crimg-dumper-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wait until the thread group leader of `pid` sits in syscall `nr`
/// (`/proc/P/syscall` is the kernel's own view, not a guess by time).
fn wait_in_syscall(pid: i32, nr: u32) {
    let prefix = format!("{nr} ");
    while !std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .unwrap_or_default()
        .starts_with(&prefix)
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn status_field(pid: i32, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        .unwrap()
}

fn check_image(path: &Path, pid: i32, nthreads: usize) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let img = Image::parse(&bytes).unwrap_or_else(|e| panic!("image does not parse: {e}"));
    img.verify_segments()
        .unwrap_or_else(|e| panic!("segments: {e}"));
    assert_eq!(img.process().pid, pid);
    let threads: Vec<_> = img.threads().collect::<Result<_, _>>().unwrap();
    assert_eq!(threads.len(), nthreads);
    assert_eq!(threads[0].record.tid, pid);
    let vmas: Vec<_> = img.vmas().unwrap().collect();
    assert!(vmas.iter().any(|v| v.kind == vma_kind::STACK));
    assert!(vmas.iter().any(|v| v.kind == vma_kind::VDSO));
    let g = img.gadgets();
    assert_ne!(g.syscall_ret, 0, "no syscall;ret gadget found");
    assert_ne!(img.mm().brk, 0);
    assert!(img.mm().brk >= img.mm().start_brk);
    let mode = std::fs::metadata(path).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o700
    );
    bytes
}

#[test]
fn python_threads_run_on_after_leave_running() {
    require_root!();
    let script = r#"
import sys, threading, time, signal
signal.signal(signal.SIGUSR1, lambda *a: None)
def spin():
    while True:
        time.sleep(0.001)
for _ in range(3):
    threading.Thread(target=spin, daemon=True).start()
data = bytearray(b'x') * (8 << 20)
print("ready", flush=True)
for line in sys.stdin:
    print("echo " + line.strip() + " " + str(len(data)), flush=True)
"#;
    let (mut w, first) = Workload::python(script);
    assert_eq!(first, "ready");
    let pid = w.pid();
    wait_in_syscall(pid, 0);
    let dir = TempDir::new("py");
    let opts = DumpOptions {
        leave_running: true,
        force: false,
    };
    let report = dumper::dump(pid, &dir.0, &opts, &mut NoProgress).expect("dump");
    assert_eq!(report.threads.len(), 4);
    assert!(
        report.pages_stored >= (8 << 20) / 4096,
        "only {} pages",
        report.pages_stored
    );
    let bytes = check_image(&report.image, pid, 4);
    let img = Image::parse(&bytes).unwrap();
    // The main thread was blocked in read(0): ERESTARTSYS, to be restarted.
    let leader = img.threads().next().unwrap().unwrap();
    assert_eq!(leader.record.syscall_nr, 0, "leader not in read()");
    assert_eq!(leader.record.restart, restart::RESTART);
    assert_eq!(leader.regs().rax, 0);
    // The SIGUSR1 handler was seen.
    let sa: Vec<_> = img
        .records::<image_format::records::SigactionRecord>()
        .unwrap()
        .collect();
    assert!(sa.iter().any(|s| s.signo == 10 && s.handler > 1));
    // The process runs on: not traced, and its blocked read() was restarted.
    assert_eq!(status_field(pid, "TracerPid:"), "0");
    w.send("hello\n");
    assert_eq!(w.line(), format!("echo hello {}", 8 << 20));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.0.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["processes"][0]["pid"], pid);
    // No temporary files left.
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn sleeping_process_is_killed_after_dump() {
    require_root!();
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import os; os.closerange(3, 65536); os.execvp('sleep', ['sleep', '1000'])",
        ])
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    // Wait until it is really sleeping (not still exec'ing).
    wait_in_syscall(pid, 230);
    let dir = TempDir::new("sleep");
    let report = dumper::dump(pid, &dir.0, &DumpOptions::default(), &mut NoProgress);
    let report = report.expect("dump");
    // The dumper, as tracer, collected the exit; being also the parent here,
    // that reaped the child.
    assert!(child.try_wait().is_err() || !Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} still exists"
    );
    let bytes = check_image(&report.image, pid, 1);
    let img = Image::parse(&bytes).unwrap();
    let t = img.threads().next().unwrap().unwrap();
    // clock_nanosleep interrupted: ERESTART_RESTARTBLOCK becomes EINTR.
    assert_eq!(t.record.syscall_nr, 230);
    assert_eq!(t.record.restart, restart::EINTR);
    assert_eq!(t.regs().rax as i64, -4);
}

#[test]
fn refuses_self_and_kernel_threads() {
    require_root!();
    let dir = TempDir::new("refuse");
    let me = std::process::id() as i32;
    let opts = DumpOptions {
        leave_running: true,
        force: false,
    };
    assert!(matches!(
        dumper::dump(me, &dir.0, &opts, &mut NoProgress),
        Err(dumper::DumpError::Refused { .. })
    ));
    // kthreadd is pid 2 on Linux.
    assert!(matches!(
        dumper::dump(2, &dir.0, &opts, &mut NoProgress),
        Err(dumper::DumpError::Refused { .. })
    ));
}

#[test]
fn unsupported_fd_refused_then_forced() {
    require_root!();
    let script = r#"
import os, socket, sys
a, b = socket.socketpair()
print("ready", flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#;
    let (mut w, _) = Workload::python(script);
    let pid = w.pid();
    let dir = TempDir::new("sock");
    let opts = DumpOptions {
        leave_running: true,
        force: false,
    };
    let err = dumper::dump(pid, &dir.0, &opts, &mut NoProgress).unwrap_err();
    assert!(err.to_string().contains("socket"), "{err}");
    assert!(!dir.0.join(format!("task-{pid}.crimg")).exists());
    w.send("x\n");
    assert_eq!(w.line(), "alive");
    let opts = DumpOptions {
        leave_running: true,
        force: true,
    };
    let report = dumper::dump(pid, &dir.0, &opts, &mut NoProgress).expect("forced dump");
    assert!(report.warnings.iter().any(|m| m.contains("socket")));
    w.send("x\n");
    assert_eq!(w.line(), "alive");
}

/// Not a pass/fail check: prints the dump throughput of 1 GiB of touched
/// memory. `cargo test -p dumper --release -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_one_gib() {
    require_root!();
    let script = r#"
import sys
data = bytes([1]) * (1 << 30)
print("ready", flush=True)
sys.stdin.read()
"#;
    let (w, _) = Workload::python(script);
    let pid = w.pid();
    let dir = TempDir::new("gib");
    let t = Instant::now();
    let opts = DumpOptions {
        leave_running: true,
        force: false,
    };
    let report = dumper::dump(pid, &dir.0, &opts, &mut NoProgress).expect("dump");
    let secs = t.elapsed().as_secs_f64();
    let gb = report.bytes_written as f64 / 1e9;
    println!(
        "dumped {} pages, image {:.3} GB in {:.3} s ({:.2} GB/s, frozen {:.3} s)",
        report.pages_stored,
        gb,
        secs,
        gb / secs,
        report.frozen_for.as_secs_f64()
    );
    println!("phases: {:?}", report.phases);
    drop(w);
}
