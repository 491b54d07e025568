//! End-to-end restore of pending signals: a two-threaded program has a
//! signal pending on its worker thread (SIGUSR1, sent with `pthread_kill`
//! while the worker blocks it) and one pending on the process (SIGUSR2, sent
//! with `kill` while every thread blocks it) when it is dumped. After the
//! restore both must still be pending where they were: the worker unblocks
//! SIGUSR1 and must receive it, the main thread finds SIGUSR2 pending for
//! the process. (The per-thread signal is queued by the restored thread
//! itself: the kernel lets only the target thread queue a kernel or SI_TKILL
//! signal to itself.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT};
use crimg_tests::roundtrip::{as_nobody, dump_and_kill};
use crimg_tests::{binaries, scratch_dir, Workload};

/// The program: READY once both signals are pending; on "check" the worker
/// unblocks SIGUSR1 and the main thread looks for SIGUSR2.
const PROGRAM: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t usr1_in_worker;
static pid_t worker_tid;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int go;

/* Thread-local: which thread ran the handler (after an unprivileged
   restore the worker has a new tid, so tids cannot tell). */
static __thread volatile sig_atomic_t got_usr1;

static void on_usr1(int sig) {
    (void)sig;
    got_usr1 = 1;
}

static void *worker(void *arg) {
    (void)arg;
    worker_tid = gettid();
    /* Wait for the main thread's word to check (a futex wait: the dump
       catches the thread in it). */
    pthread_mutex_lock(&lock);
    while (!go)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &usr1, NULL);
    usr1_in_worker = got_usr1;
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    sigset_t both;
    sigemptyset(&both);
    sigaddset(&both, SIGUSR1);
    sigaddset(&both, SIGUSR2);
    /* Blocked before the worker starts, so it inherits the mask. */
    pthread_sigmask(SIG_BLOCK, &both, NULL);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    while (__atomic_load_n(&worker_tid, __ATOMIC_SEQ_CST) == 0)
        usleep(1000);
    pthread_kill(t, SIGUSR1);
    kill(getpid(), SIGUSR2);
    printf("READY pid=%d worker=%d\n", getpid(), worker_tid);
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "check", 5) != 0)
            continue;
        sigset_t pending;
        sigpending(&pending);
        int usr2 = sigismember(&pending, SIGUSR2);
        pthread_mutex_lock(&lock);
        go = 1;
        pthread_cond_signal(&cond);
        pthread_mutex_unlock(&lock);
        pthread_join(t, NULL);
        /* The open fds: the loader must have left none of its own. */
        char fds[256] = "";
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        while (d && (e = readdir(d))) {
            if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d))
                continue;
            size_t n = strlen(fds);
            snprintf(fds + n, sizeof fds - n, "%s%s", n ? "," : "", e->d_name);
        }
        if (d)
            closedir(d);
        if (!usr1_in_worker)
            printf("FAIL check the worker did not receive its pending SIGUSR1\n");
        else if (!usr2)
            printf("FAIL check SIGUSR2 is not pending for the process\n");
        else
            printf("PASS pid=%d worker=%d usr1=worker usr2=pending fds=%s\n", getpid(),
                   worker_tid, fds);
        return 0;
    }
    return 0;
}
"#;

/// Compile [`PROGRAM`] into `dir`.
fn compile(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("pending_signals.c");
    let program = dir.join("pending_signals");
    std::fs::write(&source, PROGRAM).unwrap();
    let output = Command::new("cc")
        .args(["-O1", "-pthread", "-o"])
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

/// Who runs the program and the loader.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Runner {
    Root,
    /// nobody:nogroup: the worker gets a new tid, read at run time.
    Nobody,
    /// root without CAP_SYS_ADMIN and CAP_CHECKPOINT_RESTORE (as in a
    /// container): no set_tid, though euid is 0.
    RootWithoutRestoreCaps,
}

fn pending_signals_survive(runner: Runner) {
    let bins = binaries();
    let scratch = scratch_dir();
    let program = compile(scratch.path());
    let mut command = if runner == Runner::Nobody {
        std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = as_nobody();
        c.arg(&program);
        c
    } else {
        Command::new(&program)
    };
    command.current_dir(scratch.path());
    let mut original = Workload::spawn_command("pending_signals", command).unwrap();
    if let Err(err) = original.wait_ready(crimg_tests::process::READY_TIMEOUT) {
        panic!("{err}\n{}", original.stderr_report());
    }
    let dumped = dump_and_kill(&bins, original, &scratch.path().join("out"));

    let loader = match runner {
        Runner::Root => bins.loader_command(&dumped.dump.image),
        Runner::Nobody => {
            // Let nobody read the image root wrote.
            let dir = dumped.dump.image.parent().unwrap();
            for (path, mode) in [(dir, 0o755), (dumped.dump.image.as_path(), 0o644)] {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let mut c = as_nobody();
            c.arg(&bins.loader).arg(&dumped.dump.image);
            c
        }
        Runner::RootWithoutRestoreCaps => {
            let mut c = Command::new("setpriv");
            c.arg("--bounding-set=-sys_admin,-checkpoint_restore")
                .arg(&bins.loader)
                .arg(&dumped.dump.image);
            c
        }
    };
    let mut restored = Workload::spawn_command("restored pending_signals", loader).unwrap();
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("usr1"), Some("worker"), "{}", pass.line());
    assert_eq!(pass.get("usr2"), Some("pending"), "{}", pass.line());
    // Nothing the loader opened (image, files, its stderr copy) stays.
    assert_eq!(pass.get("fds"), Some("0,1,2"), "{}", pass.line());
    let stderr = restored.stderr_lines().to_vec();
    assert!(
        !stderr.iter().any(|line| line.contains("restore failed")),
        "{}",
        restored.stderr_report()
    );
    if runner == Runner::RootWithoutRestoreCaps {
        if let Err(err) = restored.wait_stderr_containing("get new thread ids", LINE_TIMEOUT) {
            panic!("{err}\n{}", restored.stderr_report());
        }
    }
}

#[test]
fn per_thread_and_process_pending_signals_survive() {
    crimg_tests::skip_unless_root!();
    pending_signals_survive(Runner::Root);
}

/// Without privilege the worker gets a new tid, read by the plan at run
/// time: it must still queue its signal to itself.
#[test]
fn pending_signals_survive_an_unprivileged_restore() {
    crimg_tests::skip_unless_root!();
    pending_signals_survive(Runner::Nobody);
}

/// Root lacking the capabilities set_tid needs restores like an ordinary
/// user instead of failing at clone3 after the point of no return.
#[test]
fn root_without_restore_capabilities_restores_with_new_tids() {
    crimg_tests::skip_unless_root!();
    pending_signals_survive(Runner::RootWithoutRestoreCaps);
}
