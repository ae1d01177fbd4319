//! The end of a run: stop the clients, let rilld archive everything, stop
//! it cleanly and start it again, read every stream from
//! `Start::Earliest` with a fresh subscriber, check it
//! ([`rill_chaos::verify`]), and report.

use crate::world::{Role, World};
use crate::Args;
use anyhow::{Context, Result};
use rill::{Client, PollError, Start};
use rill_chaos::history::FaultKind;
use rill_chaos::logs::{read_events, AckLog};
use rill_chaos::now_ns;
use rill_chaos::spec::MAX_LEN;
use rill_chaos::verify::{self, Delivered, Expected, Notice, Outcome, StreamRead, Violation};
use rill_tests::payload;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What the run found.
#[derive(Debug)]
pub(crate) struct Report {
    /// The summary line.
    pub(crate) line: String,
    /// Violations in all.
    pub(crate) violations: usize,
}

/// How long each step of the end may take.
const STEP: Duration = Duration::from_secs(120);
/// A final read with no progress for this long gives up.
const READ_STALL: Duration = Duration::from_secs(60);

/// Ends the run (see the module docs). `early` is why fault injection
/// stopped before its time, if it did; without rilld nothing can be read
/// back, and that is reported.
pub(crate) fn finish(mut w: World, args: &Args, early: Option<anyhow::Error>) -> Result<Report> {
    w.note("faults stop".into());
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut none_streams = Vec::new();
    if early.is_none() {
        settle(&mut w)?;
        for s in 0..w.streams.len() {
            let o = check_stream(&mut w, s)?;
            if !w.streams[s].synced() {
                none_streams.push((w.streams[s].name.clone(), o.none_lost_to_power));
            }
            outcomes.push(o);
        }
        w.check_rilld()?;
        if let Err(e) = w.d.stop(Instant::now() + STEP) {
            w.violation("rilld did not stop cleanly at the end".into(), "exit status 0 after SIGTERM", format!("{e:#}"));
        }
    }
    for c in &mut w.clients {
        c.worker.kill();
    }
    let (live, lost_live) = subscriber_events(&w)?;
    let mut violations: Vec<Violation> = std::mem::take(&mut w.violations);
    violations.extend(live);
    for o in &mut outcomes {
        violations.append(&mut o.violations);
    }
    violations.sort_by_key(|v| v.t_ns.unwrap_or(u64::MAX));
    save_files(&w);
    let line = summary(&w, args, &outcomes, violations.len());
    print_details(&w, args, &outcomes, &violations, lost_live, &none_streams);
    let keep = args.keep || !violations.is_empty() || early.is_some();
    let work = w.work.clone();
    drop(w); // clients, rilld, then the filesystem (unmounted)
    if keep {
        eprintln!("rill-chaos: the run's files are in {}", work.display());
    } else if rill_powerfs::process::is_mounted(&work.join("mnt")).unwrap_or(true) {
        eprintln!("rill-chaos: {} is still mounted; leaving {}", work.join("mnt").display(), work.display());
    } else if let Err(e) = std::fs::remove_dir_all(&work) {
        eprintln!("rill-chaos: could not remove {}: {e}", work.display());
    }
    match early {
        Some(e) if violations.is_empty() => Err(e),
        _ => Ok(Report { line, violations: violations.len() }),
    }
}

/// Stops the publishers (each finishes its batch), waits until rilld has
/// archived every stream to its tail, lets the subscribers read to the
/// tail and exit, then stops rilld cleanly and starts it again.
fn settle(w: &mut World) -> Result<()> {
    std::fs::write(w.work.join("stop-publishers"), b"")?;
    wait_clients(w, true)?;
    let client = w.d.client()?;
    let deadline = Instant::now() + STEP;
    for spec in w.streams.clone() {
        loop {
            let info = client.stream_info(&spec.name).with_context(|| format!("stream_info {}", spec.name))?;
            if info.durable_position >= info.tail {
                break;
            }
            if Instant::now() >= deadline {
                w.violation(
                    format!("{} was not archived to its tail after the publishers stopped", spec.name),
                    &format!("durable position {}", info.tail),
                    format!("{} (archive error {:?})", info.durable_position, info.archive_error),
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    drop(client);
    std::fs::write(w.work.join("stop-subscribers"), b"")?;
    wait_clients(w, false)?;
    w.check_rilld()?;
    w.note("every client stopped; stopping rilld cleanly".into());
    if let Err(e) = w.d.stop(Instant::now() + STEP) {
        w.violation("rilld did not stop cleanly after the run".into(), "exit status 0 after SIGTERM", format!("{e:#}"));
        w.kill_rilld();
    }
    w.restart_rilld("the end of the run (for the final reads)")
}

/// Waits for every publisher (or subscriber) to exit by itself; one
/// that fails, or does not exit in time, is a violation.
fn wait_clients(w: &mut World, publishers: bool) -> Result<()> {
    let deadline = Instant::now() + STEP;
    for i in 0..w.clients.len() {
        if matches!(w.clients[i].role, Role::Publisher { .. }) != publishers {
            continue;
        }
        let name = w.clients[i].name.clone();
        match w.clients[i].worker.wait_exit(deadline) {
            Ok(s) if s.success() => {}
            Ok(s) => {
                let e = w.clients[i].worker.stderr();
                w.violation(format!("{name} failed at the end"), "exit status 0", format!("{s}: {e}"));
            }
            Err(e) => w.violation(format!("{name} did not finish at the end"), "an exit once the stop file exists", format!("{e:#}")),
        }
    }
    Ok(())
}

/// Reads stream `s` from Earliest with a fresh subscriber and checks it.
fn check_stream(w: &mut World, s: usize) -> Result<Outcome> {
    let spec = w.streams[s].clone();
    let client = w.d.client()?;
    let read = read_stream(&client, &spec.name, w.args.seed);
    let mut acks = Vec::new();
    for entry in std::fs::read_dir(w.work.join("acks"))? {
        let log = AckLog::read(&entry?.path())?;
        if log.stream == spec.name {
            acks.push(log);
        }
    }
    acks.sort_by_key(|a| a.publisher);
    let flips: Vec<_> = w.flips.iter().filter(|(fs, _)| *fs == s).map(|(_, f)| f.clone()).collect();
    let cuts = w.history.times(FaultKind::PowerCut);
    Ok(verify::check(&read, &Expected { spec: &spec, stream_index: s, acks: &acks, flips: &flips, power_cuts: &cuts }))
}

/// Everything a subscriber from `Start::Earliest` gets up to the tail
/// (nobody publishes any more).
fn read_stream(client: &Client, stream: &str, seed: u64) -> StreamRead {
    let mut r = StreamRead::default();
    let mut sub = match client.open_subscriber(stream, Start::Earliest, None) {
        Ok(s) => s,
        Err(e) => {
            r.error = Some(format!("open a subscriber from Earliest: {e}"));
            return r;
        }
    };
    let tail = match client.stream_info(stream) {
        Ok(i) => i.tail,
        Err(e) => {
            r.error = Some(format!("stream_info: {e}"));
            return r;
        }
    };
    let mut last_progress = Instant::now();
    while sub.position() < tail {
        let before = sub.position();
        let (delivered, damaged) = (&mut r.delivered, &mut r.damaged);
        let polled = sub.poll_blocking(1024, Duration::from_secs(1), |m| match payload::verify(m.payload, seed, MAX_LEN) {
            Ok((publisher, seq)) => delivered.push(Delivered { position: m.position, publisher, seq, timestamp_ns: m.timestamp_ns }),
            Err(d) => damaged.push((m.position, m.timestamp_ns, d.to_string())),
        });
        match polled {
            Ok(_) => {}
            Err(PollError::Lost { from, to, reason }) => r.notices.push(Notice { from, to, reason }),
            Err(e) => {
                r.error = Some(format!("poll at {before} (tail {tail}): {e}"));
                return r;
            }
        }
        if sub.position() != before {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > READ_STALL {
            r.error = Some(format!("no progress for {READ_STALL:?} at position {before}, tail {tail}"));
            return r;
        }
    }
    r
}

/// The subscribers' `VIOLATION` lines as violations, and how many `LOST`
/// notices they saw.
fn subscriber_events(w: &World) -> Result<(Vec<Violation>, u64)> {
    let mut out = Vec::new();
    let mut lost = 0;
    for entry in std::fs::read_dir(w.work.join("events"))? {
        let path = entry?.path();
        let client = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        for e in read_events(&path)? {
            match e.kind.as_str() {
                "LOST" => lost += 1,
                "VIOLATION" => out.push(Violation {
                    stream: client.clone(),
                    publisher: None,
                    seq: None,
                    t_ns: Some(e.t_ns),
                    what: format!("a live subscriber saw: {}", e.text),
                    expected: "see the line".into(),
                    got: "see the line".into(),
                }),
                _ => {}
            }
        }
    }
    Ok((out, lost))
}

fn save_files(w: &World) {
    let mut files = vec![("history.log", w.history.to_string()), ("rilld.log", w.d.log())];
    if let Some(fs) = &w.fs {
        files.push(("powerfs.log", fs.log()));
    }
    for (name, text) in files {
        if let Err(e) = std::fs::write(w.work.join(name), text) {
            eprintln!("rill-chaos: could not write {name}: {e}");
        }
    }
}

fn summary(w: &World, args: &Args, outcomes: &[Outcome], violations: usize) -> String {
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let counts: Vec<String> = FaultKind::ALL.iter().map(|&k| format!("{}={}", k.name(), w.history.count(k))).collect();
    format!(
        "chaos seed={} duration={} faults={} ({}) messages_checked={} acknowledged={} lost_to_bitflips={} violations={violations}",
        args.seed,
        rill_chaos::duration::show(args.duration),
        w.history.faults(),
        counts.join(" "),
        sum(|o| o.delivered),
        sum(|o| o.acknowledged),
        sum(|o| o.lost_to_bitflips),
    )
}

fn print_details(w: &World, args: &Args, outcomes: &[Outcome], violations: &[Violation], lost_live: u64, none_streams: &[(String, u64)]) {
    for (spec, o) in w.streams.iter().zip(outcomes) {
        eprintln!(
            "rill-chaos: {} ({}): read {} ({} never acknowledged), acknowledged {} ({} read, {} lost to bit flips{}), {} Lost notices ({} outside flipped batches), {} violations",
            spec.name,
            spec.durability,
            o.delivered,
            o.unacked_delivered,
            o.acknowledged,
            o.acked_delivered,
            o.lost_to_bitflips,
            if spec.synced() { String::new() } else { format!(", {} written but lost to power cuts: allowed, none never syncs", o.none_lost_to_power) },
            o.notices,
            o.notices_unflipped,
            o.violations.len(),
        );
    }
    for (name, n) in none_streams {
        eprintln!("rill-chaos: none-durability losses (not violations): {name}: {n} acknowledged-as-written messages lost to power cuts");
    }
    eprintln!("rill-chaos: {} batches flipped; live subscribers saw {lost_live} Lost notices; rilld unhealthy or silent in {} health checks", w.flips.len(), w.unhealthy_answers);
    if violations.is_empty() {
        return;
    }
    let mut text = format!("rill-chaos: {} VIOLATIONS; the first {}:\n", violations.len(), args.show.min(violations.len()));
    for (i, v) in violations.iter().take(args.show).enumerate() {
        let _ = writeln!(text, "  {}. {v}", i + 1);
        if let Some(t) = v.t_ns {
            let _ = writeln!(text, "     at {}; faults around it:\n{}", w.history.at(t), w.history.around(t, 4, 2));
        }
    }
    let _ = write!(text, "rill-chaos: replay with: {} (the same choices, not the same timing); now {}", args.replay_line(), w.history.at(now_ns()));
    eprintln!("{text}");
}
