//! `crimg-loader`: the binfmt_misc interpreter for crimg task images.
//! A static binary without libc; the work is in the library.

#![no_std]
#![no_main]
#![deny(unsafe_code)]
// Casts that could truncate, wrap or lose a sign are bugs waiting for an
// odd image: convert with `try_from`/`from`, or allow one with a reason.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

use binfmt_loader::sys::{self, startup::Startup};

#[allow(unsafe_code)]
#[path = "arch/entry.rs"]
mod entry;

#[allow(unsafe_code)]
#[path = "arch/mem.rs"]
mod mem;

/// Called by `_start` (src/arch/entry.rs) with the process's arguments.
fn loader_main(startup: &Startup) -> ! {
    let code = binfmt_loader::run::run(startup);
    sys::exit_group(code as i32)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let mut line = binfmt_loader::message::Line::default();
    let _ = core::fmt::Write::write_fmt(
        &mut line,
        format_args!("crimg-loader: internal error: {info}"),
    );
    line.emit();
    sys::exit_group(127)
}
