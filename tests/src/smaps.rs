//! What `/proc/PID/smaps` and `/proc/PID/status` say of a process's memory:
//! the `VmFlags` of every area and chosen status lines, to compare before a
//! dump and after the restore.

use std::fs;

/// One area: its header line (fields joined by one space) and its
/// `VmFlags` mnemonics in the kernel's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AreaFlags {
    pub header: String,
    pub flags: Vec<String>,
}

/// The `VmFlags` of every area of `pid`, in address order.
pub fn vm_flags_of(pid: i32) -> Vec<AreaFlags> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/smaps: {err}"));
    let mut out: Vec<AreaFlags> = Vec::new();
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(last) = out.last_mut() {
                last.flags = flags.split_whitespace().map(str::to_owned).collect();
            }
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        let is_header = first.split_once('-').is_some_and(|(a, b)| {
            !a.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_hexdigit())
        });
        if is_header {
            out.push(AreaFlags {
                header: line.split_whitespace().collect::<Vec<_>>().join(" "),
                flags: Vec::new(),
            });
        }
    }
    out
}

/// The area whose header starts at `addr` (as the workload printed it,
/// `0x…`), or a panic naming it.
pub fn area_at<'a>(areas: &'a [AreaFlags], addr: &str) -> &'a AreaFlags {
    let start = addr.trim_start_matches("0x");
    areas
        .iter()
        .find(|a| a.header.split('-').next() == Some(start))
        .unwrap_or_else(|| panic!("no area starts at {addr}"))
}

/// Panics with every area whose flags differ, unless both lists are the
/// same areas with the same flags.
pub fn assert_same_vm_flags(before: &[AreaFlags], after: &[AreaFlags]) {
    if before == after {
        return;
    }
    let mut report = Vec::new();
    for b in before {
        match after.iter().find(|a| a.header == b.header) {
            Some(a) if a.flags != b.flags => report.push(format!(
                "{}\n    before the dump:    {}\n    after the restore:  {}",
                b.header,
                b.flags.join(" "),
                a.flags.join(" ")
            )),
            Some(_) => {}
            None => report.push(format!(
                "{}\n    gone after the restore (flags {})",
                b.header,
                b.flags.join(" ")
            )),
        }
    }
    for a in after {
        if !before.iter().any(|b| b.header == a.header) {
            report.push(format!(
                "{}\n    new after the restore (flags {})",
                a.header,
                a.flags.join(" ")
            ));
        }
    }
    panic!(
        "VmFlags in /proc/PID/smaps differ between the dump and the restore:\n  {}",
        report.join("\n  ")
    );
}

/// For a process that keeps running and changing its layout (a JVM): the
/// areas found unchanged (same header line) after the restore must have
/// the same flags, and at least `min_percent` of the areas must be found.
/// `tolerated` areas may differ: a process that runs between the snapshot
/// and its dump can re-create an area at the same place in the meantime
/// (a JVM does, for thread guard pages).
pub fn assert_same_vm_flags_of_unchanged_areas(
    before: &[AreaFlags],
    after: &[AreaFlags],
    min_percent: usize,
    tolerated: usize,
) {
    let common: Vec<(&AreaFlags, &AreaFlags)> = before
        .iter()
        .filter_map(|b| after.iter().find(|a| a.header == b.header).map(|a| (b, a)))
        .collect();
    assert!(
        common.len() * 100 >= before.len() * min_percent,
        "only {} of {} areas are unchanged after the restore",
        common.len(),
        before.len()
    );
    let differ: Vec<(AreaFlags, AreaFlags)> = common
        .into_iter()
        .filter(|(b, a)| b.flags != a.flags)
        .map(|(b, a)| (b.clone(), a.clone()))
        .collect();
    if differ.len() > tolerated {
        let (b, a): (Vec<AreaFlags>, Vec<AreaFlags>) = differ.into_iter().unzip();
        assert_same_vm_flags(&b, &a);
    }
}

/// The values of the `keys` lines of `/proc/PID/status`, in `keys` order
/// (`None` for a line the kernel does not show).
pub fn status_lines(pid: i32, keys: &[&str]) -> Vec<(String, Option<String>)> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("cannot read /proc/{pid}/status: {err}"));
    keys.iter()
        .map(|key| {
            let value = text.lines().find_map(|line| {
                line.split_once(':')
                    .filter(|(k, _)| k == key)
                    .map(|(_, v)| v.trim().to_owned())
            });
            ((*key).to_owned(), value)
        })
        .collect()
}
