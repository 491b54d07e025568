//! `crdump --check-only`: whether a dump would succeed, without dumping.
//! The tree is frozen for the scan only (the same collection a forced
//! dump runs, so every blocker is found, but no page is read), the image a
//! forced dump would write is built in memory (a memfd: its notes, no page
//! contents) and put through the loader's own image rules, then every
//! thread is detached. Nothing is written anywhere.

use std::path::PathBuf;

use crate::collect::{Blocker, CollectError};
use crate::options::DumpOptions;
use crate::{check_target, loader_refusal, sys, tree, DumpError};

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

/// What a check of a whole tree found: each live process's report (the
/// root first) and what the tree as a whole cannot keep.
#[derive(Clone, Debug)]
pub struct TreeCheckReport {
    pub processes: Vec<CheckReport>,
    /// The zombies of the tree (recorded by a dump, nothing to check).
    pub zombies: Vec<i32>,
    /// (pid, blocker): objects shared in the tree that cannot be restored
    /// shared (refused even with `--force`).
    pub tree_blockers: Vec<(i32, Blocker)>,
}

impl TreeCheckReport {
    /// A dump without `--force` would succeed.
    pub fn dump_would_succeed(&self) -> bool {
        self.tree_blockers.is_empty() && self.processes.iter().all(CheckReport::dump_would_succeed)
    }

    /// A dump with `--force` would succeed (losing the blockers).
    pub fn forced_dump_would_succeed(&self) -> bool {
        self.tree_blockers.is_empty()
            && self
                .processes
                .iter()
                .all(CheckReport::forced_dump_would_succeed)
    }
}

/// Check whether process `pid` and its descendants can be dumped; they run
/// on in any case. An `Err` is a check that could not be made (no such
/// process, not permitted, cancelled, a process of the tree refused by
/// name while freezing), not a blocker. `rules`: the tree restorer's
/// (as [`DumpOptions::tree_rules`]); what it refuses is a tree blocker.
pub fn check(
    pid: i32,
    rules: Option<crate::options::TreeRules>,
) -> Result<TreeCheckReport, DumpError> {
    // Nothing is killed.
    let opts = DumpOptions {
        leave_running: true,
        force: false,
        ..DumpOptions::default()
    };
    check_target(pid, &opts)?;
    let frozen = tree::freeze::freeze_tree(pid).map_err(crate::tree_error)?;
    let (collected, blocked) = crate::collect_each(&frozen, &opts, None, true)?;
    let mut report = TreeCheckReport {
        processes: Vec::new(),
        zombies: frozen.zombies.iter().map(|z| z.pid).collect(),
        tree_blockers: Vec::new(),
    };
    let mut states = Vec::new();
    for (i, c) in collected {
        let p = frozen.processes[i].pid();
        report.processes.push(CheckReport {
            pid: p,
            threads: frozen.processes[i].tids().to_vec(),
            blockers: c.blockers,
            warnings: c.state.warnings.clone(),
            loader: loader_verdict(p, &c.state)?,
        });
        states.push(c.state);
    }
    let all_collected = blocked.is_empty();
    for (i, e) in blocked {
        let p = frozen.processes[i].pid();
        let mut r = CheckReport {
            pid: p,
            threads: frozen.processes[i].tids().to_vec(),
            blockers: Vec::new(),
            warnings: Vec::new(),
            loader: LoaderVerdict::Accepts,
        };
        match e {
            CollectError::Blocked {
                blockers, warnings, ..
            } => {
                r.blockers = blockers;
                r.warnings = warnings;
                r.loader = LoaderVerdict::NotRun(
                    "a blocker refused even with --force ends the scan before anything is \
                     injected"
                        .into(),
                );
            }
            // Found only once the threads are looked at, after the scan: a
            // dump fails on them all the same.
            e => {
                r.blockers.push(Blocker {
                    what: e.to_string(),
                    even_forced: true,
                });
                r.loader = LoaderVerdict::NotRun("the threads could not be collected".into());
            }
        }
        report.processes.insert(i.min(report.processes.len()), r);
    }
    report.processes.sort_by_key(|r| {
        frozen
            .processes
            .iter()
            .position(|f| f.pid() == r.pid)
            .unwrap_or(usize::MAX)
    });
    // What is shared in the tree is known only when every process is.
    if all_collected {
        let found = crate::shared_in(&frozen, &states);
        let restorer = match rules {
            Some(rules) if found.refusals.is_empty() => {
                let manifest = crate::tree_manifest(pid, &frozen, &states, found.objects.clone());
                rules(&manifest)
                    .err()
                    .map(|why| (pid, format!("crrestore-tree would refuse this tree: {why}")))
            }
            _ => None,
        };
        report.tree_blockers = found
            .refusals
            .into_iter()
            .chain(restorer)
            .map(|(p, what)| {
                (
                    p,
                    Blocker {
                        what,
                        even_forced: true,
                    },
                )
            })
            .collect();
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
