//! Keeps the index of every persisted stream's log near its end, on a
//! thread of its own, so that the control thread never reads a log at
//! length.
//!
//! A replay from the log (`Earliest`, a position, a time) and a lapped
//! subscriber's request for segments need the stream's index: which
//! segment and offset hold a position. Building it reads every batch
//! header of every segment (one small read per batch: a 4 GiB log of
//! 64 KiB batches is 65,536 reads, seconds on a cold disk), and keeping it
//! current reads the headers appended since. The indexer thread does both:
//! it builds each index when the stream is registered and refreshes it
//! every [`REFRESH`]. The control thread then only catches up with what
//! was appended in the last moments (headers still in the page cache),
//! lists the directory and opens the segments it hands out.

use rill_store::{Dir, LogError, StreamLog};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the indexer brings every index up to date.
pub const REFRESH: Duration = Duration::from_millis(100);

/// The index of one stream's log, shared by the control thread and the
/// indexer.
#[derive(Debug)]
pub struct LogIndex {
    dir: Dir,
    log: Mutex<Option<StreamLog>>,
}

impl LogIndex {
    /// The index, brought up to date: what the indexer has not read yet
    /// (or all of it, if the indexer has not built it yet).
    pub fn current(&self) -> Result<MutexGuard<'_, Option<StreamLog>>, LogError> {
        let mut guard = self.lock();
        match &mut *guard {
            Some(log) => log.refresh()?,
            None => *guard = Some(StreamLog::open_in(self.dir.clone())?),
        }
        Ok(guard)
    }

    fn lock(&self) -> MutexGuard<'_, Option<StreamLog>> {
        // A panic while indexing leaves a valid index (refresh keeps what
        // it read): go on with it.
        self.log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The indexer's turn: build the index outside the lock the first
    /// time (the long read), else refresh it under the lock (the short
    /// one).
    fn update(&self) {
        let built = self.lock().is_none().then(|| StreamLog::open_in(self.dir.clone()));
        let mut guard = self.lock();
        let result = match (built, &mut *guard) {
            (Some(Ok(log)), None) => {
                *guard = Some(log);
                Ok(())
            }
            (Some(Err(e)), None) => Err(e),
            (_, Some(log)) => log.refresh(),
            (None, None) => Ok(()), // never: nobody takes an index away
        };
        if let Err(e) = result {
            // The control thread meets the same error and reports it to
            // the client that needed the index.
            tracing::debug!(dir = %self.dir.path().display(), error = %e, "indexing the log failed; retrying");
        }
    }
}

/// The indexer thread and the way to register streams with it.
#[derive(Debug)]
pub struct Indexer {
    register: Option<Sender<Weak<LogIndex>>>,
    thread: Option<JoinHandle<()>>,
}

impl Indexer {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Indexer> {
        let (register, registered) = channel::<Weak<LogIndex>>();
        let thread = std::thread::Builder::new().name("rill-indexer".into()).spawn(move || {
            let mut indexes: Vec<Weak<LogIndex>> = Vec::new();
            loop {
                match registered.recv_timeout(REFRESH) {
                    Ok(index) => {
                        // Build a new stream's index at once.
                        if let Some(i) = index.upgrade() {
                            i.update();
                        }
                        indexes.push(index);
                        continue;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                // Streams removed since drop their index: forget those.
                indexes.retain(|w| w.upgrade().map(|i| i.update()).is_some());
            }
        })?;
        Ok(Indexer { register: Some(register), thread: Some(thread) })
    }

    /// The index of the log in `dir`, kept up to date from now on (until
    /// the last handle to it is dropped): `built`, if the caller read it
    /// already (recovery does), else built by the indexer first.
    pub fn index(&self, dir: Dir, built: Option<StreamLog>) -> Arc<LogIndex> {
        let index = Arc::new(LogIndex { dir, log: Mutex::new(built) });
        if let Some(register) = &self.register {
            // A dead indexer only costs the control thread longer reads.
            let _ = register.send(Arc::downgrade(&index));
        }
        index
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.register = None; // disconnects: the thread returns
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_is_built_by_the_indexer_and_forgotten_with_its_stream() {
        let dir = std::env::temp_dir().join(format!("rill-indexer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let indexer = Indexer::start().unwrap();
        let index = indexer.index(Dir::open(&dir).unwrap(), None);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while index.lock().is_none() {
            assert!(std::time::Instant::now() < deadline, "the indexer never built the index");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(index.current().unwrap().as_ref().unwrap().segments().len(), 0);
        let weak = Arc::downgrade(&index);
        drop(index);
        assert!(weak.upgrade().is_none());
        drop(indexer); // joins the thread
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
