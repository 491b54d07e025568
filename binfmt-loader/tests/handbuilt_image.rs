//! End to end: a hand-built image of a tiny program, run by the real
//! `crimg-loader` binary. The program (machine code below) writes 16 bytes
//! from a stored data page, copies `/proc/self/maps` to stdout and exits
//! with the code it finds in `r14` — so its output shows the pages, the
//! registers, the layout (no trace of the loader, the vDSO moved to the
//! recorded address) and that the loader left through the gadgets.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use image_format::elf::{Timeval, UserRegs};
use image_format::records::{
    fd_kind, prot, vma_flags, vma_kind, CredsRecord, FileId, GadgetsRecord, ItimerRecord, MmRecord,
    PendingSignalRecord, ProcessRecord, RlimitRecord, SigactionRecord, StrRef, ThreadRecord,
    VmaRecord,
};
use image_writer::model::{FdState, PageRun, TaskState, ThreadState, VmaState};
use image_writer::write::{write_image, PageSource};
use zerocopy::FromZeros;

mod support;

/// `as --64` of:
/// ```text
/// _start: write(1, %rbp, 16)
///         fd = openat(AT_FDCWD, "/proc/self/maps", O_RDONLY)
///     1:  n = read(fd, %rbx + 4096, 4096); if n <= 0 goto 2; write(1, %rbx + 4096, n); goto 1
///     2:  exit_group(%r14)
/// path:   .asciz "/proc/self/maps"
/// 0x80:   syscall; ret                 (gadget)
/// 0x90:   mov $15, %eax; syscall       (gadget)
/// ```
const CODE: [u8; 151] = [
    0xb8, 0x01, 0x00, 0x00, 0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x48, 0x89, 0xee, 0xba, 0x10, 0x00,
    0x00, 0x00, 0x0f, 0x05, 0xb8, 0x01, 0x01, 0x00, 0x00, 0x48, 0xc7, 0xc7, 0x9c, 0xff, 0xff, 0xff,
    0x48, 0x8d, 0x35, 0x45, 0x00, 0x00, 0x00, 0x31, 0xd2, 0x45, 0x31, 0xd2, 0x0f, 0x05, 0x49, 0x89,
    0xc5, 0x31, 0xc0, 0x4c, 0x89, 0xef, 0x48, 0x8d, 0xb3, 0x00, 0x10, 0x00, 0x00, 0xba, 0x00, 0x10,
    0x00, 0x00, 0x0f, 0x05, 0x48, 0x85, 0xc0, 0x7e, 0x18, 0x48, 0x89, 0xc2, 0xb8, 0x01, 0x00, 0x00,
    0x00, 0xbf, 0x01, 0x00, 0x00, 0x00, 0x48, 0x8d, 0xb3, 0x00, 0x10, 0x00, 0x00, 0x0f, 0x05, 0xeb,
    0xd0, 0xb8, 0xe7, 0x00, 0x00, 0x00, 0x4c, 0x89, 0xf7, 0x0f, 0x05, 0xf4, 0x2f, 0x70, 0x72, 0x6f,
    0x63, 0x2f, 0x73, 0x65, 0x6c, 0x66, 0x2f, 0x6d, 0x61, 0x70, 0x73, 0x00, 0x0f, 0x1f, 0x40, 0x00,
    0x0f, 0x05, 0xc3, 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0x90,
    0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05,
];
const GADGET_SYSCALL_RET: u64 = 0x80;
const GADGET_SIGRETURN: u64 = 0x90;

const CODE_AT: u64 = 0x5000_0000;
const DATA_AT: u64 = 0x5010_0000;
const STACK_AT: u64 = 0x5020_0000;
const STACK_LEN: u64 = 16 * 4096;
const FILE_AT: u64 = 0x5030_0000;
const VDSO_AT: u64 = 0x6000_0000;
const STORED: &[u8; 16] = b"STORED-PAGE-OK!\n";

struct Pages(HashMap<u64, Vec<u8>>);

impl PageSource for Pages {
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, chunk) in buf.chunks_mut(4096).enumerate() {
            let page = self
                .0
                .get(&(addr + i as u64 * 4096))
                .ok_or(io::ErrorKind::NotFound)?;
            chunk.copy_from_slice(&page[..chunk.len()]);
        }
        Ok(())
    }
}

fn file_id(path: &Path) -> FileId {
    image_writer::model::file_id(&std::fs::metadata(path).unwrap())
}

fn vma(start: u64, end: u64, p: u32, kind: u32, flags: u32) -> VmaState {
    VmaState {
        record: VmaRecord {
            start,
            end,
            prot: p,
            kind,
            flags,
            ..Default::default()
        },
        path: String::new(),
    }
}

/// This kernel's `[vvar]`, `[vvar_vclock]`, `[vdso]` (kind, start, end).
fn own_vdso_block() -> Vec<(u32, u64, u64)> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        let kind = if line.ends_with("[vvar]") {
            vma_kind::VVAR
        } else if line.ends_with("[vvar_vclock]") {
            vma_kind::VVAR_VCLOCK
        } else if line.ends_with("[vdso]") {
            vma_kind::VDSO
        } else {
            continue;
        };
        let range = line.split(' ').next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        out.push((
            kind,
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        ));
    }
    out
}

fn xsave_area() -> Vec<u8> {
    let size = std::arch::x86_64::__cpuid_count(0xd, 0).ebx as usize;
    let mut x = vec![0u8; size.max(576)];
    x[0..2].copy_from_slice(&0x37fu16.to_le_bytes()); // FCW
    x[24..28].copy_from_slice(&0x1f80u32.to_le_bytes()); // MXCSR
    x[512..520].copy_from_slice(&3u64.to_le_bytes()); // XSTATE_BV: x87 | SSE
    x
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds the image; returns (its path, the mapped file's path).
fn build_image(dir: &Path, with_gadgets: bool) -> PathBuf {
    build_edited_image(dir, with_gadgets, |_| {})
}

/// [`build_image`] with `edit` applied to the state before it is written.
fn build_edited_image(
    dir: &Path,
    with_gadgets: bool,
    edit: impl FnOnce(&mut TaskState),
) -> PathBuf {
    let mapped = dir.join("mapped-file");
    std::fs::write(&mapped, vec![b'F'; 4096]).unwrap();

    let mut pages = HashMap::new();
    let mut code_page = vec![0u8; 4096];
    code_page[..CODE.len()].copy_from_slice(&CODE);
    pages.insert(CODE_AT, code_page);
    let mut data_page = vec![0u8; 4096];
    data_page[..16].copy_from_slice(STORED);
    data_page[16..32].copy_from_slice(b"handbuilt\0arg\0\0\0");
    pages.insert(DATA_AT, data_page);

    let mut vmas = vec![
        vma(
            CODE_AT,
            CODE_AT + 4096,
            prot::READ | prot::EXEC,
            vma_kind::ANON,
            0,
        ),
        vma(
            DATA_AT,
            DATA_AT + 3 * 4096,
            prot::READ | prot::WRITE,
            vma_kind::ANON,
            0,
        ),
        vma(
            STACK_AT,
            STACK_AT + STACK_LEN,
            prot::READ | prot::WRITE,
            vma_kind::STACK,
            vma_flags::GROWSDOWN,
        ),
        VmaState {
            record: VmaRecord {
                start: FILE_AT,
                end: FILE_AT + 4096,
                prot: prot::READ,
                kind: vma_kind::FILE,
                file: file_id(&mapped),
                ..Default::default()
            },
            path: mapped.to_str().unwrap().to_owned(),
        },
    ];
    let block = own_vdso_block();
    let base = block[0].1;
    for (kind, start, end) in &block {
        vmas.push(vma(
            VDSO_AT + (start - base),
            VDSO_AT + (end - base),
            prot::READ,
            *kind,
            0,
        ));
    }
    vmas.sort_by_key(|v| v.record.start);

    let rsp = STACK_AT + STACK_LEN - 512;
    let regs = UserRegs {
        rip: CODE_AT,
        rsp,
        rbx: DATA_AT,
        rbp: DATA_AT,
        r14: 42,
        eflags: 0x202,
        cs: 0x33,
        ss: 0x2b,
        ..Default::default()
    };
    let mut comm = [0u8; 16];
    comm[..9].copy_from_slice(b"handbuilt");
    let thread = ThreadState {
        record: ThreadRecord {
            tid: 4242,
            comm,
            syscall_nr: -1,
            ..Default::default()
        },
        regs,
        xsave: xsave_area(),
    };
    let mut process = ProcessRecord::new_zeroed();
    process.pid = 4242;
    process.nthreads = 1;
    process.umask = 0o027;
    process.page_size = 4096;
    process.comm = comm;
    process.exe_id = file_id(Path::new("/bin/true"));
    let exe = std::fs::canonicalize("/bin/true").unwrap();
    process.exe_id = file_id(&exe);
    let _ = StrRef::default();

    let (hard_cur, hard_max) = {
        let l = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = l
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .unwrap()
            .to_owned();
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[3].parse::<u64>().unwrap(), f[4].parse::<u64>().unwrap())
    };
    let _ = hard_cur;

    let state = TaskState {
        process,
        exe: exe.to_str().unwrap().to_owned(),
        cwd: "/".into(),
        root: "/".into(),
        cmdline: b"handbuilt\0arg\0".to_vec(),
        creds: CredsRecord::new_zeroed(),
        mm: MmRecord {
            start_code: CODE_AT,
            end_code: CODE_AT + 4096,
            start_data: DATA_AT,
            end_data: DATA_AT + 4096,
            start_brk: DATA_AT + 3 * 4096,
            brk: DATA_AT + 3 * 4096,
            start_stack: rsp,
            arg_start: DATA_AT + 16,
            arg_end: DATA_AT + 30,
            env_start: DATA_AT + 30,
            env_end: DATA_AT + 30,
        },
        auxv: vec![6, 4096, 0, 0],
        rlimits: vec![RlimitRecord {
            resource: 7,
            cur: 321,
            max: hard_max,
            ..Default::default()
        }],
        sigactions: vec![SigactionRecord {
            signo: 10,
            handler: 1,
            ..Default::default()
        }],
        itimers: vec![],
        threads: vec![thread],
        vmas,
        fds: vec![
            FdState {
                record: image_format::records::FdRecord {
                    fd: 0,
                    kind: fd_kind::CHAR,
                    file: file_id(Path::new("/dev/null")),
                    ..Default::default()
                },
                path: "/dev/null".into(),
            },
            FdState {
                record: image_format::records::FdRecord {
                    fd: 1,
                    kind: fd_kind::PIPE,
                    ..Default::default()
                },
                path: "pipe:[1]".into(),
            },
            FdState {
                record: image_format::records::FdRecord {
                    fd: 2,
                    kind: fd_kind::PIPE,
                    ..Default::default()
                },
                path: "pipe:[2]".into(),
            },
        ],
        objects: Default::default(),
        pending: vec![],
        gadgets: if with_gadgets {
            GadgetsRecord {
                syscall_ret: CODE_AT + GADGET_SYSCALL_RET,
                rt_sigreturn: CODE_AT + GADGET_SIGRETURN,
            }
        } else {
            GadgetsRecord::default()
        },
        warnings: vec![],
        pages: vec![
            PageRun {
                start: CODE_AT,
                len: 4096,
            },
            PageRun {
                start: DATA_AT,
                len: 4096,
            },
        ],
    };
    let mut state = state;
    edit(&mut state);
    let path = dir.join("task-4242.crimg");
    let out = File::create(&path).unwrap();
    write_image(&state, &out, &mut Pages(pages)).unwrap();
    path
}

fn run_loader(image: &Path) -> (i32, String, String) {
    let out = Command::new(support::loader_path())
        .arg(image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn temp_dir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("crimg-e2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

#[test]
fn restores_a_handbuilt_image_and_leaves_no_trace() {
    let dir = temp_dir("e2e");
    let image = build_image(&dir.0, true);
    let (code, stdout, stderr) = run_loader(&image);
    assert_eq!(code, 42, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.starts_with("STORED-PAGE-OK!\n"), "{stdout}");
    let maps: Vec<&str> = stdout[16..].lines().collect();
    let starts: Vec<u64> = maps
        .iter()
        .map(|l| u64::from_str_radix(l.split('-').next().unwrap(), 16).unwrap())
        .collect();
    // Exactly the target's mappings: code, data, stack, file, the vDSO
    // block at its recorded place, [vsyscall]; nothing of the loader.
    assert!(maps[0].starts_with("50000000-50001000 r-xp"), "{stdout}");
    assert!(
        maps.iter().any(|l| l.starts_with("50100000-50103000 rw-p")),
        "{stdout}"
    );
    assert!(
        maps.iter()
            .any(|l| l.starts_with("50200000-50210000 rw-p") && l.ends_with("[stack]")),
        "{stdout}"
    );
    assert!(
        maps.iter()
            .any(|l| l.starts_with("50300000-50301000 r--p") && l.contains("mapped-file")),
        "{stdout}"
    );
    let vdso = maps
        .iter()
        .position(|l| l.ends_with("[vdso]"))
        .expect("a [vdso] line");
    assert!(
        starts[vdso] >= VDSO_AT && starts[vdso] < VDSO_AT + 0x10_0000,
        "vdso not moved:\n{stdout}"
    );
    assert!(!stdout.contains("crimg-loader"), "{stdout}");
    let block = own_vdso_block().len();
    assert_eq!(
        maps.len(),
        4 + block + 1,
        "unexpected mappings (the window?):\n{stdout}"
    );
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn without_gadgets_the_window_stays_and_a_warning_says_so() {
    let dir = temp_dir("nogadgets");
    let image = build_image(&dir.0, false);
    let (code, stdout, stderr) = run_loader(&image);
    assert_eq!(code, 42, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("warning") && stderr.contains("window"),
        "{stderr}"
    );
    let block = own_vdso_block().len();
    assert_eq!(stdout[16..].lines().count(), 4 + block + 2, "{stdout}");
}

/// A recorded gadget address whose bytes are not the gadget: not jumped
/// to; the task resumes with the window left and a warning.
#[test]
fn gadgets_with_the_wrong_bytes_are_not_used() {
    let dir = temp_dir("badgadget");
    for wrong in [
        |g: &mut GadgetsRecord| g.syscall_ret = CODE_AT,
        |g: &mut GadgetsRecord| g.rt_sigreturn = DATA_AT,
    ] {
        let image = build_edited_image(&dir.0, true, |state| wrong(&mut state.gadgets));
        let (code, stdout, stderr) = run_loader(&image);
        assert_eq!(code, 42, "stdout:\n{stdout}\nstderr:\n{stderr}");
        assert!(
            stderr.contains("gadget at") && stderr.contains("window stays"),
            "{stderr}"
        );
        let block = own_vdso_block().len();
        assert_eq!(stdout[16..].lines().count(), 4 + block + 2, "{stdout}");
    }
}

#[test]
fn a_changed_mapped_file_is_refused_before_anything_changes() {
    let dir = temp_dir("changed");
    let image = build_image(&dir.0, true);
    std::fs::write(dir.0.join("mapped-file"), vec![b'G'; 4097]).unwrap();
    let (code, stdout, stderr) = run_loader(&image);
    assert_eq!(code, 5, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.starts_with("crimg-loader: ") && stderr.contains("changed since the dump"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1);
}

#[test]
fn a_corrupt_segment_is_refused() {
    let dir = temp_dir("corrupt");
    let image = build_image(&dir.0, true);
    let mut bytes = std::fs::read(&image).unwrap();
    // Flip a byte of the last stored page (segments are at the end).
    let n = bytes.len();
    bytes[n - 4096 + 5] ^= 0xff;
    std::fs::write(&image, bytes).unwrap();
    let (code, _, stderr) = run_loader(&image);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("checksum"), "{stderr}");
}

#[test]
fn an_xsave_area_xrstor_would_fault_on_is_refused() {
    let dir = temp_dir("badxsave");
    let image = build_edited_image(&dir.0, true, |state| {
        // MXCSR bit 16 and up are reserved on every CPU.
        state.threads[0].xsave[24..28].copy_from_slice(&0xffff_1f80u32.to_le_bytes());
    });
    let (code, _, stderr) = run_loader(&image);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("thread 4242") && stderr.contains("MXCSR"),
        "{stderr}"
    );
    let image = build_edited_image(&dir.0, true, |state| {
        state.threads[0].xsave[512 + 40] = 1;
    });
    let (code, _, stderr) = run_loader(&image);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("reserved header bytes"), "{stderr}");
}

#[test]
fn fd_numbers_no_process_can_have_are_refused() {
    let dir = temp_dir("badfd");
    for (fd, code, what) in [(-5, 4, "fd number -5"), (i32::MAX, 7, "RLIMIT_NOFILE")] {
        // Fd 0 (/dev/null) renumbered and put last: the numbers stay in
        // increasing order (a rule of its own) for the one above the limit.
        let image = build_edited_image(&dir.0, true, |state| {
            let mut null = state.fds.remove(0);
            null.record.fd = fd;
            state.fds.push(null);
        });
        let (got, _, stderr) = run_loader(&image);
        assert_eq!(got, code, "fd {fd}: {stderr}");
        assert!(stderr.contains(what), "fd {fd}: {stderr}");
    }
}

/// A plan op that fails after the point of no return names itself and the
/// errno, on the caller's stderr although the task's fd 2 is `/dev/null`
/// by then. Here the caller's RLIMIT_SIGPENDING lets one queued signal in,
/// not two; stage 1 would refuse that from the `SigQ` line of
/// `/proc/self/status`, so the loader runs (as root) in a mount namespace
/// where that file is empty, and the op fails instead.
#[test]
fn a_failing_op_reports_its_errno() {
    let dir = temp_dir("failop");
    let image = build_edited_image(&dir.0, true, |state| {
        state.fds[2] = state.fds[0].clone();
        state.fds[2].record.fd = 2;
        for signo in [40u32, 41] {
            let mut siginfo = [0u8; 128];
            siginfo[..4].copy_from_slice(&signo.to_le_bytes());
            // si_code SI_QUEUE (-1): counted against RLIMIT_SIGPENDING.
            siginfo[8..12].copy_from_slice(&(-1i32).to_le_bytes());
            state.pending.push(PendingSignalRecord {
                tid: 0,
                _pad: 0,
                siginfo,
            });
        }
    });
    let is_root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:\t0\t")));
    if !is_root {
        eprintln!("skipped: hiding /proc/self/status needs root");
        return;
    }
    // `exec` keeps the shell's pid through prlimit into the loader.
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind /dev/null /proc/$$/status && exec prlimit --sigpending=1:1 -- "$0" "$1""#)
        .arg(support::loader_path())
        .arg(&image)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{stderr}");
    assert!(
        stderr.contains("(rt_sigqueueinfo") && stderr.contains("errno 11\n"),
        "{stderr}"
    );
}

/// A value the kernel would refuse after the point of no return (a signal
/// number it does not have, a pending signal for a thread the image lacks,
/// an address past TASK_SIZE) is refused in stage 1 as corrupt, naming it.
#[test]
fn values_the_kernel_would_refuse_are_corrupt() {
    let dir = temp_dir("badvalue");
    let signal = |tid: i32, signo: u8| {
        let mut siginfo = [0u8; 128];
        siginfo[0] = signo;
        PendingSignalRecord {
            tid,
            _pad: 0,
            siginfo,
        }
    };
    type Edit = Box<dyn Fn(&mut TaskState)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(move |s| s.pending.push(signal(0, 99))),
            "pending signal number 99",
        ),
        (
            Box::new(move |s| s.pending.push(signal(777_777, 10))),
            "thread 777777, which the image does not have",
        ),
        (
            Box::new(|s| s.mm.brk = s.mm.start_brk.wrapping_sub(0x1000)),
            "mm field",
        ),
        (
            Box::new(|s| {
                s.rlimits.push(RlimitRecord {
                    resource: 16,
                    _pad: 0,
                    cur: 0,
                    max: 0,
                })
            }),
            "rlimit resource 16",
        ),
    ];
    for (edit, what) in cases {
        let image = build_edited_image(&dir.0, true, |s| edit(s));
        let (code, _, stderr) = run_loader(&image);
        assert_eq!(code, 4, "{what}: {stderr}");
        assert!(stderr.contains(what), "{what}: {stderr}");
    }
}

/// What the kernel would refuse after the point of no return (and which
/// once ended in exit 9 with the loader's own layout torn down): each is
/// now refused in stage 1 (exit 4) with one line naming it, and the
/// loader's process is intact to say so.
#[test]
fn values_once_refused_after_the_point_of_no_return_are_refused_first() {
    let dir = temp_dir("ponr");
    let timer = |interval: Timeval, value: Timeval| ItimerRecord {
        which: 0,
        _pad: 0,
        interval,
        value,
    };
    type Edit = Box<dyn Fn(&mut TaskState)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(move |s| {
                s.itimers.push(timer(
                    Timeval { sec: 0, usec: 0 },
                    Timeval {
                        sec: 0,
                        usec: 2_000_000,
                    },
                ))
            }),
            "interval timer 0 holds 0 s 2000000 us",
        ),
        (
            Box::new(move |s| {
                s.itimers.push(timer(
                    Timeval { sec: 0, usec: -1 },
                    Timeval { sec: 1, usec: 0 },
                ))
            }),
            "interval timer 0 holds 0 s -1 us",
        ),
        (
            Box::new(|s| {
                s.threads[0].record.rseq_addr = 0x7000_0000_0000;
                s.threads[0].record.rseq_len = 32;
                s.threads[0].record.rseq_sig = 0x5305_3053;
            }),
            "rseq area 0x700000000000 (length 32) is not inside one writable memory area",
        ),
        (
            Box::new(|s| {
                s.threads[0].record.rseq_addr = 0xffff_8000_0000_0000;
                s.threads[0].record.rseq_len = 32;
            }),
            "rseq area 0xffff800000000000",
        ),
        (
            // In the code VMA: mapped, but not writable.
            Box::new(|s| {
                s.threads[0].record.rseq_addr = CODE_AT + 0x100;
                s.threads[0].record.rseq_len = 32;
            }),
            "is not inside one writable memory area",
        ),
        (
            Box::new(|s| s.mm.start_code = 0x1000),
            "mm field start_code 0x1000",
        ),
        (
            Box::new(|s| s.mm.start_stack = 0x2000),
            "mm field start_stack 0x2000",
        ),
        (
            Box::new(|s| s.mm.end_code = s.mm.start_code),
            "mm field start_code 0x50000000 is not before its end",
        ),
        (
            Box::new(|s| s.vmas[0].record.prot |= 0x0100_0000),
            "has protection 0x1000005",
        ),
        (
            Box::new(|s| s.threads[0].regs.fs_base = 0xffff_8000_0000_1000),
            "fs_base 0xffff800000001000 is not a user address",
        ),
        (
            Box::new(|s| s.threads[0].regs.gs_base = 0x8000_0000_0000),
            "gs_base 0x800000000000 is not a user address",
        ),
    ];
    for (edit, what) in cases {
        let image = build_edited_image(&dir.0, true, |s| edit(s));
        let (code, _, stderr) = run_loader(&image);
        assert_eq!(code, 4, "{what}: {stderr}");
        assert!(stderr.contains(what), "{what}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    }
}

/// Removes a binfmt_misc entry when dropped.
struct BinfmtEntry(PathBuf);

impl Drop for BinfmtEntry {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, "-1");
    }
}

/// Through the kernel: registers a private binfmt_misc entry (flag `O`,
/// image fd in `AT_EXECFD`), under a name of its own that the guard
/// removes, and executes the image itself. Needs root and binfmt_misc
/// (mounted here if it is not).
#[test]
fn runs_through_binfmt_misc_with_the_o_flag() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    });
    if !root {
        eprintln!("skipped: needs root (binfmt_misc registration)");
        return;
    }
    let register = Path::new("/proc/sys/fs/binfmt_misc/register");
    if !register.exists() {
        let _ = Command::new("mount")
            .args([
                "-t",
                "binfmt_misc",
                "binfmt_misc",
                "/proc/sys/fs/binfmt_misc",
            ])
            .status();
    }
    if !register.exists() {
        eprintln!("skipped: binfmt_misc is not available");
        return;
    }
    let name = format!("crimg-loader-test-{}", std::process::id());
    let magic: String = image_format::IDENT
        .iter()
        .map(|b| format!("\\x{b:02x}"))
        .collect();
    let rule = format!(":{name}:M::{magic}::{}:O", support::loader_path().display());
    std::fs::write("/proc/sys/fs/binfmt_misc/register", rule)
        .expect("register a binfmt_misc entry");
    let _entry = BinfmtEntry(PathBuf::from(format!("/proc/sys/fs/binfmt_misc/{name}")));
    let dir = temp_dir("binfmt");
    let image = build_image(&dir.0, true);
    std::fs::set_permissions(&image, std::fs::Permissions::from_mode(0o700)).unwrap();
    // ETXTBSY: a child another test thread forked while this one still had
    // the image open for writing holds that fd until it execs; the kernel
    // refuses to execute a file open for writing meanwhile. It passes.
    let mut tries = 0;
    let out = loop {
        match Command::new(&image).stdin(Stdio::null()).output() {
            Err(e) if e.raw_os_error() == Some(26) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other.unwrap(),
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(42),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.starts_with("STORED-PAGE-OK!\n"), "{stdout}");
    assert!(!stdout.contains("crimg-loader"), "{stdout}");
}

/// The dumper's self-check and the loader's stage 1 run one function,
/// `binfmt_loader::rules::check_image`: on each image it refuses, the
/// loader exits with that error's code and prints that error's message;
/// a sound image passes it.
#[test]
fn the_rules_the_dumper_runs_are_the_loaders() {
    use binfmt_loader::rules::check_image;
    use image_format::Image;
    let dir = temp_dir("rules");
    let sound = std::fs::read(build_image(&dir.0, true)).unwrap();
    assert_eq!(check_image(&Image::parse(&sound).unwrap(), 4096), Ok(()));

    type Edit = Box<dyn Fn(&mut TaskState)>;
    let cases: Vec<Edit> = vec![
        Box::new(|s| s.vmas[3].record.flags |= vma_flags::FILE_DELETED),
        Box::new(|s| {
            let mut socket = s.fds[1].clone();
            socket.record.fd = 5;
            socket.record.kind = fd_kind::SOCKET;
            socket.path = "socket:[77]".into();
            s.fds.push(socket);
        }),
        Box::new(|s| s.fds[0].record.fd = -3),
        Box::new(|s| {
            s.itimers.push(ItimerRecord {
                which: 1,
                _pad: 0,
                interval: Timeval {
                    sec: 0,
                    usec: 1_000_000,
                },
                value: Timeval { sec: 1, usec: 0 },
            })
        }),
        Box::new(|s| s.threads[0].regs.fs_base = u64::MAX),
    ];
    for edit in cases {
        let image = build_edited_image(&dir.0, true, |s| edit(s));
        let bytes = std::fs::read(&image).unwrap();
        let parsed = Image::parse(&bytes).unwrap();
        let error = check_image(&parsed, 4096).expect_err("the rules refuse the edited image");
        let (code, _, stderr) = run_loader(&image);
        assert_eq!(code, error.exit_code() as i32, "{error}: {stderr}");
        assert!(
            stderr.ends_with(&format!(": {error}\n")),
            "{error}: {stderr}"
        );
    }
}

/// `PR_SET_MM_MAP` refuses brk and data sizes above the caller's
/// RLIMIT_DATA (`check_data_rlimit`): checked in stage 1, with the limit
/// the plan will meet (exit 10, before any change).
#[test]
fn a_brk_area_beyond_rlimit_data_is_refused_first() {
    let dir = temp_dir("datalimit");
    let image = build_edited_image(&dir.0, true, |s| {
        s.mm.brk = s.mm.start_brk + (1 << 30);
    });
    let out = Command::new("prlimit")
        .arg("--data=536870912")
        .arg("--")
        .arg(support::loader_path())
        .arg(&image)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert!(
        stderr.contains("exceed this process's RLIMIT_DATA"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}
