//! Who is at the other end of a client socket: its process, as a pidfd
//! (`SO_PEERPIDFD`), and its groups (`SO_PEERGROUPS`).
//!
//! A pid from `SO_PEERCRED` is translated into rilld's pid namespace: a
//! client in a sibling namespace (another pod without `hostPID`) arrives
//! as pid 0, and a pid can be reused once its process exits. A pidfd
//! names the process itself, in every namespace: rilld polls it to know
//! whether the process lives, and compares processes by the pidfd's inode
//! (pidfs gives every process one of its own, never reused while the
//! system runs).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;

/// `SO_PEERPIDFD` (Linux 6.5).
const SO_PEERPIDFD: libc::c_int = 77;
/// `SO_PEERGROUPS` (Linux 4.13).
const SO_PEERGROUPS: libc::c_int = 59;

/// A client's process.
#[derive(Debug, Clone)]
pub struct Process {
    /// Its pid in rilld's namespace (0 if it is not visible there); for
    /// logs, and for processes known only by pid.
    pub pid: u32,
    /// Its pidfd, when the kernel gave one.
    pidfd: Option<Arc<OwnedFd>>,
    /// What identifies it: the pidfd's inode, else its pid.
    id: u64,
}

impl PartialEq for Process {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.pidfd.is_some() == other.pidfd.is_some()
    }
}

impl Eq for Process {}

impl Process {
    /// The process at the other end of Unix socket `fd` (`pid` from
    /// `SO_PEERCRED`).
    pub fn of_peer(fd: BorrowedFd<'_>, pid: u32) -> Process {
        let mut raw: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `raw`.
        let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_PEERPIDFD, (&raw mut raw).cast(), &mut len) };
        if rc != 0 || raw < 0 {
            return Process::by_pid(pid);
        }
        // SAFETY: the kernel just made this fd for us; nothing else owns it.
        Process::with_pidfd(pid, unsafe { OwnedFd::from_raw_fd(raw) })
    }

    /// A process known only by its pid (read back from a ring after a
    /// restart): a pidfd of it if it still runs.
    pub fn by_pid(pid: u32) -> Process {
        if pid == 0 || pid > i32::MAX as u32 {
            return Process { pid, pidfd: None, id: u64::from(pid) };
        }
        // SAFETY: pidfd_open takes plain integers.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return Process { pid, pidfd: None, id: u64::from(pid) };
        }
        // SAFETY: as above.
        Process::with_pidfd(pid, unsafe { OwnedFd::from_raw_fd(raw as libc::c_int) })
    }

    fn with_pidfd(pid: u32, fd: OwnedFd) -> Process {
        let id = nix::sys::stat::fstat(fd.as_raw_fd()).map_or(u64::from(pid), |st| st.st_ino);
        Process { pid, pidfd: Some(Arc::new(fd)), id }
    }

    /// Whether it still runs. Without a pidfd: by pid, and a pid rilld
    /// cannot see (0) counts as gone.
    pub fn alive(&self) -> bool {
        match &self.pidfd {
            Some(fd) => {
                // A pidfd polls readable once its process has exited.
                let mut p = [nix::poll::PollFd::new(fd.as_fd(), nix::poll::PollFlags::POLLIN)];
                !matches!(nix::poll::poll(&mut p, nix::poll::PollTimeout::ZERO), Ok(n) if n > 0)
            }
            None => rill_shm::os::pid_alive(self.pid),
        }
    }
}

/// The supplementary groups of the process at the other end of `fd`
/// (empty if the kernel says nothing).
pub fn peer_groups(fd: BorrowedFd<'_>) -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `groups`.
        let rc = unsafe { libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_PEERGROUPS, groups.as_mut_ptr().cast(), &mut len) };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(n);
            return groups;
        }
        // ERANGE: `len` says how much room it needs.
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) || n <= groups.len() || n > 65_536 {
            return Vec::new();
        }
        groups.resize(n, 0);
    }
}
