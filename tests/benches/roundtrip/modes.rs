//! Which restore and dump modes the binaries have, read from their
//! `--help`: `crimg run --lazy` / `--eager` (lazy restore through
//! userfaultfd, and the eager fill), and a copy-on-write `--leave-running`
//! (`crdump --leave-running --snapshot`). A mode that is
//! not there prints "n/a (not built)", so the benchmark runs before and
//! after they exist.

use std::process::Command;

use crimg_tests::Binaries;

#[derive(Debug, Clone, Copy)]
pub struct Modes {
    pub lazy: bool,
    pub eager: bool,
    pub cow: bool,
    /// `crdump --parent PREV`: incremental dumps.
    pub incremental: bool,
}

fn help(program: &std::path::Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

pub fn detect(bins: &Binaries) -> Modes {
    let run = help(&bins.crimg, &["run", "--help"]);
    let dump = help(&bins.crdump, &["--help"]).to_lowercase();
    Modes {
        lazy: run.contains("--lazy"),
        eager: run.contains("--eager"),
        cow: dump.contains("--snapshot"),
        incremental: dump.contains("--parent"),
    }
}

impl Modes {
    pub fn describe(&self) -> String {
        let said = |built: bool| if built { "built" } else { "not built" };
        format!(
            "modes: crimg run --lazy {}, --eager {}, copy-on-write --leave-running {}, incremental --parent {} (from the binaries' --help)",
            said(self.lazy),
            said(self.eager),
            said(self.cow),
            said(self.incremental)
        )
    }
}
