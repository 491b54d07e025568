//! crdump end to end: real workloads dumped into images that binutils and gdb
//! read, that hold exactly the pages that carry data, with registers fixed
//! up for interrupted syscalls; and every failure leaves the target running
//! and nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crimg_tests::cli::{run, CLI_TIMEOUT};
use crimg_tests::process::CheckTrigger;
use crimg_tests::tmpfs::Tmpfs;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, workload_path, TickStream, Workload};
use image_format::{Image, PAGE_SIZE};

/// Ticks a workload prints after `mark`, for continuity checks.
fn ticks_since(w: &mut Workload, mark: usize) -> Vec<String> {
    w.stdout().poll();
    w.stdout()
        .since(mark)
        .iter()
        .filter(|l| l.starts_with("TICK "))
        .cloned()
        .collect()
}

/// Waits until the workload has printed `n` more ticks after `mark`.
fn wait_ticks(w: &mut Workload, mark: usize, n: usize) {
    for _ in 0..n {
        w.wait_line("TICK ", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(ticks_since(w, mark).len() >= n);
}

fn readelf(args: &[&str], image: &Path) -> (String, String) {
    let mut c = Command::new("readelf");
    c.args(args).arg(image);
    let out = run(c, CLI_TIMEOUT).expect("run readelf");
    assert!(
        out.status.success(),
        "readelf {args:?} failed: {}",
        out.stderr
    );
    (out.stdout, out.stderr)
}

/// `readelf -a` reads the image without a warning, and there is one
/// NT_PRSTATUS per thread.
fn assert_readelf_clean(image: &Path, threads: usize) {
    let (all, err) = readelf(&["-a", "-W"], image);
    assert!(err.trim().is_empty(), "readelf -a printed on stderr: {err}");
    assert!(!all.contains("Warning"), "readelf -a warned:\n{all}");
    assert!(all.contains("CORE (Core file)"), "not a core file:\n{all}");
    assert!(
        all.contains("Advanced Micro Devices X86-64"),
        "machine:\n{all}"
    );
    let (notes, _) = readelf(&["-n", "-W"], image);
    let prstatus = notes.matches("NT_PRSTATUS").count();
    assert_eq!(prstatus, threads, "NT_PRSTATUS notes:\n{notes}");
    for note in [
        "NT_PRPSINFO",
        "NT_AUXV",
        "NT_FILE",
        "NT_FPREGSET",
        "NT_X86_XSTATE",
    ] {
        assert!(notes.contains(note), "{note} missing:\n{notes}");
    }
}

fn info_json(image: &Path) -> serde_json::Value {
    let text = binaries()
        .info_json(image)
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_str(&text).expect("crimg info --json prints JSON")
}

fn hex(v: &serde_json::Value) -> u64 {
    let s = v.as_str().expect("hex string");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex value")
}

#[test]
fn readelf_and_gdb_read_a_threaded_c_workload() {
    skip_unless_root!();
    let dir = scratch_dir();
    let mut w = Workload::start(
        "counter",
        ["--threads", "4", "--tmpdir", dir.path().to_str().unwrap()],
    );
    let known = w
        .stdout()
        .history()
        .iter()
        .find(|l| l.starts_with("KNOWNSTR "))
        .cloned()
        .expect("KNOWNSTR line");
    let known_addr = known
        .split_whitespace()
        .find_map(|t| t.strip_prefix("addr="))
        .unwrap()
        .to_owned();
    let out = dir.path().join("out");
    let dump = binaries()
        .dump(w.pid(), &out, true)
        .unwrap_or_else(|e| panic!("{e}"));

    assert_readelf_clean(&dump.image, 5);

    let exe = workload_path("counter");
    let mut gdb = Command::new("gdb");
    gdb.args([
        "-batch",
        "-nx",
        "-ex",
        "info threads",
        "-ex",
        "thread apply all bt",
        "-ex",
    ])
    .arg(format!("x/s {known_addr}"))
    .arg(&exe)
    .arg(&dump.image);
    let g = run(gdb, CLI_TIMEOUT).expect("run gdb");
    assert!(g.status.success(), "gdb failed: {}\n{}", g.stdout, g.stderr);
    // The `info threads` table: "* 1    Thread 0x… (LWP 123) 0x… in f ()".
    let threads = g
        .stdout
        .lines()
        .map(str::trim_start)
        .filter(|l| {
            l.trim_start_matches('*')
                .trim_start()
                .starts_with(|c: char| c.is_ascii_digit())
        })
        .filter(|l| l.contains("(LWP "))
        .count();
    assert_eq!(threads, 5, "gdb info threads:\n{}", g.stdout);
    assert!(
        g.stdout.contains("crimg_workload_sleep") || g.stdout.contains("crimg_workload_spin"),
        "no backtrace through the workload's function:\n{}",
        g.stdout
    );
    assert!(
        g.stdout.contains("\"crimg-known-string-0123456789\""),
        "x/s {known_addr}:\n{}",
        g.stdout
    );
    assert!(
        !g.stderr.contains("warning: Couldn't") && !g.stderr.contains("not in executable format"),
        "{}",
        g.stderr
    );

    // --leave-running: the workload sees no difference.
    let mark = w.stdout().mark();
    wait_ticks(&mut w, mark, 3);
    w.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn readelf_reads_python_and_bash_images() {
    skip_unless_root!();
    for name in ["loop.py", "loop.sh"] {
        let dir = scratch_dir();
        let mut w = Workload::start(name, ["--interval-ms", "20"]);
        let threads = fs::read_dir(format!("/proc/{}/task", w.pid()))
            .unwrap()
            .count();
        let dump = binaries()
            .dump(w.pid(), dir.path(), true)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_readelf_clean(&dump.image, threads);
        binaries()
            .verify(&dump.image)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        w.expect_pass(CheckTrigger::Stdin);
    }
}

/// The number of stored pages in `[start, start + len)` and the workload's
/// checksum over them, in address order (bigmem's `written_sum`).
fn stored_pages_sum(img: &Image, start: u64, len: u64) -> (u64, u64) {
    let mut pages = 0;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for s in img.segments() {
        let bytes = img.segment_bytes(&s);
        let mut addr = s.vaddr.max(start);
        while addr < s.end().min(start + len) {
            let off = (addr - s.vaddr) as usize;
            let page = &bytes[off..off + PAGE_SIZE as usize];
            let mut ph: u64 = 0xcbf2_9ce4_8422_2325;
            for w in page.chunks_exact(8) {
                ph = (ph ^ u64::from_le_bytes(w.try_into().unwrap())).wrapping_mul(0x100_0000_01b3);
            }
            h = (h ^ ph).wrapping_mul(0x100_0000_01b3);
            pages += 1;
            addr += PAGE_SIZE;
        }
    }
    (pages, h)
}

#[test]
fn only_written_pages_are_stored_with_their_contents() {
    skip_unless_root!();
    for layout in ["contiguous", "interleaved"] {
        let dir = scratch_dir();
        let w = Workload::start(
            "bigmem",
            ["--mb", "256", "--write-pct", "50", "--layout", layout],
        );
        let ready = w.ready().unwrap().clone();
        let addr = ready.number("addr").unwrap();
        let size = ready.number("size").unwrap();
        let written = ready.number("written").unwrap();
        let sum = ready.number("sum").unwrap();
        let dump = binaries()
            .dump(w.pid(), dir.path(), false)
            .unwrap_or_else(|e| panic!("{e}"));

        let bytes = fs::read(&dump.image).unwrap();
        let img = Image::parse(&bytes).unwrap();
        let (pages, found) = stored_pages_sum(&img, addr, size);
        assert_eq!(
            pages * PAGE_SIZE,
            written,
            "{layout}: stored pages of the buffer"
        );
        assert_eq!(found, sum, "{layout}: contents of the stored pages");
        let limit = written + written / 20 + 64 * 1024;
        assert!(
            bytes.len() as u64 <= limit,
            "{layout}: image is {} bytes for {written} written bytes (limit {limit})",
            bytes.len()
        );
    }
}

#[test]
fn without_leave_running_the_process_is_gone() {
    skip_unless_root!();
    let dir = scratch_dir();
    let mut w = Workload::start(
        "counter",
        ["--heap-mb", "4", "--tmpdir", dir.path().to_str().unwrap()],
    );
    binaries()
        .dump(w.pid(), &dir.path().join("out"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    // crdump has exited: the process must already be dead (a zombie of ours at most).
    let status = w.wait_exit(Duration::from_secs(5)).expect("process ended");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

/// Dumps a running workload (left running) and returns its first thread's
/// `crimg info --json` entry.
fn first_thread_after_dump(w: &Workload, out: &Path) -> serde_json::Value {
    let dump = binaries()
        .dump(w.pid(), out, true)
        .unwrap_or_else(|e| panic!("{e}"));
    let info = info_json(&dump.image);
    info["threads"][0].clone()
}

#[test]
fn interrupted_syscalls_are_fixed_up() {
    skip_unless_root!();
    let dir = scratch_dir();
    let tmp = dir.path().to_str().unwrap();

    // nanosleep: ERESTART_RESTARTBLOCK cannot be restarted; the task sees EINTR.
    let mut w = Workload::start(
        "counter",
        ["--heap-mb", "1", "--interval-ms", "5000", "--tmpdir", tmp],
    );
    // Right after READY it may still be writing its output: dump until the
    // dump lands in the sleep (it sleeps 5 s at a time), then check it did.
    let mut attempts = 0;
    let t = loop {
        let t = first_thread_after_dump(&w, &dir.path().join(format!("sleep{attempts}")));
        attempts += 1;
        if matches!(t["syscall"].as_i64(), Some(35 | 230)) || attempts == 5 {
            break t;
        }
    };
    assert_eq!(t["restart"], "eintr", "{t:#}");
    assert!(matches!(t["syscall"].as_i64(), Some(35 | 230)), "{t:#}");
    assert_eq!(t["syscall_ret"].as_i64(), Some(-516), "{t:#}");
    assert_eq!(hex(&t["registers"]["rax"]), (-4i64) as u64, "{t:#}");
    w.expect_pass(CheckTrigger::Stdin);
    drop(w);

    // read on an empty pipe: ERESTARTSYS, the syscall runs again.
    let mut w = Workload::start(
        "counter",
        ["--heap-mb", "1", "--sleep-in", "read", "--tmpdir", tmp],
    );
    let mut attempts = 0;
    let t = loop {
        let t = first_thread_after_dump(&w, &dir.path().join(format!("read{attempts}")));
        attempts += 1;
        if t["syscall"].as_i64() == Some(0) || attempts == 5 {
            break t;
        }
    };
    assert_eq!(t["restart"], "restart", "{t:#}");
    assert_eq!(t["syscall"].as_i64(), Some(0), "{t:#}");
    assert_eq!(t["syscall_ret"].as_i64(), Some(-512), "{t:#}");
    let regs = &t["registers"];
    assert_eq!(hex(&regs["rax"]), 0, "rax must be orig_rax (read): {t:#}");
    let rip = hex(&regs["rip"]);
    let mut insn = [0u8; 2];
    let mem = fs::File::open(format!("/proc/{}/mem", w.pid())).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&mem, &mut insn, rip).unwrap();
    assert_eq!(
        insn,
        [0x0f, 0x05],
        "rip must point back at the syscall instruction: {t:#}"
    );
    w.send_line("after-dump").unwrap();
    w.expect_line("GOT after-dump");
    w.expect_pass(CheckTrigger::Stdin);
    drop(w);

    // A busy loop: not in a syscall, registers untouched.
    let mut w = Workload::start(
        "counter",
        [
            "--heap-mb",
            "1",
            "--sleep-in",
            "busy",
            "--interval-ms",
            "2000",
            "--tmpdir",
            tmp,
        ],
    );
    let spin = w.ready().unwrap().number("spin").unwrap();
    let mut attempts = 0;
    let t = loop {
        // Between two spins the workload prints; a dump that lands there
        // says nothing about busy loops, so try again.
        let t = first_thread_after_dump(&w, &dir.path().join(format!("busy{attempts}")));
        let rip = hex(&t["registers"]["rip"]);
        attempts += 1;
        if (spin..spin + 4096).contains(&rip) || attempts == 5 {
            break t;
        }
    };
    let rip = hex(&t["registers"]["rip"]);
    assert!(
        (spin..spin + 4096).contains(&rip),
        "never caught the spin loop in {attempts} dumps (rip {rip:#x}): {t:#}"
    );
    assert_eq!(t["restart"], "none", "{t:#}");
    assert_eq!(t["syscall"].as_i64(), Some(-1), "{t:#}");
    w.expect_pass(CheckTrigger::Stdin);
}

/// A failed dump: one line naming the pid on stderr, a non-zero exit, the
/// target still running and passing its own check, nothing left in `out`.
fn assert_failed_cleanly(w: &mut Workload, out: &Path, expect: &str) {
    let mark = w.stdout().mark();
    let r = run(binaries().crdump_command(w.pid(), out, false), CLI_TIMEOUT).expect("run crdump");
    assert!(
        !r.status.success(),
        "crdump succeeded where it must fail ({expect})"
    );
    assert_eq!(r.status.code(), Some(1), "{:?}: {}", r.status, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one error line, got:\n{}",
        r.stderr
    );
    assert!(
        lines[0].starts_with("crdump: ") && lines[0].contains(&w.pid().to_string()),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].to_lowercase().contains(expect),
        "expected {expect:?} in: {}",
        lines[0]
    );
    // Still running as it was: it keeps counting and its state checks out.
    wait_ticks(w, mark, 2);
    let ticks = TickStream::from_lines(&ticks_since(w, mark)).unwrap();
    ticks.check_consecutive("after a failed dump").unwrap();
    w.expect_pass(CheckTrigger::Stdin);
    if out.exists() {
        let left: Vec<PathBuf> = fs::read_dir(out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

#[test]
fn errors_leave_the_target_running_and_nothing_behind() {
    skip_unless_root!();
    let dir = scratch_dir();
    let mut w = Workload::start(
        "counter",
        [
            "--heap-mb",
            "8",
            "--interval-ms",
            "20",
            "--tmpdir",
            dir.path().to_str().unwrap(),
        ],
    );

    // A full disk.
    let full = dir.path().join("full");
    let _full = Tmpfs::mount(&full, "size=1m,mode=0700");
    assert_failed_cleanly(&mut w, &full, "no space left");

    // An output directory that cannot be written.
    let ro = dir.path().join("ro");
    let _ro = Tmpfs::mount(&ro, "ro,size=1m");
    assert_failed_cleanly(&mut w, &ro.join("out"), "read-only");
}

#[test]
fn refuses_missing_pids_and_kernel_threads() {
    let dir = scratch_dir();
    let pid_max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let missing = (300..pid_max)
        .rev()
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let kthread = 2; // kthreadd
    assert!(fs::read_to_string("/proc/2/comm")
        .unwrap()
        .starts_with("kthreadd"));
    for (pid, expect) in [(missing, "no such process"), (kthread, "kernel thread")] {
        let out = dir.path().join(format!("out{pid}"));
        let r = run(binaries().crdump_command(pid, &out, false), CLI_TIMEOUT).expect("run crdump");
        assert_eq!(
            r.status.code(),
            Some(1),
            "pid {pid}: {:?} {}",
            r.status,
            r.stderr
        );
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{}", r.stderr);
        assert!(lines[0].contains(&pid.to_string()), "{}", lines[0]);
        assert!(
            lines[0].to_lowercase().contains(expect),
            "expected {expect:?} in {}",
            lines[0]
        );
        assert!(!out.join(format!("task-{pid}.crimg")).exists());
    }
}

/// `crimg info` and `verify` on a damaged image: exit 1 with one `crimg:`
/// line, never a panic (101) or a signal.
fn assert_refused(args: &[&str], image: &Path, what: &str) {
    let r = run(
        binaries().crimg_command(args.iter().copied().chain([image.to_str().unwrap()])),
        Duration::from_secs(60),
    )
    .expect("run crimg");
    assert_eq!(
        r.status.code(),
        Some(1),
        "crimg {args:?} on {what}: {:?}\n{}",
        r.status,
        r.stderr
    );
    let first = r.stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with("crimg: "),
        "crimg {args:?} on {what}: {}",
        r.stderr
    );
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

#[test]
fn damaged_images_are_reported_not_trusted() {
    skip_unless_root!();
    let dir = scratch_dir();
    let w = Workload::start(
        "counter",
        ["--heap-mb", "2", "--tmpdir", dir.path().to_str().unwrap()],
    );
    let dump = binaries()
        .dump(w.pid(), &dir.path().join("out"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    let good = fs::read(&dump.image).unwrap();
    binaries()
        .verify(&dump.image)
        .unwrap_or_else(|e| panic!("{e}"));
    let img = Image::parse(&good).unwrap();
    let notes_start = img.notes().next().unwrap().unwrap().offset as usize;
    let bad = dir.path().join("bad.crimg");

    // Truncated at many points.
    let len = good.len();
    for cut in (0..40)
        .map(|i| i * len / 40)
        .chain([len - 1, 63, 64, notes_start + 5])
    {
        fs::write(&bad, &good[..cut]).unwrap();
        assert_refused(&["info"], &bad, &format!("a truncation to {cut} bytes"));
        assert_refused(&["verify"], &bad, &format!("a truncation to {cut} bytes"));
    }
    // Flipped bytes in the ELF header, program headers and notes: the header
    // fields, and the start and middle of every note's descriptor.
    let mut places = vec![4, 16, 18, 32, 54, 56, 64, 70, notes_start, notes_start + 12];
    for n in img.notes().map(Result::unwrap) {
        let desc = n.desc.as_ptr() as usize - good.as_ptr() as usize;
        places.extend([n.offset as usize, desc, desc + n.desc.len() / 2]);
    }
    for at in places {
        let mut b = good.clone();
        b[at] ^= 0x41;
        fs::write(&bad, &b).unwrap();
        assert_refused(&["verify"], &bad, &format!("a flipped byte at {at}"));
    }
    // Flipped bytes in page contents: only verify reads them.
    for s in img.segments().take(5) {
        let mut b = good.clone();
        b[(s.offset + s.len / 2) as usize] ^= 1;
        fs::write(&bad, &b).unwrap();
        assert_refused(
            &["verify"],
            &bad,
            &format!("a flipped byte in the segment at {:#x}", s.vaddr),
        );
    }
}

/// A 1 GiB workload, and the exit status of its dump into `out` stopped
/// by `signal` while crdump copies the pages.
fn dump_stopped_mid_copy(
    out: &Path,
    signal: nix::sys::signal::Signal,
) -> (Workload, std::process::ExitStatus) {
    let w = Workload::start("bigmem", ["--mb", "1024", "--write-pct", "100"]);
    let mut command = binaries().crdump_command(w.pid(), out, false);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut crdump = crimg_tests::ChildGuard::new("crdump", command.spawn().unwrap());
    wait_until_writing(&mut crdump, w.pid());
    crdump.signal(signal).unwrap();
    let status = crdump.wait_exit(Duration::from_secs(30)).unwrap();
    (w, status)
}

/// The target of a stopped dump runs on, untraced (at once after a clean
/// detach, soon after its tracer died), with its memory intact.
fn assert_runs_on_untraced(w: &mut Workload) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = fs::read_to_string(format!("/proc/{}/status", w.pid())).unwrap();
        if status.lines().any(|l| l == "TracerPid:\t0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still traced:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    w.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn an_interrupted_dump_leaves_the_target_running_and_nothing_behind() {
    skip_unless_root!();
    let dir = scratch_dir();
    let out = dir.path().join("out");
    let (mut w, status) = dump_stopped_mid_copy(&out, nix::sys::signal::Signal::SIGINT);
    assert_eq!(status.code(), Some(1), "crdump after SIGINT: {status:?}");
    // Nothing is left: no image, no manifest, no temporary file, no directory.
    assert!(
        !out.exists(),
        "left behind: {:?}",
        fs::read_dir(&out).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
    assert_runs_on_untraced(&mut w);
}

#[test]
fn a_second_dump_into_one_directory_replaces_the_manifest_and_keeps_the_first_image() {
    skip_unless_root!();
    let dir = scratch_dir();
    let mut a = Workload::start("loop.py", ["--interval-ms", "20"]);
    let mut b = Workload::start("loop.py", ["--interval-ms", "20"]);
    for w in [&a, &b] {
        binaries()
            .dump(w.pid(), dir.path(), true)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    // A manifest describes one dumped tree: the last one.
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "crimg-manifest");
    assert_eq!(manifest["root"], b.pid());
    let listed: Vec<(i64, String)> = manifest["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["pid"].as_i64().unwrap(),
                p["image"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = vec![(i64::from(b.pid()), format!("task-{}.crimg", b.pid()))];
    assert_eq!(listed, expected, "{manifest:#}");
    assert!(dir.path().join(format!("task-{}.crimg", a.pid())).is_file());
    a.expect_pass(CheckTrigger::Stdin);
    b.expect_pass(CheckTrigger::Stdin);
}

#[test]
fn a_dumper_killed_mid_dump_leaves_the_target_running_and_no_file() {
    skip_unless_root!();
    let dir = scratch_dir();
    let out = dir.path().join("out");
    let (mut w, _) = dump_stopped_mid_copy(&out, nix::sys::signal::Signal::SIGKILL);
    // No file and no directory: the image had no name yet, and the output
    // directory is created only when the dump is complete.
    let left: Vec<PathBuf> = fs::read_dir(&out)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        !out.exists(),
        "left behind: {} holding {left:?}",
        out.display()
    );
    // The kernel detaches the dead tracer's target.
    assert_runs_on_untraced(&mut w);
}

/// Waits until crdump holds the memory of `target` open: it has frozen it
/// and reads its state and pages (its output files are anonymous, opened
/// before the freeze, so they say nothing about progress).
fn wait_until_writing(crdump: &mut crimg_tests::ChildGuard, target: i32) {
    let mem = PathBuf::from(format!("/proc/{target}/mem"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let writing = fs::read_dir(format!("/proc/{}/fd", crdump.pid()))
            .map(|fds| {
                fds.flatten()
                    .filter_map(|fd| fs::read_link(fd.path()).ok())
                    .any(|link| link == mem)
            })
            .unwrap_or(false);
        if writing {
            return;
        }
        assert!(
            crdump.try_status().is_none(),
            "crdump ended before it was stopped"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "crdump never started writing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}
