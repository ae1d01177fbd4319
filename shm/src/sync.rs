//! The one door through which the ring touches atomics.
//!
//! Under `--cfg loom` every atomic, fence and spin hint comes from `loom`, so
//! the ring's claim/commit/poll protocol is model-checked with the very code
//! that runs in production. Nothing else in the crate may name
//! `std::sync::atomic` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
