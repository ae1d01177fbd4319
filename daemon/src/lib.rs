//! `rilld`, Rill's per-host daemon: owns the rings, hands them to clients
//! over one Unix socket (fds with SCM_RIGHTS, credentials with
//! SO_PEERCRED), tracks liveness, pads abandoned claims, and adopts its
//! rings again after a restart.

pub mod archiver;
pub mod config;
pub mod indexer;
pub mod server;
pub mod streams;
