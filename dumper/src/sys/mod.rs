//! The raw system calls the dumper makes: thin, documented wrappers around
//! `libc`, each returning `std::io::Result` with the kernel's errno. This is
//! the only place with `unsafe` code; everything above it is safe Rust over
//! plain data.

pub mod dirs;
pub mod event_objects;
pub mod fds;
pub mod pagemap_scan;
pub mod process;
pub mod ptrace;
pub mod search;
pub mod sock_diag;
pub mod sockets;
pub mod tty;
