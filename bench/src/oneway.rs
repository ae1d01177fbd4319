//! One-way latency at a fixed offered rate, across a sweep of rates.
//!
//! The publisher (the child, on the second core) sends `rate × seconds`
//! messages, message `i` due at `start + i / rate`. It waits for each due
//! time, then offers; each message carries its sequence number and its due
//! time (CLOCK_MONOTONIC, shared by every process on the host). The
//! subscriber (this process, on the first core) records, for every
//! message, receive time minus *due* time. Measuring from the intended
//! send time rather than the actual one keeps coordinated omission out:
//! when the publisher is held up (back-pressure, preemption, a slow
//! subscriber), every message that should have been sent meanwhile shows
//! the wait, as a user's request would. The first tenth of each run is
//! warm-up and not recorded.
//!
//! Transports: `ring` (a bare ring file), `rill` (a stream of a real
//! `rilld`, client library on both sides, subscriber busy-polling) and
//! `rill-blocking` (the same, the subscriber sleeping on the ring's futex
//! at once whenever it has nothing to read, as a service that does not own
//! a core would).
//! Each line also says the rate achieved, so a rate the pair cannot carry
//! is visible as such, not hidden in the percentiles.

use crate::child::{check_cores, pin, preemptions, report_field, ChildArgs, ChildProc, Role, Stall};
use crate::daemon::{stream_name, Daemon};
use crate::pingpong::{offer, sequence, stream_options, Blocking, Offer, Poll};
use crate::report::{self, Latency};
use crate::rings::{pages_name, RingDir};
use crate::Transport;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use rill_shm::os::now_monotonic_ns;
use rill_shm::ring::Start;
use rill_shm::{Access, Ring};
use std::path::PathBuf;
use std::time::Duration;

/// Longest a side waits without progress before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Ring capacity: room for well over a millisecond of the fastest rate.
const RING_CAPACITY: u64 = 8 << 20;
/// Sequence number of the stop message.
const STOP: u64 = u64::MAX;

/// Arguments of `rill-bench oneway`.
#[derive(Debug, Clone, Args)]
pub(crate) struct OnewayArgs {
    /// Transports to measure: `ring`, `rill`, `rill-blocking`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "ring,rill")]
    transport: Vec<Transport>,
    /// Offered rates in messages per second, the sweep (each transport at
    /// each rate); `k` and `m` suffixes allowed (`100k`, `2m`).
    #[arg(long, value_delimiter = ',', value_parser = parse_rate, default_value = "10k,100k,1m,5m")]
    rate: Vec<f64>,
    /// Seconds each (transport, rate) runs.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Payload bytes per message (at least 16: sequence number and due time).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(16..=65536))]
    size: u32,
    /// Socket of a running `rilld` for the `rill` transports (default:
    /// start one for the run, the `rilld` next to this executable).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The two cores: the subscriber (this process) on the first, the
    /// publisher on the second.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0,1")]
    cores: Vec<usize>,
    /// Directory to create ring files in (default: /dev/hugepages if it has
    /// free huge pages, else /dev/shm).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// One JSON object per result line.
    #[arg(long)]
    json: bool,
}

/// `250000`, `250k`, `2.5m`.
fn parse_rate(s: &str) -> Result<f64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.strip_suffix('k') {
        Some(n) => (n, 1e3),
        None => match t.strip_suffix('m') {
            Some(n) => (n, 1e6),
            None => (t.as_str(), 1.0),
        },
    };
    let v: f64 = num.parse().map_err(|_| format!("not a rate: {s:?} (e.g. 100000, 100k, 1.5m)"))?;
    let v = v * mult;
    if !(1.0..=100e6).contains(&v) {
        return Err(format!("rate {s:?} out of range (1 to 100m messages/s)"));
    }
    Ok(v)
}

/// One (transport, rate) result.
#[derive(Debug)]
struct Row {
    rate: f64,
    achieved: f64,
    /// Transport, pages, count, percentiles, preemptions.
    lat: Latency,
}

/// Runs `rill-bench oneway`.
pub(crate) fn run(args: &OnewayArgs) -> Result<()> {
    check_cores(&args.cores)?;
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    for t in &args.transport {
        ensure!(
            matches!(t, Transport::Ring | Transport::Rill | Transport::RillBlocking),
            "oneway --transport takes ring, rill and rill-blocking"
        );
    }
    pin(args.cores[0])?;
    let needs_daemon = args.transport.iter().any(|t| matches!(t, Transport::Rill | Transport::RillBlocking));
    let daemon = if needs_daemon { Some(Daemon::for_run(args.socket.as_deref(), args.dir.as_deref())?) } else { None };
    let mut rows = Vec::new();
    let total = args.rate.len() * args.transport.len();
    for (i, &rate) in args.rate.iter().enumerate() {
        for (j, t) in args.transport.iter().enumerate() {
            eprintln!("oneway: {}/{total}: {} at {} msgs/s for {} s", i * args.transport.len() + j + 1, name(*t), rate_name(rate), args.seconds);
            rows.push(match (t, &daemon) {
                (Transport::Ring, _) => ring(args, rate)?,
                (t, Some(d)) => rill(args, d, rate, *t == Transport::RillBlocking)?,
                (_, None) => unreachable!("daemon started for rill transports"),
            });
        }
    }
    print(&rows, args);
    Ok(())
}

fn name(t: Transport) -> &'static str {
    match t {
        Transport::Ring => "ring",
        Transport::RillBlocking => "rill-blocking",
        _ => "rill",
    }
}

fn rate_name(rate: f64) -> String {
    if rate >= 1e6 {
        format!("{}M", rate / 1e6)
    } else if rate >= 1e3 {
        format!("{}k", rate / 1e3)
    } else {
        format!("{rate}")
    }
}

fn child_args(args: &OnewayArgs, role: Role, rate: f64) -> ChildArgs {
    ChildArgs {
        role,
        rings: Vec::new(),
        socket: None,
        streams: Vec::new(),
        core: args.cores[1],
        count: (rate * args.seconds).ceil() as u64,
        size: args.size as usize,
        timestamps: false,
        seconds: args.seconds,
        batch: 0,
        poll_limit: 0,
        spin_hint: true,
        publishers: 1,
        publisher_index: 0,
        peers: Vec::new(),
    }
}

fn ring(args: &OnewayArgs, rate: f64) -> Result<Row> {
    let mut dir = RingDir::new(args.dir.as_deref())?;
    let (ring, path) = dir.create("oneway", RING_CAPACITY, args.size.max(64))?;
    let mut sub = ring.subscribe(Start::Latest)?;
    let child = ChildProc::spawn(&ChildArgs { rings: vec![path], ..child_args(args, Role::PacedPublisher, rate) })?;
    receive(args, "ring", rate, pages_name(ring.pages()), &mut sub, child)
}

fn rill(args: &OnewayArgs, daemon: &Daemon, rate: f64, blocking: bool) -> Result<Row> {
    let client = rill::Client::connect_to(daemon.socket()).context("connect to rilld")?;
    let stream = stream_name("oneway");
    let mut sub = client
        .subscriber_with(&stream, rill::Start::Latest, stream_options(RING_CAPACITY, args.size))
        .context("open subscriber")?;
    let child = ChildProc::spawn(&ChildArgs {
        socket: Some(daemon.socket().to_path_buf()),
        streams: vec![stream],
        ..child_args(args, Role::RillPacedPublisher, rate)
    })?;
    let pages = pages_name(sub.ring().pages());
    if blocking {
        receive(args, "rill-blocking", rate, pages, &mut Blocking::new(&mut sub), child)
    } else {
        receive(args, "rill", rate, pages, &mut sub, child)
    }
}

/// The subscriber's side: records receive time minus due time for every
/// message after the warm-up, until the stop message.
fn receive(args: &OnewayArgs, transport: &'static str, rate: f64, pages: &'static str, sub: &mut impl Poll, mut child: ChildProc) -> Result<Row> {
    let count = (rate * args.seconds).ceil() as u64;
    let warmup = count / 10;
    let mut hist = report::latency_histogram();
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    let (mut next, mut stopped, mut bad) = (0u64, false, None);
    let preempted_before = preemptions();
    let mut started = false;
    while !stopped {
        let n = sub.poll_msgs(256, |m| {
            let now = now_monotonic_ns();
            let seq = sequence(m.payload);
            if seq == STOP {
                stopped = true;
                return;
            }
            let due = due_time(m.payload);
            if seq != next {
                bad.get_or_insert((next, seq));
            }
            next = seq + 1;
            if seq >= warmup {
                hist.saturating_record(now.saturating_sub(due));
            }
        })?;
        if n > 0 {
            started = true;
            stall.progress();
        } else if started {
            sub.idle(&mut stall)?;
        } else {
            child.check_alive().context("waiting for the publisher process")?;
            stall.idle_yield().context("waiting for the publisher process")?;
        }
    }
    let preempted = preemptions() - preempted_before;
    let out = child.finish()?;
    if let Some((want, got)) = bad {
        bail!("{transport}: expected message {want}, got {got}");
    }
    ensure!(next == count, "{transport}: received {next} of {count} messages");
    let sent_span_s = report_field(&out, "sent_span_ns")? as f64 / 1e9;
    // Achieved: messages over the time the publisher really took to send
    // them (its last offer minus its first due time).
    let achieved = if sent_span_s > 0.0 { count as f64 / sent_span_s } else { f64::NAN };
    let preempted = preempted + report_field(&out, "preempted")?;
    Ok(Row { rate, achieved, lat: Latency::new(transport, args.size as usize, pages, &hist, preempted) })
}

/// The due time in a payload's bytes 8..16.
fn due_time(payload: &[u8]) -> u64 {
    payload.get(8..16).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// The paced publisher on a bare ring.
pub(crate) fn publish(args: &ChildArgs) -> Result<()> {
    let ring = Ring::open(&args.rings[0], Access::ReadWrite).context("open ring")?;
    let mut publ = ring.exclusive_publication()?;
    publ.set_timestamps(false);
    paced(args, &mut publ)
}

/// The paced publisher through a `rilld`.
pub(crate) fn rill_publish(args: &ChildArgs) -> Result<()> {
    let socket = args.socket.as_deref().context("rill publisher needs --socket")?;
    let [stream] = args.streams.as_slice() else {
        bail!("rill publisher needs one --stream name");
    };
    let client = rill::Client::connect_to(socket).context("connect to rilld")?;
    let mut publ = client.open_exclusive_publisher(stream, None).context("open publisher")?;
    publ.publication().set_timestamps(false);
    paced(args, &mut publ)
}

/// Sends `count` messages over `seconds`, each at its due time (never
/// early; late ones go out at once, keeping their due time).
fn paced(args: &ChildArgs, publ: &mut impl Offer) -> Result<()> {
    let mut payload = vec![0u8; args.size];
    let interval_ns = args.seconds * 1e9 / args.count.max(1) as f64;
    let mut stall = Stall::new(STALL_TIMEOUT, args.spin_hint);
    let start = now_monotonic_ns() + 1_000_000; // 1 ms to settle
    for seq in 0..args.count {
        let due = start + (seq as f64 * interval_ns) as u64;
        while now_monotonic_ns() < due {
            std::hint::spin_loop();
        }
        payload[..8].copy_from_slice(&seq.to_le_bytes());
        payload[8..16].copy_from_slice(&due.to_le_bytes());
        offer(publ, &payload, &mut stall)?;
        stall.progress();
    }
    let sent_span_ns = now_monotonic_ns() - start;
    payload[..8].copy_from_slice(&STOP.to_le_bytes());
    offer(publ, &payload, &mut stall)?;
    println!("sent_span_ns {sent_span_ns}");
    Ok(())
}

fn print(rows: &[Row], args: &OnewayArgs) {
    if args.json {
        for r in rows {
            let l = &r.lat;
            println!(
                "{{\"bench\":\"oneway\",\"transport\":\"{}\",\"size\":{},\"rate\":{},\"achieved_rate\":{:.0},\"count\":{},\"pages\":\"{}\",\
                 \"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"p9999_ns\":{},\"max_ns\":{},\"preempted\":{}}}",
                l.transport, l.size, r.rate, r.achieved, l.count, l.pages, l.p50_ns, l.p90_ns, l.p99_ns, l.p999_ns, l.p9999_ns, l.max_ns, l.preempted
            );
        }
        return;
    }
    println!("one-way latency from due send time to receipt, ns ({} B, {} s per line, first 10% not recorded)", args.size, args.seconds);
    println!(
        "{:<14} {:>8} {:>9} {:>10} {:<5} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>9}",
        "transport", "rate", "achieved", "count", "pages", "p50", "p90", "p99", "p99.9", "p99.99", "max", "preempted"
    );
    for r in rows {
        let l = &r.lat;
        println!(
            "{:<14} {:>8} {:>9} {:>10} {:<5} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>9}",
            l.transport,
            rate_name(r.rate),
            rate_name(r.achieved.round()),
            l.count,
            l.pages,
            l.p50_ns,
            l.p90_ns,
            l.p99_ns,
            l.p999_ns,
            l.p9999_ns,
            l.max_ns,
            l.preempted
        );
    }
    // Each rill line against ring at the same rate.
    for r in rows.iter().filter(|r| r.lat.transport != "ring") {
        if let Some(base) = rows.iter().find(|b| b.lat.transport == "ring" && b.rate == r.rate) {
            let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
            let (p50, p99) = (ratio(r.lat.p50_ns, base.lat.p50_ns), ratio(r.lat.p99_ns, base.lat.p99_ns));
            println!("{:<14} / ring at {:>5}: p50 {p50:.2}x, p99 {p99:.2}x", r.lat.transport, rate_name(r.rate));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_parse_with_suffixes_and_refuse_nonsense() {
        assert_eq!(parse_rate("250000"), Ok(250_000.0));
        assert_eq!(parse_rate("100k"), Ok(100_000.0));
        assert_eq!(parse_rate("2.5M"), Ok(2_500_000.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1000m").is_err());
    }
}
