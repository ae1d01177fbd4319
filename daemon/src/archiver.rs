//! The archiver: writes every persisted stream to segment files with
//! io_uring, straight from the ring's memory, and publishes how far each
//! stream is durable.
//!
//! One thread, one io_uring, every persisted stream. For each stream it
//! holds a subscriber slot in *hold mode*: it polls frames as they are
//! committed, but its slot keeps holding publishers back at the first
//! frame not yet on disk, so a persisted message is never overwritten in
//! the ring before it is written (and, for `always`, synced). A batch is
//! the frames polled since the last one (up to [`BATCH_BYTES`]): one
//! `writev` of the 64-byte batch header (rill-store's format, CRC32C over
//! header and frames) and one or two iovecs pointing into the ring mapping,
//! at the end of the current segment file.
//!
//! Durability (per stream, `rill::Durability`):
//! * `always`: the write is linked to an `fdatasync` (IOSQE_IO_LINK); the
//!   durable position moves, and the ring space is released, when the
//!   sync completes. Frames that arrive meanwhile go in the next batch:
//!   one sync covers everything written before it (group commit).
//! * `interval:<ms>`: the space is released when the write completes; an
//!   `fdatasync` runs at most every `ms`, and the durable position moves
//!   to what was written before it.
//! * `none`: no sync; the durable position moves when the write completes.
//!
//! A failed or short write, or a failed sync, stops archiving that stream:
//! the error is logged and reported in `StreamInfo::archive_error`, the
//! durable position stays where the last successful sync left it (a failed
//! fsync is never retried as if it had worked: the kernel may have dropped
//! the dirty pages), and the held slot back-pressures the publishers, so
//! nothing not yet durable is overwritten. Other streams go on.

use io_uring::{opcode, squeue, types, IoUring};
use rill::protocol::Durability;
use rill_shm::frame::message_span;
use rill_shm::ring::Subscriber;
use rill_store::{segment_file_name, BatchHeader, BATCH_HEADER_LEN};
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A batch grows to about this many bytes of frames before it is written
/// (less when fewer are waiting: the archiver never waits to fill one).
pub const BATCH_BYTES: u64 = 1 << 20;
/// How often retention is checked.
const RETENTION_EVERY: Duration = Duration::from_millis(100);
/// Idle wait between looks at the rings when nothing is in flight.
const IDLE: Duration = Duration::from_micros(20);
/// Idle wait once nothing happened for [`QUIET_AFTER`] looks (about 20 ms).
const IDLE_QUIET: Duration = Duration::from_micros(200);
/// Empty looks before the archiver naps longer.
const QUIET_AFTER: u32 = 1000;

/// What the archiver reports about one stream.
#[derive(Debug, Clone, Default)]
pub struct ArchiveStatus {
    /// Bytes in its segment files.
    pub disk_bytes: u64,
    /// Why archiving stopped, if it did.
    pub error: Option<String>,
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
    /// The stream's directory in the data directory.
    pub dir: PathBuf,
    /// Durability policy.
    pub durability: Durability,
    /// Roll to a new segment file past this many bytes.
    pub segment_bytes: u64,
    /// The last segment (where writing goes on) and its length, if any.
    pub segment: Option<(PathBuf, u64)>,
    /// Bytes in all its segment files so far.
    pub disk_bytes: u64,
    /// What to delete, and when.
    pub retention: Retention,
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

/// Handle on the archiver thread.
#[derive(Debug)]
pub struct Archiver {
    tx: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    statuses: Statuses,
}

impl Archiver {
    /// Starts the archiver thread.
    pub fn start() -> anyhow::Result<Archiver> {
        let ring = IoUring::new(256).map_err(|e| anyhow::anyhow!("io_uring setup: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let statuses: Statuses = Arc::default();
        let st = statuses.clone();
        let thread = std::thread::Builder::new()
            .name("rill-archiver".into())
            .spawn(move || Worker { ring, rx, statuses: st, jobs: Vec::new(), next_token: 2 }.run())?;
        Ok(Archiver { tx: Some(tx), thread: Some(thread), statuses })
    }

    /// Starts archiving a stream.
    pub fn add(&self, job: Job) {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).insert(
            job.name.clone(),
            ArchiveStatus { disk_bytes: job.disk_bytes, error: None },
        );
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Add(Box::new(job)));
        }
    }

    /// Stops archiving a stream (after its writes in flight complete).
    pub fn remove(&self, name: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Remove(name.to_owned()));
        }
    }

    /// What the archiver says about `name`.
    pub fn status(&self, name: &str) -> Option<ArchiveStatus> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }
}

impl Drop for Archiver {
    /// Flushes: lets writes in flight complete, syncs every stream, stops.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("archiver thread panicked");
            }
        }
    }
}

/// A write (and maybe its sync) in flight for one stream.
#[derive(Debug)]
struct InFlight {
    /// Stream position the batch ends at.
    end: u64,
    /// Bytes the write must report.
    len: u64,
    /// Token of the write (even); the sync (if any) is `write + 1`.
    write: u64,
    /// A linked or lone sync is part of it.
    sync: bool,
    /// Only a sync (interval policy), no write.
    sync_only: bool,
    /// The write completed (and how).
    write_done: bool,
    /// Header bytes and iovecs: only kept alive here until the kernel is
    /// done with them.
    _header: Box<[u8; BATCH_HEADER_LEN]>,
    _iovecs: Box<[libc::iovec; 3]>,
}

// SAFETY: the iovecs point into the ring mapping and the boxed header,
// both owned by the same job, which the worker thread alone touches.
unsafe impl Send for InFlight {}

struct JobState {
    job: Job,
    /// Sealed segments, oldest first.
    sealed: std::collections::VecDeque<Sealed>,
    file: Option<File>,
    /// Next stream position to write (end of what is written).
    written: u64,
    /// What a sync would cover (interval policy).
    unsynced: u64,
    last_sync: Instant,
    in_flight: Option<InFlight>,
    error: Option<String>,
}

struct Worker {
    ring: IoUring,
    rx: Receiver<Command>,
    statuses: Statuses,
    jobs: Vec<JobState>,
    next_token: u64,
}

impl Worker {
    fn run(mut self) {
        let mut stopping = false;
        let mut last_retention = Instant::now();
        let mut idle_loops = 0u32;
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
            let mut submitted = 0;
            for i in 0..self.jobs.len() {
                submitted += self.start_batch(i);
            }
            let in_flight = self.jobs.iter().any(|j| j.in_flight.is_some());
            if in_flight {
                if let Err(e) = self.ring.submit_and_wait(1) {
                    if e.raw_os_error() != Some(libc::EINTR) {
                        tracing::error!(error = %e, "io_uring submit failed");
                    }
                }
                self.reap();
            } else if submitted == 0 {
                // Short naps while streams are busy; longer ones once all
                // have been quiet for a while (an idle daemon should not
                // cost a core).
                idle_loops = idle_loops.saturating_add(1);
                std::thread::sleep(if idle_loops < QUIET_AFTER { IDLE } else { IDLE_QUIET });
                continue;
            }
            idle_loops = 0;
        }
    }

    fn add(&mut self, job: Job) {
        let written = job.sub.position();
        tracing::info!(stream = %job.name, position = written, durability = %job.durability, dir = %job.dir.display(), "archiving stream");
        let file = match &job.segment {
            Some((path, _)) => match std::fs::OpenOptions::new().append(true).open(path) {
                Ok(f) => Some(f),
                Err(e) => {
                    let msg = format!("opening segment {}: {e}", path.display());
                    self.fail_new(job, written, msg);
                    return;
                }
            },
            None => None,
        };
        let mut job = job;
        job.sub.set_hold(true);
        let current = job.segment.as_ref().map(|(p, _)| p.clone());
        let sealed = rill_store::list_segments(&job.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, p)| Some(p) != current.as_ref())
            .filter_map(|(_, path)| {
                let m = std::fs::metadata(&path).ok()?;
                Some(Sealed { len: m.len(), modified: m.modified().ok()?, path })
            })
            .collect();
        self.jobs.push(JobState {
            job,
            sealed,
            file,
            written,
            unsynced: written,
            last_sync: Instant::now(),
            in_flight: None,
            error: None,
        });
    }

    fn fail_new(&mut self, mut job: Job, written: u64, msg: String) {
        tracing::error!(stream = %job.name, error = %msg, "archiving stopped");
        job.sub.set_hold(true);
        let name = job.name.clone();
        self.jobs.push(JobState {
            job,
            sealed: Default::default(),
            file: None,
            written,
            unsynced: written,
            last_sync: Instant::now(),
            in_flight: None,
            error: Some(msg.clone()),
        });
        self.set_status(&name, |s| s.error = Some(msg));
    }

    fn remove(&mut self, name: &str) {
        if let Some(i) = self.jobs.iter().position(|j| j.job.name == name) {
            self.drain(i);
            self.sync_now(i);
            self.jobs.swap_remove(i);
        }
    }

    /// Waits until job `i` has nothing in flight.
    fn drain(&mut self, i: usize) {
        while self.jobs[i].in_flight.is_some() {
            if self.ring.submit_and_wait(1).is_err() {
                std::thread::sleep(IDLE);
            }
            self.reap();
        }
    }

    /// Final flush: every write completes, every stream is synced.
    fn shutdown(&mut self) {
        for i in 0..self.jobs.len() {
            self.drain(i);
            // Write out what is still waiting in the ring.
            while self.jobs[i].error.is_none() && self.start_batch(i) > 0 {
                self.drain(i);
            }
            self.sync_now(i);
        }
        tracing::info!(streams = self.jobs.len(), "archiver flushed and stopped");
    }

    /// A blocking sync of job `i`'s segment (removal, shutdown).
    fn sync_now(&mut self, i: usize) {
        let j = &mut self.jobs[i];
        if j.error.is_some() || j.job.durability == Durability::None {
            return;
        }
        if let Some(f) = &j.file {
            match f.sync_data() {
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

    /// Starts a write of job `i`'s waiting frames (or an interval sync).
    /// Returns 1 if something was submitted.
    fn start_batch(&mut self, i: usize) -> usize {
        if self.jobs[i].in_flight.is_some() || self.jobs[i].error.is_some() {
            return 0;
        }
        // Interval policy: a sync is due.
        if let Durability::IntervalMs(ms) = self.jobs[i].job.durability {
            let j = &self.jobs[i];
            if j.unsynced > j.job.sub.ring().durable_position() && j.last_sync.elapsed() >= Duration::from_millis(u64::from(ms)) {
                return self.submit_sync(i);
            }
        }
        let max_span = message_span(self.jobs[i].job.sub.ring().info().max_message_len as usize) as u64;
        let (from, to) = {
            let j = &mut self.jobs[i];
            let from = j.written;
            loop {
                let have = j.job.sub.position() - from;
                if have >= BATCH_BYTES {
                    break;
                }
                let limit = ((BATCH_BYTES - have) / max_span).max(1) as usize;
                match j.job.sub.poll(limit, |_| {}) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        let msg = format!("reading the ring: {e}");
                        j.error = Some(msg);
                        break;
                    }
                }
            }
            (from, j.job.sub.position())
        };
        if let Some(msg) = self.jobs[i].error.clone() {
            self.stop(i, msg);
            return 0;
        }
        if to == from {
            return 0;
        }
        match self.submit_write(i, from, to) {
            Ok(()) => 1,
            Err(msg) => {
                self.stop(i, msg);
                0
            }
        }
    }

    fn submit_write(&mut self, i: usize, from: u64, to: u64) -> Result<(), String> {
        // Room for the write and its sync, so neither push below can fail
        // (a write queued without its in-flight record would outlive the
        // header and iovecs it points to).
        self.make_room(2)?;
        self.roll_if_needed(i, from, to)?;
        let write = self.token();
        let j = &mut self.jobs[i];
        let (a, b) = j.job.sub.held_bytes(from, to);
        let header = BatchHeader::for_frames(from, &[a, b]).map_err(|e| format!("frames at {from}..{to} in the ring: {e}"))?;
        let header = Box::new(header.to_bytes());
        let iov = |p: *const u8, len: usize| libc::iovec { iov_base: p as *mut libc::c_void, iov_len: len };
        let iovecs = Box::new([iov(header.as_ptr(), header.len()), iov(a.as_ptr(), a.len()), iov(b.as_ptr(), b.len())]);
        let count = if b.is_empty() { 2 } else { 3 };
        let len = (BATCH_HEADER_LEN + a.len() + b.len()) as u64;
        let (file, offset) = match (&j.file, &j.job.segment) {
            (Some(f), Some((_, off))) => (f.as_raw_fd(), *off),
            _ => return Err("no segment file open".into()),
        };
        let sync = j.job.durability == Durability::Always;
        let mut w = opcode::Writev::new(types::Fd(file), iovecs.as_ptr(), count).offset(offset).build().user_data(write);
        if sync {
            w = w.flags(squeue::Flags::IO_LINK);
        }
        let s = opcode::Fsync::new(types::Fd(file)).flags(types::FsyncFlags::DATASYNC).build().user_data(write + 1);
        // SAFETY: the header and iovecs are boxed in the InFlight stored
        // below, and the ring bytes they point to stay held (our slot does
        // not move) until the completions are reaped; the file stays open
        // as long as the job.
        unsafe {
            let mut sq = self.ring.submission();
            sq.push(&w).map_err(|_| "io_uring submission queue full".to_owned())?;
            if sync {
                sq.push(&s).map_err(|_| "io_uring submission queue full".to_owned())?;
            }
        }
        j.in_flight = Some(InFlight { end: to, len, write, sync, sync_only: false, write_done: false, _header: header, _iovecs: iovecs });
        Ok(())
    }

    fn submit_sync(&mut self, i: usize) -> usize {
        if self.make_room(1).is_err() {
            return 0;
        }
        let write = self.token();
        let j = &mut self.jobs[i];
        let Some(file) = j.file.as_ref().map(AsRawFd::as_raw_fd) else { return 0 };
        let s = opcode::Fsync::new(types::Fd(file)).flags(types::FsyncFlags::DATASYNC).build().user_data(write + 1);
        // SAFETY: no buffers; the file stays open as long as the job.
        if unsafe { self.ring.submission().push(&s) }.is_err() {
            return 0;
        }
        let iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
        j.in_flight = Some(InFlight {
            end: j.unsynced,
            len: 0,
            write,
            sync: true,
            sync_only: true,
            write_done: true,
            _header: Box::new([0; BATCH_HEADER_LEN]),
            _iovecs: Box::new([iov, iov, iov]),
        });
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

    /// Opens a new segment named by `from` when there is none yet or the
    /// current one would grow past the segment size.
    fn roll_if_needed(&mut self, i: usize, from: u64, to: u64) -> Result<(), String> {
        let j = &mut self.jobs[i];
        let batch = BATCH_HEADER_LEN as u64 + (to - from);
        let roll = match &j.job.segment {
            None => true,
            Some((_, len)) => *len > 0 && len + batch > j.job.segment_bytes,
        };
        if !roll {
            return Ok(());
        }
        if let Some(f) = &j.file {
            // Sealing a segment: whatever the policy, it is synced whole.
            f.sync_data().map_err(|e| format!("fdatasync before rolling the segment: {e}"))?;
        }
        if let Some((path, len)) = j.job.segment.take() {
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).unwrap_or_else(|_| std::time::SystemTime::now());
            j.sealed.push_back(Sealed { path, len, modified });
        }
        let path = j.job.dir.join(segment_file_name(from));
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("creating segment {}: {e}", path.display()))?;
        File::open(&j.job.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", j.job.dir.display()))?;
        tracing::info!(stream = %j.job.name, segment = %path.display(), "new segment");
        j.file = Some(f);
        j.job.segment = Some((path, 0));
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
            match std::fs::remove_file(&s.path) {
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

    /// Handles every completion waiting.
    fn reap(&mut self) {
        let done: Vec<(u64, i32)> = self.ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (token, res) in done {
            let write = token & !1;
            let Some(i) = self.jobs.iter().position(|j| j.in_flight.as_ref().is_some_and(|f| f.write == write)) else {
                tracing::warn!(token, res, "completion for no write in flight");
                continue;
            };
            if token & 1 == 0 {
                self.write_completed(i, res);
            } else {
                self.sync_completed(i, res);
            }
        }
    }

    fn write_completed(&mut self, i: usize, res: i32) {
        let j = &mut self.jobs[i];
        let f = j.in_flight.as_mut().expect("found by token");
        if res < 0 || res as u64 != f.len {
            let why = if res < 0 {
                std::io::Error::from_raw_os_error(-res).to_string()
            } else {
                // A short write is how a full filesystem shows first.
                // (fsblkcnt_t and c_ulong are u64 here, not everywhere.)
                #[allow(clippy::unnecessary_cast)]
                let full = nix::sys::statvfs::statvfs(&j.job.dir)
                    .is_ok_and(|v| (v.blocks_available() as u64).saturating_mul(v.fragment_size() as u64) < f.len);
                let short = format!("short write: {res} of {} bytes", f.len);
                if full {
                    format!("{} ({short})", std::io::Error::from_raw_os_error(libc::ENOSPC))
                } else {
                    short
                }
            };
            // A linked sync is cancelled by the kernel; its completion
            // (ECANCELED) still comes and finds the stream stopped.
            let msg = format!("writing batch ending at {}: {why}", f.end);
            if !f.sync {
                j.in_flight = None;
            } else {
                f.write_done = true;
            }
            self.stop(i, msg);
            return;
        }
        f.write_done = true;
        let (end, len, sync) = (f.end, f.len, f.sync);
        if let Some((_, seg_len)) = &mut j.job.segment {
            *seg_len += len;
        }
        j.job.disk_bytes += len;
        j.written = end;
        let disk = j.job.disk_bytes;
        if !sync {
            j.in_flight = None;
            j.unsynced = end;
            j.job.sub.release_to(end);
            if j.job.durability == Durability::None {
                j.job.sub.ring().set_durable_position(end);
            }
        }
        let name = j.job.name.clone();
        self.set_status(&name, |s| s.disk_bytes = disk);
    }

    fn sync_completed(&mut self, i: usize, res: i32) {
        let j = &mut self.jobs[i];
        let f = j.in_flight.take().expect("found by token");
        if j.error.is_some() {
            return; // the write before it failed; already reported
        }
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            let durable = j.job.sub.ring().durable_position();
            self.stop(i, format!("fdatasync failed ({e}); durable position stays at {durable}; archiving stopped (a failed sync is never retried)"));
            return;
        }
        debug_assert!(f.write_done || f.sync_only);
        j.job.sub.ring().set_durable_position(f.end);
        j.job.sub.release_to(f.end);
        j.last_sync = Instant::now();
    }

    fn stop(&mut self, i: usize, msg: String) {
        let j = &mut self.jobs[i];
        if j.error.is_none() {
            tracing::error!(stream = %j.job.name, error = %msg, "archiving stopped; publishers will be back-pressured");
            j.error = Some(msg.clone());
        }
        let name = j.job.name.clone();
        self.set_status(&name, |s| s.error = Some(msg));
    }

    fn set_status(&self, name: &str, f: impl FnOnce(&mut ArchiveStatus)) {
        let mut st = self.statuses.lock().unwrap_or_else(|e| e.into_inner());
        f(st.entry(name.to_owned()).or_default());
    }
}
