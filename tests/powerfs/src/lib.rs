//! `rill-powerfs`: an in-memory FUSE filesystem that models a disk with a
//! volatile write cache, and loses power when told to, for crash-
//! consistency tests in the style of Jepsen's LazyFS.
//!
//! Writes, truncations and directory changes are visible at once but
//! durable only once synced: a file's data by `fsync`/`fdatasync` of the
//! file, a name by `fsync` of the directory holding it. A *cut* reverts
//! everything to its durable state; a *torn cut* first lets a random
//! prefix of each file's unsynced writes through, the last one possibly
//! torn at a 512-byte boundary. See [`model`] for the exact rules and
//! [`control`] for the commands.
//!
//! * [`model`]: the filesystem's state and the cut, apart from FUSE
//!   (tested without a mount in tests/model.rs; through a mount in
//!   tests/mount.rs).
//! * [`fs`]: the FUSE requests, with no kernel caching (zero TTLs,
//!   direct I/O), so that reads after a cut see the reverted bytes.
//! * [`control`]: the control socket (`ping`, `cut`, `cut-torn <seed>`,
//!   `stats`, `sync`).
//! * [`process`]: for tests: finding (building) the binary, running it
//!   on a mount point, sending commands, unmounting.
//!
//! The binary: `rill-powerfs <mountpoint> --control <socket>
//! [--capacity-bytes N]` mounts (as root: the `mount` system call; else
//! through `fusermount3`), prints `READY` on stdout once both the mount
//! and the control socket work, and runs until SIGTERM or SIGINT, then
//! unmounts and exits 0.

#![forbid(unsafe_code)]

pub mod control;
pub mod fs;
pub mod model;
pub mod process;
