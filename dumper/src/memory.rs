//! Reading the frozen task's memory for the image writer: large
//! `process_vm_readv` calls, falling back to `/proc/P/mem` (which can read
//! `PROT_NONE` pages) for what that cannot read.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use image_writer::PageSource;

use crate::cancel::cancel_requested;
use crate::progress::Progress;
use crate::sys::process;

/// The page source of one frozen task.
pub struct TaskMemory<'a> {
    pub pid: i32,
    /// `/proc/P/mem`.
    pub mem: &'a File,
    pub progress: &'a mut dyn Progress,
}

impl PageSource for TaskMemory<'_> {
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        if cancel_requested() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "dump cancelled"));
        }
        let mut done = 0;
        while done < buf.len() {
            let at = addr + done as u64;
            match process::process_vm_read(self.pid, at, &mut buf[done..]) {
                Ok(n) if n > 0 => done += n,
                // Unreadable through the normal access checks (PROT_NONE,
                // or a fault): /proc/P/mem reads with FOLL_FORCE.
                Ok(_) | Err(_) => {
                    self.mem.read_exact_at(&mut buf[done..], at)?;
                    done = buf.len();
                }
            }
        }
        Ok(())
    }

    /// Batches of up to `IOV_MAX` ranges per `process_vm_readv`; where
    /// one stops short (a range it cannot read), the rest of that range
    /// goes through [`Self::read_pages`] (`/proc/P/mem`), and the batch
    /// goes on after it.
    fn read_pieces(&mut self, pieces: &[(u64, usize)], buf: &mut [u8]) -> io::Result<()> {
        /// `IOV_MAX`.
        const BATCH: usize = 1024;
        if cancel_requested() {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "dump cancelled"));
        }
        let mut next = 0;
        let mut at = 0;
        while next < pieces.len() {
            let batch = &pieces[next..pieces.len().min(next + BATCH)];
            let mut n = process::process_vm_read_many(self.pid, batch, &mut buf[at..]).unwrap_or(0);
            // Whole pieces read; then the one it stopped in, if any.
            for &(addr, len) in batch {
                if n >= len {
                    n -= len;
                    at += len;
                    next += 1;
                    continue;
                }
                let read = n;
                self.read_pages(addr + read as u64, &mut buf[at + read..at + len])?;
                at += len;
                next += 1;
                break;
            }
        }
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64) {
        self.progress.bytes(done, total);
    }
}
