//! Stage 1's fixed costs: what it asks the kernel and the CPU, asked once
//! (each `/proc` read and each CPUID costs more than the checks on it).

use image_format::records::{PendingSignalRecord, SigactionRecord};

use super::*;

/// [`task`] with `n` threads whose saved state has AVX (component 2).
fn avx_task(n: usize) -> TaskState {
    let mut state = task();
    state.threads[0].xsave[512..520].copy_from_slice(&7u64.to_le_bytes());
    let leader = state.threads[0].clone();
    for i in 1..n {
        let mut t = leader.clone();
        t.record.tid = 4242 + i32::try_from(i).unwrap();
        state.threads.push(t);
    }
    state.process.nthreads = u32::try_from(n).unwrap();
    state
}

#[test]
fn status_is_read_once_and_judges_the_signal_queue() {
    let mut os = machine();
    // This user has 99 of 100 signals queued; the task had two real-time
    // ones pending. The queue is judged from the status stage 1 read (the
    // fake's), not from another read of the real one.
    let status = &mut os
        .files
        .get_mut(&b"/proc/self/status"[..])
        .unwrap()
        .contents;
    status.extend_from_slice(b"SigQ:\t99/100\n");
    let mut state = task();
    let mut siginfo = [0u8; 128];
    siginfo[0] = 34;
    let pending = PendingSignalRecord {
        tid: 4242,
        _pad: 0,
        siginfo,
    };
    state.pending = vec![pending, pending];
    assert!(matches!(
        run(&os, &state, code_page(), (1000, 1000)),
        Err(CheckError::SigQueue { .. })
    ));
    let reads = |os: &Fake| {
        os.reads
            .borrow()
            .iter()
            .filter(|p| p.as_slice() == b"/proc/self/status")
            .count()
    };
    assert_eq!(reads(&os), 1);
    // With room in the queue it passes, still with one read.
    let os = machine();
    run(&os, &state, code_page(), (1000, 1000)).unwrap();
    assert_eq!(reads(&os), 1);
}

#[test]
fn cpuid_leaf_0xd_is_asked_once_for_all_threads() {
    // Every feature permitted: the one total size covers every area.
    let os = machine();
    let c = run(&os, &avx_task(3), code_page(), (1000, 1000)).unwrap();
    assert_eq!(c.input.threads.len(), 3);
    assert_eq!(os.cpuid_asks.get(), 1);
    // Some not permitted: each permitted component's end, once.
    let mut os = machine();
    os.xcr0 = 0x207;
    os.permitted = Some(0x7);
    let c = run(&os, &avx_task(3), code_page(), (1000, 1000)).unwrap();
    assert_eq!(c.input.xfeatures, 0x7);
    assert_eq!(os.cpuid_asks.get(), 1);
}

#[test]
fn a_short_area_is_still_refused_with_the_component_it_cuts() {
    let mut state = avx_task(2);
    // The second thread's area ends inside AVX's component (576..832).
    state.threads[1].xsave.truncate(700);
    let os = machine();
    assert!(matches!(
        run(&os, &state, code_page(), (1000, 1000)),
        Err(CheckError::BadXsave {
            tid: 4243,
            fault: crate::check::XsaveFault::Truncated {
                bit: 2,
                end: 832,
                len: 700
            }
        })
    ));
}

#[test]
fn only_actions_other_than_this_processs_own_are_planned() {
    let action = |signo, handler| SigactionRecord {
        signo,
        handler,
        ..Default::default()
    };
    let mut state = task();
    // SIGHUP default, SIGINT caught, SIGQUIT ignored, SIGPIPE default with
    // a flag, SIGTERM default.
    let mut pipe = action(13, 0);
    pipe.flags = 0x1000_0000;
    state.sigactions = vec![
        action(1, 0),
        action(2, 0x5000_1000),
        action(3, 1),
        pipe,
        action(15, 0),
    ];
    let signals = |c: &Checked| {
        let mut s: Vec<u32> = c.input.sigactions.iter().map(|s| s.signo).collect();
        s.sort_unstable();
        s
    };
    // This process ignores SIGTERM (bit 14): its default must be set.
    let mut os = machine();
    os.files
        .get_mut(&b"/proc/self/status"[..])
        .unwrap()
        .contents
        .extend_from_slice(b"SigIgn:\t0000000000004000\nSigCgt:\t0000000000000000\n");
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    assert_eq!(signals(&c), [2, 3, 13, 15]);
    // Without the status lines nothing is known: every action is set.
    let os = machine();
    let c = run(&os, &state, code_page(), (1000, 1000)).unwrap();
    assert_eq!(signals(&c), [1, 2, 3, 13, 15]);
}
