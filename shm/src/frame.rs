//! The frame: the one byte format of Rill, in the ring, in segment files and
//! on the wire.
//!
//! ```text
//!  0               4       6       8                               16
//!  +---------------+-------+-------+-------------------------------+
//!  | length u32    | kind  | flags | position u64 (commit word)    |
//!  +---------------+-------+-------+-------------------------------+
//!  | timestamp_ns u64              | publisher_id u32 | commit tag |
//!  +-------------------------------+------------------+------------+
//! 32 | payload (length - 32 bytes) ... zero-padded to FRAME_ALIGNMENT |
//! ```
//!
//! * `length` counts header and payload, not the alignment padding; the frame
//!   occupies [`frame_span`]`(length)` bytes.
//! * `kind` is [`FrameKind::Data`] or [`FrameKind::Padding`]. Padding frames
//!   fill the end of the ring at a wrap (a data frame never wraps) and replace
//!   claims abandoned by crashed publishers.
//! * `position` is the stream position the frame was written at. In the ring
//!   this word is also the commit word (see `ring` for its three states).
//! * `commit tag` completes the commit in the ring (a salted hash of the
//!   position, see `ring`); readers of files and sockets ignore it.
//! * All integers are little-endian; the header is four 64-bit words, so a
//!   reader can load each field with one aligned atomic load.
//!
//! [`parse_frame`] is the bounds-checked reader for frames held in a byte
//! buffer (files, sockets). It never reads outside the slice it is given.

use thiserror::Error;

/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 32;
/// Every frame starts at a multiple of this many bytes (one half cache line).
pub const FRAME_ALIGNMENT: usize = 32;
/// Largest value the `length` field may take (header included).
pub const MAX_FRAME_LEN: usize = 1 << 30;

/// Offset of the 64-bit word holding `length`, `kind` and `flags`.
pub(crate) const WORD_LEN_KIND: usize = 0;
/// Offset of the 64-bit position (commit) word.
pub(crate) const WORD_POSITION: usize = 8;
/// Offset of the 64-bit publish timestamp.
pub(crate) const WORD_TIMESTAMP: usize = 16;
/// Offset of the 64-bit word holding `publisher_id` and the commit tag.
pub(crate) const WORD_PUBLISHER: usize = 24;

const _: () = assert!(HEADER_LEN == FRAME_ALIGNMENT);
const _: () = assert!(FRAME_ALIGNMENT.is_power_of_two());

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameKind {
    /// An application message.
    Data = 1,
    /// Filler: at the end of the ring before a wrap, or over an abandoned claim.
    Padding = 2,
}

impl FrameKind {
    /// Decodes a kind field; `None` for an unknown value.
    pub fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::Data),
            2 => Some(Self::Padding),
            _ => None,
        }
    }
}

/// The decoded fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Header plus payload length in bytes (alignment padding excluded).
    pub length: u32,
    /// Data or padding.
    pub kind: FrameKind,
    /// Application-defined flags.
    pub flags: u16,
    /// Stream position the frame was written at.
    pub position: u64,
    /// Publish time, nanoseconds since the Unix epoch (0 if the publisher
    /// does not stamp frames).
    pub timestamp_ns: u64,
    /// Id of the publisher that wrote the frame, unique within its ring.
    pub publisher_id: u32,
}

impl FrameHeader {
    /// Number of payload bytes.
    pub fn payload_len(&self) -> usize {
        self.length as usize - HEADER_LEN
    }

    /// Bytes the frame occupies, alignment included.
    pub fn span(&self) -> usize {
        frame_span(self.length as usize)
    }

    /// Encodes the header into its 32 little-endian bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&pack_len_kind(self.length, self.kind, self.flags).to_le_bytes());
        b[8..16].copy_from_slice(&self.position.to_le_bytes());
        b[16..24].copy_from_slice(&self.timestamp_ns.to_le_bytes());
        b[24..32].copy_from_slice(&u64::from(self.publisher_id).to_le_bytes());
        b
    }
}

/// Bytes a frame of `length` (header included) occupies: `length` rounded up
/// to [`FRAME_ALIGNMENT`].
#[inline]
pub const fn frame_span(length: usize) -> usize {
    (length + FRAME_ALIGNMENT - 1) & !(FRAME_ALIGNMENT - 1)
}

/// Bytes a message of `payload_len` bytes occupies in the ring.
#[inline]
pub const fn message_span(payload_len: usize) -> usize {
    frame_span(payload_len + HEADER_LEN)
}

#[inline]
pub(crate) const fn pack_len_kind(length: u32, kind: FrameKind, flags: u16) -> u64 {
    length as u64 | ((kind as u64) << 32) | ((flags as u64) << 48)
}

#[inline]
pub(crate) const fn unpack_len_kind(word: u64) -> (u32, u16, u16) {
    (word as u32, (word >> 32) as u16, (word >> 48) as u16)
}

/// Why bytes could not be read as a frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Fewer bytes than a header, or than the length field announces.
    #[error("truncated frame: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The length field is smaller than a header or larger than allowed.
    #[error("bad frame length {length} (must be {HEADER_LEN}..={max})")]
    BadLength {
        /// The length field read.
        length: u32,
        /// Largest length accepted here.
        max: usize,
    },
    /// The kind field holds an unknown value.
    #[error("unknown frame kind {0}")]
    BadKind(u16),
    /// The frame does not sit at the position expected.
    #[error("frame claims position {found}, expected {expected}")]
    WrongPosition {
        /// Position the reader expected.
        expected: u64,
        /// Position in the header.
        found: u64,
    },
}

/// A frame read from a byte buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The decoded header.
    pub header: FrameHeader,
    /// The payload (`length - HEADER_LEN` bytes).
    pub payload: &'a [u8],
}

/// Reads the frame at the start of `buf`, checking every length against `buf`
/// and `max_frame_len`. Returns the frame; it occupies `frame.header.span()`
/// bytes of `buf` (the last frame of a buffer may omit its alignment tail).
pub fn parse_frame(buf: &[u8], max_frame_len: usize) -> Result<Frame<'_>, FrameError> {
    let max = max_frame_len.min(MAX_FRAME_LEN);
    let head: &[u8; HEADER_LEN] = buf
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated { needed: HEADER_LEN, available: buf.len() })?;
    let word = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().expect("8 bytes"));
    let (length, kind, flags) = unpack_len_kind(word(WORD_LEN_KIND));
    if (length as usize) < HEADER_LEN || length as usize > max {
        return Err(FrameError::BadLength { length, max });
    }
    let kind = FrameKind::from_u16(kind).ok_or(FrameError::BadKind(kind))?;
    let payload = buf
        .get(HEADER_LEN..length as usize)
        .ok_or(FrameError::Truncated { needed: length as usize, available: buf.len() })?;
    let header = FrameHeader {
        length,
        kind,
        flags,
        position: word(WORD_POSITION),
        timestamp_ns: word(WORD_TIMESTAMP),
        publisher_id: word(WORD_PUBLISHER) as u32,
    };
    Ok(Frame { header, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_parse_round_trip() {
        let h = FrameHeader {
            length: 37,
            kind: FrameKind::Data,
            flags: 7,
            position: 4096,
            timestamp_ns: 99,
            publisher_id: 3,
        };
        let mut buf = h.encode().to_vec();
        buf.extend_from_slice(b"hello");
        let f = parse_frame(&buf, 1 << 20).unwrap();
        assert_eq!(f.header, h);
        assert_eq!(f.payload, b"hello");
        assert_eq!(h.span(), 64);
    }

    #[test]
    fn rejects_bad_bytes() {
        assert!(matches!(parse_frame(&[0; 10], 100), Err(FrameError::Truncated { .. })));
        let mut h = FrameHeader {
            length: 10,
            kind: FrameKind::Data,
            flags: 0,
            position: 0,
            timestamp_ns: 0,
            publisher_id: 0,
        };
        assert!(matches!(parse_frame(&h.encode(), 100), Err(FrameError::BadLength { .. })));
        h.length = 200;
        assert!(matches!(parse_frame(&h.encode(), 100), Err(FrameError::BadLength { .. })));
        h.length = 40;
        assert!(matches!(parse_frame(&h.encode(), 100), Err(FrameError::Truncated { .. })));
        let mut b = h.encode();
        b[4] = 9;
        assert!(matches!(parse_frame(&b, 100), Err(FrameError::BadKind(9))));
    }

    #[test]
    fn spans() {
        assert_eq!(message_span(0), 32);
        assert_eq!(message_span(1), 64);
        assert_eq!(message_span(32), 64);
        assert_eq!(message_span(33), 96);
    }
}
