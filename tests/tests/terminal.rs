//! Resuming in the caller's terminal: a program reading its terminal is
//! dumped, then its image is run from a shell prompt in the same terminal
//! (through a binfmt entry), and what is typed afterwards reaches it.
//!
//! The terminal is a tmux pane on a private tmux server (its own socket),
//! read with `capture-pane`, written with `send-keys`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crimg_tests::process::only_stdio;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, workload_path, TestBinfmt};

/// A tmux server of this test's own; killed (with everything in it) on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(shell_dir: &Path) -> Tmux {
        let socket = format!("crimg-test-{}", std::process::id());
        let tmux = Tmux { socket };
        let mut c = tmux.command();
        c.args([
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
            "-c",
        ])
        .arg(shell_dir)
        .args(["bash", "--norc", "--noprofile"]);
        only_stdio(&mut c);
        assert!(c.status().unwrap().success(), "tmux new-session");
        tmux
    }

    fn command(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn type_line(&self, text: &str) {
        let st = self
            .command()
            .args(["send-keys", "-l", text])
            .status()
            .unwrap();
        assert!(st.success());
        let st = self
            .command()
            .args(["send-keys", "Enter"])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn screen(&self) -> String {
        let out = self
            .command()
            .args(["capture-pane", "-p", "-J"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen until a line satisfies `pred` (after the first
    /// `skip` matching lines), or fails after a deadline.
    fn wait_for(&self, what: &str, skip: usize, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.screen();
            if let Some(line) = screen.lines().filter(|l| pred(l)).nth(skip) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the terminal:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn a_reader_resumes_in_the_terminal_that_runs_its_image() {
    skip_unless_root!();
    if !have_tmux() {
        // tools/test.sh installs tmux when it runs as root.
        crimg_tests::privilege::report_skip("no tmux");
        return;
    }
    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let tmux = Tmux::start(scratch.path());

    let counter: PathBuf = workload_path("counter");
    tmux.type_line(&format!(
        "{} --sleep-in read --heap-mb 4 --tmpdir {}",
        counter.display(),
        scratch.path().display()
    ));
    let ready = tmux.wait_for("READY line", 0, |l| l.starts_with("READY pid="));
    let pid: i32 = ready["READY pid=".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    tmux.type_line("before the dump");
    tmux.wait_for("echo of the first line", 0, |l| l == "GOT before the dump");

    let dump = bins
        .dump(pid, &scratch.path().join("out"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    // The shell notices its job was killed and prompts again.
    tmux.wait_for("the shell's prompt after the kill", 0, |l| {
        l.contains("Killed")
    });

    tmux.type_line(&dump.image.display().to_string());
    // The restored reader is blocked in read() on this terminal again.
    tmux.type_line("after the restore");
    tmux.wait_for("echo of the typed line", 0, |l| {
        l == "GOT after the restore"
    });
    tmux.type_line("check");
    let pass = tmux.wait_for("PASS or FAIL", 0, |l| {
        l.starts_with("PASS ") || l.starts_with("FAIL ")
    });
    assert!(
        pass.starts_with("PASS counter"),
        "{pass}\n{}",
        tmux.screen()
    );
    // The restored process runs under a new pid, in this terminal.
    assert!(!pass.contains(&format!("pid={pid} ")), "{pass}");
    tmux.type_line("quit");
    tmux.wait_for("BYE", 0, |l| l == "BYE");
}
