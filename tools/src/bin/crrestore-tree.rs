//! `crrestore-tree DIR`: restore the process tree crdump wrote into DIR.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use crimg_tools::loader_path;
use crimg_tools::tree::objects::Stdio;
use crimg_tools::tree::run::{self, Options};

#[derive(Clone, Copy, ValueEnum)]
enum StdioArg {
    /// The root's stdio (and every fd of the tree on it) is this
    /// command's own fds 0-2, as for a direct run.
    Inherit,
    /// Reopened as saved (a terminal, by its path).
    Restore,
}

#[derive(Parser)]
#[command(
    name = "crrestore-tree",
    version,
    about = "Restore a process tree dumped by crdump (DIR holds manifest.json and one image per process)",
    long_about = "Restore a process tree dumped by crdump: every process with its pid, parent, session and \
process group, zombies with their exit status, and the pipes, files and shared memory its processes \
share. Everything is checked before anything is created; nothing resumes until every process is \
ready; if one fails, all are killed and the error names its pid.",
    after_help = "Exit codes:\n  \
0    the tree runs (with --wait: the root's exit code, 128+N when killed by signal N)\n  \
1    usage error, or a dump that cannot be restored (bad manifest or image, a shape not supported)\n  \
2    a pid (or thread id) the tree needs is taken: restore with --pidns\n  \
3    a process failed to restore (everything created was killed)"
)]
struct Cli {
    /// The dump directory (crdump -o DIR; a stream, crdump -o -, unpacked
    /// with tar x -C DIR).
    dir: PathBuf,
    /// Restore into a new pid namespace (the way out when pids are taken):
    /// a small init, pid 1 there, creates the tree and reaps orphans until
    /// the tree is gone. Required for a dump whose images another user owns:
    /// only in a namespace of its own may a dump choose its pids. Inside,
    /// /proc is still this namespace's (a process reading /proc/PID by its
    /// own pid finds another process).
    #[arg(long)]
    pidns: bool,
    /// Stay until the root exits, forwarding SIGINT, SIGTERM and SIGHUP to
    /// it, and exit with its status.
    #[arg(long)]
    wait: bool,
    /// Where the root's stdio comes from.
    #[arg(long, value_enum, default_value = "inherit")]
    stdio: StdioArg,
    /// The loader binary (default: found beside this command or installed).
    #[arg(long)]
    loader: Option<PathBuf>,
    /// Say what is done differently from the dump, and every step.
    #[arg(short, long)]
    verbose: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // --help and --version are not errors.
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if cli.dir.as_os_str() == "-" {
        // Not built: each loader of the tree would need its image held in
        // memory and passed through the fork and exec.
        eprintln!(
            "crrestore-tree: -: a dump stream is not taken here (not built); unpack it first \
             (crdump -o - | tar x -C DIR), then crrestore-tree DIR"
        );
        return ExitCode::from(1);
    }
    let loader = match cli.loader.map_or_else(
        || loader_path::find().ok_or_else(|| "cannot find crimg-loader".to_owned()),
        |p| {
            p.canonicalize()
                .map_err(|e| format!("loader {}: {e}", p.display()))
        },
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("crrestore-tree: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = Options {
        dir: cli.dir,
        loader,
        pidns: cli.pidns,
        wait: cli.wait,
        stdio: match cli.stdio {
            StdioArg::Inherit => Stdio::Inherit,
            StdioArg::Restore => Stdio::Restore,
        },
        verbose: cli.verbose,
    };
    match run::restore(&opts) {
        Ok(r) => match r.status {
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => {
                eprintln!("restored {} processes (root pid {})", r.processes, r.root);
                ExitCode::SUCCESS
            }
        },
        Err(e) => {
            let line = crimg_tools::error_line(crimg_tools::error_chain(&e));
            eprintln!("crrestore-tree: {line}");
            ExitCode::from(e.exit_code())
        }
    }
}
