//! Java with ZGC: its heap is a memfd (`java_heap`) mapped three times
//! (ZGC's coloured views) plus the JVM's perf-data file mapped shared. The
//! JVM is dumped, killed and resumed by running its image: it counts on,
//! its heap checksum holds, and the image holds the heap once (about the
//! memory the JVM uses, not three times its heap).

use std::fs;
use std::process::Command;

use crimg_tests::java::{assert_loop_resumed, start_java_loop_with, JavaLoop};
use crimg_tests::process::{Workload, LINE_TIMEOUT};
use crimg_tests::programs::dump_or_panic;
use crimg_tests::{binaries, scratch_dir, skip_unless_root, TestBinfmt, TickStream};

const MIB: u64 = 1 << 20;

/// The bytes the memfd named `name` holds (allocated blocks), by its fd
/// in `pid`.
fn memfd_bytes(pid: i32, name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    for entry in fs::read_dir(format!("/proc/{pid}/fd")).ok()? {
        let path = entry.ok()?.path();
        let link = fs::read_link(&path).ok()?;
        if link
            .to_string_lossy()
            .starts_with(&format!("/memfd:{name}"))
        {
            return Some(fs::metadata(&path).ok()?.blocks() * 512);
        }
    }
    None
}

/// `/proc/PID/status` field `key` in bytes (`RssAnon:  123 kB`).
fn status_bytes(pid: i32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[test]
fn zgc_jvm_counts_on_and_its_image_holds_the_heap_once() {
    skip_unless_root!();
    let Some(JavaLoop {
        mut jvm,
        classes: _classes,
    }) = start_java_loop_with(20, &["-XX:+UseZGC"])
    else {
        return;
    };
    let ready = jvm.ready().expect("READY").clone();
    jvm.expect_line("TICK 5");
    let heap = memfd_bytes(jvm.pid(), "java_heap")
        .unwrap_or_else(|| panic!("no java_heap memfd open in the ZGC JVM {}", jvm.pid()));
    let anon = status_bytes(jvm.pid(), "RssAnon:");
    let file = status_bytes(jvm.pid(), "RssFile:");
    // The heap pages mapped (in any view): what the heap really uses.
    let shmem = status_bytes(jvm.pid(), "RssShmem:");

    let bins = binaries();
    let _binfmt = TestBinfmt::register(&bins.loader).unwrap_or_else(|e| panic!("{e}"));
    let scratch = scratch_dir();
    let dump = dump_or_panic(&bins, "a ZGC JVM", jvm.pid(), &scratch.path().join("out"));
    jvm.wait_exit(LINE_TIMEOUT).expect("crdump killed the JVM");
    let image = fs::metadata(&dump.image).unwrap().len();
    // Anonymous memory and the heap once; dirty private file pages (the
    // JVM's few relocated libraries) and the image's own notes fit in the
    // slack. Stored three times, the heap alone would exceed it.
    let used = heap.min(shmem);
    let bound = anon + used + 32 * MIB;
    eprintln!(
        "ZGC image {} MiB; heap memfd {} MiB allocated, RssShmem {} MiB, RssAnon {} MiB, RssFile {} MiB",
        image / MIB,
        heap / MIB,
        shmem / MIB,
        anon / MIB,
        file / MIB
    );
    assert!(
        image <= bound,
        "the image ({} MiB) is larger than the JVM's anonymous memory ({} MiB) plus its used heap once ({} MiB) plus 32 MiB",
        image / MIB,
        anon / MIB,
        used / MIB
    );
    let before = TickStream::from_lines(jvm.stdout_lines()).unwrap();

    let mut restored = Workload::spawn_command("restored ZGC JVM", Command::new(&dump.image))
        .unwrap_or_else(|e| panic!("{e}"));
    restored.expect_line("TICK ");
    assert_loop_resumed(&ready, &before, &mut restored);
}
