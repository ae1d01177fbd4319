//! Frames from a real ring, and made by hand, through segment files: scan,
//! index, locate and read back.

#![forbid(unsafe_code)]

mod common;

use common::{simple_segment, temp_dir};
use rill_shm::frame::FrameKind;
use rill_shm::ring::{Ring, RingConfig, Start};
use rill_store::{
    encode_batch, recover_segment, scan_segment, BATCH_HEADER_LEN, segment_file_name, BatchHeader, FormatError, FrameBuf, FrameReader, ReadError,
    StreamLog,
};
use std::fs::{File, OpenOptions};
use std::io::{Cursor, Write};

/// What the archiver does: a held subscriber polls, and each batch is a
/// header for the ring's one or two slices followed by those slices, byte
/// for byte. Several wraps, so padding frames and split batches occur.
#[test]
fn ring_bytes_round_trip_through_a_segment_file() {
    let config = RingConfig { capacity: 4096, max_message_len: 900, ..RingConfig::default() };
    let ring = Ring::private(&config).unwrap();
    let mut sub = ring.subscribe(Start::Latest).unwrap();
    sub.set_hold(true);
    let mut publ = ring.exclusive_publication().unwrap();
    let first = sub.position();

    let mut segment = Vec::new();
    let mut sent: Vec<(u64, Vec<u8>)> = Vec::new();
    let (mut split_batches, mut i) = (0, 0u32);
    while sent.len() < 300 {
        // A few messages of varying size, then archive what was polled.
        for _ in 0..3 {
            let payload: Vec<u8> = (0..(i * 37 % 300)).map(|b| (b as u8) ^ (i as u8)).collect();
            i += 1;
            match publ.offer(&payload) {
                Ok(p) => sent.push((p, payload)),
                Err(e) => panic!("ring full although the archiver keeps up: {e}"),
            }
        }
        sub.poll(usize::MAX, |_| {}).unwrap();
        let (from, to) = (sub.held_position(), sub.position());
        let (a, b) = sub.held_bytes(from, to);
        split_batches += usize::from(!b.is_empty());
        let header = BatchHeader::for_frames(from, &[a, b]).unwrap();
        assert_eq!((header.first_position, header.end_position), (from, to));
        segment.extend_from_slice(&header.to_bytes());
        segment.extend_from_slice(a);
        segment.extend_from_slice(b);
        sub.release_to(to);
    }
    assert!(split_batches > 0, "the ring wrapped inside a batch");

    let dir = temp_dir();
    let path = dir.path().join(segment_file_name(first));
    std::fs::write(&path, &segment).unwrap();
    let recovery = recover_segment(&path).unwrap();
    assert!(recovery.scan.is_whole(), "{:?}", recovery.scan.damage);
    assert_eq!((recovery.truncated_bytes, recovery.side_file.as_deref()), (0, None));
    assert_eq!(recovery.end_position(), sub.position());

    let mut reader = FrameReader::new(File::open(&path).unwrap(), first);
    let (mut got, mut padding) = (Vec::new(), 0);
    while let Some(f) = reader.next_frame().unwrap() {
        match f.header.kind {
            FrameKind::Data => got.push((f.header.position, f.payload.to_vec())),
            FrameKind::Padding => padding += 1,
        }
    }
    assert_eq!(got, sent);
    assert!(padding > 0, "wraps leave padding frames in the file");
    assert_eq!(reader.position(), sub.position());
}

/// Three segments of a stream directory: the index, locating by position
/// and time, and readers started mid-batch.
#[test]
fn stream_log_locates_positions_and_times() {
    let dir = temp_dir();
    let mut segments = Vec::new();
    let mut first = 1 << 20;
    for _ in 0..3 {
        let seg = simple_segment(first, 4, 3);
        std::fs::write(dir.path().join(segment_file_name(first)), &seg.bytes).unwrap();
        first = *seg.batch_positions.last().unwrap();
        segments.push(seg);
    }
    std::fs::write(dir.path().join("00000000000001048576.log.corrupt-64"), b"ignored").unwrap();
    let log = StreamLog::open(dir.path()).unwrap();
    assert_eq!(log.segments().len(), 3);
    assert_eq!((log.first_position(), log.end_position()), (Some(1 << 20), Some(first)));
    assert!(log.segments()[..2].iter().all(|s| s.sealed) && !log.segments()[2].sealed);

    let s1 = &segments[1];
    let path1 = dir.path().join(segment_file_name(s1.first_position));
    // At a batch start, inside a batch, before everything, after everything.
    assert_eq!(log.locate(s1.batch_positions[2]), Some((path1.as_path(), s1.batch_offsets[2])));
    assert_eq!(log.locate(s1.batch_positions[2] + 32), Some((path1.as_path(), s1.batch_offsets[2])));
    let path0 = dir.path().join(segment_file_name(1 << 20));
    assert_eq!(log.locate(0), Some((path0.as_path(), 0)));
    assert_eq!(log.locate(first), None);

    // Timestamps grow with positions across segments.
    let ts = s1.data[4].1; // second batch of segment 1
    assert_eq!(log.locate_time(ts), Some((path1.as_path(), s1.batch_offsets[1])));
    assert_eq!(log.locate_time(0), Some((path0.as_path(), 0)));
    assert_eq!(log.locate_time(u64::MAX), None);

    // A reader from inside a batch skips the frames before the position.
    let from = s1.data[4].0;
    let mut reader = log.reader_at(from).unwrap().unwrap();
    let mut got = Vec::new();
    while let Some(f) = reader.next_data().unwrap() {
        got.push(f.header.position);
    }
    let want: Vec<u64> = s1.data[4..].iter().map(|d| d.0).collect();
    assert_eq!(got, want);
    assert_eq!(reader.position(), segments[2].first_position, "the next segment starts where this one ends");
}

/// A reader of a live segment stops at the end and sees what is appended
/// later, a partial batch included once it is whole; the index too.
#[test]
fn readers_and_index_follow_a_growing_segment() {
    let dir = temp_dir();
    let seg = simple_segment(0, 2, 2);
    let path = dir.path().join(segment_file_name(0));
    std::fs::write(&path, &seg.bytes).unwrap();
    let mut log = StreamLog::open(dir.path()).unwrap();
    let mut reader = FrameReader::new(File::open(&path).unwrap(), 0);
    let mut count = 0;
    while reader.next_data().unwrap().is_some() {
        count += 1;
    }
    assert_eq!(count, 4);

    let mut f = FrameBuf::new(seg.batch_positions[2]);
    f.data(5000, 9, b"late");
    let batch = encode_batch(f.first_position(), &[f.as_bytes()]).unwrap();
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&batch[..70]).unwrap();
    assert!(reader.next_data().unwrap().is_none(), "half a batch is not read");
    log.refresh().unwrap();
    assert_eq!(log.segments()[0].batches.len(), 2, "nor indexed");
    file.write_all(&batch[70..]).unwrap();
    assert_eq!(reader.next_data().unwrap().map(|f| f.payload.to_vec()), Some(b"late".to_vec()));
    log.refresh().unwrap();
    assert_eq!(log.segments()[0].batches.len(), 3);
    assert_eq!(log.end_position(), Some(f.end_position()));

    // A new segment seals this one; retention deleting it is seen too.
    let next = simple_segment(f.end_position(), 1, 1);
    std::fs::write(dir.path().join(segment_file_name(f.end_position())), &next.bytes).unwrap();
    log.refresh().unwrap();
    assert!(log.segments()[0].sealed);
    std::fs::remove_file(&path).unwrap();
    log.refresh().unwrap();
    assert_eq!(log.first_position(), Some(f.end_position()));
}

#[test]
fn damage_and_gaps_are_lost_ranges_and_the_batches_after_stay() {
    let dir = temp_dir();
    let a = simple_segment(0, 3, 2);
    let b_first = *a.batch_positions.last().unwrap();
    let b = simple_segment(b_first, 2, 2);
    let path_a = dir.path().join(segment_file_name(0));
    // A torn end of a sealed segment: its last batch is lost.
    std::fs::write(&path_a, &a.bytes[..a.bytes.len() - 10]).unwrap();
    std::fs::write(dir.path().join(segment_file_name(b_first)), &b.bytes).unwrap();
    let log = StreamLog::open(dir.path()).unwrap();
    let lost = log.lost();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].from, lost[0].to), (a.batch_positions[2], b_first));
    assert_eq!(log.segments()[1].batches.len(), 2, "the next segment is whole");
    // The same tail on the last segment is only a batch not yet whole.
    std::fs::remove_file(dir.path().join(segment_file_name(b_first))).unwrap();
    let log = StreamLog::open(dir.path()).unwrap();
    assert_eq!(log.segments()[0].batches.len(), 2);
    assert!(log.lost().is_empty());

    // A damaged header in the middle: a hole, and the batch after it stays.
    let mut bytes = a.bytes.clone();
    bytes[a.batch_offsets[1] as usize] ^= 0xFF;
    std::fs::write(&path_a, &bytes).unwrap();
    let log = StreamLog::open(dir.path()).unwrap();
    assert_eq!(log.segments()[0].batches.len(), 2);
    let lost = log.lost();
    assert_eq!((lost.len(), lost[0].from, lost[0].to), (1, a.batch_positions[1], a.batch_positions[2]));
    assert_eq!(log.end_position(), Some(b_first));

    // A gap between segments.
    std::fs::write(&path_a, &a.bytes).unwrap();
    let c = simple_segment(b_first + 4096, 1, 1);
    std::fs::write(dir.path().join(segment_file_name(b_first + 4096)), &c.bytes).unwrap();
    let lost = StreamLog::open(dir.path()).unwrap().lost();
    assert_eq!(lost.iter().map(|l| (l.from, l.to)).collect::<Vec<_>>(), [(b_first, b_first + 4096)]);
}

/// A bad batch stops the reader with an error naming its offset, every
/// time it is asked, after the good frames before it.
#[test]
fn reader_reports_a_bad_batch_and_stays_before_it() {
    let seg = simple_segment(64, 3, 2);
    let mut bytes = seg.bytes.clone();
    bytes[seg.batch_offsets[1] as usize + 80] ^= 4;
    let mut reader = FrameReader::new(Cursor::new(&bytes[..]), 64);
    assert!(reader.next_data().unwrap().is_some());
    assert!(reader.next_data().unwrap().is_some());
    for _ in 0..2 {
        match reader.next_data() {
            Err(ReadError::BadBatch { offset, source: FormatError::CrcMismatch { .. } }) => assert_eq!(offset, seg.batch_offsets[1]),
            other => panic!("expected a CRC error, got {:?}", other.map(|f| f.map(|f| f.header))),
        }
    }
    // The wrong segment start is caught as well.
    let mut wrong = FrameReader::new(Cursor::new(&seg.bytes[..]), 0);
    assert!(matches!(
        wrong.next_frame(),
        Err(ReadError::BadBatch { offset: 0, source: FormatError::Discontinuity { expected: 0, found: 64 } })
    ));
    assert!(scan_segment(&seg.bytes, 64).is_whole());
}

/// A direct-I/O writer's pattern: each write fills its last block up with
/// zeros, and the next batch is written over them. Readers and the index
/// take the zeros as the end of what is there, then read the batch that
/// replaced them; a sealed segment may end in its zero tail.
#[test]
fn zero_tail_is_an_end_and_is_written_over() {
    let dir = temp_dir();
    let seg = simple_segment(0, 2, 2);
    let path = dir.path().join(segment_file_name(0));
    let block = |len: usize| len.div_ceil(512) * 512;
    let mut bytes = seg.bytes.clone();
    bytes.resize(block(bytes.len()), 0);
    std::fs::write(&path, &bytes).unwrap();
    let mut log = StreamLog::open(dir.path()).unwrap();
    assert_eq!(log.segments()[0].valid_len, seg.bytes.len() as u64);
    let mut reader = FrameReader::new(File::open(&path).unwrap(), 0);
    let mut count = 0;
    while reader.next_data().unwrap().is_some() {
        count += 1;
    }
    assert_eq!(count, 4);
    assert!(reader.next_data().unwrap().is_none(), "the zero tail is an end, every time");

    // The next batch goes over the tail, and gets a tail of its own.
    let mut f = FrameBuf::new(seg.batch_positions[2]);
    f.data(5000, 9, b"next");
    let batch = encode_batch(f.first_position(), &[f.as_bytes()]).unwrap();
    bytes.truncate(seg.bytes.len());
    bytes.extend(&batch);
    bytes.resize(block(bytes.len()), 0);
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(reader.next_data().unwrap().map(|f| f.payload.to_vec()), Some(b"next".to_vec()));
    log.refresh().unwrap();
    assert_eq!(log.segments()[0].batches.len(), 3);

    // Sealed by a next segment: the zero tail is still a clean end...
    let next = simple_segment(f.end_position(), 1, 1);
    std::fs::write(dir.path().join(segment_file_name(f.end_position())), &next.bytes).unwrap();
    log.refresh().unwrap();
    assert!(log.segments()[0].sealed);
    assert!(scan_segment(&bytes, 0).is_whole());
    // ...however long (a preallocated segment's unused end)...
    let end = bytes.len();
    bytes.resize(end + (3 << 20), 0);
    std::fs::write(&path, &bytes).unwrap();
    assert!(StreamLog::open(dir.path()).is_ok());
    // ...but a non-zero byte in it is damage, for the index of a sealed
    // segment (which reads the whole tail: the positions up to the next
    // segment are lost, none here) and, in a header, for a reader (which
    // takes an all-zero header as the end of what is written).
    let last = bytes.len() - 1;
    bytes[last] = 7;
    std::fs::write(&path, &bytes).unwrap();
    let log = StreamLog::open(dir.path()).unwrap();
    assert_eq!(log.segments()[0].holes.len(), 1, "a damaged tail of a sealed segment is noted");
    assert!(log.lost().is_empty(), "no position lost: the next segment starts where this one's batches end");
    let data_end = f.end_position() as usize - seg.batch_positions[2] as usize + seg.bytes.len() + BATCH_HEADER_LEN;
    bytes[data_end + 10] = 7;
    std::fs::write(&path, &bytes).unwrap();
    let mut reader = FrameReader::new(File::open(&path).unwrap(), 0);
    while let Ok(Some(_)) = reader.next_data() {}
    assert!(reader.next_data().is_err(), "a header that is not all zeros is a bad batch");
}
