//! The page server's loop: it holds the task's userfaultfd (and one per
//! child the task forks before the fill is done), answers each fault with
//! `UFFDIO_COPY` of the image's pages around it, copies everything else in
//! the background in large runs, and exits once every page is in (closing
//! a userfaultfd unregisters its areas).
//!
//! Its books are kept per memory map ([`Ctx`]), by image address: a bit
//! per stored page of the lazily filled runs, `done` once the page is in
//! or must never come from the image again (dropped with
//! `MADV_DONTNEED`/`MADV_REMOVE`, unmapped), and `removed` for the latter,
//! which a child forked later inherits. Pages moved with `mremap` keep
//! their image address in the books: the moves are replayed to find where
//! a page is now (forward) and which page a fault address is (backward).
//! A fault on an address with no pending page (a hole the image did not
//! store, a dropped page) gets a zero page, as an eager restore's memory
//! would read.
//!
//! The image's bytes are read with `pread` into the server's buffer (a
//! shorter file, truncated meanwhile, is one line and the task killed, not
//! a `SIGBUS` of a mapping), a whole segment at a time, and verified there
//! against its checksum before a page of it is copied, so what is copied
//! is what was verified. A segment of an incremental image is assembled
//! from its pieces ([`crate::plan::PageLoad`]s: the chain resolved it),
//! each read from the fd of the link of the chain (the image or one of its
//! parents, [`Link`]) that holds it. A segment larger than the buffer
//! (images of before segments were cut at 4 MiB) is verified once, then
//! read by chunks, which the read leases keep equal. Every link's lease is
//! polled: when a writer comes to one (the lease breaks; its open waits
//! `lease-break-time`), every map is filled at once. A mismatch kills the
//! task, with one line.

use crate::message;
use crate::plan::PageLoad;
use crate::sys::uffd::{self, UffdMsg};
use crate::sys::{self, Errno};

const PAGE: u64 = 4096;
/// Memory maps served at once: the task and the children it forks while
/// the fill runs. One more slot is kept for a child forked when all are
/// taken: that one is filled at once, completely, before anything else.
const MAX_CTX: usize = 256;
/// `mremap`s of lazily filled memory kept per memory map (moves of memory
/// with no page still to come are not kept, a move of what the last one
/// moved is merged into it); at [`EAGER_MOVES`] the map is filled at
/// once, so that the rest are room enough while it is.
const MAX_MOVES: usize = 256;
const EAGER_MOVES: usize = MAX_MOVES * 3 / 4;
/// Faults waiting for a copy the kernel refused for a moment (`EAGAIN`).
const MAX_RETRY: usize = 64;
/// The background fill's run, and what a fault brings in at once.
const BG_CHUNK: u64 = 2 << 20;
const FAULT_CHUNK: u64 = 64 << 10;
/// The largest segment read whole into the server's buffer.
const MAX_BUFFERED: u64 = 64 << 20;

const EAGAIN: Errno = Errno(11);
const ESRCH: Errno = Errno(3);
const ENOENT: Errno = Errno(2);

/// A stored page run the server fills: `len` bytes at `vaddr`, from
/// offset `offset` of the link open at `fd` (the image, or the parent
/// that holds them), in segment `seg` of the image; its pages are bits
/// `bit..` of the books.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Run {
    pub vaddr: u64,
    pub len: u64,
    pub offset: u64,
    pub seg: u32,
    pub fd: i32,
    pub bit: u64,
}

/// A segment of the image (memory `vaddr..vaddr + len`) and its recorded
/// checksum. Its bytes are the pieces of the server's `loads` in that
/// range: one at `offset` in the image, or, `from_parent`, those its
/// parents hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentSum {
    pub vaddr: u64,
    pub offset: u64,
    pub len: u64,
    pub sum: u64,
    pub from_parent: bool,
}

/// A link of the image's chain (0: the image, then its parents): its fd,
/// kept open and its lease polled, and its path for messages (a parent's
/// as its child recorded it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub fd: i32,
    pub path: &'static [u8],
}

#[derive(Clone, Copy, Debug, Default)]
struct Move {
    from: u64,
    to: u64,
    len: u64,
}

/// One memory map's userfaultfd and books.
struct Ctx {
    fd: i32,
    /// A pidfd of the first thread seen faulting in it (`ptid` of the
    /// fault, opened while that thread waits for the server, so it names
    /// it): killed with the task when the server cannot go on. -1: none
    /// yet (the task's own context uses the server's pidfd of the task).
    pidfd: i32,
    done: &'static mut [u64],
    removed: &'static mut [u64],
    moves: &'static mut [Move],
    nmoves: usize,
    /// Every bit below it is done.
    cursor: u64,
    retry: &'static mut [u64],
    nretry: usize,
    /// Fill it all now ([`EAGER_MOVES`] reached).
    eager: bool,
}

fn bit(map: &[u64], i: u64) -> bool {
    usize::try_from(i / 64)
        .ok()
        .and_then(|w| map.get(w))
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

fn set(map: &mut [u64], i: u64) {
    if let Some(w) = usize::try_from(i / 64).ok().and_then(|w| map.get_mut(w)) {
        *w |= 1 << (i % 64);
    }
}

impl Ctx {
    /// The image address of the page now at `addr` (the moves undone,
    /// newest first); `None` when a move vacated `addr` and none brought
    /// anything of the image there since (a `MREMAP_DONTUNMAP` source, or
    /// the range the kernel unmaps after a move).
    fn to_image(&self, mut addr: u64) -> Option<u64> {
        for m in self.moves[..self.nmoves].iter().rev() {
            if (m.to..m.to + m.len).contains(&addr) {
                addr = m.from + (addr - m.to);
            } else if (m.from..m.from + m.len).contains(&addr) {
                return None;
            }
        }
        Some(addr)
    }

    /// Where the page of image address `ia` is now, and for how many
    /// bytes from it that holds (up to a moved range's end).
    fn to_current(&self, mut ia: u64) -> (u64, u64) {
        let mut limit = u64::MAX;
        for m in &self.moves[..self.nmoves] {
            if (m.from..m.from + m.len).contains(&ia) {
                limit = limit.min(m.from + m.len - ia);
                ia = m.to + (ia - m.from);
            } else if ia < m.from {
                limit = limit.min(m.from - ia);
            }
        }
        (ia, limit)
    }
}

/// What one step of filling did.
enum Step {
    /// Pages went in (or there was nothing to do there).
    Done,
    /// The kernel said "not now" (`EAGAIN`: the map is changing; read
    /// its events first).
    Again,
    /// The memory map is gone (the process exited or exec'd).
    Gone,
}

/// The page server's state.
pub struct Server {
    pub name: &'static [u8],
    /// The task's pid (for messages) and a pidfd of it, through which
    /// it is killed on a checksum mismatch.
    pub pid: i32,
    pub pidfd: i32,
    /// The image and its parents, read with `pread` (their leases are
    /// polled).
    pub links: &'static [Link],
    /// Where every segment's bytes are, in address order (the plan's
    /// page loads: a segment's pieces, each with its link's fd).
    pub loads: &'static [PageLoad],
    pub runs: &'static [Run],
    pub segs: &'static [SegmentSum],
    pub verified: &'static mut [bool],
    /// Bits in the books (pages of all runs).
    pub pages: u64,
    ctxs: [Option<Ctx>; MAX_CTX + 1],
    /// Whether a fork was seen: from then on every segment is verified
    /// (all at the first fork), so that no checksum mismatch is found
    /// once there is a process the server cannot kill by a pidfd.
    forked: bool,
    /// The read buffer (made when serving starts), and the segment whose
    /// verified bytes it holds.
    buf: &'static mut [u8],
    buffered: Option<u32>,
    /// A link's lease broke (a writer waits): fill everything now.
    lease_broken: bool,
}

impl Server {
    pub fn new(
        name: &'static [u8],
        pid: i32,
        links: &'static [Link],
        loads: &'static [PageLoad],
        runs: &'static [Run],
        segs: &'static [SegmentSum],
        verified: &'static mut [bool],
    ) -> Server {
        let pages = runs.last().map_or(0, |r| r.bit + r.len / PAGE);
        Server {
            name,
            pid,
            pidfd: -1,
            links,
            loads,
            runs,
            segs,
            verified,
            pages,
            ctxs: [const { None }; MAX_CTX + 1],
            forked: false,
            buf: &mut [],
            buffered: None,
            lease_broken: false,
        }
    }

    fn books(&self) -> Option<&'static mut [u64]> {
        let words = usize::try_from(self.pages.div_ceil(64)).ok()?;
        sys::map_table::<u64>(words.max(1)).ok()
    }

    /// A context's tables: books, moves, retries; `None` without memory.
    fn new_ctx(&self, fd: i32) -> Option<Ctx> {
        Some(Ctx {
            fd,
            pidfd: -1,
            done: self.books()?,
            removed: self.books()?,
            moves: sys::map_table::<Move>(MAX_MOVES).ok()?,
            nmoves: 0,
            cursor: 0,
            retry: sys::map_table::<u64>(MAX_RETRY).ok()?,
            nretry: 0,
            eager: false,
        })
    }

    /// Something the server cannot go on from: one line, then every
    /// process it serves killed, and their pages not in yet poisoned
    /// (`UFFDIO_POISON`: a child whose pidfd the server never got dies of
    /// `SIGBUS` when it touches one, rather than read zeros once the
    /// server is gone).
    fn fatal(&self, what: core::fmt::Arguments<'_>) -> ! {
        message::report(self.name, what);
        uffd::kill_task(self.pidfd);
        for c in self.ctxs.iter().flatten() {
            if c.pidfd >= 0 {
                uffd::kill_task(c.pidfd);
            }
            self.poison_pending(c);
        }
        uffd::exit_thread(1)
    }

    /// Poison every page of `c` not in yet, where it is now.
    fn poison_pending(&self, c: &Ctx) {
        let mut b = c.cursor;
        while let Some(first) = self.next_pending(c, b) {
            let r = self.runs[self.runs.partition_point(|r| r.bit + r.len / PAGE <= first)];
            let mut ia = r.vaddr + (first - r.bit) * PAGE;
            let end = r.vaddr + r.len;
            while ia < end {
                let (dst, limit) = c.to_current(ia);
                let n = (end - ia).min(limit);
                // A page present already (`EEXIST`: a child's page it had
                // from its parent) stops the call: go on after it.
                let step = match uffd::poison(c.fd, dst, n) {
                    (done, Err(Errno::EEXIST)) => (done & !(PAGE - 1)) + PAGE,
                    _ => n,
                };
                ia += step.min(n);
            }
            b = r.bit + r.len / PAGE;
        }
    }

    /// Serve the task's userfaultfd `fd` until every page is in.
    pub fn serve(mut self, fd: i32) -> ! {
        let Some(ctx) = self.new_ctx(fd) else {
            self.fatal(format_args!(
                "lazy restore: no memory for the page server's books; the task (pid {}) was killed",
                self.pid
            ))
        };
        self.ctxs[0] = Some(ctx);
        let biggest = self
            .runs
            .iter()
            .map(|r| self.segs[r.seg as usize].len)
            .max();
        let want = biggest.unwrap_or(0).min(MAX_BUFFERED);
        match sys::map_scratch(usize::try_from(want).unwrap_or(0)) {
            Ok(buf) => self.buf = buf,
            Err(_) => self.fatal(format_args!(
                "lazy restore: no memory for the page server's buffer; the task (pid {}) was killed",
                self.pid
            )),
        }
        let mut turn = 0;
        loop {
            if self.ctxs.iter().all(Option::is_none) {
                uffd::exit_thread(0);
            }
            if !self.lease_broken && !self.links.iter().all(|l| sys::lease_intact(l.fd)) {
                // A writer waits for the image or a parent: everything in
                // before its open goes on (after `lease-break-time`).
                self.lease_broken = true;
                for c in self.ctxs.iter_mut().flatten() {
                    c.eager = true;
                }
            }
            for ci in 0..=MAX_CTX {
                self.drain(ci);
                self.retry_faults(ci);
                if self.ctxs[ci].as_ref().is_some_and(|c| c.eager) {
                    self.complete(ci);
                }
            }
            // One background run, for the memory maps in turn.
            let mut waiting = false;
            let mut progressed = false;
            for k in 0..=MAX_CTX {
                let ci = (turn + k) % (MAX_CTX + 1);
                if self.ctxs[ci].is_none() {
                    continue;
                }
                match self.background(ci) {
                    Some(Step::Done) => {
                        progressed = true;
                        turn = ci + 1;
                        break;
                    }
                    Some(Step::Again) => waiting = true,
                    Some(Step::Gone) => self.close(ci),
                    None => self.finish(ci),
                }
            }
            if waiting && !progressed {
                uffd::yield_now();
            }
        }
    }

    /// Every pending page of context `ci` is in: read what is left of its
    /// messages, then close its fd (which unregisters its areas).
    fn finish(&mut self, ci: usize) {
        self.drain(ci);
        self.retry_faults(ci);
        let pending = self.ctxs[ci]
            .as_ref()
            .is_some_and(|c| c.nretry > 0 || self.next_pending(c, c.cursor).is_some());
        if !pending {
            self.close(ci);
        }
    }

    fn close(&mut self, ci: usize) {
        if let Some(c) = self.ctxs[ci].take() {
            let _ = sys::close(c.fd);
            if c.pidfd >= 0 {
                let _ = sys::close(c.pidfd);
            }
            for t in [
                c.done as &mut [u64],
                c.removed as &mut [u64],
                c.retry as &mut [u64],
            ] {
                sys::unmap_table(t);
            }
            sys::unmap_table(c.moves);
        }
    }

    /// Fill every pending page of context `ci` now, then close it (a
    /// child forked while every slot is taken).
    fn complete(&mut self, ci: usize) {
        while self.ctxs[ci].is_some() {
            self.drain(ci);
            self.retry_faults(ci);
            match self.background(ci) {
                Some(Step::Done) => {}
                Some(Step::Again) => uffd::yield_now(),
                Some(Step::Gone) => self.close(ci),
                None => {
                    self.finish(ci);
                    if self.ctxs[ci].is_some() {
                        uffd::yield_now();
                    }
                }
            }
        }
    }

    /// Read and handle every message waiting on context `ci`'s fd.
    fn drain(&mut self, ci: usize) {
        let mut msgs = [UffdMsg::default(); 16];
        loop {
            let Some(fd) = self.ctxs[ci].as_ref().map(|c| c.fd) else {
                return;
            };
            let n = match uffd::read_msgs(fd, &mut msgs) {
                Ok(0) | Err(EAGAIN) => return,
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => self.fatal(format_args!(
                    "lazy restore: reading the userfaultfd failed: {e}; the task (pid {}) was killed",
                    self.pid
                )),
            };
            for m in &msgs[..n] {
                self.handle(ci, m);
            }
        }
    }

    fn handle(&mut self, ci: usize, m: &UffdMsg) {
        match m.event() {
            uffd::EVENT_PAGEFAULT => {
                let addr = m.arg[1] & !(PAGE - 1);
                self.note_thread(ci, m.arg[2]);
                if let Step::Again = self.fault(ci, addr) {
                    self.queue_retry(ci, addr);
                }
            }
            uffd::EVENT_REMOVE | uffd::EVENT_UNMAP => self.drop_range(ci, m.arg[0], m.arg[1]),
            uffd::EVENT_REMAP => self.moved(ci, m.arg[0], m.arg[1], m.arg[2]),
            uffd::EVENT_FORK => {
                let child = i32::try_from(m.arg[0] & 0xffff_ffff).unwrap_or(-1);
                self.forked(ci, child);
            }
            other => self.fatal(format_args!(
                "lazy restore: unknown userfaultfd event {other:#x}; the task (pid {}) was killed",
                self.pid
            )),
        }
    }

    /// The first fault of a child's context: a pidfd of the thread that
    /// took it (`ptid`, `UFFD_FEATURE_THREAD_ID`), which waits on this
    /// fault, so the number names it still.
    fn note_thread(&mut self, ci: usize, ptid: u64) {
        let Some(c) = self.ctxs[ci].as_mut() else {
            return;
        };
        if ci == 0 || c.pidfd >= 0 {
            return;
        }
        let Ok(tid) = i32::try_from(ptid & 0xffff_ffff) else {
            return;
        };
        if tid > 0 {
            c.pidfd = uffd::pidfd_open(tid, uffd::PIDFD_THREAD).unwrap_or(-1);
        }
    }

    fn queue_retry(&mut self, ci: usize, addr: u64) {
        let Some(c) = self.ctxs[ci].as_mut() else {
            return;
        };
        if c.nretry < MAX_RETRY {
            c.retry[c.nretry] = addr;
            c.nretry += 1;
        }
        // Else the background fill reaches the page and wakes its thread.
    }

    fn retry_faults(&mut self, ci: usize) {
        let n = self.ctxs[ci].as_ref().map_or(0, |c| c.nretry);
        let mut kept = 0;
        for i in 0..n {
            let Some(addr) = self.ctxs[ci].as_ref().map(|c| c.retry[i]) else {
                return;
            };
            if let Step::Again = self.fault(ci, addr) {
                if let Some(c) = self.ctxs[ci].as_mut() {
                    c.retry[kept] = addr;
                    kept += 1;
                }
            }
        }
        if let Some(c) = self.ctxs[ci].as_mut() {
            c.nretry = kept;
        }
    }

    /// The run holding image address `ia`.
    fn run_of(&self, ia: u64) -> Option<Run> {
        let i = self.runs.partition_point(|r| r.vaddr + r.len <= ia);
        self.runs.get(i).copied().filter(|r| r.vaddr <= ia)
    }

    /// A fault at `addr` (page-aligned) of context `ci`.
    fn fault(&mut self, ci: usize, addr: u64) -> Step {
        let Some(c) = self.ctxs[ci].as_ref() else {
            return Step::Done;
        };
        let fd = c.fd;
        let ia = c.to_image(addr).unwrap_or(u64::MAX);
        let pending = self.run_of(ia).and_then(|r| {
            let b = r.bit + (ia - r.vaddr) / PAGE;
            if bit(c.done, b) {
                return None;
            }
            // The pending pages from here, up to a chunk.
            let mut len = PAGE;
            while len < FAULT_CHUNK && ia + len < r.vaddr + r.len && !bit(c.done, b + len / PAGE) {
                len += PAGE;
            }
            Some((r, len))
        });
        if let Some((r, len)) = pending {
            return self.fill(ci, r, ia, len);
        }
        // Nothing to bring from the image: the page reads zeros.
        match uffd::zeropage(fd, addr, PAGE) {
            (_, Ok(())) | (_, Err(ENOENT)) => Step::Done,
            (_, Err(Errno::EEXIST)) => {
                let _ = uffd::wake(fd, addr, PAGE);
                Step::Done
            }
            (_, Err(EAGAIN)) => Step::Again,
            (_, Err(ESRCH)) => Step::Gone,
            (_, Err(e)) => self.fatal(format_args!(
                "lazy restore: a zero page at {addr:#x} failed: {e}; the task (pid {}) was killed",
                self.pid
            )),
        }
    }

    /// Segment `seg` ready to copy from: read whole into the buffer and
    /// verified (unless it is there already), or, when larger than the
    /// buffer, verified once by chunks. Its bytes are its pieces, each from
    /// its link, in address order (as its checksum was taken).
    fn load(&mut self, seg: u32) {
        let i = seg as usize;
        let Some(&s) = self.segs.get(i) else {
            return;
        };
        if self.buffered == Some(seg) {
            return;
        }
        let fits = s.len <= self.buf.len() as u64;
        if !fits && self.verified.get(i).copied().unwrap_or(true) {
            return;
        }
        self.buffered = None;
        let mut sum = image_format::Checksummer::new();
        let mut covered = 0;
        for l in pieces_of(self.loads, &s) {
            let mut at = 0;
            while at < l.len {
                let n = (l.len - at).min(self.buf.len() as u64);
                // Whole, each piece at its place in the segment.
                let from = if fits {
                    to_usize(l.vaddr - s.vaddr + at)
                } else {
                    0
                };
                let chunk = &mut self.buf[from..from + to_usize(n)];
                if let Err(e) = read_exact(l.fd, chunk, l.offset + at) {
                    self.short_read(l.fd, l.offset + at, n, e);
                }
                sum.update(chunk);
                at += n;
            }
            covered += l.len;
        }
        let found = sum.digest();
        if found != s.sum || covered != s.len {
            if s.from_parent {
                self.fatal(format_args!(
                    "lazy restore: checksum mismatch in segment {} of the image (memory at {:#x}, {} bytes, read from its parent images): recorded {:#018x}, computed {found:#018x}; the task (pid {}) was killed",
                    i + 1,
                    s.vaddr,
                    s.len,
                    s.sum,
                    self.pid
                ));
            }
            self.fatal(format_args!(
                "lazy restore: checksum mismatch in segment {} of the image (image offset {:#x}, {} bytes): recorded {:#018x}, computed {found:#018x}; the task (pid {}) was killed",
                i + 1,
                s.offset,
                s.len,
                s.sum,
                self.pid
            ));
        }
        if fits {
            self.buffered = Some(seg);
        }
        self.verified[i] = true;
    }

    /// What the link open at `fd` is, for messages.
    fn link_name(&self, fd: i32) -> LinkName {
        match self.links.iter().position(|l| l.fd == fd) {
            Some(0) | None => LinkName(None),
            Some(i) => LinkName(Some(self.links[i].path)),
        }
    }

    /// The link open at `fd` could not be read at `off` (`n` bytes): it
    /// was truncated or its disk failed.
    fn short_read(&self, fd: i32, off: u64, n: u64, e: Option<Errno>) -> ! {
        let link = self.link_name(fd);
        match e {
            Some(e) => self.fatal(format_args!(
                "lazy restore: reading {link} at offset {off:#x} ({n} bytes) failed: {e}; the task (pid {}) was killed",
                self.pid
            )),
            None => self.fatal(format_args!(
                "lazy restore: {link} ends before offset {:#x} (it was truncated); the task (pid {}) was killed",
                off + n,
                self.pid
            )),
        }
    }

    /// Copy the image's pages `ia..ia+len` (pending, in run `r`) to where
    /// they are now in context `ci`, marking each one in.
    fn fill(&mut self, ci: usize, r: Run, ia: u64, len: u64) -> Step {
        self.load(r.seg);
        let seg = self.segs.get(r.seg as usize).copied().unwrap_or_default();
        let whole = self.buffered == Some(r.seg);
        let (pid, pidfd) = (self.pid, self.pidfd);
        let Some(c) = self.ctxs[ci].as_mut() else {
            return Step::Done;
        };
        let buf = &mut *self.buf;
        let mut at = ia;
        let end = ia + len;
        while at < end {
            let (dst, limit) = c.to_current(at);
            let n = (end - at).min(limit);
            let off = r.offset + (at - r.vaddr);
            let n = n.min(buf.len() as u64);
            let src: &[u8] = if whole {
                // The buffer holds the segment's memory from its start.
                let from = to_usize(at - seg.vaddr);
                buf.get(from..from + to_usize(n)).unwrap_or(&[])
            } else {
                // A segment larger than the buffer: this chunk, read now
                // (verified as a whole once; the lease keeps it so).
                let chunk = &mut buf[..to_usize(n)];
                if let Err(e) = read_exact(r.fd, chunk, off) {
                    self.buffered = None;
                    self.short_read(r.fd, off, n, e);
                }
                chunk
            };
            let (copied, res) = uffd::copy(c.fd, dst, src);
            let copied = if res.is_ok() {
                n
            } else {
                copied.min(n) & !(PAGE - 1)
            };
            let first = r.bit + (at - r.vaddr) / PAGE;
            for p in 0..copied / PAGE {
                set(c.done, first + p);
            }
            at += copied;
            match res {
                Ok(()) => {}
                Err(Errno::EEXIST) | Err(ENOENT) => {
                    // The page is there already (a copy into a forked
                    // child: the parent had it), or its area is gone
                    // (unmapped; the event follows): nothing to bring.
                    let b = r.bit + (at - r.vaddr) / PAGE;
                    set(c.done, b);
                    let _ = uffd::wake(c.fd, dst + copied, PAGE);
                    at += PAGE;
                }
                Err(EAGAIN) => return Step::Again,
                Err(ESRCH) => return Step::Gone,
                Err(e) => {
                    message::report(
                        self.name,
                        format_args!(
                            "lazy restore: copying pages to {:#x} failed: {e}; the task (pid {pid}) was killed",
                            dst + copied
                        ),
                    );
                    uffd::kill_task(pidfd);
                    uffd::exit_thread(1)
                }
            }
        }
        Step::Done
    }

    /// The first pending page at or after bit `from`.
    fn next_pending(&self, c: &Ctx, from: u64) -> Option<u64> {
        let mut b = from;
        while b < self.pages {
            let w = usize::try_from(b / 64).ok()?;
            let word = c.done.get(w).copied().unwrap_or(u64::MAX) | ((1u64 << (b % 64)) - 1);
            if word != u64::MAX {
                let found = w as u64 * 64 + u64::from((!word).trailing_zeros());
                return (found < self.pages).then_some(found);
            }
            b = (b / 64 + 1) * 64;
        }
        None
    }

    /// One background run of context `ci`; `None` when all is in.
    fn background(&mut self, ci: usize) -> Option<Step> {
        let c = self.ctxs[ci].as_ref()?;
        let b = self.next_pending(c, c.cursor)?;
        let r = self.runs[self.runs.partition_point(|r| r.bit + r.len / PAGE <= b)];
        let ia = r.vaddr + (b - r.bit) * PAGE;
        let mut len = PAGE;
        while len < BG_CHUNK && ia + len < r.vaddr + r.len && !bit(c.done, b + len / PAGE) {
            len += PAGE;
        }
        if let Some(c) = self.ctxs[ci].as_mut() {
            c.cursor = b;
        }
        Some(self.fill(ci, r, ia, len))
    }

    /// `MADV_DONTNEED`/`MADV_REMOVE` or `munmap` of `start..end` (now's
    /// addresses) in context `ci`: those pages never come from the image
    /// again.
    fn drop_range(&mut self, ci: usize, start: u64, end: u64) {
        let runs = self.runs;
        let Some(c) = self.ctxs[ci].as_mut() else {
            return;
        };
        let mut a = start & !(PAGE - 1);
        while a < end {
            let Some(ia) = c.to_image(a) else {
                a += PAGE;
                continue;
            };
            let i = runs.partition_point(|r| r.vaddr + r.len <= ia);
            match runs.get(i) {
                Some(r) if r.vaddr <= ia => {
                    let b = r.bit + (ia - r.vaddr) / PAGE;
                    set(c.done, b);
                    set(c.removed, b);
                    a += PAGE;
                }
                // Without moves, skip straight to the next run.
                Some(r) if c.nmoves == 0 => a = r.vaddr.max(a + PAGE),
                None if c.nmoves == 0 => return,
                _ => a += PAGE,
            }
        }
    }

    /// Is a page of `start..start+len` (now's addresses) of `c` still to
    /// come from the image?
    fn any_pending(&self, c: &Ctx, start: u64, len: u64) -> bool {
        let mut a = start & !(PAGE - 1);
        while a < start + len {
            let pending = c
                .to_image(a)
                .and_then(|ia| self.run_of(ia))
                .is_some_and(|r| {
                    let ia = c.to_image(a).unwrap_or(r.vaddr);
                    !bit(c.done, r.bit + (ia - r.vaddr) / PAGE)
                });
            if pending {
                return true;
            }
            a += PAGE;
        }
        false
    }

    /// `mremap` moved `len` bytes from `from` to `to` in context `ci`.
    fn moved(&mut self, ci: usize, from: u64, to: u64, len: u64) {
        let pid = self.pid;
        let Some(c) = self.ctxs[ci].as_ref() else {
            return;
        };
        // Nothing still to come there: where it went matters no more (a
        // fault there reads zeros, as it would without the move).
        if !self.any_pending(c, from, len) {
            return;
        }
        let Some(c) = self.ctxs[ci].as_mut() else {
            return;
        };
        // Moved on again, at least all of it (realloc growing a block):
        // one move from where it was first.
        if let Some(last) = c.nmoves.checked_sub(1).map(|i| &mut c.moves[i]) {
            if last.to == from && len >= last.len {
                last.to = to;
                let done = last.len;
                if len > done {
                    self.moved(ci, from + done, to + done, len - done);
                }
                return;
            }
        }
        if c.nmoves == MAX_MOVES {
            self.fatal(format_args!(
                "lazy restore: more than {MAX_MOVES} mremaps of lazily filled memory before the fill ended; the task (pid {pid}) was killed"
            ));
        }
        c.moves[c.nmoves] = Move { from, to, len };
        c.nmoves += 1;
        c.eager |= c.nmoves >= EAGER_MOVES;
    }

    /// Context `ci` forked: the child's memory map, with its own fd,
    /// has the parent's pages, except those the parent had not got yet;
    /// it never gets the ones the parent dropped.
    fn forked(&mut self, ci: usize, child: i32) {
        let pid = self.pid;
        let slot = match self.ctxs[..MAX_CTX].iter().position(Option::is_none) {
            Some(slot) => slot,
            None if self.ctxs[MAX_CTX].is_none() => MAX_CTX,
            None => {
                let _ = sys::close(child);
                self.fatal(format_args!(
                    "lazy restore: more than {} processes forked before the fill ended; the task (pid {pid}) was killed",
                    MAX_CTX + 1
                ))
            }
        };
        let Some(new) = self.new_ctx(child) else {
            let _ = sys::close(child);
            self.fatal(format_args!(
                "lazy restore: no memory for a forked child's books; the task (pid {pid}) was killed"
            ))
        };
        let Some(parent) = self.ctxs[ci].as_ref() else {
            return;
        };
        new.done.copy_from_slice(parent.removed);
        new.removed.copy_from_slice(parent.removed);
        new.moves.copy_from_slice(parent.moves);
        let nmoves = parent.nmoves;
        self.ctxs[slot] = Some(Ctx { nmoves, ..new });
        if !self.forked {
            // From now on a mismatch could not be answered by killing
            // every process that holds the image's pages (a child's pidfd
            // comes with its first fault): find any now.
            self.forked = true;
            for seg in self.runs.iter().map(|r| r.seg) {
                self.load(seg);
            }
        }
        if slot == MAX_CTX {
            self.complete(slot);
        }
    }
}

/// The pieces of `loads` (in address order) that hold segment `s`.
fn pieces_of<'a>(loads: &'a [PageLoad], s: &SegmentSum) -> impl Iterator<Item = &'a PageLoad> {
    let first = loads.partition_point(|l| l.vaddr + l.len <= s.vaddr);
    let end = s.vaddr + s.len;
    loads[first..].iter().take_while(move |l| l.vaddr < end)
}

/// A link in messages: "the image", or "parent image PATH".
struct LinkName(Option<&'static [u8]>);

impl core::fmt::Display for LinkName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            None => f.write_str("the image"),
            Some(path) => write!(f, "parent image {}", message::Lossy(path)),
        }
    }
}

/// A length or offset within the buffer (a `usize` already, on x86_64).
fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `pread` all of `buf` from `fd` at `off`; `Err(None)` at end of file.
fn read_exact(fd: i32, buf: &mut [u8], off: u64) -> Result<(), Option<Errno>> {
    let mut done = 0;
    while done < buf.len() {
        match sys::pread(fd, &mut buf[done..], off + done as u64) {
            Ok(0) => return Err(None),
            Ok(n) => done += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Some(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_with(moves: &[Move]) -> Ctx {
        let c = Ctx {
            fd: -1,
            pidfd: -1,
            done: std::vec![0; 4].leak(),
            removed: std::vec![0; 4].leak(),
            moves: std::vec![Move::default(); MAX_MOVES].leak(),
            nmoves: moves.len(),
            cursor: 0,
            retry: std::vec![0; MAX_RETRY].leak(),
            nretry: 0,
            eager: false,
        };
        c.moves[..moves.len()].copy_from_slice(moves);
        c
    }

    #[test]
    fn moves_translate_both_ways() {
        let m = |from, to, len| Move { from, to, len };
        let c = ctx_with(&[m(0x10000, 0x50000, 0x4000), m(0x51000, 0x90000, 0x1000)]);
        // Moved once.
        assert_eq!(c.to_image(0x50000), Some(0x10000));
        assert_eq!(c.to_current(0x10000), (0x50000, 0x1000));
        assert_eq!(c.to_current(0x12000), (0x52000, 0x2000));
        // Moved twice: 0x11000 went to 0x51000, then to 0x90000.
        assert_eq!(c.to_image(0x90000), Some(0x11000));
        assert_eq!(c.to_current(0x11000), (0x90000, 0x1000));
        // Not moved: the same, up to the next moved range.
        assert_eq!(c.to_image(0x20000), Some(0x20000));
        // Vacated by a move: nothing of the image is there now.
        assert_eq!(c.to_image(0x10000), None);
        assert_eq!(c.to_image(0x51000), None);
        assert_eq!(c.to_current(0x8000), (0x8000, 0x8000));
    }

    #[test]
    fn moves_of_nothing_pending_are_dropped_and_chains_merged() {
        let runs: &'static [Run] = std::vec![
            Run {
                vaddr: 0x10000,
                len: 8 * PAGE,
                offset: 0,
                seg: 0,
                fd: -1,
                bit: 0
            },
            Run {
                vaddr: 0x1000000,
                len: 240 * PAGE,
                offset: 8 * PAGE,
                seg: 0,
                fd: -1,
                bit: 8
            }
        ]
        .leak();
        let mut s = Server::new(b"t", 0, &[], &[], runs, &[], std::vec![false; 1].leak());
        let mut c = ctx_with(&[]);
        c.done = std::vec![0; 8].leak();
        c.removed = std::vec![0; 8].leak();
        s.ctxs[0] = Some(c);
        // Back and forth 100 times (realloc's pattern): one move.
        let (home, spot, len) = (0x14000, 0x90000, 4 * PAGE);
        for i in 0..100 {
            let (from, to) = if i % 2 == 0 {
                (home, spot)
            } else {
                (spot, home)
            };
            s.moved(0, from, to, len);
        }
        let c = s.ctxs[0].as_ref().unwrap();
        assert_eq!(c.nmoves, 1);
        assert_eq!(c.to_current(0x14000), (home, len));
        // Grown as it moves on: the first part merged, the new tail (no
        // image page there) not kept.
        s.moved(0, home, 0xa0000, 2 * len);
        let c = s.ctxs[0].as_ref().unwrap();
        assert_eq!(c.nmoves, 1);
        assert_eq!(c.to_current(0x15000), (0xa1000, 3 * PAGE));
        assert_eq!(c.to_image(0xa2000), Some(0x16000));
        // Pages all in: a move of them is not kept.
        let c = s.ctxs[0].as_mut().unwrap();
        for b in 0..4 {
            set(c.done, b);
        }
        s.moved(0, 0x10000, 0xb0000, len);
        assert_eq!(s.ctxs[0].as_ref().unwrap().nmoves, 1);
        // Distinct moves of pending pages are kept, one each, until the
        // map is to be filled at once.
        for i in 1..EAGER_MOVES as u64 {
            let c = s.ctxs[0].as_ref().unwrap();
            assert!(!c.eager);
            s.moved(0, 0x1000000 + i * PAGE, 0x2000000 + 2 * i * PAGE, PAGE);
        }
        let c = s.ctxs[0].as_ref().unwrap();
        assert!(c.eager, "{} moves", c.nmoves);
    }

    #[test]
    fn next_pending_skips_done_pages() {
        let runs: &'static [Run] = std::vec![
            Run {
                vaddr: 0x1000,
                len: 70 * PAGE,
                offset: 0,
                seg: 0,
                fd: -1,
                bit: 0
            },
            Run {
                vaddr: 0x100000,
                len: 2 * PAGE,
                offset: 70 * PAGE,
                seg: 1,
                fd: -1,
                bit: 70
            }
        ]
        .leak();
        let s = Server::new(b"t", 0, &[], &[], runs, &[], std::vec![false; 2].leak());
        assert_eq!(s.pages, 72);
        let c = ctx_with(&[]);
        assert_eq!(s.next_pending(&c, 0), Some(0));
        for b in 0..66 {
            set(c.done, b);
        }
        assert_eq!(s.next_pending(&c, 0), Some(66));
        set(c.done, 66);
        set(c.done, 68);
        assert_eq!(s.next_pending(&c, 60), Some(67));
        for b in 0..72 {
            set(c.done, b);
        }
        assert_eq!(s.next_pending(&c, 0), None);
    }

    /// Two files standing for links of a chain, with `pages` pages of
    /// distinct bytes each; their fds and their bytes.
    fn link_files(name: &str, pages: u64) -> ([i32; 2], [std::vec::Vec<u8>; 2]) {
        use std::os::fd::IntoRawFd;
        let bytes = [0u8, 1].map(|k| {
            (0..pages * PAGE)
                .map(|i| u8::try_from(i / 7 % 256).unwrap() ^ (k * 0x5a))
                .collect::<std::vec::Vec<u8>>()
        });
        let fds = [0, 1].map(|k| {
            let path = std::env::temp_dir().join(std::format!(
                "crimg-server-{name}-{}-{k}",
                std::process::id()
            ));
            std::fs::write(&path, &bytes[k]).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            std::fs::remove_file(&path).unwrap();
            file.into_raw_fd()
        });
        (fds, bytes)
    }

    #[test]
    fn a_segment_is_verified_over_its_pieces_read_from_their_links() {
        let ([image, parent], [ib, pb]) = link_files("pieces", 3);
        let page = |b: &[u8], i: u64| b[to_usize(i * PAGE)..to_usize((i + 1) * PAGE)].to_vec();
        // Segment 1 of the image (from its parents): its three pages are
        // the parent's page 2, the image's page 0, the parent's page 0;
        // segment 0 is the image's own page 1.
        let loads: &'static [PageLoad] = std::vec![
            PageLoad {
                vaddr: 0x10000,
                offset: PAGE,
                len: PAGE,
                fd: image,
                _pad: 0
            },
            PageLoad {
                vaddr: 0x20000,
                offset: 2 * PAGE,
                len: PAGE,
                fd: parent,
                _pad: 0
            },
            PageLoad {
                vaddr: 0x21000,
                offset: 0,
                len: PAGE,
                fd: image,
                _pad: 0
            },
            PageLoad {
                vaddr: 0x22000,
                offset: 0,
                len: PAGE,
                fd: parent,
                _pad: 0
            },
        ]
        .leak();
        let want = [page(&pb, 2), page(&ib, 0), page(&pb, 0)].concat();
        let segs: &'static [SegmentSum] = std::vec![
            SegmentSum {
                vaddr: 0x10000,
                offset: PAGE,
                len: PAGE,
                sum: image_format::checksum(&page(&ib, 1)),
                from_parent: false,
            },
            SegmentSum {
                vaddr: 0x20000,
                offset: 0,
                len: 3 * PAGE,
                sum: image_format::checksum(&want),
                from_parent: true,
            },
        ]
        .leak();
        let links: &'static [Link] = std::vec![
            Link {
                fd: image,
                path: b"task-1.crimg"
            },
            Link {
                fd: parent,
                path: b"../1/task-1.crimg"
            },
        ]
        .leak();
        assert_eq!(
            pieces_of(loads, &segs[1])
                .copied()
                .collect::<std::vec::Vec<_>>(),
            loads[1..]
        );
        assert_eq!(pieces_of(loads, &segs[0]).count(), 1);
        // Whole in the buffer: each piece at its place in the segment.
        let mut s = Server::new(b"t", 0, links, loads, &[], segs, std::vec![false; 2].leak());
        s.buf = std::vec![0u8; to_usize(4 * PAGE)].leak();
        s.load(1);
        assert_eq!(s.buffered, Some(1));
        assert!(s.verified[1] && !s.verified[0]);
        assert!(s.buf[..to_usize(3 * PAGE)] == want[..]);
        s.load(0);
        assert_eq!(s.buffered, Some(0));
        assert!(s.buf[..to_usize(PAGE)] == page(&ib, 1)[..]);
        // Larger than the buffer: verified by chunks, once, not buffered.
        let mut s = Server::new(b"t", 0, links, loads, &[], segs, std::vec![false; 2].leak());
        s.buf = std::vec![0u8; to_usize(2 * PAGE)].leak();
        s.load(1);
        assert_eq!(s.buffered, None);
        assert!(s.verified[1]);
        // Messages name the link read.
        assert_eq!(std::format!("{}", s.link_name(image)), "the image");
        assert_eq!(
            std::format!("{}", s.link_name(parent)),
            "parent image ../1/task-1.crimg"
        );
        for fd in [image, parent] {
            let _ = sys::close(fd);
        }
    }
}
