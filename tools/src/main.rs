//! `rill`: the operator CLI of Rill.
//!
//! ```text
//! rill streams                          streams, their rings, durability and
//!                                       subscriber lag
//! rill health                           "yes (...)" / "no (...)", exit 0 / 1
//! rill pub NAME [--capacity 4MiB] [--policy back-pressure|overwrite]
//!              [--persist none|interval:<ms>|always] [--wait-durable | --no-wait-at-exit]
//!                                       each stdin line becomes one message
//! rill tail NAME [--from latest|oldest|earliest|POSITION|@UNIX_SECONDS|-30s] [--count N]
//!                                       print messages as they arrive
//! rill dump FILE [--batches-only]       the batches and frames of a segment
//!                                       file, checked; exit 0 if whole
//! ```
//!
//! Every command but `dump` talks to the daemon at `--socket PATH`, else
//! `$RILL_SOCKET`, else `/run/rill/rilld.sock`. Logs go to stderr
//! (`RILL_LOG=debug` for more).

#![forbid(unsafe_code)]

mod commands;
mod dump;
mod format;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Rill's operator CLI: list streams, check health, publish, tail, dump
/// segment files.
#[derive(Debug, Parser)]
#[command(name = "rill", version, about)]
struct Cli {
    /// The daemon's socket (default: $RILL_SOCKET, else /run/rill/rilld.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// How long each request to the daemon may take, in milliseconds.
    #[arg(long, global = true, default_value_t = 5000, value_name = "MS")]
    timeout_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every stream: ring, tail position, durability (persisted
    /// streams: durable position, its lag behind the tail, bytes on disk,
    /// and why archiving stopped if it did), publishers, subscribers and
    /// their lag.
    Streams,
    /// Ask the daemon whether it is healthy: prints yes or no with the
    /// reason; exit code 0 if yes, 1 if no or unreachable.
    Health,
    /// Publish each line of stdin as one message (without its newline).
    /// Waits while subscribers are a ring behind.
    Pub {
        /// Stream name.
        name: String,
        /// Ring capacity if the stream is created (power of two; K/M/G or
        /// KiB/MiB/GiB suffixes).
        #[arg(long, value_parser = format::parse_size, default_value = "4MiB")]
        capacity: u64,
        /// Full-ring behaviour if the stream is created.
        #[arg(long, value_enum, default_value_t = PolicyArg::BackPressure)]
        policy: PolicyArg,
        /// Largest message if the stream is created (default: 64KiB, or
        /// the most the capacity allows if that is less).
        #[arg(long, value_parser = format::parse_size)]
        max_message_len: Option<u64>,
        /// Keep the stream when its last user leaves.
        #[arg(long)]
        keep: bool,
        /// Persist the stream if it is created, to rilld's data directory:
        /// `none` (written, never synced), `interval:<ms>` (synced at most
        /// every <ms>) or `always` (synced before it counts as durable).
        /// With --policy overwrite, publishers wait for the archiver only,
        /// and overrun subscribers read what they missed from the log.
        #[arg(long, value_name = "POLICY")]
        persist: Option<rill::Durability>,
        /// Wait until each line is durable (written, and synced as the
        /// stream's durability says) before reading the next. The stream
        /// must be persisted; fails if its archiving stops.
        #[arg(long)]
        wait_durable: bool,
        /// On a persisted stream, exit as soon as the last line is
        /// published instead of waiting (the default) until it is durable:
        /// a crash right after exit may then lose the last lines.
        #[arg(long, conflicts_with = "wait_durable")]
        no_wait_at_exit: bool,
    },
    /// Print each message of a stream as it arrives (lossy UTF-8, one per
    /// line) until Ctrl-C or --count messages.
    Tail {
        /// Stream name.
        name: String,
        /// Where to start: `latest` (new messages only), `oldest` (the
        /// oldest in the ring), `earliest` (the oldest of the stream: its
        /// log on disk if persisted, then live), a stream POSITION (a
        /// number), or a TIME: `@UNIX_SECONDS[.FRACTION]` or a time ago,
        /// `-30s`, `-5m`, `-2h` (persisted streams).
        #[arg(long, value_parser = parse_from, default_value = "latest", allow_hyphen_values = true)]
        from: rill::Start,
        /// Stop after this many messages.
        #[arg(long, short = 'n')]
        count: Option<u64>,
        /// Prefix each message with its stream position.
        #[arg(long)]
        positions: bool,
        /// Create the stream (default options) if it does not exist.
        #[arg(long)]
        create: bool,
    },
    /// Print every batch and frame of a segment file and check each CRC;
    /// exit code 0 if the file is whole and every batch verifies, 1
    /// otherwise (naming the offset of the first damage). Reads the file
    /// only; needs no daemon.
    Dump {
        /// The segment file (`<data_dir>/<stream>/<position>.log`).
        file: PathBuf,
        /// Print the batch headers only, not each frame.
        #[arg(long)]
        batches_only: bool,
    },
}

/// `--policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyArg {
    /// Publishers wait for the slowest subscriber.
    BackPressure,
    /// Publishers never wait; slow subscribers are overrun.
    Overwrite,
}

/// `--from` of `rill tail`.
fn parse_from(s: &str) -> Result<rill::Start, String> {
    let now_ns = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    match s {
        "latest" => return Ok(rill::Start::Latest),
        "oldest" => return Ok(rill::Start::Oldest),
        "earliest" => return Ok(rill::Start::Earliest),
        _ => {}
    }
    if let Ok(p) = s.parse::<u64>() {
        return Ok(rill::Start::Position(p));
    }
    if let Some(secs) = s.strip_prefix('@') {
        let v: f64 = secs.parse().map_err(|_| format!("--from {s:?}: @ needs Unix seconds, e.g. @1795880000.5"))?;
        return Ok(rill::Start::Time((v * 1e9) as u64));
    }
    if let Some(ago) = s.strip_prefix('-') {
        let (num, unit) = ago.split_at(ago.find(|c: char| !c.is_ascii_digit()).unwrap_or(ago.len()));
        let n: u64 = num.parse().map_err(|_| format!("--from {s:?}: expected -<number><s|m|h|d>"))?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            _ => return Err(format!("--from {s:?}: unit must be s, m, h or d")),
        };
        return Ok(rill::Start::Time(now_ns().saturating_sub(secs * 1_000_000_000)));
    }
    Err(format!("--from {s:?}: expected latest, oldest, earliest, a position, @UNIX_SECONDS or -<n><s|m|h|d>"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RILL_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Health => return commands::health(&cli.connection()),
        Command::Dump { ref file, batches_only } => return dump::run(file, batches_only),
        Command::Streams => commands::streams(&cli.connection()),
        Command::Pub { ref name, capacity, policy, max_message_len, keep, persist, wait_durable, no_wait_at_exit } => {
            let options = commands::pub_options(capacity, policy, max_message_len, keep, persist);
            let wait = if wait_durable {
                commands::WaitDurable::EachLine
            } else if no_wait_at_exit {
                commands::WaitDurable::Never
            } else {
                commands::WaitDurable::AtExit
            };
            options.and_then(|o| commands::publish(&cli.connection(), name, o, wait))
        }
        Command::Tail { ref name, from, count, positions, create } => {
            commands::tail(&cli.connection(), name, from, count, positions, create)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rill: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl Cli {
    fn connection(&self) -> commands::Connection {
        commands::Connection { socket: self.socket.clone(), timeout: std::time::Duration::from_millis(self.timeout_ms.max(1)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_every_command() {
        let c = Cli::try_parse_from(["rill", "--socket", "/tmp/s", "pub", "x", "--capacity", "1M", "--policy", "overwrite"]).unwrap();
        assert_eq!(c.socket, Some(PathBuf::from("/tmp/s")));
        assert!(matches!(c.command, Command::Pub { capacity: 1_048_576, policy: PolicyArg::Overwrite, .. }));
        let c = Cli::try_parse_from(["rill", "tail", "x", "--from", "oldest", "--count", "3", "--socket", "/s"]).unwrap();
        assert!(matches!(c.command, Command::Tail { from: rill::Start::Oldest, count: Some(3), .. }));
        for (arg, want) in [("earliest", Some(rill::Start::Earliest)), ("4096", Some(rill::Start::Position(4096))), ("@2.5", Some(rill::Start::Time(2_500_000_000))), ("soon", None), ("-3x", None)] {
            assert_eq!(parse_from(arg).ok(), want, "{arg}");
        }
        assert!(matches!(parse_from("-10m"), Ok(rill::Start::Time(t)) if t > 0));
        assert_eq!(c.socket, Some(PathBuf::from("/s")), "--socket after the subcommand too");
        assert!(matches!(Cli::try_parse_from(["rill", "health"]).unwrap().command, Command::Health));
        assert!(matches!(Cli::try_parse_from(["rill", "streams"]).unwrap().command, Command::Streams));
        let c = Cli::try_parse_from(["rill", "dump", "/d/s/00000000000000000000.log", "--batches-only"]).unwrap();
        assert!(matches!(c.command, Command::Dump { ref file, batches_only: true } if file.ends_with("00000000000000000000.log")));
        assert!(Cli::try_parse_from(["rill", "pub", "x", "--capacity", "lots"]).is_err());
        let c = Cli::try_parse_from(["rill", "pub", "x", "--persist", "interval:50", "--wait-durable"]).unwrap();
        assert!(matches!(c.command, Command::Pub { persist: Some(rill::Durability::IntervalMs(50)), wait_durable: true, .. }));
        let c = Cli::try_parse_from(["rill", "pub", "x", "--persist", "always"]).unwrap();
        assert!(matches!(c.command, Command::Pub { persist: Some(rill::Durability::Always), wait_durable: false, .. }));
        let c = Cli::try_parse_from(["rill", "pub", "x"]).unwrap();
        assert!(matches!(c.command, Command::Pub { persist: None, wait_durable: false, .. }));
        for bad in ["sometimes", "interval:0", "interval:", "interval:x"] {
            assert!(Cli::try_parse_from(["rill", "pub", "x", "--persist", bad]).is_err(), "{bad}");
        }
    }
}
