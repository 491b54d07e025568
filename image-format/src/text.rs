//! Showing bytes that come from an image (paths, `comm`, warnings) to a
//! person. An image is untrusted input: a path or thread name may hold
//! control bytes that would split one error into several lines or move a
//! terminal's cursor. [`Escaped`] prints every byte that is not printable
//! text as an escape, so what is shown is one line and says exactly which
//! bytes were there. The loader and `crimg info` both use it.

use core::fmt::{self, Write};

/// Bytes displayed with printable UTF-8 as is and everything else escaped:
/// `\n`, `\t`, `\r`, `\\`, other C0 and C1 control characters and DEL as
/// `\xNN` (C1 by code point, `\u{NN}`), the Unicode bidirectional controls
/// and line/paragraph separators as `\u{NNNN}`, and bytes that are not
/// valid UTF-8 as `\xNN`.
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
                    // Bidirectional controls reorder what follows them on
                    // screen (a name could show as something else), and the
                    // Unicode line and paragraph separators break lines.
                    c if is_bidi_or_separator(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
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

/// The Unicode bidirectional formatting characters (marks, embeddings,
/// overrides, isolates) and the line and paragraph separators.
fn is_bidi_or_separator(c: char) -> bool {
    matches!(
        c,
        '\u{61c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
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
    fn bidi_controls_and_separators_become_escapes() {
        assert_eq!(esc("a\u{202e}gpj.exe".as_bytes()), "a\\u{202e}gpj.exe");
        assert_eq!(
            esc("x\u{2028}y\u{2029}z".as_bytes()),
            "x\\u{2028}y\\u{2029}z"
        );
        assert_eq!(
            esc("\u{61c}\u{200e}\u{200f}".as_bytes()),
            "\\u{61c}\\u{200e}\\u{200f}"
        );
        for c in (0x202a..=0x202e).chain(0x2066..=0x2069) {
            let c = char::from_u32(c).unwrap();
            let mut buf = [0u8; 4];
            let s = esc(c.encode_utf8(&mut buf).as_bytes());
            assert_eq!(s, format!("\\u{{{:x}}}", u32::from(c)));
        }
        // Neighbours that are ordinary text stay as they are.
        assert_eq!(
            esc("\u{2010}\u{2030}\u{61b}".as_bytes()),
            "\u{2010}\u{2030}\u{61b}"
        );
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
