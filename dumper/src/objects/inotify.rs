//! inotify: every watch (`inotify wd:… ino:… sdev:… mask:… fhandle-…`
//! lines of fdinfo) with its mask and the path of the watched file, found
//! from the file handle fdinfo shows (`open_by_handle_at` on a mount of
//! that filesystem, then the name the kernel gives the file) and checked
//! against the inode. Events queued and not yet read cannot be copied
//! without consuming them: an instance with any is refused.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use image_format::records::InotifyWatchRecord;

use super::Refusal;
use crate::sys::{event_objects, fds};

/// The `IN_*` bits a watch's mask may carry as `inotify_add_watch` takes
/// them (events, `IN_EXCL_UNLINK`, `IN_ONESHOT`).
const WATCH_BITS: u32 = 0x0000_0fff | 0x0400_0000 | 0x8000_0000;

/// One watch as fdinfo shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    pub wd: i32,
    pub ino: u64,
    /// The kernel's device number of the filesystem (`MKDEV` of 20 bits
    /// of minor).
    pub sdev: u64,
    pub mask: u32,
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

fn hex(v: &str) -> Option<u64> {
    u64::from_str_radix(v, 16).ok()
}

/// The watches in an inotify fd's fdinfo text, in wd order.
pub fn parse(fd: i32, fdinfo: &str) -> Result<Vec<Watch>, Refusal> {
    let mut out = Vec::new();
    for line in fdinfo.lines() {
        let Some(rest) = line.strip_prefix("inotify ") else {
            continue;
        };
        let field = |key: &str| {
            rest.split_ascii_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix(':'))
        };
        let bad = || format!("fd {fd}: an inotify watch fdinfo shows as {line:?}");
        let num = |key: &str| field(key).and_then(hex).ok_or_else(bad);
        let wd = i32::try_from(num("wd")?).map_err(|_| bad())?;
        let ignored = num("ignored_mask")?;
        if ignored != 0 {
            return Err(format!("fd {fd}: inotify watch {wd} has an ignored mask"));
        }
        let Some(handle) = field("f_handle") else {
            return Err(format!(
                "fd {fd}: inotify watch {wd} is on a file the kernel gives no handle for (its filesystem cannot name files by handle), so its path cannot be found"
            ));
        };
        let handle = (0..handle.len() / 2)
            .map(|i| {
                handle
                    .get(2 * i..2 * i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(bad)?;
        let bytes = usize::try_from(num("fhandle-bytes")?).map_err(|_| bad())?;
        if bytes != handle.len() {
            return Err(bad());
        }
        out.push(Watch {
            wd,
            ino: num("ino")?,
            sdev: num("sdev")?,
            mask: u32::try_from(num("mask")?).map_err(|_| bad())?,
            handle_type: i32::try_from(num("fhandle-type")?).map_err(|_| bad())?,
            handle,
        });
    }
    out.sort_by_key(|w| w.wd);
    Ok(out)
}

/// A mount point of the filesystem whose kernel device number is `sdev`,
/// from `/proc/self/mountinfo` text: one mounting its root first.
fn mount_of(mountinfo: &str, sdev: u64) -> Option<String> {
    let want = format!("{}:{}", sdev >> 20, sdev & 0xf_ffff);
    let mut any = None;
    for line in mountinfo.lines() {
        let mut f = line.split(' ');
        let (Some(_), Some(_), Some(dev), Some(root), Some(point)) =
            (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if dev != want {
            continue;
        }
        let point = unescape(point);
        if root == "/" {
            return Some(point);
        }
        any.get_or_insert(point);
    }
    any
}

/// A mountinfo field with its `\ooo` escapes undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() + 1 {
            if let Some(v) = s
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The watches of the inotify instance behind the task's fd `fd`, read
/// through `inotify` (a copy) and its fdinfo text, each with the path of
/// its file. `inotify` of the records is left 0 for the caller.
pub fn collect(
    fd: i32,
    inotify: &OwnedFd,
    fdinfo: &str,
) -> Result<Vec<(InotifyWatchRecord, Vec<u8>)>, Refusal> {
    let queued = fds::bytes_waiting(inotify.as_fd())
        .map_err(|e| format!("fd {fd}: cannot count the inotify events queued: {e}"))?;
    if queued != 0 {
        return Err(format!(
            "fd {fd} is an inotify instance with {queued} bytes of events not yet read, which cannot be saved without consuming them"
        ));
    }
    let watches = parse(fd, fdinfo)?;
    if watches.is_empty() {
        return Ok(Vec::new());
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("fd {fd}: cannot read /proc/self/mountinfo: {e}"))?;
    let mut out = Vec::with_capacity(watches.len());
    for w in &watches {
        let (path, meta) = resolve(fd, w, &mountinfo)?;
        if w.mask & !WATCH_BITS != 0 {
            return Err(format!(
                "fd {fd}: inotify watch {} has mask {:#x}, with bits crimg does not know",
                w.wd, w.mask
            ));
        }
        out.push((
            InotifyWatchRecord {
                inotify: 0,
                wd: w.wd,
                mask: w.mask,
                _pad: 0,
                dev: meta.dev(),
                ino: meta.ino(),
                path: image_format::records::StrRef::default(),
            },
            path.into_bytes(),
        ));
    }
    Ok(out)
}

/// The path of a watch's file and its metadata, checked to be that file.
fn resolve(fd: i32, w: &Watch, mountinfo: &str) -> Result<(String, std::fs::Metadata), Refusal> {
    let wd = w.wd;
    let fail = |what: String| format!("fd {fd}: inotify watch {wd} (inode {}): {what}", w.ino);
    let point = mount_of(mountinfo, w.sdev).ok_or_else(|| {
        fail(format!(
            "no mount of its filesystem (device {}:{}) is visible here",
            w.sdev >> 20,
            w.sdev & 0xf_ffff
        ))
    })?;
    let mount = std::fs::File::open(&point)
        .map_err(|e| fail(format!("cannot open the mount {point}: {e}")))?;
    let file = event_objects::open_by_handle(mount.as_fd(), w.handle_type, &w.handle)
        .map_err(|e| fail(format!("cannot open the file by its handle: {e}")))?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| fail(format!("cannot name the file: {e}")))?;
    let path = link.to_string_lossy().into_owned();
    if !path.starts_with('/') || path.ends_with(" (deleted)") {
        return Err(fail(format!(
            "the file has no path to watch it by ({})",
            image_format::text::Escaped(path.as_bytes())
        )));
    }
    let meta = std::fs::symlink_metadata(&link).map_err(|e| {
        fail(format!(
            "its path {} cannot be looked at: {e}",
            image_format::text::Escaped(path.as_bytes())
        ))
    })?;
    if meta.ino() != w.ino {
        return Err(fail(format!(
            "its path {} names another file now",
            image_format::text::Escaped(path.as_bytes())
        )));
    }
    Ok((path, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "pos:\t0\nflags:\t02004000\nmnt_id:\t16\nino:\t1057\n\
inotify wd:3 ino:2a0e5 sdev:800001 mask:fce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:e5a00200b0a5c63d\n\
inotify wd:1 ino:2 sdev:800001 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:0200000000000000\n";

    #[test]
    fn parses_watches_in_wd_order() {
        let w = parse(7, TEXT).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].wd, w[0].ino, w[0].mask), (1, 2, 0x100));
        assert_eq!((w[1].wd, w[1].ino, w[1].mask), (3, 0x2a0e5, 0xfce));
        assert_eq!(w[1].sdev, 0x80_0001);
        assert_eq!(
            w[1].handle,
            [0xe5, 0xa0, 0x02, 0x00, 0xb0, 0xa5, 0xc6, 0x3d]
        );
        assert_eq!(w[1].handle_type, 1);
    }

    #[test]
    fn a_watch_without_handle_is_refused() {
        let e = parse(7, "inotify wd:2 ino:5 sdev:4 mask:2 ignored_mask:0\n").unwrap_err();
        assert!(e.contains("watch 2"), "{e}");
    }

    #[test]
    fn finds_the_mount() {
        let info = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
30 22 0:5 /sub /mnt/b\\040x rw - tmpfs t rw\n\
31 22 0:5 / /dev/shm rw - tmpfs t rw\n";
        assert_eq!(mount_of(info, 8 << 20 | 1).as_deref(), Some("/"));
        assert_eq!(mount_of(info, 5).as_deref(), Some("/dev/shm"));
        assert_eq!(mount_of(info, 9), None);
        assert_eq!(unescape("/mnt/b\\040x"), "/mnt/b x");
    }

    #[test]
    fn resolves_a_real_watch() {
        if crate::sys::process::effective_uid() != 0 {
            eprintln!("skipped: open_by_handle_at needs CAP_DAC_READ_SEARCH");
            return;
        }
        let dir = std::env::temp_dir().join(format!("crimg-inotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let inotify = crate::sys::event_objects::testing::inotify();
        let wd = crate::sys::event_objects::testing::add_watch(&inotify, &dir, libc::IN_CREATE);
        assert_eq!(wd, 1);
        let fdinfo =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", inotify.as_raw_fd())).unwrap();
        let got = collect(9, &inotify, &fdinfo).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.wd, 1);
        assert_eq!(got[0].0.mask, libc::IN_CREATE);
        assert_eq!(got[0].1, dir.to_str().unwrap().as_bytes());
    }
}
