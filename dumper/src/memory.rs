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

    fn progress(&mut self, done: u64, total: u64) {
        self.progress.bytes(done, total);
    }
}
