//! What a subscriber checks about every message it is handed.
//!
//! * Exact mode (back-pressure rings): every message of every publisher,
//!   exactly once, in each publisher's order: the next message of publisher
//!   `k` must be sequence number `next[k]`, nothing else.
//! * Lossy mode (overwrite rings, detached readers): per publisher, sequence
//!   numbers strictly increase (gaps are counted as lost, never an error).
//! * Follow mode (a subscriber that joined mid-stream): per publisher, the
//!   first message handed out may have any sequence number; from there on,
//!   exactly once and in order, as in exact mode.
//!
//! In both modes every payload is verified byte for byte
//! ([`crate::payload::verify`]): nothing torn or half-written may ever be
//! handed out. Frame headers are checked too: positions strictly increase,
//! every message of one publisher carries the same publication id and no two
//! publishers share one, and timestamps are set.

#![forbid(unsafe_code)]

use crate::payload;
use rill_shm::frame::message_span;
use rill_shm::ring::Message;

/// How strict the sequence check is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Publisher `k` sends exactly `expect[k]` messages, all of which must
    /// arrive, once each, in order.
    Exact {
        /// Message count per publisher index.
        expect: Vec<u64>,
    },
    /// Messages may be lost to overruns; order must still hold.
    Lossy {
        /// Number of publishers.
        publishers: usize,
    },
    /// Joined mid-stream: no gap and no duplicate after each publisher's
    /// first message seen.
    Follow {
        /// Number of publishers.
        publishers: usize,
    },
}

/// Running verification state of one subscriber.
#[derive(Debug)]
pub struct Checker {
    seed: u64,
    max_len: usize,
    mode: Mode,
    /// Per publisher: the next sequence number expected (exact), or one past
    /// the last one seen (lossy; 0 = none yet).
    next: Vec<u64>,
    /// Per publisher: messages delivered.
    counts: Vec<u64>,
    /// Per publisher: the publication id in its frame headers.
    ids: Vec<Option<u32>>,
    last_position: Option<u64>,
    /// Messages delivered.
    pub delivered: u64,
    /// Sum of `message_span(len)` over delivered messages.
    pub span_bytes: u64,
    /// Lossy mode: sequence numbers skipped.
    pub lost: u64,
    /// Payloads that failed verification (torn, wrong length, bad checksum).
    pub damaged: u64,
    /// Damaged messages the subscriber itself reported as unreliable
    /// afterwards (`PollError::RevokedDuringRead`), not counted in `damaged`.
    pub retracted: u64,
    /// Whether the last message checked was damaged.
    last_damaged: bool,
    /// Sequence errors: duplicates, reordering, and (exact mode) gaps.
    pub order_errors: u64,
    /// Header errors: unknown publisher, id mismatch, position not
    /// increasing, missing timestamp.
    pub header_errors: u64,
    first_error: Option<String>,
}

impl Checker {
    /// A checker for messages of the run seeded `seed` on a ring whose
    /// largest payload is `max_len`.
    pub fn new(seed: u64, max_len: usize, mode: Mode) -> Self {
        let n = match &mode {
            Mode::Exact { expect } => expect.len(),
            Mode::Lossy { publishers } | Mode::Follow { publishers } => *publishers,
        };
        Checker {
            seed,
            max_len,
            mode,
            next: vec![0; n],
            counts: vec![0; n],
            ids: vec![None; n],
            last_position: None,
            delivered: 0,
            span_bytes: 0,
            lost: 0,
            damaged: 0,
            retracted: 0,
            last_damaged: false,
            order_errors: 0,
            header_errors: 0,
            first_error: None,
        }
    }

    /// Total errors of every kind.
    pub fn errors(&self) -> u64 {
        self.damaged + self.order_errors + self.header_errors
    }

    /// The first error seen, described.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// Messages delivered per publisher.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Exact mode: whether every expected message has arrived.
    pub fn complete(&self) -> bool {
        match &self.mode {
            Mode::Exact { expect } => self.next == *expect,
            Mode::Lossy { .. } | Mode::Follow { .. } => false,
        }
    }

    fn note(&mut self, what: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }

    /// The subscriber said the message at `position` may have been
    /// overwritten while it was read: if it was the last one checked and
    /// it was damaged, the damage was reported, so it moves from `damaged`
    /// to `retracted`. Damage to any earlier message still counts.
    pub fn retract(&mut self, position: u64) {
        if self.last_damaged && self.last_position == Some(position) {
            self.damaged -= 1;
            self.retracted += 1;
            self.last_damaged = false;
            if self.damaged == 0 && self.order_errors == 0 && self.header_errors == 0 {
                self.first_error = None;
            }
        }
    }

    /// Checks one message.
    pub fn on_message(&mut self, m: &Message<'_>) {
        self.delivered += 1;
        self.span_bytes += message_span(m.payload.len()) as u64;
        let pos = m.position;
        if self.last_position.is_some_and(|p| pos <= p) {
            self.header_errors += 1;
            let last = self.last_position;
            self.note(|| format!("position {pos} after {last:?}"));
        }
        self.last_position = Some(pos);
        self.last_damaged = false;
        let (publisher, seq) = match payload::verify(m.payload, self.seed, self.max_len) {
            Ok(x) => x,
            Err(d) => {
                self.damaged += 1;
                self.last_damaged = true;
                self.note(|| format!("damaged message at position {pos}: {d}"));
                return;
            }
        };
        let k = publisher as usize;
        if k >= self.next.len() {
            self.header_errors += 1;
            self.note(|| format!("unknown publisher index {publisher} at position {pos}"));
            return;
        }
        self.check_header(k, m);
        self.counts[k] += 1;
        let next = self.next[k];
        match &self.mode {
            Mode::Exact { expect } => {
                if seq != next || seq >= expect[k] {
                    self.order_errors += 1;
                    let n = expect[k];
                    self.note(|| format!("publisher {k}: got seq {seq}, expected {next} (of {n}) at position {pos}"));
                }
                self.next[k] = self.next[k].max(seq + 1);
            }
            Mode::Follow { .. } => {
                let first = self.counts[k] == 1;
                if !first && seq != next {
                    self.order_errors += 1;
                    self.note(|| format!("publisher {k}: got seq {seq}, expected {next} at position {pos}"));
                }
                self.next[k] = if first { seq + 1 } else { next.max(seq + 1) };
            }
            Mode::Lossy { .. } => {
                if seq < next {
                    self.order_errors += 1;
                    self.note(|| format!("publisher {k}: seq {seq} after {} at position {pos}", next - 1));
                } else {
                    self.lost += seq - next;
                    self.next[k] = seq + 1;
                }
            }
        }
    }

    fn check_header(&mut self, k: usize, m: &Message<'_>) {
        let id = m.publisher_id;
        match self.ids[k] {
            None => {
                if let Some(other) = self.ids.iter().position(|x| *x == Some(id)) {
                    self.header_errors += 1;
                    self.note(|| format!("publishers {other} and {k} share publication id {id}"));
                }
                self.ids[k] = Some(id);
            }
            Some(first) if first != id => {
                self.header_errors += 1;
                let pos = m.position;
                self.note(|| format!("publisher {k}: publication id {id} at {pos}, was {first}"));
            }
            Some(_) => {}
        }
        if m.timestamp_ns == 0 {
            self.header_errors += 1;
            let pos = m.position;
            self.note(|| format!("publisher {k}: no timestamp at position {pos}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_shm::ring::{PagePreference, Policy, Ring, RingConfig, Start};

    fn ring(policy: Policy) -> Ring {
        let cfg = RingConfig { capacity: 8192, max_message_len: 512, policy, slot_count: 4, pages: PagePreference::NormalOnly };
        Ring::private(&cfg).expect("private ring")
    }

    fn send(publ: &mut rill_shm::ring::SharedPublication, k: u32, seq: u64) {
        let mut buf = vec![0u8; payload::message_len(9, k, seq, 512)];
        payload::write_message(&mut buf, 9, k, seq, 512);
        publ.offer(&buf).expect("offer");
    }

    #[test]
    fn exact_mode_accepts_interleaved_publishers_and_completes() {
        let ring = ring(Policy::BackPressure);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let mut a = ring.shared_publication().unwrap();
        let mut b = ring.shared_publication().unwrap();
        let mut c = Checker::new(9, 512, Mode::Exact { expect: vec![3, 2] });
        for (k, seq) in [(0, 0), (1, 0), (0, 1), (0, 2), (1, 1)] {
            send(if k == 0 { &mut a } else { &mut b }, k, seq);
            sub.poll(10, |m| c.on_message(&m)).unwrap();
        }
        assert_eq!(c.errors(), 0, "{:?}", c.first_error());
        assert!(c.complete());
        assert_eq!(c.span_bytes + sub.padding_bytes(), sub.position());
    }

    #[test]
    fn exact_mode_flags_gaps_and_duplicates() {
        let ring = ring(Policy::BackPressure);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let mut a = ring.shared_publication().unwrap();
        let mut c = Checker::new(9, 512, Mode::Exact { expect: vec![5] });
        for seq in [0, 2, 2] {
            send(&mut a, 0, seq);
        }
        sub.poll(10, |m| c.on_message(&m)).unwrap();
        assert_eq!(c.order_errors, 2);
        assert!(c.first_error().unwrap().contains("got seq 2, expected 1"));
    }

    #[test]
    fn lossy_mode_counts_gaps_and_flags_reordering() {
        let ring = ring(Policy::Overwrite);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let mut a = ring.shared_publication().unwrap();
        let mut c = Checker::new(9, 512, Mode::Lossy { publishers: 1 });
        for seq in [0, 3, 7, 5] {
            send(&mut a, 0, seq);
        }
        sub.poll(10, |m| c.on_message(&m)).unwrap();
        assert_eq!(c.lost, 5);
        assert_eq!(c.order_errors, 1);
    }

    #[test]
    fn follow_mode_accepts_any_first_seq_then_flags_gaps() {
        let ring = ring(Policy::BackPressure);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let mut a = ring.shared_publication().unwrap();
        let mut b = ring.shared_publication().unwrap();
        for (k, seq) in [(0, 40), (1, 7), (0, 41), (1, 8), (0, 43)] {
            send(if k == 0 { &mut a } else { &mut b }, k, seq);
        }
        let mut c = Checker::new(9, 512, Mode::Follow { publishers: 2 });
        sub.poll(10, |m| c.on_message(&m)).unwrap();
        assert_eq!(c.counts(), &[3, 2]);
        assert_eq!(c.order_errors, 1, "{:?}", c.first_error());
        assert!(c.first_error().unwrap().contains("got seq 43, expected 42"));
    }

    #[test]
    fn damaged_payload_is_caught() {
        let ring = ring(Policy::BackPressure);
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let mut a = ring.shared_publication().unwrap();
        let mut buf = vec![0u8; payload::message_len(9, 0, 0, 512)];
        payload::write_message(&mut buf, 9, 0, 0, 512);
        *buf.last_mut().unwrap() ^= 1;
        a.offer(&buf).unwrap();
        let mut c = Checker::new(9, 512, Mode::Exact { expect: vec![1] });
        sub.poll(10, |m| c.on_message(&m)).unwrap();
        assert_eq!(c.damaged, 1);
    }
}
