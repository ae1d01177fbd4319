//! `hostile-client`: a client of rilld that attacks what it was handed,
//! for tests of what a client may not do (tests/tests/hostile.rs). It
//! speaks the protocol by hand (`rill::protocol`, `rill::wire`): the
//! client library would never do any of this.
//!
//! ```text
//! hostile-client forge-durable --socket S --stream NAME
//! hostile-client resize --socket S --stream NAME
//! hostile-client scribble --socket S --publish A[,A..] --subscribe B[,B..] --seconds N --seed X
//! hostile-client keep-slot --socket S --stream NAME [--word state|position|active]
//! hostile-client forge-word --socket S --stream NAME --word tail|head|limit_granted|padded_end|exclusive_pid|policy
//!                            --value N|max [--subscribe]
//! hostile-client rewrite --socket S --stream NAME --payloads HEX,HEX[,HEX..] --rounds R --millis M
//! hostile-client trust --socket S --stream NAME
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
//! `scribble` opens a publisher on every `--publish` stream and a
//! subscriber (from `Latest`) on every `--subscribe` stream, maps every fd
//! it was handed (read-write where the fd is open for writing: the rings
//! it publishes to, every wake page, its own slot pages; read-only
//! otherwise), and for `N` seconds writes into every writable mapping at
//! random (a PRNG seeded `X`): random bytes at random offsets and lengths,
//! plausible values into 8-byte aligned words (0, 1, `u64::MAX`, small
//! positions, the stream's current tail and its neighbours, claimed and
//! committing position words, slot states with live and dead pids), mostly
//! into the header words of each file, and frame headers committed with
//! the ring's own salt (so that readers take them for committed frames)
//! near the tail of the rings it may write. Every round it also tries to
//! write through each read-only fd: a shared writable mapping,
//! `mprotect` of its read-only mapping, and in turn `pwrite`, a write
//! through /proc/self/mem and reopening the fd for writing; each attempt
//! should be refused. It heartbeats like a client meanwhile, so that rilld
//! keeps its handles (until rilld leaves one unanswered for 2 s: then it
//! stops heartbeating, and scribbles on). Then it prints
//! `SCRIBBLED writes=W bytes=B words=V frames=F rounds=R mappings=M
//! writable=MW ro_fds=RO ro_attempts=A ro_refused=RF ro_ok=OK
//! ro_ok_what=.. heartbeat_failures=H` (`ro_ok`: attempts that were not
//! refused, the first named in `ro_ok_what`; `H`: 1 if rilld stopped
//! answering).
//!
//! `keep-slot` opens a subscriber on `NAME`, maps its own slot page (the
//! fd it was handed read-write), closes the subscriber (`Close`: rilld
//! frees the slot, to hand it to the next subscriber) and prints `CLOSED
//! slot=K`. It keeps the mapping. At the first line on its stdin it
//! writes, as the slot's former owner, `SLOT_FREE` and pid 0 over the
//! slot's state word (`--word state`, the default), `1 << 62` over its
//! position (`--word position`: publishers then take whoever holds the
//! slot for a reader far ahead), or `SLOT_ACTIVE` and its own pid over the
//! state word (`--word active`: the slot, free, holds publishers back
//! again at the position it had), and prints `WROTE slot=K word=W
//! value=V`.
//!
//! `forge-word` opens a publisher on `NAME`, writes `N` (`max`:
//! `u64::MAX`) over one word of the ring header's counters (`tail`,
//! `head`, `limit_granted`: the highest limit any publisher was granted,
//! which a joining subscriber checks its start against, `padded_end`: the
//! end of the reclaimer's furthest padding, which a committing publisher
//! checks its claim against, `exclusive_pid`: a u32, the pid rilld once
//! recorded there as holding the stream's exclusive publication; or, in
//! the header's meta words, `policy`: a u32, 0 back-pressure, 1
//! overwrite) and prints `FORGED word=W value=N`. With
//! `--subscribe` it then sends `OpenSubscriber` for the stream, prints
//! `ASKED`, and prints `SUBSCRIBED reply=..` once rilld answers (if ever).
//!
//! `rewrite` opens a publisher on `NAME`, maps its ring read-write, and
//! `R` times publishes the first of `--payloads` (hex, all of one length)
//! and then, for `M` ms, writes each of them in turn over that message's
//! payload in the ring, as a subscriber may be reading it. Prints `READY`
//! once mapped and `REWROTE rounds=R writes=W` at the end.
//!
//! `trust` opens a subscriber on `NAME` and prints `TRUST
//! publishers_trusted=B`: what rilld said about who may publish there.
//!
//! It prints `DONE` after its line, then holds its handles until its
//! stdin closes. Exit status: 0 once it printed `DONE`, 2 on a setup
//! error.

#![deny(unsafe_code)] // exceptions: mapping what it was handed, and writing there

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
        Some("scribble") => Opts::parse(&args[1..], &[]).and_then(|o| scribble::run(&o)),
        Some("keep-slot") => Opts::parse(&args[1..], &[]).and_then(|o| keep_slot(&o)),
        Some("forge-word") => Opts::parse(&args[1..], &["subscribe"]).and_then(|o| forge_word(&o)),
        Some("rewrite") => Opts::parse(&args[1..], &[]).and_then(|o| rewrite(&o)),
        Some("trust") => Opts::parse(&args[1..], &[]).and_then(|o| trust(&o)),
        _ => Err(anyhow::anyhow!("usage: hostile-client forge-durable|resize|scribble|keep-slot|forge-word --socket S ...")),
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
    connect_with_heartbeat(o, buf).map(|(fd, _)| fd)
}

/// [`connect`], and how often rilld wants a heartbeat (ms).
fn connect_with_heartbeat(o: &Opts, buf: &mut Vec<u8>) -> Result<(OwnedFd, u32)> {
    let socket = o.req("socket")?;
    let fd = wire::connect(std::path::Path::new(socket)).with_context(|| format!("connect to {socket}"))?;
    let (hello, _) = call(&fd, buf, &Request::Hello { client_name: "hostile-client".into() })?;
    let Response::Hello { heartbeat_ms, .. } = hello else { bail!("Hello: {hello:?}") };
    Ok((fd, heartbeat_ms))
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

fn forge_word(o: &Opts) -> Result<()> {
    use rill_shm::layout::{Counters, Meta, PublisherWords, COUNTERS_OFFSET};
    use std::mem::offset_of;
    let stream = o.req("stream")?;
    let word = o.req("word")?;
    let counter = |off: usize| COUNTERS_OFFSET + off;
    let publishers = offset_of!(Counters, publishers);
    let (at, width) = match word {
        "tail" => (counter(offset_of!(Counters, tail)), 8),
        "head" => (counter(offset_of!(Counters, head)), 8),
        "limit_granted" => (counter(offset_of!(Counters, limit_granted)), 8),
        "padded_end" => (counter(publishers + offset_of!(PublisherWords, padded_end)), 8),
        "exclusive_pid" => (counter(publishers + offset_of!(PublisherWords, exclusive_pid)), 4),
        "policy" => (offset_of!(Meta, policy), 4),
        other => bail!("unknown --word {other:?}"),
    };
    let value = match o.req("value")? {
        "max" if width == 8 => u64::MAX,
        "max" => u64::from(u32::MAX),
        v => v.parse().with_context(|| format!("--value {v:?}"))?,
    };
    let mut buf = Vec::new();
    let fd = connect(o, &mut buf)?;
    let req = Request::OpenPublisher { stream: stream.to_owned(), create: None, exclusive: false };
    let (resp, mut fds) = call(&fd, &mut buf, &req)?;
    let Response::Publisher { .. } = resp else { bail!("OpenPublisher: {resp:?}") };
    let ring = std::fs::File::from(fds.swap_remove(0));
    write_mapped(&ring, at, &value.to_le_bytes()[..width]).with_context(|| format!("writing {word}"))?;
    println!("FORGED word={word} value={value}");
    if o.get("subscribe").is_some() {
        let req = Request::OpenSubscriber { stream: stream.to_owned(), start: protocol::StartAt::Latest, create: None };
        wire::send(fd.as_fd(), &protocol::encode_request(&req)?, &[])?;
        println!("ASKED");
        let got = wire::recv(fd.as_fd(), &mut buf)?;
        let reply = protocol::decode_response(&got.bytes)?;
        println!("SUBSCRIBED reply={}", format!("{reply:?}").split_whitespace().next().unwrap_or("?"));
    }
    println!("DONE");
    hold();
    drop(fd);
    Ok(())
}

fn rewrite(o: &Opts) -> Result<()> {
    use rill_shm::layout::Meta;
    use rill_shm::{Access, Ring};
    let stream = o.req("stream")?;
    let hex = |h: &str| -> Result<Vec<u8>> {
        (0..h.len()).step_by(2).map(|i| u8::from_str_radix(h.get(i..i + 2).context("odd hex")?, 16).context("hex")).collect()
    };
    let payloads = o.req("payloads")?.split(',').map(hex).collect::<Result<Vec<_>>>()?;
    let len = payloads[0].len();
    anyhow::ensure!(payloads.len() >= 2 && payloads.iter().all(|p| p.len() == len), "--payloads: two or more, of one length");
    let rounds: u64 = o.req("rounds")?.parse()?;
    let millis: u64 = o.req("millis")?.parse()?;
    let mut buf = Vec::new();
    let fd = connect(o, &mut buf)?;
    let req = Request::OpenPublisher { stream: stream.to_owned(), create: None, exclusive: false };
    let (resp, mut fds) = call(&fd, &mut buf, &req)?;
    let Response::Publisher { slots_epoch, .. } = resp else { bail!("OpenPublisher: {resp:?}") };
    anyhow::ensure!(fds.len() >= 3, "{} fds", fds.len());
    let raw = std::fs::File::from(fds[0].try_clone()?);
    let daemon = fds.pop().context("fds")?;
    let mut fds = fds.into_iter();
    let (ring_fd, wake) = (fds.next().context("fds")?, fds.next().context("fds")?);
    let slots = fds.map(|f| Some((f, Access::ReadOnly))).collect();
    let ring = Ring::from_fds(ring_fd, Access::ReadWrite, slots, (wake, Access::ReadWrite), (daemon, Access::ReadOnly))?;
    ring.set_slots_epoch(slots_epoch);
    let mut publication = ring.shared_publication()?;
    // Mapped until the process exits (the fd may close).
    let (ptr, file_len) = scribble::map(&OwnedFd::from(raw), true)?;
    let base = ptr.as_ptr().cast::<u8>();
    #[allow(unsafe_code)]
    // SAFETY: the Meta words are at the start of the mapping (file_len
    // bytes, page aligned), read through a raw pointer.
    let word = |off: usize| unsafe { base.add(off).cast::<u64>().read_volatile() };
    let capacity = word(std::mem::offset_of!(Meta, capacity));
    let data_offset = word(std::mem::offset_of!(Meta, data_offset)) as usize;
    anyhow::ensure!(capacity.is_power_of_two() && data_offset + capacity as usize <= file_len, "ring header makes no sense");
    println!("READY");
    let mut writes = 0u64;
    for _ in 0..rounds {
        let position = loop {
            match publication.offer(&payloads[0]) {
                Ok(p) => break p,
                Err(rill_shm::ring::ClaimError::BackPressured) => std::thread::sleep(std::time::Duration::from_millis(1)),
                Err(e) => bail!("offer: {e}"),
            }
        };
        let at = data_offset + (position & (capacity - 1)) as usize + rill_shm::frame::HEADER_LEN;
        anyhow::ensure!(at + len <= file_len);
        let until = std::time::Instant::now() + std::time::Duration::from_millis(millis);
        while std::time::Instant::now() < until {
            // Many turns per clock read, so that each payload lies in the
            // ring about as long as the others.
            for p in payloads[1..].iter().chain(&payloads[..1]).cycle().take(256 * payloads.len()) {
                #[allow(unsafe_code)]
                // SAFETY: in bounds of the writable shared mapping
                // (checked above), through a raw pointer; `p` is private.
                unsafe {
                    std::ptr::copy_nonoverlapping(p.as_ptr(), base.add(at), len);
                }
                writes += 1;
            }
        }
    }
    println!("REWROTE rounds={rounds} writes={writes}");
    println!("DONE");
    hold();
    drop(fd);
    Ok(())
}

fn trust(o: &Opts) -> Result<()> {
    let stream = o.req("stream")?;
    let mut buf = Vec::new();
    let fd = connect(o, &mut buf)?;
    let req = Request::OpenSubscriber { stream: stream.to_owned(), start: protocol::StartAt::Latest, create: None };
    let (resp, _fds) = call(&fd, &mut buf, &req)?;
    let Response::Subscriber { publishers_trusted, .. } = resp else { bail!("OpenSubscriber: {resp:?}") };
    println!("TRUST publishers_trusted={publishers_trusted}");
    println!("DONE");
    hold();
    drop(fd);
    Ok(())
}

fn keep_slot(o: &Opts) -> Result<()> {
    let stream = o.req("stream")?;
    let mut buf = Vec::new();
    let fd = connect(o, &mut buf)?;
    let req = Request::OpenSubscriber { stream: stream.to_owned(), start: protocol::StartAt::Latest, create: None };
    let (resp, fds) = call(&fd, &mut buf, &req)?;
    let Response::Subscriber { handle, slot, .. } = resp else { bail!("OpenSubscriber: {resp:?}") };
    let page = std::fs::File::from(fds.into_iter().nth(2).context("no slot page fd")?);
    let (resp, _) = call(&fd, &mut buf, &Request::Close { handle })?;
    let Response::Closed = resp else { bail!("Close: {resp:?}") };
    println!("CLOSED slot={slot} handle={handle}");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let (word, at, value) = match o.get("word").unwrap_or("state") {
        "state" => ("state", std::mem::offset_of!(rill_shm::layout::Slot, state), 0u64),
        "position" => ("position", std::mem::offset_of!(rill_shm::layout::Slot, position), 1 << 62),
        "active" => ("active", std::mem::offset_of!(rill_shm::layout::Slot, state), u64::from(std::process::id()) << 32 | u64::from(rill_shm::layout::SLOT_ACTIVE)),
        other => bail!("unknown --word {other:?}"),
    };
    write_mapped(&page, at, &value.to_le_bytes()).context("writing the slot page")?;
    println!("WROTE slot={slot} word={word} value={value}");
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

/// `scribble`: see the module docs.
mod scribble {
    use super::{call, connect_with_heartbeat, Opts};
    use anyhow::{bail, Context, Result};
    use nix::sys::mman::{mmap, mprotect, munmap, MapFlags, ProtFlags};
    use rill::protocol::{self, Request, Response};
    use rill_shm::layout::{Meta, COUNTERS_OFFSET, SLOT_ACTIVE, SLOT_HOLDING, SLOT_REVOKED};
    use rill_tests::payload::Prng;
    use std::ffi::c_void;
    use std::num::NonZeroUsize;
    use std::os::fd::{AsFd, AsRawFd, OwnedFd};
    use std::os::unix::fs::FileExt;
    use std::ptr::NonNull;
    use std::time::{Duration, Instant};

    /// What a handed fd is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Ring,
        Wake,
        Slot,
        Daemon,
        Segment,
    }

    /// One fd the attacker was handed, mapped whole: read-write if the fd
    /// is open for writing, else read-only.
    struct Mapped {
        what: String,
        fd: OwnedFd,
        ptr: NonNull<c_void>,
        len: usize,
        writable: bool,
        stream: usize,
        kind: Kind,
    }

    impl Drop for Mapped {
        fn drop(&mut self) {
            #[allow(unsafe_code)]
            // SAFETY: `ptr`/`len` are a mapping this struct made and owns;
            // nothing refers into it (only raw pointers were ever used).
            unsafe {
                let _ = munmap(self.ptr, self.len);
            }
        }
    }

    impl Mapped {
        /// The 8-byte word at `off` (8-byte aligned, in bounds).
        fn read_word(&self, off: usize) -> u64 {
            assert!(off.is_multiple_of(8) && off + 8 <= self.len);
            #[allow(unsafe_code)]
            // SAFETY: in bounds and aligned (checked above; mappings are
            // page aligned); a volatile read through a raw pointer of
            // memory other processes change, never a reference to it.
            unsafe {
                self.ptr.as_ptr().cast::<u8>().add(off).cast::<u64>().read_volatile()
            }
        }

        /// Writes `v` into the word at `off` (8-byte aligned, in bounds).
        fn write_word(&self, off: usize, v: u64) {
            assert!(self.writable && off.is_multiple_of(8) && off + 8 <= self.len);
            #[allow(unsafe_code)]
            // SAFETY: a writable shared mapping of `len` bytes; in bounds
            // and aligned (checked above); a volatile store through a raw
            // pointer, no reference to memory others change.
            unsafe {
                self.ptr.as_ptr().cast::<u8>().add(off).cast::<u64>().write_volatile(v);
            }
        }

        /// Copies `bytes` to `off` (in bounds).
        fn write_bytes(&self, off: usize, bytes: &[u8]) {
            assert!(self.writable && off + bytes.len() <= self.len);
            #[allow(unsafe_code)]
            // SAFETY: a writable shared mapping of `len` bytes, written in
            // bounds (checked above) through a raw pointer; `bytes` is
            // private memory, so the ranges do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().cast::<u8>().add(off), bytes.len());
            }
        }
    }

    /// Maps all of `fd`: shared, read-write if `writable`.
    pub(super) fn map(fd: &OwnedFd, writable: bool) -> Result<(NonNull<c_void>, usize)> {
        let len = nix::sys::stat::fstat(fd.as_raw_fd())?.st_size as usize;
        let nz = NonZeroUsize::new(len).context("an empty file")?;
        let prot = if writable { ProtFlags::PROT_READ | ProtFlags::PROT_WRITE } else { ProtFlags::PROT_READ };
        #[allow(unsafe_code)]
        // SAFETY: a new shared mapping of a file this process holds; the
        // kernel picks the address; it is only used through raw pointers.
        let ptr = unsafe { mmap(None, nz, prot, MapFlags::MAP_SHARED, fd.as_fd(), 0)? };
        Ok((ptr, len))
    }

    /// What the attacker knows about one stream (from its ring, at start).
    struct StreamView {
        name: String,
        /// Index in the mappings of a mapping of its ring.
        ring: usize,
        capacity: u64,
        data_offset: usize,
        salt: u64,
        max_len: u64,
    }

    /// Counts of the attempts to write through read-only fds.
    #[derive(Default)]
    struct RoTally {
        attempts: u64,
        refused: u64,
        ok: u64,
        first_ok: Option<String>,
    }

    impl RoTally {
        fn note(&mut self, what: &str, how: &str, r: std::result::Result<(), String>) {
            self.attempts += 1;
            match r {
                Ok(()) => {
                    self.ok += 1;
                    self.first_ok.get_or_insert_with(|| format!("{how}:{what}"));
                }
                Err(_) => self.refused += 1,
            }
        }
    }

    fn errno_text<E: std::fmt::Display>(e: E) -> String {
        e.to_string()
    }

    /// One round of attempts to write through the read-only `m`: a shared
    /// writable mapping, `mprotect` of its read-only mapping, and (in
    /// turn, `turn`) pwrite, /proc/self/mem and a read-write reopen. Each
    /// would write back the bytes already there.
    fn try_read_only(m: &Mapped, turn: u64, rng: &mut Prng, proc_mem: Option<&std::fs::File>, t: &mut RoTally) {
        let nz = NonZeroUsize::new(m.len).expect("mapped, so not empty");
        #[allow(unsafe_code)]
        // SAFETY: asks for a new shared read-write mapping of a read-only
        // fd (the kernel should refuse); one it grants is unmapped at once.
        let rw = unsafe { mmap(None, nz, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, m.fd.as_fd(), 0) };
        t.note(&m.what, "mmap_rw", match rw {
            Ok(p) => {
                #[allow(unsafe_code)]
                // SAFETY: the mapping just made, of `len` bytes, unused.
                unsafe {
                    let _ = munmap(p, m.len);
                }
                Ok(())
            }
            Err(e) => Err(errno_text(e)),
        });
        #[allow(unsafe_code)]
        // SAFETY: asks to make this struct's own read-only mapping
        // writable (the kernel should refuse: the fd is read-only); if it
        // is granted, it is made read-only again below before any use.
        let prot = unsafe { mprotect(m.ptr, m.len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE) };
        t.note(&m.what, "mprotect", match prot {
            Ok(()) => {
                #[allow(unsafe_code)]
                // SAFETY: as above: back to read-only.
                unsafe {
                    let _ = mprotect(m.ptr, m.len, ProtFlags::PROT_READ);
                }
                Ok(())
            }
            Err(e) => Err(errno_text(e)),
        });
        let off = (rng.next_u64() % m.len as u64) as usize & !7;
        let same = m.read_word(off).to_le_bytes();
        match turn % 3 {
            0 => {
                let r = nix::sys::uio::pwrite(m.fd.as_fd(), &same, off as i64).map(drop).map_err(errno_text);
                t.note(&m.what, "pwrite", r);
            }
            1 => {
                if let Some(mem) = proc_mem {
                    let addr = m.ptr.as_ptr() as u64 + off as u64;
                    t.note(&m.what, "proc_mem", mem.write_all_at(&same, addr).map_err(errno_text));
                }
            }
            _ => {
                let path = format!("/proc/self/fd/{}", m.fd.as_raw_fd());
                let r = std::fs::OpenOptions::new().read(true).write(true).open(&path).and_then(|f| f.write_all_at(&same, off as u64));
                t.note(&m.what, "reopen_rw", r.map_err(errno_text));
            }
        }
    }

    /// A value someone might take for something: positions near the
    /// tail, limits, claimed/committing words, slot states with pids.
    fn plausible(rng: &mut Prng, s: &StreamView, tail: u64) -> u64 {
        let frames = 32 * (1 + rng.next_u64() % 64);
        let state = [0, u64::from(SLOT_ACTIVE), u64::from(SLOT_REVOKED), u64::from(SLOT_HOLDING)][(rng.next_u64() % 4) as usize];
        match rng.next_u64() % 20 {
            0 => 0,
            1 => u64::MAX,
            2 => 1 + rng.next_u64() % 3,
            3 => tail,
            4 => tail.wrapping_add(frames),
            5 => tail.saturating_sub(frames),
            6 => tail.wrapping_add(s.capacity),
            7 => tail.wrapping_sub(s.capacity),
            8 => (rng.next_u64() % 65536) & !31,
            9 => u64::from(u32::MAX),
            10 => tail | 1 << 63,
            11 => tail | 1 << 62,
            12 => u64::MAX - 1,
            13 => rng.next_u64() & 0xFFFF_FFFF,
            14 => s.max_len + 33,
            // A slot's state and pid words: a dead pid (above pid_max), this
            // process's, pid 1.
            15 => 0x3FFF_FFF0 << 32 | state,
            16 => u64::from(std::process::id()) << 32 | state,
            17 => 1 << 32 | state,
            18 => state,
            _ => rng.next_u64(),
        }
    }

    /// What the writes did.
    #[derive(Default)]
    struct Tally {
        writes: u64,
        bytes: u64,
        words: u64,
        frames: u64,
    }

    /// One write into the writable mapping `m` (of stream `s`).
    fn write_one(rng: &mut Prng, m: &Mapped, s: &StreamView, tail: u64, t: &mut Tally) {
        t.writes += 1;
        let roll = rng.next_u64() % 100;
        if m.kind == Kind::Ring && roll < 10 {
            // A frame header committed with the ring's salt at a frame
            // boundary near the tail: readers take it for a committed
            // frame of whatever length and kind it says.
            let back = rng.next_u64() % 8;
            let p = if rng.next_u64().is_multiple_of(2) { tail.saturating_sub(32 * back) } else { tail + 32 * back };
            let p = p & !31;
            let off = s.data_offset + (p & (s.capacity - 1)) as usize;
            let len: u64 = match rng.next_u64() % 8 {
                0 => 0,
                1 => 31,
                2 => 32,
                3 => 32 + s.max_len,
                4 => 33 + s.max_len,
                5 => s.capacity,
                6 => u64::from(u32::MAX),
                _ => 32 + rng.next_u64() % (s.max_len + 1),
            };
            let kind: u64 = match rng.next_u64() % 4 {
                0 | 1 => 1,
                2 => 2,
                _ => rng.next_u64() % 0x1_0000,
            };
            let tag = u64::from(rill_shm::ring::commit_tag(s.salt, p));
            if off + 32 <= m.len {
                m.write_word(off, len | kind << 32);
                m.write_word(off + 16, rng.next_u64());
                m.write_word(off + 24, (rng.next_u64() % 8) | tag << 32);
                m.write_word(off + 8, p);
                t.frames += 1;
            }
        } else if roll < 55 {
            // A plausible value into a word, mostly of the file's header.
            let hot = match m.kind {
                Kind::Ring => 1024,
                Kind::Slot => 128,
                _ => 256,
            }
            .min(m.len);
            let off = if rng.next_u64() % 4 == 3 {
                (rng.next_u64() % m.len as u64) as usize & !7
            } else if m.kind == Kind::Ring && rng.next_u64().is_multiple_of(2) {
                // A word of a frame header near the tail.
                let p = tail.wrapping_sub(32 * (rng.next_u64() % 64)) & !31;
                (s.data_offset + (p & (s.capacity - 1)) as usize + 8 * (rng.next_u64() % 4) as usize).min(m.len - 8)
            } else {
                (rng.next_u64() % hot as u64) as usize & !7
            };
            m.write_word(off, plausible(rng, s, tail));
            t.words += 1;
        } else {
            // Random bytes, at a random offset, of a random length.
            let n = match rng.next_u64() % 100 {
                0..=69 => 1 + rng.next_u64() % 16,
                70..=94 => 1 + rng.next_u64() % 256,
                _ => 1 + rng.next_u64() % 4096,
            }
            .min(m.len as u64) as usize;
            let off = (rng.next_u64() % (m.len - n + 1) as u64) as usize;
            let mut bytes = vec![0u8; n];
            for c in bytes.chunks_mut(8) {
                let w = rng.next_u64().to_le_bytes();
                c.copy_from_slice(&w[..c.len()]);
            }
            m.write_bytes(off, &bytes);
            t.bytes += n as u64;
        }
    }

    pub(super) fn run(o: &Opts) -> Result<()> {
        let list = |key: &str| -> Vec<String> { o.get(key).map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect()).unwrap_or_default() };
        let (publish, subscribe) = (list("publish"), list("subscribe"));
        let seconds = o.num("seconds", Some(5))?;
        let seed = o.num("seed", Some(1))?;
        let mut rng = Prng::new(seed);
        let mut buf = Vec::new();
        let (fd, heartbeat_ms) = connect_with_heartbeat(o, &mut buf)?;
        let mut names: Vec<String> = Vec::new();
        let mut maps: Vec<Mapped> = Vec::new();
        let mut stream_of = |name: &str| -> usize {
            names.iter().position(|n| n == name).unwrap_or_else(|| {
                names.push(name.to_owned());
                names.len() - 1
            })
        };
        // (stream, role, fds)
        let mut handed: Vec<(usize, &str, Vec<OwnedFd>)> = Vec::new();
        for stream in &publish {
            let req = Request::OpenPublisher { stream: stream.clone(), create: None, exclusive: false };
            let (resp, fds) = call(&fd, &mut buf, &req)?;
            let Response::Publisher { .. } = resp else { bail!("OpenPublisher {stream}: {resp:?}") };
            handed.push((stream_of(stream), "pub", fds));
        }
        for stream in &subscribe {
            let req = Request::OpenSubscriber { stream: stream.clone(), start: protocol::StartAt::Latest, create: None };
            let (resp, fds) = call(&fd, &mut buf, &req)?;
            let Response::Subscriber { slot, .. } = resp else { bail!("OpenSubscriber {stream}: {resp:?}") };
            eprintln!("hostile-client: subscribed to {stream} on slot {slot}");
            handed.push((stream_of(stream), "sub", fds));
        }
        for (stream, role, fds) in handed {
            let n = fds.len();
            if n < 4 {
                bail!("{role} of {} got {n} fds", names[stream]);
            }
            for (i, f) in fds.into_iter().enumerate() {
                let kind = match (role, i) {
                    (_, 0) => Kind::Ring,
                    (_, 1) => Kind::Wake,
                    ("pub", i) if i == n - 1 => Kind::Daemon,
                    ("pub", _) | ("sub", 2) => Kind::Slot,
                    ("sub", 3) => Kind::Daemon,
                    _ => Kind::Segment,
                };
                let flags = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
                let writable = flags & nix::libc::O_ACCMODE == nix::libc::O_RDWR;
                let (ptr, len) = map(&f, writable).with_context(|| format!("mapping {role} fd {i} of {}", names[stream]))?;
                let what = format!("{}:{role}:{kind:?}{i}", names[stream]);
                maps.push(Mapped { what, fd: f, ptr, len, writable, stream, kind });
            }
        }
        let mut views = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ring = maps.iter().position(|m| m.stream == i && m.kind == Kind::Ring).context("a ring")?;
            let m = &maps[ring];
            let word = |off: usize| m.read_word(off);
            let capacity = word(std::mem::offset_of!(Meta, capacity));
            let data_offset = word(std::mem::offset_of!(Meta, data_offset)) as usize;
            let salt = word(std::mem::offset_of!(Meta, commit_salt));
            let max_len = word(std::mem::offset_of!(Meta, max_message_len)) & 0xFFFF_FFFF;
            if !capacity.is_power_of_two() || data_offset + capacity as usize > m.len {
                bail!("{name}: ring header makes no sense: capacity {capacity}, data at {data_offset}, {} bytes", m.len);
            }
            views.push(StreamView { name: name.clone(), ring, capacity, data_offset, salt, max_len });
        }
        let writable: Vec<usize> = (0..maps.len()).filter(|&i| maps[i].writable).collect();
        let read_only: Vec<usize> = (0..maps.len()).filter(|&i| !maps[i].writable).collect();
        if writable.is_empty() {
            bail!("nothing writable was handed over");
        }
        eprintln!(
            "hostile-client: {} streams ({}), {} mappings, writable: {}",
            views.len(),
            views.iter().map(|v| v.name.as_str()).collect::<Vec<_>>().join(","),
            maps.len(),
            writable.iter().map(|&i| maps[i].what.as_str()).collect::<Vec<_>>().join(",")
        );
        // A rilld that stops answering must not stop the scribbling: after
        // one unanswered heartbeat the attacker heartbeats no more.
        let timeout = nix::sys::time::TimeVal::new(2, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)?;
        let mut heartbeat_failures = 0u64;
        let proc_mem = std::fs::OpenOptions::new().read(true).write(true).open("/proc/self/mem").ok();
        let (mut t, mut ro, mut rounds) = (Tally::default(), RoTally::default(), 0u64);
        let heartbeat = Duration::from_millis(u64::from(heartbeat_ms.max(100)) / 2);
        let mut next_heartbeat = Instant::now() + heartbeat;
        let until = Instant::now() + Duration::from_secs(seconds);
        while Instant::now() < until {
            rounds += 1;
            for _ in 0..(16 + rng.next_u64() % 48) {
                let m = &maps[writable[(rng.next_u64() % writable.len() as u64) as usize]];
                let s = &views[m.stream];
                let tail = maps[s.ring].read_word(COUNTERS_OFFSET);
                write_one(&mut rng, m, s, tail, &mut t);
            }
            for &i in &read_only {
                try_read_only(&maps[i], rounds + i as u64, &mut rng, proc_mem.as_ref(), &mut ro);
            }
            if heartbeat_failures == 0 && Instant::now() >= next_heartbeat {
                next_heartbeat = Instant::now() + heartbeat;
                match call(&fd, &mut buf, &Request::Heartbeat) {
                    Ok((Response::HeartbeatAck, _)) => {}
                    other => {
                        heartbeat_failures += 1;
                        eprintln!("hostile-client: heartbeat: {other:?}; no more heartbeats");
                    }
                }
            }
            std::thread::sleep(Duration::from_micros(200 + rng.next_u64() % 800));
        }
        println!(
            "SCRIBBLED writes={} bytes={} words={} frames={} rounds={rounds} mappings={} writable={} ro_fds={} ro_attempts={} ro_refused={} ro_ok={} ro_ok_what={} heartbeat_failures={heartbeat_failures}",
            t.writes,
            t.bytes,
            t.words,
            t.frames,
            maps.len(),
            writable.len(),
            read_only.len(),
            ro.attempts,
            ro.refused,
            ro.ok,
            ro.first_ok.as_deref().unwrap_or("-"),
        );
        println!("DONE");
        // Hold every handle (heartbeating) until stdin closes.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            super::hold();
            let _ = tx.send(());
        });
        while rx.recv_timeout(heartbeat).is_err() {
            if heartbeat_failures == 0 && call(&fd, &mut buf, &Request::Heartbeat).is_err() {
                heartbeat_failures += 1;
            }
        }
        drop(maps);
        drop(fd);
        Ok(())
    }
}
