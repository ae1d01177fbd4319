//! Regression tests for defects the stress tests found in `rill-shm`
//! (each was a failing reproduction before its fix): publishers lapping an
//! unfinished claim, reclaimers that could miss an abandoned claim, and a
//! blocking reader writing into a read-only mapping.

#![forbid(unsafe_code)]

use rill_shm::frame::message_span;
use rill_shm::ring::{ClaimError, Message, PagePreference, Policy, Ring, RingConfig, Start, Subscriber};
use rill_tests::harness::{TempRingDir, Worker};
use std::time::{Duration, Instant};

fn ring(policy: Policy) -> Ring {
    let cfg = RingConfig { capacity: 4096, max_message_len: 256, policy, slot_count: 4, pages: PagePreference::NormalOnly };
    Ring::private(&cfg).expect("private ring")
}

fn drain(sub: &mut Subscriber) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while sub.poll(64, |m: Message<'_>| out.push(m.payload.to_vec())).expect("poll") > 0 {}
    out
}

/// Overwrite policy, two shared publications. A publisher that has claimed
/// but not yet committed (preempted, say) is lapped by another one; when it
/// resumes it writes its payload and commit word into memory that now holds
/// the other publisher's newer, committed frames. A subscriber then gets a
/// message whose bytes were never published as one (torn), which the
/// seqlock check cannot see because the tail did not move; and the late
/// commit overwrites the newer frame's commit word, so a subscriber that had
/// not read it yet waits there until the tail laps it again (forever, if
/// publishing has stopped).
///
/// In the 3x3 overwrite stress test this shows up within a second as a
/// damaged message (bad checksum).
#[test]
fn overwrite_lapping_an_uncommitted_claim_hands_out_torn_data() {
    let ring = ring(Policy::Overwrite);
    let sub = ring.subscribe(Start::Latest).unwrap();
    lap_an_uncommitted_claim(&ring, sub);
}

/// The same on a back-pressure ring whose only readers are detached (as
/// readers of a read-only mapping must be): with no slot to respect, a
/// publisher may claim up to a ring past the tail, over an unfinished claim.
#[test]
fn back_pressure_without_slots_lapping_an_uncommitted_claim_hands_out_torn_data() {
    let ring = ring(Policy::BackPressure);
    let sub = ring.subscribe_detached(Start::Latest);
    lap_an_uncommitted_claim(&ring, sub);
}

fn lap_an_uncommitted_claim(ring: &Ring, mut sub: Subscriber) {
    let mut slow = ring.shared_publication().unwrap();
    let mut fast = ring.shared_publication().unwrap();
    // `slow` claims a 64-byte message (frame [0, 96)) and is descheduled.
    let mut claim = slow.try_claim(64).unwrap();
    assert_eq!(claim.position(), 0);
    // `fast` may not lap it: it is back-pressured before its frames reach
    // the bytes of the unfinished claim.
    let refused = loop {
        match fast.offer(&[0xBB; 64]) {
            Ok(_) => assert!(ring.tail() <= 4096, "fast lapped the unfinished claim"),
            Err(e) => break e,
        }
    };
    assert_eq!(refused, ClaimError::BackPressured);
    // `slow` resumes, writes and commits; `fast` goes on.
    claim.buf().fill(0xAA);
    claim.commit().expect("no reclaimer runs here");
    while ring.tail() < 4096 + 96 {
        fast.offer(&[0xBB; 64]).unwrap();
    }
    let mut got = Vec::new();
    while sub.poll(8, |m| got.push((m.position, m.publisher_id, m.payload.to_vec()))).unwrap() > 0 {}
    assert!(!got.is_empty());
    for (position, id, payload) in &got {
        let want = if *id == fast.id() { 0xBB } else { 0xAA };
        assert!(payload.iter().all(|&b| b == want), "torn message at {position}: {payload:02x?}");
    }
}

/// A reclaimer starts at the tail as it is when created, so one created
/// after a publisher died holding a claim (a restarted daemon adopting its
/// rings, say) never looks at that claim: with back-pressure the ring stays
/// stuck forever.
#[test]
fn reclaimer_created_after_the_dead_claim_never_pads_it() {
    let ring = ring(Policy::BackPressure);
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut dead = ring.shared_publication().unwrap();
    let mut live = ring.shared_publication().unwrap();
    std::mem::forget(dead.try_claim(40).unwrap()); // dies holding it
    live.offer(b"behind the dead claim").unwrap();
    assert!(drain(&mut sub).is_empty(), "stuck behind the claim");

    let mut rec = ring.reclaimer(1_000);
    let padded: u64 = (0..10).map(|i| rec.do_work(i * 1_000_000)).sum();
    assert_eq!(padded, message_span(40) as u64, "the reclaimer never padded the abandoned claim");
    assert_eq!(drain(&mut sub), vec![b"behind the dead claim".to_vec()]);
}

/// A reclaimer whose cursor falls a lap behind the tail restarts at a lap
/// boundary, which can lie past an abandoned claim: it then never pads it.
/// With back-pressure the tail gets almost a lap past the stuck subscribers
/// before publishers stop, so a reclaimer that is not run between the claim
/// and the tail's next lap (one ring of traffic: well under a millisecond
/// at full speed) loses the claim, and the ring is stuck for good.
#[test]
fn reclaimer_that_falls_a_lap_behind_skips_the_dead_claim() {
    let ring = ring(Policy::BackPressure);
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut rec = ring.reclaimer(1_000);
    assert_eq!(rec.do_work(0), 0);
    let mut dead = ring.shared_publication().unwrap();
    let mut live = ring.shared_publication().unwrap();
    for _ in 0..20 {
        live.offer(&[1; 100]).unwrap();
    }
    assert_eq!(drain(&mut sub).len(), 20);
    let claim = dead.try_claim(40).unwrap();
    let at = claim.position();
    std::mem::forget(claim); // dies holding it
    let mut behind = 0;
    while live.offer(&[2; 100]).is_ok() {
        behind += 1;
    }
    assert!(drain(&mut sub).is_empty(), "stuck behind the claim at {at}");
    assert!(ring.tail() > at + 4096 / 2, "the live publisher ran on to the back-pressure limit");

    let padded: u64 = (1..10).map(|i| rec.do_work(i * 1_000_000)).sum();
    assert_eq!(padded, message_span(40) as u64, "the reclaimer never padded the claim at {at}");
    assert_eq!(drain(&mut sub).len(), behind);
}

/// A detached subscriber is the documented way to read a read-only mapping,
/// but `poll_blocking` (through `Subscriber::sleep`) increments the ring's
/// waiter count, a store into the read-only mapping: the process dies with
/// SIGSEGV from safe code.
#[test]
fn poll_blocking_on_a_read_only_mapping_does_not_crash() {
    let dir = TempRingDir::in_dev_shm("ro_futex").unwrap();
    let cfg = RingConfig { capacity: 64 << 10, max_message_len: 2048, policy: Policy::BackPressure, slot_count: 4, pages: PagePreference::NormalOnly };
    let ring = Ring::create_in(dir.path(), "ring", &cfg).unwrap();
    let path = dir.join("ring").display().to_string();
    let args: Vec<String> = ["subscribe", "--ring", &path, "--seed", "1", "--lossy", "1", "--readonly", "--wait", "futex"]
        .into_iter()
        .map(String::from)
        .chain(["--done-file".into(), dir.join("done").display().to_string()])
        .collect();
    let mut w = Worker::spawn(env!("CARGO_BIN_EXE_ring-worker"), "readonly-futex-subscriber", &args).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    w.wait_line("READY", deadline).unwrap();
    std::fs::write(dir.join("done"), b"").unwrap();
    let status = w.wait_exit(deadline).unwrap();
    drop(ring);
    use std::os::unix::process::ExitStatusExt;
    assert!(status.success(), "read-only subscriber using poll_blocking died: {status} (signal {:?})", status.signal());
}
