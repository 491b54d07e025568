//! Turning smaps entries into the image's VMA records: kind, flags,
//! protections, and which of their pages are stored. Pure, unit-tested.

use image_format::records::{
    prot, vma_flags, vma_kind, PROCESS_COREDUMP_FILTER_KNOWN, PROCESS_COREDUMP_FILTER_MASK,
    PROCESS_COREDUMP_FILTER_SHIFT, PROCESS_KSM_MERGE_ANY, PROCESS_MDWE_NO_INHERIT,
    PROCESS_MDWE_REFUSE_EXEC_GAIN, PROCESS_THP_DISABLED, PROCESS_THP_EXCEPT_ADVISED,
};
use image_format::text::Escaped;

use crate::pages::PagePolicy;
use crate::procfs::smaps::SmapsEntry;

/// How a VMA is kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmaClass {
    /// One of [`vma_kind`].
    pub kind: u32,
    /// For shared anonymous memory, the pages are the data extents of the
    /// shared object instead (see [`crate::pages::select_extents`]).
    pub policy: PagePolicy,
    /// Something the restore will not reproduce exactly, said as a warning.
    pub warning: Option<String>,
}

/// Classify one VMA. `Err` names what cannot be restored.
pub fn classify(e: &SmapsEntry) -> Result<VmaClass, String> {
    classify_tracked(e, false)
}

/// [`classify`]; `wp_tracked`: the process's areas are registered for
/// write tracking by crimg's own holder (`crate::incremental::holder`), so
/// `VmFlags` `uw` is not the task's state (a restored task has none).
pub fn classify_tracked(e: &SmapsEntry, wp_tracked: bool) -> Result<VmaClass, String> {
    let class = |kind, policy| {
        Ok(VmaClass {
            kind,
            policy,
            warning: None,
        })
    };
    let anon = |shared: bool| {
        if shared {
            class(vma_kind::SHARED_ANON, PagePolicy::Nothing)
        } else {
            class(vma_kind::ANON, PagePolicy::Anonymous)
        }
    };
    let p = e.path.as_str();
    // The path is the target's to choose: shown escaped.
    let shown = Escaped(p.as_bytes());
    if !matches!(p, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]") {
        let ours = |f: &str| wp_tracked && f == "uw";
        if let Some(what) = unkept_flag_but(e, ours) {
            return Err(format!("{what} at {:#x}-{:#x} {shown}", e.start, e.end));
        }
    }
    match p {
        "[heap]" => return class(vma_kind::HEAP, PagePolicy::Anonymous),
        "[stack]" => return class(vma_kind::STACK, PagePolicy::Anonymous),
        "[vdso]" => return class(vma_kind::VDSO, PagePolicy::Nothing),
        "[vvar]" => return class(vma_kind::VVAR, PagePolicy::Nothing),
        "[vvar_vclock]" => return class(vma_kind::VVAR_VCLOCK, PagePolicy::Nothing),
        "[vsyscall]" => return class(vma_kind::VSYSCALL, PagePolicy::Nothing),
        "" => return anon(e.shared),
        "/dev/zero" => return anon(e.shared),
        _ => {}
    }
    // After the kernel's own areas, which are VM_IO/VM_PFNMAP too.
    if e.has_flag("io") || e.has_flag("pf") {
        return Err(format!(
            "device memory (VM_IO/VM_PFNMAP) at {:#x}-{:#x} {shown}",
            e.start, e.end
        ));
    }
    // Named anonymous memory (PR_SET_VMA_ANON_NAME): the memory is kept,
    // its name is not set again, and that is said.
    if p.starts_with("[anon:") || p.starts_with("[anon_shmem:") {
        let mut class = anon(e.shared || p.starts_with("[anon_shmem:"))?;
        class.warning = Some(format!(
            "the name {shown} of anonymous memory at {:#x}-{:#x} is not restored",
            e.start, e.end
        ));
        return Ok(class);
    }
    if p.starts_with("/SYSV") && e.shared {
        return Ok(VmaClass {
            kind: vma_kind::SHARED_ANON,
            policy: PagePolicy::Nothing,
            warning: Some(format!(
                "SysV shared memory at {:#x}-{:#x} is restored as shared memory of its own (a memfd, shared by the areas that mapped the segment), no longer attached to the segment",
                e.start, e.end
            )),
        });
    }
    // A memfd is restored as a memfd (`objects::shmem`): its shared areas
    // carry its pages, a private one is a file mapping of it.
    if p.starts_with("/memfd:") && e.shared {
        return class(vma_kind::SHARED_ANON, PagePolicy::Nothing);
    }
    // Deleted files too are mapped from their saved content
    // (`objects::shmem`), as any file.
    if p.starts_with('/') {
        let policy = if e.shared {
            PagePolicy::Nothing
        } else {
            PagePolicy::PrivateFile
        };
        return class(vma_kind::FILE, policy);
    }
    Err(format!(
        "unknown special mapping {shown} at {:#x}-{:#x}",
        e.start, e.end
    ))
}

/// `VmFlags` mnemonics the restore gives back: the protections and
/// may-flags follow from how the area is mapped (`mw` of a shared file from
/// the fd's mode, `me` from the file's mount), the rest are in
/// [`flags_of`]'s table.
const KEPT: &[&str] = &[
    "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "lo", "sr", "rr", "dc", "lf", "ac", "nr",
    "wf", "dd", "hg", "nh", "mg", "dp",
];

/// Mnemonics that are not the task's state: `sd` (soft-dirty) marks every
/// new area and is only a change-tracking aid.
const NOT_STATE: &[&str] = &["sd"];

/// The first `VmFlags` bit of `e` that the restore would not give back,
/// by name, or `None`.
pub fn unkept_flag(e: &SmapsEntry) -> Option<String> {
    unkept_flag_but(e, |_| false)
}

/// [`unkept_flag`], not counting the flags `ignored` says.
fn unkept_flag_but(e: &SmapsEntry, ignored: impl Fn(&str) -> bool) -> Option<String> {
    let flag = e
        .vm_flags
        .iter()
        .find(|f| !KEPT.contains(&f.as_str()) && !NOT_STATE.contains(&f.as_str()) && !ignored(f))?;
    let what = match flag.as_str() {
        "pf" | "io" | "mm" | "ar" => "device memory (VM_IO/VM_PFNMAP/VM_MIXEDMAP)",
        "de" => "a kernel object's or driver's mapping (VM_DONTEXPAND)",
        "ht" => "hugetlb memory (VM_HUGETLB)",
        "sf" => "a MAP_SYNC mapping of a DAX file (VM_SYNC)",
        "um" | "uw" | "ui" => "an area registered with userfaultfd",
        "ss" => "a shadow stack (VM_SHADOW_STACK)",
        "sl" => "sealed memory (mseal, VM_SEALED)",
        "bt" | "mt" => "arm64 BTI/MTE memory",
        _ => "",
    };
    Some(if what.is_empty() {
        format!("a memory area with VmFlags `{flag}`, unknown to crimg,")
    } else {
        format!("{what} (VmFlags `{flag}`, not restored)")
    })
}

/// `VmaRecord::prot` from the permission letters.
pub fn prot_of(e: &SmapsEntry) -> u32 {
    (if e.read { prot::READ } else { 0 })
        | (if e.write { prot::WRITE } else { 0 })
        | (if e.exec { prot::EXEC } else { 0 })
}

/// `VmaRecord::flags` from the `VmFlags` mnemonics.
pub fn flags_of(e: &SmapsEntry) -> u32 {
    let table = [
        ("sh", vma_flags::SHARED),
        ("gd", vma_flags::GROWSDOWN),
        ("dd", vma_flags::DONTDUMP),
        ("dc", vma_flags::DONTFORK),
        ("hg", vma_flags::HUGEPAGE),
        ("nh", vma_flags::NOHUGEPAGE),
        ("lo", vma_flags::LOCKED),
        ("wf", vma_flags::WIPEONFORK),
        ("rr", vma_flags::RANDOM),
        ("sr", vma_flags::SEQUENTIAL),
        ("ms", vma_flags::MAYSHARE),
        ("nr", vma_flags::NORESERVE),
        ("ac", vma_flags::ACCOUNT),
        ("lf", vma_flags::LOCKONFAULT),
        ("mg", vma_flags::MERGEABLE),
        ("dp", vma_flags::DROPPABLE),
        ("mw", vma_flags::MAYWRITE),
    ];
    let mut flags = table
        .iter()
        .filter(|(m, _)| e.has_flag(m))
        .fold(0, |acc, (_, bit)| acc | bit);
    if e.shared {
        flags |= vma_flags::SHARED;
    }
    if e.deleted {
        flags |= vma_flags::FILE_DELETED;
    }
    flags
}

/// Every area of the task locked (the kernel's own excepted) suggests
/// `mlockall`: the locks come back, but whether new areas were to be locked
/// too (`MCL_FUTURE`, the mm's default flags) is shown nowhere, so it cannot
/// be kept; said as a warning.
pub fn mlockall_warning(smaps: &[SmapsEntry]) -> Option<String> {
    let mut areas = smaps.iter().filter(|e| {
        !matches!(
            e.path.as_str(),
            "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]"
        )
    });
    let mut any = false;
    let all = areas.all(|e| {
        any = true;
        e.has_flag("lo")
    });
    (any && all).then(|| {
        "every memory area is locked (mlockall?): the locks are restored, but mlockall(MCL_FUTURE) \
         is not visible in /proc and is not: areas mapped after the restore are not locked"
            .to_owned()
    })
}

/// The areas of `/proc/P/numa_maps` (`start policy details...`) with a
/// memory policy of their own (`mbind`), which the restore does not set:
/// `(start, policy)`. Areas under the default policy are not listed.
pub fn numa_policies(numa_maps: &str) -> Vec<(u64, String)> {
    numa_maps
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let start = u64::from_str_radix(words.next()?, 16).ok()?;
            let policy = words.next()?;
            (policy != "default").then(|| (start, policy.to_owned()))
        })
        .collect()
}

/// `ProcessRecord::flags` bits for the mm's coredump filter, from the text
/// of `/proc/P/coredump_filter` (hex); nothing when it cannot be parsed.
pub fn coredump_filter_flags(text: &str) -> u32 {
    match u32::from_str_radix(text.trim(), 16) {
        Ok(filter) if filter <= PROCESS_COREDUMP_FILTER_MASK >> PROCESS_COREDUMP_FILTER_SHIFT => {
            PROCESS_COREDUMP_FILTER_KNOWN | filter << PROCESS_COREDUMP_FILTER_SHIFT
        }
        _ => 0,
    }
}

/// `ProcessRecord::flags` bits of the mm from what the task's
/// `prctl(PR_GET_THP_DISABLE)` (0, 1, or 3 with
/// `PR_THP_DISABLE_EXCEPT_ADVISED`), `prctl(PR_GET_MEMORY_MERGE)` and
/// `prctl(PR_GET_MDWE)` (`PR_MDWE_REFUSE_EXEC_GAIN` 1, `PR_MDWE_NO_INHERIT`
/// 2) returned; an error return (a kernel without the feature) sets nothing.
pub fn mm_flags(thp_disable: i64, merge_any: i64, mdwe: i64) -> u32 {
    let mut flags = 0;
    if thp_disable > 0 {
        flags |= PROCESS_THP_DISABLED;
        if thp_disable & 2 != 0 {
            flags |= PROCESS_THP_EXCEPT_ADVISED;
        }
    }
    if merge_any > 0 {
        flags |= PROCESS_KSM_MERGE_ANY;
    }
    if mdwe > 0 && mdwe & 1 != 0 {
        flags |= PROCESS_MDWE_REFUSE_EXEC_GAIN;
        if mdwe & 2 != 0 {
            flags |= PROCESS_MDWE_NO_INHERIT;
        }
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, shared: bool, deleted: bool) -> SmapsEntry {
        SmapsEntry {
            start: 0x1000,
            end: 0x2000,
            path: path.into(),
            shared,
            deleted,
            ..SmapsEntry::default()
        }
    }

    #[test]
    fn kinds() {
        let k = |p, s| classify(&entry(p, s, false)).map(|c| (c.kind, c.policy));
        assert_eq!(
            k("[heap]", false),
            Ok((vma_kind::HEAP, PagePolicy::Anonymous))
        );
        assert_eq!(
            k("[vvar_vclock]", false),
            Ok((vma_kind::VVAR_VCLOCK, PagePolicy::Nothing))
        );
        assert_eq!(k("", false), Ok((vma_kind::ANON, PagePolicy::Anonymous)));
        assert_eq!(k("", true).unwrap().0, vma_kind::SHARED_ANON);
        assert_eq!(k("/dev/zero", true).unwrap().0, vma_kind::SHARED_ANON);
        assert_eq!(
            k("[anon:jemalloc]", false),
            Ok((vma_kind::ANON, PagePolicy::Anonymous))
        );
        let named = classify(&entry("[anon_shmem:ring]", true, false)).unwrap();
        assert_eq!(named.kind, vma_kind::SHARED_ANON);
        assert!(named.warning.unwrap().contains("[anon_shmem:ring]"));
        assert_eq!(
            k("/usr/lib/libc.so.6", false),
            Ok((vma_kind::FILE, PagePolicy::PrivateFile))
        );
        assert_eq!(
            k("/data/db", true),
            Ok((vma_kind::FILE, PagePolicy::Nothing))
        );
        assert!(k("[uprobes]", false).is_err());
        // A memfd's shared areas carry its pages; a private one maps it.
        assert_eq!(
            k("/memfd:x", false),
            Ok((vma_kind::FILE, PagePolicy::PrivateFile))
        );
        let memfd = classify(&entry("/memfd:x", true, true)).unwrap();
        assert_eq!((memfd.kind, memfd.warning), (vma_kind::SHARED_ANON, None));
        // Deleted files are mapped from their saved content.
        assert_eq!(
            classify(&entry("/tmp/gone", false, true)).map(|c| c.kind),
            Ok(vma_kind::FILE)
        );
        let mut io = entry("/dev/mem", true, false);
        io.vm_flags = vec!["io".into()];
        assert!(classify(&io).is_err());
    }

    #[test]
    fn mlockall_is_guessed_when_every_area_is_locked() {
        let mut a = entry("", false, false);
        a.vm_flags = vec!["rd".into(), "lo".into()];
        let mut vdso = entry("[vdso]", false, false);
        vdso.vm_flags = vec!["rd".into(), "ex".into()];
        let b = entry("[heap]", false, false);
        assert!(mlockall_warning(&[a.clone(), vdso.clone()]).is_some());
        assert!(mlockall_warning(&[a, vdso.clone(), b]).is_none());
        assert!(mlockall_warning(&[vdso]).is_none());
    }

    #[test]
    fn numa_policies_other_than_default() {
        let text = "556f164ec000 default file=/usr/bin/cat mapped=2 N0=2 kernelpagesize_kB=4\n\
                    7f0000000000 bind:0 anon=1 dirty=1 N0=1 kernelpagesize_kB=4\n\
                    7f0000010000 interleave=static:0-1 anon=2\n";
        assert_eq!(
            numa_policies(text),
            vec![
                (0x7f00_0000_0000, "bind:0".to_owned()),
                (0x7f00_0001_0000, "interleave=static:0-1".to_owned())
            ]
        );
        assert!(numa_policies("").is_empty());
    }

    #[test]
    fn coredump_filter_into_flags() {
        assert_eq!(
            coredump_filter_flags("00000033\n"),
            PROCESS_COREDUMP_FILTER_KNOWN | 0x33 << 16
        );
        assert_eq!(
            coredump_filter_flags("1ff"),
            PROCESS_COREDUMP_FILTER_KNOWN | 0x1ff << 16
        );
        assert_eq!(coredump_filter_flags("200"), 0);
        assert_eq!(coredump_filter_flags("x"), 0);
    }

    #[test]
    fn mm_flags_from_prctl_answers() {
        assert_eq!(mm_flags(0, 0, 0), 0);
        assert_eq!(mm_flags(-22, -22, -22), 0);
        assert_eq!(mm_flags(1, 0, 0), PROCESS_THP_DISABLED);
        assert_eq!(
            mm_flags(3, 1, 0),
            PROCESS_THP_DISABLED | PROCESS_THP_EXCEPT_ADVISED | PROCESS_KSM_MERGE_ANY
        );
        assert_eq!(mm_flags(0, 0, 1), PROCESS_MDWE_REFUSE_EXEC_GAIN);
        assert_eq!(
            mm_flags(0, 0, 3),
            PROCESS_MDWE_REFUSE_EXEC_GAIN | PROCESS_MDWE_NO_INHERIT
        );
    }

    #[test]
    fn flags_not_restored_are_refused_by_name() {
        let with = |path: &str, flags: &[&str]| {
            let mut e = entry(path, false, false);
            e.vm_flags = flags.iter().map(|f| (*f).to_owned()).collect();
            classify(&e)
        };
        let ok = [
            "rd", "wr", "mr", "mw", "me", "ac", "nr", "lo", "lf", "mg", "dp", "sd",
        ];
        assert!(with("", &ok).is_ok());
        let err = with("", &["rd", "uw"]).unwrap_err();
        assert!(err.contains("userfaultfd") && err.contains("`uw`"), "{err}");
        assert!(with("[heap]", &["rd", "sl"]).unwrap_err().contains("mseal"));
        assert!(with("/x", &["rd", "ht"]).unwrap_err().contains("hugetlb"));
        assert!(with("", &["rd", "zz"]).unwrap_err().contains("`zz`"));
        // The kernel's own areas carry flags of their own.
        assert!(with("[vvar]", &["rd", "pf", "io", "de"]).is_ok());
    }

    #[test]
    fn flags_and_prot() {
        let mut e = entry("", true, false);
        e.read = true;
        e.exec = true;
        e.vm_flags = vec!["rd".into(), "gd".into(), "dd".into()];
        assert_eq!(prot_of(&e), prot::READ | prot::EXEC);
        assert_eq!(
            flags_of(&e),
            vma_flags::SHARED | vma_flags::GROWSDOWN | vma_flags::DONTDUMP
        );
        e.vm_flags = ["rd", "mw", "nr", "ac", "lo", "lf", "mg", "dp"]
            .iter()
            .map(|f| (*f).to_owned())
            .collect();
        assert_eq!(
            flags_of(&e),
            vma_flags::SHARED
                | vma_flags::MAYWRITE
                | vma_flags::NORESERVE
                | vma_flags::ACCOUNT
                | vma_flags::LOCKED
                | vma_flags::LOCKONFAULT
                | vma_flags::MERGEABLE
                | vma_flags::DROPPABLE
        );
    }
}
