//! A huge `MAP_NORESERVE` reservation with a few pages written far apart
//! in it (what an AddressSanitizer build's shadow memory looks like): the
//! dump's cost and its image follow the pages written, not the address
//! space reserved, and the restored process finds every written page and
//! zeros around them. A dump that walked the 16 TiB (pagemap, memory)
//! would take minutes and hit the harness's timeout.

use crimg_tests::process::CheckTrigger;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crimg_tests::cli::{run, CLI_TIMEOUT};
use crimg_tests::roundtrip::{dump_and_kill, maps_of};
use crimg_tests::{binaries, scratch_dir, Workload};

#[test]
fn pages_scattered_in_a_16_tib_reservation_round_trip() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let bins = binaries();
    // 8192 pages (32 MiB) 4 MiB apart, in 16 TiB.
    let w = Workload::start("sparse_reserve", ["--gib", "16384", "--pages", "8192"]);
    let ready = w.ready().unwrap().clone();
    let addr = ready.number("addr").unwrap();
    let size = ready.number("size").unwrap();
    assert_eq!(size, 16 << 40);
    let dumped = dump_and_kill(&bins, w, &scratch.path().join("out"));

    // The image holds the written pages and little else.
    let written = 8192 * 4096;
    let image_len = std::fs::metadata(&dumped.dump.image).unwrap().len();
    assert!(
        image_len >= written && image_len < written + (8 << 20),
        "image of {image_len} bytes for {written} bytes written"
    );

    let mut restored = bins.restore("sparse_reserve", &dumped.dump.image).unwrap();
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.number("pages").unwrap(), 8192);
    assert_eq!(pass.number("sum").unwrap(), ready.number("sum").unwrap());
    // The whole reservation is back, at its address.
    let area = format!("{:x}-{:x} rw-p ", addr, addr + size);
    assert!(
        maps_of(restored.pid()).iter().any(|l| l.starts_with(&area)),
        "no {area} in the restored maps:\n{}",
        maps_of(restored.pid()).join("\n")
    );
}

/// A small ext4 file system in a file, loop-mounted on a directory for the
/// life of the guard.
struct LoopExt4(PathBuf);

impl LoopExt4 {
    /// `None` (with the reason printed) where the machine cannot make one.
    fn mount(image: &Path, dir: &Path, mib: u64) -> Option<LoopExt4> {
        let file = fs::File::create(image).unwrap();
        file.set_len(mib << 20).unwrap();
        drop(file);
        fs::create_dir_all(dir).unwrap();
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(image)
            .status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: mkfs.ext4 is missing or failed");
            return None;
        }
        let mounted = Command::new("mount")
            .args(["-t", "ext4", "-o", "loop"])
            .arg(image)
            .arg(dir)
            .status();
        if !mounted.is_ok_and(|s| s.success()) {
            eprintln!("skipped: no loop device to mount an ext4 file system on");
            return None;
        }
        Some(LoopExt4(dir.to_owned()))
    }
}

impl Drop for LoopExt4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// 32 MiB to write on a 16 MiB ext4 file system: the image's space is
/// reserved (`fallocate`) before a page is copied, so the dump fails at
/// once with one line naming the full disk, leaves nothing behind and the
/// process running with its memory intact.
#[test]
fn a_full_ext4_disk_fails_the_dump_with_one_line_and_the_target_runs_on() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let dir = scratch.path().join("small");
    let Some(_fs) = LoopExt4::mount(&scratch.path().join("small.img"), &dir, 16) else {
        return;
    };
    let mut w = Workload::start("sparse_reserve", ["--gib", "64", "--pages", "8192"]);
    let out = dir.join("out");
    let r = run(binaries().crdump_command(w.pid(), &out, false), CLI_TIMEOUT).expect("run crdump");
    assert_eq!(r.status.code(), Some(1), "{:?}: {}", r.status, r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line:\n{}", r.stderr);
    assert!(
        lines[0].starts_with("crdump: ")
            && lines[0].contains(&w.pid().to_string())
            && lines[0].contains("No space left on device"),
        "{}",
        lines[0]
    );
    assert!(!out.exists(), "left behind: {}", out.display());
    let left: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "lost+found")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let pass = w.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.number("pages").unwrap(), 8192);
}
