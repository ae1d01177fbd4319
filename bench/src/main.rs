//! `rill-bench`: measures Rill's shared-memory ring cross-process, and in
//! the same run the physical floor it is judged against.
//!
//! * `pingpong`: round-trip latency between two processes pinned to two
//!   cores, both busy-polling. `floor` moves one cache line each way (the
//!   cost of the hardware alone); `ring` sends a message on one ring and
//!   echoes it back on another (the cost of Rill's data path); `rill` does
//!   the same through streams of a real `rilld` opened with the client
//!   library (see `daemon`); `iceoryx2` does it over the iceoryx2 crate,
//!   for a reference outside Rill (see `iceoryx`). Blocking transports,
//!   whose receivers sleep in the kernel, beside their own floor
//!   `floor-futex` (see `futex_floor`): `rill-blocking`, and the kernel's
//!   byte streams `uds`, `tcp` and `pipe` (see `sockets`).
//! * `throughput`: one publisher process, one subscriber process, as fast as
//!   they go; rate measured at the subscriber, beside the rate of a minimal
//!   stream between the same two cores (`floor-store`).
//! * `persist`: what persisting streams costs, beside the disk's own
//!   limits measured in the same run on the same directory: archiving
//!   throughput against raw O_DIRECT writes, durable acknowledgements
//!   against a raw fdatasync, and the publisher's offer into a persisted
//!   ring against a plain one.
//! * `recovery`: rilld's recovery of a persisted log after `kill -9`,
//!   beside a sequential read of the same bytes (page cache dropped), and
//!   subscribing at `Latest` with a short and a long log.
//!
//! The parent is one side; it re-executes this binary with the hidden
//! `__child` subcommand for the other, handing it the ring files' paths.
//! Results are percentiles and ratios against the floor measured in the same
//! run: no absolute thresholds, every number beside its floor.

// `deny`, not `forbid`: `uring_write` allows the one unsafe operation the
// raw disk measurement needs (an io_uring submission), and nothing else.
#![deny(unsafe_code)]

mod child;
mod daemon;
mod futex_floor;
mod iceoryx;
mod oneway;
mod persist;
mod pingpong;
mod plot;
mod recovery;
mod report;
mod rings;
mod sockets;
mod stream_floor;
mod throughput;
mod uring_write;

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
    /// One publisher process to one subscriber process, as fast as they go
    /// (and fan-out, fan-in).
    Throughput(throughput::ThroughputArgs),
    /// One-way latency from the intended send time at fixed offered rates.
    Oneway(oneway::OnewayArgs),
    /// Archiving throughput, durable acknowledgement latency and offer
    /// cost of persisted streams, beside the disk's raw limits.
    Persist(persist::PersistArgs),
    /// Recovery of a persisted stream's log after kill -9, beside a
    /// sequential read of it; subscribing at Latest with short and long
    /// logs.
    Recovery(recovery::RecoveryArgs),
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
    /// `rill` with subscribers that sleep on the ring's futex between
    /// messages (after a short spin) instead of busy-polling.
    RillBlocking,
    /// The same round trip over two publish-subscribe services of the
    /// iceoryx2 crate, with zero-copy loans (see `iceoryx`).
    #[value(name = "iceoryx2")]
    Iceoryx2,
    /// The floor of the blocking transports (pingpong): a bare futex wake
    /// each way between two processes, on two 32-bit words in shared
    /// memory, the waiter sleeping in the kernel at once.
    FloorFutex,
    /// A message each way over a Unix stream socket (pingpong), both sides
    /// blocking in `read`.
    Uds,
    /// A message each way over loopback TCP with TCP_NODELAY (pingpong),
    /// both sides blocking in `read`.
    Tcp,
    /// A message each way over two FIFOs (pingpong), both sides blocking
    /// in `read`.
    Pipe,
    /// Every transport the command measures (see [`Transport::expand`]).
    All,
}

impl Transport {
    /// Every transport `all` stands for, in the order measured: the floors
    /// first, then the busy-polling transports, then the blocking ones. A
    /// new variant goes here (a unit test checks that none is missing).
    const EVERY: [Transport; 10] = [
        Transport::Floor,
        Transport::FloorStore,
        Transport::FloorFutex,
        Transport::Ring,
        Transport::Rill,
        Transport::Iceoryx2,
        Transport::RillBlocking,
        Transport::Uds,
        Transport::Tcp,
        Transport::Pipe,
    ];

    /// `list` with `all` replaced by every transport, each transport once,
    /// at its first mention.
    fn expand(list: &[Transport]) -> Vec<Transport> {
        let mut out = Vec::new();
        for t in list {
            let each = if *t == Transport::All { &Transport::EVERY[..] } else { std::slice::from_ref(t) };
            for e in each {
                if !out.contains(e) {
                    out.push(*e);
                }
            }
        }
        out
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Pingpong(args) => pingpong::run(&args),
        Command::Throughput(args) => throughput::run(&args),
        Command::Oneway(args) => oneway::run(&args),
        Command::Persist(args) => persist::run(&args),
        Command::Recovery(args) => recovery::run(&args),
        Command::Child(args) => child::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_expands_to_every_transport_once() {
        let every = Transport::expand(&[Transport::All]);
        for t in Transport::value_variants() {
            assert_eq!(
                every.contains(t),
                *t != Transport::All,
                "{t:?}: add it to Transport::EVERY"
            );
        }
        assert_eq!(every.len(), Transport::value_variants().len() - 1);
        let mixed = Transport::expand(&[Transport::Tcp, Transport::All, Transport::Tcp]);
        assert_eq!(mixed[0], Transport::Tcp);
        assert_eq!(mixed.len(), every.len(), "each transport once");
    }
}
