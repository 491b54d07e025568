//! The process as a whole: identity (ids, executable, working directory,
//! personality, umask, flags), the mm's layout, the auxiliary vector, the
//! credentials and the resource limits.

use std::path::Path;

use image_format::records::{
    CredsRecord, FileId, MmRecord, ProcessRecord, RlimitRecord, MAX_GROUPS, PROCESS_DUMPED_AS_ROOT,
};
use image_format::text::Escaped;
use image_format::PAGE_SIZE;

use super::task::{ProcessWide, Task};
use super::{CollectError, Collector};
use crate::procfs::{self, stat::Stat, status::Status, ParseError};
use crate::vmas;

/// `RLIM_NLIMITS`.
const RLIMIT_COUNT: usize = 16;

/// A task name as the image keeps it: at most 15 bytes and a NUL, without
/// the newline `/proc/P/task/T/comm` ends in.
pub(super) fn comm16(bytes: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let n = bytes.len().min(15);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

fn dump_time_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What [`process_and_mm`] gathers.
pub(super) struct Identity {
    /// The executable's path.
    pub exe: String,
    pub process: ProcessRecord,
    pub mm: MmRecord,
    /// The auxiliary vector up to and including `AT_NULL`.
    pub auxv: Vec<u64>,
}

/// Process identity and mm. A file that cannot be stat'ed makes its
/// identity unknown (all zero), with a warning: the restore then cannot
/// check it.
pub(super) fn process_and_mm<T: Task>(
    c: &mut Collector<'_, T>,
    stat: &Stat,
    status: &Status,
    nthreads: usize,
    process_wide: &ProcessWide,
) -> Result<Identity, CollectError> {
    let pid = c.pid;
    let exe = c.read_link("exe")?;
    let exe_id = match c.task.metadata(Path::new(&c.proc_path("exe"))) {
        Ok(m) => m.id,
        Err(e) => {
            c.warnings.push(format!(
                "cannot stat the executable {} ({e}): the restore cannot check that it is unchanged",
                Escaped(exe.as_bytes())
            ));
            FileId::default()
        }
    };
    let cwd_id = match c.task.metadata(Path::new(&c.proc_path("cwd"))) {
        Ok(m) => m.id,
        Err(e) => {
            c.warnings.push(format!(
                "cannot stat the working directory ({e}): the restore cannot check that it is the same"
            ));
            FileId::default()
        }
    };
    let personality_text = c.read_text("personality")?;
    let personality =
        u32::from_str_radix(personality_text.trim(), 16).map_err(|_| CollectError::Parse {
            pid,
            source: ParseError {
                file: "personality",
                line: 1,
                what: format!("bad value {personality_text:?}"),
            },
        })?;
    let umask = status.umask.unwrap_or_else(|| {
        c.warnings
            .push("the kernel shows no umask in /proc/P/status: 022 is assumed".into());
        0o022
    });
    let dumped_as_root = if c.task.effective_uid() == 0 {
        PROCESS_DUMPED_AS_ROOT
    } else {
        0
    };
    let coredump_filter = c
        .read_text("coredump_filter")
        .map_or(0, |t| vmas::coredump_filter_flags(&t));
    let process = ProcessRecord {
        pid,
        ppid: stat.ppid,
        pgid: stat.pgrp,
        sid: stat.session,
        // The kernel's thread limit is far below u32::MAX.
        nthreads: u32::try_from(nthreads).unwrap_or(u32::MAX),
        umask,
        personality,
        flags: dumped_as_root | process_wide.mm_flags | coredump_filter,
        tty_nr: stat.tty_nr,
        page_size: u32::try_from(PAGE_SIZE).unwrap_or(u32::MAX),
        start_time: stat.start_time,
        dump_time_ns: dump_time_ns(),
        exe: Default::default(),
        exe_id,
        cwd: Default::default(),
        root: Default::default(),
        cmdline: Default::default(),
        comm: comm16(&stat.comm),
        cwd_id,
    };
    let mm = MmRecord {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk: process_wide.brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
    };
    let auxv_bytes = c.read_bytes("auxv")?;
    let mut auxv: Vec<u64> = auxv_bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
        .collect();
    if let Some(end) = auxv.chunks_exact(2).position(|p| p[0] == 0) {
        auxv.truncate(end * 2 + 2);
    }
    Ok(Identity {
        exe,
        process,
        mm,
        auxv,
    })
}

/// Credentials from `/proc/P/status`, and the securebits the task
/// answered. Groups past [`MAX_GROUPS`] are dropped (refused unless forced,
/// see `refusals::too_many_groups`).
pub(super) fn credentials(status: &Status, securebits: u32) -> CredsRecord {
    let mut groups = [0u32; MAX_GROUPS];
    for (slot, g) in groups.iter_mut().zip(&status.groups) {
        *slot = *g;
    }
    CredsRecord {
        uid: status.uid,
        gid: status.gid,
        // At most MAX_GROUPS (a small constant).
        ngroups: u32::try_from(status.groups.len().min(MAX_GROUPS)).unwrap_or(0),
        securebits,
        groups,
        cap_inheritable: status.cap_inheritable,
        cap_permitted: status.cap_permitted,
        cap_effective: status.cap_effective,
        cap_bounding: status.cap_bounding,
        cap_ambient: status.cap_ambient,
        no_new_privs: status.no_new_privs,
        _pad: 0,
    }
}

/// Resource limits, from /proc: prlimit64 on another user's process
/// needs CAP_SYS_RESOURCE.
pub(super) fn limits<T: Task>(c: &Collector<'_, T>) -> Result<Vec<RlimitRecord>, CollectError> {
    let limits = c.parse(procfs::limits::parse(&c.read_text("limits")?))?;
    Ok(limits
        .iter()
        .take(RLIMIT_COUNT)
        .zip(0..)
        .map(|(&(cur, max), resource)| RlimitRecord {
            resource,
            _pad: 0,
            cur,
            max,
        })
        .collect())
}
