//! Scanning a whole segment held in memory: which batches are valid, and
//! what the damage after them is.
//!
//! A segment is batches back to back from offset 0; the first starts at
//! the position in the file's name and each next one where the previous
//! ended. [`scan_segment`] walks them, verifying each CRC and frame, and
//! stops at the first batch that is not valid. What follows decides the
//! kind of damage:
//!
//! * [`DamageKind::Torn`]: no valid batch follows. The usual cause is a
//!   crash during a write (a short or partly written last batch); the fix
//!   is to cut the file at the last whole batch.
//! * [`DamageKind::Corrupt`]: at least one valid batch follows, found by
//!   trying every 32-byte aligned offset after the bad one for a header
//!   that parses and a batch whose CRC and frames verify. The bytes are
//!   not a torn write but damaged in place (media, a stray write); they
//!   must be kept aside before anything is cut.
//!
//! Zero bytes from the end of the last batch to the end of the file are a
//! zero tail (the rest of a direct-I/O writer's last block, or the unused
//! end of a preallocated segment): no damage.
//!
//! Nothing here reads outside the slice given or panics, whatever the
//! bytes.

use crate::batch::{BatchHeader, FormatError, BATCH_HEADER_LEN, BATCH_MAGIC};
use rill_shm::frame::{parse_frame, FRAME_ALIGNMENT, HEADER_LEN};
use std::fmt;

/// Whether `rest`, the bytes after a segment's last valid batch, is a zero
/// tail: all zero (the rest of a direct-I/O writer's last block, or the
/// unused end of a preallocated segment), and so a clean end.
pub fn is_zero_tail(rest: &[u8]) -> bool {
    rest.iter().all(|&b| b == 0)
}

/// One valid batch of a segment: what the index keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Stream position of the batch's first frame.
    pub position: u64,
    /// Stream position just after its last frame.
    pub end_position: u64,
    /// Timestamp of its first data frame (0 if none).
    pub first_timestamp: u64,
    /// Timestamp of its last data frame (0 if none).
    pub last_timestamp: u64,
    /// Number of data frames.
    pub data_frames: u32,
    /// Offset of the batch header in the segment file.
    pub file_offset: u64,
}

impl IndexEntry {
    /// The entry of `header`, found at `file_offset`.
    pub fn new(header: &BatchHeader, file_offset: u64) -> IndexEntry {
        IndexEntry {
            position: header.first_position,
            end_position: header.end_position,
            first_timestamp: header.first_timestamp,
            last_timestamp: header.last_timestamp,
            data_frames: header.data_frames,
            file_offset,
        }
    }

    /// Bytes of frames in the batch.
    pub fn frames_len(&self) -> u64 {
        self.end_position - self.position
    }

    /// File offset just after the batch.
    pub fn end_offset(&self) -> u64 {
        self.file_offset + BATCH_HEADER_LEN as u64 + self.frames_len()
    }
}

/// What is wrong after the valid batches of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DamageKind {
    /// The bytes after the valid batches are a short or partial batch at
    /// the end of the file: no valid batch follows.
    Torn,
    /// A bad batch with at least one valid batch somewhere after it.
    Corrupt {
        /// Why the first bad batch is bad.
        reason: String,
        /// How many valid batches were found after it.
        valid_batches_after: u32,
    },
}

/// Where a segment stops being valid, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// File offset of the first bad byte: the end of the last valid batch.
    pub offset: u64,
    /// Torn or corrupt.
    pub kind: DamageKind,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            DamageKind::Torn => write!(f, "torn tail at offset {}: a partial batch, nothing valid after it", self.offset),
            DamageKind::Corrupt { reason, valid_batches_after } => write!(
                f,
                "corrupt batch at offset {}: {reason}; {valid_batches_after} valid batch{} after it",
                self.offset,
                if *valid_batches_after == 1 { "" } else { "es" }
            ),
        }
    }
}

/// What [`scan_segment`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of whole valid batches from the start of the file.
    pub valid_len: u64,
    /// Length of the bytes scanned.
    pub file_len: u64,
    /// Stream position after the last valid batch (the expected first
    /// position if there is none).
    pub end_position: u64,
    /// Every valid batch, in file order.
    pub batches: Vec<IndexEntry>,
    /// What follows the valid batches, if anything.
    pub damage: Option<Damage>,
}

impl Scan {
    /// Whether the whole file is valid batches.
    pub fn is_whole(&self) -> bool {
        self.damage.is_none()
    }
}

/// Walks the batches of a segment whose first batch should start at
/// position `expected_first` (the position in its file name).
pub fn scan_segment(bytes: &[u8], expected_first: u64) -> Scan {
    let mut offset = 0u64;
    let mut position = expected_first;
    let mut batches = Vec::new();
    let mut damage = None;
    while offset < bytes.len() as u64 {
        match batch_at(bytes, offset, Some(position)) {
            Ok((header, _)) => {
                batches.push(IndexEntry::new(&header, offset));
                offset += header.batch_len();
                position = header.end_position;
            }
            Err(_) if is_zero_tail(&bytes[offset as usize..]) => break,
            Err(e) => {
                let after = count_valid_batches(bytes, offset + FRAME_ALIGNMENT as u64);
                let kind =
                    if after == 0 { DamageKind::Torn } else { DamageKind::Corrupt { reason: e.to_string(), valid_batches_after: after } };
                damage = Some(Damage { offset, kind });
                break;
            }
        }
    }
    Scan { valid_len: offset, file_len: bytes.len() as u64, end_position: position, batches, damage }
}

/// The valid batch at `offset` of `bytes`: its header and frames. With
/// `expected_position`, the batch must also start there.
pub fn batch_at(bytes: &[u8], offset: u64, expected_position: Option<u64>) -> Result<(BatchHeader, &[u8]), FormatError> {
    let available = (bytes.len() as u64).saturating_sub(offset);
    let rest = usize::try_from(offset).ok().and_then(|o| bytes.get(o..)).unwrap_or_default();
    let header = BatchHeader::parse(rest)?;
    if let Some(expected) = expected_position.filter(|&e| e != header.first_position) {
        return Err(FormatError::Discontinuity { expected, found: header.first_position });
    }
    let needed = header.batch_len();
    let frames = rest.get(BATCH_HEADER_LEN..needed as usize).ok_or(FormatError::Truncated { needed, available })?;
    let head: &[u8; BATCH_HEADER_LEN] = rest[..BATCH_HEADER_LEN].try_into().expect("parse checked the length");
    header.verify(head, frames)?;
    Ok((header, frames))
}

/// The first valid batch at a 32-byte aligned offset at or after `from`,
/// whatever its position: where reading may resume after damage.
pub fn find_next_batch(bytes: &[u8], from: u64) -> Option<(u64, BatchHeader)> {
    let align = FRAME_ALIGNMENT as u64;
    let mut c = from.checked_add(align - 1)? & !(align - 1);
    let min_batch = (BATCH_HEADER_LEN + FRAME_ALIGNMENT) as u64;
    while c.checked_add(min_batch).is_some_and(|end| end <= bytes.len() as u64) {
        let at = c as usize;
        if bytes[at..at + 4] == BATCH_MAGIC && first_frame_fits(bytes, at) {
            if let Ok((header, _)) = batch_at(bytes, c, None) {
                return Some((c, header));
            }
        }
        c += align;
    }
    None
}

/// Cheap filter before a CRC: the header parses and the first frame sits
/// at the batch's first position. Keeps a scan over garbage linear.
fn first_frame_fits(bytes: &[u8], at: usize) -> bool {
    let Ok(header) = BatchHeader::parse(&bytes[at..]) else { return false };
    let frames = &bytes[at + BATCH_HEADER_LEN..];
    frames.len() >= HEADER_LEN && parse_frame(frames, frames.len()).is_ok_and(|f| f.header.position == header.first_position)
}

/// How many valid batches lie at or after `from`, resuming after each at
/// its end (bounded by the bytes: each step moves forward).
fn count_valid_batches(bytes: &[u8], from: u64) -> u32 {
    let mut count = 0u32;
    let mut at = from;
    while let Some((offset, header)) = find_next_batch(bytes, at) {
        count = count.saturating_add(1);
        at = offset + header.batch_len();
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::encode_batch;
    use crate::build::FrameBuf;

    /// A segment of `n` batches of two messages each from position 1024;
    /// returns it and each batch's file offset, plus the end offset.
    fn segment(n: usize) -> (Vec<u8>, Vec<u64>) {
        let mut seg = Vec::new();
        let mut offsets = Vec::new();
        let mut pos = 1024;
        for i in 0..n {
            let mut f = FrameBuf::new(pos);
            f.data(100 + i as u64, 1, format!("message {i}").as_bytes());
            f.data(200 + i as u64, 2, &[i as u8; 50]);
            offsets.push(seg.len() as u64);
            seg.extend(encode_batch(pos, &[f.as_bytes()]).unwrap());
            pos = f.end_position();
        }
        offsets.push(seg.len() as u64);
        (seg, offsets)
    }

    #[test]
    fn whole_segment_scans_clean() {
        let (seg, offsets) = segment(3);
        let s = scan_segment(&seg, 1024);
        assert!(s.is_whole(), "{s:?}");
        assert_eq!(s.valid_len, seg.len() as u64);
        assert_eq!(s.batches.iter().map(|b| b.file_offset).collect::<Vec<_>>(), offsets[..3]);
        assert_eq!((s.batches[0].position, s.batches[1].first_timestamp, s.batches[2].last_timestamp), (1024, 101, 202));
        assert_eq!(s.end_position, s.batches[2].end_position);
        assert_eq!(scan_segment(&[], 7), Scan { valid_len: 0, file_len: 0, end_position: 7, batches: vec![], damage: None });
    }

    #[test]
    fn wrong_first_position_is_damage() {
        let (seg, _) = segment(1);
        let s = scan_segment(&seg, 0);
        assert_eq!(s.valid_len, 0);
        assert_eq!(s.damage, Some(Damage { offset: 0, kind: DamageKind::Torn }));
    }

    #[test]
    fn corrupt_middle_counts_the_batches_after() {
        let (mut seg, offsets) = segment(4);
        seg[offsets[1] as usize + 100] ^= 1;
        let s = scan_segment(&seg, 1024);
        assert_eq!(s.valid_len, offsets[1]);
        assert_eq!(s.batches.len(), 1);
        let d = s.damage.unwrap();
        assert!(matches!(&d.kind, DamageKind::Corrupt { valid_batches_after: 2, reason } if reason.contains("CRC")), "{d}");
        assert_eq!(find_next_batch(&seg, offsets[1] + 32).map(|(o, _)| o), Some(offsets[2]));
    }

    #[test]
    fn zero_tail_is_a_clean_end() {
        let (mut seg, offsets) = segment(2);
        seg.resize(seg.len() + 4000, 0);
        let s = scan_segment(&seg, 1024);
        assert!(s.is_whole(), "{s:?}");
        assert_eq!((s.valid_len, s.file_len, s.batches.len()), (offsets[2], seg.len() as u64, 2));
        // However long (a preallocated segment's unused end)...
        let mut long = seg.clone();
        long.resize(offsets[2] as usize + (4 << 20), 0);
        assert!(scan_segment(&long, 1024).is_whole());
        // ...but one non-zero byte makes it torn.
        let last = seg.len() - 1;
        seg[last] = 1;
        assert_eq!(scan_segment(&seg, 1024).damage.map(|d| (d.offset, d.kind)), Some((offsets[2], DamageKind::Torn)));
    }

    #[test]
    fn torn_tail_is_torn() {
        let (seg, offsets) = segment(2);
        let s = scan_segment(&seg[..seg.len() - 5], 1024);
        assert_eq!((s.valid_len, s.batches.len()), (offsets[1], 1));
        assert_eq!(s.damage.as_ref().map(|d| &d.kind), Some(&DamageKind::Torn));
        assert!(s.damage.unwrap().to_string().contains("torn tail at offset"));
    }
}
