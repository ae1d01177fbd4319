//! Throughput: one publisher process, one subscriber process, each pinned
//! to its own core, as fast as they go.
//!
//! The publisher (the child) numbers its messages in their first 8 bytes,
//! publishes for `seconds` with `offer` (or with `try_claim_batch` + `push`
//! batches), then sends a stop message. The subscriber (this process) polls
//! with a large limit, checks every sequence number and length, and
//! measures the rate between the first poll that returned data and the
//! stop message: the rate at which messages arrive, not at which they were
//! written. The first line is the floor measured in the same run (see
//! `stream_floor`); each ring line says how it compares.
//!
//! `--fan-out N` also measures one publisher to `N` subscribers (the
//! parent and `N - 1` subscriber processes, all on the first core; each
//! checks every message), and `--fan-in N` `N` publisher processes (on
//! the second core, shared publications) to one subscriber, each beside
//! the 1:1 line of the same run; the rate is the parent subscriber's.
//!
//! `--transport rill` measures the same through a stream of a real `rilld`
//! (started for the run, or the one at `--socket`), opened by name with the
//! client library on both sides; the publisher is the stream's exclusive
//! one (`Client::exclusive_publisher`), as on the bare ring. Each `rill`
//! line is also compared with `ring`.

use crate::child::{
    check_cores, pin, preemptions, report_field, ChildArgs, ChildProc, Role, Stall,
};
use crate::daemon::{stream_name, Daemon};
use crate::pingpong::{offer, sequence, stream_options, Offer, Poll};
use crate::Transport;
use crate::report::{self, Rate};
use crate::rings::{pages_name, RingDir};
use crate::stream_floor;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use rill_shm::frame::message_span;
use rill_shm::ring::{ClaimError, ExclusivePublication, SharedPublication, Start};
use rill_shm::{Access, Ring};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Sequence number of the stop message.
const STOP: u64 = u64::MAX;
/// Longest a side spins without progress before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Publish attempts between two looks at the clock.
const CLOCK_EVERY: usize = 1024;

/// Arguments of `rill-bench throughput`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ThroughputArgs {
    /// Rill transports to measure, in this order (`ring`, `rill`); the
    /// floor (`floor-store`) is always measured first.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ring")]
    transport: Vec<Transport>,
    /// Socket of a running `rilld` for the `rill` transport (default: start
    /// one for the run, the `rilld` next to this executable).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Payload sizes, one or several (`8,32,4KiB,64KiB,1MiB`; 8 B to 1 MiB;
    /// the first 8 bytes carry a sequence number). Each is measured with
    /// every transport, beside the floor and a single-core memcpy of the
    /// same size (the bandwidth a publisher copying messages could reach).
    #[arg(long = "size", value_delimiter = ',', value_parser = crate::pingpong::parse_size, default_value = "32")]
    sizes: Vec<u32>,
    /// The size being measured (one of `sizes`).
    #[arg(skip = 32u32)]
    size: u32,
    /// How long each mode publishes, in total over all rounds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds: `seconds` is split over this many, and each round measures
    /// the floor and every mode once, with fresh processes and rings.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Also measure batches of this many messages (`try_claim_batch` +
    /// `push`), besides one `offer` per message.
    #[arg(long)]
    batch: Option<usize>,
    /// Also measure one publisher to this many subscribers (offer, no
    /// timestamps), beside the 1:1 line.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=15))]
    fan_out: u16,
    /// Also measure this many publishers (shared publications) to one
    /// subscriber (offer, no timestamps), beside the 1:1 line.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    fan_in: u16,
    /// Ring data capacity in bytes (a power of two); raised for large
    /// sizes to hold at least 16 messages.
    #[arg(long, default_value_t = 4 << 20)]
    capacity: u64,
    /// Most messages one poll may hand out.
    #[arg(long, default_value_t = 4096)]
    poll_limit: usize,
    /// The two cores: the subscriber (this process) on the first, the
    /// publisher on the second.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0,1")]
    cores: Vec<usize>,
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

/// Runs `rill-bench throughput`.
pub(crate) fn run(args: &ThroughputArgs) -> Result<()> {
    check_cores(&args.cores)?;
    ensure!(
        args.seconds > 0.0 && args.rounds > 0,
        "--seconds and --rounds must be positive"
    );
    ensure!(args.poll_limit > 0, "--poll-limit must be positive");
    ensure!(args.capacity.is_power_of_two(), "--capacity must be a power of two");
    for t in &args.transport {
        ensure!(
            matches!(t, Transport::Ring | Transport::Rill),
            "throughput --transport takes ring and rill (the floor-store and memcpy lines are always measured)"
        );
    }
    pin(args.cores[0])?;
    let daemon = if args.transport.contains(&Transport::Rill) {
        Some(Daemon::for_run(args.socket.as_deref(), args.dir.as_deref())?)
    } else {
        None
    };
    let mut results: Vec<Rate> = Vec::new();
    for &size in &args.sizes {
        let span = message_span(size as usize) as u64;
        let sized = ThroughputArgs {
            size,
            capacity: args.capacity.max((16 * span).next_power_of_two()),
            ..args.clone()
        };
        if let Some(b) = args.batch {
            let bytes = b as u64 * span;
            ensure!(
                b > 0 && bytes <= sized.capacity / 4,
                "--batch {b} of {size}-byte messages must fill 1..=capacity/4 bytes"
            );
        }
        // Each round measures the floor and every mode once, so a change in
        // the machine during the run affects all of them alike.
        let round = ThroughputArgs { seconds: args.seconds / args.rounds as f64, ..sized };
        for round_no in 0..args.rounds {
            eprintln!("throughput: size {size} B, round {}/{}", round_no + 1, args.rounds);
            let mut got = vec![
                stream_floor::measure(stream_floor::Shape {
                    size: round.size as usize,
                    capacity: round.capacity,
                    seconds: round.seconds,
                    cores: [round.cores[0], round.cores[1]],
                    spin_hint: !round.tight_spin,
                })?,
                memcpy(&round)?,
            ];
            for t in &round.transport {
                let one = Shape::ONE;
                let mut cases: Vec<(usize, bool, Shape)> = Vec::new();
                for batch in std::iter::once(0).chain(round.batch) {
                    cases.extend([(batch, false, one), (batch, true, one)]);
                }
                if round.fan_out > 1 {
                    cases.push((0, false, Shape { publishers: 1, subscribers: round.fan_out }));
                }
                if round.fan_in > 1 {
                    cases.push((0, false, Shape { publishers: round.fan_in, subscribers: 1 }));
                }
                for (batch, timestamps, shape) in cases {
                    got.push(match (t, &daemon) {
                        (Transport::Rill, Some(d)) => measure_rill(&round, d, batch, timestamps, shape)?,
                        _ => measure(&round, batch, timestamps, shape)?,
                    });
                }
            }
            for g in got {
                match results
                    .iter_mut()
                    .find(|r| r.transport == g.transport && r.mode == g.mode && r.size == g.size)
                {
                    Some(r) => r.merge(&g),
                    None => results.push(g),
                }
            }
        }
    }
    report::print_rates(&results, args.json);
    Ok(())
}

/// Bytes in each of the memcpy baseline's two buffers: 8x the last-level
/// cache of common servers, so the copy streams from and to memory.
const MEMCPY_BUFFER: usize = 256 << 20;

/// Single-core memcpy bandwidth, in `args.size`-byte copies: a thread on
/// the publisher's core copies one buffer into another, both far larger
/// than the caches, message by message (the usual meaning of "memcpy
/// bandwidth"). A publisher's `offer` copies each message once, into a
/// ring that another core reads.
fn memcpy(args: &ThroughputArgs) -> Result<Rate> {
    let (size, core, seconds) = (args.size as usize, args.cores[1], args.seconds);
    std::thread::scope(|s| {
        s.spawn(|| -> Result<Rate> {
            pin(core)?;
            // Written once, so every page is mapped before timing starts.
            let src = vec![0x5au8; MEMCPY_BUFFER];
            let mut dst = vec![0xa5u8; MEMCPY_BUFFER];
            let slots = MEMCPY_BUFFER / size;
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(seconds);
            let mut copies = 0u64;
            while Instant::now() < deadline {
                for _ in 0..64 {
                    let at = (copies as usize % slots) * size;
                    dst[at..at + size].copy_from_slice(std::hint::black_box(&src[at..at + size]));
                    copies += 1;
                }
            }
            std::hint::black_box(&dst);
            Ok(Rate {
                transport: "memcpy".to_owned(),
                mode: "copy".to_owned(),
                size,
                pages: "heap",
                msgs: copies,
                seconds: start.elapsed().as_secs_f64(),
                back_pressured: 0,
                polls: 0,
                empty_polls: 0,
                preempted: 0,
            })
        })
        .join()
        .expect("memcpy thread panicked")
    })
}

/// Publishers and subscribers of one measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// Publisher processes.
    pub(crate) publishers: u16,
    /// Subscribers (the parent and `subscribers - 1` processes).
    pub(crate) subscribers: u16,
}

impl Shape {
    const ONE: Shape = Shape { publishers: 1, subscribers: 1 };

    /// `offer`, `batch64`, and `offer 1:4` / `offer 4:1` beyond 1:1.
    fn mode(&self, batch: usize) -> String {
        let base = if batch == 0 { "offer".to_owned() } else { format!("batch{batch}") };
        if *self == Shape::ONE {
            base
        } else {
            format!("{base} {}:{}", self.publishers, self.subscribers)
        }
    }
}

/// Publisher `index`'s message `seq`: the index in the top 16 bits.
#[inline]
fn tag(index: u16, seq: u64) -> u64 {
    u64::from(index) << 48 | seq
}

/// What a subscriber has seen: per publisher, the next sequence number
/// expected, and whether it said stop.
#[derive(Debug)]
struct Tally {
    expected: Vec<u64>,
    stops: usize,
    bad: Option<String>,
}

impl Tally {
    fn new(publishers: u16) -> Self {
        Tally { expected: vec![0; usize::from(publishers)], stops: 0, bad: None }
    }

    fn stopped(&self) -> bool {
        self.stops == self.expected.len()
    }

    fn received(&self) -> u64 {
        self.expected.iter().sum()
    }

    #[inline]
    fn on(&mut self, payload: &[u8], size: usize) {
        let word = sequence(payload);
        if word == STOP {
            self.stops += 1;
            return;
        }
        let (index, seq) = ((word >> 48) as usize, word & ((1 << 48) - 1));
        match self.expected.get_mut(index) {
            Some(e) if seq == *e && payload.len() == size => *e += 1,
            _ => {
                let want = self.expected.get(index).copied();
                let len = payload.len();
                self.bad.get_or_insert_with(|| {
                    format!("publisher {index}: expected message {want:?} of {size} bytes, got {seq} of {len} bytes")
                });
            }
        }
    }

    fn check(&self) -> Result<()> {
        match &self.bad {
            Some(b) => bail!("{b}"),
            None => Ok(()),
        }
    }
}

/// The child arguments of one measurement's publishers and subscribers.
fn child_args(args: &ThroughputArgs, role: Role, batch: usize, timestamps: bool, shape: Shape) -> ChildArgs {
    ChildArgs {
        role,
        rings: Vec::new(),
        socket: None,
        streams: Vec::new(),
        core: args.cores[1],
        count: 0,
        size: args.size as usize,
        timestamps,
        seconds: args.seconds,
        batch,
        poll_limit: args.poll_limit,
        spin_hint: !args.tight_spin,
        publishers: shape.publishers,
        publisher_index: 0,
        peers: Vec::new(),
    }
}

/// Starts `shape.subscribers - 1` subscriber processes (on the parent's
/// core) and waits until `joined()` counts all of them and the parent.
fn start_subscribers(
    base: &ChildArgs,
    core: usize,
    shape: Shape,
    mut joined: impl FnMut() -> Result<usize>,
) -> Result<Vec<ChildProc>> {
    let mut children = Vec::new();
    for _ in 1..shape.subscribers {
        children.push(ChildProc::spawn(&ChildArgs { core, ..base.clone() })?);
    }
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    while joined()? < usize::from(shape.subscribers) {
        for c in &mut children {
            c.check_alive().context("waiting for the subscriber processes")?;
        }
        stall.idle_yield().context("waiting for the subscriber processes")?;
    }
    Ok(children)
}

/// Starts `shape.publishers` publisher processes, numbered from 0.
fn start_publishers(base: &ChildArgs, shape: Shape) -> Result<Vec<ChildProc>> {
    (0..shape.publishers)
        .map(|i| ChildProc::spawn(&ChildArgs { publisher_index: i, ..base.clone() }))
        .collect()
}

/// One measurement: a fresh ring, fresh publisher (and fan-out
/// subscriber) processes.
fn measure(args: &ThroughputArgs, batch: usize, timestamps: bool, shape: Shape) -> Result<Rate> {
    let mut dir = RingDir::new(args.dir.as_deref())?;
    let (ring, path) = dir.create("stream", args.capacity, args.size.max(64))?;
    let mut sub = ring.subscribe(Start::Latest)?;
    let base = ChildArgs { rings: vec![path], ..child_args(args, Role::Subscriber, batch, timestamps, shape) };
    let subscribers = start_subscribers(&base, args.cores[0], shape, || Ok(ring.subscribers().len()))?;
    let publishers = start_publishers(&ChildArgs { role: Role::Publisher, ..base }, shape)?;
    let name = if timestamps { "ring+ts" } else { "ring" };
    receive(args, name, batch, shape, pages_name(ring.pages()), &mut sub, publishers, subscribers)
}

/// One measurement through a `rilld`: a fresh stream opened by name with
/// the client library on every side, fresh publisher (and subscriber)
/// processes.
fn measure_rill(args: &ThroughputArgs, daemon: &Daemon, batch: usize, timestamps: bool, shape: Shape) -> Result<Rate> {
    let client = rill::Client::connect_to(daemon.socket()).context("connect to rilld")?;
    let stream = stream_name("stream");
    let mut sub = client
        .subscriber_with(&stream, rill::Start::Latest, stream_options(args.capacity, args.size))
        .context("open subscriber")?;
    let base = ChildArgs {
        socket: Some(daemon.socket().to_path_buf()),
        streams: vec![stream.clone()],
        ..child_args(args, Role::RillSubscriber, batch, timestamps, shape)
    };
    let subscribers =
        start_subscribers(&base, args.cores[0], shape, || Ok(client.stream_info(&stream)?.subscribers.len()))?;
    let publishers = start_publishers(&ChildArgs { role: Role::RillPublisher, ..base }, shape)?;
    let name = if timestamps { "rill+ts" } else { "rill" };
    let pages = pages_name(sub.ring().pages());
    receive(args, name, batch, shape, pages, &mut sub, publishers, subscribers)
}

/// The parent subscriber's side of one measurement, once the publishers
/// have started; then every process's count is checked against what the
/// publishers say they sent.
#[allow(clippy::too_many_arguments)]
fn receive(
    args: &ThroughputArgs,
    transport: &str,
    batch: usize,
    shape: Shape,
    pages: &'static str,
    sub: &mut impl Poll,
    publishers: Vec<ChildProc>,
    subscribers: Vec<ChildProc>,
) -> Result<Rate> {
    let size = args.size as usize;
    let mut stall = Stall::new(STALL_TIMEOUT, !args.tight_spin);
    let mut tally = Tally::new(shape.publishers);
    let limit = args.poll_limit;
    let mut publishers = publishers;
    while sub.poll_msgs(limit, |m| tally.on(m.payload, size))? == 0 {
        for p in &mut publishers {
            p.check_alive().context("waiting for the publisher processes")?;
        }
        stall.idle_yield().context("waiting for the publisher processes")?;
    }
    let first = Instant::now();
    let before = tally.received();
    let preempted_before = preemptions();
    let (mut polls, mut empty_polls) = (0u64, 0u64);
    // Several subscribers share this core: yield when idle, or (under
    // `chrt`, SCHED_FIFO, no time slices) one spinning process starves the
    // others for good.
    let share_core = shape.subscribers > 1;
    while !tally.stopped() {
        polls += 1;
        if sub.poll_msgs(limit, |m| tally.on(m.payload, size))? == 0 {
            empty_polls += 1;
            if share_core { stall.idle_yield()? } else { stall.idle()? }
        } else {
            stall.progress();
        }
    }
    let last = Instant::now();
    let mut preempted = preemptions() - preempted_before;
    tally.check()?;
    let (mut published, mut back_pressured) = (0, 0);
    for (i, p) in publishers.into_iter().enumerate() {
        let out = p.finish()?;
        let sent = report_field(&out, "published")?;
        ensure!(sent == tally.expected[i], "publisher {i} sent {sent} messages, subscriber got {}", tally.expected[i]);
        published += sent;
        back_pressured += report_field(&out, "back_pressured")?;
        preempted += report_field(&out, "preempted")?;
    }
    for (i, c) in subscribers.into_iter().enumerate() {
        let out = c.finish()?;
        let got = report_field(&out, "received")?;
        ensure!(got == published, "subscriber process {i} got {got} of {published} messages");
        preempted += report_field(&out, "preempted")?;
    }
    Ok(Rate {
        transport: transport.to_owned(),
        mode: shape.mode(batch),
        size,
        pages,
        msgs: tally.received() - before,
        seconds: (last - first).as_secs_f64(),
        back_pressured,
        polls,
        empty_polls,
        preempted,
    })
}

/// A fan-out subscriber process: receives and checks every message until
/// each publisher said stop; prints `received N`.
pub(crate) fn subscribe(args: &ChildArgs) -> Result<()> {
    let ring = Ring::open(&args.rings[0], Access::ReadWrite).context("open ring")?;
    let mut sub = ring.subscribe(Start::Latest)?;
    subscribe_on(args, &mut sub)
}

/// [`subscribe`] through a `rilld`.
pub(crate) fn rill_subscribe(args: &ChildArgs) -> Result<()> {
    let socket = args.socket.as_deref().context("rill subscriber needs --socket")?;
    let [stream] = args.streams.as_slice() else {
        bail!("rill subscriber needs one --stream name");
    };
    let client = rill::Client::connect_to(socket).context("connect to rilld")?;
    let mut sub = client.open_subscriber(stream, rill::Start::Latest, None).context("open subscriber")?;
    subscribe_on(args, &mut sub)
}

fn subscribe_on(args: &ChildArgs, sub: &mut impl Poll) -> Result<()> {
    let mut tally = Tally::new(args.publishers);
    let mut stall = Stall::new(STALL_TIMEOUT, args.spin_hint);
    while !tally.stopped() {
        if sub.poll_msgs(args.poll_limit, |m| tally.on(m.payload, args.size))? == 0 {
            // Fan-out subscribers share the parent's core: always yield
            // (see `receive`); the wait before the first message is the
            // parent's too.
            stall.idle_yield()?;
        } else {
            stall.progress();
        }
    }
    tally.check()?;
    println!("received {}", tally.received());
    Ok(())
}

/// The publisher process: numbered messages for `seconds`, then the stop
/// message; prints `published N back_pressured M`.
pub(crate) fn publish(args: &ChildArgs) -> Result<()> {
    let ring = Ring::open(&args.rings[0], Access::ReadWrite).context("open ring")?;
    if args.publishers > 1 {
        let mut publ = ring.shared_publication()?;
        publ.set_timestamps(args.timestamps);
        publish_on(args, &mut publ, false)
    } else {
        let mut publ = ring.exclusive_publication()?;
        publ.set_timestamps(args.timestamps);
        publish_on(args, &mut publ, false)
    }
}

/// The publisher process through a `rilld`: opens the stream by name with
/// the client library, then publishes on its publication as [`publish`].
pub(crate) fn rill_publish(args: &ChildArgs, yield_when_back_pressured: bool) -> Result<()> {
    let socket = args.socket.as_deref().context("rill publisher needs --socket")?;
    let [stream] = args.streams.as_slice() else {
        bail!("rill publisher needs one --stream name");
    };
    let client = rill::Client::connect_to(socket).context("connect to rilld")?;
    if args.publishers > 1 {
        let mut publ = client.open_publisher(stream, None).context("open publisher")?;
        let publication = publ.publication();
        publication.set_timestamps(args.timestamps);
        publish_on(args, publication, yield_when_back_pressured)
    } else {
        let mut publ = client.open_exclusive_publisher(stream, None).context("open publisher")?;
        let publication = publ.publication();
        publication.set_timestamps(args.timestamps);
        publish_on(args, publication, yield_when_back_pressured)
    }
}

/// A publication that can also claim batches.
trait Batching: Offer {
    /// Claims `bytes`, pushes `n` messages numbered from `*seq` (advancing
    /// it) and commits; `Ok(false)` if back-pressured.
    fn push_batch(&mut self, bytes: usize, n: usize, payload: &mut [u8], seq: &mut u64, index: u16)
        -> Result<bool>;
}

macro_rules! batching {
    ($t:ty) => {
        impl Batching for $t {
            #[inline]
            fn push_batch(
                &mut self,
                bytes: usize,
                n: usize,
                payload: &mut [u8],
                seq: &mut u64,
                index: u16,
            ) -> Result<bool> {
                let mut b = match self.try_claim_batch(bytes) {
                    Ok(b) => b,
                    Err(ClaimError::BackPressured) => return Ok(false),
                    Err(e) => return Err(e.into()),
                };
                for _ in 0..n {
                    payload[..8].copy_from_slice(&tag(index, *seq).to_le_bytes());
                    ensure!(b.push(payload), "batch too small for its messages");
                    *seq += 1;
                }
                b.commit()?;
                Ok(true)
            }
        }
    };
}
batching!(ExclusivePublication);
batching!(SharedPublication);

impl Offer for SharedPublication {
    #[inline]
    fn offer_msg(&mut self, payload: &[u8]) -> Result<u64, ClaimError> {
        self.offer(payload)
    }
}

/// The publishing loop of [`publish`] and [`rill_publish`].
fn publish_on(args: &ChildArgs, publ: &mut impl Batching, yield_when_back_pressured: bool) -> Result<()> {
    let mut payload = vec![0u8; args.size];
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let span = message_span(args.size);
    let (mut seq, mut back_pressured) = (0u64, 0u64);
    while Instant::now() < deadline {
        if args.batch == 0 {
            for _ in 0..CLOCK_EVERY {
                payload[..8].copy_from_slice(&tag(args.publisher_index, seq).to_le_bytes());
                match publ.offer_msg(&payload) {
                    Ok(_) => seq += 1,
                    Err(ClaimError::BackPressured) => {
                        back_pressured += 1;
                        // Fan-in publishers share a core: let the others run
                        // (see `receive`); so does one told to.
                        if args.publishers > 1 || yield_when_back_pressured {
                            std::thread::yield_now();
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            for _ in 0..CLOCK_EVERY.div_ceil(args.batch) {
                if !publ.push_batch(args.batch * span, args.batch, &mut payload, &mut seq, args.publisher_index)? {
                    back_pressured += 1;
                }
            }
        }
    }
    payload[..8].copy_from_slice(&STOP.to_le_bytes());
    offer(
        publ,
        &payload,
        &mut Stall::new(STALL_TIMEOUT, args.spin_hint),
    )?;
    println!("published {seq} back_pressured {back_pressured}");
    Ok(())
}
