//! A terminal for tests: a private tmux server, one per [`Tmux`], whose
//! pane runs a command on a pseudo-terminal of a fixed size. Tests type into
//! it with `send-keys`, read its screen with `capture-pane` and wait until
//! the screen shows something (polling with a deadline, never a bare sleep).
//!
//! The server listens on a socket in a temporary directory of its own
//! (`tmux -S`), so it never meets the user's tmux or another test's. Dropping
//! the guard asks the server to quit, then SIGKILLs it and the pane's first
//! process by their pids (held by pidfds: a kill reaches that process or
//! nothing) and removes the socket with its directory.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cli::{run, CliError};
use crate::process::{only_stdio, PidGuard, ProcessError};

/// How long a tmux command may take.
const TMUX_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Tmux::wait_for`] waits by default.
pub const SCREEN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the screen is read while waiting.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What went wrong with a test terminal.
#[derive(Debug, thiserror::Error)]
pub enum TmuxError {
    #[error("cannot create a directory for the tmux socket")]
    SocketDir(#[source] std::io::Error),
    #[error("tmux {what}")]
    Command {
        what: String,
        #[source]
        source: CliError,
    },
    #[error("tmux {what} printed `{output}`, not {expected}")]
    Output {
        what: String,
        output: String,
        expected: &'static str,
    },
    #[error("cannot hold tmux process {pid} (its server or its pane)")]
    Server {
        pid: i32,
        #[source]
        source: ProcessError,
    },
    #[error("no {what} on the terminal after {waited:?}; the screen:\n{screen}")]
    NotOnScreen {
        what: String,
        waited: Duration,
        screen: String,
    },
    #[error("pid {pid} got no child within {waited:?}")]
    NoChild { pid: i32, waited: Duration },
}

/// Whether the `tmux` program can be run.
pub fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A private tmux server with one session, killed on drop.
#[derive(Debug)]
pub struct Tmux {
    // Declared before `dir` so the server is killed before its socket goes.
    server: PidGuard,
    /// The process the pane started with (it may ignore the hangup).
    pane: Option<PidGuard>,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Start a server whose session `test` has one pane of `width` x `height`
    /// cells running `program args` in `cwd`. The pane's process starts with
    /// only its stdio open (the pty).
    pub fn start<I, S>(
        cwd: &Path,
        width: u16,
        height: u16,
        program: &str,
        args: I,
    ) -> Result<Tmux, TmuxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let dir = tempfile::Builder::new()
            .prefix("crimg-tmux-")
            .tempdir()
            .map_err(TmuxError::SocketDir)?;
        let socket = dir.path().join("socket");
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&socket).args(["-f", "/dev/null"]);
        c.args(["new-session", "-d", "-s", "test"])
            .args(["-x", &width.to_string(), "-y", &height.to_string()])
            .arg("-c")
            .arg(cwd)
            // The pane runs exactly this argv (no shell in between).
            .arg(program)
            .args(args);
        // A fixed, plain terminal type whatever the caller's environment.
        c.env("TERM", "xterm-256color");
        only_stdio(&mut c);
        run_checked(c, "new-session")?;
        let pid_text = tmux_output(&socket, ["display-message", "-p", "#{pid}"])?;
        let pid = parse_pid(&pid_text, "display-message #{pid}")?;
        let server = PidGuard::new(pid).map_err(|source| TmuxError::Server { pid, source })?;
        let mut tmux = Tmux {
            server,
            pane: None,
            socket,
            dir,
        };
        let pane = tmux.pane_pid()?;
        tmux.pane =
            Some(PidGuard::new(pane).map_err(|source| TmuxError::Server { pid: pane, source })?);
        // Nothing but the program's own output on the screen: no status line.
        tmux.tmux(["set-option", "-g", "status", "off"])?;
        Ok(tmux)
    }

    /// The tmux server's pid.
    pub fn server_pid(&self) -> i32 {
        self.server.pid()
    }

    /// The directory holding the server's socket (removed on drop).
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `tmux -S <socket> <args>`, its stdout.
    pub fn tmux<I, S>(&self, args: I) -> Result<String, TmuxError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        tmux_output(&self.socket, args)
    }

    /// The pid of the process the pane runs.
    pub fn pane_pid(&self) -> Result<i32, TmuxError> {
        let text = self.tmux(["display-message", "-p", "-t", "test", "#{pane_pid}"])?;
        parse_pid(&text, "display-message #{pane_pid}")
    }

    /// Type `text` literally (no key names interpreted).
    pub fn send_text(&self, text: &str) -> Result<(), TmuxError> {
        self.tmux(["send-keys", "-t", "test", "-l", text]).map(drop)
    }

    /// Press keys by tmux name (`Enter`, `Escape`, `C-c`, `q`, `Space`, ...).
    pub fn send_keys(&self, keys: &[&str]) -> Result<(), TmuxError> {
        let mut args = vec!["send-keys", "-t", "test"];
        args.extend_from_slice(keys);
        self.tmux(args).map(drop)
    }

    /// Type `text`, then Enter.
    pub fn type_line(&self, text: &str) -> Result<(), TmuxError> {
        self.send_text(text)?;
        self.send_keys(&["Enter"])
    }

    /// The visible screen, one string with a line per row (wrapped lines
    /// joined).
    pub fn screen(&self) -> Result<String, TmuxError> {
        self.tmux(["capture-pane", "-p", "-J", "-t", "test"])
    }

    /// The pane's size as tmux sees it, `(columns, rows)`.
    pub fn pane_size(&self) -> Result<(u16, u16), TmuxError> {
        let text = self.tmux([
            "display-message",
            "-p",
            "-t",
            "test",
            "#{pane_width} #{pane_height}",
        ])?;
        let mut it = text.split_whitespace().map(str::parse::<u16>);
        match (it.next(), it.next()) {
            (Some(Ok(w)), Some(Ok(h))) => Ok((w, h)),
            _ => Err(TmuxError::Output {
                what: "display-message #{pane_width} #{pane_height}".into(),
                output: text.trim().to_owned(),
                expected: "two numbers",
            }),
        }
    }

    /// Resize the pane's window (the program in it gets SIGWINCH).
    pub fn resize(&self, width: u16, height: u16) -> Result<(), TmuxError> {
        self.tmux([
            "resize-window",
            "-t",
            "test",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ])
        .map(drop)
    }

    /// Poll the screen until `pred` holds for it, for at most `timeout`;
    /// the screen that satisfied it. `what` names the awaited thing in the
    /// error, which carries the last screen.
    pub fn wait_screen(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, TmuxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen()?;
            if pred(&screen) {
                return Ok(screen);
            }
            if Instant::now() >= deadline {
                return Err(TmuxError::NotOnScreen {
                    what: what.to_owned(),
                    waited: timeout,
                    screen,
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Wait (for [`SCREEN_TIMEOUT`]) until a line of the screen satisfies
    /// `pred`; that line.
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<String, TmuxError> {
        let screen = self.wait_screen(what, SCREEN_TIMEOUT, |s| s.lines().any(&pred))?;
        Ok(screen
            .lines()
            .find(|l| pred(l))
            .unwrap_or_default()
            .to_owned())
    }

    /// Wait (for [`SCREEN_TIMEOUT`]) until the screen contains `text`; the
    /// screen.
    pub fn wait_contains(&self, text: &str) -> Result<String, TmuxError> {
        self.wait_screen(&format!("`{text}`"), SCREEN_TIMEOUT, |s| s.contains(text))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Politely first: kill-server hangs up every pane (their programs
        // get SIGHUP); then the server by its pid, whatever state it is in.
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket).arg("kill-server");
        let _ = run(c, TMUX_COMMAND_TIMEOUT);
        let _ = self.server.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.server.wait_gone(TMUX_COMMAND_TIMEOUT);
        if let Some(pane) = &self.pane {
            let _ = pane.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = pane.wait_gone(TMUX_COMMAND_TIMEOUT);
        }
        // The socket goes with `dir`, dropped after this.
    }
}

/// The children of `pid` (its main thread's `children` list).
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Wait, for at most `timeout`, until `pid` has a child whose `comm` is
/// `comm` (a program started from the pane's shell); its pid.
pub fn wait_child_named(pid: i32, comm: &str, timeout: Duration) -> Result<i32, TmuxError> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = children_of(pid).into_iter().find(|c| {
            std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim_end() == comm)
        });
        if let Some(child) = found {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            return Err(TmuxError::NoChild {
                pid,
                waited: timeout,
            });
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn run_checked(command: Command, what: &str) -> Result<String, TmuxError> {
    let output = run(command, TMUX_COMMAND_TIMEOUT).map_err(|source| TmuxError::Command {
        what: what.to_owned(),
        source,
    })?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(TmuxError::Command {
            what: what.to_owned(),
            source: CliError::Failed {
                command: what.to_owned(),
                status: output.status,
                stderr: output.stderr,
            },
        })
    }
}

fn tmux_output<I, S>(socket: &Path, args: I) -> Result<String, TmuxError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let what = args
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let mut c = Command::new("tmux");
    c.arg("-S").arg(socket).args(&args);
    run_checked(c, &what)
}

fn parse_pid(text: &str, what: &str) -> Result<i32, TmuxError> {
    text.trim().parse().map_err(|_| TmuxError::Output {
        what: what.to_owned(),
        output: text.trim().to_owned(),
        expected: "a pid",
    })
}

#[cfg(test)]
mod tests {
    use super::{have_tmux, Tmux};
    use std::time::Duration;

    fn runs(pid: i32, comm: &str) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) S ...`: the state follows the last `)`.
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        stat.contains(&format!("({comm})")) && !state.starts_with('Z') && !state.is_empty()
    }

    #[test]
    fn a_pane_echoes_what_is_typed_and_the_server_goes_with_the_guard() {
        if !have_tmux() {
            crate::privilege::report_skip("no tmux");
            return;
        }
        let cwd = tempfile::tempdir().unwrap();
        let tmux = Tmux::start(cwd.path(), 91, 27, "cat", std::iter::empty::<&str>())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tmux.pane_size().unwrap(), (91, 27));
        let cat = tmux.pane_pid().unwrap();
        // The pane's shell execs cat: under load its pid may still show
        // the shell for a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let comm = || std::fs::read_to_string(format!("/proc/{cat}/comm")).unwrap();
        while comm() != "cat\n" && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(comm(), "cat\n");
        tmux.type_line("hello pane").unwrap();
        // The line shows twice: the terminal's echo, then cat's copy.
        tmux.wait_screen("cat's copy", Duration::from_secs(10), |s| {
            s.matches("hello pane").count() == 2
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let err = tmux
            .wait_screen("something never shown", Duration::from_millis(200), |s| {
                s.contains("never")
            })
            .unwrap_err();
        assert!(err.to_string().contains("hello pane"), "{err}");
        let server = tmux.server_pid();
        let socket_dir = tmux.socket_dir().to_path_buf();
        drop(tmux);
        assert!(!socket_dir.exists(), "{} left behind", socket_dir.display());
        // Neither is our child: gone means no such pid, a zombie waiting
        // for its reaper, or a reused pid running something else.
        assert!(
            !runs(server, "tmux: server"),
            "tmux server {server} still runs"
        );
        assert!(!runs(cat, "cat"), "the pane's cat {cat} still runs");
    }
}
