//! Running the plan: every process of the tree made by its parent with its
//! pid (still orchestrator code until it execs the loader), the barrier,
//! and on any failure every process made killed.
//!
//! The channels, all pipes made before the first fork, above every fd
//! number an image uses:
//! - `ready` (R): each loader writes one byte when its memory and threads
//!   are back; `go` (G): the orchestrator writes one byte per loader when
//!   all are ready (EOF: the orchestrator died, the loaders give up).
//! - `report` (E): the loaders' messages, and the pre-exec code's own
//!   (`#F PID text` for a failure, `#T PID text` for a pid taken).
//! - `created`: each process and stand-in writes its pid and its pid as
//!   the orchestrator sees it (they differ in a new pid namespace) when
//!   it starts; the orchestrator opens a pidfd on each, to watch it and to
//!   kill it.
//! - `release`: zombies and stand-ins wait for its EOF, which comes when
//!   the whole tree exists (the orchestrator holds the only write end).
//! - one `done` pipe per creation: the child writes a byte once it and its
//!   subtree are made; EOF without it: it failed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use image_manifest::WaitStatus;

use super::dump::Dump;
use super::error::TreeError;
use super::objects::{self, Objects, Stdio};
use super::pids;
use super::plan::{self, Actor, StandInRole, Step, TreePlan};
use super::sys::{self, Cloned};

/// What `crrestore-tree` was asked.
#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    pub loader: PathBuf,
    pub pidns: bool,
    pub wait: bool,
    pub stdio: Stdio,
    pub verbose: bool,
}

/// A restore that worked.
#[derive(Debug)]
pub struct Restored {
    pub processes: usize,
    pub root: i32,
    /// With `--wait`: the root's exit code (128 + signal when killed).
    pub status: Option<i32>,
}

/// Everything the created processes need, shared by copy through fork.
struct Ctx {
    plan: TreePlan,
    objects: Objects,
    /// pid → (image file checked, highest fd) of each live process.
    images: BTreeMap<i32, (RawFd, i32)>,
    /// pid → its command name (a zombie shows it, as it did).
    comms: BTreeMap<i32, String>,
    loader: CString,
    ready_w: RawFd,
    go_r: RawFd,
    go_w: RawFd,
    report_w: RawFd,
    created_w: RawFd,
    release_r: RawFd,
    release_w: RawFd,
    /// With `--pidns`: the init writes the root's exit code here (4
    /// bytes) when it reaps it, so that `--wait` ends with the root, not
    /// with the last process of the namespace.
    root_status_w: RawFd,
    base: RawFd,
    pidns: bool,
}

/// Restore the dump in `opts.dir`.
pub fn restore(opts: &Options) -> Result<Restored, TreeError> {
    let dump = Dump::read(&opts.dir)?;
    let root = dump.manifest.root_pid().unwrap_or(0);
    let root_stdio = dump.root_stdio(root);
    let plan = plan::plan(&plan::PlanInput {
        manifest: &dump.manifest,
        pidns: opts.pidns,
        root_stdio: &root_stdio,
        caller_tty: objects::caller_has_terminal(),
        in_use: &pids::in_use,
        caller: Some(plan::Caller {
            sid: sys::session_id(),
            pgid: sys::process_group(),
        }),
    })?;
    if opts.verbose {
        for note in &plan.notes {
            eprintln!("crrestore-tree: note: {note}");
        }
        for s in &plan.steps {
            eprintln!("crrestore-tree: step: {s:?}");
        }
    }
    dump.check_pid_choice(opts.pidns)?;
    if !opts.pidns {
        pids::check_free(&plan, &dump)?;
    }
    let shmem_max = dump
        .images
        .keys()
        .map(|&pid| {
            plan.steps
                .iter()
                .filter(|s| matches!(s, Step::Shmem { pid: p, .. } if *p == pid))
                .count()
        })
        .max()
        .unwrap_or(0);
    // R, G, E at max_fd + 1..=3 of each process, its memfds above them:
    // every source fd lives above all of those.
    let base = dump.max_fd() + 4 + i32::try_from(shmem_max).unwrap_or(i32::MAX - 64) + 8;
    let os_err = |what: &str| {
        let what = what.to_owned();
        move |source| TreeError::Os { what, source }
    };
    room_for_fds(&dump, &plan, base)?;
    let high_pipe = |what: &str| -> Result<(RawFd, RawFd), TreeError> {
        let (r, w) = sys::pipe().map_err(os_err(what))?;
        let lifted = (lift(r, base), lift(w, base));
        match lifted {
            (Ok(r), Ok(w)) => Ok((r, w)),
            (r, w) => Err(TreeError::Os {
                what: what.into(),
                source: r.and(w).err().unwrap_or_else(std::io::Error::last_os_error),
            }),
        }
    };
    let (ready_r, ready_w) = high_pipe("the barrier's pipe")?;
    let (go_r, go_w) = high_pipe("the barrier's pipe")?;
    let (report_r, report_w) = high_pipe("the report pipe")?;
    let (created_r, created_w) = high_pipe("a pipe")?;
    let (release_r, release_w) = high_pipe("a pipe")?;
    let (root_status_r, root_status_w) = high_pipe("a pipe")?;
    let objects = objects::create(&dump, &plan, opts.stdio, base)?;
    let images = dump
        .images
        .iter()
        .map(|(&pid, i)| (pid, (i.file, i.max_fd)))
        .collect();
    let loader = CString::new(opts.loader.as_os_str().as_bytes()).map_err(|_| TreeError::Os {
        what: format!("loader {}", opts.loader.display()),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let comms = dump
        .manifest
        .processes
        .iter()
        .map(|p| (p.pid, p.comm.clone()))
        .collect();
    let ctx = Ctx {
        plan,
        objects,
        images,
        comms,
        loader,
        ready_w,
        go_r,
        go_w,
        report_w,
        created_w,
        release_r,
        release_w,
        root_status_w,
        base,
        pidns: opts.pidns,
    };
    sys::ignore_sigpipe();
    sys::become_subreaper().map_err(os_err("PR_SET_CHILD_SUBREAPER"))?;

    // Build: the orchestrator does the top steps itself, or has the new
    // namespace's init do them.
    let mut init = None;
    let built = if opts.pidns {
        spawn(&ctx, None, true, |ctx, done| init_main(ctx, done)).map(|(pid, ok)| {
            init = Some(pid);
            ok
        })
    } else {
        run_steps(&ctx, Actor::Top, 0).map(|()| true)
    };
    // The orchestrator's copies of the children's ends.
    for fd in [ready_w, go_r, report_w, created_w, release_r, root_status_w] {
        sys::close(fd);
    }
    let mut watch = Watch::new(&ctx, report_r, created_r, init);
    match built {
        Ok(true) => {}
        Ok(false) => return Err(watch.fail(None, None)),
        Err(e) => return Err(watch.fail(None, Some(e))),
    }
    // Every process said it started before the tree was built: hold each
    // by a pidfd before any of them may exit (a zombie's parent does not
    // reap it before the barrier, a stand-in is reaped by us).
    watch.collect_created();
    // The tree exists: zombies may die, stand-ins leave.
    sys::close(release_w);
    let mut ready = 0;
    let live = ctx.plan.live.len();
    loop {
        watch.collect_created();
        if let Some(pid) = watch.gone_unexpectedly() {
            return Err(watch.fail(Some(pid), None));
        }
        for &pid in &watch.gone {
            if !watch.exited.contains(&pid) {
                watch.exited.push(pid);
            }
        }
        let zombies_done = ctx.plan.zombies.iter().all(|z| watch.exited.contains(z));
        if ready >= live && zombies_done {
            break;
        }
        let mut fds: Vec<(RawFd, i16)> = vec![(ready_r, libc::POLLIN), (report_r, libc::POLLIN)];
        let watched: Vec<(i32, RawFd)> = watch
            .pidfds
            .iter()
            .filter(|(pid, _)| !watch.exited.contains(pid))
            .map(|(&p, &fd)| (p, fd))
            .collect();
        fds.extend(watched.iter().map(|&(_, fd)| (fd, libc::POLLIN)));
        if let Some(init_fd) = watch.init_pidfd {
            fds.push((init_fd, libc::POLLIN));
        }
        let revents = sys::poll(&fds, 1000).map_err(os_err("poll"))?;
        if revents[0] != 0 {
            let mut buf = [0u8; 256];
            match sys::read(ready_r, &mut buf) {
                Ok(0) | Err(_) => return Err(watch.fail(None, None)),
                Ok(n) => ready += n,
            }
        }
        if revents[1] != 0 {
            watch.read_reports();
        }
        for (k, &(pid, _)) in watched.iter().enumerate() {
            if revents[2 + k] != 0 {
                watch.exited.push(pid);
                let expected = ctx.plan.zombies.contains(&pid) || ctx.plan.stand_ins.contains(&pid);
                if !expected {
                    return Err(watch.fail(Some(pid), None));
                }
            }
        }
        if watch.init_pidfd.is_some() && revents.last().copied().unwrap_or(0) != 0 {
            return Err(watch.fail(None, None));
        }
    }
    // A process that died after its ready byte (killed from outside) is
    // not let go with the others.
    if let Some(pid) = watch.any_unexpected_exit() {
        return Err(watch.fail(Some(pid), None));
    }
    // Everyone is ready: go.
    let go = vec![1u8; live];
    if let Err(e) = sys::write_all(go_w, &go) {
        let _ = e;
        return Err(watch.fail(None, None));
    }
    sys::close(go_w);
    // Every process has its fds (each loader was ready): our copies of the
    // shared objects go, or a pipe whose writers are all in the tree
    // would never reach end of file while we wait.
    close_objects(&ctx.objects);
    // Stand-ins are ours to reap (in a namespace, the init's).
    if !opts.pidns {
        for &s in &ctx.plan.stand_ins {
            let _ = sys::waitpid(s, false);
        }
    }
    watch.read_reports();
    // What the loaders said that was neither a warning nor a failure.
    for line in watch.kept.iter().filter(|l| !l.starts_with('#')) {
        eprintln!("{line}");
    }
    let processes = live + ctx.plan.zombies.len();
    if !opts.wait {
        return Ok(Restored {
            processes,
            root: ctx.plan.root,
            status: None,
        });
    }
    eprintln!(
        "crrestore-tree: restored {processes} process{} (root pid {}); waiting for it",
        if processes == 1 { "" } else { "es" },
        ctx.plan.root
    );
    let target = init.unwrap_or(ctx.plan.root);
    sys::forward_signals(target);
    // Reap whatever comes back to us (we are a subreaper) until the root
    // (or the init) ends; meanwhile relay what the loaders still say (a
    // failure after the barrier) until they have all closed their
    // report fd.
    let mut reporting = true;
    loop {
        // Without a namespace the status pipe's only writer is gone
        // (it would poll as hung up, always): not watched.
        let status_fd = if opts.pidns { root_status_r } else { -1 };
        let mut fds = vec![(status_fd, libc::POLLIN)];
        if reporting {
            fds.push((report_r, libc::POLLIN));
        }
        let r = sys::poll(&fds, 200).map_err(os_err("poll"))?;
        if reporting && r[1] != 0 {
            reporting = watch.relay();
        }
        if r[0] & libc::POLLIN != 0 {
            let mut code = [0u8; 4];
            if matches!(sys::read(root_status_r, &mut code), Ok(4)) {
                watch.relay();
                return Ok(Restored {
                    processes,
                    root: ctx.plan.root,
                    status: Some(i32::from_ne_bytes(code)),
                });
            }
        }
        match sys::waitpid(-1, true) {
            Ok(Some((pid, status))) if pid == target => {
                watch.relay();
                return Ok(Restored {
                    processes,
                    root: ctx.plan.root,
                    status: Some(exit_code_of(status)),
                });
            }
            Ok(_) => {}
            // Nothing of ours left to wait for: the root was reparented
            // away (it cannot be: we are its subreaper) or is gone.
            Err(e) => return Err(os_err("waiting for the root")(e)),
        }
    }
}

/// An exit code for a raw wait status: the code, or 128 + signal.
fn exit_code_of(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        1
    }
}

fn lift(fd: RawFd, base: RawFd) -> std::io::Result<RawFd> {
    let high = sys::dup_above(fd, base);
    sys::close(fd);
    high
}

/// The orchestrator's view of what it created.
struct Watch<'a> {
    ctx: &'a Ctx,
    report_r: RawFd,
    created_r: RawFd,
    /// pid (as in the manifest) → pidfd.
    pidfds: BTreeMap<i32, RawFd>,
    exited: Vec<i32>,
    /// Started, but gone before a pidfd could hold it (`--pidns`: its
    /// init reaps whatever dies).
    gone: Vec<i32>,
    init: Option<i32>,
    init_pidfd: Option<RawFd>,
    reports: String,
    /// Lines that are not warnings: failures, ours and the loaders'.
    kept: Vec<String>,
}

impl<'a> Watch<'a> {
    /// A watched process (not a zombie or stand-in to be) that has exited,
    /// asked without waiting.
    fn any_unexpected_exit(&mut self) -> Option<i32> {
        let watched: Vec<(i32, RawFd)> = self
            .pidfds
            .iter()
            .filter(|(pid, _)| !self.exited.contains(pid))
            .map(|(&p, &fd)| (p, fd))
            .collect();
        let fds: Vec<(RawFd, i16)> = watched.iter().map(|&(_, fd)| (fd, libc::POLLIN)).collect();
        let revents = sys::poll(&fds, 0).ok()?;
        watched
            .iter()
            .zip(revents)
            .find(|&(&(pid, _), r)| {
                r != 0
                    && !self.ctx.plan.zombies.contains(&pid)
                    && !self.ctx.plan.stand_ins.contains(&pid)
            })
            .map(|(&(pid, _), _)| pid)
    }

    fn new(ctx: &'a Ctx, report_r: RawFd, created_r: RawFd, init: Option<i32>) -> Self {
        // Non-blocking: drained whenever poll says so.
        for fd in [report_r, created_r] {
            // Failing, reads would block where poll said there is data.
            let _ = sys::set_nonblocking(fd);
        }
        Watch {
            ctx,
            report_r,
            created_r,
            pidfds: BTreeMap::new(),
            exited: Vec::new(),
            gone: Vec::new(),
            init,
            init_pidfd: init.and_then(|p| sys::pidfd_open(p).ok()),
            reports: String::new(),
            kept: Vec::new(),
        }
    }

    /// Open a pidfd on every process that said it started.
    fn collect_created(&mut self) {
        let mut buf = [0u8; 8 * 64];
        loop {
            let n = match sys::read(self.created_r, &mut buf) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            for rec in buf[..n].chunks_exact(8) {
                let inner = i32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
                let outer = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
                match sys::pidfd_open(outer) {
                    Ok(fd) => {
                        self.pidfds.insert(inner, fd);
                    }
                    // Gone (and reaped: the namespace's init reaps what
                    // dies) before it could be held: it exited.
                    Err(_) => self.gone.push(inner),
                }
            }
        }
    }

    /// A process that exited before it could be held by a pidfd and was
    /// not to (a zombie or a stand-in may).
    fn gone_unexpectedly(&self) -> Option<i32> {
        self.gone.iter().copied().find(|pid| {
            !self.ctx.plan.zombies.contains(pid) && !self.ctx.plan.stand_ins.contains(pid)
        })
    }

    /// Relay the loaders' warnings; keep everything for the error line.
    fn read_reports(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match sys::read(self.report_r, &mut buf) {
                Ok(n) if n > 0 => self.reports.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => break,
            }
        }
        // Complete lines that are not our own failure reports: relayed.
        while let Some(end) = self.reports.find('\n') {
            let line: String = self.reports.drain(..=end).collect();
            let line = line.trim_end().to_owned();
            if line.starts_with('#') || !line.contains("warning") {
                self.kept.push(line);
            } else {
                eprintln!("{line}");
            }
        }
    }

    /// Print what came on the report pipe since (every line: the tree
    /// runs); false once every writer has closed it.
    fn relay(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let open = match sys::read(self.report_r, &mut buf) {
            Ok(0) => false,
            Ok(n) => {
                self.reports.push_str(&String::from_utf8_lossy(&buf[..n]));
                true
            }
            Err(_) => true,
        };
        while let Some(end) = self.reports.find('\n') {
            let line: String = self.reports.drain(..=end).collect();
            eprintln!("{}", line.trim_end());
        }
        open
    }

    /// Kill everything made and say why, naming `pid` (the process seen
    /// dying first) or the process whose failure was reported.
    fn fail(&mut self, pid: Option<i32>, top: Option<TreeError>) -> TreeError {
        self.collect_created();
        for &fd in self.pidfds.values() {
            let _ = sys::pidfd_kill(fd, libc::SIGKILL);
        }
        if let Some(init) = self.init {
            let _ = sys::kill(init, libc::SIGKILL);
        }
        // Dead, each of them, before we say so (a pidfd is readable once
        // its process has exited).
        let mut fds: Vec<(RawFd, i16)> =
            self.pidfds.values().map(|&fd| (fd, libc::POLLIN)).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !fds.is_empty() && std::time::Instant::now() < deadline {
            let Ok(r) = sys::poll(&fds, 100) else { break };
            let mut still = r.iter().map(|&e| e == 0);
            fds.retain(|_| still.next().unwrap_or(false));
        }
        // Their messages may still be on the way: the pipe ends when all
        // writers are gone.
        wait_for_writers(self.report_r);
        self.read_reports();
        // Reap what is ours.
        while let Ok(Some(_)) = sys::waitpid(-1, true) {}
        let ours = self.kept.iter().find_map(|l| parse_own(l));
        if let Some((class, p, text)) = ours {
            if class == 'T' {
                return TreeError::PidTaken { pid: p, by: text };
            }
            return TreeError::Process { pid: p, why: text };
        }
        if let Some(e) = top {
            return e;
        }
        let loader_line = self
            .kept
            .iter()
            .rev()
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .cloned();
        // A loader names its own pid (`crimg-loader: pid N: ...`).
        let named = loader_line.as_deref().and_then(|l| {
            l.strip_prefix("crimg-loader: pid ")?
                .split_once(':')?
                .0
                .parse::<i32>()
                .ok()
        });
        let pid = named.or(pid).unwrap_or(self.ctx.plan.root);
        // `pid N: crimg-loader: what`, the pid said once.
        let why = loader_line.map(|l| match (named, l.split_once(": ")) {
            (Some(_), Some((_, rest))) => match rest.split_once(": ") {
                Some((_, what)) => format!("crimg-loader: {what}"),
                None => l,
            },
            _ => l,
        });
        TreeError::Process {
            pid,
            why: why.unwrap_or_else(|| "died before the tree could resume".into()),
        }
    }
}

/// `#C PID text` → (class, pid, text).
fn parse_own(line: &str) -> Option<(char, i32, String)> {
    let rest = line.strip_prefix('#')?;
    let mut chars = rest.chars();
    let class = chars.next()?;
    let rest = chars.as_str().trim_start();
    let (pid, text) = rest.split_once(' ')?;
    Some((class, pid.parse().ok()?, text.to_owned()))
}

/// Wait (up to 2 s) until every writer of pipe `fd` has closed it.
fn wait_for_writers(fd: RawFd) {
    for _ in 0..20 {
        match sys::poll(&[(fd, libc::POLLIN)], 100) {
            Ok(r) if r[0] & libc::POLLHUP != 0 => return,
            _ => {}
        }
    }
}

/// A message of the pre-exec code to the orchestrator.
fn report(ctx: &Ctx, class: char, pid: i32, text: &str) {
    let line = format!("#{class} {pid} {text}\n");
    let _ = sys::write_all(ctx.report_w, line.as_bytes());
}

/// Fail in a created process: say it, leave.
fn die(ctx: &Ctx, pid: i32, text: &str) -> ! {
    report(ctx, 'F', pid, text);
    sys::exit_now(1)
}

/// Fail in created process `pid` with `e` (a pid taken is said as such).
fn die_with(ctx: &Ctx, pid: i32, e: &TreeError) -> ! {
    match e {
        TreeError::PidTaken { pid, by } => report(ctx, 'T', *pid, by),
        e => report(ctx, 'F', pid, &error_text(e)),
    }
    sys::exit_now(1)
}

/// The `done` write end of this process (-1 in the orchestrator).
static MY_DONE: AtomicI32 = AtomicI32::new(-1);

/// Create a child (pid `pid`, or any with `None`; `new_pidns`: the init
/// of a new namespace) that runs `main` with its `done` write end; wait
/// until it says it is made. Returns its pid (as the creator sees it) and
/// whether it said so.
fn spawn(
    ctx: &Ctx,
    pid: Option<i32>,
    new_pidns: bool,
    main: impl FnOnce(&Ctx, RawFd),
) -> Result<(i32, bool), TreeError> {
    let (done_r, done_w) = sys::pipe().map_err(|source| TreeError::Os {
        what: "a pipe".into(),
        source,
    })?;
    let (done_r, done_w) = (
        lift(done_r, ctx.base).unwrap_or(done_r),
        lift(done_w, ctx.base).unwrap_or(done_w),
    );
    match sys::clone_with_pid(pid, new_pidns) {
        Ok(Cloned::Child) => {
            sys::close(done_r);
            // The creator's own `done` end is not ours to hold: its
            // creator must see EOF when it dies, whatever we do.
            let creators = MY_DONE.swap(done_w, Ordering::Relaxed);
            if creators >= 0 {
                sys::close(creators);
            }
            main(ctx, done_w);
            // `main` never returns (it execs or exits).
            sys::exit_now(1)
        }
        Ok(Cloned::Parent(child)) => {
            sys::close(done_w);
            let mut b = [0u8; 1];
            let ok = matches!(sys::read(done_r, &mut b), Ok(1));
            sys::close(done_r);
            Ok((child, ok))
        }
        Err(e) => {
            sys::close(done_r);
            sys::close(done_w);
            let pid = pid.unwrap_or(0);
            if e.raw_os_error() == Some(libc::EEXIST) {
                Err(TreeError::PidTaken {
                    pid,
                    by: pids::taken_by(pid),
                })
            } else {
                Err(TreeError::Process {
                    pid,
                    why: format!("clone3 with its pid failed: {e}"),
                })
            }
        }
    }
}

/// Run the steps of `me` from `from` on. In a created process it never
/// returns (it execs, dies as a zombie, or exits as a stand-in); the
/// orchestrator's top steps return when the tree is made.
fn run_steps(ctx: &Ctx, me: Actor, from: usize) -> Result<(), TreeError> {
    let steps = &ctx.plan.steps;
    let pid_of = |a: Actor| match a {
        Actor::Pid(p) => p,
        Actor::Top => 0,
    };
    let me_pid = pid_of(me);
    let fail = |text: String| -> TreeError {
        TreeError::Process {
            pid: me_pid,
            why: text,
        }
    };
    for (i, step) in steps.iter().enumerate().skip(from) {
        if step.actor() != me {
            continue;
        }
        match *step {
            Step::Fork { pid, .. } => {
                let (_, ok) = spawn(ctx, Some(pid), false, |ctx, done| {
                    process_main(ctx, pid, i + 1, done)
                })?;
                if !ok {
                    return Err(fail(format!("process {pid} failed")));
                }
            }
            Step::StandIn {
                pid,
                role: StandInRole::Session,
                ..
            } => {
                let (_, ok) = spawn(ctx, Some(pid), false, |ctx, done| {
                    stand_in_main(ctx, pid, i + 1, done)
                })?;
                if !ok {
                    return Err(fail(format!("stand-in {pid} failed")));
                }
            }
            Step::StandIn {
                pid,
                role: StandInRole::OrphanedSession,
                ..
            } => {
                // The members come back to us when it exits: we are their
                // parent, as in the dump (so we were a subreaper then).
                sys::become_subreaper()
                    .map_err(|e| fail(format!("PR_SET_CHILD_SUBREAPER: {e}")))?;
                let (child, ok) = spawn(ctx, Some(pid), false, |ctx, done| {
                    orphans_leader_main(ctx, pid, i + 1, done)
                })?;
                let _ = sys::waitpid(child, false);
                if !ok {
                    return Err(fail(format!("stand-in {pid} failed")));
                }
            }
            Step::StandIn {
                pid,
                role: StandInRole::Group,
                ..
            } => {
                // Through an intermediate that exits at once: the stand-in
                // is reparented to the orchestrator (or the init), which
                // reaps it; no restored process ever sees it as a child.
                let (mid, ok) = spawn(ctx, None, false, |ctx, done| {
                    match spawn(ctx, Some(pid), false, |ctx, done2| {
                        stand_in_main(ctx, pid, i + 1, done2)
                    }) {
                        Ok((_, true)) => {
                            let _ = sys::write_all(done, b"1");
                            sys::exit_now(0)
                        }
                        Ok((_, false)) => sys::exit_now(1),
                        Err(e) => die_with(ctx, pid, &e),
                    }
                })?;
                let _ = sys::waitpid(mid, false);
                if !ok {
                    return Err(fail(format!("stand-in {pid} failed")));
                }
            }
            Step::Setsid { .. } => {
                sys::setsid().map_err(|e| fail(format!("setsid: {e}")))?;
            }
            Step::Setpgid { pgid, .. } => {
                sys::setpgid(if pgid == me_pid { 0 } else { pgid })
                    .map_err(|e| fail(format!("setpgid({pgid}): {e}")))?;
            }
            Step::ControllingTerminal { .. } => {
                if let Some(tty) = ctx.objects.terminal {
                    let force = ctx.objects.force_ctty;
                    match sys::take_controlling_terminal(tty, force) {
                        Ok(()) => {}
                        // Another session's, and not ours to take.
                        Err(e) if !force && e.raw_os_error() == Some(libc::EPERM) => {
                            let line = format!("crrestore-tree: pid {me_pid}: warning: the terminal is another session's controlling terminal, which only a dump of crrestore-tree's own user may take: the tree runs without a controlling terminal\n");
                            let _ = sys::write_all(ctx.report_w, line.as_bytes());
                        }
                        Err(e) => {
                            return Err(fail(format!("TIOCSCTTY on the caller's terminal: {e}")))
                        }
                    }
                }
            }
            Step::Foreground { pgid, .. } => {
                if let Some(tty) = ctx.objects.terminal {
                    match sys::set_foreground(tty, pgid) {
                        // Not the session's terminal: it could not be taken.
                        Err(e)
                            if !ctx.objects.force_ctty
                                && e.raw_os_error() == Some(libc::ENOTTY) => {}
                        r => r.map_err(|e| fail(format!("TIOCSPGRP({pgid}): {e}")))?,
                    }
                }
            }
            // Placed just before the exec (`gathered`): checked here.
            Step::Place {
                fd, object, desc, ..
            } => {
                ctx.objects
                    .desc(object, desc)
                    .ok_or_else(|| fail(format!("fd {fd}: its shared object was not made")))?;
            }
            Step::Shmem { index, object, .. } => {
                ctx.objects
                    .memfds
                    .get(&object)
                    .ok_or_else(|| fail(format!("shared memory object {index} was not made")))?;
            }
            Step::Done { .. } => return Ok(()),
            Step::Zombie { .. } | Step::Exec { .. } => {}
        }
    }
    Ok(())
}

/// Say `pid` started, as the creator and as the orchestrator see it; a
/// process that cannot tell its outer pid dies with the reason (the
/// orchestrator must never watch, and kill, some other process by the
/// inner number).
fn register(ctx: &Ctx, pid: i32) {
    // /proc is the orchestrator's: /proc/self is our pid there.
    let outer = if ctx.pidns {
        match std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str().and_then(|s| s.parse().ok()))
        {
            Some(outer) => outer,
            None => die_with(
                ctx,
                pid,
                &TreeError::Process {
                    pid,
                    why: "cannot read its pid outside the new pid namespace (/proc/self)".into(),
                },
            ),
        }
    } else {
        pid
    };
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&pid.to_ne_bytes());
    rec[4..].copy_from_slice(&outer.to_ne_bytes());
    let _ = sys::write_all(ctx.created_w, &rec);
}

/// The life of a created process of the tree.
fn process_main(ctx: &Ctx, pid: i32, from: usize, done: RawFd) -> ! {
    register(ctx, pid);
    sys::default_signals();
    if let Err(e) = run_steps(ctx, Actor::Pid(pid), from) {
        die_with(ctx, pid, &e);
    }
    // The steps ran up to `Done`: the places and shmem are gathered again
    // below, in the order they were planned.
    let (places, shmem) = gathered(ctx, pid);
    let last = ctx
        .plan
        .steps
        .iter()
        .rev()
        .find(|s| s.actor() == Actor::Pid(pid))
        .cloned();
    match last {
        Some(Step::Zombie { status, .. }) => {
            if let Some(comm) = ctx.comms.get(&pid).filter(|c| !c.is_empty()) {
                sys::set_name(comm);
            }
            let _ = sys::write_all(done, b"1");
            sys::close(done);
            wait_release(ctx);
            match status {
                WaitStatus::Exited(code) => sys::exit_now(code),
                WaitStatus::Signaled(sig) => sys::die_of(sig),
            }
        }
        _ => exec_loader(ctx, pid, &places, &shmem, done),
    }
}

fn error_text(e: &TreeError) -> String {
    match e {
        TreeError::Process { why, .. } => why.clone(),
        e => e.to_string(),
    }
}

/// An fd number of the task and the orchestrator's fd it gets.
type FdFrom = (i32, RawFd);
/// A SHMEM note index of the task and the orchestrator's memfd for it.
type ShmemFrom = (u32, RawFd);

/// The `Place` and `Shmem` steps of `pid`, resolved to the orchestrator's fds.
fn gathered(ctx: &Ctx, pid: i32) -> (Vec<FdFrom>, Vec<ShmemFrom>) {
    let mut places = Vec::new();
    let mut shmem = Vec::new();
    for s in &ctx.plan.steps {
        match *s {
            Step::Place {
                pid: p,
                fd,
                object,
                desc,
            } if p == pid => {
                if let Some(src) = ctx.objects.desc(object, desc) {
                    places.push((fd, src));
                }
            }
            Step::Shmem {
                pid: p,
                index,
                object,
            } if p == pid => {
                if let Some(&src) = ctx.objects.memfds.get(&object) {
                    shmem.push((index, src));
                }
            }
            _ => {}
        }
    }
    (places, shmem)
}

/// Until the orchestrator closes `release` (the tree exists). Our copies
/// of the orchestrator's write ends go first: they are still those
/// pipes here (no process of the tree closes them before it execs or
/// gets here, so their numbers are never reused on the way down).
fn wait_release(ctx: &Ctx) {
    sys::close(ctx.release_w);
    sys::close(ctx.go_w);
    let mut b = [0u8; 1];
    while matches!(sys::read(ctx.release_r, &mut b), Ok(n) if n > 0) {}
}

/// A stand-in: its steps (a session's: `setsid`, the terminal, its
/// members; a group's: `setpgid`), then it waits for the tree and exits.
fn stand_in_main(ctx: &Ctx, pid: i32, from: usize, done: RawFd) -> ! {
    register(ctx, pid);
    sys::default_signals();
    if let Err(e) = run_steps(ctx, Actor::Pid(pid), from) {
        die_with(ctx, pid, &e);
    }
    let _ = sys::write_all(done, b"1");
    sys::close(done);
    wait_release(ctx);
    sys::exit_now(0)
}

/// The stand-in leader of an orphaned session: `setsid`, the members,
/// then it exits at once so that they are its creator's children.
fn orphans_leader_main(ctx: &Ctx, pid: i32, from: usize, done: RawFd) -> ! {
    register(ctx, pid);
    sys::default_signals();
    if let Err(e) = run_steps(ctx, Actor::Pid(pid), from) {
        die_with(ctx, pid, &e);
    }
    let _ = sys::write_all(done, b"1");
    sys::exit_now(0)
}

/// The init of a new pid namespace: the top steps, then it reaps every
/// orphan until the tree is gone (its exit would kill the namespace),
/// and exits with the root's status.
fn init_main(ctx: &Ctx, done: RawFd) -> ! {
    sys::default_signals();
    // A group of its own: the caller's terminal signals reach it through
    // the orchestrator (which forwards them), not twice; and it is not one
    // of the caller's job's processes.
    if let Err(e) = sys::setpgid(0) {
        die(
            ctx,
            ctx.plan.root,
            &format!("the namespace's init: setpgid: {e}"),
        );
    }
    if let Err(e) = run_steps(ctx, Actor::Top, 0) {
        die_with(ctx, ctx.plan.root, &e);
    }
    let _ = sys::write_all(done, b"1");
    // Nothing of the caller's stays open here, but the root's status pipe.
    let keep = u32::try_from(ctx.root_status_w).unwrap_or(0);
    let _ = sys::close_range(0, keep.saturating_sub(1));
    let _ = sys::close_range(keep + 1, u32::MAX);
    let root = ctx.plan.root;
    sys::forward_signals(root);
    let mut status = 0;
    loop {
        match sys::waitpid(-1, false) {
            Ok(Some((pid, st))) if pid == root => {
                status = exit_code_of(st);
                let _ = sys::write_all(ctx.root_status_w, &status.to_ne_bytes());
            }
            Ok(_) => {}
            Err(_) => sys::exit_now(status),
        }
    }
}

/// Place the fds and exec the loader.
fn exec_loader(ctx: &Ctx, pid: i32, places: &[FdFrom], shmem: &[ShmemFrom], done: RawFd) -> ! {
    let Some((image, max_fd)) = ctx.images.get(&pid) else {
        die(ctx, pid, "no image")
    };
    let (r, g, e) = (max_fd + 1, max_fd + 2, max_fd + 3);
    let mut keep: Vec<i32> = Vec::new();
    // The image file the orchestrator checked, by its fd (first: the
    // placements below may take its number): the loader restores that
    // file, not whatever the path names by then.
    let image_at = e + 1 + i32::try_from(shmem.len()).unwrap_or(0);
    if let Err(err) = sys::dup2(*image, image_at) {
        die(ctx, pid, &format!("placing the image's fd: {err}"));
    }
    keep.push(image_at);
    let image = PathBuf::from(format!("/proc/self/fd/{image_at}"));
    for &(fd, src) in places {
        if let Err(err) = sys::dup2(src, fd) {
            die(ctx, pid, &format!("placing fd {fd}: {err}"));
        }
        keep.push(fd);
    }
    let mut args: Vec<CString> = vec![ctx.loader.clone(), cstring(&image)];
    args.push(c("--same-ids"));
    args.push(c("--tree"));
    for &(fd, _) in places {
        args.push(c("--placed"));
        args.push(c(&fd.to_string()));
    }
    for (k, &(index, src)) in shmem.iter().enumerate() {
        let fd = e + 1 + i32::try_from(k).unwrap_or(0);
        if let Err(err) = sys::dup2(src, fd) {
            die(
                ctx,
                pid,
                &format!("placing shared memory object {index}: {err}"),
            );
        }
        keep.push(fd);
        args.push(c("--shmem"));
        args.push(c(&format!("{index}={fd}")));
    }
    for (src, to) in [(ctx.ready_w, r), (ctx.go_r, g), (ctx.report_w, e)] {
        if let Err(err) = sys::dup2(src, to) {
            die(ctx, pid, &format!("placing the barrier's fd {to}: {err}"));
        }
        keep.push(to);
    }
    args.push(c("--barrier"));
    args.push(c(&format!("{r},{g}")));
    args.push(c("--report"));
    args.push(c(&e.to_string()));
    // Made, with the subtree: the parent goes on.
    let _ = sys::write_all(done, b"1");
    sys::close(done);
    // Every other fd closed (the high ones are close-on-exec, but fds the
    // caller gave without it are not).
    keep.sort_unstable();
    let mut next = 0i32;
    for &k in &keep {
        if k > next {
            let _ = sys::close_range(
                u32::try_from(next).unwrap_or(0),
                u32::try_from(k - 1).unwrap_or(0),
            );
        }
        next = k + 1;
    }
    let top = keep.last().copied().unwrap_or(0) + 1;
    let _ = sys::close_range(u32::try_from(top).unwrap_or(0), u32::MAX);
    let err = sys::exec_blocked(&ctx.loader, &args);
    let line = format!(
        "#F {pid} cannot execute the loader {}: {err}\n",
        Path::new(std::ffi::OsStr::from_bytes(ctx.loader.as_bytes())).display()
    );
    let _ = sys::write_all(e, line.as_bytes());
    sys::exit_now(127)
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap_or_default()
}

fn cstring(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Close the orchestrator's copies of the shared objects.
fn close_objects(objects: &Objects) {
    for &fd in objects
        .descs
        .values()
        .chain(objects.memfds.values())
        .chain(objects.terminal.iter())
    {
        sys::close(fd);
    }
}

/// Raise the soft `RLIMIT_NOFILE` to the hard one: the shared objects,
/// pipes and pidfds are held above every fd of the tree (from `base`).
/// Refused before anything is made when even the hard limit is too low.
fn room_for_fds(dump: &Dump, plan: &TreePlan, base: RawFd) -> Result<(), TreeError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let os = |what: &str, e: nix::Error| TreeError::Os {
        what: what.into(),
        source: std::io::Error::from(e),
    };
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| os("getrlimit(RLIMIT_NOFILE)", e))?;
    // Six pipes, one fd per shared description, one pidfd per process,
    // and a few for the loader's own use.
    let needed = u64::try_from(base).unwrap_or(u64::MAX)
        + 12
        + plan
            .objects
            .iter()
            .map(|o| o.holders.len() as u64)
            .sum::<u64>()
        + plan.pids().count() as u64
        + 16;
    if needed > hard {
        let pid = dump
            .images
            .iter()
            .max_by_key(|(_, i)| i.max_fd)
            .map_or(plan.root, |(&p, _)| p);
        return Err(TreeError::Shape {
            pid,
            why: format!(
                "the tree needs {needed} fds open at once (its highest fd is {}), above this \
                 machine's hard RLIMIT_NOFILE of {hard}",
                dump.max_fd()
            ),
        });
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map_err(|e| os("setrlimit(RLIMIT_NOFILE)", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_report_lines_name_their_class_and_pid() {
        assert_eq!(
            parse_own("#T 1234 bash"),
            Some(('T', 1234, "bash".to_owned()))
        );
        assert_eq!(
            parse_own("#F 77 setpgid(70): Operation not permitted"),
            Some(('F', 77, "setpgid(70): Operation not permitted".to_owned()))
        );
        // The loaders' lines are not ours.
        assert_eq!(parse_own("crimg-loader: /d/task-1.crimg: no"), None);
        assert_eq!(parse_own("#F notapid text"), None);
    }

    #[test]
    fn exit_codes_of_wait_statuses() {
        assert_eq!(exit_code_of(7 << 8), 7);
        assert_eq!(exit_code_of(15), 128 + 15);
    }
}
