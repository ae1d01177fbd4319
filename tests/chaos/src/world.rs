//! The processes of a run (rilld, the powerfs mount, the clients), and
//! what is watched between faults: rilld alive and healthy, every client
//! alive.
//!
//! Files of a run, under its work directory:
//!
//! ```text
//! acks/<index>.log        ack log of publisher index <index> (rill_chaos::logs)
//! events/<client>.log     event log of each client process
//! stop-publishers         created at the end: publishers finish
//! stop-subscribers        created once everything is archived: subscribers read to the tail and exit
//! mnt/                    the powerfs mount: rilld's data directory (or data/ with --no-powerfs)
//! powerfs.sock            its control socket
//! history.log, rilld.log, powerfs.log   written at the end
//! ```

use crate::Args;
use anyhow::{bail, Context, Result};
use rill_chaos::history::{FaultKind, History};
use rill_chaos::now_ns;
use rill_chaos::spec::{publisher_index, streams, StreamSpec, SEGMENT_BYTES};
use rill_chaos::verify::{Flip, Violation};
use rill_powerfs::process::PowerFs;
use rill_tests::daemon::Rilld;
use rill_tests::harness::Worker;
use rill_tests::payload::Prng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long rilld may take to start (recovery reads and syncs every
/// segment).
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How often, between faults, rilld's health and the clients are looked at.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// What a client process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Publisher `k` of its stream, as publisher index `index`.
    Publisher { k: u32, index: u32 },
    /// The stream's subscriber.
    Subscriber,
}

/// A client process.
#[derive(Debug)]
pub(crate) struct Proc {
    pub(crate) role: Role,
    pub(crate) stream: usize,
    pub(crate) name: String,
    pub(crate) worker: Worker,
}

/// Everything of a run. Fields drop in order: clients (killed), rilld
/// (killed), the filesystem (unmounted).
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) clients: Vec<Proc>,
    pub(crate) d: Rilld,
    pub(crate) fs: Option<PowerFs>,
    pub(crate) work: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) args: Args,
    pub(crate) streams: Vec<StreamSpec>,
    pub(crate) history: History,
    pub(crate) rng: Prng,
    pub(crate) violations: Vec<Violation>,
    /// Batches flipped: (stream index, what).
    pub(crate) flips: Vec<(usize, Flip)>,
    /// Next incarnation per publisher slot.
    incarnations: HashMap<u32, u32>,
    subscriber_runs: u32,
    client_bin: PathBuf,
    health: Option<rill::Client>,
    /// Consecutive failed health requests; whether the last answer was no.
    health_failures: u32,
    unhealthy: bool,
    /// Health answers of no, and failed requests, over the run.
    pub(crate) unhealthy_answers: u64,
}

impl World {
    /// Creates the work directory, mounts powerfs, starts rilld and the
    /// clients.
    pub(crate) fn start(args: &Args) -> Result<World> {
        let work = args.work_dir.clone().unwrap_or_else(|| PathBuf::from(format!("/var/tmp/rill-chaos-{}-{}", args.seed, std::process::id())));
        std::fs::create_dir_all(&work).with_context(|| format!("create {}", work.display()))?;
        if std::fs::read_dir(&work)?.next().is_some() {
            bail!("{} is not empty", work.display());
        }
        for sub in ["acks", "events"] {
            std::fs::create_dir(work.join(sub))?;
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let (fs, data_dir) = if args.no_powerfs {
            let data = work.join("data");
            std::fs::create_dir(&data)?;
            (None, data)
        } else {
            let mnt = work.join("mnt");
            std::fs::create_dir(&mnt)?;
            let bin = crate::sibling_binary("RILL_POWERFS", "rill-powerfs")?;
            let fs = PowerFs::start(&bin, &mnt, &work.join("powerfs.sock"), deadline)?;
            (Some(fs), mnt)
        };
        let extra = ["--segment-bytes".to_owned(), SEGMENT_BYTES.to_string()];
        let d = Rilld::start_with_data_dir("chaos", &extra, Some(&data_dir), deadline)?;
        let start_ns = now_ns();
        let mut w = World {
            clients: Vec::new(),
            d,
            fs,
            work,
            data_dir,
            args: args.clone(),
            streams: streams(args.publishers, args.interval_ms),
            history: History::new(start_ns),
            rng: Prng::new(args.seed),
            violations: Vec::new(),
            flips: Vec::new(),
            incarnations: HashMap::new(),
            subscriber_runs: 0,
            client_bin: crate::sibling_binary("RILL_CHAOS_CLIENT", "rill-chaos-client")?,
            health: None,
            health_failures: 0,
            unhealthy: false,
            unhealthy_answers: 0,
        };
        w.history.record(start_ns, None, format!("rilld pid {} started; data dir {}", w.d.pid(), w.data_dir.display()));
        w.spawn_clients()?;
        Ok(w)
    }

    /// Starts every client: each stream's publishers and its subscriber.
    pub(crate) fn spawn_clients(&mut self) -> Result<()> {
        for s in 0..self.streams.len() {
            for k in 0..self.streams[s].publishers {
                let p = self.spawn_publisher(s, k)?;
                self.clients.push(p);
            }
            let p = self.spawn_subscriber(s)?;
            self.clients.push(p);
        }
        Ok(())
    }

    fn client_command(&self, role: &str, stream: usize, events: &Path) -> Command {
        let spec = &self.streams[stream];
        let mut cmd = Command::new(&self.client_bin);
        cmd.arg(role).arg("--socket").arg(&self.d.socket);
        cmd.args(["--stream", &spec.name, "--durability", &spec.durability.to_string(), "--seed", &self.args.seed.to_string()]);
        cmd.arg("--events").arg(events);
        cmd.env("NO_COLOR", "1");
        cmd
    }

    fn spawn_publisher(&mut self, stream: usize, k: u32) -> Result<Proc> {
        let slot = StreamSpec::slot(stream, k);
        let n = self.incarnations.entry(slot).or_insert(0);
        let index = publisher_index(slot, *n);
        *n += 1;
        let name = format!("publisher-{index}-{}-k{k}", self.streams[stream].name);
        let mut cmd = self.client_command("publish", stream, &self.work.join("events").join(format!("{name}.log")));
        cmd.args(["--index", &index.to_string(), "--rate", &self.args.rate.to_string(), "--batch-max", &self.args.batch_max.to_string()]);
        cmd.arg("--ack-log").arg(self.work.join("acks").join(format!("{index}.log")));
        cmd.arg("--stop-file").arg(self.work.join("stop-publishers"));
        // Odd publishers write in place, sometimes slowly (see the client).
        if k % 2 == 1 && !self.args.claim_work.is_zero() {
            cmd.args(["--claim-work-us", &self.args.claim_work.as_micros().to_string()]);
        }
        let worker = Worker::spawn_command(cmd, &name)?;
        Ok(Proc { role: Role::Publisher { k, index }, stream, name, worker })
    }

    fn spawn_subscriber(&mut self, stream: usize) -> Result<Proc> {
        self.subscriber_runs += 1;
        let name = format!("subscriber-{}-{}", self.subscriber_runs, self.streams[stream].name);
        let mut cmd = self.client_command("subscribe", stream, &self.work.join("events").join(format!("{name}.log")));
        cmd.arg("--stop-file").arg(self.work.join("stop-subscribers"));
        let worker = Worker::spawn_command(cmd, &name)?;
        Ok(Proc { role: Role::Subscriber, stream, name, worker })
    }

    /// Replaces client `i` (already dead) with a fresh process of the same
    /// role: a publisher as its slot's next incarnation.
    pub(crate) fn respawn(&mut self, i: usize) -> Result<String> {
        let (role, stream) = (self.clients[i].role, self.clients[i].stream);
        let p = match role {
            Role::Publisher { k, .. } => self.spawn_publisher(stream, k)?,
            Role::Subscriber => self.spawn_subscriber(stream)?,
        };
        let name = p.name.clone();
        self.clients[i] = p;
        Ok(name)
    }

    /// Records a fault now.
    pub(crate) fn fault(&mut self, kind: FaultKind, detail: String) {
        self.history.record(now_ns(), Some(kind), detail);
    }

    /// Records a note now.
    pub(crate) fn note(&mut self, detail: String) {
        self.history.record(now_ns(), None, detail);
    }

    /// Records a violation that is about no single message.
    pub(crate) fn violation(&mut self, what: String, expected: &str, got: String) {
        eprintln!("rill-chaos: VIOLATION {} {what}: expected {expected}; got {got}", self.history.at(now_ns()));
        self.violations.push(Violation { stream: "-".into(), publisher: None, seq: None, t_ns: Some(now_ns()), what, expected: expected.into(), got });
    }

    /// `kill -9` of rilld.
    pub(crate) fn kill_rilld(&mut self) {
        self.health = None;
        self.d.kill9();
    }

    /// Kills rilld's ring keeper, losing every ring's memory (what a
    /// reboot does to memory); rilld must be dead.
    pub(crate) fn wipe_memory(&self) -> Result<()> {
        self.d.lose_ring_memory(Instant::now() + START_TIMEOUT)
    }

    /// Starts rilld again. That it cannot start is a violation, and ends
    /// the run (`Err`).
    pub(crate) fn restart_rilld(&mut self, after: &str) -> Result<()> {
        self.health = None;
        match self.d.spawn(Instant::now() + START_TIMEOUT) {
            Ok(()) => {
                let pid = self.d.pid();
                self.note(format!("rilld pid {pid} started after {after}"));
                Ok(())
            }
            Err(e) => {
                let e = format!("{e:#}");
                self.violation(format!("rilld did not start after {after}"), "rilld accepting connections", e.clone());
                bail!("rilld did not start after {after}: {e}")
            }
        }
    }

    /// Watches until `until`: rilld alive and healthy, clients alive.
    pub(crate) fn watch(&mut self, until: Instant) -> Result<()> {
        loop {
            self.check_rilld()?;
            self.check_clients()?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep(WATCH_EVERY.min(until - now));
        }
    }

    /// rilld must run (restarted if it died by itself, which is a
    /// violation) and say it is healthy.
    pub(crate) fn check_rilld(&mut self) -> Result<()> {
        if let Some(status) = self.d.process().try_exited()? {
            let log = self.d.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            self.violation("rilld died by itself".into(), "rilld running", format!("{status}; its last lines:\n{}", tail.join("\n")));
            self.restart_rilld("it died by itself")?;
        }
        self.check_health();
        Ok(())
    }

    fn check_health(&mut self) {
        if self.health.is_none() {
            self.health = rill::Client::builder().socket(&self.d.socket).name("rill-chaos-health").request_timeout(Duration::from_secs(10)).connect().ok();
        }
        let answer = match &self.health {
            Some(c) => c.health().map_err(|e| e.to_string()),
            None => Err("cannot connect".to_owned()),
        };
        match answer {
            Ok(h) if h.healthy => {
                self.health_failures = 0;
                self.unhealthy = false;
            }
            Ok(h) => {
                self.health_failures = 0;
                self.unhealthy_answers += 1;
                if !self.unhealthy {
                    self.unhealthy = true;
                    self.violation("rilld said it is not healthy".into(), "healthy", h.detail);
                }
            }
            Err(e) => {
                self.health = None;
                self.health_failures += 1;
                // Twice in a row, a second apart: not a restart's moment.
                if self.health_failures == 2 {
                    self.unhealthy_answers += 1;
                    self.violation("rilld did not answer a health request (running, not stopped)".into(), "an answer", e);
                }
            }
        }
    }

    /// During a full disk: rilld must run, and while a stream's archiving
    /// is stopped on ENOSPC (its `archive_error` says so; that field also
    /// lists ranges lost to damage, which leave rilld healthy), rilld must
    /// say it is not healthy. Adds the streams found stopped to `stopped`;
    /// one violation per stream (in `stopped` with a `!`).
    pub(crate) fn check_archiving_stopped_is_unhealthy(&mut self, stopped: &mut Vec<String>) -> Result<()> {
        if let Some(status) = self.d.process().try_exited()? {
            self.violation("rilld died while the disk was full".into(), "rilld running", status.to_string());
            return self.restart_rilld("it died during a full disk");
        }
        let Ok(c) = rill::Client::builder().socket(&self.d.socket).name("rill-chaos-full-disk").request_timeout(Duration::from_secs(10)).connect() else {
            return Ok(());
        };
        let (Ok(streams), Ok(health)) = (c.streams(), c.health()) else { return Ok(()) };
        let full = |e: &str| e.contains("No space left") || e.contains("ENOSPC") || e.contains("os error 28");
        for s in &streams {
            let Some(why) = s.archive_error.as_deref().filter(|e| full(e)) else { continue };
            if !stopped.iter().any(|x| x.trim_end_matches('!') == s.name) {
                stopped.push(s.name.clone());
            }
            if health.healthy && !stopped.contains(&format!("{}!", s.name)) {
                stopped.retain(|x| x != &s.name);
                stopped.push(format!("{}!", s.name));
                self.violation(format!("rilld said it is healthy while archiving of {} was stopped", s.name), "healthy: no", format!("yes ({}); archive error: {why}", health.detail));
            }
        }
        Ok(())
    }

    /// A client that exited by itself is a violation; it is restarted.
    pub(crate) fn check_clients(&mut self) -> Result<()> {
        for i in 0..self.clients.len() {
            let Some(status) = self.clients[i].worker.try_exited()? else { continue };
            let (name, stderr) = (self.clients[i].name.clone(), self.clients[i].worker.stderr());
            let tail: Vec<&str> = stderr.lines().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect();
            self.violation(format!("client {name} exited by itself"), "clients run until stopped", format!("{status}; stderr:\n{}", tail.join("\n")));
            let new = self.respawn(i)?;
            self.note(format!("{name} exited by itself ({status}); started {new}"));
        }
        Ok(())
    }
}
