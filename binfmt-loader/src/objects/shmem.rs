//! Shared memory objects and saved files (`records::ShmemRecord`), made
//! once each in stage 1 (before the point of no return: a failure changes
//! nothing of the caller), and handed by fd to every area that maps one.
//!
//! - A memfd, or shared anonymous memory, becomes a memfd
//!   (`MFD_ALLOW_SEALING`) with the recorded name, `ftruncate`d to its
//!   size; a whole saved content is written now, otherwise the stored pages
//!   of its areas are read into the areas by the plan, which maps every one
//!   of them `MAP_SHARED` from this memfd, so they land in it once and
//!   every area sees the others' writes.
//! - Seals are added last here, after the content: an object sealed
//!   `F_SEAL_WRITE` has its whole content saved and none of its areas gets
//!   pages or maps it writable (checked: [`check_sealed_areas`]; the
//!   kernel allows no writable shared mapping of it), so sealing before the
//!   plan maps it is what the task had (the kernel then maps it without
//!   `VM_MAYWRITE`, as it did). Other seals (`F_SEAL_SHRINK`,
//!   `F_SEAL_GROW`, `F_SEAL_SEAL`) do not hinder mapping or filling pages
//!   within the size. `F_SEAL_FUTURE_WRITE` keeps the writable mappings
//!   made before it: an object with it is sealed by the plan
//!   ([`LateSeal`]), once its areas are built and filled.
//! - A deleted file becomes an unlinked file with the saved content: an
//!   `O_TMPFILE` in the directory it was in when that works (same file
//!   system, so `/proc/P/fd` and `st_dev` look as before, and
//!   `linkat` can give it a name again), else a memfd named by its last
//!   path component, said in a warning. Its mode is set again with
//!   `fchmod`; it belongs to the task's fsuid/fsgid (stage 1 runs as the
//!   task: `credentials::as_task`).
//! - A saved shared-mapped file ([`shmem_kind::RECREATE`]) is made only
//!   when its path is missing ([`recreate`], called by `check::files`).
//! - In a tree restore, an object several processes of the tree share is
//!   made once by the orchestrator and given by fd (`--shmem IDX=FD`):
//!   checked ([`given_object`]: a shmem file of the recorded size), used
//!   as it is (nothing created, no content written, no seal added), its
//!   areas mapped from it and filled with their stored pages by the plan
//!   as usual (every sharer writes the same bytes).

use image_format::records::{
    fd_flags, fd_kind, seals, shmem_flags, shmem_kind, FdRecord, ShmemRecord,
};
use image_format::Image;

use crate::args::ShmemFd;
use crate::check::os::Os;
use crate::check::scratch::Scratch;
use crate::check::CheckError;
use crate::message::Lossy;
use crate::plan::{LateSeal, TargetVma};
use crate::sys::Errno;

/// `S_IFMT`'s permission part kept for a file made again.
const PERMISSIONS: u32 = 0o777;

/// The objects stage 1 made.
pub struct Made {
    /// The fd of each object of the SHMEM note, in order (-1: none, the
    /// file is opened by path), every one `>= base`.
    pub fds: &'static [i32],
    /// The seals the plan adds once the areas are filled.
    pub late_seals: &'static [LateSeal],
}

/// Make every object of `image`'s SHMEM note, but those `given` by the
/// tree restorer (`--shmem`: empty in a direct run).
pub fn create_objects(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    base: i32,
    given: &[ShmemFd],
    scratch: &mut Scratch,
) -> Result<Made, CheckError> {
    let corrupt = |error| CheckError::Corrupt { error };
    let records = image.records::<ShmemRecord>().map_err(corrupt)?;
    let n = usize::try_from(records.len()).unwrap_or(usize::MAX);
    if let Some(g) = given
        .iter()
        .find(|g| usize::try_from(g.index).map_or(true, |i| i > n))
    {
        return Err(CheckError::TreeFd {
            fd: g.fd,
            what: "--shmem",
            why: "the image has no shared memory object of that index",
        });
    }
    let fds = scratch.take::<i32>("shared memory objects", n)?;
    let late = scratch.take::<LateSeal>("late seals", n)?;
    let mut nlate = 0;
    for (i, (slot, r)) in fds.iter_mut().zip(records).enumerate() {
        let object = image.string(r.name).map_err(corrupt)?;
        let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
        if let Some(g) = given.iter().find(|g| g.index == index) {
            // The orchestrator owns the object: it made it, wrote its
            // content and sealed it once for every sharer; the late seals
            // (`F_SEAL_FUTURE_WRITE`) too are its to add, once every
            // sharer has mapped it, so none is added here (one loader's
            // seal would refuse the writable mappings of the others).
            *slot = given_object(os, &r, object, g.fd)?;
            continue;
        }
        let content = if r.flags & shmem_flags::WHOLE_CONTENT != 0 {
            image.string(r.content).map_err(corrupt)?
        } else {
            &[]
        };
        if content.len() as u64 > r.size {
            return Err(CheckError::BadObject {
                object: r.name,
                why: "saved content longer than the file",
            });
        }
        *slot = match r.kind {
            shmem_kind::MEMFD | shmem_kind::SHARED_ANON => {
                let fd = above(os, os.memfd_create(memfd_name(object)), base)
                    .map_err(failed(object, "memfd_create"))?;
                fill(os, fd, object, r.size, content)?;
                // A memfd's mode (0777 when made; `MFD_NOEXEC_SEAL` or a
                // chmod changed it), before `F_SEAL_EXEC` could forbid it.
                if r.kind == shmem_kind::MEMFD && r.mode & PERMISSIONS != PERMISSIONS {
                    os.fchmod(fd, r.mode & PERMISSIONS)
                        .map_err(failed(object, "fchmod"))?;
                }
                fd
            }
            shmem_kind::GHOST => {
                let fd = unlinked_file(os, name, object, r.mode, base)?;
                fill(os, fd, object, r.size, content)?;
                fd
            }
            _ => -1,
        };
        if *slot >= 0 && r.seals & seals::FUTURE_WRITE != 0 {
            // After the plan has mapped and filled the areas: writable
            // shared mappings made before it stay writable, as the task's.
            if let Some(l) = late.get_mut(nlate) {
                *l = LateSeal {
                    fd: *slot,
                    seals: r.seals,
                };
                nlate += 1;
            }
        } else if *slot >= 0 && r.seals != 0 {
            os.add_seals(*slot, r.seals)
                .map_err(failed(object, "fcntl(F_ADD_SEALS)"))?;
        }
    }
    Ok(Made {
        fds,
        late_seals: &late[..nlate],
    })
}

/// Check the object the tree restorer gave at `fd` for record `r`: a
/// memfd or shared anonymous memory object of the image, and at `fd` a
/// shmem file (it has seals to ask for: memfds and tmpfs files do) of the
/// recorded size.
fn given_object(
    os: &impl Os,
    r: &ShmemRecord,
    object: &'static [u8],
    fd: i32,
) -> Result<i32, CheckError> {
    let tree_fd = |why| CheckError::TreeFd {
        fd,
        what: "--shmem",
        why,
    };
    if !matches!(r.kind, shmem_kind::MEMFD | shmem_kind::SHARED_ANON) {
        return Err(tree_fd(
            "the image's object of that index is not a memfd or shared memory",
        ));
    }
    let st = os.fstat(fd).map_err(|_| tree_fd("it is not open"))?;
    if st.mode & crate::sys::S_IFMT != crate::sys::S_IFREG || os.get_seals(fd).is_err() {
        return Err(tree_fd("it is not a memfd or shared memory file"));
    }
    if st.size != r.size {
        return Err(CheckError::GivenObjectSize {
            name: object,
            fd,
            size: st.size,
            want: r.size,
        });
    }
    Ok(fd)
}

/// An error of making object `object` at `step`.
pub fn failed(object: &'static [u8], step: &'static str) -> impl Fn(Errno) -> CheckError {
    move |errno| CheckError::ShmemObject {
        name: object,
        step,
        errno,
    }
}

/// `fd` moved to `>= base` (the task's fd numbers stay free).
fn above(os: &impl Os, fd: Result<i32, Errno>, base: i32) -> Result<i32, Errno> {
    fd.and_then(|fd| super::lift(os, fd, base))
}

/// A memfd name the kernel takes: at most 249 bytes.
pub fn memfd_name(name: &[u8]) -> &[u8] {
    &name[..name.len().min(249)]
}

/// Size the new file and write its saved content.
pub fn fill(
    os: &impl Os,
    fd: i32,
    object: &'static [u8],
    size: u64,
    content: &[u8],
) -> Result<(), CheckError> {
    os.ftruncate(fd, size)
        .map_err(failed(object, "ftruncate"))?;
    let mut done = 0;
    while done < content.len() {
        match os.pwrite(fd, &content[done..], done as u64) {
            Ok(0) => return Err(failed(object, "pwrite")(Errno::EIO)),
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(failed(object, "pwrite")(e)),
        }
    }
    Ok(())
}

/// `path`'s directory and last component (`/` for a file at the root).
fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b".", path),
    }
}

/// An unlinked file for deleted file `path`: `O_TMPFILE` in its old
/// directory, else a memfd (said).
fn unlinked_file(
    os: &impl Os,
    name: &[u8],
    path: &'static [u8],
    mode: u32,
    base: i32,
) -> Result<i32, CheckError> {
    let (dir, file) = split_path(path);
    match above(os, os.open_tmpfile(dir, mode & PERMISSIONS), base) {
        Ok(fd) => {
            // The umask took its bits at creation.
            os.fchmod(fd, mode & PERMISSIONS)
                .map_err(failed(path, "fchmod"))?;
            Ok(named_again(os, fd, path))
        }
        Err(errno) => {
            os.report(
                name,
                format_args!(
                    "warning: deleted file {} is restored as a memfd (an O_TMPFILE in {} failed: {errno})",
                    Lossy(path),
                    Lossy(dir)
                ),
            );
            let fd = above(os, os.memfd_create(memfd_name(file)), base)
                .map_err(failed(path, "memfd_create"))?;
            os.fchmod(fd, mode & PERMISSIONS)
                .map_err(failed(path, "fchmod"))?;
            Ok(fd)
        }
    }
}

/// The unnamed `O_TMPFILE` at `fd` with its old name: linked at `path`,
/// opened there (the opened file's dentry has the name: `/proc/P/maps`
/// and `/proc/P/fd` show `PATH (deleted)` as before, where an unnamed
/// O_TMPFILE shows `DIR/#INO`), checked to be the same inode, and unlinked
/// again. Not when a file has that name now (`linkat` never replaces one):
/// then `fd` as it is.
fn named_again(os: &impl Os, fd: i32, path: &[u8]) -> i32 {
    /// `O_NOFOLLOW`.
    const O_NOFOLLOW: u32 = 0o400_000;
    if os.link_fd(fd, path).is_err() {
        return fd;
    }
    let named = os
        .open(
            path,
            crate::sys::O_RDWR | O_NOFOLLOW | crate::sys::O_CLOEXEC,
        )
        .ok();
    let same = |other: i32| match (os.fstat(fd), os.fstat(other)) {
        (Ok(a), Ok(b)) => a.dev == b.dev && a.ino == b.ino,
        _ => false,
    };
    match named {
        // Ours: unlinked again. (Another file there means ours was
        // replaced at that name meanwhile: nothing of ours to unlink.)
        Some(n) if same(n) && os.unlink(path).is_ok() => match os.dup_above(n, fd) {
            Ok(high) => {
                os.close(n);
                os.close(fd);
                high
            }
            Err(_) => {
                os.close(n);
                fd
            }
        },
        Some(n) => {
            os.close(n);
            fd
        }
        // Ours, but not to be opened so (its mode): unlinked again, and the
        // file kept without its name.
        None => {
            let _ = os.unlink(path);
            fd
        }
    }
}

/// Whether fd record `f` is on a shared memory object or saved file: a
/// memfd, or a deleted regular file, with its object saved.
pub fn backs_fd(f: &FdRecord) -> bool {
    f.object != 0
        && (f.kind == fd_kind::MEMFD
            || (f.kind == fd_kind::REGULAR && f.flags & fd_flags::DELETED != 0))
}

/// The fd of record `f` on its object (made by [`create_objects`], `fds`:
/// theirs): a new open file description of it, opened again through
/// `/proc/self/fd` with the fd's access mode (a file whose mode refuses
/// that to the task's fsuid gets a copy of the object's read-write fd
/// instead), at the fd's offset, with its status flags.
pub fn open_fd(os: &impl Os, f: &FdRecord, fds: &[i32], base: i32) -> Result<i32, CheckError> {
    let object_fd = usize::try_from(f.object - 1)
        .ok()
        .and_then(|i| fds.get(i))
        .copied()
        .filter(|&fd| fd >= 0)
        .ok_or(CheckError::ObjectMissing { fd: f.fd })?;
    let step = |step| {
        move |errno| CheckError::Object {
            fd: f.fd,
            step,
            errno,
        }
    };
    let again = crate::message::proc_self_fd(object_fd);
    let access = f.open_flags & O_ACCMODE;
    let fd = match above(
        os,
        os.open(again.as_bytes(), access | crate::sys::O_CLOEXEC),
        base,
    ) {
        Ok(fd) => fd,
        Err(Errno(13)) if access == crate::sys::O_RDWR => os
            .dup_above(object_fd, base)
            .map_err(step("copy its object's fd"))?,
        Err(errno) => return Err(step("open its object again")(errno)),
    };
    os.set_status_flags(fd, f.open_flags)
        .map_err(step("set its status flags"))?;
    os.seek_to(fd, f.pos).map_err(step("seek to its offset"))?;
    Ok(fd)
}

/// `O_ACCMODE`.
const O_ACCMODE: u32 = 3;

/// Shared-mapped file `path`, missing now, made again from `r`'s saved
/// content: created exclusively (`O_CREAT | O_EXCL`, so a file that
/// appears meanwhile is never overwritten) through no symbolic link on its
/// path (`RESOLVE_NO_SYMLINKS`: a link planted at the name or on the way
/// fails the restore), in its old directory, which must exist; mode as
/// recorded (permission bits), owner the task's fsuid/fsgid. Said in a
/// warning line.
pub fn recreate(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    r: &ShmemRecord,
    path: &'static [u8],
    base: i32,
) -> Result<i32, CheckError> {
    let content = image
        .string(r.content)
        .map_err(|error| CheckError::Corrupt { error })?;
    let fd = above(os, os.create_new(path, r.mode & PERMISSIONS), base)
        .map_err(failed(path, "create (O_EXCL, no symbolic links)"))?;
    os.fchmod(fd, r.mode & PERMISSIONS)
        .map_err(failed(path, "fchmod"))?;
    fill(os, fd, path, r.size, content)?;
    os.report(
        name,
        format_args!(
            "warning: mapped file {} was missing; made again from the image ({} bytes, mode {:o})",
            Lossy(path),
            r.size,
            r.mode & PERMISSIONS
        ),
    );
    Ok(fd)
}

/// No area of an object sealed against writes gets stored pages or is
/// mapped shared and writable (the seal is added before the plan maps it,
/// and would make that mmap fail after the point of no return).
pub fn check_sealed_areas(
    image: &Image<'static>,
    vmas: &[TargetVma],
    loads: &[crate::plan::PageLoad],
) -> Result<(), CheckError> {
    use image_format::records::{prot, vma_flags};
    let corrupt = |error| CheckError::Corrupt { error };
    let records = image.records::<ShmemRecord>().map_err(corrupt)?;
    for (v, area) in vmas.iter().zip(image.vmas().map_err(corrupt)?) {
        let Some(r) = area
            .object
            .checked_sub(1)
            .and_then(|i| records.clone().nth(usize::try_from(i).ok()?))
        else {
            continue;
        };
        // F_SEAL_FUTURE_WRITE is added after the areas are filled.
        if r.seals & seals::WRITE == 0 {
            continue;
        }
        let writable = v.flags & vma_flags::SHARED != 0 && v.prot & prot::WRITE != 0;
        let gets_pages = loads
            .iter()
            .any(|l| l.vaddr < v.end && v.start < l.vaddr.saturating_add(l.len));
        if writable || gets_pages {
            return Err(CheckError::SealedObjectArea {
                name: image.string(r.name).map_err(corrupt)?,
                start: v.start,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_directory_and_name() {
        assert_eq!(split_path(b"/tmp/x/gone"), (&b"/tmp/x"[..], &b"gone"[..]));
        assert_eq!(split_path(b"/gone"), (&b"/"[..], &b"gone"[..]));
        assert_eq!(split_path(b"gone"), (&b"."[..], &b"gone"[..]));
    }
}
