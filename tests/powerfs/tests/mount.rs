//! The power-loss filesystem through a real mount: what survives `cut` and
//! `cut-torn`, seen through ordinary file system calls, and that the
//! kernel serves nothing stale after a cut.
//!
//! `cargo test -p rill-powerfs --test mount` as root (mounting needs it);
//! elsewhere each test fails, unless `RILL_SKIP_ROOT_TESTS=1` (then it
//! says loudly that it skipped).

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use rill_powerfs::process::PowerFs;
use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rill-powerfs");

/// A mounted filesystem in a fresh temporary directory; unmounted, then
/// removed, on drop.
struct Mounted {
    fs: PowerFs,
    _dir: tempfile::TempDir,
}

impl Mounted {
    fn path(&self, name: &str) -> PathBuf {
        self.fs.path().join(name)
    }
}

/// Mounts one, or `None` if not root and `RILL_SKIP_ROOT_TESTS=1`.
fn mount(test: &str) -> Result<Option<Mounted>> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var("RILL_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
            eprintln!("\n!!!!!!!!!! {test} SKIPPED (RILL_SKIP_ROOT_TESTS=1): mounting a FUSE filesystem needs root !!!!!!!!!!\n");
            return Ok(None);
        }
        bail!("{test} mounts a FUSE filesystem and needs root; run the tests as root, or set RILL_SKIP_ROOT_TESTS=1 to skip it explicitly");
    }
    let dir = tempfile::Builder::new().prefix(&format!("powerfs-{test}-")).tempdir()?;
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt)?;
    let fs = PowerFs::start(Path::new(BIN), &mnt, &dir.path().join("control.sock"), Instant::now() + Duration::from_secs(30))?;
    Ok(Some(Mounted { fs, _dir: dir }))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("fsync {}", dir.display()))
}

fn write_file(path: &Path, data: &[u8], sync: bool) -> Result<File> {
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    f.write_all_at(data, 0)?;
    if sync {
        f.sync_data()?;
    }
    Ok(f)
}

fn exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

#[test]
fn synced_writes_survive_a_cut_and_unsynced_ones_do_not() -> Result<()> {
    let Some(m) = mount("synced_writes")? else { return Ok(()) };
    let a = m.path("a");
    let f = write_file(&a, b"synced ", true)?;
    sync_dir(m.fs.path())?;
    f.write_all_at(b"and lost", 7)?;
    f.write_all_at(b"S", 0)?;
    ensure!(std::fs::read(&a)? == b"Synced and lost");
    let report = m.fs.cut()?;
    ensure!(report.contains("dropped_ops=2"), "cut report: {report}");
    ensure!(std::fs::read(&a)? == b"synced ", "after the cut: {:?}", String::from_utf8_lossy(&std::fs::read(&a)?));
    ensure!(std::fs::metadata(&a)?.len() == 7);
    // The process holding the file "died" with the power: its handle is dead.
    let e = f.write_all_at(b"x", 0).expect_err("a write through a handle from before the cut");
    ensure!(e.raw_os_error() == Some(libc::EIO), "{e}");
    Ok(())
}

#[test]
fn reads_after_a_cut_see_the_reverted_bytes_not_a_cache() -> Result<()> {
    let Some(m) = mount("no_stale_cache")? else { return Ok(()) };
    let a = m.path("a");
    let old: Vec<u8> = (0..64 << 10).map(|i| (i % 251) as u8).collect();
    drop(write_file(&a, &old, true)?);
    sync_dir(m.fs.path())?;
    // Read it (a page cache would now hold it), then overwrite it
    // unsynced and grow it, and read that too, through several opens.
    ensure!(std::fs::read(&a)? == old);
    let new = vec![0xEEu8; 96 << 10];
    let f = OpenOptions::new().write(true).open(&a)?;
    f.write_all_at(&new, 0)?;
    drop(f);
    ensure!(std::fs::read(&a)? == new);
    let reader = File::open(&a)?;
    let mut buf = vec![0u8; 4096];
    reader.read_exact_at(&mut buf, 8192)?;
    ensure!(buf.iter().all(|&b| b == 0xEE));
    m.fs.cut()?;
    ensure!(std::fs::metadata(&a)?.len() == old.len() as u64, "stat after the cut: {} bytes", std::fs::metadata(&a)?.len());
    let got = std::fs::read(&a)?;
    ensure!(got == old, "read after the cut: {} bytes, first differing at {:?}", got.len(), got.iter().zip(&old).position(|(x, y)| x != y));
    let e = reader.read_exact_at(&mut buf, 0).expect_err("a read through a handle from before the cut");
    ensure!(e.raw_os_error() == Some(libc::EIO), "{e}");
    Ok(())
}

#[test]
fn a_synced_file_in_an_unsynced_directory_disappears() -> Result<()> {
    let Some(m) = mount("missing_dir_fsync")? else { return Ok(()) };
    let d = m.path("d");
    std::fs::create_dir(&d)?;
    sync_dir(m.fs.path())?;
    drop(write_file(&d.join("synced-file"), b"data", true)?);
    drop(write_file(&d.join("named-only"), b"data", false)?);
    std::fs::create_dir(d.join("subdir"))?;
    std::fs::create_dir(m.path("unsynced-dir"))?;
    m.fs.cut()?;
    ensure!(exists(&d), "d was in a synced directory");
    ensure!(!exists(&d.join("synced-file")), "file fsynced but its directory was not: it must be gone");
    ensure!(!exists(&d.join("subdir")) && !exists(&m.path("unsynced-dir")));
    // Name synced, data not: an empty file.
    drop(write_file(&d.join("named-only"), b"data", false)?);
    sync_dir(&d)?;
    m.fs.cut()?;
    ensure!(std::fs::metadata(d.join("named-only"))?.len() == 0, "its name was synced, its data was not");
    Ok(())
}

#[test]
fn renames_links_and_unlinks_revert_without_a_directory_sync() -> Result<()> {
    let Some(m) = mount("rename")? else { return Ok(()) };
    let (a, b, c) = (m.path("a"), m.path("b"), m.path("c"));
    drop(write_file(&a, b"new", true)?);
    drop(write_file(&b, b"old", true)?);
    sync_dir(m.fs.path())?;
    std::fs::rename(&a, &b)?; // over an existing file, as an atomic replace does
    std::fs::hard_link(&b, &c)?;
    ensure!(std::fs::read(&b)? == b"new" && std::fs::metadata(&b)?.nlink() == 2 && !exists(&a));
    m.fs.cut()?;
    ensure!(std::fs::read(&a)? == b"new" && std::fs::read(&b)? == b"old" && !exists(&c), "rename and link must revert");
    std::fs::rename(&a, &b)?;
    std::fs::remove_file(&b)?;
    ensure!(!exists(&a) && !exists(&b));
    m.fs.cut()?;
    ensure!(std::fs::read(&b)? == b"old" && std::fs::read(&a)? == b"new", "unlink must revert");
    std::fs::rename(&a, &b)?;
    sync_dir(m.fs.path())?;
    m.fs.cut()?;
    ensure!(std::fs::read(&b)? == b"new" && !exists(&a), "a synced rename stays");
    Ok(())
}

/// Each torn cut leaves the file as its synced bytes followed by a prefix
/// of the unsynced writes (4 KiB each, each of its own byte), the last
/// possibly cut at a 512-byte boundary; over 24 seeds, some keep nothing,
/// some keep a part, some a torn write.
#[test]
fn a_torn_cut_leaves_a_prefix_of_the_unsynced_writes() -> Result<()> {
    let Some(m) = mount("cut_torn")? else { return Ok(()) };
    let path = m.path("log");
    let (mut kept_some, mut kept_none, mut torn) = (0, 0, 0);
    for seed in 0..24u64 {
        let f = write_file(&path, &[0xAA; 1000], true)?;
        sync_dir(m.fs.path())?;
        for i in 0..8u8 {
            f.write_all_at(&[i + 1; 4096], 1000 + 4096 * u64::from(i))?;
        }
        drop(f);
        let report = m.fs.cut_torn(seed)?;
        let got = std::fs::read(&path)?;
        ensure!(got.len() >= 1000 && got[..1000].iter().all(|&b| b == 0xAA), "seed {seed}: the synced bytes changed ({report})");
        let tail = &got[1000..];
        let whole = tail.len() / 4096;
        for (i, chunk) in tail.chunks(4096).enumerate() {
            ensure!(chunk.iter().all(|&b| b == i as u8 + 1), "seed {seed}: write {i} is not its own bytes ({report})");
        }
        if tail.len() % 4096 != 0 {
            ensure!(got.len() % 512 == 0, "seed {seed}: torn at {} bytes, not a sector boundary ({report})", got.len());
            torn += 1;
        }
        kept_none += usize::from(tail.is_empty());
        kept_some += usize::from(whole > 0);
    }
    ensure!(kept_some > 0 && kept_none > 0 && torn > 0, "24 seeds: {kept_some} kept whole writes, {kept_none} nothing, {torn} torn");
    Ok(())
}

#[test]
fn truncation_allocation_and_directories_follow_the_same_rules() -> Result<()> {
    let Some(m) = mount("metadata")? else { return Ok(()) };
    let a = m.path("a");
    let f = write_file(&a, &[5; 10_000], true)?;
    sync_dir(m.fs.path())?;
    f.set_len(100)?;
    ensure!(std::fs::metadata(&a)?.len() == 100);
    m.fs.cut()?;
    ensure!(std::fs::metadata(&a)?.len() == 10_000, "unsynced truncation reverts");
    let f = OpenOptions::new().write(true).open(&a)?;
    nix::fcntl::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), nix::fcntl::FallocateFlags::empty(), 0, 1 << 20)?;
    ensure!(std::fs::metadata(&a)?.len() == 1 << 20, "fallocate mode 0 extends");
    f.sync_data()?;
    f.set_len(0)?;
    m.fs.cut()?;
    let got = std::fs::read(&a)?;
    ensure!(got.len() == 1 << 20 && got[..10_000].iter().all(|&b| b == 5) && got[10_000..].iter().all(|&b| b == 0));
    // Directories: mkdir, listing, rmdir, each durable only when synced.
    std::fs::create_dir(m.path("d"))?;
    drop(write_file(&m.path("d/x"), b"x", true)?);
    sync_dir(&m.path("d"))?;
    sync_dir(m.fs.path())?;
    std::fs::remove_file(m.path("d/x"))?;
    std::fs::remove_dir(m.path("d"))?;
    m.fs.cut()?;
    let names: Vec<String> = std::fs::read_dir(m.fs.path())?.map(|e| Ok(e?.file_name().to_string_lossy().into_owned())).collect::<Result<_>>()?;
    ensure!(names == ["a", "d"], "listing after the cut: {names:?}");
    ensure!(std::fs::read(m.path("d/x"))? == b"x");
    let stats = m.fs.stats()?;
    ensure!(stats["files"] == 2 && stats["dirs"] == 2 && stats["cuts"] == 3 && stats["bytes_pending"] == 0, "{stats:?}");
    Ok(())
}

/// rilld probes a data directory for direct I/O with an `O_TMPFILE`
/// file and writes buffered if that fails: it must fail here, and so
/// must `O_DIRECT` (not modelled).
#[test]
fn tmpfile_and_direct_io_are_refused() -> Result<()> {
    let Some(m) = mount("probe")? else { return Ok(()) };
    let tmp = OpenOptions::new().read(true).write(true).custom_flags(libc::O_TMPFILE).open(m.fs.path());
    ensure!(tmp.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EOPNOTSUPP)), "O_TMPFILE: {tmp:?}");
    drop(write_file(&m.path("a"), b"x", false)?);
    let direct = OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(m.path("a"));
    ensure!(direct.as_ref().is_err_and(|e| e.kind() == ErrorKind::InvalidInput), "O_DIRECT: {direct:?}");
    Ok(())
}

#[test]
fn sigterm_unmounts_and_exits_cleanly() -> Result<()> {
    let Some(mut m) = mount("stop")? else { return Ok(()) };
    drop(write_file(&m.path("a"), b"x", false)?);
    ensure!(rill_powerfs::process::is_mounted(m.fs.path())?);
    m.fs.stop(Instant::now() + Duration::from_secs(30))?;
    ensure!(!exists(&m.path("a")), "the mount point should be empty again");
    Ok(())
}
