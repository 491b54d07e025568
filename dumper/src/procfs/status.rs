//! `/proc/P/status`: credentials, capabilities, umask, seccomp mode, and
//! the mm's address-tagging mask.
//!
//! Parsed by `procfs-core`, except `untag_mask` (x86 LAM, Linux 6.4),
//! which it does not know: that one line is read here. The other threads'
//! files are read only for their seccomp mode, by [`seccomp`], which scans
//! for that one line: the whole parse costs about 25 µs (ten times the
//! scan), once per thread while the task is frozen.

use procfs_core::FromRead;

use super::{fields, parse_dec, parse_hex, ParseError};

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
    /// `SigIgn`, `SigCgt`: the signals whose action is `SIG_IGN`, and
    /// those with a handler (bit `n - 1` for signal `n`).
    pub sig_ign: u64,
    pub sig_cgt: u64,
}

/// Parse `/proc/P/status`.
pub fn parse(text: &str) -> Result<Status, ParseError> {
    let p = procfs_core::process::Status::from_read(text.as_bytes())
        .map_err(|e| ParseError::new(FILE, 0, e.to_string()))?;
    let mut untag_mask = None;
    for (n, key, value) in fields(text) {
        if key == "untag_mask" {
            let hex = value.strip_prefix("0x").unwrap_or(value);
            untag_mask = Some(parse_hex(FILE, n, hex)?);
        }
    }
    Ok(Status {
        tgid: p.tgid,
        uid: [p.ruid, p.euid, p.suid, p.fuid],
        gid: [p.rgid, p.egid, p.sgid, p.fgid],
        groups: p.groups,
        umask: p.umask,
        cap_inheritable: p.capinh,
        cap_permitted: p.capprm,
        cap_effective: p.capeff,
        cap_bounding: p.capbnd.unwrap_or(0),
        cap_ambient: p.capamb.unwrap_or(0),
        // 0 or 1.
        no_new_privs: p.nonewprivs.map_or(0, |v| u32::try_from(v).unwrap_or(1)),
        seccomp: p.seccomp.unwrap_or(0),
        untag_mask,
        sig_ign: p.sigign,
        sig_cgt: p.sigcgt,
    })
}

/// Only the `Seccomp` mode of a status file (0 when the kernel shows
/// none).
pub fn seccomp(text: &str) -> Result<u32, ParseError> {
    match fields(text).find(|(_, key, _)| *key == "Seccomp") {
        Some((n, _, value)) => parse_dec(FILE, n, value),
        None => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A status file as Linux 6.8 prints it, for a process of uid 1000.
    const FIXTURE: &str = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t77\nNgid:\t0\n\
        Pid:\t77\nPPid:\t1\nTracerPid:\t0\nUid:\t1000\t1001\t1002\t1003\nGid:\t5\t6\t7\t8\n\
        FDSize:\t64\nGroups:\t4 24 27 \nNStgid:\t77\nNSpid:\t77\nNSpgid:\t77\nNSsid:\t77\n\
        Kthread:\t0\nVmPeak:\t    8304 kB\nVmSize:\t    8304 kB\nVmLck:\t       0 kB\n\
        Threads:\t1\nSigQ:\t0/63204\nSigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\n\
        SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n\
        CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001fffeffffff\n\
        CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n\
        Seccomp_filters:\t1\nSpeculation_Store_Bypass:\tthread vulnerable\n\
        Cpus_allowed:\t3\nCpus_allowed_list:\t0-1\nMems_allowed:\t00000000,00000001\n\
        Mems_allowed_list:\t0\nvoluntary_ctxt_switches:\t1\nnonvoluntary_ctxt_switches:\t0\n";

    #[test]
    fn parses_fixture() {
        let s = parse(FIXTURE).unwrap();
        assert_eq!(s.tgid, 77);
        assert_eq!(s.uid, [1000, 1001, 1002, 1003]);
        assert_eq!(s.gid, [5, 6, 7, 8]);
        assert_eq!(s.groups, vec![4, 24, 27]);
        assert_eq!(s.umask, Some(0o22));
        assert_eq!(s.cap_permitted, 0x1ffffffffff);
        assert_eq!(s.cap_effective, 0x1fffeffffff);
        assert_eq!(s.cap_bounding, 0x1ffffffffff);
        assert_eq!((s.no_new_privs, s.seccomp), (1, 2));
        assert_eq!(s.untag_mask, None);
        let lam = parse(&format!("{FIXTURE}untag_mask:\t0xffffffffffffffff\n")).unwrap();
        assert_eq!(lam.untag_mask, Some(u64::MAX));
        let lam = parse(&format!("{FIXTURE}untag_mask:\t0x807fffffffffffff\n")).unwrap();
        assert_eq!(lam.untag_mask, Some(0x807f_ffff_ffff_ffff));
    }

    #[test]
    fn seccomp_alone() {
        assert_eq!(seccomp(FIXTURE), Ok(2));
        assert_eq!(
            seccomp(&FIXTURE.replace("Seccomp:\t2", "Seccomp:\t0")),
            Ok(0)
        );
        assert_eq!(seccomp("Name:\tx\n"), Ok(0));
        assert!(seccomp("Seccomp:\tfilter\n").is_err());
    }

    #[test]
    fn empty_groups_and_bad_uid() {
        let no_groups = FIXTURE.replace("Groups:\t4 24 27 \n", "Groups:\t\n");
        assert_eq!(parse(&no_groups).unwrap().groups, Vec::<u32>::new());
        let bad_uid = FIXTURE.replace("1000\t1001\t1002\t1003", "1 2 3");
        assert!(parse(&bad_uid).is_err());
        assert!(
            parse("Uid:\t1 2 3 4\n").is_err(),
            "a status without its fields"
        );
        let bad_lam = format!("{FIXTURE}untag_mask:\t0xzz\n");
        assert!(parse(&bad_lam).is_err());
    }
}
