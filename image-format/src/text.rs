//! Showing bytes that come from an image (paths, `comm`, warnings) to a
//! person. An image is untrusted input: a path or thread name may hold
//! control bytes that would split one error into several lines or move a
//! terminal's cursor. [`Escaped`] prints every byte that is not printable
//! text as an escape, so what is shown is one line and says exactly which
//! bytes were there. The loader and `crimg info` both use it.

use core::fmt::{self, Write};

/// Bytes displayed with printable UTF-8 as is and everything else escaped:
/// `\n`, `\t`, `\r`, `\\`, other C0 and C1 control characters and DEL as
/// `\xNN` (C1 by code point, `\u{NN}`), and bytes that are not valid UTF-8
/// as `\xNN`.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\t' => f.write_str("\\t")?,
                    '\r' => f.write_str("\\r")?,
                    '\0'..='\x1f' | '\x7f' => write!(f, "\\x{:02x}", u32::from(c))?,
                    // C1 controls (CSI among them) move cursors too.
                    '\u{80}'..='\u{9f}' => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                    c => f.write_char(c)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::Escaped;
    use std::format;

    fn esc(b: &[u8]) -> std::string::String {
        format!("{}", Escaped(b))
    }

    #[test]
    fn printable_text_is_unchanged() {
        assert_eq!(esc(b"/tmp/data file.txt"), "/tmp/data file.txt");
        assert_eq!(esc("caf\u{e9} \u{1f600}".as_bytes()), "caf\u{e9} \u{1f600}");
    }

    #[test]
    fn control_bytes_become_escapes() {
        assert_eq!(esc(b"a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(esc(b"\x1b[2J\x07\x7f\0"), "\\x1b[2J\\x07\\x7f\\x00");
        assert_eq!(esc("x\u{9b}2J".as_bytes()), "x\\u{9b}2J");
        assert_eq!(esc(b"back\\slash"), "back\\\\slash");
    }

    #[test]
    fn invalid_utf8_is_shown_byte_by_byte() {
        assert_eq!(esc(b"a\xff\xfeb"), "a\\xff\\xfeb");
        assert_eq!(esc(b"\xe2\x82"), "\\xe2\\x82");
    }

    #[test]
    fn nothing_escaped_contains_a_line_break_or_escape_byte() {
        for b in 0..=255u8 {
            let s = esc(&[b, b'\n', 0x9b]);
            assert!(!s.bytes().any(|c| c < 0x20 || c == 0x7f), "{b:#x}: {s:?}");
            assert!(!s.contains('\u{9b}'));
        }
    }
}
