//! The stream registry: every ring the daemon owns, who holds its slots,
//! and the janitor work on it (abandoned claims, dead or departed
//! subscribers, unused streams).
//!
//! Each stream is a ring and its pages (one per subscriber slot, the wake
//! page, the daemon page: see `rill_shm::layout::SlotPage`), each a memfd
//! sealed against resizing (`Ring::create_sealed`), on huge pages when
//! possible. The ring keeper ([`crate::keeper`]) holds a copy of every fd,
//! with whether the stream outlives its users, so a restarted daemon
//! adopts every live ring with its positions.

use crate::archiver::{Archiver, ArchiveStatus, Job, Retention};
use crate::config::Config;
use crate::dirs::{self, file_name};
use crate::indexer::{Indexer, LogIndex};
use rill_store::{Dir, SegmentIndex, StreamLog};
use rill_protocol::{
    Durability, ErrorCode, LogSegments, Policy, Replay, StartAt, StreamInfo, StreamOptions, SubscriberInfo, MAX_LOG_SEGMENTS,
    MAX_REPLAY_SEGMENTS,
};
use crate::keeper::{Kept, Keeper};
use crate::peer::Process;
use rill_shm::ring::{PagePreference, Reclaimer, Ring, RingConfig, RingFiles, Start};
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A refusal to send back to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Kind of failure.
    pub code: ErrorCode,
    /// What and why, for humans.
    pub message: String,
}

impl Refusal {
    /// A refusal with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }
}

/// Who holds a subscriber slot, in the daemon's books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOwner {
    /// Nobody.
    Free,
    /// A connected client's handle.
    Client {
        /// Connection id.
        conn: u64,
        /// Handle id.
        handle: u64,
    },
    /// Found active when adopting the ring after a restart: waiting for its
    /// owner to reconnect until `deadline`.
    Adopted {
        /// When to give up on it.
        deadline: Instant,
    },
    /// The archiver's (persisted streams): never freed by the janitor.
    Archiver,
}

/// Who holds a stream's exclusive publication, in the daemon's books
/// (mirrored in the ring's `exclusive_pid` word, so a restarted daemon
/// knows too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExclusiveHolder {
    /// A connected client's handle.
    Client {
        /// Connection id.
        conn: u64,
        /// Handle id.
        handle: u64,
        /// Its process.
        process: Process,
    },
    /// A process that held it and still lives, but has no connection now
    /// (it lost the socket, or the daemon restarted): it may still write,
    /// so nobody else may publish until it resumes or exits.
    Detached {
        /// Its process.
        process: Process,
    },
}

impl ExclusiveHolder {
    /// The holding process.
    pub fn process(&self) -> &Process {
        match self {
            ExclusiveHolder::Client { process, .. } | ExclusiveHolder::Detached { process } => process,
        }
    }

    /// Its pid (in rilld's pid namespace; 0 if not visible there).
    pub fn pid(&self) -> u32 {
        self.process().pid
    }
}

/// One stream.
#[derive(Debug)]
pub struct Stream {
    /// Name.
    pub name: String,
    /// The daemon's mapping (ring read-write, every page read-write).
    pub ring: Ring,
    /// Its memfds (the keeper holds them too), handed to clients.
    pub files: RingFiles,
    /// Kept when unused.
    pub keep: bool,
    /// Open publishers.
    pub publishers: u32,
    /// The exclusive publisher, if one holds the stream.
    pub exclusive: Option<ExclusiveHolder>,
    /// Adopted after a restart without an exclusive holder: shared
    /// publishers the daemon does not know yet may still write (and
    /// resume) until then, so no exclusive publisher before it.
    pub shared_may_resume_until: Option<Instant>,
    /// Slot owners, by slot index.
    pub owners: Vec<SlotOwner>,
    /// The process each slot was given to, by slot index, in rilld's own
    /// books (the pid word in a slot page is the subscriber's to write):
    /// `None` for free slots and for slots adopted after a restart.
    pub slot_process: Vec<Option<Process>>,
    /// The uid whose request created the stream (`None`: recovered or
    /// adopted at start); what it counts against in `[limits]`.
    pub creator: Option<u32>,
    /// Per slot: where a subscriber that holds publishers back a whole
    /// ring behind was first seen stalled, and since when.
    stalled: Vec<Option<(u64, Instant)>>,
    /// Pads abandoned claims.
    pub reclaimer: Reclaimer,
    /// Since when nobody uses the stream.
    pub idle_since: Option<Instant>,
    /// Subscriber slots freed because their owner died or vanished.
    pub reaped: u64,
    /// Adopted after a restart: not removed for lack of users before this
    /// (its publishers may still come back and resume).
    pub resume_until: Option<Instant>,
    /// Persisted with this durability.
    pub persist: Option<Durability>,
    /// What the archiver says about it (persisted streams).
    pub archive: Option<ArchiveStatus>,
    /// What its log lost to damage on disk, found at start (reported;
    /// readers skip it with a notice of the exact positions).
    pub log_damage: Option<String>,
    /// Its log's index (persisted streams), kept near the log's end by the
    /// indexer thread.
    pub log_index: Option<std::sync::Arc<LogIndex>>,
    /// Why archiving could not be set up (at start or creation): the
    /// stream is held back until rilld is restarted with the cause fixed.
    pub setup_error: Option<String>,
    /// `files` changed (a slot got a fresh page) since the keeper was last
    /// handed them.
    pub keeper_stale: bool,
}

impl Stream {
    fn options(&self) -> StreamOptions {
        let i = self.ring.info();
        StreamOptions {
            capacity: i.capacity,
            max_message_len: i.max_message_len,
            policy: i.policy.into(),
            keep: self.keep,
            persist: self.persist,
        }
    }

    /// Whether anyone uses the stream.
    pub fn in_use(&self) -> bool {
        self.publishers > 0 || self.exclusive.is_some() || self.owners.iter().any(|o| *o != SlotOwner::Free)
    }

    /// Records (or clears) the exclusive holder, in the books and the ring.
    pub fn set_exclusive(&mut self, holder: Option<ExclusiveHolder>) {
        self.ring.set_exclusive_holder(holder.as_ref().map_or(0, ExclusiveHolder::pid));
        self.exclusive = holder;
    }

    /// Refuses a publisher if an exclusive one holds the stream (a detached
    /// holder whose process has exited is let go first), or, when
    /// `exclusive` is asked for, if the stream has any publisher, or may
    /// have unannounced ones (adopted after a restart, within the resume
    /// grace).
    pub fn admit_publisher(&mut self, exclusive: bool, now: Instant) -> Result<(), Refusal> {
        if let Some(ExclusiveHolder::Detached { process }) = &self.exclusive {
            if !process.alive() {
                tracing::info!(stream = %self.name, pid = process.pid, "exclusive publisher's process is gone; stream open to publishers again");
                self.set_exclusive(None);
            }
        }
        if let Some(h) = &self.exclusive {
            let msg = format!("stream {:?} is held by an exclusive publisher (pid {}); no other publisher until it closes or exits", self.name, h.pid());
            return Err(Refusal::new(ErrorCode::Busy, msg));
        }
        if exclusive && self.publishers > 0 {
            let msg = format!(
                "stream {:?} has {} publisher(s); an exclusive publisher must be the only one",
                self.name, self.publishers
            );
            return Err(Refusal::new(ErrorCode::Busy, msg));
        }
        if exclusive && self.shared_may_resume_until.is_some_and(|t| now < t) {
            let msg = format!(
                "stream {:?} was adopted after a daemon restart and its publishers may still resume; \
                 an exclusive publisher can open once the resume grace has passed",
                self.name
            );
            return Err(Refusal::new(ErrorCode::Busy, msg));
        }
        Ok(())
    }

    /// Revokes the subscribers of a back-pressure stream that have held
    /// every publisher back, a whole ring behind, without moving for
    /// `limit` (a client that heartbeats but never reads, or reads
    /// nothing). Returns how many.
    fn revoke_stalled(&mut self, subscribers: &[rill_shm::ring::SlotInfo], now: Instant, limit: Duration) -> usize {
        let info = self.ring.info();
        if Policy::from(info.policy) != Policy::BackPressure {
            return 0;
        }
        // Behind by this much, it holds publishers back: no room for one
        // more message of the largest size.
        let full = info.capacity.saturating_sub(rill_shm::frame::message_span(info.max_message_len as usize) as u64 + rill_shm::frame::HEADER_LEN as u64);
        let tail = self.ring.tail();
        let mut revoked = 0;
        for i in 0..self.stalled.len() {
            let x = subscribers.iter().find(|x| x.index == i as u32 && matches!(self.owners[i], SlotOwner::Client { .. } | SlotOwner::Adopted { .. }));
            let Some(x) = x.filter(|x| tail.saturating_sub(x.position) >= full) else {
                self.stalled[i] = None;
                continue;
            };
            match self.stalled[i] {
                Some((at, since)) if at == x.position => {
                    if now.duration_since(since) >= limit {
                        tracing::warn!(stream = %self.name, slot = i, pid = x.pid, position = x.position, tail, stalled_ms = now.duration_since(since).as_millis() as u64,
                            "subscriber held every publisher back a whole ring behind without moving for the stall limit; slot revoked");
                        self.free_slot(i as u32, true);
                        self.stalled[i] = None;
                        revoked += 1;
                    }
                }
                _ => self.stalled[i] = Some((x.position, now)),
            }
        }
        revoked
    }

    /// Frees slot `slot` in the books and the ring. A slot taken from its
    /// owner (`reaped`: dead, hung, or gone past the resume grace) whose
    /// process still lives is revoked rather than freed: publishers stop
    /// heeding it, but it is not reused while that process might still
    /// write its position into it (the janitor frees it once it exits).
    pub fn free_slot(&mut self, slot: u32, reaped: bool) {
        let pid = self.ring.slot_pid(slot);
        let process = self.slot_process[slot as usize].take();
        let alive = process.map_or_else(|| rill_shm::os::pid_alive(pid), |p| p.alive());
        if reaped && alive {
            tracing::info!(stream = %self.name, slot, pid, "slot revoked from a live owner (its page says so; the slot gets a fresh one)");
            self.ring.revoke_slot(slot);
        } else {
            self.ring.release_slot(slot);
        }
        self.renew_slot(slot);
        self.owners[slot as usize] = SlotOwner::Free;
        if reaped {
            self.reaped += 1;
        }
    }

    /// Gives slot `slot` (free in the books) a fresh page: whoever held
    /// or kept its old page (a subscriber may keep any fd it was given,
    /// and pass it on) writes memory nobody reads any more. If that fails
    /// the slot stays revoked, out of use (until rilld restarts).
    pub fn renew_slot(&mut self, slot: u32) {
        match self.ring.renew_slot_page(slot) {
            Ok(fd) => {
                self.files.slots[slot as usize] = fd;
                self.keeper_stale = true;
            }
            Err(e) => {
                tracing::error!(stream = %self.name, slot, error = %e, "cannot give the slot a fresh page; it stays out of use");
                self.ring.revoke_slot(slot);
            }
        }
    }

    /// The stream as the protocol describes it.
    pub fn info(&self) -> StreamInfo {
        let i = self.ring.info();
        let tail = self.ring.tail();
        StreamInfo {
            name: self.name.clone(),
            capacity: i.capacity,
            max_message_len: i.max_message_len,
            policy: i.policy.into(),
            page_size: i.pages.size() as u32,
            slot_count: i.slot_count,
            tail,
            publishers: self.publishers,
            subscribers: self
                .ring
                .subscribers()
                .into_iter()
                .map(|s| SubscriberInfo {
                    slot: s.index,
                    pid: s.pid,
                    position: s.position,
                    lag_bytes: tail.saturating_sub(s.position),
                    holding: s.holding,
                })
                .collect(),
            padded_bytes: self.reclaimer.padded_bytes(),
            reaped_subscribers: self.reaped,
            keep: self.keep,
            exclusive: self.exclusive.is_some(),
            persist: self.persist,
            durable_position: self.ring.durable_position(),
            disk_bytes: self.archive.as_ref().map_or(0, |a| a.disk_bytes),
            archive_error: self
                .archive
                .as_ref()
                .and_then(|a| a.error.clone())
                .or_else(|| self.setup_error.as_ref().map(|e| format!("archiving not started: {e}")))
                .or_else(|| self.log_damage.clone()),
        }
    }
}

/// Every stream of this daemon.
#[derive(Debug)]
pub struct Streams {
    /// Exclusive flocks on the state and data directories, held for the
    /// daemon's life: a second daemon on either of them fails to start.
    _locks: Vec<nix::fcntl::Flock<std::fs::File>>,
    streams: BTreeMap<String, Stream>,
    /// Holds every ring's memfds across a restart of rilld.
    keeper: Keeper,
    /// What the keeper held for the previous rilld, until adopted.
    kept: Vec<Kept>,
    /// When to look at the keeper next after it was found gone.
    keeper_retry_at: Option<Instant>,
    huge_pages: bool,
    slot_count: u32,
    unblock_timeout_ns: u64,
    stall_limit: Duration,
    limits: crate::config::Limits,
    linger: Duration,
    keep_prefixes: Vec<String>,
    data_dir: PathBuf,
    /// The data directory, open (`None`: it could not be created).
    data: Option<Dir>,
    segment_bytes: u64,
    retention: Retention,
    direct_io: bool,
    archiver: Archiver,
    indexer: Indexer,
}

/// Where a recovered log ends: the stream position after its last batch,
/// and the length of the batches in its last segment.
#[derive(Debug, Clone, Copy)]
struct LogEnd {
    position: u64,
    segment_len: u64,
}

/// Recovers the log of stream `name` in `dir` after a crash or a reboot:
/// every segment is read whole and every batch checked (CRC and frames),
/// and synced (a sealed segment's final sync may not have run). The last
/// segment's damaged tail is cut at its last whole batch (a corrupt last
/// batch kept aside first); damage elsewhere is left in place, and the
/// positions it lost are returned, exactly, as are gaps between segments:
/// the valid batches after damage stay readable, and readers skip the
/// damage with a notice. Returns where the log ends and what it lost.
fn recover_log(name: &str, dir: &Dir) -> Result<RecoveredLog, String> {
    let segments = rill_store::list_segments_in(dir).map_err(|e| format!("listing {}: {e}", dir.path().display()))?;
    // The sealed segments are read one ahead by a thread of their own, so
    // the disk reads the next while the CRCs of this one are checked.
    // Two buffers go round (one read into, one scanned), so no segment's
    // worth of fresh memory is faulted in per segment.
    std::thread::scope(|scope| {
        let (tx, ahead) = std::sync::mpsc::sync_channel(1);
        let (give_back, returned) = std::sync::mpsc::channel::<Vec<u8>>();
        let sealed = &segments[..segments.len().saturating_sub(1)];
        scope.spawn(move || {
            let mut spare = vec![Vec::new(), Vec::new()];
            for (_, path) in sealed {
                let mut buf = spare.pop().or_else(|| returned.recv().ok()).unwrap_or_default();
                buf.clear();
                let read = dir.open_file(file_name(path)).and_then(|mut f| std::io::Read::read_to_end(&mut f, &mut buf)).map(|_| buf);
                if tx.send(read).is_err() {
                    return;
                }
            }
        });
        recover_segments(name, dir, &segments, &ahead, &give_back)
    })
}

/// What [`recover_log`] found: where the log ends, what it lost, and its
/// index (read on the way: the indexer need not read it again, and the
/// first replay after a restart does not wait for it).
struct RecoveredLog {
    end: Option<LogEnd>,
    lost: Vec<rill_store::Hole>,
    index: StreamLog,
}

/// [`recover_log`]'s walk over `segments`, the sealed ones' bytes coming
/// from `ahead` in order.
fn recover_segments(
    name: &str,
    dir: &Dir,
    segments: &[(u64, PathBuf)],
    ahead: &std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    give_back: &std::sync::mpsc::Sender<Vec<u8>>,
) -> Result<RecoveredLog, String> {
    let mut lost = Vec::new();
    let mut index = Vec::with_capacity(segments.len());
    let mut end = None;
    for (i, (first, path)) in segments.iter().enumerate() {
        let next = segments.get(i + 1).map(|(f, _)| *f);
        let sync = |p: &Path| dir.open_file(file_name(p)).and_then(|f| f.sync_data()).map_err(|e| format!("syncing {}: {e}", p.display()));
        let scan = if next.is_none() {
            let r = rill_store::recover_segment_in(dir, file_name(path)).map_err(|e| format!("recovering {}: {e}", path.display()))?;
            if let Some(d) = &r.scan.damage {
                let after = r.scan.end_position;
                match &r.side_file {
                    Some(side) => tracing::error!(stream = name, segment = %path.display(), after_position = after, cut_bytes = r.truncated_bytes,
                        kept_in = %side.display(), damage = %d, "corrupt last batch cut (never acknowledged as durable unless the disk lost synced bytes); its bytes are kept aside"),
                    None => tracing::warn!(stream = name, segment = %path.display(), after_position = after, cut_bytes = r.truncated_bytes,
                        damage = %d, "torn tail of the last segment cut at the last whole batch"),
                }
            }
            let position = if r.end_position() == 0 { *first } else { r.end_position() };
            end = Some(LogEnd { position, segment_len: r.len() });
            r.scan
        } else {
            let bytes = ahead.recv().map_err(|_| "the segment reader stopped".to_owned())?;
            let bytes = bytes.map_err(|e| format!("reading {}: {e}", path.display()))?;
            let scan = rill_store::scan_segment(&bytes, *first);
            let _ = give_back.send(bytes); // the reader may be done: fine
            scan
        };
        // A batch written but not yet synced when the last daemon died is
        // whole in the page cache: sync it before calling anything durable.
        sync(path)?;
        lost.extend(scan.holes.iter().cloned());
        index.push(SegmentIndex::from_scan(path.clone(), *first, &scan, next.is_some()));
        // A gap before the next segment. (One that starts before this one
        // ends overlaps it: nothing lost, and from..to would run backwards.)
        if let Some(next) = next.filter(|&n| n > scan.end_position) {
            let reason = match &scan.damage {
                Some(d) => format!("{}: {d}", path.display()),
                None => format!("{} ends at {}, the next segment starts at {next}", path.display(), scan.end_position),
            };
            lost.push(rill_store::Hole { offset: scan.valid_len, len: scan.file_len - scan.valid_len, from: scan.end_position, to: next, reason });
        }
    }
    for h in &lost {
        tracing::error!(stream = name, from = h.from, to = h.to, lost_bytes = h.to.saturating_sub(h.from), reason = %h.reason,
            "the log lost these positions to damage on disk; the batches after them stay readable, and readers are told of the loss");
    }
    Ok(RecoveredLog { end, lost, index: StreamLog::from_segments(dir.clone(), index) })
}

/// One line for `rill streams`: every lost range of a log.
fn describe_lost(lost: &[rill_store::Hole]) -> String {
    let bytes: u64 = lost.iter().map(|h| h.to.saturating_sub(h.from)).sum();
    let ranges: Vec<String> = lost.iter().take(8).map(|h| format!("{}..{}", h.from, h.to)).collect();
    let more = if lost.len() > 8 { format!(" and {} more", lost.len() - 8) } else { String::new() };
    format!("log lost {} range(s), {bytes} stream bytes, to damage on disk: positions {}{more}", lost.len(), ranges.join(", "))
}

/// What the data directory remembers about a persisted stream
/// (`<data_dir>/<name>/stream.toml`), to recreate it after a restart.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StreamMeta {
    capacity: u64,
    max_message_len: u32,
    /// `back-pressure` or `overwrite` (whose archiver slot is a holding
    /// slot: publishers still never overwrite what is not on disk).
    policy: String,
    /// `none`, `interval:<ms>` or `always`.
    durability: String,
    /// The archiver's subscriber slot in the ring.
    archiver_slot: u32,
}

const META_FILE: &str = "stream.toml";

/// `policy` in `stream.toml`.
fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::BackPressure => "back-pressure",
        Policy::Overwrite => "overwrite",
    }
}

fn parse_policy(name: &str) -> Result<Policy, String> {
    match name {
        "back-pressure" => Ok(Policy::BackPressure),
        "overwrite" => Ok(Policy::Overwrite),
        other => Err(format!("unknown policy {other:?} (back-pressure or overwrite)")),
    }
}

/// A read-only fd of a segment file in `dir` for a client: a regular file,
/// never reached through a link. A file deleted since it was listed was
/// deleted by retention: `Gone`.
fn open_segment(name: &str, from: u64, dir: &Dir, path: &Path) -> Result<OwnedFd, Refusal> {
    dir.open_file(file_name(path)).map(OwnedFd::from).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => gone(name, from, &format!("segment {} was deleted by retention meanwhile", path.display())),
        _ => Refusal::new(ErrorCode::Internal, format!("opening {}: {e}", path.display())),
    })
}

/// The index of persisted stream `s`'s log (set up with its archiving).
fn log_index(s: &Stream) -> Result<&std::sync::Arc<LogIndex>, Refusal> {
    let why = || s.setup_error.clone().unwrap_or_else(|| "its log is not indexed".into());
    s.log_index.as_ref().ok_or_else(|| Refusal::new(ErrorCode::Internal, format!("stream {:?} is not being archived: {}", s.name, why())))
}

fn gone(name: &str, position: u64, why: &str) -> Refusal {
    Refusal::new(ErrorCode::Gone, format!("stream {name:?}: position {position} is gone: {why}"))
}

fn deleted_by_retention(first_on_disk: u64) -> String {
    format!("older positions were deleted by retention: the log starts at {first_on_disk}")
}

/// Reads `stream.toml` in `dir`.
fn read_meta(dir: &Dir) -> std::io::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut dir.open_file(META_FILE)?, &mut text)?;
    Ok(text)
}

/// Writes `stream.toml` atomically (a new temporary file, fsync, rename,
/// fsync of the directory).
fn write_meta(dir: &Dir, meta: &StreamMeta) -> Result<(), String> {
    use std::io::Write;
    let text = toml::to_string(meta).map_err(|e| e.to_string())?;
    if read_meta(dir).is_ok_and(|old| old == text) {
        return Ok(()); // unchanged (and a full disk need not stop a restart)
    }
    let tmp = format!("{META_FILE}.tmp");
    let shown = dir.join(&tmp);
    let mut f = dir.create_fresh(&tmp, 0o640).map_err(|e| format!("{}: {e}", shown.display()))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| format!("{}: {e}", shown.display()))?;
    dir.rename(&tmp, META_FILE).map_err(|e| format!("{}: {e}", dir.path().display()))?;
    dir.sync().map_err(|e| format!("syncing directory {}: {e}", dir.path().display()))
}

impl Streams {
    /// An empty registry over the configured directories (created if
    /// missing), each checked and locked (see [`crate::dirs`]).
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        dirs::create(&config.state_dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", config.state_dir.display()))?;
        let state = dirs::open_private(&config.state_dir, "state directory", "--state-dir")?;
        let mut locks = vec![dirs::lock(&state)?];
        let data = match dirs::create(&config.data_dir) {
            Ok(created) => {
                let data = dirs::open_private(&config.data_dir, "data directory", "--data-dir")?;
                if created {
                    // Its name durable in its parent before any log is in it.
                    if let Some(parent) = config.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                        Dir::open(parent).and_then(|p| p.sync()).map_err(|e| anyhow::anyhow!("syncing directory {}: {e}", parent.display()))?;
                    }
                }
                locks.push(dirs::lock(&data)?);
                Some(data)
            }
            Err(e) => {
                tracing::warn!(error = %e, data_dir = %config.data_dir.display(), "no data directory: persisted streams cannot be created");
                None
            }
        };
        let (keeper, kept) = Keeper::start(&config.state_dir)?;
        tracing::info!(state_dir = %config.state_dir.display(), kept = kept.len(), huge_pages = config.huge_pages, "ring storage: sealed memfds, held by the ring keeper");
        Ok(Streams {
            _locks: locks,
            streams: BTreeMap::new(),
            keeper,
            kept,
            keeper_retry_at: None,
            huge_pages: config.huge_pages,
            slot_count: config.slot_count,
            unblock_timeout_ns: config.unblock_timeout_ms * 1_000_000,
            stall_limit: Duration::from_millis(config.stall_limit_ms),
            limits: config.limits.clone(),
            linger: Duration::from_millis(config.linger_ms),
            keep_prefixes: config.keep.clone(),
            data_dir: config.data_dir.clone(),
            data,
            segment_bytes: config.segment_bytes,
            direct_io: config.direct_io,
            retention: Retention { max_bytes: config.retention_bytes, max_age: config.retention_ms.map(Duration::from_millis) },
            archiver: Archiver::start()?,
            indexer: Indexer::start()?,
        })
    }

    /// The data directory of persisted streams.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// After adopting rings: brings back every persisted stream of the data
    /// directory. Each stream's log is recovered ([`recover_log`]: every
    /// segment read, checked and synced; the last one's torn or corrupt
    /// tail cut, a corrupt one set aside; damage elsewhere reported as lost
    /// positions, never cut); an adopted ring gets its archiver slot back,
    /// and archiving resumes at the end of the log; a stream whose ring is
    /// gone (the host rebooted) gets a new ring whose origin is where its
    /// log ends. An entry that is a symbolic link, or a directory that
    /// fails [`dirs::check_private`], is left alone (never followed), with
    /// an error logged. Returns how many.
    pub fn recover_persisted(&mut self) -> usize {
        let Some(data) = self.data.clone() else { return 0 };
        let Ok(names) = data.names() else { return 0 };
        let mut n = 0;
        for name in names {
            let Some(name) = name.to_str().map(str::to_owned) else { continue };
            if rill_protocol::check_stream_name(&name).is_err() {
                continue;
            }
            let dir = match data.open_dir(&name) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue, // a file: no stream's
                Err(e) => Err(format!("opening {}: {e}", data.join(&name).display())),
                Ok(dir) => dirs::check_private(&dir).map(|()| dir),
            };
            let result = dir.and_then(|dir| match read_meta(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false), // not a stream's log
                Err(e) => Err(format!("reading {}: {e}", dir.join(META_FILE).display())),
                Ok(text) => self.recover_one(&name, &dir, &text).map(|()| true),
            });
            match result {
                Ok(recovered) => n += usize::from(recovered),
                Err(msg) => {
                    tracing::error!(stream = %name, error = %msg, "cannot recover persisted stream; left as is");
                    if let Some(s) = self.streams.get_mut(&name) {
                        s.setup_error = Some(msg);
                    }
                }
            }
        }
        n
    }

    /// Recovers stream `name` from its directory `dir`, whose `stream.toml`
    /// says `meta`.
    fn recover_one(&mut self, name: &str, dir: &Dir, meta: &str) -> Result<(), String> {
        let meta: StreamMeta = toml::from_str(meta).map_err(|e| format!("parsing {}: {e}", dir.join(META_FILE).display()))?;
        let durability: Durability = meta.durability.parse()?;
        let RecoveredLog { end, lost, index } = recover_log(name, dir)?;
        let result = self.recover_ring(name, &meta, durability, end, index);
        if let Some(s) = self.streams.get_mut(name) {
            s.log_damage = (!lost.is_empty()).then(|| describe_lost(&lost));
        }
        result
    }

    fn recover_ring(&mut self, name: &str, meta: &StreamMeta, durability: Durability, end: Option<LogEnd>, index: StreamLog) -> Result<(), String> {
        let policy = parse_policy(&meta.policy)?;
        if !self.streams.contains_key(name) {
            let options = StreamOptions {
                capacity: meta.capacity,
                max_message_len: meta.max_message_len,
                policy,
                keep: true,
                persist: Some(durability),
            };
            self.create_ring(name, &options).map_err(|r| r.message)?;
            let s = self.streams.get_mut(name).expect("created");
            let position = end.map_or(0, |e| e.position);
            s.ring.start_at(position)?;
            tracing::info!(stream = name, position, "ring recreated from the log's end");
            return self.start_archiving(name, durability, None, end, Some(index));
        }
        let s = self.streams.get_mut(name).expect("checked");
        let have = Policy::from(s.ring.info().policy);
        if have != policy {
            tracing::warn!(stream = name, ring = policy_name(have), log = %meta.policy, "the adopted ring's policy differs from stream.toml; the ring's applies");
        }
        let slot = meta.archiver_slot;
        // On an overwrite ring the archiver's slot must still be holding.
        let held = s
            .ring
            .subscribers()
            .into_iter()
            .find(|x| x.index == slot && (have == Policy::BackPressure || x.holding))
            .map(|x| x.position);
        match held {
            Some(held) => self.start_archiving(name, durability, Some((slot, held)), end, Some(index)),
            None => {
                tracing::error!(stream = name, slot, "the archiver's slot in the adopted ring was lost; archiving from the ring's tail (anything between the log's end and it was not archived)");
                self.start_archiving(name, durability, None, end, Some(index))
            }
        }
    }

    /// The directory of persisted stream `name` in the data directory,
    /// created (mode 0700, its name synced) if missing, and checked like
    /// the data directory ([`dirs::check_private`]).
    fn stream_dir(&self, name: &str) -> Result<Dir, String> {
        let data = self.data.as_ref().ok_or_else(|| format!("no data directory ({} could not be created)", self.data_dir.display()))?;
        let shown = data.join(name);
        if data.create_dir(name, 0o700).map_err(|e| format!("creating {}: {e}", shown.display()))? {
            // The new directory's name is durable only once its parent is
            // synced: until then a power cut could take the whole log.
            data.sync().map_err(|e| format!("syncing directory {}: {e}", self.data_dir.display()))?;
        }
        let dir = data.open_dir(name).map_err(|e| format!("opening {}: {e}", shown.display()))?;
        dirs::check_private(&dir)?;
        Ok(dir)
    }

    /// Starts the archiver on stream `name`: on its old slot `(slot, held
    /// position)` after a restart, else on a new slot; writing resumes at
    /// `log_end` (the end of the recovered log), or where the slot is.
    /// `index`: the log's index, if recovery read it.
    fn start_archiving(
        &mut self,
        name: &str,
        durability: Durability,
        old: Option<(u32, u64)>,
        end: Option<LogEnd>,
        index: Option<StreamLog>,
    ) -> Result<(), String> {
        let log_end = end.map(|e| e.position);
        let dir = self.stream_dir(name)?;
        let pid = std::process::id();
        let s = self.streams.get_mut(name).ok_or("no such stream")?;
        // The indexer keeps the log's index from now on (building it in
        // the background first, unless recovery read it).
        s.log_index.get_or_insert_with(|| self.indexer.index(dir.clone(), index));
        // A holding slot: on an overwrite ring too, publishers never pass
        // it, so nothing is overwritten before it is on disk. (An adopted
        // one is holding already.)
        let (slot, held) = match old {
            Some(x) => x,
            None => s.ring.attach_holding(Start::Latest, pid).map_err(|e| format!("archiver slot: {e}"))?,
        };
        let start = match log_end {
            Some(end) if end >= held && end <= s.ring.tail() => end,
            Some(end) => {
                tracing::error!(stream = name, log_end = end, ring_from = held, tail = s.ring.tail(),
                    "the log's end is not in the ring: archiving from where the ring is (positions between are missing from the log)");
                held
            }
            None => held,
        };
        if let Some(end) = log_end.filter(|&e| e == start) {
            // The recovered log is synced up to here (recover_one).
            s.ring.set_durable_position(end);
        }
        let mut sub = s.ring.subscriber_on_slot(slot, start).map_err(|e| format!("archiver slot {slot}: {e}"))?;
        sub.keep_slot_on_drop();
        s.owners[slot as usize] = SlotOwner::Archiver;
        s.persist = Some(durability);
        s.keep = true;
        let i = s.ring.info();
        let meta = StreamMeta {
            capacity: i.capacity,
            max_message_len: i.max_message_len,
            policy: policy_name(i.policy.into()).into(),
            durability: durability.to_string(),
            archiver_slot: slot,
        };
        write_meta(&dir, &meta)?;
        let segments = rill_store::list_segments_in(&dir).map_err(|e| format!("listing {}: {e}", dir.path().display()))?;
        let disk_bytes = segments.iter().filter_map(|(_, p)| dir.metadata(file_name(p)).ok()).map(|m| m.len()).sum();
        // Go on in the last segment if the log is continuous there, after
        // its batches (recovery measured them; a zero tail may follow).
        let segment = segments
            .last()
            .zip(end)
            .filter(|_| log_end == Some(start))
            .map(|((_, p), e)| (p.clone(), e.segment_len));
        s.archive = Some(ArchiveStatus { disk_bytes, ..ArchiveStatus::default() });
        self.archiver.add(Job {
            name: name.to_owned(),
            sub,
            dir,
            durability,
            segment_bytes: self.segment_bytes,
            segment,
            disk_bytes,
            retention: self.retention,
            direct_io: self.direct_io,
        });
        Ok(())
    }

    /// For a subscriber attached in the ring at `ring_start` (the oldest
    /// frame there) that asked to start at `start`: what to read first from
    /// the stream's log (read-only fds of the segments, in order), and from
    /// which position on to deliver. `None` for `Latest` and `Oldest`.
    pub fn plan_replay(&mut self, name: &str, start: StartAt, ring_start: u64) -> Result<Option<(Replay, Vec<OwnedFd>)>, Refusal> {
        let s = self.streams.get_mut(name).ok_or_else(|| Refusal::new(ErrorCode::UnknownStream, format!("no stream {name:?}")))?;
        if matches!(start, StartAt::Latest | StartAt::Oldest) {
            return Ok(None); // the ring only: no log to read, however long
        }
        // The stream's index, kept near the log's end by the indexer: what
        // is left to read here is the batch headers appended since its
        // last turn (see `indexer`).
        let guard = match s.persist {
            Some(_) => {
                let read_err = |e: rill_store::LogError| Refusal::new(ErrorCode::Internal, format!("stream {name:?}: reading its log: {e}"));
                Some(log_index(s)?.current().map_err(read_err)?)
            }
            None => None,
        };
        let log = guard.as_ref().and_then(|g| g.as_ref());
        let first_on_disk = log.as_ref().and_then(|l| l.first_position());
        let from = match start {
            StartAt::Latest | StartAt::Oldest => unreachable!("answered above"),
            StartAt::Earliest => first_on_disk.unwrap_or(ring_start).min(ring_start),
            StartAt::Position(p) => {
                let oldest = first_on_disk.unwrap_or(ring_start).min(ring_start);
                if p < oldest {
                    let why = match (&log, first_on_disk) {
                        (None, _) => format!("the ring holds from {ring_start} on and the stream is not persisted"),
                        (Some(_), Some(f)) => deleted_by_retention(f),
                        (Some(_), None) => format!("the log is empty and the ring holds from {ring_start} on"),
                    };
                    return Err(gone(name, p, &why));
                }
                p
            }
            StartAt::Time(t) => {
                let Some(log) = &log else {
                    return Err(Refusal::new(ErrorCode::Invalid, format!("stream {name:?} is not persisted: only persisted streams have a time index")));
                };
                match log.entry_at_time(t) {
                    Some((_, e)) => e.position,
                    None => ring_start,
                }
            }
        };
        let mut replay = Replay { segments: Vec::new(), from, until: ring_start };
        let mut fds = Vec::new();
        if let (Some(log), true) = (&log, from < ring_start) {
            for seg in log.segments().iter().filter(|g| g.end_position > from && g.first_position < ring_start) {
                if replay.segments.len() == MAX_REPLAY_SEGMENTS {
                    let msg = format!("stream {name:?}: a replay from {from} spans more than {MAX_REPLAY_SEGMENTS} segments; start later");
                    return Err(Refusal::new(ErrorCode::Invalid, msg));
                }
                let fd = open_segment(name, from, log.dir(), &seg.path)?;
                replay.segments.push(seg.first_position);
                fds.push(fd);
            }
            // `from` in a stretch the log lost (segments never synced
            // before a power cut, or damage): the reader starts at the
            // next segment and tells the subscriber what was lost first.
            // (No segment at all before the ring: the whole stretch up to
            // the ring's start must be one the log lost.)
            let lost = |f: u64| log.lost().iter().any(|h| h.from <= from && from < h.to && h.to <= f);
            let first = replay.segments.first().copied().unwrap_or(ring_start);
            if first > from && !lost(first) {
                let msg = format!("stream {name:?}: the log has no segment holding position {from}");
                return Err(Refusal::new(ErrorCode::Gone, msg));
            }
        }
        Ok(Some((replay, fds)))
    }

    /// For a subscriber of persisted stream `name` that publishers overran
    /// at `from` (a frame boundary it could not read in the ring): the
    /// segments holding `from` and what follows (read-only fds, in order,
    /// at most [`MAX_LOG_SEGMENTS`]: it asks again for the rest), where
    /// `from`'s batch is in the first, and the archiver's position, below
    /// which everything is on disk in whole batches. `Gone` if retention
    /// deleted `from`.
    ///
    /// Cost: one directory listing and the batch headers appended since
    /// the last request (the index is kept); the client reads the frames
    /// itself.
    pub fn log_segments(&mut self, name: &str, from: u64) -> Result<(LogSegments, Vec<OwnedFd>), Refusal> {
        let s = self.streams.get_mut(name).ok_or_else(|| Refusal::new(ErrorCode::UnknownStream, format!("no stream {name:?}")))?;
        if s.persist.is_none() {
            return Err(Refusal::new(ErrorCode::Invalid, format!("stream {name:?} is not persisted: it has no log")));
        }
        let archiver = s.owners.iter().position(|o| *o == SlotOwner::Archiver);
        let archived = archiver.and_then(|i| s.ring.subscribers().into_iter().find(|x| x.index == i as u32)).map(|x| x.position);
        let Some(archived) = archived else {
            let why = s.setup_error.clone().unwrap_or_else(|| "no archiver slot".into());
            return Err(Refusal::new(ErrorCode::Internal, format!("stream {name:?} is not being archived: {why}")));
        };
        // The stream's index (see plan_replay).
        let internal = |e: rill_store::LogError| Refusal::new(ErrorCode::Internal, format!("stream {name:?}: reading its log: {e}"));
        let guard = log_index(s)?.current().map_err(internal)?;
        let log = guard.as_ref().expect("current() builds it");
        let listed = log.segments();
        // The segment holding `from`: the last one starting at or before it.
        let i = listed.partition_point(|g| g.first_position <= from);
        if i == 0 {
            return match listed.first() {
                None if from >= archived => Ok((LogSegments { segments: Vec::new(), start_offset: 0, start_batch: from, archived }, Vec::new())),
                None => Err(gone(name, from, &format!("the log is empty though the archiver is at {archived}"))),
                Some(g) => Err(gone(name, from, &deleted_by_retention(g.first_position))),
            };
        }
        let chosen = &listed[i - 1..listed.len().min(i - 1 + MAX_LOG_SEGMENTS)];
        let index = &chosen[0];
        let sealed = i < listed.len();
        let (start_offset, start_batch) = match index.entry_at(from) {
            Some(e) => (e.file_offset, e.position),
            None if sealed => {
                let next = listed[i].first_position;
                let why = format!("the log has a gap: {} ends at {}, the next segment starts at {next}", index.path.display(), index.end_position);
                return Err(gone(name, from, &why));
            }
            // Not written yet: the next batch goes there.
            None => (index.valid_len, index.end_position),
        };
        let fds = chosen.iter().map(|g| open_segment(name, from, log.dir(), &g.path)).collect::<Result<Vec<_>, _>>()?;
        let segments = chosen.iter().map(|g| g.first_position).collect();
        // Cut short: the reader must not expect more than these hold.
        let archived = listed.get(i - 1 + chosen.len()).map_or(archived, |next| archived.min(next.first_position));
        Ok((LogSegments { segments, start_offset, start_batch, archived }, fds))
    }

    /// Refreshes each persisted stream's archiver status (for StreamInfo).
    pub fn refresh_archive_status(&mut self) {
        for s in self.streams.values_mut().filter(|s| s.persist.is_some()) {
            s.archive = self.archiver.status(&s.name);
        }
    }

    /// Hands the keeper the fds of every stream whose slots got fresh
    /// pages since it last had them (so a rilld that dies now is followed
    /// by one that adopts the pages in use).
    pub fn flush_keeper(&mut self) {
        for s in self.streams.values_mut().filter(|s| s.keeper_stale) {
            match self.keeper.keep(&s.name, s.keep, &s.files) {
                Ok(()) => s.keeper_stale = false,
                // The janitor restarts a keeper that is gone and hands it
                // every ring as it is then.
                Err(e) => tracing::warn!(stream = %s.name, error = %e, "cannot hand the ring keeper the stream's fresh slot pages"),
            }
        }
    }

    /// Adopts the rings that the keeper held for the previous daemon.
    /// Their active subscriber slots wait `grace` for their owners to
    /// resume.
    pub fn adopt_existing(&mut self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        for Kept { name, keep, files } in std::mem::take(&mut self.kept) {
            if rill_protocol::check_stream_name(&name).is_err() || self.streams.contains_key(&name) {
                tracing::error!(stream = %name, "the ring keeper held a ring under a name that is invalid or taken; letting it go");
                let _ = self.keeper.forget(&name);
                continue;
            }
            match Ring::adopt_sealed(&files) {
                Ok(ring) => {
                    let owners = (0..ring.info().slot_count)
                        .map(|i| {
                            if ring.subscribers().iter().any(|s| s.index == i) {
                                SlotOwner::Adopted { deadline }
                            } else {
                                SlotOwner::Free
                            }
                        })
                        .collect();
                    let holder = match ring.exclusive_holder() {
                        0 => None,
                        pid => match Process::by_pid(pid) {
                            process if process.alive() => Some(ExclusiveHolder::Detached { process }),
                            _ => {
                                tracing::info!(stream = %name, pid, "exclusive publisher of the adopted ring is gone");
                                None
                            }
                        },
                    };
                    tracing::info!(stream = %name, tail = ring.tail(), pages = %ring.pages(), exclusive_pid = holder.as_ref().map(ExclusiveHolder::pid), "adopted ring");
                    self.insert(name.clone(), ring, files, keep, owners);
                    if let Some(s) = self.streams.get_mut(&name) {
                        // Every slot nobody resumes gets a fresh page: the
                        // keeper may hold an old one if the last rilld died
                        // between renewing a slot and telling it.
                        for slot in 0..s.owners.len() as u32 {
                            if s.owners[slot as usize] == SlotOwner::Free {
                                s.renew_slot(slot);
                            }
                        }
                        s.resume_until = Some(deadline);
                        s.shared_may_resume_until = holder.is_none().then_some(deadline);
                        s.set_exclusive(holder);
                    }
                }
                Err(e) => {
                    tracing::error!(stream = %name, error = %e, "cannot adopt the ring the keeper held; letting it go");
                    let _ = self.keeper.forget(&name);
                }
            }
        }
        self.flush_keeper();
        self.streams.len()
    }

    fn insert(&mut self, name: String, ring: Ring, files: RingFiles, keep: bool, owners: Vec<SlotOwner>) {
        let keep = keep || self.keep_prefixes.iter().any(|p| name.starts_with(p.as_str()));
        let reclaimer = ring.reclaimer(self.unblock_timeout_ns);
        let stalled = vec![None; owners.len()];
        let slot_process = vec![None; owners.len()];
        let stream = Stream {
            stalled,
            creator: None,
            name: name.clone(),
            ring,
            files,
            keep,
            publishers: 0,
            exclusive: None,
            shared_may_resume_until: None,
            owners,
            slot_process,
            reclaimer,
            idle_since: Some(Instant::now()),
            reaped: 0,
            resume_until: None,
            persist: None,
            archive: None,
            log_damage: None,
            log_index: None,
            setup_error: None,
            keeper_stale: false,
        };
        self.streams.insert(name, stream);
    }

    /// The stream called `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Stream> {
        self.streams.get_mut(name)
    }

    /// The stream called `name`, or an `UnknownStream` refusal.
    pub fn require(&mut self, name: &str) -> Result<&mut Stream, Refusal> {
        self.streams
            .get_mut(name)
            .ok_or_else(|| Refusal::new(ErrorCode::UnknownStream, format!("no stream {name:?}")))
    }

    /// Every stream, in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Stream> {
        self.streams.values()
    }

    /// Number of streams.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Creates `name` with `options` for uid `creator`, within the
    /// limits, or returns it if it exists with the same shape.
    pub fn create(&mut self, name: &str, options: &StreamOptions, creator: u32) -> Result<&mut Stream, Refusal> {
        rill_protocol::check_stream_name(name).map_err(|m| Refusal::new(ErrorCode::Invalid, m))?;
        if !self.streams.contains_key(name) {
            self.check_limits(name, options, creator)?;
        }
        let s = self.create_unlimited(name, options)?;
        s.creator.get_or_insert(creator);
        Ok(s)
    }

    /// Refuses a new stream `name` that would take uid `creator` or all
    /// clients together past a limit of `[limits]`.
    fn check_limits(&self, name: &str, options: &StreamOptions, creator: u32) -> Result<(), Refusal> {
        let l = &self.limits;
        let mine = || self.streams.values().filter(|s| s.creator == Some(creator));
        let bytes = |s: &Stream| s.ring.info().capacity;
        let refuse = |what: &str, limit: String, used: String| {
            tracing::warn!(stream = name, uid = creator, what, %limit, %used, "stream refused by a limit");
            Err(Refusal::new(
                ErrorCode::Limit,
                format!("cannot create stream {name:?}: limits.{what} is {limit} and {used} (uid {creator}); see [limits] in rilld's configuration"),
            ))
        };
        if options.capacity > l.stream_bytes {
            return refuse("stream_bytes", l.stream_bytes.to_string(), format!("the stream asks for {} bytes", options.capacity));
        }
        let total = self.streams.len();
        if total >= l.streams {
            return refuse("streams", l.streams.to_string(), format!("{total} streams exist"));
        }
        let own = mine().count();
        if own >= l.streams_per_uid {
            return refuse("streams_per_uid", l.streams_per_uid.to_string(), format!("this uid created {own} of them"));
        }
        let used: u64 = self.streams.values().map(bytes).sum();
        if used + options.capacity > l.ring_bytes {
            return refuse("ring_bytes", l.ring_bytes.to_string(), format!("rings take {used} bytes, and the stream asks for {} more", options.capacity));
        }
        let own_bytes: u64 = mine().map(bytes).sum();
        if own_bytes + options.capacity > l.ring_bytes_per_uid {
            return refuse(
                "ring_bytes_per_uid",
                l.ring_bytes_per_uid.to_string(),
                format!("this uid's rings take {own_bytes} bytes, and the stream asks for {} more", options.capacity),
            );
        }
        if options.persist.is_some() {
            let persisted = self.streams.values().filter(|s| s.persist.is_some()).count();
            if persisted >= l.persisted_streams {
                return refuse("persisted_streams", l.persisted_streams.to_string(), format!("{persisted} persisted streams exist"));
            }
            let own = mine().filter(|s| s.persist.is_some()).count();
            if own >= l.persisted_streams_per_uid {
                return refuse("persisted_streams_per_uid", l.persisted_streams_per_uid.to_string(), format!("this uid created {own} of them"));
            }
        }
        Ok(())
    }

    /// [`Streams::create`] without the limits.
    fn create_unlimited(&mut self, name: &str, options: &StreamOptions) -> Result<&mut Stream, Refusal> {
        if let Some(s) = self.streams.get(name) {
            let have = s.options();
            let same = have.capacity == options.capacity
                && have.max_message_len == options.max_message_len
                && have.policy == options.policy
                && (options.persist.is_none() || have.persist == options.persist);
            if !same {
                return Err(Refusal::new(
                    ErrorCode::Exists,
                    format!("stream {name:?} exists with other options: {have:?}"),
                ));
            }
            return Ok(self.streams.get_mut(name).expect("checked"));
        }
        if let Some(d) = options.persist {
            // Overwrite is fine: the archiver's slot is a holding slot, so
            // publishers wait for it (only), and an overrun subscriber reads
            // what it missed from the log (Request::LogSegments).
            if u64::from(options.max_message_len) > (rill_store::MAX_BATCH_BYTES as u64) / 2 {
                let msg = format!("stream {name:?}: persisted messages are limited to {} bytes", rill_store::MAX_BATCH_BYTES / 2);
                return Err(Refusal::new(ErrorCode::Invalid, msg));
            }
            let has_log = self.data.as_ref().is_some_and(|d| d.open_dir(name).and_then(|s| s.open_file(META_FILE)).is_ok());
            if has_log {
                let msg = format!("stream {name:?} has a log in {} already but no ring; it is recovered at start", self.data_dir.display());
                return Err(Refusal::new(ErrorCode::Exists, msg));
            }
            self.create_ring(name, options)?;
            if let Err(msg) = self.start_archiving(name, d, None, None, None) {
                self.remove(name);
                return Err(Refusal::new(ErrorCode::Internal, format!("stream {name:?}: cannot persist: {msg}")));
            }
            return Ok(self.streams.get_mut(name).expect("created"));
        }
        self.create_ring(name, options)?;
        Ok(self.streams.get_mut(name).expect("created"))
    }

    /// Creates the ring of a new stream (and registers it).
    fn create_ring(&mut self, name: &str, options: &StreamOptions) -> Result<(), Refusal> {
        let config = RingConfig {
            capacity: options.capacity,
            max_message_len: options.max_message_len,
            policy: options.policy.into(),
            slot_count: self.slot_count,
            pages: if self.huge_pages { PagePreference::Auto } else { PagePreference::NormalOnly },
        };
        config.validate().map_err(|e| Refusal::new(ErrorCode::Invalid, e.to_string()))?;
        let (ring, files) = Ring::create_sealed(name, &config).map_err(|e| Refusal::new(ErrorCode::Internal, format!("creating stream {name:?}: {e}")))?;
        let keep = options.keep || options.persist.is_some();
        if let Err(e) = self.keeper.keep(name, keep, &files) {
            tracing::error!(stream = name, error = %e, "the ring keeper did not take the ring; it is lost if rilld dies before the keeper is restarted");
        }
        tracing::info!(stream = name, capacity = options.capacity, policy = ?options.policy, pages = %ring.pages(), "stream created");
        let owners = vec![SlotOwner::Free; self.slot_count as usize];
        self.insert(name.to_owned(), ring, files, keep, owners);
        Ok(())
    }

    /// Fds for a publisher: ring (rw), wake page, every slot page (ro),
    /// the daemon page (ro).
    pub fn publisher_fds(&self, name: &str) -> std::io::Result<Vec<OwnedFd>> {
        self.streams[name].files.for_publisher()
    }

    /// Fds for a subscriber: ring (ro), wake page, its own slot page (rw),
    /// the daemon page (ro).
    pub fn subscriber_fds(&self, name: &str, slot: u32) -> std::io::Result<Vec<OwnedFd>> {
        self.streams[name].files.for_subscriber(slot)
    }

    /// Attaches a subscriber for `process`; returns (slot, position).
    pub fn attach(&mut self, name: &str, start: Start, process: &Process) -> Result<(u32, u64), Refusal> {
        let s = self.require(name)?;
        let (slot, position) = s.ring.attach_subscriber(start, process.pid).map_err(|e| {
            let code = match e {
                rill_shm::ring::SubscribeError::Unsettled { .. } => ErrorCode::Busy,
                _ => ErrorCode::NoFreeSlot,
            };
            Refusal::new(code, format!("stream {name:?}: {e}"))
        })?;
        s.slot_process[slot as usize] = Some(process.clone());
        Ok((slot, position))
    }

    /// Janitor work: pads abandoned claims, frees adopted slots whose
    /// owners did not come back (or died), removes unused streams after
    /// the linger time. Returns how many things it did.
    pub fn tick(&mut self, now: Instant, now_ns: u64) -> usize {
        let mut work = 0;
        if self.keeper_retry_at.is_none_or(|t| now >= t) && !self.keeper.alive() {
            self.keeper_retry_at = Some(now + Duration::from_secs(1));
            tracing::error!("the ring keeper is gone (killed?); starting a new one and handing it every ring");
            let rings = self.streams.values().map(|s| (s.name.as_str(), s.keep, &s.files));
            if let Err(e) = self.keeper.restart(rings) {
                tracing::error!(error = %e, "cannot restart the ring keeper; rings are lost if rilld dies");
            }
            work += 1;
        }
        let mut remove = Vec::new();
        for s in self.streams.values_mut() {
            if s.reclaimer.do_work(now_ns) > 0 {
                work += 1;
            }
            for slot in s.ring.free_revoked_slots() {
                // Out of use after a failed renewal, its owner now gone.
                s.renew_slot(slot);
                work += 1;
            }
            let subscribers = s.ring.subscribers();
            // Only the archiver may hold an overwrite stream's publishers
            // back; a client that marked its own slot holding (it can write
            // its slot page) loses the slot.
            for x in subscribers.iter().filter(|x| x.holding) {
                if matches!(s.owners[x.index as usize], SlotOwner::Client { .. }) {
                    tracing::warn!(stream = %s.name, slot = x.index, pid = x.pid, "a client made its slot a holding slot; taking it back");
                    s.free_slot(x.index, true);
                    work += 1;
                }
            }
            work += s.revoke_stalled(&subscribers, now, self.stall_limit);
            for i in 0..s.owners.len() {
                if let SlotOwner::Adopted { deadline } = s.owners[i] {
                    let pid = subscribers.iter().find(|x| x.index == i as u32).map(|x| x.pid);
                    let dead = match &s.slot_process[i] {
                        Some(p) => pid.is_none() || !p.alive(),
                        None => pid.is_none_or(|p| p != 0 && !rill_shm::os::pid_alive(p)),
                    };
                    if dead || now >= deadline {
                        tracing::info!(stream = %s.name, slot = i, ?pid, dead, "freeing adopted slot whose owner did not come back");
                        s.free_slot(i as u32, true);
                        work += 1;
                    }
                }
            }
            if let Some(ExclusiveHolder::Detached { process }) = &s.exclusive {
                if !process.alive() {
                    tracing::info!(stream = %s.name, pid = process.pid, "exclusive publisher's process is gone; stream open to publishers again");
                    s.set_exclusive(None);
                    work += 1;
                }
            }
            let resuming = s.resume_until.is_some_and(|t| now < t);
            if s.in_use() || s.keep || resuming {
                s.idle_since = None;
            } else {
                let since = *s.idle_since.get_or_insert(now);
                if now.duration_since(since) >= self.linger {
                    remove.push(s.name.clone());
                }
            }
        }
        for name in remove {
            self.remove(&name);
            work += 1;
        }
        work
    }

    /// Removes a stream and lets its ring go (never its log).
    pub fn remove(&mut self, name: &str) {
        let Some(s) = self.streams.remove(name) else { return };
        if s.persist.is_some() {
            self.archiver.remove(name);
        }
        if let Err(e) = self.keeper.forget(name) {
            tracing::warn!(stream = name, error = %e, "could not tell the ring keeper to let the ring go");
        }
        tracing::info!(stream = name, "removed unused stream");
    }
}
