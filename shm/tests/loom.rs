//! Model checks of the ring's claim/commit/poll and join protocols under
//! loom: every interleaving (up to a preemption bound) of a few threads on a
//! tiny ring built on loom atomics by `Ring::loom`.
//!
//! Run with:
//! ```text
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test -p rill-shm --test loom --release
//! ```
//!
//! The rings are 256 bytes with 40-byte payloads at most: a payload of up
//! to 32 bytes takes a 64-byte frame, a 33..=40-byte one a 96-byte frame, so
//! a ring holds four small frames and a mix of sizes forces a padding frame
//! at the wrap. Every payload is one byte value repeated (the message's
//! tag), so a torn read shows as a payload with two different bytes.
//!
//! Models: (a) two shared publishers and a subscriber across the wrap;
//! (b) an exclusive publisher and a subscriber across the wrap; (c) the
//! overwrite policy lapping a slow subscriber; (d) joins at `Latest` and
//! `Oldest` next to a back-pressured publisher; (e) stale payload that
//! looks like a commit; (f) a join racing a publisher's limit refresh;
//! (g) a holding slot (a persisted overwrite stream's archiver) joining an
//! overwrite ring while its publisher refreshes its limit to lap the frames
//! the joiner starts at; (h) rilld's reclaimer padding over a claim
//! whose publisher is in the middle of committing it.
//! Only (h) runs the commit's handshake with a reclaimer
//! (`Ring::loom_reclaimable`): its extra atomic operations multiply the
//! executions of every model (7x for (a)), and they only decide whether
//! the commit's stores are made, which (a) to (g) check.
//! They were seen to fail on deliberately broken rings: a `Relaxed` commit
//! store (b), a publisher that skips its second look at the slots (f), a
//! joiner that ignores the granted limit (d, f), and the old clean-ahead
//! commit protocol (e).
//!
//! # Waiting
//! A thread with nothing to do (a subscriber that found nothing, a
//! publisher that was back-pressured) blocks on a `loom::sync::Notify` that
//! the other side rings after it made progress, instead of spinning with
//! `yield_now`. Loom does not schedule yielding threads fairly: with two
//! threads spinning, it explores schedules in which they take turns forever
//! while a third, preempted in the middle of a claim, never runs again (a
//! yield is a free scheduling choice, not a preemption, so the bound does
//! not stop it). The notification is also a release/acquire edge, so a
//! reader that was woken sees the commit that woke it; the races that
//! matter are still explored, because every poll may also run while a
//! publisher is between its claim and its commit.
//!
//! # Bounds and limits
//! Each model sets a preemption bound (loom's `preemption_bound`, which
//! `LOOM_MAX_PREEMPTIONS` overrides): 2 for every model. Loom treats `SeqCst`
//! loads and stores as `AcqRel` (a documented limitation), so the join
//! protocol's Dekker handshake is checked more weakly than the hardware
//! runs it. Plain atomic stores are modelled as swaps (see `rill_shm`'s
//! `sync` module) to work around loom ordering a CAS wrongly against them.

#![cfg(loom)]
#![forbid(unsafe_code)]

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::{Arc, Notify};
use loom::thread;
use rill_shm::frame::message_span;
use rill_shm::ring::{ClaimError, Message, Policy, Ring, Start, Subscriber};
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};

const CAPACITY: u64 = 256;
const MAX_LEN: u32 = 40;
/// Waits one thread may make before the model calls it a livelock (each
/// wait ends only after another thread made progress, so real runs need a
/// handful).
const MAX_WAITS: usize = 100;

/// One message as a subscriber got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Got {
    tag: u8,
    len: usize,
    position: u64,
    publisher_id: u32,
}

/// One message as a publisher sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    tag: u8,
    len: usize,
    position: u64,
}

/// Checks the payload is untorn and records the message.
fn record(m: Message<'_>) -> Got {
    let tag = *m.payload.first().expect("test payloads are never empty");
    assert!(
        m.payload.iter().all(|&b| b == tag),
        "torn payload at position {}: {:?}",
        m.position,
        m.payload
    );
    Got { tag, len: m.payload.len(), position: m.position, publisher_id: m.publisher_id }
}

/// A notification ringing every waiter in `bells`.
fn ring_all(bells: &[Arc<Notify>]) {
    for b in bells {
        b.notify();
    }
}

/// Sends each `(tag, len)` of `plan`. While back-pressured, waits on `wake`
/// (rung by subscribers when they move). After each message, rings `bells`.
fn send_all(
    mut offer: impl FnMut(&[u8]) -> Result<u64, ClaimError>,
    plan: &[(u8, usize)],
    wake: &Notify,
    bells: &[Arc<Notify>],
) -> Vec<Sent> {
    plan.iter()
        .map(|&(tag, len)| {
            let payload = vec![tag; len];
            let mut waits = 0;
            let position = loop {
                match offer(&payload) {
                    Ok(p) => break p,
                    Err(ClaimError::BackPressured) => {
                        waits += 1;
                        assert!(waits < MAX_WAITS, "publisher back-pressured {waits} times: livelock");
                        wake.wait();
                    }
                    Err(e) => panic!("offer failed: {e}"),
                }
            };
            ring_all(bells);
            Sent { tag, len, position }
        })
        .collect()
}

/// One poll; rings `bells` if the subscriber moved (a publisher may be
/// waiting for room). Returns how many messages it delivered.
fn poll_into(sub: &mut Subscriber, out: &mut Vec<Got>, bells: &[Arc<Notify>]) -> usize {
    let before = sub.position();
    let n = sub.poll(8, |m| out.push(record(m))).expect("no corrupt frames");
    if sub.position() != before {
        ring_all(bells);
    }
    n
}

/// Polls until `out` holds `total` messages, waiting on `wake` (rung by
/// publishers) when there is nothing to read.
fn poll_until(sub: &mut Subscriber, out: &mut Vec<Got>, total: usize, wake: &Notify, bells: &[Arc<Notify>]) {
    let mut waits = 0;
    while out.len() < total {
        if poll_into(sub, out, bells) == 0 {
            waits += 1;
            assert!(
                waits < MAX_WAITS,
                "subscriber stuck at {} (tail {}) with {out:?}: livelock",
                sub.position(),
                sub.ring().tail()
            );
            wake.wait();
        }
    }
    assert_eq!(out.len(), total, "more messages than were published");
}

/// Checks `model` under loom with `preemptions` as the default bound, and
/// reports how many executions that took.
fn check(name: &'static str, preemptions: usize, model: impl Fn() + Sync + Send + 'static) {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(preemptions);
    }
    // Every atomic access is a branch; an execution here makes a few
    // hundred to a few thousand.
    b.max_branches = 20_000;
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let started = std::time::Instant::now();
    b.check(move || {
        let n = counter.fetch_add(1, StdOrdering::Relaxed) + 1;
        if n.is_multiple_of(100_000) {
            eprintln!("{name}: {n} executions, {:?}", started.elapsed());
        }
        model();
    });
    eprintln!(
        "{name}: {} executions (preemption bound {:?}) in {:?}",
        executions.load(StdOrdering::Relaxed),
        b.preemption_bound,
        started.elapsed()
    );
}

/// `position - start == delivered spans + padding + overrun`.
fn assert_accounting(sub: &Subscriber, start: u64, got: &[Got]) {
    let spans: u64 = got.iter().map(|g| message_span(g.len) as u64).sum();
    assert_eq!(
        sub.position() - start,
        spans + sub.padding_bytes() + sub.overrun_bytes(),
        "accounting: delivered {spans}, padding {}, overrun {}",
        sub.padding_bytes(),
        sub.overrun_bytes()
    );
}

/// Whether `got` is exactly `sent`, in order, with the right lengths and
/// positions.
fn assert_same(got: &[Got], sent: &[Sent]) {
    let got: Vec<_> = got.iter().map(|g| (g.tag, g.len, g.position)).collect();
    let sent: Vec<_> = sent.iter().map(|s| (s.tag, s.len, s.position)).collect();
    assert_eq!(got, sent);
}

fn bell() -> Arc<Notify> {
    Arc::new(Notify::new())
}

/// Publishes 8-, 8- and 40-byte messages (64 + 64 + 96 bytes) from this
/// thread and drains them, leaving the tail at 224: the next 64-byte claim
/// pads the last 32 bytes of the ring and wraps.
fn warm_up(ring: &Ring, sub: &mut Subscriber, got: &mut Vec<Got>) -> Vec<Sent> {
    let mut publ = ring.shared_publication().unwrap();
    publ.set_timestamps(false);
    let idle = Notify::new();
    let sent = send_all(|m| publ.offer(m), &[(0xA1, 8), (0xA2, 8), (0xA3, 40)], &idle, &[]);
    while poll_into(sub, got, &[]) > 0 {}
    assert_same(got, &sent);
    assert_eq!(ring.tail(), 224);
    sent
}

/// (a) Two shared publishers and one subscriber, across the wrap (a
/// padding frame at the end of the ring), back-pressure policy.
#[test]
fn shared_publishers_across_wrap() {
    check("shared_publishers_across_wrap", 2, || {
        let ring = Ring::loom(CAPACITY, MAX_LEN, Policy::BackPressure, 2);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let start = sub.position();
        let mut got = Vec::new();
        let mut sent = warm_up(&ring, &mut sub, &mut got);
        // Four 64-byte frames from 224: padding to 256, then 256..512; the
        // claim at 448 needs the subscriber past 256 (back-pressure).
        let plans: [&[(u8, usize)]; 2] = [&[(0x11, 8), (0x12, 16)], &[(0x21, 16), (0x22, 8)]];
        let sub_bell = bell();
        let pub_bells = [bell(), bell()];
        let mut ids = Vec::new();
        let handles: Vec<_> = plans
            .iter()
            .zip(&pub_bells)
            .map(|(&plan, wake)| {
                let mut publ = ring.shared_publication().unwrap();
                publ.set_timestamps(false);
                ids.push(publ.id());
                let (wake, bells) = (wake.clone(), [sub_bell.clone()]);
                thread::spawn(move || send_all(|m| publ.offer(m), plan, &wake, &bells))
            })
            .collect();
        poll_until(&mut sub, &mut got, 3 + 4, &sub_bell, &pub_bells);
        let per_publisher: Vec<Vec<Sent>> = handles.into_iter().map(|h| h.join().unwrap()).collect();

        let concurrent = &got[3..];
        for (i, (plan, sent_i)) in plans.iter().zip(&per_publisher).enumerate() {
            let mine: Vec<Got> = concurrent.iter().filter(|g| g.tag >> 4 == i as u8 + 1).copied().collect();
            // Exactly once, in this publisher's order, from this publisher.
            assert_same(&mine, sent_i);
            assert_eq!(mine.iter().map(|g| (g.tag, g.len)).collect::<Vec<_>>(), plan.to_vec());
            assert!(mine.iter().all(|g| g.publisher_id == ids[i]), "publisher id of {mine:?}");
            sent.extend_from_slice(sent_i);
        }
        // Stream order is position order.
        assert!(got.windows(2).all(|w| w[0].position < w[1].position), "{got:?}");
        sent.sort_by_key(|s| s.position);
        assert_same(&got, &sent);
        assert_eq!(concurrent[0].position, 256, "the first concurrent claim wraps");
        assert_eq!(sub.padding_bytes(), 32);
        assert_eq!(sub.overrun_bytes(), 0);
        assert_eq!(sub.position(), ring.tail());
        assert_accounting(&sub, start, &got);
    });
}

/// (b) An exclusive publisher and one subscriber from an empty ring across
/// the wrap: frames at 0, 64, 128 (96 bytes), padding 224..256, then 256
/// and 320. The claim at 256 waits for the subscriber (back-pressure).
#[test]
fn exclusive_publisher_across_wrap() {
    check("exclusive_publisher_across_wrap", 2, || {
        let ring = Ring::loom(CAPACITY, MAX_LEN, Policy::BackPressure, 1);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let start = sub.position();
        let mut publ = ring.exclusive_publication().unwrap();
        publ.set_timestamps(false);
        let id = publ.id();
        let plan = [(0x11, 8), (0x12, 16), (0x13, 40), (0x14, 8), (0x15, 16)];
        let (sub_bell, pub_bell) = (bell(), bell());
        let (wake, bells) = (pub_bell.clone(), [sub_bell.clone()]);
        let handle = thread::spawn(move || send_all(|m| publ.offer(m), &plan, &wake, &bells));
        let mut got = Vec::new();
        poll_until(&mut sub, &mut got, plan.len(), &sub_bell, &[pub_bell]);
        let sent = handle.join().unwrap();
        assert_same(&got, &sent);
        assert_eq!(sent.iter().map(|s| s.position).collect::<Vec<_>>(), [0, 64, 128, 256, 320]);
        assert!(got.iter().all(|g| g.publisher_id == id));
        assert_eq!(sub.padding_bytes(), 32);
        assert_eq!(sub.position(), ring.tail());
        assert_accounting(&sub, start, &got);
    });
}

/// Executions of `overwrite_laps_slow_subscriber` in which the subscriber
/// was overrun, and in which it got a message while the publisher ran:
/// both must happen in some execution, or the model checks nothing.
static OVERRUN_EXECUTIONS: AtomicUsize = AtomicUsize::new(0);
static CONCURRENT_DELIVERIES: AtomicUsize = AtomicUsize::new(0);

/// (c) Overwrite policy: one publisher laps a slow subscriber. The
/// subscriber never gets torn content, gets a subsequence of what was sent
/// in order, ends at the tail with the newest message, and accounts for
/// every byte it passed.
#[test]
fn overwrite_laps_slow_subscriber() {
    check("overwrite_laps_slow_subscriber", 2, || {
        let ring = Ring::loom(CAPACITY, MAX_LEN, Policy::Overwrite, 1);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let start = sub.position();
        let mut publ = ring.exclusive_publication().unwrap();
        publ.set_timestamps(false);
        // 0, 64 (96 bytes), 160, padding 224..256, 256: the last frame
        // overwrites the start of the first lap. An exclusive publisher is
        // never back-pressured under overwrite (its own frames are all
        // committed), so it never waits.
        let plan = [(1, 16), (2, 40), (3, 16), (4, 16), (5, 16)];
        let never = Arc::new(Notify::new());
        let handle = thread::spawn(move || send_all(|m| publ.offer(m), &plan, &never, &[]));
        let mut got = Vec::new();
        for _ in 0..3 {
            poll_into(&mut sub, &mut got, &[]);
        }
        if !got.is_empty() {
            CONCURRENT_DELIVERIES.fetch_add(1, StdOrdering::Relaxed);
        }
        let sent = handle.join().unwrap();
        while poll_into(&mut sub, &mut got, &[]) > 0 {}

        // A subsequence of what was sent, in order, each message intact.
        let mut rest = sent.iter();
        for g in &got {
            assert!(
                rest.any(|s| (s.tag, s.len, s.position) == (g.tag, g.len, g.position)),
                "{g:?} is not in order in {sent:?} (got {got:?})"
            );
        }
        assert_eq!(got.last().map(|g| g.tag), Some(5), "the newest message is always delivered: {got:?}");
        assert_eq!(sub.position(), ring.tail());
        assert_accounting(&sub, start, &got);
        if sub.overrun_bytes() > 0 {
            OVERRUN_EXECUTIONS.fetch_add(1, StdOrdering::Relaxed);
        }
    });
    assert!(OVERRUN_EXECUTIONS.load(StdOrdering::Relaxed) > 0, "no execution overran the subscriber");
    assert!(CONCURRENT_DELIVERIES.load(StdOrdering::Relaxed) > 0, "no execution read while publishing");
}

/// Executions of the `Oldest` join model that started behind the tail.
static JOINED_BEHIND_TAIL: AtomicUsize = AtomicUsize::new(0);

/// (d) A subscriber joins while a publisher sits at the back-pressure limit
/// of an older, slow subscriber that a third thread drains. From its start
/// on, the joiner gets every message, in order, untorn: exactly those sent
/// at or after its start position.
fn join_near_limit(how: Start) {
    let name = match how {
        Start::Latest => "join_latest_near_back_pressure_limit",
        Start::Oldest => "join_oldest_near_back_pressure_limit",
    };
    check(name, 2, move || {
        let ring = Ring::loom(CAPACITY, MAX_LEN, Policy::BackPressure, 2);
        let mut slow = ring.subscribe(Start::Latest).unwrap();
        let mut publ = ring.exclusive_publication().unwrap();
        publ.set_timestamps(false);
        let (pub_bell, slow_bell, joiner_bell) = (bell(), bell(), bell());
        // Three 64-byte frames: the next claim (192..256, plus the 32 bytes
        // a claim keeps free after itself) needs the slow subscriber past 0.
        let mut sent = send_all(|m| publ.offer(m), &[(0xA1, 16), (0xA2, 16), (0xA3, 16)], &pub_bell, &[]);
        assert_eq!(publ.offer(&[0xFF; 16]), Err(ClaimError::BackPressured));
        let done = Arc::new(AtomicBool::new(false));
        let publisher = {
            let (done, wake, bells) = (done.clone(), pub_bell.clone(), [slow_bell.clone(), joiner_bell.clone()]);
            thread::spawn(move || {
                let sent = send_all(|m| publ.offer(m), &[(0xB1, 16), (0xB2, 16)], &wake, &bells);
                // SYNC: pairs with the joiner's Acquire load: every commit is
                // visible to it once it sees `done`.
                done.store(true, Ordering::Release);
                ring_all(&bells);
                sent
            })
        };
        let drainer = {
            let (wake, bells) = (slow_bell.clone(), [pub_bell.clone()]);
            thread::spawn(move || {
                let mut got = Vec::new();
                poll_until(&mut slow, &mut got, 5, &wake, &bells);
                got
            })
        };

        let mut joiner = ring.subscribe(how).unwrap();
        // The publisher may have seen our half-made slot (taken, at a stale
        // position) and be waiting: tell it to look again.
        pub_bell.notify();
        let start = joiner.position();
        if how == Start::Latest {
            assert!(start >= 192, "Latest starts at the tail or later, not {start}");
        }
        let mut got = Vec::new();
        let mut waits = 0;
        loop {
            let finished = done.load(Ordering::Acquire);
            let n = poll_into(&mut joiner, &mut got, std::slice::from_ref(&pub_bell));
            if finished && n == 0 {
                break;
            }
            if n == 0 {
                waits += 1;
                assert!(waits < MAX_WAITS, "joiner stuck at {} with {got:?}: livelock", joiner.position());
                joiner_bell.wait();
            }
        }
        sent.extend(publisher.join().unwrap());
        assert_same(&drainer.join().unwrap(), &sent);
        let expected: Vec<Sent> = sent.iter().copied().filter(|s| s.position >= start).collect();
        assert_same(&got, &expected);
        assert_eq!(joiner.position(), ring.tail());
        assert_accounting(&joiner, start, &got);
        if start < 192 {
            JOINED_BEHIND_TAIL.fetch_add(1, StdOrdering::Relaxed);
        }
    });
}

/// (d) with `Start::Latest`.
#[test]
fn join_latest_near_back_pressure_limit() {
    join_near_limit(Start::Latest);
}

/// (d) with `Start::Oldest`; some executions must start behind the tail
/// at join time, or the model does not exercise `Oldest`.
#[test]
fn join_oldest_near_back_pressure_limit() {
    join_near_limit(Start::Oldest);
    assert!(JOINED_BEHIND_TAIL.load(StdOrdering::Relaxed) > 0, "Oldest never started behind the tail");
}

/// (e) Two shared publishers claim back to back while the header where the
/// first one's frame ends still holds payload from the previous lap with
/// that position in the position word and a plausible length word (as a
/// message embedding a frame or a position would; it cannot hold the
/// salted commit tag). The subscriber gets exactly the two messages sent:
/// never a ghost made of old payload, never an error, and it is never left
/// waiting at a frame whose publisher has finished.
///
/// A regression model: with the commit protocol before the salted tag
/// (CLEAN written ahead into the next frame's position word, by CAS in
/// shared mode) it failed. The first publisher loaded the word (stale 320)
/// and the tail (still 320, its own), decided to clean, and was preempted
/// before its CAS; the second claimed 320, wrote CLAIMED and committed 320;
/// the first one's CAS(320 -> CLEAN(320)) then succeeded on the commit
/// value and erased it, and the subscriber waited at 320 forever.
#[test]
fn shared_publishers_over_a_stale_commit_lookalike() {
    check("shared_publishers_over_a_stale_commit_lookalike", 2, || {
        let ring = Ring::loom(CAPACITY, MAX_LEN, Policy::BackPressure, 1);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        // Lap 0: an empty message at 0 (32 bytes), then a 40-byte one at 32
        // whose payload covers ring offsets 64..104; its bytes 0..8 (offset
        // 64) read as the header of a 5-byte data frame and bytes 8..16
        // (offset 72, the commit word of position 320) as 320. Then two
        // 64-byte frames take the tail to 256.
        let mut forged = [0x5Au8; 40];
        forged[..8].copy_from_slice(&(37u64 | 1 << 32).to_le_bytes());
        forged[8..16].copy_from_slice(&320u64.to_le_bytes());
        {
            let mut warm = ring.shared_publication().unwrap();
            warm.set_timestamps(false);
            let mut n = 0;
            for m in [&[][..], &forged[..], &[0xA1; 16][..], &[0xA2; 16][..]] {
                warm.offer(m).unwrap();
                sub.poll(8, |_| n += 1).unwrap();
            }
            assert_eq!((n, sub.position(), ring.tail()), (4, 256, 256));
        }
        // Lap 1: frames at 256 and 320, by whichever publisher claims first.
        let sub_bell = bell();
        let finished = Arc::new(loom::sync::atomic::AtomicUsize::new(0));
        let handles: Vec<_> = [0x11u8, 0x21]
            .into_iter()
            .map(|tag| {
                let mut publ = ring.shared_publication().unwrap();
                publ.set_timestamps(false);
                let (bells, finished) = ([sub_bell.clone()], finished.clone());
                thread::spawn(move || {
                    let never = Notify::new();
                    let sent = send_all(|m| publ.offer(m), &[(tag, 16)], &never, &[]);
                    // SYNC: pairs with the subscriber's Acquire load below.
                    finished.fetch_add(1, Ordering::Release);
                    ring_all(&bells);
                    sent
                })
            })
            .collect();
        let mut got = Vec::new();
        let mut waits = 0;
        loop {
            let all_done = finished.load(Ordering::Acquire) == 2;
            let n = poll_into(&mut sub, &mut got, &[]);
            if got.len() >= 2 || (all_done && n == 0) {
                break;
            }
            if n == 0 {
                waits += 1;
                assert!(waits < MAX_WAITS, "subscriber stuck at {}: livelock", sub.position());
                sub_bell.wait();
            }
        }
        let mut sent: Vec<Sent> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        sent.sort_by_key(|s| s.position);
        assert_same(&got, &sent);
        assert_eq!(sub.position(), ring.tail(), "both publishers finished, yet the subscriber waits");
    });
}

/// (f) The join handshake itself: a subscriber joins at `Oldest` while a
/// publisher refreshes its limit, with an older subscriber already far
/// ahead (so the granted limit lags it). The publisher's first look at the
/// slots may miss the joiner, and the joiner may read the granted limit
/// before the publisher raises it; the publisher's second look must then
/// see the joiner and hold back, so the joiner still gets every message
/// from its start, untorn. (The joiner runs in the spawned thread and the
/// publisher in the model's main thread, which lets loom reach that
/// interleaving within two preemptions.)
#[test]
fn join_oldest_races_limit_refresh() {
    check("join_oldest_races_limit_refresh", 2, || {
        let ring = Ring::loom(CAPACITY, MAX_LEN, Policy::BackPressure, 2);
        let mut ahead = ring.subscribe(Start::Latest).unwrap();
        let mut publ = ring.exclusive_publication().unwrap();
        publ.set_timestamps(false);
        let idle = Notify::new();
        // Frames at 0, 64, 128, read by `ahead`: it sits at 192 while the
        // granted limit is still 256 (from when it was at 0).
        let mut sent = send_all(|m| publ.offer(m), &[(0xA1, 16), (0xA2, 16), (0xA3, 16)], &idle, &[]);
        let mut seen = Vec::new();
        while poll_into(&mut ahead, &mut seen, &[]) > 0 {}
        assert_eq!(ahead.position(), 192);
        let (pub_bell, joiner_bell) = (bell(), bell());
        let done = Arc::new(AtomicBool::new(false));
        let joiner = {
            let (ring, done, wake, bells) = (ring.clone(), done.clone(), joiner_bell.clone(), [pub_bell.clone()]);
            thread::spawn(move || {
                let mut joiner = ring.subscribe(Start::Oldest).unwrap();
                // A publisher may have seen our half-made slot (taken, at a
                // stale position) and be waiting: tell it to look again.
                ring_all(&bells);
                let start = joiner.position();
                let mut got = Vec::new();
                let mut waits = 0;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let n = poll_into(&mut joiner, &mut got, &bells);
                    if finished && n == 0 {
                        break;
                    }
                    if n == 0 {
                        waits += 1;
                        assert!(waits < MAX_WAITS, "joiner stuck at {} with {got:?}: livelock", joiner.position());
                        wake.wait();
                    }
                }
                assert_eq!(joiner.position(), ring.tail());
                (start, got)
            })
        };
        // 192..256 needs a new limit; 256..320 overwrites 0..64.
        let bells = [joiner_bell.clone()];
        sent.extend(send_all(|m| publ.offer(m), &[(0xB1, 16), (0xB2, 16)], &pub_bell, &bells));
        // SYNC: pairs with the joiner's Acquire load.
        done.store(true, Ordering::Release);
        ring_all(&bells);
        let (start, got) = joiner.join().unwrap();
        let expected: Vec<Sent> = sent.iter().copied().filter(|s| s.position >= start).collect();
        assert_same(&got, &expected);
        drop(ahead);
    });
}

/// Executions of the holding-join model whose joiner started before the
/// publisher's last refresh could pass it (at 0, the oldest frame).
static HELD_FROM_ZERO: AtomicUsize = AtomicUsize::new(0);

/// (g) The join handshake of a holding slot on an overwrite ring (the
/// archiver of a persisted overwrite stream): it attaches at `Oldest`
/// while the publisher, whose frames at 0, 64, 128 nobody holds, refreshes
/// its limit to lap them. Either the joiner sees the new limit and starts
/// later, or the publisher's second look sees the holding slot and stops a
/// ring past it: the joiner reads every message from its start in place,
/// untorn, exactly once. Seen to fail with a publisher that skips its
/// second look under the overwrite policy, with a joiner that ignores the
/// granted limit, and with a joiner that reads it with a plain SeqCst load
/// instead of an RMW (loom models SeqCst loads as Acquire, so the
/// handshake must hold by release/acquire alone; it does with the RMW).
#[test]
fn holding_join_races_overwrite_limit_refresh() {
    check("holding_join_races_overwrite_limit_refresh", 2, || {
        let ring = Ring::loom(CAPACITY, MAX_LEN, Policy::Overwrite, 2);
        let mut publ = ring.exclusive_publication().unwrap();
        publ.set_timestamps(false);
        let idle = Notify::new();
        // Frames at 0, 64, 128; the publisher's limit is 256 (head 0).
        let mut sent = send_all(|m| publ.offer(m), &[(0xA1, 16), (0xA2, 16), (0xA3, 16)], &idle, &[]);
        let (pub_bell, joiner_bell) = (bell(), bell());
        let done = Arc::new(AtomicBool::new(false));
        let joiner = {
            let (ring, done, wake, bells) = (ring.clone(), done.clone(), joiner_bell.clone(), [pub_bell.clone()]);
            thread::spawn(move || {
                let (slot, start) = ring.attach_holding(Start::Oldest, 7).unwrap();
                let mut joiner = ring.subscriber_on_slot(slot, start).unwrap();
                assert!(joiner.is_holding());
                // A publisher may have seen our slot before it was done
                // (holding, at a stale position) and be waiting: look again.
                ring_all(&bells);
                let mut got = Vec::new();
                let mut waits = 0;
                loop {
                    let finished = done.load(Ordering::Acquire);
                    let n = poll_into(&mut joiner, &mut got, &bells);
                    if finished && n == 0 {
                        break;
                    }
                    if n == 0 {
                        waits += 1;
                        assert!(waits < MAX_WAITS, "holding joiner stuck at {} with {got:?}: livelock", joiner.position());
                        wake.wait();
                    }
                }
                assert_eq!(joiner.position(), ring.tail());
                assert_eq!(joiner.overrun_bytes(), 0);
                (start, got)
            })
        };
        // 192..256 needs a new limit; 256..320 and 320..384 overwrite 0..128.
        let bells = [joiner_bell.clone()];
        sent.extend(send_all(|m| publ.offer(m), &[(0xB1, 16), (0xB2, 16), (0xB3, 16)], &pub_bell, &bells));
        // SYNC: pairs with the joiner's Acquire load.
        done.store(true, Ordering::Release);
        ring_all(&bells);
        let (start, got) = joiner.join().unwrap();
        let expected: Vec<Sent> = sent.iter().copied().filter(|s| s.position >= start).collect();
        assert_same(&got, &expected);
        if start == 0 {
            HELD_FROM_ZERO.fetch_add(1, StdOrdering::Relaxed);
        }
    });
    assert!(HELD_FROM_ZERO.load(StdOrdering::Relaxed) > 0, "the holding joiner never started at the oldest frame");
}

/// Executions of `reclaimer_races_a_stalled_commit` in which the claim was
/// padded over, and in which it was published: both must happen.
static RECLAIMED_EXECUTIONS: AtomicUsize = AtomicUsize::new(0);
static PUBLISHED_EXECUTIONS: AtomicUsize = AtomicUsize::new(0);

/// (h) A publisher commits a claim while the reclaimer (timeout 0, so it
/// decides to pad on its second look) pads over it, and a subscriber reads
/// meanwhile. Either the commit succeeds and every reader gets the message,
/// or it returns `Reclaimed` and no reader ever gets it; the stream goes on
/// either way. Seen to fail with a publisher that skips its check (the
/// old protocol: the reclaimer padded a frame a reader had already taken,
/// and the publisher was told nothing), and with a reclaimer that looks at
/// the tag before the position word (it took a committed frame for one
/// left over from fresh memory).
#[test]
fn reclaimer_races_a_stalled_commit() {
    check("reclaimer_races_a_stalled_commit", 2, || {
        let ring = Ring::loom_reclaimable(CAPACITY, MAX_LEN, Policy::BackPressure, 2);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let mut publ = ring.shared_publication().unwrap();
        publ.set_timestamps(false);
        let mut reclaimer = ring.reclaimer(0);
        let sub_bell = bell();
        let publisher = {
            let bells = [sub_bell.clone()];
            thread::spawn(move || {
                let mut batch = publ.try_claim_batch(message_span(8)).unwrap();
                assert!(batch.push(&[0x5A; 8]));
                let result = batch.commit();
                ring_all(&bells);
                result
            })
        };
        let padder = {
            let bells = [sub_bell.clone()];
            thread::spawn(move || {
                let padded = reclaimer.do_work(0) + reclaimer.do_work(1);
                ring_all(&bells);
                padded
            })
        };
        // Reads while both run; takes whatever it finds committed.
        let mut got = Vec::new();
        poll_into(&mut sub, &mut got, &[]);
        let result = publisher.join().unwrap();
        let padded = padder.join().unwrap();
        poll_into(&mut sub, &mut got, &[]);
        assert_eq!(sub.position(), message_span(8) as u64, "the subscriber is past the frame either way");
        match result {
            Ok(position) => {
                assert_eq!(position, 0);
                assert_eq!(padded, 0, "padded over a published message");
                assert_eq!(got.iter().map(|g| (g.tag, g.position)).collect::<Vec<_>>(), [(0x5A, 0)]);
                PUBLISHED_EXECUTIONS.fetch_add(1, StdOrdering::Relaxed);
            }
            Err(ClaimError::Reclaimed { position }) => {
                assert_eq!(position, 0);
                assert!(got.is_empty(), "a reader got a message whose publisher was told it was lost: {got:?}");
                assert_eq!(sub.padding_bytes(), message_span(8) as u64);
                RECLAIMED_EXECUTIONS.fetch_add(1, StdOrdering::Relaxed);
            }
            Err(e) => panic!("commit failed: {e}"),
        }
    });
    assert!(RECLAIMED_EXECUTIONS.load(StdOrdering::Relaxed) > 0, "the reclaimer never won");
    assert!(PUBLISHED_EXECUTIONS.load(StdOrdering::Relaxed) > 0, "the publisher never won");
}
