//! What of the image's credentials the restored task will lack.
//!
//! The plan sets the uid/gid triples and the supplementary groups (with
//! `CAP_SETUID`/`CAP_SETGID`); it cannot give capabilities or securebits
//! back. Stage 1 predicts what the task will have (this process's, after
//! the plan's `setresuid`) and names what differs from the image, in one
//! warning line. Pure, tested on the host.

use image_format::records::CredsRecord;

/// Capability numbers (`linux/capability.h`): the workspace's one copy
/// (`crimg check` and the memory limits use them too).
pub mod cap {
    pub const SETGID: u32 = 6;
    pub const SETUID: u32 = 7;
    pub const IPC_LOCK: u32 = 14;
    pub const SYS_PTRACE: u32 = 19;
    pub const SYS_ADMIN: u32 = 21;
    pub const SYS_RESOURCE: u32 = 24;
    pub const CHECKPOINT_RESTORE: u32 = 40;
}

/// This process's credentials, from `/proc/self/status` (and
/// `PR_GET_SECUREBITS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CurrentCreds {
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub securebits: u32,
    pub groups: [u32; image_format::records::MAX_GROUPS],
    pub ngroups: usize,
    /// More groups than `groups` holds: the comparison is then unsure.
    pub groups_cut: bool,
}

/// `SECBIT_KEEP_CAPS`: permitted capabilities survive a switch away from uid 0.
const SECBIT_KEEP_CAPS: u32 = 1 << 4;
/// `SECBIT_NO_SETUID_FIXUP`: no capability change on uid switches at all.
const SECBIT_NO_SETUID_FIXUP: u32 = 1 << 2;

/// Parse the `Cap*:` (hex) and `Groups:` lines of `/proc/self/status`;
/// `None` when a capability line is missing or malformed.
pub fn parse_status(text: &[u8], securebits: u32) -> Option<CurrentCreds> {
    let mut c = CurrentCreds {
        cap_inheritable: 0,
        cap_permitted: 0,
        cap_effective: 0,
        cap_bounding: 0,
        cap_ambient: 0,
        securebits,
        groups: [0; image_format::records::MAX_GROUPS],
        ngroups: 0,
        groups_cut: false,
    };
    let mut seen = 0u32;
    for line in text.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, value) = (&line[..colon], trim(&line[colon + 1..]));
        let slot = match key {
            b"CapInh" => &mut c.cap_inheritable,
            b"CapPrm" => &mut c.cap_permitted,
            b"CapEff" => &mut c.cap_effective,
            b"CapBnd" => &mut c.cap_bounding,
            b"CapAmb" => &mut c.cap_ambient,
            b"Groups" => {
                for word in value.split(|b| b.is_ascii_whitespace()) {
                    if word.is_empty() {
                        continue;
                    }
                    let g = parse_radix(word, 10)?;
                    match c.groups.get_mut(c.ngroups) {
                        Some(slot) => {
                            *slot = u32::try_from(g).ok()?;
                            c.ngroups += 1;
                        }
                        None => c.groups_cut = true,
                    }
                }
                continue;
            }
            _ => continue,
        };
        *slot = parse_radix(value, 16)?;
        seen += 1;
    }
    (seen == 5).then_some(c)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !first.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !last.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    s
}

fn parse_radix(s: &[u8], radix: u32) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        let d = char::from(b).to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?.checked_add(u64::from(d))
    })
}

/// Which parts of the image's credentials the restored task will not have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CredsGap {
    pub groups: bool,
    pub inheritable: bool,
    pub permitted: bool,
    pub effective: bool,
    pub bounding: bool,
    pub ambient: bool,
    pub securebits: bool,
}

impl CredsGap {
    pub fn is_empty(&self) -> bool {
        *self == CredsGap::default()
    }
    /// The names of what differs, for the warning line.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.groups, "supplementary groups"),
            (self.inheritable, "inheritable capabilities"),
            (self.permitted, "permitted capabilities"),
            (self.effective, "effective capabilities"),
            (self.bounding, "bounding set"),
            (self.ambient, "ambient capabilities"),
            (self.securebits, "securebits"),
        ]
        .into_iter()
        .filter(|(differs, _)| *differs)
        .map(|(_, name)| name)
    }
}

/// The names of what differs, comma-separated.
impl core::fmt::Display for CredsGap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

/// Compare the image's credentials with what the task will have: `now`,
/// changed by the plan's `setgroups`/`setresuid` from `now_uids` (real,
/// effective, saved) when `applied`, with the kernel's uid fix-up
/// (`cap_emulate_setxuid`): leaving uid 0 in all three ids clears
/// permitted (unless `SECBIT_KEEP_CAPS`), effective and ambient; an
/// effective uid leaving 0 clears effective.
pub fn creds_gap(
    image: &CredsRecord,
    now: &CurrentCreds,
    now_uids: [u32; 3],
    applied: bool,
) -> CredsGap {
    let will = after_switch(now, now_uids, image.uid, applied);
    let n = (image.ngroups as usize).min(image.groups.len());
    let image_groups = &image.groups[..n];
    let now_groups = &now.groups[..now.ngroups];
    let same_groups = !now.groups_cut
        && image_groups.iter().all(|g| now_groups.contains(g))
        && now_groups.iter().all(|g| image_groups.contains(g));
    // A record whose sets are all empty, bounding set included, did not
    // record capabilities (no task has an empty bounding set unless it
    // dropped every capability, which the other sets then show too).
    let caps_recorded = image.cap_bounding != 0
        || image.cap_permitted != 0
        || image.cap_effective != 0
        || image.cap_inheritable != 0
        || image.cap_ambient != 0;
    CredsGap {
        groups: !applied && !same_groups,
        inheritable: caps_recorded && image.cap_inheritable != will.cap_inheritable,
        permitted: caps_recorded && image.cap_permitted != will.cap_permitted,
        effective: caps_recorded && image.cap_effective != will.cap_effective,
        bounding: caps_recorded && image.cap_bounding != will.cap_bounding,
        ambient: caps_recorded && image.cap_ambient != will.cap_ambient,
        securebits: image.securebits != will.securebits,
    }
}

/// What this process's credentials `now` (ids `now_uids`) become when the
/// plan's `setresuid` to `uid` runs (`applied`), with the kernel's uid
/// fix-up (`cap_emulate_setxuid`): leaving uid 0 in all three ids clears
/// permitted (unless `SECBIT_KEEP_CAPS`), effective and ambient; an
/// effective uid leaving 0 clears effective; `SECBIT_NO_SETUID_FIXUP`
/// clears nothing.
pub fn after_switch(
    now: &CurrentCreds,
    now_uids: [u32; 3],
    uid: [u32; 4],
    applied: bool,
) -> CurrentCreds {
    let mut will = *now;
    if applied && now.securebits & SECBIT_NO_SETUID_FIXUP == 0 {
        let was_root = now_uids.contains(&0);
        if was_root && uid[..3].iter().all(|&u| u != 0) {
            if now.securebits & SECBIT_KEEP_CAPS == 0 {
                will.cap_permitted = 0;
            }
            will.cap_effective = 0;
            will.cap_ambient = 0;
        }
        if now_uids[1] == 0 && uid[1] != 0 {
            will.cap_effective = 0;
        }
    }
    will
}

/// Why the task would end with more than a non-root image owner has:
/// another uid than the owner's (or uid 0) in some id, or capabilities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Excess {
    /// The task's (real, effective, saved) uids.
    pub uids: [u32; 3],
    /// Its permitted | effective | ambient capabilities.
    pub caps: u64,
}

/// The bound every restore of an image owned by `owner_uid` (not root)
/// must meet, on what the task will end with: its uids `uids` are all the
/// owner's, and it has no permitted, effective or ambient capabilities.
pub fn exceeds_owner(owner_uid: u32, uids: [u32; 3], will: &CurrentCreds) -> Option<Excess> {
    let caps = will.cap_permitted | will.cap_effective | will.cap_ambient;
    let wrong_uid = uids.iter().any(|&u| u != owner_uid || u == 0);
    (owner_uid != 0 && (wrong_uid || caps != 0)).then_some(Excess { uids, caps })
}

/// The complete lines of a colon-separated database (`/etc/passwd`,
/// `/etc/group`) read into a buffer, split into fields; a last line without
/// its newline may be cut by the buffer: left out.
fn db_lines(text: &[u8]) -> impl Iterator<Item = [&[u8]; 4]> + '_ {
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    text[..complete]
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty() && l[0] != b'#')
        .map(|l| {
            let mut f = l.split(|&b| b == b':');
            [(); 4].map(|()| f.next().unwrap_or(&[]))
        })
}

fn parse_id(s: &[u8]) -> Option<u32> {
    parse_radix(s, 10).and_then(|v| u32::try_from(v).ok())
}

/// The name and primary gid of `uid` in `/etc/passwd` text; its first entry.
pub fn passwd_entry(passwd: &[u8], uid: u32) -> Option<(&[u8], u32)> {
    db_lines(passwd).find_map(|[name, _, u, gid]| {
        (parse_id(u) == Some(uid)).then(|| parse_id(gid).map(|g| (name, g)))?
    })
}

/// Whether user `name` is listed as a member of group `gid` in
/// `/etc/group` text.
pub fn group_lists(group: &[u8], gid: u32, name: &[u8]) -> bool {
    db_lines(group).any(|[_, _, g, members]| {
        parse_id(g) == Some(gid) && members.split(|&b| b == b',').any(|m| m == name)
    })
}

/// Whether the supplementary groups differ (then the plan sets them, when it
/// may).
pub fn groups_differ(image: &CredsRecord, now: &CurrentCreds) -> bool {
    let n = (image.ngroups as usize).min(image.groups.len());
    let image_groups = &image.groups[..n];
    let now_groups = &now.groups[..now.ngroups];
    now.groups_cut
        || !image_groups.iter().all(|g| now_groups.contains(g))
        || !now_groups.iter().all(|g| image_groups.contains(g))
}

/// The credentials a restore may give, bounded by the image file's owner
/// the way a setuid file bounds its program: an image owned by root may
/// restore any credentials; one owned by uid `U` (group `G`) restores
/// uid `U` in every id, gids that are `G` (others become `G`), only `G`
/// among the supplementary groups, and no capabilities. An image without
/// a credentials record gets the owner's. `lowered` says whether anything
/// of the image's record (or, without one, of this process's ids `now_ids`)
/// had to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounded {
    pub creds: Option<CredsRecord>,
    pub lowered: bool,
}

/// See [`Bounded`].
pub fn limit_to_owner(
    image: Option<CredsRecord>,
    owner_uid: u32,
    owner_gid: u32,
    now_ids: ([u32; 3], [u32; 3]),
) -> Bounded {
    if owner_uid == 0 {
        return Bounded {
            creds: image,
            lowered: false,
        };
    }
    let Some(mut c) = image else {
        let (uids, gids) = now_ids;
        let mut c = <CredsRecord as zerocopy::FromZeros>::new_zeroed();
        c.uid = [owner_uid; 4];
        c.gid = [owner_gid; 4];
        return Bounded {
            creds: Some(c),
            lowered: uids != [owner_uid; 3] || gids != [owner_gid; 3],
        };
    };
    let before = c;
    c.uid = [owner_uid; 4];
    for g in c.gid.iter_mut() {
        if *g != owner_gid {
            *g = owner_gid;
        }
    }
    let n = (c.ngroups as usize).min(c.groups.len());
    let keep_owner_group = c.groups[..n].contains(&owner_gid);
    c.groups = [0; image_format::records::MAX_GROUPS];
    c.ngroups = 0;
    if keep_owner_group {
        c.groups[0] = owner_gid;
        c.ngroups = 1;
    }
    c.cap_inheritable = 0;
    c.cap_permitted = 0;
    c.cap_effective = 0;
    c.cap_ambient = 0;
    let lowered = c.uid != before.uid
        || c.gid != before.gid
        || groups_of(&c) != groups_of(&before)
        || before.cap_inheritable != 0
        || before.cap_permitted != 0
        || before.cap_effective != 0
        || before.cap_ambient != 0;
    Bounded {
        creds: Some(c),
        lowered,
    }
}

fn groups_of(c: &CredsRecord) -> &[u32] {
    &c.groups[..(c.ngroups as usize).min(c.groups.len())]
}

/// Whether the task would keep capabilities of this process (ids
/// `now_uids`, permitted set `now_permitted`, `securebits`) after the plan
/// switches it to the non-root uids of `c`. The kernel clears them only
/// when the switch leaves uid 0 (`cap_emulate_setxuid`), and not the
/// permitted set under `SECBIT_KEEP_CAPS`, nothing under
/// `SECBIT_NO_SETUID_FIXUP`: a non-root process with capabilities (file or
/// ambient ones) keeps them all.
pub fn switch_keeps_caps(
    c: &CredsRecord,
    now_uids: [u32; 3],
    now_permitted: u64,
    securebits: u32,
) -> bool {
    let cleared = now_uids.contains(&0)
        && c.uid[..3].iter().all(|&u| u != 0)
        && securebits & (SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP) == 0;
    now_permitted != 0 && !cleared
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &[u8] = b"Name:\tcat\nUid:\t0\t0\t0\t0\nGroups:\t0 10 27 \nNoNewPrivs:\t0\n\
CapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000001ffffffffff\n\
CapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n";

    fn image(uid: u32) -> CredsRecord {
        let mut c = CredsRecord {
            uid: [uid; 4],
            gid: [uid; 4],
            ngroups: 3,
            securebits: 0,
            groups: [0; image_format::records::MAX_GROUPS],
            cap_inheritable: 0,
            cap_permitted: 0x1ff_ffff_ffff,
            cap_effective: 0x1ff_ffff_ffff,
            cap_bounding: 0x1ff_ffff_ffff,
            cap_ambient: 0,
            no_new_privs: 0,
            _pad: 0,
        };
        c.groups[..3].copy_from_slice(&[27, 0, 10]);
        c
    }

    #[test]
    fn status_lines_are_parsed() {
        let c = parse_status(STATUS, 0).unwrap();
        assert_eq!(c.cap_permitted, 0x1ff_ffff_ffff);
        assert_eq!(c.cap_inheritable, 0);
        assert_eq!(&c.groups[..c.ngroups], &[0, 10, 27]);
        assert!(parse_status(b"CapInh:\tzz\n", 0).is_none());
        assert!(parse_status(b"Name:\tx\n", 0).is_none());
    }

    #[test]
    fn same_credentials_have_no_gap() {
        let now = parse_status(STATUS, 0).unwrap();
        assert!(creds_gap(&image(0), &now, [0; 3], false).is_empty());
        assert!(!groups_differ(&image(0), &now));
    }

    #[test]
    fn a_root_loader_switching_to_a_user_predicts_the_cleared_sets() {
        let now = parse_status(STATUS, 0).unwrap();
        let mut user = image(1000);
        user.cap_permitted = 0;
        user.cap_effective = 0;
        user.ngroups = 1;
        user.groups[0] = 1000;
        // The plan sets groups and ids; the kernel clears the sets.
        assert!(groups_differ(&user, &now));
        assert!(creds_gap(&user, &now, [0; 3], true).is_empty());
        // Not applied: everything stays as the loader has it.
        let gap = creds_gap(&user, &now, [0; 3], false);
        assert!(gap.groups && gap.permitted && gap.effective);
        assert!(!gap.bounding && !gap.ambient && !gap.securebits);
    }

    #[test]
    fn a_record_without_capabilities_compares_none() {
        let now = parse_status(STATUS, 0).unwrap();
        let mut c = image(0);
        c.cap_permitted = 0;
        c.cap_effective = 0;
        c.cap_bounding = 0;
        assert!(creds_gap(&c, &now, [0; 3], false).is_empty());
    }

    #[test]
    fn capabilities_and_securebits_the_loader_cannot_set_are_named() {
        let now = parse_status(STATUS, 0).unwrap();
        let mut c = image(0);
        c.cap_bounding = 0xff;
        c.cap_ambient = 1;
        c.securebits = SECBIT_KEEP_CAPS;
        let gap = creds_gap(&c, &now, [0; 3], false);
        let names: Vec<_> = gap.names().collect();
        assert_eq!(
            names,
            ["bounding set", "ambient capabilities", "securebits"]
        );
    }

    #[test]
    fn a_root_owned_image_restores_what_it_says() {
        let b = limit_to_owner(Some(image(0)), 0, 0, ([0; 3], [0; 3]));
        assert_eq!(b.creds, Some(image(0)));
        assert!(!b.lowered);
        assert_eq!(
            limit_to_owner(None, 0, 5, ([0; 3], [0; 3])),
            Bounded {
                creds: None,
                lowered: false
            }
        );
    }

    #[test]
    fn a_user_owned_image_never_restores_more_than_its_owner() {
        // A forged record: uid 0, every capability, groups 27, 0, 10.
        let b = limit_to_owner(Some(image(0)), 65534, 65534, ([0; 3], [0; 3]));
        let c = b.creds.unwrap();
        assert!(b.lowered);
        assert_eq!(c.uid, [65534; 4]);
        assert_eq!(c.gid, [65534; 4]);
        assert_eq!(groups_of(&c), &[] as &[u32]);
        assert_eq!(
            (
                c.cap_permitted,
                c.cap_effective,
                c.cap_inheritable,
                c.cap_ambient
            ),
            (0, 0, 0, 0)
        );
        // The file's group is kept where the image has it.
        let mut mine = image(1000);
        mine.cap_permitted = 0;
        mine.cap_effective = 0;
        mine.gid = [100, 1000, 100, 100];
        mine.ngroups = 2;
        mine.groups[..2].copy_from_slice(&[100, 27]);
        let b = limit_to_owner(Some(mine), 1000, 100, ([0; 3], [0; 3]));
        let c = b.creds.unwrap();
        assert!(b.lowered);
        assert_eq!(c.gid, [100; 4]);
        assert_eq!(groups_of(&c), &[100]);
        // Exactly the owner's: nothing lowered.
        let mut own = image(1000);
        own.gid = [100; 4];
        own.ngroups = 1;
        own.groups[0] = 100;
        own.cap_permitted = 0;
        own.cap_effective = 0;
        let b = limit_to_owner(Some(own), 1000, 100, ([1000; 3], [100; 3]));
        assert!(!b.lowered);
        assert_eq!(b.creds.unwrap().uid, [1000; 4]);
    }

    #[test]
    fn an_image_without_credentials_gets_its_owners() {
        let b = limit_to_owner(None, 1000, 100, ([0; 3], [0; 3]));
        assert!(b.lowered);
        let c = b.creds.unwrap();
        assert_eq!((c.uid, c.gid, c.ngroups), ([1000; 4], [100; 4], 0));
        let b = limit_to_owner(None, 1000, 100, ([1000; 3], [100; 3]));
        assert!(!b.lowered);
    }

    #[test]
    fn a_non_root_owner_bounds_every_restore() {
        let now = parse_status(STATUS, 0).unwrap();
        let mut user = image(1000);
        user.cap_permitted = 0;
        user.cap_effective = 0;
        // Root switching to the owner: the kernel clears the sets.
        let will = after_switch(&now, [0; 3], user.uid, true);
        assert_eq!(exceeds_owner(1000, [1000; 3], &will), None);
        // No switch (no CAP_SETUID): uid 0 and every capability stay.
        let will = after_switch(&now, [0; 3], user.uid, false);
        assert!(exceeds_owner(1000, [0; 3], &will).is_some());
        // SECBIT_NO_SETUID_FIXUP: the switch keeps every capability.
        let fixup = parse_status(STATUS, SECBIT_NO_SETUID_FIXUP).unwrap();
        let will = after_switch(&fixup, [0; 3], user.uid, true);
        assert_eq!(
            exceeds_owner(1000, [1000; 3], &will),
            Some(Excess {
                uids: [1000; 3],
                caps: 0x1ff_ffff_ffff
            })
        );
        // SECBIT_KEEP_CAPS: the permitted set stays.
        let keep = parse_status(STATUS, SECBIT_KEEP_CAPS).unwrap();
        let will = after_switch(&keep, [0; 3], user.uid, true);
        assert!(exceeds_owner(1000, [1000; 3], &will).is_some());
        // Another user's uid; a root owner bounds nothing.
        let none = after_switch(&now, [0; 3], user.uid, true);
        assert!(exceeds_owner(1001, [1000; 3], &none).is_some());
        assert_eq!(exceeds_owner(0, [0; 3], &now), None);
    }

    #[test]
    fn the_owners_groups_come_from_the_databases() {
        let passwd = b"root:x:0:0:root:/root:/bin/sh\nann:x:1000:100:Ann:/home/ann:/bin/sh\nbob:x:1001:1001::/:/bin/sh";
        assert_eq!(passwd_entry(passwd, 1000), Some((&b"ann"[..], 100)));
        // Cut by the buffer (no newline): not trusted.
        assert_eq!(passwd_entry(passwd, 1001), None);
        assert_eq!(passwd_entry(passwd, 7), None);
        let group = b"root:x:0:\nwheel:x:10:bob,ann\nusers:x:100:\nannx:x:11:anna\n";
        assert!(group_lists(group, 10, b"ann"));
        assert!(!group_lists(group, 11, b"ann"));
        assert!(!group_lists(group, 0, b"ann"));
    }

    #[test]
    fn securebits_that_keep_capabilities_are_seen() {
        let user = image(1000);
        let all = 0x1ff_ffff_ffff;
        assert!(!switch_keeps_caps(&user, [0; 3], all, 0));
        assert!(switch_keeps_caps(&user, [0; 3], all, SECBIT_KEEP_CAPS));
        assert!(switch_keeps_caps(
            &user,
            [0; 3],
            all,
            SECBIT_NO_SETUID_FIXUP
        ));
        // A non-root process with capabilities keeps them across any switch.
        assert!(switch_keeps_caps(&user, [1000; 3], 1 << 7, 0));
        assert!(!switch_keeps_caps(&user, [1000; 3], 0, SECBIT_KEEP_CAPS));
    }
}
