//! `/proc/P/timers`: the POSIX timers of a process (`timer_create`), four
//! lines each, as `fs/proc/base.c` (`show_timer`) prints them:
//!
//! ```text
//! ID: 2
//! signal: 10/00000000deadbeef
//! notify: signal/tid.3847
//! ClockID: 7
//! ```
//!
//! `signal` is `sigev_signo/sigev_value` (the value in hex, no `0x`);
//! `notify` is the kind (`signal`, `none`, `thread`) and who it goes to:
//! `tid.T` for `SIGEV_THREAD_ID`, else `pid.P`. The file exists only with
//! `CONFIG_CHECKPOINT_RESTORE`. What the timer's time left and interval
//! are is not in it (`timer_gettime`, asked inside the task).

use image_format::records::sigev_notify;

use super::{parse_dec, parse_hex, ParseError};

const FILE: &str = "timers";

/// One timer as `/proc/P/timers` lists it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListedTimer {
    pub id: i32,
    pub signo: u32,
    /// `sigev_value`.
    pub value: u64,
    /// The kernel's `sigev_notify`: [`sigev_notify`] values, `THREAD_ID`
    /// ORed in when it goes to one thread.
    pub notify: u32,
    /// The pid (process-wide) or tid (`THREAD_ID`) the signal goes to.
    pub target: i32,
    /// The clock id as the kernel keeps it (the CPU clocks negative:
    /// `(~pid << 3) | type`, pid 0 for the caller).
    pub clock: i32,
}

/// Parse the whole file.
pub fn parse(text: &str) -> Result<Vec<ListedTimer>, ParseError> {
    let mut out: Vec<ListedTimer> = Vec::new();
    // Which of the four lines the current timer has had.
    let mut seen = 0u8;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(ParseError::new(
                FILE,
                n,
                format!("not a `key: value` line: {line:?}"),
            ));
        };
        let value = value.trim();
        if key == "ID" {
            if !out.is_empty() && seen != 0b1111 {
                return Err(ParseError::new(FILE, n, "a timer's lines are incomplete"));
            }
            out.push(ListedTimer {
                id: parse_dec(FILE, n, value)?,
                ..ListedTimer::default()
            });
            seen = 0b0001;
            continue;
        }
        let Some(t) = out.last_mut() else {
            return Err(ParseError::new(
                FILE,
                n,
                format!("{key:?} before the first ID"),
            ));
        };
        match key {
            "signal" => {
                let (signo, v) = value
                    .split_once('/')
                    .ok_or_else(|| ParseError::new(FILE, n, format!("bad signal {value:?}")))?;
                t.signo = parse_dec(FILE, n, signo)?;
                t.value = parse_hex(FILE, n, v)?;
                seen |= 0b0010;
            }
            "notify" => {
                let bad = || ParseError::new(FILE, n, format!("bad notify {value:?}"));
                let (kind, target) = value.split_once('/').ok_or_else(bad)?;
                let base = match kind {
                    "signal" => sigev_notify::SIGNAL,
                    "none" => sigev_notify::NONE,
                    "thread" => sigev_notify::THREAD,
                    _ => return Err(bad()),
                };
                let (whom, id) = target.split_once('.').ok_or_else(bad)?;
                t.notify = match whom {
                    "tid" => base | sigev_notify::THREAD_ID,
                    "pid" => base,
                    _ => return Err(bad()),
                };
                t.target = parse_dec(FILE, n, id)?;
                seen |= 0b0100;
            }
            "ClockID" => {
                t.clock = parse_dec(FILE, n, value)?;
                seen |= 0b1000;
            }
            // A newer kernel's extra line: not needed to restore.
            _ => {}
        }
    }
    if !out.is_empty() && seen != 0b1111 {
        return Err(ParseError::new(
            FILE,
            0,
            "the last timer's lines are incomplete",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What this kernel printed for three timers (newest first).
    const FIXTURE: &str = "\
ID: 2
signal: 10/00000000deadbeef
notify: signal/tid.3847
ClockID: 7
ID: 1
signal: 35/0000000000001234
notify: none/pid.3846
ClockID: 0
ID: 0
signal: 35/0000000000001234
notify: signal/pid.3846
ClockID: -2
";

    #[test]
    fn parses_what_the_kernel_prints() {
        let t = parse(FIXTURE).unwrap();
        assert_eq!(
            t,
            vec![
                ListedTimer {
                    id: 2,
                    signo: 10,
                    value: 0xdead_beef,
                    notify: sigev_notify::SIGNAL | sigev_notify::THREAD_ID,
                    target: 3847,
                    clock: 7,
                },
                ListedTimer {
                    id: 1,
                    signo: 35,
                    value: 0x1234,
                    notify: sigev_notify::NONE,
                    target: 3846,
                    clock: 0,
                },
                ListedTimer {
                    id: 0,
                    signo: 35,
                    value: 0x1234,
                    notify: sigev_notify::SIGNAL,
                    target: 3846,
                    clock: -2,
                },
            ]
        );
        assert_eq!(
            parse("ID: 9\nsignal: 34/0\nnotify: thread/pid.5\nClockID: 1\n").unwrap()[0].notify,
            sigev_notify::THREAD
        );
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "ID: x\n",
            "signal: 10/0\n",
            "ID: 1\nsignal: 10\nnotify: signal/pid.1\nClockID: 1\n",
            "ID: 1\nsignal: 10/zz\nnotify: signal/pid.1\nClockID: 1\n",
            "ID: 1\nsignal: 10/0\nnotify: bell/pid.1\nClockID: 1\n",
            "ID: 1\nsignal: 10/0\nnotify: signal/pgid.1\nClockID: 1\n",
            "ID: 1\nsignal: 10/0\nnotify: signal/pid.1\n",
            "ID: 1\nsignal: 10/0\nnotify: signal/pid.1\nID: 2\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
