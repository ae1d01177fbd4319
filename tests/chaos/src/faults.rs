//! Injecting faults, drawn from the run's seed, until the duration has
//! passed.
//!
//! The first faults are one of each kind asked for, in an order drawn
//! from the seed (so even a short run has every kind; a bit flip that has
//! no sealed segment to damage yet goes to the back of that round); after
//! that, kinds are drawn with weights (kill -9 of rilld and of clients
//! most often, ring wipes, power cuts and full disks least). Between two faults, a
//! pause drawn from `--gap-min..--gap-max`, during which rilld's health
//! and the clients are watched.

use crate::world::World;
use crate::SelfTest;
use anyhow::{Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rill_chaos::history::FaultKind;
use rill_chaos::now_ns;
use rill_chaos::verify::Flip;
use rill_store::{list_segments, scan_segment, IndexEntry, BATCH_HEADER_LEN};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Relative weights after the first round, in [`FaultKind::ALL`] order.
const WEIGHTS: [usize; 7] = [3, 3, 2, 1, 1, 2, 1];

/// Injects faults of `kinds` for `duration`. `Err` if the run cannot go
/// on (rilld does not start again: recorded as a violation first).
pub(crate) fn inject_for(w: &mut World, kinds: &[FaultKind], duration: Duration) -> Result<()> {
    let end = Instant::now() + duration;
    // Let the clients create their streams before the first fault.
    w.watch(end.min(Instant::now() + Duration::from_secs(2)))?;
    let mut due = kinds.to_vec();
    for i in (1..due.len()).rev() {
        due.swap(i, w.rng.range(0, i));
    }
    let (gap_min, gap_max) = (w.args.gap_min.as_millis() as usize, w.args.gap_max.as_millis() as usize);
    while Instant::now() < end {
        let gap = Duration::from_millis(w.rng.range(gap_min, gap_max) as u64);
        w.watch(end.min(Instant::now() + gap))?;
        if Instant::now() >= end {
            break;
        }
        let (kind, from_round) = if due.is_empty() { (weighted(w, kinds), false) } else { (due.remove(0), true) };
        if !inject(w, kind)? {
            w.note(format!("{} not possible yet", kind.name()));
            if from_round {
                due.push(kind);
            }
        }
    }
    Ok(())
}

fn weighted(w: &mut World, kinds: &[FaultKind]) -> FaultKind {
    let weight = |k: &FaultKind| WEIGHTS[FaultKind::ALL.iter().position(|x| x == k).expect("a kind")];
    let total: usize = kinds.iter().map(weight).sum();
    let mut r = w.rng.range(0, total - 1);
    for k in kinds {
        if r < weight(k) {
            return *k;
        }
        r -= weight(k);
    }
    unreachable!("r < total")
}

/// Injects one fault; `Ok(false)` if it is not possible now.
fn inject(w: &mut World, kind: FaultKind) -> Result<bool> {
    match kind {
        FaultKind::Kill9Rilld => {
            let pause = Duration::from_millis(w.rng.range(0, 500) as u64);
            w.fault(kind, format!("rilld pid {}, restarted after {pause:?}", w.d.pid()));
            w.kill_rilld();
            std::thread::sleep(pause);
            w.restart_rilld("kill -9")?;
        }
        FaultKind::Kill9Client => {
            let i = w.rng.range(0, w.clients.len() - 1);
            let (name, pid) = (w.clients[i].name.clone(), w.clients[i].worker.pid());
            w.clients[i].worker.kill();
            w.fault(kind, format!("{name} pid {pid}"));
            let new = w.respawn(i)?;
            w.note(format!("started {new}"));
        }
        FaultKind::Stop => stop(w)?,
        FaultKind::RingWipe => {
            w.fault(kind, format!("rilld pid {}: kill -9, ring keeper killed (every ring lost)", w.d.pid()));
            w.kill_rilld();
            w.wipe_memory()?;
            w.restart_rilld("a ring wipe")?;
        }
        FaultKind::PowerCut => power_cut(w)?,
        FaultKind::BitFlip => return bit_flip(w),
        FaultKind::FullDisk => full_disk(w)?,
    }
    Ok(true)
}

/// SIGSTOP of rilld (a third of the time) or a client, SIGCONT later.
fn stop(w: &mut World) -> Result<()> {
    let pause = Duration::from_millis(w.rng.range(100, w.args.stop_max.as_millis().max(100) as usize) as u64);
    let (name, pid) = if w.rng.range(0, 2) == 0 {
        ("rilld".to_owned(), w.d.pid())
    } else {
        let i = w.rng.range(0, w.clients.len() - 1);
        (w.clients[i].name.clone(), w.clients[i].worker.pid())
    };
    let pid = Pid::from_raw(i32::try_from(pid).context("pid")?);
    kill(pid, Signal::SIGSTOP).with_context(|| format!("SIGSTOP {name}"))?;
    w.fault(FaultKind::Stop, format!("{name} pid {pid} for {pause:?}"));
    std::thread::sleep(pause);
    kill(pid, Signal::SIGCONT).with_context(|| format!("SIGCONT {name}"))?;
    Ok(())
}

/// Everything dies at once: rilld and every client get SIGKILL, the
/// filesystem loses power (`cut`, or `cut-torn <seed>`), memory is wiped;
/// then everything starts again (publishers as new incarnations).
fn power_cut(w: &mut World) -> Result<()> {
    w.kill_rilld();
    for c in &mut w.clients {
        c.worker.kill();
    }
    let torn = w.rng.range(0, 1) == 1;
    let tear_seed = w.rng.next_u64();
    let fs = w.fs.as_ref().context("a power cut needs rill-powerfs")?;
    let reply = if torn { fs.cut_torn(tear_seed)? } else { fs.cut()? };
    // Its time is the cut's: every acknowledgement came before it.
    w.fault(FaultKind::PowerCut, format!("{} {reply}", if torn { "cut-torn" } else { "cut" }));
    w.wipe_memory()?;
    w.restart_rilld("a power cut")?;
    for i in 0..w.clients.len() {
        w.respawn(i)?;
    }
    Ok(())
}

/// The data directory's filesystem fills up: powerfs's capacity is set
/// to what is used plus 0-256 KiB, for 1-5 s. Meanwhile rilld must keep
/// running, and say it is not healthy while a stream's archiving is
/// stopped (that is the contract; any other health answer is not
/// checked then). Then the space comes back and rilld is restarted
/// (killed, or stopped cleanly): the archiver gives a stream up for good
/// after an error, and recovery cuts the batch the full disk tore.
/// Nothing acknowledged may be lost.
fn full_disk(w: &mut World) -> Result<()> {
    let fs = w.fs.as_ref().context("a full disk needs rill-powerfs")?;
    let used = rill_powerfs::control::fields(&fs.request("limit none")?).get("used").copied().context("limit reply without used=")?;
    let margin = w.rng.range(0, 256 << 10) as u64;
    let hold = Duration::from_millis(w.rng.range(1000, 5000) as u64);
    let reply = fs.request(&format!("limit {}", used + margin))?;
    w.fault(FaultKind::FullDisk, format!("{reply} (margin {margin}) for {hold:?}"));
    let until = Instant::now() + hold;
    let mut stopped = Vec::new();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(250));
        w.check_archiving_stopped_is_unhealthy(&mut stopped)?;
    }
    let fs = w.fs.as_ref().context("a full disk needs rill-powerfs")?;
    fs.request("limit none")?;
    let clean = w.rng.range(0, 1) == 0;
    w.note(format!("space again; archiving stopped meanwhile for [{}]; rilld {}", stopped.join(", "), if clean { "stopped cleanly" } else { "killed -9" }));
    if clean {
        if let Err(e) = w.d.stop(Instant::now() + Duration::from_secs(60)) {
            w.violation("rilld did not stop cleanly on SIGTERM after a full disk".into(), "exit status 0", format!("{e:#}"));
            w.kill_rilld();
        }
    } else {
        w.kill_rilld();
    }
    w.restart_rilld("a full disk")
}

/// A batch of an old sealed segment to damage.
struct Target {
    stream: usize,
    path: PathBuf,
    first: u64,
    batch: IndexEntry,
}

/// Picks a batch in a sealed segment (not a stream's last segment) that
/// has another valid batch after it in the same file, so that its damage
/// is a hole with valid data after it whatever later cuts do (the file is
/// synced after the flip), never the end of the log; and that no earlier
/// flip damaged.
fn pick_target(w: &mut World) -> Result<Option<Target>> {
    let forget = w.args.self_test == Some(SelfTest::ForgetFlips);
    let mut streams: Vec<usize> = (0..w.streams.len()).filter(|&s| !forget || w.streams[s].synced()).collect();
    for i in (1..streams.len()).rev() {
        streams.swap(i, w.rng.range(0, i));
    }
    for s in streams {
        let dir = w.data_dir.join(&w.streams[s].name);
        let Ok(segments) = list_segments(&dir) else { continue };
        let Some((_, sealed)) = segments.split_last() else { continue };
        let mut sealed = sealed.to_vec();
        for i in (1..sealed.len()).rev() {
            sealed.swap(i, w.rng.range(0, i));
        }
        for (first, path) in sealed {
            let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
            let scan = scan_segment(&bytes, first);
            let flipped = |b: &IndexEntry| w.flips.iter().any(|(fs, f)| *fs == s && f.from < b.end_position && b.position < f.to);
            let candidates: Vec<IndexEntry> = scan.batches.iter().rev().skip(1).filter(|b| !flipped(b)).copied().collect();
            if candidates.is_empty() {
                continue;
            }
            let batch = candidates[w.rng.range(0, candidates.len() - 1)];
            return Ok(Some(Target { stream: s, path, first, batch }));
        }
    }
    Ok(None)
}

/// Stops rilld (cleanly or with `kill -9`), flips one bit of a batch in an
/// old sealed segment, syncs the file and its directory (so a later power
/// cut cannot undo it), checks that the store now finds the batch bad, and
/// starts rilld again. The batch's positions are remembered: the final
/// check wants a `Lost` notice covering them and none of their messages.
fn bit_flip(w: &mut World) -> Result<bool> {
    let Some(t) = pick_target(w)? else { return Ok(false) };
    let clean = w.rng.range(0, 1) == 0;
    if clean {
        if let Err(e) = w.d.stop(Instant::now() + Duration::from_secs(60)) {
            w.violation("rilld did not stop cleanly on SIGTERM".into(), "exit status 0", format!("{e:#}"));
            w.kill_rilld();
        }
    } else {
        w.kill_rilld();
    }
    let b = t.batch;
    let span = BATCH_HEADER_LEN as u64 + b.frames_len();
    let at = b.file_offset + w.rng.range(0, span as usize - 1) as u64;
    let bit = w.rng.range(0, 7) as u8;
    let name = t.path.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let part = if at - b.file_offset < BATCH_HEADER_LEN as u64 { "header" } else { "frames" };
    let detail = format!(
        "{}/{name}: batch {}..{} ({} messages) at file offset {}: bit {bit} of byte {at} ({part}), rilld {}",
        w.streams[t.stream].name,
        b.position,
        b.end_position,
        b.data_frames,
        b.file_offset,
        if clean { "stopped cleanly" } else { "killed -9" }
    );
    flip_bit(&t.path, at, bit)?;
    let after = scan_segment(&std::fs::read(&t.path)?, t.first);
    if after.batches.iter().any(|x| x.position == b.position && x.file_offset == b.file_offset) {
        w.violation(format!("a flipped bit went unnoticed by rill_store::scan_segment ({detail})"), "the batch found damaged", "a valid batch".into());
    } else if w.args.self_test == Some(SelfTest::ForgetFlips) {
        w.note("self-test: this flip is not recorded".into());
    } else {
        w.flips.push((t.stream, Flip { from: b.position, to: b.end_position, t_ns: now_ns(), detail: detail.clone() }));
    }
    w.fault(FaultKind::BitFlip, detail);
    w.restart_rilld("a bit flip")?;
    Ok(true)
}

/// Flips bit `bit` of the byte at `offset` of `path`, and syncs the file
/// and its directory.
fn flip_bit(path: &Path, offset: u64, bit: u8) -> Result<()> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).with_context(|| format!("open {}", path.display()))?;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, offset).with_context(|| format!("read {} at {offset}", path.display()))?;
    byte[0] ^= 1 << bit;
    f.write_all_at(&byte, offset).with_context(|| format!("write {} at {offset}", path.display()))?;
    f.sync_all().with_context(|| format!("fsync {}", path.display()))?;
    let dir = path.parent().context("segment without a directory")?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync {}", dir.display()))?;
    Ok(())
}

