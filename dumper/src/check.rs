//! `crdump --check-only`: whether a dump would succeed, without dumping.
//! The process is frozen for the scan only (the same collection a forced
//! dump runs, so every blocker is found, but no page is read), the image a
//! forced dump would write is built in memory (a memfd: its notes, no page
//! contents) and put through the loader's own image rules, then every
//! thread is detached. Nothing is written anywhere.

use std::fs::OpenOptions;
use std::path::PathBuf;

use crate::collect::{self, Blocker, CollectError};
use crate::freeze::{FreezeError, Frozen};
use crate::options::DumpOptions;
use crate::{check_target, exited_or, loader_refusal, sys, DumpError};

/// What the loader's image rules said of the image a dump would write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoaderVerdict {
    /// Accepted (as far as the image decides).
    Accepts,
    /// Refused, with the loader's reason: a dump fails (even forced).
    Refuses(String),
    /// Not run, and why.
    NotRun(String),
}

/// What a check found.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub pid: i32,
    /// The threads that were frozen for the scan.
    pub threads: Vec<i32>,
    /// Everything that stops a dump.
    pub blockers: Vec<Blocker>,
    /// What a dump would keep going without (the warnings it prints).
    pub warnings: Vec<String>,
    pub loader: LoaderVerdict,
}

/// What the loader's rules cannot decide from an image without pages, or
/// on the machine that dumps: said with every check's result.
pub const NOT_DECIDED: &str = "not decided without a dump: page contents and their checksums; \
     the files, CPU features, ids and limits of the machine the image runs on";

impl CheckReport {
    /// A dump without `--force` would succeed.
    pub fn dump_would_succeed(&self) -> bool {
        self.blockers.is_empty() && self.loader == LoaderVerdict::Accepts
    }

    /// A dump with `--force` would succeed (losing the blockers).
    pub fn forced_dump_would_succeed(&self) -> bool {
        !self.blockers.iter().any(|b| b.even_forced) && self.loader == LoaderVerdict::Accepts
    }
}

/// Check whether process `pid` can be dumped; it runs on in any case.
/// An `Err` is a check that could not be made (no such process, not
/// permitted, cancelled), not a blocker.
pub fn check(pid: i32) -> Result<CheckReport, DumpError> {
    // Nothing is killed.
    let opts = DumpOptions {
        leave_running: true,
        force: false,
        ..DumpOptions::default()
    };
    check_target(pid, &opts)?;
    let frozen = Frozen::freeze(pid).map_err(|e| match e {
        FreezeError::Cancelled { pid } => DumpError::Cancelled { pid },
        e => e.into(),
    })?;
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
    let mut report = CheckReport {
        pid,
        threads: frozen.tids().to_vec(),
        blockers: Vec::new(),
        warnings: Vec::new(),
        loader: LoaderVerdict::Accepts,
    };
    match collect::collect_for_check(&frozen, &mem) {
        Ok(collected) => {
            report.blockers = collected.blockers;
            report.warnings.clone_from(&collected.state.warnings);
            report.loader = loader_verdict(pid, &collected.state)?;
        }
        Err(CollectError::Blocked {
            blockers, warnings, ..
        }) => {
            report.blockers = blockers;
            report.warnings = warnings;
            report.loader = LoaderVerdict::NotRun(
                "a blocker refused even with --force ends the scan before anything is injected"
                    .into(),
            );
        }
        // Found only once the threads are looked at, after the scan: a
        // dump fails on them all the same.
        Err(e @ (CollectError::NoScratch { .. } | CollectError::Unsupported { .. })) => {
            report.blockers.push(Blocker {
                what: e.to_string(),
                even_forced: true,
            });
            report.loader = LoaderVerdict::NotRun("the threads could not be collected".into());
        }
        Err(e) => return Err(exited_or(pid, e.into())),
    }
    frozen.detach()?;
    Ok(report)
}

/// Write the image (notes only) into a memfd and run the loader's rules.
fn loader_verdict(
    pid: i32,
    state: &image_writer::model::TaskState,
) -> Result<LoaderVerdict, DumpError> {
    let path = PathBuf::from("memfd:crimg-check");
    let io_err = |source| DumpError::Io {
        pid,
        path: path.clone(),
        source,
    };
    let file = sys::process::memfd(c"crimg-check").map_err(io_err)?;
    // No page runs: the source is never asked.
    let mut no_pages = NoPages;
    image_writer::write_image(state, &file, &mut no_pages).map_err(|source| DumpError::Write {
        pid,
        path: path.clone(),
        source,
    })?;
    let map = sys::process::map_read_only(&file).map_err(io_err)?;
    let image = image_format::Image::parse(&map).map_err(|error| DumpError::ImageRefused {
        pid,
        path: path.clone(),
        error,
    })?;
    Ok(loader_refusal(&image).map_or(LoaderVerdict::Accepts, LoaderVerdict::Refuses))
}

/// The page source of an image without pages.
struct NoPages;

impl image_writer::PageSource for NoPages {
    fn read_pages(&mut self, addr: u64, _buf: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::other(format!(
            "a check reads no pages (asked for {addr:#x})"
        )))
    }
}
