//! Garbage in a ring's data region: readers return errors or wait, never
//! read out of bounds, never panic, never spin forever.

use proptest::prelude::*;
use rill_shm::layout::Geometry;
use rill_shm::ring::{PagePreference, Policy, Ring, RingConfig, Start};
use rill_shm::Access;
use std::io::{Seek, SeekFrom, Write};

const CAPACITY: u64 = 4096;

fn scribble(path: &std::path::Path, data: &[u8]) {
    let g = Geometry::new(CAPACITY, 4, 4096);
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(g.data_offset)).unwrap();
    f.write_all(data).unwrap();
}

/// Builds a data region of frames whose position words and commit tags
/// match (so readers take them as committed) but whose lengths and kinds
/// are arbitrary.
fn forged(frames: &[(u32, u16, u8)], salt: u64) -> Vec<u8> {
    let mut data = vec![0u8; CAPACITY as usize];
    let mut pos = 0usize;
    for &(len, kind, fill) in frames {
        if pos + 32 > data.len() {
            break;
        }
        data[pos..pos + 4].copy_from_slice(&len.to_le_bytes());
        data[pos + 4..pos + 6].copy_from_slice(&kind.to_le_bytes());
        data[pos + 8..pos + 16].copy_from_slice(&(pos as u64).to_le_bytes());
        data[pos + 28..pos + 32].copy_from_slice(&rill_shm::ring::commit_tag(salt, pos as u64).to_le_bytes());
        let step = ((len as usize + 31) & !31).clamp(32, 4096);
        for b in data.iter_mut().skip(pos + 32).take(step - 32) {
            *b = fill;
        }
        pos += step;
    }
    data
}

fn read_all(ring: &Ring, policy_detached: bool) {
    let mut sub = if policy_detached {
        ring.subscribe_detached(Start::Oldest)
    } else {
        ring.subscribe(Start::Oldest).unwrap()
    };
    let max = ring.info().max_message_len as usize;
    for _ in 0..10_000 {
        let before = sub.position();
        match sub.poll(64, |m| assert!(m.payload.len() <= max)) {
            Ok(_) if sub.position() == before => return,
            Ok(_) => {}
            Err(e) => {
                assert!(e.to_string().contains("corrupt frame"), "{e}");
                return;
            }
        }
    }
    panic!("reader kept going for 10000 polls over a 4 KiB ring of garbage");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn forged_frames_never_break_readers(
        frames in prop::collection::vec((any::<u32>(), 0u16..4, any::<u8>()), 1..40),
        random_tail in prop::collection::vec(any::<u8>(), 0..512),
        overwrite in any::<bool>(),
    ) {
        let dir = std::env::temp_dir().join(format!("rill-corrupt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let policy = if overwrite { Policy::Overwrite } else { Policy::BackPressure };
        let config = RingConfig { capacity: CAPACITY, max_message_len: 512, policy, slot_count: 4, pages: PagePreference::NormalOnly };
        drop(Ring::create_in(&dir, "r", &config).unwrap());
        let header = std::fs::read(dir.join("r")).unwrap();
        let salt = u64::from_le_bytes(header[72..80].try_into().unwrap());
        let mut data = forged(&frames, salt);
        let n = random_tail.len();
        data[CAPACITY as usize - n..].copy_from_slice(&random_tail);
        scribble(&dir.join("r"), &data);
        let ring = Ring::open(&dir.join("r"), Access::ReadWrite).unwrap();
        read_all(&ring, false);
        read_all(&ring, true);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
