//! A thread in `rt_sigsuspend` runs under a temporary signal mask; the dump
//! must record its real mask (from the kernel's saved_sigmask), and after a
//! `leave_running` dump the thread must still wait in sigsuspend with its
//! temporary mask and take the signal. Needs root and `cc`: skips
//! otherwise, saying why.

mod common;
use common::{compile_c, is_root, Target, TempDir};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use dumper::{DumpOptions, NoProgress};
use image_format::Image;

/// Blocks SIGUSR1 and SIGUSR2, then waits in sigsuspend with only SIGUSR2
/// blocked; says "got" for each SIGUSR1.
const PROGRAM: &str = r#"
#include <signal.h>
#include <unistd.h>

static void on_usr1(int sig) { (void)sig; write(1, "got\n", 4); }

int main(void) {
    sigset_t block, wait_mask;
    /* Close what the test harness leaks (cargo's jobserver pipe). */
    for (int fd = 3; fd < 1024; fd++) close(fd);
    struct sigaction sa = { 0 };
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, 0);
    sigemptyset(&wait_mask);
    sigaddset(&wait_mask, SIGUSR2);
    write(1, "ready\n", 6);
    for (;;) sigsuspend(&wait_mask);
}
"#;

#[test]
fn sigsuspend_keeps_its_real_mask() {
    if !is_root() {
        eprintln!("skipped: needs root (ptrace)");
        return;
    }
    let dir = TempDir::new("tmpmask");
    let Some(bin) = compile_c(&dir.0, PROGRAM) else {
        return;
    };
    let mut target = Target(
        Command::new(&bin)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = target.0.id() as i32;
    let mut stdout = BufReader::new(target.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // Wait until it sits in rt_sigsuspend (130): the kernel's own view.
    while !std::fs::read_to_string(format!("/proc/{pid}/syscall"))
        .unwrap_or_default()
        .starts_with("130 ")
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }

    let out = dir.0.join("out");
    let opts = DumpOptions {
        leave_running: true,
        force: false,
    };
    let report = dumper::dump(pid, &out, &opts, &mut NoProgress).expect("dump");
    let bytes = std::fs::read(&report.image).unwrap();
    let img = Image::parse(&bytes).unwrap();
    let t = img.threads().next().unwrap().unwrap();
    let bit = |sig: i32| 1u64 << (sig - 1);
    assert_eq!(
        t.record.sigmask & (bit(libc::SIGUSR1) | bit(libc::SIGUSR2)),
        bit(libc::SIGUSR1) | bit(libc::SIGUSR2),
        "the temporary mask was recorded instead of the real one: {:#x}",
        t.record.sigmask
    );

    // Runs on in sigsuspend with its temporary mask: SIGUSR1 is taken.
    assert_eq!(send_signal(pid, libc::SIGUSR1), 0);
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "got\n");
}

/// `kill -SIG pid`, by pid (the test code has no unsafe).
fn send_signal(pid: i32, sig: i32) -> i32 {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .map_or(-1, |s| if s.success() { 0 } else { 1 })
}
