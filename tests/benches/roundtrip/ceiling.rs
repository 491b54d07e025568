//! The ceilings every time figure is divided by, measured in the same run:
//! what the hardware and kernel give for the same bytes without crimg.
//!
//! - Dump: `process_vm_readv` of the pages a dump stores, straight from the
//!   running workload, and `write` of them to one file in the directory the
//!   dump goes to, `fsync` included (crdump's figure includes its sync).
//! - Restore: `pread` of the whole image file into fresh (untouched,
//!   zero-fill-on-demand) memory, in the page-cache state the restore meets.
//!
//! The pages a dump stores are chosen by the dumper's own rule
//! (`dumper::pages::is_stored` on each page's pagemap entry: present or
//! swapped, not the zero page, and in a private file mapping only the
//! copied-on-write ones), over the areas found with `PAGEMAP_SCAN` for big
//! ones, so that a 16 TiB reservation costs what its written pages cost.

use std::fs::{self, File};
use std::io::{IoSliceMut, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dumper::pages::{is_stored, PagePolicy};
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

const PAGE: u64 = 4096;
/// Areas at least this large are scanned with `PAGEMAP_SCAN` first.
const SCAN_FROM: u64 = 1 << 30;
/// One read and one write move this much.
const CHUNK: usize = 8 << 20;
/// `IOV_MAX`.
const MAX_IOVECS: usize = 1024;

/// The stored pages of one process: address runs.
#[derive(Debug, Default, Clone)]
pub struct Pages {
    pub pid: i32,
    pub runs: Vec<(u64, u64)>,
}

impl Pages {
    pub fn bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }
}

fn policy_of(perms: &str, inode: &str, path: &str) -> PagePolicy {
    let kernel = matches!(path, "[vvar]" | "[vdso]" | "[vsyscall]" | "[vvar_vclock]");
    if !perms.starts_with('r') || perms.as_bytes().get(3) == Some(&b's') || kernel {
        PagePolicy::Nothing
    } else if inode != "0" {
        PagePolicy::PrivateFile
    } else {
        PagePolicy::Anonymous
    }
}

/// The pages a dump of `pid` stores, by the dumper's rule.
pub fn stored_pages(pid: i32) -> Result<Pages, String> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("/proc/{pid}/maps: {e}"))?;
    let pagemap = File::open(format!("/proc/{pid}/pagemap"))
        .map_err(|e| format!("/proc/{pid}/pagemap: {e}"))?;
    let zero_pfn = dumper::sys::process::zero_page_pfn().ok().flatten();
    let mut pages = Pages {
        pid,
        runs: Vec::new(),
    };
    let mut entries = vec![0u8; 65536 * 8];
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms), Some(inode)) =
            (fields.first(), fields.get(1), fields.get(4))
        else {
            continue;
        };
        let policy = policy_of(perms, inode, fields.get(5).copied().unwrap_or(""));
        if policy == PagePolicy::Nothing {
            continue;
        }
        let mut bounds = range.split('-').map(|x| u64::from_str_radix(x, 16));
        let (Some(Ok(start)), Some(Ok(end))) = (bounds.next(), bounds.next()) else {
            continue;
        };
        let mut ranges = Vec::new();
        if end - start < SCAN_FROM
            || dumper::sys::pagemap_scan::present_or_swapped(&pagemap, start, end, &mut ranges)
                .is_err()
        {
            ranges = vec![(start, end)];
        }
        for (from, to) in ranges {
            let mut at = from;
            while at < to {
                let n = ((to - at) / PAGE).min(65536);
                let buf = &mut entries[..(n * 8) as usize];
                pagemap
                    .read_exact_at(buf, at / PAGE * 8)
                    .map_err(|e| format!("/proc/{pid}/pagemap at {at:#x}: {e}"))?;
                for (i, word) in buf.chunks_exact(8).enumerate() {
                    let entry = u64::from_ne_bytes(word.try_into().unwrap_or_default());
                    if is_stored(entry, policy, zero_pfn) {
                        let addr = at + i as u64 * PAGE;
                        match pages.runs.last_mut() {
                            Some(last) if last.0 + last.1 == addr => last.1 += PAGE,
                            _ => pages.runs.push((addr, PAGE)),
                        }
                    }
                }
                at += n * PAGE;
            }
        }
    }
    Ok(pages)
}

/// How the ceiling writes: through the page cache, or around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Io {
    Buffered,
    Direct,
}

/// A buffer of `len` bytes aligned for O_DIRECT, carved from a larger
/// fresh allocation (no unsafe allocation needed).
fn aligned(storage: &mut Vec<u8>, len: usize) -> &mut [u8] {
    *storage = vec![0u8; len + 2 * PAGE as usize];
    let off = storage.as_ptr().align_offset(PAGE as usize);
    &mut storage[off..off + len]
}

fn open_for(path: &Path, io: Io, write: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    if write {
        options.write(true).create(true).truncate(true);
    } else {
        options.read(true);
    }
    if io == Io::Direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

/// The dump ceiling: read every page of `processes` with
/// `process_vm_readv` (up to 1024 runs, 8 MiB, per call) and write them
/// to a file in `dir` (`io`: through the page cache or with O_DIRECT, as
/// crdump may), then fsync it; the file is removed after.
pub fn dump_ceiling(processes: &[Pages], dir: &Path, io: Io) -> Result<Duration, String> {
    let path = dir.join("ceiling.raw");
    let mut storage = Vec::new();
    let buf = aligned(&mut storage, CHUNK);
    let started = Instant::now();
    let mut file = open_for(&path, io, true).map_err(|e| format!("{}: {e}", path.display()))?;
    for p in processes {
        let mut remote = Vec::new();
        let mut filled = 0usize;
        let mut flush = |remote: &mut Vec<RemoteIoVec>, filled: &mut usize| {
            if *filled == 0 {
                return Ok(());
            }
            let mut local = [IoSliceMut::new(&mut buf[..*filled])];
            let n = process_vm_readv(Pid::from_raw(p.pid), &mut local, remote)
                .map_err(|e| format!("process_vm_readv of pid {}: {e}", p.pid))?;
            // O_DIRECT writes whole pages (runs are whole pages).
            file.write_all(&buf[..n])
                .map_err(|e| format!("{}: {e}", path.display()))?;
            remote.clear();
            *filled = 0;
            Ok::<(), String>(())
        };
        for &(start, len) in &p.runs {
            let mut at = start;
            let end = start + len;
            while at < end {
                let n = ((end - at) as usize).min(CHUNK - filled);
                remote.push(RemoteIoVec {
                    base: at as usize,
                    len: n,
                });
                filled += n;
                at += n as u64;
                if filled == CHUNK || remote.len() == MAX_IOVECS {
                    flush(&mut remote, &mut filled)?;
                }
            }
        }
        flush(&mut remote, &mut filled)?;
    }
    file.sync_all()
        .map_err(|e| format!("fsync {}: {e}", path.display()))?;
    let took = started.elapsed();
    drop(file);
    // The ceiling's file only needed writing.
    let _ = fs::remove_file(&path);
    Ok(took)
}

/// The restore ceiling: `pread` of each image, whole, into fresh memory
/// (`io`: through the page cache, or with O_DIRECT, which reads a file that
/// is not cached faster and leaves it uncached).
pub fn restore_ceiling(images: &[PathBuf], io: Io) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    for image in images {
        let file = open_for(image, io, false).map_err(|e| format!("{}: {e}", image.display()))?;
        let size = file
            .metadata()
            .map_err(|e| format!("{}: {e}", image.display()))?
            .len() as usize;
        let started = Instant::now();
        // A zeroed allocation this large is a fresh mapping: untouched.
        let mut storage = Vec::new();
        let memory = aligned(&mut storage, size.next_multiple_of(PAGE as usize));
        let mut at = 0usize;
        while at < size {
            let end = memory.len().min(at + (1 << 30));
            let n = file
                .read_at(&mut memory[at..end], at as u64)
                .map_err(|e| format!("pread {}: {e}", image.display()))?;
            if n == 0 {
                return Err(format!("{}: shorter than its size", image.display()));
            }
            at += n;
        }
        total += started.elapsed();
        // Unmapping is not part of the figure.
        drop(storage);
    }
    Ok(total)
}

/// The share of `images` in the page cache (`fincore`), if it can tell.
pub fn cached_share(images: &[PathBuf]) -> Option<f64> {
    let (mut cached, mut size) = (0u64, 0u64);
    for image in images {
        let output = Command::new("fincore")
            .args(["--bytes", "--noheadings", "--raw", "--output", "RES,SIZE"])
            .arg(image)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let mut fields = text.split_whitespace().map(str::parse::<u64>);
        cached += fields.next()?.ok()?;
        size += fields.next()?.ok()?;
    }
    Some(if size == 0 {
        1.0
    } else {
        cached as f64 / size as f64
    })
}

/// Drop `images` from the page cache (`POSIX_FADV_DONTNEED`; their pages
/// are clean once written and synced).
pub fn drop_cached(images: &[PathBuf]) -> Result<(), String> {
    for image in images {
        let file = File::open(image).map_err(|e| format!("{}: {e}", image.display()))?;
        nix::fcntl::posix_fadvise(
            file.as_raw_fd(),
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        )
        .map_err(|e| format!("fadvise {}: {e}", image.display()))?;
    }
    Ok(())
}
