//! `crdump`: checkpoint a running process into a runnable image.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use crimg_tools::summary::human;
use dumper::{DumpOptions, DumpReport, Progress};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "crdump",
    version,
    about = "Checkpoint a running process and all its descendants into DIR: one \
             task-PID.crimg per process (a runnable ELF core file) and manifest.json",
    after_help = "The process and all its descendants (children of every thread, theirs, ...) \
                  are frozen together (every thread), written out, then all killed unless \
                  --leave-running is given. Zombies are recorded with their exit status in \
                  manifest.json, beside the tree's sessions, process groups and the objects its \
                  processes share (pipes, files, shared memory); a tree dump replaces DIR's \
                  manifest. Refused by name: a process in vfork() waiting for its child for more \
                  than 2 s (a shorter vfork is waited for and the tree frozen again), a \
                  thread-group leader that exited while its threads run, a child in another pid \
                  namespace, one of another user (unless crdump runs as root), and objects \
                  shared in the tree that cannot be restored shared (sockets between \
                  processes, epoll, a terminal that is not the root's stdio, sealed memfds) or \
                  held outside the tree. On any error, or if crdump itself is killed or \
                  interrupted (Ctrl-C, SIGTERM, SIGHUP) before the kill, every process is left \
                  running as it was and nothing is left in DIR; once the kill has begun the \
                  dump is kept, and should crdump die then, the kernel kills the rest of the \
                  tree (PTRACE_O_EXITKILL). After the kill crdump waits (2 s at most) until the \
                  tree's pids are free, and names a parent that has not reaped the root. A \
                  refused dump prints every blocker on its own line, then one summary line. \
                  Resume one process with \
                  ./DIR/task-PID.crimg or crimg run, the whole tree with crrestore-tree DIR.\n\n\
                  Exit status: 0 dumped (with --check-only: a dump of the tree would succeed); 1 \
                  refused or failed; 2 usage; with --check-only, 3 when only --force would dump \
                  it (losing what is listed) and 4 when a dump is refused even with --force \
                  (io_uring, a seccomp filter, a thread without stack room, a terminal that is \
                  not the root's stdio or a sealed memfd shared in the tree, or the loader's \
                  image rules)."
)]
struct Cli {
    /// The process to checkpoint, with all its descendants (or give it as
    /// PID).
    #[arg(
        short,
        long,
        required_unless_present = "pid_arg",
        conflicts_with = "pid_arg"
    )]
    pid: Option<i32>,
    #[arg(value_name = "PID", hide = true)]
    pid_arg: Option<i32>,
    /// Output directory. Created (mode 0700) only once the dump is complete;
    /// refused if another user owns it or can write into it (see --force).
    /// `-` writes the dump to stdout as a stream instead (a tar archive of
    /// manifest.json and the images, nothing on disk; refused on a
    /// terminal): `crdump -o - | crimg run -` resumes one process,
    /// `crdump -o - | tar x -C DIR` gives DIR as -o DIR would. Messages go
    /// to stderr then. The tree is killed once the whole stream is
    /// written; a write that fails (the reader went away) leaves it running.
    #[arg(
        short,
        long,
        value_name = "DIR",
        required_unless_present = "check_only"
    )]
    output: Option<PathBuf>,
    /// Let the processes run on after the dump instead of killing them.
    #[arg(long)]
    leave_running: bool,
    /// With --leave-running: copy the memory after the processes run on,
    /// instead of keeping them frozen for the whole copy. A process alone
    /// is write-protected with a userfaultfd armed before the freeze (it
    /// is stopped for a moment to make one; a write during the copy waits
    /// until its page is saved). Otherwise, or when that cannot be done,
    /// from a copy-on-write snapshot of each process (a child injected into
    /// it). What the child costs the original: while the dump runs it has
    /// one extra child (exit signal 0, visible to waitid with __WALL); its
    /// children's rusage (RUSAGE_CHILDREN maxrss and times) grows by the
    /// child's; if crdump is SIGKILLed while a snapshot child exists, a
    /// zombie child stays in the original until it exits. -v says which
    /// method was used.
    #[arg(long, requires = "leave_running")]
    snapshot: bool,
    /// With --snapshot: always the copy-on-write child, never the
    /// userfaultfd write-protection that a process alone (no children) gets
    /// when its kernel and privileges allow (see README: --snapshot).
    #[arg(long, requires = "snapshot")]
    fork_snapshot: bool,
    /// Dump even when some state cannot be kept (the image lists what was
    /// lost: an fd whose object is not saved becomes /dev/null), or into an
    /// output directory other users can write into. io_uring, seccomp
    /// filters and images the loader would refuse are refused even so,
    /// and the process is left running.
    #[arg(long)]
    force: bool,
    /// The most bytes of a deleted file's (or write-sealed memfd's) content
    /// saved in the image; a larger one is refused by name. Small
    /// shared-mapped files up to this size are saved too, to be recreated
    /// if they are gone at restore. Default 4 MiB.
    #[arg(long, value_name = "BYTES")]
    ghost_limit: Option<u64>,
    /// Only tell whether a dump of the tree would succeed: freeze it for
    /// the scan (no page is read, nothing is written, no DIR needed), print
    /// every blocker and warning and the loader's verdict on each image,
    /// then let every process run on. Exit 0 when a dump would succeed, 3 when only a forced one
    /// would, 4 when neither.
    #[arg(long, conflicts_with_all = ["output", "leave_running", "force"])]
    check_only: bool,
    /// The first checkpoint of a series: a full dump after which the
    /// processes run on (implies --leave-running); later dumps give this
    /// DIR as --parent. From then on the kernel tracks the pages each
    /// process writes (userfaultfd async write-protect, held by a small
    /// holder process per process, which exits with it), so that the next
    /// --parent dump reads only those; without --snapshot only.
    #[arg(long, conflicts_with = "check_only")]
    pre_dump: bool,
    /// Incremental: store only the pages that differ from those of PREV's
    /// image of the same process (a dump with --pre-dump or --parent, of
    /// the same process: same pid and start time) and take the others from
    /// it: the pages written since PREV as write tracking tells (when PREV
    /// is the dump that armed it), else found by comparing every page.
    /// With --leave-running, tracking goes on for the next dump. The image names PREV's image relative to DIR (keep both
    /// directories where they are relative to each other); it runs
    /// directly, reading those pages from PREV's image, which must be
    /// unchanged. A process PREV has no image of is dumped in full (said in
    /// a warning); a chain of 32 parents gets a full image.
    #[arg(long, value_name = "PREV", conflicts_with = "check_only")]
    parent: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(short, long)]
    quiet: bool,
    /// Also print where the time went and every memory area stored.
    #[arg(short, long)]
    verbose: bool,
}

/// A progress bar on stderr, shown only on a terminal and only once the
/// copy has taken more than a second.
struct Bar {
    started: Instant,
    bar: Option<ProgressBar>,
    enabled: bool,
}

impl Progress for Bar {
    fn bytes(&mut self, done: u64, total: u64) {
        if !self.enabled || self.started.elapsed() < Duration::from_secs(1) {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style);
            }
            b
        });
        bar.set_position(done);
    }
}

/// Where the time of the dump went (the tree's phases), then every memory
/// area stored, process by process.
fn print_details(r: &DumpReport) {
    let p = &r.phases;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "crdump: freeze {:.1} ms, collect {:.1} ms, write {:.1} ms, sync {:.1} ms; {} stopped for {:.1} ms",
        ms(p.freeze),
        ms(p.collect),
        ms(p.write),
        ms(p.sync),
        if r.others.is_empty() { "process" } else { "processes" },
        ms(r.frozen_for)
    );
    if let Some(method) = &r.snapshot_method {
        println!("crdump: snapshot by {method}");
    }
    if !p.arm_stop.is_zero() {
        println!(
            "crdump: stopped {:.1} ms before the freeze to make the userfaultfd (counted in the \
             stopped time)",
            ms(p.arm_stop)
        );
    }
    let protected = r
        .snapshot_method
        .as_deref()
        .is_some_and(|m| m.starts_with("userfaultfd"));
    if protected {
        println!(
            "crdump: snapshot {:.1} ms while frozen (part of write)",
            ms(p.snapshot)
        );
    } else if r.left_running && (!p.snapshot.is_zero() || !p.reap_stop.is_zero()) {
        println!(
            "crdump: snapshot {:.1} ms while frozen (part of write), stopped again {:.1} ms \
             to reap the snapshot child",
            ms(p.snapshot),
            ms(p.reap_stop)
        );
    }
    for process in r.processes() {
        if !r.others.is_empty() {
            println!("crdump: pid {}:", process.pid);
        }
        for v in &process.vmas {
            println!(
                "crdump:   {:#014x}-{:#014x} {:>10} stored  {}",
                v.start,
                v.end,
                human(v.stored_pages * image_format::PAGE_SIZE),
                // The target's own name for the area: shown escaped.
                image_format::text::Escaped(v.path.as_bytes())
            );
        }
    }
}

fn print_report(r: &DumpReport) {
    for p in r.processes() {
        print_process(p);
    }
    let zombies = if r.zombies.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = r
            .zombies
            .iter()
            .map(|(pid, status)| match status {
                dumper::manifest::WaitStatus::Exited(code) => format!("{pid} exited {code}"),
                dumper::manifest::WaitStatus::Signaled(sig) => {
                    format!("{pid} killed by signal {sig}")
                }
            })
            .collect();
        format!(", zombies recorded: {}", list.join(", "))
    };
    let n = r.processes().count();
    let threads: usize = r.processes().map(|p| p.threads.len()).sum();
    println!(
        "crdump: dumped {n} process{} ({threads} thread{}) into {} in {:.2} s{}{zombies}, {}",
        if n == 1 { "" } else { "es" },
        if threads == 1 { "" } else { "s" },
        r.manifest.parent().unwrap_or(&r.manifest).display(),
        r.duration.as_secs_f64(),
        match r.shared_objects {
            0 => String::new(),
            k => format!(", {k} shared object{}", if k == 1 { "" } else { "s" }),
        },
        if r.left_running {
            "left running"
        } else {
            "killed"
        }
    );
}

fn print_process(r: &DumpReport) {
    let stored = r.pages_stored * image_format::PAGE_SIZE;
    let secs = r.duration.as_secs_f64();
    println!(
        "crdump: pid {} ({} thread{}) -> {}: {} of memory in {} areas, image {}, {:.3} s ({:.2} GB/s), {}",
        r.pid,
        r.threads.len(),
        if r.threads.len() == 1 { "" } else { "s" },
        r.image.display(),
        human(stored),
        r.vmas.len(),
        human(r.bytes_written),
        secs,
        stored as f64 / secs.max(1e-9) / 1e9,
        if r.left_running { "left running" } else { "killed" }
    );
    if let Some(s) = r.incremental {
        let page = image_format::PAGE_SIZE;
        println!(
            "crdump: pid {}: incremental: {} stored, {} taken from the parent image; changed pages found by write tracking in {} of areas, by comparing elsewhere",
            r.pid,
            human(s.stored_pages * page),
            human(s.parent_pages * page),
            human(s.tracked_bytes)
        );
    }
    for w in &r.warnings {
        println!("crdump: not kept: {w}");
    }
}

/// The message of `e` with the causes it does not already spell out, one
/// `crdump: ` line per line (a refusal lists every blocker on its own).
fn print_error(e: &dumper::DumpError) {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let text = cause.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        src = cause.source();
    }
    for line in msg.lines() {
        eprintln!("crdump: {line}");
    }
}

/// `--check-only`: print what a dump of the tree would meet, exit as
/// `--help` says.
fn check_only(pid: i32, quiet: bool) -> ExitCode {
    let tree = match dumper::check(pid, Some(crimg_tools::tree::rules::restorable)) {
        Ok(r) => r,
        Err(e) => {
            print_error(&e);
            return ExitCode::FAILURE;
        }
    };
    let mut blockers = 0;
    for report in &tree.processes {
        blockers += check_one(report, quiet);
    }
    for (p, b) in &tree.tree_blockers {
        println!(
            "crdump: pid {p}: blocker: {} (refused even with --force)",
            b.what
        );
        blockers += 1;
    }
    if !quiet {
        println!("crdump: pid {pid}: {}", dumper::check::NOT_DECIDED);
    }
    let threads: usize = tree.processes.iter().map(|r| r.threads.len()).sum();
    let processes = tree.processes.len();
    let frozen = if processes == 1 {
        format!("{threads} threads frozen for the scan")
    } else {
        format!(
            "{processes} processes, {threads} threads frozen for the scan{}",
            if tree.zombies.is_empty() {
                String::new()
            } else {
                format!(", {} zombies", tree.zombies.len())
            }
        )
    };
    let s = if blockers == 1 { "" } else { "s" };
    if tree.dump_would_succeed() {
        println!("crdump: pid {pid} ({frozen}, left running): a dump would succeed");
        ExitCode::SUCCESS
    } else if tree.forced_dump_would_succeed() {
        println!(
            "crdump: pid {pid}: a dump would be refused ({blockers} blocker{s}); --force would dump it, losing them; left running"
        );
        ExitCode::from(3)
    } else {
        println!(
            "crdump: pid {pid}: a dump would be refused even with --force ({blockers} blocker{s}); left running"
        );
        ExitCode::from(4)
    }
}

/// One process's part of a check: its blockers (counted), warnings and
/// the loader's verdict.
fn check_one(report: &dumper::CheckReport, quiet: bool) -> usize {
    let pid = report.pid;
    for b in &report.blockers {
        println!(
            "crdump: pid {pid}: blocker: {}{}",
            b.what,
            if b.even_forced {
                " (refused even with --force)"
            } else {
                ""
            }
        );
    }
    if !quiet {
        for w in &report.warnings {
            println!("crdump: pid {pid}: warning: not kept: {w}");
        }
    }
    let forced = if report.blockers.is_empty() {
        ""
    } else {
        " (the image --force would write)"
    };
    match &report.loader {
        dumper::LoaderVerdict::Accepts => {
            if !quiet {
                println!("crdump: pid {pid}: the loader's image rules accept the image{forced}");
            }
        }
        dumper::LoaderVerdict::Refuses(why) => {
            println!("crdump: pid {pid}: blocker: {why}{forced}")
        }
        dumper::LoaderVerdict::NotRun(why) => {
            println!("crdump: pid {pid}: the loader's image rules were not run: {why}");
        }
    }
    report.blockers.len() + usize::from(matches!(report.loader, dumper::LoaderVerdict::Refuses(_)))
}

/// `-o -`: stdout, unless it is a terminal, taken for the stream (what
/// crdump prints goes to stderr from now on).
fn stream_target() -> Result<dumper::stream::Target<'static>, String> {
    if std::io::stdout().is_terminal() {
        return Err(
            "stdout is a terminal; a dump stream is binary: redirect it (| crimg run -, | tar x, \
             > FILE, | ssh ...)"
                .into(),
        );
    }
    crimg_tools::stream::take_stdout()
        .map(dumper::stream::Target::Stream)
        .map_err(|e| format!("cannot take stdout for the stream: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    crimg_tools::signals::cancel_dump_on_interrupt();
    // clap requires one of the two.
    let Some(pid) = cli.pid.or(cli.pid_arg) else {
        return ExitCode::from(2);
    };
    if cli.check_only {
        return check_only(pid, cli.quiet);
    }
    let Some(output) = cli.output else {
        return ExitCode::from(2);
    };
    let opts = DumpOptions {
        leave_running: cli.leave_running || cli.pre_dump,
        snapshot: cli.snapshot,
        fork_snapshot: cli.fork_snapshot,
        presample: None,
        own_uffd: None,
        force: cli.force,
        ghost_limit: cli.ghost_limit,
        tree: None,
        tree_rules: Some(crimg_tools::tree::rules::restorable),
        track: cli.pre_dump || cli.parent.is_some(),
        parent: cli.parent,
    };
    let mut bar = Bar {
        started: Instant::now(),
        bar: None,
        enabled: !cli.quiet && std::io::stderr().is_terminal(),
    };
    let target = if output.as_os_str() == "-" {
        match stream_target() {
            Ok(target) => target,
            Err(e) => {
                eprintln!("crdump: -o -: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        dumper::stream::Target::Dir(&output)
    };
    let result = dumper::dump_to(pid, target, &opts, &mut bar);
    if let Some(b) = bar.bar.take() {
        b.finish_and_clear();
    }
    match result {
        Ok(report) => {
            if !cli.quiet {
                print_report(&report);
                if cli.verbose {
                    print_details(&report);
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_error(&e);
            ExitCode::FAILURE
        }
    }
}
