//! `crimg plan IMAGE`: the loader's stage 1 and planner run in crimg's
//! process and print what the loader would do, op by op, or why it would
//! refuse (its message and exit code). Nothing is changed: the image still
//! restores afterwards.

use std::fs;
use std::os::unix::fs::FileExt;

use crimg_tests::cli::{self, CLI_TIMEOUT};
use crimg_tests::roundtrip::dump_and_kill;
use crimg_tests::{binaries, scratch_dir, Workload};

/// `crimg plan` of an image: (exit code, stdout, stderr).
fn plan(image: &std::path::Path) -> (Option<i32>, String, String) {
    let bins = binaries();
    let mut c = bins.crimg_command(["plan"]);
    c.arg(image);
    let out = cli::run(c, CLI_TIMEOUT).unwrap();
    (out.status.code(), out.stdout, out.stderr)
}

#[test]
fn a_dumped_image_prints_its_plan_and_a_corrupt_one_the_refusal() {
    crimg_tests::skip_unless_root!();
    let scratch = scratch_dir();
    let mut counter = Workload::start(
        "counter",
        [
            "--threads".to_owned(),
            "3".to_owned(),
            "--tmpdir".to_owned(),
            scratch.path().display().to_string(),
        ],
    );
    counter.expect_line("TICK 2");
    let bins = binaries();
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    let image = &dumped.dump.image;
    let areas = &dumped.view.maps;

    let (code, text, stderr) = plan(image);
    assert_eq!(code, Some(0), "crimg plan: {stderr}\n{text}");
    let mut lines = text.lines();
    let head = lines.next().unwrap_or("");
    assert!(
        head.starts_with("window 0x") && head.contains("(4 threads,"),
        "{head}"
    );
    let ops: Vec<&str> = lines.collect();
    // One line per op, numbered from 0, as the header counts them.
    let count: usize = head
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert_eq!(ops.len(), count, "{text}");
    assert!(ops[0].trim_start().starts_with("0 "), "{}", ops[0]);
    // Every memory area of the task (but the kernel's own) is mapped at
    // its address, and its pages are read in.
    for line in areas {
        let range = line.split(' ').next().unwrap();
        if line.ends_with("[vdso]") || line.contains("[vvar") || line.ends_with("[vsyscall]") {
            continue;
        }
        let (start, end) = range.split_once('-').unwrap();
        let (start, end) = (
            u64::from_str_radix(start, 16).unwrap(),
            u64::from_str_radix(end, 16).unwrap(),
        );
        let label = format!("mmap {start:#x}-{end:#x}");
        assert!(
            ops.iter()
                .any(|l| l.split_whitespace().nth(1) == Some("mmap") && l.contains(&label)),
            "no `{label}` op for {line}:\n{text}"
        );
    }
    assert!(ops.iter().any(|l| l.contains("pread-all")), "{text}");
    // Each thread runs its own list: its personality, then the jump.
    let per_thread = ops
        .iter()
        .filter(|l| l.split_whitespace().nth(1) == Some("personality"))
        .count();
    assert_eq!(per_thread, 4, "{text}");
    let leaves = ops
        .iter()
        .filter(|l| {
            matches!(
                l.split_whitespace().nth(1),
                Some("gadget-exit" | "gadget-wake-exit" | "rt_sigreturn")
            )
        })
        .count();
    assert!(leaves >= 4, "{text}");

    // Nothing was changed: the same image still restores.
    let mut restored = bins.restore("counter", image).unwrap();
    restored.expect_line("TICK ");
    drop(restored);

    // A stored page flipped: the loader's refusal and its exit code (4).
    let bad = scratch.path().join("bad.crimg");
    fs::copy(image, &bad).unwrap();
    let len = fs::metadata(&bad).unwrap().len();
    let f = fs::OpenOptions::new().write(true).open(&bad).unwrap();
    f.write_all_at(b"\xde\xad\xbe\xef", len - 100).unwrap();
    drop(f);
    let (code, text, stderr) = plan(&bad);
    assert_eq!(code, Some(4), "{stderr}\n{text}");
    assert!(text.is_empty(), "{text}");
    assert!(
        stderr.contains("the loader would refuse it (exit 4)") && stderr.contains("corrupt image"),
        "{stderr}"
    );

    // Not an image at all: exit 3 as the loader's.
    let (code, _, stderr) = plan(scratch.path());
    assert_eq!(code, Some(3), "{stderr}");
}
