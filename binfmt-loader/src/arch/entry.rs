//! `_start` of the `crimg-loader` binary (included by `src/main.rs` only:
//! the library must not define `_start`, or host test binaries would have
//! two).
//!
//! # Safety
//! The kernel enters `_start` with `%rsp` at `argc` and nothing else set up;
//! the naked function blocks every signal, passes that pointer on, aligns
//! the stack for the call and never returns.

/// The process entry point. Its first act blocks every signal
/// (`rt_sigprocmask(SIG_SETMASK, ~0, NULL, 8)`, with the mask pushed below
/// `argc`): `execve` reset the dispositions to their defaults, so a signal
/// sent to the process while it is being restored would otherwise kill it
/// half restored. Blocked, it stays pending and is delivered to the task's
/// own handlers once the final `rt_sigreturn` installs the task's mask, as
/// if it had come right after the dump. (SIGKILL and SIGSTOP cannot be
/// blocked; a signal the kernel delivers before this instruction cannot be
/// held off by the loader: `crimg run` execs it with everything blocked.)
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _start() -> ! {
    core::arch::naked_asm!(
        "mov r12, rsp",
        "push -1",
        "mov eax, 14",
        "mov edi, 2",
        "mov rsi, rsp",
        "xor edx, edx",
        "mov r10d, 8",
        "syscall",
        "mov rdi, r12",
        "mov rsp, r12",
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
