//! The kernel objects behind fds, one module per kind: each reads its
//! object's state through a copy of the task's fd (taken with
//! `pidfd_getfd`, so nothing of the task changes) and its
//! `/proc/P/fdinfo/N` lines, and says why when it cannot be kept.
//! [`crate::collect`] decides which fds share an object and calls these.
//! The loader's `objects` modules are their restoring halves.

pub mod epoll;
pub mod eventfd;
pub mod inotify;
pub mod pipe;
pub mod shmem;
pub mod signalfd;
pub mod socket;
pub mod terminal;
pub mod timerfd;

/// Why an object cannot be saved faithfully (a sentence naming the fd).
pub type Refusal = String;

/// The value of the first `key:` line of an fdinfo text.
pub fn fdinfo_value<'a>(fdinfo: &'a str, key: &str) -> Option<&'a str> {
    fdinfo.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values() {
        let text = "pos:\t0\nflags:\t02\neventfd-count:                5\n";
        assert_eq!(fdinfo_value(text, "eventfd-count"), Some("5"));
        assert_eq!(fdinfo_value(text, "flags"), Some("02"));
        assert_eq!(fdinfo_value(text, "nothing"), None);
    }
}
