//! Building frames in ordinary memory, as a ring would hold them: for
//! tests, tools, and anything off the data path (it allocates).

use rill_shm::frame::{frame_span, FrameHeader, FrameKind, FRAME_ALIGNMENT, HEADER_LEN};

/// Frames laid out back to back from a stream position, each 32-byte
/// aligned, exactly as in the ring. Feed [`FrameBuf::as_bytes`] to
/// [`BatchHeader::for_frames`](crate::BatchHeader::for_frames) or
/// [`encode_batch`](crate::encode_batch).
#[derive(Debug, Clone)]
pub struct FrameBuf {
    first_position: u64,
    bytes: Vec<u8>,
}

impl FrameBuf {
    /// No frames yet; the first will sit at `first_position` (a multiple
    /// of 32).
    pub fn new(first_position: u64) -> FrameBuf {
        assert!(first_position.is_multiple_of(FRAME_ALIGNMENT as u64), "positions are 32-byte aligned");
        FrameBuf { first_position, bytes: Vec::new() }
    }

    /// Appends a data frame; returns its position.
    pub fn data(&mut self, timestamp_ns: u64, publisher_id: u32, payload: &[u8]) -> u64 {
        self.data_with_flags(timestamp_ns, publisher_id, 0, payload)
    }

    /// Appends a data frame with application flags; returns its position.
    pub fn data_with_flags(&mut self, timestamp_ns: u64, publisher_id: u32, flags: u16, payload: &[u8]) -> u64 {
        let length = u32::try_from(HEADER_LEN + payload.len()).expect("payload under 4 GiB");
        self.push(FrameHeader { length, kind: FrameKind::Data, flags, position: 0, timestamp_ns, publisher_id }, payload)
    }

    /// Appends a padding frame of `span` bytes (a multiple of 32, at least
    /// 32), as the ring writes at a wrap; returns its position.
    pub fn padding(&mut self, span: usize) -> u64 {
        assert!(span >= HEADER_LEN && span.is_multiple_of(FRAME_ALIGNMENT), "padding span {span}");
        let length = u32::try_from(span).expect("span under 4 GiB");
        let header = FrameHeader { length, kind: FrameKind::Padding, flags: 0, position: 0, timestamp_ns: 0, publisher_id: 0 };
        self.push(header, &vec![0; span - HEADER_LEN])
    }

    fn push(&mut self, mut header: FrameHeader, payload: &[u8]) -> u64 {
        let position = self.end_position();
        header.position = position;
        self.bytes.extend_from_slice(&header.encode());
        self.bytes.extend_from_slice(payload);
        let end = self.bytes.len() - payload.len() - HEADER_LEN + frame_span(header.length as usize);
        self.bytes.resize(end, 0);
        position
    }

    /// Position of the first frame.
    pub fn first_position(&self) -> u64 {
        self.first_position
    }

    /// Position just after the last frame (where the next one would go).
    pub fn end_position(&self) -> u64 {
        self.first_position + self.bytes.len() as u64
    }

    /// Bytes of frames so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether no frame was added.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The frames.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frames, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_shm::frame::parse_frame;

    #[test]
    fn frames_are_aligned_and_positioned() {
        let mut f = FrameBuf::new(320);
        assert_eq!(f.data(5, 9, b"abc"), 320);
        assert_eq!(f.padding(64), 384);
        assert_eq!(f.data(6, 9, &[1; 32]), 448);
        assert_eq!(f.end_position(), 512);
        let b = f.as_bytes();
        let first = parse_frame(b, 1 << 20).unwrap();
        assert_eq!((first.header.position, first.header.timestamp_ns, first.header.publisher_id, first.payload), (320, 5, 9, &b"abc"[..]));
        assert_eq!(parse_frame(&b[64..], 1 << 20).unwrap().header.kind, FrameKind::Padding);
        assert_eq!(parse_frame(&b[128..], 1 << 20).unwrap().payload, &[1; 32]);
    }
}
