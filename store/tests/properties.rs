//! Properties of the parsers over random segments, random bytes, random
//! truncations and random bit flips.

#![forbid(unsafe_code)]

mod common;

use common::{build_segment, TestFrame, TestSegment};
use proptest::prelude::*;
use rill_store::{batch_at, find_next_batch, scan_segment, BatchHeader, DamageKind, FrameReader, ReadError};
use std::io::Cursor;

fn frame() -> impl Strategy<Value = TestFrame> {
    prop_oneof![
        4 => (any::<u64>(), any::<u32>(), proptest::collection::vec(any::<u8>(), 0..80))
            .prop_map(|(timestamp_ns, publisher_id, payload)| TestFrame::Data { timestamp_ns, publisher_id, payload }),
        1 => (1usize..=4).prop_map(|n| TestFrame::Padding(32 * n)),
    ]
}

/// 1 to 6 batches of 1 to 4 frames each (at most ~600 bytes a batch, well
/// within the lengths where CRC32C catches any three flipped bits).
fn segment() -> impl Strategy<Value = TestSegment> {
    let batches = proptest::collection::vec(proptest::collection::vec(frame(), 1..=4), 1..=6);
    ((0u64..1 << 40).prop_map(|p| p * 32), batches).prop_map(|(first, batches)| build_segment(first, &batches))
}

/// Every frame the reader yields, as (position, is data), and how it ended.
fn read_all(bytes: &[u8], first: u64) -> (Vec<u64>, Result<u64, (u64, String)>) {
    let mut reader = FrameReader::new(Cursor::new(bytes), first);
    let mut positions = Vec::new();
    loop {
        match reader.next_frame() {
            Ok(Some(f)) => positions.push(f.header.position),
            Ok(None) => return (positions, Ok(reader.file_offset())),
            Err(ReadError::BadBatch { offset, source }) => return (positions, Err((offset, source.to_string()))),
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

fn frame_positions(seg: &TestSegment, batches: usize) -> Vec<u64> {
    let (positions, _) = read_all(&seg.bytes[..seg.batch_offsets[batches] as usize], seg.first_position);
    positions
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), first in any::<u64>(), from in any::<u64>()) {
        let scan = scan_segment(&bytes, first);
        prop_assert!(scan.valid_len <= bytes.len() as u64);
        let _ = BatchHeader::parse(&bytes);
        let _ = batch_at(&bytes, from % 700, None);
        let _ = find_next_batch(&bytes, from % 700);
        let _ = read_all(&bytes, first);
    }

    /// Random bytes behind a valid-looking header prefix, so the checks
    /// past the magic and the frame walk get exercised.
    #[test]
    fn garbled_segments_never_panic(seg in segment(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..20)) {
        let mut bytes = seg.bytes.clone();
        for (at, v) in edits {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        let scan = scan_segment(&bytes, seg.first_position);
        prop_assert!(scan.valid_len <= bytes.len() as u64);
        let _ = read_all(&bytes, seg.first_position);
        if let Ok(h) = BatchHeader::parse(&bytes) {
            let head: [u8; 64] = bytes[..64].try_into().unwrap();
            let _ = h.verify(&head, &bytes[64..]);
        }
    }

    #[test]
    fn whole_segments_scan_and_read_back(seg in segment()) {
        let scan = scan_segment(&seg.bytes, seg.first_position);
        prop_assert!(scan.damage.is_none());
        prop_assert_eq!(scan.valid_len, seg.bytes.len() as u64);
        let offsets: Vec<u64> = scan.batches.iter().map(|b| b.file_offset).collect();
        prop_assert_eq!(&offsets[..], &seg.batch_offsets[..seg.batch_offsets.len() - 1]);
        prop_assert_eq!(scan.end_position, *seg.batch_positions.last().unwrap());
        let mut reader = FrameReader::new(Cursor::new(&seg.bytes[..]), seg.first_position);
        let mut data = Vec::new();
        while let Some(f) = reader.next_data().unwrap() {
            data.push((f.header.position, f.header.timestamp_ns, f.header.publisher_id, f.payload.to_vec()));
        }
        prop_assert_eq!(data, seg.data.clone());
        prop_assert_eq!(reader.file_offset(), seg.bytes.len() as u64);
    }

    #[test]
    fn truncation_keeps_the_whole_batches_before_the_cut(seg in segment(), cut in any::<prop::sample::Index>()) {
        let cut = cut.index(seg.bytes.len() + 1);
        let bytes = &seg.bytes[..cut];
        let whole = seg.batch_offsets.iter().rposition(|&o| o <= cut as u64).unwrap();
        let scan = scan_segment(bytes, seg.first_position);
        prop_assert_eq!(scan.valid_len, seg.batch_offsets[whole]);
        prop_assert_eq!(scan.batches.len(), whole);
        prop_assert_eq!(scan.end_position, seg.batch_positions[whole]);
        if seg.batch_offsets[whole] == cut as u64 {
            prop_assert_eq!(scan.damage, None);
        } else {
            let d = scan.damage.unwrap();
            prop_assert_eq!((d.offset, d.kind), (seg.batch_offsets[whole], DamageKind::Torn));
        }
        // A reader of a file cut short stops cleanly before the partial
        // batch: it may yet be completed.
        let (positions, end) = read_all(bytes, seg.first_position);
        prop_assert_eq!(end, Ok(seg.batch_offsets[whole]));
        prop_assert_eq!(positions, frame_positions(&seg, whole));
    }

    /// Up to three flipped bits in batch `k`, and up to two more in any
    /// later batches (at most five in one batch of under 5,243 bits, all
    /// of which CRC32C detects): every undamaged batch is kept, each
    /// damaged run in the middle is a hole of exactly its positions, and
    /// a plain reader stops at the first damaged batch.
    #[test]
    fn bit_flips_lose_exactly_the_damaged_batches(
        seg in segment(),
        batch in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..8), 1..=3),
        later in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), 0u8..8), 0..=2),
    ) {
        let n = seg.batch_offsets.len() - 1;
        let k = batch.index(n);
        let range = |b: usize| seg.batch_offsets[b] as usize..seg.batch_offsets[b + 1] as usize;
        let mut bytes = seg.bytes.clone();
        for (at, bit) in &flips {
            bytes[range(k).start + at.index(range(k).len())] ^= 1 << bit;
        }
        for (b, at, bit) in &later {
            let b = k + b.index(n - k);
            bytes[range(b).start + at.index(range(b).len())] ^= 1 << bit;
        }
        let damaged: Vec<usize> = (0..n).filter(|&b| bytes[range(b)] != seg.bytes[range(b)]).collect();
        prop_assume!(damaged.first() == Some(&k)); // two flips of one bit cancel out
        let start = range(k).start as u64;
        let scan = scan_segment(&bytes, seg.first_position);
        // Every undamaged batch is kept, before and after the damage.
        let kept: Vec<u64> = (0..n).filter(|b| !damaged.contains(b)).map(|b| seg.batch_offsets[b]).collect();
        prop_assert_eq!(scan.batches.iter().map(|b| b.file_offset).collect::<Vec<_>>(), kept.clone());
        // Each run of damaged batches followed by a kept one is a hole of
        // exactly its positions; a run at the end is the damaged tail.
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &b in &damaged {
            match runs.last_mut() {
                Some((_, end)) if *end == b => *end = b + 1,
                _ => runs.push((b, b + 1)),
            }
        }
        let tail = runs.last().filter(|r| r.1 == n).copied();
        let holes: Vec<(u64, u64, u64, u64)> = runs
            .iter()
            .filter(|r| r.1 < n)
            .map(|&(a, b)| (seg.batch_offsets[a], seg.batch_offsets[b] - seg.batch_offsets[a], seg.batch_positions[a], seg.batch_positions[b]))
            .collect();
        prop_assert_eq!(scan.holes.iter().map(|h| (h.offset, h.len, h.from, h.to)).collect::<Vec<_>>(), holes);
        match tail {
            None => {
                prop_assert_eq!(scan.damage.clone(), None);
                prop_assert_eq!(scan.valid_len, bytes.len() as u64);
            }
            Some((a, _)) => {
                let d = scan.damage.clone().unwrap();
                prop_assert_eq!((d.offset, scan.valid_len), (seg.batch_offsets[a], seg.batch_offsets[a]));
                prop_assert_eq!(scan.end_position, seg.batch_positions[a]);
            }
        }
        prop_assert!(scan.holes.first().is_none_or(|h| h.offset == start) || tail.is_some_and(|t| t.0 == k));
        let (positions, ended) = read_all(&bytes, seg.first_position);
        prop_assert_eq!(positions, frame_positions(&seg, k));
        // A flipped frames_len can make the batch look longer than the
        // file: to a reader that is a batch not yet whole, not an error.
        match ended {
            Ok(offset) | Err((offset, _)) => prop_assert_eq!(offset, start),
        }
    }
}
