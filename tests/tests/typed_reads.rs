//! Reading memory a hostile publisher writes (issue #11): a client of uid
//! 65534 that may publish to a stream (`hostile-client rewrite`) keeps
//! rewriting a typed message's payload in the ring while an honest
//! subscriber of another uid reads it. Read from a copy
//! ([`ReadMode::Copied`], the default there), the archive a handler holds
//! never changes; read in place it does (the control that shows the attack
//! reaches the reader). And the default read mode follows what rilld says
//! about who may publish.
//!
//! Every wait has a watchdog that turns a hang into a failure; no test
//! asserts how long anything took. Needs root (the attacker runs as
//! another uid); elsewhere it fails unless `RILL_SKIP_ROOT_TESTS=1`.
//!
//! `cargo test --release -p rill-tests --test typed_reads`.

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Result};
use rill::rkyv::util::AlignedVec;
use rill::rkyv::{Archive, Deserialize, Serialize};
use rill::{ReadMode, Start, StreamOptions};
use rill_tests::daemon::{rilld_bin, Rilld};
use rill_tests::harness::{root_or_skip, TempRingDir, Worker};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTILE: &str = env!("CARGO_BIN_EXE_hostile-client");
const ATTACKER_UID: u32 = 65534;
/// Messages the attacker publishes (and rewrites, each for `REWRITE_MS`).
const ROUNDS: u64 = 20;
const REWRITE_MS: u64 = 60;
/// How long a handler keeps reading the value it was handed.
const HOLD: Duration = Duration::from_millis(20);

#[derive(Archive, Serialize, Deserialize, Debug)]
#[rkyv(crate = rill::rkyv)]
struct Named {
    name: String,
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 900 } else { 300 })
}

/// rilld letting uid 65534 publish and subscribe to `shared.*` (and the
/// directory of its configuration, which must live as long).
fn rilld_for_shared(name: &str, deadline: Instant) -> Result<(Rilld, TempRingDir)> {
    rilld_bin()?;
    let etc = TempRingDir::new_in(&std::env::temp_dir(), name)?;
    let config = etc.join("rilld.toml");
    std::fs::write(&config, format!("[[allow]]\nuids = [{ATTACKER_UID}]\npublish = [\"shared.\"]\nsubscribe = [\"shared.\"]\n"))?;
    let d = Rilld::start(name, &["--config".into(), config.display().to_string()], deadline)?;
    Ok((d, etc))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Two valid archives of one length whose strings differ in length and
/// bytes (100 `a`s; 97 `b`s and 3 bytes of padding), and with `bogus`,
/// the first with the length of its string (in the root, the last 8
/// bytes: length and offset) made 100000, out of bounds.
fn payloads(bogus: bool) -> Vec<Vec<u8>> {
    let encode = |s: String| {
        let mut buf = AlignedVec::new();
        rill::typed::encode(&Named { name: s }, &mut buf).expect("encodes").to_vec()
    };
    let (a, b) = (encode("a".repeat(100)), encode("b".repeat(97)));
    assert_eq!(a.len(), b.len(), "the attacker rewrites payloads of one length");
    let mut out = vec![a.clone(), b];
    if bogus {
        let n = a.len();
        // The half of the root where the two differ is the length.
        let len_at = n - 8 + if a[n - 8..n - 4] == out[1][n - 8..n - 4] { 4 } else { 0 };
        let long = encode("a".repeat(100_000));
        let long_len_at = len_at - n + long.len();
        let mut c = a;
        c[len_at..len_at + 4].copy_from_slice(&long[long_len_at..long_len_at + 4]);
        out.push(c);
    }
    out
}

/// Panics unless `s` is what some archive the attacker wrote could
/// validate as: 97 or 100 bytes of `a`, `b` and padding.
fn assert_published(s: &str) {
    assert!(s.len() == 97 || s.len() == 100, "a string of {} bytes was never published", s.len());
    assert!(s.bytes().all(|c| matches!(c, b'a' | b'b' | 0)), "bytes never published: {s:?}");
}

/// Reads the name it was handed for [`HOLD`], as a slow handler would,
/// and notes what it saw.
fn hold(v: &ArchivedNamed, seen: &mut Seen) {
    let first = v.name.as_str().to_owned();
    assert_published(&first);
    seen.valid += 1;
    seen.rewritten += u64::from(first != "a".repeat(100));
    let until = Instant::now() + HOLD;
    while Instant::now() < until {
        let now = v.name.as_str();
        if now != first {
            assert_published(now);
            seen.changed += 1;
            return;
        }
    }
}

/// What the subscriber saw.
#[derive(Debug, Default)]
struct Seen {
    /// Messages that validated.
    valid: u64,
    /// ... of which the handler saw change while it held them,
    changed: u64,
    /// ... and which were not the message as published at first.
    rewritten: u64,
    /// Messages that did not validate.
    rejected: u64,
}

/// The attacker rewrites `ROUNDS` messages of `shared.typed` with
/// `payloads` while a subscriber (of this process, root) reads them in
/// `mode` (`None`: its default); returns what it saw and its default mode.
fn read_under_rewrites(name: &str, mode: Option<ReadMode>, payloads: &[Vec<u8>]) -> Result<(Seen, ReadMode)> {
    let deadline = deadline();
    let stream = "shared.typed";
    let (mut d, _etc) = rilld_for_shared(name, deadline)?;
    let client = d.client()?;
    client.create_stream(stream, StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024))?;
    let mut sub = client.subscriber(stream, Start::Latest)?;
    let default = sub.read_mode();
    if let Some(mode) = mode {
        sub.set_read_mode(mode);
    }
    let list = payloads.iter().map(|p| hex(p)).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new(HOSTILE);
    cmd.arg("rewrite").arg("--socket").arg(&d.socket).args(["--stream", stream, "--payloads", &list]);
    cmd.args(["--rounds", &ROUNDS.to_string(), "--millis", &REWRITE_MS.to_string()]);
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut attacker, attacker_stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    attacker.wait_line("READY", deadline)?;
    let mut seen = Seen::default();
    while seen.valid + seen.rejected < ROUNDS {
        ensure!(Instant::now() < deadline, "watchdog: {seen:?}; attacker: {}", attacker.stderr());
        if !sub.has_data() {
            if let Some(status) = attacker.try_exited()? {
                bail!("the attacker exited ({status}) after {seen:?}: {}", attacker.stderr());
            }
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        // The attacker is rewriting the message by now.
        std::thread::sleep(Duration::from_millis(5));
        sub.poll_typed::<Named, _>(1, |m| match m {
            Ok(m) => hold(m.value, &mut seen),
            Err(_) => seen.rejected += 1,
        })?;
    }
    let done = attacker.wait_line("REWROTE", deadline)?;
    eprintln!("{name}: {seen:?}; attacker: {done}");
    drop(attacker_stdin);
    attacker.kill();
    d.ensure_alive()?;
    Ok((seen, default))
}

/// Read from copies (the default where another uid may publish), a value a
/// handler holds is one that validated and stays as it was, while the
/// attacker rewrites the payload in the ring under it, with valid archives
/// and with a bogus one (rejected, never read).
#[test]
fn copied_typed_reads_never_change_under_the_reader() -> Result<()> {
    let name = "typed_copied";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let (seen, default) = read_under_rewrites(name, None, &payloads(true))?;
    assert_eq!(default, ReadMode::Copied, "uid 65534 may publish to the stream");
    assert!(seen.valid > 0, "no message validated: {seen:?}");
    assert!(seen.rewritten + seen.rejected > 0, "the attack never reached a copy: {seen:?}");
    assert_eq!(seen.changed, 0, "a validated value changed under the reader: {seen:?}");
    Ok(())
}

/// The control: read in place, the same attack (valid archives only, so
/// that the reader stays in bounds) changes values while handlers hold
/// them. Without it the test above could pass because the attack never
/// reached the reader.
#[test]
fn a_typed_read_in_place_can_change_under_the_reader() -> Result<()> {
    let name = "typed_in_place";
    if !root_or_skip(name, "needs root: the attacker runs as uid 65534")? {
        return Ok(());
    }
    let (seen, _) = read_under_rewrites(name, Some(ReadMode::InPlace), &payloads(false))?;
    assert!(seen.changed > 0, "the attack never reached a reader in place: {seen:?}");
    Ok(())
}

/// A subscriber copies by default exactly where rilld says a uid it does
/// not trust may publish: root on `shared.*` (uid 65534 may publish)
/// copies; root on a stream only root and rilld's uid may publish to
/// reads in place; so does uid 65534 on `shared.*` (itself, root and
/// rilld's uid may publish there, and it trusts all three).
#[test]
fn the_default_read_mode_follows_who_may_publish() -> Result<()> {
    let name = "typed_default_mode";
    if !root_or_skip(name, "needs root: the probe runs as uid 65534")? {
        return Ok(());
    }
    let deadline = deadline();
    let (d, _etc) = rilld_for_shared(name, deadline)?;
    let client = d.client()?;
    for stream in ["shared.a", "own.a"] {
        client.create_stream(stream, StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024))?;
    }
    let shared = client.subscriber("shared.a", Start::Latest)?;
    assert_eq!(shared.read_mode(), ReadMode::Copied);
    let mut own = client.subscriber("own.a", Start::Latest)?;
    assert_eq!(own.read_mode(), ReadMode::InPlace);
    own.set_read_mode(ReadMode::Copied);
    assert_eq!(own.read_mode(), ReadMode::Copied, "the default can be overridden");
    let mut cmd = Command::new(HOSTILE);
    cmd.arg("trust").arg("--socket").arg(&d.socket).args(["--stream", "shared.a"]);
    cmd.uid(ATTACKER_UID).gid(ATTACKER_UID).env("NO_COLOR", "1");
    let (mut probe, probe_stdin) = Worker::spawn_with_stdin(cmd, "hostile-client")?;
    let line = probe.wait_line("TRUST", deadline)?;
    assert!(line.contains("publishers_trusted=true"), "uid 65534 on shared.a: {line}");
    drop(probe_stdin);
    probe.kill();
    Ok(())
}
