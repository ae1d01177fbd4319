//! Futex wait/wake on a word in a shared mapping, and the asymmetric fence
//! (membarrier) that lets publishers skip a full fence on every commit.
//!
//! The wake protocol is a Dekker handshake: a subscriber stores "I sleep"
//! then loads "is there data"; a publisher stores "data" then loads "does
//! anyone sleep". Each side needs a StoreLoad barrier between its store and
//! its load. Putting an `mfence` on every commit would cost the publisher
//! ~30 ns per message, so, as in liburcu and folly's asymmetric barrier, the
//! rare side (the subscriber going to sleep) pays instead: it issues
//! `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`, which runs a full barrier on
//! every CPU currently running a thread of a registered process. Publishers
//! register once (`register_publisher_process`); one that cannot register
//! says so in the ring and fences on every commit.

use crate::sync::AtomicU32;
use std::time::Duration;

#[cfg(not(miri))]
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
#[cfg(not(miri))]
const MEMBARRIER_CMD_GLOBAL_EXPEDITED: libc::c_int = 1 << 1;
#[cfg(not(miri))]
const MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED: libc::c_int = 1 << 2;

#[cfg(not(miri))]
fn membarrier(cmd: libc::c_int) -> std::io::Result<libc::c_long> {
    // SAFETY: membarrier takes two integer arguments and touches no memory
    // of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Registers this process so that [`heavy_barrier`] reaches its threads.
/// Returns false if the kernel does not offer the expedited global command.
#[cfg(not(miri))]
pub fn register_publisher_process() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let supported = membarrier(MEMBARRIER_CMD_QUERY).unwrap_or(0);
        supported & libc::c_long::from(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED) != 0
            && membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED).is_ok()
    })
}

/// Runs a full memory barrier on every CPU that runs a thread of a
/// registered process, and on this one. Returns false if that failed, in
/// which case the caller must not rely on it.
#[cfg(not(miri))]
pub fn heavy_barrier() -> bool {
    membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED).is_ok()
}

/// Miri has no membarrier: report "not registered", so publishers take
/// the fallback the ring already has for such kernels (a full fence after
/// every commit).
#[cfg(miri)]
pub fn register_publisher_process() -> bool {
    false
}

/// Miri has no membarrier: report failure, so sleepers take the fallback
/// the ring already has (bounded naps).
#[cfg(miri)]
pub fn heavy_barrier() -> bool {
    false
}

/// Sleeps while `*word == expected`, at most `timeout`. Returns on a wake,
/// a value change, a signal or the timeout; the caller re-checks its
/// condition in every case.
#[cfg(not(loom))]
pub fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, 4-byte aligned u32 in memory that stays
    // mapped for the call; FUTEX_WAIT (shared, not PRIVATE) only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every thread, in any process, sleeping on `word`.
#[cfg(not(loom))]
pub fn wake_all(word: &AtomicU32) {
    // SAFETY: as in `wait`; FUTEX_WAKE does not touch the word.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Under loom there is no kernel: waiting is a yield.
#[cfg(loom)]
pub fn wait(_word: &AtomicU32, _expected: u32, _timeout: Option<Duration>) {
    loom::thread::yield_now();
}

/// Under loom there is no kernel: nothing to wake.
#[cfg(loom)]
pub fn wake_all(_word: &AtomicU32) {}
