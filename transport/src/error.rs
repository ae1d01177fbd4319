//! [`ClientError`]: why a control operation (connect, open, list, health)
//! failed.
//!
//! The data path has its own, smaller errors from `rill-shm`
//! ([`ClaimError`] for publishing, [`PollError`] for reading) and the typed
//! layer's ([`crate::typed`]); nothing on the data path talks to the daemon,
//! so none of those carries a socket error.
//!
//! Each variant's message includes its cause, so `{}` alone says everything
//! (what logs print); for the same reason no variant also returns its cause
//! from `Error::source`, which would print it twice in a chain.

use crate::protocol::{ErrorCode, ProtocolError};
use crate::wire::WireError;
use rill_shm::ring::{ClaimError, OpenError, SubscribeError};
use std::path::PathBuf;
use thiserror::Error;

#[cfg(doc)]
use rill_shm::ring::PollError;

/// Why a request to the daemon, or setting up what it handed over, failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The daemon's socket could not be reached (no daemon, wrong path, no
    /// permission).
    #[error("cannot reach rilld at {}: {error}", path.display())]
    Connect {
        /// The socket path tried.
        path: PathBuf,
        /// What failed.
        error: WireError,
    },
    /// Sending or receiving on the control socket failed. The connection is
    /// dropped; the client's background thread reconnects.
    #[error("control connection to rilld failed: {0}")]
    Wire(WireError),
    /// No reply within the request timeout. The connection is dropped (a
    /// late reply would be taken for the next request's) and re-established
    /// in the background.
    #[error("rilld did not reply within {timeout_ms} ms")]
    TimedOut {
        /// The timeout.
        timeout_ms: u64,
    },
    /// The reply was not a valid control message.
    #[error("invalid reply from rilld: {0}")]
    Protocol(ProtocolError),
    /// The reply was valid but not the kind the request calls for.
    #[error("unexpected reply to {request}: {reply}")]
    Unexpected {
        /// The request sent.
        request: &'static str,
        /// The reply received (its debug form, abbreviated).
        reply: String,
    },
    /// The daemon refused the request.
    #[error("rilld refused ({code:?}): {message}")]
    Daemon {
        /// What kind of refusal.
        code: ErrorCode,
        /// The daemon's explanation.
        message: String,
    },
    /// The reply carried another number of fds than the protocol says. The
    /// fds that came were closed.
    #[error("reply carried {got} fds, expected {expected} (closed them)")]
    FdCount {
        /// Fds the protocol calls for.
        expected: usize,
        /// Fds received.
        got: usize,
    },
    /// The ring handed over could not be mapped or is not a valid ring.
    #[error("cannot map the stream's ring: {0}")]
    Ring(OpenError),
    /// The subscriber's slot could not be used.
    #[error("cannot use the subscriber slot: {0}")]
    Subscribe(SubscribeError),
    /// The publication could not be set up on the ring.
    #[error("cannot publish on the ring: {0}")]
    Publication(ClaimError),
    /// An argument was refused before anything was sent (a stream name,
    /// option or socket path).
    #[error("invalid argument: {0}")]
    Invalid(String),
}

macro_rules! from {
    ($($t:ty => $v:ident),* $(,)?) => {$(
        impl From<$t> for ClientError {
            fn from(e: $t) -> Self {
                ClientError::$v(e)
            }
        }
    )*};
}

from!(WireError => Wire, ProtocolError => Protocol, OpenError => Ring, SubscribeError => Subscribe, ClaimError => Publication);

impl ClientError {
    /// The daemon's error code, if the daemon refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Daemon { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the failure was in reaching or talking to the daemon (as
    /// opposed to a refusal or bad arguments): retrying later may succeed.
    pub fn is_connection(&self) -> bool {
        matches!(self, ClientError::Connect { .. } | ClientError::Wire(_) | ClientError::TimedOut { .. })
    }
}
