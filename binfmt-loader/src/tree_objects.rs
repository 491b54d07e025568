//! The objects a tree restore shares between processes, made once by
//! `crrestore-tree` with the loader's own object code (one implementation
//! for the direct run and the tree): the entry points the orchestrator
//! calls, on the real `Os`.
//!
//! Every function here is a thin door onto the code stage 1 runs for a
//! direct restore: an open file description is made exactly as the loader
//! would make it for its own fd, only in the orchestrator, which then
//! places it at the fd numbers of every process holding it.

use image_format::records::{seals, shmem_kind, CredsRecord, FdRecord, ShmemRecord};
use image_format::Image;

use crate::check::credentials;
use crate::check::os::Os;
use crate::check::CheckError;
use crate::objects::{self, Made, MadeObject};
use crate::rules;
use crate::sys::os::Kernel;

/// The real operating system, as stage 1 uses it.
pub fn kernel() -> Kernel {
    crate::sys::kernel_os()
}

/// A table for the objects made so far (`slots`: one per description the
/// caller will open at most; the orchestrator gives it leaked memory).
pub fn made_table(slots: &'static mut [MadeObject]) -> Made {
    Made { slots, len: 0 }
}

/// One open file description of `f`'s object (a pipe or FIFO end, an
/// eventfd, signalfd, timerfd, inotify instance), or of its file (a
/// regular file, directory or character device reopened at its offset,
/// its identity checked), at an fd `>= base`, close-on-exec, with the
/// record's status flags. Pipe ends made earlier through `made` are
/// reused: a pipe is made once, with its size and buffered bytes.
pub fn open_description(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    base: i32,
    made: &mut Made,
) -> Result<i32, CheckError> {
    let path = image
        .string(f.path)
        .map_err(|error| CheckError::Corrupt { error })?;
    if objects::is_object(f.kind) {
        objects::open(os, image, f, path, base, made)
    } else if rules::fd_kind_reopenable(f.kind) {
        crate::check::fds::reopen_fd(os, f, path, base)
    } else {
        Err(CheckError::UnsupportedFd {
            fd: f.fd,
            kind: f.kind,
            path,
        })
    }
}

/// The memfd of shared memory object `index` (1-based, `image`'s SHMEM
/// note): a memfd or shared anonymous memory, sized, with its whole saved
/// content if it has one and its seals but `F_SEAL_FUTURE_WRITE` (which
/// each loader adds once its areas are filled), at an fd `>= base`.
pub fn make_shmem(
    os: &impl Os,
    image: &Image<'static>,
    index: u32,
    base: i32,
) -> Result<i32, CheckError> {
    let corrupt = |error| CheckError::Corrupt { error };
    let r: ShmemRecord = index
        .checked_sub(1)
        .and_then(|i| usize::try_from(i).ok())
        .and_then(|i| {
            image
                .records::<ShmemRecord>()
                .ok()
                .and_then(|mut rs| rs.nth(i))
        })
        .ok_or(CheckError::BadObject {
            object: Default::default(),
            why: "a shared memory object the image does not have",
        })?;
    let object = image.string(r.name).map_err(corrupt)?;
    if !matches!(r.kind, shmem_kind::MEMFD | shmem_kind::SHARED_ANON) {
        return Err(CheckError::BadObject {
            object: r.name,
            why: "shared between processes but not a memfd or shared anonymous memory",
        });
    }
    let content = if r.flags & image_format::records::shmem_flags::WHOLE_CONTENT != 0 {
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
    let fd = os
        .memfd_create(objects::shmem::memfd_name(object))
        .and_then(|fd| objects::lift(os, fd, base))
        .map_err(objects::shmem::failed(object, "memfd_create"))?;
    let made = (|| {
        objects::shmem::fill(os, fd, object, r.size, content)?;
        const PERMISSIONS: u32 = 0o777;
        if r.kind == shmem_kind::MEMFD && r.mode & PERMISSIONS != PERMISSIONS {
            os.fchmod(fd, r.mode & PERMISSIONS)
                .map_err(objects::shmem::failed(object, "fchmod"))?;
        }
        // As `create_objects`: with F_SEAL_FUTURE_WRITE every seal waits
        // for the plan (the loaders), else all are added now.
        if r.seals != 0 && r.seals & seals::FUTURE_WRITE == 0 {
            os.add_seals(fd, r.seals)
                .map_err(objects::shmem::failed(object, "fcntl(F_ADD_SEALS)"))?;
        }
        Ok(())
    })();
    match made {
        Ok(()) => Ok(fd),
        Err(e) => {
            os.close(fd);
            Err(e)
        }
    }
}

/// A new open file description of a memfd fd record `f` on the memfd
/// `object_fd` (made by [`make_shmem`]), at its offset and with its flags,
/// `>= base`: the loader's own `objects::shmem::open_fd`.
pub fn open_shmem_fd(
    os: &impl Os,
    f: &FdRecord,
    object_fd: i32,
    base: i32,
) -> Result<i32, CheckError> {
    let fds = [object_fd];
    let mut record = *f;
    // `open_fd` looks the object up by index in the fds it is given: one.
    record.object = 1;
    objects::shmem::open_fd(os, &record, &fds, base)
}

/// Whom a restore of an image acts as, decided exactly as stage 1 decides
/// it (one source: [`credentials::image_owner`], [`credentials::owner_group`],
/// [`credentials::decide_creds`]): never more than the image file's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskIdentity {
    /// The owner the image counts as owned by (`nobody` on a nosuid mount).
    pub owner: (u32, u32),
    /// The credentials the task ends with (`None`: this process's own).
    pub creds: Option<CredsRecord>,
}

impl TaskIdentity {
    /// What file access runs as: `(fsuid, fsgid, groups)`; `None` for this
    /// process's own.
    pub fn access(&self) -> Option<(u32, u32, &[u32])> {
        self.creds.as_ref().map(|c| {
            let n = (c.ngroups as usize).min(c.groups.len());
            (c.uid[1], c.gid[1], &c.groups[..n])
        })
    }

    /// Whether two identities open files alike.
    pub fn same_access(&self, other: &TaskIdentity) -> bool {
        self.access() == other.access()
    }
}

/// The identity of the task restored from `image`, whose file is open at
/// `image_fd` and owned by `file_owner` (its `fstat`), for a loader run by
/// this process (its ids and capabilities): what the loader stage 1 would
/// decide, its refusals included. `name` names the image in warnings.
pub fn task_identity(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    image_fd: i32,
    file_owner: (u32, u32),
) -> Result<TaskIdentity, CheckError> {
    let owner = credentials::image_owner(os, name, image_fd, file_owner);
    let owner = credentials::owner_group(os, name, owner);
    let privilege = credentials::Privilege::of(os);
    let status = crate::check::status::Status::read(os);
    let (creds, _) = credentials::decide_creds(os, name, image, owner, &privilege, &status)?;
    Ok(TaskIdentity { owner, creds })
}

/// Run `open` with the file-access identity of `identity`, as stage 1
/// opens every path of an image ([`credentials::as_task`]): a root
/// orchestrator opens only what the task itself could.
pub fn as_task<T>(
    os: &impl Os,
    identity: &TaskIdentity,
    open: impl FnOnce() -> Result<T, CheckError>,
) -> Result<T, CheckError> {
    credentials::as_task(os, identity.creds.as_ref(), open)
}
