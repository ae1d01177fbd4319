//! `rilld`, Rill's per-host daemon: owns the rings, hands them to clients
//! over one Unix socket (fds with SCM_RIGHTS, credentials with
//! SO_PEERCRED), tracks liveness, pads abandoned claims, and takes its
//! rings back from the ring keeper after a restart.

pub mod archiver;
pub mod config;
pub mod dirs;
pub mod indexer;
pub mod keeper;
pub mod peer;
pub mod server;
pub mod streams;
