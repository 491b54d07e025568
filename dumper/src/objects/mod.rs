//! Kernel objects behind fds and areas, one module per kind: how each is
//! found and saved.

pub mod shmem;
