//! Turning smaps entries into the image's VMA records: kind, flags,
//! protections, and which of their pages are stored. Pure, unit-tested.

use image_format::records::{prot, vma_flags, vma_kind};

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
            "device memory (VM_IO/VM_PFNMAP) at {:#x}-{:#x} {}",
            e.start, e.end, e.path
        ));
    }
    if p.starts_with("[anon:") {
        return anon(e.shared);
    }
    if p.starts_with("[anon_shmem:") {
        return anon(true);
    }
    if p.starts_with("/SYSV") && e.shared {
        return Ok(VmaClass {
            kind: vma_kind::SHARED_ANON,
            policy: PagePolicy::Nothing,
            warning: Some(format!(
                "SysV shared memory at {:#x}-{:#x} is restored as a private copy, no longer attached to the segment",
                e.start, e.end
            )),
        });
    }
    if p.starts_with("/memfd:") {
        if e.shared {
            return Ok(VmaClass {
                kind: vma_kind::SHARED_ANON,
                policy: PagePolicy::Nothing,
                warning: Some(format!(
                    "memfd mapping {p} at {:#x}-{:#x} is restored as anonymous shared memory, not the memfd",
                    e.start, e.end
                )),
            });
        }
        return Err(format!(
            "private mapping of a memfd ({p}) at {:#x}-{:#x}",
            e.start, e.end
        ));
    }
    if p.starts_with('/') {
        if e.deleted {
            return Err(format!(
                "mapped file {p} was deleted ({:#x}-{:#x})",
                e.start, e.end
            ));
        }
        let policy = if e.shared {
            PagePolicy::Nothing
        } else {
            PagePolicy::PrivateFile
        };
        return class(vma_kind::FILE, policy);
    }
    Err(format!(
        "unknown special mapping {p} at {:#x}-{:#x}",
        e.start, e.end
    ))
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
        assert_eq!(
            k("/usr/lib/libc.so.6", false),
            Ok((vma_kind::FILE, PagePolicy::PrivateFile))
        );
        assert_eq!(
            k("/data/db", true),
            Ok((vma_kind::FILE, PagePolicy::Nothing))
        );
        assert!(k("[uprobes]", false).is_err());
        assert!(k("/memfd:x", false).is_err());
        assert!(classify(&entry("/memfd:x", true, true))
            .unwrap()
            .warning
            .is_some());
        assert!(classify(&entry("/tmp/gone", false, true)).is_err());
        let mut io = entry("/dev/mem", true, false);
        io.vm_flags = vec!["io".into()];
        assert!(classify(&io).is_err());
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
    }
}
