//! [`Client`]: a connection to the local `rilld`, which hands out
//! [`Publisher`]s and [`Subscriber`]s, and keeps itself registered with the
//! daemon across daemon restarts.
//!
//! # Contract
//! * Every control call sends one request and reads one reply, one at a
//!   time per client (a mutex around the socket), on a blocking socket with
//!   a timeout ([`DEFAULT_REQUEST_TIMEOUT`] unless set with
//!   [`ClientBuilder::request_timeout`]). A [`Client`] is `Send + Sync` and
//!   cheap to clone; clones share the connection.
//! * Nothing on the data path (offer, claim, poll, recv) talks to the
//!   daemon or takes that mutex: publishers and subscribers keep working
//!   while the daemon is down or restarting, because their ring mappings
//!   stay valid.
//! * A background thread per client sends `Heartbeat` every
//!   `heartbeat_ms` (the daemon says how often in its Hello reply). When the
//!   connection fails (daemon killed or restarted), it reconnects with
//!   exponential backoff (10 ms doubling to 1 s, until the client and
//!   every handle it opened are dropped), says Hello again, and sends
//!   `Resume` listing every open publisher and subscriber, recording the
//!   new handle ids the daemon gives them. The application does nothing.
//! * A control call made while disconnected tries one reconnect itself
//!   and fails with a connection error ([`ClientError::is_connection`]) if
//!   the daemon is still unreachable. A request that could not be sent is
//!   retried once on a fresh connection; one that was sent is not (the
//!   daemon may have acted on it).
//! * Dropping a [`Publisher`] or [`Subscriber`] sends `Close` for its
//!   handle, best effort: errors are ignored when the daemon is gone. The
//!   background thread runs while the [`Client`] or any handle opened
//!   from it is alive; the last one dropped stops and joins it (waiting at
//!   most one request timeout if a heartbeat is in flight).
//!
//! # Example
//! ```no_run
//! use rill::{Client, Start};
//! use std::time::Duration;
//!
//! let client = Client::connect()?; // $RILL_SOCKET, else /run/rill/rilld.sock
//! let mut publisher = client.publisher("orders")?;
//! let mut subscriber = client.subscriber("orders", Start::Oldest)?;
//! publisher.offer(b"hello")?;
//! let got = subscriber.recv(Duration::from_secs(1))?;
//! assert_eq!(got.as_deref(), Some(&b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::connection::{CallError, Conn, HelloInfo, Reply};
use crate::error::ClientError;
use crate::protocol::{check_stream_name, HandleKind, Request, ResumeHandle, Response, StartAt, StreamInfo, StreamOptions};
use crate::publisher::{ExclusivePublisher, Publisher};
use rill_shm::ring::ClaimMode;
use crate::subscriber::Subscriber;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

mod open;

pub use rill_protocol::DEFAULT_SOCKET;
/// The environment variable naming the daemon's socket.
pub const SOCKET_ENV: &str = "RILL_SOCKET";
/// How long a control request waits for its reply by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnect delay after the connection fails; doubles per attempt.
pub const RECONNECT_MIN: Duration = Duration::from_millis(10);
/// Longest reconnect delay.
pub const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Heartbeat interval used if the daemon asks for 0 ms.
const FALLBACK_HEARTBEAT: Duration = Duration::from_secs(1);

/// The socket path to use: `$RILL_SOCKET` if set and not empty, else
/// [`DEFAULT_SOCKET`].
pub fn default_socket_path() -> PathBuf {
    socket_path_from(std::env::var_os(SOCKET_ENV))
}

fn socket_path_from(env: Option<std::ffi::OsString>) -> PathBuf {
    match env {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// The daemon's answer to a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Yes or no.
    pub healthy: bool,
    /// Why not, or a summary.
    pub detail: String,
}

/// Configures and connects a [`Client`].
///
/// ```no_run
/// use std::time::Duration;
///
/// let client = rill::Client::builder()
///     .socket("/tmp/rilld.sock")
///     .name("order-router")
///     .request_timeout(Duration::from_secs(2))
///     .connect()?;
/// # Ok::<(), rill::ClientError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    socket: Option<PathBuf>,
    name: Option<String>,
    request_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            socket: None,
            name: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            reconnect_min: RECONNECT_MIN,
            reconnect_max: RECONNECT_MAX,
        }
    }
}

impl ClientBuilder {
    /// Connect to the socket at `path` (default: [`default_socket_path`]).
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// The client's name in the daemon's logs and `rill streams` (default:
    /// the program's file name and pid).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// How long each control request waits for its reply (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The reconnect backoff: first delay `min`, doubling up to `max`
    /// (default 10 ms to 1 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min = min;
        self.reconnect_max = max;
        self
    }

    /// Connects, says Hello, and starts the heartbeat thread.
    pub fn connect(self) -> Result<Client, ClientError> {
        if self.request_timeout.is_zero() {
            // A zero SO_RCVTIMEO means "wait forever", not "don't wait".
            return Err(ClientError::Invalid("request timeout must be more than zero".into()));
        }
        if self.reconnect_min.is_zero() || self.reconnect_min > self.reconnect_max {
            return Err(ClientError::Invalid("reconnect backoff must satisfy 0 < min <= max".into()));
        }
        let path = self.socket.unwrap_or_else(default_socket_path);
        let name = self.name.unwrap_or_else(default_client_name);
        let conn = Conn::open(&path, &name, self.request_timeout)?;
        tracing::debug!(socket = %path.display(), daemon_version = %conn.hello.daemon_version, heartbeat_ms = conn.hello.heartbeat_ms, "connected to rilld");
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                hello: conn.hello.clone(),
                conn: Some(conn),
                handles: BTreeMap::new(),
                next_key: 1,
                reconnects: 0,
            }),
            path,
            name,
            timeout: self.request_timeout,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max,
            ctl: Mutex::new(Ctl { stop: false, kicked: false }),
            wake: Condvar::new(),
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rill-heartbeat".into())
            .spawn(move || for_thread.run_liveness())
            .map_err(|e| ClientError::Invalid(format!("cannot start the heartbeat thread: {e}")))?;
        Ok(Client { token: Arc::new(Token { shared, thread: Some(thread) }) })
    }
}

fn default_client_name() -> String {
    let exe = std::env::args_os()
        .next()
        .and_then(|a| Path::new(&a).file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "rill-client".into());
    format!("{exe}[{}]", std::process::id())
}

/// A connection to the local `rilld`. See the [module docs](self) for
/// what it guarantees.
#[derive(Debug, Clone)]
pub struct Client {
    token: Arc<Token>,
}

impl Client {
    /// Connects to `$RILL_SOCKET`, else [`DEFAULT_SOCKET`].
    pub fn connect() -> Result<Client, ClientError> {
        ClientBuilder::default().connect()
    }

    /// Connects to the socket at `path`.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        ClientBuilder::default().socket(path.as_ref()).connect()
    }

    /// Connects to the default socket under the client name `name`.
    pub fn with_name(name: impl Into<String>) -> Result<Client, ClientError> {
        ClientBuilder::default().name(name).connect()
    }

    /// A builder for the socket path, name and timeouts.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A publisher on `stream`, creating the stream with
    /// [`StreamOptions::default`] if it does not exist.
    pub fn publisher(&self, stream: &str) -> Result<Publisher, ClientError> {
        self.open_publisher(stream, Some(StreamOptions::default()))
    }

    /// A publisher on `stream`, creating the stream with `options` if it
    /// does not exist (an existing stream keeps its own options).
    pub fn publisher_with(&self, stream: &str, options: StreamOptions) -> Result<Publisher, ClientError> {
        self.open_publisher(stream, Some(options))
    }

    /// A publisher on `stream` if it exists (else error `UnknownStream`),
    /// or created with `create` if given.
    pub fn open_publisher(&self, stream: &str, create: Option<StreamOptions>) -> Result<Publisher, ClientError> {
        check_stream_name(stream).map_err(ClientError::Invalid)?;
        open::publisher(&self.token, stream, create)
    }

    /// The only publisher of `stream` (creating it with
    /// [`StreamOptions::default`] if it does not exist): claims are plain
    /// stores instead of compare-and-swap. rilld refuses it with
    /// [`ErrorCode::Busy`](crate::ErrorCode::Busy) while the stream has
    /// other publishers, and refuses other publishers while it lives (until
    /// it is dropped or its process exits).
    pub fn exclusive_publisher(&self, stream: &str) -> Result<ExclusivePublisher, ClientError> {
        self.open_exclusive_publisher(stream, Some(StreamOptions::default()))
    }

    /// [`exclusive_publisher`](Self::exclusive_publisher) on `stream` if it
    /// exists (else error `UnknownStream`), or created with `create` if given.
    pub fn open_exclusive_publisher(
        &self,
        stream: &str,
        create: Option<StreamOptions>,
    ) -> Result<ExclusivePublisher, ClientError> {
        check_stream_name(stream).map_err(ClientError::Invalid)?;
        open::publisher(&self.token, stream, create)
    }

    /// [`open_publisher`](Self::open_publisher) or
    /// [`open_exclusive_publisher`](Self::open_exclusive_publisher) by type,
    /// for code generic over the claim mode (`Shared` or `Exclusive`).
    pub fn open_publisher_as<M: ClaimMode>(&self, stream: &str, create: Option<StreamOptions>) -> Result<Publisher<M>, ClientError> {
        check_stream_name(stream).map_err(ClientError::Invalid)?;
        open::publisher(&self.token, stream, create)
    }

    /// A subscriber on `stream` starting at `start`, creating the stream
    /// with [`StreamOptions::default`] if it does not exist.
    pub fn subscriber(&self, stream: &str, start: StartAt) -> Result<Subscriber, ClientError> {
        self.open_subscriber(stream, start, Some(StreamOptions::default()))
    }

    /// A subscriber on `stream`, creating the stream with `options` if it
    /// does not exist.
    pub fn subscriber_with(&self, stream: &str, start: StartAt, options: StreamOptions) -> Result<Subscriber, ClientError> {
        self.open_subscriber(stream, start, Some(options))
    }

    /// A subscriber on `stream` if it exists (else error `UnknownStream`),
    /// or created with `create` if given.
    pub fn open_subscriber(&self, stream: &str, start: StartAt, create: Option<StreamOptions>) -> Result<Subscriber, ClientError> {
        check_stream_name(stream).map_err(ClientError::Invalid)?;
        open::subscriber(&self.token, stream, start, create)
    }

    /// Creates `stream` (or confirms it exists with these options).
    pub fn create_stream(&self, stream: &str, options: StreamOptions) -> Result<StreamInfo, ClientError> {
        check_stream_name(stream).map_err(ClientError::Invalid)?;
        let req = Request::CreateStream { stream: stream.to_owned(), options };
        match self.simple_call(&req)? {
            Response::Created { info } => Ok(info),
            other => Err(unexpected(other, "CreateStream")),
        }
    }

    /// Every stream the daemon holds that this client's uid may publish
    /// or subscribe to, in name order (asked for a page at a time).
    pub fn streams(&self) -> Result<Vec<StreamInfo>, ClientError> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            match self.simple_call(&Request::ListStreamsPage { after: after.take() })? {
                Response::StreamsPage { streams, next } => {
                    all.extend(streams);
                    match next {
                        Some(n) => after = Some(n),
                        None => return Ok(all),
                    }
                }
                other => return Err(unexpected(other, "ListStreamsPage")),
            }
        }
    }

    /// One stream.
    pub fn stream_info(&self, stream: &str) -> Result<StreamInfo, ClientError> {
        check_stream_name(stream).map_err(ClientError::Invalid)?;
        match self.simple_call(&Request::StreamInfo { stream: stream.to_owned() })? {
            Response::Info { info } => Ok(info),
            other => Err(unexpected(other, "StreamInfo")),
        }
    }

    /// Asks the daemon whether it is healthy.
    pub fn health(&self) -> Result<Health, ClientError> {
        match self.simple_call(&Request::Health)? {
            Response::Health { healthy, detail } => Ok(Health { healthy, detail }),
            other => Err(unexpected(other, "Health")),
        }
    }

    /// Whether the control connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.token.shared.lock_state().conn.is_some()
    }

    /// How many times the client has reconnected to the daemon.
    pub fn reconnects(&self) -> u64 {
        self.token.shared.lock_state().reconnects
    }

    /// The version the daemon reported at the last Hello.
    pub fn daemon_version(&self) -> String {
        self.token.shared.lock_state().hello.daemon_version.clone()
    }

    /// The daemon's socket path.
    pub fn socket_path(&self) -> &Path {
        &self.token.shared.path
    }

    /// This client's name as sent in Hello.
    pub fn name(&self) -> &str {
        &self.token.shared.name
    }

    /// One request that carries no fds back; an `Error` reply becomes
    /// [`ClientError::Daemon`].
    fn simple_call(&self, req: &Request) -> Result<Response, ClientError> {
        let shared = &self.token.shared;
        let mut st = shared.lock_state();
        let mut reply = shared.request(&mut st, req)?;
        reply.take_fds(0)?;
        match reply.response {
            Response::Error { code, message } => Err(ClientError::Daemon { code, message }),
            response => Ok(response),
        }
    }
}

fn unexpected(response: Response, request: &'static str) -> ClientError {
    Reply { response, fds: Vec::new() }.unexpected(request)
}

/// Keeps the background thread alive; held by the [`Client`] and by every
/// handle. The last one dropped stops and joins the thread.
#[derive(Debug)]
pub(crate) struct Token {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Token {
    fn drop(&mut self) {
        self.shared.signal(|c| c.stop = true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("rill heartbeat thread panicked");
            }
        }
    }
}

/// Ties a publisher's or subscriber's handle to its client: says `Close`
/// when dropped.
#[derive(Debug)]
pub(crate) struct HandleGuard {
    token: Arc<Token>,
    key: u64,
}

impl HandleGuard {
    /// The daemon's id for this handle now (it changes when the client
    /// resumes with a restarted daemon); `None` if the daemon did not
    /// know the handle at the last resume.
    pub(crate) fn daemon_handle(&self) -> Option<u64> {
        let st = self.token.shared.lock_state();
        st.handles.get(&self.key).map(|e| e.daemon_handle).filter(|&h| h != 0)
    }
}

impl HandleGuard {
    /// Asks the daemon for every slot page of this publisher's stream, as
    /// now, and their epoch (`Request::SlotPages`); `None` if the daemon
    /// does not know the handle (a resume it refused).
    pub(crate) fn slot_pages(&self) -> Result<Option<(u64, Vec<std::os::fd::OwnedFd>)>, ClientError> {
        let Some(handle) = self.daemon_handle() else { return Ok(None) };
        open::slot_pages(&self.token, handle).map(Some)
    }

    /// Asks the daemon for the segments of `stream`'s log from `from` on
    /// (`Request::LogSegments`), reconnecting first if needed.
    pub(crate) fn log_segments(&self, stream: &str, from: u64) -> Result<(crate::protocol::LogSegments, Vec<std::fs::File>), ClientError> {
        open::log_segments(&self.token, stream, from)
    }
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.token.shared.close(self.key);
    }
}

/// A handle the client holds, as it re-registers it after a reconnect.
#[derive(Debug, Clone)]
struct Entry {
    stream: String,
    kind: HandleKind,
    slot: u32,
    /// An exclusive publisher.
    exclusive: bool,
    /// The daemon's id for it on the current connection; 0 if none.
    daemon_handle: u64,
}

/// The connection and the handles, under one mutex so a resume always
/// lists exactly the handles the daemon was told about.
#[derive(Debug)]
struct State {
    conn: Option<Conn>,
    hello: HelloInfo,
    handles: BTreeMap<u64, Entry>,
    next_key: u64,
    reconnects: u64,
}

impl State {
    fn insert(&mut self, entry: Entry) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        self.handles.insert(key, entry);
        key
    }
}

/// Stop and wake-up flags of the background thread.
#[derive(Debug)]
struct Ctl {
    stop: bool,
    /// A caller lost the connection: reconnect now rather than after the
    /// heartbeat interval.
    kicked: bool,
}

#[derive(Debug)]
struct Shared {
    path: PathBuf,
    name: String,
    timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    state: Mutex<State>,
    ctl: Mutex<Ctl>,
    wake: Condvar,
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it except a bug here; the state is
        // still consistent (each field is updated in one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signal(&self, f: impl FnOnce(&mut Ctl)) {
        f(&mut self.ctl.lock().unwrap_or_else(|e| e.into_inner()));
        self.wake.notify_all();
    }

    /// Drops the connection and has the background thread reconnect.
    fn disconnect(&self, st: &mut State, why: &ClientError) {
        if st.conn.take().is_some() {
            tracing::warn!(socket = %self.path.display(), error = %why, "lost connection to rilld; reconnecting in the background");
        }
        self.signal(|c| c.kicked = true);
    }

    /// Sends `req` and reads its reply, reconnecting first if needed, and
    /// once more if the request could not be sent.
    fn request(&self, st: &mut State, req: &Request) -> Result<Reply, ClientError> {
        let mut retried = false;
        loop {
            if st.conn.is_none() {
                self.reconnect(st)?;
            }
            let conn = st.conn.as_mut().expect("connected just above");
            match conn.call(req) {
                Ok(reply) => return Ok(reply),
                // Could not even encode it: the connection is fine.
                Err(CallError::NotSent(e)) if !e.is_connection() => return Err(e),
                Err(CallError::NotSent(e)) if !retried => {
                    retried = true;
                    self.disconnect(st, &e);
                }
                Err(e) => {
                    // Sent, then the reply failed: the daemon may have acted
                    // on it, so no retry; and the connection is out of step.
                    let e = e.into_inner();
                    self.disconnect(st, &e);
                    return Err(e);
                }
            }
        }
    }

    /// Connects, says Hello, and re-registers every handle.
    fn reconnect(&self, st: &mut State) -> Result<(), ClientError> {
        let mut conn = Conn::open(&self.path, &self.name, self.timeout)?;
        Self::resume(&mut conn, &mut st.handles)?;
        st.hello = conn.hello.clone();
        st.conn = Some(conn);
        st.reconnects += 1;
        tracing::info!(
            socket = %self.path.display(),
            daemon_version = %st.hello.daemon_version,
            handles = st.handles.len(),
            "reconnected to rilld and resumed handles"
        );
        Ok(())
    }

    /// Sends `Resume` for every handle and records the new ids.
    fn resume(conn: &mut Conn, handles: &mut BTreeMap<u64, Entry>) -> Result<(), ClientError> {
        if handles.is_empty() {
            return Ok(());
        }
        let list: Vec<ResumeHandle> = handles
            .values()
            .map(|e| ResumeHandle { stream: e.stream.clone(), kind: e.kind, slot: e.slot, exclusive: e.exclusive })
            .collect();
        let mut reply = conn.call(&Request::Resume { handles: list }).map_err(CallError::into_inner)?;
        reply.take_fds(0)?;
        let ids = match reply.response {
            Response::Resumed { handles: ids } if ids.len() == handles.len() => ids,
            Response::Resumed { handles: ids } => {
                let reply = format!("{} handle ids for {} handles", ids.len(), handles.len());
                return Err(ClientError::Unexpected { request: "Resume", reply });
            }
            _ => return Err(reply.unexpected("Resume")),
        };
        for (entry, id) in handles.values_mut().zip(ids) {
            if id == 0 {
                tracing::warn!(stream = %entry.stream, kind = ?entry.kind, slot = entry.slot,
                    "restarted rilld no longer knows this handle; it keeps working on its ring, unregistered");
            }
            entry.daemon_handle = id;
        }
        Ok(())
    }

    /// Forgets handle `key` and tells the daemon, if connected.
    fn close(&self, key: u64) {
        let mut st = self.lock_state();
        let Some(entry) = st.handles.remove(&key) else { return };
        if entry.daemon_handle != 0 {
            self.close_handle(&mut st, entry.daemon_handle);
        }
    }

    /// Sends `Close{handle}` if connected; never reconnects, never fails.
    fn close_handle(&self, st: &mut State, handle: u64) {
        let Some(conn) = st.conn.as_mut() else { return };
        match conn.call(&Request::Close { handle }).map(|r| r.response) {
            Ok(Response::Closed) => {}
            Ok(Response::Error { code, message }) => tracing::debug!(handle, ?code, %message, "Close refused"),
            Ok(other) => {
                let e = unexpected(other, "Close");
                self.disconnect(st, &e);
            }
            Err(e) => self.disconnect(st, &e.into_inner()),
        }
    }

    /// The background thread: heartbeats while connected, reconnects with
    /// backoff while not, until stopped.
    fn run_liveness(self: Arc<Self>) {
        let mut backoff = self.reconnect_min;
        loop {
            let wait = {
                let st = self.lock_state();
                match (&st.conn, st.hello.heartbeat_ms) {
                    (Some(_), 0) => FALLBACK_HEARTBEAT,
                    (Some(_), ms) => Duration::from_millis(u64::from(ms)),
                    (None, _) => backoff,
                }
            };
            if self.wait_or_stop(wait) {
                return;
            }
            let mut st = self.lock_state();
            if st.conn.is_some() {
                backoff = self.reconnect_min;
                if let Err(e) = self.heartbeat(&mut st) {
                    self.disconnect(&mut st, &e);
                }
            } else if let Err(e) = self.reconnect(&mut st) {
                tracing::debug!(error = %e, retry_in_ms = backoff.as_millis() as u64, "reconnect to rilld failed");
                backoff = (backoff * 2).min(self.reconnect_max);
            } else {
                backoff = self.reconnect_min;
            }
        }
    }

    fn heartbeat(&self, st: &mut State) -> Result<(), ClientError> {
        let conn = st.conn.as_mut().expect("caller checked");
        let mut reply = conn.call(&Request::Heartbeat).map_err(CallError::into_inner)?;
        reply.take_fds(0)?;
        match reply.response {
            Response::HeartbeatAck => Ok(()),
            _ => Err(reply.unexpected("Heartbeat")),
        }
    }

    /// Waits `timeout` or until kicked; returns true if told to stop.
    fn wait_or_stop(&self, timeout: Duration) -> bool {
        let ctl = self.ctl.lock().unwrap_or_else(|e| e.into_inner());
        let (mut ctl, _) = self
            .wake
            .wait_timeout_while(ctl, timeout, |c| !c.stop && !c.kicked)
            .unwrap_or_else(|e| e.into_inner());
        ctl.kicked = false;
        ctl.stop
    }
}

#[cfg(test)]
mod tests;
