//! The control channel: a Unix stream socket, one text command per line,
//! one reply line per command, `ok ...` or `error ...`.
//!
//! ```text
//! ping              -> ok pong
//! cut               -> ok cut files=.. dirs=.. dropped_inodes=.. reverted_files=.. kept_ops=0 dropped_ops=.. dropped_bytes=.. torn_writes=0
//! cut-torn <seed>   -> ok cut-torn seed=<seed> files=.. ... kept_ops=.. torn_writes=..
//! stats             -> ok files=.. dirs=.. bytes_current=.. bytes_durable=.. bytes_pending=.. pending_ops=.. writes=.. write_bytes=.. fsyncs=.. fsyncdirs=.. cuts=..
//! sync              -> ok sync   (everything becomes durable, as after sync(2) and a sync of every directory)
//! limit <bytes|none> -> ok limit capacity=<bytes> used=<bytes>   (a full disk: file data past it is ENOSPC)
//! ```
//! `cut` and `cut-torn` are power losses (see [`crate::model`]). They run
//! under the model's mutex, so a cut falls between two filesystem
//! requests, never inside one. The caller should make sure no process is
//! still using the filesystem: after the cut every handle is dead (`EIO`).
//!
//! Connections are served one thread each; a connection may send any
//! number of commands.

use crate::model::Model;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Runs one command against `model`; returns the reply line (without
/// the newline).
pub fn execute(model: &Mutex<Model>, line: &str) -> String {
    let mut words = line.split_whitespace();
    let command = words.next().unwrap_or_default();
    let arg = words.next();
    if words.next().is_some() {
        return format!("error too many arguments in {line:?}");
    }
    let mut m = model.lock().unwrap_or_else(|e| e.into_inner());
    match (command, arg) {
        ("ping", None) => "ok pong".into(),
        ("cut", None) => format!("ok cut {}", m.cut(None)),
        ("cut-torn", Some(seed)) => match seed.parse::<u64>() {
            Ok(seed) => format!("ok cut-torn seed={seed} {}", m.cut(Some(seed))),
            Err(e) => format!("error cut-torn: seed {seed:?}: {e}"),
        },
        ("stats", None) => format!("ok {}", m.stats()),
        ("sync", None) => {
            m.sync_all();
            "ok sync".into()
        }
        ("limit", Some(arg)) => {
            let capacity = if arg == "none" { Ok(u64::MAX) } else { arg.parse::<u64>() };
            match capacity {
                Ok(c) => {
                    m.set_capacity(c);
                    let (_, used, _) = m.usage();
                    format!("ok limit capacity={c} used={used}")
                }
                Err(e) => format!("error limit: {arg:?}: {e} (a byte count, or none)"),
            }
        }
        _ => format!("error unknown command {line:?} (ping, cut, cut-torn <seed>, stats, sync, limit <bytes|none>)"),
    }
}

/// Listens on `path` (a stale socket file there is replaced) and serves
/// every connection on a thread of its own, until the process exits.
pub fn serve(path: &Path, model: Arc<Mutex<Model>>) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(conn) => {
                    let model = Arc::clone(&model);
                    let spawned = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
                        if let Err(e) = serve_connection(conn, &model) {
                            eprintln!("rill-powerfs: control connection: {e}");
                        }
                    });
                    if let Err(e) = spawned {
                        eprintln!("rill-powerfs: cannot serve a control connection: {e}");
                    }
                }
                Err(e) => eprintln!("rill-powerfs: control accept: {e}"),
            }
        }
    })?;
    Ok(())
}

fn serve_connection(conn: UnixStream, model: &Mutex<Model>) -> std::io::Result<()> {
    let mut out = conn.try_clone()?;
    for line in BufReader::new(conn).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let reply = execute(model, &line);
        eprintln!("rill-powerfs: {line} -> {reply}");
        writeln!(out, "{reply}")?;
    }
    Ok(())
}

/// Sends one command to the control socket at `path`; returns the reply
/// line, `Err` for an `error ...` reply or a broken connection.
pub fn request(path: &Path, command: &str) -> std::io::Result<String> {
    let mut conn = UnixStream::connect(path)?;
    writeln!(conn, "{command}")?;
    let mut reply = String::new();
    BufReader::new(&conn).read_line(&mut reply)?;
    let reply = reply.trim_end();
    match reply.strip_prefix("ok") {
        Some(rest) => Ok(rest.trim_start().to_owned()),
        None if reply.is_empty() => Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("no reply to {command:?}"))),
        None => Err(std::io::Error::other(format!("{command:?}: {reply}"))),
    }
}

/// The `key=value` fields of a reply, as numbers where they are numbers.
pub fn fields(reply: &str) -> std::collections::BTreeMap<String, u64> {
    reply.split_whitespace().filter_map(|w| w.split_once('=')).filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_reply_ok_or_error() {
        let m = Mutex::new(Model::new(1 << 20));
        assert_eq!(execute(&m, "ping"), "ok pong");
        assert!(execute(&m, "stats").starts_with("ok files=0 dirs=1 "));
        assert!(execute(&m, "cut").starts_with("ok cut files=0 dirs=1 "));
        assert!(execute(&m, "cut-torn 17").starts_with("ok cut-torn seed=17 files=0"));
        assert!(execute(&m, "cut-torn x").starts_with("error "));
        assert!(execute(&m, "cut-torn").starts_with("error "));
        assert!(execute(&m, "cut 1 2").starts_with("error "));
        assert!(execute(&m, "reboot").starts_with("error unknown command"));
        assert_eq!(fields(&execute(&m, "stats"))["cuts"], 2);
    }
}
