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
    /// Payload bytes per message (the first 8 carry a sequence number).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(8..=65536))]
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
    /// Ring data capacity in bytes (a power of two).
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
    if let Some(b) = args.batch {
        let bytes = b as u64 * message_span(args.size as usize) as u64;
        ensure!(
            b > 0 && bytes <= args.capacity / 4,
            "--batch {b} must fill 1..=capacity/4 bytes"
        );
    }
    for t in &args.transport {
        ensure!(
            matches!(t, Transport::Ring | Transport::Rill),
            "throughput --transport takes ring and rill (the floor-store line is always measured)"
        );
    }
    pin(args.cores[0])?;
    let daemon = if args.transport.contains(&Transport::Rill) {
        Some(Daemon::for_run(args.socket.as_deref(), args.dir.as_deref())?)
    } else {
        None
    };
    // Each round measures the floor and every mode once, so a change in the
    // machine during the run affects all of them alike.
    let round = ThroughputArgs {
        seconds: args.seconds / args.rounds as f64,
        ..args.clone()
    };
    let mut results: Vec<Rate> = Vec::new();
    for _ in 0..args.rounds {
        let mut got = vec![stream_floor::measure(stream_floor::Shape {
            size: round.size as usize,
            capacity: round.capacity,
            seconds: round.seconds,
            cores: [round.cores[0], round.cores[1]],
            spin_hint: !round.tight_spin,
        })?];
        for t in &round.transport {
            for batch in std::iter::once(0).chain(round.batch) {
                for timestamps in [false, true] {
                    got.push(match (t, &daemon) {
                        (Transport::Rill, Some(d)) => measure_rill(&round, d, batch, timestamps)?,
                        _ => measure(&round, batch, timestamps)?,
                    });
                }
            }
        }
        for g in got {
            match results
                .iter_mut()
                .find(|r| r.transport == g.transport && r.mode == g.mode)
            {
                Some(r) => r.merge(&g),
                None => results.push(g),
            }
        }
    }
    report::print_rates(&results, args.json);
    Ok(())
}

/// What the subscriber has seen.
#[derive(Debug, Default)]
struct Tally {
    expected: u64,
    stopped: bool,
    bad: Option<(u64, u64, usize)>,
}

impl Tally {
    #[inline]
    fn on(&mut self, payload: &[u8], size: usize) {
        let seq = sequence(payload);
        if seq == STOP {
            self.stopped = true;
            return;
        }
        if seq != self.expected || payload.len() != size {
            self.bad.get_or_insert((self.expected, seq, payload.len()));
        }
        self.expected = seq.wrapping_add(1);
    }
}

/// One measurement: a fresh ring, a fresh publisher process.
fn measure(args: &ThroughputArgs, batch: usize, timestamps: bool) -> Result<Rate> {
    let size = args.size as usize;
    let mut dir = RingDir::new(args.dir.as_deref())?;
    let (ring, path) = dir.create("stream", args.capacity, args.size.max(64))?;
    let mut sub = ring.subscribe(Start::Latest)?;
    let child = ChildProc::spawn(&ChildArgs {
        role: Role::Publisher,
        rings: vec![path],
        socket: None,
        streams: Vec::new(),
        core: args.cores[1],
        count: 0,
        size,
        timestamps,
        seconds: args.seconds,
        batch,
        poll_limit: 0,
        spin_hint: !args.tight_spin,
    })?;
    let name = if timestamps { "ring+ts" } else { "ring" };
    receive(args, name, batch, pages_name(ring.pages()), &mut sub, child)
}

/// One measurement through a `rilld`: a fresh stream opened by name with
/// the client library on both sides, a fresh publisher process.
fn measure_rill(
    args: &ThroughputArgs,
    daemon: &Daemon,
    batch: usize,
    timestamps: bool,
) -> Result<Rate> {
    let client = rill::Client::connect_to(daemon.socket()).context("connect to rilld")?;
    let stream = stream_name("stream");
    let mut sub = client
        .subscriber_with(
            &stream,
            rill::Start::Latest,
            stream_options(args.capacity, args.size),
        )
        .context("open subscriber")?;
    let child = ChildProc::spawn(&ChildArgs {
        role: Role::RillPublisher,
        rings: Vec::new(),
        socket: Some(daemon.socket().to_path_buf()),
        streams: vec![stream],
        core: args.cores[1],
        count: 0,
        size: args.size as usize,
        timestamps,
        seconds: args.seconds,
        batch,
        poll_limit: 0,
        spin_hint: !args.tight_spin,
    })?;
    let name = if timestamps { "rill+ts" } else { "rill" };
    let pages = pages_name(sub.ring().pages());
    receive(args, name, batch, pages, &mut sub, child)
}

/// The subscriber's side of one measurement, once the publisher (`child`)
/// has started.
fn receive(
    args: &ThroughputArgs,
    transport: &str,
    batch: usize,
    pages: &'static str,
    sub: &mut impl Poll,
    mut child: ChildProc,
) -> Result<Rate> {
    let size = args.size as usize;
    let mut stall = Stall::new(STALL_TIMEOUT, !args.tight_spin);
    let mut tally = Tally::default();
    let limit = args.poll_limit;
    while sub.poll_msgs(limit, |m| tally.on(m.payload, size))? == 0 {
        child
            .check_alive()
            .context("waiting for the publisher process")?;
        stall
            .idle_yield()
            .context("waiting for the publisher process")?;
    }
    let first = Instant::now();
    let before = tally.expected;
    let preempted_before = preemptions();
    let (mut polls, mut empty_polls) = (0u64, 0u64);
    while !tally.stopped {
        polls += 1;
        if sub.poll_msgs(limit, |m| tally.on(m.payload, size))? == 0 {
            empty_polls += 1;
            stall.idle()?;
        } else {
            stall.progress();
        }
    }
    let last = Instant::now();
    let preempted = preemptions() - preempted_before;
    let out = child.finish()?;
    if let Some((expected, got, len)) = tally.bad {
        bail!("expected message {expected} of {size} bytes, got {got} of {len} bytes");
    }
    let published = report_field(&out, "published")?;
    ensure!(
        published == tally.expected,
        "publisher sent {published} messages, subscriber got {}",
        tally.expected
    );
    Ok(Rate {
        transport: transport.to_owned(),
        mode: if batch == 0 {
            "offer".to_owned()
        } else {
            format!("batch{batch}")
        },
        size,
        pages,
        msgs: tally.expected - before,
        seconds: (last - first).as_secs_f64(),
        back_pressured: report_field(&out, "back_pressured")?,
        polls,
        empty_polls,
        preempted: preempted + report_field(&out, "preempted")?,
    })
}

/// The publisher process: numbered messages for `seconds`, then the stop
/// message; prints `published N back_pressured M`.
pub(crate) fn publish(args: &ChildArgs) -> Result<()> {
    let ring = Ring::open(&args.rings[0], Access::ReadWrite).context("open ring")?;
    let mut publ = ring.exclusive_publication()?;
    publ.set_timestamps(args.timestamps);
    publish_on(args, &mut publ)
}

/// The publisher process through a `rilld`: opens the stream by name with
/// the client library, then publishes on its publication as [`publish`].
pub(crate) fn rill_publish(args: &ChildArgs) -> Result<()> {
    let socket = args.socket.as_deref().context("rill publisher needs --socket")?;
    let [stream] = args.streams.as_slice() else {
        bail!("rill publisher needs one --stream name");
    };
    let client = rill::Client::connect_to(socket).context("connect to rilld")?;
    let mut publ = client
        .open_exclusive_publisher(stream, None)
        .context("open publisher")?;
    let publication = publ.publication();
    publication.set_timestamps(args.timestamps);
    publish_on(args, publication)
}

/// A publication that can also claim batches.
trait Batching: Offer {
    /// Claims `bytes`, pushes `n` messages numbered from `*seq` (advancing
    /// it) and commits; `Ok(false)` if back-pressured.
    fn push_batch(&mut self, bytes: usize, n: usize, payload: &mut [u8], seq: &mut u64)
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
            ) -> Result<bool> {
                let mut b = match self.try_claim_batch(bytes) {
                    Ok(b) => b,
                    Err(ClaimError::BackPressured) => return Ok(false),
                    Err(e) => return Err(e.into()),
                };
                for _ in 0..n {
                    payload[..8].copy_from_slice(&seq.to_le_bytes());
                    ensure!(b.push(payload), "batch too small for its messages");
                    *seq += 1;
                }
                b.commit();
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
fn publish_on(args: &ChildArgs, publ: &mut impl Batching) -> Result<()> {
    let mut payload = vec![0u8; args.size];
    let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
    let span = message_span(args.size);
    let (mut seq, mut back_pressured) = (0u64, 0u64);
    while Instant::now() < deadline {
        if args.batch == 0 {
            for _ in 0..CLOCK_EVERY {
                payload[..8].copy_from_slice(&seq.to_le_bytes());
                match publ.offer_msg(&payload) {
                    Ok(_) => seq += 1,
                    Err(ClaimError::BackPressured) => back_pressured += 1,
                    Err(e) => return Err(e.into()),
                }
            }
        } else {
            for _ in 0..CLOCK_EVERY.div_ceil(args.batch) {
                if !publ.push_batch(args.batch * span, args.batch, &mut payload, &mut seq)? {
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
