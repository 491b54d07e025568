//! A thread borrowed for injected syscalls and then abandoned by its tracer
//! (as when crdump is SIGKILLed) gets back to its exact state by itself:
//! through the `rt_sigreturn` frame written before its registers changed.
//! Each case borrows the main thread of a self-checking workload with the
//! dumper's own code, stops at one point of the borrowing, and lets the
//! thread go without undoing anything (`PTRACE_DETACH` from where it is,
//! what the kernel does for a tracer that dies). The workload then checks
//! its registers (general, ymm/zmm), signal mask, memory and counters.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::Duration;

use crimg_tests::process::CheckTrigger;
use crimg_tests::{skip_unless_root, Workload};
use dumper::freeze::Frozen;
use dumper::gadgets;
use dumper::inject::{self, Borrowed, Gadgets};
use dumper::sys::ptrace;
use image_format::records::GadgetsRecord;

/// Where the borrowing is abandoned.
#[derive(Clone, Copy, Debug)]
enum Point {
    /// Right after `begin`: registers at the gadget, never resumed.
    Armed,
    /// At the exit stop of a harmless syscall.
    AfterQuery,
    /// At the exit stop of a syscall that blocked every signal.
    AfterBlockingAll,
}

/// The task's `syscall; ret` and `rt_sigreturn` gadgets, from its
/// executable file mappings.
fn find_gadgets(pid: i32, mem: &File) -> Gadgets {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut found = GadgetsRecord::default();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 6 || !fields[1].contains('x') || !fields[5].starts_with('/') {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut bytes = vec![0u8; (end - start) as usize];
        if mem.read_exact_at(&mut bytes, start).is_err() {
            continue;
        }
        if found.syscall_ret == 0 {
            found.syscall_ret = gadgets::find(&bytes, start, gadgets::SYSCALL_RET).unwrap_or(0);
        }
        if found.rt_sigreturn == 0 {
            found.rt_sigreturn = gadgets::find_rt_sigreturn(&bytes, start).unwrap_or(0);
        }
    }
    Gadgets::for_task(pid, &found).unwrap()
}

/// Borrow the main thread of `pid`, stop at `point`, and let it go.
fn borrow_and_abandon(pid: i32, point: Point) {
    let frozen = Frozen::freeze(pid).unwrap();
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .unwrap();
    let gadgets = find_gadgets(pid, &mem);
    let regs = ptrace::get_regs(pid).unwrap();
    let read_u64 = |addr| {
        let mut b = [0u8; 8];
        mem.read_exact_at(&mut b, addr).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let temporary = inject::uses_temporary_sigmask(&regs, read_u64);
    let scratch = inject::scratch_below(regs.rsp);
    let mut b = Borrowed::begin(pid, pid, &mem, gadgets, scratch, temporary).unwrap();
    match point {
        Point::Armed => {}
        Point::AfterQuery => {
            // sigaltstack(NULL, scratch)
            assert_eq!(b.syscall(131, [0, scratch, 0, 0, 0, 0]).unwrap(), 0);
        }
        Point::AfterBlockingAll => {
            mem.write_all_at(&u64::MAX.to_le_bytes(), scratch).unwrap();
            // rt_sigprocmask(SIG_BLOCK, scratch, NULL, 8)
            assert_eq!(b.syscall(14, [0, scratch, 0, 8, 0, 0]).unwrap(), 0);
        }
    }
    // The tracer "vanishes": nothing is undone, every thread is let go from
    // where it is.
    std::mem::forget(b);
    drop(frozen);
}

fn counter(sleep_in: &str) -> Workload {
    Workload::start(
        "counter",
        [
            "--interval-ms",
            "5",
            "--heap-mb",
            "2",
            "--anon-mb",
            "2",
            "--threads",
            "1",
            "--sleep-in",
            sleep_in,
        ],
    )
}

#[test]
fn an_abandoned_thread_resumes_through_its_frame() {
    skip_unless_root!();
    for sleep_in in ["nanosleep", "busy"] {
        for point in [Point::Armed, Point::AfterQuery, Point::AfterBlockingAll] {
            let mut w = counter(sleep_in);
            w.expect_line("TICK");
            borrow_and_abandon(w.pid(), point);
            let facts = w
                .check(CheckTrigger::Stdin, Duration::from_secs(10))
                .unwrap_or_else(|e| {
                    let _ = w.wait_exit(Duration::from_secs(2));
                    panic!(
                        "{sleep_in}, abandoned {point:?}: {e}\n{}",
                        w.stderr_report()
                    )
                });
            assert!(facts.number("vec_rounds").unwrap() > 0, "{}", facts.line());
            w.expect_line("TICK");
        }
    }
}

/// A perl program waiting in `sigsuspend` (a temporary empty mask) with
/// SIGUSR1 blocked for real; each SIGUSR2 wakes it, and it reports its mask.
fn sigsuspend_workload() -> Workload {
    let script = r#"
use POSIX qw(:signal_h);
$| = 1;
sigprocmask(SIG_BLOCK, POSIX::SigSet->new(SIGUSR1));
$SIG{USR2} = sub {};
print "READY pid=$$\n";
while (1) {
    sigsuspend(POSIX::SigSet->new());
    my $now = POSIX::SigSet->new;
    sigprocmask(SIG_BLOCK, undef, $now);
    printf "WOKE usr1_blocked=%d usr2_blocked=%d\n", $now->ismember(SIGUSR1) ? 1 : 0,
        $now->ismember(SIGUSR2) ? 1 : 0;
}
"#;
    let mut command = Command::new("perl");
    command.arg("-e").arg(script);
    let mut w = Workload::spawn_command("sigsuspend.pl", command).unwrap();
    w.wait_ready(Duration::from_secs(10)).unwrap();
    w
}

/// Wait until `pid` sits in syscall `nr`.
fn wait_in_syscall(pid: i32, nr: u64) {
    crimg_tests::process::wait_in_syscall(pid, nr, Duration::from_secs(10))
        .unwrap_or_else(|err| panic!("{err}"));
}

#[test]
fn an_abandoned_thread_under_a_temporary_mask_keeps_its_real_mask() {
    skip_unless_root!();
    for point in [Point::Armed, Point::AfterQuery, Point::AfterBlockingAll] {
        let mut w = sigsuspend_workload();
        wait_in_syscall(w.pid(), 130);
        borrow_and_abandon(w.pid(), point);
        // Back in sigsuspend (restarted), under its temporary mask again:
        // SIGUSR2 gets through, and the real mask still blocks SIGUSR1 only.
        wait_in_syscall(w.pid(), 130);
        w.signal(nix::sys::signal::Signal::SIGUSR2).unwrap();
        let line = w
            .wait_line("WOKE", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("abandoned {point:?}: {e}\n{}", w.stderr_report()));
        assert_eq!(
            line, "WOKE usr1_blocked=1 usr2_blocked=0",
            "abandoned {point:?}"
        );
    }
}

/// A signal that arrives while a thread under a temporary mask is borrowed
/// (it is taken, and held back, before the first injected syscall blocks
/// everything) is pending again at once: a tracer that vanishes right after
/// does not lose it. The C workload waits in `sigsuspend` with SIGUSR1
/// blocked for real but let through by its wait mask, and prints "got" for
/// each SIGUSR1.
#[test]
fn a_signal_held_back_survives_a_tracer_that_vanishes() {
    skip_unless_root!();
    let mut w = Workload::start("sigsuspend_mask", [] as [&str; 0]);
    let pid = w.pid();
    wait_in_syscall(pid, 130);
    let frozen = Frozen::freeze(pid).unwrap();
    // Pending while the thread is stopped; taken on its way to the first
    // injected syscall.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .unwrap();
    let gadgets = find_gadgets(pid, &mem);
    let regs = ptrace::get_regs(pid).unwrap();
    let scratch = inject::scratch_below(regs.rsp);
    let b = Borrowed::begin(pid, pid, &mem, gadgets, scratch, true).unwrap();
    // The tracer vanishes: nothing is undone, nothing sent again by it.
    std::mem::forget(b);
    drop(frozen);
    w.wait_line("got", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("SIGUSR1 was lost: {e}\n{}", w.stderr_report()));
}
