//! Frames and counters of a ring, written by a hostile publisher, as
//! subscribers and rilld read them.
//!
//! A publisher holds its ring read-write: it can write any bytes into the
//! data region (frames with any length, kind and position, committed or
//! not) and into the header counters (tail, head, limit, reclaim words).
//! What reads them must not panic, read out of bounds or loop for ever:
//! subscribers of every kind (zero-copy slot, validated slot, detached,
//! rilld's holding archiver slot and its copy-then-check of each batch with
//! `rill_store::BatchHeader::for_frames`), `Ring::is_padding_at`,
//! `Ring::subscribers` and rilld's reclaimer (`Reclaimer::do_work`).
//! Opening the ring file (`Ring::from_fd`) with a damaged header is
//! fuzzed too: it must be refused or be consistent.
//!
//! Each iteration makes a small ring in a memfd (`Ring::create_memfd`,
//! 4 pages), sets its commit salt to a known value (so that the fuzzer's
//! frames can carry the right commit tag, `rill_shm::ring::commit_tag`),
//! writes the input's frames, raw bytes and counter values into the file,
//! maps it again with `Ring::from_fd` and runs the input's reads.
//! Documented panics (seek of a zero-copy reader, `held_bytes` outside
//! the held range, `release_to` outside hold mode) are not called.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use rill_shm::layout::{Counters, Geometry, Meta, Slot, COUNTERS_OFFSET, SLOTS_OFFSET, SLOT_SIZE};
use rill_shm::ring::{commit_tag, PagePreference, Ring, RingConfig, Start, Subscriber};
use rill_shm::{Access, Policy};
use std::mem::offset_of;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

const SALT: u64 = 0x5A17_F022_D00D_F00D;
const CLAIMED_BIT: u64 = 1 << 63;
const COMMITTING_BIT: u64 = 1 << 62;

/// A stream position, relative to the ring's capacity where that helps
/// the fuzzer hit frame boundaries and laps.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Pos {
    /// `n * 32`.
    Frames(u16),
    /// `laps * capacity + n * 32`.
    Laps(u8, u16),
    /// Any value.
    Raw(u64),
}

impl Pos {
    fn get(self, cap: u64) -> u64 {
        match self {
            Pos::Frames(n) => u64::from(n) * 32,
            Pos::Laps(l, n) => u64::from(l) * cap + u64::from(n) * 32,
            Pos::Raw(v) => v,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Counter {
    Tail,
    Head,
    LimitGranted,
    Origin,
    SlotHwm,
    Reclaim,
    ReclaimEnd,
    PaddedEnd,
    ExclusivePid,
    SlotState(u8),
    SlotPid(u8),
    SlotPosition(u8),
}

#[derive(Arbitrary, Debug)]
enum Commit {
    /// Tag and position word say `p`: committed.
    Committed,
    /// Position word CLAIMED(p).
    Claimed,
    /// Position word COMMITTING(p).
    Committing,
    /// Position word `p`, tag of another position.
    WrongTag(u64),
    /// Tag of `p`, position word something else.
    WrongPosition(u64),
}

#[derive(Arbitrary, Debug)]
enum Write {
    /// A frame header at position `at` (rounded down to 32), its payload
    /// filled with `fill` as far as the ring allows.
    Frame { at: Pos, length: u32, kind: u16, flags: u16, timestamp: u64, commit: Commit, fill: u8 },
    /// Bytes at data offset `off` (wrapped into the ring).
    Raw { off: u16, bytes: Vec<u8> },
}

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe { oldest: bool },
    Holding { oldest: bool },
    Detached { oldest: bool },
    Poll { sub: u8, limit: u8 },
    Seek { sub: u8, to: Pos },
    StopOnOverrun { sub: u8 },
    Hold { sub: u8 },
    /// rilld's archiver: copy the held frames, check them as a batch,
    /// release them.
    Archive { sub: u8 },
    HasData { sub: u8 },
    Drop { sub: u8 },
    IsPadding { at: Pos },
    Subscribers,
    Reclaim { timeout_ns: u16, now_ns: u64 },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Bits 0-1: capacity 4 KiB << n; bit 2: overwrite; bits 3-4: slots-1.
    shape: u8,
    max_message_len: u16,
    /// Header words to damage before the ring is opened: (offset / 8 in
    /// the 128-byte header, value).
    meta: Vec<(u8, u64)>,
    counters: Vec<(Counter, Pos)>,
    writes: Vec<Write>,
    ops: Vec<Op>,
}

fn counter_at(c: &Counter, slots: u32) -> Option<(u64, usize)> {
    let base = COUNTERS_OFFSET as u64;
    let slot = |i: u8| (u32::from(i) < slots).then(|| SLOTS_OFFSET as u64 + u64::from(i) * SLOT_SIZE as u64);
    Some(match c {
        Counter::Tail => (base + offset_of!(Counters, tail) as u64, 8),
        Counter::Head => (base + offset_of!(Counters, head) as u64, 8),
        Counter::LimitGranted => (base + offset_of!(Counters, limit_granted) as u64, 8),
        Counter::Origin => (base + offset_of!(Counters, publishers.value.origin) as u64, 8),
        Counter::SlotHwm => (base + offset_of!(Counters, publishers.value.slot_hwm) as u64, 4),
        Counter::Reclaim => (base + offset_of!(Counters, publishers.value.reclaim) as u64, 8),
        Counter::ReclaimEnd => (base + offset_of!(Counters, publishers.value.reclaim_end) as u64, 8),
        Counter::PaddedEnd => (base + offset_of!(Counters, publishers.value.padded_end) as u64, 8),
        Counter::ExclusivePid => (base + offset_of!(Counters, publishers.value.exclusive_pid) as u64, 4),
        Counter::SlotState(i) => (slot(*i)? + offset_of!(Slot, state) as u64, 4),
        Counter::SlotPid(i) => (slot(*i)? + offset_of!(Slot, pid) as u64, 4),
        Counter::SlotPosition(i) => (slot(*i)? + offset_of!(Slot, position) as u64, 8),
    })
}

/// KNOWN (reported, not fixed: shm/): positions a publisher writes into
/// the header counters are trusted to be frame boundaries and far from
/// `u64::MAX`. An unaligned tail or head makes a subscriber that starts
/// there panic in its first poll (the bounds assertion of
/// RingMemory::word, through `committed`: fuzz/regressions/ring_read/
/// poll-at-unaligned-tail), and a tail near `u64::MAX` overflows
/// `tail + HEADER_LEN` in rilld's reclaimer (Reclaimer::walk,
/// reclaim.rs; fuzz/regressions/ring_read/reclaim-tail-overflow) and in
/// the subscribers' lap checks. Until those are fixed, such values are
/// rounded down to a frame boundary below 2^60 here, so the fuzzer can
/// look further; the rest of each word stays as the input says.
fn position_value(c: &Counter, v: u64) -> u64 {
    match c {
        Counter::Tail | Counter::Head | Counter::LimitGranted | Counter::Origin | Counter::SlotPosition(_) => (v & !31) % (1 << 60),
        _ => v,
    }
}

fuzz_target!(|input: Input| {
    let cap = 4096u64 << (input.shape & 3);
    let slots = u32::from((input.shape >> 3) & 3) + 1;
    let config = RingConfig {
        capacity: cap,
        max_message_len: u32::from(input.max_message_len).clamp(1, (cap / 4 - 32) as u32),
        policy: if input.shape & 4 != 0 { Policy::Overwrite } else { Policy::BackPressure },
        slot_count: slots,
        pages: PagePreference::NormalOnly,
    };
    let made = Ring::create_memfd("rill-fuzz", &config).expect("a valid ring config");
    let file = std::fs::File::from(made.fd().expect("memfd ring").as_fd().try_clone_to_owned().expect("dup"));
    drop(made);
    let g = Geometry::new(cap, slots, 4096);
    let put = |off: u64, bytes: &[u8]| file.write_all_at(bytes, off).expect("pwrite memfd");
    put(offset_of!(Meta, commit_salt) as u64, &SALT.to_le_bytes());
    for (c, v) in &input.counters {
        if let Some((off, width)) = counter_at(c, slots) {
            put(off, &position_value(c, v.get(cap)).to_le_bytes()[..width]);
        }
    }
    for w in input.writes.iter().take(64) {
        match w {
            Write::Frame { at, length, kind, flags, timestamp, commit, fill } => {
                let p = at.get(cap) & !31;
                let off = p & (cap - 1);
                let (pos_word, tag_pos) = match commit {
                    Commit::Committed => (p, p),
                    Commit::Claimed => (p | CLAIMED_BIT, p),
                    Commit::Committing => (p | COMMITTING_BIT, p),
                    Commit::WrongTag(t) => (p, *t),
                    Commit::WrongPosition(v) => (*v, p),
                };
                let mut h = [0u8; 32];
                h[0..4].copy_from_slice(&length.to_le_bytes());
                h[4..6].copy_from_slice(&kind.to_le_bytes());
                h[6..8].copy_from_slice(&flags.to_le_bytes());
                h[8..16].copy_from_slice(&pos_word.to_le_bytes());
                h[16..24].copy_from_slice(&timestamp.to_le_bytes());
                h[24..28].copy_from_slice(&7u32.to_le_bytes());
                h[28..32].copy_from_slice(&commit_tag(SALT, tag_pos).to_le_bytes());
                let payload = (*length as u64).saturating_sub(32).min(cap - off - 32) as usize;
                let mut bytes = h.to_vec();
                bytes.resize(32 + payload, *fill);
                put(g.data_offset + off, &bytes);
            }
            Write::Raw { off, bytes } => {
                let off = u64::from(*off) & (cap - 1);
                let n = bytes.len().min((cap - off) as usize);
                put(g.data_offset + off, &bytes[..n]);
            }
        }
    }
    // A damaged header: opening must refuse it or give a consistent ring.
    for (word, v) in input.meta.iter().take(4) {
        let off = u64::from(*word % 16) * 8;
        if off == offset_of!(Meta, commit_salt) as u64 {
            continue;
        }
        put(off, &v.to_le_bytes());
    }
    let Ok(ring) = Ring::from_fd(file.into(), Access::ReadWrite) else { return };
    let info = ring.info().clone();
    assert!(info.capacity.is_power_of_two() && info.capacity >= 4096);
    let cap = info.capacity;

    let mut subs: Vec<(Subscriber, bool)> = Vec::new(); // (subscriber, in hold mode)
    let pick = |subs: &Vec<(Subscriber, bool)>, i: u8| (!subs.is_empty()).then(|| i as usize % subs.len());
    let mut reclaimer = None;
    for op in input.ops.iter().take(64) {
        match *op {
            Op::Subscribe { oldest } => {
                let start = if oldest { Start::Oldest } else { Start::Latest };
                if let Ok(s) = ring.subscribe(start) {
                    subs.push((s, false));
                }
            }
            Op::Holding { oldest } => {
                let start = if oldest { Start::Oldest } else { Start::Latest };
                if let Ok((slot, at)) = ring.attach_holding(start, std::process::id()) {
                    if let Ok(s) = ring.subscriber_on_slot(slot, at) {
                        subs.push((s, false));
                    }
                }
            }
            Op::Detached { oldest } => {
                let start = if oldest { Start::Oldest } else { Start::Latest };
                subs.push((ring.subscribe_detached(start), false));
            }
            Op::Poll { sub, limit } => {
                if let Some(i) = pick(&subs, sub) {
                    let mut n = 0usize;
                    let max = info.max_message_len as usize;
                    let _ = subs[i].0.poll(usize::from(limit), |m| {
                        assert!(m.payload.len() <= max);
                        n += 1;
                    });
                }
            }
            Op::Seek { sub, to } => {
                if let Some(i) = pick(&subs, sub) {
                    // Zero-copy readers (holding slots) may not seek; a
                    // seek is to a frame boundary the caller read elsewhere
                    // (positions near u64::MAX overflow `pos + capacity` in
                    // the lap check: no stream gets there).
                    if !subs[i].0.is_holding() {
                        subs[i].0.seek((to.get(cap) & !31) % (1 << 60));
                    }
                }
            }
            Op::StopOnOverrun { sub } => {
                if let Some(i) = pick(&subs, sub) {
                    subs[i].0.set_stop_on_overrun(true);
                }
            }
            Op::Hold { sub } => {
                // As rilld's archiver does: on a slot that holds publishers
                // back already (making an ordinary overwrite slot holding
                // asserts the caller's promise that no publisher was
                // granted past it, which is no input check).
                if let Some(i) = pick(&subs, sub).filter(|&i| subs[i].0.is_holding()) {
                    subs[i].0.set_hold(true);
                    subs[i].1 = true;
                }
            }
            Op::Archive { sub } => {
                if let Some(i) = pick(&subs, sub) {
                    let (s, hold) = &mut subs[i];
                    if *hold {
                        let (from, to) = (s.held_position(), s.position());
                        if to > from && to - from <= cap {
                            let (a, b) = s.held_bytes(from, to);
                            let copy = [a, b].concat();
                            let _ = rill_store::BatchHeader::for_frames(from, &[&copy]);
                            s.release_to(to);
                        }
                    }
                }
            }
            Op::HasData { sub } => {
                if let Some(i) = pick(&subs, sub) {
                    let _ = subs[i].0.has_data();
                }
            }
            Op::Drop { sub } => {
                if let Some(i) = pick(&subs, sub) {
                    subs.swap_remove(i);
                }
            }
            Op::IsPadding { at } => {
                // KNOWN (reported, not fixed: shm/): a position that is not
                // a multiple of 32 trips the bounds assertion of
                // RingMemory::word (memory.rs) instead of giving None, so
                // `Publisher::wait_durable(p)` with such a `p` panics in the
                // client (fuzz/regressions/ring_read/is-padding-at-unaligned).
                // Remove this filter once is_padding_at checks alignment.
                let p = at.get(cap);
                if p % 32 == 0 {
                    let _ = ring.is_padding_at(p);
                }
            }
            Op::Subscribers => {
                let _ = ring.subscribers();
            }
            Op::Reclaim { timeout_ns, now_ns } => {
                let r = reclaimer.get_or_insert_with(|| ring.reclaimer(u64::from(timeout_ns)));
                let _ = r.do_work(now_ns);
            }
        }
    }
});
