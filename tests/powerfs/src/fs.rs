//! The FUSE side: each kernel request becomes one call on the [`Model`],
//! under its mutex, and the reply.
//!
//! # Nothing cached in the kernel
//! A cut changes files behind the kernel's back, so the kernel must never
//! answer from a cache: every entry and attribute reply has a TTL of zero
//! (each path walk and `stat` asks again), every open file is opened with
//! `FOPEN_DIRECT_IO` (reads and writes bypass the page cache and come
//! here; nothing is ever dirty in the kernel, and a cut cannot leave stale
//! pages), and directories are opened without `FOPEN_CACHE_DIR`. With
//! direct I/O, shared writable `mmap` of a file is refused by the kernel;
//! rilld does not map segment files.
//!
//! `O_DIRECT` opens fail with `EINVAL` and `O_TMPFILE` with `EOPNOTSUPP`
//! (the kernel's answer when the filesystem has no tmpfile operation), so
//! rilld's direct-I/O probe finds no direct I/O and writes buffered.
//! Symlinks, device nodes, xattrs and locks are not supported.

use crate::model::{Attr, Kind, Model};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Entries and attributes are never cached by the kernel (module docs).
const TTL: Duration = Duration::ZERO;
/// Block size reported by `stat` and `statfs`.
const BLOCK: u32 = 4096;

/// The filesystem FUSE serves; the control channel holds the same model.
#[derive(Debug)]
pub struct PowerFs {
    model: Arc<Mutex<Model>>,
}

impl PowerFs {
    /// Serves `model`.
    pub fn new(model: Arc<Mutex<Model>>) -> PowerFs {
        PowerFs { model }
    }

    fn model(&self) -> MutexGuard<'_, Model> {
        // A panic while holding it is a bug in the model; going on with the
        // state it left is still more useful to a test than a dead mount.
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn errno(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.meta.atime,
        mtime: a.meta.mtime,
        ctime: a.meta.ctime,
        crtime: a.meta.ctime,
        kind: match a.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: a.meta.perm as u16,
        nlink: a.nlink,
        uid: a.meta.uid,
        gid: a.meta.gid,
        rdev: 0,
        blksize: BLOCK,
        flags: 0,
    }
}

fn time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn entry(reply: ReplyEntry, r: Result<Attr, i32>) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), i32>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// Permission bits of a new inode: what the caller asked, less its umask.
fn perm(mode: u32, umask: u32) -> u32 {
    mode & !umask & 0o7777
}

/// `O_DIRECT` is not supported (module docs).
fn refuse_direct(flags: i32) -> Result<(), i32> {
    if flags & libc::O_DIRECT != 0 {
        return Err(libc::EINVAL);
    }
    Ok(())
}

impl Filesystem for PowerFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.model().lookup(parent.0, name));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.model().attr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let times = (atime.map(time), mtime.map(time));
        match self.model().setattr(ino.0, mode, (uid, gid), size, times) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, _rdev: u32, reply: ReplyEntry) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        entry(reply, self.model().create(parent.0, name, Kind::File, perm(mode, umask), req.uid(), req.gid()));
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        entry(reply, self.model().create(parent.0, name, Kind::Dir, perm(mode, umask), req.uid(), req.gid()));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.model().unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.model().rmdir(parent.0, name));
    }

    fn rename(&self, _req: &Request, parent: INodeNo, name: &OsStr, newparent: INodeNo, newname: &OsStr, flags: RenameFlags, reply: ReplyEmpty) {
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        empty(reply, self.model().rename(parent.0, name, newparent.0, newname, noreplace));
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        entry(reply, self.model().link(ino.0, newparent.0, newname));
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match refuse_direct(flags.0).and_then(|()| self.model().open(ino.0, false)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, flags: i32, reply: ReplyCreate) {
        let r = refuse_direct(flags).and_then(|()| {
            let mut m = self.model();
            let a = m.create(parent.0, name, Kind::File, perm(mode, umask), req.uid(), req.gid())?;
            Ok((a, m.open(a.ino, false)?))
        });
        match r {
            Ok((a, fh)) => reply.created(&TTL, &file_attr(&a), Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.model().read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.model().write(fh.0, offset, data) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // Nothing is buffered here or (direct I/O) in the kernel.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.model().release(fh.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        // fdatasync makes the size durable too (it would be a data loss
        // otherwise), and this model has nothing else that fsync adds.
        empty(reply, self.model().fsync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.model().open(ino.0, true) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let m = self.model();
        match m.readdir(fh.0, offset) {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate() {
                    let kind = if *kind == Kind::Dir { FileType::Directory } else { FileType::RegularFile };
                    // The offset of an entry is where the next call starts.
                    if reply.add(INodeNo(*ino), offset + i as u64 + 1, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.model().release(fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(reply, self.model().fsyncdir(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (capacity, used, inodes) = self.model().usage();
        let blocks = capacity / u64::from(BLOCK);
        let free = blocks.saturating_sub(used.div_ceil(u64::from(BLOCK)));
        let files = 1 << 32;
        reply.statfs(blocks, free, free, files, files - inodes, BLOCK, crate::model::MAX_NAME_LEN as u32, BLOCK);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok(); // no permissions are modelled
    }

    fn fallocate(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        empty(reply, self.model().fallocate(fh.0, offset, length, mode));
    }
}
