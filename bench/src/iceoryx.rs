//! The `iceoryx2` transport of `rill-bench pingpong`: the `ring` round trip
//! over the iceoryx2 crate's publish-subscribe, for a reference point
//! outside Rill measured in the same run.
//!
//! Two services of `[u8]` payloads, `ping` and `pong`, each created by side
//! A with one publisher, one subscriber, no history and a subscriber buffer
//! of one sample (with safe overflow), as in iceoryx2's own
//! `benchmarks/publish-subscribe`. A publishes message `i` (`size` bytes,
//! `i` in the first 8) on `ping` and busy-polls `pong`; B busy-polls `ping`
//! and publishes a copy of each message on `pong`. Only one message is ever
//! in flight, so the one-sample buffer never overflows.
//!
//! Payloads go the zero-copy way: each side loans a sample from its
//! publisher's shared-memory segment, writes the payload into it in place
//! and sends it; the receiver reads it where it lies. As in iceoryx2's
//! benchmark, each side loans its next sample ahead, outside the round trip
//! (A right after sending, B before it polls); writing the payload into the
//! loan and sending it is inside, as `offer` is for `ring`. Loans are
//! written with `write_from_slice` (`loan_slice_uninit` followed by
//! `assume_init`, as the benchmark does, needs `unsafe`, which this crate
//! forbids).
//!
//! Service names carry the pid and a sequence number, so runs do not meet.
//! Both sides' nodes handle no signals (iceoryx2 would otherwise catch
//! SIGINT and SIGTERM, which these busy loops never look at). A removes
//! what dead nodes of earlier runs left behind (a killed child) when it
//! starts; everything of a run that ends is removed when its last node
//! drops. Segments live in POSIX shared memory (4 KiB pages).

use crate::child::{preemptions, report_field, ChildArgs, ChildProc, Stall};
use crate::daemon::stream_name;
use crate::pingpong::{sequence, STALL_TIMEOUT};
use crate::report;
use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::prelude::*;
use iceoryx2::service::port_factory::publish_subscribe::PortFactory;
use std::time::Instant;

/// The page kind of iceoryx2's segments, for result lines.
pub(crate) const PAGES: &str = "4KiB";

type Pub = Publisher<ipc::Service, [u8], ()>;
type PubSub = PortFactory<ipc::Service, [u8], ()>;

/// Side A: creates both services, starts B (`child`, whose `count` is
/// every round trip, warmup included) and times each round trip after the
/// first `warmup`. Returns the histogram and the preemptions of both sides.
pub(crate) fn round_trips(mut child: ChildArgs, warmup: u64) -> Result<(Histogram<u64>, u64)> {
    assert!(warmup <= child.count, "warmup is part of the count");
    let size = child.size;
    let node = node()?;
    // A killed earlier run leaves its segments and node files behind.
    node.try_cleanup_dead_nodes();
    child.streams = vec![stream_name("ping"), stream_name("pong")];
    let ping = service(&node, &child.streams[0], true)?;
    let pong = service(&node, &child.streams[1], true)?;
    let publ = publisher(&ping, size)?;
    // Subscribe before B starts, so B's first message (its "ready") is ours.
    let sub = pong.subscriber_builder().create().context("create pong subscriber")?;
    let mut proc = ChildProc::spawn(&child)?;
    let mut stall = Stall::new(STALL_TIMEOUT, child.spin_hint);
    while sub.receive().context("receive on pong")?.is_none() {
        proc.check_alive().context("waiting for the echo process")?;
        stall.idle_yield().context("waiting for the echo process")?;
    }
    let mut payload = vec![0u8; size];
    let mut hist = report::latency_histogram();
    let mut loan = publ.loan_slice_uninit(size).context("loan on ping")?;
    let preempted_before = preemptions();
    for i in 0..child.count {
        payload[..8].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        let sent = loan.write_from_slice(&payload).send().context("send on ping")?;
        // The next loan, while B answers (see the module docs).
        loan = publ.loan_slice_uninit(size).context("loan on ping")?;
        let echoed = loop {
            if let Some(s) = sub.receive().context("receive on pong")? {
                break sequence(s.payload());
            }
            stall.idle()?;
        };
        let rtt = t0.elapsed();
        stall.progress();
        ensure!(sent == 1, "ping {i} reached {sent} subscribers, not 1");
        ensure!(echoed == i, "round trip {i} got back message {echoed}");
        if i >= warmup {
            hist.saturating_record(rtt.as_nanos() as u64);
        }
    }
    let preempted = preemptions() - preempted_before;
    let out = proc.finish()?;
    Ok((hist, preempted + report_field(&out, "preempted")?))
}

/// Side B: opens both services, announces itself with one message on
/// `pong`, then echoes `count` messages of `ping` onto `pong`.
pub(crate) fn echo(args: &ChildArgs) -> Result<()> {
    let [ping, pong] = args.streams.as_slice() else {
        anyhow::bail!("iceoryx2 echo needs two --stream names");
    };
    let size = args.size;
    let node = node()?;
    let ping = service(&node, ping, false)?;
    let pong = service(&node, pong, false)?;
    // Subscribe before announcing, so A's first ping finds us.
    let sub = ping.subscriber_builder().create().context("create ping subscriber")?;
    let publ = publisher(&pong, size)?;
    let ready = vec![0u8; size];
    let sent = publ
        .loan_slice_uninit(size)
        .context("loan on pong")?
        .write_from_slice(&ready)
        .send()
        .context("send on pong")?;
    ensure!(sent == 1, "ready message reached {sent} subscribers, not 1");
    let mut stall = Stall::new(STALL_TIMEOUT, args.spin_hint);
    for i in 0..args.count {
        let loan = publ.loan_slice_uninit(size).context("loan on pong")?;
        let msg = loop {
            if let Some(s) = sub.receive().context("receive on ping")? {
                break s;
            }
            stall.idle()?;
        };
        stall.progress();
        ensure!(
            msg.payload().len() == size,
            "ping {i} has {} bytes, not {size}",
            msg.payload().len()
        );
        let sent = loan.write_from_slice(msg.payload()).send().context("send on pong")?;
        ensure!(sent == 1, "echo {i} reached {sent} subscribers, not 1");
    }
    Ok(())
}

/// A node of this process with iceoryx2's default settings (whatever
/// config file the host has: runs compare across machines), without
/// iceoryx2's signal handlers.
fn node() -> Result<Node<ipc::Service>> {
    NodeBuilder::new()
        .config(&Config::default())
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .context("create iceoryx2 node")
}

/// The service `name`, created (side A) or opened (side B) with the same
/// settings, so that opening checks them.
fn service(node: &Node<ipc::Service>, name: &str, create: bool) -> Result<PubSub> {
    let service_name = ServiceName::new(name).with_context(|| format!("service name {name}"))?;
    let builder = node
        .service_builder(&service_name)
        .publish_subscribe::<[u8]>()
        .max_publishers(1)
        .max_subscribers(1)
        .history_size(0)
        .subscriber_max_buffer_size(1)
        .enable_safe_overflow(true);
    if create {
        builder.create().with_context(|| format!("create service {name}"))
    } else {
        builder.open().with_context(|| format!("open service {name}"))
    }
}

/// The service's one publisher, for payloads of `size` bytes.
fn publisher(service: &PubSub, size: usize) -> Result<Pub> {
    service
        .publisher_builder()
        .initial_max_slice_len(size)
        .create()
        .context("create publisher")
}
