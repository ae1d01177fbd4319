//! Runs the real binary briefly, cross-process, and checks that every
//! result line it promises is there with sane numbers. No timing is
//! asserted (shared machines are noisy): only that the measurements ran,
//! moved every message, and report what the JSON format documents.

#![forbid(unsafe_code)]

use std::process::Command;

fn run(args: &[&str]) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_rill-bench"))
        .args(args)
        .output()
        .expect("run rill-bench");
    assert!(
        out.status.success(),
        "rill-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The number after `"key":` in a flat JSON line.
fn num(line: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let rest = &line[line
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing in {line}"))
        + pat.len()..];
    let end = rest.find([',', '}']).expect("value ends");
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {line}: {e}"))
}

#[test]
fn pingpong_reports_every_transport_with_ordered_percentiles() {
    let lines = run(&[
        "pingpong",
        "--transport",
        "floor,floor-store,ring",
        "--count",
        "3000",
        "--warmup",
        "300",
        "--json",
    ]);
    let names: Vec<_> = lines
        .iter()
        .map(|l| l.split('"').nth(7).unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        names,
        ["floor", "floor-store", "ring", "ring+ts"],
        "{lines:#?}"
    );
    for l in &lines {
        assert_eq!(num(l, "count"), 3000.0, "{l}");
        let p: Vec<f64> = ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"]
            .iter()
            .map(|k| num(l, k))
            .collect();
        assert!(
            p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]),
            "percentiles out of order: {l}"
        );
    }
    for l in &lines[2..] {
        assert!(
            num(l, "p50_vs_floor") > 0.0 && num(l, "p99_vs_floor_store") > 0.0,
            "{l}"
        );
    }
}

#[test]
fn throughput_moves_and_checks_every_message() {
    let lines = run(&[
        "throughput",
        "--seconds",
        "0.2",
        "--batch",
        "8",
        "--capacity",
        "65536",
        "--json",
    ]);
    let modes: Vec<_> = lines
        .iter()
        .map(|l| l.split('"').nth(11).unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        modes,
        ["store", "offer", "offer", "batch8", "batch8"],
        "{lines:#?}"
    );
    for l in &lines {
        assert!(num(l, "msgs_per_s") > 0.0, "{l}");
        let (bytes, msgs) = (num(l, "bytes_per_s"), num(l, "msgs_per_s"));
        assert!(
            (bytes / (msgs * 32.0) - 1.0).abs() < 1e-3,
            "bytes_per_s is not 32 x msgs_per_s: {l}"
        );
        // 64 KiB holds 1024 messages of 32 B: more than two laps means the
        // reader's position reached the writer and the buffer was reused.
        assert!(
            num(l, "count") > 2048.0,
            "fewer than two laps of the buffer: {l}"
        );
    }
}
