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
//! 5. timestamp, and COMMITTING(p) into the position word: the claim's
//!    announcement that it commits (readers take it for nothing);
//! 6. load the reclaimer's decision words (`reclaim`, `padded_end`): if the
//!    reclaimer padded over the claim while we stalled, the claim is lost:
//!    make it padding and report [`ClaimError::Reclaimed`];
//! 7. else the tag word, then `p` into the position word (release);
//! 8. if a subscriber sleeps, bump the futex word and FUTEX_WAKE.
//!
//! Steps 5 and 6 are one side of a Dekker handshake with the reclaimer,
//! which announces its decision and then looks at the position word (see
//! `reclaim`): at least one of the two sees the other. As for the wake in 8,
//! the reclaimer pays the barrier (membarrier), so a publisher pays only a
//! compiler fence and two loads of a line nobody writes, unless it could not
//! register for membarrier and fences anyway.
//!
//! No system call, lock or allocation per message, except the wake in 8,
//! made only when a waiter is flagged.

use super::{claimed, commit, committing, Policy, Ring};
use crate::layout::{RECLAIM_NONE, RECLAIM_PADDING, RECLAIM_PENDING};

/// How often a commit waits for the reclaimer to finish writing padding
/// that may reach into its claim before it stops waiting (a reclaimer that
/// died in the middle of it). The reclaimer needs a handful of stores.
#[cfg(not(loom))]
const MAX_RECLAIM_WAITS: u32 = 1 << 16;
#[cfg(loom)]
const MAX_RECLAIM_WAITS: u32 = 3;
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
    /// Nothing of the claim was published: this publisher stalled between
    /// claim and commit for longer than the daemon's unblock timeout, and
    /// the daemon padded over the claim so that the stream could go on
    /// (see `Ring::reclaimer`). Every subscriber saw padding there, never
    /// the message; publish it again. (`offer` does so by itself.)
    #[error("the claim at position {position} was padded over while this publisher stalled past the unblock timeout: nothing of it was published")]
    Reclaimed {
        /// Position of the claim (of a batch: its first frame).
        position: u64,
    },
    /// The ring's tail (a shared ring's, which every publisher of the
    /// stream may write) is behind where this publication knows the stream
    /// is: the end of its own last claim, or the position the daemon
    /// vouches is durable. Only a writer of the ring's header moves it
    /// back; a claim there would overwrite frames already published (and
    /// already on disk), and its message could never be archived. Nothing
    /// was published. The stream's ring is damaged: its publishers should
    /// stop using it.
    #[error("the ring's tail {tail} is behind {floor}, where this stream already is (another writer of the ring moved it back): nothing was published")]
    Rewound {
        /// The tail the ring holds.
        tail: u64,
        /// Where the stream is known to be.
        floor: u64,
    },
}

/// How many times [`Publication::offer`] publishes again after
/// [`ClaimError::Reclaimed`] before it gives the error to its caller. A
/// claim is reclaimed only after its publisher stalled between claim and
/// commit for the daemon's unblock timeout, so twice in one offer means
/// something else is going on: the reclaimer's words in the ring's header
/// forged (any publisher of the stream may write them). Without a bound
/// such a lie would hold a non-blocking call for ever.
const MAX_RECLAIMED_RETRIES: u32 = 2;

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
    /// Exclusive: our own tail (nobody else moves it). Shared: the end of
    /// our last claim, or the durable position when we started: the tail
    /// may never be behind it (see [`ClaimError::Rewound`]).
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
        // A shared ring's tail is anyone's to write: start from what the
        // daemon vouches for instead (0 on a ring without a daemon page).
        let tail = if M::SHARED { inner.mem.durable().position.load(Ordering::Acquire) } else { inner.mem.counters().tail.value.load(Ordering::Acquire) };
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
        let span = frame_span(payload.len() + HEADER_LEN);
        let mut reclaimed = 0;
        loop {
            let p = self.reserve(payload.len(), span)?;
            let off = (p & self.mask) as usize;
            // SAFETY: [off + HEADER_LEN, off + HEADER_LEN + len) lies inside
            // the span we just reserved; nobody reads it before our commit.
            unsafe { self.ring.inner.mem.write_bytes(off + HEADER_LEN, payload) };
            match self.commit_claim(p, p + span as u64, self.now(), true) {
                // Padded over while we stalled: nobody saw it; offer again.
                Err(ClaimError::Reclaimed { .. }) if reclaimed < MAX_RECLAIMED_RETRIES => reclaimed += 1,
                other => return other.map(|()| p),
            }
        }
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
        // Shared: no claim below where the stream is known to be. The
        // durable position is loaded before the tail, so it cannot cover
        // our own claim (one line that changes once per sync at most).
        let floor = if M::SHARED { self.tail.max(self.ring.inner.mem.durable().position.load(Ordering::Relaxed)) } else { 0 };
        let (t, p) = loop {
            let t = if M::SHARED { self.ring.inner.mem.counters().tail.value.load(Ordering::Relaxed) } else { self.tail };
            if M::SHARED && t < floor {
                return Err(ClaimError::Rewound { tail: t, floor });
            }
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
                self.tail = p + span;
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

    /// Commits every frame of the claim `[start, end)` (one frame, or a
    /// batch of frames each with its `len_kind` written): steps 5 to 8 of
    /// the module docs. If the reclaimer padded over any of it, the whole
    /// claim becomes padding and the result is [`ClaimError::Reclaimed`].
    #[inline]
    fn commit_claim(&self, start: u64, end: u64, timestamp_ns: u64, one_frame: bool) -> Result<(), ClaimError> {
        let mem = &self.ring.inner.mem;
        // The next frame's position: a single frame's end is known; a
        // batch's frames say their lengths.
        let next = |p: u64, off: usize| if one_frame { end } else { p + self.span_at(off) };
        #[cfg(loom)]
        if !self.ring.inner.reclaimable {
            // A model without a reclaimer (`Ring::loom_reclaimable`): no
            // handshake, and the position word before the tag. A reader
            // takes a frame as committed only once both say `p`, and
            // acquires the tag, stored last with release either way, so
            // it sees the same two states (not yet, committed) in either
            // order; the order `commit` uses (tag first) only matters to
            // the reclaimer, and doubles what loom explores at every read
            // of a fresh frame (the relaxed position load may see either
            // value), so the models without a reclaimer use this one.
            use crate::frame::WORD_PUBLISHER;
            let mut p = start;
            while p < end {
                let off = self.off(p);
                mem.word(off + WORD_TIMESTAMP).store(timestamp_ns, Ordering::Relaxed);
                mem.word(off + WORD_POSITION).store(p, Ordering::Relaxed);
                let tag = u64::from(self.id) | (u64::from(super::commit_tag(self.salt, p)) << 32);
                mem.word(off + WORD_PUBLISHER).store(tag, Ordering::Release);
                p = next(p, off);
            }
            self.wake_if_waiting();
            return Ok(());
        }
        let mut p = start;
        while p < end {
            let off = self.off(p);
            mem.word(off + WORD_TIMESTAMP).store(timestamp_ns, Ordering::Relaxed);
            // SYNC(commit-position): Release, as in `commit`: a reclaimer
            // that sees COMMITTING sees the length (and the payload).
            mem.word(off + WORD_POSITION).store(committing(p), Ordering::Release);
            p = next(p, off);
        }
        let result = if self.reclaimed(start, end) {
            self.pad_claim(start, end);
            Err(ClaimError::Reclaimed { position: start })
        } else {
            let mut p = start;
            while p < end {
                let off = self.off(p);
                commit(mem, self.salt, off, p, self.id);
                p = next(p, off);
            }
            Ok(())
        };
        self.wake_if_waiting();
        result
    }

    /// The span of the frame at data offset `off`, from its `len_kind`
    /// word (at least one alignment unit, so a walk always advances).
    #[inline]
    fn span_at(&self, off: usize) -> u64 {
        let word = self.ring.inner.mem.word(off + WORD_LEN_KIND).load(Ordering::Relaxed);
        let (len, _, _) = crate::frame::unpack_len_kind(word);
        (frame_span(len as usize) as u64).max(crate::frame::FRAME_ALIGNMENT as u64)
    }

    /// Whether the reclaimer padded over (part of) the claim `[start,
    /// end)`, whose position words say COMMITTING. The load side of the
    /// handshake with `Reclaimer::pad`: the reclaimer stores PENDING, runs
    /// a barrier on every CPU, then looks at the position words; we stored
    /// CLAIMED and COMMITTING and now look at its decision. A decision
    /// still pending whose padding could reach our claim is cancelled
    /// (CAS), so it never pads; one being carried out is waited for.
    #[inline]
    fn reclaimed(&self, start: u64, end: u64) -> bool {
        if self.fence_on_commit || cfg!(loom) {
            fence(Ordering::SeqCst);
        } else {
            // The reclaimer's membarrier orders our store before our load.
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
        let words = &self.ring.inner.mem.counters().publishers.value;
        // SYNC(reclaim): Acquire pairs with the reclaimer's SeqCst/Release
        // stores and AcqRel CAS: a decision we see comes with its
        // reclaim_end, and with the padded_end and padding written before it.
        let mut decision = words.reclaim.load(Ordering::Acquire);
        let mut waits = 0u32;
        loop {
            let (at, state) = (decision >> 2, decision & 3);
            if state == RECLAIM_NONE || at >= end {
                break;
            }
            let until = words.reclaim_end.load(Ordering::Acquire);
            let now = words.reclaim.load(Ordering::Acquire);
            if now != decision {
                decision = now; // a new decision meanwhile: read both again
                continue;
            }
            if until <= start {
                break; // about claims before ours only
            }
            match state {
                RECLAIM_PENDING => {
                    match words.reclaim.compare_exchange(decision, at << 2, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => break,
                        Err(now) => decision = now,
                    }
                }
                _ if at >= start => return true, // PADDING or PADDED our claim
                RECLAIM_PADDING if waits < MAX_RECLAIM_WAITS => {
                    // Padding that may reach into our claim is being
                    // written (a few stores): wait for its padded_end.
                    waits += 1;
                    crate::sync::spin_or_yield(waits);
                    decision = words.reclaim.load(Ordering::Acquire);
                }
                _ => break,
            }
        }
        // Padding that reached into the claim (an earlier frame of a batch,
        // or a scan over a claim not yet marked) was written after
        // padded_end moved past its end.
        words.padded_end.load(Ordering::Acquire) > start
    }

    /// Turns the whole claim `[start, end)` into padding frames of their
    /// own spans, committed. Readers may have seen the reclaimer's padding
    /// at some of these positions (with the same spans, or one reaching the
    /// claim's end), never a message: so every reader sees padding here.
    #[cold]
    fn pad_claim(&self, start: u64, end: u64) {
        let mem = &self.ring.inner.mem;
        tracing::warn!(position = start, bytes = end - start, "claim padded over by the reclaimer while this publisher stalled");
        let mut p = start;
        while p < end {
            let off = self.off(p);
            let span = self.span_at(off).min(end - p);
            mem.word(off + WORD_LEN_KIND).store(pack_len_kind(span as u32, FrameKind::Padding, 0), Ordering::Relaxed);
            commit(mem, self.salt, off, p, self.id);
            p += span;
        }
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
        // Slot pages renewed since we mapped ours: ours may be pages their
        // former holders still write and nobody else reads. No limit from
        // them: back-pressured until the owner of this publication maps
        // the new ones (`Ring::remap_slot_pages`; the client library does
        // it when an offer comes back back-pressured).
        if self.ring.slots_stale() {
            self.limit = 0;
            return;
        }
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
        // A slot granted on a fresh page while we looked: the epoch moved
        // before the grant (SYNC(slots-epoch)), and we read its old page.
        self.limit = if self.ring.slots_stale() { 0 } else { limit.min(second) };
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
        let back_pressure = self.back_pressure;
        if let Some(words) = mem.granted() {
            // rilld's layout: the slots the daemon granted, whatever their
            // state words say (a former holder of a slot page may still
            // write it: marking its old slot active must not hold us back,
            // nor marking the next holder's slot free let us overrun it).
            // On an overwrite ring, of those, the holding ones.
            let mut min: Option<u64> = None;
            for (w, word) in words.iter().enumerate() {
                // SYNC(join): SeqCst pairs with the daemon's SeqCst RMW of
                // the grant after the slot's position store (Dekker, as
                // below): a grant we see comes with its position.
                let mut bits = word.load(Ordering::SeqCst);
                while bits != 0 {
                    let i = (w * 64) as u32 + bits.trailing_zeros();
                    bits &= bits - 1;
                    let Some(s) = mem.slot(i) else { continue };
                    if back_pressure || s.state.load(Ordering::SeqCst) == SLOT_HOLDING {
                        let p = s.position.load(Ordering::SeqCst);
                        min = Some(min.map_or(p, |m| m.min(p)));
                    }
                }
            }
            return min;
        }
        let hwm = mem.counters().publishers.value.slot_hwm.load(Ordering::SeqCst).min(mem.slot_count());
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

    /// Publishes the message, unless the daemon padded over the claim
    /// while this publisher stalled ([`ClaimError::Reclaimed`]: nothing was
    /// published; claim again).
    pub fn commit(mut self) -> Result<(), ClaimError> {
        self.done = true;
        let ts = self.publication.now();
        let end = self.position + frame_span(self.len + HEADER_LEN) as u64;
        self.publication.commit_claim(self.position, end, ts, true)
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
    /// position of the first frame, or [`ClaimError::Reclaimed`] if the
    /// daemon padded over the batch while this publisher stalled: then no
    /// message of it was published.
    pub fn commit(mut self) -> Result<u64, ClaimError> {
        let start = self.start;
        let result = self.commit_all();
        self.start = self.end; // nothing left for Drop
        result.map(|()| start)
    }

    fn commit_all(&self) -> Result<(), ClaimError> {
        let pubn = &*self.publication;
        if self.start == self.cursor {
            let w = pack_len_kind((self.end - self.start) as u32, FrameKind::Padding, 0);
            pubn.mark_claimed(self.start, w);
        }
        pubn.commit_claim(self.start, self.end, pubn.now(), false)
    }
}

impl<M: ClaimMode> Drop for Batch<'_, M> {
    /// An uncommitted batch becomes one padding frame, so readers go on.
    fn drop(&mut self) {
        if self.start < self.end {
            self.cursor = self.start;
            let _ = self.commit_all(); // padding either way
        }
    }
}
