//! Promises the README makes about persistence, daemons side by side and
//! stalled publishers, each checked end to end against real `rilld`
//! processes and real client processes:
//!
//! 1. `rill pub` on a persisted stream waits at exit until its last line
//!    is durable: once it has exited, a `kill -9` of rilld and a reboot
//!    (every ring's memory gone with the ring keeper) lose none of its
//!    lines.
//! 2. Daemons with their own state and data directories run side by side
//!    without sharing anything (rings on huge pages and on 4 KiB pages,
//!    each held by its own ring keeper); a daemon started on another
//!    one's state or data directory (or socket) is refused, naming the
//!    lock, and the first goes on working.
//! 3. A publisher stalled (SIGSTOP) between claim and commit for longer
//!    than rilld's unblock timeout loses its claim: its commit says
//!    `ClaimError::Reclaimed`, `wait_durable` says `DurableError::Lost`,
//!    and no subscriber, live or replaying the log after a reboot, ever
//!    sees that message.
//!
//! The client processes are the `rill` CLI (tools/, built on demand like
//! rilld: `rill_tests::workspace_bin`; `RILL_CLI=/path/to/rill` skips the
//! build) and `stalled-publisher` (src/bin/stalled-publisher.rs). Every
//! wait has a watchdog that turns a hang into a failure; no test asserts
//! how long anything took. The tests run one at a time.
//!
//! `cargo test --release -p rill-tests --test guarantees`. The
//! side-by-side test needs 2 MiB huge pages reserved (see README).

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rill::{Client, Durability, Start, StreamOptions, Subscriber};
use rill_tests::daemon::{rilld_bin, Rilld, DAEMON_FLAGS};
use rill_tests::harness::{field, wait_until, HugePages, TempRingDir, Worker};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const STALLED_PUBLISHER: &str = env!("CARGO_BIN_EXE_stalled-publisher");

/// When a test gives up on a hang; only a hang should get near it.
fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 900 } else { 300 })
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The serial lock, and the binaries built before any watchdog starts (a
/// first build may take minutes).
fn setup() -> Result<MutexGuard<'static, ()>> {
    let serial = serial();
    rilld_bin()?;
    rill_cli()?;
    Ok(serial)
}

/// The `rill` CLI (package rill-tools).
fn rill_cli() -> Result<PathBuf> {
    rill_tests::workspace_bin("rill-tools", "rill", "RILL_CLI")
}

/// `rill --socket <socket> args...`.
fn rill_command(socket: &Path, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(rill_cli()?);
    cmd.arg("--socket").arg(socket).args(args).env("NO_COLOR", "1");
    Ok(cmd)
}

/// Runs `rill` with `input` on stdin until it exits; its exit status and
/// the worker (stdout lines, stderr).
fn run_rill(socket: &Path, args: &[&str], input: &[String], deadline: Instant) -> Result<(ExitStatus, Worker)> {
    let (mut w, mut stdin) = Worker::spawn_with_stdin(rill_command(socket, args)?, &format!("rill {}", args.join(" ")))?;
    for line in input {
        writeln!(stdin, "{line}").context("writing to rill's stdin")?;
    }
    drop(stdin);
    let status = w.wait_exit(deadline)?;
    Ok((status, w))
}

/// `rill tail NAME --from earliest --count N`: the lines it printed.
fn tail_earliest(socket: &Path, stream: &str, count: usize, deadline: Instant) -> Result<Vec<String>> {
    let n = count.to_string();
    let (status, w) = run_rill(socket, &["tail", stream, "--from", "earliest", "--count", &n], &[], deadline)
        .with_context(|| format!("rill tail {stream} --from earliest --count {count}"))?;
    ensure!(status.success(), "rill tail {stream} failed ({status}): {}", w.stderr());
    Ok(w.lines().to_vec())
}

fn signal(pid: u32, sig: Signal) -> Result<()> {
    kill(Pid::from_raw(i32::try_from(pid)?), sig).with_context(|| format!("{sig} to {pid}"))
}

/// What a reboot does to memory: every ring is gone with rilld's ring
/// keeper (its data directory is on disk and stays).
fn wipe_memory(d: &Rilld) -> Result<()> {
    d.lose_ring_memory(Instant::now() + Duration::from_secs(10))
}

/// Reads from `sub` until it has handed `want` messages (position,
/// payload as text); fails at `deadline` saying what came.
fn read(sub: &mut Subscriber, want: usize, deadline: Instant, what: &str) -> Result<Vec<(u64, String)>> {
    let mut got = Vec::new();
    while got.len() < want {
        sub.poll_blocking(want - got.len(), Duration::from_millis(100), |m| {
            got.push((m.position, String::from_utf8_lossy(m.payload).into_owned()));
        })
        .with_context(|| format!("{what}: polling after {} messages", got.len()))?;
        if Instant::now() >= deadline {
            bail!("watchdog: {what}: {} of {want} messages came: {got:?}", got.len());
        }
    }
    Ok(got)
}

/// Fails if `sub` is handed anything within `quiet` (a wait for nothing:
/// it cannot make the test fail on a slow machine).
fn read_nothing(sub: &mut Subscriber, quiet: Duration, what: &str) -> Result<()> {
    let mut got = Vec::new();
    sub.poll_blocking(16, quiet, |m| got.push((m.position, String::from_utf8_lossy(m.payload).into_owned())))
        .with_context(|| format!("{what}: polling"))?;
    ensure!(got.is_empty(), "{what}: unexpected messages {got:?}");
    Ok(())
}

fn payloads(got: &[(u64, String)]) -> Vec<&str> {
    got.iter().map(|(_, p)| p.as_str()).collect()
}

// ---------------------------------------------------------------------------
// 1. `rill pub` waits at exit for durability

/// `rill pub --timeout-ms`: how long its requests to rilld may take. A
/// `rill pub` that does not wait at exit still says `Close` to rilld as it
/// exits, and with rilld stopped that takes this long (twice: the request,
/// then a reconnect). Far more than an idle rilld needs to answer.
const PUB_REQUEST_TIMEOUT_MS: &str = "1000";

/// How long a `rill pub` that does not wait at exit is given to show it
/// (by exiting), once its last line is in the ring while rilld is stopped:
/// two request timeouts and a margin. It only makes the test more
/// sensitive; a correct `rill pub` never exits then, however slow the
/// machine. (Short enough that rilld, stopped meanwhile, does not time
/// its clients out: `--client-timeout-ms` in `DAEMON_FLAGS`.)
const EXIT_GRACE: Duration = Duration::from_secs(4);

/// `rill pub NAME --persist always` (no `--wait-durable`) publishes 1000
/// lines. Its first line is read by a subscriber (so its publisher is
/// open), then rilld is stopped (SIGSTOP) while it publishes the rest: all
/// of them reach the ring (the subscriber reads them there), none can
/// become durable, and `rill pub` must not exit. rilld goes on (SIGCONT);
/// right after `rill pub` exits, rilld is killed with SIGKILL and its ring
/// and page files are removed (a reboot: without that, the restarted
/// daemon would archive the lines from the ring it adopts, whether `rill
/// pub` had waited or not). A new rilld on the same directories replays
/// every line from the log (`rill tail --from earliest`). Then `rill pub
/// --no-wait-at-exit` is accepted: it publishes and exits 0 (what a crash
/// right after it would lose is not checked: nothing is promised).
#[test]
fn rill_pub_waits_at_exit_until_its_lines_are_durable() -> Result<()> {
    let _serial = setup()?;
    let deadline = deadline();
    let mut d = Rilld::start("pub_at_exit", &[], deadline)?;
    let stream = "cli.at-exit";
    let lines: Vec<String> = (0..1000).map(|i| format!("{stream} line {i}")).collect();

    let args = ["--timeout-ms", PUB_REQUEST_TIMEOUT_MS, "pub", stream, "--persist", "always"];
    let (mut publ, mut stdin) = Worker::spawn_with_stdin(rill_command(&d.socket, &args)?, "rill pub")?;
    writeln!(stdin, "{}", lines[0])?;
    stdin.flush()?;
    let client = d.client()?;
    wait_until(deadline, "rill pub creates the stream", || {
        if let Some(status) = publ.try_exited()? {
            bail!("rill pub exited ({status}): {}", publ.stderr());
        }
        Ok(client.stream_info(stream).is_ok())
    })?;
    let info = client.stream_info(stream)?;
    ensure!(info.persist == Some(Durability::Always), "rill pub --persist always created {info:?}");
    let mut sub = client.subscriber(stream, Start::Earliest)?;
    let first = read(&mut sub, 1, deadline, "the first line")?;
    ensure!(payloads(&first) == [lines[0].as_str()], "first line: {first:?}");

    signal(d.pid(), Signal::SIGSTOP)?;
    for line in &lines[1..] {
        writeln!(stdin, "{line}")?;
    }
    drop(stdin);
    let rest = read(&mut sub, lines.len() - 1, deadline, "the other lines, from the ring, rilld stopped")?;
    ensure!(payloads(&rest) == lines[1..].iter().map(String::as_str).collect::<Vec<_>>(), "lines out of order: {rest:?}");
    let grace = Instant::now() + EXIT_GRACE;
    while Instant::now() < grace {
        if let Some(status) = publ.try_exited()? {
            bail!(
                "rill pub exited ({status}) while rilld was stopped, before its last lines could be durable: it did not wait at exit. stderr: {}",
                publ.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    signal(d.pid(), Signal::SIGCONT)?;
    drop(sub);
    drop(client);
    let status = publ.wait_exit(deadline)?;
    d.kill9();
    ensure!(status.success(), "rill pub failed ({status}): {}", publ.stderr());
    ensure!(publ.stderr().contains("published 1000 messages"), "rill pub said: {}", publ.stderr());

    wipe_memory(&d)?;
    d.spawn(deadline)?;
    let replayed = tail_earliest(&d.socket, stream, lines.len(), deadline)?;
    ensure!(replayed == lines, "after kill -9 and a reboot the log replays {} lines, not the 1000 published: {replayed:?}", replayed.len());

    // --no-wait-at-exit: accepted, and it publishes.
    let other = "cli.no-wait";
    let lines: Vec<String> = (0..200).map(|i| format!("{other} line {i}")).collect();
    let args = ["pub", other, "--persist", "always", "--keep", "--no-wait-at-exit"];
    let (status, publ) = run_rill(&d.socket, &args, &lines, deadline)?;
    ensure!(status.success(), "rill pub --no-wait-at-exit failed ({status}): {}", publ.stderr());
    ensure!(publ.stderr().contains("published 200 messages"), "rill pub said: {}", publ.stderr());
    let read_back = tail_earliest(&d.socket, other, lines.len(), deadline)?;
    ensure!(read_back == lines, "rill tail after rill pub --no-wait-at-exit: {read_back:?}");
    d.ensure_alive()
}

// ---------------------------------------------------------------------------
// 2. Daemons side by side

/// A rilld started by hand: socket, state directory and data directory
/// as given, `extra` after them.
fn rilld_command(socket: &Path, state_dir: &Path, data_dir: &Path, extra: &[&str]) -> Result<Command> {
    let mut cmd = Command::new(rilld_bin()?);
    cmd.arg("--socket").arg(socket).arg("--state-dir").arg(state_dir).arg("--data-dir").arg(data_dir);
    cmd.args(DAEMON_FLAGS).args(extra).env("NO_COLOR", "1");
    Ok(cmd)
}

/// Starts `cmd` (a rilld listening on `socket`) and waits until it
/// accepts connections.
fn start_rilld(cmd: Command, socket: &Path, label: &str, deadline: Instant) -> Result<Worker> {
    let mut w = Worker::spawn_command(cmd, label)?;
    wait_until(deadline, &format!("{label} accepts connections"), || {
        if let Some(status) = w.try_exited()? {
            w.wait_exit(deadline)?; // reads its stderr to the end
            bail!("{label} exited ({status}) at start: {}", w.stderr());
        }
        Ok(rill::wire::connect(socket).is_ok())
    })?;
    Ok(w)
}

fn connect(socket: &Path) -> Result<Client> {
    Ok(Client::builder().socket(socket).name("guarantees-test").request_timeout(Duration::from_secs(10)).connect()?)
}

/// Opens a subscriber and a publisher on `stream` of each daemon, sends
/// each daemon's messages (tagged with its label) interleaved, and checks
/// that each subscriber gets exactly its own daemon's, in order.
fn each_sees_only_its_own(daemons: &[(&str, &Path)], stream: &str, deadline: Instant) -> Result<()> {
    const COUNT: usize = 300;
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(2048);
    let mut ends = Vec::new();
    for (label, socket) in daemons {
        let client = connect(socket).with_context(|| format!("connect to {label}"))?;
        let sub = client.subscriber_with(stream, Start::Latest, options.clone())?;
        let publ = client.publisher(stream)?;
        ends.push((label, client, sub, publ));
    }
    for i in 0..COUNT {
        for (label, _, _, publ) in &mut ends {
            let msg = format!("{label} {i}");
            wait_until(deadline, "room in the ring", || Ok(publ.offer(msg.as_bytes()).is_ok()))?;
        }
    }
    for (label, _, sub, _) in &mut ends {
        let got = read(sub, COUNT, deadline, &format!("{stream} on {label}"))?;
        let want: Vec<String> = (0..COUNT).map(|i| format!("{label} {i}")).collect();
        ensure!(payloads(&got) == want.iter().map(String::as_str).collect::<Vec<_>>(), "{stream} on {label} got {got:?}");
        read_nothing(sub, Duration::from_millis(200), &format!("{stream} on {label} after its {COUNT}"))?;
    }
    Ok(())
}

/// Two rilld processes, each with its own state and data directory, run
/// at once, one with rings on huge pages (this machine has some reserved,
/// as README's set-up does) and one with `--no-huge-pages`; each creates
/// a stream of the same name, and each subscriber gets exactly its own
/// daemon's messages. Each daemon has a ring keeper of its own, holding
/// its own memfds of the stream, on the pages it was asked for.
#[test]
fn daemons_with_their_own_state_dirs_share_nothing() -> Result<()> {
    let _serial = setup()?;
    let hp = HugePages::probe()?;
    ensure!(hp.available >= 4, "needs 4 free 2 MiB huge pages ({hp:?}); see README for how to reserve them");
    let deadline = deadline();
    let run = TempRingDir::in_dev_shm("side_by_side")?;
    let data = TempRingDir::new_in(&std::env::temp_dir(), "side_by_side")?;
    let mut daemons = Vec::new();
    for (label, extra) in [("a", &[][..]), ("b", &["--no-huge-pages"][..])] {
        let socket = run.join(&format!("{label}.sock"));
        let cmd = rilld_command(&socket, &run.join(&format!("{label}-state")), &data.join(label), extra)?;
        daemons.push((start_rilld(cmd, &socket, &format!("rilld-{label}"), deadline)?, socket));
    }
    let stream = "same.name";
    let sockets: Vec<(&str, &Path)> = vec![("a", &daemons[0].1), ("b", &daemons[1].1)];
    each_sees_only_its_own(&sockets, stream, deadline)?;
    let mut keepers = Vec::new();
    for ((label, huge), (w, _)) in [("a", true), ("b", false)].iter().zip(&mut daemons) {
        ensure!(w.try_exited()?.is_none(), "rilld-{label} died: {}", w.stderr());
        let state = run.join(&format!("{label}-state"));
        let (pid, fds) = keeper_memfds(&state, stream)?;
        ensure!(fds.len() >= 4, "rilld-{label}'s ring keeper (pid {pid}) holds {fds:?} of {stream}");
        let ring = fds.iter().find(|(link, _)| link.ends_with(&format!(":{stream} (deleted)"))).context("no ring memfd")?;
        ensure!(ring.1 == *huge, "rilld-{label}'s ring of {stream} is on huge pages: {}, expected {huge}", ring.1);
        keepers.push(pid);
    }
    ensure!(keepers[0] != keepers[1], "both daemons use ring keeper {}", keepers[0]);
    Ok(())
}

/// The memfds of `stream` that the ring keeper of state directory
/// `state` holds: its pid, and (link, on hugetlbfs) of each.
fn keeper_memfds(state: &Path, stream: &str) -> Result<(u32, Vec<(String, bool)>)> {
    let pid: u32 = std::fs::read_to_string(state.join("keeper.pid"))?.trim().parse()?;
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let path = e?.path();
        let link = std::fs::read_link(&path).unwrap_or_default().to_string_lossy().into_owned();
        if link.starts_with(&format!("/memfd:{stream}")) {
            let huge = nix::sys::statfs::statfs(&path)?.filesystem_type() == nix::sys::statfs::HUGETLBFS_MAGIC;
            out.push((link, huge));
        }
    }
    Ok((pid, out))
}

/// A second rilld to start on what the first one holds: its socket,
/// directories and flags, and the directory it must find locked.
struct Second {
    what: &'static str,
    socket: PathBuf,
    state: PathBuf,
    data: PathBuf,
    locked: PathBuf,
}

/// rilld A runs, with a subscriber and a publisher on a stream. Then
/// second daemons are started on what A holds: its state directory (where
/// its ring keeper listens), its data directory, and its state directory
/// and socket together. Each is refused: it exits non-zero and
/// says the directory is locked (flock) by another rilld. After each, A
/// still runs, its socket still answers, and its stream still carries
/// messages, in order, to the subscriber that was there from the start.
#[test]
fn a_second_rilld_on_the_same_directories_is_refused() -> Result<()> {
    let _serial = setup()?;
    let deadline = deadline();
    let run = TempRingDir::in_dev_shm("refused")?;
    let data = TempRingDir::new_in(&std::env::temp_dir(), "refused")?;
    let (socket, state, data_dir) = (run.join("a.sock"), run.join("a-state"), data.join("a"));
    let mut a = start_rilld(rilld_command(&socket, &state, &data_dir, &[])?, &socket, "rilld-a", deadline)?;
    let client = connect(&socket)?;
    let stream = "refused.stream";
    let mut sub = client.subscriber_with(stream, Start::Latest, StreamOptions::new().with_capacity(64 << 10).with_max_message_len(2048))?;
    let mut publ = client.publisher(stream)?;
    let mut sent = 0u32;
    let mut round_trip = |sub: &mut Subscriber, what: &str| -> Result<()> {
        let msg = format!("message {sent}");
        publ.offer(msg.as_bytes()).map_err(|e| anyhow::anyhow!("offer on rilld-a after {what}: {e}"))?;
        sent += 1;
        let got = read(sub, 1, deadline, &format!("rilld-a's stream after {what}"))?;
        ensure!(payloads(&got) == [msg.as_str()], "rilld-a's stream after {what}: {got:?}");
        Ok(())
    };
    round_trip(&mut sub, "its start")?;

    let cases = [
        Second { what: "the same state directory", socket: run.join("b1.sock"), state: state.clone(), data: data.join("b1"), locked: state.clone() },
        Second { what: "the same data directory", socket: run.join("b2.sock"), state: run.join("b2-state"), data: data_dir.clone(), locked: data_dir.clone() },
        Second { what: "the same state directory and socket", socket: socket.clone(), state: state.clone(), data: data.join("b3"), locked: state.clone() },
    ];
    for Second { what, socket: b_socket, state: b_state, data: b_data, locked } in &cases {
        let cmd = rilld_command(b_socket, b_state, b_data, &[])?;
        let mut b = Worker::spawn_command(cmd, &format!("rilld on {what}"))?;
        let status = b.wait_exit(deadline)?;
        let says = b.stderr();
        ensure!(!status.success(), "a second rilld on {what} exited with {status}: {says}");
        ensure!(
            says.contains("flock") && says.contains("in use by another rilld") && says.contains(&locked.display().to_string()),
            "a second rilld on {what} ({status}) did not say that {} is locked (flock) by another rilld: {says}",
            locked.display()
        );
        ensure!(a.try_exited()?.is_none(), "rilld-a died after a second rilld on {what}: {}", a.stderr());
        ensure!(rill::wire::connect(&socket).is_ok(), "rilld-a's socket no longer answers after a second rilld on {what}");
        round_trip(&mut sub, &format!("a second rilld on {what}"))?;
    }
    ensure!(client.stream_info(stream)?.subscribers.len() == 1, "rilld-a lost track of its subscriber");
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. A publisher stalled past the unblock timeout

/// `stalled-publisher` claims room on a stream persisted `always`, writes
/// its message and is stopped (SIGSTOP). The test's own publisher sends
/// "after" behind the claim; the test's subscriber (from the stream's
/// start) gets it only once rilld has padded the claim over (after its
/// unblock timeout, `DAEMON_FLAGS`), and rilld counts the padding. Then
/// the stalled publisher goes on (SIGCONT) and commits: its commit must be
/// `ClaimError::Reclaimed` at its claim's position, and `wait_durable` on
/// it `DurableError::Lost`. The subscriber then gets "last" right after
/// "after", never the stalled message; and after `kill -9` and a reboot,
/// the log replays exactly "after", "last".
#[test]
fn a_claim_stalled_past_the_unblock_timeout_is_lost_and_never_seen() -> Result<()> {
    let _serial = setup()?;
    let deadline = deadline();
    let mut d = Rilld::start("stalled_claim", &[], deadline)?;
    let stream = "stalled.always";
    let stalled_msg = "the stalled claim's message";
    let client = d.client()?;
    let options = StreamOptions::new().with_capacity(64 << 10).with_max_message_len(2048).with_persist(Some(Durability::Always));
    let mut sub = client.subscriber_with(stream, Start::Earliest, options.clone())?;
    let go = d.dir.join("go");
    let mut cmd = Command::new(STALLED_PUBLISHER);
    cmd.arg("--socket").arg(&d.socket).args(["--stream", stream, "--persist", "always", "--payload", stalled_msg]);
    cmd.arg("--go-file").arg(&go).env("NO_COLOR", "1");
    let mut stalled = Worker::spawn_command(cmd, "stalled-publisher")?;
    let line = stalled.wait_line("CLAIMED", deadline)?;
    let claim_at: u64 = field(&line, "position").context("CLAIMED without position")?.parse()?;
    signal(stalled.pid(), Signal::SIGSTOP)?;

    let mut publ = client.publisher_with(stream, options)?;
    let after_at = publ.offer(b"after")?;
    ensure!(after_at > claim_at, "\"after\" at {after_at}, not behind the claim at {claim_at}");
    let got = read(&mut sub, 1, deadline, "\"after\", once rilld pads the stalled claim")?;
    ensure!(got == [(after_at, "after".to_owned())], "the subscriber got {got:?}, not only \"after\" at {after_at}");
    let padded = client.stream_info(stream)?.padded_bytes;
    ensure!(padded > 0, "the subscriber passed the stalled claim, but rilld padded nothing");
    publ.wait_durable(after_at, Duration::from_secs(60))?;

    std::fs::write(&go, b"")?;
    signal(stalled.pid(), Signal::SIGCONT)?;
    let summary = stalled.finish(deadline)?;
    let commit = stalled.wait_line("COMMIT", deadline)?;
    ensure!(
        summary.get("commit")? == "reclaimed" && field(&commit, "position") == Some(claim_at.to_string().as_str()),
        "the stalled publisher's commit: {commit:?} (want result=reclaimed position={claim_at}); {summary:?}"
    );
    let durable = stalled.wait_line("DURABLE", deadline)?;
    ensure!(summary.get("durable")? == "lost", "wait_durable on the stalled claim: {durable:?} (want result=lost); {summary:?}");

    let last_at = publ.offer(b"last")?;
    let got = read(&mut sub, 1, deadline, "\"last\"")?;
    ensure!(got == [(last_at, "last".to_owned())], "after the stalled commit the subscriber got {got:?}, not \"last\" at {last_at}");
    publ.wait_durable(last_at, Duration::from_secs(60))?;
    let mut replay = client.subscriber(stream, Start::Earliest)?;
    let got = read(&mut replay, 2, deadline, "a replay from the earliest")?;
    ensure!(payloads(&got) == ["after", "last"], "a replay from the earliest: {got:?}");
    read_nothing(&mut replay, Duration::from_millis(200), "a replay from the earliest, after \"last\"")?;
    drop((sub, replay, publ, client));

    d.kill9();
    wipe_memory(&d)?;
    d.spawn(deadline)?;
    let client = d.client()?;
    let mut replay = client.subscriber(stream, Start::Earliest)?;
    let got = read(&mut replay, 2, deadline, "the log after kill -9 and a reboot")?;
    ensure!(got == [(after_at, "after".to_owned()), (last_at, "last".to_owned())], "the log after kill -9 and a reboot: {got:?}");
    read_nothing(&mut replay, Duration::from_millis(200), "the log after \"last\"")?;
    d.ensure_alive()
}
