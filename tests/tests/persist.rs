//! Persistence end to end: a real `rilld` with `--data-dir`, a real
//! publisher process on a persisted stream, real `kill -9` of the daemon,
//! and the segment files read back with `rill-store` afterwards.
//!
//! `cargo test --release -p rill-tests --test persist` (set
//! `RILL_STRESS_SEED` to replay a run; each test prints its seed).

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill_shm::frame::FrameKind;
use rill_store::{list_segments, FrameReader};
use rill_tests::daemon::Rilld;
use rill_tests::harness::Worker;
use rill_tests::payload::{self, Prng};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
const MAX_LEN: usize = 2048;

fn deadline() -> Instant {
    let secs = if cfg!(debug_assertions) { 900 } else { 300 };
    Instant::now() + Duration::from_secs(secs)
}

fn seed(test: &str) -> u64 {
    let seed = std::env::var("RILL_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    eprintln!("{test}: seed {seed} (replay with RILL_STRESS_SEED={seed})");
    seed
}

fn num(line: &str, key: &str) -> Result<u64> {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .with_context(|| format!("no {key}= in {line:?}"))?;
    v.parse().with_context(|| format!("{key} in {line:?}"))
}

/// Every data frame of the stream's log, in order: (position, publisher
/// index, sequence number). Checks every payload byte for byte and every
/// batch's CRC on the way.
fn read_log(dir: &Path, seed: u64) -> Result<Vec<(u64, u32, u64)>> {
    let mut out = Vec::new();
    let mut expected_first = None;
    for (first, path) in list_segments(dir)? {
        if let Some(e) = expected_first {
            ensure!(first == e, "segment {} starts at {first}, the previous one ended at {e}", path.display());
        }
        let file = std::fs::File::open(&path)?;
        let mut r = FrameReader::new(file, first);
        let mut end = first;
        while let Some(f) = r.next_frame().with_context(|| format!("reading {}", path.display()))? {
            end = f.header.position + f.header.span() as u64;
            if f.header.kind != FrameKind::Data {
                continue;
            }
            let (publisher, seq) = payload::verify(f.payload, seed, MAX_LEN)
                .map_err(|d| anyhow::anyhow!("damaged message at {} in {}: {d}", f.header.position, path.display()))?;
            out.push((f.header.position, publisher, seq));
        }
        expected_first = Some(end);
    }
    Ok(out)
}

/// A publisher on a stream persisted with `always` waits for durability
/// every 16 messages and prints how many are durable. rilld is killed with
/// SIGKILL 20 times at random moments (each time after at least 400 more
/// messages became durable since the last restart, then 0-150 ms later,
/// so kills land in writes, syncs and idle time alike) and started
/// again; the publisher carries on by itself. Afterwards the segment
/// files (rolled every 1 MiB) hold every message acknowledged as durable,
/// in order, exactly once, intact, and nothing else but later messages of
/// the same publisher, also in order.
#[test]
fn durable_messages_survive_twenty_kill9s_of_rilld() -> Result<()> {
    let name = "persist_kill9";
    let seed = seed(name);
    let deadline = deadline();
    let mut rng = Prng::new(seed);
    let mut d = Rilld::start(name, &["--segment-bytes".into(), (1u64 << 20).to_string()], deadline)?;
    let stream = "durable.kill9";
    let stop = d.dir.join("stop");
    let mut cmd = Command::new(WORKER);
    cmd.args(["publish", "--socket"]).arg(&d.socket);
    cmd.args(["--stream", stream, "--publisher", "0", "--seed", &seed.to_string()]);
    cmd.args(["--capacity", &(256u64 << 10).to_string(), "--max-len", &MAX_LEN.to_string()]);
    cmd.args(["--persist", "always", "--wait-durable", "16", "--until-file"]).arg(&stop);
    cmd.env("NO_COLOR", "1");
    let mut publ = Worker::spawn_command(cmd, "publisher")?;
    let mut acked = 0u64;
    for kill in 0..20 {
        // Wait until the archiver (of this daemon) made more durable.
        let from = publ.lines().len();
        let want = acked + 400;
        let line = publ
            .wait_line_after(from, "400 more messages durable after the restart", deadline, |l| {
                l.starts_with("DURABLE ") && num(l, "n").is_ok_and(|n| n >= want)
            })?
            .1;
        acked = acked.max(num(&line, "n")?);
        std::thread::sleep(Duration::from_millis(rng.range(0, 150) as u64));
        d.kill9();
        eprintln!("{name}: kill {} at >= {acked} durable", kill + 1);
        d.spawn(deadline)?;
    }
    let from = publ.lines().len();
    publ.wait_line_after(from, "a DURABLE line after the last restart", deadline, |l| l.starts_with("DURABLE "))?;
    std::fs::write(&stop, b"")?;
    let summary = publ.finish(deadline)?;
    let sent = summary.num("sent")?;
    let durable = summary.num("durable")?;
    ensure!(durable >= acked && durable <= sent, "summary {summary:?} against {acked} seen durable");
    // A clean stop flushes what is left in the ring.
    d.stop(deadline)?;
    let log = read_log(&d.data.join("data").join(stream), seed)?;
    let seqs: Vec<u64> = log.iter().map(|&(_, _, s)| s).collect();
    ensure!(log.iter().all(|&(_, p, _)| p == 0), "a frame of another publisher");
    ensure!(
        seqs.iter().enumerate().all(|(i, &s)| s == i as u64),
        "the log is not 0, 1, 2, ... in order: first break at {:?}",
        seqs.iter().enumerate().find(|(i, s)| **s != *i as u64)
    );
    ensure!(seqs.len() as u64 >= durable, "only {} messages on disk, {durable} were acknowledged durable", seqs.len());
    ensure!(seqs.len() as u64 == sent, "{} messages on disk after a clean stop, {sent} sent", seqs.len());
    let segments = list_segments(&d.data.join("data").join(stream))?.len();
    eprintln!("{name}: {sent} sent, {durable} acknowledged durable, {} on disk in {segments} segments after 20 kills", seqs.len());
    ensure!(segments > 1, "the test meant to roll segments: {segments}");
    Ok(())
}
