//! `hostile-client`: a client of rilld that attacks what it was handed,
//! for tests of what a client may not do (tests/tests/hostile.rs). It
//! speaks the protocol by hand (`rill::protocol`, `rill::wire`): the
//! client library would never do any of this.
//!
//! ```text
//! hostile-client forge-durable --socket S --stream NAME
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
//! It prints `DONE` after its line, then holds its publisher until its
//! stdin closes. Exit status: 0 once it printed `DONE`, 2 on a setup
//! error.

#![forbid(unsafe_code)]

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
        _ => Err(anyhow::anyhow!("usage: hostile-client forge-durable --socket S --stream NAME")),
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

fn forge_durable(o: &Opts) -> Result<()> {
    let socket = o.req("socket")?;
    let stream = o.req("stream")?;
    let fd = wire::connect(std::path::Path::new(socket)).with_context(|| format!("connect to {socket}"))?;
    let mut buf = Vec::new();
    let (hello, _) = call(&fd, &mut buf, &Request::Hello { client_name: "hostile-client".into() })?;
    if !matches!(hello, Response::Hello { .. }) {
        bail!("Hello: {hello:?}");
    }
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
    let header = outcome(ring.write_all_at(&lie, at));
    let daemon_write = outcome(daemon.write_all_at(&lie, 0));
    let proc_path = format!("/proc/self/fd/{}", daemon.as_raw_fd());
    let daemon_reopen = outcome(std::fs::OpenOptions::new().write(true).open(&proc_path).and_then(|f| f.write_all_at(&lie, 0)));
    println!("FORGED header={header} daemon_write={daemon_write} daemon_reopen={daemon_reopen}");
    println!("DONE");
    // Hold the publisher until told to go.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(fd);
    Ok(())
}
