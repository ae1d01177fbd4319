//! `rill-powerfs <mountpoint> --control <socket> [--capacity-bytes N]`:
//! mounts the power-loss filesystem (see the crate docs), serves the
//! control socket, prints `READY` once both work, and runs in the
//! foreground until SIGTERM or SIGINT; then unmounts and exits 0.
//! Exit status 2 on a usage or mount error.

#![forbid(unsafe_code)]

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use rill_powerfs::fs::PowerFs;
use rill_powerfs::model::Model;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default data capacity: more than any test writes, less than memory.
const DEFAULT_CAPACITY_BYTES: u64 = 8 << 30;
/// After SIGTERM, how long the FUSE thread gets to finish.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

struct Args {
    mountpoint: PathBuf,
    control: PathBuf,
    capacity_bytes: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = std::env::args().skip(1);
    let (mut mountpoint, mut control, mut capacity_bytes) = (None, None, DEFAULT_CAPACITY_BYTES);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--control" => control = Some(PathBuf::from(args.next().context("--control needs a path")?)),
            "--capacity-bytes" => capacity_bytes = args.next().context("--capacity-bytes needs a number")?.parse().context("--capacity-bytes")?,
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ if mountpoint.is_none() => mountpoint = Some(PathBuf::from(a)),
            _ => bail!("unexpected argument {a:?}"),
        }
    }
    Ok(Args {
        mountpoint: mountpoint.context("usage: rill-powerfs <mountpoint> --control <socket> [--capacity-bytes N]")?,
        control: control.context("--control <socket> is required")?,
        capacity_bytes,
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("rill-powerfs: {e:#}");
        std::process::exit(2);
    }
}

fn run() -> Result<()> {
    let args = parse_args()?;
    // Blocked before any thread starts, so every thread inherits the mask
    // and only the sigwait below receives them.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("block SIGTERM and SIGINT")?;

    let model = Arc::new(Mutex::new(Model::new(args.capacity_bytes)));
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("rill-powerfs".into()), fuser::MountOption::Subtype("powerfs".into())];
    // Any uid may use it (tests run rilld and clients as other users too).
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(1);
    let session = fuser::spawn_mount(PowerFs::new(Arc::clone(&model)), &args.mountpoint, &config)
        .with_context(|| format!("mount on {}", args.mountpoint.display()))?;
    rill_powerfs::control::serve(&args.control, model).with_context(|| format!("control socket {}", args.control.display()))?;
    eprintln!("rill-powerfs: mounted on {} (control {})", args.mountpoint.display(), args.control.display());
    println!("READY");
    std::io::stdout().flush()?;

    let signal = signals.wait().context("sigwait")?;
    eprintln!("rill-powerfs: {signal}: unmounting {}", args.mountpoint.display());
    unmount(&args.mountpoint, session);
    let _ = std::fs::remove_file(&args.control);
    Ok(())
}

/// Detaches the mount (a lazy unmount never fails for files still open:
/// their users get errors once the connection ends) and gives the FUSE
/// thread a moment to see the end of the connection.
fn unmount(mountpoint: &Path, session: fuser::BackgroundSession) {
    if let Err(e) = nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH) {
        eprintln!("rill-powerfs: umount {}: {e}", mountpoint.display());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(session.join());
    });
    match rx.recv_timeout(JOIN_TIMEOUT) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("rill-powerfs: FUSE session ended with {e}"),
        Err(_) => eprintln!("rill-powerfs: FUSE session still busy after {JOIN_TIMEOUT:?}; exiting (the kernel ends the connection)"),
    }
}
