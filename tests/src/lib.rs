//! `rill-tests`: workspace-level integration tests that run real processes
//! against real shared-memory rings and real daemons.
//!
//! * [`payload`]: the self-checking message format every publisher writes.
//! * [`check`]: what every subscriber verifies about what it is handed.
//! * [`harness`]: the parent side: temporary ring directories, worker
//!   processes with watchdogs, summaries, huge-page discovery.
//! * [`daemon`]: running `rilld` in tests (building it, starting,
//!   restarting, killing, its log).
//! * [`workspace_bin`]: any other workspace binary (e.g. the `rill` CLI),
//!   built on demand (from `rill-test-support`, which `rill-powerfs` uses
//!   too).
//!
//! The worker binaries are `ring-worker` (src/bin/ring-worker.rs: maps ring
//! files itself) and `rill-worker` (src/bin/rill-worker.rs: a client of
//! `rilld` through `rill::Client`); the tests are in `tests/`.

#![forbid(unsafe_code)]

pub mod check;
pub mod daemon;
pub mod harness;
pub mod opts;
pub mod payload;

pub use rill_test_support::workspace_bin;

/// Logs of a worker binary to stderr, at `$RILL_LOG` (default `warn`).
pub fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RILL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}
