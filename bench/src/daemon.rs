//! The `rilld` behind the `rill` transport: one started for the run (the
//! `rilld` binary next to this executable, with a fresh socket, state and
//! data directory under /dev/shm, rings on huge pages where the `ring`
//! transport's directory would give it huge pages, and for `persist` the
//! data directory it is given), or a running one named by `--socket`.
//!
//! A daemon started here is killed (by its own pid) and its directories
//! removed when the [`Daemon`] drops.

use crate::rings::{default_parent, fresh_dir};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started daemon may take to accept a client.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A daemon to connect to.
#[derive(Debug)]
pub(crate) struct Daemon {
    socket: PathBuf,
    child: Option<Child>,
    dirs: Vec<PathBuf>,
}

impl Daemon {
    /// The daemon at `socket` if given (it must be running), else a new one
    /// whose rings are on huge pages if `ring_parent` (default:
    /// /dev/hugepages with free huge pages, else /dev/shm) is hugetlbfs.
    pub(crate) fn for_run(socket: Option<&Path>, ring_parent: Option<&Path>) -> Result<Daemon> {
        Daemon::for_run_in(socket, ring_parent, None, &[])
    }

    /// [`Daemon::for_run`], and a daemon started here keeps persisted
    /// streams' segment files in `data_dir` (`--data-dir`; default: a
    /// fresh directory of the run's own, removed with it, so that runs side
    /// by side never contend for one data directory's lock). The caller
    /// owns a `data_dir` it gives: it is left in place when the daemon
    /// drops. Refused with `socket`, whose daemon
    /// has a data directory of its own.
    pub(crate) fn for_run_in(socket: Option<&Path>, ring_parent: Option<&Path>, data_dir: Option<&Path>, extra: &[&str]) -> Result<Daemon> {
        if let Some(s) = socket {
            if data_dir.is_some() {
                bail!("a data directory is for a rilld started here, not the one at {}", s.display());
            }
            rill::Client::connect_to(s)
                .with_context(|| format!("connect to rilld at {}", s.display()))?;
            return Ok(Daemon {
                socket: s.to_path_buf(),
                child: None,
                dirs: Vec::new(),
            });
        }
        let exe = std::env::current_exe().context("locate own executable")?;
        let rilld = exe.with_file_name("rilld");
        if !rilld.is_file() {
            bail!(
                "the rill transport starts a rilld, but there is none at {} \
                 (build it with `cargo build --release -p rill-daemon`, or pass \
                 --socket PATH of a running rilld)",
                rilld.display()
            );
        }
        let mut d = Daemon {
            socket: PathBuf::new(),
            child: None,
            dirs: Vec::new(),
        };
        let base = fresh_dir(Path::new("/dev/shm"))?;
        d.dirs.push(base.clone());
        // Rings on the pages the ring transport would get from the same
        // directory: huge pages only where it would have them.
        let huge = rill_shm::os::mapping::dir_is_hugetlbfs(&ring_parent.map_or_else(default_parent, Path::to_path_buf));
        d.socket = base.join("rilld.sock");
        let child = Command::new(&rilld)
            .arg("--socket")
            .arg(&d.socket)
            .arg("--state-dir")
            .arg(base.join("state"))
            .args((!huge).then_some("--no-huge-pages"))
            .arg("--data-dir")
            .arg(data_dir.map_or_else(|| base.join("data"), Path::to_path_buf))
            .args(extra)
            .env("RILL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", rilld.display()))?;
        d.child = Some(child);
        let since = Instant::now();
        loop {
            match rill::Client::connect_to(&d.socket) {
                Ok(_) => return Ok(d),
                Err(e) => {
                    let c = d.child.as_mut().expect("started");
                    if let Some(status) = c.try_wait().context("poll rilld")? {
                        bail!("rilld exited before accepting clients: {status}");
                    }
                    if since.elapsed() > START_TIMEOUT {
                        return Err(e).context("rilld did not accept a client in time");
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Its socket.
    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &self.dirs {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// A stream name not used before in this run (nor, with `--socket`, by
/// another run: it carries the pid).
pub(crate) fn stream_name(what: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "rill-bench-{}-{}-{what}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}
