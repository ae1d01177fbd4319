//! Running `rill-powerfs` from a test: finding (building) the binary,
//! starting it on a mount point, sending control commands, and making
//! sure the mount is gone when the test ends, whatever happened.
//!
//! # Which binary
//! `CARGO_BIN_EXE_rill-powerfs` exists only in this crate's own tests.
//! Elsewhere [`binary`] gives `RILL_POWERFS=/path/to/rill-powerfs` if set,
//! else the one `cargo build -p rill-powerfs --bin rill-powerfs` puts in
//! the test's profile and target directory, built once per test process
//! (`rill_test_support::workspace_bin`, as `rill_tests::daemon` finds
//! rilld).
//!
//! Every wait takes a deadline; passing it is a failure that says what was
//! awaited. Deadlines only turn hangs into failures.

use anyhow::{bail, ensure, Context, Result};
use rill_test_support::wait_until;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `rill-powerfs` and its mount. On drop: SIGTERM, and if the
/// process does not unmount in time, SIGKILL and a lazy unmount, so no
/// test leaves a mount behind.
#[derive(Debug)]
pub struct PowerFs {
    child: Option<Child>,
    mountpoint: PathBuf,
    control: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl PowerFs {
    /// Starts `bin` on `mountpoint` (an existing empty directory) with its
    /// control socket at `control`, and waits until it says `READY`.
    pub fn start(bin: &Path, mountpoint: &Path, control: &Path, deadline: Instant) -> Result<PowerFs> {
        let mut cmd = Command::new(bin);
        cmd.arg(mountpoint).arg("--control").arg(control);
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().with_context(|| format!("spawn {cmd:?}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr is piped");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, ready) = mpsc::channel();
        let out = child.stdout.take().expect("stdout is piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line == "READY" {
                    let _ = tx.send(());
                }
            }
        });
        let mut fs = PowerFs { child: Some(child), mountpoint: mountpoint.to_owned(), control: control.to_owned(), stderr };
        let said_ready = wait_until(deadline, "rill-powerfs says READY", || {
            if ready.try_recv().is_ok() {
                return Ok(true);
            }
            if let Some(status) = fs.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("rill-powerfs exited ({status}) before it was ready (is /dev/fuse there? are we root?)");
            }
            Ok(false)
        });
        if let Err(e) = said_ready {
            bail!("{e:#}: {}", fs.log());
        }
        ensure!(is_mounted(mountpoint)?, "rill-powerfs said READY but {} is not a mount point: {}", mountpoint.display(), fs.log());
        Ok(fs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Everything it logged (each control command and its reply).
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Sends a control command; returns what follows `ok`.
    pub fn request(&self, command: &str) -> Result<String> {
        crate::control::request(&self.control, command).with_context(|| format!("rill-powerfs control command {command:?}"))
    }

    /// A power cut: everything not synced is lost. Returns the report.
    pub fn cut(&self) -> Result<String> {
        self.request("cut")
    }

    /// A power cut in which a random prefix of each file's unsynced writes
    /// (chosen by `seed`) reached the disk, the last possibly torn.
    pub fn cut_torn(&self, seed: u64) -> Result<String> {
        self.request(&format!("cut-torn {seed}"))
    }

    /// The `stats` counters.
    pub fn stats(&self) -> Result<BTreeMap<String, u64>> {
        Ok(crate::control::fields(&self.request("stats")?))
    }

    /// SIGTERM; waits for a clean exit (status 0) and for the mount to be
    /// gone.
    pub fn stop(&mut self, deadline: Instant) -> Result<()> {
        let Some(mut child) = self.child.take() else { bail!("rill-powerfs was stopped already") };
        terminate(&child)?;
        let status = wait_until_exit(&mut child, deadline).with_context(|| self.log())?;
        ensure!(status.success(), "rill-powerfs exited with {status} after SIGTERM: {}", self.log());
        ensure!(!is_mounted(&self.mountpoint)?, "rill-powerfs exited but {} is still mounted", self.mountpoint.display());
        Ok(())
    }
}

impl Drop for PowerFs {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = terminate(&child);
            if wait_until_exit(&mut child, Instant::now() + Duration::from_secs(10)).is_err() {
                eprintln!("warning: rill-powerfs did not exit after SIGTERM; killed it");
            }
        }
        if is_mounted(&self.mountpoint).unwrap_or(false) {
            eprintln!("warning: {} still mounted; unmounting lazily", self.mountpoint.display());
            if let Err(e) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("warning: umount -l {}: {e}", self.mountpoint.display());
            }
        }
    }
}

fn terminate(child: &Child) -> Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("pid")?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).context("SIGTERM to rill-powerfs")
}

/// Waits for `child` to exit; kills it and fails at `deadline`.
fn wait_until_exit(child: &mut Child, deadline: Instant) -> Result<std::process::ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("watchdog: rill-powerfs did not exit in time; killed it");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> Result<bool> {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("read /proc/self/mountinfo")?;
    let want = path.to_string_lossy().replace('\\', "\\134").replace(' ', "\\040").replace('\t', "\\011").replace('\n', "\\012");
    Ok(info.lines().any(|l| l.split(' ').nth(4) == Some(want.as_str())))
}

/// The `rill-powerfs` binary (see "Which binary" in the module docs),
/// built once per test process.
pub fn binary() -> Result<PathBuf> {
    rill_test_support::workspace_bin("rill-powerfs", "rill-powerfs", "RILL_POWERFS")
}
