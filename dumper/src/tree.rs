//! A process tree dumped as one: the root crdump was given and all its
//! descendants, frozen together ([`freeze`]), each collected as a process
//! of the tree, then the objects several of them hold found across the
//! processes ([`shared`]) for the manifest; their images are written in
//! parallel ([`parallel`]).

pub mod freeze;
pub mod parallel;
pub mod shared;

use std::io;

use crate::freeze::FreezeError;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("pid {pid}: {why}; the tree was left running")]
    Refused { pid: i32, why: String },
    #[error("pid {pid}: cannot read {path}: {source}")]
    Read {
        pid: i32,
        path: String,
        #[source]
        source: io::Error,
    },
    /// A process in `vfork()` (`waiter`, waiting for its child to exec or
    /// exit), or its child: [`freeze::freeze_tree`] waits a little for the
    /// vfork to end and freezes the tree again.
    #[error("pid {pid}: {why}; the tree was left running")]
    InVfork { pid: i32, waiter: i32, why: String },
    #[error(transparent)]
    Freeze(#[from] FreezeError),
}

/// The fds of process `pid` that are on one open file description with a
/// stdio fd of the root that the loader takes from the caller (`root_fds`:
/// the root's collected fds): (fd, the root's fd). Found among the fds with
/// the same link in `index`, compared with `kcmp`.
pub fn caller_fds(
    root: i32,
    root_fds: &[image_writer::model::FdState],
    pid: i32,
    index: &crate::collect::fd_index::FdIndex,
) -> Vec<(i32, i32)> {
    let mut out: Vec<(i32, i32)> = Vec::new();
    for f in root_fds
        .iter()
        .filter(|f| binfmt_loader::rules::fd_is_inherited(&f.record))
    {
        for (p, fd) in index.with_link(&f.path) {
            if p == pid
                && !out.iter().any(|&(o, _)| o == fd)
                && crate::sys::fds::same_description_across(root, f.record.fd, pid, fd)
                    .unwrap_or(false)
            {
                out.push((fd, f.record.fd));
            }
        }
    }
    out.sort_unstable();
    out
}
