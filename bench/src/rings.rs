//! Where the benchmark's ring files live, and how they are made.
//!
//! Rings are files in a fresh directory on a hugetlbfs mount when one has
//! free huge pages (`/dev/hugepages`), else on tmpfs (`/dev/shm`), the same
//! choice the daemon makes. The directory is removed when the [`RingDir`]
//! drops. Every result line says which pages its rings got.

use anyhow::{Context, Result};
use rill_shm::ring::{PagePreference, RingConfig};
use rill_shm::{PageKind, Policy, Ring};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

const HUGETLBFS_DIR: &str = "/dev/hugepages";
const TMPFS_DIR: &str = "/dev/shm";

/// Temporary directories holding ring files; removed on drop. The last one
/// is where new rings go.
#[derive(Debug)]
pub(crate) struct RingDir {
    paths: Vec<PathBuf>,
}

impl RingDir {
    /// A fresh directory under `parent`, or under the best default.
    pub(crate) fn new(parent: Option<&Path>) -> Result<Self> {
        let parent = parent.map_or_else(default_parent, Path::to_path_buf);
        Ok(RingDir {
            paths: vec![fresh_dir(&parent)?],
        })
    }

    /// Creates a back-pressure ring `name` of `capacity` bytes here. When
    /// the directory is on hugetlbfs but cannot supply the pages, uses a
    /// fresh directory on tmpfs from then on (and says so on stderr).
    pub(crate) fn create(
        &mut self,
        name: &str,
        capacity: u64,
        max_message_len: u32,
    ) -> Result<(Ring, PathBuf)> {
        let config = RingConfig {
            capacity,
            max_message_len,
            policy: Policy::BackPressure,
            slot_count: 16,
            pages: PagePreference::Auto,
        };
        let dir = self.paths.last().expect("at least one directory").clone();
        match Ring::create_in(&dir, name, &config) {
            Ok(ring) => Ok((ring, dir.join(name))),
            Err(rill_shm::ring::CreateError::HugePagesUnavailable(e)) => {
                eprintln!(
                    "note: huge pages unavailable in {} ({e}); using {TMPFS_DIR}",
                    dir.display()
                );
                self.paths.push(fresh_dir(Path::new(TMPFS_DIR))?);
                self.create(name, capacity, max_message_len)
            }
            Err(e) => Err(e).with_context(|| format!("create ring {name} in {}", dir.display())),
        }
    }
}

impl Drop for RingDir {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Creates a new, uniquely named directory under `parent`.
pub(crate) fn fresh_dir(parent: &Path) -> Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "rill-bench-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = parent.join(name);
    std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
    Ok(path)
}

/// `/dev/hugepages` if it is hugetlbfs with free pages, else `/dev/shm`.
pub(crate) fn default_parent() -> PathBuf {
    let huge = Path::new(HUGETLBFS_DIR);
    if rill_shm::os::mapping::dir_is_hugetlbfs(huge) && free_huge_pages() > 0 {
        huge.to_path_buf()
    } else {
        PathBuf::from(TMPFS_DIR)
    }
}

/// `HugePages_Free` from /proc/meminfo (0 if unreadable).
fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Short name of a page kind for result lines.
pub(crate) fn pages_name(pages: PageKind) -> &'static str {
    match pages {
        PageKind::Huge2M => "2MiB",
        PageKind::Normal4K => "4KiB",
    }
}
