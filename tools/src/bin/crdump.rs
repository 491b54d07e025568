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
    about = "Checkpoint a running process into DIR/task-PID.crimg (a runnable ELF core file)",
    after_help = "The process is frozen (every thread), written out, then killed unless \
                  --leave-running is given. On any error, or if crdump itself is killed or \
                  interrupted (Ctrl-C, SIGTERM, SIGHUP: at any phase), it is left running as it \
                  was and nothing is left in DIR. A refused dump prints every blocker on its own \
                  line, then one summary line. Resume it with ./DIR/task-PID.crimg or crimg run.\n\n\
                  Exit status: 0 dumped (with --check-only: a dump would succeed); 1 refused or \
                  failed; 2 usage; with --check-only, 3 when only --force would dump it (losing \
                  what is listed) and 4 when a dump is refused even with --force (io_uring, a \
                  seccomp filter, a thread without stack room, or the loader's image rules)."
)]
struct Cli {
    /// The process to checkpoint (or give it as PID).
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
    #[arg(
        short,
        long,
        value_name = "DIR",
        required_unless_present = "check_only"
    )]
    output: Option<PathBuf>,
    /// Let the process run on after the dump instead of killing it.
    #[arg(long)]
    leave_running: bool,
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
    /// Only tell whether a dump would succeed: freeze for the scan (no page
    /// is read, nothing is written, no DIR needed), print every blocker and
    /// warning and the loader's verdict on the image, then let the process
    /// run on. Exit 0 when a dump would succeed, 3 when only a forced one
    /// would, 4 when neither.
    #[arg(long, conflicts_with_all = ["output", "leave_running", "force"])]
    check_only: bool,
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

fn print_details(r: &DumpReport) {
    let p = &r.phases;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "crdump: freeze {:.1} ms, collect {:.1} ms, write {:.1} ms, sync {:.1} ms; process stopped for {:.1} ms",
        ms(p.freeze),
        ms(p.collect),
        ms(p.write),
        ms(p.sync),
        ms(r.frozen_for)
    );
    for v in &r.vmas {
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

fn print_report(r: &DumpReport) {
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

/// `--check-only`: print what a dump would meet, exit as `--help` says.
fn check_only(pid: i32, quiet: bool) -> ExitCode {
    let report = match dumper::check(pid) {
        Ok(r) => r,
        Err(e) => {
            print_error(&e);
            return ExitCode::FAILURE;
        }
    };
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
    if !quiet {
        println!("crdump: pid {pid}: {}", dumper::check::NOT_DECIDED);
    }
    let n = report.blockers.len()
        + usize::from(matches!(report.loader, dumper::LoaderVerdict::Refuses(_)));
    let threads = report.threads.len();
    if report.dump_would_succeed() {
        println!("crdump: pid {pid} ({threads} threads frozen for the scan, left running): a dump would succeed");
        ExitCode::SUCCESS
    } else if report.forced_dump_would_succeed() {
        println!(
            "crdump: pid {pid}: a dump would be refused ({n} blocker{}); --force would dump it, losing them; left running",
            if n == 1 { "" } else { "s" }
        );
        ExitCode::from(3)
    } else {
        println!(
            "crdump: pid {pid}: a dump would be refused even with --force ({n} blocker{}); left running",
            if n == 1 { "" } else { "s" }
        );
        ExitCode::from(4)
    }
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
        leave_running: cli.leave_running,
        force: cli.force,
        ghost_limit: cli.ghost_limit,
    };
    let mut bar = Bar {
        started: Instant::now(),
        bar: None,
        enabled: !cli.quiet && std::io::stderr().is_terminal(),
    };
    let result = dumper::dump(pid, &output, &opts, &mut bar);
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
