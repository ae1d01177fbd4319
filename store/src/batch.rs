//! The batch: a 64-byte header and the frames it covers, copied raw from
//! the ring.
//!
//! ```text
//!  0       4       6       8                               16
//!  +-------+-------+-------+-------------------------------+
//!  | "RLB1"| hlen  | ver   | first_position u64            |
//!  +-------+-------+-------+-------------------------------+
//! 16 | end_position u64            | frames_len | data_frames |
//!  +-------------------------------+------------+------------+
//! 32 | first_timestamp u64         | last_timestamp u64       |
//!  +-------------------------------+--------------------------+
//! 48 | reserved u64 (0)            | crc u32    | reserved 0 |
//!  +-------------------------------+------------+------------+
//! 64 | frames_len bytes of frames, data and padding, as in the ring
//! ```
//!
//! * magic `b"RLB1"`, `header_len` = 64, `version` = 1; little-endian.
//! * `end_position = first_position + frames_len`; `frames_len` is a
//!   multiple of [`FRAME_ALIGNMENT`] in `32..=`[`MAX_BATCH_BYTES`].
//! * The frame at batch offset `o` sits at stream position
//!   `first_position + o`, and says so in its position field; frames tile
//!   `frames_len` exactly; each is [`FrameKind::Data`] or
//!   [`FrameKind::Padding`].
//! * `data_frames` counts data frames; the timestamps are those of the
//!   first and last data frame (0 if there is none).
//! * `crc` is CRC32C (Castagnoli, as in iSCSI and ext4) over header bytes
//!   `[0, 56)` followed by the frames. The reserved words must be zero, so
//!   the four bytes after the CRC, which it does not cover, cannot change
//!   unnoticed.
//!
//! [`BatchHeader::parse`] checks everything the header alone can tell;
//! [`BatchHeader::verify`] checks the CRC and every frame. Neither reads
//! outside the slices it is given, nor panics, whatever the bytes.

use rill_shm::frame::{parse_frame, FrameError, FrameKind, FRAME_ALIGNMENT};
use thiserror::Error;

/// The four bytes every batch starts with.
pub const BATCH_MAGIC: [u8; 4] = *b"RLB1";
/// Size of the batch header in bytes.
pub const BATCH_HEADER_LEN: usize = 64;
/// The batch format's version.
pub const BATCH_VERSION: u16 = 1;
/// Largest `frames_len` of one batch: 16 MiB.
pub const MAX_BATCH_BYTES: usize = 16 << 20;
/// Header bytes the CRC covers (everything before the CRC field).
pub const CRC_COVERED_LEN: usize = 56;

const OFF_MAGIC: usize = 0;
const OFF_HEADER_LEN: usize = 4;
const OFF_VERSION: usize = 6;
const OFF_FIRST_POSITION: usize = 8;
const OFF_END_POSITION: usize = 16;
const OFF_FRAMES_LEN: usize = 24;
const OFF_DATA_FRAMES: usize = 28;
const OFF_FIRST_TIMESTAMP: usize = 32;
const OFF_LAST_TIMESTAMP: usize = 40;
const OFF_RESERVED_A: usize = 48;
const OFF_CRC: usize = 56;
const OFF_RESERVED_B: usize = 60;

const _: () = assert!(OFF_CRC == CRC_COVERED_LEN);
const _: () = assert!(OFF_RESERVED_B + 4 == BATCH_HEADER_LEN);
const _: () = assert!(BATCH_HEADER_LEN.is_multiple_of(FRAME_ALIGNMENT));
const _: () = assert!(MAX_BATCH_BYTES.is_multiple_of(FRAME_ALIGNMENT) && MAX_BATCH_BYTES <= u32::MAX as usize);

/// Why bytes are not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// Fewer bytes than the header or the frames need.
    #[error("truncated: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        available: u64,
    },
    /// The first four bytes are not `RLB1`.
    #[error("bad magic {0:02x?} (expected \"RLB1\")")]
    BadMagic([u8; 4]),
    /// The header length field is not 64.
    #[error("bad header length {0} (expected {BATCH_HEADER_LEN})")]
    BadHeaderLen(u16),
    /// A format version this code does not read.
    #[error("unsupported batch version {0} (this reads {BATCH_VERSION})")]
    BadVersion(u16),
    /// `frames_len` is not a multiple of 32 in `32..=MAX_BATCH_BYTES`.
    #[error("bad frames length {0} (must be a multiple of {FRAME_ALIGNMENT} in {FRAME_ALIGNMENT}..={MAX_BATCH_BYTES})")]
    BadFramesLen(u64),
    /// `end_position` is not `first_position + frames_len` (or that sum
    /// overflows).
    #[error("end position {end} is not first position {first} + frames length {frames_len}")]
    BadEndPosition {
        /// `first_position` field.
        first: u64,
        /// `end_position` field.
        end: u64,
        /// `frames_len` field.
        frames_len: u32,
    },
    /// `data_frames` cannot be right: more frames than fit, or timestamps
    /// without any data frame.
    #[error("inconsistent header: {0}")]
    Inconsistent(&'static str),
    /// A reserved field is not zero.
    #[error("reserved header bytes at {0} are not zero")]
    Reserved(usize),
    /// The CRC does not match the bytes.
    #[error("CRC mismatch: header says {stored:#010x}, bytes give {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes read.
        computed: u32,
    },
    /// A frame could not be parsed (or does not sit at its position).
    #[error("frame at batch offset {offset}: {source}")]
    Frame {
        /// Offset of the frame within the batch's frames.
        offset: u64,
        /// What was wrong with it.
        source: FrameError,
    },
    /// A frame runs past the end of its batch (or of its slice).
    #[error("frame at batch offset {offset} spans {span} bytes, only {available} remain")]
    FrameOverrun {
        /// Offset of the frame within the batch's frames.
        offset: u64,
        /// Bytes the frame occupies.
        span: u64,
        /// Bytes left in the batch (or slice) from the frame on.
        available: u64,
    },
    /// The batch does not start where the one before it ended (or where
    /// the segment's name says).
    #[error("batch starts at position {found}, expected {expected}")]
    Discontinuity {
        /// Position the batch should start at.
        expected: u64,
        /// Its `first_position`.
        found: u64,
    },
    /// The frames do not agree with the header's counts or timestamps.
    #[error("header says {field} = {header}, the frames give {frames}")]
    Mismatch {
        /// The header field.
        field: &'static str,
        /// Its value in the header.
        header: u64,
        /// The value computed from the frames.
        frames: u64,
    },
}

/// The decoded header of a batch. Build one with [`BatchHeader::for_frames`]
/// (writers) or [`BatchHeader::parse`] (readers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Stream position of the first frame.
    pub first_position: u64,
    /// Stream position just after the last frame.
    pub end_position: u64,
    /// Bytes of frames after the header.
    pub frames_len: u32,
    /// Number of data frames.
    pub data_frames: u32,
    /// Timestamp of the first data frame (0 if none).
    pub first_timestamp: u64,
    /// Timestamp of the last data frame (0 if none).
    pub last_timestamp: u64,
    /// CRC32C of header bytes `[0, 56)` and the frames.
    pub crc: u32,
}

/// What walking a batch's frames found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct FrameSummary {
    data_frames: u32,
    first_timestamp: u64,
    last_timestamp: u64,
}

impl BatchHeader {
    /// The header for the frames held, in order, by `frames` (usually one
    /// slice, or two where the ring wraps; each holds whole frames, as a
    /// ring's two halves do). Checks every frame as [`verify`] does, then
    /// computes the CRC over the header and each slice in turn, without
    /// concatenating them.
    ///
    /// [`verify`]: BatchHeader::verify
    pub fn for_frames(first_position: u64, frames: &[&[u8]]) -> Result<BatchHeader, FormatError> {
        let total: usize = frames.iter().map(|s| s.len()).sum();
        let frames_len = check_frames_len(total as u64)?;
        let end_position = first_position.checked_add(u64::from(frames_len)).ok_or(FormatError::BadEndPosition {
            first: first_position,
            end: u64::MAX,
            frames_len,
        })?;
        let summary = walk_frames(first_position, frames)?;
        let mut header = BatchHeader {
            first_position,
            end_position,
            frames_len,
            data_frames: summary.data_frames,
            first_timestamp: summary.first_timestamp,
            last_timestamp: summary.last_timestamp,
            crc: 0,
        };
        header.crc = frames_crc(&header.to_bytes(), frames);
        Ok(header)
    }

    /// The 64 bytes of this header.
    pub fn to_bytes(&self) -> [u8; BATCH_HEADER_LEN] {
        let mut b = [0u8; BATCH_HEADER_LEN];
        b[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&BATCH_MAGIC);
        b[OFF_HEADER_LEN..OFF_HEADER_LEN + 2].copy_from_slice(&(BATCH_HEADER_LEN as u16).to_le_bytes());
        b[OFF_VERSION..OFF_VERSION + 2].copy_from_slice(&BATCH_VERSION.to_le_bytes());
        b[OFF_FIRST_POSITION..OFF_FIRST_POSITION + 8].copy_from_slice(&self.first_position.to_le_bytes());
        b[OFF_END_POSITION..OFF_END_POSITION + 8].copy_from_slice(&self.end_position.to_le_bytes());
        b[OFF_FRAMES_LEN..OFF_FRAMES_LEN + 4].copy_from_slice(&self.frames_len.to_le_bytes());
        b[OFF_DATA_FRAMES..OFF_DATA_FRAMES + 4].copy_from_slice(&self.data_frames.to_le_bytes());
        b[OFF_FIRST_TIMESTAMP..OFF_FIRST_TIMESTAMP + 8].copy_from_slice(&self.first_timestamp.to_le_bytes());
        b[OFF_LAST_TIMESTAMP..OFF_LAST_TIMESTAMP + 8].copy_from_slice(&self.last_timestamp.to_le_bytes());
        b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&self.crc.to_le_bytes());
        b
    }

    /// Reads the header at the start of `bytes`: magic, version, lengths,
    /// positions, reserved bytes and counts. Does not check the CRC (the
    /// frames are not given; see [`verify`](BatchHeader::verify)).
    pub fn parse(bytes: &[u8]) -> Result<BatchHeader, FormatError> {
        let b: &[u8; BATCH_HEADER_LEN] = bytes
            .get(..BATCH_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(FormatError::Truncated { needed: BATCH_HEADER_LEN as u64, available: bytes.len() as u64 })?;
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != BATCH_MAGIC {
            return Err(FormatError::BadMagic(magic));
        }
        if u16_at(OFF_HEADER_LEN) as usize != BATCH_HEADER_LEN {
            return Err(FormatError::BadHeaderLen(u16_at(OFF_HEADER_LEN)));
        }
        if u16_at(OFF_VERSION) != BATCH_VERSION {
            return Err(FormatError::BadVersion(u16_at(OFF_VERSION)));
        }
        if u64_at(OFF_RESERVED_A) != 0 {
            return Err(FormatError::Reserved(OFF_RESERVED_A));
        }
        if u32_at(OFF_RESERVED_B) != 0 {
            return Err(FormatError::Reserved(OFF_RESERVED_B));
        }
        let header = BatchHeader {
            first_position: u64_at(OFF_FIRST_POSITION),
            end_position: u64_at(OFF_END_POSITION),
            frames_len: check_frames_len(u64::from(u32_at(OFF_FRAMES_LEN)))?,
            data_frames: u32_at(OFF_DATA_FRAMES),
            first_timestamp: u64_at(OFF_FIRST_TIMESTAMP),
            last_timestamp: u64_at(OFF_LAST_TIMESTAMP),
            crc: u32_at(OFF_CRC),
        };
        header.check_fields()?;
        Ok(header)
    }

    /// Checks that `header_bytes` are this header and `frames` its frames:
    /// the CRC, then every frame (parses, sits at its position, tiles the
    /// batch, data or padding), then the counts and timestamps.
    pub fn verify(&self, header_bytes: &[u8; BATCH_HEADER_LEN], frames: &[u8]) -> Result<(), FormatError> {
        let parsed = BatchHeader::parse(header_bytes)?;
        if parsed != *self {
            return Err(FormatError::Inconsistent("header bytes differ from the decoded header"));
        }
        if frames.len() != self.frames_len as usize {
            return Err(FormatError::Truncated { needed: u64::from(self.frames_len), available: frames.len() as u64 });
        }
        let computed = frames_crc(header_bytes, &[frames]);
        if computed != self.crc {
            return Err(FormatError::CrcMismatch { stored: self.crc, computed });
        }
        let summary = walk_frames(self.first_position, &[frames])?;
        let fields = [
            ("data_frames", u64::from(self.data_frames), u64::from(summary.data_frames)),
            ("first_timestamp", self.first_timestamp, summary.first_timestamp),
            ("last_timestamp", self.last_timestamp, summary.last_timestamp),
        ];
        for (field, header, frames) in fields {
            if header != frames {
                return Err(FormatError::Mismatch { field, header, frames });
            }
        }
        Ok(())
    }

    /// Bytes the batch occupies in a file: header and frames.
    pub fn batch_len(&self) -> u64 {
        BATCH_HEADER_LEN as u64 + u64::from(self.frames_len)
    }

    /// Cross-field checks of a header whose fields each are in range.
    fn check_fields(&self) -> Result<(), FormatError> {
        if self.first_position.checked_add(u64::from(self.frames_len)) != Some(self.end_position) {
            return Err(FormatError::BadEndPosition { first: self.first_position, end: self.end_position, frames_len: self.frames_len });
        }
        if self.data_frames as usize > self.frames_len as usize / FRAME_ALIGNMENT {
            return Err(FormatError::Inconsistent("more data frames than fit in the batch"));
        }
        if self.data_frames == 0 && (self.first_timestamp != 0 || self.last_timestamp != 0) {
            return Err(FormatError::Inconsistent("timestamps without data frames"));
        }
        Ok(())
    }
}

/// `len` as a `frames_len`, if it is one.
fn check_frames_len(len: u64) -> Result<u32, FormatError> {
    let ok = len >= FRAME_ALIGNMENT as u64 && len <= MAX_BATCH_BYTES as u64 && len.is_multiple_of(FRAME_ALIGNMENT as u64);
    if ok {
        Ok(len as u32)
    } else {
        Err(FormatError::BadFramesLen(len))
    }
}

/// CRC32C of header bytes `[0, 56)` followed by each slice in turn.
fn frames_crc(header_bytes: &[u8; BATCH_HEADER_LEN], frames: &[&[u8]]) -> u32 {
    let head = crc32c::crc32c(&header_bytes[..CRC_COVERED_LEN]);
    frames.iter().fold(head, |crc, s| crc32c::crc32c_append(crc, s))
}

/// Walks the frames of a batch starting at `first_position`, held in
/// `slices` in order, each slice holding whole frames. Checks each frame
/// and sums up the data frames.
fn walk_frames(first_position: u64, slices: &[&[u8]]) -> Result<FrameSummary, FormatError> {
    let mut summary = FrameSummary::default();
    let mut base = 0u64; // batch offset of the current slice
    for slice in slices {
        let mut o = 0usize;
        while o < slice.len() {
            let batch_offset = base + o as u64;
            let rest = &slice[o..];
            let frame = parse_frame(rest, MAX_BATCH_BYTES).map_err(|source| FormatError::Frame { offset: batch_offset, source })?;
            let expected = first_position.wrapping_add(batch_offset);
            if frame.header.position != expected {
                let source = FrameError::WrongPosition { expected, found: frame.header.position };
                return Err(FormatError::Frame { offset: batch_offset, source });
            }
            let span = frame.header.span();
            if span > rest.len() {
                return Err(FormatError::FrameOverrun { offset: batch_offset, span: span as u64, available: rest.len() as u64 });
            }
            if frame.header.kind == FrameKind::Data {
                if summary.data_frames == 0 {
                    summary.first_timestamp = frame.header.timestamp_ns;
                }
                summary.last_timestamp = frame.header.timestamp_ns;
                summary.data_frames += 1;
            }
            o += span;
        }
        base += slice.len() as u64;
    }
    Ok(summary)
}

/// Encodes one batch (header then frames) into a new buffer: for tests,
/// tools and anything that is not the data path.
pub fn encode_batch(first_position: u64, frames: &[&[u8]]) -> Result<Vec<u8>, FormatError> {
    let header = BatchHeader::for_frames(first_position, frames)?;
    let mut out = Vec::with_capacity(header.batch_len() as usize);
    out.extend_from_slice(&header.to_bytes());
    for s in frames {
        out.extend_from_slice(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::FrameBuf;

    fn frames_at(first: u64) -> Vec<u8> {
        let mut f = FrameBuf::new(first);
        f.data(10, 1, b"hello");
        f.padding(64);
        f.data(20, 2, &[7; 40]);
        f.into_bytes()
    }

    #[test]
    fn header_round_trips_and_verifies() {
        let frames = frames_at(4096);
        let h = BatchHeader::for_frames(4096, &[&frames]).unwrap();
        assert_eq!((h.first_position, h.end_position, h.frames_len), (4096, 4096 + 64 + 64 + 96, 224));
        assert_eq!((h.data_frames, h.first_timestamp, h.last_timestamp), (2, 10, 20));
        let bytes = h.to_bytes();
        assert_eq!(&bytes[..4], b"RLB1");
        assert_eq!(BatchHeader::parse(&bytes).unwrap(), h);
        h.verify(&bytes, &frames).unwrap();
        assert_eq!(h.crc, crc32c::crc32c(&[&bytes[..56], &frames[..]].concat()));
    }

    #[test]
    fn two_slices_give_the_same_header_as_one() {
        let frames = frames_at(0);
        let one = BatchHeader::for_frames(0, &[&frames]).unwrap();
        let two = BatchHeader::for_frames(0, &[&frames[..128], &frames[128..]]).unwrap();
        assert_eq!(one, two);
        // A frame split across the slices is not whole in either.
        assert!(matches!(
            BatchHeader::for_frames(0, &[&frames[..32], &frames[32..]]),
            Err(FormatError::Frame { offset: 0, source: FrameError::Truncated { .. } })
        ));
        // The frame at 128 is 72 bytes long and spans 96.
        assert!(matches!(
            BatchHeader::for_frames(0, &[&frames[..200], &frames[200..]]),
            Err(FormatError::FrameOverrun { offset: 128, span: 96, available: 72 })
        ));
    }

    #[test]
    fn rejects_bad_frames_and_lengths() {
        let frames = frames_at(64);
        assert!(matches!(
            BatchHeader::for_frames(0, &[&frames]),
            Err(FormatError::Frame { offset: 0, source: FrameError::WrongPosition { expected: 0, found: 64 } })
        ));
        assert_eq!(BatchHeader::for_frames(64, &[]), Err(FormatError::BadFramesLen(0)));
        assert_eq!(BatchHeader::for_frames(64, &[&frames[..40]]), Err(FormatError::BadFramesLen(40)));
        assert!(matches!(BatchHeader::for_frames(u64::MAX - 64, &[&frames]), Err(FormatError::BadEndPosition { .. })));
        let mut bad_kind = frames.clone();
        bad_kind[4] = 9;
        assert!(matches!(BatchHeader::for_frames(64, &[&bad_kind]), Err(FormatError::Frame { offset: 0, source: FrameError::BadKind(9) })));
    }

    #[test]
    fn parse_rejects_each_bad_field() {
        let frames = frames_at(0);
        let good = BatchHeader::for_frames(0, &[&frames]).unwrap().to_bytes();
        let with = |off: usize, v: &[u8]| {
            let mut b = good;
            b[off..off + v.len()].copy_from_slice(v);
            BatchHeader::parse(&b)
        };
        assert!(matches!(BatchHeader::parse(&good[..63]), Err(FormatError::Truncated { needed: 64, available: 63 })));
        assert!(matches!(with(0, b"RLB2"), Err(FormatError::BadMagic(_))));
        assert_eq!(with(4, &65u16.to_le_bytes()), Err(FormatError::BadHeaderLen(65)));
        assert_eq!(with(6, &2u16.to_le_bytes()), Err(FormatError::BadVersion(2)));
        assert_eq!(with(24, &33u32.to_le_bytes()), Err(FormatError::BadFramesLen(33)));
        assert_eq!(with(24, &(32u32 << 20).to_le_bytes()), Err(FormatError::BadFramesLen(32 << 20)));
        assert!(matches!(with(16, &1u64.to_le_bytes()), Err(FormatError::BadEndPosition { .. })));
        assert!(matches!(with(28, &100u32.to_le_bytes()), Err(FormatError::Inconsistent(_))));
        assert_eq!(with(48, &[1]), Err(FormatError::Reserved(48)));
        assert_eq!(with(63, &[1]), Err(FormatError::Reserved(60)));
    }

    #[test]
    fn verify_catches_every_changed_byte() {
        let frames = frames_at(0);
        let h = BatchHeader::for_frames(0, &[&frames]).unwrap();
        let bytes = h.to_bytes();
        for i in 0..frames.len() {
            let mut f = frames.clone();
            f[i] ^= 0x10;
            assert!(h.verify(&bytes, &f).is_err(), "frame byte {i}");
        }
        for i in 0..BATCH_HEADER_LEN {
            let mut b = bytes;
            b[i] ^= 0x10;
            let caught = BatchHeader::parse(&b).and_then(|p| p.verify(&b, &frames));
            assert!(caught.is_err(), "header byte {i}");
        }
        assert!(matches!(h.verify(&bytes, &frames[..192]), Err(FormatError::Truncated { .. })));
    }

    /// The bytes of a known batch, CRC from an independent CRC32C
    /// (Castagnoli) implementation: the format must not drift.
    #[test]
    fn known_batch_bytes() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xe306_9283, "CRC32C check value");
        let mut f = FrameBuf::new(4096);
        f.data(1000, 3, b"hello");
        f.padding(64);
        let h = BatchHeader::for_frames(4096, &[f.as_bytes()]).unwrap();
        let mut want = Vec::new();
        want.extend_from_slice(b"RLB1");
        want.extend_from_slice(&64u16.to_le_bytes());
        want.extend_from_slice(&1u16.to_le_bytes());
        for v in [4096u64, 4096 + 128] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(&128u32.to_le_bytes());
        want.extend_from_slice(&1u32.to_le_bytes());
        for v in [1000u64, 1000, 0] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.extend_from_slice(&0x29b6_88b2u32.to_le_bytes());
        want.extend_from_slice(&[0; 4]);
        assert_eq!(h.to_bytes().to_vec(), want);
    }

    #[test]
    fn padding_only_batches_have_no_timestamps() {
        let mut f = FrameBuf::new(96);
        f.padding(96);
        let h = BatchHeader::for_frames(96, &[&f.into_bytes()]).unwrap();
        assert_eq!((h.data_frames, h.first_timestamp, h.last_timestamp), (0, 0, 0));
    }
}
