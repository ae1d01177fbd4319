//! [`Subscriber`]: reads a stream's messages in order, from its own slot.
//!
//! The daemon maps the ring read-only for a subscriber and hands it
//! write access to its own slot page only (its position) and to the wake
//! page (so it can sleep on the futex and be woken). Reads are zero-copy
//! on a back-pressure stream whose publishers it trusts: the handler gets
//! `&[u8]` into the ring, valid for the call (see [Reading memory
//! publishers write](#reading-memory-publishers-write)). On an overwrite
//! stream each frame is copied out and validated first, and a subscriber that falls a ring behind is moved to
//! the oldest intact message ([`overrun_bytes`](Subscriber::overrun_bytes)
//! counts what it lost); it never sees torn data.
//!
//! On a *persisted* overwrite stream nothing is lost: rilld's archiver holds
//! the publishers back until frames are on disk (a holding slot), so a
//! subscriber overrun at position `p` reads the stream's log from `p` (the
//! segment files, `Request::LogSegments`), then goes back to the ring where
//! the log ends; the messages come in order, each exactly once.
//! [`recovered_overruns`](Subscriber::recovered_overruns) counts those
//! detours.
//!
//! ```no_run
//! use rill::{Client, Durability, Policy, Start, StreamOptions};
//!
//! let client = Client::connect()?;
//! let options = StreamOptions::new().with_policy(Policy::Overwrite).with_persist(Some(Durability::None));
//! let mut slow = client.subscriber_with("ticks", Start::Latest, options)?;
//! loop {
//!     slow.poll(64, |m| std::thread::sleep(std::time::Duration::from_millis(1)))?;
//!     // Publishers never wait for `slow`; it never loses a message either.
//!     assert_eq!(slow.overrun_bytes(), 0);
//! #   break;
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Reading memory publishers write
//! Every publisher of a stream maps its ring writable, so it can write any
//! byte of it at any time, not only its own claims. Honest ones never
//! write a message others may still read; a hostile one (a process of
//! another uid that rilld lets publish to the stream) can change a payload
//! while a handler reads it in place. So a subscriber reads in one of two
//! [`ReadMode`]s: in place (no copy), or from a copy it makes first. rilld
//! tells it at attach time whether every uid that may publish to the
//! stream is one it trusts (its own; root and rilld's uid unless rilld
//! runs with `trust_root = false`); if so it reads in place, else from
//! copies. [`Subscriber::set_read_mode`] overrides that. An ordinary
//! subscriber of an overwrite stream copies in either mode (the seqlock
//! read above).
//!
//! A subscriber is owned by one thread (`&mut self` methods) and may be
//! moved between threads. `poll` and the typed `poll_typed` never block;
//! `poll_blocking` and the `recv*` methods sleep on the ring's futex until a
//! publisher commits or the timeout passes. Nothing here talks to the
//! daemon except that detour to the log, so reading goes on while the
//! daemon restarts (a subscriber that needs the log meanwhile waits for it:
//! its polls hand out nothing until rilld answers).

use crate::client::HandleGuard;
use crate::protocol::StreamInfo;
use crate::error::ClientError;
use crate::protocol::{ErrorCode, Policy};
use crate::replay::{LogReader, LogState};
use crate::typed::{self, Decode, DecodeError, DecodeOwned, RecvError, TypedMessage};
use rill_shm::ring::{Message, PollError, Ring};
use rkyv::util::AlignedVec;
use std::time::{Duration, Instant};

/// How a [`Subscriber`] reads payloads out of the ring (see the [module
/// docs](self#reading-memory-publishers-write)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Handlers get each payload where it lies in the ring, and typed
    /// reads validate it there: no copy. Sound while every publisher is
    /// honest: one that is not can change a payload while it is read,
    /// and an archive after bytecheck validated it (a string's length,
    /// an offset), so that reading it goes out of bounds.
    InPlace,
    /// Each payload is first copied out of the ring with atomic word
    /// loads into the subscriber's own 32-byte aligned buffer; handlers
    /// and typed reads get the copy, which nobody else can change. A
    /// publisher writing meanwhile can make the copy torn or bogus (a
    /// typed read then reports a [`DecodeError`]), never change it once
    /// validated. Costs one copy per message.
    Copied,
}

/// Reads one stream. See the [module docs](self).
///
/// ```no_run
/// use rill::{Client, Start};
/// use std::time::Duration;
///
/// let client = rill::Client::connect()?;
/// let mut subscriber = client.subscriber("prices", Start::Latest)?;
/// // Non-blocking, zero-copy, up to 64 messages:
/// subscriber.poll(64, |m| println!("{} bytes at {}", m.payload.len(), m.position))?;
/// // Blocking, one message, borrowed in place:
/// let len = subscriber.recv_with(Duration::from_secs(1), |m| m.payload.len())?;
/// # let _ = len;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Subscriber {
    src: Source,
    /// Aligned copy for typed reads of misaligned payloads (see `typed`).
    scratch: AlignedVec,
    info: StreamInfo,
    mode: ReadMode,
    // Last: the slot is released before the daemon hears `Close`.
    guard: HandleGuard,
}

/// Where messages come from: the log on disk (a replay, first; later, on a
/// persisted overwrite stream, whatever publishers overwrote before it was
/// read), then the ring, skipping what lies before the start asked for.
#[derive(Debug)]
struct Source {
    inner: rill_shm::ring::Subscriber,
    log: Option<LogReader>,
    /// Ring messages before this position are passed over.
    skip_before: u64,
    /// Padding frames read from the log.
    log_padding: u64,
    /// A persisted overwrite stream: overruns continue from its log.
    resume: Option<Resume>,
}

/// Continuing from the log after overruns (persisted overwrite streams).
#[derive(Debug)]
struct Resume {
    stream: String,
    /// Overruns continued from the log.
    overruns: u64,
    /// Stream bytes read from the log after overruns.
    bytes: u64,
    /// Where the continuation being read started.
    from: u64,
    /// A continuation from here found nothing more on disk: if the ring
    /// has lost this position again, the log cannot have it.
    stalled_at: Option<u64>,
    /// rilld could not be reached: not asked again before then.
    retry_at: Option<Instant>,
}

/// Most rounds of log, ring, log... in one poll (bounds its work).
const MAX_ROUNDS: usize = 4;
/// Wait before asking an unreachable rilld for the log again.
const LOG_RETRY: Duration = Duration::from_millis(20);

impl Source {
    fn position(&self) -> u64 {
        self.log.as_ref().map_or_else(|| self.inner.position(), LogReader::position)
    }

    fn poll<F: FnMut(Message<'_>)>(&mut self, guard: &HandleGuard, limit: usize, handler: &mut F) -> Result<usize, PollError> {
        let mut n = 0;
        for _ in 0..MAX_ROUNDS {
            if let Some(log) = &mut self.log {
                let (k, state) = log.poll(limit - n, handler)?;
                n += k;
                match state {
                    LogState::More => return Ok(n),
                    LogState::Done => self.finish_log(false),
                    LogState::End => self.finish_log(true),
                }
            }
            if n >= limit {
                return Ok(n);
            }
            n += self.poll_ring(limit - n, handler)?;
            let Some(at) = self.inner.overrun_at() else { return Ok(n) };
            if n >= limit || !self.fetch_log(guard, at)? {
                return Ok(n);
            }
        }
        Ok(n)
    }

    fn poll_ring<F: FnMut(Message<'_>)>(&mut self, limit: usize, handler: &mut F) -> Result<usize, PollError> {
        if self.skip_before > self.inner.position() {
            let skip = self.skip_before;
            let mut n = 0;
            self.inner.poll(limit, |m| {
                if m.position >= skip {
                    n += 1;
                    handler(m);
                }
            })?;
            return Ok(n);
        }
        self.inner.poll(limit, handler)
    }

    /// The log reader is through: a replay hands over to the ring where
    /// the subscriber was attached; a continuation at the end of what is
    /// on disk, where the ring holds on (or, if publishers have lapped that
    /// too, the archiver has moved past it and the log holds more).
    fn finish_log(&mut self, continuation: bool) {
        let Some(log) = self.log.take() else { return };
        self.log_padding += log.padding_bytes();
        if continuation {
            let end = log.position();
            if let Some(r) = &mut self.resume {
                r.bytes += end - r.from;
                r.stalled_at = (end == r.from).then_some(end);
            }
            self.inner.seek(end);
        }
    }

    /// The ring lost what it held from `at` on before it was read: asks
    /// rilld for the log from there. Returns whether a log reader is set;
    /// `false` while rilld cannot be reached (the subscriber waits at `at`,
    /// and asks again a little later).
    fn fetch_log(&mut self, guard: &HandleGuard, at: u64) -> Result<bool, PollError> {
        let Some(r) = &mut self.resume else {
            unreachable!("only a persisted overwrite stream's subscriber stops on overruns")
        };
        if r.retry_at.is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        if r.stalled_at == Some(at) {
            // The archiver's slot holds publishers back, so whatever they
            // overwrite is on disk first: this is a lost archiver slot.
            let reason = "publishers overwrote the ring from here, and the stream's log ends here: the messages from here on are lost".into();
            return Err(PollError::Replay { position: at, reason });
        }
        match guard.log_segments(&r.stream, at) {
            Ok((log, files)) => {
                if r.retry_at.take().is_some() {
                    tracing::info!(stream = %r.stream, position = at, "rilld reachable again: reading the log");
                }
                r.overruns += 1;
                r.from = at;
                let segments = log.segments.iter().copied().zip(files).collect();
                let start = (log.start_offset, log.start_batch);
                self.log = Some(LogReader::continuation(segments, at, start, at.max(self.skip_before), log.archived));
                Ok(true)
            }
            Err(e) if matches!(e, ClientError::Connect { .. } | ClientError::Wire(_) | ClientError::TimedOut { .. })
                || e.code() == Some(ErrorCode::ShuttingDown) =>
            {
                if r.retry_at.is_none() {
                    tracing::warn!(stream = %r.stream, position = at, error = %e,
                        "overrun on a persisted stream, and rilld cannot be reached to read the log; waiting for it");
                }
                r.retry_at = Some(Instant::now() + LOG_RETRY);
                Ok(false)
            }
            Err(e) => Err(PollError::Replay { position: at, reason: format!("publishers overwrote the ring from here; reading the log: {e}") }),
        }
    }

    fn poll_blocking<F: FnMut(Message<'_>)>(
        &mut self,
        guard: &HandleGuard,
        limit: usize,
        handler: &mut F,
        deadline: Instant,
    ) -> Result<usize, PollError> {
        if limit == 0 {
            return Ok(0);
        }
        loop {
            let off_ring = self.log.is_some() || self.inner.overrun_at().is_some();
            if off_ring || self.skip_before > self.inner.position() {
                let n = self.poll(guard, limit, handler)?;
                if n > 0 {
                    return Ok(n);
                }
                let now = Instant::now();
                if now >= deadline {
                    return Ok(0);
                }
                if let Some(t) = self.resume.as_ref().and_then(|r| r.retry_at).filter(|_| self.inner.overrun_at().is_some()) {
                    // Waiting for rilld to read the log.
                    std::thread::sleep(t.min(deadline).saturating_duration_since(now));
                    continue;
                }
                if self.log.is_some() || self.inner.overrun_at().is_some() {
                    continue;
                }
                // Skipping in the ring: wait for more, then filter again.
                if !self.inner.has_data() {
                    self.inner.sleep(deadline.saturating_duration_since(Instant::now()));
                }
                continue;
            }
            let n = self.inner.poll_blocking(limit, &mut *handler, deadline)?;
            if n > 0 || self.inner.overrun_at().is_none() {
                return Ok(n);
            }
        }
    }
}

impl Subscriber {
    pub(crate) fn new(
        mut inner: rill_shm::ring::Subscriber,
        info: StreamInfo,
        guard: HandleGuard,
        replay: Option<LogReader>,
        skip_before: u64,
        mode: ReadMode,
    ) -> Self {
        inner.set_copy_payloads(mode == ReadMode::Copied);
        let resume = (info.persist.is_some() && info.policy == Policy::Overwrite).then(|| {
            inner.set_stop_on_overrun(true);
            Resume { stream: info.name.clone(), overruns: 0, bytes: 0, from: 0, stalled_at: None, retry_at: None }
        });
        let src = Source { inner, log: replay, skip_before, log_padding: 0, resume };
        Subscriber { src, scratch: AlignedVec::new(), info, mode, guard }
    }

    /// How payloads are read: [`ReadMode::Copied`] by default where rilld
    /// said, at attach time, that a uid this process does not trust may
    /// publish to the stream, else [`ReadMode::InPlace`].
    pub fn read_mode(&self) -> ReadMode {
        self.mode
    }

    /// Overrides the [`read_mode`](Self::read_mode), for the reads from
    /// now on.
    pub fn set_read_mode(&mut self, mode: ReadMode) {
        self.mode = mode;
        self.src.inner.set_copy_payloads(mode == ReadMode::Copied);
    }

    /// Whether this subscriber is reading the stream's log from disk: a
    /// replay (it started before what the ring holds), or, on a persisted
    /// overwrite stream, what publishers overwrote before it was read.
    pub fn is_replaying(&self) -> bool {
        self.src.log.is_some()
    }

    /// Hands up to `limit` messages, in order, to `handler`; returns how
    /// many. Never blocks.
    #[inline]
    pub fn poll<F: FnMut(Message<'_>)>(&mut self, limit: usize, mut handler: F) -> Result<usize, PollError> {
        self.src.poll(&self.guard, limit, &mut handler)
    }

    /// How long the blocking calls (`poll_blocking`, `recv*`) spin for a
    /// message before sleeping on the ring's futex: 50 us by default, which
    /// keeps a streaming subscriber off the futex; `Duration::ZERO` sleeps
    /// at once and leaves the core to others (each wake-up then costs the
    /// kernel's futex round trip).
    pub fn set_spin_before_sleep(&mut self, spin: Duration) {
        self.src.inner.set_spin_before_sleep(spin);
    }

    /// Like [`poll`](Self::poll), but sleeps on the ring's futex until at
    /// least one message arrives or `timeout` passes (then returns 0).
    pub fn poll_blocking<F: FnMut(Message<'_>)>(
        &mut self,
        limit: usize,
        timeout: Duration,
        mut handler: F,
    ) -> Result<usize, PollError> {
        self.src.poll_blocking(&self.guard, limit, &mut handler, Instant::now() + timeout)
    }

    /// Waits up to `timeout` for the next message and returns what `f`
    /// makes of it (`f` borrows the message in place); `None` on timeout.
    pub fn recv_with<R>(&mut self, timeout: Duration, f: impl FnOnce(Message<'_>) -> R) -> Result<Option<R>, PollError> {
        let mut f = Some(f);
        let mut out = None;
        self.src.poll_blocking(
            &self.guard,
            1,
            &mut |m| {
                if let Some(f) = f.take() {
                    out = Some(f(m));
                }
            },
            Instant::now() + timeout,
        )?;
        Ok(out)
    }

    /// Waits up to `timeout` for the next message and copies it out;
    /// `None` on timeout.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, PollError> {
        self.recv_with(timeout, |m| m.payload.to_vec())
    }

    /// Hands up to `limit` messages to `handler` as archived `T`, each
    /// validated where it is read (in the ring or in a copy, see
    /// [`ReadMode`] and [`crate::typed`]); a message that does not validate
    /// is handed as `Err` and passed over. Never blocks.
    pub fn poll_typed<T, F>(&mut self, limit: usize, mut handler: F) -> Result<usize, PollError>
    where
        T: Decode,
        F: FnMut(Result<TypedMessage<'_, T>, DecodeError>),
    {
        let scratch = &mut self.scratch;
        self.src.poll(&self.guard, limit, &mut |m| handler(decode::<T>(&m, scratch)))
    }

    /// Waits up to `timeout` for the next message, validates it as an
    /// archived `T` (see [`ReadMode`]), and returns what `f` makes of it; `None` on
    /// timeout. A message that does not validate is an error, and is passed
    /// over.
    pub fn recv_typed_with<T: Decode, R>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(&T::Archived) -> R,
    ) -> Result<Option<R>, RecvError> {
        self.recv_decoded::<T, _>(timeout, |t| f(t.value))
    }

    /// Waits up to `timeout` for the next message and deserializes it into
    /// an owned `T` (after validating it); `None` on timeout.
    pub fn recv_typed<T: DecodeOwned>(&mut self, timeout: Duration) -> Result<Option<T>, RecvError> {
        let got = self.recv_decoded::<T, _>(timeout, |t| {
            rkyv::deserialize::<T, rkyv::rancor::Error>(t.value).map_err(|error| DecodeError { position: t.position, error })
        })?;
        Ok(got.transpose()?)
    }

    /// One message, validated as `T`, handed to `f`.
    fn recv_decoded<T: Decode, R>(
        &mut self,
        timeout: Duration,
        f: impl FnOnce(TypedMessage<'_, T>) -> R,
    ) -> Result<Option<R>, RecvError> {
        let scratch = &mut self.scratch;
        let mut f = Some(f);
        let mut out = None;
        self.src.poll_blocking(
            &self.guard,
            1,
            &mut |m| out = Some(decode::<T>(&m, scratch).map(|t| f.take().map(|f| f(t)))),
            Instant::now() + timeout,
        )?;
        Ok(out.transpose()?.flatten())
    }

    /// Whether a message (or an overrun) is waiting.
    pub fn has_data(&self) -> bool {
        self.src.log.is_some() || self.src.inner.has_data()
    }

    /// The next position this subscriber reads (in the log while
    /// [`is_replaying`](Self::is_replaying)).
    pub fn position(&self) -> u64 {
        self.src.position()
    }

    /// Bytes lost to overruns since it opened: on an overwrite stream that
    /// is not persisted, what publishers overwrote before this subscriber
    /// read it (it is moved on to the oldest message still intact). Always
    /// 0 on a persisted overwrite stream: there an overrun at position `p`
    /// is continued from the stream's log on disk, from `p` on, without a
    /// gap or a duplicate (see [`recovered_overruns`](Self::recovered_overruns));
    /// the poll that meets it asks rilld for the segment files (one round
    /// trip, and a wait while rilld cannot be reached), and a poll fails
    /// with [`PollError::Replay`] only if the log no longer holds `p`
    /// (deleted by retention, or damaged).
    pub fn overrun_bytes(&self) -> u64 {
        self.src.inner.overrun_bytes()
    }

    /// Persisted overwrite streams: how often publishers overran this
    /// subscriber and it continued from the stream's log.
    pub fn recovered_overruns(&self) -> u64 {
        self.src.resume.as_ref().map_or(0, |r| r.overruns)
    }

    /// Persisted overwrite streams: stream bytes read from the log after
    /// overruns (what a subscriber of an unpersisted stream would have
    /// lost).
    pub fn recovered_bytes(&self) -> u64 {
        let reading = match (&self.src.resume, &self.src.log) {
            (Some(r), Some(log)) if self.src.inner.overrun_at().is_some() => log.position() - r.from,
            _ => 0,
        };
        self.src.resume.as_ref().map_or(0, |r| r.bytes) + reading
    }

    /// Bytes of padding frames passed over since it opened (wrap padding,
    /// and claims abandoned by dead publishers that the daemon padded), in
    /// the ring and in the log. From the start position `s`: `position() -
    /// s` = the frame spans of the messages handed out + `padding_bytes()`
    /// + `overrun_bytes()`.
    pub fn padding_bytes(&self) -> u64 {
        let reading = self.src.log.as_ref().map_or(0, LogReader::padding_bytes);
        self.src.inner.padding_bytes() + self.src.log_padding + reading
    }

    /// This subscriber's slot in the ring.
    pub fn slot(&self) -> u32 {
        self.src.inner.slot().expect("a daemon subscriber always has a slot")
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.info.name
    }

    /// The stream as the daemon described it when this subscriber opened
    /// (counters in it are not updated).
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// The ring (tail, durable position).
    pub fn ring(&self) -> &Ring {
        self.src.inner.ring()
    }

    /// The daemon's id for this subscriber on the current connection;
    /// `None` if a restarted daemon did not take it back at the last
    /// resume.
    pub fn daemon_handle(&self) -> Option<u64> {
        self.guard.daemon_handle()
    }
}

fn decode<'a, T: Decode>(m: &Message<'a>, scratch: &'a mut AlignedVec) -> Result<TypedMessage<'a, T>, DecodeError> {
    match typed::access::<T>(m.payload, scratch) {
        Ok(value) => Ok(TypedMessage { value, position: m.position, timestamp_ns: m.timestamp_ns, publisher_id: m.publisher_id }),
        Err(error) => Err(DecodeError { position: m.position, error }),
    }
}
