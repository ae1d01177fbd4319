//! One control connection to `rilld`: connect, say Hello, then one request
//! and one reply at a time on a blocking socket with send and receive
//! timeouts.
//!
//! Not shared by itself: [`crate::client`] keeps it behind a mutex, which
//! is what makes "one request at a time per connection" hold.

use crate::error::ClientError;
use crate::protocol::{self, Request, Response};
use crate::wire::{self, WireError};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// A decoded reply and the fds that came with it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) response: Response,
    pub(crate) fds: Vec<OwnedFd>,
}

impl Reply {
    /// Takes the fds if there are exactly `expected`; else drops (closes)
    /// them and says so.
    pub(crate) fn take_fds(&mut self, expected: usize) -> Result<Vec<OwnedFd>, ClientError> {
        let fds = std::mem::take(&mut self.fds);
        if fds.len() != expected {
            return Err(ClientError::FdCount { expected, got: fds.len() });
        }
        Ok(fds)
    }

    /// Turns an `Error` reply into [`ClientError::Daemon`], anything else
    /// into [`ClientError::Unexpected`].
    pub(crate) fn unexpected(self, request: &'static str) -> ClientError {
        match self.response {
            Response::Error { code, message } => ClientError::Daemon { code, message },
            other => {
                let mut reply = format!("{other:?}");
                if reply.len() > 200 {
                    let cut = (0..=200).rev().find(|&i| reply.is_char_boundary(i)).unwrap_or(0);
                    reply.truncate(cut);
                    reply.push('…');
                }
                ClientError::Unexpected { request, reply }
            }
        }
    }
}

/// How a call failed: before the request left (safe to retry on a new
/// connection), or after (the daemon may have acted on it).
#[derive(Debug)]
pub(crate) enum CallError {
    NotSent(ClientError),
    Sent(ClientError),
}

impl CallError {
    pub(crate) fn into_inner(self) -> ClientError {
        match self {
            CallError::NotSent(e) | CallError::Sent(e) => e,
        }
    }
}

/// What the daemon said in reply to Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HelloInfo {
    pub(crate) daemon_version: String,
    pub(crate) heartbeat_ms: u32,
}

/// A connected, greeted control socket.
#[derive(Debug)]
pub(crate) struct Conn {
    fd: OwnedFd,
    buf: Vec<u8>,
    timeout: Duration,
    pub(crate) hello: HelloInfo,
}

impl Conn {
    /// Connects to `path`, sets the timeouts, and sends Hello.
    pub(crate) fn open(path: &Path, client_name: &str, timeout: Duration) -> Result<Conn, ClientError> {
        let fd = wire::connect(path).map_err(|error| ClientError::Connect { path: path.to_owned(), error })?;
        let tv = TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _);
        let io = |op| move |source| ClientError::Wire(WireError::Io { op, source });
        setsockopt(&fd, sockopt::ReceiveTimeout, &tv).map_err(io("SO_RCVTIMEO"))?;
        setsockopt(&fd, sockopt::SendTimeout, &tv).map_err(io("SO_SNDTIMEO"))?;
        let mut conn = Conn {
            fd,
            buf: Vec::new(),
            timeout,
            hello: HelloInfo { daemon_version: String::new(), heartbeat_ms: 0 },
        };
        let mut reply = conn.call(&Request::Hello { client_name: client_name.to_owned() }).map_err(CallError::into_inner)?;
        reply.take_fds(0)?;
        match reply.response {
            Response::Hello { daemon_version, heartbeat_ms } => {
                conn.hello = HelloInfo { daemon_version, heartbeat_ms };
                Ok(conn)
            }
            _ => Err(reply.unexpected("Hello")),
        }
    }

    /// Sends `req` and waits for its reply. Any error leaves the connection
    /// in an unknown state: the caller drops it.
    pub(crate) fn call(&mut self, req: &Request) -> Result<Reply, CallError> {
        let bytes = protocol::encode_request(req).map_err(|e| CallError::NotSent(e.into()))?;
        wire::send(self.fd.as_fd(), &bytes, &[]).map_err(|e| CallError::NotSent(self.wire_error(e)))?;
        let received = wire::recv(self.fd.as_fd(), &mut self.buf).map_err(|e| CallError::Sent(self.wire_error(e)))?;
        let response = protocol::decode_response(&received.bytes).map_err(|e| CallError::Sent(e.into()))?;
        Ok(Reply { response, fds: received.fds })
    }

    /// A blocking socket reports its timeout as EAGAIN (`WouldBlock`).
    fn wire_error(&self, e: WireError) -> ClientError {
        match e {
            WireError::WouldBlock => ClientError::TimedOut { timeout_ms: self.timeout.as_millis() as u64 },
            e => ClientError::Wire(e),
        }
    }
}
