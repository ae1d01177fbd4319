//! The frame header reader of rill-shm: `rill_shm::frame::parse_frame`,
//! the bounds-checked parser that every reader of frames held in bytes
//! (segment files, the archiver's copy of a ring, replay) relies on.
//!
//! Input: 4 bytes of `max_frame_len` (little-endian), then the buffer.
//! Checks, when a frame parses: its length is within `32..=max` and the
//! buffer, the payload is exactly `length - 32` bytes right after the
//! header, its span is the length rounded up to 32, and encoding its
//! header gives back the bytes it came from (but for the commit tag,
//! which readers of bytes ignore). Also walks the buffer frame by frame
//! the way batch checking does, which must end without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_shm::frame::{frame_span, parse_frame, FRAME_ALIGNMENT, HEADER_LEN, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((max, buf)) = data.split_first_chunk::<4>() else { return };
    let max = u32::from_le_bytes(*max) as usize;
    if let Ok(f) = parse_frame(buf, max) {
        let len = f.header.length as usize;
        assert!(len >= HEADER_LEN && len <= max.min(MAX_FRAME_LEN) && len <= buf.len());
        assert_eq!(f.header.payload_len(), len - HEADER_LEN);
        assert_eq!(f.payload, &buf[HEADER_LEN..len]);
        assert_eq!(f.header.span(), frame_span(len));
        assert!(f.header.span() >= len && f.header.span() - len < FRAME_ALIGNMENT);
        let enc = f.header.encode();
        assert_eq!(enc[..28], buf[..28], "header encodes back to its bytes");
    }
    // Walk frame after frame, as BatchHeader::verify does.
    let mut o = 0usize;
    while o < buf.len() {
        let Ok(f) = parse_frame(&buf[o..], max) else { break };
        o += f.header.span();
    }
});
