//! Incremental images written by `write_image_linked` and read back as a
//! chain: every page of the child resolves to the bytes its memory had
//! (its own, or its parent's), and a wrong parent, a damaged parent page,
//! a run the parent lacks or an unknown PARENT record version are refused.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::FileExt;

use image_format::chain::{self, ChainError};
use image_format::elf::UserRegs;
use image_format::records::{
    self, prot, vma_kind, CredsRecord, MmRecord, ParentRecord, ProcessRecord, ThreadRecord,
    VmaRecord,
};
use image_format::{Image, ImageError, PAGE_SIZE};
use image_writer::model::{PageRun, TaskState, ThreadState, VmaState};
use image_writer::parent::{ParentLink, ParentRun};
use image_writer::write::{write_image, write_image_linked, PageSource, WriteOptions};
use zerocopy::FromZeros;

const AREA: u64 = 0x7000_0000;
const PAGES: u64 = 32;

/// Memory whose page `p` holds generation `gens[p]` of its pattern.
struct Memory {
    gens: BTreeMap<u64, u8>,
}

impl Memory {
    fn byte(&self, addr: u64) -> u8 {
        let page = (addr - AREA) / PAGE_SIZE;
        let gen = self.gens.get(&page).copied().unwrap_or(0);
        ((addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8) ^ gen.wrapping_mul(31)
    }

    fn page(&self, page: u64) -> Vec<u8> {
        let at = AREA + page * PAGE_SIZE;
        (0..PAGE_SIZE).map(|i| self.byte(at + i)).collect()
    }
}

impl PageSource for Memory {
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(addr + i as u64);
        }
        Ok(())
    }
}

fn state(pages: Vec<PageRun>) -> TaskState {
    let mut process = ProcessRecord::new_zeroed();
    process.pid = 77;
    process.start_time = 12345;
    process.page_size = PAGE_SIZE as u32;
    let mut xsave = vec![0u8; 2440];
    xsave[464..468].copy_from_slice(&0x4650_5853u32.to_le_bytes());
    TaskState {
        process,
        exe: "/bin/x".into(),
        cwd: "/".into(),
        root: "/".into(),
        cmdline: b"x\0".to_vec(),
        creds: CredsRecord::new_zeroed(),
        mm: MmRecord::default(),
        auxv: vec![0, 0],
        rlimits: vec![],
        sigactions: vec![],
        itimers: vec![],
        threads: vec![ThreadState {
            record: ThreadRecord {
                tid: 77,
                ..ThreadRecord::default()
            },
            regs: UserRegs::default(),
            xsave,
        }],
        vmas: vec![VmaState {
            record: VmaRecord {
                start: AREA,
                end: AREA + PAGES * PAGE_SIZE,
                prot: prot::READ | prot::WRITE,
                kind: vma_kind::ANON,
                ..VmaRecord::default()
            },
            path: String::new(),
        }],
        fds: vec![],
        objects: Default::default(),
        pending: vec![],
        gadgets: Default::default(),
        warnings: vec![],
        pages,
    }
}

fn run(first: u64, n: u64) -> PageRun {
    PageRun {
        start: AREA + first * PAGE_SIZE,
        len: n * PAGE_SIZE,
    }
}

fn read_back(file: &std::fs::File, size: u64) -> Vec<u8> {
    let mut bytes = vec![0u8; size as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

fn full(mem: &mut Memory, pages: Vec<PageRun>) -> Vec<u8> {
    let file = tempfile::tempfile().unwrap();
    let size = write_image(&state(pages), &file, mem).unwrap();
    read_back(&file, size)
}

/// A child of `parent` storing `own` from `mem` and taking `from_parent`
/// (checksums over `mem`, equal to the parent there) from it.
fn child(
    parent: &[u8],
    mem: &mut Memory,
    own: Vec<PageRun>,
    from_parent: &[PageRun],
) -> Result<Vec<u8>, image_writer::WriteError> {
    let p = Image::parse(parent).unwrap();
    let sum = p.checksum_record().unwrap();
    let runs = from_parent
        .iter()
        .map(|&r| {
            let mut buf = vec![0u8; r.len as usize];
            mem.read_pages(r.start, &mut buf).unwrap();
            ParentRun {
                run: r,
                checksum: image_format::checksum(&buf),
            }
        })
        .collect();
    let link = ParentLink {
        record: ParentRecord {
            headers: sum.headers,
            notes: sum.notes,
            file_size: sum.file_size,
            depth: p.parent().map_or(0, |r| r.depth) + 1,
            pid: 77,
            start_time: 12345,
            ..ParentRecord::default()
        },
        path: "../1/task-77.crimg".into(),
        runs,
    };
    let file = tempfile::tempfile().unwrap();
    let size = write_image_linked(
        &state(own),
        Some(&link),
        &file,
        mem,
        WriteOptions::default(),
    )?;
    Ok(read_back(&file, size))
}

/// Every page of `image` (link 0 of `chain`) as the chain gives it.
fn resolved(chain: &[Image<'_>]) -> BTreeMap<u64, Vec<u8>> {
    let mut pages = BTreeMap::new();
    for s in chain[0].segments() {
        chain::resolve::<ChainError>(chain, 0, s.vaddr, s.len, &mut |p| {
            let bytes = p.bytes(chain);
            for (k, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
                let n = (p.vaddr - AREA) / PAGE_SIZE + k as u64;
                pages.insert(n, page.to_vec());
            }
            Ok(())
        })
        .unwrap();
    }
    pages
}

#[test]
fn a_chain_of_three_gives_the_newest_pages() {
    // Generation 0 everywhere; then pages 3..6 and 20 change; then 4 and 30.
    let mut mem = Memory {
        gens: BTreeMap::new(),
    };
    let first = full(&mut mem, vec![run(0, 24)]);
    mem.gens.extend([(3, 1), (4, 1), (5, 1), (20, 1)]);
    let second = child(
        &first,
        &mut mem,
        vec![run(3, 3), run(20, 1)],
        &[run(0, 3), run(6, 14), run(21, 3)],
    )
    .unwrap();
    mem.gens.extend([(4, 2), (30, 2)]);
    let third = child(
        &second,
        &mut mem,
        vec![run(4, 1), run(30, 1)],
        &[run(0, 4), run(5, 19)],
    )
    .unwrap();
    let images: Vec<Image> = [&third, &second, &first]
        .iter()
        .map(|b| Image::parse(b).unwrap())
        .collect();
    chain::check_links(&images).unwrap();
    for link in 0..3 {
        images[link].verify_segments().unwrap();
        chain::verify_parent_segments(&images, link).unwrap();
    }
    // The newest holds only its own two pages' bytes.
    assert_eq!(images[0].stored_bytes(), 2 * PAGE_SIZE);
    assert_eq!(images[0].parent().unwrap().depth, 2);
    let pages = resolved(&images);
    let want: Vec<u64> = (0..24).chain([30]).collect();
    assert_eq!(pages.keys().copied().collect::<Vec<_>>(), want);
    for (n, bytes) in &pages {
        assert_eq!(bytes, &mem.page(*n), "page {n}");
    }
}

#[test]
fn a_wrong_or_damaged_parent_is_refused() {
    let mut mem = Memory {
        gens: BTreeMap::new(),
    };
    let first = full(&mut mem, vec![run(0, 8)]);
    mem.gens.insert(2, 1);
    let second = child(&first, &mut mem, vec![run(2, 1)], &[run(0, 2), run(3, 5)]).unwrap();

    // Another image of the same layout, one page different: not the parent.
    let mut other_mem = Memory {
        gens: BTreeMap::from([(7, 9)]),
    };
    let other = full(&mut other_mem, vec![run(0, 8)]);
    let chain = [
        Image::parse(&second).unwrap(),
        Image::parse(&other).unwrap(),
    ];
    assert!(matches!(
        chain::check_links(&chain),
        Err(ChainError::NotTheParent { link: 1, .. })
    ));

    // The parent's page bytes damaged, its headers and notes intact: the
    // link holds, the child's checksum of what it takes does not.
    let mut damaged = first.clone();
    let seg = Image::parse(&first).unwrap().segment(0).unwrap();
    damaged[(seg.offset + 5 * PAGE_SIZE + 7) as usize] ^= 1;
    let chain = [
        Image::parse(&second).unwrap(),
        Image::parse(&damaged).unwrap(),
    ];
    chain::check_links(&chain).unwrap();
    assert!(matches!(
        chain::verify_parent_segments(&chain, 0),
        Err(ChainError::ChecksumMismatch { link: 0, .. })
    ));
    // Left to a lazy restore's page server: that segment is not read
    // (asked about parent segments only, in order); another rule is.
    let mut asked = Vec::new();
    chain::verify_parent_segments_but(&chain, 0, &mut |s| {
        asked.push(s.index);
        true
    })
    .unwrap();
    let parent_segments: Vec<u32> = chain[0]
        .segments()
        .filter(|s| s.from_parent())
        .map(|s| s.index)
        .collect();
    assert_eq!(asked, parent_segments);
    assert!(matches!(
        chain::verify_parent_segments_but(&chain, 0, &mut |_| false),
        Err(ChainError::ChecksumMismatch { link: 0, .. })
    ));

    // No parent given for an image that names one.
    assert!(matches!(
        chain::check_links(&chain[..1]),
        Err(ChainError::ParentMissing { link: 0 })
    ));
}

#[test]
fn pages_the_parent_lacks_are_refused() {
    let mut mem = Memory {
        gens: BTreeMap::new(),
    };
    let first = full(&mut mem, vec![run(0, 4)]);
    // Pages 4..6 were never in the parent.
    let second = child(&first, &mut mem, vec![], &[run(2, 4)]).unwrap();
    let chain = [
        Image::parse(&second).unwrap(),
        Image::parse(&first).unwrap(),
    ];
    chain::check_links(&chain).unwrap();
    assert!(matches!(
        chain::verify_parent_segments(&chain, 0),
        Err(ChainError::MissingPages {
            link: 1,
            vaddr
        }) if vaddr == AREA + 4 * PAGE_SIZE
    ));
    // A parent run over a stored one is not written.
    assert!(child(&first, &mut mem, vec![run(1, 1)], &[run(0, 2)]).is_err());
}

#[test]
fn a_parent_record_of_an_unknown_version_is_refused_by_name() {
    let mut mem = Memory {
        gens: BTreeMap::new(),
    };
    let first = full(&mut mem, vec![run(0, 2)]);
    let mut second = child(&first, &mut mem, vec![], &[run(0, 2)]).unwrap();
    let img = Image::parse(&second).unwrap();
    let desc = img.crimg_note(records::note::PARENT).unwrap();
    let at = desc.as_ptr() as usize - second.as_ptr() as usize;
    second[at..at + 2].copy_from_slice(&2u16.to_le_bytes());
    // The checksum record covers the notes: fix it up as a writer would.
    image_format::reseal(&mut second).unwrap();
    assert!(matches!(
        Image::parse(&second),
        Err(ImageError::UnsupportedRecordVersion {
            note_type: records::note::PARENT,
            found: 2,
            ..
        })
    ));
}
