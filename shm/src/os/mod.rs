//! Operating-system code: mappings, futexes, membarrier, clocks. Nothing
//! here knows the ring's layout.

pub mod futex;
pub mod mapping;

/// Nanoseconds since the Unix epoch (CLOCK_REALTIME, through the vDSO: no
/// system call).
///
/// Under Miri, whose isolation offers no wall clock, this reads the
/// monotonic clock instead (Miri's virtual one): only tests run there, and
/// they need a clock that moves, not the date.
#[inline]
pub fn now_unix_ns() -> u64 {
    #[cfg(miri)]
    return clock_ns(libc::CLOCK_MONOTONIC);
    #[cfg(not(miri))]
    clock_ns(libc::CLOCK_REALTIME)
}

/// Nanoseconds on the monotonic clock (CLOCK_MONOTONIC, vDSO).
#[inline]
pub fn now_monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

#[inline]
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock ids are constants
    // every Linux supports.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's pid.
pub fn pid() -> u32 {
    std::process::id()
}

/// Whether a process with this pid exists (in our pid namespace).
pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    let exists = rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

/// Whether `pid` has exited and only waits for its parent to reap it (state
/// `Z` in /proc/PID/stat): dead for every purpose of ours.
fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state follows the command name, which is in parentheses and may
    // itself hold spaces or parentheses: take the last ')'.
    stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()) == Some("Z")
}
