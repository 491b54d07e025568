//! Full-screen and interactive programs in a terminal: vim, less, top and
//! an interactive bash run in a tmux pane (a pty of a fixed size), are
//! dumped (killed), and their image is run from the pane's shell after the
//! screen was cleared. Each must redraw by itself (the loader puts the
//! terminal's modes back and sends SIGWINCH) and take keys in its own
//! terminal mode (raw for vim, less and top; readline's for bash).

use std::path::Path;
use std::time::Duration;

use crimg_tests::process::PidGuard;
use crimg_tests::programs::{dump_or_panic, require_program, wait_until};
use crimg_tests::tmux::{children_of, wait_child_named, Tmux};
use crimg_tests::{binaries, scratch_dir, skip_unless_root, Binaries, TestBinfmt};

const WAIT: Duration = Duration::from_secs(30);

/// A shell in a 100x30 pane, in `dir`.
fn shell_pane(dir: &Path) -> (Tmux, i32) {
    let tmux = Tmux::start(dir, 100, 30, "bash", ["--norc", "--noprofile"])
        .unwrap_or_else(|e| panic!("{e}"));
    let shell = tmux.pane_pid().unwrap_or_else(|e| panic!("{e}"));
    (tmux, shell)
}

/// Type `line` in the pane and wait until the shell runs a child `comm`:
/// its pid, held by a guard.
fn start_in_pane(tmux: &Tmux, shell: i32, line: &str, comm: &str) -> PidGuard {
    tmux.type_line(line).unwrap_or_else(|e| panic!("{e}"));
    let pid = wait_child_named(shell, comm, WAIT).unwrap_or_else(|e| {
        panic!(
            "`{line}` started no {comm}: {e}\n{}",
            tmux.screen().unwrap_or_default()
        )
    });
    PidGuard::new(pid).unwrap_or_else(|e| panic!("{e}"))
}

/// Dump `program` (which kills it), wait until the shell has noticed, then
/// clear the screen and run the image from the shell: the restored
/// program, held by a guard.
fn dump_and_resume_in_pane(
    bins: &Binaries,
    tmux: &Tmux,
    shell: i32,
    program: &PidGuard,
    comm: &str,
    out: &Path,
) -> PidGuard {
    dump_and_resume_resized(bins, tmux, shell, program, comm, out, None)
}

/// [`dump_and_resume_in_pane`], the window resized to `size` (columns,
/// rows) while the program is not running.
fn dump_and_resume_resized(
    bins: &Binaries,
    tmux: &Tmux,
    shell: i32,
    program: &PidGuard,
    comm: &str,
    out: &Path,
    size: Option<(u16, u16)>,
) -> PidGuard {
    let dump = dump_or_panic(bins, comm, program.pid(), out);
    program
        .wait_gone(WAIT)
        .unwrap_or_else(|e| panic!("crdump did not kill {comm}: {e}"));
    wait_until("the shell reaps the killed program", WAIT, || {
        if children_of(shell).is_empty() {
            Ok(())
        } else {
            Err(format!("children {:?}", children_of(shell)))
        }
    });
    if let Some((cols, rows)) = size {
        tmux.resize(cols, rows).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tmux.pane_size().unwrap(), (cols, rows));
    }
    // `clear` first: whatever the restored program shows, it drew itself.
    let run = format!("clear; {}", dump.image.display());
    let restored = start_in_pane(tmux, shell, &run, comm);
    assert_ne!(restored.pid(), program.pid());
    restored
}

/// Wait until `text` is on the screen, with the screen in the panic.
fn see(tmux: &Tmux, what: &str, text: &str) -> String {
    tmux.wait_screen(what, WAIT, |s| s.contains(text))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Wait until the shell has no child any more (the program quit).
fn wait_quit(tmux: &Tmux, shell: i32, comm: &str) {
    wait_until(&format!("{comm} quits"), WAIT, || {
        if children_of(shell).is_empty() {
            Ok(())
        } else {
            Err(tmux.screen().unwrap_or_default())
        }
    });
}

/// Press Escape and wait until vim shows it left insert mode (vim waits
/// for more of an escape sequence first: a key pressed meanwhile, or a
/// dump, would find it still inserting).
fn leave_insert_mode(tmux: &Tmux, typed: &str) -> String {
    tmux.wait_screen("the typed text in insert mode", WAIT, |s| {
        s.contains(typed) && s.contains("-- INSERT --")
    })
    .unwrap_or_else(|e| panic!("{e}"));
    tmux.send_keys(&["Escape"]).unwrap();
    tmux.wait_screen("vim's normal mode", WAIT, |s| !s.contains("-- INSERT --"))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn setup(program: &str, package: &str) -> Option<(Binaries, TestBinfmt, tempfile::TempDir)> {
    require_program(program, package)?;
    require_program("tmux", "tmux")?;
    let bins = binaries();
    let binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    Some((bins, binfmt, scratch_dir()))
}

#[test]
fn vim_keeps_unsaved_edits_redraws_and_writes_them() {
    skip_unless_root!();
    let Some((bins, _binfmt, scratch)) = setup("vim", "vim") else {
        return;
    };
    let file = scratch.path().join("notes.txt");
    std::fs::write(&file, "first line on disk\n").unwrap();
    let (tmux, shell) = shell_pane(scratch.path());
    let vim = start_in_pane(&tmux, shell, "vim -u NONE -N -i NONE notes.txt", "vim");
    see(&tmux, "the file in vim", "first line on disk");
    tmux.send_keys(&["o"]).unwrap();
    tmux.send_text("typed before the dump").unwrap();
    leave_insert_mode(&tmux, "typed before the dump");

    let out = scratch.path().join("out");
    let vim = dump_and_resume_in_pane(&bins, &tmux, shell, &vim, "vim", &out);
    // Redrawn with nothing typed: the unsaved edit is back on the screen.
    let screen = see(
        &tmux,
        "vim's redraw after the restore",
        "typed before the dump",
    );
    assert!(screen.contains("first line on disk"), "{screen}");
    tmux.send_keys(&["o"]).unwrap();
    tmux.send_text("typed after the restore").unwrap();
    let screen = leave_insert_mode(&tmux, "typed after the restore");
    assert!(!screen.contains("E1285"), "vim reports E1285:\n{screen}");
    tmux.send_text(":wq").unwrap();
    tmux.send_keys(&["Enter"]).unwrap();
    wait_quit(&tmux, shell, "vim");
    drop(vim);
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        written, "first line on disk\ntyped before the dump\ntyped after the restore\n",
        "what :wq wrote"
    );
}

/// The first line of the screen that is a number (less shows `seq` output).
fn top_number(screen: &str) -> Option<u64> {
    screen.lines().find_map(|l| l.trim().parse().ok())
}

#[test]
fn less_redraws_and_pages_on_after_restore() {
    skip_unless_root!();
    let Some((bins, _binfmt, scratch)) = setup("less", "less") else {
        return;
    };
    let numbers: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    std::fs::write(scratch.path().join("numbers.txt"), numbers).unwrap();
    let (tmux, shell) = shell_pane(scratch.path());
    let less = start_in_pane(&tmux, shell, "less numbers.txt", "less");
    see(&tmux, "less's first page", "numbers.txt");
    tmux.send_keys(&["Space"]).unwrap();
    let paged = tmux
        .wait_screen("less's second page", WAIT, |s| {
            top_number(s).unwrap_or(0) > 1
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let top = top_number(&paged).unwrap();

    let out = scratch.path().join("out");
    let less = dump_and_resume_in_pane(&bins, &tmux, shell, &less, "less", &out);
    tmux.wait_screen("less's redraw after the restore", WAIT, |s| {
        top_number(s) == Some(top)
    })
    .unwrap_or_else(|e| panic!("{e}"));
    // A key without Enter reaches it: the terminal is in less's raw mode.
    tmux.send_keys(&["Space"]).unwrap();
    tmux.wait_screen("the next page after the restore", WAIT, |s| {
        top_number(s).unwrap_or(0) > top
    })
    .unwrap_or_else(|e| panic!("{e}"));
    tmux.send_keys(&["q"]).unwrap();
    wait_quit(&tmux, shell, "less");
    drop(less);
}

/// How many lines of the screen are numbers (the `seq` lines less shows).
fn number_lines(screen: &str) -> usize {
    screen
        .lines()
        .filter(|l| l.trim().parse::<u64>().is_ok())
        .count()
}

#[test]
fn less_takes_the_size_of_the_terminal_it_resumes_in() {
    skip_unless_root!();
    let Some((bins, _binfmt, scratch)) = setup("less", "less") else {
        return;
    };
    let numbers: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    std::fs::write(scratch.path().join("numbers.txt"), numbers).unwrap();
    let (tmux, shell) = shell_pane(scratch.path());
    let less = start_in_pane(&tmux, shell, "less numbers.txt", "less");
    // 30 rows: 29 lines of text and the prompt line.
    let before = tmux
        .wait_screen("less's first page", WAIT, |s| number_lines(s) == 29)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(before.contains("numbers.txt"), "{before}");

    // The terminal it resumes in is taller: less lays its page out for
    // that size (the image's 100x30 is not forced on it), from the
    // SIGWINCH it gets.
    let out = scratch.path().join("out");
    let less = dump_and_resume_resized(&bins, &tmux, shell, &less, "less", &out, Some((100, 40)));
    tmux.wait_screen("less's page for 40 rows", WAIT, |s| number_lines(s) == 39)
        .unwrap_or_else(|e| panic!("{e}"));
    tmux.send_keys(&["q"]).unwrap();
    wait_quit(&tmux, shell, "less");
    drop(less);
}

#[test]
fn top_redraws_and_quits_on_a_key_after_restore() {
    skip_unless_root!();
    let Some((bins, _binfmt, scratch)) = setup("top", "procps") else {
        return;
    };
    let (tmux, shell) = shell_pane(scratch.path());
    let top = start_in_pane(&tmux, shell, "top -d 0.5", "top");
    see(&tmux, "top's header", "Tasks:");

    let out = scratch.path().join("out");
    let top = dump_and_resume_in_pane(&bins, &tmux, shell, &top, "top", &out);
    see(&tmux, "top's redraw after the restore", "Tasks:");
    // It lists the processes of now: its own new pid shows up.
    see(
        &tmux,
        "the restored top's own pid in its list",
        &format!("{} ", top.pid()),
    );
    tmux.send_keys(&["q"]).unwrap();
    wait_quit(&tmux, shell, "top");
    drop(top);
}

#[test]
fn interactive_bash_keeps_its_variables_and_history() {
    skip_unless_root!();
    let Some((bins, _binfmt, scratch)) = setup("bash", "bash") else {
        return;
    };
    let (tmux, shell) = shell_pane(scratch.path());
    let inner = start_in_pane(
        &tmux,
        shell,
        // No history file: what `history` shows after the restore was in
        // its memory.
        "HISTFILE= PS1='inner> ' bash --norc --noprofile -i",
        "bash",
    );
    see(&tmux, "the inner prompt", "inner> ");
    // Two more fds on its terminal: /dev/tty (opened again at restore)
    // and the pty by its name (a dup of the caller's stdio at restore).
    tmux.type_line("exec 5</dev/tty 6>$(tty)").unwrap();
    // Unique to this run (the scratch directory's name).
    let nonce = scratch
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let assignment = format!("kept=value-{nonce}-$((6*7))");
    tmux.type_line(&assignment).unwrap();
    tmux.type_line("echo before-$kept").unwrap();
    see(
        &tmux,
        "the variable before the dump",
        &format!("before-value-{nonce}-42"),
    );

    let out = scratch.path().join("out");
    let inner = dump_and_resume_in_pane(&bins, &tmux, shell, &inner, "bash", &out);
    tmux.type_line("echo after-$kept").unwrap();
    see(
        &tmux,
        "the variable after the restore",
        &format!("after-value-{nonce}-42"),
    );
    tmux.type_line("history").unwrap();
    see(&tmux, "the history after the restore", &assignment);
    tmux.type_line("echo through-$((3*3))-six >&6").unwrap();
    see(&tmux, "a line written to fd 6", "through-9-six");
    tmux.type_line("read -r -u 5 line; echo \"fd5-got-$line\"")
        .unwrap();
    // Typed once it reads fd 5 (in its canonical mode), not ahead into
    // readline's.
    wait_until("bash reads fd 5", WAIT, || {
        let now =
            std::fs::read_to_string(format!("/proc/{}/syscall", inner.pid())).unwrap_or_default();
        if now.starts_with("0 0x5 ") {
            Ok(())
        } else {
            Err(now)
        }
    });
    tmux.type_line("typed-for-five").unwrap();
    see(
        &tmux,
        "a line read from /dev/tty at fd 5",
        "fd5-got-typed-for-five",
    );
    tmux.type_line("exit").unwrap();
    wait_quit(&tmux, shell, "bash");
    drop(inner);
}

#[test]
fn a_pty_of_its_own_is_refused_by_name() {
    skip_unless_root!();
    let Some(python) = require_program("python3", "python3") else {
        return;
    };
    let bins = binaries();
    let scratch = scratch_dir();
    // fd 3 the master, fd 4 the slave of a pty the program opened itself.
    let mut command = std::process::Command::new(python);
    command.args([
        "-c",
        "import os, time; m, s = os.openpty(); print('READY', m, s, flush=True); time.sleep(600)",
    ]);
    let mut owner = crimg_tests::programs::start_ready("a pty owner", command);
    assert_eq!(owner.ready().unwrap().line(), "READY 3 4");
    let out = crimg_tests::cli::run(
        bins.crdump_command(owner.pid(), &scratch.path().join("out"), true),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(!out.status.success(), "crdump dumped a pty master");
    assert!(
        out.stderr.contains("fd 3 is a pty master (/dev/ptmx)"),
        "{}",
        out.stderr
    );
    // Refused before anything was written; the program runs on.
    assert!(owner.child().try_status().is_none());
}
