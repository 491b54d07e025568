//! The process-creation plan: a pure function from the manifest to the
//! ordered list of steps that rebuild the tree (who forks whom, `setsid`
//! and `setpgid`, stand-ins for vanished session and group leaders, the
//! controlling terminal and its foreground group, which fd of each
//! process comes from which shared object, zombies, the exec).
//!
//! The order is the creation order, depth first, children by pid: every
//! step of a process comes after the step that creates it, and every step
//! of its parent that follows its creation comes after its whole subtree.
//! So one scan of the list does it: each process runs the steps whose
//! [`Step::actor`] it is, in order, from the step after its own creation.

use std::collections::{BTreeMap, BTreeSet};

use image_manifest::{Holder, Manifest, ManifestProcess, SharedKind, SharedObject, WaitStatus};

use binfmt_loader::args;

use super::error::TreeError;

/// Who does a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Actor {
    /// The orchestrator, or with `--pidns` the namespace's init (pid 1).
    Top,
    /// The process (or stand-in) with that pid, before it execs.
    Pid(i32),
}

/// What a stand-in stands in for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandInRole {
    /// A session whose leader is gone: `setsid`, then it creates the
    /// members (they inherit the session); they are reparented to the
    /// orchestrator (or the init) when it exits.
    Session,
    /// A session whose leader is gone, whose members are children of a
    /// subreaper of the tree (their parent when the leader exited): made
    /// by that parent, it creates the members, tells it, and exits; the
    /// parent, a child subreaper from then on, reaps it and the members
    /// are its children.
    OrphanedSession,
    /// A process group whose leader is gone: `setpgid(0, 0)` in its
    /// creator's session, made through an intermediate that exits at once
    /// so that the orchestrator, never a restored process, reaps it.
    Group,
}

/// One step of the restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `by` creates process `pid` of the tree (`clone3` with `set_tid`).
    Fork {
        by: Actor,
        pid: i32,
    },
    /// `by` creates a stand-in with pid `pid`, which exits once the tree
    /// exists.
    StandIn {
        by: Actor,
        pid: i32,
        role: StandInRole,
    },
    Setsid {
        pid: i32,
    },
    /// `setpgid(0, pgid)` in `pid`.
    Setpgid {
        pid: i32,
        pgid: i32,
    },
    /// `TIOCSCTTY` (force) on the caller's terminal, in session leader
    /// `pid` (a process or a session stand-in).
    ControllingTerminal {
        pid: i32,
    },
    /// `TIOCSPGRP(pgid)` on it, SIGTTOU blocked, once the group exists.
    Foreground {
        pid: i32,
        pgid: i32,
    },
    /// Description `desc` of shared object `object` (an index in
    /// [`TreePlan::objects`]) at fd `fd` of `pid`.
    Place {
        pid: i32,
        fd: i32,
        object: usize,
        desc: u32,
    },
    /// Shared memory object `object` is object `index` of `pid`'s SHMEM
    /// note (`--shmem INDEX=FD`).
    Shmem {
        pid: i32,
        index: u32,
        object: usize,
    },
    /// `pid` tells its creator it is made (with its subtree).
    Done {
        pid: i32,
    },
    /// Once the tree exists, `pid` ends as recorded: a zombie its parent
    /// has not reaped.
    Zombie {
        pid: i32,
        status: WaitStatus,
    },
    /// `pid` execs the loader on its image.
    Exec {
        pid: i32,
    },
}

impl Step {
    pub fn actor(&self) -> Actor {
        match *self {
            Step::Fork { by, .. } | Step::StandIn { by, .. } => by,
            Step::Setsid { pid }
            | Step::Setpgid { pid, .. }
            | Step::ControllingTerminal { pid }
            | Step::Foreground { pid, .. }
            | Step::Place { pid, .. }
            | Step::Shmem { pid, .. }
            | Step::Done { pid }
            | Step::Zombie { pid, .. }
            | Step::Exec { pid } => Actor::Pid(pid),
        }
    }
}

/// What the plan is made from, besides the manifest.
pub struct PlanInput<'a> {
    pub manifest: &'a Manifest,
    /// Restoring into a new pid namespace: every pid is free.
    pub pidns: bool,
    /// The root's stdio fds the loader would take from its caller
    /// (`rules::fd_is_inherited`) that no shared object of the manifest
    /// holds: they come from the orchestrator's caller too.
    pub root_stdio: &'a [i32],
    /// Whether the caller has a terminal to give as controlling terminal.
    pub caller_tty: bool,
    /// Whether pid number N is in use now: by a process, or as the
    /// process group or session id of one (the kernel keeps the number
    /// while any process has it as one of them, so a stand-in cannot take
    /// it). The root's session leader may be outside the tree and alive,
    /// or gone while the session lives on in processes outside the tree.
    pub in_use: &'a dyn Fn(i32) -> bool,
    /// The session and process group the restore runs in (what its
    /// processes inherit); `None` when not known (the dump's own check).
    pub caller: Option<Caller>,
}

/// The session and process group of the restorer's caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub sid: i32,
    pub pgid: i32,
}

/// The tree's steps and what they refer to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreePlan {
    pub root: i32,
    pub steps: Vec<Step>,
    /// The manifest's shared objects, then one `Caller` object per fd of
    /// [`PlanInput::root_stdio`].
    pub objects: Vec<SharedObject>,
    /// Processes that exec an image, in creation order.
    pub live: Vec<i32>,
    /// Processes that end as zombies.
    pub zombies: Vec<i32>,
    /// Stand-ins, in creation order.
    pub stand_ins: Vec<i32>,
    /// Things done differently from the dump, for `-v`.
    pub notes: Vec<String>,
}

impl TreePlan {
    /// Every pid the restore creates (processes and stand-ins).
    pub fn pids(&self) -> impl Iterator<Item = i32> + '_ {
        self.steps.iter().filter_map(|s| match *s {
            Step::Fork { pid, .. } | Step::StandIn { pid, .. } => Some(pid),
            _ => None,
        })
    }

    /// The index of the step that creates `pid`.
    pub fn creation(&self, pid: i32) -> Option<usize> {
        self.steps.iter().position(
            |s| matches!(*s, Step::Fork { pid: p, .. } | Step::StandIn { pid: p, .. } if p == pid),
        )
    }
}

fn shape(pid: i32, why: impl Into<String>) -> TreeError {
    TreeError::Shape {
        pid,
        why: why.into(),
    }
}

/// The plan of `input.manifest`'s tree.
pub fn plan(input: &PlanInput<'_>) -> Result<TreePlan, TreeError> {
    let m = input.manifest;
    let root = m
        .root_pid()
        .ok_or_else(|| shape(0, "the manifest lists no process"))?;
    if m.version < 2 && m.processes.len() > 1 {
        return Err(shape(
            root,
            format!(
                "a version-{} manifest lists {} separate dumps, not a tree; restore each image on its own",
                m.version,
                m.processes.len()
            ),
        ));
    }
    let by_pid: BTreeMap<i32, &ManifestProcess> = m.processes.iter().map(|p| (p.pid, p)).collect();
    if by_pid.len() != m.processes.len() {
        return Err(shape(root, "the manifest lists a pid twice"));
    }
    let root_p = *by_pid
        .get(&root)
        .ok_or_else(|| shape(root, "the root is not among the manifest's processes"))?;
    let mut children: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in &m.processes {
        if p.pid <= 0 {
            return Err(shape(p.pid, "not a valid pid"));
        }
        if p.sid < 0 || p.pgid < 0 || (p.pgid == UNSEEN && p.sid != UNSEEN) {
            return Err(shape(
                p.pid,
                format!("not a valid session {} and process group {}", p.sid, p.pgid),
            ));
        }
        if p.image.is_none() != p.zombie.is_some() {
            return Err(shape(
                p.pid,
                "a process needs an image, a zombie its wait status (and nothing else)",
            ));
        }
        if p.pid == root {
            continue;
        }
        if !by_pid.contains_key(&p.ppid) {
            return Err(shape(
                p.pid,
                format!("its parent {} is not in the tree", p.ppid),
            ));
        }
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut b = Builder {
        by_pid: &by_pid,
        children: &children,
        steps: Vec::new(),
        notes: Vec::new(),
        made: BTreeSet::new(),
        live: Vec::new(),
        zombies: Vec::new(),
        stand_ins: Vec::new(),
        caller_tty: input.caller_tty,
        root_tty: root_p.tty_nr,
        places: BTreeMap::new(),
    };
    let mut objects = m.shared.clone();
    for &fd in input.root_stdio {
        objects.push(SharedObject {
            kind: SharedKind::Caller,
            caller_fd: Some(fd),
            holders: vec![Holder {
                pid: root,
                fd: Some(fd),
                desc: 1,
                shmem: None,
            }],
        });
    }
    b.places = placements(&objects, &by_pid)?;

    // The root's session and group.
    let mut root_by = Actor::Top;
    let mut root_group = GroupIs::Own;
    if root_p.sid != root_p.pid {
        // A session without an id cannot be made again (there is no pid
        // to give a stand-in); it is left like one in use outside the tree.
        if root_p.sid != UNSEEN && (input.pidns || !(input.in_use)(root_p.sid)) {
            let s = root_p.sid;
            if by_pid.contains_key(&s) {
                return Err(shape(
                    root,
                    format!("its session leader {s} is its descendant"),
                ));
            }
            b.stand_in(Actor::Top, s, StandInRole::Session);
            if (input.in_use)(s) {
                // Its leader runs outside the tree (the shell it was
                // started from): that session keeps its terminal.
                if root_p.tty_nr != 0 {
                    b.notes.push(format!(
                        "pid {root}: session {s} is made again in the new pid namespace without its controlling terminal (its leader outside the tree still has it)"
                    ));
                }
            } else {
                b.session_leader(s, root_p.tty_nr, true);
            }
            root_by = Actor::Pid(s);
            root_group = if root_p.pgid == s {
                GroupIs::Inherited
            } else if root_p.pgid == root {
                GroupIs::Own
            } else if by_pid.contains_key(&root_p.pgid) {
                return Err(shape(
                    root,
                    format!("its group leader {} is its descendant", root_p.pgid),
                ));
            } else {
                b.stand_in(Actor::Pid(s), root_p.pgid, StandInRole::Group);
                GroupIs::Join(root_p.pgid)
            };
        } else {
            // The session lives on outside the tree (its leader runs, or
            // other members do after it exited): it cannot be made again
            // with its id, and the tree runs in the caller's session and
            // group, which are the dump's own when the caller is in them
            // (crrestore-tree run from where the tree ran).
            // With --pidns, the namespace's init is in the caller's
            // session but leads a group of its own, which the root joins.
            let same_session = input.caller.is_some_and(|c| c.sid == root_p.sid);
            let same_group = !input.pidns && input.caller.is_some_and(|c| c.pgid == root_p.pgid);
            if root_p.sid == UNSEEN {
                b.notes.push(format!(
                    "pid {root}: its session has no id in the dump's pid namespace (its leader is outside it, as with the session the machine's init started in): the tree runs in the caller's session"
                ));
            } else if !same_session {
                b.notes.push(format!(
                    "pid {root}: its session {} (in use outside the tree) is not recreated: the tree runs in the caller's session",
                    root_p.sid
                ));
            }
            root_group = if root_p.pgid == root {
                GroupIs::Own
            } else {
                if !same_group {
                    let group = if root_p.pgid == UNSEEN {
                        "its process group, which has no id in the dump's pid namespace,".to_owned()
                    } else {
                        format!("its process group {} (outside the tree)", root_p.pgid)
                    };
                    let runs_in = if input.pidns {
                        // Its own, in the caller's session: where the
                        // caller has a terminal, the tree is not its
                        // foreground job (a read of it stops on SIGTTIN).
                        "the namespace's init's group, in the background of the caller's terminal if it has one"
                    } else {
                        "the caller's group"
                    };
                    b.notes.push(format!(
                        "pid {root}: {group} is not recreated: the tree runs in {runs_in}"
                    ));
                }
                GroupIs::Inherited
            };
        }
    }
    b.process(root_by, root_p, root_group)?;
    if let Actor::Pid(s) = root_by {
        b.foreground_and_done(s, root_p.tpgid, true);
    }
    // Every process of the manifest is made: one the root's descendants
    // do not reach (a cycle of parents, a session entered otherwise) is
    // refused, not left out.
    if let Some(p) = m.processes.iter().find(|p| !b.made.contains(&p.pid)) {
        return Err(shape(
            p.pid,
            format!(
                "it is not made by the restore of the tree of {root} (its parent {} is not reached from the root)",
                p.ppid
            ),
        ));
    }

    let plan = TreePlan {
        root,
        steps: b.steps,
        objects,
        live: b.live,
        zombies: b.zombies,
        stand_ins: b.stand_ins,
        notes: b.notes,
    };
    check_groups(&plan, &by_pid)?;
    Ok(plan)
}

/// The session or process group id `/proc/PID/stat` gives when its
/// leader has no pid in the reader's pid namespace: the session (and group)
/// the first process of the machine started in, which every process that
/// never called `setsid()` is still in (CI runs there), or one made in an
/// ancestor namespace. No pid can be given to it: it is never made again.
pub const UNSEEN: i32 = 0;

/// How a process gets its process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GroupIs {
    /// From its creator, as it is.
    Inherited,
    /// Its own (`setpgid(0, 0)`; `setsid` makes one too).
    Own,
    /// `setpgid(0, G)`: a group made earlier.
    Join(i32),
}

struct Builder<'a> {
    by_pid: &'a BTreeMap<i32, &'a ManifestProcess>,
    children: &'a BTreeMap<i32, Vec<i32>>,
    steps: Vec<Step>,
    notes: Vec<String>,
    /// Pids created so far (processes and stand-ins).
    made: BTreeSet<i32>,
    live: Vec<i32>,
    zombies: Vec<i32>,
    stand_ins: Vec<i32>,
    caller_tty: bool,
    root_tty: u64,
    /// Per process: its `Place` and `Shmem` steps.
    places: BTreeMap<i32, Vec<Step>>,
}

impl Builder<'_> {
    fn stand_in(&mut self, by: Actor, pid: i32, role: StandInRole) {
        self.steps.push(Step::StandIn { by, pid, role });
        self.made.insert(pid);
        self.stand_ins.push(pid);
        if role == StandInRole::Group {
            // Made through an intermediate: it has nothing of its own to do.
            self.steps.push(Step::Setpgid { pid, pgid: pid });
            self.steps.push(Step::Done { pid });
        } else {
            self.steps.push(Step::Setsid { pid });
        }
    }

    /// The terminal steps of session leader `pid` right after `setsid`;
    /// `exits`: the leader is a stand-in or a zombie.
    fn session_leader(&mut self, pid: i32, tty_nr: u64, exits: bool) {
        if tty_nr == 0 {
            return;
        }
        if exits {
            // A session leader that exits hangs its controlling terminal
            // up: the kernel sends SIGHUP to the terminal's foreground
            // group (the tree's job) and the session loses the terminal.
            self.notes.push(format!(
                "pid {pid}: this session leader only exits once the tree is made (a stand-in or a zombie): the session gets no controlling terminal, which its exit would hang up on the tree"
            ));
        } else if tty_nr != self.root_tty {
            self.notes.push(format!(
                "pid {pid}: its controlling terminal (device {tty_nr:#x}) is not the root's: not restored"
            ));
        } else if !self.caller_tty {
            self.notes.push(format!(
                "pid {pid}: the caller has no terminal: its controlling terminal is not restored"
            ));
        } else {
            self.steps.push(Step::ControllingTerminal { pid });
        }
    }

    /// After session leader `pid`'s subtree: its foreground group (when
    /// it got the terminal back), then its `Done`.
    fn foreground_and_done(&mut self, pid: i32, tpgid: i32, stand_in: bool) {
        let has_tty = self.steps.contains(&Step::ControllingTerminal { pid });
        if has_tty && tpgid > 0 {
            if self.made.contains(&tpgid) || self.group_exists(tpgid) {
                self.steps.push(Step::Foreground { pid, pgid: tpgid });
            } else {
                self.notes.push(format!(
                    "pid {pid}: its terminal's foreground group {tpgid} is not in the tree: not restored"
                ));
            }
        }
        if stand_in {
            self.steps.push(Step::Done { pid });
        }
    }

    /// Whether a process made so far has `pgid` as its group.
    fn group_exists(&self, pgid: i32) -> bool {
        self.made
            .iter()
            .any(|pid| self.by_pid.get(pid).is_some_and(|p| p.pgid == pgid))
    }

    /// Child `child` made by `by`, whose process group is `creator_pgid`.
    fn child(
        &mut self,
        by: Actor,
        creator_pgid: i32,
        child: &ManifestProcess,
    ) -> Result<(), TreeError> {
        let c = child.pid;
        let g = if child.sid == child.pid || child.pgid == child.pid {
            GroupIs::Own
        } else if child.pgid == creator_pgid {
            GroupIs::Inherited
        } else if child.pgid == UNSEEN {
            return Err(shape(
                c,
                format!(
                    "it is in a process group without an id in the dump's pid namespace, and its creator in group {creator_pgid}"
                ),
            ));
        } else if self.by_pid.contains_key(&child.pgid) {
            if !self.made.contains(&child.pgid) {
                return Err(shape(
                    c,
                    format!(
                        "its process group's leader {} is created after it (not supported yet)",
                        child.pgid
                    ),
                ));
            }
            GroupIs::Join(child.pgid)
        } else {
            if !self.made.contains(&child.pgid) {
                self.stand_in(by, child.pgid, StandInRole::Group);
            }
            GroupIs::Join(child.pgid)
        };
        self.process(by, child, g)
    }

    fn process(&mut self, by: Actor, p: &ManifestProcess, group: GroupIs) -> Result<(), TreeError> {
        self.steps.push(Step::Fork { by, pid: p.pid });
        self.made.insert(p.pid);
        if p.zombie.is_some() {
            self.zombies.push(p.pid);
        } else {
            self.live.push(p.pid);
        }
        let leader = p.pid == p.sid;
        if leader {
            self.steps.push(Step::Setsid { pid: p.pid });
            self.session_leader(p.pid, p.tty_nr, p.zombie.is_some());
        } else {
            match group {
                GroupIs::Inherited => {}
                GroupIs::Own => self.steps.push(Step::Setpgid {
                    pid: p.pid,
                    pgid: p.pid,
                }),
                GroupIs::Join(g) => self.steps.push(Step::Setpgid {
                    pid: p.pid,
                    pgid: g,
                }),
            }
        }
        if let Some(kids) = self.children.get(&p.pid) {
            for &c in kids {
                let child = self.by_pid[&c];
                if child.sid == child.pid || child.sid == p.sid {
                    self.child(Actor::Pid(p.pid), p.pgid, child)?;
                    continue;
                }
                let s = child.sid;
                if s == UNSEEN {
                    return Err(shape(
                        c,
                        format!(
                            "it is in a session without an id in the dump's pid namespace but its parent {} is in session {}",
                            p.pid, p.sid
                        ),
                    ));
                }
                if self.by_pid.contains_key(&s) {
                    return Err(shape(
                        c,
                        format!(
                            "it is in session {s} but its parent {} is in session {}: a session entered otherwise than by setsid or fork cannot be made again",
                            p.pid, p.sid
                        ),
                    ));
                }
                if self.made.contains(&s) {
                    // Made with the first of them, below.
                    continue;
                }
                // Orphans of a vanished session leader, reparented to
                // their subreaper `p`: a stand-in leader makes them, then
                // exits, and they come back to `p` (a subreaper again).
                self.stand_in(Actor::Pid(p.pid), s, StandInRole::OrphanedSession);
                self.notes.push(format!(
                    "pid {}: made a child subreaper again (the members of session {s}, whose leader is gone, are its children)",
                    p.pid
                ));
                for &o in kids {
                    let orphan = self.by_pid[&o];
                    if orphan.sid == s && orphan.pid != s {
                        self.child(Actor::Pid(s), s, orphan)?;
                    }
                }
                self.steps.push(Step::Done { pid: s });
            }
        }
        if leader {
            self.foreground_and_done(p.pid, p.tpgid, false);
        }
        if let Some(places) = self.places.remove(&p.pid) {
            if p.zombie.is_some() {
                return Err(shape(p.pid, "a zombie holds a shared object"));
            }
            self.steps.extend(places);
        }
        self.steps.push(Step::Done { pid: p.pid });
        match p.zombie {
            Some(status) => {
                if let WaitStatus::Exited(code) = status {
                    if !(0..=255).contains(&code) {
                        return Err(shape(
                            p.pid,
                            format!("a zombie with exit code {code}, which no exit gives"),
                        ));
                    }
                }
                if let WaitStatus::Signaled(sig) = status {
                    if !kills_by_default(sig) {
                        return Err(shape(
                            p.pid,
                            format!(
                                "a zombie killed by signal {sig}, which does not kill by default"
                            ),
                        ));
                    }
                }
                self.steps.push(Step::Zombie { pid: p.pid, status });
            }
            None => self.steps.push(Step::Exec { pid: p.pid }),
        }
        Ok(())
    }
}

/// Whether signal `sig`'s default action ends the process (so a zombie
/// killed by it can die of it again).
pub fn kills_by_default(sig: i32) -> bool {
    // Not: SIGCHLD 17, SIGCONT 18, SIGSTOP 19, SIGTSTP 20, SIGTTIN 21,
    // SIGTTOU 22, SIGURG 23, SIGWINCH 28 (ignore or stop).
    (1..=64).contains(&sig) && !matches!(sig, 17..=23 | 28)
}

/// Each holder's `Place` (fd holders) and `Shmem` (shared memory, once
/// per process and object) steps, by pid; holders must be live processes
/// of the tree.
fn placements(
    objects: &[SharedObject],
    by_pid: &BTreeMap<i32, &ManifestProcess>,
) -> Result<BTreeMap<i32, Vec<Step>>, TreeError> {
    let mut out: BTreeMap<i32, Vec<Step>> = BTreeMap::new();
    let mut fds: BTreeSet<(i32, i32)> = BTreeSet::new();
    for (i, o) in objects.iter().enumerate() {
        if o.kind == SharedKind::Caller && !o.caller_fd.is_some_and(|fd| (0..=2).contains(&fd)) {
            let pid = o.holders.first().map_or(0, |h| h.pid);
            return Err(shape(
                pid,
                "a caller's object without its stdio fd (0, 1 or 2)",
            ));
        }
        for h in &o.holders {
            if !by_pid.contains_key(&h.pid) {
                return Err(shape(h.pid, "holds a shared object but is not in the tree"));
            }
            let steps = out.entry(h.pid).or_default();
            if let Some(fd) = h.fd {
                if !fds.insert((h.pid, fd)) {
                    return Err(TreeError::Object {
                        pid: h.pid,
                        fd,
                        why: "the manifest places two shared objects at this fd".into(),
                    });
                }
                steps.push(Step::Place {
                    pid: h.pid,
                    fd,
                    object: i,
                    desc: h.desc,
                });
            }
            if let Some(index) = h.shmem {
                if o.kind != SharedKind::Shmem {
                    return Err(shape(
                        h.pid,
                        "a shmem index on an object that is not shared memory",
                    ));
                }
                let step = Step::Shmem {
                    pid: h.pid,
                    index,
                    object: i,
                };
                if !steps.contains(&step) {
                    steps.push(step);
                }
            }
        }
    }
    // What one loader takes as arguments (`--placed`, `--shmem`): a tree
    // with more is refused here, before crdump kills it or anything is
    // made, not by a loader once part of the tree exists. Room is kept
    // for the root's stdio from the caller (3 places the dump does not
    // know of), so a dump crdump accepts is restorable from any caller.
    let most = args::MAX_PLACED - 3;
    for (&pid, steps) in &out {
        let placed = steps
            .iter()
            .filter(|s| matches!(s, Step::Place { object, .. } if objects[*object].kind != SharedKind::Caller))
            .count();
        let shmem = steps
            .iter()
            .filter(|s| matches!(s, Step::Shmem { .. }))
            .count();
        if placed > most || shmem > args::MAX_SHMEM {
            return Err(shape(
                pid,
                format!(
                    "it shares {placed} fds and {shmem} shared memory objects with other processes of the tree: a restore places at most {most} and {}",
                    args::MAX_SHMEM
                ),
            ));
        }
    }
    Ok(out)
}

/// Every `setpgid(0, G)` joins a group that exists by then in the same
/// session: G's leader (a process or stand-in) was made before, and,
/// being a process of the tree, is in the joiner's session.
fn check_groups(
    plan: &TreePlan,
    by_pid: &BTreeMap<i32, &ManifestProcess>,
) -> Result<(), TreeError> {
    for (i, s) in plan.steps.iter().enumerate() {
        let Step::Setpgid { pid, pgid } = *s else {
            continue;
        };
        if pid == pgid {
            continue;
        }
        let made_before = plan.creation(pgid).is_some_and(|c| c < i);
        if !made_before {
            return Err(shape(
                pid,
                format!("its process group {pgid} does not exist when it joins it"),
            ));
        }
        if let (Some(p), Some(l)) = (by_pid.get(&pid), by_pid.get(&pgid)) {
            if p.sid != l.sid {
                return Err(shape(
                    pid,
                    format!("its process group {pgid} is in another session ({})", l.sid),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, ppid: i32, pgid: i32, sid: i32) -> ManifestProcess {
        ManifestProcess {
            pid,
            ppid,
            pgid,
            sid,
            image: Some(format!("task-{pid}.crimg")),
            threads: vec![pid],
            comm: "x".into(),
            tty_nr: 0,
            tpgid: 0,
            zombie: None,
        }
    }

    fn manifest(root: i32, processes: Vec<ManifestProcess>) -> Manifest {
        let mut m = Manifest::new(processes);
        m.root = root;
        m
    }

    fn plan_of(
        m: &Manifest,
        pidns: bool,
        in_use: &dyn Fn(i32) -> bool,
    ) -> Result<TreePlan, TreeError> {
        plan(&PlanInput {
            manifest: m,
            pidns,
            root_stdio: &[],
            caller_tty: true,
            in_use,
            caller: None,
        })
    }

    fn nobody(_: i32) -> bool {
        false
    }

    #[test]
    fn more_shared_fds_than_a_loader_places_are_refused_by_the_plan() {
        let with_pipes = |n: i32| {
            let mut m = manifest(10, vec![proc(10, 1, 10, 10), proc(11, 10, 10, 10)]);
            for fd in 3..3 + n {
                m.shared.push(SharedObject {
                    kind: SharedKind::Pipe,
                    caller_fd: None,
                    holders: [10, 11]
                        .map(|pid| Holder {
                            pid,
                            fd: Some(fd),
                            desc: 1,
                            shmem: None,
                        })
                        .to_vec(),
                });
            }
            m
        };
        let most = i32::try_from(args::MAX_PLACED - 3).unwrap();
        assert!(plan_of(&with_pipes(most), true, &nobody).is_ok());
        match plan_of(&with_pipes(most + 1), true, &nobody) {
            Err(TreeError::Shape { pid: 10, why }) => {
                assert!(why.contains("places at most"), "{why}")
            }
            other => panic!("not refused: {:?}", other.map(|p| p.steps.len())),
        }
    }

    #[test]
    fn processes_the_root_does_not_reach_are_refused() {
        // 20 and 21 are each other's parent: in the manifest, never made.
        let m = manifest(
            10,
            vec![
                proc(10, 1, 10, 10),
                proc(11, 10, 10, 10),
                proc(20, 21, 20, 20),
                proc(21, 20, 20, 20),
            ],
        );
        match plan_of(&m, true, &nobody) {
            Err(TreeError::Shape { pid, why }) => {
                assert_eq!(pid, 20);
                assert!(why.contains("not reached from the root"), "{why}");
            }
            other => panic!("planned: {:?}", other.map(|p| p.steps)),
        }
        // A process that is its own parent.
        let m = manifest(10, vec![proc(10, 1, 10, 10), proc(12, 12, 12, 12)]);
        assert!(matches!(
            plan_of(&m, true, &nobody),
            Err(TreeError::Shape { pid: 12, .. })
        ));
    }

    #[test]
    fn a_pipeline_under_a_session_leader() {
        // setsid sh -c 'loop | cat': sh leads; the loop and cat inherit.
        let mut m = manifest(
            10,
            vec![
                proc(10, 1, 10, 10),
                proc(11, 10, 10, 10),
                proc(12, 10, 10, 10),
            ],
        );
        m.shared.push(SharedObject {
            kind: SharedKind::Pipe,
            caller_fd: None,
            holders: vec![
                Holder {
                    pid: 11,
                    fd: Some(1),
                    desc: 2,
                    shmem: None,
                },
                Holder {
                    pid: 12,
                    fd: Some(0),
                    desc: 1,
                    shmem: None,
                },
            ],
        });
        let p = plan_of(&m, false, &nobody).unwrap();
        use Step::*;
        assert_eq!(
            p.steps,
            vec![
                Fork {
                    by: Actor::Top,
                    pid: 10
                },
                Setsid { pid: 10 },
                Fork {
                    by: Actor::Pid(10),
                    pid: 11
                },
                Place {
                    pid: 11,
                    fd: 1,
                    object: 0,
                    desc: 2
                },
                Done { pid: 11 },
                Exec { pid: 11 },
                Fork {
                    by: Actor::Pid(10),
                    pid: 12
                },
                Place {
                    pid: 12,
                    fd: 0,
                    object: 0,
                    desc: 1
                },
                Done { pid: 12 },
                Exec { pid: 12 },
                Done { pid: 10 },
                Exec { pid: 10 },
            ]
        );
        assert_eq!(p.live, vec![10, 11, 12]);
        assert!(p.stand_ins.is_empty() && p.zombies.is_empty());
    }

    #[test]
    fn zombies_and_a_child_in_its_own_group() {
        let mut z1 = proc(21, 20, 20, 20);
        z1.image = None;
        z1.zombie = Some(WaitStatus::Exited(3));
        let mut z2 = proc(22, 20, 20, 20);
        z2.image = None;
        z2.zombie = Some(WaitStatus::Signaled(9));
        let m = manifest(20, vec![proc(20, 1, 20, 20), z1, z2, proc(23, 20, 23, 20)]);
        let p = plan_of(&m, false, &nobody).unwrap();
        assert_eq!(p.zombies, vec![21, 22]);
        assert_eq!(p.live, vec![20, 23]);
        assert!(p.steps.contains(&Step::Zombie {
            pid: 21,
            status: WaitStatus::Exited(3)
        }));
        assert!(p.steps.contains(&Step::Setpgid { pid: 23, pgid: 23 }));
        // Each zombie tells its parent it is made before it waits to die.
        let done = p
            .steps
            .iter()
            .position(|s| *s == Step::Done { pid: 22 })
            .unwrap();
        let zombie = p
            .steps
            .iter()
            .position(|s| matches!(s, Step::Zombie { pid: 22, .. }))
            .unwrap();
        assert!(done < zombie);
    }

    #[test]
    fn a_session_whose_leader_is_gone_gets_a_stand_in() {
        // Leader 30 exited; 31 (reparented to init) and its child live on.
        let m = manifest(31, vec![proc(31, 1, 30, 30), proc(32, 31, 30, 30)]);
        let p = plan_of(&m, true, &|_| true).unwrap();
        use Step::*;
        assert_eq!(
            p.steps[..4],
            [
                StandIn {
                    by: Actor::Top,
                    pid: 30,
                    role: StandInRole::Session
                },
                Setsid { pid: 30 },
                Fork {
                    by: Actor::Pid(30),
                    pid: 31
                },
                Fork {
                    by: Actor::Pid(31),
                    pid: 32
                },
            ]
        );
        assert_eq!(*p.steps.last().unwrap(), Done { pid: 30 });
        assert_eq!(p.stand_ins, vec![30]);
        // Its leader's terminal is not taken from a leader that runs.
        let mut on_tty = m.clone();
        on_tty.processes[0].tty_nr = 0x8801;
        on_tty.processes[1].tty_nr = 0x8801;
        let p = plan_of(&on_tty, true, &|_| true).unwrap();
        assert!(!p
            .steps
            .iter()
            .any(|s| matches!(s, ControllingTerminal { .. })));
        // Nor given to a stand-in leader, whose exit would hang it up on
        // the tree (SIGHUP to the foreground group): said instead.
        let p = plan_of(&on_tty, true, &|_| false).unwrap();
        assert!(!p
            .steps
            .iter()
            .any(|s| matches!(s, ControllingTerminal { .. } | Foreground { .. })));
        assert!(
            p.notes
                .iter()
                .any(|n| n.contains("no controlling terminal")),
            "{:?}",
            p.notes
        );
        // Without a namespace, a session whose leader still runs (the
        // caller's shell) is not recreated.
        let p = plan_of(&m, false, &|pid| pid == 30).unwrap();
        assert!(p.stand_ins.is_empty());
        assert_eq!(
            p.steps[0],
            Fork {
                by: Actor::Top,
                pid: 31
            }
        );
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
    }

    #[test]
    fn a_session_whose_leader_is_gone_but_whose_group_leader_runs_is_the_callers() {
        // As under CI: the session's leader 30 exited; `timeout` (29),
        // which leads its own group in that session, runs the tests, whose
        // tree 31 (with child 32) is in group 29. Pid 30 is free, but 29
        // is not, and the number 30 stays in use while 29 has it as its
        // session: neither can be made again.
        let m = manifest(31, vec![proc(31, 1, 29, 30), proc(32, 31, 29, 30)]);
        let in_use = |n: i32| n == 29 || n == 30;
        let from = |caller| {
            plan(&PlanInput {
                manifest: &m,
                pidns: false,
                root_stdio: &[],
                caller_tty: false,
                in_use: &in_use,
                caller,
            })
            .unwrap()
        };
        // Restored from where it ran (the test itself): its session and
        // group are the caller's, which it inherits; nothing is different.
        let p = from(Some(Caller { sid: 30, pgid: 29 }));
        assert!(p.stand_ins.is_empty());
        assert!(p.notes.is_empty(), "{:?}", p.notes);
        assert_eq!(
            p.steps[..2],
            [
                Step::Fork {
                    by: Actor::Top,
                    pid: 31
                },
                Step::Fork {
                    by: Actor::Pid(31),
                    pid: 32
                },
            ]
        );
        assert!(!p
            .steps
            .iter()
            .any(|s| matches!(s, Step::Setsid { .. } | Step::Setpgid { .. })));
        // From elsewhere: the caller's, and the notes say so.
        let p = from(Some(Caller { sid: 7, pgid: 8 }));
        assert!(p.stand_ins.is_empty());
        assert_eq!(p.notes.len(), 2, "{:?}", p.notes);
        // In a new pid namespace both are made again.
        let p = plan_of(&m, true, &in_use).unwrap();
        assert_eq!(p.stand_ins, vec![30, 29]);
    }

    #[test]
    fn a_session_without_an_id_is_the_callers_even_in_a_new_pid_namespace() {
        // As under CI: the tests run in the session the machine's init
        // started in (id 0 in /proc/PID/stat), in the group of `timeout`
        // (29); tree 31 (child 32 in its own group 32) is in both. Nothing
        // has pid 0: no stand-in may be planned for it, with or without a
        // namespace, and the nothing-is-free check of crdump's plan
        // (`in_use` false) must not plan one either.
        let m = manifest(31, vec![proc(31, 1, 29, UNSEEN), proc(32, 31, 32, UNSEEN)]);
        let in_use = |n: i32| n == 29;
        for (pidns, in_use) in [
            (false, &in_use as &dyn Fn(i32) -> bool),
            (true, &in_use),
            (false, &|_| false),
        ] {
            let p = plan(&PlanInput {
                manifest: &m,
                pidns,
                root_stdio: &[],
                caller_tty: false,
                in_use,
                caller: Some(Caller {
                    sid: UNSEEN,
                    pgid: 29,
                }),
            })
            .unwrap();
            assert!(p.stand_ins.is_empty(), "pidns {pidns}: {p:?}");
            assert_eq!(p.pids().collect::<Vec<_>>(), vec![31, 32]);
            assert!(!p.steps.iter().any(|s| matches!(s, Step::Setsid { .. })));
            assert!(p.steps.contains(&Step::Setpgid { pid: 32, pgid: 32 }));
            // Said only where the group differs (the namespace's init
            // leads its own); the session is the caller's either way.
            assert_eq!(p.notes.len(), usize::from(pidns) + 1, "{:?}", p.notes);
        }
        // A process group without an id in a session with one, or a
        // member of such a session under a parent in another, is refused.
        let bad = manifest(31, vec![proc(31, 1, UNSEEN, 30)]);
        assert!(plan_of(&bad, false, &|_| true).is_err());
        let bad = manifest(31, vec![proc(31, 1, 31, 31), proc(32, 31, 29, UNSEEN)]);
        let e = plan_of(&bad, false, &|_| true).unwrap_err().to_string();
        assert!(e.contains("session without an id"), "{e}");
    }

    #[test]
    fn orphans_of_a_vanished_session_leader_come_back_to_their_subreaper() {
        // 80 (a subreaper) forked 81, which made session 81 and members 82
        // (group 81) and 83 (own group), then exited: they are 80's.
        let m = manifest(
            80,
            vec![
                proc(80, 1, 80, 80),
                proc(82, 80, 81, 81),
                proc(83, 80, 83, 81),
            ],
        );
        let p = plan_of(&m, true, &nobody).unwrap();
        use Step::*;
        assert_eq!(
            p.steps[2..5],
            [
                StandIn {
                    by: Actor::Pid(80),
                    pid: 81,
                    role: StandInRole::OrphanedSession
                },
                Setsid { pid: 81 },
                Fork {
                    by: Actor::Pid(81),
                    pid: 82
                },
            ]
        );
        assert!(p.steps.contains(&Fork {
            by: Actor::Pid(81),
            pid: 83
        }));
        assert!(p.steps.contains(&Setpgid { pid: 83, pgid: 83 }));
        assert!(
            !p.steps.contains(&Setpgid { pid: 82, pgid: 81 }),
            "inherited from the stand-in"
        );
        let done81 = p.steps.iter().position(|s| *s == Done { pid: 81 }).unwrap();
        let exec83 = p.steps.iter().position(|s| *s == Exec { pid: 83 }).unwrap();
        assert!(
            done81 > exec83,
            "the stand-in is done once both members are"
        );
        assert_eq!(p.stand_ins, vec![81]);
    }

    #[test]
    fn a_group_whose_leader_is_gone_gets_a_stand_in_before_its_first_member() {
        // A shell job: 40 leads the session; the job's leader 41 exited,
        // 42 and 43 are left in group 41.
        let m = manifest(
            40,
            vec![
                proc(40, 1, 40, 40),
                proc(42, 40, 41, 40),
                proc(43, 40, 41, 40),
            ],
        );
        let p = plan_of(&m, false, &nobody).unwrap();
        use Step::*;
        assert_eq!(
            p.steps[2..6],
            [
                StandIn {
                    by: Actor::Pid(40),
                    pid: 41,
                    role: StandInRole::Group
                },
                Setpgid { pid: 41, pgid: 41 },
                Done { pid: 41 },
                Fork {
                    by: Actor::Pid(40),
                    pid: 42
                },
            ]
        );
        assert_eq!(p.stand_ins, vec![41]);
        assert!(p.steps.contains(&Setpgid { pid: 42, pgid: 41 }));
        assert!(p.steps.contains(&Setpgid { pid: 43, pgid: 41 }));
    }

    #[test]
    fn the_terminal_and_its_foreground_group() {
        // bash (50) on the caller's terminal runs job 51|52 in the foreground.
        let mut bash = proc(50, 1, 50, 50);
        bash.tty_nr = 0x8801;
        bash.tpgid = 51;
        let mut a = proc(51, 50, 51, 50);
        a.tty_nr = 0x8801;
        let mut b = proc(52, 50, 51, 50);
        b.tty_nr = 0x8801;
        let m = manifest(50, vec![bash, a, b]);
        let p = plan_of(&m, false, &nobody).unwrap();
        use Step::*;
        assert_eq!(
            p.steps[1..3],
            [Setsid { pid: 50 }, ControllingTerminal { pid: 50 }]
        );
        let fg = p
            .steps
            .iter()
            .position(|s| *s == Foreground { pid: 50, pgid: 51 })
            .unwrap();
        let last_fork = p
            .steps
            .iter()
            .rposition(|s| matches!(s, Fork { .. }))
            .unwrap();
        assert!(fg > last_fork, "the foreground group is set once it exists");
        // No terminal to give: said, not done.
        let p = plan(&PlanInput {
            manifest: &m,
            pidns: false,
            root_stdio: &[],
            caller_tty: false,
            in_use: &nobody,
            caller: None,
        })
        .unwrap();
        assert!(!p
            .steps
            .iter()
            .any(|s| matches!(s, ControllingTerminal { .. } | Foreground { .. })));
        assert!(!p.notes.is_empty());
    }

    #[test]
    fn root_stdio_and_shared_memory_are_placed() {
        let mut m = manifest(60, vec![proc(60, 1, 60, 60), proc(61, 60, 60, 60)]);
        m.shared.push(SharedObject {
            kind: SharedKind::Shmem,
            caller_fd: None,
            holders: vec![
                Holder {
                    pid: 60,
                    fd: None,
                    desc: 0,
                    shmem: Some(2),
                },
                Holder {
                    pid: 61,
                    fd: None,
                    desc: 0,
                    shmem: Some(1),
                },
                Holder {
                    pid: 61,
                    fd: Some(5),
                    desc: 1,
                    shmem: Some(1),
                },
            ],
        });
        let p = plan(&PlanInput {
            manifest: &m,
            pidns: false,
            root_stdio: &[1],
            caller_tty: false,
            in_use: &nobody,
            caller: None,
        })
        .unwrap();
        use Step::*;
        assert_eq!(p.objects.len(), 2);
        assert_eq!(p.objects[1].kind, SharedKind::Caller);
        assert!(p.steps.contains(&Shmem {
            pid: 60,
            index: 2,
            object: 0
        }));
        assert!(p.steps.contains(&Place {
            pid: 60,
            fd: 1,
            object: 1,
            desc: 1
        }));
        assert!(p.steps.contains(&Place {
            pid: 61,
            fd: 5,
            object: 0,
            desc: 1
        }));
        let shmem61 = p
            .steps
            .iter()
            .filter(|s| matches!(s, Shmem { pid: 61, .. }))
            .count();
        assert_eq!(shmem61, 1, "once per process and object");
    }

    #[test]
    fn shapes_that_cannot_be_made_are_refused_by_pid() {
        // A child in a session other than its parent's, whose leader is
        // in the tree but is not its parent.
        let m = manifest(
            70,
            vec![
                proc(70, 1, 70, 70),
                proc(71, 70, 72, 72),
                proc(72, 70, 72, 72),
            ],
        );
        let e = plan_of(&m, false, &nobody).unwrap_err();
        assert!(matches!(e, TreeError::Shape { pid: 71, .. }), "{e}");
        // A parent outside the tree.
        let m = manifest(70, vec![proc(70, 1, 70, 70), proc(72, 99, 70, 70)]);
        assert!(matches!(
            plan_of(&m, false, &nobody),
            Err(TreeError::Shape { pid: 72, .. })
        ));
        // A group whose leader comes later.
        let m = manifest(
            70,
            vec![
                proc(70, 1, 70, 70),
                proc(71, 70, 72, 70),
                proc(72, 70, 72, 70),
            ],
        );
        assert!(matches!(
            plan_of(&m, false, &nobody),
            Err(TreeError::Shape { pid: 71, .. })
        ));
        // A zombie killed by a signal that does not kill.
        let mut z = proc(71, 70, 70, 70);
        z.image = None;
        z.zombie = Some(WaitStatus::Signaled(17));
        let m = manifest(70, vec![proc(70, 1, 70, 70), z]);
        assert!(matches!(
            plan_of(&m, false, &nobody),
            Err(TreeError::Shape { pid: 71, .. })
        ));
        // Two separate dumps in a version-1 manifest.
        let mut m = manifest(70, vec![proc(70, 1, 70, 70), proc(80, 1, 80, 80)]);
        m.version = 1;
        m.root = 0;
        assert!(plan_of(&m, false, &nobody).is_err());
    }

    #[test]
    fn a_version_1_dump_is_a_tree_of_one() {
        let mut m = manifest(0, vec![proc(90, 1, 88, 88)]);
        m.version = 1;
        m.root = 0;
        // Its session's leader (the shell it ran in) still runs.
        let p = plan_of(&m, false, &|pid| pid == 88).unwrap();
        assert_eq!(
            p.steps,
            vec![
                Step::Fork {
                    by: Actor::Top,
                    pid: 90
                },
                Step::Done { pid: 90 },
                Step::Exec { pid: 90 },
            ]
        );
    }
}
