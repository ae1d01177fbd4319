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
    /// The directory holding the socket, rings/ and pages/ (removed on
    /// drop); tests put their own files here too.
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
        let mut d = Rilld { dir, socket, data, data_dir, extra: extra.to_vec(), process: None, starts: 0, old_logs: String::new() };
        d.spawn(deadline)?;
        Ok(d)
    }

    /// Starts (or restarts) the process with the same flags.
    pub fn spawn(&mut self, deadline: Instant) -> Result<()> {
        ensure!(self.process.as_mut().is_none_or(|p| p.try_exited().ok().flatten().is_some()), "rilld still runs");
        if let Some(old) = self.process.take() {
            self.old_logs += &format!("--- rilld#{} ---\n{}", self.starts, strip_ansi(&old.stderr()));
        }
        let mut cmd = Command::new(rilld_bin()?);
        cmd.arg("--socket").arg(&self.socket);
        cmd.arg("--ring-dir").arg(self.ring_dir()).arg("--page-dir").arg(self.dir.join("pages"));
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

    /// Where rilld keeps ring files (`--ring-dir`).
    pub fn ring_dir(&self) -> PathBuf {
        self.dir.join("rings")
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
