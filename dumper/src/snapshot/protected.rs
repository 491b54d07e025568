//! The write-protected snapshot: a userfaultfd of the task, armed while
//! it runs, so that the freeze does not pay for its memory (see the module
//! doc of [`crate::snapshot`]).
//!
//! ```text
//! running:  stop the task for a moment: userfaultfd() injected, copied
//!           here (pidfd_getfd), closed there; resume
//!           register its private anonymous areas (MODE_WP), protect them;
//!           the handler thread unprotects each page written, noting it;
//!           a few passes protect the noted pages again
//! frozen:   the pages noted since protected again (the snapshot point);
//!           the areas not registered whole copied now
//! resumed:  the registered areas read from the task; the handler saves a
//!           page before its first write (the writer waits), and a saved
//!           page wins over what the reader read
//! written:  the uffd closed: the kernel unregisters and unprotects
//! ```
//!
//! Every unprotect before the snapshot point is noted under the lock,
//! so the pages taken at the snapshot point are all the unprotected ones.
//! After it, the handler marks a page saved before it unprotects it: a
//! page the reader finds not saved after its read was protected, hence
//! unchanged, during the read. An `madvise(MADV_DONTNEED)`, `munmap` or
//! `mremap` of a range not read yet after the snapshot point may have
//! taken the snapshot's content with it (the task goes on once the event is
//! read): the snapshot is lost, and the dump is tried again (as a fork
//! snapshot; a stream, which has sent bytes already, fails instead).

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use image_format::records::{vma_flags, vma_kind, VmaRecord};
use image_format::PAGE_SIZE;
use image_writer::model::VmaState;

use super::DeferredArea;
use crate::freeze::Frozen;
use crate::incremental::{sys, track};
use crate::procfs::smaps::{self, SmapsEntry};
use crate::vmas;

/// [`PAGE_SIZE`] as a buffer length.
const PAGE_LEN: usize = 4096;
const _: () = assert!(PAGE_LEN as u64 == PAGE_SIZE);

/// Passes protecting again the pages written meanwhile, before the freeze.
const PASSES: usize = 4;
/// No further pass once fewer pages than this were written meanwhile.
const FEW_PAGES: usize = 256;
/// Protection also marks the pages not there yet (`WP_UNPOPULATED`), which
/// fills page tables: an area is registered only if it is at most twice
/// its resident memory plus this (a sparse reservation is copied frozen).
const SPARSE_SLACK: u64 = 64 << 20;
/// At most this much memory of sparse areas (not registered, so copied
/// while frozen, page run by page run) for the write-protected snapshot:
/// beyond it a fork, which copies only their populated page tables, keeps
/// the task frozen for less (an AddressSanitizer build's shadow memory:
/// 32 MiB one page apart took 75 ms frozen here, the fork 7 ms).
const SPARSE_FROZEN_MAX: u64 = 8 << 20;
/// The features asked of the uffd: faults reported (not `WP_ASYNC`), the
/// events that remove memory, no `EVENT_FORK`.
const FEATURES: u64 = sys::UFFD_FEATURE_EVENT_REMAP
    | sys::UFFD_FEATURE_EVENT_REMOVE
    | sys::UFFD_FEATURE_EVENT_UNMAP
    | sys::UFFD_FEATURE_WP_UNPOPULATED;

#[derive(Default)]
struct State {
    /// The snapshot point is passed: a fault saves its page first.
    after: bool,
    /// Before it: the pages unprotected since their last protection.
    dirty: Vec<u64>,
    /// Before it: ranges an event unmapped, moved or emptied.
    changed: Vec<(u64, u64)>,
    /// After it: the ranges whose pages are read from the running task
    /// (sorted), and those of them read (sorted, merged).
    live: Vec<(u64, u64)>,
    read: Vec<(u64, u64)>,
    /// Pages saved before their first write after the snapshot point.
    saved: BTreeMap<u64, Vec<u8>>,
    saved_count: u64,
    /// Why pages not read yet may have lost their snapshot content.
    lost: Option<String>,
    /// The writer reads each page twice (a stream: checksums first): the
    /// saved pages are kept, and a page read once still needs saving.
    rereads: bool,
}

/// Whether `addr` lies in one of `ranges` (sorted, disjoint).
fn contains(ranges: &[(u64, u64)], addr: u64) -> bool {
    let i = ranges.partition_point(|r| r.1 <= addr);
    ranges.get(i).is_some_and(|r| r.0 <= addr)
}

/// Whether `[start, end)` meets a part of `live` that is not in `read`.
fn meets_unread(live: &[(u64, u64)], read: &[(u64, u64)], start: u64, end: u64) -> bool {
    live.iter().any(|&(s, e)| {
        let (s, e) = (s.max(start), e.min(end));
        if s >= e {
            return false;
        }
        // Covered by one merged read range, or not.
        let i = read.partition_point(|r| r.1 <= s);
        !read.get(i).is_some_and(|r| r.0 <= s && e <= r.1)
    })
}

/// Add `[start, end)` to `ranges` (sorted, merged).
fn add_range(ranges: &mut Vec<(u64, u64)>, start: u64, end: u64) {
    let i = ranges.partition_point(|r| r.1 < start);
    let mut j = i;
    let (mut s, mut e) = (start, end);
    while j < ranges.len() && ranges[j].0 <= e {
        s = s.min(ranges[j].0);
        e = e.max(ranges[j].1);
        j += 1;
    }
    ranges.splice(i..j, [(s, e)]);
}

/// `pages` (sorted) as runs of consecutive pages.
fn runs_of(pages: &mut [u64]) -> Vec<(u64, u64)> {
    pages.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages.iter() {
        match out.last_mut() {
            Some(last) if last.1 >= p => last.1 = last.1.max(p + PAGE_SIZE),
            _ => out.push((p, p + PAGE_SIZE)),
        }
    }
    out
}

fn is_eagain(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EAGAIN)
}

/// Protect `[start, start + len)`, again while the kernel reports the mm
/// changing (an event not read yet: the handler reads it). `Ok(false)`:
/// some of the range is no longer registered (`ENOENT`: the kernel stops
/// at the first area that is not, leaving the rest unprotected), so the
/// caller counts the whole range as changed.
fn protect(uffd: BorrowedFd<'_>, start: u64, len: u64) -> io::Result<bool> {
    for _ in 0..10_000 {
        match sys::write_protect(uffd, start, len) {
            Err(e) if is_eagain(&e) => std::thread::sleep(Duration::from_micros(50)),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
            r => return r.map(|()| true),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

struct Shared {
    uffd: OwnedFd,
    state: Mutex<State>,
    /// The task's `/proc/P/mem`, for the pages saved.
    mem: File,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A write fault on the page at `page`: noted and unprotected before
    /// the snapshot point; after it, saved first (if its snapshot content
    /// is still needed). `Err(EAGAIN)`: to be done again, after the
    /// pending events are read.
    fn fault(&self, page: u64) -> io::Result<()> {
        let uffd = self.uffd.as_fd();
        let mut st = self.lock();
        if !st.after {
            // Under the lock: the snapshot point takes every page
            // unprotected before it.
            st.dirty.push(page);
            return sys::unprotect(uffd, page, PAGE_SIZE);
        }
        let wanted = contains(&st.live, page)
            && (st.rereads || !contains(&st.read, page))
            && !st.saved.contains_key(&page);
        drop(st);
        if wanted {
            // Still protected: its content is the snapshot's.
            let mut bytes = vec![0u8; PAGE_LEN];
            match self.mem.read_exact_at(&mut bytes, page) {
                Ok(()) => {
                    let mut st = self.lock();
                    if st.rereads || !contains(&st.read, page) {
                        st.saved.insert(page, bytes);
                        st.saved_count += 1;
                    }
                }
                Err(e) => {
                    self.lock().lost = Some(format!("saving the page at {page:#x}: {e}"));
                }
            }
        }
        sys::unprotect(uffd, page, PAGE_SIZE)
    }

    /// An event that took `[start, end)` away (or moved it).
    fn removed(st: &mut State, what: &str, start: u64, end: u64) {
        if !st.after {
            st.changed.push((start, end));
        } else if st.lost.is_none()
            && meets_unread(
                &st.live,
                if st.rereads { &[] } else { &st.read },
                start,
                end,
            )
        {
            st.lost = Some(format!(
                "{what} of {start:#x}-{end:#x} by the task before its pages were read"
            ));
        }
    }

    /// One message of the uffd, `st` locked since before it was read.
    fn message(st: &mut State, m: &[u8], retry: &mut Vec<u64>) {
        let arg = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&m[8 + 8 * i..16 + 8 * i]);
            u64::from_le_bytes(b)
        };
        match m[0] {
            sys::UFFD_EVENT_PAGEFAULT => retry.push(arg(1) & !(PAGE_SIZE - 1)),
            sys::UFFD_EVENT_REMOVE => Self::removed(st, "madvise", arg(0), arg(1)),
            sys::UFFD_EVENT_UNMAP => Self::removed(st, "munmap", arg(0), arg(1)),
            sys::UFFD_EVENT_REMAP => {
                let (from, to, len) = (arg(0), arg(1), arg(2));
                Self::removed(st, "mremap", from, from.saturating_add(len));
                Self::removed(st, "mremap", to, to.saturating_add(len));
            }
            _ => {}
        }
    }
}

/// The handler thread: serves faults and events until `stop` is readable
/// (its peer closed).
fn serve(shared: &Shared, stop: &UnixStream) {
    let mut buf = vec![0u8; sys::UFFD_MSG_LEN * 64];
    let mut faults: Vec<u64> = Vec::new();
    // Faults to serve again (the mm was changing), with their tries.
    let mut pending: Vec<(u64, u32)> = Vec::new();
    loop {
        if pending.is_empty() {
            match sys::poll_two(shared.uffd.as_fd(), stop.as_fd()) {
                Ok((_, true)) => return,
                Ok(_) => {}
                Err(e) => {
                    shared.lock().lost = Some(format!("polling the userfaultfd: {e}"));
                    return;
                }
            }
        } else {
            std::thread::sleep(Duration::from_micros(50));
        }
        loop {
            // Locked from before the read to the end of what it read: the
            // kernel lets a task's `madvise` go on (and empty the range)
            // as soon as its event is read, so the snapshot must be known
            // lost before the reader may count a read of that range
            // (`patch` takes the lock too).
            let mut st = shared.lock();
            match sys::read_messages(shared.uffd.as_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    for m in buf[..n].chunks_exact(sys::UFFD_MSG_LEN) {
                        Shared::message(&mut st, m, &mut faults);
                    }
                }
                Err(e) => {
                    st.lost = Some(format!("reading the userfaultfd: {e}"));
                    return;
                }
            }
        }
        pending.extend(faults.drain(..).map(|page| (page, 0)));
        let mut again = Vec::new();
        for (page, tries) in pending.drain(..) {
            match shared.fault(page) {
                // Not forever: the handler must stop when asked (the
                // writer then waits for the uffd's close, which wakes it).
                Err(e) if is_eagain(&e) && tries < 10_000 => again.push((page, tries + 1)),
                // ENOENT: unmapped meanwhile (an event says so); anything
                // else leaves the writer blocked until the uffd closes.
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    shared.lock().lost = Some(format!("unprotecting {page:#x}: {e}"));
                }
                _ => {}
            }
        }
        pending = again;
    }
}

/// The armed write-protections of this crdump, by pid: crdump's own
/// writes into a task's memory (an injection's scratch bytes, through
/// `/proc/P/mem`) cannot wait for a handler the way the task's do (a
/// remote write into a protected page fails with EIO), so each first
/// unprotects the pages it writes, as a fault would ([`before_write`]).
static ARMED: Mutex<Vec<(i32, std::sync::Weak<Shared>)>> = Mutex::new(Vec::new());

/// Before crdump writes `[addr, addr + len)` of process `pid`'s memory:
/// where a write-protection of this crdump covers it, the pages are
/// unprotected as a write fault would unprotect them (noted before the
/// snapshot point, saved first after it).
pub fn before_write(pid: i32, addr: u64, len: u64) {
    let armed: Vec<Arc<Shared>> = ARMED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(p, _)| *p == pid)
        .filter_map(|(_, w)| w.upgrade())
        .collect();
    for shared in armed {
        let mut page = addr & !(PAGE_SIZE - 1);
        while page < addr + len {
            for _ in 0..10_000 {
                match shared.fault(page) {
                    Err(e) if is_eagain(&e) => std::thread::sleep(Duration::from_micros(50)),
                    _ => break,
                }
            }
            page += PAGE_SIZE;
        }
    }
}

/// An armed write-protection of one process: its uffd and handler.
pub struct Protected {
    pid: i32,
    shared: Arc<Shared>,
    stop: Option<UnixStream>,
    handler: Option<JoinHandle<()>>,
    /// The ranges registered and protected whole.
    registered: Vec<(u64, u64)>,
    /// How long the task was stopped to make the uffd.
    pub stopped: Duration,
    /// Pages protected again by the passes before the freeze.
    pub passes: Vec<usize>,
    marker: u64,
}

/// Whether the write-protected snapshot takes area `e` (read while the
/// task ran): private anonymous memory a fork copies as it is, with
/// something in it, not so sparse that its markers would cost much.
fn wanted_area(e: &SmapsEntry) -> bool {
    forkable_area(e) && !sparse(e)
}

/// Private anonymous memory a fork copies as it is, with something in it.
fn forkable_area(e: &SmapsEntry) -> bool {
    let v = vma_state(e);
    let not_copied = vma_flags::DONTFORK | vma_flags::WIPEONFORK | vma_flags::DROPPABLE;
    track::tracked_area(&v) && v.record.flags & not_copied == 0 && e.rss_kb > 0
}

/// So sparse that protecting it (markers in page tables for every page)
/// would cost much: copied frozen instead.
fn sparse(e: &SmapsEntry) -> bool {
    let rss = e.rss_kb * 1024;
    e.end - e.start > rss.saturating_mul(2).saturating_add(SPARSE_SLACK)
}

/// The little of a record that injection's checks look at.
fn vma_state(e: &SmapsEntry) -> VmaState {
    let kind = match e.path.as_str() {
        "" => vma_kind::ANON,
        "[heap]" => vma_kind::HEAP,
        "[stack]" => vma_kind::STACK,
        _ => vma_kind::FILE,
    };
    VmaState {
        record: VmaRecord {
            start: e.start,
            end: e.end,
            prot: vmas::prot_of(e),
            flags: vmas::flags_of(e),
            kind,
            ..VmaRecord::default()
        },
        path: e.path.clone(),
    }
}

impl Protected {
    /// Arm the write-protection of process `pid` (running; stopped for a
    /// moment to make its uffd), or why not; `stopped` gets the time it was
    /// stopped for that, whether or not the rest succeeds.
    pub fn arm(pid: i32, stopped: &mut Duration) -> Result<Protected, String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .map_err(|e| format!("reading /proc/{pid}/smaps: {e}"))?;
        let entries = smaps::parse(&text).map_err(|e| e.to_string())?;
        if let Some(e) = entries
            .iter()
            .find(|e| e.has_flag("um") || e.has_flag("uw") || e.has_flag("ui"))
        {
            return Err(format!(
                "the area at {:#x} is registered with a userfaultfd already (EBUSY)",
                e.start
            ));
        }
        pinned_memory(pid, &entries)?;
        let sparse: u64 = entries
            .iter()
            .filter(|e| forkable_area(e) && sparse(e))
            .map(|e| e.rss_kb * 1024)
            .sum();
        if sparse > SPARSE_FROZEN_MAX {
            return Err(format!(
                "{} MiB are in sparse areas, which it would copy frozen: a fork copies them faster",
                sparse >> 20
            ));
        }
        let areas: Vec<(u64, u64)> = entries
            .iter()
            .filter(|e| wanted_area(e))
            .map(|e| (e.start, e.end))
            .collect();
        if areas.is_empty() {
            return Err("no private anonymous memory to protect".into());
        }
        let marker = marker_entry()
            .map_err(|e| format!("learning the pagemap entry of a write-protect marker: {e}"))?;
        let uffd = make_uffd(pid, stopped)?;
        let stopped = *stopped;
        sys::enable_wp_sync(uffd.as_fd(), FEATURES)
            .map_err(|e| format!("UFFDIO_API (write-protect with events): {e}"))?;
        let mem = File::open(format!("/proc/{pid}/mem"))
            .map_err(|e| format!("opening /proc/{pid}/mem: {e}"))?;
        let shared = Arc::new(Shared {
            uffd,
            state: Mutex::new(State::default()),
            mem,
        });
        let (stop, theirs) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let handler = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("crdump-uffd".into())
                .spawn(move || serve(&shared, &theirs))
                .map_err(|e| format!("starting the fault handler: {e}"))?
        };
        {
            let mut armed = ARMED
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            armed.retain(|(_, w)| w.strong_count() > 0);
            armed.push((pid, Arc::downgrade(&shared)));
        }
        let mut p = Protected {
            pid,
            shared,
            stop: Some(stop),
            handler: Some(handler),
            registered: Vec::new(),
            stopped,
            passes: Vec::new(),
            marker,
        };
        let uffd = p.shared.uffd.as_fd();
        for (start, end) in areas {
            match sys::register_wp(uffd, start, end - start) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(format!(
                        "UFFDIO_REGISTER of {start:#x}-{end:#x}: {e} (registered with another \
                         userfaultfd)"
                    ));
                }
                // Changed since smaps was read: not registered, copied frozen.
                Err(_) => continue,
            }
            if !protect(uffd, start, end - start)
                .map_err(|e| format!("UFFDIO_WRITEPROTECT of {start:#x}-{end:#x}: {e}"))?
            {
                // Changed since it was registered: copied frozen.
                continue;
            }
            p.registered.push((start, end));
        }
        for _ in 0..PASSES {
            let mut dirty = std::mem::take(&mut p.shared.lock().dirty);
            p.passes.push(dirty.len());
            let few = dirty.len() < FEW_PAGES;
            for (s, e) in runs_of(&mut dirty) {
                if !protect(uffd, s, e - s).map_err(|e| format!("UFFDIO_WRITEPROTECT: {e}"))? {
                    p.shared.lock().changed.push((s, e));
                }
            }
            if few {
                break;
            }
        }
        Ok(p)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pagemap entry of a protected page that is not there.
    pub fn marker(&self) -> u64 {
        self.marker
    }

    /// The snapshot point, with the task frozen: the pages written since
    /// their protection protected again. Returns the deferred areas read
    /// after the resume (registered whole, untouched since) and the others
    /// (to be selected and copied now).
    pub fn snapshot_point(
        &self,
        deferred: &[DeferredArea],
    ) -> io::Result<(Vec<DeferredArea>, Vec<DeferredArea>)> {
        // The task is frozen: nothing of it faults or changes its map
        // meanwhile (crdump's own writes are done), so the pages noted
        // are all that is unprotected, and protecting them again first
        // tells which runs are no longer registered whole.
        let mut dirty = std::mem::take(&mut self.shared.lock().dirty);
        let uffd = self.shared.uffd.as_fd();
        let mut unregistered = Vec::new();
        for (s, e) in runs_of(&mut dirty) {
            if !protect(uffd, s, e - s)? {
                unregistered.push((s, e));
            }
        }
        let mut st = self.shared.lock();
        let mut changed = std::mem::take(&mut st.changed);
        changed.extend(unregistered);
        let (live, frozen): (Vec<DeferredArea>, Vec<DeferredArea>) =
            deferred.iter().cloned().partition(|a| {
                self.registered
                    .iter()
                    .any(|&(s, e)| s <= a.start && a.end <= e)
                    && !changed.iter().any(|&(s, e)| s < a.end && a.start < e)
            });
        st.live = live.iter().map(|a| (a.start, a.end)).collect();
        st.live.sort_unstable();
        st.after = true;
        Ok((live, frozen))
    }

    /// After the resume, the pages selected: only `runs` (address order)
    /// are read from the task, the rest of the live areas no longer count.
    pub fn set_live(&self, runs: Vec<(u64, u64)>) {
        let mut st = self.shared.lock();
        st.live = runs;
    }

    /// `buf`, just read from the task at `addr`, with the pages the
    /// handler saved put in; the range counts as read from now on. An
    /// error when the snapshot content may be lost, or the range was read
    /// before.
    pub fn patch(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = addr + buf.len() as u64;
        let mut st = self.settled(addr);
        if let Some(why) = &st.lost {
            return Err(io::Error::other(format!("the snapshot is lost: {why}")));
        }
        let i = st.read.partition_point(|r| r.1 <= addr);
        if !st.rereads && st.read.get(i).is_some_and(|r| r.0 < end) {
            return Err(io::Error::other(format!(
                "the pages at {addr:#x} were read from the running task before"
            )));
        }
        let keys: Vec<u64> = st.saved.range(addr..end).map(|(&k, _)| k).collect();
        for k in keys {
            let page = if st.rereads {
                st.saved.get(&k).cloned()
            } else {
                st.saved.remove(&k)
            };
            if let Some(page) = page {
                let off = usize::try_from(k - addr).unwrap_or(usize::MAX);
                let n = page.len().min(buf.len().saturating_sub(off));
                buf[off..off + n].copy_from_slice(&page[..n]);
            }
        }
        add_range(&mut st.read, addr, end);
        Ok(())
    }

    /// The state, locked once no change of the task's memory map is
    /// pending: an `munmap`, `mremap` or `mmap(MAP_FIXED)` changes the map
    /// before its event is queued, with the uffd's `mmap_changing` raised
    /// (an ioctl then fails with `EAGAIN`) until the handler has read the
    /// event, which it handles under this lock. So a read that ended
    /// before this returns either met no such change, or the change's
    /// event is handled (the snapshot marked lost if it took pages not
    /// read yet). The probe protects the page at `addr` again (already
    /// protected, or saved and read: an extra fault at most); a range
    /// no longer registered there is a change too.
    fn settled(&self, addr: u64) -> MutexGuard<'_, State> {
        let uffd = self.shared.uffd.as_fd();
        let page = addr & !(PAGE_SIZE - 1);
        for _ in 0..10_000 {
            let mut st = self.shared.lock();
            if st.lost.is_some() {
                return st;
            }
            match sys::write_protect(uffd, page, PAGE_SIZE) {
                Err(e) if is_eagain(&e) => {
                    drop(st);
                    std::thread::sleep(Duration::from_micros(50));
                }
                Ok(()) => return st,
                Err(e) => {
                    st.lost = Some(format!(
                        "the area at {page:#x} changed while it was read ({e})"
                    ));
                    return st;
                }
            }
        }
        let mut st = self.shared.lock();
        st.lost
            .get_or_insert_with(|| "the task's memory map kept changing while it was read".into());
        st
    }

    /// A read of the task at `addr` failed: once the map changes pending
    /// are handled, the snapshot is lost if that is why (an area unmapped
    /// before its pages were read), which the caller tells by [`Self::lost`].
    pub fn read_failed(&self, addr: u64) {
        drop(self.settled(addr));
    }

    /// The writer will read each page twice (a stream): every page is
    /// saved before its first write until the end, not only until it is
    /// read, and the saved pages are kept (memory: the pages the task
    /// writes during the dump).
    pub fn keep_for_rereads(&self) {
        self.shared.lock().rereads = true;
    }

    /// Why the snapshot was lost, if it was.
    pub fn lost(&self) -> Option<String> {
        self.shared.lock().lost.clone()
    }

    /// How many pages the handler saved before their first write.
    pub fn saved_pages(&self) -> u64 {
        self.shared.lock().saved_count
    }

    /// Stop the handler and close the uffd: the kernel unregisters the
    /// areas, clears their protection and wakes any thread waiting.
    pub fn close(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.handler.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Protected {
    fn drop(&mut self) {
        // The uffd closes with the last reference, the handler's first.
        self.shut();
    }
}

/// `Err` when the task may have pages the kernel writes through a pin of
/// its own, without a fault a write-protection would catch (in-flight
/// `io_submit` direct I/O, RDMA, VFIO device DMA): the fork snapshot
/// copies pinned pages at the fork instead.
fn pinned_memory(pid: i32, entries: &[SmapsEntry]) -> Result<(), String> {
    if let Some(e) = entries.iter().find(|e| e.path.starts_with("/[aio]")) {
        return Err(format!(
            "it has an AIO context (at {:#x}): direct I/O in flight writes pinned pages without a fault",
            e.start
        ));
    }
    let dir = format!("/proc/{pid}/fd");
    let fds = std::fs::read_dir(&dir).map_err(|e| format!("reading {dir}: {e}"))?;
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if ["/dev/infiniband/", "/dev/vfio/"]
            .iter()
            .any(|d| target.starts_with(d))
        {
            return Err(format!(
                "fd {} is {target}: a device that writes pinned pages without a fault",
                fd.file_name().to_string_lossy()
            ));
        }
    }
    Ok(())
}

/// `PM_SWAP` of a pagemap entry.
const PM_SWAP: u64 = 1 << 62;

/// The pagemap entry of a page that was not there when it was protected
/// (`WP_UNPOPULATED` leaves a marker, which pagemap shows as a swap entry
/// of a type of its own, whose number depends on the kernel's build):
/// learnt once, on a page of crdump's own.
fn marker_entry() -> io::Result<u64> {
    static MARKER: std::sync::OnceLock<Result<u64, i32>> = std::sync::OnceLock::new();
    let r = MARKER.get_or_init(|| {
        let e = |e: io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let mut page = sys::AnonPage::map().map_err(e)?;
        let uffd = sys::own_userfaultfd().map_err(e)?;
        sys::enable_wp_sync(uffd.as_fd(), sys::UFFD_FEATURE_WP_UNPOPULATED).map_err(e)?;
        let addr = page.addr();
        sys::register_wp(uffd.as_fd(), addr, PAGE_SIZE).map_err(e)?;
        sys::write_protect(uffd.as_fd(), addr, PAGE_SIZE).map_err(e)?;
        let pagemap = File::open("/proc/self/pagemap").map_err(e)?;
        let mut b = [0u8; 8];
        pagemap
            .read_exact_at(&mut b, addr / PAGE_SIZE * 8)
            .map_err(e)?;
        let entry = u64::from_le_bytes(b);
        // The uffd closes before the page is unmapped.
        drop(uffd);
        page.unmap();
        if entry & PM_SWAP == 0 {
            return Err(libc::ENOTSUP);
        }
        Ok(entry)
    });
    r.map_err(io::Error::from_raw_os_error)
}

/// The uffd of `pid`, made in it while it is stopped for a moment; how
/// long it was stopped is added to `stopped` (a failure too).
fn make_uffd(pid: i32, stopped: &mut Duration) -> Result<OwnedFd, String> {
    let t = Instant::now();
    let frozen = Frozen::freeze(pid).map_err(|e| e.to_string());
    // Whatever happens from here, the stop is counted when this returns.
    struct Count<'a>(&'a mut Duration, Instant);
    impl Drop for Count<'_> {
        fn drop(&mut self) {
            *self.0 += self.1.elapsed();
        }
    }
    let _count = Count(stopped, t);
    let frozen = frozen?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("reading /proc/{pid}/maps: {e}"))?;
    let entries = smaps::parse(&maps).map_err(|e| e.to_string())?;
    let mem = File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| format!("opening /proc/{pid}/mem: {e}"))?;
    let gadgets = crate::collect::gadget_scan::find_in(&entries, &mem);
    let vmas: Vec<VmaState> = entries.iter().map(vma_state).collect();
    let made = track::make_uffd(pid, &gadgets, &vmas, true);
    frozen.detach().map_err(|e| e.to_string())?;
    made.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_answer() {
        let mut r = Vec::new();
        add_range(&mut r, 0x3000, 0x4000);
        add_range(&mut r, 0x1000, 0x2000);
        add_range(&mut r, 0x2000, 0x3000);
        assert_eq!(r, [(0x1000, 0x4000)]);
        add_range(&mut r, 0x8000, 0x9000);
        assert_eq!(r, [(0x1000, 0x4000), (0x8000, 0x9000)]);
        assert!(contains(&r, 0x1000) && contains(&r, 0x3fff) && !contains(&r, 0x4000));
        let live = [(0x1000, 0xa000)];
        assert!(!meets_unread(&live, &r, 0x1000, 0x4000));
        assert!(meets_unread(&live, &r, 0x3000, 0x5000));
        assert!(!meets_unread(&live, &r, 0xb000, 0xc000));
        let mut pages = vec![0x5000, 0x1000, 0x2000, 0x2000];
        assert_eq!(runs_of(&mut pages), [(0x1000, 0x3000), (0x5000, 0x6000)]);
    }
}
