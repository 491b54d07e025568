//! Shared memory objects and saved files: memfds, shared anonymous memory,
//! deleted files still mapped, and small shared-mapped files kept to be
//! recreated (see `image_format::records::ShmemRecord`). One object per
//! inode, found from the areas that map it; each of its bytes is kept once:
//! as the stored pages of the first area that maps that offset, or, where
//! no mapping can carry it, as the whole content under `--ghost-limit`.
//! Pure bookkeeping: the reads are the caller's (`collect::areas`).

use image_format::records::{seals, shmem_flags, shmem_kind, vma_kind, ShmemRecord};
use image_writer::model::ShmemState;

use crate::collect::task::FileMeta;
use crate::procfs::smaps::SmapsEntry;

/// The longest memfd name `memfd_create` takes (249 bytes, without the
/// `memfd:` prefix).
pub const MAX_MEMFD_NAME: usize = 249;

/// All the content saved in one image may take at most this much of the
/// notes (a reader accepts 64 MiB of notes in all).
pub const MAX_CONTENT_TOTAL: u64 = 48 << 20;

/// The object an area of kind `kind` (after `vmas::classify`) maps, if it
/// maps one: memfds, shared anonymous memory, deleted files, and shared
/// mappings of regular files of at most `ghost_limit` bytes (`meta`: the
/// mapped file's).
pub fn object_kind(e: &SmapsEntry, kind: u32, meta: &FileMeta, ghost_limit: u64) -> Option<u32> {
    let regular = meta.mode & 0o170_000 == 0o100_000;
    if e.path.starts_with("/memfd:") {
        return Some(shmem_kind::MEMFD);
    }
    match kind {
        vma_kind::SHARED_ANON => Some(shmem_kind::SHARED_ANON),
        vma_kind::FILE if e.deleted => Some(shmem_kind::GHOST),
        vma_kind::FILE if e.shared && regular && meta.id.size <= ghost_limit => {
            Some(shmem_kind::RECREATE)
        }
        _ => None,
    }
}

/// Whether areas of this kind are mapped from their object (not opened by
/// path): all but the recreated files, which are opened by path when there.
pub fn needs_object(e: &SmapsEntry, kind: u32) -> bool {
    e.path.starts_with("/memfd:")
        || kind == vma_kind::SHARED_ANON
        || (kind == vma_kind::FILE && e.deleted)
}

/// The name an object is restored with: a memfd's own (after `memfd:`),
/// shared anonymous memory's the path `/proc/P/maps` showed without its
/// slash (`dev/zero`, `SYSV00000000`, `[anon_shmem:ring]`), a file's path.
pub fn object_name(kind: u32, path: &str) -> Vec<u8> {
    let name = match kind {
        shmem_kind::MEMFD => path.strip_prefix("/memfd:").unwrap_or(path),
        shmem_kind::SHARED_ANON => {
            let n = path.strip_prefix('/').unwrap_or(path);
            if n.is_empty() {
                "shmem"
            } else {
                n
            }
        }
        _ => path,
    };
    let mut name = name.as_bytes().to_vec();
    if kind != shmem_kind::GHOST && kind != shmem_kind::RECREATE {
        name.truncate(MAX_MEMFD_NAME);
    }
    name
}

/// The objects found so far and which of their bytes are kept.
#[derive(Debug, Default)]
pub struct ShmemObjects {
    pub states: Vec<ShmemState>,
    /// Per object: the object offsets whose pages are stored already.
    stored: Vec<Vec<(u64, u64)>>,
    /// Content bytes saved in all.
    content_total: u64,
}

impl ShmemObjects {
    /// The 1-based index of the object with `meta`'s identity, added as
    /// `kind` named `name` when new.
    pub fn object_of(&mut self, kind: u32, name: &[u8], meta: &FileMeta) -> u32 {
        let found = self
            .states
            .iter()
            .position(|o| o.record.file.dev == meta.id.dev && o.record.file.ino == meta.id.ino);
        let index = found.unwrap_or_else(|| {
            self.states.push(ShmemState {
                record: ShmemRecord {
                    kind,
                    size: meta.id.size,
                    mode: meta.mode,
                    uid: meta.uid,
                    gid: meta.gid,
                    file: meta.id,
                    ..ShmemRecord::default()
                },
                name: name.to_vec(),
                content: Vec::new(),
            });
            self.stored.push(Vec::new());
            self.states.len() - 1
        });
        // At most one object per area, and areas are far fewer than 2^32.
        u32::try_from(index + 1).unwrap_or(u32::MAX)
    }

    fn get(&self, object: u32) -> Option<&ShmemState> {
        self.states
            .get(usize::try_from(object).ok()?.checked_sub(1)?)
    }

    /// Whether the object's whole content is saved (its areas get no pages).
    pub fn whole(&self, object: u32) -> bool {
        self.get(object)
            .is_some_and(|o| o.record.flags & shmem_flags::WHOLE_CONTENT != 0)
    }

    /// Whether the object's whole content must be saved: files (deleted or
    /// recreated), memfds sealed `F_SEAL_WRITE` (a restored one is sealed
    /// before it is mapped; `F_SEAL_FUTURE_WRITE` is added after its areas
    /// are filled, so their pages carry it), and memfds with data that none of their shared
    /// areas covers (`shared_ranges`: the object ranges those map; a private
    /// mapping or an fd reads the file itself). Shared anonymous memory
    /// nothing maps any more is out of the task's reach: not kept.
    pub fn needs_whole(record: &ShmemRecord, data: &[(u64, u64)], shared: &[(u64, u64)]) -> bool {
        match record.kind {
            shmem_kind::GHOST | shmem_kind::RECREATE => true,
            shmem_kind::MEMFD => {
                record.seals & seals::WRITE != 0 || data.iter().any(|&d| !covered(d, shared))
            }
            _ => false,
        }
    }

    /// Save `content` as the object's whole content, when it fits
    /// `ghost_limit` and the image's total; `Err` says the sizes.
    pub fn save_content(
        &mut self,
        object: u32,
        content: Vec<u8>,
        ghost_limit: u64,
    ) -> Result<(), String> {
        let len = content.len() as u64;
        if len > ghost_limit {
            return Err(format!(
                "{len} bytes, above the ghost limit of {ghost_limit} bytes (--ghost-limit)"
            ));
        }
        if self.content_total + len > MAX_CONTENT_TOTAL {
            return Err(format!(
                "{len} bytes, and the files saved before it take {} bytes: above the {MAX_CONTENT_TOTAL} bytes an image holds",
                self.content_total
            ));
        }
        let Some(o) = usize::try_from(object)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.states.get_mut(i))
        else {
            return Ok(());
        };
        self.content_total += len;
        o.record.flags |= shmem_flags::WHOLE_CONTENT;
        o.content = content;
        Ok(())
    }

    /// Of `extents` (object offsets with data), the parts an area mapping
    /// object offsets `[pgoff, pgoff + len)` stores: those no area before it
    /// stored. They are marked stored.
    pub fn take_unstored(
        &mut self,
        object: u32,
        pgoff: u64,
        len: u64,
        extents: &[(u64, u64)],
    ) -> Vec<(u64, u64)> {
        let Some(stored) = usize::try_from(object)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| self.stored.get_mut(i))
        else {
            return extents.to_vec();
        };
        let end = pgoff.saturating_add(len);
        let page = image_format::PAGE_SIZE;
        let mut out = Vec::new();
        for &(from, to) in extents {
            // Whole pages, as they are stored.
            let lo = (from.max(pgoff)) & !(page - 1);
            let hi = image_format::page_align_up(to.min(end));
            if lo < hi {
                subtract((lo, hi), stored, &mut out);
            }
        }
        stored.extend_from_slice(&out);
        stored.sort_unstable();
        out
    }
}

/// Whether `r` lies inside the union of `ranges`.
fn covered(r: (u64, u64), ranges: &[(u64, u64)]) -> bool {
    let mut rest = Vec::new();
    subtract(r, ranges, &mut rest);
    rest.is_empty()
}

/// `r` less every range of `minus` (any order, may overlap), appended to
/// `out` in order.
fn subtract(r: (u64, u64), minus: &[(u64, u64)], out: &mut Vec<(u64, u64)>) {
    let mut sorted: Vec<_> = minus
        .iter()
        .copied()
        .filter(|&(a, b)| a < r.1 && r.0 < b)
        .collect();
    sorted.sort_unstable();
    let mut at = r.0;
    for (a, b) in sorted {
        if a > at {
            out.push((at, a.min(r.1)));
        }
        at = at.max(b);
        if at >= r.1 {
            return;
        }
    }
    if at < r.1 {
        out.push((at, r.1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::records::FileId;

    fn meta(ino: u64, size: u64) -> FileMeta {
        FileMeta {
            id: FileId {
                dev: 1,
                ino,
                size,
                ..FileId::default()
            },
            mode: 0o100_600,
            ..FileMeta::default()
        }
    }

    #[test]
    fn one_object_per_inode_and_each_page_stored_once() {
        let mut o = ShmemObjects::default();
        let a = o.object_of(shmem_kind::MEMFD, b"heap", &meta(7, 0x10000));
        let b = o.object_of(shmem_kind::MEMFD, b"heap", &meta(7, 0x10000));
        let c = o.object_of(shmem_kind::SHARED_ANON, b"dev/zero", &meta(8, 0x1000));
        assert_eq!((a, b, c), (1, 1, 2));
        let data = [(0, 0x3000), (0x8000, 0x9000)];
        // Three views of the same object (ZGC): only the first stores.
        assert_eq!(
            o.take_unstored(a, 0, 0x10000, &data),
            vec![(0, 0x3000), (0x8000, 0x9000)]
        );
        assert!(o.take_unstored(a, 0, 0x10000, &data).is_empty());
        // A view of part of it, then the rest.
        let mut o = ShmemObjects::default();
        let a = o.object_of(shmem_kind::MEMFD, b"heap", &meta(7, 0x10000));
        assert_eq!(
            o.take_unstored(a, 0x1000, 0x1000, &data),
            vec![(0x1000, 0x2000)]
        );
        assert_eq!(
            o.take_unstored(a, 0, 0x10000, &data),
            vec![(0, 0x1000), (0x2000, 0x3000), (0x8000, 0x9000)]
        );
    }

    #[test]
    fn whole_content_when_no_mapping_can_carry_it() {
        let mut r = ShmemRecord {
            kind: shmem_kind::MEMFD,
            ..ShmemRecord::default()
        };
        assert!(!ShmemObjects::needs_whole(
            &r,
            &[(0, 0x2000)],
            &[(0, 0x1000), (0x1000, 0x4000)]
        ));
        assert!(ShmemObjects::needs_whole(
            &r,
            &[(0, 0x2000)],
            &[(0x1000, 0x4000)]
        ));
        assert!(ShmemObjects::needs_whole(&r, &[(0, 0x2000)], &[]));
        r.seals = seals::WRITE;
        assert!(ShmemObjects::needs_whole(&r, &[], &[(0, 0x1000)]));
        r.seals = 0;
        r.kind = shmem_kind::SHARED_ANON;
        assert!(!ShmemObjects::needs_whole(&r, &[(0, 0x2000)], &[]));
        r.kind = shmem_kind::GHOST;
        assert!(ShmemObjects::needs_whole(&r, &[], &[]));
    }

    #[test]
    fn content_over_the_limit_is_refused_with_its_size() {
        let mut o = ShmemObjects::default();
        let a = o.object_of(shmem_kind::GHOST, b"/tmp/x", &meta(3, 10));
        let err = o.save_content(a, vec![1; 10], 9).unwrap_err();
        assert!(err.contains("10 bytes") && err.contains("9 bytes"), "{err}");
        assert!(!o.whole(a));
        o.save_content(a, vec![1; 10], 10).unwrap();
        assert!(o.whole(a));
    }

    #[test]
    fn names() {
        assert_eq!(
            object_name(shmem_kind::MEMFD, "/memfd:java_heap"),
            b"java_heap"
        );
        assert_eq!(
            object_name(shmem_kind::SHARED_ANON, "/dev/zero"),
            b"dev/zero"
        );
        assert_eq!(object_name(shmem_kind::SHARED_ANON, ""), b"shmem");
        assert_eq!(object_name(shmem_kind::GHOST, "/tmp/a b"), b"/tmp/a b");
    }
}
