//! Unit tests of the ring on heap memory (these also run under Miri).

use super::*;
use crate::frame::{message_span, HEADER_LEN};

fn cfg(capacity: u64, max: u32, policy: Policy) -> RingConfig {
    RingConfig { capacity, max_message_len: max, policy, slot_count: 4, pages: PagePreference::NormalOnly }
}

fn drain(sub: &mut Subscriber) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while sub.poll(64, |m| out.push(m.payload.to_vec())).unwrap() > 0 {}
    out
}

#[test]
fn offer_poll_in_order_across_wraps() {
    let ring = Ring::private(&cfg(4096, 512, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    let mut next = 0u32;
    for round in 0..200u32 {
        let len = (round as usize * 37) % 300 + 1;
        let msg: Vec<u8> = (0..len).map(|i| (i as u32 + round) as u8).collect();
        publ.offer(&msg).unwrap();
        let got = drain(&mut sub);
        assert_eq!(got, vec![msg]);
        next += 1;
    }
    assert_eq!(next, 200);
    assert!(ring.tail() > 4 * 4096, "wrapped several times");
}

#[test]
fn back_pressure_stops_at_slowest_subscriber() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.shared_publication().unwrap();
    let mut sent = 0;
    while publ.offer(&[7u8; 32]).is_ok() {
        sent += 1;
        assert!(sent < 1000, "publisher never back-pressured");
    }
    assert_eq!(publ.offer(&[7u8; 32]), Err(ClaimError::BackPressured));
    // A whole ring minus the clean-ahead header.
    assert_eq!(sent, (4096 - HEADER_LEN) / message_span(32));
    assert_eq!(drain(&mut sub).len(), sent);
    assert!(publ.offer(&[7u8; 32]).is_ok());
    drop(sub);
    // No subscribers: nothing holds the publisher back.
    for _ in 0..1000 {
        publ.offer(&[1u8; 32]).unwrap();
    }
}

#[test]
fn overwrite_reports_exact_overrun() {
    let ring = Ring::private(&cfg(4096, 256, Policy::Overwrite)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    for i in 0..500u32 {
        publ.offer(&i.to_le_bytes()).unwrap();
    }
    let mut got = Vec::new();
    while sub.poll(64, |m| got.push(u32::from_le_bytes(m.payload.try_into().unwrap()))).unwrap() > 0 {}
    assert!(sub.overrun_bytes() > 0);
    // Everything delivered is a suffix of what was sent, in order.
    assert_eq!(*got.last().unwrap(), 499);
    assert!(got.windows(2).all(|w| w[1] == w[0] + 1));
    let delivered_bytes = got.len() as u64 * message_span(4) as u64;
    assert_eq!(sub.position(), ring.tail());
    assert_eq!(delivered_bytes + sub.overrun_bytes(), ring.tail());
}

#[test]
fn batch_commits_together_and_pads_rest() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    let mut batch = publ.try_claim_batch(4 * message_span(10)).unwrap();
    assert!(batch.push(b"0123456789"));
    assert!(batch.push(b"abc"));
    assert!(sub.poll(10, |_| ()).unwrap() == 0, "nothing visible before commit");
    batch.commit().unwrap();
    assert_eq!(drain(&mut sub), vec![b"0123456789".to_vec(), b"abc".to_vec()]);
    assert_eq!(sub.position(), 4 * message_span(10) as u64);
    // Dropped batch: padding only.
    let mut batch = publ.try_claim_batch(2 * message_span(10)).unwrap();
    batch.push(b"lost");
    drop(batch);
    publ.offer(b"after").unwrap();
    assert_eq!(drain(&mut sub), vec![b"after".to_vec()]);
}

#[test]
fn dropped_claim_becomes_padding() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    {
        let mut c = publ.try_claim(5).unwrap();
        c.buf().copy_from_slice(b"never");
    }
    let mut c = publ.try_claim(3).unwrap();
    c.buf().copy_from_slice(b"yes");
    c.commit().unwrap();
    assert_eq!(drain(&mut sub), vec![b"yes".to_vec()]);
}

#[test]
fn too_long_is_refused() {
    let ring = Ring::private(&cfg(4096, 100, Policy::BackPressure)).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    assert_eq!(publ.offer(&[0; 101]), Err(ClaimError::TooLong { len: 101, max: 100 }));
    assert!(publ.offer(&[0; 100]).is_ok());
}

#[test]
fn oldest_start_sees_what_is_still_in_the_ring() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    for i in 0..10u8 {
        publ.offer(&[i]).unwrap();
    }
    let mut sub = ring.subscribe(Start::Oldest).unwrap();
    assert_eq!(drain(&mut sub).len(), 10);
    let mut late = ring.subscribe(Start::Latest).unwrap();
    assert!(drain(&mut late).is_empty());
}

#[test]
fn reclaimer_pads_abandoned_claim() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut rec = ring.reclaimer(1_000);
    let mut dead = ring.shared_publication().unwrap();
    let mut live = ring.shared_publication().unwrap();
    let claim = dead.try_claim(40).unwrap();
    std::mem::forget(claim); // the publisher "dies" holding its claim
    live.offer(b"behind the dead claim").unwrap();
    assert!(drain(&mut sub).is_empty(), "stuck behind the claim");
    assert_eq!(rec.do_work(0), 0);
    assert_eq!(rec.do_work(500), 0, "not yet timed out");
    assert_eq!(rec.do_work(1_000), message_span(40) as u64);
    assert_eq!(drain(&mut sub), vec![b"behind the dead claim".to_vec()]);
    assert_eq!(rec.do_work(2_000), 0);
}

/// A publisher that stalls past the timeout between claim and commit (not
/// dead: SIGSTOP, a page fault storm, a long computation in place) learns
/// at commit that its claim was padded over, and nobody sees the message.
#[test]
fn a_stalled_claim_padded_over_is_reported_at_commit_and_never_seen() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut rec = ring.reclaimer(1_000);
    let mut slow = ring.shared_publication().unwrap();
    let mut live = ring.shared_publication().unwrap();
    let mut claim = slow.try_claim(40).unwrap();
    let at = claim.position();
    claim.buf().fill(b's');
    live.offer(b"behind the stalled claim").unwrap();
    assert_eq!(rec.do_work(0), 0);
    assert_eq!(rec.do_work(1_000), message_span(40) as u64);
    assert_eq!(drain(&mut sub), vec![b"behind the stalled claim".to_vec()]);
    assert_eq!(claim.commit(), Err(ClaimError::Reclaimed { position: at }));
    assert_eq!(ring.is_padding_at(at), Some(true));
    // The stream goes on, and nobody reading from the start sees the message.
    live.offer(b"after").unwrap();
    assert_eq!(drain(&mut sub), vec![b"after".to_vec()]);
    let mut again = ring.subscribe(Start::Oldest).unwrap();
    assert_eq!(drain(&mut again), vec![b"behind the stalled claim".to_vec(), b"after".to_vec()]);
    assert_eq!(rec.do_work(2_000), 0);
}

/// The same for a batch stalled while being filled: the reclaimer pads the
/// frames it finds one timeout after another (here the first message and
/// the unused rest), the publisher fills more frames over that padding,
/// and at commit the whole batch turns out lost: every reader sees padding
/// from its first frame to its end, never one of its messages.
#[test]
fn a_stalled_batch_padded_in_part_is_lost_whole_and_never_seen() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut rec = ring.reclaimer(1_000);
    let mut slow = ring.shared_publication().unwrap();
    let mut live = ring.shared_publication().unwrap();
    let mut batch = slow.try_claim_batch(4 * message_span(40)).unwrap();
    assert!(batch.push(&[b'1'; 40]));
    live.offer(b"behind").unwrap();
    let (mut now, mut padded) = (0, 0);
    while padded < 4 * message_span(40) as u64 {
        now += 1_000;
        padded += rec.do_work(now);
        assert!(now < 100_000, "the reclaimer padded only {padded} bytes");
        if padded == message_span(40) as u64 {
            // Stalled again after the first frame was padded: fills more.
            assert!(batch.push(&[b'2'; 40]));
        }
    }
    assert!(batch.push(&[b'3'; 40]));
    assert_eq!(batch.commit(), Err(ClaimError::Reclaimed { position: 0 }));
    live.offer(b"after").unwrap();
    assert_eq!(drain(&mut sub), vec![b"behind".to_vec(), b"after".to_vec()]);
    let mut again = ring.subscribe(Start::Oldest).unwrap();
    assert_eq!(drain(&mut again), vec![b"behind".to_vec(), b"after".to_vec()]);
}

/// A claim that was pending a decision but committed in time keeps its
/// message: a reclaimer that finds it committed pads nothing.
#[test]
fn a_claim_committed_in_time_is_never_padded() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut rec = ring.reclaimer(1_000);
    let mut slow = ring.shared_publication().unwrap();
    let mut claim = slow.try_claim(8).unwrap();
    claim.buf().copy_from_slice(b"in time!");
    assert_eq!(rec.do_work(0), 0);
    claim.commit().unwrap();
    assert_eq!(rec.do_work(1_000), 0);
    assert_eq!(drain(&mut sub), vec![b"in time!".to_vec()]);
}

#[test]
fn detached_reader_copies_and_never_holds_back() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut det = ring.subscribe_detached(Start::Latest);
    let mut publ = ring.exclusive_publication().unwrap();
    for i in 0..1000u32 {
        publ.offer(&i.to_le_bytes()).unwrap();
    }
    let got = drain(&mut det);
    assert!(!got.is_empty() && det.overrun_bytes() > 0);
}

#[test]
fn corrupt_header_is_an_error_not_a_crash() {
    let ring = Ring::private(&cfg(4096, 256, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    publ.offer(b"x").unwrap();
    // Scribble an impossible length over the committed frame.
    ring.inner.mem.word(0).store(u64::from(u32::MAX) | (1 << 32), Ordering::Relaxed);
    let err = sub.poll(10, |_| panic!("must not deliver")).unwrap_err();
    assert!(matches!(err, PollError::Corrupt { position: 0, .. }), "{err}");
}

#[test]
fn slot_revoked_mid_read_is_reported_and_quarantined() {
    let ring = Ring::private(&cfg(4096, 512, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let slot = sub.slot().unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    for i in 0..3u8 {
        publ.offer(&[i; 40]).unwrap();
    }
    // Taken back while the handler reads the second message: the poll says
    // which one, and hands nothing after it.
    let mut seen = Vec::new();
    let err = sub
        .poll(16, |m| {
            seen.push(m.position);
            if seen.len() == 2 {
                ring.revoke_slot(slot);
            }
        })
        .unwrap_err();
    assert_eq!(seen.len(), 2);
    assert_eq!(err, PollError::RevokedDuringRead { slot, position: seen[1] });
    assert_eq!(sub.poll(16, |_| panic!("handed a message after revocation")).unwrap_err(), PollError::Revoked { slot });
    // Publishers no longer heed it...
    assert!(ring.subscribers().is_empty());
    // ...but its owner (this process) lives: not free for a new subscriber.
    #[cfg(not(miri))] // kill(pid, 0) is beyond Miri
    assert!(ring.free_revoked_slots().is_empty());
    let other = ring.subscribe(Start::Latest).unwrap();
    assert_ne!(other.slot(), Some(slot));
    drop(sub); // a revoked subscriber's drop leaves the slot alone
    assert_eq!(ring.slot_pid(slot), std::process::id());
}

#[test]
fn hold_mode_keeps_frames_until_released() {
    let ring = Ring::private(&cfg(4096, 512, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    sub.set_hold(true);
    let mut publ = ring.exclusive_publication().unwrap();
    let start = sub.position();
    for i in 0..10u8 {
        publ.offer(&[i; 200]).unwrap();
    }
    let mut seen = 0;
    sub.poll(64, |_| seen += 1).unwrap();
    assert_eq!(seen, 10);
    let end = sub.position();
    // Polled past, but held: the publisher stops a ring after `start`.
    let mut n = 0;
    while publ.offer(&[9; 200]).is_ok() {
        n += 1;
    }
    assert!(ring.tail() <= start + 4096, "publisher passed the held position");
    let (a, b) = sub.held_bytes(start, end);
    assert_eq!((a.len() + b.len()) as u64, end - start);
    assert_eq!(a[HEADER_LEN], 0, "first held frame's payload intact");
    sub.release_to(end);
    assert_eq!(sub.held_position(), end);
    assert!(publ.offer(&[9; 200]).is_ok(), "released space is reusable");
    let _ = n;
}

#[test]
fn fresh_ring_starts_at_a_recovered_position() {
    let ring = Ring::private(&cfg(4096, 512, Policy::BackPressure)).unwrap();
    assert!(ring.start_at(1000).is_err(), "unaligned");
    ring.start_at(1 << 20).unwrap();
    assert_eq!(ring.origin(), 1 << 20);
    // Nothing before the origin was ever in this ring: the oldest it holds
    // is the origin, not a lap boundary before it.
    assert_eq!(ring.subscribe(Start::Oldest).unwrap().position(), 1 << 20);
    // Also where the origin is not on a lap boundary (a log that ended at
    // 640,000 in a 4 KiB ring: the lap boundary 638,976 was never held).
    let other = Ring::private(&cfg(4096, 512, Policy::BackPressure)).unwrap();
    other.start_at(640_000).unwrap();
    assert_eq!(other.subscribe(Start::Oldest).unwrap().position(), 640_000);
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    assert!(ring.start_at(1 << 21).is_err(), "in use");
    let mut publ = ring.exclusive_publication().unwrap();
    assert_eq!(publ.offer(b"after recovery").unwrap(), 1 << 20);
    let mut got = Vec::new();
    sub.poll(8, |m| got.push((m.position, m.payload.to_vec()))).unwrap();
    assert_eq!(got, vec![(1 << 20, b"after recovery".to_vec())]);
}

/// Offers `[i; len]` until back-pressured (at most `max` times); returns
/// the positions.
fn fill(publ: &mut ExclusivePublication, len: usize, max: usize) -> Vec<u64> {
    let mut positions = Vec::new();
    while let Ok(p) = publ.offer(&vec![positions.len() as u8; len]) {
        positions.push(p);
        assert!(positions.len() <= max, "never back-pressured");
    }
    positions
}

#[test]
fn overwrite_holding_slot_back_pressures_and_ordinary_reader_is_overrun() {
    let ring = Ring::private(&cfg(4096, 256, Policy::Overwrite)).unwrap();
    let (slot, start) = ring.attach_holding(Start::Latest, std::process::id()).unwrap();
    let mut holder = ring.subscriber_on_slot(slot, start).unwrap();
    holder.set_hold(true);
    assert!(holder.is_holding());
    let mut slow = ring.subscribe(Start::Latest).unwrap();
    assert!(!slow.is_holding());
    let listed = ring.subscribers();
    assert_eq!(listed.iter().map(|s| (s.index, s.holding)).collect::<Vec<_>>(), [(slot, true), (slow.slot().unwrap(), false)]);
    let mut publ = ring.exclusive_publication().unwrap();
    // Held at the holding slot's position plus one ring, less the header of
    // slack every claim keeps, exactly as under back-pressure.
    let sent = fill(&mut publ, 32, 1000);
    assert_eq!(sent.len(), (4096 - HEADER_LEN) / message_span(32));
    assert_eq!(publ.offer(&[0; 32]), Err(ClaimError::BackPressured));
    assert!(ring.tail() <= start + 4096);
    // The holder reads every frame in place; polled past is still held.
    let mut got = Vec::new();
    while holder.poll(64, |m| got.push(m.position)).unwrap() > 0 {}
    assert_eq!(got, sent);
    assert_eq!(publ.offer(&[0; 32]), Err(ClaimError::BackPressured), "polled past, not released");
    // Release half: the limit moves by exactly that much.
    let half = sent[sent.len() / 2];
    holder.release_to(half);
    assert_eq!(ring.subscribers()[0].position, half);
    let more = fill(&mut publ, 32, 1000);
    assert_eq!(more.len() as u64, (half - start) / message_span(32) as u64);
    assert!(ring.tail() + HEADER_LEN as u64 <= half + 4096);
    // The ordinary reader, still at the start, was lapped and is told so;
    // what it got is intact and in order, and it never held anyone back.
    let mut seen = Vec::new();
    while slow.poll(64, |m| seen.push((m.position, m.payload[0]))).unwrap() > 0 {}
    assert!(slow.overrun_bytes() > 0);
    assert_eq!(slow.position(), ring.tail());
    let tagged = |v: &[u64]| v.iter().enumerate().map(|(i, &p)| (p, i as u8)).collect::<Vec<_>>();
    let all: Vec<(u64, u8)> = tagged(&sent).into_iter().chain(tagged(&more)).collect();
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert!(seen.iter().all(|m| all.contains(m)), "{seen:?} not all sent as such");
    assert_eq!(seen.len() as u64 * message_span(32) as u64 + slow.overrun_bytes(), ring.tail() - start);
    // Out of hold mode the slot is ordinary again: nothing holds the
    // publisher back any more.
    holder.set_hold(false);
    assert!(!holder.is_holding() && !ring.subscribers()[0].holding);
    for _ in 0..300 {
        publ.offer(&[1; 32]).unwrap();
    }
}

#[test]
fn a_reader_that_stops_on_overrun_loses_nothing_and_seeks_on() {
    let ring = Ring::private(&cfg(4096, 256, Policy::Overwrite)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    sub.set_stop_on_overrun(true);
    let mut publ = ring.exclusive_publication().unwrap();
    let positions: Vec<u64> = (0..300u32).map(|i| publ.offer(&i.to_le_bytes()).unwrap()).collect();
    // Lapped at 0: it stops there, hands out nothing, counts nothing lost.
    assert!(sub.has_data());
    assert_eq!(sub.poll(64, |_| panic!("handed a message after the overrun")).unwrap(), 0);
    assert_eq!((sub.overrun_at(), sub.position(), sub.overrun_bytes()), (Some(0), 0, 0));
    assert_eq!(sub.poll(64, |_| panic!("moved on by itself")).unwrap(), 0);
    // Its owner found messages 0..250 elsewhere: on from message 250.
    sub.seek(positions[250]);
    assert_eq!(sub.overrun_at(), None);
    let mut got = Vec::new();
    while sub.poll(64, |m| got.push(u32::from_le_bytes(m.payload.try_into().unwrap()))).unwrap() > 0 {}
    assert_eq!(got, (250..300).collect::<Vec<_>>());
    assert_eq!(sub.overrun_bytes(), 0);
}

#[test]
fn an_ordinary_overwrite_slot_can_become_a_holding_one() {
    let ring = Ring::private(&cfg(4096, 256, Policy::Overwrite)).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    for i in 0..200u32 {
        publ.offer(&i.to_le_bytes()).unwrap();
    }
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let start = sub.position();
    sub.set_hold(true);
    assert!(sub.is_holding() && ring.subscribers()[0].holding);
    let sent = fill(&mut publ, 32, 1000);
    assert!(ring.tail() <= start + 4096);
    let mut got = Vec::new();
    while sub.poll(64, |m| got.push(m.position)).unwrap() > 0 {}
    assert_eq!(got, sent);
    drop(sub);
    assert!(ring.subscribers().is_empty(), "dropping frees a holding slot too");
    assert!(publ.offer(&[0; 32]).is_ok());
}

/// A subscriber that joins a back-pressure ring at `Latest` while another
/// publisher's claim is still unfinished must not let publishers lap that
/// claim: its late commit would land in newer frames. (The join used to
/// start at the tail, past the claim, and the next limit refresh moved
/// `head` there.)
#[test]
fn a_latest_join_does_not_let_publishers_lap_an_unfinished_claim() {
    let capacity = 4096u64;
    let ring = Ring::private(&cfg(capacity, 256, Policy::BackPressure)).unwrap();
    let mut slow = ring.shared_publication().unwrap();
    let mut fast = ring.shared_publication().unwrap();
    let mut claim = slow.try_claim(100).unwrap();
    let unfinished = claim.position();
    fast.offer(&[1u8; 100]).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut end = 0;
    for _ in 0..1000 {
        match fast.offer(&[2u8; 100]) {
            Ok(p) => end = p + message_span(100) as u64,
            Err(ClaimError::BackPressured) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(end <= unfinished + capacity, "a publisher got to {end}, past one ring from the unfinished claim at {unfinished}");
    claim.buf().fill(3);
    claim.commit().unwrap();
    // The subscriber reads on from where it joined, every frame intact.
    let got = drain(&mut sub);
    assert!(!got.is_empty());
    assert!(got.iter().all(|m| m.len() == 100 && (m.iter().all(|&b| b == 2) || m.iter().all(|&b| b == 1) || m.iter().all(|&b| b == 3))));
}

#[test]
fn is_padding_at_tells_a_padded_claim_from_a_message() {
    let ring = Ring::private(&cfg(4096, 512, Policy::BackPressure)).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    let data = publ.offer(b"kept").unwrap();
    let claim = publ.try_claim(100).unwrap();
    let padded = claim.position();
    claim.abort(); // what the daemon's reclaimer makes of a stalled claim
    assert_eq!(ring.is_padding_at(data), Some(false));
    assert_eq!(ring.is_padding_at(padded), Some(true));
    assert_eq!(ring.is_padding_at(padded + 4096), None, "never held there");
}

/// A publisher may write the ring's counters. One that writes
/// `limit_granted` past anything a join can reach must not make the join
/// (which rilld runs on its control thread for every subscriber) spin for
/// ever: it gives up, says so, and gives the slot back. Found by the
/// hostile scribbler (tests/tests/hostile.rs): rilld's control thread spun
/// in this loop at 90% CPU, answering nobody.
#[test]
fn a_join_against_forged_counters_gives_up_and_frees_its_slot() {
    for policy in [Policy::BackPressure, Policy::Overwrite] {
        let ring = Ring::private(&cfg(4096, 512, policy)).unwrap();
        ring.inner.mem.counters().limit_granted.value.store(u64::MAX, Ordering::SeqCst);
        ring.inner.mem.counters().tail.value.store(1 << 40, Ordering::SeqCst);
        let r = ring.attach_holding(Start::Latest, 42);
        assert!(matches!(r, Err(SubscribeError::Unsettled { .. })), "{policy:?}: {r:?}");
        assert!(ring.subscribers().is_empty(), "{policy:?}: the slot was kept: {:?}", ring.subscribers());
    }
}

/// A co-publisher may write a shared ring's tail. Moved back below where
/// this publication last claimed (or below the durable position), a claim
/// there would overwrite published frames and could never be archived:
/// refused, and nothing written.
#[test]
fn a_shared_claim_behind_its_own_last_claim_or_the_durable_position_is_refused() {
    let ring = Ring::private(&cfg(4096, 256, Policy::Overwrite)).unwrap();
    let mut publ = ring.shared_publication().unwrap();
    let mut end = 0;
    for i in 0..5u8 {
        end = publ.offer(&[i; 40]).unwrap() + message_span(40) as u64;
    }
    ring.inner.mem.counters().tail.value.store(0, Ordering::SeqCst);
    assert_eq!(publ.offer(&[9; 40]), Err(ClaimError::Rewound { tail: 0, floor: end }));
    assert_eq!(ring.tail(), 0, "nothing claimed");
    // A publication that never claimed: the durable position is its floor.
    ring.inner.mem.counters().tail.value.store(end, Ordering::SeqCst);
    ring.set_durable_position(end);
    let mut fresh = ring.shared_publication().unwrap();
    ring.inner.mem.counters().tail.value.store(64, Ordering::SeqCst);
    assert_eq!(fresh.offer(&[9; 40]), Err(ClaimError::Rewound { tail: 64, floor: end }));
    // Back where it was, both go on.
    ring.inner.mem.counters().tail.value.store(end, Ordering::SeqCst);
    assert_eq!(fresh.offer(&[1; 40]), Ok(end));
    assert!(publ.offer(&[2; 40]).is_ok());
}

/// Any publisher may write the reclaimer's words. A forged `padded_end`
/// makes every commit look padded over: `offer` publishes again a bounded
/// number of times, then returns the error (it never blocks for ever).
#[test]
fn a_forged_padded_end_makes_offer_fail_not_spin() {
    let ring = Ring::private(&cfg(4096, 256, Policy::Overwrite)).unwrap();
    let mut publ = ring.shared_publication().unwrap();
    ring.inner.mem.counters().publishers.value.padded_end.store(u64::MAX, Ordering::SeqCst);
    assert!(matches!(publ.offer(&[3; 40]), Err(ClaimError::Reclaimed { .. })));
    let mut sub = ring.subscribe_detached(Start::Oldest);
    assert!(drain(&mut sub).is_empty(), "only padding was committed");
}

#[test]
fn copied_reads_hand_out_an_aligned_copy_not_the_ring() {
    let ring = Ring::private(&cfg(4096, 512, Policy::BackPressure)).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    assert!(!sub.copies_payloads(), "in place by default on a back-pressure ring");
    sub.set_copy_payloads(true);
    assert!(sub.copies_payloads());
    let mut copies = std::collections::HashSet::new();
    for round in 0..40u32 {
        // Lengths that are not multiples of 8, so the copy's last word is partial.
        let len = (round as usize * 37) % 300 + 1;
        let msg: Vec<u8> = (0..len).map(|i| (i as u32 * 7 + round) as u8).collect();
        publ.offer(&msg).unwrap();
        let n = sub
            .poll(4, |m| {
                assert_eq!(m.payload, &msg[..]);
                assert_eq!(m.payload.as_ptr() as usize % crate::frame::FRAME_ALIGNMENT, 0);
                copies.insert(m.payload.as_ptr() as usize);
            })
            .unwrap();
        assert_eq!(n, 1);
    }
    assert_eq!(copies.len(), 1, "every payload is handed out from the same copy buffer, not from the ring");
    sub.set_copy_payloads(false);
    let mut places = std::collections::HashSet::new();
    for _ in 0..4 {
        publ.offer(&[5u8; 100]).unwrap();
        sub.poll(4, |m| assert!(places.insert(m.payload.as_ptr() as usize), "in place again: a new address each time")).unwrap();
    }
}
