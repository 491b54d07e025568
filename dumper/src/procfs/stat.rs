//! `/proc/P/stat`: identity, state and the mm fields.
//!
//! Parsed by hand, not with `procfs-core`: the command name is kept byte
//! for byte, which the crate's lossy `String` would not do.

use super::{parse_dec, ParseError};

const FILE: &str = "stat";

/// `PF_KTHREAD` in the `flags` field: a kernel thread.
pub const PF_KTHREAD: u64 = 0x0020_0000;

/// The fields of `/proc/P/stat` the dumper uses (numbered as in `proc(5)`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// (2) without the parentheses.
    pub comm: Vec<u8>,
    /// (3) `R`, `S`, `D`, `T`, `t`, `Z`, …
    pub state: u8,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: u32,
    /// (8) the foreground process group of the controlling terminal (-1:
    /// none).
    pub tpgid: i32,
    /// (9) `PF_*` flags.
    pub flags: u64,
    /// (22) clock ticks after boot.
    pub start_time: u64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    /// (52) the exit status as `waitpid` reports it (a zombie's); 0 on a
    /// kernel that does not show it.
    pub exit_code: i32,
}

/// Parse `/proc/P/stat`. The command name may contain spaces and parentheses,
/// so the fields are split after its **last** `)`.
pub fn parse(text: &str) -> Result<Stat, ParseError> {
    let open = text
        .find('(')
        .ok_or_else(|| ParseError::new(FILE, 1, "no '(' before comm"))?;
    let close = text
        .rfind(')')
        .ok_or_else(|| ParseError::new(FILE, 1, "no ')' after comm"))?;
    if close < open {
        return Err(ParseError::new(FILE, 1, "')' before '('"));
    }
    let pid = parse_dec(FILE, 1, text[..open].trim())?;
    let comm = text.as_bytes()[open + 1..close].to_vec();
    // fields[0] is field 3 (state).
    let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<&str, ParseError> {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| ParseError::new(FILE, 1, format!("field {n} missing")))
    };
    let num = |n: usize| -> Result<u64, ParseError> { parse_dec(FILE, 1, field(n)?) };
    let int = |n: usize| -> Result<i32, ParseError> { parse_dec(FILE, 1, field(n)?) };
    let state = field(3)?
        .bytes()
        .next()
        .ok_or_else(|| ParseError::new(FILE, 1, "empty state"))?;
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: int(4)?,
        pgrp: int(5)?,
        session: int(6)?,
        // tty_nr is printed as a signed int; the device number fits in u32
        // (its bits are kept).
        tty_nr: u32::from_ne_bytes(int(7)?.to_ne_bytes()),
        tpgid: int(8)?,
        flags: num(9)?,
        start_time: num(22)?,
        start_code: num(26)?,
        end_code: num(27)?,
        start_stack: num(28)?,
        start_data: num(45)?,
        end_data: num(46)?,
        start_brk: num(47)?,
        arg_start: num(48)?,
        arg_end: num(49)?,
        env_start: num(50)?,
        env_end: num(51)?,
        exit_code: int(52).unwrap_or(0),
    })
}

#[cfg(test)]
// Fixtures: register bits written as the signed values they hold, and
// small counts, on purpose.
#[allow(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_comm_with_spaces_and_parens() {
        let text = "1234 (a (b) c) S 1 1234 1234 34816 1234 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \
                    5555 8192 100 18446744073709551615 94000 95000 140000 0 0 0 0 0 0 0 0 0 17 1 0 0 \
                    0 0 0 96000 96500 97000 140100 140200 140300 140400 0\n";
        let s = parse(text).unwrap();
        assert_eq!(s.pid, 1234);
        assert_eq!(s.comm, b"a (b) c");
        assert_eq!(s.state, b'S');
        assert_eq!(
            (s.ppid, s.pgrp, s.session, s.tty_nr),
            (1, 1234, 1234, 34816)
        );
        assert_eq!(s.flags, 4194560);
        assert_eq!(s.start_time, 5555);
        assert_eq!(
            (s.start_code, s.end_code, s.start_stack),
            (94000, 95000, 140000)
        );
        assert_eq!(
            (s.start_data, s.end_data, s.start_brk),
            (96000, 96500, 97000)
        );
        assert_eq!(
            (s.arg_start, s.arg_end, s.env_start, s.env_end),
            (140100, 140200, 140300, 140400)
        );
        assert_eq!((s.tpgid, s.exit_code), (1234, 0));
    }

    #[test]
    fn a_zombie_exit_code_is_field_52() {
        let mut fields: Vec<String> = (1..=52).map(|_| "0".to_owned()).collect();
        fields[0] = "7".into();
        fields[1] = "(z)".into();
        fields[2] = "Z".into();
        fields[7] = "-1".into();
        fields[51] = (3 << 8).to_string();
        let s = parse(&fields.join(" ")).unwrap();
        assert_eq!((s.state, s.tpgid, s.exit_code), (b'Z', -1, 3 << 8));
    }

    #[test]
    fn parses_own_stat() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let s = parse(&text).unwrap();
        assert_eq!(s.pid, std::process::id() as i32);
        assert_eq!(s.flags & PF_KTHREAD, 0);
    }

    #[test]
    fn rejects_truncated() {
        assert!(parse("12 (x) S 1 2").is_err());
        assert!(parse("12 x S").is_err());
    }
}
