//! `recover_segment` on real files: torn tails are cut, a corrupt last
//! batch is kept aside first, holes in the middle stay (with the batches
//! after them), whole files are left alone.

#![forbid(unsafe_code)]

mod common;

use common::{simple_segment, temp_dir};
use rill_store::{recover_segment, scan_segment, segment_file_name, DamageKind};
use std::io::ErrorKind;

#[test]
fn torn_tail_is_truncated_at_the_last_whole_batch() {
    let dir = temp_dir();
    let seg = simple_segment(4096, 3, 2);
    let path = dir.path().join(segment_file_name(4096));
    let cut = seg.bytes.len() - 17;
    std::fs::write(&path, &seg.bytes[..cut]).unwrap();

    let r = recover_segment(&path).unwrap();
    assert_eq!(r.scan.damage.as_ref().map(|d| (d.offset, &d.kind)), Some((seg.batch_offsets[2], &DamageKind::Torn)));
    assert_eq!(r.truncated_bytes, cut as u64 - seg.batch_offsets[2]);
    assert_eq!(r.side_file, None);
    assert_eq!(r.end_position(), seg.batch_positions[2]);
    let now = std::fs::read(&path).unwrap();
    assert_eq!(now, seg.bytes[..seg.batch_offsets[2] as usize]);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no side file for a torn tail: {names:?}");

    // Recovering again changes nothing.
    let again = recover_segment(&path).unwrap();
    assert!(again.scan.is_whole());
    assert_eq!(again.truncated_bytes, 0);
}

#[test]
fn a_corrupt_middle_is_a_hole_left_in_place_with_the_batches_after_it() {
    let dir = temp_dir();
    let seg = simple_segment(0, 5, 3);
    let path = dir.path().join(segment_file_name(0));
    let mut bytes = seg.bytes.clone();
    let bad = seg.batch_offsets[2];
    bytes[bad as usize + 8] ^= 0x40; // first_position of batch 2
    std::fs::write(&path, &bytes).unwrap();

    let r = recover_segment(&path).unwrap();
    assert_eq!((r.scan.damage.clone(), r.truncated_bytes, r.side_file.clone()), (None, 0, None));
    let h = &r.scan.holes;
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!((h[0].offset, h[0].len), (bad, seg.batch_offsets[3] - bad));
    assert_eq!((h[0].from, h[0].to), (seg.batch_positions[2], seg.batch_positions[3]));
    assert_eq!(r.scan.batches.len(), 4, "the batches after the hole stay");
    assert_eq!(r.end_position(), *seg.batch_positions.last().unwrap());
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing is cut");
}

#[test]
fn a_corrupt_last_batch_is_kept_in_a_side_file_before_the_cut() {
    let dir = temp_dir();
    let seg = simple_segment(0, 5, 3);
    let path = dir.path().join(segment_file_name(0));
    let mut bytes = seg.bytes.clone();
    let bad = seg.batch_offsets[4];
    bytes[bad as usize + 100] ^= 0x40; // a payload bit of the last batch
    std::fs::write(&path, &bytes).unwrap();

    let r = recover_segment(&path).unwrap();
    let d = r.scan.damage.clone().unwrap();
    assert_eq!(d.offset, bad);
    assert!(matches!(&d.kind, DamageKind::Corrupt { reason } if reason.contains("CRC")), "{d}");
    let side = r.side_file.clone().unwrap();
    assert_eq!(side, dir.path().join(format!("{}.corrupt-{bad}", segment_file_name(0))));
    let kept = std::fs::read(&side).unwrap();
    assert_eq!(kept, bytes[bad as usize..], "every cut byte is in the side file");
    assert_eq!(r.truncated_bytes, kept.len() as u64);
    assert_eq!(std::fs::read(&path).unwrap(), bytes[..bad as usize]);

    // A crash after the side file but before the cut: recovery again
    // reuses the side file holding the same bytes.
    std::fs::write(&path, &bytes).unwrap();
    let again = recover_segment(&path).unwrap();
    assert_eq!(again.side_file, Some(side.clone()));
    // Different bytes at the same offset do not overwrite it.
    bytes[bad as usize + 101] ^= 0x41;
    std::fs::write(&path, &bytes).unwrap();
    let third = recover_segment(&path).unwrap();
    let other = third.side_file.unwrap();
    assert_ne!(other, side);
    assert_eq!(std::fs::read(&other).unwrap(), bytes[bad as usize..]);
    assert_eq!(std::fs::read(&side).unwrap(), kept);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn whole_and_empty_files_are_left_alone() {
    let dir = temp_dir();
    let seg = simple_segment(96, 2, 2);
    let path = dir.path().join(segment_file_name(96));
    std::fs::write(&path, &seg.bytes).unwrap();
    let r = recover_segment(&path).unwrap();
    assert!(r.scan.is_whole());
    assert_eq!((r.truncated_bytes, r.side_file.clone(), r.len()), (0, None, seg.bytes.len() as u64));
    assert_eq!(std::fs::read(&path).unwrap(), seg.bytes);

    let empty = dir.path().join(segment_file_name(1 << 30));
    std::fs::write(&empty, b"").unwrap();
    let r = recover_segment(&empty).unwrap();
    assert!(r.is_empty() && r.scan.is_whole());
    assert_eq!(r.end_position(), 1 << 30);

    // A file with no valid batch at all is cut to nothing.
    let garbage = dir.path().join(segment_file_name(0));
    std::fs::write(&garbage, [0xAB; 100]).unwrap();
    let r = recover_segment(&garbage).unwrap();
    assert_eq!((r.truncated_bytes, r.len()), (100, 0));
    assert!(scan_segment(&std::fs::read(&garbage).unwrap(), 0).is_whole());

    let misnamed = dir.path().join("segment.log");
    std::fs::write(&misnamed, &seg.bytes).unwrap();
    assert_eq!(recover_segment(&misnamed).unwrap_err().kind(), ErrorKind::InvalidInput);
}
