//! The archiver: writes every persisted stream to segment files with
//! io_uring and publishes how far each stream is durable.
//!
//! One thread and one io_uring for every persisted stream but the
//! `always` ones, and a thread (and io_uring) of its own for each `always`
//! stream (see Durability below). For each stream the archiver
//! holds a subscriber slot in *hold mode*: it polls frames as they are
//! committed, but its slot keeps holding publishers back at the first
//! frame not yet on disk (for `always`: not yet synced), so a persisted
//! message is never overwritten in the ring before that. A batch is the
//! frames polled since the last one (up to [`BATCH_BYTES`]; the archiver
//! never waits to fill one), written as rill-store's 64-byte batch header
//! (CRC32C over header and frames) and the frames.
//!
//! # How a batch is written
//! Every batch is first copied out of the ring into one of the stream's
//! two buffers, then its frames are checked and its CRC computed *in the
//! copy*, and the copy is what is written. Publishers can still write the
//! ring memory their frames were committed in (a broken or hostile one
//! may), so a CRC computed over the ring, or a write the kernel reads from
//! the ring later, could put bytes on disk that the CRC does not cover:
//! an acknowledged batch would then fail its check on replay. Frames that
//! are not valid in the copy quarantine the stream ([`Halt::Malformed`]).
//!
//! * **Direct I/O** (the default wherever the filesystem supports it): the
//!   header and frames are copied into a block-aligned buffer and written
//!   with `O_DIRECT`, so the data goes to the device without passing
//!   through the page cache (no second copy by the kernel, no writeback
//!   later). O_DIRECT needs block-aligned memory, offsets and lengths; ring
//!   frames are not block-aligned, hence the one copy. A write starts at
//!   the block holding the end of the previous batch (whose bytes it
//!   writes again, unchanged) and fills its last block up with zeros, which
//!   the next batch overwrites: rill-store's *zero tail*. While one write is
//!   in flight, the next batch is already copied into a second buffer, so
//!   the device never waits for the CPU. The two buffers are registered
//!   with the io_uring (fixed buffers: a write does not pin their pages
//!   each time) and, from 2 MiB, on transparent huge pages; each of these
//!   gained about a tenth of the raw write's rate on this 2-core machine,
//!   where the CPU the kernel spends per write is CPU the publisher and
//!   the device's completions also need.
//! * **Buffered** (tmpfs and other filesystems without direct I/O, or
//!   `direct_io = false`): the same copy, unaligned and without zeros,
//!   written through the page cache.
//!
//! Writes of one stream go one at a time, at explicit offsets, so a file
//! never has a hole before a later batch.
//!
//! An `always` stream with direct I/O writes into *preallocated* segments
//! (`Preallocator` in the source): written zeros, so a sync after a write changes no
//! filesystem metadata and is a mere device flush, about half the cost of
//! syncing an append here.
//!
//! # Durability (per stream, `rill_protocol::Durability`)
//! * `always`: group commit, one `fdatasync` at a time per stream. (Two
//!   syncs of one file at once gain nothing: the filesystem runs its
//!   journal commits one after the other, and many small queued syncs only
//!   lengthen the queue.) The stream has a thread of its own, and when no
//!   sync or write runs and frames wait, that thread *commits inline*: it
//!   writes them with `pwritev` and then calls `fdatasync`, both blocking,
//!   and publishes the durable position the moment the sync returns. On
//!   io_uring the same commit costs two hand-offs more (the sync runs on
//!   an io-wq worker, woken when the write completes, which then wakes the
//!   archiver): about 145 us against 92 us for a 32 KiB commit here,
//!   measured side by side in one run. Blocking is why the thread is the
//!   stream's own: no other stream waits for its syncs. Frames that arrive
//!   while a sync runs (one queued on the io_uring, such as a sealed
//!   segment's) are written at once, and the next sync covers them. When a
//!   sync completes, the durable position moves to
//!   what it covered, the ring space is released, and the publishers asleep
//!   in `wait_durable` are woken; the next commit then waits (at most
//!   [`GATHER_MAX`], and no longer than a sync takes) until as many
//!   messages as it woke publishers have arrived, since publishers that
//!   wait for each message publish the next one right away, and one sync
//!   should cover them all. Syncs are finalized in order (the final sync of
//!   a sealed segment and a directory sync may run beside a data sync).
//! * `interval:<ms>`: ring space is released when a write completes; an
//!   `fdatasync` runs at most every `ms`, and the durable position moves to
//!   what was written before it.
//! * `none`: no sync; the durable position moves when a write completes.
//!
//! Rolling to a new segment never blocks the thread: the old file's final
//! `fdatasync` (not for `none`, which promises no sync) and the directory's
//! `fsync` (for the new file's name) are queued like any sync, and nothing
//! in the new file counts as durable before they completed.
//!
//! # Errors
//! A failed or short write, or a failed sync, stops archiving that stream:
//! the error is logged and reported in `StreamInfo::archive_error`, the
//! durable position stays where the last successful sync left it (a failed
//! fsync is never retried as if it had worked: the kernel may have dropped
//! the dirty pages), and the held slot back-pressures the publishers, so
//! nothing not yet durable is overwritten. Other streams go on.
//!
//! # Waiting
//! The thread does not spin while it waits for the disk: on a busy host a
//! spinning thread takes the CPU the kernel's I/O and journal threads need
//! to finish the very sync it waits for. While anything is in flight it
//! waits on the io_uring for at most [`IDLE`] at a time (so new frames are
//! seen within that even while a sync runs); when nothing is, it naps for
//! [`IDLE`], and longer once everything has been quiet for a while. It
//! polls without sleeping only while an `always` commit waits for the
//! messages of the publishers the last sync woke (at most [`GATHER_MAX`]),
//! and from [`SYNC_SPIN`] before an `always` sync's expected end (by the
//! moving average of its syncs) to as long after: a wake-up costs tens of
//! microseconds on a host whose idle cores halt.
//!
//! Publishers waiting in `wait_durable` sleep on a futex in the ring, which
//! [`Ring::set_durable_position`](rill_shm::ring::Ring::set_durable_position)
//! wakes; it also says how many it woke, which is how the archiver knows
//! how many messages to wait for before the next `always` sync.

use crate::dirs::file_name;
use io_uring::{opcode, squeue, types, IoUring};
use rill_protocol::Durability;
use rill_shm::frame::message_span;
use rill_shm::ring::Subscriber;
use rill_store::{segment_file_name, BatchHeader, Dir, BATCH_HEADER_LEN};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A batch grows to about this many bytes of frames before it is written
/// (less when fewer are waiting: the archiver never waits to fill one).
pub const BATCH_BYTES: u64 = 4 << 20;
/// `always`: longest a sync waits for the publishers the last one woke
/// (at most as long as a sync takes, and never longer than this).
pub const GATHER_MAX: Duration = Duration::from_micros(200);
/// `always`: how long before a sync's expected end the archiver stops
/// sleeping and polls for it (and how long past it it keeps polling
/// before it sleeps again).
pub const SYNC_SPIN: Duration = Duration::from_micros(30);
/// A direct write goes in pieces of at most this, all in flight at once.
pub const WRITE_CHUNK: usize = 256 << 10;
/// How often retention is checked.
const RETENTION_EVERY: Duration = Duration::from_millis(100);
/// Longest wait on the io_uring, or nap, between looks at the rings.
pub const IDLE: Duration = Duration::from_micros(20);
/// Nap once nothing happened for [`QUIET_AFTER`] naps (about 20 ms).
const IDLE_QUIET: Duration = Duration::from_micros(200);
/// Naps before the archiver naps longer.
const QUIET_AFTER: u32 = 1000;
/// Largest direct-I/O alignment used; larger ones fall back to buffered.
const MAX_DIRECT_ALIGN: usize = 4096;
/// Fixed-buffer slots of a worker's io_uring: two per stream, for the
/// first streams of the worker (the others write unregistered buffers).
const FIXED_SLOTS: u16 = 64;
/// Submission queue entries of a worker's io_uring: room for a whole
/// batch's pieces, its sync, a seal and a directory sync at once.
const RING_ENTRIES: u32 = 256;
const _: () = assert!(BATCH_BYTES as usize / WRITE_CHUNK + 8 <= RING_ENTRIES as usize);
/// A transparent huge page.
const HUGE_PAGE: usize = 2 << 20;

/// Why archiving of a stream stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// The disk or the kernel failed (a write, a sync, a file): the host
    /// needs an operator, and health says so.
    Io(String),
    /// A publisher of the stream committed frames that are not valid (a
    /// hostile or broken client wrote its ring): the stream is quarantined
    /// at the first bad frame, nothing from there on is archived, and its
    /// publishers are held back. The daemon and every other stream go on,
    /// healthy.
    Malformed(String),
}

impl From<String> for Halt {
    fn from(msg: String) -> Halt {
        Halt::Io(msg)
    }
}

impl From<&str> for Halt {
    fn from(msg: &str) -> Halt {
        Halt::Io(msg.to_owned())
    }
}

/// What the archiver reports about one stream.
#[derive(Debug, Clone, Default)]
pub struct ArchiveStatus {
    /// Bytes in its segment files.
    pub disk_bytes: u64,
    /// Why archiving stopped, if it did.
    pub error: Option<String>,
    /// It stopped on malformed frames ([`Halt::Malformed`]): the stream is
    /// quarantined, the daemon stays healthy.
    pub quarantined: bool,
}

/// Shared status, by stream name.
pub type Statuses = Arc<Mutex<HashMap<String, ArchiveStatus>>>;

/// One persisted stream handed to the archiver.
#[derive(Debug)]
pub struct Job {
    /// Stream name.
    pub name: String,
    /// The archiver's subscriber, on its own slot, positioned at the first
    /// frame not on disk (the end of the log).
    pub sub: Subscriber,
    /// The stream's directory in the data directory: every file in it is
    /// opened relative to it, never through a link.
    pub dir: Dir,
    /// Durability policy.
    pub durability: Durability,
    /// Roll to a new segment file past this many bytes.
    pub segment_bytes: u64,
    /// The last segment (where writing goes on) and the length of the
    /// batches in it (its data end; a zero tail may follow), if any.
    pub segment: Option<(PathBuf, u64)>,
    /// Bytes in all its segment files so far.
    pub disk_bytes: u64,
    /// What to delete, and when.
    pub retention: Retention,
    /// Write with direct I/O where the filesystem supports it.
    pub direct_io: bool,
}

impl Job {
    /// Whether its segments are preallocated (`always` with direct I/O).
    fn preallocates(&self) -> bool {
        self.direct_io && self.durability == Durability::Always
    }
}

/// Retention of a stream's log: whole sealed segments (never the one being
/// written) are deleted, oldest first, while the log is larger than
/// `max_bytes`, or once their last write is older than `max_age`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Retention {
    /// Largest total size of the log's segment files.
    pub max_bytes: Option<u64>,
    /// Oldest a sealed segment may get (by its file's modification time).
    pub max_age: Option<Duration>,
}

/// A sealed segment, as retention sees it.
#[derive(Debug)]
struct Sealed {
    path: PathBuf,
    len: u64,
    modified: std::time::SystemTime,
}

enum Command {
    Add(Box<Job>),
    Remove(String),
}

/// Handle on the archiver's threads: one for every stream that is not
/// `always`, and one more per `always` stream (see the module docs).
#[derive(Debug)]
pub struct Archiver {
    shared: WorkerHandle,
    /// The `always` streams' own workers, by stream name.
    dedicated: Mutex<HashMap<String, WorkerHandle>>,
    /// Workers of removed streams, still flushing; joined on drop.
    retired: Mutex<Vec<JoinHandle<()>>>,
    statuses: Statuses,
}

/// One worker thread and how to reach it.
#[derive(Debug)]
struct WorkerHandle {
    tx: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts a worker thread; `inline_commit` for an `always` stream's own.
    fn start(name: &str, statuses: &Statuses, inline_commit: bool) -> anyhow::Result<WorkerHandle> {
        let ring = IoUring::new(RING_ENTRIES).map_err(|e| anyhow::anyhow!("io_uring setup: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let statuses = statuses.clone();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            // Naps of IDLE should last IDLE, not IDLE plus the default
            // 50 us of timer slack.
            // SAFETY: prctl with an integer argument; no memory involved.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000 as libc::c_ulong) };
            // A table of fixed buffers: a direct write from a registered
            // buffer skips pinning its pages every time.
            let free_fixed = match ring.submitter().register_buffers_sparse(u32::from(FIXED_SLOTS)) {
                Ok(()) => (0..FIXED_SLOTS).step_by(2).rev().collect(),
                Err(e) => {
                    tracing::debug!(error = %e, "no fixed buffers; direct writes pin their buffers each time");
                    Vec::new()
                }
            };
            Worker { ring, rx, statuses, jobs: Vec::new(), next_token: 2, prealloc: Preallocator::start(), inline_commit, free_fixed }.run()
        })?;
        Ok(WorkerHandle { tx: Some(tx), thread: Some(thread) })
    }

    fn send(&self, c: Command) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(c);
        }
    }

    /// Closes the channel (the worker flushes and stops) and hands back
    /// the thread.
    fn close(mut self) -> Option<JoinHandle<()>> {
        self.tx.take();
        self.thread.take()
    }
}

fn join(t: JoinHandle<()>) {
    if t.join().is_err() {
        tracing::error!("archiver thread panicked");
    }
}

impl Archiver {
    /// Starts the archiver's shared thread.
    pub fn start() -> anyhow::Result<Archiver> {
        let statuses: Statuses = Arc::default();
        let shared = WorkerHandle::start("rill-archiver", &statuses, false)?;
        Ok(Archiver { shared, dedicated: Mutex::default(), retired: Mutex::default(), statuses })
    }

    /// Starts archiving a stream: an `always` stream on a thread of its
    /// own, any other on the shared one.
    pub fn add(&self, job: Job) {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).insert(
            job.name.clone(),
            ArchiveStatus { disk_bytes: job.disk_bytes, ..ArchiveStatus::default() },
        );
        if job.durability != Durability::Always {
            self.shared.send(Command::Add(Box::new(job)));
            return;
        }
        let mut dedicated = self.dedicated.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = dedicated.remove(&job.name) {
            self.retire(old);
        }
        match WorkerHandle::start("rill-commit", &self.statuses, true) {
            Ok(w) => {
                let name = job.name.clone();
                w.send(Command::Add(Box::new(job)));
                dedicated.insert(name, w);
            }
            Err(e) => {
                tracing::warn!(stream = %job.name, error = %e, "no thread of its own for an always stream; it shares the archiver's");
                self.shared.send(Command::Add(Box::new(job)));
            }
        }
    }

    /// Stops archiving a stream (after its writes in flight complete).
    pub fn remove(&self, name: &str) {
        let own = self.dedicated.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        match own {
            Some(w) => {
                w.send(Command::Remove(name.to_owned()));
                self.retire(w);
            }
            None => self.shared.send(Command::Remove(name.to_owned())),
        }
    }

    fn retire(&self, w: WorkerHandle) {
        let mut retired = self.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.retain(|t| !t.is_finished());
        retired.extend(w.close());
    }

    /// What the archiver says about `name`.
    pub fn status(&self, name: &str) -> Option<ArchiveStatus> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
}

impl Drop for Archiver {
    /// Flushes: lets writes in flight complete, syncs every stream, stops.
    fn drop(&mut self) {
        let mut threads: Vec<_> = std::mem::take(&mut *self.dedicated.lock().unwrap_or_else(|e| e.into_inner()))
            .into_values()
            .filter_map(WorkerHandle::close)
            .collect();
        threads.extend(std::mem::replace(&mut self.shared, WorkerHandle { tx: None, thread: None }).close());
        threads.append(&mut self.retired.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            join(t);
        }
    }
}

/// A zeroed, `align`-aligned heap buffer the kernel may read from while a
/// direct write is in flight.
struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> AlignedBuf {
        // A batch buffer of megabytes goes on transparent huge pages where
        // the kernel has them: each direct write pins its buffer's pages,
        // and 2 MiB pages make that (and the copy into it) cheaper; about
        // +0.08 of the raw write's rate in `rill-bench persist` here (0.84-
        // 0.90x against 0.73-0.80x, runs alternated).
        let huge = len >= HUGE_PAGE;
        let align = if huge { HUGE_PAGE } else { align };
        let layout = std::alloc::Layout::from_size_align(len.max(align), align).expect("a power-of-two alignment");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        if huge {
            // SAFETY: advice on memory we just allocated; no data changes.
            unsafe { libc::madvise(ptr.as_ptr().cast(), layout.size(), libc::MADV_HUGEPAGE) };
        }
        AlignedBuf { ptr, layout }
    }

    fn len(&self) -> usize {
        self.layout.size()
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes allocated (and initialised) by `new`, owned
        // by self; `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.layout.size())
    }
}

// SAFETY: a plain owned allocation.
unsafe impl Send for AlignedBuf {}

/// The segment file being written.
#[derive(Debug)]
struct Segment {
    file: File,
    path: PathBuf,
    /// Length of the batches in it as planned (prepared or written): where
    /// the next batch goes.
    planned: u64,
    /// The direct-I/O alignment, if the file is open with O_DIRECT.
    align: Option<usize>,
}

/// A batch copied into a direct-I/O buffer, ready to be written.
#[derive(Debug, Clone, Copy)]
struct Prepared {
    from: u64,
    to: u64,
    /// Which of the two buffers.
    buf: usize,
    /// File offset the write starts at, and its length (both aligned).
    offset: u64,
    len: usize,
    /// Header and frames: what the write adds to the log.
    batch_len: u64,
    /// It goes at the start of a new segment named by `from`.
    roll: bool,
}

/// The one write of a stream in flight.
#[derive(Debug)]
struct WriteOp {
    /// Each piece of the write (a direct write goes in pieces of at most
    /// [`WRITE_CHUNK`], all in flight at once): its token and the bytes it
    /// must report, until it completes.
    pieces: Vec<(u64, u64)>,
    /// Why a piece failed, if one did.
    failed: Option<String>,
    end: u64,
    batch_len: u64,
    /// The write's iovec, kept alive here until the kernel is done with
    /// it. (It points into one of the job's two buffers, which is not
    /// reused before the write completes.)
    _iovecs: Vec<libc::iovec>,
}

// SAFETY: the iovecs point into the job's buffers, owned by the same job,
// which the worker thread alone touches.
unsafe impl Send for WriteOp {}

/// A sync in flight: a write's linked fdatasync, an interval sync, the
/// final sync of a sealed segment, or the directory's fsync after a new
/// segment was created.
#[derive(Debug)]
struct SyncOp {
    token: u64,
    /// Durable up to here once this and every sync before it completed.
    end: u64,
    done: bool,
    /// A sealed segment's file or the directory, kept open until done.
    _file: Option<File>,
}

struct JobState {
    job: Job,
    /// Sealed segments, oldest first.
    sealed: VecDeque<Sealed>,
    segment: Option<Segment>,
    /// End of the frames gathered into batches (prepared or written).
    gathered: u64,
    /// End of what is written (completed writes).
    written: u64,
    last_sync: Instant,
    write: Option<WriteOp>,
    prepared: Option<Prepared>,
    syncs: VecDeque<SyncOp>,
    /// Two direct-I/O buffers: one being written, one being filled.
    bufs: [Option<AlignedBuf>; 2],
    /// Buffer the next batch is copied into.
    next_buf: usize,
    /// The pair of fixed-buffer slots of the worker's io_uring its two
    /// buffers are registered in (none if registering failed).
    fixed: Option<u16>,
    /// The bytes of the segment's last partial block (direct I/O), which
    /// the next write writes again.
    tail: Vec<u8>,
    error: Option<String>,
    /// Publishers the last durable position woke (`always`), when, and
    /// how many messages arrived since.
    woken: u32,
    woken_at: Instant,
    arrivals: u32,
    /// A sync (`always`) is held back for messages on their way.
    gathering: bool,
    /// When the archiver took the stream on.
    added: Instant,
    /// Moving average of how long a sync takes.
    sync_ns_avg: u64,
}

impl JobState {
    fn busy(&self) -> bool {
        self.write.is_some() || !self.syncs.is_empty()
    }

    /// A sync is held back for frames that may still come: look again
    /// soon, without sleeping.
    fn gathering(&self) -> bool {
        self.gathering && self.error.is_none()
    }

    /// When the `always` sync in flight should complete (by the average).
    fn sync_expected(&self) -> Option<Instant> {
        (self.job.durability == Durability::Always && !self.syncs.is_empty() && self.sync_ns_avg > 0 && self.error.is_none())
            .then(|| self.last_sync + Duration::from_nanos(self.sync_ns_avg))
    }
}

/// What a completion token belongs to.
#[derive(Debug, Clone, Copy)]
enum TokenKind {
    Write,
    Sync,
}

struct Worker {
    ring: IoUring,
    rx: Receiver<Command>,
    statuses: Statuses,
    jobs: Vec<JobState>,
    next_token: u64,
    prealloc: Preallocator,
    /// Free pairs of fixed-buffer slots (the first of each pair).
    free_fixed: Vec<u16>,
    /// An `always` stream's own worker: commits (write and sync) run as
    /// blocking system calls on this thread (see the module docs).
    inline_commit: bool,
}

impl Worker {
    fn run(mut self) {
        let mut stopping = false;
        let mut last_retention = Instant::now();
        let mut naps = 0u32;
        loop {
            loop {
                match self.rx.try_recv() {
                    Ok(Command::Add(job)) => self.add(*job),
                    Ok(Command::Remove(name)) => self.remove(&name),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            if stopping {
                self.shutdown();
                return;
            }
            if last_retention.elapsed() >= RETENTION_EVERY {
                last_retention = Instant::now();
                for i in 0..self.jobs.len() {
                    self.apply_retention(i);
                }
            }
            let mut work = self.reap();
            for i in 0..self.jobs.len() {
                work += self.pump(i);
            }
            if let Err(e) = self.ring.submit() {
                if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EBUSY) {
                    tracing::error!(error = %e, "io_uring submit failed");
                }
            }
            if work > 0 {
                naps = 0;
                continue;
            }
            let busy = self.jobs.iter().any(JobState::busy);
            if self.jobs.iter().any(JobState::gathering) {
                std::hint::spin_loop();
                continue;
            }
            if busy {
                // An `always` sync due to end within SYNC_SPIN: poll for it
                // rather than be woken (a wake-up costs tens of
                // microseconds on a host whose idle cores halt).
                let now = Instant::now();
                let soon = self.jobs.iter().filter_map(JobState::sync_expected).min();
                match soon {
                    Some(t) if now + SYNC_SPIN < t => self.wait_completion(IDLE.min(t - now - SYNC_SPIN)),
                    Some(t) if now < t + SYNC_SPIN => std::hint::spin_loop(),
                    _ => self.wait_completion(IDLE),
                }
                continue;
            }
            // Short naps while streams are busy; longer ones once all
            // have been quiet for a while (an idle daemon should not cost
            // a core).
            naps = naps.saturating_add(1);
            std::thread::sleep(if naps < QUIET_AFTER { IDLE } else { IDLE_QUIET });
        }
    }

    /// Waits until a completion arrives or `timeout` passes.
    fn wait_completion(&mut self, timeout: Duration) {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY)) => {}
            Err(e) => {
                // Kernels before 5.11 have no timed wait: nap instead.
                tracing::debug!(error = %e, "io_uring timed wait failed");
                std::thread::sleep(timeout);
            }
        }
    }

    fn add(&mut self, job: Job) {
        let gathered = job.sub.position();
        tracing::info!(stream = %job.name, position = gathered, durability = %job.durability, dir = %job.dir.path().display(), "archiving stream");
        let mut job = job;
        job.sub.set_hold(true);
        // Direct I/O only where the data directory's filesystem has it (not
        // tmpfs); preallocated segments only with direct I/O.
        job.direct_io &= dir_supports_direct_io(&job.dir);
        if job.preallocates() {
            let _ = job.dir.remove(PREALLOC_TMP);
            self.prealloc.request(&job.dir, job.segment_bytes);
        }
        let current = job.segment.as_ref().map(|(p, _)| p.clone());
        let sealed = rill_store::list_segments_in(&job.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, p)| Some(p) != current.as_ref())
            .filter_map(|(_, path)| {
                let m = job.dir.metadata(file_name(&path)).ok()?;
                Some(Sealed { len: m.len(), modified: m.modified().ok()?, path })
            })
            .collect();
        let mut state = JobState {
            sealed,
            segment: None,
            gathered,
            written: gathered,
            last_sync: Instant::now(),
            write: None,
            prepared: None,
            syncs: VecDeque::new(),
            bufs: [None, None],
            fixed: self.free_fixed.pop(),
            next_buf: 0,
            tail: Vec::new(),
            error: None,
            woken: 0,
            woken_at: Instant::now(),
            arrivals: 0,
            gathering: false,
            added: Instant::now(),
            sync_ns_avg: 0,
            job,
        };
        if let Some((path, len)) = state.job.segment.clone() {
            match open_segment(&state.job.dir, file_name(&path), false, state.job.direct_io, len) {
                Ok((file, align, tail)) => {
                    state.segment = Some(Segment { file, path, planned: len, align });
                    state.tail = tail;
                }
                Err(e) => {
                    let msg = format!("opening segment {}: {e}", path.display());
                    state.error = Some(msg.clone());
                    tracing::error!(stream = %state.job.name, error = %msg, "archiving stopped");
                    let name = state.job.name.clone();
                    self.set_status(&name, |s| s.error = Some(msg));
                }
            }
        }
        self.jobs.push(state);
    }

    fn remove(&mut self, name: &str) {
        if let Some(i) = self.jobs.iter().position(|j| j.job.name == name) {
            self.drain(i);
            self.sync_now(i);
            let j = self.jobs.swap_remove(i);
            if let Some(base) = j.fixed {
                self.unregister(base);
            }
        }
    }

    /// Empties the fixed-buffer slots `base` and `base + 1` (nothing in
    /// flight uses them) and frees them for another stream.
    fn unregister(&mut self, base: u16) {
        let empty = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2];
        // SAFETY: empty entries unregister; no memory is handed over.
        match unsafe { self.ring.submitter().register_buffers_update(u32::from(base), &empty, None) } {
            Ok(()) => self.free_fixed.push(base),
            Err(e) => tracing::debug!(error = %e, "could not empty fixed-buffer slots; they stay unused"),
        }
    }

    /// Waits until job `i` has nothing in flight.
    fn drain(&mut self, i: usize) {
        while self.jobs[i].busy() {
            if let Err(e) = self.ring.submit_and_wait(1) {
                if e.raw_os_error() != Some(libc::EINTR) {
                    std::thread::sleep(IDLE);
                }
            }
            self.reap();
        }
    }

    /// Final flush: every write completes, every stream is synced.
    fn shutdown(&mut self) {
        for i in 0..self.jobs.len() {
            // Write out what is still waiting in the ring.
            loop {
                self.drain(i);
                if self.jobs[i].error.is_some() || self.pump(i) == 0 {
                    break;
                }
                let _ = self.ring.submit();
            }
            self.drain(i);
            self.sync_now(i);
        }
        self.prealloc.stop();
        tracing::info!(streams = self.jobs.len(), "archiver flushed and stopped");
    }

    /// A blocking sync of job `i`'s segment (removal, shutdown), with
    /// nothing in flight.
    fn sync_now(&mut self, i: usize) {
        let j = &mut self.jobs[i];
        if j.error.is_some() || j.job.durability == Durability::None {
            return;
        }
        if let Some(s) = &j.segment {
            match s.file.sync_data() {
                Ok(()) => {
                    j.job.sub.ring().set_durable_position(j.written);
                    j.job.sub.release_to(j.written);
                }
                Err(e) => tracing::error!(stream = %j.job.name, error = %e, "final fdatasync failed"),
            }
        }
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 2;
        t
    }

    /// Moves job `i` on: an interval sync if due, the prepared batch or a
    /// new one written if no write is in flight, the next batch prepared
    /// while one is. Returns how many things it started.
    fn pump(&mut self, i: usize) -> usize {
        if self.jobs[i].error.is_some() {
            return 0;
        }
        let mut work = 0;
        {
            let j = &self.jobs[i];
            if j.segment.is_none() && j.job.preallocates() {
                // A new `always` stream's first segment: preallocated too,
                // so wait a little for it (its messages wait in the ring).
                if !preallocated_ready(&j.job.dir, j.job.segment_bytes) && j.added.elapsed() < PREALLOC_WAIT {
                    return 0;
                }
            }
        }
        if self.jobs[i].job.durability == Durability::Always {
            match self.group_commit(i) {
                Ok(Some(w)) => return w,
                Ok(None) => {}
                Err(msg) => {
                    self.stop(i, msg);
                    return 0;
                }
            }
        }
        // `interval`: a sync every `ms`, covering what is written.
        let due = {
            let j = &self.jobs[i];
            let unsynced = j.written > j.job.sub.ring().durable_position() && j.syncs.is_empty();
            match j.job.durability {
                Durability::IntervalMs(ms) => unsynced && j.last_sync.elapsed() >= Duration::from_millis(u64::from(ms)),
                _ => false,
            }
        };
        if due {
            work += self.submit_sync(i);
        }
        let j = &self.jobs[i];
        let write_free = j.write.is_none();
        if j.prepared.is_none() {
            match self.gather(i) {
                Ok(Some((from, to))) => {
                    if let Err(msg) = self.prepare(i, from, to) {
                        self.stop(i, msg);
                        return work;
                    }
                    if self.jobs[i].prepared.is_some() {
                        work += 1;
                    }
                }
                Ok(None) => {}
                Err(msg) => {
                    self.stop(i, msg);
                    return work;
                }
            }
        }
        if write_free && self.jobs[i].prepared.is_some() {
            match self.submit_prepared(i, false) {
                Ok(()) => work += 1,
                Err(msg) => self.stop(i, msg),
            }
        }
        work
    }

    /// `always`, while no sync runs and no write is in flight: the group
    /// commit. Once frames wait (in the ring or prepared) or something
    /// written is not yet synced, it waits while the publishers the last
    /// sync woke from `wait_durable` have not all published again (up to as
    /// long as a sync takes: their next messages are on the way, and one
    /// sync should cover them all); then it writes what waits and syncs it
    /// (inline on the stream's own thread; on the shared one, with the sync
    /// linked to the write: one submission, the kernel starts the sync as
    /// the write completes), or syncs what is written. `None` while a sync
    /// or a write runs: frames are then written as they come, for the next
    /// sync to cover.
    fn group_commit(&mut self, i: usize) -> Result<Option<usize>, Halt> {
        {
            let j = &mut self.jobs[i];
            j.gathering = false;
            if !j.syncs.is_empty() || j.write.is_some() {
                return Ok(None);
            }
        }
        self.count_arrivals(i)?;
        let j = &mut self.jobs[i];
        let waiting = j.job.sub.position() > j.gathered || j.prepared.is_some();
        let unsynced = j.written > j.job.sub.ring().durable_position();
        if !waiting && !unsynced {
            return Ok(Some(0));
        }
        let cap = Duration::from_nanos(j.sync_ns_avg).min(GATHER_MAX);
        j.gathering = j.arrivals < j.woken && j.woken_at.elapsed() < cap;
        if j.gathering {
            return Ok(Some(0));
        }
        if !waiting {
            return Ok(Some(self.submit_sync(i)));
        }
        if j.prepared.is_none() {
            if let Some((from, to)) = self.gather(i)? {
                self.prepare(i, from, to)?;
            }
        }
        if self.jobs[i].prepared.is_none() {
            return Ok(Some(0));
        }
        self.submit_prepared(i, true)?;
        Ok(Some(1))
    }

    /// Polls job `i`'s ring on from its position, up to about
    /// [`BATCH_BYTES`] past the frames gathered or a quarter of the ring (a
    /// batch in flight and one prepared then leave half the ring to the
    /// publishers), counting the messages in `arrivals`.
    fn count_arrivals(&mut self, i: usize) -> Result<(), Halt> {
        let j = &mut self.jobs[i];
        let info = j.job.sub.ring().info();
        let max_span = message_span(info.max_message_len as usize) as u64;
        let most = BATCH_BYTES.min(info.capacity / 4).max(1);
        loop {
            let have = j.job.sub.position() - j.gathered;
            if have >= most {
                return Ok(());
            }
            let limit = ((most - have) / max_span).max(1) as usize;
            match j.job.sub.poll(limit, |_| {}) {
                Ok(0) => return Ok(()),
                Ok(n) => j.arrivals += n as u32,
                Err(e @ rill_shm::ring::PollError::Corrupt { .. }) => return Err(Halt::Malformed(format!("reading the ring: {e}"))),
                Err(e) => return Err(Halt::Io(format!("reading the ring: {e}"))),
            }
        }
    }

    /// Polls job `i`'s ring (see [`Worker::count_arrivals`]); the frames
    /// after those gathered so far, if any, are gathered now.
    fn gather(&mut self, i: usize) -> Result<Option<(u64, u64)>, Halt> {
        self.count_arrivals(i)?;
        let j = &mut self.jobs[i];
        let (from, to) = (j.gathered, j.job.sub.position());
        if to == from {
            return Ok(None);
        }
        j.gathered = to;
        Ok(Some((from, to)))
    }

    /// Plans the batch of frames `from..to` of job `i`: rolls to a new
    /// segment if it would not fit, and copies it out of the ring into one
    /// of the job's two buffers, laid out for the write (block-aligned for
    /// direct I/O). The frames are copied first, then checked and
    /// checksummed in the copy: publishers can still write the ring
    /// memory they were committed in, and what is written must be what
    /// the CRC covers. Frames that are not valid in the copy quarantine
    /// the stream ([`Halt::Malformed`]).
    fn prepare(&mut self, i: usize, from: u64, to: u64) -> Result<(), Halt> {
        let j = &mut self.jobs[i];
        let batch_len = BATCH_HEADER_LEN as u64 + (to - from);
        let roll = match &j.segment {
            None => true,
            Some(s) => s.planned > 0 && s.planned + batch_len > j.job.segment_bytes,
        };
        // Buffered writes need no alignment: one byte. The next segment's
        // alignment is known once it exists; plan for direct I/O if asked
        // and find out when creating it.
        let align = if roll {
            j.job.direct_io.then_some(MAX_DIRECT_ALIGN)
        } else {
            j.segment.as_ref().and_then(|s| s.align)
        }
        .unwrap_or(1);
        // [bytes of the last partial block][header][frames][zeros].
        let start = if roll { 0 } else { j.segment.as_ref().map_or(0, |s| s.planned) };
        let offset = start - start % align as u64;
        let prefix = (start - offset) as usize;
        debug_assert!(roll || prefix == j.tail.len());
        let prefix_bytes: &[u8] = if roll { &[] } else { &j.tail };
        let data_len = prefix + batch_len as usize;
        let len = data_len.div_ceil(align) * align;
        let b = j.next_buf;
        if j.bufs[b].as_ref().is_none_or(|buf| buf.len() < len) {
            let mut buf = AlignedBuf::new(len.next_power_of_two().max(64 << 10), MAX_DIRECT_ALIGN);
            if let Some(base) = j.fixed {
                let slice = buf.as_mut_slice();
                let iov = [libc::iovec { iov_base: slice.as_mut_ptr().cast(), iov_len: slice.len() }];
                // SAFETY: the buffer stays allocated while registered: it
                // is replaced (and the slot updated) or the slot emptied
                // (remove) before it is freed. The buffer it replaces is in
                // no write in flight (prepare fills a free buffer).
                if let Err(e) = unsafe { self.ring.submitter().register_buffers_update(u32::from(base) + b as u32, &iov, None) } {
                    tracing::debug!(stream = %j.job.name, error = %e, "could not register a batch buffer; writing it unregistered");
                    j.fixed = None;
                }
            }
            j.bufs[b] = Some(buf);
        }
        let buf = j.bufs[b].as_mut().expect("allocated above").as_mut_slice();
        buf[..prefix].copy_from_slice(prefix_bytes);
        let frames_at = prefix + BATCH_HEADER_LEN;
        let (a, bb) = j.job.sub.held_bytes(from, to);
        buf[frames_at..frames_at + a.len()].copy_from_slice(a);
        buf[frames_at + a.len()..data_len].copy_from_slice(bb);
        let header = BatchHeader::for_frames(from, &[&buf[frames_at..data_len]])
            .map_err(|e| Halt::Malformed(format!("frames at {from}..{to} in the ring: {e}")))?;
        buf[prefix..frames_at].copy_from_slice(&header.to_bytes());
        buf[data_len..len].fill(0);
        let new_tail_from = data_len - data_len % align;
        j.tail.clear();
        if align > 1 {
            j.tail.extend_from_slice(&buf[new_tail_from..data_len]);
        }
        j.next_buf = 1 - b;
        if let Some(s) = &mut j.segment {
            if !roll {
                s.planned += batch_len;
            }
        }
        j.prepared = Some(Prepared { from, to, buf: b, offset, len, batch_len, roll });
        Ok(())
    }

    /// Submits job `i`'s prepared batch (rolling first if it says so),
    /// with its linked sync under `always`.
    fn submit_prepared(&mut self, i: usize, sync: bool) -> Result<(), Halt> {
        // Room for a seal sync, a directory sync and the write's pieces, so
        // no push below fails (a write queued without its in-flight record
        // would outlive the buffers it points to).
        let pieces = self.jobs[i].prepared.as_ref().map_or(1, |p| p.len.div_ceil(WRITE_CHUNK).max(1));
        self.make_room(3 + pieces)?;
        let mut p = self.jobs[i].prepared.take().expect("checked by the caller");
        if p.roll {
            self.roll(i, p.from)?;
            let j = &mut self.jobs[i];
            let seg = j.segment.as_mut().expect("just created");
            seg.planned = p.batch_len;
            if seg.align.is_none() {
                // Planned for direct I/O, got a filesystem without it: the
                // batch is at the buffer's start (a roll has no prefix);
                // write it without the zeros.
                p.len = p.batch_len as usize;
                j.tail.clear();
            } else if !j.job.direct_io {
                unreachable!("a roll planned without direct I/O opens the file without it");
            }
        }
        let write = self.token();
        // One token per piece; the linked sync's (odd) after them.
        for _ in 1..pieces {
            self.token();
        }
        let sync_token = self.token() + 1;
        let j = &mut self.jobs[i];
        let seg = j.segment.as_ref().ok_or("no segment file open")?;
        let fd = types::Fd(seg.file.as_raw_fd());
        // The batch's bytes: the buffer it was copied into.
        let iov = |p: *const u8, len: usize| libc::iovec { iov_base: p as *mut libc::c_void, iov_len: len };
        let buf = j.bufs[p.buf].as_mut().expect("prepared into it").as_mut_slice();
        let (offset, iovecs) = (p.offset, vec![iov(buf.as_ptr(), p.len)]);
        let len: u64 = iovecs.iter().map(|v| v.iov_len as u64).sum();
        // (The vector's heap block does not move with it into the WriteOp.)
        let (at, count) = (iovecs.as_ptr(), iovecs.len());
        let op = |pieces| WriteOp { pieces, failed: None, end: p.to, batch_len: p.batch_len, _iovecs: iovecs };
        if sync && self.inline_commit {
            // The stream's own thread: write and sync with blocking calls.
            let raw = seg.file.as_raw_fd();
            j.write = Some(op(vec![(write, len)]));
            j.syncs.push_back(SyncOp { token: sync_token, end: p.to, done: false, _file: None });
            j.last_sync = Instant::now();
            // SAFETY: the iovec (in the WriteOp above) points into the
            // job's buffer, alive and untouched for the call.
            let res = retry_eintr(|| unsafe { libc::pwritev(raw, at, count as i32, offset as libc::off_t) as i64 });
            self.piece_completed(i, write, res);
            // A failed write stopped the stream: its sync is cancelled, as
            // a linked one would be.
            let res = if self.jobs[i].error.is_some() {
                -libc::ECANCELED
            } else {
                // SAFETY: fdatasync on an fd the job keeps open.
                retry_eintr(|| unsafe { libc::fdatasync(raw) as i64 })
            };
            self.sync_completed(i, sync_token, res);
            return Ok(());
        }
        // Pieces of one batch never overlap (only its first block is the
        // last one of the batch before, whose write completed), so they
        // may all be in flight at once: the device gets a deeper queue than
        // one write, and a piece lost to a crash only tears this batch,
        // whose CRC then fails.
        let fixed = j.fixed;
        let buf = j.bufs[p.buf].as_mut().expect("prepared into it").as_mut_slice();
        let mut entries = Vec::new();
        let mut pieces = Vec::new();
        for (k, at) in (0..p.len).step_by(WRITE_CHUNK).enumerate() {
            let n = (p.len - at).min(WRITE_CHUNK);
            let token = write + 2 * k as u64;
            let (ptr, off) = (buf[at..].as_ptr(), offset + at as u64);
            let w = match fixed {
                Some(base) => opcode::WriteFixed::new(fd, ptr, n as u32, base + p.buf as u16).offset(off).build(),
                None => opcode::Write::new(fd, ptr, n as u32).offset(off).build(),
            }
            .user_data(token);
            entries.push(w);
            pieces.push((token, n as u64));
        }
        let op = op(pieces);
        // SAFETY: the buffer (one of the job's two, not touched again
        // before this write completes) stays valid until the completion is
        // reaped; the file stays open as long as the job. make_room above
        // left room.
        // With the sync linked, the pieces are linked too (a chain runs in
        // order), so that the sync starts after the last one.
        let link = |e: &squeue::Entry| if sync { e.clone().flags(squeue::Flags::IO_LINK) } else { e.clone() };
        for entry in &entries {
            // SAFETY: as above, for each piece.
            unsafe { self.ring.submission().push(&link(entry)) }.map_err(|_| "io_uring submission queue full".to_owned())?;
        }
        if sync {
            let token = sync_token;
            let s = opcode::Fsync::new(fd).flags(types::FsyncFlags::DATASYNC).build().user_data(token);
            // SAFETY: no buffers; the file stays open as long as the job.
            unsafe { self.ring.submission().push(&s) }.map_err(|_| "io_uring submission queue full".to_owned())?;
            j.syncs.push_back(SyncOp { token, end: p.to, done: false, _file: None });
            j.last_sync = Instant::now();
        }
        j.write = Some(op);

        Ok(())
    }

    /// An fdatasync of job `i`'s segment covering what is written (interval
    /// policy). Returns 1 if submitted.
    fn submit_sync(&mut self, i: usize) -> usize {
        if self.make_room(1).is_err() {
            return 0;
        }
        let token = self.token();
        let j = &mut self.jobs[i];
        let Some(fd) = j.segment.as_ref().map(|s| s.file.as_raw_fd()) else { return 0 };
        let s = opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build().user_data(token + 1);
        // SAFETY: no buffers; the file stays open as long as the job.
        if unsafe { self.ring.submission().push(&s) }.is_err() {
            return 0;
        }
        j.syncs.push_back(SyncOp { token: token + 1, end: j.written, done: false, _file: None });
        j.last_sync = Instant::now();
        1
    }

    /// Hands queued entries to the kernel if the submission queue has fewer
    /// than `n` free entries.
    fn make_room(&mut self, n: usize) -> Result<(), String> {
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < n {
            self.ring.submit().map_err(|e| format!("io_uring submit: {e}"))?;
        }
        Ok(())
    }

    /// Seals job `i`'s segment (its final fdatasync queued, the file kept
    /// open until it completes) and creates the next one, named by `from`
    /// (the directory's fsync queued). No write is in flight.
    fn roll(&mut self, i: usize, from: u64) -> Result<(), String> {
        let seal = self.token();
        let dir_sync = self.token();
        let j = &mut self.jobs[i];
        debug_assert!(j.write.is_none());
        if let Some(old) = j.segment.take() {
            // A direct-I/O segment ends in a zero tail (all of a
            // preallocated one's unused end): cut it, so that sealed
            // segments end with their last batch and checking them at
            // start reads no zeros. The seal sync below commits the cut.
            if old.align.is_some() {
                if let Err(e) = old.file.set_len(old.planned) {
                    tracing::warn!(stream = %j.job.name, segment = %old.path.display(), error = %e, "could not cut the zero tail of a sealed segment");
                }
            }
            let modified = old.file.metadata().and_then(|m| m.modified()).unwrap_or_else(|_| std::time::SystemTime::now());
            // Sealed whole: synced, unless the stream asks for no sync at
            // all (`none`: a device flush per segment, with the device's
            // cache full of the segment, cost about a fifth of the
            // throughput here, and `none` promises nothing a flush keeps).
            if j.job.durability != Durability::None {
                let s = opcode::Fsync::new(types::Fd(old.file.as_raw_fd())).flags(types::FsyncFlags::DATASYNC).build().user_data(seal + 1);
                // SAFETY: no buffers; the file is kept in the SyncOp until
                // the completion is reaped. make_room (caller) left room.
                unsafe { self.ring.submission().push(&s) }.map_err(|_| "io_uring submission queue full".to_owned())?;
                j.syncs.push_back(SyncOp { token: seal + 1, end: from, done: false, _file: Some(old.file) });
            }
            j.sealed.push_back(Sealed { path: old.path, len: old.planned, modified });
        }
        let name = segment_file_name(from);
        let path = j.job.dir.join(&name);
        // `always` with direct I/O: the preallocated segment, if ready.
        let prealloc = j.job.preallocates();
        let preallocated = prealloc && preallocated_ready(&j.job.dir, j.job.segment_bytes) && j.job.dir.rename(PREALLOC, &name).is_ok();
        let (file, align, _) = open_segment(&j.job.dir, name.as_ref(), !preallocated, j.job.direct_io, 0)
            .map_err(|e| format!("creating segment {}: {e}", path.display()))?;
        if prealloc {
            self.prealloc.request(&j.job.dir, j.job.segment_bytes);
        }
        if align.is_some() && !preallocated {
            // Allocated (unwritten) blocks up to the segment size: a write
            // into them does not extend the file, so the filesystem lets
            // the pieces of a batch run at once, where extending writes
            // would go one after the other. They read as zeros: a zero
            // tail, cut when the segment is sealed.
            let len = libc::off_t::try_from(j.job.segment_bytes).unwrap_or(libc::off_t::MAX);
            // SAFETY: fallocate on an fd we own, integer arguments only.
            if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } != 0 {
                tracing::debug!(stream = %j.job.name, error = %std::io::Error::last_os_error(), "fallocate of a new segment failed; writing it extends it");
            }
        }
        let dir = j.job.dir.dup().map_err(|e| format!("opening {}: {e}", j.job.dir.path().display()))?;
        let s = opcode::Fsync::new(types::Fd(dir.as_raw_fd())).build().user_data(dir_sync + 1);
        // SAFETY: as above; the directory is kept open in its SyncOp.
        unsafe { self.ring.submission().push(&s) }.map_err(|_| "io_uring submission queue full".to_owned())?;
        j.syncs.push_back(SyncOp { token: dir_sync + 1, end: from, done: false, _file: Some(dir) });
        tracing::info!(stream = %j.job.name, segment = %path.display(), direct_io = align.is_some(), preallocated, "new segment");
        // The tail is already the first batch's (prepared for this file).
        j.segment = Some(Segment { file, path, planned: 0, align });
        Ok(())
    }

    /// Deletes sealed segments of job `i` that retention no longer keeps.
    fn apply_retention(&mut self, i: usize) {
        let j = &mut self.jobs[i];
        let r = j.job.retention;
        let now = std::time::SystemTime::now();
        let mut deleted = false;
        while let Some(oldest) = j.sealed.front() {
            let too_big = r.max_bytes.is_some_and(|max| j.job.disk_bytes > max);
            let too_old = r.max_age.is_some_and(|age| now.duration_since(oldest.modified).is_ok_and(|d| d > age));
            if !too_big && !too_old {
                break;
            }
            let s = j.sealed.pop_front().expect("front exists");
            match j.job.dir.remove(file_name(&s.path)) {
                Ok(()) => {
                    j.job.disk_bytes = j.job.disk_bytes.saturating_sub(s.len);
                    deleted = true;
                    tracing::info!(stream = %j.job.name, segment = %s.path.display(), bytes = s.len, by = if too_big { "size" } else { "age" }, "retention deleted segment");
                }
                Err(e) => {
                    tracing::error!(stream = %j.job.name, segment = %s.path.display(), error = %e, "retention could not delete segment");
                    j.sealed.push_front(s);
                    break;
                }
            }
        }
        if deleted {
            let (name, disk) = (j.job.name.clone(), j.job.disk_bytes);
            self.set_status(&name, |s| s.disk_bytes = disk);
        }
    }

    /// Handles every completion waiting; returns how many.
    fn reap(&mut self) -> usize {
        let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for &(token, res) in &done {
            let found = self.jobs.iter().enumerate().find_map(|(i, j)| {
                if j.write.as_ref().is_some_and(|w| w.pieces.iter().any(|&(t, _)| t == token)) {
                    Some((i, TokenKind::Write))
                } else if j.syncs.iter().any(|s| s.token == token) {
                    Some((i, TokenKind::Sync))
                } else {
                    None
                }
            });
            match found {
                Some((i, TokenKind::Write)) => self.piece_completed(i, token, res),
                Some((i, TokenKind::Sync)) => self.sync_completed(i, token, res),
                None => tracing::warn!(token, res, "completion for nothing in flight"),
            }
        }
        done.len()
    }

    /// A piece of job `i`'s write completed; the write is done once all
    /// are.
    fn piece_completed(&mut self, i: usize, token: u64, res: i32) {
        let j = &mut self.jobs[i];
        let w = j.write.as_mut().expect("found by token");
        let k = w.pieces.iter().position(|&(t, _)| t == token).expect("found by token");
        let (_, want) = w.pieces.swap_remove(k);
        if w.failed.is_none() && (res < 0 || res as u64 != want) {
            w.failed = Some(if res < 0 {
                std::io::Error::from_raw_os_error(-res).to_string()
            } else {
                // A short write is how a full filesystem shows first.
                // (fsblkcnt_t and c_ulong are u64 here, not everywhere.)
                #[allow(clippy::unnecessary_cast)]
                let full = nix::sys::statvfs::fstatvfs(&j.job.dir)
                    .is_ok_and(|v| (v.blocks_available() as u64).saturating_mul(v.fragment_size() as u64) < want);
                let short = format!("short write: {res} of {want} bytes");
                if full {
                    format!("{} ({short})", std::io::Error::from_raw_os_error(libc::ENOSPC))
                } else {
                    short
                }
            });
        }
        if !w.pieces.is_empty() {
            return;
        }
        let w = j.write.take().expect("checked above");
        if let Some(why) = w.failed {
            self.stop(i, format!("writing batch ending at {}: {why}", w.end));
            return;
        }
        j.job.disk_bytes += w.batch_len;
        j.written = w.end;
        match j.job.durability {
            Durability::Always => {}
            Durability::IntervalMs(_) => j.job.sub.release_to(w.end),
            Durability::None => {
                j.job.sub.release_to(w.end);
                // Durable at once, unless a seal or directory sync queued
                // before is still running.
                if j.syncs.is_empty() {
                    j.job.sub.ring().set_durable_position(w.end);
                }
            }
        }
        let (name, disk) = (j.job.name.clone(), j.job.disk_bytes);
        self.set_status(&name, |s| s.disk_bytes = disk);
    }

    fn sync_completed(&mut self, i: usize, token: u64, res: i32) {
        let j = &mut self.jobs[i];
        let Some(op) = j.syncs.iter_mut().find(|s| s.token == token) else { return };
        op.done = true;
        let took = j.last_sync.elapsed().as_nanos() as u64;
        j.sync_ns_avg = if j.sync_ns_avg == 0 { took } else { (j.sync_ns_avg * 7 + took) / 8 };
        if j.error.is_some() {
            // The write before it failed (ECANCELED), already reported.
            j.syncs.retain(|s| !s.done);
            return;
        }
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            let durable = j.job.sub.ring().durable_position();
            j.syncs.retain(|s| !s.done);
            self.stop(i, format!("fdatasync failed ({e}); durable position stays at {durable}; archiving stopped (a failed sync is never retried)"));
            return;
        }
        // In order: a sync covers only what was written before it, and a
        // later one may finish first.
        let mut durable = None;
        while j.syncs.front().is_some_and(|s| s.done) {
            let s = j.syncs.pop_front().expect("front exists");
            durable = Some(s.end);
        }
        if let Some(end) = durable {
            let end = match j.job.durability {
                // Everything written is durable once the queue is empty.
                Durability::None if j.syncs.is_empty() => j.written,
                Durability::None => end.min(j.written),
                _ => end,
            };
            if end > j.job.sub.ring().durable_position() {
                j.woken = j.job.sub.ring().set_durable_position(end);
                j.woken_at = Instant::now();
                j.arrivals = 0;
            }
            if j.job.durability == Durability::Always {
                j.job.sub.release_to(end);
            }
            j.last_sync = Instant::now();
        }
    }

    fn stop(&mut self, i: usize, halt: impl Into<Halt>) {
        let j = &mut self.jobs[i];
        let (msg, quarantined) = match halt.into() {
            Halt::Io(msg) => (msg, false),
            Halt::Malformed(msg) => (format!("quarantined: {msg}"), true),
        };
        if j.error.is_none() {
            if quarantined {
                tracing::error!(stream = %j.job.name, error = %msg, archived_up_to = j.gathered,
                    "a publisher committed malformed frames: stream quarantined, its publishers held back; other streams go on");
            } else {
                tracing::error!(stream = %j.job.name, error = %msg, "archiving stopped; publishers will be back-pressured");
            }
            j.error = Some(msg.clone());
        }
        j.prepared = None;
        let name = j.job.name.clone();
        self.set_status(&name, |s| {
            s.error = Some(msg);
            s.quarantined = quarantined;
        });
    }

    fn set_status(&self, name: &str, f: impl FnOnce(&mut ArchiveStatus)) {
        let mut st = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        f(st.entry(name.to_owned()).or_default());
    }
}

/// Runs `call` (a system call returning -1 and setting errno on failure)
/// again while it is interrupted by a signal (then it did nothing); its
/// result as a completion's: the count, or the negated errno.
fn retry_eintr(mut call: impl FnMut() -> i64) -> i32 {
    loop {
        let r = call();
        if r >= 0 {
            return i32::try_from(r).unwrap_or(i32::MAX);
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
        if errno != libc::EINTR {
            return -errno;
        }
    }
}

/// A stream's next segment, preallocated (`always` with direct I/O):
/// `segment_bytes` of written zeros, renamed to the segment's name when
/// the current one is sealed.
pub const PREALLOC: &str = ".next-segment";
/// The preallocated segment while it is being written.
const PREALLOC_TMP: &str = ".next-segment.tmp";
/// Zeros written per call while preallocating...
const PREALLOC_CHUNK: usize = 1 << 20;
/// ...with this pause after each, so that preallocating (in the background,
/// at most 1 GiB/s) leaves the disk to the syncs it is there to speed up.
const PREALLOC_PAUSE: Duration = Duration::from_millis(1);
/// How long a new `always` stream's first batch waits for its first
/// segment to be preallocated before it goes to a plain file.
const PREALLOC_WAIT: Duration = Duration::from_millis(500);

/// Writes preallocated segments on a thread of its own.
///
/// An `always` stream syncs after every batch. Appending to a file changes
/// its size, and each sync then commits the filesystem's journal as well
/// as flushing the device (ext4 here: 135 us for a 4 KiB append, 216 us
/// for 32 KiB). Overwriting blocks already written changes no metadata:
/// the sync is a device flush (75-80 us for 4 to 32 KiB, same machine). So
/// the next segment of such a stream is written full of zeros ahead of
/// time, with direct I/O (no page cache), synced, and only then renamed to
/// [`PREALLOC`]; the archiver renames it to the new segment's name when it
/// rolls (or creates a plain file if it is not ready). Its zeros are a
/// zero tail to every reader.
#[derive(Debug)]
struct Preallocator {
    tx: Option<Sender<(Dir, u64)>>,
    thread: Option<JoinHandle<()>>,
}

impl Preallocator {
    fn start() -> Preallocator {
        let (tx, rx) = mpsc::channel::<(Dir, u64)>();
        let thread = std::thread::Builder::new()
            .name("rill-prealloc".into())
            .spawn(move || {
                while let Ok((dir, size)) = rx.recv() {
                    if let Err(e) = preallocate(&dir, size) {
                        tracing::warn!(dir = %dir.path().display(), error = %e, "could not preallocate the next segment; it will be created when needed");
                        let _ = dir.remove(PREALLOC_TMP);
                    }
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "no preallocation thread; segments are created when needed"))
            .ok();
        Preallocator { tx: thread.is_some().then_some(tx), thread }
    }

    /// Asks for a preallocated next segment of `size` bytes in `dir`.
    fn request(&self, dir: &Dir, size: u64) {
        if let Some(tx) = &self.tx {
            let _ = tx.send((dir.clone(), size));
        }
    }

    /// Lets the current preallocation finish, then stops the thread.
    fn stop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `dir`/[`PREALLOC`]: `size` bytes of zeros, synced (unless one of
/// that size is already there), through a temporary file created anew.
fn preallocate(dir: &Dir, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    if preallocated_ready(dir, size) {
        return Ok(());
    }
    let file = dir.create_fresh(PREALLOC_TMP, 0o640)?;
    if !supports_direct_io(&file) {
        // Written through the page cache, a segment would not be used (see
        // the archiver's roll): not worth the space.
        drop(file);
        return dir.remove(PREALLOC_TMP);
    }
    let direct = set_direct(&file);
    let mut zeros = AlignedBuf::new(PREALLOC_CHUNK, MAX_DIRECT_ALIGN);
    let zeros = zeros.as_mut_slice();
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(PREALLOC_CHUNK as u64) as usize;
        // Direct I/O wants whole blocks; segment sizes are MiB multiples.
        let n = if direct { n.div_ceil(MAX_DIRECT_ALIGN) * MAX_DIRECT_ALIGN } else { n };
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
        std::thread::sleep(PREALLOC_PAUSE);
    }
    file.set_len(size)?;
    file.sync_all()?;
    dir.rename(PREALLOC_TMP, PREALLOC)?;
    tracing::debug!(dir = %dir.path().display(), size, "next segment preallocated");
    Ok(())
}

/// Opens segment `name` in `dir` for writing (or with `create`, creates
/// it: a name that exists is an error), never through a link, with
/// O_DIRECT if `direct` is asked and the filesystem supports it. Returns
/// the file, its direct-I/O alignment ([`MAX_DIRECT_ALIGN`], a multiple of
/// whatever the filesystem needs) and, for direct I/O, the bytes of its
/// last partial block before `data_len` (which the next write rewrites).
fn open_segment(dir: &Dir, name: &OsStr, create: bool, direct: bool, data_len: u64) -> std::io::Result<(File, Option<usize>, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let file = if create { dir.create_new(name, 0o640)? } else { dir.open_rw(name)? };
    if !direct || !supports_direct_io(&file) {
        return Ok((file, None, Vec::new()));
    }
    let align = MAX_DIRECT_ALIGN as u64;
    let mut tail = vec![0u8; (data_len % align) as usize];
    file.read_exact_at(&mut tail, data_len - data_len % align)?;
    if !set_direct(&file) {
        return Ok((file, None, Vec::new()));
    }
    Ok((file, Some(MAX_DIRECT_ALIGN), tail))
}

/// Switches `file` to O_DIRECT; whether that worked.
fn set_direct(file: &File) -> bool {
    // SAFETY: fcntl on an fd we own, integer arguments only.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    flags >= 0 && unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_DIRECT) } >= 0
}

/// Whether `dir` holds a preallocated next segment of `size` bytes (a
/// regular file, not a link).
fn preallocated_ready(dir: &Dir, size: u64) -> bool {
    dir.metadata(PREALLOC).is_ok_and(|m| m.len() == size)
}

/// Whether files in `dir` support direct I/O (see [`supports_direct_io`]),
/// found with an unnamed temporary file in it.
fn dir_supports_direct_io(dir: &Dir) -> bool {
    match dir.tmpfile() {
        Ok(f) => supports_direct_io(&f),
        Err(e) => {
            tracing::debug!(dir = %dir.path().display(), error = %e, "no O_TMPFILE to probe for direct I/O; writing through the page cache");
            false
        }
    }
}

/// Whether `file`'s filesystem supports direct I/O at an alignment (of
/// offsets, lengths and memory) that divides [`MAX_DIRECT_ALIGN`].
fn supports_direct_io(file: &File) -> bool {
    // SAFETY: statx fills the zeroed struct we pass; the path is an empty
    // C string with AT_EMPTY_PATH, so it describes the fd.
    let (rc, stx) = unsafe {
        let mut stx: libc::statx = std::mem::zeroed();
        let rc = libc::statx(file.as_raw_fd(), c"".as_ptr(), libc::AT_EMPTY_PATH, libc::STATX_DIOALIGN, &mut stx);
        (rc, stx)
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return false;
    }
    let align = stx.stx_dio_offset_align.max(stx.stx_dio_mem_align) as usize;
    align.is_power_of_two() && align <= MAX_DIRECT_ALIGN
}
