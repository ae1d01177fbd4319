//! Scanning a whole segment held in memory: which batches are valid, and
//! what the damage after them is.
//!
//! A segment is batches back to back from offset 0; the first starts at
//! the position in the file's name and each next one where the previous
//! ended. [`scan_segment`] walks them, verifying each CRC and frame. At a
//! batch that is not valid it looks for the next valid batch (trying every
//! 32-byte aligned offset after the bad one for a header that parses, a
//! position no earlier than expected, and a batch whose CRC and frames
//! verify):
//!
//! * found: the bytes in between are a [`Hole`] (damaged in place: media,
//!   a stray write, or unsynced writes that reached the disk out of order
//!   before a power cut); the positions it held are lost, exactly
//!   `from..to`, and the scan goes on after it, so the valid batches after
//!   damage are kept.
//! * none: the damage is the segment's tail, [`Damage`]: either
//!   [`DamageKind::Torn`], a batch cut short (the usual end of a crash
//!   during a write; nothing of value), or [`DamageKind::Corrupt`], a last
//!   batch of its full length that fails its checks (a bit flip, or a
//!   write whose pieces did not all reach the disk): kept aside before it
//!   is cut, and reported.
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

/// What is wrong after the last valid batch of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DamageKind {
    /// A batch cut short (its header, or its frames, run past the end of
    /// the file), or garbage too short to be one: a write cut by a crash.
    Torn,
    /// A last batch whose whole length is in the file but which fails its
    /// checks (CRC, frames, position): a bit flip, or a write of which only
    /// some pieces reached the disk.
    Corrupt {
        /// Why it is bad.
        reason: String,
    },
}

/// Damaged bytes in the middle of a segment, with valid batches after
/// them: the stream positions `from..to` are lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    /// File offset of the first bad byte (the end of the batch before).
    pub offset: u64,
    /// Bytes up to the next valid batch.
    pub len: u64,
    /// First position lost: where the batch before ended.
    pub from: u64,
    /// Position of the next valid batch: the first one not lost.
    pub to: u64,
    /// Why the first bad batch there is bad.
    pub reason: String,
}

impl fmt::Display for Hole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "positions {}..{} lost ({} stream bytes; {} damaged file bytes at offset {}: {})",
            self.from,
            self.to,
            // Saturating: the fields are public, and a hole built
            // backwards must not make printing it panic.
            self.to.saturating_sub(self.from),
            self.len,
            self.offset,
            self.reason
        )
    }
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
            DamageKind::Corrupt { reason } => {
                write!(f, "corrupt last batch at offset {}: {reason}; nothing valid after it", self.offset)
            }
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
    /// Every valid batch, in file order (also those after holes).
    pub batches: Vec<IndexEntry>,
    /// Damaged stretches with valid batches after them, in file order.
    pub holes: Vec<Hole>,
    /// What follows the last valid batch, if anything.
    pub damage: Option<Damage>,
}

impl Scan {
    /// Whether the whole file is valid batches.
    pub fn is_whole(&self) -> bool {
        self.damage.is_none() && self.holes.is_empty()
    }
}

/// Walks the batches of a segment whose first batch should start at
/// position `expected_first` (the position in its file name), past holes
/// (see the module docs).
pub fn scan_segment(bytes: &[u8], expected_first: u64) -> Scan {
    let mut offset = 0u64;
    let mut position = expected_first;
    let mut batches = Vec::new();
    let mut holes = Vec::new();
    let mut damage = None;
    while offset < bytes.len() as u64 {
        match batch_at(bytes, offset, Some(position)) {
            Ok((header, _)) => {
                batches.push(IndexEntry::new(&header, offset));
                offset += header.batch_len();
                position = header.end_position;
            }
            Err(_) if is_zero_tail(&bytes[offset as usize..]) => break,
            Err(e) => match find_next_batch_from(bytes, offset + FRAME_ALIGNMENT as u64, position) {
                Some((next, header)) => {
                    holes.push(Hole { offset, len: next - offset, from: position, to: header.first_position, reason: e.to_string() });
                    offset = next;
                    position = header.first_position;
                }
                None => {
                    // A header that parses, and a batch whose whole length
                    // is in the file, yet bad: corrupt. Anything less
                    // (garbage, a short batch): torn.
                    let whole = BatchHeader::parse(&bytes[offset as usize..])
                        .is_ok_and(|h| h.batch_len() <= bytes.len() as u64 - offset);
                    let kind = match e {
                        e if whole && !matches!(e, FormatError::Truncated { .. }) => DamageKind::Corrupt { reason: e.to_string() },
                        _ => DamageKind::Torn,
                    };
                    damage = Some(Damage { offset, kind });
                    break;
                }
            },
        }
    }
    Scan { valid_len: offset, file_len: bytes.len() as u64, end_position: position, batches, holes, damage }
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

/// The first valid batch at a 32-byte aligned offset at or after `from`
/// that starts at position `min_position` or later (an older batch there
/// is stale bytes, never the stream's next batch).
pub fn find_next_batch_from(bytes: &[u8], from: u64, min_position: u64) -> Option<(u64, BatchHeader)> {
    let mut at = from;
    loop {
        let (offset, header) = find_next_batch(bytes, at)?;
        if header.first_position >= min_position {
            return Some((offset, header));
        }
        at = offset + FRAME_ALIGNMENT as u64;
    }
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
        assert_eq!(scan_segment(&[], 7), Scan { valid_len: 0, file_len: 0, end_position: 7, batches: vec![], holes: vec![], damage: None });
    }

    #[test]
    fn wrong_first_position_is_damage() {
        let (seg, _) = segment(1);
        let s = scan_segment(&seg, 0);
        assert_eq!(s.valid_len, 0);
        assert!(matches!(s.damage, Some(Damage { offset: 0, kind: DamageKind::Corrupt { .. } })), "{s:?}");
    }

    #[test]
    fn a_corrupt_middle_batch_is_a_hole_and_the_batches_after_it_stay() {
        let (mut seg, offsets) = segment(4);
        let whole = scan_segment(&seg, 1024);
        seg[offsets[1] as usize + 100] ^= 1;
        let s = scan_segment(&seg, 1024);
        assert_eq!(s.valid_len, seg.len() as u64);
        assert_eq!(s.batches.len(), 3);
        assert_eq!(s.damage, None);
        assert!(!s.is_whole());
        let h = &s.holes[..];
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!((h[0].offset, h[0].len), (offsets[1], offsets[2] - offsets[1]));
        assert_eq!((h[0].from, h[0].to), (whole.batches[1].position, whole.batches[2].position));
        assert!(h[0].reason.contains("CRC"), "{}", h[0]);
        assert_eq!(s.end_position, whole.end_position);
        assert_eq!(find_next_batch(&seg, offsets[1] + 32).map(|(o, _)| o), Some(offsets[2]));
    }

    #[test]
    fn a_bit_flip_in_the_last_batch_is_corrupt_not_torn() {
        let (mut seg, offsets) = segment(3);
        seg[offsets[2] as usize + 100] ^= 1;
        let s = scan_segment(&seg, 1024);
        assert_eq!((s.valid_len, s.batches.len()), (offsets[2], 2));
        assert!(matches!(s.damage.map(|d| d.kind), Some(DamageKind::Corrupt { reason }) if reason.contains("CRC")));
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

    /// A hole built backwards (as `StreamLog::lost` once reported
    /// overlapping segments; see the `store_index` fuzz target) prints
    /// without an overflow.
    #[test]
    fn a_backwards_hole_displays() {
        let h = Hole { offset: 576, len: 0, from: 448, to: 32, reason: "overlap".into() };
        assert!(h.to_string().contains("(0 stream bytes;"), "{h}");
    }
}
