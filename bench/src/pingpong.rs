//! Round-trip latency between two processes pinned to two cores, both
//! busy-polling.
//!
//! * `floor`: the cost of the hardware alone. Two counters of one ring file,
//!   each on its own 128-byte line (`durable` and `replicated`), serve as
//!   the ping cell and the pong cell: side A raises `durable` to `i` and
//!   spins until `replicated == i`; side B spins until `durable == i` and
//!   raises `replicated` to `i`. One line moves each way per round trip.
//!   The setters are `fetch_max` (a locked read-modify-write, a `lock
//!   cmpxchg` loop on x86) where a floor would use a plain release store.
//!   That costs far more than "a few ns": with the reader spinning on the
//!   line, the line is stolen between the loop's load and its `cmpxchg`.
//!   Measured on the development VM, `floor` sat 25-70 ns per round trip
//!   above `floor-store`, so a ratio against `floor` flatters the ring:
//!   read the ratio against `floor-store` too.
//! * `floor-store`: the same ping-pong between two threads of this process
//!   on the same two cores, through two std atomics on their own 128-byte
//!   lines, with plain release stores. It measures what `floor` would with a
//!   store instead of `fetch_max` (rill-shm offers no safe shared cell with a
//!   plain store; this crate forbids `unsafe`, so cannot map one itself).
//!   Threads and processes share the coherence path; only the TLB differs,
//!   and it is warm in both.
//! * `ring`: a message of `size` bytes on the ping ring, echoed back by B on
//!   the pong ring (B publishes from inside its poll handler, zero-copy),
//!   each ring with one exclusive publication and one subscriber. Measured
//!   with publish timestamps off (`ring`) and on (`ring+ts`).
//! * `rill`: the same as `ring` (same ring shape, back-pressure), but the
//!   rings are two streams of a real `rilld` (started for the run, or the
//!   one at `--socket`), each side opening its publisher and subscriber by
//!   name with the client library; each publisher is the stream's
//!   exclusive one (`Client::exclusive_publisher`), as on the bare ring.
//!   `rill` and `rill+ts` lines.
//!
//! Measurements run in rounds, each transport once per round, so that a
//! change in the machine during the run affects every transport alike. The
//! first `warmup` round trips of each measurement are not recorded. Each
//! recorded round trip is timed with `Instant` (vDSO `clock_gettime`), whose
//! cost is printed beside the results; it is the same for every transport.

use crate::child::{
    check_cores, pin, preemptions, report_field, ChildArgs, ChildProc, Role, Stall,
};
use crate::report::{self, Latency};
use crate::rings::{pages_name, RingDir};
use crate::Transport;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use crate::daemon::{stream_name, Daemon};
use rill_shm::ring::{ClaimError, ExclusivePublication, Message, PollError, Start, Subscriber};
use rill_shm::{Access, Ring};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest a side spins without progress before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Data capacity of the ping and pong rings.
const RING_CAPACITY: u64 = 1 << 20;

/// Arguments of `rill-bench pingpong`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PingpongArgs {
    /// Transports to measure, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "floor,floor-store,ring"
    )]
    transport: Vec<Transport>,
    /// Socket of a running `rilld` for the `rill` transport (default: start
    /// one for the run, the `rilld` next to this executable).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Payload bytes per message (the first 8 carry a sequence number).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(8..=65536))]
    size: u32,
    /// Round trips recorded per transport (over all rounds).
    #[arg(long, default_value_t = 2_000_000)]
    count: u64,
    /// Round trips run first and not recorded (in every round).
    #[arg(long, default_value_t = 200_000)]
    warmup: u64,
    /// Rounds: `count` is split over this many, and each round measures
    /// every transport once, with fresh processes and rings.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// The two cores: this process on the first, the echoing one on the second.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0,1")]
    cores: Vec<usize>,
    /// Most messages one poll may hand out (a real subscriber would use
    /// more than 1; with more, poll looks at the next frame's commit word
    /// after each message).
    #[arg(long, default_value_t = 16)]
    poll_limit: usize,
    /// Spin without the CPU's pause hint between polls (both sides, every
    /// transport). By default each empty poll is followed by one pause, as
    /// in `rill_shm::idle::BusySpin`: a reader hammering the line a writer
    /// is filling steals it back mid-write.
    #[arg(long)]
    tight_spin: bool,
    /// Directory to create ring files in (default: /dev/hugepages if it has
    /// free huge pages, else /dev/shm).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// One JSON object per result line.
    #[arg(long)]
    json: bool,
}

/// Runs `rill-bench pingpong`.
pub(crate) fn run(args: &PingpongArgs) -> Result<()> {
    check_cores(&args.cores)?;
    ensure!(
        args.count > 0 && args.rounds > 0,
        "--count and --rounds must be positive"
    );
    ensure!(args.poll_limit > 0, "--poll-limit must be positive");
    pin(args.cores[0])?;
    let clock_ns = report::clock_overhead_ns();
    // Each round measures every transport once, so a change in the machine
    // (a vCPU moved to a far core, a noisy neighbour) lands on all of them.
    let round = PingpongArgs {
        count: args.count.div_ceil(args.rounds),
        ..args.clone()
    };
    let daemon = if args.transport.contains(&Transport::Rill) {
        Some(Daemon::for_run(args.socket.as_deref(), args.dir.as_deref())?)
    } else {
        None
    };
    let mut samples: Vec<Sample> = Vec::new();
    for _ in 0..args.rounds {
        for t in &args.transport {
            let got = match t {
                Transport::Floor => vec![floor(&round)?],
                Transport::FloorStore => vec![floor_store(&round)?],
                Transport::Ring => vec![ring(&round, false)?, ring(&round, true)?],
                Transport::Rill => {
                    let d = daemon.as_ref().expect("started above");
                    vec![rill(&round, d, false)?, rill(&round, d, true)?]
                }
            };
            for g in got {
                match samples.iter_mut().find(|s| s.transport == g.transport) {
                    Some(s) => {
                        s.hist.add(&g.hist).context("merge histograms")?;
                        s.preempted += g.preempted;
                    }
                    None => samples.push(g),
                }
            }
        }
    }
    let results: Vec<Latency> = samples
        .iter()
        .map(|s| Latency::new(s.transport, s.size, s.pages, &s.hist, s.preempted))
        .collect();
    report::print_latency(&results, clock_ns, args.json);
    Ok(())
}

/// One transport's round trips from one round.
#[derive(Debug)]
struct Sample {
    transport: &'static str,
    size: usize,
    pages: &'static str,
    hist: Histogram<u64>,
    preempted: u64,
}

fn child_args(args: &PingpongArgs, role: Role, rings: Vec<PathBuf>, timestamps: bool) -> ChildArgs {
    ChildArgs {
        role,
        rings,
        core: args.cores[1],
        count: args.warmup + args.count,
        size: args.size as usize,
        timestamps,
        socket: None,
        streams: Vec::new(),
        seconds: 0.0,
        batch: 0,
        poll_limit: args.poll_limit,
        spin_hint: !args.tight_spin,
    }
}

/// Side A of the floor: ping on `durable`, wait for the pong on
/// `replicated`. B announces itself by raising `replicated` to 1; round
/// trip `i` (from 0) uses the value `i + 2`.
fn floor(args: &PingpongArgs) -> Result<Sample> {
    let mut dir = RingDir::new(args.dir.as_deref())?;
    let (ring, path) = dir.create("floor", 4096, 64)?;
    let mut child = ChildProc::spawn(&child_args(args, Role::FloorEcho, vec![path], false))?;
    let mut stall = Stall::new(STALL_TIMEOUT, !args.tight_spin);
    while ring.replicated_position() != 1 {
        child
            .check_alive()
            .context("waiting for the floor echo process")?;
        stall
            .idle_yield()
            .context("waiting for the floor echo process")?;
    }
    let mut hist = report::latency_histogram();
    let preempted_before = preemptions();
    for i in 0..args.warmup + args.count {
        let v = i + 2;
        let t0 = Instant::now();
        ring.set_durable_position(v);
        while ring.replicated_position() != v {
            stall.idle()?;
        }
        let rtt = t0.elapsed();
        stall.progress();
        if i >= args.warmup {
            hist.saturating_record(rtt.as_nanos() as u64);
        }
    }
    let preempted = preemptions() - preempted_before;
    let out = child.finish()?;
    let preempted = preempted + report_field(&out, "preempted")?;
    Ok(Sample {
        transport: "floor",
        size: 8,
        pages: pages_name(ring.pages()),
        hist,
        preempted,
    })
}

/// Side B of the floor.
pub(crate) fn floor_echo(args: &ChildArgs) -> Result<()> {
    let ring = Ring::open(&args.rings[0], Access::ReadWrite).context("open floor ring")?;
    let mut stall = Stall::new(STALL_TIMEOUT, args.spin_hint);
    ring.set_replicated_position(1);
    for i in 0..args.count {
        let v = i + 2;
        while ring.durable_position() != v {
            stall.idle()?;
        }
        ring.set_replicated_position(v);
        stall.progress();
    }
    Ok(())
}

/// A counter alone on its 128-byte line (two lines: the adjacent-line
/// prefetcher fetches pairs).
#[repr(align(128))]
#[derive(Debug, Default)]
struct Cell(AtomicU64);

/// The floor between two threads with plain stores; same protocol as
/// [`floor`] (`ping` for durable, `pong` for replicated).
fn floor_store(args: &PingpongArgs) -> Result<Sample> {
    let (ping, pong) = (Cell::default(), Cell::default());
    let total = args.warmup + args.count;
    let (core, spin_hint) = (args.cores[1], !args.tight_spin);
    std::thread::scope(|s| {
        let echo = s.spawn(|| -> Result<u64> {
            pin(core)?;
            let preempted_before = preemptions();
            let mut stall = Stall::new(STALL_TIMEOUT, spin_hint);
            // SYNC(floor): Release/Acquire pairs as in the ring counters.
            pong.0.store(1, Ordering::Release);
            for i in 0..total {
                let v = i + 2;
                while ping.0.load(Ordering::Acquire) != v {
                    stall.idle()?;
                }
                pong.0.store(v, Ordering::Release);
                stall.progress();
            }
            Ok(preemptions() - preempted_before)
        });
        let mut stall = Stall::new(STALL_TIMEOUT, spin_hint);
        while pong.0.load(Ordering::Acquire) != 1 {
            if echo.is_finished() {
                break;
            }
            stall.idle_yield().context("waiting for the echo thread")?;
        }
        let mut hist = report::latency_histogram();
        let preempted_before = preemptions();
        for i in 0..total {
            if echo.is_finished() {
                break;
            }
            let v = i + 2;
            let t0 = Instant::now();
            ping.0.store(v, Ordering::Release);
            while pong.0.load(Ordering::Acquire) != v {
                stall.idle()?;
            }
            let rtt = t0.elapsed();
            stall.progress();
            if i >= args.warmup {
                hist.saturating_record(rtt.as_nanos() as u64);
            }
        }
        let preempted = preemptions() - preempted_before;
        let preempted = preempted + echo.join().expect("echo thread panicked")?;
        Ok(Sample {
            transport: "floor-store",
            size: 8,
            pages: "heap",
            hist,
            preempted,
        })
    })
}

/// Side A of the ring pingpong: offer on ping, busy-poll pong for the echo.
fn ring(args: &PingpongArgs, timestamps: bool) -> Result<Sample> {
    let mut dir = RingDir::new(args.dir.as_deref())?;
    let max_len = args.size.max(64);
    let (ping, ping_path) = dir.create("ping", RING_CAPACITY, max_len)?;
    let (pong, pong_path) = dir.create("pong", RING_CAPACITY, max_len)?;
    let mut publ = ping.exclusive_publication()?;
    publ.set_timestamps(timestamps);
    // Subscribe before B starts, so B's first message (its "ready") is ours.
    let mut sub = pong.subscribe(Start::Latest)?;
    let child = ChildProc::spawn(&child_args(
        args,
        Role::RingEcho,
        vec![ping_path, pong_path],
        timestamps,
    ))?;
    let name = if timestamps { "ring+ts" } else { "ring" };
    round_trips(args, name, pages_name(ping.pages()), &mut publ, &mut sub, child)
}

/// Side A of the pingpong through a `rilld`: the same as [`ring`], on two
/// streams opened by name with the client library.
fn rill(args: &PingpongArgs, daemon: &Daemon, timestamps: bool) -> Result<Sample> {
    let client = rill::Client::connect_to(daemon.socket()).context("connect to rilld")?;
    let options = stream_options(RING_CAPACITY, args.size);
    let (ping, pong) = (stream_name("ping"), stream_name("pong"));
    let mut publ = client
        .open_exclusive_publisher(&ping, Some(options.clone()))
        .context("open ping publisher")?;
    publ.publication().set_timestamps(timestamps);
    // Subscribe before B starts, so B's first message (its "ready") is ours.
    let mut sub = client
        .subscriber_with(&pong, rill::Start::Latest, options)
        .context("open pong subscriber")?;
    let mut cargs = child_args(args, Role::RillEcho, Vec::new(), timestamps);
    cargs.socket = Some(daemon.socket().to_path_buf());
    cargs.streams = vec![ping, pong];
    let child = ChildProc::spawn(&cargs)?;
    let name = if timestamps { "rill+ts" } else { "rill" };
    let pages = pages_name(publ.ring().pages());
    round_trips(args, name, pages, &mut publ, &mut sub, child)
}

/// The options the `rill` transport creates its streams with: the `ring`
/// transport's ring shape.
pub(crate) fn stream_options(capacity: u64, size: u32) -> rill::StreamOptions {
    rill::StreamOptions::new()
        .with_capacity(capacity)
        .with_max_message_len(size.max(64))
        .with_policy(rill::Policy::BackPressure)
}

/// The measured part of side A, once B (`child`) has started: waits for
/// B's ready message, then times each round trip.
fn round_trips(
    args: &PingpongArgs,
    transport: &'static str,
    pages: &'static str,
    publ: &mut impl Offer,
    sub: &mut impl Poll,
    mut child: ChildProc,
) -> Result<Sample> {
    let size = args.size as usize;
    let mut stall = Stall::new(STALL_TIMEOUT, !args.tight_spin);
    while sub.poll_msgs(1, |_| ())? == 0 {
        child
            .check_alive()
            .context("waiting for the echo process")?;
        stall
            .idle_yield()
            .context("waiting for the echo process")?;
    }
    let mut payload = vec![0u8; size];
    let mut hist = report::latency_histogram();
    let limit = args.poll_limit;
    let preempted_before = preemptions();
    for i in 0..args.warmup + args.count {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        let mut echoed = u64::MAX;
        let t0 = Instant::now();
        offer(publ, &payload, &mut stall)?;
        while sub.poll_msgs(limit, |m| echoed = sequence(m.payload))? == 0 {
            stall.idle()?;
        }
        let rtt = t0.elapsed();
        stall.progress();
        if echoed != i {
            bail!("round trip {i} got back message {echoed}");
        }
        if i >= args.warmup {
            hist.saturating_record(rtt.as_nanos() as u64);
        }
    }
    let preempted = preemptions() - preempted_before;
    let out = child.finish()?;
    let preempted = preempted + report_field(&out, "preempted")?;
    Ok(Sample {
        transport,
        size,
        pages,
        hist,
        preempted,
    })
}

/// Side B of the ring pingpong: echo every ping message onto pong from
/// inside the poll handler.
pub(crate) fn ring_echo(args: &ChildArgs) -> Result<()> {
    let ping = Ring::open(&args.rings[0], Access::ReadWrite).context("open ping ring")?;
    let pong = Ring::open(&args.rings[1], Access::ReadWrite).context("open pong ring")?;
    let mut sub = ping.subscribe(Start::Latest)?;
    let mut publ = pong.exclusive_publication()?;
    publ.set_timestamps(args.timestamps);
    echo(args, &mut publ, &mut sub)
}

/// Side B of the pingpong through a `rilld`.
pub(crate) fn rill_echo(args: &ChildArgs) -> Result<()> {
    let socket = args.socket.as_deref().context("rill echo needs --socket")?;
    let [ping, pong] = args.streams.as_slice() else {
        bail!("rill echo needs two --stream names");
    };
    let client = rill::Client::connect_to(socket).context("connect to rilld")?;
    let mut sub = client
        .open_subscriber(ping, rill::Start::Latest, None)
        .context("open ping subscriber")?;
    let mut publ = client
        .open_exclusive_publisher(pong, None)
        .context("open pong publisher")?;
    publ.publication().set_timestamps(args.timestamps);
    echo(args, &mut publ, &mut sub)
}

/// Announces B with one message, then echoes `count` messages.
fn echo(args: &ChildArgs, publ: &mut impl Offer, sub: &mut impl Poll) -> Result<()> {
    let mut stall = Stall::new(STALL_TIMEOUT, args.spin_hint);
    offer(publ, &vec![0u8; args.size], &mut stall)?; // ready
    let mut echoed = 0u64;
    while echoed < args.count {
        let mut failed = None;
        let n = sub.poll_msgs(args.poll_limit, |m| {
            if let Err(e) = offer(publ, m.payload, &mut stall) {
                failed.get_or_insert(e);
            }
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        if n == 0 {
            stall.idle()?;
        } else {
            echoed += n as u64;
            stall.progress();
        }
    }
    Ok(())
}

/// A publication to offer messages on: the bare ring's, or the client
/// library's on the daemon's ring.
pub(crate) trait Offer {
    /// Writes `payload` as one message, or fails (at once when full).
    fn offer_msg(&mut self, payload: &[u8]) -> Result<u64, ClaimError>;
}

impl Offer for ExclusivePublication {
    #[inline]
    fn offer_msg(&mut self, payload: &[u8]) -> Result<u64, ClaimError> {
        self.offer(payload)
    }
}

impl<M: rill_shm::ring::ClaimMode> Offer for rill::Publisher<M> {
    #[inline]
    fn offer_msg(&mut self, payload: &[u8]) -> Result<u64, ClaimError> {
        self.offer(payload)
    }
}

/// A subscriber to poll: the bare ring's, or the client library's.
pub(crate) trait Poll {
    /// Hands up to `limit` messages to `handler`; returns how many.
    fn poll_msgs<F: FnMut(Message<'_>)>(&mut self, limit: usize, handler: F)
        -> Result<usize, PollError>;
}

impl Poll for Subscriber {
    #[inline]
    fn poll_msgs<F: FnMut(Message<'_>)>(
        &mut self,
        limit: usize,
        handler: F,
    ) -> Result<usize, PollError> {
        self.poll(limit, handler)
    }
}

impl Poll for rill::Subscriber {
    #[inline]
    fn poll_msgs<F: FnMut(Message<'_>)>(
        &mut self,
        limit: usize,
        handler: F,
    ) -> Result<usize, PollError> {
        self.poll(limit, handler)
    }
}

/// Offers `payload`, spinning while back-pressured.
#[inline]
pub(crate) fn offer(publ: &mut impl Offer, payload: &[u8], stall: &mut Stall) -> Result<u64> {
    loop {
        match publ.offer_msg(payload) {
            Ok(p) => return Ok(p),
            Err(ClaimError::BackPressured) => stall.idle()?,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The sequence number in a payload's first 8 bytes.
#[inline]
pub(crate) fn sequence(payload: &[u8]) -> u64 {
    payload.get(..8).map_or(u64::MAX, |b| {
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    })
}
