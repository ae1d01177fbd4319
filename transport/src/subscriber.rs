//! [`Subscriber`]: reads a stream's messages in order, from its own slot.
//!
//! The daemon maps the ring read-only for a subscriber and hands it
//! write access to its own slot page only (its position) and to the wake
//! page (so it can sleep on the futex and be woken). Reads are zero-copy
//! on a back-pressure stream: the handler gets `&[u8]` into the ring, valid
//! for the call. On an overwrite stream each frame is copied out and
//! validated first, and a subscriber that falls a ring behind is moved to
//! the oldest intact message ([`overrun_bytes`](Subscriber::overrun_bytes)
//! counts what it lost); it never sees torn data.
//!
//! A subscriber is owned by one thread (`&mut self` methods) and may be
//! moved between threads. `poll` and the typed `poll_typed` never block;
//! `poll_blocking` and the `recv*` methods sleep on the ring's futex until a
//! publisher commits or the timeout passes. Nothing here talks to the
//! daemon, so reading goes on while the daemon restarts.

use crate::client::HandleGuard;
use crate::protocol::StreamInfo;
use crate::replay::Replay;
use crate::typed::{self, Decode, DecodeError, DecodeOwned, RecvError, TypedMessage};
use rill_shm::ring::{Message, PollError, Ring};
use rkyv::util::AlignedVec;
use std::time::{Duration, Instant};

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
    // Last: the slot is released before the daemon hears `Close`.
    guard: HandleGuard,
}

/// Where messages come from: the log on disk first (a replay), then the
/// ring, skipping what lies before the start asked for.
#[derive(Debug)]
struct Source {
    inner: rill_shm::ring::Subscriber,
    replay: Option<Replay>,
    /// Ring messages before this position are passed over.
    skip_before: u64,
}

impl Source {
    fn poll<F: FnMut(Message<'_>)>(&mut self, limit: usize, handler: &mut F) -> Result<usize, PollError> {
        if let Some(r) = &mut self.replay {
            let (n, done) = r.poll(limit, handler)?;
            if done {
                self.replay = None;
            }
            if n > 0 || !done {
                return Ok(n);
            }
        }
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

    fn poll_blocking<F: FnMut(Message<'_>)>(&mut self, limit: usize, handler: &mut F, deadline: Instant) -> Result<usize, PollError> {
        loop {
            if self.replay.is_some() || self.skip_before > self.inner.position() {
                let n = self.poll(limit, handler)?;
                if n > 0 {
                    return Ok(n);
                }
                if self.replay.is_some() {
                    continue;
                }
                if Instant::now() >= deadline {
                    return Ok(0);
                }
                // Skipping in the ring: wait for more, then filter again.
                if !self.inner.has_data() {
                    self.inner.sleep(deadline.saturating_duration_since(Instant::now()));
                }
                continue;
            }
            return self.inner.poll_blocking(limit, handler, deadline);
        }
    }
}

impl Subscriber {
    pub(crate) fn new(
        inner: rill_shm::ring::Subscriber,
        info: StreamInfo,
        guard: HandleGuard,
        replay: Option<Replay>,
        skip_before: u64,
    ) -> Self {
        Subscriber { src: Source { inner, replay, skip_before }, scratch: AlignedVec::new(), info, guard }
    }

    /// Whether this subscriber is still reading the stream's log from disk
    /// (it started before what the ring holds), before the live ring.
    pub fn is_replaying(&self) -> bool {
        self.src.replay.is_some()
    }

    /// Hands up to `limit` messages, in order, to `handler`; returns how
    /// many. Never blocks.
    #[inline]
    pub fn poll<F: FnMut(Message<'_>)>(&mut self, limit: usize, mut handler: F) -> Result<usize, PollError> {
        self.src.poll(limit, &mut handler)
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
        self.src.poll_blocking(limit, &mut handler, Instant::now() + timeout)
    }

    /// Waits up to `timeout` for the next message and returns what `f`
    /// makes of it (`f` borrows the message in place); `None` on timeout.
    pub fn recv_with<R>(&mut self, timeout: Duration, f: impl FnOnce(Message<'_>) -> R) -> Result<Option<R>, PollError> {
        let mut f = Some(f);
        let mut out = None;
        self.src.poll_blocking(
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
    /// validated in place (see [`crate::typed`]); a message that does not
    /// validate is handed as `Err` and passed over. Never blocks.
    pub fn poll_typed<T, F>(&mut self, limit: usize, mut handler: F) -> Result<usize, PollError>
    where
        T: Decode,
        F: FnMut(Result<TypedMessage<'_, T>, DecodeError>),
    {
        let scratch = &mut self.scratch;
        self.src.poll(limit, &mut |m| handler(decode::<T>(&m, scratch)))
    }

    /// Waits up to `timeout` for the next message, validates it as an
    /// archived `T` in place, and returns what `f` makes of it; `None` on
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
            1,
            &mut |m| out = Some(decode::<T>(&m, scratch).map(|t| f.take().map(|f| f(t)))),
            Instant::now() + timeout,
        )?;
        Ok(out.transpose()?.flatten())
    }

    /// Whether a message (or an overrun) is waiting.
    pub fn has_data(&self) -> bool {
        self.src.inner.has_data()
    }

    /// The next position this subscriber reads.
    pub fn position(&self) -> u64 {
        self.src.inner.position()
    }

    /// Bytes lost to overruns (overwrite streams only) since it opened.
    pub fn overrun_bytes(&self) -> u64 {
        self.src.inner.overrun_bytes()
    }

    /// Bytes of padding frames passed over since it opened (wrap padding,
    /// and claims abandoned by dead publishers that the daemon padded).
    /// From the start position `s`: `position() - s` = the frame spans of
    /// the messages handed out + `padding_bytes()` + `overrun_bytes()`.
    pub fn padding_bytes(&self) -> u64 {
        self.src.inner.padding_bytes()
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
