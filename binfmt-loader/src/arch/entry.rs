//! `_start` of the `crimg-loader` binary (included by `src/main.rs` only:
//! the library must not define `_start`, or host test binaries would have
//! two).
//!
//! # Safety
//! The kernel enters `_start` with `%rsp` at `argc` and nothing else set up;
//! the naked function passes that pointer on, aligns the stack for the call
//! and never returns.

/// The process entry point.
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "mov rdi, rsp",
        "and rsp, -16",
        "xor ebp, ebp",
        "call {main}",
        "ud2",
        main = sym start_rust,
    )
}

/// Reads the initial stack and runs the loader.
extern "C" fn start_rust(sp: *const u64) -> ! {
    // SAFETY: `_start` passes the stack pointer the kernel entered it with.
    let startup = unsafe { binfmt_loader::sys::startup::Startup::from_initial_stack(sp) };
    super::loader_main(&startup)
}

/// Never called (the loader cannot unwind); the prebuilt `core` refers to it
/// in debug builds.
#[unsafe(no_mangle)]
pub extern "C" fn rust_eh_personality() {}
