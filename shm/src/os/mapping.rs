//! Shared mappings: files on hugetlbfs or tmpfs, memfds, and plain heap
//! memory for tests and single-process use.
//!
//! Every shared mapping is pre-faulted (`MAP_POPULATE`), so the first
//! message written to a ring does not take a page fault.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// `f_type` of a hugetlbfs mount.
const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
/// Size of a huge page on x86_64 and aarch64 (the only one Rill asks for).
pub const HUGE_PAGE_SIZE: usize = 2 << 20;
/// Size of a normal page.
pub const SMALL_PAGE_SIZE: usize = 4096;

/// Which pages back a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// 2 MiB huge pages (hugetlbfs or memfd with MFD_HUGETLB).
    Huge2M,
    /// Normal 4 KiB pages (tmpfs, /dev/shm, memfd, heap).
    Normal4K,
}

impl PageKind {
    /// Page size in bytes.
    pub fn size(self) -> usize {
        match self {
            PageKind::Huge2M => HUGE_PAGE_SIZE,
            PageKind::Normal4K => SMALL_PAGE_SIZE,
        }
    }
}

impl std::fmt::Display for PageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PageKind::Huge2M => "2MiB huge pages",
            PageKind::Normal4K => "4KiB pages",
        })
    }
}

/// Whether a mapping may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write.
    ReadWrite,
    /// Read only: a write through it faults (SIGSEGV).
    ReadOnly,
}

#[derive(Debug)]
enum Backing {
    Mmap,
    Heap(std::alloc::Layout),
}

/// A region of memory: a shared mapping or a heap block.
#[derive(Debug)]
pub struct Region {
    ptr: *mut u8,
    len: usize,
    access: Access,
    pages: PageKind,
    backing: Backing,
}

// SAFETY: Region is a raw memory range; every concurrent access to it goes
// through atomics or the ring's protocol, never through Region itself.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl Region {
    /// Maps `len` bytes of `fd` shared, pre-faulted.
    pub fn map(fd: BorrowedFd<'_>, len: usize, access: Access, pages: PageKind) -> io::Result<Self> {
        let prot = match access {
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            Access::ReadOnly => libc::PROT_READ,
        };
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL); the fd is
        // open for the call; len is checked by the kernel.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Region { ptr: ptr.cast(), len, access, pages, backing: Backing::Mmap })
    }

    /// Zeroed heap memory, page aligned. For threads of one process, tests,
    /// and Miri (which cannot run `mmap`).
    pub fn heap(len: usize) -> Self {
        assert!(len > 0);
        let layout = std::alloc::Layout::from_size_align(len, SMALL_PAGE_SIZE).expect("layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Region { ptr, len, access: Access::ReadWrite, pages: PageKind::Normal4K, backing: Backing::Heap(layout) }
    }

    /// Start of the region.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty (never, by construction).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read-only or read-write.
    pub fn access(&self) -> Access {
        self.access
    }

    /// Page kind backing the region.
    pub fn pages(&self) -> PageKind {
        self.pages
    }

    /// Maps `fd` over this region in place (`MAP_FIXED`, same address,
    /// length and access): pointers into the region stay valid and from
    /// now on reach `fd`'s memory; the file mapped before is unmapped
    /// atomically. Only for mapped regions.
    pub fn remap(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if !matches!(self.backing, Backing::Mmap) {
            return Err(io::Error::new(io::ErrorKind::Unsupported, "a heap region cannot be remapped"));
        }
        let prot = match self.access {
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            Access::ReadOnly => libc::PROT_READ,
        };
        // SAFETY: [ptr, ptr + len) is this region's own mapping (so
        // MAP_FIXED replaces nothing else); the fd is open for the call.
        let got = unsafe {
            libc::mmap(self.ptr.cast(), self.len, prot, libc::MAP_SHARED | libc::MAP_FIXED | libc::MAP_POPULATE, fd.as_raw_fd(), 0)
        };
        if got == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        debug_assert_eq!(got.cast::<u8>(), self.ptr);
        Ok(())
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        match self.backing {
            // SAFETY: ptr/len came from a successful mmap and nothing
            // borrows the region past its owner's life.
            Backing::Mmap => unsafe {
                libc::munmap(self.ptr.cast(), self.len);
            },
            // SAFETY: ptr came from alloc_zeroed with this layout.
            Backing::Heap(layout) => unsafe { std::alloc::dealloc(self.ptr, layout) },
        }
    }
}

/// Whether the filesystem holding `fd` is hugetlbfs.
pub fn fd_is_hugetlbfs(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: statfs is plain data; fstatfs writes it fully on success.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    let rc = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
    rc == 0 && st.f_type as i64 == HUGETLBFS_MAGIC
}

/// Whether `dir` is on hugetlbfs.
pub fn dir_is_hugetlbfs(dir: &Path) -> bool {
    File::open(dir).map(|f| fd_is_hugetlbfs(std::os::fd::AsFd::as_fd(&f))).unwrap_or(false)
}

/// Creates an anonymous memory file that can be sealed ([`seal_size`]).
/// With `huge`, asks for 2 MiB pages (MFD_HUGETLB); the caller falls back
/// if mapping it then fails.
pub fn memfd(name: &str, huge: bool) -> io::Result<OwnedFd> {
    let cname = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    if huge {
        flags |= libc::MFD_HUGETLB; // default huge page size: 2 MiB here
    }
    // SAFETY: cname is a valid C string for the call.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets the length of the file behind `fd`.
pub fn set_len(fd: BorrowedFd<'_>, len: u64) -> io::Result<()> {
    // SAFETY: fd is open; ftruncate takes plain integers.
    let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Fixes the size of memfd `fd` for good (`F_SEAL_SHRINK | F_SEAL_GROW`,
/// and `F_SEAL_SEAL` so that no holder can change the seals), and makes it
/// accessible to its owner only (mode 0600; a memfd starts at 0777, which
/// would let a holder of a read-only fd reopen it read-write through
/// /proc/self/fd). Whoever holds an fd of it can then neither shrink it
/// (which makes every mapping of the cut pages fault with SIGBUS) nor grow
/// it (which fills memory), nor reopen it with more access than given.
pub fn seal_size(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fd is open; fchmod and fcntl take plain integers.
    let rc = unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: as above.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is a memfd whose size is sealed by [`seal_size`].
pub fn size_sealed(fd: BorrowedFd<'_>) -> bool {
    let want = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fd is open; F_GET_SEALS takes no argument.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & want == want
}

/// A new open file description of the file behind `fd` (through
/// /proc/self/fd), read-only or read-write: how a read-only fd of a
/// memfd, whose own fds are always read-write, is made.
pub fn reopen(fd: BorrowedFd<'_>, write: bool) -> io::Result<OwnedFd> {
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let file = std::fs::OpenOptions::new().read(true).write(write).open(path)?;
    Ok(OwnedFd::from(file))
}

/// Length of the file behind `fd`.
pub fn file_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    // SAFETY: stat is plain data; fstat fills it on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.st_size as u64)
}
