//! Credentials: what the restored task gets, never more than the image
//! file's owner has (the image is untrusted input, like a setuid file),
//! and whether this loader can give it that. The pure rules are in
//! [`crate::creds`]; this step reads this process's side and decides.

use image_format::records::CredsRecord;
use image_format::Image;

use super::os::Os;
use super::CheckError;
use crate::creds::{self, cap};

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
pub fn decide_creds(
    os: &impl Os,
    name: &[u8],
    image: &Image<'static>,
    image_owner: (u32, u32),
    p: &Privilege,
) -> Result<(Option<CredsRecord>, bool), CheckError> {
    let (uids, gids) = (p.uids, p.gids);
    // This process's capabilities and groups: what the task will have,
    // but for what the plan's setgroups/setresuid change.
    let mut status = [0u8; 4096];
    let now_creds = os
        .read_file(b"/proc/self/status", &mut status)
        .ok()
        .and_then(|n| creds::parse_status(&status[..n], os.securebits()));
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
