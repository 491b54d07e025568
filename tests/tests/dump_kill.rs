//! The target survives a SIGKILLed crdump: hundreds of dumps, each killed at
//! a different instant 3–30 ms after crdump started, half of them with
//! `--leave-running`. Every target must still be alive afterwards (unless
//! the dump had completed and was asked to kill it), untraced, and pass its
//! own checks with its counter still going; crdump's output directory must
//! hold either nothing it created or a complete dump.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crimg_tests::process::CheckTrigger;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, ChildGuard, Workload};
use nix::sys::signal::Signal;

/// How many dumps are killed.
const RUNS: usize = 500;
/// Kill delays after crdump's start, spread evenly over this range.
const FIRST_DELAY_US: u64 = 3_000;
const LAST_DELAY_US: u64 = 30_000;

/// Where crdump was when the SIGKILL was sent, as far as the test can see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// The target was not traced yet.
    BeforeFreeze,
    /// A thread of the target was inside a syscall crdump injects
    /// (borrowed: its registers point at the task's `syscall; ret`).
    Injecting,
    /// The target was traced otherwise: being frozen, its state collected
    /// or its pages written.
    Frozen,
    /// The output directory had appeared: publishing, or releasing the
    /// target.
    Publishing,
    /// crdump had already exited.
    Finished,
}

fn traced(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("TracerPid:") && l != "TracerPid:\t0")
        })
        .unwrap_or(false)
}

/// Whether a thread of `pid` is in one of the syscalls crdump injects
/// (`/proc/PID/task/TID/syscall` starts with the syscall number). The
/// workload itself makes none of them while it sleeps or spins.
fn injecting(pid: i32) -> bool {
    // brk, rt_sigaction, rt_sigprocmask, getitimer, getpid, sigaltstack, prctl
    const INJECTED: [&str; 7] = ["12", "13", "14", "36", "39", "131", "157"];
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks.flatten().any(|t| {
                fs::read_to_string(t.path().join("syscall"))
                    .map(|s| INJECTED.contains(&s.split_whitespace().next().unwrap_or("")))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// The k-th delay of a deterministic spread over the range: consecutive runs
/// take delays far apart (a stride through the range), so that a slow
/// stretch of the machine does not hit one part of the range only.
fn delay(k: usize) -> Duration {
    let slot = (k * 193) % RUNS;
    let span = LAST_DELAY_US - FIRST_DELAY_US;
    Duration::from_micros(FIRST_DELAY_US + span * slot as u64 / (RUNS as u64 - 1))
}

/// Wait until the kernel has detached the dead tracer from `w`.
fn wait_untraced(w: &Workload) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while traced(w.pid()) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// One killed dump; `Err` says how the target was harmed.
fn one_run(k: usize, base: &Path, leave_running: bool) -> Result<Outcome, String> {
    let sleep_in = if k % 4 < 2 { "nanosleep" } else { "busy" };
    let tmpdir = base.join(format!("tmp-{k}"));
    fs::create_dir(&tmpdir).map_err(|e| format!("{}: {e}", tmpdir.display()))?;
    let mut w = Workload::start(
        "counter",
        [
            "--interval-ms",
            "2",
            "--heap-mb",
            "2",
            "--anon-mb",
            "2",
            "--file-pages",
            "4",
            "--threads",
            "1",
            "--sleep-in",
            sleep_in,
            "--tmpdir",
            tmpdir.to_str().unwrap(),
        ],
    );
    let out = base.join(format!("out-{k}"));
    let mut command = binaries().crdump_command(w.pid(), &out, leave_running);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let started = Instant::now();
    let mut crdump = ChildGuard::new("crdump", command.spawn().map_err(|e| e.to_string())?);
    let at = started + delay(k);
    if let Some(wait) = at.checked_duration_since(Instant::now()) {
        std::thread::sleep(wait);
    }
    let phase = if crdump.try_status().is_some() {
        Phase::Finished
    } else if out.exists() {
        Phase::Publishing
    } else if injecting(w.pid()) {
        Phase::Injecting
    } else if traced(w.pid()) {
        Phase::Frozen
    } else {
        Phase::BeforeFreeze
    };
    let _ = crdump.signal(Signal::SIGKILL);
    let status = crdump
        .wait_exit(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let complete = out.join(format!("task-{}.crimg", w.pid())).is_file()
        && out.join("manifest.json").is_file();
    let mut outcome = Outcome { phase, left: None };
    if !complete && out.exists() {
        let left: Vec<_> = fs::read_dir(&out)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        outcome.left = Some(format!(
            "{phase:?}: crdump ({status:?}) left {} holding {left:?}",
            out.display()
        ));
    }
    if !wait_untraced(&w) {
        return Err(format!("{phase:?}: target still traced after crdump died"));
    }
    if w.child().try_status().is_some() && complete && !leave_running {
        // A completed dump kills its target: that is what was asked.
        return Ok(outcome);
    }
    let died = |w: &mut Workload, what: &str| {
        let exit = w.wait_exit(Duration::from_secs(2));
        format!(
            "{phase:?}, killed after {:?}, leave_running={leave_running}, {sleep_in}: {what}; target exit {exit:?}\n{}",
            delay(k),
            w.stderr_report()
        )
    };
    match w.check(CheckTrigger::Stdin, Duration::from_secs(10)) {
        Ok(_) => {}
        Err(e) => return Err(died(&mut w, &e.to_string())),
    }
    if let Err(e) = w.wait_line("TICK", Duration::from_secs(10)) {
        return Err(died(&mut w, &format!("no tick after the check: {e}")));
    }
    Ok(outcome)
}

/// A run whose target came through: where the kill landed, and what crdump
/// left in the output directory if it was not a complete dump.
struct Outcome {
    phase: Phase,
    left: Option<String>,
}

#[test]
fn killing_crdump_at_any_instant_leaves_the_target_running() {
    skip_unless_root!();
    let dir = scratch_dir();
    let started = Instant::now();
    let mut phases = std::collections::BTreeMap::<Phase, usize>::new();
    let mut failures = Vec::new();
    let mut leftovers = Vec::new();
    for k in 0..RUNS {
        let leave_running = k % 2 == 0;
        match one_run(k, dir.path(), leave_running) {
            Ok(outcome) => {
                *phases.entry(outcome.phase).or_default() += 1;
                leftovers.extend(outcome.left);
            }
            Err(why) => failures.push(why),
        }
    }
    println!(
        "{RUNS} dumps killed {}–{} ms after start in {:.1} s: {} targets survived intact, {} harmed, {} output directories left incomplete; kills landed {phases:?}",
        FIRST_DELAY_US / 1000,
        LAST_DELAY_US / 1000,
        started.elapsed().as_secs_f64(),
        RUNS - failures.len(),
        failures.len(),
        leftovers.len(),
    );
    assert!(
        failures.is_empty(),
        "{} of {RUNS} targets harmed; the first ones:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        leftovers.is_empty(),
        "{} of {RUNS} killed dumps left a directory they created; the first ones:\n{}",
        leftovers.len(),
        leftovers[..leftovers.len().min(5)].join("\n")
    );
}

/// A static program without libc whose code has no `syscall; ret`: every
/// `syscall` is followed by a `nop`.
const NO_GADGET_PROGRAM: &str = r#"
static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall\n\tnop" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}
void _start(void)
{
	static const long ts[2] = { 0, 5000000 };
	sys3(1, 1, (long)"READY\n", 6);
	for (;;)
		sys3(35, (long)ts, 0, 0);
}
"#;

#[test]
fn a_task_without_gadgets_is_refused_before_it_is_touched() {
    skip_unless_root!();
    let dir = scratch_dir();
    let source = dir.path().join("nogadget.c");
    let program = dir.path().join("nogadget");
    fs::write(&source, NO_GADGET_PROGRAM).unwrap();
    let cc = std::process::Command::new("cc")
        .args([
            "-static",
            "-nostdlib",
            "-O0",
            "-fno-stack-protector",
            "-no-pie",
            "-o",
        ])
        .arg(&program)
        .arg(&source)
        .output()
        .expect("run cc");
    assert!(cc.status.success(), "{cc:?}");
    let mut w = Workload::spawn_command("nogadget", std::process::Command::new(&program)).unwrap();
    w.wait_ready(Duration::from_secs(10)).unwrap();
    let out = dir.path().join("out");
    let mut command = binaries().crdump_command(w.pid(), &out, false);
    command.arg("--force");
    let r = crimg_tests::cli::run(command, crimg_tests::cli::CLI_TIMEOUT).unwrap();
    assert_eq!(r.status.code(), Some(1), "{r:?}");
    assert!(
        r.stderr.contains(&format!("pid {}", w.pid())) && r.stderr.contains("`syscall; ret`"),
        "{}",
        r.stderr
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(!out.exists(), "output left behind");
    // Detached and running on (sleeping in its nanosleep loop).
    assert!(wait_untraced(&w), "still traced");
    assert!(w.child().try_status().is_none(), "the target died");
    let stat = fs::read_to_string(format!("/proc/{}/stat", w.pid())).unwrap();
    let state = stat.rsplit_once(") ").unwrap().1.chars().next().unwrap();
    assert!(matches!(state, 'S' | 'R'), "state {state}: {stat}");
}
