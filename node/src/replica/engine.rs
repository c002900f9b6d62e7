//! The engine: one thread owns a [`LogStore`] and runs jobs in arrival order
//! with group commit — it takes every job waiting, runs them in one
//! transaction, commits (one fsync), and only then lets the answers go. So a
//! write is answered only once it is on disk, and many concurrent writes
//! share one fsync.
//!
//! As primary, every command that changed the store is appended to the log
//! in the same transaction, and a committed batch goes to the replicator
//! (if any), which answers the callers once the replica has it too. As
//! replica, it applies the primary's entries and refuses commands.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use super::log::{Entry, LogStore, apply_entries};
use super::{Position, ReplError};

/// Most jobs in one transaction.
const MAX_GROUP: usize = 1024;

/// Log text per fetch at most (a catch-up reply must fit one bus message).
pub const FETCH_BYTES: usize = 512 * 1024;

type Answer<S> = (
    oneshot::Sender<Result<<S as LogStore>::Outcome, <S as LogStore>::Error>>,
    Result<<S as LogStore>::Outcome, <S as LogStore>::Error>,
);

/// A committed primary batch on its way to the replica, with the answers to
/// send once it is safe there.
pub struct Committed<S: LogStore> {
    pub entries: Vec<Entry<S::Command>>,
    pub answers: Vec<Answer<S>>,
}

impl<S: LogStore> Committed<S> {
    /// Sends every caller its outcome.
    pub fn confirm(self) {
        for (tx, outcome) in self.answers {
            let _ = tx.send(outcome);
        }
    }

    /// Tells every caller the write is not confirmed.
    pub fn fail(self, why: &str) {
        for (tx, _) in self.answers {
            let _ = tx.send(Err(ReplError::NotPrimary(why.to_owned()).into()));
        }
    }

    /// Appends `more` (committed later) to this batch.
    pub fn merge(&mut self, more: Committed<S>) {
        self.entries.extend(more.entries);
        self.answers.extend(more.answers);
    }
}

/// Where the primary's committed batches go.
pub type Replicator<S> = tokio::sync::mpsc::UnboundedSender<Committed<S>>;

/// What the engine does with commands.
pub enum Mode<S: LogStore> {
    /// Applies commands in `epoch`; committed batches go to `replicator`.
    Primary {
        epoch: u64,
        replicator: Option<Replicator<S>>,
    },
    /// Applies only the primary's log entries.
    Replica,
    /// Serves nothing (no primary yet, or waiting); says why.
    Off(String),
}

/// An answer that may go out once the batch it ran in is committed (given
/// the commit's error, if it failed).
type Deferred<S> = Box<dyn FnOnce(Option<&<S as LogStore>::Error>) + Send>;

/// Work on the store that answers after the commit.
type RunJob<S> = Box<dyn FnOnce(&mut S) -> Deferred<S> + Send>;

enum Job<S: LogStore> {
    Apply(S::Command, oneshot::Sender<Result<S::Outcome, S::Error>>),
    /// Anything else: runs on the store, answers after the commit.
    Run(RunJob<S>),
    SetMode(Mode<S>, oneshot::Sender<()>),
}

/// Handle to the engine thread; cheap to clone.
pub struct Engine<S: LogStore> {
    tx: mpsc::Sender<Job<S>>,
    /// Woken after every commit with an outcome the store says wakes.
    changes: Arc<Notify>,
    position: Arc<Mutex<Position>>,
    epoch_seen: u64,
}

impl<S: LogStore> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            changes: self.changes.clone(),
            position: self.position.clone(),
            epoch_seen: self.epoch_seen,
        }
    }
}

impl<S: LogStore> Engine<S> {
    /// Starts the engine thread `name` on `store` (serving nothing until a
    /// mode is set); it ends when every handle is dropped.
    pub fn start(store: S, name: &str) -> Result<Self, S::Error> {
        let position = store.position()?;
        let epoch_seen = store.epoch_seen()?.max(position.epoch);
        let (tx, rx) = mpsc::channel();
        let changes = Arc::new(Notify::new());
        let shared = Arc::new(Mutex::new(position));
        let (notify, pos) = (changes.clone(), shared.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(store, rx, notify, pos))
            .map_err(|e| ReplError::Storage(format!("cannot start the engine: {e}")))?;
        Ok(Self {
            tx,
            changes,
            position: shared,
            epoch_seen,
        })
    }

    /// The engine on a store that leads alone (no replication), for tests,
    /// benchmarks and single-node use.
    pub async fn start_alone(store: S, name: &str) -> Result<Self, S::Error> {
        let engine = Self::start(store, name)?;
        let epoch = engine.epoch_seen() + 1;
        engine
            .set_mode(Mode::Primary {
                epoch,
                replicator: None,
            })
            .await;
        Ok(engine)
    }

    /// The last log position (updated after every commit).
    pub fn position(&self) -> Position {
        *self.position.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The highest epoch seen when the engine started.
    pub fn epoch_seen(&self) -> u64 {
        self.epoch_seen
    }

    /// Runs a command (as primary); answers once it is safe.
    pub async fn apply(&self, command: S::Command) -> Result<S::Outcome, S::Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Apply(command, tx))?;
        rx.await.map_err(|_| stopped::<S::Error>())?
    }

    /// Runs `f` on the store in the engine thread (reads; in any mode).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> Result<T, S::Error> + Send + 'static,
    ) -> Result<T, S::Error> {
        self.run_job(f).await
    }

    /// Replica: applies the primary's entries of `epoch`; returns the new position.
    pub async fn apply_entries(
        &self,
        entries: Vec<Entry<S::Command>>,
        epoch: u64,
    ) -> Result<Position, ReplError> {
        self.run_job(move |s| apply_entries(s, &entries, epoch).map_err(S::Error::from))
            .await
            .map_err(Into::into)
    }

    /// Up to `limit` log entries after `lsn` (and at most [`FETCH_BYTES`] of them).
    pub async fn fetch(&self, lsn: u64, limit: usize) -> Result<Vec<Entry<S::Command>>, ReplError> {
        self.run_job(move |s| s.entries_after(lsn, limit, FETCH_BYTES))
            .await
            .map_err(Into::into)
    }

    pub async fn epoch_at(&self, lsn: u64) -> Result<Option<u64>, ReplError> {
        self.run_job(move |s| s.epoch_at(lsn))
            .await
            .map_err(Into::into)
    }

    /// Forgets the whole store (a diverged replica starting over).
    pub async fn reset(&self) -> Result<(), ReplError> {
        self.run_job(|s| s.reset()).await.map_err(Into::into)
    }

    /// Switches the mode; jobs queued before it run in the old mode.
    pub async fn set_mode(&self, mode: Mode<S>) {
        let (tx, rx) = oneshot::channel();
        if self.send(Job::SetMode(mode, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Resolves after the next commit of an outcome that [`LogStore::wakes`].
    pub fn changes(&self) -> &Notify {
        &self.changes
    }

    async fn run_job<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> Result<T, S::Error> + Send + 'static,
    ) -> Result<T, S::Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Run(Box::new(move |s| {
            let result = f(s);
            Box::new(move |failed: Option<&S::Error>| {
                let _ = tx.send(match failed {
                    Some(e) => Err(e.clone()),
                    None => result,
                });
            })
        })))?;
        rx.await.map_err(|_| stopped::<S::Error>())?
    }

    fn send(&self, job: Job<S>) -> Result<(), S::Error> {
        self.tx.send(job).map_err(|_| stopped())
    }
}

fn stopped<E: From<ReplError>>() -> E {
    ReplError::Storage("the engine has stopped".into()).into()
}

fn run<S: LogStore>(
    mut store: S,
    rx: mpsc::Receiver<Job<S>>,
    changes: Arc<Notify>,
    position: Arc<Mutex<Position>>,
) {
    let mut mode: Mode<S> = Mode::Off("starting".into());
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut wake = false;
        let mut answers: Vec<Answer<S>> = Vec::new();
        let mut early: Vec<Answer<S>> = Vec::new();
        let mut entries: Vec<Entry<S::Command>> = Vec::new();
        let mut deferred: Vec<Deferred<S>> = Vec::new();
        let ((), committed) = store.batch(|s| {
            for job in jobs {
                match job {
                    Job::Apply(command, tx) => {
                        let is_early = S::answer_early(&command);
                        let outcome = match &mode {
                            Mode::Primary { epoch, .. } => {
                                let (outcome, entry) = s.apply_logged(command, Some(*epoch));
                                entries.extend(entry);
                                outcome
                            }
                            Mode::Replica => Err(ReplError::NotPrimary(
                                "this node is a replica; writes go to the primary".into(),
                            )
                            .into()),
                            Mode::Off(why) => Err(ReplError::NotPrimary(why.clone()).into()),
                        };
                        wake |= outcome.as_ref().is_ok_and(S::wakes);
                        if is_early {
                            early.push((tx, outcome));
                        } else {
                            answers.push((tx, outcome));
                        }
                    }
                    Job::Run(f) => {
                        deferred.push(f(s));
                        // Replica work may store what waiters want.
                        wake |= matches!(mode, Mode::Replica);
                    }
                    Job::SetMode(m, tx) => {
                        if let Mode::Primary { epoch, .. } = &m
                            && let Err(e) = s.set_epoch_seen(*epoch)
                        {
                            tracing::error!(error = %e, "cannot record the epoch");
                        }
                        mode = m;
                        deferred.push(Box::new(move |_| {
                            let _ = tx.send(());
                        }));
                    }
                }
            }
        });
        if let Ok(p) = store.position() {
            *position.lock().unwrap_or_else(|e| e.into_inner()) = p;
        }
        match committed {
            Ok(()) => {
                for d in deferred {
                    d(None);
                }
                for (tx, outcome) in early {
                    let _ = tx.send(outcome);
                }
                let batch = Committed::<S> { entries, answers };
                match &mode {
                    Mode::Primary {
                        replicator: Some(tx),
                        ..
                    } if !batch.entries.is_empty() => {
                        if let Err(back) = tx.send(batch) {
                            back.0
                                .fail("replication stopped; the write is not confirmed");
                        }
                    }
                    _ => batch.confirm(),
                }
                if wake {
                    changes.notify_waiters();
                }
            }
            // Nothing of the batch is on disk: every caller hears so.
            Err(err) => {
                tracing::error!(error = %err, "commit failed");
                for d in deferred {
                    d(Some(&err));
                }
                for (tx, _) in answers.into_iter().chain(early) {
                    let _ = tx.send(Err(err.clone()));
                }
            }
        }
    }
}
