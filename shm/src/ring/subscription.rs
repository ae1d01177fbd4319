//! Subscribing: read frames in place, in order, each subscriber at its own
//! position.
//!
//! A subscriber with a slot (`Ring::subscribe`) on a back-pressure ring
//! reads zero-copy: the handler gets `&[u8]` into the ring, valid for the
//! call, because publishers cannot pass the subscriber's position until
//! `poll` publishes it (once per call, with release). So does a *holding*
//! slot on an overwrite ring (`Ring::attach_holding`, or
//! [`Subscriber::set_hold`]): publishers of an overwrite ring heed holding
//! slots exactly as back-pressure publishers heed every slot. Every other
//! reader (an ordinary overwrite subscriber, or a detached one) copies each
//! frame out, then checks that no publisher claimed over it meanwhile
//! (seqlock validation); a lapped reader skips to the next intact lap
//! boundary and reports the bytes it lost, and never hands out torn data.
//! Asked to ([`Subscriber::set_stop_on_overrun`]), it stops where it was
//! lapped instead, so that its owner can fetch the lost frames elsewhere
//! (a persisted stream's log) and [`Subscriber::seek`] past them.
//!
//! "Publishers cannot pass" holds for honest ones. A hostile publisher maps
//! the ring writable like any publisher and can write any byte at any time,
//! including a payload a handler is reading in place. A reader that does not
//! trust every publisher asks for copies ([`Subscriber::set_copy_payloads`]):
//! each payload is copied out with atomic word loads (a racing write tears
//! the copy, which the reader must then validate, but is no data race) and
//! the handler reads the copy, which nobody else can change.
//!
//! Joining (the protocol publishers' `refresh_limit` pairs with): store our
//! slot position (SeqCst), load `limit_granted` (SeqCst); if a publisher may
//! already write over our start, pick a later start and repeat. A holding
//! slot of an overwrite ring joins the same way, except that its state
//! becomes `SLOT_HOLDING` after its position is stored, and it reads
//! `limit_granted` with an RMW (see `granted_after_publishing`); an
//! ordinary overwrite slot needs no promise and just takes its start.

use super::{committed, Policy, Ring};
use crate::frame::{frame_span, unpack_len_kind, FrameKind, HEADER_LEN, WORD_LEN_KIND, WORD_TIMESTAMP};
use crate::layout::{SLOT_ACTIVE, SLOT_FREE, SLOT_HOLDING};
use crate::sync::{fence, Ordering};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Longest nap of a blocking reader on a read-only mapping, which cannot
/// ask publishers to wake it.
const READ_ONLY_NAP: Duration = Duration::from_millis(1);

/// How long a blocking reader spins before it sleeps on the futex.
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(50);

/// Where a new subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// At the tail: only messages published from now on. On a
    /// back-pressure ring that includes any whose publishing was under way
    /// as the subscriber joined (claimed but not yet committed), and the
    /// ones after them: the subscriber starts at the first such claim.
    Latest,
    /// At the oldest message still intact in the ring.
    Oldest,
}

/// Why a subscriber could not join.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SubscribeError {
    /// Every subscriber slot is taken.
    #[error("all {0} subscriber slots are in use")]
    NoFreeSlot(u32),
    /// A slot needs a writable mapping; use a detached subscriber.
    #[error("the ring is mapped read-only; use a detached subscriber")]
    ReadOnly,
    /// The slot index is out of range.
    #[error("no slot {0} in this ring")]
    NoSuchSlot(u32),
    /// Publishers were granted room past every start the join tried, round
    /// after round: they lap the ring faster than a join settles, or (a
    /// publisher can write the ring's counters) the counters are
    /// inconsistent. The slot was given back; try again.
    #[error("the join did not settle in {rounds} rounds (publishers lapping it, or the ring's counters are inconsistent)")]
    Unsettled {
        /// Rounds tried.
        rounds: u32,
    },
}

/// Most rounds a join tries before it gives up ([`SubscribeError::Unsettled`]):
/// each round ends only when publishers were granted a whole ring past the
/// start it just published, so honest publishers need a handful at most;
/// the bound is for counters a hostile publisher wrote (the daemon joins
/// on clients' behalf and must never spin on them).
const MAX_JOIN_ROUNDS: u32 = 10_000;

/// Why a poll stopped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PollError {
    /// Our slot was freed by someone else (the daemon, which judged this
    /// process dead or hung): our position no longer holds publishers back,
    /// so reading on could hand out overwritten data. Open a new subscriber.
    #[error("subscriber slot {slot} was taken back (owner judged dead or hung); resubscribe")]
    Revoked {
        /// The slot.
        slot: u32,
    },
    /// Our slot was taken back while the handler was reading the message
    /// at `position` (the process was stopped or starved past the daemon's
    /// timeout in the middle of it): a publisher may have overwritten it
    /// as it was read, so whatever the handler made of that one message
    /// must be discarded. Every message handed before it was intact.
    /// Open a new subscriber.
    #[error("subscriber slot {slot} was taken back while the message at position {position} was being read; discard it and resubscribe")]
    RevokedDuringRead {
        /// The slot.
        slot: u32,
        /// The message that may have been overwritten while read.
        position: u64,
    },
    /// Reading the stream's log from disk (a replaying subscriber of a
    /// persisted stream) failed at `position`: a damaged batch, a gap, or an
    /// I/O error. Nothing after it was delivered.
    #[error("replaying the stream's log at position {position}: {reason}")]
    Replay {
        /// Where.
        position: u64,
        /// What went wrong.
        reason: String,
    },
    /// The stream's log lost positions `from..to`: damaged bytes on disk
    /// (rilld reports the same range). Nothing of it was delivered; the
    /// next poll goes on at `to`, with the first message after the damage.
    #[error("the stream's log lost positions {from}..{to}: {reason}; reading goes on after it")]
    Lost {
        /// First position lost.
        from: u64,
        /// First position after the damage.
        to: u64,
        /// What was wrong there.
        reason: String,
    },
    /// The frame at `position` is committed but its header is impossible.
    #[error("corrupt frame at position {position}: {reason}")]
    Corrupt {
        /// Where.
        position: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// One message, as handed to a poll handler.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The payload (in the ring, or in the subscriber's copy buffer).
    pub payload: &'a [u8],
    /// Stream position of the frame.
    pub position: u64,
    /// Publish timestamp, ns since the Unix epoch (0 if not stamped).
    pub timestamp_ns: u64,
    /// Id of the publisher.
    pub publisher_id: u32,
    /// Frame flags.
    pub flags: u16,
}

/// One payload's copy, 32-byte aligned like payloads in the ring, so that
/// whatever reads payloads in place (an rkyv archive) reads a copy the same
/// way.
#[derive(Debug)]
struct CopyBuf(Box<[Block]>);

#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
struct Block([u8; 32]);

const _: () = assert!(std::mem::size_of::<Block>() == 32 && std::mem::align_of::<Block>() == crate::frame::FRAME_ALIGNMENT);

impl CopyBuf {
    /// Room for `len` bytes.
    fn new(len: usize) -> Self {
        CopyBuf(vec![Block([0; 32]); len.div_ceil(32)].into_boxed_slice())
    }

    /// The first `len` bytes.
    fn bytes(&self, len: usize) -> &[u8] {
        assert!(len <= self.0.len() * 32);
        // SAFETY: blocks are 32 initialised bytes each with no padding
        // (asserted above), contiguous in the box; `len` is in bounds.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), len) }
    }

    /// The first `len` bytes, to write.
    fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        assert!(len <= self.0.len() * 32);
        // SAFETY: as in `bytes`, borrowed mutably.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), len) }
    }
}

/// Reads a ring. Owned by one thread.
#[derive(Debug)]
pub struct Subscriber {
    ring: Ring,
    slot: Option<u32>,
    position: u64,
    capacity: u64,
    mask: u64,
    max_message_len: usize,
    zero_copy: bool,
    /// Copy payloads out even where they could be read in place (see
    /// [`Subscriber::set_copy_payloads`]).
    copy_payloads: bool,
    copy: CopyBuf,
    overrun_bytes: u64,
    padding_bytes: u64,
    salt: u64,
    /// The owner pid written in our slot when we got it.
    slot_pid: u32,
    /// How long `poll_blocking` spins for data before it sleeps.
    spin_before_sleep: Duration,
    /// Hold mode: polls move `position` only; the slot keeps holding
    /// publishers back at `held` until [`Subscriber::release_to`].
    hold: bool,
    held: u64,
    /// Free the slot when dropped (else it stays, holding publishers back,
    /// for whoever takes it over: the archiver after a daemon restart).
    release_on_drop: bool,
    /// The state our slot is in while it is ours: `SLOT_ACTIVE`, or
    /// `SLOT_HOLDING` for a holding slot of an overwrite ring.
    slot_state: u32,
    /// Validated reads: stop where publishers lapped us instead of skipping
    /// ahead (see `set_stop_on_overrun`).
    stop_on_overrun: bool,
    /// Where a validated reader stopped because it was lapped there.
    stopped_at: Option<u64>,
}

impl Subscriber {
    pub(crate) fn join(ring: Ring, start: Start) -> Result<Self, SubscribeError> {
        let (slot, position) = Self::attach(&ring, start, std::process::id(), false)?;
        Ok(Self::with_slot(ring, slot, position))
    }

    /// Takes a free slot for a subscriber of process `pid` and finds its
    /// start (the join protocol); returns the slot index and position.
    /// `hold`: the slot holds publishers back whatever the policy (on an
    /// overwrite ring it becomes `SLOT_HOLDING`).
    pub(crate) fn attach(ring: &Ring, start: Start, pid: u32, hold: bool) -> Result<(u32, u64), SubscribeError> {
        let back_pressure = ring.inner.info.policy == Policy::BackPressure;
        // A holding join reads `limit_granted` with an RMW (see
        // `granted_after_publishing`).
        if !ring.inner.mem.slots_writable() || (!back_pressure && hold && !ring_writable(ring)) {
            return Err(SubscribeError::ReadOnly);
        }
        let mem = &ring.inner.mem;
        let slot = if ring.grants_slots() {
            // The daemon: a slot is free when it has not granted it, and
            // not revoked it from an owner that still lives. (Its state
            // word is written by whoever holds or held its page: not a
            // word to take the daemon's own decisions from.)
            (0..mem.slot_count()).find(|&i| {
                ring.granted(i) == Some(false)
                    && mem.slot(i).is_some_and(|s| {
                        s.state.load(Ordering::Acquire) != super::SLOT_REVOKED && {
                            s.state.store(SLOT_ACTIVE, Ordering::SeqCst);
                            true
                        }
                    })
            })
        } else {
            (0..mem.slot_count()).find(|&i| {
                mem.slot(i).is_some_and(|s| {
                    s.state.compare_exchange(SLOT_FREE, SLOT_ACTIVE, Ordering::Acquire, Ordering::Relaxed).is_ok()
                })
            })
        }
        .ok_or(SubscribeError::NoFreeSlot(mem.slot_count()))?;
        let s = mem.slot(slot).expect("slot found above");
        s.pid.store(pid, Ordering::Relaxed);
        s.overrun_bytes.store(0, Ordering::Relaxed);
        s.heartbeat_ns.store(0, Ordering::Relaxed);
        let probe = Self::detached(ring.clone(), start);
        if !back_pressure && !hold {
            s.position.store(probe.position, Ordering::Release);
            ring.set_granted(slot, true);
            // Listed like any other slot (monitoring, reaping, reclaimer).
            mem.counters().publishers.value.slot_hwm.fetch_max(slot + 1, Ordering::SeqCst);
            return Ok((slot, probe.position));
        }
        let cap = probe.capacity;
        let counters = mem.counters();
        // A back-pressure join at the tail starts at the first frame still
        // claimed but uncommitted, if any: a subscriber's position is where
        // publishers move `head` (the frame they may not lap) when they
        // refresh their limit, so it must not pass a claim whose late
        // commit would then land in newer frames. It reads that frame and
        // those after it, which were being published as it joined.
        let latest = |tail: u64| {
            if back_pressure {
                // SYNC(head): Acquire pairs with the publishers' Release
                // fetch_max: frames before the head we read were committed.
                super::committed_end(ring, counters.head.value.load(Ordering::Acquire).min(tail), tail)
            } else {
                tail
            }
        };
        // Publish a start, then check no publisher was granted the right to
        // write over it (see the module docs); move forward until none was.
        let mut p = if start == Start::Latest { latest(probe.position) } else { probe.position };
        let mut rounds = 0;
        loop {
            s.position.store(p, Ordering::SeqCst);
            counters.publishers.value.slot_hwm.fetch_max(slot + 1, Ordering::SeqCst);
            // SYNC(join): a SeqCst RMW after the position store: publishers
            // that see the grant see the position (see `min_holding`).
            ring.set_granted(slot, true);
            let granted = if back_pressure {
                counters.limit_granted.value.load(Ordering::SeqCst)
            } else {
                // From here on publishers heed the slot (at `p`, or at a
                // later start stored by a later round: only ever later).
                // SYNC(join): pairs with the publishers' SeqCst slot scan in
                // `min_holding`, through the RMW below (see there).
                s.state.store(SLOT_HOLDING, Ordering::SeqCst);
                granted_after_publishing(ring)
            };
            if granted <= p.saturating_add(cap) {
                return Ok((slot, p));
            }
            rounds += 1;
            if rounds >= MAX_JOIN_ROUNDS {
                ring.release_slot(slot);
                return Err(SubscribeError::Unsettled { rounds });
            }
            let tail = counters.tail.value.load(Ordering::Acquire);
            p = match start {
                Start::Latest => latest(tail),
                Start::Oldest => probe.oldest_boundary(granted, tail),
            };
        }
    }

    /// A subscriber on a slot already attached (by `attach`, here or in the
    /// daemon) at `position`. A holding slot of an overwrite ring
    /// (`SLOT_HOLDING`) reads zero-copy like any slot of a back-pressure
    /// ring.
    pub(crate) fn with_slot(ring: Ring, slot: u32, position: u64) -> Self {
        let mut sub = Self::detached(ring, Start::Latest);
        let (pid, state) = sub
            .ring
            .inner
            .mem
            .slot(slot)
            .map_or((0, SLOT_ACTIVE), |s| (s.pid.load(Ordering::Relaxed), s.state.load(Ordering::Acquire)));
        sub.slot_pid = pid;
        sub.slot = Some(slot);
        sub.position = position;
        sub.held = position;
        let holding = state == SLOT_HOLDING;
        sub.slot_state = if holding { SLOT_HOLDING } else { SLOT_ACTIVE };
        sub.zero_copy = sub.ring.inner.info.policy == Policy::BackPressure || holding;
        sub
    }

    pub(crate) fn detached(ring: Ring, start: Start) -> Self {
        let info = &ring.inner.info;
        let tail = ring.inner.mem.counters().tail.value.load(Ordering::Acquire);
        let mut sub = Subscriber {
            capacity: info.capacity,
            mask: ring.inner.mask,
            max_message_len: info.max_message_len as usize,
            copy: CopyBuf::new(info.max_message_len as usize),
            slot: None,
            position: tail,
            zero_copy: false,
            copy_payloads: false,
            overrun_bytes: 0,
            padding_bytes: 0,
            salt: ring.inner.salt,
            slot_pid: 0,
            spin_before_sleep: SPIN_BEFORE_SLEEP,
            hold: false,
            held: tail,
            release_on_drop: true,
            slot_state: SLOT_ACTIVE,
            stop_on_overrun: false,
            stopped_at: None,
            ring,
        };
        if start == Start::Oldest {
            let granted = sub.ring.inner.mem.counters().limit_granted.value.load(Ordering::SeqCst);
            sub.position = sub.oldest_boundary(granted.max(tail + HEADER_LEN as u64), tail);
        }
        sub
    }

    /// The oldest frame boundary not yet open to overwriting when
    /// publishers may write up to `granted`: the lowest live subscriber
    /// position or lap boundary at or after `granted - capacity`.
    fn oldest_boundary(&self, granted: u64, tail: u64) -> u64 {
        let floor = granted.saturating_sub(self.capacity);
        let lap = floor.next_multiple_of(self.capacity);
        let mut best = if lap <= tail { lap } else { tail };
        // SYNC(head): Acquire pairs with the publishers' Release fetch_max.
        let head = self.ring.inner.mem.counters().head.value.load(Ordering::Acquire);
        if head >= floor && head < best {
            best = head;
        }
        for s in self.ring.subscribers() {
            if Some(s.index) != self.slot && s.position >= floor && s.position < best {
                best = s.position;
            }
        }
        // A ring recreated at a persisted stream's log end never held
        // anything before its origin (which is at most the tail).
        best.max(self.ring.origin().min(tail))
    }

    /// The next position this subscriber will read.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Total bytes lost to overruns so far (skipped over; a reader that
    /// stops on overruns, see [`set_stop_on_overrun`](Self::set_stop_on_overrun),
    /// loses none).
    pub fn overrun_bytes(&self) -> u64 {
        self.overrun_bytes
    }

    /// Total bytes of padding frames passed over so far. For a subscriber
    /// that started at position `s`: `position() - s` always equals the
    /// spans of the messages handed out + `padding_bytes()` +
    /// `overrun_bytes()`.
    pub fn padding_bytes(&self) -> u64 {
        self.padding_bytes
    }

    /// This subscriber's slot, if it has one.
    pub fn slot(&self) -> Option<u32> {
        self.slot
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Records a sign of life in the slot (the daemon reads it).
    pub fn heartbeat(&self, now_ns: u64) {
        if let Some(i) = self.slot {
            if let Some(s) = self.ring.inner.mem.slot(i) {
                s.heartbeat_ns.store(now_ns, Ordering::Relaxed);
            }
        }
    }

    /// Hands up to `limit` messages, in order, to `handler`. Returns how
    /// many were handed. Never blocks.
    #[inline]
    pub fn poll<F>(&mut self, limit: usize, handler: F) -> Result<usize, PollError>
    where
        F: FnMut(Message<'_>),
    {
        if self.zero_copy {
            self.check_slot()?;
            self.poll_in_place(limit, handler)
        } else {
            self.poll_validated(limit, handler)
        }
    }

    /// Fails if our slot is no longer ours (freed, or given to another).
    #[inline]
    fn check_slot(&self) -> Result<(), PollError> {
        let Some(i) = self.slot else { return Ok(()) };
        // With a daemon page, the daemon's grant must stand too (a slot
        // page is never reused: the daemon gives the slot a fresh one when
        // it takes it back, marking our old page revoked first).
        let ours = self.ring.granted(i) != Some(false)
            && self.ring.inner.mem.slot(i).is_some_and(|s| {
                s.state.load(Ordering::Relaxed) == self.slot_state && s.pid.load(Ordering::Relaxed) == self.slot_pid
            });
        if ours {
            Ok(())
        } else {
            Err(PollError::Revoked { slot: i })
        }
    }

    /// Whether a frame is ready at our position (or we were overrun).
    pub fn has_data(&self) -> bool {
        let mem = &self.ring.inner.mem;
        committed(mem, self.salt, self.off(self.position), self.position).is_some()
            || (!self.zero_copy && self.lapped(mem.counters().tail.value.load(Ordering::Acquire)))
    }

    /// Like [`poll`](Self::poll), but sleeps on the ring's futex until a
    /// message arrives or `deadline` passes. Returns 0 on timeout, and at
    /// once when it stopped at an overrun
    /// ([`set_stop_on_overrun`](Self::set_stop_on_overrun)).
    pub fn poll_blocking<F>(&mut self, limit: usize, mut handler: F, deadline: Instant) -> Result<usize, PollError>
    where
        F: FnMut(Message<'_>),
    {
        loop {
            let n = self.poll(limit, &mut handler)?;
            if n > 0 || self.stopped_at.is_some() {
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            if !self.spin_for_data(now, deadline) {
                self.sleep(deadline - Instant::now().min(deadline));
            }
        }
    }

    /// Hold mode, for a subscriber that hands the frames it read to someone
    /// else (the archiver's io_uring writes straight from the ring): polls
    /// move [`position`](Self::position) on, but the slot keeps holding
    /// publishers back where it was until [`release_to`](Self::release_to),
    /// so the frames between stay in place. Needs a slot.
    ///
    /// On an overwrite ring the slot becomes a holding slot (publishers
    /// heed it as back-pressure publishers heed every slot) and reads turn
    /// zero-copy; attach it holding in the first place
    /// ([`Ring::attach_holding`](super::Ring::attach_holding)) when
    /// publishers may be running, because turning an ordinary slot into a
    /// holding one asserts that no publisher may yet write over its
    /// position (the join protocol). Leaving hold mode there makes the slot
    /// ordinary again (copied, validated reads).
    ///
    /// ```
    /// use rill_shm::ring::{PagePreference, Policy, Ring, RingConfig, Start};
    ///
    /// let config = RingConfig { capacity: 4096, max_message_len: 256, policy: Policy::Overwrite,
    ///                           slot_count: 4, pages: PagePreference::NormalOnly };
    /// let ring = Ring::private(&config).unwrap();
    /// let (slot, start) = ring.attach_holding(Start::Latest, std::process::id()).unwrap();
    /// let mut archiver = ring.subscriber_on_slot(slot, start).unwrap();
    /// archiver.set_hold(true);
    /// let mut publ = ring.exclusive_publication().unwrap();
    /// while publ.offer(&[7; 200]).is_ok() {}      // stops a ring past `start`
    /// assert!(ring.tail() <= start + 4096);
    /// archiver.poll(64, |_| ()).unwrap();         // read, not yet released
    /// archiver.release_to(archiver.position());   // e.g. once written to disk
    /// assert!(publ.offer(&[7; 200]).is_ok());
    /// ```
    pub fn set_hold(&mut self, hold: bool) {
        assert!(self.slot.is_some(), "hold mode needs a subscriber with a slot");
        if hold && !self.zero_copy {
            self.make_holding();
        }
        if hold && !self.hold {
            self.held = self.position;
        }
        self.hold = hold;
        if !hold {
            let p = self.position;
            self.position = self.held;
            self.advance(p);
            if self.slot_state == SLOT_HOLDING {
                self.make_ordinary();
            }
        }
    }

    /// Overwrite ring: turns our ordinary slot into a holding one at our
    /// position, by the join protocol (see the module docs).
    #[cold]
    fn make_holding(&mut self) {
        let i = self.slot.expect("checked by the caller");
        let s = self.ring.inner.mem.slot(i).expect("a subscriber's own slot is mapped");
        assert!(ring_writable(&self.ring), "hold mode on an overwrite ring needs the ring mapped read-write");
        s.position.store(self.position, Ordering::SeqCst);
        // A slot taken back meanwhile stays taken back: the next poll says so.
        // SYNC(join): as in `attach`.
        let _ = s.state.compare_exchange(SLOT_ACTIVE, SLOT_HOLDING, Ordering::SeqCst, Ordering::Relaxed);
        let granted = granted_after_publishing(&self.ring);
        assert!(
            granted <= self.position + self.capacity,
            "hold mode at position {} on an overwrite ring whose publishers may already write up to {granted}: \
             attach the slot with Ring::attach_holding instead",
            self.position
        );
        self.slot_state = SLOT_HOLDING;
        self.zero_copy = true;
        self.stopped_at = None;
    }

    /// Overwrite ring: our holding slot goes back to an ordinary one.
    #[cold]
    fn make_ordinary(&mut self) {
        let i = self.slot.expect("checked by the caller");
        if let Some(s) = self.ring.inner.mem.slot(i) {
            // SYNC(slot-state): Release pairs with the publishers' SeqCst scan.
            let _ = s.state.compare_exchange(SLOT_HOLDING, SLOT_ACTIVE, Ordering::Release, Ordering::Relaxed);
        }
        self.slot_state = SLOT_ACTIVE;
        self.zero_copy = false;
    }

    /// Copy every payload out of the ring before handing it over (`true`),
    /// or hand payloads out in place where publishers cannot overwrite
    /// them (`false`, the default: a back-pressure ring, or a holding
    /// slot). Copying is for rings that publishers this process does not
    /// trust may write: a payload handed out in place is memory they can
    /// still change while the handler reads it; a copy is this
    /// subscriber's own. The copy is made with atomic word loads, so a
    /// publisher writing meanwhile can tear it but is no data race, and it
    /// is 32-byte aligned like a payload in the ring. Costs one copy of
    /// each payload. Readers that copy anyway (ordinary and detached
    /// subscribers of an overwrite ring) are unaffected.
    pub fn set_copy_payloads(&mut self, copy: bool) {
        self.copy_payloads = copy;
    }

    /// Whether payloads are handed out as copies (see
    /// [`set_copy_payloads`](Self::set_copy_payloads)).
    pub fn copies_payloads(&self) -> bool {
        self.copy_payloads || !self.zero_copy
    }

    /// Whether this subscriber's slot holds publishers back: always on a
    /// back-pressure ring; on an overwrite ring, a holding slot.
    pub fn is_holding(&self) -> bool {
        self.slot.is_some() && self.zero_copy
    }

    /// Validated readers (an ordinary subscriber of an overwrite ring, or a
    /// detached one): when publishers have lapped the reader, stop there
    /// instead of skipping ahead to the oldest intact frame. A poll then
    /// hands out nothing more, [`overrun_at`](Self::overrun_at) says from
    /// where the frames were lost and nothing is counted in
    /// [`overrun_bytes`](Self::overrun_bytes), until the owner has found
    /// them elsewhere (the stream's log) and [`seek`](Self::seek)s on.
    pub fn set_stop_on_overrun(&mut self, stop: bool) {
        self.stop_on_overrun = stop;
        if !stop {
            self.stopped_at = None;
        }
    }

    /// With [`set_stop_on_overrun`](Self::set_stop_on_overrun): the
    /// position from which publishers overwrote what this reader had not
    /// read yet, if it stopped there.
    pub fn overrun_at(&self) -> Option<u64> {
        self.stopped_at
    }

    /// Moves a validated reader to `position`, which must be a frame
    /// boundary of the stream (where a frame starts: the end of what its
    /// owner read elsewhere, say). Reads go on from there; if the ring no
    /// longer holds it, the next poll reports an overrun as usual. Panics
    /// for a zero-copy reader, whose position holds publishers back.
    pub fn seek(&mut self, position: u64) {
        assert!(!self.zero_copy, "seek on a zero-copy subscriber");
        assert!(
            position.is_multiple_of(crate::frame::FRAME_ALIGNMENT as u64),
            "seek to {position}, not a frame boundary"
        );
        self.stopped_at = None;
        self.advance(position);
    }

    /// Hold mode: lets publishers reuse the ring up to `pos` (at most
    /// [`position`](Self::position), and never backwards).
    pub fn release_to(&mut self, pos: u64) {
        assert!(self.hold, "release_to outside hold mode");
        let pos = pos.min(self.position);
        if pos <= self.held {
            return;
        }
        self.held = pos;
        if let Some(i) = self.slot {
            // SYNC(slot-position): as in advance().
            if let Some(s) = self.ring.inner.mem.slot(i) {
                s.position.store(pos, Ordering::Release);
            }
        }
    }

    /// Leaves the slot taken (and holding publishers back at its position)
    /// when this subscriber is dropped, for a successor to take over with
    /// [`Ring::subscriber_on_slot`] (the archiver across daemon restarts).
    pub fn keep_slot_on_drop(&mut self) {
        self.release_on_drop = false;
    }

    /// Hold mode: where the slot holds publishers back.
    pub fn held_position(&self) -> u64 {
        if self.hold { self.held } else { self.position }
    }

    /// Hold mode: the ring bytes of the stream range `[from, to)` (frames
    /// this subscriber has polled past and still holds), as one slice, or
    /// two when the range wraps. Panics outside the held range.
    #[cfg(not(loom))]
    pub fn held_bytes(&self, from: u64, to: u64) -> (&[u8], &[u8]) {
        assert!(self.hold && self.held <= from && from <= to && to <= self.position, "held_bytes outside the held range");
        assert!(to - from <= self.capacity);
        let mem = &self.ring.inner.mem;
        let (start, len) = (self.off(from), (to - from) as usize);
        let first = len.min(self.capacity as usize - start);
        // SAFETY: every byte of [from, to) belongs to frames this subscriber
        // polled past (committed), and its slot, held at or before `from`,
        // keeps publishers from overwriting them while `&self` is borrowed
        // (release_to needs `&mut self`).
        unsafe { (mem.bytes(start, first), mem.bytes(0, len - first)) }
    }

    /// Sets how long [`poll_blocking`](Self::poll_blocking) spins for data
    /// before it sleeps on the futex (default 50 us). A streaming publisher
    /// usually commits again within microseconds, and each sleep costs a
    /// membarrier here and a `FUTEX_WAKE` in the publisher; `Duration::ZERO`
    /// sleeps at once, leaving the core to others.
    pub fn set_spin_before_sleep(&mut self, spin: Duration) {
        self.spin_before_sleep = spin;
    }

    /// Spins for data for up to the configured time before going to sleep.
    /// Returns whether data came.
    fn spin_for_data(&self, start: Instant, deadline: Instant) -> bool {
        if self.spin_before_sleep.is_zero() {
            return self.has_data();
        }
        let until = (start + self.spin_before_sleep).min(deadline);
        loop {
            for _ in 0..64 {
                if self.has_data() {
                    return true;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                return false;
            }
        }
    }

    /// Sleeps until a publisher commits (or the timeout passes). The caller
    /// re-polls afterwards.
    pub fn sleep(&self, timeout: Duration) {
        let wake = self.ring.inner.mem.wake();
        if !self.ring.inner.mem.wake_writable() {
            // We cannot flag ourselves as a waiter in a read-only mapping,
            // so no publisher will wake us: nap in short slices instead.
            let seq = wake.futex.load(Ordering::Acquire);
            if !self.has_data() {
                crate::os::futex::wait(&wake.futex, seq, Some(timeout.min(READ_ONLY_NAP)));
            }
            return;
        }
        // SYNC(futex): Acquire pairs with the publisher's Release increment;
        // a wake after this load makes FUTEX_WAIT return at once.
        let seq = wake.futex.load(Ordering::Acquire);
        // Flag "someone sleeps"; the publisher that wakes us clears it.
        wake.waiters.store(1, Ordering::SeqCst);
        // The asymmetric half of the Dekker handshake (see os::futex): after
        // this, a publisher that committed before it is visible to our
        // check below, and one that commits after it sees `waiters`.
        #[cfg(not(loom))]
        let fenced = crate::os::futex::heavy_barrier();
        #[cfg(loom)]
        let fenced = true;
        let timeout = if fenced { timeout } else { timeout.min(Duration::from_millis(1)) };
        if !self.has_data() {
            crate::os::futex::wait(&wake.futex, seq, Some(timeout));
        }
    }

    fn poll_in_place<F: FnMut(Message<'_>)>(&mut self, limit: usize, mut handler: F) -> Result<usize, PollError> {
        let mem = &self.ring.inner.mem;
        let mut pos = self.position;
        let mut delivered = 0;
        let mut result = Ok(());
        for _ in 0..limit {
            let off = self.off(pos);
            let Some(publisher_id) = committed(mem, self.salt, off, pos) else { break };
            let (len, kind, flags) = unpack_len_kind(mem.word(off + WORD_LEN_KIND).load(Ordering::Relaxed));
            let kind = match self.check(off, len, kind) {
                Ok(k) => k,
                Err(reason) => {
                    result = Err(PollError::Corrupt { position: pos, reason });
                    break;
                }
            };
            if kind == FrameKind::Data {
                let plen = len as usize - HEADER_LEN;
                #[cfg(not(loom))]
                let payload = if self.copy_payloads {
                    mem.copy_racy(off + HEADER_LEN, self.copy.bytes_mut(plen));
                    self.copy.bytes(plen)
                } else {
                    // SAFETY: committed (commit word == pos, acquired),
                    // bounds checked above, and publishers cannot pass our
                    // slot position, which we publish only after the loop.
                    unsafe { mem.bytes(off + HEADER_LEN, plen) }
                };
                #[cfg(loom)]
                let payload = {
                    mem.copy_racy(off + HEADER_LEN, self.copy.bytes_mut(plen));
                    self.copy.bytes(plen)
                };
                handler(Message {
                    payload,
                    position: pos,
                    timestamp_ns: mem.word(off + WORD_TIMESTAMP).load(Ordering::Relaxed),
                    publisher_id,
                    flags,
                });
                delivered += 1;
                // Was the slot still ours once the handler had read the
                // payload? If so, no publisher could have passed it.
                // SYNC(slot-state): the Acquire fence orders the handler's
                // reads before the state load; a publisher that overwrote
                // the payload read the slot as not active (SeqCst) after
                // it was revoked (Release), then wrote behind a release
                // fence, so we would see the revocation here.
                if let Some(slot) = self.slot {
                    fence(Ordering::Acquire);
                    if self.check_slot().is_err() {
                        result = Err(PollError::RevokedDuringRead { slot, position: pos });
                        pos += frame_span(len as usize) as u64;
                        break;
                    }
                }
            } else {
                self.padding_bytes += frame_span(len as usize) as u64;
            }
            pos += frame_span(len as usize) as u64;
        }
        self.advance(pos);
        result.map(|()| delivered)
    }

    fn poll_validated<F: FnMut(Message<'_>)>(&mut self, limit: usize, mut handler: F) -> Result<usize, PollError> {
        let ring = self.ring.clone();
        let mem = &ring.inner.mem;
        let slot = self.slot.and_then(|i| mem.slot(i));
        let counters = mem.counters();
        let mut pos = self.position;
        let mut delivered = 0;
        let mut result = Ok(());
        if self.stopped_at.is_some() {
            return Ok(0);
        }
        for _ in 0..limit {
            let off = self.off(pos);
            let Some(publisher_id) = committed(mem, self.salt, off, pos) else {
                let tail = counters.tail.value.load(Ordering::Acquire);
                if self.lapped_at(pos, tail) {
                    if self.stop_on_overrun {
                        self.stopped_at = Some(pos);
                        break;
                    }
                    pos = Self::overrun(self.capacity, pos, tail, &mut self.overrun_bytes, slot);
                    continue;
                }
                break;
            };
            let (len, kind, flags) = unpack_len_kind(mem.word(off + WORD_LEN_KIND).load(Ordering::Relaxed));
            let timestamp_ns = mem.word(off + WORD_TIMESTAMP).load(Ordering::Relaxed);
            let checked = self.check(off, len, kind);
            if let Ok(FrameKind::Data) = checked {
                let plen = len as usize - HEADER_LEN;
                mem.copy_racy(off + HEADER_LEN, self.copy.bytes_mut(plen));
            }
            // SYNC(seqlock): Acquire fence pairs with the Release fence after
            // a publisher's tail move: if any byte we copied was written by
            // a claim, the tail we load next covers that claim.
            fence(Ordering::Acquire);
            let tail = counters.tail.value.load(Ordering::Relaxed);
            if self.lapped_at(pos, tail) {
                if self.stop_on_overrun {
                    self.stopped_at = Some(pos);
                    break;
                }
                pos = Self::overrun(self.capacity, pos, tail, &mut self.overrun_bytes, slot);
                continue;
            }
            let kind = match checked {
                Ok(k) => k,
                Err(reason) => {
                    result = Err(PollError::Corrupt { position: pos, reason });
                    break;
                }
            };
            if kind == FrameKind::Data {
                let plen = len as usize - HEADER_LEN;
                handler(Message { payload: self.copy.bytes(plen), position: pos, timestamp_ns, publisher_id, flags });
                delivered += 1;
            } else {
                self.padding_bytes += frame_span(len as usize) as u64;
            }
            pos += frame_span(len as usize) as u64;
        }
        self.advance(pos);
        result.map(|()| delivered)
    }

    /// Validates a committed header at data offset `off`.
    #[inline]
    fn check(&self, off: usize, len: u32, kind: u16) -> Result<FrameKind, String> {
        let len = len as usize;
        let room = self.capacity as usize - off;
        match FrameKind::from_u16(kind) {
            Some(FrameKind::Data) if len >= HEADER_LEN && len - HEADER_LEN <= self.max_message_len && frame_span(len) <= room => {
                Ok(FrameKind::Data)
            }
            Some(FrameKind::Padding) if len >= HEADER_LEN && len.is_multiple_of(HEADER_LEN) && len <= room => Ok(FrameKind::Padding),
            Some(_) => Err(format!("length {len} out of bounds (max message {}, {room} bytes to the end)", self.max_message_len)),
            None => Err(format!("unknown kind {kind}")),
        }
    }

    fn lapped(&self, tail: u64) -> bool {
        self.lapped_at(self.position, tail)
    }

    /// Whether claims up to `tail` (plus the clean-ahead word after it) may
    /// have overwritten the frame at `pos`.
    #[inline]
    fn lapped_at(&self, pos: u64, tail: u64) -> bool {
        tail + HEADER_LEN as u64 > pos + self.capacity
    }

    /// Skips from `pos` to the oldest lap boundary still intact; counts and
    /// returns the new position.
    #[cold]
    fn overrun(capacity: u64, pos: u64, tail: u64, total: &mut u64, slot: Option<&crate::layout::Slot>) -> u64 {
        let next = (tail + HEADER_LEN as u64 - capacity).next_multiple_of(capacity);
        debug_assert!(next > pos);
        let lost = next - pos;
        *total += lost;
        if let Some(s) = slot {
            s.overrun_bytes.fetch_add(lost, Ordering::Relaxed);
        }
        next
    }

    #[inline]
    fn advance(&mut self, pos: u64) {
        if pos != self.position {
            self.position = pos;
            if self.hold {
                return;
            }
            if let Some(i) = self.slot {
                // SYNC(slot-position): Release pairs with the publishers'
                // (SeqCst, so at least Acquire) slot scan: our reads of the
                // frames before `pos` happen before their overwrite.
                if let Some(s) = self.ring.inner.mem.slot(i) {
                    s.position.store(pos, Ordering::Release);
                }
            }
        }
    }

    #[inline]
    fn off(&self, p: u64) -> usize {
        (p & self.mask) as usize
    }
}

/// Whether this process may write the ring's counters.
fn ring_writable(ring: &Ring) -> bool {
    #[cfg(not(loom))]
    return !ring.is_read_only();
    #[cfg(loom)]
    return {
        let _ = ring;
        true
    };
}

/// A holding joiner's read of `limit_granted`, after it made its slot
/// holding at its start: an RMW, not a load, so the handshake with
/// `Publication::refresh_limit` holds by release/acquire alone. Either our
/// RMW comes first in the word's modification order, and the publisher's
/// `fetch_max` reads from it, synchronises with it and so sees our slot in
/// its second look; or the publisher's comes first, and we read its limit
/// (or a higher one). (The back-pressure join relies on SeqCst loads for
/// the same; an RMW needs the ring writable, which a holding joiner's is.)
fn granted_after_publishing(ring: &Ring) -> u64 {
    ring.inner.mem.counters().limit_granted.value.fetch_max(0, Ordering::SeqCst)
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        // Free our slot, unless it was taken back (and perhaps given to
        // another subscriber since), or is to outlive us.
        if !self.release_on_drop {
            return;
        }
        if let (Some(i), Ok(())) = (self.slot, self.check_slot()) {
            self.ring.release_slot(i);
        }
    }
}
