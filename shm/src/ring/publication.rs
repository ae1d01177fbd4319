//! Publishing: reserve space, write a frame, commit it with one release
//! store.
//!
//! * [`ExclusivePublication`]: the only writer of its ring; the tail is a
//!   plain store. Wait-free.
//! * [`SharedPublication`]: one of many writers, in any processes; the tail
//!   is claimed with compare-and-swap (lock-free; a claim that would wrap
//!   reserves the padding to the end and the frame at offset 0 in the same
//!   CAS, as Agrona's many-to-one ring buffer does).
//!
//! Order of one claim at `p` ending at `end` (see the module docs of `ring`
//! for the commit word's states):
//! 1. move the tail to `end`, then a release fence (overwrite readers
//!    validate against the tail, so it must move before any byte changes);
//! 2. write `length/kind` and CLAIMED(p) (release: the reclaimer trusts the
//!    length it sees with CLAIMED);
//! 3. (wrap) commit the padding frame at the old tail;
//! 4. the caller writes the payload;
//! 5. timestamp, `p` into the position word, then the tag word (release);
//! 6. if a subscriber sleeps, bump the futex word and FUTEX_WAKE.
//!
//! No system call, lock or allocation per message, except the wake in 7,
//! made only when a waiter is flagged.

use super::{claimed, commit, Policy, Ring};
use crate::frame::{frame_span, pack_len_kind, FrameKind, HEADER_LEN, WORD_LEN_KIND, WORD_POSITION};
use crate::frame::WORD_TIMESTAMP;
use crate::layout::{SLOT_ACTIVE, SLOT_HOLDING};
use crate::sync::{fence, Ordering};
use std::marker::PhantomData;
use std::time::Instant;
use thiserror::Error;

/// Why a claim or offer did not happen.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClaimError {
    /// The slowest live subscriber is a whole ring behind (back-pressure
    /// policy), or a holding slot is (either policy: the archiver of a
    /// persisted stream, until it has the frames on disk), or another
    /// publisher's unfinished claim is (either policy: a publisher never
    /// laps an uncommitted frame); retry later.
    #[error("back-pressured: a subscriber or an unfinished claim is a whole ring behind")]
    BackPressured,
    /// The message is longer than the ring's maximum.
    #[error("message of {len} bytes exceeds the ring's maximum of {max}")]
    TooLong {
        /// Requested length.
        len: usize,
        /// The ring's maximum.
        max: usize,
    },
    /// The mapping is read-only.
    #[error("the ring is mapped read-only")]
    ReadOnly,
    /// A blocking call reached its deadline.
    #[error("deadline passed while back-pressured")]
    TimedOut,
}

/// Why an offer failed; gives the caller's message back where it can.
pub type OfferError = ClaimError;

mod sealed {
    pub trait Sealed {}
}

/// How a publication claims space: [`Exclusive`] or [`Shared`].
pub trait ClaimMode: sealed::Sealed + std::fmt::Debug {
    #[doc(hidden)]
    const SHARED: bool;
}

/// The only writer of its ring.
#[derive(Debug)]
pub struct Exclusive;
/// One of several writers.
#[derive(Debug)]
pub struct Shared;
impl sealed::Sealed for Exclusive {}
impl sealed::Sealed for Shared {}
impl ClaimMode for Exclusive {
    const SHARED: bool = false;
}
impl ClaimMode for Shared {
    const SHARED: bool = true;
}

/// A publication that is the ring's only writer.
pub type ExclusivePublication = Publication<Exclusive>;
/// A publication that shares the ring with other writers.
pub type SharedPublication = Publication<Shared>;

/// Writes frames into a ring. Owned by one thread.
#[derive(Debug)]
pub struct Publication<M: ClaimMode> {
    ring: Ring,
    id: u32,
    capacity: u64,
    mask: u64,
    max_message_len: usize,
    back_pressure: bool,
    /// Exclusive: our own tail (nobody else moves it).
    tail: u64,
    /// Cached publisher limit: we may claim up to here without looking at
    /// subscriber slots again (each side caches the other's position).
    limit: u64,
    timestamps: bool,
    fence_on_commit: bool,
    salt: u64,
    _mode: PhantomData<M>,
}

/// Space claimed for one message; write the payload, then [`Claim::commit`].
/// Dropping it uncommitted turns the frame into padding.
#[derive(Debug)]
pub struct Claim<'a, M: ClaimMode> {
    publication: &'a mut Publication<M>,
    position: u64,
    len: usize,
    done: bool,
}

impl<M: ClaimMode> Publication<M> {
    pub(crate) fn new(ring: Ring) -> Result<Self, ClaimError> {
        #[cfg(not(loom))]
        if ring.is_read_only() {
            return Err(ClaimError::ReadOnly);
        }
        let inner = &ring.inner;
        let words = &inner.mem.counters().publishers.value;
        let id = words.next_id.fetch_add(1, Ordering::Relaxed);
        #[cfg(not(loom))]
        let fence_on_commit = !crate::os::futex::register_publisher_process();
        #[cfg(loom)]
        let fence_on_commit = false;
        if fence_on_commit {
            words.fenced.fetch_add(1, Ordering::SeqCst);
        }
        let tail = inner.mem.counters().tail.value.load(Ordering::Acquire);
        Ok(Publication {
            capacity: inner.info.capacity,
            mask: inner.mask,
            max_message_len: inner.info.max_message_len as usize,
            back_pressure: inner.info.policy == Policy::BackPressure,
            tail,
            limit: 0,
            id,
            timestamps: true,
            fence_on_commit,
            salt: inner.salt,
            ring,
            _mode: PhantomData,
        })
    }

    /// This publication's id, written into every frame it publishes.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Whether frames carry a publish timestamp (default true). Reading the
    /// clock costs ~20 ns per message (per batch for batches).
    pub fn set_timestamps(&mut self, on: bool) {
        self.timestamps = on;
    }

    /// Writes `payload` as one message. Returns its position.
    #[inline]
    pub fn offer(&mut self, payload: &[u8]) -> Result<u64, ClaimError> {
        let p = self.reserve(payload.len(), frame_span(payload.len() + HEADER_LEN))?;
        let off = (p & self.mask) as usize;
        // SAFETY: [off + HEADER_LEN, off + HEADER_LEN + len) lies inside the
        // span we just reserved; nobody reads it before our commit.
        unsafe { self.ring.inner.mem.write_bytes(off + HEADER_LEN, payload) };
        self.commit_frame(p, self.now());
        Ok(p)
    }

    /// Like [`offer`](Self::offer), but waits while back-pressured until
    /// `deadline`, idling with `idle` between attempts.
    pub fn offer_blocking(
        &mut self,
        payload: &[u8],
        deadline: Instant,
        idle: &mut dyn crate::idle::IdleStrategy,
    ) -> Result<u64, ClaimError> {
        idle.reset();
        loop {
            match self.offer(payload) {
                Err(ClaimError::BackPressured) if Instant::now() < deadline => idle.idle(0),
                Err(ClaimError::BackPressured) => return Err(ClaimError::TimedOut),
                other => return other,
            }
        }
    }

    /// Claims space for a message of `len` bytes, to be written in place.
    #[cfg(not(loom))]
    #[inline]
    pub fn try_claim(&mut self, len: usize) -> Result<Claim<'_, M>, ClaimError> {
        let position = self.reserve(len, frame_span(len + HEADER_LEN))?;
        Ok(Claim { publication: self, position, len, done: false })
    }

    /// Claims `bytes` of contiguous space (a multiple of 32; use
    /// [`crate::frame::message_span`] to size it) for several messages,
    /// committed together. Unused space becomes padding at commit.
    pub fn try_claim_batch(&mut self, bytes: usize) -> Result<Batch<'_, M>, ClaimError> {
        let max = self.capacity as usize / 4;
        if !bytes.is_multiple_of(HEADER_LEN) || bytes == 0 || bytes > max {
            return Err(ClaimError::TooLong { len: bytes, max });
        }
        let start = self.reserve_span(bytes, pack_len_kind(bytes as u32, FrameKind::Padding, 0))?;
        Ok(Batch { start, end: start + bytes as u64, cursor: start, publication: self })
    }

    fn now(&self) -> u64 {
        if self.timestamps {
            crate::os::now_unix_ns()
        } else {
            0
        }
    }

    /// Reserves a frame for `len` payload bytes occupying `span`; returns
    /// its position with CLAIMED written.
    #[inline]
    fn reserve(&mut self, len: usize, span: usize) -> Result<u64, ClaimError> {
        if len > self.max_message_len {
            return Err(ClaimError::TooLong { len, max: self.max_message_len });
        }
        self.reserve_span(span, pack_len_kind((len + HEADER_LEN) as u32, FrameKind::Data, 0))
    }

    /// Moves the tail over `span` bytes (plus padding at a wrap), writes the
    /// frame's `len_kind` word and CLAIMED, cleans ahead, commits any
    /// padding; returns the frame's position.
    #[inline]
    fn reserve_span(&mut self, span: usize, len_kind: u64) -> Result<u64, ClaimError> {
        let span = span as u64;
        let (t, p) = loop {
            let t = if M::SHARED { self.ring.inner.mem.counters().tail.value.load(Ordering::Relaxed) } else { self.tail };
            let off = t & self.mask;
            let pad = if off + span > self.capacity { self.capacity - off } else { 0 };
            let p = t + pad;
            // Room for the frame plus one header of slack: readers that
            // validate against the tail treat claims as reaching a header
            // past it (`lapped_at`), and the join protocol uses the same bound.
            if p + span + HEADER_LEN as u64 > self.limit {
                self.refresh_limit(t);
                if p + span + HEADER_LEN as u64 > self.limit {
                    return Err(ClaimError::BackPressured);
                }
            }
            let counters = self.ring.inner.mem.counters();
            if !M::SHARED {
                self.tail = p + span;
                counters.tail.value.store(p + span, Ordering::Relaxed);
                break (t, p);
            }
            if counters
                .tail
                .value
                .compare_exchange_weak(t, p + span, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                break (t, p);
            }
        };
        // SYNC(tail-before-bytes): orders the tail move before every byte we
        // write next; pairs with the Acquire fence in the overwrite reader's
        // validation (a reader that saw any of our bytes then sees the tail
        // that covers them). Free on x86.
        fence(Ordering::Release);
        let mem = &self.ring.inner.mem;
        self.mark_claimed(p, len_kind);
        if p != t {
            let pad_word = pack_len_kind((p - t) as u32, FrameKind::Padding, 0);
            mem.word(self.off(t) + WORD_LEN_KIND).store(pad_word, Ordering::Relaxed);
            commit(mem, self.salt, self.off(t), t, self.id);
        }
        Ok(p)
    }

    /// Writes the header word and CLAIMED(p) (release: the reclaimer that
    /// sees CLAIMED may trust the length).
    #[inline]
    fn mark_claimed(&self, p: u64, len_kind: u64) {
        let mem = &self.ring.inner.mem;
        let off = self.off(p);
        mem.word(off + WORD_LEN_KIND).store(len_kind, Ordering::Relaxed);
        // SYNC(claimed): pairs with the Acquire in Reclaimer::do_work.
        mem.word(off + WORD_POSITION).store(claimed(p), Ordering::Release);
    }

    /// Writes timestamp and id, then commits the frame at `p`.
    #[inline]
    fn commit_frame(&self, p: u64, timestamp_ns: u64) {
        let mem = &self.ring.inner.mem;
        let off = self.off(p);
        mem.word(off + WORD_TIMESTAMP).store(timestamp_ns, Ordering::Relaxed);
        commit(mem, self.salt, off, p, self.id);
        self.wake_if_waiting();
    }

    #[inline]
    fn wake_if_waiting(&self) {
        if self.fence_on_commit {
            // Without membarrier this publisher pays the StoreLoad fence of
            // the Dekker handshake itself (see os::futex).
            fence(Ordering::SeqCst);
        }
        let wake = self.ring.inner.mem.wake();
        // The waker clears the flag (one wake per sleep, not one per commit
        // until the sleeper runs again); FUTEX_WAKE wakes every sleeper.
        if wake.waiters.load(Ordering::Relaxed) != 0 && wake.waiters.swap(0, Ordering::AcqRel) != 0 {
            // SYNC(futex): Release pairs with the sleeper's Acquire load of
            // the futex word; a sleeper that loaded it before this bump
            // returns from FUTEX_WAIT at once.
            wake.futex.fetch_add(1, Ordering::Release);
            crate::os::futex::wake_all(&wake.futex);
        }
    }

    /// Recomputes the limit. Back-pressure: one ring past the slowest live
    /// subscriber, or, with none, one ring past `head`, the oldest frame
    /// that may still be uncommitted. Overwrite: one ring past `head`, and
    /// no more than one ring past the slowest holding slot (a persisted
    /// stream's archiver), if any. The `head` bound is what keeps a
    /// publisher from lapping another publisher's unfinished claim (whose
    /// late writes would land in newer frames and tear them); an overwrite
    /// ring keeps it even with holding slots, because a holding slot may
    /// join at the tail, past a claim not yet committed.
    ///
    /// Joiners read `limit_granted` after publishing their slot; we publish
    /// our limit there and then look at the slots again. Both sides use
    /// SeqCst, so (Dekker) either the joiner sees our new limit and starts
    /// within it, or our second look sees the joiner and we lower our limit.
    /// Under the overwrite policy only joiners of holding slots take part
    /// (an ordinary reader validates what it copies and needs no promise),
    /// but every refresh publishes its limit, so that a holding slot can
    /// join at any time. All of it runs here, once a ring or so, never per
    /// message.
    #[cold]
    fn refresh_limit(&mut self, tail: u64) {
        let counters = self.ring.inner.mem.counters();
        let first = self.min_holding();
        let limit = match first {
            Some(min) if self.back_pressure => {
                // A back-pressure subscriber's position is a boundary with
                // everything before it committed: a valid head. (It only
                // moves over committed frames, and a `Latest` join starts
                // at the first unfinished claim, not past it: see
                // `Subscriber::attach`.)
                // SYNC(head): Release pairs with the Acquire loads of head.
                counters.head.value.fetch_max(min, Ordering::Release);
                min + self.capacity
            }
            Some(min) => min.min(self.advance_head(tail)) + self.capacity,
            None => self.advance_head(tail) + self.capacity,
        };
        counters.limit_granted.value.fetch_max(limit, Ordering::SeqCst);
        let second = self.min_holding().map_or(limit, |m| m + self.capacity);
        self.limit = limit.min(second);
    }

    /// Moves `head` over committed frames, up to `tail` or the first frame
    /// still uncommitted; returns the new head.
    fn advance_head(&self, tail: u64) -> u64 {
        let mem = &self.ring.inner.mem;
        let head = &mem.counters().head.value;
        // SYNC(head): Acquire pairs with the Release fetch_max below and in
        // refresh_limit: frames before the head we read were committed.
        let start = head.load(Ordering::Acquire);
        let h = super::committed_end(&self.ring, start, tail);
        // The walk is only valid if nobody lapped `start` while we read (we
        // may have been descheduled while others moved on).
        fence(Ordering::Acquire);
        let now_tail = mem.counters().tail.value.load(Ordering::Relaxed);
        if h > start && now_tail + HEADER_LEN as u64 <= start + self.capacity {
            // SYNC(head): see above.
            head.fetch_max(h, Ordering::Release);
        }
        head.load(Ordering::Acquire)
    }

    /// The lowest position of the slots that hold publishers back: every
    /// live slot of a back-pressure ring, the holding slots of an
    /// overwrite ring.
    fn min_holding(&self) -> Option<u64> {
        let mem = &self.ring.inner.mem;
        let hwm = mem.counters().publishers.value.slot_hwm.load(Ordering::SeqCst).min(mem.slot_count());
        let back_pressure = self.back_pressure;
        (0..hwm)
            .filter_map(|i| {
                let s = mem.slot(i)?;
                // SYNC(slot): SeqCst loads pair with the joiner's SeqCst stores
                // (Dekker, above) and, being at least Acquire, with the
                // subscriber's Release position store: data it has read is no
                // longer read once we see its position past it.
                let state = s.state.load(Ordering::SeqCst);
                let holds = state == SLOT_HOLDING || (back_pressure && state == SLOT_ACTIVE);
                holds.then(|| s.position.load(Ordering::SeqCst))
            })
            .min()
    }

    #[inline]
    fn off(&self, p: u64) -> usize {
        (p & self.mask) as usize
    }
}

impl<M: ClaimMode> Drop for Publication<M> {
    fn drop(&mut self) {
        if self.fence_on_commit {
            self.ring.inner.mem.counters().publishers.value.fenced.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<M: ClaimMode> Claim<'_, M> {
    /// The stream position of this message.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The payload bytes to fill (exactly the claimed length).
    #[cfg(not(loom))]
    pub fn buf(&mut self) -> &mut [u8] {
        let off = self.publication.off(self.position) + HEADER_LEN;
        // SAFETY: the claim owns these bytes until commit or drop, and the
        // borrow of `self` keeps the view from outliving it.
        unsafe { self.publication.ring.inner.mem.bytes_mut(off, self.len) }
    }

    /// Publishes the message.
    pub fn commit(mut self) {
        self.done = true;
        let ts = self.publication.now();
        self.publication.commit_frame(self.position, ts);
    }

    /// Turns the claim into padding (what dropping it does).
    pub fn abort(mut self) {
        self.pad();
    }

    fn pad(&mut self) {
        self.done = true;
        let p = self.position;
        let span = frame_span(self.len + HEADER_LEN) as u32;
        let mem = &self.publication.ring.inner.mem;
        let off = self.publication.off(p);
        mem.word(off + WORD_LEN_KIND).store(pack_len_kind(span, FrameKind::Padding, 0), Ordering::Relaxed);
        commit(mem, self.publication.salt, off, p, self.publication.id);
        self.publication.wake_if_waiting();
    }
}

impl<M: ClaimMode> Drop for Claim<'_, M> {
    fn drop(&mut self) {
        if !self.done {
            self.pad();
        }
    }
}

/// Contiguous space for several messages, committed together (one clock
/// read, one tail move). Unused space becomes padding.
#[derive(Debug)]
pub struct Batch<'a, M: ClaimMode> {
    publication: &'a mut Publication<M>,
    start: u64,
    end: u64,
    cursor: u64,
}

impl<M: ClaimMode> Batch<'_, M> {
    /// Bytes still free in the batch.
    pub fn remaining(&self) -> usize {
        (self.end - self.cursor) as usize
    }

    /// Appends a message; `false` if it does not fit (or is too long).
    #[inline]
    pub fn push(&mut self, payload: &[u8]) -> bool {
        let Some(p) = self.next(payload.len()) else { return false };
        let off = self.publication.off(p) + HEADER_LEN;
        // SAFETY: inside the batch's reserved span, not yet committed.
        unsafe { self.publication.ring.inner.mem.write_bytes(off, payload) };
        true
    }

    /// Appends a message of `len` bytes to be written in place.
    #[cfg(not(loom))]
    pub fn claim(&mut self, len: usize) -> Option<&mut [u8]> {
        let p = self.next(len)?;
        let off = self.publication.off(p) + HEADER_LEN;
        // SAFETY: inside the batch's reserved span, not yet committed; the
        // borrow of `self` ends before commit.
        Some(unsafe { self.publication.ring.inner.mem.bytes_mut(off, len) })
    }

    fn next(&mut self, len: usize) -> Option<u64> {
        let span = frame_span(len + HEADER_LEN) as u64;
        if len > self.publication.max_message_len || self.cursor + span > self.end {
            return None;
        }
        let p = self.cursor;
        self.publication.mark_claimed(p, pack_len_kind((len + HEADER_LEN) as u32, FrameKind::Data, 0));
        self.cursor += span;
        if self.cursor < self.end {
            // Keep the unused rest a valid CLAIMED padding frame, so a
            // reclaimer can pad over it if we die.
            let rest = pack_len_kind((self.end - self.cursor) as u32, FrameKind::Padding, 0);
            self.publication.mark_claimed(self.cursor, rest);
        }
        Some(p)
    }

    /// Commits every message, and pads the unused rest. Returns the
    /// position of the first frame.
    pub fn commit(mut self) -> u64 {
        let start = self.start;
        self.commit_all();
        self.start = self.end; // nothing left for Drop
        start
    }

    fn commit_all(&self) {
        let pubn = &*self.publication;
        let ts = pubn.now();
        let mem = &pubn.ring.inner.mem;
        if self.start == self.cursor {
            let w = pack_len_kind((self.end - self.start) as u32, FrameKind::Padding, 0);
            pubn.mark_claimed(self.start, w);
        }
        let mut p = self.start;
        while p < self.end {
            let off = pubn.off(p);
            let (len, _, _) = crate::frame::unpack_len_kind(mem.word(off + WORD_LEN_KIND).load(Ordering::Relaxed));
            mem.word(off + WORD_TIMESTAMP).store(ts, Ordering::Relaxed);
            commit(mem, pubn.salt, off, p, pubn.id);
            p += frame_span(len as usize) as u64;
        }
        debug_assert_eq!(p, self.end);
        pubn.wake_if_waiting();
    }
}

impl<M: ClaimMode> Drop for Batch<'_, M> {
    /// An uncommitted batch becomes one padding frame, so readers go on.
    fn drop(&mut self) {
        if self.start < self.end {
            self.cursor = self.start;
            self.commit_all();
        }
    }
}
