//! `rill-chaos`: a Jepsen-style checker of rilld's persistence and crash
//! recovery. The binary `rill-chaos` runs a real rilld (its data directory
//! on `rill-powerfs`, so power cuts are real), client processes
//! (`rill-chaos-client`: publishers on persisted streams of every
//! durability, subscribers checking as they read), injects faults drawn
//! from a seed, and at the end checks every acknowledged message against
//! what a fresh subscriber reads from `Start::Earliest`.
//!
//! This library holds what the parent and the clients share and what can
//! be tested without processes:
//!
//! * [`spec`]: the streams, their publishers, and publisher indices
//!   (a publisher slot and an incarnation in one `u32`).
//! * [`logs`]: the acknowledgement logs publishers append to (one line per
//!   message whose `wait_durable` returned, written with `write(2)`), and
//!   the event logs of every client.
//! * [`history`]: the faults injected, with their times, to show around a
//!   violation.
//! * [`verify`]: the final check of one stream, a pure function of what
//!   was read, acknowledged and damaged on purpose.
//! * [`duration`]: `60s`, `5m`, `1h`, `500ms`.
//!
//! See README.md in this directory for how to run it.

#![forbid(unsafe_code)]

pub mod duration;
pub mod history;
pub mod logs;
pub mod spec;
pub mod verify;

/// The clock every process of a run stamps with (acknowledgements, faults,
/// frames): `CLOCK_MONOTONIC`, shared by all processes of the host.
pub fn now_ns() -> u64 {
    rill_shm::os::now_monotonic_ns()
}
