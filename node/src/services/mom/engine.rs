//! The engine: one thread owns the [`SqlStore`] and applies commands in
//! arrival order with group commit — it takes every job waiting, runs them in
//! one transaction, commits (one fsync), and only then answers each. So a
//! publish is acknowledged only once it is on disk, and many concurrent
//! publishes share one fsync.

use std::sync::Arc;
use std::sync::mpsc;

use tokio::sync::{Notify, oneshot};

use super::model::{ChannelInfo, Command, Kind, MomError, Outcome};
use super::sql::SqlStore;
use super::store::{MomStore, apply};

/// Most jobs in one transaction.
const MAX_GROUP: usize = 1024;

enum Job {
    Apply(Command, oneshot::Sender<Result<Outcome, MomError>>),
    List(
        Option<Kind>,
        u64,
        oneshot::Sender<Result<Vec<ChannelInfo>, MomError>>,
    ),
    IsUser(String, oneshot::Sender<Result<bool, MomError>>),
}

/// Handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Job>,
    /// Woken after every commit that stored a message.
    published: Arc<Notify>,
}

impl Engine {
    /// Starts the engine thread on `store`; it ends when every handle is dropped.
    pub fn start(store: SqlStore) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let published = Arc::new(Notify::new());
        let notify = published.clone();
        std::thread::Builder::new()
            .name("mom-engine".into())
            .spawn(move || run(store, rx, notify))?;
        Ok(Self { tx, published })
    }

    pub async fn apply(&self, command: Command) -> Result<Outcome, MomError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Apply(command, tx))?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn list(
        &self,
        kind: Option<Kind>,
        now_ms: u64,
    ) -> Result<Vec<ChannelInfo>, MomError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::List(kind, now_ms, tx))?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn is_user(&self, id: &str) -> Result<bool, MomError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::IsUser(id.to_owned(), tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Resolves after the next commit that stored a message.
    pub fn published(&self) -> &Notify {
        &self.published
    }

    fn send(&self, job: Job) -> Result<(), MomError> {
        self.tx.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> MomError {
    MomError::Storage("the MOM engine has stopped".into())
}

fn run(mut store: SqlStore, rx: mpsc::Receiver<Job>, published: Arc<Notify>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut stored = false;
        let (answers, committed) = store.batch(|s| {
            jobs.into_iter()
                .map(|job| match job {
                    Job::Apply(command, reply) => {
                        let outcome = apply(s, &command);
                        stored |=
                            matches!(&outcome, Ok(Outcome::Published { ids }) if !ids.is_empty());
                        Answer::Apply(outcome, reply)
                    }
                    Job::List(kind, now, reply) => Answer::List(s.list(kind, now), reply),
                    Job::IsUser(id, reply) => Answer::IsUser(s.is_user(&id), reply),
                })
                .collect::<Vec<_>>()
        });
        match committed {
            Ok(()) => {
                for answer in answers {
                    answer.send();
                }
                if stored {
                    published.notify_waiters();
                }
            }
            // Nothing of the batch is on disk: every caller hears so.
            Err(err) => {
                tracing::error!(error = %err, "MOM commit failed");
                for answer in answers {
                    answer.fail(&err);
                }
            }
        }
    }
}

/// A job's result, sent only after its batch committed.
enum Answer {
    Apply(
        Result<Outcome, MomError>,
        oneshot::Sender<Result<Outcome, MomError>>,
    ),
    List(
        Result<Vec<ChannelInfo>, MomError>,
        oneshot::Sender<Result<Vec<ChannelInfo>, MomError>>,
    ),
    IsUser(
        Result<bool, MomError>,
        oneshot::Sender<Result<bool, MomError>>,
    ),
}

impl Answer {
    fn fail(self, err: &MomError) {
        match self {
            Answer::Apply(_, tx) => {
                let _ = tx.send(Err(err.clone()));
            }
            Answer::List(_, tx) => {
                let _ = tx.send(Err(err.clone()));
            }
            Answer::IsUser(_, tx) => {
                let _ = tx.send(Err(err.clone()));
            }
        }
    }

    fn send(self) {
        match self {
            Answer::Apply(r, tx) => {
                let _ = tx.send(r);
            }
            Answer::List(r, tx) => {
                let _ = tx.send(r);
            }
            Answer::IsUser(r, tx) => {
                let _ = tx.send(r);
            }
        }
    }
}
