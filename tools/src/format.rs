//! Sizes in and out, and the `rill streams` table.

use rill::{Policy, StreamInfo};

/// Parses `4194304`, `4M`, `4MiB`, `64k`, `1G` (binary multiples; case
/// and a trailing `B` do not matter).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        _ => (body, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("{s:?} is not a size (e.g. 65536, 64KiB, 4M)"))?;
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// `4 MiB`, `1.5 KiB`, `17 B`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("GiB", 30), ("MiB", 20), ("KiB", 10), ("B", 0)];
    for (unit, shift) in UNITS {
        let size = 1u64 << shift;
        if n >= size && shift > 0 {
            return if n.is_multiple_of(size) {
                format!("{} {unit}", n >> shift)
            } else {
                format!("{:.1} {unit}", n as f64 / size as f64)
            };
        }
    }
    format!("{n} B")
}

fn policy(p: Policy) -> &'static str {
    match p {
        Policy::BackPressure => "back-pressure",
        Policy::Overwrite => "overwrite",
    }
}

/// The table `rill streams` prints: one row per stream, and one more per
/// subscriber after the first. A persisted stream whose archiving stopped
/// is marked `STOPPED [n]`, and note `[n]` below the table gives the
/// archiver's reason in full.
pub(crate) fn streams_table(streams: &[StreamInfo]) -> String {
    let head = [
        "NAME",
        "POLICY",
        "CAPACITY",
        "PAGE",
        "TAIL",
        "PERSIST",
        "DURABLE",
        "DURABLE LAG",
        "DISK",
        "PUBS",
        "SUBSCRIBERS (slot pid: lag)",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    let mut notes = Vec::new();
    for s in streams {
        let mut subs = s
            .subscribers
            .iter()
            .map(|x| format!("{} {}: {}{}", x.slot, x.pid, bytes(x.lag_bytes), if x.holding { " (holding)" } else { "" }));
        let mut row = vec![s.name.clone(), policy(s.policy).into(), bytes(s.capacity), bytes(u64::from(s.page_size)), s.tail.to_string()];
        row.extend(persistence(s, &mut notes));
        row.push(if s.exclusive { format!("{} (exclusive)", s.publishers) } else { s.publishers.to_string() });
        row.push(subs.next().unwrap_or_else(|| "-".into()));
        rows.push(row);
        for more in subs {
            let mut row = vec![String::new(); head.len() - 1];
            row.push(more);
            rows.push(row);
        }
    }
    let mut out = table(&rows);
    if !notes.is_empty() {
        out.push('\n');
        for (i, (name, error)) in notes.iter().enumerate() {
            out.push_str(&format!("[{}] archiving of {name} stopped; its publishers are held back until rilld restarts: {error}\n", i + 1));
        }
    }
    let reaped: Vec<_> = streams.iter().filter(|s| s.reaped_subscribers > 0).collect();
    if !reaped.is_empty() {
        out.push('\n');
        for s in reaped {
            out.push_str(&format!(
                "{}: {} subscriber slot(s) taken back (owner dead, hung, or stalled a whole ring behind past the stall limit; rilld's log says which)\n",
                s.name, s.reaped_subscribers
            ));
        }
    }
    out
}

/// The PERSIST, DURABLE, DURABLE LAG and DISK cells of stream `s` (`-`
/// each if it is not persisted). An archive error is marked in PERSIST
/// and its text added to `notes`.
fn persistence(s: &StreamInfo, notes: &mut Vec<(String, String)>) -> [String; 4] {
    let Some(durability) = s.persist else {
        return ["-".into(), "-".into(), "-".into(), "-".into()];
    };
    let mut persist = durability.to_string();
    if let Some(error) = &s.archive_error {
        notes.push((s.name.clone(), error.clone()));
        persist.push_str(&format!(" STOPPED [{}]", notes.len()));
    }
    [persist, s.durable_position.to_string(), bytes(s.tail.saturating_sub(s.durable_position)), bytes(s.disk_bytes)]
}

/// Left-aligned columns two spaces apart; no trailing blanks.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 < r.len() {
                line.push_str(&format!("{cell:<w$}  ", w = width[c]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill::{Durability, SubscriberInfo};

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4194304"), Ok(4 << 20));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("64kb"), Ok(64 << 10));
        assert_eq!(parse_size(" 1G "), Ok(1 << 30));
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn sizes_print() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(4096), "4 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(2 << 20), "2 MiB");
        assert_eq!(bytes(3 << 30), "3 GiB");
    }

    #[test]
    fn table_lists_each_subscriber_with_its_lag() {
        let info = |name: &str, subs: Vec<SubscriberInfo>| StreamInfo {
            name: name.into(),
            capacity: 4 << 20,
            max_message_len: 1024,
            policy: Policy::BackPressure,
            page_size: 4096,
            slot_count: 64,
            tail: 8192,
            publishers: 1,
            subscribers: subs,
            padded_bytes: 0,
            reaped_subscribers: 0,
            keep: false,
            exclusive: false,
            persist: None,
            durable_position: 0,
            disk_bytes: 0,
            archive_error: None,
        };
        let sub = |slot, lag| SubscriberInfo { slot, pid: 42, position: 8192 - lag, lag_bytes: lag, holding: false };
        let t = streams_table(&[info("orders", vec![sub(0, 0), sub(3, 2048)]), info("idle", vec![])]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("NAME    POLICY"), "{t}");
        assert!(lines[1].starts_with("orders  back-pressure  4 MiB") && lines[1].ends_with("0 42: 0 B"), "{t}");
        assert!(lines[2].trim_start().starts_with("3 42: 2 KiB"), "{t}");
        assert_eq!(lines[2].find('3'), lines[1].find("0 42"), "continuation row aligned:\n{t}");
        assert!(lines[3].starts_with("idle") && lines[3].ends_with('-'), "{t}");
    }

    /// The cells of a table row (cells hold single spaces at most).
    fn cells(line: &str) -> Vec<&str> {
        line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
    }

    #[test]
    fn table_shows_durability_lag_disk_and_archive_errors() {
        let tail = 3u64 << 20;
        let info = |name: &str, persist, durable_position, disk_bytes, archive_error: Option<&str>| StreamInfo {
            name: name.into(),
            capacity: 1 << 20,
            max_message_len: 1024,
            policy: Policy::BackPressure,
            page_size: 4096,
            slot_count: 16,
            tail,
            publishers: 2,
            subscribers: vec![SubscriberInfo { slot: 0, pid: 7, position: durable_position, lag_bytes: tail - durable_position, holding: false }],
            padded_bytes: 0,
            reaped_subscribers: 0,
            keep: true,
            exclusive: false,
            persist,
            durable_position,
            disk_bytes,
            archive_error: archive_error.map(str::to_owned),
        };
        let enospc = "writing batch ending at 2097152: No space left on device (os error 28)";
        let t = streams_table(&[
            info("audit", Some(Durability::Always), tail - 4096, 5 << 20, None),
            info("full", Some(Durability::IntervalMs(100)), 1 << 20, 1536, Some(enospc)),
            info("plain", None, 0, 0, None),
            info("lazy", Some(Durability::None), tail, 0, None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 7, "4 rows, a blank line and one note:\n{t}");
        assert_eq!(
            cells(lines[0]),
            ["NAME", "POLICY", "CAPACITY", "PAGE", "TAIL", "PERSIST", "DURABLE", "DURABLE LAG", "DISK", "PUBS", "SUBSCRIBERS (slot pid: lag)"],
            "{t}"
        );
        let durable = (tail - 4096).to_string();
        assert_eq!(cells(lines[1])[5..9], ["always", durable.as_str(), "4 KiB", "5 MiB"], "{t}");
        assert_eq!(cells(lines[2])[5..9], ["interval:100 STOPPED [1]", "1048576", "2 MiB", "1.5 KiB"], "{t}");
        assert_eq!(cells(lines[3])[5..9], ["-", "-", "-", "-"], "not persisted:\n{t}");
        assert_eq!(cells(lines[4])[5..9], ["none", tail.to_string().as_str(), "0 B", "0 B"], "{t}");
        let column = lines[0].find("DURABLE ").unwrap();
        for l in &lines[1..5] {
            assert_eq!(cells(l).len(), 11, "{l}");
            assert!(l[column..].starts_with(cells(l)[6]), "DURABLE column aligned:\n{t}");
        }
        assert_eq!(lines[5], "", "{t}");
        assert_eq!(lines[6], format!("[1] archiving of full stopped; its publishers are held back until rilld restarts: {enospc}"));
    }
}
