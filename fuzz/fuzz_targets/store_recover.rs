//! Start-up recovery of a stream's last segment, on a real file:
//! `rill_store::recover_segment` (scan, keep a corrupt tail aside in a
//! side file, cut the file at the damage, sync). Must never panic, only
//! report; afterwards the file is exactly its valid batches (a second
//! recovery finds nothing to cut), and a corrupt tail's meaningful bytes
//! are in the side file.
//!
//! Input: 8 bytes of the first position (the file name), then the file.
//! Files live in a scratch directory on /dev/shm.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_store::{recover_segment, segment_file_name, DamageKind};
use std::path::PathBuf;
use std::sync::OnceLock;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = rill_fuzz::scratch_dir("recover");
        rill_fuzz::remove_at_exit(&d);
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((first, bytes)) = data.split_first_chunk::<8>() else { return };
    let first = u64::from_le_bytes(*first);
    let dir = dir();
    rill_fuzz::clear_dir(dir);
    let path = dir.join(segment_file_name(first));
    std::fs::write(&path, bytes).expect("write segment");

    let r = recover_segment(&path).expect("recovery of a readable file");
    let now = std::fs::read(&path).expect("read back");
    match r.scan.damage.as_ref().map(|d| &d.kind) {
        // Whole, or whole but for a zero tail, which stays.
        None => assert!(r.side_file.is_none() && r.truncated_bytes == 0 && now == bytes),
        Some(DamageKind::Torn) => assert!(r.side_file.is_none()),
        Some(DamageKind::Corrupt { .. }) => {
            let side = r.side_file.as_ref().expect("corrupt damage is kept aside");
            let kept = std::fs::read(side).expect("side file");
            let cut = &bytes[r.len() as usize..];
            assert!(cut.starts_with(&kept), "the side file holds the start of what was cut");
            assert!(cut[kept.len()..].iter().all(|&b| b == 0), "only zeros left out of the side file");
        }
    }
    if r.scan.damage.is_some() {
        // Cut at the damage: the valid batches (and holes) before it.
        assert_eq!(now.len() as u64, r.len());
        assert_eq!(&now[..], &bytes[..now.len()]);
        assert_eq!(r.truncated_bytes, bytes.len() as u64 - r.len());
    }
    let again = recover_segment(&path).expect("second recovery");
    assert!(again.scan.damage.is_none() && again.truncated_bytes == 0, "{again:?}");
    assert_eq!(again.scan.batches, r.scan.batches);
    assert_eq!(again.end_position(), r.end_position());
});
