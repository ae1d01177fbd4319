//! `rill-protocol`: the control protocol between the client library
//! (crate `rill`) and `rilld`, and the trust boundary between them: the
//! messages, the enums both sides share (stream policy, start position,
//! durability), the limits every decoder enforces, and the wire framing
//! ([`wire`]). rilld depends on this crate and on nothing of the client
//! library; the client library re-exports it as `rill::protocol` and
//! `rill::wire`.
//!
//! One request, one reply, over a `SOCK_SEQPACKET` Unix socket (message
//! boundaries are kept by the kernel, and fds passed with SCM_RIGHTS arrive
//! with the message they belong to). Each message is:
//!
//! ```text
//!  0        2         4              8
//!  +--------+---------+--------------+------------------------+
//!  | magic  | version | body length  | body: rkyv-archived     |
//!  | "RL"   | u16     | u32 (LE)     | Request or Response     |
//!  +--------+---------+--------------+------------------------+
//! ```
//!
//! [`decode_request`] and [`decode_response`] check the header, the length
//! against the bytes received and [`MAX_MESSAGE_LEN`], and validate the
//! body with bytecheck before deserializing it: malformed bytes give a
//! [`ProtocolError`], never a panic.
//!
//! Replies that hand over a ring carry fds, in this order:
//! * publisher: ring (read-write), wake page, then every slot page
//!   (read-only), one per slot of the ring, then the daemon page
//!   (read-only);
//! * subscriber: ring (read-only), wake page, own slot page (read-write),
//!   the daemon page (read-only), then one read-only fd per log segment
//!   to replay (see [`Replay`]);
//! * log segments ([`Request::LogSegments`]): one read-only fd per segment
//!   (see [`LogSegments`]);
//! * slot pages ([`Request::SlotPages`]): every slot page of the stream,
//!   read-only, one per slot, in slot order.
//!
//! Version 3 added [`Request::LogSegments`] (a subscriber of a persisted
//! overwrite stream reading what publishers overwrote from the log) and
//! allows persisted overwrite streams, whose archiver slot is a holding
//! slot (`rill_shm::layout::SLOT_HOLDING`) that clients of version 2 would
//! not heed.

// rkyv's derives generate `Archived*` twins whose variant fields cannot
// carry docs (the real types are documented), so the lint is off here.
#![allow(missing_docs)]

use rkyv::{Archive, Deserialize, Serialize};
use thiserror::Error;

pub mod options;
pub mod wire;

/// Where rilld listens unless told otherwise, and where clients look
/// unless `$RILL_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/rill/rilld.sock";

/// `b"RL"` little-endian.
pub const MAGIC: u16 = u16::from_le_bytes(*b"RL");
/// Version of this protocol. 4: publishers and subscribers also get the
/// daemon page (read-only), so a client of version 3 could not map a
/// ring. 5: rings of layout version 2 (slots granted on the daemon page,
/// a fresh page for every slot released); a publisher's reply says which
/// slot page epoch its slot pages are of, and [`Request::SlotPages`] gets
/// the current ones. 6: a subscriber's reply says whether it trusts every
/// uid that may publish to the stream.
pub const PROTOCOL_VERSION: u16 = 6;
/// Header bytes before the body.
pub const HEADER_LEN: usize = 8;
/// Largest message (header + body) either side sends or accepts.
pub const MAX_MESSAGE_LEN: usize = 128 * 1024;
/// Most fds one message may carry: the kernel's limit per SCM_RIGHTS
/// message (ring + wake + slot pages for a publisher; ring + wake + slot +
/// log segments for a replaying subscriber).
pub const MAX_FDS: usize = 253;
/// Most log segments one subscriber's replay may span.
pub const MAX_REPLAY_SEGMENTS: usize = MAX_FDS - 4;
/// Most segments one [`Request::LogSegments`] reply hands over (a reader
/// asks again for the rest once it has read them).
pub const MAX_LOG_SEGMENTS: usize = MAX_FDS;
/// Most subscriber slots a daemon-managed stream has.
pub const MAX_SLOTS_PER_STREAM: u32 = 64;
/// Longest stream name.
pub const MAX_STREAM_NAME_LEN: usize = 200;

/// Full-ring behaviour of a stream.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Publishers wait for the slowest live subscriber.
    BackPressure,
    /// Publishers never wait for subscribers; slow ones are overrun and
    /// told. On a persisted stream, publishers wait for the archiver only
    /// (nothing is overwritten before it is on disk), and an overrun
    /// subscriber reads what it missed from the log: nothing is lost.
    Overwrite,
}

impl From<Policy> for rill_shm::Policy {
    fn from(p: Policy) -> Self {
        match p {
            Policy::BackPressure => rill_shm::Policy::BackPressure,
            Policy::Overwrite => rill_shm::Policy::Overwrite,
        }
    }
}

impl From<rill_shm::Policy> for Policy {
    fn from(p: rill_shm::Policy) -> Self {
        match p {
            rill_shm::Policy::BackPressure => Policy::BackPressure,
            rill_shm::Policy::Overwrite => Policy::Overwrite,
        }
    }
}

/// How a persisted stream's archiver makes its writes durable.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Written to the segment files, never fsynced by the archiver: the
    /// durable position means "survives a crash of any process", not a
    /// power loss.
    None,
    /// `fdatasync` at most every this many milliseconds.
    IntervalMs(u32),
    /// Group commit: every batch written is followed by an `fdatasync`
    /// (linked after the write); the durable position moves after it.
    Always,
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::None => write!(f, "none"),
            Durability::IntervalMs(ms) => write!(f, "interval:{ms}"),
            Durability::Always => write!(f, "always"),
        }
    }
}

impl std::str::FromStr for Durability {
    type Err = String;

    /// `none`, `interval:<ms>` or `always`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Durability::None),
            "always" => Ok(Durability::Always),
            _ => match s.strip_prefix("interval:").map(str::parse::<u32>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::IntervalMs(ms)),
                _ => Err(format!("durability {s:?}: expected none, interval:<ms> (ms > 0) or always")),
            },
        }
    }
}

/// How to create a stream that does not exist yet.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StreamOptions {
    /// Ring capacity in bytes (power of two).
    pub capacity: u64,
    /// Largest payload.
    pub max_message_len: u32,
    /// Full-ring behaviour.
    pub policy: Policy,
    /// Keep the stream when its last user leaves (else removed after the
    /// daemon's linger time).
    pub keep: bool,
    /// Persist it to the daemon's data directory with this durability
    /// (persisted streams are always kept). Either policy: see
    /// [`Policy::Overwrite`].
    pub persist: Option<Durability>,
}

/// Where a new subscriber starts.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only messages published from now on.
    Latest,
    /// The oldest message still in the ring.
    Oldest,
    /// The oldest message of the stream: on disk for a persisted stream
    /// (then on into the live ring), else the oldest in the ring.
    Earliest,
    /// The message at this stream position (or the first after it), read
    /// from disk while it is older than the ring holds.
    Position(u64),
    /// The first message published at or after this time (ns since the
    /// Unix epoch), found by the log's index (persisted streams only).
    Time(u64),
}

/// The part of a subscriber's start that comes from the stream's log on
/// disk: the daemon hands one read-only fd per segment after the ring fds,
/// in this order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// First position of each segment handed over, in order.
    pub segments: Vec<u64>,
    /// Deliver from this position on (earlier frames are skipped).
    pub from: u64,
    /// Read the log up to here, then go on in the ring (its start
    /// position).
    pub until: u64,
}

/// Where a persisted stream's log holds the positions from a given one on
/// (the reply to [`Request::LogSegments`]): the daemon hands one read-only
/// fd per segment, in this order.
///
/// Every position from the one asked for up to `archived` is in these
/// segments, in whole batches with valid CRCs; what follows may be there
/// too, but the last segment may still be growing and end in a batch that
/// is half written (not an error: read up to it, and ask again later).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogSegments {
    /// First position of each segment handed over, in order (empty if the
    /// log holds nothing at or after the position yet).
    pub segments: Vec<u64>,
    /// File offset, in the first segment, of the batch holding the
    /// position asked for (or of where the next batch will be written, if
    /// the segment has nothing from there yet).
    pub start_offset: u64,
    /// First position of that batch.
    pub start_batch: u64,
    /// The archiver's position: everything before it is on disk.
    pub archived: u64,
}

/// What kind of handle a client holds.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleKind {
    /// A publication.
    Publisher,
    /// A subscriber (with its slot).
    Subscriber,
}

/// A handle a client re-registers with a restarted daemon.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ResumeHandle {
    /// Stream name.
    pub stream: String,
    /// Publisher or subscriber.
    pub kind: HandleKind,
    /// The subscriber's slot (0 for publishers).
    pub slot: u32,
    /// An exclusive publisher (see `Request::OpenPublisher`).
    pub exclusive: bool,
}

/// A request from a client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs)))]
pub enum Request {
    /// First message on a connection.
    Hello {
        /// Free-form client name, for logs and `rill streams`.
        client_name: String,
    },
    /// Create a stream (error `Exists` if it exists with other options).
    CreateStream {
        /// Stream name.
        stream: String,
        /// Its shape.
        options: StreamOptions,
    },
    /// Open a publisher; create the stream first if `create` is given and
    /// it does not exist.
    OpenPublisher {
        /// Stream name.
        stream: String,
        /// Options to create it with, if missing.
        create: Option<StreamOptions>,
        /// Be the stream's only publisher, which lets it claim space with
        /// plain stores instead of compare-and-swap. Refused (`Busy`) while
        /// the stream has other publishers; while granted, other publishers
        /// are refused, until this one closes or its process is gone.
        exclusive: bool,
    },
    /// Open a subscriber; create the stream first if `create` is given.
    OpenSubscriber {
        /// Stream name.
        stream: String,
        /// Where to start.
        start: StartAt,
        /// Options to create it with, if missing.
        create: Option<StreamOptions>,
    },
    /// Close a handle.
    Close {
        /// The handle from the open reply.
        handle: u64,
    },
    /// List every stream the client's uid may use (an error if they do
    /// not fit in one reply: then page with `ListStreamsPage`).
    ListStreams,
    /// Describe one stream.
    StreamInfo {
        /// Stream name.
        stream: String,
    },
    /// Is the daemon healthy?
    Health,
    /// The client is alive.
    Heartbeat,
    /// After reconnecting to a restarted daemon: re-register handles.
    Resume {
        /// The handles held.
        handles: Vec<ResumeHandle>,
    },
    /// Read-only fds of a persisted stream's segment files holding the
    /// positions from `from` on (a subscriber of a persisted overwrite
    /// stream that publishers overran at `from`); answered with
    /// [`Response::LogSegments`], or `Gone` if retention deleted `from`.
    LogSegments {
        /// Stream name.
        stream: String,
        /// The first position wanted.
        from: u64,
    },
    /// A publisher's slot pages are of an older epoch than the daemon
    /// page's (`rill_shm::layout::DaemonPage::slots_epoch`: a slot got a
    /// fresh page since): every slot page of its stream, read-only, as
    /// now; answered with [`Response::SlotPages`].
    SlotPages {
        /// The publisher's handle.
        handle: u64,
    },
    /// One page of the streams the client's uid may use, in name order,
    /// after `after` (from the first if `None`); answered with
    /// [`Response::StreamsPage`]. (`ListStreams` answers only while every
    /// stream fits in one reply.)
    ListStreamsPage {
        /// The last name of the previous page.
        after: Option<String>,
    },
}

/// One subscriber of a stream, as `StreamInfo` reports it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SubscriberInfo {
    /// Slot index.
    pub slot: u32,
    /// Owner pid (as the daemon sees it).
    pub pid: u32,
    /// Next position it reads.
    pub position: u64,
    /// Bytes between it and the tail.
    pub lag_bytes: u64,
    /// Its position holds publishers back on an overwrite stream: the
    /// archiver's slot of a persisted one (on a back-pressure stream every
    /// subscriber does, and this is false).
    pub holding: bool,
}

/// A stream, as the daemon describes it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Name.
    pub name: String,
    /// Ring capacity in bytes.
    pub capacity: u64,
    /// Largest payload.
    pub max_message_len: u32,
    /// Full-ring behaviour.
    pub policy: Policy,
    /// Page size backing the ring (4096 or 2 MiB).
    pub page_size: u32,
    /// Number of subscriber slots.
    pub slot_count: u32,
    /// Tail (claimed) position.
    pub tail: u64,
    /// Open publishers.
    pub publishers: u32,
    /// Live subscribers.
    pub subscribers: Vec<SubscriberInfo>,
    /// Bytes of abandoned claims padded over so far.
    pub padded_bytes: u64,
    /// Subscriber slots freed because their owner died.
    pub reaped_subscribers: u64,
    /// Kept when unused.
    pub keep: bool,
    /// Its publisher holds it exclusively (others are refused).
    pub exclusive: bool,
    /// Persisted with this durability, if at all.
    pub persist: Option<Durability>,
    /// Position up to which the stream is durable (persisted streams).
    pub durable_position: u64,
    /// Bytes of its segment files on disk.
    pub disk_bytes: u64,
    /// Why archiving stopped, if it did (publishers are back-pressured).
    pub archive_error: Option<String>,
}

/// Why a request failed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request could not be decoded.
    Malformed,
    /// Another protocol version.
    UnsupportedVersion,
    /// No such stream.
    UnknownStream,
    /// The credentials do not allow it.
    Denied,
    /// Exists with other options.
    Exists,
    /// Invalid argument (name, options).
    Invalid,
    /// Every subscriber slot is taken.
    NoFreeSlot,
    /// No such handle on this connection.
    UnknownHandle,
    /// Hello must come first.
    NoHello,
    /// The daemon is shutting down.
    ShuttingDown,
    /// Something failed inside the daemon (see message).
    Internal,
    /// Another publisher holds what was asked for (an exclusive
    /// publisher, or publishers when exclusivity was asked for).
    Busy,
    /// The start asked for is gone: deleted by retention, or older than
    /// the ring of a stream that is not persisted.
    Gone,
    /// A limit of rilld's configuration (`[limits]`, named in the
    /// message) refuses it: too many connections, streams, ring bytes or
    /// persisted streams, in total or for the client's uid.
    Limit,
}

/// A reply from the daemon.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(attr(allow(missing_docs)))]
pub enum Response {
    /// Reply to Hello.
    Hello {
        /// Daemon version.
        daemon_version: String,
        /// How often the client should send Heartbeat.
        heartbeat_ms: u32,
    },
    /// A publisher; fds: ring (rw), wake, slot pages (ro), daemon page (ro).
    Publisher {
        /// Handle for Close.
        handle: u64,
        /// The stream.
        info: StreamInfo,
        /// The slot page epoch of the slot pages handed over.
        slots_epoch: u64,
    },
    /// Every slot page of a publisher's stream (reply to `SlotPages`);
    /// fds: one per slot, read-only, in slot order.
    SlotPages {
        /// Their slot page epoch.
        slots_epoch: u64,
    },
    /// A subscriber; fds: ring (ro), wake, own slot page (rw), daemon page
    /// (ro), then the replay's segments (ro).
    Subscriber {
        /// Handle for Close.
        handle: u64,
        /// Its slot.
        slot: u32,
        /// Its start position in the ring.
        position: u64,
        /// The stream.
        info: StreamInfo,
        /// Read these first (older than the ring holds), if any.
        replay: Option<Replay>,
        /// Whether every uid that may publish to the stream is one the
        /// subscriber trusts: its own, or root and rilld's uid where rilld
        /// lets those use every stream (`trust_root`). If not, the client
        /// library copies each payload out of the ring before reading it
        /// (`rill::ReadMode::Copied`), since a publisher can change what a
        /// reader reads in place.
        publishers_trusted: bool,
    },
    /// Stream created (or already there with the same options).
    Created {
        /// The stream.
        info: StreamInfo,
    },
    /// Handle closed.
    Closed,
    /// Every stream.
    Streams {
        /// The streams.
        streams: Vec<StreamInfo>,
    },
    /// One stream.
    Info {
        /// The stream.
        info: StreamInfo,
    },
    /// Health.
    Health {
        /// Yes or no.
        healthy: bool,
        /// Why not, or a summary.
        detail: String,
    },
    /// Heartbeat received.
    HeartbeatAck,
    /// Handles re-registered; new handle ids in request order (0 where the
    /// daemon did not know the stream or slot any more).
    Resumed {
        /// New handles.
        handles: Vec<u64>,
    },
    /// The segments holding a range of a stream's log; fds: one per
    /// segment, read-only, in order.
    LogSegments {
        /// Which segments, and where to start.
        log: LogSegments,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// A message for humans naming what was refused and why.
        message: String,
    },
    /// A page of streams (reply to `ListStreamsPage`).
    StreamsPage {
        /// The streams, in name order.
        streams: Vec<StreamInfo>,
        /// Ask again with `after: next` for the next page; `None`: this
        /// was the last.
        next: Option<String>,
    },
}

/// Why bytes are not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// Shorter than the header or than the length it announces.
    #[error("truncated message: {got} bytes, need {need}")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Longer than allowed, or longer than announced.
    #[error("message of {len} bytes is over the limit of {max} or its announced length")]
    TooLong {
        /// Length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// Wrong magic number.
    #[error("bad magic {0:#06x}: not a rill control message")]
    BadMagic(u16),
    /// Another protocol version.
    #[error("protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    Version(u16),
    /// The body did not validate or deserialize.
    #[error("invalid message body: {0}")]
    Body(String),
    /// Serializing failed.
    #[error("could not encode message: {0}")]
    Encode(String),
}

fn encode<T>(value: &T) -> Result<Vec<u8>, ProtocolError>
where
    T: for<'a> Serialize<rkyv::api::high::HighSerializer<rkyv::util::AlignedVec, rkyv::ser::allocator::ArenaHandle<'a>, rkyv::rancor::Error>>,
{
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(value).map_err(|e| ProtocolError::Encode(e.to_string()))?;
    let len = HEADER_LEN + body.len();
    if len > MAX_MESSAGE_LEN {
        return Err(ProtocolError::TooLong { len, max: MAX_MESSAGE_LEN });
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks the header and returns the body, copied to aligned memory.
fn body(bytes: &[u8]) -> Result<rkyv::util::AlignedVec, ProtocolError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(ProtocolError::TooLong { len: bytes.len(), max: MAX_MESSAGE_LEN });
    }
    let head = bytes.get(..HEADER_LEN).ok_or(ProtocolError::Truncated { got: bytes.len(), need: HEADER_LEN })?;
    let magic = u16::from_le_bytes([head[0], head[1]]);
    if magic != MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([head[2], head[3]]);
    if version != PROTOCOL_VERSION {
        return Err(ProtocolError::Version(version));
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let need = HEADER_LEN.saturating_add(len);
    if bytes.len() < need {
        return Err(ProtocolError::Truncated { got: bytes.len(), need });
    }
    if bytes.len() > need {
        return Err(ProtocolError::TooLong { len: bytes.len(), max: need });
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(len);
    aligned.extend_from_slice(&bytes[HEADER_LEN..]);
    Ok(aligned)
}

/// Encodes a request.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, ProtocolError> {
    encode(req)
}

/// Encodes a response.
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, ProtocolError> {
    encode(resp)
}

/// Decodes and validates a request.
pub fn decode_request(bytes: &[u8]) -> Result<Request, ProtocolError> {
    let b = body(bytes)?;
    rkyv::from_bytes::<Request, rkyv::rancor::Error>(&b).map_err(|e| ProtocolError::Body(e.to_string()))
}

/// Decodes and validates a response.
pub fn decode_response(bytes: &[u8]) -> Result<Response, ProtocolError> {
    let b = body(bytes)?;
    rkyv::from_bytes::<Response, rkyv::rancor::Error>(&b).map_err(|e| ProtocolError::Body(e.to_string()))
}

/// Checks a stream name: 1..=200 bytes of `[A-Za-z0-9._-]`, not starting
/// with `.`. Names become file names in the daemon.
pub fn check_stream_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_STREAM_NAME_LEN {
        return Err(format!("stream name must be 1..={MAX_STREAM_NAME_LEN} bytes"));
    }
    if name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(format!("stream name {name:?} may hold only A-Z a-z 0-9 . _ - and must not start with '.'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let req = Request::OpenSubscriber {
            stream: "orders".into(),
            start: StartAt::Oldest,
            create: Some(StreamOptions { capacity: 1 << 20, max_message_len: 4096, policy: Policy::Overwrite, keep: true, persist: Some(Durability::IntervalMs(5)) }),
        };
        assert_eq!(decode_request(&encode_request(&req).unwrap()).unwrap(), req);
        let resp = Response::Error { code: ErrorCode::Denied, message: "no".into() };
        assert_eq!(decode_response(&encode_response(&resp).unwrap()).unwrap(), resp);
    }

    #[test]
    fn log_segments_round_trip() {
        let req = Request::LogSegments { stream: "audit".into(), from: 1 << 40 };
        assert_eq!(decode_request(&encode_request(&req).unwrap()).unwrap(), req);
        let log = LogSegments { segments: vec![0, 1 << 20, 3 << 20], start_offset: 4160, start_batch: 4096, archived: 3 << 20 | 64 };
        let resp = Response::LogSegments { log };
        assert_eq!(decode_response(&encode_response(&resp).unwrap()).unwrap(), resp);
        let most = LogSegments { segments: (0..MAX_LOG_SEGMENTS as u64).map(|i| i << 26).collect(), start_offset: 0, start_batch: 0, archived: u64::MAX };
        let resp = Response::LogSegments { log: most };
        assert_eq!(decode_response(&encode_response(&resp).unwrap()).unwrap(), resp);
        let gone = Response::Error { code: ErrorCode::Gone, message: "deleted by retention".into() };
        assert_eq!(decode_response(&encode_response(&gone).unwrap()).unwrap(), gone);
    }

    #[test]
    fn version_2_is_refused() {
        let mut old = encode_request(&Request::Health).unwrap();
        old[2..4].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(decode_request(&old), Err(ProtocolError::Version(2)));
    }

    #[test]
    fn rejects_bad_headers() {
        let good = encode_request(&Request::Health).unwrap();
        assert!(matches!(decode_request(&good[..5]), Err(ProtocolError::Truncated { .. })));
        assert!(matches!(decode_request(&good[..good.len() - 1]), Err(ProtocolError::Truncated { .. })));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(decode_request(&long), Err(ProtocolError::TooLong { .. })));
        let mut v = good.clone();
        v[2] = 9;
        assert!(matches!(decode_request(&v), Err(ProtocolError::Version(9))));
        let mut m = good.clone();
        m[0] = b'X';
        assert!(matches!(decode_request(&m), Err(ProtocolError::BadMagic(_))));
        let mut huge = good;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_request(&huge).is_err());
    }

    #[test]
    fn names() {
        assert!(check_stream_name("orders.v1-eu_2").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", "ü", &"x".repeat(201)] {
            assert!(check_stream_name(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn random_bodies_behind_a_valid_header_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut msg = Vec::new();
            msg.extend_from_slice(&MAGIC.to_le_bytes());
            msg.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            msg.extend_from_slice(&(body.len() as u32).to_le_bytes());
            msg.extend_from_slice(&body);
            let _ = decode_request(&msg);
            let _ = decode_response(&msg);
        }

        #[test]
        fn any_log_segments_request_and_reply_round_trip(
            stream in "[A-Za-z0-9._-]{1,40}",
            from in proptest::num::u64::ANY,
            segments in proptest::collection::vec(proptest::num::u64::ANY, 0..300),
            start_offset in proptest::num::u64::ANY,
            start_batch in proptest::num::u64::ANY,
            archived in proptest::num::u64::ANY,
        ) {
            let req = Request::LogSegments { stream, from };
            proptest::prop_assert_eq!(decode_request(&encode_request(&req).unwrap()).unwrap(), req);
            let resp = Response::LogSegments { log: LogSegments { segments, start_offset, start_batch, archived } };
            proptest::prop_assert_eq!(decode_response(&encode_response(&resp).unwrap()).unwrap(), resp);
        }

        #[test]
        fn damaged_log_segments_messages_never_panic(
            from in proptest::num::u64::ANY,
            segments in proptest::collection::vec(proptest::num::u64::ANY, 0..8),
            flips in proptest::collection::vec((proptest::num::usize::ANY, 1u8..=255), 1..6),
            cut in proptest::num::usize::ANY,
        ) {
            let req = encode_request(&Request::LogSegments { stream: "s".into(), from }).unwrap();
            let log = LogSegments { segments, start_offset: from / 2, start_batch: from / 3, archived: from };
            let resp = encode_response(&Response::LogSegments { log }).unwrap();
            for good in [req, resp] {
                let mut bad = good.clone();
                for &(at, x) in &flips {
                    // Body bytes only: a damaged header is covered above.
                    let i = HEADER_LEN + at % (bad.len() - HEADER_LEN);
                    bad[i] ^= x;
                }
                let _ = decode_request(&bad);
                let _ = decode_response(&bad);
                let short = &good[..HEADER_LEN + cut % (good.len() - HEADER_LEN)];
                proptest::prop_assert!(decode_request(short).is_err() && decode_response(short).is_err());
            }
        }
    }
}
