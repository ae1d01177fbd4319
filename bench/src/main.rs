//! `rill-bench`: measures Rill's shared-memory ring cross-process, and in
//! the same run the physical floor it is judged against.
//!
//! * `pingpong`: round-trip latency between two processes pinned to two
//!   cores, both busy-polling. `floor` moves one cache line each way (the
//!   cost of the hardware alone); `ring` sends a message on one ring and
//!   echoes it back on another (the cost of Rill's data path); `rill` does
//!   the same through streams of a real `rilld` opened with the client
//!   library (see `daemon`).
//! * `throughput`: one publisher process, one subscriber process, as fast as
//!   they go; rate measured at the subscriber, beside the rate of a minimal
//!   stream between the same two cores (`floor-store`).
//!
//! The parent is one side; it re-executes this binary with the hidden
//! `__child` subcommand for the other, handing it the ring files' paths.
//! Results are percentiles and ratios against the floor measured in the same
//! run (see `shared/STYLE.md`: no absolute thresholds, numbers in context).

#![forbid(unsafe_code)]

mod child;
mod daemon;
mod pingpong;
mod report;
mod rings;
mod stream_floor;
mod throughput;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "rill-bench",
    version,
    about = "Rill latency and throughput benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Round-trip latency between two pinned, busy-polling processes.
    Pingpong(pingpong::PingpongArgs),
    /// One publisher process to one subscriber process, as fast as they go.
    Throughput(throughput::ThroughputArgs),
    /// The other side of a benchmark (started by this binary itself).
    #[command(name = "__child", hide = true)]
    Child(child::ChildArgs),
}

/// What a pingpong measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// One cache line each way through a ring file's counters, between two
    /// processes (the counters' setters are locked read-modify-writes).
    Floor,
    /// One cache line each way between two threads of this process with
    /// plain release stores: the hardware floor without the locked
    /// instruction (same cores, same coherence traffic).
    FloorStore,
    /// Rill's ring, a message each way (reported without and with
    /// publish timestamps).
    Ring,
    /// The same as `ring`, but the rings come from a real `rilld` and each
    /// side opens its publisher and subscriber by stream name with the
    /// client library (`rill`); each publisher is the stream's exclusive one.
    Rill,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Pingpong(args) => pingpong::run(&args),
        Command::Throughput(args) => throughput::run(&args),
        Command::Child(args) => child::run(&args),
    }
}
