//! A publisher that commits a malformed frame (it can write its ring: a
//! hostile or broken client) hurts only its own stream: rilld quarantines
//! that stream at the frame, stays healthy, and every other persisted
//! stream goes on being archived, also after a `kill -9` and restart
//! (when the adopted ring still holds the frame).
//!
//! `cargo test --release -p rill-tests --test quarantine`

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill::{Client, Durability, Start, StreamOptions};
use rill_shm::layout::Meta;
use rill_tests::daemon::Rilld;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 900 } else { 300 })
}

fn signal(d: &Rilld, sig: nix::sys::signal::Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), sig).context("signalling rilld")
}

/// Waits (up to 20 s) until `stream`'s archive error mentions quarantine.
fn wait_quarantined(client: &Client, stream: &str) -> Result<String> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = client.stream_info(stream)?.archive_error.filter(|e| e.contains("quarantined")) {
            return Ok(e);
        }
        ensure!(Instant::now() < until, "stream {stream} was not quarantined within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Publishes one message to `stream` and waits until it is durable.
fn durable_publish(client: &Client, stream: &str, options: &StreamOptions, payload: &[u8]) -> Result<u64> {
    let mut p = client.publisher_with(stream, options.clone())?;
    let position = p.offer(payload)?;
    p.wait_durable(position, Duration::from_secs(30)).with_context(|| format!("{stream}: waiting for durability"))?;
    Ok(position)
}

#[test]
fn a_malformed_frame_quarantines_its_stream_only() -> Result<()> {
    let deadline = deadline();
    // 4 KiB pages: the test writes the ring with pwrite(2), which memory
    // on huge pages does not take (a hostile publisher would map it).
    let mut d = Rilld::start("quarantine", &["--no-huge-pages".into()], deadline)?;
    let client = d.client()?;
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_persist(Some(Durability::Always));
    for i in 0..10u8 {
        durable_publish(&client, "bad", &options, &[i; 100])?;
    }
    durable_publish(&client, "good", &options, b"before")?;

    // rilld stopped, so its archiver has not read the frame yet when the
    // publisher breaks it: committed, then its kind made impossible.
    let mut hostile = client.publisher_with("bad", options.clone())?;
    signal(&d, nix::sys::signal::Signal::SIGSTOP)?;
    let position = hostile.offer(&[0xAB; 100])?;
    let ring_fd = hostile.ring().fd().context("the publisher's ring fd")?.try_clone_to_owned()?;
    let ring = File::from(ring_fd);
    let mut word = [0u8; 8];
    ring.read_exact_at(&mut word, std::mem::offset_of!(Meta, data_offset) as u64)?;
    let data_offset = u64::from_le_bytes(word);
    let capacity = hostile.ring().info().capacity;
    let at = data_offset + (position & (capacity - 1));
    ring.read_exact_at(&mut word, at)?;
    let len_kind = u64::from_le_bytes(word) | (0x7777 << 32);
    ring.write_all_at(&len_kind.to_le_bytes(), at)?;
    signal(&d, nix::sys::signal::Signal::SIGCONT)?;

    let why = wait_quarantined(&client, "bad")?;
    ensure!(why.contains(&position.to_string()), "the quarantine names the frame's position {position}: {why}");
    for round in 0..2 {
        let health = client.health()?;
        ensure!(health.healthy, "round {round}: rilld unhealthy because of one stream's bad frame: {}", health.detail);
        ensure!(health.detail.contains("quarantined"), "round {round}: health does not mention the quarantine: {}", health.detail);
        durable_publish(&client, "good", &options, format!("round {round}").as_bytes())?;
        // The ten durable messages before the bad frame replay whole.
        let mut sub = client.subscriber("bad", Start::Earliest)?;
        let mut got = Vec::new();
        // Then the bad frame: an error naming it, never a message.
        let err = loop {
            match sub.poll_blocking(16, Duration::from_secs(10), |m| got.push(m.payload.to_vec())) {
                Ok(0) => anyhow::bail!("round {round}: replay of the quarantined stream stalled after {} messages", got.len()),
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        ensure!(matches!(err, rill::PollError::Corrupt { position: p, .. } if p == position), "round {round}: {err}");
        ensure!(got.len() == 10 && got.iter().enumerate().all(|(i, p)| p == &vec![i as u8; 100]), "round {round}: replay differs");
        if round == 0 {
            drop(sub);
            d.kill9();
            d.spawn(deadline)?;
            let client2 = d.client()?;
            wait_quarantined(&client2, "bad").context("after the restart (the adopted ring still holds the bad frame)")?;
        }
    }
    d.ensure_alive()
}

/// A publisher that keeps rewriting the payload bytes of frames it has
/// committed (anything it can reach in its ring) while rilld archives
/// them: every batch that reaches the disk still verifies against its CRC
/// (rilld checksums a copy and writes that copy, never ring memory that a
/// publisher may change in between). Direct I/O and buffered writes.
#[test]
fn rewriting_committed_frames_never_puts_a_bad_batch_on_disk() -> Result<()> {
    for direct in [true, false] {
        let deadline = deadline();
        let disk = rill_tests::harness::TempRingDir::new_in(std::path::Path::new("/var/tmp"), "rewrite")?;
        // 4 KiB pages: the scribbler writes the ring with pwrite(2).
        let mut extra: Vec<String> = vec!["--no-huge-pages".into()];
        if !direct {
            extra.push("--buffered-io".into());
        }
        let d = Rilld::start_with_data_dir("rewrite", &extra, Some(disk.path()), deadline)?;
        let client = d.client()?;
        let options = StreamOptions::new().with_capacity(256 << 10).with_max_message_len(1024).with_persist(Some(Durability::None));
        let mut publ = client.publisher_with("scribbled", options)?;
        let ring = File::from(publ.ring().fd().context("ring fd")?.try_clone_to_owned()?);
        let mut word = [0u8; 8];
        ring.read_exact_at(&mut word, std::mem::offset_of!(Meta, data_offset) as u64)?;
        let data_offset = u64::from_le_bytes(word);
        let capacity = publ.ring().info().capacity;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scribbler = {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<u64> {
                // Payload bytes only (32 bytes into every 64-byte slot of a
                // 64-byte-aligned frame of the test's 32-byte payloads):
                // headers stay valid, so nothing is quarantined.
                let mut x = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for slot in (0..capacity).step_by(64) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        ring.write_all_at(&x.to_le_bytes(), data_offset + slot + 32)?;
                    }
                }
                Ok(x)
            })
        };
        let started = Instant::now();
        let mut last = 0;
        while started.elapsed() < Duration::from_secs(2) {
            match publ.offer(&[7u8; 32]) {
                Ok(p) => last = p,
                Err(rill::ClaimError::BackPressured) => std::thread::yield_now(),
                Err(e) => return Err(e.into()),
            }
        }
        publ.wait_durable(last, Duration::from_secs(30))?;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        scribbler.join().expect("scribbler")?;
        let mut batches = 0;
        for (first, path) in rill_store::list_segments(&disk.path().join("scribbled"))? {
            let bytes = std::fs::read(&path)?;
            let scan = rill_store::scan_segment(&bytes, first);
            ensure!(scan.damage.is_none(), "direct={direct}: {}: {}", path.display(), scan.damage.as_ref().map(ToString::to_string).unwrap_or_default());
            batches += scan.batches.len();
        }
        ensure!(batches > 10, "direct={direct}: only {batches} batches written");
        eprintln!("direct={direct}: {batches} batches on disk, every one verifies");
    }
    Ok(())
}
