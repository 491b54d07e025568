//! Classifying open file descriptors: what kind each is and whether crimg
//! can reopen it. Pure, unit-tested.

use image_format::records::fd_kind;
use image_format::text::Escaped;

/// `S_IFMT` and the file type bits.
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFIFO: u32 = 0o010000;
const S_IFSOCK: u32 = 0o140000;
const S_IFCHR: u32 = 0o020000;
const S_IFBLK: u32 = 0o060000;

/// True for the character-device majors of terminals: virtual consoles (4),
/// `/dev/tty` and `/dev/console` (5), Unix98 pty slaves (136–143).
pub fn is_tty_major(major: u32) -> bool {
    matches!(major, 4 | 5 | 136..=143)
}

/// The kind of an fd from its `/proc/P/fd/N` link and `st_mode`/`st_rdev`.
pub fn kind_of(link: &str, mode: u32, rdev_major: u32) -> u32 {
    if link.starts_with("pipe:") {
        return fd_kind::PIPE;
    }
    if link.starts_with("socket:") {
        return fd_kind::SOCKET;
    }
    if let Some(what) = link.strip_prefix("anon_inode:") {
        return match what {
            "[eventfd]" => fd_kind::EVENTFD,
            "[signalfd]" => fd_kind::SIGNALFD,
            "[timerfd]" => fd_kind::TIMERFD,
            "[eventpoll]" => fd_kind::EPOLL,
            "inotify" => fd_kind::INOTIFY,
            "[io_uring]" => fd_kind::IO_URING,
            _ => fd_kind::ANON_INODE,
        };
    }
    if link.starts_with("/memfd:") {
        return fd_kind::MEMFD;
    }
    match mode & S_IFMT {
        S_IFDIR => fd_kind::DIRECTORY,
        S_IFIFO => fd_kind::FIFO,
        S_IFSOCK => fd_kind::SOCKET,
        S_IFCHR if is_tty_major(rdev_major) => fd_kind::TTY,
        S_IFCHR => fd_kind::CHAR,
        S_IFBLK => fd_kind::BLOCK,
        S_IFREG => fd_kind::REGULAR,
        _ => fd_kind::ANON_INODE,
    }
}

/// Whether an fd of `kind` is one of crimg's objects: saved with its state
/// by a module of [`crate::objects`], which decides what it refuses.
pub fn is_object(kind: u32) -> bool {
    matches!(
        kind,
        fd_kind::PIPE
            | fd_kind::FIFO
            | fd_kind::EVENTFD
            | fd_kind::SIGNALFD
            | fd_kind::TIMERFD
            | fd_kind::EPOLL
            | fd_kind::INOTIFY
            | fd_kind::SOCKET
            | fd_kind::MEMFD
    )
}

/// Why fd `fd` of this kind cannot be restored faithfully, if it cannot
/// (objects: see [`is_object`]). Terminals and sockets on fds 0–2 are the
/// caller's on a direct run (ARCHITECTURE.md) and the orchestrator's in a
/// tree. The link comes from the target (a file name is anything it chose)
/// and is shown escaped.
pub fn unsupported_reason(fd: i32, kind: u32, deleted: bool, link: &str) -> Option<String> {
    let link = Escaped(link.as_bytes());
    match kind {
        _ if is_object(kind) => None,
        fd_kind::IO_URING => Some(format!(
            "fd {fd} is an io_uring instance ({link}): its rings and requests in flight cannot be saved"
        )),
        fd_kind::ANON_INODE => Some(format!("fd {fd} is {link}: this kind of file is not saved yet")),
        // Saved with its content (`objects::shmem`, under --ghost-limit).
        fd_kind::REGULAR if deleted => None,
        _ if deleted => Some(format!("fd {fd} refers to a deleted file ({link})")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        assert_eq!(kind_of("pipe:[123]", S_IFIFO, 0), fd_kind::PIPE);
        assert_eq!(kind_of("/tmp/fifo", S_IFIFO, 0), fd_kind::FIFO);
        assert_eq!(kind_of("socket:[9]", S_IFSOCK, 0), fd_kind::SOCKET);
        assert_eq!(kind_of("anon_inode:[eventfd]", 0o600, 0), fd_kind::EVENTFD);
        assert_eq!(kind_of("anon_inode:[eventpoll]", 0o600, 0), fd_kind::EPOLL);
        assert_eq!(kind_of("anon_inode:inotify", 0o600, 0), fd_kind::INOTIFY);
        assert_eq!(
            kind_of("anon_inode:[io_uring]", 0o600, 0),
            fd_kind::IO_URING
        );
        assert_eq!(kind_of("anon_inode:[pidfd]", 0o600, 0), fd_kind::ANON_INODE);
        assert_eq!(kind_of("/memfd:x (deleted)", S_IFREG, 0), fd_kind::MEMFD);
        assert_eq!(kind_of("/dev/pts/3", S_IFCHR, 136), fd_kind::TTY);
        assert_eq!(kind_of("/dev/null", S_IFCHR, 1), fd_kind::CHAR);
        assert_eq!(kind_of("/", S_IFDIR, 0), fd_kind::DIRECTORY);
        assert_eq!(kind_of("/etc/passwd", S_IFREG | 0o644, 0), fd_kind::REGULAR);
    }

    #[test]
    fn support() {
        assert_eq!(
            unsupported_reason(1, fd_kind::PIPE, false, "pipe:[1]"),
            None
        );
        // Pipes are objects: their module decides.
        assert_eq!(
            unsupported_reason(5, fd_kind::PIPE, false, "pipe:[1]"),
            None
        );
        assert!(unsupported_reason(5, fd_kind::IO_URING, false, "anon_inode:[io_uring]").is_some());
        // Sockets are objects too.
        assert_eq!(
            unsupported_reason(3, fd_kind::SOCKET, false, "socket:[1]"),
            None
        );
        // A deleted file is saved (objects::shmem); a deleted directory not.
        assert_eq!(
            unsupported_reason(3, fd_kind::REGULAR, true, "/tmp/x"),
            None
        );
        assert!(unsupported_reason(3, fd_kind::DIRECTORY, true, "/tmp/d").is_some());
        assert_eq!(
            unsupported_reason(3, fd_kind::REGULAR, false, "/tmp/x"),
            None
        );
        assert_eq!(
            unsupported_reason(0, fd_kind::TTY, false, "/dev/pts/0"),
            None
        );
    }

    #[test]
    fn a_link_from_the_target_is_shown_escaped() {
        let why = unsupported_reason(3, fd_kind::DIRECTORY, true, "/tmp/x\n\x1b[31mFAKE").unwrap();
        assert_eq!(
            why,
            "fd 3 refers to a deleted file (/tmp/x\\n\\x1b[31mFAKE)"
        );
    }
}
