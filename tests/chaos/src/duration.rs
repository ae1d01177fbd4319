//! Durations on the command line: a number and a unit (`500ms`, `45s`,
//! `10m`, `1h`); a bare number is seconds.

use std::time::Duration;

/// Parses `s`; see the module docs.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("duration {s:?}: expected a number and a unit (500ms, 45s, 10m, 1h)"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => return Err(format!("duration {s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("duration {s:?} is too long"))
}

/// Prints `d` the way [`parse`] reads it back (`45s`, `1500ms`).
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_bare_seconds_parse_and_print_back() {
        assert_eq!(parse("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse("1x").is_err());
        assert!(parse("s").is_err());
        assert!(parse("").is_err());
        assert_eq!(show(Duration::from_secs(60)), "60s");
        assert_eq!(show(Duration::from_millis(1500)), "1500ms");
        assert_eq!(parse(&show(Duration::from_millis(1500))), Ok(Duration::from_millis(1500)));
    }
}
