//! What one client, or one uid, may take of a host's rilld (issue #11,
//! defects 5 and 7), attacked against real `rilld` processes: connections
//! past `limits.connections_per_uid` are refused with a message naming the
//! limit while other uids go on; connections that say nothing are dropped
//! after the client timeout; streams past the stream, ring-byte and
//! persisted-stream limits are refused, naming the limit, and nothing else
//! changes; listing and describing streams needs a Hello and shows a uid
//! only the streams it may use, a page at a time past one reply's size.
//!
//! The hostile side is this test process (root) speaking the protocol by
//! hand; the honest side is the `rill` CLI (built on demand:
//! `rill_tests::workspace_bin`; `RILL_CLI=/path/to/rill` skips the build)
//! running as uid 65534. Every wait has a watchdog that turns a hang into
//! a failure; no test asserts how long anything took. Needs root (a
//! client of another uid); elsewhere it fails unless
//! `RILL_SKIP_ROOT_TESTS=1`.
//!
//! `cargo test --release -p rill-tests --test limits`.

#![forbid(unsafe_code)]

use anyhow::{bail, ensure, Context, Result};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use rill::protocol::{self, ErrorCode, Request, Response};
use rill::{Client, ClientError, StreamOptions};
use rill_tests::daemon::{rilld_bin, Rilld};
use rill_tests::harness::{root_or_skip, wait_until, Worker};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The uid of the honest client.
const OTHER_UID: u32 = 65534;

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(if cfg!(debug_assertions) { 900 } else { 300 })
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The serial lock and the binaries, or `None` if not root (and told to
/// skip).
fn setup(name: &str) -> Result<Option<MutexGuard<'static, ()>>> {
    if !root_or_skip(name, "needs root: it runs the rill CLI as uid 65534")? {
        return Ok(None);
    }
    let serial = serial();
    rilld_bin()?;
    rill_cli()?;
    Ok(Some(serial))
}

fn rill_cli() -> Result<PathBuf> {
    rill_tests::workspace_bin("rill-tools", "rill", "RILL_CLI")
}

/// A rilld with `config` (TOML) as its configuration file.
fn start(name: &str, config: &str, deadline: Instant) -> Result<Rilld> {
    let file = std::env::temp_dir().join(format!("rill-{name}-{}.toml", std::process::id()));
    std::fs::write(&file, config)?;
    let d = Rilld::start(name, &["--config".into(), file.display().to_string()], deadline);
    let _ = std::fs::remove_file(&file);
    d
}

/// Runs `rill args...` as uid 65534 with `input` on stdin, until it exits.
fn rill_as_other(socket: &Path, args: &[&str], input: &[&str], deadline: Instant) -> Result<(ExitStatus, Worker)> {
    let mut cmd = Command::new(rill_cli()?);
    cmd.arg("--socket").arg(socket).args(args).uid(OTHER_UID).gid(OTHER_UID).env("NO_COLOR", "1");
    let (mut w, mut stdin) = Worker::spawn_with_stdin(cmd, &format!("rill {} (uid {OTHER_UID})", args.join(" ")))?;
    for line in input {
        writeln!(stdin, "{line}")?;
    }
    drop(stdin);
    let status = w.wait_exit(deadline)?;
    Ok((status, w))
}

/// A raw connection of this (root) process.
struct Raw {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Raw {
    fn connect(socket: &Path) -> Result<Raw> {
        let fd = rill::wire::connect(socket).context("connect")?;
        let tv = TimeVal::new(30, 0);
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv)?;
        setsockopt(&fd, sockopt::SendTimeout, &tv)?;
        Ok(Raw { fd, buf: Vec::new() })
    }

    /// Sends `req` (a send that fails because rilld closed the connection
    /// is left for the receive to explain) and reads the reply.
    fn call(&mut self, req: &Request) -> Result<Response> {
        let _ = rill::wire::send(self.fd.as_fd(), &protocol::encode_request(req)?, &[]);
        self.recv()
    }

    fn recv(&mut self) -> Result<Response> {
        let got = rill::wire::recv(self.fd.as_fd(), &mut self.buf).context("no reply")?;
        Ok(protocol::decode_response(&got.bytes)?)
    }

    fn hello(&mut self) -> Result<Response> {
        self.call(&Request::Hello { client_name: "limits-test".into() })
    }
}

fn is_error(r: &Response, code: ErrorCode, words: &[&str]) -> bool {
    matches!(r, Response::Error { code: c, message } if *c == code && words.iter().all(|w| message.contains(w)))
}

// ---------------------------------------------------------------------------
// Connections

/// Root opens connections until rilld refuses one: it accepts exactly
/// `connections_per_uid`, and the next one's Hello is answered with
/// `Limit` naming `limits.connections_per_uid`. Meanwhile uid 65534's
/// `rill streams` and `rill health` work. The connections that said
/// nothing since their Hello are dropped after the client timeout
/// (`DAEMON_FLAGS`: 5 s), and then root may connect again.
#[test]
fn connections_past_the_per_uid_limit_are_refused_and_silent_ones_dropped() -> Result<()> {
    let name = "limits_connections";
    let Some(_serial) = setup(name)? else { return Ok(()) };
    let deadline = deadline();
    const PER_UID: usize = 12;
    let config = format!("[limits]\nconnections_per_uid = {PER_UID}\n\n[[allow]]\nuids = [{OTHER_UID}]\nsubscribe = [\"\"]\n");
    let mut d = start(name, &config, deadline)?;
    let mut held = Vec::new();
    for n in 0..PER_UID {
        let mut c = Raw::connect(&d.socket)?;
        let r = c.hello().with_context(|| format!("Hello on connection {}", n + 1))?;
        ensure!(matches!(r, Response::Hello { .. }), "connection {} of {PER_UID} was answered {r:?}", n + 1);
        held.push(c);
    }
    let mut over = Raw::connect(&d.socket)?;
    let r = over.hello()?;
    ensure!(
        is_error(&r, ErrorCode::Limit, &["limits.connections_per_uid", &PER_UID.to_string(), "uid 0"]),
        "connection {} of uid 0 was answered {r:?}, not a Limit refusal naming limits.connections_per_uid",
        PER_UID + 1
    );
    drop(over);

    // Another uid is unaffected.
    for args in [&["health"][..], &["streams"][..]] {
        let (status, w) = rill_as_other(&d.socket, args, &[], deadline)?;
        ensure!(status.success(), "rill {} as uid {OTHER_UID} while uid 0 is at its limit: {status}: {}", args[0], w.stderr());
    }

    // The held connections say nothing more: rilld drops them.
    for (n, c) in held.iter_mut().enumerate() {
        match rill::wire::recv(c.fd.as_fd(), &mut c.buf) {
            Err(rill::wire::WireError::Closed) => {}
            other => bail!("silent connection {}: {other:?}, not closed by rilld", n + 1),
        }
    }
    wait_until(deadline, "uid 0 may connect again", || Ok(matches!(Raw::connect(&d.socket)?.hello()?, Response::Hello { .. })))?;
    let log = d.log();
    ensure!(log.contains("connection refused") && log.contains("limits.connections_per_uid"), "rilld did not log the refusal:\n{log}");
    d.ensure_alive()
}

// ---------------------------------------------------------------------------
// Streams

fn create(client: &Client, name: &str, options: StreamOptions) -> std::result::Result<(), ClientError> {
    client.create_stream(name, options).map(|_| ())
}

fn refused_by(result: std::result::Result<(), ClientError>, limit: &str, what: &str) -> Result<()> {
    match result {
        Err(ClientError::Daemon { code: ErrorCode::Limit, message }) if message.contains(&format!("limits.{limit} ")) => Ok(()),
        other => bail!("{what}: {other:?}, not refused by limits.{limit}"),
    }
}

/// Root (whom limits bind too) creates streams up to each limit, and one
/// more is refused naming that limit: a ring larger than
/// `stream_bytes`, a stream past `streams_per_uid`, rings past
/// `ring_bytes_per_uid`, a persisted stream past
/// `persisted_streams_per_uid`. Nothing was created by a refusal. Uid
/// 65534 still creates its own stream (`rill pub --keep`), and past the
/// total `streams` limit it is refused too, naming it.
#[test]
fn streams_past_a_limit_are_refused_naming_it() -> Result<()> {
    let name = "limits_streams";
    let Some(_serial) = setup(name)? else { return Ok(()) };
    let deadline = deadline();
    let config = format!(
        "[limits]\nstreams = 6\nstreams_per_uid = 4\nstream_bytes = {}\nring_bytes_per_uid = {}\npersisted_streams_per_uid = 1\n\n\
         [[allow]]\nuids = [{OTHER_UID}]\npublish = [\"other.\"]\nsubscribe = [\"other.\"]\n",
        1 << 20,
        (1 << 20) + (256 << 10),
    );
    let mut d = start(name, &config, deadline)?;
    let client = d.client()?;
    let small = || StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_keep(true);
    refused_by(create(&client, "big", small().with_capacity(2 << 20)), "stream_bytes", "a 2 MiB ring")?;
    create(&client, "one", small().with_capacity(1 << 20))?;
    refused_by(create(&client, "two", small().with_capacity(512 << 10)), "ring_bytes_per_uid", "a second ring past the uid's bytes")?;
    create(&client, "two", small().with_persist(Some(rill::Durability::Always)))?;
    refused_by(create(&client, "three", small().with_persist(Some(rill::Durability::Always))), "persisted_streams_per_uid", "a second persisted stream")?;
    create(&client, "three", small())?;
    create(&client, "four", small())?;
    refused_by(create(&client, "five", small()), "streams_per_uid", "a fifth stream of uid 0")?;
    let names: Vec<String> = client.streams()?.into_iter().map(|s| s.name).collect();
    ensure!(names == ["four", "one", "three", "two"], "after the refusals uid 0 has {names:?}");

    // Another uid's count is its own.
    let (status, w) = rill_as_other(&d.socket, &["pub", "other.a", "--keep", "--capacity", "64KiB"], &["hello"], deadline)?;
    ensure!(status.success(), "rill pub other.a as uid {OTHER_UID}: {status}: {}", w.stderr());
    let (status, w) = rill_as_other(&d.socket, &["pub", "other.b", "--keep", "--capacity", "64KiB"], &["hello"], deadline)?;
    ensure!(status.success(), "rill pub other.b as uid {OTHER_UID}: {status}: {}", w.stderr());
    // Six streams exist now: the total.
    let (status, w) = rill_as_other(&d.socket, &["pub", "other.c", "--keep", "--capacity", "64KiB"], &["hello"], deadline)?;
    ensure!(!status.success() && w.stderr().contains("limits.streams "), "rill pub other.c past limits.streams: {status}: {}", w.stderr());
    ensure!(client.streams()?.len() == 6, "a refused stream was created: {:?}", client.streams()?);
    d.ensure_alive()
}

// ---------------------------------------------------------------------------
// Listing

/// Uid 65534 may use "public." streams only. Root creates 600 of them,
/// with long names (together more than one reply holds), and one
/// "secret." stream. `rill streams`
/// as uid 65534 lists every public stream and not the secret one; asking
/// to subscribe to the secret stream is refused just as for one that does
/// not exist (nothing tells that it exists); and without a Hello, listing,
/// describing and health are refused.
#[test]
fn a_uid_lists_only_the_streams_it_may_use_a_page_at_a_time() -> Result<()> {
    let name = "limits_listing";
    let Some(_serial) = setup(name)? else { return Ok(()) };
    let deadline = deadline();
    const PUBLIC: usize = 600;
    let public = |n: usize| format!("public.{n:04}.{}", "x".repeat(150));
    let config = format!("[limits]\nstreams_per_uid = 1000\nstreams = 1000\n\n[[allow]]\nuids = [{OTHER_UID}]\nsubscribe = [\"public.\"]\n");
    let mut d = start(name, &config, deadline)?;
    let client = d.client()?;
    let options = || StreamOptions::new().with_capacity(64 << 10).with_max_message_len(1024).with_keep(true);
    for n in 0..PUBLIC {
        create(&client, &public(n), options())?;
    }
    create(&client, "secret.plans", options())?;
    let all = client.streams()?;
    ensure!(all.len() == PUBLIC + 1, "root lists {} streams, not {}", all.len(), PUBLIC + 1);
    // (Encoding refuses a message over the limit.)
    let one_reply = protocol::encode_response(&Response::Streams { streams: all }).map(|b| b.len());
    ensure!(one_reply.is_err(), "the test needs more streams than one reply holds ({one_reply:?} bytes)");

    let (status, w) = rill_as_other(&d.socket, &["streams"], &[], deadline)?;
    ensure!(status.success(), "rill streams as uid {OTHER_UID}: {status}: {}", w.stderr());
    let table = w.lines().join("\n");
    let missing: Vec<String> = (0..PUBLIC).map(public).filter(|s| !table.contains(s.as_str())).collect();
    ensure!(missing.is_empty(), "rill streams as uid {OTHER_UID} misses {} public streams, e.g. {:?}", missing.len(), missing.first());
    ensure!(!table.contains("secret"), "uid {OTHER_UID} sees the secret stream:\n{table}");

    // The same refusal whether the stream exists or not.
    let info = |stream: &str| -> Result<String> {
        let (status, w) = rill_as_other(&d.socket, &["tail", stream, "--count", "1"], &[], deadline)?;
        ensure!(!status.success(), "rill tail {stream} as uid {OTHER_UID} succeeded");
        Ok(w.stderr())
    };
    let secret = info("secret.plans")?;
    let missing = info("secret.nothing")?;
    ensure!(secret.contains("may not") && missing.contains("may not"), "refusals: {secret:?} / {missing:?}");

    // Without Hello.
    let mut raw = Raw::connect(&d.socket)?;
    for req in [Request::ListStreams, Request::ListStreamsPage { after: None }, Request::StreamInfo { stream: public(0) }, Request::Health] {
        let r = raw.call(&req)?;
        ensure!(is_error(&r, ErrorCode::NoHello, &[]), "{req:?} without Hello: {r:?}");
    }
    // The old single reply refuses rather than cut the list short.
    ensure!(matches!(raw.hello()?, Response::Hello { .. }));
    let r = raw.call(&Request::ListStreams)?;
    ensure!(is_error(&r, ErrorCode::Invalid, &["ListStreamsPage"]), "ListStreams of {} streams: {r:?}", PUBLIC + 1);
    d.ensure_alive()
}
