//! `hostile-client`: a client of rilld that attacks what it was handed,
//! for tests of what a client may not do (tests/tests/hostile.rs). It
//! speaks the protocol by hand (`rill::protocol`, `rill::wire`): the
//! client library would never do any of this.
//!
//! ```text
//! hostile-client forge-durable --socket S --stream NAME
//! hostile-client resize --socket S --stream NAME
//! ```
//!
//! `forge-durable` opens a publisher on `NAME` and tries to make rilld and
//! the stream's other publishers believe everything is durable:
//! * writes `u64::MAX` over the durable position in the ring file's
//!   header (it may write the ring file: it publishes), and prints
//!   `FORGED header=ok` or `header=refused:<errno>`;
//! * writes the same into the daemon page it was given (read-only):
//!   `daemon_write=ok` or `refused:<errno>`;
//! * reopens that page for writing through /proc/self/fd:
//!   `daemon_reopen=ok` or `refused:<errno>`.
//!
//! `resize` opens a publisher and a subscriber on `NAME` and tries to
//! shrink (`ftruncate` to 0) and grow (`fallocate` by 64 MiB) every fd it
//! was given (the ring, the wake, daemon and slot pages): a shrunk file
//! makes every process that maps the cut pages die of SIGBUS at its next
//! touch (rilld, and every other client of the stream), a grown one fills
//! memory. Prints `RESIZED fds=N truncated=T grown=G sizes_changed=C`
//! (T, G, C: how many fds let it, and how many changed length).
//!
//! It prints `DONE` after its line, then holds its handles until its
//! stdin closes. Exit status: 0 once it printed `DONE`, 2 on a setup
//! error.

#![deny(unsafe_code)] // one exception: mapping the ring it may write

use anyhow::{bail, Context, Result};
use rill::protocol::{self, Request, Response};
use rill::wire;
use rill_tests::opts::Opts;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("forge-durable") => Opts::parse(&args[1..], &[]).and_then(|o| forge_durable(&o)),
        Some("resize") => Opts::parse(&args[1..], &[]).and_then(|o| resize(&o)),
        _ => Err(anyhow::anyhow!("usage: hostile-client forge-durable|resize --socket S --stream NAME")),
    };
    if let Err(e) = result {
        eprintln!("hostile-client: {e:#}");
        std::process::exit(2);
    }
}

fn call(fd: &OwnedFd, buf: &mut Vec<u8>, req: &Request) -> Result<(Response, Vec<OwnedFd>)> {
    wire::send(fd.as_fd(), &protocol::encode_request(req)?, &[])?;
    let got = wire::recv(fd.as_fd(), buf)?;
    Ok((protocol::decode_response(&got.bytes)?, got.fds))
}

fn outcome(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("refused:{}", e.raw_os_error().map_or_else(|| e.to_string(), |n| nix::errno::Errno::from_raw(n).to_string())),
    }
}

/// A connection to rilld at `--socket`, past `Hello`.
fn connect(o: &Opts, buf: &mut Vec<u8>) -> Result<OwnedFd> {
    let socket = o.req("socket")?;
    let fd = wire::connect(std::path::Path::new(socket)).with_context(|| format!("connect to {socket}"))?;
    let (hello, _) = call(&fd, buf, &Request::Hello { client_name: "hostile-client".into() })?;
    if !matches!(hello, Response::Hello { .. }) {
        bail!("Hello: {hello:?}");
    }
    Ok(fd)
}

/// Waits until stdin closes (holding whatever the caller holds).
fn hold() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn resize(o: &Opts) -> Result<()> {
    let stream = o.req("stream")?;
    let mut buf = Vec::new();
    let fd = connect(o, &mut buf)?;
    let (resp, mut fds) = call(&fd, &mut buf, &Request::OpenPublisher { stream: stream.to_owned(), create: None, exclusive: false })?;
    let Response::Publisher { .. } = resp else { bail!("OpenPublisher: {resp:?}") };
    let req = Request::OpenSubscriber { stream: stream.to_owned(), start: protocol::StartAt::Latest, create: None };
    let (resp, more) = call(&fd, &mut buf, &req)?;
    let Response::Subscriber { .. } = resp else { bail!("OpenSubscriber: {resp:?}") };
    fds.extend(more);
    let (mut truncated, mut grown, mut changed) = (0, 0, 0);
    for f in &fds {
        let len = nix::sys::stat::fstat(f.as_raw_fd())?.st_size;
        truncated += usize::from(nix::unistd::ftruncate(f, 0).is_ok());
        grown += usize::from(nix::fcntl::fallocate(f.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, len + (64 << 20)).is_ok());
        changed += usize::from(nix::sys::stat::fstat(f.as_raw_fd())?.st_size != len);
    }
    println!("RESIZED fds={} truncated={truncated} grown={grown} sizes_changed={changed}", fds.len());
    println!("DONE");
    hold();
    drop(fd);
    Ok(())
}

/// Writes `bytes` at `at` of the file behind `f` through a shared
/// mapping of all of it (a ring on huge pages takes no write(2)).
fn write_mapped(f: &std::fs::File, at: usize, bytes: &[u8]) -> std::io::Result<()> {
    use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
    let len = std::num::NonZeroUsize::new(f.metadata()?.len() as usize).ok_or(std::io::ErrorKind::InvalidInput)?;
    assert!(at + bytes.len() <= len.get());
    #[allow(unsafe_code)]
    // SAFETY: a new shared mapping of a file this process was given,
    // written 8 bytes in bounds through a raw pointer (no reference to
    // memory others change), then unmapped.
    unsafe {
        let p = mmap(None, len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, f, 0)?;
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.as_ptr().cast::<u8>().add(at), bytes.len());
        munmap(p, len.get())?;
    }
    Ok(())
}

fn forge_durable(o: &Opts) -> Result<()> {
    let stream = o.req("stream")?;
    let mut buf = Vec::new();
    let fd = connect(o, &mut buf)?;
    let req = Request::OpenPublisher { stream: stream.to_owned(), create: None, exclusive: false };
    let (resp, mut fds) = call(&fd, &mut buf, &req)?;
    let Response::Publisher { .. } = resp else { bail!("OpenPublisher: {resp:?}") };
    if fds.len() < 3 {
        bail!("OpenPublisher gave {} fds", fds.len());
    }
    let daemon = std::fs::File::from(fds.pop().expect("checked"));
    let ring = std::fs::File::from(fds.swap_remove(0));
    let lie = u64::MAX.to_le_bytes();
    let at = (rill_shm::layout::COUNTERS_OFFSET + std::mem::offset_of!(rill_shm::layout::Counters, durable)) as u64;
    let header = outcome(write_mapped(&ring, at as usize, &lie));
    let daemon_write = outcome(daemon.write_all_at(&lie, 0));
    let proc_path = format!("/proc/self/fd/{}", daemon.as_raw_fd());
    let daemon_reopen = outcome(std::fs::OpenOptions::new().write(true).open(&proc_path).and_then(|f| f.write_all_at(&lie, 0)));
    println!("FORGED header={header} daemon_write={daemon_write} daemon_reopen={daemon_reopen}");
    println!("DONE");
    hold(); // the publisher stays open until then
    drop(fd);
    Ok(())
}
