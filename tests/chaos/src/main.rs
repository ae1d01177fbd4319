//! `rill-chaos --seed <u64> --duration <60s>`: a Jepsen-style run against
//! a real rilld. See README.md in this directory and the crate docs
//! (src/lib.rs).
//!
//! 1. Mounts `rill-powerfs` (unless `--no-powerfs`) and starts rilld on it
//!    (`--segment-bytes 1048576`), then the clients (`rill-chaos-client`):
//!    publishers on a stream of each durability, a subscriber per stream.
//! 2. Injects faults drawn from the seed until the duration has passed
//!    (`faults.rs`); watches rilld's health and the clients meanwhile
//!    (`world.rs`).
//! 3. Stops the clients, lets rilld archive everything, restarts it, and
//!    checks every stream from `Start::Earliest` (`finale.rs`).
//! 4. Prints one summary line on stdout (everything else goes to stderr)
//!    and exits 1 if anything was violated, 2 if the run itself could not
//!    be carried out.
//!
//! The binaries it runs: `RILLD`, `RILL_POWERFS` and `RILL_CHAOS_CLIENT`
//! if set, else `rilld`, `rill-powerfs` and `rill-chaos-client` next to
//! this one (`cargo build --release -p rill-chaos -p rill-daemon -p
//! rill-powerfs` puts them there).

#![forbid(unsafe_code)]

mod faults;
mod finale;
mod world;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rill_chaos::duration;
use rill_chaos::history::FaultKind;
use std::path::PathBuf;
use std::time::Duration;

/// The command line.
#[derive(Debug, Clone, Parser)]
#[command(name = "rill-chaos", about = "Faults drawn from a seed against a real rilld; every acknowledged message checked at the end.")]
pub(crate) struct Args {
    /// Seed of every random choice (faults, their targets, timings,
    /// payloads). The same seed gives the same choices, not the same
    /// interleaving.
    #[arg(long)]
    pub(crate) seed: u64,
    /// How long to inject faults (`45s`, `10m`, `1h`).
    #[arg(long, value_parser = duration::parse)]
    pub(crate) duration: Duration,
    /// Directory for the run's files (ack logs, event logs, the powerfs
    /// mount point, rilld's log); default /var/tmp/rill-chaos-SEED-PID.
    /// Kept after a failing run (or with --keep), removed otherwise.
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Keep the run's directory even if everything checked out.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Put rilld's data directory on an ordinary filesystem instead of
    /// rill-powerfs (no root needed for FUSE; no power cuts, no full
    /// disks).
    #[arg(long)]
    pub(crate) no_powerfs: bool,
    /// Faults to inject, comma-separated: kill9_rilld, kill9_client, stop,
    /// ring_wipe, power_cut, bit_flip, full_disk, or all.
    #[arg(long, default_value = "all")]
    pub(crate) faults: String,
    /// Shortest pause between two faults.
    #[arg(long, value_parser = duration::parse, default_value = "500ms")]
    pub(crate) gap_min: Duration,
    /// Longest pause between two faults.
    #[arg(long, value_parser = duration::parse, default_value = "3s")]
    pub(crate) gap_max: Duration,
    /// Publisher processes per stream.
    #[arg(long, default_value_t = 2)]
    pub(crate) publishers: u32,
    /// Messages per second per publisher (about).
    #[arg(long, default_value_t = 300)]
    pub(crate) rate: u64,
    /// Largest batch a publisher sends before it waits for durability.
    #[arg(long, default_value_t = 32)]
    pub(crate) batch_max: u64,
    /// Sync interval of the `interval` stream, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub(crate) interval_ms: u32,
    /// Odd publishers (k = 1, 3, ...) write their messages in place
    /// (try_claim, write, commit) and spend this long between claim and
    /// commit on every 8th message (0: every publisher uses offer).
    #[arg(long, value_parser = duration::parse, default_value = "1ms")]
    pub(crate) claim_work: Duration,
    /// Longest SIGSTOP.
    #[arg(long, value_parser = duration::parse, default_value = "8s")]
    pub(crate) stop_max: Duration,
    /// Violations printed in full.
    #[arg(long, default_value_t = 8)]
    pub(crate) show: usize,
    /// Checks the checker: `forget-flips` flips bits (in `always` and
    /// `interval` streams only) without telling the final check, which
    /// must then find acknowledged messages reported lost outside every
    /// flipped batch, and fail.
    #[arg(long, value_enum)]
    pub(crate) self_test: Option<SelfTest>,
}

/// A deliberate mistake of the checker's own, to show that the check
/// fails when it should.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SelfTest {
    /// Bit flips are not recorded.
    ForgetFlips,
}

impl Args {
    /// The fault kinds asked for (power cuts only with powerfs).
    pub(crate) fn fault_kinds(&self) -> Result<Vec<FaultKind>> {
        let mut kinds = Vec::new();
        for name in self.faults.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "all" {
                kinds.extend(FaultKind::ALL);
            } else {
                kinds.push(FaultKind::parse(name).with_context(|| format!("unknown fault {name:?} (all, {})", FaultKind::ALL.map(FaultKind::name).join(", ")))?);
            }
        }
        kinds.sort();
        kinds.dedup();
        if self.no_powerfs {
            let needs_powerfs = [FaultKind::PowerCut, FaultKind::FullDisk];
            if self.faults != "all" && kinds.iter().any(|k| needs_powerfs.contains(k)) {
                bail!("power_cut and full_disk need rill-powerfs (drop --no-powerfs)");
            }
            kinds.retain(|k| !needs_powerfs.contains(k));
        }
        if kinds.is_empty() {
            bail!("no faults to inject");
        }
        Ok(kinds)
    }

    /// The command line that replays this run's choices.
    pub(crate) fn replay_line(&self) -> String {
        let mut s = format!("rill-chaos --seed {} --duration {}", self.seed, duration::show(self.duration));
        if self.faults != "all" {
            s += &format!(" --faults {}", self.faults);
        }
        if self.no_powerfs {
            s += " --no-powerfs";
        }
        let defaults = Args::parse_from(["rill-chaos", "--seed", "0", "--duration", "1s"]);
        let mut opt = |name: &str, v: String, d: String| {
            if v != d {
                s += &format!(" --{name} {v}");
            }
        };
        opt("gap-min", duration::show(self.gap_min), duration::show(defaults.gap_min));
        opt("gap-max", duration::show(self.gap_max), duration::show(defaults.gap_max));
        opt("publishers", self.publishers.to_string(), defaults.publishers.to_string());
        opt("rate", self.rate.to_string(), defaults.rate.to_string());
        opt("batch-max", self.batch_max.to_string(), defaults.batch_max.to_string());
        opt("interval-ms", self.interval_ms.to_string(), defaults.interval_ms.to_string());
        opt("stop-max", duration::show(self.stop_max), duration::show(defaults.stop_max));
        opt("claim-work", duration::show(self.claim_work), duration::show(defaults.claim_work));
        if self.self_test == Some(SelfTest::ForgetFlips) {
            s += " --self-test forget-flips";
        }
        s
    }
}

/// A binary: `$env` if set, else `name` next to this executable.
pub(crate) fn sibling_binary(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("{env}={} is not a file", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let p = exe.parent().context("executable without a directory")?.join(name);
    if !p.is_file() {
        bail!("no {name} next to {} (build it: cargo build --release -p rill-chaos -p rill-daemon -p rill-powerfs; or set {env})", exe.display());
    }
    Ok(p)
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RILL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let args = Args::parse();
    match run(&args) {
        Ok(report) => {
            println!("{}", report.line);
            std::process::exit(if report.violations == 0 { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("rill-chaos: the run could not be carried out: {e:#}");
            eprintln!("rill-chaos: replay with: {}", args.replay_line());
            std::process::exit(2);
        }
    }
}

fn run(args: &Args) -> Result<finale::Report> {
    let kinds = args.fault_kinds()?;
    if args.gap_min > args.gap_max {
        bail!("--gap-min is longer than --gap-max");
    }
    if !args.no_powerfs && !nix::unistd::geteuid().is_root() {
        bail!("rill-powerfs (rilld's data directory, for real power cuts) mounts a FUSE filesystem and needs root; run as root, or pass --no-powerfs");
    }
    // rill_tests::daemon finds rilld through $RILLD outside cargo's tests.
    let rilld = sibling_binary("RILLD", "rilld")?;
    std::env::set_var("RILLD", &rilld);
    let mut w = world::World::start(args)?;
    eprintln!("rill-chaos: seed {} for {}; faults {}; files in {}", args.seed, duration::show(args.duration), kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","), w.work.display());
    let injected = faults::inject_for(&mut w, &kinds, args.duration);
    if let Err(e) = &injected {
        eprintln!("rill-chaos: fault injection stopped early: {e:#}");
    }
    finale::finish(w, args, injected.err())
}
