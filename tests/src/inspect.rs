//! What a test looks at from outside: a process's open fds, a byte of an
//! image's stored pages.

use std::fs;
use std::path::Path;

/// The open fds of process `pid` in number order, each with what it
/// refers to (`readlink` of `/proc/PID/fd/N`, or why that failed).
pub fn fds_of(pid: i32) -> Vec<(i32, String)> {
    let mut fds: Vec<(i32, String)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/fd: {err}"))
        .map(|e| {
            let e = e.expect("an fd entry");
            let n = e
                .file_name()
                .to_string_lossy()
                .parse()
                .expect("an fd number");
            let target = fs::read_link(e.path()).map_or_else(
                |err| format!("unreadable: {err}"),
                |p| p.display().to_string(),
            );
            (n, target)
        })
        .collect();
    fds.sort();
    fds
}

/// The fd numbers of process `pid`, in order.
pub fn fd_numbers(pid: i32) -> Vec<i32> {
    fds_of(pid).into_iter().map(|(n, _)| n).collect()
}

/// Flip a byte (100 bytes in) of the stored page at `addr` in `image`:
/// the `PT_LOAD` segment that holds it, by its program header.
pub fn corrupt_page_at(image: &Path, addr: u64) {
    let mut bytes = fs::read(image).expect("read image");
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let phoff = usize::try_from(u64_at(&bytes, 0x20)).unwrap();
    let phnum = usize::from(u16::from_le_bytes([bytes[0x38], bytes[0x39]]));
    let offset = (0..phnum)
        .map(|i| phoff + i * 56)
        .find_map(|ph| {
            let p_type = u32::from_le_bytes(bytes[ph..ph + 4].try_into().unwrap());
            let (off, vaddr, len) = (
                u64_at(&bytes, ph + 8),
                u64_at(&bytes, ph + 16),
                u64_at(&bytes, ph + 32),
            );
            (p_type == 1 && vaddr <= addr && addr < vaddr + len).then(|| off + (addr - vaddr))
        })
        .expect("a segment holding the address");
    bytes[usize::try_from(offset).unwrap() + 100] ^= 0x5a;
    fs::write(image, &bytes).expect("write image");
}
