//! Reading a program's output line by line with timeouts.
//!
//! A thread reads the pipe and sends each line into a channel, so a test can
//! wait for "the next line starting with PASS" for at most some time without
//! blocking forever on a stuck workload. Every line received is also kept, in
//! order, for tick checking and for error messages.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// How many of the latest lines an error message shows.
const RECENT_LINES: usize = 12;

/// Waiting for a line failed.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("no line starting with `{prefix}` from {source_name} within {waited:?}; last lines:\n{recent}")]
    Timeout {
        prefix: String,
        source_name: String,
        waited: Duration,
        recent: String,
    },
    #[error("{source_name} closed its output before a line starting with `{prefix}`; last lines:\n{recent}")]
    Closed {
        prefix: String,
        source_name: String,
        recent: String,
    },
}

/// The lines of one pipe, read by a background thread.
#[derive(Debug)]
pub struct LineReader {
    source_name: String,
    receiver: Receiver<String>,
    /// Every line received so far, in order.
    history: Vec<String>,
    /// Index into `history` of the first line not yet consumed by a wait.
    consumed: usize,
    closed: bool,
}

impl LineReader {
    /// Start reading `pipe` on a new thread. `source_name` names the
    /// program in error messages. The thread ends at end of file (or on a
    /// read error, which is treated the same).
    pub fn start<R: Read + Send + 'static>(source_name: &str, pipe: R) -> LineReader {
        let (sender, receiver) = mpsc::channel();
        let thread_name = format!("lines of {source_name}");
        let spawned = thread::Builder::new().name(thread_name).spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        // A reader that could not start behaves like a pipe at end of file:
        // the waits report `Closed`.
        drop(spawned);
        LineReader {
            source_name: source_name.to_owned(),
            receiver,
            history: Vec::new(),
            consumed: 0,
            closed: false,
        }
    }

    /// Every line received so far, in order (consumed or not).
    pub fn history(&self) -> &[String] {
        &self.history
    }

    /// The number of lines received so far; pass it to [`Self::since`] to
    /// get what arrived later.
    pub fn mark(&self) -> usize {
        self.history.len()
    }

    /// The lines received after `mark`.
    pub fn since(&self, mark: usize) -> &[String] {
        self.history.get(mark..).unwrap_or_default()
    }

    /// Whether end of file was seen.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Wait until a line starting with `prefix` arrives (or is already
    /// there, unconsumed) and return it. Lines before it are consumed too;
    /// all stay in [`Self::history`].
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Result<String, LineError> {
        self.wait_for_any(&[prefix], timeout)
    }

    /// Like [`Self::wait_for`], for the first line starting with any of
    /// `prefixes` (e.g. `["PASS ", "FAIL "]`).
    pub fn wait_for_any(
        &mut self,
        prefixes: &[&str],
        timeout: Duration,
    ) -> Result<String, LineError> {
        self.wait_for_line(
            &prefixes.join("` or `"),
            |line| prefixes.iter().any(|prefix| line.starts_with(prefix)),
            timeout,
        )
    }

    /// Like [`Self::wait_for`], for the first line that `matches`; `what`
    /// describes it in errors.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        matches: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Result<String, LineError> {
        let deadline = Instant::now() + timeout;
        loop {
            while self.consumed < self.history.len() {
                let line = &self.history[self.consumed];
                self.consumed += 1;
                if matches(line) {
                    return Ok(line.clone());
                }
            }
            if self.closed {
                return Err(LineError::Closed {
                    prefix: what.to_owned(),
                    source_name: self.source_name.clone(),
                    recent: self.recent(),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => self.history.push(line),
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(LineError::Timeout {
                        prefix: what.to_owned(),
                        source_name: self.source_name.clone(),
                        waited: timeout,
                        recent: self.recent(),
                    })
                }
            }
        }
    }

    /// Read until end of file (the program and every holder of the pipe's
    /// write end are gone), for at most `timeout`. Returns whether end of
    /// file was reached.
    pub fn read_to_end(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receiver.recv_timeout(left) {
                Ok(line) => self.history.push(line),
                Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Err(RecvTimeoutError::Timeout) => return false,
            }
        }
        true
    }

    /// Take in whatever lines have arrived, without waiting.
    pub fn poll(&mut self) {
        while let Ok(line) = self.receiver.try_recv() {
            self.history.push(line);
        }
    }

    /// The latest lines, one per line, for error messages.
    pub fn recent(&self) -> String {
        let start = self.history.len().saturating_sub(RECENT_LINES);
        let mut text = String::new();
        for line in &self.history[start..] {
            text.push_str("  | ");
            text.push_str(line);
            text.push('\n');
        }
        if text.is_empty() {
            text.push_str("  (none)\n");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_prefixed_lines_in_order_and_keeps_history() {
        let input: &[u8] = b"READY pid=1\nTICK 1\nTICK 2\nPASS x\n";
        let mut reader = LineReader::start("test input", input);
        let second = Duration::from_secs(5);
        assert_eq!(reader.wait_for("READY", second).unwrap(), "READY pid=1");
        assert_eq!(reader.wait_for("TICK", second).unwrap(), "TICK 1");
        assert_eq!(
            reader.wait_for_any(&["PASS ", "FAIL "], second).unwrap(),
            "PASS x"
        );
        assert!(matches!(
            reader.wait_for("TICK", second),
            Err(LineError::Closed { .. })
        ));
        assert_eq!(reader.history().len(), 4);
        assert_eq!(reader.since(2), ["TICK 2", "PASS x"]);
    }
}
