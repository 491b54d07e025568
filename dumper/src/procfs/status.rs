//! `/proc/P/status`: credentials, capabilities, umask, seccomp mode, and
//! the mm's address-tagging mask.

use super::{fields, parse_dec, parse_hex, parse_oct, ParseError};

const FILE: &str = "status";

/// The fields of `/proc/P/status` the dumper uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub tgid: i32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    pub umask: Option<u32>,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: u32,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
    /// `untag_mask` (x86 LAM): all ones unless the task enabled tagged
    /// addresses; `None` on kernels that do not show it.
    pub untag_mask: Option<u64>,
}

/// Parse `/proc/P/status`.
pub fn parse(text: &str) -> Result<Status, ParseError> {
    let mut s = Status::default();
    for (n, key, value) in fields(text) {
        match key {
            "Tgid" => s.tgid = parse_dec(FILE, n, value)?,
            "Uid" => s.uid = four(n, value)?,
            "Gid" => s.gid = four(n, value)?,
            "Groups" => {
                s.groups = value
                    .split_whitespace()
                    .map(|g| parse_dec(FILE, n, g))
                    .collect::<Result<_, _>>()?
            }
            "Umask" => s.umask = Some(parse_oct(FILE, n, "umask", value)?),
            "CapInh" => s.cap_inheritable = parse_hex(FILE, n, value)?,
            "CapPrm" => s.cap_permitted = parse_hex(FILE, n, value)?,
            "CapEff" => s.cap_effective = parse_hex(FILE, n, value)?,
            "CapBnd" => s.cap_bounding = parse_hex(FILE, n, value)?,
            "CapAmb" => s.cap_ambient = parse_hex(FILE, n, value)?,
            "NoNewPrivs" => s.no_new_privs = parse_dec(FILE, n, value)?,
            "Seccomp" => s.seccomp = parse_dec(FILE, n, value)?,
            "untag_mask" => {
                let hex = value.strip_prefix("0x").unwrap_or(value);
                s.untag_mask = Some(parse_hex(FILE, n, hex)?);
            }
            _ => {}
        }
    }
    Ok(s)
}

fn four(n: usize, value: &str) -> Result<[u32; 4], ParseError> {
    let v: Vec<u32> = value
        .split_whitespace()
        .map(|x| parse_dec(FILE, n, x))
        .collect::<Result<_, _>>()?;
    v.try_into()
        .map_err(|_| ParseError::new(FILE, n, format!("expected 4 ids in {value:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixture() {
        let text = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\nUid:\t1000\t1001\t1002\t1003\n\
                    Gid:\t5\t6\t7\t8\nGroups:\t4 24 27 \nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                    CapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
                    NoNewPrivs:\t1\nSeccomp:\t2\n";
        let s = parse(text).unwrap();
        assert_eq!(s.tgid, 77);
        assert_eq!(s.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(s.gid, [5, 6, 7, 8]);
        assert_eq!(s.groups, vec![4, 24, 27]);
        assert_eq!(s.umask, Some(0o22));
        assert_eq!(s.cap_permitted, 0x1ffffffffff);
        assert_eq!(s.cap_effective, 0x1fffeffffff);
        assert_eq!((s.no_new_privs, s.seccomp), (1, 2));
        assert_eq!(s.untag_mask, None);
        let lam = parse("untag_mask:\t0xffffffffffffffff\n").unwrap();
        assert_eq!(lam.untag_mask, Some(u64::MAX));
        let lam = parse("untag_mask:\t0x807fffffffffffff\n").unwrap();
        assert_eq!(lam.untag_mask, Some(0x807f_ffff_ffff_ffff));
    }

    #[test]
    fn empty_groups_and_bad_uid() {
        assert_eq!(parse("Groups:\t\n").unwrap().groups, Vec::<u32>::new());
        assert!(parse("Uid:\t1 2 3\n").is_err());
    }
}
