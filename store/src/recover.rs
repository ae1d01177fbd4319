//! Recovery of a stream's last segment at start-up: cut a torn or corrupt
//! tail at the last whole batch, keeping corrupt bytes aside first. Holes
//! in the middle (damaged bytes with valid batches after them) are left as
//! they are: the valid batches after them stay, and readers skip the hole
//! with a notice of exactly what it lost (see [`crate::scan`]).
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

use crate::parse_segment_file_name;
use crate::scan::{scan_segment, DamageKind, Scan};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
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
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let Some(first_position) = parse_segment_file_name(name) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a segment file name", path.display())));
    };
    let bytes = std::fs::read(path)?;
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
            Some(keep_aside(path, damage.offset, &cut[..meaningful])?)
        }
    };
    let file = OpenOptions::new().write(true).open(path)?;
    file.set_len(damage.offset)?;
    file.sync_all()?;
    Ok(Recovery { truncated_bytes: cut.len() as u64, side_file, scan })
}

/// Writes `bytes` durably to `<segment>.corrupt-<offset>` (or, if a file
/// of that name holds other bytes, `...-<offset>.<n>`); returns its path.
fn keep_aside(segment: &Path, offset: u64, bytes: &[u8]) -> io::Result<PathBuf> {
    let dir = segment.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let base = format!("{}.corrupt-{offset}", segment.file_name().unwrap_or_default().to_string_lossy());
    for n in 0..1000u32 {
        let name = if n == 0 { base.clone() } else { format!("{base}.{n}") };
        let side = dir.join(&name);
        match std::fs::read(&side) {
            Ok(old) if old == bytes => return Ok(side), // an earlier recovery got this far
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let tmp = dir.join(format!("{name}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &side)?;
        File::open(dir)?.sync_all()?;
        return Ok(side);
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("too many side files named {base}.*")))
}
