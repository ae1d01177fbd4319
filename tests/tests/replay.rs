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

/// Damage in a sealed segment (not the last one, whose tail recovery may
/// cut) is never repaired or skipped. A flipped payload bit is caught when
/// read: a replay across it delivers every message before the damaged
/// batch intact, then fails naming the CRC mismatch. A damaged batch
/// header is caught when rilld starts (it checks every batch header): the
/// stream is marked (`archive_error` says "log damaged") and a replay is
/// refused with the reason. The stream goes on being published and
/// archived all along.
#[test]
fn damage_in_a_sealed_segment_is_reported_not_skipped() -> Result<()> {
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
    let mut sub = client.open_subscriber(stream, Start::Earliest, None)?;
    let mut delivered = Vec::new();
    let err = loop {
        match sub.poll(64, |m| delivered.push(m.position)) {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    ensure!(
        matches!(&err, rill::PollError::Replay { reason, .. } if reason.to_lowercase().contains("crc")),
        "replay across the flipped bit: {err}"
    );
    ensure!(
        delivered.last().is_some_and(|&p| p < b2.position) && delivered.len() as u32 >= scan.batches[0].data_frames + scan.batches[1].data_frames,
        "messages before the damaged batch {} were not all delivered ({} delivered)",
        b2.position,
        delivered.len()
    );
    drop(sub);
    // A header byte of batch 3, then a restart.
    d.stop(deadline)?;
    let b3 = scan.batches[3].file_offset as usize;
    bytes[b3] ^= 0x01;
    std::fs::write(&sealed, &bytes)?;
    d.spawn(deadline)?;
    let client = Client::connect_to(&d.socket)?;
    let info = client.stream_info(stream)?;
    let why = info.archive_error.clone().unwrap_or_default();
    ensure!(why.contains("log damaged"), "stream not marked after a damaged header in {}: {why:?}", sealed.display());
    match client.open_subscriber(stream, Start::Earliest, None).map(|_| ()) {
        Err(rill::ClientError::Daemon { message, .. }) => ensure!(message.contains("log"), "{message}"),
        other => anyhow::bail!("a replay across a damaged segment should be refused: {other:?}"),
    }
    ensure!(std::fs::read(&sealed)? == bytes, "the damaged sealed segment was changed");
    let before = info.durable_position;
    wait_until(deadline, "the stream is published and archived again", || {
        publish(&d, 100)?;
        Ok(client.stream_info(stream)?.durable_position > before)
    })?;
    Ok(())
}
