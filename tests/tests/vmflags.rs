//! Memory areas and mm state come back with the flags the kernel showed
//! before the dump: the `VmFlags` of every area in `/proc/PID/smaps` and the
//! relevant `/proc/PID/status` lines are compared before the dump and after
//! the restore (zdtm-style victims in `workloads/vmflags.c`, plus a real
//! interpreter). What this machine cannot give the restored task (commit
//! limits, locked memory) is refused by the loader before it changes
//! anything: one line, exit 10.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::{as_nobody, dump_and_kill, nobody_ids, tasks_of, Dumped};
use crimg_tests::smaps::{
    area_at, assert_same_vm_flags, assert_same_vm_flags_of_unchanged_areas, status_lines,
    vm_flags_of, AreaFlags,
};
use crimg_tests::tmpfs::Tmpfs;
use crimg_tests::{binaries, scratch_dir, Binaries, Facts, Workload};

/// Status lines that describe the mm and must survive a restore.
const STATUS_KEYS: &[&str] = &["THP_enabled", "VmLck", "VmSize"];

/// A dumped victim and what the kernel showed of it before the dump.
struct Before {
    dumped: Dumped,
    flags: Vec<AreaFlags>,
    status: Vec<(String, Option<String>)>,
    coredump_filter: String,
}

fn coredump_filter_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/coredump_filter"))
        .unwrap_or_else(|err| panic!("/proc/{pid}/coredump_filter: {err}"))
}

fn dump_victim(bins: &Binaries, out: &Path, victim: Workload) -> Before {
    let pid = victim.pid();
    let flags = vm_flags_of(pid);
    let status = status_lines(pid, STATUS_KEYS);
    let coredump_filter = coredump_filter_of(pid);
    let dumped = dump_and_kill(bins, victim, out);
    Before {
        dumped,
        flags,
        status,
        coredump_filter,
    }
}

/// Restore, let the victim check itself (which also proves the restore is
/// complete), then compare VmFlags and status with what they were.
fn restore_and_compare(bins: &Binaries, before: &Before) -> (Workload, Facts) {
    let mut restored = bins
        .restore("restored victim", &before.dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    let pid = restored.pid();
    assert_same_vm_flags(&before.flags, &vm_flags_of(pid));
    assert_eq!(
        status_lines(pid, STATUS_KEYS),
        before.status,
        "/proc/PID/status after the restore"
    );
    assert_eq!(
        coredump_filter_of(pid),
        before.coredump_filter,
        "/proc/PID/coredump_filter after the restore"
    );
    (restored, pass)
}

fn round_trip(args: &[&str]) -> (Before, Workload, Facts) {
    let bins = binaries();
    let scratch = scratch_dir();
    let victim = Workload::start("vmflags", args);
    let before = dump_victim(&bins, &scratch.path().join("out"), victim);
    let (restored, pass) = restore_and_compare(&bins, &before);
    (before, restored, pass)
}

fn has(area: &AreaFlags, flag: &str) -> bool {
    area.flags.iter().any(|f| f == flag)
}

/// A 64 GiB MAP_NORESERVE reservation (more than this machine can commit)
/// with a few written pages comes back as a reservation, contents intact.
#[test]
fn noreserve_reservation_of_64_gib_round_trips() {
    crimg_tests::skip_unless_root!();
    let (before, _restored, pass) = round_trip(&["--noreserve-gb", "64"]);
    let addr = before.dumped.ready.require("noreserve").unwrap().to_owned();
    assert!(
        has(area_at(&before.flags, &addr), "nr"),
        "the victim's reservation has no `nr`: {:?}",
        area_at(&before.flags, &addr)
    );
    assert_eq!(pass.get("areas"), Some("1"), "{}", pass.line());
}

/// An AddressSanitizer build reserves terabytes of shadow memory with
/// MAP_NORESERVE: the victim, built with `-fsanitize=address` here, comes
/// back with every area's flags and its contents.
#[test]
fn asan_build_with_terabytes_reserved_round_trips() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let program = scratch.path().join("vmflags-asan");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("workloads/vmflags.c");
    let built = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".to_owned()))
        .args(["-O1", "-g", "-fsanitize=address", "-o"])
        .arg(&program)
        .arg(&source)
        .output();
    match built {
        Ok(out) if out.status.success() => {}
        _ => {
            crimg_tests::privilege::report_skip("no C compiler with -fsanitize=address");
            return;
        }
    }
    let bins = binaries();
    let mut command = Command::new(&program);
    command.args(["--locked", "--dontfork"]);
    let mut victim =
        Workload::spawn_command("vmflags (ASan)", command).unwrap_or_else(|e| panic!("{e}"));
    if let Err(err) = victim.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", victim.stderr_report());
    }
    let reserved: u64 = vm_flags_of(victim.pid())
        .iter()
        .filter(|a| a.flags.iter().any(|f| f == "nr"))
        .map(|a| {
            let range = a.header.split(' ').next().unwrap();
            let (start, end) = range.split_once('-').unwrap();
            u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap()
        })
        .sum();
    assert!(reserved > 1 << 40, "ASan reserved only {reserved:#x} bytes");
    let before = dump_victim(&bins, &scratch.path().join("out"), victim);
    let mut restored = bins
        .restore("restored vmflags (ASan)", &before.dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.get("areas"), Some("2"), "{}", pass.line());
    // Every area, with its boundaries: ASan's allocator leaves adjacent
    // areas with equal flags that the kernel keeps apart.
    let after = vm_flags_of(restored.pid());
    assert_same_vm_flags(&before.flags, &after);
    assert_eq!(status_lines(restored.pid(), STATUS_KEYS), before.status);
}

/// `PR_SET_THP_DISABLE` is an mm flag: `THP_enabled: 0` stays 0.
#[test]
fn thp_disable_is_kept() {
    crimg_tests::skip_unless_root!();
    let (before, _restored, _pass) = round_trip(&["--thp-disable"]);
    assert_eq!(
        before.status[0],
        ("THP_enabled".to_owned(), Some("0".to_owned())),
        "the victim did not disable THP"
    );
}

/// The mm's coredump filter is the task's, not the caller's.
#[test]
fn coredump_filter_is_kept() {
    crimg_tests::skip_unless_root!();
    let (before, _restored, _pass) = round_trip(&["--coredump-filter", "7f"]);
    assert_eq!(before.coredump_filter.trim(), "0000007f");
}

/// Two adjacent areas with the same flags that the kernel kept apart stay
/// two areas (a fresh mapping would merge into its neighbour).
#[test]
fn adjacent_areas_the_kernel_kept_apart_stay_apart() {
    crimg_tests::skip_unless_root!();
    let (before, _restored, pass) = round_trip(&["--apart"]);
    let ready = &before.dumped.ready;
    let low = area_at(&before.flags, ready.require("apart_low").unwrap());
    let high = area_at(&before.flags, ready.require("apart_high").unwrap());
    assert_eq!(low.flags, high.flags);
    assert_eq!(pass.get("areas"), Some("2"), "{}", pass.line());
}

/// `mlockall`: every area comes back locked; that new areas were to be
/// locked too (`MCL_FUTURE`) is nowhere to be seen, and the dump says so.
#[test]
fn mlockall_areas_come_back_locked_and_the_dump_warns() {
    crimg_tests::skip_unless_root!();
    let (before, _restored, _pass) = round_trip(&["--dontfork", "--mlockall"]);
    assert!(
        before.flags.iter().filter(|a| has(a, "lo")).count() > 5,
        "{:?}",
        before.flags
    );
    let said = &before.dumped.dump.output.stdout;
    assert!(
        said.contains("mlockall") && said.contains("MCL_FUTURE"),
        "{said}"
    );
}

/// A threaded program that called `mlockall` has a locked `PROT_NONE`
/// guard page under its thread's stack, and `mlock` of a `PROT_NONE` area
/// sets the lock but fails with ENOMEM (nothing can be faulted in): both
/// come back locked, and the restore does not fail on that ENOMEM after
/// the point of no return.
#[test]
fn locked_prot_none_areas_of_a_threaded_mlockall_program_come_back_locked() {
    crimg_tests::skip_unless_root!();
    let (before, _restored, _pass) = round_trip(&["--thread", "--locked-none", "--mlockall"]);
    let none = area_at(
        &before.flags,
        before.dumped.ready.require("locked_none").unwrap(),
    );
    assert!(has(none, "lo"), "{none:?}");
    let guards = before
        .flags
        .iter()
        .filter(|a| a.header.contains(" ---p ") && has(a, "lo"))
        .count();
    assert!(guards >= 2, "no locked guard page: {:?}", before.flags);
}

/// A locked file area that reaches past the end of its file: `mlock`
/// sets the lock and fails with ENOMEM on the pages it cannot fault in;
/// it comes back locked, and the restore does not fail on that ENOMEM.
#[test]
fn a_locked_file_area_past_the_end_of_its_file_comes_back_locked() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let file = scratch.path().join("short");
    let (before, _restored, _pass) = round_trip(&["--locked-past-eof", file.to_str().unwrap()]);
    let addr = before.dumped.ready.require("locked_past_eof").unwrap();
    let area = area_at(&before.flags, addr);
    assert!(has(area, "lo"), "{area:?}");
}

/// Memory-deny-write-execute (`PR_SET_MDWE`) is an mm flag no status line
/// shows: the victim reads it back and finds a writable page still cannot
/// be made executable.
#[test]
fn memory_deny_write_execute_is_kept() {
    crimg_tests::skip_unless_root!();
    let (_before, _restored, pass) = round_trip(&["--mdwe", "--noreserve-gb", "1"]);
    assert_eq!(pass.get("mdwe"), Some("1"), "{}", pass.line());
}

/// A file opened read-write and mapped `MAP_SHARED` with `PROT_READ` keeps
/// `VM_SHARED|VM_MAYWRITE`: after the restore the victim's
/// `mprotect(PROT_WRITE)` works and its store reaches the file.
#[test]
fn read_only_shared_mapping_of_a_writable_file_can_be_made_writable() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let file = scratch.path().join("shared");
    let (before, _restored, pass) = round_trip(&["--shared-ro", file.to_str().unwrap()]);
    let addr = before.dumped.ready.require("shared_ro").unwrap().to_owned();
    let area = area_at(&before.flags, &addr);
    assert!(has(area, "sh") && has(area, "mw"), "{area:?}");
    assert_eq!(pass.get("shared_write"), Some("ok"), "{}", pass.line());
}

/// Never more than the caller may do: run by a user who may only read the
/// file, the loader maps it shared read-only without `VM_MAYWRITE` and
/// says so, instead of failing or opening it for writing anyway.
#[test]
fn shared_mapping_of_a_file_the_caller_cannot_write_is_restored_read_only() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let file = scratch.path().join("shared");
    let victim = Workload::start(
        "vmflags",
        ["--shared-ro", file.to_str().unwrap(), "--close-shared-fd"],
    );
    let addr = victim
        .ready()
        .unwrap()
        .require("shared_ro")
        .unwrap()
        .to_owned();
    let before = dump_victim(&bins, &scratch.path().join("out"), victim);
    assert!(has(area_at(&before.flags, &addr), "mw"));
    // Readable by nobody, writable only by root; chmod keeps size and mtime.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let (uid, gid) = nobody_ids();
    let dump = &before.dumped.dump;
    for path in [&dump.dir, &dump.image, &dump.manifest] {
        chown(path, Some(uid), Some(gid)).unwrap();
    }
    let mut command = as_nobody();
    command.arg(&bins.loader).arg(&dump.image);
    let mut restored = Workload::spawn_command("restored victim as nobody", command)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.send_line("ping").unwrap();
    restored.expect_line("PONG");
    let area = area_at(&vm_flags_of(restored.pid()), &addr).clone();
    assert!(
        has(&area, "ms") && !has(&area, "mw") && !has(&area, "sh"),
        "{area:?}"
    );
    // The loader wrote its warnings before the restore; the poll only
    // waits for the harness's reader thread.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let warned = loop {
        let warned = restored.stderr_lines().iter().any(|line| {
            line.contains("cannot be opened read-write") && line.contains("VM_MAYWRITE")
        });
        if warned || std::time::Instant::now() >= deadline {
            break warned;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(warned, "{}", restored.stderr_report());
}

/// One area of each kind: locked, locked on fault, mergeable (KSM),
/// droppable, don't-fork and wipe-on-fork, and a PROT_NONE area still
/// charged to the commit count because it was writable once.
#[test]
fn locked_mergeable_droppable_and_fork_flags_are_kept() {
    crimg_tests::skip_unless_root!();
    let (before, _restored, pass) = round_trip(&[
        "--locked",
        "--lock-on-fault",
        "--mergeable",
        "--droppable",
        "--dontfork",
        "--wipeonfork",
        "--was-writable",
    ]);
    let ready = &before.dumped.ready;
    for (area, flag) in [
        ("locked", "lo"),
        ("lock_on_fault", "lf"),
        ("mergeable", "mg"),
        ("droppable", "dp"),
        ("dontfork", "dc"),
        ("wipeonfork", "wf"),
        ("was_writable", "ac"),
    ] {
        let found = area_at(&before.flags, ready.require(area).unwrap());
        assert!(has(found, flag), "{area} has no `{flag}`: {found:?}");
    }
    assert_eq!(pass.get("areas"), Some("6"), "{}", pass.line());
}

/// A real interpreter (python3, bash): its areas keep their flags. It runs
/// on after the restore (python's allocator maps and unmaps arenas), so
/// only the areas found unchanged are compared, and most must be.
fn interpreter_keeps_its_vm_flags(script: &str) {
    let bins = binaries();
    let scratch = scratch_dir();
    let mut victim = Workload::start(script, Vec::<String>::new());
    victim.expect_line("TICK 2");
    let before = dump_victim(&bins, &scratch.path().join("out"), victim);
    let mut restored = bins
        .restore(&format!("restored {script}"), &before.dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    restored.expect_line("TICK ");
    assert_same_vm_flags_of_unchanged_areas(&before.flags, &vm_flags_of(restored.pid()), 80, 0);
}

#[test]
fn python_keeps_every_vm_flag() {
    crimg_tests::skip_unless_root!();
    interpreter_keeps_its_vm_flags("loop.py");
}

#[test]
fn bash_keeps_every_vm_flag() {
    crimg_tests::skip_unless_root!();
    interpreter_keeps_its_vm_flags("loop.sh");
}

/// A JVM (a large reserved heap, many threads, code cache): the areas
/// still there after the restore keep their flags. It runs on after the
/// restore and changes some areas; most stay as they were.
#[test]
fn jvm_keeps_the_vm_flags_of_its_areas() {
    crimg_tests::skip_unless_root!();
    let Some(crimg_tests::java::JavaLoop {
        mut jvm,
        classes: _classes,
    }) = crimg_tests::java::start_java_loop(20)
    else {
        return;
    };
    jvm.expect_line("TICK 5");
    let bins = binaries();
    let scratch = scratch_dir();
    let before = vm_flags_of(jvm.pid());
    assert!(
        before.iter().any(|a| a.flags.iter().any(|f| f == "nr")),
        "the JVM reserved nothing with MAP_NORESERVE"
    );
    let dump = bins
        .dump(jvm.pid(), scratch.path(), false)
        .unwrap_or_else(|e| panic!("{e}"));
    jvm.wait_exit(LINE_TIMEOUT).expect("crdump killed the JVM");
    let mut restored = bins
        .restore("restored loop.java", &dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_line("TICK ");
    // Areas the JVM re-creates (same place, new flags) between the snapshot
    // and the dump would show here; none were seen in its steady loop (a
    // guard page that lost `ac` was a real loss, now fixed).
    assert_same_vm_flags_of_unchanged_areas(&before, &vm_flags_of(restored.pid()), 80, 0);
}

/// An area with a NUMA memory policy of its own (`mbind`) is refused by
/// name at dump time, and the victim runs on as before.
#[test]
fn an_area_with_a_numa_policy_is_refused_at_dump_time() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mut victim = Workload::start("vmflags", ["--mbind"]);
    let out = scratch.path().join("out");
    let output = cli::run(bins.crdump_command(victim.pid(), &out, false), LINE_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(!output.status.success(), "crdump dumped an mbind area");
    assert!(
        output.stderr.contains("mbind") && output.stderr.contains("bind:0"),
        "{}",
        output.stderr
    );
    victim.expect_pass(CheckTrigger::Stdin);
}

/// Run `command` (a loader invocation); it must exit with `code` and one
/// line on stderr after its warnings, which is returned.
fn expect_refusal(command: Command, code: i32) -> String {
    let output: RunOutput = cli::run(command, LINE_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    let status = output.status;
    assert!(
        status.signal().is_none() && status.code() == Some(code),
        "the loader exited with {status}, expected {code}; stderr:\n{}",
        output.stderr
    );
    let lines: Vec<&str> = output.stderr.lines().collect();
    let (last, warnings) = lines.split_last().expect("a message on stderr");
    assert!(
        warnings.iter().all(|line| line.contains(": warning: ")) && !last.contains(": warning: "),
        "stderr:\n{}",
        output.stderr
    );
    (*last).to_owned()
}

fn dumped_victim(bins: &Binaries, scratch: &Path, args: &[&str]) -> Dumped {
    let victim = Workload::start("vmflags", args);
    dump_and_kill(bins, victim, &scratch.join("out"))
}

/// An address-space limit the restored areas do not fit in is refused
/// before anything changes, and the same image restores without it.
#[test]
fn address_space_limit_too_small_is_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dumped = dumped_victim(&bins, scratch.path(), &["--noreserve-gb", "4"]);
    let mut command = Command::new("prlimit");
    command
        .arg(format!("--as={}", 2u64 << 30))
        .arg("--")
        .arg(&bins.loader)
        .arg(&dumped.dump.image);
    let message = expect_refusal(command, 10);
    assert!(message.contains("RLIMIT_AS"), "{message}");
    let mut restored = bins
        .restore("restored victim", &dumped.dump.image)
        .unwrap_or_else(|err| panic!("{err}"));
    restored.expect_pass(CheckTrigger::Stdin);
}

/// The value of `key` in `/proc/meminfo`, in bytes.
fn meminfo_bytes(key: &str) -> u64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/meminfo"))
        * 1024
}

/// A copy of the image whose area at `start` claims to have been charged
/// to the commit count (`ac`) instead of reserved (`nr`), resealed.
fn image_with_charged_area(dumped: &Dumped, start: u64) -> std::path::PathBuf {
    use image_format::records::{note, vma_flags, VmaRecord, OWNER_CRIMG};
    let mut bytes = fs::read(&dumped.dump.image).unwrap();
    let at = {
        let image = image_format::Image::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
        let base = bytes.as_ptr() as usize;
        let desc = image
            .notes()
            .map(|n| n.unwrap_or_else(|e| panic!("{e}")))
            .find(|n| n.owner == OWNER_CRIMG && n.note_type == note::VMAS)
            .expect("a VMA note")
            .desc;
        // RecordHeader: version u16, record_size u16, count u32.
        let size = usize::from(u16::from_le_bytes([desc[2], desc[3]]));
        let count = u32::from_le_bytes(desc[4..8].try_into().unwrap()) as usize;
        (0..count)
            .map(|i| &desc[8 + i * size..8 + (i + 1) * size])
            .find(|r| u64::from_le_bytes(r[..8].try_into().unwrap()) == start)
            .map(|r| r.as_ptr() as usize - base + std::mem::offset_of!(VmaRecord, flags))
            .expect("the reservation's record")
    };
    let flags = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    assert_ne!(
        flags & vma_flags::NORESERVE,
        0,
        "the reservation has no NORESERVE bit"
    );
    let flags = (flags & !vma_flags::NORESERVE) | vma_flags::ACCOUNT;
    bytes[at..at + 4].copy_from_slice(&flags.to_le_bytes());
    image_format::reseal(&mut bytes).unwrap_or_else(|e| panic!("cannot reseal: {e}"));
    let path = dumped.dump.dir.join("charged.crimg");
    fs::write(&path, &bytes).unwrap();
    path
}

/// An area charged to the commit count that is larger than this machine's
/// RAM and swap (an image edited so, or one from a bigger machine) is
/// refused the way the kernel's overcommit rules would refuse its mmap,
/// before anything changes, instead of failing after the point of no
/// return.
#[test]
fn an_area_larger_than_the_commit_limit_allows_is_refused() {
    crimg_tests::skip_unless_root!();
    let mode = fs::read_to_string("/proc/sys/vm/overcommit_memory").unwrap();
    let mode = mode.trim();
    if mode == "1" {
        crimg_tests::privilege::report_skip("vm.overcommit_memory is 1: every mmap is allowed");
        return;
    }
    let bins = binaries();
    let scratch = scratch_dir();
    let most = meminfo_bytes("MemTotal") + meminfo_bytes("SwapTotal");
    let gib = ((2 * most) >> 30) + 1;
    let dumped = dumped_victim(&bins, scratch.path(), &["--noreserve-gb", &gib.to_string()]);
    let start = u64::from_str_radix(
        dumped
            .ready
            .require("noreserve")
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    let charged = image_with_charged_area(&dumped, start);
    let message = expect_refusal(bins.loader_command(&charged), 10);
    let expected = if mode == "2" {
        "vm.overcommit_memory 2"
    } else {
        "vm.overcommit_memory 0"
    };
    assert!(message.contains(expected), "{message}");
}

/// Locked memory beyond `RLIMIT_MEMLOCK`, without `CAP_IPC_LOCK`, is
/// refused before anything changes.
#[test]
fn locked_memory_beyond_the_memlock_limit_is_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dumped = dumped_victim(&bins, scratch.path(), &["--locked"]);
    let mut command = Command::new("setpriv");
    command
        .args([
            "--bounding-set=-ipc_lock",
            "--",
            "prlimit",
            "--memlock=4096",
            "--",
        ])
        .arg(&bins.loader)
        .arg(&dumped.dump.image);
    let message = expect_refusal(command, 10);
    assert!(
        message.contains("RLIMIT_MEMLOCK") && message.contains("CAP_IPC_LOCK"),
        "{message}"
    );
}

/// At exactly the address space the loader says the task needs, the
/// restore works: the need is the real peak (the kernel's vDSO block is
/// parked inside the window while the areas are built, so it is counted
/// with the window, not left out).
#[test]
fn address_space_limit_equal_to_the_need_restores() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dumped = dumped_victim(&bins, scratch.path(), &["--noreserve-gb", "4"]);
    let limited = |limit: u64| {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--as={limit}"))
            .arg("--")
            .arg(&bins.loader)
            .arg(&dumped.dump.image);
        command
    };
    let message = expect_refusal(limited(2 << 30), 10);
    let need_kib: u64 = message
        .split("take ")
        .nth(1)
        .and_then(|rest| rest.split(" KiB").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in: {message}"));
    let mut restored =
        Workload::spawn_command("restored victim at its RLIMIT_AS", limited(need_kib * 1024))
            .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_pass(CheckTrigger::Stdin);
}

/// `unshare -U -r COMMAND…`: root of a new user namespace, with every
/// capability there and none in the initial one.
fn in_user_namespace() -> Command {
    let mut command = Command::new("unshare");
    command.args(["-U", "-r", "--"]);
    command
}

/// Root of a new user namespace has CAP_IPC_LOCK only there, and the
/// kernel's mlock limit asks the initial one: locked memory beyond
/// `RLIMIT_MEMLOCK` is refused before anything changes (it failed with
/// ENOMEM after the point of no return).
#[test]
fn locked_memory_beyond_the_memlock_limit_is_refused_in_a_user_namespace() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dumped = dumped_victim(&bins, scratch.path(), &["--locked"]);
    let mut command = in_user_namespace();
    command
        .args(["prlimit", "--memlock=4096", "--"])
        .arg(&bins.loader)
        .arg(&dumped.dump.image);
    let message = expect_refusal(command, 10);
    assert!(
        message.contains("RLIMIT_MEMLOCK") && message.contains("CAP_IPC_LOCK"),
        "{message}"
    );
}

/// In a user namespace that does not own the pid namespace, `clone3`'s
/// `set_tid` is refused (EPERM) although the caller has every capability
/// there: the other thread gets a new tid with the "not privileged"
/// warning, as for an unprivileged caller, and the victim runs on.
#[test]
fn threads_get_new_ids_in_a_user_namespace() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let dumped = dumped_victim(&bins, scratch.path(), &["--thread"]);
    let mut command = in_user_namespace();
    command.arg(&bins.loader).arg(&dumped.dump.image);
    let mut restored = Workload::spawn_command("restored vmflags in a user namespace", command)
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(tasks_of(restored.pid()).len(), 2);
    // Written before the restore, but read from its pipe on another thread
    // than stdout's PASS: waited for, not looked up.
    if let Err(e) = restored.wait_stderr_containing(
        "warning: not privileged",
        std::time::Duration::from_secs(10),
    ) {
        panic!("{e}\n{}", restored.stderr_report());
    }
}

/// A program whose file now lies on a `noexec` mount cannot have its code
/// mapped executable: the loader refuses by name before anything changes
/// (the `mmap` failed with EPERM after the point of no return).
#[test]
fn an_executable_file_area_on_a_noexec_mount_is_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let mnt = Tmpfs::mount(&scratch.path().join("mnt"), "size=64m");
    let program = mnt.dir().join("vmflags");
    fs::copy(crimg_tests::workload_path("vmflags"), &program).unwrap();
    let mut victim = Workload::spawn_command("vmflags from a tmpfs", Command::new(&program))
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(err) = victim.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", victim.stderr_report());
    }
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    mnt.make_noexec();
    let message = expect_refusal(bins.loader_command(&dumped.dump.image), 5);
    assert!(
        message.contains(program.to_str().unwrap())
            && message.contains("executable")
            && message.contains("noexec"),
        "{message}"
    );
}
