//! `rilld`: the Rill daemon. `rilld` with no arguments listens on
//! /run/rill/rilld.sock, keeps its private state in /run/rilld and rings
//! in sealed memfds (on huge pages where the kernel has some reserved),
//! held across its restarts by the ring keeper it starts.

use clap::Parser;
use rill_daemon::config::Config;
use std::path::PathBuf;

/// Rill's per-host daemon.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Listening socket (default /run/rill/rilld.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// rilld's private state directory, where the ring keeper that holds
    /// every ring across a restart listens (default /run/rilld).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Rings on 4 KiB pages only, never on huge pages.
    #[arg(long)]
    no_huge_pages: bool,
    /// Run as the ring keeper on this socket (started by rilld itself).
    #[arg(long, hide = true)]
    keeper: Option<PathBuf>,
    /// TOML configuration file (flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Pad claims abandoned longer than this (ms).
    #[arg(long)]
    unblock_timeout_ms: Option<u64>,
    /// Release clients silent longer than this (ms).
    #[arg(long)]
    client_timeout_ms: Option<u64>,
    /// Remove unused streams after this (ms).
    #[arg(long)]
    linger_ms: Option<u64>,
    /// After a restart, wait this long for clients to resume (ms).
    #[arg(long)]
    resume_grace_ms: Option<u64>,
    /// Revoke a subscriber that holds publishers back a whole ring behind
    /// without moving for this long (ms).
    #[arg(long)]
    stall_limit_ms: Option<u64>,
    /// Directory for persisted streams' segment files (default
    /// /var/lib/rill; a disk filesystem, not tmpfs).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Segment file size in bytes (default 64 MiB).
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Keep each persisted stream's log under this many bytes, deleting
    /// whole sealed segments, oldest first (default: no limit).
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// Delete sealed segments last written longer ago than this (ms).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// Write segment files through the page cache, never with direct I/O
    /// (which is used by default where the filesystem supports it).
    #[arg(long)]
    buffered_io: bool,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RILL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(Args::parse()) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    if let Some(socket) = &args.keeper {
        return rill_daemon::keeper::run(socket);
    }
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.socket {
        config.socket = v;
    }
    if let Some(v) = args.state_dir {
        config.state_dir = v;
    }
    if args.no_huge_pages {
        config.huge_pages = false;
    }
    if let Some(v) = args.unblock_timeout_ms {
        config.unblock_timeout_ms = v;
    }
    if let Some(v) = args.client_timeout_ms {
        config.client_timeout_ms = v;
    }
    if let Some(v) = args.linger_ms {
        config.linger_ms = v;
    }
    if let Some(v) = args.stall_limit_ms {
        config.stall_limit_ms = v;
    }
    if let Some(v) = args.resume_grace_ms {
        config.resume_grace_ms = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.segment_bytes {
        config.segment_bytes = v;
    }
    if args.retention_bytes.is_some() {
        config.retention_bytes = args.retention_bytes;
    }
    if args.retention_ms.is_some() {
        config.retention_ms = args.retention_ms;
    }
    if args.buffered_io {
        config.direct_io = false;
    }
    config.validate()?;
    rill_daemon::server::Server::new(config)?.run()
}
