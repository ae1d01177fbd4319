//! Property tests of the ring and the frame parser, single-threaded on heap
//! memory (`Ring::private`), so they also run under Miri.
//!
//! The ring property drives random rings (capacities 4 KiB..=256 KiB, any
//! valid `max_message_len`, either policy) with random sequences of
//! publishes (offer, try_claim/buf/commit, try_claim_batch/push|claim/commit,
//! dropped claims and batches) from an exclusive publication or two shared
//! ones, interleaved with polls of one or two subscribers (the second one
//! joining and leaving at random). It checks, after every poll:
//! * order: positions strictly increase; under back-pressure every message
//!   at or after a subscriber's start arrives, none skipped;
//! * content: payload, length and publisher id are those that were sent;
//! * accounting: `position - start == spans delivered + padding + overrun`.
//!
//! `PROPTEST_CASES` sets the number of cases (default 256; under Miri keep
//! it small, e.g. 4, and forward it with `-Zmiri-env-forward`).

#![cfg(not(loom))]
#![forbid(unsafe_code)]

use proptest::prelude::*;
use rill_shm::frame::{message_span, parse_frame, FrameError, FrameHeader, FrameKind, HEADER_LEN};
use rill_shm::ring::{
    ClaimError, ExclusivePublication, PagePreference, Policy, Ring, RingConfig, SharedPublication, Start,
    Subscriber,
};
use std::collections::BTreeMap;

/// One step of a ring scenario.
#[derive(Debug, Clone)]
enum Op {
    /// `offer` a message of `len` bytes from publication `publ`.
    Offer { publ: usize, len: usize },
    /// `try_claim`, fill `buf()`, then commit (or drop: padding).
    Claim { publ: usize, len: usize, commit: bool },
    /// `try_claim_batch` sized for `lens` plus `slack` 32-byte units, fill
    /// with `push` (or `claim` when `in_place`), then commit (or drop).
    Batch { publ: usize, lens: Vec<usize>, slack: usize, in_place: bool, commit: bool },
    /// An offer one byte over the maximum: refused, nothing published.
    TooLong { publ: usize },
    /// Poll subscriber `sub` (0, or the second one if it exists).
    Poll { sub: usize, limit: usize },
    /// Join the second subscriber (if absent) at the oldest or latest.
    Join { oldest: bool },
    /// Drop the second subscriber (if present).
    Leave,
}

/// A ring scenario.
#[derive(Debug, Clone)]
struct Scenario {
    capacity: u64,
    max_message_len: usize,
    policy: Policy,
    shared: bool,
    ops: Vec<Op>,
}

fn len_strategy(max: usize) -> impl Strategy<Value = usize> {
    // Mostly small messages (many per lap), sometimes anything up to max.
    prop_oneof![4 => 1..=max.min(64), 2 => 1..=max, 1 => (max.saturating_sub(64).max(1))..=max]
}

fn op_strategy(max: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, len_strategy(max)).prop_map(|(publ, len)| Op::Offer { publ, len }),
        2 => (0..2usize, len_strategy(max), prop::bool::weighted(0.85))
            .prop_map(|(publ, len, commit)| Op::Claim { publ, len, commit }),
        2 => (0..2usize, prop::collection::vec(len_strategy(max), 0..5), 0..3usize, any::<bool>(), prop::bool::weighted(0.85))
            .prop_map(|(publ, lens, slack, in_place, commit)| Op::Batch { publ, lens, slack, in_place, commit }),
        1 => (0..2usize).prop_map(|publ| Op::TooLong { publ }),
        6 => (0..2usize, 1..16usize).prop_map(|(sub, limit)| Op::Poll { sub, limit }),
        1 => any::<bool>().prop_map(|oldest| Op::Join { oldest }),
        1 => Just(Op::Leave),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop_oneof![3 => 12u32..=13, 1 => 14u32..=18]
        .prop_flat_map(|shift| {
            let capacity = 1u64 << shift;
            let max = capacity as usize / 4 - HEADER_LEN;
            (Just(capacity), 1..=max, any::<bool>(), any::<bool>())
        })
        .prop_flat_map(|(capacity, max_message_len, overwrite, shared)| {
            let policy = if overwrite { Policy::Overwrite } else { Policy::BackPressure };
            prop::collection::vec(op_strategy(max_message_len), 1..150).prop_map(move |ops| Scenario {
                capacity,
                max_message_len,
                policy,
                shared,
                ops,
            })
        })
}

/// What was published: payload seed and length, by position.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seed: u32,
    len: usize,
    publisher_id: u32,
}

/// The bytes of message `seed`.
fn payload(seed: u32, len: usize) -> Vec<u8> {
    let h = seed.wrapping_mul(0x9E37_79B1);
    (0..len).map(|i| (h >> 24) as u8 ^ (i as u8).wrapping_mul(31) ^ (i >> 8) as u8).collect()
}

/// One subscriber and what it was checked against so far.
#[derive(Debug)]
struct Tracked {
    sub: Subscriber,
    start: u64,
    last: Option<u64>,
    spans: u64,
    delivered: usize,
}

impl Tracked {
    fn new(sub: Subscriber) -> Self {
        Tracked { start: sub.position(), sub, last: None, spans: 0, delivered: 0 }
    }
}

/// The publications of a scenario: one exclusive or two shared.
#[derive(Debug)]
enum Pubs {
    Exclusive(Box<ExclusivePublication>),
    Shared(Box<[SharedPublication; 2]>),
}

/// Runs `$body` with `$p` bound to publication `$i` of `$pubs`.
macro_rules! with_pub {
    ($pubs:expr, $i:expr, |$p:ident| $body:expr) => {
        match $pubs {
            Pubs::Exclusive(e) => {
                let $p = &mut **e;
                $body
            }
            Pubs::Shared(s) => {
                let $p = &mut s[$i % 2];
                $body
            }
        }
    };
}

/// The state of one scenario run.
#[derive(Debug)]
struct World {
    ring: Ring,
    policy: Policy,
    max: usize,
    pubs: Pubs,
    subs: Vec<Tracked>,
    sent: BTreeMap<u64, Sent>,
    next_seed: u32,
}

impl World {
    fn new(s: &Scenario) -> World {
        let config = RingConfig {
            capacity: s.capacity,
            max_message_len: s.max_message_len as u32,
            policy: s.policy,
            slot_count: 2,
            pages: PagePreference::NormalOnly,
        };
        let ring = Ring::private(&config).expect("valid config");
        let first = ring.subscribe(Start::Latest).expect("a free slot");
        let pubs = if s.shared {
            Pubs::Shared(Box::new([ring.shared_publication().unwrap(), ring.shared_publication().unwrap()]))
        } else {
            Pubs::Exclusive(Box::new(ring.exclusive_publication().unwrap()))
        };
        World {
            ring,
            policy: s.policy,
            max: s.max_message_len,
            pubs,
            subs: vec![Tracked::new(first)],
            sent: BTreeMap::new(),
            next_seed: 1,
        }
    }

    fn seed(&mut self) -> u32 {
        self.next_seed += 1;
        self.next_seed
    }

    /// Polls subscriber `i` once and checks what it got.
    fn poll(&mut self, i: usize, limit: usize) -> usize {
        let t = &mut self.subs[i];
        let sent = &self.sent;
        let back_pressure = self.policy == Policy::BackPressure;
        let mut seen = Vec::new();
        let n = t
            .sub
            .poll(limit, |m| {
                let s = sent.get(&m.position).unwrap_or_else(|| panic!("nothing was sent at {}", m.position));
                assert_eq!(m.payload, payload(s.seed, s.len), "content at {}", m.position);
                assert_eq!(m.publisher_id, s.publisher_id, "publisher at {}", m.position);
                seen.push((m.position, s.len));
            })
            .expect("no corrupt frames");
        assert_eq!(n, seen.len());
        for (position, len) in seen {
            // In order; under back-pressure, nothing skipped.
            let lower = t.last.map_or(t.start, |l| l + 1);
            assert!(position >= lower, "position {position} after {:?} (start {})", t.last, t.start);
            if back_pressure {
                let expected = sent.range(lower..).next().map(|(&p, _)| p);
                assert_eq!(Some(position), expected, "skipped a message");
            }
            t.last = Some(position);
            t.spans += message_span(len) as u64;
            t.delivered += 1;
        }
        let s = &t.sub;
        assert_eq!(
            s.position() - t.start,
            t.spans + s.padding_bytes() + s.overrun_bytes(),
            "accounting of subscriber {i}"
        );
        assert!(s.position() <= self.ring.tail());
        if back_pressure {
            assert_eq!(s.overrun_bytes(), 0, "back-pressure never overruns a slot");
        }
        // The slot is listed and mirrors the overrun count.
        let slot = s.slot().expect("subscribers here have slots");
        let listed = self.ring.subscribers().into_iter().find(|x| x.index == slot);
        assert_eq!(listed.map(|x| x.overrun_bytes), Some(s.overrun_bytes()), "slot {slot} listed");
        n
    }

    /// Polls every subscriber until it has nothing more; checks it is at
    /// the tail and, under back-pressure, got everything since its start.
    fn drain(&mut self) {
        for i in 0..self.subs.len() {
            while self.poll(i, 64) > 0 {}
            let t = &self.subs[i];
            assert_eq!(t.sub.position(), self.ring.tail(), "subscriber {i} drained to the tail");
            if self.policy == Policy::BackPressure {
                assert_eq!(t.delivered, self.sent.range(t.start..).count(), "subscriber {i} got everything");
            }
        }
    }

    /// Runs `attempt`; if back-pressured, drains every subscriber and runs
    /// it once more, which must then succeed (an empty ring has room for
    /// any claim of up to a quarter of it).
    fn with_room<T>(&mut self, mut attempt: impl FnMut(&mut Self) -> Result<T, ClaimError>) -> T {
        match attempt(self) {
            Ok(v) => v,
            Err(ClaimError::BackPressured) => {
                assert_eq!(self.policy, Policy::BackPressure, "overwrite never back-pressures");
                self.drain();
                attempt(self).expect("room after draining every subscriber")
            }
            Err(e) => panic!("claim failed: {e}"),
        }
    }

    fn record(&mut self, position: u64, seed: u32, len: usize, publisher_id: u32) {
        if let Some((&last, _)) = self.sent.last_key_value() {
            assert!(position > last, "positions grow: {position} after {last}");
        }
        assert!(position + message_span(len) as u64 <= self.ring.tail());
        self.sent.insert(position, Sent { seed, len, publisher_id });
    }

    fn offer(&mut self, publ: usize, len: usize) {
        let seed = self.seed();
        let msg = payload(seed, len);
        let (position, id) = self.with_room(|w| with_pub!(&mut w.pubs, publ, |p| p.offer(&msg).map(|pos| (pos, p.id()))));
        self.record(position, seed, len, id);
    }

    fn claim(&mut self, publ: usize, len: usize, commit: bool) {
        let seed = self.seed();
        let msg = payload(seed, len);
        let tail_before = self.ring.tail();
        let (position, id) = self.with_room(|w| {
            with_pub!(&mut w.pubs, publ, |p| {
                let id = p.id();
                let mut c = p.try_claim(len)?;
                assert_eq!(c.buf().len(), len);
                c.buf().copy_from_slice(&msg);
                let position = c.position();
                if commit {
                    c.commit().expect("no reclaimer runs here");
                } else {
                    drop(c); // becomes padding
                }
                Ok((position, id))
            })
        });
        assert!(position >= tail_before);
        if commit {
            self.record(position, seed, len, id);
        }
    }

    fn batch(&mut self, publ: usize, lens: &[usize], slack: usize, in_place: bool, commit: bool) {
        let quarter = (self.ring.info().capacity as usize / 4) & !(HEADER_LEN - 1);
        let want: usize = lens.iter().map(|&l| message_span(l)).sum::<usize>() + slack * HEADER_LEN;
        let bytes = want.clamp(HEADER_LEN, quarter);
        let msgs: Vec<(u32, Vec<u8>)> = lens.iter().map(|&l| (self.seed(), l)).map(|(s, l)| (s, payload(s, l))).collect();
        let (first, id, pushed) = self.with_room(|w| {
            with_pub!(&mut w.pubs, publ, |p| {
                let id = p.id();
                let mut b = p.try_claim_batch(bytes)?;
                assert_eq!(b.remaining(), bytes);
                let mut pushed = 0;
                for (_, m) in &msgs {
                    let ok = if in_place {
                        b.claim(m.len()).map(|buf| buf.copy_from_slice(m)).is_some()
                    } else {
                        b.push(m)
                    };
                    if !ok {
                        break;
                    }
                    pushed += 1;
                }
                let first = if commit { Some(b.commit().expect("no reclaimer runs here")) } else { None };
                Ok((first, id, pushed))
            })
        });
        // Everything that fits goes in, in order.
        let fit = msgs.iter().scan(0, |used, (_, m)| {
            *used += message_span(m.len());
            Some(*used <= bytes)
        });
        assert_eq!(pushed, fit.take_while(|&f| f).count());
        if let Some(mut position) = first {
            for (seed, m) in &msgs[..pushed] {
                self.record(position, *seed, m.len(), id);
                position += message_span(m.len()) as u64;
            }
        }
    }

    fn too_long(&mut self, publ: usize) {
        let max = self.max;
        let tail = self.ring.tail();
        let r = with_pub!(&mut self.pubs, publ, |p| p.offer(&vec![0u8; max + 1]));
        assert_eq!(r, Err(ClaimError::TooLong { len: max + 1, max }));
        assert_eq!(self.ring.tail(), tail, "a refused offer claims nothing");
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Offer { publ, len } => self.offer(*publ, *len),
            Op::Claim { publ, len, commit } => self.claim(*publ, *len, *commit),
            Op::Batch { publ, lens, slack, in_place, commit } => self.batch(*publ, lens, *slack, *in_place, *commit),
            Op::TooLong { publ } => self.too_long(*publ),
            Op::Poll { sub, limit } => {
                let i = (*sub).min(self.subs.len() - 1);
                self.poll(i, *limit);
            }
            Op::Join { oldest } => {
                if self.subs.len() == 1 {
                    let start = if *oldest { Start::Oldest } else { Start::Latest };
                    let sub = self.ring.subscribe(start).expect("a free slot");
                    assert!(sub.position() <= self.ring.tail());
                    if !*oldest {
                        assert_eq!(sub.position(), self.ring.tail(), "Latest starts at the tail");
                    }
                    self.subs.push(Tracked::new(sub));
                }
            }
            Op::Leave => {
                if self.subs.len() == 2 {
                    self.subs.pop();
                }
            }
        }
    }
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if cfg!(miri) {
        // Miri cannot read the regressions file (isolation), and each case
        // is slow: keep the default case count small unless told otherwise.
        c.failure_persistence = None;
        if std::env::var_os("PROPTEST_CASES").is_none() {
            c.cases = 4;
        }
    }
    c
}

proptest! {
    #![proptest_config(config())]

    /// Random publishing and polling keeps order, content and accounting.
    #[test]
    fn ring_keeps_order_content_and_accounting(s in scenario()) {
        let mut w = World::new(&s);
        for op in &s.ops {
            w.step(op);
        }
        w.drain();
    }

    /// `parse_frame` never panics, and what it accepts is consistent with
    /// the bytes and bounds it was given.
    #[test]
    fn parse_frame_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..512) {
        if let Ok(f) = parse_frame(&bytes, max) {
            let len = f.header.length as usize;
            prop_assert!((HEADER_LEN..=max).contains(&len));
            prop_assert!(len <= bytes.len());
            prop_assert_eq!(f.payload, &bytes[HEADER_LEN..len]);
            prop_assert_eq!(f.header.payload_len(), len - HEADER_LEN);
            // The header re-encodes to the bytes it came from (the reserved
            // half of the last word aside).
            prop_assert_eq!(&f.header.encode()[..28], &bytes[..28]);
        }
    }

    /// A header encoded with `FrameHeader::encode` and its payload parse
    /// back to the same header and payload, with anything after them
    /// ignored; short buffers and low maxima are typed errors.
    #[test]
    fn frame_round_trips(
        payload in prop::collection::vec(any::<u8>(), 0..300),
        padding in any::<bool>(),
        flags in any::<u16>(),
        position in any::<u64>(),
        timestamp_ns in any::<u64>(),
        publisher_id in any::<u32>(),
        trailer in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let length = (HEADER_LEN + payload.len()) as u32;
        let kind = if padding { FrameKind::Padding } else { FrameKind::Data };
        let header = FrameHeader { length, kind, flags, position, timestamp_ns, publisher_id };
        let mut buf = header.encode().to_vec();
        buf.extend_from_slice(&payload);
        let exact = buf.len();
        buf.extend_from_slice(&trailer);

        let f = parse_frame(&buf, length as usize).expect("a well-formed frame");
        prop_assert_eq!(f.header, header);
        prop_assert_eq!(f.payload, &payload[..]);
        prop_assert_eq!(f.header.span(), message_span(payload.len()));

        prop_assert_eq!(
            parse_frame(&buf, length as usize - 1),
            Err(FrameError::BadLength { length, max: length as usize - 1 })
        );
        prop_assert_eq!(
            parse_frame(&buf[..exact - 1], usize::MAX),
            Err(FrameError::Truncated { needed: exact, available: exact - 1 })
        );
    }
}
