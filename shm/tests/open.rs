//! Creating and opening ring files: page kinds, and typed errors for every
//! kind of bad header.

use rill_shm::ring::{OpenError, PagePreference, Policy, Ring, RingConfig, RingFiles, Start};
use std::os::fd::{AsFd, OwnedFd};
use rill_shm::{Access, PageKind};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = PathBuf::from(format!("/dev/shm/rill-open-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config() -> RingConfig {
    RingConfig { capacity: 64 << 10, max_message_len: 1024, pages: PagePreference::NormalOnly, ..Default::default() }
}

fn poke(path: &std::path::Path, offset: u64, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

#[test]
fn create_then_open_shares_the_ring() {
    let dir = TempDir::new("share");
    let created = Ring::create_in(&dir.0, "s", &config()).unwrap();
    assert_eq!(created.pages(), PageKind::Normal4K);
    let opened = Ring::open(&dir.0.join("s"), Access::ReadWrite).unwrap();
    assert_eq!(opened.info().capacity, 64 << 10);
    assert_eq!(opened.info().policy, Policy::BackPressure);
    let mut sub = opened.subscribe(Start::Latest).unwrap();
    created.exclusive_publication().unwrap().offer(b"across mappings").unwrap();
    let mut got = Vec::new();
    sub.poll(4, |m| got.push(m.payload.to_vec())).unwrap();
    assert_eq!(got, vec![b"across mappings".to_vec()]);
    assert!(Ring::create_in(&dir.0, "s", &config()).is_err(), "create must not clobber");
}

#[test]
fn read_only_mapping_reads_but_cannot_publish() {
    let dir = TempDir::new("ro");
    let ring = Ring::create_in(&dir.0, "r", &config()).unwrap();
    let ro = Ring::open(&dir.0.join("r"), Access::ReadOnly).unwrap();
    assert!(ro.is_read_only());
    assert!(ro.exclusive_publication().is_err());
    assert!(ro.subscribe(Start::Latest).is_err());
    let mut det = ro.subscribe_detached(Start::Latest);
    ring.exclusive_publication().unwrap().offer(b"seen read-only").unwrap();
    let mut got = Vec::new();
    det.poll(4, |m| got.push(m.payload.to_vec())).unwrap();
    assert_eq!(got, vec![b"seen read-only".to_vec()]);
}

#[test]
fn bad_headers_are_typed_errors() {
    let dir = TempDir::new("bad");
    let path = dir.0.join("b");
    drop(Ring::create_in(&dir.0, "b", &config()).unwrap());

    let other = rill_shm::layout::LAYOUT_VERSION + 1;
    poke(&path, 8, &other.to_le_bytes());
    let e = Ring::open(&path, Access::ReadOnly).unwrap_err();
    assert!(matches!(e, OpenError::VersionMismatch { found, expected: rill_shm::layout::LAYOUT_VERSION } if found == other), "{e}");
    poke(&path, 8, &rill_shm::layout::LAYOUT_VERSION.to_le_bytes());

    poke(&path, 12, &0u32.to_le_bytes());
    assert!(matches!(Ring::open(&path, Access::ReadOnly), Err(OpenError::NotReady)));
    poke(&path, 12, &1u32.to_le_bytes());

    poke(&path, 16, &(3u64 << 12).to_le_bytes());
    let e = Ring::open(&path, Access::ReadOnly).unwrap_err();
    assert!(matches!(e, OpenError::Corrupt(_)), "{e}");
    poke(&path, 16, &(64u64 << 10).to_le_bytes());

    poke(&path, 0, b"NOTARING");
    assert!(matches!(Ring::open(&path, Access::ReadOnly), Err(OpenError::BadMagic { .. })));
    poke(&path, 0, &0u64.to_le_bytes());
    assert!(matches!(Ring::open(&path, Access::ReadOnly), Err(OpenError::NotReady)));
    poke(&path, 0, b"RILLRING");
    Ring::open(&path, Access::ReadOnly).expect("restored header opens again");

    std::fs::write(dir.0.join("small"), [0u8; 100]).unwrap();
    assert!(matches!(Ring::open(&dir.0.join("small"), Access::ReadOnly), Err(OpenError::TooSmall { len: 100 })));
    assert!(matches!(Ring::open(&dir.0.join("missing"), Access::ReadOnly), Err(OpenError::Io { .. })));
}

#[test]
fn invalid_configs_are_refused() {
    for bad in [
        RingConfig { capacity: 5000, ..config() },
        RingConfig { max_message_len: 0, ..config() },
        RingConfig { max_message_len: 1 << 20, ..config() },
        RingConfig { slot_count: 0, ..config() },
    ] {
        assert!(Ring::private(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn memfd_rings_fall_back_and_report_pages() {
    let normal = Ring::create_memfd("normal", &config()).unwrap();
    assert_eq!(normal.pages(), PageKind::Normal4K);
    let auto = Ring::create_memfd("auto", &RingConfig { pages: PagePreference::Auto, ..config() }).unwrap();
    let reserved = std::fs::read_to_string("/proc/sys/vm/nr_hugepages").unwrap().trim().parse::<u64>().unwrap();
    if reserved > 0 {
        assert_eq!(auto.pages(), PageKind::Huge2M, "huge pages are reserved, so Auto must get them");
    } else {
        assert_eq!(auto.pages(), PageKind::Normal4K);
    }
    // The fd maps again, as another process would after SCM_RIGHTS.
    let fd = auto.fd().unwrap().try_clone_to_owned().unwrap();
    let again = Ring::from_fd(fd, Access::ReadWrite).unwrap();
    assert_eq!(again.pages(), auto.pages());
    let mut sub = again.subscribe(Start::Latest).unwrap();
    auto.shared_publication().unwrap().offer(b"via fd").unwrap();
    assert_eq!(sub.poll(4, |m| assert_eq!(m.payload, b"via fd")).unwrap(), 1);
}

/// Splits the fds of `RingFiles::for_publisher` / `for_subscriber` into
/// what `Ring::from_fds` takes: the ring, `slots` (the subscriber's own
/// slot at `own`, or every slot read-only for a publisher), wake, daemon.
type Fds = (OwnedFd, Vec<Option<(OwnedFd, Access)>>, (OwnedFd, Access), (OwnedFd, Access));

fn publisher_fds(files: &RingFiles) -> Fds {
    let mut fds = files.for_publisher().unwrap();
    let daemon = fds.pop().unwrap();
    let mut it = fds.into_iter();
    let (ring, wake) = (it.next().unwrap(), it.next().unwrap());
    (ring, it.map(|f| Some((f, Access::ReadOnly))).collect(), (wake, Access::ReadWrite), (daemon, Access::ReadOnly))
}

fn subscriber_fds(files: &RingFiles, slot: u32) -> Fds {
    let mut it = files.for_subscriber(slot).unwrap().into_iter();
    let (ring, wake, own, daemon) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    let mut own = Some(own);
    let slots = (0..files.slots.len() as u32).map(|i| if i == slot { own.take().map(|f| (f, Access::ReadWrite)) } else { None }).collect();
    (ring, slots, (wake, Access::ReadWrite), (daemon, Access::ReadOnly))
}

#[test]
fn sealed_rings_give_subscribers_only_their_own_slot() {
    use rill_shm::ring::ClaimError;
    let cfg = RingConfig { capacity: 4096, max_message_len: 256, slot_count: 3, ..config() };
    let (daemon, files) = Ring::create_sealed("p", &cfg).unwrap();
    let ring_only = files.ring.try_clone().unwrap();
    assert!(matches!(Ring::from_fd(ring_only, Access::ReadOnly), Err(OpenError::NeedsPageFiles)));

    // The daemon attaches a subscriber; the subscriber maps the ring
    // read-only and only its own slot page read-write.
    let (slot, position) = daemon.attach_subscriber(Start::Latest, 4242).unwrap();
    let (ring, slots, wake, vouch) = subscriber_fds(&files, slot);
    let sub_ring = Ring::from_fds(ring, Access::ReadOnly, slots, wake, vouch).unwrap();
    assert!(sub_ring.is_read_only());
    assert!(sub_ring.subscribe(Start::Latest).is_err(), "cannot take other slots");
    assert!(sub_ring.subscriber_on_slot((slot + 1) % 3, 0).is_err(), "cannot use a slot it does not map");
    let mut sub = sub_ring.subscriber_on_slot(slot, position).unwrap();

    // A publisher maps the ring read-write and every slot read-only.
    let (ring, slots, wake, vouch) = publisher_fds(&files);
    let pub_ring = Ring::from_fds(ring, Access::ReadWrite, slots, wake, vouch).unwrap();
    assert!(pub_ring.subscribe(Start::Latest).is_err(), "publishers cannot take slots");
    let mut publ = pub_ring.exclusive_publication().unwrap();
    let mut sent = 0u32;
    while publ.offer(&sent.to_le_bytes()).is_ok() {
        sent += 1;
    }
    assert_eq!(publ.offer(b"x"), Err(ClaimError::BackPressured), "held back by the subscriber's page");
    let mut got = 0u32;
    while sub.poll(1000, |m| {
        assert_eq!(m.payload, got.to_le_bytes());
        got += 1;
    }).unwrap() > 0 {}
    assert_eq!(got, sent);
    assert_eq!(daemon.subscribers()[0].pid, 4242);
    assert!(publ.offer(b"x").is_ok(), "released by the subscriber's progress");

    // Blocking wait works through the wake page.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    assert_eq!(sub.poll_blocking(10, |m| assert_eq!(m.payload, b"x"), deadline).unwrap(), 1);
    drop(sub);
    assert!(daemon.subscribers().is_empty(), "dropping frees the slot");

    // Durability is vouched for on the daemon page, which only the daemon
    // writes: a publisher that writes the ring header's durable line (it
    // may write the whole ring) changes nothing.
    let end = daemon.tail();
    daemon.set_durable_position(end - 1);
    forge_header_durable(&files.ring, u64::MAX);
    assert_eq!(pub_ring.durable_position(), end - 1);
    assert_eq!(pub_ring.wait_durable(end, std::time::Duration::ZERO, std::time::Duration::from_millis(50)), Err(end - 1));
    assert_eq!(pub_ring.wait_durable(end - 2, std::time::Duration::ZERO, std::time::Duration::from_secs(5)), Ok(end - 1));
    let waiter = std::thread::spawn({
        let pub_ring = pub_ring.clone();
        move || pub_ring.wait_durable(end, std::time::Duration::ZERO, std::time::Duration::from_secs(30))
    });
    while daemon.set_durable_position(end + 1) == 0 && !waiter.is_finished() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(waiter.join().unwrap(), Ok(end + 1));

    // The daemon maps everything again after a restart.
    let adopted = Ring::adopt_sealed(&files).unwrap();
    assert_eq!(adopted.tail(), daemon.tail());
    assert_eq!(adopted.durable_position(), end + 1);
}

/// No fd a client is given can resize what others map: every one refuses
/// ftruncate (shrinking would make every mapping of the cut pages fault
/// with SIGBUS) and fallocate past the end (growing fills memory), and the
/// read-only ones cannot be mapped writable. The daemon's mapping reads
/// on, and a memfd that is not sealed is refused at adoption.
#[test]
fn handed_out_fds_cannot_resize_the_ring_or_its_pages() {
    use std::os::fd::AsRawFd;
    let cfg = RingConfig { capacity: 4096, max_message_len: 256, slot_count: 2, ..config() };
    let (daemon, files) = Ring::create_sealed("sealed", &cfg).unwrap();
    let (slot, _) = daemon.attach_subscriber(Start::Latest, 1).unwrap();
    let mut handed = files.for_publisher().unwrap();
    handed.extend(files.for_subscriber(slot).unwrap());
    for fd in &handed {
        let raw = fd.as_raw_fd();
        let len = rill_shm::os::mapping::file_len(fd.as_fd()).unwrap();
        // SAFETY: plain syscalls on an fd this test owns.
        let (truncate, grow) = unsafe { (libc::ftruncate(raw, 0), libc::fallocate(raw, 0, 0, (len * 4) as libc::off_t)) };
        assert!(truncate != 0 && grow != 0, "fd {raw} ({len} bytes) could be resized: ftruncate {truncate}, fallocate {grow}");
        assert_eq!(rill_shm::os::mapping::file_len(fd.as_fd()).unwrap(), len);
    }
    let publ = daemon.shared_publication().unwrap();
    let mut sub = daemon.subscriber_on_slot(slot, daemon.tail()).unwrap();
    let mut publ = publ;
    publ.offer(b"still here").unwrap();
    assert_eq!(sub.poll(4, |m| assert_eq!(m.payload, b"still here")).unwrap(), 1);

    let plain = rill_shm::os::mapping::memfd("plain", false).unwrap();
    rill_shm::os::mapping::set_len(plain.as_fd(), 4096).unwrap();
    let forged = RingFiles { wake: plain, ..files };
    assert!(matches!(Ring::adopt_sealed(&forged), Err(OpenError::Corrupt(_))), "an unsealed page was adopted");
}

/// Writes `value` over the durable position in the ring's counters, as a
/// publisher (which may write the ring) could.
fn forge_header_durable(ring: &OwnedFd, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::from(ring.try_clone().unwrap());
    let at = (rill_shm::layout::COUNTERS_OFFSET + std::mem::offset_of!(rill_shm::layout::Counters, durable)) as u64;
    f.write_all_at(&value.to_le_bytes(), at).unwrap();
}

#[test]
fn wake_word_is_shared_between_mappings_and_absent_read_only() {
    use std::sync::atomic::Ordering;
    let dir = TempDir::new("wake");
    let ring = Ring::create_in(&dir.0, "w", &config()).unwrap();
    let rw = Ring::open(&dir.0.join("w"), Access::ReadWrite).unwrap();
    let ro = Ring::open(&dir.0.join("w"), Access::ReadOnly).unwrap();
    assert!(ro.wake_word().is_none(), "a read-only mapping must not hand out a word it cannot write");
    let (a, b) = (ring.wake_word().unwrap(), rw.wake_word().unwrap());
    a.store(7, Ordering::Release);
    assert_eq!(b.load(Ordering::Acquire), 7);
    b.store(8, Ordering::Release);
    assert_eq!(a.load(Ordering::Acquire), 8);
}

/// Every publisher may write the ring's header. rilld keeps its own copy
/// of the header on the daemon page, and whoever maps the ring (rilld
/// adopting it, a client) refuses a header that no longer matches it; the
/// exclusive holder's record lives on the daemon page, out of publishers'
/// reach.
#[test]
fn a_rewritten_header_is_refused_and_the_exclusive_record_is_the_daemons() {
    use rill_shm::layout::Meta;
    use std::os::unix::fs::FileExt;
    let cfg = RingConfig { capacity: 4096, max_message_len: 256, slot_count: 2, ..config() };
    let (daemon, files) = Ring::create_sealed("meta", &cfg).unwrap();
    daemon.set_exclusive_holder(4242);
    let ring = std::fs::File::from(files.ring.try_clone().unwrap());
    let header_pid = (rill_shm::layout::COUNTERS_OFFSET
        + std::mem::offset_of!(rill_shm::layout::Counters, publishers)
        + std::mem::offset_of!(rill_shm::layout::PublisherWords, exclusive_pid)) as u64;
    ring.write_all_at(&7u32.to_le_bytes(), header_pid).unwrap();
    let adopted = Ring::adopt_sealed(&files).unwrap();
    assert_eq!(adopted.exclusive_holder(), 4242, "the record was taken from the ring's header");

    for (field, at, value) in [
        ("policy", std::mem::offset_of!(Meta, policy), 1u64 - cfg.policy as u64),
        ("commit_salt", std::mem::offset_of!(Meta, commit_salt), 12345),
        ("max_message_len", std::mem::offset_of!(Meta, max_message_len), 128),
    ] {
        let width = if field == "commit_salt" { 8 } else { 4 };
        let mut old = vec![0u8; width];
        ring.read_exact_at(&mut old, at as u64).unwrap();
        ring.write_all_at(&value.to_le_bytes()[..width], at as u64).unwrap();
        match Ring::adopt_sealed(&files) {
            Err(OpenError::Corrupt(why)) => assert!(why.contains(field), "{field}: {why}"),
            other => panic!("a header with a rewritten {field} was adopted: {:?}", other.map(|r| r.info().clone())),
        }
        ring.write_all_at(&old, at as u64).unwrap();
    }
    Ring::adopt_sealed(&files).unwrap();
}
