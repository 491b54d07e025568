//! A target that a refused, checked or cancelled dump must leave as it was:
//! running, traced by nobody, and still counting.

use std::time::{Duration, Instant};

use crate::process::Workload;
use crate::smaps::status_lines;

/// `pid` runs (state neither stopped, traced nor dead) and has no tracer.
pub fn assert_running_untraced(pid: i32) {
    let lines = status_lines(pid, &["State", "TracerPid"]);
    let state = lines[0].1.clone().unwrap_or_default();
    let tracer = lines[1].1.clone().unwrap_or_default();
    assert!(
        !matches!(state.chars().next(), Some('t' | 'T' | 'Z' | 'X')),
        "pid {pid} is {state}"
    );
    assert_eq!(tracer, "0", "pid {pid} is still traced by {tracer}");
}

/// The `n` of the next `TICK n` line `w` prints.
pub fn next_tick(w: &mut Workload) -> u64 {
    let line = w.expect_line("TICK ");
    line["TICK ".len()..]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("malformed tick line `{line}`"))
}

/// `w` counts on: a tick later than `after` comes.
pub fn assert_counts_on(w: &mut Workload, after: u64) {
    let n = next_tick(w);
    let m = if n > after { n } else { next_tick(w) };
    assert!(m > after, "{} stopped counting at {after}", w.name());
}

/// Wait (polling, at most `timeout`) until `cond` holds; false on timeout.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    cond()
}
