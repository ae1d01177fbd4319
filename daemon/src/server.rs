//! The control agent: accepts clients on the Unix socket, answers their
//! requests, notices when they die or hang, and runs the janitor.
//!
//! Single-threaded, driven by `poll(2)` over the listener, a signalfd
//! (SIGTERM, SIGINT) and every client socket, with a janitor tick. The
//! daemon is never on the data path: clients publish and subscribe in
//! shared memory; only opens, closes and heartbeats come here.
//!
//! A malformed request (bad header, bad body, unexpected fds) gets an
//! `Error` reply and the connection stays open; a client that sends nothing
//! for `client_timeout_ms`, or whose socket fails, is dropped and its
//! subscriber slots freed (so its positions stop holding publishers back),
//! and the reclaimer pads any claim it abandoned.

use crate::config::{Action, Config};
use crate::peer::{peer_groups, Process};
use crate::streams::{ExclusiveHolder, Refusal, SlotOwner, Streams};
use rill_protocol::{self as protocol, ErrorCode, HandleKind, Request, Response, StartAt};
use rill_protocol::wire::{self, WireError};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// How often the janitor runs when nothing else happens.
const TICK: Duration = Duration::from_millis(20);
/// Most messages read from one client per loop (fairness).
const MAX_REQUESTS_PER_CLIENT: usize = 16;
/// Refused connections kept open until their client read why.
const MAX_REFUSED: usize = 64;
/// How long a refused connection is kept open at most.
const REFUSED_LINGER: Duration = Duration::from_secs(1);
/// How long accepting pauses after it ran out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct Handle {
    stream: String,
    kind: HandleKind,
    slot: u32,
    /// An exclusive publisher.
    exclusive: bool,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    fd: OwnedFd,
    /// Its pid in rilld's namespace (0: not visible there), for logs.
    pid: u32,
    /// Its process (a pidfd): liveness and identity.
    process: Process,
    uid: u32,
    gid: u32,
    /// Its supplementary groups.
    groups: Vec<u32>,
    name: String,
    hello: bool,
    last_seen: Instant,
    handles: HashMap<u64, Handle>,
}

/// The daemon's state.
#[derive(Debug)]
pub struct Server {
    config: Config,
    streams: Streams,
    listener: Option<OwnedFd>,
    signals: SignalFd,
    conns: Vec<Conn>,
    next_id: u64,
    started: Instant,
    buf: Vec<u8>,
    /// Connections refused by a limit, kept a moment so that the client
    /// reads why before the socket closes (bounded: [`MAX_REFUSED`]).
    refused: VecDeque<(OwnedFd, Instant)>,
    /// `accept` failed for want of file descriptors: the listener is left
    /// out of `poll` until then (it would report the waiting connection
    /// again at once), and the warning is not repeated before.
    accept_paused_until: Option<Instant>,
}

impl Server {
    /// Binds the socket, adopts existing rings, blocks SIGTERM/SIGINT into a
    /// signalfd.
    pub fn new(config: Config) -> anyhow::Result<Server> {
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        raise_open_file_limit(&config);
        let mut streams = Streams::new(&config)?;
        let adopted = streams.adopt_existing(Duration::from_millis(config.resume_grace_ms));
        let persisted = streams.recover_persisted();
        let listener = bind(&config)?;
        tracing::info!(socket = %config.socket.display(), adopted, persisted, data_dir = %config.data_dir.display(), "rilld listening");
        Ok(Server {
            config,
            streams,
            listener: Some(listener),
            signals,
            conns: Vec::new(),
            next_id: 1,
            started: Instant::now(),
            buf: Vec::new(),
            refused: VecDeque::new(),
            accept_paused_until: None,
        })
    }

    /// Runs until SIGTERM or SIGINT; then stops accepting, answers what was
    /// already sent, and returns.
    pub fn run(&mut self) -> anyhow::Result<()> {
        let mut last_tick = Instant::now();
        loop {
            let ready = self.wait(TICK)?;
            if ready.signal {
                let sig = self.signals.read_signal().ok().flatten().map(|s| s.ssi_signo);
                tracing::info!(signal = ?sig, "stopping: no new connections; answering pending requests");
                self.stop_accepting();
                for i in 0..self.conns.len() {
                    self.serve(i);
                }
                self.conns.clear();
                tracing::info!("rilld stopped; rings stay for the next daemon to adopt");
                return Ok(());
            }
            if ready.accept {
                self.accept_all();
            }
            for i in ready.clients.into_iter().rev() {
                if !self.serve(i) {
                    let c = self.conns.swap_remove(i);
                    self.drop_conn(c, "connection closed", false);
                }
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick();
            }
            // Slots given fresh pages (released, revoked, reaped) meanwhile:
            // the keeper must hold the pages in use.
            self.streams.flush_keeper();
        }
    }

    fn wait(&self, timeout: Duration) -> anyhow::Result<Ready> {
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        let paused = self.accept_paused_until.is_some_and(|until| Instant::now() < until);
        let listening = self.listener.as_ref().filter(|_| !paused);
        if let Some(l) = listening {
            fds.push(PollFd::new(l.as_fd(), PollFlags::POLLIN));
        }
        let first_client = fds.len();
        fds.extend(self.conns.iter().map(|c| PollFd::new(c.fd.as_fd(), PollFlags::POLLIN)));
        let ms = PollTimeout::try_from(timeout.as_millis() as i32).unwrap_or(PollTimeout::NONE);
        match nix::poll::poll(&mut fds, ms) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let hit = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        Ok(Ready {
            signal: hit(&fds[0]),
            accept: listening.is_some() && hit(&fds[1]),
            clients: (first_client..fds.len()).filter(|&i| hit(&fds[i])).map(|i| i - first_client).collect(),
        })
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            match wire::accept(listener.as_fd()) {
                Ok(fd) => {
                    let (pid, uid, gid) = match wire::peer_credentials(fd.as_fd()) {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read peer credentials; refusing connection");
                            continue;
                        }
                    };
                    if let Some(why) = self.over_connection_limit(uid) {
                        self.refuse(fd, pid, uid, why);
                        continue;
                    }
                    let id = self.next_id;
                    self.next_id += 1;
                    tracing::debug!(conn = id, pid, uid, gid, "client connected");
                    let process = Process::of_peer(fd.as_fd(), pid);
                    let groups = peer_groups(fd.as_fd());
                    self.conns.push(Conn {
                        id,
                        fd,
                        pid,
                        process,
                        uid,
                        gid,
                        groups,
                        name: String::new(),
                        hello: false,
                        last_seen: Instant::now(),
                        handles: HashMap::new(),
                    });
                }
                Err(WireError::WouldBlock) => return,
                Err(WireError::Io { source: e @ (nix::Error::EMFILE | nix::Error::ENFILE), .. }) => {
                    let conns = self.conns.len();
                    tracing::warn!(error = %e, conns, pause_ms = ACCEPT_PAUSE.as_millis() as u64,
                        "accept: out of file descriptors; not accepting for a moment (raise rilld's open-file limit, or lower limits.connections)");
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    /// Which connection limit a new connection of `uid` would pass, if
    /// any, as the refusal's message.
    fn over_connection_limit(&self, uid: u32) -> Option<String> {
        let l = &self.config.limits;
        let total = self.conns.len();
        if total >= l.connections {
            return Some(format!("limits.connections is {} and {total} clients are connected", l.connections));
        }
        let own = self.conns.iter().filter(|c| c.uid == uid).count();
        (own >= l.connections_per_uid)
            .then(|| format!("limits.connections_per_uid is {} and uid {uid} has {own} connections", l.connections_per_uid))
    }

    /// Tells a connection why it is refused (an `Error` with
    /// `ErrorCode::Limit`, the answer its Hello gets) and keeps it a
    /// moment, so that it reads that rather than a reset.
    fn refuse(&mut self, fd: OwnedFd, pid: u32, uid: u32, why: String) {
        tracing::warn!(pid, uid, %why, "connection refused");
        let bytes = protocol::encode_response(&error(ErrorCode::Limit, format!("rilld refuses the connection: {why}"))).expect("small reply encodes");
        let _ = wire::send(fd.as_fd(), &bytes, &[]);
        let now = Instant::now();
        while self.refused.len() >= MAX_REFUSED || self.refused.front().is_some_and(|(_, at)| now.duration_since(*at) > REFUSED_LINGER) {
            self.refused.pop_front();
        }
        self.refused.push_back((fd, now));
    }

    /// Reads and answers up to a few requests of client `i`. Returns false
    /// if the connection is finished.
    fn serve(&mut self, i: usize) -> bool {
        for _ in 0..MAX_REQUESTS_PER_CLIENT {
            let received = match wire::recv(self.conns[i].fd.as_fd(), &mut self.buf) {
                Ok(r) => r,
                Err(WireError::WouldBlock) => return true,
                Err(WireError::Closed) => return false,
                Err(WireError::Truncated) => {
                    tracing::warn!(conn = self.conns[i].id, "oversized message (truncated by the kernel)");
                    let r = error(ErrorCode::Malformed, format!("message over {} bytes or with fds", protocol::MAX_MESSAGE_LEN));
                    if !self.reply(i, &r, Vec::new()) {
                        return false;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(conn = self.conns[i].id, error = %e, "receive failed; dropping client");
                    return false;
                }
            };
            self.conns[i].last_seen = Instant::now();
            let (resp, fds) = if !received.fds.is_empty() {
                tracing::warn!(conn = self.conns[i].id, fds = received.fds.len(), "request carried fds; closed them");
                (error(ErrorCode::Malformed, "requests must not carry file descriptors".into()), Vec::new())
            } else {
                match protocol::decode_request(&received.bytes) {
                    Ok(req) => self.handle(i, req),
                    Err(protocol::ProtocolError::Version(v)) => {
                        (error(ErrorCode::UnsupportedVersion, format!("protocol version {v}; rilld speaks {}", protocol::PROTOCOL_VERSION)), Vec::new())
                    }
                    Err(e) => {
                        tracing::warn!(conn = self.conns[i].id, error = %e, "malformed request");
                        (error(ErrorCode::Malformed, e.to_string()), Vec::new())
                    }
                }
            };
            if !self.reply(i, &resp, fds) {
                return false;
            }
            // The client waited for this reply: however long we took (a
            // replay's index built on a slow disk), that was not its
            // silence. (Without this, a request that took longer than the
            // client timeout got its client dropped as hung right after:
            // CI saw a replaying subscriber lose its slot so.)
            self.conns[i].last_seen = Instant::now();
        }
        true
    }

    fn reply(&mut self, i: usize, resp: &Response, fds: Vec<OwnedFd>) -> bool {
        let bytes = match protocol::encode_response(resp) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode reply");
                protocol::encode_response(&error(ErrorCode::Internal, e.to_string())).expect("small reply encodes")
            }
        };
        match wire::send(self.conns[i].fd.as_fd(), &bytes, &wire::borrow_all(&fds)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(conn = self.conns[i].id, error = %e, "cannot reply; dropping client");
                false
            }
        }
    }

    fn handle(&mut self, i: usize, req: Request) -> (Response, Vec<OwnedFd>) {
        let needs_hello = matches!(
            req,
            Request::OpenPublisher { .. }
                | Request::OpenSubscriber { .. }
                | Request::CreateStream { .. }
                | Request::Resume { .. }
                | Request::LogSegments { .. }
                | Request::SlotPages { .. }
                | Request::ListStreams
                | Request::ListStreamsPage { .. }
                | Request::StreamInfo { .. }
                | Request::Health
        );
        if needs_hello && !self.conns[i].hello {
            return (error(ErrorCode::NoHello, "send Hello first".into()), Vec::new());
        }
        let result = match req {
            Request::Hello { client_name } => {
                let c = &mut self.conns[i];
                c.hello = true;
                c.name = client_name.chars().take(100).collect();
                tracing::info!(conn = c.id, pid = c.pid, uid = c.uid, name = %c.name, "hello");
                Ok((
                    Response::Hello { daemon_version: env!("CARGO_PKG_VERSION").into(), heartbeat_ms: self.config.heartbeat_ms },
                    Vec::new(),
                ))
            }
            Request::Heartbeat => Ok((Response::HeartbeatAck, Vec::new())),
            Request::Health => {
                self.streams.refresh_archive_status();
                Ok((self.health(), Vec::new()))
            }
            Request::ListStreams => match self.list_page(i, None) {
                (streams, None) => Ok((Response::Streams { streams }, Vec::new())),
                (_, Some(_)) => Err(Refusal::new(
                    ErrorCode::Invalid,
                    "the streams do not fit in one reply: ask a page at a time (ListStreamsPage; a client library of this rilld's version does)".to_owned(),
                )),
            },
            Request::ListStreamsPage { after } => {
                let (streams, next) = self.list_page(i, after.as_deref());
                Ok((Response::StreamsPage { streams, next }, Vec::new()))
            }
            Request::StreamInfo { stream } => self.visible(i, &stream).and_then(|()| {
                self.streams.refresh_archive_status();
                self.streams.require(&stream).map(|s| (Response::Info { info: s.info() }, Vec::new()))
            }),
            Request::CreateStream { stream, options } => self
                .check(i, Action::Publish, &stream)
                .and_then(|()| self.streams.create(&stream, &options, self.conns[i].uid))
                .map(|s| (Response::Created { info: s.info() }, Vec::new())),
            Request::OpenPublisher { stream, create, exclusive } => self.open_publisher(i, &stream, create, exclusive),
            Request::OpenSubscriber { stream, start, create } => self.open_subscriber(i, &stream, start, create),
            Request::Close { handle } => self.close(i, handle).map(|()| (Response::Closed, Vec::new())),
            Request::Resume { handles } => Ok((self.resume(i, handles), Vec::new())),
            Request::SlotPages { handle } => self.slot_pages(i, handle),
            Request::LogSegments { stream, from } => self
                .check(i, Action::Subscribe, &stream)
                .and_then(|()| self.streams.log_segments(&stream, from))
                .map(|(log, fds)| (Response::LogSegments { log }, fds)),
        };
        result.unwrap_or_else(|r| (error(r.code, r.message), Vec::new()))
    }

    /// Whether client `i` may see `stream` (it may publish or subscribe
    /// to it): the same refusal whether the stream exists or not.
    fn visible(&self, i: usize, stream: &str) -> Result<(), Refusal> {
        let c = &self.conns[i];
        if self.config.check(c.uid, c.gid, &c.groups, Action::Subscribe, stream).is_ok() {
            return Ok(());
        }
        self.check(i, Action::Publish, stream)
    }

    /// The streams client `i` may see, in name order, after `after`: as
    /// many as fit in one reply, and the name to continue after if more
    /// follow.
    fn list_page(&mut self, i: usize, after: Option<&str>) -> (Vec<protocol::StreamInfo>, Option<String>) {
        self.streams.refresh_archive_status();
        let (uid, gid, groups) = (self.conns[i].uid, self.conns[i].gid, self.conns[i].groups.clone());
        let may = |n: &str| [Action::Subscribe, Action::Publish].iter().any(|&a| self.config.check(uid, gid, &groups, a, n).is_ok());
        // Room for the reply's own framing besides its streams.
        let mut room = protocol::MAX_MESSAGE_LEN - 4096;
        let mut page: Vec<protocol::StreamInfo> = Vec::new();
        // `iter` is in name order.
        for s in self.streams.iter().filter(|s| after.is_none_or(|a| s.name.as_str() > a) && may(&s.name)) {
            let info = s.info();
            let len = protocol::encode_response(&Response::Info { info: info.clone() }).map_or(usize::MAX, |b| b.len());
            if let Some(last) = page.last().filter(|_| len > room) {
                let next = last.name.clone();
                return (page, Some(next));
            }
            room = room.saturating_sub(len);
            page.push(info);
        }
        (page, None)
    }

    fn check(&self, i: usize, action: Action, stream: &str) -> Result<(), Refusal> {
        let c = &self.conns[i];
        self.config.check(c.uid, c.gid, &c.groups, action, stream).map_err(|m| {
            tracing::warn!(conn = c.id, pid = c.pid, uid = c.uid, %m, "denied");
            Refusal::new(ErrorCode::Denied, m)
        })
    }

    fn get_or_create(&mut self, i: usize, stream: &str, create: Option<protocol::StreamOptions>) -> Result<(), Refusal> {
        if self.streams.get_mut(stream).is_some() {
            return Ok(());
        }
        match create {
            Some(options) => {
                self.check(i, Action::Publish, stream)?;
                self.streams.create(stream, &options, self.conns[i].uid).map(|_| ())
            }
            None => Err(Refusal::new(ErrorCode::UnknownStream, format!("no stream {stream:?} (and no options to create it)"))),
        }
    }

    fn open_publisher(
        &mut self,
        i: usize,
        stream: &str,
        create: Option<protocol::StreamOptions>,
        exclusive: bool,
    ) -> Result<(Response, Vec<OwnedFd>), Refusal> {
        rill_protocol::check_stream_name(stream).map_err(|m| Refusal::new(ErrorCode::Invalid, m))?;
        self.check(i, Action::Publish, stream)?;
        self.get_or_create(i, stream, create)?;
        self.streams.require(stream)?.admit_publisher(exclusive, Instant::now())?;
        let fds = self.streams.publisher_fds(stream).map_err(|e| internal(stream, e))?;
        let handle = self.new_handle(i, stream, HandleKind::Publisher, 0, exclusive);
        let (conn, process) = (self.conns[i].id, self.conns[i].process.clone());
        let s = self.streams.require(stream)?;
        s.publishers += 1;
        if exclusive {
            s.set_exclusive(Some(ExclusiveHolder::Client { conn, handle, process }));
        }
        Ok((Response::Publisher { handle, info: s.info(), slots_epoch: s.ring.slots_epoch() }, fds))
    }

    fn open_subscriber(
        &mut self,
        i: usize,
        stream: &str,
        start: StartAt,
        create: Option<protocol::StreamOptions>,
    ) -> Result<(Response, Vec<OwnedFd>), Refusal> {
        rill_protocol::check_stream_name(stream).map_err(|m| Refusal::new(ErrorCode::Invalid, m))?;
        self.check(i, Action::Subscribe, stream)?;
        self.get_or_create(i, stream, create)?;
        let ring_start = match start {
            StartAt::Latest => rill_shm::ring::Start::Latest,
            // The others join at the oldest frame in the ring: the slot then
            // keeps everything from there in place while the client reads
            // the older part from the log.
            StartAt::Oldest | StartAt::Earliest | StartAt::Position(_) | StartAt::Time(_) => rill_shm::ring::Start::Oldest,
        };
        let process = self.conns[i].process.clone();
        let (slot, position) = self.streams.attach(stream, ring_start, &process)?;
        let planned = self.streams.plan_replay(stream, start, position).and_then(|replay| {
            let fds = self.streams.subscriber_fds(stream, slot).map_err(|e| internal(stream, e))?;
            Ok((replay, fds))
        });
        let (replay, mut fds) = match planned {
            Ok(x) => x,
            Err(r) => {
                self.streams.require(stream)?.free_slot(slot, false);
                return Err(r);
            }
        };
        let replay = replay.map(|(r, log_fds)| {
            fds.extend(log_fds);
            r
        });
        let handle = self.new_handle(i, stream, HandleKind::Subscriber, slot, false);
        let conn = self.conns[i].id;
        let publishers_trusted = self.config.publishers_trusted(self.conns[i].uid, stream);
        let s = self.streams.require(stream)?;
        s.owners[slot as usize] = SlotOwner::Client { conn, handle };
        Ok((Response::Subscriber { handle, slot, position, info: s.info(), replay, publishers_trusted }, fds))
    }

    /// Every slot page of the stream of publisher `handle` of client `i`,
    /// read-only, and their epoch (its slot pages were renewed since it
    /// mapped them).
    fn slot_pages(&mut self, i: usize, handle: u64) -> Result<(Response, Vec<OwnedFd>), Refusal> {
        let stream = match self.conns[i].handles.get(&handle) {
            Some(h) if h.kind == HandleKind::Publisher => h.stream.clone(),
            _ => return Err(Refusal::new(ErrorCode::UnknownHandle, format!("no publisher handle {handle} on this connection"))),
        };
        let s = self.streams.require(&stream)?;
        let fds = s.files.slot_pages().map_err(|e| internal(&stream, e))?;
        Ok((Response::SlotPages { slots_epoch: s.ring.slots_epoch() }, fds))
    }

    fn new_handle(&mut self, i: usize, stream: &str, kind: HandleKind, slot: u32, exclusive: bool) -> u64 {
        let h = self.next_id;
        self.next_id += 1;
        self.conns[i].handles.insert(h, Handle { stream: stream.into(), kind, slot, exclusive });
        h
    }

    fn close(&mut self, i: usize, handle: u64) -> Result<(), Refusal> {
        let conn = self.conns[i].id;
        let h = self.conns[i]
            .handles
            .remove(&handle)
            .ok_or_else(|| Refusal::new(ErrorCode::UnknownHandle, format!("no handle {handle} on this connection")))?;
        release(&mut self.streams, conn, handle, &h, false);
        Ok(())
    }

    fn resume(&mut self, i: usize, handles: Vec<protocol::ResumeHandle>) -> Response {
        let mut out = Vec::with_capacity(handles.len());
        for h in handles {
            let ok = self.check(i, if h.kind == HandleKind::Publisher { Action::Publish } else { Action::Subscribe }, &h.stream).is_ok();
            let (pid, process) = (self.conns[i].pid, self.conns[i].process.clone());
            let id = self.next_id;
            let conn = self.conns[i].id;
            let bound = ok
                && match self.streams.get_mut(&h.stream) {
                    Some(s) if h.kind == HandleKind::Publisher => {
                        // Its own detached exclusivity comes back to it;
                        // otherwise the usual admission rules apply.
                        let own = matches!(&s.exclusive, Some(ExclusiveHolder::Detached { process: p }) if *p == process);
                        let admitted = if own {
                            true
                        } else {
                            // The rules of a new open, the resume grace
                            // included: an exclusive publisher that was not
                            // the holder (rilld restored that from the
                            // ring) must not write beside shared ones that
                            // may still resume.
                            s.admit_publisher(h.exclusive, Instant::now()).is_ok()
                        };
                        if admitted {
                            s.publishers += 1;
                            if h.exclusive {
                                s.set_exclusive(Some(ExclusiveHolder::Client { conn, handle: id, process: process.clone() }));
                            }
                        }
                        admitted
                    }
                    Some(s) => {
                        // Its process, in rilld's books; after a restart
                        // (books lost) the pid in the slot, never 0 (a
                        // process in another pid namespace).
                        let owned_by_pid = match s.slot_process.get(h.slot as usize) {
                            Some(Some(p)) => *p == process,
                            Some(None) => pid != 0 && s.ring.subscribers().iter().any(|x| x.index == h.slot && x.pid == pid),
                            None => false,
                        };
                        let adopted = matches!(s.owners.get(h.slot as usize), Some(SlotOwner::Adopted { .. }));
                        if owned_by_pid && adopted {
                            s.owners[h.slot as usize] = SlotOwner::Client { conn, handle: id };
                            s.slot_process[h.slot as usize] = Some(process.clone());
                        }
                        owned_by_pid && adopted
                    }
                    None => false,
                };
            if bound {
                self.next_id += 1;
                self.conns[i].handles.insert(id, Handle { stream: h.stream.clone(), kind: h.kind, slot: h.slot, exclusive: h.exclusive });
                out.push(id);
            } else {
                tracing::warn!(conn, stream = %h.stream, kind = ?h.kind, slot = h.slot, "cannot resume handle");
                out.push(0);
            }
        }
        tracing::info!(conn = self.conns[i].id, resumed = out.iter().filter(|&&h| h != 0).count(), "client resumed");
        Response::Resumed { handles: out }
    }

    /// Healthy: serving, and every persisted stream archiving, but for
    /// streams quarantined because their own publishers committed
    /// malformed frames (that hurts only that stream; restarting the host
    /// would not help) and streams whose log lost damaged batches (the
    /// loss is reported with the stream). A stream whose archiving stopped
    /// on an I/O error holds its publishers back until an operator acts,
    /// so the daemon says it is unhealthy.
    fn health(&self) -> Response {
        let mut stopped = Vec::new();
        let mut quarantined = Vec::new();
        for s in self.streams.iter() {
            match (&s.archive, &s.setup_error) {
                (Some(a), _) if a.quarantined => quarantined.push(format!("{:?}", s.name)),
                (Some(crate::archiver::ArchiveStatus { error: Some(e), .. }), _) => stopped.push(format!("stream {:?}: {e}", s.name)),
                (_, Some(e)) => stopped.push(format!("stream {:?}: archiving not started: {e}", s.name)),
                _ => {}
            }
        }
        let mut detail =
            format!("{} streams, {} clients, up {} s", self.streams.len(), self.conns.len(), self.started.elapsed().as_secs());
        if !quarantined.is_empty() {
            detail = format!("{} stream(s) quarantined for malformed frames (see rill streams): {}; {detail}", quarantined.len(), quarantined.join(", "));
        }
        if !stopped.is_empty() {
            detail = format!("archiving stopped for {} stream(s): {}; {detail}", stopped.len(), stopped.join("; "));
        }
        Response::Health { healthy: self.listener.is_some() && stopped.is_empty(), detail }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        let timeout = Duration::from_millis(self.config.client_timeout_ms);
        let mut i = 0;
        while i < self.conns.len() {
            if now.duration_since(self.conns[i].last_seen) > timeout {
                // With handles: a hung client. Without: a connection that
                // only takes a file descriptor (the client library
                // heartbeats whether it has handles or not).
                let c = self.conns.swap_remove(i);
                let why = if c.handles.is_empty() { "silent past the client timeout (idle connection)" } else { "no heartbeat (hung client)" };
                if c.handles.is_empty() {
                    tracing::debug!(conn = c.id, pid = c.pid, uid = c.uid, why, "connection dropped");
                }
                self.drop_conn(c, why, true);
            } else {
                i += 1;
            }
        }
        while self.refused.front().is_some_and(|(_, at)| now.duration_since(*at) > REFUSED_LINGER) {
            self.refused.pop_front();
        }
        self.streams.tick(now, rill_shm::os::now_monotonic_ns());
    }

    /// Ends a connection. A hung client, or one whose process is gone,
    /// loses its subscriber slots at once. One that only lost its socket
    /// (and lives) keeps them for `resume_grace_ms`, to `Resume` them on a
    /// new connection; the janitor frees them after that.
    fn drop_conn(&mut self, c: Conn, why: &str, hung: bool) {
        let keep_for_resume = !hung && c.process.alive();
        if !c.handles.is_empty() {
            tracing::info!(conn = c.id, pid = c.pid, name = %c.name, handles = c.handles.len(), why, keep_for_resume, "client gone");
        }
        let deadline = Instant::now() + Duration::from_millis(self.config.resume_grace_ms);
        for (handle, h) in &c.handles {
            let owned = SlotOwner::Client { conn: c.id, handle: *handle };
            match self.streams.get_mut(&h.stream) {
                Some(s) if keep_for_resume && h.kind == HandleKind::Subscriber && s.owners.get(h.slot as usize) == Some(&owned) => {
                    s.owners[h.slot as usize] = SlotOwner::Adopted { deadline };
                }
                // A live process may still write with its exclusive
                // publication (hung or not): nobody else may publish
                // until it resumes or exits.
                Some(s) if h.exclusive && matches!(&s.exclusive, Some(ExclusiveHolder::Client { conn, handle: x, .. }) if *conn == c.id && x == handle) => {
                    s.publishers = s.publishers.saturating_sub(1);
                    if c.process.alive() {
                        s.set_exclusive(Some(ExclusiveHolder::Detached { process: c.process.clone() }));
                    } else {
                        s.set_exclusive(None);
                    }
                }
                _ => release(&mut self.streams, c.id, *handle, h, true),
            }
        }
    }

    fn stop_accepting(&mut self) {
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.config.socket);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_accepting();
    }
}

struct Ready {
    signal: bool,
    accept: bool,
    clients: Vec<usize>,
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}

fn internal(stream: &str, e: std::io::Error) -> Refusal {
    Refusal::new(ErrorCode::Internal, format!("stream {stream:?}: {e}"))
}

/// Releases one handle: a publisher count, or a subscriber slot (if this
/// handle still owns it).
fn release(streams: &mut Streams, conn: u64, handle: u64, h: &Handle, died: bool) {
    let Some(s) = streams.get_mut(&h.stream) else { return };
    match h.kind {
        HandleKind::Publisher => {
            s.publishers = s.publishers.saturating_sub(1);
            if matches!(s.exclusive, Some(ExclusiveHolder::Client { conn: c, handle: hd, .. }) if c == conn && hd == handle) {
                s.set_exclusive(None);
            }
        }
        HandleKind::Subscriber => {
            if s.owners.get(h.slot as usize) == Some(&SlotOwner::Client { conn, handle }) {
                s.free_slot(h.slot, died);
            }
        }
    }
}

/// Binds the listening socket, refusing if another daemon answers there.
/// Listens on `config.socket`, with `socket_mode` and `socket_gid`.
fn bind(config: &Config) -> anyhow::Result<OwnedFd> {
    let path = config.socket.as_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() && wire::connect(path).is_ok() {
        anyhow::bail!("another rilld is listening on {}", path.display());
    }
    let fd = wire::listen(path, true).map_err(|e| anyhow::anyhow!("listening on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = config.socket_gid {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| anyhow::anyhow!("giving {} to gid {gid}: {e}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))?;
    Ok(fd)
}

/// Raises the soft limit on open files to the hard one: every connection
/// takes a descriptor, and so does every stream (its ring; a persisted
/// one its segment and io_uring too). Warns if even the hard limit cannot
/// hold `limits.connections` with room for the streams: past it, `accept`
/// fails and rilld pauses accepting rather than spinning.
fn raise_open_file_limit(config: &Config) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    if soft < hard {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
        }
    }
    let l = &config.limits;
    let need = (l.connections + 4 * l.streams + 64) as u64;
    if hard < need {
        tracing::warn!(open_files = hard, connections = l.connections, streams = l.streams,
            "the open-file limit is below what limits.connections and limits.streams may need; lower them or raise it (LimitNOFILE, ulimit -n)");
    }
}
