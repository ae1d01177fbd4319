//! The wire framing as rilld runs it on every client message: arbitrary
//! bytes (and 0..=7 fds) sent on a `SOCK_SEQPACKET` socket pair, read back
//! with `rill_protocol::wire::recv` (message boundaries, the kernel's
//! truncation flags, SCM_RIGHTS fds turned into `OwnedFd`s at once), then
//! decoded with `decode_request` and `decode_response`. Checks that what
//! fits arrives whole with its fds, that an oversize message is
//! `Truncated`, and that no fd leaks (the count of open fds is the same
//! after every iteration).
//!
//! Input: byte 0 = fds to attach (low 3 bits) and whether to pad the
//! message past `MAX_MESSAGE_LEN` (bit 3); the rest is the message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nix::sys::socket::{self, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType};
use rill_protocol::wire::{self, WireError};
use rill_protocol::{decode_request, decode_response, MAX_MESSAGE_LEN};
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

struct Pair {
    tx: OwnedFd,
    rx: OwnedFd,
    /// An fd to pass (each send passes copies of it).
    passed: OwnedFd,
}

fn pair() -> &'static Pair {
    static PAIR: OnceLock<Pair> = OnceLock::new();
    PAIR.get_or_init(|| {
        let (tx, rx) = socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK)
            .expect("socketpair");
        // Room for the largest message plus slack in the socket buffers.
        for fd in [&tx, &rx] {
            let _ = socket::setsockopt(fd, socket::sockopt::SndBuf, &(4 << 20));
            let _ = socket::setsockopt(fd, socket::sockopt::RcvBuf, &(4 << 20));
        }
        let passed = std::fs::File::open("/dev/null").expect("/dev/null").into();
        Pair { tx, rx, passed }
    })
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, body)) = data.split_first() else { return };
    let p = pair();
    let nfds = (control & 7) as usize;
    let mut msg = body.to_vec();
    if control & 8 != 0 {
        // Past the limit by 1..=256 bytes.
        msg.resize(MAX_MESSAGE_LEN + 1 + body.first().map_or(0, |&b| b as usize), 0xA5);
    }
    let before = open_fds();
    let raw: Vec<RawFd> = vec![p.passed.as_raw_fd(); nfds];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [IoSlice::new(&msg)];
    socket::sendmsg::<()>(p.tx.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).expect("sendmsg on a socket pair");

    let mut buf = Vec::new();
    match wire::recv(p.rx.as_fd(), &mut buf) {
        Ok(got) => {
            assert!(msg.len() <= MAX_MESSAGE_LEN, "{} bytes accepted", msg.len());
            assert_eq!(got.bytes, msg);
            assert_eq!(got.fds.len(), nfds);
            let _ = decode_request(&got.bytes);
            let _ = decode_response(&got.bytes);
        }
        Err(WireError::Truncated) => assert!(msg.len() > MAX_MESSAGE_LEN, "{} bytes called truncated", msg.len()),
        // An empty message without fds reads as end of stream (as a
        // peer's close does on SEQPACKET).
        Err(WireError::Closed) => assert!(msg.is_empty() && nfds == 0, "closed on {} bytes, {nfds} fds", msg.len()),
        Err(e) => panic!("recv: {e}"),
    }
    // Nothing left queued, and every fd received was closed.
    assert!(matches!(wire::recv(p.rx.as_fd(), &mut buf), Err(WireError::WouldBlock)));
    assert_eq!(open_fds(), before, "fds leaked");
});
