//! `rill-chaos-client`: one client process of a `rill-chaos` run, talking
//! to rilld through the `rill` client library only.
//!
//! ```text
//! rill-chaos-client publish   --socket S --stream NAME --durability D --seed N --index I
//!                             --ack-log PATH --events PATH --stop-file PATH [--rate MSGS_PER_S] [--batch-max N]
//!                             [--claim-work-us U]
//! rill-chaos-client subscribe --socket S --stream NAME --durability D --seed N
//!                             --events PATH --stop-file PATH
//! ```
//!
//! * `publish` sends messages `0, 1, 2, ...` of publisher index `I`
//!   (`rill_tests::payload`) in batches of 1 to `--batch-max` (drawn from
//!   the seed), waits after each batch until its last message is durable,
//!   and then appends one line per message of the batch to its ack log
//!   (`rill_chaos::logs`): only then is a message *acknowledged*. A wait
//!   that times out (rilld killed, stopped, or restarted with a new ring
//!   while this process still maps the old one), or an offer
//!   back-pressured for too long, drops the publisher and opens a new one;
//!   the messages of that batch stay unacknowledged, and the sequence goes
//!   on (a number is never reused). About `--rate` messages a second.
//!   Until the stop file exists; then it exits 0. With `--claim-work-us
//!   U` it writes each message in place instead (`try_claim`, write,
//!   `commit`: the zero-copy API), and every 8th message (drawn from the
//!   seed) it spends `U` microseconds between claim and commit, like an
//!   application that builds its message in the ring: a SIGSTOP then
//!   often lands inside a claim.
//! * `subscribe` reads the stream from `Start::Earliest` and checks every
//!   message as it goes: payload intact, positions increasing, per
//!   publisher index sequence numbers increasing (no duplicate, nothing out
//!   of order), no incarnation of a slot after a later one. Each problem is
//!   a `VIOLATION` line in its event log, each `PollError::Lost` a `LOST`
//!   line. When its slot is revoked (it was stopped past rilld's client
//!   timeout), rilld no longer knows it (rings wiped), or it stalls behind
//!   the tail, it says why (`RESUBSCRIBE`) and starts again from
//!   `Earliest` with a fresh check. Once the stop file exists it reads up
//!   to the tail rilld reports and exits 0.
//!
//! Both run until the parent stops (or kills) them, and wait for rilld
//! while it is down. Exit status 2 on a usage or setup error (the ack or
//! event log cannot be written).

#![forbid(unsafe_code)]

use anyhow::{anyhow, Context, Result};
use rill::{ClaimError, Client, Durability, PollError, Publisher, Start, StreamOptions, Subscriber};
use rill_chaos::logs::{AckWriter, EventWriter};
use rill_chaos::now_ns;
use rill_chaos::spec::{split_index, CAPACITY, MAX_LEN};
use rill_tests::opts::Opts;
use rill_tests::payload::{self, Prng};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a publisher waits for a batch to become durable before it
/// gives the publisher up and opens a new one.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an offer may stay back-pressured before the publisher is
/// given up (a subscriber stopped past rilld's client timeout holds it
/// back for that long at most; a stale ring forever).
const BACK_PRESSURE_LIMIT: Duration = Duration::from_secs(20);
/// A subscriber behind the tail with no progress for this long starts
/// again.
const STALL_LIMIT: Duration = Duration::from_secs(15);
/// Control requests (open, stream info) give up after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RILL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("publish") => Opts::parse(&args[1..], &[]).and_then(|o| publish(&o)),
        Some("subscribe") => Opts::parse(&args[1..], &[]).and_then(|o| subscribe(&o)),
        _ => Err(anyhow!("usage: rill-chaos-client publish|subscribe --socket PATH ... (see the source's docs)")),
    };
    if let Err(e) = result {
        eprintln!("rill-chaos-client: {e:#}");
        std::process::exit(2);
    }
}

/// What every role needs.
struct Common {
    socket: PathBuf,
    stream: String,
    options: StreamOptions,
    seed: u64,
    stop: PathBuf,
    ev: EventWriter,
}

impl Common {
    fn new(o: &Opts) -> Result<Common> {
        let durability: Durability = o.req("durability")?.parse().map_err(|e: String| anyhow!(e))?;
        Ok(Common {
            socket: PathBuf::from(o.req("socket")?),
            stream: o.req("stream")?.to_owned(),
            options: StreamOptions::new().with_capacity(CAPACITY).with_max_message_len(MAX_LEN as u32).with_persist(Some(durability)),
            seed: o.num("seed", None)?,
            stop: PathBuf::from(o.req("stop-file")?),
            ev: EventWriter::open(Path::new(o.req("events")?))?,
        })
    }

    fn stopped(&self) -> bool {
        self.stop.exists()
    }

    /// Connects, retrying while rilld is down; `None` once stopped.
    fn connect(&mut self, role: &str) -> Option<Client> {
        let mut logged = false;
        loop {
            if self.stopped() {
                return None;
            }
            let c = Client::builder()
                .socket(&self.socket)
                .name(format!("rill-chaos-{role}[{}]", std::process::id()))
                .request_timeout(REQUEST_TIMEOUT)
                .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(200))
                .connect();
            match c {
                Ok(c) => return Some(c),
                Err(e) if !logged => {
                    self.ev.event("WAIT", &format!("connect: {e}"));
                    logged = true;
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `open` until it succeeds (rilld may be down or restarting);
    /// `None` once stopped.
    fn retry<T>(&mut self, what: &str, mut open: impl FnMut() -> Result<T, rill::ClientError>) -> Option<T> {
        let mut logged = false;
        loop {
            if self.stopped() {
                return None;
            }
            match open() {
                Ok(x) => return Some(x),
                Err(e) if !logged => {
                    self.ev.event("WAIT", &format!("{what}: {e}"));
                    logged = true;
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn publish(o: &Opts) -> Result<()> {
    let mut c = Common::new(o)?;
    let index = u32::try_from(o.num("index", None)?).context("--index")?;
    let rate = o.num("rate", Some(300))?.max(1);
    let batch_max = o.num("batch-max", Some(32))?.clamp(1, 1024) as usize;
    let claim_work = o.get("claim-work-us").map(|_| o.num("claim-work-us", None)).transpose()?.map(Duration::from_micros);
    let mut acks = AckWriter::create(Path::new(o.req("ack-log")?), &c.stream, index)?;
    let Some(client) = c.connect("publisher") else { return Ok(()) };
    let mut s = Sender {
        seed: c.seed,
        index,
        claim_work,
        rng: Prng::new(c.seed ^ u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        buf: vec![0u8; MAX_LEN],
        seq: 0,
        pending: Vec::new(),
    };
    let (mut acked, mut reopens) = (0u64, 0u64);
    let mut publ: Option<Publisher> = None;
    while !c.stopped() {
        let Some(p) = publ.as_mut() else {
            let (stream, options) = (c.stream.clone(), c.options.clone());
            publ = c.retry("open publisher", || client.publisher_with(&stream, options.clone()));
            if let Some(p) = &publ {
                c.ev.event("OPEN", &format!("publisher index={index} id={} next_seq={} tail={}", p.id(), s.seq, p.position()));
            }
            continue;
        };
        let batch_start = Instant::now();
        let n = s.rng.range(1, batch_max);
        let failed = s.batch(p, n, &c.stop);
        // The batch's last message durable: all of it is acknowledged.
        let durable = match s.pending.last() {
            Some(&(seq, last)) => p.wait_durable(last, DURABLE_TIMEOUT).map_err(|e| format!("wait_durable for seq {seq} at {last}: {e}")),
            None => Err(failed.clone().unwrap_or_else(|| "nothing offered".into())),
        };
        match (durable, failed) {
            (Ok(_), None) => {
                acks.append(&s.pending, now_ns())?;
                acked += s.pending.len() as u64;
                let budget = Duration::from_nanos(n as u64 * 1_000_000_000 / rate);
                std::thread::sleep(budget.saturating_sub(batch_start.elapsed()));
            }
            (Ok(_), Some(why)) => {
                acks.append(&s.pending, now_ns())?;
                acked += s.pending.len() as u64;
                c.ev.event("REOPEN", &why);
                publ = None;
                reopens += 1;
            }
            (Err(why), _) => {
                c.ev.event("REOPEN", &why);
                publ = None;
                reopens += 1;
            }
        }
    }
    c.ev.event("SUMMARY", &format!("publisher index={index} sent={} acked={acked} reopens={reopens}", s.seq));
    Ok(())
}

/// One publisher's messages: sequence numbers go on across publishers
/// opened one after another in this process, never reused.
struct Sender {
    seed: u64,
    index: u32,
    /// Write in place, spending this inside every 8th claim.
    claim_work: Option<Duration>,
    rng: Prng,
    buf: Vec<u8>,
    /// The next sequence number.
    seq: u64,
    /// The last batch: (seq, position) of each message published.
    pending: Vec<(u64, u64)>,
}

impl Sender {
    /// Publishes the next `n` messages into `pending`; stops at the first
    /// that cannot be published, and says why.
    fn batch(&mut self, p: &mut Publisher, n: usize, stop: &Path) -> Option<String> {
        self.pending.clear();
        for _ in 0..n {
            let (seed, index, seq) = (self.seed, self.index, self.seq);
            self.seq += 1;
            let written = match self.claim_work {
                None => {
                    let len = payload::message_len(seed, index, seq, MAX_LEN);
                    payload::write_message(&mut self.buf[..len], seed, index, seq, MAX_LEN);
                    offer(p, &self.buf[..len], stop)
                }
                Some(work) => {
                    let work = (self.rng.range(0, 7) == 0).then_some(work);
                    claim_in_place(p, seed, index, seq, work, stop)
                }
            };
            match written {
                Ok(position) => self.pending.push((seq, position)),
                Err(why) => return Some(format!("publishing seq {seq}: {why}")),
            }
        }
        None
    }
}

/// Offers `msg`, retrying while back-pressured, up to
/// [`BACK_PRESSURE_LIMIT`] or the stop file.
fn offer(p: &mut Publisher, msg: &[u8], stop: &Path) -> Result<u64, String> {
    retry_back_pressure(stop, || p.offer(msg))
}

/// Claims room for message `seq`, writes it in place, spends `work` (if
/// any) before committing it; retries while back-pressured, like
/// [`offer`].
fn claim_in_place(p: &mut Publisher, seed: u64, index: u32, seq: u64, work: Option<Duration>, stop: &Path) -> Result<u64, String> {
    let len = payload::message_len(seed, index, seq, MAX_LEN);
    retry_back_pressure(stop, || {
        let mut claim = p.try_claim(len)?;
        payload::write_message(claim.buf(), seed, index, seq, MAX_LEN);
        let position = claim.position();
        if let Some(work) = work {
            std::thread::sleep(work);
        }
        claim.commit()?; // Reclaimed: retried below, nothing was published
        Ok(position)
    })
}

/// Runs `attempt` until it is not back-pressured, for at most
/// [`BACK_PRESSURE_LIMIT`] or until the stop file exists.
fn retry_back_pressure(stop: &Path, mut attempt: impl FnMut() -> Result<u64, ClaimError>) -> Result<u64, String> {
    let since = Instant::now();
    let mut tries = 0u32;
    loop {
        match attempt() {
            Ok(position) => return Ok(position),
            // Stalled past the unblock timeout (SIGSTOP) between claim and
            // commit: the claim became padding, publish the message again.
            Err(ClaimError::Reclaimed { .. }) => continue,
            Err(ClaimError::BackPressured) => {
                tries += 1;
                if since.elapsed() > BACK_PRESSURE_LIMIT {
                    return Err(format!("back-pressured for {BACK_PRESSURE_LIMIT:?}"));
                }
                if tries.is_multiple_of(64) && stop.exists() {
                    return Err("stopped while back-pressured".into());
                }
                if tries < 64 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn subscribe(o: &Opts) -> Result<()> {
    let mut c = Common::new(o)?;
    let Some(client) = c.connect("subscriber") else { return Ok(()) };
    let (mut subscriptions, mut delivered, mut lost) = (0u64, 0u64, 0u64);
    loop {
        let (stream, options) = (c.stream.clone(), c.options.clone());
        let Some(sub) = c.retry("open subscriber", || client.subscriber_with(&stream, Start::Earliest, options.clone())) else { break };
        subscriptions += 1;
        c.ev.event("OPEN", &format!("subscriber from Earliest: position={} replaying={}", sub.position(), sub.is_replaying()));
        let mut r = Reader { sub, check: LiveCheck::new(c.seed), client: &client, lost: 0 };
        let end = r.run(&mut c);
        delivered += r.check.delivered;
        lost += r.lost;
        match end {
            End::Done => break,
            End::Again(why) => c.ev.event("RESUBSCRIBE", &format!("after {} messages at position {}: {why}", r.check.delivered, r.sub.position())),
        }
    }
    c.ev.event("SUMMARY", &format!("subscriber subscriptions={subscriptions} delivered={delivered} lost_notices={lost}"));
    Ok(())
}

/// Why a subscription ended.
enum End {
    /// The stop file exists and the tail was reached.
    Done,
    /// Start again from Earliest, for this reason.
    Again(String),
}

/// One subscription and its check.
struct Reader<'a> {
    sub: Subscriber,
    check: LiveCheck,
    client: &'a Client,
    lost: u64,
}

impl Reader<'_> {
    fn run(&mut self, c: &mut Common) -> End {
        let mut last_progress = Instant::now();
        let mut next_look = Instant::now() + Duration::from_secs(1);
        loop {
            let before = self.sub.position();
            let check = &mut self.check;
            let polled = self.sub.poll_blocking(256, Duration::from_millis(100), |m| check.on_message(&m));
            // A message read while the slot was being taken back may have
            // been overwritten as it was read: what the check made of it
            // does not count (every message before it was intact).
            let discard = match &polled {
                Err(PollError::RevokedDuringRead { position, .. }) => Some(*position),
                _ => None,
            };
            for (position, v) in self.check.found.drain(..) {
                if Some(position) != discard {
                    c.ev.event("VIOLATION", &format!("stream={} {v}", c.stream));
                }
            }
            match polled {
                Ok(_) => {}
                Err(PollError::Lost { from, to, reason }) => {
                    self.lost += 1;
                    c.ev.event("LOST", &format!("{from} {to} {reason}"));
                }
                Err(e) => return End::Again(format!("poll: {e}")),
            }
            if self.sub.position() != before {
                last_progress = Instant::now();
            }
            if Instant::now() < next_look {
                continue;
            }
            next_look = Instant::now() + Duration::from_secs(1);
            if let Some(end) = self.look(c, last_progress) {
                return end;
            }
        }
    }

    /// Once a second: is the subscription stale or stalled, or is it done?
    fn look(&self, c: &Common, last_progress: Instant) -> Option<End> {
        if self.client.is_connected() && self.sub.daemon_handle().is_none() {
            return Some(End::Again("rilld does not know this subscriber (its ring was replaced?)".into()));
        }
        let Ok(info) = self.client.stream_info(&c.stream) else { return None };
        let position = self.sub.position();
        if info.tail < position {
            return Some(End::Again(format!("the stream's tail {} is before this subscriber's position (a new ring)", info.tail)));
        }
        if info.tail > position && last_progress.elapsed() > STALL_LIMIT {
            return Some(End::Again(format!("no progress for {STALL_LIMIT:?}, tail {}", info.tail)));
        }
        (c.stopped() && position >= info.tail).then_some(End::Done)
    }
}

/// What a subscriber checks as it reads (it knows nothing of
/// acknowledgements: the parent's final check does).
struct LiveCheck {
    seed: u64,
    /// Per publisher index: the last sequence number read.
    last_seq: HashMap<u32, u64>,
    /// Per publisher slot: the newest incarnation read.
    newest: HashMap<u32, u32>,
    last_position: Option<u64>,
    delivered: u64,
    /// Problems of the current poll: (position, description).
    found: Vec<(u64, String)>,
}

impl LiveCheck {
    fn new(seed: u64) -> LiveCheck {
        LiveCheck { seed, last_seq: HashMap::new(), newest: HashMap::new(), last_position: None, delivered: 0, found: Vec::new() }
    }

    fn on_message(&mut self, m: &rill::Message<'_>) {
        self.delivered += 1;
        let pos = m.position;
        if let Some(last) = self.last_position.filter(|&l| pos <= l) {
            self.found.push((pos, format!("position={pos}: positions do not increase; expected a position after {last}; got {pos}")));
        }
        self.last_position = Some(pos);
        let (publisher, seq) = match payload::verify(m.payload, self.seed, MAX_LEN) {
            Ok(x) => x,
            Err(d) => {
                self.found.push((pos, format!("position={pos}: a damaged payload was delivered; expected an intact payload; got {d}")));
                return;
            }
        };
        if let Some(&last) = self.last_seq.get(&publisher) {
            if seq <= last {
                let what = if seq == last { "duplicate" } else { "out of order" };
                self.found.push((pos, format!("publisher={publisher} seq={seq} position={pos}: {what}; expected a seq after {last}; got {seq}")));
            }
        }
        let last = self.last_seq.entry(publisher).or_insert(seq);
        *last = (*last).max(seq);
        let (slot, inc) = split_index(publisher);
        let top = self.newest.entry(slot).or_insert(inc);
        if inc < *top {
            self.found.push((pos, format!("publisher={publisher} seq={seq} position={pos}: incarnation {inc} of slot {slot} after incarnation {top}; expected each incarnation after its predecessor; got it after")));
        }
        *top = (*top).max(inc);
    }
}
