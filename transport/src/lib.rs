//! `rill`: the client library of Rill, and the control protocol it speaks
//! with `rilld`.
//!
//! * [`Client`] connects to the local daemon (socket `$RILL_SOCKET`, else
//!   [`DEFAULT_SOCKET`]), opens [`Publisher`]s and [`Subscriber`]s, lists
//!   streams and checks health; it heartbeats, and reconnects and resumes
//!   its handles when the daemon restarts, in a background thread.
//! * [`Publisher`] and [`Subscriber`] work on the stream's shared-memory
//!   ring only: no system call, lock or daemon round trip per message.
//! * [`typed`]: rkyv messages, serialized once and read in place (or from a
//!   copy, where publishers of other uids may write the ring: [`ReadMode`]).
//! * [`protocol`] and [`wire`]: the control protocol and its socket I/O,
//!   shared with the daemon.
//!
//! # Example
//! ```no_run
//! use rill::{Client, Start};
//! use std::time::Duration;
//!
//! let client = Client::connect()?;
//! let mut subscriber = client.subscriber("orders", Start::Latest)?;
//! let mut publisher = client.publisher("orders")?;
//! publisher.offer(b"hello")?;
//! subscriber.recv_with(Duration::from_secs(1), |m| {
//!     println!("{} at {}", String::from_utf8_lossy(m.payload), m.position)
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod client;
mod connection;
pub mod error;
pub use rill_protocol::options;
pub use rill_protocol as protocol;
pub mod publisher;
mod replay;
pub mod subscriber;
pub mod typed;
pub use rill_protocol::wire;

pub use client::{default_socket_path, Client, ClientBuilder, Health, DEFAULT_SOCKET, SOCKET_ENV};
pub use error::ClientError;
pub use protocol::{Durability, ErrorCode, Policy, StartAt as Start, StreamInfo, StreamOptions, SubscriberInfo};
pub use publisher::{Claim, DurableError, ExclusivePublisher, Publisher};
pub use rill_shm::ring::{ClaimError, Message, PollError};
pub use subscriber::{ReadMode, Subscriber};
pub use typed::{DecodeError, RecvError, SendError, TypedMessage};

/// The rkyv this crate was built with, for `#[derive(Archive, Serialize,
/// Deserialize)]` on message types (`#[rkyv(crate = rill::rkyv)]`).
pub use rkyv;
