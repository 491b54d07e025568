//! Stage 1's tables in one zeroed anonymous mapping (the loader has no
//! heap), sized from the types they hold: [`Tables::bytes`] is the sum of
//! `n * size_of::<T>()` plus the worst-case alignment padding of each table
//! [`Scratch::take`] hands out, and a `take` that does not fit is an
//! error, never a shorter slice (which a `zip` would turn into a plan
//! without page contents).

use core::mem::{align_of, size_of};

use image_format::records::{ItimerRecord, PendingSignalRecord, RlimitRecord, SigactionRecord};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::CheckError;
use crate::plan::{FdMove, PageLoad, Range, TargetVma};

/// The most `/proc/self/maps` lines of the loader's own layout.
pub const MAX_MAPS: usize = 512;
/// The most bytes of `/proc/self/maps` text read (a fuller read is refused:
/// the list may be cut).
pub const MAPS_TEXT: usize = 32 * 1024;
/// Records stage 1 keeps at most (the rules refuse more: `validate`).
pub const MAX_SIGACTIONS: usize = 64;
pub const MAX_RLIMITS: usize = 16;
pub const MAX_ITIMERS: usize = 3;

/// A file stage 1 opened for VMAs: its identity, whether the fd is
/// read-write, and the fd.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct OpenedFile {
    pub dev: u64,
    pub ino: u64,
    pub rw: u32,
    pub fd: i32,
}

/// A regular file an fd of the task had open, for finding two fds of one
/// file (sorted by identity).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FdFile {
    pub dev: u64,
    pub ino: u64,
    pub fd: i32,
    pub _pad: u32,
}

/// How many entries each of stage 1's tables holds.
/// The fd an open file description was made at (for the fds after the
/// first that share it).
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DescFrom {
    pub desc: u32,
    pub from: i32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub vmas: usize,
    pub segments: usize,
    pub fds: usize,
    pub pending: usize,
    pub sigactions: usize,
    pub rlimits: usize,
    pub itimers: usize,
    pub epoll_items: usize,
    /// Shared memory objects (`objects::shmem`).
    pub shmem: usize,
}

/// Bytes for `n` values of `T` wherever the previous table ended.
fn table_bytes<T>(n: usize) -> Option<usize> {
    n.checked_mul(size_of::<T>())?
        .checked_add(align_of::<T>() - 1)
}

impl Tables {
    /// The scratch size that holds every table [`super::check`] takes.
    pub fn bytes(&self) -> Option<usize> {
        let parts = [
            table_bytes::<SigactionRecord>(self.sigactions)?,
            table_bytes::<RlimitRecord>(self.rlimits)?,
            table_bytes::<ItimerRecord>(self.itimers)?,
            table_bytes::<PendingSignalRecord>(self.pending)?,
            table_bytes::<TargetVma>(self.vmas)?,
            table_bytes::<OpenedFile>(self.vmas)?,
            table_bytes::<PageLoad>(self.segments)?,
            table_bytes::<FdMove>(self.fds)?,
            table_bytes::<i32>(self.fds)?,
            table_bytes::<i32>(self.shmem)?,
            table_bytes::<crate::plan::LateSeal>(self.shmem)?,
            table_bytes::<FdFile>(self.fds)?,
            table_bytes::<DescFrom>(self.fds)?,
            table_bytes::<crate::objects::MadeObject>(self.fds)?,
            table_bytes::<crate::objects::terminal::TerminalSetup>(self.fds)?,
            // The pending signals again, with a SIGWINCH for a terminal.
            table_bytes::<PendingSignalRecord>(self.pending.checked_add(1)?)?,
            table_bytes::<crate::plan::EpollAdd>(self.epoll_items)?,
            table_bytes::<crate::plan::TimerfdArm>(self.fds)?,
            table_bytes::<crate::plan::InotifyDrain>(self.fds)?,
            table_bytes::<u8>(MAPS_TEXT)?,
            table_bytes::<Range>(MAX_MAPS)?,
            // The window search's: target VMAs, loader maps, 4 more.
            table_bytes::<Range>(self.vmas.checked_add(MAX_MAPS + 4)?)?,
        ];
        parts.iter().try_fold(0usize, |a, &b| a.checked_add(b))
    }
}

/// A bump allocator over zeroed scratch memory.
pub struct Scratch {
    rest: &'static mut [u8],
}

impl Scratch {
    pub fn new(mem: &'static mut [u8]) -> Scratch {
        Scratch { rest: mem }
    }

    /// Map scratch memory for `tables`.
    pub fn map(tables: &Tables) -> Result<Scratch, CheckError> {
        let bytes = tables.bytes().ok_or(CheckError::ScratchShort {
            table: "all",
            items: usize::MAX,
        })?;
        let mem = crate::sys::map_scratch(bytes).map_err(|errno| CheckError::Scratch { errno })?;
        Ok(Scratch::new(mem))
    }

    /// `n` zeroed values of `T`, or [`CheckError::ScratchShort`] when the
    /// rest is too small (a sizing bug: [`Tables::bytes`] missed a table).
    pub fn take<T: FromBytes + IntoBytes + KnownLayout + Immutable>(
        &mut self,
        table: &'static str,
        n: usize,
    ) -> Result<&'static mut [T], CheckError> {
        let pad = (self.rest.as_ptr() as usize).wrapping_neg() & (align_of::<T>() - 1);
        let short = CheckError::ScratchShort { table, items: n };
        let fits = n
            .checked_mul(size_of::<T>())
            .and_then(|len| len.checked_add(pad))
            .is_some_and(|end| end <= self.rest.len());
        if !fits {
            return Err(short);
        }
        let rest = core::mem::take(&mut self.rest);
        let (_, rest) = rest.split_at_mut(pad);
        match <[T]>::mut_from_prefix_with_elems(rest, n) {
            Ok((items, rest)) => {
                self.rest = rest;
                Ok(items)
            }
            // Aligned and long enough: checked above.
            Err(_) => Err(short),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leak(len: usize) -> &'static mut [u8] {
        std::vec![0u8; len].leak()
    }

    /// What `check` takes, in its order.
    fn take_all(s: &mut Scratch, t: &Tables) -> Result<(), CheckError> {
        s.take::<SigactionRecord>("sigactions", t.sigactions)?;
        s.take::<RlimitRecord>("rlimits", t.rlimits)?;
        s.take::<ItimerRecord>("itimers", t.itimers)?;
        s.take::<PendingSignalRecord>("pending", t.pending)?;
        s.take::<TargetVma>("vmas", t.vmas)?;
        s.take::<OpenedFile>("opened", t.vmas)?;
        s.take::<PageLoad>("loads", t.segments)?;
        s.take::<FdMove>("fd moves", t.fds)?;
        s.take::<i32>("kept fds", t.fds)?;
        s.take::<i32>("objects", t.shmem)?;
        s.take::<crate::plan::LateSeal>("late seals", t.shmem)?;
        s.take::<FdFile>("fd files", t.fds)?;
        s.take::<DescFrom>("descriptions", t.fds)?;
        s.take::<crate::objects::MadeObject>("objects", t.fds)?;
        s.take::<crate::plan::EpollAdd>("epoll items", t.epoll_items)?;
        s.take::<crate::plan::TimerfdArm>("timerfd arms", t.fds)?;
        s.take::<crate::plan::InotifyDrain>("inotify drains", t.fds)?;
        s.take::<u8>("maps text", MAPS_TEXT)?;
        s.take::<Range>("loader maps", MAX_MAPS)?;
        s.take::<Range>("window search", t.vmas + MAX_MAPS + 4)?;
        Ok(())
    }

    #[test]
    fn a_short_scratch_is_an_error_not_an_empty_table() {
        // Room for four loads and a little more, not five.
        let mut s = Scratch::new(leak(4 * size_of::<PageLoad>() + 4));
        assert!(matches!(
            s.take::<PageLoad>("loads", 5),
            Err(CheckError::ScratchShort {
                table: "loads",
                items: 5
            })
        ));
        // What did fit is still there for the next table.
        assert_eq!(
            s.take::<PageLoad>("loads", 4).map(|t| t.len()).ok(),
            Some(4)
        );
    }

    #[test]
    fn the_sized_scratch_holds_every_table_at_any_alignment() {
        // Many records of every table, one of each, none; misaligned starts.
        for t in [
            Tables::default(),
            Tables {
                vmas: 1000,
                segments: 3000,
                fds: 70,
                pending: 200,
                sigactions: 64,
                rlimits: 16,
                itimers: 3,
                epoll_items: 500,
                shmem: 40,
            },
            Tables {
                vmas: 1,
                segments: 1,
                fds: 1,
                pending: 1,
                sigactions: 1,
                rlimits: 1,
                itimers: 1,
                epoll_items: 1,
                shmem: 1,
            },
        ] {
            let bytes = t.bytes().unwrap();
            for skew in 0..8 {
                let mem = leak(bytes + skew);
                let mut s = Scratch::new(&mut mem[skew..]);
                take_all(&mut s, &t).unwrap();
            }
            // One whole table less is refused somewhere, not cut short.
            // (More than the alignment slack the sum keeps.)
            if t.segments * size_of::<PageLoad>() > 256 {
                let mem = leak(bytes - t.segments * size_of::<PageLoad>());
                let mut s = Scratch::new(mem);
                assert!(take_all(&mut s, &t).is_err());
            }
        }
    }
}
