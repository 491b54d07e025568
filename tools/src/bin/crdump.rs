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
                  --leave-running is given. On any error, or if crdump itself is killed, it is \
                  left running as it was and nothing is left in DIR. Resume it with ./DIR/task-PID.crimg or crimg run."
)]
struct Cli {
    /// The process to checkpoint.
    #[arg(short, long)]
    pid: i32,
    /// Output directory. Created (mode 0700) only once the dump is complete;
    /// refused if another user owns it or can write into it (see --force).
    #[arg(short, long, value_name = "DIR")]
    output: PathBuf,
    /// Let the process run on after the dump instead of killing it.
    #[arg(long)]
    leave_running: bool,
    /// Dump even when some state cannot be kept (the image lists what was
    /// lost), or into an output directory other users can write into.
    #[arg(long)]
    force: bool,
    /// The most bytes of a deleted file's (or write-sealed memfd's) content
    /// saved in the image; a larger one is refused by name. Small
    /// shared-mapped files up to this size are saved too, to be recreated
    /// if they are gone at restore. Default 4 MiB.
    #[arg(long, value_name = "BYTES")]
    ghost_limit: Option<u64>,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    crimg_tools::signals::cancel_dump_on_interrupt();
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
    let result = dumper::dump(cli.pid, &cli.output, &opts, &mut bar);
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
            let mut msg = e.to_string();
            // Add causes the top message does not already spell out.
            let mut src = std::error::Error::source(&e);
            while let Some(cause) = src {
                let text = cause.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                src = cause.source();
            }
            eprintln!("crdump: {msg}");
            ExitCode::FAILURE
        }
    }
}
