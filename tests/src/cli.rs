//! Running crimg's programs: `crdump`, `crimg` and the loader.
//!
//! A hung program would hang the test, so every run has a timeout, after
//! which the program is killed (its [`ChildGuard`] drops) and the run fails.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::process::{ChildGuard, ProcessError, Workload};

/// How long a dump or an inspection may take.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// A crimg program could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot run {program}")]
    Start {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program}: {source}")]
    Wait {
        program: String,
        #[source]
        source: Box<ProcessError>,
    },
    #[error("`{command}` failed ({status}); stderr:\n{stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{program} exited but its {stream} stayed open for {waited:?} (a process it left behind holds it)")]
    OutputOpen {
        program: String,
        stream: &'static str,
        waited: Duration,
    },
    #[error("`{command}` succeeded but {path} does not exist")]
    MissingOutput { command: String, path: PathBuf },
}

/// What a finished program printed.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Where the crimg binaries are (see [`crate::paths::binaries`]).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub crdump: PathBuf,
    pub crimg: PathBuf,
    pub loader: PathBuf,
}

/// The files of a finished dump of one process.
#[derive(Debug, Clone)]
pub struct Dump {
    pub dir: PathBuf,
    /// `dir/task-<pid>.crimg`
    pub image: PathBuf,
    /// `dir/manifest.json`
    pub manifest: PathBuf,
    pub output: RunOutput,
}

/// Run `command` to completion with stdin from /dev/null, collecting its
/// output, for at most `timeout` (then it is killed).
pub fn run(mut command: Command, timeout: Duration) -> Result<RunOutput, CliError> {
    let program = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| CliError::Start {
        program: program.clone(),
        source,
    })?;
    let stdout = child.stdout.take().map(collect_in_background);
    let stderr = child.stderr.take().map(collect_in_background);
    let mut guard = ChildGuard::new(&program, child);
    let status = guard.wait_exit(timeout).map_err(|source| CliError::Wait {
        program: program.clone(),
        source: Box::new(source),
    })?;
    // The pipes reach end of file once the program is gone, unless it left
    // a process behind that holds them: wait for that only so long.
    let text = |reader: Option<mpsc::Receiver<Vec<u8>>>, stream| match reader {
        None => Ok(String::new()),
        Some(reader) => match reader.recv_timeout(OUTPUT_TIMEOUT) {
            Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
            Err(mpsc::RecvTimeoutError::Disconnected) => Ok(String::new()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(CliError::OutputOpen {
                program: program.clone(),
                stream,
                waited: OUTPUT_TIMEOUT,
            }),
        },
    };
    Ok(RunOutput {
        status,
        stdout: text(stdout, "stdout")?,
        stderr: text(stderr, "stderr")?,
    })
}

/// How long the output of a program that exited may stay open.
const OUTPUT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads `pipe` to its end on a thread; the bytes come through the channel.
fn collect_in_background<R: Read + Send + 'static>(mut pipe: R) -> mpsc::Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        // A read error ends the output early; what was read is kept.
        let _ = pipe.read_to_end(&mut bytes);
        // The receiver may have given up waiting: nothing to do then.
        let _ = sender.send(bytes);
    });
    receiver
}

/// [`run`], failing unless the program exits with status 0.
pub fn run_ok(command: Command, timeout: Duration) -> Result<RunOutput, CliError> {
    let description = format!("{command:?}");
    let output = run(command, timeout)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(CliError::Failed {
            command: description,
            status: output.status,
            stderr: output.stderr,
        })
    }
}

impl Binaries {
    /// `crdump --pid <pid> -o <out> [--leave-running]`.
    pub fn crdump_command(&self, pid: i32, out: &Path, leave_running: bool) -> Command {
        let mut command = Command::new(&self.crdump);
        command.arg("--pid").arg(pid.to_string()).arg("-o").arg(out);
        if leave_running {
            command.arg("--leave-running");
        }
        command
    }

    /// Dump `pid` into `out` and check that the image and the manifest are
    /// there.
    pub fn dump(&self, pid: i32, out: &Path, leave_running: bool) -> Result<Dump, CliError> {
        let command = self.crdump_command(pid, out, leave_running);
        let description = format!("{command:?}");
        let output = run_ok(command, CLI_TIMEOUT)?;
        let image = out.join(format!("task-{pid}.crimg"));
        let manifest = out.join("manifest.json");
        for path in [&image, &manifest] {
            if !path.is_file() {
                return Err(CliError::MissingOutput {
                    command: description,
                    path: path.clone(),
                });
            }
        }
        Ok(Dump {
            dir: out.to_path_buf(),
            image,
            manifest,
            output,
        })
    }

    /// `crimg <args>`.
    pub fn crimg_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.crimg);
        command.args(args);
        command
    }

    /// `crimg info <image> --json`, its stdout.
    pub fn info_json(&self, image: &Path) -> Result<String, CliError> {
        let mut command = self.crimg_command(["info"]);
        command.arg(image).arg("--json");
        Ok(run_ok(command, CLI_TIMEOUT)?.stdout)
    }

    /// `crimg verify <image>`, failing unless it succeeds.
    pub fn verify(&self, image: &Path) -> Result<RunOutput, CliError> {
        let mut command = self.crimg_command(["verify"]);
        command.arg(image);
        run_ok(command, CLI_TIMEOUT)
    }

    /// `crimg-loader <image>`: run this to restore; the loader's process
    /// becomes the restored one (same pid as the spawned child).
    pub fn loader_command(&self, image: &Path) -> Command {
        let mut command = Command::new(&self.loader);
        command.arg(image);
        command
    }

    /// `crimg run <image>`.
    pub fn run_image_command(&self, image: &Path) -> Command {
        let mut command = self.crimg_command(["run"]);
        command.arg(image);
        command
    }

    /// Restore `image` through the loader with piped stdio (the restored
    /// process inherits fds 0-2 from the loader, so the test talks to it as
    /// to the original). `name` names it in messages.
    pub fn restore(&self, name: &str, image: &Path) -> Result<Workload, ProcessError> {
        Workload::spawn_command(name, self.loader_command(image))
    }
}
