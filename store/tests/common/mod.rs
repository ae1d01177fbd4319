//! Segments made by hand for the tests.

#![allow(dead_code, unreachable_pub)]

use rill_store::{encode_batch, FrameBuf};

/// One frame of a test segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestFrame {
    /// A data frame.
    Data { timestamp_ns: u64, publisher_id: u32, payload: Vec<u8> },
    /// A padding frame of this span.
    Padding(usize),
}

/// A segment built from batches of frames, and where everything landed.
#[derive(Debug, Clone)]
pub struct TestSegment {
    pub bytes: Vec<u8>,
    pub first_position: u64,
    /// File offset of each batch, and the file length last.
    pub batch_offsets: Vec<u64>,
    /// Stream position of each batch, and the end position last.
    pub batch_positions: Vec<u64>,
    /// Every data frame: position, timestamp, publisher, payload.
    pub data: Vec<(u64, u64, u32, Vec<u8>)>,
}

pub fn build_segment(first_position: u64, batches: &[Vec<TestFrame>]) -> TestSegment {
    let mut seg =
        TestSegment { bytes: Vec::new(), first_position, batch_offsets: Vec::new(), batch_positions: Vec::new(), data: Vec::new() };
    let mut position = first_position;
    for batch in batches {
        let mut f = FrameBuf::new(position);
        for frame in batch {
            match frame {
                TestFrame::Data { timestamp_ns, publisher_id, payload } => {
                    let p = f.data(*timestamp_ns, *publisher_id, payload);
                    seg.data.push((p, *timestamp_ns, *publisher_id, payload.clone()));
                }
                TestFrame::Padding(span) => {
                    f.padding(*span);
                }
            }
        }
        seg.batch_offsets.push(seg.bytes.len() as u64);
        seg.batch_positions.push(position);
        seg.bytes.extend(encode_batch(position, &[f.as_bytes()]).expect("valid frames"));
        position = f.end_position();
    }
    seg.batch_offsets.push(seg.bytes.len() as u64);
    seg.batch_positions.push(position);
    seg
}

/// `n` batches of `per_batch` messages `"m<i>"`, timestamps `first_position`
/// + 10, + 20, ... (so they grow across consecutive segments too).
pub fn simple_segment(first_position: u64, n: usize, per_batch: usize) -> TestSegment {
    let mut i = 0u64;
    let batches: Vec<Vec<TestFrame>> = (0..n)
        .map(|_| {
            (0..per_batch)
                .map(|_| {
                    i += 1;
                    TestFrame::Data {
                        timestamp_ns: first_position + 10 * i,
                        publisher_id: 1 + (i % 3) as u32,
                        payload: format!("m{i}").into_bytes(),
                    }
                })
                .collect()
        })
        .collect();
    build_segment(first_position, &batches)
}

/// A fresh directory under the system temp dir, removed on drop.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("rill-store-test-").tempdir().expect("temp dir")
}
