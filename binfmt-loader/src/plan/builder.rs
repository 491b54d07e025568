//! The plan's writer: appends [`Op`]s to the window's op array, each with
//! its failure message, and hands out room in the window's data area for
//! what the ops point at (frames, auxv, sigactions, clone args).

use core::fmt::{self, Write as _};

use zerocopy::{FromBytes, IntoBytes};

use super::abi::{op_kind, Op};
use super::window::LABEL_BYTES;
use super::{PlanError, ThreadClone};

pub(super) struct Builder<'w> {
    pub(super) ops: &'w mut [Op],
    pub(super) n: usize,
    pub(super) data: &'w mut [u8],
    pub(super) data_addr: u64,
    pub(super) used: usize,
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl Builder<'_> {
    fn full(&self) -> PlanError {
        PlanError::PlanFull { ops: self.n }
    }

    /// The offset in the data area of window address `addr` (which the
    /// builder handed out).
    pub(super) fn data_offset(&self, addr: u64) -> Result<usize, PlanError> {
        addr.checked_sub(self.data_addr)
            .and_then(|off| usize::try_from(off).ok())
            .ok_or(self.full())
    }

    /// A length the plan computed, as a slice length.
    pub(super) fn size(&self, len: u64) -> Result<usize, PlanError> {
        usize::try_from(len).map_err(|_| self.full())
    }

    pub(super) fn alloc(
        &mut self,
        len: usize,
        align: usize,
    ) -> Result<(u64, &mut [u8]), PlanError> {
        let addr = self.data_addr + self.used as u64;
        // Less than `align`, so it fits.
        let pad =
            usize::try_from(addr.wrapping_neg() & (align as u64 - 1)).map_err(|_| self.full())?;
        let start = self.used + pad;
        let end = start.checked_add(len).ok_or(self.full())?;
        if end > self.data.len() {
            return Err(self.full());
        }
        self.used = end;
        Ok((self.data_addr + start as u64, &mut self.data[start..end]))
    }

    pub(super) fn put(&mut self, bytes: &[u8], align: usize) -> Result<u64, PlanError> {
        let (addr, buf) = self.alloc(bytes.len(), align)?;
        buf.copy_from_slice(bytes);
        Ok(addr)
    }

    pub(super) fn label(
        &mut self,
        index: usize,
        what: fmt::Arguments<'_>,
    ) -> Result<(u64, u64), PlanError> {
        let (addr, buf) = self.alloc(LABEL_BYTES, 1)?;
        let mut c = Cursor { buf, len: 0 };
        let _ = write!(c, "crimg-loader: restore failed at op {index} ({what}): ");
        let len = c.len;
        // Give back the unused tail of the label.
        self.used -= LABEL_BYTES - len;
        Ok((addr, len as u64))
    }

    pub(super) fn op(
        &mut self,
        kind: u32,
        rule: u32,
        nr: u64,
        args: [u64; 6],
        expect: u64,
        what: fmt::Arguments<'_>,
    ) -> Result<(), PlanError> {
        if self.n >= self.ops.len() {
            return Err(self.full());
        }
        let (label, label_len) = self.label(self.n, what)?;
        self.ops[self.n] = Op {
            kind,
            rule,
            nr,
            args,
            expect,
            label,
            label_len,
        };
        self.n += 1;
        Ok(())
    }

    pub(super) fn sys(
        &mut self,
        rule: u32,
        nr: u64,
        args: [u64; 6],
        what: fmt::Arguments<'_>,
    ) -> Result<(), PlanError> {
        self.op(op_kind::SYSCALL, rule, nr, args, 0, what)
    }

    /// A syscall whose result must be `expect` (`mmap`/`mremap` at a fixed
    /// address).
    pub(super) fn sys_eq(
        &mut self,
        nr: u64,
        args: [u64; 6],
        expect: u64,
        what: fmt::Arguments<'_>,
    ) -> Result<(), PlanError> {
        self.op(
            op_kind::SYSCALL,
            super::abi::rule::EQ,
            nr,
            args,
            expect,
            what,
        )
    }

    /// Entry `k` of the [`ThreadClone`] table at `table` (window address).
    pub(super) fn clone_at(&self, table: u64, k: usize) -> Result<ThreadClone, PlanError> {
        let off = self.data_offset(table)? + k * core::mem::size_of::<ThreadClone>();
        self.data
            .get(off..)
            .and_then(|b| ThreadClone::read_from_prefix(b).ok())
            .map(|(c, _)| c)
            .ok_or(self.full())
    }

    pub(super) fn set_clone(
        &mut self,
        table: u64,
        k: usize,
        c: ThreadClone,
    ) -> Result<(), PlanError> {
        let off = self.data_offset(table)? + k * core::mem::size_of::<ThreadClone>();
        let full = self.full();
        self.data
            .get_mut(off..off + core::mem::size_of::<ThreadClone>())
            .ok_or(full)?
            .copy_from_slice(c.as_bytes());
        Ok(())
    }
}
