//! Stage 1 as a whole, on an image made by the writer, against the fake
//! OS: each test changes one fact and expects one decision.

use std::collections::HashMap;
use std::vec;
use std::vec::Vec;

use image_format::elf::UserRegs;
use image_format::records::{
    fd_flags, fd_kind, prot, vma_kind, CredsRecord, FdRecord, FileId, GadgetsRecord, MmRecord,
    ProcessRecord, ThreadRecord, VmaRecord,
};
use image_writer::model::{FdState, PageRun, TaskState, ThreadState, VmaState};
use image_writer::write::{write_image, PageSource};
use zerocopy::FromZeros;

use super::fake::Fake;
use super::image::MappedImage;
use super::{check_mapped, stable, CheckError, Checked};
use crate::args::LoaderArgs;
use crate::sys::{self, Errno, Stat};
use crate::ExitCode;

const CODE_AT: u64 = 0x5000_0000;
const LIB_AT: u64 = 0x5010_0000;
const DATA_AT: u64 = 0x5020_0000;
const LIB: &str = "/lib/fake.so";
const LOG: &str = "/var/log/fake.log";
/// `syscall; ret` at +0x80, `mov $15, %eax; syscall` at +0x90.
const SYSCALL_RET_AT: u64 = 0x80;
const SIGRETURN_AT: u64 = 0x90;

struct Pages(HashMap<u64, Vec<u8>>);

impl PageSource for Pages {
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.copy_from_slice(&self.0[&addr][..buf.len()]);
        Ok(())
    }
}

fn lib_stat() -> Stat {
    Stat {
        dev: 8,
        ino: 100,
        mode: sys::S_IFREG | 0o755,
        size: 4096,
        mtime_sec: 1_700_000_000,
        ..Default::default()
    }
}

fn log_stat() -> Stat {
    Stat {
        dev: 8,
        ino: 200,
        mode: sys::S_IFREG | 0o644,
        size: 10,
        ..Default::default()
    }
}

fn id(st: &Stat) -> FileId {
    FileId {
        dev: st.dev,
        ino: st.ino,
        size: st.size,
        mtime_sec: st.mtime_sec,
        mtime_nsec: st.mtime_nsec,
    }
}

/// A task of one thread: a stored code page with both gadgets, a library
/// mapping, stdio on pipes and a log file at fd 3.
fn task() -> TaskState {
    let mut xsave = vec![0u8; 832];
    xsave[24..28].copy_from_slice(&0x1f80u32.to_le_bytes());
    xsave[512..520].copy_from_slice(&3u64.to_le_bytes());
    let mut process = ProcessRecord::new_zeroed();
    process.pid = 4242;
    process.nthreads = 1;
    process.page_size = 4096;
    let fd = |fd, kind, path: &str, file| FdState {
        record: FdRecord {
            fd,
            kind,
            file,
            ..Default::default()
        },
        path: path.into(),
    };
    TaskState {
        process,
        exe: "/bin/fake".into(),
        cwd: "/".into(),
        root: "/".into(),
        cmdline: b"fake\0".to_vec(),
        creds: CredsRecord::new_zeroed(),
        mm: MmRecord {
            start_code: CODE_AT,
            end_code: CODE_AT + 4096,
            start_data: DATA_AT,
            end_data: DATA_AT + 4096,
            start_brk: DATA_AT + 3 * 4096,
            brk: DATA_AT + 3 * 4096,
            start_stack: DATA_AT + 2 * 4096,
            arg_start: DATA_AT + 16,
            arg_end: DATA_AT + 21,
            env_start: DATA_AT + 21,
            env_end: DATA_AT + 21,
        },
        auxv: vec![6, 4096, 0, 0],
        rlimits: vec![],
        sigactions: vec![],
        itimers: vec![],
        threads: vec![ThreadState {
            record: ThreadRecord {
                tid: 4242,
                syscall_nr: -1,
                ..Default::default()
            },
            regs: UserRegs {
                rip: CODE_AT,
                rsp: DATA_AT + 2 * 4096,
                cs: 0x33,
                ss: 0x2b,
                ..Default::default()
            },
            xsave,
        }],
        vmas: vec![
            VmaState {
                record: VmaRecord {
                    start: CODE_AT,
                    end: CODE_AT + 4096,
                    prot: prot::READ | prot::EXEC,
                    kind: vma_kind::ANON,
                    ..Default::default()
                },
                path: std::string::String::new(),
            },
            VmaState {
                record: VmaRecord {
                    start: LIB_AT,
                    end: LIB_AT + 4096,
                    prot: prot::READ,
                    kind: vma_kind::FILE,
                    file: id(&lib_stat()),
                    ..Default::default()
                },
                path: LIB.into(),
            },
            VmaState {
                record: VmaRecord {
                    start: DATA_AT,
                    end: DATA_AT + 3 * 4096,
                    prot: prot::READ | prot::WRITE,
                    kind: vma_kind::ANON,
                    ..Default::default()
                },
                path: std::string::String::new(),
            },
        ],
        fds: vec![
            fd(0, fd_kind::PIPE, "pipe:[1]", FileId::default()),
            fd(1, fd_kind::PIPE, "pipe:[2]", FileId::default()),
            fd(2, fd_kind::PIPE, "pipe:[3]", FileId::default()),
            fd(3, fd_kind::REGULAR, LOG, id(&log_stat())),
        ],
        objects: Default::default(),
        pending: vec![],
        gadgets: GadgetsRecord {
            syscall_ret: CODE_AT + SYSCALL_RET_AT,
            rt_sigreturn: CODE_AT + SIGRETURN_AT,
        },
        warnings: vec![],
        pages: vec![PageRun {
            start: CODE_AT,
            len: 4096,
        }],
    }
}

fn code_page() -> Vec<u8> {
    let mut page = vec![0xf4u8; 4096];
    page[0x80..0x83].copy_from_slice(&[0x0f, 0x05, 0xc3]);
    page[0x90..0x97].copy_from_slice(&[0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]);
    page
}

/// The image of `state` (code page `code`), as `'static` bytes.
fn image_bytes(state: &TaskState, code: Vec<u8>) -> &'static [u8] {
    let file = tempfile_in_tmp();
    let mut pages = Pages(HashMap::from([(CODE_AT, code)]));
    write_image(state, &file, &mut pages).unwrap();
    let bytes = std::fs::read(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        file.as_raw_fd()
    }))
    .unwrap();
    bytes.leak()
}

fn tempfile_in_tmp() -> std::fs::File {
    let path = std::env::temp_dir().join(format!(
        "crimg-stage1-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    file
}

/// The fake machine the task's files exist on, unchanged.
fn machine() -> Fake {
    let mut os = Fake::new();
    os.add(LIB, lib_stat(), vec![0u8; 4096]);
    os.add(LOG, log_stat(), b"0123456789".to_vec());
    os.add(
        "/bin/fake",
        Stat {
            mode: sys::S_IFREG | 0o755,
            ..Default::default()
        },
        vec![],
    );
    os.add(
        "/etc/passwd",
        Stat::default(),
        b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n".to_vec(),
    );
    os.add(
        "/etc/group",
        Stat::default(),
        b"root:x:0:\nwheel:x:27:user\n".to_vec(),
    );
    os
}

/// Stage 1 of `state` (owned by `owner`) on `os`.
/// [`machine`] as root with every capability.
fn root_machine() -> Fake {
    let mut os = machine();
    os.uids = [0; 3];
    os.gids = [0; 3];
    os.caps = (1 << 41) - 1;
    os
}

/// [`task`] whose image says it runs as root.
fn root_task() -> TaskState {
    let mut state = task();
    state.creds.uid = [0; 4];
    state.creds.gid = [0; 4];
    state
}

fn run(
    os: &Fake,
    state: &TaskState,
    code: Vec<u8>,
    owner: (u32, u32),
) -> Result<Checked, CheckError> {
    run_with(os, state, code, owner, &LoaderArgs::default())
}

/// [`run`] with the loader's options `args`.
fn run_with(
    os: &Fake,
    state: &TaskState,
    code: Vec<u8>,
    owner: (u32, u32),
    args: &LoaderArgs,
) -> Result<Checked, CheckError> {
    let bytes = image_bytes(state, code);
    check_mapped(
        os,
        MappedImage {
            name: b"test.crimg",
            fd: 50,
            owner,
            bytes,
            hold: stable::Hold::Lease,
        },
        args,
    )
}

fn exit_of(r: Result<Checked, CheckError>) -> ExitCode {
    match r {
        Ok(_) => panic!("stage 1 accepted the image"),
        Err(e) => e.exit_code(),
    }
}

#[test]
fn a_sound_image_gives_the_planner_its_input() {
    let os = machine();
    let c = run(&os, &task(), code_page(), (1000, 1000)).unwrap();
    let input = &c.input;
    // Every stored page is loaded; the library is mapped from its own fd.
    assert_eq!(input.loads.len(), 1);
    assert_eq!(input.loads[0].vaddr, CODE_AT);
    assert_eq!(input.vmas.len(), 3);
    let lib_fd = input.vmas[1].fd;
    assert_eq!(os.path_of(lib_fd).as_deref(), Some(LIB));
    assert!(input.vmas[0].fd < 0);
    // Everything the loader holds is above the task's fds.
    assert!(lib_fd > 3 && input.image_fd > 3);
    // Stdio is inherited, the log reopened and moved to 3.
    assert_eq!(input.keep_fds, &[0, 1, 2]);
    assert_eq!(input.fd_moves.len(), 1);
    assert_eq!(input.fd_moves[0].to, 3);
    assert_eq!(os.path_of(input.fd_moves[0].from).as_deref(), Some(LOG));
    // The gadgets are the recorded code; unprivileged: no exe, no tids.
    assert!(input.gadgets.is_some());
    assert_eq!(input.exe_fd, None);
    assert!(!input.set_tids);
    assert!(os.warned("not privileged"));
    assert_eq!(input.creds, None);
    assert_eq!(input.pid, 777);
    assert_eq!(input.xfeatures, 0x7);
    assert_eq!(input.loader_stack.map(|s| s.start), Some(0x7ffd_0000_0000));
    assert!(c.range_scratch.len() >= input.vmas.len() + input.loader_maps.len() + 4);
}

#[test]
fn a_mapped_file_that_changed_is_refused() {
    let mut os = machine();
    let mut st = lib_stat();
    st.mtime_sec += 1;
    os.add(LIB, st, vec![0u8; 4096]);
    match run(&os, &task(), code_page(), (1000, 1000)) {
        Err(CheckError::FileChanged { what, path }) => {
            assert_eq!((what, path), ("mapped file", LIB.as_bytes()));
        }
        other => panic!("{:?}", other.err()),
    }
}

#[test]
fn a_mapped_file_that_is_now_a_fifo_says_so() {
    let mut os = machine();
    let mut st = lib_stat();
    st.mode = sys::S_IFIFO | 0o644;
    os.add(LIB, st, vec![]);
    assert!(matches!(
        run(&os, &task(), code_page(), (1000, 1000)),
        Err(CheckError::FileType {
            now: sys::S_IFIFO,
            ..
        })
    ));
}

#[test]
fn a_missing_log_file_is_refused_and_one_that_grew_is_not() {
    let mut os = machine();
    os.files.remove(LOG.as_bytes());
    assert_eq!(
        exit_of(run(&os, &task(), code_page(), (1000, 1000))),
        ExitCode::FileChanged
    );
    // Open files may grow: only device and inode are compared.
    let mut os = machine();
    let mut st = log_stat();
    st.size = 99;
    st.mtime_sec = 5;
    os.add(LOG, st, vec![]);
    assert!(run(&os, &task(), code_page(), (1000, 1000)).is_ok());
}

#[test]
fn an_fd_the_loader_cannot_reopen_is_refused() {
    let os = machine();
    let mut state = task();
    state.fds[3].record.kind = fd_kind::ANON_INODE;
    state.fds[3].path = "anon_inode:[eventfd]".into();
    // Refused by the rules already (exit 7), before any file is opened.
    assert_eq!(
        exit_of(run(&os, &state, code_page(), (1000, 1000))),
        ExitCode::Unsupported
    );
}

#[test]
fn an_fd_number_above_the_hard_limit_is_refused() {
    let mut os = machine();
    os.nofile = (3, 3);
    assert!(matches!(
        run(&os, &task(), code_page(), (1000, 1000)),
        Err(CheckError::FdAboveLimit { fd: 3, limit: 3 })
    ));
}

#[test]
fn a_cwd_this_process_cannot_enter_is_refused() {
    let mut os = machine();
    os.files.get_mut(&b"/"[..]).unwrap().no_entry = Some(Errno(13));
    assert!(matches!(
        run(&os, &task(), code_page(), (1000, 1000)),
        Err(CheckError::CwdDenied {
            errno: Errno(13),
            ..
        })
    ));
}

#[test]
fn gadgets_that_are_not_that_code_are_not_used() {
    let os = machine();
    let mut code = code_page();
    code[0x81] = 0x90;
    let c = run(&os, &task(), code, (1000, 1000)).unwrap();
    assert!(c.input.gadgets.is_none());
    assert!(os.warned("syscall; ret gadget"));
    assert!(os.warned("bootstrap window stays mapped"));
}

#[test]
fn saved_features_this_cpu_lacks_are_refused() {
    let mut os = machine();
    let mut state = task();
    state.threads[0].xsave[512..520].copy_from_slice(&7u64.to_le_bytes());
    os.xcr0 = 0x3;
    assert!(matches!(
        run(&os, &state, code_page(), (1000, 1000)),
        Err(CheckError::CpuLacks { missing: 4 })
    ));
}

#[test]
fn root_may_restore_the_exe_and_the_owners_credentials_only() {
    let os = root_machine();
    // The image says root; the file belongs to uid 1000.
    let state = root_task();
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let creds = c.input.creds.expect("credentials switched");
    assert_eq!(creds.uid[0], 1000);
    assert_eq!(creds.gid[0], 1000);
    assert!(os.warned("belongs to uid 1000"));
    assert!(c.input.exe_fd.is_some());
    // Owned by root, the image's own credentials stand.
    let os2 = root_machine();
    let c = run(&os2, &state, code_page(), (0, 0)).unwrap();
    assert_eq!(c.input.creds, None, "root to root: nothing to change");
}

#[test]
fn a_caller_whose_capabilities_would_stay_is_refused() {
    let mut os = machine();
    // Not root, but with capabilities it cannot drop by a uid switch.
    os.caps = 1 << 21;
    os.files.get_mut(&b"/proc/self/status"[..]).unwrap().contents =
        b"Groups:\t\nCapInh:\t0\nCapPrm:\t0000000000200000\nCapEff:\t0000000000200000\nCapBnd:\t0\nCapAmb:\t0\n"
            .to_vec();
    let mut state = task();
    state.creds.uid = [0; 4];
    assert!(matches!(
        run(&os, &state, code_page(), (1000, 1000)),
        Err(CheckError::CapsKept { .. })
    ));
}

#[test]
fn an_image_on_a_nosuid_mount_counts_as_owned_by_nobody() {
    let mut os = root_machine();
    os.mount_flags = 2; // ST_NOSUID
    let state = root_task();
    // Owned by root, but on a nosuid mount: nobody's credentials.
    let c = run(&os, &state, code_page(), (0, 0)).unwrap();
    let creds = c.input.creds.expect("credentials switched");
    assert_eq!((creds.uid[0], creds.gid[0]), (65534, 65534));
    assert!(os.warned("nosuid mount"));
    // Stage 1 gave this process its own file-access ids back.
    assert_eq!(*os.fs_ids.borrow(), Some((0, 0)));
}

#[test]
fn the_files_group_counts_only_when_its_owner_belongs_to_it() {
    let os = root_machine();
    let state = root_task();
    // Group root (a setgid directory's, say): the owner's primary instead.
    let c = run(&os, &state, code_page(), (1000, 0)).unwrap();
    assert_eq!(c.input.creds.unwrap().gid, [1000; 4]);
    assert!(os.warned("group 0 is not one of uid 1000's groups"));
    // A group /etc/group lists the owner in: granted.
    let c = run(&os, &state, code_page(), (1000, 27)).unwrap();
    assert_eq!(c.input.creds.unwrap().gid, [27; 4]);
    // An owner without an entry: nogroup, not the file's group.
    let c = run(&os, &state, code_page(), (2000, 27)).unwrap();
    assert_eq!(c.input.creds.unwrap().gid, [65534; 4]);
}

/// `task()` with a memfd (two shared views, 2 pages) sealed against
/// growing and a write-sealed memfd (one read-only view, its content
/// saved whole) and a deleted file mapped privately (content saved).
fn task_with_objects() -> TaskState {
    use image_format::records::{seals, shmem_flags, shmem_kind, vma_flags, ShmemRecord};
    use image_writer::model::ShmemState;
    const SHM_AT: u64 = 0x5030_0000;
    let mut state = task();
    let area = |start: u64, pages: u64, prot, kind, object, path: &str| VmaState {
        record: VmaRecord {
            start,
            end: start + pages * 4096,
            prot,
            kind,
            flags: if kind == vma_kind::SHARED_ANON {
                vma_flags::SHARED | vma_flags::MAYSHARE
            } else {
                vma_flags::FILE_DELETED
            },
            object,
            ..Default::default()
        },
        path: path.into(),
    };
    let rw = prot::READ | prot::WRITE;
    state.vmas.extend([
        area(SHM_AT, 2, rw, vma_kind::SHARED_ANON, 1, "/memfd:ring"),
        area(
            SHM_AT + 0x10000,
            2,
            rw,
            vma_kind::SHARED_ANON,
            1,
            "/memfd:ring",
        ),
        area(
            SHM_AT + 0x20000,
            1,
            prot::READ,
            vma_kind::SHARED_ANON,
            2,
            "/memfd:sealed",
        ),
        area(
            SHM_AT + 0x30000,
            1,
            prot::READ,
            vma_kind::FILE,
            3,
            "/tmp/gone",
        ),
    ]);
    let object = |kind, seals, size, name: &str, content: &[u8]| ShmemState {
        record: ShmemRecord {
            kind,
            seals,
            size,
            mode: sys::S_IFREG | 0o640,
            flags: if content.is_empty() {
                0
            } else {
                shmem_flags::WHOLE_CONTENT
            },
            ..Default::default()
        },
        name: name.as_bytes().to_vec(),
        content: content.to_vec(),
    };
    state.objects.shmem = vec![
        object(
            shmem_kind::MEMFD,
            seals::GROW | seals::SHRINK,
            8192,
            "ring",
            b"",
        ),
        object(
            shmem_kind::MEMFD,
            seals::WRITE | seals::SEAL,
            4096,
            "sealed",
            b"sealed",
        ),
        object(shmem_kind::GHOST, 0, 4096, "/tmp/gone", b"ghost"),
    ];
    state
}

#[test]
fn shared_memory_objects_are_made_once_and_mapped_by_every_area() {
    let mut os = machine();
    os.add(
        "/tmp",
        Stat {
            mode: sys::S_IFDIR | 0o1777,
            ..Default::default()
        },
        vec![],
    );
    let c = run(&os, &task_with_objects(), code_page(), (1000, 1000)).unwrap();
    let v = c.input.vmas;
    // Both views of the memfd are mapped from one fd.
    assert_eq!(v[3].fd, v[4].fd);
    let ring = os.made_at(v[3].fd).unwrap();
    assert_eq!(ring.how, "memfd:ring");
    assert_eq!(ring.size, 8192);
    assert_eq!(ring.seals, 0x2 | 0x4);
    // The write-sealed one holds its content, then its seals.
    let sealed = os.made_at(v[5].fd).unwrap();
    assert_eq!(
        (&sealed.contents[..6], sealed.seals),
        (&b"sealed"[..], 0x8 | 0x1)
    );
    // The deleted file: an O_TMPFILE in its directory, linked at its name
    // and unlinked again (the fake keeps the name in `how`).
    let ghost_fd = v[6].fd;
    let ghost = os.made_at(ghost_fd).unwrap();
    assert_eq!(ghost.how, "tmpfile:/tmp");
    assert_eq!(ghost.linked, ["/tmp/gone"]);
    assert_eq!(&ghost.contents[..5], b"ghost");
    assert_eq!(ghost.mode, 0o640);
}

#[test]
fn a_deleted_file_whose_directory_has_no_o_tmpfile_becomes_a_memfd() {
    let mut os = machine();
    os.tmpfile_error = Some(Errno(95));
    let c = run(&os, &task_with_objects(), code_page(), (1000, 1000)).unwrap();
    let ghost = os.made_at(c.input.vmas[6].fd).unwrap();
    assert_eq!(ghost.how, "memfd:gone");
    assert!(os.warned("is restored as a memfd"));
}

#[test]
fn a_write_sealed_memfd_mapped_writable_is_refused() {
    let os = machine();
    let mut state = task_with_objects();
    state.vmas[5].record.prot |= prot::WRITE;
    assert!(matches!(
        run(&os, &state, code_page(), (1000, 1000)),
        Err(CheckError::SealedObjectArea { .. })
    ));
}

#[test]
fn a_dropped_fd_becomes_dev_null_with_its_access_mode_and_one_warning() {
    let mut os = machine();
    os.add(
        "/dev/null",
        Stat {
            mode: sys::S_IFCHR | 0o666,
            ..Default::default()
        },
        vec![],
    );
    let mut state = task();
    // A socket that a forced dump did not save, close-on-exec, O_RDWR.
    state.fds[3].record.kind = fd_kind::SOCKET;
    state.fds[3].record.flags = fd_flags::DROPPED | fd_flags::CLOEXEC;
    state.fds[3].record.open_flags = sys::O_RDWR;
    state.fds[3].path = "socket:[77]".into();
    let checked = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let moves = checked.input.fd_moves;
    assert_eq!(moves.len(), 1);
    assert_eq!((moves[0].to, moves[0].cloexec), (3, 1));
    assert_eq!(os.path_of(moves[0].from).as_deref(), Some("/dev/null"));
    assert!(os.warned("1 fd not saved (crdump --force) replaced by /dev/null: 3 (socket:[77])"));

    // Without the flag the same socket is refused (exit 7).
    state.fds[3].record.flags = 0;
    assert_eq!(
        exit_of(run(&os, &state, code_page(), (1000, 1000))),
        ExitCode::Unsupported
    );
}

#[test]
fn posix_timers_need_restore_ids_and_each_of_their_clocks() {
    use crate::posix_timers::PosixTimerError;
    use image_format::records::{sigev_notify, PosixTimerRecord};
    let timer = |id, clock| PosixTimerRecord {
        id,
        clock,
        signo: 10,
        ..Default::default()
    };
    // Without timers nothing is probed.
    let os = machine();
    let c = run(&os, &task(), code_page(), (1000, 1000)).unwrap();
    assert!(c.input.posix_timers.is_empty());
    assert!(os.timer_clocks_probed.borrow().is_empty());

    let mut state = task();
    state.objects.posix_timers = vec![timer(3, 1), timer(8, 7), timer(9, 1)];
    let os = machine();
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let ids: Vec<i32> = c.input.posix_timers.iter().map(|t| t.id).collect();
    assert_eq!(ids, [3, 8, 9]);
    // Each clock once.
    assert_eq!(*os.timer_clocks_probed.borrow(), [1, 7]);

    // A kernel without PR_TIMER_CREATE_RESTORE_IDS.
    let mut os = machine();
    os.timer_restore_ids = Err(Errno::EINVAL);
    match run(&os, &state, code_page(), (1000, 1000)) {
        Err(e @ CheckError::PosixTimer { error }) => {
            assert_eq!(
                error,
                PosixTimerError::NoRestoreIds {
                    count: 3,
                    errno: Errno::EINVAL
                }
            );
            assert_eq!(e.exit_code(), ExitCode::Unsupported);
        }
        other => panic!("{:?}", other.err()),
    }
    // A clock this process may not use: named by timer and clock.
    let mut os = machine();
    os.timer_clocks_refused = vec![(7, Errno::EPERM)];
    match run(&os, &state, code_page(), (1000, 1000)) {
        Err(CheckError::PosixTimer { error }) => assert_eq!(
            error,
            PosixTimerError::ClockRefused {
                id: 8,
                clock: 7,
                errno: Errno::EPERM
            }
        ),
        other => panic!("{:?}", other.err()),
    }
    // A signal to a thread the image lacks: the image's rules refuse it.
    let mut state = task();
    state.objects.posix_timers = vec![PosixTimerRecord {
        notify: sigev_notify::SIGNAL | sigev_notify::THREAD_ID,
        tid: 31337,
        ..timer(4, 1)
    }];
    let r = run(&machine(), &state, code_page(), (1000, 1000));
    assert!(
        matches!(r, Err(CheckError::Rule { .. })),
        "{:?}",
        r.as_ref().err()
    );
    assert_eq!(exit_of(r), ExitCode::ImageCorrupt);
}

/// `state` with a pipe (read end fd 4, write end fd 5 and its dup fd 6)
/// holding `data`, and an eventfd at fd 7 with count 9.
fn with_pipe_and_eventfd(mut state: TaskState, size: u32, data: &[u8]) -> TaskState {
    use image_format::records::{EventfdRecord, PipeRecord};
    use image_writer::model::PipeState;
    let fd = |fd, kind, open_flags, desc, path: &str| FdState {
        record: FdRecord {
            fd,
            kind,
            open_flags,
            desc,
            object: 1,
            ..Default::default()
        },
        path: path.into(),
    };
    state.fds.push(fd(4, fd_kind::PIPE, 0, 10, "pipe:[7]"));
    state.fds.push(fd(5, fd_kind::PIPE, 0o4001, 11, "pipe:[7]"));
    state.fds.push(fd(6, fd_kind::PIPE, 0o4001, 11, "pipe:[7]"));
    state
        .fds
        .push(fd(7, fd_kind::EVENTFD, 2, 12, "anon_inode:[eventfd]"));
    state.objects.pipes.push(PipeState {
        record: PipeRecord {
            ino: 7,
            size,
            ..Default::default()
        },
        data: data.to_vec(),
    });
    state.objects.eventfds.push(EventfdRecord {
        count: 9,
        ..Default::default()
    });
    state
}

#[test]
fn a_pipe_is_made_once_filled_and_its_dup_shares_its_end() {
    let os = machine();
    let state = with_pipe_and_eventfd(task(), 65536, b"buffered");
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let pipes = os.pipes.borrow();
    assert_eq!(pipes.len(), 1, "one pipe for three fds");
    let (r, w, size) = pipes[0];
    assert_eq!(size, 65536);
    let written = os.written.borrow();
    assert!(written.contains(&(w, b"buffered".to_vec())), "{written:?}");
    // The eventfd's count is written as one 8-byte add.
    assert!(
        written.iter().any(|(_, b)| b == &9u64.to_ne_bytes()),
        "{written:?}"
    );
    let from = |to| c.input.fd_moves.iter().find(|m| m.to == to).map(|m| m.from);
    assert_eq!(from(4), Some(r));
    assert_eq!(from(5), Some(w));
    assert_eq!(from(6), Some(w), "a dup is a copy of the same description");
}

#[test]
fn a_pipe_bigger_than_crimg_restores_is_refused_by_the_rules() {
    let os = machine();
    let state = with_pipe_and_eventfd(task(), (1 << 20) + 4096, b"");
    assert_eq!(
        exit_of(run(&os, &state, code_page(), (1000, 1000))),
        ExitCode::Unsupported
    );
    assert!(
        os.pipes.borrow().is_empty(),
        "refused before anything is made"
    );
}

#[test]
fn pipe_bytes_beyond_its_size_and_an_eventfd_of_two_descriptions_are_corrupt() {
    let os = machine();
    let state = with_pipe_and_eventfd(task(), 4096, &[7u8; 5000]);
    assert_eq!(
        exit_of(run(&os, &state, code_page(), (1000, 1000))),
        ExitCode::ImageCorrupt
    );
    let mut state = with_pipe_and_eventfd(task(), 4096, b"");
    let mut again = state.fds[7].clone();
    again.record.fd = 8;
    again.record.desc = 13;
    state.fds.push(again);
    assert_eq!(
        exit_of(run(&os, &state, code_page(), (1000, 1000))),
        ExitCode::ImageCorrupt
    );
}
/// Sockets (`crate::objects::socket`): a unix stream pair at fds 4 and 5
/// with a queue each way, a unix listener on a path at fd 6 and a TCP
/// listener at fd 7.
fn socket_task(unix_path: &str) -> TaskState {
    use image_format::records::{socket_flags, socket_mode, SockOpt, SocketRecord};
    use image_writer::model::SocketState;
    let mut state = task();
    for (fd, object, desc) in [(4, 1, 10), (5, 2, 11), (6, 3, 12), (7, 4, 13)] {
        state.fds.push(FdState {
            record: FdRecord {
                fd,
                kind: fd_kind::SOCKET,
                object,
                desc,
                open_flags: sys::O_RDWR,
                ..Default::default()
            },
            path: std::format!("socket:[{fd}]"),
        });
    }
    let opt = |level: u32, name: u32, v: i32| {
        let mut o = SockOpt {
            level,
            name,
            len: 4,
            ..Default::default()
        };
        o.value[..4].copy_from_slice(&v.to_ne_bytes());
        o
    };
    let end = |peer, queue: &[u8]| SocketState {
        record: SocketRecord {
            family: 1,
            sock_type: 1,
            mode: socket_mode::UNIX_PAIR,
            peer,
            ..Default::default()
        },
        queue: queue.to_vec(),
        // The task peeked 3 bytes at this end.
        options: if peer == 2 {
            vec![opt(1, 42, 3)]
        } else {
            vec![]
        },
        ..Default::default()
    };
    let mut unix_addr = vec![1u8, 0];
    unix_addr.extend_from_slice(unix_path.as_bytes());
    unix_addr.push(0);
    let mut tcp_addr = vec![2u8, 0, 0x1f, 0x90, 127, 0, 0, 1];
    tcp_addr.extend([0; 8]);
    state.objects.sockets = vec![
        end(2, b"to four"),
        end(1, b"to five"),
        SocketState {
            record: SocketRecord {
                family: 1,
                sock_type: 1,
                mode: socket_mode::LISTEN,
                flags: socket_flags::BOUND,
                backlog: 5,
                file_mode: 0o710,
                ..Default::default()
            },
            addr: unix_addr,
            ..Default::default()
        },
        SocketState {
            record: SocketRecord {
                family: 2,
                sock_type: 1,
                protocol: 6,
                mode: socket_mode::LISTEN,
                flags: socket_flags::BOUND,
                backlog: 7,
                ..Default::default()
            },
            addr: tcp_addr,
            // SO_RCVBUF as getsockopt showed it (twice what was set).
            options: vec![opt(1, 8, 200_000)],
            ..Default::default()
        },
    ];
    state
}

fn socket_stat(mode: u32) -> Stat {
    Stat {
        mode,
        ..Default::default()
    }
}

#[test]
fn sockets_are_made_filled_and_bound_in_order() {
    let state = socket_task("/run/s.sock");
    let os = machine();
    run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let calls = os.socket_calls.borrow().clone();
    let at = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in {calls:#?}"))
    };
    // The pair: each end's queue sent from the other, then the task's peek
    // offset on the end that had one.
    let pair = &calls[at("socketpair 1")];
    let ends: Vec<&str> = pair.rsplit(' ').take(2).collect();
    let (a, b) = (ends[1], ends[0]);
    let sent_to_four = at(&std::format!("send {b} [116, 111, 32, 102, 111, 117, 114]"));
    let sent_to_five = at(&std::format!("send {a} [116, 111, 32, 102, 105, 118, 101]"));
    let peek = at(&std::format!("setsockopt {a} 1 42 [3, 0, 0, 0]"));
    assert!(sent_to_four < peek && sent_to_five < peek, "{calls:#?}");
    // No socket file there: bound at once (with the umask that gives its
    // file the mode it had), then listening.
    assert!(!calls.iter().any(|c| c.starts_with("unlink")));
    assert!(at("bind") < at("listen") && calls.iter().any(|c| c.ends_with(" 5")));
    assert!(
        at("umask 67") < at("bind") && at("bind") < at("umask 22"),
        "{calls:#?}"
    );

    // A socket whose file had been removed: bound, then removed again.
    let mut state = socket_task("/run/s.sock");
    state.objects.sockets[2].record.flags |= image_format::records::socket_flags::UNLINKED;
    let os = machine();
    run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let calls = os.socket_calls.borrow().clone();
    let bind = calls.iter().position(|c| c.starts_with("bind")).unwrap();
    let unlink = calls
        .iter()
        .position(|c| c == "unlink /run/s.sock")
        .unwrap();
    assert!(bind < unlink, "{calls:#?}");
    // TCP: SO_RCVBUF halved; SO_REUSEADDR on for the bind, back to 0 after
    // listen.
    let tcp = calls
        .iter()
        .rposition(|c| c.starts_with("socket 2 1 6"))
        .unwrap();
    let rcvbuf = calls[tcp..]
        .iter()
        .position(|c| {
            c.contains(" 1 8 ") && c.ends_with(&std::format!("{:?}", 100_000i32.to_ne_bytes()))
        })
        .unwrap_or_else(|| panic!("{calls:#?}"));
    let after = &calls[tcp + rcvbuf..];
    let reuse_on = after
        .iter()
        .position(|c| c.ends_with(" 1 2 [1, 0, 0, 0]"))
        .unwrap();
    let bind = after.iter().position(|c| c.starts_with("bind")).unwrap();
    let listen = after.iter().position(|c| c.ends_with(" 7")).unwrap();
    let reuse_off = after
        .iter()
        .position(|c| c.ends_with(" 1 2 [0, 0, 0, 0]"))
        .unwrap();
    assert!(
        reuse_on < bind && bind < listen && listen < reuse_off,
        "{calls:#?}"
    );
}

#[test]
fn a_stale_unix_socket_file_is_removed_and_anything_else_refused() {
    let state = socket_task("/run/s.sock");
    // A socket file nobody listens on (connect refused): removed first.
    let mut os = machine();
    os.add("/run/s.sock", socket_stat(sys::S_IFSOCK | 0o755), vec![]);
    run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let calls = os.socket_calls.borrow().clone();
    let unlink = calls
        .iter()
        .position(|c| c == "unlink /run/s.sock")
        .unwrap();
    let bind = calls
        .iter()
        .position(|c| c.starts_with("bind") && c.contains("/run/s.sock"))
        .unwrap();
    assert!(unlink < bind, "{calls:#?}");

    // One that answers: the address is in use, nothing removed.
    let mut os = machine();
    os.add("/run/s.sock", socket_stat(sys::S_IFSOCK | 0o755), vec![]);
    os.connect_result = Ok(());
    match run(&os, &state, code_page(), (1000, 1000)) {
        Err(e @ CheckError::SocketAddress { fd: 6, .. }) => {
            let line = std::format!("{e}");
            assert!(
                line.contains("/run/s.sock") && line.contains("EADDRINUSE"),
                "{line}"
            );
            assert_eq!(e.exit_code(), ExitCode::Environment);
        }
        other => panic!("{:?}", other.err()),
    }
    assert!(!os
        .socket_calls
        .borrow()
        .iter()
        .any(|c| c.starts_with("unlink")));

    // A symlink (never followed) or a file: left alone, refused.
    for mode in [sys::S_IFLNK | 0o777, sys::S_IFREG | 0o644] {
        let mut os = machine();
        os.add("/run/s.sock", socket_stat(mode), vec![]);
        match run(&os, &state, code_page(), (1000, 1000)) {
            Err(e @ CheckError::SocketPath { fd: 6, .. }) => {
                assert!(std::format!("{e}").contains("not a socket"));
                assert_eq!(e.exit_code(), ExitCode::FileChanged);
            }
            other => panic!("{:?}", other.err()),
        }
        assert!(!os
            .socket_calls
            .borrow()
            .iter()
            .any(|c| c.starts_with("unlink")));
    }
}

#[test]
fn a_taken_port_is_named_in_stage_1() {
    let state = socket_task("/run/s.sock");
    let mut os = machine();
    os.bind_result = Err(Errno(98));
    // The unix listener binds first (fd 6) and is refused the same way.
    match run(&os, &state, code_page(), (1000, 1000)) {
        Err(e @ CheckError::SocketAddress { .. }) => {
            assert!(std::format!("{e}").contains("in use (EADDRINUSE"));
        }
        other => panic!("{:?}", other.err()),
    }
    let mut state = state;
    state.fds.retain(|f| f.record.fd != 6);
    match run(&os, &state, code_page(), (1000, 1000)) {
        Err(e @ CheckError::SocketAddress { fd: 7, .. }) => {
            let line = std::format!("{e}");
            assert!(
                line.starts_with("fd 7: cannot bind 127.0.0.1:8080: the address is in use"),
                "{line}"
            );
        }
        other => panic!("{:?}", other.err()),
    }
}

/// A task in a terminal: stdio on one description of `/dev/pts/1` (its
/// record holds the modes) and fd 4 opened on it again.
fn terminal_task() -> TaskState {
    use image_format::records::{terminal_flags, terminal_resume, TerminalRecord, Winsize};
    let mut state = task();
    for (i, f) in state.fds.iter_mut().enumerate().take(3) {
        f.record.kind = fd_kind::TTY;
        f.record.desc = 1;
        f.record.object = 1;
        f.path = "/dev/pts/1".into();
        assert_eq!(f.record.fd, i32::try_from(i).unwrap());
    }
    state.fds[3].record.desc = 2;
    let mut again = state.fds[0].clone();
    again.record.fd = 4;
    again.record.desc = 3;
    again.record.object = 2;
    state.fds.push(again);
    let mut modes = TerminalRecord {
        fd: 0,
        resume: terminal_resume::STDIO,
        stdio_fd: -1,
        flags: terminal_flags::MODES | terminal_flags::WINSIZE,
        rdev: 34817,
        winsize: Winsize {
            rows: 30,
            cols: 100,
            ..Winsize::default()
        },
        ..TerminalRecord::default()
    };
    modes.termios.lflag = 0o5061;
    state.objects.terminals = vec![
        modes,
        TerminalRecord {
            fd: 4,
            resume: terminal_resume::DUP_STDIO,
            stdio_fd: 0,
            rdev: 34817,
            ..TerminalRecord::default()
        },
    ];
    state
}

#[test]
fn an_fd_on_the_stdio_terminal_is_a_dup_of_the_callers_and_gets_the_modes_and_a_sigwinch() {
    use image_format::records::Winsize;
    let mut os = machine();
    let size = Winsize {
        rows: 50,
        cols: 200,
        ..Winsize::default()
    };
    os.give_terminal(0, size);
    let c = run(&os, &terminal_task(), code_page(), (1000, 1000)).unwrap();
    let input = &c.input;
    assert_eq!(input.keep_fds, &[0, 1, 2]);
    let to4 = input.fd_moves.iter().find(|m| m.to == 4).unwrap();
    assert_eq!(os.path_of(to4.from).as_deref(), Some("/dev/pts/0"));
    // The modes go on fd 0; the terminal has a size: it keeps it.
    assert_eq!(input.terminals.len(), 1);
    assert_eq!(input.terminals[0].fd, 0);
    assert_eq!(input.terminals[0].termios.lflag, 0o5061);
    assert_eq!(input.terminals[0].set_winsize, 0);
    // One SIGWINCH (28), as the kernel sends it (SI_KERNEL).
    assert_eq!(input.pending.len(), 1);
    assert_eq!(input.pending[0].siginfo[0], 28);
    assert_eq!(input.pending[0].siginfo[8], 0x80);
}

#[test]
fn a_terminal_without_a_size_gets_the_saved_one() {
    let mut os = machine();
    os.give_terminal(0, image_format::records::Winsize::default());
    let c = run(&os, &terminal_task(), code_page(), (1000, 1000)).unwrap();
    assert_eq!(c.input.terminals[0].set_winsize, 1);
    assert_eq!(c.input.terminals[0].winsize.cols, 100);
}

#[test]
fn an_fd_on_the_stdio_terminal_is_refused_when_the_callers_stdio_is_no_terminal() {
    let os = machine();
    let err = run(&os, &terminal_task(), code_page(), (1000, 1000))
        .err()
        .expect("stage 1 accepted fd 4 without a terminal at fd 0");
    assert!(
        matches!(err, CheckError::NotOnTerminal { fd: 4, stdio_fd: 0 }),
        "{err}"
    );
    assert_eq!(err.exit_code(), ExitCode::Environment);
    let line = std::format!("{err}");
    assert!(
        line.starts_with(
            "fd 4 was on the terminal of fd 0, and this caller's fd 0 is not a terminal"
        ),
        "{line}"
    );
}

#[test]
fn stdio_given_as_pipes_gets_no_modes_and_no_sigwinch() {
    let os = machine();
    let mut state = terminal_task();
    state.fds.pop();
    state.objects.terminals.pop();
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    assert!(c.input.terminals.is_empty());
    assert!(c.input.pending.is_empty());
}

#[test]
fn a_copy_of_a_stdio_terminal_fd_is_refused_when_the_callers_is_no_terminal() {
    // bash's fd 255: the same open file as its fd 0.
    let mut state = terminal_task();
    state.fds[4].record.desc = 1;
    state.fds[4].record.object = 1;
    state.objects.terminals.pop();
    // The caller's fd 0 is a pipe.
    let mut os = machine();
    os.give(0, "pipe:[9]", sys::S_IFIFO | 0o600);
    let err = run(&os, &state, code_page(), (1000, 1000))
        .err()
        .expect("stage 1 accepted fd 4 without a terminal at fd 0");
    assert!(
        matches!(err, CheckError::NotOnTerminal { fd: 4, stdio_fd: 0 }),
        "{err}"
    );
    // With a terminal there, fd 4 is a copy of it.
    let mut os = machine();
    os.give_terminal(0, image_format::records::Winsize::default());
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    let to4 = c.input.fd_moves.iter().find(|m| m.to == 4).unwrap();
    assert_eq!(to4.from, 0);
}

mod event_objects;
mod fixed_costs;
#[cfg(test)]
mod tree_mode;
