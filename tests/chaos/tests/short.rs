//! `rill-chaos` as a workspace test: a short seeded run (45 s of faults:
//! kill -9 of rilld and of clients, SIGSTOP, ring wipes, power cuts on
//! rill-powerfs, bit flips in sealed segments, a full disk) must end with every
//! acknowledged message checked and no violation; and the checker, told
//! to forget its own bit flips, must fail.
//!
//! `cargo test --release -p rill-chaos --test short` as root (FUSE);
//! elsewhere it fails, unless `RILL_SKIP_ROOT_TESTS=1` (then it says
//! loudly that it skipped). The seed is fixed (CI runs the same choices
//! every time); `RILL_STRESS_SEED` picks another. Each run prints its
//! command line; tests/chaos/run.sh runs long ones.

#![forbid(unsafe_code)]

use anyhow::{ensure, Context, Result};
use rill_tests::harness::{root_or_skip, Summary};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CHAOS: &str = env!("CARGO_BIN_EXE_rill-chaos");
const CLIENT: &str = env!("CARGO_BIN_EXE_rill-chaos-client");
/// The seed unless `RILL_STRESS_SEED` says otherwise.
const SEED: u64 = 20_261_207;
/// Both tests load the machine fully: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn seed() -> u64 {
    std::env::var("RILL_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(SEED)
}

/// Runs rill-chaos with `args` (its binaries found or built the way the
/// other tests find them); a watchdog kills it after 15 minutes.
fn chaos(args: &[String]) -> Result<(Output, String)> {
    let rilld = rill_tests::daemon::rilld_bin()?;
    let powerfs = rill_powerfs::process::binary()?;
    let line = format!("RILLD={} RILL_POWERFS={} {CHAOS} {}", rilld.display(), powerfs.display(), args.join(" "));
    eprintln!("running: {line}");
    let child = Command::new(CHAOS)
        .args(args)
        .env("RILLD", &rilld)
        .env("RILL_POWERFS", &powerfs)
        .env("RILL_CHAOS_CLIENT", CLIENT)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {CHAOS}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(900)) {
        Ok(out) => out?,
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            anyhow::bail!("watchdog: {line} did not finish in 15 minutes; killed it");
        }
    };
    Ok((out, line))
}

/// The one summary line on stdout, parsed (`key=value` words; the
/// parenthesised fault counts are words too).
fn summary(out: &Output, line: &str) -> Result<Summary> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        lines.len() == 1 && lines[0].starts_with("chaos seed="),
        "{line}: expected exactly one summary line on stdout, got {lines:?} ({}); stderr:\n{stderr}",
        out.status
    );
    let words = lines[0].replace(['(', ')'], "");
    Summary::parse(&format!("SUMMARY {}", words.trim_start_matches("chaos "))).with_context(|| format!("parse {:?}", lines[0]))
}

#[test]
fn every_acknowledged_message_survives_a_short_chaos_run() -> Result<()> {
    if !root_or_skip("chaos short run", "mounts a FUSE filesystem (rill-powerfs) for rilld's data directory")? {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    let args = ["--seed".to_owned(), seed().to_string(), "--duration".into(), "45s".into()];
    let (out, line) = chaos(&args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let s = summary(&out, &line)?;
    eprintln!("{line}: {:?} in {:.0?}", s, t0.elapsed());
    ensure!(out.status.success() && s.num("violations")? == 0, "{line} failed ({}): {s:?}; stderr:\n{stderr}", out.status);
    // A run that injected nothing or checked nothing proves nothing.
    for kind in ["kill9_rilld", "kill9_client", "stop", "ring_wipe", "power_cut", "bit_flip", "full_disk"] {
        ensure!(s.num(kind)? > 0, "{line}: no {kind} fault in the run: {s:?}; stderr:\n{stderr}");
    }
    ensure!(s.num("acknowledged")? > 1000 && s.num("messages_checked")? > 1000, "{line}: too little traffic: {s:?}");
    ensure!(s.num("lost_to_bitflips")? > 0, "{line}: no acknowledged message was in a flipped batch: {s:?}");
    Ok(())
}

/// The check is not vacuous: when the checker flips bits in `always` and
/// `interval` streams but does not tell the final check, rilld's exact
/// Lost notices must show up as acknowledged messages lost outside every
/// flipped batch, and the run must fail.
#[test]
fn the_check_fails_when_the_checker_forgets_its_bit_flips() -> Result<()> {
    if !root_or_skip("chaos self-test", "mounts a FUSE filesystem (rill-powerfs) for rilld's data directory")? {
        return Ok(());
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let args: Vec<String> =
        ["--seed", &seed().to_string(), "--duration", "15s", "--faults", "bit_flip", "--rate", "1500", "--self-test", "forget-flips"].map(str::to_owned).to_vec();
    let (out, line) = chaos(&args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let s = summary(&out, &line)?;
    eprintln!("{line}: {s:?}");
    ensure!(s.num("bit_flip")? > 0, "{line}: no bit flip in the run: {s:?}; stderr:\n{stderr}");
    ensure!(out.status.code() == Some(1) && s.num("violations")? > 0, "{line}: expected the check to fail ({}): {s:?}; stderr:\n{stderr}", out.status);
    ensure!(
        stderr.contains("an acknowledged message was reported lost, outside every flipped batch"),
        "{line}: failed, but not for the forgotten flips: {stderr}"
    );
    Ok(())
}
