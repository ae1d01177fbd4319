//! Single-thread micro-benchmarks of the ring's data path on heap memory
//! (`Ring::private`): one offer followed by one poll, for exclusive and
//! shared publications at 32 B and 1 KiB, a 64-message batch claim, and
//! the copying reads (an overwrite ring's seqlock read).
//!
//! Publisher and subscriber run on one thread, so every line is in L1:
//! this measures instructions on the path, not cache-line transfers (the
//! cross-process cost is `rill-bench pingpong` / `throughput`). Kept short:
//! `cargo bench -p rill-shm --bench ring` runs in about a minute.

// criterion_group! generates an undocumented `pub fn`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rill_shm::frame::message_span;
use rill_shm::ring::{PagePreference, Start};
use rill_shm::{Policy, Ring, RingConfig};
use std::hint::black_box;
use std::time::Duration;

const SIZES: [usize; 2] = [32, 1024];
const BATCH: usize = 64;

fn ring() -> Ring {
    ring_with(Policy::BackPressure)
}

fn ring_with(policy: Policy) -> Ring {
    let config = RingConfig {
        capacity: 1 << 20,
        max_message_len: 4096,
        policy,
        slot_count: 4,
        pages: PagePreference::NormalOnly,
    };
    Ring::private(&config).expect("private ring")
}

/// One offer, then one poll that hands it back, per iteration. A macro, not
/// a generic function: `ClaimMode` is not exported from `rill_shm::ring`.
macro_rules! offer_poll {
    ($c:expr, $name:literal, $make:ident) => {{
        let mut group = $c.benchmark_group(concat!("offer_poll/", $name));
        for size in SIZES {
            for timestamps in [false, true] {
                let ring = ring();
                let mut sub = ring.subscribe(Start::Latest).expect("subscribe");
                let mut publ = ring.$make().expect("publication");
                publ.set_timestamps(timestamps);
                let payload = vec![7u8; size];
                let id = BenchmarkId::new(if timestamps { "ts" } else { "no_ts" }, size);
                group.throughput(Throughput::Elements(1));
                group.bench_with_input(id, &size, |b, _| {
                    b.iter(|| {
                        publ.offer(black_box(&payload))
                            .expect("never back-pressured: drained each time");
                        let mut sum = 0u64;
                        let n = sub
                            .poll(16, |m| sum += u64::from(m.payload[0]))
                            .expect("poll");
                        assert_eq!(n, 1);
                        black_box(sum)
                    });
                });
            }
        }
        group.finish();
    }};
}

fn exclusive(c: &mut Criterion) {
    offer_poll!(c, "exclusive", exclusive_publication);
}

fn shared(c: &mut Criterion) {
    offer_poll!(c, "shared", shared_publication);
}

/// A batch of 64 messages claimed at once, pushed, committed, then polled.
fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch64/exclusive");
    for size in SIZES {
        let ring = ring();
        let mut sub = ring.subscribe(Start::Latest).expect("subscribe");
        let mut publ = ring.exclusive_publication().expect("publication");
        publ.set_timestamps(false);
        let payload = vec![7u8; size];
        group.throughput(Throughput::Elements(BATCH as u64));
        group.bench_with_input(BenchmarkId::new("no_ts", size), &size, |b, _| {
            b.iter(|| {
                let mut batch = publ
                    .try_claim_batch(BATCH * message_span(size))
                    .expect("claim batch");
                for _ in 0..BATCH {
                    assert!(batch.push(black_box(&payload)));
                }
                batch.commit().expect("no reclaimer runs in the benchmark");
                // A padding frame at a wrap counts toward poll's limit, so
                // one poll may hand out fewer than BATCH: drain.
                let (mut sum, mut got) = (0u64, 0);
                while got < BATCH {
                    got += sub
                        .poll(BATCH, |m| sum += u64::from(m.payload[0]))
                        .expect("poll");
                }
                assert_eq!(got, BATCH);
                black_box(sum)
            });
        });
    }
    group.finish();
}

/// One offer, then one poll, by a subscriber that copies each payload
/// out: an overwrite ring's (which then checks that no publisher lapped it:
/// a seqlock read), and a back-pressure ring's asked to copy
/// (`set_copy_payloads`), beside the same ring's read in place.
fn copying_reads(c: &mut Criterion) {
    let mut group = c.benchmark_group("offer_poll/reads");
    for size in [32, 1024, 4000] {
        for (name, policy, copy) in
            [("overwrite", Policy::Overwrite, false), ("copied", Policy::BackPressure, true), ("in_place", Policy::BackPressure, false)]
        {
            let ring = ring_with(policy);
            let mut sub = ring.subscribe(Start::Latest).expect("subscribe");
            sub.set_copy_payloads(copy);
            let mut publ = ring.exclusive_publication().expect("publication");
            publ.set_timestamps(false);
            let payload = vec![7u8; size];
            group.throughput(Throughput::Elements(1));
            group.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                b.iter(|| {
                    publ.offer(black_box(&payload)).expect("offer");
                    let mut sum = 0u64;
                    let n = sub.poll(16, |m| sum += u64::from(m.payload[m.payload.len() - 1])).expect("poll");
                    assert_eq!(n, 1);
                    black_box(sum)
                });
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = exclusive, shared, batch, copying_reads
}
criterion_main!(benches);
