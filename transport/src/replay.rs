//! Reading a persisted stream's log from the segment files rilld handed
//! over (read-only fds), in two cases:
//!
//! * **Replay** (a start older than the ring holds: `Start::Earliest`,
//!   `Position`, `Time`). The daemon attached the subscriber's ring slot at
//!   `until` (the oldest frame still in the ring) before choosing the
//!   segments; on a back-pressure stream the slot keeps the frames from
//!   `until` on in the ring until the subscriber has read them, so reading
//!   the log up to `until` and then the ring from `until` leaves no gap and
//!   delivers nothing twice, whatever publishers do meanwhile. (On an
//!   overwrite stream the ring may lose `until` meanwhile: that is an
//!   overrun like any other, continued from the log as below.)
//! * **Continuation** (a subscriber of a persisted overwrite stream that
//!   publishers overran at `from`): the segments holding `from` on
//!   (`Request::LogSegments`), read from `from` up to the end of what is on
//!   disk now. The last segment may still be growing and end in a batch
//!   that is not whole yet (or whose bytes are still being written, so its
//!   CRC does not match): at or past the archiver's position that is the
//!   end for now, not an error; before it, it is damage, reported (the
//!   archiver releases a position only once its batch is written).
//!
//! Every frame must start where the one before ended (within a segment,
//! `FrameReader` checks batches; across segments, this does). Damage on
//! disk below the archiver's position (a batch that fails its CRC, a
//! damaged end of a segment, a segment missing) is skipped to the next
//! valid batch, and the positions lost are reported once, exactly, as
//! [`PollError::Lost`]; the next poll goes on after them. (rilld finds and
//! logs the same ranges when it recovers the log.) Anything else out of
//! order is an error, never skipped.

use rill_shm::frame::FrameKind;
use rill_shm::ring::{Message, PollError};
use rill_store::FrameReader;
use std::collections::VecDeque;
use std::fs::File;

/// How far a [`LogReader`] got in one poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogState {
    /// The limit was reached; more may follow at once.
    More,
    /// Replay: reached `until`, where the ring takes over.
    Done,
    /// Continuation: read everything on disk now; the log ends at
    /// [`LogReader::position`] (for now).
    End,
}

/// Frames of a stream's log, in order, from a given position.
#[derive(Debug)]
pub(crate) struct LogReader {
    segments: VecDeque<(u64, File)>,
    reader: Option<FrameReader<File>>,
    /// First segment: start at the batch at this file offset, which starts
    /// at this position, skipping frames before `pos` (continuation).
    start: Option<(u64, u64)>,
    /// Hand out data frames from here on.
    deliver_from: u64,
    /// Replay: stop here (the ring takes over). Continuation: `None`.
    until: Option<u64>,
    /// Below this, everything is on disk in whole, valid batches.
    archived: u64,
    /// End of the last frame read: where the next must start.
    pos: u64,
    /// Padding frames read at or after `deliver_from`.
    padding_bytes: u64,
    /// Why the segment read last ended early (damage with nothing valid
    /// after it), for the notice of the positions lost up to the next.
    damaged_end: Option<String>,
    /// A loss to report before anything else: up to where, and why.
    pending_gap: Option<(u64, String)>,
}

impl LogReader {
    /// A replay: every frame of `segments` from the first one's start,
    /// handing out those at or after `from`, until `until`.
    pub(crate) fn replay(segments: Vec<(u64, File)>, from: u64, until: u64) -> Self {
        // Where the first segment starts, or `from` if that is later: a
        // first segment starting after `from` (the log lost what was
        // before it) is then a gap, reported as lost.
        // No segment at all before the ring's start: rilld hands none over
        // only when the log lost all of `from..until`; report it.
        let pos = segments.first().map_or(from.min(until), |s| s.0.min(from));
        let pending_gap = (segments.is_empty() && pos < until)
            .then(|| (until, "the log lost these positions (rilld found them lost when it recovered the log after a crash or a power cut)".to_owned()));
        LogReader {
            segments: segments.into(),
            reader: None,
            start: None,
            deliver_from: from,
            until: Some(until),
            archived: until,
            pos,
            padding_bytes: 0,
            damaged_end: None,
            pending_gap,
        }
    }

    /// A continuation from `from` (a frame boundary), whose batch starts
    /// at `start_batch` at file offset `start_offset` of the first segment,
    /// handing out data frames at or after `deliver_from`, up to the end of
    /// what is on disk; below `archived` every batch must be whole.
    pub(crate) fn continuation(
        segments: Vec<(u64, File)>,
        from: u64,
        (start_offset, start_batch): (u64, u64),
        deliver_from: u64,
        archived: u64,
    ) -> Self {
        LogReader {
            segments: segments.into(),
            reader: None,
            start: Some((start_offset, start_batch)),
            deliver_from,
            until: None,
            archived,
            pos: from,
            padding_bytes: 0,
            damaged_end: None,
            pending_gap: None,
        }
    }

    /// The next position to read (the end of the last frame read, or where
    /// delivery starts if later).
    pub(crate) fn position(&self) -> u64 {
        self.pos.max(self.deliver_from.min(self.until.unwrap_or(u64::MAX)))
    }

    /// Bytes of padding frames read so far (at or after the delivery start).
    pub(crate) fn padding_bytes(&self) -> u64 {
        self.padding_bytes
    }

    /// Hands up to `limit` data frames to `handler`; returns how many, and
    /// how far the log goes.
    pub(crate) fn poll<F: FnMut(Message<'_>)>(&mut self, limit: usize, handler: &mut F) -> Result<(usize, LogState), PollError> {
        let mut n = 0;
        while n < limit {
            if let Some((to, reason)) = self.pending_gap.take() {
                return self.lost(n, to, reason);
            }
            if self.until.is_some_and(|u| self.pos >= u) {
                return Ok((n, LogState::Done));
            }
            if self.reader.is_none() {
                match self.segments.pop_front() {
                    Some((first, file)) => {
                        self.open(first, file)?;
                        continue;
                    }
                    None if self.until.is_some() => {
                        let reason = format!("the log handed over ends at {} before the ring's start at {}", self.pos, self.until.unwrap_or(0));
                        return Err(self.fail(reason));
                    }
                    None => return Ok((n, LogState::End)),
                }
            }
            let last = self.segments.is_empty();
            let reader = self.reader.as_mut().expect("set above");
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                // The end of this segment's whole batches: a sealed one is
                // done; the last one may grow, so keep it for the next look.
                Ok(None) if last && self.until.is_none() && self.pos >= self.archived => return Ok((n, LogState::End)),
                Ok(None) if last && self.until.is_none() => {
                    let reason = format!("the log handed over ends at {}, before the archiver's position {}", self.pos, self.archived);
                    return Err(self.fail(reason));
                }
                Ok(None) if last && self.pos < self.until.unwrap_or(0) => {
                    // A replay's log ends before the ring's start: the
                    // damaged end of a segment.
                    let until = self.until.unwrap_or(self.pos);
                    let why = self.damaged_end.take().unwrap_or_else(|| "the log handed over ends early".into());
                    return self.lost(n, until, format!("{why} (the log ends at {}, the ring starts at {until})", self.pos));
                }
                Ok(None) => {
                    self.reader = None;
                    continue;
                }
                // A batch still being written at the end of a live segment.
                Err(_) if last && self.until.is_none() && self.pos >= self.archived => return Ok((n, LogState::End)),
                // Damage below what rilld archived: skip to the next valid
                // batch, with a notice of exactly what was lost (after
                // returning what this poll handed out).
                Err(_) if n > 0 => return Ok((n, LogState::More)),
                Err(e) => match self.reader.as_mut().expect("set above").skip_damage() {
                    Ok(Some(skipped)) if skipped.to > self.pos => return self.lost(0, skipped.to, e.to_string()),
                    Ok(Some(_)) => continue,
                    // Nothing valid after it in this segment: the rest of
                    // it is lost up to the next one (or the ring's start).
                    Ok(None) if !last || self.until.is_some() => {
                        self.damaged_end = Some(e.to_string());
                        if last {
                            // Read as the end of the last segment above.
                            let until = self.until.unwrap_or(self.pos);
                            let why = self.damaged_end.take().unwrap_or_default();
                            return self.lost(0, until, why);
                        }
                        self.reader = None;
                        continue;
                    }
                    Ok(None) => return Err(self.fail(e.to_string())),
                    Err(e2) => return Err(self.fail(format!("{e}; looking past it: {e2}"))),
                },
            };
            let h = frame.header;
            if self.until.is_some_and(|u| h.position >= u) {
                self.pos = self.until.unwrap_or(h.position);
                return Ok((n, LogState::Done));
            }
            if h.position != self.pos {
                let reason = format!("the log has a frame at {} where one should start at {}", h.position, self.pos);
                return Err(self.fail(reason));
            }
            self.pos = h.position + h.span() as u64;
            if h.position < self.deliver_from {
                continue;
            }
            if h.kind != FrameKind::Data {
                self.padding_bytes += h.span() as u64;
                continue;
            }
            handler(Message {
                payload: frame.payload,
                position: h.position,
                timestamp_ns: h.timestamp_ns,
                publisher_id: h.publisher_id,
                flags: h.flags,
            });
            n += 1;
        }
        Ok((n, LogState::More))
    }

    /// Starts reading the segment `file`, whose first batch is at `first`.
    fn open(&mut self, first: u64, file: File) -> Result<(), PollError> {
        self.reader = Some(match self.start.take() {
            // The first segment of a continuation: from the batch holding
            // `pos`, skipping the frames before it.
            Some((offset, batch)) => FrameReader::at(file, offset, self.pos).expecting(batch),
            None if first == self.pos => FrameReader::new(file, first),
            None if first > self.pos && self.pos < self.archived => {
                // Lost between segments: the damaged end of the one before,
                // or a segment missing.
                let why = self.damaged_end.take().unwrap_or_else(|| "a segment is missing".into());
                self.pending_gap = Some((first, format!("{why} (a segment starts at {first}, the one before ended at {})", self.pos)));
                FrameReader::new(file, first)
            }
            None => {
                let reason = format!("the log has a gap: a segment starts at {first}, the one before ended at {}", self.pos);
                return Err(self.fail(reason));
            }
        });
        Ok(())
    }

    /// Reports `self.pos..to` lost (after `n` messages handed out by this
    /// poll: then it is reported by the next), and goes on at `to`.
    fn lost(&mut self, n: usize, to: u64, reason: String) -> Result<(usize, LogState), PollError> {
        if n > 0 {
            self.pending_gap = Some((to, reason));
            return Ok((n, LogState::More));
        }
        let from = self.pos;
        self.pos = to;
        Err(PollError::Lost { from, to, reason })
    }

    fn fail(&self, reason: String) -> PollError {
        PollError::Replay { position: self.pos, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_store::{encode_batch, FrameBuf};
    use std::io::Write;

    /// The bytes of a segment of batches of `frames[i]` data frames each
    /// (64-byte frames, positions from `first`), and the frames' positions.
    fn segment_bytes(first: u64, batches: &[usize]) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut positions = Vec::new();
        let mut at = first;
        for &frames in batches {
            let mut b = FrameBuf::new(at);
            for i in 0..frames {
                positions.push(b.data(1_000 + i as u64, 1, &[at as u8; 20]));
            }
            bytes.extend(encode_batch(at, &[b.as_bytes()]).unwrap());
            at = b.end_position();
        }
        (bytes, positions)
    }

    fn segment(first: u64, batches: &[usize]) -> (File, Vec<u64>) {
        let (bytes, positions) = segment_bytes(first, batches);
        (file_with(&bytes), positions)
    }

    fn file_with(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn drain(r: &mut LogReader) -> (Vec<u64>, Result<LogState, PollError>) {
        let mut got = Vec::new();
        loop {
            match r.poll(3, &mut |m| got.push(m.position)) {
                Ok((_, LogState::More)) => {}
                Ok((_, state)) => return (got, Ok(state)),
                Err(e) => return (got, Err(e)),
            }
        }
    }

    #[test]
    fn continuation_reads_from_a_frame_boundary_across_segments_to_the_end() {
        let (a, pa) = segment(0, &[4, 4]);
        let end_a = pa.last().unwrap() + 64;
        let (b, pb) = segment(end_a, &[2]);
        // From the 6th frame, in the second batch (at file offset 64 + 4 * 64).
        let from = pa[5];
        let mut r = LogReader::continuation(vec![(0, a), (end_a, b)], from, (64 + 4 * 64, pa[4]), from, 0);
        let (got, state) = drain(&mut r);
        assert_eq!(state.unwrap(), LogState::End);
        assert_eq!(got, [&pa[5..], &pb[..]].concat());
        assert_eq!(r.position(), pb.last().unwrap() + 64);
    }

    #[test]
    fn a_half_written_batch_past_the_archiver_is_the_end_before_it_damage() {
        let (bytes, pa) = segment_bytes(0, &[2, 2]);
        let whole = bytes.len();
        // The second batch's last frame not yet written (a torn tail), or
        // a byte of it not yet (CRC mismatch).
        let torn = file_with(&bytes[..whole - 10]);
        let mut zeroed = bytes.clone();
        zeroed[whole - 10] ^= 0xFF;
        let cases = [
            (torn, pa[2], true),
            (file_with(&zeroed), pa[2], true),
            // Before the archiver's position every batch must be whole.
            (file_with(&bytes[..whole - 10]), pa[3] + 64, false),
            (file_with(&zeroed), pa[3] + 64, false),
        ];
        for (file, archived, ok) in cases {
            let mut r = LogReader::continuation(vec![(0, file)], 0, (0, 0), 0, archived);
            let (got, state) = drain(&mut r);
            assert_eq!(got, pa[..2], "the whole first batch, nothing of the second");
            match (ok, state) {
                (true, Ok(LogState::End)) => assert_eq!(r.position(), pa[2]),
                (false, Err(PollError::Replay { position, .. })) => assert_eq!(position, pa[2]),
                (ok, other) => panic!("archived {archived}, expected ok={ok}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_start_inside_a_frame_or_a_gap_between_segments_is_an_error() {
        let (a, pa) = segment(0, &[3]);
        let mut r = LogReader::continuation(vec![(0, a)], pa[1] + 32, (0, 0), 0, 0);
        assert!(matches!(drain(&mut r).1, Err(PollError::Replay { .. })));
        let (a, pa) = segment(0, &[3]);
        let (b, _) = segment(pa[2] + 64 + 32, &[1]);
        let mut r = LogReader::continuation(vec![(0, a), (pa[2] + 96, b)], 0, (0, 0), 0, 0);
        let (got, state) = drain(&mut r);
        assert_eq!(got, pa);
        assert!(matches!(state, Err(PollError::Replay { reason, .. }) if reason.contains("gap")));
    }

    /// Positions delivered, loss notices, and how the reading ended.
    type Drained = (Vec<u64>, Vec<(u64, u64)>, Result<LogState, PollError>);

    /// Drains `r`, collecting positions and every loss notice.
    fn drain_lossy(r: &mut LogReader) -> Drained {
        let (mut got, mut lost) = (Vec::new(), Vec::new());
        loop {
            match r.poll(3, &mut |m| got.push(m.position)) {
                Ok((_, LogState::More)) => {}
                Ok((_, state)) => return (got, lost, Ok(state)),
                Err(PollError::Lost { from, to, .. }) => lost.push((from, to)),
                Err(e) => return (got, lost, Err(e)),
            }
        }
    }

    #[test]
    fn damage_is_skipped_with_one_exact_loss_notice() {
        // Five batches of 2 frames; a payload bit of batch 2 flipped.
        let (mut bytes, pa) = segment_bytes(0, &[2, 2, 2, 2, 2]);
        bytes[64 + 2 * 128 + 64 + 64 + 40] ^= 0x10;
        let (b, pb) = segment(pa[9] + 64, &[2]);
        let until = pb[1] + 64;
        let mut r = LogReader::replay(vec![(0, file_with(&bytes)), (pa[9] + 64, b)], 0, until);
        let (got, lost, state) = drain_lossy(&mut r);
        assert_eq!(state.unwrap(), LogState::Done);
        assert_eq!(lost, [(pa[4], pa[6])], "exactly batch 2's positions");
        let want: Vec<u64> = pa.iter().copied().filter(|p| !(pa[4]..pa[6]).contains(p)).chain(pb).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_damaged_segment_end_is_lost_up_to_the_next_segment() {
        let (bytes, pa) = segment_bytes(0, &[2, 2]);
        let end_a = pa[3] + 64;
        let (b, pb) = segment(end_a, &[2]);
        // The second batch of the first segment torn: nothing valid after it.
        let torn = file_with(&bytes[..bytes.len() - 10]);
        let mut r = LogReader::replay(vec![(0, torn), (end_a, b)], 0, pb[1] + 64);
        let (got, lost, state) = drain_lossy(&mut r);
        assert_eq!(state.unwrap(), LogState::Done);
        assert_eq!(got, [pa[0], pa[1], pb[0], pb[1]]);
        assert_eq!(lost, [(pa[2], end_a)]);
    }

    #[test]
    fn replay_stops_at_the_ring_start() {
        let (a, pa) = segment(0, &[5]);
        let mut r = LogReader::replay(vec![(0, a)], pa[1], pa[3]);
        let (got, state) = drain(&mut r);
        assert_eq!(state.unwrap(), LogState::Done);
        assert_eq!(got, pa[1..3]);
    }

    /// After a power cut that took every segment before the ring's start
    /// (a `none` stream's unsynced log), rilld hands over no segment: the
    /// whole stretch is one loss, then the ring.
    #[test]
    fn a_replay_of_a_log_that_lost_everything_before_the_ring_is_one_loss() {
        let mut r = LogReader::replay(Vec::new(), 0, 1_023_744);
        let (got, lost, state) = drain_lossy(&mut r);
        assert_eq!(state.unwrap(), LogState::Done);
        assert!(got.is_empty());
        assert_eq!(lost, [(0, 1_023_744)]);
        // Nothing to report when the replay starts at the ring.
        let mut r = LogReader::replay(Vec::new(), 4096, 4096);
        let (got, lost, state) = drain_lossy(&mut r);
        assert_eq!((got.len(), lost.len(), state.unwrap()), (0, 0, LogState::Done));
    }
}
