//! Retention of persisted streams, end to end: a real `rilld` with small
//! segments and a retention limit, a real publisher process, and the data
//! directory inspected afterwards.
//!
//! `cargo test --release -p rill-tests --test retention`.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill_shm::frame::FrameKind;
use rill_store::{list_segments, FrameReader};
use rill_tests::daemon::Rilld;
use rill_tests::harness::{wait_until, Worker};
use rill_tests::payload;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
const MAX_LEN: usize = 2048;
const SEED: u64 = 7;
const SEGMENT: u64 = 1 << 20;

fn publish(d: &Rilld, stream: &str, count: u64, deadline: Instant) -> Result<()> {
    let mut cmd = Command::new(WORKER);
    cmd.args(["publish", "--socket"]).arg(&d.socket);
    cmd.args(["--stream", stream, "--publisher", "0", "--seed", &SEED.to_string(), "--count", &count.to_string()]);
    cmd.args(["--capacity", &(256u64 << 10).to_string(), "--max-len", &MAX_LEN.to_string()]);
    cmd.args(["--persist", "none", "--wait-durable", &count.to_string()]).env("NO_COLOR", "1");
    let s = Worker::spawn_command(cmd, "publisher")?.finish(deadline)?;
    ensure!(s.num("durable")? == count, "not everything durable: {s:?}");
    Ok(())
}

/// (first position, size, sequence numbers) of every segment left.
fn segments(dir: &Path) -> Result<Vec<(u64, u64, Vec<u64>)>> {
    let mut out = Vec::new();
    for (first, path) in list_segments(dir)? {
        let len = std::fs::metadata(&path)?.len();
        let mut r = FrameReader::new(std::fs::File::open(&path)?, first);
        let mut seqs = Vec::new();
        while let Some(f) = r.next_frame().with_context(|| format!("reading {}", path.display()))? {
            if f.header.kind == FrameKind::Data {
                let (_, seq) = payload::verify(f.payload, SEED, MAX_LEN).map_err(|e| anyhow::anyhow!("{e}"))?;
                seqs.push(seq);
            }
        }
        out.push((first, len, seqs));
    }
    Ok(out)
}

/// With 1 MiB segments and `--retention-bytes` of 3 MiB, about 8 MiB
/// published leaves the newest segments only: under the limit (sealed
/// ones plus the one being written), oldest ones gone, and what is left
/// is one contiguous run of messages ending with the last one sent.
#[test]
fn retention_by_size_deletes_the_oldest_segments() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let limit = 3 * SEGMENT;
    let extra = ["--segment-bytes".to_string(), SEGMENT.to_string(), "--retention-bytes".into(), limit.to_string()];
    let mut d = Rilld::start("retention_size", &extra, deadline)?;
    let stream = "retained.size";
    let count = 50_000;
    publish(&d, stream, count, deadline)?;
    let dir = d.data.join("data").join(stream);
    // Retention runs every 100 ms in the archiver.
    wait_until(deadline, "retention brings the log under its limit", || {
        let total: u64 = list_segments(&dir)?.iter().filter_map(|(_, p)| std::fs::metadata(p).ok()).map(|m| m.len()).sum();
        Ok(total <= limit + SEGMENT)
    })?;
    d.stop(deadline)?;
    let segs = segments(&dir)?;
    let total: u64 = segs.iter().map(|s| s.1).sum();
    let sealed: u64 = segs[..segs.len() - 1].iter().map(|s| s.1).sum();
    ensure!(segs.len() >= 2, "expected a few segments left: {:?}", segs.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>());
    ensure!(sealed <= limit, "sealed segments hold {sealed} bytes, over the {limit} limit");
    ensure!(segs[0].0 > 0, "the oldest segment (position 0) was kept");
    let seqs: Vec<u64> = segs.iter().flat_map(|s| s.2.iter().copied()).collect();
    ensure!(seqs.last() == Some(&(count - 1)), "the newest message is not the last one left");
    ensure!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "what is left is not one contiguous run");
    eprintln!("retention_size: {} segments, {total} bytes left, messages {}..={}", segs.len(), seqs[0], count - 1);
    Ok(())
}

/// With `--retention-ms 300`, sealed segments disappear once they are
/// older than that, while the segment being written stays.
#[test]
fn retention_by_age_deletes_old_sealed_segments() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let extra = ["--segment-bytes".to_string(), SEGMENT.to_string(), "--retention-ms".into(), "300".into()];
    let mut d = Rilld::start("retention_age", &extra, deadline)?;
    let stream = "retained.age";
    publish(&d, stream, 20_000, deadline)?;
    let dir = d.data.join("data").join(stream);
    wait_until(deadline, "every sealed segment deleted by age", || Ok(list_segments(&dir)?.len() == 1))?;
    d.stop(deadline)?;
    let segs = segments(&dir)?;
    ensure!(segs.len() == 1 && segs[0].0 > 0, "expected only the newest segment: {:?}", segs.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>());
    ensure!(segs[0].2.last() == Some(&19_999), "the segment being written lost its messages");
    Ok(())
}
