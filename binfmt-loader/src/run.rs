//! The loader's sequence: check (stage 1), plan into the window (stage 2),
//! enter the window (stages 3 and 4, run by the trampoline); and the dry
//! run of the first two ([`dry_run`], `crimg plan`).

use crate::args::loader_args;
use crate::check::{self, CheckError};
use crate::message;
use crate::plan::{self, PlanError};
use crate::sys::{self, startup::Startup};
use crate::threads::{self, ThreadError, WindowCloner};
use crate::{arch, ExitCode};

/// Why the loader would refuse an image: its exit code and message.
pub struct Refusal {
    pub code: ExitCode,
    pub message: message::Line,
}

impl Refusal {
    /// Refusal `code` with the message `what`.
    pub fn of(code: ExitCode, what: impl core::fmt::Display) -> Refusal {
        let mut message = message::Line::default();
        let _ = core::fmt::Write::write_fmt(&mut message, format_args!("{what}"));
        Refusal { code, message }
    }
}

/// What the loader would do with the image open at `fd` (`name`: for
/// messages), without doing it: stage 1 and the planner run in this
/// process, the window is built in a scratch mapping (not at its address)
/// that is dropped after the plan is written to `out`, op by op. Stage 1's
/// warnings go to stderr as the loader's do. Nothing of the system changes;
/// this process keeps the fds stage 1 opened and its raised
/// `RLIMIT_NOFILE`. The window is chosen in this process's layout, so its
/// address (and every address in the window) differs from a real run's.
#[allow(clippy::result_large_err)] // No heap: the message is a fixed line, built once.
pub fn dry_run(
    name: &'static [u8],
    fd: i32,
    out: &mut impl core::fmt::Write,
) -> Result<(), Refusal> {
    let os = sys::kernel_os();
    let mut checked = check::check_fd(&os, name, fd).map_err(|e| Refusal::of(e.exit_code(), e))?;
    let range_scratch = core::mem::take(&mut checked.range_scratch);
    let input = checked.input;
    let window = plan::choose_window(&input, range_scratch)
        .map_err(|e| Refusal::of(plan_exit_code(&e), e))?;
    let len = usize::try_from(window.len()).map_err(|_| {
        Refusal::of(
            ExitCode::NoWindow,
            format_args!("window of {:#x} bytes", window.len()),
        )
    })?;
    let buf = sys::map_scratch(len).map_err(|errno| {
        Refusal::of(
            ExitCode::Environment,
            format_args!("cannot allocate {len} bytes for the window: {errno}"),
        )
    })?;
    let built = plan::build_plan(&input, window, buf);
    let printed = built.as_ref().map(|s| {
        let _ = writeln!(
            out,
            "window {:#x}-{:#x} ({} threads, {} ops in all)",
            window.start,
            window.end,
            input.threads.len(),
            s.ops
        );
        let _ = plan::write_plan(buf, out);
    });
    sys::unmap_window(buf);
    printed.map_err(|e| Refusal::of(plan_exit_code(e), e))?;
    checked
        .still_same(&os)
        .map_err(|e| Refusal::of(e.exit_code(), e))
}

fn plan_exit_code(e: &PlanError) -> ExitCode {
    match e {
        PlanError::NoWindow { .. } => ExitCode::NoWindow,
        PlanError::VdsoMismatch | PlanError::NoRoomForFrame { .. } => ExitCode::Unsupported,
        PlanError::LoadOutsideVmas { .. }
        | PlanError::LoadInSharedFile { .. }
        | PlanError::BadVma { .. }
        | PlanError::XsaveTooSmall { .. }
        | PlanError::NoThread
        | PlanError::TimerThread { .. } => ExitCode::ImageCorrupt,
        PlanError::WindowTooSmall { .. } | PlanError::PlanFull { .. } => ExitCode::Environment,
    }
}

/// Run the image named by the process's arguments. Returns only on failure
/// before the point of no return, with the exit code to use (the message
/// has been printed).
pub fn run(startup: &Startup) -> ExitCode {
    let name = check::image_name(startup);
    let args = match loader_args(startup) {
        Ok(a) => a,
        Err(e) => {
            message::report(name, format_args!("{e}"));
            return ExitCode::Usage;
        }
    };
    // Every message from here on goes to the `--report` fd, once it is
    // known to be open (else the refusal goes to stderr).
    if let Some(fd) = args.report {
        if sys::fstat(fd).is_err() {
            message::report(name, format_args!("fd {fd} of --report: it is not open"));
            return ExitCode::Usage;
        }
        message::set_report_fd(fd);
        message::name_lines_by_pid();
    }
    let mut checked = match check::check(startup, &args) {
        Ok(c) => c,
        Err(CheckError::Usage) => {
            let mut line = message::Line::default();
            let _ = core::fmt::Write::write_fmt(
                &mut line,
                format_args!("crimg-loader: {}", CheckError::Usage),
            );
            line.emit();
            return ExitCode::Usage;
        }
        Err(e) => {
            message::report(name, format_args!("{e}"));
            return e.exit_code();
        }
    };
    let name = checked.name;
    if let Err(e) = check::apply_mm_settings(&checked) {
        message::report(name, format_args!("{e}"));
        return e.exit_code();
    }
    let range_scratch = core::mem::take(&mut checked.range_scratch);
    let input = checked.input;
    let window = match plan::choose_window(&input, range_scratch) {
        Ok(w) => w,
        Err(e) => {
            message::report(name, format_args!("{e}"));
            return plan_exit_code(&e);
        }
    };
    // A window is a few pages plus stacks: it fits a usize on x86_64.
    let Ok(window_len) = usize::try_from(window.len()) else {
        message::report(
            name,
            format_args!("bootstrap window of {:#x} bytes", window.len()),
        );
        return ExitCode::NoWindow;
    };
    let buf = match sys::map_window(window.start, window_len) {
        Ok(b) => b,
        Err(errno) => {
            message::report(
                name,
                format_args!(
                    "cannot map the bootstrap window at {:#x}: {errno}",
                    window.start
                ),
            );
            return ExitCode::NoWindow;
        }
    };
    let summary = match plan::build_plan(&input, window, buf) {
        Ok(s) => s,
        Err(e) => {
            sys::unmap_window(buf);
            message::report(name, format_args!("{e}"));
            return plan_exit_code(&e);
        }
    };
    let others = input.threads.len().saturating_sub(1);
    if others > 0 && !input.set_tids {
        if args.same_ids {
            sys::unmap_window(buf);
            let e = ThreadError::SameIdsUnprivileged { threads: others };
            message::report(name, format_args!("{e}"));
            return e.exit_code();
        }
        threads::report_unprivileged(name, others);
    }
    // The other threads, created now so that their tids are held from here
    // on (a taken one is found here, not after the teardown). On failure
    // the window stays: threads may be parked in it until exit_group.
    let mut cloner = WindowCloner {
        entry: summary.entry + arch::trampoline_clone_offset(),
        header: window.start,
    };
    match threads::create_threads(buf, window, &summary, args.same_ids, &mut cloner) {
        Ok(created) => threads::report(name, &created),
        Err(e) => {
            message::report(name, format_args!("{e}"));
            return e.exit_code();
        }
    }
    if summary.window_left && input.gadgets.is_some() {
        message::report(
            name,
            format_args!("warning: no room for the signal frame on the task's stack; the bootstrap window stays mapped"),
        );
    }
    // A lazy restore's page server, forked now: nothing can fail after it
    // but the check below (and then it exits, seeing no fd come).
    if let Some(lazy) = input.lazy {
        if let Err(e) = crate::lazy::start_server(&checked, lazy) {
            message::report(name, format_args!("{e}"));
            return e.exit_code();
        }
    }
    // The image must still be what stage 1 checked (`check::stable`).
    if let Err(e) = checked.still_same(&sys::kernel_os()) {
        message::report(name, format_args!("{e}"));
        return e.exit_code();
    }
    // The point of no return.
    #[allow(unsafe_code)]
    // SAFETY: `buf` is the window mapped at `window.start`, and
    // `build_plan` wrote its header there and the trampoline copy at
    // `summary.entry`; nothing of this function runs again.
    unsafe {
        arch::enter_window(summary.entry, window.start)
    };
}
