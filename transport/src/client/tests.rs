//! The client against a small in-process stand-in for `rilld` that speaks
//! the protocol over a real socket and hands over real sealed rings, so
//! open, close, heartbeat, fd checks and reconnect-and-resume are tested
//! without the daemon crate (which depends on this one). The cross-process
//! tests with the real daemon live in the workspace's `tests/`.

use super::*;
use crate::protocol::{self, ErrorCode, Policy, SubscriberInfo};
use crate::wire::{self, WireError};
use rill_shm::ring::{Ring, RingConfig, RingFiles, Start};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rill-client-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fake daemons' ring keeper: the files of every ring, by the fake's
/// directory and the stream's name, so that a fake daemon started after
/// another on the same directory takes its rings back, as rilld does.
static KEEPER: Mutex<BTreeMap<(PathBuf, String), RingFiles>> = Mutex::new(BTreeMap::new());

/// `f` of the files the keeper holds for ring `name` of directory `dir`.
fn kept<T>(dir: &Path, name: &str, f: impl FnOnce(&RingFiles) -> std::io::Result<T>) -> Option<T> {
    KEEPER.lock().unwrap().get(&(dir.to_path_buf(), name.to_owned())).map(|files| f(files).unwrap())
}

/// What the fake daemon does wrong on purpose.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Sends one fd too few with every open reply.
    ShortFds,
}

/// The stand-in daemon: one thread, non-blocking sockets, a 1 ms nap when
/// idle. Dropping it closes every socket at once, as `kill -9` would.
struct FakeDaemon {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    requests: Arc<Mutex<Vec<Request>>>,
}

struct FakeState {
    dir: PathBuf,
    rings: BTreeMap<String, Ring>,
    next_handle: u64,
    fault: Fault,
}

impl FakeDaemon {
    fn start(socket: &Path, dir: &Path, first_handle: u64, fault: Fault) -> FakeDaemon {
        let listener = wire::listen(socket, true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let mut st = FakeState { dir: dir.to_owned(), rings: BTreeMap::new(), next_handle: first_handle, fault };
        let (stop2, requests2) = (stop.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            let mut conns: Vec<OwnedFd> = Vec::new();
            let mut buf = Vec::new();
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(fd) = wire::accept(listener.as_fd()) {
                    conns.push(fd);
                }
                let mut idle = true;
                conns.retain(|c| match wire::recv(c.as_fd(), &mut buf) {
                    Ok(r) => {
                        idle = false;
                        let req = protocol::decode_request(&r.bytes).unwrap();
                        requests2.lock().unwrap().push(req.clone());
                        let (resp, fds) = st.handle(req);
                        let bytes = protocol::encode_response(&resp).unwrap();
                        wire::send(c.as_fd(), &bytes, &wire::borrow_all(&fds)).is_ok()
                    }
                    Err(WireError::WouldBlock) => true,
                    Err(_) => false,
                });
                if idle {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        FakeDaemon { stop, thread: Some(thread), requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeDaemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
    }
}

impl FakeState {
    fn handle(&mut self, req: Request) -> (Response, Vec<OwnedFd>) {
        let none = Vec::new();
        match req {
            Request::Hello { .. } => (Response::Hello { daemon_version: "fake".into(), heartbeat_ms: 20 }, none),
            Request::Heartbeat => (Response::HeartbeatAck, none),
            Request::Close { .. } => (Response::Closed, none),
            Request::Health => (Response::Health { healthy: true, detail: "fake".into() }, none),
            Request::ListStreams | Request::ListStreamsPage { after: None } => {
                let streams = self.rings.keys().cloned().collect::<Vec<_>>();
                (Response::StreamsPage { streams: streams.iter().map(|n| self.info(n)).collect(), next: None }, none)
            }
            Request::Resume { handles } => {
                let ids = handles.iter().map(|_| self.handle_id()).collect();
                (Response::Resumed { handles: ids }, none)
            }
            Request::OpenPublisher { stream, create, .. } => {
                if let Err(e) = self.ring(&stream, create) {
                    return (e, none);
                }
                let mut fds = kept(&self.dir, &stream, |f| f.for_publisher()).unwrap();
                self.faulty(&mut fds);
                let slots_epoch = self.rings[&stream].slots_epoch();
                (Response::Publisher { handle: self.handle_id(), info: self.info(&stream), slots_epoch }, fds)
            }
            Request::OpenSubscriber { stream, start, create } => {
                if let Err(e) = self.ring(&stream, create) {
                    return (e, none);
                }
                let start = if start == StartAt::Oldest { Start::Oldest } else { Start::Latest };
                let (slot, position) = self.rings[&stream].attach_subscriber(start, std::process::id()).unwrap();
                let mut fds = kept(&self.dir, &stream, |f| f.for_subscriber(slot)).unwrap();
                self.faulty(&mut fds);
                (Response::Subscriber { handle: self.handle_id(), slot, position, info: self.info(&stream), replay: None, publishers_trusted: true }, fds)
            }
            other => (Response::Error { code: ErrorCode::Internal, message: format!("fake: {other:?}") }, none),
        }
    }

    fn handle_id(&mut self) -> u64 {
        self.next_handle += 1;
        self.next_handle - 1
    }

    fn faulty(&self, fds: &mut Vec<OwnedFd>) {
        if self.fault == Fault::ShortFds {
            fds.pop();
        }
    }

    /// The ring `name`: mapped already, adopted from what the fake's
    /// keeper holds (a fake daemon before this one on the same directory
    /// made it), or created.
    #[allow(clippy::result_large_err)] // a test double: the refusal is the reply itself
    fn ring(&mut self, name: &str, create: Option<StreamOptions>) -> Result<(), Response> {
        if self.rings.contains_key(name) {
            return Ok(());
        }
        let ring = if let Some(ring) = kept(&self.dir, name, |f| Ok(Ring::adopt_sealed(f).unwrap())) {
            ring
        } else {
            let Some(o) = create else {
                return Err(Response::Error { code: ErrorCode::UnknownStream, message: format!("no stream {name:?}") });
            };
            let config = RingConfig { capacity: o.capacity, max_message_len: o.max_message_len, policy: o.policy.into(), slot_count: 4, ..RingConfig::default() };
            let (ring, files) = Ring::create_sealed(name, &config).unwrap();
            KEEPER.lock().unwrap().insert((self.dir.clone(), name.to_owned()), files);
            ring
        };
        self.rings.insert(name.to_owned(), ring);
        Ok(())
    }

    fn info(&self, name: &str) -> StreamInfo {
        let r = &self.rings[name];
        let i = r.info();
        StreamInfo {
            name: name.to_owned(),
            capacity: i.capacity,
            max_message_len: i.max_message_len,
            policy: i.policy.into(),
            page_size: 4096,
            slot_count: i.slot_count,
            tail: r.tail(),
            publishers: 0,
            subscribers: r
                .subscribers()
                .iter()
                .map(|s| SubscriberInfo { slot: s.index, pid: s.pid, position: s.position, lag_bytes: r.tail() - s.position, holding: s.holding })
                .collect(),
            padded_bytes: 0,
            reaped_subscribers: 0,
            keep: false,
            exclusive: false,
            persist: None,
            durable_position: 0,
            disk_bytes: 0,
            archive_error: None,
        }
    }
}

fn client(socket: &Path) -> Client {
    Client::builder().socket(socket).name("test").request_timeout(Duration::from_secs(5)).connect().unwrap()
}

fn small() -> StreamOptions {
    StreamOptions::default().with_capacity(1 << 16).with_max_message_len(1024)
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10); // watchdog only
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn publishes_and_subscribes_through_handed_over_rings() {
    let dir = TempDir::new("pubsub");
    let sock = dir.0.join("d.sock");
    let _daemon = FakeDaemon::start(&sock, &dir.0, 100, Fault::None);
    let c = client(&sock);
    let mut sub = c.subscriber_with("s1", StartAt::Latest, small()).unwrap();
    let mut publ = c.publisher_with("s1", small()).unwrap();
    assert_eq!((sub.stream(), sub.info().capacity), ("s1", 1 << 16));
    for i in 0..1000u32 {
        publ.offer_blocking(&i.to_le_bytes(), Duration::from_secs(5)).unwrap();
        let got = sub.recv(Duration::from_secs(5)).unwrap().expect("message");
        assert_eq!(got, i.to_le_bytes());
    }
    assert_eq!(sub.position(), publ.position());
    assert_eq!(sub.recv(Duration::from_millis(1)).unwrap(), None, "nothing more");
    assert_eq!(c.health().unwrap(), Health { healthy: true, detail: "fake".into() });
    assert_eq!(c.streams().unwrap().len(), 1);
}

#[test]
fn typed_messages_round_trip() {
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
        symbol: String,
    }
    let dir = TempDir::new("typed");
    let sock = dir.0.join("d.sock");
    let _daemon = FakeDaemon::start(&sock, &dir.0, 1, Fault::None);
    let c = client(&sock);
    let mut sub = c.subscriber_with("orders", StartAt::Latest, small()).unwrap();
    let mut publ = c.publisher_with("orders", small()).unwrap();
    publ.send(&Order { id: 1, symbol: "ACME".into() }).unwrap();
    publ.send(&Order { id: 2, symbol: "INIT".into() }).unwrap();
    publ.offer(b"not an archive").unwrap();
    let id = sub.recv_typed_with::<Order, _>(Duration::from_secs(5), |o| o.id.to_native()).unwrap();
    assert_eq!(id, Some(1));
    let owned = sub.recv_typed::<Order>(Duration::from_secs(5)).unwrap();
    assert_eq!(owned, Some(Order { id: 2, symbol: "INIT".into() }));
    let bad = sub.recv_typed::<Order>(Duration::from_secs(5));
    assert!(matches!(bad, Err(crate::RecvError::Decode(_))), "{bad:?}");
    publ.send(&Order { id: 3, symbol: "X".into() }).unwrap();
    let mut seen = Vec::new();
    sub.poll_typed::<Order, _>(10, |m| seen.push(m.unwrap().value.id.to_native())).unwrap();
    assert_eq!(seen, vec![3], "moved past the bad message");
}

#[test]
fn dropping_handles_closes_them_and_the_client_outlives_nothing() {
    let dir = TempDir::new("close");
    let sock = dir.0.join("d.sock");
    let daemon = FakeDaemon::start(&sock, &dir.0, 500, Fault::None);
    let c = client(&sock);
    let publ = c.publisher_with("s", small()).unwrap();
    let sub = c.subscriber_with("s", StartAt::Oldest, small()).unwrap();
    let (hp, hs) = (publ.daemon_handle().unwrap(), sub.daemon_handle().unwrap());
    drop(c); // handles keep the connection alive
    drop(sub);
    drop(publ);
    let closes: Vec<u64> = daemon
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            Request::Close { handle } => Some(handle),
            _ => None,
        })
        .collect();
    assert_eq!(closes, vec![hs, hp]);
}

#[test]
fn wrong_fd_count_is_an_error_and_the_handle_is_closed() {
    let dir = TempDir::new("fds");
    let sock = dir.0.join("d.sock");
    let daemon = FakeDaemon::start(&sock, &dir.0, 7, Fault::ShortFds);
    let c = client(&sock);
    let e = c.publisher_with("s", small()).unwrap_err();
    assert!(matches!(e, ClientError::FdCount { expected: 7, got: 6 }), "{e}");
    let e = c.subscriber_with("s", StartAt::Latest, small()).unwrap_err();
    assert!(matches!(e, ClientError::FdCount { expected: 4, got: 3 }), "{e}");
    let reqs = daemon.requests();
    assert!(reqs.contains(&Request::Close { handle: 7 }) && reqs.contains(&Request::Close { handle: 8 }), "{reqs:?}");
    assert!(c.is_connected());
}

#[test]
fn daemon_refusals_carry_code_and_message() {
    let dir = TempDir::new("refuse");
    let sock = dir.0.join("d.sock");
    let _daemon = FakeDaemon::start(&sock, &dir.0, 1, Fault::None);
    let c = client(&sock);
    let e = c.open_subscriber("missing", StartAt::Latest, None).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::UnknownStream), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
    assert!(matches!(c.open_publisher("bad/name", None), Err(ClientError::Invalid(_))));
    assert!(c.is_connected(), "a refusal keeps the connection");
}

/// The daemon dies (every socket closed at once) while a publisher and a
/// subscriber work; they go on through the ring; a new daemon comes up on
/// the same socket and ring files; the client reconnects by itself,
/// resumes both handles, and no message is lost or duplicated.
#[test]
fn survives_a_daemon_restart_and_resumes_its_handles() {
    let dir = TempDir::new("restart");
    let sock = dir.0.join("d.sock");
    let daemon = FakeDaemon::start(&sock, &dir.0, 1, Fault::None);
    let c = client(&sock);
    let mut sub = c.subscriber_with("s", StartAt::Latest, small().with_policy(Policy::BackPressure)).unwrap();
    let mut publ = c.publisher_with("s", small()).unwrap();
    let slot = sub.slot();
    let mut next_recv = 0u64;
    let mut step = |publ: &mut Publisher, sub: &mut Subscriber, n: u64| {
        publ.offer_blocking(&n.to_le_bytes(), Duration::from_secs(5)).unwrap();
        let got = sub.recv(Duration::from_secs(5)).unwrap().expect("message");
        assert_eq!(u64::from_le_bytes(got.try_into().unwrap()), next_recv);
        next_recv += 1;
    };
    for n in 0..100 {
        step(&mut publ, &mut sub, n);
    }
    drop(daemon);
    for n in 100..200 {
        step(&mut publ, &mut sub, n); // no daemon: the data path does not care
    }
    wait_until("the client to notice", || !c.is_connected());
    assert!(c.health().unwrap_err().is_connection());
    let daemon = FakeDaemon::start(&sock, &dir.0, 1000, Fault::None);
    for n in 200..300 {
        step(&mut publ, &mut sub, n);
    }
    wait_until("reconnect", || c.reconnects() == 1 && c.is_connected());
    let resume = daemon.requests().into_iter().find(|r| matches!(r, Request::Resume { .. }));
    let Some(Request::Resume { handles }) = resume else { panic!("no Resume sent") };
    let kinds: Vec<_> = handles.iter().map(|h| (h.stream.as_str(), h.kind, h.slot)).collect();
    assert_eq!(kinds, vec![("s", HandleKind::Subscriber, slot), ("s", HandleKind::Publisher, 0)]);
    assert_eq!((sub.daemon_handle(), publ.daemon_handle()), (Some(1000), Some(1001)));
    for n in 300..400 {
        step(&mut publ, &mut sub, n);
    }
    wait_until("a heartbeat on the new connection", || daemon.requests().contains(&Request::Heartbeat));
    assert_eq!(next_recv, 400);
}


#[test]
fn socket_path_prefers_a_non_empty_env() {
    assert_eq!(socket_path_from(None), PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(socket_path_from(Some("".into())), PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(socket_path_from(Some("/tmp/x.sock".into())), PathBuf::from("/tmp/x.sock"));
}

#[test]
fn unreachable_socket_is_a_connect_error() {
    let e = Client::connect_to("/nonexistent/rill/rilld.sock").unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.is_connection());
}

#[test]
fn zero_timeout_is_refused_before_connecting() {
    let e = Client::builder().socket("/nonexistent").request_timeout(Duration::ZERO).connect().unwrap_err();
    assert!(matches!(e, ClientError::Invalid(_)), "{e}");
}

#[test]
fn client_and_handles_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Client>();
    send::<Publisher>();
    send::<Subscriber>();
}
