//! Step 7c: the epoll items, added once every fd is at its number (an
//! item is keyed by its file and the fd number it was added with), in the
//! order stage 1 chose (`crate::objects::epoll`: inner epolls first).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::abi::{int_arg, rule};
use super::builder::Builder;
use super::{PlanError, PlanInput};
use crate::sys::event_objects::{EPOLL_CTL, EPOLL_CTL_ADD};

/// One item to add: `epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, {events, data})`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct EpollAdd {
    pub epfd: i32,
    pub tfd: i32,
    pub events: u32,
    /// How deep its epoll nests others (stage 1's ordering).
    pub depth: u32,
    pub data: u64,
}

/// `struct epoll_event` of x86_64: packed, 12 bytes.
pub const EPOLL_EVENT_SIZE: usize = 12;

/// The packed `struct epoll_event` of an item.
pub fn epoll_event(a: &EpollAdd) -> [u8; EPOLL_EVENT_SIZE] {
    let mut event = [0u8; EPOLL_EVENT_SIZE];
    event[..4].copy_from_slice(&a.events.to_le_bytes());
    event[4..].copy_from_slice(&a.data.to_le_bytes());
    event
}

pub(super) fn epoll_items(b: &mut Builder<'_>, input: &PlanInput<'_>) -> Result<(), PlanError> {
    for a in input.epoll_adds {
        let event = b.put(&epoll_event(a), 4)?;
        b.sys(
            rule::OK,
            EPOLL_CTL,
            [int_arg(a.epfd), EPOLL_CTL_ADD, int_arg(a.tfd), event, 0, 0],
            format_args!("epoll_ctl {} add fd {}", a.epfd, a.tfd),
        )?;
    }
    Ok(())
}
