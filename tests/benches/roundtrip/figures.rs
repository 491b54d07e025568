//! The figures of a workload's rounds, by name, and how they print.

use std::time::Duration;

/// Every round's value of each figure, in the order first seen.
#[derive(Debug, Default)]
pub struct Figures(Vec<(&'static str, Vec<f64>)>);

impl Figures {
    pub fn add(&mut self, key: &'static str, value: f64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(value),
            None => self.0.push((key, vec![value])),
        }
    }

    pub fn time(&mut self, key: &'static str, value: Duration) {
        self.add(key, value.as_secs_f64());
    }

    /// The median of the rounds' values (the upper one of an even count).
    pub fn median(&self, key: &str) -> Option<f64> {
        let (_, values) = self.0.iter().find(|(k, _)| *k == key)?;
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    }

    /// How many rounds gave `key`.
    pub fn count(&self, key: &str) -> usize {
        self.0
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, v)| v.len())
    }
}

/// Seconds as "12.3 ms" or "1.23 s".
pub fn secs(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

/// Bytes as MiB.
pub fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

/// "T = Rx" of the median of `key` against the median of `ceiling`, or
/// "n/a (why)" when the figure is missing.
pub fn against(f: &Figures, key: &str, ceiling: &str, missing: &str) -> String {
    match (f.median(key), f.median(ceiling)) {
        (Some(t), Some(c)) if c > 0.0 => format!("{} = {:.2}x", secs(t), t / c),
        (Some(t), _) => format!("{} (no ceiling)", secs(t)),
        (None, _) => format!("n/a ({missing})"),
    }
}
