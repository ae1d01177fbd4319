//! Result lines: latency percentiles and rates, as text tables or as one
//! JSON object per line (hand-written: flat objects of numbers and plain
//! strings need no serializer).

use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::Instant;

/// A new histogram for round-trip times in ns (1 ns to 60 s, 3 digits).
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of one transport's round trips.
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    pub(crate) transport: String,
    pub(crate) size: usize,
    pub(crate) count: u64,
    pub(crate) pages: &'static str,
    pub(crate) p50_ns: u64,
    pub(crate) p90_ns: u64,
    pub(crate) p99_ns: u64,
    pub(crate) p999_ns: u64,
    pub(crate) p9999_ns: u64,
    pub(crate) max_ns: u64,
    pub(crate) mean_ns: f64,
    /// Involuntary context switches of both sides while measuring.
    pub(crate) preempted: u64,
}

impl Latency {
    pub(crate) fn new(
        transport: &str,
        size: usize,
        pages: &'static str,
        h: &Histogram<u64>,
        preempted: u64,
    ) -> Self {
        Latency {
            transport: transport.to_owned(),
            size,
            count: h.len(),
            pages,
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            p9999_ns: h.value_at_quantile(0.9999),
            max_ns: h.max(),
            mean_ns: h.mean(),
            preempted,
        }
    }
}

/// Transports whose receivers sleep in the kernel: their lines also get a
/// ratio to `floor-futex`, the floor of blocking transports (a
/// busy-polling transport's would read 0.00x).
const BLOCKING: [&str; 4] = ["rill-blocking", "uds", "tcp", "pipe"];

/// Prints pingpong results, with ratios of each non-floor line to the
/// `floor` and `floor-store` lines (and of each [`BLOCKING`] line to the
/// `floor-futex` line) when present, at the same
/// size (a transport measured at one size only, as the floors are, is the
/// reference for every size).
pub(crate) fn print_latency(results: &[Latency], clock_ns: u64, json: bool) {
    let floor = |name: &str, size: usize| {
        let mut named = results.iter().filter(|r| r.transport == name);
        let same_size = named.clone().find(|r| r.size == size);
        same_size.or_else(|| named.next().filter(|_| named.next().is_none()))
    };
    let ratio = |r: &Latency, f: Option<&Latency>| {
        f.filter(|_| !r.transport.starts_with("floor")).map(|f| {
            (
                r.p50_ns as f64 / f.p50_ns.max(1) as f64,
                r.p99_ns as f64 / f.p99_ns.max(1) as f64,
            )
        })
    };
    let ratios = |r: &Latency| ratio(r, floor("floor", r.size));
    let store_ratios = |r: &Latency| ratio(r, floor("floor-store", r.size));
    let futex_ratios = |r: &Latency| {
        let blocking = BLOCKING.contains(&r.transport.as_str());
        ratio(r, floor("floor-futex", r.size).filter(|_| blocking))
    };
    // `rill` against `ring`, `rill+ts` against `ring+ts`.
    let ring_ratios = |r: &Latency| {
        r.transport
            .strip_prefix("rill")
            .and_then(|rest| ratio(r, floor(&format!("ring{rest}"), r.size)))
    };
    if json {
        for r in results {
            let mut s = format!(
                "{{\"bench\":\"pingpong\",\"transport\":\"{}\",\"size\":{},\"count\":{},\"pages\":\"{}\",\
                 \"p50_ns\":{},\"p90_ns\":{},\"p99_ns\":{},\"p999_ns\":{},\"p9999_ns\":{},\"max_ns\":{},\
                 \"mean_ns\":{:.1},\"clock_ns\":{},\"preempted\":{}",
                r.transport, r.size, r.count, r.pages, r.p50_ns, r.p90_ns, r.p99_ns, r.p999_ns, r.p9999_ns,
                r.max_ns, r.mean_ns, clock_ns, r.preempted
            );
            if let Some((p50, p99)) = ratios(r) {
                let _ = write!(s, ",\"p50_vs_floor\":{p50:.3},\"p99_vs_floor\":{p99:.3}");
            }
            if let Some((p50, p99)) = store_ratios(r) {
                let _ = write!(
                    s,
                    ",\"p50_vs_floor_store\":{p50:.3},\"p99_vs_floor_store\":{p99:.3}"
                );
            }
            if let Some((p50, p99)) = futex_ratios(r) {
                let _ = write!(
                    s,
                    ",\"p50_vs_floor_futex\":{p50:.3},\"p99_vs_floor_futex\":{p99:.3}"
                );
            }
            if let Some((p50, p99)) = ring_ratios(r) {
                let _ = write!(s, ",\"p50_vs_ring\":{p50:.3},\"p99_vs_ring\":{p99:.3}");
            }
            println!("{s}}}");
        }
        return;
    }
    println!("round-trip latency, ns (each includes about one clock read, ~{clock_ns} ns)");
    let floor_size = results.iter().find(|r| r.transport.starts_with("floor")).map(|r| r.size);
    if floor_size.is_some_and(|f| results.iter().any(|r| r.size != f)) {
        println!("(floor lines carry a fixed size whatever --size: the reference at every size)");
    }
    println!(
        "{:<13} {:>7} {:>9} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} {:>9}",
        "transport",
        "size",
        "count",
        "pages",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "p99.99",
        "max",
        "mean",
        "preempted"
    );
    for r in results {
        println!(
            "{:<13} {:>7} {:>9} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8.1} {:>9}",
            r.transport,
            size_name(r.size),
            r.count,
            r.pages,
            r.p50_ns,
            r.p90_ns,
            r.p99_ns,
            r.p999_ns,
            r.p9999_ns,
            r.max_ns,
            r.mean_ns,
            r.preempted
        );
    }
    for r in results {
        let line = format!("{} {}", r.transport, size_name(r.size));
        if let Some((p50, p99)) = ratios(r) {
            println!("{line:<18} / floor:       p50 {p50:.2}x, p99 {p99:.2}x");
        }
        if let Some((p50, p99)) = store_ratios(r) {
            println!("{line:<18} / floor-store: p50 {p50:.2}x, p99 {p99:.2}x");
        }
        if let Some((p50, p99)) = futex_ratios(r) {
            println!("{line:<18} / floor-futex: p50 {p50:.2}x, p99 {p99:.2}x");
        }
        if let Some((p50, p99)) = ring_ratios(r) {
            let ring = format!("{}:", r.transport.replacen("rill", "ring", 1));
            println!("{line:<18} / {ring:<12} p50 {p50:.2}x, p99 {p99:.2}x");
        }
    }
}

/// A message size for people: `8B`, `1500B`, `4KiB`, `1MiB` (exact
/// multiples only, so nothing is rounded away).
pub(crate) fn size_name(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => format!("{b}B"),
    }
}

/// One throughput measurement, taken at the subscriber.
#[derive(Debug, Clone)]
pub(crate) struct Rate {
    pub(crate) transport: String,
    pub(crate) mode: String,
    pub(crate) size: usize,
    pub(crate) pages: &'static str,
    /// Messages counted between the first and the last timestamp.
    pub(crate) msgs: u64,
    pub(crate) seconds: f64,
    /// Times the publisher found the ring full.
    pub(crate) back_pressured: u64,
    /// Polls the subscriber made while measuring.
    pub(crate) polls: u64,
    /// Of those, polls that found nothing.
    pub(crate) empty_polls: u64,
    /// Involuntary context switches of both sides while measuring.
    pub(crate) preempted: u64,
}

impl Rate {
    /// Adds another round of the same transport and mode.
    pub(crate) fn merge(&mut self, other: &Rate) {
        self.msgs += other.msgs;
        self.seconds += other.seconds;
        self.back_pressured += other.back_pressured;
        self.polls += other.polls;
        self.empty_polls += other.empty_polls;
        self.preempted += other.preempted;
    }

    pub(crate) fn msgs_per_s(&self) -> f64 {
        self.msgs as f64 / self.seconds
    }

    /// Payload bytes per second.
    pub(crate) fn bytes_per_s(&self) -> f64 {
        self.msgs_per_s() * self.size as f64
    }
}

/// Prints throughput results, each ring line with its ratio to the
/// `floor-store` line, and each `rill` line with its ratio to `ring`.
pub(crate) fn print_rates(results: &[Rate], json: bool) {
    let baseline = |name: &str, size: usize| results.iter().find(|r| r.transport == name && r.size == size);
    let is_baseline = |r: &Rate| r.transport == "floor-store" || r.transport == "memcpy";
    let vs_floor = |r: &Rate| {
        baseline("floor-store", r.size)
            .filter(|_| !is_baseline(r))
            .map(|f| r.msgs_per_s() / f.msgs_per_s())
    };
    // Bytes/s against a single-core memcpy of the same size.
    let vs_memcpy = |r: &Rate| {
        baseline("memcpy", r.size)
            .filter(|_| !is_baseline(r))
            .map(|f| r.bytes_per_s() / f.bytes_per_s())
    };
    // `rill` against `ring` (same mode), `rill+ts` against `ring+ts`.
    let vs_ring = |r: &Rate| {
        let rest = r.transport.strip_prefix("rill")?;
        let ring = format!("ring{rest}");
        results
            .iter()
            .find(|o| o.transport == ring && o.mode == r.mode && o.size == r.size)
            .map(|o| (ring, r.msgs_per_s() / o.msgs_per_s()))
    };
    // A fan-out or fan-in line (`offer 1:4`) against the same transport's
    // one-to-one line (`offer`).
    let vs_one = |r: &Rate| {
        let (base, _shape) = r.mode.split_once(' ')?;
        results
            .iter()
            .find(|o| o.transport == r.transport && o.mode == base && o.size == r.size)
            .map(|o| r.msgs_per_s() / o.msgs_per_s())
    };
    if json {
        for r in results {
            let mut ratio =
                vs_floor(r).map_or(String::new(), |x| format!(",\"vs_floor_store\":{x:.3}"));
            if let Some((_, x)) = vs_ring(r) {
                let _ = write!(ratio, ",\"vs_ring\":{x:.3}");
            }
            if let Some(x) = vs_one(r) {
                let _ = write!(ratio, ",\"vs_one_to_one\":{x:.3}");
            }
            if let Some(x) = vs_memcpy(r) {
                let _ = write!(ratio, ",\"vs_memcpy\":{x:.3}");
            }
            println!(
                "{{\"bench\":\"throughput\",\"transport\":\"{}\",\"mode\":\"{}\",\"size\":{},\"pages\":\"{}\",\
                 \"count\":{},\"seconds\":{:.6},\"msgs_per_s\":{:.0},\"bytes_per_s\":{:.0},\"back_pressured\":{},\"polls\":{},\"empty_polls\":{},\"preempted\":{}{}}}",
                r.transport,
                r.mode,
                r.size,
                r.pages,
                r.msgs,
                r.seconds,
                r.msgs_per_s(),
                r.bytes_per_s(),
                r.back_pressured,
                r.polls,
                r.empty_polls,
                r.preempted,
                ratio
            );
        }
        return;
    }
    println!("throughput, publisher processes to subscriber processes (payload bytes; mode `offer P:S` = P publishers, S subscribers)");
    println!(
        "{:<11} {:<9} {:>7} {:>5} {:>12} {:>8} {:>10} {:>9} {:>8} {:>12} {:>11} {:>9} {:>9}",
        "transport",
        "mode",
        "size",
        "pages",
        "messages",
        "seconds",
        "Mmsg/s",
        "MB/s",
        "vs floor",
        "pub-blocked",
        "sub-empty",
        "msg/poll",
        "preempted"
    );
    for r in results {
        println!(
            "{:<11} {:<9} {:>7} {:>5} {:>12} {:>8.3} {:>10.2} {:>9.1} {:>8} {:>12} {:>11} {:>9.1} {:>9}",
            r.transport,
            r.mode,
            size_name(r.size),
            r.pages,
            r.msgs,
            r.seconds,
            r.msgs_per_s() / 1e6,
            r.bytes_per_s() / 1e6,
            vs_floor(r).map_or("-".to_owned(), |x| format!("{x:.2}x")),
            r.back_pressured,
            r.empty_polls,
            r.msgs as f64 / (r.polls - r.empty_polls).max(1) as f64,
            r.preempted
        );
    }
    for r in results {
        if let Some((ring, x)) = vs_ring(r) {
            println!(
                "{:<10} / {ring:<11} {:<9} {:>7} {x:.2}x msg/s",
                r.transport, r.mode, size_name(r.size)
            );
        }
        if let Some(x) = vs_floor(r).filter(|_| r.transport.starts_with("rill")) {
            println!(
                "{:<10} / {:<11} {:<9} {:>7} {x:.2}x msg/s",
                r.transport, "floor-store", r.mode, size_name(r.size)
            );
        }
        if let Some(x) = vs_one(r) {
            println!("{:<10} {:<9} {:>7} / one to one: {x:.2}x msg/s", r.transport, r.mode, size_name(r.size));
        }
        if let Some(x) = vs_memcpy(r).filter(|_| r.size >= 4096) {
            println!("{:<10} {:<9} {:>7} / memcpy: {x:.2}x bytes/s", r.transport, r.mode, size_name(r.size));
        }
    }
}

/// Median cost of one `Instant::now()` in ns (what every timed round trip
/// carries on top of the transport).
pub(crate) fn clock_overhead_ns() -> u64 {
    let mut d: Vec<u64> = (0..10_001)
        .map(|_| {
            let a = Instant::now();
            let b = Instant::now();
            (b - a).as_nanos() as u64
        })
        .collect();
    d.sort_unstable();
    d[d.len() / 2]
}

/// Which measurement a long run is at: one line on stderr, rewritten in
/// place before each measurement (never during one) and erased on drop.
/// Silent unless stderr is a terminal: stdout carries only results (JSON
/// consumers parse it), and a log has no use for a line rewritten in place.
#[derive(Debug)]
pub(crate) struct Progress {
    total: usize,
    started: usize,
    since: Instant,
    on_terminal: bool,
}

impl Progress {
    /// A display for a run of `total` measurements.
    pub(crate) fn new(total: usize) -> Self {
        Progress {
            total,
            started: 0,
            since: Instant::now(),
            on_terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Says that the next measurement, `what`, starts.
    pub(crate) fn next(&mut self, what: &str) {
        self.started += 1;
        debug_assert!(self.started <= self.total, "more measurements than announced");
        if self.on_terminal {
            eprint!(
                "\r\x1b[K[{}/{}, {:.0} s] {what}",
                self.started,
                self.total,
                self.since.elapsed().as_secs_f64()
            );
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if self.on_terminal && self.started > 0 {
            eprint!("\r\x1b[K");
        }
    }
}
