//! Link the `crimg-loader` binary as a static, non-PIE executable with no C
//! runtime: it is started by the kernel at `_start` (src/arch/entry.rs) and
//! must not depend on a dynamic linker or libc, because it replaces its own
//! address space.
//!
//! No `-Ttext-segment`: the loader's own mappings are unmapped by the
//! trampoline before any target mapping is created, so the loader may sit
//! anywhere (even where the target had its text); only the bootstrap window
//! has to be free in both layouts, and the planner chooses it with both
//! layouts in view.

fn main() {
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    println!("cargo:rustc-link-arg-bins=-nostdlib");
    println!("cargo:rustc-link-arg-bins=-static");
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
