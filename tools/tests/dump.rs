//! `rill dump` as a process: its output and exit code on whole, torn and
//! corrupt segment files.

#![forbid(unsafe_code)]

use rill_store::{encode_batch, segment_file_name, FrameBuf};
use std::path::Path;
use std::process::{Command, Output};

/// `n` batches of two text messages each, from position 0.
fn segment(n: usize) -> (Vec<u8>, Vec<usize>) {
    let (mut bytes, mut offsets, mut position) = (Vec::new(), Vec::new(), 0);
    for i in 0..n {
        let mut f = FrameBuf::new(position);
        f.data(1_700_000_000_000_000_000 + i as u64, 7, format!("message {i}a").as_bytes());
        f.data(1_700_000_000_000_000_000 + i as u64, 7, format!("message {i}b").as_bytes());
        offsets.push(bytes.len());
        bytes.extend(encode_batch(position, &[f.as_bytes()]).unwrap());
        position = f.end_position();
    }
    (bytes, offsets)
}

fn rill_dump(path: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rill")).arg("dump").arg(path).args(extra).output().expect("running rill")
}

#[test]
fn dump_exits_0_on_a_whole_file_and_1_naming_the_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(segment_file_name(0));
    let (bytes, offsets) = segment(3);
    std::fs::write(&path, &bytes).unwrap();

    let out = rill_dump(&path, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.matches("batch @").count(), 3, "{stdout}");
    assert!(stdout.contains("\"message 2b\""), "{stdout}");
    assert!(stdout.contains("whole: every batch verifies"), "{stdout}");

    let out = rill_dump(&path, &["--batches-only"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stdout.contains("message"), "{stdout}");

    // A flipped byte in the middle batch: a hole of exactly its positions,
    // with a valid batch after it.
    let mut corrupt = bytes.clone();
    corrupt[offsets[1] + 70] ^= 0x20;
    std::fs::write(&path, &corrupt).unwrap();
    let out = rill_dump(&path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("hole at offset {}: positions", offsets[1])) && stderr.contains("lost"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("BAD"));

    // Cut short: a torn tail.
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let out = rill_dump(&path, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("torn tail at offset {}", offsets[2])), "{stderr}");

    // No such file.
    let out = rill_dump(&dir.path().join("missing.log"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.log"));
}
