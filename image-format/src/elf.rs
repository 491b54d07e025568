//! Raw ELF64 structures and constants, as the kernel and binutils lay them out
//! for x86_64 core files (`include/uapi/linux/elf.h`, `elfcore.h`).
//!
//! All structures are `#[repr(C)]`, little-endian by virtue of the only target
//! this crate supports, and converted to and from bytes by `zerocopy` (never
//! by offsets maintained by hand). Their sizes are asserted at compile time.
//!
//! # Why not the `object` crate
//!
//! `object` has the same kind of raw structs (`object::elf`, `Pod`), a
//! zero-copy `no_std` reader and a two-phase writer, and would be the choice
//! for reading arbitrary ELF files. For crimg images the hand-written
//! structs here are kept, on purpose:
//!
//! * What `object` would replace is small: [`Ehdr`], [`Phdr`], [`Shdr`],
//!   [`Nhdr`] and a dozen constants. The core-file payloads the loader needs
//!   ([`Prstatus`], [`Prpsinfo`], [`UserRegs`], the XSAVE layout) are not in
//!   `object` and would stay here anyway.
//! * The reader's work is the checks `object` does not make and crimg
//!   needs before the loader trusts a byte: the crimg ident and version,
//!   one `PT_NOTE` first, page-aligned `PT_LOAD`s inside the user address
//!   space and inside their memory areas, limits against hostile sizes, the
//!   checksums. With `object` these checks stay, reached through its
//!   endian-generic accessors (`U64<LittleEndian>::get`), for a format
//!   that is little-endian x86_64 only.
//! * The static loader links this crate: another dependency (with
//!   `memchr`) in a freestanding binary whose every byte is reviewed, for
//!   no capability it lacks.
//! * The writer streams gigabytes of pages with `pwrite` from two threads,
//!   page-aligned for `O_DIRECT`, after laying out every offset first (its
//!   own two phases, modelled on `object`'s). `object`'s `elf::Writer`
//!   writes sequentially into one `WritableBuffer` and is built around
//!   sections and symbols, which a core file does not have.
//!
//! Revisit this if crimg comes to read other ELF files (the task's
//! executables and libraries, for symbols or build ids): there `object`'s
//! breadth pays for itself.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

#[cfg(not(all(target_arch = "x86_64", target_endian = "little")))]
compile_error!("crimg images describe x86_64 tasks and are read as little-endian structs");

pub const ELFMAG: [u8; 4] = *b"\x7fELF";
pub const ELFCLASS64: u8 = 2;
pub const ELFDATA2LSB: u8 = 1;
pub const EV_CURRENT: u8 = 1;
pub const ELFOSABI_NONE: u8 = 0;
pub const ET_CORE: u16 = 4;
pub const EM_X86_64: u16 = 62;

pub const PT_LOAD: u32 = 1;
pub const PT_NOTE: u32 = 4;
pub const PF_X: u32 = 1;
pub const PF_W: u32 = 2;
pub const PF_R: u32 = 4;

/// `e_phnum` value meaning "the real count is in section header 0's `sh_info`".
pub const PN_XNUM: u16 = 0xffff;

pub const NT_PRSTATUS: u32 = 1;
pub const NT_PRFPREG: u32 = 2;
pub const NT_PRPSINFO: u32 = 3;
pub const NT_AUXV: u32 = 6;
pub const NT_SIGINFO: u32 = 0x5349_4749;
pub const NT_FILE: u32 = 0x4649_4c45;
pub const NT_X86_XSTATE: u32 = 0x202;

/// Owner of the standard notes.
pub const OWNER_CORE: &[u8] = b"CORE";
/// Owner of `NT_X86_XSTATE` (and other arch regsets) in kernel core files.
pub const OWNER_LINUX: &[u8] = b"LINUX";

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Ehdr {
    pub e_ident: [u8; 16],
    pub e_type: u16,
    pub e_machine: u16,
    pub e_version: u32,
    pub e_entry: u64,
    pub e_phoff: u64,
    pub e_shoff: u64,
    pub e_flags: u32,
    pub e_ehsize: u16,
    pub e_phentsize: u16,
    pub e_phnum: u16,
    pub e_shentsize: u16,
    pub e_shnum: u16,
    pub e_shstrndx: u16,
}
const _: () = assert!(core::mem::size_of::<Ehdr>() == 64);

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Phdr {
    pub p_type: u32,
    pub p_flags: u32,
    pub p_offset: u64,
    pub p_vaddr: u64,
    pub p_paddr: u64,
    pub p_filesz: u64,
    pub p_memsz: u64,
    pub p_align: u64,
}
const _: () = assert!(core::mem::size_of::<Phdr>() == 56);

/// Section header; a core file has at most one (index 0), and only to carry
/// the program header count when it exceeds `PN_XNUM - 1`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Shdr {
    pub sh_name: u32,
    pub sh_type: u32,
    pub sh_flags: u64,
    pub sh_addr: u64,
    pub sh_offset: u64,
    pub sh_size: u64,
    pub sh_link: u32,
    pub sh_info: u32,
    pub sh_addralign: u64,
    pub sh_entsize: u64,
}
const _: () = assert!(core::mem::size_of::<Shdr>() == 64);

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Nhdr {
    pub n_namesz: u32,
    pub n_descsz: u32,
    pub n_type: u32,
}
const _: () = assert!(core::mem::size_of::<Nhdr>() == 12);

/// `struct user_regs_struct` (x86_64), the `NT_PRSTATUS` register set.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct UserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}
const _: () = assert!(core::mem::size_of::<UserRegs>() == 216);

#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Timeval {
    pub sec: i64,
    pub usec: i64,
}
const _: () = assert!(core::mem::size_of::<Timeval>() == 16);

/// `struct elf_prstatus` (x86_64).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Prstatus {
    pub si_signo: i32,
    pub si_code: i32,
    pub si_errno: i32,
    pub pr_cursig: i16,
    pub _pad0: u16,
    pub pr_sigpend: u64,
    pub pr_sighold: u64,
    pub pr_pid: i32,
    pub pr_ppid: i32,
    pub pr_pgrp: i32,
    pub pr_sid: i32,
    pub pr_utime: Timeval,
    pub pr_stime: Timeval,
    pub pr_cutime: Timeval,
    pub pr_cstime: Timeval,
    pub pr_reg: UserRegs,
    pub pr_fpvalid: i32,
    pub _pad1: u32,
}
const _: () = assert!(core::mem::size_of::<Prstatus>() == 336);

/// `struct elf_prpsinfo` (x86_64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Prpsinfo {
    pub pr_state: i8,
    pub pr_sname: u8,
    pub pr_zomb: i8,
    pub pr_nice: i8,
    pub _pad0: u32,
    pub pr_flag: u64,
    pub pr_uid: u32,
    pub pr_gid: u32,
    pub pr_pid: i32,
    pub pr_ppid: i32,
    pub pr_pgrp: i32,
    pub pr_sid: i32,
    pub pr_fname: [u8; 16],
    pub pr_psargs: [u8; 80],
}
const _: () = assert!(core::mem::size_of::<Prpsinfo>() == 136);

impl Default for Prpsinfo {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Size of the legacy FXSAVE region at the start of every XSAVE area; this is
/// the `NT_PRFPREG` payload (`struct user_i387_struct`).
pub const FXSAVE_SIZE: usize = 512;
/// Offset of the XSAVE header (`XSTATE_BV`, `XCOMP_BV`) in an XSAVE area.
pub const XSAVE_HEADER_OFFSET: usize = 512;
/// Offset, inside the FXSAVE region, of the software-reserved bytes in which
/// the kernel stores `struct _fpx_sw_bytes` (magic1, extended size, xfeatures,
/// xstate size).
pub const FX_SW_BYTES_OFFSET: usize = 464;
/// `FP_XSTATE_MAGIC1`.
pub const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
/// `FP_XSTATE_MAGIC2`, stored right after an XSAVE area in a signal frame.
pub const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;

/// The XSAVE header at [`XSAVE_HEADER_OFFSET`] of every XSAVE area.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct XsaveHeader {
    /// The features whose state the area holds.
    pub xstate_bv: u64,
    /// The compacted format's features (0: standard format).
    pub xcomp_bv: u64,
    pub reserved: [u64; 6],
}
const _: () = assert!(core::mem::size_of::<XsaveHeader>() == 64);

/// `struct _fpx_sw_bytes`, at [`FX_SW_BYTES_OFFSET`] of the FXSAVE region:
/// what the kernel says about the XSAVE area that follows.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct FpxSwBytes {
    /// [`FP_XSTATE_MAGIC1`] when an XSAVE area follows.
    pub magic1: u32,
    pub extended_size: u32,
    /// The XCR0 of the machine that saved the area.
    pub xfeatures: u64,
    pub xstate_size: u32,
    pub padding: [u32; 7],
}
const _: () = assert!(core::mem::size_of::<FpxSwBytes>() == 48);
const _: () = assert!(FX_SW_BYTES_OFFSET + core::mem::size_of::<FpxSwBytes>() == FXSAVE_SIZE);

/// Bytes every XSAVE area has: the FXSAVE region and the XSAVE header.
pub const XSAVE_MIN_SIZE: usize = XSAVE_HEADER_OFFSET + core::mem::size_of::<XsaveHeader>();
