//! A stream directory's segment files as rilld's indexer and every
//! replaying subscriber index them: `rill_store::StreamLog::open` (list
//! the files, read each batch header, find holes and gaps), its queries
//! (`entry_at`, `entry_at_time`, `locate`, `lost`), `reader_at` reading
//! on from there, and `refresh` after the last segment grew and the
//! first one was deleted (retention). The index is built from headers
//! alone, so it must stay consistent whatever the files hold: batches in
//! order, inside the file, positions contiguous but for recorded holes.
//! `SegmentIndex::build` alone is run on each file, sealed and not.
//!
//! Input: byte 0 = segment count - 1 (low 2 bits), bytes to append to the
//! last segment before a refresh (bits 2-7, * 32); then per segment its
//! first position (u64) and length (u16), then its bytes; then what is
//! left: the appended bytes, then query positions (u64 each).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_store::{segment_file_name, SegmentIndex, StreamLog};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = rill_fuzz::scratch_dir("index");
        rill_fuzz::remove_at_exit(&d);
        d
    })
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = data.split_at(n.min(data.len()));
    *data = b;
    a
}

fn check(log: &StreamLog) {
    let segs = log.segments();
    for w in segs.windows(2) {
        assert!(w[0].first_position < w[1].first_position);
    }
    for s in segs {
        let len = std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(u64::MAX);
        assert!(s.valid_len <= len, "{s:?}");
        let mut end = s.first_position;
        let mut off = 0;
        for b in &s.batches {
            assert!(b.file_offset >= off && b.end_offset() <= s.valid_len);
            // Contiguous, or after a hole that says so.
            assert!(b.position == end || s.holes.iter().any(|h| h.from == end && h.to == b.position), "{s:?}");
            end = b.end_position;
            off = b.end_offset();
        }
        assert!(s.holes.iter().all(|h| h.to >= h.from));
        assert!(s.end_position >= s.first_position);
    }
    for h in log.lost() {
        let _ = h.to_string();
        assert!(h.to >= h.from, "{h:?}");
    }
}

fn read_some(log: &StreamLog, p: u64) {
    let _ = log.entry_at(p);
    let _ = log.entry_at_time(p);
    let _ = log.locate(p);
    let _ = log.locate_time(p);
    if let Ok(Some(mut r)) = log.reader_at(p) {
        for _ in 0..256 {
            match r.next_data() {
                Ok(Some(f)) => assert!(f.header.position >= p),
                Ok(None) => break,
                Err(_) => match r.skip_damage() {
                    Ok(Some(_)) => {}
                    _ => break,
                },
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let Some((&control, rest)) = data.split_first() else { return };
    data = rest;
    let count = usize::from(control & 3) + 1;
    let append_len = usize::from(control >> 2) * 32;
    let dir = dir();
    rill_fuzz::clear_dir(dir);
    let mut paths = Vec::new();
    for _ in 0..count {
        let Some((first, rest)) = data.split_first_chunk::<8>() else { break };
        let Some((len, rest)) = rest.split_first_chunk::<2>() else { break };
        data = rest;
        let first = u64::from_le_bytes(*first);
        let bytes = take(&mut data, usize::from(u16::from_le_bytes(*len)));
        let path = dir.join(segment_file_name(first));
        std::fs::write(&path, bytes).expect("write segment");
        paths.push((first, path));
    }
    let append = take(&mut data, append_len);
    let queries: Vec<u64> = data.chunks_exact(8).take(8).map(|c| u64::from_le_bytes(c.try_into().unwrap())).collect();

    for (first, path) in &paths {
        for sealed in [false, true] {
            let s = SegmentIndex::build(path, *first, sealed).expect("index a readable file");
            for q in &queries {
                let _ = s.entry_at(*q);
                let _ = s.entry_at_time(*q);
            }
        }
    }
    let mut log = StreamLog::open(dir).expect("index a readable directory");
    check(&log);
    for q in queries.iter().copied().chain(log.first_position()).chain(log.end_position()) {
        read_some(&log, q);
    }
    // The last segment grows; retention deletes the first one.
    paths.sort();
    if let Some((_, last)) = paths.last() {
        let mut f = std::fs::OpenOptions::new().append(true).open(last).expect("open last segment");
        f.write_all(append).expect("append");
    }
    if paths.len() > 1 {
        std::fs::remove_file(&paths[0].1).expect("remove first segment");
    }
    log.refresh().expect("refresh");
    check(&log);
    for q in queries.iter().copied().chain(log.first_position()) {
        read_some(&log, q);
    }
});
