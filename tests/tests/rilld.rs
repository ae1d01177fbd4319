//! `rilld` end to end with real processes: real daemons, and real client
//! processes (`rill-worker`, src/bin/rill-worker.rs) that use the client
//! library `rill::Client` and nothing else. (daemon/tests/daemon.rs speaks
//! the protocol by hand inside one process; these tests do not repeat it.)
//!
//! Each test starts its own `rilld` on a socket, ring directory and page
//! directory inside a fresh directory under /dev/shm, with short timeouts
//! (`rill_tests::daemon::DAEMON_FLAGS`), has subscriber processes join
//! (`READY`) before publisher processes start, and judges the workers' `SUMMARY` lines:
//! every payload is verified byte for byte (`rill_tests::payload`), and
//! sequence numbers per publisher are checked for exactly-once, in-order
//! delivery (`rill_tests::check`). Every wait has a watchdog that turns a
//! hang into a failure; no test asserts how long anything took. The tests
//! run one at a time (they load a small machine's cores on their own).
//!
//! # Which rilld
//! The first test builds it with `cargo build -p rill-daemon --bin rilld`
//! in this test binary's profile and uses target/<profile>/rilld, or takes
//! `RILLD=/path/to/rilld` (see `rill_tests::daemon`).
//!
//! # Running
//! `cargo test --release -p rill-tests --test rilld`. The denied-client test
//! runs a worker as uid 65534 and needs root; elsewhere it fails unless
//! `RILL_SKIP_ROOT_TESTS=1` (then it says loudly that it skipped). Set
//! `RILL_STRESS_SEED` to replay a run (every test prints its seed) and
//! `RILL_LOG=debug` for more daemon and client logging.

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rill::protocol::{self, ErrorCode, Request, Response};
use rill::{Client, StreamInfo, StreamOptions};
use rill_shm::frame::message_span;
use rill_tests::harness::stress_seed;
use rill_tests::daemon::{rilld_bin, Rilld};
use rill_tests::harness::{wait_until, Summary, TempRingDir, Worker};
use rill_tests::payload::{self, Prng};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const WORKER: &str = env!("CARGO_BIN_EXE_rill-worker");
/// Ring capacity of every test stream: small, so that publishers lap it
/// many times and back-pressure is exercised constantly.
const CAPACITY: u64 = 64 << 10;
/// Largest payload of every test stream.
const MAX_LEN: usize = 2048;

/// When a test gives up on a hang. Generous in debug builds, which are
/// many times slower; only a hang should ever get near it.
fn deadline() -> Instant {
    let secs = if cfg!(debug_assertions) { 900 } else { 180 };
    Instant::now() + Duration::from_secs(secs)
}

/// One test at a time (poisoning is ignored: a failed test must not fail
/// the others).
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every test starts with: the serial lock, the rilld binary (built
/// before the watchdog starts: a first build may take minutes), the seed,
/// and the watchdog's deadline.
fn setup(test: &str) -> Result<(MutexGuard<'static, ()>, u64, Instant)> {
    let serial = serial();
    rilld_bin()?;
    Ok((serial, stress_seed(test), deadline()))
}

// ---------------------------------------------------------------------------
// Workers

/// What every worker of one test shares.
struct Env<'a> {
    socket: &'a Path,
    stream: &'a str,
    seed: u64,
}

impl Env<'_> {
    fn args(&self, role: &str, extra: &[String]) -> Vec<String> {
        let mut a: Vec<String> = vec![role.into(), "--socket".into(), self.socket.display().to_string()];
        a.extend(["--stream".into(), self.stream.into(), "--seed".into(), self.seed.to_string()]);
        a.extend(["--capacity".into(), CAPACITY.to_string(), "--max-len".into(), MAX_LEN.to_string()]);
        a.extend_from_slice(extra);
        a
    }

    /// Starts a subscriber and waits until it has joined.
    fn subscriber(&self, name: &str, extra: &[String], deadline: Instant) -> Result<Worker> {
        let mut cmd = Command::new(WORKER);
        cmd.args(self.args("subscribe", extra)).env("NO_COLOR", "1");
        let mut w = Worker::spawn_command(cmd, name)?;
        w.wait_line("READY", deadline)?;
        Ok(w)
    }

    /// Starts publisher `k`.
    fn publisher(&self, k: u32, extra: &[String]) -> Result<Worker> {
        let mut args = vec!["--publisher".into(), k.to_string()];
        args.extend_from_slice(extra);
        let mut cmd = Command::new(WORKER);
        cmd.args(self.args("publish", &args)).env("NO_COLOR", "1");
        Worker::spawn_command(cmd, &format!("publisher-{k}"))
    }
}

/// `["--key", "value", ...]` from pairs.
fn opts(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().flat_map(|(k, v)| [format!("--{k}"), v.clone()]).collect()
}

fn list(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// The value of ` key=value` in a worker's line.
fn field<'a>(line: &'a str, key: &str) -> Result<&'a str> {
    let prefix = format!("{key}=");
    line.split_whitespace().find_map(|f| f.strip_prefix(prefix.as_str())).with_context(|| format!("no {key}= in {line:?}"))
}

fn num_field(line: &str, key: &str) -> Result<u64> {
    let v = field(line, key)?;
    v.parse().with_context(|| format!("{key}={v:?} in {line:?}"))
}

/// Waits for a successful exit and returns the summary; a failed worker's
/// summary and stderr are shown rather than only its exit status.
fn summary_after_exit(w: &mut Worker, deadline: Instant) -> Result<Summary> {
    let status = w.wait_exit(deadline)?;
    let name = w.name().to_owned();
    let s = w.summary().with_context(|| format!("{name} ({status}) printed no summary; stderr: {}", w.stderr()))?;
    if !status.success() {
        bail!("{name} exited with {status}: {}; summary {s:?}; stderr: {}", s.get("error").unwrap_or("?"), w.stderr());
    }
    Ok(s)
}

/// Waits for every publisher; checks each sent what it was asked to.
fn finish_publishers(pubs: &mut [Worker], counts: &[u64], deadline: Instant) -> Result<Vec<Summary>> {
    let mut out = Vec::new();
    for (w, &count) in pubs.iter_mut().zip(counts) {
        let s = summary_after_exit(w, deadline)?;
        ensure!(s.num("sent")? == count, "{} sent {} of {count}", w.name(), s.num("sent")?);
        out.push(s);
    }
    Ok(out)
}

/// A subscriber's summary says: no damaged, reordered, duplicated or
/// missing message, no overrun, `expect[k]` messages of publisher `k`, and
/// it stopped at the final tail.
fn check_exact(name: &str, s: &Summary, expect: &[u64]) -> Result<()> {
    ensure!(s.get("ok")? == "true", "{name} found errors: {s:?}");
    for key in ["damaged", "order", "header", "overrun"] {
        ensure!(s.num(key)? == 0, "{name}: {key}={}: {s:?}", s.num(key)?);
    }
    ensure!(s.nums("counts")? == expect, "{name}: got {:?} messages per publisher, expected {expect:?}: {s:?}", s.nums("counts")?);
    check_accounting(name, s)?;
    ensure!(s.num("end")? == s.num("tail")?, "{name}: stopped at {}, not at the final tail: {s:?}", s.num("end")?);
    Ok(())
}

/// Position accounting: from its start a subscriber moved exactly over the
/// messages it was handed, the padding it passed over, and what it lost.
fn check_accounting(name: &str, s: &Summary) -> Result<()> {
    let (start, end) = (s.num("start")?, s.num("end")?);
    let (span, padding, overrun) = (s.num("span")?, s.num("padding")?, s.num("overrun")?);
    ensure!(
        end.checked_sub(start) == Some(span + padding + overrun),
        "{name}: position moved from {start} to {end} but messages {span} + padding {padding} + overrun {overrun} = {}: {s:?}",
        span + padding + overrun
    );
    Ok(())
}

/// Judges every subscriber before failing, so a report shows them all.
fn check_all(subs: &mut [Worker], deadline: Instant, mut check: impl FnMut(&str, &Summary) -> Result<()>) -> Result<Vec<Summary>> {
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for w in subs.iter_mut() {
        match summary_after_exit(w, deadline).and_then(|s| check(w.name(), &s).map(|()| s)) {
            Ok(s) => out.push(s),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    ensure!(failures.is_empty(), "{} of {} subscribers failed:\n{}", failures.len(), subs.len(), failures.join("\n"));
    Ok(out)
}

fn stream_options() -> StreamOptions {
    StreamOptions::new().with_capacity(CAPACITY).with_max_message_len(MAX_LEN as u32)
}

fn info(client: &Client, stream: &str) -> Result<StreamInfo> {
    client.stream_info(stream).with_context(|| format!("stream info of {stream:?}"))
}

// ---------------------------------------------------------------------------
// 1. Many publishers and subscribers

/// 3 publisher processes x 3 subscriber processes, 330,000 messages of
/// 16..=2048 bytes through a 64 KiB back-pressure stream that rilld
/// created and handed out: every subscriber gets every message exactly
/// once, in each publisher's order, intact, and all see the same stream.
#[test]
fn three_publishers_three_subscribers_exactly_once() -> Result<()> {
    let name = "rilld_3x3";
    let (_serial, seed, deadline) = setup(name)?;
    let d = Rilld::start(name, &[], deadline)?;
    let env = Env { socket: &d.socket, stream: "orders.3x3", seed };
    let counts = vec![110_000u64; 3];
    let mut subs = Vec::new();
    for (i, wait) in ["futex", "yield", "futex"].into_iter().enumerate() {
        let args = opts(&[("expect", list(&counts)), ("wait", wait.into())]);
        subs.push(env.subscriber(&format!("subscriber-{i}"), &args, deadline)?);
    }
    let client = d.client()?;
    let before = info(&client, env.stream)?;
    ensure!(before.subscribers.len() == 3 && before.tail == 0, "before publishing: {before:?}");
    ensure!(before.policy == rill::Policy::BackPressure && before.capacity == CAPACITY, "stream shape: {before:?}");
    let mut pubs = Vec::new();
    for (k, api) in ["offer", "claim", "offer"].into_iter().enumerate() {
        pubs.push(env.publisher(k as u32, &opts(&[("count", counts[k].to_string()), ("api", api.into())]))?);
    }
    let pub_summaries = finish_publishers(&mut pubs, &counts, deadline)?;
    let summaries = check_all(&mut subs, deadline, |n, s| check_exact(n, s, &counts))?;
    for key in ["span", "padding", "start", "end"] {
        let v: Vec<u64> = summaries.iter().map(|s| s.num(key)).collect::<Result<_>>()?;
        ensure!(v.iter().all(|x| *x == v[0]), "subscribers disagree on {key}: {v:?}");
    }
    let tail = summaries[0].num("tail")?;
    ensure!(tail >= 100 * CAPACITY, "tail {tail} is not many laps of {CAPACITY}: back-pressure was hardly exercised");
    let bp: Vec<u64> = pub_summaries.iter().map(|s| s.num("back_pressured")).collect::<Result<_>>()?;
    eprintln!("{name}: tail {tail} = {} laps; back-pressured retries {bp:?}", tail / CAPACITY);
    Ok(())
}

// ---------------------------------------------------------------------------
// 2. A denied client

/// An [[allow]] rule lets uid 65534 subscribe to "public." streams only. A
/// worker running as uid 65534 is refused (Denied) when it publishes to or
/// subscribes to "secret.x" and when it publishes to "public.x", each time
/// with a message that names the uid, the action, the stream and the
/// rules; it may subscribe to "public.x" and receives what root publishes
/// there. It cannot reopen the ring it was handed for writing.
#[test]
fn denied_client_is_refused_with_a_clear_message() -> Result<()> {
    let name = "rilld_denied";
    if !rill_tests::harness::root_or_skip(name, "needs root: it runs a worker as uid 65534 (std::os::unix::process::CommandExt::uid)")? {
        return Ok(());
    }
    let (_serial, seed, deadline) = setup(name)?;
    let config_dir = TempRingDir::in_dev_shm("rilld-config")?;
    let config = config_dir.join("rilld.toml");
    std::fs::write(&config, "[[allow]]\nuids = [65534]\nsubscribe = [\"public.\"]\n")?;
    let d = Rilld::start(name, &["--config".into(), config.display().to_string()], deadline)?;
    let client = d.client()?;
    // Root creates the stream (creating is publishing, which 65534 may not).
    let mut publ = client.publisher_with("public.x", stream_options())?;
    let count = 2_000u64;
    let env = Env { socket: &d.socket, stream: "public.x", seed };
    let mut args = env.args("denied", &opts(&[("deny", "secret.x,public.x".into()), ("expect", count.to_string())]));
    args.push("--ro-checks".into());
    let mut cmd = Command::new(WORKER);
    cmd.args(args).uid(65534).gid(65534).env("NO_COLOR", "1");
    let mut w = Worker::spawn_command(cmd, "uid-65534")?;
    w.wait_line("READY", deadline).context("the uid 65534 worker must be able to subscribe to public.x")?;
    check_denials(w.lines())?;
    let mut buf = vec![0u8; MAX_LEN];
    for seq in 0..count {
        let len = payload::message_len(seed, 0, seq, MAX_LEN);
        payload::write_message(&mut buf[..len], seed, 0, seq, MAX_LEN);
        publ.offer_blocking(&buf[..len], Duration::from_secs(60)).with_context(|| format!("offer {seq}"))?;
    }
    let s = summary_after_exit(&mut w, deadline)?;
    check_exact("uid-65534", &s, &[count])?;
    let ro = w.lines().iter().find(|l| l.starts_with("ROCHECK")).cloned().context("no ROCHECK line")?;
    eprintln!("{name}: {ro}");
    ensure!(field(&ro, "ring_perms")? == "r--s", "uid 65534's ring mapping: {ro}");
    ensure!(field(&ro, "reopen_rw")? == "refused:EACCES", "uid 65534 could reopen the ring for writing: {ro}");
    let log = d.log();
    ensure!(log.contains("denied"), "rilld logged no denial:\n{log}");
    Ok(())
}

/// The [[allow]] rules must hold for the memory too: a uid that may not
/// subscribe to "secret.x" may not read its ring or pages by any path
/// either. Rings are memfds with no name in any filesystem; the only paths
/// to them are /proc/PID/fd/N of rilld and of its ring keeper (each memfd
/// is mode 0600, and those processes are root's): uid 65534 reads none.
#[test]
fn denied_uid_cannot_read_the_ring_file_by_path() -> Result<()> {
    let name = "rilld_ring_file_modes";
    if !rill_tests::harness::root_or_skip(name, "needs root: it reads files as uid 65534")? {
        return Ok(());
    }
    let (_serial, _seed, deadline) = setup(name)?;
    let config_dir = TempRingDir::in_dev_shm("rilld-config")?;
    let config = config_dir.join("rilld.toml");
    std::fs::write(&config, "[[allow]]\nuids = [65534]\nsubscribe = [\"public.\"]\n")?;
    let d = Rilld::start(name, &["--config".into(), config.display().to_string()], deadline)?;
    let client = d.client()?;
    let _publ = client.publisher_with("secret.x", stream_options())?;
    let mut files = Vec::new();
    for pid in [d.pid(), d.keeper_pid()?] {
        for e in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
            let path = e?.path();
            if std::fs::read_link(&path).is_ok_and(|l| l.to_string_lossy().starts_with("/memfd:secret.x")) {
                files.push(path);
            }
        }
    }
    // rilld and the keeper each hold the ring, the wake and daemon pages
    // and every slot page.
    ensure!(files.len() >= 8, "found only {files:?} as paths to secret.x's memory");
    let mut readable = Vec::new();
    for f in &files {
        let out = Command::new("head").arg("-c").arg("8").arg(f).uid(65534).gid(65534).output()?;
        if out.status.success() {
            let mode = std::fs::metadata(f)?.mode();
            readable.push(format!("{} (mode {mode:o})", f.display()));
        }
    }
    ensure!(readable.is_empty(), "uid 65534, denied \"secret.x\", reads it by path: {readable:?}");
    Ok(())
}

/// The DENIED lines of the uid 65534 worker.
fn check_denials(lines: &[String]) -> Result<()> {
    let find = |action: &str, stream: &str| -> Result<&String> {
        let tag = format!("DENIED action={action} stream={stream} ");
        lines.iter().find(|l| l.starts_with(&tag)).with_context(|| format!("no {tag:?} line in {lines:?}"))
    };
    for (action, stream) in [("publish", "secret.x"), ("subscribe", "secret.x"), ("publish", "public.x")] {
        let line = find(action, stream)?;
        eprintln!("rilld_denied: {line}");
        ensure!(field(line, "code")? == "Denied", "{action} {stream}: expected Denied: {line}");
        let message = line.split_once("message=").map(|x| x.1).unwrap_or_default();
        let verb = if action == "publish" { "may not publish to" } else { "may not subscribe to" };
        for part in ["uid 65534", verb, &format!("{stream:?}"), "[[allow]]", "gid 65534"] {
            ensure!(message.contains(part), "the refusal to {action} {stream} does not say {part:?}: {message:?}");
        }
    }
    let line = find("subscribe", "public.x")?;
    ensure!(field(line, "code")? == "granted", "uid 65534 may subscribe to public.x: {line}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 3. Malformed requests

/// One raw control connection, with a receive timeout as watchdog.
struct RawConn {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl RawConn {
    fn connect(socket: &Path) -> Result<RawConn> {
        let fd = rill::wire::connect(socket).context("connect")?;
        let tv = nix::sys::time::TimeVal::new(30, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)?;
        Ok(RawConn { fd, buf: Vec::new() })
    }

    /// Sends `bytes` with `fds` and returns the decoded reply.
    fn call(&mut self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Result<Response> {
        rill::wire::send(self.fd.as_fd(), bytes, fds).context("send")?;
        let r = rill::wire::recv(self.fd.as_fd(), &mut self.buf).context("no reply (watchdog: 30 s receive timeout)")?;
        ensure!(r.fds.is_empty(), "an error reply carried {} fds", r.fds.len());
        protocol::decode_response(&r.bytes).context("undecodable reply")
    }
}

fn encode(req: &Request) -> Vec<u8> {
    protocol::encode_request(req).expect("small requests encode")
}

/// What the daemon must answer to one malformed message.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// An `Error` reply with this code.
    Code(ErrorCode),
    /// An `Error` reply of any code.
    AnyError,
    /// Any valid reply (random bodies behind a valid header may decode).
    AnyReply,
}

/// Message `i` of a barrage connection: bytes, how many fds to attach, and
/// what the reply must be.
fn malformed(rng: &mut Prng, i: u64) -> (Vec<u8>, usize, Expect) {
    let good = encode(&Request::StreamInfo { stream: "x".repeat(rng.range(1, 50)) });
    let mut random = |n: usize| (0..n).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>();
    let malformed = Expect::Code(ErrorCode::Malformed);
    match i % 12 {
        0 => {
            let n = 1 + (i as usize * 7919) % 600;
            (random(n), 0, Expect::AnyError)
        }
        // Not empty: an empty datagram reads as end-of-stream.
        1 => (good[..1 + (i as usize / 12) % (good.len() - 1)].to_vec(), 0, malformed),
        2 => {
            let mut m = good.clone();
            m[4..8].copy_from_slice(&[u32::MAX, 1 << 20, protocol::MAX_MESSAGE_LEN as u32][(i as usize / 12) % 3].to_le_bytes());
            (m, 0, malformed)
        }
        3 => {
            let mut m = good.clone();
            let current = protocol::PROTOCOL_VERSION;
            let v = [0u16, current - 1, current + 1, u16::MAX][(i as usize / 12) % 4];
            m[2..4].copy_from_slice(&v.to_le_bytes());
            (m, 0, Expect::Code(ErrorCode::UnsupportedVersion))
        }
        4 => loop {
            // A valid header and a random body. Bodies that happen to
            // decode are kept only if the request changes no state.
            let n = (i as usize * 31) % 300;
            let mut m = [protocol::MAGIC.to_le_bytes(), protocol::PROTOCOL_VERSION.to_le_bytes()].concat();
            m.extend_from_slice(&(n as u32).to_le_bytes());
            m.extend(random(n));
            match protocol::decode_request(&m) {
                Err(_) => break (m, 0, malformed),
                Ok(Request::Health | Request::Heartbeat | Request::ListStreams | Request::StreamInfo { .. } | Request::Close { .. }) => {
                    break (m, 0, Expect::AnyReply)
                }
                Ok(_) => continue,
            }
        },
        5 => (encode(&Request::Health), 1 + (i as usize / 12) % 4, malformed),
        6 => (good, 1, malformed),
        7 => (vec![0u8; protocol::MAX_MESSAGE_LEN + 1 + (i as usize % 5000)], 0, malformed),
        // As many fds as a reply may carry: still none belong in a request.
        8 => (encode(&Request::Health), protocol::MAX_FDS, malformed),
        9 => (encode(&Request::OpenPublisher { stream: "never".into(), create: Some(stream_options()), exclusive: false }), 0, Expect::Code(ErrorCode::NoHello)),
        10 => ([good, random(20)].concat(), 0, malformed),
        _ => (encode(&Request::Close { handle: rng.next_u64() }), 0, Expect::Code(ErrorCode::UnknownHandle)),
    }
}

/// One barrage connection: `n` malformed messages, each answered as
/// [`malformed`] says, then a valid request that must still be served.
fn barrage(socket: &Path, seed: u64, n: u64) -> Result<u64> {
    let mut rng = Prng::new(seed);
    let mut c = RawConn::connect(socket)?;
    let devnull = std::fs::File::open("/dev/null")?;
    let spare: Vec<std::fs::File> = (0..protocol::MAX_FDS).map(|_| devnull.try_clone()).collect::<std::io::Result<_>>()?;
    for i in 0..n {
        let (bytes, nfds, expect) = malformed(&mut rng, i);
        let fds: Vec<_> = spare[..nfds].iter().map(|f| f.as_fd()).collect();
        let resp = c.call(&bytes, &fds).with_context(|| format!("message {i} ({} bytes, {nfds} fds)", bytes.len()))?;
        let ok = match (expect, &resp) {
            (Expect::Code(want), Response::Error { code, .. }) => *code == want,
            (Expect::AnyError, Response::Error { .. }) | (Expect::AnyReply, _) => true,
            _ => false,
        };
        ensure!(ok, "message {i} (kind {}, {} bytes, {nfds} fds): expected {expect:?}, got {resp:?}", i % 12, bytes.len());
    }
    // Hello, then a Resume naming handles nobody holds: all refused (0).
    let hello = c.call(&encode(&Request::Hello { client_name: "barrage".into() }), &[])?;
    ensure!(matches!(hello, Response::Hello { .. }), "Hello after the barrage: {hello:?}");
    let bogus = (0..3)
        .map(|i| protocol::ResumeHandle { stream: format!("nope{i}"), kind: protocol::HandleKind::Subscriber, slot: i, exclusive: false })
        .collect();
    let resumed = c.call(&encode(&Request::Resume { handles: bogus }), &[])?;
    ensure!(resumed == Response::Resumed { handles: vec![0, 0, 0] }, "bogus Resume: {resumed:?}");
    let health = c.call(&encode(&Request::Health), &[])?;
    ensure!(matches!(health, Response::Health { healthy: true, .. }), "Health after the barrage: {health:?}");
    Ok(n)
}

/// Connections that misbehave at the socket level: an empty datagram (the
/// daemon closes that connection), and garbage sent without ever reading
/// the replies before hanging up.
fn rude_connections(socket: &Path, seed: u64) -> Result<()> {
    let mut rng = Prng::new(seed);
    for i in 0..50 {
        let c = RawConn::connect(socket)?;
        if i % 10 == 0 {
            rill::wire::send(c.fd.as_fd(), &[], &[])?;
            let mut buf = Vec::new();
            let r = rill::wire::recv(c.fd.as_fd(), &mut buf);
            ensure!(matches!(r, Err(rill::wire::WireError::Closed)), "empty datagram: {r:?}");
            continue;
        }
        for j in 0..20 {
            let (bytes, _, _) = malformed(&mut rng, j);
            // The daemon may drop a client that does not read its replies.
            if rill::wire::send(c.fd.as_fd(), &bytes, &[]).is_err() {
                break;
            }
        }
    }
    Ok(())
}

fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Four connections send 1,500 malformed messages each (random bytes,
/// truncated frames, huge length fields, wrong versions, random bodies,
/// fds where none belong, oversized messages, requests out of order) and
/// get an error reply to every one; fifty more misbehave and hang up.
/// Meanwhile a normal client is answered throughout; afterwards the daemon
/// is alive, holds no more fds than before (every fd sent to it was
/// closed), and serves publisher and subscriber processes correctly.
#[test]
fn malformed_request_barrage_then_normal_service() -> Result<()> {
    let name = "rilld_malformed";
    let (_serial, seed, deadline) = setup(name)?;
    let mut d = Rilld::start(name, &[], deadline)?;
    let client = d.client()?;
    let baseline = open_fds(d.pid())?;
    let socket = d.socket.clone();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let socket = socket.clone();
            std::thread::spawn(move || barrage(&socket, seed ^ t, 1_500))
        })
        .chain(std::iter::once({
            let socket = socket.clone();
            std::thread::spawn(move || rude_connections(&socket, seed).map(|()| 0))
        }))
        .collect();
    let mut served = 0u64;
    while !threads.iter().all(|t| t.is_finished()) {
        let h = client.health().context("health during the barrage")?;
        ensure!(h.healthy, "unhealthy during the barrage: {h:?}");
        served += 1;
        ensure!(Instant::now() < deadline, "watchdog: barrage did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut sent = 0;
    for t in threads {
        let n = t.join().map_err(|_| anyhow::anyhow!("barrage thread panicked"))?;
        sent += n.with_context(|| format!("rilld's log:\n{}", d.log()))?;
    }
    d.ensure_alive()?;
    // Closing connections and fds takes rilld a moment, not more: 20 s is
    // a watchdog against a leak, not a speed limit.
    let settle = Instant::now() + Duration::from_secs(20);
    wait_until(settle.min(deadline), "rilld closed every fd the barrage sent or opened", || Ok(open_fds(d.pid())? <= baseline))
        .with_context(|| format!("rilld holds {} fds, {baseline} before the barrage", open_fds(d.pid()).unwrap_or(0)))?;
    eprintln!("{name}: {sent} malformed messages answered; {served} health checks served meanwhile");
    // A normal publisher and subscriber, in processes of their own.
    let env = Env { socket: &d.socket, stream: "after.barrage", seed };
    let count = 30_000u64;
    let mut sub = env.subscriber("subscriber", &opts(&[("expect", count.to_string())]), deadline)?;
    let mut publ = env.publisher(0, &opts(&[("count", count.to_string())]))?;
    finish_publishers(std::slice::from_mut(&mut publ), &[count], deadline)?;
    check_all(std::slice::from_mut(&mut sub), deadline, |n, s| check_exact(n, s, &[count]))?;
    d.ensure_alive()?;
    ensure!(client.health()?.healthy, "unhealthy at the end");
    Ok(())
}

/// A request carrying as many fds as one message can (the kernel's
/// SCM_MAX_FD, 253; no request carries any) must get an error reply like
/// any other malformed request, leave the connection usable, and leave no
/// fd behind in rilld. (It failed once: rilld dropped such a client without
/// a reply and leaked the fds, so any local process could exhaust its fd
/// limit.)
#[test]
fn request_with_too_many_fds_gets_an_error_and_leaks_nothing() -> Result<()> {
    let name = "rilld_too_many_fds";
    let (_serial, _seed, deadline) = setup(name)?;
    let mut d = Rilld::start(name, &[], deadline)?;
    let baseline = open_fds(d.pid())?;
    let devnull = std::fs::File::open("/dev/null")?;
    let many: Vec<std::fs::File> = (0..protocol::MAX_FDS).map(|_| devnull.try_clone()).collect::<std::io::Result<_>>()?;
    let fds: Vec<_> = many.iter().map(|f| f.as_fd()).collect();
    let mut c = RawConn::connect(&d.socket)?;
    for i in 0..3 {
        let resp = c.call(&encode(&Request::Health), &fds).with_context(|| format!("request {i} with {} fds; rilld's log:\n{}", fds.len(), d.log()))?;
        ensure!(matches!(resp, Response::Error { code: ErrorCode::Malformed, .. }), "{} fds: {resp:?}", fds.len());
    }
    // Usable still: Hello (health needs one), then health.
    let hello = c.call(&encode(&Request::Hello { client_name: name.into() }), &[])?;
    ensure!(matches!(hello, Response::Hello { .. }), "{hello:?}");
    let health = c.call(&encode(&Request::Health), &[])?;
    ensure!(matches!(health, Response::Health { healthy: true, .. }), "{health:?}");
    drop(c);
    d.ensure_alive()?;
    let settle = Instant::now() + Duration::from_secs(20);
    wait_until(settle.min(deadline), "rilld closed the fds it was sent", || Ok(open_fds(d.pid())? <= baseline))
        .with_context(|| format!("rilld holds {} fds, {baseline} before", open_fds(d.pid()).unwrap_or(0)))
}

// ---------------------------------------------------------------------------
// 4. A subscriber killed under load

/// A subscriber stops reading, so the publisher runs into it a ring later;
/// then it is killed with SIGKILL. rilld sees its socket close, frees its
/// slot, and the publisher goes on past the limit the dead subscriber set;
/// the live subscriber still gets every message.
#[test]
fn killed_subscriber_no_longer_holds_the_publisher_back() -> Result<()> {
    let name = "rilld_killed_subscriber";
    let (_serial, seed, deadline) = setup(name)?;
    let d = Rilld::start(name, &[], deadline)?;
    let env = Env { socket: &d.socket, stream: "load.kill-sub", seed };
    let count = 200_000u64;
    let live_args = opts(&[("expect", count.to_string())]);
    let mut live = env.subscriber("live-subscriber", &live_args, deadline)?;
    let victim_args = opts(&[("expect", count.to_string()), ("stop-after", "3000".into()), ("wait", "yield".into())]);
    let mut victim = env.subscriber("victim-subscriber", &victim_args, deadline)?;
    let victim_pid = victim.pid();
    let mut publ = env.publisher(0, &opts(&[("count", count.to_string())]))?;
    let stopped = num_field(&victim.wait_line("STOPPED", deadline)?, "position")?;
    let client = d.client()?;
    let wall = stopped + CAPACITY;
    let near = wall - 2 * message_span(MAX_LEN) as u64 - 32;
    wait_until(deadline, "the publisher reaches the stopped subscriber's limit", || Ok(info(&client, env.stream)?.tail >= near))?;
    let held = info(&client, env.stream)?;
    ensure!(held.tail <= wall, "tail {} passed the stopped subscriber at {stopped} by more than a ring", held.tail);
    ensure!(
        held.subscribers.iter().any(|s| s.pid == victim_pid && s.position == stopped),
        "the stopped subscriber's slot is not where it stopped: {held:?}"
    );
    ensure!(publ.try_exited()?.is_none(), "the publisher finished although a subscriber holds it back");
    victim.kill();
    wait_until(deadline, "rilld frees the killed subscriber's slot", || {
        let i = info(&client, env.stream)?;
        Ok(i.reaped_subscribers == 1 && i.subscribers.iter().all(|s| s.pid != victim_pid))
    })?;
    // It noticed through the socket, not the heartbeat timeout. (The log
    // line may come a moment after the slot is free: wait for it, briefly.)
    let says_closed = |log: &str| {
        log.lines().any(|l| l.contains("client gone") && l.contains(&format!("pid={victim_pid}")) && l.contains("connection closed"))
    };
    let soon = Instant::now() + Duration::from_secs(10);
    if wait_until(soon.min(deadline), "rilld logs why it released the killed subscriber", || Ok(says_closed(&d.log()))).is_err() {
        bail!("rilld's log does not say it released pid {victim_pid} because its connection closed:\n{}", d.log());
    }
    wait_until(deadline, "the publisher goes past the dead subscriber's limit", || Ok(info(&client, env.stream)?.tail > wall))?;
    finish_publishers(std::slice::from_mut(&mut publ), &[count], deadline)?;
    check_all(std::slice::from_mut(&mut live), deadline, |n, s| check_exact(n, s, &[count]))?;
    eprintln!("{name}: victim stopped at {stopped}; limit {wall}; publisher finished");
    Ok(())
}

/// A subscriber process that is stopped (SIGSTOP) for longer than
/// `--client-timeout-ms` misses its heartbeats: rilld drops it as hung and
/// frees its slot, so the publisher goes on past it (that much is as
/// designed, and checked). When the process continues (SIGCONT), it must
/// not be left reading a slot that is no longer its own without being told:
/// either it gets every message (rilld takes it back) or its poll reports
/// an error. It must never be handed a damaged message.
///
/// If it was stopped in the middle of reading a message, that message may
/// be overwritten under it: its poll then says so
/// (`PollError::RevokedDuringRead`, counted as `retracted`, at most one),
/// and every message before it must be intact.
///
/// (This failed twice before fixes: the subscriber polled on a freed slot,
/// silently, until its poll reported `PollError::Revoked`; then, 1 run in
/// 8, the message being read when it was stopped arrived torn without a
/// word, until the poll checked its slot again after each handler.)
#[test]
fn subscriber_paused_past_the_client_timeout_is_told_or_taken_back() -> Result<()> {
    let name = "rilld_paused_subscriber";
    let (_serial, seed, deadline) = setup(name)?;
    let d = Rilld::start(name, &[], deadline)?;
    let env = Env { socket: &d.socket, stream: "load.paused-sub", seed };
    let count = 300_000u64;
    let mut live = env.subscriber("live-subscriber", &opts(&[("expect", count.to_string())]), deadline)?;
    let paused_args = opts(&[("expect", count.to_string()), ("stall-secs", "15".into())]);
    let mut paused = env.subscriber("paused-subscriber", &paused_args, deadline)?;
    let mut publ = env.publisher(0, &opts(&[("count", count.to_string())]))?;
    wait_progress(&mut paused, 0, "1,000 messages", deadline, |l| Ok(num_field(l, "n")? >= 1_000))?;
    let pid = paused.pid();
    kill(Pid::from_raw(pid as i32), Signal::SIGSTOP)?;
    let client = d.client()?;
    let result = (|| -> Result<()> {
        let at = info(&client, env.stream)?.subscribers.iter().find(|s| s.pid == pid).map(|s| s.position).context("no slot")?;
        wait_until(deadline, "rilld drops the stopped subscriber as hung", || Ok(info(&client, env.stream)?.reaped_subscribers == 1))?;
        wait_until(deadline, "the publisher laps the stopped subscriber", || Ok(info(&client, env.stream)?.tail > at + 2 * CAPACITY))
    })();
    kill(Pid::from_raw(pid as i32), Signal::SIGCONT)?;
    result?;
    finish_publishers(std::slice::from_mut(&mut publ), &[count], deadline)?;
    check_all(std::slice::from_mut(&mut live), deadline, |n, s| check_exact(n, s, &[count]))?;
    paused.wait_exit(deadline)?;
    let s = paused.summary().context("no summary from the paused subscriber")?;
    ensure!(s.num("damaged")? == 0 && s.num("order")? == 0, "the paused subscriber was handed bad messages: {s:?}");
    ensure!(s.num("retracted")? <= 1, "more than one message reported as read while revoked: {s:?}");
    let told = s.get("error").is_ok_and(|e| e.starts_with("poll:"));
    ensure!(
        s.get("ok")? == "true" || told,
        "the paused subscriber was neither taken back nor told: {s:?}; its stderr:\n{}",
        paused.stderr()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// 5. A publisher killed between claim and commit

/// Publisher 0 publishes 50 messages, claims the 51st, writes half of it
/// and is killed with SIGKILL while publisher 1 publishes 30,000. Readers
/// stop at the abandoned claim until rilld pads over it (after its unblock
/// timeout); then they receive every message of publisher 1, and rilld's
/// stream info counts exactly the claim's frame as padded.
#[test]
fn publisher_killed_inside_a_claim_is_padded_over() -> Result<()> {
    let name = "rilld_dead_claim";
    let (_serial, seed, deadline) = setup(name)?;
    let d = Rilld::start(name, &[], deadline)?;
    let env = Env { socket: &d.socket, stream: "load.dead-claim", seed };
    let (before, after) = (50u64, 30_000u64);
    let counts = [before, after];
    let mut subs = Vec::new();
    for (i, wait) in ["futex", "yield"].into_iter().enumerate() {
        subs.push(env.subscriber(&format!("subscriber-{i}"), &opts(&[("expect", list(&counts)), ("wait", wait.into())]), deadline)?);
    }
    let mut cmd = Command::new(WORKER);
    cmd.args(env.args("claim-hang", &opts(&[("publisher", "0".into()), ("count", before.to_string())]))).env("NO_COLOR", "1");
    let mut hang = Worker::spawn_command(cmd, "claim-hang")?;
    let line = hang.wait_line("CLAIMED", deadline)?;
    let (claim_at, claim_len) = (num_field(&line, "position")?, num_field(&line, "len")? as usize);
    let mut live = env.publisher(1, &opts(&[("count", after.to_string())]))?;
    let client = d.client()?;
    wait_until(deadline, "the live publisher writes behind the claim", || Ok(info(&client, env.stream)?.tail > claim_at + 4096))?;
    hang.kill();
    let claim_span = message_span(claim_len) as u64;
    let mut padded = 0;
    wait_until(deadline, "rilld pads the abandoned claim", || {
        padded = info(&client, env.stream)?.padded_bytes;
        Ok(padded > 0)
    })?;
    ensure!(padded == claim_span, "rilld padded {padded} bytes; the abandoned claim spans {claim_span}");
    finish_publishers(std::slice::from_mut(&mut live), &[after], deadline)?;
    let summaries = check_all(&mut subs, deadline, |n, s| check_exact(n, s, &counts))?;
    for s in &summaries {
        ensure!(s.num("padding")? >= claim_span, "a subscriber passed over less padding than the padded claim: {s:?}");
        ensure!(s.num("start")? <= claim_at && s.num("end")? > claim_at, "subscriber did not cross the claim: {s:?}");
    }
    eprintln!("{name}: claim at {claim_at} ({claim_len} bytes) padded; {summaries:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// 6. rilld killed under load, and restarted

/// rilld is killed with SIGKILL while 2 publisher and 2 subscriber
/// processes run. Publishing and subscribing go on while it is down (the
/// rings are shared memory; nothing on the data path talks to it). A new
/// rilld with the same flags adopts the ring; every client reconnects and
/// resumes its handles by itself; a new subscriber can open the same
/// stream and continues from where the stream is. At the end each original
/// subscriber has every message of every publisher exactly once, in order.
#[test]
fn rilld_killed_and_restarted_under_load_loses_nothing() -> Result<()> {
    let name = "rilld_restart";
    let (_serial, seed, deadline) = setup(name)?;
    let mut d = Rilld::start(name, &[], deadline)?;
    let stop = d.dir.join("stop-publishing");
    let done = d.dir.join("publishers-done");
    let socket = d.socket.clone();
    let env = Env { socket: &socket, stream: "load.restart", seed };
    let sub_args = opts(&[("publishers", "2".into()), ("done-file", done.display().to_string())]);
    let mut subs = Vec::new();
    for i in 0..2 {
        subs.push(env.subscriber(&format!("subscriber-{i}"), &sub_args, deadline)?);
    }
    let pub_args = opts(&[("until-file", stop.display().to_string()), ("pause-every", "500".into()), ("pause-us", "500".into())]);
    let mut pubs = vec![env.publisher(0, &pub_args)?, env.publisher(1, &pub_args)?];
    for w in pubs.iter_mut().chain(subs.iter_mut()) {
        wait_progress(w, 0, "5,000 messages", deadline, |l| Ok(num_field(l, "n")? >= 5_000))?;
    }
    let tail_before = info(&d.client()?, env.stream)?.tail;
    d.kill9();
    for w in pubs.iter_mut().chain(subs.iter_mut()) {
        let from = w.lines().len();
        let (i, line) = wait_progress(w, from, "connected=false", deadline, |l| Ok(field(l, "connected")? == "false"))?;
        let n = num_field(&line, "n")?;
        wait_progress(w, i + 1, "progress while rilld is down", deadline, |l| {
            ensure!(field(l, "connected")? == "false", "{l}: reconnected although rilld is down");
            Ok(num_field(l, "n")? >= n + 1_000)
        })?;
    }
    eprintln!("{name}: rilld killed at tail >= {tail_before}; every worker went on while it was down");
    d.spawn(deadline)?;
    // Its shared publishers may not have resumed yet: no exclusive
    // publisher may slip in before them.
    let (code, msg) = refusal(d.client()?.open_exclusive_publisher(env.stream, None))?;
    ensure!(code == ErrorCode::Busy, "exclusive publisher on a just-adopted shared stream: {code:?} {msg}");
    for w in pubs.iter_mut().chain(subs.iter_mut()) {
        let from = w.lines().len();
        wait_progress(w, from, "reconnected and resumed", deadline, |l| {
            Ok(field(l, "connected")? == "true" && num_field(l, "reconnects")? >= 1 && num_field(l, "handle")? != 0)
        })?;
    }
    check_adopted(&d, &env, &pubs, &subs, tail_before)?;
    // A new client opens the same stream and reads on from where it is.
    let late_args = opts(&[("follow", "2".into()), ("done-file", done.display().to_string())]);
    let mut late = env.subscriber("late-subscriber", &late_args, deadline)?;
    let ready = late.lines().iter().find(|l| l.starts_with("READY")).cloned().context("no READY line")?;
    let late_start = num_field(&ready, "start")?;
    ensure!(late_start > tail_before, "the late subscriber starts at {late_start}, not after {tail_before}: not the adopted ring");
    wait_progress(&mut late, 0, "1,000 messages", deadline, |l| Ok(num_field(l, "n")? >= 1_000))?;
    std::fs::write(&stop, b"")?;
    let mut sent = Vec::new();
    for w in &mut pubs {
        let s = summary_after_exit(w, deadline)?;
        ensure!(s.num("reconnects")? >= 1 && s.get("connected")? == "true", "{}: {s:?}", w.name());
        sent.push(s.num("sent")?);
    }
    std::fs::write(&done, b"")?;
    let summaries = check_all(&mut subs, deadline, |n, s| {
        check_exact(n, s, &sent)?;
        ensure!(s.num("reconnects")? >= 1 && s.num("handle")? != 0, "{n} did not resume: {s:?}");
        Ok(())
    })?;
    check_all(std::slice::from_mut(&mut late), deadline, |n, s| {
        ensure!(s.get("ok")? == "true" && s.num("damaged")? + s.num("order")? + s.num("header")? == 0, "{n}: {s:?}");
        check_accounting(n, s)?;
        let got = s.nums("counts")?;
        ensure!(got.iter().zip(&sent).all(|(g, s)| *g > 0 && g <= s), "{n}: counts {got:?} of {sent:?}: {s:?}");
        Ok(())
    })?;
    eprintln!("{name}: sent {sent:?}; {summaries:?}");
    Ok(())
}

/// A publisher that comes back late after a restart (here: stopped with
/// SIGSTOP while rilld restarts, continued two seconds later, well within
/// `--resume-grace-ms 3000`) is taken back: the adopted stream is still
/// there, Resume binds its handle, and a subscriber that opens the stream
/// afterwards receives its messages. (It failed once: an adopted stream
/// without subscribers was removed after `--linger-ms`, before its
/// publishers had `--resume-grace-ms` to come back.)
#[test]
fn late_publisher_is_taken_back_after_a_restart() -> Result<()> {
    let name = "rilld_late_publisher";
    let (_serial, seed, deadline) = setup(name)?;
    let mut d = Rilld::start(name, &[], deadline)?;
    let stop = d.dir.join("stop");
    let socket = d.socket.clone();
    let env = Env { socket: &socket, stream: "load.late-pub", seed };
    let mut publ = env.publisher(0, &opts(&[("until-file", stop.display().to_string()), ("pause-every", "100".into()), ("pause-us", "1000".into())]))?;
    wait_progress(&mut publ, 0, "1,000 messages", deadline, |l| Ok(num_field(l, "n")? >= 1_000))?;
    let pid = Pid::from_raw(publ.pid() as i32);
    kill(pid, Signal::SIGSTOP)?;
    d.kill9();
    let restarted = d.spawn(deadline);
    if restarted.is_ok() {
        // Longer than --linger-ms, shorter than --resume-grace-ms.
        std::thread::sleep(Duration::from_millis(2_000));
    }
    kill(pid, Signal::SIGCONT)?;
    restarted?;
    let from = publ.lines().len();
    let (_, line) = wait_progress(&mut publ, from, "reconnected", deadline, |l| Ok(num_field(l, "reconnects")? >= 1))?;
    ensure!(num_field(&line, "handle")? != 0, "rilld did not take the late publisher back: {line}; rilld's log:\n{}", d.log());
    let late_args = opts(&[("follow", "1".into()), ("done-file", d.dir.join("done").display().to_string()), ("stall-secs", "20".into())]);
    let mut sub = env.subscriber("subscriber", &late_args, deadline)?;
    wait_progress(&mut sub, 0, "1,000 messages of the late publisher", deadline, |l| Ok(num_field(l, "n")? >= 1_000))?;
    std::fs::write(&stop, b"")?;
    summary_after_exit(&mut publ, deadline)?;
    std::fs::write(d.dir.join("done"), b"")?;
    check_all(std::slice::from_mut(&mut sub), deadline, |n, s| {
        ensure!(s.get("ok")? == "true", "{n}: {s:?}");
        check_accounting(n, s)
    })?;
    Ok(())
}

/// The daemon's refusal code of `r`, or why it is not a refusal.
fn refusal<T>(r: std::result::Result<T, rill::ClientError>) -> Result<(ErrorCode, String)> {
    match r {
        Err(rill::ClientError::Daemon { code, message }) => Ok((code, message)),
        Err(e) => bail!("expected a refusal from rilld, got error {e}"),
        Ok(_) => bail!("expected a refusal from rilld, got the handle"),
    }
}

/// An exclusive publisher is the stream's only publisher, and stays so: a
/// worker process publishes with `--exclusive` to a subscriber process;
/// while it lives, rilld refuses every other publisher (shared or
/// exclusive) with `Busy` naming its pid, also right after rilld is killed
/// and restarted (the ring's record of the holder survives, and the holder
/// resumes by itself). The subscriber gets every message exactly once.
/// Once the holder exits, the stream takes publishers again; and a stream
/// with a shared publisher refuses an exclusive one.
#[test]
fn exclusive_publisher_is_alone_across_a_restart() -> Result<()> {
    let name = "rilld_exclusive";
    let (_serial, seed, deadline) = setup(name)?;
    let mut d = Rilld::start(name, &[], deadline)?;
    let stop = d.dir.join("stop");
    let done = d.dir.join("done");
    let socket = d.socket.clone();
    let env = Env { socket: &socket, stream: "load.exclusive", seed };
    let sub_args = opts(&[("publishers", "1".into()), ("done-file", done.display().to_string())]);
    let mut sub = env.subscriber("subscriber", &sub_args, deadline)?;
    let pub_args = opts(&[("until-file", stop.display().to_string()), ("pause-every", "500".into()), ("pause-us", "500".into())]);
    let mut publ = env.publisher(0, &[pub_args, vec!["--exclusive".into()]].concat())?;
    let open = publ.wait_line("OPEN", deadline)?;
    ensure!(field(&open, "exclusive")? == "true", "the worker did not get an exclusive publisher: {open}");
    wait_progress(&mut publ, 0, "2,000 messages", deadline, |l| Ok(num_field(l, "n")? >= 2_000))?;
    let holder = publ.pid().to_string();
    let probe = |client: &Client, when: &str| -> Result<()> {
        let i = info(client, env.stream)?;
        // (Right after the restart, the holder may not have resumed yet.)
        ensure!(i.exclusive && i.publishers <= 1, "{when}: stream info does not show the exclusive publisher: {i:?}");
        for (kind, r) in [
            ("shared", refusal(client.open_publisher(env.stream, None))?),
            ("exclusive", refusal(client.open_exclusive_publisher(env.stream, None))?),
        ] {
            ensure!(r.0 == ErrorCode::Busy && r.1.contains(&holder), "{when}: {kind} publisher refused with {r:?}, not Busy naming pid {holder}");
        }
        Ok(())
    };
    probe(&d.client()?, "before the restart")?;
    d.kill9();
    d.spawn(deadline)?;
    // Refused even before the holder has resumed: the ring remembers it.
    probe(&d.client()?, "right after the restart")?;
    let from = publ.lines().len();
    wait_progress(&mut publ, from, "resumed", deadline, |l| Ok(num_field(l, "reconnects")? >= 1 && num_field(l, "handle")? != 0))?;
    probe(&d.client()?, "after the holder resumed")?;
    let n = num_field(publ.lines().iter().rev().find(|l| l.starts_with("PROGRESS")).context("no progress")?, "n")?;
    wait_progress(&mut publ, 0, "progress after the resume", deadline, |l| Ok(num_field(l, "n")? >= n + 2_000))?;
    std::fs::write(&stop, b"")?;
    let sent = summary_after_exit(&mut publ, deadline)?.num("sent")?;
    let client = d.client()?;
    wait_until(deadline, "rilld releases the exclusive publisher", || {
        let i = info(&client, env.stream)?;
        Ok(!i.exclusive && i.publishers == 0)
    })?;
    std::fs::write(&done, b"")?;
    check_all(std::slice::from_mut(&mut sub), deadline, |n, s| check_exact(n, s, &[sent]))?;
    // Free again: a shared publisher opens, and keeps an exclusive one out.
    let shared = client.open_publisher(env.stream, None).context("shared publisher after the holder exited")?;
    let (code, msg) = refusal(client.open_exclusive_publisher(env.stream, None))?;
    ensure!(code == ErrorCode::Busy && msg.contains("1 publisher"), "exclusive beside a shared publisher: {code:?} {msg}");
    drop(shared);
    client.open_exclusive_publisher(env.stream, None).context("exclusive publisher once the shared one closed")?;
    eprintln!("{name}: {sent} messages from the exclusive publisher, exactly once across a restart");
    Ok(())
}

/// An exclusive publisher killed with SIGKILL (inside its run, not at a
/// clean close) frees the stream for other publishers as soon as rilld
/// sees its socket close; until then others are refused.
#[test]
fn killed_exclusive_publisher_frees_the_stream() -> Result<()> {
    let name = "rilld_exclusive_killed";
    let (_serial, seed, deadline) = setup(name)?;
    let d = Rilld::start(name, &[], deadline)?;
    let env = Env { socket: &d.socket, stream: "load.exclusive-kill", seed };
    let stop = d.dir.join("stop");
    let mut publ = env.publisher(0, &[opts(&[("until-file", stop.display().to_string())]), vec!["--exclusive".into()]].concat())?;
    publ.wait_line("OPEN", deadline)?;
    let client = d.client()?;
    let (code, _) = refusal(client.open_publisher(env.stream, None))?;
    ensure!(code == ErrorCode::Busy, "a second publisher beside a live exclusive one: {code:?}");
    publ.kill();
    wait_until(deadline, "rilld lets another publisher in after the holder's SIGKILL", || {
        match client.open_publisher(env.stream, None) {
            Ok(_) => Ok(true),
            Err(rill::ClientError::Daemon { code: ErrorCode::Busy, .. }) => Ok(false),
            Err(e) => bail!("unexpected error while the holder dies: {e}"),
        }
    })?;
    ensure!(!info(&client, env.stream)?.exclusive, "stream still marked exclusive");
    Ok(())
}

/// rilld in a pid namespace of its own, as in a DaemonSet pod without
/// `hostPID`: its clients' pids reach it as 0 (`SO_PEERCRED` cannot name
/// them there). It tracks them by pidfd (`SO_PEERPIDFD`). An exclusive
/// publisher whose connection rilld drops while its process lives
/// (stopped with SIGSTOP past the client timeout) still holds the stream:
/// a second publisher is refused (Busy), since the first may still write.
/// Once that process is killed, the stream opens to publishers again.
/// (With pids, 0 counted as a dead process: the stream opened at once
/// beside a live exclusive publisher.)
#[test]
fn clients_in_another_pid_namespace_are_tracked_by_pidfd() -> Result<()> {
    let name = "rilld_pid_namespace";
    if !rill_tests::harness::root_or_skip(name, "needs root: rilld runs in a pid namespace of its own (unshare)")? {
        return Ok(());
    }
    let (_serial, seed, deadline) = setup(name)?;
    let d = Rilld::start_wrapped(name, &["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"], &[], deadline)?;
    let env = Env { socket: &d.socket, stream: "load.pid-namespace", seed };
    let stop = d.dir.join("stop");
    let mut publ = env.publisher(0, &[opts(&[("until-file", stop.display().to_string())]), vec!["--exclusive".into()]].concat())?;
    publ.wait_line("OPEN", deadline)?;
    let client = d.client()?;
    let (code, message) = refusal(client.open_publisher(env.stream, None))?;
    ensure!(code == ErrorCode::Busy, "a second publisher beside a live exclusive one: {code:?} {message}");
    ensure!(message.contains("pid 0"), "rilld saw the publisher's pid, so it is not in another pid namespace: {message}");
    let pid = Pid::from_raw(publ.pid() as i32);
    kill(pid, Signal::SIGSTOP)?;
    wait_until(deadline, "rilld drops the stopped publisher's connection (no heartbeat)", || Ok(d.log().contains("no heartbeat (hung client)")))?;
    let held = refusal(client.open_publisher(env.stream, None));
    let _ = kill(pid, Signal::SIGCONT);
    let (code, message) = held?;
    ensure!(code == ErrorCode::Busy, "with the exclusive publisher stopped but alive, another publisher got {code:?} {message}");
    publ.kill();
    wait_until(deadline, "rilld lets another publisher in after the holder's SIGKILL", || match client.open_publisher(env.stream, None) {
        Ok(_) => Ok(true),
        Err(rill::ClientError::Daemon { code: ErrorCode::Busy, .. }) => Ok(false),
        Err(e) => bail!("unexpected error while the holder dies: {e}"),
    })?;
    Ok(())
}

/// Waits for a PROGRESS line at index `from` or later for which `pred`
/// holds.
fn wait_progress(
    w: &mut Worker,
    from: usize,
    what: &str,
    deadline: Instant,
    mut pred: impl FnMut(&str) -> Result<bool>,
) -> Result<(usize, String)> {
    let mut failed = None;
    let r = w.wait_line_after(from, &format!("PROGRESS line with {what}"), deadline, |l| {
        l.starts_with("PROGRESS ")
            && pred(l).unwrap_or_else(|e| {
                failed.get_or_insert(e);
                true
            })
    });
    if let Some(e) = failed {
        return Err(e.context(w.name().to_owned()));
    }
    r
}

/// After the restart, the daemon knows every worker again and the stream
/// went on from where it was.
fn check_adopted(d: &Rilld, env: &Env<'_>, pubs: &[Worker], subs: &[Worker], tail_before: u64) -> Result<()> {
    let client = d.client()?;
    let i = info(&client, env.stream)?;
    ensure!(i.publishers == pubs.len() as u32, "adopted stream has {} publishers: {i:?}", i.publishers);
    for s in subs {
        ensure!(i.subscribers.iter().any(|x| x.pid == s.pid()), "{} (pid {}) is not a subscriber after the restart: {i:?}", s.name(), s.pid());
    }
    ensure!(i.tail > tail_before, "tail {} after the restart, {tail_before} before", i.tail);
    let p = client.publisher_with(env.stream, stream_options()).context("a new publisher on the adopted stream")?;
    ensure!(p.position() >= i.tail, "a new publisher sees tail {}: not the adopted ring", p.position());
    Ok(())
}

// ---------------------------------------------------------------------------
// 7. Subscribers get the ring read-only

/// The mappings of `ring` in process `pid`: (permissions, VmFlags).
fn ring_mappings(pid: u32, ino: &str) -> Result<Vec<(String, String)>> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for l in smaps.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() >= 5 && f[0].contains('-') && f[0].chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            current = (f[4] == ino).then(|| f[1].to_owned());
        } else if let (Some(perms), Some(flags)) = (&current, l.strip_prefix("VmFlags:")) {
            out.push((perms.clone(), flags.trim().to_owned()));
        }
    }
    Ok(out)
}

/// A subscriber process is handed the ring read-only. In that process,
/// without unsafe code: (a) /proc/self/maps shows the ring file mapped
/// `r--s`, and smaps' VmFlags lack both `wr` and `mw` (so mprotect could
/// not make it writable either: the fd was opened read-only); (b) writing
/// into it through /proc/self/mem fails, while the same route works on the
/// process's own heap; (c) rill-shm refuses it a publication (ReadOnly).
/// The publisher's mapping of the same file, as a control, is `rw-s`.
#[test]
fn subscriber_cannot_write_the_ring() -> Result<()> {
    let name = "rilld_read_only";
    let (_serial, seed, deadline) = setup(name)?;
    let d = Rilld::start(name, &[], deadline)?;
    let stop = d.dir.join("stop");
    let done = d.dir.join("done");
    let env = Env { socket: &d.socket, stream: "ro.check", seed };
    let mut args = opts(&[("publishers", "1".into()), ("done-file", done.display().to_string())]);
    args.push("--ro-checks".into());
    let mut sub = env.subscriber("subscriber", &args, deadline)?;
    let ro = sub.lines().iter().find(|l| l.starts_with("ROCHECK")).cloned().context("no ROCHECK line")?;
    eprintln!("{name}: subscriber process: {ro}");
    ensure!(field(&ro, "ring_read_only")? == "true", "{ro}");
    let memfd = format!("/memfd:{}_(deleted)", env.stream);
    ensure!(field(&ro, "ring_path")? == memfd, "mapped {}, expected the memfd {memfd}", field(&ro, "ring_path")?);
    let ring_ino = field(&ro, "ring_ino")?;
    ensure!(field(&ro, "ring_perms")? == "r--s", "(a) the subscriber's ring mapping is not r--s: {ro}");
    let flags: Vec<&str> = field(&ro, "ring_vmflags")?.split('_').collect();
    // A MAP_SHARED mapping of a read-only fd keeps only "ms" (may share):
    // the kernel drops VM_SHARED and VM_MAYWRITE for it.
    ensure!(flags.contains(&"rd") && flags.contains(&"ms"), "(a) VmFlags {flags:?}");
    ensure!(!flags.contains(&"wr") && !flags.contains(&"mw"), "(a) the ring mapping is or may become writable: VmFlags {flags:?}");
    ensure!(field(&ro, "mem_control")? == "ok", "(b) control: /proc/self/mem could not write the heap: {ro}");
    ensure!(field(&ro, "mem_write")?.starts_with("refused:"), "(b) /proc/self/mem wrote into the ring: {ro}");
    for key in ["shared_pub", "exclusive_pub", "slot_subscribe"] {
        ensure!(field(&ro, key)? == "ReadOnly", "(c) {key} on the subscriber's ring: {ro}");
    }
    let mut publ = env.publisher(0, &opts(&[("until-file", stop.display().to_string()), ("pause-every", "100".into()), ("pause-us", "100".into())]))?;
    wait_progress(&mut publ, 0, "1,000 messages", deadline, |l| Ok(num_field(l, "n")? >= 1_000))?;
    let control = ring_mappings(publ.pid(), ring_ino)?;
    eprintln!("{name}: publisher process maps the ring as {control:?}");
    ensure!(
        control.len() == 1 && control[0].0 == "rw-s" && control[0].1.split(' ').any(|f| f == "mw"),
        "control: the publisher's ring mapping should be rw-s and may-write: {control:?}"
    );
    let from_test = ring_mappings(sub.pid(), ring_ino)?;
    ensure!(from_test.iter().all(|(p, _)| p == "r--s"), "the subscriber's mappings seen from outside: {from_test:?}");
    std::fs::write(&stop, b"")?;
    let sent = summary_after_exit(&mut publ, deadline)?.num("sent")?;
    std::fs::write(&done, b"")?;
    check_all(std::slice::from_mut(&mut sub), deadline, |n, s| check_exact(n, s, &[sent]))?;
    eprintln!("{name}: (d) reopening /proc/self/fd/N of the ring read-write as root: {}", field(&ro, "reopen_rw")?);
    Ok(())
}

// ---------------------------------------------------------------------------
// SIGTERM

/// SIGTERM while a client is connected: rilld exits with status 0, removes
/// its socket file, and leaves the ring with its keeper for the next
/// daemon; the client notices the connection is gone.
#[test]
fn sigterm_exits_zero_and_removes_the_socket() -> Result<()> {
    let name = "rilld_sigterm";
    let (_serial, seed, deadline) = setup(name)?;
    let mut d = Rilld::start(name, &[], deadline)?;
    let socket = d.socket.clone();
    let env = Env { socket: &socket, stream: "term.test", seed };
    let args = opts(&[("publishers", "1".into()), ("done-file", d.dir.join("never").display().to_string())]);
    let mut sub = env.subscriber("subscriber", &args, deadline)?;
    wait_progress(&mut sub, 0, "connected=true", deadline, |l| Ok(field(l, "connected")? == "true"))?;
    ensure!(d.socket.exists(), "no socket file before SIGTERM");
    // rilld hands a new ring to the keeper as it creates it; the keeper,
    // a process of its own, takes it in a moment later.
    while d.keeper_memfds(env.stream)? == 0 {
        ensure!(Instant::now() < deadline, "watchdog: the ring keeper never held a memfd of {}", env.stream);
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(Pid::from_raw(d.pid() as i32), Signal::SIGTERM)?;
    let status = d.process().wait_exit(deadline)?;
    ensure!(status.code() == Some(0), "rilld exited with {status} after SIGTERM; log:\n{}", d.log());
    ensure!(!d.socket.exists(), "rilld left its socket file {} behind", d.socket.display());
    ensure!(d.keeper_memfds(env.stream)? > 0, "the ring keeper let the ring go, which the next daemon should adopt");
    let from = sub.lines().len();
    wait_progress(&mut sub, from, "connected=false", deadline, |l| Ok(field(l, "connected")? == "false"))?;
    ensure!(sub.try_exited()?.is_none(), "the subscriber died with the daemon: {}", sub.stderr());
    Ok(())
}

/// The ring keeper killed (`kill -9`) while rilld runs: rilld notices,
/// starts a new keeper and hands it every ring. A `kill -9` of rilld after
/// that loses nothing: the new rilld takes the ring back from the new
/// keeper (same tail), and the publisher and subscriber of this process
/// resume on it and carry on, every message once and in order.
#[test]
fn a_killed_ring_keeper_is_replaced_and_rings_survive_a_restart() -> Result<()> {
    use rill::Start;
    let name = "rilld_keeper_replaced";
    let (_serial, _seed, deadline) = setup(name)?;
    let mut d = Rilld::start(name, &[], deadline)?;
    let stream = "keeper.replaced";
    let client = d.client()?;
    let options = StreamOptions::new().with_capacity(CAPACITY).with_max_message_len(MAX_LEN as u32);
    let mut sub = client.subscriber_with(stream, Start::Latest, options)?;
    let mut publ = client.publisher(stream)?;
    let mut got = 0u32;
    let mut exchange = |publ: &mut rill::Publisher, sub: &mut rill::Subscriber, to: u32, what: &str| -> Result<()> {
        let mut sent = got;
        while got < to {
            ensure!(Instant::now() < deadline, "watchdog: {what}: read {got} of {to}");
            while sent < to && publ.offer(&sent.to_le_bytes()).is_ok() {
                sent += 1;
            }
            let mut bad = None;
            sub.poll_blocking(64, Duration::from_millis(10), |m| {
                if m.payload == got.to_le_bytes() {
                    got += 1;
                } else {
                    bad.get_or_insert_with(|| format!("{:?} where {got} was due", m.payload));
                }
            })?;
            ensure!(bad.is_none(), "{what}: {}", bad.unwrap_or_default());
        }
        Ok(())
    };
    exchange(&mut publ, &mut sub, 100, "before the keeper is killed")?;
    let first = d.keeper_pid()?;
    kill(Pid::from_raw(first as i32), Signal::SIGKILL)?;
    wait_until(deadline, "a new ring keeper holding the stream", || {
        Ok(d.keeper_pid().is_ok_and(|p| p != first) && d.keeper_memfds(stream).unwrap_or(0) >= 4)
    })?;
    exchange(&mut publ, &mut sub, 200, "with the new keeper")?;
    let tail = client.stream_info(stream)?.tail;
    d.kill9();
    d.spawn(deadline)?;
    let after = d.client()?.stream_info(stream).with_context(|| format!("the stream after the restart; rilld's log:\n{}", d.log()))?;
    ensure!(after.tail == tail, "the restarted rilld's {stream} has tail {}, not {tail}: not the ring it left", after.tail);
    exchange(&mut publ, &mut sub, 300, "after rilld's restart")?;
    d.ensure_alive()
}

// ---------------------------------------------------------------------------
// 7. A subscriber that heartbeats but never reads

/// A subscriber whose client heartbeats (its process lives and its
/// connection is fine) but never polls holds every publisher of a
/// back-pressure stream back a whole ring behind. Past `--stall-limit-ms`
/// rilld revokes its slot: the publisher goes on, `reaped_subscribers`
/// (shown by `rill streams`) counts it, and its next poll says it was
/// revoked. The other subscriber, which reads, keeps its slot.
#[test]
fn subscriber_that_never_reads_is_revoked_after_the_stall_limit() -> Result<()> {
    use rill::{PollError, Start};
    let name = "rilld_stalled_subscriber";
    let (_serial, _seed, deadline) = setup(name)?;
    let d = Rilld::start(name, &opts(&[("stall-limit-ms", "1500".into())]), deadline)?;
    let stream = "load.stalled-sub";
    let options = StreamOptions::new().with_capacity(CAPACITY).with_max_message_len(MAX_LEN as u32);
    let stalled_client = d.client()?;
    let mut stalled = stalled_client.subscriber_with(stream, Start::Latest, options.clone())?;
    let slow_client = d.client()?;
    let mut slow = slow_client.subscriber_with(stream, Start::Latest, options.clone())?;
    let client = d.client()?;
    let mut publ = client.publisher_with(stream, options)?;
    let payload = [7u8; 1000];
    let mut sent = 0u64;
    // Fill the ring: both subscribers hold the publisher back.
    while publ.offer(&payload).is_ok() {
        sent += 1;
    }
    ensure!(sent > 0 && info(&client, stream)?.reaped_subscribers == 0);
    // The slow subscriber reads a message now and then; the stalled one
    // never polls.
    let mut read = 0u64;
    let revoked_at = loop {
        ensure!(Instant::now() < deadline, "the stalled subscriber was never revoked (sent {sent}, slow read {read})");
        read += slow.poll(1, |_| {})? as u64;
        match publ.offer(&payload) {
            Ok(_) => sent += 1,
            Err(rill::ClaimError::BackPressured) => {}
            Err(e) => return Err(e.into()),
        }
        let i = info(&client, stream)?;
        if i.reaped_subscribers > 0 {
            break i;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ensure!(revoked_at.reaped_subscribers == 1, "more than the stalled subscriber revoked: {revoked_at:?}");
    ensure!(revoked_at.subscribers.len() == 1, "the subscriber that reads lost its slot too: {revoked_at:?}");
    // Only the slow subscriber holds the publisher back now: with it
    // reading along, two rings' worth more go through (a bounded amount:
    // the publisher never outruns it), and it reads every one.
    let more = sent + 2 * CAPACITY / payload.len() as u64;
    while read < more {
        read += slow.poll(64, |_| {})? as u64;
        while sent < more && publ.offer(&payload).is_ok() {
            sent += 1;
        }
        ensure!(Instant::now() < deadline, "watchdog: the slow subscriber stopped at {read} of {sent} (want {more})");
    }
    ensure!(read == sent, "the slow subscriber read {read} of {sent}");
    // The stalled one is told at its next poll.
    let told = match stalled.poll(64, |_| {}) {
        Ok(n) => bail!("the revoked subscriber was handed {n} messages, not told it was revoked"),
        Err(e) => e,
    };
    ensure!(matches!(told, PollError::Revoked { .. } | PollError::RevokedDuringRead { .. }), "the revoked subscriber was told {told:?}");
    let log = d.log();
    ensure!(log.contains("without moving for the stall limit; slot revoked"), "rilld did not log the revoke:\n{log}");
    Ok(())
}
