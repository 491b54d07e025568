//! The plan's part of a lazy restore (`--lazy`, `crate::lazy`): which
//! stored pages are left to the page server, the registration of their
//! areas with the task's userfaultfd, and the hand-over of that fd to the
//! server (`sendmsg` `SCM_RIGHTS` over the socketpair stage 1 made), after
//! which the plan closes its own copies: the task keeps no fd of it.
//!
//! Lazily filled: the stored pages of private anonymous areas that the
//! eager fill would copy with `UFFDIO_COPY` ([`super::copies_by_uffd`]:
//! not a stack, not droppable, not advised `MADV_HUGEPAGE`), and that are
//! not `PROT_NONE` (a copied page takes the area's protections), not
//! locked (`mlock` would fault every page in before the server has the
//! fd: a deadlock) and not `MADV_WIPEONFORK` (a child of the task must
//! see zeros there, not the image). Every other page is read in by the
//! plan, before the task runs, as in an eager restore.

use image_format::records::vma_flags;
use zerocopy::IntoBytes;

use super::abi::{int_arg, rule};
use super::builder::Builder;
use super::vmas::{is_copied, pieces};
use super::{PageLoad, PlanError, PlanInput, TargetVma};
use crate::sys::{self, nr, uffd};

/// What stage 1 prepared for a lazy restore: the task's userfaultfd
/// (`uffd::open_for_lazy`), the plan's end of the socketpair to the page
/// server, and the server's end (closed by the loader once the server is
/// forked, `crate::lazy::start_server`; the plan leaves it alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LazyFill {
    pub uffd: i32,
    pub sock: i32,
    pub server: i32,
}

/// The ops and data bytes the hand-over needs at most, for the window's
/// layout: a register per area, the send, two closes.
pub fn ops_for(vmas: usize) -> usize {
    2 * vmas + 3
}
pub fn data_for(vmas: usize) -> usize {
    (uffd::REGISTER_SIZE + 8) * vmas + 128
}

/// May the pages of `v` be left to the page server (its kind, flags and
/// protections; see [`is_lazy_area`] for its size)?
pub fn is_lazy_vma(v: &TargetVma) -> bool {
    super::copies_by_uffd(v)
        && v.prot != 0
        && v.flags & (vma_flags::LOCKED | vma_flags::WIPEONFORK) == 0
}

/// An area with fewer stored bytes than this is read in before the task
/// runs: a few faults, each a round trip to the server, cost more than
/// reading it (a small process then restores as an eager one, with no
/// server at all).
pub const LAZY_WORTH: u64 = 2 << 20;

/// Without `--lazy` or `--eager`, a direct run is lazy when at least this
/// much would be left to the server (`crate::args::LoaderArgs::auto_lazy`):
/// from there an eager restore keeps the task waiting for long (measured
/// here: 1 GiB in 0.38 s, so about 95 ms for this), a lazy one resumes it
/// in a few milliseconds whatever its size. Below it the eager one is
/// kept: the lazy one's whole fill is slower (1 GiB fully in 0.48 s), and
/// while it lasts the process cannot be dumped and a `SIGKILL` of the
/// server would leave zeros.
pub const AUTO_LAZY_MIN: u64 = 256 << 20;

/// The bytes of `loads` (sorted) inside `v`.
pub fn stored_in(loads: &[PageLoad], v: &TargetVma) -> u64 {
    let first = loads.partition_point(|l| l.vaddr + l.len <= v.start);
    loads[first..]
        .iter()
        .take_while(|l| l.vaddr < v.end)
        .map(|l| (l.vaddr + l.len).min(v.end) - l.vaddr.max(v.start))
        .sum()
}

/// Is area `v`, with its stored pages among `loads`, filled by the server?
pub fn is_lazy_area(v: &TargetVma, loads: &[PageLoad]) -> bool {
    is_lazy_vma(v) && stored_in(loads, v) >= LAZY_WORTH
}

/// Does any area of `vmas` get its pages from the server (else a lazy
/// restore is an eager one: no userfaultfd, no server)?
pub fn any_lazy(vmas: &[TargetVma], loads: &[PageLoad]) -> bool {
    vmas.iter().any(|v| is_lazy_area(v, loads))
}

/// The pieces of `input` (stored page runs cut to their areas), each
/// with whether the server fills it.
fn pieces_sorted<'a>(
    input: &PlanInput<'a>,
) -> impl Iterator<Item = (PageLoad, &'a TargetVma, bool)> + 'a {
    let loads = input.loads;
    // The verdict of the last area seen (pieces come area by area).
    let mut last: Option<(u64, bool)> = None;
    pieces(input).map(move |(p, v)| {
        let lazy_area = match last {
            Some((start, lazy)) if start == v.start => lazy,
            _ => {
                let lazy = is_lazy_area(v, loads);
                last = Some((v.start, lazy));
                lazy
            }
        };
        (p, v, lazy_area && is_copied(&p, v))
    })
}

/// The stored page runs the server fills, in address order, each with
/// the fd of the link of the chain it is read from.
pub fn lazy_pieces<'a>(input: &PlanInput<'a>) -> impl Iterator<Item = PageLoad> + 'a {
    pieces_sorted(input)
        .filter(|(_, _, lazy)| *lazy)
        .map(|(p, _, _)| p)
}

/// Step 3b of a lazy restore: the stored pages the server does not fill,
/// read in now; the areas it fills registered (missing mode); the fd sent
/// to the server; the plan's copies of it and of the socket closed.
pub(super) fn fill_and_hand_over(
    b: &mut Builder<'_>,
    input: &PlanInput<'_>,
    lazy: LazyFill,
) -> Result<(), PlanError> {
    let mut last = None;
    for (p, v, served) in pieces_sorted(input) {
        if !served {
            b.op(
                super::abi::op_kind::PREAD_ALL,
                rule::OK,
                nr::PREAD64,
                // From the link of the chain that holds them.
                [int_arg(p.fd), p.vaddr, p.len, p.offset, 0, 0],
                0,
                format_args!("pread pages {:#x}+{:#x}", p.vaddr, p.len),
            )?;
            continue;
        }
        if last == Some(v.start) {
            continue;
        }
        last = Some(v.start);
        super::vmas::register_missing(b, lazy.uffd, v)?;
    }
    // One byte of data carries the fd (`SCM_RIGHTS` needs some).
    let byte = b.put(&[b'u', 0, 0, 0, 0, 0, 0, 0], 8)?;
    let iov = b.put([byte, 1].as_bytes(), 8)?;
    // `struct cmsghdr` { len 20, SOL_SOCKET, SCM_RIGHTS } and the fd.
    let mut cmsg = [0u8; 24];
    cmsg[..8].copy_from_slice(&20u64.to_le_bytes());
    cmsg[8..12].copy_from_slice(&1u32.to_le_bytes());
    cmsg[12..16].copy_from_slice(&1u32.to_le_bytes());
    cmsg[16..20].copy_from_slice(&lazy.uffd.to_le_bytes());
    let control = b.put(&cmsg, 8)?;
    // `struct msghdr`: no name, one iovec, the control message.
    let msg = [0, 0, iov, 1, control, 24, 0];
    let msg = b.put(msg.as_bytes(), 8)?;
    b.sys_eq(
        uffd::NR_SENDMSG,
        [int_arg(lazy.sock), msg, 0, 0, 0, 0],
        1,
        format_args!("sendmsg userfaultfd {} to the page server", lazy.uffd),
    )?;
    for (fd, what) in [
        (lazy.uffd, "userfaultfd"),
        (lazy.sock, "page server socket"),
    ] {
        b.sys(
            rule::OK,
            sys::nr::CLOSE,
            [int_arg(fd), 0, 0, 0, 0, 0],
            format_args!("close {what} {fd}"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::records::{prot, vma_kind};

    fn anon(start: u64, end: u64) -> TargetVma {
        TargetVma {
            start,
            end,
            pgoff: 0,
            prot: prot::READ | prot::WRITE,
            flags: 0,
            kind: vma_kind::ANON,
            fd: -1,
        }
    }

    #[test]
    fn only_big_private_anonymous_areas_are_lazy() {
        const MIB: u64 = 1 << 20;
        let big = anon(0x1000_0000, 0x1000_0000 + 8 * MIB);
        let small = anon(0x2000_0000, 0x2000_0000 + 8 * MIB);
        let loads = [
            PageLoad {
                vaddr: big.start,
                offset: 0x10000,
                len: 2 * MIB,
                fd: -1,
                _pad: 0,
            },
            PageLoad {
                vaddr: big.start + 4 * MIB,
                offset: 0x10000 + 2 * MIB,
                len: MIB,
                fd: -1,
                _pad: 0,
            },
            PageLoad {
                vaddr: small.start,
                offset: 0x10000 + 3 * MIB,
                len: MIB,
                fd: -1,
                _pad: 0,
            },
        ];
        assert_eq!(stored_in(&loads, &big), 3 * MIB);
        assert_eq!(stored_in(&loads, &small), MIB);
        assert!(is_lazy_area(&big, &loads));
        assert!(!is_lazy_area(&small, &loads));
        assert!(any_lazy(&[big, small], &loads));
        assert!(!any_lazy(&[small], &loads));
        // Not locked, not PROT_NONE, not a file, not wiped on fork.
        for v in [
            TargetVma {
                flags: vma_flags::LOCKED,
                ..big
            },
            TargetVma {
                flags: vma_flags::WIPEONFORK,
                ..big
            },
            TargetVma { prot: 0, ..big },
            TargetVma { fd: 5, ..big },
            TargetVma {
                kind: vma_kind::STACK,
                flags: vma_flags::GROWSDOWN,
                ..big
            },
        ] {
            assert!(!is_lazy_area(&v, &loads), "{v:?}");
        }
    }
}
