//! [`Publisher`]: writes messages into a stream's ring.
//!
//! A publisher is a publication on the daemon's ring plus the handle that
//! keeps the daemon informed. It is owned by one thread (`&mut self`
//! methods) and may be moved between threads. Two kinds:
//!
//! * [`Publisher`] (`Publisher<Shared>`, from [`Client::publisher`](crate::Client::publisher)): one of
//!   any number of publishers on the stream, in any processes; each claim
//!   is a compare-and-swap on the ring's tail.
//! * [`ExclusivePublisher`] (`Publisher<Exclusive>`, from
//!   [`Client::exclusive_publisher`](crate::Client::exclusive_publisher)): the stream's only publisher, granted
//!   by rilld, which refuses other publishers meanwhile. Claims are plain
//!   stores, the fastest path the ring has (about 1.6x the shared one's
//!   throughput for small messages). Use it for the usual single-writer
//!   stream of a pipeline stage.
//!
//! Every method here works on shared memory only: no system call, lock or
//! allocation per message (a `FUTEX_WAKE` when a subscriber sleeps, and
//! the typed buffer's growth up to the largest message, aside), and nothing
//! talks to the daemon, so publishing goes on while the daemon restarts.
//! One exception, off the fast path: when a subscriber slot got a fresh
//! page (rilld gives every slot one when its subscriber leaves, so that no
//! former subscriber can write the next one's slot), the publisher's next
//! limit check comes back back-pressured, and the publisher asks rilld for
//! the new pages (`Request::SlotPages`) before it goes on.
//! When the ring is full (back-pressure policy: the slowest subscriber is a
//! ring behind) `offer` returns [`ClaimError::BackPressured`] at once; the
//! `_blocking` variants wait, idling with a backoff, until a timeout.

use crate::client::HandleGuard;
use crate::protocol::StreamInfo;
use crate::typed::{self, Encode, SendError};
use rill_shm::idle::Backoff;
use rill_shm::ring::{ClaimError, ClaimMode, Exclusive, Publication, Ring, Shared};
use rkyv::util::AlignedVec;
use std::time::{Duration, Instant};

/// Space claimed in the ring for one message, to be written in place and
/// then committed ([`Claim::commit`](rill_shm::ring::Claim::commit));
/// dropping it uncommitted turns it into padding.
pub type Claim<'a, M = Shared> = rill_shm::ring::Claim<'a, M>;

/// How long [`Publisher::wait_durable`] spins before it sleeps.
const DURABLE_SPIN: Duration = Duration::from_micros(5);

/// Why [`Publisher::wait_durable`] returned without durability.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurableError {
    /// The stream is not persisted: nothing will ever be durable.
    #[error("stream {stream:?} is not persisted (create it with StreamOptions::with_persist)")]
    NotPersisted {
        /// The stream.
        stream: String,
    },
    /// The timeout passed first (the archiver is behind, stopped on an
    /// error — see `StreamInfo::archive_error` — or the daemon is down).
    #[error("position {position} not durable in time (durable up to {durable})")]
    TimedOut {
        /// The position waited for.
        position: u64,
        /// The durable position at the deadline.
        durable: u64,
    },
    /// The message at `position` was never published: its publisher took
    /// longer between claim and commit than the daemon's unblock timeout,
    /// so the daemon padded over the claim (see `rilld --unblock-timeout-ms`)
    /// and what is durable there is padding. Publish it again.
    #[error("the message at position {position} was padded over (its claim outlived the daemon's unblock timeout): it was never published")]
    Lost {
        /// The position waited for.
        position: u64,
    },
}

/// The stream's only publisher: see the [module docs](self).
///
/// ```no_run
/// let client = rill::Client::connect()?;
/// let mut publisher = client.exclusive_publisher("ticks")?; // Busy if others publish
/// publisher.offer(b"tick")?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type ExclusivePublisher = Publisher<Exclusive>;

/// Publishes messages on one stream. See the [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
///
/// let client = rill::Client::connect()?;
/// let mut publisher = client.publisher("prices")?;
/// let position = publisher.offer(b"ACME 101.5")?; // or Err(BackPressured)
/// publisher.offer_blocking(b"ACME 101.6", Duration::from_millis(100))?;
/// let mut claim = publisher.try_claim(4)?;        // write in place
/// claim.buf().copy_from_slice(b"ping");
/// claim.commit()?;
/// # let _ = position;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Publisher<M: ClaimMode = Shared> {
    publication: Publication<M>,
    /// Reused serialization buffer of `send`.
    buf: AlignedVec,
    idle: Backoff,
    info: StreamInfo,
    /// After a failed attempt to map fresh slot pages (rilld down, say):
    /// not again before this.
    remap_after: Option<Instant>,
    // Last: the publication is gone before the daemon hears `Close`.
    guard: HandleGuard,
}

impl<M: ClaimMode> Publisher<M> {
    pub(crate) fn new(publication: Publication<M>, info: StreamInfo, guard: HandleGuard) -> Self {
        Publisher { publication, buf: AlignedVec::new(), idle: Backoff::default(), info, remap_after: None, guard }
    }

    /// Writes `payload` as one message; returns its stream position.
    /// Never blocks: [`ClaimError::BackPressured`] when the ring is full.
    #[inline]
    pub fn offer(&mut self, payload: &[u8]) -> Result<u64, ClaimError> {
        match self.publication.offer(payload) {
            Err(ClaimError::BackPressured) if self.remap_stale_slots() => self.publication.offer(payload),
            other => other,
        }
    }

    /// Like [`offer`](Self::offer), but waits up to `timeout` while
    /// back-pressured ([`ClaimError::TimedOut`] after that).
    pub fn offer_blocking(&mut self, payload: &[u8], timeout: Duration) -> Result<u64, ClaimError> {
        self.offer_until(payload, Instant::now() + timeout)
    }

    fn offer_until(&mut self, payload: &[u8], deadline: Instant) -> Result<u64, ClaimError> {
        use rill_shm::idle::IdleStrategy;
        self.idle.reset();
        loop {
            match self.offer(payload) {
                Err(ClaimError::BackPressured) if Instant::now() < deadline => self.idle.idle(0),
                Err(ClaimError::BackPressured) => return Err(ClaimError::TimedOut),
                other => return other,
            }
        }
    }

    /// If subscriber slots got fresh pages since this publisher mapped
    /// its slot pages (a subscriber left), maps the new ones, from rilld;
    /// returns whether it did (then its next claim looks at them).
    #[cold]
    #[inline(never)]
    fn remap_stale_slots(&mut self) -> bool {
        let ring = self.publication.ring();
        if !ring.slots_stale() || self.remap_after.is_some_and(|t| Instant::now() < t) {
            return false;
        }
        let result = match self.guard.slot_pages() {
            Ok(Some((epoch, fds))) => ring.remap_slot_pages(&fds, epoch).map_err(|e| e.to_string()),
            Ok(None) => Err("rilld no longer knows this publisher".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        match result {
            Ok(()) => {
                self.remap_after = None;
                true
            }
            Err(e) => {
                tracing::debug!(stream = %self.info.name, error = %e, "cannot map the stream's fresh slot pages yet; back-pressured until then");
                self.remap_after = Some(Instant::now() + Duration::from_millis(10));
                false
            }
        }
    }

    /// Claims `len` bytes to be written in place. Never blocks.
    #[inline]
    pub fn try_claim(&mut self, len: usize) -> Result<Claim<'_, M>, ClaimError> {
        if self.publication.ring().slots_stale() {
            self.remap_stale_slots();
        }
        self.publication.try_claim(len)
    }

    /// Serializes `value` with rkyv and publishes it as one message (see
    /// [`crate::typed`] for the one copy it makes). Never blocks.
    pub fn send<T: Encode>(&mut self, value: &T) -> Result<u64, SendError> {
        let len = typed::encode(value, &mut self.buf).map_err(SendError::Encode)?.len();
        let buf = std::mem::take(&mut self.buf);
        let result = self.offer(&buf[..len]);
        self.buf = buf;
        Ok(result?)
    }

    /// Like [`send`](Self::send), but waits up to `timeout` while
    /// back-pressured. Serializes once, however long it waits.
    pub fn send_blocking<T: Encode>(&mut self, value: &T, timeout: Duration) -> Result<u64, SendError> {
        let deadline = Instant::now() + timeout;
        let len = typed::encode(value, &mut self.buf).map_err(SendError::Encode)?.len();
        let buf = std::mem::take(&mut self.buf);
        let result = self.offer_until(&buf[..len], deadline);
        self.buf = buf;
        Ok(result?)
    }

    /// Waits until the stream is durable past `position` (a position
    /// [`offer`](Self::offer) or [`send`](Self::send) returned): the
    /// daemon's archiver has written that message, and synced it as the
    /// stream's durability says (see [`Durability`](crate::Durability)).
    /// Returns the durable position. It spins briefly, then sleeps on a
    /// futex in the ring that the archiver wakes when the durable position
    /// moves: a sync takes a hundred microseconds or more, and spinning
    /// waiters would take the CPU the kernel needs to finish it. A stream
    /// that is not persisted is an error at once. A message whose claim
    /// the daemon padded over (its publisher stalled between claim and
    /// commit past the unblock timeout) is [`DurableError::Lost`], never
    /// acknowledged.
    ///
    /// ```no_run
    /// use rill::{Client, Durability, StreamOptions};
    /// use std::time::Duration;
    ///
    /// let client = Client::connect()?;
    /// let options = StreamOptions::new().with_persist(Some(Durability::Always));
    /// let mut publisher = client.publisher_with("audit", options)?;
    /// let position = publisher.offer(b"transfer 100 EUR")?;
    /// publisher.wait_durable(position, Duration::from_secs(1))?; // on disk, synced
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait_durable(&self, position: u64, timeout: Duration) -> Result<u64, DurableError> {
        if self.info.persist.is_none() {
            return Err(DurableError::NotPersisted { stream: self.info.name.clone() });
        }
        let ring = self.publication.ring();
        let durable = ring.wait_durable(position, DURABLE_SPIN, timeout).map_err(|durable| DurableError::TimedOut { position, durable })?;
        // A claim padded over by the daemon is durable as padding: not an
        // acknowledgement of the message. (The archiver holds the frame in
        // the ring until it is durable, so it is normally still there to
        // look at; if publishers lapped it since, nothing can be told.)
        if ring.is_padding_at(position) == Some(true) {
            return Err(DurableError::Lost { position });
        }
        Ok(durable)
    }

    /// Whether this is the stream's exclusive publisher.
    pub fn is_exclusive(&self) -> bool {
        !M::SHARED
    }

    /// The stream's tail: the end of the newest message claimed by any
    /// publisher, so every message this publisher committed so far lies
    /// before it.
    pub fn position(&self) -> u64 {
        self.publication.ring().tail()
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.info.name
    }

    /// The stream as the daemon described it when this publisher opened
    /// (counters in it are not updated).
    pub fn info(&self) -> &StreamInfo {
        &self.info
    }

    /// Largest payload this stream takes.
    pub fn max_message_len(&self) -> usize {
        self.info.max_message_len as usize
    }

    /// This publisher's id, written into each of its frames.
    pub fn id(&self) -> u32 {
        self.publication.id()
    }

    /// The ring (for durable/replicated positions and slot inspection).
    pub fn ring(&self) -> &Ring {
        self.publication.ring()
    }

    /// The underlying publication, for batches
    /// ([`try_claim_batch`](rill_shm::ring::Publication::try_claim_batch))
    /// and timestamp control. (It never asks rilld for fresh slot pages:
    /// after a subscriber left it may stay back-pressured until an
    /// [`offer`](Self::offer) or [`try_claim`](Self::try_claim) of this
    /// publisher has mapped them.)
    pub fn publication(&mut self) -> &mut Publication<M> {
        &mut self.publication
    }

    /// The daemon's id for this publisher on the current connection; `None`
    /// if a restarted daemon did not take it back at the last resume.
    pub fn daemon_handle(&self) -> Option<u64> {
        self.guard.daemon_handle()
    }
}
