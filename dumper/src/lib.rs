//! The dumper: freeze a process and all its descendants, collect each
//! one's state, write one crimg image per process (`task-<pid>.crimg`) and
//! the manifest of the tree, then kill them or let them run on.
//!
//! ```text
//! freeze the tree (ptrace seize + interrupt every thread of every process,
//!                  children found until none is new; zombies recorded)
//!   → collect each (/proc, ptrace, injected syscalls)  → TaskState
//!   → the objects shared across the tree (tree::shared) → the manifest
//!   → write (image_writer, pages read with process_vm_readv), self-check
//!   → publish (fsync, the manifest, names given with linkat/renameat)
//!   → release (SIGKILL while frozen, or detach)
//! ```
//!
//! [`collect`] learns everything through its `Task` trait, so its decisions
//! are unit-tested on a fake; [`tree`] freezes the tree and finds what its
//! processes share; [`publish`] and [`outdir`] own the output directory;
//! the manifest's format is the `image-manifest` crate, beside the image
//! format.
//!
//! On any error every thread of every process is detached and runs on
//! exactly as before, and no new file is left in the output directory (nor
//! the directory itself, if the dump created it). A binary that catches
//! SIGINT/SIGTERM calls [`request_cancel`] from its handler; the dump then
//! stops at the next check and detaches.

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
pub mod incremental;
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
pub mod snapshot;
pub mod stream;
#[allow(unsafe_code)]
pub mod sys;
pub mod tree;
pub mod vmas;

use std::fs::{self, File, OpenOptions};

use image_writer::model::TaskState;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use cancel::{cancel_requested, request_cancel};
pub use check::{check, CheckReport, LoaderVerdict, TreeCheckReport};
use collect::CollectError;
use freeze::FreezeError;
/// `manifest.json`, a format of its own beside the image format.
pub use image_manifest as manifest;
pub use options::{DumpOptions, TreeView};
pub use progress::{NoProgress, Progress};
use publish::PublishError;
pub use report::{DumpReport, Phases, VmaStat};

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("pid {pid}: {why}")]
    Refused { pid: i32, why: String },
    /// A snapshot dump's areas changed between their presample and the
    /// freeze ([`snapshot::Presample`]): [`dump`] tries once more, reading
    /// them frozen.
    #[error("pid {pid}: {why}")]
    AreasChanged {
        pid: i32,
        why: String,
        /// How long the attempt had stopped the tree (counted in the
        /// frozen time of the attempt that follows).
        stopped: std::time::Duration,
    },
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
    #[error(transparent)]
    Incremental(#[from] incremental::IncrementalError),
    #[error("pid {pid}: dump cancelled; the process was left running")]
    Cancelled { pid: i32 },
    #[error(transparent)]
    Tree(tree::TreeError),
    /// The kill phase had started: the dump is complete and kept, and a
    /// process that could not be killed dies when crdump exits.
    #[error(
        "pid {pid}: the dump in {} is complete and kept, but killing the tree failed: {source}; \
         a process not killed stays traced and is killed when crdump exits",
        dir.display()
    )]
    KillFailed {
        pid: i32,
        dir: PathBuf,
        #[source]
        source: FreezeError,
    },
    /// Several processes of the tree refused, each with every blocker.
    #[error("{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    TreeBlocked { errors: Vec<CollectError> },
    /// Objects shared in the tree that cannot be restored shared.
    #[error("{}", tree_refused_message(*root, refusals))]
    TreeRefused {
        root: i32,
        refusals: Vec<(i32, String)>,
    },
}

fn tree_refused_message(root: i32, refusals: &[(i32, String)]) -> String {
    let mut lines: Vec<String> = refusals
        .iter()
        .map(|(pid, what)| format!("pid {pid}: {what}"))
        .collect();
    lines.push(format!(
        "pid {root}: the tree cannot be saved faithfully: {} blocker{} above (refused even with \
         --force); the tree was left running",
        refusals.len(),
        if refusals.len() == 1 { "" } else { "s" }
    ));
    lines.join("\n")
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
        b'Z' | b'X' => {
            let threads = fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
            if threads > 1 {
                return refuse(format!(
                    "its thread-group leader has exited while {} other thread(s) run on (a \
                     zombie leader cannot be restored)",
                    threads - 1
                ));
            }
            return refuse("is a zombie (it has exited)".into());
        }
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

/// Dump process `pid` and all its descendants (every thread) into
/// `out_dir`: one `task-<pid>.crimg` per live process and `manifest.json`
/// (the tree, its zombies and the objects its processes share), then kill
/// them all or, with `opts.leave_running`, let them run on. On error every
/// process is left running as it was. The report is the root's, with the
/// other processes in [`DumpReport::others`].
pub fn dump(
    pid: i32,
    out_dir: &Path,
    opts: &DumpOptions,
    progress: &mut dyn Progress,
) -> Result<DumpReport, DumpError> {
    dump_to(pid, stream::Target::Dir(out_dir), opts, progress)
}

/// [`dump`] into `target`: a directory, or a stream (`crdump -o -`; see
/// [`stream`]), where the report's paths are under
/// [`stream::STREAM_SHOWN`].
pub fn dump_to(
    pid: i32,
    target: stream::Target<'_>,
    opts: &DumpOptions,
    progress: &mut dyn Progress,
) -> Result<DumpReport, DumpError> {
    // A second handle on the output for the attempt without the
    // presample: nothing is written to either before the areas are known.
    let again = match &target {
        stream::Target::Dir(dir) => Some(stream::Target::Dir(dir)),
        stream::Target::Stream(file) => file.try_clone().ok().map(stream::Target::Stream),
    };
    match (dump_attempt(pid, target, opts, progress, true, None), again) {
        // Nothing was written; the tree runs on. Without the presample the
        // areas are read frozen, which cannot disagree with the snapshot.
        (Err(DumpError::AreasChanged { stopped, why, .. }), Some(again)) => {
            dump_attempt(pid, again, opts, progress, false, Some(why)).map(|mut report| {
                report.frozen_for += stopped;
                for other in &mut report.others {
                    other.frozen_for += stopped;
                }
                report
            })
        }
        (r, _) => r,
    }
}

/// [`dump_to`], a snapshot dump reading the areas before the freeze when
/// `presample` (and, for a process alone, write-protected); `again`: why
/// the attempt before failed.
fn dump_attempt(
    pid: i32,
    target: stream::Target<'_>,
    opts: &DumpOptions,
    progress: &mut dyn Progress,
    presample: bool,
    again: Option<String>,
) -> Result<DumpReport, DumpError> {
    let started = Instant::now();
    let stat = check_target(pid, opts)?;
    // Before anything is frozen: the output directory is safe and writable,
    // and the manifest has its (anonymous) file. Nothing gets a name, and
    // no directory is created, until the dump is complete and durable.
    let mut out = stream::Output::prepare(pid, target, opts.force)?;
    let out_dir = &out.shown_dir();
    // `--parent`: the root's parent image and its chain, checked before
    // anything is frozen.
    let (parent_dir, mut root_parent) = incremental_parent(pid, stat.start_time, out_dir, opts)?;
    let zero_pfn = sys::process::zero_page_pfn().ok().flatten();
    // A snapshot dump of one process first arms its write-protection
    // (`snapshot::protected`), while it runs; then it reads the tree's
    // areas, before it freezes it. The attempt after a lost snapshot is a
    // fork snapshot.
    let mut armed = None;
    let mut arm_stop = std::time::Duration::ZERO;
    let mut method_note = again.map(|why| format!("dumped again: {why}"));
    if presample && snapshot::wanted(opts) {
        if opts.fork_snapshot {
            method_note = Some("--fork-snapshot".to_owned());
        } else if snapshot::has_children(pid) {
            method_note = Some("a tree of processes".to_owned());
        } else {
            match snapshot::Protected::arm(pid, &mut arm_stop) {
                Ok(p) => armed = Some(p),
                Err(why) => method_note = Some(why),
            }
        }
    }
    let presampled;
    let opts = if presample && snapshot::wanted(opts) {
        presampled = DumpOptions {
            presample: Some(snapshot::Presample::take(pid)),
            own_uffd: armed.as_ref().map(snapshot::Protected::pid),
            ..opts.clone()
        };
        &presampled
    } else {
        opts
    };

    let mut phases = Phases::default();
    let t = Instant::now();
    // The frozen time: from the first thread stopped to the last resumed.
    let freeze_started = t;
    let frozen = tree::freeze::freeze_tree(pid).map_err(tree_error)?;
    phases.freeze = t.elapsed();
    let t = Instant::now();
    let collected = collect_tree(&frozen, opts, zero_pfn, false)?;
    let mut vma_stats = Vec::with_capacity(collected.len());
    let mut deferred = Vec::with_capacity(collected.len());
    let mut states: Vec<TaskState> = collected
        .into_iter()
        .map(|c| {
            vma_stats.push(c.vma_stats);
            deferred.push(c.deferred);
            c.state
        })
        .collect();
    let shared = tree_objects(&frozen, &mut states)?;
    phases.collect = t.elapsed();
    let t = Instant::now();

    // One image per live process, each self-checked by the loader's rules.
    // The restorer's rules, before anything is written: a tree it would
    // refuse is left running.
    let manifest = tree_manifest(pid, &frozen, &states, shared);
    if let Some(rules) = opts.tree_rules {
        rules(&manifest).map_err(|why| DumpError::Refused {
            pid,
            why: format!(
                "crrestore-tree would refuse this tree: {why} (the tree was left running)"
            ),
        })?;
    }
    // The files are kept only once the tree is released as asked: a
    // failed detach leaves it running (the guard detaches every process).
    let threads: Vec<Vec<i32>> = frozen.processes.iter().map(|f| f.tids().to_vec()).collect();
    let zombies: Vec<(i32, manifest::WaitStatus)> = frozen
        .zombies
        .iter()
        .map(|z| (z.pid, manifest::WaitStatus::from_raw(z.stat.exit_code)))
        .collect();
    let pids: Vec<i32> = frozen.processes.iter().map(freeze::Frozen::pid).collect();
    let mut frozen_for = None;
    phases.arm_stop = arm_stop;
    let (frozen, mut snapshots, mut dump_warnings) = match take_snapshots(
        frozen,
        opts,
        (&mut states, &mut vma_stats, &deferred),
        zero_pfn,
        &mut phases,
        (armed, &mut method_note),
        || frozen_for = Some(freeze_started.elapsed() + arm_stop),
    ) {
        // Resumed after the snapshot, or (no snapshot could be made) as
        // the frozen tree dropped: now.
        Err(DumpError::AreasChanged { pid, why, .. }) => {
            return Err(DumpError::AreasChanged {
                pid,
                why,
                stopped: frozen_for.unwrap_or_else(|| freeze_started.elapsed() + arm_stop),
            })
        }
        r => r?,
    };
    let snapshot_method = snapshot_method(&snapshots, method_note);
    if out.is_stream() || opts.parent.is_some() {
        // A stream reads each page twice (checksums first), and so does an
        // incremental image (compared with the parent's, then written).
        for s in snapshots.iter().flatten() {
            if let snapshot::Held::Protected(p) = &s.held {
                p.keep_for_rereads();
            }
        }
    }
    out.begin(pid, &manifest)?;
    let mut loader_warnings = Vec::with_capacity(states.len());
    let mut written = Vec::with_capacity(states.len());
    let mut splits = Vec::with_capacity(states.len());
    let mut identities = Vec::with_capacity(states.len());
    let mut snaps: Vec<Option<snapshot::ProcessSnapshot>> = (0..pids.len())
        .map(|i| snapshots.get_mut(i).and_then(Option::take))
        .collect();
    // Before any image is written, each process's parent image (with
    // `--parent`) and its write tracking (`--pre-dump`/`--parent`).
    let mut links = Vec::with_capacity(pids.len());
    for (i, (&p, state)) in pids.iter().zip(&states).enumerate() {
        let parent = match &parent_dir {
            Some(_) if i == 0 => root_parent.take(),
            Some(d) => d.parent_of(p, state.process.start_time, false)?,
            None => None,
        };
        let parent = parent.filter(|c| {
            let within = c.depth().is_some();
            if !within {
                dump_warnings.push(format!(
                    "pid {p}: the parent chain has {} images already, its bound: a full image was written",
                    image_format::records::MAX_CHAIN_DEPTH
                ));
            }
            within
        });
        if parent_dir.is_some() && parent.is_none() && i > 0 {
            dump_warnings.push(format!(
                "pid {p}: no parent image of this process: a full image was written"
            ));
        }
        // Write tracking: what it tells of this dump, and from this dump
        // on when the task runs on (a task stopped for the whole dump: not
        // one that runs on while its snapshot is copied).
        let tracking = (opts.track && snaps[i].is_none())
            .then(|| {
                let parent_id = parent.as_ref().and_then(incremental::ParentChain::identity);
                incremental::track::Tracking::start(
                    p,
                    state.process.start_time,
                    &state.gadgets,
                    &state.vmas,
                    parent_id.as_ref(),
                    opts.leave_running,
                )
                .map_err(|e| {
                    dump_warnings.push(format!(
                        "{e}: pages written after this dump are not tracked (the next dump compares them)"
                    ))
                })
                .ok()
                .flatten()
            })
            .flatten();
        links.push((parent, tracking));
    }
    let link_of = |i: usize| incremental::Link {
        parent: links[i].0.as_ref(),
        tracking: links[i].1.as_ref(),
    };
    let parallel = match out.dir() {
        // The processes of a tree, each into its own file, in parallel
        // (`tree::parallel`); a stream takes them one after the other.
        Some(dir) if pids.len() > 1 && tree::parallel::workers_for(pids.len()) > 1 => {
            let total = states.iter().flat_map(|s| &s.pages).map(|r| r.len).sum();
            Some(tree::parallel::run_all(
                pids.len(),
                total,
                &mut *progress,
                |i, progress| {
                    let (p, state) = (pids[i], &states[i]);
                    let image = out_dir.join(image_name(p));
                    write_process(pid, p, snaps[i].as_ref(), &image, progress, |source| {
                        stream::write_dir_image(dir, p, state, source, &image, opts, link_of(i))
                    })
                },
            ))
        }
        _ => None,
    };
    if let Some(results) = parallel {
        for ((&p, r), snap) in pids.iter().zip(results).zip(&mut snaps) {
            // Jobs start in order: one not started follows a failed one,
            // whose error is returned first.
            let (done, file) = r.ok_or_else(|| DumpError::Refused {
                pid: p,
                why: "its image was not written (the dump stopped)".into(),
            })??;
            out.add_image(p, file);
            loader_warnings.push(done.warning);
            written.push(done.bytes);
            splits.push(done.split);
            identities.push(done.identity);
            if let Some(s) = snap.take() {
                release_snapshot(p, s, &mut phases, &mut dump_warnings);
            }
        }
    } else {
        for (i, ((&p, state), snap)) in pids.iter().zip(&states).zip(&mut snaps).enumerate() {
            let image = out_dir.join(image_name(p));
            let done = write_process(pid, p, snap.as_ref(), &image, &mut *progress, |source| {
                out.write_image(p, state, source, &image, opts, link_of(i))
            })
            .map_err(|e| {
                match snap.as_ref().and_then(snapshot::ProcessSnapshot::lost) {
                    // A directory's files have no name yet: the dump is tried
                    // again (a fork snapshot). A stream has the bytes already.
                    Some(why) if !out.is_stream() => DumpError::AreasChanged {
                        pid: p,
                        why: format!("its write-protected snapshot was lost ({why})"),
                        stopped: frozen_for.unwrap_or_default(),
                    },
                    Some(why) => DumpError::Refused {
                        pid: p,
                        why: format!(
                            "its write-protected snapshot was lost ({why}): dump it again"
                        ),
                    },
                    None => e,
                }
            })?;
            loader_warnings.push(done.warning);
            written.push(done.bytes);
            splits.push(done.split);
            identities.push(done.identity);
            if let Some(s) = snap.take() {
                release_snapshot(p, s, &mut phases, &mut dump_warnings);
            }
        }
    }
    phases.write = t.elapsed();
    // Each tracking with the identity of the image it was armed by.
    let trackings: Vec<_> = links
        .into_iter()
        .zip(identities)
        .map(|((_, tracking), identity)| tracking.zip(identity))
        .collect();
    let t = Instant::now();
    // A stream's end is its commit: a receiver holding a whole stream
    // restores it. So the tree is armed to die with crdump before the end
    // is written (an error here or while writing it detaches the tree,
    // which runs on, and the receiver has a cut stream it refuses); a
    // directory is armed after its names are given, which can be undone.
    if let Some(frozen) = frozen
        .as_ref()
        .filter(|_| out.is_stream() && !opts.leave_running)
    {
        frozen.arm_exit_kill()?;
    }
    let published = out.publish(pid, &manifest)?;
    phases.sync = t.elapsed();

    match frozen {
        Some(frozen) if !opts.leave_running => {
            // All or nothing: first every thread dies with crdump if crdump
            // dies (an error here kills nothing and keeps nothing); from then
            // on the dump is kept, since the tree is going away whatever
            // happens next.
            frozen.arm_exit_kill()?;
            published.keep();
            for (&p, state) in pids.iter().zip(&states) {
                objects::socket::abort_dropped_connections(p, &state.fds);
            }
            // The pids are free once the tree's parents are reaped: the root's
            // by its own parent, the others by the kernel's reaper, which can
            // take a second here; `crrestore-tree` waits for what is still an
            // exited process, so the dump does not.
            // Killed as it was when frozen: stopped until the image was complete.
            frozen_for = Some(freeze_started.elapsed() + arm_stop);
            frozen.kill().map_err(|source| DumpError::KillFailed {
                pid,
                dir: out_dir.to_owned(),
                source,
            })?;
        }
        frozen => {
            if let Some(frozen) = frozen {
                // Still stopped: protect the memory from now on.
                dump_warnings.extend(incremental::rearm_all(trackings, &states));
                frozen.detach()?;
                frozen_for = Some(freeze_started.elapsed() + arm_stop);
            }
            published.keep();
        }
    }
    let frozen_for = frozen_for.unwrap_or_default();
    let duration = started.elapsed();
    let mut reports = pids
        .iter()
        .zip(states)
        .zip(threads)
        .zip(written)
        .zip(loader_warnings)
        .zip(vma_stats)
        .zip(splits)
        .map(
            |((((((&p, state), threads), bytes_written), loader_warning), vmas), split)| {
                DumpReport {
                    pid: p,
                    threads,
                    image: out_dir.join(image_name(p)),
                    manifest: out_dir.join(manifest::FILE_NAME),
                    bytes_written,
                    pages_stored: split.map_or_else(
                        || {
                            state
                                .pages
                                .iter()
                                .map(|r| r.len / image_format::PAGE_SIZE)
                                .sum()
                        },
                        |s| s.stored_pages,
                    ),
                    duration,
                    frozen_for,
                    phases,
                    vmas,
                    warnings: state
                        .warnings
                        .iter()
                        .cloned()
                        .chain(loader_warning)
                        .collect(),
                    left_running: opts.leave_running,
                    others: Vec::new(),
                    zombies: Vec::new(),
                    shared_objects: manifest.shared.len(),
                    incremental: split,
                    snapshot_method: snapshot_method.clone(),
                }
            },
        )
        .collect::<Vec<_>>();
    let mut root = reports.remove(0);
    root.warnings.extend(dump_warnings);
    root.others = reports;
    root.zombies = zombies;
    Ok(root)
}

/// Write the image of process `p` (the tree's root is `root`) with
/// `write`, its pages read from the process or, given, from its snapshot;
/// the writer's error named with the process and `image`.
fn write_process<T>(
    root: i32,
    p: i32,
    snap: Option<&snapshot::ProcessSnapshot>,
    image: &Path,
    progress: &mut dyn Progress,
    write: impl FnOnce(&mut dyn image_writer::PageSource) -> Result<T, stream::ImageFailure>,
) -> Result<T, DumpError> {
    let mem = open_mem(snap.map_or(p, snapshot::ProcessSnapshot::read_pid))?;
    let mut from_snapshot;
    let mut from_task;
    let source: &mut dyn image_writer::PageSource = match snap {
        Some(s) => {
            from_snapshot = s.memory(&mem, progress);
            &mut from_snapshot
        }
        None => {
            from_task = memory::TaskMemory {
                pid: p,
                mem: &mem,
                progress,
            };
            &mut from_task
        }
    };
    match write(source) {
        Ok(done) => Ok(done),
        Err(stream::ImageFailure::Dump(e)) => Err(e),
        Err(_) if cancel_requested() => Err(DumpError::Cancelled { pid: root }),
        Err(stream::ImageFailure::Write(source)) => Err(exited_or(
            p,
            DumpError::Write {
                pid: p,
                path: image.to_owned(),
                source,
            },
        )),
    }
}

/// `--parent`: the parent directory, and the root's parent image (which
/// it must have) with its chain.
fn incremental_parent(
    pid: i32,
    start_time: u64,
    out_dir: &Path,
    opts: &DumpOptions,
) -> Result<
    (
        Option<incremental::ParentDir>,
        Option<incremental::ParentChain>,
    ),
    DumpError,
> {
    let Some(prev) = &opts.parent else {
        return Ok((None, None));
    };
    if out_dir == Path::new(stream::STREAM_SHOWN) {
        return Err(DumpError::Refused {
            pid,
            why: "an incremental dump (--parent) is written into a directory, not a stream: its image names its parent's file".into(),
        });
    }
    let dir = incremental::ParentDir::new(prev, out_dir).map_err(|source| DumpError::Io {
        pid,
        path: prev.clone(),
        source,
    })?;
    let root = dir.parent_of(pid, start_time, true)?;
    Ok((Some(dir), root))
}

/// With `--leave-running` ([`snapshot::wanted`]): a copy-on-write snapshot
/// child of every process, then the tree resumed (`None` is returned in
/// its place) and the deferred pages selected from the children. Without,
/// or when a snapshot cannot be made (then with one warning), the deferred
/// pages are selected from the frozen processes themselves and the tree
/// stays frozen for the write.
#[allow(clippy::type_complexity)]
fn take_snapshots(
    frozen: tree::freeze::FrozenTree,
    opts: &DumpOptions,
    (states, vma_stats, deferred): (
        &mut [TaskState],
        &mut [Vec<VmaStat>],
        &[Vec<snapshot::DeferredArea>],
    ),
    zero_pfn: Option<u64>,
    phases: &mut Phases,
    (armed, note): (Option<snapshot::Protected>, &mut Option<String>),
    resumed: impl FnOnce(),
) -> Result<
    (
        Option<tree::freeze::FrozenTree>,
        Vec<Option<snapshot::ProcessSnapshot>>,
        Vec<String>,
    ),
    DumpError,
> {
    let select = |pid: i32, i: usize, states: &mut [TaskState], stats: &mut [Vec<VmaStat>]| {
        snapshot::select_deferred(pid, &deferred[i], zero_pfn, &mut states[i], &mut stats[i])
            .map_err(|e| {
                exited_or(
                    pid,
                    DumpError::Refused {
                        pid,
                        why: e.to_string(),
                    },
                )
            })
    };
    let pids: Vec<i32> = frozen.processes.iter().map(freeze::Frozen::pid).collect();
    let mut warnings = Vec::new();
    if let Some(p) = armed {
        let t = std::time::Instant::now();
        match frozen.processes.as_slice() {
            [f] => match snapshot::take_protected(
                f,
                p,
                &deferred[0],
                zero_pfn,
                &mut states[0],
                &mut vma_stats[0],
            ) {
                Ok((snap, live)) => {
                    phases.snapshot = t.elapsed();
                    frozen.detach()?;
                    resumed();
                    let pid = pids[0];
                    check_snapshot(pid, None, &mut states[0], opts)?;
                    let snapshot::Held::Protected(p) = &snap.held else {
                        unreachable!("take_protected holds a write-protection")
                    };
                    snapshot::select_live(
                        pid,
                        p,
                        &live,
                        zero_pfn,
                        &mut states[0],
                        &mut vma_stats[0],
                    )
                    .map_err(|e| {
                        exited_or(
                            pid,
                            DumpError::Refused {
                                pid,
                                why: e.to_string(),
                            },
                        )
                    })?;
                    return Ok((None, vec![Some(snap)], warnings));
                }
                Err(why) => *note = Some(why),
            },
            // The tree grew children since: the fork snapshot.
            _ => *note = Some("a tree of processes at the freeze".into()),
        }
    }
    if snapshot::wanted(opts) {
        match snapshot::take_tree(&frozen.processes, states) {
            Ok((snaps, took)) => {
                phases.snapshot = took;
                frozen.detach()?;
                resumed();
                for (i, s) in snaps.iter().enumerate() {
                    check_snapshot(pids[i], Some(s.read_pid()), &mut states[i], opts)?;
                    select(s.read_pid(), i, states, vma_stats)?;
                }
                return Ok((None, snaps.into_iter().map(Some).collect(), warnings));
            }
            // The presampled areas were to be checked against the child,
            // and the memory policies to be read from it: with no child,
            // the dump starts again with everything read frozen (the tree
            // is resumed as `frozen` drops; nothing is written yet).
            Err(why) if opts.presample.is_some() => {
                return Err(DumpError::AreasChanged {
                    pid: pids.first().copied().unwrap_or(0),
                    why: format!(
                        "no snapshot could be made ({why}): its areas are read again frozen"
                    ),
                    // Filled in by the caller, which timed the freeze.
                    stopped: std::time::Duration::ZERO,
                });
            }
            Err(why) => warnings.push(snapshot::fallback_warning(&why)),
        }
    }
    for (i, &p) in pids.iter().enumerate() {
        select(p, i, states, vma_stats)?;
    }
    Ok((Some(frozen), Vec::new(), warnings))
}

/// After the resume: the snapshot child `child` of `pid` shows every area
/// as `state` records it (else the dump is refused: its areas changed as
/// it began), and no memory policy (refused as the frozen dump refuses
/// one; with `--force`, a warning). Without a child (a write-protected
/// snapshot), the original's areas are asked ([`snapshot::check_original`]).
fn check_snapshot(
    pid: i32,
    child: Option<i32>,
    state: &mut TaskState,
    opts: &DumpOptions,
) -> Result<(), DumpError> {
    let checked = match child {
        Some(child) => snapshot::check_child(pid, child, state),
        None => snapshot::check_original(pid, state),
    };
    let refusals = checked.map_err(|e| match e {
        snapshot::ChildCheckError::Changed { .. } => DumpError::AreasChanged {
            pid,
            why: e.to_string(),
            stopped: std::time::Duration::ZERO,
        },
        e => DumpError::Refused {
            pid,
            why: e.to_string(),
        },
    })?;
    if refusals.is_empty() {
        return Ok(());
    }
    if !opts.force {
        let blockers = refusals
            .into_iter()
            .map(|what| collect::Blocker {
                what,
                even_forced: false,
            })
            .collect();
        return Err(DumpError::Collect(CollectError::Blocked {
            pid,
            blockers,
            warnings: Vec::new(),
            forced: false,
        }));
    }
    for w in refusals {
        // Found while frozen too when numa_maps was read then.
        if !state.warnings.contains(&w) {
            state.warnings.push(w);
        }
    }
    Ok(())
}

/// Kill the snapshot child of `pid`, its image written, and have it
/// reaped; a failure is a warning (the dump is complete).
fn release_snapshot(
    pid: i32,
    s: snapshot::ProcessSnapshot,
    phases: &mut Phases,
    warnings: &mut Vec<String>,
) {
    let child = match s.held {
        snapshot::Held::Protected(p) => {
            p.close();
            return;
        }
        snapshot::Held::Child(c) => c,
    };
    let pid_of_child = child.pid();
    match child.release(None) {
        Ok(stopped) => phases.reap_stop = phases.reap_stop.max(stopped),
        Err(e) => warnings.push(format!(
            "pid {pid}: its snapshot child {pid_of_child} was killed but could not be reaped: {e}"
        )),
    }
}

/// What `crdump -v` says of a snapshot dump's method: which one and, for
/// the fork snapshot, why not the write-protected one.
fn snapshot_method(
    snaps: &[Option<snapshot::ProcessSnapshot>],
    note: Option<String>,
) -> Option<String> {
    let first = snaps.iter().flatten().next()?;
    Some(match &first.held {
        snapshot::Held::Protected(p) => format!(
            "userfaultfd write-protection (armed while running; protected again before the \
             freeze: {:?} pages)",
            p.passes
        ),
        snapshot::Held::Child(_) => format!(
            "copy-on-write child (no userfaultfd write-protection: {})",
            note.unwrap_or_else(|| "not tried".into())
        ),
    })
}

/// A tree error as a dump error: a cancel is a cancel.
fn tree_error(e: tree::TreeError) -> DumpError {
    match e {
        tree::TreeError::Freeze(FreezeError::Cancelled { pid }) => DumpError::Cancelled { pid },
        tree::TreeError::Freeze(e) => DumpError::Freeze(e),
        e => DumpError::Tree(e),
    }
}

/// `/proc/P/mem` of a frozen process, read-write (injected syscalls use
/// scratch memory in the task).
fn open_mem(pid: i32) -> Result<File, DumpError> {
    let mem_path = PathBuf::from(format!("/proc/{pid}/mem"));
    OpenOptions::new()
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
        })
}

/// Collect every live process of the tree, the root first (what of its
/// stdio is the caller's decides what is the caller's in the others). Every
/// process is collected even after one is refused, so that one refusal
/// names every blocker of the tree. With `check_only`, as
/// [`collect::collect_for_check`]: blocked processes are returned as
/// errors in their place.
fn collect_tree(
    frozen: &tree::freeze::FrozenTree,
    opts: &DumpOptions,
    zero_pfn: Option<u64>,
    check_only: bool,
) -> Result<Vec<collect::Collected>, DumpError> {
    let (collected, blocked) = collect_each(frozen, opts, zero_pfn, check_only)?;
    let mut blocked: Vec<CollectError> = blocked.into_iter().map(|(_, e)| e).collect();
    match blocked.len() {
        0 => Ok(collected.into_iter().map(|(_, c)| c).collect()),
        1 => Err(DumpError::Collect(blocked.remove(0))),
        _ => Err(DumpError::TreeBlocked { errors: blocked }),
    }
}

/// The processes collected (index in the tree, what was found) and those
/// refused (index, the refusal naming every blocker).
type Each = (Vec<(usize, collect::Collected)>, Vec<(usize, CollectError)>);

fn collect_each(
    frozen: &tree::freeze::FrozenTree,
    opts: &DumpOptions,
    zero_pfn: Option<u64>,
    check_only: bool,
) -> Result<Each, DumpError> {
    let root = frozen.processes[0].pid();
    let pids = frozen.pids();
    // Who else holds what: every process's fds, read once for the tree.
    let index = collect::fd_index::FdIndex::scan().map_err(|source| DumpError::Io {
        pid: root,
        path: PathBuf::from("/proc/*/fd"),
        source,
    })?;
    let mut collected: Vec<(usize, collect::Collected)> = Vec::new();
    let mut blocked = Vec::new();
    for (i, f) in frozen.processes.iter().enumerate() {
        let p = f.pid();
        let caller_fds = match collected.first() {
            Some((0, root_state)) if i > 0 => {
                tree::caller_fds(root, &root_state.state.fds, p, &index)
            }
            _ => Vec::new(),
        };
        let popts = DumpOptions {
            tree: Some(options::TreeView {
                root,
                pids: pids.clone(),
                caller_fds,
            }),
            ..opts.clone()
        };
        let mem = open_mem(p)?;
        let r = if check_only {
            collect::collect_for_check_in_tree(f, &mem, &popts, &index)
        } else {
            collect::collect_in_tree(f, &mem, &popts, zero_pfn, &index)
        };
        match r {
            Ok(c) => collected.push((i, c)),
            Err(e @ CollectError::Blocked { .. }) => blocked.push((i, e)),
            Err(e @ (CollectError::NoScratch { .. } | CollectError::Unsupported { .. }))
                if check_only =>
            {
                blocked.push((i, e))
            }
            Err(CollectError::Cancelled { pid }) => return Err(DumpError::Cancelled { pid }),
            Err(e) => return Err(exited_or(p, e.into())),
        }
    }
    Ok((collected, blocked))
}

/// The objects the processes of the tree share, for the manifest; the fds
/// on them marked `SHARED_IN_TREE`. What is shared but cannot be restored
/// shared refuses the dump.
fn tree_objects(
    frozen: &tree::freeze::FrozenTree,
    states: &mut [TaskState],
) -> Result<Vec<manifest::SharedObject>, DumpError> {
    let found = shared_in(frozen, states);
    if !found.refusals.is_empty() {
        return Err(DumpError::TreeRefused {
            root: frozen.processes[0].pid(),
            refusals: found.refusals,
        });
    }
    let mut refs: Vec<&mut TaskState> = states.iter_mut().collect();
    tree::shared::apply_marks(&mut refs, &found.marks);
    Ok(found.objects)
}

/// [`tree::shared::find`] over the frozen tree, open file descriptions
/// compared with `kcmp`.
fn shared_in(frozen: &tree::freeze::FrozenTree, states: &[TaskState]) -> tree::shared::Found {
    let procs: Vec<(i32, &TaskState)> = frozen
        .processes
        .iter()
        .map(freeze::Frozen::pid)
        .zip(states)
        .collect();
    let mut same = |a: (i32, i32), b: (i32, i32)| {
        sys::fds::same_description_across(a.0, a.1, b.0, b.1).unwrap_or(false)
    };
    tree::shared::find(&procs, &mut same)
}

/// The manifest of the tree: every process (zombies too) by pid.
pub(crate) fn tree_manifest(
    root: i32,
    frozen: &tree::freeze::FrozenTree,
    states: &[TaskState],
    shared: Vec<manifest::SharedObject>,
) -> manifest::Manifest {
    let comm = |c: &[u8]| {
        String::from_utf8_lossy(c.split(|&b| b == 0).next().unwrap_or_default()).into_owned()
    };
    let mut processes: Vec<manifest::ManifestProcess> = frozen
        .processes
        .iter()
        .zip(states)
        .map(|(f, state)| {
            let p = f.pid();
            // Frozen: its stat does not change (tpgid is not in the image).
            let tpgid = fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|t| procfs::stat::parse(&t).ok())
                .map_or(0, |s| s.tpgid);
            manifest::ManifestProcess {
                pid: p,
                ppid: state.process.ppid,
                pgid: state.process.pgid,
                sid: state.process.sid,
                image: Some(image_name(p)),
                threads: f.tids().to_vec(),
                comm: comm(&state.process.comm),
                tty_nr: u64::from(state.process.tty_nr),
                tpgid,
                zombie: None,
            }
        })
        .chain(frozen.zombies.iter().map(|z| manifest::ManifestProcess {
            pid: z.pid,
            ppid: z.stat.ppid,
            pgid: z.stat.pgrp,
            sid: z.stat.session,
            image: None,
            threads: Vec::new(),
            comm: comm(&z.stat.comm),
            tty_nr: u64::from(z.stat.tty_nr),
            tpgid: z.stat.tpgid,
            zombie: Some(manifest::WaitStatus::from_raw(z.stat.exit_code)),
        }))
        .collect();
    processes.sort_by_key(|p| p.pid);
    manifest::Manifest {
        format: manifest::FORMAT.into(),
        version: manifest::VERSION,
        root,
        processes,
        shared,
    }
}
