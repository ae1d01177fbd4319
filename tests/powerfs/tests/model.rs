//! The model without FUSE: what survives a cut and a torn cut, names
//! and directory syncs, freeing, bounds.

#![forbid(unsafe_code)]

use rill_powerfs::model::{Ino, Kind, Model, MAX_FILE_BYTES, ROOT, SECTOR};
use std::ffi::OsStr;

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn new_file(m: &mut Model, parent: Ino, name: &str) -> (Ino, u64) {
    let a = m.create(parent, os(name), Kind::File, 0o644, 0, 0).unwrap();
    (a.ino, m.open(a.ino, false).unwrap())
}

fn read_all(m: &mut Model, ino: Ino) -> Vec<u8> {
    let fh = m.open(ino, false).unwrap();
    let data = m.read(fh, 0, u32::MAX).unwrap();
    m.release(fh);
    data
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_does_not() {
    let mut m = Model::new(1 << 30);
    let (ino, fh) = new_file(&mut m, ROOT, "a");
    m.fsyncdir(ROOT).unwrap();
    m.write(fh, 0, b"durable").unwrap();
    m.fsync(ino).unwrap();
    m.write(fh, 7, b" lost").unwrap();
    m.write(fh, 0, b"D").unwrap();
    assert_eq!(read_all(&mut m, ino), b"Durable lost");
    let r = m.cut(None);
    assert_eq!((r.reverted_files, r.dropped_ops, r.dropped_bytes), (1, 2, 6));
    assert_eq!(m.lookup(ROOT, os("a")).unwrap().size, 7);
    assert_eq!(read_all(&mut m, ino), b"durable");
    assert_eq!(m.write(fh, 0, b"x"), Err(libc::EIO), "a handle from before the cut must be dead");
}

#[test]
fn a_name_needs_its_directory_synced() {
    let mut m = Model::new(1 << 30);
    let d = m.create(ROOT, os("d"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
    m.fsyncdir(ROOT).unwrap();
    let (f, fh) = new_file(&mut m, d, "f");
    m.write(fh, 0, b"data").unwrap();
    m.fsync(f).unwrap();
    m.cut(None);
    assert_eq!(m.lookup(d, os("f")), Err(libc::ENOENT), "file synced, directory not: the name is lost");
    assert_eq!(m.attr(f), Err(libc::ENOENT));
    // Synced directory, unsynced file: the name stays, empty.
    let (f, fh) = new_file(&mut m, d, "g");
    m.write(fh, 0, b"data").unwrap();
    m.fsyncdir(d).unwrap();
    m.cut(None);
    assert_eq!(m.lookup(d, os("g")).unwrap().size, 0);
    assert_eq!(m.lookup(d, os("g")).unwrap().ino, f);
}

#[test]
fn rename_unlink_and_link_revert_without_a_directory_sync() {
    let mut m = Model::new(1 << 30);
    let (a, fh) = new_file(&mut m, ROOT, "a");
    m.write(fh, 0, b"A").unwrap();
    let (b, fh) = new_file(&mut m, ROOT, "b");
    m.write(fh, 0, b"B").unwrap();
    m.sync_all();
    m.rename(ROOT, os("a"), ROOT, os("b"), false).unwrap();
    m.link(a, ROOT, os("c")).unwrap();
    assert_eq!(m.lookup(ROOT, os("b")).unwrap().ino, a);
    assert_eq!(m.attr(a).unwrap().nlink, 2);
    m.release(fh);
    m.cut(None);
    assert_eq!(m.lookup(ROOT, os("a")).unwrap().ino, a);
    assert_eq!(m.lookup(ROOT, os("b")).unwrap().ino, b, "the replaced file is back");
    assert_eq!(m.lookup(ROOT, os("c")), Err(libc::ENOENT));
    assert_eq!(read_all(&mut m, b), b"B");
    // Synced this time: the old b is freed.
    m.rename(ROOT, os("a"), ROOT, os("b"), false).unwrap();
    m.fsyncdir(ROOT).unwrap();
    assert_eq!(m.attr(b), Err(libc::ENOENT));
    m.cut(None);
    assert_eq!(m.lookup(ROOT, os("b")).unwrap().ino, a);
    assert_eq!(m.lookup(ROOT, os("a")), Err(libc::ENOENT));
}

#[test]
fn unlinked_files_are_freed_once_nothing_holds_them() {
    let mut m = Model::new(1 << 30);
    let (a, fh) = new_file(&mut m, ROOT, "a");
    m.write(fh, 0, &[7; 100]).unwrap();
    m.unlink(ROOT, os("a")).unwrap();
    assert_eq!(m.read(fh, 0, 10).unwrap(), [7; 10], "still open");
    m.release(fh);
    assert_eq!(m.attr(a), Err(libc::ENOENT));
    assert_eq!(m.usage().1, 0);
    // Durably named: kept (invisible) until the directory is synced.
    let (b, fh) = new_file(&mut m, ROOT, "b");
    m.release(fh);
    m.fsyncdir(ROOT).unwrap();
    m.unlink(ROOT, os("b")).unwrap();
    assert!(m.attr(b).is_ok());
    m.fsyncdir(ROOT).unwrap();
    assert_eq!(m.attr(b), Err(libc::ENOENT));
}

#[test]
fn directories_rename_rmdir_and_refuse_loops() {
    let mut m = Model::new(1 << 30);
    let x = m.create(ROOT, os("x"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
    let y = m.create(x, os("y"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
    assert_eq!(m.rename(ROOT, os("x"), y, os("x"), false), Err(libc::EINVAL));
    assert_eq!(m.rmdir(ROOT, os("x")), Err(libc::ENOTEMPTY));
    assert_eq!(m.attr(x).unwrap().nlink, 3);
    m.rename(x, os("y"), ROOT, os("y"), false).unwrap();
    assert_eq!(m.lookup(y, os("..")).unwrap().ino, ROOT);
    m.rmdir(ROOT, os("x")).unwrap();
    m.sync_all();
    m.cut(None);
    assert_eq!(m.lookup(ROOT, os("y")).unwrap().ino, y);
    assert_eq!(m.lookup(ROOT, os("x")), Err(libc::ENOENT));
    let fh = m.open(ROOT, true).unwrap();
    let names: Vec<_> = m.readdir(fh, 0).unwrap().iter().map(|e| e.2.clone()).collect();
    assert_eq!(names, [".", "..", "y"]);
}

#[test]
fn truncate_and_fallocate_are_pending_like_writes() {
    let mut m = Model::new(1 << 30);
    let (a, fh) = new_file(&mut m, ROOT, "a");
    m.fsyncdir(ROOT).unwrap();
    m.fallocate(fh, 0, 4096, 0).unwrap();
    assert_eq!(m.attr(a).unwrap().size, 4096);
    m.fallocate(fh, 0, 8192, libc::FALLOC_FL_KEEP_SIZE).unwrap();
    assert_eq!(m.attr(a).unwrap().size, 4096);
    m.write(fh, 0, &[1; 4096]).unwrap();
    m.fallocate(fh, 10, 10, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE).unwrap();
    m.fsync(a).unwrap();
    m.setattr(a, None, (None, None), Some(5), (None, None)).unwrap();
    assert_eq!(read_all(&mut m, a), [1; 5]);
    assert_eq!(m.fallocate(fh, 0, 1, libc::FALLOC_FL_COLLAPSE_RANGE), Err(libc::EOPNOTSUPP));
    m.cut(None);
    let data = read_all(&mut m, a);
    assert_eq!(data.len(), 4096);
    assert!(data[10..20].iter().all(|&b| b == 0) && data[..10].iter().all(|&b| b == 1) && data[20..].iter().all(|&b| b == 1));
}

#[test]
fn capacity_and_file_size_are_bounded() {
    let mut m = Model::new(1000);
    let (a, fh) = new_file(&mut m, ROOT, "a");
    assert_eq!(m.write(fh, 0, &[0; 1001]), Err(libc::ENOSPC));
    m.write(fh, 0, &[0; 1000]).unwrap();
    assert_eq!(m.setattr(a, None, (None, None), Some(MAX_FILE_BYTES + 1), (None, None)), Err(libc::EFBIG));
    m.setattr(a, None, (None, None), Some(0), (None, None)).unwrap();
    assert_eq!(m.usage().1, 0);
}

/// A torn cut leaves each file as its durable bytes with a prefix of
/// its pending writes applied, the last possibly cut at a sector
/// boundary; over many seeds every kind of outcome shows up.
#[test]
fn torn_cuts_leave_a_prefix_of_the_writes() {
    let (mut none, mut all, mut torn) = (0, 0, 0);
    for seed in 0..300u64 {
        let mut m = Model::new(1 << 30);
        let (a, fh) = new_file(&mut m, ROOT, "a");
        m.fsyncdir(ROOT).unwrap();
        m.write(fh, 0, &[9; 100]).unwrap();
        m.fsync(a).unwrap();
        let writes: Vec<(u64, Vec<u8>)> = (0..4u8).map(|i| (100 + 1500 * u64::from(i), vec![i + 1; 1500])).collect();
        for (off, data) in &writes {
            m.write(fh, *off, data).unwrap();
        }
        let r = m.cut(Some(seed));
        let got = read_all(&mut m, a);
        // Which prefix, and how much of the next write?
        let mut want = vec![9u8; 100];
        let k = r.kept_ops as usize;
        for (off, data) in &writes[..k] {
            let end = *off as usize + data.len();
            want.resize(want.len().max(end), 0);
            want[*off as usize..end].copy_from_slice(data);
        }
        assert_eq!(got[..want.len()], want[..], "seed {seed}: kept writes");
        let extra = got.len() - want.len();
        if extra > 0 {
            assert_eq!(r.torn_writes, 1, "seed {seed}");
            assert_eq!(got.len() as u64 % SECTOR, 0, "seed {seed}: torn at a sector boundary");
            assert!(extra < 1500 && got[want.len()..].iter().all(|&b| b == k as u8 + 1), "seed {seed}");
            torn += 1;
        }
        none += usize::from(k == 0 && extra == 0);
        all += usize::from(k == writes.len());
    }
    assert!(none > 0 && all > 0 && torn > 0, "none {none}, all {all}, torn {torn}");
}

#[test]
fn a_directory_with_two_durable_parents_keeps_one() {
    let mut m = Model::new(1 << 30);
    let a = m.create(ROOT, os("a"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
    let b = m.create(ROOT, os("b"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
    let c = m.create(a, os("c"), Kind::Dir, 0o755, 0, 0).unwrap().ino;
    m.sync_all();
    m.rename(a, os("c"), b, os("c"), false).unwrap();
    m.fsyncdir(b).unwrap(); // a not synced: both say c is theirs
    m.cut(None);
    let parents = [a, b].iter().filter(|&&p| m.lookup(p, os("c")).is_ok()).count();
    assert_eq!(parents, 1);
    assert_eq!(m.attr(c).unwrap().kind, Kind::Dir);
}

#[test]
fn a_limit_below_what_is_used_is_a_full_disk_until_lifted() {
    let m = std::sync::Mutex::new(Model::new(1 << 30));
    let (ino, fh) = new_file(&mut m.lock().unwrap(), ROOT, "a");
    m.lock().unwrap().write(fh, 0, &[1; 100]).unwrap();
    assert_eq!(rill_powerfs::control::execute(&m, "limit 100"), "ok limit capacity=100 used=100");
    assert_eq!(m.lock().unwrap().write(fh, 100, &[2; 1]), Err(libc::ENOSPC), "full: nothing grows");
    m.lock().unwrap().write(fh, 0, &[3; 100]).unwrap(); // overwriting in place needs no space
    assert!(rill_powerfs::control::execute(&m, "limit lots").starts_with("error limit"));
    assert!(rill_powerfs::control::execute(&m, "limit none").starts_with("ok limit"));
    m.lock().unwrap().write(fh, 100, &[2; 1]).unwrap();
    assert_eq!(read_all(&mut m.lock().unwrap(), ino).len(), 101);
}
