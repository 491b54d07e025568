//! The golden image: a small hand-built task image committed in
//! `tests/golden/v1/`, written once by the writer of format version 1. The
//! reader of today must parse it, verify it and read back every value the
//! state below put in it, for as long as it claims to read version 1; a
//! record layout, note type, constant or ELF layout changed in a way old
//! images do not survive fails here, not in a user's restore.
//!
//! `tests/golden/README.md` says how the files were made and when (only)
//! to make new ones:
//! `CRIMG_WRITE_GOLDEN=v2 cargo test -p crimg-tests --test golden -- --ignored`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use image_format::elf::{self, UserRegs};
use image_format::records::{
    self, fd_flags, fd_kind, note, prot, restart, vma_flags, vma_kind, CredsRecord, FdRecord,
    FileId, GadgetsRecord, ItimerRecord, MmRecord, PendingSignalRecord, ProcessRecord, Record,
    RlimitRecord, SigactionRecord, StrRef, ThreadRecord, VmaRecord, MAX_GROUPS,
};
use image_format::{Image, FORMAT_VERSION, PAGE_SIZE};
use image_writer::model::{FdState, PageRun, TaskState, ThreadState, VmaState};
use image_writer::write::{write_image, PageSource};
use zerocopy::FromZeros;

use crimg_tests::cli::{self, CLI_TIMEOUT};
use crimg_tests::{binaries, scratch_dir};

/// The format version the committed golden files are of.
const GOLDEN_VERSION: u8 = 1;

fn golden_dir(version: u8) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("v{version}"))
}

fn golden_image() -> PathBuf {
    golden_dir(GOLDEN_VERSION).join("task.crimg")
}

/// The byte at `addr` of the golden task's memory.
fn pattern(addr: u64) -> u8 {
    // The top byte of a multiplicative hash: every page differs.
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes()[0]
}

struct PatternMemory;

impl PageSource for PatternMemory {
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        for (at, b) in (addr..).zip(buf.iter_mut()) {
            *b = pattern(at);
        }
        Ok(())
    }
}

fn comm(name: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..name.len()].copy_from_slice(name);
    c
}

const EXE: &str = "/usr/local/bin/golden";
const EXE_ID: FileId = FileId {
    dev: 0x803,
    ino: 131_074,
    size: 16_384,
    mtime_sec: 1_600_000_000,
    mtime_nsec: 5,
};

/// An XSAVE area in standard format: x87, SSE and AVX state (XCR0 0x7).
fn xsave(seed: u8) -> Vec<u8> {
    let mut area: Vec<u8> = (0..832u32)
        .map(|i| (i.to_le_bytes()[0]).wrapping_mul(seed))
        .collect();
    let sw = elf::FX_SW_BYTES_OFFSET;
    area[sw..sw + 48].fill(0);
    area[sw..sw + 4].copy_from_slice(&elf::FP_XSTATE_MAGIC1.to_le_bytes());
    area[sw + 4..sw + 8].copy_from_slice(&836u32.to_le_bytes());
    area[sw + 8..sw + 16].copy_from_slice(&0x7u64.to_le_bytes());
    area[sw + 16..sw + 20].copy_from_slice(&832u32.to_le_bytes());
    let hdr = elf::XSAVE_HEADER_OFFSET;
    area[hdr..hdr + 64].fill(0);
    area[hdr..hdr + 8].copy_from_slice(&0x7u64.to_le_bytes());
    area
}

fn regs(base: u64) -> UserRegs {
    UserRegs {
        r15: base + 15,
        r14: base + 14,
        r13: base + 13,
        r12: base + 12,
        rbp: 0x7ffd_0000_fe00,
        rbx: base + 1,
        r11: 0x246,
        r10: base + 10,
        r9: base + 9,
        r8: base + 8,
        rax: base,
        rcx: 0x40_1010,
        rdx: base + 3,
        rsi: base + 4,
        rdi: base + 5,
        orig_rax: base,
        rip: 0x40_1010,
        cs: 0x33,
        eflags: 0x246,
        rsp: 0x7ffd_0000_fd00,
        ss: 0x2b,
        fs_base: 0x7f00_0000_1000,
        gs_base: 0,
        ds: 0,
        es: 0,
        fs: 0,
        gs: 0,
    }
}

fn vma(start: u64, end: u64, prot: u32, flags: u32, kind: u32, path: &str) -> VmaState {
    let file = if kind == vma_kind::FILE {
        EXE_ID
    } else {
        FileId::default()
    };
    VmaState {
        record: VmaRecord {
            start,
            end,
            pgoff: if kind == vma_kind::FILE {
                start - 0x40_0000
            } else {
                0
            },
            prot,
            flags,
            kind,
            file,
            ..VmaRecord::default()
        },
        path: path.to_owned(),
    }
}

fn fd(fd: i32, kind: u32, flags: u32, open_flags: u32, pos: u64, path: &str) -> FdState {
    FdState {
        record: FdRecord {
            fd,
            kind,
            flags,
            open_flags,
            pos,
            mnt_id: 29,
            mode: if kind == fd_kind::DIRECTORY {
                0o040_755
            } else if kind == fd_kind::TTY {
                0o020_620
            } else {
                0o100_644
            },
            file: FileId {
                dev: 0x803,
                ino: 4000 + u64::from(fd.unsigned_abs()),
                ..FileId::default()
            },
            ..FdRecord::default()
        },
        path: path.to_owned(),
    }
}

fn siginfo(signo: u8, pid: u32) -> [u8; 128] {
    let mut info = [0u8; 128];
    info[0] = signo;
    info[16..20].copy_from_slice(&pid.to_le_bytes());
    info
}

/// The task the golden image holds: two threads, seven memory areas (five
/// with stored pages), five fds, one handler, two pending signals.
fn golden_state() -> TaskState {
    let mut process = ProcessRecord::new_zeroed();
    process.pid = 4242;
    process.ppid = 4200;
    process.pgid = 4242;
    process.sid = 4200;
    process.umask = 0o022;
    process.flags = records::PROCESS_THP_DISABLED
        | records::PROCESS_COREDUMP_FILTER_KNOWN
        | (0x33 << records::PROCESS_COREDUMP_FILTER_SHIFT);
    process.tty_nr = 0x8803;
    process.page_size = 4096;
    process.start_time = 123_456;
    process.dump_time_ns = 1_700_000_000_000_000_000;
    process.exe_id = EXE_ID;
    process.comm = comm(b"golden");
    process.cwd_id = FileId {
        dev: 0x803,
        ino: 2,
        ..FileId::default()
    };

    let mut groups = [0u32; MAX_GROUPS];
    groups[0] = 1000;
    groups[1] = 27;
    let creds = CredsRecord {
        uid: [1000; 4],
        gid: [1000; 4],
        ngroups: 2,
        securebits: 0,
        groups,
        cap_inheritable: 0,
        cap_permitted: 0,
        cap_effective: 0,
        cap_bounding: 0x1ff_ffff_ffff,
        cap_ambient: 0,
        no_new_privs: 1,
        _pad: 0,
    };
    let mm = MmRecord {
        start_code: 0x40_0000,
        end_code: 0x40_2000,
        start_data: 0x40_2000,
        end_data: 0x40_3000,
        start_brk: 0x40_5000,
        brk: 0x40_5800,
        start_stack: 0x7ffd_0000_ff00,
        arg_start: 0x7ffd_0000_ff10,
        arg_end: 0x7ffd_0000_ff1f,
        env_start: 0x7ffd_0000_ff1f,
        env_end: 0x7ffd_0000_ff40,
    };
    let sigactions = (1..=64u32)
        .map(|signo| match signo {
            12 => SigactionRecord {
                signo,
                handler: 0x40_1100,
                flags: 0x1400_0000,
                restorer: 0x40_1200,
                mask: 1 << 9,
                ..SigactionRecord::default()
            },
            13 => SigactionRecord {
                signo,
                handler: 1,
                ..SigactionRecord::default()
            },
            _ => SigactionRecord {
                signo,
                ..SigactionRecord::default()
            },
        })
        .collect();
    let rlimits = (0..16u32)
        .map(|resource| RlimitRecord {
            resource,
            cur: u64::from(resource) * 1000 + 1,
            max: if resource == 7 { 4096 } else { u64::MAX },
            ..RlimitRecord::default()
        })
        .collect();
    let itimers = vec![
        ItimerRecord {
            which: 0,
            interval: elf::Timeval { sec: 1, usec: 0 },
            value: elf::Timeval {
                sec: 0,
                usec: 250_000,
            },
            ..ItimerRecord::default()
        },
        ItimerRecord {
            which: 1,
            ..ItimerRecord::default()
        },
        ItimerRecord {
            which: 2,
            ..ItimerRecord::default()
        },
    ];
    let threads = vec![
        ThreadState {
            record: ThreadRecord {
                tid: 4242,
                restart: restart::RESTART,
                sigmask: 1 << 9,
                altstack_sp: 0x7f00_0000_2000,
                altstack_size: 8192,
                rseq_len: 32,
                rseq_addr: 0x7f00_0000_1800,
                rseq_sig: 0x5305_3053,
                robust_list_head: 0x7f00_0000_1a00,
                robust_list_len: 24,
                clear_child_tid: 0x7f00_0000_1b00,
                comm: comm(b"golden"),
                syscall_nr: 0,
                syscall_ret: -512,
                ..ThreadRecord::default()
            },
            regs: regs(0x1000),
            xsave: xsave(3),
        },
        ThreadState {
            record: ThreadRecord {
                tid: 4243,
                restart: restart::EINTR,
                sigmask: 0,
                altstack_flags: 2,
                comm: comm(b"worker"),
                syscall_nr: 230,
                syscall_ret: -516,
                ..ThreadRecord::default()
            },
            regs: regs(0x2000),
            xsave: xsave(5),
        },
    ];
    let rw = prot::READ | prot::WRITE;
    let vmas = vec![
        vma(
            0x40_0000,
            0x40_2000,
            prot::READ | prot::EXEC,
            0,
            vma_kind::FILE,
            EXE,
        ),
        vma(
            0x40_2000,
            0x40_3000,
            rw,
            vma_flags::ACCOUNT,
            vma_kind::FILE,
            EXE,
        ),
        vma(
            0x40_5000,
            0x40_6000,
            rw,
            vma_flags::ACCOUNT,
            vma_kind::HEAP,
            "[heap]",
        ),
        vma(
            0x7f00_0000_0000,
            0x7f00_0000_4000,
            rw,
            vma_flags::NORESERVE | vma_flags::DONTFORK,
            vma_kind::ANON,
            "",
        ),
        vma(
            0x7ffd_0000_0000,
            0x7ffd_0001_0000,
            rw,
            vma_flags::GROWSDOWN | vma_flags::ACCOUNT,
            vma_kind::STACK,
            "[stack]",
        ),
        vma(
            0x7ffd_0fff_c000,
            0x7ffd_1000_0000,
            prot::READ,
            0,
            vma_kind::VVAR,
            "[vvar]",
        ),
        vma(
            0x7ffd_1000_0000,
            0x7ffd_1000_2000,
            prot::READ | prot::EXEC,
            vma_flags::DONTDUMP,
            vma_kind::VDSO,
            "[vdso]",
        ),
    ];
    let fds = vec![
        fd(0, fd_kind::TTY, 0, 0o2, 0, "/dev/pts/3"),
        fd(1, fd_kind::TTY, 0, 0o2, 0, "/dev/pts/3"),
        fd(2, fd_kind::TTY, 0, 0o2, 0, "/dev/pts/3"),
        fd(
            3,
            fd_kind::REGULAR,
            fd_flags::CLOEXEC,
            0o2002,
            17,
            "/home/golden/data.txt",
        ),
        fd(
            4,
            fd_kind::DIRECTORY,
            fd_flags::CLOEXEC,
            0o200_000,
            0,
            "/home/golden",
        ),
    ];
    let page = PAGE_SIZE;
    TaskState {
        process,
        exe: EXE.to_owned(),
        cwd: "/home/golden".to_owned(),
        root: "/".to_owned(),
        cmdline: b"golden\0--check\0".to_vec(),
        creds,
        mm,
        auxv: vec![6, 4096, 9, 0x40_1000, 33, 0x7ffd_1000_0000, 0, 0],
        rlimits,
        sigactions,
        itimers,
        threads,
        vmas,
        fds,
        objects: Default::default(),
        pending: vec![
            PendingSignalRecord {
                tid: 0,
                _pad: 0,
                siginfo: siginfo(10, 4200),
            },
            PendingSignalRecord {
                tid: 4243,
                _pad: 0,
                siginfo: siginfo(12, 4242),
            },
        ],
        gadgets: GadgetsRecord {
            syscall_ret: 0x7ffd_1000_0a10,
            rt_sigreturn: 0x7ffd_1000_0a20,
        },
        warnings: vec!["fd 5 (socket:[98765]) was not kept".to_owned()],
        pages: vec![
            PageRun {
                start: 0x40_2000,
                len: page,
            },
            PageRun {
                start: 0x40_5000,
                len: page,
            },
            PageRun {
                start: 0x7f00_0000_0000,
                len: 2 * page,
            },
            PageRun {
                start: 0x7ffd_0000_f000,
                len: page,
            },
            PageRun {
                start: 0x7ffd_1000_0000,
                len: 2 * page,
            },
        ],
    }
}

fn read_golden() -> Vec<u8> {
    let path = golden_image();
    fs::read(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

fn text<'a>(img: &Image<'a>, s: StrRef) -> &'a str {
    std::str::from_utf8(img.string(s).unwrap()).unwrap()
}

/// Every record of type `T` in the image.
fn all<T: Record>(img: &Image) -> Vec<T> {
    img.records::<T>()
        .unwrap_or_else(|err| panic!("note {}: {err}", note::name(T::NOTE_TYPE)))
        .collect()
}

#[test]
fn the_golden_image_parses_verifies_and_reads_back_its_state() {
    let bytes = read_golden();
    let img = Image::parse(&bytes).unwrap_or_else(|err| panic!("golden v1 image: {err}"));
    img.verify_segments().unwrap();
    let state = golden_state();

    assert_eq!(img.header().e_ident[14], GOLDEN_VERSION);
    let p = img.process();
    assert_eq!(
        ProcessRecord {
            exe: StrRef::default(),
            cwd: StrRef::default(),
            root: StrRef::default(),
            cmdline: StrRef::default(),
            ..p
        },
        ProcessRecord {
            nthreads: 2,
            ..state.process
        }
    );
    assert_eq!(text(&img, p.exe), state.exe);
    assert_eq!(text(&img, p.cwd), state.cwd);
    assert_eq!(text(&img, p.root), state.root);
    assert_eq!(img.string(p.cmdline).unwrap(), state.cmdline);
    assert_eq!(img.creds(), Some(state.creds));
    assert_eq!(img.mm(), state.mm);
    assert_eq!(img.auxv(), zerocopy::IntoBytes::as_bytes(&state.auxv[..]));
    assert_eq!(all::<RlimitRecord>(&img), state.rlimits);
    assert_eq!(all::<SigactionRecord>(&img), state.sigactions);
    assert_eq!(all::<ItimerRecord>(&img), state.itimers);
    assert_eq!(all::<PendingSignalRecord>(&img), state.pending);
    assert_eq!(img.gadgets(), state.gadgets);
    let warnings: Vec<&[u8]> = img.warnings().collect();
    assert_eq!(warnings, [state.warnings[0].as_bytes()]);

    assert_eq!(img.thread_count(), 2);
    let threads: Vec<_> = img.threads().collect::<Result<_, _>>().unwrap();
    assert_eq!(threads.len(), state.threads.len());
    for (t, want) in threads.iter().zip(&state.threads) {
        assert_eq!(t.record, want.record);
        assert_eq!(t.regs(), want.regs);
        assert_eq!(t.prstatus.pr_pid, want.record.tid);
        assert_eq!(t.prstatus.pr_sighold, want.record.sigmask);
        assert_eq!(t.xsave, want.xsave.as_slice());
        assert_eq!(t.xstate_bv(), 0x7);
        assert_eq!(t.xfeatures(), 0x7);
    }

    let vmas: Vec<VmaRecord> = img.vmas().unwrap().collect();
    assert_eq!(vmas.len(), state.vmas.len());
    for (v, want) in vmas.iter().zip(&state.vmas) {
        assert_eq!(
            VmaRecord {
                path: StrRef::default(),
                ..*v
            },
            want.record
        );
        assert_eq!(text(&img, v.path), want.path);
    }
    let fds: Vec<FdRecord> = img.fds().unwrap().collect();
    assert_eq!(fds.len(), state.fds.len());
    for (f, want) in fds.iter().zip(&state.fds) {
        assert_eq!(
            FdRecord {
                path: StrRef::default(),
                ..*f
            },
            want.record
        );
        assert_eq!(text(&img, f.path), want.path);
    }

    let segments: Vec<_> = img.segments().collect();
    assert_eq!(segments.len(), state.pages.len());
    for (s, run) in segments.iter().zip(&state.pages) {
        assert_eq!((s.vaddr, s.len), (run.start, run.len));
        let contents = img.segment_bytes(s);
        assert!(
            (run.start..).zip(contents).all(|(a, &b)| b == pattern(a)),
            "segment at {:#x} does not hold its pages",
            s.vaddr
        );
    }
    assert_eq!(img.stored_bytes(), 7 * PAGE_SIZE);
    assert_eq!(img.stored_in(0x7f00_0000_0000, 0x7f00_0000_4000), 2);
}

/// The loader's own image rules (what it and the dumper's self-check run
/// before anything else) accept the golden image: a version-1 image is
/// still one the loader would restore, given its files.
#[test]
fn the_loader_rules_accept_the_golden_image() {
    let bytes = read_golden();
    let img = Image::parse(&bytes).unwrap();
    if let Err(err) = binfmt_loader::rules::check_image(&img, 65536) {
        panic!("the loader refuses the golden v1 image: {err}");
    }
}

/// The ELF layout of a version-1 image, which readelf, gdb and binfmt_misc
/// see: the header, one PT_NOTE first, page-aligned PT_LOADs, the notes in
/// the kernel's order and crimg's after them, the checksum last.
#[test]
fn the_golden_image_keeps_the_version_1_elf_layout() {
    let bytes = read_golden();
    let img = Image::parse(&bytes).unwrap();
    let h = img.header();
    assert_eq!(
        &h.e_ident[..],
        b"\x7fELF\x02\x01\x01\x00\x00CRIMG\x01\x00",
        "e_ident (binfmt_misc matches these 16 bytes)"
    );
    assert_eq!(h.e_ident, image_format::IDENT);
    assert_eq!((h.e_type, h.e_machine, h.e_version), (4, 62, 1));
    assert_eq!((h.e_phoff, h.e_ehsize, h.e_phentsize), (64, 64, 56));
    assert_eq!(usize::from(h.e_phnum), 1 + 5);
    assert_eq!((h.e_shoff, h.e_shnum), (0, 0));

    let flags: Vec<(u64, u64, u32)> = img
        .segments()
        .map(|s| (s.vaddr, s.offset, s.flags))
        .collect();
    let first_page = flags[0].1;
    assert!(first_page.is_multiple_of(PAGE_SIZE));
    let (r, w, x) = (elf::PF_R, elf::PF_W, elf::PF_X);
    assert_eq!(
        flags,
        [
            (0x40_2000, first_page, r | w),
            (0x40_5000, first_page + PAGE_SIZE, r | w),
            (0x7f00_0000_0000, first_page + 2 * PAGE_SIZE, r | w),
            (0x7ffd_0000_f000, first_page + 4 * PAGE_SIZE, r | w),
            (0x7ffd_1000_0000, first_page + 5 * PAGE_SIZE, r | x),
        ]
    );
    assert_eq!(bytes.len() as u64, first_page + 7 * PAGE_SIZE);

    let order: Vec<(String, u32)> = img
        .notes()
        .map(|n| {
            let n = n.unwrap();
            (String::from_utf8_lossy(n.owner).into_owned(), n.note_type)
        })
        .collect();
    let core = |t| ("CORE".to_owned(), t);
    let linux = |t| ("LINUX".to_owned(), t);
    let crimg = |t| ("CRIMG".to_owned(), t);
    assert_eq!(
        order,
        [
            core(1),
            core(3),
            core(6),
            core(0x4649_4c45),
            core(2),
            linux(0x202),
            core(1),
            core(2),
            linux(0x202),
            crimg(0x4352_000b),
            crimg(0x4352_0001),
            crimg(0x4352_0002),
            crimg(0x4352_0003),
            crimg(0x4352_0004),
            crimg(0x4352_0005),
            crimg(0x4352_0006),
            crimg(0x4352_0007),
            crimg(0x4352_0008),
            crimg(0x4352_0009),
            crimg(0x4352_000a),
            crimg(0x4352_000c),
            crimg(0x4352_000d),
            crimg(0x4352_000e),
            crimg(0x4352_000f),
        ]
    );
    // Every record note of version 1 says version 1 and its v1 size.
    let sizes = [
        (0x4352_0001, 184),
        (0x4352_0002, 344),
        (0x4352_0003, 88),
        (0x4352_0004, 24),
        (0x4352_0005, 40),
        (0x4352_0006, 40),
        (0x4352_0007, 112),
        (0x4352_0008, 88),
        (0x4352_0009, 80),
        (0x4352_000a, 136),
        (0x4352_000c, 16),
        (0x4352_000d, 8),
        (0x4352_000e, 8),
        (0x4352_000f, 24),
    ];
    for (note_type, size) in sizes {
        let desc = img.crimg_note(note_type).unwrap();
        let version = u16::from_le_bytes([desc[0], desc[1]]);
        let record_size = u16::from_le_bytes([desc[2], desc[3]]);
        assert_eq!((version, record_size), (1, size), "note {note_type:#x}");
    }
}

/// The values an image of version 1 holds, as numbers: changing one of
/// these constants makes every existing image mean something else.
#[test]
fn the_version_1_numbers_do_not_change() {
    assert_eq!(
        (FORMAT_VERSION, image_format::OLDEST_FORMAT_VERSION),
        (1, 1)
    );
    assert_eq!(records::OWNER_CRIMG, b"CRIMG");
    let notes = [
        note::PROCESS,
        note::CREDS,
        note::MM,
        note::RLIMITS,
        note::SIGACTIONS,
        note::ITIMERS,
        note::THREADS,
        note::VMAS,
        note::FDS,
        note::PENDING,
        note::STRTAB,
        note::GADGETS,
        note::WARNINGS,
        note::SEGMENT_CHECKSUMS,
        note::CHECKSUM,
    ];
    assert_eq!(notes, std::array::from_fn(|i| 0x4352_0001 + i as u32));
    // Every known note reads its version-1 records.
    for v in records::KNOWN_NOTES {
        assert!(
            v.accepts(1),
            "note {:#x} no longer reads version 1",
            v.note_type
        );
    }
    assert_eq!(
        [
            vma_kind::ANON,
            vma_kind::FILE,
            vma_kind::HEAP,
            vma_kind::STACK,
            vma_kind::VDSO,
            vma_kind::VVAR,
            vma_kind::VVAR_VCLOCK,
            vma_kind::VSYSCALL,
            vma_kind::SHARED_ANON,
        ],
        [0, 1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(
        [
            fd_kind::REGULAR,
            fd_kind::DIRECTORY,
            fd_kind::PIPE,
            fd_kind::FIFO,
            fd_kind::SOCKET,
            fd_kind::CHAR,
            fd_kind::BLOCK,
            fd_kind::ANON_INODE,
            fd_kind::TTY,
            fd_kind::MEMFD,
        ],
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    );
    assert_eq!((fd_flags::CLOEXEC, fd_flags::DELETED), (1, 2));
    assert_eq!((restart::NONE, restart::RESTART, restart::EINTR), (0, 1, 2));
    assert_eq!((prot::READ, prot::WRITE, prot::EXEC), (1, 2, 4));
    let vma_bits = [
        vma_flags::SHARED,
        vma_flags::GROWSDOWN,
        vma_flags::DONTDUMP,
        vma_flags::DONTFORK,
        vma_flags::HUGEPAGE,
        vma_flags::NOHUGEPAGE,
        vma_flags::LOCKED,
        vma_flags::WIPEONFORK,
        vma_flags::RANDOM,
        vma_flags::SEQUENTIAL,
        vma_flags::FILE_DELETED,
        vma_flags::MAYSHARE,
        vma_flags::NORESERVE,
        vma_flags::ACCOUNT,
        vma_flags::LOCKONFAULT,
        vma_flags::MERGEABLE,
        vma_flags::DROPPABLE,
        vma_flags::MAYWRITE,
    ];
    assert_eq!(vma_bits, std::array::from_fn(|i| 1u32 << i));
    assert_eq!(
        [
            records::PROCESS_DUMPED_AS_ROOT,
            records::PROCESS_THP_DISABLED,
            records::PROCESS_THP_EXCEPT_ADVISED,
            records::PROCESS_KSM_MERGE_ANY,
            records::PROCESS_MDWE_REFUSE_EXEC_GAIN,
            records::PROCESS_MDWE_NO_INHERIT,
            records::PROCESS_COREDUMP_FILTER_KNOWN,
        ],
        std::array::from_fn(|i| 1u32 << i)
    );
    assert_eq!(
        (
            records::PROCESS_COREDUMP_FILTER_SHIFT,
            records::PROCESS_COREDUMP_FILTER_MASK
        ),
        (16, 0x1ff << 16)
    );
    assert_eq!(MAX_GROUPS, 64);
}

/// `crimg info` of the golden image prints what it printed when the image
/// was made (`info.txt`), and `crimg verify` accepts it.
#[test]
fn crimg_info_of_the_golden_image_is_unchanged() {
    let bins = binaries();
    let image = golden_image();
    let expected_path = golden_dir(GOLDEN_VERSION).join("info.txt");
    let expected = fs::read_to_string(&expected_path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", expected_path.display()));
    let mut command = bins.crimg_command(["info"]);
    command.arg(&image);
    let info = cli::run_ok(command, CLI_TIMEOUT).unwrap();
    assert_eq!(
        info.stdout,
        expected,
        "`crimg info {}` differs from {}",
        image.display(),
        expected_path.display()
    );
    let json: serde_json::Value = serde_json::from_str(&bins.info_json(&image).unwrap()).unwrap();
    assert_eq!(json["format_version"], 1);
    assert_eq!(json["pid"], 4242);
    assert_eq!(json["threads"][1]["tid"], 4243);
    assert_eq!(json["vmas"].as_array().unwrap().len(), 7);
    assert_eq!(json["fds"][3]["path"], "/home/golden/data.txt");
    bins.verify(&image).unwrap();
}

/// An image the writer makes today from the golden state reads back as
/// the golden image does: what the v1 reader expects is what is written.
#[test]
fn todays_writer_writes_what_the_golden_image_holds() {
    let scratch = scratch_dir();
    let path = scratch.path().join("today.crimg");
    write_state(&golden_state(), &path);
    let today = fs::read(&path).unwrap();
    let golden = read_golden();
    let (a, b) = (
        Image::parse(&today).unwrap(),
        Image::parse(&golden).unwrap(),
    );
    assert_eq!(a.process(), b.process());
    assert_eq!(a.mm(), b.mm());
    assert_eq!(a.creds(), b.creds());
    assert_eq!(all::<ThreadRecord>(&a), all::<ThreadRecord>(&b));
    assert_eq!(all::<VmaRecord>(&a), all::<VmaRecord>(&b));
    assert_eq!(all::<FdRecord>(&a), all::<FdRecord>(&b));
    let segs =
        |img: &Image| -> Vec<_> { img.segments().map(|s| (s.vaddr, s.len, s.flags)).collect() };
    assert_eq!(segs(&a), segs(&b));
}

fn write_state(state: &TaskState, path: &Path) {
    let file = fs::File::create(path).unwrap();
    write_image(state, &file, &mut PatternMemory).unwrap();
    file.sync_all().unwrap();
}

/// Writes `tests/golden/<dir>/` (the image and its `crimg info`) for
/// `CRIMG_WRITE_GOLDEN=<dir>`, refusing to replace a directory that exists:
/// the golden image of a version is made once. Run only on purpose:
/// `CRIMG_WRITE_GOLDEN=v2 cargo test -p crimg-tests --test golden -- --ignored`.
#[test]
#[ignore]
fn write_golden() {
    let Some(name) = std::env::var_os("CRIMG_WRITE_GOLDEN") else {
        eprintln!("skipped: set CRIMG_WRITE_GOLDEN=<directory> (e.g. v2) to write golden files");
        return;
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(&name);
    assert!(
        !dir.exists(),
        "{} exists: a golden image is made once (see tests/golden/README.md)",
        dir.display()
    );
    fs::create_dir_all(&dir).unwrap();
    let image = dir.join("task.crimg");
    write_state(&golden_state(), &image);
    let mut command = binaries().crimg_command(["info"]);
    command.arg(&image);
    let info = cli::run_ok(command, CLI_TIMEOUT).unwrap();
    fs::write(dir.join("info.txt"), info.stdout).unwrap();
    let len = fs::metadata(&image).unwrap().len();
    eprintln!("wrote {} ({len} bytes) and info.txt", image.display());
}
