//! Incremental dumps (`crdump --parent PREV`): an image that stores only
//! the pages that changed since the dump in `PREV`, and takes the others
//! from `PREV`'s image of the same process (its parent image, see
//! `image_format::records::ParentRecord`).
//!
//! Which pages changed is found here by comparing each page the dump
//! would store with the bytes the parent's chain holds at that address
//! (the task is stopped, or its snapshot is, while they are read): a page
//! equal to its parent's is taken from the parent, any other is stored.
//! Exact, whatever the kernel tracks, at the cost of reading every page
//! the task has (the write is what shrinks). A chain at its bound
//! (`MAX_CHAIN_DEPTH` parents) is not extended: the dump writes a full
//! image and says so.

use std::fs::File;
use std::io;
use std::path::{Component, Path, PathBuf};

use image_format::chain::{self, ChainError};
use image_format::records::{ParentRecord, MAX_CHAIN_DEPTH};
use image_format::{Image, ImageError, PAGE_SIZE};
use image_writer::model::{PageRun, TaskState};
use image_writer::parent::{ParentLink, ParentRun};
use image_writer::{PageSource, WriteError, WriteOptions};

pub mod holder;
#[allow(unsafe_code)]
pub(crate) mod sys;
pub mod track;

/// Why an incremental dump could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IncrementalError {
    #[error("pid {pid}: parent image {path}: {source}")]
    Open {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pid {pid}: parent image {path}: {source}")]
    Corrupt {
        pid: i32,
        path: PathBuf,
        #[source]
        source: ImageError,
    },
    #[error("pid {pid}: the chain of parent image {path} is broken: {source}")]
    Chain {
        pid: i32,
        path: PathBuf,
        #[source]
        source: ChainError,
    },
    #[error("pid {pid}: parent image {path} is of another process (pid {other}, started at tick {start_time}; this one started at tick {want})")]
    OtherProcess {
        pid: i32,
        path: PathBuf,
        other: i32,
        start_time: u64,
        want: u64,
    },
    #[error("pid {pid}: no parent image {path} (the --parent dump has no image of this process)")]
    Missing { pid: i32, path: PathBuf },
}

/// The `--parent` dump directory, and where the new images go.
#[derive(Clone, Debug)]
pub struct ParentDir {
    /// `PREV`, physical (symlinks resolved).
    prev: PathBuf,
    /// The output directory, physical (its missing part as named).
    out: PathBuf,
}

impl ParentDir {
    /// Resolves both directories (before anything is frozen: a missing
    /// `PREV` is said at once).
    pub fn new(prev: &Path, out_dir: &Path) -> io::Result<ParentDir> {
        let prev = prev.canonicalize()?;
        Ok(ParentDir {
            prev,
            out: physical(out_dir)?,
        })
    }

    /// The parent image of process `pid` (started at `start_time`), with
    /// its chain; `None` when `PREV` has none and `required` is false (a
    /// process new in the tree: dumped in full).
    pub fn parent_of(
        &self,
        pid: i32,
        start_time: u64,
        required: bool,
    ) -> Result<Option<ParentChain>, IncrementalError> {
        let path = self.prev.join(crate::image_name(pid));
        if !path.exists() && !required {
            return Ok(None);
        }
        if !path.exists() {
            return Err(IncrementalError::Missing { pid, path });
        }
        let chain = ParentChain::open(pid, &path)?;
        let process = chain.image(0).map(|i| i.process());
        if let Ok(p) = process {
            if p.pid != pid || p.start_time != start_time {
                if !required {
                    return Ok(None);
                }
                return Err(IncrementalError::OtherProcess {
                    pid,
                    path,
                    other: p.pid,
                    start_time: p.start_time,
                    want: start_time,
                });
            }
        }
        let relative = relative_path(
            &self.out,
            &path
                .canonicalize()
                .map_err(|source| IncrementalError::Open {
                    pid,
                    path: path.clone(),
                    source,
                })?,
        );
        Ok(Some(ParentChain {
            relative: relative.to_string_lossy().into_owned(),
            ..chain
        }))
    }
}

/// `dir` with symlinks resolved as far as it exists (the rest is created
/// as plain directories by the dump).
fn physical(dir: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(dir)?;
    let mut existing = abs.clone();
    let mut rest = Vec::new();
    while !existing.exists() {
        match existing.file_name() {
            Some(name) => rest.push(name.to_owned()),
            None => break,
        }
        existing.pop();
    }
    let mut out = existing.canonicalize()?;
    for name in rest.into_iter().rev() {
        out.push(name);
    }
    Ok(out)
}

/// `to` relative to the directory `from` (both absolute and physical).
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let a: Vec<Component> = from.components().collect();
    let b: Vec<Component> = to.components().collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..a.len() {
        out.push("..");
    }
    for c in &b[common..] {
        out.push(c);
    }
    out
}

/// A parent image and its own parents, mapped.
pub struct ParentChain {
    pid: i32,
    maps: Vec<(PathBuf, memmap2::Mmap)>,
    /// The parent's path relative to the new image's directory.
    relative: String,
}

impl ParentChain {
    fn open(pid: i32, path: &Path) -> Result<ParentChain, IncrementalError> {
        let mut maps: Vec<(PathBuf, memmap2::Mmap)> = Vec::new();
        let mut next = Some(path.to_owned());
        while let Some(path) = next.take() {
            if maps.len() > MAX_CHAIN_DEPTH as usize {
                return Err(IncrementalError::Chain {
                    pid,
                    path,
                    source: ChainError::TooDeep {
                        depth: MAX_CHAIN_DEPTH + 1,
                    },
                });
            }
            let open_err = |source| IncrementalError::Open {
                pid,
                path: path.clone(),
                source,
            };
            let file = File::open(&path).map_err(open_err)?;
            let map = crate::sys::process::map_read_only(&file).map_err(open_err)?;
            let img = Image::parse(&map).map_err(|source| IncrementalError::Corrupt {
                pid,
                path: path.clone(),
                source,
            })?;
            if let Some(rec) = img.parent() {
                let recorded =
                    img.string(rec.path)
                        .map_err(|source| IncrementalError::Corrupt {
                            pid,
                            path: path.clone(),
                            source,
                        })?;
                let dir = path.parent().unwrap_or(Path::new("."));
                next = Some(dir.join(String::from_utf8_lossy(recorded).as_ref()));
            }
            maps.push((path, map));
        }
        let chain = ParentChain {
            pid,
            maps,
            relative: String::new(),
        };
        let images = chain.images()?;
        chain::check_links(&images).map_err(|source| {
            let link = match source {
                ChainError::NotTheParent { link, .. } | ChainError::ParentMissing { link } => link,
                _ => 0,
            };
            IncrementalError::Chain {
                pid,
                path: chain.maps[link.min(chain.maps.len() - 1)].0.clone(),
                source,
            }
        })?;
        Ok(chain)
    }

    fn image(&self, i: usize) -> Result<Image<'_>, IncrementalError> {
        let (path, map) = &self.maps[i];
        Image::parse(map).map_err(|source| IncrementalError::Corrupt {
            pid: self.pid,
            path: path.clone(),
            source,
        })
    }

    fn images(&self) -> Result<Vec<Image<'_>>, IncrementalError> {
        (0..self.maps.len()).map(|i| self.image(i)).collect()
    }

    /// The parent image's identity (its checksum record).
    pub fn identity(&self) -> Option<holder::Identity> {
        let sum = self.image(0).ok()?.checksum_record()?;
        Some(holder::identity_of(&sum))
    }

    /// The new image's depth: the parent's plus one; `None` past the bound.
    pub fn depth(&self) -> Option<u32> {
        let d = self.image(0).ok()?.parent().map_or(0, |r| r.depth) + 1;
        (d <= MAX_CHAIN_DEPTH).then_some(d)
    }
}

/// What an incremental write did: pages stored, pages taken from the parent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Split {
    pub stored_pages: u64,
    pub parent_pages: u64,
    /// Bytes of areas whose changed pages write tracking told (the rest
    /// was compared with the parent page by page).
    pub tracked_bytes: u64,
}

/// A tracked area `(start, end)` and its written ranges.
type TrackedArea = (u64, u64, Vec<(u64, u64)>);

/// What write tracking says of the pages of each area: the written
/// ranges of the areas it tracks.
#[derive(Debug, Default)]
pub struct Written {
    /// Sorted by address.
    areas: Vec<TrackedArea>,
}

impl Written {
    /// From the tracking of a process whose areas are `state`'s.
    fn of(state: &TaskState, tracking: &track::Tracking, pagemap: &File) -> Written {
        let mut areas = Vec::new();
        let registered = tracking.registered_areas();
        for v in &state.vmas {
            let (start, end) = (v.record.start, v.record.end);
            if registered.binary_search(&(start, end)).is_err() {
                continue;
            }
            let i = state.pages.partition_point(|r| r.end() <= start);
            if state.pages.get(i).is_none_or(|r| r.start >= end) {
                continue;
            }
            if let Some(w) = tracking.written(pagemap, start, end) {
                areas.push((start, end, w));
            }
        }
        Written { areas }
    }

    /// `Some(written)` for a page of a tracked area, `None` elsewhere.
    fn page(&self, addr: u64) -> Option<bool> {
        let i = self.areas.partition_point(|a| a.1 <= addr);
        let (_, _, w) = self.areas.get(i).filter(|a| a.0 <= addr)?;
        let j = w.partition_point(|r| r.1 <= addr);
        Some(w.get(j).is_some_and(|r| r.0 <= addr))
    }

    /// The tracked area holding `addr`, and its written ranges.
    fn area_of(&self, addr: u64) -> Option<&TrackedArea> {
        let i = self.areas.partition_point(|a| a.1 <= addr);
        self.areas.get(i).filter(|a| a.0 <= addr)
    }

    /// Bytes of the tracked areas.
    fn tracked_bytes(&self) -> u64 {
        self.areas.iter().map(|a| a.1 - a.0).sum()
    }
}

/// Builds the page runs of one side (stored, or the parent's) page by page.
#[derive(Default)]
struct Runs {
    own: Vec<PageRun>,
    from_parent: Vec<ParentRun>,
    own_start: Option<u64>,
    parent: Option<(u64, u64, image_format::Checksummer)>,
}

impl Runs {
    fn own_page(&mut self, addr: u64) {
        self.close_parent();
        self.own_start.get_or_insert(addr);
    }

    fn parent_page(&mut self, addr: u64, bytes: &[u8]) {
        self.close_own(addr);
        let cur = self
            .parent
            .get_or_insert_with(|| (addr, 0, image_format::Checksummer::new()));
        cur.1 += PAGE_SIZE;
        cur.2.update(bytes);
    }

    /// Stored: `[start, end)`.
    fn own_range(&mut self, start: u64) {
        self.close_parent();
        self.own_start.get_or_insert(start);
    }

    /// From the parent: `[start, end)`, whose checksum is `checksum`.
    fn parent_range(&mut self, start: u64, end: u64, checksum: u64) {
        self.close_own(start);
        self.close_parent();
        self.from_parent.push(ParentRun {
            run: PageRun {
                start,
                len: end - start,
            },
            checksum,
        });
    }

    fn close_own(&mut self, end: u64) {
        if let Some(start) = self.own_start.take() {
            self.own.push(PageRun {
                start,
                len: end - start,
            });
        }
    }

    fn close_parent(&mut self) {
        if let Some((start, len, h)) = self.parent.take() {
            self.from_parent.push(ParentRun {
                run: PageRun { start, len },
                checksum: h.digest(),
            });
        }
    }

    /// Ends the current runs at `end` (the end of a run of the state: runs
    /// of different areas are not merged).
    fn end_at(&mut self, end: u64) {
        self.close_own(end);
        self.close_parent();
    }
}

/// Bytes read from the task at once while comparing.
const COMPARE_CHUNK: u64 = 1 << 20;

/// The state's page runs cut into those that changed (stored) and those
/// equal to the parent's (taken from it, with their checksums). Where
/// write tracking knows (`written`), a written page is stored and an
/// unwritten one taken from the parent unread; elsewhere each page is read
/// and compared with the parent's.
fn split_runs(
    state: &TaskState,
    parent: &[Image<'_>],
    written: Option<&Written>,
    source: &mut dyn PageSource,
) -> Result<(Vec<PageRun>, Vec<ParentRun>), WriteError> {
    let mut runs = Runs::default();
    let mut buf = vec![0u8; usize::try_from(COMPARE_CHUNK).unwrap_or(1 << 20)];
    let page = usize::try_from(PAGE_SIZE).unwrap_or(4096);
    for run in &state.pages {
        // A run of an area write tracking knows: by ranges, nothing read.
        if let Some((_, end, w)) = written.and_then(|w| w.area_of(run.start)) {
            if run.end() <= *end {
                split_tracked_run(*run, w, parent, &mut runs)?;
                continue;
            }
        }
        // The task's bytes read so far: `[buf_at, buf_at + buf_len)`.
        let (mut buf_at, mut buf_len) = (0u64, 0u64);
        let mut addr = run.start;
        while addr < run.end() {
            let known = written.and_then(|w| w.page(addr));
            let from_parent = parent_page(parent, addr);
            match (known, from_parent) {
                (Some(true), _) | (_, None) => runs.own_page(addr),
                (Some(false), Some(p)) => runs.parent_page(addr, p),
                (None, Some(p)) => {
                    if !(buf_at <= addr && addr < buf_at + buf_len) {
                        let n = (run.end() - addr).min(COMPARE_CHUNK);
                        let len = usize::try_from(n).unwrap_or(0);
                        source.read_pages(addr, &mut buf[..len]).map_err(|source| {
                            WriteError::ReadMemory {
                                addr,
                                len: n,
                                source,
                            }
                        })?;
                        (buf_at, buf_len) = (addr, n);
                    }
                    let at = usize::try_from(addr - buf_at).unwrap_or(0);
                    if p == &buf[at..at + page] {
                        runs.parent_page(addr, p);
                    } else {
                        runs.own_page(addr);
                    }
                }
            }
            addr += PAGE_SIZE;
        }
        runs.end_at(run.end());
    }
    Ok((runs.own, runs.from_parent))
}

/// [`split_runs`] of `run`, in an area whose written ranges are
/// `written`: those are stored, the rest taken from the parent where it
/// has pages (a run equal to one of the parent's segments takes its
/// checksum; a part of one is hashed from the chain's bytes), stored where
/// it has none.
fn split_tracked_run(
    run: PageRun,
    written: &[(u64, u64)],
    parent: &[Image<'_>],
    runs: &mut Runs,
) -> Result<(), WriteError> {
    let mut at = run.start;
    let mut j = written.partition_point(|r| r.1 <= at);
    while at < run.end() {
        match written.get(j).copied() {
            Some((ws, we)) if ws <= at => {
                runs.own_range(at);
                at = we.min(run.end());
                j += 1;
            }
            next => {
                let stop = next.map_or(run.end(), |(ws, _)| ws.min(run.end()));
                unwritten_range(at, stop, parent, runs)?;
                at = stop;
            }
        }
    }
    runs.end_at(run.end());
    Ok(())
}

/// `[start, end)`, unwritten since the parent's dump: from the parent's
/// segments over it, stored where the parent has none.
fn unwritten_range(
    start: u64,
    end: u64,
    parent: &[Image<'_>],
    runs: &mut Runs,
) -> Result<(), WriteError> {
    let invalid = |what| WriteError::InvalidState { what, addr: start };
    let img = parent.first().ok_or(invalid("no parent image"))?;
    let sums = img
        .records::<image_format::records::SegmentChecksumRecord>()
        .map_err(|_| invalid("the parent's segment checksums cannot be read"))?;
    let (mut lo, mut hi) = (0, img.segment_count());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match img.segment(mid) {
            Ok(s) if s.end() <= start => lo = mid + 1,
            _ => hi = mid,
        }
    }
    let mut i = lo;
    let mut at = start;
    while at < end {
        match img.segment(i) {
            Ok(s) if s.vaddr <= at => {
                let stop = s.end().min(end);
                let checksum = if at == s.vaddr && stop == s.end() {
                    sums.get(i).map(|c| c.checksum)
                } else {
                    let mut h = image_format::Checksummer::new();
                    chain::resolve::<ChainError>(parent, 0, at, stop - at, &mut |p| {
                        h.update(p.bytes(parent));
                        Ok(())
                    })
                    .ok()
                    .map(|()| h.digest())
                };
                match checksum {
                    Some(c) => runs.parent_range(at, stop, c),
                    None => runs.own_range(at),
                }
                at = stop;
                i += 1;
            }
            Ok(s) if s.vaddr < end => {
                runs.own_range(at);
                at = s.vaddr;
            }
            _ => {
                runs.own_range(at);
                at = end;
            }
        }
    }
    Ok(())
}

/// The parent chain's page at `addr`, when it holds one.
fn parent_page<'a>(chain: &[Image<'a>], addr: u64) -> Option<&'a [u8]> {
    let mut found: Option<&'a [u8]> = None;
    chain::resolve::<ChainError>(chain, 0, addr, PAGE_SIZE, &mut |p| {
        found = Some(p.bytes(chain));
        Ok(())
    })
    .ok()?;
    found.filter(|b| b.len() as u64 == PAGE_SIZE)
}

/// What an image is written over: its parent and the write tracking of
/// its process, when there are.
#[derive(Clone, Copy, Default)]
pub struct Link<'a> {
    pub parent: Option<&'a ParentChain>,
    pub tracking: Option<&'a track::Tracking>,
}

/// An image written.
pub struct WrittenImage {
    pub bytes: u64,
    /// The loader's warning on it (`crate::self_check`).
    pub warning: Option<String>,
    /// Incremental: what it stored and took from the parent.
    pub split: Option<Split>,
    /// Its identity, for the write tracking armed by its dump.
    pub identity: Option<holder::Identity>,
}

/// The identity of the image written to `file`.
pub fn identity_of_file(file: &File) -> Option<holder::Identity> {
    let map = crate::sys::process::map_read_only(file).ok()?;
    let sum = Image::parse(&map).ok()?.checksum_record()?;
    Some(holder::identity_of(&sum))
}

/// Writes `state`'s image to `out`: incremental over `link`'s parent when
/// it has one (only the pages that differ from the parent's are stored,
/// found by its write tracking where it knows, else by comparing), else
/// in full.
pub fn write_image(
    state: &TaskState,
    link: Link<'_>,
    out: &File,
    source: &mut dyn PageSource,
    opts: WriteOptions,
) -> Result<(u64, Option<Split>), WriteError> {
    let tracking = link.tracking;
    let Some(parent) = link.parent else {
        return image_writer::write_image_with(state, out, source, opts).map(|n| (n, None));
    };
    let invalid = |what| WriteError::InvalidState { what, addr: 0 };
    let images = parent
        .images()
        .map_err(|_| invalid("the parent image cannot be read again"))?;
    let depth = parent.depth().ok_or(invalid("parent chain at its bound"))?;
    let sum = images[0]
        .checksum_record()
        .ok_or(invalid("the parent image has no checksum record"))?;
    let p = images[0].process();
    let written = tracking.filter(|t| t.trusted()).and_then(|t| {
        let pagemap = File::open(format!("/proc/{}/pagemap", t.pid())).ok()?;
        Some(Written::of(state, t, &pagemap))
    });
    let (own, runs) = split_runs(state, &images, written.as_ref(), source)?;
    let split = Split {
        stored_pages: own.iter().map(|r| r.len / PAGE_SIZE).sum(),
        parent_pages: runs.iter().map(|r| r.run.len / PAGE_SIZE).sum(),
        tracked_bytes: written.as_ref().map_or(0, Written::tracked_bytes),
    };
    let link = ParentLink {
        record: ParentRecord {
            headers: sum.headers,
            notes: sum.notes,
            file_size: sum.file_size,
            depth,
            pid: p.pid,
            start_time: p.start_time,
            ..ParentRecord::default()
        },
        path: parent.relative.clone(),
        runs,
    };
    let state = TaskState {
        pages: own,
        ..state.clone()
    };
    let n = image_writer::write_image_linked(&state, Some(&link), out, source, opts)?;
    Ok((n, Some(split)))
}

/// After the images are published, with the processes (`states`) still
/// stopped: each tracking protects its process's memory from now on, from
/// the image of its identity. Returns a warning for each that could not.
pub fn rearm_all(
    trackings: Vec<Option<(track::Tracking, holder::Identity)>>,
    states: &[TaskState],
) -> Vec<String> {
    let mut warnings = Vec::new();
    for (t, state) in trackings.into_iter().zip(states) {
        let Some((t, id)) = t else { continue };
        if let Err(e) = t.rearm(&state.vmas, &id) {
            warnings.push(format!(
                "{e}: pages written after this dump are not tracked (the next dump compares them)"
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        let rel = |a: &str, b: &str| relative_path(Path::new(a), Path::new(b));
        assert_eq!(
            rel("/tmp/c/2", "/tmp/c/1/task-7.crimg"),
            Path::new("../1/task-7.crimg")
        );
        assert_eq!(
            rel("/tmp/c", "/tmp/c/task-7.crimg"),
            Path::new("task-7.crimg")
        );
        assert_eq!(
            rel("/a/b/c", "/x/task-7.crimg"),
            Path::new("../../../x/task-7.crimg")
        );
    }
}
