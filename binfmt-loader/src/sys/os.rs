//! [`Kernel`]: stage 1's [`Os`] made of this module's raw system calls.

use core::fmt;

use super::{shmem, CPath, Errno, Stat};

/// `O_NOFOLLOW`.
const O_NOFOLLOW: u32 = 0o400_000;
use crate::check::os::Os;

/// The real operating system.
#[derive(Clone, Copy, Debug, Default)]
pub struct Kernel;

impl Os for Kernel {
    fn open(&self, path: &[u8], flags: u32) -> Result<i32, Errno> {
        let cpath = CPath::new(path).ok_or(Errno::ENOENT)?;
        super::openat(super::AT_FDCWD, &cpath, flags)
    }
    fn memfd_create(&self, name: &[u8]) -> Result<i32, Errno> {
        let name = CPath::new(name).ok_or(Errno::EINVAL)?;
        shmem::memfd_create(&name, shmem::MFD_CLOEXEC | shmem::MFD_ALLOW_SEALING)
    }
    fn open_tmpfile(&self, dir: &[u8], mode: u32) -> Result<i32, Errno> {
        let dir = CPath::new(dir).ok_or(Errno::ENOENT)?;
        shmem::open_mode(
            &dir,
            shmem::O_TMPFILE | super::O_RDWR | super::O_CLOEXEC,
            mode,
        )
    }
    fn create_new(&self, path: &[u8], mode: u32) -> Result<i32, Errno> {
        let path = CPath::new(path).ok_or(Errno::ENOENT)?;
        let flags = super::O_CREAT | super::O_EXCL | super::O_RDWR | O_NOFOLLOW | super::O_CLOEXEC;
        shmem::openat2(&path, flags, mode, shmem::RESOLVE_NO_SYMLINKS)
    }
    fn link_fd(&self, fd: i32, path: &[u8]) -> Result<(), Errno> {
        let from = crate::message::proc_self_fd(fd);
        let from = CPath::new(from.as_bytes()).ok_or(Errno::EINVAL)?;
        let to = CPath::new(path).ok_or(Errno::ENOENT)?;
        shmem::linkat(&from, &to, shmem::AT_SYMLINK_FOLLOW)
    }
    fn unlink(&self, path: &[u8]) -> Result<(), Errno> {
        shmem::unlink(&CPath::new(path).ok_or(Errno::ENOENT)?)
    }
    fn ftruncate(&self, fd: i32, len: u64) -> Result<(), Errno> {
        shmem::ftruncate(fd, len)
    }
    fn pwrite(&self, fd: i32, buf: &[u8], off: u64) -> Result<usize, Errno> {
        shmem::pwrite(fd, buf, off)
    }
    fn fchmod(&self, fd: i32, mode: u32) -> Result<(), Errno> {
        shmem::fchmod(fd, mode)
    }
    fn add_seals(&self, fd: i32, seals: u32) -> Result<(), Errno> {
        shmem::add_seals(fd, seals)
    }
    fn get_seals(&self, fd: i32) -> Result<u32, Errno> {
        shmem::get_seals(fd)
    }
    fn fstat(&self, fd: i32) -> Result<Stat, Errno> {
        super::fstat(fd)
    }
    fn close(&self, fd: i32) {
        let _ = super::close(fd);
    }
    fn dup_above(&self, fd: i32, min: i32) -> Result<i32, Errno> {
        super::dup_above(fd, min)
    }
    fn set_status_flags(&self, fd: i32, flags: u32) -> Result<(), Errno> {
        super::set_status_flags(fd, flags)
    }
    fn seek_to(&self, fd: i32, off: u64) -> Result<u64, Errno> {
        super::seek_to(fd, off)
    }
    fn fchdir(&self, fd: i32) -> Result<(), Errno> {
        super::fchdir(fd)
    }
    fn pread(&self, fd: i32, buf: &mut [u8], off: u64) -> Result<usize, Errno> {
        super::pread(fd, buf, off)
    }
    fn take_read_lease(&self, fd: i32) -> Result<(), Errno> {
        super::take_read_lease(fd)
    }
    fn lease_intact(&self, fd: i32) -> bool {
        super::lease_intact(fd)
    }
    fn get_rlimit(&self, resource: u32) -> Result<(u64, u64), Errno> {
        super::get_rlimit(resource)
    }
    fn set_rlimit(&self, resource: u32, cur: u64, max: u64) -> Result<(), Errno> {
        super::set_rlimit(resource, cur, max)
    }
    fn ids(&self) -> ([u32; 3], [u32; 3]) {
        super::get_ids()
    }
    fn effective_caps(&self) -> u64 {
        super::effective_caps()
    }
    fn securebits(&self) -> u32 {
        super::securebits()
    }
    fn mount_flags(&self, fd: i32) -> Result<u64, Errno> {
        super::fstatfs_flags(fd)
    }
    fn groups(&self, buf: &mut [u32]) -> Result<usize, Errno> {
        super::get_groups(buf)
    }
    fn set_groups(&self, groups: &[u32]) -> Result<(), Errno> {
        super::set_groups(groups)
    }
    fn set_fs_ids(&self, uid: u32, gid: u32) -> Result<(u32, u32), Errno> {
        // The group first: setfsgid needs CAP_SETGID, which a non-zero
        // fsuid does not take away, but keep the order of setres*id.
        let old_gid = super::set_fsgid(gid)?;
        match super::set_fsuid(uid) {
            Ok(old_uid) => Ok((old_uid, old_gid)),
            Err(e) => {
                let _ = super::set_fsgid(old_gid);
                Err(e)
            }
        }
    }
    fn getpid(&self) -> i32 {
        super::getpid()
    }
    fn timer_restore_ids(&self) -> Result<(), Errno> {
        super::timer_restore_ids().map(|_| ())
    }
    fn probe_timer_clock(&self, clock: i32) -> Result<(), Errno> {
        super::probe_timer_clock(clock)
    }
    fn xcr0(&self) -> Option<u64> {
        crate::arch::xcr0()
    }
    fn xcomp_perm(&self) -> Result<u64, Errno> {
        super::xcomp_perm()
    }
    fn request_xcomp_perm(&self, feature: u32) -> Result<(), Errno> {
        super::request_xcomp_perm(feature)
    }
    fn mxcsr_mask(&self) -> u32 {
        crate::arch::mxcsr_mask()
    }
    fn xsave_component_end(&self, i: u32) -> u32 {
        crate::arch::xsave_component_end(i)
    }
    fn xsave_size(&self) -> u32 {
        crate::arch::xsave_size()
    }
    fn report(&self, name: &[u8], what: fmt::Arguments<'_>) {
        crate::message::report(name, what);
    }
    fn read_file(&self, path: &[u8], buf: &mut [u8]) -> Result<usize, Errno> {
        super::read_small_file(path, buf)
    }
    fn pipe(&self) -> Result<(i32, i32), Errno> {
        super::objects::pipe()
    }
    fn set_pipe_size(&self, fd: i32, size: u32) -> Result<u32, Errno> {
        super::objects::set_pipe_size(fd, size)
    }
    fn write(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        super::write(fd, buf)
    }
    fn eventfd(&self, flags: u32) -> Result<i32, Errno> {
        super::objects::eventfd(flags)
    }
    fn window_size(&self, fd: i32) -> Result<image_format::records::Winsize, Errno> {
        super::terminal::window_size(fd)
    }
    fn bytes_waiting(&self, fd: i32) -> Result<usize, Errno> {
        super::objects::bytes_waiting(fd)
    }
    fn read(&self, fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
        super::read(fd, buf)
    }
    fn signalfd(&self, mask: u64, flags: u32) -> Result<i32, Errno> {
        super::event_objects::signalfd(mask, flags)
    }
    fn timerfd_create(&self, clock: u32, flags: u32) -> Result<i32, Errno> {
        super::event_objects::timerfd_create(clock, flags)
    }
    fn timerfd_set_ticks(&self, fd: i32, ticks: u64) -> Result<(), Errno> {
        super::event_objects::timerfd_set_ticks(fd, ticks)
    }
    fn inotify_init(&self, flags: u32) -> Result<i32, Errno> {
        super::event_objects::inotify_init(flags)
    }
    fn inotify_add_watch(&self, fd: i32, path: &[u8], mask: u32) -> Result<i32, Errno> {
        super::event_objects::inotify_add_watch(fd, path, mask)
    }
    fn inotify_rm_watch(&self, fd: i32, wd: i32) -> Result<(), Errno> {
        super::event_objects::inotify_rm_watch(fd, wd)
    }
    fn epoll_create(&self, flags: u32) -> Result<i32, Errno> {
        super::event_objects::epoll_create(flags)
    }
    fn epoll_add(&self, epfd: i32, fd: i32, events: u32, data: u64) -> Result<(), Errno> {
        super::event_objects::epoll_add(epfd, fd, events, data)
    }
    fn socket(&self, family: u32, sock_type: u32, protocol: u32) -> Result<i32, Errno> {
        super::sockets::socket(family, sock_type, protocol)
    }
    fn socketpair(&self, sock_type: u32) -> Result<(i32, i32), Errno> {
        super::sockets::socketpair(sock_type)
    }
    fn setsockopt(&self, fd: i32, level: u32, name: u32, value: &[u8]) -> Result<(), Errno> {
        super::sockets::setsockopt(fd, level, name, value)
    }
    fn bind_or_connect(&self, fd: i32, addr: &[u8], connect: bool) -> Result<(), Errno> {
        super::sockets::bind_or_connect(fd, addr, connect)
    }
    fn listen(&self, fd: i32, backlog: u32) -> Result<(), Errno> {
        super::sockets::listen(fd, backlog)
    }
    fn send(&self, fd: i32, buf: &[u8]) -> Result<usize, Errno> {
        super::sockets::send(fd, buf)
    }
    fn shutdown(&self, fd: i32, how: u32) -> Result<(), Errno> {
        super::sockets::shutdown(fd, how)
    }
    fn umask(&self, mask: u32) -> u32 {
        super::sockets::umask(mask)
    }
}
