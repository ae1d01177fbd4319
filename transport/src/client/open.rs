//! Opening publishers and subscribers: the request, the fds in the reply,
//! mapping the ring, and registering the handle for resumes, all under the
//! client's lock so a reconnect never sees a handle half set up.
//!
//! If anything fails after the daemon granted a handle (wrong fd count, a
//! ring that does not map or does not match the reply), the handle is
//! closed again at once, so the daemon does not keep a publisher or a
//! subscriber slot for nothing.

use super::{Entry, HandleGuard, Shared, State, Token};
use crate::connection::Reply;
use crate::error::ClientError;
use crate::protocol::{HandleKind, LogSegments, Request, Response, StartAt, StreamInfo, StreamOptions, MAX_SLOTS_PER_STREAM};
use crate::publisher::Publisher;
use crate::subscriber::{ReadMode, Subscriber};
use rill_shm::ring::{ClaimMode, OpenError, Ring};
use rill_shm::Access;
use std::os::fd::OwnedFd;
use std::sync::Arc;

pub(super) fn publisher<M: ClaimMode>(
    token: &Arc<Token>,
    stream: &str,
    create: Option<StreamOptions>,
) -> Result<Publisher<M>, ClientError> {
    let shared = &token.shared;
    let mut st = shared.lock_state();
    let exclusive = !M::SHARED;
    let req = Request::OpenPublisher { stream: stream.to_owned(), create, exclusive };
    let Reply { response, fds } = shared.request(&mut st, &req)?;
    let (handle, info, slots_epoch) = match response {
        Response::Publisher { handle, info, slots_epoch } => (handle, info, slots_epoch),
        other => return Err(Reply { response: other, fds }.unexpected("OpenPublisher")),
    };
    let built = map_publisher(fds, &info).and_then(|ring| {
        ring.set_slots_epoch(slots_epoch);
        Ok(ring.publication::<M>()?)
    });
    let publication = match built {
        Ok(p) => p,
        Err(e) => return Err(undo(shared, &mut st, handle, e)),
    };
    let entry = Entry { stream: stream.to_owned(), kind: HandleKind::Publisher, slot: 0, exclusive, daemon_handle: handle };
    let key = st.insert(entry);
    drop(st);
    tracing::debug!(stream, handle, publisher_id = publication.id(), exclusive, "publisher open");
    Ok(Publisher::new(publication, info, HandleGuard { token: token.clone(), key }))
}

pub(super) fn subscriber(
    token: &Arc<Token>,
    stream: &str,
    start: StartAt,
    create: Option<StreamOptions>,
) -> Result<Subscriber, ClientError> {
    let shared = &token.shared;
    let mut st = shared.lock_state();
    let req = Request::OpenSubscriber { stream: stream.to_owned(), start, create };
    let Reply { response, fds } = shared.request(&mut st, &req)?;
    let (handle, slot, position, info, replay, trusted) = match response {
        Response::Subscriber { handle, slot, position, info, replay, publishers_trusted } => {
            (handle, slot, position, info, replay, publishers_trusted)
        }
        other => return Err(Reply { response: other, fds }.unexpected("OpenSubscriber")),
    };
    let mut fds = fds;
    let log_fds = if fds.len() > SUBSCRIBER_FDS { fds.split_off(SUBSCRIBER_FDS) } else { Vec::new() };
    let segments = replay.as_ref().map_or(0, |r| r.segments.len());
    if log_fds.len() != segments {
        let e = ClientError::FdCount { expected: SUBSCRIBER_FDS + segments, got: fds.len() + log_fds.len() };
        return Err(undo(shared, &mut st, handle, e));
    }
    let (replay, skip_before) = match replay {
        Some(r) => {
            let files = r.segments.iter().copied().zip(log_fds.into_iter().map(std::fs::File::from)).collect::<Vec<_>>();
            (Some(crate::replay::LogReader::replay(files, r.from, r.until)), r.from)
        }
        None => (None, 0),
    };
    let built = map_subscriber(fds, &info, slot).and_then(|ring| Ok(ring.subscriber_on_slot(slot, position)?));
    let inner = match built {
        Ok(s) => s,
        Err(e) => return Err(undo(shared, &mut st, handle, e)),
    };
    let entry = Entry { stream: stream.to_owned(), kind: HandleKind::Subscriber, slot, exclusive: false, daemon_handle: handle };
    let key = st.insert(entry);
    drop(st);
    tracing::debug!(stream, handle, slot, position, "subscriber open");
    let mode = if trusted { ReadMode::InPlace } else { ReadMode::Copied };
    Ok(Subscriber::new(inner, info, HandleGuard { token: token.clone(), key }, replay, skip_before, mode))
}

/// `Request::LogSegments`: the segments of persisted stream `stream` that
/// hold the positions from `from` on, as files.
pub(super) fn log_segments(token: &Arc<Token>, stream: &str, from: u64) -> Result<(LogSegments, Vec<std::fs::File>), ClientError> {
    let shared = &token.shared;
    let mut st = shared.lock_state();
    let req = Request::LogSegments { stream: stream.to_owned(), from };
    let mut reply = shared.request(&mut st, &req)?;
    drop(st);
    let log = match &reply.response {
        Response::LogSegments { log } => Some(log.clone()),
        _ => None,
    };
    let Some(log) = log else { return Err(reply.unexpected("LogSegments")) };
    let fds = reply.take_fds(log.segments.len())?;
    Ok((log, fds.into_iter().map(std::fs::File::from).collect()))
}

/// Every slot page of the stream of publisher `handle` (the daemon's id),
/// read-only, and their epoch (`Request::SlotPages`).
pub(super) fn slot_pages(token: &Arc<Token>, handle: u64) -> Result<(u64, Vec<OwnedFd>), ClientError> {
    let shared = &token.shared;
    let mut st = shared.lock_state();
    let mut reply = shared.request(&mut st, &Request::SlotPages { handle })?;
    drop(st);
    let epoch = match &reply.response {
        Response::SlotPages { slots_epoch } => Some(*slots_epoch),
        _ => None,
    };
    let Some(epoch) = epoch else { return Err(reply.unexpected("SlotPages")) };
    let n = reply.fds.len();
    Ok((epoch, reply.take_fds(n)?))
}

/// Closes a handle whose setup failed; returns the setup error.
fn undo(shared: &Shared, st: &mut State, handle: u64, e: ClientError) -> ClientError {
    tracing::warn!(handle, error = %e, "could not set up what rilld handed over; closing the handle");
    shared.close_handle(st, handle);
    e
}

/// Maps a publisher's ring from fds `[ring rw, wake, slot 0 .. slot n-1,
/// daemon page]` (slots read-only: a publisher reads positions, never
/// writes them; the daemon page read-only: only rilld vouches for
/// durability).
fn map_publisher(fds: Vec<OwnedFd>, info: &StreamInfo) -> Result<Ring, ClientError> {
    let slot_count = checked_slot_count(info)?;
    let expected = 3 + slot_count;
    if fds.len() != expected {
        return Err(ClientError::FdCount { expected, got: fds.len() });
    }
    let mut fds = fds;
    let daemon_fd = fds.pop().expect("count checked");
    let mut fds = fds.into_iter();
    let ring_fd = fds.next().expect("count checked");
    let wake_fd = fds.next().expect("count checked");
    let slots = fds.map(|fd| Some((fd, Access::ReadOnly))).collect();
    let ring = Ring::from_fds(ring_fd, Access::ReadWrite, slots, (wake_fd, Access::ReadWrite), (daemon_fd, Access::ReadOnly))?;
    check_matches(&ring, info)?;
    Ok(ring)
}

/// Fds of a subscriber's ring, before those of its replay's segments.
const SUBSCRIBER_FDS: usize = 4;

/// Maps a subscriber's ring from fds `[ring ro, wake, own slot rw, daemon
/// page ro]`.
fn map_subscriber(fds: Vec<OwnedFd>, info: &StreamInfo, slot: u32) -> Result<Ring, ClientError> {
    let slot_count = checked_slot_count(info)?;
    if fds.len() != SUBSCRIBER_FDS {
        return Err(ClientError::FdCount { expected: SUBSCRIBER_FDS, got: fds.len() });
    }
    if slot as usize >= slot_count {
        let msg = format!("rilld gave slot {slot} of a ring with {slot_count} slots");
        return Err(ClientError::Ring(OpenError::Corrupt(msg)));
    }
    let mut fds = fds.into_iter();
    let ring_fd = fds.next().expect("count checked");
    let wake_fd = fds.next().expect("count checked");
    let slot_fd = fds.next().expect("count checked");
    let daemon_fd = fds.next().expect("count checked");
    let mut slots: Vec<Option<(OwnedFd, Access)>> = (0..slot_count).map(|_| None).collect();
    slots[slot as usize] = Some((slot_fd, Access::ReadWrite));
    let ring = Ring::from_fds(ring_fd, Access::ReadOnly, slots, (wake_fd, Access::ReadWrite), (daemon_fd, Access::ReadOnly))?;
    check_matches(&ring, info)?;
    Ok(ring)
}

fn checked_slot_count(info: &StreamInfo) -> Result<usize, ClientError> {
    if info.slot_count == 0 || info.slot_count > MAX_SLOTS_PER_STREAM {
        let msg = format!("stream info says {} slots (1..={MAX_SLOTS_PER_STREAM} allowed)", info.slot_count);
        return Err(ClientError::Ring(OpenError::Corrupt(msg)));
    }
    Ok(info.slot_count as usize)
}

/// The ring's own header must agree with what the daemon said about it.
fn check_matches(ring: &Ring, info: &StreamInfo) -> Result<(), ClientError> {
    let r = ring.info();
    let same = r.capacity == info.capacity
        && r.max_message_len == info.max_message_len
        && r.slot_count == info.slot_count
        && crate::protocol::Policy::from(r.policy) == info.policy;
    if !same {
        let msg = format!(
            "ring header (capacity {}, max message {}, {} slots, {:?}) disagrees with rilld's stream info \
             (capacity {}, max message {}, {} slots, {:?})",
            r.capacity, r.max_message_len, r.slot_count, r.policy, info.capacity, info.max_message_len, info.slot_count, info.policy
        );
        return Err(ClientError::Ring(OpenError::Corrupt(msg)));
    }
    Ok(())
}
