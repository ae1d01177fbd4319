//! Parent-side plumbing for multi-process tests: temporary ring
//! directories, worker processes with line-based stdout and a watchdog on
//! every wait, summary parsing, and huge-page discovery.
//!
//! Every wait takes a deadline; passing it is a failure that names what was
//! awaited. Deadlines only turn hangs into failures: nothing here measures
//! how long anything took.

#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory for ring files, removed (with everything in it) on drop.
#[derive(Debug)]
pub struct TempRingDir {
    path: PathBuf,
}

impl TempRingDir {
    /// Creates a fresh directory under `base` (e.g. `/dev/shm` or a
    /// hugetlbfs mount) whose name says which test made it.
    pub fn new_in(base: &Path, tag: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("rill-tests-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempRingDir { path })
    }

    /// A fresh directory under `/dev/shm`.
    pub fn in_dev_shm(tag: &str) -> Result<Self> {
        Self::new_in(Path::new("/dev/shm"), tag)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempRingDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: could not remove {}: {e}", self.path.display());
        }
    }
}

/// A child process whose stdout is read line by line (each line also kept)
/// and whose stderr is collected for failure messages. Killed on drop if
/// it still runs, so a failing test leaves no process behind.
#[derive(Debug)]
pub struct Worker {
    name: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    /// Disconnected once stderr reached its end (everything is in `stderr`).
    stderr_end: Receiver<()>,
    status: Option<ExitStatus>,
}

impl Worker {
    /// Starts `exe` with `args`; `name` labels it in messages.
    pub fn spawn(exe: &str, name: &str, args: &[String]) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.args(args);
        Self::spawn_command(cmd, name)
    }

    /// Starts a prepared command (for a uid, gid or environment of its
    /// own); stdin, stdout and stderr are set here.
    pub fn spawn_command(cmd: Command, name: &str) -> Result<Self> {
        Self::spawn_stdin(cmd, name, Stdio::null())
    }

    /// [`Worker::spawn_command`] with stdin a pipe, whose writing end is
    /// returned (drop it to close the worker's stdin).
    pub fn spawn_with_stdin(cmd: Command, name: &str) -> Result<(Self, ChildStdin)> {
        let mut w = Self::spawn_stdin(cmd, name, Stdio::piped())?;
        let stdin = w.child.stdin.take().expect("stdin is piped");
        Ok((w, stdin))
    }

    fn spawn_stdin(mut cmd: Command, name: &str, stdin: Stdio) -> Result<Self> {
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {name}: {cmd:?}"))?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        let (end_tx, stderr_end) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _end = end_tx; // dropped at the end of stderr
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Ok(Worker { name: name.to_owned(), child, lines, seen: Vec::new(), stderr, stderr_end, status: None })
    }

    /// The label given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the worker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every stdout line received so far.
    pub fn lines(&self) -> &[String] {
        &self.seen
    }

    fn describe(&self) -> String {
        let tail: Vec<&String> = self.seen.iter().rev().take(5).collect();
        format!("{} (pid {}): last stdout lines {tail:?}; stderr:\n{}", self.name, self.pid(), self.stderr())
    }

    /// Waits for a stdout line starting with `prefix`; returns it.
    pub fn wait_line(&mut self, prefix: &str, deadline: Instant) -> Result<String> {
        let what = format!("a line starting with {prefix:?}");
        self.wait_line_after(0, &what, deadline, |l| l.starts_with(prefix)).map(|(_, l)| l)
    }

    /// Waits for a stdout line, at index `from` or later among all lines
    /// received, for which `pred` holds; returns its index and the line.
    /// `what` describes it in the watchdog's message.
    pub fn wait_line_after(
        &mut self,
        from: usize,
        what: &str,
        deadline: Instant,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<(usize, String)> {
        if let Some(i) = (from..self.seen.len()).find(|&i| pred(&self.seen[i])) {
            return Ok((i, self.seen[i].clone()));
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    let i = self.seen.len() - 1;
                    if i >= from && pred(&line) {
                        return Ok((i, line));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("watchdog: no {what} from {}", self.describe())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!("{} exited ({status:?}) before printing {what}: {}", self.name, self.describe())
                }
            }
        }
    }

    /// Whether the process has exited (without waiting).
    pub fn try_exited(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait().with_context(|| format!("try_wait {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits for the process to exit; kills it and fails at `deadline`.
    pub fn wait_exit(&mut self, deadline: Instant) -> Result<ExitStatus> {
        loop {
            if let Some(s) = self.try_exited()? {
                self.drain_lines();
                return Ok(s);
            }
            if Instant::now() >= deadline {
                self.kill();
                self.drain_lines();
                bail!("watchdog: {} did not exit in time; killed it. {}", self.name, self.describe());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits for a successful exit, then returns the worker's summary.
    pub fn finish(&mut self, deadline: Instant) -> Result<Summary> {
        let status = self.wait_exit(deadline)?;
        let summary = self.summary();
        if !status.success() {
            bail!("{} failed with {status}; summary {summary:?}; {}", self.name, self.describe());
        }
        summary.ok_or_else(|| anyhow!("{} printed no SUMMARY line: {}", self.name, self.describe()))
    }

    /// The worker's `SUMMARY` line, if it printed one.
    pub fn summary(&mut self) -> Option<Summary> {
        self.drain_lines();
        self.seen.iter().rev().find_map(|l| Summary::parse(l))
    }

    /// Reads stdout to its end, and waits until stderr is read to its end
    /// too, so that [`Worker::stderr`] has all of it.
    fn drain_lines(&mut self) {
        // The reader threads end at EOF, shortly after the process exits.
        let until = Instant::now() + Duration::from_secs(5);
        while let Ok(l) = self.lines.recv_timeout(until.saturating_duration_since(Instant::now())) {
            self.seen.push(l);
        }
        let _ = self.stderr_end.recv_timeout(until.saturating_duration_since(Instant::now()));
    }

    /// Sends SIGKILL and reaps the process (so its pid is really gone, not
    /// a zombie that `kill(pid, 0)` still finds).
    pub fn kill(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A worker's final `SUMMARY key=value ... [error=free text]` line.
#[derive(Clone, PartialEq, Eq)]
pub struct Summary {
    line: String,
    fields: HashMap<String, String>,
}

impl std::fmt::Debug for Summary {
    /// The line as the worker printed it (keys in its order).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}]", self.line)
    }
}

impl Summary {
    /// Parses a line; `None` unless it starts with `SUMMARY `. The key
    /// `error`, if present, is last and takes the rest of the line.
    pub fn parse(line: &str) -> Option<Self> {
        let mut rest = line.strip_prefix("SUMMARY ")?;
        let mut fields = HashMap::new();
        while !rest.is_empty() {
            if let Some(e) = rest.strip_prefix("error=") {
                fields.insert("error".to_owned(), e.to_owned());
                break;
            }
            let (item, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let (k, v) = item.split_once('=')?;
            fields.insert(k.to_owned(), v.to_owned());
            rest = tail;
        }
        Some(Summary { line: line.trim_start_matches("SUMMARY ").to_owned(), fields })
    }

    /// A field as text.
    pub fn get(&self, key: &str) -> Result<&str> {
        self.fields.get(key).map(String::as_str).ok_or_else(|| anyhow!("summary has no {key:?}: {self:?}"))
    }

    /// A numeric field.
    pub fn num(&self, key: &str) -> Result<u64> {
        let v = self.get(key)?;
        v.parse().with_context(|| format!("summary field {key}={v:?} is not a number"))
    }

    /// A comma-separated list of numbers.
    pub fn nums(&self, key: &str) -> Result<Vec<u64>> {
        let v = self.get(key)?;
        if v.is_empty() {
            return Ok(Vec::new());
        }
        v.split(',').map(|x| x.parse().with_context(|| format!("{key}={v:?}"))).collect()
    }
}

/// The value of `key=value` among a worker line's words, if there.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace().find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
}

// Shared with `rill-powerfs`, hence defined in `rill-test-support`.
pub use rill_test_support::wait_until;

/// Huge pages as this machine offers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugePages {
    /// `/proc/sys/vm/nr_hugepages`.
    pub reserved: u64,
    /// Free minus reserved-for-mappings (from `/proc/meminfo`).
    pub available: u64,
    /// A hugetlbfs mount with 2 MiB pages, if any.
    pub mount: Option<PathBuf>,
}

impl HugePages {
    /// Reads `/proc/sys/vm/nr_hugepages`, `/proc/meminfo` and `/proc/mounts`.
    pub fn probe() -> Result<Self> {
        let reserved = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
            .context("read /proc/sys/vm/nr_hugepages")?
            .trim()
            .parse()
            .context("parse nr_hugepages")?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
        let field = |name: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let default_2m = field("Hugepagesize:") == 2048;
        let available = field("HugePages_Free:").saturating_sub(field("HugePages_Rsvd:"));
        let mounts = std::fs::read_to_string("/proc/mounts").context("read /proc/mounts")?;
        let mount = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dir, fstype, opts) = (f.get(1)?, f.get(2)?, f.get(3)?);
            let pagesize = opts.split(',').find_map(|o| o.strip_prefix("pagesize="));
            let two_mib = match pagesize {
                Some(p) => p == "2M" || p == "2048k" || p == "2048K",
                None => default_2m,
            };
            (*fstype == "hugetlbfs" && two_mib).then(|| PathBuf::from(dir.replace("\\040", " ")))
        });
        Ok(HugePages { reserved, available, mount })
    }
}

/// The seed of a randomised test: `RILL_STRESS_SEED` if set, else one from
/// the clock and the pid. Printed, so that a failing run can be replayed.
pub fn stress_seed(test: &str) -> u64 {
    let seed = std::env::var("RILL_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id())
    });
    eprintln!("{test}: seed {seed} (replay with RILL_STRESS_SEED={seed})");
    seed
}

/// Whether test `name`, which needs root (`why`), may run: `Ok(true)` as
/// root. Otherwise an error saying why, unless `RILL_SKIP_ROOT_TESTS=1`
/// asks to skip it: then `Ok(false)`, after saying SKIPPED loudly.
pub fn root_or_skip(name: &str, why: &str) -> Result<bool> {
    if nix::unistd::geteuid().is_root() {
        return Ok(true);
    }
    if std::env::var("RILL_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("\n!!!!!!!!!! {name} SKIPPED (RILL_SKIP_ROOT_TESTS=1): {why} !!!!!!!!!!\n");
        return Ok(false);
    }
    bail!("{name} {why}; run the tests as root, or set RILL_SKIP_ROOT_TESTS=1 to skip it explicitly")
}
