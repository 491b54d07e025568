//! Files and working directory: every file a VMA maps, the executable and
//! the cwd are opened now (above the task's fd numbers) and compared with
//! the image's record of them, so that the plan only uses fds.

use image_format::records::{vma_flags, vma_kind, FileId, VmaRecord};
use image_format::{read::Records, Image};

use super::os::Os;
use super::scratch::{OpenedFile, Scratch};
use super::CheckError;
use crate::message::Lossy;
use crate::plan::{Range, TargetVma, VdsoBlock};
use crate::sys::{self, Errno, Stat};

/// Open a file and move its fd to `>= base`, clear of every fd number the
/// task uses, so the plan's `dup3`s never clobber an fd it still needs.
pub fn open_high(os: &impl Os, path: &[u8], flags: u32, base: i32) -> Result<i32, Errno> {
    let fd = os.open(path, flags | sys::O_CLOEXEC)?;
    crate::objects::lift(os, fd, base)
}

/// Whether `st` is the file `id` recorded: device, inode, size and mtime.
pub fn same_file(st: &Stat, id: &FileId) -> bool {
    st.dev == id.dev
        && st.ino == id.ino
        && st.size == id.size
        && st.mtime_sec == id.mtime_sec
        && st.mtime_nsec == id.mtime_nsec
}

/// The name of a file type (`st_mode & S_IFMT`) for messages.
pub fn file_type_name(t: u32) -> &'static str {
    match t {
        sys::S_IFREG => "a regular file",
        sys::S_IFDIR => "a directory",
        sys::S_IFCHR => "a character device",
        sys::S_IFBLK => "a block device",
        sys::S_IFIFO => "a FIFO",
        sys::S_IFLNK => "a symbolic link",
        sys::S_IFSOCK => "a socket",
        _ => "an unknown file type",
    }
}

/// The type of what `path` names now (through an `O_PATH` fd, which opens
/// nothing: no FIFO rendezvous, no device open).
fn file_type_at(os: &impl Os, path: &[u8]) -> Option<u32> {
    let fd = os.open(path, sys::O_PATH | sys::O_CLOEXEC).ok()?;
    let st = os.fstat(fd);
    os.close(fd);
    st.ok().map(|st| st.mode & sys::S_IFMT)
}

/// Open a file the image names, expecting file type `want` (`S_IF*`), with
/// `O_NONBLOCK | O_NOCTTY` so that stage 1 can neither block (a path that
/// is now a FIFO waits forever for a writer) nor take a controlling
/// terminal; then the status flags go back to `flags` (the recorded ones).
pub fn open_typed(
    os: &impl Os,
    what: &'static str,
    path: &'static [u8],
    flags: u32,
    want: u32,
    base: i32,
) -> Result<(i32, Stat), CheckError> {
    let missing = |errno| CheckError::FileMissing { what, path, errno };
    let fd = match open_high(os, path, flags | sys::O_NONBLOCK | sys::O_NOCTTY, base) {
        Ok(fd) => fd,
        Err(errno) => {
            // A FIFO without a reader refuses a non-blocking writer (ENXIO),
            // a socket refuses any open: say what the path is now.
            return Err(match file_type_at(os, path) {
                Some(now) if now != want => CheckError::FileType { what, path, now },
                _ => missing(errno),
            });
        }
    };
    let checked = os.fstat(fd).map_err(missing).and_then(|st| {
        let now = st.mode & sys::S_IFMT;
        if now != want {
            return Err(CheckError::FileType { what, path, now });
        }
        os.set_status_flags(fd, flags).map_err(missing)?;
        Ok(st)
    });
    match checked {
        Ok(st) => Ok((fd, st)),
        Err(e) => {
            os.close(fd);
            Err(e)
        }
    }
}

/// How a mapped file is opened for area `flags`/`prot`: `(read-write,
/// read-write required)`. A shared mapping that is writable needs a
/// writable fd; one that is not, but had `VM_MAYWRITE` (the task's fd was
/// writable, so it could `mprotect(PROT_WRITE)`), gets one too when this
/// caller may open the file so.
pub fn shared_file_access(flags: u32, prot: u32) -> (bool, bool) {
    let shared = flags & vma_flags::SHARED != 0;
    let must = shared && prot & image_format::records::prot::WRITE != 0;
    (must || (shared && flags & vma_flags::MAYWRITE != 0), must)
}

/// The target's areas with the fd of each one's file (files shared by
/// several areas are opened once), and its vDSO block.
pub fn open_mapped_files(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    records: Records<'static, VmaRecord>,
    objects: &[i32],
    base: i32,
    scratch: &mut Scratch,
) -> Result<(&'static [TargetVma], VdsoBlock), CheckError> {
    let corrupt = |error| CheckError::Corrupt { error };
    let n = usize::try_from(records.len()).unwrap_or(usize::MAX);
    let vmas = scratch.take::<TargetVma>("target areas", n)?;
    let opened = scratch.take::<OpenedFile>("opened files", n)?;
    let mut target_vdso = VdsoBlock::default();
    let mut nopened = 0;
    for (slot, v) in vmas.iter_mut().zip(records) {
        let mut fd = -1;
        // A shared memory object or saved file, made by `objects::shmem`.
        let object_fd = match v.object {
            0 => -1,
            n => *usize::try_from(n - 1)
                .ok()
                .and_then(|i| objects.get(i))
                .ok_or(CheckError::BadObject {
                    object: v.path,
                    why: "an area refers to an object the image does not have",
                })?,
        };
        if object_fd >= 0 {
            fd = object_fd;
        } else if v.kind == vma_kind::SHARED_ANON && v.object != 0 {
            return Err(CheckError::BadObject {
                object: v.path,
                why: "shared memory mapped from an object that is not shared memory",
            });
        } else if v.kind == vma_kind::FILE {
            let path = image.string(v.path).map_err(corrupt)?;
            if v.flags & vma_flags::FILE_DELETED != 0 {
                return Err(CheckError::FileDeleted {
                    what: "mapped file",
                    path,
                });
            }
            let (rw, must_rw) = shared_file_access(v.flags, v.prot);
            // Newest first: a file's areas are usually next to each other.
            let known = opened[..nopened]
                .iter()
                .rev()
                .find(|o| o.dev == v.file.dev && o.ino == v.file.ino && o.rw == u32::from(rw));
            fd = match known {
                Some(o) => o.fd,
                None => {
                    let flags = if rw { sys::O_RDWR } else { sys::O_RDONLY };
                    let mut opened_rw = rw;
                    let (f, st) = match open_typed(
                        os,
                        "mapped file",
                        path,
                        flags,
                        sys::S_IFREG,
                        base,
                    ) {
                        // Gone, and saved to be made again (another
                        // program deletes such files: the JVM's perf data).
                        Err(CheckError::FileMissing { errno, .. })
                            if errno == sys::Errno::ENOENT && v.object != 0 =>
                        {
                            let r = saved_file(image, v.object)?;
                            let f =
                                crate::objects::shmem::recreate(os, name, image, &r, path, base)?;
                            let mut st = os.fstat(f).map_err(|errno| CheckError::FileMissing {
                                what: "mapped file",
                                path,
                                errno,
                            })?;
                            // The file made again is the file the image names.
                            st.dev = v.file.dev;
                            st.ino = v.file.ino;
                            st.size = v.file.size;
                            st.mtime_sec = v.file.mtime_sec;
                            st.mtime_nsec = v.file.mtime_nsec;
                            (f, st)
                        }
                        // Read-write only for VM_MAYWRITE: a file this caller
                        // may not open so (EPERM, EACCES, ETXTBSY, EROFS) is
                        // mapped as it may, and said.
                        Err(CheckError::FileMissing { errno, .. })
                            if rw && !must_rw && matches!(errno.0, 1 | 13 | 26 | 30) =>
                        {
                            os.report(
                                    name,
                                    format_args!(
                                        "warning: {} cannot be opened read-write here ({errno}); its shared mapping at {:#x} is restored without VM_MAYWRITE (mprotect(PROT_WRITE) on it will fail)",
                                        Lossy(path),
                                        v.start
                                    ),
                                );
                            opened_rw = false;
                            open_typed(os, "mapped file", path, sys::O_RDONLY, sys::S_IFREG, base)?
                        }
                        r => r?,
                    };
                    if !same_file(&st, &v.file) {
                        return Err(CheckError::FileChanged {
                            what: "mapped file",
                            path,
                        });
                    }
                    // `opened` has a slot per area: this one is free.
                    if let Some(slot) = opened.get_mut(nopened) {
                        *slot = OpenedFile {
                            dev: v.file.dev,
                            ino: v.file.ino,
                            rw: u32::from(opened_rw),
                            fd: f,
                        };
                        nopened += 1;
                    }
                    f
                }
            };
        }
        if matches!(
            v.kind,
            vma_kind::VVAR | vma_kind::VVAR_VCLOCK | vma_kind::VDSO
        ) {
            target_vdso.push(Range {
                start: v.start,
                end: v.end,
            });
        }
        *slot = TargetVma {
            start: v.start,
            end: v.end,
            pgoff: v.pgoff,
            prot: v.prot,
            flags: v.flags,
            kind: v.kind,
            fd,
        };
    }
    Ok((vmas, target_vdso))
}

/// The saved file record `object` (1-based) of `image`'s SHMEM note.
fn saved_file(
    image: &Image<'static>,
    object: u32,
) -> Result<image_format::records::ShmemRecord, CheckError> {
    use image_format::records::{shmem_flags, shmem_kind, ShmemRecord};
    let records = image
        .records::<ShmemRecord>()
        .map_err(|error| CheckError::Corrupt { error })?;
    let r = usize::try_from(object - 1)
        .ok()
        .and_then(|i| records.clone().nth(i));
    match r {
        Some(r) if r.kind == shmem_kind::RECREATE && r.flags & shmem_flags::WHOLE_CONTENT != 0 => {
            Ok(r)
        }
        _ => Err(CheckError::BadObject {
            object: r.map(|r| r.name).unwrap_or_default(),
            why: "a file to make again without its saved content",
        }),
    }
}

/// The areas of shared memory objects sealed against writes need no write
/// access ([`crate::objects::shmem::check_sealed_areas`]).
pub fn check_object_areas(
    image: &Image<'static>,
    vmas: &[TargetVma],
    loads: &[crate::plan::PageLoad],
) -> Result<(), CheckError> {
    crate::objects::shmem::check_sealed_areas(image, vmas, loads)
}

/// The exe link's file, when this loader may set it (`privileged`).
pub fn open_exe(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    privileged: bool,
    base: i32,
) -> Result<Option<i32>, CheckError> {
    let process = image.process();
    if !privileged {
        os.report(
            name,
            format_args!(
                "warning: not privileged: /proc/PID/exe not restored (setting it needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN); it names the loader"
            ),
        );
        return Ok(None);
    }
    let path = image
        .string(process.exe)
        .map_err(|error| CheckError::Corrupt { error })?;
    match open_typed(os, "executable", path, sys::O_RDONLY, sys::S_IFREG, base) {
        Ok((fd, st)) if same_file(&st, &process.exe_id) => Ok(Some(fd)),
        _ => {
            os.report(
                name,
                format_args!(
                    "warning: executable {} missing or changed; /proc/PID/exe not restored",
                    Lossy(path)
                ),
            );
            Ok(None)
        }
    }
}

/// Whether this process can `fchdir` into `dir`, as the plan will (with
/// the same credentials: they change last): tried, then the old working
/// directory is entered again (nothing of this process's sees it, the
/// image and every file were opened by absolute path or fd).
fn enter_and_return(os: &impl Os, dir: i32) -> Result<(), Errno> {
    let old = os.open(b".", sys::O_PATH | sys::O_DIRECTORY | sys::O_CLOEXEC);
    let entered = os.fchdir(dir);
    if let Ok(old) = old {
        if entered.is_ok() {
            let _ = os.fchdir(old);
        }
        os.close(old);
    }
    entered
}

/// The task's working directory, opened `O_PATH` (`None`: none recorded);
/// the root directory is not restored, which is said.
pub fn open_cwd(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    base: i32,
) -> Result<Option<i32>, CheckError> {
    let corrupt = |error| CheckError::Corrupt { error };
    let process = image.process();
    let root = image.string(process.root).map_err(corrupt)?;
    let cwd = image.string(process.cwd).map_err(corrupt)?;
    let cwd_fd = if cwd.is_empty() {
        None
    } else {
        let fd = open_high(os, cwd, sys::O_PATH | sys::O_DIRECTORY, base).map_err(|errno| {
            CheckError::FileMissing {
                what: "working directory",
                path: cwd,
                errno,
            }
        })?;
        // The same directory, not another one at the same path (a
        // directory's size and mtime change with its entries: not compared).
        let id = process.cwd_id;
        if id.ino != 0
            && os
                .fstat(fd)
                .is_ok_and(|st| st.dev != id.dev || st.ino != id.ino)
        {
            return Err(CheckError::FileChanged {
                what: "working directory",
                path: cwd,
            });
        }
        // `O_PATH` needs no search permission; the plan's fchdir does.
        enter_and_return(os, fd).map_err(|errno| CheckError::CwdDenied { path: cwd, errno })?;
        Some(fd)
    };
    if !root.is_empty() && root != b"/" {
        os.report(
            name,
            format_args!(
                "warning: root directory {} not restored (chroot)",
                Lossy(root)
            ),
        );
    }
    Ok(cwd_fd)
}

/// Each file area the task had executable, tried now: a trial `mmap` of
/// one page of its opened fd with the area's protections (less
/// `PROT_WRITE`). A file on a `noexec` mount (EPERM) or one a security
/// module keeps from being executed (EACCES) would otherwise fail its
/// `mmap` after the point of no return. `vmas` are the areas of `image`'s
/// VMA records, in their order.
pub fn check_exec_mappings(image: &Image<'static>, vmas: &[TargetVma]) -> Result<(), CheckError> {
    use image_format::records::prot;
    let corrupt = |error| CheckError::Corrupt { error };
    let records = image.vmas().map_err(corrupt)?;
    let mut tried = -1;
    for (v, r) in vmas.iter().zip(records) {
        // A file's areas are usually next to each other: tried once.
        if v.fd < 0 || v.prot & prot::EXEC == 0 || v.fd == tried {
            continue;
        }
        tried = v.fd;
        let p = u64::from(v.prot & (prot::READ | prot::EXEC));
        if let Err(errno) = sys::mm::probe_file_page(v.fd, v.pgoff, p) {
            let path = image.string(r.path).map_err(corrupt)?;
            return Err(CheckError::ExecDenied {
                path,
                start: v.start,
                errno,
            });
        }
    }
    Ok(())
}
