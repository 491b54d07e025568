//! One-line diagnostics on stderr without allocation: formatted into a
//! fixed buffer and written with a single `write(2)` so lines from parallel
//! loaders do not interleave.

use core::fmt::{self, Write};

use crate::sys;

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

    /// Append the newline and write the line to stderr.
    pub fn emit(mut self) {
        self.buf[self.len] = b'\n';
        sys::write_all(2, &self.buf[..self.len + 1]);
    }
}

/// `/proc/self/fd/N`: the path that opens fd `fd`'s file again, on a new
/// open file description (or names it to a call taking a path).
pub fn proc_self_fd(fd: i32) -> Line {
    let mut path = Line::default();
    let _ = write!(path, "/proc/self/fd/{fd}");
    path
}

/// `crimg-loader: <image>: <what>` on stderr.
pub fn report(image: &[u8], what: fmt::Arguments<'_>) {
    let mut l = Line::default();
    let _ = l.write_str("crimg-loader: ");
    l.bytes(image);
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
