//! The initial process stack the kernel builds for a new program:
//! `argc, argv[0..argc], NULL, envp..., NULL, auxv pairs..., AT_NULL`.
//!
//! # Safety
//! [`Startup::from_initial_stack`] trusts the kernel's layout; everything it
//! returns is `'static` because that stack is never freed while the loader's
//! Rust code runs.
//!
//! # References
//! `execve(2)`, `getauxval(3)`, `fs/binfmt_elf.c: create_elf_tables`.

/// `AT_EXECFD`: the image fd binfmt_misc passes with the `O` flag.
pub const AT_EXECFD: u64 = 2;
/// `AT_SYSINFO_EHDR`: the vDSO's address.
pub const AT_SYSINFO_EHDR: u64 = 33;

/// argv and auxv of the running loader.
#[derive(Clone, Copy)]
pub struct Startup {
    argv: &'static [*const u8],
    auxv: &'static [u64],
}

impl Startup {
    /// Read the stack the kernel built.
    ///
    /// # Safety
    /// `sp` must be the stack pointer the kernel handed to `_start`.
    pub unsafe fn from_initial_stack(sp: *const u64) -> Startup {
        // SAFETY: the kernel's layout: argc, then argc pointers and a NULL,
        // then environment pointers up to a NULL, then (type, value) pairs
        // ending with AT_NULL; all of it stays mapped.
        unsafe {
            // argc is an `int` the kernel wrote as a word.
            let argc = usize::try_from(*sp).unwrap_or(0);
            let argv_ptr = sp.add(1) as *const *const u8;
            let argv = core::slice::from_raw_parts(argv_ptr, argc);
            let mut p = argv_ptr.add(argc + 1);
            while !(*p).is_null() {
                p = p.add(1);
            }
            let auxv_start = p.add(1) as *const u64;
            let mut n = 0;
            while *auxv_start.add(n) != 0 {
                n += 2;
            }
            let auxv = core::slice::from_raw_parts(auxv_start, n);
            Startup { argv, auxv }
        }
    }

    pub fn argc(&self) -> usize {
        self.argv.len()
    }

    /// `argv[i]` without its NUL.
    pub fn arg(&self, i: usize) -> Option<&'static [u8]> {
        let p = *self.argv.get(i)?;
        if p.is_null() {
            return None;
        }
        let mut len = 0;
        // SAFETY: argv strings are NUL-terminated and stay mapped.
        unsafe {
            while *p.add(len) != 0 {
                len += 1;
            }
            Some(core::slice::from_raw_parts(p, len))
        }
    }

    /// The value of auxv entry `key`, if present.
    pub fn aux(&self, key: u64) -> Option<u64> {
        self.auxv
            .chunks_exact(2)
            .find(|kv| kv[0] == key)
            .map(|kv| kv[1])
    }
}
