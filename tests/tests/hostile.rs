//! A client may hurt only its own data (issue #11): attacks by a client
//! process (`hostile-client`, src/bin/hostile-client.rs, speaking the
//! protocol by hand as uid 65534) against a real `rilld`, with honest
//! clients beside it whose promises must hold.
//!
//! Every wait has a watchdog that turns a hang into a failure; no test
//! asserts how long anything took. Needs root (the attacker runs as
//! another uid); elsewhere it fails unless `RILL_SKIP_ROOT_TESTS=1`.
//!
//! `cargo test --release -p rill-tests --test hostile`.
//!
//! The random-writes test (`random_writes_hurt_only_the_attackers_own_streams`)
//! found the defects the deterministic tests after it reproduce, one each
//! (a publisher hanging rilld through its ring header; a former subscriber
//! writing the next holder's slot, or its own old one; a co-publisher
//! wedging `offer` or rewinding the tail to fake durability); all of them
//! run always.

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rill::{DurableError, Durability, Start, StreamOptions};
use rill_tests::daemon::{rilld_bin, Rilld};
use rill_tests::harness::{field, root_or_skip, stress_seed, Summary, TempRingDir, Worker};
use std::collections::HashMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

const HOSTILE: &str = env!("CARGO_BIN_EXE_hostile-client");
const RILL_WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
const TOLERANT: &str = env!("CARGO_BIN_EXE_tolerant-worker");
const ATTACKER_UID: u32 = 65534;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 900 } else { 300 })
}

fn signal(pid: u32, sig: Signal) -> Result<()> {
    kill(Pid::from_raw(i32::try_from(pid)?), sig).with_context(|| format!("{sig} to {pid}"))
}

/// A publisher of uid 65534 on a persisted (`always`) stream writes
/// `u64::MAX` over the durable position in the ring file's header (it may
/// write the ring: it publishes), and tries to write the daemon page,
/// where rilld keeps the positions it vouches for: through the read-only
/// fd it was given, and by reopening that fd for writing. Both fail. Then
/// rilld is stopped (SIGSTOP): nothing can become durable, and an honest
/// publisher's `wait_durable` on a new message must not return (before
/// the fix it returned at once, with the forged position). Once rilld
/// goes on, it does; after `kill -9` and a reboot the log replays every
/// acknowledged message.
#[test]
fn a_publisher_cannot_forge_durability() -> Result<()> {
    let name = "hostile_forge_durable";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    // Kept until the end: the restarted rilld reads it again.
    let (mut d, _etc) = rilld_for_shared(name, deadline)?;
    let stream = "shared.durable";
    let client = d.client()?;
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_persist(Some(Durability::Always));
    let mut publ = client.publisher_with(stream, options)?;
    let first = publ.offer(b"before the attack")?;
    publ.wait_durable(first, Duration::from_secs(60))?;

    let mut cmd = Command::new(HOSTILE);
    cmd.arg("forge-durable").arg("--socket").arg(&d.socket).args(["--stream", stream]);
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut attacker, attacker_stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    let forged = attacker.wait_line("FORGED", deadline)?;
    attacker.wait_line("DONE", deadline)?;
    ensure!(field(&forged, "header") == Some("ok"), "the attacker could not even write its own ring's header: {forged}");
    for what in ["daemon_write", "daemon_reopen"] {
        ensure!(field(&forged, what).is_some_and(|v| v.starts_with("refused:")), "the attacker wrote the daemon page ({what}): {forged}");
    }

    signal(d.pid(), Signal::SIGSTOP)?;
    let second = publ.offer(b"while rilld is stopped")?;
    let early = publ.wait_durable(second, Duration::from_secs(2));
    signal(d.pid(), Signal::SIGCONT)?;
    match early {
        Err(DurableError::TimedOut { .. }) => {}
        other => bail!("wait_durable returned {other:?} while rilld (and so its archiver) was stopped: the forged durable position was believed"),
    }
    let durable = publ.wait_durable(second, Duration::from_secs(60))?;
    ensure!(durable > second && durable < u64::MAX / 2, "durable position {durable} after rilld went on");
    let info = client.stream_info(stream)?;
    ensure!(info.durable_position == durable, "rilld reports durable position {}; the publisher saw {durable}", info.durable_position);

    drop(attacker_stdin);
    attacker.wait_exit(deadline)?;
    drop((publ, client));
    d.kill9();
    d.lose_ring_memory(deadline)?;
    d.spawn(deadline)?;
    let client = d.client()?;
    let mut sub = client.subscriber(stream, Start::Earliest)?;
    let mut got = Vec::new();
    while got.len() < 2 {
        ensure!(Instant::now() < deadline, "watchdog: the log replayed {got:?}");
        sub.poll_blocking(2, Duration::from_millis(100), |m| got.push((m.position, String::from_utf8_lossy(m.payload).into_owned())))?;
    }
    ensure!(
        got == [(first, "before the attack".to_owned()), (second, "while rilld is stopped".to_owned())],
        "after kill -9 and a reboot the log replays {got:?}"
    );
    d.ensure_alive()
}

/// A client of uid 65534, allowed to publish and subscribe to a stream,
/// tries to shrink (ftruncate to 0) and grow (fallocate by 64 MiB) every
/// fd it was given: the ring, the wake and daemon pages, every slot page
/// and its own. Before rings were sealed memfds, shrinking a slot page
/// made rilld die of SIGBUS at its next janitor tick, together with every
/// client mapping the page (this test's own publisher and subscriber among
/// them). Now every attempt is refused and no length changes; the honest
/// publisher and subscriber in this process carry on (every message once,
/// in order), a new subscriber opens, and rilld stays healthy.
#[test]
fn a_client_cannot_resize_what_others_map() -> Result<()> {
    let name = "hostile_resize";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let (mut d, _etc) = rilld_for_shared(name, deadline)?;
    let stream = "shared.resize";
    let client = d.client()?;
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024);
    let mut sub = client.subscriber_with(stream, Start::Latest, options)?;
    let mut publ = client.publisher(stream)?;
    let mut next = 0u32;
    let mut round = |publ: &mut rill::Publisher, sub: &mut rill::Subscriber, count: u32| -> Result<()> {
        let (from, to) = (next, next + count);
        let mut want = from;
        let mut sent = from;
        while want < to {
            ensure!(Instant::now() < deadline, "watchdog: {want} of {from}..{to} read");
            while sent < to && publ.offer(&sent.to_le_bytes()).is_ok() {
                sent += 1;
            }
            sub.poll_blocking(256, Duration::from_millis(10), |m| {
                if m.payload == want.to_le_bytes() {
                    want += 1;
                } else {
                    want = u32::MAX; // reported below
                }
            })?;
            ensure!(want != u32::MAX, "a message out of order or damaged after {from}");
        }
        next = to;
        Ok(())
    };
    round(&mut publ, &mut sub, 100)?;

    let mut cmd = Command::new(HOSTILE);
    cmd.arg("resize").arg("--socket").arg(&d.socket).args(["--stream", stream]);
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut attacker, attacker_stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    let resized = attacker.wait_line("RESIZED", deadline)?;
    attacker.wait_line("DONE", deadline)?;
    eprintln!("{name}: {resized}");
    let fds: usize = field(&resized, "fds").context("fds")?.parse()?;
    ensure!(fds >= 8, "the attacker got only {fds} fds: {resized}");
    for what in ["truncated", "grown", "sizes_changed"] {
        ensure!(field(&resized, what) == Some("0"), "the attacker resized what others map ({what}): {resized}");
    }
    // Several janitor ticks, each of which reads every slot page.
    std::thread::sleep(Duration::from_millis(300));
    d.ensure_alive()?;
    round(&mut publ, &mut sub, 5_000)?;
    let mut late = client.subscriber(stream, Start::Latest)?;
    round(&mut publ, &mut late, 10)?;
    drop(attacker_stdin);
    let status = attacker.wait_exit(deadline)?;
    ensure!(status.success(), "hostile-client: {status}: {}", attacker.stderr());
    d.ensure_alive()
}

/// How long the scribbling lasts: `RILL_SCRIBBLE_SECS`, default 4.
fn scribble_secs() -> u64 {
    std::env::var("RILL_SCRIBBLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4)
}

/// `["--key", "value", ...]` from pairs.
fn opts(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().flat_map(|(k, v)| [format!("--{k}"), v.clone()]).collect()
}

/// A worker that logs errors only (`RILL_LOG=error`): a publisher on a
/// ring others scribble on may log a warning per attempt, as fast as it
/// can.
fn quiet_worker(exe: &str, name: &str, args: &[String]) -> Result<Worker> {
    let mut cmd = Command::new(exe);
    cmd.args(args).env("NO_COLOR", "1").env("RILL_LOG", "error");
    Worker::spawn_command(cmd, name)
}

/// Waits for a `PROGRESS n=N` line with `N > 0`: the worker got going.
fn wait_progress(w: &mut Worker, deadline: Instant) -> Result<()> {
    let moving = |l: &str| l.starts_with("PROGRESS") && field(l, "n").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n > 0);
    w.wait_line_after(0, "progress", deadline, moving).map(drop)
}

/// A process that crashed (a signal, or a Rust panic's exit status 101)
/// rather than failing a check.
fn crashed(status: ExitStatus) -> bool {
    status.signal().is_some() || status.code() == Some(101)
}

/// The `SUMMARY` of a tolerant worker, which exits 0 whatever it saw: any
/// other exit is a crash or a setup error, and fails here with its stderr.
fn tolerant_summary(w: &mut Worker, deadline: Instant) -> Result<Summary> {
    let status = exit_or_backtrace(w, Duration::from_secs(30), deadline)?;
    let name = w.name().to_owned();
    ensure!(!crashed(status), "{name} CRASHED ({status}); stderr:\n{}", w.stderr());
    ensure!(status.success(), "{name} exited with {status}; stderr:\n{}", w.stderr());
    w.summary().with_context(|| format!("{name} printed no summary; stderr: {}", w.stderr()))
}

/// A strict `rill-worker`'s summary (it must exit 0), saying whether it
/// crashed rather than failed a check.
fn strict_summary(w: &mut Worker, deadline: Instant) -> Result<Summary> {
    // Past their stall limit (60 s) they give up by themselves.
    let status = exit_or_backtrace(w, Duration::from_secs(90), deadline)?;
    let name = w.name().to_owned();
    let summary = w.summary();
    ensure!(!crashed(status), "{name} CRASHED ({status}); summary {summary:?}; stderr:\n{}", w.stderr());
    ensure!(status.success(), "{name} failed ({status}): summary {summary:?}; stderr:\n{}", w.stderr());
    summary.with_context(|| format!("{name} printed no summary; stderr: {}", w.stderr()))
}

/// A message in a log: `(publisher, seq)`, `None` if it is not an intact
/// message of the run.
type Logged = Option<(u64, u64)>;

/// `(position, message)` per line of a `rill-worker read-back --out` file.
fn read_back_lines(path: &Path) -> Result<Vec<(u64, Logged)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            ensure!(f.len() == 3, "read-back line {l:?}");
            let pos = f[0].parse()?;
            Ok((pos, if f[1] == "damaged" { None } else { Some((f[1].parse()?, f[2].parse()?)) }))
        })
        .collect()
}

/// Whether rilld answers `health` (and says healthy); if it does not
/// answer, a backtrace of every rilld thread (gdb) and its log are saved
/// next to each other in the temporary directory, and named in the result.
fn check_health(d: &Rilld, client: &rill::Client, tag: &str) -> Result<(), String> {
    match client.health() {
        Ok(h) if h.healthy => Ok(()),
        Ok(h) => Err(format!("{tag}: rilld says it is unhealthy: {}", h.detail)),
        Err(e) => Err(format!("{tag}: rilld does not answer health ({e}); {}", save_backtrace(d.pid(), tag, Some(&d.log())))),
    }
}

/// Saves `gdb`'s backtrace of every thread of process `pid` (and `log`,
/// if given) in the temporary directory; returns where, and the main
/// thread's frames in rill code.
fn save_backtrace(pid: u32, tag: &str, log: Option<&str>) -> String {
    let base = std::env::temp_dir().join(format!("{tag}-{pid}"));
    let with = |ext: &str| std::path::PathBuf::from(format!("{}.{ext}", base.display()));
    let bt = with("gdb.txt");
    let out = Command::new("timeout")
        .args(["120", "gdb", "-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
        .unwrap_or_else(|e| format!("gdb: {e}"));
    let _ = std::fs::write(&bt, &out);
    let mut saved = format!("backtrace in {}", bt.display());
    if let Some(log) = log {
        let path = with("log");
        let _ = std::fs::write(&path, log);
        saved += &format!(", log in {}", path.display());
    }
    // The main thread: its frames in rill code.
    let main: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("Thread 1 "))
        .take_while(|l| !l.is_empty())
        .filter_map(|l| {
            // "#N  [0x.. in ]function (args) at file:line"
            let f = l.split_once("  ")?.1;
            let f = f.split_once(" in ").map_or(f, |(_, f)| f);
            let function = f.split(" (").next()?;
            let at = l.rsplit_once(" at ").map(|(_, at)| at).unwrap_or("?");
            (function.starts_with("rill") || function.starts_with("tolerant_worker")).then(|| format!("{function} at {at}"))
        })
        .take(8)
        .collect();
    format!("{saved}; main thread:\n    {}", main.join("\n    "))
}

/// Waits (up to `within`) for `w` to exit; if it has not, saves a
/// backtrace of it (see [`save_backtrace`]), kills it and says so.
fn exit_or_backtrace(w: &mut Worker, within: Duration, deadline: Instant) -> Result<ExitStatus> {
    let until = (Instant::now() + within).min(deadline);
    while w.try_exited()?.is_none() {
        if Instant::now() >= until {
            let evidence = save_backtrace(w.pid(), &format!("hostile_scribble-{}", w.name()), None);
            let _ = w.wait_exit(Instant::now());
            bail!("{} HUNG: still running {within:?} after it was told to finish (PROGRESS lines stopped?); {evidence}", w.name());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    w.wait_exit(deadline)
}

/// The data frames of a stream's segment files in `dir`, read straight
/// from disk (rill-store; no rilld involved): position -> what
/// `payload::verify` makes of the payload (`(publisher, seq)`, or `None`
/// for anything else), and the damage the scans reported.
fn frames_on_disk(dir: &Path, seed: u64, max_len: usize) -> Result<(HashMap<u64, Logged>, Vec<String>)> {
    let (mut frames, mut damage) = (HashMap::new(), Vec::new());
    for (first, path) in rill_store::list_segments(dir).with_context(|| format!("listing {}", dir.display()))? {
        let bytes = std::fs::read(&path)?;
        let scan = rill_store::scan_segment(&bytes, first);
        if let Some(d) = &scan.damage {
            damage.push(format!("{}: {d}", path.display()));
        }
        if !scan.holes.is_empty() {
            damage.push(format!("{}: {} holes", path.display(), scan.holes.len()));
        }
        for b in &scan.batches {
            let (_, body) = rill_store::batch_at(&bytes, b.file_offset, None).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            let mut off = 0;
            while off < body.len() {
                let f = rill_shm::frame::parse_frame(&body[off..], usize::MAX).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                if f.header.kind == rill_shm::frame::FrameKind::Data {
                    let verified = rill_tests::payload::verify(f.payload, seed, max_len).ok();
                    frames.insert(f.header.position, verified.map(|(k, seq)| (u64::from(k), seq)));
                }
                off += f.header.span();
            }
        }
    }
    Ok((frames, damage))
}

/// Random writes into everything a client may write (issue #11): a client
/// of uid 65534 may publish and subscribe to `shared.*` streams and only
/// subscribe to `public.*` ones. It opens a publisher on `shared.feed`
/// and `shared.durable` and a subscriber on all four streams, and for a
/// few seconds (`RILL_SCRIBBLE_SECS`) writes random bytes, plausible
/// values and salted frame headers into every mapping it may write (the
/// shared rings, every wake page, its own slot pages), and tries to write
/// each read-only one (`hostile-client scribble`). Beside it, in processes
/// of their own, honest publishers and subscribers of checksummed,
/// sequence-numbered messages run on all four streams, and honest
/// subscribers join `public.*` while it scribbles (they may get a slot the
/// attacker gave up, or whose page it still maps). `--stall-limit-ms 2000`
/// lets rilld revoke an attacker's slot that holds a public stream back.
///
/// * `public.feed`, `public.durable` (it may only subscribe): every honest
///   subscriber gets every message exactly once, in order, intact; the
///   late ones from their first message on. `public.durable`'s publisher
///   waits for durability every 4 messages (`always`), and after the run
///   the log replays every message sent, each acknowledged one at the
///   position it was acknowledged at.
/// * `shared.feed`, `shared.durable` (it publishes): no honest process
///   crashes (signal or panic), no subscriber is handed a payload over the
///   stream's maximum or a position that does not increase; what it is
///   handed is counted as honest (verifies) or foreign. Every message
///   `shared.durable`'s publisher saw acknowledged durable is in its
///   segment files at its position (read from disk with rill-store), and
///   in rilld's replay from `Earliest` after the run if rilld can still
///   hand that stream out (the attacker may wreck its ring header, so a
///   refused replay is only reported).
/// * The attacker could write nothing read-only; rilld stays alive, answers
///   `health` and says it is healthy (if it does not answer, a gdb
///   backtrace of its threads and its log are saved in the temporary
///   directory), and a fresh stream works end to end.
///
/// Every violation is collected and reported at the end. Seeded
/// (`RILL_STRESS_SEED`), but the interleaving is the scheduler's: a seed
/// makes the attacker's writes the same, not their timing.
#[test]
fn random_writes_hurt_only_the_attackers_own_streams() -> Result<()> {
    let name = "hostile_scribble";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let seed = stress_seed(name);
    let secs = scribble_secs();
    let rules = format!("[[allow]]\nuids = [{ATTACKER_UID}]\npublish = [\"shared.\"]\nsubscribe = [\"shared.\", \"public.\"]\n");
    let (mut d, _etc) = rilld_with_rules(name, &rules, &["--stall-limit-ms".into(), "2000".into()], deadline)?;
    let client = d.client()?;
    let (b, bd, a, ad) = ("public.feed", "public.durable", "shared.feed", "shared.durable");
    let plain = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(2048).with_keep(true);
    let durable = plain.clone().with_persist(Some(Durability::Always));
    for (stream, options) in [(b, &plain), (bd, &durable), (a, &plain), (ad, &durable)] {
        client.create_stream(stream, options.clone())?;
    }
    let stop = d.dir.join("stop");
    let dir = d.dir.path().to_path_buf();
    let done = |stream: &str| dir.join(format!("done.{stream}"));
    let socket = d.socket.display().to_string();
    let common = |role: &str, stream: &str, more: &[(&str, String)]| -> Vec<String> {
        let mut v = vec![role.to_owned()];
        v.extend(opts(&[("socket", socket.clone()), ("stream", stream.to_owned()), ("seed", seed.to_string())]));
        v.extend(opts(more));
        v
    };
    let shape = |persist: bool| -> Vec<(&str, String)> {
        let mut v = vec![("capacity", (64u64 << 10).to_string()), ("max-len", "2048".to_owned()), ("stall-secs", "60".to_owned())];
        if persist {
            v.push(("persist", "always".to_owned()));
        }
        v
    };
    let strict_sub = |stream: &str, persist: bool, mode: (&str, &str), label: &str| -> Result<Worker> {
        let mut more = shape(persist);
        more.extend([(mode.0, mode.1.to_owned()), ("done-file", done(stream).display().to_string())]);
        let mut w = Worker::spawn(RILL_WORKER, label, &common("subscribe", stream, &more))?;
        w.wait_line("READY", deadline)?;
        Ok(w)
    };
    let tolerant_sub = |stream: &str, label: &str| -> Result<Worker> {
        let more = [("publishers", "1".to_owned()), ("done-file", done(stream).display().to_string())];
        let mut w = Worker::spawn(TOLERANT, label, &common("subscribe", stream, &more))?;
        w.wait_line("READY", deadline)?;
        Ok(w)
    };

    // Honest subscribers, then publishers, on all four streams.
    let mut sub_b = strict_sub(b, false, ("publishers", "1"), "sub-public.feed")?;
    let mut sub_bd = strict_sub(bd, true, ("publishers", "1"), "sub-public.durable")?;
    let mut sub_a = tolerant_sub(a, "sub-shared.feed")?;
    let mut sub_ad = tolerant_sub(ad, "sub-shared.durable")?;
    let paced = [("pause-every", "32".to_owned()), ("pause-us", "2000".to_owned())];
    let mut more = shape(false);
    more.extend(paced.clone());
    more.extend([("publisher", "0".to_owned()), ("until-file", stop.display().to_string())]);
    let mut pub_b = Worker::spawn(RILL_WORKER, "pub-public.feed", &common("publish", b, &more))?;
    let mut more = shape(true);
    more.extend([("publisher", "0".to_owned()), ("until-file", stop.display().to_string()), ("wait-durable", "4".to_owned())]);
    let mut pub_bd = Worker::spawn(RILL_WORKER, "pub-public.durable", &common("publish", bd, &more))?;
    let mut more = vec![("publisher", "0".to_owned()), ("until-file", stop.display().to_string())];
    more.extend(paced);
    let mut pub_a = quiet_worker(TOLERANT, "pub-shared.feed", &common("publish", a, &more))?;
    let mut args = common("publish", ad, &[("publisher", "0".to_owned()), ("until-file", stop.display().to_string())]);
    args.push("--wait-durable".into());
    let mut pub_ad = quiet_worker(TOLERANT, "pub-shared.durable", &args)?;
    for w in [&mut pub_b, &mut pub_bd, &mut pub_a, &mut pub_ad] {
        wait_progress(w, deadline)?;
    }

    // The attacker, and honest subscribers joining the public streams
    // while it scribbles.
    let mut cmd = Command::new(HOSTILE);
    cmd.arg("scribble").args(opts(&[
        ("socket", socket.clone()),
        ("publish", format!("{a},{ad}")),
        ("subscribe", format!("{b},{bd},{a},{ad}")),
        ("seconds", secs.to_string()),
        ("seed", seed.to_string()),
    ]));
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut attacker, attacker_stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    let began = Instant::now();
    // From here on every violation is collected, so that one run shows
    // all of them.
    let mut failures: Vec<String> = Vec::new();
    let mut fail = |what: String| {
        eprintln!("{name}: VIOLATION: {what}");
        failures.push(what);
    };
    let mut late = Vec::new();
    for (at, stream, persist) in [(1, b, false), (2, bd, true), (3, b, false), (4, b, false)] {
        let when = began + Duration::from_millis(secs * 1000 * at / 5);
        while Instant::now() < when {
            ensure!(attacker.try_exited()?.is_none(), "hostile-client exited early: {}", attacker.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        match strict_sub(stream, persist, ("follow", "1"), &format!("late{at}-{stream}")) {
            Ok(w) => late.push(w),
            Err(e) => {
                let health = check_health(&d, &client, &format!("{name}-{seed}-late{at}")).err().unwrap_or_else(|| "rilld answers health".into());
                fail(format!("an honest subscriber could not join {stream} while the attacker scribbled: {e:#}; {health}"));
            }
        }
    }
    let scribbled = attacker.wait_line("SCRIBBLED", deadline)?;
    attacker.wait_line("DONE", deadline)?;
    eprintln!("{name}: {scribbled}");
    d.ensure_alive()?;
    let health_after_scribbling = check_health(&d, &client, &format!("{name}-{seed}-after-scribbling"));

    // Publishers stop; then the subscribers read to the end.
    if let Err(e) = health_after_scribbling {
        fail(e);
    }
    eprintln!("{name}: scribbling over after {:?}; stopping the publishers", began.elapsed());
    std::fs::write(&stop, b"")?;
    let mut summaries = HashMap::new();
    for (w, strict, stream) in [(&mut pub_b, true, b), (&mut pub_bd, true, bd), (&mut pub_a, false, a), (&mut pub_ad, false, ad)] {
        let label = w.name().to_owned();
        match if strict { strict_summary(w, deadline) } else { tolerant_summary(w, deadline) } {
            Ok(s) => {
                summaries.insert(label, s);
            }
            Err(e) => fail(format!("{e:#}")),
        }
        std::fs::write(done(stream), b"")?;
    }
    eprintln!("{name}: publishers done after {:?}", began.elapsed());
    let sent = |label: &str| summaries.get(label).map(|s| s.num("sent")).transpose();
    let (sent_b, sent_bd) = (sent("pub-public.feed")?, sent("pub-public.durable")?);
    for (w, sent) in [(&mut sub_b, sent_b), (&mut sub_bd, sent_bd)] {
        match strict_summary(w, deadline) {
            Ok(s) if s.get("ok")? == "true" && sent.is_none_or(|n| s.nums("counts").ok() == Some(vec![n])) => {}
            Ok(s) => fail(format!("{}: {s:?}, {sent:?} sent", w.name())),
            Err(e) => fail(format!("{e:#}")),
        }
    }
    let mut late_counts = Vec::new();
    for w in &mut late {
        match strict_summary(w, deadline) {
            Ok(s) if s.get("ok")? == "true" => late_counts.push(format!("{}={}", w.name(), s.num("delivered")?)),
            Ok(s) => fail(format!("{}: {s:?}", w.name())),
            Err(e) => fail(format!("{e:#}")),
        }
    }
    let mut tolerant_subs = Vec::new();
    for w in [&mut sub_a, &mut sub_ad] {
        match tolerant_summary(w, deadline) {
            Ok(s) => {
                if s.num("oversize")? != 0 || s.num("position_errors")? != 0 {
                    fail(format!("{} took garbage for a message: {s:?}", w.name()));
                }
                tolerant_subs.push(s);
            }
            Err(e) => fail(format!("{e:#}")),
        }
    }
    drop(attacker_stdin);
    let status = attacker.wait_exit(deadline)?;
    ensure!(status.success(), "hostile-client: {status}: {}", attacker.stderr());
    eprintln!("{name}: publishers {:?}", summaries.values().collect::<Vec<_>>());
    eprintln!("{name}: late subscribers delivered {}", late_counts.join(" "));
    eprintln!("{name}: {a}, {ad} subscribers: {tolerant_subs:?}");
    if field(&scribbled, "ro_ok") != Some("0") {
        fail(format!("the attacker wrote through a read-only fd: {scribbled}"));
    }
    ensure!(field(&scribbled, "writes").is_some_and(|w| w != "0"), "the attacker wrote nothing: {scribbled}");

    // public.durable: the log holds every message sent, in order, each
    // acknowledged one where it was acknowledged.
    let out = d.dir.join("public.durable.readback");
    let mut rb = Worker::spawn(RILL_WORKER, "read-back-public.durable", &common("read-back", bd, &[("out", out.display().to_string())]))?;
    match strict_summary(&mut rb, deadline) {
        Err(e) => fail(format!("{e:#}")),
        Ok(rb_sum) => {
            if rb_sum.num("damaged")? != 0 || rb_sum.num("lost_ranges")? != 0 {
                fail(format!("{bd} replays damaged or lost: {rb_sum:?}"));
            }
            let replayed = read_back_lines(&out)?;
            let seqs: Vec<u64> = replayed.iter().map(|(_, m)| m.map_or(u64::MAX, |(_, seq)| seq)).collect();
            if let Some(n) = sent_bd.filter(|&n| seqs != (0..n).collect::<Vec<_>>()) {
                fail(format!("{bd}: the log replays {} messages, not 0..{n} in order: {rb_sum:?}", seqs.len()));
            }
            let at: HashMap<u64, u64> = replayed.iter().filter_map(|(p, m)| Some((*p, m.as_ref()?.1))).collect();
            let mut acks = 0;
            for l in pub_bd.lines().iter().filter(|l| l.starts_with("DURABLE")) {
                let (n, p): (u64, u64) = (field(l, "n").context("n")?.parse()?, field(l, "position").context("position")?.parse()?);
                acks += 1;
                if at.get(&p) != Some(&(n - 1)) {
                    fail(format!("{bd}: acknowledged {l:?}, but the log has {:?} there", at.get(&p)));
                    break;
                }
            }
            eprintln!("{name}: {bd}: {acks} acknowledgements checked against the log, {} messages replayed", seqs.len());
        }
    }

    // shared.durable: every acknowledged position is in the log: on disk
    // (read here, whatever rilld does), and as rilld replays it.
    let acked: Vec<(u64, u64)> = pub_ad
        .lines()
        .iter()
        .filter(|l| l.starts_with("ACK"))
        .map(|l| Ok((field(l, "seq").context("seq")?.parse()?, field(l, "position").context("position")?.parse()?)))
        .collect::<Result<_>>()?;
    let (on_disk, damage) = frames_on_disk(&d.data_dir.join(ad), seed, 2048)?;
    let (mut intact, mut missing) = (0, Vec::new());
    for &(seq, p) in &acked {
        match on_disk.get(&p) {
            Some(Some((0, s))) if *s == seq => intact += 1,
            Some(_) => {}
            None => missing.push((seq, p)),
        }
    }
    eprintln!(
        "{name}: {ad}: {} acknowledged; on disk: {} frames, {intact} of the acknowledged intact, {} altered by the attacker, {} missing; damage {damage:?}",
        acked.len(),
        on_disk.len(),
        acked.len() - intact - missing.len(),
        missing.len()
    );
    if !missing.is_empty() || !damage.is_empty() {
        fail(format!("{ad}: acknowledged durable but not in its segment files (seq, position): {:?}; damage {damage:?}", &missing[..missing.len().min(20)]));
    }
    let out = d.dir.join("shared.durable.readback");
    let more = [("publishers", "1".to_owned()), ("start", "earliest".to_owned()), ("out", out.display().to_string()), ("quiet-ms", "3000".to_owned())];
    let mut args = common("subscribe", ad, &more);
    args.push("--read-to-tail".into());
    let mut rb = Worker::spawn(TOLERANT, "read-back-shared.durable", &args)?;
    let status = exit_or_backtrace(&mut rb, Duration::from_secs(60), deadline);
    match status.map(|status| (status, tolerant_summary(&mut rb, deadline))).map_err(|e| format!("{e:#}")) {
        Err(e) => fail(e),
        // The attacker may wreck its own stream's ring (its header, say)
        // so that no new subscriber can map it: the log was checked on
        // disk above. A crash is another matter.
        Ok((status, Err(_))) if status.code() == Some(2) => {
            let why = rb.stderr().lines().last().unwrap_or_default().to_owned();
            eprintln!("{name}: {ad}: rilld could not replay it ({why}); not a violation: the attacker may write that ring");
        }
        Ok((_, Err(e))) => fail(format!("{e:#}")),
        Ok((_, Ok(rb_ad))) => {
            let text = std::fs::read_to_string(&out)?;
            let logged: HashMap<u64, String> =
                text.lines().filter_map(|l| l.split_once(' ').map(|(p, rest)| Some((p.parse().ok()?, rest.to_owned())))?).collect();
            let missing: Vec<&(u64, u64)> = acked.iter().filter(|(_, p)| !logged.contains_key(p)).collect();
            eprintln!("{name}: {ad}: rilld replays {} messages from Earliest, {} acknowledged ones missing: {rb_ad:?}", logged.len(), missing.len());
            if !missing.is_empty() {
                fail(format!("{ad}: acknowledged durable but not replayed (seq, position): {:?}; read back {rb_ad:?}", &missing[..missing.len().min(20)]));
            }
            if rb_ad.num("oversize")? != 0 || rb_ad.num("position_errors")? != 0 {
                fail(format!("the log of {ad} replays garbage as messages: {rb_ad:?}"));
            }
        }
    }

    // rilld: alive, healthy, and a fresh stream works end to end.
    d.ensure_alive()?;
    if let Err(e) = check_health(&d, &client, &format!("{name}-{seed}-at-the-end")) {
        fail(e);
    }
    let fresh = "public.fresh";
    let end_to_end = || -> Result<()> {
        let mut sub = client.subscriber_with(fresh, Start::Latest, plain.clone())?;
        let mut publ = client.publisher(fresh)?;
        let (mut sent, mut want) = (0u32, 0u32);
        while want < 2_000 {
            ensure!(Instant::now() < deadline, "watchdog: {fresh}: {want} of 2000 read");
            while sent < 2_000 && publ.offer(&sent.to_le_bytes()).is_ok() {
                sent += 1;
            }
            let mut bad = None;
            sub.poll_blocking(256, Duration::from_millis(10), |m| {
                if m.payload == want.to_le_bytes() {
                    want += 1;
                } else {
                    bad.get_or_insert(m.position);
                }
            })?;
            ensure!(bad.is_none(), "{fresh}: message {want} damaged or out of order at {bad:?}");
        }
        Ok(())
    };
    if let Err(e) = end_to_end() {
        fail(format!("a fresh stream after the attack: {e:#}"));
    }
    d.ensure_alive()?;
    eprintln!("{name}: done {:?} after the scribbling began", began.elapsed());
    if !failures.is_empty() {
        let log = std::env::temp_dir().join(format!("{name}-{seed}.rilld.log"));
        let _ = std::fs::write(&log, d.log());
        bail!("{} violation(s) (seed {seed}; rilld's log in {}):\n{}", failures.len(), log.display(), failures.join("\n"));
    }
    Ok(())
}

/// A subscriber's slot page is handed to it read-write; once it gives the
/// slot up, rilld hands that slot to the next subscriber. A client of uid
/// 65534 that may only subscribe to `public.slots` opens a subscriber,
/// keeps a mapping of its slot page and closes the subscriber
/// (`hostile-client keep-slot`); an honest subscriber (this process, as
/// root) opens next and reads messages. Then the former owner writes the
/// state word of its old slot page (`SLOT_FREE`). The honest subscriber
/// must go on reading every message, once, in order: no other client may
/// take its slot.
#[test]
fn a_former_subscriber_cannot_free_the_next_ones_slot() -> Result<()> {
    slot_reuse("hostile_slot_state", "state")
}

/// As [`a_former_subscriber_cannot_free_the_next_ones_slot`], but the
/// former owner writes the slot's position (far ahead) while the honest
/// subscriber has read nothing for a while: publishers must still be held
/// back a ring ahead of what the honest subscriber has read (back-pressure),
/// and it must then read every message, once, in order.
#[test]
fn a_former_subscriber_cannot_move_the_next_ones_position() -> Result<()> {
    slot_reuse("hostile_slot_position", "position")
}

/// A client of uid 65534 that may only subscribe to `public.held` opens a
/// subscriber after an honest one (so each has a slot of its own), keeps
/// a mapping of its slot page, closes its subscriber, and writes
/// `SLOT_ACTIVE` (and its pid) into the state word of the slot it gave up
/// (`hostile-client keep-slot --word active`): a slot nobody holds,
/// whose position is where its subscriber stopped. rilld runs with
/// `--stall-limit-ms 1000`, so a subscriber slot that holds publishers
/// back without moving is taken back within about a second. The honest
/// publisher and subscriber must go on: three rings' worth of messages,
/// every one read once, in order (a 10 s watchdog on any stop in between).
#[test]
fn a_former_subscriber_cannot_hold_publishers_back_for_ever() -> Result<()> {
    let name = "hostile_slot_active";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let (mut d, _etc) = rilld_with_rules(name, &format!("[[allow]]\nuids = [{ATTACKER_UID}]\nsubscribe = [\"public.\"]\n"), &["--stall-limit-ms".into(), "1000".into()], deadline)?;
    let stream = "public.held";
    let client = d.client()?;
    let capacity = 64u64 << 10;
    client.create_stream(stream, StreamOptions::new().with_capacity(capacity).with_max_message_len(1024).with_keep(true))?;
    let mut sub = client.subscriber(stream, Start::Latest)?;
    let mut publ = client.publisher(stream)?;
    let mut cmd = Command::new(HOSTILE);
    cmd.arg("keep-slot").arg("--socket").arg(&d.socket).args(["--stream", stream, "--word", "active"]);
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut attacker, mut attacker_stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    let closed = attacker.wait_line("CLOSED", deadline)?;
    {
        use std::io::Write;
        attacker_stdin.write_all(b"go\n")?;
    }
    let wrote = attacker.wait_line("WROTE", deadline)?;
    eprintln!("{name}: the honest subscriber has slot {}; attacker {closed}, {wrote}", sub.slot());
    let total = 3 * u32::try_from(capacity / 64)?;
    let (mut sent, mut want) = (0u32, 0u32);
    let mut last_progress = Instant::now();
    let mut result = Ok(());
    while want < total {
        ensure!(Instant::now() < deadline, "watchdog: {want} of {total} read");
        if last_progress.elapsed() > Duration::from_secs(10) {
            let info = client.stream_info(stream)?;
            result = Err(anyhow::anyhow!(
                "publishing stopped for 10 s at message {sent} of {total} (all {want} sent were read; tail {}): \
                 the slot the attacker gave up and re-activated holds the publisher back; subscribers per rilld: {:?}",
                info.tail,
                info.subscribers
            ));
            break;
        }
        let before = (sent, want);
        while sent < total && publ.offer(&sent.to_le_bytes()).is_ok() {
            sent += 1;
        }
        sub.poll_blocking(256, Duration::from_millis(10), |m| {
            want = if m.payload == want.to_le_bytes() { want + 1 } else { u32::MAX };
        })?;
        ensure!(want != u32::MAX, "a message out of order or damaged");
        if (sent, want) != before {
            last_progress = Instant::now();
        }
    }
    drop(attacker_stdin);
    attacker.wait_exit(deadline)?;
    d.ensure_alive()?;
    result
}

fn slot_reuse(name: &str, word: &str) -> Result<()> {
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let (mut d, _etc) = rilld_with_rules(name, &format!("[[allow]]\nuids = [{ATTACKER_UID}]\nsubscribe = [\"public.\"]\n"), &[], deadline)?;
    let stream = "public.slots";
    let client = d.client()?;
    let capacity = 64u64 << 10;
    client.create_stream(stream, StreamOptions::new().with_capacity(capacity).with_max_message_len(1024).with_keep(true))?;

    let mut cmd = Command::new(HOSTILE);
    cmd.arg("keep-slot").arg("--socket").arg(&d.socket).args(["--stream", stream, "--word", word]);
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut attacker, mut attacker_stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    let closed = attacker.wait_line("CLOSED", deadline)?;
    let mut sub = client.subscriber(stream, Start::Latest)?;
    let mut publ = client.publisher(stream)?;
    eprintln!("{name}: attacker {closed}; the honest subscriber got slot {}", sub.slot());
    // Publishes up to `count` messages from `next` on (all of them, with
    // `read`: reading as it goes; else until back-pressured), then reads
    // every message sent, in order; returns how many were sent.
    let mut next = 0u32;
    let mut round = |publ: &mut rill::Publisher, sub: &mut rill::Subscriber, count: u32, read: bool| -> Result<u32> {
        let (from, to) = (next, next + count);
        let (mut want, mut sent) = (from, from);
        if !read {
            while sent < to && publ.offer(&sent.to_le_bytes()).is_ok() {
                sent += 1;
            }
        }
        let mut last_progress = Instant::now();
        while want < if read { to } else { sent } {
            ensure!(Instant::now() < deadline, "watchdog: {want} of {from}..{to} read");
            ensure!(
                last_progress.elapsed() < Duration::from_secs(5),
                "watchdog: the honest subscriber (slot {}) read nothing for 5 s after {} of {from}..{sent} sent (position {}, tail {})",
                sub.slot(),
                want - from,
                sub.position(),
                sub.ring().tail()
            );
            while read && sent < to && publ.offer(&sent.to_le_bytes()).is_ok() {
                sent += 1;
            }
            let before = want;
            sub.poll_blocking(256, Duration::from_millis(10), |m| {
                want = if m.payload == want.to_le_bytes() { want + 1 } else { u32::MAX };
            })
            .with_context(|| format!("the honest subscriber (slot {}), after {} of messages {from}..{sent}", sub.slot(), before - from))?;
            ensure!(want != u32::MAX, "a message out of order or damaged after {before}");
            if want != before {
                last_progress = Instant::now();
            }
        }
        next = sent;
        Ok(sent - from)
    };
    round(&mut publ, &mut sub, 100, true)?;
    {
        use std::io::Write;
        attacker_stdin.write_all(b"go\n")?;
    }
    let wrote = attacker.wait_line("WROTE", deadline)?;
    eprintln!("{name}: attacker {wrote}");
    // Three rings' worth of the smallest messages, published while the
    // honest subscriber reads nothing: at most one ring of them may go in.
    let ring_of_messages = u32::try_from(capacity / 64)?;
    let result = round(&mut publ, &mut sub, 3 * ring_of_messages, false).and_then(|sent| {
        ensure!(sent <= ring_of_messages, "{sent} messages published a ring ahead of an honest subscriber that read none of them");
        round(&mut publ, &mut sub, 100, true).map(drop)
    });
    drop(attacker_stdin);
    attacker.wait_exit(deadline)?;
    d.ensure_alive()?;
    let slot = field(&closed, "slot").unwrap_or("?");
    result.with_context(|| format!("after the former owner of slot {slot} wrote its old page ({wrote}); the honest subscriber has slot {}", sub.slot()))
}

/// A publisher may write its ring's header; rilld reads some of its words
/// (`limit_granted`, `tail`, `head`) when it attaches a subscriber to the
/// stream. A client of uid 65534 that may publish to `shared.limit`
/// writes `u64::MAX` over `limit_granted` and asks for a subscriber there
/// (`hostile-client forge-word --word limit_granted --subscribe`). Whatever rilld answers it, rilld must
/// go on answering every other client: `health` from this process keeps
/// being answered, and a stream of another prefix works end to end.
#[test]
fn a_publisher_cannot_hang_rilld_with_its_ring_header() -> Result<()> {
    let name = "hostile_forge_limit";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let (mut d, _etc) = rilld_for_shared(name, deadline)?;
    let stream = "shared.limit";
    let client = d.client()?;
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_keep(true);
    client.create_stream(stream, options.clone())?;

    let mut cmd = Command::new(HOSTILE);
    cmd.arg("forge-word").arg("--socket").arg(&d.socket).args(["--stream", stream, "--word", "limit_granted", "--value", "max", "--subscribe"]);
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut attacker, attacker_stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    attacker.wait_line("FORGED", deadline)?;
    attacker.wait_line("ASKED", deadline)?;
    // rilld reads requests in turn: a few rounds of health make sure the
    // attacker's request came first at least once.
    for round in 0..5 {
        if let Err(e) = check_health(&d, &client, &format!("{name}-round{round}")) {
            let reply = attacker.lines().iter().find(|l| l.starts_with("SUBSCRIBED")).cloned();
            bail!("after a publisher of {stream} wrote u64::MAX over limit_granted and asked for a subscriber (reply: {reply:?}): {e}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut sub = client.subscriber_with("other.stream", Start::Latest, options.clone())?;
    let mut publ = client.publisher("other.stream")?;
    let p = publ.offer(b"still here")?;
    let got = sub.recv(Duration::from_secs(10))?;
    ensure!(got.as_deref() == Some(&b"still here"[..]), "other.stream: {got:?} at {p}");
    drop(attacker_stdin);
    attacker.kill();
    d.ensure_alive()
}

/// Starts rilld letting uid 65534 publish and subscribe to `shared.*`
/// (and its configuration's directory, which holds on until the end).
fn rilld_for_shared(name: &str, deadline: Instant) -> Result<(Rilld, TempRingDir)> {
    rilld_with_rules(name, &format!("[[allow]]\nuids = [{ATTACKER_UID}]\npublish = [\"shared.\"]\nsubscribe = [\"shared.\"]\n"), &[], deadline)
}

/// Starts rilld with configuration `rules` and options `extra` (and the
/// configuration's directory, kept until the end: a restarted rilld reads
/// it again).
fn rilld_with_rules(name: &str, rules: &str, extra: &[String], deadline: Instant) -> Result<(Rilld, TempRingDir)> {
    rilld_bin()?;
    let etc = TempRingDir::new_in(&std::env::temp_dir(), name)?;
    let config = etc.join("rilld.toml");
    std::fs::write(&config, rules)?;
    let args: Vec<String> = ["--config".into(), config.display().to_string()].into_iter().chain(extra.iter().cloned()).collect();
    let d = Rilld::start(name, &args, deadline)?;
    Ok((d, etc))
}

/// Runs `hostile-client forge-word` on `stream` (writing `value` over ring
/// counter `word`) and waits until it forged.
fn forge(d: &Rilld, stream: &str, word: &str, value: &str, deadline: Instant) -> Result<(Worker, std::process::ChildStdin)> {
    let mut cmd = Command::new(HOSTILE);
    cmd.arg("forge-word").arg("--socket").arg(&d.socket).args(["--stream", stream, "--word", word, "--value", value]);
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut attacker, stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    let forged = attacker.wait_line("FORGED", deadline)?;
    eprintln!("attacker: {forged}");
    Ok((attacker, stdin))
}

/// An honest publisher shares `shared.wedge` with a client of uid 65534,
/// which writes `u64::MAX` over the ring's `padded_end` (where the
/// reclaimer's furthest padding ends, which every commit checks its claim
/// against). The attacker may wreck the stream; but `offer` is a
/// non-blocking call and must return (with whatever error), so that the
/// honest publisher (`tolerant-worker publish`, in a process of its own)
/// keeps control: told to stop, it exits.
#[test]
fn a_co_publisher_cannot_wedge_an_honest_offer() -> Result<()> {
    let name = "hostile_padded_end";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let stream = "shared.wedge";
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_keep(true);
    let (d, etc) = rilld_for_shared(name, deadline)?;
    d.client()?.create_stream(stream, options)?;
    let stop = etc.join("stop");
    let args: Vec<String> = ["publish", "--socket", &d.socket.display().to_string(), "--stream", stream, "--publisher", "0", "--seed", "1"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(["--until-file".to_owned(), stop.display().to_string(), "--pause-every".into(), "16".into(), "--pause-us".into(), "1000".into()])
        .collect();
    let mut honest = quiet_worker(TOLERANT, "honest-publisher", &args)?;
    wait_progress(&mut honest, deadline)?;
    let (_attacker, _attacker_stdin) = forge(&d, stream, "padded_end", "max", deadline)?;
    // Let it publish into the forged ring for a moment, then stop it.
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stop, b"")?;
    let status = exit_or_backtrace(&mut honest, Duration::from_secs(20), deadline)?;
    ensure!(status.success(), "honest publisher: {status}: {}", honest.stderr());
    eprintln!("{name}: {:?}", honest.summary());
    Ok(())
}

/// An honest publisher of the persisted (`always`) stream `shared.rewind`
/// makes 10 messages durable; then a client of uid 65534 that publishes
/// there too writes 0 over the ring's tail. The honest publisher's next
/// message is claimed at whatever position the ring says; `wait_durable`
/// must not acknowledge it unless the stream's log holds it there:
/// either `offer` or `wait_durable` fails, or the segment files (read
/// from disk) hold that message at that position.
#[test]
fn a_rewound_tail_cannot_fake_durability() -> Result<()> {
    let name = "hostile_rewind";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let stream = "shared.rewind";
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_keep(true).with_persist(Some(Durability::Always));
    let (d, _etc) = rilld_for_shared(name, deadline)?;
    let client = d.client()?;
    let mut publ = client.publisher_with(stream, options)?;
    let mut last = 0;
    for i in 0..10u8 {
        last = publ.offer(&[i; 100])?;
        publ.wait_durable(last, Duration::from_secs(30))?;
    }
    let (_attacker, _attacker_stdin) = forge(&d, stream, "tail", "0", deadline)?;
    let payload = [0xEE; 100];
    let p = match publ.offer(&payload) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{name}: offer refused after the tail was rewound: {e}");
            return Ok(());
        }
    };
    let durable = match publ.wait_durable(p, Duration::from_secs(10)) {
        Ok(durable) => durable,
        Err(e) => {
            eprintln!("{name}: the message at {p} was not acknowledged: {e}");
            return Ok(());
        }
    };
    // Acknowledged: the log must hold it at `p`.
    let mut found = None;
    for (first, path) in rill_store::list_segments(&d.data_dir.join(stream))? {
        let bytes = std::fs::read(&path)?;
        for b in &rill_store::scan_segment(&bytes, first).batches {
            let (_, body) = rill_store::batch_at(&bytes, b.file_offset, None).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut off = 0;
            while off < body.len() {
                let f = rill_shm::frame::parse_frame(&body[off..], usize::MAX).map_err(|e| anyhow::anyhow!("{e}"))?;
                if f.header.position == p {
                    found = Some(f.payload.to_vec());
                }
                off += f.header.span();
            }
        }
    }
    ensure!(
        found.as_deref() == Some(&payload[..]),
        "wait_durable acknowledged the message at position {p} (durable position {durable}; the 10 before it end at {last}+), \
         but the log holds {} there",
        found.map_or("nothing".to_owned(), |f| format!("another message of {} bytes ({:?}..)", f.len(), &f[..f.len().min(4)]))
    );
    Ok(())
}

/// rilld records who holds a stream's exclusive publication so that it
/// still knows after a restart. A client of uid 65534 that publishes to
/// `shared.excl` writes the pid of a live process of its choosing (this
/// test's own, alive throughout) where rilld once kept that record, in
/// the ring's header; rilld is killed (`kill -9`) and restarted. Nobody
/// was ever granted the exclusive publication, so the restarted rilld
/// must not show the stream as held, and must admit another publisher.
#[test]
fn a_publisher_cannot_forge_the_exclusive_holder() -> Result<()> {
    let name = "hostile_exclusive_pid";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let stream = "shared.excl";
    let (mut d, _etc) = rilld_for_shared(name, deadline)?;
    d.client()?.create_stream(stream, StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_keep(true))?;
    let victim = std::process::id();
    let (mut attacker, attacker_stdin) = forge(&d, stream, "exclusive_pid", &victim.to_string(), deadline)?;
    d.kill9();
    d.spawn(deadline)?;
    let client = d.client()?;
    let info = client.stream_info(stream)?;
    ensure!(!info.exclusive, "after a publisher wrote pid {victim} into its ring's header and rilld restarted, the stream shows an exclusive holder: {info:?}");
    if let Err(e) = client.publisher(stream) {
        bail!("after a publisher wrote pid {victim} into its ring's header and rilld restarted, another publisher is refused: {e}");
    }
    drop(attacker_stdin);
    attacker.kill();
    d.ensure_alive()
}

/// Every publisher may write its ring's header, meta words included; a
/// rilld that adopts the ring after a restart, or a client that maps it,
/// must not take a rewritten header for the ring rilld made. A client of
/// uid 65534 that publishes to the persisted back-pressure stream
/// `shared.meta` (10 messages made durable by an honest publisher) writes
/// "overwrite" over the header's policy; rilld is killed (`kill -9`) and
/// restarted. The stream must still be back-pressure (an overwrite ring
/// would let publishers overrun its archiver), and every durable message
/// must replay from `Earliest`, once, in order.
#[test]
fn a_publisher_cannot_rewrite_its_rings_meta_words() -> Result<()> {
    let name = "hostile_meta";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let stream = "shared.meta";
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_keep(true).with_persist(Some(Durability::Always));
    let (mut d, _etc) = rilld_for_shared(name, deadline)?;
    let client = d.client()?;
    let mut publ = client.publisher_with(stream, options)?;
    for i in 0..10u8 {
        let p = publ.offer(&[i; 100])?;
        publ.wait_durable(p, Duration::from_secs(30))?;
    }
    drop(publ);
    let (mut attacker, attacker_stdin) = forge(&d, stream, "policy", "1", deadline)?;
    d.kill9();
    d.spawn(deadline)?;
    let client = d.client()?;
    let info = client.stream_info(stream)?;
    ensure!(info.policy == rill::Policy::BackPressure, "after a publisher wrote overwrite over its ring's policy and rilld restarted, the stream is {:?}: {info:?}", info.policy);
    let mut sub = client.subscriber(stream, Start::Earliest)?;
    for i in 0..10u8 {
        let got = sub.recv(Duration::from_secs(10))?;
        ensure!(got.as_deref() == Some(&[i; 100][..]), "durable message {i} after the restart: {:?}", got.map(|g| g.len()));
    }
    drop(attacker_stdin);
    attacker.kill();
    d.ensure_alive()
}
