//! Round trips over the kernel's byte streams, for comparison with Rill:
//!
//! * `uds`: a Unix stream socket. A listens on a path in a fresh temporary
//!   directory; B connects.
//! * `tcp`: loopback TCP, `TCP_NODELAY` on both ends. A listens on an
//!   ephemeral port of 127.0.0.1; B connects.
//! * `pipe`: two FIFOs made with mkfifo in a fresh temporary directory,
//!   ping (A to B) and pong (B to A).
//!
//! Each message is `size` bytes, the first 8 a sequence number, as on the
//! rings. B announces itself with one message, then echoes every message
//! back. Both sides read with blocking `read_exact` and write with
//! `write_all`, so each sleeps in the kernel until the other's message is
//! there: compare with `floor-futex`, the bare cost of those wake-ups.
//!
//! A peer that dies closes its ends, so the other side's read sees the end
//! of the stream (or its write fails with EPIPE) and it fails. Sockets
//! also carry a read timeout of [`STALL_TIMEOUT`] against a peer that hangs
//! alive (it costs a timer armed per sleep, tens of ns). Pipes have none:
//! std offers none for them, and a `poll` before each read would add a
//! system call to what is measured; a hung, live peer hangs a pipe run.
//! While the two sides connect, nothing blocks on a peer that may be gone:
//! A accepts and opens without blocking and checks that B lives.

use crate::child::{preemptions, report_field, ChildArgs, ChildProc, Role, Stall};
use crate::pingpong::{child_args, sequence, PingpongArgs, Sample, STALL_TIMEOUT};
use crate::report;
use crate::rings::fresh_dir;
use anyhow::{bail, ensure, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the result lines say for pages: no shared memory of ours.
const PAGES: &str = "-";

/// Side A over a Unix stream socket.
pub(crate) fn uds(args: &PingpongArgs) -> Result<Sample> {
    let dir = TempDir::new()?;
    let path = dir.0.join("pingpong.sock");
    let listener = UnixListener::bind(&path).with_context(|| format!("bind {}", path.display()))?;
    listener.set_nonblocking(true).context("make the listener non-blocking")?;
    let mut child = spawn(args, Role::UdsEcho, vec![path_arg(&path)?])?;
    let stream = accept(&mut child, || listener.accept().map(|(s, _)| s))?;
    stream.set_nonblocking(false).context("make the socket blocking")?;
    stream.set_read_timeout(Some(STALL_TIMEOUT)).context("set the read timeout")?;
    round_trips(args, "uds", &stream, &stream, child)
}

/// Side B over a Unix stream socket.
pub(crate) fn uds_echo(args: &ChildArgs) -> Result<()> {
    let [path] = args.peers.as_slice() else {
        bail!("the uds echo needs one --peer (the socket's path)");
    };
    let stream = UnixStream::connect(path).with_context(|| format!("connect to {path}"))?;
    stream.set_read_timeout(Some(STALL_TIMEOUT)).context("set the read timeout")?;
    echo(args, &stream, &stream)
}

/// Side A over loopback TCP.
pub(crate) fn tcp(args: &PingpongArgs) -> Result<Sample> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("listen on 127.0.0.1")?;
    let addr = listener.local_addr().context("listening address")?;
    listener.set_nonblocking(true).context("make the listener non-blocking")?;
    let mut child = spawn(args, Role::TcpEcho, vec![addr.to_string()])?;
    let stream = accept(&mut child, || listener.accept().map(|(s, _)| s))?;
    stream.set_nonblocking(false).context("make the socket blocking")?;
    tune(&stream)?;
    round_trips(args, "tcp", &stream, &stream, child)
}

/// Side B over loopback TCP.
pub(crate) fn tcp_echo(args: &ChildArgs) -> Result<()> {
    let [addr] = args.peers.as_slice() else {
        bail!("the tcp echo needs one --peer (the listening address)");
    };
    let addr: SocketAddr = addr.parse().with_context(|| format!("parse address {addr}"))?;
    let stream = TcpStream::connect_timeout(&addr, STALL_TIMEOUT)
        .with_context(|| format!("connect to {addr}"))?;
    tune(&stream)?;
    echo(args, &stream, &stream)
}

/// No Nagle delay (each message goes out at once), and the read timeout.
fn tune(stream: &TcpStream) -> Result<()> {
    stream.set_nodelay(true).context("set TCP_NODELAY")?;
    stream.set_read_timeout(Some(STALL_TIMEOUT)).context("set the read timeout")
}

/// Side A over two FIFOs.
///
/// Opening a FIFO blocks until the other end is opened too, so both
/// sides open without blocking, in an order that tells each when the
/// other's end is there, and only then make their ends blocking:
/// 1. A opens pong for reading (a non-blocking reader opens at once).
/// 2. B opens pong for writing (it can: A reads), then ping for reading.
/// 3. A opens ping for writing, retrying while that fails with ENXIO (no
///    reader yet). Once it succeeds, B has both of its ends open.
/// 4. B waits until its read of ping says "would block" (a writer, no
///    data) rather than "end of file" (no writer yet), then sends ready.
pub(crate) fn pipe(args: &PingpongArgs) -> Result<Sample> {
    let dir = TempDir::new()?;
    let (ping_path, pong_path) = (dir.0.join("ping"), dir.0.join("pong"));
    for p in [&ping_path, &pong_path] {
        nix::unistd::mkfifo(p, Mode::S_IRUSR | Mode::S_IWUSR)
            .with_context(|| format!("mkfifo {}", p.display()))?;
    }
    let pong = open_fifo(&pong_path, false).context("open pong for reading")?;
    let peers = vec![path_arg(&ping_path)?, path_arg(&pong_path)?];
    let mut child = spawn(args, Role::PipeEcho, peers)?;
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    let ping = loop {
        match open_fifo(&ping_path, true) {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(Errno::ENXIO as i32) => {
                child.check_alive().context("waiting for the pipe echo process")?;
                stall.idle_yield().context("waiting for the pipe echo process")?;
            }
            Err(e) => return Err(e).context("open ping for writing"),
        }
    };
    set_blocking(&ping)?;
    set_blocking(&pong)?;
    round_trips(args, "pipe", &ping, &pong, child)
}

/// Side B over two FIFOs (see [`pipe`] for the order of the opens).
pub(crate) fn pipe_echo(args: &ChildArgs) -> Result<()> {
    let [ping_path, pong_path] = args.peers.as_slice() else {
        bail!("the pipe echo needs two --peer paths (ping, pong)");
    };
    let pong = open_fifo(Path::new(pong_path), true)
        .with_context(|| format!("open {pong_path} for writing (has the parent gone?)"))?;
    let ping = open_fifo(Path::new(ping_path), false)
        .with_context(|| format!("open {ping_path} for reading"))?;
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    loop {
        match (&ping).read(&mut [0u8; 1]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Ok(0) => stall.idle_yield().context("waiting for the parent to open ping")?,
            Ok(_) => bail!("a ping arrived before the ready message"),
            Err(e) => return Err(e).context("read ping"),
        }
    }
    set_blocking(&ping)?;
    set_blocking(&pong)?;
    echo(args, &pong, &ping)
}

/// Opens a FIFO's reading or writing end without blocking; the file is
/// left non-blocking (see [`set_blocking`]).
fn open_fifo(path: &Path, write: bool) -> io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
}

fn set_blocking(file: &File) -> Result<()> {
    let fd = file.as_raw_fd();
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).context("F_GETFL")?);
    fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK)).context("F_SETFL")?;
    Ok(())
}

/// Starts B with `role`, telling it where A is.
fn spawn(args: &PingpongArgs, role: Role, peers: Vec<String>) -> Result<ChildProc> {
    ChildProc::spawn(&ChildArgs {
        peers,
        ..child_args(args, role, Vec::new(), false)
    })
}

/// A path as a `--peer` argument.
fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Accepts B's connection on a non-blocking listener, failing if B exits
/// first or takes longer than [`STALL_TIMEOUT`].
fn accept<S>(child: &mut ChildProc, mut try_accept: impl FnMut() -> io::Result<S>) -> Result<S> {
    let mut stall = Stall::new(STALL_TIMEOUT, true);
    loop {
        match try_accept() {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                child.check_alive().context("waiting for the echo process to connect")?;
                stall.idle_yield().context("waiting for the echo process to connect")?;
            }
            Err(e) => return Err(e).context("accept the echo process's connection"),
        }
    }
}

/// The measured part of side A: waits for B's ready message, then times
/// each round trip (`tx` to B, `rx` from B).
fn round_trips(
    args: &PingpongArgs,
    transport: &'static str,
    mut tx: impl Write,
    mut rx: impl Read,
    mut child: ChildProc,
) -> Result<Sample> {
    let size = args.size as usize;
    let (mut msg, mut back) = (vec![0u8; size], vec![0u8; size]);
    if let Err(e) = rx.read_exact(&mut back) {
        child.check_alive().context("waiting for the echo process")?;
        return Err(e).context("read the echo process's ready message");
    }
    let mut hist = report::latency_histogram();
    let preempted_before = preemptions();
    for i in 0..args.warmup + args.count {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        let sent = tx.write_all(&msg);
        let got = sent.and_then(|()| rx.read_exact(&mut back));
        let rtt = t0.elapsed();
        if let Err(e) = got {
            child.check_alive().context("during the round trips")?;
            // Its ends close a moment before its exit can be seen.
            let why = match e.kind() {
                io::ErrorKind::UnexpectedEof => "the echo process closed its end",
                _ => "the connection to the echo process failed",
            };
            return Err(e).with_context(|| format!("round trip {i}: {why}"));
        }
        let echoed = sequence(&back);
        ensure!(echoed == i, "round trip {i} got back message {echoed}");
        if i >= args.warmup {
            hist.saturating_record(rtt.as_nanos() as u64);
        }
    }
    let preempted = preemptions() - preempted_before;
    let out = child.finish()?;
    let preempted = preempted + report_field(&out, "preempted")?;
    Ok(Sample {
        transport,
        size,
        pages: PAGES,
        hist,
        preempted,
    })
}

/// Side B: sends the ready message, then echoes `count` messages.
fn echo(args: &ChildArgs, mut tx: impl Write, mut rx: impl Read) -> Result<()> {
    let mut buf = vec![0u8; args.size];
    tx.write_all(&buf).context("send the ready message")?;
    for i in 0..args.count {
        rx.read_exact(&mut buf)
            .with_context(|| format!("read message {i} (has the parent gone?)"))?;
        tx.write_all(&buf)
            .with_context(|| format!("echo message {i} (has the parent gone?)"))?;
    }
    Ok(())
}

/// A fresh directory under the system's temporary directory, for socket
/// and FIFO files; removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        Ok(TempDir(fresh_dir(&std::env::temp_dir())?))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
