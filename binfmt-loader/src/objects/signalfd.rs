//! signalfd: created reading the saved mask. The signals pending on the
//! task are restored with the task (the plan's pending signals), which is
//! what a signalfd reads.

use image_format::records::{FdRecord, SignalfdRecord};
use image_format::Image;

use super::{failed, lift};
use crate::check::os::Os;
use crate::check::CheckError;
use crate::sys::{O_CLOEXEC, O_NONBLOCK};

pub fn open(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    base: i32,
) -> Result<i32, CheckError> {
    let record = image
        .records::<SignalfdRecord>()
        .map_err(|error| CheckError::Corrupt { error })?
        .object(f.object)
        .ok_or(CheckError::ObjectMissing { fd: f.fd })?;
    // SFD_CLOEXEC and SFD_NONBLOCK are O_CLOEXEC and O_NONBLOCK.
    let fd = os
        .signalfd(record.mask, O_CLOEXEC | O_NONBLOCK)
        .map_err(failed(f, "create the signalfd"))?;
    lift(os, fd, base).map_err(failed(f, "move the signalfd"))
}
