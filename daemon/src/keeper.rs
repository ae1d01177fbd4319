//! The ring keeper: a small process that holds the memfds of every ring,
//! so that rings outlive a crash or an upgrade of rilld.
//!
//! Rings live in memfds sealed against resizing (see
//! `rill_shm::ring::Ring::create_sealed`): no client can shrink the memory
//! that rilld and other clients map. A memfd has no name in any
//! filesystem and lives only while someone holds it, so rilld hands every
//! ring's fds to the keeper, a process of its own (`rilld --keeper PATH`,
//! started by the first rilld, in its own process group, with no stdio),
//! over a `SOCK_SEQPACKET` Unix socket in rilld's private state directory.
//! A rilld that starts connects to the keeper there (starting one if none
//! answers) and gets every ring back, as the previous rilld left them;
//! publishers and subscribers then resume as before.
//!
//! The keeper trusts only peers of its own uid, in a directory only that
//! uid may enter. It exits when nothing is left to keep and no rilld is
//! connected, when its socket is removed or replaced (the state directory
//! deleted), or when it is killed: then the rings are gone as after a
//! reboot (persisted streams come back from their logs).
//!
//! Messages (one datagram each): `H` (rilld: hello, send me everything),
//! `K<keep><name>` with the ring's fds (in the order of
//! `RingFiles::all`; from rilld: keep this ring, replacing any of that
//! name; from the keeper after `H`: here is one), `F<name>` (rilld: forget
//! it), `E` (keeper: that was everything).

use anyhow::{bail, Context, Result};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    accept4, bind, connect, getsockopt, listen, recvmsg, sendmsg, socket, sockopt, AddressFamily, Backlog, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use rill_shm::ring::RingFiles;
use std::collections::BTreeMap;
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The keeper's socket, in the state directory.
pub const SOCKET: &str = "keeper.sock";
/// The keeper's pid, in the state directory (for operators and tests: the
/// process whose death loses every ring).
pub const PID_FILE: &str = "keeper.pid";
/// Most fds in one message: a ring, its wake and daemon pages, and one
/// page per slot (the kernel takes at most 253 in one message).
const MAX_FDS: usize = 3 + rill_protocol::MAX_SLOTS_PER_STREAM as usize;
/// How long a started keeper may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the keeper waits for its first rilld.
const FIRST_CONTACT: Duration = Duration::from_secs(10);

/// A ring the keeper held for the previous rilld.
#[derive(Debug)]
pub struct Kept {
    /// The stream's name.
    pub name: String,
    /// Kept while unused.
    pub keep: bool,
    /// Its memfds.
    pub files: RingFiles,
}

/// rilld's connection to its keeper.
#[derive(Debug)]
pub struct Keeper {
    conn: OwnedFd,
    state_dir: PathBuf,
    /// The keeper if this rilld started it (reaped when it exits).
    child: Option<std::process::Child>,
    /// Device and inode of the state directory when rilld started.
    dir_identity: (u64, u64),
}

fn dir_identity(dir: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(dir).with_context(|| format!("{}", dir.display()))?;
    Ok((m.dev(), m.ino()))
}

fn send(fd: &OwnedFd, msg: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(msg)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<UnixAddr>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// One message and its fds; an empty message is the end of the stream.
fn recv(fd: &OwnedFd, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>)> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel just installed these fds in this process
            // for this message; nothing else owns them.
            fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
        }
    }
    if msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        bail!("a message to or from the ring keeper was cut short");
    }
    Ok((msg.bytes, fds))
}

fn keep_message(name: &str, keep: bool) -> Vec<u8> {
    let mut m = vec![b'K', u8::from(keep)];
    m.extend_from_slice(name.as_bytes());
    m
}

fn seqpacket() -> nix::Result<OwnedFd> {
    socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None)
}

impl Keeper {
    /// Connects to the keeper in `state_dir`, starting one if none answers,
    /// and takes back what it keeps.
    pub fn start(state_dir: &Path) -> Result<(Keeper, Vec<Kept>)> {
        let path = state_dir.join(SOCKET);
        let (conn, child) = match Self::connect(&path) {
            Ok(c) => (c, None),
            Err(_) => {
                let _ = std::fs::remove_file(&path); // a keeper that died left it
                let exe = std::env::current_exe().context("locating rilld's own executable to start the ring keeper")?;
                let mut child = {
                    use std::os::unix::process::CommandExt;
                    std::process::Command::new(exe)
                        .arg("--keeper")
                        .arg(&path)
                        .process_group(0)
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .spawn()
                        .context("starting the ring keeper")?
                };
                let since = Instant::now();
                let conn = loop {
                    match Self::connect(&path) {
                        Ok(c) => break c,
                        Err(e) => {
                            if let Some(status) = child.try_wait()? {
                                bail!("the ring keeper exited at start: {status}");
                            }
                            if since.elapsed() > START_TIMEOUT {
                                let _ = child.kill();
                                return Err(e).context(format!("the ring keeper did not answer on {}", path.display()));
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                };
                tracing::info!(pid = child.id(), socket = %path.display(), "started the ring keeper");
                (conn, Some(child))
            }
        };
        let mut keeper = Keeper { conn, state_dir: state_dir.to_path_buf(), child, dir_identity: dir_identity(state_dir)? };
        let since = Instant::now();
        loop {
            match keeper.hello() {
                Ok(kept) => return Ok((keeper, kept)),
                // The keeper still serves the last rilld, whose end is
                // not closed yet (it is exiting): connect again.
                Err(_) if since.elapsed() < START_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(20));
                    keeper.conn = Self::connect(&path)?;
                }
                Err(e) => return Err(e).context(format!("the ring keeper on {} serves another rilld", path.display())),
            }
        }
    }

    fn connect(path: &Path) -> Result<OwnedFd> {
        let fd = seqpacket()?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        let cred = getsockopt(&fd, sockopt::PeerCredentials)?;
        if cred.uid() != nix::unistd::geteuid().as_raw() {
            bail!("{} is served by uid {}, not rilld's", path.display(), cred.uid());
        }
        Ok(fd)
    }

    fn hello(&self) -> Result<Vec<Kept>> {
        send(&self.conn, b"H", &[])?;
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let (n, fds) = recv(&self.conn, &mut buf)?;
            match &buf[..n] {
                [] => bail!("the ring keeper closed the connection while listing its rings"),
                [b'E'] => return Ok(kept),
                [b'K', keep, name @ ..] => {
                    let name = String::from_utf8_lossy(name).into_owned();
                    let files = RingFiles::from_all(fds).with_context(|| format!("the ring keeper sent ring {name:?} without its pages"))?;
                    kept.push(Kept { name, keep: *keep != 0, files });
                }
                other => bail!("unexpected message from the ring keeper: {:?}", String::from_utf8_lossy(other)),
            }
        }
    }

    /// Hands the keeper ring `name`'s files (replacing any it had).
    pub fn keep(&mut self, name: &str, keep: bool, files: &RingFiles) -> Result<()> {
        let raw: Vec<RawFd> = files.all().iter().map(|f| f.as_raw_fd()).collect();
        self.send_msg(&keep_message(name, keep), &raw)
    }

    /// Tells the keeper to let ring `name` go.
    pub fn forget(&mut self, name: &str) -> Result<()> {
        let mut m = vec![b'F'];
        m.extend_from_slice(name.as_bytes());
        self.send_msg(&m, &[])
    }

    fn send_msg(&mut self, msg: &[u8], fds: &[RawFd]) -> Result<()> {
        send(&self.conn, msg, fds).map_err(|e| anyhow::anyhow!("the ring keeper is gone ({e})"))
    }

    /// Whether the keeper is still there (it never writes first: a
    /// readable or hung-up connection means it is gone). Reaps a keeper
    /// this rilld started.
    pub fn alive(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return false;
            }
        }
        let mut pfd = [PollFd::new(self.conn.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut pfd, PollTimeout::ZERO) {
            Ok(0) => true,
            Ok(_) => false,
            Err(_) => true,
        }
    }

    /// Starts a new keeper after the last one died (killed: the rings it
    /// held are still held by this rilld) and hands it `rings`.
    pub fn restart<'a>(&mut self, rings: impl Iterator<Item = (&'a str, bool, &'a RingFiles)>) -> Result<()> {
        if dir_identity(&self.state_dir).ok() != Some(self.dir_identity) {
            bail!("the state directory {} was removed or replaced; no keeper is started in a directory that is not rilld's", self.state_dir.display());
        }
        let (fresh, kept) = Keeper::start(&self.state_dir)?;
        drop(kept); // a keeper that answered had nothing we do not hold
        *self = fresh;
        for (name, keep, files) in rings {
            self.keep(name, keep, files)?;
        }
        Ok(())
    }
}

/// The keeper process: serves rilld on `path` until nothing is left to
/// keep (see the module documentation).
pub fn run(path: &Path) -> Result<()> {
    // Nothing inherited stays open (a pipe of whoever started rilld would
    // never see its end while the keeper lives).
    // SAFETY: close_range takes plain integers; fds 0-2 are /dev/null.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    // rilld blocks SIGTERM and SIGINT in its threads (a signalfd reads
    // them); a child inherits the mask. The keeper dies of them.
    nix::sys::signal::SigSet::all().thread_unblock()?;
    raise_open_file_limit();
    let _ = std::fs::remove_file(path);
    let listener = seqpacket()?;
    bind(listener.as_raw_fd(), &UnixAddr::new(path)?).with_context(|| format!("binding {}", path.display()))?;
    let me = std::fs::metadata(path)?;
    let identity = (me.dev(), me.ino());
    listen(&listener, Backlog::new(4)?)?;
    if let Some(dir) = path.parent() {
        let _ = std::fs::write(dir.join(PID_FILE), format!("{}\n", std::process::id()));
    }
    let uid = nix::unistd::geteuid().as_raw();
    let mut held: BTreeMap<String, (bool, Vec<OwnedFd>)> = BTreeMap::new();
    let mut conn: Option<OwnedFd> = None;
    let mut served = false;
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let ours = std::fs::metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == identity);
        if !ours {
            return Ok(()); // the state directory went away: nobody can reach us
        }
        if conn.is_none() && held.is_empty() && (served || started.elapsed() > FIRST_CONTACT) {
            return Ok(());
        }
        let mut pfds = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if let Some(c) = &conn {
            pfds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        nix::poll::poll(&mut pfds, PollTimeout::from(1000u16))?;
        let accept_ready = pfds[0].revents().is_some_and(|r| !r.is_empty());
        let conn_ready = pfds.get(1).and_then(|p| p.revents()).is_some_and(|r| !r.is_empty());
        drop(pfds);
        if conn_ready {
            let c = conn.as_ref().expect("polled");
            match recv(c, &mut buf) {
                Ok((0, _)) | Err(_) => conn = None,
                Ok((n, fds)) => match &buf[..n] {
                    [b'H'] => {
                        for (name, (keep, fds)) in &held {
                            let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                            if send(c, &keep_message(name, *keep), &raw).is_err() {
                                break;
                            }
                        }
                        let _ = send(c, b"E", &[]);
                    }
                    [b'K', keep, name @ ..] if fds.len() >= 4 => {
                        held.insert(String::from_utf8_lossy(name).into_owned(), (*keep != 0, fds));
                    }
                    [b'F', name @ ..] => {
                        held.remove(&*String::from_utf8_lossy(name));
                    }
                    _ => conn = None, // not rilld's protocol: drop the peer
                },
            }
        }
        if accept_ready {
            if let Ok(fd) = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new fd that nothing else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // Only one rilld at a time: a new one replaces the last
                // one once that one is gone (it connects again until then).
                let last_gone = conn.as_ref().is_none_or(hung_up);
                if last_gone && getsockopt(&fd, sockopt::PeerCredentials).is_ok_and(|c| c.uid() == uid) {
                    conn = Some(fd);
                    served = true;
                }
            }
        }
    }
}

/// Whether the peer of `fd` closed its end.
fn hung_up(fd: &OwnedFd) -> bool {
    let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    nix::poll::poll(&mut pfd, PollTimeout::ZERO).is_ok_and(|n| n > 0 && pfd[0].revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)))
}

fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}
