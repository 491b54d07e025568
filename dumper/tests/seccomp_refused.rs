//! A task with a seccomp filter is refused before anything is injected into
//! it, even with `force`: the dump would make it run getitimer, which its
//! filter punishes with death. Needs root and a C compiler (`cc`): skips
//! otherwise, saying why.

mod common;
use common::{compile_c, is_root, Target, TempDir};

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use dumper::{DumpOptions, NoProgress};

/// Kills `getitimer` (36) with SECCOMP_RET_KILL_PROCESS, allows the rest,
/// then echoes stdin lines until EOF.
const PROGRAM: &str = r#"
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getitimer, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof code / sizeof code[0], code };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return 2;
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) return 3;
    char line[256];
    ssize_t n;
    write(1, "ready\n", 6);
    while ((n = read(0, line, sizeof line)) > 0) write(1, line, n);
    return 0;
}
"#;

#[test]
fn seccomp_task_is_refused_untouched_even_with_force() {
    if !is_root() {
        eprintln!("skipped: needs root (ptrace)");
        return;
    }
    let dir = TempDir::new("seccomp");
    let Some(bin) = compile_c(&dir.0, PROGRAM) else {
        return;
    };
    let mut target = Target(
        Command::new(&bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = target.0.id() as i32;
    let mut stdin = target.0.stdin.take().unwrap();
    let mut stdout = BufReader::new(target.0.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");

    // The output directory does not exist yet: a refused dump must not
    // leave it behind.
    let out = dir.0.join("out/images");
    let opts = DumpOptions {
        leave_running: true,
        force: true,
    };
    let err = dumper::dump(pid, &out, &opts, &mut NoProgress).unwrap_err();
    assert!(err.to_string().contains("seccomp"), "{err}");
    assert!(!dir.0.join("out").exists(), "output directory left behind");

    // Still alive, untraced, and answering.
    assert_eq!(target.0.try_wait().unwrap(), None, "the target died");
    stdin.write_all(b"still here\n").unwrap();
    stdin.flush().unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "still here\n");
}
