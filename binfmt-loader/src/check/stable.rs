//! Loading what was checked: the image's bytes must not change between
//! the checks of stage 1 and the plan's loads after the point of no return.
//!
//! Stage 1 reads the image through a `MAP_PRIVATE` read-only mapping: its
//! notes (registers, XSAVE areas, records) and every stored page, whose
//! XXH3 checksums it verifies. The plan then fills the task's memory with
//! `pread` from the image fd. Both read the file's page cache, at
//! different times: a private mapping that is never written is *not* a
//! snapshot (a page not yet copied on write is the file's page, so later
//! writes to the file show through), and whoever may write the image can
//! do so at any moment. Ways to make the two reads the same bytes:
//!
//! * **Copy, then check and load the copy.** Read the stored pages into
//!   private memory, hash the copy, load from it (or move its pages into
//!   place). Sound against any writer, but it costs a second copy of all
//!   stored memory for the whole restore (2 GiB resident for a 1 GiB task,
//!   plus about 0.3 s of copying on this machine, half the restore time);
//!   moving the pages in with `mremap` instead would leave them in
//!   separate anonymous areas, not the task's own (file-backed private
//!   ones included).
//! * **Re-check what was loaded.** Hash the task's memory after the loads,
//!   in the trampoline: XXH3 in position-independent assembly, and another
//!   full pass over 1 GiB after the point of no return, where a mismatch
//!   can only kill the task.
//! * **Keep the file still** (chosen). A read lease (`F_SETLEASE`,
//!   `F_RDLCK`) is granted only when no one has the file open for writing
//!   (or mapped shared-writable), and from then on any `open` for writing
//!   and any `truncate` of it blocks until the lease holder closes its fd
//!   (the plan closes the image fd once the memory is loaded), or at most
//!   `/proc/sys/fs/lease-break-time` seconds (45 by default); a writer
//!   waiting turns the lease to `F_UNLCK`, which stage 1 checks right
//!   before the point of no return ([`still_same`]). Nothing is copied: it
//!   costs two `fcntl`s whatever the size, and it also keeps the notes
//!   still between their checks and their use by the planner. The lease is
//!   taken before the image is mapped, so everything read through the
//!   mapping is what the plan loads. A lease needs the file's owner or
//!   `CAP_LEASE`; the kernel sends no signal to a holder without an owner
//!   (`F_SETOWN 0`), so no stray `SIGIO` reaches the task.
//!
//! When no lease can be had (someone holds the image open for writing,
//! if only a child forked before an fd of it was closed; this process is
//! neither the owner nor has `CAP_LEASE`; the file system has no leases),
//! the image's size, mtime and ctime are compared again right before the
//! point of no return instead, and a change refuses the image (exit 3): a
//! write during the checks is caught, one during the loads themselves (a
//! second or so for 1 GiB) is not. That writer has write access to the
//! image: someone who could as well have written it before it ran (the
//! checksums guard against corruption, not against them; what the task may
//! do is
//! bounded by the owner's credentials, `creds`).

use super::os::Os;
use super::CheckError;
use crate::sys::Stat;

/// How the image is held still until the plan has loaded it.
#[derive(Clone, Copy, Debug)]
pub enum Hold {
    /// A read lease on the image's open file.
    Lease,
    /// No lease: its identity when stage 1 began, compared at the end.
    Unchanged(Stat),
}

/// Take the lease on the image open at `fd` (before it is mapped).
pub fn hold_still(os: &impl Os, fd: i32) -> Result<Hold, CheckError> {
    match os.take_read_lease(fd) {
        Ok(()) => Ok(Hold::Lease),
        Err(_) => os
            .fstat(fd)
            .map(Hold::Unchanged)
            .map_err(|errno| CheckError::MapImage { errno }),
    }
}

/// Whether the image is still as stage 1 checked it: the lease held with
/// no writer waiting, or its size and times unchanged. Called last before
/// the point of no return.
pub fn still_same(os: &impl Os, fd: i32, hold: &Hold) -> Result<(), CheckError> {
    let same = match hold {
        Hold::Lease => os.lease_intact(fd),
        Hold::Unchanged(then) => os.fstat(fd).is_ok_and(|now| {
            now.size == then.size
                && (now.mtime_sec, now.mtime_nsec) == (then.mtime_sec, then.mtime_nsec)
                && (now.ctime_sec, now.ctime_nsec) == (then.ctime_sec, then.ctime_nsec)
        }),
    };
    if same {
        Ok(())
    } else {
        Err(CheckError::ImageBeingWritten)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::Fake;
    use super::*;
    use crate::sys::{Errno, S_IFREG};

    fn image_on(os: &mut Fake, size: u64) -> i32 {
        let st = Stat {
            mode: S_IFREG | 0o600,
            size,
            mtime_sec: 10,
            ctime_sec: 10,
            ..Default::default()
        };
        os.add("/img", st, std::vec![]);
        os.open(b"/img", 0).unwrap()
    }

    #[test]
    fn a_lease_holds_until_a_writer_waits() {
        let mut os = Fake::new();
        let fd = image_on(&mut os, 100);
        let hold = hold_still(&os, fd).unwrap();
        assert!(matches!(hold, Hold::Lease));
        assert!(still_same(&os, fd, &hold).is_ok());
        os.lease_kept = false;
        assert!(matches!(
            still_same(&os, fd, &hold),
            Err(CheckError::ImageBeingWritten)
        ));
    }

    #[test]
    fn without_a_lease_a_changed_image_is_refused() {
        for refused in [Errno(11), Errno(13), Errno::EINVAL] {
            let mut os = Fake::new();
            os.lease = Err(refused);
            let fd = image_on(&mut os, 100);
            let hold = hold_still(&os, fd).unwrap();
            assert!(matches!(hold, Hold::Unchanged(_)));
            assert!(still_same(&os, fd, &hold).is_ok());
            // Rewritten in place: same size, new ctime.
            let mut st = os.fstat(fd).unwrap();
            st.ctime_nsec = 1;
            os.files.get_mut(&b"/img"[..]).unwrap().stat = st;
            assert!(matches!(
                still_same(&os, fd, &hold),
                Err(CheckError::ImageBeingWritten)
            ));
        }
    }
}
