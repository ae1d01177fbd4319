//! `rill-test-support`: what the workspace's test crates share, and only
//! that: [`workspace_bin`] (a binary of another workspace package, built
//! on demand) and [`wait_until`] (a wait under a watchdog).
//!
//! It depends on no rill crate so that both `rill-tests` and
//! `rill-powerfs` can use it: `rill-tests` already depends on
//! `rill-powerfs` (its power-loss tests mount one), so `rill-powerfs`
//! cannot depend on `rill-tests` without a cycle. `rill-tests` re-exports
//! both (`rill_tests::workspace_bin`, `rill_tests::harness::wait_until`).
//!
//! # Which binary
//! Cargo builds only the binaries of the package under test, and
//! `CARGO_BIN_EXE_<name>` exists only inside the package that has the
//! binary (a dev-dependency on another package builds its library, not
//! its binaries). So [`workspace_bin`] runs `cargo build -p <package>
//! --bin <bin>` once per test process and binary, with the test binary's
//! profile and target directory (a no-op when up to date; cargo's lock is
//! free while tests run), and takes the binary next to the test binary's
//! `deps/` directory: target/[<triple>/]<profile>/<bin>. An environment
//! variable naming a file skips the build and uses that file.
//!
//! Deadlines only turn hangs into failures: nothing here measures how
//! long anything took.

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The binary `bin` of workspace package `package` (see "Which binary" in
/// the module docs): the file `$env_var` names if set, else built once per
/// test process (later calls return the first call's result, error
/// included). Concurrent callers wait for the first one's build.
pub fn workspace_bin(package: &str, bin: &str, env_var: &str) -> Result<PathBuf> {
    type Built = BTreeMap<(String, String), std::result::Result<PathBuf, String>>;
    static BUILT: Mutex<Built> = Mutex::new(BTreeMap::new());
    // Held while building: one cargo at a time (it would wait for its lock
    // anyway), and never the same build twice.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built
        .entry((package.to_owned(), bin.to_owned()))
        .or_insert_with(|| build(package, bin, env_var).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build(package: &str, bin: &str, env_var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "{env_var}={} is not a file", p.display());
        return Ok(p);
    }
    let exe = std::env::current_exe().context("current_exe")?;
    // target/[<triple>/]<profile>/deps/<this test binary>
    let profile_dir = exe.parent().and_then(Path::parent).context("test binary outside target/<profile>/deps")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => bail!("cannot tell the profile from {}", profile_dir.display()),
    };
    let above = profile_dir.parent().context("no target directory")?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| option_env!("CARGO").unwrap_or("cargo").into()));
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin, "--profile", profile]);
    cmd.arg("--manifest-path").arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml"));
    if above.join("CACHEDIR.TAG").exists() {
        cmd.arg("--target-dir").arg(above);
    } else {
        // Cross layout: target/<triple>/<profile>.
        let triple = above.file_name().and_then(|n| n.to_str()).context("target triple")?;
        cmd.args(["--target", triple]).arg("--target-dir").arg(above.parent().context("no target directory")?);
    }
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n(or build {bin} yourself and set {env_var}=/path/to/{bin})",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = profile_dir.join(bin);
    ensure!(path.is_file(), "{cmd:?} succeeded but {} does not exist", path.display());
    Ok(path)
}

/// Polls `cond` every few milliseconds until it holds; fails at `deadline`
/// with `what` in the message. An error from `cond` ends the wait at once.
pub fn wait_until(deadline: Instant, what: &str, mut cond: impl FnMut() -> Result<bool>) -> Result<()> {
    loop {
        if cond()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("watchdog: timed out waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
