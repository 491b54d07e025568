//! The dumper: freeze a process, collect its state, write its crimg image
//! (`task-<pid>.crimg`) and the manifest, then kill it or let it run on.
//!
//! ```text
//! freeze (ptrace seize + interrupt every thread)
//!   → collect (/proc, ptrace, injected syscalls)  → TaskState
//!   → write (image_writer, pages read with process_vm_readv)
//!   → publish (fsync, the manifest, names given with linkat/renameat)
//!   → release (SIGKILL while frozen, or detach)
//! ```
//!
//! [`collect`] learns everything through its `Task` trait, so its decisions
//! are unit-tested on a fake; [`publish`] and [`outdir`] own the output
//! directory; the manifest's format is the `image-manifest` crate, beside
//! the image format.
//!
//! On any error every thread is detached and runs on exactly as before, and
//! no new file is left in the output directory (nor the directory itself,
//! if the dump created it). A binary that catches SIGINT/SIGTERM calls
//! [`request_cancel`] from its handler; the dump then stops at the next
//! check and detaches.

#![deny(unsafe_code)]
// A cast that can change a value is allowed only where a comment says why
// the value fits (or why its bits are what is meant).
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod cancel;
pub mod check;
pub mod collect;
pub mod fds;
pub mod freeze;
pub mod gadgets;
pub mod inject;
pub mod memory;
pub mod objects;
pub mod options;
pub mod outdir;
pub mod pages;
pub mod procfs;
pub mod progress;
pub mod publish;
pub mod regs;
pub mod report;
#[allow(unsafe_code)]
pub mod sys;
pub mod vmas;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use cancel::{cancel_requested, request_cancel};
pub use check::{check, CheckReport, LoaderVerdict};
use collect::CollectError;
use freeze::{FreezeError, Frozen};
/// `manifest.json`, a format of its own beside the image format.
pub use image_manifest as manifest;
pub use options::DumpOptions;
pub use progress::{NoProgress, Progress};
use publish::PublishError;
pub use report::{DumpReport, Phases, VmaStat};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("pid {pid}: {why}")]
    Refused { pid: i32, why: String },
    #[error("pid {pid}: {path}: {source}")]
    Io {
        pid: i32,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Freeze(#[from] FreezeError),
    #[error(transparent)]
    Collect(#[from] CollectError),
    #[error("pid {pid}: writing {path}: {source}")]
    Write {
        pid: i32,
        path: PathBuf,
        #[source]
        source: image_writer::WriteError,
    },
    #[error("pid {pid}: {source}")]
    Parse {
        pid: i32,
        #[source]
        source: procfs::ParseError,
    },
    #[error("pid {pid}: {path}: the writer produced an image the reader refuses: {error}")]
    ImageRefused {
        pid: i32,
        path: PathBuf,
        error: image_format::ImageError,
    },
    #[error("pid {pid}: {source}")]
    OutDir {
        pid: i32,
        #[source]
        source: outdir::OutDirError,
    },
    #[error(transparent)]
    Publish(PublishError),
    #[error("pid {pid}: dump cancelled; the process was left running")]
    Cancelled { pid: i32 },
}

/// The image file name of process `pid`.
pub fn image_name(pid: i32) -> String {
    format!("task-{pid}.crimg")
}

/// Read `/proc/P/stat` and refuse what cannot be dumped at all.
fn check_target(pid: i32, opts: &DumpOptions) -> Result<procfs::stat::Stat, DumpError> {
    let refuse = |why: String| Err(DumpError::Refused { pid, why });
    // Pids are below pid_max (at most 2^22).
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    if pid <= 0 {
        return refuse("not a valid pid".into());
    }
    if pid == me {
        return refuse("cannot dump the dumper itself".into());
    }
    if Ok(pid) == i32::try_from(std::os::unix::process::parent_id()) {
        return refuse("cannot dump the dumper's parent (it waits for the dumper)".into());
    }
    if pid == 1 && !opts.leave_running {
        return refuse("refusing to kill pid 1; use leave-running".into());
    }
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return refuse("no such process".into()),
        Err(source) => return Err(DumpError::Io { pid, path, source }),
    };
    let stat = procfs::stat::parse(&text).map_err(|e| DumpError::Refused {
        pid,
        why: e.to_string(),
    })?;
    if stat.flags & procfs::stat::PF_KTHREAD != 0 {
        return refuse("is a kernel thread".into());
    }
    match stat.state {
        b'Z' | b'X' => return refuse("is a zombie (it has exited)".into()),
        b'T' => return refuse("is stopped by job control; continue it (SIGCONT) first".into()),
        b't' => return refuse("is being traced by another process".into()),
        _ => {}
    }
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = fs::read_to_string(&status_path).map_err(|source| DumpError::Io {
        pid,
        path: status_path,
        source,
    })?;
    let s = procfs::status::parse(&status).map_err(|source| DumpError::Parse { pid, source })?;
    if s.tgid != pid {
        return refuse(format!(
            "is a thread of process {}; give the process id",
            s.tgid
        ));
    }
    if s.tgid == me {
        return refuse("is the dumper itself".into());
    }
    Ok(stat)
}

/// Refuse an image that the reader (the loader's parser) would refuse, or
/// that the loader's own stage-1 rules would (`binfmt_loader::rules`, the
/// very function the loader runs): the process is then left running. Only
/// headers and notes are read, not page contents. With `force` and
/// `leave_running` (nothing is killed) the loader's refusal is a warning
/// instead, returned.
fn self_check(
    pid: i32,
    path: &Path,
    file: &File,
    opts: &DumpOptions,
) -> Result<Option<String>, DumpError> {
    let map = sys::process::map_read_only(file).map_err(|source| DumpError::Io {
        pid,
        path: path.to_owned(),
        source,
    })?;
    let image = image_format::Image::parse(&map).map_err(|error| DumpError::ImageRefused {
        pid,
        path: path.to_owned(),
        error,
    })?;
    let Some(why) = loader_refusal(&image) else {
        return Ok(None);
    };
    if opts.force && opts.leave_running {
        return Ok(Some(why));
    }
    Err(DumpError::Refused {
        pid,
        why: format!("{why} (the process was left running)"),
    })
}

/// Why the loader would refuse `image` on this machine by its image-only
/// rules (`binfmt_loader::rules`, the very function the loader runs), as
/// `the loader would refuse this image: …`; `None` when it accepts it.
/// `crdump` runs it before killing anything, `crimg verify` too.
pub fn loader_refusal(image: &image_format::Image<'_>) -> Option<String> {
    binfmt_loader::rules::check_image(image, mmap_min_addr())
        .err()
        .map(|error| format!("the loader would refuse this image: {error}"))
}

/// `vm.mmap_min_addr` (65536, the usual value, when unreadable), which the
/// loader's rules check the image's addresses against.
fn mmap_min_addr() -> u64 {
    fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(65536)
}

/// `error`, unless the frozen process has died meanwhile: then that is the
/// cause, whatever failed first (reading its memory, an injected syscall).
fn exited_or(pid: i32, error: DumpError) -> DumpError {
    if inject::process_exited(pid) {
        DumpError::Refused {
            pid,
            why: "the process exited during the dump".into(),
        }
    } else {
        error
    }
}

/// Dump process `pid` (all its threads) into `out_dir/task-<pid>.crimg` and
/// `out_dir/manifest.json`, then kill it or, with `opts.leave_running`, let
/// it run on. On error the process is left running as it was.
pub fn dump(
    pid: i32,
    out_dir: &Path,
    opts: &DumpOptions,
    progress: &mut dyn Progress,
) -> Result<DumpReport, DumpError> {
    let started = Instant::now();
    check_target(pid, opts)?;
    let out_err = |source| DumpError::OutDir { pid, source };
    // Before anything is frozen: the output directory is safe and writable,
    // and the image has its (anonymous) file. Nothing gets a name, and no
    // directory is created, until the dump is complete and durable.
    let out = outdir::OutDir::prepare(out_dir, opts.force).map_err(out_err)?;
    // O_DIRECT: the writer's writes are all page-aligned, so pages go from
    // its buffer to the disk without the kernel allocating page cache for
    // the whole image (the slow part of a dump on memory the machine has
    // not touched yet), and the fsync after has little left to do.
    let file = out.anonymous_file(true).map_err(out_err)?;
    let manifest_file = out.anonymous_file(false).map_err(out_err)?;
    let zero_pfn = sys::process::zero_page_pfn().ok().flatten();

    let mut phases = Phases::default();
    let t = Instant::now();
    let frozen = Frozen::freeze(pid).map_err(|e| match e {
        FreezeError::Cancelled { pid } => DumpError::Cancelled { pid },
        e => e.into(),
    })?;
    phases.freeze = t.elapsed();
    let t = Instant::now();
    let mem_path = PathBuf::from(format!("/proc/{pid}/mem"));
    let mem = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&mem_path)
        .map_err(|source| {
            exited_or(
                pid,
                DumpError::Io {
                    pid,
                    path: mem_path,
                    source,
                },
            )
        })?;
    let collected = collect::collect(&frozen, &mem, opts, zero_pfn).map_err(|e| match e {
        CollectError::Cancelled { pid } => DumpError::Cancelled { pid },
        e => exited_or(pid, e.into()),
    })?;
    let state = &collected.state;
    phases.collect = t.elapsed();
    let t = Instant::now();

    let image = out_dir.join(image_name(pid));
    let mut source = memory::TaskMemory {
        pid,
        mem: &mem,
        progress,
    };
    let bytes_written = match image_writer::write_image(state, &file, &mut source) {
        Ok(n) => n,
        Err(_) if cancel_requested() => return Err(DumpError::Cancelled { pid }),
        Err(source) => {
            return Err(exited_or(
                pid,
                DumpError::Write {
                    pid,
                    path: image.clone(),
                    source,
                },
            ))
        }
    };
    let loader_warning = self_check(pid, &image, &file, opts)?;
    phases.write = t.elapsed();
    let t = Instant::now();
    let published = publish::publish(
        &out,
        &file,
        &manifest_file,
        manifest::ManifestProcess {
            pid,
            ppid: state.process.ppid,
            pgid: state.process.pgid,
            sid: state.process.sid,
            image: image_name(pid),
            threads: frozen.tids().to_vec(),
        },
    )
    .map_err(|e| match e {
        PublishError::Cancelled { pid } => DumpError::Cancelled { pid },
        e => DumpError::Publish(e),
    })?;
    phases.sync = t.elapsed();
    let frozen_for = started.elapsed();

    // The files are kept only once the process is released as asked: a
    // failed kill leaves it running (the Frozen guard detaches it).
    let threads = frozen.tids().to_vec();
    if opts.leave_running {
        frozen.detach()?;
    } else {
        objects::socket::abort_dropped_connections(pid, &state.fds);
        frozen.kill()?;
    }
    published.keep();
    Ok(DumpReport {
        pid,
        threads,
        image,
        manifest: out_dir.join(manifest::FILE_NAME),
        bytes_written,
        pages_stored: state
            .pages
            .iter()
            .map(|r| r.len / image_format::PAGE_SIZE)
            .sum(),
        duration: started.elapsed(),
        frozen_for,
        phases,
        vmas: collected.vma_stats,
        warnings: state
            .warnings
            .iter()
            .cloned()
            .chain(loader_warning)
            .collect(),
        left_running: opts.leave_running,
    })
}
