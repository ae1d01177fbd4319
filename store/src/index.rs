//! The index of a stream's segments: which file and offset hold a
//! position or a time.
//!
//! [`StreamLog::open`] lists `<dir>/<20 digits>.log`, sorted by first
//! position, and reads each batch header (64 bytes, then a seek past the
//! frames; no CRC, that is the reader's job), so it is cheap: one small
//! read per batch. Every segment but the last is sealed: it must be whole
//! batches, each starting where the one before ended, and end where the
//! next segment starts; anything else is an error naming the file and
//! offset, and nothing is repaired here (recovery of the last segment is
//! [`recover_segment`](crate::recover_segment)'s job, before the archiver
//! starts). The last segment may be being appended to: the index stops
//! before a batch not yet whole, and [`StreamLog::refresh`] picks up what
//! was appended, new segments, and segments deleted by retention.
//!
//! This assumes the archiver creates a segment only once every write to
//! the one before has completed.

use crate::batch::{BatchHeader, FormatError, BATCH_HEADER_LEN};
use crate::parse_segment_file_name;
use crate::reader::FrameReader;
use crate::scan::{is_zero_tail, IndexEntry};
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
    /// A sealed segment is not whole, valid batches.
    #[error("{}: damaged sealed segment at offset {offset}: {source}", path.display())]
    Damaged {
        /// The segment file.
        path: PathBuf,
        /// File offset of the first bad batch.
        offset: u64,
        /// What is wrong there.
        source: FormatError,
    },
    /// A segment does not start where the one before it ends.
    #[error("{}: segment starts at position {found}, the one before ends at {expected}", path.display())]
    Gap {
        /// The later segment.
        path: PathBuf,
        /// Where the earlier segment ends.
        expected: u64,
        /// Where this one starts.
        found: u64,
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
            sealed: false,
        }
    }

    /// Indexes the segment at `path` whose first batch starts at
    /// `first_position`, up to its last whole batch. `sealed` says no
    /// more will be written to it: then it must end in a whole batch.
    pub fn build(path: &Path, first_position: u64, sealed: bool) -> Result<SegmentIndex, LogError> {
        let mut index = SegmentIndex::empty(path.to_path_buf(), first_position);
        index.extend(sealed)?;
        Ok(index)
    }

    /// Reads the headers from `valid_len` on.
    fn extend(&mut self, sealed: bool) -> Result<(), LogError> {
        let io_err = |source| LogError::Io { path: self.path.clone(), source };
        let file = File::open(&self.path).map_err(io_err)?;
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
            if !sealed {
                return Ok(()); // the tail of a live segment: not whole yet
            }
            let zero_tail = zero_tail_at(&file, self.valid_len, file_len);
            if zero_tail.map_err(|source| LogError::Io { path: self.path.clone(), source })? {
                break; // a zero tail: a clean end
            }
            return Err(LogError::Damaged { path: self.path.clone(), offset: self.valid_len, source: problem });
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

/// Whether the bytes of `file` from `offset` to `file_len` are a zero
/// tail ([`is_zero_tail`]).
fn zero_tail_at(file: &File, mut offset: u64, file_len: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 1 << 20];
    while offset < file_len {
        let n = (file_len - offset).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], offset)?;
        if !is_zero_tail(&buf[..n]) {
            return Ok(false);
        }
        offset += n as u64;
    }
    Ok(true)
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
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(first) = name.to_str().and_then(parse_segment_file_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

/// The persisted part of one stream: its segments, indexed.
#[derive(Debug, Clone)]
pub struct StreamLog {
    dir: PathBuf,
    segments: Vec<SegmentIndex>,
}

impl StreamLog {
    /// Indexes the segments in the stream directory `dir`.
    pub fn open(dir: &Path) -> Result<StreamLog, LogError> {
        let mut log = StreamLog { dir: dir.to_path_buf(), segments: Vec::new() };
        log.refresh()?;
        Ok(log)
    }

    /// Catches up with the directory: batches appended to the last
    /// segment, new segments, segments deleted from the front. On error
    /// the index keeps what it had read (all of it valid).
    pub fn refresh(&mut self) -> Result<(), LogError> {
        let listed = list_segments(&self.dir).map_err(|source| LogError::Io { path: self.dir.clone(), source })?;
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
                match self.segments[i].extend(sealed) {
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
        for pair in self.segments.windows(2) {
            if pair[1].first_position != pair[0].end_position {
                return Err(LogError::Gap { path: pair[1].path.clone(), expected: pair[0].end_position, found: pair[1].first_position });
            }
        }
        Ok(())
    }

    /// The stream directory.
    pub fn dir(&self) -> &Path {
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
        let file = File::open(&seg.path).map_err(|source| LogError::Io { path: seg.path.clone(), source })?;
        Ok(Some(FrameReader::at(file, entry.file_offset, position).expecting(entry.position)))
    }
}
