//! Persistence end to end: a real `rilld` with `--data-dir`, a real
//! publisher process on a persisted stream, real `kill -9` of the daemon,
//! and the segment files read back with `rill-store` afterwards.
//!
//! `cargo test --release -p rill-tests --test persist` (set
//! `RILL_STRESS_SEED` to replay a run; each test prints its seed). The
//! full-filesystem test mounts a small tmpfs and needs root; elsewhere it
//! fails unless `RILL_SKIP_ROOT_TESTS=1` (then it says loudly that it
//! skipped).

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill_shm::frame::FrameKind;
use rill_store::{list_segments, FrameReader};
use rill_tests::harness::stress_seed;
use rill_tests::daemon::Rilld;
use rill_tests::harness::Worker;
use rill_tests::payload::{self, Prng};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
const MAX_LEN: usize = 2048;

fn deadline() -> Instant {
    let secs = if cfg!(debug_assertions) { 900 } else { 300 };
    Instant::now() + Duration::from_secs(secs)
}

fn num(line: &str, key: &str) -> Result<u64> {
    let v = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .with_context(|| format!("no {key}= in {line:?}"))?;
    v.parse().with_context(|| format!("{key} in {line:?}"))
}

/// Every data frame of the stream's log, in order: (position, publisher
/// index, sequence number). Checks every payload byte for byte and every
/// batch's CRC on the way.
fn read_log(dir: &Path, seed: u64) -> Result<Vec<(u64, u32, u64)>> {
    let mut out = Vec::new();
    let mut expected_first = None;
    for (first, path) in list_segments(dir)? {
        if let Some(e) = expected_first {
            ensure!(first == e, "segment {} starts at {first}, the previous one ended at {e}", path.display());
        }
        let file = std::fs::File::open(&path)?;
        let mut r = FrameReader::new(file, first);
        let mut end = first;
        while let Some(f) = r.next_frame().with_context(|| format!("reading {}", path.display()))? {
            end = f.header.position + f.header.span() as u64;
            if f.header.kind != FrameKind::Data {
                continue;
            }
            let (publisher, seq) = payload::verify(f.payload, seed, MAX_LEN)
                .map_err(|d| anyhow::anyhow!("damaged message at {} in {}: {d}", f.header.position, path.display()))?;
            out.push((f.header.position, publisher, seq));
        }
        expected_first = Some(end);
    }
    Ok(out)
}

/// A publisher on a stream persisted with `policy` waits for durability
/// every 16 messages and prints how many are durable. rilld is killed with
/// SIGKILL 20 times at random moments (each time after at least 400 more
/// messages became durable since the last restart, then 0-150 ms later,
/// so kills land in writes, syncs and idle time alike) and started
/// again; the publisher carries on by itself. Afterwards the segment
/// files (rolled every 1 MiB) hold every message acknowledged as durable,
/// in order, exactly once, intact, and nothing else but later messages of
/// the same publisher, also in order.
///
/// Three ways of writing, each in /var/tmp (a disk filesystem on any usual
/// system): `always` with direct I/O into preallocated segments (written
/// zeros, renamed into place), `always` through the page cache
/// (`--buffered-io`), and `interval:2` with direct I/O appending, so kills
/// land between direct writes, their zero tails, preallocation, renames
/// and syncs. rilld's log shows which way was taken: it says of each new
/// segment whether it was preallocated and written with direct I/O.
fn durable_messages_survive_twenty_kill9s(name: &str, policy: &str, direct: bool) -> Result<()> {
    let seed = stress_seed(name);
    let deadline = deadline();
    let mut rng = Prng::new(seed);
    let disk = rill_tests::harness::TempRingDir::new_in(Path::new("/var/tmp"), name)?;
    let mut extra = vec!["--segment-bytes".into(), (1u64 << 20).to_string()];
    if !direct {
        extra.push("--buffered-io".into());
    }
    let preallocated = direct && policy == "always";
    let mut d = Rilld::start_with_data_dir(name, &extra, Some(disk.path()), deadline)?;
    let stream = format!("durable.{name}");
    let stream = stream.as_str();
    let stop = d.dir.join("stop");
    let mut cmd = Command::new(WORKER);
    cmd.args(["publish", "--socket"]).arg(&d.socket);
    cmd.args(["--stream", stream, "--publisher", "0", "--seed", &seed.to_string()]);
    cmd.args(["--capacity", &(256u64 << 10).to_string(), "--max-len", &MAX_LEN.to_string()]);
    cmd.args(["--persist", policy, "--wait-durable", "16", "--until-file"]).arg(&stop);
    cmd.env("NO_COLOR", "1");
    let mut publ = Worker::spawn_command(cmd, "publisher")?;
    let mut acked = 0u64;
    for kill in 0..20 {
        // Wait until the archiver (of this daemon) made more durable.
        let from = publ.lines().len();
        let want = acked + 400;
        let line = publ
            .wait_line_after(from, "400 more messages durable after the restart", deadline, |l| {
                l.starts_with("DURABLE ") && num(l, "n").is_ok_and(|n| n >= want)
            })?
            .1;
        acked = acked.max(num(&line, "n")?);
        std::thread::sleep(Duration::from_millis(rng.range(0, 150) as u64));
        d.kill9();
        eprintln!("{name}: kill {} at >= {acked} durable", kill + 1);
        d.spawn(deadline)?;
    }
    let from = publ.lines().len();
    publ.wait_line_after(from, "a DURABLE line after the last restart", deadline, |l| l.starts_with("DURABLE "))?;
    std::fs::write(&stop, b"")?;
    let summary = publ.finish(deadline)?;
    let sent = summary.num("sent")?;
    let durable = summary.num("durable")?;
    ensure!(durable >= acked && durable <= sent, "summary {summary:?} against {acked} seen durable");
    // A clean stop flushes what is left in the ring.
    d.stop(deadline)?;
    let dir = d.data_dir.join(stream);
    let log = read_log(&dir, seed)?;
    let seqs: Vec<u64> = log.iter().map(|&(_, _, s)| s).collect();
    ensure!(log.iter().all(|&(_, p, _)| p == 0), "a frame of another publisher");
    ensure!(
        seqs.iter().enumerate().all(|(i, &s)| s == i as u64),
        "the log is not 0, 1, 2, ... in order: first break at {:?}",
        seqs.iter().enumerate().find(|(i, s)| **s != *i as u64)
    );
    ensure!(seqs.len() as u64 >= durable, "only {} messages on disk, {durable} were acknowledged durable", seqs.len());
    ensure!(seqs.len() as u64 == sent, "{} messages on disk after a clean stop, {sent} sent", seqs.len());
    let segments = list_segments(&dir)?;
    if preallocated {
        // (One created while its preallocation was not ready is plain.)
        let log = d.log();
        let (new, pre) = (log.matches("new segment").count(), log.matches("preallocated=true").count());
        ensure!(pre * 2 >= new, "{pre} of {new} new segments preallocated (is /var/tmp a disk filesystem?)");
    } else if direct {
        let log = d.log();
        let (new, direct) = (log.matches("new segment").count(), log.matches("direct_io=true").count());
        ensure!(new > 0 && direct == new, "{direct} of {new} new segments written with direct I/O (is /var/tmp a disk filesystem?)");
    } else {
        ensure!(!d.log().contains("direct_io=true"), "--buffered-io, yet a segment was written with direct I/O");
    }
    let segments = segments.len();
    eprintln!("{name}: {sent} sent, {durable} acknowledged durable, {} on disk in {segments} segments after 20 kills", seqs.len());
    ensure!(segments > 1, "the test meant to roll segments: {segments}");
    Ok(())
}

#[test]
fn durable_messages_survive_twenty_kill9s_of_rilld() -> Result<()> {
    durable_messages_survive_twenty_kill9s("persist_kill9", "always", true)
}

#[test]
fn buffered_always_survives_twenty_kill9s_of_rilld() -> Result<()> {
    durable_messages_survive_twenty_kill9s("persist_kill9_buffered", "always", false)
}

#[test]
fn direct_io_interval_survives_twenty_kill9s_of_rilld() -> Result<()> {
    durable_messages_survive_twenty_kill9s("persist_kill9_direct", "interval:2", true)
}

/// A tmpfs of a fixed size mounted on a fresh directory under the system's
/// temporary directory: a filesystem a test can fill. Unmounted on drop
/// (lazily if something still holds it), then the directory is removed.
struct Tmpfs {
    dir: rill_tests::harness::TempRingDir,
}

impl Tmpfs {
    fn mount(tag: &str, size_bytes: u64) -> Result<Tmpfs> {
        let dir = rill_tests::harness::TempRingDir::new_in(&std::env::temp_dir(), tag)?;
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size_bytes}"), "tmpfs"]).arg(dir.path()))?;
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg(self.dir.path())) {
            eprintln!("warning: {e:#}; unmounting lazily");
            if let Err(e) = run(Command::new("umount").arg("-l").arg(self.dir.path())) {
                eprintln!("warning: {e:#}");
            }
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

/// The sequence numbers of `publisher`'s messages in `log`, checked to be
/// 0, 1, 2, ... (each exactly once, in order).
fn seqs_of(log: &[(u64, u32, u64)], publisher: u32) -> Result<Vec<u64>> {
    let seqs: Vec<u64> = log.iter().filter(|&&(_, p, _)| p == publisher).map(|&(_, _, s)| s).collect();
    let first_break = seqs.iter().enumerate().find(|&(i, &s)| s != i as u64);
    ensure!(first_break.is_none(), "publisher {publisher}'s messages on disk are not 0, 1, 2, ... in order: first break at {first_break:?}");
    Ok(seqs)
}

/// The data directory's filesystem fills up: a 2 MiB tmpfs, under a
/// stream persisted with `always` and two publishers: 0 waits for
/// durability every 16 messages until told to stop, 1 never waits and
/// sends 30,000 messages (about 5 MiB). rilld keeps running, answers
/// `health` with "no" naming the stream and ENOSPC, reports ENOSPC in
/// `StreamInfo::archive_error`, and holds the
/// publishers back with the archiver's slot: the ring fills, tail and
/// durable position stop, publisher 0 is told nothing more is durable,
/// and neither publisher fails. Everything up to the durable position
/// (every message acknowledged durable among it) is then in the segment
/// files, intact. Once the filesystem is grown to 64 MiB and rilld
/// restarted (the archiver gives a stream up for good after an error;
/// recovery cuts the torn batch), archiving resumes, and after a clean
/// stop the files hold every message each publisher sent, exactly once,
/// in order.
#[test]
fn a_full_filesystem_holds_publishers_back_and_loses_nothing() -> Result<()> {
    let name = "persist_enospc";
    if !rill_tests::harness::root_or_skip(name, "needs root to mount a tmpfs (a filesystem it can fill)")? {
        return Ok(());
    }
    let seed = stress_seed(name);
    let deadline = deadline();
    // Declared before rilld, so dropped after it: nothing holds it then.
    let fs = Tmpfs::mount(name, 2 << 20)?;
    let t0 = Instant::now();
    let data_dir = fs.path().join("data");
    let segment_flags = ["--segment-bytes".to_owned(), (1u64 << 20).to_string()];
    let mut d = Rilld::start_with_data_dir(name, &segment_flags, Some(&data_dir), deadline)?;
    let stream = "durable.enospc";
    // Batches of up to a ring each: few round trips to fill the disk,
    // even when the machine is busy.
    let capacity = 256u64 << 10;
    let stop = d.dir.join("stop");
    let spawn = |publisher: u32, extra: &[&str]| {
        let mut cmd = Command::new(WORKER);
        cmd.args(["publish", "--socket"]).arg(&d.socket);
        cmd.args(["--stream", stream, "--publisher", &publisher.to_string(), "--seed", &seed.to_string()]);
        cmd.args(["--capacity", &capacity.to_string(), "--max-len", &MAX_LEN.to_string(), "--persist", "always"]);
        // Held back for as long as the test takes: never give up.
        cmd.args(["--stall-secs", "600"]).args(extra);
        cmd.env("NO_COLOR", "1");
        Worker::spawn_command(cmd, &format!("publisher {publisher}"))
    };
    let stop_arg = stop.display().to_string();
    let mut p0 = spawn(0, &["--wait-durable", "16", "--durable-timeout-secs", "600", "--until-file", &stop_arg])?;
    p0.wait_line("OPEN ", deadline)?; // it created the stream, persisted
    // Twice what the filesystem holds: it fills the filesystem, and then
    // the ring (it never waits for durability).
    let mut p1 = spawn(1, &["--count", "30000"])?;
    let client = d.client()?;

    // 1. The filesystem fills: archiving stops with ENOSPC.
    let mut info = client.stream_info(stream)?;
    rill_tests::harness::wait_until(deadline, "archive_error on the full filesystem", || {
        for p in [&mut p0, &mut p1] {
            ensure!(p.try_exited()?.is_none(), "{} exited before the filesystem filled: {}", p.name(), p.stderr());
        }
        info = client.stream_info(stream)?;
        Ok(info.archive_error.is_some())
    })?;
    let error = info.archive_error.clone().unwrap_or_default();
    eprintln!("{name}: {:?}: archive_error after {} bytes on disk: {error}", t0.elapsed(), info.disk_bytes);
    ensure!(
        error.contains("No space left") || error.contains("ENOSPC") || error.contains("os error 28"),
        "archive_error does not say the filesystem is full (ENOSPC): {error:?}"
    );
    ensure!(info.disk_bytes > 1 << 20, "archiving stopped after {} bytes of the 2 MiB free: {error}", info.disk_bytes);
    d.ensure_alive()?;
    let health = client.health()?;
    ensure!(
        !health.healthy && health.detail.contains(stream) && health.detail.contains("No space left"),
        "health with a full data directory should be no, naming the stream and ENOSPC: {health:?}"
    );

    // 2. The archiver's slot holds the publishers back: the ring fills up
    //    behind it (publisher 1 never waits) and then nothing moves.
    let max_span = rill_shm::frame::message_span(MAX_LEN) as u64;
    rill_tests::harness::wait_until(deadline, "the ring full behind the archiver", || {
        info = client.stream_info(stream)?;
        Ok(info.tail - info.durable_position + max_span > capacity)
    })?;
    let frozen = info.clone();
    ensure!(frozen.tail - frozen.durable_position <= capacity, "the ring holds more than its capacity past the durable position: {frozen:?}");
    // A second of silence from publisher 0 about anything past the
    // durable position (an acknowledged message ends before it).
    let late = p0.wait_line_after(0, "(no line expected)", Instant::now() + Duration::from_secs(1), |l| {
        l.starts_with("DURABLE ") && num(l, "position").is_ok_and(|p| p >= frozen.durable_position)
    });
    ensure!(late.is_err(), "publisher 0 was told {late:?} is durable; the durable position is {}", frozen.durable_position);
    for p in [&mut p0, &mut p1] {
        ensure!(p.try_exited()?.is_none(), "{} gave up while held back: {}", p.name(), p.stderr());
    }
    let info = client.stream_info(stream)?;
    ensure!(
        (info.tail, info.durable_position) == (frozen.tail, frozen.durable_position),
        "tail or durable position moved after archiving stopped: {:?} -> {:?}",
        (frozen.tail, frozen.durable_position),
        (info.tail, info.durable_position)
    );
    let acks: Vec<u64> = p0.lines().iter().filter(|l| l.starts_with("DURABLE ")).map(|l| num(l, "n")).collect::<Result<_>>()?;
    let acked = acks.into_iter().max().unwrap_or(0);
    ensure!(acked > 0, "nothing was acknowledged durable before the filesystem filled");

    // 3. What was acknowledged is on disk, intact (read with rilld stopped).
    d.stop(deadline)?;
    // tmpfs has no direct I/O, so no preallocated segment took its space.
    ensure!(!data_dir.join(stream).join(".next-segment").exists(), "a preallocated segment on tmpfs");
    let log = read_log(&data_dir.join(stream), seed)?;
    let on_disk = seqs_of(&log, 0)?.len() as u64;
    ensure!(on_disk >= acked, "{acked} messages of publisher 0 acknowledged durable, {on_disk} on disk");
    seqs_of(&log, 1)?;
    let log_end = rill_store::StreamLog::open(&data_dir.join(stream))?.end_position().unwrap_or(0);
    ensure!(log_end >= frozen.durable_position, "the log ends at {log_end}, before the durable position {}", frozen.durable_position);
    eprintln!(
        "{name}: {:?}: {acked} acknowledged durable before the filesystem filled; {} messages on disk up to {log_end} (durable position {})",
        t0.elapsed(),
        log.len(),
        frozen.durable_position
    );

    // 4. Space added, rilld restarted: archiving resumes.
    run(Command::new("mount").args(["-o", "remount,size=64m"]).arg(fs.path()))?;
    d.spawn(deadline)?;
    let client = d.client()?;
    let from = p0.lines().len();
    let want = acked + 320;
    p0.wait_line_after(from, "320 more messages durable after space was added", deadline, |l| {
        l.starts_with("DURABLE ") && num(l, "n").is_ok_and(|n| n >= want)
    })?;
    let info = client.stream_info(stream)?;
    ensure!(info.archive_error.is_none(), "archiving resumed but reports {:?}", info.archive_error);
    let health = client.health()?;
    ensure!(health.healthy, "archiving resumed but health says {health:?}");
    eprintln!("{name}: {:?}: archiving resumed", t0.elapsed());

    // 5. Everything sent is on disk, once, in order.
    std::fs::write(&stop, b"")?;
    let s0 = p0.finish(deadline)?;
    let s1 = p1.finish(deadline)?;
    ensure!(s0.num("durable")? >= acked, "publisher 0: {s0:?} against {acked} seen durable");
    d.stop(deadline)?;
    let log = read_log(&data_dir.join(stream), seed)?;
    for (k, s) in [(0, &s0), (1, &s1)] {
        let seqs = seqs_of(&log, k)?;
        ensure!(seqs.len() as u64 == s.num("sent")?, "publisher {k}: {} messages on disk after a clean stop, summary {s:?}", seqs.len());
    }
    eprintln!(
        "{name}: {:?}: {} + {} sent ({} times back-pressured), all on disk; {} segments",
        t0.elapsed(),
        s0.num("sent")?,
        s1.num("sent")?,
        s1.num("back_pressured")?,
        list_segments(&data_dir.join(stream))?.len()
    );
    Ok(())
}
