//! What `crimg info` shows about an image, as plain data: printed as text
//! for people and as JSON for scripts and tests.

use std::fmt::Write as _;

mod event_objects;

use image_format::elf::UserRegs;
use image_format::records::{
    fd_kind, restart, sigev_notify, vma_flags, vma_kind, FdRecord, PosixTimerRecord, VmaRecord,
};
use image_format::{Image, ImageError, PAGE_SIZE};
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Summary {
    pub format_version: u8,
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    pub sid: i32,
    pub comm: String,
    pub exe: String,
    pub cwd: String,
    pub cmdline: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub threads: Vec<ThreadSummary>,
    pub vmas: Vec<VmaSummary>,
    pub fds: Vec<FdSummary>,
    /// Shared memory objects and saved files, in the order areas and fds
    /// count them (`object` 1 is the first).
    pub shmem: Vec<ShmemSummary>,
    pub stored_bytes: u64,
    pub image_bytes: u64,
    pub brk: u64,
    /// Code the loader borrows to leave no trace (`syscall; ret`, `rt_sigreturn`).
    pub gadgets: Gadgets,
    pub warnings: Vec<String>,
    /// The POSIX timers (`timer_create`), by id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub posix_timers: Vec<PosixTimerSummary>,
    /// An incremental image's parent: its recorded path (relative to this
    /// image's directory) and the chain depth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentSummary>,
}

#[derive(Debug, Serialize)]
pub struct ParentSummary {
    pub path: String,
    /// Parent images below this one.
    pub depth: u32,
    /// Bytes of memory whose pages the parents hold.
    pub from_parent_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct PosixTimerSummary {
    pub id: i32,
    pub clock: i32,
    /// `signal`, `none`, `thread` or `thread-id` (to `tid`).
    pub notify: &'static str,
    pub signo: u32,
    /// With `thread-id`: the thread the signal goes to.
    pub tid: i32,
    /// `sigev_value`, hex.
    pub value: String,
    /// Seconds, with nanoseconds.
    pub interval: String,
    pub left: String,
    pub overrun: i32,
}

fn posix_timer_summary(t: &PosixTimerRecord) -> PosixTimerSummary {
    let notify = match t.notify {
        sigev_notify::SIGNAL => "signal",
        sigev_notify::NONE => "none",
        sigev_notify::THREAD => "thread",
        n if n == sigev_notify::SIGNAL | sigev_notify::THREAD_ID => "thread-id",
        _ => "unknown",
    };
    PosixTimerSummary {
        id: t.id,
        clock: t.clock,
        notify,
        signo: t.signo,
        tid: t.tid,
        value: format!("{:#x}", t.value),
        interval: format!("{}.{:09}", t.interval.sec, t.interval.nsec),
        left: format!("{}.{:09}", t.left.sec, t.left.nsec),
        overrun: t.overrun,
    }
}

#[derive(Debug, Serialize)]
pub struct Gadgets {
    pub syscall_ret: String,
    pub rt_sigreturn: String,
}

#[derive(Debug, Serialize)]
pub struct ThreadSummary {
    pub tid: i32,
    pub comm: String,
    /// What the dumper did about the syscall the thread was in.
    pub restart: &'static str,
    /// The syscall the thread was stopped in (`orig_rax`), or -1.
    pub syscall: i64,
    /// `rax` when stopped, before the restart fix-up.
    pub syscall_ret: i64,
    pub sigmask: String,
    pub xfeatures: String,
    pub registers: Registers,
}

/// General registers, as hex strings (JSON numbers lose 64-bit precision).
#[derive(Debug, Serialize)]
pub struct Registers {
    pub rip: String,
    pub rsp: String,
    pub rbp: String,
    pub rax: String,
    pub orig_rax: String,
    pub rbx: String,
    pub rcx: String,
    pub rdx: String,
    pub rsi: String,
    pub rdi: String,
    pub r8: String,
    pub r9: String,
    pub r10: String,
    pub r11: String,
    pub r12: String,
    pub r13: String,
    pub r14: String,
    pub r15: String,
    pub eflags: String,
    pub fs_base: String,
    pub gs_base: String,
}

impl From<&UserRegs> for Registers {
    fn from(r: &UserRegs) -> Self {
        let h = |v: u64| format!("{v:#x}");
        Registers {
            rip: h(r.rip),
            rsp: h(r.rsp),
            rbp: h(r.rbp),
            rax: h(r.rax),
            orig_rax: h(r.orig_rax),
            rbx: h(r.rbx),
            rcx: h(r.rcx),
            rdx: h(r.rdx),
            rsi: h(r.rsi),
            rdi: h(r.rdi),
            r8: h(r.r8),
            r9: h(r.r9),
            r10: h(r.r10),
            r11: h(r.r11),
            r12: h(r.r12),
            r13: h(r.r13),
            r14: h(r.r14),
            r15: h(r.r15),
            eflags: h(r.eflags),
            fs_base: h(r.fs_base),
            gs_base: h(r.gs_base),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct VmaSummary {
    pub start: String,
    pub end: String,
    pub perms: String,
    pub kind: &'static str,
    pub size: u64,
    pub stored: u64,
    pub offset: u64,
    pub path: String,
}

#[derive(Debug, Serialize)]
pub struct ShmemSummary {
    pub kind: &'static str,
    pub name: String,
    pub size: u64,
    pub seals: String,
    /// Bytes of content saved whole (0: its areas' pages carry it).
    pub saved_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct FdSummary {
    pub fd: i32,
    pub kind: &'static str,
    pub path: String,
    pub pos: u64,
    pub open_flags: String,
    pub cloexec: bool,
    /// The lowest fd of the task sharing this fd's open file description
    /// (`dup`, `2>&1`), when it is another one.
    pub same_as: Option<i32>,
    /// For a terminal: how it resumes, and its saved modes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminal: Option<String>,
    /// The state of the fd's object (signalfd, timerfd, inotify, epoll),
    /// a line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub object: Vec<String>,
    /// Not saved (`crdump --force`): `/dev/null` at restore.
    pub dropped: bool,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn c_str(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    text(&bytes[..end])
}

pub fn restart_name(r: u32) -> &'static str {
    match r {
        restart::NONE => "none",
        restart::RESTART => "restart",
        restart::EINTR => "eintr",
        _ => "unknown",
    }
}

pub fn vma_kind_name(k: u32) -> &'static str {
    match k {
        vma_kind::ANON => "anon",
        vma_kind::FILE => "file",
        vma_kind::HEAP => "heap",
        vma_kind::STACK => "stack",
        vma_kind::VDSO => "vdso",
        vma_kind::VVAR => "vvar",
        vma_kind::VVAR_VCLOCK => "vvar_vclock",
        vma_kind::VSYSCALL => "vsyscall",
        vma_kind::SHARED_ANON => "shared-anon",
        _ => "unknown",
    }
}

pub fn fd_kind_name(k: u32) -> &'static str {
    match k {
        fd_kind::REGULAR => "file",
        fd_kind::DIRECTORY => "directory",
        fd_kind::PIPE => "pipe",
        fd_kind::FIFO => "fifo",
        fd_kind::SOCKET => "socket",
        fd_kind::CHAR => "char-device",
        fd_kind::BLOCK => "block-device",
        fd_kind::ANON_INODE => "anon-inode",
        fd_kind::TTY => "tty",
        fd_kind::MEMFD => "memfd",
        fd_kind::EVENTFD => "eventfd",
        fd_kind::SIGNALFD => "signalfd",
        fd_kind::TIMERFD => "timerfd",
        fd_kind::EPOLL => "epoll",
        fd_kind::INOTIFY => "inotify",
        fd_kind::IO_URING => "io_uring",
        _ => "unknown",
    }
}

fn perms(v: &VmaRecord) -> String {
    use image_format::records::prot;
    let mut s = String::with_capacity(4);
    s.push(if v.prot & prot::READ != 0 { 'r' } else { '-' });
    s.push(if v.prot & prot::WRITE != 0 { 'w' } else { '-' });
    s.push(if v.prot & prot::EXEC != 0 { 'x' } else { '-' });
    s.push(if v.flags & vma_flags::SHARED != 0 {
        's'
    } else {
        'p'
    });
    s
}

fn fd_summary(img: &Image, f: &FdRecord) -> Result<FdSummary, ImageError> {
    let same_as = if f.desc == 0 {
        None
    } else {
        img.fds()?
            .find(|o| o.desc == f.desc)
            .map(|o| o.fd)
            .filter(|&fd| fd != f.fd)
    };
    Ok(FdSummary {
        terminal: terminal_summary(img, f)?,
        same_as,
        fd: f.fd,
        kind: fd_kind_name(f.kind),
        path: text(img.string(f.path)?),
        pos: f.pos,
        open_flags: format!("{:#o}", f.open_flags),
        cloexec: f.flags & image_format::records::fd_flags::CLOEXEC != 0,
        object: event_objects::object_lines(img, f)?,
        dropped: f.flags & image_format::records::fd_flags::DROPPED != 0,
    })
}

/// How terminal fd `f` resumes (its record in the TERMINALS note).
fn terminal_summary(img: &Image, f: &FdRecord) -> Result<Option<String>, ImageError> {
    use image_format::records::{terminal_flags, terminal_resume, TerminalRecord};
    if f.kind != fd_kind::TTY || f.object == 0 {
        return Ok(None);
    }
    let Some(t) = img.records::<TerminalRecord>()?.object(f.object) else {
        return Ok(None);
    };
    let how = match t.resume {
        terminal_resume::STDIO => "the caller's".to_owned(),
        terminal_resume::DUP_STDIO => format!("a copy of the caller's fd {}", t.stdio_fd),
        terminal_resume::DEV_TTY => "/dev/tty opened again".to_owned(),
        _ => "unknown".to_owned(),
    };
    let modes = if t.flags & terminal_flags::MODES == 0 {
        String::new()
    } else if t.flags & terminal_flags::WINSIZE != 0 {
        format!("; modes saved, {}x{}", t.winsize.cols, t.winsize.rows)
    } else {
        "; modes saved".to_owned()
    };
    Ok(Some(format!("resumes as {how}{modes}")))
}

/// Everything `crimg info` shows about a parsed image.
pub fn summarize(img: &Image) -> Result<Summary, ImageError> {
    let p = img.process();
    let mut threads = Vec::new();
    for t in img.threads() {
        let t = t?;
        threads.push(ThreadSummary {
            tid: t.record.tid,
            comm: c_str(&t.record.comm),
            restart: restart_name(t.record.restart),
            syscall: t.record.syscall_nr,
            syscall_ret: t.record.syscall_ret,
            sigmask: format!("{:#018x}", t.record.sigmask),
            xfeatures: format!("{:#x}", t.xstate_bv()),
            registers: Registers::from(&t.regs()),
        });
    }
    let mut vmas = Vec::new();
    for v in img.vmas()? {
        vmas.push(VmaSummary {
            start: format!("{:#x}", v.start),
            end: format!("{:#x}", v.end),
            perms: perms(&v),
            kind: vma_kind_name(v.kind),
            size: v.end - v.start,
            stored: img.stored_in(v.start, v.end) * PAGE_SIZE,
            offset: v.pgoff,
            path: text(img.string(v.path)?),
        });
    }
    let fds = img
        .fds()?
        .map(|f| fd_summary(img, &f))
        .collect::<Result<_, _>>()?;
    let mut shmem = Vec::new();
    for o in img.records::<image_format::records::ShmemRecord>()? {
        use image_format::records::{shmem_flags, shmem_kind};
        shmem.push(ShmemSummary {
            kind: match o.kind {
                shmem_kind::MEMFD => "memfd",
                shmem_kind::SHARED_ANON => "shared-anon",
                shmem_kind::GHOST => "deleted-file",
                shmem_kind::RECREATE => "saved-file",
                _ => "unknown",
            },
            name: text(img.string(o.name)?),
            size: o.size,
            seals: format!("{:#x}", o.seals),
            saved_bytes: if o.flags & shmem_flags::WHOLE_CONTENT != 0 {
                u64::from(o.content.len)
            } else {
                0
            },
        });
    }
    let creds = img.creds();
    Ok(Summary {
        format_version: img.header().e_ident[14],
        pid: p.pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        comm: c_str(&p.comm),
        exe: text(img.string(p.exe)?),
        cwd: text(img.string(p.cwd)?),
        cmdline: img
            .string(p.cmdline)?
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(text)
            .collect(),
        uid: creds.map_or(0, |c| c.uid[0]),
        gid: creds.map_or(0, |c| c.gid[0]),
        threads,
        vmas,
        fds,
        shmem,
        stored_bytes: img.stored_bytes(),
        image_bytes: img.bytes().len() as u64,
        brk: img.mm().brk,
        gadgets: Gadgets {
            syscall_ret: format!("{:#x}", img.gadgets().syscall_ret),
            rt_sigreturn: format!("{:#x}", img.gadgets().rt_sigreturn),
        },
        warnings: img.warnings().map(text).collect(),
        posix_timers: img
            .records::<PosixTimerRecord>()?
            .map(|t| posix_timer_summary(&t))
            .collect(),
        parent: match img.parent() {
            Some(p) => Some(ParentSummary {
                path: text(img.string(p.path)?),
                depth: p.depth,
                from_parent_bytes: img
                    .segments()
                    .filter(|s| s.from_parent())
                    .map(|s| s.len)
                    .sum(),
            }),
            None => None,
        },
    })
}

/// A byte count for people: `512 B`, `4.0 KiB`, `1.5 GiB`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A string from the image as it may be shown on a terminal: control
/// bytes escaped, so one field stays on its line (JSON escapes its own).
fn shown(s: &str) -> String {
    image_format::text::Escaped(s.as_bytes()).to_string()
}

/// The summary as text for people.
pub fn render_text(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "pid {}  ppid {}  pgid {}  sid {}  uid {}  gid {}",
        s.pid, s.ppid, s.pgid, s.sid, s.uid, s.gid
    );
    let _ = writeln!(o, "comm     {}", shown(&s.comm));
    let _ = writeln!(o, "exe      {}", shown(&s.exe));
    let _ = writeln!(o, "cwd      {}", shown(&s.cwd));
    let _ = writeln!(o, "cmdline  {}", shown(&s.cmdline.join(" ")));
    let _ = writeln!(
        o,
        "memory   {} stored in {} areas; image {} (format {})",
        human(s.stored_bytes),
        s.vmas.len(),
        human(s.image_bytes),
        s.format_version
    );
    if let Some(p) = &s.parent {
        let _ = writeln!(
            o,
            "parent   {} (chain depth {}; {} of pages there)",
            shown(&p.path),
            p.depth,
            human(p.from_parent_bytes)
        );
    }
    let _ = writeln!(o, "\nthreads ({}):", s.threads.len());
    for t in &s.threads {
        let r = &t.registers;
        let _ = writeln!(
            o,
            "  tid {:<7} {:<16} rip {}  rsp {}  syscall {} ({})",
            t.tid,
            shown(&t.comm),
            r.rip,
            r.rsp,
            t.syscall,
            t.restart
        );
    }
    let _ = writeln!(o, "\nmemory areas:");
    for v in &s.vmas {
        let _ = writeln!(
            o,
            "  {:>14}-{:<14} {} {:<11} {:>10} {:>10} stored  {}",
            v.start,
            v.end,
            v.perms,
            v.kind,
            human(v.size),
            human(v.stored),
            shown(&v.path)
        );
    }
    let _ = writeln!(o, "\nfile descriptors:");
    for f in &s.fds {
        let _ = writeln!(
            o,
            "  {:>4} {:<11} pos {:<10} flags {}{}  {}{}{}",
            f.fd,
            f.kind,
            f.pos,
            f.open_flags,
            if f.cloexec { " cloexec" } else { "" },
            shown(&f.path),
            f.same_as
                .map(|fd| format!("  (same open file as fd {fd})"))
                .unwrap_or_default(),
            f.terminal
                .as_deref()
                .map(|t| format!("  ({t})"))
                .unwrap_or_default()
        );
        for line in &f.object {
            let _ = writeln!(o, "         {}", shown(line));
        }
    }
    let dropped: Vec<String> = s
        .fds
        .iter()
        .filter(|f| f.dropped)
        .map(|f| format!("{} ({})", f.fd, shown(&f.path)))
        .collect();
    if !dropped.is_empty() {
        let _ = writeln!(
            o,
            "  not saved (crdump --force), /dev/null at restore: {}",
            dropped.join(", ")
        );
    }
    if !s.shmem.is_empty() {
        let _ = writeln!(o, "\nshared memory objects and saved files:");
        for (i, m) in s.shmem.iter().enumerate() {
            let _ = writeln!(
                o,
                "  {:>4} {:<12} {:>10} seals {:<5} saved {:>10}  {}",
                i + 1,
                m.kind,
                human(m.size),
                m.seals,
                human(m.saved_bytes),
                shown(&m.name)
            );
        }
    }
    if let Some(t) = s.threads.first() {
        let r = &t.registers;
        let _ = writeln!(o, "\nregisters of thread {}:", t.tid);
        let pairs = [
            ("rip", &r.rip),
            ("rsp", &r.rsp),
            ("rbp", &r.rbp),
            ("rax", &r.rax),
            ("orig_rax", &r.orig_rax),
            ("rbx", &r.rbx),
            ("rcx", &r.rcx),
            ("rdx", &r.rdx),
            ("rsi", &r.rsi),
            ("rdi", &r.rdi),
            ("r8", &r.r8),
            ("r9", &r.r9),
            ("r10", &r.r10),
            ("r11", &r.r11),
            ("r12", &r.r12),
            ("r13", &r.r13),
            ("r14", &r.r14),
            ("r15", &r.r15),
            ("eflags", &r.eflags),
            ("fs_base", &r.fs_base),
        ];
        for chunk in pairs.chunks(4) {
            let line: Vec<String> = chunk
                .iter()
                .map(|(n, v)| format!("{n:>8} {v:<18}"))
                .collect();
            let _ = writeln!(o, " {}", line.join(" "));
        }
    }
    if !s.posix_timers.is_empty() {
        let _ = writeln!(o, "\nPOSIX timers ({}):", s.posix_timers.len());
        for t in &s.posix_timers {
            let to = if t.notify == "thread-id" {
                format!(" to tid {}", t.tid)
            } else {
                String::new()
            };
            let _ = writeln!(
                o,
                "  id {:<5} clock {:<3} {}{} signal {} value {}  interval {} s  left {} s  overrun {}",
                t.id, t.clock, t.notify, to, t.signo, t.value, t.interval, t.left, t.overrun
            );
        }
    }
    let _ = writeln!(
        o,
        "\nloader exit gadgets: syscall;ret {}  rt_sigreturn {}",
        s.gadgets.syscall_ret, s.gadgets.rt_sigreturn
    );
    if !s.warnings.is_empty() {
        let _ = writeln!(o, "\nnot kept by the dump:");
        for w in &s.warnings {
            let _ = writeln!(o, "  - {}", shown(w));
        }
    }
    o
}
