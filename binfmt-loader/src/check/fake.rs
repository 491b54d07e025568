//! A fake [`Os`] for stage 1's unit tests: files by path with a `Stat`
//! and contents, this process's ids and capabilities, the CPU's XSAVE
//! features; it records the warnings and every path opened.

use std::cell::RefCell;
use std::collections::HashMap;
use std::string::String;
use std::vec::Vec;

use super::os::Os;
use crate::sys::{self, Errno, Stat};

#[derive(Clone, Debug, Default)]
pub struct FakeFile {
    pub stat: Stat,
    pub contents: Vec<u8>,
    /// `fchdir` into it fails with this.
    pub no_entry: Option<Errno>,
}

pub struct Fake {
    pub files: HashMap<Vec<u8>, FakeFile>,
    pub uids: [u32; 3],
    pub gids: [u32; 3],
    pub caps: u64,
    pub xcr0: u64,
    pub nofile: (u64, u64),
    /// What `F_SETLEASE` answers, and whether the lease stays intact.
    pub lease: Result<(), Errno>,
    pub lease_kept: bool,
    open: RefCell<HashMap<i32, Vec<u8>>>,
    next_fd: RefCell<i32>,
    pub warnings: RefCell<Vec<String>>,
    /// The file-access ids `set_fs_ids` set (`None`: the process's own).
    pub fs_ids: RefCell<Option<(u32, u32)>>,
    /// What `fstatfs` says of every file's mount (`ST_*`).
    pub mount_flags: u64,
    /// What the `PR_TIMER_CREATE_RESTORE_IDS` probe answers.
    pub timer_restore_ids: Result<(), Errno>,
    /// Clocks a POSIX timer may not be created on, with the errno.
    pub timer_clocks_refused: Vec<(i32, Errno)>,
    /// The clocks probed, in order.
    pub timer_clocks_probed: RefCell<Vec<i32>>,
    /// Every `write`: fd and bytes.
    pub written: RefCell<Vec<(i32, Vec<u8>)>>,
    /// Every pipe made: (read end, write end, size set).
    pub pipes: RefCell<Vec<(i32, i32, u32)>>,
    /// The fds that are terminals, with their window size.
    pub terminals: HashMap<i32, image_format::records::Winsize>,
    /// Every call on an event-loop object, as a line ("epoll_add 5 7 0x1
    /// 0x2a"), in order.
    pub object_calls: RefCell<Vec<String>>,
    /// The next watch descriptor of each inotify fd.
    pub wds: RefCell<HashMap<i32, i32>>,
    /// What `TFD_IOC_SET_TICKS` answers with a count of 0 (EINVAL: the
    /// kernel has it; ENOTTY: it does not).
    pub set_ticks_probe: Errno,
    /// An fd `epoll_add` refuses (EPERM), as epoll does a regular file.
    pub unwatchable: Option<i32>,
    /// Every socket call, in order, as a line (`bind 5 ...`).
    pub socket_calls: RefCell<Vec<String>>,
    /// What `bind` and `connect` answer.
    pub bind_result: Result<(), Errno>,
    pub connect_result: Result<(), Errno>,
    /// Files stage 1 made (memfds, `O_TMPFILE`s, new files), by the
    /// name their fds are open on (`Made::how`).
    pub made: RefCell<HashMap<Vec<u8>, Made>>,
    /// `O_TMPFILE` fails with this (file systems without it).
    pub tmpfile_error: Option<Errno>,
    /// What `ARCH_GET_XCOMP_PERM` answers (`None`: XCR0, all permitted).
    pub permitted: Option<u64>,
    /// Every path `read_file` read, in order.
    pub reads: RefCell<Vec<Vec<u8>>>,
    /// How many times CPUID leaf 0xD was asked (`xsave_component_end`,
    /// `xsave_size`): each is a VM exit on a virtual machine.
    pub cpuid_asks: std::cell::Cell<usize>,
}

/// A file stage 1 made: how, and what it holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Made {
    /// `memfd:NAME`, `tmpfile:DIR` or `new:PATH`.
    pub how: String,
    pub mode: u32,
    pub size: u64,
    pub contents: Vec<u8>,
    pub seals: u32,
    /// Where it was linked (`linkat`).
    pub linked: Vec<String>,
}

impl Fake {
    pub fn new() -> Fake {
        let mut files = HashMap::new();
        let dir = Stat {
            mode: sys::S_IFDIR | 0o755,
            ino: 2,
            ..Default::default()
        };
        files.insert(
            b".".to_vec(),
            FakeFile {
                stat: dir,
                ..Default::default()
            },
        );
        files.insert(
            b"/".to_vec(),
            FakeFile {
                stat: dir,
                ..Default::default()
            },
        );
        let proc_file = |text: &str| FakeFile {
            stat: Stat {
                mode: sys::S_IFREG | 0o444,
                ..Default::default()
            },
            contents: text.as_bytes().to_vec(),
            no_entry: None,
        };
        files.insert(b"/proc/sys/vm/mmap_min_addr".to_vec(), proc_file("65536\n"));
        files.insert(
            b"/proc/self/maps".to_vec(),
            proc_file(
                "7f0000000000-7f0000021000 r-xp 00000000 00:00 0 \n\
                 7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]\n",
            ),
        );
        files.insert(
            b"/proc/self/status".to_vec(),
            proc_file(
                "Name:\tcrimg-loader\nGroups:\t\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
                 CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n",
            ),
        );
        Fake {
            files,
            uids: [1000; 3],
            gids: [1000; 3],
            caps: 0,
            xcr0: 0x7,
            nofile: (1024, 4096),
            lease: Ok(()),
            lease_kept: true,
            open: RefCell::new(HashMap::new()),
            next_fd: RefCell::new(3),
            warnings: RefCell::new(Vec::new()),
            fs_ids: RefCell::new(None),
            mount_flags: 0,
            made: RefCell::new(HashMap::new()),
            tmpfile_error: None,
            permitted: None,
            reads: RefCell::new(Vec::new()),
            cpuid_asks: std::cell::Cell::new(0),
            timer_restore_ids: Ok(()),
            timer_clocks_refused: Vec::new(),
            timer_clocks_probed: RefCell::new(Vec::new()),
            written: RefCell::default(),
            pipes: RefCell::default(),
            terminals: HashMap::new(),
            object_calls: RefCell::default(),
            wds: RefCell::default(),
            set_ticks_probe: Errno::EINVAL,
            unwatchable: None,
            socket_calls: RefCell::default(),
            bind_result: Ok(()),
            connect_result: Err(Errno(111)),
        }
    }

    fn call(&self, line: String) {
        self.socket_calls.borrow_mut().push(line);
    }

    pub fn add(&mut self, path: &str, stat: Stat, contents: Vec<u8>) {
        self.files.insert(
            path.as_bytes().to_vec(),
            FakeFile {
                stat,
                contents,
                no_entry: None,
            },
        );
    }

    fn file(&self, fd: i32) -> Result<FakeFile, Errno> {
        let path = self.open.borrow().get(&fd).cloned().ok_or(Errno(9))?;
        self.files.get(&path).cloned().ok_or(Errno::ENOENT)
    }

    /// This process's fd `fd` is a terminal (`/dev/pts/0`) of that size.
    pub fn give_terminal(&mut self, fd: i32, size: image_format::records::Winsize) {
        self.give(fd, "/dev/pts/0", sys::S_IFCHR | 0o620);
        self.terminals.insert(fd, size);
    }

    /// This process's fd `fd` is a memfd `name` of `size` bytes with
    /// `seals`, made by someone else (a tree restore's orchestrator).
    pub fn give_memfd(&mut self, fd: i32, name: &str, size: u64, seals: u32) {
        let how = std::format!("memfd:{name} (given)");
        self.add(
            &how,
            Stat {
                mode: sys::S_IFREG | 0o777,
                size,
                ..Default::default()
            },
            Vec::new(),
        );
        self.made.borrow_mut().insert(
            how.clone().into_bytes(),
            Made {
                how: how.clone(),
                mode: 0o777,
                size,
                seals,
                ..Made::default()
            },
        );
        self.open.borrow_mut().insert(fd, how.into_bytes());
    }

    /// This process's fd `fd` is open on `path`, a file of type `mode`.
    pub fn give(&mut self, fd: i32, path: &str, mode: u32) {
        self.files
            .entry(path.as_bytes().to_vec())
            .or_insert(FakeFile {
                stat: Stat {
                    mode,
                    ..Default::default()
                },
                ..Default::default()
            });
        self.open.borrow_mut().insert(fd, path.as_bytes().to_vec());
    }

    fn new_fd(&self, path: Vec<u8>, min: i32) -> i32 {
        let mut next = self.next_fd.borrow_mut();
        let fd = (*next).max(min);
        *next = fd + 1;
        self.open.borrow_mut().insert(fd, path);
        fd
    }

    fn make(&self, how: String, mode: u32) -> i32 {
        let fd = self.new_fd(how.clone().into_bytes(), 0);
        self.made.borrow_mut().insert(
            how.clone().into_bytes(),
            Made {
                how,
                mode,
                ..Made::default()
            },
        );
        fd
    }

    fn with_made<R>(&self, fd: i32, f: impl FnOnce(&mut Made) -> R) -> Result<R, Errno> {
        let path = self.open.borrow().get(&fd).cloned().ok_or(Errno(9))?;
        self.made.borrow_mut().get_mut(&path).map(f).ok_or(Errno(9))
    }

    /// What the file made and open at `fd` holds.
    pub fn made_at(&self, fd: i32) -> Option<Made> {
        let path = self.open.borrow().get(&fd).cloned()?;
        self.made.borrow().get(&path).cloned()
    }

    /// The path an fd was opened from.
    pub fn path_of(&self, fd: i32) -> Option<String> {
        let open = self.open.borrow();
        open.get(&fd)
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    pub fn warned(&self, part: &str) -> bool {
        self.warnings.borrow().iter().any(|w| w.contains(part))
    }
}

/// The fake CPU's XSAVE layout: AVX (component 2) at its standard place.
fn component_end(i: u32) -> u32 {
    match i {
        2 => 576 + 256,
        _ => 0,
    }
}

impl Os for Fake {
    fn open(&self, path: &[u8], _flags: u32) -> Result<i32, Errno> {
        let path = match path.strip_prefix(b"/proc/self/fd/") {
            Some(n) => {
                let fd: i32 = core::str::from_utf8(n).unwrap().parse().unwrap();
                self.open.borrow().get(&fd).cloned().ok_or(Errno::ENOENT)?
            }
            None => path.to_vec(),
        };
        if !self.files.contains_key(&path) && !self.made.borrow().contains_key(&path) {
            return Err(Errno::ENOENT);
        }
        Ok(self.new_fd(path, 0))
    }
    fn fstat(&self, fd: i32) -> Result<Stat, Errno> {
        self.file(fd).map(|f| f.stat)
    }
    fn close(&self, fd: i32) {
        self.open.borrow_mut().remove(&fd);
    }
    fn dup_above(&self, fd: i32, min: i32) -> Result<i32, Errno> {
        let path = self.open.borrow().get(&fd).cloned().ok_or(Errno(9))?;
        Ok(self.new_fd(path, min))
    }
    fn set_status_flags(&self, fd: i32, _flags: u32) -> Result<(), Errno> {
        // Any open fd: files, and the pipes and eventfds made here.
        self.open
            .borrow()
            .contains_key(&fd)
            .then_some(())
            .ok_or(Errno(9))
    }
    fn seek_to(&self, fd: i32, off: u64) -> Result<u64, Errno> {
        self.file(fd).map(|_| off)
    }
    fn fchdir(&self, fd: i32) -> Result<(), Errno> {
        match self.file(fd)?.no_entry {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn pread(&self, fd: i32, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
        let f = self.file(fd)?;
        let off = usize::try_from(off).unwrap().min(f.contents.len());
        let n = buf.len().min(f.contents.len() - off);
        buf[..n].copy_from_slice(&f.contents[off..off + n]);
        Ok(n)
    }
    fn take_read_lease(&self, fd: i32) -> Result<(), Errno> {
        self.file(fd)?;
        self.lease
    }
    fn lease_intact(&self, _fd: i32) -> bool {
        self.lease_kept
    }
    fn get_rlimit(&self, resource: u32) -> Result<(u64, u64), Errno> {
        Ok(if resource == 7 {
            self.nofile
        } else {
            (u64::MAX, u64::MAX)
        })
    }
    fn set_rlimit(&self, _resource: u32, _cur: u64, _max: u64) -> Result<(), Errno> {
        Ok(())
    }
    fn ids(&self) -> ([u32; 3], [u32; 3]) {
        (self.uids, self.gids)
    }
    fn effective_caps(&self) -> u64 {
        self.caps
    }
    fn securebits(&self) -> u32 {
        0
    }
    fn mount_flags(&self, _fd: i32) -> Result<u64, Errno> {
        Ok(self.mount_flags)
    }
    fn groups(&self, _buf: &mut [u32]) -> Result<usize, Errno> {
        Ok(0)
    }
    fn set_groups(&self, _groups: &[u32]) -> Result<(), Errno> {
        Ok(())
    }
    fn set_fs_ids(&self, uid: u32, gid: u32) -> Result<(u32, u32), Errno> {
        let old = self.fs_ids.borrow().unwrap_or((self.uids[1], self.gids[1]));
        *self.fs_ids.borrow_mut() = Some((uid, gid));
        Ok(old)
    }
    fn getpid(&self) -> i32 {
        777
    }
    fn timer_restore_ids(&self) -> Result<(), Errno> {
        self.timer_restore_ids
    }
    fn probe_timer_clock(&self, clock: i32) -> Result<(), Errno> {
        self.timer_clocks_probed.borrow_mut().push(clock);
        self.timer_clocks_refused
            .iter()
            .find(|(c, _)| *c == clock)
            .map_or(Ok(()), |&(_, errno)| Err(errno))
    }
    fn xcr0(&self) -> Option<u64> {
        Some(self.xcr0)
    }
    fn xcomp_perm(&self) -> Result<u64, Errno> {
        Ok(self.permitted.unwrap_or(self.xcr0))
    }
    fn request_xcomp_perm(&self, _feature: u32) -> Result<(), Errno> {
        Err(Errno::EINVAL)
    }
    fn mxcsr_mask(&self) -> u32 {
        0xffff
    }
    fn xsave_component_end(&self, i: u32) -> u32 {
        self.cpuid_asks.set(self.cpuid_asks.get() + 1);
        component_end(i)
    }
    fn xsave_size(&self) -> u32 {
        self.cpuid_asks.set(self.cpuid_asks.get() + 1);
        (2..63)
            .filter(|i| self.xcr0 & (1 << i) != 0)
            .map(component_end)
            .max()
            .unwrap_or(0)
            .max(576)
    }
    fn report(&self, _name: &[u8], what: core::fmt::Arguments<'_>) {
        self.warnings.borrow_mut().push(std::format!("{what}"));
    }
    fn memfd_create(&self, name: &[u8]) -> Result<i32, Errno> {
        Ok(self.make(
            std::format!("memfd:{}", String::from_utf8_lossy(name)),
            0o777,
        ))
    }
    fn open_tmpfile(&self, dir: &[u8], mode: u32) -> Result<i32, Errno> {
        if let Some(e) = self.tmpfile_error {
            return Err(e);
        }
        let is_dir = |f: &FakeFile| f.stat.mode & sys::S_IFMT == sys::S_IFDIR;
        if !self.files.get(dir).is_some_and(is_dir) {
            return Err(Errno::ENOENT);
        }
        Ok(self.make(
            std::format!("tmpfile:{}", String::from_utf8_lossy(dir)),
            mode,
        ))
    }
    fn create_new(&self, path: &[u8], mode: u32) -> Result<i32, Errno> {
        if self.files.contains_key(path) {
            return Err(Errno::EEXIST);
        }
        Ok(self.make(std::format!("new:{}", String::from_utf8_lossy(path)), mode))
    }
    fn link_fd(&self, fd: i32, path: &[u8]) -> Result<(), Errno> {
        if self.files.contains_key(path) {
            return Err(Errno::EEXIST);
        }
        self.with_made(fd, |m| {
            m.linked.push(String::from_utf8_lossy(path).into_owned());
        })
    }
    fn ftruncate(&self, fd: i32, len: u64) -> Result<(), Errno> {
        self.with_made(fd, |m| {
            m.size = len;
            m.contents.resize(usize::try_from(len).unwrap(), 0);
        })
    }
    fn pwrite(&self, fd: i32, buf: &[u8], off: u64) -> Result<usize, Errno> {
        self.with_made(fd, |m| {
            let off = usize::try_from(off).unwrap();
            if m.contents.len() < off + buf.len() {
                m.contents.resize(off + buf.len(), 0);
            }
            m.contents[off..off + buf.len()].copy_from_slice(buf);
            buf.len()
        })
    }
    fn fchmod(&self, fd: i32, mode: u32) -> Result<(), Errno> {
        self.with_made(fd, |m| m.mode = mode)
    }
    fn add_seals(&self, fd: i32, seals: u32) -> Result<(), Errno> {
        self.with_made(fd, |m| m.seals |= seals)
    }
    fn get_seals(&self, fd: i32) -> Result<u32, Errno> {
        self.with_made(fd, |m| m.seals).map_err(|_| Errno::EINVAL)
    }
    fn read_file(&self, path: &[u8], buf: &mut [u8]) -> Result<usize, Errno> {
        self.reads.borrow_mut().push(path.to_vec());
        let f = self.files.get(path).ok_or(Errno::ENOENT)?;
        let n = buf.len().min(f.contents.len());
        buf[..n].copy_from_slice(&f.contents[..n]);
        Ok(n)
    }
    fn pipe(&self) -> Result<(i32, i32), Errno> {
        let r = self.new_fd(b"pipe:[r]".to_vec(), 0);
        let w = self.new_fd(b"pipe:[w]".to_vec(), 0);
        self.pipes.borrow_mut().push((r, w, 65536));
        Ok((r, w))
    }
    fn set_pipe_size(&self, fd: i32, size: u32) -> Result<u32, Errno> {
        let mut pipes = self.pipes.borrow_mut();
        let p = pipes
            .iter_mut()
            .find(|p| p.0 == fd || p.1 == fd)
            .ok_or(Errno(9))?;
        p.2 = size.max(4096);
        Ok(p.2)
    }
    fn write(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        self.written.borrow_mut().push((fd, buf.to_vec()));
        Ok(buf.len())
    }
    fn bytes_waiting(&self, _fd: i32) -> Result<usize, Errno> {
        Ok(0)
    }
    fn eventfd(&self, _flags: u32) -> Result<i32, Errno> {
        Ok(self.new_fd(b"anon_inode:[eventfd]".to_vec(), 0))
    }
    fn window_size(&self, fd: i32) -> Result<image_format::records::Winsize, Errno> {
        self.terminals.get(&fd).copied().ok_or(Errno::ENOTTY)
    }
    fn read(&self, fd: i32, _buf: &mut [u8]) -> Result<usize, Errno> {
        self.object_calls.borrow_mut().push(format!("read {fd}"));
        // Nothing queued (EAGAIN).
        Err(Errno(11))
    }
    fn signalfd(&self, mask: u64, flags: u32) -> Result<i32, Errno> {
        let fd = self.new_fd(b"anon_inode:[signalfd]".to_vec(), 0);
        self.object_calls
            .borrow_mut()
            .push(format!("signalfd {mask:#x} {flags:#o} -> {fd}"));
        Ok(fd)
    }
    fn timerfd_create(&self, clock: u32, flags: u32) -> Result<i32, Errno> {
        let fd = self.new_fd(b"anon_inode:[timerfd]".to_vec(), 0);
        self.object_calls
            .borrow_mut()
            .push(format!("timerfd_create {clock} {flags:#o} -> {fd}"));
        Ok(fd)
    }
    fn timerfd_set_ticks(&self, fd: i32, ticks: u64) -> Result<(), Errno> {
        self.object_calls
            .borrow_mut()
            .push(format!("set_ticks {fd} {ticks}"));
        if ticks == 0 {
            Err(self.set_ticks_probe)
        } else {
            Ok(())
        }
    }
    fn inotify_init(&self, flags: u32) -> Result<i32, Errno> {
        let fd = self.new_fd(b"anon_inode:inotify".to_vec(), 0);
        self.wds.borrow_mut().insert(fd, 1);
        self.object_calls
            .borrow_mut()
            .push(format!("inotify_init {flags:#o} -> {fd}"));
        Ok(fd)
    }
    fn inotify_add_watch(&self, fd: i32, path: &[u8], mask: u32) -> Result<i32, Errno> {
        let mut wds = self.wds.borrow_mut();
        let next = wds.get_mut(&fd).ok_or(Errno(9))?;
        let wd = *next;
        *next += 1;
        self.object_calls.borrow_mut().push(format!(
            "add_watch {fd} {} {mask:#x} -> {wd}",
            String::from_utf8_lossy(path)
        ));
        Ok(wd)
    }
    fn inotify_rm_watch(&self, fd: i32, wd: i32) -> Result<(), Errno> {
        self.object_calls
            .borrow_mut()
            .push(format!("rm_watch {fd} {wd}"));
        Ok(())
    }
    fn epoll_create(&self, flags: u32) -> Result<i32, Errno> {
        let fd = self.new_fd(b"anon_inode:[eventpoll]".to_vec(), 0);
        self.object_calls
            .borrow_mut()
            .push(format!("epoll_create {flags:#o} -> {fd}"));
        Ok(fd)
    }
    fn epoll_add(&self, epfd: i32, fd: i32, events: u32, data: u64) -> Result<(), Errno> {
        self.object_calls
            .borrow_mut()
            .push(format!("epoll_add {epfd} {fd} {events:#x} {data:#x}"));
        if self.unwatchable == Some(fd) {
            Err(Errno::EPERM)
        } else if self.open.borrow().contains_key(&fd) || (0..=2).contains(&fd) {
            Ok(())
        } else {
            Err(Errno(9))
        }
    }
    fn socket(&self, family: u32, sock_type: u32, protocol: u32) -> Result<i32, Errno> {
        let fd = self.new_fd(b"socket:[1]".to_vec(), 0);
        self.call(std::format!(
            "socket {family} {sock_type} {protocol} = {fd}"
        ));
        Ok(fd)
    }
    fn socketpair(&self, sock_type: u32) -> Result<(i32, i32), Errno> {
        let a = self.new_fd(b"socket:[a]".to_vec(), 0);
        let b = self.new_fd(b"socket:[b]".to_vec(), 0);
        self.call(std::format!("socketpair {sock_type} = {a} {b}"));
        Ok((a, b))
    }
    fn setsockopt(&self, fd: i32, level: u32, name: u32, value: &[u8]) -> Result<(), Errno> {
        self.call(std::format!("setsockopt {fd} {level} {name} {value:?}"));
        Ok(())
    }
    fn bind_or_connect(&self, fd: i32, addr: &[u8], connect: bool) -> Result<(), Errno> {
        let what = if connect { "connect" } else { "bind" };
        self.call(std::format!(
            "{what} {fd} {}",
            String::from_utf8_lossy(addr.get(2..).unwrap_or(&[]))
        ));
        if connect {
            self.connect_result
        } else {
            self.bind_result
        }
    }
    fn listen(&self, fd: i32, backlog: u32) -> Result<(), Errno> {
        self.call(std::format!("listen {fd} {backlog}"));
        Ok(())
    }
    fn send(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        self.call(std::format!("send {fd} {buf:?}"));
        Ok(buf.len())
    }
    fn shutdown(&self, fd: i32, how: u32) -> Result<(), Errno> {
        self.call(std::format!("shutdown {fd} {how}"));
        Ok(())
    }
    fn unlink(&self, path: &[u8]) -> Result<(), Errno> {
        self.call(std::format!("unlink {}", String::from_utf8_lossy(path)));
        Ok(())
    }
    fn umask(&self, mask: u32) -> u32 {
        self.call(std::format!("umask {mask:o}"));
        0o022
    }
}
