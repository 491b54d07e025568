//! End-to-end restore tests: a workload is dumped with `crdump` (which kills
//! it), its image is run (through a binfmt_misc entry, the loader, or
//! `crimg run`), and the restored process checks its own state. The tick
//! stream must continue with no gap and no repeat, the check must PASS, and
//! what the kernel shows of the process (`/proc/PID/maps`, `exe`, `cmdline`)
//! must be what it showed before the dump.
//!
//! Bad images must be refused by the loader before it changes anything: a
//! one-line message, a specific exit code, no crash.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::facts::Facts;
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::{
    as_nobody, assert_same_maps, assert_ticks_resume, dump_and_kill, nobody_ids, view_of, Dumped,
};
use crimg_tests::Workload;
use crimg_tests::{binaries, scratch_dir, workload_path, Binaries, TestBinfmt};
use image_format::elf;
use image_format::Image;
use nix::sys::signal::Signal;

/// `--tmpdir DIR` plus `extra`: the counter with its default sizes (64 MiB
/// heap, 16 MiB anonymous mapping, 16 file pages).
fn counter_args(tmpdir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--tmpdir".to_owned(), tmpdir.display().to_string()];
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

/// Smaller sizes, where the test is about something other than memory (and
/// the dump must be quick, e.g. inside a 3 s sleep).
fn small_counter_args(tmpdir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = counter_args(tmpdir, &["--heap-mb", "8", "--anon-mb", "4"]);
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    args
}

/// The first `TICK n` the restored process prints, as n.
fn first_tick(restored: &mut Workload) -> u64 {
    let line = restored.expect_line("TICK ");
    line["TICK ".len()..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("malformed tick line `{line}`"))
}

/// The sums the original reported at READY are the ones the restored
/// process computes.
fn assert_same_sums(ready: &Facts, pass: &Facts) {
    for key in ["heap_sum", "anon_sum", "file_sum"] {
        assert_eq!(
            pass.number(key).unwrap(),
            ready.number(key).unwrap(),
            "{key}: READY `{}`, PASS `{}`",
            ready.line(),
            pass.line()
        );
    }
}

fn restore_via_binfmt(image: &Path, name: &str) -> Workload {
    let mode = fs::metadata(image).unwrap().permissions().mode();
    assert!(
        mode & 0o111 != 0,
        "crdump wrote {} with mode {mode:o}: not executable, cannot be run directly",
        image.display()
    );
    Workload::spawn_command(name, Command::new(image)).unwrap_or_else(|err| panic!("{err}"))
}

fn register_binfmt(bins: &Binaries) -> TestBinfmt {
    TestBinfmt::register(&bins.loader)
        .unwrap_or_else(|err| panic!("cannot register the test's binfmt entry: {err}"))
}

#[test]
fn counter_resumes_when_its_image_is_executed() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let _binfmt = register_binfmt(&bins);
    let scratch = scratch_dir();
    let mut counter = Workload::start("counter", counter_args(scratch.path(), &[]));
    counter.expect_line("TICK 3");
    // Blocked: it stays pending across the dump and the restore.
    counter.signal_number(libc::SIGRTMIN() + 1).unwrap();
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));

    let mut restored = restore_via_binfmt(&dumped.dump.image, "restored counter");
    first_tick(&mut restored);
    // Read before anything runs in the restored process that could change
    // its layout (the check's opendir() may grow the brk heap).
    let view = view_of(restored.pid());

    restored.signal(Signal::SIGUSR1).unwrap();
    assert_eq!(restored.expect_line("USR1"), "USR1 1 altstack=1");
    let pass = restored.expect_pass(CheckTrigger::Signal);
    assert_eq!(pass.pid().unwrap(), restored.pid(), "{}", pass.line());
    assert_eq!(pass.get("rt_pending"), Some("1"), "{}", pass.line());
    assert_eq!(pass.get("usr1"), Some("1"), "{}", pass.line());
    assert_same_sums(&dumped.ready, &pass);
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);
    assert_same_maps(&dumped.view.maps, &view.maps);
    assert_eq!(view.exe, dumped.view.exe, "/proc/PID/exe");
    assert_eq!(
        String::from_utf8_lossy(&view.cmdline),
        String::from_utf8_lossy(&dumped.view.cmdline),
        "/proc/PID/cmdline"
    );
}

/// The real, effective, saved and filesystem uids from `/proc/PID/status`.
fn uids_of(pid: i32) -> String {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .map(|uids| uids.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[test]
fn counter_resumes_unprivileged_through_crimg_run() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let (uid, gid) = nobody_ids();
    let scratch = scratch_dir();
    // Sticky, as /tmp: crdump refuses to create its directory in a
    // shared directory that is not.
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o1777)).unwrap();

    let mut command = as_nobody();
    command
        .arg(workload_path("counter"))
        .args(counter_args(scratch.path(), &[]));
    let mut counter = Workload::spawn_command("counter as nobody", command).unwrap();
    if let Err(err) = counter.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", counter.stderr_report());
    }
    assert_eq!(uids_of(counter.pid()), format!("{uid} {uid} {uid} {uid}"));
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    for path in [&dumped.dump.dir, &dumped.dump.image, &dumped.dump.manifest] {
        chown(path, Some(uid), Some(gid)).unwrap();
    }

    let mut command = as_nobody();
    command.arg(&bins.crimg).arg("run").arg(&dumped.dump.image);
    let mut restored = Workload::spawn_command("crimg run as nobody", command).unwrap();
    first_tick(&mut restored);
    assert_eq!(uids_of(restored.pid()), format!("{uid} {uid} {uid} {uid}"));
    let pass = restored.expect_pass(CheckTrigger::Signal);
    assert_eq!(pass.pid().unwrap(), restored.pid(), "{}", pass.line());
    assert_same_sums(&dumped.ready, &pass);
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);

    // Setting /proc/PID/exe needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN:
    // an unprivileged loader skips it and must say so. The loader prints
    // its warnings before the restore, so they are in the pipe by now; the
    // poll only waits for the reader thread.
    let deadline = Instant::now() + Duration::from_secs(5);
    let warned = loop {
        let lines = restored.stderr_lines();
        let warning = lines
            .iter()
            .find(|line| line.contains("warning") && line.contains("exe"))
            .cloned();
        if warning.is_some() || Instant::now() >= deadline {
            break warning;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        warned.is_some(),
        "no warning on stderr that the exe link was not restored (it needs privilege); {}",
        restored.stderr_report()
    );
}

/// Dump a script loop, restore it with the loader, and check it resumed.
fn script_resumes(script: &str) {
    let bins = binaries();
    let scratch = scratch_dir();
    let mut workload = Workload::start(script, ["--interval-ms", "10"]);
    workload.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, workload, &scratch.path().join("out"));

    let mut restored = bins
        .restore(&format!("restored {script}"), &dumped.dump.image)
        .unwrap();
    first_tick(&mut restored);
    for trigger in [CheckTrigger::Stdin, CheckTrigger::Signal] {
        let pass = restored.expect_pass(trigger);
        assert_eq!(pass.words(), [script], "{}", pass.line());
        assert_eq!(pass.pid().unwrap(), restored.pid(), "{}", pass.line());
    }
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);
    restored.send_line("quit").unwrap();
    restored.expect_line("BYE");
    let status = restored.wait_exit(LINE_TIMEOUT).unwrap();
    assert!(status.success(), "restored {script} quit with {status}");
}

#[test]
fn python_loop_resumes() {
    crimg_tests::skip_unless_root!();
    script_resumes("loop.py");
}

#[test]
fn bash_loop_resumes() {
    crimg_tests::skip_unless_root!();
    script_resumes("loop.sh");
}

#[test]
fn counter_blocked_in_read_gets_the_next_line() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut counter = Workload::start(
        "counter",
        small_counter_args(scratch.path(), &["--sleep-in", "read"]),
    );
    counter.send_line("before the dump").unwrap();
    assert_eq!(counter.expect_line("GOT"), "GOT before the dump");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));

    let mut restored = bins
        .restore("restored reading counter", &dumped.dump.image)
        .unwrap();
    restored.send_line("after the restore").unwrap();
    assert_eq!(restored.expect_line("GOT"), "GOT after the restore");
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_same_sums(&dumped.ready, &pass);
    // Its stdin line buffer held nothing at the dump: only the new lines.
    let got: Vec<&String> = restored
        .stdout_lines()
        .iter()
        .filter(|line| line.starts_with("GOT "))
        .collect();
    assert_eq!(got, ["GOT after the restore", "GOT check"]);
}

#[test]
fn counter_finishes_a_sleep_it_was_dumped_in() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let counter = Workload::start(
        "counter",
        small_counter_args(scratch.path(), &["--sleep-ms", "3000"]),
    );
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    assert!(
        !dumped.before.iter().any(|line| line.starts_with("WOKE")),
        "the dump came after the 3 s sleep ended, so it does not test a dump during the sleep: {:?}",
        dumped.before
    );

    let mut restored = bins
        .restore("restored sleeping counter", &dumped.dump.image)
        .unwrap();
    let woke = match restored.wait_line("WOKE", Duration::from_secs(30)) {
        Ok(line) => Facts::parse(&line),
        Err(err) => panic!("{err}\n{}", restored.stderr_report()),
    };
    assert!(woke.number("slept_ms").unwrap() >= 3000, "{}", woke.line());
    assert_eq!(restored.expect_line("TICK "), "TICK 1");
    let pass = restored.expect_pass(CheckTrigger::Signal);
    assert_same_sums(&dumped.ready, &pass);
}

#[test]
fn one_image_restores_twice() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let _binfmt = register_binfmt(&bins);
    let scratch = scratch_dir();
    let mut counter = Workload::start("counter", small_counter_args(scratch.path(), &[]));
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));

    let mut first_ticks = Vec::new();
    for round in ["first", "second"] {
        let mut restored = restore_via_binfmt(&dumped.dump.image, &format!("{round} restore"));
        first_ticks.push(first_tick(&mut restored));
        let pass = restored.expect_pass(CheckTrigger::Stdin);
        assert_same_sums(&dumped.ready, &pass);
        restored.expect_line("TICK ");
        assert_ticks_resume(&dumped, &mut restored);
        // Killed and reaped before the next round.
        drop(restored);
    }
    assert_eq!(first_ticks[0], first_ticks[1]);
}

// ---- bad images ------------------------------------------------------------

/// A small counter, dumped (and killed), whose image the test then spoils.
fn dumped_small_counter(scratch: &Path) -> (Binaries, Dumped) {
    let bins = binaries();
    let mut counter = Workload::start("counter", small_counter_args(scratch, &[]));
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.join("out"));
    (bins, dumped)
}

/// Run the loader on `image` and check it refused it properly: an exit (not
/// a signal, no core dump) with one of `codes`, nothing on stdout and one
/// line on stderr naming the image. Returns that line.
fn expect_refusal(bins: &Binaries, image: &Path, codes: &[i32]) -> String {
    let output: RunOutput =
        cli::run(bins.loader_command(image), LINE_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    let status = output.status;
    assert!(
        status.signal().is_none() && !status.core_dumped(),
        "the loader crashed on {} ({status}); stderr:\n{}",
        image.display(),
        output.stderr
    );
    assert!(
        status.code().is_some_and(|code| codes.contains(&code)),
        "the loader exited with {status} on {}, expected exit code {codes:?}; stderr:\n{}",
        image.display(),
        output.stderr
    );
    assert_eq!(output.stdout, "", "the loader printed to stdout");
    let lines: Vec<&str> = output.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr, got:\n{}",
        output.stderr
    );
    let line = lines[0].to_owned();
    assert!(
        line.starts_with("crimg-loader: ") && line.contains(&image.display().to_string()),
        "the message does not name the loader and the image: `{line}`"
    );
    line
}

/// Write `bytes` as a new image `name` next to the original.
fn write_variant(dumped: &Dumped, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dumped.dump.dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn truncated_image_is_refused() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_small_counter(scratch.path());
    let bytes = fs::read(&dumped.dump.image).unwrap();
    let truncated = write_variant(&dumped, "truncated.crimg", &bytes[..bytes.len() / 2]);
    expect_refusal(&bins, &truncated, &[3, 4]);
}

#[test]
fn corrupted_segment_byte_is_refused() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_small_counter(scratch.path());
    let mut bytes = fs::read(&dumped.dump.image).unwrap();
    // The middle byte of the largest segment (the heap).
    let target = {
        let image = Image::parse(&bytes).unwrap_or_else(|err| panic!("{err}"));
        let largest = image
            .segments()
            .max_by_key(|segment| segment.len)
            .expect("the image stores memory");
        usize::try_from(largest.offset + largest.len / 2).unwrap()
    };
    bytes[target] ^= 0x5a;
    let corrupt = write_variant(&dumped, "corrupt-segment.crimg", &bytes);
    let message = expect_refusal(&bins, &corrupt, &[4]);
    assert!(message.contains("checksum"), "{message}");
}

#[test]
fn changed_mapped_file_is_refused() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_small_counter(scratch.path());
    let file = dumped.ready.require("file").unwrap().to_owned();
    // Change a byte of a page the counter never wrote (odd pages come from
    // the file): the file's mtime changes with it.
    let mut mapped = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    let mut byte = [0u8];
    mapped.seek(SeekFrom::Start(4096)).unwrap();
    mapped.read_exact(&mut byte).unwrap();
    mapped.seek(SeekFrom::Start(4096)).unwrap();
    mapped.write_all(&[byte[0] ^ 0xff]).unwrap();
    drop(mapped);
    let message = expect_refusal(&bins, &dumped.dump.image, &[5]);
    assert!(message.contains(&file), "{message}");
}

#[test]
fn deleted_mapped_file_is_refused() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_small_counter(scratch.path());
    let file = dumped.ready.require("file").unwrap().to_owned();
    fs::remove_file(&file).unwrap();
    let message = expect_refusal(&bins, &dumped.dump.image, &[5]);
    assert!(message.contains(&file), "{message}");
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// XCR0: the loader's own reading of it.
use binfmt_loader::arch;

/// XSAVE state components a CPU may lack: AMX TILEDATA, APX, MPX BNDREGS,
/// MPX BNDCSR.
const OPTIONAL_XSAVE_FEATURES: [u32; 4] = [18, 19, 3, 4];
/// AMX TILECFG: a large, late component of the XSAVE area.
const AMX_TILECFG: u32 = 17;

/// A copy of the image in which every thread's saved XSAVE area claims
/// state component `bit` (in XSTATE_BV and in the sw-bytes xfeatures),
/// resealed so that only this is wrong with it.
fn image_claiming_xsave_feature(dumped: &Dumped, bit: u32) -> PathBuf {
    let mut bytes = fs::read(&dumped.dump.image).unwrap();
    let areas: Vec<usize> = {
        let image = Image::parse(&bytes).unwrap_or_else(|err| panic!("{err}"));
        let base = bytes.as_ptr() as usize;
        image
            .notes()
            .map(|n| n.unwrap_or_else(|err| panic!("{err}")))
            .filter(|n| n.owner == elf::OWNER_LINUX && n.note_type == elf::NT_X86_XSTATE)
            .map(|n| n.desc.as_ptr() as usize - base)
            .collect()
    };
    assert!(!areas.is_empty(), "the image has no NT_X86_XSTATE note");
    for area in areas {
        for at in [
            area + elf::XSAVE_HEADER_OFFSET,
            area + elf::FX_SW_BYTES_OFFSET + core::mem::offset_of!(elf::FpxSwBytes, xfeatures),
        ] {
            let value = u64_at(&bytes, at) | (1 << bit);
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
    }
    image_format::reseal(&mut bytes)
        .unwrap_or_else(|err| panic!("cannot reseal the edited image: {err}"));
    write_variant(dumped, &format!("xsave-bit-{bit}.crimg"), &bytes)
}

#[test]
fn image_needing_an_xsave_feature_this_cpu_lacks_is_refused() {
    crimg_tests::skip_unless_root!();
    let xcr0 = arch::xcr0().expect("this CPU has XSAVE enabled");
    // AMX TILEDATA when the CPU lacks it; this machine's XCR0 may enable it
    // (e.g. 0x600e7), then the first optional feature it lacks.
    let bit = OPTIONAL_XSAVE_FEATURES
        .into_iter()
        .find(|bit| xcr0 & (1 << bit) == 0)
        .unwrap_or_else(|| {
            panic!("XCR0 {xcr0:#x} enables every feature of {OPTIONAL_XSAVE_FEATURES:?}")
        });
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_small_counter(scratch.path());
    let edited = image_claiming_xsave_feature(&dumped, bit);
    let message = expect_refusal(&bins, &edited, &[6]);
    assert!(
        message.contains(&format!("{:#x}", 1u64 << bit)),
        "the message does not name the missing feature bit {bit}: {message}"
    );
}

/// A saved state that includes AMX TILECFG (bit 17, which sits near the end
/// of a large XSAVE area) still restores every register: the loader sizes
/// the sigreturn frame to the features this process is permitted, and the
/// kernel's sigreturn restores only the legacy SSE state from a frame
/// larger than that, which would zero the upper halves of the ymm
/// registers the counter checks. Skipped where XCR0 lacks AMX.
#[test]
fn image_with_amx_state_restores_every_register() {
    crimg_tests::skip_unless_root!();
    let xcr0 = arch::xcr0().expect("this CPU has XSAVE enabled");
    if xcr0 & (1 << AMX_TILECFG) == 0 {
        crimg_tests::privilege::report_skip("XCR0 does not enable AMX on this CPU");
        return;
    }
    let scratch = scratch_dir();
    let (bins, dumped) = dumped_small_counter(scratch.path());
    let edited = image_claiming_xsave_feature(&dumped, AMX_TILECFG);
    let mut restored = Workload::spawn_command("restored counter", bins.loader_command(&edited))
        .unwrap_or_else(|err| panic!("{err}"));
    first_tick(&mut restored);
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_same_sums(&dumped.ready, &pass);
}

/// Regular files reopened at the same fds, offsets and flags, and a shared
/// file mapping written through after the restore: the log the workload
/// appends to continues with no gap or overlap, its reader continues at
/// the next line, and the file behind the shared mapping sees its stores.
#[test]
fn open_files_and_shared_mappings_resume_where_they_were() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut files = Workload::start("files.py", [scratch.path().to_str().unwrap()]);
    let ready = files.ready().cloned().unwrap();
    files.expect_line("TICK 5");
    files.expect_pass(CheckTrigger::Stdin);
    let dumped = dump_and_kill(&bins, files, &scratch.path().join("out"));

    let mut restored = bins
        .restore("restored files.py", &dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    restored.expect_line("TICK ");
    for (key, file) in [("log_fd", "log.txt"), ("read_fd", "read.txt")] {
        let fd = ready.number(key).unwrap();
        let link = fs::read_link(format!("/proc/{}/fd/{fd}", restored.pid()))
            .unwrap_or_else(|err| panic!("fd {fd} after the restore: {err}"));
        assert_eq!(link, scratch.path().join(file), "fd {fd}");
    }
    restored.expect_pass(CheckTrigger::Stdin);
    assert_ticks_resume(&dumped, &mut restored);
}

/// The working directory is restored only if it is the same directory:
/// another directory now at the same path is refused (exit 5) before
/// anything changes.
#[test]
fn a_replaced_working_directory_is_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let cwd = scratch.path().join("cwd");
    fs::create_dir(&cwd).unwrap();
    let mut command = Command::new(workload_path("counter"));
    command
        .args(small_counter_args(scratch.path(), &[]))
        .current_dir(&cwd);
    let mut counter =
        Workload::spawn_command("counter", command).unwrap_or_else(|err| panic!("{err}"));
    counter
        .wait_ready(READY_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    fs::rename(&cwd, scratch.path().join("cwd-before")).unwrap();
    fs::create_dir(&cwd).unwrap();
    let message = expect_refusal(&bins, &dumped.dump.image, &[5]);
    assert!(message.contains("working directory"), "{message}");
    // Put back, the same image restores.
    fs::remove_dir(&cwd).unwrap();
    fs::rename(scratch.path().join("cwd-before"), &cwd).unwrap();
    let mut restored = bins
        .restore("restored counter", &dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(
        fs::read_link(format!("/proc/{}/cwd", restored.pid())).unwrap(),
        cwd
    );
}
