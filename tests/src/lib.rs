//! `rill-tests`: workspace-level integration tests that run real processes
//! against real shared-memory rings.
//!
//! * [`payload`]: the self-checking message format every publisher writes.
//! * [`check`]: what every subscriber verifies about what it is handed.
//! * [`harness`]: the parent side: temporary ring directories, worker
//!   processes with watchdogs, summaries, huge-page discovery.
//!
//! The worker binary is `ring-worker` (src/bin/ring-worker.rs); the tests
//! are in `tests/`.

#![forbid(unsafe_code)]

pub mod check;
pub mod harness;
pub mod payload;
