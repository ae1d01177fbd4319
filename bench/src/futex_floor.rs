//! `floor-futex`: the floor of the blocking transports, a bare futex wake
//! each way between two processes.
//!
//! Two 32-bit words in shared memory, ping and pong: the futex words of two
//! small ring files that no one publishes to ([`Ring::wake_word`]). Round
//! trip `i` (from 0) uses the value `v = i + 2`: A stores `v` in ping and
//! FUTEX_WAKEs it, then waits until pong holds `v`; B waits until ping
//! holds `v`, then stores `v` in pong and FUTEX_WAKEs it. Before B starts,
//! A sets ping to 1; B announces itself by setting pong to 1.
//!
//! A waiter loads its word once and, if the value is not there yet, sleeps
//! in FUTEX_WAIT at once: no spinning first. And every store is followed by
//! a FUTEX_WAKE (no "someone sleeps" flag to skip it). So a round trip
//! costs two FUTEX_WAKEs, two FUTEX_WAITs and two wake-ups of a sleeping
//! process: what every transport whose receiver sleeps in the kernel pays
//! at least. A socket or a pipe adds its own locking and copying on top;
//! Rill's blocking wait (`rill-blocking`) spins ~50 us before it sleeps and
//! its publisher skips the wake when no one sleeps.
//!
//! A side whose peer died waits in bounded slices and gives up after
//! [`STALL_TIMEOUT`] without a change (about that plus one slice).

use crate::child::{preemptions, report_field, ChildArgs, ChildProc, Role, Stall};
use crate::pingpong::{child_args, PingpongArgs, Sample, STALL_TIMEOUT};
use crate::report;
use crate::rings::{pages_name, RingDir};
use anyhow::{bail, ensure, Context, Result};
use rill_shm::os::futex;
use rill_shm::{Access, Ring};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Longest single FUTEX_WAIT: a dead peer is noticed within
/// `STALL_TIMEOUT` plus this.
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// Side A: ping, then sleep until the pong.
pub(crate) fn floor_futex(args: &PingpongArgs) -> Result<Sample> {
    let mut dir = RingDir::new(args.dir.as_deref())?;
    let (ping_ring, ping_path) = dir.create("futex-ping", 4096, 64)?;
    let (pong_ring, pong_path) = dir.create("futex-pong", 4096, 64)?;
    let (ping, pong) = (wake_word(&ping_ring)?, wake_word(&pong_ring)?);
    // So that B's first wait, like every later one, sees `v - 1`.
    ping.store(1, Ordering::Relaxed);
    let cargs = child_args(args, Role::FloorFutexEcho, vec![ping_path, pong_path], false);
    let mut child = ChildProc::spawn(&cargs)?;
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    // SYNC(futex-floor): Acquire pairs with B's Release store of 1.
    while pong.load(Ordering::Acquire) != 1 {
        child
            .check_alive()
            .context("waiting for the futex echo process")?;
        stall
            .idle_yield()
            .context("waiting for the futex echo process")?;
    }
    let mut hist = report::latency_histogram();
    let preempted_before = preemptions();
    for i in 0..args.warmup + args.count {
        let v = value(i);
        let t0 = Instant::now();
        // SYNC(futex-floor): Release pairs with B's Acquire load in
        // `wait_for`, as a transport handing over data would need (free on
        // x86; here the word is all there is).
        ping.store(v, Ordering::Release);
        futex::wake_all(ping);
        if let Err(e) = wait_for(pong, v) {
            child.check_alive().context("waiting for a pong")?;
            return Err(e).with_context(|| format!("waiting for pong {i}"));
        }
        let rtt = t0.elapsed();
        if i >= args.warmup {
            hist.saturating_record(rtt.as_nanos() as u64);
        }
    }
    let preempted = preemptions() - preempted_before;
    let out = child.finish()?;
    let preempted = preempted + report_field(&out, "preempted")?;
    Ok(Sample {
        transport: "floor-futex",
        size: 4,
        pages: pages_name(ping_ring.pages()),
        hist,
        preempted,
    })
}

/// Side B: sleep until the ping, then pong.
pub(crate) fn floor_futex_echo(args: &ChildArgs) -> Result<()> {
    let [ping_path, pong_path] = args.rings.as_slice() else {
        bail!("the futex echo needs two --ring files");
    };
    let ping_ring = Ring::open(ping_path, Access::ReadWrite).context("open futex ping ring")?;
    let pong_ring = Ring::open(pong_path, Access::ReadWrite).context("open futex pong ring")?;
    let (ping, pong) = (wake_word(&ping_ring)?, wake_word(&pong_ring)?);
    // SYNC(futex-floor): Release pairs with A's Acquire load of 1.
    pong.store(1, Ordering::Release);
    futex::wake_all(pong);
    for i in 0..args.count {
        let v = value(i);
        wait_for(ping, v).with_context(|| format!("waiting for ping {i}"))?;
        // SYNC(futex-floor): Release pairs with A's Acquire in `wait_for`.
        pong.store(v, Ordering::Release);
        futex::wake_all(pong);
    }
    Ok(())
}

/// The word round trip `i` stores (wrapping: only equality matters).
fn value(i: u64) -> u32 {
    (i + 2) as u32
}

fn wake_word(ring: &Ring) -> Result<&AtomicU32> {
    ring.wake_word()
        .context("the ring's futex word is not writable here")
}

/// Sleeps on `word` until it holds `v`; it must hold `v - 1` until then.
/// Reads the clock only after a wait that saw no change (a timeout or a
/// stray wake-up), so a live peer costs no clock reads here.
fn wait_for(word: &AtomicU32, v: u32) -> Result<()> {
    let mut since: Option<Instant> = None;
    loop {
        // SYNC(futex-floor): Acquire pairs with the peer's Release store.
        let seen = word.load(Ordering::Acquire);
        if seen == v {
            return Ok(());
        }
        ensure!(
            seen == v.wrapping_sub(1),
            "futex word holds {seen}, expected {} or {v}",
            v.wrapping_sub(1)
        );
        futex::wait(word, seen, Some(WAIT_SLICE));
        if word.load(Ordering::Relaxed) == seen {
            let first = *since.get_or_insert_with(Instant::now);
            if first.elapsed() >= STALL_TIMEOUT {
                bail!("no futex wake-up for {STALL_TIMEOUT:?}");
            }
        }
    }
}
