//! One-line diagnostics on stderr without allocation: formatted into a
//! fixed buffer and written with a single `write(2)` so lines from parallel
//! loaders do not interleave.
//!
//! Lines go to fd 2, or to the fd `--report E` names ([`set_report_fd`]):
//! run by the tree restorer, the loader's messages go to the restorer,
//! which relays them naming the pid.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicI32, Ordering};

use crate::sys;

/// The fd every line goes to: 2 unless `--report` named another.
static REPORT_FD: AtomicI32 = AtomicI32::new(2);

/// Run by the tree restorer (`--report`): the loader's pid (its image's:
/// the restorer made it with that pid), which every line starts with,
/// since the lines of every loader of the tree share one pipe and the
/// image is named by an fd (`/proc/self/fd/N`). 0: a direct run.
static REPORT_PID: AtomicI32 = AtomicI32::new(0);

/// Send every later line to `fd` instead of fd 2.
pub fn set_report_fd(fd: i32) {
    REPORT_FD.store(fd, Ordering::Relaxed);
}

/// Run by the tree restorer: every later line names this process's pid
/// instead of the image.
pub fn name_lines_by_pid() {
    REPORT_PID.store(sys::getpid(), Ordering::Relaxed);
}

/// The fd lines go to (2, or the `--report` fd).
pub fn report_fd() -> i32 {
    REPORT_FD.load(Ordering::Relaxed)
}

/// A line under construction; longer text is cut.
pub struct Line {
    buf: [u8; 1024],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Line {
            buf: [0; 1024],
            len: 0,
        }
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Keep one byte for the newline.
        let room = self.buf.len() - 1 - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Line {
    /// Bytes from the image or the command line (paths), escaped.
    pub fn bytes(&mut self, b: &[u8]) {
        let _ = write!(self, "{}", Escaped(b));
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Append the newline and write the line to stderr (or the
    /// `--report` fd).
    pub fn emit(mut self) {
        self.buf[self.len] = b'\n';
        sys::write_all(report_fd(), &self.buf[..self.len + 1]);
    }
}

/// `/proc/self/fd/N`: the path that opens fd `fd`'s file again, on a new
/// open file description (or names it to a call taking a path).
pub fn proc_self_fd(fd: i32) -> Line {
    let mut path = Line::default();
    let _ = write!(path, "/proc/self/fd/{fd}");
    path
}

/// `crimg-loader: <image>: <what>` on stderr; to a `--report` fd,
/// `crimg-loader: pid <pid>: <what>`.
pub fn report(image: &[u8], what: fmt::Arguments<'_>) {
    let mut l = Line::default();
    let _ = l.write_str("crimg-loader: ");
    match REPORT_PID.load(Ordering::Relaxed) {
        0 => l.bytes(image),
        pid => {
            let _ = write!(l, "pid {pid}");
        }
    }
    let _ = l.write_str(": ");
    let _ = l.write_fmt(what);
    l.emit();
}

/// Bytes from the image (paths, names) shown with control bytes escaped,
/// so a message stays one line and cannot drive the terminal.
pub use image_format::text::Escaped;
/// The former name of [`Escaped`].
pub use image_format::text::Escaped as Lossy;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_fd_paths() {
        assert_eq!(proc_self_fd(7).as_bytes(), b"/proc/self/fd/7");
        assert_eq!(proc_self_fd(1234).as_bytes(), b"/proc/self/fd/1234");
        assert_eq!(proc_self_fd(0).as_bytes(), b"/proc/self/fd/0");
    }
}
