//! What the machine has, asked of the kernel in one call where `/proc`
//! would need a file opened, formatted and parsed.
//!
//! # Safety
//! The one call here writes a fixed-size record into a local buffer.
//!
//! # References
//! `sysinfo(2)`.

use super::{result, syscall6, Errno};

/// `sysinfo` (x86_64).
const SYSINFO: u64 = 99;

/// RAM and swap in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySize {
    pub ram: u64,
    pub swap: u64,
}

/// `sysinfo(&info)`: the machine's RAM (`totalram`, what `/proc/meminfo`
/// calls `MemTotal`) and swap (`totalswap`, `SwapTotal`), each counted in
/// units of `mem_unit` bytes.
pub fn memory_size() -> Result<MemorySize, Errno> {
    // `struct sysinfo` on x86_64: 112 bytes; `totalram` at 32, `totalswap`
    // at 64, `mem_unit` (u32) at 104.
    let mut info = [0u8; 112];
    // SAFETY: the kernel writes one `struct sysinfo` (112 bytes here) into
    // `info`, which is that long and lives across the call.
    result(unsafe { syscall6(SYSINFO, info.as_mut_ptr() as u64, 0, 0, 0, 0, 0) })?;
    let word = |at: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&info[at..at + 8]);
        u64::from_le_bytes(w)
    };
    let unit = u64::from(u32::from_le_bytes([
        info[104], info[105], info[106], info[107],
    ]))
    .max(1);
    Ok(MemorySize {
        ram: word(32).saturating_mul(unit),
        swap: word(64).saturating_mul(unit),
    })
}
