//! CRIU 4.2's figures for the same workloads, measured earlier on these
//! machines and quoted from issue 9. They are constants: this benchmark
//! does not run CRIU.

/// The quoted figures of workload `name`, or None.
pub fn reference(name: &str) -> Option<&'static str> {
    Some(match name {
        "tiny" => "dump 46-59 ms",
        "python" => "dump 58-70 ms, restore 59-77 ms",
        "numpy" => "dump 0.15 s, restore 0.17 s",
        "64m" => "dump 0.105 s, restore 0.098 s",
        "1g" => {
            "dump 0.91-1.8 s, restore 0.54-0.8 s (page cache), frozen 1.7 s with --leave-running"
        }
        "asan" => "dump 0.08 s, restore 0.06 s",
        "series" => "frozen 1.7 s for one --leave-running dump of 1 GiB",
        _ => return None,
    })
}

/// The line printed under a workload's figures.
pub fn line(name: &str) -> String {
    match reference(name) {
        Some(r) => format!("  CRIU 4.2, measured earlier (issue 9), not in this run: {r}"),
        None => "  CRIU 4.2: no earlier figure for this workload".to_owned(),
    }
}
