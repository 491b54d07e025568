//! Step 7b: the inotify events the restore itself caused, read away
//! before the task can see them. Stage 1 opens the task's files again
//! after its inotify watches exist (`IN_OPEN` on a watched directory), the
//! plan reads the image (`IN_ACCESS`) and closes it and every other fd of
//! the loader (`IN_CLOSE_NOWRITE`); an instance whose watches ask for such
//! events is drained once the loader's fds are closed. An event of
//! another process on a watched file in that instance is lost with them
//! (the dump refused an instance with events queued, so none of the
//! task's own is).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::abi::{int_arg, rule};
use super::builder::Builder;
use super::{PlanError, PlanInput};
use crate::sys::{nr, O_NONBLOCK};

/// `F_SETFL`.
const F_SETFL: u64 = 4;
/// Bytes read per `read` (whole events only; the kernel merges repeats).
pub const DRAIN_BYTES: usize = 64 * 1024;
/// Reads per instance: the loader causes a few events per file it opened.
const DRAIN_READS: usize = 2;

/// One inotify instance to drain: at `fd`, whose status flags are `flags`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InotifyDrain {
    pub fd: i32,
    pub flags: u32,
}

/// Ops per drained instance (for the window's size).
pub const DRAIN_OPS: usize = 2 + DRAIN_READS;

pub(super) fn drain_inotify(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    if input.inotify_drains.is_empty() {
        return Ok(());
    }
    let (buf, _) = b.alloc(DRAIN_BYTES, 8)?;
    for d in input.inotify_drains {
        let fd = int_arg(d.fd);
        // Non-blocking while it is read: an empty queue says EAGAIN.
        b.sys(
            rule::OK,
            nr::FCNTL,
            [fd, F_SETFL, u64::from(d.flags | O_NONBLOCK), 0, 0, 0],
            format_args!("fcntl {} O_NONBLOCK to drain", d.fd),
        )?;
        for _ in 0..DRAIN_READS {
            b.sys(
                rule::ANY,
                nr::READ,
                [fd, buf, DRAIN_BYTES as u64, 0, 0, 0],
                format_args!("read {}: the restore's own inotify events", d.fd),
            )?;
        }
        b.sys(
            rule::OK,
            nr::FCNTL,
            [fd, F_SETFL, u64::from(d.flags), 0, 0, 0],
            format_args!("fcntl {} status flags", d.fd),
        )?;
    }
    Ok(())
}
