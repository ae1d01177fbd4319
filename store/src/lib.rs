//! `rill-store`: the on-disk format of persisted streams.
//!
//! A persisted stream is a directory of segment files,
//! `<data_dir>/<stream>/<first position, 20 digits>.log`. A segment is
//! batches back to back; a batch is a 64-byte header with a CRC32C and
//! the frames it covers, copied raw from the ring (data and padding
//! frames, exactly as the ring holds them: the frame format of
//! [`rill_shm::frame`] is the one byte format of ring, file and wire).
//!
//! * [`batch`]: the batch header, its checks and its CRC
//!   ([`BatchHeader`]).
//! * [`scan`]: walking a whole segment, past holes of damaged bytes in
//!   its middle, classifying a damaged tail as torn or corrupt
//!   ([`scan_segment`]).
//! * [`recover`]: cutting a damaged tail at start-up, keeping corrupt bytes
//!   in a side file ([`recover_segment`]).
//! * [`index`]: a stream's segments, indexed by position and time from the
//!   batch headers alone ([`StreamLog`]).
//! * [`reader`]: frames from a segment, each batch verified
//!   ([`FrameReader`]).
//! * [`build`]: frames in ordinary memory, for tests and tools
//!   ([`FrameBuf`]).
//! * [`dir`]: a stream directory held by its fd, whose files are opened
//!   relative to it, never through a symbolic link ([`Dir`]).
//!
//! The writer (the daemon's archiver) builds a header with
//! [`BatchHeader::for_frames`] over the ring's one or two slices and
//! writes header and slices with one vectored write, or (direct I/O) from
//! a block-aligned copy whose last block is filled up with zeros.
//!
//! # The zero tail
//! A segment written with direct I/O ends with the rest of its last block
//! zeroed, and a preallocated segment (written zeros, so that appending to
//! it changes no metadata and a sync is a mere flush) with zeros up to its
//! full size: after the last batch, only zero bytes. That is a clean end,
//! not damage ([`is_zero_tail`]); the next batch is written over it, at
//! the end of the last batch. A reader takes an all-zero batch header as
//! the end of what is written so far. Everything that reads
//! checks every length against what it holds: bad bytes give an error,
//! never a panic or a read out of bounds.
//!
//! # Example
//! ```
//! use rill_store::{encode_batch, scan_segment, FrameBuf, FrameReader};
//!
//! let mut frames = FrameBuf::new(4096);
//! frames.data(1_000, 7, b"hello");
//! frames.data(2_000, 7, b"world");
//! let segment = encode_batch(4096, &[frames.as_bytes()]).unwrap();
//!
//! let scan = scan_segment(&segment, 4096);
//! assert!(scan.is_whole());
//! assert_eq!(scan.end_position, frames.end_position());
//!
//! let mut reader = FrameReader::new(std::io::Cursor::new(&segment[..]), 4096);
//! let mut got = Vec::new();
//! while let Some(frame) = reader.next_data().unwrap() {
//!     got.push(frame.payload.to_vec());
//! }
//! assert_eq!(got, [b"hello".to_vec(), b"world".to_vec()]);
//! ```

#![forbid(unsafe_code)]

pub mod batch;
pub mod build;
pub mod dir;
pub mod index;
pub mod reader;
pub mod recover;
pub mod scan;

pub use batch::{encode_batch, BatchHeader, FormatError, BATCH_HEADER_LEN, MAX_BATCH_BYTES};
pub use build::FrameBuf;
pub use dir::Dir;
pub use index::{list_segments, list_segments_in, LogError, SegmentIndex, StreamLog};
pub use reader::{FrameReader, ReadError, Skipped};
pub use recover::{recover_segment, recover_segment_in, Recovery};
pub use scan::{batch_at, find_next_batch, find_next_batch_from, is_zero_tail, scan_segment, Damage, DamageKind, Hole, IndexEntry, Scan};

/// Digits of the position in a segment file's name (`u64::MAX` has 20).
const NAME_DIGITS: usize = 20;

/// The file name of the segment whose first batch starts at
/// `first_position`: 20 decimal digits and `.log`, so names sort as
/// positions do.
pub fn segment_file_name(first_position: u64) -> String {
    format!("{first_position:0NAME_DIGITS$}.log")
}

/// The first position in a segment file name, if `name` is one (exactly
/// as [`segment_file_name`] writes it).
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort() {
        assert_eq!(segment_file_name(0), "00000000000000000000.log");
        assert_eq!(segment_file_name(4096), "00000000000000004096.log");
        assert_eq!(segment_file_name(u64::MAX), "18446744073709551615.log");
        for p in [0, 1, 4096, 1 << 40, u64::MAX] {
            assert_eq!(parse_segment_file_name(&segment_file_name(p)), Some(p));
        }
        assert!(segment_file_name(999) < segment_file_name(1000));
        for bad in [
            "4096.log",
            "00000000000000004096.txt",
            "00000000000000004096.log.corrupt-64",
            "+0000000000000004096.log",
            "99999999999999999999.log",
            "0000000000000000409a.log",
            "",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }
}
