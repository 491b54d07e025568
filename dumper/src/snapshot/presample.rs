//! The area list of a snapshot dump without reading `/proc/P/smaps` and
//! `/proc/P/numa_maps` while the tree is frozen: both walk every page
//! table entry of the process (about 15 ms per GiB each here), which made
//! most of the frozen time of a snapshot dump.
//!
//! ```text
//! running:  smaps of every process of the tree            (the presample)
//! frozen:   /proc/P/maps (no page walk) and status
//!           same layout, nothing locked → the presample's entries
//!           else                        → smaps read as before
//!           numa_maps only when an area is MADV_DONTFORK (the child
//!           has no copy of it to ask later)
//! resumed:  the snapshot child's smaps and numa_maps, which a fork made
//!           at the freeze: every area the image records must be there
//!           as recorded (DONTFORK ones absent), and no memory policy
//! ```
//!
//! The layout check catches every map, unmap, mprotect, mremap or split
//! between the presample and the freeze; what it cannot see (a madvise or
//! mbind on a whole area, which changes no line of `maps`) the child
//! shows: it carries every area's flags and policy as they were at the
//! freeze. A mismatch refuses the dump (the tree runs on as before), never
//! writes an image of flags the process did not have. Locked memory is
//! not inherited by a fork, so a process with any (`VmLck`) is read the
//! old way. Nor is a userfaultfd registration: one made on a whole area in
//! that window is not seen (a task holding a userfaultfd is refused by its
//! fd; only a registration through a userfaultfd another process holds
//! escapes). The presample's page counts (`Rss`, `Swap`) are of the running
//! process, not of the freeze: they are not used (each area counts as
//! possibly populated, and pagemap decides which pages are stored).

use std::io;
use std::sync::Arc;

use image_format::records::{prot, vma_flags};
use image_writer::model::{TaskState, VmaState};

use crate::procfs::smaps::{self, SmapsEntry};
use crate::vmas;

/// The smaps of the processes of a tree, read while they ran.
#[derive(Debug, Default)]
pub struct Presample {
    taken: Vec<(i32, Vec<SmapsEntry>)>,
}

/// `Rss` of a presampled entry: not known, counted as possibly populated
/// (one page), so that pagemap is read for the area.
const RSS_UNKNOWN_KB: u64 = 4;

impl Presample {
    /// The smaps of `root` and of every descendant it has now (a process
    /// that cannot be read, or that appears later, is read while frozen).
    pub fn take(root: i32) -> Arc<Presample> {
        let mut taken = Vec::new();
        let mut todo = vec![root];
        while let Some(pid) = todo.pop() {
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) {
                if let Ok(entries) = smaps::parse(&text) {
                    taken.push((pid, entries));
                }
            }
            todo.extend(children(pid));
        }
        Arc::new(Presample { taken })
    }

    /// The entries of process `pid` at the freeze, from the presample, if
    /// `maps` (its `/proc/P/maps`, read frozen) shows the same layout and
    /// `status` (its `/proc/P/status`, frozen) no locked memory; else
    /// `None` (smaps must be read now).
    pub fn at_freeze(&self, pid: i32, maps: &str, status: &str) -> Option<Vec<SmapsEntry>> {
        let (_, before) = self.taken.iter().find(|(p, _)| *p == pid)?;
        let now = smaps::parse(maps).ok()?;
        let locked = before.iter().any(|e| e.has_flag("lo") || e.has_flag("lf"));
        if locked || locked_kb(status) != Some(0) || !same_layout(before, &now) {
            return None;
        }
        Some(
            before
                .iter()
                .map(|e| SmapsEntry {
                    rss_kb: RSS_UNKNOWN_KB,
                    swap_kb: 0,
                    ..e.clone()
                })
                .collect(),
        )
    }
}

/// Whether `numa_maps` must be read while frozen for `entries`: a
/// `MADV_DONTFORK` area has no copy in the child to be asked later.
pub fn numa_needed_frozen(entries: &[SmapsEntry]) -> bool {
    entries.iter().any(|e| e.has_flag("dc"))
}

pub(super) fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().into_string().ok())
        .filter_map(|tid| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// `VmLck` of a `/proc/P/status` text, in kB.
fn locked_kb(status: &str) -> Option<u64> {
    let v = status.lines().find_map(|l| l.strip_prefix("VmLck:"))?;
    v.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// The same areas at the same places, mapped the same way.
fn same_layout(a: &[SmapsEntry], b: &[SmapsEntry]) -> bool {
    let key = |e: &SmapsEntry| {
        (
            e.start,
            e.end,
            (e.read, e.write, e.exec, e.shared),
            e.offset,
            (e.dev_major, e.dev_minor, e.inode),
            e.path.clone(),
            e.deleted,
        )
    };
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| key(x) == key(y))
}

/// How the snapshot child disagrees with the image, or the memory
/// policies it shows.
#[derive(Debug, thiserror::Error)]
pub enum ChildCheckError {
    #[error("pid {pid}: reading {path}: {source}")]
    Read {
        pid: i32,
        path: String,
        #[source]
        source: io::Error,
    },
    /// Said after the pid (`DumpError::Refused`).
    #[error(
        "its memory areas changed as the dump began ({what}); nothing was written and the process \
         runs on: dump it again"
    )]
    Changed { pid: i32, what: String },
}

/// Flags a fork does not hand down (mlock state: the child's areas are
/// never locked).
const NOT_INHERITED: u32 = vma_flags::LOCKED | vma_flags::LOCKONFAULT;

/// Check the areas of `state` (process `pid`, as recorded at the freeze)
/// against `child_smaps` (the text of its snapshot child's smaps): every
/// area the child carries is there with the recorded bounds, protections
/// and flags; every `MADV_DONTFORK` one is absent.
pub fn check_areas(pid: i32, vmas: &[VmaState], child_smaps: &str) -> Result<(), ChildCheckError> {
    let changed = |what: String| ChildCheckError::Changed { pid, what };
    let child = smaps::parse(child_smaps).map_err(|e| changed(e.to_string()))?;
    let mut carried = vmas
        .iter()
        .filter(|v| v.record.flags & vma_flags::DONTFORK == 0);
    for e in &child {
        let Some(v) = carried.next() else {
            return Err(changed(format!(
                "the snapshot has an area at {:#x} the image does not record",
                e.start
            )));
        };
        let r = &v.record;
        let rw = prot::READ | prot::WRITE | prot::EXEC;
        if (e.start, e.end) != (r.start, r.end) {
            return Err(changed(format!(
                "the area at {:#x}-{:#x} was at {:#x}-{:#x} at the freeze",
                r.start, r.end, e.start, e.end
            )));
        }
        let (want, got) = (r.flags & !NOT_INHERITED, vmas::flags_of(e) & !NOT_INHERITED);
        if vmas::prot_of(e) != r.prot & rw || want != got {
            return Err(changed(format!(
                "the area at {:#x}-{:#x} had flags {got:#x} (protections {:#x}) at the freeze, not \
                 {want:#x} ({:#x})",
                r.start,
                r.end,
                vmas::prot_of(e),
                r.prot
            )));
        }
    }
    if let Some(v) = carried.next() {
        return Err(changed(format!(
            "the area at {:#x}-{:#x} is not in the snapshot (MADV_DONTFORK at the freeze?)",
            v.record.start, v.record.end
        )));
    }
    Ok(())
}

/// The memory policies (`mbind`) the snapshot child's `numa_maps` shows,
/// as the refusal lines of the frozen dump's check
/// (`collect::refusals::numa_policies`).
pub fn numa_refusals(numa_maps: &str) -> Vec<String> {
    vmas::numa_policies(numa_maps)
        .into_iter()
        .map(|(start, policy)| {
            format!("the NUMA memory policy `{policy}` (mbind) of the area at {start:#x} is not restored")
        })
        .collect()
}

/// After the resume, the snapshot child `child` of process `pid` checked
/// (areas, [`check_areas`]; memory policies, returned as refusal lines).
pub fn check_child(
    pid: i32,
    child: i32,
    state: &TaskState,
) -> Result<Vec<String>, ChildCheckError> {
    let read = |what: &str| {
        let path = format!("/proc/{child}/{what}");
        std::fs::read_to_string(&path).map_err(|source| ChildCheckError::Read { pid, path, source })
    };
    check_areas(pid, &state.vmas, &read("smaps")?)?;
    // Without NUMA support there is no numa_maps and no policy.
    Ok(read("numa_maps")
        .map(|t| numa_refusals(&t))
        .unwrap_or_default())
}

/// After the resume of a write-protected snapshot (no child to ask): the
/// original's own areas that are still where the image records them have
/// the recorded protections and flags (a madvise between the presample
/// and the freeze is seen unless undone since), and its memory policies
/// as refusal lines. An area gone or moved since is not checked: the
/// layout at the freeze was checked against the presample.
pub fn check_original(pid: i32, state: &TaskState) -> Result<Vec<String>, ChildCheckError> {
    let read = |what: &str| {
        let path = format!("/proc/{pid}/{what}");
        std::fs::read_to_string(&path).map_err(|source| ChildCheckError::Read { pid, path, source })
    };
    let changed = |what: String| ChildCheckError::Changed { pid, what };
    let now = smaps::parse(&read("smaps")?).map_err(|e| changed(e.to_string()))?;
    for v in &state.vmas {
        let r = &v.record;
        let Some(e) = now.iter().find(|e| (e.start, e.end) == (r.start, r.end)) else {
            continue;
        };
        let rw = prot::READ | prot::WRITE | prot::EXEC;
        let (want, got) = (r.flags & !NOT_INHERITED, vmas::flags_of(e) & !NOT_INHERITED);
        if vmas::prot_of(e) != r.prot & rw || want != got {
            return Err(changed(format!(
                "the area at {:#x}-{:#x} has flags {got:#x} (protections {:#x}), not {want:#x} \
                 ({:#x}) as at the freeze",
                r.start,
                r.end,
                vmas::prot_of(e),
                r.prot
            )));
        }
    }
    Ok(read("numa_maps")
        .map(|t| numa_refusals(&t))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image_format::records::VmaRecord;

    const SMAPS: &str = "\
00400000-00401000 r-xp 00000000 fe:00 12 /bin/x
Rss:                   4 kB
Swap:                  0 kB
VmFlags: rd ex mr mw me
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
Rss:                1024 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me ac
7f0000200000-7f0000201000 rw-p 00000000 00:00 0
Rss:                   4 kB
Swap:                  0 kB
VmFlags: rd wr mr mw me ac dc
";
    const MAPS: &str = "\
00400000-00401000 r-xp 00000000 fe:00 12 /bin/x
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000200000-7f0000201000 rw-p 00000000 00:00 0
";

    fn presample() -> Presample {
        Presample {
            taken: vec![(7, smaps::parse(SMAPS).unwrap())],
        }
    }

    #[test]
    fn the_presample_serves_only_an_unchanged_unlocked_layout() {
        let p = presample();
        let status = "Name:\tx\nVmLck:\t       0 kB\n";
        let got = p.at_freeze(7, MAPS, status).unwrap();
        assert_eq!(got.len(), 3);
        assert!(
            got.iter().all(|e| e.rss_kb > 0),
            "page counts are not known"
        );
        assert!(got[2].has_flag("dc"));
        assert!(numa_needed_frozen(&got));
        // Another pid, a changed layout, locked memory: read smaps.
        assert!(p.at_freeze(8, MAPS, status).is_none());
        let grown = MAPS.replace("7f0000100000", "7f0000101000");
        assert!(p.at_freeze(7, &grown, status).is_none());
        let moved = MAPS.replace(
            "rw-p 00000000 00:00 0\n7f00002",
            "r--p 00000000 00:00 0\n7f00002",
        );
        assert!(p.at_freeze(7, &moved, status).is_none());
        assert!(p.at_freeze(7, MAPS, "VmLck:\t 8 kB\n").is_none());
        assert!(p.at_freeze(7, MAPS, "Name:\tx\n").is_none());
    }

    fn records(text: &str) -> Vec<VmaState> {
        smaps::parse(text)
            .unwrap()
            .iter()
            .map(|e| VmaState {
                record: VmaRecord {
                    start: e.start,
                    end: e.end,
                    prot: vmas::prot_of(e),
                    flags: vmas::flags_of(e),
                    ..VmaRecord::default()
                },
                path: e.path.clone(),
            })
            .collect()
    }

    /// The child of a process with `SMAPS`: without its DONTFORK area.
    fn child_smaps() -> String {
        SMAPS.split("7f0000200000").next().unwrap().to_owned()
    }

    #[test]
    fn the_child_must_carry_every_area_as_recorded() {
        let vmas = records(SMAPS);
        check_areas(7, &vmas, &child_smaps()).unwrap();
        // A flag the child shows that the image does not have (a whole
        // area madvised between the presample and the freeze).
        let wiped = child_smaps().replace("me ac\n", "me ac wf\n");
        let e = check_areas(7, &vmas, &wiped).unwrap_err();
        assert!(e.to_string().contains("changed as the dump began"), "{e}");
        // The DONTFORK area present in the child: it was not DONTFORK.
        assert!(check_areas(7, &vmas, SMAPS).is_err());
        // An area the child lacks.
        let short = child_smaps()
            .split("7f0000000000")
            .next()
            .unwrap()
            .to_owned();
        assert!(check_areas(7, &vmas, &short).is_err());
        // Locks are not inherited: a locked area is not a mismatch.
        let locked = SMAPS.replace("rd ex mr mw me\n", "rd ex mr mw me lo\n");
        check_areas(7, &records(&locked), &child_smaps()).unwrap();
    }

    #[test]
    fn policies_in_the_child_are_refusal_lines() {
        let text = "7f0000000000 bind:0 anon=1 N0=1\n00400000 default file=/bin/x\n";
        let lines = numa_refusals(text);
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("`bind:0`") && lines[0].contains("0x7f0000000000"));
    }
}
