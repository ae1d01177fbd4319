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
//! A publisher that was merely slow may come back and commit. It must then
//! learn that it lost the claim, and no reader may ever see its message
//! there (the archiver would write padding while a live reader got the
//! message, and a publisher acknowledging a batch by its last position
//! would acknowledge a message that does not exist). So the reclaimer
//! decides in a handshake with the publisher's commit (a Dekker handshake,
//! asymmetric like the wake-up in `os::futex`):
//!
//! 1. store PENDING(p) in the ring's `reclaim` word;
//! 2. run a full barrier on every CPU that runs a publisher (membarrier;
//!    publishers that could not register fence on their side instead);
//! 3. look at the position word again: if it is no longer what made us
//!    decide (the publisher now says COMMITTING or committed, or wrote
//!    CLAIMED after all), the publisher is alive: cancel, pad nothing;
//! 4. CAS PENDING(p) to PADDING(p): fails if the publisher cancelled the
//!    decision (it saw PENDING after announcing COMMITTING);
//! 5. raise `padded_end` past the padding, write it, store PADDED(p).
//!
//! The publisher stores COMMITTING, then loads `reclaim` and `padded_end`
//! (step 6 in `publication`): either we see COMMITTING in 3, or it sees our
//! PENDING (and cancels it, or finds PADDING/PADDED and turns its claim into
//! padding), or it sees `padded_end` past its claim's start. Either way the
//! claim is the message everywhere, or padding everywhere and the publisher
//! gets `ClaimError::Reclaimed`. What remains lost is a message of a
//! publisher slower than the timeout, which it learns (as with Aeron's
//! unblock timeout; choose the timeout accordingly: the daemon uses
//! seconds).
//!
//! A claim whose publisher is committing (position word COMMITTING) while
//! no padding of ours ever reached it is not padded but committed for it:
//! its publisher's check finds nothing, so it was told, or will be, that
//! it published. (A publisher stores the position word `p` only after the
//! tag, so `p` without the tag is never a publisher's state: it is left
//! over from fresh memory or an earlier lap, and such a claim is padded.)
//!
//! A claim abandoned before its CLAIMED store (a publisher frozen for the
//! whole timeout in the few instructions between moving the tail and
//! marking the claim) is padded by scanning; if that publisher comes back,
//! it marks the frame CLAIMED over the padding and readers wait there
//! until its commit, which finds `padded_end` past it and pads the claim
//! at its own spans. A reader that passed the scanned padding before then
//! is not affected: the scan ends where the next claim starts, which is
//! where the frozen claim ends.

use super::{claimed, commit, committed, committing, Ring};
use crate::layout::{RECLAIM_NONE, RECLAIM_PADDED, RECLAIM_PADDING, RECLAIM_PENDING};
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
                if let Some(span) = self.committing_span(p, w) {
                    return self.roll_forward(p, span);
                }
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

    /// The span from `p` to the next frame start after it (a position
    /// word equal to its own position, CLAIMED or COMMITTING), the next
    /// lap boundary, or `until`, whichever comes first.
    fn scan(&self, p: u64, until: u64) -> u64 {
        let mem = &self.ring.inner.mem;
        let (cap, mask) = (self.ring.inner.info.capacity, self.ring.inner.mask);
        let lap_end = (p + 1).next_multiple_of(cap);
        let mut q = p + FRAME_ALIGNMENT as u64;
        while q < until && q < lap_end {
            let v = mem.word((q & mask) as usize + WORD_POSITION).load(Ordering::Acquire);
            if v == q || v == claimed(q) || v == committing(q) {
                break;
            }
            q += FRAME_ALIGNMENT as u64;
        }
        q.min(lap_end).min(until.max(p + FRAME_ALIGNMENT as u64)) - p
    }

    /// If the publisher of the claim at `p` is committing it (its position
    /// word says COMMITTING, its length is sane) and no padding of ours
    /// ever reached it, so that its check (module docs) finds it was not
    /// padded over: the claim's span. The publisher is committing it, or
    /// died doing so.
    fn committing_span(&self, p: u64, w: u64) -> Option<u64> {
        if w != committing(p) {
            return None;
        }
        let words = &self.ring.inner.mem.counters().publishers.value;
        if words.padded_end.load(Ordering::Acquire) > p {
            return None; // its publisher will find it lost and pad it: so do we
        }
        let (cap, off) = (self.ring.inner.info.capacity, (p & self.ring.inner.mask) as usize);
        let (len, kind, _) = unpack_len_kind(self.ring.inner.mem.word(off + WORD_LEN_KIND).load(Ordering::Relaxed));
        let span = frame_span(len as usize) as u64;
        let known = FrameKind::from_u16(kind).is_some();
        (known && (len as usize) >= HEADER_LEN && span <= cap - off as u64).then_some(span)
    }

    /// Finishes the commit of a claim whose publisher decided to commit it
    /// (see `committing_span`) but stopped before its last store: what it
    /// would store (with publisher id 0, unknown). Padding it instead would
    /// lose a message whose publisher may believe it published.
    fn roll_forward(&mut self, p: u64, span: u64) -> u64 {
        let off = (p & self.ring.inner.mask) as usize;
        commit(&self.ring.inner.mem, self.ring.inner.salt, off, p, 0);
        tracing::warn!(position = p, bytes = span, "finished the commit of a claim its publisher stopped committing");
        self.cursor = p + span;
        let wake = self.ring.inner.mem.wake();
        wake.futex.fetch_add(1, Ordering::Release);
        crate::os::futex::wake_all(&wake.futex);
        0
    }

    /// The claim's span if the commit word says CLAIMED and the length is
    /// sane; `None` if the length must be found by scanning.
    fn claimed_span(&self, p: u64, w: u64) -> Option<u64> {
        if w != claimed(p) && w != committing(p) {
            return None;
        }
        let cap = self.ring.inner.info.capacity;
        let off = (p & self.ring.inner.mask) as usize;
        let (len, _, _) = unpack_len_kind(self.ring.inner.mem.word(off + WORD_LEN_KIND).load(Ordering::Relaxed));
        let span = frame_span(len as usize) as u64;
        ((len as usize) >= HEADER_LEN && span <= cap - off as u64).then_some(span)
    }

    /// Installs a padding frame over the abandoned claim at `p`, in a
    /// handshake with its publisher (module docs).
    fn pad(&mut self, p: u64, seen: u64, span: Option<u64>, tail: u64) -> u64 {
        let mem = &self.ring.inner.mem;
        let off = (p & self.ring.inner.mask) as usize;
        let scanned = span.is_none();
        let span = span.unwrap_or_else(|| self.scan(p, tail));
        let words = &mem.counters().publishers.value;
        let (pending, padding) = (p << 2 | RECLAIM_PENDING, p << 2 | RECLAIM_PADDING);
        words.reclaim_end.store(p + span, Ordering::Relaxed);
        // SYNC(reclaim): SeqCst, then a barrier on every CPU (or our own
        // fence, pairing with the fence of publishers that cannot use
        // membarrier), then the look at the position words. Release also
        // publishes reclaim_end to publishers that read this decision.
        words.reclaim.store(pending, Ordering::SeqCst);
        if cfg!(loom) || !crate::os::futex::heavy_barrier() {
            fence(Ordering::SeqCst);
        }
        // The position word first: a publisher stores `p` there after its
        // tag (with release), so if it is `p` the tag check below is sure.
        let now = mem.word(off + WORD_POSITION).load(Ordering::SeqCst);
        let moved_on = now != seen || self.committed(p);
        // A scan may have run over claims whose publishers have marked
        // them since: stop at the first (they see PENDING otherwise).
        let span = if scanned && !moved_on { self.scan(p, p + span) } else { span };
        if moved_on || words.reclaim.compare_exchange(pending, padding, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            // The publisher committed, marked or cancelled: it is alive.
            let _ = words.reclaim.compare_exchange(pending, p << 2 | RECLAIM_NONE, Ordering::AcqRel, Ordering::Relaxed);
            return 0;
        }
        words.padded_end.fetch_max(p + span, Ordering::AcqRel);
        // With CLAIMED the span is the claim's own; a publisher that comes
        // back pads its claim at the same spans (see `publication`).
        mem.word(off + WORD_LEN_KIND).store(pack_len_kind(span as u32, FrameKind::Padding, 0), Ordering::Relaxed);
        commit(mem, self.ring.inner.salt, off, p, 0);
        words.reclaim.store(p << 2 | RECLAIM_PADDED, Ordering::Release);
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
