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

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rill::{DurableError, Durability, Start, StreamOptions};
use rill_tests::daemon::{rilld_bin, Rilld};
use rill_tests::harness::{field, root_or_skip, TempRingDir, Worker};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTILE: &str = env!("CARGO_BIN_EXE_hostile-client");
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
    rilld_bin()?;
    let deadline = deadline();
    // Kept until the end: the restarted rilld reads it again.
    let etc = TempRingDir::new_in(&std::env::temp_dir(), name)?;
    let config = etc.join("rilld.toml");
    std::fs::write(&config, format!("[[allow]]\nuids = [{ATTACKER_UID}]\npublish = [\"shared.\"]\nsubscribe = [\"shared.\"]\n"))?;
    let mut d = Rilld::start(name, &["--config".into(), config.display().to_string()], deadline)?;
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
    rilld_bin()?;
    let deadline = deadline();
    let etc = TempRingDir::new_in(&std::env::temp_dir(), name)?;
    let config = etc.join("rilld.toml");
    std::fs::write(&config, format!("[[allow]]\nuids = [{ATTACKER_UID}]\npublish = [\"shared.\"]\nsubscribe = [\"shared.\"]\n"))?;
    let mut d = Rilld::start(name, &["--config".into(), config.display().to_string()], deadline)?;
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
