//! The trampoline's ABI lives in one place (`binfmt_loader::plan::abi`) and
//! reaches its machine code as `const` operands: a change to the layout of
//! `Op` or `WindowHeader` either carries into the code by itself, or fails
//! the build. Shown on copies of the loader crate with the structs edited:
//!
//! * fields reordered: the copy builds, its trampoline reads the new
//!   offsets (seen in its disassembly), it restores a threaded task that
//!   checks its own state, and an op refused after the point of no return
//!   (a seccomp filter fails `close_range`) is reported with its label,
//!   word for word as the real loader reports it;
//! * a field the code reads as 32 bits widened, or the header grown past
//!   its room: the copy does not build, and the error names the ABI check.
//!
//! The copies build in `target/abi-mutants/` (kept between runs so only
//! the loader itself is compiled again), offline, from the workspace's
//! lock file. Each copy's crate has its own directory name: cargo keys a
//! path package's build by its path within its workspace, so copies at
//! the same relative path would share (and reuse) one build.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crimg_tests::cli::{self, RunOutput};
use crimg_tests::process::CheckTrigger;
use crimg_tests::roundtrip::{assert_ticks_resume, dump_and_kill, maps_of};
use crimg_tests::{binaries, scratch_dir, Binaries, Workload};

/// A cold build of the copy compiles its dependencies too.
const BUILD_TIMEOUT: Duration = Duration::from_secs(1800);

/// `text` with the fields of `pub struct <name>` put in `order` (their
/// doc comments dropped); every field must be named once.
fn reorder_fields(text: &str, name: &str, order: &[&str]) -> String {
    let open = format!("pub struct {name} {{\n");
    let start = text.find(&open).expect("the struct is declared") + open.len();
    let end = start + text[start..].find("\n}").expect("the struct ends");
    let fields: Vec<&str> = text[start..end]
        .lines()
        .filter(|line| line.trim_start().starts_with("pub "))
        .collect();
    assert_eq!(fields.len(), order.len(), "fields of {name}: {fields:?}");
    let reordered: Vec<&str> = order
        .iter()
        .map(|field| {
            let prefix = format!("    pub {field}: ");
            *fields
                .iter()
                .find(|line| line.starts_with(&prefix))
                .unwrap_or_else(|| panic!("{name} has no field {field}: {fields:?}"))
        })
        .collect();
    format!("{}{}{}", &text[..start], reordered.join("\n"), &text[end..])
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the workspace")
        .to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The copied loader crate of mutant `name`, in its workspace.
fn member(name: &str) -> String {
    format!("binfmt-loader-{name}")
}

/// A workspace at `target/abi-mutants/<name>` holding a copy of the
/// loader crate whose `plan/abi.rs` went through `edit` (which must change
/// it), with the other crates taken from this workspace by path.
fn mutant(name: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let ws = workspace();
    let dir = ws.join("target/abi-mutants").join(name);
    let crate_dir = dir.join(member(name));
    let _ = fs::remove_dir_all(&crate_dir);
    fs::create_dir_all(&dir).unwrap();
    copy_dir(&ws.join("binfmt-loader/src"), &crate_dir.join("src"));
    for file in ["Cargo.toml", "build.rs"] {
        fs::copy(ws.join("binfmt-loader").join(file), crate_dir.join(file)).unwrap();
    }
    let abi = crate_dir.join("src/plan/abi.rs");
    let text = fs::read_to_string(&abi).unwrap();
    let edited = edit(&text);
    assert_ne!(edited, text, "mutation {name} changed nothing");
    fs::write(&abi, edited).unwrap();

    // The workspace manifest: the loader alone, the rest by absolute path.
    let root = fs::read_to_string(ws.join("Cargo.toml")).unwrap();
    let mut manifest = String::new();
    for line in root.lines() {
        let line = if line.starts_with("members") {
            format!("members = [\"{}\"]", member(name))
        } else if line.starts_with("exclude") {
            continue;
        } else if line.starts_with("binfmt-loader") {
            format!("binfmt-loader = {{ path = \"{}\" }}", member(name))
        } else if line.contains("path = \"") {
            let (head, rest) = line.split_once("path = \"").unwrap();
            format!("{head}path = \"{}/{rest}", ws.display())
        } else {
            line.to_owned()
        };
        manifest.push_str(&line);
        manifest.push('\n');
    }
    fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    fs::copy(ws.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    dir
}

/// `cargo build` of the copy's loader binary.
fn build(dir: &Path) -> RunOutput {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(dir)
        .args([
            "build",
            "--offline",
            "-p",
            "binfmt-loader",
            "--bin",
            "crimg-loader",
        ])
        .env(
            "CARGO_TARGET_DIR",
            workspace().join("target/abi-mutants/target"),
        )
        .env_remove("RUSTFLAGS");
    cli::run(command, BUILD_TIMEOUT).unwrap()
}

/// The trampoline's instructions in `binary`, without addresses.
fn trampoline_disassembly(binary: &Path) -> Vec<String> {
    let mut command = Command::new("objdump");
    command.args(["-d", "--no-show-raw-insn"]).arg(binary);
    let out = cli::run(command, cli::CLI_TIMEOUT).unwrap();
    assert!(out.status.success(), "objdump failed: {}", out.stderr);
    out.stdout
        .lines()
        .skip_while(|line| !line.ends_with("<crimg_trampoline_start>:"))
        .take_while(|line| !line.ends_with("<crimg_trampoline_end>:"))
        .filter_map(|line| {
            line.split_once(":\t")
                .map(|(_, insn)| insn.trim().to_owned())
        })
        .collect()
}

/// `Op` and `WindowHeader` with their fields in another order (same
/// sizes): the code must follow.
#[test]
fn reordered_op_fields_reach_the_trampoline_and_it_still_restores() {
    // Every field the trampoline reads moves.
    let dir = mutant("reordered", |text| {
        let text = reorder_fields(
            text,
            "Op",
            &["label", "label_len", "rule", "kind", "expect", "args", "nr"],
        );
        reorder_fields(
            &text,
            "WindowHeader",
            &[
                "stack_top",
                "label_len",
                "err_fd",
                "ops",
                "op_count",
                "label",
                "base",
                "all_ops",
            ],
        )
    });
    let out = build(&dir);
    assert!(
        out.status.success(),
        "the reordered copy does not build:\n{}",
        out.stderr
    );
    // Copied out at once: the copies share a target directory.
    let mutant_loader = dir.join("crimg-loader");
    fs::copy(
        workspace().join("target/abi-mutants/target/debug/crimg-loader"),
        &mutant_loader,
    )
    .unwrap();

    // The machine code moved with the fields: `kind` is now read at 0x14
    // (after label, label_len and rule), the header's ops at 0x18.
    let bins = binaries();
    let original = trampoline_disassembly(&bins.loader);
    let moved = trampoline_disassembly(&mutant_loader);
    assert!(
        original.iter().any(|i| i == "mov    (%r12),%eax"),
        "{original:#?}"
    );
    assert!(
        moved.iter().any(|i| i == "mov    0x14(%r12),%eax"),
        "{moved:#?}"
    );
    assert!(
        moved.iter().any(|i| i == "mov    0x18(%r15),%r12"),
        "{moved:#?}"
    );
    assert_eq!(original.len(), moved.len(), "the same code, other offsets");

    // And it runs: a threaded task restored by the copy (every op kind but
    // the window-stays ones: syscalls, pread, memcpy, futex waits and
    // wakes, the clone stub, both gadget exits) checks its own state.
    crimg_tests::skip_unless_root!();
    let original_loader = bins.loader.clone();
    let bins = Binaries {
        loader: mutant_loader,
        ..bins
    };
    let scratch = scratch_dir();
    let tmpdir = scratch.path().display().to_string();
    let args = [
        "--tmpdir",
        &tmpdir,
        "--heap-mb",
        "8",
        "--anon-mb",
        "4",
        "--threads",
        "2",
    ];
    let mut counter = Workload::start("counter", args);
    counter.expect_line("TICK 3");
    let dumped = dump_and_kill(&bins, counter, &scratch.path().join("out"));
    let mut restored = bins
        .restore(
            "counter restored by the reordered loader",
            &dumped.dump.image,
        )
        .unwrap();
    restored.expect_line("TICK ");
    assert_eq!(
        maps_of(restored.pid()),
        dumped.view.maps,
        "{}",
        restored.stderr_report()
    );
    let pass = restored.expect_pass(CheckTrigger::Stdin);
    assert_eq!(pass.pid().unwrap(), restored.pid(), "{}", pass.line());
    restored.expect_line("TICK ");
    assert_ticks_resume(&dumped, &mut restored);

    // Its failure report reads the op's label and the header's error fd:
    // an op refused after the point of no return is named the same way by
    // both loaders (one line, exit 9).
    let report = |loader: &Path| {
        let out = fail_close_range(loader, &dumped.dump.image);
        assert_eq!(out.status.code(), Some(9), "{out:?}");
        let line = out
            .stderr
            .lines()
            .find(|line| line.contains("restore failed at op"))
            .unwrap_or_else(|| panic!("no failure line: {out:?}"))
            .to_owned();
        assert!(
            line.contains("(close_range ") && line.ends_with("): errno 1"),
            "{line}"
        );
        line
    };
    assert_eq!(report(&bins.loader), report(&original_loader));
}

/// Run `loader image` under a seccomp filter that fails `close_range`
/// with EPERM: the loader never calls it itself, so the first op of the
/// plan that does is refused after the point of no return.
fn fail_close_range(loader: &Path, image: &Path) -> RunOutput {
    const FILTER: &str = r#"
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
# A = nr; if A == close_range: return ERRNO(EPERM); return ALLOW
prog = (insn(0x20, 0, 0, 0) + insn(0x15, 0, 1, 436)
        + insn(0x06, 0, 0, 0x00050001) + insn(0x06, 0, 0, 0x7fff0000))
buf = ctypes.create_string_buffer(prog, len(prog))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
    sys.exit("no_new_privs: errno %d" % ctypes.get_errno())
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit("seccomp: errno %d" % ctypes.get_errno())
os.execv(sys.argv[1], sys.argv[1:])
"#;
    let mut command = Command::new("python3");
    command.arg("-c").arg(FILTER).arg(loader).arg(image);
    cli::run(command, cli::CLI_TIMEOUT).unwrap()
}

/// The trampoline reads `kind` into a 32-bit register: a wider field is
/// refused by the build, with the check that says so.
#[test]
fn a_widened_op_field_breaks_the_build() {
    let dir = mutant("widened", |text| {
        text.replacen(
            "pub struct Op {\n    pub kind: u32,",
            "pub struct Op {\n    pub kind: u64,",
            1,
        )
    });
    let out = build(&dir);
    assert!(!out.status.success(), "a u64 `kind` built:\n{}", out.stderr);
    assert!(
        out.stderr.contains("mismatched types")
            && out.stderr.contains("|o| &o.kind")
            && out.stderr.contains("abi.rs"),
        "{}",
        out.stderr
    );
}

/// The code is copied right after the header's room: a header that no
/// longer fits it is refused by the build.
#[test]
fn a_header_past_its_room_breaks_the_build() {
    let dir = mutant("small-header-room", |text| {
        text.replacen(
            "pub const HEADER_BYTES: u64 = 64;",
            "pub const HEADER_BYTES: u64 = 56;",
            1,
        )
    });
    let out = build(&dir);
    assert!(
        !out.status.success(),
        "a 64-byte header in 56 bytes built:\n{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("the window header outgrew HEADER_BYTES"),
        "{}",
        out.stderr
    );
}
