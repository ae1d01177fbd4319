//! A segment file's bytes as rill-store reads them in memory: the scan
//! that recovery and `rill dump` use (`scan_segment`, with `batch_at`,
//! `find_next_batch`), and the reader that subscribers replaying the log
//! and rilld use (`FrameReader` over a `Cursor`, with `skip_damage`).
//! Must never panic or read out of bounds, only report damage; and the
//! two must agree: the batches a reader reads (skipping damage as it is
//! told to) are the first batches the scan found valid, and every data
//! frame it hands out lies inside one of them.
//!
//! Input: 8 bytes of the segment's first position (its file name), 8
//! bytes for a reader that starts mid-file (`FrameReader::at`: u32 file
//! offset, u32 distance of its `from` position), then the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_shm::frame::FrameKind;
use rill_store::{batch_at, find_next_batch, scan_segment, DamageKind, FrameReader, ReadError};
use std::io::Cursor;

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first_chunk::<8>() else { return };
    let Some((at, bytes)) = rest.split_first_chunk::<8>() else { return };
    let first = u64::from_le_bytes(*first);
    let at_offset = u64::from(u32::from_le_bytes(at[..4].try_into().unwrap()));
    let at_from = u64::from(u32::from_le_bytes(at[4..].try_into().unwrap()));

    let scan = scan_segment(bytes, first);
    assert_eq!(scan.file_len, bytes.len() as u64);
    assert!(scan.valid_len <= scan.file_len);
    let mut end = 0;
    for b in &scan.batches {
        assert!(b.file_offset >= end && b.end_offset() <= scan.valid_len, "{scan:?}");
        let (h, frames) = batch_at(bytes, b.file_offset, Some(b.position)).expect("a batch the scan found valid");
        assert_eq!((h.first_position, h.end_position, frames.len() as u64), (b.position, b.end_position, b.frames_len()));
        end = b.end_offset();
    }
    assert_eq!(scan.end_position, scan.batches.last().map_or(first, |b| b.end_position));
    for h in &scan.holes {
        assert!(h.to >= h.from && h.offset + h.len <= scan.valid_len);
        let _ = h.to_string();
    }
    match &scan.damage {
        Some(d) => {
            assert_eq!(d.offset, scan.valid_len);
            if let DamageKind::Corrupt { .. } = d.kind {
                assert!(d.offset < scan.file_len);
            }
            let _ = d.to_string();
        }
        None => assert!(bytes[scan.valid_len as usize..].iter().all(|&b| b == 0), "clean end but not zeros"),
    }

    // Batch by batch, skipping damage: the scan's batches, in order (the
    // reader stops early at an all-zero header, which ends what is
    // written; the scan goes on if non-zero bytes follow).
    let mut r = FrameReader::new(Cursor::new(bytes), first);
    let mut read = Vec::new();
    for _ in 0..10_000 {
        let offset = r.file_offset();
        match r.next_batch() {
            Ok(Some(h)) => read.push((offset, h.first_position, h.end_position)),
            Ok(None) => break,
            Err(ReadError::BadBatch { .. }) => match r.skip_damage() {
                Ok(Some(s)) => assert!(s.to >= s.from),
                Ok(None) => break,
                Err(e) => panic!("skip_damage on bytes in memory: {e}"),
            },
            Err(e) => panic!("reading bytes in memory: {e}"),
        }
    }
    let found: Vec<_> = scan.batches.iter().map(|b| (b.file_offset, b.position, b.end_position)).collect();
    assert!(read.len() <= found.len() && read[..] == found[..read.len()], "reader {read:?}\nscan {found:?}");

    // Frame by frame, data only.
    let mut r = FrameReader::new(Cursor::new(bytes), first);
    let mut last = None;
    for _ in 0..100_000 {
        match r.next_data() {
            Ok(Some(f)) => {
                assert_eq!(f.header.kind, FrameKind::Data);
                let p = f.header.position;
                assert!(last.is_none_or(|l| p > l));
                assert!(scan.batches.iter().any(|b| b.position <= p && p < b.end_position));
                last = Some(p);
            }
            Ok(None) => break,
            Err(_) => match r.skip_damage() {
                Ok(Some(_)) => {}
                _ => break,
            },
        }
    }

    // From an offset the index might give (here: any), from any position.
    let mut r = FrameReader::at(Cursor::new(bytes), at_offset, first.wrapping_add(at_from));
    for _ in 0..1000 {
        match r.next_frame() {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => match r.skip_damage() {
                Ok(Some(_)) => {}
                _ => break,
            },
        }
    }
    let _ = find_next_batch(bytes, at_offset);
});
