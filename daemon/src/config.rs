//! Configuration: defaults, the TOML file, and who may do what.
//!
//! ```toml
//! socket = "/run/rill/rilld.sock"
//! socket_mode = 0o666                # who may connect (then [[allow]] decides what they may do)
//! # socket_gid = 1500               # the socket's group (with socket_mode = 0o660: only that group)
//! trust_root = true                  # uid 0 and rilld's uid pass every [[allow]] rule; false for containers running as root
//! state_dir = "/run/rilld"           # rilld's private state (the ring keeper's socket); never mount it in a container
//! huge_pages = true                  # rings on 2 MiB pages where reserved (else 4 KiB pages, logged)
//! linger_ms = 5000                   # unused streams removed after this
//! heartbeat_ms = 1000                # clients say they live this often
//! client_timeout_ms = 5000           # silent this long = hung: released
//! unblock_timeout_ms = 5000          # abandoned claims padded after this
//! resume_grace_ms = 5000             # after a restart, time for clients to come back
//! stall_limit_ms = 30000             # a subscriber a whole ring behind this long is revoked
//! slot_count = 16                    # subscriber slots per stream (max 64)
//! keep = ["orders."]                 # streams with these prefixes stay when unused
//! data_dir = "/var/lib/rill"         # segment files of persisted streams (on disk, never tmpfs)
//! segment_bytes = 67108864           # roll to a new segment file past this size
//! retention_bytes = 10737418240      # keep each persisted log under 10 GiB (default: no limit)
//! retention_ms = 604800000           # delete sealed segments older than 7 days (default: never)
//! direct_io = true                  # write segments with O_DIRECT where the filesystem supports it
//!
//! [limits]                           # each refusal names the limit (ErrorCode::Limit)
//! connections = 4096                 # client connections in total
//! connections_per_uid = 1024         # ... of one uid
//! streams = 1024                     # streams in total
//! streams_per_uid = 256              # ... created by one uid
//! stream_bytes = 1073741824          # the largest ring a client may create (1 GiB)
//! ring_bytes = 12884901888           # ring memory in total (default: half the machine's memory)
//! ring_bytes_per_uid = 6442450944    # ... created by one uid (default: a quarter of it)
//! persisted_streams = 256            # persisted streams (a thread, an io_uring, a segment each)
//! persisted_streams_per_uid = 64     # ... created by one uid
//!
//! [[allow]]                          # uid 1000 may publish to orders.*, read all
//! uids = [1000]
//! publish = ["orders."]
//! subscribe = [""]
//! ```
//!
//! Limits apply to every uid, root included; streams that rilld
//! recovered or adopted at start count towards the totals only.
//!
//! Without `[[allow]]` rules only root and the daemon's own uid may use
//! the daemon. A rule grants its `publish` and `subscribe` name prefixes to
//! the listed uids and gids (`""` matches every name).

use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The default socket path: the client library's, so both always agree.
pub use rill_protocol::DEFAULT_SOCKET;

/// One access rule.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowRule {
    /// User ids the rule applies to.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Group ids the rule applies to.
    #[serde(default)]
    pub gids: Vec<u32>,
    /// Stream name prefixes they may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Stream name prefixes they may subscribe to.
    #[serde(default)]
    pub subscribe: Vec<String>,
}

/// What a client wants to do with a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a publisher (or create the stream).
    Publish,
    /// Open a subscriber.
    Subscribe,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish to",
            Action::Subscribe => "subscribe to",
        })
    }
}

/// The daemon's configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listening socket.
    pub socket: PathBuf,
    /// Permission bits of the listening socket (connecting needs write
    /// permission on it): 0o666 lets every local user connect, to be
    /// judged by `[[allow]]`; 0o660 with `socket_gid` only that group.
    pub socket_mode: u32,
    /// Group of the listening socket (a gid), if not rilld's own.
    pub socket_gid: Option<u32>,
    /// Whether uid 0 and rilld's own uid may use every stream whatever
    /// `[[allow]]` says. Set it to false where containers run as uid 0 of
    /// the host's user namespace: they are then held to the rules like
    /// everyone (limits bind them either way).
    pub trust_root: bool,
    /// rilld's private state: the socket of the ring keeper, which holds
    /// every ring's memory across a restart of rilld (see
    /// [`crate::keeper`]). Created mode 0700; refused if another uid owns
    /// it or others may write it. Never mount it into a container.
    pub state_dir: PathBuf,
    /// Put rings on 2 MiB huge pages where the kernel has some reserved
    /// (`/proc/sys/vm/nr_hugepages`), else on 4 KiB pages (logged);
    /// `false`: always 4 KiB pages.
    pub huge_pages: bool,
    /// Unused, not-kept streams are removed after this long.
    pub linger_ms: u64,
    /// Heartbeat interval asked of clients.
    pub heartbeat_ms: u32,
    /// A client silent this long is considered hung and released.
    pub client_timeout_ms: u64,
    /// Abandoned claims are padded after this long.
    pub unblock_timeout_ms: u64,
    /// After a restart, adopted subscriber slots wait this long for their
    /// owners to reconnect.
    pub resume_grace_ms: u64,
    /// A subscriber of a back-pressure stream that stays a whole ring
    /// behind (holding every publisher back) without moving for this long
    /// loses its slot: publishers go on, and its next poll says it was
    /// revoked. Heartbeats do not count: only its position does.
    pub stall_limit_ms: u64,
    /// Subscriber slots per stream.
    pub slot_count: u32,
    /// Streams whose names start with one of these stay when unused.
    pub keep: Vec<String>,
    /// Where persisted streams' segment files live (one directory per
    /// stream). Must be a disk filesystem, not tmpfs.
    pub data_dir: PathBuf,
    /// A segment file is sealed and a new one started past this size.
    pub segment_bytes: u64,
    /// Retention: a persisted stream's log is kept under this many bytes
    /// (whole sealed segments deleted, oldest first). None: unbounded.
    pub retention_bytes: Option<u64>,
    /// Retention: sealed segments last written longer ago than this are
    /// deleted. None: kept for ever.
    pub retention_ms: Option<u64>,
    /// Write segment files with direct I/O (O_DIRECT) where the data
    /// directory's filesystem supports it; buffered writes elsewhere
    /// (tmpfs) or when false.
    pub direct_io: bool,
    /// Limits on what clients may take (see [`Limits`]).
    pub limits: Limits,
    /// Access rules.
    pub allow: Vec<AllowRule>,
}

/// What clients may take of the host, in total and per uid. A request
/// past a limit is refused with `ErrorCode::Limit` and a message naming
/// the limit, its value and how much is in use; nothing else changes.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Client connections in total.
    pub connections: usize,
    /// Client connections of one uid.
    pub connections_per_uid: usize,
    /// Streams in total.
    pub streams: usize,
    /// Streams created by one uid (and not removed since).
    pub streams_per_uid: usize,
    /// The largest ring capacity a client may ask for, in bytes.
    pub stream_bytes: u64,
    /// Ring memory of all streams together, in bytes (capacities).
    pub ring_bytes: u64,
    /// Ring memory of the streams one uid created, in bytes.
    pub ring_bytes_per_uid: u64,
    /// Persisted streams in total (each has an archiver thread, an
    /// io_uring and a preallocated segment file).
    pub persisted_streams: usize,
    /// Persisted streams created by one uid.
    pub persisted_streams_per_uid: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let memory = physical_memory().unwrap_or(8 << 30);
        Limits {
            connections: 4096,
            connections_per_uid: 1024,
            streams: 1024,
            streams_per_uid: 256,
            stream_bytes: 1 << 30,
            ring_bytes: memory / 2,
            ring_bytes_per_uid: memory / 4,
            persisted_streams: 256,
            persisted_streams_per_uid: 64,
        }
    }
}

/// The machine's memory (`MemTotal` of /proc/meminfo), in bytes.
fn physical_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: 0o666,
            socket_gid: None,
            trust_root: true,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            huge_pages: true,
            linger_ms: 5000,
            heartbeat_ms: 1000,
            client_timeout_ms: 5000,
            unblock_timeout_ms: 5000,
            resume_grace_ms: 5000,
            stall_limit_ms: 30_000,
            slot_count: 16,
            keep: Vec::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retention_bytes: None,
            retention_ms: None,
            direct_io: true,
            limits: Limits::default(),
            allow: Vec::new(),
        }
    }
}

/// Default data directory of persisted streams.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/rill";
/// Default segment file size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// Default private state directory.
pub const DEFAULT_STATE_DIR: &str = "/run/rilld";

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        let config: Config = toml::from_str(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that would make the daemon misbehave.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=rill_protocol::MAX_SLOTS_PER_STREAM).contains(&self.slot_count),
            "slot_count {} must be in 1..={}",
            self.slot_count,
            rill_protocol::MAX_SLOTS_PER_STREAM
        );
        anyhow::ensure!(self.heartbeat_ms > 0, "heartbeat_ms must be positive");
        anyhow::ensure!(self.socket_mode <= 0o777, "socket_mode {:#o} is not a permission mode (0o000..=0o777)", self.socket_mode);
        anyhow::ensure!(
            self.client_timeout_ms > u64::from(self.heartbeat_ms),
            "client_timeout_ms must exceed heartbeat_ms"
        );
        anyhow::ensure!(
            self.segment_bytes >= 1 << 20,
            "segment_bytes {} is below the 1 MiB minimum",
            self.segment_bytes
        );
        let l = &self.limits;
        anyhow::ensure!(l.connections > 0 && l.connections_per_uid > 0, "[limits] connections and connections_per_uid must be positive");
        anyhow::ensure!(l.stream_bytes > 0 && l.ring_bytes > 0 && l.ring_bytes_per_uid > 0, "[limits] byte limits must be positive");
        for r in &self.allow {
            anyhow::ensure!(!r.uids.is_empty() || !r.gids.is_empty(), "an [[allow]] rule names no uids or gids");
        }
        Ok(())
    }

    /// Whether the configuration says `stream` stays when unused.
    pub fn keeps(&self, stream: &str) -> bool {
        self.keep.iter().any(|p| stream.starts_with(p.as_str()))
    }

    /// Whether a client with `uid`/`gid` may do `action` on `stream`;
    /// `Err` names the refusal for the client.
    pub fn check(&self, uid: u32, gid: u32, groups: &[u32], action: Action, stream: &str) -> Result<(), String> {
        let own_uid = nix::unistd::getuid().as_raw();
        if self.trust_root && (uid == 0 || uid == own_uid) {
            return Ok(());
        }
        let granted = self.allow.iter().any(|r| {
            (r.uids.contains(&uid) || r.gids.contains(&gid) || groups.iter().any(|g| r.gids.contains(g))) && {
                let prefixes = match action {
                    Action::Publish => &r.publish,
                    Action::Subscribe => &r.subscribe,
                };
                prefixes.iter().any(|p| stream.starts_with(p.as_str()))
            }
        });
        if granted {
            return Ok(());
        }
        let rules = if self.allow.is_empty() && self.trust_root {
            "no [[allow]] rules are configured, so only root and the daemon's uid may".to_string()
        } else if self.allow.is_empty() {
            "no [[allow]] rules are configured (and trust_root = false), so nobody may".to_string()
        } else {
            format!("no [[allow]] rule (of {}) grants uid {uid} / gid {gid} (groups {groups:?}) a prefix of it", self.allow.len())
        };
        Err(format!("uid {uid} may not {action} stream {stream:?}: {rules}"))
    }

    /// Whether a subscriber of uid `uid` trusts every uid that may publish
    /// to `stream`: its own (a process of its uid can change its memory
    /// anyway), and, with `trust_root`, uid 0 and rilld's uid, which may
    /// use every stream (and could as well change any ring). A rule that
    /// lets a group publish is never trusted: groups name no fixed set of
    /// uids. Judged by this configuration: a process allowed to publish
    /// under an earlier one that still maps the ring is not counted.
    pub fn publishers_trusted(&self, uid: u32, stream: &str) -> bool {
        let own_uid = nix::unistd::getuid().as_raw();
        let trusted = |u: u32| u == uid || (self.trust_root && (u == 0 || u == own_uid));
        self.allow.iter().all(|r| {
            let publishes = r.publish.iter().any(|p| stream.starts_with(p.as_str()));
            !publishes || (r.gids.is_empty() && r.uids.iter().all(|&u| trusted(u)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_checks_rules() {
        let c: Config = toml::from_str(
            r#"
            socket = "/tmp/x.sock"
            slot_count = 8
            [[allow]]
            uids = [1000]
            publish = ["orders."]
            subscribe = [""]
            [[allow]]
            gids = [50]
            subscribe = ["metrics."]
        "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.slot_count, 8);
        assert_eq!(c.linger_ms, 5000, "defaults fill the rest");
        assert!(c.check(1000, 1000, &[], Action::Publish, "orders.eu").is_ok());
        assert!(c.check(1000, 1000, &[], Action::Subscribe, "anything").is_ok());
        let e = c.check(1000, 1000, &[], Action::Publish, "billing").unwrap_err();
        assert!(e.contains("billing") && e.contains("publish"), "{e}");
        assert!(c.check(2000, 50, &[], Action::Subscribe, "metrics.cpu").is_ok());
        assert!(c.check(2000, 2000, &[7, 50], Action::Subscribe, "metrics.cpu").is_ok(), "a supplementary group matches");
        assert!(c.check(2000, 2000, &[7], Action::Subscribe, "metrics.cpu").is_err());
        assert!(c.check(2000, 50, &[], Action::Subscribe, "orders.eu").is_err());
        assert!(c.check(0, 0, &[], Action::Publish, "x").is_ok());
        let strict = Config { trust_root: false, ..c.clone() };
        let e = strict.check(0, 0, &[], Action::Publish, "x").unwrap_err();
        assert!(e.contains("uid 0"), "root is held to the rules with trust_root = false: {e}");
        assert!(strict.check(1000, 1000, &[], Action::Publish, "orders.eu").is_ok());
    }

    #[test]
    fn publishers_are_trusted_only_if_every_uid_that_may_publish_is() {
        let own = nix::unistd::getuid().as_raw();
        let c: Config = toml::from_str(&format!(
            r#"
            [[allow]]
            uids = [1000]
            publish = ["mine.", "shared."]
            subscribe = [""]
            [[allow]]
            uids = [2000, 0, {own}]
            publish = ["shared."]
            [[allow]]
            gids = [50]
            publish = ["team."]
        "#
        ))
        .unwrap();
        assert!(c.publishers_trusted(1000, "mine.x"), "only its own uid (and root, rilld) may publish");
        assert!(c.publishers_trusted(0, "other"), "no rule: only root and rilld's uid");
        assert!(!c.publishers_trusted(0, "mine.x"), "root does not trust uid 1000");
        assert!(!c.publishers_trusted(1000, "shared.x"), "uid 2000 may publish too");
        assert!(!c.publishers_trusted(1000, "team.x"), "a group may publish");
        let strict = Config { trust_root: false, ..c.clone() };
        let c2000 = Config { allow: vec![AllowRule { uids: vec![2000, 0], publish: vec!["x".into()], ..AllowRule::default() }], ..strict };
        assert!(!c2000.publishers_trusted(2000, "x"), "without trust_root, uid 0 is a publisher like any other");
        assert!(c2000.publishers_trusted(2000, "y"), "nobody may publish to y");
        let root_trusted = Config { trust_root: true, ..c2000 };
        assert!(root_trusted.publishers_trusted(2000, "x"));
    }

    #[test]
    fn socket_mode_is_octal_and_checked() {
        let c: Config = toml::from_str("socket_mode = 0o660\nsocket_gid = 1500\ntrust_root = false").unwrap();
        assert_eq!((c.socket_mode, c.socket_gid, c.trust_root), (0o660, Some(1500), false));
        c.validate().unwrap();
        let bad: Config = toml::from_str("socket_mode = 0o1777").unwrap();
        assert!(bad.validate().unwrap_err().to_string().contains("socket_mode"));
    }

    /// The README's configuration for containers is a valid rilld.toml
    /// that does what it says.
    #[test]
    fn the_readmes_container_configuration_parses() {
        let readme = include_str!("../../README.md");
        let section = &readme[readme.find("### Configuration for containers").expect("the section")..];
        let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let text = &section[start..start + section[start..].find("```").expect("its end")];
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert!(!c.trust_root && c.socket_mode == 0o660 && c.socket_gid == Some(1500));
        assert!(c.check(0, 0, &[], Action::Publish, "orders.x").is_err(), "root is held to the rules");
        assert!(c.check(2001, 2001, &[], Action::Publish, "orders.x").is_ok());
        assert!(c.check(4000, 4000, &[3000], Action::Subscribe, "prices.eu").is_ok());
        assert!(c.check(4000, 4000, &[3000], Action::Publish, "prices.eu").is_err());
    }

    #[test]
    fn old_ring_directories_are_refused_by_name() {
        let e = toml::from_str::<Config>("ring_dir = \"/dev/shm/rill\"").unwrap_err().to_string();
        assert!(e.contains("ring_dir"), "{e}");
    }

    #[test]
    fn rejects_bad_files() {
        assert!(toml::from_str::<Config>("nonsense = 1").is_err());
        let c: Config = toml::from_str("slot_count = 0").unwrap();
        assert!(c.validate().is_err());
        let c: Config = toml::from_str("[[allow]]\npublish = [\"x\"]").unwrap();
        assert!(c.validate().is_err());
    }
}
