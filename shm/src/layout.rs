//! The byte layout of a ring file. This is an ABI between processes (and
//! between daemon versions across a restart): change it only with a new
//! [`LAYOUT_VERSION`].
//!
//! ```text
//! offset 0      +--------------------------------------------------+
//!               | Meta (128 B): magic, layout_version, state,      |
//!               |   capacity, max_message_len, policy, slot_count, |
//!               |   page_size, created_unix_ns, data_offset,       |
//!               |   total_len                                      |
//! offset 128    +--------------------------------------------------+
//!               | Counters, each on its own 128-byte line:         |
//!               |   128  tail          (claimed position)          |
//!               |   256  limit_granted (highest publisher limit)   |
//!               |   384  durable position, its futex and waiters   |
//!               |   512  replicated position                       |
//!               |   640  futex word, waiters                       |
//!               |   768  next_publisher_id, fenced, slot_hwm,      |
//!               |        exclusive_pid, origin, reclaim,           |
//!               |        reclaim_end, padded_end                   |
//!               |   896  head (oldest frame that may be uncommitted)|
//! offset 1024   +--------------------------------------------------+
//!               | Slot[slot_count], 128 B each: state (free,       |
//!               |   active, revoked, holding), pid, position,      |
//!               |   heartbeat_ns, overrun_bytes                    |
//! data_offset   +--------------------------------------------------+  (page aligned)
//!               | data: `capacity` bytes of frames (power of two)  |
//! total_len     +--------------------------------------------------+  (page multiple)
//! ```
//!
//! Counters sit 128 bytes apart, not 64: Intel's adjacent-line prefetcher
//! pulls cache lines in pairs, so 64-byte separation still false-shares.
//!
//! With [`FLAG_EXTERNAL_SLOTS`] (rings made by `rilld`), the slot table,
//! the wake words and the durable and replicated lines here are unused:
//! each slot is its own page file, the wake words a shared page file (see
//! [`SlotPage`]), and the positions rilld vouches for are on a page only
//! rilld writes ([`DaemonPage`]).
//!
//! Opening checks `magic`, then `layout_version`, then that `state` is
//! [`STATE_READY`] (written last, with release, by the creator); a ring still
//! being initialised or of another version is a typed error.

use crate::sync::{AtomicU32, AtomicU64};

/// `b"RILLRING"` read as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RILLRING");
/// Version of this layout. Bump on any change to offsets or meanings.
pub const LAYOUT_VERSION: u32 = 2;
/// `Meta::state` while the creator is still writing the header.
pub const STATE_INITIALISING: u32 = 0;
/// `Meta::state` once the ring may be used.
pub const STATE_READY: u32 = 1;

/// Offset of the counters region.
pub const COUNTERS_OFFSET: usize = 128;
/// Offset of the subscriber slot table.
pub const SLOTS_OFFSET: usize = 1024;
/// Size of one subscriber slot.
pub const SLOT_SIZE: usize = 128;
/// Largest number of subscriber slots a ring may have.
pub const MAX_SLOTS: u32 = 4096;

/// `Slot::state`: unused.
pub const SLOT_FREE: u32 = 0;
/// `Slot::state`: held by a live subscriber whose position bounds publishers.
pub const SLOT_ACTIVE: u32 = 1;
/// `Slot::state`: taken back from an owner that still lives (judged hung):
/// publishers ignore it, but it is not handed out again until that owner
/// has exited, because the owner may still store its position into it.
pub const SLOT_REVOKED: u32 = 2;
/// `Slot::state`: held by a live subscriber whose position bounds
/// publishers even on an overwrite ring (the archiver of a persisted
/// stream): publishers of either policy never claim more than one ring past
/// it. Used on overwrite rings only; on a back-pressure ring every
/// [`SLOT_ACTIVE`] slot holds publishers back already, so a holding slot
/// there stays `SLOT_ACTIVE` and the ring's bytes mean what they always
/// meant. (Added without a new [`LAYOUT_VERSION`]: a ring with no holding
/// slot is laid out and read exactly as before, and only rilld speaking
/// protocol version 3 or later marks slots holding, on persisted overwrite
/// streams, which older clients cannot open.)
pub const SLOT_HOLDING: u32 = 3;

/// The ring's fixed metadata. Written once by the creator, then read-only.
#[repr(C)]
#[derive(Debug)]
pub struct Meta {
    /// [`MAGIC`].
    pub magic: u64,
    /// [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// [`STATE_INITIALISING`] or [`STATE_READY`]; accessed atomically.
    pub state: u32,
    /// Size of the data region in bytes, a power of two.
    pub capacity: u64,
    /// Largest payload a publisher may write.
    pub max_message_len: u32,
    /// 0 = back-pressure, 1 = overwrite.
    pub policy: u32,
    /// Number of subscriber slots.
    pub slot_count: u32,
    /// Page size the mapping got when created (4096 or 2 MiB).
    pub page_size: u32,
    /// Creation time, ns since the Unix epoch.
    pub created_unix_ns: u64,
    /// Offset of the data region from the start of the file.
    pub data_offset: u64,
    /// Total file length.
    pub total_len: u64,
    /// Bit 0 ([`FLAG_EXTERNAL_SLOTS`]): subscriber slots and the wake
    /// words live in separate one-page files, not in this file.
    pub flags: u64,
    /// Random per ring: the key of every frame's commit tag (see `ring`).
    pub commit_salt: u64,
    /// Zero; room for later fields.
    pub reserved: [u64; 6],
}

/// `Meta::flags`: slots and wake words are in separate page files (the
/// daemon's layout; see [`SlotPage`]).
pub const FLAG_EXTERNAL_SLOTS: u64 = 1;

/// Size of a slot page or wake page file.
pub const PAGE_FILE_LEN: u64 = 4096;

/// A one-page file holding one subscriber's [`Slot`] at offset 0.
///
/// In the daemon's layout every subscriber slot is its own page file, so a
/// subscriber can be given write access to its own position and nothing
/// else: the ring file itself reaches it read-only. Publishers map every
/// slot page read-only to compute their limit; the daemon maps them all
/// read-write. The wake page ([`WakeWords`] at offset 0) is shared
/// read-write by every client of the ring: a client that scribbles on it
/// can delay other readers' wake-ups (they sleep in bounded slices) but
/// cannot touch data or positions.
#[derive(Debug)]
pub struct SlotPage;

/// Offset in the wake page of the count of publishers asleep waiting for
/// durability (an `AtomicU32`; see [`DurableWords::waiters`], which it
/// stands for in the daemon's layout). Clients write it, so it is on the
/// page every client may write, not on the [`DaemonPage`].
pub const WAKE_PAGE_DURABLE_WAITERS: usize = 128;

/// A one-page file of the positions the daemon vouches for, which only
/// the daemon writes: every client maps it read-only (`<stream>.daemon`
/// in the page directory; rilld's layout only, with
/// [`FLAG_EXTERNAL_SLOTS`]). In the ring file, which publishers map
/// read-write, a publisher could write any position it liked and make
/// every `wait_durable` of the stream return at once; here it cannot.
/// In rilld's rings the `durable` and `replicated` lines of [`Counters`]
/// are unused.
#[repr(C)]
#[derive(Debug)]
pub struct DaemonPage {
    /// The durable position and its futex (`waiters` unused: that count
    /// is at [`WAKE_PAGE_DURABLE_WAITERS`] in the wake page).
    pub durable: Line<DurableWords>,
    /// Position held by enough replicas.
    pub replicated: Line<AtomicU64>,
    /// The slots rilld granted, bit `i % 64` of word `i / 64` for slot
    /// `i`: publishers heed only these (a slot's own state word is written
    /// by whoever holds, or once held, its page, so it cannot say whether
    /// the slot is anyone's). Set by rilld when it attaches a subscriber,
    /// cleared when it frees or revokes the slot. (Layout version 2.)
    pub granted: [AtomicU64; GRANT_WORDS],
    /// Bumped by rilld whenever it gives a slot a fresh page (at every
    /// release, so that no former holder of a slot page can write the
    /// next holder's slot): a publisher whose slot pages are of an older
    /// epoch asks rilld for the new ones before it trusts them again.
    pub slots_epoch: Line<AtomicU64>,
    /// Pid of the process rilld granted the stream's exclusive publication
    /// (0: nobody), so that a restarted rilld still knows no other writer
    /// may join. Here, not in the ring's header, because every publisher
    /// may write the header: a pid forged there would hand the stream to
    /// a process of the forger's choosing after rilld's next restart.
    /// (Added without a new [`LAYOUT_VERSION`]: the line was zero, which
    /// is right for every older page.)
    pub exclusive_pid: Line<AtomicU32>,
    /// rilld's copy of the ring's [`Meta`] as it made it. The ring's own
    /// header is writable by every publisher; whoever maps the ring checks
    /// what it read there against this record, so a header rewritten later
    /// (another capacity, policy, salt) is refused rather than believed.
    /// All zero on pages of a rilld that predates it (no record).
    pub header: Meta,
}

/// Words of [`DaemonPage::granted`]: one bit per possible slot.
pub const GRANT_WORDS: usize = MAX_SLOTS as usize / 64;

/// One counter on its own 128-byte line.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Line<T> {
    /// The value.
    pub value: T,
}

/// The futex word and the count of sleeping subscribers, on one line.
#[repr(C)]
#[derive(Debug)]
pub struct WakeWords {
    /// Incremented on every wake; sleepers wait on it with FUTEX_WAIT.
    pub futex: AtomicU32,
    /// Non-zero while a subscriber is, or is about to be, asleep; set by
    /// the sleeper, cleared by the publisher that wakes everyone.
    pub waiters: AtomicU32,
}

/// The durable position and how publishers wait for it, on one line.
#[repr(C)]
#[derive(Debug)]
pub struct DurableWords {
    /// Position up to which the stream is on disk (only grows).
    pub position: AtomicU64,
    /// Incremented on every wake; waiters sleep on it with FUTEX_WAIT.
    pub futex: AtomicU32,
    /// Publishers asleep (or about to be) waiting for durability: each
    /// adds one before it sleeps and takes it back after.
    pub waiters: AtomicU32,
}

/// Ids handed to publishers, and how many publishers fence on every commit.
#[repr(C)]
#[derive(Debug)]
pub struct PublisherWords {
    /// Next publisher id to hand out (fetch_add).
    pub next_id: AtomicU32,
    /// Publishers that could not register for membarrier and therefore
    /// issue a full fence after each commit.
    pub fenced: AtomicU32,
    /// One more than the highest slot index ever activated: publishers scan
    /// only `slots[..slot_hwm]`.
    pub slot_hwm: AtomicU32,
    /// Pid of the process holding the ring's exclusive publication, 0 if
    /// none. Written by whoever arbitrates publishers, so that a restarted
    /// arbiter still knows no other writer may join. Unused in rilld's
    /// layout, whose record is on the [`DaemonPage`].
    pub exclusive_pid: AtomicU32,
    /// The first stream position this ring ever held: 0, or where a
    /// persisted stream's log ended when its ring was recreated
    /// (`Ring::start_at`). Nothing before it was ever in this ring, so no
    /// subscriber may start before it in the ring. Written once, before
    /// anyone uses the ring. (Added without a new [`LAYOUT_VERSION`]: the
    /// word was zero padding, and zero is right for every older ring.)
    pub origin: AtomicU64,
    /// The reclaimer's current decision about one abandoned claim:
    /// `position << 2 | state`, state one of `RECLAIM_*` (see
    /// `ring::reclaim`). A publisher reads it at every commit, after
    /// announcing its commit, to learn whether the reclaimer padded over
    /// its claim; it may abort a pending decision with a CAS.
    pub reclaim: AtomicU64,
    /// Where the padding of the decision in `reclaim` would end (written
    /// before it; the reclaimer may still shorten the padding, never
    /// lengthen it). A decision whose range does not reach a claim does
    /// not concern that claim's publisher.
    pub reclaim_end: AtomicU64,
    /// The end of the furthest padding the reclaimer ever wrote (only
    /// grows); a publisher whose claim starts before it lost that claim.
    pub padded_end: AtomicU64,
}

/// [`PublisherWords::reclaim`]: no decision in progress.
pub const RECLAIM_NONE: u64 = 0;
/// [`PublisherWords::reclaim`]: the reclaimer announced it means to pad
/// the claim and is checking whether its publisher commits after all.
pub const RECLAIM_PENDING: u64 = 1;
/// [`PublisherWords::reclaim`]: the reclaimer is padding the claim.
pub const RECLAIM_PADDING: u64 = 2;
/// [`PublisherWords::reclaim`]: the claim was padded over.
pub const RECLAIM_PADDED: u64 = 3;

/// The shared counters.
#[repr(C)]
#[derive(Debug)]
pub struct Counters {
    /// Highest claimed position: the end of the last claimed frame.
    pub tail: Line<AtomicU64>,
    /// Highest publisher limit ever granted (see `ring::subscription` for
    /// the join protocol that reads it).
    pub limit_granted: Line<AtomicU64>,
    /// Position up to which the stream is on disk; written by the archiver,
    /// which wakes the publishers waiting for it.
    pub durable: Line<DurableWords>,
    /// Position held by enough replicas; written by the replicator.
    pub replicated: Line<AtomicU64>,
    /// Futex word and waiters.
    pub wake: Line<WakeWords>,
    /// Publisher ids.
    pub publishers: Line<PublisherWords>,
    /// A frame boundary at or before the oldest frame that may still be
    /// uncommitted. No claim may end more than one ring past it (see
    /// `ring::publication`), so frames from `head` on are never overwritten
    /// and a slow publisher's claim is never lapped.
    pub head: Line<AtomicU64>,
}

/// One subscriber's position slot.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Slot {
    /// [`SLOT_FREE`], [`SLOT_ACTIVE`], [`SLOT_REVOKED`] or
    /// [`SLOT_HOLDING`].
    pub state: AtomicU32,
    /// Owner's pid (as the creator of the slot saw it).
    pub pid: AtomicU32,
    /// Next position the subscriber will read; everything before it is done.
    pub position: AtomicU64,
    /// Owner's last sign of life, ns on its clock; 0 if it never said.
    pub heartbeat_ns: AtomicU64,
    /// Bytes this subscriber lost to overruns (overwrite policy).
    pub overrun_bytes: AtomicU64,
}

#[cfg(not(loom))]
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<Meta>() == COUNTERS_OFFSET);
    assert!(offset_of!(Meta, state) == 12);
    assert!(offset_of!(Meta, capacity) == 16);
    assert!(offset_of!(Meta, total_len) == 56);
    assert!(offset_of!(Meta, flags) == 64);
    assert!(offset_of!(Meta, commit_salt) == 72);
    assert!(size_of::<Line<AtomicU64>>() == 128);
    assert!(offset_of!(Counters, tail) == 0);
    assert!(offset_of!(Counters, limit_granted) == 128);
    assert!(offset_of!(Counters, durable) == 256);
    assert!(offset_of!(DaemonPage, durable) == 0);
    assert!(offset_of!(DaemonPage, replicated) == 128);
    assert!(offset_of!(DaemonPage, granted) == 256);
    assert!(offset_of!(DaemonPage, slots_epoch) == 768);
    assert!(offset_of!(DaemonPage, exclusive_pid) == 896);
    assert!(offset_of!(DaemonPage, header) == 1024);
    assert!(size_of::<DaemonPage>() <= PAGE_FILE_LEN as usize);
    assert!(size_of::<WakeWords>() <= WAKE_PAGE_DURABLE_WAITERS);
    assert!(offset_of!(Counters, replicated) == 384);
    assert!(offset_of!(Counters, wake) == 512);
    assert!(offset_of!(Counters, publishers) == 640);
    assert!(offset_of!(Counters, head) == 768);
    assert!(offset_of!(PublisherWords, origin) == 16);
    assert!(offset_of!(PublisherWords, reclaim) == 24);
    assert!(offset_of!(PublisherWords, reclaim_end) == 32);
    assert!(offset_of!(PublisherWords, padded_end) == 40);
    assert!(COUNTERS_OFFSET + size_of::<Counters>() <= SLOTS_OFFSET);
    assert!(size_of::<Slot>() == SLOT_SIZE);
    assert!(align_of::<Slot>() == 128);
    assert!(offset_of!(Slot, position) == 8);
};

/// Where each region of a ring with this shape lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Data capacity (power of two).
    pub capacity: u64,
    /// Number of subscriber slots.
    pub slot_count: u32,
    /// Offset of the data region (page aligned).
    pub data_offset: u64,
    /// Total length (page multiple).
    pub total_len: u64,
}

impl Geometry {
    /// Computes the regions for `capacity` and `slot_count` on pages of
    /// `page_size` bytes. The data region starts on a 4 KiB boundary so it
    /// can be mapped on its own; the file is a multiple of `page_size`.
    pub fn new(capacity: u64, slot_count: u32, page_size: u64) -> Self {
        const SMALL_PAGE: u64 = 4096;
        let slots_end = SLOTS_OFFSET as u64 + u64::from(slot_count) * SLOT_SIZE as u64;
        let data_offset = slots_end.next_multiple_of(SMALL_PAGE);
        let total_len = (data_offset + capacity).next_multiple_of(page_size);
        Geometry { capacity, slot_count, data_offset, total_len }
    }
}

#[cfg(loom)]
impl Counters {
    pub(crate) fn new_loom() -> Self {
        let l = |v| Line { value: AtomicU64::new(v) };
        Counters {
            tail: l(0),
            limit_granted: l(0),
            durable: Line {
                value: DurableWords { position: AtomicU64::new(0), futex: AtomicU32::new(0), waiters: AtomicU32::new(0) },
            },
            replicated: l(0),
            wake: Line { value: WakeWords { futex: AtomicU32::new(0), waiters: AtomicU32::new(0) } },
            head: l(0),
            publishers: Line {
                value: PublisherWords {
                    next_id: AtomicU32::new(1),
                    fenced: AtomicU32::new(0),
                    slot_hwm: AtomicU32::new(0),
                    origin: AtomicU64::new(0),
                    exclusive_pid: AtomicU32::new(0),
                    reclaim: AtomicU64::new(0),
                    reclaim_end: AtomicU64::new(0),
                    padded_end: AtomicU64::new(0),
                },
            },
        }
    }
}

#[cfg(loom)]
impl Slot {
    pub(crate) fn new_loom() -> Self {
        Slot {
            state: AtomicU32::new(0),
            pid: AtomicU32::new(0),
            position: AtomicU64::new(0),
            heartbeat_ns: AtomicU64::new(0),
            overrun_bytes: AtomicU64::new(0),
        }
    }
}
