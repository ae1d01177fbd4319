//! Helpers shared by the fuzz targets of `fuzz_targets/` (see
//! `scripts/fuzz.sh`).

use std::path::{Path, PathBuf};

/// A scratch directory for targets that must put their input in files,
/// made once per process: on tmpfs (`/dev/shm`) where there is one, so an
/// iteration costs no disk I/O, else in the temp directory. Its name
/// holds the pid; see [`remove_at_exit`].
pub fn scratch_dir(what: &str) -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    // Those of earlier processes that died (a crash exits without
    // running the exit hook) are removed now.
    let prefix = format!("rill-fuzz-{what}-");
    for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(&prefix)).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let dir = base.join(format!("{prefix}{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Empties `dir` (files only; the targets make no subdirectories).
pub fn clear_dir(dir: &Path) {
    for e in std::fs::read_dir(dir).expect("scratch directory").flatten() {
        let _ = std::fs::remove_file(e.path());
    }
}

/// Removes the scratch directories of this process at exit (best effort:
/// libFuzzer exits through `exit()`, which runs no Rust destructors, so
/// this is an `atexit` hook).
pub fn remove_at_exit(dir: &Path) {
    use std::sync::Mutex;
    static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
    extern "C" fn cleanup() {
        if let Ok(dirs) = DIRS.lock() {
            for d in dirs.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    let mut dirs = DIRS.lock().expect("lock");
    if dirs.is_empty() {
        // SAFETY: registers a plain extern "C" function without arguments.
        unsafe { libc::atexit(cleanup) };
    }
    dirs.push(dir.to_path_buf());
}
