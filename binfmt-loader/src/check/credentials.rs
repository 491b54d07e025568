//! Credentials: what the restored task gets, never more than the image
//! file's owner has (the image is untrusted input, like a setuid file),
//! and whether this loader can give it that. The pure rules are in
//! [`crate::creds`]; this step reads this process's side and decides.

use image_format::records::CredsRecord;
use image_format::Image;

use super::os::Os;
use super::CheckError;
use crate::creds::{self, cap, CurrentCreds};
use crate::sys::Errno;

/// What this process may do, as the kernel will check it (not euid 0:
/// root in a container may lack these, and would then fail clone3 or
/// PR_SET_MM_MAP after the point of no return).
#[derive(Clone, Copy, Debug)]
pub struct Privilege {
    pub caps: u64,
    pub uids: [u32; 3],
    pub gids: [u32; 3],
    /// `CAP_CHECKPOINT_RESTORE` or `CAP_SYS_ADMIN`: set_tid, the exe link.
    pub privileged: bool,
    /// `CAP_SETUID` and `CAP_SETGID`.
    pub may_set_ids: bool,
}

impl Privilege {
    pub fn of(os: &impl Os) -> Privilege {
        let (uids, gids) = os.ids();
        let caps = os.effective_caps();
        let has = |c: u32| caps & (1 << c) != 0;
        Privilege {
            caps,
            uids,
            gids,
            privileged: has(cap::CHECKPOINT_RESTORE) || has(cap::SYS_ADMIN),
            may_set_ids: has(cap::SETUID) && has(cap::SETGID),
        }
    }
}

/// The task's credentials: `(creds to switch to, no_new_privs)`.
/// `status`: this process's ([`super::status::Status`]).
pub fn decide_creds(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    image_owner: (u32, u32),
    p: &Privilege,
    status: &super::status::Status,
) -> Result<(Option<CredsRecord>, bool), CheckError> {
    let (uids, gids) = (p.uids, p.gids);
    // This process's capabilities and groups: what the task will have,
    // but for what the plan's setgroups/setresuid change.
    let now_creds = status
        .text()
        .and_then(|text| creds::parse_status(text, os.securebits()));
    // Never more than the image file's owner has, as with a setuid file:
    // the image is untrusted input, and its owner wrote (or could write)
    // every byte of it.
    // A loader that cannot set ids leaves the task its caller's own
    // credentials (said below); those it must not hand over when they
    // exceed the owner's (uid 0, capabilities).
    let recorded = image.creds();
    let bounded = creds::limit_to_owner(recorded, image_owner.0, image_owner.1, (uids, gids));
    let image_creds = if bounded.lowered && !p.may_set_ids {
        recorded
    } else {
        bounded.creds
    };
    if let (true, Some(c)) = (bounded.lowered, bounded.creds) {
        // The owner has no capabilities: the task must not keep this
        // process's, nor its uid 0 when the switch is not possible.
        let securebits = os.securebits();
        let permitted = now_creds.map_or(p.caps, |now| now.cap_permitted);
        let stays_root = !p.may_set_ids && uids.contains(&0);
        if stays_root || creds::switch_keeps_caps(&c, uids, permitted, securebits) {
            return Err(CheckError::CapsKept { securebits });
        }
    }
    if bounded.lowered && p.may_set_ids {
        let (owner_uid, owner_gid) = image_owner;
        match recorded {
            Some(r) => os.report(
                name,
                format_args!(
                    "warning: the image file belongs to uid {owner_uid} gid {owner_gid}: credentials lowered to theirs (the image says uid {} gid {}), no capabilities",
                    r.uid[0], r.gid[0]
                ),
            ),
            None => os.report(
                name,
                format_args!(
                    "warning: the image file belongs to uid {owner_uid} gid {owner_gid} and records no credentials: credentials lowered to theirs, no capabilities"
                ),
            ),
        }
    }
    let creds = match image_creds {
        Some(c)
            if c.uid[..3] != uids[..]
                || c.gid[..3] != gids[..]
                || now_creds.is_some_and(|now| creds::groups_differ(&c, &now)) =>
        {
            if p.may_set_ids {
                Some(c)
            } else {
                os.report(
                    name,
                    format_args!(
                        "warning: credentials not changed (that needs CAP_SETUID and CAP_SETGID): running as uid {}, the task had uid {}",
                        uids[0], c.uid[0]
                    ),
                );
                None
            }
        }
        _ => None,
    };
    check_owner_bound(os, image_owner.0, uids, p.caps, now_creds, creds)?;
    if let (Some(c), Some(now)) = (image_creds, now_creds) {
        let gap = creds::creds_gap(&c, &now, uids, creds.is_some());
        if !gap.is_empty() {
            os.report(
                name,
                format_args!(
                    "warning: the task's {gap} differ from what the loader can give it; not restored"
                ),
            );
        }
    }
    // Set last in every thread, after the credentials (it needs no
    // privilege, and would stop nothing the plan does before it).
    let no_new_privs = image_creds.is_some_and(|c| c.no_new_privs != 0);
    // The image does not record whether the task was dumpable; a
    // setresuid that changes the ids resets it to fs.suid_dumpable, and
    // the loader leaves it so.
    Ok((creds, no_new_privs))
}

/// `ST_NOSUID`: the mount ignores set-user-ID and set-group-ID bits.
const ST_NOSUID: u64 = 2;

/// Whom the image counts as owned by, for the bound: its file's owner
/// `(uid, gid)`, but nobody (the kernel's overflow ids) when it lies on a
/// `nosuid` mount, or when that cannot be told: such a mount (a USB stick,
/// a user's FUSE mount) may hold a root-owned file that no one on this
/// machine vouched for, and the kernel would not honour a setuid bit there
/// either.
pub fn image_owner(os: &impl Os, name: &[u8], image_fd: i32, owner: (u32, u32)) -> (u32, u32) {
    let flags = os.mount_flags(image_fd);
    if flags.is_ok_and(|f| f & ST_NOSUID == 0) {
        return owner;
    }
    let overflow = |path: &[u8]| {
        let mut buf = [0u8; 16];
        os.read_file(path, &mut buf)
            .ok()
            .and_then(|n| core::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok())
            .unwrap_or(65534)
    };
    let nobody = (
        overflow(b"/proc/sys/kernel/overflowuid"),
        overflow(b"/proc/sys/kernel/overflowgid"),
    );
    match flags {
        Ok(_) => os.report(
            name,
            format_args!(
                "warning: the image is on a nosuid mount: it counts as owned by uid {} gid {} (nobody), not by its file's owner",
                nobody.0, nobody.1
            ),
        ),
        Err(errno) => os.report(
            name,
            format_args!(
                "warning: the image's mount flags cannot be read ({errno}): it counts as owned by uid {} gid {} (nobody)",
                nobody.0, nobody.1
            ),
        ),
    }
    nobody
}

/// How much of `/etc/passwd` and `/etc/group` is read; an entry past it
/// counts as unknown.
const DB_BYTES: usize = 64 * 1024;

/// The group the bound grants with a non-root `owner` `(uid, file's gid)`:
/// the file's group only when the owner belongs to it — it is the owner's
/// primary group in `/etc/passwd` or `/etc/group` lists the owner in it (a
/// file created in a setgid directory gets that directory's group whether
/// or not its creator is a member; the owner cannot give a file a group it
/// lacks otherwise). Else the owner's primary group, or, when the owner has
/// no entry in `/etc/passwd` (a directory service the loader cannot ask),
/// the kernel's overflow gid (nogroup): never a group the image's record
/// names, which its owner wrote.
pub fn owner_group(os: &impl Os, name: &[u8], owner: (u32, u32)) -> (u32, u32) {
    let (uid, file_gid) = owner;
    if uid == 0 {
        return owner;
    }
    // The databases are read into scratch memory, not the stack: a frame
    // of 2 × 64 KiB is touched page by page by the stack probes (32 page
    // faults on every run), while a fresh mapping faults in only the pages
    // the reads fill. Without the memory, both count as unreadable.
    let db = crate::sys::map_scratch(2 * DB_BYTES).unwrap_or(&mut []);
    let (passwd, group) = db.split_at_mut(db.len() / 2);
    let n = os.read_file(b"/etc/passwd", passwd).unwrap_or(0);
    let entry = creds::passwd_entry(&passwd[..n], uid);
    let member = entry.is_some_and(|(user, primary)| {
        if primary == file_gid {
            return true;
        }
        let n = os.read_file(b"/etc/group", group).unwrap_or(0);
        creds::group_lists(&group[..n], file_gid, user)
    });
    let primary = entry.map(|(_, primary)| primary);
    if !db.is_empty() {
        crate::sys::unmap_window(db);
    }
    if member {
        return owner;
    }
    let gid = match primary {
        Some(primary) => primary,
        None => {
            let mut buf = [0u8; 16];
            os.read_file(b"/proc/sys/kernel/overflowgid", &mut buf)
                .ok()
                .and_then(|n| core::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok())
                .unwrap_or(65534)
        }
    };
    os.report(
        name,
        format_args!(
            "warning: the image file's group {file_gid} is not one of uid {uid}'s groups: it counts as group {gid}"
        ),
    );
    (uid, gid)
}

/// For every image not owned by root, whatever the record said (also one
/// with exactly its owner's ids, which nothing lowered): what the task will
/// end with — this process's ids and capabilities, changed by the plan's
/// `setresuid` to `creds` when it sets them, with the kernel's fix-up —
/// must be the owner's uid in every id and no capabilities. Root without
/// CAP_SETUID would leave the task uid 0; root with
/// `SECBIT_NO_SETUID_FIXUP` would switch but keep every capability.
fn check_owner_bound(
    os: &impl Os,
    owner_uid: u32,
    uids: [u32; 3],
    caps: u64,
    now_creds: Option<CurrentCreds>,
    creds: Option<CredsRecord>,
) -> Result<(), CheckError> {
    if owner_uid == 0 {
        return Ok(());
    }
    let securebits = os.securebits();
    // Unknown sets: the effective one (all capget gives) stands for all.
    let now = now_creds.unwrap_or(CurrentCreds {
        cap_inheritable: 0,
        cap_permitted: caps,
        cap_effective: caps,
        cap_bounding: 0,
        cap_ambient: caps,
        securebits,
        groups: [0; image_format::records::MAX_GROUPS],
        ngroups: 0,
        groups_cut: true,
    });
    let (task_uids, will) = match creds {
        Some(c) => (
            [c.uid[0], c.uid[1], c.uid[2]],
            creds::after_switch(&now, uids, c.uid, true),
        ),
        None => (uids, now),
    };
    match creds::exceeds_owner(owner_uid, task_uids, &will) {
        Some(e) => Err(CheckError::ExceedsOwner {
            owner: owner_uid,
            uids: e.uids,
            caps: e.caps,
            securebits,
        }),
        None => Ok(()),
    }
}

/// How many supplementary groups of this process stage 1 can put back
/// after opening as the task ([`as_task`]); more is refused.
const SAVED_GROUPS: usize = 256;

/// This process's own file-access identity, while stage 1 opens files as
/// the task's ([`as_task`]).
struct SavedIdentity {
    fsuid: u32,
    fsgid: u32,
    groups: [u32; SAVED_GROUPS],
    ngroups: usize,
}

/// Run `open` (stage 1's opens of every path the image names, and its
/// `fchdir` test) with the file-access identity of the task's final
/// credentials `creds` (`None`: the task keeps this process's, nothing
/// changes): its supplementary groups, fsgid and fsuid (the effective
/// ids, which `setresuid` makes the fs ids). A non-zero fsuid drops the
/// file-system capabilities (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, ...)
/// from the effective set, so a root loader opens only what the task
/// itself could open: the fds and mappings it hands over are the task's
/// own. This process's identity comes back after, on success or not.
pub fn as_task<T>(
    os: &impl Os,
    creds: Option<&CredsRecord>,
    open: impl FnOnce() -> Result<T, CheckError>,
) -> Result<T, CheckError> {
    let Some(c) = creds else {
        return open();
    };
    let failed = |errno: Errno| CheckError::Identity { errno };
    let mut saved = SavedIdentity {
        fsuid: 0,
        fsgid: 0,
        groups: [0; SAVED_GROUPS],
        ngroups: 0,
    };
    saved.ngroups = os.groups(&mut saved.groups).map_err(failed)?;
    let n = (c.ngroups as usize).min(c.groups.len());
    os.set_groups(&c.groups[..n]).map_err(failed)?;
    match os.set_fs_ids(c.uid[1], c.gid[1]) {
        Ok((fsuid, fsgid)) => (saved.fsuid, saved.fsgid) = (fsuid, fsgid),
        Err(errno) => {
            let _ = os.set_groups(&saved.groups[..saved.ngroups]);
            return Err(failed(errno));
        }
    }
    let result = open();
    // Back to this process's own, fsuid first (CAP_SETUID is not a
    // file-system capability: a non-zero fsuid kept it).
    let back = os
        .set_fs_ids(saved.fsuid, saved.fsgid)
        .and_then(|_| os.set_groups(&saved.groups[..saved.ngroups]));
    match (result, back) {
        (Ok(v), Ok(())) => Ok(v),
        (Err(e), _) => Err(e),
        (Ok(_), Err(errno)) => Err(failed(errno)),
    }
}
