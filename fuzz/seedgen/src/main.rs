//! Writes the seed corpora of the fuzz targets: a few valid inputs per
//! target, made with Rill's own encoders and writers, as
//! `<corpus dir>/<target>/seed-<what>` (default corpus dir: `fuzz/corpus`
//! next to this crate). Run it again after a format change:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml -p rill-fuzz-seedgen [CORPUS_DIR]
//! ```
//!
//! The input layouts are those documented at the top of each target in
//! `fuzz/fuzz_targets/`. (`ring_read` takes `arbitrary`-structured input,
//! which has no writer: its seeds are small inputs kept from a fuzzing
//! run.)

use rill_protocol::*;
use rill_store::{encode_batch, FrameBuf};
use std::path::{Path, PathBuf};

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("corpus directory");
    std::fs::write(d.join(format!("seed-{name}")), bytes).expect("seed file");
}

fn info(name: &str) -> StreamInfo {
    StreamInfo {
        name: name.into(),
        capacity: 1 << 20,
        max_message_len: 4096,
        policy: Policy::Overwrite,
        page_size: 4096,
        slot_count: 16,
        tail: 12_345 * 32,
        publishers: 2,
        subscribers: vec![SubscriberInfo { slot: 3, pid: 4242, position: 4096, lag_bytes: 640, holding: true }],
        padded_bytes: 64,
        reaped_subscribers: 1,
        keep: true,
        exclusive: false,
        persist: Some(Durability::IntervalMs(5)),
        durable_position: 4096,
        disk_bytes: 1 << 16,
        archive_error: Some("disk full".into()),
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    let opts = StreamOptions { capacity: 1 << 20, max_message_len: 4096, policy: Policy::BackPressure, keep: false, persist: Some(Durability::Always) };
    vec![
        ("hello", Request::Hello { client_name: "fuzz".into() }),
        ("create", Request::CreateStream { stream: "orders.eu".into(), options: opts.clone() }),
        ("open-publisher", Request::OpenPublisher { stream: "orders".into(), create: Some(opts.clone()), exclusive: true }),
        ("open-subscriber", Request::OpenSubscriber { stream: "orders".into(), start: StartAt::Time(1_700_000_000_000_000_000), create: None }),
        ("open-subscriber-position", Request::OpenSubscriber { stream: "o".into(), start: StartAt::Position(4096), create: Some(opts) }),
        ("close", Request::Close { handle: 7 }),
        ("list", Request::ListStreams),
        ("info", Request::StreamInfo { stream: "orders".into() }),
        ("health", Request::Health),
        ("heartbeat", Request::Heartbeat),
        (
            "resume",
            Request::Resume {
                handles: vec![
                    ResumeHandle { stream: "a".into(), kind: HandleKind::Publisher, slot: 0, exclusive: false },
                    ResumeHandle { stream: "b".into(), kind: HandleKind::Subscriber, slot: 5, exclusive: false },
                ],
            },
        ),
        ("log-segments", Request::LogSegments { stream: "audit".into(), from: 1 << 40 }),
        ("list-page", Request::ListStreamsPage { after: Some("m".into()) }),
        ("slot-pages", Request::SlotPages { handle: 3 }),
    ]
}

fn responses() -> Vec<(&'static str, Response)> {
    vec![
        ("hello", Response::Hello { daemon_version: "0.1.0".into(), heartbeat_ms: 1000 }),
        ("publisher", Response::Publisher { handle: 1, info: info("orders"), slots_epoch: 0 }),
        (
            "subscriber",
            Response::Subscriber {
                handle: 2,
                slot: 3,
                position: 4096,
                info: info("orders"),
                replay: Some(Replay { segments: vec![0, 1 << 20], from: 64, until: 4096 }),
                publishers_trusted: false,
            },
        ),
        ("created", Response::Created { info: info("x") }),
        ("closed", Response::Closed),
        ("streams", Response::Streams { streams: vec![info("a"), info("b")] }),
        ("info", Response::Info { info: info("a") }),
        ("health", Response::Health { healthy: false, detail: "archiving of a stopped".into() }),
        ("heartbeat-ack", Response::HeartbeatAck),
        ("resumed", Response::Resumed { handles: vec![0, 9, 10] }),
        ("log-segments", Response::LogSegments { log: LogSegments { segments: vec![0, 1 << 26], start_offset: 4160, start_batch: 4096, archived: 1 << 27 } }),
        ("error", Response::Error { code: ErrorCode::Limit, message: "streams_per_uid 256".into() }),
        ("page", Response::StreamsPage { streams: vec![info("z")], next: Some("z".into()) }),
        ("slot-pages", Response::SlotPages { slots_epoch: 17 }),
    ]
}

/// Frames from `first`: data, padding, more data.
fn frames(first: u64, n: usize) -> FrameBuf {
    let mut f = FrameBuf::new(first);
    for i in 0..n {
        f.data_with_flags(1_000 + i as u64, 7, i as u16, format!("message {i}").as_bytes());
        if i % 3 == 1 {
            f.padding(64);
        }
    }
    f
}

/// A segment of `batches` batches from `first`.
fn segment(first: u64, batches: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = first;
    for b in 0..batches {
        let f = frames(p, 2 + b);
        out.extend(encode_batch(p, &[f.as_bytes()]).expect("valid batch"));
        p = f.end_position();
    }
    out
}

/// Segment variants: whole, with a zero tail, torn, corrupt last batch,
/// a hole in the middle.
fn segments(first: u64) -> Vec<(&'static str, Vec<u8>)> {
    let whole = segment(first, 3);
    let mut zero_tail = whole.clone();
    zero_tail.resize(whole.len().next_multiple_of(4096), 0);
    let torn = whole[..whole.len() - 40].to_vec();
    let mut corrupt = whole.clone();
    let n = corrupt.len();
    corrupt[n - 10] ^= 0x40;
    let mut hole = whole.clone();
    hole[64 + 40] ^= 1; // a payload byte of the first batch
    vec![("one-batch", segment(first, 1)), ("whole", whole), ("zero-tail", zero_tail), ("torn", torn), ("corrupt-tail", corrupt), ("hole", hole)]
}

fn main() {
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus"));

    for (name, r) in requests() {
        let bytes = encode_request(&r).expect("encode request");
        write(&dir, "protocol_request", name, &bytes);
        let mut w = vec![0u8];
        w.extend(&bytes);
        write(&dir, "wire_recv", &format!("request-{name}"), &w);
    }
    for (name, r) in responses() {
        let bytes = encode_response(&r).expect("encode response");
        write(&dir, "protocol_response", name, &bytes);
        // Replies that hand over rings come with fds.
        let mut w = vec![if matches!(r, Response::Publisher { .. } | Response::Subscriber { .. } | Response::SlotPages { .. }) { 5 } else { 0 }];
        w.extend(&bytes);
        write(&dir, "wire_recv", &format!("response-{name}"), &w);
    }
    write(&dir, "wire_recv", "empty", &[0]);
    write(&dir, "wire_recv", "oversize", &[9, 1, 2, 3]);

    let max = 4096u32.to_le_bytes();
    for (name, f) in [("data", frames(4096, 1)), ("data-padding-data", frames(64, 3)), ("many", frames(0, 8))] {
        write(&dir, "frame_parse", name, &[&max[..], f.as_bytes()].concat());
    }

    let first = 4096u64;
    for (name, seg) in segments(first) {
        let at = [64u32.to_le_bytes(), 32u32.to_le_bytes()].concat();
        write(&dir, "store_segment", name, &[&first.to_le_bytes()[..], &at, &seg].concat());
        write(&dir, "store_recover", name, &[&first.to_le_bytes()[..], &seg].concat());
    }

    // Index: two or three segments back to back, some damaged.
    let seg_a = segment(0, 2);
    let end_a = {
        let mut p = 0;
        for b in 0..2 {
            p = frames(p, 2 + b).end_position();
        }
        p
    };
    let seg_b = segment(end_a, 3);
    let mut seg_b_damaged = seg_b.clone();
    seg_b_damaged[70] ^= 0xff; // the first frame's flags: a CRC mismatch
    let index = |control: u8, segs: &[(u64, &[u8])], append: &[u8], queries: &[u64]| {
        let mut out = vec![control];
        for (first, bytes) in segs {
            out.extend(first.to_le_bytes());
            out.extend((bytes.len() as u16).to_le_bytes());
            out.extend(*bytes);
        }
        out.extend(append);
        for q in queries {
            out.extend(q.to_le_bytes());
        }
        out
    };
    write(&dir, "store_index", "one", &index(0, &[(0, &seg_a)], &[], &[0, 64, 1 << 40]));
    write(&dir, "store_index", "two", &index(1, &[(0, &seg_a), (end_a, &seg_b)], &[], &[0, end_a, end_a + 64]));
    write(&dir, "store_index", "two-damaged", &index(1, &[(0, &seg_a), (end_a, &seg_b_damaged)], &[], &[end_a]));
    let more = segment(end_a, 1);
    write(&dir, "store_index", "gap-and-append", &index(1 | (4 << 2), &[(0, &seg_a), (end_a + 4096, &seg_b)], &more[..128], &[1000]));

    // rilld.toml: the example at the top of daemon/src/config.rs.
    let rilld_toml = r#"socket = "/run/rill/rilld.sock"
state_dir = "/run/rilld"
huge_pages = true
linger_ms = 5000
heartbeat_ms = 1000
client_timeout_ms = 5000
unblock_timeout_ms = 5000
resume_grace_ms = 5000
stall_limit_ms = 30000
slot_count = 16
keep = ["orders."]
data_dir = "/var/lib/rill"
segment_bytes = 67108864
retention_bytes = 10737418240
retention_ms = 604800000
direct_io = true

[limits]
connections = 4096
connections_per_uid = 1024
streams = 1024
streams_per_uid = 256
stream_bytes = 1073741824
ring_bytes = 12884901888
ring_bytes_per_uid = 6442450944
persisted_streams = 256
persisted_streams_per_uid = 64

[[allow]]
uids = [1000]
publish = ["orders."]
subscribe = [""]

[[allow]]
gids = [50]
subscribe = ["metrics."]
"#;
    let config = |uid: u32, gid: u32, action: u8, groups: &[u32], name: &str, text: &str| {
        let mut out = Vec::new();
        out.extend(uid.to_le_bytes());
        out.extend(gid.to_le_bytes());
        out.push(action);
        out.push(groups.len() as u8);
        for g in groups {
            out.extend(g.to_le_bytes());
        }
        out.push(name.len() as u8);
        out.extend(name.as_bytes());
        out.extend(text.as_bytes());
        out
    };
    write(&dir, "config_rilld", "example", &config(1000, 1000, 0, &[], "orders.eu", rilld_toml));
    write(&dir, "config_rilld", "refused", &config(2000, 2000, 1, &[50, 7], "billing", rilld_toml));
    write(&dir, "config_rilld", "small", &config(0, 0, 0, &[], "x", "slot_count = 8\n[[allow]]\ngids = [50]\nsubscribe = [\"metrics.\"]\n"));
    write(&dir, "config_rilld", "empty", &config(1, 1, 1, &[], "a", ""));

    // stream.toml as rilld writes it (toml::to_string of StreamMeta).
    for (name, policy, durability) in [("none", "back-pressure", "none"), ("interval", "overwrite", "interval:5"), ("always", "back-pressure", "always")] {
        let text = format!("capacity = 1048576\nmax_message_len = 4096\npolicy = \"{policy}\"\ndurability = \"{durability}\"\narchiver_slot = 0\n");
        write(&dir, "stream_meta", name, text.as_bytes());
    }
    println!("seeds written under {}", dir.display());
}
