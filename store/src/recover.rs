//! Recovery of a stream's last segment at start-up: cut a torn or corrupt
//! tail at the last whole batch, keeping corrupt bytes aside first. Holes
//! in the middle (damaged bytes with valid batches after them) are left as
//! they are: the valid batches after them stay, and readers skip the hole
//! with a notice of exactly what it lost (see [`crate::scan`]).
//!
//! Every file is opened in the segment's directory by its fd, never
//! through a symbolic link ([`Dir`]); the temporary side file is created
//! anew (`O_EXCL`, after removing one a crash left).
//!
//! Order for corrupt damage, so a crash at any step loses nothing:
//! 1. copy the bytes from the damage to the end (but for trailing zeros)
//!    into `<name>.corrupt-<offset>.tmp`,
//!    fsync it, rename it to `<name>.corrupt-<offset>`, fsync the directory;
//! 2. truncate the segment at the damage and fsync it.
//!
//! A crash between 1 and 2 leaves the segment as it was, and the next
//! recovery writes the same side file again (same bytes, same name). Torn
//! damage (nothing valid after it) is the normal result of a crash during
//! a write, and is cut without a side file.

use crate::dir::Dir;
use crate::parse_segment_file_name;
use crate::scan::{scan_segment, DamageKind, Scan};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// What [`recover_segment`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The scan of the file as it was found.
    pub scan: Scan,
    /// Bytes cut from the end of the file (0 if it was whole).
    pub truncated_bytes: u64,
    /// Where the cut bytes were kept, for corrupt damage.
    pub side_file: Option<PathBuf>,
}

impl Recovery {
    /// Length of the file now.
    pub fn len(&self) -> u64 {
        self.scan.valid_len
    }

    /// Whether the file is now empty.
    pub fn is_empty(&self) -> bool {
        self.scan.valid_len == 0
    }

    /// Stream position after the last whole batch: where the stream
    /// resumes.
    pub fn end_position(&self) -> u64 {
        self.scan.end_position
    }
}

/// Scans the segment at `path` (named by [`segment_file_name`]) and cuts
/// any damage off its end: see the module docs. The file must not be
/// written meanwhile (the daemon recovers before its archiver starts).
///
/// [`segment_file_name`]: crate::segment_file_name
pub fn recover_segment(path: &Path) -> io::Result<Recovery> {
    let (dir, name) = Dir::of(path)?;
    recover_segment_in(&dir, name)
}

/// [`recover_segment`] of the segment `name` in `dir`.
pub fn recover_segment_in(dir: &Dir, name: &OsStr) -> io::Result<Recovery> {
    let Some(first_position) = name.to_str().and_then(parse_segment_file_name) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a segment file name", dir.join(name).display())));
    };
    let mut bytes = Vec::new();
    dir.open_file(name)?.read_to_end(&mut bytes)?;
    let scan = scan_segment(&bytes, first_position);
    let Some(damage) = &scan.damage else {
        return Ok(Recovery { scan, truncated_bytes: 0, side_file: None });
    };
    let cut = &bytes[damage.offset as usize..];
    let side_file = match damage.kind {
        DamageKind::Torn => None,
        DamageKind::Corrupt { .. } => {
            // The bad batch whole, and any non-zero bytes after it; not
            // the zeros of a preallocated segment's unused end.
            let declared = crate::BatchHeader::parse(cut).map_or(0, |h| h.batch_len().min(cut.len() as u64) as usize);
            let meaningful = cut.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1).max(declared);
            Some(keep_aside(dir, name, damage.offset, &cut[..meaningful])?)
        }
    };
    let file = dir.open_rw(name)?;
    file.set_len(damage.offset)?;
    file.sync_all()?;
    Ok(Recovery { truncated_bytes: cut.len() as u64, side_file, scan })
}

/// Writes `bytes` durably to `<segment>.corrupt-<offset>` in `dir` (or,
/// if a file of that name holds other bytes, `...-<offset>.<n>`); returns
/// its path.
fn keep_aside(dir: &Dir, segment: &OsStr, offset: u64, bytes: &[u8]) -> io::Result<PathBuf> {
    let base = format!("{}.corrupt-{offset}", segment.to_string_lossy());
    for n in 0..1000u32 {
        let name = if n == 0 { base.clone() } else { format!("{base}.{n}") };
        let mut old = Vec::new();
        match dir.open_file(&name).and_then(|mut f| f.read_to_end(&mut old)) {
            Ok(_) if old == bytes => return Ok(dir.join(&name)), // an earlier recovery got this far
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let tmp = format!("{name}.tmp");
        let mut f = dir.create_fresh(&tmp, 0o640)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        dir.rename(&tmp, &name)?;
        dir.sync()?;
        return Ok(dir.join(&name));
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("too many side files named {base}.*")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_batch, segment_file_name, FrameBuf, StreamLog};

    /// A segment of two batches whose last one has a flipped bit (corrupt
    /// damage: kept aside, then cut), and the length of the first.
    fn corrupt_segment() -> (Vec<u8>, usize) {
        let mut frames = FrameBuf::new(0);
        frames.data(1, 1, b"first");
        let mut seg = encode_batch(0, &[frames.as_bytes()]).unwrap();
        let first_len = seg.len();
        let mut more = FrameBuf::new(frames.end_position());
        more.data(2, 1, b"second");
        seg.extend_from_slice(&encode_batch(frames.end_position(), &[more.as_bytes()]).unwrap());
        seg[first_len + 70] ^= 1;
        (seg, first_len)
    }

    /// Links planted in a stream directory (in place of the side file's
    /// temporary, or of the segment itself) are never followed: the file
    /// they point to is neither written nor truncated.
    #[test]
    fn recovery_never_follows_links_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"not rill's to touch").unwrap();
        let (seg, first_len) = corrupt_segment();
        let name = segment_file_name(0);
        let path = dir.path().join(&name);
        std::fs::write(&path, &seg).unwrap();
        let tmp = dir.path().join(format!("{name}.corrupt-{first_len}.tmp"));
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();

        let r = recover_segment(&path).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"not rill's to touch");
        let side = r.side_file.expect("corrupt damage is kept aside");
        assert!(!std::fs::symlink_metadata(&side).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&side).unwrap(), &seg[first_len..]);
        assert!(std::fs::symlink_metadata(&tmp).is_err(), "the planted link is gone");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), first_len as u64);

        // A segment that is a link: refused, its target left as it is.
        let linked = dir.path().join(segment_file_name(1 << 20));
        std::os::unix::fs::symlink(&victim, &linked).unwrap();
        let e = recover_segment(&linked).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(StreamLog::open(dir.path()).is_err(), "indexing does not read through the link");
        assert_eq!(std::fs::read(&victim).unwrap(), b"not rill's to touch");
        // And so is a stream directory that is a link.
        let dir_link = outside.path().join("stream");
        std::os::unix::fs::symlink(dir.path(), &dir_link).unwrap();
        assert!(crate::list_segments(&dir_link).is_err());
        assert!(recover_segment(&dir_link.join(&name)).is_err());
    }
}
