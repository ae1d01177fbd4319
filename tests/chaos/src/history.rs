//! The faults of a run, in order, with their times: printed around each
//! violation, and written to `history.log` in the run's directory.

use std::fmt;

/// The kinds of fault, in the order the summary line counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` of rilld, then a restart.
    Kill9Rilld,
    /// `kill -9` of one client, then a restart (a publisher as a new
    /// incarnation).
    Kill9Client,
    /// SIGSTOP of rilld or a client, SIGCONT a while later.
    Stop,
    /// `kill -9` of rilld, its ring and page directories deleted, restart.
    RingWipe,
    /// Everything killed, the filesystem's power cut (`cut` or
    /// `cut-torn`), rings and pages wiped, everything restarted.
    PowerCut,
    /// A bit flipped in a batch of an old sealed segment while rilld was
    /// down.
    BitFlip,
    /// The data directory's filesystem full for a while (powerfs
    /// `limit`), then space again and rilld restarted.
    FullDisk,
}

impl FaultKind {
    /// Every kind, in summary order.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill9Rilld,
        FaultKind::Kill9Client,
        FaultKind::Stop,
        FaultKind::RingWipe,
        FaultKind::PowerCut,
        FaultKind::BitFlip,
        FaultKind::FullDisk,
    ];

    /// Its name in the summary line and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill9Rilld => "kill9_rilld",
            FaultKind::Kill9Client => "kill9_client",
            FaultKind::Stop => "stop",
            FaultKind::RingWipe => "ring_wipe",
            FaultKind::PowerCut => "power_cut",
            FaultKind::BitFlip => "bit_flip",
            FaultKind::FullDisk => "full_disk",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<FaultKind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One fault injected (or one notable moment: `kind` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When it started ([`crate::now_ns`]).
    pub t_ns: u64,
    /// What, if a fault.
    pub kind: Option<FaultKind>,
    /// Its details (which process, which file, how long, ...).
    pub detail: String,
}

/// Everything that happened to the run, in order.
#[derive(Debug, Clone)]
pub struct History {
    start_ns: u64,
    entries: Vec<Fault>,
}

impl History {
    /// An empty history of a run that started at `start_ns`.
    pub fn new(start_ns: u64) -> History {
        History { start_ns, entries: Vec::new() }
    }

    /// Records a fault (or a note, `kind` `None`) at `t_ns`.
    pub fn record(&mut self, t_ns: u64, kind: Option<FaultKind>, detail: String) {
        self.entries.push(Fault { t_ns, kind, detail });
    }

    /// How many faults of `kind` were injected.
    pub fn count(&self, kind: FaultKind) -> usize {
        self.entries.iter().filter(|f| f.kind == Some(kind)).count()
    }

    /// Faults injected, of every kind.
    pub fn faults(&self) -> usize {
        self.entries.iter().filter(|f| f.kind.is_some()).count()
    }

    /// Every entry, in order.
    pub fn entries(&self) -> &[Fault] {
        &self.entries
    }

    /// Times of the entries of `kind`.
    pub fn times(&self, kind: FaultKind) -> Vec<u64> {
        self.entries.iter().filter(|f| f.kind == Some(kind)).map(|f| f.t_ns).collect()
    }

    /// `t_ns` as seconds since the start of the run.
    pub fn at(&self, t_ns: u64) -> String {
        format!("t={:+.3}s", (t_ns as i128 - self.start_ns as i128) as f64 / 1e9)
    }

    /// The `before` entries before `t_ns` and the `after` entries from it
    /// on, one per line, with the moment itself marked.
    pub fn around(&self, t_ns: u64, before: usize, after: usize) -> String {
        let split = self.entries.partition_point(|f| f.t_ns < t_ns);
        let mut out = Vec::new();
        for f in &self.entries[split.saturating_sub(before)..split] {
            out.push(self.line(f));
        }
        out.push(format!("      {} <-- here", self.at(t_ns)));
        for f in self.entries[split..].iter().take(after) {
            out.push(self.line(f));
        }
        out.join("\n")
    }

    fn line(&self, f: &Fault) -> String {
        format!("      {} {} {}", self.at(f.t_ns), f.kind.map_or("note", FaultKind::name), f.detail)
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.entries {
            writeln!(f, "{}", self.line(e).trim_start())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn around_shows_the_neighbours_of_a_moment() {
        let mut h = History::new(1_000_000_000);
        for (i, k) in FaultKind::ALL.into_iter().enumerate() {
            h.record(1_000_000_000 * (i as u64 + 2), Some(k), format!("#{i}"));
        }
        h.record(10_000_000_000, None, "end".into());
        assert_eq!(h.faults(), 7);
        assert_eq!(h.count(FaultKind::Stop), 1);
        let a = h.around(4_500_000_000, 1, 1);
        assert!(a.contains("stop #2") && a.contains("ring_wipe #3") && !a.contains("kill9_client"), "{a}");
        assert!(a.contains("t=+3.500s <-- here"), "{a}");
        assert_eq!(FaultKind::parse("bit_flip"), Some(FaultKind::BitFlip));
    }
}
