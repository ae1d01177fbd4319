//! The one door through which the ring touches atomics.
//!
//! Under `--cfg loom` every atomic, fence and spin hint comes from `loom`, so
//! the ring's claim/commit/poll protocol is model-checked with the very code
//! that runs in production. Nothing else in the crate may name
//! `std::sync::atomic` directly.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, Ordering};
#[cfg(loom)]
pub(crate) use model::{AtomicU32, AtomicU64};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Loom's atomics with one change: a plain `store` is modelled as a `swap`.
///
/// Loom 0.7 does not order a plain store after a concurrent read-modify-write
/// on the same atomic (tokio-rs/loom#254 and #389, fix proposed in #391): a
/// compare-and-swap can read an old value and still end up *after* another
/// thread's store in the modification order, which C++ forbids, so a
/// model can report a lost store that no hardware loses (a false alarm).
/// The ring mixes the two on one atomic in several places (the sleeper's
/// `waiters` store against the waker's swap; a slot's FREE store against
/// a joiner's CAS; earlier, a CAS on commit words). A `swap` is an RMW,
/// which loom does order correctly.
///
/// The model is slightly stronger than C++ in one way: an RMW continues a
/// release sequence and a plain store does not, so an acquire load that
/// reads a value stored with `Relaxed` may synchronise with an earlier
/// `Release` store to the same word in the model but not on hardware. No
/// part of the ring's protocol relies on synchronising through such a
/// value: readers trust a frame only through its commit tag word, which is
/// always stored with `Release` itself.
#[cfg(loom)]
mod model {
    use loom::sync::atomic::Ordering;

    macro_rules! atomic {
        ($name:ident, $int:ty) => {
            #[doc = concat!("`loom::sync::atomic::", stringify!($name), "` with `store` done as `swap`.")]
            #[derive(Debug)]
            pub struct $name(loom::sync::atomic::$name);

            #[allow(dead_code)]
            impl $name {
                /// A new atomic holding `v`.
                pub fn new(v: $int) -> Self {
                    Self(loom::sync::atomic::$name::new(v))
                }
                /// As the std method.
                pub fn load(&self, order: Ordering) -> $int {
                    self.0.load(order)
                }
                /// As the std method, modelled as a `swap` (see the module docs).
                pub fn store(&self, v: $int, order: Ordering) {
                    self.0.swap(v, order);
                }
                /// As the std method.
                pub fn swap(&self, v: $int, order: Ordering) -> $int {
                    self.0.swap(v, order)
                }
                /// As the std method.
                pub fn fetch_add(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_add(v, order)
                }
                /// As the std method.
                pub fn fetch_sub(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_sub(v, order)
                }
                /// As the std method.
                pub fn fetch_max(&self, v: $int, order: Ordering) -> $int {
                    self.0.fetch_max(v, order)
                }
                /// As the std method.
                pub fn compare_exchange(
                    &self,
                    current: $int,
                    new: $int,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$int, $int> {
                    self.0.compare_exchange(current, new, success, failure)
                }
                /// As the std method.
                pub fn compare_exchange_weak(
                    &self,
                    current: $int,
                    new: $int,
                    success: Ordering,
                    failure: Ordering,
                ) -> Result<$int, $int> {
                    self.0.compare_exchange_weak(current, new, success, failure)
                }
            }
        };
    }

    atomic!(AtomicU32, u32);
    atomic!(AtomicU64, u64);
}

/// One wait of a short spin-then-yield loop (`n` counts from 1): a spin
/// hint for the first few, then a yield of the CPU. Under loom, a yield
/// (which lets the model run the thread being waited for).
#[inline]
pub(crate) fn spin_or_yield(n: u32) {
    #[cfg(loom)]
    {
        let _ = n;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    if n < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}
