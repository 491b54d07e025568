//! `/proc/P/limits`: every resource limit, readable without privileges
//! (unlike `prlimit64` on another user's process, which needs
//! CAP_SYS_RESOURCE: withheld on these machines even from root).
//!
//! The kernel prints one line per resource in `RLIMIT_*` order, the name
//! padded to 26 columns, then the soft and hard limits (`unlimited` is
//! `RLIM_INFINITY`) and a unit.

use super::{parse_dec, ParseError};

const FILE: &str = "limits";
/// Width of the name column (`"%-25s "` in `fs/proc/base.c`).
const NAME_WIDTH: usize = 26;

/// `(cur, max)` for each resource, indexed by `RLIMIT_*`.
pub fn parse(text: &str) -> Result<Vec<(u64, u64)>, ParseError> {
    let mut limits = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let lineno = i + 1;
        let values = line
            .get(NAME_WIDTH..)
            .ok_or_else(|| ParseError::new(FILE, lineno, "line shorter than the name column"))?;
        let mut fields = values.split_whitespace();
        let mut next = |what: &str| -> Result<u64, ParseError> {
            match fields.next() {
                Some("unlimited") => Ok(u64::MAX),
                Some(v) => parse_dec(FILE, lineno, v),
                None => Err(ParseError::new(FILE, lineno, format!("no {what} limit"))),
            }
        };
        let soft = next("soft")?;
        let hard = next("hard")?;
        limits.push((soft, hard));
    }
    if limits.is_empty() {
        return Err(ParseError::new(FILE, 0, "no limits listed"));
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
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
        assert!(
            parse("Limit  x\nMax cpu time              lots                 unlimited\n").is_err()
        );
    }
}
