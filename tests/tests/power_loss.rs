//! Power loss, end to end: rilld's data directory on `rill-powerfs` (an
//! in-memory FUSE filesystem that models a disk's volatile write cache:
//! only what was fsynced, and only names whose directory was fsynced,
//! survive a cut), publishers on streams of each durability, and then,
//! at a random moment, everything dies at once: rilld and every publisher
//! get SIGKILL, the filesystem loses power (`cut`, or on alternate rounds
//! `cut-torn <seed>`: a random prefix of each file's unsynced writes
//! survives, the last one possibly torn at a 512-byte boundary), and the
//! ring and page directories are wiped (a power cut wipes memory too).
//! rilld is started again on the same data directory, and every stream is
//! read back twice: from the segment files directly (rill-store, after
//! rilld recovered them) and through a subscriber from `Start::Earliest`.
//!
//! Checked after every cut, for every stream:
//! * every payload verifies, nothing appears twice, each publisher's
//!   messages are in order;
//! * `always` and `interval`: every message whose `wait_durable` returned
//!   (the publisher printed `DURABLE n=..`) is on disk; each publisher's
//!   messages on disk are 0, 1, 2, ... with no hole; what was on disk
//!   after one recovery is on disk after every later one; the segment
//!   files chain without a gap or damage; the subscriber reads exactly
//!   what the files hold;
//! * `none` promises nothing durable: its losses and the damage the cut
//!   left in its log are reported, not failed; but a subscriber from
//!   `Earliest` must read exactly what its files still hold, told of the
//!   rest as lost, like the others.
//!
//! Rounds continue the same streams (each round's publishers have new
//! publisher indices, so each sequence starts at 0), so recovery of logs
//! that were recovered before is exercised too. Each round prints one
//! line (how many messages were acknowledged, found, and lost past the
//! last acknowledgement); the end prints a summary.
//!
//! `cargo test --release -p rill-tests --test power_loss` as root (FUSE);
//! elsewhere it fails, unless `RILL_SKIP_ROOT_TESTS=1` (then it says
//! loudly that it skipped). It prints its seed; `RILL_STRESS_SEED`
//! replays one (the same cut points in the same order, not the same
//! timing).

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use rill_powerfs::process::PowerFs;
use rill_shm::frame::FrameKind;
use rill_store::{list_segments, scan_segment, FrameReader};
use rill_tests::daemon::Rilld;
use rill_tests::harness::{root_or_skip, stress_seed, TempRingDir, Worker};
use rill_tests::payload::{self, Prng};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
const MAX_LEN: usize = 2048;
/// Ring capacity of every stream.
const CAPACITY: u64 = 256 << 10;
/// Segments roll every MiB, so cuts land around rolls too.
const SEGMENT_BYTES: u64 = 1 << 20;
const ROUNDS: u32 = 20;
/// Publisher indices of round `r` start at `r * PER_ROUND`.
const PER_ROUND: u32 = 16;

/// A stream of the test and its publishers per round.
struct Spec {
    name: &'static str,
    durability: &'static str,
    publishers: u32,
    /// Its publishers wait for durability after this many messages (0:
    /// never). An `interval` wait takes up to the interval, so those
    /// publishers wait less often, or their stream would never roll.
    wait_durable_every: u64,
}

impl Spec {
    /// Whether its publishers wait for durability (and so may lose
    /// nothing they were told is durable).
    fn acks(&self) -> bool {
        self.wait_durable_every > 0
    }
}

const STREAMS: [Spec; 3] = [
    Spec { name: "power.always", durability: "always", publishers: 2, wait_durable_every: 4 },
    Spec { name: "power.interval", durability: "interval:5", publishers: 2, wait_durable_every: 32 },
    Spec { name: "power.none", durability: "none", publishers: 1, wait_durable_every: 0 },
];

fn deadline() -> Instant {
    let secs = if cfg!(debug_assertions) { 1800 } else { 600 };
    Instant::now() + Duration::from_secs(secs)
}

/// At most a minute from now, and never past `deadline`.
fn soon(deadline: Instant) -> Instant {
    deadline.min(Instant::now() + Duration::from_secs(60))
}

fn num(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// What one publisher process said before it was killed.
#[derive(Debug, Clone, Copy)]
struct Life {
    stream: usize,
    index: u32,
    /// Messages 0..acked were acknowledged durable.
    acked: u64,
    /// At least this many were offered.
    sent: u64,
}

/// One stream's log as its segment files hold it.
#[derive(Debug, Default)]
struct DiskLog {
    /// Every data frame: (position, publisher, sequence number).
    frames: Vec<(u64, u32, u64)>,
    segments: usize,
    /// Gaps between segments, damage, bad payloads.
    problems: Vec<String>,
}

/// Reads every segment of `dir` in memory: each one's valid batches
/// (rill-store's scan), checking that each segment starts where the last
/// one ended. Damage is listed, not an error.
fn read_disk(dir: &Path, seed: u64) -> Result<DiskLog> {
    let mut log = DiskLog::default();
    if !dir.exists() {
        log.problems.push(format!("{} does not exist", dir.display()));
        return Ok(log);
    }
    let mut expected = None;
    for (first, path) in list_segments(dir).with_context(|| format!("list {}", dir.display()))? {
        log.segments += 1;
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        if let Some(e) = expected.filter(|&e| e != first) {
            log.problems.push(format!("{name} starts at {first}, the segment before ends at {e}"));
        }
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let scan = scan_segment(&bytes, first);
        if let Some(d) = &scan.damage {
            log.problems.push(format!("{name} ({} bytes): {d}", bytes.len()));
        }
        let mut r = FrameReader::new(std::io::Cursor::new(&bytes[..scan.valid_len as usize]), first);
        while let Some(f) = r.next_frame().with_context(|| format!("{name}: a batch the scan found valid"))? {
            if f.header.kind != FrameKind::Data {
                continue;
            }
            match payload::verify(f.payload, seed, MAX_LEN) {
                Ok((publisher, seq)) => log.frames.push((f.header.position, publisher, seq)),
                Err(d) => log.problems.push(format!("{name}: damaged message at {}: {d}", f.header.position)),
            }
        }
        expected = Some(scan.end_position);
    }
    Ok(log)
}

/// One publisher's messages in a log.
#[derive(Debug, Default, Clone, Copy)]
struct Seqs {
    count: u64,
    /// One past the highest sequence number.
    end: u64,
    /// Messages not after the one before (a duplicate or out of order).
    disorder: u64,
    /// Sequence numbers skipped.
    holes: u64,
}

fn per_publisher(frames: &[(u64, u32, u64)]) -> BTreeMap<u32, Seqs> {
    let mut out: BTreeMap<u32, Seqs> = BTreeMap::new();
    for &(_, p, seq) in frames {
        let s = out.entry(p).or_default();
        if s.count > 0 && seq < s.end {
            s.disorder += 1;
        } else {
            s.holes += seq - s.end;
            s.end = seq + 1;
        }
        s.count += 1;
    }
    out
}

/// A test's rilld on powerfs and everything it needs.
struct Rig {
    seed: u64,
    // Dropped in this order: rilld (killed), the filesystem (unmounted),
    // then the directories.
    d: Rilld,
    fs: PowerFs,
    work: TempRingDir,
    _mnt: TempRingDir,
}

impl Rig {
    fn spawn_publisher(&self, round: u32, s: usize, k: u32) -> Result<(Worker, u32)> {
        let spec = &STREAMS[s];
        let index = round * PER_ROUND + s as u32 * 4 + k;
        let mut cmd = Command::new(WORKER);
        cmd.args(["publish", "--socket"]).arg(&self.d.socket);
        cmd.args(["--stream", spec.name, "--publisher", &index.to_string(), "--seed", &self.seed.to_string()]);
        cmd.args(["--capacity", &CAPACITY.to_string(), "--max-len", &MAX_LEN.to_string(), "--persist", spec.durability]);
        // Never stops by itself: it is killed. 16 messages, then 300 us.
        cmd.arg("--until-file").arg(self.work.join("never"));
        cmd.args(["--pause-every", "16", "--pause-us", "300", "--print-sent", "--stall-secs", "120"]);
        if spec.acks() {
            cmd.args(["--wait-durable", &spec.wait_durable_every.to_string(), "--durable-timeout-secs", "120"]);
        }
        cmd.env("NO_COLOR", "1");
        Ok((Worker::spawn_command(cmd, &format!("publisher {index} on {}", spec.name))?, index))
    }

    /// Reads `stream` from `Start::Earliest` with a `read-back` worker;
    /// its messages, or why that failed.
    fn read_back(&self, stream: &str, deadline: Instant) -> Result<Vec<(u64, u32, u64)>> {
        let out = self.work.join(&format!("{stream}.read-back"));
        let mut cmd = Command::new(WORKER);
        cmd.args(["read-back", "--socket"]).arg(&self.d.socket);
        cmd.args(["--stream", stream, "--seed", &self.seed.to_string(), "--stall-secs", "20", "--out"]).arg(&out);
        cmd.env("NO_COLOR", "1");
        let mut w = Worker::spawn_command(cmd, &format!("read-back of {stream}"))?;
        let summary = w.finish(deadline)?;
        let text = std::fs::read_to_string(&out).with_context(|| format!("read {}", out.display()))?;
        let mut frames = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match (f.first().map(|p| p.parse()), f.get(1).map(|p| p.parse()), f.get(2).map(|s| s.parse())) {
                (Some(Ok(pos)), Some(Ok(p)), Some(Ok(seq))) => frames.push((pos, p, seq)),
                _ => bail!("read-back of {stream}: bad line {line:?}; summary {summary:?}"),
            }
        }
        Ok(frames)
    }
}

/// Totals over the rounds, per stream.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    acked: u64,
    sent: u64,
    /// Messages of the round's publishers found after the cut.
    found: u64,
    /// Found past the last acknowledgement (acknowledging streams).
    past_ack: u64,
    /// Offered but not found (a lower bound: `sent` is one).
    lost: u64,
    /// Rounds whose log had problems after recovery (`none` only;
    /// elsewhere they fail the test).
    damaged_rounds: u64,
}

/// Checks one stream after a cut and recovery; returns violations and a
/// few words for the round's line.
fn check_stream(rig: &Rig, s: usize, lives: &[Life], known: &mut BTreeMap<u32, u64>, totals: &mut Totals, deadline: Instant) -> Result<(Vec<String>, String)> {
    let spec = &STREAMS[s];
    let disk = read_disk(&rig.fs.path().join(spec.name), rig.seed)?;
    let seqs = per_publisher(&disk.frames);
    let mut bad = Vec::new();
    for (p, q) in &seqs {
        if q.disorder > 0 {
            bad.push(format!("{}: publisher {p}: {} messages on disk duplicated or out of order", spec.name, q.disorder));
        }
        if spec.acks() && q.holes > 0 {
            bad.push(format!("{}: publisher {p}: {} sequence numbers missing between messages on disk ({} found, up to seq {})", spec.name, q.holes, q.count, q.end));
        }
    }
    if spec.acks() {
        for pr in &disk.problems {
            bad.push(format!("{}: after recovery: {pr}", spec.name));
        }
        for (p, &before) in known.iter() {
            let now = seqs.get(p).map_or(0, |q| q.count);
            if now != before {
                bad.push(format!("{}: publisher {p}: {before} messages on disk after an earlier recovery, {now} now", spec.name));
            }
        }
    } else if !disk.problems.is_empty() {
        totals.damaged_rounds += 1;
    }
    let mut words = Vec::new();
    for life in lives.iter().filter(|l| l.stream == s) {
        let found = seqs.get(&life.index).map_or(0, |q| q.count);
        if found < life.acked {
            bad.push(format!(
                "{}: publisher {}: {} messages acknowledged durable (wait_durable returned), {found} on disk: lost 0-based seqs {found}..{}",
                spec.name, life.index, life.acked, life.acked
            ));
        }
        totals.acked += life.acked;
        totals.sent += life.sent;
        totals.found += found;
        totals.past_ack += found.saturating_sub(life.acked);
        totals.lost += life.sent.saturating_sub(found);
        if spec.acks() {
            words.push(format!("p{} acked {} found {} (+{}) lost>={}", life.index, life.acked, found, found.saturating_sub(life.acked), life.sent.saturating_sub(found)));
            known.insert(life.index, found);
        } else {
            words.push(format!("p{} sent>={} found {}", life.index, life.sent, found));
        }
    }
    if !spec.acks() && !disk.problems.is_empty() {
        // Reported, not failed: `none` never syncs, so its log may have
        // holes after a cut. rilld must still replay what is left.
        words.push(format!("log damaged by the cut ({} problems, first: {})", disk.problems.len(), disk.problems[0]));
    }
    // A subscriber from Earliest must see exactly what the files hold
    // (being told of what the log lost, past it).
    match rig.read_back(spec.name, soon(deadline)) {
        Ok(read) if read == disk.frames => words.push(format!("a subscriber from Earliest read all {}", read.len())),
        Ok(read) => {
            let i = read.iter().zip(&disk.frames).position(|(a, b)| a != b).unwrap_or(read.len().min(disk.frames.len()));
            bad.push(format!(
                "{}: a subscriber from Earliest read {} messages, the segment files hold {}; first difference at #{i}: read {:?}, files {:?}",
                spec.name,
                read.len(),
                disk.frames.len(),
                read.get(i),
                disk.frames.get(i)
            ));
        }
        Err(e) => bad.push(format!("{}: reading it back from Earliest failed: {e:#}", spec.name)),
    }
    Ok((bad, format!("{} [{} segs] {}", spec.durability, disk.segments, words.join(", "))))
}

/// Starts this round's publishers and waits until each acknowledging one
/// was told something is durable and the others sent more than a ring
/// holds (so their archiving moved too).
fn run_publishers(rig: &Rig, round: u32, deadline: Instant) -> Result<Vec<(Worker, usize, u32)>> {
    let mut pubs = Vec::new();
    for (s, spec) in STREAMS.iter().enumerate() {
        for k in 0..spec.publishers {
            let (w, index) = rig.spawn_publisher(round, s, k)?;
            pubs.push((w, s, index));
        }
    }
    let ring_full = CAPACITY / rill_shm::frame::message_span(payload::MIN_LEN) as u64 + 1;
    for (w, s, _) in &mut pubs {
        if STREAMS[*s].acks() {
            w.wait_line_after(0, "a DURABLE line", soon(deadline), |l| l.starts_with("DURABLE "))?;
        } else {
            w.wait_line_after(0, "more SENT than the ring holds", soon(deadline), |l| l.starts_with("SENT ") && num(l, "n").is_some_and(|n| n >= ring_full))?;
        }
    }
    Ok(pubs)
}

/// Kills every publisher (rilld is dead already) and reads what each said.
fn kill_publishers(pubs: Vec<(Worker, usize, u32)>) -> Vec<Life> {
    let mut lives = Vec::new();
    for (mut w, stream, index) in pubs {
        w.kill();
        let _ = w.summary(); // reads every line up to the end of its output
        let last = |prefix: &str| w.lines().iter().filter(|l| l.starts_with(prefix)).filter_map(|l| num(l, "n")).max().unwrap_or(0);
        let acked = last("DURABLE ");
        lives.push(Life { stream, index, acked, sent: acked.max(last("SENT ")) });
    }
    lives
}

fn setup(name: &'static str, seed: u64, deadline: Instant) -> Result<Rig> {
    let mnt = TempRingDir::new_in(&std::env::temp_dir(), &format!("{name}-mnt"))?;
    let work = TempRingDir::in_dev_shm(&format!("{name}-work"))?;
    let bin = rill_powerfs::process::binary()?;
    let fs = PowerFs::start(&bin, mnt.path(), &work.join("powerfs.sock"), soon(deadline))?;
    let extra = ["--segment-bytes".to_owned(), SEGMENT_BYTES.to_string()];
    let d = Rilld::start_with_data_dir(name, &extra, Some(fs.path()), soon(deadline))?;
    Ok(Rig { seed, d, fs, work, _mnt: mnt })
}

#[test]
fn acknowledged_messages_survive_power_loss() -> Result<()> {
    let name = "power_loss";
    if !root_or_skip(name, "mounts a FUSE filesystem (rill-powerfs) for rilld's data directory")? {
        return Ok(());
    }
    let seed = stress_seed(name);
    let deadline = deadline();
    let t0 = Instant::now();
    let mut rng = Prng::new(seed);
    let mut rig = setup(name, seed, deadline)?;
    let mut known: Vec<BTreeMap<u32, u64>> = vec![BTreeMap::new(); STREAMS.len()];
    let mut totals = [Totals::default(); STREAMS.len()];
    for round in 0..ROUNDS {
        let pubs = run_publishers(&rig, round, deadline)?;
        std::thread::sleep(Duration::from_millis(rng.range(0, 400) as u64));
        // Power loss: rilld first (so no acknowledgement can follow), then
        // every publisher, then the disk's cache and the memory.
        rig.d.kill9();
        let lives = kill_publishers(pubs);
        let cut = if round % 2 == 0 { rig.fs.cut()? } else { rig.fs.cut_torn(rng.next_u64())? };
        rig.d.lose_ring_memory(soon(deadline))?;
        rig.d.spawn(soon(deadline))?;
        let mut violations = Vec::new();
        let cut_fields: Vec<&str> = cut.split(' ').filter(|w| !w.contains('=') || w.starts_with("seed=") || w.starts_with("dropped_") || w.starts_with("kept_") || w.starts_with("torn_")).collect();
        let mut line = format!("{name}: round {}/{ROUNDS} at {:.1?}: {}", round + 1, t0.elapsed(), cut_fields.join(" "));
        for s in 0..STREAMS.len() {
            let (bad, words) = check_stream(&rig, s, &lives, &mut known[s], &mut totals[s], deadline)?;
            violations.extend(bad);
            let _ = write!(line, " | {words}");
        }
        eprintln!("{line}");
        if !violations.is_empty() {
            let log = rig.d.log();
            let notable: Vec<&str> = log.lines().filter(|l| l.starts_with("--- ") || l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            bail!(
                "{name}: seed {seed} (RILL_STRESS_SEED={seed}), round {} of {ROUNDS}, after `{cut}`:\n  {}\nrilld warnings and errors:\n{}",
                round + 1,
                violations.join("\n  "),
                notable[notable.len().saturating_sub(30)..].join("\n")
            );
        }
    }
    eprintln!("{name}: seed {seed}: {ROUNDS} power cuts ({} torn) in {:.1?}, no acknowledged message lost", ROUNDS / 2, t0.elapsed());
    for (spec, t) in STREAMS.iter().zip(&totals) {
        eprintln!(
            "{name}:   {:<12} acknowledged {:>7}, sent >= {:>7}, found after the cuts {:>7} ({} past the last acknowledgement), lost >= {} unacknowledged{}",
            spec.durability,
            t.acked,
            t.sent,
            t.found,
            t.past_ack,
            t.lost,
            if spec.acks() { String::new() } else { format!("; log damaged by {} of the cuts", t.damaged_rounds) }
        );
    }
    eprintln!("{name}:   powerfs {}", rig.fs.request("stats")?);
    // powerfs has no O_TMPFILE (rilld's direct-I/O probe): every segment
    // must have been written through the page cache.
    let log = rig.d.log();
    let (new, direct) = (log.matches("new segment").count(), log.matches("direct_io=true").count());
    ensure!(new > 0 && direct == 0, "{direct} of {new} new segments written with direct I/O on a filesystem without it");
    rig.d.stop(soon(deadline))?;
    Ok(())
}

/// What rilld's recovery calls durable is durable: after `kill -9` it
/// reads and syncs every segment of the log (not only the last one: a
/// sealed segment's final sync, or a `none` stream's data, may never have
/// reached the disk), so a power cut right after the restart loses
/// nothing that was in the log when rilld came back. A `none` stream
/// (never synced while archiving) spread over many segments makes any
/// segment left unsynced show.
#[test]
fn recovery_makes_the_whole_log_durable() -> Result<()> {
    let name = "recovery_sync";
    if !root_or_skip(name, "mounts a FUSE filesystem (rill-powerfs) for rilld's data directory")? {
        return Ok(());
    }
    let seed = stress_seed(name);
    let deadline = deadline();
    let mut rig = setup(name, seed, deadline)?;
    let stream = "resync.none";
    let count = 30_000u64;
    let mut cmd = Command::new(WORKER);
    cmd.args(["publish", "--socket"]).arg(&rig.d.socket);
    cmd.args(["--stream", stream, "--publisher", "0", "--seed", &seed.to_string(), "--count", &count.to_string()]);
    cmd.args(["--capacity", &CAPACITY.to_string(), "--max-len", &MAX_LEN.to_string(), "--persist", "none"]);
    cmd.env("NO_COLOR", "1");
    Worker::spawn_command(cmd, "publisher")?.finish(soon(deadline))?;
    let dir = rig.fs.path().join(stream);
    let until = soon(deadline);
    let before = loop {
        let disk = read_disk(&dir, seed)?;
        if disk.frames.len() as u64 == count {
            break disk;
        }
        ensure!(Instant::now() < until, "rilld archived {} of {count} messages", disk.frames.len());
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(before.segments >= 4, "the test needs a log of several segments: {}", before.segments);
    let pending = rig.fs.stats()?.get("bytes_pending").copied().unwrap_or(0);
    ensure!(pending > 0, "nothing unsynced before the restart: the test would prove nothing");
    rig.d.kill9();
    rig.d.spawn(soon(deadline))?;
    rig.d.kill9();
    let report = rig.fs.cut()?;
    let after = read_disk(&dir, seed)?;
    ensure!(
        after.frames == before.frames && after.problems.is_empty(),
        "a power cut after recovery lost what recovery found: {} of {} messages left, problems {:?} (cut: {report})",
        after.frames.len(),
        before.frames.len(),
        after.problems
    );
    eprintln!("{name}: {count} messages in {} segments, {pending} bytes unsynced before the restart, all durable after recovery", before.segments);
    Ok(())
}
