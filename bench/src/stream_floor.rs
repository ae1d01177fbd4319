//! The throughput floor: the same stream of messages between the same two
//! cores with the least protocol that can carry it, so ring throughput is
//! read as a ratio against what this machine does in the same run (a
//! shared VM's vCPUs can land on near or far cores from one run to the
//! next; the ratio survives that, the absolute number does not).
//!
//! Two threads of this process share a buffer of `capacity` bytes laid out
//! like the ring (each message takes `message_span(size)` bytes). The
//! producer writes the payload words, then the message's sequence number
//! into its first word with a release store; the consumer spins on that
//! word with acquire, checks the copy of the sequence in the payload, and
//! publishes how far it has read every 4096 messages (the producer caches
//! it, as a publication caches its limit). No claim state, no clean-ahead,
//! no headers: one release store per message on top of the payload.

use crate::child::{pin, preemptions, Stall};
use crate::report::Rate;
use anyhow::{bail, Context, Result};
use rill_shm::frame::message_span;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A counter alone on its 128-byte line.
#[repr(align(128))]
#[derive(Debug, Default)]
struct Cell(AtomicU64);

/// Consumer position published every this many messages (at most; a
/// quarter of the buffer for small buffers, so the producer never waits
/// for a position that is not coming).
const PUBLISH_EVERY: u64 = 4096;
/// Longest a side spins without progress before it gives up.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Shape of the stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) size: usize,
    pub(crate) capacity: u64,
    pub(crate) seconds: f64,
    pub(crate) cores: [usize; 2],
    pub(crate) spin_hint: bool,
}

/// Measures the floor: consumer on `cores[0]` (this thread), producer on
/// `cores[1]`.
pub(crate) fn measure(shape: Shape) -> Result<Rate> {
    let words_per_msg = message_span(shape.size) / 8;
    let payload_words = shape.size.div_ceil(8);
    let slots = (shape.capacity as usize / 8 / words_per_msg) as u64;
    let buf: Vec<AtomicU64> = (0..slots as usize * words_per_msg)
        .map(|_| AtomicU64::new(u64::MAX))
        .collect();
    if slots < 4 {
        bail!(
            "floor: capacity {} holds fewer than 4 messages of {} bytes",
            shape.capacity,
            shape.size
        );
    }
    let publish_every = PUBLISH_EVERY.min(slots / 4);
    let (consumed, stop) = (Cell::default(), Cell::default());
    let at = |i: u64| (i % slots) as usize * words_per_msg;
    std::thread::scope(|s| {
        let producer = s.spawn(|| -> Result<(u64, u64)> {
            pin(shape.cores[1])?;
            let before = preemptions();
            let deadline = Instant::now() + Duration::from_secs_f64(shape.seconds);
            let (mut i, mut limit, mut blocked) = (0u64, slots, 0u64);
            while Instant::now() < deadline {
                for _ in 0..1024 {
                    if i >= limit {
                        // SYNC(floor-consumed): pairs with the consumer's Release.
                        limit = consumed.0.load(Ordering::Acquire) + slots;
                        if i >= limit {
                            blocked += 1;
                            continue;
                        }
                    }
                    let w = at(i);
                    for k in 0..payload_words {
                        buf[w + 4 + k].store(if k == 0 { i } else { 7 }, Ordering::Relaxed);
                    }
                    // SYNC(floor-commit): pairs with the consumer's Acquire.
                    buf[w].store(i, Ordering::Release);
                    i += 1;
                }
            }
            // SYNC(floor-stop): everything before `i` was committed first.
            stop.0.store(i + 1, Ordering::Release);
            Ok((blocked, preemptions() - before))
        });
        let mut stall = Stall::new(STALL_TIMEOUT, shape.spin_hint);
        let (mut j, mut first, mut polls, mut empty) = (0u64, None, 0u64, 0u64);
        let before = preemptions();
        loop {
            polls += 1;
            let w = at(j);
            if buf[w].load(Ordering::Acquire) == j {
                if buf[w + 4].load(Ordering::Relaxed) != j {
                    bail!("floor: message {j} carries a wrong sequence");
                }
                first.get_or_insert_with(Instant::now);
                j += 1;
                if j.is_multiple_of(publish_every) {
                    consumed.0.store(j, Ordering::Release);
                }
                stall.progress();
            } else if stop.0.load(Ordering::Acquire) == j + 1 {
                break;
            } else {
                empty += 1;
                if producer.is_finished() && stop.0.load(Ordering::Acquire) == 0 {
                    break;
                }
                if first.is_some() {
                    stall.idle()?;
                } else {
                    stall
                        .idle_yield()
                        .context("waiting for the producer thread")?;
                }
            }
        }
        let last = Instant::now();
        let preempted = preemptions() - before;
        let (blocked, producer_preempted) = producer.join().expect("producer thread panicked")?;
        let first = first.context("floor: no message arrived")?;
        Ok(Rate {
            transport: "floor-store".to_owned(),
            mode: "store".to_owned(),
            size: shape.size,
            pages: "heap",
            msgs: j.saturating_sub(1),
            seconds: (last - first).as_secs_f64(),
            back_pressured: blocked,
            polls,
            empty_polls: empty,
            preempted: preempted + producer_preempted,
        })
    })
}
