//! eventfd: created with its semaphore mode, its counter written in.

use image_format::records::{eventfd_flags, EventfdRecord, FdRecord};
use image_format::Image;

use super::{failed, lift};
use crate::check::os::Os;
use crate::check::CheckError;
use crate::sys::{O_CLOEXEC, O_NONBLOCK};

const EFD_SEMAPHORE: u32 = 1;

pub fn open(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    base: i32,
) -> Result<i32, CheckError> {
    let record = image
        .records::<EventfdRecord>()
        .map_err(|error| CheckError::Corrupt { error })?
        .object(f.object)
        .ok_or(CheckError::ObjectMissing { fd: f.fd })?;
    let mut flags = O_CLOEXEC | O_NONBLOCK;
    if record.flags & eventfd_flags::SEMAPHORE != 0 {
        flags |= EFD_SEMAPHORE;
    }
    let fd = os.eventfd(flags).map_err(failed(f, "create the eventfd"))?;
    let fd = lift(os, fd, base).map_err(failed(f, "move the eventfd"))?;
    if record.count != 0 {
        // eventfd2 takes a 32-bit start value; a write adds all 64 bits.
        // The maximum is u64::MAX - 1: the kernel refuses more (EINVAL).
        let n = os
            .write(fd, &record.count.to_ne_bytes())
            .map_err(failed(f, "set the eventfd's count"))?;
        if n != 8 {
            os.close(fd);
            return Err(CheckError::Object {
                fd: f.fd,
                step: "set the eventfd's count",
                errno: crate::sys::Errno::EIO,
            });
        }
    }
    Ok(fd)
}
