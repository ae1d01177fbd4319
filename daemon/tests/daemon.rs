//! rilld end to end over its socket, speaking the protocol by hand: opens,
//! fd passing, read-only subscribers, refusals, malformed requests.

use rill::protocol::{self, ErrorCode, Request, Response, StartAt, StreamOptions};
use rill::wire;
use rill_shm::ring::Ring;
use rill_shm::Access;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(tag: &str, extra: &[&str]) -> Daemon {
        let dir = PathBuf::from(format!("/dev/shm/rilld-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("rilld.sock");
        let child = Command::new(env!("CARGO_BIN_EXE_rilld"))
            .arg("--socket")
            .arg(&socket)
            .arg("--ring-dir")
            .arg(dir.join("rings"))
            .arg("--page-dir")
            .arg(dir.join("pages"))
            .args(extra)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while wire::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "rilld did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        Daemon { child, dir, socket }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Conn {
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Conn {
    fn new(socket: &Path) -> Conn {
        Conn { fd: wire::connect(socket).unwrap(), buf: Vec::new() }
    }

    fn raw(&mut self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> (Response, Vec<OwnedFd>) {
        wire::send(self.fd.as_fd(), bytes, fds).unwrap();
        let r = wire::recv(self.fd.as_fd(), &mut self.buf).unwrap();
        (protocol::decode_response(&r.bytes).unwrap(), r.fds)
    }

    fn call(&mut self, req: &Request) -> (Response, Vec<OwnedFd>) {
        self.raw(&protocol::encode_request(req).unwrap(), &[])
    }

    fn hello(socket: &Path) -> Conn {
        let mut c = Conn::new(socket);
        assert!(matches!(c.call(&Request::Hello { client_name: "test".into() }).0, Response::Hello { .. }));
        c
    }
}

fn options() -> StreamOptions {
    StreamOptions { capacity: 64 << 10, max_message_len: 1024, policy: protocol::Policy::BackPressure, keep: false, persist: None }
}

fn open_pub(c: &mut Conn, name: &str) -> Ring {
    let (resp, mut fds) = c.call(&Request::OpenPublisher { stream: name.into(), create: Some(options()), exclusive: false });
    let Response::Publisher { info, .. } = resp else { panic!("{resp:?}") };
    assert_eq!(fds.len(), 2 + info.slot_count as usize);
    let slots: Vec<_> = fds.drain(2..).map(|f| Some((f, Access::ReadOnly))).collect();
    let wake = fds.pop().unwrap();
    let ring = fds.pop().unwrap();
    Ring::from_fds(ring, Access::ReadWrite, slots, (wake, Access::ReadWrite)).unwrap()
}

fn open_sub(c: &mut Conn, name: &str) -> (Ring, u32, u64) {
    let (resp, mut fds) = c.call(&Request::OpenSubscriber { stream: name.into(), start: StartAt::Latest, create: None });
    let Response::Subscriber { slot, position, info, .. } = resp else { panic!("{resp:?}") };
    assert_eq!(fds.len(), 3);
    let own = fds.pop().unwrap();
    let wake = fds.pop().unwrap();
    let ring = fds.pop().unwrap();
    let mut own = Some(own);
    let slots = (0..info.slot_count).map(|i| if i == slot { own.take().map(|f| (f, Access::ReadWrite)) } else { None }).collect();
    (Ring::from_fds(ring, Access::ReadOnly, slots, (wake, Access::ReadWrite)).unwrap(), slot, position)
}

#[test]
fn publish_and_subscribe_through_rilld() {
    let d = Daemon::start("pubsub", &[]);
    let mut c = Conn::hello(&d.socket);
    let pub_ring = open_pub(&mut c, "orders");
    let (sub_ring, slot, position) = open_sub(&mut c, "orders");
    assert!(sub_ring.is_read_only());
    let mut sub = sub_ring.subscriber_on_slot(slot, position).unwrap();
    let mut publ = pub_ring.shared_publication().unwrap();
    for i in 0..10_000u32 {
        while publ.offer(&i.to_le_bytes()).is_err() {
            sub.poll(1000, |_| ()).unwrap();
        }
    }
    let (resp, _) = c.call(&Request::StreamInfo { stream: "orders".into() });
    let Response::Info { info } = resp else { panic!("{resp:?}") };
    assert_eq!(info.publishers, 1);
    assert_eq!(info.subscribers.len(), 1);
    assert_eq!(info.subscribers[0].pid, std::process::id());
    let (resp, _) = c.call(&Request::Health);
    assert!(matches!(resp, Response::Health { healthy: true, .. }), "{resp:?}");
}

#[test]
fn malformed_requests_get_errors_and_the_daemon_serves_on() {
    let d = Daemon::start("malformed", &[]);
    let mut c = Conn::new(&d.socket);
    let good = protocol::encode_request(&Request::Health).unwrap();
    let mut bad_version = good.clone();
    bad_version[2] = 77;
    let mut huge_len = good.clone();
    huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let cases: Vec<Vec<u8>> = vec![
        vec![1, 2, 3],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        good[..good.len() - 1].to_vec(),
        huge_len,
        bad_version.clone(),
        [good.clone(), vec![0; 9]].concat(),
        vec![0xff; 1000],
    ];
    for bytes in &cases {
        let (resp, fds) = c.raw(bytes, &[]);
        assert!(fds.is_empty());
        assert!(matches!(resp, Response::Error { .. }), "{bytes:?} -> {resp:?}");
    }
    let (resp, _) = c.raw(&bad_version, &[]);
    assert!(matches!(resp, Response::Error { code: ErrorCode::UnsupportedVersion, .. }));
    // fds where none are expected
    let f = std::fs::File::open("/dev/null").unwrap();
    let (resp, _) = c.raw(&good, &[f.as_fd()]);
    assert!(matches!(resp, Response::Error { code: ErrorCode::Malformed, .. }), "{resp:?}");
    // opens before hello
    let (resp, _) = c.call(&Request::OpenPublisher { stream: "x".into(), create: Some(options()), exclusive: false });
    assert!(matches!(resp, Response::Error { code: ErrorCode::NoHello, .. }));
    // bad names, unknown streams and handles
    let mut c = Conn::hello(&d.socket);
    for name in ["", "../etc", "a/b", ".x"] {
        let (resp, _) = c.call(&Request::OpenPublisher { stream: name.into(), create: Some(options()), exclusive: false });
        assert!(matches!(resp, Response::Error { code: ErrorCode::Invalid, .. }), "{name:?} {resp:?}");
    }
    let (resp, _) = c.call(&Request::OpenSubscriber { stream: "nope".into(), start: StartAt::Latest, create: None });
    assert!(matches!(resp, Response::Error { code: ErrorCode::UnknownStream, .. }));
    let (resp, _) = c.call(&Request::Close { handle: 12345 });
    assert!(matches!(resp, Response::Error { code: ErrorCode::UnknownHandle, .. }));
    // An empty datagram reads as end-of-stream on SOCK_SEQPACKET: the daemon
    // closes that connection (and only that one).
    let mut empty = Conn::new(&d.socket);
    wire::send(empty.fd.as_fd(), &[], &[]).unwrap();
    assert!(matches!(wire::recv(empty.fd.as_fd(), &mut empty.buf), Err(wire::WireError::Closed)));
    // and a normal client is still served correctly
    let mut ok = Conn::hello(&d.socket);
    let ring = open_pub(&mut ok, "still-fine");
    ring.shared_publication().unwrap().offer(b"yes").unwrap();
}
