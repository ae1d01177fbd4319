//! rilld end to end over its socket, speaking the protocol by hand: opens,
//! fd passing, read-only subscribers, refusals, malformed requests, the
//! log of a persisted overwrite stream.

use rill_protocol::{self as protocol, Durability, ErrorCode, Policy, Request, Response, StartAt, StreamOptions};
use rill_protocol::wire;
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
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--data-dir")
            .arg(dir.join("data"))
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
    open_pub_with(c, name, options())
}

fn open_pub_with(c: &mut Conn, name: &str, options: StreamOptions) -> Ring {
    open_pub_handle(c, name, options).0
}

/// A publisher's ring and its handle.
fn open_pub_handle(c: &mut Conn, name: &str, options: StreamOptions) -> (Ring, u64) {
    let (resp, mut fds) = c.call(&Request::OpenPublisher { stream: name.into(), create: Some(options), exclusive: false });
    let Response::Publisher { info, handle, slots_epoch } = resp else { panic!("{resp:?}") };
    assert_eq!(fds.len(), 3 + info.slot_count as usize);
    let daemon = fds.pop().unwrap();
    let slots: Vec<_> = fds.drain(2..).map(|f| Some((f, Access::ReadOnly))).collect();
    let wake = fds.pop().unwrap();
    let ring = fds.pop().unwrap();
    let ring = Ring::from_fds(ring, Access::ReadWrite, slots, (wake, Access::ReadWrite), (daemon, Access::ReadOnly)).unwrap();
    ring.set_slots_epoch(slots_epoch);
    (ring, handle)
}

/// What the client library does when an offer comes back back-pressured:
/// if slots got fresh pages since the publisher mapped its own, maps the
/// new ones (`SlotPages`). Returns whether it did.
fn remap_if_stale(c: &mut Conn, ring: &Ring, handle: u64) -> bool {
    if !ring.slots_stale() {
        return false;
    }
    let (resp, fds) = c.call(&Request::SlotPages { handle });
    let Response::SlotPages { slots_epoch } = resp else { panic!("{resp:?}") };
    ring.remap_slot_pages(&fds, slots_epoch).unwrap();
    true
}

fn open_sub(c: &mut Conn, name: &str) -> (Ring, u32, u64) {
    let (ring, slot, position, _) = open_sub_keeping_slot_page(c, name);
    (ring, slot, position)
}

/// Also returns the fd of the subscriber's own slot page.
fn open_sub_keeping_slot_page(c: &mut Conn, name: &str) -> (Ring, u32, u64, OwnedFd) {
    let (resp, mut fds) = c.call(&Request::OpenSubscriber { stream: name.into(), start: StartAt::Latest, create: None });
    let Response::Subscriber { slot, position, info, .. } = resp else { panic!("{resp:?}") };
    assert_eq!(fds.len(), 4);
    let daemon = fds.pop().unwrap();
    let own = fds.pop().unwrap();
    let page = own.try_clone().unwrap();
    let wake = fds.pop().unwrap();
    let ring = fds.pop().unwrap();
    let mut own = Some(own);
    let slots = (0..info.slot_count).map(|i| if i == slot { own.take().map(|f| (f, Access::ReadWrite)) } else { None }).collect();
    (Ring::from_fds(ring, Access::ReadOnly, slots, (wake, Access::ReadWrite), (daemon, Access::ReadOnly)).unwrap(), slot, position, page)
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

fn info(c: &mut Conn, name: &str) -> protocol::StreamInfo {
    let (resp, _) = c.call(&Request::StreamInfo { stream: name.into() });
    let Response::Info { info } = resp else { panic!("{resp:?}") };
    info
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "watchdog: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A persisted overwrite stream: rilld creates it (it used to refuse), its
/// archiver's slot is the only holding one, an ordinary subscriber that
/// never reads holds nobody back, and `LogSegments` hands out the segment
/// files from any position still kept (`Gone` for one retention deleted),
/// which hold exactly the frames published from there on. A client that
/// marks its own slot holding loses it.
#[test]
fn persisted_overwrite_stream_holds_only_at_the_archiver_and_serves_its_log() {
    let d = Daemon::start("logsegs", &["--segment-bytes", "1048576", "--retention-bytes", "2097152"]);
    let mut c = Conn::hello(&d.socket);
    let name = "ow.persisted";
    let options = StreamOptions { policy: Policy::Overwrite, persist: Some(Durability::None), ..options() };
    let (pub_ring, pub_handle) = open_pub_handle(&mut c, name, options);
    let (_sub_ring, idle_slot, _, page) = open_sub_keeping_slot_page(&mut c, name);
    let mut publ = pub_ring.shared_publication().unwrap();
    let mut positions = Vec::new();
    for i in 0..50_000u32 {
        // Back-pressured by the archiver only, and only briefly.
        let p = loop {
            match publ.offer(&[i as u8; 100]) {
                Ok(p) => break p,
                Err(rill_shm::ring::ClaimError::BackPressured) => std::thread::yield_now(),
                Err(e) => panic!("offer: {e}"),
            }
        };
        positions.push(p);
    }
    let tail = pub_ring.tail();
    wait_for("the archiver catches up", || info(&mut c, name).durable_position == tail);
    let i = info(&mut c, name);
    let holding: Vec<_> = i.subscribers.iter().filter(|s| s.holding).collect();
    assert_eq!(holding.len(), 1, "{:?}", i.subscribers);
    assert_eq!(holding[0].pid, d.child.id());
    let idle = i.subscribers.iter().find(|s| s.slot == idle_slot).expect("the idle subscriber is listed");
    assert!(!idle.holding && idle.lag_bytes == tail, "the idle subscriber never read, yet the publisher went on: {idle:?}");
    // From a message in the last 10 000 (retention keeps 2 MiB of 6).
    let k = positions.len() - 9_876;
    let (resp, fds) = c.call(&Request::LogSegments { stream: name.into(), from: positions[k] });
    let Response::LogSegments { log } = resp else { panic!("{resp:?}") };
    assert_eq!(fds.len(), log.segments.len());
    assert!(log.segments[0] <= positions[k] && log.start_batch <= positions[k], "{log:?}");
    assert_eq!(log.archived, tail, "caught up: the archiver's slot is at the tail");
    let mut got = Vec::new();
    let mut end = positions[k];
    for (n, (first, fd)) in log.segments.iter().zip(fds).enumerate() {
        let file = std::fs::File::from(fd);
        let mut r = if n == 0 {
            rill_store::FrameReader::at(file, log.start_offset, positions[k]).expecting(log.start_batch)
        } else {
            assert_eq!(*first, end, "segments are contiguous");
            rill_store::FrameReader::new(file, *first)
        };
        while let Some(f) = r.next_frame().unwrap() {
            assert_eq!(f.header.position, end);
            end += f.header.span() as u64;
            if f.header.kind == rill_shm::frame::FrameKind::Data {
                got.push((f.header.position, f.payload[0]));
            }
        }
    }
    let want: Vec<_> = positions[k..].iter().enumerate().map(|(j, &p)| (p, (k + j) as u8)).collect();
    assert_eq!(got, want);
    assert_eq!(end, tail);
    // The start of the stream was deleted by retention.
    wait_for("retention deletes the first segment", || {
        !d.dir.join("data").join(name).join(rill_store::segment_file_name(0)).exists()
    });
    let (resp, fds) = c.call(&Request::LogSegments { stream: name.into(), from: 0 });
    assert!(fds.is_empty());
    assert!(matches!(&resp, Response::Error { code: ErrorCode::Gone, message } if message.contains("retention")), "{resp:?}");
    // Not persisted, unknown, before Hello.
    drop(open_pub(&mut c, "plain"));
    let (resp, _) = c.call(&Request::LogSegments { stream: "plain".into(), from: 0 });
    assert!(matches!(resp, Response::Error { code: ErrorCode::Invalid, .. }), "{resp:?}");
    let (resp, _) = c.call(&Request::LogSegments { stream: "nope".into(), from: 0 });
    assert!(matches!(resp, Response::Error { code: ErrorCode::UnknownStream, .. }), "{resp:?}");
    let (resp, _) = Conn::new(&d.socket).call(&Request::LogSegments { stream: name.into(), from: 0 });
    assert!(matches!(resp, Response::Error { code: ErrorCode::NoHello, .. }), "{resp:?}");
    // A client that writes SLOT_HOLDING into its own slot page (it may
    // write it) is taken back by the janitor: only the archiver holds.
    use std::os::unix::fs::FileExt;
    let page = std::fs::File::from(page);
    page.write_all_at(&rill_shm::layout::SLOT_HOLDING.to_le_bytes(), 0).unwrap();
    wait_for("the client's holding slot is taken back", || {
        info(&mut c, name).subscribers.iter().all(|s| s.slot != idle_slot)
    });
    // Its slot got a fresh page: the publisher maps it before going on
    // past what it had been granted (it must, or stay back-pressured).
    let mut remapped = false;
    for _ in 0..1000 {
        while publ.offer(&[0; 100]).is_err() {
            remapped |= remap_if_stale(&mut c, &pub_ring, pub_handle);
            std::thread::yield_now();
        }
    }
    assert!(remapped, "the taken-back slot got no fresh page");
    // The page the client kept is no longer the slot's: what it writes
    // there reaches nobody.
    page.write_all_at(&rill_shm::layout::SLOT_ACTIVE.to_le_bytes(), 0).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(info(&mut c, name).subscribers.iter().all(|s| s.slot != idle_slot), "the old page still counts");
}
