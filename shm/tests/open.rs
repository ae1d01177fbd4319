//! Creating and opening ring files: page kinds, and typed errors for every
//! kind of bad header.

use rill_shm::ring::{OpenError, PagePreference, Policy, Ring, RingConfig, Start};
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

    poke(&path, 8, &2u32.to_le_bytes());
    let e = Ring::open(&path, Access::ReadOnly).unwrap_err();
    assert!(matches!(e, OpenError::VersionMismatch { found: 2, expected: 1 }), "{e}");
    poke(&path, 8, &1u32.to_le_bytes());

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

fn open_fd(path: &std::path::Path, write: bool) -> std::os::fd::OwnedFd {
    std::fs::OpenOptions::new().read(true).write(write).open(path).unwrap().into()
}

#[test]
fn page_file_rings_give_subscribers_only_their_own_slot() {
    use rill_shm::ring::{daemon_page_path, slot_page_path, wake_page_path, ClaimError};
    let dir = TempDir::new("pages");
    let (rings, pages) = (dir.0.join("rings"), dir.0.join("pages"));
    std::fs::create_dir_all(&rings).unwrap();
    std::fs::create_dir_all(&pages).unwrap();
    let cfg = RingConfig { capacity: 4096, max_message_len: 256, slot_count: 3, ..config() };
    let daemon = Ring::create_with_page_files(&rings, &pages, "p", &cfg).unwrap();
    assert!(matches!(Ring::open(&rings.join("p"), Access::ReadOnly), Err(OpenError::NeedsPageFiles)));

    // The daemon attaches a subscriber; the subscriber maps the ring
    // read-only and only its own slot page read-write.
    let (slot, position) = daemon.attach_subscriber(Start::Latest, 4242).unwrap();
    let sub_slots = (0..3)
        .map(|i| (i == slot).then(|| (open_fd(&slot_page_path(&pages, "p", i), true), Access::ReadWrite)))
        .collect();
    let wake = (open_fd(&wake_page_path(&pages, "p"), true), Access::ReadWrite);
    let vouch = || (open_fd(&daemon_page_path(&pages, "p"), false), Access::ReadOnly);
    let sub_ring = Ring::from_fds(open_fd(&rings.join("p"), false), Access::ReadOnly, sub_slots, wake, vouch()).unwrap();
    assert!(sub_ring.is_read_only());
    assert!(sub_ring.subscribe(Start::Latest).is_err(), "cannot take other slots");
    assert!(sub_ring.subscriber_on_slot((slot + 1) % 3, 0).is_err(), "cannot use a slot it does not map");
    let mut sub = sub_ring.subscriber_on_slot(slot, position).unwrap();

    // A publisher maps the ring read-write and every slot read-only.
    let pub_slots = (0..3).map(|i| Some((open_fd(&slot_page_path(&pages, "p", i), false), Access::ReadOnly))).collect();
    let wake = (open_fd(&wake_page_path(&pages, "p"), true), Access::ReadWrite);
    let pub_ring = Ring::from_fds(open_fd(&rings.join("p"), true), Access::ReadWrite, pub_slots, wake, vouch()).unwrap();
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
    // may write the whole ring file) changes nothing.
    let end = daemon.tail();
    daemon.set_durable_position(end - 1);
    forge_header_durable(&rings.join("p"), u64::MAX);
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

    // The daemon re-opens everything after a restart.
    let adopted = Ring::open_page_files(&rings, &pages, "p", Access::ReadWrite).unwrap();
    assert_eq!(adopted.tail(), daemon.tail());
    assert_eq!(adopted.durable_position(), end + 1);
}

/// Writes `value` over the durable position in the ring file's counters,
/// as a publisher (which may write the ring file) could.
fn forge_header_durable(ring: &std::path::Path, value: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(ring).unwrap();
    let at = (rill_shm::layout::COUNTERS_OFFSET + std::mem::offset_of!(rill_shm::layout::Counters, durable)) as u64;
    f.write_all_at(&value.to_le_bytes(), at).unwrap();
}

/// A ring made before daemon pages existed (its durable position in the
/// ring file's counters) is upgraded when the daemon opens it: the page
/// is made, holding that position.
#[test]
fn a_ring_without_a_daemon_page_gets_one_from_its_counters() {
    use rill_shm::ring::daemon_page_path;
    let dir = TempDir::new("upgrade");
    let (rings, pages) = (dir.0.join("rings"), dir.0.join("pages"));
    std::fs::create_dir_all(&rings).unwrap();
    std::fs::create_dir_all(&pages).unwrap();
    let cfg = RingConfig { capacity: 4096, max_message_len: 256, slot_count: 2, ..config() };
    drop(Ring::create_with_page_files(&rings, &pages, "old", &cfg).unwrap());
    std::fs::remove_file(daemon_page_path(&pages, "old")).unwrap();
    forge_header_durable(&rings.join("old"), 4242);
    let ring = Ring::open_page_files(&rings, &pages, "old", Access::ReadWrite).unwrap();
    assert_eq!(ring.durable_position(), 4242);
    assert!(daemon_page_path(&pages, "old").is_file());
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
