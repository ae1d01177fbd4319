//! A directory held open by its fd, whose files are opened relative to it
//! and never through a symbolic link ([`Dir`]).
//!
//! Paths are looked up again at every open, so a path whose directories or
//! last name another user can swap for a symbolic link may lead anywhere.
//! A `Dir` is opened once (`O_NOFOLLOW`: the directory itself must not be
//! a link), and every name in it is then a single component opened with
//! `openat` and `O_NOFOLLOW`: renaming or replacing the directories above
//! it changes nothing, and a link planted in it is an error, never
//! followed. Files are opened only if they are regular files; new ones are
//! created with `O_EXCL` (a name that exists, link or not, is an error).
//! Everything is `O_CLOEXEC`.

use rustix::fs::{AtFlags, FileType, Mode, OFlags, CWD};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open directory. Clones share the fd.
#[derive(Debug, Clone)]
pub struct Dir {
    fd: Arc<OwnedFd>,
    /// For messages only: files are never opened by it.
    path: PathBuf,
}

/// Flags of every directory open.
const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);
/// Flags of every file open.
const FILE_FLAGS: OFlags = OFlags::NOFOLLOW.union(OFlags::CLOEXEC);

impl Dir {
    /// Opens the directory at `path`; an error if it (its last component)
    /// is a symbolic link or not a directory.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = rustix::fs::openat(CWD, path, DIR_FLAGS, Mode::empty()).map_err(|e| refused(CWD, path.as_os_str(), e.into()))?;
        Ok(Dir { fd: Arc::new(fd), path: path.to_path_buf() })
    }

    /// The directory holding the file at `path`, and the file's name.
    pub fn of(path: &Path) -> io::Result<(Dir, &OsStr)> {
        let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: no file name", path.display())))?;
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        Ok((Dir::open(parent)?, name))
    }

    /// The path it was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()` joined with `name` (for messages).
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// Opens directory `name` in it (not a symbolic link).
    pub fn open_dir(&self, name: impl AsRef<OsStr>) -> io::Result<Dir> {
        let name = checked(name.as_ref())?;
        let fd = rustix::fs::openat(self, name, DIR_FLAGS, Mode::empty()).map_err(|e| refused(self.as_fd(), name, e.into()))?;
        Ok(Dir { fd: Arc::new(fd), path: self.path.join(name) })
    }

    /// Creates directory `name` in it with `mode`; whether it was created
    /// (`false`: something of that name exists, maybe not a directory).
    pub fn create_dir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<bool> {
        match rustix::fs::mkdirat(self, checked(name.as_ref())?, Mode::from_bits_truncate(mode)) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens regular file `name` read-only.
    pub fn open_file(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        self.open_regular(name.as_ref(), OFlags::RDONLY)
    }

    /// The metadata of regular file `name` (opened read-only, for its
    /// fstat).
    pub fn metadata(&self, name: impl AsRef<OsStr>) -> io::Result<std::fs::Metadata> {
        self.open_file(name)?.metadata()
    }

    /// Opens regular file `name` for reading and writing.
    pub fn open_rw(&self, name: impl AsRef<OsStr>) -> io::Result<File> {
        self.open_regular(name.as_ref(), OFlags::RDWR)
    }

    fn open_regular(&self, name: &OsStr, flags: OFlags) -> io::Result<File> {
        let name = checked(name)?;
        let fd = rustix::fs::openat(self, name, flags | FILE_FLAGS, Mode::empty()).map_err(|e| refused(self.as_fd(), name, e.into()))?;
        if FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode) != FileType::RegularFile {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok(File::from(fd))
    }

    /// Creates file `name` (read-write, `mode`); an error if anything of
    /// that name exists (`O_EXCL`: a planted link is not followed either).
    pub fn create_new(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | FILE_FLAGS;
        let fd = rustix::fs::openat(self, checked(name.as_ref())?, flags, Mode::from_bits_truncate(mode))?;
        Ok(File::from(fd))
    }

    /// [`create_new`](Self::create_new) after removing whatever had the
    /// name (a temporary file left by a crash, or a planted link).
    pub fn create_fresh(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        match self.remove(name.as_ref()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.create_new(name, mode)
    }

    /// An unnamed file in it (`O_TMPFILE`), gone when closed.
    pub fn tmpfile(&self) -> io::Result<File> {
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(self, ".", flags, Mode::from_bits_truncate(0o600))?))
    }

    /// Renames `from` to `to`, both in it (`to` replaced if it exists; a
    /// link is renamed, never followed).
    pub fn rename(&self, from: impl AsRef<OsStr>, to: impl AsRef<OsStr>) -> io::Result<()> {
        Ok(rustix::fs::renameat(self, checked(from.as_ref())?, self, checked(to.as_ref())?)?)
    }

    /// Removes file `name` (a link is removed, not what it points to).
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(self, checked(name.as_ref())?, AtFlags::empty())?)
    }

    /// Fsyncs the directory: the names in it become durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(self)?)
    }

    /// A new fd of the directory, as a file (for its metadata, its mode,
    /// a lock, or a sync that outlives this call).
    pub fn dup(&self) -> io::Result<File> {
        Ok(File::from(self.fd.try_clone()?))
    }

    /// The names in it, but `.` and `..`.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(self)? {
            let name = entry?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                names.push(OsString::from_vec(name));
            }
        }
        Ok(names)
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `name` if it is one component (no `/`, not `.` or `..`).
fn checked(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a file name")));
    }
    Ok(name)
}

/// The error of opening `name` in `dir` with `O_NOFOLLOW`, said plainly
/// if `name` is a symbolic link (the kernel says ELOOP, or ENOTDIR for a
/// directory open). Like the kernel's, it does not name the file: callers
/// do.
fn refused(dir: BorrowedFd<'_>, name: &OsStr, e: io::Error) -> io::Error {
    let link = matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() || code == rustix::io::Errno::NOTDIR.raw_os_error())
        && rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Symlink);
    if link {
        return io::Error::new(io::ErrorKind::InvalidInput, "a symbolic link (not followed)");
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_refused_or_replaced_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"victim").unwrap();
        let dir = Dir::open(root.path()).unwrap();
        symlink(&victim, root.path().join("link")).unwrap();
        symlink(outside.path(), root.path().join("dirlink")).unwrap();

        for e in [dir.open_file("link").unwrap_err(), dir.open_rw("link").unwrap_err(), dir.open_dir("dirlink").unwrap_err()] {
            assert_eq!(e.to_string(), "a symbolic link (not followed)");
        }
        assert!(Dir::open(&root.path().join("dirlink")).unwrap_err().to_string().contains("symbolic link"));
        assert_eq!(dir.create_new("link", 0o600).unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert!(!dir.create_dir("link", 0o700).unwrap(), "mkdir does not follow either");
        dir.rename("link", "moved").unwrap();
        dir.remove("moved").unwrap();
        std::fs::write(&victim, b"victim").unwrap();
        symlink(&victim, root.path().join("stale.tmp")).unwrap();
        std::io::Write::write_all(&mut dir.create_fresh("stale.tmp", 0o600).unwrap(), b"mine").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
        assert_eq!(std::fs::read(root.path().join("stale.tmp")).unwrap(), b"mine");

        // Not a regular file; not one component.
        std::fs::create_dir(root.path().join("sub")).unwrap();
        assert!(dir.open_file("sub").unwrap_err().to_string().contains("not a regular file"));
        for bad in ["", ".", "..", "a/b", "../victim"] {
            assert_eq!(dir.open_file(bad).unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
        // The directory fd outlives a rename of its path.
        let sub = dir.open_dir("sub").unwrap();
        sub.create_new("f", 0o600).unwrap();
        std::fs::rename(root.path().join("sub"), root.path().join("sub2")).unwrap();
        symlink(outside.path(), root.path().join("sub")).unwrap();
        assert!(sub.open_file("f").is_ok());
        let mut names = sub.names().unwrap();
        names.sort();
        assert_eq!(names, ["f"]);
        assert!(!outside.path().join("f").exists());
    }
}
