//! rilld's directories against a local user who plants links or owns
//! them, end to end with a real `rilld`: a data directory that is a
//! symbolic link, belongs to another uid or is writable by others is
//! refused at start, naming it and why; links planted in a persisted
//! stream's directory (in place of `stream.toml.tmp`, the preallocated
//! next segment, a segment, the stream directory itself) are never
//! followed across a restart: the files they point to stay as they were,
//! and rilld refuses that stream with a clear error or carries on safely.
//!
//! `cargo test --release -p rill-tests --test dirs`. Needs root (it gives
//! directories to uid 65534); elsewhere it fails unless
//! `RILL_SKIP_ROOT_TESTS=1` (then it says loudly that it skipped).

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill::{Client, Durability, StreamOptions};
use rill_tests::daemon::{rilld_bin, Rilld};
use rill_tests::harness::{root_or_skip, wait_until, TempRingDir};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const SEGMENT_BYTES: u64 = 1 << 20;
const MESSAGE_LEN: usize = 2000;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 600 } else { 180 })
}

/// rilld started on `data_dir` exits at once, and what it says (its
/// error names `data_dir`) contains `why`.
fn refused(tag: &str, data_dir: &Path, why: &str) -> Result<()> {
    let err = match Rilld::start_with_data_dir(tag, &[], Some(data_dir), deadline()) {
        Ok(d) => anyhow::bail!("rilld started on data directory {} ({why} expected); log:\n{}", data_dir.display(), d.log()),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains(&format!("refusing data directory {}", data_dir.display())) && err.contains(why),
        "rilld on {} did not say it refuses it because {why}: {err}",
        data_dir.display()
    );
    Ok(())
}

/// A data directory that is a symbolic link (to a directory of rilld's
/// uid), that belongs to another uid, or that others may write is
/// refused: rilld exits at start, naming the directory and why, and
/// leaves the directory a link points to as it was (its mode unchanged).
#[test]
fn a_data_dir_that_is_a_link_or_not_rillds_alone_is_refused() -> Result<()> {
    let name = "dirs_refused";
    if !root_or_skip(name, "gives a data directory to uid 65534")? {
        return Ok(());
    }
    rilld_bin()?;
    let base = TempRingDir::new_in(&std::env::temp_dir(), name)?;
    let target = base.join("target");
    std::fs::create_dir(&target)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    let link = base.join("link");
    symlink(&target, &link)?;
    refused(name, &link, "it is a symbolic link")?;
    ensure!(std::fs::metadata(&target)?.mode() & 0o7777 == 0o755, "rilld changed the mode of the directory the link points to");
    ensure!(std::fs::read_dir(&target)?.next().is_none(), "rilld wrote into the directory the link points to");

    let foreign = base.join("foreign");
    std::fs::create_dir(&foreign)?;
    nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None)?;
    refused(name, &foreign, "belongs to uid 65534")?;

    let shared = base.join("shared");
    std::fs::create_dir(&shared)?;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777))?;
    refused(name, &shared, "writable by group or others")?;
    ensure!(std::fs::metadata(&shared)?.mode() & 0o7777 == 0o777, "rilld changed the mode of a directory it refused");
    Ok(())
}

/// Publishes `count` messages of [`MESSAGE_LEN`] bytes on persisted
/// stream `stream` and waits until the last is durable.
fn publish(client: &Client, stream: &str, durability: Durability, count: usize, deadline: Instant) -> Result<()> {
    let options = StreamOptions::new().with_capacity(256 << 10).with_max_message_len(4096).with_persist(Some(durability));
    let mut publ = client.publisher_with(stream, options).with_context(|| format!("publisher on {stream}"))?;
    let mut last = 0;
    for i in 0..count {
        let msg = vec![i as u8; MESSAGE_LEN];
        wait_until(deadline, &format!("room in {stream}"), || Ok(publ.offer(&msg).map(|at| last = at).is_ok()))?;
    }
    publ.wait_durable(last, Duration::from_secs(60)).with_context(|| format!("{stream}: message at {last} durable"))?;
    Ok(())
}

/// A file outside the data directory that a planted link points to, and
/// what it holds.
struct Victim {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
}

impl Victim {
    fn new(dir: &TempRingDir, name: &str, bytes: Vec<u8>) -> Result<Victim> {
        let path = dir.join(name);
        std::fs::write(&path, &bytes)?;
        Ok(Victim { path, bytes })
    }

    /// Replaces `at` (if anything is there) with a link to the victim.
    fn plant(&self, at: &Path) -> Result<()> {
        let _ = std::fs::remove_file(at);
        symlink(&self.path, at).with_context(|| format!("planting a link at {}", at.display()))
    }

    fn unchanged(&self) -> Result<()> {
        let now = std::fs::read(&self.path)?;
        ensure!(now == self.bytes, "{} was changed through a planted link ({} bytes now, {} before)", self.path.display(), now.len(), self.bytes.len());
        Ok(())
    }
}

/// Five persisted streams are written and rilld stopped; then, in each
/// stream's directory, a local user (root here, standing in for one)
/// plants a link or takes the directory:
/// - `stream.toml.tmp` is a link (and `stream.toml` edited, so rilld
///   rewrites it): rilld writes a new file, the link's target is
///   untouched, the stream goes on;
/// - the preallocated `.next-segment` (and its `.tmp`) of an `always`
///   stream are links to a file of the segment's size: the next segment
///   is a file of rilld's own, the target is untouched;
/// - the stream's segment is a link to a copy of it with a torn tail:
///   the stream is refused ("symbolic link"), the copy is not cut;
/// - the stream's directory is a link to where it was moved: refused,
///   nothing there changes;
/// - the stream's directory belongs to uid 65534: refused.
///
/// The refused streams say why in `StreamInfo::archive_error`; rilld and
/// the other streams go on.
#[test]
fn links_planted_in_stream_directories_are_never_followed() -> Result<()> {
    let name = "dirs_links";
    if !root_or_skip(name, "gives a stream directory to uid 65534")? {
        return Ok(());
    }
    rilld_bin()?;
    let deadline = deadline();
    let mut d = Rilld::start(name, &["--segment-bytes".to_owned(), SEGMENT_BYTES.to_string()], deadline)?;
    let streams = [
        ("links.meta", Durability::None),
        ("links.prealloc", Durability::Always),
        ("links.segment", Durability::None),
        ("links.dirlink", Durability::None),
        ("links.foreign", Durability::None),
    ];
    {
        let client = d.client()?;
        for (stream, durability) in streams {
            publish(&client, stream, durability, 100, deadline)?;
        }
    }
    let data_dir = d.data_dir.clone();
    let dir = |stream: &str| data_dir.join(stream);
    let prealloc = dir("links.prealloc").join(".next-segment");
    wait_until(deadline, "the next segment of links.prealloc preallocated", || Ok(prealloc.exists()))?;
    d.stop(deadline)?;

    let outside = TempRingDir::new_in(&std::env::temp_dir(), name)?;
    let meta = dir("links.meta").join("stream.toml");
    std::fs::write(&meta, std::fs::read_to_string(&meta)? + "# edited by hand\n")?;
    let meta_victim = Victim::new(&outside, "meta-victim", b"not rilld's".to_vec())?;
    meta_victim.plant(&dir("links.meta").join("stream.toml.tmp"))?;
    let prealloc_victim = Victim::new(&outside, "prealloc-victim", vec![0xAB; SEGMENT_BYTES as usize])?;
    prealloc_victim.plant(&prealloc)?;
    let prealloc_tmp_victim = Victim::new(&outside, "prealloc-tmp-victim", b"not rilld's either".to_vec())?;
    prealloc_tmp_victim.plant(&dir("links.prealloc").join(".next-segment.tmp"))?;
    let segment = rill_store::list_segments(&dir("links.segment"))?.pop().context("links.segment has no segment")?.1;
    let mut torn = std::fs::read(&segment)?;
    torn.extend_from_slice(&[0x5A; 100]);
    let segment_victim = Victim::new(&outside, "segment-victim", torn)?;
    segment_victim.plant(&segment)?;
    let moved = outside.join("moved-stream");
    std::fs::rename(dir("links.dirlink"), &moved)?;
    symlink(&moved, dir("links.dirlink"))?;
    let moved_before = tree(&moved)?;
    nix::unistd::chown(&dir("links.foreign"), Some(nix::unistd::Uid::from_raw(65534)), None)?;

    d.spawn(deadline)?;
    let client = d.client()?;
    // Every case is checked, and every failure reported.
    let mut problems = Vec::new();
    let mut check = |r: Result<()>| problems.extend(r.err().map(|e| format!("{e:#}")));
    check(publish(&client, "links.meta", Durability::None, 100, deadline));
    check(meta_victim.unchanged());
    let meta_tmp = dir("links.meta").join("stream.toml.tmp");
    check(ensure_no_link(&meta_tmp));
    // More than a segment: the archiver rolls to a new one.
    check(publish(&client, "links.prealloc", Durability::Always, 2 * SEGMENT_BYTES as usize / MESSAGE_LEN, deadline));
    check(prealloc_victim.unchanged());
    check(prealloc_tmp_victim.unchanged());
    let segments = rill_store::list_segments(&dir("links.prealloc"))?;
    check(if segments.len() >= 2 { Ok(()) } else { Err(anyhow::anyhow!("links.prealloc did not roll: {segments:?}")) });
    segments.iter().for_each(|(_, path)| check(ensure_no_link(path)));
    for (stream, why) in [("links.segment", "symbolic link"), ("links.dirlink", "symbolic link"), ("links.foreign", "belongs to uid 65534")] {
        let info = client.stream_info(stream)?;
        let error = info.archive_error.unwrap_or_default();
        if !error.contains(why) || info.persist.is_some() {
            check(Err(anyhow::anyhow!("{stream} was not refused ({why}): {error:?}")));
        }
    }
    check(segment_victim.unchanged());
    check(if tree(&moved)? == moved_before { Ok(()) } else { Err(anyhow::anyhow!("the stream directory a link pointed to was changed")) });
    let log = d.log();
    check(if log.contains("cannot recover persisted stream") { Ok(()) } else { Err(anyhow::anyhow!("rilld did not log the refused streams")) });
    ensure!(problems.is_empty(), "{}; log:\n{}", problems.join("\n"), d.log());
    d.ensure_alive()
}

/// Fails if `path` is a symbolic link.
fn ensure_no_link(path: &Path) -> Result<()> {
    ensure!(!std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()), "{} is a link", path.display());
    Ok(())
}

/// Every file in `dir`, with its bytes, sorted by name.
fn tree(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        out.push((e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path())?));
    }
    out.sort();
    Ok(out)
}
