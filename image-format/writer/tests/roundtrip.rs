//! Writes images from hand-built states and reads them back; then damages
//! them in every way a disk or a person could, and checks that the reader
//! refuses each with an error instead of panicking or trusting bad data.

use std::io;
use std::os::unix::fs::FileExt;

use image_format::elf::UserRegs;
use image_format::records::{
    self, fd_kind, prot, vma_kind, CredsRecord, FdRecord, GadgetsRecord, MmRecord, ProcessRecord,
    RlimitRecord, SigactionRecord, ThreadRecord, VmaRecord,
};
use image_format::{Image, ImageError, PAGE_SIZE};
use image_writer::model::{FdState, PageRun, TaskState, ThreadState, VmaState};
use image_writer::write::{write_image, PageSource};
use zerocopy::FromZeros;

/// Memory whose every byte is a function of its address.
struct PatternMemory;

fn pattern(addr: u64) -> u8 {
    (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

impl PageSource for PatternMemory {
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = pattern(addr + i as u64);
        }
        Ok(())
    }
}

fn vma(start: u64, end: u64, kind: u32, path: &str) -> VmaState {
    VmaState {
        record: VmaRecord {
            start,
            end,
            prot: prot::READ | prot::WRITE,
            kind,
            ..VmaRecord::default()
        },
        path: path.into(),
    }
}

fn thread(tid: i32, rip: u64) -> ThreadState {
    let mut xsave = vec![0u8; 2440];
    xsave[464..468].copy_from_slice(&0x4650_5853u32.to_le_bytes());
    xsave[472..480].copy_from_slice(&0x207u64.to_le_bytes());
    xsave[512..520].copy_from_slice(&0x7u64.to_le_bytes());
    ThreadState {
        record: ThreadRecord {
            tid,
            sigmask: 0x1000,
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            ..ThreadRecord::default()
        },
        regs: UserRegs {
            rip,
            rsp: 0x7fff_0000_1000,
            cs: 0x33,
            ss: 0x2b,
            ..UserRegs::default()
        },
        xsave,
    }
}

fn sample_state(nthreads: usize, pages: Vec<PageRun>) -> TaskState {
    let mut process = ProcessRecord::new_zeroed();
    process.pid = 4242;
    process.ppid = 1;
    process.pgid = 4242;
    process.sid = 4242;
    process.comm = *b"sample\0\0\0\0\0\0\0\0\0\0";
    process.page_size = PAGE_SIZE as u32;
    let mut creds = CredsRecord::new_zeroed();
    creds.uid = [1000; 4];
    TaskState {
        process,
        exe: "/usr/bin/sample".into(),
        cwd: "/home/user".into(),
        root: "/".into(),
        cmdline: b"sample\0--flag\0".to_vec(),
        creds,
        mm: MmRecord {
            start_brk: 0x60_0000,
            brk: 0x62_1000,
            ..MmRecord::default()
        },
        auxv: vec![6, 4096, 0, 0],
        rlimits: vec![RlimitRecord {
            resource: 7,
            cur: 1024,
            max: 4096,
            ..RlimitRecord::default()
        }],
        sigactions: vec![SigactionRecord {
            signo: 10,
            handler: 0x40_1000,
            ..SigactionRecord::default()
        }],
        itimers: vec![],
        threads: (0..nthreads)
            .map(|i| thread(4242 + i as i32, 0x40_1000 + i as u64))
            .collect(),
        vmas: vec![
            vma(0x40_0000, 0x40_2000, vma_kind::FILE, "/usr/bin/sample"),
            vma(0x60_0000, 0x62_1000, vma_kind::HEAP, "[heap]"),
            vma(
                0x7fff_0000_0000,
                0x7fff_0002_1000,
                vma_kind::STACK,
                "[stack]",
            ),
        ],
        fds: vec![FdState {
            record: FdRecord {
                fd: 3,
                kind: fd_kind::REGULAR,
                pos: 17,
                ..FdRecord::default()
            },
            path: "/tmp/log".into(),
        }],
        // A terminal record too, so every known note is in the image
        // (the writer leaves the note out when there is none).
        objects: image_writer::model::ObjectStates {
            terminals: vec![records::TerminalRecord {
                fd: 0,
                resume: records::terminal_resume::STDIO,
                stdio_fd: -1,
                ..Default::default()
            }],
            ..Default::default()
        },
        pending: vec![],
        gadgets: GadgetsRecord {
            syscall_ret: 0x40_1234,
            rt_sigreturn: 0x40_1240,
        },
        warnings: vec!["posix timer 0 was not kept".into()],
        pages,
    }
}

fn default_pages() -> Vec<PageRun> {
    vec![
        PageRun {
            start: 0x60_0000,
            len: 3 * PAGE_SIZE,
        },
        PageRun {
            start: 0x61_0000,
            len: PAGE_SIZE,
        },
        PageRun {
            start: 0x7fff_0002_0000,
            len: PAGE_SIZE,
        },
    ]
}

fn write_to_vec(state: &TaskState) -> Vec<u8> {
    let file = tempfile::tempfile().unwrap();
    let size = write_image(state, &file, &mut PatternMemory).unwrap();
    let mut bytes = vec![0u8; size as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    assert_eq!(file.metadata().unwrap().len(), size);
    bytes
}

#[test]
fn round_trip_keeps_every_field() {
    let state = sample_state(3, default_pages());
    let bytes = write_to_vec(&state);
    let img = Image::parse(&bytes).unwrap();
    img.verify_segments().unwrap();

    let p = img.process();
    assert_eq!((p.pid, p.ppid, p.nthreads), (4242, 1, 3));
    assert_eq!(img.string(p.exe).unwrap(), b"/usr/bin/sample");
    assert_eq!(img.string(p.cmdline).unwrap(), b"sample\0--flag\0");
    assert_eq!(img.mm().brk, 0x62_1000);
    assert_eq!(img.creds().unwrap().uid, [1000; 4]);
    assert_eq!(img.gadgets().syscall_ret, 0x40_1234);
    assert_eq!(
        img.warnings().collect::<Vec<_>>(),
        vec![&b"posix timer 0 was not kept"[..]]
    );

    let threads: Vec<_> = img.threads().collect::<Result<_, _>>().unwrap();
    assert_eq!(threads.len(), 3);
    for (i, t) in threads.iter().enumerate() {
        assert_eq!(t.record.tid, 4242 + i as i32);
        assert_eq!(t.regs().rip, 0x40_1000 + i as u64);
        assert_eq!(t.xsave.len(), 2440);
        assert_eq!(t.xfeatures(), 0x207);
        assert_eq!(t.xstate_bv(), 0x7);
    }

    let vmas: Vec<_> = img.vmas().unwrap().collect();
    assert_eq!(vmas.len(), 3);
    assert_eq!(img.string(vmas[2].path).unwrap(), b"[stack]");
    let fds: Vec<_> = img.fds().unwrap().collect();
    assert_eq!((fds[0].fd, fds[0].pos), (3, 17));
    assert_eq!(img.string(fds[0].path).unwrap(), b"/tmp/log");

    let segs: Vec<_> = img.segments().collect();
    assert_eq!(segs.len(), 3);
    for (s, run) in segs.iter().zip(&state.pages) {
        assert_eq!((s.vaddr, s.len), (run.start, run.len));
        assert_eq!(
            s.offset % PAGE_SIZE,
            0,
            "segment contents must be page-aligned in the file"
        );
        let data = img.segment_bytes(s);
        assert!(data
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(s.vaddr + i as u64)));
    }
    assert_eq!(img.stored_bytes(), 5 * PAGE_SIZE);
    assert_eq!(img.auxv().len(), 32);
}

#[test]
fn image_size_follows_stored_pages() {
    let bytes = write_to_vec(&sample_state(1, default_pages()));
    let data = 5 * PAGE_SIZE;
    // Headers and notes fit in a couple of pages for a small task.
    assert!(
        bytes.len() as u64 <= data + 3 * PAGE_SIZE,
        "image is {} bytes",
        bytes.len()
    );
}

#[test]
fn many_segments_use_pn_xnum() {
    // More page runs than e_phnum can count: every other page of a big area.
    let runs: Vec<PageRun> = (0..70_000u64)
        .map(|i| PageRun {
            start: 0x1000_0000 + 2 * i * PAGE_SIZE,
            len: PAGE_SIZE,
        })
        .collect();
    let mut state = sample_state(1, runs);
    state.vmas = vec![vma(
        0x1000_0000,
        0x1000_0000 + 140_000 * PAGE_SIZE,
        vma_kind::ANON,
        "",
    )];
    let bytes = write_to_vec(&state);
    let img = Image::parse(&bytes).unwrap();
    assert_eq!(img.header().e_phnum, 0xffff);
    assert_eq!(img.segment_count(), 70_000);
    img.verify_segments().unwrap();
}

#[test]
fn rejects_plain_elf_and_other_versions() {
    let mut bytes = write_to_vec(&sample_state(1, default_pages()));
    bytes[14] = 9;
    assert_eq!(
        Image::parse(&bytes).unwrap_err(),
        ImageError::UnsupportedVersion {
            found: 9,
            oldest: 1,
            newest: 1
        }
    );
    bytes[14] = 0;
    assert!(matches!(
        Image::parse(&bytes).unwrap_err(),
        ImageError::UnsupportedVersion { found: 0, .. }
    ));
    bytes[9] = b'X';
    assert_eq!(Image::parse(&bytes).unwrap_err(), ImageError::NotCrimg);
    assert!(matches!(
        Image::parse(b"\x7fELF"),
        Err(ImageError::Truncated { .. })
    ));
    assert!(Image::parse(b"#!/bin/sh\n").is_err());
}

/// Where the record header of each crimg note of `bytes` is.
fn record_headers(bytes: &[u8]) -> Vec<(u32, usize)> {
    let img = Image::parse(bytes).unwrap();
    img.notes()
        .map(Result::unwrap)
        .filter(|n| n.owner == records::OWNER_CRIMG && n.note_type != records::note::STRTAB)
        .map(|n| {
            (
                n.note_type,
                n.desc.as_ptr() as usize - bytes.as_ptr() as usize,
            )
        })
        .collect()
}

#[test]
fn every_note_of_an_unknown_record_version_is_refused_by_name() {
    let bytes = write_to_vec(&sample_state(2, default_pages()));
    let headers = record_headers(&bytes);
    // Every known record note is in the sample image, and only those.
    let mut types: Vec<u32> = headers.iter().map(|&(t, _)| t).collect();
    // (Only an incremental image has a PARENT note: `tests/chain.rs`.)
    let mut known: Vec<u32> = records::KNOWN_NOTES
        .iter()
        .map(|v| v.note_type)
        .filter(|&t| t != records::note::PARENT)
        .collect();
    types.sort_unstable();
    known.sort_unstable();
    assert_eq!(types, known);
    for &(note_type, at) in &headers {
        let versions = records::KNOWN_NOTES
            .iter()
            .find(|v| v.note_type == note_type)
            .unwrap();
        for version in [versions.newest + 1, versions.oldest - 1, u16::MAX] {
            let mut damaged = bytes.clone();
            damaged[at..at + 2].copy_from_slice(&version.to_le_bytes());
            image_format::reseal(&mut damaged).unwrap();
            let err = Image::parse(&damaged).unwrap_err();
            assert_eq!(
                err,
                ImageError::UnsupportedRecordVersion {
                    note_type,
                    found: version,
                    oldest: versions.oldest,
                    newest: versions.newest,
                }
            );
            let name = records::note::name(note_type);
            assert_ne!(name, "unknown");
            assert!(err.to_string().contains(name), "{err}");
        }
    }
}

#[test]
fn a_duplicated_crimg_note_is_refused() {
    let mut bytes = write_to_vec(&sample_state(1, default_pages()));
    let headers = record_headers(&bytes);
    // Retype the GADGETS note as a second MM note (both hold one record).
    let (_, gadgets) = *headers
        .iter()
        .find(|&&(t, _)| t == records::note::GADGETS)
        .unwrap();
    // The note type is the last field of the note header, which ends 8
    // bytes ("CRIMG\0" padded) before the descriptor.
    let type_at = gadgets - 8 - 4;
    bytes[type_at..type_at + 4].copy_from_slice(&records::note::MM.to_le_bytes());
    image_format::reseal(&mut bytes).unwrap();
    assert!(matches!(
        Image::parse(&bytes).unwrap_err(),
        ImageError::DuplicateNote {
            note_type: records::note::MM,
            ..
        }
    ));
}

#[test]
fn every_truncation_is_refused() {
    let bytes = write_to_vec(&sample_state(2, default_pages()));
    for len in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        assert!(
            Image::parse(&bytes[..len]).is_err(),
            "a truncation to {len} bytes was accepted"
        );
    }
}

#[test]
fn flipped_header_and_note_bytes_are_refused() {
    let bytes = write_to_vec(&sample_state(2, default_pages()));
    let img = Image::parse(&bytes).unwrap();
    let first_segment = img.segments().next().unwrap().offset as usize;
    let mut refused = 0;
    for at in 0..first_segment {
        let mut bad = bytes.clone();
        bad[at] ^= 0x5a;
        // Padding bytes between structures are not covered by anything; every
        // byte a reader looks at is.
        if Image::parse(&bad).is_err() {
            refused += 1;
        }
    }
    // Besides the padding before the first page, the checksum note's own name
    // padding (2 bytes) is the only part nothing depends on.
    let covered = first_segment - padding_bytes(&bytes, first_segment) - 2;
    assert!(
        refused >= covered,
        "{refused} of {covered} meaningful bytes caught"
    );
}

/// Bytes between the end of the notes and the first segment: no reader uses them.
fn padding_bytes(bytes: &[u8], first_segment: usize) -> usize {
    let img = Image::parse(bytes).unwrap();
    let last = img.notes().last().unwrap().unwrap();
    let notes_end = last.offset as usize + 12 + 8 + last.desc.len();
    first_segment - notes_end
}

#[test]
fn flipped_segment_bytes_fail_verification() {
    let bytes = write_to_vec(&sample_state(1, default_pages()));
    let img = Image::parse(&bytes).unwrap();
    for s in img.segments().collect::<Vec<_>>() {
        for at in [0, s.len / 2, s.len - 1] {
            let mut bad = bytes.clone();
            bad[(s.offset + at) as usize] ^= 1;
            let img = Image::parse(&bad).expect("segment data is not checked by parse");
            assert!(matches!(
                img.verify_segments(),
                Err(ImageError::SegmentChecksumMismatch { index, .. }) if index == s.index
            ));
        }
    }
}

#[test]
fn random_damage_never_panics() {
    let bytes = write_to_vec(&sample_state(2, default_pages()));
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..3000 {
        let mut bad = bytes.clone();
        for _ in 0..(next() % 8 + 1) {
            let at = (next() % bytes.len() as u64) as usize;
            bad[at] = next() as u8;
        }
        let cut = if next() % 4 == 0 {
            (next() % bad.len() as u64) as usize
        } else {
            bad.len()
        };
        if let Ok(img) = Image::parse(&bad[..cut]) {
            // Whatever parses must be safe to walk completely.
            let _ = img.verify_segments();
            for t in img.threads() {
                let _ = t.map(|t| t.regs());
            }
            let _ = img.vmas().map(|v| v.count());
            let _ = img.warnings().count();
        }
    }
}

/// Damage that a reader sees past the checksums: every mutation is
/// resealed first, so the structural checks themselves are exercised, and
/// whatever parses must be safe to walk completely.
#[test]
fn resealed_damage_never_panics() {
    let bytes = write_to_vec(&sample_state(3, default_pages()));
    let notes_end = Image::parse(&bytes).unwrap().segment(0).unwrap().offset as usize;
    let mut seed = 0x0dd_b1a5_e5ca_1ab1_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut parsed, mut resealed) = (0, 0);
    for _ in 0..5000 {
        let mut bad = bytes.clone();
        for _ in 0..(next() % 4 + 1) {
            // Headers and notes: where the structure is.
            let at = (next() % notes_end as u64) as usize;
            bad[at] = next() as u8;
        }
        if image_format::reseal(&mut bad).is_err() {
            continue;
        }
        resealed += 1;
        if let Ok(img) = Image::parse(&bad) {
            parsed += 1;
            let _ = img.verify_segments();
            for t in img.threads() {
                let _ = t.map(|t| (t.regs(), t.xstate_bv(), t.xfeatures()));
            }
            if let Ok(vmas) = img.vmas() {
                for v in vmas {
                    let _ = (img.string(v.path), img.stored_in(v.start, v.end));
                }
            }
            if let Ok(fds) = img.fds() {
                for f in fds {
                    let _ = img.string(f.path);
                }
            }
            let _ = (
                img.warnings().count(),
                img.auxv(),
                img.gadgets(),
                img.creds(),
            );
            for s in img.segments() {
                let _ = img.segment_bytes(&s);
            }
        }
    }
    // The point is to get past the checksums: most damage must be resealable
    // and much of it must then parse (it lands in values, not structure).
    assert!(
        resealed > 4000 && parsed > 1000,
        "resealed {resealed}, parsed {parsed}"
    );
}

#[test]
fn reseal_keeps_an_intact_image_identical() {
    let bytes = write_to_vec(&sample_state(2, default_pages()));
    let mut again = bytes.clone();
    image_format::reseal(&mut again).unwrap();
    assert!(again == bytes);
}

#[test]
fn the_writer_refuses_what_a_reader_would() {
    // Too many notes: 30 000 threads with an AVX-sized XSAVE area each.
    let mut state = sample_state(1, default_pages());
    let t = state.threads[0].clone();
    state.threads = (0..30_000)
        .map(|i| ThreadState {
            record: ThreadRecord { tid: i, ..t.record },
            ..t.clone()
        })
        .collect();
    let file = tempfile::tempfile().unwrap();
    let err = write_image(&state, &file, &mut PatternMemory).unwrap_err();
    assert!(
        err.to_string().contains("more notes than a reader accepts"),
        "{err}"
    );
}

#[test]
fn invalid_states_are_refused_by_the_writer() {
    let file = tempfile::tempfile().unwrap();
    let outside = vec![PageRun {
        start: 0x9000_0000,
        len: PAGE_SIZE,
    }];
    assert!(write_image(&sample_state(1, outside), &file, &mut PatternMemory).is_err());
    let unaligned = vec![PageRun {
        start: 0x60_0010,
        len: PAGE_SIZE,
    }];
    assert!(write_image(&sample_state(1, unaligned), &file, &mut PatternMemory).is_err());
    let mut no_threads = sample_state(1, default_pages());
    no_threads.threads.clear();
    assert!(write_image(&no_threads, &file, &mut PatternMemory).is_err());
}

#[test]
fn the_note_index_finds_what_a_scan_finds() {
    let bytes = write_to_vec(&sample_state(2, default_pages()));
    let img = Image::parse(&bytes).unwrap();
    let written = records::KNOWN_NOTES
        .iter()
        .map(|v| v.note_type)
        .filter(|&t| t != records::note::PARENT)
        .chain([records::note::STRTAB]);
    for note_type in written {
        let scanned = img
            .find_note(records::OWNER_CRIMG, note_type)
            .map(|n| n.desc);
        assert!(scanned.is_some(), "note {note_type:#x} missing");
        assert_eq!(img.crimg_note(note_type), scanned, "{note_type:#x}");
    }
    assert_eq!(
        img.auxv(),
        img.find_note(image_format::elf::OWNER_CORE, image_format::elf::NT_AUXV)
            .unwrap()
            .desc
    );
}

#[test]
fn a_crimg_note_of_a_type_this_reader_does_not_know_is_skipped() {
    let mut bytes = write_to_vec(&sample_state(1, default_pages()));
    let headers = record_headers(&bytes);
    let (_, warnings) = *headers
        .iter()
        .find(|&&(t, _)| t == records::note::WARNINGS)
        .unwrap();
    // A newer writer's note: outside the indexed range, with a record
    // version this reader would refuse for a note it knows.
    let newer = 0x4352_0042u32;
    let type_at = warnings - 8 - 4;
    bytes[type_at..type_at + 4].copy_from_slice(&newer.to_le_bytes());
    bytes[warnings..warnings + 2].copy_from_slice(&9u16.to_le_bytes());
    image_format::reseal(&mut bytes).unwrap();
    let img = Image::parse(&bytes).unwrap();
    assert_eq!(img.warnings().count(), 0);
    let desc = img.crimg_note(newer).unwrap();
    assert_eq!(u16::from_le_bytes([desc[0], desc[1]]), 9);
}

/// Pattern memory that counts its batched reads, and fails every batch
/// (falling back to piece-by-piece reads) when asked to.
struct CountingMemory {
    batches: usize,
    pieces: usize,
    fail_batches: bool,
}

impl PageSource for CountingMemory {
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        PatternMemory.read_pages(addr, buf)
    }

    fn read_pieces(&mut self, pieces: &[(u64, usize)], buf: &mut [u8]) -> io::Result<()> {
        self.batches += 1;
        self.pieces += pieces.len();
        assert_eq!(buf.len(), pieces.iter().map(|p| p.1).sum::<usize>());
        if self.fail_batches {
            return Err(io::Error::other("batch refused"));
        }
        let mut at = 0;
        for &(addr, len) in pieces {
            PatternMemory.read_pages(addr, &mut buf[at..at + len])?;
            at += len;
        }
        Ok(())
    }
}

#[test]
fn small_runs_are_read_in_batches_and_large_ones_in_chunks() {
    // 3000 single pages far apart (a sparse reservation), then a 5 MiB run
    // and a 3-page one: each run's content and checksum must come out as
    // if it had been copied alone.
    let base = 0x1000_0000u64;
    let mut runs: Vec<PageRun> = (0..3000u64)
        .map(|i| PageRun {
            start: base + 1021 * i * PAGE_SIZE,
            len: PAGE_SIZE,
        })
        .collect();
    let big = base + 1021 * 3000 * PAGE_SIZE;
    runs.push(PageRun {
        start: big,
        len: 5 << 20,
    });
    runs.push(PageRun {
        start: big + (6 << 20),
        len: 3 * PAGE_SIZE,
    });
    let mut state = sample_state(1, runs.clone());
    state.vmas = vec![vma(base, big + (8 << 20), vma_kind::ANON, "")];
    for fail_batches in [false, true] {
        let file = tempfile::tempfile().unwrap();
        let mut source = CountingMemory {
            batches: 0,
            pieces: 0,
            fail_batches,
        };
        let size = write_image(&state, &file, &mut source).unwrap();
        let mut bytes = vec![0u8; size as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        let img = Image::parse(&bytes).unwrap();
        img.verify_segments().unwrap();
        let segments: Vec<_> = img.segments().collect();
        assert_eq!(segments.len(), runs.len());
        for (s, r) in segments.iter().zip(&runs) {
            assert_eq!((s.vaddr, s.len), (r.start, r.len));
            let data = img.segment_bytes(s);
            assert!(
                data.iter()
                    .enumerate()
                    .all(|(i, &b)| b == pattern(r.start + i as u64)),
                "segment at {:#x} holds other bytes",
                s.vaddr
            );
        }
        // The 3000 pages in 1 MiB chunks of 256 pages each, the big run in
        // 1 MiB chunks: 18 reads or so, not one per run.
        assert!(source.batches <= 20, "{} batches", source.batches);
        assert!(source.pieces >= runs.len(), "{} pieces", source.pieces);
    }
}

/// [`PatternMemory`] until `reads` reads are done, then every byte
/// flipped: memory that changes between two passes.
struct ChangingMemory {
    reads: usize,
    change_after: usize,
}

impl PageSource for ChangingMemory {
    fn read_pages(&mut self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        PatternMemory.read_pages(addr, buf)?;
        self.reads += 1;
        if self.reads > self.change_after {
            buf.iter_mut().for_each(|b| *b = !*b);
        }
        Ok(())
    }
}

#[test]
fn an_image_written_in_file_order_is_the_one_written_in_place() {
    // Many runs (more than one chunk's pieces) and a large one (several
    // chunks), so that chunks are cut as in a real dump.
    let mut pages: Vec<PageRun> = (0..1500u64)
        .map(|i| PageRun {
            start: 0x60_0000 + 2 * i * PAGE_SIZE,
            len: PAGE_SIZE,
        })
        .collect();
    pages.push(PageRun {
        start: 0x7fff_0000_0000,
        len: 700 * PAGE_SIZE,
    });
    let mut state = sample_state(2, pages);
    state.vmas = vec![vma(0x40_0000, 0x40_2000, vma_kind::FILE, "/usr/bin/sample")];
    state.vmas.push(vma(
        0x60_0000,
        0x60_0000 + 3000 * PAGE_SIZE,
        vma_kind::ANON,
        "",
    ));
    state.vmas.push(vma(
        0x7fff_0000_0000,
        0x7fff_0000_0000 + 700 * PAGE_SIZE,
        vma_kind::ANON,
        "",
    ));
    let in_place = write_to_vec(&state);
    let prepared = image_writer::sequential::prepare(&state, &mut PatternMemory).unwrap();
    assert_eq!(prepared.size(), in_place.len() as u64);
    assert!(in_place.starts_with(prepared.head()));
    let mut streamed = Vec::new();
    let n = prepared
        .write_to(&mut streamed, &mut PatternMemory)
        .unwrap();
    assert_eq!(n, in_place.len() as u64);
    assert!(streamed == in_place, "the streamed image differs");
    Image::parse(&streamed).unwrap().verify_segments().unwrap();
}

#[test]
fn pages_that_change_between_the_two_reads_stop_a_sequential_write() {
    let state = sample_state(1, default_pages());
    let mut memory = ChangingMemory {
        reads: 0,
        change_after: usize::MAX,
    };
    let prepared = image_writer::sequential::prepare(&state, &mut memory).unwrap();
    memory.change_after = memory.reads;
    let mut streamed = Vec::new();
    let err = prepared.write_to(&mut streamed, &mut memory).unwrap_err();
    assert!(
        matches!(err, image_writer::WriteError::PagesChanged { addr } if addr == 0x60_0000),
        "{err}"
    );
}
