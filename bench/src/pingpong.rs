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
//! * `iceoryx2`: the same round trip over two publish-subscribe services of
//!   the iceoryx2 crate, zero-copy loans on both sides (see `iceoryx`).
//!
//! Blocking transports, where neither side owns its core: each receiver
//! sleeps in the kernel until the message is there.
//!
//! * `floor-futex`: their floor, a bare futex wake each way (see
//!   `futex_floor`).
//! * `rill-blocking`: the same as `rill`, but both sides wait with the
//!   client's blocking wait (`rill::Subscriber::poll_blocking`: a ~50 us
//!   spin, then a sleep on the ring's futex) instead of busy-polling.
//! * `uds`, `tcp`, `pipe`: a Unix stream socket, loopback TCP and two
//!   FIFOs, blocking reads and writes (see `sockets`).
//!
//! `--transport all` measures every transport (see `Transport::expand`).
//!
//! Messages carry `--size` bytes, one size or several (8 B to 1 MiB); the
//! rings grow with the size so that each holds four of the largest
//! messages. The floors move a fixed few bytes whatever the size: they are
//! measured once per round and are the reference at every size. `--plot`
//! draws the
//! kept histograms as latency by percentile (see `plot`); a terminal on
//! stderr shows which measurement is running.
//!
//! Measurements run in rounds, each transport once per round at every
//! size, so that a change in the machine during the run affects every
//! transport and size alike. The first `warmup` round trips of each
//! measurement are not recorded. Each
//! recorded round trip is timed with `Instant` (vDSO `clock_gettime`), whose
//! cost is printed beside the results; it is the same for every transport.

use crate::child::{
    check_cores, pin, preemptions, report_field, ChildArgs, ChildProc, Role, Stall,
};
use crate::plot;
use crate::report::{self, Latency};
use crate::rings::{pages_name, RingDir};
use crate::Transport;
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use crate::daemon::{stream_name, Daemon};
use crate::{futex_floor, sockets};
use rill_shm::ring::{ClaimError, ExclusivePublication, Message, PollError, Start, Subscriber};
use rill_shm::{Access, Ring};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest a side spins without progress before it gives up.
pub(crate) const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Smallest data capacity of the ping and pong rings (larger messages get
/// larger rings: see [`ring_capacity`]).
const RING_CAPACITY: u64 = 1 << 20;
/// Smallest and largest `--size`: a sequence number, and 1 MiB.
const MIN_SIZE: u64 = 8;
const MAX_SIZE: u64 = 1 << 20;

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
    /// Payload bytes per message (the first 8 carry a sequence number):
    /// one size or several, comma-separated, from 8B to 1MiB, each a number
    /// of bytes or with a unit B, KiB or MiB (any case; k and m are short
    /// for KiB and MiB), e.g. `8,32,1KiB,64KiB,1MiB`. Every transport is
    /// measured at every size in every round, except the floors (`floor`,
    /// `floor-store`, `floor-futex`), which carry a fixed few bytes whatever
    /// the size: they are measured once per round and are the reference at
    /// every size.
    #[arg(
        long = "size",
        value_delimiter = ',',
        num_args = 1..,
        default_value = "32",
        value_parser = parse_size
    )]
    sizes: Vec<u32>,
    /// The size being measured: one of `sizes`, set for each measurement.
    #[arg(skip)]
    pub(crate) size: u32,
    /// Round trips recorded per transport (over all rounds).
    #[arg(long, default_value_t = 2_000_000)]
    pub(crate) count: u64,
    /// Round trips run first and not recorded (in every round).
    #[arg(long, default_value_t = 200_000)]
    pub(crate) warmup: u64,
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
    pub(crate) dir: Option<PathBuf>,
    /// One JSON object per result line (progress, when stderr is a
    /// terminal, goes to stderr; stdout carries results only).
    #[arg(long)]
    json: bool,
    /// Also draw the latency by percentile (HdrHistogram style: percentile
    /// on a log scale of 1/(1-q)) of every transport at every size into
    /// this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// Runs `rill-bench pingpong`.
pub(crate) fn run(args: &PingpongArgs) -> Result<()> {
    let args = &PingpongArgs {
        transport: Transport::expand(&args.transport),
        ..args.clone()
    };
    check_cores(&args.cores)?;
    ensure!(
        args.count > 0 && args.rounds > 0,
        "--count and --rounds must be positive"
    );
    ensure!(args.poll_limit > 0, "--poll-limit must be positive");
    if let Some(i) = (1..args.sizes.len()).find(|&i| args.sizes[..i].contains(&args.sizes[i])) {
        bail!("--size lists {} twice", report::size_name(args.sizes[i] as usize));
    }
    pin(args.cores[0])?;
    let clock_ns = report::clock_overhead_ns();
    // Each round measures every transport once at every size, so a change
    // in the machine (a vCPU moved to a far core, a noisy neighbour) lands
    // on all of them.
    let per_round = args.count.div_ceil(args.rounds);
    let rounds_and_sizes =
        (0..args.rounds).flat_map(|r| (0..args.sizes.len()).map(move |s| (r, s)));
    let per_size = args.transport.iter().filter(|t| !fixed_size(**t)).count();
    let measurements = args.transport.len() + (args.sizes.len() - 1) * per_size;
    let mut progress = report::Progress::new(args.rounds as usize * measurements);
    let needs_daemon = args
        .transport
        .iter()
        .any(|t| matches!(t, Transport::Rill | Transport::RillBlocking));
    let daemon = if needs_daemon {
        Some(Daemon::for_run(args.socket.as_deref(), args.dir.as_deref())?)
    } else {
        None
    };
    let mut samples: Vec<Sample> = Vec::new();
    for (round_no, size_no) in rounds_and_sizes {
        let round = PingpongArgs {
            count: per_round,
            size: args.sizes[size_no],
            ..args.clone()
        };
        for t in &args.transport {
            if size_no > 0 && fixed_size(*t) {
                continue; // measured at the round's first size
            }
            progress.next(&format!(
                "pingpong round {}/{}, size {}: {}",
                round_no + 1,
                args.rounds,
                report::size_name(round.size as usize),
                t.to_possible_value().expect("no skipped variants").get_name()
            ));
            let got = match t {
                Transport::Floor => vec![floor(&round)?],
                Transport::FloorStore => vec![floor_store(&round)?],
                Transport::Ring => vec![ring(&round, false)?, ring(&round, true)?],
                Transport::Rill => {
                    let d = daemon.as_ref().expect("started above");
                    vec![rill(&round, d, false, Wait::Spin)?, rill(&round, d, true, Wait::Spin)?]
                }
                Transport::Iceoryx2 => vec![iceoryx2(&round)?],
                Transport::FloorFutex => vec![futex_floor::floor_futex(&round)?],
                Transport::RillBlocking => {
                    let d = daemon.as_ref().expect("started above");
                    vec![rill(&round, d, false, Wait::Block)?]
                }
                Transport::Uds => vec![sockets::uds(&round)?],
                Transport::Tcp => vec![sockets::tcp(&round)?],
                Transport::Pipe => vec![sockets::pipe(&round)?],
                Transport::All => unreachable!("expanded at the start"),
            };
            for g in got {
                match samples
                    .iter_mut()
                    .find(|s| s.transport == g.transport && s.size == g.size)
                {
                    Some(s) => {
                        s.hist.add(&g.hist).context("merge histograms")?;
                        s.preempted += g.preempted;
                    }
                    None => samples.push(g),
                }
            }
        }
    }
    drop(progress); // erases its line before the results go to the terminal
    let results: Vec<Latency> = samples
        .iter()
        .map(|s| Latency::new(s.transport, s.size, s.pages, &s.hist, s.preempted))
        .collect();
    report::print_latency(&results, clock_ns, args.json);
    if let Some(path) = &args.plot {
        let svg = plot_svg(args, clock_ns, &samples);
        std::fs::write(path, svg).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Whether transport `t` carries a fixed few bytes whatever `--size` says:
/// such a transport is measured once per round (at the first size) and is
/// the reference at every size. A new transport that cannot carry `--size`
/// bytes belongs here.
fn fixed_size(t: Transport) -> bool {
    matches!(
        t,
        Transport::Floor | Transport::FloorStore | Transport::FloorFutex
    )
}

/// Parses a `--size` value: bytes, or with a unit B, KiB or MiB (any
/// case; k and m for short), within 8B..=1MiB.
pub(crate) fn parse_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (a number of bytes, or with B, KiB or MiB)"))?;
    let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        u => return Err(format!("unknown unit {u:?} in {s:?} (B, KiB or MiB; k, m)")),
    };
    n.checked_mul(unit_bytes)
        .filter(|b| (MIN_SIZE..=MAX_SIZE).contains(b))
        .map(|b| u32::try_from(b).expect("at most 1 MiB"))
        .ok_or_else(|| format!("size {s:?} is outside 8B..=1MiB"))
}

/// Data capacity of the rings for messages of `size` bytes: a power of
/// two that holds four of the largest messages the ring accepts (the ring
/// requires `max_message_len <= capacity / 4 - header`), and at least
/// [`RING_CAPACITY`].
fn ring_capacity(size: u32) -> u64 {
    let span = rill_shm::frame::message_span(max_len(size) as usize) as u64;
    (4 * span).next_power_of_two().max(RING_CAPACITY)
}

/// Largest payload the rings accept for messages of `size` bytes.
fn max_len(size: u32) -> u32 {
    size.max(64)
}

/// The `--plot` chart of `samples`, titled with the run's parameters.
fn plot_svg(args: &PingpongArgs, clock_ns: u64, samples: &[Sample]) -> String {
    let series: Vec<plot::Series> = samples
        .iter()
        .map(|s| plot::Series {
            transport: s.transport.to_owned(),
            size: s.size,
            label: format!("{} {}", s.transport, report::size_name(s.size)),
            points: plot::percentile_points(&s.hist),
        })
        .collect();
    let names = |v: Vec<String>| v.join(",");
    let subtitle = format!(
        "transports {} · sizes {} · {} round trips each over {} rounds (+{} warmup per round) · \
         cores {} · each includes a clock read (~{clock_ns} ns)",
        names(samples.iter().map(|s| s.transport.to_owned()).fold(Vec::new(), |mut v, t| {
            if !v.contains(&t) {
                v.push(t);
            }
            v
        })),
        names(args.sizes.iter().map(|&z| report::size_name(z as usize)).collect()),
        args.count.div_ceil(args.rounds) * args.rounds,
        args.rounds,
        args.warmup,
        names(args.cores.iter().map(usize::to_string).collect())
    );
    plot::svg("rill-bench pingpong: round-trip latency by percentile", &subtitle, &series)
}

/// One transport's round trips from one round.
#[derive(Debug)]
pub(crate) struct Sample {
    pub(crate) transport: &'static str,
    pub(crate) size: usize,
    pub(crate) pages: &'static str,
    pub(crate) hist: Histogram<u64>,
    pub(crate) preempted: u64,
}

pub(crate) fn child_args(args: &PingpongArgs, role: Role, rings: Vec<PathBuf>, timestamps: bool) -> ChildArgs {
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
        publishers: 1,
        publisher_index: 0,
        peers: Vec::new(),
    }
}

/// Side A over two iceoryx2 services (see [`crate::iceoryx`]).
fn iceoryx2(args: &PingpongArgs) -> Result<Sample> {
    let child = child_args(args, Role::Iceoryx2Echo, Vec::new(), false);
    let (hist, preempted) = crate::iceoryx::round_trips(child, args.warmup)?;
    Ok(Sample {
        transport: "iceoryx2",
        size: args.size as usize,
        pages: crate::iceoryx::PAGES,
        hist,
        preempted,
    })
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
    let (capacity, max_len) = (ring_capacity(args.size), max_len(args.size));
    let (ping, ping_path) = dir.create("ping", capacity, max_len)?;
    let (pong, pong_path) = dir.create("pong", capacity, max_len)?;
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

/// How a side of the `rill` pingpong waits for the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Busy-polls (`rill`, `rill+ts`).
    Spin,
    /// With the client's blocking wait, [`Blocking`] (`rill-blocking`).
    Block,
}

/// Side A of the pingpong through a `rilld`: the same as [`ring`], on two
/// streams opened by name with the client library.
fn rill(args: &PingpongArgs, daemon: &Daemon, timestamps: bool, wait: Wait) -> Result<Sample> {
    let client = rill::Client::connect_to(daemon.socket()).context("connect to rilld")?;
    let options = stream_options(ring_capacity(args.size), args.size);
    let (ping, pong) = (stream_name("ping"), stream_name("pong"));
    let mut publ = client
        .open_exclusive_publisher(&ping, Some(options.clone()))
        .context("open ping publisher")?;
    publ.publication().set_timestamps(timestamps);
    // Subscribe before B starts, so B's first message (its "ready") is ours.
    let mut sub = client
        .subscriber_with(&pong, rill::Start::Latest, options)
        .context("open pong subscriber")?;
    let role = match wait {
        Wait::Spin => Role::RillEcho,
        Wait::Block => Role::RillBlockingEcho,
    };
    let mut cargs = child_args(args, role, Vec::new(), timestamps);
    cargs.socket = Some(daemon.socket().to_path_buf());
    cargs.streams = vec![ping, pong];
    let child = ChildProc::spawn(&cargs)?;
    let pages = pages_name(publ.ring().pages());
    match (wait, timestamps) {
        (Wait::Spin, false) => round_trips(args, "rill", pages, &mut publ, &mut sub, child),
        (Wait::Spin, true) => round_trips(args, "rill+ts", pages, &mut publ, &mut sub, child),
        (Wait::Block, false) => {
            let sub = &mut Blocking::new(&mut sub);
            round_trips(args, "rill-blocking", pages, &mut publ, sub, child)
        }
        (Wait::Block, true) => bail!("rill-blocking is measured without timestamps"),
    }
}

/// The options the `rill` transport creates its streams with: the `ring`
/// transport's ring shape.
pub(crate) fn stream_options(capacity: u64, size: u32) -> rill::StreamOptions {
    rill::StreamOptions::new()
        .with_capacity(capacity)
        .with_max_message_len(max_len(size))
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
            sub.idle(&mut stall)?;
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
    if args.role == Role::RillBlockingEcho {
        echo(args, &mut publ, &mut Blocking::new(&mut sub))
    } else {
        echo(args, &mut publ, &mut sub)
    }
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
            sub.idle(&mut stall)?;
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

    /// Called after a poll that found nothing: a busy-polled subscriber
    /// spins on ([`Stall::idle`]).
    #[inline]
    fn idle(&self, stall: &mut Stall) -> Result<()> {
        stall.idle()
    }
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

/// Longest one blocking poll waits before it returns empty.
const BLOCKING_POLL: Duration = Duration::from_millis(100);

/// A client-library subscriber that waits for messages with the library's
/// blocking wait, set to sleep on the ring's futex at once (no spin first:
/// `set_spin_before_sleep(ZERO)`), instead of being busy-polled. With the
/// library's default 50 us spin, a round trip of a few hundred ns would
/// never reach the futex and would measure the same as `rill`.
#[derive(Debug)]
pub(crate) struct Blocking<'a>(&'a mut rill::Subscriber);

impl<'a> Blocking<'a> {
    /// Wraps `sub`, turning its spin before sleeping off.
    pub(crate) fn new(sub: &'a mut rill::Subscriber) -> Self {
        sub.set_spin_before_sleep(Duration::ZERO);
        Blocking(sub)
    }
}

impl Poll for Blocking<'_> {
    fn poll_msgs<F: FnMut(Message<'_>)>(
        &mut self,
        limit: usize,
        handler: F,
    ) -> Result<usize, PollError> {
        self.0.poll_blocking(limit, BLOCKING_POLL, handler)
    }

    /// The poll has already waited [`BLOCKING_POLL`]: check the clock.
    fn idle(&self, stall: &mut Stall) -> Result<()> {
        stall.waited()
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

#[cfg(test)]
mod tests {
    use super::*;
    use rill_shm::ring::RingConfig;

    #[test]
    fn sizes_parse_with_binary_units_in_any_case() {
        for (text, bytes) in [
            ("8", 8),
            ("32B", 32),
            ("1KiB", 1024),
            ("4kib", 4096),
            ("64k", 65536),
            ("1MiB", 1 << 20),
            ("1m", 1 << 20),
            (" 2 KiB ", 2048),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "7", "2MiB", "1KB", "1.5KiB", "KiB", "-8", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn rings_hold_several_of_the_largest_messages_at_every_size() {
        for size in [8, 32, 4096, 65536, 65537, 300_000, 1 << 20] {
            let capacity = ring_capacity(size);
            let config = RingConfig {
                capacity,
                max_message_len: max_len(size),
                ..RingConfig::default()
            };
            assert!(config.validate().is_ok(), "size {size}: {config:?}");
            let span = rill_shm::frame::message_span(size as usize) as u64;
            assert!(capacity.is_power_of_two() && capacity >= 4 * span, "size {size}");
            assert!(capacity >= RING_CAPACITY, "size {size}");
        }
        assert_eq!(ring_capacity(32), RING_CAPACITY, "the default is unchanged");
    }

    #[test]
    fn size_names_round_trip_through_the_parser() {
        for bytes in [8, 1500, 1024, 65536, 1 << 20] {
            let name = report::size_name(bytes as usize);
            assert_eq!(parse_size(&name), Ok(bytes), "{name}");
        }
    }
}
