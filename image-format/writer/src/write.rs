//! Laying out and writing an image from a [`TaskState`].
//!
//! Two phases, like `object`'s writer: first every note is built and every
//! offset reserved (so the size is known before a page is copied), then page
//! contents are streamed from a [`PageSource`] straight to their place in the
//! file in large chunks, their checksums computed on the way; the headers, the
//! notes and the checksum record go in last. Writing with `pwrite` (not
//! through a mapping) makes a full disk an ordinary `ENOSPC` error.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::mpsc;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::model::{PageRun, TaskState};
use crate::parent::ParentLink;
use image_format::elf::{self, Ehdr, Nhdr, Phdr, Prpsinfo, Prstatus, Shdr};
use image_format::read::limits;
use image_format::records::{
    self, vma_kind, ChecksumRecord, GadgetsRecord, ItimerRecord, MmRecord, PendingSignalRecord,
    ProcessRecord, Record, RecordHeader, RlimitRecord, SegmentChecksumRecord, SigactionRecord,
    StrRef, ThreadRecord, VmaRecord, WarningRecord,
};
use image_format::{checksum, is_page_aligned, page_align_up, Checksummer, IDENT, PAGE_SIZE};

/// Where page contents come from: the dumper reads the stopped task's memory.
pub trait PageSource {
    /// Fills `buf` with the task's memory starting at `addr`.
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()>;

    /// Fills `buf` with the task's memory of `pieces` (address, length),
    /// one after the other; `buf.len()` is their total. A source that can
    /// read many ranges in one call (`process_vm_readv` takes up to 1024)
    /// overrides this: an image of many small runs (pages scattered in a
    /// large reservation) then costs a few calls, not one per run. An
    /// error here is retried piece by piece with [`Self::read_pages`],
    /// which names the piece that fails.
    fn read_pieces(&mut self, pieces: &[(u64, usize)], buf: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        for &(addr, len) in pieces {
            self.read_pages(addr, &mut buf[at..at + len])?;
            at += len;
        }
        Ok(())
    }

    /// Called after each chunk: `done` of `total` page bytes are written.
    fn progress(&mut self, _done: u64, _total: u64) {}
}

/// Why an image could not be written.
#[derive(Debug)]
pub enum WriteError {
    /// The state does not describe a valid image.
    InvalidState { what: &'static str, addr: u64 },
    /// Reading the task's memory failed.
    ReadMemory {
        addr: u64,
        len: u64,
        source: io::Error,
    },
    /// Writing the image file failed (a full disk is `ENOSPC` here).
    Write { offset: u64, source: io::Error },
    /// The disk space for the image could not be reserved (a full disk).
    Reserve { len: u64, source: io::Error },
    /// A page run read twice (a sequential write: `crate::sequential`)
    /// gave other bytes the second time.
    PagesChanged { addr: u64 },
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidState { what, addr } => {
                write!(f, "cannot lay out the image: {what} (at {addr:#x})")
            }
            Self::ReadMemory { addr, len, source } => {
                write!(
                    f,
                    "cannot read {len} bytes of task memory at {addr:#x}: {source}"
                )
            }
            Self::Write { offset, source } => {
                write!(f, "cannot write the image at offset {offset}: {source}")
            }
            Self::Reserve { len, source } => {
                write!(f, "cannot reserve {len} bytes for the image: {source}")
            }
            Self::PagesChanged { addr } => write!(
                f,
                "the memory of the page run at {addr:#x} changed between its checksum and its \
                 copy (an area another process writes?)"
            ),
        }
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidState { .. } | Self::PagesChanged { .. } => None,
            Self::ReadMemory { source, .. }
            | Self::Write { source, .. }
            | Self::Reserve { source, .. } => Some(source),
        }
    }
}

/// `e_ehsize`, `e_phentsize`, `e_shentsize`.
const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;
const SHDR_SIZE: u16 = 64;
const _: () = assert!(EHDR_SIZE as usize == core::mem::size_of::<Ehdr>());
const _: () = assert!(PHDR_SIZE as usize == core::mem::size_of::<Phdr>());
const _: () = assert!(SHDR_SIZE as usize == core::mem::size_of::<Shdr>());

/// Size of one copy chunk: large enough that syscalls are few, small enough
/// that a chunk the reading thread just filled is still in the CPU's cache
/// when the writing thread copies it into the page cache.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the reading and the writing thread.
const BUFFERS: usize = 4;
/// Pieces (parts of page runs) read into one chunk at most: what one
/// `process_vm_readv` takes (`IOV_MAX`).
const MAX_PIECES: usize = 1024;

/// What the writer does beyond laying out and writing the image.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriteOptions {
    /// Called by the writing thread after each chunk of pages is written,
    /// with the file and the chunk's offset and length: the dumper starts
    /// the chunk's writeback there (`sync_file_range`), so that the disk
    /// writes while pages are still being copied and the `fsync` before
    /// the image is published has little left to wait for.
    pub after_write: Option<fn(&File, u64, u64)>,
    /// Called before any page is written, with the file and the image's
    /// size: the dumper reserves the disk blocks there (`fallocate`), so
    /// that a full disk fails the dump at once, before a page is copied,
    /// and the file system allocates no blocks page by page while the
    /// pages are written.
    pub reserve: Option<fn(&File, u64) -> io::Result<()>>,
}

/// Interned strings of the string table.
#[derive(Default)]
struct StringTable {
    bytes: Vec<u8>,
}

impl StringTable {
    fn add(&mut self, s: &[u8]) -> StrRef {
        // A table past 4 GiB saturates here; `write_image` then refuses
        // it, as more notes than a reader accepts, before writing anything.
        let offset = saturating_u32(self.bytes.len());
        self.bytes.extend_from_slice(s);
        StrRef {
            offset,
            len: saturating_u32(s.len()),
        }
    }
}

/// `n` as a `u32` note or string field; a larger value (only in notes far
/// past [`limits::MAX_NOTES_SIZE`], which `write_image` refuses) saturates.
fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A byte count as a file offset (`usize` is 64 bits on the only target).
fn len64(n: usize) -> u64 {
    n as u64
}

/// A file offset or length known to be inside something in memory.
fn to_usize(n: u64, what: &'static str) -> Result<usize, WriteError> {
    usize::try_from(n).map_err(|_| WriteError::InvalidState { what, addr: n })
}

/// The note segment under construction.
#[derive(Default)]
pub(crate) struct NoteWriter {
    bytes: Vec<u8>,
}

impl NoteWriter {
    fn add(&mut self, owner: &[u8], note_type: u32, desc: &[u8]) {
        let nhdr = Nhdr {
            n_namesz: saturating_u32(owner.len() + 1),
            n_descsz: saturating_u32(desc.len()),
            n_type: note_type,
        };
        self.bytes.extend_from_slice(nhdr.as_bytes());
        self.bytes.extend_from_slice(owner);
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(desc);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn add_records<T: Record>(&mut self, recs: &[T]) {
        self.add(records::OWNER_CRIMG, T::NOTE_TYPE, &record_desc(recs));
    }
}

/// A crimg record note's descriptor: header, then the records.
fn record_desc<T: Record>(recs: &[T]) -> Vec<u8> {
    let header = RecordHeader {
        version: T::VERSION,
        record_size: T::SIZE,
        count: saturating_u32(recs.len()),
    };
    let mut desc =
        Vec::with_capacity(core::mem::size_of::<RecordHeader>() + core::mem::size_of_val(recs));
    desc.extend_from_slice(header.as_bytes());
    for r in recs {
        desc.extend_from_slice(r.as_bytes());
    }
    desc
}

/// Size of a note with this owner and descriptor length.
fn note_size(owner: &[u8], desc_len: usize) -> usize {
    core::mem::size_of::<Nhdr>()
        + (owner.len() + 1).next_multiple_of(4)
        + desc_len.next_multiple_of(4)
}

/// The `PF_*` flags for a VMA's `PROT_*` protections.
fn segment_flags(prot: u32) -> u32 {
    let mut f = 0;
    if prot & records::prot::READ != 0 {
        f |= elf::PF_R;
    }
    if prot & records::prot::WRITE != 0 {
        f |= elf::PF_W;
    }
    if prot & records::prot::EXEC != 0 {
        f |= elf::PF_X;
    }
    f
}

fn check_state(state: &TaskState) -> Result<(), WriteError> {
    let invalid = |what, addr| Err(WriteError::InvalidState { what, addr });
    if state.threads.is_empty() {
        return invalid("no threads", 0);
    }
    if state.threads.len() > limits::MAX_THREADS as usize {
        return invalid(
            "more threads than a reader accepts",
            len64(state.threads.len()),
        );
    }
    let mut prev = 0;
    for v in &state.vmas {
        let r = &v.record;
        if r.start >= r.end
            || !is_page_aligned(r.start)
            || !is_page_aligned(r.end)
            || r.start < prev
        {
            return invalid(
                "memory areas empty, unaligned, unsorted or overlapping",
                r.start,
            );
        }
        prev = r.end;
    }
    let mut prev = 0;
    let mut vmas = state.vmas.iter().peekable();
    for run in &state.pages {
        if run.len == 0
            || !is_page_aligned(run.start)
            || !is_page_aligned(run.len)
            || run.start < prev
        {
            return invalid(
                "page runs empty, unaligned, unsorted or overlapping",
                run.start,
            );
        }
        prev = run.end();
        while vmas.peek().is_some_and(|v| v.record.end <= run.start) {
            vmas.next();
        }
        match vmas.peek() {
            Some(v) if v.record.start <= run.start && run.end() <= v.record.end => {}
            _ => return invalid("page run outside every memory area", run.start),
        }
    }
    for t in &state.threads {
        if t.xsave.len() < elf::XSAVE_MIN_SIZE {
            return invalid(
                "xsave area shorter than its header",
                u64::from(t.record.tid.unsigned_abs()),
            );
        }
    }
    Ok(())
}

/// The `NT_FILE` note: every file-backed mapping, for debuggers.
fn nt_file(state: &TaskState) -> Vec<u8> {
    let files: Vec<_> = state
        .vmas
        .iter()
        .filter(|v| v.record.kind == vma_kind::FILE)
        .collect();
    let mut d = Vec::new();
    d.extend_from_slice(&(files.len() as u64).to_le_bytes());
    d.extend_from_slice(&PAGE_SIZE.to_le_bytes());
    for v in &files {
        d.extend_from_slice(&v.record.start.to_le_bytes());
        d.extend_from_slice(&v.record.end.to_le_bytes());
        d.extend_from_slice(&(v.record.pgoff / PAGE_SIZE).to_le_bytes());
    }
    for v in &files {
        d.extend_from_slice(v.path.as_bytes());
        d.push(0);
    }
    d
}

fn prpsinfo(state: &TaskState) -> Prpsinfo {
    let p = &state.process;
    let mut info = Prpsinfo {
        pr_sname: b'R',
        pr_uid: state.creds.uid[0],
        pr_gid: state.creds.gid[0],
        pr_pid: p.pid,
        pr_ppid: p.ppid,
        pr_pgrp: p.pgid,
        pr_sid: p.sid,
        pr_fname: p.comm,
        ..Prpsinfo::default()
    };
    // psargs: the command line with NULs as spaces, truncated as the kernel does.
    let args = state.cmdline.strip_suffix(&[0]).unwrap_or(&state.cmdline);
    for (dst, &b) in info.pr_psargs[..79].iter_mut().zip(args) {
        *dst = if b == 0 { b' ' } else { b };
    }
    info
}

/// The standard notes, thread by thread, as the kernel orders them: the first
/// thread's `NT_PRSTATUS` is followed by the process-wide notes, and every
/// thread's `NT_PRFPREG`/`NT_X86_XSTATE` follow its `NT_PRSTATUS`.
fn standard_notes(state: &TaskState, notes: &mut NoteWriter) {
    let p = &state.process;
    for (i, t) in state.threads.iter().enumerate() {
        let status = Prstatus {
            pr_sighold: t.record.sigmask,
            pr_pid: t.record.tid,
            pr_ppid: p.ppid,
            pr_pgrp: p.pgid,
            pr_sid: p.sid,
            pr_reg: t.regs,
            pr_fpvalid: 1,
            ..Prstatus::default()
        };
        notes.add(elf::OWNER_CORE, elf::NT_PRSTATUS, status.as_bytes());
        if i == 0 {
            notes.add(
                elf::OWNER_CORE,
                elf::NT_PRPSINFO,
                prpsinfo(state).as_bytes(),
            );
            notes.add(elf::OWNER_CORE, elf::NT_AUXV, state.auxv.as_bytes());
            notes.add(elf::OWNER_CORE, elf::NT_FILE, &nt_file(state));
        }
        notes.add(
            elf::OWNER_CORE,
            elf::NT_PRFPREG,
            &t.xsave[..elf::FXSAVE_SIZE],
        );
        notes.add(elf::OWNER_LINUX, elf::NT_X86_XSTATE, &t.xsave);
    }
}

/// crimg's own notes, except the segment checksums and the checksum.
fn crimg_notes(state: &TaskState, link: Option<&ParentLink>, notes: &mut NoteWriter) {
    let mut strings = StringTable::default();
    let parent = link.map(|l| records::ParentRecord {
        path: strings.add(l.path.as_bytes()),
        ..l.record
    });
    let process = ProcessRecord {
        exe: strings.add(state.exe.as_bytes()),
        cwd: strings.add(state.cwd.as_bytes()),
        root: strings.add(state.root.as_bytes()),
        cmdline: strings.add(&state.cmdline),
        // At most MAX_THREADS (checked by `check_state`).
        nthreads: saturating_u32(state.threads.len()),
        ..state.process
    };
    let vmas: Vec<VmaRecord> = state
        .vmas
        .iter()
        .map(|v| VmaRecord {
            path: strings.add(v.path.as_bytes()),
            ..v.record
        })
        .collect();
    let fds: Vec<_> = state
        .fds
        .iter()
        .map(|f| records::FdRecord {
            path: strings.add(f.path.as_bytes()),
            ..f.record
        })
        .collect();
    let warnings: Vec<WarningRecord> = state
        .warnings
        .iter()
        .map(|w| WarningRecord {
            message: strings.add(w.as_bytes()),
        })
        .collect();
    let threads: Vec<ThreadRecord> = state.threads.iter().map(|t| t.record).collect();
    let shmem: Vec<records::ShmemRecord> = state
        .objects
        .shmem
        .iter()
        .map(|o| records::ShmemRecord {
            name: strings.add(&o.name),
            content: strings.add(&o.content),
            ..o.record
        })
        .collect();
    let pipes: Vec<records::PipeRecord> = state
        .objects
        .pipes
        .iter()
        .map(|p| records::PipeRecord {
            data: strings.add(&p.data),
            ..p.record
        })
        .collect();
    let watches: Vec<records::InotifyWatchRecord> = state
        .objects
        .inotify_watches
        .iter()
        .map(|w| records::InotifyWatchRecord {
            path: strings.add(&w.path),
            ..w.record
        })
        .collect();
    let sockets: Vec<records::SocketRecord> = state
        .objects
        .sockets
        .iter()
        .map(|s| records::SocketRecord {
            addr: strings.add(&s.addr),
            queue: strings.add(&s.queue),
            options: strings.add(zerocopy::IntoBytes::as_bytes(s.options.as_slice())),
            ..s.record
        })
        .collect();

    notes.add(records::OWNER_CRIMG, records::note::STRTAB, &strings.bytes);
    notes.add_records::<ProcessRecord>(&[process]);
    notes.add_records(&[state.creds]);
    notes.add_records::<MmRecord>(&[state.mm]);
    notes.add_records::<RlimitRecord>(&state.rlimits);
    notes.add_records::<SigactionRecord>(&state.sigactions);
    notes.add_records::<ItimerRecord>(&state.itimers);
    notes.add_records::<ThreadRecord>(&threads);
    notes.add_records::<VmaRecord>(&vmas);
    notes.add_records(&fds);
    notes.add_records::<PendingSignalRecord>(&state.pending);
    notes.add_records::<GadgetsRecord>(&[state.gadgets]);
    notes.add_records::<WarningRecord>(&warnings);
    notes.add_records(&shmem);
    notes.add_records(&pipes);
    notes.add_records(&state.objects.eventfds);
    // Only images with a terminal fd carry the note (the golden image and
    // images without one stay byte for byte as they were).
    if !state.objects.terminals.is_empty() {
        notes.add_records(&state.objects.terminals);
    }
    notes.add_records(&state.objects.signalfds);
    notes.add_records(&state.objects.timerfds);
    notes.add_records(&watches);
    notes.add_records(&state.objects.epoll_items);
    notes.add_records(&sockets);
    notes.add_records::<records::PosixTimerRecord>(&state.objects.posix_timers);
    // Only incremental images carry it.
    if let Some(parent) = parent {
        notes.add_records(&[parent]);
    }
}

/// The computed placement of everything in the file.
pub(crate) struct Layout {
    phnum: usize,
    phoff: u64,
    /// Offset of section header 0, when `PN_XNUM` is needed.
    shoff: Option<u64>,
    notes_offset: u64,
    notes_len: u64,
    /// File offset of each page run.
    run_offsets: Vec<u64>,
    file_size: u64,
}

impl Layout {
    /// The image's size in bytes.
    pub(crate) fn file_size(&self) -> u64 {
        self.file_size
    }
}

fn layout(pages: &[PageRun], parent_runs: usize, notes_len_without_tail: usize) -> Layout {
    let phnum = 1 + pages.len() + parent_runs;
    let phoff = len64(core::mem::size_of::<Ehdr>());
    let mut end = phoff + len64(phnum * core::mem::size_of::<Phdr>());
    let shoff = if phnum >= usize::from(elf::PN_XNUM) {
        let at = end;
        end += len64(core::mem::size_of::<Shdr>());
        Some(at)
    } else {
        None
    };
    let notes_offset = end.next_multiple_of(4);
    let header = core::mem::size_of::<RecordHeader>();
    let tail = note_size(
        records::OWNER_CRIMG,
        header + core::mem::size_of::<SegmentChecksumRecord>() * (phnum - 1),
    ) + note_size(
        records::OWNER_CRIMG,
        header + core::mem::size_of::<ChecksumRecord>(),
    );
    let notes_len = len64(notes_len_without_tail + tail);
    let mut offset = page_align_up(notes_offset + notes_len);
    let mut run_offsets = Vec::with_capacity(pages.len());
    for run in pages {
        run_offsets.push(offset);
        offset += run.len;
    }
    Layout {
        phnum,
        phoff,
        shoff,
        notes_offset,
        notes_len,
        run_offsets,
        file_size: offset,
    }
}

/// One `PT_LOAD` to write: the own page runs at their offsets, the
/// parent's with no file contents.
#[derive(Clone, Copy)]
struct SegmentOut {
    vaddr: u64,
    len: u64,
    offset: u64,
    filesz: u64,
    /// Extra `p_flags` ([`records::PF_FROM_PARENT`]).
    flags: u32,
}

/// Every `PT_LOAD` with its checksum, in address order (what the program
/// header table and the segment checksum note list).
fn merge_segments(
    state: &TaskState,
    link: Option<&ParentLink>,
    lay: &Layout,
    own_sums: &[SegmentChecksumRecord],
) -> Vec<(SegmentOut, SegmentChecksumRecord)> {
    let mut out: Vec<(SegmentOut, SegmentChecksumRecord)> = state
        .pages
        .iter()
        .zip(&lay.run_offsets)
        .zip(own_sums)
        .map(|((run, &offset), &sum)| {
            let seg = SegmentOut {
                vaddr: run.start,
                len: run.len,
                offset,
                filesz: run.len,
                flags: 0,
            };
            (seg, sum)
        })
        .collect();
    for p in link.map_or(&[][..], |l| &l.runs) {
        let seg = SegmentOut {
            vaddr: p.run.start,
            len: p.run.len,
            offset: 0,
            filesz: 0,
            flags: records::PF_FROM_PARENT,
        };
        out.push((
            seg,
            SegmentChecksumRecord {
                checksum: p.checksum,
            },
        ));
    }
    // Disjoint (checked by `check_parent_runs`): the start orders them.
    out.sort_by_key(|(seg, _)| seg.vaddr);
    out
}

/// The parent's runs: page-aligned, sorted, disjoint from each other and
/// from the own runs, each inside one memory area.
fn check_parent_runs(state: &TaskState, link: &ParentLink) -> Result<(), WriteError> {
    let invalid = |what, addr| Err(WriteError::InvalidState { what, addr });
    let mut prev = 0;
    for p in &link.runs {
        let run = p.run;
        if run.len == 0
            || !is_page_aligned(run.start)
            || !is_page_aligned(run.len)
            || run.start < prev
        {
            return invalid(
                "parent page runs empty, unaligned, unsorted or overlapping",
                run.start,
            );
        }
        prev = run.end();
        let i = state.pages.partition_point(|r| r.end() <= run.start);
        if state.pages.get(i).is_some_and(|r| r.start < run.end()) {
            return invalid("a parent page run overlaps a stored one", run.start);
        }
        let v = state.vmas.partition_point(|v| v.record.end <= run.start);
        match state.vmas.get(v) {
            Some(v) if v.record.start <= run.start && run.end() <= v.record.end => {}
            _ => return invalid("parent page run outside every memory area", run.start),
        }
    }
    if link.record.depth == 0 || link.record.depth > records::MAX_CHAIN_DEPTH {
        return invalid("chain depth out of bounds", u64::from(link.record.depth));
    }
    Ok(())
}

/// [`PAGE_SIZE`] as a buffer length.
const PAGE_BYTES: usize = 4096;
const _: () = assert!(PAGE_BYTES as u64 == PAGE_SIZE);

/// One page of a buffer, page-aligned in memory.
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C, align(4096))]
struct AlignedPage([u8; PAGE_BYTES]);

/// A buffer of whole pages, page-aligned in memory. With it every write the
/// writer makes is page-aligned in file offset, length and memory, so the
/// image may be opened with `O_DIRECT` (the dumper writes through the page
/// cache instead, so that a restore right after the dump reads the image
/// from memory, not from the disk).
struct AlignedBuf(Vec<AlignedPage>);

impl AlignedBuf {
    /// At least `len` bytes, rounded up to whole pages.
    fn new(len: usize) -> Self {
        let pages = len.div_ceil(PAGE_BYTES);
        AlignedBuf(vec![AlignedPage([0; PAGE_BYTES]); pages])
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        self.0.as_mut_bytes()
    }
}

fn write_at(out: &File, bytes: &[u8], offset: u64) -> Result<(), WriteError> {
    out.write_all_at(bytes, offset)
        .map_err(|source| WriteError::Write { offset, source })
}

/// One chunk of the page copy: `len` bytes of the file from `offset`, made
/// of `pieces` (address, length) of consecutive page runs (runs lie back
/// to back in the file), the first piece a part of run `first_run`.
struct Chunk {
    offset: u64,
    len: usize,
    first_run: usize,
    pieces: Vec<(u64, usize)>,
}

/// Cuts the page runs, laid out from `lay.run_offsets`, into chunks of at
/// most [`CHUNK`] bytes and [`MAX_PIECES`] pieces, in file order.
fn chunks(pages: &[PageRun], lay: &Layout) -> Vec<Chunk> {
    let mut out: Vec<Chunk> = Vec::new();
    let mut current: Option<Chunk> = None;
    for (i, (run, &file_off)) in pages.iter().zip(&lay.run_offsets).enumerate() {
        let mut at = 0u64;
        while at < run.len {
            let chunk = current.get_or_insert_with(|| Chunk {
                offset: file_off + at,
                len: 0,
                first_run: i,
                pieces: Vec::new(),
            });
            // At most CHUNK, which is a usize.
            let n = usize::try_from((run.len - at).min(len64(CHUNK - chunk.len))).unwrap_or(CHUNK);
            chunk.pieces.push((run.start + at, n));
            chunk.len += n;
            at += len64(n);
            if chunk.len == CHUNK || chunk.pieces.len() == MAX_PIECES {
                out.extend(current.take());
            }
        }
    }
    out.extend(current);
    out
}

/// Reads the pieces of `chunk` into `buf`, in one batch, else (the batch
/// failed) piece by piece so that the error names the piece that failed.
fn read_chunk(
    source: &mut dyn PageSource,
    chunk: &Chunk,
    buf: &mut [u8],
) -> Result<(), WriteError> {
    if source.read_pieces(&chunk.pieces, buf).is_ok() {
        return Ok(());
    }
    let mut at = 0;
    for &(addr, len) in &chunk.pieces {
        source
            .read_pages(addr, &mut buf[at..at + len])
            .map_err(|source| WriteError::ReadMemory {
                addr,
                len: len64(len),
                source,
            })?;
        at += len;
    }
    Ok(())
}

/// Where [`copy_pages`] puts each chunk of pages.
pub(crate) enum PageSink<'a> {
    /// At its offset in the image file (`pwrite`), then the options'
    /// `after_write`.
    File(&'a File, WriteOptions),
    /// Appended to a stream (a pipe, a socket: no seek) that has reached
    /// file offset `at`: chunks come in file order, back to back.
    Stream {
        out: &'a mut (dyn io::Write + Send),
        at: u64,
    },
    /// Nowhere: only the checksums are wanted (the first pass of a
    /// sequential write, `crate::sequential`).
    Discard,
}

impl PageSink<'_> {
    fn put(&mut self, bytes: &[u8], offset: u64) -> Result<(), WriteError> {
        match self {
            PageSink::File(out, opts) => {
                write_at(out, bytes, offset)?;
                if let Some(after_write) = opts.after_write {
                    after_write(out, offset, len64(bytes.len()));
                }
            }
            PageSink::Stream { out, at } => {
                if offset != *at {
                    return Err(WriteError::InvalidState {
                        what: "page chunks not back to back in a stream",
                        addr: offset,
                    });
                }
                out.write_all(bytes)
                    .map_err(|source| WriteError::Write { offset, source })?;
                *at += len64(bytes.len());
            }
            PageSink::Discard => {}
        }
        Ok(())
    }
}

/// Copies every page run from `source` to its place in `out` and returns
/// the runs' checksums, in order.
///
/// Two threads: this one reads and checksums a chunk while a second writes
/// the previous one, each chunk in its own page-aligned buffer, so reading
/// the task's memory and writing the file overlap. A chunk holds many runs
/// when they are small, read with one batched call and written with one
/// `pwrite`. The source is used from this thread only.
pub(crate) fn copy_pages(
    state: &TaskState,
    lay: &Layout,
    mut sink: PageSink<'_>,
    source: &mut dyn PageSource,
) -> Result<Vec<SegmentChecksumRecord>, WriteError> {
    let total: u64 = state.pages.iter().map(|r| r.len).sum();
    let chunk_len = usize::try_from(total).map_or(CHUNK, |total| CHUNK.min(total));
    let chunks = chunks(&state.pages, lay);
    let mut sums = Vec::with_capacity(state.pages.len());
    std::thread::scope(|scope| {
        // Filled chunks go to the writer; emptied buffers come back.
        let (to_writer, filled) = mpsc::sync_channel::<(AlignedBuf, usize, u64)>(BUFFERS);
        let (to_reader, emptied) = mpsc::channel::<AlignedBuf>();
        for _ in 0..BUFFERS {
            let _ = to_reader.send(AlignedBuf::new(chunk_len));
        }
        let writer = scope.spawn(move || -> Result<(), WriteError> {
            for (buf, len, offset) in filled {
                sink.put(&buf.bytes()[..len], offset)?;
                // The reader may have stopped (an error): nothing to return to.
                let _ = to_reader.send(buf);
            }
            Ok(())
        });
        let read = (|| -> Result<(), WriteError> {
            let mut done = 0u64;
            // The run being checksummed, and its hash so far.
            let mut run = 0usize;
            let mut hasher = Checksummer::new();
            let mut hashed = 0u64;
            for chunk in &chunks {
                // No buffer back: the writer stopped, with an error.
                let Ok(mut buf) = emptied.recv() else {
                    return Ok(());
                };
                let bytes = &mut buf.bytes_mut()[..chunk.len];
                read_chunk(source, chunk, bytes)?;
                // Each piece continues the run being hashed or starts the
                // next one (pieces come in run order, runs are not empty).
                let mut at = 0;
                for (k, &(_, len)) in chunk.pieces.iter().enumerate() {
                    if k == 0 && chunk.first_run != run {
                        return Err(WriteError::InvalidState {
                            what: "page chunks out of order",
                            addr: chunk.offset,
                        });
                    }
                    hasher.update(&bytes[at..at + len]);
                    hashed += len64(len);
                    at += len;
                    if hashed == state.pages[run].len {
                        sums.push(SegmentChecksumRecord {
                            checksum: hasher.digest(),
                        });
                        hasher = Checksummer::new();
                        hashed = 0;
                        run += 1;
                    }
                }
                if to_writer.send((buf, chunk.len, chunk.offset)).is_err() {
                    return Ok(());
                }
                done += len64(chunk.len);
                source.progress(done, total);
            }
            Ok(())
        })();
        // Let the writer finish what it has, then take its verdict first:
        // a write error (a full disk) is what stopped a reader that
        // returned early.
        drop(to_writer);
        let written = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        read.and(written)
    })?;
    if sums.len() != state.pages.len() {
        return Err(WriteError::InvalidState {
            what: "page copy stopped early",
            addr: 0,
        });
    }
    Ok(sums)
}

/// Writes the image of `state` to `out` (which should be empty), reading page
/// contents from `source`. Returns the image size in bytes.
pub fn write_image(
    state: &TaskState,
    out: &File,
    source: &mut dyn PageSource,
) -> Result<u64, WriteError> {
    write_image_with(state, out, source, WriteOptions::default())
}

/// [`write_image`], with `opts`.
pub fn write_image_with(
    state: &TaskState,
    out: &File,
    source: &mut dyn PageSource,
    opts: WriteOptions,
) -> Result<u64, WriteError> {
    write_image_linked(state, None, out, source, opts)
}

/// [`write_image_with`] of an incremental image when `link` is given: the
/// state's own page runs are stored, `link`'s runs are taken from the
/// parent image it names (see `image_format::records::ParentRecord`).
pub fn write_image_linked(
    state: &TaskState,
    link: Option<&ParentLink>,
    out: &File,
    source: &mut dyn PageSource,
    opts: WriteOptions,
) -> Result<u64, WriteError> {
    let (notes, lay) = laid_out_linked(state, link)?;

    // Pages first: their checksums go into the notes.
    if let Some(reserve) = opts.reserve {
        reserve(out, lay.file_size).map_err(|source| WriteError::Reserve {
            len: lay.file_size,
            source,
        })?;
    }
    let sums = copy_pages(state, &lay, PageSink::File(out, opts), source)?;
    let head = head_linked(state, link, &lay, notes, &sums)?;
    let mut aligned = AlignedBuf::new(head.len());
    aligned.bytes_mut().copy_from_slice(&head);
    write_at(out, aligned.bytes_mut(), 0)?;
    out.set_len(lay.file_size)
        .map_err(|source| WriteError::Write {
            offset: lay.file_size,
            source,
        })?;
    Ok(lay.file_size)
}

/// The notes of `state` but the checksums, and the layout of its image,
/// refused if a reader would refuse it.
pub(crate) fn laid_out(state: &TaskState) -> Result<(NoteWriter, Layout), WriteError> {
    laid_out_linked(state, None)
}

/// [`laid_out`] with the parent `link` of an incremental image.
fn laid_out_linked(
    state: &TaskState,
    link: Option<&ParentLink>,
) -> Result<(NoteWriter, Layout), WriteError> {
    check_state(state)?;
    if let Some(link) = link {
        check_parent_runs(state, link)?;
    }
    let parent_runs = link.map_or(0, |l| l.runs.len());
    let mut notes = NoteWriter::default();
    standard_notes(state, &mut notes);
    crimg_notes(state, link, &mut notes);
    let lay = layout(&state.pages, parent_runs, notes.bytes.len());
    // Never write what the reader (and so the loader) would refuse.
    if lay.notes_len > limits::MAX_NOTES_SIZE {
        return Err(WriteError::InvalidState {
            what: "more notes than a reader accepts (too many threads, areas or files)",
            addr: lay.notes_len,
        });
    }
    if len64(lay.phnum) > limits::MAX_SEGMENTS {
        return Err(WriteError::InvalidState {
            what: "more page runs than a reader accepts",
            addr: len64(lay.phnum),
        });
    }
    Ok((notes, lay))
}

/// Everything of the image before its first page: the ELF header, the
/// program headers, the notes with the page runs' checksums `sums` and
/// the checksum record, zeros up to the first page.
pub(crate) fn head(
    state: &TaskState,
    lay: &Layout,
    notes: NoteWriter,
    sums: &[SegmentChecksumRecord],
) -> Result<Vec<u8>, WriteError> {
    head_linked(state, None, lay, notes, sums)
}

/// [`head`] of an incremental image with parent `link`: `own_sums` are the
/// checksums of the state's own page runs, merged in address order with
/// those of the parent's runs.
fn head_linked(
    state: &TaskState,
    link: Option<&ParentLink>,
    lay: &Layout,
    mut notes: NoteWriter,
    own_sums: &[SegmentChecksumRecord],
) -> Result<Vec<u8>, WriteError> {
    let segments = merge_segments(state, link, lay, own_sums);
    let sums: Vec<SegmentChecksumRecord> = segments.iter().map(|&(_, sum)| sum).collect();
    notes.add_records(&sums);

    // Headers.
    let notes_offset = to_usize(lay.notes_offset, "headers larger than memory")?;
    let mut head = Vec::with_capacity(notes_offset);
    let ehdr = Ehdr {
        e_ident: IDENT,
        e_type: elf::ET_CORE,
        e_machine: elf::EM_X86_64,
        e_version: u32::from(elf::EV_CURRENT),
        e_phoff: lay.phoff,
        e_shoff: lay.shoff.unwrap_or(0),
        e_ehsize: EHDR_SIZE,
        e_phentsize: PHDR_SIZE,
        // Below PN_XNUM when there is no section header 0 (`layout`).
        e_phnum: match lay.shoff {
            Some(_) => elf::PN_XNUM,
            None => u16::try_from(lay.phnum).unwrap_or(elf::PN_XNUM),
        },
        e_shentsize: if lay.shoff.is_some() { SHDR_SIZE } else { 0 },
        e_shnum: u16::from(lay.shoff.is_some()),
        ..Ehdr::default()
    };
    head.extend_from_slice(ehdr.as_bytes());
    let note_ph = Phdr {
        p_type: elf::PT_NOTE,
        p_offset: lay.notes_offset,
        p_filesz: lay.notes_len,
        p_align: 4,
        ..Phdr::default()
    };
    head.extend_from_slice(note_ph.as_bytes());
    let mut vmas = state.vmas.iter().peekable();
    for &(seg, _) in &segments {
        while vmas.peek().is_some_and(|v| v.record.end <= seg.vaddr) {
            vmas.next();
        }
        let prot = vmas.peek().map_or(0, |v| v.record.prot);
        let ph = Phdr {
            p_type: elf::PT_LOAD,
            p_flags: segment_flags(prot) | seg.flags,
            p_offset: seg.offset,
            p_vaddr: seg.vaddr,
            p_filesz: seg.filesz,
            p_memsz: seg.len,
            p_align: PAGE_SIZE,
            ..Phdr::default()
        };
        head.extend_from_slice(ph.as_bytes());
    }
    let headers = checksum(&head);
    if lay.shoff.is_some() {
        let sh0 = Shdr {
            // At most MAX_SEGMENTS (checked above).
            sh_info: saturating_u32(lay.phnum),
            ..Shdr::default()
        };
        head.extend_from_slice(sh0.as_bytes());
    }
    head.resize(notes_offset, 0);

    // The checksum note covers every note byte before it.
    let sum = ChecksumRecord {
        headers,
        notes: checksum(&notes.bytes),
        file_size: lay.file_size,
    };
    notes.add_records(&[sum]);
    if len64(notes.bytes.len()) != lay.notes_len {
        return Err(WriteError::InvalidState {
            what: "note size differs from its reservation",
            addr: 0,
        });
    }
    head.extend_from_slice(&notes.bytes);
    // Zero the gap up to the first page so the file has no hole there.
    let first_page = page_align_up(lay.notes_offset + lay.notes_len);
    head.resize(to_usize(first_page, "headers larger than memory")?, 0);
    Ok(head)
}
