//! Incremental checkpoints: `crdump --pre-dump`, then `crdump --parent
//! PREV`, each image storing only the pages that changed since its parent
//! and taking the others from it. The newest image of a chain runs
//! directly (the loader reads those pages from the parents), a parent that
//! changed, went or was replaced by a symlink is refused by the loader with
//! one line naming it before anything is torn down, and `crimg verify`
//! checks the whole chain and names the broken link. It also runs lazily
//! (`crimg run --lazy`): the page server reads each page from the link
//! that holds it and verifies each segment before it copies a page of it.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crimg_tests::cli::{self, Binaries, RunOutput, CLI_TIMEOUT};
use crimg_tests::inspect::fd_numbers as fds_of;
use crimg_tests::lazy::{
    expect_killed_for_a_mismatch, registered_areas, run_lazy_image, wait_fill_done,
};
use crimg_tests::process::{CheckTrigger, LINE_TIMEOUT};
use crimg_tests::tree::children_of;
use crimg_tests::{binaries, scratch_dir, Workload};

/// A chain of three dumps of one `incr_counter`: `1` (pre-dump), `2`
/// (after "step 1") and `3` (after "step 2", which kills it).
struct Chain {
    pid: i32,
    dirs: [PathBuf; 3],
}

impl Chain {
    fn image(&self, i: usize) -> PathBuf {
        self.dirs[i].join(format!("task-{}.crimg", self.pid))
    }
}

fn crdump(bins: &Binaries, pid: i32, out: &Path, extra: &[&str]) -> RunOutput {
    let mut command = bins.crdump_command(pid, out, false);
    command.args(extra);
    cli::run_ok(command, CLI_TIMEOUT).unwrap_or_else(|err| panic!("crdump {extra:?}: {err}"))
}

fn step(victim: &mut Workload, n: u32) {
    victim
        .send_line(&format!("step {n}"))
        .unwrap_or_else(|err| panic!("{err}"));
    victim
        .wait_line("STEPPED", LINE_TIMEOUT)
        .unwrap_or_else(|err| panic!("{err}"));
}

fn make_chain(bins: &Binaries, root: &Path, mb: &str) -> Chain {
    let mut victim = Workload::start("incr_counter", ["--mb", mb]);
    let pid = victim.pid();
    let dirs = [root.join("1"), root.join("2"), root.join("3")];
    crdump(bins, pid, &dirs[0], &["--pre-dump"]);
    step(&mut victim, 1);
    let parent = dirs[0].to_str().unwrap();
    crdump(
        bins,
        pid,
        &dirs[1],
        &["--parent", parent, "--leave-running"],
    );
    step(&mut victim, 2);
    let parent = dirs[1].to_str().unwrap();
    crdump(bins, pid, &dirs[2], &["--parent", parent]);
    let status = victim
        .wait_exit(LINE_TIMEOUT)
        .unwrap_or_else(|err| panic!("not killed by the last dump: {err}"));
    assert!(!status.success());
    Chain { pid, dirs }
}

/// `crimg info --json`'s `stored_bytes`.
fn stored_bytes(bins: &Binaries, image: &Path) -> u64 {
    let json: serde_json::Value =
        serde_json::from_str(&bins.info_json(image).unwrap_or_else(|err| panic!("{err}"))).unwrap();
    json["stored_bytes"].as_u64().unwrap()
}

/// Runs `image` with the loader and expects a refusal: returns its exit
/// code and stderr.
fn refused(bins: &Binaries, image: &Path) -> (i32, String) {
    let out = cli::run(bins.loader_command(image), CLI_TIMEOUT).unwrap();
    assert!(!out.status.success(), "the loader ran {}", image.display());
    (out.status.code().unwrap_or(-1), out.stderr)
}

#[test]
fn a_chain_of_three_restores_the_newest_state() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let chain = make_chain(&bins, scratch.path(), "32");
    // Each incremental image stores only what changed: step 1 wrote half
    // of the 32 MiB, step 2 a third.
    let sizes: Vec<u64> = (0..3)
        .map(|i| stored_bytes(&bins, &chain.image(i)))
        .collect();
    assert!(sizes[0] >= 32 << 20, "{sizes:?}");
    assert!(sizes[1] < sizes[0] * 6 / 10, "{sizes:?}");
    assert!(sizes[2] < sizes[0] * 4 / 10, "{sizes:?}");
    let info = bins.info_json(&chain.image(2)).unwrap();
    assert!(info.contains("\"../2/task-"), "{info}");
    bins.verify(&chain.image(2))
        .unwrap_or_else(|err| panic!("crimg verify of the chain: {err}"));

    let mut restored = bins
        .restore("restored incr_counter", &chain.image(2))
        .unwrap_or_else(|err| panic!("{err}"));
    let gen_sum = newest_gen_sum(32);
    let facts = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(facts.get("gen_sum"), Some(gen_sum.as_str()), "{facts:?}");
    // The parents' fds are gone with the loader's.
    assert_eq!(fds_of(restored.pid()), [0, 1, 2]);
    restored.send_line("quit").unwrap();
    restored.wait_line("BYE", LINE_TIMEOUT).unwrap();

    // crrestore-tree names the image by an fd: the loader still finds
    // the parents beside the image file.
    let tree = crimg_tests::tree::crrestore_tree_binary().unwrap();
    let mut command = std::process::Command::new(tree);
    command.arg(&chain.dirs[2]);
    let mut orchestrator =
        Workload::spawn_command("crrestore-tree", command).unwrap_or_else(|err| panic!("{err}"));
    let facts = orchestrator.expect_pass(CheckTrigger::Stdin);
    let pid: i32 = facts.get("pid").unwrap().parse().unwrap();
    let _guard = crimg_tests::PidGuard::new(pid).unwrap();
    assert_eq!(facts.get("gen_sum"), Some(gen_sum.as_str()), "{facts:?}");
    orchestrator.send_line("quit").unwrap();
    orchestrator.wait_line("BYE", LINE_TIMEOUT).unwrap();
}

/// The `gen_sum` of the newest state of a chain of `mb` MiB: generation 1
/// on the even pages not a multiple of 3, 2 on those that are.
fn newest_gen_sum(mb: u64) -> String {
    let pages = mb * 256;
    let twos = pages.div_ceil(3);
    let ones = pages.div_ceil(2) - pages.div_ceil(6);
    (ones + 2 * twos).to_string()
}

/// The newest image of a chain of three restored lazily: its 32 MiB area
/// is left to the page server, which reads each page from the link that
/// holds it (the newest stores the pages a multiple of 3, the middle one
/// the other even ones, the first the rest: every segment the newest
/// takes from its parents is pieces of both) and verifies each segment,
/// assembled from its pieces, before it copies a page of it. The task's
/// check of all its memory passes at once (most of it not in yet) and
/// once the fill is done, when nothing is left registered, no child of it
/// and no fd of the loader (the parents' included).
#[test]
fn a_chain_of_three_restores_lazily() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let chain = make_chain(&bins, scratch.path(), "32");
    let gen_sum = newest_gen_sum(32);
    let mut restored = run_lazy_image(&bins, &chain.image(2), "lazily restored incr_counter");
    let facts = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(facts.get("gen_sum"), Some(gen_sum.as_str()), "{facts:?}");
    let rpid = restored.pid();
    wait_fill_done(rpid);
    let facts = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(facts.get("gen_sum"), Some(gen_sum.as_str()), "{facts:?}");
    assert_eq!(registered_areas(rpid), Vec::<String>::new());
    assert_eq!(fds_of(rpid), [0, 1, 2]);
    assert_eq!(children_of(rpid), Vec::<i32>::new(), "children of {rpid}");
    restored.send_line("quit").unwrap();
    restored.wait_line("BYE", LINE_TIMEOUT).unwrap();
}

/// Flip a byte of a page of the first image of `chain` that the newest
/// takes from it in its largest area (the one a lazy restore leaves to
/// the page server); its headers and notes intact, so the links check.
fn corrupt_first_image_page(chain: &Chain) {
    let bytes: Vec<Vec<u8>> = (0..3)
        .rev()
        .map(|i| fs::read(chain.image(i)).unwrap())
        .collect();
    let images: Vec<image_format::Image<'_>> = bytes
        .iter()
        .map(|b| image_format::Image::parse(b).unwrap())
        .collect();
    let area = images[0]
        .vmas()
        .unwrap()
        .max_by_key(|v| v.end - v.start)
        .unwrap();
    let mut target = None;
    for s in images[0].segments() {
        if !s.from_parent() || s.vaddr < area.start || s.end() > area.end {
            continue;
        }
        image_format::chain::resolve::<image_format::chain::ChainError>(
            &images,
            1,
            s.vaddr,
            s.len,
            &mut |p| {
                if p.link == 2 && target.is_none() {
                    target = Some(p.offset);
                }
                Ok(())
            },
        )
        .unwrap();
        if target.is_some() {
            break;
        }
    }
    let at = target.expect("a page of the first image the newest takes") + 100;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(chain.image(0))
        .unwrap();
    file.write_all_at(&[bytes[2][at as usize] ^ 0x5a], at)
        .unwrap();
}

/// A page the newest image takes from the first one corrupted: a lazy
/// restore does not read it before the task runs; the page server finds
/// the mismatch when it verifies the segment (its pieces from the first
/// and the middle image) and kills the task with one line. The eager
/// restore refuses the same chain before anything changes.
#[test]
fn lazy_restore_of_a_corrupt_parent_page_kills_with_a_line() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let chain = make_chain(&bins, scratch.path(), "32");
    corrupt_first_image_page(&chain);
    let mut restored = run_lazy_image(&bins, &chain.image(2), "corrupt lazy incr_counter");
    let report = expect_killed_for_a_mismatch(&mut restored);
    assert!(report.contains("read from its parent images"), "{report}");
    let (code, stderr) = refused(&bins, &chain.image(2));
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
}

/// The server reads the parents after the task resumes: without a read
/// lease on one (here the first image is open for writing elsewhere)
/// `--lazy` is refused before anything changes (exit 7, one line naming
/// that parent); an eager restore still runs the chain.
#[test]
fn lazy_restore_without_a_lease_on_a_parent_is_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let chain = make_chain(&bins, scratch.path(), "8");
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(chain.image(0))
        .unwrap();
    let mut lazy = bins.crimg_command(["run", "--lazy"]);
    lazy.arg(chain.image(2));
    let out = cli::run(lazy, CLI_TIMEOUT).unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let name = format!("task-{}.crimg", chain.pid);
    assert!(
        out.stderr.contains(&format!(
            "--lazy needs a read lease on parent image ../1/{name}"
        )),
        "{}",
        out.stderr
    );
    let mut restored = bins
        .restore("eagerly restored incr_counter", &chain.image(2))
        .unwrap_or_else(|err| panic!("{err}"));
    let facts = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(facts.get("gen_sum"), Some(newest_gen_sum(8).as_str()));
    restored.send_line("quit").unwrap();
    restored.wait_line("BYE", LINE_TIMEOUT).unwrap();
    drop(writer);
}

#[test]
fn a_broken_chain_is_refused_naming_the_link() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let chain = make_chain(&bins, scratch.path(), "4");
    let newest = chain.image(2);
    let first = chain.image(0);
    let name = format!("task-{}.crimg", chain.pid);
    let saved = scratch.path().join("saved.crimg");
    fs::copy(&first, &saved).unwrap();

    // Pages of the first image damaged (its headers and notes intact):
    // the newest image's checksums of the pages it takes catch it.
    let bytes = fs::read(&first).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&first).unwrap();
    let notes_end = image_format::Image::parse(&bytes)
        .unwrap()
        .segment(0)
        .unwrap()
        .offset;
    let mut at = notes_end + 100;
    while at < bytes.len() as u64 {
        file.write_all_at(&[bytes[at as usize] ^ 0x5a], at).unwrap();
        at += 4096;
    }
    drop(file);
    let (code, stderr) = refused(&bins, &newest);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    let mut command = bins.crimg_command(["verify"]);
    command.arg(&newest);
    let out = cli::run(command, CLI_TIMEOUT).unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("checksum mismatch"), "{}", out.stderr);

    // The first image gone: refused, naming it as the middle one records it.
    fs::remove_file(&first).unwrap();
    let (code, stderr) = refused(&bins, &newest);
    assert_eq!(code, 5, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("parent image ../1/{name}")),
        "{stderr}"
    );
    let mut command = bins.crimg_command(["verify"]);
    command.arg(&newest);
    let out = cli::run(command, CLI_TIMEOUT).unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains(&format!("1/{name}")), "{}", out.stderr);

    // A symlink planted in its place, to the intact copy: never followed.
    std::os::unix::fs::symlink(&saved, &first).unwrap();
    let (code, stderr) = refused(&bins, &newest);
    assert_eq!(code, 5, "{stderr}");
    assert!(stderr.contains("symlink"), "{stderr}");
    fs::remove_file(&first).unwrap();

    // The intact copy back: the chain runs again (the loader refused
    // before it changed anything, so the check is all it did).
    fs::copy(&saved, &first).unwrap();
    bins.verify(&newest).unwrap_or_else(|err| panic!("{err}"));

    // The middle image replaced by another image of the same process
    // (the first): not the parent the newest recorded.
    let middle = chain.image(1);
    fs::copy(&first, &middle).unwrap();
    let (code, stderr) = refused(&bins, &newest);
    assert_eq!(code, 5, "{stderr}");
    assert!(
        stderr.contains(&format!("parent image ../2/{name} is not the one")),
        "{stderr}"
    );
}

/// The area sizes crdump -v says write tracking covered ("found by write
/// tracking in N of areas").
fn tracked(out: &RunOutput) -> String {
    out.stdout
        .split("found by write tracking in ")
        .nth(1)
        .and_then(|rest| rest.split(" of areas").next())
        .unwrap_or_else(|| panic!("no incremental line in {}", out.stdout))
        .to_owned()
}

/// Whether a write-tracking holder for `pid` listens (its abstract socket).
fn holder_listens(pid: i32) -> bool {
    fs::read_to_string("/proc/net/unix")
        .unwrap()
        .contains(&format!("@crimg-incr-{pid}-"))
}

#[test]
fn write_tracking_finds_the_changes_and_leaves_no_trace() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let root = scratch.path();
    let mut victim = Workload::start("incr_counter", ["--mb", "32"]);
    let pid = victim.pid();
    let fds_before = fds_of(pid);
    let dir = |n: u32| root.join(n.to_string());
    let arg = |n: u32| dir(n).to_str().unwrap().to_owned();
    crdump(&bins, pid, &dir(1), &["--pre-dump"]);
    // The task keeps no fd of it; a holder keeps the tracking.
    assert_eq!(fds_of(pid), fds_before);
    assert!(holder_listens(pid));

    step(&mut victim, 1);
    let out = crdump(
        &bins,
        pid,
        &dir(2),
        &["-v", "--parent", &arg(1), "--leave-running"],
    );
    assert_ne!(tracked(&out), "0 B", "{}", out.stdout);
    let sizes = [
        stored_bytes(&bins, &image_of(&dir(1), pid)),
        stored_bytes(&bins, &image_of(&dir(2), pid)),
    ];
    assert!(sizes[1] < sizes[0] * 6 / 10, "{sizes:?}");

    // Pages moved by mremap onto addresses whose parent pages differ: the
    // moved areas are no longer registered, so they are compared.
    victim.send_line("swap").unwrap();
    victim.wait_line("SWAPPED", LINE_TIMEOUT).unwrap();
    crdump(
        &bins,
        pid,
        &dir(3),
        &["-v", "--parent", &arg(2), "--leave-running"],
    );

    // Over 2 again, not 3 which armed the tracking last: not trusted.
    let out = crdump(&bins, pid, &dir(4), &["-v", "--parent", &arg(2)]);
    assert_eq!(tracked(&out), "0 B", "{}", out.stdout);
    victim.wait_exit(LINE_TIMEOUT).unwrap();

    let pages = 32 * 256u64;
    for n in [3, 4] {
        let mut restored = bins
            .restore("restored incr_counter", &image_of(&dir(n), pid))
            .unwrap_or_else(|err| panic!("{err}"));
        let facts = restored.expect_pass(CheckTrigger::Stdin);
        assert_eq!(facts.get("gen_sum"), Some((pages / 2).to_string().as_str()));
        restored.send_line("quit").unwrap();
        restored.wait_line("BYE", LINE_TIMEOUT).unwrap();
    }
    // The holder went with the task.
    let deadline = std::time::Instant::now() + LINE_TIMEOUT;
    while holder_listens(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder of {pid} outlives it"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn image_of(dir: &Path, pid: i32) -> PathBuf {
    dir.join(format!("task-{pid}.crimg"))
}
