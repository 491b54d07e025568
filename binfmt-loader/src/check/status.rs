//! This process's `/proc/self/status`, read once by stage 1: the file is
//! formatted by the kernel on every read (tens of microseconds), and
//! several steps need lines of it (credentials, the signal queue, the
//! signals this process ignores or catches).

use super::os::Os;

/// The first 4 KiB of `/proc/self/status`; `None` when it cannot be read.
pub struct Status {
    buf: [u8; 4096],
    len: Option<usize>,
}

impl Status {
    pub fn read(os: &impl Os) -> Status {
        let mut buf = [0u8; 4096];
        let len = os.read_file(b"/proc/self/status", &mut buf).ok();
        Status { buf, len }
    }

    /// The text, `None` when it could not be read.
    pub fn text(&self) -> Option<&[u8]> {
        self.len.map(|n| &self.buf[..n])
    }

    /// The signals whose action is not `SIG_DFL` in this process (`SigIgn`
    /// and `SigCgt`: bit `n - 1` for signal `n`); `None` when unknown.
    pub fn not_default(&self) -> Option<u64> {
        Some(hex_field(self.text()?, b"SigIgn:")? | hex_field(self.text()?, b"SigCgt:")?)
    }
}

/// The hexadecimal value of the line `key\tVALUE` in `text`.
fn hex_field(text: &[u8], key: &[u8]) -> Option<u64> {
    let line = text
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(key))?;
    let digits = line.trim_ascii();
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        let v = char::from(d).to_digit(16)?;
        Some(n << 4 | u64::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_fields_are_read_whole_or_not_at_all() {
        let text = b"Name:\tx\nSigIgn:\t0000000000001000\nSigCgt:\t0000000180000002\n";
        assert_eq!(hex_field(text, b"SigIgn:"), Some(0x1000));
        assert_eq!(hex_field(text, b"SigCgt:"), Some(0x1_8000_0002));
        assert_eq!(hex_field(text, b"SigBlk:"), None);
        assert_eq!(hex_field(b"SigIgn:\t00x0\n", b"SigIgn:"), None);
        assert_eq!(hex_field(b"SigIgn:\t\n", b"SigIgn:"), None);
        assert_eq!(hex_field(b"SigIgn:\t10000000000000000\n", b"SigIgn:"), None);
    }
}
