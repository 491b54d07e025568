//! `/proc/P/limits`: every resource limit, readable without privileges
//! (unlike `prlimit64` on another user's process, which needs
//! CAP_SYS_RESOURCE: withheld on these machines even from root).
//!
//! Parsed by `procfs-core` (by resource name, `unlimited` as its own
//! value); this module puts the limits in `RLIMIT_*` order and guards the
//! one input that crate does not: a line of fewer than three columns,
//! which it would index below zero (a panic, and the dumper aborts).

use procfs_core::process::{Limit, LimitValue, Limits};
use procfs_core::FromRead;

use super::ParseError;

const FILE: &str = "limits";

/// `(cur, max)` for each resource, indexed by `RLIMIT_*`.
pub fn parse(text: &str) -> Result<Vec<(u64, u64)>, ParseError> {
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.split_whitespace().count() < 3 {
            return Err(ParseError::new(FILE, i + 1, "fewer than three columns"));
        }
    }
    let l =
        Limits::from_read(text.as_bytes()).map_err(|e| ParseError::new(FILE, 0, e.to_string()))?;
    let value = |v: LimitValue| match v {
        LimitValue::Unlimited => u64::MAX,
        LimitValue::Value(v) => v,
    };
    let pair = |l: Limit| (value(l.soft_limit), value(l.hard_limit));
    Ok([
        l.max_cpu_time,
        l.max_file_size,
        l.max_data_size,
        l.max_stack_size,
        l.max_core_file_size,
        l.max_resident_set,
        l.max_processes,
        l.max_open_files,
        l.max_locked_memory,
        l.max_address_space,
        l.max_file_locks,
        l.max_pending_signals,
        l.max_msgqueue_size,
        l.max_nice_priority,
        l.max_realtime_priority,
        l.max_realtime_timeout,
    ]
    .into_iter()
    .map(pair)
    .collect())
}

/// `/proc/P/limits` as Linux 6.8 prints it (also the collect tests'
/// fixture).
#[cfg(test)]
pub(crate) const SAMPLE: &str = "\
Limit                     Soft Limit           Hard Limit           Units     
Max cpu time              unlimited            unlimited            seconds   
Max file size             unlimited            unlimited            bytes     
Max data size             unlimited            unlimited            bytes     
Max stack size            8388608              unlimited            bytes     
Max core file size        0                    unlimited            bytes     
Max resident set          unlimited            unlimited            bytes     
Max processes             95751                95751                processes 
Max open files            1024                 524288               files     
Max locked memory         8388608              8388608              bytes     
Max address space         unlimited            unlimited            bytes     
Max file locks            unlimited            unlimited            locks     
Max pending signals       95751                95751                signals   
Max msgqueue size         819200               819200               bytes     
Max nice priority         0                    0                    
Max realtime priority     0                    0                    
Max realtime timeout      unlimited            unlimited            us        
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_resource_in_order() {
        let l = parse(SAMPLE).unwrap();
        assert_eq!(l.len(), 16);
        assert_eq!(l[0], (u64::MAX, u64::MAX));
        assert_eq!(l[3], (8_388_608, u64::MAX)); // RLIMIT_STACK
        assert_eq!(l[7], (1024, 524_288)); // RLIMIT_NOFILE
        assert_eq!(l[13], (0, 0)); // RLIMIT_NICE: no unit column
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("Limit\n").is_err());
        assert!(parse("Limit\nMax cpu time\n").is_err());
        // One resource missing.
        let short: String = SAMPLE.lines().take(16).map(|l| format!("{l}\n")).collect();
        assert!(parse(&short).is_err());
        assert!(
            parse("Limit  x\nMax cpu time              lots                 unlimited\n").is_err()
        );
    }
}
