//! The image-file owner's bound on a restore, against a root caller: an
//! image owned by nobody never gets more than nobody has, neither in the
//! files the loader opens for it (opened as the task, never as root), nor
//! in its threads (none runs task code while a sibling is still root), nor
//! when the record already has the owner's ids (what the task ends with is
//! checked, whatever the caller's capabilities and securebits).

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crimg_tests::cli;
use crimg_tests::process::{LINE_TIMEOUT, READY_TIMEOUT};
use crimg_tests::roundtrip::{as_nobody, dump_and_kill, nobody_ids, Dumped};
use crimg_tests::{binaries, scratch_dir, workload_path, Binaries, Workload};

/// A copy of `image` owned by nobody (who could have written every byte).
fn owned_by_nobody(image: &Path, name: &str) -> PathBuf {
    let (nobody, nogroup) = nobody_ids();
    let copy = image.with_file_name(name);
    fs::copy(image, &copy).unwrap();
    chown(&copy, Some(nobody), Some(nogroup)).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o600)).unwrap();
    copy
}

/// Run `command` (the loader); it must exit with `code`: its one error line.
fn refusal(command: Command, code: i32) -> String {
    let output = cli::run(command, LINE_TIMEOUT).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        output.status.code(),
        Some(code),
        "the loader exited with {}, expected {code}; stdout:\n{}\nstderr:\n{}",
        output.status,
        output.stdout,
        output.stderr
    );
    let errors: Vec<&str> = output
        .stderr
        .lines()
        .filter(|line| !line.contains(": warning: "))
        .collect();
    assert_eq!(errors.len(), 1, "stderr:\n{}", output.stderr);
    errors[0].to_owned()
}

/// A Python that every user may run and map (the `python3` first on
/// root's PATH may live in root's home).
const PYTHON: &str = "/usr/bin/python3";

/// A root Python process holding `path` open read-write (`map`: also
/// mapped MAP_SHARED read-write); it answers each stdin line with what the
/// first bytes of its fd say.
const HOLDS_A_FILE: &str = r#"
import mmap, os, sys
mode, path = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
m = mmap.mmap(fd, 4096) if mode == "map" else None
print(f"READY pid={os.getpid()}", flush=True)
for line in sys.stdin:
    print("alive", os.pread(fd, 4, 0) if mode != "dev" else b"dev", flush=True)
"#;

/// Dump (and kill) a root Python process holding `path` (`mode`: `map`,
/// `fd`, `dev`), its cwd `cwd`; everything but `path` is open to nobody.
fn dumped_holder(bins: &Binaries, scratch: &Path, mode: &str, path: &Path) -> Dumped {
    dumped_holder_in(bins, scratch, scratch, mode, path)
}

/// [`dumped_holder`] with its working directory `cwd`.
fn dumped_holder_in(
    bins: &Binaries,
    scratch: &Path,
    cwd: &Path,
    mode: &str,
    path: &Path,
) -> Dumped {
    // The system's Python, which nobody may run.
    let mut command = Command::new(PYTHON);
    command
        .args(["-c", HOLDS_A_FILE, mode])
        .arg(path)
        .current_dir(cwd);
    let mut python = Workload::spawn_command("python holding a file", command).unwrap();
    if let Err(err) = python.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", python.stderr_report());
    }
    dump_and_kill(bins, python, &scratch.join("out"))
}

/// A scratch directory nobody can search, with a root-only directory
/// holding a root-only file of known bytes.
fn scratch_with_secret() -> (tempfile::TempDir, PathBuf) {
    let scratch = scratch_dir();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let secret_dir = scratch.path().join("secret");
    fs::create_dir(&secret_dir).unwrap();
    fs::set_permissions(&secret_dir, fs::Permissions::from_mode(0o700)).unwrap();
    let secret = secret_dir.join("data");
    fs::write(&secret, vec![b's'; 4096]).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    (scratch, secret)
}

/// A nobody-owned image of a root process that had a root-only file (in a
/// root-only directory) mapped shared read-write, or open read-write:
/// root running it must not open that file for it. Refused (exit 5,
/// cannot be opened), the file unchanged; the same image owned by root
/// restores (the refusal is the owner's bound, not a broken image).
#[test]
fn a_nobody_image_cannot_open_a_root_only_file() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    for mode in ["map", "fd"] {
        let (scratch, secret) = scratch_with_secret();
        let dumped = dumped_holder(&bins, scratch.path(), mode, &secret);
        let forged = owned_by_nobody(&dumped.dump.image, "forged.crimg");
        let message = refusal(bins.loader_command(&forged), 5);
        let what = if mode == "map" {
            "mapped file"
        } else {
            "open file"
        };
        assert!(
            message.contains(&format!("{what} {}", secret.display()))
                && message.contains("cannot be opened"),
            "{mode}: {message}"
        );
        assert_eq!(fs::read(&secret).unwrap(), vec![b's'; 4096], "{mode}");

        let mut restored = bins
            .restore("restored root image", &dumped.dump.image)
            .unwrap();
        restored.send_line("x").unwrap();
        restored.expect_line("alive b'ssss'");
    }
}

/// A nobody-owned image of a root process whose working directory was a
/// root-only directory: root running it must not enter it for the task
/// (the plan's fchdir runs before the credentials change). Refused (exit
/// 5); owned by root, the image restores into that directory.
#[test]
fn a_nobody_image_cannot_enter_a_root_only_directory() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let (scratch, secret) = scratch_with_secret();
    let shared = scratch.path().join("shared");
    fs::write(&shared, b"pub!").unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o666)).unwrap();
    let secret_dir = secret.parent().unwrap().to_owned();
    let dumped = dumped_holder_in(&bins, scratch.path(), &secret_dir, "fd", &shared);
    let forged = owned_by_nobody(&dumped.dump.image, "forged.crimg");
    let message = refusal(bins.loader_command(&forged), 5);
    assert!(
        message.contains(&format!("working directory {}", secret_dir.display())),
        "{message}"
    );
    let mut restored = bins
        .restore("restored root image", &dumped.dump.image)
        .unwrap();
    restored.send_line("x").unwrap();
    restored.expect_line("alive b'pub!'");
    assert_eq!(
        fs::read_link(format!("/proc/{}/cwd", restored.pid())).unwrap(),
        secret_dir
    );
}

/// Replace the string `from` by `to` (the same length) everywhere in the
/// image's string table (and nowhere else), and reseal it.
fn patch_string(image: &Path, name: &str, from: &[u8], to: &[u8]) -> PathBuf {
    use image_format::records::{note, OWNER_CRIMG};
    assert_eq!(from.len(), to.len());
    let mut bytes = fs::read(image).unwrap();
    let (start, len) = {
        let parsed = image_format::Image::parse(&bytes).unwrap_or_else(|err| panic!("{err}"));
        let base = bytes.as_ptr() as usize;
        let strtab = parsed
            .notes()
            .map(|n| n.unwrap_or_else(|err| panic!("{err}")))
            .find(|n| n.owner == OWNER_CRIMG && n.note_type == note::STRTAB)
            .expect("the image has a string table");
        (strtab.desc.as_ptr() as usize - base, strtab.desc.len())
    };
    // Every one: the command line is in the table too.
    let table = &mut bytes[start..start + len];
    let mut found = 0;
    for at in 0..table.len().saturating_sub(from.len() - 1) {
        if &table[at..at + from.len()] == from {
            table[at..at + to.len()].copy_from_slice(to);
            found += 1;
        }
    }
    assert!(
        found > 0,
        "no {} in the string table",
        String::from_utf8_lossy(from)
    );
    image_format::reseal(&mut bytes).unwrap_or_else(|err| panic!("cannot reseal: {err}"));
    let patched = image.with_file_name(name);
    fs::write(&patched, &bytes).unwrap();
    patched
}

/// An fd of /dev/zero whose recorded path names another device: refused
/// (exit 5) as another file when root owns the image (/dev/full, which
/// root may open: the device's inode differs), and as not openable by the
/// task when nobody does (/dev/kmsg, which root could write to).
#[test]
fn a_device_fd_whose_path_was_patched_is_refused() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dumped = dumped_holder(&bins, scratch.path(), "dev", Path::new("/dev/zero"));

    let full = patch_string(&dumped.dump.image, "full.crimg", b"/dev/zero", b"/dev/full");
    let message = refusal(bins.loader_command(&full), 5);
    assert!(
        message.contains("open file /dev/full changed since the dump"),
        "{message}"
    );

    let kmsg = patch_string(&dumped.dump.image, "kmsg.crimg", b"/dev/zero", b"/dev/kmsg");
    let kmsg = owned_by_nobody(&kmsg, "kmsg-nobody.crimg");
    let message = refusal(bins.loader_command(&kmsg), 5);
    assert!(
        message.contains("open file /dev/kmsg cannot be opened"),
        "{message}"
    );

    // Unpatched, it restores.
    let mut restored = bins.restore("restored image", &dumped.dump.image).unwrap();
    restored.send_line("x").unwrap();
    restored.expect_line("alive b'dev'");
}

/// How many threads the victim has besides its main thread.
const THREADS: &str = "64";

/// A 64-thread root process restored from a nobody-owned image, three
/// times: each thread, paused before the dump until its own uid changes,
/// compares it with every sibling's from its first instructions after the
/// restore on; none may see a sibling that
/// still has uid 0 (a thread let go before the others dropped theirs runs
/// the owner's code beside root threads in the loader's writable window).
#[test]
fn no_thread_runs_before_every_thread_dropped_its_credentials() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = Command::new(workload_path("cred_threads"));
    command.arg(THREADS).current_dir(scratch.path());
    let mut victim = Workload::spawn_command("cred_threads", command).unwrap();
    if let Err(err) = victim.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", victim.stderr_report());
    }
    victim.send_line("check").unwrap();
    victim.expect_line("CHECKED uid=0 mixed=0");
    victim.send_line("pause").unwrap();
    victim.expect_line("PAUSED");
    let dumped = dump_and_kill(&bins, victim, &scratch.path().join("out"));
    let forged = owned_by_nobody(&dumped.dump.image, "forged.crimg");
    let (nobody, _) = nobody_ids();
    for round in 0..3 {
        let mut restored = bins.restore("restored cred_threads", &forged).unwrap();
        restored.send_line("check").unwrap();
        let line = restored.expect_line("CHECKED ");
        let mixed: Vec<String> = restored
            .stdout_lines()
            .iter()
            .filter(|l| l.starts_with("MIXED"))
            .cloned()
            .collect();
        assert_eq!(
            line,
            format!("CHECKED uid={nobody} mixed=0"),
            "round {round}: {mixed:?}\n{}",
            restored.stderr_report()
        );
    }
}

/// The image of a counter run as nobody (its record: exactly nobody's
/// ids, no capabilities), owned by nobody.
fn nobody_counter_image(bins: &Binaries, scratch: &Path) -> PathBuf {
    let (nobody, nogroup) = nobody_ids();
    fs::set_permissions(scratch, fs::Permissions::from_mode(0o755)).unwrap();
    let tmp = scratch.join("tmp");
    fs::create_dir(&tmp).unwrap();
    chown(&tmp, Some(nobody), Some(nogroup)).unwrap();
    let mut command = as_nobody();
    command
        .arg(workload_path("counter"))
        .args(["--tmpdir", tmp.to_str().unwrap()])
        .args(["--heap-mb", "8", "--anon-mb", "4"])
        .current_dir(scratch);
    let mut counter = Workload::spawn_command("counter as nobody", command).unwrap();
    if let Err(err) = counter.wait_ready(READY_TIMEOUT) {
        panic!("{err}\n{}", counter.stderr_report());
    }
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(bins, counter, &scratch.join("out"));
    owned_by_nobody(&dumped.dump.image, "nobody.crimg")
}

/// An image recorded with exactly its owner's ids (nothing to lower), run
/// by root that cannot or will not shed root: without CAP_SETUID and
/// CAP_SETGID (bounding set) the task would stay uid 0 with capabilities;
/// with SECBIT_NO_SETUID_FIXUP it would switch to nobody but keep every
/// capability. Both refused (exit 10) before anything changes; plain root
/// restores it as nobody with no capabilities.
#[test]
fn root_that_would_keep_root_or_capabilities_is_refused_for_a_users_image() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    let image = nobody_counter_image(&bins, scratch.path());
    let (nobody, _) = nobody_ids();
    for setpriv in [
        &["--bounding-set", "-setuid,-setgid"][..],
        &["--securebits", "+no_setuid_fixup"][..],
    ] {
        let mut command = Command::new("setpriv");
        command
            .args(setpriv)
            .arg("--")
            .arg(&bins.loader)
            .arg(&image);
        let message = refusal(command, 10);
        assert!(
            message.contains(&format!("belongs to uid {nobody}"))
                && message.contains("more than its owner has"),
            "{setpriv:?}: {message}"
        );
    }
    let mut restored = bins.restore("restored nobody image", &image).unwrap();
    restored.expect_line("TICK ");
    let status = fs::read_to_string(format!("/proc/{}/status", restored.pid())).unwrap();
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("Uid:"), format!("{nobody} {nobody} {nobody} {nobody}"));
    assert_eq!(line("CapEff:"), "0000000000000000");
    assert_eq!(line("CapPrm:"), "0000000000000000");
}

/// A tmpfs mounted `nosuid` at a path, unmounted (lazily) on drop.
struct NosuidMount(PathBuf);

impl NosuidMount {
    fn at(dir: &Path) -> NosuidMount {
        use nix::mount::{mount, MsFlags};
        fs::create_dir(dir).unwrap();
        mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=64m,mode=0755"),
        )
        .unwrap_or_else(|err| panic!("mount a nosuid tmpfs at {}: {err}", dir.display()));
        NosuidMount(dir.to_owned())
    }
}

impl Drop for NosuidMount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A root-owned image of a root process on a `nosuid` mount: no one on
/// this machine vouched for it (a stick, a user's mount), as the kernel
/// would not honour a setuid bit there. It counts as owned by nobody: root
/// running it gets a process with nobody's ids and no capabilities, said
/// in one warning; the same image elsewhere restores root.
#[test]
fn a_root_image_on_a_nosuid_mount_runs_as_nobody() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let shared = scratch.path().join("shared");
    fs::write(&shared, b"pub!").unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o666)).unwrap();
    let dumped = dumped_holder(&bins, scratch.path(), "fd", &shared);
    let mount = NosuidMount::at(&scratch.path().join("nosuid"));
    let image = mount.0.join("root.crimg");
    fs::copy(&dumped.dump.image, &image).unwrap();
    let (nobody, _) = nobody_ids();

    let mut restored = bins.restore("restored from nosuid", &image).unwrap();
    restored.send_line("x").unwrap();
    restored.expect_line("alive b'pub!'");
    let status = fs::read_to_string(format!("/proc/{}/status", restored.pid())).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap();
    assert_eq!(
        (uid.split_whitespace().collect::<Vec<_>>(), cap_eff.trim()),
        (vec![nobody.to_string().as_str(); 4], "0000000000000000"),
        "{}",
        restored.stderr_report()
    );
    // Printed before the restore, on another pipe than stdout.
    let warned = |w: &mut Workload| {
        w.stderr_lines()
            .iter()
            .filter(|l| l.contains("warning") && l.contains("nosuid mount"))
            .count()
    };
    let deadline = std::time::Instant::now() + LINE_TIMEOUT;
    while warned(&mut restored) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(warned(&mut restored), 1, "{}", restored.stderr_report());
    drop(restored);

    let mut restored = bins
        .restore("restored root image", &dumped.dump.image)
        .unwrap();
    restored.send_line("x").unwrap();
    restored.expect_line("alive b'pub!'");
    let status = fs::read_to_string(format!("/proc/{}/status", restored.pid())).unwrap();
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
    assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), vec!["0"; 4]);
}

/// A nobody-owned image whose file has group root (as a file created in a
/// setgid directory of group root would, whatever its creator's groups):
/// nobody is no member of root, so the task gets nobody's primary group
/// (from /etc/passwd), not gid 0, and a warning says so.
#[test]
fn an_images_group_counts_only_when_its_owner_is_a_member() {
    crimg_tests::skip_unless_root!();
    let bins = binaries();
    let scratch = scratch_dir();
    fs::set_permissions(scratch.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let shared = scratch.path().join("shared");
    fs::write(&shared, b"pub!").unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o666)).unwrap();
    let dumped = dumped_holder(&bins, scratch.path(), "fd", &shared);
    let forged = owned_by_nobody(&dumped.dump.image, "group-root.crimg");
    chown(&forged, None, Some(0)).unwrap();
    let (nobody, nogroup) = nobody_ids();

    let mut restored = bins.restore("restored group-root image", &forged).unwrap();
    restored.send_line("x").unwrap();
    restored.expect_line("alive b'pub!'");
    let status = fs::read_to_string(format!("/proc/{}/status", restored.pid())).unwrap();
    let ids = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids("Uid:"), vec![nobody.to_string(); 4]);
    assert_eq!(
        (ids("Gid:"), ids("Groups:")),
        (vec![nogroup.to_string(); 4], vec![]),
        "{}",
        restored.stderr_report()
    );
    let warned = |w: &mut Workload| {
        w.stderr_lines()
            .iter()
            .any(|l| l.contains(&format!("group 0 is not one of uid {nobody}'s groups")))
    };
    let deadline = std::time::Instant::now() + LINE_TIMEOUT;
    while !warned(&mut restored) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(warned(&mut restored), "{}", restored.stderr_report());
}
