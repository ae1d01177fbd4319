//! Typed messages: rkyv archives written into the ring and validated by
//! subscribers, in the ring or in a copy of their own.
//!
//! # Sending: serialize once, copy once
//! [`Publisher::send`](crate::Publisher::send) serializes into a buffer the
//! publisher keeps and reuses (no allocation once it has grown to the
//! largest message), then claims exactly that many bytes in the ring and
//! copies them in with one `memcpy`. Serializing straight into the ring
//! would save that copy but cannot be done well with this ring: rkyv writes
//! the root object last and only knows the length at the end, while a
//! claim fixes its length up front; claiming `max_message_len` and then
//! shrinking would need a ring operation that does not exist, and padding
//! the rest of every claim would waste most of the ring. For messages that
//! fit in cache the copy costs a few nanoseconds.
//!
//! # Receiving: validated, then read where it was validated
//! [`Subscriber::poll_typed`](crate::Subscriber::poll_typed) and friends
//! check each payload with bytecheck (`rkyv::access`) and hand out
//! `&Archived<T>`: no deserialization. A payload that does not validate is
//! reported as a [`DecodeError`] and never dereferenced unchecked. Where
//! the payload lies depends on the subscriber's [`ReadMode`]:
//!
//! * [`ReadMode::InPlace`]: validated and read in the ring, no copy.
//!   Sound only while every publisher is honest: validation holds for the
//!   bytes as they were when checked, and a publisher that writes the
//!   payload afterwards (it maps the ring writable) can give a validated
//!   `ArchivedString` another length or offset while the handler reads it,
//!   and so make the reader go out of bounds.
//! * [`ReadMode::Copied`]: the payload is first copied out of the ring
//!   (atomic word loads: a write racing the copy may tear it, but is no
//!   data race), and the copy, which only this subscriber can change, is
//!   validated and handed out. Sound against any publisher; a torn or
//!   bogus copy is a [`DecodeError`]. Costs one copy per message, about
//!   70 ns per KiB more than in place on one thread with the data in cache
//!   (`cargo bench -p rill-shm --bench ring -- reads`); an overwrite
//!   subscriber's seqlock read copies the same way in either mode.
//!
//! A subscriber copies by default when rilld says that a uid it does not
//! trust may publish to the stream (see the [`subscriber`](crate::subscriber)
//! module); [`Subscriber::set_read_mode`](crate::Subscriber::set_read_mode)
//! overrides that.
//!
//! # Alignment
//! rkyv archives are serialized into a 16-byte aligned buffer and need the
//! same alignment ([`PAYLOAD_ALIGN`]) where they are read. In the ring
//! every frame starts at a multiple of 32 bytes from the data region (which
//! starts on a page boundary) and its payload follows the 32-byte header,
//! so a payload read in place is always 32-byte aligned, and so is the
//! subscriber's copy buffer. A payload read from the stream's log (a
//! replay) is not; for those, and for any other misaligned slice,
//! [`access`] first copies the payload into a reusable 16-byte aligned
//! buffer.
//!
//! [`ReadMode`]: crate::ReadMode
//! [`ReadMode::InPlace`]: crate::ReadMode::InPlace
//! [`ReadMode::Copied`]: crate::ReadMode::Copied
//!
//! # Example
//! ```no_run
//! use rill::rkyv::{Archive, Deserialize, Serialize};
//! use rill::{Client, Start};
//! use std::time::Duration;
//!
//! #[derive(Archive, Serialize, Deserialize, Debug, PartialEq)]
//! #[rkyv(crate = rill::rkyv)]
//! struct Order {
//!     id: u64,
//!     symbol: String,
//! }
//!
//! let client = Client::connect()?;
//! let mut subscriber = client.subscriber("orders", Start::Latest)?;
//! let mut publisher = client.publisher("orders")?;
//! publisher.send(&Order { id: 7, symbol: "ACME".into() })?;
//! // `order` is an `&ArchivedOrder`, in the ring or in the subscriber's copy.
//! let id = subscriber.recv_typed_with::<Order, _>(Duration::from_secs(1), |order| order.id.to_native())?;
//! assert_eq!(id, Some(7));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use rill_shm::ring::{ClaimError, PollError};
use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};
use thiserror::Error;

/// Alignment a payload needs to be read as an archive in place.
pub const PAYLOAD_ALIGN: usize = 16;

const _: () = assert!(rill_shm::frame::HEADER_LEN.is_multiple_of(PAYLOAD_ALIGN));
const _: () = assert!(rill_shm::frame::FRAME_ALIGNMENT.is_multiple_of(PAYLOAD_ALIGN));

/// Types a publisher can [`send`](crate::Publisher::send): anything
/// `#[derive(rkyv::Serialize)]` gives.
pub trait Encode: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> {}

impl<T> Encode for T where T: for<'a> Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>> {}

/// Types whose archived form a subscriber can validate and read in place:
/// anything `#[derive(rkyv::Archive)]` gives (with bytecheck, rkyv's
/// default).
pub trait Decode: Archive<Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>> {}

impl<T> Decode for T
where
    T: Archive,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
}

/// Types a subscriber can also deserialize into an owned value
/// ([`recv_typed`](crate::Subscriber::recv_typed)).
pub trait DecodeOwned: Decode<Archived: Deserialize<Self, HighDeserializer<rancor::Error>>> + Sized {}

impl<T> DecodeOwned for T
where
    T: Decode,
    T::Archived: Deserialize<T, HighDeserializer<rancor::Error>>,
{
}

/// Why a typed send failed.
#[derive(Debug, Error)]
pub enum SendError {
    /// The value could not be serialized.
    #[error("could not serialize the message: {0}")]
    Encode(rancor::Error),
    /// The ring did not take it (back-pressured, too long, timed out).
    #[error(transparent)]
    Claim(#[from] ClaimError),
}

/// A payload that is not a valid archive of the expected type.
#[derive(Debug, Error)]
#[error("message at position {position} is not a valid archive: {error}")]
pub struct DecodeError {
    /// Stream position of the frame.
    pub position: u64,
    /// What bytecheck or the deserializer found (in the message, so not
    /// also returned by `Error::source`).
    pub error: rancor::Error,
}

/// Why a typed receive failed.
#[derive(Debug, Error)]
pub enum RecvError {
    /// The ring holds a corrupt frame.
    #[error(transparent)]
    Poll(#[from] PollError),
    /// The message did not validate as the expected type. The subscriber
    /// has moved past it.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// One typed message, validated where it is read.
#[derive(Debug)]
pub struct TypedMessage<'a, T: Archive> {
    /// The archived value, in the ring or in the subscriber's copy (see
    /// the [module docs](self)).
    pub value: &'a T::Archived,
    /// Stream position of the frame.
    pub position: u64,
    /// Publish timestamp, ns since the Unix epoch (0 if not stamped).
    pub timestamp_ns: u64,
    /// Id of the publisher.
    pub publisher_id: u32,
}

/// Serializes `value` into `buf` (cleared first, reused: no allocation once
/// it is large enough) and returns the bytes.
pub fn encode<'b, T: Encode>(value: &T, buf: &'b mut AlignedVec) -> Result<&'b [u8], rancor::Error> {
    let mut owned = std::mem::take(buf);
    owned.clear();
    *buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(value, owned)?;
    Ok(buf.as_slice())
}

/// Validates `payload` as an archived `T` and returns a reference to it: in
/// place if `payload` is [`PAYLOAD_ALIGN`]-aligned, else in `scratch`, into
/// which it is copied first.
pub fn access<'a, T: Decode>(payload: &'a [u8], scratch: &'a mut AlignedVec) -> Result<&'a T::Archived, rancor::Error> {
    let bytes: &'a [u8] = if (payload.as_ptr() as usize).is_multiple_of(PAYLOAD_ALIGN) {
        payload
    } else {
        scratch.clear();
        scratch.extend_from_slice(payload);
        scratch.as_slice()
    };
    rkyv::access::<T::Archived, rancor::Error>(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_shm::ring::{Ring, RingConfig, Start};

    #[derive(Archive, Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Tick {
        seq: u64,
        wide: u128,
        name: String,
        values: Vec<u32>,
    }

    fn tick(seq: u64) -> Tick {
        Tick { seq, wide: u128::from(seq) << 70, name: format!("tick-{seq}"), values: (0..seq as u32 % 7).collect() }
    }

    #[test]
    fn encode_reuses_its_buffer_and_round_trips() {
        let mut buf = AlignedVec::new();
        let a = encode(&tick(6), &mut buf).unwrap().to_vec();
        let cap = buf.capacity();
        encode(&tick(1), &mut buf).unwrap();
        assert_eq!(buf.capacity(), cap, "buffer reused, not reallocated");
        let mut scratch = AlignedVec::new();
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&a);
        let archived = access::<Tick>(&aligned, &mut scratch).unwrap();
        assert_eq!(rkyv::deserialize::<Tick, rancor::Error>(archived).unwrap(), tick(6));
        assert!(scratch.is_empty(), "aligned input read in place");
    }

    #[test]
    fn misaligned_payloads_are_copied_then_read() {
        let bytes = rkyv::to_bytes::<rancor::Error>(&tick(5)).unwrap();
        let mut shifted = AlignedVec::<16>::new();
        shifted.push(0);
        shifted.extend_from_slice(&bytes);
        let mut scratch = AlignedVec::new();
        let archived = access::<Tick>(&shifted[1..], &mut scratch).unwrap();
        assert_eq!(archived.seq, 5);
        assert_eq!(scratch.len(), bytes.len());
    }

    #[test]
    fn garbage_is_an_error_not_a_crash() {
        let mut scratch = AlignedVec::new();
        let mut junk = AlignedVec::<16>::new();
        junk.extend_from_slice(&[0xff; 64]);
        assert!(access::<Tick>(&junk, &mut scratch).is_err());
        assert!(access::<Tick>(&[], &mut scratch).is_err());
        let good = rkyv::to_bytes::<rancor::Error>(&tick(3)).unwrap();
        for cut in 0..good.len() {
            let mut part = AlignedVec::<16>::new();
            part.extend_from_slice(&good[..cut]);
            let _ = access::<Tick>(&part, &mut scratch); // may or may not validate; must not crash
        }
    }

    /// In a back-pressure ring the subscriber reads in place: every payload
    /// it is handed is 32-byte aligned, so archives are read with no copy.
    #[test]
    fn ring_payloads_are_aligned_for_in_place_reads() {
        let ring = Ring::private(&RingConfig { capacity: 1 << 14, max_message_len: 1024, ..RingConfig::default() }).unwrap();
        let mut sub = ring.subscribe(Start::Latest).unwrap();
        let mut publ = ring.exclusive_publication().unwrap();
        let mut buf = AlignedVec::new();
        let mut scratch = AlignedVec::new();
        let mut next = 0u64;
        for round in 0..200u64 {
            // Varying lengths, so frames land at every 32-byte offset and wrap.
            let bytes = encode(&tick(round), &mut buf).unwrap();
            publ.offer(bytes).unwrap();
            sub.poll(10, |m| {
                assert_eq!(m.payload.as_ptr() as usize % 32, 0, "payload at position {}", m.position);
                let t = access::<Tick>(m.payload, &mut scratch).unwrap();
                assert_eq!(t.seq, next);
                assert_eq!(t.name.as_str(), format!("tick-{next}"));
                next += 1;
            })
            .unwrap();
            assert!(scratch.is_empty(), "no copy on the zero-copy path");
        }
        assert_eq!(next, 200);
    }
}
