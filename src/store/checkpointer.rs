//! Copies SQLite's write-ahead log back into the database file on a thread of its
//! own, so that the writer thread never does it in the middle of the checkouts it
//! is committing.
//!
//! SQLite's own automatic checkpoint runs inside the commit that fills the log past
//! 1,000 pages: that commit then reads every page the log holds, writes each into
//! the database file and syncs both files, while every caller in the batch (and
//! every checkout queued behind it) waits. The writer instead counts the pages its
//! commits add to the log and, every 1,000, asks this thread for a passive
//! checkpoint, which runs beside later commits and never blocks them.
//!
//! The log starts over from its beginning only when a commit finds every page of it
//! copied; under steady writes the commits made during each checkpoint leave a few
//! pages behind, so it would keep growing. Once it holds
//! [`CheckpointPolicy::restart_frames`] pages the writer checkpoints itself: by then
//! only the pages since this thread's last checkpoint are left to copy, and its next
//! commit starts the log over. (If this thread's checkpoint is under way, the
//! writer's finds the checkpoint lock taken and does nothing; it tries again after
//! its next commit.) The log's file therefore stays bounded, and the writer's own
//! checkpoint is a fraction of SQLite's, a fraction of the time.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

/// When the writer asks for checkpoints, and when it makes one itself.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CheckpointPolicy {
    /// Pages added to the log between two requests to the checkpoint thread.
    pub(crate) every_frames: i32,
    /// Pages in the log at which the writer checkpoints itself, so that the log
    /// starts over.
    pub(crate) restart_frames: i32,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            // SQLite's own automatic checkpoint threshold.
            every_frames: 1_000,
            // 32 MB of 4 KB pages.
            restart_frames: 8_000,
        }
    }
}

/// What the writer does after a commit that left `frames` pages in the log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterCommit {
    /// Nothing yet.
    Nothing,
    /// Ask the checkpoint thread for a checkpoint.
    Request,
    /// Checkpoint on the writer's own connection.
    Checkpoint,
}

/// The writer's side of the policy: the pages the log held at the last request.
#[derive(Debug, Default)]
pub(crate) struct LogWatch {
    requested_at: i32,
}

impl LogWatch {
    /// Decides what follows a commit that left `frames` pages in the log (0 when
    /// the commit wrote none).
    pub(crate) fn after_commit(&mut self, policy: CheckpointPolicy, frames: i32) -> AfterCommit {
        if frames == 0 {
            return AfterCommit::Nothing;
        }
        if frames < self.requested_at {
            // The log started over since the last request.
            self.requested_at = 0;
        }
        if frames >= policy.restart_frames {
            self.requested_at = 0;
            return AfterCommit::Checkpoint;
        }
        if frames - self.requested_at >= policy.every_frames {
            self.requested_at = frames;
            return AfterCommit::Request;
        }
        AfterCommit::Nothing
    }
}

/// The checkpointing thread, and the way to ask it for a checkpoint.
pub(crate) struct Checkpointer {
    requests: Option<SyncSender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread; it opens its connection to `path` with the first request.
    pub(crate) fn start(path: PathBuf, busy_timeout: Duration) -> std::io::Result<Checkpointer> {
        // One request waiting is enough: a checkpoint copies whatever the log holds
        // when it runs, including the pages of requests made while it waited.
        let (requests, received) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".to_owned())
            .spawn(move || checkpoint_loop(&path, busy_timeout, &received))?;
        Ok(Checkpointer {
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// Asks for a checkpoint without waiting for it. Returns false if the thread
    /// is gone, so that the caller checkpoints itself.
    pub(crate) fn request(&self) -> bool {
        match self.requests.as_ref().map(|requests| requests.try_send(())) {
            Some(Ok(()) | Err(TrySendError::Full(()))) => true,
            Some(Err(TrySendError::Disconnected(()))) | None => false,
        }
    }
}

impl Drop for Checkpointer {
    /// Lets a checkpoint under way finish, then stops the thread.
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn checkpoint_loop(path: &std::path::Path, busy_timeout: Duration, requests: &Receiver<()>) {
    let mut conn: Option<rusqlite::Connection> = None;
    while requests.recv().is_ok() {
        let result = match &conn {
            Some(conn) => checkpoint(conn),
            None => open(path, busy_timeout).and_then(|opened| checkpoint(conn.insert(opened))),
        };
        if let Err(error) = result {
            // The writer checkpoints itself if the log keeps growing; the next
            // request opens a new connection in case this one is what broke.
            tracing::warn!(event = "sqlite_checkpoint", error = %error, "a checkpoint of SQLite's log failed");
            conn = None;
        }
    }
}

fn open(path: &std::path::Path, busy_timeout: Duration) -> rusqlite::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}

/// A passive checkpoint: copies every page that no reader still needs from the log,
/// without waiting for readers or writers.
pub(crate) fn checkpoint(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: CheckpointPolicy = CheckpointPolicy {
        every_frames: 100,
        restart_frames: 800,
    };

    #[test]
    fn a_checkpoint_is_asked_for_every_so_many_new_pages_and_made_at_the_restart_bound() {
        let mut watch = LogWatch::default();
        let decisions: Vec<AfterCommit> = [0, 40, 99, 100, 150, 199, 200, 450, 799, 800, 30, 120]
            .into_iter()
            .map(|frames| watch.after_commit(POLICY, frames))
            .collect();
        use AfterCommit::{Checkpoint, Nothing, Request};
        assert_eq!(
            decisions,
            [
                Nothing, Nothing, Nothing, Request, Nothing, Nothing, Request, Request, Request, Checkpoint, Nothing,
                Request
            ]
        );
    }

    #[test]
    fn a_log_that_started_over_is_counted_from_its_beginning() {
        let mut watch = LogWatch::default();
        assert_eq!(watch.after_commit(POLICY, 500), AfterCommit::Request);
        // A commit after a complete checkpoint wrote from the start of the log.
        assert_eq!(watch.after_commit(POLICY, 60), AfterCommit::Nothing);
        assert_eq!(watch.after_commit(POLICY, 101), AfterCommit::Request);
    }
}
