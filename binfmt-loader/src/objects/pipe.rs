//! Pipes and FIFOs: made once per object with its size and buffered
//! bytes, then each of the task's open file descriptions on it: the first
//! read (write) one is the end made, later ones open that end again
//! through `/proc/self/fd` (a new description on the same pipe).

use image_format::records::{pipe_flags, FdRecord, PipeRecord};
use image_format::Image;

use super::{failed, lift, Made, MadeObject};
use crate::check::files::open_typed;
use crate::check::os::Os;
use crate::check::CheckError;
use crate::message::proc_self_fd;
use crate::sys::{self, Errno};

const O_ACCMODE: u32 = 3;
const O_WRONLY: u32 = 1;

pub fn open(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    path: &'static [u8],
    base: i32,
    made: &mut Made,
) -> Result<i32, CheckError> {
    if made.find(f.kind, f.object).is_none() {
        let ends = make(os, image, f, path, base)?;
        made.add(MadeObject {
            kind: f.kind,
            object: f.object,
            fds: [ends.0, ends.1],
            taken: [0, 0],
        })?;
    }
    let m = made
        .find(f.kind, f.object)
        .ok_or(CheckError::ObjectMissing { fd: f.fd })?;
    let access = f.open_flags & O_ACCMODE;
    let end = usize::from(access == O_WRONLY);
    if access != sys::O_RDWR && m.taken[end] == 0 {
        m.taken[end] = 1;
        return Ok(m.fds[end]);
    }
    // Another description on the same pipe (or a FIFO opened read-write).
    let again = proc_self_fd(m.fds[0]);
    let fd = os
        .open(again.as_bytes(), access | sys::O_NONBLOCK | sys::O_CLOEXEC)
        .and_then(|fd| lift(os, fd, base))
        .map_err(failed(f, "open the pipe again"))?;
    Ok(fd)
}

/// The pipe of `f`'s object: (read end, write end) above `base`, sized and
/// holding its bytes.
fn make(
    os: &impl Os,
    image: &Image<'static>,
    f: &FdRecord,
    path: &'static [u8],
    base: i32,
) -> Result<(i32, i32), CheckError> {
    let corrupt = |error| CheckError::Corrupt { error };
    let record = image
        .records::<PipeRecord>()
        .map_err(corrupt)?
        .object(f.object)
        .ok_or(CheckError::ObjectMissing { fd: f.fd })?;
    let data = image.string(record.data).map_err(corrupt)?;
    let (r, w) = if record.flags & pipe_flags::FIFO != 0 {
        // The read end first: opening a FIFO to write fails (ENXIO) while
        // it has no reader. Both stay non-blocking until the bytes are in
        // (the record's flags are set on each description afterwards).
        let nonblocking = sys::O_RDONLY | sys::O_NONBLOCK;
        let (r, st) = open_typed(os, "FIFO", path, nonblocking, sys::S_IFIFO, base)?;
        if st.dev != f.file.dev || st.ino != f.file.ino {
            os.close(r);
            return Err(CheckError::FileChanged { what: "FIFO", path });
        }
        // Bytes in it now were put there by another holder: writing the
        // saved ones after them would mix the two (and the FIFO is not
        // the task's alone).
        if os.bytes_waiting(r) != Ok(0) {
            os.close(r);
            return Err(CheckError::FifoInUse { path });
        }
        // The write end through the read end, not the path again: the
        // same FIFO, whatever the path names by now.
        let again = proc_self_fd(r);
        match os
            .open(
                again.as_bytes(),
                O_WRONLY | sys::O_NONBLOCK | sys::O_CLOEXEC,
            )
            .and_then(|w| lift(os, w, base))
        {
            Ok(w) => (r, w),
            Err(errno) => {
                os.close(r);
                return Err(CheckError::Object {
                    fd: f.fd,
                    step: "open the FIFO's write end",
                    errno,
                });
            }
        }
    } else {
        let (r, w) = os.pipe().map_err(failed(f, "create the pipe"))?;
        let lifted = lift(os, r, base).and_then(|r| Ok((r, lift(os, w, base)?)));
        lifted.map_err(failed(f, "move the pipe"))?
    };
    let fill = || -> Result<(), CheckError> {
        // Above pipe-max-size only CAP_SYS_RESOURCE may go, which a user's
        // image must not borrow from a root loader.
        let max = super::pipe_max_size(os);
        if record.size > max {
            return Err(CheckError::PipeTooBig {
                fd: f.fd,
                size: record.size,
                max,
            });
        }
        let size = os
            .set_pipe_size(w, record.size)
            .map_err(failed(f, "set the pipe's size"))?;
        if size < record.size || data.len() > usize::try_from(size).unwrap_or(usize::MAX) {
            return Err(CheckError::Object {
                fd: f.fd,
                step: "set the pipe's size",
                errno: Errno::EINVAL,
            });
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = os
                .write(w, rest)
                .map_err(failed(f, "write the pipe's buffered bytes"))?;
            if n == 0 {
                return Err(CheckError::Object {
                    fd: f.fd,
                    step: "write the pipe's buffered bytes",
                    errno: Errno::EIO,
                });
            }
            rest = rest.get(n..).unwrap_or(&[]);
        }
        Ok(())
    };
    if let Err(e) = fill() {
        os.close(r);
        os.close(w);
        return Err(e);
    }
    Ok((r, w))
}
