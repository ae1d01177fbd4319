//! The filesystem's state, apart from FUSE: a disk with a volatile write
//! cache, and what is left of it after a power cut.
//!
//! # The model
//! Every inode has a *current* state (what reads and `stat` see) and a
//! *durable* one (what survives a cut):
//!
//! * A file's data and size: each write, truncation and allocation is
//!   applied to the current bytes at once and queued as a pending
//!   operation. `fsync`/`fdatasync` of the file applies the queue, in
//!   order, to the durable bytes (and makes its metadata, mode and times,
//!   durable too).
//! * A directory's entries (create, mkdir, link, unlink, rmdir, rename):
//!   changed in the current map at once, durable only when the directory
//!   itself is fsynced, which copies its whole current map. Syncing a file
//!   never makes its name durable: a file created, written and fsynced in
//!   a directory that is not fsynced is gone after a cut (the classic
//!   missing directory fsync). A rename between two directories is
//!   durable in each of them when that one is synced; if only one was,
//!   the file may come back under both names or neither.
//!
//! [`Model::cut`] is a power loss: every file and directory reverts to its
//! durable state; inodes no longer reachable from the root through durable
//! entries vanish; every open handle dies (a later read or write through
//! it fails with `EIO`: the processes that held them died with the power).
//! With a seed ([`Model::cut`]`(Some(seed))`, "cut-torn"), each file keeps
//! a random prefix of its pending operations, in order, the first one left
//! out possibly surviving as a torn prefix of itself that ends at a
//! 512-byte boundary of the file: any prefix of what reached the disk.
//! Directories revert fully either way. Inode numbers are never reused,
//! so the kernel cannot confuse an inode that vanished with a new one.
//!
//! # Invariants
//! Every inode referenced by any directory's current or durable map
//! exists. An inode is freed when no current entry, no durable entry and
//! no open handle refers to it. Directories form a tree through their
//! current maps; after a cut, through their durable maps (a directory
//! found under a second parent is dropped from it).
//!
//! Not modelled: symlinks, device nodes, xattrs, `O_DIRECT`, `O_TMPFILE`,
//! permissions (every caller may do everything), reordered writes within
//! a file (only prefixes survive), partial directory updates.
//!
//! Errors are `errno` values (`libc::ENOENT`, ...). The model is not
//! thread-safe; the FUSE layer holds it in a mutex.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

/// An inode number.
pub type Ino = u64;
/// The root directory's inode number (FUSE's).
pub const ROOT: Ino = 1;
/// A torn write ends at a multiple of this (a disk sector).
pub const SECTOR: u64 = 512;
/// Largest file: bigger writes, truncations and allocations fail with
/// `EFBIG` (everything is in memory, twice).
pub const MAX_FILE_BYTES: u64 = 16 << 30;
/// Longest name in a directory.
pub const MAX_NAME_LEN: usize = 255;

/// A result with an `errno` as its error.
pub type FsResult<T> = Result<T, i32>;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
}

/// An inode's metadata apart from size and link count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`0o7777` at most).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Last access.
    pub atime: SystemTime,
    /// Last modification of the data (or entries).
    pub mtime: SystemTime,
    /// Last change of the inode.
    pub ctime: SystemTime,
}

impl Meta {
    fn new(perm: u32, uid: u32, gid: u32) -> Meta {
        let now = SystemTime::now();
        Meta { perm: perm & 0o7777, uid, gid, atime: now, mtime: now, ctime: now }
    }
}

/// What `stat` says about an inode (its current state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// File or directory.
    pub kind: Kind,
    /// Bytes (a directory: its entry count).
    pub size: u64,
    /// Names it has (a directory: 2 plus its subdirectories).
    pub nlink: u32,
    /// Mode, owner, times.
    pub meta: Meta,
}

/// One change to a file's bytes, kept until the file is synced.
#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
    Zero { offset: u64, len: u64 },
}

impl Op {
    fn apply(&self, bytes: &mut Vec<u8>) {
        match self {
            Op::Write { offset, data } => {
                let (start, end) = (*offset as usize, *offset as usize + data.len());
                if bytes.len() < end {
                    bytes.resize(end, 0);
                }
                bytes[start..end].copy_from_slice(data);
            }
            Op::SetLen(len) => bytes.resize(*len as usize, 0),
            Op::Zero { offset, len } => {
                let end = (offset + len).min(bytes.len() as u64) as usize;
                if let Some(range) = bytes.get_mut((*offset as usize).min(end)..end) {
                    range.fill(0);
                }
            }
        }
    }

    /// Bytes of data it carries.
    fn data_len(&self) -> u64 {
        match self {
            Op::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

#[derive(Debug, Default)]
struct FileBody {
    current: Vec<u8>,
    durable: Vec<u8>,
    /// Applied to `current`, not yet to `durable`, in order.
    pending: Vec<Op>,
}

#[derive(Debug)]
struct DirBody {
    current: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
    /// Where `..` leads (in the current tree).
    parent: Ino,
}

#[derive(Debug)]
enum Body {
    File(FileBody),
    Dir(DirBody),
}

#[derive(Debug)]
struct Node {
    body: Body,
    meta: Meta,
    durable_meta: Meta,
    /// Current entries naming it.
    links: u32,
    /// Durable entries (of existing directories) naming it.
    durable_links: u32,
    /// Open handles.
    open: u32,
}

impl Node {
    fn kind(&self) -> Kind {
        match self.body {
            Body::File(_) => Kind::File,
            Body::Dir(_) => Kind::Dir,
        }
    }
}

/// A directory listing entry: inode, kind, name.
pub type DirEntry = (Ino, Kind, OsString);

#[derive(Debug)]
struct Handle {
    ino: Ino,
    /// A directory's entries as they were when it was opened, so that
    /// `readdir` offsets stay valid while it changes.
    listing: Option<Vec<DirEntry>>,
}

/// What happened since the filesystem started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Write requests.
    pub writes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// `fsync`/`fdatasync` of files.
    pub fsyncs: u64,
    /// `fsync` of directories.
    pub fsyncdirs: u64,
    /// Power cuts.
    pub cuts: u64,
}

/// The `stats` control command's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Regular files (current).
    pub files: u64,
    /// Directories, the root included (current).
    pub dirs: u64,
    /// Bytes of all files as they read now.
    pub bytes_current: u64,
    /// Bytes of all files as a cut would leave them (of inodes that exist).
    pub bytes_durable: u64,
    /// Bytes of data written and not yet synced.
    pub bytes_pending: u64,
    /// Operations not yet synced (writes, truncations, allocations).
    pub pending_ops: u64,
    /// Since start.
    pub counters: Counters,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.counters;
        write!(
            f,
            "files={} dirs={} bytes_current={} bytes_durable={} bytes_pending={} pending_ops={} writes={} write_bytes={} fsyncs={} fsyncdirs={} cuts={}",
            self.files,
            self.dirs,
            self.bytes_current,
            self.bytes_durable,
            self.bytes_pending,
            self.pending_ops,
            c.writes,
            c.write_bytes,
            c.fsyncs,
            c.fsyncdirs,
            c.cuts
        )
    }
}

/// What a cut did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CutReport {
    /// Files left.
    pub files: u64,
    /// Directories left, the root included.
    pub dirs: u64,
    /// Inodes that vanished (not reachable through durable entries).
    pub dropped_inodes: u64,
    /// Files that had pending operations.
    pub reverted_files: u64,
    /// Pending operations that survived (cut-torn only).
    pub kept_ops: u64,
    /// Pending operations lost (a torn one counts as lost).
    pub dropped_ops: u64,
    /// Bytes of pending writes lost (a torn write's lost part).
    pub dropped_bytes: u64,
    /// Writes that survived as a torn prefix.
    pub torn_writes: u64,
}

impl std::fmt::Display for CutReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "files={} dirs={} dropped_inodes={} reverted_files={} kept_ops={} dropped_ops={} dropped_bytes={} torn_writes={}",
            self.files, self.dirs, self.dropped_inodes, self.reverted_files, self.kept_ops, self.dropped_ops, self.dropped_bytes, self.torn_writes
        )
    }
}

/// splitmix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
/// generators", 2014): the choices of a torn cut, from its seed.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The whole filesystem. See the module docs.
#[derive(Debug)]
pub struct Model {
    nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    /// Sum of the current sizes of all files.
    used_bytes: u64,
    capacity_bytes: u64,
    counters: Counters,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Model {
    /// An empty filesystem (a root directory, mode 0755, owned by root)
    /// that holds at most `capacity_bytes` of file data (`ENOSPC` beyond).
    pub fn new(capacity_bytes: u64) -> Model {
        let meta = Meta::new(0o755, 0, 0);
        let root = Node {
            body: Body::Dir(DirBody { current: BTreeMap::new(), durable: BTreeMap::new(), parent: ROOT }),
            meta,
            durable_meta: meta,
            links: 1,
            durable_links: 1,
            open: 0,
        };
        Model {
            nodes: BTreeMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            used_bytes: 0,
            capacity_bytes,
            counters: Counters::default(),
        }
    }

    fn node(&self, ino: Ino) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(libc::ENOENT)
    }

    fn node_mut(&mut self, ino: Ino) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(libc::ENOENT)
    }

    fn dir(&self, ino: Ino) -> FsResult<&DirBody> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> FsResult<&mut DirBody> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(libc::ENOTDIR),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> FsResult<&mut FileBody> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(libc::EISDIR),
        }
    }

    /// The inode an open handle refers to; `EIO` for a handle that a cut
    /// (or a release) ended.
    fn handle_ino(&self, fh: u64) -> FsResult<Ino> {
        let ino = self.handles.get(&fh).ok_or(libc::EIO)?.ino;
        self.node(ino).map_err(|_| libc::EIO)?;
        Ok(ino)
    }

    /// What `stat` says about `ino`.
    pub fn attr(&self, ino: Ino) -> FsResult<Attr> {
        let n = self.node(ino)?;
        let (size, nlink) = match &n.body {
            Body::File(f) => (f.current.len() as u64, n.links),
            Body::Dir(d) => {
                let subdirs = d.current.values().filter(|i| self.nodes.get(i).is_some_and(|c| c.kind() == Kind::Dir)).count();
                (d.current.len() as u64, 2 + subdirs as u32)
            }
        };
        Ok(Attr { ino, kind: n.kind(), size, nlink, meta: n.meta })
    }

    /// The inode named `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Attr> {
        let d = self.dir(parent)?;
        let ino = match name.as_encoded_bytes() {
            b"." => parent,
            b".." => d.parent,
            _ => *d.current.get(name).ok_or(libc::ENOENT)?,
        };
        self.attr(ino)
    }

    fn check_new_name(&self, parent: Ino, name: &OsStr) -> FsResult<()> {
        if name.len() > MAX_NAME_LEN {
            return Err(libc::ENAMETOOLONG);
        }
        if name.is_empty() || name == "." || name == ".." || name.as_encoded_bytes().contains(&b'/') {
            return Err(libc::EINVAL);
        }
        if self.dir(parent)?.current.contains_key(name) {
            return Err(libc::EEXIST);
        }
        Ok(())
    }

    fn touch_dir(&mut self, ino: Ino) {
        if let Ok(n) = self.node_mut(ino) {
            let t = now();
            n.meta.mtime = t;
            n.meta.ctime = t;
        }
    }

    /// Creates a file or directory `name` in `parent` (`EEXIST` if taken).
    pub fn create(&mut self, parent: Ino, name: &OsStr, kind: Kind, perm: u32, uid: u32, gid: u32) -> FsResult<Attr> {
        self.check_new_name(parent, name)?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let body = match kind {
            Kind::File => Body::File(FileBody::default()),
            Kind::Dir => Body::Dir(DirBody { current: BTreeMap::new(), durable: BTreeMap::new(), parent }),
        };
        let meta = Meta::new(perm, uid, gid);
        // Its own metadata is durable from the start: it is unreachable
        // after a cut until its name is durable anyway.
        self.nodes.insert(ino, Node { body, meta, durable_meta: meta, links: 1, durable_links: 0, open: 0 });
        self.dir_mut(parent)?.current.insert(name.to_owned(), ino);
        self.touch_dir(parent);
        self.attr(ino)
    }

    /// Removes file `name` from `parent`.
    pub fn unlink(&mut self, parent: Ino, name: &OsStr) -> FsResult<()> {
        let ino = *self.dir(parent)?.current.get(name).ok_or(libc::ENOENT)?;
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EISDIR);
        }
        self.remove_entry(parent, name, ino);
        self.free_if_unused(ino);
        Ok(())
    }

    /// Removes the empty directory `name` from `parent`.
    pub fn rmdir(&mut self, parent: Ino, name: &OsStr) -> FsResult<()> {
        let ino = *self.dir(parent)?.current.get(name).ok_or(libc::ENOENT)?;
        if !self.dir(ino)?.current.is_empty() {
            return Err(libc::ENOTEMPTY);
        }
        self.remove_entry(parent, name, ino);
        self.free_if_unused(ino);
        Ok(())
    }

    fn remove_entry(&mut self, parent: Ino, name: &OsStr, ino: Ino) {
        if let Ok(d) = self.dir_mut(parent) {
            d.current.remove(name);
        }
        self.touch_dir(parent);
        if let Ok(n) = self.node_mut(ino) {
            n.links -= 1;
            n.meta.ctime = now();
        }
    }

    /// Whether `ino` is `dir` or lies below it (in the current tree).
    fn is_within(&self, mut ino: Ino, dir: Ino) -> bool {
        loop {
            if ino == dir {
                return true;
            }
            match self.dir(ino) {
                Ok(d) if d.parent != ino => ino = d.parent,
                _ => return false,
            }
        }
    }

    /// `renameat2` without `RENAME_EXCHANGE`; `noreplace` is
    /// `RENAME_NOREPLACE`. Replaces an existing file, or an empty
    /// directory with a directory.
    pub fn rename(&mut self, parent: Ino, name: &OsStr, new_parent: Ino, new_name: &OsStr, noreplace: bool) -> FsResult<()> {
        let src = *self.dir(parent)?.current.get(name).ok_or(libc::ENOENT)?;
        self.dir(new_parent)?;
        if new_name.len() > MAX_NAME_LEN {
            return Err(libc::ENAMETOOLONG);
        }
        let src_kind = self.node(src)?.kind();
        if src_kind == Kind::Dir && self.is_within(new_parent, src) {
            return Err(libc::EINVAL);
        }
        let dst = self.dir(new_parent)?.current.get(new_name).copied();
        if let Some(dst) = dst {
            if noreplace {
                return Err(libc::EEXIST);
            }
            if dst == src {
                return Ok(()); // two names of one inode: POSIX says do nothing
            }
            match (src_kind, self.node(dst)?.kind()) {
                (Kind::Dir, Kind::Dir) if !self.dir(dst)?.current.is_empty() => return Err(libc::ENOTEMPTY),
                (Kind::Dir, Kind::File) => return Err(libc::ENOTDIR),
                (Kind::File, Kind::Dir) => return Err(libc::EISDIR),
                _ => {}
            }
            self.remove_entry(new_parent, new_name, dst);
        }
        self.dir_mut(parent)?.current.remove(name);
        self.dir_mut(new_parent)?.current.insert(new_name.to_owned(), src);
        if let Body::Dir(d) = &mut self.node_mut(src)?.body {
            d.parent = new_parent;
        }
        self.node_mut(src)?.meta.ctime = now();
        self.touch_dir(parent);
        self.touch_dir(new_parent);
        if let Some(dst) = dst {
            self.free_if_unused(dst);
        }
        Ok(())
    }

    /// A second name `new_name` in `new_parent` for file `ino`.
    pub fn link(&mut self, ino: Ino, new_parent: Ino, new_name: &OsStr) -> FsResult<Attr> {
        if self.node(ino)?.kind() == Kind::Dir {
            return Err(libc::EPERM);
        }
        self.check_new_name(new_parent, new_name)?;
        self.dir_mut(new_parent)?.current.insert(new_name.to_owned(), ino);
        let n = self.node_mut(ino)?;
        n.links += 1;
        n.meta.ctime = now();
        self.touch_dir(new_parent);
        self.attr(ino)
    }

    /// `chmod`, `chown`, `truncate`, `utimens`: whatever is `Some`.
    pub fn setattr(
        &mut self,
        ino: Ino,
        perm: Option<u32>,
        owner: (Option<u32>, Option<u32>),
        size: Option<u64>,
        times: (Option<SystemTime>, Option<SystemTime>),
    ) -> FsResult<Attr> {
        if let Some(size) = size {
            self.change_file(ino, Op::SetLen(size))?;
        }
        let n = self.node_mut(ino)?;
        if let Some(p) = perm {
            n.meta.perm = p & 0o7777;
        }
        if let Some(uid) = owner.0 {
            n.meta.uid = uid;
        }
        if let Some(gid) = owner.1 {
            n.meta.gid = gid;
        }
        if let Some(t) = times.0 {
            n.meta.atime = t;
        }
        if let Some(t) = times.1 {
            n.meta.mtime = t;
        }
        n.meta.ctime = now();
        self.attr(ino)
    }

    /// Applies `op` to file `ino`'s current bytes and queues it for the
    /// next sync; refuses what would pass [`MAX_FILE_BYTES`] or the
    /// capacity.
    /// Sets how much file data the filesystem holds (`ENOSPC` beyond):
    /// lower than what is used, nothing more may grow (a full disk).
    pub fn set_capacity(&mut self, capacity_bytes: u64) {
        self.capacity_bytes = capacity_bytes;
    }

    fn change_file(&mut self, ino: Ino, op: Op) -> FsResult<()> {
        let (used, capacity) = (self.used_bytes, self.capacity_bytes);
        let f = self.file_mut(ino)?;
        let old_len = f.current.len() as u64;
        let new_len = match &op {
            Op::Write { offset, data } => offset.checked_add(data.len() as u64).ok_or(libc::EFBIG)?.max(old_len),
            Op::SetLen(len) => *len,
            Op::Zero { .. } => old_len,
        };
        if new_len > MAX_FILE_BYTES {
            return Err(libc::EFBIG);
        }
        if new_len > old_len && used + (new_len - old_len) > capacity {
            return Err(libc::ENOSPC);
        }
        op.apply(&mut f.current);
        f.pending.push(op);
        self.used_bytes = used + new_len - old_len;
        let n = self.node_mut(ino)?;
        let t = now();
        n.meta.mtime = t;
        n.meta.ctime = t;
        Ok(())
    }

    /// Opens `ino` (a file, or with `dir` a directory); returns a handle.
    pub fn open(&mut self, ino: Ino, dir: bool) -> FsResult<u64> {
        let listing = match (dir, self.node(ino)?.kind()) {
            (false, Kind::File) => None,
            (false, Kind::Dir) => return Err(libc::EISDIR),
            (true, Kind::File) => return Err(libc::ENOTDIR),
            (true, Kind::Dir) => {
                let d = self.dir(ino)?;
                let mut l = vec![(ino, Kind::Dir, OsString::from(".")), (d.parent, Kind::Dir, OsString::from(".."))];
                for (name, &i) in &d.current {
                    l.push((i, self.node(i)?.kind(), name.clone()));
                }
                Some(l)
            }
        };
        self.node_mut(ino)?.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, Handle { ino, listing });
        Ok(fh)
    }

    /// Closes a handle (unknown ones, e.g. from before a cut, are ignored).
    pub fn release(&mut self, fh: u64) {
        if let Some(h) = self.handles.remove(&fh) {
            if let Ok(n) = self.node_mut(h.ino) {
                n.open -= 1;
                self.free_if_unused(h.ino);
            }
        }
    }

    /// Up to `size` bytes at `offset` through handle `fh`.
    pub fn read(&mut self, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let ino = self.handle_ino(fh)?;
        let f = self.file_mut(ino)?;
        let start = (offset.min(f.current.len() as u64)) as usize;
        let end = (offset.saturating_add(u64::from(size)).min(f.current.len() as u64)) as usize;
        Ok(f.current[start..end].to_vec())
    }

    /// Writes `data` at `offset` through handle `fh`; returns its length.
    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let ino = self.handle_ino(fh)?;
        let n = u32::try_from(data.len()).map_err(|_| libc::EINVAL)?;
        self.change_file(ino, Op::Write { offset, data: data.to_vec() })?;
        self.counters.writes += 1;
        self.counters.write_bytes += u64::from(n);
        Ok(n)
    }

    /// `fallocate`: mode 0 (allocate, extending the size), `KEEP_SIZE`,
    /// `PUNCH_HOLE | KEEP_SIZE` and `ZERO_RANGE` (with or without
    /// `KEEP_SIZE`); others are `EOPNOTSUPP`.
    pub fn fallocate(&mut self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        let ino = self.handle_ino(fh)?;
        let end = offset.checked_add(len).ok_or(libc::EFBIG)?;
        let size = self.attr(ino)?.size;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zero = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => false,
            libc::FALLOC_FL_PUNCH_HOLE if keep => true,
            libc::FALLOC_FL_ZERO_RANGE => true,
            _ => return Err(libc::EOPNOTSUPP),
        };
        if zero && offset < size {
            self.change_file(ino, Op::Zero { offset, len })?;
        }
        if !keep && end > size {
            self.change_file(ino, Op::SetLen(end))?;
        }
        Ok(())
    }

    /// The entries of an open directory from index `offset` on.
    pub fn readdir(&self, fh: u64, offset: u64) -> FsResult<&[DirEntry]> {
        let listing = self.handles.get(&fh).and_then(|h| h.listing.as_deref()).ok_or(libc::EIO)?;
        Ok(listing.get(offset as usize..).unwrap_or_default())
    }

    /// `fsync`/`fdatasync` of a file (or of a directory: [`Model::fsyncdir`]).
    pub fn fsync(&mut self, ino: Ino) -> FsResult<()> {
        if self.node(ino)?.kind() == Kind::Dir {
            return self.fsyncdir(ino);
        }
        let f = self.file_mut(ino)?;
        for op in f.pending.drain(..) {
            op.apply(&mut f.durable);
        }
        let n = self.node_mut(ino)?;
        n.durable_meta = n.meta;
        self.counters.fsyncs += 1;
        Ok(())
    }

    /// `fsync` of a directory: its entries as they are become durable.
    pub fn fsyncdir(&mut self, ino: Ino) -> FsResult<()> {
        let d = self.dir_mut(ino)?;
        let new = d.current.clone();
        let old = std::mem::replace(&mut d.durable, new.clone());
        for i in new.values() {
            if let Ok(n) = self.node_mut(*i) {
                n.durable_links += 1;
            }
        }
        for i in old.values() {
            if let Ok(n) = self.node_mut(*i) {
                n.durable_links -= 1;
            }
        }
        for i in old.values() {
            self.free_if_unused(*i);
        }
        let n = self.node_mut(ino)?;
        n.durable_meta = n.meta;
        self.counters.fsyncdirs += 1;
        Ok(())
    }

    /// `sync(2)` for everything: every file and directory made durable.
    pub fn sync_all(&mut self) {
        let inos: Vec<Ino> = self.nodes.keys().copied().collect();
        for ino in inos {
            // Only fails for an inode freed by an earlier directory sync.
            let _ = self.fsync(ino);
        }
    }

    /// Frees `ino` (and what only it held durably) if nothing refers to it.
    fn free_if_unused(&mut self, ino: Ino) {
        let mut work = vec![ino];
        while let Some(ino) = work.pop() {
            let unused = self.nodes.get(&ino).is_some_and(|n| n.links == 0 && n.durable_links == 0 && n.open == 0);
            if ino == ROOT || !unused {
                continue;
            }
            let Some(node) = self.nodes.remove(&ino) else { continue };
            match node.body {
                Body::File(f) => self.used_bytes -= f.current.len() as u64,
                Body::Dir(d) => {
                    for i in d.durable.values() {
                        if let Some(n) = self.nodes.get_mut(i) {
                            n.durable_links -= 1;
                            work.push(*i);
                        }
                    }
                }
            }
        }
    }

    /// A power cut; with `torn_seed`, each file keeps a random prefix of
    /// its pending operations (see the module docs).
    pub fn cut(&mut self, torn_seed: Option<u64>) -> CutReport {
        let mut rng = torn_seed.map(SplitMix);
        let mut r = CutReport::default();
        for node in self.nodes.values_mut() {
            node.meta = node.durable_meta;
            match &mut node.body {
                Body::File(f) => {
                    revert_file(f, rng.as_mut(), &mut r);
                }
                Body::Dir(d) => d.current = d.durable.clone(),
            }
        }
        let reached = self.prune_to_durable_tree();
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reached.contains_key(ino));
        r.dropped_inodes = (before - self.nodes.len()) as u64;
        self.used_bytes = 0;
        for (ino, n) in self.nodes.iter_mut() {
            let links = if *ino == ROOT { 1 } else { reached[ino] };
            n.links = links;
            n.durable_links = links;
            n.open = 0;
            match &n.body {
                Body::File(f) => {
                    r.files += 1;
                    self.used_bytes += f.current.len() as u64;
                }
                Body::Dir(_) => r.dirs += 1,
            }
        }
        self.handles.clear();
        self.counters.cuts += 1;
        r
    }

    /// Walks the (reverted) tree from the root; removes entries to inodes
    /// that do not exist and second names of directories. Returns every
    /// inode reached and how many entries name it.
    fn prune_to_durable_tree(&mut self) -> BTreeMap<Ino, u32> {
        let mut reached = BTreeMap::from([(ROOT, 0u32)]);
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let entries: Vec<(OsString, Ino)> = match self.dir(dir) {
                Ok(d) => d.current.iter().map(|(n, i)| (n.clone(), *i)).collect(),
                Err(_) => continue,
            };
            let mut drop = HashSet::new();
            for (name, ino) in entries {
                let kind = self.nodes.get(&ino).map(Node::kind);
                let seen = reached.contains_key(&ino);
                if kind.is_none() || (kind == Some(Kind::Dir) && seen) {
                    drop.insert(name);
                    continue;
                }
                *reached.entry(ino).or_insert(0) += 1;
                if !seen && kind == Some(Kind::Dir) {
                    if let Ok(d) = self.dir_mut(ino) {
                        d.parent = dir;
                    }
                    queue.push_back(ino);
                }
            }
            if let Ok(d) = self.dir_mut(dir) {
                d.current.retain(|n, _| !drop.contains(n));
                d.durable.retain(|n, _| !drop.contains(n));
            }
        }
        reached
    }

    /// Counts for the `stats` command.
    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            files: 0,
            dirs: 0,
            bytes_current: 0,
            bytes_durable: 0,
            bytes_pending: 0,
            pending_ops: 0,
            counters: self.counters,
        };
        for n in self.nodes.values() {
            match &n.body {
                Body::File(f) => {
                    s.files += 1;
                    s.bytes_current += f.current.len() as u64;
                    s.bytes_durable += f.durable.len() as u64;
                    s.bytes_pending += f.pending.iter().map(Op::data_len).sum::<u64>();
                    s.pending_ops += f.pending.len() as u64;
                }
                Body::Dir(_) => s.dirs += 1,
            }
        }
        s
    }

    /// `statfs`: (capacity in bytes, bytes used, inodes).
    pub fn usage(&self) -> (u64, u64, u64) {
        (self.capacity_bytes, self.used_bytes, self.nodes.len() as u64)
    }
}

/// Reverts one file to its durable bytes, after letting a random prefix
/// of its pending operations through first if `rng` is given.
fn revert_file(f: &mut FileBody, mut rng: Option<&mut SplitMix>, r: &mut CutReport) {
    let n = f.pending.len();
    if n == 0 {
        return;
    }
    r.reverted_files += 1;
    let keep = rng.as_mut().map_or(0, |g| g.below(n as u64 + 1) as usize);
    for (i, op) in f.pending.drain(..).enumerate() {
        if i < keep {
            op.apply(&mut f.durable);
            r.kept_ops += 1;
            continue;
        }
        r.dropped_ops += 1;
        r.dropped_bytes += op.data_len();
        let Some(g) = rng.as_mut().filter(|_| i == keep) else { continue };
        if let Op::Write { offset, data } = &op {
            // Sector boundaries strictly inside the write.
            let first = offset / SECTOR + 1;
            let last = (offset + data.len() as u64).div_ceil(SECTOR);
            if last > first && g.below(2) == 0 {
                let end = (first + g.below(last - first)) * SECTOR;
                let part = &data[..(end - offset) as usize];
                Op::Write { offset: *offset, data: part.to_vec() }.apply(&mut f.durable);
                r.torn_writes += 1;
                r.dropped_bytes -= part.len() as u64;
            }
        }
    }
    f.current = f.durable.clone();
}
