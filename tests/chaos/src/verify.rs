//! The final check of one stream: what a fresh subscriber read from
//! `Start::Earliest` against what publishers were told is durable and what
//! the run damaged on purpose. A pure function ([`check`]), so its rules
//! are unit-tested here.
//!
//! # Rules
//! For every message read:
//! * its payload verifies byte for byte ([`rill_tests::payload::verify`];
//!   the reader passes damaged ones here as [`StreamRead::damaged`]);
//! * its publisher index is one this stream's publishers used;
//! * positions strictly increase;
//! * per publisher index, sequence numbers strictly increase (no
//!   duplicate, nothing out of order); per publisher slot, no message of
//!   an incarnation comes after one of a later incarnation (a restarted
//!   publisher starts after its predecessor was killed);
//! * it lies in no range the checker's bit flips destroyed, and in no
//!   range a `PollError::Lost` notice reported lost.
//!
//! For every acknowledged message (a line in an ack log): it was read,
//! exactly at the position `offer` returned, unless
//! * a bit flip made after the acknowledgement destroyed the batch at its
//!   position: counted in `lost_to_bitflips`;
//! * the stream is `none` (acknowledged means written, never synced) and
//!   a power cut came after the acknowledgement: counted in
//!   `none_lost_to_power`, reported, not a violation.
//!
//! Anything else missing is a violation: said to be lost by a notice that
//! covers no flipped range, or lost silently.
//!
//! For every flipped batch `from..to`: the notices together cover it. A
//! notice may be wider (damage merges with neighbouring damage), but any
//! acknowledged message it covers outside the flipped ranges is a
//! violation (above).
//!
//! Unacknowledged messages may be missing: nothing was promised about
//! them.

use crate::logs::AckLog;
use crate::spec::{split_index, StreamSpec};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// One message a subscriber read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Its stream position.
    pub position: u64,
    /// Publisher index from the payload.
    pub publisher: u32,
    /// Sequence number from the payload.
    pub seq: u64,
    /// The frame's timestamp (`CLOCK_MONOTONIC` ns, set by the publisher).
    pub timestamp_ns: u64,
}

/// A `PollError::Lost` notice: positions `from..to` lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// First position lost.
    pub from: u64,
    /// First position after the loss.
    pub to: u64,
    /// rilld's reason.
    pub reason: String,
}

/// A batch the checker damaged: positions `from..to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flip {
    /// The batch's first position.
    pub from: u64,
    /// Its end position.
    pub to: u64,
    /// When it was flipped.
    pub t_ns: u64,
    /// Which file, offset and bit.
    pub detail: String,
}

/// Everything a fresh subscriber got from `Start::Earliest` to the tail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamRead {
    /// Messages whose payload verified, in order.
    pub delivered: Vec<Delivered>,
    /// Messages whose payload did not: position, timestamp, why.
    pub damaged: Vec<(u64, u64, String)>,
    /// Lost notices, in order.
    pub notices: Vec<Notice>,
    /// Why reading stopped before the tail, if it did.
    pub error: Option<String>,
}

/// What the run did to one stream.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The stream.
    pub spec: &'a StreamSpec,
    /// Its index among the run's streams (its publisher slots).
    pub stream_index: usize,
    /// The ack logs of its publishers (every incarnation's, even empty).
    pub acks: &'a [AckLog],
    /// The batches flipped in its segments.
    pub flips: &'a [Flip],
    /// When power was cut.
    pub power_cuts: &'a [u64],
}

/// Something that must never happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The stream.
    pub stream: String,
    /// Publisher index, if about one message.
    pub publisher: Option<u32>,
    /// Its sequence number.
    pub seq: Option<u64>,
    /// When it happened or was acknowledged (`CLOCK_MONOTONIC` ns), to show
    /// the faults around it.
    pub t_ns: Option<u64>,
    /// What is wrong.
    pub what: String,
    /// What should have been.
    pub expected: String,
    /// What was.
    pub got: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {}", self.stream)?;
        if let Some(p) = self.publisher {
            let (slot, inc) = split_index(p);
            write!(f, " publisher {p} (slot {slot}, incarnation {inc})")?;
        }
        if let Some(s) = self.seq {
            write!(f, " seq {s}")?;
        }
        write!(f, ": {}; expected {}; got {}", self.what, self.expected, self.got)
    }
}

/// The result of checking one stream.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Messages read and checked.
    pub delivered: u64,
    /// Messages acknowledged.
    pub acknowledged: u64,
    /// Acknowledged and read.
    pub acked_delivered: u64,
    /// Acknowledged, destroyed by a bit flip (and reported).
    pub lost_to_bitflips: u64,
    /// `none` only: acknowledged (written), lost to a later power cut.
    pub none_lost_to_power: u64,
    /// Read, but never acknowledged (sent before a crash, or in a batch
    /// whose wait timed out).
    pub unacked_delivered: u64,
    /// Lost notices.
    pub notices: u64,
    /// Lost notices that overlap no flipped batch (damage from power
    /// cuts of unsynced data; a violation only if they cover an
    /// acknowledged message).
    pub notices_unflipped: u64,
    /// Everything wrong.
    pub violations: Vec<Violation>,
}

fn find<T>(items: &[T], range: impl Fn(&T) -> (u64, u64), pos: u64) -> Option<&T> {
    items.iter().find(|x| {
        let (from, to) = range(x);
        from <= pos && pos < to
    })
}

/// Whether the union of `notices` covers `from..to`.
fn covered(notices: &[Notice], from: u64, to: u64) -> bool {
    let mut sorted: Vec<(u64, u64)> = notices.iter().map(|n| (n.from, n.to)).collect();
    sorted.sort_unstable();
    let mut cur = from;
    for (a, b) in sorted {
        if a <= cur && b > cur {
            cur = b;
        }
    }
    cur >= to
}

/// Checks one stream; see the module docs.
pub fn check(read: &StreamRead, e: &Expected<'_>) -> Outcome {
    let mut c = Check { read, e, out: Outcome::default(), got: HashMap::new() };
    c.out.delivered = read.delivered.len() as u64;
    c.out.notices = read.notices.len() as u64;
    c.out.notices_unflipped = read.notices.iter().filter(|n| !e.flips.iter().any(|f| f.from < n.to && n.from < f.to)).count() as u64;
    if let Some(err) = &read.error {
        c.bad(None, None, None, "reading from Earliest stopped before the tail".into(), "every message up to the tail".into(), err.clone());
    }
    for (position, t, why) in &read.damaged {
        c.bad(None, None, Some(*t), format!("a damaged payload was delivered at position {position}"), "only intact payloads".into(), why.clone());
    }
    c.delivered();
    c.acknowledged();
    c.flips();
    c.out.unacked_delivered = c.out.delivered - c.out.acked_delivered;
    c.out
}

/// The state of one [`check`].
struct Check<'a> {
    read: &'a StreamRead,
    e: &'a Expected<'a>,
    out: Outcome,
    /// Per publisher index: (seq, position) of every message read, in
    /// increasing seq (a message out of order is flagged and not kept).
    got: HashMap<u32, Vec<(u64, u64)>>,
}

impl Check<'_> {
    fn bad(&mut self, publisher: Option<u32>, seq: Option<u64>, t_ns: Option<u64>, what: String, expected: String, got: String) {
        let stream = self.e.spec.name.clone();
        self.out.violations.push(Violation { stream, publisher, seq, t_ns, what, expected, got });
    }

    /// Every message read: position order, flipped and reported ranges,
    /// known publisher, per-publisher and per-slot order.
    fn delivered(&mut self) {
        let known: HashSet<u32> = self.e.acks.iter().map(|a| a.publisher).collect();
        let mut newest: BTreeMap<u32, u32> = BTreeMap::new();
        let mut last_position: Option<u64> = None;
        for d in &self.read.delivered {
            let (p, s, t) = (Some(d.publisher), Some(d.seq), Some(d.timestamp_ns));
            let at = format!("message at position {}", d.position);
            if let Some(last) = last_position.filter(|&l| d.position <= l) {
                self.bad(p, s, t, "positions do not increase".into(), format!("a position after {last}"), at.clone());
            }
            last_position = Some(d.position);
            if let Some(f) = find(self.e.flips, |f| (f.from, f.to), d.position) {
                let expected = format!("positions {}..{} lost ({})", f.from, f.to, f.detail);
                self.bad(p, s, t, "a message of a batch destroyed by a bit flip was delivered".into(), expected, at.clone());
            }
            if let Some(n) = find(&self.read.notices, |n| (n.from, n.to), d.position) {
                let expected = format!("nothing in {}..{}", n.from, n.to);
                self.bad(p, s, t, "a message inside a range reported lost was delivered".into(), expected, at.clone());
            }
            let (slot, inc) = split_index(d.publisher);
            if !known.contains(&d.publisher) || StreamSpec::stream_of_slot(slot) != self.e.stream_index {
                self.bad(p, s, t, "a message of a publisher that never published on this stream".into(), "publishers with an ack log for this stream".into(), at);
                continue;
            }
            let mine = self.got.entry(d.publisher).or_default();
            match mine.last().copied() {
                Some((last, last_pos)) if d.seq <= last => {
                    let what = if d.seq == last { "duplicate" } else { "out of order" };
                    let got = format!("seq {} at position {}", d.seq, d.position);
                    self.bad(p, s, t, format!("{what} within the publisher's messages"), format!("a seq after {last} (read at position {last_pos})"), got);
                }
                _ => mine.push((d.seq, d.position)),
            }
            let top = *newest.entry(slot).or_insert(inc);
            if inc < top {
                self.bad(p, s, t, format!("incarnation {inc} of slot {slot} after incarnation {top}"), "each incarnation's messages after its predecessor's".into(), at);
            }
            newest.insert(slot, top.max(inc));
        }
    }

    /// Every acknowledged message: read at its position, or excused by a
    /// flip or (`none`) a power cut after it.
    fn acknowledged(&mut self) {
        let e = self.e;
        let cut_between = |from: u64, to: u64| e.power_cuts.iter().any(|&c| from < c && c < to);
        for log in e.acks {
            for a in &log.acks {
                self.out.acknowledged += 1;
                let (p, s, t) = (Some(a.publisher), Some(a.seq), Some(a.t_ns));
                let mine = self.got.get(&log.publisher).map(Vec::as_slice).unwrap_or(&[]);
                if let Ok(i) = mine.binary_search_by_key(&a.seq, |&(seq, _)| seq) {
                    self.out.acked_delivered += 1;
                    let at = mine[i].1;
                    if at != a.position {
                        self.bad(p, s, t, "an acknowledged message moved".into(), format!("position {}", a.position), format!("position {at}"));
                    }
                    continue;
                }
                // A flip after the acknowledgement destroyed it; for `none`,
                // only if no cut came in between (the flipped batch may
                // then hold other messages, at positions used again).
                let flip = find(e.flips, |f| (f.from, f.to), a.position).filter(|f| f.t_ns > a.t_ns && (e.spec.synced() || !cut_between(a.t_ns, f.t_ns)));
                if flip.is_some() {
                    self.out.lost_to_bitflips += 1;
                    continue;
                }
                if !e.spec.synced() && cut_between(a.t_ns, u64::MAX) {
                    self.out.none_lost_to_power += 1;
                    continue;
                }
                let (what, got) = match find(&self.read.notices, |n| (n.from, n.to), a.position) {
                    Some(n) => ("an acknowledged message was reported lost, outside every flipped batch", format!("a Lost notice {}..{} ({})", n.from, n.to, n.reason)),
                    None => ("an acknowledged message is missing, with no Lost notice", "nothing".to_owned()),
                };
                self.bad(p, s, t, what.into(), format!("delivered once at position {}", a.position), got);
            }
        }
    }

    /// Every flipped batch: covered by the notices together.
    fn flips(&mut self) {
        for f in self.e.flips {
            if covered(&self.read.notices, f.from, f.to) {
                continue;
            }
            let near: Vec<String> =
                self.read.notices.iter().filter(|n| n.to + (1 << 20) > f.from && n.from < f.to + (1 << 20)).map(|n| format!("{}..{}", n.from, n.to)).collect();
            self.bad(
                None,
                None,
                Some(f.t_ns),
                format!("a flipped batch was not reported lost ({})", f.detail),
                format!("Lost notices covering {}..{}", f.from, f.to),
                format!("notices within 1 MiB: [{}]", near.join(", ")),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Ack;
    use crate::spec::{publisher_index, streams, StreamSpec};

    fn acks(publisher: u32, seqs: &[(u64, u64, u64)]) -> AckLog {
        let acks = seqs.iter().map(|&(seq, position, t_ns)| Ack { publisher, seq, position, t_ns }).collect();
        AckLog { stream: "s".into(), publisher, acks }
    }

    fn msg(position: u64, publisher: u32, seq: u64) -> Delivered {
        Delivered { position, publisher, seq, timestamp_ns: 1 }
    }

    fn run(stream: usize, read: &StreamRead, logs: &[AckLog], flips: &[Flip], cuts: &[u64]) -> Outcome {
        let specs = streams(2, 5);
        check(read, &Expected { spec: &specs[stream], stream_index: stream, acks: logs, flips, power_cuts: cuts })
    }

    #[test]
    fn every_acknowledged_message_read_once_in_order_passes() {
        let p = publisher_index(0, 0);
        let q = publisher_index(1, 3);
        let read = StreamRead { delivered: vec![msg(0, p, 0), msg(64, q, 0), msg(128, p, 1), msg(192, p, 2)], ..Default::default() };
        let o = run(0, &read, &[acks(p, &[(0, 0, 5), (1, 128, 5)]), acks(q, &[])], &[], &[]);
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        assert_eq!((o.delivered, o.acknowledged, o.acked_delivered, o.unacked_delivered), (4, 2, 2, 2));
    }

    #[test]
    fn duplicates_reordering_strangers_and_old_incarnations_are_violations() {
        let (p0, p1) = (publisher_index(0, 0), publisher_index(0, 1));
        let stranger = publisher_index(16, 0); // a slot of stream 1
        let read = StreamRead {
            delivered: vec![msg(0, p0, 0), msg(64, p1, 0), msg(128, p0, 1), msg(192, p1, 0), msg(256, stranger, 0)],
            ..Default::default()
        };
        let o = run(0, &read, &[acks(p0, &[]), acks(p1, &[]), acks(stranger, &[])], &[], &[]);
        let whats: Vec<&str> = o.violations.iter().map(|v| v.what.as_str()).collect();
        assert_eq!(whats.len(), 3, "{whats:?}");
        assert!(whats[0].starts_with("incarnation 0 of slot 0 after incarnation 1"));
        assert!(whats[1].starts_with("duplicate"));
        assert!(whats[2].starts_with("a message of a publisher that never"));
    }

    #[test]
    fn a_missing_acknowledged_message_is_a_violation_unless_a_flip_or_none_and_a_cut_explains_it() {
        let flip = Flip { from: 64, to: 192, t_ns: 100, detail: "f".into() };
        let notice = Notice { from: 0, to: 256, reason: "crc".into() };
        // Publisher 0 of stream `s`: seq 0..=3 acknowledged at t=10, only
        // seq 3 read.
        let case = |s: usize, notices: Vec<Notice>| {
            let p = publisher_index(StreamSpec::slot(s, 0), 0);
            let log = acks(p, &[(0, 0, 10), (1, 64, 10), (2, 128, 10), (3, 256, 10)]);
            (StreamRead { delivered: vec![msg(256, p, 3)], notices, ..Default::default() }, log)
        };
        // always: seq 1 and 2 were flipped (excused); seq 0 is covered by
        // the wider notice but not flipped: a violation.
        let (read, log) = case(0, vec![notice.clone()]);
        let o = run(0, &read, &[log], std::slice::from_ref(&flip), &[]);
        assert_eq!(o.lost_to_bitflips, 2);
        assert_eq!(o.violations.len(), 1, "{:?}", o.violations);
        assert_eq!(o.violations[0].seq, Some(0));
        assert!(o.violations[0].what.contains("reported lost, outside every flipped batch"));
        // none, with a power cut after the acks: seq 0 is a power loss,
        // and so are 1 and 2 (the cut came before the flip, so the flipped
        // batch may hold other messages at reused positions).
        let (read, log) = case(2, vec![notice]);
        let o = run(2, &read, &[log], std::slice::from_ref(&flip), &[50]);
        assert!(o.violations.is_empty(), "{:?}", o.violations);
        assert_eq!((o.none_lost_to_power, o.lost_to_bitflips), (3, 0));
        // interval, nothing reported at all: silently lost, cut or not.
        let (read, log) = case(1, vec![]);
        let o = run(1, &read, &[log], &[], &[50]);
        assert_eq!(o.violations.len(), 3);
        assert!(o.violations.iter().all(|v| v.what.contains("missing, with no Lost notice")));
    }

    #[test]
    fn flips_must_be_covered_by_notices_and_never_delivered() {
        let p = publisher_index(0, 0);
        let flips = [Flip { from: 64, to: 192, t_ns: 1, detail: "a".into() }, Flip { from: 512, to: 640, t_ns: 1, detail: "b".into() }];
        let read = StreamRead {
            delivered: vec![msg(0, p, 0), msg(600, p, 1)],
            notices: vec![Notice { from: 0, to: 100, reason: String::new() }, Notice { from: 100, to: 200, reason: String::new() }],
            ..Default::default()
        };
        let o = run(0, &read, &[acks(p, &[])], &flips, &[]);
        let whats: Vec<&str> = o.violations.iter().map(|v| v.what.as_str()).collect();
        assert_eq!(whats.len(), 3, "{whats:?}");
        assert!(whats[0].starts_with("a message inside a range reported lost"));
        assert!(whats[1].starts_with("a message of a batch destroyed"));
        assert!(whats[2].starts_with("a flipped batch was not reported lost (b)"));
        assert_eq!(o.notices_unflipped, 0);
    }

    #[test]
    fn an_acknowledged_message_at_another_position_is_a_violation() {
        let p = publisher_index(0, 0);
        let read = StreamRead { delivered: vec![msg(64, p, 0)], ..Default::default() };
        let o = run(0, &read, &[acks(p, &[(0, 0, 1)])], &[], &[]);
        assert_eq!(o.violations.len(), 1);
        assert!(o.violations[0].what.contains("moved"));
    }
}
