//! The disk's sequential write limit for `persist`: `depth` O_DIRECT
//! writes of `block` bytes kept in flight with io_uring, from aligned
//! buffers, until `total` bytes are written, then one `fdatasync`.
//!
//! This is the crate's only `unsafe`: pushing a submission, whose buffer
//! the kernel reads until its completion is reaped. Every buffer is a
//! block of one allocation that [`sequential_write`] keeps until it has
//! reaped every completion — on errors too — and leaks when it cannot tell
//! what is still in flight (a failed `io_uring_enter`). The caller opens
//! the file (O_DIRECT) and sizes it; nothing else here is unsafe.

#![allow(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use io_uring::{opcode, types, IoUring};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Alignment of O_DIRECT buffers, offsets and lengths: the largest logical
/// block size in common use.
pub(crate) const ALIGN: usize = 4096;

/// `depth` blocks of `block` bytes, [`ALIGN`]-aligned, inside an
/// over-allocated vector (aligning a slice needs no `unsafe`), filled with
/// pseudo-random bytes so that no layer below can compress or deduplicate
/// them.
#[derive(Debug)]
struct Blocks {
    vec: Vec<u8>,
    at: usize,
    block: usize,
}

impl Blocks {
    fn new(block: usize, depth: usize) -> Self {
        let len = block * depth;
        let mut vec = vec![0u8; len + ALIGN];
        let at = vec.as_ptr().align_offset(ALIGN);
        assert!(at < ALIGN, "a byte pointer can always be aligned");
        // xorshift64: cheap, and far from anything compressible.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut vec[at..at + len] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        Blocks { vec, at, block }
    }

    fn get(&self, i: usize) -> &[u8] {
        let b = &self.vec[self.at + i * self.block..][..self.block];
        debug_assert!(b.as_ptr().align_offset(ALIGN) == 0);
        b
    }
}

/// Writes `total` bytes to `file` from offset 0 in `block`-byte writes,
/// `depth` in flight, then `fdatasync`s it; returns the time taken from
/// the first submission to the end of the sync. `file` should be open
/// with O_DIRECT and already `total` bytes long (allocated), so that the
/// writes neither extend it nor wait on each other for the inode lock.
///
/// Runs on a thread of its own, which exits with its io_uring: when an
/// io_uring instance closes, the kernel queues task work on each thread
/// that used it with a signal-like notification (TWA_SIGNAL), which
/// interrupts that thread's next interruptible wait. A socket read with a
/// timeout (the rill client's control socket) then fails with EINTR.
pub(crate) fn sequential_write(file: &File, total: u64, block: usize, depth: usize) -> Result<Duration> {
    std::thread::scope(|s| {
        s.spawn(|| write_on_this_thread(file, total, block, depth))
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn write_on_this_thread(file: &File, total: u64, block: usize, depth: usize) -> Result<Duration> {
    assert!(block > 0 && block.is_multiple_of(ALIGN), "block {block} is not a multiple of {ALIGN}");
    assert!(depth > 0 && total > 0 && total.is_multiple_of(block as u64), "{total} bytes in {block}-byte blocks");
    let len = u32::try_from(block).context("block too large for one write")?;
    let entries = u32::try_from(depth).context("queue depth")?.next_power_of_two();
    let blocks = Blocks::new(block, depth);
    let mut ring = IoUring::new(entries).context("io_uring setup")?;
    let fd = types::Fd(file.as_raw_fd());
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut done: Vec<(u64, i32)> = Vec::with_capacity(entries as usize);
    let (mut next, mut written) = (0u64, 0u64);
    let mut failed: Option<anyhow::Error> = None;
    let start = Instant::now();
    loop {
        // Keep `depth` writes in flight (none after a failure: drain).
        while failed.is_none() && next < total {
            let Some(slot) = free.pop() else { break };
            let buf = blocks.get(slot);
            let sqe = opcode::Write::new(fd, buf.as_ptr(), len).offset(next).build().user_data(slot as u64);
            // SAFETY: `buf` is a block of `blocks`, which lives until every
            // completion has been reaped (the loop below only ends with
            // all slots free) or is leaked; no one writes to it meanwhile;
            // `file` outlives this call.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                free.push(slot);
                failed = Some(anyhow!("io_uring submission queue full"));
                break;
            }
            next += block as u64;
        }
        if free.len() == depth {
            break;
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // What the kernel still reads is unknown: keep the buffers.
            std::mem::forget(blocks);
            return Err(e).context("io_uring_enter");
        }
        done.clear();
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        for &(slot, res) in &done {
            free.push(slot as usize);
            match u64::try_from(res) {
                Ok(n) if n == block as u64 => written += n,
                Ok(n) => {
                    failed.get_or_insert_with(|| anyhow!("short write: {n} of {block} bytes"));
                }
                Err(_) => {
                    let e = std::io::Error::from_raw_os_error(-res);
                    failed.get_or_insert_with(|| anyhow!("O_DIRECT write: {e}"));
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if written != total {
        bail!("wrote {written} of {total} bytes");
    }
    file.sync_data().context("fdatasync after the writes")?;
    Ok(start.elapsed())
}
