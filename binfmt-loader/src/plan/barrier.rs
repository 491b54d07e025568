//! A tree restore's barrier (`--barrier R,G`): nothing of the restored
//! tree resumes until every process of it is ready. Once the memory is
//! back, the other threads are created and parked and the pending signals
//! are queued, but before any timer is armed (a timer that fired while
//! the tree waits would be a signal the dumped tree never had then) and
//! before the credentials are dropped, the plan writes one byte to `R`
//! (ready) and reads one from `G` (go). Anything but one byte read (end of
//! file: the orchestrator died or gave up; an error) fails the plan like
//! any op after the point of no return: the message goes to the error fd
//! (the `--report` fd), then `exit_group` with
//! [`crate::ExitCode::RestoreFailed`]. Both fds are closed right after.

use super::abi::{int_arg, op_kind, rule};
use super::builder::Builder;
use super::{PlanError, PlanInput};
use crate::sys::nr;

/// The ops the barrier adds: write, read, two closes.
pub(super) const BARRIER_OPS: usize = 4;

/// The barrier's ops, when the input has one.
pub(super) fn barrier(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    let Some(bar) = input.barrier else {
        return Ok(());
    };
    let byte = b.put(&[1u8], 1)?;
    b.op(
        op_kind::SYSCALL,
        rule::EQ,
        nr::WRITE,
        [int_arg(bar.ready), byte, 1, 0, 0, 0],
        1,
        format_args!("write the barrier's ready byte to fd {}", bar.ready),
    )?;
    // Blocking: every signal is blocked, so nothing interrupts the wait
    // but the end of the orchestrator (end of file) or SIGKILL.
    let buf = b.put(&[0u8], 1)?;
    b.op(
        op_kind::SYSCALL,
        rule::EQ,
        nr::READ,
        [int_arg(bar.go), buf, 1, 0, 0, 0],
        1,
        format_args!(
            "read the barrier's go byte from fd {} (result 0: the tree restorer is gone)",
            bar.go
        ),
    )?;
    for (fd, what) in [(bar.ready, "ready"), (bar.go, "go")] {
        b.sys(
            rule::OK,
            nr::CLOSE,
            [int_arg(fd), 0, 0, 0, 0, 0],
            format_args!("close the barrier's {what} fd {fd}"),
        )?;
    }
    Ok(())
}
