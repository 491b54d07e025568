//! The loader's sequence: check (stage 1), plan into the window (stage 2),
//! enter the window (stages 3 and 4, run by the trampoline).

use crate::args::loader_args;
use crate::check::{self, CheckError};
use crate::message;
use crate::plan::{self, PlanError};
use crate::sys::{self, startup::Startup};
use crate::threads::{self, ThreadError, WindowCloner};
use crate::{arch, ExitCode};

fn plan_exit_code(e: &PlanError) -> ExitCode {
    match e {
        PlanError::NoWindow { .. } => ExitCode::NoWindow,
        PlanError::VdsoMismatch | PlanError::NoRoomForFrame { .. } => ExitCode::Unsupported,
        PlanError::LoadOutsideVmas { .. }
        | PlanError::LoadInSharedFile { .. }
        | PlanError::BadVma { .. }
        | PlanError::XsaveTooSmall { .. }
        | PlanError::NoThread => ExitCode::ImageCorrupt,
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
    let mut checked = match check::check(startup) {
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
    let buf = match sys::map_window(window.start, window.len() as usize) {
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
    // The image must still be what stage 1 checked (`check::stable`).
    if let Err(e) = checked.still_same(&sys::kernel_os()) {
        message::report(name, format_args!("{e}"));
        return e.exit_code();
    }
    // The point of no return.
    arch::enter_window(summary.entry, window.start)
}
