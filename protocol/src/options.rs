//! Defaults and builder methods for [`StreamOptions`], the shape a stream is
//! created with when a publisher or subscriber opens one that does not
//! exist yet.
//!
//! The type is part of the control protocol; these are conveniences for
//! the side that creates streams (the client library re-exports them as
//! `rill::options`).

use crate::{Policy, StreamOptions};

/// Default ring capacity of a stream the client creates: 4 MiB.
pub const DEFAULT_CAPACITY: u64 = 4 << 20;
/// Default largest payload of a stream the client creates: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = 64 << 10;

impl Default for StreamOptions {
    /// 4 MiB ring, 64 KiB messages, back-pressure, removed when unused.
    ///
    /// ```
    /// use rill_protocol::{Policy, StreamOptions};
    ///
    /// let o = StreamOptions::default();
    /// assert_eq!((o.capacity, o.max_message_len, o.policy, o.keep), (4 << 20, 64 << 10, Policy::BackPressure, false));
    /// ```
    fn default() -> Self {
        StreamOptions {
            capacity: DEFAULT_CAPACITY,
            max_message_len: DEFAULT_MAX_MESSAGE_LEN,
            policy: Policy::BackPressure,
            keep: false,
            persist: None,
        }
    }
}

impl StreamOptions {
    /// The defaults (see [`StreamOptions::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// With a ring of `bytes` (a power of two, at least 4 KiB; the daemon
    /// checks).
    pub fn with_capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// With payloads of at most `bytes` (at most a quarter of the capacity
    /// less a 32-byte frame header; the daemon checks).
    pub fn with_max_message_len(mut self, bytes: u32) -> Self {
        self.max_message_len = bytes;
        self
    }

    /// With full-ring behaviour `policy`.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Kept by the daemon when its last user leaves (`true`), or removed
    /// after the daemon's linger time (`false`, the default).
    pub fn with_keep(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Persisted by the daemon's archiver with `durability` (see
    /// [`Durability`](crate::Durability)); `None` for a stream in
    /// memory only (the default).
    pub fn with_persist(mut self, durability: Option<crate::Durability>) -> Self {
        self.persist = durability;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_each_field_and_nothing_else() {
        let o = StreamOptions::new().with_capacity(1 << 16).with_policy(Policy::Overwrite);
        assert_eq!(o.capacity, 1 << 16);
        assert_eq!(o.policy, Policy::Overwrite);
        assert_eq!(o.max_message_len, DEFAULT_MAX_MESSAGE_LEN);
        assert!(!o.keep);
        let o = o.with_max_message_len(100).with_keep(true);
        assert_eq!((o.max_message_len, o.keep, o.capacity), (100, true, 1 << 16));
    }

    #[test]
    fn defaults_make_a_valid_ring() {
        let o = StreamOptions::default();
        let config = rill_shm::RingConfig {
            capacity: o.capacity,
            max_message_len: o.max_message_len,
            policy: o.policy.into(),
            ..rill_shm::RingConfig::default()
        };
        config.validate().unwrap();
    }
}
