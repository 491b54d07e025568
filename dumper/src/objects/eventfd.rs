//! eventfd: its counter and semaphore mode, from fdinfo
//! (`eventfd-count` in hex, `eventfd-semaphore`).

use image_format::records::{eventfd_flags, EventfdRecord};

use super::{fdinfo_value, Refusal};

/// The eventfd behind fd `fd`, from its fdinfo text.
pub fn collect(fd: i32, fdinfo: &str) -> Result<EventfdRecord, Refusal> {
    let count = fdinfo_value(fdinfo, "eventfd-count")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| format!("fd {fd} is an eventfd whose count fdinfo does not show"))?;
    // Kernels before 6.6 do not print the mode; a semaphore eventfd there
    // would come back as a counter, so it is refused rather than guessed.
    let semaphore = match fdinfo_value(fdinfo, "eventfd-semaphore") {
        Some("1") => true,
        Some("0") => false,
        _ => {
            return Err(format!(
                "fd {fd} is an eventfd whose semaphore mode this kernel's fdinfo does not show"
            ))
        }
    };
    Ok(EventfdRecord {
        count,
        flags: if semaphore {
            eventfd_flags::SEMAPHORE
        } else {
            0
        },
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_count_and_mode() {
        let r = collect(
            4,
            "pos:\t0\nflags:\t04002\neventfd-count:               1f\neventfd-id: 4\neventfd-semaphore: 1\n",
        )
        .unwrap();
        assert_eq!(r.count, 0x1f);
        assert_eq!(r.flags, eventfd_flags::SEMAPHORE);
    }

    #[test]
    fn an_unknown_mode_is_refused() {
        let e = collect(4, "eventfd-count: 0\n").unwrap_err();
        assert!(e.contains("fd 4"), "{e}");
    }
}
