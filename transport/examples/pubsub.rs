//! Publish and subscribe typed messages across two processes through
//! `rilld`, checking that every message arrives once and in order, even
//! when the daemon is killed and restarted in between.
//!
//! ```sh
//! rilld --socket /tmp/rill.sock --state-dir /tmp/rilld-demo --data-dir /tmp/rill-demo-data &
//! export RILL_SOCKET=/tmp/rill.sock RILL_LOG=info
//! cargo run --release -p rill --example pubsub -- sub demo 100000 &
//! cargo run --release -p rill --example pubsub -- pub demo 100000 50   # one message per 50 µs
//! ```
//!
//! The subscriber exits 0 once it has every message from 0 to COUNT-1
//! exactly once and in order, and 1 at the first gap, duplicate or
//! invalid message.

#![forbid(unsafe_code)]

use anyhow::{bail, Context};
use rill::rkyv::{Archive, Deserialize, Serialize};
use rill::{Client, Start};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The message.
#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(crate = rill::rkyv)]
struct Tick {
    seq: u64,
    sent_unix_ns: u64,
    note: String,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RILL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: pubsub pub STREAM COUNT [INTERVAL_US] | pubsub sub STREAM COUNT";
    let (role, stream, count) = match &args[..] {
        [role, stream, count, ..] => (role.as_str(), stream.as_str(), count.parse::<u64>().context(usage)?),
        _ => bail!(usage),
    };
    let client = Client::builder().name(format!("pubsub-{role}")).connect()?;
    tracing::info!(socket = %client.socket_path().display(), daemon = %client.daemon_version(), "connected");
    match role {
        "pub" => {
            let interval_us = args.get(3).map(|s| s.parse::<u64>()).transpose().context(usage)?.unwrap_or(0);
            publish(&client, stream, count, Duration::from_micros(interval_us))
        }
        "sub" => subscribe(&client, stream, count),
        _ => bail!(usage),
    }
}

fn publish(client: &Client, stream: &str, count: u64, interval: Duration) -> anyhow::Result<()> {
    let mut publisher = client.publisher(stream)?;
    let started = Instant::now();
    let mut next_at = started;
    for seq in 0..count {
        let tick = Tick { seq, sent_unix_ns: now_ns(), note: format!("tick {seq}") };
        publisher.send_blocking(&tick, Duration::from_secs(30)).with_context(|| format!("sending {seq}"))?;
        if (seq + 1).is_multiple_of(10_000) {
            tracing::info!(seq, connected = client.is_connected(), reconnects = client.reconnects(), "published");
        }
        if !interval.is_zero() {
            next_at += interval;
            if let Some(wait) = next_at.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    tracing::info!(count, secs = started.elapsed().as_secs_f64(), reconnects = client.reconnects(), "publisher done");
    Ok(())
}

fn subscribe(client: &Client, stream: &str, count: u64) -> anyhow::Result<()> {
    let mut subscriber = client.subscriber(stream, Start::Oldest)?;
    tracing::info!(slot = subscriber.slot(), position = subscriber.position(), "subscribed");
    let mut expected = 0u64;
    let mut latencies_ns = Vec::with_capacity(count as usize);
    let mut idle_since = Instant::now();
    while expected < count {
        let got = subscriber.recv_typed_with::<Tick, _>(Duration::from_secs(1), |t| {
            (t.seq.to_native(), t.sent_unix_ns.to_native(), t.note.as_str() == format!("tick {}", t.seq))
        })?;
        let Some((seq, sent_ns, note_ok)) = got else {
            if idle_since.elapsed() > Duration::from_secs(60) {
                bail!("nothing for 60 s; have {expected} of {count}");
            }
            continue;
        };
        idle_since = Instant::now();
        if seq != expected || !note_ok {
            bail!("expected message {expected}, got {seq} (note ok: {note_ok})");
        }
        latencies_ns.push(now_ns().saturating_sub(sent_ns));
        expected += 1;
        if expected.is_multiple_of(10_000) {
            tracing::info!(received = expected, connected = client.is_connected(), reconnects = client.reconnects(), "received");
        }
    }
    latencies_ns.sort_unstable();
    let pct = |p: f64| latencies_ns[((latencies_ns.len() - 1) as f64 * p) as usize];
    tracing::info!(
        count,
        reconnects = client.reconnects(),
        overrun_bytes = subscriber.overrun_bytes(),
        p50_ns = pct(0.5),
        p99_ns = pct(0.99),
        "all messages received once, in order"
    );
    println!("OK {count} messages in order, reconnects {}", client.reconnects());
    Ok(())
}
