//! Padding over claims abandoned by crashed publishers.
//!
//! A publisher killed between claim and commit leaves a frame that is
//! claimed (the tail is past it) but never committed; every reader stops
//! there, and publishers stop a ring later. The reclaimer looks where
//! readers wait (slot positions, the head) and follows the stream like a
//! reader that holds nobody back; when the earliest uncommitted frame stays
//! the same for longer than its timeout, it turns it into padding:
//!
//! * commit word CLAIMED(p): the header's length is valid (the publisher
//!   wrote it before CLAIMED, with release); pad exactly that frame.
//! * anything else: the publisher died between moving the tail and writing
//!   CLAIMED. Scan forward in 32-byte steps for the next frame start (a
//!   position word equal to its own position, committed or CLAIMED), the
//!   next lap boundary, or the tail, and pad up to it.
//!
//! With CLAIMED the padding keeps the claim's own span, so a publisher that
//! was merely slow and commits after all leaves a frame readers see as
//! padding or as its message, never at another length. A publisher slower
//! than the timeout loses that message (as with Aeron's unblock timeout);
//! choose the timeout accordingly (the daemon uses seconds).

use super::{claimed, commit, committed, Ring};
use crate::frame::{frame_span, pack_len_kind, unpack_len_kind, FrameKind, FRAME_ALIGNMENT, HEADER_LEN};
use crate::frame::{WORD_LEN_KIND, WORD_POSITION};
use crate::sync::{fence, Ordering};

/// Most frames examined per `do_work` call (bounds its running time).
const MAX_FRAMES_PER_CALL: usize = 1 << 16;

/// Finds and pads abandoned claims in one ring.
#[derive(Debug)]
pub struct Reclaimer {
    ring: Ring,
    timeout_ns: u64,
    cursor: u64,
    stuck: Option<(u64, u64)>,
    padded_bytes: u64,
    padded_frames: u64,
}

impl Reclaimer {
    pub(crate) fn new(ring: Ring, timeout_ns: u64) -> Self {
        // Start at the head: every frame before it is committed, and no
        // claim after it can have been lapped (so a claim abandoned before
        // we existed is still ahead of us).
        let cursor = ring.inner.mem.counters().head.value.load(Ordering::Acquire);
        Reclaimer { ring, timeout_ns, cursor, stuck: None, padded_bytes: 0, padded_frames: 0 }
    }

    /// Total bytes padded over so far.
    pub fn padded_bytes(&self) -> u64 {
        self.padded_bytes
    }

    /// Abandoned claims padded so far.
    pub fn padded_frames(&self) -> u64 {
        self.padded_frames
    }

    /// Looks for a claim that stays uncommitted for the timeout and pads
    /// it. `now_ns` is any monotonic clock. Returns the bytes padded.
    ///
    /// Cost is bounded: it checks the frames readers wait at (each live
    /// slot's position and the head), then follows the stream for at most
    /// `MAX_FRAMES_PER_CALL` frames. The earliest uncommitted frame found is
    /// the one that blocks everyone behind it; only it is tracked.
    pub fn do_work(&mut self, now_ns: u64) -> u64 {
        let tail = self.ring.inner.mem.counters().tail.value.load(Ordering::Acquire);
        let walked = self.walk(tail);
        let waiting = self.ring.subscribers().into_iter().map(|s| s.position);
        let head = self.ring.inner.mem.counters().head.value.load(Ordering::Acquire);
        let stuck_at = waiting
            .chain([head, walked])
            .filter(|&p| p < tail && !self.committed(p))
            .min();
        let Some(p) = stuck_at else {
            self.stuck = None;
            return 0;
        };
        match self.stuck {
            Some((at, since)) if at == p && now_ns.saturating_sub(since) >= self.timeout_ns => {
                self.stuck = None;
                let w = self.word(p);
                let span = self.claimed_span(p, w);
                self.pad(p, w, span, tail)
            }
            Some((at, _)) if at == p => 0,
            _ => {
                self.stuck = Some((p, now_ns));
                0
            }
        }
    }

    /// Follows committed frames from the cursor (bounded); returns where it
    /// stopped: the tail, or the first frame not committed.
    fn walk(&mut self, tail: u64) -> u64 {
        let mem = &self.ring.inner.mem;
        let cap = self.ring.inner.info.capacity;
        // SYNC(head): Acquire pairs with the publishers' Release fetch_max.
        let head = mem.counters().head.value.load(Ordering::Acquire);
        if head > self.cursor || tail + HEADER_LEN as u64 > self.cursor + cap {
            // Behind the head (or lapped): everything before the head is
            // committed, and no claim can be a ring behind the head, so an
            // abandoned claim is never skipped by restarting there.
            self.cursor = head;
        }
        for _ in 0..MAX_FRAMES_PER_CALL {
            let p = self.cursor;
            if p >= tail || !self.committed(p) {
                break;
            }
            let off = (p & self.ring.inner.mask) as usize;
            let (len, _, _) = unpack_len_kind(mem.word(off + WORD_LEN_KIND).load(Ordering::Relaxed));
            let span = frame_span(len as usize) as u64;
            fence(Ordering::Acquire);
            let lapped = mem.counters().tail.value.load(Ordering::Relaxed) + HEADER_LEN as u64 > p + cap;
            if lapped || (len as usize) < HEADER_LEN || span > cap - off as u64 {
                break; // torn or corrupt: readers report it; restart next call
            }
            self.cursor += span;
        }
        self.cursor
    }

    fn word(&self, p: u64) -> u64 {
        let off = (p & self.ring.inner.mask) as usize;
        // SYNC(claimed): Acquire pairs with the publisher's Release store of
        // CLAIMED (the length before it is valid).
        self.ring.inner.mem.word(off + WORD_POSITION).load(Ordering::Acquire)
    }

    fn committed(&self, p: u64) -> bool {
        committed(&self.ring.inner.mem, self.ring.inner.salt, (p & self.ring.inner.mask) as usize, p).is_some()
    }

    /// The claim's span if the commit word says CLAIMED and the length is
    /// sane; `None` if the length must be found by scanning.
    fn claimed_span(&self, p: u64, w: u64) -> Option<u64> {
        if w != claimed(p) {
            return None;
        }
        let cap = self.ring.inner.info.capacity;
        let off = (p & self.ring.inner.mask) as usize;
        let (len, _, _) = unpack_len_kind(self.ring.inner.mem.word(off + WORD_LEN_KIND).load(Ordering::Relaxed));
        let span = frame_span(len as usize) as u64;
        ((len as usize) >= HEADER_LEN && span <= cap - off as u64).then_some(span)
    }

    /// Installs a padding frame over the abandoned claim at `p`.
    fn pad(&mut self, p: u64, seen: u64, span: Option<u64>, tail: u64) -> u64 {
        let mem = &self.ring.inner.mem;
        let cap = self.ring.inner.info.capacity;
        let mask = self.ring.inner.mask;
        let span = span.unwrap_or_else(|| {
            // No CLAIMED marker: find where the next frame starts.
            let lap_end = (p + 1).next_multiple_of(cap);
            let mut q = p + FRAME_ALIGNMENT as u64;
            while q < tail && q < lap_end {
                let v = mem.word((q & mask) as usize + WORD_POSITION).load(Ordering::Acquire);
                if v == q || v == claimed(q) {
                    break;
                }
                q += FRAME_ALIGNMENT as u64;
            }
            q.min(lap_end) - p
        });
        let off = (p & mask) as usize;
        if self.committed(p) || self.word(p) != seen {
            return 0; // the publisher committed (or moved on) after all
        }
        // With CLAIMED the span is the claim's own, so a publisher that
        // commits after all leaves a frame of the same span: readers see it
        // as padding or as data, never a different length.
        mem.word(off + WORD_LEN_KIND).store(pack_len_kind(span as u32, FrameKind::Padding, 0), Ordering::Relaxed);
        commit(mem, self.ring.inner.salt, off, p, 0);
        tracing::warn!(position = p, bytes = span, "padded over an abandoned claim");
        self.padded_bytes += span;
        self.padded_frames += 1;
        self.cursor = p + span;
        let wake = mem.wake();
        wake.futex.fetch_add(1, Ordering::Release);
        crate::os::futex::wake_all(&wake.futex);
        span
    }
}
