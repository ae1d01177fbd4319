//! `rill-shm`: the shared-memory layer of Rill.
//!
//! * [`os`]: mappings (huge pages with fallback), futex, membarrier, clocks.
//! * [`layout`]: the ring file's byte layout (an ABI between processes).
//! * [`frame`]: the one frame format (ring = disk = wire) and its checked
//!   parser.
//! * [`ring`]: the ring's algorithms: publish (exclusive and shared),
//!   subscribe (zero-copy or validated), the join protocol, and the
//!   reclaimer for crashed publishers.
//! * [`idle`]: idle strategies.
//!
//! No sockets, no files beyond the mapping, no threads.
//!
//! # Example
//! ```
//! use rill_shm::ring::{Ring, RingConfig, Start};
//!
//! let ring = Ring::private(&RingConfig::default()).unwrap();
//! let mut sub = ring.subscribe(Start::Latest).unwrap();
//! let mut publ = ring.exclusive_publication().unwrap();
//! publ.offer(b"hello").unwrap();
//! let mut got = Vec::new();
//! sub.poll(10, |m| got.push(m.payload.to_vec())).unwrap();
//! assert_eq!(got, vec![b"hello".to_vec()]);
//! ```

pub mod frame;
pub mod idle;
pub mod layout;
mod memory;
#[cfg_attr(loom, allow(dead_code))]
pub mod os;
pub mod ring;
mod sync;

pub use os::mapping::{Access, PageKind};
pub use ring::{Policy, Ring, RingConfig};
