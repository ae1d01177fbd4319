//! `tolerant-worker`: an honest client of a stream that a hostile client
//! may write as well (it publishes there, so it may write the ring), for
//! tests/tests/hostile.rs. Unlike `rill-worker`, which fails at the first
//! message that is not exactly the one expected, it takes whatever the
//! stream hands it and counts: the promise on such a stream is only that
//! honest clients never crash and never take garbage for a valid message,
//! not that the attacker's writes are undone. Its messages are
//! `rill_tests::payload`'s, so every one is checked byte for byte.
//!
//! ```text
//! tolerant-worker publish   --socket S --stream NAME --publisher K --seed X --until-file PATH
//!                           [--pause-every N --pause-us U] [--wait-durable --durable-timeout-ms T]
//! tolerant-worker subscribe --socket S --stream NAME --publishers P --seed X
//!                           (--done-file PATH | --read-to-tail) [--start latest|earliest]
//!                           [--out PATH] [--quiet-ms Q]
//! ```
//!
//! * `publish` sends messages `0, 1, ..` of publisher `K` until the file
//!   `--until-file` exists, retrying while back-pressured and counting
//!   every other refusal (never giving up). With `--wait-durable` it waits
//!   (up to `T` ms, default 2000) after every message until it is durable
//!   and prints `ACK seq=N position=P durable=D` for each one acknowledged;
//!   timeouts and `Lost` are counted. `SUMMARY role=publish sent=..
//!   acked=.. back_pressured=.. claim_errors=.. durable_timeouts=..
//!   durable_lost=.. last_position=.. [error=first refusal]`.
//! * `subscribe` reads from `--start` (default latest) and sorts every
//!   message handed to it: `honest` (verifies as a message of a publisher
//!   below `P`), `foreign` (anything else). `oversize` counts payloads
//!   longer than the stream's `max_message_len` and `position_errors`
//!   positions that did not increase: both mean the subscriber took
//!   garbage for a message. Honest messages out of order are counted too
//!   (`order_dups` for a sequence number not above the last one of its
//!   publisher, `order_gaps` for one that skips). Poll errors are counted
//!   by kind (`corrupt`, `revoked`, `lost_ranges`, `replay_errors`); after
//!   `Revoked` it opens a new subscriber from `Latest` (`reopened`). It
//!   stops once the done file exists and it read to the ring's tail or
//!   made no progress for `Q` ms (default 1000) or 10 s passed (noted in
//!   `error`), or (`--read-to-tail`)
//!   once it reached the tail the daemon reported at its start or made no
//!   progress for `Q` ms. `--out` gets one line per message:
//!   `position honest K SEQ` or `position foreign LEN`. `SUMMARY
//!   role=subscribe delivered=.. honest=.. foreign=.. oversize=..
//!   position_errors=.. order_dups=.. order_gaps=.. corrupt=.. revoked=..
//!   reopened=.. lost_ranges=.. replay_errors=.. start=.. end=.. tail=..
//!   [error=first oddity [| last: the last one]]`.
//!
//! Both print `PROGRESS n=..` about every 100 ms.
//!
//! Exit status: 0 whatever the stream did (the parent judges the
//! summary), 2 on a usage or setup error; a panic or a signal is a crash.

#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use rill::{ClaimError, Client, DurableError, PollError, Start};
use rill_tests::opts::Opts;
use rill_tests::payload;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const FLAGS: [&str; 2] = ["wait-durable", "read-to-tail"];

fn main() {
    rill_tests::log_to_stderr();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("publish") => Opts::parse(&args[1..], &FLAGS).and_then(|o| publish(&o)),
        Some("subscribe") => Opts::parse(&args[1..], &FLAGS).and_then(|o| subscribe(&o)),
        _ => Err(anyhow!("usage: tolerant-worker publish|subscribe --socket PATH ...")),
    };
    if let Err(e) = result {
        eprintln!("tolerant-worker: {e:#}");
        std::process::exit(2);
    }
}

fn connect(o: &Opts, role: &str) -> Result<Client> {
    let socket = o.req("socket")?;
    Client::builder()
        .socket(socket)
        .name(format!("tolerant-worker-{role}[{}]", std::process::id()))
        .request_timeout(Duration::from_secs(5))
        .connect()
        .with_context(|| format!("connect to rilld at {socket}"))
}

/// `PROGRESS` lines, about every 100 ms.
struct Progress(Instant);

impl Progress {
    fn tick(&mut self, n: u64) {
        if self.0.elapsed() >= Duration::from_millis(100) {
            self.0 = Instant::now();
            println!("PROGRESS n={n}");
        }
    }
}

fn publish(o: &Opts) -> Result<()> {
    let client = connect(o, "publish")?;
    let stream = o.req("stream")?;
    let mut publ = client.open_publisher(stream, None).with_context(|| format!("open publisher on {stream:?}"))?;
    let k = u32::try_from(o.num("publisher", None)?).context("--publisher")?;
    let seed = o.num("seed", None)?;
    let until = PathBuf::from(o.req("until-file")?);
    let pause_every = o.num("pause-every", Some(0))?;
    let pause = Duration::from_micros(o.num("pause-us", Some(0))?);
    let wait_durable = o.get("wait-durable").is_some();
    let durable_timeout = Duration::from_millis(o.num("durable-timeout-ms", Some(2000))?);
    let max_len = publ.max_message_len();
    let mut buf = vec![0u8; max_len];
    println!("OPEN role=publish publisher={k} id={}", publ.id());
    let mut progress = Progress(Instant::now());
    let (mut seq, mut acked, mut back_pressured, mut claim_errors) = (0u64, 0u64, 0u64, 0u64);
    let (mut durable_timeouts, mut durable_lost, mut last_position) = (0u64, 0u64, 0u64);
    let mut first_error: Option<String> = None;
    loop {
        progress.tick(seq);
        if until.exists() {
            break;
        }
        let len = payload::message_len(seed, k, seq, max_len);
        payload::write_message(&mut buf[..len], seed, k, seq, max_len);
        match publ.offer(&buf[..len]) {
            Ok(p) => {
                last_position = p;
                if wait_durable {
                    match publ.wait_durable(p, durable_timeout) {
                        Ok(d) => {
                            acked += 1;
                            println!("ACK seq={seq} position={p} durable={d}");
                        }
                        Err(DurableError::TimedOut { .. }) => durable_timeouts += 1,
                        Err(DurableError::Lost { .. }) => durable_lost += 1,
                        Err(e @ DurableError::NotPersisted { .. }) => bail!("{e}"),
                    }
                }
                seq += 1;
                if pause_every > 0 && seq % pause_every == 0 {
                    std::thread::sleep(pause);
                }
            }
            Err(ClaimError::BackPressured) => {
                back_pressured += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            Err(e) => {
                claim_errors += 1;
                first_error.get_or_insert_with(|| format!("seq {seq}: {e}"));
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    println!(
        "SUMMARY role=publish publisher={k} sent={seq} acked={acked} back_pressured={back_pressured} claim_errors={claim_errors} \
         durable_timeouts={durable_timeouts} durable_lost={durable_lost} last_position={last_position}{}",
        first_error.map(|e| format!(" error={e}")).unwrap_or_default()
    );
    Ok(())
}

/// What a subscriber counted.
#[derive(Default)]
struct Counts {
    delivered: u64,
    honest: u64,
    foreign: u64,
    oversize: u64,
    position_errors: u64,
    order_dups: u64,
    order_gaps: u64,
    corrupt: u64,
    revoked: u64,
    reopened: u64,
    lost_ranges: u64,
    replay_errors: u64,
    first_error: Option<String>,
    last_error: Option<String>,
}

impl Counts {
    fn note(&mut self, what: impl FnOnce() -> String) {
        let what = what();
        if self.first_error.is_none() {
            self.first_error = Some(what);
        } else {
            self.last_error = Some(what);
        }
    }
}

fn subscribe(o: &Opts) -> Result<()> {
    let client = connect(o, "subscribe")?;
    let stream = o.req("stream")?;
    let seed = o.num("seed", None)?;
    let publishers = o.num("publishers", None)? as usize;
    let start = match o.get("start").unwrap_or("latest") {
        "latest" => Start::Latest,
        "earliest" => Start::Earliest,
        other => bail!("unknown --start {other:?}"),
    };
    let done_file = o.get("done-file").map(PathBuf::from);
    let read_to_tail = o.get("read-to-tail").is_some();
    if done_file.is_none() != read_to_tail {
        bail!("give one of --done-file and --read-to-tail");
    }
    let quiet = Duration::from_millis(o.num("quiet-ms", Some(1000))?);
    let mut out = match o.get("out") {
        Some(p) => Some(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("--out {p}"))?)),
        None => None,
    };
    let target_tail = if read_to_tail { Some(client.stream_info(stream)?.tail) } else { None };
    let mut sub = client.open_subscriber(stream, start, None).with_context(|| format!("open subscriber on {stream:?}"))?;
    let max_len = sub.info().max_message_len as usize;
    let first_start = sub.position();
    println!("READY pid={} slot={} start={first_start} replaying={}", std::process::id(), sub.slot(), sub.is_replaying());
    let mut c = Counts::default();
    let mut next: Vec<Option<u64>> = vec![None; publishers];
    let mut last_position: Option<u64> = None;
    let mut progress = Progress(Instant::now());
    let mut last_progress = Instant::now();
    let mut done_at: Option<Instant> = None;
    let mut io_error = None;
    loop {
        progress.tick(c.delivered);
        let before = sub.position();
        let polled = sub.poll_blocking(256, Duration::from_millis(20), |m| {
            c.delivered += 1;
            if m.payload.len() > max_len {
                c.oversize += 1;
                let (len, pos) = (m.payload.len(), m.position);
                c.note(|| format!("payload of {len} bytes at {pos}, over the stream's maximum of {max_len}"));
            }
            if last_position.is_some_and(|p| m.position <= p) {
                c.position_errors += 1;
                let (pos, last) = (m.position, last_position);
                c.note(|| format!("position {pos} after {last:?}"));
            }
            last_position = Some(m.position);
            let line = match payload::verify(m.payload, seed, max_len) {
                Ok((k, seq)) if (k as usize) < publishers => {
                    c.honest += 1;
                    let slot = &mut next[k as usize];
                    match *slot {
                        Some(n) if seq < n => c.order_dups += 1,
                        Some(n) if seq > n => c.order_gaps += 1,
                        _ => {}
                    }
                    *slot = Some(slot.unwrap_or(0).max(seq + 1));
                    format!("{} honest {k} {seq}", m.position)
                }
                _ => {
                    c.foreign += 1;
                    format!("{} foreign {}", m.position, m.payload.len())
                }
            };
            if let Some(out) = out.as_mut() {
                if let Err(e) = writeln!(out, "{line}") {
                    io_error.get_or_insert(e);
                }
            }
        });
        match polled {
            Ok(_) => {}
            Err(PollError::Corrupt { position, reason }) => {
                c.corrupt += 1;
                c.note(|| format!("corrupt at {position}: {reason}"));
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e @ (PollError::Revoked { .. } | PollError::RevokedDuringRead { .. })) => {
                c.revoked += 1;
                c.note(|| e.to_string());
                if read_to_tail {
                    break;
                }
                match client.open_subscriber(stream, Start::Latest, None) {
                    Ok(s) => {
                        sub = s;
                        last_position = None;
                        c.reopened += 1;
                    }
                    Err(e) => {
                        c.note(|| format!("reopen: {e}"));
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            Err(PollError::Lost { from, to, reason }) => {
                c.lost_ranges += 1;
                c.note(|| format!("lost {from}..{to}: {reason}"));
            }
            Err(e @ PollError::Replay { .. }) => {
                c.replay_errors += 1;
                c.note(|| e.to_string());
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(e) = io_error.take() {
            return Err(e).context("writing --out");
        }
        if sub.position() != before {
            last_progress = Instant::now();
        }
        let stuck = last_progress.elapsed() >= quiet;
        if let Some(tail) = target_tail {
            if sub.position() >= tail || stuck {
                break;
            }
        } else {
            if let Some(f) = done_file.as_ref().filter(|_| done_at.is_none()) {
                if f.exists() {
                    // Give it `quiet` from here on to read what is left.
                    last_progress = Instant::now();
                    done_at = Some(Instant::now());
                }
            }
            if let Some(at) = done_at {
                if sub.position() >= sub.ring().tail() || stuck {
                    break;
                }
                if at.elapsed() >= Duration::from_secs(10) {
                    let (p, t) = (sub.position(), sub.ring().tail());
                    c.note(|| format!("still moving 10 s after the done file, at {p} (tail {t})"));
                    break;
                }
            }
        }
    }
    if let Some(mut out) = out {
        out.flush().context("writing --out")?;
    }
    let end = sub.position();
    let tail = target_tail.unwrap_or_else(|| sub.ring().tail());
    println!(
        "SUMMARY role=subscribe delivered={} honest={} foreign={} oversize={} position_errors={} order_dups={} order_gaps={} \
         corrupt={} revoked={} reopened={} lost_ranges={} replay_errors={} start={first_start} end={end} tail={tail}{}",
        c.delivered,
        c.honest,
        c.foreign,
        c.oversize,
        c.position_errors,
        c.order_dups,
        c.order_gaps,
        c.corrupt,
        c.revoked,
        c.reopened,
        c.lost_ranges,
        c.replay_errors,
        c.first_error
            .as_ref()
            .map(|e| format!(" error={}{}", e, c.last_error.as_ref().map(|l| format!(" | last: {l}")).unwrap_or_default()).replace('\n', " "))
            .unwrap_or_default()
    );
    Ok(())
}
