//! The commands: each connects, does one job, and returns.

use crate::format;
use crate::PolicyArg;
use anyhow::{bail, Context};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use rill::{ClaimError, Client, DurableError, Durability, ErrorCode, Message, Policy, Start, StreamOptions};
use std::io::{BufRead, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where and how to reach the daemon.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    pub(crate) socket: Option<PathBuf>,
    pub(crate) timeout: Duration,
}

impl Connection {
    fn client(&self) -> Result<Client, rill::ClientError> {
        let mut b = Client::builder().request_timeout(self.timeout);
        if let Some(s) = &self.socket {
            b = b.socket(s);
        }
        b.connect()
    }
}

/// `rill health`: yes or no, and why; 0 or 1.
pub(crate) fn health(conn: &Connection) -> ExitCode {
    match conn.client().and_then(|c| c.health()) {
        Ok(h) if h.healthy => {
            println!("yes ({})", h.detail);
            ExitCode::SUCCESS
        }
        Ok(h) => {
            println!("no ({})", h.detail);
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("no ({e})");
            ExitCode::FAILURE
        }
    }
}

/// `rill streams`: the table.
pub(crate) fn streams(conn: &Connection) -> anyhow::Result<()> {
    let streams = conn.client()?.streams()?;
    if streams.is_empty() {
        println!("no streams");
    } else {
        print!("{}", format::streams_table(&streams));
    }
    Ok(())
}

/// The options `rill pub` creates a stream with, checked.
pub(crate) fn pub_options(
    capacity: u64,
    policy: PolicyArg,
    max_message_len: Option<u64>,
    keep: bool,
    persist: Option<Durability>,
) -> anyhow::Result<StreamOptions> {
    // A frame may take at most a quarter of the ring, header included.
    let fits = (capacity / 4).saturating_sub(rill_shm::frame::HEADER_LEN as u64);
    let max_message_len = max_message_len.unwrap_or_else(|| u64::from(rill::options::DEFAULT_MAX_MESSAGE_LEN).min(fits).max(1));
    let max_message_len = u32::try_from(max_message_len).context("--max-message-len is over 4 GiB")?;
    let policy = match policy {
        PolicyArg::BackPressure => Policy::BackPressure,
        PolicyArg::Overwrite => Policy::Overwrite,
    };
    Ok(StreamOptions::default()
        .with_capacity(capacity)
        .with_max_message_len(max_message_len)
        .with_policy(policy)
        .with_keep(keep)
        .with_persist(persist))
}

/// When `rill pub` waits for durability (persisted streams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitDurable {
    /// Each line durable before the next is read (`--wait-durable`).
    EachLine,
    /// The last line durable before exit (the default).
    AtExit,
    /// Never (`--no-wait-at-exit`).
    Never,
}

/// `rill pub NAME`: one message per stdin line, newline stripped; on a
/// persisted stream, each line durable before the next is read, or the
/// last one before exit, as `wait` says.
pub(crate) fn publish(conn: &Connection, name: &str, options: StreamOptions, wait: WaitDurable) -> anyhow::Result<()> {
    let wait_durable = wait == WaitDurable::EachLine;
    let client = conn.client()?;
    let mut publisher = client.publisher_with(name, options.clone())?;
    let info = publisher.info();
    let persist_differs = options.persist.is_some() && info.persist != options.persist;
    if (info.capacity, info.policy, info.max_message_len) != (options.capacity, options.policy, options.max_message_len) || persist_differs {
        eprintln!(
            "rill: stream {name} exists with capacity {}, max message {}, policy {:?}, {}; publishing to it as it is",
            format::bytes(info.capacity),
            format::bytes(u64::from(info.max_message_len)),
            info.policy,
            info.persist.map_or_else(|| "not persisted".to_owned(), |d| format!("persisted ({d})")),
        );
    }
    if wait_durable && info.persist.is_none() {
        bail!("stream {name} is not persisted: nothing would ever be durable (--persist creates a stream persisted)");
    }
    let mut stdin = std::io::stdin().lock();
    let mut line = Vec::new();
    let mut count = 0u64;
    let mut last = None;
    loop {
        line.clear();
        if stdin.read_until(b'\n', &mut line).context("reading stdin")? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if line.len() > publisher.max_message_len() {
            bail!(
                "line {} is {} bytes; stream {name} takes at most {} (published {count} lines before it)",
                count + 1,
                line.len(),
                publisher.max_message_len()
            );
        }
        let position = offer_waiting(&mut publisher, name, &line)?;
        count += 1;
        last = Some(position);
        if wait_durable {
            wait_until_durable(&client, &publisher, name, position, count)?;
        }
    }
    if let (WaitDurable::AtExit, Some(position), Some(_)) = (wait, last, publisher.info().persist) {
        let started = std::time::Instant::now();
        wait_until_durable(&client, &publisher, name, position, count)?;
        let waited = started.elapsed();
        if waited >= Duration::from_millis(500) {
            eprintln!("rill: waited {:.1} s for the last line to be durable", waited.as_secs_f64());
        }
    }
    eprintln!("rill: published {count} message{} to {name}", if count == 1 { "" } else { "s" });
    Ok(())
}

/// Offers, waiting as long as it takes while back-pressured (saying so once).
fn offer_waiting(publisher: &mut rill::Publisher, name: &str, payload: &[u8]) -> anyhow::Result<u64> {
    let mut said = false;
    loop {
        match publisher.offer_blocking(payload, Duration::from_secs(1)) {
            Ok(position) => return Ok(position),
            Err(ClaimError::TimedOut) if !said => {
                eprintln!("rill: back-pressured: a subscriber of {name} is a whole ring behind; waiting for it");
                said = true;
            }
            Err(ClaimError::TimedOut) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits as long as it takes until the message at `position` (line
/// `line`) is durable; fails if archiving of the stream stopped on an
/// error. While rilld is down it keeps waiting: a restarted daemon
/// archives what the ring holds.
fn wait_until_durable(client: &Client, publisher: &rill::Publisher, name: &str, position: u64, line: u64) -> anyhow::Result<()> {
    loop {
        match publisher.wait_durable(position, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(DurableError::TimedOut { durable, .. }) => {
                if let Some(error) = client.stream_info(name).ok().and_then(|i| i.archive_error) {
                    bail!("line {line} is not durable (durable up to position {durable}): archiving of {name} stopped: {error}");
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `rill tail NAME`: prints messages until a signal or `count`.
pub(crate) fn tail(
    conn: &Connection,
    name: &str,
    start: Start,
    count: Option<u64>,
    positions: bool,
    create: bool,
) -> anyhow::Result<()> {
    // Before any thread starts, so every thread inherits the blocked mask
    // and only the signal thread takes SIGINT/SIGTERM.
    let stop = stop_on_signals()?;
    let client = conn.client()?;
    let mut sub = match client.open_subscriber(name, start, create.then(StreamOptions::default)) {
        Ok(s) => s,
        Err(e) if e.code() == Some(ErrorCode::UnknownStream) => {
            bail!("{e} (no publisher has created it yet; --create makes it with default options)")
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut seen = 0u64;
    let mut failed: Option<std::io::Error> = None;
    while !stop.load(Ordering::Relaxed) && count.is_none_or(|c| seen < c) {
        let limit = count.map_or(256, |c| (c - seen).min(256) as usize);
        let got = sub.poll_blocking(limit, Duration::from_millis(100), |m| {
            seen += 1;
            if failed.is_none() {
                failed = print_message(&mut out, &m, positions).err();
            }
        })?;
        if got == 0 && stdout_closed() {
            return Ok(()); // `rill tail x | head -3` once head is gone
        }
        if failed.is_none() {
            failed = out.flush().err();
        }
        match failed.take() {
            None => {}
            // `rill tail x | head` closed the pipe: done, not an error.
            Some(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Some(e) => return Err(anyhow::Error::new(e).context("writing to stdout")),
        }
    }
    if sub.overrun_bytes() > 0 {
        eprintln!("rill: {} of {name} were overwritten before they could be read", format::bytes(sub.overrun_bytes()));
    }
    Ok(())
}

fn print_message(out: &mut impl Write, m: &Message<'_>, positions: bool) -> std::io::Result<()> {
    if positions {
        write!(out, "{}\t", m.position)?;
    }
    writeln!(out, "{}", String::from_utf8_lossy(m.payload))
}

/// Whether stdout is a pipe whose reader has gone (so the next write would
/// fail with EPIPE). Lets an idle tail notice before it has anything to
/// write.
fn stdout_closed() -> bool {
    let stdout = std::io::stdout();
    let mut fds = [PollFd::new(stdout.as_fd(), PollFlags::empty())];
    let ready = nix::poll::poll(&mut fds, PollTimeout::ZERO).unwrap_or(0);
    ready > 0 && fds[0].revents().is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP))
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread
/// started after), and waits for them in a thread of their own, which sets
/// the returned flag.
fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block().context("blocking signals")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("rill-signals".into())
        .spawn(move || {
            if set.wait().is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        })
        .context("starting the signal thread")?;
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_options_map_the_flags() {
        let o = pub_options(1 << 16, PolicyArg::Overwrite, Some(512), true, None).unwrap();
        assert_eq!(o, StreamOptions { capacity: 1 << 16, max_message_len: 512, policy: Policy::Overwrite, keep: true, persist: None });
        assert!(pub_options(1 << 16, PolicyArg::BackPressure, Some(1 << 33), false, None).is_err());
        assert_eq!(pub_options(4 << 20, PolicyArg::BackPressure, None, false, None).unwrap().max_message_len, 64 << 10);
        assert_eq!(pub_options(1 << 16, PolicyArg::BackPressure, None, false, None).unwrap().max_message_len, (1 << 14) - 32);
        let o = pub_options(1 << 16, PolicyArg::BackPressure, None, false, Some(Durability::IntervalMs(20))).unwrap();
        assert_eq!(o.persist, Some(Durability::IntervalMs(20)));
        // Persisted overwrite: publishers wait for the archiver only.
        let o = pub_options(1 << 16, PolicyArg::Overwrite, None, false, Some(Durability::Always)).unwrap();
        assert_eq!((o.policy, o.persist), (Policy::Overwrite, Some(Durability::Always)));
    }

    #[test]
    fn messages_print_lossy_with_optional_positions() {
        let m = Message { payload: b"caf\xc3\xa9 \xff", position: 96, timestamp_ns: 0, publisher_id: 1, flags: 0 };
        let mut out = Vec::new();
        print_message(&mut out, &m, true).unwrap();
        print_message(&mut out, &m, false).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "96\tcafé \u{fffd}\ncafé \u{fffd}\n");
    }

    #[test]
    fn an_unreachable_daemon_is_unhealthy() {
        let conn = Connection { socket: Some("/nonexistent/rilld.sock".into()), timeout: Duration::from_secs(1) };
        assert_eq!(health(&conn), ExitCode::FAILURE);
    }
}
