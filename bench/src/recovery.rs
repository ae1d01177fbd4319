//! `rill-bench recovery`: how long rilld takes to recover a persisted
//! stream's log after `kill -9`, beside the time to read the same bytes
//! sequentially from the same disk, both with the page cache dropped
//! first, in alternating rounds of one run; and how long subscribing at
//! `Latest` takes on streams with a short and a long log.
//!
//! Recovery reads every segment whole and checks every batch's CRC (see
//! rilld's `recover_log`), so its floor is a sequential read of the log:
//! the ratio `recovery / read` is what it costs beyond the disk.
//!
//! Needs root (to drop the page cache: `echo 3 > /proc/sys/vm/drop_caches`)
//! and a disk filesystem (`--dir`, default /var/tmp; never tmpfs).

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use rill::{Client, Durability, Start, StreamOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Options of `rill-bench recovery`.
#[derive(Debug, Args)]
pub(crate) struct RecoveryArgs {
    /// Directory to work in (a fresh directory is made in it, and removed).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Log size for the recovery measurement (`1GiB`, `256MiB`).
    #[arg(long, default_value = "1GiB", value_parser = crate::persist::parse_bytes)]
    bytes: u64,
    /// Alternating rounds of sequential read and recovery.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Log sizes of the `Latest` subscribe measurement.
    #[arg(long, value_delimiter = ',', default_value = "64MiB,4GiB", value_parser = crate::persist::parse_bytes)]
    latest_logs: Vec<u64>,
    /// Subscribers opened at `Latest` per log size (after a cold restart:
    /// the first is reported on its own).
    #[arg(long, default_value_t = 50)]
    opens: u32,
}

/// A rilld over fixed directories, restartable.
struct Rilld {
    dir: PathBuf,
    child: Option<Child>,
}

impl Rilld {
    fn socket(&self) -> PathBuf {
        self.dir.join("rilld.sock")
    }

    /// Starts rilld and returns how long it took until it accepted a client.
    fn start(&mut self) -> Result<Duration> {
        let rilld = std::env::current_exe()?.with_file_name("rilld");
        ensure!(rilld.is_file(), "no rilld at {} (cargo build --release -p rill-daemon)", rilld.display());
        let started = Instant::now();
        let child = Command::new(&rilld)
            .arg("--socket")
            .arg(self.socket())
            .arg("--state-dir")
            .arg(self.dir.join("state"))
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .env("RILL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("start rilld")?;
        self.child = Some(child);
        loop {
            if rill::wire::connect(&self.socket()).is_ok() {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.child.as_mut().expect("started").try_wait()? {
                bail!("rilld exited at start: {status}");
            }
            ensure!(started.elapsed() < Duration::from_secs(600), "rilld did not start within 10 minutes");
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Rilld {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (needs root)")
}

/// Publishes `bytes` of 64 KiB messages to a new `none` stream and waits
/// until the last is written.
fn fill(client: &Client, stream: &str, bytes: u64) -> Result<()> {
    let options = StreamOptions::new().with_capacity(16 << 20).with_max_message_len(64 << 10).with_persist(Some(Durability::None));
    let mut p = client.publisher_with(stream, options)?;
    let payload = vec![0x5Au8; 64 << 10];
    let mut last = 0;
    let mut sent = 0u64;
    while sent < bytes {
        match p.offer(&payload) {
            Ok(pos) => {
                last = pos;
                sent += payload.len() as u64;
            }
            Err(rill::ClaimError::BackPressured) => std::thread::yield_now(),
            Err(e) => return Err(e.into()),
        }
    }
    p.wait_durable(last, Duration::from_secs(600))?;
    Ok(())
}

/// Reads every file of `dir` sequentially (1 MiB reads); returns the time
/// and the bytes.
fn read_all(dir: &Path) -> Result<(Duration, u64)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "log")).collect();
    files.sort();
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut total = 0u64;
    for f in files {
        let mut file = std::fs::File::open(&f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok((started.elapsed(), total))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the measurement and prints it.
pub(crate) fn run(args: &RecoveryArgs) -> Result<()> {
    ensure!(nix::unistd::geteuid().is_root(), "rill-bench recovery drops the page cache: run it as root");
    let dir = args.dir.join(format!("rill-bench-recovery-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut d = Rilld { dir, child: None };
    d.start()?;
    let client = Client::connect_to(d.socket())?;
    fill(&client, "recovery", args.bytes)?;
    drop(client);
    let log_dir = d.dir.join("data").join("recovery");
    println!("recovery of a {} MiB log after kill -9 (page cache dropped before each step)", args.bytes >> 20);
    println!("{:>5} {:>12} {:>14} {:>7}", "round", "read ms", "recovery ms", "ratio");
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        d.kill9();
        drop_caches()?;
        let (read, bytes) = read_all(&log_dir)?;
        drop_caches()?;
        let recovery = d.start()?;
        let ratio = recovery.as_secs_f64() / read.as_secs_f64();
        ratios.push(ratio);
        println!("{round:>5} {:>12.1} {:>14.1} {ratio:>7.2}   ({} MiB read, {:.0} MB/s)", ms(read), ms(recovery), bytes >> 20, bytes as f64 / read.as_secs_f64() / 1e6);
    }
    ratios.sort_by(f64::total_cmp);
    println!("recovery / sequential read: median {:.2}x (min {:.2}, max {:.2})", ratios[ratios.len() / 2], ratios[0], ratios[ratios.len() - 1]);

    println!();
    println!("subscribe at Latest to a persisted stream (open round trip, rilld restarted cold before each size)");
    println!("{:>10} {:>14} {:>10} {:>10}", "log", "first open ms", "p50 ms", "max ms");
    for (i, &size) in args.latest_logs.iter().enumerate() {
        let stream = format!("latest-{i}");
        let client = Client::connect_to(d.socket())?;
        fill(&client, &stream, size)?;
        drop(client);
        d.kill9();
        drop_caches()?;
        d.start()?;
        let client = Client::connect_to(d.socket())?;
        let mut times = Vec::new();
        for _ in 0..args.opens.max(1) {
            let t = Instant::now();
            let sub = client.subscriber(&stream, Start::Latest)?;
            times.push(t.elapsed());
            drop(sub);
        }
        let first = times[0];
        times.sort();
        println!("{:>7} MiB {:>14.3} {:>10.3} {:>10.3}", size >> 20, ms(first), ms(times[times.len() / 2]), ms(times[times.len() - 1]));
    }
    Ok(())
}
