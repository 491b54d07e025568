//! Signals sent to a process while the loader restores it: the loader
//! blocks every signal from its first instruction, so what arrives during
//! the restore stays pending and is delivered to the task's own handlers
//! right after the jump, as if it had come just after the dump.
//!
//! The workload catches SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP, SIGQUIT
//! and SIGALRM (all but one of them terminate by default) and counts them;
//! it keeps a real-time signal blocked with a queued value pending, and
//! holds enough memory that the restore takes a while. The test sends
//! those signals (and SIGSTOP, SIGCONT) in a loop from the moment the loader runs until the
//! restored workload prints its first tick, then asks it to check itself:
//! it must be alive, have counted every kind of signal sent, and still have
//! its mask and its own pending signal exactly as before the dump.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crimg_tests::process::{CheckTrigger, READY_TIMEOUT};
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Workload};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// READY after its setup; then a TICK every 5 ms; on "check", PASS with
/// the count of each caught signal, or FAIL.
const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const int caught[] = { SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGALRM };
#define NCAUGHT (sizeof caught / sizeof caught[0])
static volatile sig_atomic_t counts[65];
#define MEM (48u << 20)

static void on_signal(int sig) { counts[sig]++; }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* "twice": one file open at two fds, which the loader warns about. */
    if (argc > 1 && !strcmp(argv[1], "twice")) {
        open(argv[0], O_RDONLY);
        open(argv[0], O_RDONLY);
    }
    /* Memory that makes the restore last: checksums, then page reads. */
    uint64_t *mem = malloc(MEM);
    for (size_t i = 0; i < MEM / 8; i++)
        mem[i] = i * 0x9e3779b97f4a7c15ULL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    for (size_t i = 0; i < NCAUGHT; i++)
        sigaction(caught[i], &sa, NULL);
    /* The task's own mask and pending signal: SIGRTMIN+3 (value 77) and
       SIGWINCH blocked, the former queued. */
    int rt = SIGRTMIN + 3;
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, rt);
    sigaddset(&mask, SIGWINCH);
    sigprocmask(SIG_SETMASK, &mask, NULL);
    union sigval value = { .sival_int = 77 };
    sigqueue(getpid(), rt, value);
    printf("READY pid=%d\n", getpid());
    unsigned long tick = 0;
    char line[64];
    for (;;) {
        struct pollfd p = { .fd = 0, .events = POLLIN };
        int n = poll(&p, 1, 5);
        if (n == 0 || (n < 0)) {
            printf("TICK %lu\n", ++tick);
            continue;
        }
        if (!fgets(line, sizeof line, stdin))
            return 0;
        if (strncmp(line, "check", 5) != 0)
            continue;
        char fail[256] = "";
        for (size_t i = 0; i < MEM / 8; i++)
            if (mem[i] != i * 0x9e3779b97f4a7c15ULL) {
                snprintf(fail, sizeof fail, "memory word %zu changed", i);
                break;
            }
        sigset_t now, pending;
        sigprocmask(SIG_SETMASK, NULL, &now);
        for (int s = 1; s < 65 && !fail[0]; s++)
            if (sigismember(&now, s) != sigismember(&mask, s))
                snprintf(fail, sizeof fail, "signal %d %s blocked", s,
                         sigismember(&now, s) ? "became" : "is no longer");
        sigpending(&pending);
        for (int s = 1; s < 65 && !fail[0]; s++)
            if (sigismember(&pending, s) != (s == rt))
                snprintf(fail, sizeof fail, "signal %d is %spending", s,
                         s == rt ? "not " : "");
        siginfo_t info;
        struct timespec zero = { 0, 0 };
        if (!fail[0]) {
            sigset_t just_rt;
            sigemptyset(&just_rt);
            sigaddset(&just_rt, rt);
            if (sigtimedwait(&just_rt, &info, &zero) != rt || info.si_code != SI_QUEUE ||
                info.si_value.sival_int != 77)
                snprintf(fail, sizeof fail, "the pending SIGRTMIN+3 lost its value 77");
            else if (sigtimedwait(&just_rt, &info, &zero) == rt)
                snprintf(fail, sizeof fail, "SIGRTMIN+3 was pending twice");
        }
        if (fail[0]) {
            printf("FAIL storm %s\n", fail);
            continue;
        }
        printf("PASS storm usr1=%d usr2=%d term=%d int=%d hup=%d quit=%d alrm=%d\n",
               (int)counts[SIGUSR1], (int)counts[SIGUSR2], (int)counts[SIGTERM],
               (int)counts[SIGINT], (int)counts[SIGHUP], (int)counts[SIGQUIT],
               (int)counts[SIGALRM]);
    }
}
"#;

/// The signals sent, with the name the PASS line counts each under.
const STORM: [(Signal, &str); 7] = [
    (Signal::SIGUSR1, "usr1"),
    (Signal::SIGUSR2, "usr2"),
    (Signal::SIGTERM, "term"),
    (Signal::SIGINT, "int"),
    (Signal::SIGHUP, "hup"),
    (Signal::SIGQUIT, "quit"),
    (Signal::SIGALRM, "alrm"),
];

fn compile(dir: &Path) -> PathBuf {
    let source = dir.join("storm.c");
    let program = dir.join("storm");
    std::fs::write(&source, PROGRAM).unwrap();
    let output = Command::new("cc")
        .args(["-O1", "-o"])
        .arg(&program)
        .arg(&source)
        .output()
        .expect("cc runs");
    assert!(
        output.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    program
}

/// Whether `pid` has `image` open: the loader's first instructions (its
/// signal blocking, then opening the image) have run. A signal the kernel
/// delivers between `execve` and a program's first instruction meets the
/// dispositions `execve` reset and cannot be held off by the program: the
/// storm starts once the loader is known to run.
fn has_open(pid: i32, image: &Path) -> bool {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|target| target == image))
}

/// Start [`PROGRAM`] with `args`, dump it (crdump kills it); the image.
fn dumped_storm(scratch: &Path, args: &[&str]) -> PathBuf {
    let bins = binaries();
    let program = compile(scratch);
    let mut command = Command::new(&program);
    command.args(args);
    let mut original = Workload::spawn_command("storm", command).unwrap();
    if let Err(err) = original.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", original.stderr_report());
    }
    original.expect_line("TICK 2");
    let dumped = dump_and_kill(&bins, original, &scratch.join("out"));
    dumped.dump.image.canonicalize().unwrap()
}

#[test]
fn signals_sent_during_the_restore_reach_the_restored_handlers() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let image = dumped_storm(scratch.path(), &[]);

    let mut restored = bins.restore("restored storm", &image).unwrap();
    let pid = restored.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = Arc::clone(&stop);
        let image = image.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !has_open(pid, &image) && !stop.load(Ordering::SeqCst) {
                if Instant::now() > deadline {
                    return None;
                }
                thread::yield_now();
            }
            // The loader's pid stays ours (not reaped) while the test runs.
            let mut sent = [0u64; STORM.len()];
            let mut before_resume = 0u64;
            while !stop.load(Ordering::SeqCst) {
                for (i, (signal, _)) in STORM.iter().enumerate() {
                    if kill(Pid::from_raw(pid), *signal).is_ok() {
                        sent[i] += 1;
                        before_resume += 1;
                    }
                }
                // Stopped and continued mid-restore (SIGSTOP cannot be
                // blocked): the plan's syscalls restart, nothing fails.
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                thread::sleep(Duration::from_micros(50));
            }
            Some((sent, before_resume))
        })
    };
    let resumed = restored.wait_line("TICK ", Duration::from_secs(20));
    stop.store(true, Ordering::SeqCst);
    let sent = storm.join().unwrap();
    if let Err(err) = resumed {
        panic!(
            "the restore did not survive the signals: {err}\n{}",
            restored.stderr_report()
        );
    }
    let (sent, total) = sent.expect("the loader opened its image");
    assert!(
        sent.iter().all(|&n| n > 0),
        "every signal was sent during the restore: {sent:?}"
    );
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    eprintln!(
        "{total} signals sent until the restored task ticked ({sent:?}); {}",
        pass.line()
    );
    for ((_, name), &n) in STORM.iter().zip(&sent) {
        let got: u64 = pass.get(name).unwrap_or("0").parse().unwrap();
        assert!(
            (1..=n).contains(&got),
            "{name}: {got} delivered of {n} sent ({total} signals during the restore): {}",
            pass.line()
        );
    }
    restored.expect_line("TICK ");
}

/// The loader's own SIGPIPE is not the task's: a warning written to a
/// stderr pipe without readers raises SIGPIPE in the loader, which blocks
/// every signal; it must not stay pending for the restored task (whose
/// SIGPIPE disposition kills it), which never wrote there.
#[test]
fn the_loaders_own_sigpipe_does_not_reach_the_task() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    // Two fds of one file: the loader warns (on stderr) before the restore.
    let image = dumped_storm(scratch.path(), &["twice"]);
    // The loader with a stderr pipe whose read end is closed.
    let mut command = Command::new("python3");
    command.args([
        "-c",
        "import os, sys\n\
         r, w = os.pipe()\n\
         os.close(r)\n\
         os.dup2(w, 2)\n\
         os.close(w)\n\
         os.execv(sys.argv[1], sys.argv[1:])",
    ]);
    command.arg(&bins.loader).arg(&image);
    let mut restored = Workload::spawn_command("restored storm", command).unwrap();
    if let Err(err) = restored.wait_line("TICK ", Duration::from_secs(20)) {
        let status = restored.wait_exit(Duration::from_secs(5));
        panic!("the restored task did not run: {err}; {status:?}");
    }
    restored.expect_pass(CheckTrigger::Stdin);
    restored.expect_line("TICK ");
}
