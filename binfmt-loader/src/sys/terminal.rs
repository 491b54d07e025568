//! The terminal ioctls of stage 1 and the plan: the window size of a
//! terminal fd (also the test that it is a terminal); the request numbers
//! the plan's `TCSETS`/`TIOCSWINSZ` operations use.

use image_format::records::Winsize;

use super::{int_arg, result, syscall6, Errno};

/// `ioctl` (x86_64).
pub const IOCTL: u64 = 16;
/// `TCSETS`: set the termios now (not waiting for output to drain, which a
/// stopped terminal could make forever).
pub const TCSETS: u64 = 0x5402;
pub const TIOCGWINSZ: u64 = 0x5413;
pub const TIOCSWINSZ: u64 = 0x5414;

/// `ioctl(fd, TIOCGWINSZ, &ws)`: the terminal's window size; ENOTTY when
/// `fd` is not a terminal.
///
/// # References
/// `ioctl_tty(2)`.
pub fn window_size(fd: i32) -> Result<Winsize, Errno> {
    let mut ws = Winsize::default();
    // SAFETY: the kernel writes one `struct winsize` (8 bytes, the layout
    // of `Winsize`) into `ws`, which lives through the call.
    let r = unsafe {
        syscall6(
            IOCTL,
            int_arg(fd),
            TIOCGWINSZ,
            core::ptr::from_mut(&mut ws) as u64,
            0,
            0,
            0,
        )
    };
    result(r).map(|_| ws)
}
