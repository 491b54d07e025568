//! Every signal's action round-trips, as the dump now asks the kernel
//! only for the signals `/proc/PID/status` names (`SigCgt`, `SigIgn`) and
//! SIGCHLD: handlers with their flags, masks and restorer on many
//! signals (standard and real-time), `SIG_IGN` on others, and SIGCHLD at
//! `SIG_DFL` with `SA_NOCLDWAIT | SA_NOCLDSTOP`, whose flags change what
//! the kernel does. The loader runs with some signals ignored (as a shell
//! can leave them, across execve): signals that were `SIG_DFL` in the task
//! must be `SIG_DFL` again. After the restore the program compares every
//! action with what it read before the dump, and checks the two SIGCHLD
//! flags by their effect: an exited child is reaped by the kernel
//! (`waitpid` finds none), and a stopped child queues no SIGCHLD.

use std::path::Path;
use std::process::Command;

use crimg_tests::process::CheckTrigger;
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Workload};

const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_plain(int sig) { (void)sig; }
static void on_info(int sig, siginfo_t *si, void *uc) { (void)sig; (void)si; (void)uc; }

static struct sigaction before[65];
static char failures[4096];

static void fail(const char *fmt, int sig, long a, long b) {
    size_t n = strlen(failures);
    snprintf(failures + n, sizeof failures - n, fmt, sig, a, b);
}

static void set(int sig, void *handler, int flags, int masked) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    if (flags & SA_SIGINFO)
        sa.sa_sigaction = handler;
    else
        sa.sa_handler = handler;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    if (masked)
        sigaddset(&sa.sa_mask, masked);
    if (sigaction(sig, &sa, NULL)) {
        printf("sigaction %d: %s\n", sig, strerror(errno));
        exit(1);
    }
}

static int same_mask(const sigset_t *a, const sigset_t *b) {
    for (int s = 1; s <= 64; s++)
        if (s != SIGKILL && s != SIGSTOP && sigismember(a, s) != sigismember(b, s))
            return 0;
    return 1;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    set(SIGHUP, on_info, SA_SIGINFO | SA_RESTART, SIGUSR2);
    set(SIGINT, SIG_IGN, 0, 0);
    set(SIGQUIT, on_plain, SA_ONSTACK | SA_NODEFER, SIGHUP);
    set(SIGUSR1, on_plain, SA_RESETHAND, 0);
    set(SIGPIPE, SIG_IGN, 0, 0);
    set(SIGALRM, on_plain, 0, SIGTERM);
    set(SIGTERM, SIG_DFL, 0, 0);
    set(SIGURG, SIG_IGN, 0, 0);
    set(SIGWINCH, on_info, SA_SIGINFO, 0);
    set(SIGRTMIN + 2, on_info, SA_SIGINFO | SA_RESTART, SIGRTMIN + 3);
    set(SIGRTMAX, SIG_IGN, 0, 0);
    set(SIGRTMAX - 1, on_plain, SA_NODEFER, 0);
    set(SIGCHLD, SIG_DFL, SA_NOCLDWAIT | SA_NOCLDSTOP, 0);
    for (int s = 1; s <= 64; s++)
        if (s != SIGKILL && s != SIGSTOP)
            sigaction(s, NULL, &before[s]);
    printf("READY pid=%d\n", getpid());
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "check", 5) != 0)
            continue;
        int compared = 0;
        for (int s = 1; s <= 64; s++) {
            if (s == SIGKILL || s == SIGSTOP)
                continue;
            struct sigaction now;
            sigaction(s, NULL, &now);
            struct sigaction *was = &before[s];
            if (now.sa_handler != was->sa_handler) {
                fail("signal %d: handler %#lx, was %#lx; ", s, (long)now.sa_handler,
                     (long)was->sa_handler);
                continue;
            }
            if (was->sa_handler == SIG_DFL && s != SIGCHLD)
                continue;
            /* A handler, SIG_IGN, or SIGCHLD: flags, mask, restorer. */
            compared++;
            if (now.sa_flags != was->sa_flags)
                fail("signal %d: flags %#lx, were %#lx; ", s, now.sa_flags, was->sa_flags);
            if (!same_mask(&now.sa_mask, &was->sa_mask))
                fail("signal %d: mask differs%ld%ld; ", s, 0, 0);
            if (now.sa_restorer != was->sa_restorer)
                fail("signal %d: restorer %#lx, was %#lx; ", s, (long)now.sa_restorer,
                     (long)was->sa_restorer);
        }
        /* SA_NOCLDWAIT: the exited child is reaped by the kernel; waitpid
           waits for it to go and then finds no child. */
        pid_t child = fork();
        if (child == 0)
            _exit(0);
        if (waitpid(child, NULL, 0) != -1 || errno != ECHILD)
            fail("signal %d: an exited child was not reaped by the kernel%ld%ld; ", SIGCHLD, 0, 0);
        /* SA_NOCLDSTOP: a child that stops queues no SIGCHLD. */
        sigset_t chld, pending;
        sigemptyset(&chld);
        sigaddset(&chld, SIGCHLD);
        sigprocmask(SIG_BLOCK, &chld, NULL);
        child = fork();
        if (child == 0) {
            raise(SIGSTOP);
            _exit(0);
        }
        int status = 0;
        if (waitpid(child, &status, WUNTRACED) != child || !WIFSTOPPED(status))
            fail("signal %d: the child did not stop (%ld %ld); ", SIGCHLD, (long)status, 0);
        sigpending(&pending);
        if (sigismember(&pending, SIGCHLD))
            fail("signal %d: a stopped child queued SIGCHLD%ld%ld; ", SIGCHLD, 0, 0);
        kill(child, SIGKILL);
        if (failures[0])
            printf("FAIL check %s\n", failures);
        else
            printf("PASS compared=%d\n", compared);
        return 0;
    }
    return 0;
}
"#;

/// Compile [`PROGRAM`] into `dir`.
fn compile(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("sigactions.c");
    let program = dir.join("sigactions");
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

#[test]
fn every_signal_action_round_trips_with_sigchld_flags_under_sig_dfl() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let program = compile(scratch.path());
    let mut original = Workload::spawn_command("sigactions", Command::new(&program)).unwrap();
    if let Err(err) = original.wait_ready(crimg_tests::process::READY_TIMEOUT) {
        panic!("{err}\n{}", original.stderr_report());
    }
    let dumped = dump_and_kill(&bins, original, &scratch.path().join("out"));
    // The loader starts with SIGTERM, SIGUSR2 and SIGCHLD ignored (a
    // shell's `trap ''` survives exec): the task had SIGTERM and SIGUSR2
    // at SIG_DFL, SIGCHLD at SIG_DFL with flags.
    let mut loader = Command::new("sh");
    loader
        .arg("-c")
        .arg("trap '' TERM USR2 CHLD; exec \"$0\" \"$1\"")
        .arg(&bins.loader)
        .arg(&dumped.dump.image);
    let mut restored = Workload::spawn_command("restored sigactions", loader).unwrap();
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    // SIGHUP, INT, QUIT, USR1, PIPE, ALRM, URG, WINCH, RTMIN+2, RTMAX-1,
    // RTMAX, and SIGCHLD.
    assert_eq!(pass.get("compared"), Some("12"), "{}", pass.line());
}
