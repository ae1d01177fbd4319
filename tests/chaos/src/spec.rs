//! The streams of a run, their publishers, and publisher indices.
//!
//! Each stream has a few publisher *slots*; each process that runs in a
//! slot is one *incarnation* of it. A publisher process starts its
//! sequence numbers at 0 and never reuses one; a restarted one (after
//! `kill -9`, or a power cut) is a new incarnation with a new index. So
//! `(index, seq)` names one message for the whole run, and a message an
//! earlier incarnation offered but was never told durable cannot be taken
//! for one of the next incarnation. The payload's publisher field
//! ([`rill_tests::payload`]) is the index:
//!
//! ```text
//!  31          20 19                     0
//! +--------------+------------------------+
//! | slot (12 b)  | incarnation (20 bits)  |
//! +--------------+------------------------+
//! ```

use rill::Durability;

/// Largest payload (and the streams' `max_message_len`): payload lengths
/// are a function of it, so every process uses this one.
pub const MAX_LEN: usize = 2048;
/// Ring capacity of every stream.
pub const CAPACITY: u64 = 256 << 10;
/// `rilld --segment-bytes`: segments roll every MiB, so there are sealed
/// segments to damage and rolls for the faults to hit.
pub const SEGMENT_BYTES: u64 = 1 << 20;
/// Bits of a publisher index that hold the incarnation.
pub const INCARNATION_BITS: u32 = 20;
/// Publisher slots per stream (slot = stream index * this + k).
pub const SLOTS_PER_STREAM: u32 = 16;

/// One stream of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Its name.
    pub name: String,
    /// How it is persisted.
    pub durability: Durability,
    /// Publisher processes on it at any time.
    pub publishers: u32,
}

impl StreamSpec {
    /// Whether an acknowledged message of this stream survives a power cut
    /// (`always`, `interval`: synced before `wait_durable` returns; `none`
    /// only written).
    pub fn synced(&self) -> bool {
        self.durability != Durability::None
    }

    /// The global slot of its publisher `k`, given its index among the
    /// run's streams.
    pub fn slot(stream: usize, k: u32) -> u32 {
        assert!(k < SLOTS_PER_STREAM, "publisher {k} of a stream: at most {SLOTS_PER_STREAM}");
        stream as u32 * SLOTS_PER_STREAM + k
    }

    /// Which stream (by index) a global slot belongs to.
    pub fn stream_of_slot(slot: u32) -> usize {
        (slot / SLOTS_PER_STREAM) as usize
    }
}

/// The streams of a run: one per durability, `publishers` each, the
/// interval stream syncing every `interval_ms`.
pub fn streams(publishers: u32, interval_ms: u32) -> Vec<StreamSpec> {
    let one = |name: &str, durability| StreamSpec { name: name.to_owned(), durability, publishers };
    vec![
        one("chaos.always", Durability::Always),
        one(&format!("chaos.interval{interval_ms}"), Durability::IntervalMs(interval_ms)),
        one("chaos.none", Durability::None),
    ]
}

/// The payload publisher index of `slot`'s incarnation `incarnation`.
pub fn publisher_index(slot: u32, incarnation: u32) -> u32 {
    assert!(slot < 1 << (32 - INCARNATION_BITS), "slot {slot} too large");
    assert!(incarnation < 1 << INCARNATION_BITS, "incarnation {incarnation} too large");
    slot << INCARNATION_BITS | incarnation
}

/// `(slot, incarnation)` of a publisher index.
pub fn split_index(index: u32) -> (u32, u32) {
    (index >> INCARNATION_BITS, index & ((1 << INCARNATION_BITS) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_round_trip_and_slots_map_back_to_streams() {
        let i = publisher_index(StreamSpec::slot(2, 1), 77);
        assert_eq!(split_index(i), (33, 77));
        assert_eq!(StreamSpec::stream_of_slot(33), 2);
        assert_ne!(publisher_index(1, 0), publisher_index(0, 1));
    }
}
