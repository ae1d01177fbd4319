//! `rill-worker`: one client process of the rilld tests (tests/rilld.rs).
//! Unlike `ring-worker`, which maps ring files itself, it goes through the
//! client library only: `rill::Client` connects to `rilld`, which hands it
//! the ring over the socket. The parent test talks to it through stdout
//! lines and judges its final `SUMMARY key=value ...` line.
//!
//! ```text
//! rill-worker publish    --socket S --stream NAME --publisher K --seed S (--count N | --until-file PATH)
//!                        [--api offer|claim] [--pause-every N --pause-us U] [--exclusive]
//!                        [--persist none|interval:MS|always] [--wait-durable N [--durable-timeout-secs S]]
//!                        [--print-sent]
//! rill-worker subscribe  --socket S --stream NAME --seed S
//!                        (--expect N0,N1,.. | --publishers P --done-file PATH | --follow P --done-file PATH)
//!                        [--start latest|oldest|earliest|position:N|time:NS] [--wait futex|yield]
//!                        [--stop-after N] [--ro-checks]
//! rill-worker claim-hang --socket S --stream NAME --publisher K --count N --seed S
//! rill-worker denied     --socket S --deny NAME[,NAME..] --stream NAME --seed S --expect N [--ro-checks]
//! rill-worker read-back  --socket S --stream NAME --seed S --out PATH
//! ```
//! Every role also takes `[--capacity BYTES] [--max-len BYTES]
//! [--policy back-pressure|overwrite]` (the shape of the stream if it
//! creates it: default 64 KiB, 2048, back-pressure) and `[--stall-secs S]`
//! (give up after that long without progress). `subscribe` also takes
//! `[--wait-file PATH]` (prints READY, then reads nothing until the file
//! exists) and `[--sleep-us U [--sleep-every N]]` (a slow application:
//! sleeps U microseconds in its handler after every N-th message, default
//! every one).
//!
//! * `publish` sends messages `0..N` of publisher `K` (`rill_tests::payload`),
//!   or as many as it can until the file `--until-file` exists, retrying
//!   while back-pressured; `--exclusive` as the stream's exclusive
//!   publisher. `--persist` creates the stream persisted; `--wait-durable
//!   N` waits after every N messages until they are durable and prints
//!   `DURABLE n=<messages durable so far> position=P` (and fails if that
//!   takes over `--durable-timeout-secs`, default 60). `--print-sent`
//!   prints `SENT n=<messages offered so far> position=P` before each
//!   `--pause-every` pause, so a parent that kills it knows (to within a
//!   pause) how many it had sent.
//! * `subscribe` prints `READY ...` once its subscriber is open and checks
//!   every message (`rill_tests::check`): `--expect` exactly these counts
//!   and stop; `--publishers P` exactly once and in order from sequence 0,
//!   any count, until the done file exists and the tail is reached;
//!   `--follow P` the same for a subscriber that joins mid-stream.
//!   Its summary counts `recovered_overruns` and `recovered_bytes`: how
//!   often a persisted overwrite stream's publishers overran it and it read
//!   on from the log, and how much.
//!   `--stop-after N` prints `STOPPED position=P` after N messages and then
//!   sleeps without reading until killed. `--ro-checks` first probes, in
//!   this process, whether the ring handed over can be written (see
//!   [`ro_checks`]) and prints `ROCHECK key=value ...`.
//! * `claim-hang` publishes `N` messages, claims message `N`, writes half
//!   of it, prints `CLAIMED position=P len=L` and sleeps until killed.
//! * `denied` tries to publish to and subscribe to each `--deny` stream and
//!   prints one `DENIED action=.. stream=.. code=.. message=..` line per
//!   attempt, then subscribes to `--stream` like `subscribe`.
//! * `read-back` reads an existing stream, which nobody publishes to, from
//!   `Start::Earliest` to the tail that rilld reports at the start, and
//!   writes one line `position publisher seq` per message to `--out`
//!   (the parent compares that with the segment files). Every payload is
//!   verified; its summary counts `delivered` and `damaged` and gives
//!   `start` and `end` positions and the `tail` it read to. Each range the
//!   log lost (`PollError::Lost`) is printed as `LOST from=.. to=..` and
//!   counted in `lost_ranges`; reading goes on after it.
//!
//! Publishers and subscribers print `PROGRESS n=.. connected=..
//! reconnects=.. handle=..` about every 100 ms: messages so far, whether
//! the client's control connection is up, how often it reconnected, and
//! the daemon's current id for the handle (0: not registered).
//!
//! Exit status: 0 if everything checked out, 1 if a check failed (the
//! summary says which), 2 on a usage or setup error.

#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use rill::{ClaimError, Client, Start, StreamOptions, Subscriber};
use rill_shm::ring::{ClaimMode, Exclusive, Shared};
use rill_shm::idle::{IdleStrategy, SpinYield};
use rill_tests::check::{Checker, Mode};
use rill_tests::opts::Opts;
use rill_tests::payload;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options that take no value.
const FLAGS: [&str; 3] = ["ro-checks", "exclusive", "print-sent"];

fn main() {
    rill_tests::log_to_stderr();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("publish") => Opts::parse(&args[1..], &FLAGS).and_then(|o| publish(&o)),
        Some("subscribe") => Opts::parse(&args[1..], &FLAGS).and_then(|o| subscribe(&o)),
        Some("claim-hang") => Opts::parse(&args[1..], &FLAGS).and_then(|o| claim_hang(&o)),
        Some("denied") => Opts::parse(&args[1..], &FLAGS).and_then(|o| denied(&o)),
        Some("read-back") => Opts::parse(&args[1..], &FLAGS).and_then(|o| read_back(&o)),
        _ => Err(anyhow!("usage: rill-worker publish|subscribe|claim-hang|denied|read-back --socket PATH ...")),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("rill-worker: {e:#}");
            std::process::exit(2);
        }
    }
}

fn connect(o: &Opts, role: &str) -> Result<Client> {
    let socket = o.req("socket")?;
    Client::builder()
        .socket(socket)
        .name(format!("rill-worker-{role}[{}]", std::process::id()))
        .request_timeout(Duration::from_secs(5))
        .connect()
        .with_context(|| format!("connect to rilld at {socket}"))
}

/// The shape of the stream, should this worker be the one to create it.
fn stream_options(o: &Opts) -> Result<StreamOptions> {
    let max_len = u32::try_from(o.num("max-len", Some(2048))?).context("--max-len")?;
    let persist = o.get("persist").map(str::parse::<rill::Durability>).transpose().map_err(|e| anyhow!(e))?;
    let policy = match o.get("policy").unwrap_or("back-pressure") {
        "back-pressure" => rill::Policy::BackPressure,
        "overwrite" => rill::Policy::Overwrite,
        other => bail!("unknown --policy {other:?} (back-pressure, overwrite)"),
    };
    Ok(StreamOptions::new()
        .with_capacity(o.num("capacity", Some(64 << 10))?)
        .with_max_message_len(max_len)
        .with_policy(policy)
        .with_persist(persist))
}

/// A stuck publisher or subscriber gives up after this long without
/// progress, so that the parent gets a summary instead of a silent hang.
fn stall_limit(o: &Opts) -> Result<Duration> {
    Ok(Duration::from_secs(o.num("stall-secs", Some(90))?))
}

/// The `PROGRESS` lines.
struct Progress {
    next: Instant,
}

impl Progress {
    const EVERY: Duration = Duration::from_millis(100);

    fn new() -> Self {
        Progress { next: Instant::now() }
    }

    fn tick(&mut self, client: &Client, handle: Option<u64>, n: u64) {
        if Instant::now() >= self.next {
            self.next = Instant::now() + Self::EVERY;
            println!("PROGRESS n={n} {}", connection_fields(client, handle));
        }
    }
}

fn connection_fields(client: &Client, handle: Option<u64>) -> String {
    format!("connected={} reconnects={} handle={}", client.is_connected(), client.reconnects(), handle.unwrap_or(0))
}

/// Retrying while back-pressured: idles, counts, and gives up on a stall.
struct Waiter {
    publisher: u32,
    idle: SpinYield,
    stall: Duration,
    back_pressured: u64,
    since: Option<Instant>,
}

impl Waiter {
    fn new(publisher: u32, stall: Duration) -> Self {
        Waiter { publisher, idle: SpinYield::new(50), stall, back_pressured: 0, since: None }
    }

    fn retry(&mut self, e: ClaimError, seq: u64) -> Result<()> {
        if e != ClaimError::BackPressured {
            bail!("publisher {}: claim for seq {seq} failed: {e}", self.publisher);
        }
        self.back_pressured += 1;
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() > self.stall {
            bail!("publisher {}: back-pressured for {:?} at seq {seq}", self.publisher, self.stall);
        }
        self.idle.idle(0);
        Ok(())
    }

    fn progressed(&mut self) {
        self.since = None;
        self.idle.reset();
    }
}

/// One publisher's messages, sent through a `rill::Publisher`.
struct Sender<M: ClaimMode> {
    publ: rill::Publisher<M>,
    seed: u64,
    publisher: u32,
    max_len: usize,
    buf: Vec<u8>,
    wait: Waiter,
}

impl<M: ClaimMode> Sender<M> {
    fn open(client: &Client, o: &Opts) -> Result<Self> {
        let stream = o.req("stream")?;
        let publ = client
            .open_publisher_as::<M>(stream, Some(stream_options(o)?))
            .with_context(|| format!("open publisher on {stream:?}"))?;
        let publisher = u32::try_from(o.num("publisher", None)?).context("--publisher")?;
        let max_len = publ.max_message_len();
        Ok(Sender {
            publ,
            seed: o.num("seed", None)?,
            publisher,
            max_len,
            buf: vec![0u8; max_len],
            wait: Waiter::new(publisher, stall_limit(o)?),
        })
    }

    fn len(&self, seq: u64) -> usize {
        payload::message_len(self.seed, self.publisher, seq, self.max_len)
    }

    /// Copies message `seq` in with `offer`.
    fn offer(&mut self, seq: u64) -> Result<u64> {
        let len = self.len(seq);
        payload::write_message(&mut self.buf[..len], self.seed, self.publisher, seq, self.max_len);
        loop {
            match self.publ.offer(&self.buf[..len]) {
                Ok(p) => {
                    self.wait.progressed();
                    return Ok(p);
                }
                Err(e) => self.wait.retry(e, seq)?,
            }
        }
    }

    /// Writes message `seq` straight into the ring (claim, write, commit).
    fn claim(&mut self, seq: u64) -> Result<u64> {
        let len = self.len(seq);
        let (seed, publisher, max_len) = (self.seed, self.publisher, self.max_len);
        loop {
            match self.publ.try_claim(len) {
                Ok(mut c) => {
                    payload::write_message(c.buf(), seed, publisher, seq, max_len);
                    let p = c.position();
                    match c.commit() {
                        Err(ClaimError::Reclaimed { .. }) => continue, // nothing published: again
                        other => other?,
                    }
                    self.wait.progressed();
                    return Ok(p);
                }
                Err(e) => self.wait.retry(e, seq)?,
            }
        }
    }
}

fn publish(o: &Opts) -> Result<bool> {
    if o.get("exclusive").is_some() {
        publish_as::<Exclusive>(o)
    } else {
        publish_as::<Shared>(o)
    }
}

fn publish_as<M: ClaimMode>(o: &Opts) -> Result<bool> {
    let client = connect(o, "publish")?;
    let mut s = Sender::<M>::open(&client, o)?;
    let count = o.num("count", Some(u64::MAX))?;
    let until = o.get("until-file").map(PathBuf::from);
    if count == u64::MAX && until.is_none() {
        bail!("give --count or --until-file");
    }
    let claim = match o.get("api").unwrap_or("offer") {
        "offer" => false,
        "claim" => true,
        other => bail!("unknown --api {other:?}"),
    };
    let pause_every = o.num("pause-every", Some(0))?;
    let pause = Duration::from_micros(o.num("pause-us", Some(0))?);
    let print_sent = o.get("print-sent").is_some();
    let wait_durable = o.num("wait-durable", Some(0))?;
    let durable_timeout = Duration::from_secs(o.num("durable-timeout-secs", Some(60))?);
    let mut durable_n = 0u64;
    let exclusive = s.publ.is_exclusive();
    println!("OPEN role=publish publisher={} id={} exclusive={exclusive} {}", s.publisher, s.publ.id(), connection_fields(&client, s.publ.daemon_handle()));
    let mut progress = Progress::new();
    let (mut seq, mut first, mut last) = (0u64, None, 0u64);
    while seq < count {
        if seq % 64 == 0 {
            progress.tick(&client, s.publ.daemon_handle(), seq);
            if until.as_ref().is_some_and(|f| f.exists()) {
                break;
            }
        }
        let p = if claim { s.claim(seq)? } else { s.offer(seq)? };
        first.get_or_insert(p);
        last = p;
        seq += 1;
        if wait_durable > 0 && seq % wait_durable == 0 {
            s.publ.wait_durable(p, durable_timeout).map_err(|e| anyhow!("message {}: {e}", seq - 1))?;
            durable_n = seq;
            println!("DURABLE n={seq} position={p}");
        }
        if pause_every > 0 && seq % pause_every == 0 {
            if print_sent {
                println!("SENT n={seq} position={last}");
            }
            std::thread::sleep(pause);
        }
    }
    if wait_durable > 0 && durable_n < seq {
        s.publ.wait_durable(last, durable_timeout).map_err(|e| anyhow!("message {}: {e}", seq - 1))?;
        durable_n = seq;
        println!("DURABLE n={seq} position={last}");
    }
    println!(
        "SUMMARY role=publish publisher={} id={} sent={seq} durable={durable_n} back_pressured={} first_position={} last_position={last} {}",
        s.publisher,
        s.publ.id(),
        s.wait.back_pressured,
        first.unwrap_or(0),
        connection_fields(&client, s.publ.daemon_handle()),
    );
    Ok(true)
}

fn claim_hang(o: &Opts) -> Result<bool> {
    let client = connect(o, "claim-hang")?;
    let mut s = Sender::<Shared>::open(&client, o)?;
    let count = o.num("count", None)?;
    for seq in 0..count {
        s.offer(seq)?;
    }
    let len = s.len(count);
    let mut whole = vec![0u8; len];
    payload::write_message(&mut whole, s.seed, s.publisher, count, s.max_len);
    let mut wait = Waiter::new(s.publisher, stall_limit(o)?);
    let mut claim = loop {
        match s.publ.try_claim(len) {
            Ok(c) => break c,
            Err(e) => wait.retry(e, count)?,
        }
    };
    let half = len / 2;
    claim.buf()[..half].copy_from_slice(&whole[..half]);
    println!("CLAIMED position={} len={len} sent={count}", claim.position());
    // Hold the claim until SIGKILL: Drop (which would pad it) never runs.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn denied(o: &Opts) -> Result<bool> {
    let client = connect(o, "denied")?;
    for stream in o.req("deny")?.split(',') {
        let publ = client.publisher_with(stream, stream_options(o)?).map(|_| ());
        report_denial("publish", stream, publ);
        let sub = client.subscriber_with(stream, Start::Latest, stream_options(o)?).map(|_| ());
        report_denial("subscribe", stream, sub);
    }
    let stream = o.req("stream")?;
    let sub = client.open_subscriber(stream, Start::Latest, None).with_context(|| format!("open subscriber on {stream:?}"))?;
    run_subscriber(o, &client, sub)
}

/// `read-back`: see the module docs.
fn read_back(o: &Opts) -> Result<bool> {
    use std::io::Write;
    let client = connect(o, "read-back")?;
    let stream = o.req("stream")?;
    let seed = o.num("seed", None)?;
    let tail = client.stream_info(stream).with_context(|| format!("stream_info {stream:?}"))?.tail;
    let mut sub = client.open_subscriber(stream, Start::Earliest, None).with_context(|| format!("open subscriber on {stream:?} from Earliest"))?;
    let max_len = sub.info().max_message_len as usize;
    let mut out = std::io::BufWriter::new(std::fs::File::create(o.req("out")?).context("--out")?);
    let start = sub.position();
    println!("READY pid={} start={start} tail={tail} replaying={}", std::process::id(), sub.is_replaying());
    let (mut delivered, mut damaged, mut first_error) = (0u64, 0u64, None);
    let (stall, mut last_progress) = (stall_limit(o)?, Instant::now());
    let mut io_error = None;
    let mut lost_ranges = 0u64;
    while sub.position() < tail {
        let before = sub.position();
        let polled = sub.poll_blocking(256, Duration::from_millis(100), |m| {
            delivered += 1;
            let line = match payload::verify(m.payload, seed, max_len) {
                Ok((publisher, seq)) => writeln!(out, "{} {publisher} {seq}", m.position),
                Err(d) => {
                    damaged += 1;
                    first_error.get_or_insert_with(|| format!("damaged message at {}: {d}", m.position));
                    writeln!(out, "{} damaged -", m.position)
                }
            };
            if let Err(e) = line {
                io_error.get_or_insert(e);
            }
        });
        match polled {
            Ok(_) => {}
            // The log lost these positions (damage, or never synced before
            // a power cut): rilld says so once, and reading goes on.
            Err(rill::PollError::Lost { from, to, .. }) => {
                lost_ranges += 1;
                println!("LOST from={from} to={to}");
            }
            Err(e) => return Err(anyhow!("poll at {before}: {e}")),
        }
        if let Some(e) = io_error.take() {
            return Err(e).context("writing --out");
        }
        if sub.position() != before {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall {
            first_error.get_or_insert_with(|| format!("stalled: no progress for {stall:?} at position {before}, tail {tail}"));
            break;
        }
    }
    out.flush().context("writing --out")?;
    let ok = damaged == 0 && first_error.is_none();
    println!(
        "SUMMARY role=read-back ok={ok} delivered={delivered} damaged={damaged} lost_ranges={lost_ranges} start={start} end={} tail={tail}{}",
        sub.position(),
        first_error.map(|e| format!(" error={e}")).unwrap_or_default()
    );
    Ok(ok)
}

fn report_denial(action: &str, stream: &str, outcome: Result<(), rill::ClientError>) {
    let (code, message) = match outcome {
        Ok(()) => ("granted".to_owned(), String::new()),
        Err(e) => match (e.code(), &e) {
            (Some(code), rill::ClientError::Daemon { message, .. }) => (format!("{code:?}"), message.clone()),
            _ => ("not-a-refusal".to_owned(), e.to_string()),
        },
    };
    println!("DENIED action={action} stream={stream} code={code} message={message}");
}

fn subscribe(o: &Opts) -> Result<bool> {
    let client = connect(o, "subscribe")?;
    let stream = o.req("stream")?;
    let start = match o.get("start").unwrap_or("latest") {
        "latest" => Start::Latest,
        "oldest" => Start::Oldest,
        "earliest" => Start::Earliest,
        other => match other.split_once(':') {
            Some(("position", p)) => Start::Position(p.parse().context("--start position:N")?),
            Some(("time", t)) => Start::Time(t.parse().context("--start time:NS")?),
            _ => bail!("unknown --start {other:?} (latest, oldest, earliest, position:N, time:NS)"),
        },
    };
    let sub = client.subscriber_with(stream, start, stream_options(o)?).with_context(|| format!("open subscriber on {stream:?}"))?;
    run_subscriber(o, &client, sub)
}

/// Checks the read-only probes (if asked), prints READY, reads and checks
/// until done, prints the summary.
fn run_subscriber(o: &Opts, client: &Client, sub: Subscriber) -> Result<bool> {
    let seed = o.num("seed", None)?;
    let max_len = sub.info().max_message_len as usize;
    let list = |key: &str| -> Result<Option<usize>> { o.get(key).map(|v| v.parse().with_context(|| format!("--{key}"))).transpose() };
    let mode = match (o.get("expect"), list("publishers")?, list("follow")?) {
        (Some(e), None, None) => Mode::Exact { expect: e.split(',').map(str::parse).collect::<Result<_, _>>().context("--expect")? },
        // Exactly once and in order from seq 0, with no upper bound.
        (None, Some(p), None) => Mode::Exact { expect: vec![u64::MAX; p] },
        (None, None, Some(p)) => Mode::Follow { publishers: p },
        _ => bail!("give exactly one of --expect, --publishers and --follow"),
    };
    let done_file = o.get("done-file").map(PathBuf::from);
    if !matches!(&mode, Mode::Exact { expect } if !expect.contains(&u64::MAX)) && done_file.is_none() {
        bail!("--publishers and --follow need --done-file");
    }
    let futex = match o.get("wait").unwrap_or("futex") {
        "yield" => false,
        "futex" => true,
        other => bail!("unknown --wait {other:?}"),
    };
    let ro = if o.get("ro-checks").is_some() {
        let r = ro_checks(&sub);
        println!("ROCHECK {r}");
        Some(r)
    } else {
        None
    };
    let start = sub.position();
    println!("READY pid={} slot={} start={start} replaying={} {}", std::process::id(), sub.slot(), sub.is_replaying(), connection_fields(client, sub.daemon_handle()));
    if let Some(f) = o.get("wait-file").map(PathBuf::from) {
        let since = Instant::now();
        while !f.exists() {
            if since.elapsed() > stall_limit(o)? {
                bail!("{} did not appear", f.display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut r = Reader {
        sub,
        client,
        checker: Checker::new(seed, max_len, mode),
        futex,
        stop_after: o.get("stop-after").map(|v| v.parse()).transpose().context("--stop-after")?,
        stall: stall_limit(o)?,
        done_file,
        progress: Progress::new(),
        sleep: Duration::from_micros(o.num("sleep-us", Some(0))?),
        sleep_every: o.num("sleep-every", Some(1))?.max(1),
    };
    let outcome = r.run();
    let c = &r.checker;
    let ok = outcome.is_ok() && c.errors() == 0;
    let error = outcome.err().or_else(|| c.first_error().map(str::to_owned));
    let end = r.sub.position();
    let counts: Vec<String> = c.counts().iter().map(u64::to_string).collect();
    println!(
        "SUMMARY role=subscribe ok={ok} delivered={} span={} padding={} overrun={} recovered_overruns={} recovered_bytes={} \
         start={start} end={end} tail={} damaged={} retracted={} order={} header={} counts={} {}{}{}",
        c.delivered,
        c.span_bytes,
        r.sub.padding_bytes(),
        r.sub.overrun_bytes(),
        r.sub.recovered_overruns(),
        r.sub.recovered_bytes(),
        r.sub.ring().tail(),
        c.damaged,
        c.retracted,
        c.order_errors,
        c.header_errors,
        counts.join(","),
        connection_fields(client, r.sub.daemon_handle()),
        ro.map(|r| format!(" {r}")).unwrap_or_default(),
        error.map(|e| format!(" error={e}")).unwrap_or_default(),
    );
    Ok(ok)
}

/// The subscriber's loop and its knobs.
struct Reader<'a> {
    sub: Subscriber,
    client: &'a Client,
    checker: Checker,
    futex: bool,
    stop_after: Option<u64>,
    stall: Duration,
    done_file: Option<PathBuf>,
    progress: Progress,
    /// A slow application: sleeps this long in the handler after every
    /// `sleep_every`-th message.
    sleep: Duration,
    sleep_every: u64,
}

impl Reader<'_> {
    /// Reads until done. `Err` describes why it stopped early.
    fn run(&mut self) -> Result<(), String> {
        let mut idle = SpinYield::new(50);
        let mut last_progress = Instant::now();
        let mut done = false;
        loop {
            self.progress.tick(self.client, self.sub.daemon_handle(), self.checker.delivered);
            let limit = match self.stop_after {
                Some(n) if self.checker.delivered >= n => self.stop(),
                Some(n) => (n - self.checker.delivered).min(256) as usize,
                None => 256,
            };
            let before = self.sub.position();
            let checker = &mut self.checker;
            let (sleep, every) = (self.sleep, self.sleep_every);
            let handler = |m: rill::Message<'_>| {
                checker.on_message(&m);
                if !sleep.is_zero() && checker.delivered.is_multiple_of(every) {
                    std::thread::sleep(sleep);
                }
            };
            let polled = if self.futex {
                self.sub.poll_blocking(limit, Duration::from_millis(100), handler)
            } else {
                self.sub.poll(limit, handler)
            };
            if let Err(rill::PollError::RevokedDuringRead { position, .. }) = &polled {
                self.checker.retract(*position);
            }
            let n = polled.map_err(|e| format!("poll: {e}"))?;
            if self.checker.complete() {
                return Ok(());
            }
            if self.sub.position() != before {
                last_progress = Instant::now();
                idle.reset();
            } else if last_progress.elapsed() > self.stall {
                let (p, t) = (self.sub.position(), self.sub.ring().tail());
                return Err(format!("stalled: no progress for {:?} at position {p}, tail {t}", self.stall));
            }
            if n == 0 {
                if !self.futex {
                    idle.idle(0);
                }
                if let Some(f) = self.done_file.as_ref().filter(|_| !done) {
                    done = f.exists();
                }
                // The done file appears only after every publisher exited,
                // so the tail read now is final.
                if done && self.sub.position() == self.sub.ring().tail() {
                    return Ok(());
                }
            }
        }
    }

    /// `--stop-after`: says where it stopped and never reads again.
    fn stop(&self) -> ! {
        println!("STOPPED position={} delivered={}", self.sub.position(), self.checker.delivered);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Probes whether this process can write the ring it was handed as a
/// subscriber, without unsafe code. Returns `key=value` fields:
///
/// * `ring_path`, `ring_ino`, `ring_perms`, `ring_mappings`: the mapping(s)
///   of the ring in /proc/self/maps (found by the inode of the ring's fd;
///   spaces in the path as `_`) and
///   their permissions (`r--s` expected: readable, shared, not writable).
/// * `ring_vmflags`: the kernel's VmFlags for it from /proc/self/smaps, with
///   `_` for spaces. Without `wr` the mapping is not writable; without `mw`
///   ("may write") it can never be made writable with mprotect, because
///   the file was opened read-only.
/// * `mem_write`: writing one byte (the byte already there) into the ring
///   mapping through /proc/self/mem (`refused:ERRNO` expected);
///   `mem_control`: the same write into this process's own heap, read back
///   (`ok` shows that the /proc/self/mem route itself works here).
/// * `shared_pub`, `exclusive_pub`, `slot_subscribe`: what rill-shm says
///   when asked for a publication or a new slot on this ring (`ReadOnly`).
/// * `reopen_rw`: opening the ring's fd again through /proc/self/fd/N for
///   writing (file permissions decide: refused unless this process may
///   write the ring file anyway, e.g. as root).
fn ro_checks(sub: &Subscriber) -> String {
    let ring = sub.ring();
    let mut out = vec![format!("ring_read_only={}", ring.is_read_only())];
    let Some(fd) = ring.fd() else {
        return "ring_fd=none".into();
    };
    let fd_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match maps_for_fd(&fd_path) {
        Ok(maps) if !maps.is_empty() => {
            out.push(format!("ring_path={}", maps[0].path.replace(' ', "_")));
            out.push(format!("ring_ino={}", maps[0].ino));
            out.push(format!("ring_mappings={}", maps.len()));
            out.push(format!("ring_perms={}", maps.iter().map(|m| m.perms.as_str()).collect::<Vec<_>>().join(",")));
            let flags = vm_flags(&maps[0]).unwrap_or_else(|e| format!("error:{e}"));
            out.push(format!("ring_vmflags={}", flags.replace(' ', "_")));
            out.push(format!("mem_write={}", mem_write(&maps[0])));
        }
        Ok(_) => out.push("ring_mappings=0".into()),
        Err(e) => out.push(format!("ring_mappings=error:{}", e.to_string().replace(' ', "_"))),
    }
    out.push(format!("mem_control={}", mem_control()));
    out.push(format!("shared_pub={}", granted_or(ring.shared_publication().map(|_| ()))));
    out.push(format!("exclusive_pub={}", granted_or(ring.exclusive_publication().map(|_| ()))));
    out.push(format!("slot_subscribe={}", granted_or(ring.subscribe(rill_shm::ring::Start::Latest).map(|_| ()))));
    let reopen = std::fs::OpenOptions::new().read(true).write(true).open(&fd_path);
    out.push(format!("reopen_rw={}", reopen.map(|_| "allowed".to_owned()).unwrap_or_else(|e| format!("refused:{}", errno(&e)))));
    out.join(" ")
}

fn granted_or<E: std::fmt::Debug>(r: std::result::Result<(), E>) -> String {
    match r {
        Ok(()) => "granted".into(),
        Err(e) => format!("{e:?}").replace(' ', "_"),
    }
}

fn errno(e: &std::io::Error) -> String {
    e.raw_os_error().map_or_else(|| e.to_string().replace(' ', "_"), |n| format!("{:?}", nix::errno::Errno::from_raw(n)))
}

/// One line of /proc/self/maps.
struct Mapping {
    start: u64,
    end: u64,
    perms: String,
    path: String,
    ino: u64,
}

/// The mappings of the file behind `fd_path` (matched by device and inode).
fn maps_for_fd(fd_path: &str) -> Result<Vec<Mapping>> {
    let meta = std::fs::metadata(fd_path).with_context(|| format!("stat {fd_path}"))?;
    let maps = std::fs::read_to_string("/proc/self/maps").context("read /proc/self/maps")?;
    let mut out = Vec::new();
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(range), Some(perms), Some(inode)) = (f.first(), f.get(1), f.get(4)) else { continue };
        if inode.parse::<u64>().ok() != Some(meta.ino()) || f.len() < 6 {
            continue;
        }
        let (start, end) = range.split_once('-').context("address range")?;
        out.push(Mapping {
            start: u64::from_str_radix(start, 16)?,
            end: u64::from_str_radix(end, 16)?,
            perms: (*perms).to_owned(),
            path: f[5..].join(" "),
            ino: meta.ino(),
        });
    }
    Ok(out)
}

/// The VmFlags line of mapping `m` in /proc/self/smaps.
fn vm_flags(m: &Mapping) -> Result<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").context("read /proc/self/smaps")?;
    let head = format!("{:x}-{:x} ", m.start, m.end);
    let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&head));
    lines.next().context("mapping not in smaps")?;
    let flags = lines.find_map(|l| l.strip_prefix("VmFlags:")).context("no VmFlags")?;
    Ok(flags.trim().to_owned())
}

/// Tries to write, through /proc/self/mem, the byte that is already at the
/// middle of mapping `m` (so that nothing changes should it succeed).
fn mem_write(m: &Mapping) -> String {
    let mem = match std::fs::OpenOptions::new().read(true).write(true).open("/proc/self/mem") {
        Ok(f) => f,
        Err(e) => return format!("cannot-open:{}", errno(&e)),
    };
    let addr = m.start + (m.end - m.start) / 2;
    let mut byte = [0u8];
    if let Err(e) = mem.read_exact_at(&mut byte, addr) {
        return format!("cannot-read:{}", errno(&e));
    }
    match mem.write_at(&byte, addr) {
        Ok(n) => format!("written:{n}"),
        Err(e) => format!("refused:{}", errno(&e)),
    }
}

/// The control for [`mem_write`]: the same route into a private heap
/// buffer of this process must work.
fn mem_control() -> String {
    let buf = std::hint::black_box(vec![0u8; 64]);
    let addr = buf.as_ptr() as u64 + 7;
    let result = (|| -> std::io::Result<bool> {
        let mem = std::fs::OpenOptions::new().read(true).write(true).open("/proc/self/mem")?;
        mem.write_all_at(&[0x5A], addr)?;
        let mut back = [0u8];
        mem.read_exact_at(&mut back, addr)?;
        Ok(back[0] == 0x5A)
    })();
    std::hint::black_box(&buf);
    match result {
        Ok(true) => "ok".into(),
        Ok(false) => "not-written".into(),
        Err(e) => format!("failed:{}", errno(&e)),
    }
}
