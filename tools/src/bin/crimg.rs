//! `crimg`: inspect, verify and run task images; manage the binfmt entry.

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use crimg_tools::binfmt::{self, Binfmt, InstallOutcome};
use crimg_tools::image_file::ImageFile;
use crimg_tools::{loader_path, summary};

#[derive(Parser)]
#[command(
    name = "crimg",
    version,
    about = "Inspect, verify and run crimg task images"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show what an image holds: process, threads and registers, memory areas, files.
    Info {
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check an image's structure, every checksum (all stored pages included)
    /// and the loader's image rules.
    Verify {
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Print what the loader would do with an image, op by op, or why it
    /// would refuse it (its message and exit code): its checks and planner
    /// run in this process, and nothing is changed.
    Plan { image: PathBuf },
    /// Resume the process in an image, in this terminal (runs the loader).
    /// IMAGE `-` reads a dump stream (crdump -o -) on stdin and resumes its
    /// one process: the image is held in memory (a sealed memfd) until the
    /// restore is done, never written to disk; a cut or corrupt stream, or
    /// a tree, is refused before anything resumes. The process's stdin is
    /// /dev/null then (the stream was crimg's).
    Run {
        image: PathBuf,
        /// The loader binary (default: found beside crimg or installed).
        #[arg(long)]
        loader: Option<PathBuf>,
        /// Give every thread its recorded thread id or fail (exit 10)
        /// before anything changes; by default a thread whose id is taken
        /// (another copy of the image runs) gets a new one, with a warning.
        #[arg(long)]
        same_ids: bool,
        /// Fill the memory before the process resumes (anonymous pages
        /// are copied in with UFFDIO_COPY where the kernel allows it, else
        /// read), every checksum verified before anything changes. The
        /// default below 256 MiB of private anonymous pages in large areas,
        /// and wherever --lazy cannot be made.
        #[arg(long)]
        eager: bool,
        /// Resume the process as soon as its memory areas exist: a page
        /// server fills its private anonymous pages on first touch and in
        /// the background (userfaultfd), then exits. Needs CAP_SYS_PTRACE
        /// and a read lease on the image (else refused, exit 7). Those
        /// pages' checksums are verified by the server before it copies
        /// them: a corrupt page found then kills the resumed process. The
        /// default from 256 MiB of such pages, where it can be made.
        #[arg(long, conflicts_with = "eager")]
        lazy: bool,
    },
    /// Check what this machine allows: ptrace, pagemap, vDSO layout, XSAVE,
    /// capabilities, set_tid, the loader and the binfmt entry (each by
    /// trying it). Exits 1 when a check fails.
    Check {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The binfmt_misc entry to check.
        #[arg(long, default_value = binfmt::DEFAULT_NAME)]
        binfmt_name: String,
    },
    /// Manage the binfmt_misc entry that makes images directly runnable.
    Binfmt {
        #[command(subcommand)]
        action: BinfmtAction,
    },
}

#[derive(Subcommand)]
enum BinfmtAction {
    /// Register the loader for crimg images (idempotent) and persist it in /etc/binfmt.d.
    Install {
        /// The loader binary (default: found beside crimg or installed).
        #[arg(long)]
        loader: Option<PathBuf>,
        /// Entry name under /proc/sys/fs/binfmt_misc.
        #[arg(long, default_value = binfmt::DEFAULT_NAME)]
        name: String,
        /// Do not write /etc/binfmt.d/NAME.conf.
        #[arg(long)]
        no_persist: bool,
    },
    /// Remove the entry and its /etc/binfmt.d file.
    Uninstall {
        #[arg(long, default_value = binfmt::DEFAULT_NAME)]
        name: String,
    },
    /// Say whether the entry is registered, and which loader it runs.
    Status {
        #[arg(long, default_value = binfmt::DEFAULT_NAME)]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn loader(explicit: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return p
            .canonicalize()
            .with_context(|| format!("loader {}", p.display()));
    }
    loader_path::find().with_context(|| {
        let tried: Vec<String> = loader_path::candidates()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        format!(
            "cannot find {}; tried {}",
            loader_path::LOADER_NAME,
            tried.join(", ")
        )
    })
}

fn info(path: &Path, json: bool) -> Result<()> {
    let file = ImageFile::open(path)?;
    let img = file.parse()?;
    let s = summary::summarize(&img).with_context(|| format!("{}", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", summary::render_text(&s));
    }
    Ok(())
}

fn verify(paths: &[PathBuf]) -> Result<()> {
    let mut failed = 0;
    for path in paths {
        // An incremental image: its whole chain first, naming a broken link.
        if let Err(e) = crimg_tools::chain::ChainFiles::open(path).and_then(|c| c.verify()) {
            eprintln!(
                "crimg: {}: {}",
                path.display(),
                crimg_tools::error_line(crimg_tools::error_chain(&e))
            );
            failed += 1;
            continue;
        }
        let result = ImageFile::open(path).and_then(|f| {
            let img = f.verify()?;
            Ok((
                img.segment_count(),
                img.stored_bytes(),
                img.thread_count(),
                dumper::loader_refusal(&img),
            ))
        });
        match result {
            Ok((_, _, _, Some(why))) => {
                eprintln!("crimg: {}: {why}", path.display());
                failed += 1;
            }
            Ok((segments, stored, threads, None)) => println!(
                "{}: ok ({threads} thread{}, {segments} segments, {stored} bytes of pages; all checksums match; the loader's rules accept it)",
                path.display(),
                if threads == 1 { "" } else { "s" }
            ),
            Err(e) => {
                eprintln!("crimg: {}", crimg_tools::error_line(crimg_tools::error_chain(&e)));
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} images failed verification", paths.len());
    }
    Ok(())
}

/// `--lazy` or `--eager` for the loader, or neither (its own choice).
type Fill = Option<&'static str>;

fn fill_of(eager: bool, lazy: bool) -> Fill {
    if lazy {
        Some("--lazy")
    } else {
        eager.then_some("--eager")
    }
}

fn run(image: &Path, loader_bin: Option<PathBuf>, same_ids: bool, fill: Fill) -> Result<()> {
    let loader = loader(loader_bin)?;
    if image.as_os_str() == "-" {
        return run_stream(&loader, same_ids, fill);
    }
    // Fail early with a clear message rather than through the loader.
    if !image.exists() {
        bail!("{}: no such image", image.display());
    }
    // Blocked across the exec: the loader blocks everything from its first
    // instruction, this closes the gap before it. The restored task's own
    // mask comes from its image.
    let mut command = std::process::Command::new(&loader);
    command.arg(image);
    if same_ids {
        command.arg("--same-ids");
    }
    command.args(fill);
    let err = crimg_tools::signals::exec_with_signals_blocked(&mut command);
    Err(err).with_context(|| format!("cannot execute the loader {}", loader.display()))
}

/// `crimg run -`: the stream on stdin received whole into a sealed memfd
/// (`crimg_tools::stream`), then the loader run on it as on an image file.
fn run_stream(loader: &Path, same_ids: bool, fill: Fill) -> Result<()> {
    use std::io::IsTerminal;
    use std::os::fd::AsRawFd;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!("run -: stdin is a terminal; give it a dump stream (crdump -o - | crimg run -)");
    }
    // Whom the stream counts as owned by, while its writer still runs;
    // the loader bounds the task by the memfd's owner.
    let owner = crimg_tools::stream_owner::of_stdin().context("run -: stdin")?;
    // Unbuffered (std's stdin reads ahead): the image is spliced from the
    // fd right after its header, which must be all that was read.
    let input = std::fs::File::from(
        std::os::fd::AsFd::as_fd(&stdin)
            .try_clone_to_owned()
            .context("stdin")?,
    );
    crimg_tools::stream::grow_pipe(&input);
    let received = crimg_tools::stream::receive(input)?;
    crimg_tools::stream_owner::give(&received.image, &owner).context("run -")?;
    // Said when it is not the runner: the loader bounds the task by it
    // (its own warning names the ids, this line says how they were found).
    if owner.uid != nix::unistd::geteuid().as_raw() {
        eprintln!(
            "crimg: run -: the stream counts as uid {} gid {}'s ({})",
            owner.uid, owner.gid, owner.how
        );
    }
    let mut command = std::process::Command::new(loader);
    command.arg(format!("/proc/self/fd/{}", received.image.as_raw_fd()));
    if same_ids {
        command.arg("--same-ids");
    }
    command.args(fill);
    let null = std::fs::File::open("/dev/null").context("/dev/null")?;
    command.stdin(null);
    let err = crimg_tools::signals::exec_with_signals_blocked(&mut command);
    Err(err).with_context(|| format!("cannot execute the loader {}", loader.display()))
}

/// `crimg plan`: the loader's own stage 1 and planner, run here
/// (`binfmt_loader::run::dry_run`); exits with the loader's code when it
/// would refuse the image.
fn plan(image: &Path) -> Result<ExitCode> {
    use binfmt_loader::check::image::open_regular;
    use std::os::unix::ffi::OsStrExt;
    // The loader's messages borrow the name for the life of the process.
    let name: &'static [u8] = Vec::leak(image.as_os_str().as_bytes().to_vec());
    let refused = |r: binfmt_loader::run::Refusal| {
        eprintln!(
            "crimg: {}: the loader would refuse it (exit {}): {}",
            image.display(),
            r.code as i32,
            String::from_utf8_lossy(r.message.as_bytes())
        );
        ExitCode::from(u8::try_from(r.code as i32).unwrap_or(1))
    };
    let os = binfmt_loader::sys::kernel_os();
    let fd = match open_regular(&os, name) {
        Ok(fd) => fd,
        Err(e) => {
            return Ok(refused(binfmt_loader::run::Refusal::of(e.exit_code(), e)));
        }
    };
    let mut text = String::new();
    match binfmt_loader::run::dry_run(name, fd, &mut text) {
        Ok(()) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(r) => Ok(refused(r)),
    }
}

fn check_machine(json: bool, binfmt_name: &str) -> Result<()> {
    use crimg_tools::check::{self, Verdict};
    let checks = check::run_all(binfmt_name);
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let mark = match c.verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            println!("{mark}  {:<30} {}", c.name, c.detail);
        }
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if failed > 0 {
        bail!("{failed} check(s) failed: crimg cannot work fully here");
    }
    Ok(())
}

fn binfmt_action(action: BinfmtAction) -> Result<()> {
    match action {
        BinfmtAction::Install {
            loader: l,
            name,
            no_persist,
        } => {
            let loader = loader(l)?;
            let entry = Binfmt::new(&name)?;
            let outcome = entry.install(&loader)?;
            let what = match outcome {
                InstallOutcome::Registered => "registered",
                InstallOutcome::Refreshed => {
                    "already registered; registered again so it runs the loader now at that path"
                }
                InstallOutcome::Replaced => "re-registered (it pointed elsewhere)",
            };
            println!(
                "binfmt entry {name}: {what}, interpreter {}",
                loader.display()
            );
            if !no_persist {
                let path = binfmt::persist(&name, &loader)?;
                println!("persisted in {}", path.display());
            }
        }
        BinfmtAction::Uninstall { name } => {
            let entry = Binfmt::new(&name)?;
            let removed = entry.uninstall()?;
            let unpersisted = binfmt::unpersist(&name)?;
            match (removed, unpersisted) {
                (false, false) => println!("binfmt entry {name}: was not installed"),
                _ => println!("binfmt entry {name}: removed"),
            }
        }
        BinfmtAction::Status { name, json } => {
            let entry = Binfmt::new(&name)?;
            let st = if entry.dir.join("register").exists() {
                entry.status()?
            } else {
                None
            };
            let persisted = binfmt::persist_path(&name).exists();
            if json {
                let v = serde_json::json!({ "registered": st.is_some(), "entry": st, "persisted": persisted });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                match &st {
                    Some(s) => println!(
                        "binfmt entry {name}: {}, interpreter {}, flags {}",
                        if s.enabled {
                            "registered and enabled"
                        } else {
                            "registered but disabled"
                        },
                        s.interpreter.display(),
                        s.flags
                    ),
                    None => println!("binfmt entry {name}: not registered"),
                }
                println!(
                    "{}: {}",
                    binfmt::persist_path(&name).display(),
                    if persisted { "present" } else { "absent" }
                );
            }
            if st.is_none() {
                // Like `systemctl status`: the answer is in the exit code too.
                std::process::exit(3);
            }
        }
    }
    Ok(())
}

/// `crimg run [--eager|--lazy] IMAGE` exactly (the restore path, whose every microsecond
/// before the loader's exec counts): the image (and the fill asked), without building clap's
/// parser for every subcommand (which costs more than all else `run` does
/// before the exec). Any other form, options included, goes through clap.
fn plain_run() -> Option<(PathBuf, Fill)> {
    let mut args = std::env::args_os().skip(1).peekable();
    let command = args.next()?;
    let fill = args
        .next_if(|a| a == "--eager" || a == "--lazy")
        .map(|a| fill_of(a == "--eager", a == "--lazy"));
    let image = args.next()?;
    let image_is_a_path = !image.is_empty() && !image.as_encoded_bytes().starts_with(b"-");
    (command == "run" && image_is_a_path && args.next().is_none())
        .then(|| (PathBuf::from(image), fill.flatten()))
}

fn main() -> ExitCode {
    if let Some((image, fill)) = plain_run() {
        return match run(&image, None, false, fill) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let line = crimg_tools::error_line(e.chain().map(|c| c.to_string()));
                eprintln!("crimg: {line}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info { image, json } => info(&image, json),
        Command::Verify { images } => verify(&images),
        Command::Plan { image } => match plan(&image) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Run {
            image,
            loader,
            same_ids,
            eager,
            lazy,
        } => run(&image, loader, same_ids, fill_of(eager, lazy)),
        Command::Check { json, binfmt_name } => check_machine(json, &binfmt_name),
        Command::Binfmt { action } => binfmt_action(action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = crimg_tools::error_line(e.chain().map(|c| c.to_string()));
            eprintln!("crimg: {line}");
            ExitCode::FAILURE
        }
    }
}
