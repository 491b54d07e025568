//! The memory areas: one record per smaps entry (kind, protections, flags,
//! the file behind it), the loader's gadgets found in the executable file
//! mappings, scratch memory for injected syscalls, and the pages kept.

use std::path::Path;

use image_format::records::vma_kind;
use image_format::PAGE_SIZE;
use image_writer::model::{PageRun, VmaState};

use super::task::Task;
use super::{CollectError, Collector};
use crate::objects::shmem::{self, ShmemObjects};
use crate::pages::{self, PagePolicy};
use crate::procfs::smaps::SmapsEntry;
use crate::report::VmaStat;
use crate::{inject, vmas};

/// The record of every area, and how each is kept (for the pages).
pub(super) fn memory_areas<T: Task>(
    c: &mut Collector<'_, T>,
    smaps: &[SmapsEntry],
    objects: &mut ShmemObjects,
) -> Result<(Vec<VmaState>, Vec<vmas::VmaClass>), CollectError> {
    let mut vma_states = Vec::with_capacity(smaps.len());
    let mut classes = Vec::with_capacity(smaps.len());
    // Areas registered by crimg's own write tracking or by this dump's
    // write-protected snapshot (`uw`) are no state.
    let wp_tracked = smaps.iter().any(|e| e.vm_flags.iter().any(|f| f == "uw"))
        && (c.opts.own_uffd == Some(c.pid) || crate::incremental::holder::tracks(c.pid));
    for e in smaps {
        let class = match vmas::classify_tracked(e, wp_tracked) {
            Ok(class) => class,
            Err(what) => {
                c.unsupported(what)?;
                // Forced: keep the area's layout, without contents.
                vmas::VmaClass {
                    kind: vma_kind::ANON,
                    policy: PagePolicy::Nothing,
                    warning: None,
                }
            }
        };
        if let Some(w) = &class.warning {
            c.warnings.push(w.clone());
        }
        let mut record = image_format::records::VmaRecord {
            start: e.start,
            end: e.end,
            pgoff: e.offset,
            prot: vmas::prot_of(e),
            flags: vmas::flags_of(e),
            kind: class.kind,
            ..Default::default()
        };
        if class.kind == vma_kind::FILE {
            // The file as mapped (also when replaced or deleted since), else
            // by its path.
            let link = c.proc_path(&format!("map_files/{:x}-{:x}", e.start, e.end));
            let meta = c
                .task
                .metadata(Path::new(&link))
                .or_else(|_| c.task.metadata(Path::new(&e.path)));
            match meta {
                Ok(m) => {
                    record.file = m.id;
                    record.object = area_object(c, e, class.kind, &m, objects)?;
                }
                Err(source) => {
                    return Err(CollectError::Read {
                        pid: c.pid,
                        // The target's file name: shown escaped.
                        path: image_format::text::Escaped(e.path.as_bytes()).to_string(),
                        source,
                    });
                }
            }
        }
        if class.kind == vma_kind::SHARED_ANON {
            // The shared object, by the inode behind the area.
            let link = c.proc_path(&format!("map_files/{:x}-{:x}", e.start, e.end));
            match c.task.metadata(Path::new(&link)) {
                Ok(meta) => {
                    record.file = meta.id;
                    record.object = area_object(c, e, class.kind, &meta, objects)?;
                }
                // Following map_files needs CAP_SYS_ADMIN or
                // CAP_CHECKPOINT_RESTORE: without, the area is kept on its
                // own, as anonymous shared memory.
                Err(err) => c.warnings.push(format!(
                    "shared memory {} at {:#x}-{:#x} cannot be identified ({link}: {err}): restored as anonymous shared memory of its own, not shared with its other areas or fds",
                    image_format::text::Escaped(e.path.as_bytes()),
                    e.start,
                    e.end
                )),
            }
        }
        vma_states.push(VmaState {
            record,
            path: e.path.clone(),
        });
        classes.push(class);
    }
    if let Some(w) = vmas::mlockall_warning(smaps) {
        c.warnings.push(w);
    }
    Ok((vma_states, classes))
}

/// The 1-based object (0: none) area `e` of kind `kind` maps (`meta`: its
/// file's), added to `objects` when it is the first area of it. A
/// non-regular deleted file cannot be saved: refused by name.
fn area_object<T: Task>(
    c: &mut Collector<'_, T>,
    e: &SmapsEntry,
    kind: u32,
    meta: &super::task::FileMeta,
    objects: &mut ShmemObjects,
) -> Result<u32, CollectError> {
    let Some(object_kind) = shmem::object_kind(e, kind, meta, c.opts.ghost_limit()) else {
        return Ok(0);
    };
    if object_kind == image_format::records::shmem_kind::GHOST && meta.mode & 0o170_000 != 0o100_000
    {
        c.unsupported(format!(
            "mapped file {} was deleted and is not a regular file ({:#x}-{:#x})",
            image_format::text::Escaped(e.path.as_bytes()),
            e.start,
            e.end
        ))?;
        return Ok(0);
    }
    let name = shmem::object_name(object_kind, &e.path);
    Ok(objects.object_of(object_kind, &name, meta))
}

/// The fds on memfds and on deleted regular files: each refers to its
/// object (`FdRecord::object`, 1-based in the SHMEM note), the same one as
/// the areas that map that inode.
pub(super) fn fd_objects<T: Task>(
    c: &mut Collector<'_, T>,
    fds: &mut [image_writer::model::FdState],
    objects: &mut ShmemObjects,
) -> Result<(), CollectError> {
    use image_format::records::{fd_flags, fd_kind, shmem_kind};
    for f in fds.iter_mut() {
        let kind = match f.record.kind {
            fd_kind::MEMFD => shmem_kind::MEMFD,
            fd_kind::REGULAR if f.record.flags & fd_flags::DELETED != 0 => shmem_kind::GHOST,
            _ => continue,
        };
        let link = c.proc_path(&format!("fd/{}", f.record.fd));
        let meta = c
            .task
            .metadata(Path::new(&link))
            .map_err(c.read_error(link))?;
        let name = shmem::object_name(kind, &f.path);
        f.record.object = objects.object_of(kind, &name, &meta);
        // Saved with its object: not dropped (the fds were marked before
        // the objects were found).
        f.record.flags &= !fd_flags::DROPPED;
    }
    Ok(())
}

/// Each object's seals, and its whole content where no mapping carries it
/// (`ShmemObjects::needs_whole`), read through the first area that maps it
/// (`/proc/P/map_files`, which opens a deleted file or a memfd too). Content
/// above `--ghost-limit` is refused with the area, its size and the limit.
pub(super) fn object_contents<T: Task>(
    c: &mut Collector<'_, T>,
    smaps: &[SmapsEntry],
    vmas: &[VmaState],
    fds: &[image_writer::model::FdState],
    objects: &mut ShmemObjects,
) -> Result<Vec<u32>, CollectError> {
    use image_format::records::shmem_kind;
    let mut lost = Vec::new();
    for index in 0..objects.states.len() {
        // Fewer objects than areas: the index fits.
        let object = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let areas: Vec<(&SmapsEntry, &VmaState)> = smaps
            .iter()
            .zip(vmas)
            .filter(|(_, v)| v.record.object == object)
            .collect();
        let fd = fds
            .iter()
            .find(|f| f.record.object == object && object_fd(f));
        // Read through an area, or else an fd (`/proc/P/fd/N` opens the
        // file itself, deleted or not).
        // An fd first: `/proc/P/fd` opens for any dumper that may trace
        // the task, `map_files` only with CAP_SYS_ADMIN.
        // Named by its fd (`fd N is ...`, as every fd's refusal) or its area.
        let (link, fd_place, area_place) = match (fd, areas.first()) {
            (Some(f), _) => (
                c.proc_path(&format!("fd/{}", f.record.fd)),
                format!("fd {} is a ", f.record.fd),
                String::new(),
            ),
            (None, Some(&(first, _))) => (
                c.proc_path(&format!("map_files/{:x}-{:x}", first.start, first.end)),
                String::new(),
                format!(" mapped at {:#x}-{:#x}", first.start, first.end),
            ),
            (None, None) => continue,
        };
        let mut record = objects.states[index].record;
        if record.kind == shmem_kind::MEMFD {
            record.seals = c
                .task
                .seals(Path::new(&link))
                .map_err(c.read_error(link.clone()))?;
            objects.states[index].record.seals = record.seals;
        }
        let shared: Vec<(u64, u64)> = areas
            .iter()
            .filter(|(_, v)| v.record.kind == vma_kind::SHARED_ANON)
            .map(|(e, _)| (e.offset, e.offset.saturating_add(e.end - e.start)))
            .collect();
        let data = c
            .task
            .data_extents(Path::new(&link), record.size)
            .unwrap_or_else(|_| vec![(0, record.size)]);
        if !ShmemObjects::needs_whole(&record, &data, &shared) {
            continue;
        }
        let name = objects.states[index].name.clone();
        let what = || {
            format!(
                "{fd_place}{} {}{area_place}",
                match record.kind {
                    shmem_kind::MEMFD => "memfd",
                    shmem_kind::RECREATE => "shared-mapped file",
                    _ => "deleted file",
                },
                image_format::text::Escaped(&name),
            )
        };
        // Refused before it is read, by its size.
        if record.size > c.opts.ghost_limit() {
            c.unsupported(format!(
                "{}: {} bytes, above the ghost limit of {} bytes (--ghost-limit)",
                what(),
                record.size,
                c.opts.ghost_limit()
            ))?;
            lost.push(object);
            continue;
        }
        // A file that still exists is saved only in case it vanishes: one
        // that cannot be read or kept is opened by its path, as before.
        let spare = record.kind == shmem_kind::RECREATE;
        let mut content = match c.task.read(Path::new(&link)) {
            Ok(content) => content,
            Err(_) if spare => {
                lost.push(object);
                continue;
            }
            Err(e) => return Err(c.read_error(link.clone())(e)),
        };
        // The size at the dump; a file read longer or shorter than its
        // size is cut or zero-extended by the loader.
        content.truncate(usize::try_from(record.size).unwrap_or(usize::MAX));
        if let Err(why) = objects.save_content(object, content, c.opts.ghost_limit()) {
            if !spare {
                c.unsupported(format!("{}: {why}", what()))?;
            }
            lost.push(object);
        }
    }
    Ok(lost)
}

/// Objects whose content was not saved (`lost`; a blocker each, so only a
/// forced dump goes on) are not made again: their areas and fds no longer
/// refer to them. Shared memory is then mapped anonymous with its pages,
/// as before objects existed; a deleted file's areas keep their layout
/// without contents (anonymous), as any area a forced dump cannot keep;
/// their fds are dropped (`/dev/null` at restore), by the loader's rule.
pub(super) fn forget_objects(
    vmas: &mut [VmaState],
    classes: &mut [vmas::VmaClass],
    fds: &mut [image_writer::model::FdState],
    lost: &[u32],
) {
    use image_format::records::{fd_flags, vma_flags};
    if lost.is_empty() {
        return;
    }
    for (v, class) in vmas.iter_mut().zip(classes.iter_mut()) {
        if !lost.contains(&v.record.object) {
            continue;
        }
        v.record.object = 0;
        if v.record.kind == vma_kind::FILE && v.record.flags & vma_flags::FILE_DELETED != 0 {
            v.record.kind = vma_kind::ANON;
            class.kind = vma_kind::ANON;
            class.policy = PagePolicy::Nothing;
        }
    }
    for f in fds.iter_mut() {
        if object_fd(f) && lost.contains(&f.record.object) {
            f.record.object = 0;
        }
    }
    super::refusals::mark_dropped(fds);
    // An fd saved with its object is not dropped (marked before the
    // objects were found).
    for f in fds.iter_mut() {
        if binfmt_loader::objects::shmem::backs_fd(&f.record) {
            f.record.flags &= !fd_flags::DROPPED;
        }
    }
}

/// Whether fd state `f` is on a shared memory object or saved file.
fn object_fd(f: &image_writer::model::FdState) -> bool {
    use image_format::records::fd_kind;
    f.record.object != 0 && matches!(f.record.kind, fd_kind::MEMFD | fd_kind::REGULAR)
}

/// Scratch memory for injected syscalls: [`inject::SCRATCH_LEN`] bytes
/// below the red zone of the thread's stack, all inside the writable
/// private area that holds `rsp` (the bytes just below it), or `Err` with
/// the room that area has below the red zone (0 without one). Nothing else
/// is borrowed: the bytes are put back, but a dumper killed mid-injection
/// cannot put them back, and the task then runs on with them; below its
/// stack pointer they are dead, anywhere else (a neighbouring area, the
/// heap) they are live data.
pub(super) fn scratch_for(smaps: &[SmapsEntry], rsp: u64) -> Result<u64, u64> {
    let usable = |e: &SmapsEntry| {
        e.write && e.read && !e.shared && (e.path.is_empty() || e.path.starts_with('['))
    };
    let below = inject::scratch_below(rsp);
    // The area of the byte just below rsp (a fresh stack's rsp may be its
    // end). A stack pointer near 0 (a thread that uses rsp for something
    // else) wraps `below` to the top of the address space: no fit.
    let Some(stack) = smaps
        .iter()
        .find(|e| usable(e) && e.start < rsp && rsp <= e.end)
    else {
        return Err(0);
    };
    if below >= stack.start && below < rsp {
        Ok(below)
    } else {
        Err(rsp
            .saturating_sub(stack.start)
            .saturating_sub(inject::RED_ZONE))
    }
}

/// Choose the stored pages of every VMA from pagemap.
pub(super) fn select_pages<T: Task>(
    c: &Collector<'_, T>,
    smaps: &[SmapsEntry],
    classes: &[vmas::VmaClass],
    vmas: &[VmaState],
    objects: &mut ShmemObjects,
    zero_pfn: Option<u64>,
) -> Result<(Vec<PageRun>, Vec<VmaStat>), CollectError> {
    /// Pagemap entries read per call (64 MiB of address space = 128 KiB).
    const CHUNK_PAGES: usize = 16384;
    let pagemap_path = c.proc_path("pagemap");
    let mut runs = Vec::new();
    let mut stats = Vec::with_capacity(smaps.len());
    let mut raw = vec![0u8; CHUNK_PAGES * 8];
    let mut entries = Vec::with_capacity(CHUNK_PAGES);
    for ((e, class), v) in smaps.iter().zip(classes).zip(vmas) {
        let mut stored = 0;
        if class.kind == vma_kind::SHARED_ANON {
            stored = shared_extents(c, e, v.record.object, objects, &mut runs);
        } else if class.policy != PagePolicy::Nothing && (e.rss_kb > 0 || e.swap_kb > 0) {
            for (from, to, decided) in scanned_ranges(c, e, class.policy) {
                match decided {
                    Some(true) => {
                        pages::push_run(&mut runs, e.start, from, to - from);
                        stored += (to - from) / PAGE_SIZE;
                        continue;
                    }
                    Some(false) => continue,
                    None => {}
                }
                let mut addr = from;
                while addr < to {
                    // At most CHUNK_PAGES, so the count fits.
                    let n = usize::try_from((to - addr) / PAGE_SIZE)
                        .unwrap_or(CHUNK_PAGES)
                        .min(CHUNK_PAGES);
                    let bytes = &mut raw[..n * 8];
                    c.task
                        .read_pagemap(addr, bytes)
                        .map_err(c.read_error(pagemap_path.clone()))?;
                    entries.clear();
                    entries.extend(bytes.chunks_exact(8).map(|b| super::live::u64_at(b, 0)));
                    stored +=
                        pages::select(&mut runs, e.start, addr, &entries, class.policy, zero_pfn);
                    addr += entries.len() as u64 * PAGE_SIZE;
                }
            }
        }
        stats.push(VmaStat {
            start: e.start,
            end: e.end,
            kind: class.kind,
            prot: vmas::prot_of(e),
            path: e.path.clone(),
            stored_pages: stored,
        });
    }
    Ok((runs, stats))
}

/// Below this size, reading an area's pagemap (2 KiB per MiB, one `pread`
/// per 64 MiB) is as quick as scanning its page tables.
const SCAN_FROM: u64 = 1 << 30;

/// The ranges of area `e` where pages may be present or swapped, in
/// address order, each with what `PAGEMAP_SCAN`'s categories decide of its
/// pages: `Some(stored)` for present pages, `None` where pagemap must be
/// read (swapped pages and markers; all of a small area, or of any area on
/// a kernel without the ioctl, see [`populated_ranges`]). A reservation of
/// terabytes with pages scattered in it then costs one scan, not a
/// `pread` per page.
fn scanned_ranges<T: Task>(
    c: &Collector<'_, T>,
    e: &SmapsEntry,
    policy: PagePolicy,
) -> Vec<(u64, u64, Option<bool>)> {
    let read_all = || {
        populated_ranges(c, e)
            .into_iter()
            .map(|(from, to)| (from, to, None))
            .collect()
    };
    if e.end - e.start < SCAN_FROM {
        return read_all();
    }
    let mut regions = Vec::new();
    if c.task.scan_regions(e.start, e.end, &mut regions).is_err() {
        return read_all();
    }
    regions
        .into_iter()
        .map(|r| (r.start, r.end, pages::region_stored(r.categories, policy)))
        .collect()
}

/// Where in area `e` pages may be present or swapped: for a large area the
/// ranges `PAGEMAP_SCAN` finds (a reservation of terabytes is mostly empty
/// page tables, and reading its pagemap would take minutes), else, or on a
/// kernel without the ioctl, the whole area.
fn populated_ranges<T: Task>(c: &Collector<'_, T>, e: &SmapsEntry) -> Vec<(u64, u64)> {
    if e.end - e.start >= SCAN_FROM {
        let mut ranges = Vec::new();
        if c.task.scan_populated(e.start, e.end, &mut ranges).is_ok() {
            return ranges;
        }
    }
    vec![(e.start, e.end)]
}

/// Shared anonymous memory and memfds: the data extents of the shared
/// object (pages other processes wrote count too, even if not mapped
/// here; the whole area when the object cannot be opened) that no area
/// before this one of the same `object` stored: an object mapped three
/// times (ZGC's heap views) is stored once. Nothing when the object's
/// whole content is saved instead.
fn shared_extents<T: Task>(
    c: &Collector<'_, T>,
    e: &SmapsEntry,
    object: u32,
    objects: &mut ShmemObjects,
    runs: &mut Vec<PageRun>,
) -> u64 {
    if objects.whole(object) {
        return 0;
    }
    let link = c.proc_path(&format!("map_files/{:x}-{:x}", e.start, e.end));
    let len = e.end - e.start;
    let limit = e.offset.saturating_add(len);
    let extents = c
        .task
        .data_extents(Path::new(&link), limit)
        .unwrap_or_else(|_| vec![(e.offset, limit)]);
    let extents = if object == 0 {
        extents
    } else {
        objects.take_unstored(object, e.offset, len, &extents)
    };
    pages::select_extents(runs, e.start, e.end, e.offset, &extents)
}
