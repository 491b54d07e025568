//! Pipes and FIFOs: their size and buffered bytes, copied with `tee(2)`
//! from a copy of the read end, which leaves them in the pipe.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};

use crate::sys::fds;

use super::Refusal;

/// A bigger pipe is refused rather than half copied (the loader's rules
/// refuse one too).
pub const MAX_PIPE_BYTES: u32 = image_format::records::MAX_PIPE_SIZE;

/// What a pipe holds: its capacity and buffered bytes, in order.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Buffered {
    pub size: u32,
    pub data: Vec<u8>,
}

/// The size of the pipe `end` (a copy of the task's fd `fd`) is on, and
/// no bytes: for a pipe nobody can read any more.
pub fn size_only(fd: i32, end: &OwnedFd) -> Result<Buffered, Refusal> {
    let size = fds::pipe_size(end.as_fd())
        .map_err(|e| format!("fd {fd}: cannot read the pipe's size: {e}"))?;
    if size > MAX_PIPE_BYTES {
        return Err(format!(
            "fd {fd} is a pipe of {size} bytes, more than the {MAX_PIPE_BYTES} crimg saves"
        ));
    }
    Ok(Buffered {
        size,
        data: Vec::new(),
    })
}

/// The size and buffered bytes of the pipe whose read end (a copy of the
/// task's fd `fd`) is `read_end`, without consuming them.
pub fn buffered(fd: i32, read_end: &OwnedFd) -> Result<Buffered, Refusal> {
    let fail =
        |what: &str, e: std::io::Error| format!("fd {fd}: cannot read the pipe's {what}: {e}");
    let empty = size_only(fd, read_end)?;
    let size = empty.size;
    let waiting = fds::bytes_waiting(read_end.as_fd()).map_err(|e| fail("byte count", e))?;
    if waiting == 0 {
        return Ok(empty);
    }
    // A pipe as big as the task's holds as many buffers as it does, so one
    // tee copies them all (tee counts buffers, not bytes).
    let (copy_r, copy_w) = fds::pipe().map_err(|e| fail("contents (pipe)", e))?;
    let got = fds::set_pipe_size(copy_w.as_fd(), size).map_err(|e| fail("contents (size)", e))?;
    if got < size {
        return Err(format!(
            "fd {fd}: a {size}-byte pipe to copy into got only {got}"
        ));
    }
    let copied = fds::tee(read_end.as_fd(), copy_w.as_fd(), waiting)
        .map_err(|e| fail("contents (tee)", e))?;
    if copied != waiting {
        return Err(format!(
            "fd {fd}: tee copied {copied} of the {waiting} bytes buffered in the pipe"
        ));
    }
    drop(copy_w);
    let mut data = Vec::with_capacity(waiting);
    std::fs::File::from(copy_r)
        .read_to_end(&mut data)
        .map_err(|e| fail("contents (read)", e))?;
    if data.len() != waiting {
        return Err(format!(
            "fd {fd}: read {} of the {waiting} bytes copied from the pipe",
            data.len()
        ));
    }
    Ok(Buffered { size, data })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn copies_the_buffered_bytes_and_leaves_them() {
        let (r, w) = fds::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        // Several writes: several pipe buffers.
        for i in 0..100u8 {
            w.write_all(&[i; 333]).unwrap();
        }
        let b = buffered(3, &r).unwrap();
        assert_eq!(b.size, 65536);
        assert_eq!(b.data.len(), 33300);
        assert!(b
            .data
            .chunks(333)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&x| usize::from(x) == i)));
        // Still there.
        assert_eq!(fds::bytes_waiting(r.as_fd()).unwrap(), 33300);
    }

    #[test]
    fn an_empty_pipe_has_no_bytes() {
        let (r, _w) = fds::pipe().unwrap();
        assert_eq!(buffered(3, &r).unwrap().data, Vec::<u8>::new());
    }
}
