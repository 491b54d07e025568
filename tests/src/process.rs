//! Processes a test starts or meets: kill them when the test ends, however
//! it ends, and talk to them over their standard streams.
//!
//! [`ChildGuard`] owns a child (a workload, or the loader that becomes the
//! restored process): SIGKILL and reap on drop. [`PidGuard`] holds a process
//! that is not our child (a pid a workload or crimg reported) through a
//! pidfd, so dropping it kills exactly that process, never a later one that
//! reused the number. [`Workload`] is a child with piped stdin, stdout and
//! stderr, read line by line.

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::facts::Facts;
use crate::lines::{LineError, LineReader};
use crate::paths::workload_path;
use crate::sys;

/// How long a workload may take to set up (the counter fills 80 MiB).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a check or an expected line may take.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// What went wrong with a process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send {signal} to pid {pid}")]
    Signal {
        pid: i32,
        signal: Signal,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot send signal {signo} to pid {pid}")]
    RawSignal {
        pid: i32,
        signo: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("pid {pid} was already reaped: cannot send it signal {signo}")]
    BadSignal { pid: i32, signo: i32 },
    #[error("cannot open a pidfd for pid {pid}")]
    Pidfd {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("pid {pid} did not exit within {waited:?}")]
    ExitTimeout { pid: i32, waited: Duration },
    #[error("cannot wait for pid {pid}")]
    Wait {
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write to the stdin of {name} (pid {pid})")]
    Stdin {
        name: String,
        pid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} (pid {pid}): {source}")]
    Line {
        name: String,
        pid: i32,
        #[source]
        source: LineError,
    },
    #[error("pid {pid} was not in syscall {nr} within {waited:?} (/proc/{pid}/syscall: {last:?})")]
    NotInSyscall {
        pid: i32,
        nr: u64,
        waited: Duration,
        last: String,
    },
    #[error("{name} (pid {pid}) check failed: {reason}")]
    CheckFailed {
        name: String,
        pid: i32,
        reason: String,
    },
}

fn pid_of(child: &Child) -> i32 {
    // Linux pids fit in i32 (pid_max is at most 2^22).
    i32::try_from(child.id()).unwrap_or(i32::MAX)
}

/// Makes `command` start with only its stdio: every other descriptor this
/// test process holds (cargo's jobserver pipe, other tests' pipes) is closed
/// in the child before it execs, so a workload or a server started for a
/// test does not carry fds that crdump would have to refuse.
pub fn only_stdio(command: &mut Command) {
    sys::close_fds_above_stdio(command);
}

/// Wait, for at most `timeout`, until the thread group leader of `pid`
/// sits in syscall number `nr` (`/proc/PID/syscall` is the kernel's own
/// view of where it is, not a guess by time).
pub fn wait_in_syscall(pid: i32, nr: u64, timeout: Duration) -> Result<(), ProcessError> {
    let deadline = std::time::Instant::now() + timeout;
    let prefix = format!("{nr} ");
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if now.starts_with(&prefix) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(ProcessError::NotInSyscall {
                pid,
                nr,
                waited: timeout,
                last: now.trim_end().to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A child process that is SIGKILLed and reaped when dropped, even when the
/// test panics.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Guard `child`; `name` names it in messages.
    pub fn new(name: &str, child: Child) -> ChildGuard {
        ChildGuard {
            name: name.to_owned(),
            child,
            status: None,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        pid_of(&self.child)
    }

    /// The name given at creation.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Send `signal`. Until the child is reaped its pid cannot be reused,
    /// so signalling by pid is exact.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        let pid = self.pid();
        if self.status.is_some() {
            return Err(ProcessError::Signal {
                pid,
                signal,
                source: std::io::Error::from_raw_os_error(libc::ESRCH),
            });
        }
        nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(|errno| ProcessError::Signal {
            pid,
            signal,
            source: errno.into(),
        })
    }

    /// Send signal number `signo` (any signal, real-time ones included).
    pub fn signal_number(&self, signo: i32) -> Result<(), ProcessError> {
        let pid = self.pid();
        let not_a_signal = || ProcessError::BadSignal { pid, signo };
        if self.status.is_some() {
            return Err(not_a_signal());
        }
        sys::kill(pid, signo).map_err(|source| match Signal::try_from(signo) {
            Ok(signal) => ProcessError::Signal {
                pid,
                signal,
                source,
            },
            Err(_) => ProcessError::RawSignal { pid, signo, source },
        })
    }

    /// Wait for the child to exit, for at most `timeout`, and reap it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, ProcessError> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pid = self.pid();
        let pidfd = sys::pidfd_open(pid).map_err(|source| ProcessError::Pidfd { pid, source })?;
        let exited = sys::wait_readable(pidfd.as_raw_fd(), timeout)
            .map_err(|source| ProcessError::Wait { pid, source })?;
        if !exited {
            return Err(ProcessError::ExitTimeout {
                pid,
                waited: timeout,
            });
        }
        let status = self
            .child
            .wait()
            .map_err(|source| ProcessError::Wait { pid, source })?;
        self.status = Some(status);
        Ok(status)
    }

    /// The exit status if the child was reaped or has exited (reaping it).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            // Errors mean it is already gone; nothing else can be done here.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A process that is not our child, SIGKILLed when dropped. It is held by a
/// pidfd: the kill reaches that process or nothing.
#[derive(Debug)]
pub struct PidGuard {
    pid: i32,
    pidfd: OwnedFd,
}

impl PidGuard {
    /// Take hold of `pid` (it must exist now).
    pub fn new(pid: i32) -> Result<PidGuard, ProcessError> {
        let pidfd = sys::pidfd_open(pid).map_err(|source| ProcessError::Pidfd { pid, source })?;
        Ok(PidGuard { pid, pidfd })
    }

    /// The pid it was made for.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Send `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        sys::pidfd_send_signal(self.pidfd.as_raw_fd(), signal as i32).map_err(|source| {
            ProcessError::Signal {
                pid: self.pid,
                signal,
                source,
            }
        })
    }

    /// Wait, for at most `timeout`, until the process has exited. (Its
    /// parent reaps it, not us.)
    pub fn wait_gone(&self, timeout: Duration) -> Result<(), ProcessError> {
        let exited = sys::wait_readable(self.pidfd.as_raw_fd(), timeout).map_err(|source| {
            ProcessError::Wait {
                pid: self.pid,
                source,
            }
        })?;
        if exited {
            Ok(())
        } else {
            Err(ProcessError::ExitTimeout {
                pid: self.pid,
                waited: timeout,
            })
        }
    }
}

impl Drop for PidGuard {
    fn drop(&mut self) {
        // ESRCH (already gone) is the expected case after a clean test.
        let _ = sys::pidfd_send_signal(self.pidfd.as_raw_fd(), libc::SIGKILL);
    }
}

/// How to ask a workload to check itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckTrigger {
    /// `kill -USR2 <pid>`: works whatever stdin is.
    Signal,
    /// The line `check` on stdin.
    Stdin,
}

/// A started program with piped stdin, stdout and stderr.
///
/// Its output is read line by line on background threads; every line is
/// kept ([`Workload::stdout_lines`]). Dropping it kills and reaps it.
#[derive(Debug)]
pub struct Workload {
    name: String,
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    stdout: LineReader,
    stderr: LineReader,
    ready: Option<Facts>,
}

impl Workload {
    /// Start workload `name` (see [`workload_path`]) with `args`.
    pub fn spawn<I, S>(name: &str, args: I) -> Result<Workload, ProcessError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(workload_path(name));
        command.args(args);
        Workload::spawn_command(name, command)
    }

    /// Start `command` with piped stdin, stdout and stderr (whatever stdio
    /// it had is replaced). `name` names it in messages. Use this for the
    /// loader or a `.crimg` image: the restored process is this child.
    pub fn spawn_command(name: &str, command: Command) -> Result<Workload, ProcessError> {
        Workload::spawn_command_with_stdin(name, command, Stdio::piped())
    }

    /// [`Self::spawn_command`] with `stdin` as its stdin (a pipe from
    /// another program: `crdump -o - | crimg run -`); it then takes no
    /// [`Self::send_line`].
    pub fn spawn_command_with_stdin(
        name: &str,
        mut command: Command,
        stdin: Stdio,
    ) -> Result<Workload, ProcessError> {
        command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        only_stdio(&mut command);
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            program: format!("{name} ({command:?})"),
            source,
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let pid = pid_of(&child);
        let stdout = match stdout {
            Some(pipe) => LineReader::start(&format!("{name} (pid {pid}) stdout"), pipe),
            None => LineReader::start(&format!("{name} (pid {pid}) stdout"), std::io::empty()),
        };
        let stderr = match stderr {
            Some(pipe) => LineReader::start(&format!("{name} (pid {pid}) stderr"), pipe),
            None => LineReader::start(&format!("{name} (pid {pid}) stderr"), std::io::empty()),
        };
        Ok(Workload {
            name: name.to_owned(),
            child: ChildGuard::new(name, child),
            stdin,
            stdout,
            stderr,
            ready: None,
        })
    }

    /// Start workload `name` and wait for its READY line; panics (with the
    /// workload's output) if it does not get there.
    pub fn start<I, S>(name: &str, args: I) -> Workload
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut workload = Workload::spawn(name, args).unwrap_or_else(|err| panic!("{err}"));
        if let Err(err) = workload.wait_ready(READY_TIMEOUT) {
            panic!("{err}\n{}", workload.stderr_report());
        }
        workload
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pid of the child (for a restored process: the new pid).
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Wait for the READY line and keep its facts.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<&Facts, ProcessError> {
        let line = self.wait_line("READY", timeout)?;
        Ok(self.ready.insert(Facts::parse(&line)))
    }

    /// The READY facts, once [`Self::wait_ready`] saw them.
    pub fn ready(&self) -> Option<&Facts> {
        self.ready.as_ref()
    }

    /// The next stdout line starting with `prefix` (earlier lines are
    /// skipped but kept in [`Self::stdout_lines`]).
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String, ProcessError> {
        let pid = self.pid();
        self.stdout
            .wait_for(prefix, timeout)
            .map_err(|source| ProcessError::Line {
                name: self.name.clone(),
                pid,
                source,
            })
    }

    /// [`Self::wait_line`] with [`LINE_TIMEOUT`], panicking with the
    /// workload's recent stdout and stderr when the line does not come.
    pub fn expect_line(&mut self, prefix: &str) -> String {
        match self.wait_line(prefix, LINE_TIMEOUT) {
            Ok(line) => line,
            Err(err) => panic!("{err}\n{}", self.stderr_report()),
        }
    }

    /// Write `line` and a newline to its stdin.
    pub fn send_line(&mut self, line: &str) -> Result<(), ProcessError> {
        let pid = self.pid();
        let stdin_error = |source| ProcessError::Stdin {
            name: self.name.clone(),
            pid,
            source,
        };
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            stdin_error(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin was closed by the test",
            ))
        })?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(stdin_error)
    }

    /// Close its stdin (it reads end of file).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Send `signal` to it.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        self.child.signal(signal)
    }

    /// Send signal number `signo` (for real-time signals, e.g.
    /// `libc::SIGRTMIN() + 1`, which the counter keeps blocked).
    pub fn signal_number(&self, signo: i32) -> Result<(), ProcessError> {
        self.child.signal_number(signo)
    }

    /// Ask it to check itself and wait for the verdict: the PASS line's
    /// facts, or [`ProcessError::CheckFailed`] with the FAIL reason.
    pub fn check(
        &mut self,
        trigger: CheckTrigger,
        timeout: Duration,
    ) -> Result<Facts, ProcessError> {
        match trigger {
            CheckTrigger::Signal => self.signal(Signal::SIGUSR2)?,
            CheckTrigger::Stdin => self.send_line("check")?,
        }
        let pid = self.pid();
        let line = self
            .stdout
            .wait_for_any(&["PASS ", "FAIL "], timeout)
            .map_err(|source| ProcessError::Line {
                name: self.name.clone(),
                pid,
                source,
            })?;
        let facts = Facts::parse(&line);
        if facts.kind() == "PASS" {
            Ok(facts)
        } else {
            Err(ProcessError::CheckFailed {
                name: self.name.clone(),
                pid,
                reason: facts.rest(2).to_owned(),
            })
        }
    }

    /// [`Self::check`] with [`LINE_TIMEOUT`], panicking with the reason and
    /// the workload's output unless it passes.
    pub fn expect_pass(&mut self, trigger: CheckTrigger) -> Facts {
        match self.check(trigger, LINE_TIMEOUT) {
            Ok(facts) => facts,
            Err(err) => panic!("{err}\n{}", self.stderr_report()),
        }
    }

    /// Wait for it to exit (e.g. after crdump killed it), reap it, and read
    /// the rest of its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, ProcessError> {
        let status = self.child.wait_exit(timeout)?;
        // The pipes reach end of file once the process is gone (unless it
        // left children holding them): collect the last lines.
        self.stdout.read_to_end(timeout);
        self.stderr.read_to_end(timeout);
        Ok(status)
    }

    /// Every stdout line received so far.
    pub fn stdout_lines(&mut self) -> &[String] {
        self.stdout.poll();
        self.stdout.history()
    }

    /// Every stderr line received so far.
    pub fn stderr_lines(&mut self) -> &[String] {
        self.stderr.poll();
        self.stderr.history()
    }

    /// Wait for a stderr line containing `text` (stderr is read by its own
    /// thread: a line the program wrote before a stdout line may arrive
    /// after it).
    pub fn wait_stderr_containing(
        &mut self,
        text: &str,
        timeout: Duration,
    ) -> Result<String, ProcessError> {
        let (name, pid) = (self.name.clone(), self.pid());
        self.stderr
            .wait_for_line(text, |line| line.contains(text), timeout)
            .map_err(|source| ProcessError::Line { name, pid, source })
    }

    /// The stdout line reader (for marks and waits on several prefixes).
    pub fn stdout(&mut self) -> &mut LineReader {
        &mut self.stdout
    }

    /// The guard of the underlying child.
    pub fn child(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// Recent stderr lines, for panic messages.
    pub fn stderr_report(&mut self) -> String {
        self.stderr.poll();
        format!("{} stderr:\n{}", self.name, self.stderr.recent())
    }
}
