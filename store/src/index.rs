//! The index of a stream's segments: which file and offset hold a
//! position or a time.
//!
//! [`StreamLog::open`] lists `<dir>/<20 digits>.log`, sorted by first
//! position, and reads each batch header (64 bytes, then a seek past the
//! frames; no CRC, that is the reader's job), so it is cheap: one small
//! read per batch. A batch header that is not valid is damage: if a valid
//! batch follows in the file, the bytes up to it are a [`Hole`] whose
//! positions are lost, and indexing goes on after it (so the batches after
//! damage stay reachable); in a sealed segment (every segment but the
//! last), damage with nothing valid after it loses the positions up to the
//! next segment's start. [`StreamLog::lost`] lists every lost range, holes
//! and gaps between segments alike. Nothing is repaired here (recovery of
//! the last segment is [`recover_segment`](crate::recover_segment)'s job,
//! before the archiver starts). The last segment may be being appended
//! to: the index stops before a batch not yet whole, and
//! [`StreamLog::refresh`] picks up what was appended, new segments, and
//! segments deleted by retention. Damage inside a batch's frames (its
//! header intact) is found by readers, which check every CRC and skip it
//! the same way ([`FrameReader::skip_damage`]).
//!
//! This assumes the archiver creates a segment only once every write to
//! the one before has completed.

use crate::batch::{BatchHeader, FormatError, BATCH_HEADER_LEN};
use crate::dir::Dir;
use crate::parse_segment_file_name;
use crate::reader::FrameReader;
use crate::scan::{find_next_batch_from, is_zero_tail, Hole, IndexEntry, Scan};
use rill_shm::frame::FRAME_ALIGNMENT;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a stream's segments could not be indexed.
#[derive(Debug, Error)]
pub enum LogError {
    /// Listing the directory or reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// The batches of one segment file, from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    /// The file.
    pub path: PathBuf,
    /// Position in its name: where its first batch starts.
    pub first_position: u64,
    /// Position after its last whole batch.
    pub end_position: u64,
    /// Bytes of whole batches from the start.
    pub valid_len: u64,
    /// Every whole batch, in order.
    pub batches: Vec<IndexEntry>,
    /// Largest `last_timestamp` of its batches.
    pub max_timestamp: u64,
    /// Damaged headers with valid batches after them, in file order.
    pub holes: Vec<Hole>,
    /// Whether a later segment exists and this one was found whole: it
    /// will not change, and is not read again.
    pub sealed: bool,
}

impl SegmentIndex {
    /// An index of no batches yet.
    fn empty(path: PathBuf, first_position: u64) -> SegmentIndex {
        SegmentIndex {
            path,
            first_position,
            end_position: first_position,
            valid_len: 0,
            batches: Vec::new(),
            max_timestamp: 0,
            holes: Vec::new(),
            sealed: false,
        }
    }

    /// Indexes the segment at `path` whose first batch starts at
    /// `first_position`, up to its last whole batch. `sealed` says no
    /// more will be written to it: then it must end in a whole batch.
    pub fn build(path: &Path, first_position: u64, sealed: bool) -> Result<SegmentIndex, LogError> {
        let (dir, _) = Dir::of(path).map_err(|source| LogError::Io { path: path.to_path_buf(), source })?;
        let mut index = SegmentIndex::empty(path.to_path_buf(), first_position);
        index.extend(&dir, sealed)?;
        Ok(index)
    }

    /// Its file's name in the stream directory.
    pub fn file_name(&self) -> &OsStr {
        self.path.file_name().unwrap_or_default()
    }

    /// The index of the segment at `path` (first batch at
    /// `first_position`) from a [`Scan`] of all its bytes: recovery reads
    /// every segment whole, so its index costs no read of its own. The
    /// same index [`build`](Self::build) reads from the headers (a scan
    /// checks more: every CRC). `sealed`: a later segment exists.
    pub fn from_scan(path: PathBuf, first_position: u64, scan: &Scan, sealed: bool) -> SegmentIndex {
        let mut holes = scan.holes.clone();
        if let (true, Some(d)) = (sealed, &scan.damage) {
            // Damage ends a sealed segment: what it held is lost up to the
            // next segment (the gap `lost` reports, with this reason).
            let at = scan.valid_len;
            holes.push(Hole { offset: at, len: scan.file_len - at, from: scan.end_position, to: scan.end_position, reason: d.to_string() });
        }
        SegmentIndex {
            path,
            first_position,
            end_position: scan.end_position,
            valid_len: scan.valid_len,
            batches: scan.batches.clone(),
            max_timestamp: scan.batches.iter().map(|b| b.last_timestamp).max().unwrap_or(0),
            holes,
            sealed,
        }
    }

    /// Reads the headers from `valid_len` on (its file in `dir`).
    fn extend(&mut self, dir: &Dir, sealed: bool) -> Result<(), LogError> {
        let io_err = |source| LogError::Io { path: self.path.clone(), source };
        let file = dir.open_file(self.file_name()).map_err(io_err)?;
        let file_len = file.metadata().map_err(io_err)?.len();
        let mut head = [0u8; BATCH_HEADER_LEN];
        while self.valid_len < file_len {
            let problem = match read_header(&file, self.valid_len, file_len, &mut head) {
                Ok(None) => FormatError::Truncated { needed: BATCH_HEADER_LEN as u64, available: file_len - self.valid_len },
                Err(e) => return Err(LogError::Io { path: self.path.clone(), source: e }),
                Ok(Some(Err(e))) => e,
                Ok(Some(Ok(h))) if h.first_position != self.end_position => {
                    FormatError::Discontinuity { expected: self.end_position, found: h.first_position }
                }
                Ok(Some(Ok(h))) if self.valid_len + h.batch_len() > file_len => {
                    FormatError::Truncated { needed: h.batch_len(), available: file_len - self.valid_len }
                }
                Ok(Some(Ok(h))) => {
                    self.push(&h);
                    continue;
                }
            };
            let zero_header = head.iter().all(|&b| b == 0);
            if !zero_header || sealed {
                // Damage, if a valid batch follows: a hole to skip.
                // (The file may change meanwhile: a live segment being
                // written. Read what is there; a short read is an end.)
                let mut rest = vec![0u8; (file_len - self.valid_len) as usize];
                let got = read_up_to(&file, &mut rest, self.valid_len).map_err(|source| LogError::Io { path: self.path.clone(), source })?;
                rest.truncate(got);
                if let Some((at, h)) = find_next_batch_from(&rest, FRAME_ALIGNMENT as u64, self.end_position) {
                    let hole = Hole { offset: self.valid_len, len: at, from: self.end_position, to: h.first_position, reason: problem.to_string() };
                    self.holes.push(hole);
                    self.valid_len += at;
                    self.end_position = h.first_position;
                    continue;
                }
                if sealed && !is_zero_tail(&rest) {
                    // Damage at the end of a sealed segment: what it held
                    // is lost up to the next segment (a gap the log sees).
                    let end = self.valid_len;
                    self.holes.push(Hole { offset: end, len: file_len - end, from: self.end_position, to: self.end_position, reason: problem.to_string() });
                }
            }
            if !sealed {
                return Ok(()); // the tail of a live segment: not whole yet
            }
            break; // a zero tail: a clean end
        }
        self.sealed = sealed;
        Ok(())
    }

    fn push(&mut self, h: &BatchHeader) {
        self.batches.push(IndexEntry::new(h, self.valid_len));
        self.valid_len += h.batch_len();
        self.end_position = h.end_position;
        self.max_timestamp = self.max_timestamp.max(h.last_timestamp);
    }

    /// The batch holding `position`, or the first after it.
    pub fn entry_at(&self, position: u64) -> Option<&IndexEntry> {
        let i = self.batches.partition_point(|b| b.end_position <= position);
        self.batches.get(i)
    }

    /// The first batch whose last data frame is at or after `ts_ns`.
    pub fn entry_at_time(&self, ts_ns: u64) -> Option<&IndexEntry> {
        if self.max_timestamp < ts_ns {
            return None;
        }
        // Publishers stamp their own frames, so timestamps need not grow
        // from batch to batch: look at each.
        self.batches.iter().find(|b| b.data_frames > 0 && b.last_timestamp >= ts_ns)
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends;
/// returns the bytes read.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The header at `offset`: `None` if fewer than 64 bytes are in the file.
fn read_header(
    file: &File,
    offset: u64,
    file_len: u64,
    head: &mut [u8; BATCH_HEADER_LEN],
) -> io::Result<Option<Result<BatchHeader, FormatError>>> {
    if file_len - offset < BATCH_HEADER_LEN as u64 {
        return Ok(None);
    }
    match file.read_exact_at(head, offset) {
        Ok(()) => Ok(Some(BatchHeader::parse(head))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// The segment files of the stream directory `dir` (first position and
/// path), sorted by first position. Other files (side files of recovery,
/// temporaries) are ignored.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    list_segments_in(&Dir::open(dir)?)
}

/// [`list_segments`] of a directory already open.
pub fn list_segments_in(dir: &Dir) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for name in dir.names()? {
        if let Some(first) = name.to_str().and_then(parse_segment_file_name) {
            out.push((first, dir.join(name)));
        }
    }
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

/// The persisted part of one stream: its segments, indexed.
#[derive(Debug, Clone)]
pub struct StreamLog {
    dir: Dir,
    segments: Vec<SegmentIndex>,
}

impl StreamLog {
    /// Indexes the segments in the stream directory `dir`.
    pub fn open(dir: &Path) -> Result<StreamLog, LogError> {
        let dir = Dir::open(dir).map_err(|source| LogError::Io { path: dir.to_path_buf(), source })?;
        StreamLog::open_in(dir)
    }

    /// Indexes the segments in the stream directory `dir`, open already.
    pub fn open_in(dir: Dir) -> Result<StreamLog, LogError> {
        let mut log = StreamLog { dir, segments: Vec::new() };
        log.refresh()?;
        Ok(log)
    }

    /// The index of the stream directory `dir` from indexes already made
    /// of its segments (see [`SegmentIndex::from_scan`]), in order of
    /// first position; [`refresh`](Self::refresh) goes on from them.
    pub fn from_segments(dir: Dir, mut segments: Vec<SegmentIndex>) -> StreamLog {
        segments.sort_unstable_by_key(|s| s.first_position);
        StreamLog { dir, segments }
    }

    /// Catches up with the directory: batches appended to the last
    /// segment, new segments, segments deleted from the front. On error
    /// the index keeps what it had read (all of it valid).
    pub fn refresh(&mut self) -> Result<(), LogError> {
        let listed = list_segments_in(&self.dir).map_err(|source| LogError::Io { path: self.dir.path().to_path_buf(), source })?;
        self.segments.retain(|s| listed.binary_search_by_key(&s.first_position, |l| l.0).is_ok());
        for (first, path) in listed {
            if let Err(i) = self.segments.binary_search_by_key(&first, |s| s.first_position) {
                self.segments.insert(i, SegmentIndex::empty(path, first));
            }
        }
        let mut i = 0;
        while i < self.segments.len() {
            let sealed = i + 1 < self.segments.len();
            if !self.segments[i].sealed {
                match self.segments[i].extend(&self.dir, sealed) {
                    // Deleted by retention since it was listed.
                    Err(LogError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                        self.segments.remove(i);
                        continue;
                    }
                    result => result?,
                }
            }
            i += 1;
        }
        Ok(())
    }

    /// Every stream range the log lost, in order: holes of damaged bytes
    /// inside segments, and gaps between segments (a damaged end of a
    /// sealed segment, or a segment missing), each with why.
    pub fn lost(&self) -> Vec<Hole> {
        let mut lost = Vec::new();
        for (i, seg) in self.segments.iter().enumerate() {
            let mut tail_reason = None;
            for h in &seg.holes {
                if h.to > h.from {
                    lost.push(h.clone());
                } else {
                    tail_reason = Some(format!("{}: {}", seg.path.display(), h.reason));
                }
            }
            // A gap: the next segment starts after this one ends. (One
            // that starts before it ends overlaps it, which loses nothing:
            // not a range to report, and `from..to` would run backwards.)
            if let Some(next) = self.segments.get(i + 1).filter(|n| n.first_position > seg.end_position) {
                let reason = tail_reason.unwrap_or_else(|| format!("{} ends at {}, the next segment starts at {}", seg.path.display(), seg.end_position, next.first_position));
                lost.push(Hole { offset: seg.valid_len, len: 0, from: seg.end_position, to: next.first_position, reason });
            }
        }
        lost
    }

    /// The stream directory.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// The segments, sorted by first position.
    pub fn segments(&self) -> &[SegmentIndex] {
        &self.segments
    }

    /// First position on disk (`None` without segments).
    pub fn first_position(&self) -> Option<u64> {
        self.segments.first().map(|s| s.first_position)
    }

    /// Position after the last whole batch on disk.
    pub fn end_position(&self) -> Option<u64> {
        self.segments.last().map(|s| s.end_position)
    }

    /// The segment and batch holding `position`, or the first batch after
    /// it (the earliest batch if `position` was deleted by retention).
    pub fn entry_at(&self, position: u64) -> Option<(&SegmentIndex, &IndexEntry)> {
        let start = self.segments.partition_point(|s| s.end_position <= position);
        self.segments[start..].iter().find_map(|s| s.entry_at(position).map(|e| (s, e)))
    }

    /// The segment and first batch whose last data frame is at or after
    /// `ts_ns`.
    pub fn entry_at_time(&self, ts_ns: u64) -> Option<(&SegmentIndex, &IndexEntry)> {
        self.segments.iter().find_map(|s| s.entry_at_time(ts_ns).map(|e| (s, e)))
    }

    /// Segment file and offset of the batch holding `position`, or of the
    /// first batch after it.
    pub fn locate(&self, position: u64) -> Option<(&Path, u64)> {
        self.entry_at(position).map(|(s, e)| (s.path.as_path(), e.file_offset))
    }

    /// Segment file and offset of the first batch whose last data frame
    /// is at or after `ts_ns`.
    pub fn locate_time(&self, ts_ns: u64) -> Option<(&Path, u64)> {
        self.entry_at_time(ts_ns).map(|(s, e)| (s.path.as_path(), e.file_offset))
    }

    /// A reader of the segment holding `position`, from there (it stops at
    /// the end of that segment; the next one starts at its
    /// `end_position`). `Ok(None)` if no batch holds or follows `position`.
    pub fn reader_at(&self, position: u64) -> Result<Option<FrameReader<File>>, LogError> {
        let Some((seg, entry)) = self.entry_at(position) else { return Ok(None) };
        let file = self.dir.open_file(seg.file_name()).map_err(|source| LogError::Io { path: seg.path.clone(), source })?;
        Ok(Some(FrameReader::at(file, entry.file_offset, position).expecting(entry.position)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_batch, segment_file_name, FrameBuf};

    /// Found by the `store_index` fuzz target
    /// (fuzz/regressions/store_index/overlapping-segments): a segment that
    /// starts before the one before it ends made `lost()` report the range
    /// `end..start`, backwards, which `Hole`'s Display (and rilld's sum of
    /// lost bytes) subtracted into an overflow.
    #[test]
    fn overlapping_segments_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut frames = FrameBuf::new(0);
        frames.data(1, 1, b"hello");
        frames.data(2, 1, b"world");
        let end = frames.end_position();
        std::fs::write(dir.path().join(segment_file_name(0)), encode_batch(0, &[frames.as_bytes()]).unwrap()).unwrap();
        std::fs::write(dir.path().join(segment_file_name(32)), b"").unwrap();
        let log = StreamLog::open(dir.path()).unwrap();
        assert_eq!(log.segments()[0].end_position, end);
        assert!(end > 32);
        let lost = log.lost();
        assert!(lost.iter().all(|h| h.to >= h.from), "{lost:?}");
        assert!(lost.is_empty(), "{lost:?}");
        // A real gap is still one.
        std::fs::remove_file(dir.path().join(segment_file_name(32))).unwrap();
        std::fs::write(dir.path().join(segment_file_name(end + 64)), b"").unwrap();
        let lost = StreamLog::open(dir.path()).unwrap().lost();
        assert_eq!(lost.len(), 1);
        assert_eq!((lost[0].from, lost[0].to), (end, end + 64));
        let _ = lost[0].to_string();
    }

    /// Recovery hands rilld the index it read anyway
    /// (`SegmentIndex::from_scan`): it must be the index the headers give,
    /// holes and damaged ends included.
    #[test]
    fn the_index_from_a_scan_is_the_index_from_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let batch = |first: u64, n: u64| {
            let mut frames = FrameBuf::new(first);
            for i in 0..n {
                frames.data(1_000 + i, 7, b"payload");
            }
            (encode_batch(first, &[frames.as_bytes()]).unwrap(), frames.end_position())
        };
        // Segment 0: a batch, garbage, a batch (a hole), then a damaged end.
        let (b0, e0) = batch(0, 3);
        let mut seg0 = b0.clone();
        seg0.extend_from_slice(&[0xA5; 96]);
        let (b1, e1) = batch(e0 + 4 * 32, 2);
        seg0.extend_from_slice(&b1);
        seg0.extend_from_slice(&[0x5A; 40]);
        // Segment 1 starts after a gap; segment 2 is the live one.
        let (seg1, e2) = batch(e1 + 10 * 32, 4);
        let (seg2, e3) = batch(e2, 2);
        let files = [(0, seg0), (e1 + 10 * 32, seg1), (e2, seg2)];
        let mut from_scans = Vec::new();
        for (i, (first, bytes)) in files.iter().enumerate() {
            let path = dir.path().join(segment_file_name(*first));
            std::fs::write(&path, bytes).unwrap();
            let scan = crate::scan_segment(bytes, *first);
            from_scans.push(SegmentIndex::from_scan(path, *first, &scan, i + 1 < files.len()));
        }
        // The same, but for the words of why (a scan says more).
        let plain = |log: &StreamLog| {
            let mut segs = log.segments().to_vec();
            segs.iter_mut().flat_map(|s| s.holes.iter_mut()).for_each(|h| h.reason.clear());
            let lost: Vec<_> = log.lost().into_iter().map(|h| (h.offset, h.len, h.from, h.to)).collect();
            (segs, lost)
        };
        let read = StreamLog::open(dir.path()).unwrap();
        let mut given = StreamLog::from_segments(Dir::open(dir.path()).unwrap(), from_scans);
        assert_eq!(plain(&given), plain(&read));
        assert_eq!(given.lost().len(), 2, "{:?}", given.lost());
        // And it goes on from there like one read from the headers.
        let (more, _) = batch(e3, 5);
        let mut live = std::fs::OpenOptions::new().append(true).open(dir.path().join(segment_file_name(e2))).unwrap();
        std::io::Write::write_all(&mut live, &more).unwrap();
        given.refresh().unwrap();
        assert_eq!(plain(&given), plain(&StreamLog::open(dir.path()).unwrap()));
        assert_eq!(given.segments()[2].batches.len(), 2);
    }
}
