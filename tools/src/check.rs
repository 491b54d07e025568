//! `crimg check`: what this machine's kernel allows crimg to do, found by
//! trying it (like `criu check`), not by reading version numbers.
//!
//! Each check says ok, a warning (crimg works with less: e.g. unprivileged
//! restores keep new thread ids) or a failure (dumping or restoring cannot
//! work here).

#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use std::fs;
use std::process::{Command, Stdio};

use serde::Serialize;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

fn check(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name,
        verdict,
        detail: detail.into(),
    }
}

use binfmt_loader::creds::cap::{
    CHECKPOINT_RESTORE as CAP_CHECKPOINT_RESTORE, SYS_ADMIN as CAP_SYS_ADMIN,
    SYS_PTRACE as CAP_SYS_PTRACE, SYS_RESOURCE as CAP_SYS_RESOURCE,
};

/// Effective capabilities of this process, as the loader reads them
/// (`capget`).
fn effective_caps() -> u64 {
    binfmt_loader::sys::effective_caps()
}

fn capabilities() -> Vec<Check> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1 << c) != 0;
    let mut out = vec![check(
        "ptrace capability",
        if has(CAP_SYS_PTRACE) {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        if has(CAP_SYS_PTRACE) {
            "CAP_SYS_PTRACE: any process can be dumped".to_owned()
        } else {
            "no CAP_SYS_PTRACE: only this user's processes can be dumped".to_owned()
        },
    )];
    let restore = has(CAP_CHECKPOINT_RESTORE) || has(CAP_SYS_ADMIN);
    out.push(check(
        "checkpoint/restore capability",
        if restore { Verdict::Ok } else { Verdict::Warn },
        if restore {
            "original thread ids and /proc/PID/exe can be restored"
        } else {
            "no CAP_CHECKPOINT_RESTORE: restored threads get new ids, /proc/PID/exe names the loader"
        },
    ));
    out.push(check(
        "CAP_SYS_RESOURCE",
        if has(CAP_SYS_RESOURCE) {
            Verdict::Ok
        } else {
            Verdict::Warn
        },
        if has(CAP_SYS_RESOURCE) {
            "hard resource limits can be raised back"
        } else {
            "not held: hard limits higher than the restorer's are lowered (with a warning)"
        },
    ));
    out
}

/// Freezes a throwaway child the way crdump freezes its target.
fn ptrace_seize() -> Check {
    let name = "ptrace seize and interrupt";
    let mut child = match Command::new("sleep").arg("30").stdin(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => {
            return check(
                name,
                Verdict::Warn,
                format!("cannot start a test process (sleep): {e}"),
            )
        }
    };
    // Linux pids are positive ints.
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    let result = dumper::freeze::Frozen::freeze(pid).and_then(|f| f.detach());
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Ok(()) => check(name, Verdict::Ok, "a process can be frozen and released"),
        Err(e) => check(
            name,
            Verdict::Fail,
            format!("{e} (Yama ptrace_scope or a seccomp policy?)"),
        ),
    }
}

fn pagemap() -> Check {
    let name = "pagemap page frame numbers";
    match dumper::sys::process::zero_page_pfn() {
        Ok(Some(pfn)) => check(
            name,
            Verdict::Ok,
            format!("visible (zero page at PFN {pfn:#x}): zero pages are left out of images"),
        ),
        Ok(None) => check(
            name,
            Verdict::Warn,
            "hidden (no CAP_SYS_ADMIN): zero pages are stored like others",
        ),
        Err(e) => check(name, Verdict::Fail, format!("/proc/self/pagemap: {e}")),
    }
}

/// `[vvar]`, `[vvar_vclock]` and `[vdso]` in this process, in order and
/// adjacent: the layout the loader moves as one block (its own parser and
/// judgement: `binfmt_loader::maps`, `binfmt_loader::check::layout`).
fn vdso_layout() -> Check {
    use binfmt_loader::check::layout::{vdso_block, vdso_block_movable};
    use binfmt_loader::maps::{parse_maps, MapKind, MapsEntry};
    let name = "vDSO layout";
    let Ok(maps) = fs::read("/proc/self/maps") else {
        return check(name, Verdict::Fail, "cannot read /proc/self/maps");
    };
    let mut entries = vec![MapsEntry::default(); 4096];
    let n = match parse_maps(&maps, &mut entries) {
        Ok(n) => n,
        Err(e) => return check(name, Verdict::Fail, format!("/proc/self/maps: {e}")),
    };
    let entries = &entries[..n];
    let block = vdso_block(entries);
    let kinds: Vec<MapKind> = entries
        .iter()
        .map(|e| e.kind)
        .filter(|k| matches!(k, MapKind::Vvar | MapKind::VvarVclock | MapKind::Vdso))
        .collect();
    let desc: Vec<String> = kinds
        .iter()
        .zip(block.parts())
        .map(|(k, r)| {
            let what = match k {
                MapKind::Vvar => "[vvar]",
                MapKind::VvarVclock => "[vvar_vclock]",
                _ => "[vdso]",
            };
            format!("{what} {} KiB", r.len() / 1024)
        })
        .collect();
    if vdso_block_movable(&block, kinds.last() == Some(&MapKind::Vdso)) {
        check(
            name,
            Verdict::Ok,
            format!("{} (adjacent: moved as one block)", desc.join(", ")),
        )
    } else {
        check(
            name,
            Verdict::Fail,
            format!("unexpected: {}", desc.join(", ")),
        )
    }
}

fn xsave() -> Check {
    let name = "XSAVE features (XCR0)";
    match binfmt_loader::arch::xcr0() {
        Some(x) => check(
            name,
            Verdict::Ok,
            format!("{x:#x}: images that use more than this are refused (loader exit 6)"),
        ),
        None => check(name, Verdict::Fail, "the OS has not enabled XSAVE"),
    }
}

fn set_tid() -> Check {
    let name = "clone3 with set_tid";
    let pid_max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    // A pid nobody uses, near the top of the range. One that looked free
    // can be taken by the time clone3 runs (processes start all the time):
    // EEXIST says nothing about set_tid, so the next free one is tried.
    let mut free = (pid_max / 2..pid_max)
        .rev()
        .filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .take(16)
        .peekable();
    if free.peek().is_none() {
        return check(name, Verdict::Warn, "no free pid to try");
    }
    let mut last = None;
    for pid in free {
        match crate::sys::try_clone3_set_tid(pid) {
            Ok(()) => {
                return check(
                    name,
                    Verdict::Ok,
                    format!("a task was created with pid {pid}: threads keep their ids"),
                )
            }
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => last = Some(e),
            Err(e) => {
                return check(
                    name,
                    Verdict::Warn,
                    format!("{e}: restored threads get new ids"),
                )
            }
        }
    }
    let e = last.map_or_else(|| "no free pid".to_owned(), |e| e.to_string());
    check(
        name,
        Verdict::Warn,
        format!("{e} for every pid tried: restored threads may get new ids"),
    )
}

/// `prctl(PR_TIMER_CREATE_RESTORE_IDS, GET)`, which changes nothing: can
/// POSIX timers be created again with their ids?
fn posix_timer_ids() -> Check {
    let name = "POSIX timers with their ids";
    match binfmt_loader::sys::timer_restore_ids() {
        Ok(_) => check(
            name,
            Verdict::Ok,
            "PR_TIMER_CREATE_RESTORE_IDS works: timer_create takes the ids of the image",
        ),
        Err(errno) => check(
            name,
            Verdict::Warn,
            format!(
                "PR_TIMER_CREATE_RESTORE_IDS: {errno} (Linux 6.14+): images with POSIX timers are refused (loader exit 7)"
            ),
        ),
    }
}

/// `crimg run --lazy`: a userfaultfd with its events that also catches
/// the kernel's faults (what the loader makes for it), made and closed.
fn lazy_restore() -> Check {
    let name = "lazy restore (userfaultfd)";
    match binfmt_loader::sys::uffd::open_for_lazy() {
        Ok(fd) => {
            let _ = binfmt_loader::sys::close(fd);
            check(
                name,
                Verdict::Ok,
                "a userfaultfd for kernel and user faults, with fork/remap/remove/unmap events: crimg run --lazy works",
            )
        }
        Err(errno) => check(
            name,
            Verdict::Warn,
            format!(
                "userfaultfd without UFFD_USER_MODE_ONLY: {errno} (needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd = 1): crimg run --lazy is refused (loader exit 7)"
            ),
        ),
    }
}

/// What the flags of a binfmt entry mean for the people who run images.
fn flags_meaning(flags: &str) -> String {
    let mut out = vec![
        "images run with the credentials of whoever runs them (the loader gains nothing from the image file)".to_owned(),
    ];
    if flags.contains('F') {
        out.push("F: the loader was opened when registered (works in other mount namespaces and chroots)".to_owned());
    }
    if flags.contains('O') {
        out.push("O: the image is passed as an open fd, so execute-only images run".to_owned());
    }
    if flags.contains('P') {
        out.push("P: the original argv[0] is kept".to_owned());
    }
    out.join("; ")
}

/// Judges a registered entry: what is wrong with it (each a failure), and
/// what is merely worth saying.
fn judge_entry(s: &crate::binfmt::EntryStatus) -> (Vec<String>, Vec<String>) {
    let mut wrong = Vec::new();
    let mut notes = Vec::new();
    if s.flags.contains('C') {
        wrong.push(format!(
            "flag C: the kernel would run images with the credentials of the image file's owner, like a setuid program (re-register it with `crimg binfmt install --name {}`)",
            s.name
        ));
    }
    if s.magic != crate::binfmt::magic_hex() {
        wrong.push(format!(
            "it matches magic {}, not this crimg's image format {}: images of this crimg do not run through it",
            s.magic,
            image_format::FORMAT_VERSION
        ));
    }
    let usable = std::fs::metadata(&s.interpreter)
        .map(|m| {
            m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
        })
        .unwrap_or(false);
    if !usable {
        let what = format!(
            "the loader {} is missing or not executable",
            s.interpreter.display()
        );
        if s.flags.contains('F') {
            notes.push(format!(
                "{what}; the entry still runs the file opened when it was registered (flag F)"
            ));
        } else {
            wrong.push(what);
        }
    }
    (wrong, notes)
}

fn binfmt(entry_name: &str) -> Check {
    let name = "binfmt_misc entry";
    let entry = match crate::binfmt::Binfmt::new(entry_name) {
        Ok(e) => e,
        Err(e) => return check(name, Verdict::Fail, e.to_string()),
    };
    if !entry.dir.join("register").exists() {
        return check(
            name,
            Verdict::Warn,
            "binfmt_misc is not mounted: run images with `crimg run` (or `crimg binfmt install`)",
        );
    }
    match entry.status() {
        Ok(Some(s)) => {
            let (wrong, notes) = judge_entry(&s);
            if !wrong.is_empty() {
                return check(name, Verdict::Fail, format!("{entry_name}: {}", wrong.join("; ")));
            }
            if !s.enabled {
                return check(
                    name,
                    Verdict::Warn,
                    format!("{entry_name} is registered but disabled: images do not run directly"),
                );
            }
            let mut detail = format!(
                "{entry_name} registered, flags {}: images run with {}; {}",
                if s.flags.is_empty() { "none" } else { &s.flags },
                s.interpreter.display(),
                flags_meaning(&s.flags)
            );
            for n in &notes {
                detail.push_str("; ");
                detail.push_str(n);
            }
            check(name, if notes.is_empty() { Verdict::Ok } else { Verdict::Warn }, detail)
        }
        Ok(None) => check(
            name,
            Verdict::Warn,
            format!("{entry_name} not registered: run images with `crimg run`, or `crimg binfmt install`"),
        ),
        Err(e) => check(name, Verdict::Fail, e.to_string()),
    }
}

/// Whether the loader that `crimg run` and `crimg binfmt install` use is
/// there.
fn loader() -> Check {
    let name = "loader";
    match crate::loader_path::find() {
        Some(p) => check(name, Verdict::Ok, format!("{}", p.display())),
        None => {
            let tried: Vec<String> = crate::loader_path::candidates()
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            check(
                name,
                Verdict::Fail,
                format!(
                    "{} not found (tried {}): images cannot be restored",
                    crate::loader_path::LOADER_NAME,
                    tried.join(", ")
                ),
            )
        }
    }
}

fn limits() -> Check {
    let read = |p: &str| {
        fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "?".into())
    };
    check(
        "kernel limits",
        Verdict::Ok,
        format!(
            "pid_max {}, max_map_count {}, pipe-max-size {}",
            read("/proc/sys/kernel/pid_max"),
            read("/proc/sys/vm/max_map_count"),
            read("/proc/sys/fs/pipe-max-size")
        ),
    )
}

fn kernel() -> Check {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let arch = std::env::consts::ARCH;
    let verdict = if arch == "x86_64" {
        Verdict::Ok
    } else {
        Verdict::Fail
    };
    check(
        "kernel",
        verdict,
        format!("Linux {} on {arch}", release.trim()),
    )
}

/// Every check, in the order they are shown; `binfmt_name` is the binfmt
/// entry to look at.
pub fn run_all(binfmt_name: &str) -> Vec<Check> {
    let mut out = vec![kernel()];
    out.extend(capabilities());
    out.push(ptrace_seize());
    out.push(pagemap());
    out.push(vdso_layout());
    out.push(xsave());
    out.push(set_tid());
    out.push(posix_timer_ids());
    out.push(lazy_restore());
    out.push(loader());
    out.push(binfmt(binfmt_name));
    out.push(limits());
    out
}
