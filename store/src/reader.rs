//! Reading the frames of a segment, batch by batch, each verified before
//! any of its frames is handed out.
//!
//! A [`FrameReader`] reads one batch at a time into a buffer it reuses
//! (at most [`MAX_BATCH_BYTES`] plus a header), checks its header, its
//! position against the batch before, its CRC and its frames, then yields
//! the frames. At the end of the file, or before a batch that is not yet
//! whole, it returns `Ok(None)` and stays where it is: the file may be a
//! live segment that the archiver is still appending to, and the next call
//! tries again. An all-zero batch header is such an end too: the zero tail
//! of a direct-I/O writer or of a preallocated segment
//! ([`is_zero_tail`](crate::is_zero_tail)). (Zeros in the middle of a
//! sealed segment would end it early; readers of several segments check
//! that each starts where the last one ended, which catches that.) A bad
//! batch is an error; the reader stays before it, so
//! every later call returns the same error rather than skipping data.

use crate::batch::{BatchHeader, FormatError, BATCH_HEADER_LEN, MAX_BATCH_BYTES};
use crate::scan::find_next_batch_from;
use rill_shm::frame::{parse_frame, Frame, FrameKind, FRAME_ALIGNMENT};
use std::io::{self, Read, Seek, SeekFrom};
use thiserror::Error;

/// Why a [`FrameReader`] could not go on.
#[derive(Debug, Error)]
pub enum ReadError {
    /// Reading or seeking failed.
    #[error("reading segment: {0}")]
    Io(#[from] io::Error),
    /// The batch at `offset` is not valid.
    #[error("bad batch at file offset {offset}: {source}")]
    BadBatch {
        /// File offset of the batch header.
        offset: u64,
        /// What is wrong with it.
        source: FormatError,
    },
}

/// What [`FrameReader::skip_damage`] passed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    /// First stream position lost.
    pub from: u64,
    /// First position after the damage (the next valid batch's).
    pub to: u64,
    /// File bytes skipped.
    pub file_bytes: u64,
}

/// Yields the frames of a segment (anything `Read + Seek`: a
/// [`std::fs::File`], or a byte slice in a [`std::io::Cursor`]) from a
/// given position on.
#[derive(Debug)]
pub struct FrameReader<R> {
    src: R,
    /// File offset of the next batch header to read.
    offset: u64,
    /// Position the next batch must start at, once known.
    expected: Option<u64>,
    /// Frames before this position are skipped.
    from: u64,
    /// Position after the last frame consumed (returned or skipped).
    position: u64,
    /// The current batch's header, once one was read.
    batch: Option<BatchHeader>,
    /// The current batch's frames, verified.
    frames: Vec<u8>,
    /// Offset in `frames` of the next frame.
    cursor: usize,
}

impl<R: Read + Seek> FrameReader<R> {
    /// A reader of the segment in `src` from its first batch, which must
    /// start at `first_position` (the position in the file's name).
    pub fn new(src: R, first_position: u64) -> FrameReader<R> {
        let mut r = FrameReader::at(src, 0, first_position);
        r.expected = Some(first_position);
        r
    }

    /// A reader that starts with the batch whose header is at
    /// `file_offset` (as the index gives it), skipping the frames before
    /// `from_position`.
    pub fn at(src: R, file_offset: u64, from_position: u64) -> FrameReader<R> {
        FrameReader {
            src,
            offset: file_offset,
            expected: None,
            from: from_position,
            position: from_position,
            batch: None,
            frames: Vec::new(),
            cursor: 0,
        }
    }

    /// Requires the next batch to start at `batch_position` (as the index
    /// says the batch at the starting offset does).
    pub fn expecting(mut self, batch_position: u64) -> FrameReader<R> {
        self.expected = Some(batch_position);
        self
    }

    /// The next frame, data or padding; `Ok(None)` at the end of what is
    /// in the file now (call again later to see what was appended).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, ReadError> {
        let at = self.advance(false)?;
        Ok(at.map(|at| self.frame_at(at)))
    }

    /// The next data frame, skipping padding; `Ok(None)` as for
    /// [`next_frame`](FrameReader::next_frame).
    pub fn next_data(&mut self) -> Result<Option<Frame<'_>>, ReadError> {
        let at = self.advance(true)?;
        Ok(at.map(|at| self.frame_at(at)))
    }

    /// Moves past the next frame to return (at or after `from`, data
    /// only if asked), reading batches as needed; returns its offset in
    /// `frames`.
    fn advance(&mut self, data_only: bool) -> Result<Option<usize>, ReadError> {
        loop {
            if self.cursor < self.frames.len() {
                let at = self.cursor;
                let header = self.frame_at(at).header;
                self.cursor += header.span();
                self.position = header.position + header.span() as u64;
                if header.position < self.from || (data_only && header.kind != FrameKind::Data) {
                    continue;
                }
                return Ok(Some(at));
            }
            if self.next_batch()?.is_none() {
                return Ok(None);
            }
        }
    }

    /// The frame at offset `at` of the current batch, which was verified
    /// (so every frame in it parses).
    fn frame_at(&self, at: usize) -> Frame<'_> {
        parse_frame(&self.frames[at..], MAX_BATCH_BYTES).expect("frames of a verified batch parse")
    }

    /// Reads and verifies the next whole batch, dropping whatever frames
    /// of the current one were not yet returned. `Ok(None)` if it is not
    /// (yet) whole in the file. Its frames are then returned by
    /// [`next_frame`](FrameReader::next_frame).
    pub fn next_batch(&mut self) -> Result<Option<BatchHeader>, ReadError> {
        self.frames.clear();
        self.cursor = 0;
        let mut head = [0u8; BATCH_HEADER_LEN];
        self.src.seek(SeekFrom::Start(self.offset))?;
        if read_full(&mut self.src, &mut head)? < BATCH_HEADER_LEN {
            return Ok(None);
        }
        let header = match BatchHeader::parse(&head) {
            Ok(h) => h,
            Err(_) if head.iter().all(|&b| b == 0) => return Ok(None),
            Err(source) => return Err(ReadError::BadBatch { offset: self.offset, source }),
        };
        let bad = |source| ReadError::BadBatch { offset: self.offset, source };
        if let Some(expected) = self.expected.filter(|&e| e != header.first_position) {
            return Err(bad(FormatError::Discontinuity { expected, found: header.first_position }));
        }
        self.frames.resize(header.frames_len as usize, 0);
        if read_full(&mut self.src, &mut self.frames)? < self.frames.len() {
            self.frames.clear();
            return Ok(None);
        }
        if let Err(source) = header.verify(&head, &self.frames) {
            self.frames.clear();
            return Err(ReadError::BadBatch { offset: self.offset, source });
        }
        self.offset += header.batch_len();
        self.expected = Some(header.end_position);
        self.batch = Some(header);
        Ok(Some(header))
    }

    /// After a bad batch ([`ReadError::BadBatch`]): moves to the next
    /// valid batch in the rest of the file that starts no earlier than the
    /// position expected, and returns the positions passed over
    /// (`from..to`; empty if none were lost, such as stale bytes between
    /// batches) and the file bytes skipped. `Ok(None)`, staying put, if no
    /// valid batch follows. Reads the rest of the file.
    pub fn skip_damage(&mut self) -> Result<Option<Skipped>, ReadError> {
        self.frames.clear();
        self.cursor = 0;
        self.src.seek(SeekFrom::Start(self.offset))?;
        let mut rest = Vec::new();
        self.src.read_to_end(&mut rest)?;
        let from = self.expected.unwrap_or(self.position).max(self.position);
        let Some((at, header)) = find_next_batch_from(&rest, FRAME_ALIGNMENT as u64, from) else { return Ok(None) };
        self.offset += at;
        self.expected = Some(header.first_position);
        self.position = self.position.max(header.first_position);
        Ok(Some(Skipped { from, to: header.first_position, file_bytes: at }))
    }

    /// The header of the batch frames are being read from.
    pub fn batch(&self) -> Option<&BatchHeader> {
        self.batch.as_ref()
    }

    /// Position after the last frame returned or skipped (the starting
    /// position before any).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// File offset of the next batch to read: where a whole file ends, once
    /// `next_frame` returned `Ok(None)`.
    pub fn file_offset(&self) -> u64 {
        self.offset
    }

    /// The source back.
    pub fn into_inner(self) -> R {
        self.src
    }
}

/// Reads until `buf` is full or the source ends; returns the bytes read.
fn read_full(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
