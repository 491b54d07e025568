//! Dump real processes with the dumper library (in this test process: the
//! dumper is their tracer) and check that they run on after
//! `leave_running`, die otherwise, and that the image parses. Needs root
//! (ptrace of non-children works for any tracer with CAP_SYS_PTRACE;
//! map_files and PFNs need CAP_SYS_ADMIN): skips otherwise, saying why.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crimg_tests::process::{only_stdio, wait_in_syscall};
use crimg_tests::smaps::status_lines;
use crimg_tests::{scratch_dir, skip_unless_root, PidGuard, Workload};
use dumper::{DumpOptions, NoProgress};
use image_format::records::{restart, vma_kind};
use image_format::Image;

/// How long a workload may take to reach the syscall a test waits for.
const SYSCALL_TIMEOUT: Duration = Duration::from_secs(20);

/// `python3 -u -c script` as a workload (only fds 0-2 open); waits for the
/// line it prints first.
fn python(script: &str, first: &str) -> Workload {
    let mut command = Command::new("python3");
    command.args(["-u", "-c", script]);
    let mut w = Workload::spawn_command("python3", command).unwrap_or_else(|err| panic!("{err}"));
    w.expect_line(first);
    w
}

fn tracer_pid(pid: i32) -> Option<String> {
    status_lines(pid, &["TracerPid"]).remove(0).1
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
    skip_unless_root!();
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
    let mut w = python(script, "ready");
    let pid = w.pid();
    wait_in_syscall(pid, 0, SYSCALL_TIMEOUT).unwrap();
    let scratch = scratch_dir();
    let dir = scratch.path().join("out");
    let opts = DumpOptions {
        leave_running: true,
        force: false,
        ..DumpOptions::default()
    };
    let report = dumper::dump(pid, &dir, &opts, &mut NoProgress).expect("dump");
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
    assert_eq!(tracer_pid(pid).as_deref(), Some("0"));
    w.send_line("hello").unwrap();
    assert_eq!(w.expect_line("echo"), format!("echo hello {}", 8 << 20));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["processes"][0]["pid"], pid);
    // No temporary files left.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn sleeping_process_is_killed_after_dump() {
    skip_unless_root!();
    let mut command = Command::new("sleep");
    command.arg("1000");
    only_stdio(&mut command);
    let mut child = command.spawn().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    // The dumper (in this process, its tracer) reaps it: a guard on the
    // pid could kill a later process with that number, a pidfd cannot.
    let _guard = PidGuard::new(pid).unwrap();
    // Wait until it is really sleeping (not still exec'ing).
    wait_in_syscall(pid, 230, SYSCALL_TIMEOUT).unwrap();
    let scratch = scratch_dir();
    let dir = scratch.path().join("out");
    let report = dumper::dump(pid, &dir, &DumpOptions::default(), &mut NoProgress);
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
    skip_unless_root!();
    let scratch = scratch_dir();
    let dir = scratch.path().join("out");
    let me = i32::try_from(std::process::id()).unwrap();
    let opts = DumpOptions {
        leave_running: true,
        force: false,
        ..DumpOptions::default()
    };
    assert!(matches!(
        dumper::dump(me, &dir, &opts, &mut NoProgress),
        Err(dumper::DumpError::Refused { .. })
    ));
    // kthreadd is pid 2 on Linux.
    assert!(matches!(
        dumper::dump(2, &dir, &opts, &mut NoProgress),
        Err(dumper::DumpError::Refused { .. })
    ));
}

#[test]
fn unsupported_fd_refused_then_forced() {
    skip_unless_root!();
    let script = r#"
import os, socket, sys
# A netlink socket: not saved (a socket pair would be).
n = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
print("ready", flush=True)
for line in sys.stdin:
    print("alive", flush=True)
"#;
    let mut w = python(script, "ready");
    let pid = w.pid();
    let scratch = scratch_dir();
    let dir = scratch.path().join("out");
    let opts = DumpOptions {
        leave_running: true,
        force: false,
        ..DumpOptions::default()
    };
    let err = dumper::dump(pid, &dir, &opts, &mut NoProgress).unwrap_err();
    assert!(err.to_string().contains("is a netlink socket"), "{err}");
    assert!(!dir.join(format!("task-{pid}.crimg")).exists());
    w.send_line("x").unwrap();
    assert_eq!(w.expect_line("alive"), "alive");
    let opts = DumpOptions {
        leave_running: true,
        force: true,
        ..DumpOptions::default()
    };
    let report = dumper::dump(pid, &dir, &opts, &mut NoProgress).expect("forced dump");
    assert!(report.warnings.iter().any(|m| m.contains("socket")));
    w.send_line("x").unwrap();
    assert_eq!(w.expect_line("alive"), "alive");
}

/// Not a pass/fail check: prints the dump throughput of 1 GiB of touched
/// memory. `cargo test -p crimg-tests --release --test dump_live -- --ignored --nocapture`.
#[test]
#[ignore]
fn throughput_one_gib() {
    skip_unless_root!();
    let script = r#"
import sys
data = bytes([1]) * (1 << 30)
print("ready", flush=True)
sys.stdin.read()
"#;
    let w = python(script, "ready");
    let pid = w.pid();
    let scratch = scratch_dir();
    let dir = scratch.path().join("out");
    let t = Instant::now();
    let opts = DumpOptions {
        leave_running: true,
        force: false,
        ..DumpOptions::default()
    };
    let report = dumper::dump(pid, &dir, &opts, &mut NoProgress).expect("dump");
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
