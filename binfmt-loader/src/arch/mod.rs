//! x86_64 machine code: the CPU feature queries and the trampoline that runs
//! a [`crate::plan`] from inside the bootstrap window.
//!
//! # Safety
//! The trampoline is position-independent (only relative jumps, no data
//! references), so its bytes can be copied into the window and run there.
//! [`enter_window`] hands control to that copy for good.

use core::arch::{asm, global_asm};

use crate::plan::abi::{layout, op_kind, rule, tramp};

// The plan interpreter (`crate::plan::abi` defines what it reads: the
// header, the ops, their kinds and result rules). Entered with %rdi = the
// window header. Registers: r15 header, r12 current op, r13 ops left. Every
// field offset, op kind, rule, syscall number and errno below is a `const`
// operand from that module, so the code follows the structs' layout.
// Besides the op kinds, `crimg_trampoline_clone` is called in the copy by
// `clone_into_window`: clone3(%rdi, %rsi); the parent returns with the
// result in %rax, the child runs its op list (r12, count r13, header r15)
// without executing one instruction outside the window. On failure: write
// the op's label (or, when the ops ran out, the header's), then "errno N"
// (decimal) or, for a result that is not the expected value (rule EQ),
// "result 0xV", and a newline to the header's error fd (the caller's
// stderr); exit_group(9).
global_asm!(
    r#"
    .pushsection .text.crimg_trampoline,"ax",@progbits
    .globl crimg_trampoline_start
    .globl crimg_trampoline_end
    .globl crimg_trampoline_clone
    .p2align 4
crimg_trampoline_start:
    mov %rdi, %r15
    mov {hdr_stack}(%r15), %rsp
    mov {hdr_ops}(%r15), %r12
    mov {hdr_count}(%r15), %r13
.Lcrimg_loop:
    test %r13, %r13
    jz .Lcrimg_ran_out
    mov {op_kind}(%r12), %eax
    cmp ${k_syscall}, %eax
    je .Lcrimg_syscall
    cmp ${k_pread_all}, %eax
    je .Lcrimg_pread
    cmp ${k_memcpy}, %eax
    je .Lcrimg_memcpy
    cmp ${k_sigreturn}, %eax
    je .Lcrimg_sigreturn
    cmp ${k_gadget_exit}, %eax
    je .Lcrimg_gadget_exit
    cmp ${k_wait_eq}, %eax
    je .Lcrimg_wait
    cmp ${k_store_wake}, %eax
    je .Lcrimg_wake
    cmp ${k_gadget_wake_exit}, %eax
    je .Lcrimg_gadget_wake_exit
    cmp ${k_xrstor_first_use}, %eax
    je .Lcrimg_xrstor
    mov $-{einval}, %rax
    jmp .Lcrimg_fail
.Lcrimg_syscall:
    mov {arg1}(%r12), %rsi
    testl ${r_load_arg1}, {op_rule}(%r12)
    jz .Lcrimg_sys_args
    mov (%rsi), %esi
.Lcrimg_sys_args:
    mov {op_nr}(%r12), %rax
    mov {arg0}(%r12), %rdi
    mov {arg2}(%r12), %rdx
    mov {arg3}(%r12), %r10
    mov {arg4}(%r12), %r8
    mov {arg5}(%r12), %r9
    syscall
    mov {op_rule}(%r12), %ecx
    movzbl %cl, %edx
    cmp $-{max_errno}, %rax
    jae .Lcrimg_is_err
    cmp ${r_eq}, %edx
    jne .Lcrimg_ok
    cmp {op_expect}(%r12), %rax
    jne .Lcrimg_fail_value
.Lcrimg_ok:
    test ${r_skip_next_if_ok}, %ecx
    jz .Lcrimg_next
    add ${op_size}, %r12
    dec %r13
    jz .Lcrimg_ran_out
.Lcrimg_next:
    add ${op_size}, %r12
    dec %r13
    jmp .Lcrimg_loop
.Lcrimg_is_err:
    cmp ${r_any}, %edx
    je .Lcrimg_next
    cmp ${r_ok_or_errno}, %edx
    jne .Lcrimg_fail
    mov %rax, %rsi
    neg %rsi
    cmp {op_expect}(%r12), %rsi
    je .Lcrimg_next
    jmp .Lcrimg_fail
.Lcrimg_pread:
    mov {arg1}(%r12), %rbx
    mov {arg2}(%r12), %rbp
    mov {arg3}(%r12), %r14
.Lcrimg_pread_more:
    test %rbp, %rbp
    jz .Lcrimg_next
    mov ${nr_pread64}, %eax
    mov {arg0}(%r12), %rdi
    mov %rbx, %rsi
    mov %rbp, %rdx
    mov %r14, %r10
    syscall
    cmp $-{max_errno}, %rax
    jae .Lcrimg_fail
    test %rax, %rax
    jz .Lcrimg_short
    add %rax, %rbx
    sub %rax, %rbp
    add %rax, %r14
    jmp .Lcrimg_pread_more
.Lcrimg_short:
    mov $-{eio}, %rax
    jmp .Lcrimg_fail
.Lcrimg_memcpy:
    mov {arg0}(%r12), %rdi
    mov {arg1}(%r12), %rsi
    mov {arg2}(%r12), %rcx
    cld
    rep movsb
    jmp .Lcrimg_next
.Lcrimg_sigreturn:
    mov {arg0}(%r12), %rsp
    mov ${nr_rt_sigreturn}, %eax
    syscall
    mov {hdr_stack}(%r15), %rsp
    jmp .Lcrimg_fail
.Lcrimg_gadget_exit:
    mov ${nr_munmap}, %eax
    mov {arg2}(%r12), %rdi
    mov {arg3}(%r12), %rsi
    mov {arg1}(%r12), %rcx
    mov {arg0}(%r12), %rsp
    jmp *%rcx
.Lcrimg_wait:
    mov {arg0}(%r12), %rdi
    mov (%rdi), %edx
    cmp {arg1}(%r12), %edx
    je .Lcrimg_next
    mov ${nr_futex}, %eax
    mov ${futex_wait_private}, %esi
    xor %r10d, %r10d
    syscall
    cmp $-{max_errno}, %rax
    jb .Lcrimg_wait
    cmp $-{eagain}, %rax
    je .Lcrimg_wait
    cmp $-{eintr}, %rax
    je .Lcrimg_wait
    jmp .Lcrimg_fail
.Lcrimg_wake:
    mov {arg0}(%r12), %rdi
    mov {arg1}(%r12), %eax
    xchg %eax, (%rdi)
    mov ${nr_futex}, %eax
    mov ${futex_wake_private}, %esi
    mov ${futex_wake_all}, %edx
    syscall
    cmp $-{max_errno}, %rax
    jae .Lcrimg_fail
    jmp .Lcrimg_next
.Lcrimg_gadget_wake_exit:
    mov ${nr_futex}, %eax
    mov {arg2}(%r12), %rdi
    mov ${futex_wake_op_private}, %esi
    mov $1, %edx
    xor %r10d, %r10d
    mov %rdi, %r8
    mov {arg3}(%r12), %r9
    mov {arg1}(%r12), %rcx
    mov {arg0}(%r12), %rsp
    jmp *%rcx
.Lcrimg_xrstor:
    mov {arg0}(%r12), %rdi
    mov {arg1}(%r12), %eax
    mov {arg1_high}(%r12), %edx
    xrstor64 (%rdi)
    jmp .Lcrimg_next
.Lcrimg_fail_value:
    mov %rax, %rbx
    mov $1, %r14d
    jmp .Lcrimg_report
.Lcrimg_ran_out:
    mov {hdr_label}(%r15), %rsi
    mov {hdr_label_len}(%r15), %rdx
    mov ${einval}, %ebx
    xor %r14d, %r14d
    jmp .Lcrimg_report_label
.Lcrimg_fail:
    mov %rax, %rbx
    neg %rbx
    xor %r14d, %r14d
.Lcrimg_report:
    mov {op_label}(%r12), %rsi
    mov {op_label_len}(%r12), %rdx
.Lcrimg_report_label:
    mov ${nr_write}, %eax
    mov {hdr_err_fd}(%r15), %rdi
    syscall
    sub $32, %rsp
    lea 31(%rsp), %rdi
    movb $10, (%rdi)
    mov %rbx, %rax
    mov $10, %ecx
    test %r14d, %r14d
    jz .Lcrimg_digit
    mov $16, %ecx
.Lcrimg_digit:
    xor %edx, %edx
    div %rcx
    add $48, %dl
    cmp $57, %dl
    jbe .Lcrimg_digit_put
    add $39, %dl
.Lcrimg_digit_put:
    dec %rdi
    mov %dl, (%rdi)
    test %rax, %rax
    jnz .Lcrimg_digit
    test %r14d, %r14d
    jz .Lcrimg_errno_word
    /* "result 0x" */
    sub $9, %rdi
    movl $0x75736572, (%rdi)
    movl $0x3020746c, 4(%rdi)
    movb $0x78, 8(%rdi)
    jmp .Lcrimg_write_number
.Lcrimg_errno_word:
    /* "errno " */
    sub $6, %rdi
    movl $0x6e727265, (%rdi)
    movw $0x206f, 4(%rdi)
.Lcrimg_write_number:
    lea 32(%rsp), %rdx
    sub %rdi, %rdx
    mov %rdi, %rsi
    mov {hdr_err_fd}(%r15), %rdi
    mov ${nr_write}, %eax
    syscall
    mov ${nr_exit_group}, %eax
    mov ${exit_restore_failed}, %edi
    syscall
    ud2
crimg_trampoline_clone:
    mov ${nr_clone3}, %eax
    syscall
    test %rax, %rax
    jz .Lcrimg_loop
    ret
crimg_trampoline_end:
    .popsection
"#,
    hdr_ops = const layout::HDR_OPS,
    hdr_count = const layout::HDR_COUNT,
    hdr_stack = const layout::HDR_STACK,
    hdr_label = const layout::HDR_LABEL,
    hdr_label_len = const layout::HDR_LABEL_LEN,
    hdr_err_fd = const layout::HDR_ERR_FD,
    op_kind = const layout::OP_KIND,
    op_rule = const layout::OP_RULE,
    op_nr = const layout::OP_NR,
    arg0 = const layout::op_arg(0),
    arg1 = const layout::op_arg(1),
    arg1_high = const layout::op_arg(1) + 4,
    arg2 = const layout::op_arg(2),
    arg3 = const layout::op_arg(3),
    arg4 = const layout::op_arg(4),
    arg5 = const layout::op_arg(5),
    op_expect = const layout::OP_EXPECT,
    op_label = const layout::OP_LABEL,
    op_label_len = const layout::OP_LABEL_LEN,
    op_size = const layout::OP_SIZE,
    k_syscall = const op_kind::SYSCALL,
    k_pread_all = const op_kind::PREAD_ALL,
    k_memcpy = const op_kind::MEMCPY,
    k_sigreturn = const op_kind::SIGRETURN,
    k_gadget_exit = const op_kind::GADGET_EXIT,
    k_wait_eq = const op_kind::WAIT_EQ,
    k_store_wake = const op_kind::STORE_WAKE,
    k_gadget_wake_exit = const op_kind::GADGET_WAKE_EXIT,
    k_xrstor_first_use = const op_kind::XRSTOR_FIRST_USE,
    r_eq = const rule::EQ,
    r_any = const rule::ANY,
    r_ok_or_errno = const rule::OK_OR_ERRNO,
    r_skip_next_if_ok = const rule::SKIP_NEXT_IF_OK,
    r_load_arg1 = const rule::LOAD_ARG1,
    nr_write = const tramp::NR_WRITE,
    nr_munmap = const tramp::NR_MUNMAP,
    nr_rt_sigreturn = const tramp::NR_RT_SIGRETURN,
    nr_pread64 = const tramp::NR_PREAD64,
    nr_futex = const tramp::NR_FUTEX,
    nr_exit_group = const tramp::NR_EXIT_GROUP,
    nr_clone3 = const tramp::NR_CLONE3,
    futex_wait_private = const tramp::FUTEX_WAIT_PRIVATE,
    futex_wake_private = const tramp::FUTEX_WAKE_PRIVATE,
    futex_wake_op_private = const tramp::FUTEX_WAKE_OP_PRIVATE,
    futex_wake_all = const tramp::FUTEX_WAKE_ALL,
    max_errno = const tramp::MAX_ERRNO,
    eintr = const tramp::EINTR,
    eio = const tramp::EIO,
    eagain = const tramp::EAGAIN,
    einval = const tramp::EINVAL,
    exit_restore_failed = const tramp::EXIT_RESTORE_FAILED,
    options(att_syntax)
);

unsafe extern "C" {
    static crimg_trampoline_start: u8;
    static crimg_trampoline_end: u8;
    static crimg_trampoline_clone: u8;
}

/// Where `crimg_trampoline_clone` lies in the trampoline, from its start.
pub fn trampoline_clone_offset() -> u64 {
    let start = &raw const crimg_trampoline_start;
    let clone = &raw const crimg_trampoline_clone;
    clone as u64 - start as u64
}

/// `clone3(args, size)` of a thread that runs `count` plan ops at `ops`
/// with the window header at `header`, on the stack the clone args give
/// it: a call to the trampoline copy's clone stub at `entry`, so that the
/// syscall instruction, and everything the child executes after it, lies
/// in the window (the loader's own code is unmapped by the plan, perhaps
/// before the child is first scheduled). Returns clone3's result: the new
/// tid, or `-errno`.
///
/// The caller must pass `args` that point at a `struct clone_args` of
/// `size` bytes with `CLONE_VM | CLONE_THREAD` and a stack inside the
/// window, and `entry`, `header`, `ops` of a window built by
/// `plan::build_plan` and still mapped: the new thread runs only there.
pub fn clone_into_window(
    args: u64,
    size: u64,
    entry: u64,
    header: u64,
    ops: u64,
    count: u64,
) -> i64 {
    let ret: i64;
    // SAFETY: per the contract above, the stub makes the syscall and
    // returns in the parent with only rax, rcx and r11 changed (and the
    // return address it pushed below the red zone popped again); the child
    // starts on its own stack in the window and stays in the trampoline
    // copy, touching nothing of the loader's. clone3 reads only `args`.
    unsafe {
        asm!(
            "sub rsp, 128",
            "call {entry}",
            "add rsp, 128",
            entry = in(reg) entry,
            inlateout("rax") 0i64 => ret,
            in("rdi") args,
            in("rsi") size,
            in("r15") header,
            in("r12") ops,
            in("r13") count,
            lateout("rcx") _,
            lateout("r11") _,
        )
    };
    ret
}

/// The trampoline's machine code, to be copied into the window.
pub fn trampoline_code() -> &'static [u8] {
    let start = &raw const crimg_trampoline_start;
    let end = &raw const crimg_trampoline_end;
    // SAFETY: both labels delimit the code emitted by the `global_asm!` above,
    // in one section, `end` after `start`; text is never unmapped while Rust
    // code runs.
    unsafe { core::slice::from_raw_parts(start, end as usize - start as usize) }
}

/// Run the plan copied into the window: jump to the trampoline copy at
/// `entry` with the window header at `header`. Never returns: the plan ends
/// in the restored task or in `exit_group(9)`.
///
/// # Safety
/// `header` must be the address of a window built by `plan::build_plan`
/// and mapped there (read-write, the trampoline copy executable), and
/// `entry` the address of the trampoline copy inside it. From the jump on
/// the plan owns the process: it unmaps everything outside the window, the
/// loader's code and stack included, so no Rust state of the caller may be
/// used again (nothing returns to it).
pub unsafe fn enter_window(entry: u64, header: u64) -> ! {
    // SAFETY: per the contract above; the loader's Rust state is abandoned
    // on purpose (its memory is unmapped by the plan).
    unsafe { asm!("jmp {entry}", entry = in(reg) entry, in("rdi") header, options(noreturn)) }
}

/// `xgetbv(0)`: XCR0, the state components the OS enabled for XSAVE.
/// `None` when the CPU or OS has no XSAVE (CPUID.1:ECX.OSXSAVE clear).
pub fn xcr0() -> Option<u64> {
    let ecx = core::arch::x86_64::__cpuid(1).ecx;
    if ecx & (1 << 27) == 0 {
        return None;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: OSXSAVE is set, so xgetbv is enabled; it reads a register only.
    unsafe {
        asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    Some(u64::from(hi) << 32 | u64::from(lo))
}

/// CPUID.(EAX=0Dh,ECX=i): where XSAVE component `i` (2..=62) ends in the
/// standard-format area (offset EBX + size EAX); 0 for an unknown one.
pub fn xsave_component_end(i: u32) -> u32 {
    let r = core::arch::x86_64::__cpuid_count(0xd, i);
    r.ebx.saturating_add(r.eax)
}

/// CPUID.(EAX=0Dh,ECX=0):EBX — the XSAVE area size (standard format) for the
/// features currently enabled in XCR0.
pub fn xsave_size() -> u32 {
    core::arch::x86_64::__cpuid_count(0xd, 0).ebx
}

/// MXCSR_MASK: the MXCSR bits this CPU accepts (FXSAVE's bytes 28..32; 0
/// there means the architectural default 0xFFBF). FXRSTOR/XRSTOR fault on
/// anything else.
pub fn mxcsr_mask() -> u32 {
    #[repr(C, align(16))]
    struct FxsaveArea([u8; 512]);
    let mut area = FxsaveArea([0; 512]);
    // SAFETY: FXSAVE writes exactly 512 bytes to a 16-byte-aligned address;
    // `area` is that, and it is only the CPU's state being read out.
    unsafe { asm!("fxsave64 [{}]", in(reg) area.0.as_mut_ptr(), options(nostack)) };
    let mask = u32::from_le_bytes([area.0[28], area.0[29], area.0[30], area.0[31]]);
    if mask == 0 {
        0xffbf
    } else {
        mask
    }
}
