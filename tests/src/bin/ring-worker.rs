//! `ring-worker`: one publisher or subscriber process of a multi-process
//! ring test. The parent test starts several, talks to them through their
//! stdout lines, and judges their final `SUMMARY key=value ...` lines.
//!
//! ```text
//! ring-worker publish    --ring PATH --publisher K --count N --seed S
//!                        [--api offer|claim|mixed] [--pause-every N --pause-us U]
//! ring-worker subscribe  --ring PATH --seed S (--expect N0,N1,.. | --lossy P --done-file PATH)
//!                        [--wait yield|futex] [--slow-every N --slow-us U] [--readonly]
//! ring-worker hang-claim --ring PATH --publisher K --count N --seed S
//! ```
//!
//! * `publish` sends messages `0..N` of publisher `K` (see
//!   `rill_tests::payload`) with a shared publication, retrying with a
//!   spin-then-yield idle strategy while back-pressured. `--api mixed` mixes
//!   `offer`, `try_claim` and `try_claim_batch`.
//! * `subscribe` joins at `Start::Latest`, prints `READY ...`, then checks
//!   every message (`rill_tests::check`). Exact mode stops once every
//!   expected message arrived; lossy mode stops once the done file exists
//!   and its position has reached the ring's tail. `--readonly` maps the
//!   ring read-only and reads through a detached subscriber.
//! * `hang-claim` publishes `N` messages, then claims message `N`, writes
//!   half of it, prints `CLAIMED position=P len=L` and sleeps until killed.
//!
//! Exit status: 0 if everything checked out, 1 if a check failed (the
//! summary says which), 2 on a usage or setup error.

#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use rill_shm::frame::message_span;
use rill_shm::idle::{IdleStrategy, SpinYield};
use rill_shm::ring::{ClaimError, Ring, SharedPublication, Start, SubscribeError, Subscriber};
use rill_shm::Access;
use rill_tests::check::{Checker, Mode};
use rill_tests::opts::Opts;
use rill_tests::payload::{self, Prng};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Options that take no value.
const FLAGS: [&str; 1] = ["readonly"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("publish") => Opts::parse(&args[1..], &FLAGS).and_then(|o| publish(&o)),
        Some("subscribe") => Opts::parse(&args[1..], &FLAGS).and_then(|o| subscribe(&o)),
        Some("hang-claim") => Opts::parse(&args[1..], &FLAGS).and_then(|o| hang_claim(&o)),
        _ => Err(anyhow!("usage: ring-worker publish|subscribe|hang-claim --ring PATH ...")),
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("ring-worker: {e:#}");
            std::process::exit(2);
        }
    }
}

fn open(o: &Opts, access: Access) -> Result<Ring> {
    let path = PathBuf::from(o.req("ring")?);
    Ring::open(&path, access).with_context(|| format!("open ring {}", path.display()))
}

/// A stuck publisher or subscriber gives up after this long without
/// progress, so that the parent gets a summary instead of a silent hang.
fn stall_limit(o: &Opts) -> Result<Duration> {
    Ok(Duration::from_secs(o.num("stall-secs", Some(90))?))
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
    /// Handles a failed claim: idles while back-pressured, fails on anything
    /// else or on a stall.
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

/// Publishing side: the publication, who we are, and the retry state.
struct Sender {
    publ: SharedPublication,
    seed: u64,
    publisher: u32,
    max_len: usize,
    max_batch: usize,
    wait: Waiter,
}

impl Sender {
    fn new(ring: &Ring, o: &Opts) -> Result<Self> {
        let publ = ring.shared_publication().map_err(|e| anyhow!("shared_publication: {e}"))?;
        let publisher = u32::try_from(o.num("publisher", None)?)?;
        Ok(Sender {
            publ,
            seed: o.num("seed", None)?,
            publisher,
            max_len: ring.info().max_message_len as usize,
            max_batch: ring.info().capacity as usize / 4,
            wait: Waiter { publisher, idle: SpinYield::new(50), stall: stall_limit(o)?, back_pressured: 0, since: None },
        })
    }

    fn offer(&mut self, buf: &mut [u8], seq: u64) -> Result<u64> {
        let len = payload::message_len(self.seed, self.publisher, seq, self.max_len);
        payload::write_message(&mut buf[..len], self.seed, self.publisher, seq, self.max_len);
        loop {
            match self.publ.offer(&buf[..len]) {
                Ok(p) => {
                    self.wait.progressed();
                    return Ok(p);
                }
                Err(e) => self.wait.retry(e, seq)?,
            }
        }
    }

    /// Writes the message straight into the ring (a wider claim-to-commit
    /// window than `offer`'s memcpy).
    fn claim(&mut self, seq: u64) -> Result<u64> {
        let len = payload::message_len(self.seed, self.publisher, seq, self.max_len);
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

    /// Messages `seq..seq + k` in one batch, sometimes with unused space at
    /// the end (which the ring turns into padding). Returns how many.
    fn batch(&mut self, rng: &mut Prng, seq: u64, left: u64) -> Result<u64> {
        let mut k = (rng.range(1, 4) as u64).min(left);
        let extra = if rng.next_u64().is_multiple_of(4) { 32 * rng.range(1, 3) } else { 0 };
        let lens = |k: u64| -> Vec<usize> {
            (seq..seq + k).map(|s| payload::message_len(self.seed, self.publisher, s, self.max_len)).collect()
        };
        let mut bytes = lens(k).iter().map(|&l| message_span(l)).sum::<usize>() + extra;
        while bytes > self.max_batch && k > 1 {
            k -= 1;
            bytes = lens(k).iter().map(|&l| message_span(l)).sum::<usize>();
        }
        let lens = lens(k);
        let (seed, publisher, max_len) = (self.seed, self.publisher, self.max_len);
        loop {
            match self.publ.try_claim_batch(bytes) {
                Ok(mut b) => {
                    for (i, &len) in lens.iter().enumerate() {
                        let buf = b.claim(len).ok_or_else(|| anyhow!("batch of {bytes} bytes has no room for #{i}"))?;
                        payload::write_message(buf, seed, publisher, seq + i as u64, max_len);
                    }
                    match b.commit() {
                        Err(ClaimError::Reclaimed { .. }) => continue, // nothing published: again
                        other => other?,
                    };
                    self.wait.progressed();
                    return Ok(k);
                }
                Err(e) => self.wait.retry(e, seq)?,
            }
        }
    }
}

fn publish(o: &Opts) -> Result<bool> {
    let ring = open(o, Access::ReadWrite)?;
    let mut s = Sender::new(&ring, o)?;
    let count = o.num("count", None)?;
    let api = o.get("api").unwrap_or("offer").to_owned();
    let pause_every = o.num("pause-every", Some(0))?;
    let pause = Duration::from_micros(o.num("pause-us", Some(0))?);
    let mut rng = Prng::new(s.seed ^ u64::from(s.publisher).rotate_left(17) ^ 0x5EED);
    let mut buf = vec![0u8; s.max_len];
    let (mut seq, mut first, mut last) = (0u64, None, 0u64);
    let mut next_pause = pause_every;
    while seq < count {
        let how = match api.as_str() {
            "offer" => 0,
            "claim" => 7,
            "mixed" => rng.next_u64() % 10,
            other => bail!("unknown --api {other:?}"),
        };
        let (p, n) = match how {
            0..=6 => (s.offer(&mut buf, seq)?, 1),
            7 | 8 => (s.claim(seq)?, 1),
            _ => (ring.tail(), s.batch(&mut rng, seq, count - seq)?),
        };
        first.get_or_insert(p);
        last = p;
        seq += n;
        if pause_every > 0 && seq >= next_pause {
            std::thread::sleep(pause);
            next_pause += pause_every;
        }
    }
    println!(
        "SUMMARY role=publish publisher={} id={} sent={seq} back_pressured={} first_position={} last_position={last}",
        s.publisher,
        s.publ.id(),
        s.wait.back_pressured,
        first.unwrap_or(0)
    );
    Ok(true)
}

fn hang_claim(o: &Opts) -> Result<bool> {
    let ring = open(o, Access::ReadWrite)?;
    let mut s = Sender::new(&ring, o)?;
    let count = o.num("count", None)?;
    let mut buf = vec![0u8; s.max_len];
    for seq in 0..count {
        s.offer(&mut buf, seq)?;
    }
    let len = payload::message_len(s.seed, s.publisher, count, s.max_len);
    payload::write_message(&mut buf[..len], s.seed, s.publisher, count, s.max_len);
    let mut claim = loop {
        match s.publ.try_claim(len) {
            Ok(c) => break c,
            Err(e) => s.wait.retry(e, count)?,
        }
    };
    let half = len / 2;
    claim.buf()[..half].copy_from_slice(&buf[..half]);
    println!("CLAIMED position={} len={len}", claim.position());
    // Hold the claim until SIGKILL: Drop (which would pad it) never runs.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// What the read-only checks found: `ok`, or the first surprise.
fn read_only_checks(ring: &Ring) -> String {
    if !ring.is_read_only() || ring.info().access != Access::ReadOnly {
        return "mapping-not-read-only".into();
    }
    match ring.exclusive_publication() {
        Err(ClaimError::ReadOnly) => {}
        _ => return "exclusive_publication-not-refused".into(),
    }
    match ring.shared_publication() {
        Err(ClaimError::ReadOnly) => {}
        _ => return "shared_publication-not-refused".into(),
    }
    match ring.subscribe(Start::Latest) {
        Err(SubscribeError::ReadOnly) => {}
        _ => return "subscribe-not-refused".into(),
    }
    "ok".into()
}

fn subscribe(o: &Opts) -> Result<bool> {
    let readonly = o.get("readonly").is_some();
    let ring = open(o, if readonly { Access::ReadOnly } else { Access::ReadWrite })?;
    let ro_checks = if readonly { read_only_checks(&ring) } else { "n/a".into() };
    let seed = o.num("seed", None)?;
    let max_len = ring.info().max_message_len as usize;
    let mode = match (o.get("expect"), o.get("lossy")) {
        (Some(e), None) => Mode::Exact { expect: e.split(',').map(str::parse).collect::<Result<_, _>>().context("--expect")? },
        (None, Some(n)) => Mode::Lossy { publishers: n.parse().context("--lossy")? },
        _ => bail!("give exactly one of --expect and --lossy"),
    };
    let lossy = matches!(mode, Mode::Lossy { .. });
    let done_file = o.get("done-file").map(PathBuf::from);
    if lossy && done_file.is_none() {
        bail!("--lossy needs --done-file");
    }
    let futex = match o.get("wait").unwrap_or("yield") {
        "yield" => false,
        "futex" => true,
        other => bail!("unknown --wait {other:?}"),
    };
    let sub = if readonly {
        ring.subscribe_detached(Start::Latest)
    } else {
        ring.subscribe(Start::Latest).map_err(|e| anyhow!("subscribe: {e}"))?
    };
    let start = sub.position();
    println!("READY pid={} start={start} pages={:?} slot={:?}", std::process::id(), ring.pages(), sub.slot());
    let mut r = Reader {
        sub,
        checker: Checker::new(seed, max_len, mode),
        futex,
        slow_every: o.num("slow-every", Some(0))?,
        slow: Duration::from_micros(o.num("slow-us", Some(0))?),
        stall: stall_limit(o)?,
        done_file,
        waits_timed_out: 0,
    };
    let outcome = r.run();
    let ok = outcome.is_ok() && r.checker.errors() == 0 && (ro_checks == "ok" || ro_checks == "n/a");
    let error = outcome.err().or_else(|| r.checker.first_error().map(str::to_owned));
    print_summary(&r, &ring, start, ok, &ro_checks, error);
    Ok(ok)
}

fn print_summary(r: &Reader, ring: &Ring, start: u64, ok: bool, ro_checks: &str, error: Option<String>) {
    let c = &r.checker;
    let counts: Vec<String> = c.counts().iter().map(u64::to_string).collect();
    println!(
        "SUMMARY role=subscribe ok={ok} delivered={} span={} padding={} overrun={} start={start} end={} tail={} \
         damaged={} order={} header={} lost={} counts={} waits_timed_out={} ro_checks={ro_checks}{}",
        c.delivered,
        c.span_bytes,
        r.sub.padding_bytes(),
        r.sub.overrun_bytes(),
        r.sub.position(),
        ring.tail(),
        c.damaged,
        c.order_errors,
        c.header_errors,
        c.lost,
        counts.join(","),
        r.waits_timed_out,
        error.map(|e| format!(" error={e}")).unwrap_or_default(),
    );
}

/// The subscriber's loop and its knobs.
struct Reader {
    sub: Subscriber,
    checker: Checker,
    futex: bool,
    slow_every: u64,
    slow: Duration,
    stall: Duration,
    done_file: Option<PathBuf>,
    waits_timed_out: u64,
}

impl Reader {
    /// Reads until done. `Err` describes why it stopped early.
    fn run(&mut self) -> Result<(), String> {
        let mut idle = SpinYield::new(50);
        let mut next_slow = 1;
        let mut last_progress = Instant::now();
        let mut done = false;
        // Once every publisher has exited, every claim is committed: a
        // reader that cannot move although it is short of the tail is stuck
        // for good. (Generous, for a descheduled reader on a busy machine.)
        let stuck_after_done = Duration::from_secs(10).min(self.stall);
        loop {
            let before = self.sub.position();
            let checker = &mut self.checker;
            let polled = if self.futex {
                let deadline = Instant::now() + Duration::from_secs(1);
                self.sub.poll_blocking(256, |m| checker.on_message(&m), deadline)
            } else {
                self.sub.poll(256, |m| checker.on_message(&m))
            };
            let n = polled.map_err(|e| format!("poll: {e}"))?;
            if self.checker.complete() {
                return Ok(());
            }
            if self.sub.position() != before {
                last_progress = Instant::now();
                idle.reset();
            } else {
                let limit = if done { stuck_after_done } else { self.stall };
                if last_progress.elapsed() > limit {
                    let (p, t) = (self.sub.position(), self.sub.ring().tail());
                    let when = if done { "after every publisher exited" } else { "" };
                    return Err(format!("stalled: no progress for {limit:?} {when} at position {p}, tail {t}"));
                }
            }
            if n == 0 {
                if self.futex {
                    self.waits_timed_out += 1;
                } else {
                    idle.idle(0);
                }
                if let Some(f) = self.done_file.as_ref().filter(|_| !done) {
                    if f.exists() {
                        done = true;
                        last_progress = Instant::now();
                    }
                }
                // The done file appears only after every publisher exited,
                // so the tail read now is final.
                if done && self.sub.position() == self.sub.ring().tail() {
                    return Ok(());
                }
            }
            if self.slow_every > 0 && self.checker.delivered >= next_slow {
                std::thread::sleep(self.slow);
                next_slow = self.checker.delivered + self.slow_every;
            }
        }
    }
}
