//! Reboots, simulated: a real `rilld`, real publisher processes on streams
//! persisted with each durability, `kill -9` of the daemon, then what a
//! reboot does to memory (the ring and page directories wiped; or only the
//! ring directory, as a partial cleanup would), and a restarted daemon.
//! Every message acknowledged as durable must then replay exactly once, in
//! order, intact, from every kind of start (earliest, oldest, latest, a
//! position, a time), without waiting for live traffic, and the stream
//! must go on where its log ends.
//!
//! `cargo test --release -p rill-tests --test reboot` (set
//! `RILL_STRESS_SEED` to replay a run; each test prints its seed).

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill::{Client, Start as StartAt};
use rill_tests::daemon::Rilld;
use rill_tests::harness::{stress_seed, Worker};
use rill_tests::payload;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
const MAX_LEN: usize = 2048;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 900 } else { 300 })
}

/// A persisted stream of the test: its name, durability, ring capacity
/// and how many messages its publisher sends (all acknowledged durable).
struct Case {
    stream: &'static str,
    durability: &'static str,
    capacity: u64,
    count: u64,
}

const CASES: [Case; 4] = [
    // The whole log fits in the ring (the first report).
    Case { stream: "reboot.always", durability: "always", capacity: 4 << 20, count: 2000 },
    // The log is many rings long (the second report).
    Case { stream: "reboot.interval", durability: "interval:5", capacity: 64 << 10, count: 4000 },
    Case { stream: "reboot.none", durability: "none", capacity: 64 << 10, count: 4000 },
    // Few messages, idle long before the crash.
    Case { stream: "reboot.idle", durability: "always", capacity: 64 << 10, count: 16 },
];

/// One message as a subscriber got it: (position, timestamp, sequence).
type Got = (u64, u64, u64);

/// Reads `stream` from `start` until `want` messages arrived (failing if
/// none comes for 10 s: replay must not wait for live traffic); checks
/// every payload and that positions increase.
fn read(client: &Client, stream: &str, start: StartAt, want: usize, seed: u64) -> Result<Vec<Got>> {
    let mut sub = client.subscriber(stream, start).with_context(|| format!("subscribing to {stream} at {start:?}"))?;
    let mut got: Vec<Got> = Vec::new();
    while got.len() < want {
        let mut bad = None;
        let n = sub
            .poll_blocking(256, Duration::from_secs(10), |m| {
                match payload::verify(m.payload, seed, MAX_LEN) {
                    Ok((0, seq)) => got.push((m.position, m.timestamp_ns, seq)),
                    Ok((p, _)) => bad = Some(format!("a message of publisher {p} at {}", m.position)),
                    Err(d) => bad = Some(format!("damaged message at {}: {d}", m.position)),
                }
            })
            .with_context(|| format!("{stream} from {start:?}: polling after {} messages", got.len()))?;
        if let Some(bad) = bad {
            anyhow::bail!("{stream} from {start:?}: {bad}");
        }
        ensure!(n > 0, "{stream} from {start:?}: nothing for 10 s after {} of {want} messages", got.len());
    }
    ensure!(got.windows(2).all(|w| w[0].0 < w[1].0), "{stream} from {start:?}: positions do not increase");
    Ok(got)
}

/// Checks that `got` is sequence numbers `first..count` in order.
fn ensure_run(got: &[Got], first: u64, count: u64, what: &str) -> Result<()> {
    let seqs: Vec<u64> = got.iter().map(|g| g.2).collect();
    let want: Vec<u64> = (first..count).collect();
    if seqs != want {
        let at = seqs.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(seqs.len().min(want.len()));
        anyhow::bail!("{what}: expected sequence {first}..{count}, got {} messages, first difference at index {at}", seqs.len());
    }
    Ok(())
}

fn publish_all(d: &Rilld, seed: u64, deadline: Instant) -> Result<()> {
    let mut workers = Vec::new();
    for c in &CASES {
        let mut cmd = Command::new(WORKER);
        cmd.args(["publish", "--socket"]).arg(&d.socket);
        cmd.args(["--stream", c.stream, "--publisher", "0", "--seed", &seed.to_string()]);
        cmd.args(["--capacity", &c.capacity.to_string(), "--max-len", &MAX_LEN.to_string()]);
        cmd.args(["--persist", c.durability, "--wait-durable", "16", "--count", &c.count.to_string()]);
        workers.push((c, Worker::spawn_command(cmd, c.stream)?));
    }
    for (c, mut w) in workers {
        let summary = w.finish(deadline)?;
        ensure!(summary.num("sent")? == c.count && summary.num("durable")? == c.count, "{}: {summary:?}", c.stream);
    }
    Ok(())
}

/// Every case replays whole from every kind of start; `extra` messages
/// were published after the first `count` (sequence numbers go on).
fn replay_all(client: &Client, seed: u64, extra: u64) -> Result<()> {
    for c in &CASES {
        let total = c.count + extra;
        let all = read(client, c.stream, StartAt::Earliest, total as usize, seed)?;
        ensure_run(&all, 0, total, &format!("{} from earliest", c.stream))?;
        let k = (total / 3) as usize;
        let (pos, ts, _) = all[k];
        let from_pos = read(client, c.stream, StartAt::Position(pos), total as usize - k, seed)?;
        ensure_run(&from_pos, k as u64, total, &format!("{} from position {pos}", c.stream))?;
        // The time index finds the batch holding the first message at or
        // after `ts`: delivery may start a little before it, never after.
        let mut from_time = read(client, c.stream, StartAt::Time(ts), 1, seed)?;
        from_time.truncate(1);
        let first = from_time[0].2;
        ensure!(first <= k as u64, "{} from time {ts}: starts at sequence {first}, after {k}", c.stream);
        from_time.extend(read(client, c.stream, StartAt::Position(from_time[0].0), (total - first) as usize, seed)?.into_iter().skip(1));
        ensure_run(&from_time, first, total, &format!("{} from time {ts}", c.stream))?;
    }
    Ok(())
}

/// Latest and Oldest on a recreated ring see none of the old messages,
/// and the next message goes right after the log's end. Publishes one
/// more message to each stream: sequence `count + extra`.
fn go_on_after_the_log(client: &Client, seed: u64, extra: u64) -> Result<()> {
    for c in &CASES {
        let seq = c.count + extra;
        let all = read(client, c.stream, StartAt::Earliest, seq as usize, seed)?;
        let (last, _, _) = *all.last().expect("non-empty");
        let end = last + rill_shm::frame::message_span(payload::message_len(seed, 0, seq - 1, MAX_LEN)) as u64;
        let mut latest = client.subscriber(c.stream, StartAt::Latest)?;
        let mut oldest = client.subscriber(c.stream, StartAt::Oldest)?;
        let mut publ = client.publisher(c.stream)?;
        let mut buf = vec![0u8; payload::message_len(seed, 0, seq, MAX_LEN)];
        payload::write_message(&mut buf, seed, 0, seq, MAX_LEN);
        let position = publ.offer(&buf)?;
        ensure!(position == end, "{}: the first message after the restart is at {position}, the log ends at {end}", c.stream);
        publ.wait_durable(position, Duration::from_secs(30))?;
        for (what, sub) in [("latest", &mut latest), ("oldest", &mut oldest)] {
            let mut got = Vec::new();
            sub.poll_blocking(16, Duration::from_secs(10), |m| got.push(m.position))?;
            ensure!(got == [end], "{} from {what} after the restart: got {got:?}, expected only the new message at {end}", c.stream);
        }
    }
    Ok(())
}

/// Publish with each durability, kill -9, kill the ring keeper (every
/// ring's memory lost: a reboot), restart: every message replays, then
/// the streams go on. Twice: the second time over a log that the first
/// restart wrote to.
#[test]
fn acknowledged_messages_replay_after_a_reboot() -> Result<()> {
    let seed = stress_seed("reboot");
    let deadline = deadline();
    let mut d = Rilld::start("reboot", &[], deadline)?;
    publish_all(&d, seed, deadline)?;
    for round in [0u64, 1] {
        d.kill9();
        d.lose_ring_memory(deadline)?;
        d.spawn(deadline)?;
        let client = d.client()?;
        let checked = replay_all(&client, seed, round).and_then(|()| go_on_after_the_log(&client, seed, round));
        checked.with_context(|| format!("round {round}; rilld's log:\n{}", d.log()))?;
        d.ensure_alive()?;
    }
    Ok(())
}
