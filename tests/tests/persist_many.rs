//! Many persisted streams on one rilld at once: more `none` and
//! `interval` streams than the shared archiver thread has fixed-buffer
//! slots (the first get registered buffers, the rest write unregistered
//! ones), and `always` streams, each on a commit thread of its own; all
//! published to in turn, so that they archive side by side; then rilld is
//! killed with `kill -9`, restarted (every stream taken on again, slots
//! assigned afresh), published to again, and every log is read back.
//!
//! `cargo test --release -p rill-tests --test persist_many`.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill::{Client, Durability, Policy, Publisher, Start, StreamOptions};
use rill_tests::daemon::Rilld;
use std::time::{Duration, Instant};

/// More than the 32 stream slots of the shared worker's fixed buffers.
const SHARED_STREAMS: u32 = 40;
const ALWAYS_STREAMS: u32 = 3;
const CAPACITY: u64 = 64 << 10;
const PAYLOAD: usize = 200;
/// Messages per stream and round: about 1.3 MB, twenty rings.
const PER_ROUND: u32 = 6_000;
const TIMEOUT: Duration = Duration::from_secs(30);

fn name(i: u32) -> String {
    format!("many.s{i:02}")
}

fn durability(i: u32) -> Durability {
    match i {
        i if i >= SHARED_STREAMS => Durability::Always,
        i if i % 4 == 3 => Durability::IntervalMs(2),
        _ => Durability::None,
    }
}

fn options(i: u32) -> StreamOptions {
    StreamOptions::new()
        .with_capacity(CAPACITY)
        .with_max_message_len(1024)
        .with_policy(Policy::BackPressure)
        .with_persist(Some(durability(i)))
}

/// Message `seq` of stream `i`: both numbers, then a pattern of both.
fn payload(i: u32, seq: u32) -> Vec<u8> {
    let mut p = vec![0u8; PAYLOAD];
    p[..4].copy_from_slice(&i.to_le_bytes());
    p[4..8].copy_from_slice(&seq.to_le_bytes());
    for (k, b) in p[8..].iter_mut().enumerate() {
        *b = (k as u32).wrapping_mul(31).wrapping_add(i * 7 + seq) as u8;
    }
    p
}

/// Publishes messages `from..from + PER_ROUND` to every stream, one
/// message per stream in turn, then waits until each is durable.
fn publish_round(client: &Client, from: u32) -> Result<()> {
    let count = SHARED_STREAMS + ALWAYS_STREAMS;
    let mut publishers: Vec<Publisher> =
        (0..count).map(|i| client.publisher_with(&name(i), options(i)).with_context(|| name(i))).collect::<Result<_>>()?;
    let mut last = vec![0u64; publishers.len()];
    for seq in from..from + PER_ROUND {
        for (i, p) in publishers.iter_mut().enumerate() {
            // `always` streams only every tenth round of the loop: each of
            // their messages waits for a sync.
            if i as u32 >= SHARED_STREAMS && seq % 10 != 0 {
                continue;
            }
            last[i] = p.offer_blocking(&payload(i as u32, seq), TIMEOUT).with_context(|| format!("{} at {seq}", name(i as u32)))?;
        }
    }
    for (i, p) in publishers.iter().enumerate() {
        p.wait_durable(last[i], TIMEOUT).with_context(|| format!("{} durable", name(i as u32)))?;
    }
    Ok(())
}

/// Reads stream `i` from its beginning (the log, then the ring) and checks
/// it holds exactly the messages published, in order.
fn check_stream(client: &Client, i: u32, rounds: u32) -> Result<()> {
    let expected: Vec<u32> = (0..rounds * PER_ROUND).filter(|s| i < SHARED_STREAMS || s % 10 == 0).collect();
    let mut sub = client.open_subscriber(&name(i), Start::Earliest, None)?;
    let mut got = 0usize;
    let mut bad = None;
    let deadline = Instant::now() + TIMEOUT;
    while got < expected.len() && bad.is_none() {
        ensure!(Instant::now() < deadline, "{}: {got} of {} messages read back", name(i), expected.len());
        sub.poll(256, |m| {
            let want = expected.get(got).copied();
            if bad.is_none() && (want.is_none() || m.payload != payload(i, want.unwrap_or(0)).as_slice()) {
                bad = Some(format!("message {got} at position {}: {:?} (wanted sequence {want:?})", m.position, &m.payload[..8.min(m.payload.len())]));
            }
            got += 1;
        })?;
    }
    ensure!(bad.is_none(), "{}: {}", name(i), bad.unwrap_or_default());
    let info = client.stream_info(&name(i))?;
    ensure!(info.archive_error.is_none(), "{}: archiving stopped: {:?}", name(i), info.archive_error);
    ensure!(info.durable_position >= info.tail, "{}: durable {} of {}", name(i), info.durable_position, info.tail);
    Ok(())
}

/// Every stream's log and ring read back, after one round, and after a
/// `kill -9` of rilld, its restart and a second round.
#[test]
fn many_persisted_streams_archive_side_by_side_and_survive_a_kill9() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    // 1 MiB segments (the smallest): the streams roll.
    let mut d = Rilld::start("persist_many", &["--segment-bytes".into(), (1u64 << 20).to_string()], deadline)?;
    let client = Client::connect_to(&d.socket)?;
    for i in 0..SHARED_STREAMS + ALWAYS_STREAMS {
        client.create_stream(&name(i), options(i)).with_context(|| name(i))?;
    }
    publish_round(&client, 0)?;
    for i in 0..SHARED_STREAMS + ALWAYS_STREAMS {
        check_stream(&client, i, 1).with_context(|| format!("after round 1; rilld's log:\n{}", d.log()))?;
    }
    drop(client);
    d.kill9();
    d.spawn(deadline)?;
    let client = Client::connect_to(&d.socket)?;
    publish_round(&client, PER_ROUND)?;
    for i in 0..SHARED_STREAMS + ALWAYS_STREAMS {
        check_stream(&client, i, 2).with_context(|| format!("after the restart and round 2; rilld's log:\n{}", d.log()))?;
    }
    for i in [0, SHARED_STREAMS - 1] {
        let segments = rill_store::list_segments(&d.data.join("data").join(name(i)))?;
        ensure!(segments.len() >= 2, "{}: {} segments; expected a roll", name(i), segments.len());
    }
    Ok(())
}
