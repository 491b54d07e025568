//! signalfd: the set of signals it reads, from fdinfo (`sigmask`, hex).
//! The signals pending on the task are the task's (saved with it), not
//! the signalfd's.

use image_format::records::SignalfdRecord;

use super::{fdinfo_value, Refusal};

/// The signalfd behind fd `fd`, from its fdinfo text.
pub fn collect(fd: i32, fdinfo: &str) -> Result<SignalfdRecord, Refusal> {
    let mask = fdinfo_value(fdinfo, "sigmask")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| format!("fd {fd} is a signalfd whose mask fdinfo does not show"))?;
    Ok(SignalfdRecord { mask })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_mask() {
        let r = collect(
            5,
            "pos:\t0\nflags:\t02004002\nmnt_id:\t16\nino:\t1057\nsigmask:\t0000000000000202\n",
        )
        .unwrap();
        // SIGINT (2) and SIGUSR1 (10).
        assert_eq!(r.mask, (1 << 1) | (1 << 9));
    }

    #[test]
    fn no_mask_is_refused() {
        assert!(collect(5, "pos:\t0\n").unwrap_err().contains("fd 5"));
    }
}
