//! `rill-bench persist`: what persisting a stream costs, beside the limits
//! of the disk underneath, measured in the same run on the same directory.
//!
//! 1. Raw limits of the directory's filesystem. Sequential write
//!    throughput: O_DIRECT, 64 KiB writes, 32 in flight with io_uring, to
//!    a preallocated file (`--raw-bytes` in all), then one `fdatasync` (see
//!    `uring_write`). Sync latency: a 4 KiB `pwrite` then `fdatasync`,
//!    `--syncs` times, appending to a file as the archiver appends its
//!    batches; and, for reference, overwriting one block, which needs no
//!    journal commit on most filesystems.
//! 2. Archiving throughput, durability `none`: one publisher process (the
//!    `throughput` publisher, the stream's exclusive one) offers `--size`
//!    messages flat out (`--seconds` in all) into a persisted stream of the
//!    rilld started here with `--data-dir` in the directory; when
//!    back-pressured (most of the time: the disk is slower than the ring) it
//!    yields the CPU rather than spin, since rilld's writes need CPU too (on
//!    this 2-core machine a spinning publisher cost about a tenth of the
//!    rate: 0.69-0.70x of the raw write against 0.80-0.86x, runs
//!    alternated). The rate is
//!    the growth of the stream's bytes on disk (`StreamInfo::disk_bytes`,
//!    which moves as the archiver's writes complete), sampled by this
//!    process after the first fifth of a round's time and again 70% of it
//!    later.
//!    With buffered I/O (`--buffered-io`, or a filesystem without direct
//!    I/O) a write completes in the page cache, and the disk bounds that
//!    rate only through the kernel's dirty-page limits. So a second rate
//!    is reported:
//!    all the stream's bytes over the time from its first message to the
//!    end of an `fdatasync` of its files once the publisher has stopped
//!    and the archiver has caught up.
//! 3. Durable acknowledgement latency, durability `always`: `--publishers`
//!    processes (shared publications on one stream, spread over the cores)
//!    each offer a `--ack-size` message, then wait until it is durable
//!    (`Publisher::wait_durable`), back to back (one message outstanding
//!    per publisher), started together once all have opened (`--seconds` in all). Each
//!    records offer-to-durable times after its first tenth in an
//!    HdrHistogram and prints it as `value:count` pairs, which this
//!    process merges. The archiver covers everything waiting with one
//!    `fdatasync` (group commit): the p50 is compared with the raw one.
//! 4. The publisher's own cost: one process offers `--offer-size` messages
//!    alternately into a persisted stream (`always`) and a plain one of the
//!    same shape, paced (`--offers` into each over `--seconds`, far below
//!    the disk's rate, so that neither is back-pressured), and times each
//!    `offer` alone (one clock read included). This process reads the
//!    plain stream the way the archiver reads the persisted one (all that
//!    is there, then a 20 us sleep when idle), so each ring has one reader.
//!
//! Measurements 1 to 3 run in `--rounds` rounds, each a share of the
//! bytes, syncs and time: the raw write, then archiving, then half the
//! raw syncs, the durable acks, and the other half of the syncs. Each
//! limit is thus measured right beside what is compared with it, and a
//! change in the machine (or in the disk behind a virtual one, whose
//! flush times can jump twentyfold for seconds) affects both alike. Rates are total bytes over total time; histograms
//! are merged.
//!
//! The directory: a fresh one under `--dir`, by default under rilld's
//! default data directory /var/lib/rill if writable, else /var/tmp;
//! removed afterwards. tmpfs is refused: it would measure memory.

use crate::child::{report_field, ChildArgs, ChildProc, Role, Stall};
use crate::daemon::{stream_name, Daemon};
use crate::pingpong::{offer, parse_size, sequence, Poll};
use crate::report::latency_histogram;
use crate::uring_write;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use hdrhistogram::Histogram;
use nix::fcntl::{fallocate, FallocateFlags, OFlag};
use rill::{ClaimError, Durability};
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// rilld's default data directory, whose filesystem the default run
/// measures.
const DEFAULT_DATA_DIR: &str = "/var/lib/rill";
/// Where the run goes when [`DEFAULT_DATA_DIR`] is not writable: a disk
/// on most systems (unlike /tmp).
const FALLBACK_DIR: &str = "/var/tmp";
/// Raw write block and queue depth.
const RAW_BLOCK: usize = 64 << 10;
const RAW_DEPTH: usize = 32;
/// Bytes of each raw synced write.
const SYNC_BLOCK: usize = 4096;
/// Longest wait for one message to become durable.
const DURABLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait without progress anywhere else.
const STALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The plain stream's reader sleeps this long when it finds nothing (the
/// archiver's idle wait).
const READER_IDLE: Duration = Duration::from_micros(20);
/// Sequence number of the message that ends the offer measurement.
const STOP: u64 = u64::MAX;

/// Arguments of `rill-bench persist`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PersistArgs {
    /// Directory to measure in: a fresh directory is made in it and removed
    /// afterwards (default: in /var/lib/rill if writable, else /var/tmp;
    /// never tmpfs).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bytes the raw write test writes, in total over all rounds (`1GiB`,
    /// `256MiB`; a file of an equal share, a multiple of 64 KiB, per round).
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    raw_bytes: u64,
    /// Synced 4 KiB writes per raw sync measurement (append, overwrite), in
    /// total over all rounds.
    #[arg(long, default_value_t = 1000)]
    syncs: u64,
    /// Payload size of the archiving publisher.
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    size: u32,
    /// How long each of the archiving, durable-ack and offer measurements
    /// publishes (the first two in total over all rounds).
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds: the raw write and archiving, then the raw syncs around the
    /// durable acks, each measured once per round on an equal share of
    /// `raw-bytes`, `syncs` and `seconds`.
    #[arg(long, default_value_t = 5)]
    rounds: u64,
    /// Publisher processes of the durable-ack measurement.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    publishers: u16,
    /// Payload size of the durable-ack publishers.
    #[arg(long, default_value = "4KiB", value_parser = parse_size)]
    ack_size: u32,
    /// Payload size of the offer-latency measurement.
    #[arg(long, default_value = "256", value_parser = parse_size)]
    offer_size: u32,
    /// Offers into each stream of the offer-latency measurement, spread
    /// evenly over `seconds`.
    #[arg(long, default_value_t = 100_000)]
    offers: u64,
    /// Ring capacity of every stream (a power of two).
    #[arg(long, default_value_t = 16 << 20)]
    capacity: u64,
    /// Start rilld with `--buffered-io`: segment files written through the
    /// page cache instead of with direct I/O.
    #[arg(long)]
    buffered_io: bool,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// `1GiB`, `256MiB`, `64KiB` or plain bytes.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size (bytes, or with KiB, MiB or GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        u => return Err(format!("unknown unit {u:?} in {s:?} (B, KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift).filter(|&b| b > 0).ok_or_else(|| format!("size {s:?} is zero or too large"))
}

/// Everything one run measured, summed over its rounds.
#[derive(Debug)]
struct Results {
    dir: PathBuf,
    fs: String,
    raw_write_bytes: u64,
    raw_write: Duration,
    sync_append: Histogram<u64>,
    sync_overwrite: Histogram<u64>,
    archive: Archive,
    ack: Histogram<u64>,
    ack_published: u64,
    offer_plain: Histogram<u64>,
    offer_persisted: Histogram<u64>,
    /// Offers refused for back-pressure: persisted, plain.
    offer_back_pressured: [u64; 2],
}

/// What archiving measurements found (summed over rounds).
#[derive(Debug, Default)]
struct Archive {
    /// Bytes written in the measured windows, and the windows' length.
    window_bytes: u64,
    window: Duration,
    /// All bytes on disk, and the time from the first message to the end
    /// of their sync.
    disk_bytes: u64,
    to_synced: Duration,
    published: u64,
    back_pressured: u64,
}

impl Archive {
    fn add(&mut self, o: &Archive) {
        self.window_bytes += o.window_bytes;
        self.window += o.window;
        self.disk_bytes += o.disk_bytes;
        self.to_synced += o.to_synced;
        self.published += o.published;
        self.back_pressured += o.back_pressured;
    }

    fn bytes_per_s(&self) -> f64 {
        self.window_bytes as f64 / self.window.as_secs_f64()
    }

    fn synced_bytes_per_s(&self) -> f64 {
        self.disk_bytes as f64 / self.to_synced.as_secs_f64()
    }
}

/// Runs `rill-bench persist`.
pub(crate) fn run(args: &PersistArgs) -> Result<()> {
    ensure!(args.seconds > 0.0, "--seconds must be positive");
    ensure!(args.syncs > 0 && args.offers > 0, "--syncs and --offers must be positive");
    ensure!(args.capacity.is_power_of_two(), "--capacity must be a power of two");
    ensure!(args.rounds > 0, "--rounds must be positive");
    let work = WorkDir::new(args.dir.as_deref())?;
    let fs = work.check_filesystem()?;
    eprintln!("persist: in {} ({fs})", work.path.display());
    let data = work.path.join("data");
    std::fs::create_dir(&data).with_context(|| format!("create {}", data.display()))?;
    let daemon = Daemon::for_run_in(None, None, Some(&data), if args.buffered_io { &["--buffered-io"] } else { &[] })?;
    let block = RAW_BLOCK as u64;
    let round = Round {
        raw_bytes: (args.raw_bytes / args.rounds / block).max(1) * block,
        syncs: args.syncs.div_ceil(args.rounds * 2),
        seconds: args.seconds / args.rounds as f64,
    };
    let mut r = Results {
        dir: work.path.clone(),
        fs,
        raw_write_bytes: 0,
        raw_write: Duration::ZERO,
        sync_append: latency_histogram(),
        sync_overwrite: latency_histogram(),
        archive: Archive::default(),
        ack: latency_histogram(),
        ack_published: 0,
        offer_plain: latency_histogram(),
        offer_persisted: latency_histogram(),
        offer_back_pressured: [0; 2],
    };
    // Each round measures every limit right before what is compared with
    // it (the syncs right before and after), so that a change in the
    // machine (or the disk behind it) during the run affects both alike.
    for n in 1..=args.rounds {
        eprintln!("persist: round {n}/{}: raw write, {} MiB", args.rounds, round.raw_bytes >> 20);
        r.raw_write += raw_write(&work.path, round.raw_bytes)?;
        r.raw_write_bytes += round.raw_bytes;
        eprintln!("persist: round {n}/{}: archiving (none), {:.2} s", args.rounds, round.seconds);
        r.archive.add(&archive(args, &round, &daemon, &data)?);
        eprintln!("persist: round {n}/{}: raw fdatasync, {} appends and overwrites", args.rounds, round.syncs);
        raw_syncs(&work.path, round.syncs, &mut r)?;
        eprintln!("persist: round {n}/{}: durable acks (always), {} publishers", args.rounds, args.publishers);
        let (h, published) = durable_ack(args, &round, &daemon, &work.path.join("go"))?;
        r.ack.add(h)?;
        r.ack_published += published;
        eprintln!("persist: round {n}/{}: raw fdatasync, {} appends and overwrites", args.rounds, round.syncs);
        raw_syncs(&work.path, round.syncs, &mut r)?;
    }
    eprintln!("persist: offer latency, {} offers of {} B per stream", args.offers, args.offer_size);
    (r.offer_persisted, r.offer_plain, r.offer_back_pressured) = offer_latency(args, &daemon)?;
    // The daemon stops writing before its directory goes.
    drop(daemon);
    print(args, &r);
    Ok(())
}

/// What one round of the archiving, sync and ack measurements does.
#[derive(Debug)]
struct Round {
    raw_bytes: u64,
    /// Syncs of each kind before the acks, and again after them.
    syncs: u64,
    seconds: f64,
}

/// Both kinds of raw sync measurement, added to `r`.
fn raw_syncs(dir: &Path, count: u64, r: &mut Results) -> Result<()> {
    r.sync_append.add(raw_fdatasync(dir, count, true)?)?;
    r.sync_overwrite.add(raw_fdatasync(dir, count, false)?)?;
    Ok(())
}

/// The run's directory; removed (with everything in it) on drop.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    /// A fresh directory under `parent`, else under [`DEFAULT_DATA_DIR`]
    /// or [`FALLBACK_DIR`].
    fn new(parent: Option<&Path>) -> Result<Self> {
        let pid = std::process::id();
        let fresh = |p: PathBuf| std::fs::create_dir(&p).map(|()| WorkDir { path: p.clone() });
        let own = format!("rill-bench-persist-{pid}");
        match parent {
            Some(parent) => fresh(parent.join(&own)).with_context(|| format!("create a directory in {}", parent.display())),
            None => fresh(Path::new(DEFAULT_DATA_DIR).join(format!("bench-{pid}")))
                .or_else(|_| fresh(Path::new(FALLBACK_DIR).join(&own)))
                .with_context(|| format!("create a directory in {DEFAULT_DATA_DIR} or {FALLBACK_DIR} (or pass --dir)")),
        }
    }

    /// The filesystem's name; an error for tmpfs.
    fn check_filesystem(&self) -> Result<String> {
        use nix::sys::statfs::{statfs, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC};
        let kind = statfs(&self.path).with_context(|| format!("statfs {}", self.path.display()))?.filesystem_type();
        if kind == TMPFS_MAGIC {
            bail!("{} is on tmpfs, which would measure memory: pass --dir on a disk", self.path.display());
        }
        let known = [(EXT4_SUPER_MAGIC, "ext2/3/4"), (XFS_SUPER_MAGIC, "xfs"), (BTRFS_SUPER_MAGIC, "btrfs")];
        Ok(known.iter().find(|(m, _)| *m == kind).map_or_else(|| format!("filesystem {kind:?}"), |(_, n)| (*n).to_owned()))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("persist: could not remove {}: {e}", self.path.display());
        }
    }
}

/// Time to write `bytes` sequentially with O_DIRECT into a preallocated
/// file, and sync it (the file is removed afterwards).
fn raw_write(dir: &Path, bytes: u64) -> Result<Duration> {
    let path = dir.join("raw-write");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(OFlag::O_DIRECT.bits())
        .open(&path)
        .with_context(|| format!("create {} with O_DIRECT", path.display()))?;
    let len = nix::libc::off_t::try_from(bytes).context("--raw-bytes")?;
    if let Err(e) = fallocate(file.as_raw_fd(), FallocateFlags::empty(), 0, len) {
        // Writes into holes allocate as they go: slower, still no extending.
        eprintln!("persist: note: fallocate failed ({e}); the raw write file is sparse");
        file.set_len(bytes).context("size the raw write file")?;
    }
    file.sync_all().context("sync the raw write file's allocation")?;
    let took = uring_write::sequential_write(&file, bytes, RAW_BLOCK, RAW_DEPTH);
    drop(file);
    let _ = std::fs::remove_file(&path);
    took
}

/// Latency of a 4 KiB `pwrite` followed by `fdatasync`, appending to a
/// new file (`append`) or overwriting its first block; the first tenth is
/// not recorded.
fn raw_fdatasync(dir: &Path, count: u64, append: bool) -> Result<Histogram<u64>> {
    let path = dir.join(if append { "raw-sync-append" } else { "raw-sync-overwrite" });
    let file = OpenOptions::new().write(true).create_new(true).open(&path).with_context(|| format!("create {}", path.display()))?;
    let mut block = vec![0xa5u8; SYNC_BLOCK];
    if !append {
        file.write_all_at(&block, 0)?;
        file.sync_all()?;
    }
    let warmup = count / 10;
    let mut h = latency_histogram();
    for i in 0..warmup + count {
        block[..8].copy_from_slice(&i.to_le_bytes());
        let at = if append { i * SYNC_BLOCK as u64 } else { 0 };
        let t = Instant::now();
        file.write_all_at(&block, at).context("pwrite")?;
        file.sync_data().context("fdatasync")?;
        let ns = t.elapsed().as_nanos() as u64;
        if i >= warmup {
            h.record(ns.max(1))?;
        }
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(h)
}

/// The shape of every stream here: back-pressure (required to persist),
/// `capacity`, payloads up to `size` (at least 64).
fn stream_options(args: &PersistArgs, size: u32, persist: Option<Durability>) -> rill::StreamOptions {
    rill::StreamOptions::new()
        .with_capacity(args.capacity)
        .with_max_message_len(size.max(64))
        .with_policy(rill::Policy::BackPressure)
        .with_persist(persist)
}

/// A child on `core` for `stream`s of `daemon`.
fn child_args(role: Role, daemon: &Daemon, streams: Vec<String>, core: usize, size: u32, seconds: f64) -> ChildArgs {
    ChildArgs {
        role,
        rings: Vec::new(),
        socket: Some(daemon.socket().to_path_buf()),
        streams,
        core,
        count: 0,
        size: size as usize,
        timestamps: false,
        seconds,
        batch: 0,
        poll_limit: 1,
        spin_hint: true,
        publishers: 1,
        publisher_index: 0,
        peers: Vec::new(),
    }
}

/// The cores this process may run on.
fn cores() -> Result<Vec<usize>> {
    let ids = core_affinity::get_core_ids().context("list cores")?;
    ensure!(!ids.is_empty(), "no core to run on");
    Ok(ids.into_iter().map(|c| c.id).collect())
}

/// `stream`'s info; an error if its archiving stopped.
fn info(client: &rill::Client, stream: &str) -> Result<rill::StreamInfo> {
    let i = client.stream_info(stream).with_context(|| format!("stream info of {stream}"))?;
    if let Some(e) = &i.archive_error {
        bail!("archiving {stream} stopped: {e}");
    }
    Ok(i)
}

/// Sleeps until `t` (at once if past).
fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// Measurement 2 (see the module docs).
fn archive(args: &PersistArgs, round: &Round, daemon: &Daemon, data: &Path) -> Result<Archive> {
    let client = rill::Client::connect_to(daemon.socket()).context("connect to rilld")?;
    let stream = stream_name("archive");
    client
        .create_stream(&stream, stream_options(args, args.size, Some(Durability::None)))
        .context("create the archived stream")?;
    let core = *cores()?.last().expect("not empty");
    let mut child = ChildProc::spawn(&child_args(Role::RillYieldingPublisher, daemon, vec![stream.clone()], core, args.size, round.seconds))?;
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    while info(&client, &stream)?.tail == 0 {
        child.check_alive().context("waiting for the publisher")?;
        std::thread::sleep(Duration::from_millis(1));
        stall.waited().context("waiting for the publisher")?;
    }
    let first = Instant::now();
    let (warmup, window) = (Duration::from_secs_f64(round.seconds * 0.2), Duration::from_secs_f64(round.seconds * 0.7));
    sleep_until(first + warmup);
    let (t0, b0) = (Instant::now(), info(&client, &stream)?.disk_bytes);
    sleep_until(first + warmup + window);
    let (t1, b1) = (Instant::now(), info(&client, &stream)?.disk_bytes);
    let out = child.finish()?;
    // The archiver catches up with the ring; then everything is synced.
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    loop {
        let i = info(&client, &stream)?;
        if i.durable_position >= i.tail {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
        stall.waited().context("waiting for the archiver to catch up")?;
    }
    let dir = data.join(&stream);
    for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            File::open(&path).and_then(|f| f.sync_data()).with_context(|| format!("fdatasync {}", path.display()))?;
        }
    }
    let synced = Instant::now();
    let disk_bytes = info(&client, &stream)?.disk_bytes;
    ensure!(b1 > b0, "nothing reached the disk in {window:?} ({b0} bytes before and after)");
    Ok(Archive {
        window_bytes: b1 - b0,
        window: t1 - t0,
        disk_bytes,
        to_synced: synced - first,
        published: report_field(&out, "published")?,
        back_pressured: report_field(&out, "back_pressured")?,
    })
}

/// Measurement 3 (see the module docs): the merged histogram, and how many
/// messages the publishers made durable in all.
/// The publishers start together when the file `go` appears, which this
/// process creates once the daemon counts all of them.
fn durable_ack(args: &PersistArgs, round: &Round, daemon: &Daemon, go: &Path) -> Result<(Histogram<u64>, u64)> {
    let client = rill::Client::connect_to(daemon.socket()).context("connect to rilld")?;
    let stream = stream_name("ack");
    client
        .create_stream(&stream, stream_options(args, args.ack_size, Some(Durability::Always)))
        .context("create the acknowledged stream")?;
    let cores = cores()?;
    let _ = std::fs::remove_file(go);
    let base = ChildArgs {
        publishers: args.publishers,
        peers: vec![go.to_str().context("the directory's path is not UTF-8")?.to_owned()],
        ..child_args(Role::RillDurablePublisher, daemon, vec![stream.clone()], 0, args.ack_size, round.seconds)
    };
    let mut children = (0..args.publishers)
        .map(|i| ChildProc::spawn(&ChildArgs { publisher_index: i, core: cores[usize::from(i) % cores.len()], ..base.clone() }))
        .collect::<Result<Vec<_>>>()?;
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    while info(&client, &stream)?.publishers < u32::from(args.publishers) {
        for c in &mut children {
            c.check_alive().context("waiting for the durable-ack publishers")?;
        }
        std::thread::sleep(Duration::from_millis(1));
        stall.waited().context("waiting for the durable-ack publishers")?;
    }
    File::create(go).with_context(|| format!("create {}", go.display()))?;
    let (mut h, mut published) = (latency_histogram(), 0);
    for (i, c) in children.into_iter().enumerate() {
        let out = c.finish().with_context(|| format!("durable-ack publisher {i}"))?;
        merge_histogram(&mut h, &out, "durable_ack")?;
        published += report_field(&out, "published")?;
    }
    let _ = std::fs::remove_file(go);
    info(&client, &stream)?;
    ensure!(!h.is_empty(), "no durable acknowledgement recorded");
    Ok((h, published))
}

/// Measurement 4 (see the module docs): offer times into the persisted
/// and the plain stream, and how often each back-pressured.
fn offer_latency(args: &PersistArgs, daemon: &Daemon) -> Result<(Histogram<u64>, Histogram<u64>, [u64; 2])> {
    let client = rill::Client::connect_to(daemon.socket()).context("connect to rilld")?;
    let (persisted, plain) = (stream_name("offer-persisted"), stream_name("offer-plain"));
    client
        .create_stream(&persisted, stream_options(args, args.offer_size, Some(Durability::Always)))
        .context("create the persisted stream")?;
    let mut reader = client
        .subscriber_with(&plain, rill::Start::Latest, stream_options(args, args.offer_size, None))
        .context("open the plain stream")?;
    let core = *cores()?.last().expect("not empty");
    let streams = vec![persisted.clone(), plain];
    let mut child = ChildProc::spawn(&ChildArgs {
        count: args.offers,
        ..child_args(Role::RillOfferLatency, daemon, streams, core, args.offer_size, args.seconds)
    })?;
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    let mut stopped = false;
    let read = |r: &mut rill::Subscriber, stopped: &mut bool| r.poll_msgs(4096, |m| *stopped |= sequence(m.payload) == STOP);
    loop {
        if read(&mut reader, &mut stopped)? > 0 {
            stall.progress();
            continue;
        }
        if stopped {
            break;
        }
        if let Err(e) = child.check_alive() {
            // It may have sent the stop message since the last poll.
            read(&mut reader, &mut stopped)?;
            if stopped {
                break;
            }
            return Err(e);
        }
        std::thread::sleep(READER_IDLE);
        stall.waited().context("reading the plain stream")?;
    }
    let out = child.finish()?;
    info(&client, &persisted)?;
    let (mut hp, mut hq) = (latency_histogram(), latency_histogram());
    merge_histogram(&mut hp, &out, "offer_persisted")?;
    merge_histogram(&mut hq, &out, "offer_plain")?;
    ensure!(!hp.is_empty() && !hq.is_empty(), "no offer recorded: {out}");
    let bp = [report_field(&out, "back_pressured_persisted")?, report_field(&out, "back_pressured_plain")?];
    Ok((hp, hq, bp))
}

/// One line: `name` then `value:count` for every recorded value of `h`
/// (each value is its bucket's highest equivalent, so recording it into a
/// histogram of the same precision lands in the same bucket).
fn histogram_line(name: &str, h: &Histogram<u64>) -> String {
    use std::fmt::Write as _;
    let mut s = name.to_owned();
    for v in h.iter_recorded() {
        let _ = write!(s, " {}:{}", v.value_iterated_to(), v.count_at_value());
    }
    s
}

/// Adds the histogram on the line of `out` that starts with `name` (see
/// [`histogram_line`]) to `h`.
fn merge_histogram(h: &mut Histogram<u64>, out: &str, name: &str) -> Result<()> {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("child report {out:?} lacks {name}"))?;
    for pair in line.split_whitespace().skip(1) {
        let (v, c) = pair
            .split_once(':')
            .and_then(|(v, c)| Some((v.parse::<u64>().ok()?, c.parse::<u64>().ok()?)))
            .with_context(|| format!("bad histogram entry {pair:?} in {name}"))?;
        h.record_n(v, c).with_context(|| format!("{name} value {v}"))?;
    }
    Ok(())
}

/// The durable-ack publisher process: once the go file (`--peer`)
/// exists, offers and waits for durability back to back for `seconds`; prints
/// its histogram (after the first tenth) and `published N`.
pub(crate) fn durable_publish(args: &ChildArgs) -> Result<()> {
    let socket = args.socket.as_deref().context("durable publisher needs --socket")?;
    let [stream] = args.streams.as_slice() else {
        bail!("durable publisher needs one --stream name");
    };
    let client = rill::Client::connect_to(socket).context("connect to rilld")?;
    let mut publ = client.open_publisher(stream, None).context("open publisher")?;
    let [go] = args.peers.as_slice() else {
        bail!("durable publisher needs the go file as --peer");
    };
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    // All start together, so every recorded message had company.
    while !Path::new(go).exists() {
        std::thread::sleep(Duration::from_millis(1));
        stall.waited().context("waiting for the go file")?;
    }
    let mut payload = vec![0u8; args.size];
    let start = Instant::now();
    let (warm, end) = (start + Duration::from_secs_f64(args.seconds / 10.0), start + Duration::from_secs_f64(args.seconds));
    let mut h = latency_histogram();
    let mut n = 0u64;
    loop {
        let t0 = Instant::now();
        if t0 >= end {
            break;
        }
        payload[..8].copy_from_slice(&n.to_le_bytes());
        let position = offer(&mut publ, &payload, &mut stall)?;
        publ.wait_durable(position, DURABLE_TIMEOUT)?;
        let ns = t0.elapsed().as_nanos() as u64;
        stall.progress();
        if t0 >= warm {
            h.record(ns.max(1))?;
        }
        n += 1;
    }
    println!("{}", histogram_line("durable_ack", &h));
    println!("published {n}");
    Ok(())
}

/// The offer-latency process: `count` offers into each of the persisted
/// (first) and the plain stream, alternating which goes first, paced over
/// `seconds`; then the stop message on the plain stream. Prints both
/// histograms (after the first tenth) and the back-pressure counts.
pub(crate) fn offer_latency_child(args: &ChildArgs) -> Result<()> {
    let socket = args.socket.as_deref().context("offer latency needs --socket")?;
    let [persisted, plain] = args.streams.as_slice() else {
        bail!("offer latency needs two --stream names: persisted, plain");
    };
    let client = rill::Client::connect_to(socket).context("connect to rilld")?;
    let mut publs = [
        client.open_exclusive_publisher(persisted, None).context("open the persisted stream")?,
        client.open_exclusive_publisher(plain, None).context("open the plain stream")?,
    ];
    let mut hists = [latency_histogram(), latency_histogram()];
    let mut back_pressured = [0u64; 2];
    let mut payload = vec![0u8; args.size];
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    let interval = Duration::from_secs_f64(args.seconds / args.count.max(1) as f64);
    let start = Instant::now() + Duration::from_millis(1);
    let warmup = args.count / 10;
    for i in 0..args.count {
        let due = start + interval.mul_f64(i as f64);
        while Instant::now() < due {
            std::hint::spin_loop();
        }
        payload[..8].copy_from_slice(&i.to_le_bytes());
        let order = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for k in order {
            let t = Instant::now();
            let r = publs[k].offer(&payload);
            let ns = t.elapsed().as_nanos() as u64;
            match r {
                Ok(_) if i >= warmup => hists[k].record(ns.max(1))?,
                Ok(_) => {}
                Err(ClaimError::BackPressured) => {
                    back_pressured[k] += 1;
                    offer(&mut publs[k], &payload, &mut stall)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    payload[..8].copy_from_slice(&STOP.to_le_bytes());
    offer(&mut publs[1], &payload, &mut stall)?;
    println!("{}", histogram_line("offer_persisted", &hists[0]));
    println!("{}", histogram_line("offer_plain", &hists[1]));
    println!("back_pressured_persisted {} back_pressured_plain {}", back_pressured[0], back_pressured[1]);
    Ok(())
}

/// `ns` for people: ns, us or ms with three significant digits.
fn duration_name(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.3} us", ns as f64 / 1e3),
        _ => format!("{:.3} ms", ns as f64 / 1e6),
    }
}

/// A string as a JSON string (quotes, backslashes and control characters
/// escaped).
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The figures both outputs derive from [`Results`].
#[derive(Debug, Clone, Copy)]
struct Derived {
    raw_write: f64,
    archive: f64,
    synced: f64,
    ack_vs_sync: f64,
    offer_p50_ratio: f64,
    offer_p99_ratio: f64,
}

fn print(args: &PersistArgs, r: &Results) {
    let p = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    let offer_ratio = |q: f64| p(&r.offer_persisted, q) as f64 / p(&r.offer_plain, q).max(1) as f64;
    let d = Derived {
        raw_write: r.raw_write_bytes as f64 / r.raw_write.as_secs_f64(),
        archive: r.archive.bytes_per_s(),
        synced: r.archive.synced_bytes_per_s(),
        ack_vs_sync: p(&r.ack, 0.5) as f64 / p(&r.sync_append, 0.5).max(1) as f64,
        offer_p50_ratio: offer_ratio(0.5),
        offer_p99_ratio: offer_ratio(0.99),
    };
    if args.json {
        print_json(args, r, d);
    } else {
        print_table(args, r, d);
    }
}

/// One JSON object: sizes in bytes, rates in bytes/s, times in ns.
fn print_json(args: &PersistArgs, r: &Results, d: Derived) {
    let p = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    let Derived { raw_write, archive, synced, ack_vs_sync, .. } = d;
    println!(
        "{{\"bench\":\"persist\",\"dir\":{},\"fs\":{},\"rounds\":{},\
         \"raw_write_bytes\":{},\"raw_write_block\":{RAW_BLOCK},\"raw_write_depth\":{RAW_DEPTH},\"raw_write_bytes_per_s\":{raw_write:.0},\
         \"raw_fdatasync_count\":{},\"raw_fdatasync_p50_ns\":{},\"raw_fdatasync_p99_ns\":{},\
         \"raw_fdatasync_overwrite_p50_ns\":{},\"raw_fdatasync_overwrite_p99_ns\":{},\
         \"archive_size\":{},\"archive_bytes_per_s\":{archive:.0},\"archive_vs_raw_write\":{:.3},\
         \"archive_synced_bytes_per_s\":{synced:.0},\"archive_synced_vs_raw_write\":{:.3},\"archive_disk_bytes\":{},\
         \"archive_published\":{},\"archive_back_pressured\":{},\
         \"durable_ack_publishers\":{},\"durable_ack_size\":{},\"durable_ack_count\":{},\"durable_ack_published\":{},\
         \"durable_ack_p50_ns\":{},\"durable_ack_p90_ns\":{},\"durable_ack_p99_ns\":{},\"durable_ack_max_ns\":{},\
         \"durable_ack_p50_vs_raw_fdatasync\":{ack_vs_sync:.3},\
         \"offer_size\":{},\"offer_count\":{},\"offer_plain_p50_ns\":{},\"offer_plain_p99_ns\":{},\
         \"offer_persisted_p50_ns\":{},\"offer_persisted_p99_ns\":{},\
         \"offer_p50_persisted_vs_plain\":{:.3},\"offer_p99_persisted_vs_plain\":{:.3},\
         \"offer_persisted_back_pressured\":{},\"offer_plain_back_pressured\":{}}}",
        json_string(&r.dir.display().to_string()),
        json_string(&r.fs),
        args.rounds,
        r.raw_write_bytes,
        r.sync_append.len(),
        p(&r.sync_append, 0.5),
        p(&r.sync_append, 0.99),
        p(&r.sync_overwrite, 0.5),
        p(&r.sync_overwrite, 0.99),
        args.size,
        archive / raw_write,
        synced / raw_write,
        r.archive.disk_bytes,
        r.archive.published,
        r.archive.back_pressured,
        args.publishers,
        args.ack_size,
        r.ack.len(),
        r.ack_published,
        p(&r.ack, 0.5),
        p(&r.ack, 0.9),
        p(&r.ack, 0.99),
        r.ack.max(),
        args.offer_size,
        r.offer_plain.len(),
        p(&r.offer_plain, 0.5),
        p(&r.offer_plain, 0.99),
        p(&r.offer_persisted, 0.5),
        p(&r.offer_persisted, 0.99),
        d.offer_p50_ratio,
        d.offer_p99_ratio,
        r.offer_back_pressured[0],
        r.offer_back_pressured[1],
    );
}

/// The readable table, each line beside its baseline from the same run.
fn print_table(args: &PersistArgs, r: &Results, d: Derived) {
    let Derived { raw_write, archive, synced, ack_vs_sync, .. } = d;
    let mib = |b: f64| format!("{:.1} MiB/s", b / f64::from(1u32 << 20));
    let pcts = |h: &Histogram<u64>| {
        let p = |q: f64| duration_name(h.value_at_quantile(q));
        format!("p50 {:>10}  p99 {:>10}", p(0.5), p(0.99))
    };
    let size = |b: u32| crate::report::size_name(b as usize);
    println!("persist: {} ({}), {} rounds", r.dir.display(), r.fs, args.rounds);
    let raw_name = format!("raw write, O_DIRECT {} x {RAW_DEPTH} in flight, {} MiB", size(RAW_BLOCK as u32), r.raw_write_bytes >> 20);
    println!("{raw_name:<54} {}", mib(raw_write));
    println!("{:<54} {:<27}  {:.2}x raw write", format!("archive, none, {} messages", size(args.size)), mib(archive), archive / raw_write);
    println!("{:<54} {:<27}  {:.2}x raw write", "  first message to the end of an fdatasync", mib(synced), synced / raw_write);
    println!("{:<54} {}", format!("raw fdatasync after a 4 KiB append ({})", r.sync_append.len()), pcts(&r.sync_append));
    println!("{:<54} {}", format!("raw fdatasync after a 4 KiB overwrite ({})", r.sync_overwrite.len()), pcts(&r.sync_overwrite));
    let ack_name = format!("durable ack, always, {} publishers, {} ({})", args.publishers, size(args.ack_size), r.ack.len());
    println!("{ack_name:<54} {}  p50 {ack_vs_sync:.2}x raw fdatasync (append)", pcts(&r.ack));
    println!("{:<54} {}", format!("offer {}, plain stream ({})", size(args.offer_size), r.offer_plain.len()), pcts(&r.offer_plain));
    println!(
        "{:<54} {}  p50 {:.2}x, p99 {:.2}x plain",
        format!("offer {}, persisted, always ({})", size(args.offer_size), r.offer_persisted.len()),
        pcts(&r.offer_persisted),
        d.offer_p50_ratio,
        d.offer_p99_ratio
    );
    println!(
        "(archive publisher: {} messages, {} offers back-pressured; offer latency back-pressured: persisted {}, plain {})",
        r.archive.published, r.archive.back_pressured, r.offer_back_pressured[0], r.offer_back_pressured[1]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("64k"), Ok(64 << 10));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("1TiB").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn histograms_survive_the_child_report_exactly() {
        let mut h = latency_histogram();
        for v in [1, 7, 999, 1_000, 1_001, 123_456, 9_876_543, 5_000_000_000] {
            h.record_n(v, v % 5 + 1).unwrap();
        }
        let out = format!("published 3\n{}\npreempted 0\n", histogram_line("x", &h));
        let mut back = latency_histogram();
        merge_histogram(&mut back, &out, "x").unwrap();
        assert_eq!(back.len(), h.len());
        for q in [0.0, 0.25, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(back.value_at_quantile(q), h.value_at_quantile(q), "q {q}");
        }
        assert!(merge_histogram(&mut back, &out, "y").is_err());
        assert!(merge_histogram(&mut back, "x 5:z\n", "x").is_err());
    }

    #[test]
    fn json_strings_escape_what_json_requires() {
        assert_eq!(json_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
