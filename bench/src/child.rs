//! The second process of every benchmark: this binary re-executed with the
//! hidden `__child` subcommand, plus what both sides share: pinning and a
//! watchdog for spin loops.
//!
//! The parent passes ring files by path (passing an fd would need the
//! close-on-exec flag cleared, which std does not offer without `unsafe`).
//! A child that fails prints the error and exits non-zero; the parent
//! checks the exit status, and kills the child if the parent fails first.

use crate::{futex_floor, iceoryx, oneway, persist, pingpong, sockets, throughput};
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the child does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// Answers each floor ping (the durable counter) on the replicated one.
    FloorEcho,
    /// Echoes each message of the ping ring onto the pong ring.
    RingEcho,
    /// Publishes numbered messages as fast as it can.
    Publisher,
    /// `RingEcho` on streams of a `rilld`, through the client library.
    RillEcho,
    /// `RingEcho` on two iceoryx2 publish-subscribe services.
    Iceoryx2Echo,
    /// `Publisher` on a stream of a `rilld`, through the client library.
    RillPublisher,
    /// `RillPublisher` that yields the CPU whenever it is back-pressured
    /// (the archiving measurement: rilld's writes need the CPU a spinning
    /// publisher would take).
    RillYieldingPublisher,
    /// Receives and checks a throughput run's messages (a fan-out
    /// subscriber besides the parent); prints `received N`.
    Subscriber,
    /// `Subscriber` on a stream of a `rilld`, through the client library.
    RillSubscriber,
    /// Sends `count` messages over `seconds` at their due times (oneway).
    PacedPublisher,
    /// `PacedPublisher` on a stream of a `rilld`.
    RillPacedPublisher,
    /// Answers each futex ping on the pong word (`floor-futex`).
    FloorFutexEcho,
    /// `RillEcho`, waiting for each message with the subscriber's blocking
    /// wait instead of busy-polling.
    RillBlockingEcho,
    /// Echoes each message over a Unix stream socket.
    UdsEcho,
    /// Echoes each message over loopback TCP.
    TcpEcho,
    /// Echoes each message of the ping FIFO onto the pong FIFO.
    PipeEcho,
    /// Offers on a persisted stream of a `rilld` and waits until each
    /// message is durable, back to back (persist).
    RillDurablePublisher,
    /// Times paced offers into a persisted and a plain stream (persist).
    RillOfferLatency,
}

/// Arguments of the hidden `__child` subcommand (set by the parent only).
#[derive(Debug, Clone, Args)]
pub(crate) struct ChildArgs {
    /// What to do.
    #[arg(long, value_enum)]
    pub(crate) role: Role,
    /// Ring files, in the order the role expects.
    #[arg(long = "ring")]
    pub(crate) rings: Vec<PathBuf>,
    /// Socket of the `rilld` to connect to (`Rill*` roles).
    #[arg(long)]
    pub(crate) socket: Option<PathBuf>,
    /// Stream names, in the order the role expects (`Rill*` roles; the
    /// iceoryx2 service names for `Iceoryx2Echo`).
    #[arg(long = "stream")]
    pub(crate) streams: Vec<String>,
    /// Core to pin to.
    #[arg(long)]
    pub(crate) core: usize,
    /// Round trips to answer (echo roles).
    #[arg(long, default_value_t = 0)]
    pub(crate) count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 32)]
    pub(crate) size: usize,
    /// Stamp published frames with the publish time.
    #[arg(long)]
    pub(crate) timestamps: bool,
    /// How long to publish (publisher role).
    #[arg(long, default_value_t = 0.0)]
    pub(crate) seconds: f64,
    /// Messages per claimed batch; 0 publishes each with `offer`.
    #[arg(long, default_value_t = 0)]
    pub(crate) batch: usize,
    /// Largest number of messages one poll may hand out.
    #[arg(long, default_value_t = 1)]
    pub(crate) poll_limit: usize,
    /// Spin with the CPU's pause hint.
    #[arg(long)]
    pub(crate) spin_hint: bool,
    /// Publishers of the stream (throughput): a publisher numbers its
    /// messages as publisher `publisher_index` of `publishers` (shared
    /// publications when more than one); a subscriber expects that many.
    #[arg(long, default_value_t = 1)]
    pub(crate) publishers: u16,
    /// This publisher's index (throughput).
    #[arg(long, default_value_t = 0)]
    pub(crate) publisher_index: u16,
    /// Where the parent is, in the order the role expects: the socket's
    /// path (`UdsEcho`), its address (`TcpEcho`), or the ping and pong
    /// FIFOs' paths (`PipeEcho`).
    #[arg(long = "peer")]
    pub(crate) peers: Vec<String>,
}

/// Entry point of the child process.
/// Prints `preempted N` (its involuntary context switches) last, for the
/// parent's report.
pub(crate) fn run(args: &ChildArgs) -> Result<()> {
    pin(args.core)?;
    let before = preemptions();
    match args.role {
        Role::FloorEcho => pingpong::floor_echo(args)?,
        Role::RingEcho => pingpong::ring_echo(args)?,
        Role::Publisher => throughput::publish(args)?,
        Role::RillEcho => pingpong::rill_echo(args)?,
        Role::Iceoryx2Echo => iceoryx::echo(args)?,
        Role::RillPublisher => throughput::rill_publish(args, false)?,
        Role::RillYieldingPublisher => throughput::rill_publish(args, true)?,
        Role::Subscriber => throughput::subscribe(args)?,
        Role::RillSubscriber => throughput::rill_subscribe(args)?,
        Role::PacedPublisher => oneway::publish(args)?,
        Role::RillPacedPublisher => oneway::rill_publish(args)?,
        Role::FloorFutexEcho => futex_floor::floor_futex_echo(args)?,
        Role::RillBlockingEcho => pingpong::rill_echo(args)?,
        Role::UdsEcho => sockets::uds_echo(args)?,
        Role::TcpEcho => sockets::tcp_echo(args)?,
        Role::PipeEcho => sockets::pipe_echo(args)?,
        Role::RillDurablePublisher => persist::durable_publish(args)?,
        Role::RillOfferLatency => persist::offer_latency_child(args)?,
    }
    println!("preempted {}", preemptions() - before);
    Ok(())
}

/// The number after the word `name` in a child's report (its stdout).
pub(crate) fn report_field(out: &str, name: &str) -> Result<u64> {
    let mut words = out.split_whitespace();
    words.find(|w| *w == name);
    words
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("child report {out:?} lacks {name}"))
}

/// Involuntary context switches of the calling thread so far (0 if
/// /proc is unreadable). A busy-polling side that was preempted measured
/// the scheduler, not the transport: results print the count.
pub(crate) fn preemptions() -> u64 {
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A running child; killed (by its own pid) and reaped if dropped before
/// [`ChildProc::finish`].
#[derive(Debug)]
pub(crate) struct ChildProc {
    child: Option<Child>,
}

impl ChildProc {
    /// Starts this binary as the child described by `args`.
    pub(crate) fn spawn(args: &ChildArgs) -> Result<Self> {
        let exe = std::env::current_exe().context("locate own executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("__child")
            .arg("--role")
            .arg(
                args.role
                    .to_possible_value()
                    .expect("no skipped variants")
                    .get_name(),
            )
            .args(["--core", &args.core.to_string()])
            .args(["--count", &args.count.to_string()])
            .args(["--size", &args.size.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--batch", &args.batch.to_string()])
            .args(["--poll-limit", &args.poll_limit.to_string()])
            .args(["--publishers", &args.publishers.to_string()])
            .args(["--publisher-index", &args.publisher_index.to_string()]);
        for r in &args.rings {
            cmd.arg("--ring").arg(r);
        }
        if let Some(s) = &args.socket {
            cmd.arg("--socket").arg(s);
        }
        for s in &args.streams {
            cmd.arg("--stream").arg(s);
        }
        for p in &args.peers {
            cmd.arg("--peer").arg(p);
        }
        if args.timestamps {
            cmd.arg("--timestamps");
        }
        if args.spin_hint {
            cmd.arg("--spin-hint");
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let child = cmd.spawn().context("start child process")?;
        Ok(ChildProc { child: Some(child) })
    }

    /// Fails if the child has already exited (for loops that wait for it).
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            if let Some(status) = c.try_wait().context("poll child")? {
                bail!("child process exited early: {status}");
            }
        }
        Ok(())
    }

    /// Waits for the child; fails unless it exited 0. Returns its stdout.
    pub(crate) fn finish(mut self) -> Result<String> {
        let child = self.child.take().expect("finish is called once");
        let out = child.wait_with_output().context("wait for child")?;
        if !out.status.success() {
            bail!("child process failed: {}", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Checks that `cores` are two different cores this process may run on
/// (call before pinning: the list is the current affinity mask).
pub(crate) fn check_cores(cores: &[usize]) -> Result<()> {
    if cores.len() != 2 || cores[0] == cores[1] {
        bail!("--cores takes two different cores, got {cores:?}");
    }
    let ids = core_affinity::get_core_ids().context("list cores")?;
    for c in cores {
        if !ids.iter().any(|id| id.id == *c) {
            bail!(
                "core {c} is not available to this process (have {:?})",
                ids.iter().map(|i| i.id).collect::<Vec<_>>()
            );
        }
    }
    Ok(())
}

/// Pins the calling thread to `core`.
pub(crate) fn pin(core: usize) -> Result<()> {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        bail!("could not pin to core {core}");
    }
    Ok(())
}

/// Turns a spin loop that makes no progress for too long into an error
/// (a peer that died, or a bug), without reading the clock on every spin.
#[derive(Debug)]
pub(crate) struct Stall {
    spins: u32,
    since: Option<Instant>,
    timeout: Duration,
    spin_hint: bool,
}

impl Stall {
    /// Spins between checks of the clock.
    const CHECK_EVERY: u32 = 1 << 16;

    pub(crate) fn new(timeout: Duration, spin_hint: bool) -> Self {
        Stall {
            spins: 0,
            since: None,
            timeout,
            spin_hint,
        }
    }

    /// Called after an attempt that found nothing to do.
    #[inline]
    pub(crate) fn idle(&mut self) -> Result<()> {
        if self.spin_hint {
            std::hint::spin_loop();
        }
        self.spins = self.spins.wrapping_add(1);
        if self.spins.is_multiple_of(Self::CHECK_EVERY) {
            self.check()?;
        }
        Ok(())
    }

    #[cold]
    fn check(&mut self) -> Result<()> {
        let now = Instant::now();
        match self.since {
            None => self.since = Some(now),
            Some(s) if now - s > self.timeout => bail!("no progress for {:?}", self.timeout),
            Some(_) => {}
        }
        Ok(())
    }

    /// Like [`Stall::idle`], for a caller that has just slept (a blocking
    /// wait that timed out with nothing to do): checks the clock every
    /// time, as a sleep costs far more than reading it.
    pub(crate) fn waited(&mut self) -> Result<()> {
        self.check()
    }

    /// Like [`Stall::idle`], but yields the CPU first: for waiting until a
    /// peer has started. The peer inherits this process's pinning (and,
    /// under `chrt`, its real-time priority) until it pins itself, so a
    /// pure spin here could keep it from ever running.
    pub(crate) fn idle_yield(&mut self) -> Result<()> {
        std::thread::yield_now();
        self.idle()
    }

    /// Called after an attempt that did something.
    #[inline]
    pub(crate) fn progress(&mut self) {
        self.spins = 0;
        self.since = None;
    }
}
