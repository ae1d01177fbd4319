//! Typed access to a ring's memory: counters, slots, and the data region as
//! 64-bit words and payload bytes.
//!
//! In a normal build these are views into a [`Region`] (a shared mapping or
//! heap block). Under `--cfg loom` the same accessors are backed by loom
//! atomics on the heap, so the model checker sees every access the ring
//! makes. The ring's algorithms call only these methods.

use crate::layout::{Counters, DurableWords, Slot, WakeWords};
use crate::sync::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
use crate::os::mapping::Region;

/// The memory of one ring.
#[derive(Debug)]
pub(crate) struct RingMemory {
    #[cfg(not(loom))]
    region: Region,
    #[cfg(not(loom))]
    counters: *const Counters,
    #[cfg(not(loom))]
    slots: SlotSource,
    #[cfg(not(loom))]
    wake: *const WakeWords,
    #[cfg(not(loom))]
    wake_page: Option<Region>,
    /// The durable position and its futex: in the counters, or on the
    /// daemon page.
    #[cfg(not(loom))]
    durable: *const DurableWords,
    /// Publishers waiting for durability: in the counters, or on the wake
    /// page.
    #[cfg(not(loom))]
    durable_waiters: *const AtomicU32,
    #[cfg(not(loom))]
    replicated: *const AtomicU64,
    /// The slots the daemon granted (on the daemon page; null without one).
    #[cfg(not(loom))]
    granted: *const AtomicU64,
    /// The daemon's slot page epoch (on the daemon page; null without one).
    #[cfg(not(loom))]
    slots_epoch: *const AtomicU64,
    /// The exclusive publisher's pid: in the counters, or on the daemon page.
    #[cfg(not(loom))]
    exclusive_pid: *const AtomicU32,
    /// The epoch of the slot pages this process maps.
    #[cfg(not(loom))]
    mapped_slots_epoch: std::sync::atomic::AtomicU64,
    /// The page of positions only the daemon writes (rilld's layout).
    #[cfg(not(loom))]
    daemon_page: Option<Region>,
    #[cfg(not(loom))]
    data: *mut u8,
    #[cfg(loom)]
    counters: Box<Counters>,
    #[cfg(loom)]
    slots: Box<[Slot]>,
    #[cfg(loom)]
    data: Box<[AtomicU64]>,
    capacity: usize,
    slot_count: u32,
}

// SAFETY: the raw pointers point into `region`, which RingMemory owns; all
// shared access goes through atomics or the ring's commit protocol.
unsafe impl Send for RingMemory {}
// SAFETY: as above.
unsafe impl Sync for RingMemory {}

/// Where subscriber slots live.
#[cfg(not(loom))]
#[derive(Debug)]
enum SlotSource {
    /// In the ring file's slot table.
    Table(*const Slot),
    /// One page file per slot; `None` where this process has no mapping
    /// of that slot (a subscriber maps only its own).
    Pages(Vec<Option<Region>>),
}

#[cfg(not(loom))]
impl RingMemory {
    /// Views `region` with counters at `counters_off`, `slot_count` slots at
    /// `slots_off` and `capacity` data bytes at `data_off`.
    ///
    /// # Safety
    /// The offsets must be aligned (128 for counters and slots, 4096 for
    /// data) and every region must lie inside `region`; the caller has
    /// checked this against the region's length.
    pub(crate) unsafe fn new(
        region: Region,
        counters_off: usize,
        slots_off: usize,
        slot_count: u32,
        data_off: usize,
        capacity: usize,
    ) -> Self {
        assert!(data_off + capacity <= region.len());
        assert!(slots_off + slot_count as usize * crate::layout::SLOT_SIZE <= data_off);
        let base = region.as_ptr();
        // SAFETY: the caller guarantees the offsets are inside the region.
        let (counters, slots, data) = unsafe {
            (base.add(counters_off).cast::<Counters>(), base.add(slots_off).cast(), base.add(data_off))
        };
        // SAFETY: counters points at a live, aligned Counters (see above).
        let (wake, durable, durable_waiters, replicated, exclusive_pid) = unsafe {
            (
                std::ptr::addr_of!((*counters).wake.value),
                std::ptr::addr_of!((*counters).durable.value),
                std::ptr::addr_of!((*counters).durable.value.waiters),
                std::ptr::addr_of!((*counters).replicated.value),
                std::ptr::addr_of!((*counters).publishers.value.exclusive_pid),
            )
        };
        RingMemory {
            region,
            counters,
            slots: SlotSource::Table(slots),
            wake,
            wake_page: None,
            durable,
            durable_waiters,
            replicated,
            granted: std::ptr::null(),
            slots_epoch: std::ptr::null(),
            exclusive_pid,
            mapped_slots_epoch: std::sync::atomic::AtomicU64::new(0),
            daemon_page: None,
            data,
            capacity,
            slot_count,
        }
    }

    /// Moves slots and wake words to page files: `pages[i]` maps slot `i`
    /// (or `None`), `wake` maps the wake page. Each region is at least
    /// `PAGE_FILE_LEN` bytes and page aligned (checked).
    pub(crate) fn use_page_files(&mut self, pages: Vec<Option<Region>>, wake: Region, daemon: Region) {
        use crate::layout::{DaemonPage, PAGE_FILE_LEN, WAKE_PAGE_DURABLE_WAITERS};
        assert_eq!(pages.len(), self.slot_count as usize);
        for r in pages.iter().flatten().chain([&wake, &daemon]) {
            assert!(r.len() >= PAGE_FILE_LEN as usize && (r.as_ptr() as usize).is_multiple_of(4096));
        }
        self.wake = wake.as_ptr().cast();
        // SAFETY: the wake page is at least PAGE_FILE_LEN bytes (checked),
        // so the u32 at WAKE_PAGE_DURABLE_WAITERS is inside it and aligned.
        self.durable_waiters = unsafe { wake.as_ptr().add(WAKE_PAGE_DURABLE_WAITERS).cast() };
        let page = daemon.as_ptr().cast::<DaemonPage>();
        // SAFETY: the daemon page is large and aligned enough (checked, and
        // DaemonPage fits in PAGE_FILE_LEN: layout's static asserts).
        (self.durable, self.replicated, self.granted, self.slots_epoch, self.exclusive_pid) = unsafe {
            (
                std::ptr::addr_of!((*page).durable.value),
                std::ptr::addr_of!((*page).replicated.value),
                std::ptr::addr_of!((*page).granted).cast(),
                std::ptr::addr_of!((*page).slots_epoch.value),
                std::ptr::addr_of!((*page).exclusive_pid.value),
            )
        };
        // SAFETY: as above.
        let epoch = unsafe { &*self.slots_epoch }.load(std::sync::atomic::Ordering::SeqCst);
        self.mapped_slots_epoch.store(epoch, std::sync::atomic::Ordering::Relaxed);
        self.wake_page = Some(wake);
        self.daemon_page = Some(daemon);
        self.slots = SlotSource::Pages(pages);
    }

    /// The durable position and its futex.
    #[inline]
    pub(crate) fn durable(&self) -> &DurableWords {
        // SAFETY: points into the counters or the daemon page, both owned
        // by self; atomics only.
        unsafe { &*self.durable }
    }

    /// How many publishers sleep waiting for durability.
    #[inline]
    pub(crate) fn durable_waiters(&self) -> &AtomicU32 {
        // SAFETY: points into the counters or the wake page, owned by self.
        unsafe { &*self.durable_waiters }
    }

    /// The replicated position.
    #[inline]
    pub(crate) fn replicated(&self) -> &AtomicU64 {
        // SAFETY: points into the counters or the daemon page, owned by self.
        unsafe { &*self.replicated }
    }

    /// The daemon page's record of the ring's header ([`DaemonPage::header`]),
    /// if the ring has a daemon page.
    pub(crate) fn header_record(&self) -> Option<*mut crate::layout::Meta> {
        let page = self.daemon_page.as_ref()?;
        // SAFETY: the daemon page is at least PAGE_FILE_LEN bytes (checked
        // in use_page_files) and DaemonPage fits in it (layout's asserts).
        Some(unsafe { page.as_ptr().add(std::mem::offset_of!(crate::layout::DaemonPage, header)) }.cast())
    }

    /// The exclusive publisher's pid record.
    pub(crate) fn exclusive_pid(&self) -> &AtomicU32 {
        // SAFETY: points into the counters or the daemon page, owned by self.
        unsafe { &*self.exclusive_pid }
    }

    /// The words of granted slots (bit `i % 64` of word `i / 64` for slot
    /// `i`, up to the ring's slot count), if the ring has a daemon page.
    #[inline]
    pub(crate) fn granted(&self) -> Option<&[AtomicU64]> {
        if self.granted.is_null() {
            return None;
        }
        // SAFETY: points at DaemonPage::granted, GRANT_WORDS atomics inside
        // the daemon page owned by self; slot_count <= MAX_SLOTS.
        Some(unsafe { std::slice::from_raw_parts(self.granted, (self.slot_count as usize).div_ceil(64)) })
    }

    /// The daemon's slot page epoch, and the one of the pages this process
    /// maps; `None` without a daemon page.
    #[inline]
    pub(crate) fn slots_epochs(&self) -> Option<(&AtomicU64, &std::sync::atomic::AtomicU64)> {
        // SAFETY: points into the daemon page owned by self, if not null.
        (!self.slots_epoch.is_null()).then(|| (unsafe { &*self.slots_epoch }, &self.mapped_slots_epoch))
    }

    /// Maps `fd` over slot `i`'s page in place (see [`Region::remap`]).
    pub(crate) fn remap_slot_page(&self, i: u32, fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<()> {
        match &self.slots {
            SlotSource::Pages(p) => match p.get(i as usize) {
                Some(Some(r)) => r.remap(fd),
                _ => Err(std::io::Error::other(format!("slot {i} is not mapped here"))),
            },
            SlotSource::Table(_) => Err(std::io::Error::other("this ring's slots are in its own file")),
        }
    }

    /// Whether this process may write the durable and replicated
    /// positions (the daemon, or whoever maps a ring without page files
    /// read-write).
    pub(crate) fn vouch_writable(&self) -> bool {
        let access = self.daemon_page.as_ref().map_or(self.region.access(), Region::access);
        access == crate::os::mapping::Access::ReadWrite
    }

    /// The region (for its access mode and page kind).
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// Shared counters.
    #[inline]
    pub(crate) fn counters(&self) -> &Counters {
        // SAFETY: checked in `new`: aligned, inside the live region; all
        // fields are atomics, so shared references are sound.
        unsafe { &*self.counters }
    }

    /// Subscriber slot `i`, if this process maps it.
    #[inline]
    pub(crate) fn slot(&self, i: u32) -> Option<&Slot> {
        assert!(i < self.slot_count);
        match &self.slots {
            // SAFETY: i < slot_count, and the table lies inside the region.
            SlotSource::Table(t) => Some(unsafe { &*t.add(i as usize) }),
            // SAFETY: each page region is live, page aligned and large
            // enough for a Slot (checked in use_page_files); Slot is atomics.
            SlotSource::Pages(p) => p[i as usize].as_ref().map(|r| unsafe { &*r.as_ptr().cast::<Slot>() }),
        }
    }

    /// The futex word and waiter count.
    #[inline]
    pub(crate) fn wake(&self) -> &WakeWords {
        // SAFETY: points into the counters (inside the region) or at the
        // start of the wake page, both owned by self; atomics only.
        unsafe { &*self.wake }
    }

    /// Whether this process may write every subscriber slot (and so take
    /// free ones).
    pub(crate) fn slots_writable(&self) -> bool {
        use crate::os::mapping::Access::ReadWrite;
        match &self.slots {
            SlotSource::Table(_) => self.region.access() == ReadWrite,
            SlotSource::Pages(p) => p.iter().all(|r| r.as_ref().is_some_and(|r| r.access() == ReadWrite)),
        }
    }

    /// Whether this process may write slot `i`.
    pub(crate) fn slot_writable(&self, i: u32) -> bool {
        use crate::os::mapping::Access::ReadWrite;
        match &self.slots {
            SlotSource::Table(_) => self.region.access() == ReadWrite,
            SlotSource::Pages(p) => p[i as usize].as_ref().is_some_and(|r| r.access() == ReadWrite),
        }
    }

    /// Whether this process may write the wake words.
    pub(crate) fn wake_writable(&self) -> bool {
        match &self.wake_page {
            Some(r) => r.access() == crate::os::mapping::Access::ReadWrite,
            None => self.region.access() == crate::os::mapping::Access::ReadWrite,
        }
    }

    /// The 64-bit word at data offset `off`.
    #[inline]
    pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= self.capacity);
        let off = off & (self.capacity - 1) & !7;
        // SAFETY: masked into [0, capacity) and 8-aligned; data is 4096
        // aligned, so the AtomicU64 is aligned and inside the region.
        unsafe { &*self.data.add(off).cast::<AtomicU64>() }
    }

    /// Copies `src` into the data region at `off`.
    ///
    /// # Safety
    /// The caller owns `[off, off + src.len())` by a claim that no reader
    /// will read before the claim is committed.
    #[inline]
    pub(crate) unsafe fn write_bytes(&self, off: usize, src: &[u8]) {
        assert!(off + src.len() <= self.capacity);
        // SAFETY: in bounds (asserted); exclusive by the caller's claim.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(off), src.len()) }
    }

    /// A mutable view of claimed bytes.
    ///
    /// # Safety
    /// As for `write_bytes`, and the view must not outlive the claim.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn bytes_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(off + len <= self.capacity);
        // SAFETY: in bounds; exclusive by the caller's claim.
        unsafe { std::slice::from_raw_parts_mut(self.data.add(off), len) }
    }

    /// A view of committed bytes.
    ///
    /// # Safety
    /// `[off, off + len)` must be committed and must not be overwritten
    /// while the view lives (the reader's position holds publishers back).
    #[inline]
    pub(crate) unsafe fn bytes(&self, off: usize, len: usize) -> &[u8] {
        assert!(off + len <= self.capacity);
        // SAFETY: in bounds; stable by the caller's guarantee.
        unsafe { std::slice::from_raw_parts(self.data.add(off), len) }
    }

    /// Copies bytes that a publisher may be writing at this moment: the
    /// seqlock read of the overwrite policy (the caller then checks the
    /// tail and discards a lapped copy), and copied reads of rings whose
    /// publishers the reader does not trust. See [`copy_atomic`].
    #[inline]
    pub(crate) fn copy_racy(&self, off: usize, dst: &mut [u8]) {
        assert!(off + dst.len() <= self.capacity);
        // SAFETY: in bounds (asserted), inside the live region; the data
        // region is page aligned and `capacity` a multiple of 8, so the
        // words around the range lie inside it too. Other processes write
        // at will. One case breaks the no-plain-writes rule: a publisher
        // in this process that laps an overwrite reader writes these bytes
        // with plain copies (the claim API hands out `&mut [u8]`), a race
        // no reader-side change can remove; the seqlock check discards
        // such a copy unread.
        unsafe { copy_atomic(self.data.add(off), dst) }
    }
}

/// Copies `dst.len()` bytes from `src` with relaxed atomic loads of whole
/// aligned 8-byte words (a partial word at either end is loaded whole and
/// only its bytes in range are kept), so that bytes another process or
/// thread writes meanwhile are a race the memory model allows: the copy
/// may mix old and new bytes, never more. `read_volatile` on racing bytes
/// would be a data race, undefined behaviour whatever the caller does with
/// the result. This follows the atomic memcpy of P1478 (C++) and the
/// `atomic-memcpy` crate, on the load side.
///
/// # Safety
/// The 8-byte aligned words covering `[src, src + dst.len())` must be
/// valid for reads (read-only memory is fine: relaxed loads of 8 bytes do
/// not write) and never written non-atomically by this process while the
/// copy runs unless ordered by happens-before (other processes may write
/// them at will).
#[cfg(not(loom))]
#[inline]
unsafe fn copy_atomic(src: *const u8, mut dst: &mut [u8]) {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    let load = |w: *const AtomicU64| {
        // SAFETY: `w` is an 8-aligned word of the range, which the caller
        // guarantees readable. A shared reference to an atomic is what
        // `AtomicU64::from_ptr` makes, minus its demand that the memory be
        // writable (the std docs allow relaxed loads of read-only memory).
        unsafe { &*w }.load(Relaxed).to_ne_bytes()
    };
    if dst.is_empty() {
        return;
    }
    let head = src as usize % 8;
    // SAFETY: rounds down to the word holding the first byte.
    let mut word = unsafe { src.sub(head) }.cast::<AtomicU64>();
    if head != 0 {
        let n = (8 - head).min(dst.len());
        dst[..n].copy_from_slice(&load(word)[head..head + n]);
        dst = &mut dst[n..];
        // SAFETY: the next word of the range (or one past it).
        word = unsafe { word.add(1) };
    }
    let mut chunks = dst.chunks_exact_mut(8);
    for chunk in &mut chunks {
        chunk.copy_from_slice(&load(word));
        // SAFETY: as above.
        word = unsafe { word.add(1) };
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        rest.copy_from_slice(&load(word)[..rest.len()]);
    }
}

#[cfg(loom)]
impl RingMemory {
    /// Heap memory for the model checker.
    pub(crate) fn new_loom(slot_count: u32, capacity: usize) -> Self {
        let slots = (0..slot_count).map(|_| Slot::new_loom()).collect();
        let data = (0..capacity / 8).map(|_| AtomicU64::new(0)).collect();
        RingMemory { counters: Box::new(Counters::new_loom()), slots, data, capacity, slot_count }
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn slot(&self, i: u32) -> Option<&Slot> {
        Some(&self.slots[i as usize])
    }

    pub(crate) fn wake(&self) -> &WakeWords {
        &self.counters.wake.value
    }

    pub(crate) fn durable(&self) -> &DurableWords {
        &self.counters.durable.value
    }

    pub(crate) fn durable_waiters(&self) -> &AtomicU32 {
        &self.counters.durable.value.waiters
    }

    pub(crate) fn replicated(&self) -> &AtomicU64 {
        &self.counters.replicated.value
    }

    pub(crate) fn exclusive_pid(&self) -> &AtomicU32 {
        &self.counters.publishers.value.exclusive_pid
    }

    pub(crate) fn granted(&self) -> Option<&[AtomicU64]> {
        None
    }

    pub(crate) fn slots_epochs(&self) -> Option<(&AtomicU64, &AtomicU64)> {
        None
    }

    pub(crate) fn vouch_writable(&self) -> bool {
        true
    }

    pub(crate) fn wake_writable(&self) -> bool {
        true
    }

    pub(crate) fn slots_writable(&self) -> bool {
        true
    }

    pub(crate) fn slot_writable(&self, _i: u32) -> bool {
        true
    }

    pub(crate) fn word(&self, off: usize) -> &AtomicU64 {
        &self.data[(off & (self.capacity - 1)) / 8]
    }

    /// Writes whole words (the caller owns the frame's full span).
    pub(crate) unsafe fn write_bytes(&self, off: usize, src: &[u8]) {
        use crate::sync::Ordering::Relaxed;
        for (i, chunk) in src.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.word(off + i * 8).store(u64::from_le_bytes(w), Relaxed);
        }
    }

    pub(crate) fn copy_racy(&self, off: usize, dst: &mut [u8]) {
        use crate::sync::Ordering::Relaxed;
        for (i, chunk) in dst.chunks_mut(8).enumerate() {
            let w = self.word(off + i * 8).load(Relaxed).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }
}

impl RingMemory {
    /// Number of subscriber slots.
    #[inline]
    pub(crate) fn slot_count(&self) -> u32 {
        self.slot_count
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::copy_atomic;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

    #[test]
    fn atomic_copy_copies_any_alignment_and_length() {
        let mut words: Vec<u64> = (0..8u64).map(|i| 0x0706_0504_0302_0100 + i * 0x0808_0808_0808_0808).collect();
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let base = words.as_mut_ptr().cast::<u8>();
        for start in 0..16 {
            for len in 0..=(bytes.len() - start - 8) {
                let mut dst = vec![0xEEu8; len];
                // SAFETY: the words covering the range are inside `words`,
                // which nothing writes meanwhile.
                unsafe { copy_atomic(base.add(start), &mut dst) };
                assert_eq!(dst, &bytes[start..start + len], "start {start} len {len}");
            }
        }
    }

    /// A writer rewrites every word while the copy runs: each word of the
    /// copy is one the writer stored, never a mix of two (under Miri this
    /// is also the check that the copy is no data race).
    #[test]
    fn atomic_copy_never_tears_a_word() {
        const WORDS: usize = 16;
        const A: u64 = u64::from_ne_bytes([0x11; 8]);
        const B: u64 = u64::from_ne_bytes([0x22; 8]);
        let words: std::sync::Arc<Vec<AtomicU64>> = std::sync::Arc::new((0..WORDS).map(|_| AtomicU64::new(A)).collect());
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let writer = {
            let (words, stop) = (words.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Relaxed) {
                    for w in words.iter() {
                        w.store(if n.is_multiple_of(2) { B } else { A }, Relaxed);
                    }
                    n += 1;
                }
            })
        };
        let rounds = if cfg!(miri) { 20 } else { 20_000 };
        let mut dst = [0u8; WORDS * 8];
        for _ in 0..rounds {
            // SAFETY: `words` covers the range; the writer stores atomically.
            unsafe { copy_atomic(words.as_ptr().cast(), &mut dst) };
            for w in dst.chunks_exact(8) {
                assert!(w == [0x11; 8] || w == [0x22; 8], "torn word {w:?}");
            }
        }
        stop.store(true, Relaxed);
        writer.join().unwrap();
    }
}
