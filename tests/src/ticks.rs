//! The `TICK n` stream: a workload prints consecutive numbers, so a restore
//! that lost or replayed time shows up as a gap or a repeat.
//!
//! Across a dump and restore the rule is exact: the last tick the original
//! printed is `n` and the first the restored process prints is `n + 1`. A
//! line is written by one `write()`, which either completed before the
//! process was frozen (and is in the old pipe) or is restarted after restore
//! (and appears in the new one).

/// What is wrong with a tick stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TickError {
    #[error("no TICK lines {which}")]
    Empty { which: &'static str },
    #[error("TICK {next} follows TICK {previous} {which}: {missing} ticks missing")]
    Gap {
        previous: u64,
        next: u64,
        missing: u64,
        which: &'static str,
    },
    #[error("TICK {next} follows TICK {previous} {which}: repeated or went backwards")]
    Repeat {
        previous: u64,
        next: u64,
        which: &'static str,
    },
    #[error("malformed tick line `{line}`")]
    Malformed { line: String },
}

/// The tick numbers in the order they were printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickStream {
    ticks: Vec<u64>,
}

impl TickStream {
    /// Collect the `TICK n` lines out of a workload's output (other lines
    /// are ignored).
    pub fn from_lines<S: AsRef<str>>(lines: &[S]) -> Result<TickStream, TickError> {
        let mut ticks = Vec::new();
        for line in lines {
            let line = line.as_ref();
            if let Some(number) = line.strip_prefix("TICK ") {
                let tick = number.trim().parse().map_err(|_| TickError::Malformed {
                    line: line.to_owned(),
                })?;
                ticks.push(tick);
            }
        }
        Ok(TickStream { ticks })
    }

    /// The ticks, in order.
    pub fn ticks(&self) -> &[u64] {
        &self.ticks
    }

    /// The first tick, if any.
    pub fn first(&self) -> Option<u64> {
        self.ticks.first().copied()
    }

    /// The last tick, if any.
    pub fn last(&self) -> Option<u64> {
        self.ticks.last().copied()
    }

    /// Every tick is the previous one plus one. `which` names the stream in
    /// the error ("before the dump").
    pub fn check_consecutive(&self, which: &'static str) -> Result<(), TickError> {
        for pair in self.ticks.windows(2) {
            check_step(pair[0], pair[1], which)?;
        }
        Ok(())
    }

    /// `after` continues `self` exactly: both are consecutive, neither is
    /// empty, and the first tick of `after` is the last of `self` plus one.
    /// Returns (last tick before, first tick after).
    pub fn check_resumed_by(&self, after: &TickStream) -> Result<(u64, u64), TickError> {
        self.check_consecutive("before the dump")?;
        after.check_consecutive("after the restore")?;
        let last = self.last().ok_or(TickError::Empty {
            which: "before the dump",
        })?;
        let first = after.first().ok_or(TickError::Empty {
            which: "after the restore",
        })?;
        check_step(last, first, "across the dump and restore")?;
        Ok((last, first))
    }
}

fn check_step(previous: u64, next: u64, which: &'static str) -> Result<(), TickError> {
    if next <= previous {
        return Err(TickError::Repeat {
            previous,
            next,
            which,
        });
    }
    if next != previous + 1 {
        return Err(TickError::Gap {
            previous,
            next,
            missing: next - previous - 1,
            which,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(lines: &[&str]) -> TickStream {
        TickStream::from_lines(lines).expect("well-formed ticks")
    }

    #[test]
    fn accepts_an_exact_continuation() {
        let before = stream(&[
            "READY pid=1",
            "TICK 1",
            "TICK 2",
            "USR1 1 altstack=1",
            "TICK 3",
        ]);
        let after = stream(&["TICK 4", "TICK 5", "PASS counter"]);
        assert_eq!(before.check_resumed_by(&after), Ok((3, 4)));
    }

    #[test]
    fn finds_gaps_and_repeats() {
        let before = stream(&["TICK 1", "TICK 2"]);
        assert!(matches!(
            before.check_resumed_by(&stream(&["TICK 5"])),
            Err(TickError::Gap { missing: 2, .. })
        ));
        assert!(matches!(
            before.check_resumed_by(&stream(&["TICK 2", "TICK 3"])),
            Err(TickError::Repeat { .. })
        ));
        assert!(matches!(
            stream(&["TICK 1", "TICK 3"]).check_consecutive("x"),
            Err(TickError::Gap { .. })
        ));
        assert!(matches!(
            before.check_resumed_by(&stream(&[])),
            Err(TickError::Empty { .. })
        ));
    }

    #[test]
    fn rejects_malformed_ticks() {
        assert!(matches!(
            TickStream::from_lines(&["TICK x"]),
            Err(TickError::Malformed { .. })
        ));
    }
}
