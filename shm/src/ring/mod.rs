//! The stream ring: a log of frames in one power-of-two data region, written
//! by any number of publishers and read by any number of subscribers, each
//! at its own position.
//!
//! # Positions
//! A position is a byte offset into the stream since its creation (u64,
//! only grows); the frame at position `p` lives at data offset
//! `p & (capacity - 1)`. Frames never straddle the end of the region: a
//! publisher that would wrap writes a padding frame to the end first. So
//! every multiple of `capacity` is a frame boundary ("lap boundary"), which
//! is where late joiners and overrun subscribers resume.
//!
//! # The commit
//! A frame is committed by two words of its header, in one cache line:
//! the position word and the tag word (publisher id | commit tag). The
//! commit tag is a 32-bit hash of the position keyed by a random per-ring
//! salt. A publisher writes `length/kind`, then CLAIMED (`p | 1 << 63`) in
//! the position word, then the payload, then COMMITTING (`p | 1 << 62`,
//! see `publication` for the check it makes then), then the tag word with
//! release, and last `p` in the position word. A reader at `p` loads the
//! tag word with acquire and reads the frame only if the tag is `tag(p)`
//! and the position word is `p`.
//!
//! The ring is never zeroed between laps, so the bytes at `p` may be
//! anything an earlier lap left there. An earlier frame at that offset has
//! another position in its position word, so it is never taken for `p`.
//! Payload bytes could hold the value `p` (a relay embedding positions, say)
//! but not also the tag, which depends on a salt no publisher chooses. (Aeron
//! zeroes each term ahead of the writer instead; a single ring has no spare
//! term, and a per-frame "clean the next word" store cost 1.6x in
//! throughput here.)
//!
//! # Policies
//! * Back-pressure (default): a publisher may not claim past the slowest
//!   live subscriber plus one ring (`limit`). Readers get zero-copy slices.
//! * Overwrite: publishers never wait for ordinary subscribers. A reader
//!   copies each frame out and then checks the tail (a seqlock read, as in
//!   Agrona's broadcast buffer): if a publisher claimed over the frame
//!   meanwhile, the copy is discarded, the reader is told it was overrun by
//!   how many bytes, and resumes at the next lap boundary that is still
//!   intact (or, if it asked to, stops there: see
//!   [`Subscriber::set_stop_on_overrun`]).
//!
//! # Holding slots
//! An overwrite ring may also have *holding* slots ([`Ring::attach_holding`],
//! [`Subscriber::set_hold`]; [`SLOT_HOLDING`] in the slot's state word):
//! publishers treat them exactly as back-pressure publishers treat every
//! slot, so their limit is the lowest holding position plus one ring (and,
//! as always, at most one ring past `head`). A holding slot reads zero-copy.
//! rilld gives one to the archiver of a persisted overwrite stream: no
//! frame is overwritten before it is on disk, so an ordinary subscriber
//! that is lapped at `p` finds everything from `p` up to the archiver's
//! position in the log, and everything from there still in the ring.
//! Publishers read the slots only when their cached limit runs out (about
//! once a ring), never per message, so a ring without holding slots costs
//! what it did. A holding slot joins by the same protocol as a
//! back-pressure subscriber (see `subscription`).
//!
//! # Who may call what
//! A [`Ring`] handle is `Send + Sync` and cheap to clone. A publication or
//! subscriber is owned by one thread (`&mut self` methods); any number of
//! them, in any number of processes, may work on one ring at once.

mod publication;
mod reclaim;
mod subscription;

pub use publication::{
    Batch, Claim, ClaimError, ClaimMode, Exclusive, ExclusivePublication, OfferError, Publication, Shared,
    SharedPublication,
};
pub use reclaim::Reclaimer;
pub use subscription::{Message, PollError, Start, SubscribeError, Subscriber};

use crate::layout::*;
use crate::memory::RingMemory;
use crate::os::mapping::{Access, PageKind};
use crate::sync::Ordering;
use std::sync::Arc;

#[cfg(not(loom))]
use crate::os::mapping::{self, Region};
#[cfg(not(loom))]
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
#[cfg(not(loom))]
use std::os::unix::fs::OpenOptionsExt;
#[cfg(not(loom))]
use std::path::Path;

/// 64 random bits from the OS (through std's hasher keys: no unsafe, and
/// Miri supports it).
#[cfg(not(loom))]
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(crate::os::now_unix_ns());
    h.finish()
}

/// The memfds of a ring made by [`Ring::create_sealed`], every one sealed
/// against shrinking and growing: what the daemon keeps, and hands out
/// (duplicated or reopened with less access) to clients.
#[cfg(not(loom))]
#[derive(Debug)]
pub struct RingFiles {
    /// The ring: header, counters and data.
    pub ring: OwnedFd,
    /// The wake page (futex words, durable-waiter count).
    pub wake: OwnedFd,
    /// The daemon page (positions only the daemon writes).
    pub daemon: OwnedFd,
    /// One page per subscriber slot.
    pub slots: Vec<OwnedFd>,
}

#[cfg(not(loom))]
impl RingFiles {
    /// A publisher's fds, in the order [`Ring::from_fds`] takes them: the
    /// ring and the wake page read-write, every slot page and the daemon
    /// page read-only.
    pub fn for_publisher(&self) -> std::io::Result<Vec<OwnedFd>> {
        let mut fds = vec![self.ring.try_clone()?, self.wake.try_clone()?];
        fds.extend(self.slot_pages()?);
        fds.push(mapping::reopen(self.daemon.as_fd(), false)?);
        Ok(fds)
    }

    /// A subscriber's fds: the ring read-only, the wake page and its own
    /// slot page read-write, the daemon page read-only.
    pub fn for_subscriber(&self, slot: u32) -> std::io::Result<Vec<OwnedFd>> {
        let own = self.slots.get(slot as usize).ok_or_else(|| std::io::Error::other(format!("no slot {slot}")))?;
        Ok(vec![
            mapping::reopen(self.ring.as_fd(), false)?,
            self.wake.try_clone()?,
            own.try_clone()?,
            mapping::reopen(self.daemon.as_fd(), false)?,
        ])
    }

    /// Every slot page, read-only, in slot order (a publisher's, after
    /// slots got fresh pages: `Ring::remap_slot_pages`).
    pub fn slot_pages(&self) -> std::io::Result<Vec<OwnedFd>> {
        self.slots.iter().map(|slot| mapping::reopen(slot.as_fd(), false)).collect()
    }

    /// Every fd, in a fixed order: ring, wake, daemon, then the slots
    /// (how the daemon passes them around).
    pub fn all(&self) -> Vec<BorrowedFd<'_>> {
        [&self.ring, &self.wake, &self.daemon].into_iter().chain(&self.slots).map(|f| f.as_fd()).collect()
    }

    /// The inverse of [`RingFiles::all`]; `None` if fewer than four.
    pub fn from_all(mut fds: Vec<OwnedFd>) -> Option<RingFiles> {
        if fds.len() < 4 {
            return None;
        }
        let slots = fds.split_off(3);
        let mut it = fds.into_iter();
        Some(RingFiles { ring: it.next()?, wake: it.next()?, daemon: it.next()?, slots })
    }
}

/// A fresh page memfd (one page, zeroed), sealed ([`mapping::seal_size`]).
#[cfg(not(loom))]
fn sealed_page(name: &str) -> std::io::Result<OwnedFd> {
    let fd = mapping::memfd(name, false)?;
    mapping::set_len(fd.as_fd(), PAGE_FILE_LEN)?;
    mapping::seal_size(fd.as_fd())?;
    Ok(fd)
}

pub(crate) const CLAIMED_BIT: u64 = 1 << 63;
pub(crate) const COMMITTING_BIT: u64 = 1 << 62;

/// The CLAIMED value of the position word at `p`.
#[inline]
pub(crate) const fn claimed(p: u64) -> u64 {
    p | CLAIMED_BIT
}

/// The COMMITTING value of the position word at `p`: its publisher is
/// committing the claim and checks whether the reclaimer padded over it
/// (see `publication`). Readers take it for an uncommitted frame.
#[inline]
pub(crate) const fn committing(p: u64) -> u64 {
    p | COMMITTING_BIT
}

/// The commit tag of position `p` in a ring salted with `salt` (never 0,
/// so zeroed memory never carries a tag). Part of the ring's ABI; public
/// for tools and tests that write frames into ring files themselves.
#[inline]
pub const fn commit_tag(salt: u64, p: u64) -> u32 {
    ((p ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32 | 1
}

/// Commits the frame at data offset `off`, position `p`: the tag word,
/// then the position word, both with release. A frame is committed once
/// both say `p`; the position word goes last, so that it says `p`
/// without the tag only where no publisher ever committed (the reclaimer
/// relies on that: see `reclaim`).
#[inline]
pub(crate) fn commit(mem: &RingMemory, salt: u64, off: usize, p: u64, publisher_id: u32) {
    use crate::frame::{WORD_POSITION, WORD_PUBLISHER};
    let tag_word = u64::from(publisher_id) | (u64::from(commit_tag(salt, p)) << 32);
    // SYNC(commit): Release pairs with the Acquire load in `committed`: a
    // reader that sees the tag sees the whole frame.
    mem.word(off + WORD_PUBLISHER).store(tag_word, Ordering::Release);
    // SYNC(commit-position): Release pairs with the reclaimer's Acquire
    // load: one that sees `p` sees the tag and the length.
    mem.word(off + WORD_POSITION).store(p, Ordering::Release);
}

/// If the frame at data offset `off` is committed at position `p`, its
/// publisher id.
#[inline]
pub(crate) fn committed(mem: &RingMemory, salt: u64, off: usize, p: u64) -> Option<u32> {
    use crate::frame::{WORD_POSITION, WORD_PUBLISHER};
    // SYNC(commit): Acquire pairs with the Release store in `commit`.
    let tag_word = mem.word(off + WORD_PUBLISHER).load(Ordering::Acquire);
    let ok = (tag_word >> 32) as u32 == commit_tag(salt, p) && mem.word(off + WORD_POSITION).load(Ordering::Relaxed) == p;
    ok.then_some(tag_word as u32)
}

/// The end of the run of committed frames that starts at `start` (a frame
/// boundary), up to `tail` and at most one ring long: the first frame not
/// yet committed (or corrupt) there, else `tail`. Valid only if nobody
/// lapped `start` meanwhile, which the caller checks.
pub(crate) fn committed_end(ring: &Ring, start: u64, tail: u64) -> u64 {
    let (mem, capacity) = (&ring.inner.mem, ring.inner.info.capacity);
    let mut h = start;
    while h < tail && h - start < capacity {
        let off = (h & ring.inner.mask) as usize;
        if committed(mem, ring.inner.salt, off, h).is_none() {
            break;
        }
        let (len, _, _) = crate::frame::unpack_len_kind(mem.word(off + crate::frame::WORD_LEN_KIND).load(Ordering::Relaxed));
        let span = crate::frame::frame_span(len as usize) as u64;
        if (len as usize) < crate::frame::HEADER_LEN || span > capacity - off as u64 {
            break; // corrupt: stay here, readers will report it
        }
        h += span;
    }
    h
}

/// What publishers do when the ring is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Wait for the slowest live subscriber (offer returns `BackPressured`).
    BackPressure,
    /// Never wait, except for holding slots ([`Ring::attach_holding`]);
    /// slow subscribers are overrun and told so.
    Overwrite,
}

impl Policy {
    #[cfg_attr(loom, allow(dead_code))]
    fn to_u32(self) -> u32 {
        match self {
            Policy::BackPressure => 0,
            Policy::Overwrite => 1,
        }
    }

    #[cfg_attr(loom, allow(dead_code))]
    fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Policy::BackPressure),
            1 => Some(Policy::Overwrite),
            _ => None,
        }
    }
}

/// Which pages a new ring should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagePreference {
    /// Huge pages when they can be had, else normal pages (logged).
    Auto,
    /// Normal pages only (forces the fallback path).
    NormalOnly,
    /// Huge pages or an error.
    HugeOnly,
}

/// Shape of a new ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// Data capacity in bytes: a power of two, at least 4 KiB.
    pub capacity: u64,
    /// Largest payload, at most `capacity / 4 - 32`.
    pub max_message_len: u32,
    /// Full-ring behaviour.
    pub policy: Policy,
    /// Number of subscriber slots (1..=4096).
    pub slot_count: u32,
    /// Page preference.
    pub pages: PagePreference,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            capacity: 1 << 20,
            max_message_len: 64 << 10,
            policy: Policy::BackPressure,
            slot_count: 64,
            pages: PagePreference::Auto,
        }
    }
}

impl RingConfig {
    /// Checks the configuration; the error says what is wrong.
    pub fn validate(&self) -> Result<(), CreateError> {
        let bad = |m: String| Err(CreateError::InvalidConfig(m));
        if !self.capacity.is_power_of_two() || self.capacity < 4096 || self.capacity > 1 << 40 {
            return bad(format!("capacity {} must be a power of two in 4 KiB..=1 TiB", self.capacity));
        }
        let max = self.capacity / 4 - crate::frame::HEADER_LEN as u64;
        if self.max_message_len == 0 || u64::from(self.max_message_len) > max {
            return bad(format!(
                "max_message_len {} must be in 1..={max} for capacity {}",
                self.max_message_len, self.capacity
            ));
        }
        if self.slot_count == 0 || self.slot_count > MAX_SLOTS {
            return bad(format!("slot_count {} must be in 1..={MAX_SLOTS}", self.slot_count));
        }
        Ok(())
    }
}

/// Why a ring could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The configuration is invalid.
    #[error("invalid ring configuration: {0}")]
    InvalidConfig(String),
    /// Huge pages were required but none could be had.
    #[error("huge pages required but unavailable: {0}")]
    HugePagesUnavailable(std::io::Error),
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Why a ring could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The file is shorter than a header.
    #[error("ring file too small: {len} bytes")]
    TooSmall {
        /// Its length.
        len: u64,
    },
    /// The magic number is wrong (not a ring, or not yet initialised).
    #[error("not a ring (magic {found:#x})")]
    BadMagic {
        /// What was found.
        found: u64,
    },
    /// The ring was made by another layout version.
    #[error("ring layout version {found}, this build reads {expected}")]
    VersionMismatch {
        /// Version in the file.
        found: u32,
        /// Version this build speaks.
        expected: u32,
    },
    /// The creator has not finished initialising it.
    #[error("ring is still being initialised")]
    NotReady,
    /// A header field is inconsistent.
    #[error("corrupt ring header: {0}")]
    Corrupt(String),
    /// The ring keeps its slots in page files (a `rilld` ring); open it
    /// with [`Ring::open_page_files`] or [`Ring::from_fds`].
    #[error("ring keeps subscriber slots in page files; open it with them")]
    NeedsPageFiles,
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What a ring is, as read from its header when opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingInfo {
    /// Data capacity in bytes.
    pub capacity: u64,
    /// Largest payload.
    pub max_message_len: u32,
    /// Full-ring behaviour.
    pub policy: Policy,
    /// Subscriber slots.
    pub slot_count: u32,
    /// Creation time, ns since the Unix epoch.
    pub created_unix_ns: u64,
    /// Pages backing this process's mapping.
    pub pages: PageKind,
    /// Whether this mapping may be written.
    pub access: Access,
}

/// A subscriber slot as seen from outside (for the daemon and the CLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot index.
    pub index: u32,
    /// Owner pid.
    pub pid: u32,
    /// Next position the subscriber will read.
    pub position: u64,
    /// Last heartbeat, ns (owner's clock), or 0.
    pub heartbeat_ns: u64,
    /// Bytes lost to overruns.
    pub overrun_bytes: u64,
    /// A holding slot of an overwrite ring ([`Ring::attach_holding`]):
    /// its position holds publishers back. (On a back-pressure ring every
    /// live slot does, and this is false.)
    pub holding: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) mem: RingMemory,
    pub(crate) info: RingInfo,
    pub(crate) mask: u64,
    pub(crate) salt: u64,
    #[cfg(not(loom))]
    fd: Option<OwnedFd>,
    /// Loom models only: whether commits take part in the handshake with
    /// a reclaimer (`Publication::reclaimed`). Outside loom they always
    /// do: rilld always runs a reclaimer.
    #[cfg(loom)]
    pub(crate) reclaimable: bool,
}

/// A handle to a mapped ring. Clones share the mapping.
#[derive(Debug, Clone)]
pub struct Ring {
    pub(crate) inner: Arc<Inner>,
}

impl Ring {
    fn from_parts(mem: RingMemory, info: RingInfo, salt: u64, #[cfg(not(loom))] fd: Option<OwnedFd>) -> Ring {
        let mask = info.capacity - 1;
        Ring {
            inner: Arc::new(Inner {
                mem,
                info,
                mask,
                salt,
                #[cfg(not(loom))]
                fd,
                #[cfg(loom)]
                reclaimable: false,
            }),
        }
    }

    /// What this ring is.
    pub fn info(&self) -> &RingInfo {
        &self.inner.info
    }

    /// Pages backing this mapping.
    pub fn pages(&self) -> PageKind {
        self.inner.info.pages
    }

    /// The highest claimed position (end of the newest claimed frame).
    pub fn tail(&self) -> u64 {
        self.inner.mem.counters().tail.value.load(Ordering::Acquire)
    }

    /// Makes a fresh ring (nothing ever claimed, nobody subscribed) begin
    /// at stream position `position` instead of 0: for a persisted stream
    /// whose ring is recreated after its log on disk ends there. Fails if
    /// the ring was used or `position` is not frame-aligned.
    pub fn start_at(&self, position: u64) -> Result<(), String> {
        let c = self.inner.mem.counters();
        if !position.is_multiple_of(crate::frame::FRAME_ALIGNMENT as u64) {
            return Err(format!("start position {position} is not a multiple of {}", crate::frame::FRAME_ALIGNMENT));
        }
        if c.tail.value.load(Ordering::Acquire) != 0 || !self.subscribers().is_empty() {
            return Err("the ring is in use; only a fresh ring can be moved".into());
        }
        // Order: head and the granted limit first, so no claim (there is
        // none yet) could see a tail beyond them.
        c.head.value.store(position, Ordering::Release);
        c.limit_granted.value.fetch_max(position, Ordering::SeqCst);
        self.inner.mem.durable().position.fetch_max(position, Ordering::Release);
        c.publishers.value.origin.store(position, Ordering::Release);
        c.tail.value.store(position, Ordering::Release);
        Ok(())
    }

    /// The first position this ring ever held ([`Ring::start_at`]; 0 for a
    /// ring that began with its stream). The ring never held anything
    /// before it, so [`Start::Oldest`] never starts before it.
    pub fn origin(&self) -> u64 {
        // SYNC(origin): Acquire pairs with the Release store in `start_at`.
        self.inner.mem.counters().publishers.value.origin.load(Ordering::Acquire)
    }

    /// Whether the frame at position `p` is still in the ring, committed at
    /// `p`, and padding: `Some(true)` for padding (such as a claim the
    /// daemon padded over because its publisher stalled past the unblock
    /// timeout: that message was never published), `Some(false)` for
    /// data, `None` if the ring no longer holds a frame committed at `p`
    /// (lapped since) or never did.
    pub fn is_padding_at(&self, p: u64) -> Option<bool> {
        use crate::frame::{unpack_len_kind, FrameKind, WORD_LEN_KIND};
        let mem = &self.inner.mem;
        let off = (p & self.inner.mask) as usize;
        committed(mem, self.inner.salt, off, p)?;
        let (_, kind, _) = unpack_len_kind(mem.word(off + WORD_LEN_KIND).load(Ordering::Acquire));
        let padding = FrameKind::from_u16(kind)? == FrameKind::Padding;
        // Still the frame at `p` (not lapped while we looked)?
        committed(mem, self.inner.salt, off, p).map(|_| padding)
    }

    /// Pid recorded as holding the ring's exclusive publication (0: none).
    /// The ring does not enforce it: an [`ExclusivePublication`] trusts that
    /// it is the only writer, and the arbiter (rilld) records here whom it
    /// granted that to, so the record survives the arbiter's restart. In
    /// rilld's layout the record is on the daemon page, which no client
    /// can write; otherwise in the ring's header.
    pub fn exclusive_holder(&self) -> u32 {
        self.inner.mem.exclusive_pid().load(Ordering::Acquire)
    }

    /// Records `pid` (0: nobody) as holding the exclusive publication.
    /// Panics where this process may not write the record (a client of
    /// rilld's layout, or a read-only mapping).
    pub fn set_exclusive_holder(&self, pid: u32) {
        assert!(self.inner.mem.vouch_writable(), "set_exclusive_holder where the record is read-only");
        self.inner.mem.exclusive_pid().store(pid, Ordering::Release);
    }

    /// Position up to which the stream is durable (set by the archiver).
    pub fn durable_position(&self) -> u64 {
        self.inner.mem.durable().position.load(Ordering::Acquire)
    }

    /// Publishes the durable position (the archiver's job; only grows) and
    /// wakes the publishers asleep in [`Ring::wait_durable`]; returns how
    /// many were asleep.
    pub fn set_durable_position(&self, position: u64) -> u32 {
        let mem = &self.inner.mem;
        assert!(mem.vouch_writable(), "set_durable_position on a ring whose daemon page this process maps read-only");
        let d = mem.durable();
        // SYNC(durable): SeqCst, for the Dekker handshake with a waiter's
        // SeqCst store of `waiters` and load of the position: either it
        // sees the new position, or we see it waiting. (Release would do
        // for the position alone: a waiter that sees it also sees what the
        // archiver wrote first.)
        let before = d.position.fetch_max(position, Ordering::SeqCst);
        let sleepers = mem.durable_waiters().load(Ordering::SeqCst);
        if sleepers != 0 && before < position {
            // SYNC(futex): Release pairs with the waiter's Acquire load of
            // the futex word; one that loaded it before this bump returns
            // from FUTEX_WAIT at once.
            d.futex.fetch_add(1, Ordering::Release);
            crate::os::futex::wake_all(&d.futex);
        }
        sleepers
    }

    /// Waits until the durable position passes `position` (the frame at
    /// `position` is on disk as its stream's policy defines it); returns
    /// the durable position, or `Err` with it once `timeout` has passed.
    /// Spins for `spin` first, then sleeps on a futex that
    /// [`Ring::set_durable_position`] wakes, so a waiter costs no CPU while
    /// a sync runs (on a busy host, spinning waiters would take the CPU the
    /// kernel's I/O threads need to finish that very sync).
    pub fn wait_durable(&self, position: u64, spin: std::time::Duration, timeout: std::time::Duration) -> Result<u64, u64> {
        let (d, waiters) = (self.inner.mem.durable(), self.inner.mem.durable_waiters());
        let start = std::time::Instant::now();
        let mut spins = 0u32;
        loop {
            let now = d.position.load(Ordering::Acquire);
            if now > position {
                return Ok(now);
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(now);
            }
            if waited < spin {
                continue;
            }
            // SYNC(futex): Acquire pairs with the waker's Release bump.
            let seen = d.futex.load(Ordering::Acquire);
            waiters.fetch_add(1, Ordering::SeqCst);
            // SYNC(durable): SeqCst, the other half of the handshake in
            // set_durable_position.
            if d.position.load(Ordering::SeqCst) <= position {
                crate::os::futex::wait(&d.futex, seen, Some((timeout - waited).min(std::time::Duration::from_millis(100))));
            }
            waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Position held by enough replicas (set by the replicator).
    pub fn replicated_position(&self) -> u64 {
        self.inner.mem.replicated().load(Ordering::Acquire)
    }

    /// Publishes the replicated position. Only grows.
    pub fn set_replicated_position(&self, position: u64) {
        // SYNC(replicated): pairs with the Acquire in replicated_position.
        assert!(self.inner.mem.vouch_writable(), "set_replicated_position on a ring whose daemon page this process maps read-only");
        self.inner.mem.replicated().fetch_max(position, Ordering::Release);
    }

    /// The ring's futex word, for a tool that waits and wakes on a word
    /// shared between processes itself, with [`crate::os::futex`] (e.g.
    /// rill-bench's bare futex floor, on rings no one publishes to).
    ///
    /// Publishers bump this word and FUTEX_WAKE it when a subscriber sleeps
    /// ([`Subscriber::sleep`]). A foreign store to it may wake the ring's
    /// sleepers early or let one sleep until its timeout (they always sleep
    /// bounded and re-check), but cannot corrupt data. `None` where this
    /// process may not write the word (a read-only mapping): a store there
    /// would fault.
    #[cfg(not(loom))]
    pub fn wake_word(&self) -> Option<&std::sync::atomic::AtomicU32> {
        let mem = &self.inner.mem;
        mem.wake_writable().then(|| &mem.wake().futex)
    }

    /// Live subscriber slots.
    pub fn subscribers(&self) -> Vec<SlotInfo> {
        let mem = &self.inner.mem;
        // With a daemon page, the slots the daemon granted (the high-water
        // mark is in the header every publisher may write).
        let hwm = match mem.granted() {
            Some(_) => mem.slot_count(),
            None => mem.counters().publishers.value.slot_hwm.load(Ordering::Acquire).min(mem.slot_count()),
        };
        (0..hwm)
            .filter(|&i| self.granted(i) != Some(false))
            .filter_map(|i| {
                let s = mem.slot(i)?;
                let state = s.state.load(Ordering::Acquire);
                (state == SLOT_ACTIVE || state == SLOT_HOLDING).then(|| SlotInfo {
                    index: i,
                    pid: s.pid.load(Ordering::Relaxed),
                    position: s.position.load(Ordering::Acquire),
                    heartbeat_ns: s.heartbeat_ns.load(Ordering::Relaxed),
                    overrun_bytes: s.overrun_bytes.load(Ordering::Relaxed),
                    holding: state == SLOT_HOLDING,
                })
            })
            .collect()
    }

    /// Frees slot `index` so its position no longer holds publishers back
    /// (the daemon calls this for subscribers it knows are dead). The
    /// owner, if it still lives, must not read zero-copy afterwards.
    pub fn release_slot(&self, index: u32) {
        assert!(index < self.inner.mem.slot_count(), "slot {index} out of range");
        self.set_granted(index, false);
        let Some(slot) = self.inner.mem.slot(index) else { return };
        // pid 0 marks a slot being (re)initialised: reapers skip it, so the
        // next owner is never mistaken for this one.
        slot.pid.store(0, Ordering::Relaxed);
        // SYNC(slot-state): Release pairs with the Acquire in the
        // publishers' limit scan (and orders the pid store before it).
        slot.state.store(SLOT_FREE, Ordering::Release);
    }

    /// Takes slot `index` back from an owner that still lives: publishers
    /// stop heeding its position at once, its owner's next poll fails with
    /// [`PollError::Revoked`], and the slot stays out of use (see
    /// [`SLOT_REVOKED`]) until [`Ring::free_revoked_slots`] finds the owner
    /// gone. Use [`Ring::release_slot`] for an owner known to be dead.
    pub fn revoke_slot(&self, index: u32) {
        assert!(index < self.inner.mem.slot_count(), "slot {index} out of range");
        self.set_granted(index, false);
        let Some(slot) = self.inner.mem.slot(index) else { return };
        // SYNC(slot-state): as in release_slot.
        slot.state.store(SLOT_REVOKED, Ordering::Release);
    }

    /// Frees the revoked slots whose owner has exited. Returns which.
    #[cfg(not(loom))]
    pub fn free_revoked_slots(&self) -> Vec<u32> {
        let mut freed = Vec::new();
        for i in 0..self.inner.mem.slot_count() {
            let Some(slot) = self.inner.mem.slot(i) else { continue };
            if slot.state.load(Ordering::Acquire) == SLOT_REVOKED && !crate::os::pid_alive(slot.pid.load(Ordering::Relaxed)) {
                self.release_slot(i);
                freed.push(i);
            }
        }
        freed
    }

    /// Whether the daemon granted slot `index` (`None` on a ring without a
    /// daemon page, whose slots' own state words say whether they are in
    /// use).
    #[inline]
    pub(crate) fn granted(&self, index: u32) -> Option<bool> {
        let word = self.inner.mem.granted()?.get(index as usize / 64)?;
        Some(word.load(Ordering::SeqCst) & (1 << (index % 64)) != 0)
    }

    /// Whether this process is the one that grants slots: the ring has a
    /// daemon page and this process may write it.
    pub(crate) fn grants_slots(&self) -> bool {
        self.inner.mem.granted().is_some() && self.inner.mem.vouch_writable()
    }

    /// Marks slot `index` granted or not (the daemon's part; nothing on a
    /// ring without a daemon page, or one this process maps read-only).
    pub(crate) fn set_granted(&self, index: u32, on: bool) {
        if !self.grants_slots() {
            return;
        }
        // (Only rings with a daemon page grant slots; loom models have none.)
        #[cfg(not(loom))]
        {
            let words = self.inner.mem.granted().expect("checked");
            let bit = 1u64 << (index % 64);
            // SYNC(join): SeqCst RMWs, ordered with the slot's position
            // store before them and the publishers' SeqCst loads in
            // `min_holding`.
            if on {
                words[index as usize / 64].fetch_or(bit, Ordering::SeqCst);
            } else {
                words[index as usize / 64].fetch_and(!bit, Ordering::SeqCst);
            }
        }
        #[cfg(loom)]
        let _ = (index, on);
    }

    /// Whether a slot got a fresh page ([`Ring::renew_slot_page`]) since
    /// this process mapped the slot pages it maps: they may then be pages
    /// nobody reads any more, that their former holders may still write.
    pub fn slots_stale(&self) -> bool {
        self.inner.mem.slots_epochs().is_some_and(|(daemon, mapped)| daemon.load(Ordering::SeqCst) != mapped.load(Ordering::Relaxed))
    }

    /// The owner pid recorded in slot `index` (0 if none or out of range).
    pub fn slot_pid(&self, index: u32) -> u32 {
        self.inner.mem.slot(index).map_or(0, |s| s.pid.load(Ordering::Relaxed))
    }

    /// Frees the slots of subscribers whose process no longer exists (by
    /// pid, in this pid namespace). Returns how many were freed.
    #[cfg(not(loom))]
    pub fn reap_dead_subscribers(&self) -> usize {
        let dead: Vec<_> = self
            .subscribers()
            .into_iter()
            .filter(|s| s.pid != 0 && !crate::os::pid_alive(s.pid))
            .collect();
        for s in &dead {
            tracing::info!(slot = s.index, pid = s.pid, "freeing slot of dead subscriber");
            self.release_slot(s.index);
        }
        dead.len()
    }

    /// A publication for one writer thread: plain stores, no atomic
    /// read-modify-write per message. Only one may exist per ring at a
    /// time across all processes; use [`Ring::shared_publication`] otherwise.
    pub fn exclusive_publication(&self) -> Result<ExclusivePublication, ClaimError> {
        Publication::new(self.clone())
    }

    /// A publication that may run beside any number of others, in any
    /// number of processes (claims with compare-and-swap).
    pub fn shared_publication(&self) -> Result<SharedPublication, ClaimError> {
        Publication::new(self.clone())
    }

    /// A publication of mode `M`, for code generic over the mode (the
    /// exclusive-only rule of [`Ring::exclusive_publication`] applies).
    pub fn publication<M: ClaimMode>(&self) -> Result<Publication<M>, ClaimError> {
        Publication::new(self.clone())
    }

    /// A subscriber with its own slot: on a back-pressure ring, zero-copy
    /// reads, and its position holds publishers back; on an overwrite ring,
    /// copied and validated reads that never hold anyone back (see
    /// [`Ring::attach_holding`] for a slot that does).
    pub fn subscribe(&self, start: Start) -> Result<Subscriber, SubscribeError> {
        Subscriber::join(self.clone(), start)
    }

    /// Takes a free slot for a subscriber of process `pid` and runs the
    /// join protocol; returns the slot index and start position. The daemon
    /// calls this and hands the subscriber its slot page; the subscriber
    /// then builds its reader with [`Ring::subscriber_on_slot`].
    pub fn attach_subscriber(&self, start: Start, pid: u32) -> Result<(u32, u64), SubscribeError> {
        Subscriber::attach(self, start, pid, false)
    }

    /// Like [`Ring::attach_subscriber`], for a slot that holds publishers
    /// back whatever the ring's policy: on an overwrite ring it becomes a
    /// holding slot ([`SLOT_HOLDING`]) by the join protocol, so from the
    /// position returned on no publisher overwrites a frame before the
    /// slot has moved past it, and its subscriber reads zero-copy. The
    /// daemon takes one for the archiver of every persisted stream. (On a
    /// back-pressure ring this is `attach_subscriber`.)
    pub fn attach_holding(&self, start: Start, pid: u32) -> Result<(u32, u64), SubscribeError> {
        Subscriber::attach(self, start, pid, true)
    }

    /// A subscriber on slot `slot`, attached at `position` by
    /// [`Ring::attach_subscriber`]. This process must map that slot
    /// writable. Dropping the subscriber frees the slot.
    pub fn subscriber_on_slot(&self, slot: u32, position: u64) -> Result<Subscriber, SubscribeError> {
        if slot >= self.inner.mem.slot_count() {
            return Err(SubscribeError::NoSuchSlot(slot));
        }
        if !self.inner.mem.slot_writable(slot) {
            return Err(SubscribeError::ReadOnly);
        }
        Ok(Subscriber::with_slot(self.clone(), slot, position))
    }

    /// A subscriber without a slot: works on a read-only mapping, never
    /// holds publishers back, copies each message out and validates it, and
    /// is told when publishers overrun it.
    pub fn subscribe_detached(&self, start: Start) -> Subscriber {
        Subscriber::detached(self.clone(), start)
    }

    /// A reclaimer that pads over claims abandoned for longer than
    /// `timeout_ns` (the daemon runs one per ring).
    pub fn reclaimer(&self, timeout_ns: u64) -> Reclaimer {
        Reclaimer::new(self.clone(), timeout_ns)
    }
}

#[cfg(loom)]
impl Ring {
    /// A ring on loom-instrumented heap memory, whose commits skip the
    /// handshake with a reclaimer (see [`Ring::loom_reclaimable`]).
    pub fn loom(capacity: u64, max_message_len: u32, policy: Policy, slot_count: u32) -> Ring {
        let info = RingInfo {
            capacity,
            max_message_len,
            policy,
            slot_count,
            created_unix_ns: 0,
            pages: PageKind::Normal4K,
            access: Access::ReadWrite,
        };
        let mem = RingMemory::new_loom(slot_count, capacity as usize);
        Ring::from_parts(mem, info, 0x5EED_F4C0_u64)
    }

    /// [`Ring::loom`] whose commits take part in the handshake with a
    /// reclaimer, as every commit outside loom does. The handshake costs
    /// a few atomic operations per commit, and each is a scheduling point
    /// that multiplies a model's executions (a model of two shared
    /// publishers across the wrap grew from 0.38 M to 2.8 M executions
    /// with it), so only the models of the handshake itself use this;
    /// the others check the rest of the protocol, which the handshake
    /// does not change (it only decides, before the commit's stores,
    /// whether they are made).
    pub fn loom_reclaimable(capacity: u64, max_message_len: u32, policy: Policy, slot_count: u32) -> Ring {
        let mut ring = Self::loom(capacity, max_message_len, policy, slot_count);
        Arc::get_mut(&mut ring.inner).expect("a new ring has one handle").reclaimable = true;
        ring
    }
}

#[cfg(not(loom))]
impl Ring {
    /// Creates a ring as a new file `name` in `dir` (mode 0600: others get
    /// it as an fd, never by path). On hugetlbfs it gets
    /// 2 MiB pages; elsewhere (tmpfs, /dev/shm) normal pages. Fails if the
    /// file exists.
    pub fn create_in(dir: &Path, name: &str, config: &RingConfig) -> Result<Ring, CreateError> {
        Self::create_in_with(dir, name, config, false)
    }

    fn create_in_with(dir: &Path, name: &str, config: &RingConfig, external: bool) -> Result<Ring, CreateError> {
        config.validate()?;
        let path = dir.join(name);
        let io = |op: &str| {
            let op = format!("{op} {}", path.display());
            move |source| CreateError::Io { op, source }
        };
        let huge = mapping::dir_is_hugetlbfs(dir);
        if config.pages == PagePreference::HugeOnly && !huge {
            let e = std::io::Error::other(format!("{} is not on hugetlbfs", dir.display()));
            return Err(CreateError::HugePagesUnavailable(e));
        }
        if config.pages == PagePreference::NormalOnly && huge {
            return Err(CreateError::InvalidConfig(format!(
                "{} is on hugetlbfs but normal pages were asked for",
                dir.display()
            )));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("create"))?;
        let pages = if huge { PageKind::Huge2M } else { PageKind::Normal4K };
        let result = Self::init_with(OwnedFd::from(file), config, pages, external);
        if let Err(e) = &result {
            let _ = std::fs::remove_file(&path);
            if huge {
                let e = std::io::Error::other(e.to_string());
                return Err(CreateError::HugePagesUnavailable(e));
            }
        }
        result
    }

    /// Creates a ring in an anonymous memory file (memfd), on huge pages
    /// when the preference allows and the kernel has them reserved, else on
    /// normal pages. Share it by passing [`Ring::fd`] to other processes.
    pub fn create_memfd(name: &str, config: &RingConfig) -> Result<Ring, CreateError> {
        config.validate()?;
        let io = |op: &'static str| move |source| CreateError::Io { op: op.into(), source };
        if config.pages != PagePreference::NormalOnly {
            let attempt = mapping::memfd(name, true)
                .and_then(|fd| Self::init(fd, config, PageKind::Huge2M).map_err(std::io::Error::other));
            match attempt {
                Ok(ring) => return Ok(ring),
                Err(e) if config.pages == PagePreference::HugeOnly => {
                    return Err(CreateError::HugePagesUnavailable(e))
                }
                Err(e) => tracing::info!(
                    ring = name,
                    error = %e,
                    "huge pages unavailable, falling back to 4KiB pages \
                     (reserve some with: echo N > /proc/sys/vm/nr_hugepages)"
                ),
            }
        }
        let fd = mapping::memfd(name, false).map_err(io("memfd_create"))?;
        Self::init(fd, config, PageKind::Normal4K)
    }

    /// Creates a ring whose subscriber slots, wake words and daemon page
    /// (the durable and replicated positions) are pages of their own, each
    /// in a memfd whose size is sealed ([`mapping::seal_size`]): the
    /// daemon's layout. Each subscriber can be given write access to its
    /// own position only, no client to the positions the daemon vouches
    /// for, and no holder of any of these fds can shrink or grow them (a
    /// shrunk file would make every process that maps it die of SIGBUS).
    /// The ring is on huge pages when `config.pages` allows and the kernel
    /// has some reserved, else on normal pages. Returns the daemon's
    /// mapping (everything read-write) and the files, to hand out.
    pub fn create_sealed(name: &str, config: &RingConfig) -> Result<(Ring, RingFiles), CreateError> {
        config.validate()?;
        let io = |op: &'static str| move |source| CreateError::Io { op: op.into(), source };
        let mut made = None;
        if config.pages != PagePreference::NormalOnly {
            let attempt = mapping::memfd(name, true).and_then(|fd| {
                let ring = Self::init_with(fd.try_clone()?, config, PageKind::Huge2M, true).map_err(std::io::Error::other)?;
                Ok((ring, fd))
            });
            match attempt {
                Ok(r) => made = Some(r),
                Err(e) if config.pages == PagePreference::HugeOnly => return Err(CreateError::HugePagesUnavailable(e)),
                Err(e) => tracing::info!(
                    ring = name,
                    error = %e,
                    "huge pages unavailable, falling back to 4KiB pages \
                     (reserve some with: echo N > /proc/sys/vm/nr_hugepages)"
                ),
            }
        }
        let (mut ring, ring_fd) = match made {
            Some(r) => r,
            None => {
                let fd = mapping::memfd(name, false).map_err(io("memfd_create"))?;
                (Self::init_with(fd.try_clone().map_err(io("dup"))?, config, PageKind::Normal4K, true)?, fd)
            }
        };
        mapping::seal_size(ring_fd.as_fd()).map_err(io("seal ring memfd"))?;
        let page = |what: &str| -> Result<(OwnedFd, Region), CreateError> {
            let fd = sealed_page(&format!("{name}.{what}")).map_err(io("page memfd"))?;
            let region = Region::map(fd.as_fd(), PAGE_FILE_LEN as usize, Access::ReadWrite, PageKind::Normal4K).map_err(io("mmap page"))?;
            Ok((fd, region))
        };
        let mut slot_fds = Vec::new();
        let mut slots = Vec::new();
        for i in 0..config.slot_count {
            let (fd, region) = page(&format!("slot{i}"))?;
            slot_fds.push(fd);
            slots.push(Some(region));
        }
        let (wake_fd, wake) = page("wake")?;
        let (daemon_fd, daemon) = page("daemon")?;
        Arc::get_mut(&mut ring.inner).expect("fresh ring").mem.use_page_files(slots, wake, daemon);
        ring.record_header();
        Ok((ring, RingFiles { ring: ring_fd, wake: wake_fd, daemon: daemon_fd, slots: slot_fds }))
    }

    /// The daemon: gives slot `index` a fresh page (zeroed, so free),
    /// mapped over the one this process maps, and bumps the slot page
    /// epoch on the daemon page, so that publishers map the new page
    /// before they heed the slot again. Returns the new page's memfd (to
    /// keep, and to hand out). Whoever kept the old page may go on writing
    /// it: nobody reads it any more.
    pub fn renew_slot_page(&self, index: u32) -> Result<OwnedFd, CreateError> {
        let io = |op: &'static str| move |source| CreateError::Io { op: op.into(), source };
        let mem = &self.inner.mem;
        let Some((epoch, mapped)) = mem.slots_epochs().filter(|_| self.grants_slots()) else {
            return Err(CreateError::Io { op: "renew slot page".into(), source: std::io::Error::other("not the daemon of a page-file ring") });
        };
        let fd = sealed_page(&format!("slot{index}")).map_err(io("page memfd"))?;
        mem.remap_slot_page(index, fd.as_fd()).map_err(io("mmap page"))?;
        // SYNC(slots-epoch): SeqCst, before any later grant of the slot
        // (SeqCst too): a publisher that sees that grant sees the epoch
        // move, and distrusts the old page it maps (`refresh_limit`).
        let now = epoch.fetch_add(1, Ordering::SeqCst) + 1;
        mapped.store(now, Ordering::Relaxed);
        Ok(fd)
    }

    /// The slot page epoch of the pages this process maps (0 without a
    /// daemon page).
    pub fn slots_epoch(&self) -> u64 {
        self.inner.mem.slots_epochs().map_or(0, |(_, mapped)| mapped.load(Ordering::Relaxed))
    }

    /// Records `epoch` as the slot page epoch of the slot pages this
    /// process maps (what the daemon said when it handed them over).
    pub fn set_slots_epoch(&self, epoch: u64) {
        if let Some((_, mapped)) = self.inner.mem.slots_epochs() {
            mapped.store(epoch, Ordering::Relaxed);
        }
    }

    /// A publisher: maps `fds` (every slot's page, read-only, as rilld
    /// handed them out at `epoch`) over the slot pages it maps, and records
    /// `epoch` as theirs.
    pub fn remap_slot_pages(&self, fds: &[OwnedFd], epoch: u64) -> Result<(), OpenError> {
        let io = |op: &'static str| move |source| OpenError::Io { op: op.into(), source };
        let mem = &self.inner.mem;
        let Some((_, mapped)) = mem.slots_epochs() else {
            return Err(OpenError::Corrupt("this ring has no daemon page: its slots are never renewed".into()));
        };
        if fds.len() != mem.slot_count() as usize {
            return Err(OpenError::Corrupt(format!("{} slot pages given for a ring of {} slots", fds.len(), mem.slot_count())));
        }
        for (i, fd) in fds.iter().enumerate() {
            let len = mapping::file_len(fd.as_fd()).map_err(io("fstat page"))?;
            if len < PAGE_FILE_LEN || !mapping::size_sealed(fd.as_fd()) {
                return Err(OpenError::Corrupt(format!("slot page {i}: not a sealed page ({len} bytes)")));
            }
            mem.remap_slot_page(i as u32, fd.as_fd()).map_err(io("mmap page"))?;
        }
        mapped.store(epoch, Ordering::Relaxed);
        Ok(())
    }

    /// Maps the files of a ring made by [`Ring::create_sealed`] again,
    /// everything read-write (the daemon taking its rings back after a
    /// restart). Refuses files whose size is not sealed.
    pub fn adopt_sealed(files: &RingFiles) -> Result<Ring, OpenError> {
        let all = files.slots.iter().chain([&files.ring, &files.wake, &files.daemon]);
        if let Some(fd) = all.clone().find(|fd| !mapping::size_sealed(fd.as_fd())) {
            return Err(OpenError::Corrupt(format!("fd {fd:?} is not a memfd with its size sealed")));
        }
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|source| OpenError::Io { op: "dup".into(), source });
        let slots = files.slots.iter().map(|fd| Ok(Some((dup(fd)?, Access::ReadWrite)))).collect::<Result<Vec<_>, OpenError>>()?;
        Self::from_fds(dup(&files.ring)?, Access::ReadWrite, slots, (dup(&files.wake)?, Access::ReadWrite), (dup(&files.daemon)?, Access::ReadWrite))
    }

    /// Maps a page-file ring from fds (received over a Unix socket): the
    /// ring with `access`, `slots[i]` for each slot this process maps (one
    /// entry per slot of the ring, `None` for slots it does not map), the
    /// wake page, and the daemon page (read-only for every client).
    pub fn from_fds(
        ring: OwnedFd,
        access: Access,
        slots: Vec<Option<(OwnedFd, Access)>>,
        wake: (OwnedFd, Access),
        daemon: (OwnedFd, Access),
    ) -> Result<Ring, OpenError> {
        let io = |op: &'static str| move |source| OpenError::Io { op: op.into(), source };
        let len = mapping::file_len(ring.as_fd()).map_err(io("fstat"))?;
        if len < SLOTS_OFFSET as u64 {
            return Err(OpenError::TooSmall { len });
        }
        let pages = if mapping::fd_is_hugetlbfs(ring.as_fd()) { PageKind::Huge2M } else { PageKind::Normal4K };
        let region = Region::map(ring.as_fd(), len as usize, access, pages).map_err(io("mmap"))?;
        let mut view = Self::view(region, Some(ring), true, true)?;
        if slots.len() != view.inner.info.slot_count as usize {
            return Err(OpenError::Corrupt(format!(
                "{} slot pages given for a ring of {} slots",
                slots.len(),
                view.inner.info.slot_count
            )));
        }
        let map_page = |(fd, access): (OwnedFd, Access)| -> Result<Region, OpenError> {
            let len = mapping::file_len(fd.as_fd()).map_err(io("fstat page"))?;
            if len < PAGE_FILE_LEN {
                return Err(OpenError::TooSmall { len });
            }
            Region::map(fd.as_fd(), PAGE_FILE_LEN as usize, access, PageKind::Normal4K).map_err(io("mmap page"))
        };
        let slots = slots.into_iter().map(|s| s.map(map_page).transpose()).collect::<Result<Vec<_>, _>>()?;
        let wake = map_page(wake)?;
        let daemon = map_page(daemon)?;
        Arc::get_mut(&mut view.inner).expect("fresh ring").mem.use_page_files(slots, wake, daemon);
        view.check_header()?;
        Ok(view)
    }

    /// Copies the ring's header, as this process (rilld) just made it, to
    /// the daemon page ([`DaemonPage::header`]).
    fn record_header(&self) {
        let mem = &self.inner.mem;
        let Some(record) = mem.header_record() else { return };
        // SAFETY: the ring's header is the first 128 bytes of its region,
        // plain data, written by us before anyone else has the ring; the
        // record is on the daemon page, which only this process writes.
        unsafe { record.write_volatile(mem.region().as_ptr().cast::<Meta>().read_volatile()) };
    }

    /// Whether what [`Ring::view`] read from the ring's header (which every
    /// publisher may write) is what rilld recorded on the daemon page when
    /// it made the ring; a ring whose page has no record yet (made by an
    /// older rilld) gets one here if this process is rilld.
    fn check_header(&self) -> Result<(), OpenError> {
        let mem = &self.inner.mem;
        let Some(record) = mem.header_record() else { return Ok(()) };
        // SAFETY: the record is plain data on the daemon page, written only
        // by rilld, once, before it hands out the ring.
        let made = unsafe { record.read_volatile() };
        if made.magic == 0 {
            if mem.vouch_writable() {
                self.record_header();
            }
            return Ok(());
        }
        let info = &self.inner.info;
        let checks: [(&str, u64, u64); 6] = [
            ("capacity", info.capacity, made.capacity),
            ("max_message_len", info.max_message_len.into(), made.max_message_len.into()),
            ("policy", info.policy.to_u32().into(), made.policy.into()),
            ("slot_count", info.slot_count.into(), made.slot_count.into()),
            ("created_unix_ns", info.created_unix_ns, made.created_unix_ns),
            ("commit_salt", self.inner.salt, made.commit_salt),
        ];
        match checks.iter().find(|(_, got, want)| got != want) {
            None => Ok(()),
            Some((field, got, want)) => Err(OpenError::Corrupt(format!(
                "the ring's header says {field} {got}, but rilld made the ring with {want}: a publisher rewrote the header"
            ))),
        }
    }

    /// A ring in ordinary heap memory: for threads of one process, tests,
    /// and Miri.
    pub fn private(config: &RingConfig) -> Result<Ring, CreateError> {
        config.validate()?;
        let g = Geometry::new(config.capacity, config.slot_count, 4096);
        let region = Region::heap(g.total_len as usize);
        Ok(Self::format(region, config, g, None, false))
    }

    fn init(fd: OwnedFd, config: &RingConfig, pages: PageKind) -> Result<Ring, CreateError> {
        Self::init_with(fd, config, pages, false)
    }

    fn init_with(fd: OwnedFd, config: &RingConfig, pages: PageKind, external: bool) -> Result<Ring, CreateError> {
        let g = Geometry::new(config.capacity, config.slot_count, pages.size() as u64);
        let io = |op: &'static str| move |source| CreateError::Io { op: op.into(), source };
        mapping::set_len(fd.as_fd(), g.total_len).map_err(io("ftruncate"))?;
        let region = Region::map(fd.as_fd(), g.total_len as usize, Access::ReadWrite, pages)
            .map_err(io("mmap"))?;
        tracing::info!(capacity = config.capacity, pages = %pages, "ring created");
        Ok(Self::format(region, config, g, Some(fd), external))
    }

    /// Writes the header of a fresh, zeroed region and views it as a ring.
    fn format(region: Region, config: &RingConfig, g: Geometry, fd: Option<OwnedFd>, external_slots: bool) -> Ring {
        let base = region.as_ptr();
        let meta = Meta {
            magic: MAGIC,
            layout_version: LAYOUT_VERSION,
            state: STATE_INITIALISING,
            capacity: g.capacity,
            max_message_len: config.max_message_len,
            policy: config.policy.to_u32(),
            slot_count: g.slot_count,
            page_size: region.pages().size() as u32,
            created_unix_ns: crate::os::now_unix_ns(),
            data_offset: g.data_offset,
            total_len: g.total_len,
            flags: if external_slots { FLAG_EXTERNAL_SLOTS } else { 0 },
            commit_salt: random_u64(),
            reserved: [0; 6],
        };
        // SAFETY: the region is at least total_len >= 128 bytes, page
        // aligned, freshly created and not yet shared with anyone we know
        // of; Meta is plain data.
        unsafe { base.cast::<Meta>().write(meta) };
        let ring = Self::view(region, fd, false, true).expect("a freshly formatted header is valid");
        let mem = &ring.inner.mem;
        mem.counters().publishers.value.next_id.store(1, Ordering::Relaxed);
        // SAFETY: the state field is 4-byte aligned inside the header.
        let state = unsafe { &*base.add(std::mem::offset_of!(Meta, state)).cast::<crate::sync::AtomicU32>() };
        // SYNC(meta-state): Release pairs with the Acquire in `view`; an
        // opener that sees READY sees every header field and the CLEAN word.
        state.store(STATE_READY, Ordering::Release);
        ring
    }

    /// Opens the ring file at `path`.
    pub fn open(path: &Path, access: Access) -> Result<Ring, OpenError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(access == Access::ReadWrite)
            .open(path)
            .map_err(|source| OpenError::Io { op: format!("open {}", path.display()), source })?;
        Self::from_fd(OwnedFd::from(file), access)
    }

    /// Maps a ring from an fd received from elsewhere (for example over a
    /// Unix socket). With `Access::ReadOnly` the fd may be read-only.
    pub fn from_fd(fd: OwnedFd, access: Access) -> Result<Ring, OpenError> {
        let io = |op: &'static str| move |source| OpenError::Io { op: op.into(), source };
        let len = mapping::file_len(fd.as_fd()).map_err(io("fstat"))?;
        if len < SLOTS_OFFSET as u64 {
            return Err(OpenError::TooSmall { len });
        }
        let pages =
            if mapping::fd_is_hugetlbfs(fd.as_fd()) { PageKind::Huge2M } else { PageKind::Normal4K };
        let region = Region::map(fd.as_fd(), len as usize, access, pages).map_err(io("mmap"))?;
        Self::view(region, Some(fd), true, false)
    }

    /// Validates the header of a mapped region and views it as a ring;
    /// `require_ready` is false only for the creator, before it publishes;
    /// `pages_follow` says the caller will attach slot and wake page files.
    fn view(region: Region, fd: Option<OwnedFd>, require_ready: bool, pages_follow: bool) -> Result<Ring, OpenError> {
        let base = region.as_ptr();
        let len = region.len() as u64;
        // SAFETY: region is >= SLOTS_OFFSET bytes (checked by callers) and
        // page aligned; Meta is plain data, read by value. Another process
        // may write it concurrently only before READY; we check READY with
        // acquire below before trusting the copy.
        let state = unsafe { &*base.add(std::mem::offset_of!(Meta, state)).cast::<crate::sync::AtomicU32>() };
        // SYNC(meta-state): Acquire pairs with the Release in `format`.
        let ready = state.load(Ordering::Acquire);
        // SAFETY: as above.
        let meta = unsafe { base.cast::<Meta>().read_volatile() };
        if meta.magic != MAGIC {
            return Err(if meta.magic == 0 { OpenError::NotReady } else { OpenError::BadMagic { found: meta.magic } });
        }
        if meta.layout_version != LAYOUT_VERSION {
            return Err(OpenError::VersionMismatch { found: meta.layout_version, expected: LAYOUT_VERSION });
        }
        if require_ready && ready != STATE_READY {
            return Err(OpenError::NotReady);
        }
        let policy = Policy::from_u32(meta.policy)
            .ok_or_else(|| OpenError::Corrupt(format!("unknown policy {}", meta.policy)))?;
        let config = RingConfig {
            capacity: meta.capacity,
            max_message_len: meta.max_message_len,
            policy,
            slot_count: meta.slot_count,
            pages: PagePreference::Auto,
        };
        config.validate().map_err(|e| OpenError::Corrupt(e.to_string()))?;
        let g = Geometry::new(meta.capacity, meta.slot_count, 4096);
        if meta.data_offset != g.data_offset
            || meta.total_len > len
            || meta.data_offset + meta.capacity > meta.total_len
        {
            return Err(OpenError::Corrupt(format!(
                "data at {} + {} does not fit total {} / mapped {len}",
                meta.data_offset, meta.capacity, meta.total_len
            )));
        }
        if meta.flags & FLAG_EXTERNAL_SLOTS != 0 && !pages_follow {
            return Err(OpenError::NeedsPageFiles);
        }
        let info = RingInfo {
            capacity: meta.capacity,
            max_message_len: meta.max_message_len,
            policy,
            slot_count: meta.slot_count,
            created_unix_ns: meta.created_unix_ns,
            pages: region.pages(),
            access: region.access(),
        };
        // SAFETY: offsets checked against the mapped length just above;
        // COUNTERS_OFFSET and SLOTS_OFFSET are 128-aligned, data_offset is
        // 4096-aligned by Geometry.
        let mem = unsafe {
            RingMemory::new(
                region,
                COUNTERS_OFFSET,
                SLOTS_OFFSET,
                meta.slot_count,
                meta.data_offset as usize,
                meta.capacity as usize,
            )
        };
        Ok(Ring::from_parts(mem, info, meta.commit_salt, fd))
    }

    /// The fd behind the mapping, to hand to another process; `None` for a
    /// private ring.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.fd.as_ref().map(|f| f.as_fd())
    }

    /// Whether this mapping is read-only.
    pub fn is_read_only(&self) -> bool {
        self.inner.mem.region().access() == Access::ReadOnly
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
