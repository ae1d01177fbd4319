//! Persisted overwrite streams end to end: a real `rilld`, a fast
//! publisher process on a small (64 KiB) ring, and deliberately slow
//! subscriber processes that publishers overrun again and again. The
//! archiver's slot is a holding slot, so nothing is overwritten before it
//! is on disk; an overrun subscriber reads on from the log and back into
//! the ring, and gets every message exactly once, in order. Ordinary
//! subscribers never hold the publisher back. And all of it survives
//! `kill -9` of rilld.
//!
//! `cargo test --release -p rill-tests --test persist_overwrite`.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill_shm::frame::FrameKind;
use rill_store::{list_segments, FrameReader};
use rill_tests::daemon::Rilld;
use rill_tests::harness::{wait_until, Summary, Worker};
use rill_tests::payload;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
const CAPACITY: u64 = 64 << 10;
const MAX_LEN: usize = 2048;
/// Messages published (`rill_tests::payload` lengths, 170 bytes a frame
/// on average: about 3.3 MB, 50 rings, 3 segments of 1 MiB).
const COUNT: u64 = 20_000;

fn deadline() -> Instant {
    let secs = if cfg!(debug_assertions) { 900 } else { 300 };
    Instant::now() + Duration::from_secs(secs)
}

fn start_rilld(tag: &str) -> Result<Rilld> {
    Rilld::start(tag, &["--segment-bytes".into(), (1u64 << 20).to_string()], deadline())
}

/// A worker on `stream`, which it creates persisted with `durability` and
/// the overwrite policy if it is first.
fn worker(d: &Rilld, role: &str, stream: &str, durability: &str, extra: &[&str], name: &str) -> Result<Worker> {
    let mut cmd = Command::new(WORKER);
    cmd.args([role, "--socket"]).arg(&d.socket);
    cmd.args(["--stream", stream, "--seed", "5", "--policy", "overwrite", "--persist", durability]);
    cmd.args(["--capacity", &CAPACITY.to_string(), "--max-len", &MAX_LEN.to_string()]);
    cmd.args(extra).env("NO_COLOR", "1");
    Worker::spawn_command(cmd, name)
}

/// The fast publisher: messages `0..COUNT` in bursts of 2048 (some 5
/// rings) with a 300 ms pause after each, so that the slow readers catch up
/// in the pauses (as a reader must on average) and are overrun again by the
/// next burst.
fn publisher(d: &Rilld, stream: &str, durability: &str) -> Result<Worker> {
    let count = COUNT.to_string();
    let args = ["--publisher", "0", "--count", &count, "--pause-every", "2048", "--pause-us", "300000"];
    worker(d, "publish", stream, durability, &args, "publisher")
}

/// A slow subscriber that must get exactly messages `0..COUNT`, and reads
/// nothing until `go` exists.
fn slow_subscriber(d: &Rilld, stream: &str, durability: &str, go: &Path, sleep: &[&str], name: &str) -> Result<Worker> {
    let count = COUNT.to_string();
    let go = go.display().to_string();
    let mut args = vec!["--expect", &count, "--wait-file", &go];
    args.extend_from_slice(sleep);
    worker(d, "subscribe", stream, durability, &args, name)
}

/// Every message arrived exactly once, in order, intact; none was counted
/// lost; and the subscriber did read from the log after overruns.
fn check_subscriber(s: &Summary, name: &str) -> Result<()> {
    ensure!(s.get("ok")? == "true" && s.num("counts")? == COUNT, "{name}: {s:?}");
    ensure!(s.num("overrun")? == 0, "{name} lost bytes to overruns: {s:?}");
    ensure!(
        s.num("recovered_overruns")? >= 1 && s.num("recovered_bytes")? > 0,
        "{name} was never overrun (or never read the log): {s:?}"
    );
    eprintln!("{name}: {} overruns continued from the log, {} bytes read there", s.num("recovered_overruns")?, s.num("recovered_bytes")?);
    Ok(())
}

/// Waits until the publisher is `rings` rings ahead of everyone but the
/// archiver; returns the stream's info then. Checks that exactly one slot
/// holds (the archiver's, rilld's pid) and that every other is behind by
/// more than a ring: they do not hold the publisher back.
fn wait_ahead_of_readers(d: &Rilld, stream: &str, rings: u64) -> Result<rill::StreamInfo> {
    let client = d.client()?;
    wait_until(deadline(), "the publisher several rings ahead", || {
        Ok(client.stream_info(stream).map(|i| i.tail > rings * CAPACITY).unwrap_or(false))
    })?;
    let info = client.stream_info(stream)?;
    let holding: Vec<_> = info.subscribers.iter().filter(|s| s.holding).collect();
    ensure!(holding.len() == 1 && holding[0].pid == d.pid(), "expected the archiver's holding slot only: {:?}", info.subscribers);
    let readers: Vec<_> = info.subscribers.iter().filter(|s| !s.holding).collect();
    ensure!(!readers.is_empty(), "no readers listed: {:?}", info.subscribers);
    for r in readers {
        ensure!(r.lag_bytes > (rings - 1) * CAPACITY, "reader slot {} is only {} bytes behind the tail {}", r.slot, r.lag_bytes, info.tail);
    }
    Ok(info)
}

/// Every data frame of the stream's log: message `seq` of publisher 0 for
/// every `seq` in `0..COUNT`, in order, intact, each once.
fn check_log(dir: &Path) -> Result<()> {
    let mut seqs = Vec::new();
    let mut expected_first = None;
    for (first, path) in list_segments(dir)? {
        if let Some(e) = expected_first {
            ensure!(first == e, "segment {} starts at {first}, the one before ended at {e}", path.display());
        }
        let mut r = FrameReader::new(std::fs::File::open(&path)?, first);
        let mut end = first;
        while let Some(f) = r.next_frame().with_context(|| format!("reading {}", path.display()))? {
            end = f.header.position + f.header.span() as u64;
            if f.header.kind == FrameKind::Data {
                let (publisher, seq) = payload::verify(f.payload, 5, MAX_LEN)
                    .map_err(|e| anyhow::anyhow!("damaged message at {}: {e}", f.header.position))?;
                ensure!(publisher == 0, "publisher {publisher} at {}", f.header.position);
                seqs.push(seq);
            }
        }
        expected_first = Some(end);
    }
    ensure!(seqs.iter().copied().eq(0..COUNT), "the log holds {} messages, not 0..{COUNT} in order", seqs.len());
    Ok(())
}

/// Waits until everything published is on disk.
fn wait_archived(d: &Rilld, stream: &str) -> Result<()> {
    let client = d.client()?;
    wait_until(deadline(), "everything durable", || {
        let i = client.stream_info(stream)?;
        Ok(i.durable_position >= i.tail)
    })
}

/// Two slow subscribers of a persisted overwrite stream (one sleeping after
/// every message, one after every 32nd), gated so that the publisher is 8
/// rings ahead before they read anything: they hold it back not at all,
/// are overrun, and each gets every message exactly once, in order.
fn slow_readers_lose_nothing(durability: &str, tag: &str, late_earliest: bool) -> Result<()> {
    let deadline = deadline();
    let d = start_rilld(tag)?;
    let stream = "ow.slow";
    let go = d.dir.join("go");
    let mut slow = slow_subscriber(&d, stream, durability, &go, &["--sleep-us", "50"], "slow")?;
    slow.wait_line("READY", deadline)?;
    let mut slower = slow_subscriber(&d, stream, durability, &go, &["--sleep-us", "2000", "--sleep-every", "32"], "slower")?;
    slower.wait_line("READY", deadline)?;
    let mut publ = publisher(&d, stream, durability)?;
    wait_ahead_of_readers(&d, stream, 8)?;
    std::fs::write(&go, b"")?;
    // A reader that joins late at the stream's beginning: a replay from
    // disk, then the ring, and the log again whenever it is overrun.
    let mut earliest = if late_earliest {
        let count = COUNT.to_string();
        let args = ["--start", "earliest", "--expect", &count, "--sleep-us", "50"];
        Some(worker(&d, "subscribe", stream, durability, &args, "earliest")?)
    } else {
        None
    };
    let sent = publ.finish(deadline)?.num("sent")?;
    ensure!(sent == COUNT, "published {sent}");
    check_subscriber(&slow.finish(deadline)?, "slow")?;
    check_subscriber(&slower.finish(deadline)?, "slower")?;
    if let Some(w) = earliest.as_mut() {
        let s = w.finish(deadline)?;
        ensure!(s.get("ok")? == "true" && s.num("counts")? == COUNT && s.num("overrun")? == 0, "earliest: {s:?}");
    }
    wait_archived(&d, stream)?;
    check_log(&d.data_dir.join(stream))
}

#[test]
fn slow_readers_of_a_persisted_overwrite_stream_lose_nothing_durability_none() -> Result<()> {
    slow_readers_lose_nothing("none", "ow_none", false)
}

#[test]
fn slow_readers_of_a_persisted_overwrite_stream_lose_nothing_durability_interval() -> Result<()> {
    slow_readers_lose_nothing("interval:5", "ow_interval", true)
}

#[test]
fn slow_readers_of_a_persisted_overwrite_stream_lose_nothing_durability_always() -> Result<()> {
    slow_readers_lose_nothing("always", "ow_always", false)
}

/// rilld is killed with SIGKILL while the publisher publishes and a slow
/// reader is being overrun. While it is down, its archiver slot (in the
/// ring's shared memory) still holds the publisher back, so nothing is
/// overwritten that is not on disk. Restarted, it recovers the stream and
/// takes the same slot back as a holding slot; the reader (which may need
/// the log meanwhile, and waits for rilld) gets every message exactly
/// once, and the log holds every message.
#[test]
fn a_persisted_overwrite_stream_survives_kill9_of_rilld() -> Result<()> {
    let deadline = deadline();
    let mut d = start_rilld("ow_kill9")?;
    let (stream, durability) = ("ow.kill9", "interval:5");
    let go = d.dir.join("go");
    let mut slow = slow_subscriber(&d, stream, durability, &go, &["--sleep-us", "50"], "slow")?;
    slow.wait_line("READY", deadline)?;
    let mut publ = publisher(&d, stream, durability)?;
    let before = wait_ahead_of_readers(&d, stream, 8)?;
    let archiver_slot = before.subscribers.iter().find(|s| s.holding).map(|s| s.slot).context("archiver slot")?;
    std::fs::write(&go, b"")?;
    let client = d.client()?;
    wait_until(deadline, "a third of the messages published", || Ok(client.stream_info(stream)?.tail > 16 * CAPACITY))?;
    drop(client);
    d.kill9();
    // rilld is gone; its ring keeper still holds the ring and its pages.
    let ring = d.keeper_ring(stream)?;
    for _ in 0..20 {
        let held: Vec<_> = ring.subscribers().into_iter().filter(|s| s.holding).collect();
        ensure!(held.len() == 1 && held[0].index == archiver_slot, "holding slots with rilld dead: {held:?}");
        let tail = ring.tail();
        ensure!(
            tail + 32 <= held[0].position + CAPACITY,
            "with rilld dead the publisher ran to {tail}, more than a ring past the archiver's slot at {}",
            held[0].position
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(ring);
    d.spawn(deadline)?;
    let client = d.client()?;
    let after = client.stream_info(stream)?;
    let holding: Vec<_> = after.subscribers.iter().filter(|s| s.holding).map(|s| s.slot).collect();
    ensure!(holding == [archiver_slot], "after the restart, holding slots {holding:?}, the archiver had {archiver_slot}");
    ensure!(after.archive_error.is_none(), "archiving after the restart: {:?}", after.archive_error);
    let log = d.log();
    ensure!(!log.contains("slot in the adopted ring was lost"), "the archiver's slot was not taken back:\n{log}");
    let sent = publ.finish(deadline)?.num("sent")?;
    ensure!(sent == COUNT, "published {sent}");
    check_subscriber(&slow.finish(deadline)?, "slow")?;
    wait_archived(&d, stream)?;
    check_log(&d.data_dir.join(stream))
}
