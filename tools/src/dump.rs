//! `rill dump FILE`: every batch and frame of a segment file, checked.
//!
//! Walks the file batch by batch, printing each header and whether its
//! CRC and frames verify, and (unless `--batches-only`) each frame. After
//! a header that cannot be read it resumes at the next valid batch, so one
//! bad spot does not hide the rest. The verdict is the one recovery would
//! reach ([`rill_store::scan_segment`]): whole, or the offset and kind of
//! the first damage, and every range of positions lost to damage.

use anyhow::Context;
use rill_shm::frame::{parse_frame, FrameKind, HEADER_LEN};
use rill_store::{find_next_batch, parse_segment_file_name, scan_segment, BatchHeader, FormatError, BATCH_HEADER_LEN};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Payload bytes shown per frame.
const PREVIEW_BYTES: usize = 24;

/// `rill dump FILE [--batches-only]`: 0 if the file is whole and every
/// batch verifies, 1 otherwise.
pub(crate) fn run(path: &Path, batches_only: bool) -> ExitCode {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let result = dump(path, batches_only, &mut out).and_then(|v| out.flush().map(|()| v).map_err(Into::into));
    match result {
        Ok(Verdict::Whole) => ExitCode::SUCCESS,
        Ok(Verdict::Damaged(why)) => {
            eprintln!("rill: {}: {why}", path.display());
            ExitCode::FAILURE
        }
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS, // `rill dump f | head`
        Err(e) => {
            eprintln!("rill: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// What the dump concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every byte belongs to a batch that verifies.
    Whole,
    /// Not so: why, naming the offset of the first damage.
    Damaged(String),
}

/// Totals for the summary line.
#[derive(Debug, Default)]
struct Totals {
    batches: u64,
    bad_batches: u64,
    data_frames: u64,
    padding_frames: u64,
    payload_bytes: u64,
    first_timestamp: Option<u64>,
    last_timestamp: u64,
}

/// Prints the dump of the segment at `path` to `out`.
pub(crate) fn dump(path: &Path, batches_only: bool, out: &mut impl Write) -> anyhow::Result<Verdict> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let named = path.file_name().and_then(|n| n.to_str()).and_then(parse_segment_file_name);
    let first = named.or_else(|| BatchHeader::parse(&bytes).ok().map(|h| h.first_position)).unwrap_or(0);
    let source = if named.is_some() { "from its name" } else { "from its first batch" };
    writeln!(out, "{}: {} bytes, first position {first} ({source})", path.display(), bytes.len())?;
    let mut totals = Totals::default();
    let mut offset = 0u64;
    let mut expected = Some(first);
    while offset < bytes.len() as u64 {
        let rest = &bytes[offset as usize..];
        match BatchHeader::parse(rest) {
            Ok(h) if h.batch_len() <= rest.len() as u64 => {
                print_batch(out, offset, &h, rest, expected, batches_only, &mut totals)?;
                offset += h.batch_len();
                expected = Some(h.end_position);
            }
            Ok(h) => {
                writeln!(
                    out,
                    "batch @{offset}: positions {}..{}: TRUNCATED: needs {} bytes, the file has {}",
                    h.first_position,
                    h.end_position,
                    h.batch_len(),
                    rest.len()
                )?;
                break;
            }
            Err(e) => {
                writeln!(out, "@{offset}: not a batch: {e}")?;
                match find_next_batch(&bytes, offset + 32) {
                    Some((next, _)) => {
                        writeln!(out, "@{offset}: skipping {} bytes to the next valid batch, at offset {next}", next - offset)?;
                        offset = next;
                        expected = None;
                    }
                    None => {
                        writeln!(out, "@{offset}: no valid batch in the {} bytes to the end of the file", rest.len())?;
                        break;
                    }
                }
            }
        }
    }
    let scan = scan_segment(&bytes, first);
    print_summary(out, &totals, &scan)?;
    let mut problems: Vec<String> = scan.holes.iter().map(|h| format!("hole at offset {}: {h}", h.offset)).collect();
    problems.extend(scan.damage.iter().map(ToString::to_string));
    Ok(match problems.is_empty() {
        false => Verdict::Damaged(format!("damaged: {}", problems.join("; "))),
        true if totals.bad_batches > 0 => Verdict::Damaged(format!("damaged: {} bad batches", totals.bad_batches)),
        true => Verdict::Whole,
    })
}

/// One batch whose bytes are all in the file: its line, then its frames.
fn print_batch(
    out: &mut impl Write,
    offset: u64,
    h: &BatchHeader,
    rest: &[u8],
    expected: Option<u64>,
    batches_only: bool,
    totals: &mut Totals,
) -> anyhow::Result<()> {
    let head: &[u8; BATCH_HEADER_LEN] = rest[..BATCH_HEADER_LEN].try_into().expect("parse checked the length");
    let frames = &rest[BATCH_HEADER_LEN..h.batch_len() as usize];
    let check = match expected.filter(|&e| e != h.first_position) {
        Some(e) => Err(FormatError::Discontinuity { expected: e, found: h.first_position }),
        None => h.verify(head, frames),
    };
    let status = match &check {
        Ok(()) => "ok".to_string(),
        Err(e) => format!("BAD ({e})"),
    };
    let frame_count = walk_frames(frames, |_| {}).0;
    writeln!(
        out,
        "batch @{offset}: positions {}..{} ({} B), {frame_count} frames ({} data), ts {}..{}, crc {:#010x} {status}",
        h.first_position, h.end_position, h.frames_len, h.data_frames, h.first_timestamp, h.last_timestamp, h.crc
    )?;
    totals.batches += 1;
    totals.bad_batches += u64::from(check.is_err());
    let mut failed = None;
    let (_, error) = walk_frames(frames, |line| {
        if failed.is_none() && !batches_only {
            failed = writeln!(out, "  {}", line.text).err();
        }
        if line.kind == Some(FrameKind::Data) {
            totals.data_frames += 1;
            totals.payload_bytes += line.payload_len;
            totals.first_timestamp.get_or_insert(line.timestamp_ns);
            totals.last_timestamp = line.timestamp_ns;
        } else if line.kind == Some(FrameKind::Padding) {
            totals.padding_frames += 1;
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    if let Some(e) = error.filter(|_| !batches_only) {
        writeln!(out, "  {e}")?;
    }
    Ok(())
}

/// One frame as the dump shows it.
struct FrameLine {
    kind: Option<FrameKind>,
    timestamp_ns: u64,
    payload_len: u64,
    text: String,
}

/// Calls `each` for every frame of `frames` that parses, in order; returns
/// how many, and what stopped the walk early, if anything.
fn walk_frames(frames: &[u8], mut each: impl FnMut(FrameLine)) -> (u64, Option<String>) {
    let mut o = 0usize;
    let mut count = 0u64;
    while o < frames.len() {
        let f = match parse_frame(&frames[o..], frames.len() - o) {
            Ok(f) => f,
            Err(e) => return (count, Some(format!("frame at batch offset {o}: {e}; the rest of the batch is not shown"))),
        };
        let h = f.header;
        let text = match h.kind {
            FrameKind::Data => format!(
                "@{} data    len {} pub {} ts {}{} {}",
                h.position,
                h.length,
                h.publisher_id,
                h.timestamp_ns,
                if h.flags != 0 { format!(" flags {:#06x}", h.flags) } else { String::new() },
                preview(f.payload)
            ),
            FrameKind::Padding => format!("@{} padding len {}", h.position, h.length),
        };
        each(FrameLine { kind: Some(h.kind), timestamp_ns: h.timestamp_ns, payload_len: f.payload.len() as u64, text });
        count += 1;
        o += h.span().max(HEADER_LEN);
    }
    (count, None)
}

/// The first bytes of a payload: quoted and escaped if it reads as text,
/// else hex; `...` if there is more.
fn preview(payload: &[u8]) -> String {
    let shown = &payload[..payload.len().min(PREVIEW_BYTES)];
    let more = if payload.len() > shown.len() { "..." } else { "" };
    let texty = shown.iter().all(|&b| b.is_ascii_graphic() || b == b' ' || b == b'\t' || b == b'\n' || b == b'\r');
    if texty {
        format!("\"{}\"{more}", shown.escape_ascii())
    } else {
        let hex: Vec<String> = shown.iter().map(|b| format!("{b:02x}")).collect();
        format!("hex {}{more}", hex.join(""))
    }
}

fn print_summary(out: &mut impl Write, t: &Totals, scan: &rill_store::Scan) -> anyhow::Result<()> {
    writeln!(
        out,
        "summary: {} batches ({} bad), {} data frames ({} payload bytes), {} padding frames",
        t.batches, t.bad_batches, t.data_frames, t.payload_bytes, t.padding_frames
    )?;
    let first_position = scan.batches.first().map_or(scan.end_position, |b| b.position);
    writeln!(
        out,
        "valid: {} of {} bytes, positions {first_position}..{}, ts {}..{}",
        scan.valid_len,
        scan.file_len,
        scan.end_position,
        t.first_timestamp.unwrap_or(0),
        t.last_timestamp
    )?;
    for h in &scan.holes {
        writeln!(out, "LOST: {h}")?;
    }
    match &scan.damage {
        None if t.bad_batches == 0 && scan.holes.is_empty() => writeln!(out, "whole: every batch verifies")?,
        None if scan.holes.is_empty() => writeln!(out, "DAMAGED: {} bad batches", t.bad_batches)?,
        None => writeln!(out, "DAMAGED: {} hole(s); the batches after each are valid", scan.holes.len())?,
        Some(d) => writeln!(out, "DAMAGED: {d}")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_store::{encode_batch, segment_file_name, FrameBuf};

    /// Two batches: text, binary and padding frames.
    fn segment(first: u64) -> Vec<u8> {
        let mut a = FrameBuf::new(first);
        a.data(1_000, 3, b"hello \"rill\"\n");
        a.data(1_010, 4, &[0, 1, 2, 0xff]);
        let mut b = FrameBuf::new(a.end_position());
        b.padding(64);
        b.data(1_020, 3, &[b'x'; 40]);
        let mut seg = encode_batch(first, &[a.as_bytes()]).unwrap();
        seg.extend(encode_batch(b.first_position(), &[b.as_bytes()]).unwrap());
        seg
    }

    fn run_dump(bytes: &[u8], batches_only: bool) -> (Verdict, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_file_name(4096));
        std::fs::write(&path, bytes).unwrap();
        let mut out = Vec::new();
        let v = dump(&path, batches_only, &mut out).unwrap();
        (v, String::from_utf8(out).unwrap())
    }

    #[test]
    fn whole_segment_prints_batches_frames_and_summary() {
        let (v, out) = run_dump(&segment(4096), false);
        assert_eq!(v, Verdict::Whole, "{out}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("first position 4096 (from its name)"), "{out}");
        assert!(lines[1].starts_with("batch @0: positions 4096..4224 (128 B), 2 frames (2 data), ts 1000..1010, crc 0x"), "{out}");
        assert!(lines[1].ends_with(" ok"), "{out}");
        assert_eq!(lines[2], "  @4096 data    len 45 pub 3 ts 1000 \"hello \\\"rill\\\"\\n\"");
        assert_eq!(lines[3], "  @4160 data    len 36 pub 4 ts 1010 hex 000102ff");
        assert!(lines[4].starts_with("batch @192: positions 4224..4384"), "{out}");
        assert_eq!(lines[5], "  @4224 padding len 64");
        assert_eq!(lines[6], format!("  @4288 data    len 72 pub 3 ts 1020 \"{}\"...", "x".repeat(24)));
        assert!(out.contains("summary: 2 batches (0 bad), 3 data frames (57 payload bytes), 1 padding frames"), "{out}");
        assert!(out.ends_with("whole: every batch verifies\n"), "{out}");
    }

    #[test]
    fn batches_only_skips_frames() {
        let (v, out) = run_dump(&segment(4096), true);
        assert_eq!(v, Verdict::Whole);
        assert_eq!(out.lines().filter(|l| l.starts_with("  ")).count(), 0, "{out}");
        assert_eq!(out.lines().filter(|l| l.starts_with("batch @")).count(), 2, "{out}");
    }

    #[test]
    fn damage_is_named_with_its_offset() {
        let mut bytes = segment(4096);
        bytes[100] ^= 1; // a payload byte of the first batch
        let (v, out) = run_dump(&bytes, false);
        assert!(out.lines().nth(1).unwrap().contains("BAD (CRC mismatch"), "{out}");
        assert!(out.contains("batch @192: positions 4224..4384") && out.contains(" ok\n"), "{out}");
        assert!(
            matches!(&v, Verdict::Damaged(s) if s.starts_with("damaged: hole at offset 0: positions 4096..4224 lost (128 stream bytes; 192 damaged file bytes at offset 0: CRC mismatch")),
            "{v:?}"
        );
        assert!(out.contains("LOST: positions 4096..4224 lost"), "{out}");

        let whole = segment(4096);
        let (v, out) = run_dump(&whole[..whole.len() - 8], false);
        assert_eq!(v, Verdict::Damaged("damaged: torn tail at offset 192: a partial batch, nothing valid after it".into()), "{out}");
        assert!(out.contains("TRUNCATED"), "{out}");

        let mut garbage = whole.clone();
        garbage[0..4].copy_from_slice(b"XXXX");
        let (v, out) = run_dump(&garbage, true);
        assert!(out.contains("@0: skipping 192 bytes to the next valid batch, at offset 192"), "{out}");
        assert!(matches!(v, Verdict::Damaged(ref s) if s.starts_with("damaged: hole at offset 0: positions 4096..4224 lost") && s.contains("bad magic")), "{v:?}");
    }

    #[test]
    fn previews() {
        assert_eq!(preview(b""), "\"\"");
        assert_eq!(preview(b"a\tb"), "\"a\\tb\"");
        assert_eq!(preview(&[0xde, 0xad]), "hex dead");
        assert_eq!(preview(&[b'a'; 30]), format!("\"{}\"...", "a".repeat(24)));
    }
}
