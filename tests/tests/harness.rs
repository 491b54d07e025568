//! Self-tests of the harness and the workloads, without crimg: every
//! workload passes its own checks when nothing was done to it, fails them
//! with a specific reason when its memory is changed behind its back, and
//! the guards really kill what they hold.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use crimg_tests::facts::Facts;
use crimg_tests::process::{CheckTrigger, ProcessError, LINE_TIMEOUT};
use crimg_tests::{binfmt, scratch_dir, PidGuard, TestBinfmt, TickStream, Workload};
use nix::sys::signal::Signal;

/// Small sizes keep the self-tests quick; the defaults are for real runs.
fn small_counter_args(tmpdir: &std::path::Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--heap-mb",
        "8",
        "--anon-mb",
        "4",
        "--file-pages",
        "8",
        "--tmpdir",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    args.push(tmpdir.display().to_string());
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

#[test]
fn counter_passes_its_checks_and_ticks_consecutively() {
    let scratch = scratch_dir();
    let mut counter = Workload::start(
        "counter",
        small_counter_args(scratch.path(), &["--threads", "2"]),
    );
    let ready = counter.ready().expect("READY seen").clone();
    assert_eq!(ready.pid().unwrap(), counter.pid());
    assert_eq!(ready.get("threads"), Some("2"));
    counter.expect_line("TICK 3");

    counter.signal(Signal::SIGUSR1).unwrap();
    assert_eq!(counter.expect_line("USR1"), "USR1 1 altstack=1");

    for trigger in [CheckTrigger::Signal, CheckTrigger::Stdin] {
        let pass = counter.expect_pass(trigger);
        assert_eq!(
            pass.number("heap_sum").unwrap(),
            ready.number("heap_sum").unwrap()
        );
        assert_eq!(
            pass.number("anon_sum").unwrap(),
            ready.number("anon_sum").unwrap()
        );
        assert_eq!(
            pass.number("file_sum").unwrap(),
            ready.number("file_sum").unwrap()
        );
        assert_eq!(pass.get("usr1"), Some("1"));
        assert_eq!(pass.words(), ["counter"]);
    }
    counter.expect_line("TICK");
    let ticks = TickStream::from_lines(counter.stdout_lines()).unwrap();
    ticks.check_consecutive("counter self-test").unwrap();
    assert!(ticks.ticks().len() >= 3);

    counter.send_line("quit").unwrap();
    counter.expect_line("BYE");
    assert!(counter.wait_exit(LINE_TIMEOUT).unwrap().success());
}

#[test]
fn counter_busy_mode_passes() {
    let scratch = scratch_dir();
    let mut counter = Workload::start(
        "counter",
        small_counter_args(scratch.path(), &["--sleep-in", "busy", "--threads", "1"]),
    );
    counter.expect_line("TICK 5");
    let pass = counter.expect_pass(CheckTrigger::Signal);
    assert!(pass.number("vec_rounds").unwrap() > 0);
}

#[test]
fn counter_read_mode_echoes_lines_and_checks_on_signal() {
    let scratch = scratch_dir();
    let mut counter = Workload::start(
        "counter",
        small_counter_args(scratch.path(), &["--sleep-in", "read"]),
    );
    counter.send_line("hello there").unwrap();
    assert_eq!(counter.expect_line("GOT"), "GOT hello there");
    // SIGUSR2 interrupts the blocking read() (no SA_RESTART).
    counter.expect_pass(CheckTrigger::Signal);
    counter.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn counter_long_sleep_survives_interruptions() {
    let scratch = scratch_dir();
    let mut counter = Workload::start(
        "counter",
        small_counter_args(scratch.path(), &["--sleep-ms", "300"]),
    );
    counter.expect_pass(CheckTrigger::Signal);
    let woke = Facts::parse(&counter.expect_line("WOKE"));
    assert!(woke.number("slept_ms").unwrap() >= 300, "{}", woke.line());
    // The signal interrupts the sleep, or (sent before it began) stops it
    // from starting: once either way.
    assert_eq!(woke.number("interrupted").unwrap(), 1, "{}", woke.line());
    counter.expect_line("TICK 1");
}

#[test]
fn counter_keeps_a_blocked_signal_pending() {
    let scratch = scratch_dir();
    let mut counter = Workload::start("counter", small_counter_args(scratch.path(), &[]));
    assert_eq!(
        counter.expect_pass(CheckTrigger::Stdin).get("rt_pending"),
        Some("0")
    );
    // SIGRTMIN+1 as the C library numbers it (glibc keeps two for itself).
    let rt_signal = libc::SIGRTMIN() + 1;
    counter.signal_number(rt_signal).unwrap();
    assert_eq!(
        counter.expect_pass(CheckTrigger::Stdin).get("rt_pending"),
        Some("1")
    );
}

/// Change one byte of `pid`'s memory at `address` through /proc/PID/mem.
fn poke(pid: i32, address: u64, byte: u8) {
    let mut mem = fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("open /proc/PID/mem of our own child");
    mem.seek(SeekFrom::Start(address)).unwrap();
    mem.write_all(&[byte]).unwrap();
}

#[test]
fn counter_reports_what_was_changed_behind_its_back() {
    let scratch = scratch_dir();
    let mut counter = Workload::start("counter", small_counter_args(scratch.path(), &[]));
    let ready = counter.ready().unwrap().clone();
    let pid = counter.pid();
    poke(pid, ready.number("heap").unwrap() + 16, 0xee);
    poke(pid, ready.number("knownstr").unwrap(), b'X');
    match counter.check(CheckTrigger::Signal, LINE_TIMEOUT) {
        Err(ProcessError::CheckFailed { reason, .. }) => {
            assert!(
                reason.contains("known string changed to 'Xrimg"),
                "{reason}"
            );
            assert!(reason.contains("heap word at offset 0x10"), "{reason}");
        }
        other => panic!("expected a FAIL naming the heap and the string, got {other:?}"),
    }
}

#[test]
fn bigmem_writes_exactly_the_requested_share() {
    for layout in ["contiguous", "interleaved"] {
        let mut bigmem = Workload::start(
            "bigmem",
            ["--mb", "16", "--write-pct", "50", "--layout", layout],
        );
        let ready = bigmem.ready().unwrap().clone();
        assert_eq!(ready.number("size").unwrap(), 16 << 20);
        assert_eq!(ready.number("written").unwrap(), 8 << 20, "{layout}");
        for trigger in [CheckTrigger::Signal, CheckTrigger::Stdin] {
            let pass = bigmem.expect_pass(trigger);
            assert_eq!(pass.number("sum").unwrap(), ready.number("sum").unwrap());
            assert_eq!(pass.number("written").unwrap(), 8 << 20);
        }
        let untouched = ready.number("addr").unwrap() + (16 << 20) - 4096;
        // With half the pages interleaved, page 1 is the first written one.
        let written = ready.number("addr").unwrap() + 4096;
        if layout == "contiguous" {
            poke(bigmem.pid(), untouched, 1);
            let failure = bigmem.check(CheckTrigger::Stdin, LINE_TIMEOUT).unwrap_err();
            assert!(
                failure.to_string().contains("untouched page 4095"),
                "{failure}"
            );
        } else {
            poke(bigmem.pid(), written, 1);
            let failure = bigmem.check(CheckTrigger::Stdin, LINE_TIMEOUT).unwrap_err();
            assert!(failure.to_string().contains("written page 1 "), "{failure}");
        }
    }
}

#[test]
fn script_loops_tick_and_pass_their_checks() {
    for script in ["loop.py", "loop.sh"] {
        let mut workload = Workload::start(script, ["--interval-ms", "5"]);
        workload.expect_line("TICK 3");
        let by_signal = workload.expect_pass(CheckTrigger::Signal);
        let by_stdin = workload.expect_pass(CheckTrigger::Stdin);
        assert_eq!(by_signal.pid().unwrap(), workload.pid(), "{script}");
        assert_eq!(by_stdin.words(), [script]);
        workload.expect_line("TICK");
        TickStream::from_lines(workload.stdout_lines())
            .unwrap()
            .check_consecutive(if script == "loop.py" {
                "loop.py"
            } else {
                "loop.sh"
            })
            .unwrap();
        workload.send_line("quit").unwrap();
        workload.expect_line("BYE");
    }
}

#[test]
fn dropping_a_workload_kills_it_even_in_a_panic() {
    let scratch = scratch_dir();
    let args = small_counter_args(scratch.path(), &["--threads", "1"]);
    let mut watcher = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let counter = Workload::start("counter", &args);
        watcher = Some(PidGuard::new(counter.pid()).unwrap());
        panic!("test body fails while the workload runs");
    }));
    assert!(result.is_err());
    let watcher = watcher.expect("the workload was started");
    watcher.wait_gone(Duration::from_secs(10)).unwrap();
}

#[test]
fn pid_guard_kills_a_process_that_is_not_our_child() {
    // The shell's background `sleep` is our grandchild.
    let mut shell = Workload::spawn_command("shell", {
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 1000 & echo \"SLEEPER pid=$!\"; wait"]);
        command
    })
    .unwrap();
    let sleeper = Facts::parse(&shell.expect_line("SLEEPER")).pid().unwrap();
    let guard = PidGuard::new(sleeper).unwrap();
    let watcher = PidGuard::new(sleeper).unwrap();
    drop(guard);
    watcher.wait_gone(Duration::from_secs(10)).unwrap();
    // The shell's `wait` returns once its child is gone.
    assert!(shell.wait_exit(Duration::from_secs(10)).unwrap().success());
}

#[test]
fn test_binfmt_entry_runs_matching_files_and_disappears() {
    crimg_tests::skip_unless_root!();
    if let Err(err) = binfmt::ensure_mounted() {
        crimg_tests::privilege::report_skip(&format!("binfmt_misc unavailable: {err}"));
        return;
    }
    let scratch = scratch_dir();
    // `cat` as the interpreter: running a file with the crimg magic prints
    // the file, which proves the entry matched it.
    let fake_image = scratch.path().join("fake.crimg");
    let mut content = binfmt::CRIMG_MAGIC.to_vec();
    content.extend_from_slice(b"\nFAKE IMAGE\n");
    fs::write(&fake_image, &content).unwrap();
    fs::set_permissions(&fake_image, fs::Permissions::from_mode(0o700)).unwrap();
    let cat = fs::canonicalize("/bin/cat").unwrap();

    let entry = TestBinfmt::register(&cat).unwrap();
    let name = entry.name().to_owned();
    assert!(binfmt::entry_names().unwrap().contains(&name));
    let description = entry.describe().unwrap();
    assert!(description.contains("enabled"), "{description}");
    assert!(description.contains("flags: F"), "{description}");

    let mut run = Workload::spawn_command("fake image", Command::new(&fake_image)).unwrap();
    run.expect_line("FAKE IMAGE");
    assert!(run.wait_exit(LINE_TIMEOUT).unwrap().success());

    drop(entry);
    assert!(!binfmt::entry_names().unwrap().contains(&name));
}

/// A program that exits but leaves a process holding its output does not
/// hang the run: the wait for its output has a deadline too.
#[test]
fn a_run_whose_output_stays_open_fails_instead_of_hanging() {
    let scratch = scratch_dir();
    let pidfile = scratch.path().join("sleeper.pid");
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(r#"sleep 60 & echo $! > "$1"; echo started"#)
        .arg("sh")
        .arg(&pidfile);
    let started = std::time::Instant::now();
    let result = crimg_tests::cli::run(command, Duration::from_secs(20));
    // The sleeper is not our child: held by a pidfd, killed on drop.
    let pid: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _sleeper = PidGuard::new(pid).unwrap();
    match result {
        Err(crimg_tests::cli::CliError::OutputOpen { stream, .. }) => assert_eq!(stream, "stdout"),
        other => panic!("expected the open output to be reported, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
