//! x86_64 machine code: the CPU feature queries and the trampoline that runs
//! a [`crate::plan`] from inside the bootstrap window.
//!
//! # Safety
//! The trampoline is position-independent (only relative jumps, no data
//! references), so its bytes can be copied into the window and run there.
//! [`enter_window`] hands control to that copy for good.

use core::arch::{asm, global_asm};

/// Byte offsets the trampoline reads; `plan.rs` lays its structures out to
/// match (checked by const assertions there).
pub mod layout {
    /// `WindowHeader`: ops address, op count, stack top, fallback label
    /// address and length.
    pub const HDR_OPS: usize = 0;
    pub const HDR_COUNT: usize = 8;
    pub const HDR_STACK: usize = 16;
    pub const HDR_LABEL: usize = 24;
    pub const HDR_LABEL_LEN: usize = 32;
    /// The fd failure messages go to (the caller's stderr, kept apart).
    pub const HDR_ERR_FD: usize = 56;
    /// `Op` fields.
    pub const OP_KIND: usize = 0;
    pub const OP_RULE: usize = 4;
    pub const OP_NR: usize = 8;
    pub const OP_ARGS: usize = 16;
    pub const OP_EXPECT: usize = 64;
    pub const OP_LABEL: usize = 72;
    pub const OP_LABEL_LEN: usize = 80;
    pub const OP_SIZE: usize = 88;
}

// The plan interpreter. Entered with %rdi = the window header. Registers:
// r15 header, r12 current op, r13 ops left. Op kinds: 0 syscall (then the
// result rule), 1 pread until complete, 2 memcpy, 3 rt_sigreturn with %rsp
// = args[0], 4 leave through the target's gadgets (munmap the window via
// `syscall; ret`, whose `ret` lands on `mov $15,%eax; syscall`), (5 unused:
// the other threads are created before the plan runs, by a call to
// `crimg_trampoline_clone` in the copy: clone3(%rdi, %rsi), the parent
// returns with the result in %rax, the child runs its op list (r12, count
// r13, header r15) without executing one instruction outside the window;
// see `clone_into_window`), 6 wait on a futex until
// the u32 at args[0] equals args[1], 7 store args[1] into the u32 at args[0]
// and wake every waiter, 8 leave through the gadgets like 4 but with
// FUTEX_WAKE_OP(args[2], op args[3]) instead of munmap: the thread's
// "I am gone" is a syscall made from outside the window, 9 xrstor64 from
// args[0] with RFBM args[1] (a thread's first use of the XFD-armed
// features, which the kernel answers by growing its buffer). Rules (low byte):
// 0 not an error, 1 equals `expect`, 2 anything, 3 not an error or errno ==
// `expect`; bit 8: skip the next op on success; bit 9: args[1] is the
// address of a u32 to pass instead (a tid known only at run time). On
// failure: write the op's label, then "errno N" (decimal) or, for a result
// that is not the expected value (rule 1), "result 0xV", and a newline to
// the header's error fd (the caller's stderr); exit_group(9).
global_asm!(
    r#"
    .pushsection .text.crimg_trampoline,"ax",@progbits
    .globl crimg_trampoline_start
    .globl crimg_trampoline_end
    .globl crimg_trampoline_clone
    .p2align 4
crimg_trampoline_start:
    mov %rdi, %r15
    mov 16(%r15), %rsp
    mov 0(%r15), %r12
    mov 8(%r15), %r13
.Lcrimg_loop:
    test %r13, %r13
    jz .Lcrimg_ran_out
    mov 0(%r12), %eax
    cmp $0, %eax
    je .Lcrimg_syscall
    cmp $1, %eax
    je .Lcrimg_pread
    cmp $2, %eax
    je .Lcrimg_memcpy
    cmp $3, %eax
    je .Lcrimg_sigreturn
    cmp $4, %eax
    je .Lcrimg_gadget_exit
    cmp $6, %eax
    je .Lcrimg_wait
    cmp $7, %eax
    je .Lcrimg_wake
    cmp $8, %eax
    je .Lcrimg_gadget_wake_exit
    cmp $9, %eax
    je .Lcrimg_xrstor
    mov $-22, %rax
    jmp .Lcrimg_fail
.Lcrimg_syscall:
    mov 24(%r12), %rsi
    testl $0x200, 4(%r12)
    jz .Lcrimg_sys_args
    mov (%rsi), %esi
.Lcrimg_sys_args:
    mov 8(%r12), %rax
    mov 16(%r12), %rdi
    mov 32(%r12), %rdx
    mov 40(%r12), %r10
    mov 48(%r12), %r8
    mov 56(%r12), %r9
    syscall
    mov 4(%r12), %ecx
    movzbl %cl, %edx
    cmp $-4095, %rax
    jae .Lcrimg_is_err
    cmp $1, %edx
    jne .Lcrimg_ok
    cmp 64(%r12), %rax
    jne .Lcrimg_fail_value
.Lcrimg_ok:
    test $0x100, %ecx
    jz .Lcrimg_next
    add $88, %r12
    dec %r13
    jz .Lcrimg_ran_out
.Lcrimg_next:
    add $88, %r12
    dec %r13
    jmp .Lcrimg_loop
.Lcrimg_is_err:
    cmp $2, %edx
    je .Lcrimg_next
    cmp $3, %edx
    jne .Lcrimg_fail
    mov %rax, %rsi
    neg %rsi
    cmp 64(%r12), %rsi
    je .Lcrimg_next
    jmp .Lcrimg_fail
.Lcrimg_fail_value:
    mov %rax, %rbx
    mov $1, %r14d
    jmp .Lcrimg_report
.Lcrimg_pread:
    mov 24(%r12), %rbx
    mov 32(%r12), %rbp
    mov 40(%r12), %r14
.Lcrimg_pread_more:
    test %rbp, %rbp
    jz .Lcrimg_next
    mov $17, %eax
    mov 16(%r12), %rdi
    mov %rbx, %rsi
    mov %rbp, %rdx
    mov %r14, %r10
    syscall
    cmp $-4095, %rax
    jae .Lcrimg_fail
    test %rax, %rax
    jz .Lcrimg_short
    add %rax, %rbx
    sub %rax, %rbp
    add %rax, %r14
    jmp .Lcrimg_pread_more
.Lcrimg_short:
    mov $-5, %rax
    jmp .Lcrimg_fail
.Lcrimg_memcpy:
    mov 16(%r12), %rdi
    mov 24(%r12), %rsi
    mov 32(%r12), %rcx
    cld
    rep movsb
    jmp .Lcrimg_next
.Lcrimg_sigreturn:
    mov 16(%r12), %rsp
    mov $15, %eax
    syscall
    mov 16(%r15), %rsp
    jmp .Lcrimg_fail
.Lcrimg_gadget_exit:
    mov $11, %eax
    mov 32(%r12), %rdi
    mov 40(%r12), %rsi
    mov 24(%r12), %rcx
    mov 16(%r12), %rsp
    jmp *%rcx
.Lcrimg_wait:
    mov 16(%r12), %rdi
    mov (%rdi), %edx
    cmp 24(%r12), %edx
    je .Lcrimg_next
    mov $202, %eax
    mov $128, %esi
    xor %r10d, %r10d
    syscall
    cmp $-4095, %rax
    jb .Lcrimg_wait
    cmp $-11, %rax
    je .Lcrimg_wait
    cmp $-4, %rax
    je .Lcrimg_wait
    jmp .Lcrimg_fail
.Lcrimg_wake:
    mov 16(%r12), %rdi
    mov 24(%r12), %eax
    xchg %eax, (%rdi)
    mov $202, %eax
    mov $129, %esi
    mov $0x7fffffff, %edx
    syscall
    cmp $-4095, %rax
    jae .Lcrimg_fail
    jmp .Lcrimg_next
.Lcrimg_gadget_wake_exit:
    mov $202, %eax
    mov 32(%r12), %rdi
    mov $133, %esi
    mov $1, %edx
    xor %r10d, %r10d
    mov %rdi, %r8
    mov 40(%r12), %r9
    mov 24(%r12), %rcx
    mov 16(%r12), %rsp
    jmp *%rcx
.Lcrimg_xrstor:
    mov 16(%r12), %rdi
    mov 24(%r12), %eax
    mov 28(%r12), %edx
    xrstor64 (%rdi)
    jmp .Lcrimg_next
.Lcrimg_ran_out:
    lea -48(%r15), %r12
    mov $-22, %rax
.Lcrimg_fail:
    mov %rax, %rbx
    neg %rbx
    xor %r14d, %r14d
.Lcrimg_report:
    mov $1, %eax
    mov 56(%r15), %rdi
    mov 72(%r12), %rsi
    mov 80(%r12), %rdx
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
    sub $9, %rdi
    movl $0x75736572, (%rdi)
    movl $0x3020746c, 4(%rdi)
    movb $0x78, 8(%rdi)
    jmp .Lcrimg_write_number
.Lcrimg_errno_word:
    sub $6, %rdi
    movl $0x6e727265, (%rdi)
    movw $0x206f, 4(%rdi)
.Lcrimg_write_number:
    lea 32(%rsp), %rdx
    sub %rdi, %rdx
    mov %rdi, %rsi
    mov 56(%r15), %rdi
    mov $1, %eax
    syscall
    mov $231, %eax
    mov $9, %edi
    syscall
    ud2
crimg_trampoline_clone:
    mov $435, %eax
    syscall
    test %rax, %rax
    jz .Lcrimg_loop
    ret
crimg_trampoline_end:
    .popsection
"#,
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
/// Callers must pass a window built by `plan::build_plan` and copied in
/// place, with `entry` the address of the trampoline copy inside it.
pub fn enter_window(entry: u64, header: u64) -> ! {
    // SAFETY: from here the plan owns the process; the loader's Rust state is
    // abandoned on purpose (its memory is unmapped by the plan).
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
