//! Sending and receiving control messages with fds over a `SOCK_SEQPACKET`
//! Unix socket.
//!
//! Every received fd becomes an [`OwnedFd`] at once, so fds that arrive
//! where none were expected are closed when the caller drops them. A
//! message longer than [`MAX_MESSAGE_LEN`] or carrying more than
//! [`MAX_FDS`] fds is an error (the kernel truncates it; we say so).

use crate::{MAX_FDS, MAX_MESSAGE_LEN};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use thiserror::Error;

/// Most fds Linux passes in one SCM_RIGHTS message.
const SCM_MAX_FD: usize = 253;

/// Why a socket operation failed.
#[derive(Debug, Error)]
pub enum WireError {
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The message did not fit the buffer or carried too many fds.
    #[error("message truncated by the kernel (over {MAX_MESSAGE_LEN} bytes or {MAX_FDS} fds)")]
    Truncated,
    /// Nothing to read on a non-blocking socket.
    #[error("would block")]
    WouldBlock,
    /// A system call failed.
    #[error("{op}: {source}")]
    Io {
        /// Which call.
        op: &'static str,
        /// The error.
        source: nix::Error,
    },
}

fn io(op: &'static str) -> impl FnOnce(nix::Error) -> WireError {
    move |source| WireError::Io { op, source }
}

/// A received message.
#[derive(Debug)]
pub struct Received {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The fds that came with it.
    pub fds: Vec<OwnedFd>,
}

/// Creates a listening SEQPACKET socket at `path` (removing a stale socket
/// file first), non-blocking if asked.
pub fn listen(path: &Path, nonblocking: bool) -> Result<OwnedFd, WireError> {
    let mut flags = SockFlag::SOCK_CLOEXEC;
    if nonblocking {
        flags |= SockFlag::SOCK_NONBLOCK;
    }
    let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, flags, None).map_err(io("socket"))?;
    let _ = std::fs::remove_file(path);
    let addr = UnixAddr::new(path).map_err(io("socket path"))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(io("bind"))?;
    socket::listen(&fd, Backlog::new(128).map_err(io("listen"))?).map_err(io("listen"))?;
    Ok(fd)
}

/// Accepts one connection (non-blocking, close-on-exec).
pub fn accept(listener: BorrowedFd<'_>) -> Result<OwnedFd, WireError> {
    match socket::accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
        // SAFETY-free: accept4 returned a new fd that nobody else owns.
        Ok(fd) => Ok(owned(fd)),
        Err(nix::Error::EAGAIN) => Err(WireError::WouldBlock),
        Err(e) => Err(WireError::Io { op: "accept", source: e }),
    }
}

/// Connects to the daemon's socket (blocking).
pub fn connect(path: &Path) -> Result<OwnedFd, WireError> {
    let fd = socket::socket(AddressFamily::Unix, SockType::SeqPacket, SockFlag::SOCK_CLOEXEC, None).map_err(io("socket"))?;
    let addr = UnixAddr::new(path).map_err(io("socket path"))?;
    socket::connect(fd.as_raw_fd(), &addr).map_err(io("connect"))?;
    Ok(fd)
}

/// The peer's credentials: (pid, uid, gid).
pub fn peer_credentials(fd: BorrowedFd<'_>) -> Result<(u32, u32, u32), WireError> {
    let c = socket::getsockopt(&fd, sockopt::PeerCredentials).map_err(io("SO_PEERCRED"))?;
    Ok((c.pid() as u32, c.uid(), c.gid()))
}

/// Sends one message with `fds`.
pub fn send(fd: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), WireError> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(bytes)];
    // A signal (or task work) interrupting the call is not a failure.
    let sent = loop {
        match socket::sendmsg::<()>(fd.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(nix::Error::EINTR) => continue,
            other => break other,
        }
    };
    match sent {
        Ok(_) => Ok(()),
        Err(nix::Error::EPIPE) | Err(nix::Error::ECONNRESET) => Err(WireError::Closed),
        Err(e) => Err(WireError::Io { op: "sendmsg", source: e }),
    }
}

/// Receives one message. Returns `Closed` at end of stream, `WouldBlock`
/// on a non-blocking socket with nothing to read.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> Result<Received, WireError> {
    buf.resize(MAX_MESSAGE_LEN + 1, 0);
    // Room for the most fds the kernel passes in one message (SCM_MAX_FD),
    // so it never truncates them: every fd sent arrives, becomes an
    // OwnedFd, and is closed if unexpected (a truncated control message
    // would leave them open in our table with no way to close them).
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf.as_mut_slice())];
    let msg = loop {
        match socket::recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            // A signal interrupting the wait is not a failure: wait again.
            Err(nix::Error::EINTR) => continue,
            Ok(m) => break m,
            Err(nix::Error::EAGAIN) => return Err(WireError::WouldBlock),
            Err(nix::Error::ECONNRESET) => return Err(WireError::Closed),
            Err(e) => return Err(WireError::Io { op: "recvmsg", source: e }),
        }
    };
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(io("cmsgs"))? {
        if let ControlMessageOwned::ScmRights(list) = c {
            fds.extend(list.into_iter().map(owned));
        }
    }
    let n = msg.bytes;
    let truncated = msg.flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || fds.len() > MAX_FDS;
    if n == 0 && fds.is_empty() && !truncated {
        return Err(WireError::Closed);
    }
    if truncated || n > MAX_MESSAGE_LEN {
        return Err(WireError::Truncated);
    }
    Ok(Received { bytes: buf[..n].to_vec(), fds })
}

/// Takes ownership of an fd the kernel just gave us.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by accept4 or received with
    // SCM_RIGHTS: it is open and owned by nobody else in this process.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Duplicates an fd for sending (the original stays with its owner).
pub fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}
