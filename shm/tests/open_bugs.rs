//! Regression tests for defects found while model-checking and
//! property-testing the ring (each was a failing reproduction before its
//! fix in a4e0f20): a shared publication's clean-ahead suppressed by stale
//! payload that looked like a commit (since 5c39a53 there is no clean-ahead:
//! a salted commit tag makes stale payload unable to pass for a commit; the
//! test still pins the behaviour), and overwrite-policy slots missing from
//! `Ring::subscribers()`. Each defect comes with a twin that always passed,
//! pinning down where the defect was.

#![cfg(not(loom))]
#![forbid(unsafe_code)]

use rill_shm::frame::HEADER_LEN;
use rill_shm::ring::{PagePreference, Policy, Ring, RingConfig, Start};

fn ring(policy: Policy) -> Ring {
    let cfg = RingConfig { capacity: 4096, max_message_len: 992, policy, slot_count: 2, pages: PagePreference::NormalOnly };
    Ring::private(&cfg).expect("private ring")
}

/// Shared publication: clean-ahead must not be skipped because the stale
/// word from the previous lap *looks like* a commit of the next position.
///
/// `Publication::clean_ahead` (shared mode) used to load the commit word at
/// `end` and skip the CAS when it already equalled `end`, `CLAIMED(end)` or
/// `CLEAN(end)`, assuming only the next claimer could have written those.
/// But the word still holds whatever the previous lap left there, which
/// may be payload bytes; payload that contains the little-endian `u64`
/// `end` at that offset (a frame or position embedded in a message, as a
/// relay or replicator would carry) suppressed the clean. A subscriber
/// reaching `end` then saw "committed", read the rest of the old payload as
/// a header, delivered a message nobody published, and moved past the
/// tail. An exclusive publication cleans unconditionally.
#[test]
fn shared_clean_ahead_skipped_by_stale_payload_delivers_a_ghost_message() {
    let ring = ring(Policy::BackPressure);
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.shared_publication().unwrap();
    let mut got: Vec<Vec<u8>> = Vec::new();

    // Lap 0: a 100-byte message at 0. Its payload starts at ring offset 32,
    // so payload[32..40] is ring offset 64 and payload[40..48] offset 72:
    // the header (length/kind word, commit word) of a frame at 4096 + 64.
    let mut m = vec![0x55u8; 100];
    let data_frame_of_5_bytes: u64 = (HEADER_LEN as u64 + 5) | (1 << 32);
    m[32..40].copy_from_slice(&data_frame_of_5_bytes.to_le_bytes());
    m[40..48].copy_from_slice(&(4096u64 + 64).to_le_bytes());
    publ.offer(&m).unwrap();
    // Fill the rest of lap 0, draining as we go.
    while ring.tail() + 64 <= 4096 {
        publ.offer(&[1u8; 8]).unwrap();
        sub.poll(100, |x| got.push(x.payload.to_vec())).unwrap();
    }
    sub.poll(100, |x| got.push(x.payload.to_vec())).unwrap();
    assert_eq!(sub.position(), ring.tail());
    let before = got.len();

    // Lap 1: one real message at 4096 (frame [4096, 4160)); clean-ahead
    // at 4160 finds 4160 in the stale payload and skips.
    publ.offer(b"real").unwrap();
    sub.poll(100, |x| got.push(x.payload.to_vec())).unwrap();

    assert_eq!(&got[before..], &[b"real".to_vec()], "only the published message");
    assert!(sub.position() <= ring.tail(), "subscriber at {} past the tail {}", sub.position(), ring.tail());
}

/// The same stale payload does nothing to an exclusive publication, which
/// cleans ahead unconditionally (this one always passed: the defect above
/// was in the shared path only).
#[test]
fn exclusive_clean_ahead_ignores_stale_payload() {
    let ring = ring(Policy::BackPressure);
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    let mut publ = ring.exclusive_publication().unwrap();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut m = vec![0x55u8; 100];
    m[32..40].copy_from_slice(&((HEADER_LEN as u64 + 5) | (1 << 32)).to_le_bytes());
    m[40..48].copy_from_slice(&(4096u64 + 64).to_le_bytes());
    publ.offer(&m).unwrap();
    while ring.tail() + 64 <= 4096 {
        publ.offer(&[1u8; 8]).unwrap();
        sub.poll(100, |x| got.push(x.payload.to_vec())).unwrap();
    }
    sub.poll(100, |x| got.push(x.payload.to_vec())).unwrap();
    let before = got.len();
    publ.offer(b"real").unwrap();
    sub.poll(100, |x| got.push(x.payload.to_vec())).unwrap();
    assert_eq!(&got[before..], &[b"real".to_vec()]);
    assert_eq!(sub.position(), ring.tail());
}

/// Overwrite policy: a subscriber's slot must be counted in `slot_hwm`, so
/// that `Ring::subscribers()` lists it.
///
/// `Subscriber::attach` used to return early for non-back-pressure rings,
/// before the `slot_hwm.fetch_max` that the back-pressure join loop does.
/// `subscribers()` scans only `slots[..slot_hwm]`, so on an overwrite ring
/// the daemon and CLI never saw subscribers (positions, heartbeats, overrun
/// counts), `reap_dead_subscribers` never freed the slot of a dead one
/// (slots leaked until `NoFreeSlot`), and the reclaimer did not look where
/// they waited.
#[test]
fn overwrite_subscribers_are_listed() {
    let ring = ring(Policy::Overwrite);
    let sub = ring.subscribe(Start::Latest).unwrap();
    let listed = ring.subscribers();
    assert_eq!(listed.len(), 1, "the live subscriber is listed: {listed:?}");
    assert_eq!(Some(listed[0].index), sub.slot());
}

/// The back-pressure twin of the test above (always passed).
#[test]
fn back_pressure_subscribers_are_listed() {
    let ring = ring(Policy::BackPressure);
    let sub = ring.subscribe(Start::Latest).unwrap();
    let listed = ring.subscribers();
    assert_eq!(listed.len(), 1, "the live subscriber is listed: {listed:?}");
    assert_eq!(Some(listed[0].index), sub.slot());
}
