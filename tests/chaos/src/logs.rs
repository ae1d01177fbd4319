//! The files client processes write and the parent reads: acknowledgement
//! logs and event logs. Both live outside rilld's data directory, on an
//! ordinary filesystem, and are appended to with one `write(2)` per record
//! on an unbuffered `O_APPEND` file, so that whatever a client wrote
//! before `kill -9` is there (a power cut of rilld's filesystem does not
//! touch them: they model what the application recorded elsewhere).
//!
//! # Acknowledgement log
//! One per publisher incarnation:
//!
//! ```text
//! # rill-chaos acks stream=<name> index=<publisher index>
//! <seq> <position> <t_ns>        one line per message whose wait_durable returned
//! ```
//!
//! A line is written only after `wait_durable` returned for a position at
//! or after the message's: it is the checker's definition of
//! *acknowledged*. `t_ns` is when it returned ([`crate::now_ns`]). A last
//! line without its newline (impossible with one `write(2)` per batch, but
//! cheap to allow) is ignored: it was never acknowledged.
//!
//! # Event log
//! One per client process: `<t_ns> <KIND> <text>` lines. Kinds the parent
//! acts on: `VIOLATION` (a subscriber saw something that must never
//! happen), `LOST <from> <to> <reason>` (a `PollError::Lost` notice).
//! Others (`OPEN`, `REOPEN`, `RESUBSCRIBE`, `TIMEOUT`, `SUMMARY`, ...) are
//! there for people reading a failed run.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// Appends acknowledgements; see the module docs.
#[derive(Debug)]
pub struct AckWriter {
    file: File,
    line: String,
}

impl AckWriter {
    /// Creates the log (it must not exist) with its header line.
    pub fn create(path: &Path, stream: &str, index: u32) -> Result<AckWriter> {
        let mut file = OpenOptions::new().create_new(true).append(true).open(path).with_context(|| format!("create {}", path.display()))?;
        file.write_all(format!("# rill-chaos acks stream={stream} index={index}\n").as_bytes())
            .with_context(|| format!("write {}", path.display()))?;
        Ok(AckWriter { file, line: String::new() })
    }

    /// Records messages `(seq, position)` as acknowledged at `t_ns`, with
    /// one `write(2)`.
    pub fn append(&mut self, acked: &[(u64, u64)], t_ns: u64) -> Result<()> {
        use std::fmt::Write as _;
        self.line.clear();
        for (seq, position) in acked {
            let _ = writeln!(self.line, "{seq} {position} {t_ns}");
        }
        self.file.write_all(self.line.as_bytes()).context("append to the ack log")
    }
}

/// One acknowledged message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Publisher index (payload field).
    pub publisher: u32,
    /// Sequence number.
    pub seq: u64,
    /// The position `offer` returned.
    pub position: u64,
    /// When `wait_durable` returned.
    pub t_ns: u64,
}

/// An acknowledgement log, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckLog {
    /// The stream.
    pub stream: String,
    /// The publisher index.
    pub publisher: u32,
    /// Every acknowledgement, in the order written.
    pub acks: Vec<Ack>,
}

impl AckLog {
    /// Reads the log at `path`.
    pub fn read(path: &Path) -> Result<AckLog> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("ack log {}", path.display()))
    }

    /// Parses a log's text.
    pub fn parse(text: &str) -> Result<AckLog> {
        let mut lines = text.split_inclusive('\n');
        let header = lines.next().context("empty")?;
        let field = |key: &str| header.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')).map(str::to_owned);
        let (Some(stream), Some(publisher)) = (field("stream"), field("index")) else { bail!("bad header {header:?}") };
        let publisher = publisher.parse().with_context(|| format!("index in {header:?}"))?;
        let mut acks = Vec::new();
        for line in lines {
            let Some(line) = line.strip_suffix('\n') else { break };
            let f: Vec<u64> = line.split(' ').map(str::parse).collect::<Result<_, _>>().with_context(|| format!("line {line:?}"))?;
            let [seq, position, t_ns] = f[..] else { bail!("line {line:?}: expected seq position t_ns") };
            acks.push(Ack { publisher, seq, position, t_ns });
        }
        Ok(AckLog { stream, publisher, acks })
    }
}

/// Appends events; see the module docs. Failing to write one is ignored
/// (the events are for diagnosis; the checks use the ack logs and the
/// parent's own read).
#[derive(Debug)]
pub struct EventWriter {
    file: File,
}

impl EventWriter {
    /// Opens (creates, or appends to) the log at `path`.
    pub fn open(path: &Path) -> Result<EventWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("open {}", path.display()))?;
        Ok(EventWriter { file })
    }

    /// Writes `<now> <kind> <text>` with one `write(2)`; newlines in
    /// `text` become spaces.
    pub fn event(&mut self, kind: &str, text: &str) {
        let line = format!("{} {kind} {}\n", crate::now_ns(), text.replace('\n', " "));
        let _ = self.file.write_all(line.as_bytes());
    }
}

/// One line of an event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When.
    pub t_ns: u64,
    /// Its kind (`VIOLATION`, `LOST`, ...).
    pub kind: String,
    /// The rest of the line.
    pub text: String,
}

/// Reads an event log (a missing file has no events; a torn last line is
/// dropped).
pub fn read_events(path: &Path) -> Result<Vec<Event>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let mut out = Vec::new();
    for line in text.split_inclusive('\n').filter_map(|l| l.strip_suffix('\n')) {
        let mut parts = line.splitn(3, ' ');
        let (Some(Ok(t_ns)), Some(kind)) = (parts.next().map(str::parse), parts.next()) else {
            bail!("{}: bad line {line:?}", path.display());
        };
        out.push(Event { t_ns, kind: kind.to_owned(), text: parts.next().unwrap_or("").to_owned() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_logs_round_trip_and_a_torn_last_line_is_not_an_ack() {
        let dir = std::env::temp_dir().join(format!("rill-chaos-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acks");
        let _ = std::fs::remove_file(&path);
        let mut w = AckWriter::create(&path, "s.x", 5).unwrap();
        w.append(&[(0, 0), (1, 64)], 99).unwrap();
        w.append(&[(2, 128)], 100).unwrap();
        assert!(AckWriter::create(&path, "s.x", 5).is_err(), "an existing log is never reused");
        let log = AckLog::read(&path).unwrap();
        assert_eq!((log.stream.as_str(), log.publisher), ("s.x", 5));
        assert_eq!(log.acks.len(), 3);
        assert_eq!(log.acks[2], Ack { publisher: 5, seq: 2, position: 128, t_ns: 100 });
        let torn = std::fs::read_to_string(&path).unwrap() + "3 192 1";
        assert_eq!(AckLog::parse(&torn).unwrap().acks.len(), 3);
        let mut ev = EventWriter::open(&dir.join("events")).unwrap();
        ev.event("LOST", "10 20 bad\ncrc");
        let events = read_events(&dir.join("events")).unwrap();
        assert_eq!((events[0].kind.as_str(), events[0].text.as_str()), ("LOST", "10 20 bad crc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
