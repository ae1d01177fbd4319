//! `stalled-publisher`: a publisher that stalls between claim and commit
//! for as long as its parent says, for tests of what rilld's unblock
//! timeout does to such a claim (tests/guarantees.rs).
//!
//! ```text
//! stalled-publisher --socket S --stream NAME --payload TEXT --go-file PATH
//!                   [--persist none|interval:MS|always] [--stall-secs S]
//! ```
//!
//! Opens a shared publisher on `NAME` (creating the stream, persisted as
//! `--persist` says, if it is missing), claims room for `TEXT`, writes it,
//! prints `CLAIMED position=P`, and then does nothing until the file
//! `--go-file` exists (the parent SIGSTOPs it meanwhile, for longer than
//! the unblock timeout, and SIGCONTs it after creating the file; the file
//! keeps the process from committing before it is stopped). Then it
//! commits and prints `COMMIT result=ok`, `COMMIT result=reclaimed
//! position=P` (`ClaimError::Reclaimed`) or `COMMIT result=error
//! error=...`; on a persisted stream it then waits until position `P` is
//! durable and prints `DURABLE result=ok durable=D`, `DURABLE result=lost
//! position=P` (`DurableError::Lost`) or `DURABLE result=error error=...`.
//! Last: `SUMMARY commit=.. durable=..` (`durable=none` if not persisted).
//!
//! Exit status: 0 once it printed its summary, whatever the outcomes (the
//! parent judges them); 2 on a usage or setup error, or if the go file
//! does not appear within `--stall-secs` (default 120).

#![forbid(unsafe_code)]

use anyhow::{anyhow, bail, Context, Result};
use rill::{ClaimError, Client, DurableError, StreamOptions};
use rill_tests::opts::Opts;
use std::path::Path;
use std::time::{Duration, Instant};

fn main() {
    rill_tests::log_to_stderr();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = Opts::parse(&args, &[]).and_then(|o| run(&o)) {
        eprintln!("stalled-publisher: {e:#}");
        std::process::exit(2);
    }
}

fn run(o: &Opts) -> Result<()> {
    let socket = o.req("socket")?;
    let stream = o.req("stream")?;
    let payload = o.req("payload")?.as_bytes().to_vec();
    let go = Path::new(o.req("go-file")?).to_path_buf();
    let stall = Duration::from_secs(o.num("stall-secs", Some(120))?);
    let persist = o.get("persist").map(str::parse::<rill::Durability>).transpose().map_err(|e| anyhow!(e))?;
    let client = Client::builder()
        .socket(socket)
        .name(format!("stalled-publisher[{}]", std::process::id()))
        .request_timeout(Duration::from_secs(5))
        .connect()
        .with_context(|| format!("connect to rilld at {socket}"))?;
    let mut publisher = client.publisher_with(stream, StreamOptions::new().with_persist(persist))?;
    let persisted = publisher.info().persist.is_some();
    let mut claim = publisher.try_claim(payload.len()).map_err(|e| anyhow!("claim: {e}"))?;
    claim.buf().copy_from_slice(&payload);
    let position = claim.position();
    println!("CLAIMED position={position}");
    let since = Instant::now();
    while !go.exists() {
        if since.elapsed() > stall {
            bail!("{} did not appear within {stall:?}", go.display());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let commit = match claim.commit() {
        Ok(()) => "ok".to_owned(),
        Err(ClaimError::Reclaimed { position: p }) => format!("reclaimed position={p}"),
        Err(e) => format!("error error={e}"),
    };
    println!("COMMIT result={commit}");
    let durable = if persisted {
        let d = match publisher.wait_durable(position, Duration::from_secs(60)) {
            Ok(durable) => format!("ok durable={durable}"),
            Err(DurableError::Lost { position: p }) => format!("lost position={p}"),
            Err(e) => format!("error error={e}"),
        };
        println!("DURABLE result={d}");
        d
    } else {
        "none".to_owned()
    };
    let word = |s: &str| s.split_whitespace().next().unwrap_or("").to_owned();
    println!("SUMMARY commit={} durable={}", word(&commit), word(&durable));
    Ok(())
}
