//! Running `rilld` in tests: finding (building) the binary, starting it in
//! a fresh directory with short timeouts, restarting, killing, and its log.
//!
//! # Which rilld
//! [`rilld_bin`]: `RILLD=/path/to/rilld` if set, else the one `cargo build
//! -p rill-daemon --bin rilld` puts in this test's profile and target
//! directory, built once per test process
//! ([`workspace_bin`](crate::workspace_bin) says why and how).

#![forbid(unsafe_code)]

use crate::harness::{wait_until, TempRingDir, Worker};
use anyhow::{bail, ensure, Context, Result};
use rill::Client;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Short daemon timeouts, so that fault tests do not wait for seconds.
pub const DAEMON_FLAGS: [&str; 8] = [
    "--unblock-timeout-ms",
    "2000",
    "--client-timeout-ms",
    "5000",
    "--resume-grace-ms",
    "3000",
    "--linger-ms",
    "1000",
];

/// The rilld binary (see "Which rilld" in the module docs), built once
/// per test process.
pub fn rilld_bin() -> Result<PathBuf> {
    crate::workspace_bin("rill-daemon", "rilld", "RILLD")
}

/// A rilld process and the directory it works in.
#[derive(Debug)]
pub struct Rilld {
    // First: the process is killed (on drop) before its directory goes.
    process: Option<Worker>,
    /// The directory holding the socket and state/ (removed on drop);
    /// tests put their own files here too.
    pub dir: TempRingDir,
    /// The listening socket.
    pub socket: PathBuf,
    /// `--data-dir`: persisted streams' segment files, on disk (the
    /// system's temporary directory), removed on drop.
    pub data: TempRingDir,
    /// What rilld gets as `--data-dir`: `data/` in [`Rilld::data`], unless
    /// started with [`Rilld::start_with_data_dir`].
    pub data_dir: PathBuf,
    extra: Vec<String>,
    /// A command rilld runs under (e.g. `unshare ...`), if any.
    wrapper: Vec<String>,
    starts: u32,
    /// Logs of earlier processes (before a restart).
    old_logs: String,
}

impl Rilld {
    /// Starts rilld in a fresh directory, with [`DAEMON_FLAGS`] and
    /// `extra`, and waits until it accepts connections.
    pub fn start(tag: &str, extra: &[String], deadline: Instant) -> Result<Rilld> {
        Self::start_with_data_dir(tag, extra, None, deadline)
    }

    /// [`Rilld::start`] with `--data-dir data_dir` (e.g. a small
    /// filesystem of the test's own) instead of `data/` in [`Rilld::data`]
    /// (clap refuses a second `--data-dir` in `extra`). The caller cleans
    /// `data_dir` up.
    pub fn start_with_data_dir(tag: &str, extra: &[String], data_dir: Option<&Path>, deadline: Instant) -> Result<Rilld> {
        let dir = TempRingDir::in_dev_shm(tag)?;
        // Traversable by other uids (the denied-client test), whatever the umask.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let socket = dir.join("rilld.sock");
        let data = TempRingDir::new_in(&std::env::temp_dir(), tag)?;
        let data_dir = data_dir.map_or_else(|| data.join("data"), Path::to_path_buf);
        let mut d = Rilld { dir, socket, data, data_dir, extra: extra.to_vec(), wrapper: Vec::new(), process: None, starts: 0, old_logs: String::new() };
        d.spawn(deadline)?;
        Ok(d)
    }

    /// [`Rilld::start`] under `wrapper` (a command that runs the rest of
    /// its arguments, such as `unshare --pid --fork --kill-child
    /// --mount-proc`): [`Rilld::pid`] is then the wrapper's.
    pub fn start_wrapped(tag: &str, wrapper: &[&str], extra: &[String], deadline: Instant) -> Result<Rilld> {
        let dir = TempRingDir::in_dev_shm(tag)?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let socket = dir.join("rilld.sock");
        let data = TempRingDir::new_in(&std::env::temp_dir(), tag)?;
        let data_dir = data.join("data");
        let wrapper = wrapper.iter().map(|w| (*w).to_owned()).collect();
        let mut d = Rilld { dir, socket, data, data_dir, extra: extra.to_vec(), wrapper, process: None, starts: 0, old_logs: String::new() };
        d.spawn(deadline)?;
        Ok(d)
    }

    /// Starts (or restarts) the process with the same flags.
    pub fn spawn(&mut self, deadline: Instant) -> Result<()> {
        ensure!(self.process.as_mut().is_none_or(|p| p.try_exited().ok().flatten().is_some()), "rilld still runs");
        if let Some(old) = self.process.take() {
            self.old_logs += &format!("--- rilld#{} ---\n{}", self.starts, strip_ansi(&old.stderr()));
        }
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(rilld_bin()?);
                c
            }
            None => Command::new(rilld_bin()?),
        };
        cmd.arg("--socket").arg(&self.socket);
        cmd.arg("--state-dir").arg(self.state_dir());
        cmd.arg("--data-dir").arg(&self.data_dir);
        cmd.args(DAEMON_FLAGS).args(&self.extra).env("NO_COLOR", "1");
        self.starts += 1;
        let mut p = Worker::spawn_command(cmd, &format!("rilld#{}", self.starts))?;
        wait_until(deadline, "rilld accepts connections", || {
            if let Some(status) = p.try_exited()? {
                p.wait_exit(deadline)?; // reads its stderr to the end
                bail!("rilld exited ({status}) at start: {}", p.stderr());
            }
            Ok(rill::wire::connect(&self.socket).is_ok())
        })?;
        self.process = Some(p);
        Ok(())
    }

    /// rilld's private state directory (`--state-dir`), where its ring
    /// keeper listens.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The pid of the ring keeper, which holds every ring's memory across
    /// restarts of rilld.
    pub fn keeper_pid(&self) -> Result<u32> {
        let path = self.state_dir().join("keeper.pid");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.trim().parse().with_context(|| format!("{}: {text:?}", path.display()))
    }

    /// How many memfds of stream `stream` (its ring and pages) the ring
    /// keeper holds.
    pub fn keeper_memfds(&self, stream: &str) -> Result<usize> {
        let pid = self.keeper_pid()?;
        let (ring, pages) = (format!("/memfd:{stream} (deleted)"), format!("/memfd:{stream}."));
        let mut n = 0;
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let link = std::fs::read_link(e?.path()).unwrap_or_default();
            let link = link.to_string_lossy();
            n += usize::from(link == ring || link.starts_with(&pages));
        }
        Ok(n)
    }

    /// Maps stream `stream`'s ring read-only from the memfds its ring
    /// keeper holds (through /proc/PID/fd: root), every slot included:
    /// how a test looks at a ring while rilld is dead.
    pub fn keeper_ring(&self, stream: &str) -> Result<rill_shm::ring::Ring> {
        use rill_shm::Access::ReadOnly;
        let pid = self.keeper_pid()?;
        let (mut ring, mut wake, mut daemon, mut slots) = (None, None, None, std::collections::BTreeMap::new());
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let path = e?.path();
            let link = std::fs::read_link(&path).unwrap_or_default().to_string_lossy().into_owned();
            let Some(rest) = link.strip_prefix(&format!("/memfd:{stream}")).and_then(|r| r.strip_suffix(" (deleted)")) else { continue };
            let fd = || -> Result<std::os::fd::OwnedFd> { Ok(std::fs::File::open(&path)?.into()) };
            match rest {
                "" => ring = Some(fd()?),
                ".wake" => wake = Some(fd()?),
                ".daemon" => daemon = Some(fd()?),
                other => {
                    let i: u32 = other.strip_prefix(".slot").context("a page of another name")?.parse()?;
                    slots.insert(i, fd()?);
                }
            }
        }
        let slots = slots.into_values().map(|f| Some((f, ReadOnly))).collect();
        let ring = ring.with_context(|| format!("the keeper holds no ring {stream}"))?;
        let (wake, daemon) = (wake.context("no wake page")?, daemon.context("no daemon page")?);
        Ok(rill_shm::ring::Ring::from_fds(ring, ReadOnly, slots, (wake, ReadOnly), (daemon, ReadOnly))?)
    }

    /// Kills the ring keeper (SIGKILL) and waits until it is gone: every
    /// ring's memory is lost, as at a reboot. Call it while rilld is
    /// stopped (a running rilld starts a new keeper and hands it its
    /// rings).
    pub fn lose_ring_memory(&self, deadline: Instant) -> Result<()> {
        let gone = |pid: u32| !Path::new(&format!("/proc/{pid}")).exists() || proc_is_zombie(pid);
        ensure!(self.process.as_ref().is_none_or(|p| gone(p.pid())), "rilld still runs: it would hand its rings to a new keeper");
        let pid = self.keeper_pid()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        wait_until(deadline, "the ring keeper is gone", || Ok(gone(pid)))
    }

    /// The running process.
    pub fn process(&mut self) -> &mut Worker {
        self.process.as_mut().expect("rilld was started")
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.process.as_ref().expect("rilld was started").pid()
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.process().kill();
    }

    /// SIGTERM, and waits for a clean exit (status 0): the archiver has
    /// flushed and synced every persisted stream.
    pub fn stop(&mut self, deadline: Instant) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("SIGTERM to rilld")?;
        let status = self.process().wait_exit(deadline)?;
        ensure!(status.code() == Some(0), "rilld exited with {status} after SIGTERM; log:\n{}", self.log());
        Ok(())
    }

    /// Everything rilld logged so far (every process, if restarted),
    /// without colour codes.
    pub fn log(&self) -> String {
        let current = strip_ansi(&self.process.as_ref().map(Worker::stderr).unwrap_or_default());
        format!("{}--- rilld#{} ---\n{current}", self.old_logs, self.starts)
    }

    /// Fails (with the daemon's log) if rilld is no longer running.
    pub fn ensure_alive(&mut self) -> Result<()> {
        if let Some(status) = self.process().try_exited()? {
            bail!("rilld died ({status}); its log:\n{}", self.log());
        }
        Ok(())
    }

    /// A client of this daemon in the test process (for stream info).
    pub fn client(&self) -> Result<Client> {
        Ok(Client::builder().socket(&self.socket).name("rilld-test").request_timeout(Duration::from_secs(10)).connect()?)
    }
}

/// rilld's warnings and errors go to the test's output, which cargo shows
/// for failing tests only.
impl Drop for Rilld {
    fn drop(&mut self) {
        if let Some(p) = self.process.as_mut() {
            p.kill();
        }
        let log = self.log();
        let notable: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with("--- ") || l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("client gone"))
            .collect();
        let shown = &notable[notable.len().saturating_sub(40)..];
        eprintln!("rilld warnings, errors, clients gone (last {} of {} lines):\n{}", shown.len(), notable.len(), shown.join("\n"));
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether process `pid` has exited and waits to be reaped.
fn proc_is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
}
