//! Idle strategies: what a thread does when a poll found nothing or an
//! offer was back-pressured.
//!
//! | strategy      | wake-up latency | CPU while idle |
//! |---------------|-----------------|----------------|
//! | [`BusySpin`]  | lowest (~100 ns)| one core       |
//! | [`SpinYield`] | low             | one core, shared with others |
//! | [`Backoff`]   | up to its max sleep | little     |
//!
//! Blocking on the ring's futex (the fourth way to wait) belongs to the
//! subscriber: [`crate::ring::Subscriber::poll_blocking`].

use std::time::Duration;

/// What to do between attempts that found no work.
pub trait IdleStrategy: std::fmt::Debug {
    /// Called after an attempt that did `work_count` units of work.
    fn idle(&mut self, work_count: usize);
    /// Called when work resumes, to restart any progression.
    fn reset(&mut self);
}

/// Spin with the CPU's pause hint.
#[derive(Debug, Default, Clone, Copy)]
pub struct BusySpin;

impl IdleStrategy for BusySpin {
    #[inline]
    fn idle(&mut self, _work_count: usize) {
        std::hint::spin_loop();
    }
    fn reset(&mut self) {}
}

/// Spin `spins` times, then yield the CPU on every further idle call.
#[derive(Debug, Clone, Copy)]
pub struct SpinYield {
    spins: u32,
    count: u32,
}

impl SpinYield {
    /// Spins this many times before yielding.
    pub fn new(spins: u32) -> Self {
        SpinYield { spins, count: 0 }
    }
}

impl Default for SpinYield {
    fn default() -> Self {
        Self::new(100)
    }
}

impl IdleStrategy for SpinYield {
    fn idle(&mut self, work_count: usize) {
        if work_count > 0 {
            self.count = 0;
        } else if self.count < self.spins {
            self.count += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    fn reset(&mut self) {
        self.count = 0;
    }
}

/// Spin, then yield, then sleep with exponentially growing naps up to a cap
/// (Aeron's BackoffIdleStrategy).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    max_spins: u32,
    max_yields: u32,
    min_sleep: Duration,
    max_sleep: Duration,
    spins: u32,
    yields: u32,
    sleep: Duration,
}

impl Backoff {
    /// A backoff with these phases.
    pub fn new(max_spins: u32, max_yields: u32, min_sleep: Duration, max_sleep: Duration) -> Self {
        assert!(min_sleep <= max_sleep && !min_sleep.is_zero());
        Backoff { max_spins, max_yields, min_sleep, max_sleep, spins: 0, yields: 0, sleep: min_sleep }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(100, 10, Duration::from_micros(1), Duration::from_millis(1))
    }
}

impl IdleStrategy for Backoff {
    fn idle(&mut self, work_count: usize) {
        if work_count > 0 {
            self.reset();
        } else if self.spins < self.max_spins {
            self.spins += 1;
            std::hint::spin_loop();
        } else if self.yields < self.max_yields {
            self.yields += 1;
            std::thread::yield_now();
        } else {
            std::thread::sleep(self.sleep);
            self.sleep = (self.sleep * 2).min(self.max_sleep);
        }
    }
    fn reset(&mut self) {
        self.spins = 0;
        self.yields = 0;
        self.sleep = self.min_sleep;
    }
}
