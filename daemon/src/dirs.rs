//! rilld's directories: the state directory, the data directory, and each
//! persisted stream's directory in it.
//!
//! Each is opened once, by an fd ([`rill_store::Dir`]), without following
//! a symbolic link, and must belong to rilld's effective uid and be
//! writable by nobody else: whoever else could write one could plant
//! files or links in it, or swap it for another. One that does not pass
//! is refused, naming it and why (rilld does not start, or a stream
//! directory is left alone); one that passes is set to mode 0700 (clients
//! get rings and segments as fds, never by path, so `[[allow]]` rules
//! cannot be bypassed through it). Files in them are opened relative to
//! the directory's fd, never through a link (see `rill_store::dir`).

use rill_store::Dir;
use std::ffi::OsStr;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

/// Creates directory `path` (and missing parents) with mode 0700 if
/// nothing of that name exists; whether it did. Something that exists is
/// left for [`open_private`] to judge.
pub fn create(path: &Path) -> std::io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map(|()| true),
        Err(e) => Err(e),
    }
}

/// Opens `path`, rilld's `what` (set by `flag`), after [`check_private`];
/// the error names the directory, why it is refused and what to do.
pub fn open_private(path: &Path, what: &str, flag: &str) -> anyhow::Result<Dir> {
    let refuse = |why: String| anyhow::anyhow!("refusing {what} {}: {why}; fix it, or give rilld a {what} of its own ({flag})", path.display());
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(refuse("it is a symbolic link (rilld never follows links to its directories)".into()));
    }
    let dir = Dir::open(path).map_err(|e| refuse(e.to_string()))?;
    check_private(&dir).map_err(refuse)?;
    Ok(dir)
}

/// Refuses `dir` if another uid owns it or group or others may write it
/// (the reason, for humans); else sets its mode to 0700.
pub fn check_private(dir: &Dir) -> Result<(), String> {
    let file = dir.dup().map_err(|e| format!("{}: {e}", dir.path().display()))?;
    let m = file.metadata().map_err(|e| format!("{}: {e}", dir.path().display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if m.uid() != me {
        return Err(format!("{} belongs to uid {}, not to rilld's uid {me}", dir.path().display(), m.uid()));
    }
    if m.mode() & 0o022 != 0 {
        return Err(format!("{} is writable by group or others (mode {:o}), who could plant files or links in it", dir.path().display(), m.mode() & 0o7777));
    }
    if m.mode() & 0o7777 != 0o700 {
        file.set_permissions(std::fs::Permissions::from_mode(0o700)).map_err(|e| format!("restricting {}: {e}", dir.path().display()))?;
    }
    Ok(())
}

/// Takes an exclusive flock on `dir` (held while the returned file is
/// open); fails, naming the directory, if another process holds it.
pub fn lock(dir: &Dir) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use nix::fcntl::{Flock, FlockArg};
    let f = dir.dup().map_err(|e| anyhow::anyhow!("opening {}: {e}", dir.path().display()))?;
    Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!("{} is in use by another rilld (flock: {e}); give each daemon its own directories", dir.path().display())
    })
}

/// The file name of `path`, a file listed in a directory (what to open
/// relative to the directory's fd).
pub fn file_name(path: &Path) -> &OsStr {
    path.file_name().unwrap_or_default()
}
