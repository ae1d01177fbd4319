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
/// subscriber after the first.
pub(crate) fn streams_table(streams: &[StreamInfo]) -> String {
    let head = ["NAME", "POLICY", "CAPACITY", "PAGE", "TAIL", "PUBS", "SUBSCRIBERS (slot pid: lag)"];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|h| h.to_string()).collect()];
    for s in streams {
        let mut subs = s.subscribers.iter().map(|x| format!("{} {}: {}", x.slot, x.pid, bytes(x.lag_bytes)));
        rows.push(vec![
            s.name.clone(),
            policy(s.policy).into(),
            bytes(s.capacity),
            bytes(u64::from(s.page_size)),
            s.tail.to_string(),
            if s.exclusive { format!("{} (exclusive)", s.publishers) } else { s.publishers.to_string() },
            subs.next().unwrap_or_else(|| "-".into()),
        ]);
        for more in subs {
            let mut row = vec![String::new(); head.len() - 1];
            row.push(more);
            rows.push(row);
        }
    }
    table(&rows)
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
    use rill::SubscriberInfo;

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
        let sub = |slot, lag| SubscriberInfo { slot, pid: 42, position: 8192 - lag, lag_bytes: lag };
        let t = streams_table(&[info("orders", vec![sub(0, 0), sub(3, 2048)]), info("idle", vec![])]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[0].starts_with("NAME    POLICY"), "{t}");
        assert!(lines[1].starts_with("orders  back-pressure  4 MiB") && lines[1].ends_with("0 42: 0 B"), "{t}");
        assert!(lines[2].trim_start().starts_with("3 42: 2 KiB"), "{t}");
        assert_eq!(lines[2].find('3'), lines[1].find("0 42"), "continuation row aligned:\n{t}");
        assert!(lines[3].starts_with("idle") && lines[3].ends_with('-'), "{t}");
    }
}
