//! `rill pub --persist`, `--wait-durable` and `rill streams` against a real
//! `rilld` with a data directory in the system's temporary directory; the
//! segment file checked with `rill dump`.
//!
//! Which rilld: `RILLD=/path/to/rilld`, else the one `cargo build -p
//! rill-daemon --bin rilld` builds in this test's profile and target
//! directory (cargo builds only this package's binaries for its tests).

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Watchdog for each step: turns a hang into a failure.
const STEP: Duration = Duration::from_secs(120);

/// The rilld binary, built once per test process.
fn rilld_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("RILLD") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<this test binary>
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("test binary in target/<profile>/deps").to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev".to_owned(),
            Some(other) => other.to_owned(),
            None => panic!("cannot tell the profile from {}", profile_dir.display()),
        };
        let target = profile_dir.parent().expect("target directory");
        assert!(
            target.join("CACHEDIR.TAG").exists(),
            "{} is not a cargo target directory (cross build?): set RILLD=/path/to/rilld",
            target.display()
        );
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "-p", "rill-daemon", "--bin", "rilld", "--profile", &profile])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(target)
            .output()
            .expect("running cargo build");
        assert!(out.status.success(), "building rilld failed (or set RILLD):\n{}", String::from_utf8_lossy(&out.stderr));
        profile_dir.join("rilld")
    })
    .clone()
}

/// A rilld with its socket, rings and pages in a directory under /dev/shm
/// and its data directory under the system's temporary directory.
struct Rilld {
    child: Child,
    socket: PathBuf,
    data: PathBuf,
    // Removed after the process is killed (fields drop after `drop`).
    _run: tempfile::TempDir,
    _data: tempfile::TempDir,
}

impl Rilld {
    fn start() -> Rilld {
        let run = tempfile::Builder::new().prefix("rill-tools-").tempdir_in("/dev/shm").expect("dir in /dev/shm");
        let data_root = tempfile::Builder::new().prefix("rill-tools-data-").tempdir_in(std::env::temp_dir()).expect("temp dir");
        let socket = run.path().join("rilld.sock");
        let data = data_root.path().join("data");
        let child = Command::new(rilld_bin())
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(run.path().join("state"))
            .arg("--data-dir")
            .arg(&data)
            .env("NO_COLOR", "1")
            .env("RILL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting rilld");
        // Owned (killed on drop) before anything can fail.
        let mut d = Rilld { child, socket, data, _run: run, _data: data_root };
        let deadline = Instant::now() + STEP;
        while rill::wire::connect(&d.socket).is_err() {
            if let Some(status) = d.child.try_wait().expect("try_wait rilld") {
                panic!("rilld exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "watchdog: rilld does not accept connections");
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// Runs `rill --socket <ours> args...` with `stdin`.
    fn rill(&self, args: &[&str], stdin: &str) -> Output {
        let mut all = vec!["--socket", self.socket.to_str().expect("UTF-8 path")];
        all.extend_from_slice(args);
        rill(&all, stdin)
    }
}

impl Drop for Rilld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the `rill` binary with `args` and `stdin`; kills it and fails
/// after [`STEP`].
fn rill(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running rill");
    let mut input = child.stdin.take().expect("piped");
    let text = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(text.as_bytes());
    });
    let collect = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = collect(Box::new(child.stdout.take().expect("piped")));
    let stderr = collect(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + STEP;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait rill") {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("watchdog: rill {args:?} did not finish; killed it");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    writer.join().expect("stdin writer");
    Output { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader") }
}

/// The cells of `stream`'s row in `rill streams` output.
fn row<'a>(table: &'a str, stream: &str) -> Vec<&'a str> {
    let line = table.lines().find(|l| l.split_whitespace().next() == Some(stream)).unwrap_or_else(|| panic!("no row for {stream}:\n{table}"));
    line.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `rill pub --persist always --wait-durable` returns only when every line
/// is on disk: right after it exits, with rilld still running, `rill
/// streams` shows the stream durable up to its tail, and the segment file
/// holds every line, in order, each batch verified by `rill dump`.
#[test]
fn pub_wait_durable_returns_with_every_line_on_disk() {
    let d = Rilld::start();
    let stream = "audit.cli";
    let lines: Vec<String> = (0..200).map(|i| format!("audit line {i}")).collect();
    let out = d.rill(&["pub", stream, "--capacity", "64KiB", "--persist", "always", "--wait-durable"], &(lines.join("\n") + "\n"));
    assert_eq!(out.status.code(), Some(0), "rill pub: {}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "rill pub printed {:?}", text(&out.stdout));
    assert!(text(&out.stderr).contains("published 200 messages"), "{}", text(&out.stderr));

    let out = d.rill(&["streams"], "");
    assert_eq!(out.status.code(), Some(0), "rill streams: {}", text(&out.stderr));
    let table = text(&out.stdout);
    let cells = row(&table, stream);
    // NAME POLICY CAPACITY PAGE TAIL PERSIST DURABLE "DURABLE LAG" DISK PUBS SUBSCRIBERS
    assert_eq!(cells[5], "always", "{table}");
    assert_eq!(cells[6], cells[4], "durable up to the tail:\n{table}");
    assert_eq!(cells[7], "0 B", "{table}");
    assert_ne!(cells[8], "0 B", "{table}");
    assert!(!table.contains("STOPPED"), "{table}");
    let tail = cells[4];

    let segments = rill_store::list_segments(&d.data.join(stream)).expect("listing segments");
    assert_eq!(segments.len(), 1, "{segments:?}");
    let out = rill(&["dump", segments[0].1.to_str().expect("UTF-8 path")], "");
    let dump = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "rill dump: {}\n{dump}", text(&out.stderr));
    assert!(dump.contains("whole: every batch verifies"), "{dump}");
    assert!(dump.contains(", 200 data frames"), "{dump}");
    assert!(dump.contains(&format!("positions 0..{tail},")), "the file ends at the tail {tail}:\n{dump}");
    let mut at = 0;
    for l in &lines {
        let quoted = format!("\"{l}\"");
        let found = dump[at..].find(&quoted).unwrap_or_else(|| panic!("{quoted} missing or out of order:\n{dump}"));
        at += found + quoted.len();
    }
}

/// Without persistence there is nothing to wait for: `rill pub
/// --wait-durable` on a stream that is not persisted fails at once, and
/// `rill streams` shows `-` for its durability columns.
#[test]
fn wait_durable_on_a_stream_not_persisted_fails() {
    let d = Rilld::start();
    let out = d.rill(&["pub", "plain.cli", "--keep"], "hello\n");
    assert_eq!(out.status.code(), Some(0), "rill pub: {}", text(&out.stderr));

    let out = d.rill(&["pub", "plain.cli", "--wait-durable"], "never read\n");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("plain.cli is not persisted"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    let table = text(&d.rill(&["streams"], "").stdout);
    assert_eq!(row(&table, "plain.cli")[5..9], ["-", "-", "-", "-"], "{table}");
}
