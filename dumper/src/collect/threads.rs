//! The threads: registers through ptrace (with the interrupted-syscall
//! fix-up applied to the stored copy), the answers of the syscalls injected
//! into each (alternate signal stack, clear-child-tid, the real blocked
//! mask, and in one thread the process-wide state), and the queued signals.

use image_format::elf::UserRegs;
use image_format::records::{PendingSignalRecord, ThreadRecord};
use image_writer::model::ThreadState;

use super::identity::comm16;
use super::task::{ProcessQuestions, ProcessWide, Task};
use super::{areas, CollectError, Collector};
use crate::procfs::smaps::SmapsEntry;
use crate::regs;

/// A thread's stored state, and its registers as found (the fix-up
/// changes the stored ones; injection needs the real ones).
pub(super) type Thread = (ThreadState, UserRegs);

/// Registers first, before anything is borrowed.
pub(super) fn registers<T: Task>(c: &Collector<'_, T>) -> Result<Vec<Thread>, CollectError> {
    let mut threads = Vec::with_capacity(c.task.tids().len());
    for &tid in c.task.tids() {
        let found = c.task.thread(tid)?;
        let comm = c.read_bytes(&format!("task/{tid}/comm"))?;
        let fixed = regs::fix_up_interrupted_syscall(&found.regs);
        let record = ThreadRecord {
            tid,
            restart: fixed.restart,
            sigmask: found.sigmask,
            rseq_len: found.rseq.rseq_abi_size,
            rseq_addr: found.rseq.rseq_abi_pointer,
            rseq_sig: found.rseq.signature,
            rseq_flags: found.rseq.flags,
            robust_list_head: found.robust_list.0,
            robust_list_len: found.robust_list.1,
            comm: comm16(&comm),
            syscall_nr: fixed.syscall_nr,
            syscall_ret: fixed.syscall_ret,
            ..ThreadRecord::default()
        };
        threads.push((
            ThreadState {
                record,
                regs: fixed.regs,
                xsave: found.xsave,
            },
            found.regs,
        ));
    }
    Ok(threads)
}

/// Injected syscalls: per thread, and the process-wide ones in the first
/// thread that can be borrowed.
pub(super) fn injected_answers<T: Task>(
    c: &mut Collector<'_, T>,
    smaps: &[SmapsEntry],
    threads: &mut [Thread],
    questions: ProcessQuestions,
) -> Result<ProcessWide, CollectError> {
    let pid = c.pid;
    // Scratch memory for every thread is found first, so that no thread is
    // borrowed when another one cannot be.
    let scratches = threads
        .iter()
        .map(|(thread, found)| {
            areas::scratch_for(smaps, found.rsp).map_err(|room| CollectError::NoScratch {
                pid,
                tid: thread.record.tid,
                rsp: found.rsp,
                room,
            })
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let mut process_wide = None;
    for ((thread, found), scratch) in threads.iter_mut().zip(scratches) {
        c.check_cancel()?;
        let answers = c.task.ask(
            thread.record.tid,
            found,
            scratch,
            process_wide.is_none().then_some(questions),
        )?;
        // Under a temporary mask, ptrace showed the temporary one.
        thread.record.sigmask = answers.original_mask;
        thread.record.altstack_sp = answers.altstack_sp;
        thread.record.altstack_flags = answers.altstack_flags;
        thread.record.altstack_size = answers.altstack_size;
        thread.record.clear_child_tid = answers.clear_child_tid;
        if let Some(mut process) = answers.process {
            process.sigactions =
                super::sigactions::table(questions.sigactions, &process.sigactions);
            process_wide = Some(process);
        }
    }
    process_wide.ok_or_else(|| CollectError::Unsupported {
        pid,
        what: "no thread could be borrowed to answer the process-wide questions".into(),
    })
}

/// The queued signals: the process-wide queue (once) and each thread's.
pub(super) fn pending_signals<T: Task>(
    c: &Collector<'_, T>,
    threads: &[Thread],
) -> Result<Vec<PendingSignalRecord>, CollectError> {
    let mut pending = Vec::new();
    for (i, (thread, _)) in threads.iter().enumerate() {
        let tid = thread.record.tid;
        if i == 0 {
            peek_pending(c, &mut pending, tid, true)?;
        }
        peek_pending(c, &mut pending, tid, false)?;
    }
    Ok(pending)
}

/// Append the queued signals of `tid` (its own queue, or with `shared` the
/// process-wide one) without dequeuing them.
fn peek_pending<T: Task>(
    c: &Collector<'_, T>,
    out: &mut Vec<PendingSignalRecord>,
    tid: i32,
    shared: bool,
) -> Result<(), CollectError> {
    let mut buf = [[0u8; 128]; 32];
    let mut offset = 0u64;
    loop {
        let n = c.task.peek_siginfo(tid, offset, shared, &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for siginfo in &buf[..n.min(buf.len())] {
            out.push(PendingSignalRecord {
                tid: if shared { 0 } else { tid },
                _pad: 0,
                siginfo: *siginfo,
            });
        }
        offset += n as u64;
    }
}
