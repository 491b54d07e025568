//! Process-wide records the plan sets back (signal handlers, resource
//! limits, timers, pending signals), copied out of the image, and the
//! limits of this process they must fit.

use image_format::records::{
    ItimerRecord, PendingSignalRecord, Record, RlimitRecord, SigactionRecord,
};
use image_format::{read::Records, Image};

use super::os::Os;
use super::scratch::{Scratch, MAX_ITIMERS, MAX_RLIMITS, MAX_SIGACTIONS};
use super::status::Status;
use super::CheckError;
use crate::validate;

/// `RLIMIT_DATA`.
const RLIMIT_DATA: u32 = 2;

/// The records, each table cut at its limit (the rules refuse more).
pub struct ProcessRecords {
    pub sigactions: &'static [SigactionRecord],
    /// Hard limits lowered to what this process may set.
    pub rlimits: &'static mut [RlimitRecord],
    pub itimers: &'static [ItimerRecord],
    pub pending: &'static [PendingSignalRecord],
}

/// The process-wide record notes, each found once.
pub struct RecordNotes {
    pub sigactions: Records<'static, SigactionRecord>,
    pub rlimits: Records<'static, RlimitRecord>,
    pub itimers: Records<'static, ItimerRecord>,
    pub pending: Records<'static, PendingSignalRecord>,
}

impl RecordNotes {
    pub fn find(image: &Image<'static>) -> Result<RecordNotes, CheckError> {
        let corrupt = |error| CheckError::Corrupt { error };
        Ok(RecordNotes {
            sigactions: image.records().map_err(corrupt)?,
            rlimits: image.records().map_err(corrupt)?,
            itimers: image.records().map_err(corrupt)?,
            pending: image.records().map_err(corrupt)?,
        })
    }
}

/// How many of `records` stage 1 keeps (at most `max`).
pub fn count<T: Record>(records: &Records<'static, T>, max: usize) -> usize {
    usize::try_from(records.len())
        .unwrap_or(usize::MAX)
        .min(max)
}

fn copy_records<T: Record>(
    records: &Records<'static, T>,
    scratch: &mut Scratch,
    table: &'static str,
    max: usize,
) -> Result<&'static mut [T], CheckError> {
    let out = scratch.take::<T>(table, count(records, max))?;
    for (slot, r) in out.iter_mut().zip(records.clone()) {
        *slot = r;
    }
    Ok(out)
}

/// Copy the records and check them against this process's limits.
/// `status`: this process's, to leave out the signal actions it already
/// has ([`actions_to_set`]).
pub fn process_records(
    os: &impl Os,
    image: &Image<'static>,
    notes: &RecordNotes,
    status: &Status,
    scratch: &mut Scratch,
) -> Result<ProcessRecords, CheckError> {
    let sigactions = copy_records(&notes.sigactions, scratch, "sigactions", MAX_SIGACTIONS)?;
    let sigactions = actions_to_set(sigactions, status.not_default());
    let rlimits = copy_records(&notes.rlimits, scratch, "rlimits", MAX_RLIMITS)?;
    let itimers = copy_records(&notes.itimers, scratch, "itimers", MAX_ITIMERS)?;
    let pending = copy_records(&notes.pending, scratch, "pending signals", usize::MAX)?;
    // PR_SET_MM_MAP checks the brk and data sizes against RLIMIT_DATA
    // before the plan sets the image's own limits: this process's.
    let (data_limit, _) = os.get_rlimit(RLIMIT_DATA).unwrap_or((u64::MAX, u64::MAX));
    validate::check_mm_data_limit(&image.mm(), data_limit)
        .map_err(|error| CheckError::DataLimit { error })?;
    Ok(ProcessRecords {
        sigactions,
        rlimits,
        itimers,
        pending,
    })
}

/// The signal actions the plan must set, moved to the front of `all`:
/// those that differ from what this process has. An `execve` left every
/// action `SIG_DFL` with no flags, mask or restorer, but those ignored
/// (`SIG_IGN`, flags and mask cleared too), and the loader sets none of
/// its own; so a record of exactly that default, for a signal this process
/// neither ignores nor catches (`not_default`, from its status), would
/// change nothing: most of a task's 64 are such, each an `rt_sigaction` of
/// the switch. Unknown (`None`): all are set.
pub fn actions_to_set(
    all: &'static mut [SigactionRecord],
    not_default: Option<u64>,
) -> &'static [SigactionRecord] {
    let Some(not_default) = not_default else {
        return all;
    };
    let unchanged = |s: &SigactionRecord| {
        let bit = s.signo.checked_sub(1).filter(|&b| b < 64);
        bit.is_some_and(|b| not_default & (1 << b) == 0)
            && (s.handler, s.flags, s.restorer, s.mask) == (0, 0, 0, 0)
    };
    let mut kept = 0;
    for i in 0..all.len() {
        if !unchanged(&all[i]) {
            all.swap(kept, i);
            kept += 1;
        }
    }
    &all[..kept]
}

/// Lower the hard limits this process may not raise (that needs
/// `CAP_SYS_RESOURCE`), said once.
pub fn lower_rlimits(os: &impl Os, name: &[u8], rlimits: &mut [RlimitRecord]) {
    let mut lowered = 0;
    for r in rlimits.iter_mut() {
        if let Ok((_, max_now)) = os.get_rlimit(r.resource) {
            if r.max > max_now {
                r.max = max_now;
                lowered += 1;
            }
            r.cur = r.cur.min(r.max);
        }
    }
    if lowered > 0 {
        os.report(
            name,
            format_args!(
                "warning: {lowered} hard resource limit(s) are higher than this process may set; lowered"
            ),
        );
    }
}

/// `vm.mmap_min_addr`: the lowest address `mmap` and `PR_SET_MM_MAP`
/// accept (65536 when unreadable, the usual value).
pub fn read_mmap_min_addr(os: &impl Os) -> u64 {
    let mut buf = [0u8; 32];
    if let Ok(n) = os.read_file(b"/proc/sys/vm/mmap_min_addr", &mut buf) {
        let v = buf[..n]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .fold(0u64, |a, c| {
                a.saturating_mul(10).saturating_add(u64::from(c - b'0'))
            });
        if v > 0 {
            return v;
        }
    }
    65536
}
