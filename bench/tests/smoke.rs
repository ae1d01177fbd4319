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

/// The string after `"key":` in a flat JSON line.
fn text<'a>(line: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":\"");
    let at = line
        .find(&pat)
        .unwrap_or_else(|| panic!("{key} missing in {line}"));
    let rest = &line[at + pat.len()..];
    &rest[..rest.find('"').expect("string ends")]
}

#[test]
fn pingpong_measures_every_size_and_plots_every_series() {
    let svg_path = std::env::temp_dir().join(format!("rill-bench-smoke-{}.svg", std::process::id()));
    let _ = std::fs::remove_file(&svg_path);
    let lines = run(&[
        "pingpong",
        "--transport",
        "floor,floor-store,ring",
        "--size",
        "8,4KiB",
        "--count",
        "2000",
        "--warmup",
        "200",
        "--json",
        "--plot",
        svg_path.to_str().expect("utf-8 temp dir"),
    ]);
    let svg = std::fs::read_to_string(&svg_path).expect("--plot wrote the SVG");
    let _ = std::fs::remove_file(&svg_path);
    let series: Vec<(String, u64)> = lines
        .iter()
        .map(|l| (text(l, "transport").to_owned(), num(l, "size") as u64))
        .collect();
    // The floors carry 8 bytes at every size: one line each, the reference
    // for both sizes; the ring is measured at each size.
    let want = [
        ("floor", 8),
        ("floor-store", 8),
        ("ring", 8),
        ("ring+ts", 8),
        ("ring", 4096),
        ("ring+ts", 4096),
    ];
    let want: Vec<(String, u64)> = want.iter().map(|&(t, s)| (t.to_owned(), s)).collect();
    assert_eq!(series, want, "{lines:#?}");
    for l in &lines {
        assert_eq!(num(l, "count"), 2000.0, "{l}");
        for k in ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"] {
            assert!(num(l, k) > 0.0, "{k} in {l}");
        }
        if text(l, "transport").starts_with("ring") {
            assert!(num(l, "p50_vs_floor") > 0.0 && num(l, "p99_vs_floor_store") > 0.0, "{l}");
        }
    }
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
    assert_eq!(svg.matches("<polyline").count(), want.len(), "{svg}");
    for (t, size) in &want {
        let attrs = format!("data-transport=\"{t}\" data-size=\"{size}\"");
        assert_eq!(svg.matches(&attrs).count(), 1, "{attrs} in {svg}");
        let label = format!(">{t} {}</text>", if *size == 8 { "8B" } else { "4KiB" });
        assert!(svg.contains(&label), "legend {label} in {svg}");
    }
}

/// The iceoryx2 transport runs both sides to the end (side A fails the
/// run if any round trip brings back another message than it sent) and
/// reports a line like the others, with its ratio to the floor.
#[test]
fn pingpong_over_iceoryx2_reports_every_round_trip() {
    let lines = run(&[
        "pingpong",
        "--transport",
        "floor,iceoryx2",
        "--count",
        "2000",
        "--warmup",
        "200",
        "--rounds",
        "1",
        "--json",
    ]);
    let names: Vec<_> = lines
        .iter()
        .map(|l| l.split('"').nth(7).unwrap_or("").to_owned())
        .collect();
    assert_eq!(names, ["floor", "iceoryx2"], "{lines:#?}");
    let l = &lines[1];
    assert_eq!(num(l, "count"), 2000.0, "{l}");
    let p: Vec<f64> = ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"]
        .iter()
        .map(|k| num(l, k))
        .collect();
    assert!(
        p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {l}"
    );
    assert!(num(l, "p50_vs_floor") > 0.0, "{l}");
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
        ["store", "copy", "offer", "offer", "batch8", "batch8"],
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

/// The blocking transports and their floor each run both sides to the end
/// (side A fails the run if a round trip brings back another message than
/// it sent) and report a full line; each non-floor line carries its ratio
/// to `floor-futex`.
#[test]
fn pingpong_over_blocking_transports_reports_every_round_trip() {
    // `rill-blocking` starts the rilld next to rill-bench: build it there
    // (a no-op when up to date).
    let rilld = rill_tests::daemon::rilld_bin().expect("build rilld");
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_rill-bench"));
    assert_eq!(rilld.parent(), bench.parent(), "rilld must sit next to rill-bench");
    let want = ["uds", "tcp", "pipe", "floor-futex", "rill-blocking"];
    let lines = run(&[
        "pingpong",
        "--transport",
        &want.join(","),
        "--count",
        "2000",
        "--warmup",
        "200",
        "--rounds",
        "1",
        "--json",
    ]);
    let names: Vec<_> = lines.iter().map(|l| text(l, "transport")).collect();
    assert_eq!(names, want, "{lines:#?}");
    for l in &lines {
        assert_eq!(num(l, "count"), 2000.0, "{l}");
        let p: Vec<f64> = ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"]
            .iter()
            .map(|k| num(l, k))
            .collect();
        assert!(
            p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]),
            "percentiles out of order: {l}"
        );
        if text(l, "transport") != "floor-futex" {
            assert!(num(l, "p50_vs_floor_futex") > 0.0, "{l}");
        }
    }
}

#[test]
fn throughput_fans_out_and_in_with_every_message_checked() {
    // Every process checks every message it gets (the parent and the
    // fan-out subscribers per publisher, in order), and rill-bench fails
    // if any count differs from what the publishers sent.
    let lines = run(&[
        "throughput", "--transport", "ring,rill", "--seconds", "0.2", "--rounds", "1", "--fan-out", "3", "--fan-in", "3",
        "--capacity", "65536", "--json",
    ]);
    let modes: Vec<String> = lines.iter().map(|l| format!("{}/{}", text(l, "transport"), text(l, "mode"))).collect();
    for want in ["ring/offer 1:3", "ring/offer 3:1", "rill/offer 1:3", "rill/offer 3:1"] {
        assert!(modes.iter().any(|m| m == want), "no {want} line: {lines:#?}");
    }
    for l in lines.iter().filter(|l| text(l, "mode").contains(':')) {
        assert!(num(l, "count") > 2048.0 && num(l, "msgs_per_s") > 0.0, "{l}");
        assert!(num(l, "vs_one_to_one") > 0.0, "{l}");
    }
}

#[test]
fn oneway_reports_every_rate_with_ordered_percentiles() {
    let lines = run(&[
        "oneway", "--transport", "ring,rill,rill-blocking", "--rate", "20k,200k", "--seconds", "0.2", "--json",
    ]);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    for l in &lines {
        assert_eq!(text(l, "bench"), "oneway", "{l}");
        let rate = num(l, "rate");
        // Every message after the first tenth is recorded.
        assert_eq!(num(l, "count"), (rate * 0.2).ceil() - ((rate * 0.2).ceil() / 10.0).floor(), "{l}");
        assert!(num(l, "achieved_rate") > 0.0, "{l}");
        let p: Vec<f64> = ["p50_ns", "p90_ns", "p99_ns", "p999_ns", "max_ns"].iter().map(|k| num(l, k)).collect();
        assert!(p.windows(2).all(|w| w[0] <= w[1]), "percentiles out of order: {l}");
    }
}

/// `persist` measures the disk's raw limits and rilld's archiving in one
/// run and reports them in one JSON line; every number is there, positive,
/// and its percentiles are in order. The run's directory is removed.
#[test]
fn persist_reports_raw_limits_archiving_and_durable_acks() {
    // `persist` starts the rilld next to rill-bench (see the blocking test).
    let rilld = rill_tests::daemon::rilld_bin().expect("build rilld");
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_rill-bench"));
    assert_eq!(rilld.parent(), bench.parent(), "rilld must sit next to rill-bench");
    // On a disk (/var/tmp; /tmp may be tmpfs, which persist refuses), in a
    // directory of our own, so that what the run leaves behind can be
    // checked.
    struct Removed(std::path::PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let parent = Removed(std::path::Path::new("/var/tmp").join(format!("rill-bench-persist-smoke-{}", std::process::id())));
    std::fs::create_dir_all(&parent.0).expect("create the test directory");
    let lines = run(&[
        "persist", "--dir", parent.0.to_str().expect("utf-8 path"), "--raw-bytes", "8MiB", "--syncs", "40", "--seconds", "0.6",
        "--rounds", "2", "--publishers", "2", "--offers", "2000", "--json",
    ]);
    let left: Vec<_> = std::fs::read_dir(&parent.0).expect("list the test directory").collect();
    assert!(left.is_empty(), "the run left {left:?} behind");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let l = &lines[0];
    assert_eq!(text(l, "bench"), "persist", "{l}");
    assert_eq!(num(l, "raw_write_bytes"), f64::from(8u32 << 20), "{l}");
    for k in [
        "raw_write_bytes_per_s", "archive_bytes_per_s", "archive_synced_bytes_per_s", "archive_vs_raw_write",
        "archive_disk_bytes", "archive_published", "durable_ack_count", "durable_ack_published",
        "durable_ack_p50_vs_raw_fdatasync", "offer_p50_persisted_vs_plain",
    ] {
        assert!(num(l, k) > 0.0, "{k} in {l}");
    }
    // The first tenth of the syncs and offers is not recorded.
    assert_eq!(num(l, "raw_fdatasync_count"), 40.0, "{l}");
    assert_eq!(num(l, "offer_count"), 1800.0, "{l}");
    assert!(num(l, "durable_ack_published") >= num(l, "durable_ack_count"), "{l}");
    for prefix in ["raw_fdatasync", "raw_fdatasync_overwrite", "durable_ack", "offer_plain", "offer_persisted"] {
        let (p50, p99) = (num(l, &format!("{prefix}_p50_ns")), num(l, &format!("{prefix}_p99_ns")));
        assert!(p50 > 0.0 && p50 <= p99, "{prefix} percentiles out of order: {l}");
    }
    assert!(num(l, "durable_ack_p99_ns") <= num(l, "durable_ack_max_ns"), "{l}");
}
