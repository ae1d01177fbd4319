//! Replay of a persisted stream that joins the live ring, end to end: a
//! real `rilld`, a publisher process publishing all along, and subscriber
//! processes that start from the stream's beginning (long gone from the
//! ring, on disk only) or from a position in the middle.
//!
//! `cargo test --release -p rill-tests --test replay`.

#![forbid(unsafe_code)]

use anyhow::{ensure, Result};
use rill::{Client, ErrorCode, Start};
use rill_tests::daemon::Rilld;
use rill_tests::harness::{wait_until, Worker};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
const CAPACITY: u64 = 64 << 10;
const MAX_LEN: usize = 2048;

fn worker(socket: &Path, role: &str, stream: &str, seed: u64, extra: &[&str], name: &str) -> Result<Worker> {
    let mut cmd = Command::new(WORKER);
    cmd.args([role, "--socket"]).arg(socket);
    cmd.args(["--stream", stream, "--seed", &seed.to_string()]);
    cmd.args(["--capacity", &CAPACITY.to_string(), "--max-len", &MAX_LEN.to_string()]);
    cmd.args(extra).env("NO_COLOR", "1");
    Worker::spawn_command(cmd, name)
}

/// While a publisher keeps publishing (the ring has wrapped hundreds of
/// times), a subscriber starting at `Earliest` reads the log from position
/// 0 and then the live ring: it gets every message from sequence 0 on,
/// exactly once and in order, up to the publisher's last. A second one
/// starting at a position in the middle gets exactly the messages from
/// there on. A start older than anything kept is refused (`Gone`).
#[test]
fn replay_from_disk_joins_the_live_ring_without_gap_or_duplicate() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let seed = 11;
    let d = Rilld::start("replay_join", &["--segment-bytes".into(), (1u64 << 20).to_string()], deadline)?;
    let stream = "replay.join";
    let stop = d.dir.join("stop");
    let done = d.dir.join("done");
    let stop_arg = stop.display().to_string();
    let mut publ = worker(
        &d.socket,
        "publish",
        stream,
        seed,
        &["--publisher", "0", "--persist", "interval:5", "--until-file", &stop_arg, "--pause-every", "64", "--pause-us", "200"],
        "publisher",
    )?;
    let client = Client::connect_to(&d.socket)?;
    wait_until(deadline, "the ring wraps many times", || {
        Ok(client.stream_info(stream).map(|i| i.tail > 40 * CAPACITY).unwrap_or(false))
    })?;
    let tail = client.stream_info(stream)?.tail;
    let done_arg = done.display().to_string();
    let mut from_start = worker(&d.socket, "subscribe", stream, seed, &["--start", "earliest", "--publishers", "1", "--done-file", &done_arg], "earliest")?;
    let ready = from_start.wait_line("READY", deadline)?;
    ensure!(ready.contains("replaying=true"), "starting at 0 with the tail at {tail}, the subscriber should read the log first: {ready}");
    // A start in the middle of the log (not necessarily a frame start: the
    // subscriber passes over what lies before it).
    let mid = tail / 2 + 8;
    let mut from_mid = worker(&d.socket, "subscribe", stream, seed, &["--start", &format!("position:{mid}"), "--follow", "1", "--done-file", &done_arg], "middle")?;
    from_mid.wait_line("READY", deadline)?;
    // Publishing goes on while they replay; then stop.
    wait_until(deadline, "more published while they replay", || Ok(client.stream_info(stream)?.tail > tail + 20 * CAPACITY))?;
    std::fs::write(&stop, b"")?;
    let sent = publ.finish(deadline)?.num("sent")?;
    std::fs::write(&done, b"")?;
    let s = from_start.finish(deadline)?;
    ensure!(s.get("ok")? == "true" && s.num("counts")? == sent, "earliest subscriber: {s:?} (sent {sent})");
    let m = from_mid.finish(deadline)?;
    ensure!(m.get("ok")? == "true", "middle subscriber: {m:?}");
    let got = m.num("counts")?;
    ensure!(got > 0 && got < sent, "middle subscriber got {got} of {sent}");
    // A start older than a stream in memory holds is refused.
    let options = rill::StreamOptions::new().with_capacity(CAPACITY).with_max_message_len(1024);
    drop(client.create_stream("replay.memory", options)?);
    let mut p = client.publisher("replay.memory")?;
    for _ in 0..2000 {
        p.offer(&[0u8; 100])?;
    }
    match client.open_subscriber("replay.memory", Start::Position(0), None).map(|_| ()) {
        Err(rill::ClientError::Daemon { code: ErrorCode::Gone, message }) => {
            ensure!(message.contains("not persisted"), "{message}");
        }
        other => anyhow::bail!("a start before the ring of a stream in memory should be Gone: {other:?}"),
    }
    Ok(())
}

/// Damage in a sealed segment is never repaired, and never stops a
/// replay: a flipped payload bit is caught when read (the batch's CRC), and
/// the replay delivers every message but that batch's, with one notice of
/// exactly its positions lost (`PollError::Lost`). A damaged batch header
/// too, after a restart: rilld finds both when it recovers the log, logs
/// them, reports the lost range in the stream's info, and stays healthy.
/// The stream goes on being published and archived all along.
#[test]
fn damage_in_a_sealed_segment_is_skipped_with_an_exact_loss_notice() -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let seed = 12;
    let mut d = Rilld::start("replay_damage", &["--segment-bytes".into(), (1u64 << 20).to_string()], deadline)?;
    let stream = "replay.damage";
    let publish = |d: &Rilld, count: u64| -> Result<()> {
        let mut w = worker(
            &d.socket,
            "publish",
            stream,
            seed,
            &["--publisher", "0", "--persist", "none", "--count", &count.to_string(), "--wait-durable", &count.to_string()],
            "publisher",
        )?;
        w.finish(deadline)?;
        Ok(())
    };
    publish(&d, 20_000)?;
    let dir = d.data.join("data").join(stream);
    let segments = rill_store::list_segments(&dir)?;
    ensure!(segments.len() >= 2, "expected a sealed segment: {segments:?}");
    let (first, sealed) = (segments[0].0, segments[0].1.clone());
    let mut bytes = std::fs::read(&sealed)?;
    let scan = rill_store::scan_segment(&bytes, first);
    ensure!(scan.damage.is_none() && scan.batches.len() >= 4, "{} batches", scan.batches.len());
    // A payload bit in the middle of batch 2.
    let b2 = &scan.batches[2];
    let at = (b2.file_offset + rill_store::BATCH_HEADER_LEN as u64 + 40) as usize;
    bytes[at] ^= 0x40;
    std::fs::write(&sealed, &bytes)?;
    let client = Client::connect_to(&d.socket)?;
    // Every message but those of batch 2, and one notice of exactly its
    // positions lost.
    // (Positions delivered, lost ranges noticed.)
    type Read = (Vec<u64>, Vec<(u64, u64)>);
    let read_all = |client: &Client, until: u64| -> Result<Read> {
        let mut sub = client.open_subscriber(stream, Start::Earliest, None)?;
        let (mut delivered, mut lost) = (Vec::new(), Vec::new());
        while delivered.last().is_none_or(|&p| p < until) {
            match sub.poll(64, |m| delivered.push(m.position)) {
                Ok(_) => {}
                Err(rill::PollError::Lost { from, to, .. }) => lost.push((from, to)),
                Err(e) => anyhow::bail!("replay failed after {} messages: {e}", delivered.len()),
            }
        }
        Ok((delivered, lost))
    };
    let last_before = scan.end_position;
    let (delivered, lost) = read_all(&client, last_before)?;
    ensure!(lost == [(b2.position, scan.batches[3].position)], "lost {lost:?}, expected batch 2's positions only");
    ensure!(
        delivered.iter().all(|&p| !(b2.position..scan.batches[3].position).contains(&p)),
        "a message of the damaged batch was delivered"
    );
    let expected: u32 = scan.batches.iter().enumerate().filter(|(i, _)| *i != 2).map(|(_, b)| b.data_frames).sum();
    ensure!(delivered.iter().filter(|&&p| p < scan.end_position).count() as u32 == expected, "not every undamaged message of the segment was delivered");
    // A header byte of batch 3 too, then a restart: rilld reports the
    // whole range lost, stays healthy, and replays still skip just it.
    d.stop(deadline)?;
    let b3 = scan.batches[3].file_offset as usize;
    bytes[b3] ^= 0x01;
    std::fs::write(&sealed, &bytes)?;
    d.spawn(deadline)?;
    let client = Client::connect_to(&d.socket)?;
    let soon = Instant::now() + Duration::from_secs(30);
    let info = client.stream_info(stream)?;
    let why = info.archive_error.clone().unwrap_or_default();
    let range = format!("{}..{}", b2.position, scan.batches[4].position);
    ensure!(why.contains("log lost") && why.contains(&range), "stream info does not report the loss {range}: {why:?}");
    // (Its stderr is collected by a thread: wait for the line.)
    wait_until(soon, "rilld logs the loss", || Ok(d.log().contains("the log lost these positions")))?;
    let health = client.health()?;
    ensure!(health.healthy, "one stream's damaged log made rilld unhealthy: {}", health.detail);
    let (_, lost) = read_all(&client, last_before)?;
    ensure!(lost == [(b2.position, scan.batches[4].position)], "after the restart: lost {lost:?}");
    ensure!(std::fs::read(&sealed)? == bytes, "the damaged sealed segment was changed");
    let before = info.durable_position;
    wait_until(deadline, "the stream is published and archived again", || {
        publish(&d, 100)?;
        Ok(client.stream_info(stream)?.durable_position > before)
    })?;
    Ok(())
}
