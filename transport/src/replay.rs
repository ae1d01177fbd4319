//! A subscriber's replay of a persisted stream's log: the frames older than
//! the ring holds, read from the segment files rilld handed over (read-only
//! fds), before the subscriber goes on in the live ring.
//!
//! The daemon attached the subscriber's ring slot at `until` (the oldest
//! frame still in the ring) before choosing the segments, so the frames
//! from `until` on stay in the ring until the subscriber has read them:
//! reading the log up to `until` and then the ring from `until` leaves no
//! gap and delivers nothing twice, whatever publishers do meanwhile.

use rill_shm::frame::FrameKind;
use rill_shm::ring::{Message, PollError};
use rill_store::FrameReader;
use std::collections::VecDeque;
use std::fs::File;

/// Where a replay stands.
#[derive(Debug)]
pub(crate) struct Replay {
    segments: VecDeque<(u64, File)>,
    reader: Option<FrameReader<File>>,
    /// Deliver frames from here on.
    from: u64,
    /// Stop here: the ring takes over.
    until: u64,
    /// End of the last frame read.
    pos: u64,
}

impl Replay {
    pub(crate) fn new(segments: Vec<(u64, File)>, from: u64, until: u64) -> Self {
        let pos = segments.first().map_or(until, |s| s.0);
        Replay { segments: segments.into(), reader: None, from, until, pos }
    }

    /// Hands up to `limit` log messages to `handler`; returns how many, and
    /// whether the replay is over (the ring takes over at `until`).
    pub(crate) fn poll<F: FnMut(Message<'_>)>(&mut self, limit: usize, handler: &mut F) -> Result<(usize, bool), PollError> {
        let mut n = 0;
        while n < limit {
            if self.pos >= self.until {
                return Ok((n, true));
            }
            if self.reader.is_none() {
                match self.segments.pop_front() {
                    // Each segment starts where the one before ended (a
                    // reader stops at an all-zero header, so zeroed bytes
                    // inside a segment would otherwise skip to the next).
                    Some((first, _)) if first != self.pos => {
                        let reason = format!("the log has a gap: a segment starts at {first}, the one before it ends at {}", self.pos);
                        return Err(PollError::Replay { position: self.pos, reason });
                    }
                    Some((first, file)) => self.reader = Some(FrameReader::new(file, first)),
                    None => {
                        let reason = format!("the log handed over ends at {} before the ring's start at {}", self.pos, self.until);
                        return Err(PollError::Replay { position: self.pos, reason });
                    }
                }
            }
            let reader = self.reader.as_mut().expect("set above");
            let frame = match reader.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.reader = None;
                    continue;
                }
                Err(e) => return Err(PollError::Replay { position: self.pos, reason: e.to_string() }),
            };
            let h = frame.header;
            if h.position >= self.until {
                self.pos = self.until;
                return Ok((n, true));
            }
            self.pos = h.position + h.span() as u64;
            if h.kind == FrameKind::Data && h.position >= self.from {
                handler(Message {
                    payload: frame.payload,
                    position: h.position,
                    timestamp_ns: h.timestamp_ns,
                    publisher_id: h.publisher_id,
                    flags: h.flags,
                });
                n += 1;
            }
        }
        Ok((n, self.pos >= self.until))
    }
}
