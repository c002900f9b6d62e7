//! The engine: one thread owns the [`SqlStore`] and applies commands in
//! arrival order with group commit — it takes every job waiting, runs them in
//! one transaction, commits (one fsync), and only then lets the answers go.
//! So a publish is acknowledged only once it is on disk, and many concurrent
//! publishes share one fsync.
//!
//! As primary, every command that changed the store is appended to the
//! replication log in the same transaction, and a committed batch goes to
//! the replicator (if any), which answers the callers once the replica has
//! it too. As replica, it applies the primary's log entries and refuses
//! commands.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, oneshot};

use super::model::{ChannelInfo, Command, Kind, MomError, Outcome};
use super::replication::Position;
use super::sql::{Entry, SqlStore};
use super::store::MomStore;

/// Most jobs in one transaction.
const MAX_GROUP: usize = 1024;

/// Log text per fetch at most (a catch-up reply must fit one bus message).
pub const FETCH_BYTES: usize = 512 * 1024;

/// Answers to callers, sent once their batch is safe.
pub type Answers = Vec<(
    oneshot::Sender<Result<Outcome, MomError>>,
    Result<Outcome, MomError>,
)>;

/// A committed primary batch on its way to the replica.
pub struct Committed {
    pub entries: Vec<Entry>,
    pub answers: Answers,
}

/// What the engine does with commands.
#[derive(Clone)]
pub enum Mode {
    /// Applies commands in `epoch`; committed batches go to `replicator`.
    Primary {
        epoch: u64,
        replicator: Option<tokio::sync::mpsc::UnboundedSender<Committed>>,
    },
    /// Applies only the primary's log entries.
    Replica,
    /// Serves nothing (no primary yet, or waiting); says why.
    Off(String),
}

enum Job {
    Apply(Command, oneshot::Sender<Result<Outcome, MomError>>),
    List(
        Option<Kind>,
        u64,
        oneshot::Sender<Result<Vec<ChannelInfo>, MomError>>,
    ),
    IsUser(String, oneshot::Sender<Result<bool, MomError>>),
    /// Replica: apply entries (those already applied are skipped).
    Entries(Vec<Entry>, u64, oneshot::Sender<Result<Position, MomError>>),
    Fetch(u64, usize, oneshot::Sender<Result<Vec<Entry>, MomError>>),
    EpochAt(u64, oneshot::Sender<Result<Option<u64>, MomError>>),
    Reset(oneshot::Sender<Result<(), MomError>>),
    SetMode(Mode, oneshot::Sender<()>),
}

/// Handle to the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Job>,
    /// Woken after every commit that stored a message.
    published: Arc<Notify>,
    position: Arc<Mutex<Position>>,
    epoch_seen: u64,
}

impl Engine {
    /// Starts the engine thread on `store` (serving nothing until a mode is
    /// set); it ends when every handle is dropped.
    pub fn start(store: SqlStore) -> Result<Self, MomError> {
        let position = store.position()?;
        let epoch_seen = store.epoch_seen()?.max(position.epoch);
        let (tx, rx) = mpsc::channel();
        let published = Arc::new(Notify::new());
        let shared = Arc::new(Mutex::new(position));
        let (notify, pos) = (published.clone(), shared.clone());
        std::thread::Builder::new()
            .name("mom-engine".into())
            .spawn(move || run(store, rx, notify, pos))
            .map_err(|e| MomError::Storage(format!("cannot start the engine: {e}")))?;
        Ok(Self {
            tx,
            published,
            position: shared,
            epoch_seen,
        })
    }

    /// The engine on a store that leads alone (no replication), for tests
    /// and single-node use.
    pub async fn start_alone(store: SqlStore) -> Result<Self, MomError> {
        let engine = Self::start(store)?;
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

    /// Replica: applies the primary's entries of `epoch`; returns the new position.
    pub async fn apply_entries(
        &self,
        entries: Vec<Entry>,
        epoch: u64,
    ) -> Result<Position, MomError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Entries(entries, epoch, tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Up to `limit` log entries after `lsn`.
    pub async fn fetch(&self, lsn: u64, limit: usize) -> Result<Vec<Entry>, MomError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Fetch(lsn, limit, tx))?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn epoch_at(&self, lsn: u64) -> Result<Option<u64>, MomError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::EpochAt(lsn, tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Forgets the whole store (a diverged replica starting over).
    pub async fn reset(&self) -> Result<(), MomError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Reset(tx))?;
        rx.await.map_err(|_| stopped())?
    }

    /// Switches the mode; jobs queued before it run in the old mode.
    pub async fn set_mode(&self, mode: Mode) {
        let (tx, rx) = oneshot::channel();
        if self.send(Job::SetMode(mode, tx)).is_ok() {
            let _ = rx.await;
        }
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

/// Whether an outcome means the store changed (only those are logged).
pub(super) fn changed(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Done | Outcome::Published { .. } | Outcome::PublishedBatch { .. } => true,
        Outcome::Changed { changed } => *changed,
        Outcome::Delivered { delivery } => delivery.is_some(),
    }
}

/// Whether an outcome stored a message someone may consume.
fn stored_message(outcome: &Result<Outcome, MomError>) -> bool {
    match outcome {
        Ok(Outcome::Published { ids }) => !ids.is_empty(),
        Ok(Outcome::PublishedBatch { ids }) => ids.iter().any(|copies| !copies.is_empty()),
        _ => false,
    }
}

/// Replies that may go out right after the commit (reads, replica work).
enum Reply {
    List(
        oneshot::Sender<Result<Vec<ChannelInfo>, MomError>>,
        Result<Vec<ChannelInfo>, MomError>,
    ),
    IsUser(
        oneshot::Sender<Result<bool, MomError>>,
        Result<bool, MomError>,
    ),
    Entries(
        oneshot::Sender<Result<Position, MomError>>,
        Result<Position, MomError>,
    ),
    Fetch(
        oneshot::Sender<Result<Vec<Entry>, MomError>>,
        Result<Vec<Entry>, MomError>,
    ),
    EpochAt(
        oneshot::Sender<Result<Option<u64>, MomError>>,
        Result<Option<u64>, MomError>,
    ),
    Reset(oneshot::Sender<Result<(), MomError>>, Result<(), MomError>),
    Mode(oneshot::Sender<()>),
}

impl Reply {
    fn send(self, failed: Option<&MomError>) {
        macro_rules! go {
            ($tx:expr, $r:expr) => {{
                let _ = $tx.send(match failed {
                    Some(e) => Err(e.clone()),
                    None => $r,
                });
            }};
        }
        match self {
            Reply::List(tx, r) => go!(tx, r),
            Reply::IsUser(tx, r) => go!(tx, r),
            Reply::Entries(tx, r) => go!(tx, r),
            Reply::Fetch(tx, r) => go!(tx, r),
            Reply::EpochAt(tx, r) => go!(tx, r),
            Reply::Reset(tx, r) => go!(tx, r),
            Reply::Mode(tx) => {
                let _ = tx.send(());
            }
        }
    }
}

fn run(
    mut store: SqlStore,
    rx: mpsc::Receiver<Job>,
    published: Arc<Notify>,
    position: Arc<Mutex<Position>>,
) {
    let mut mode = Mode::Off("starting".into());
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut stored = false;
        let mut answers: Answers = Vec::new();
        // Acks are answered once committed here, without waiting for the
        // replica: an ack the replica misses in a failover only means the
        // message comes again (at least once), and nothing is lost.
        let mut early: Answers = Vec::new();
        let mut entries: Vec<Entry> = Vec::new();
        let mut replies: Vec<Reply> = Vec::new();
        let ((), committed) = store.batch(|s| {
            for job in jobs {
                match job {
                    Job::Apply(command, tx) => {
                        let is_ack = matches!(command, Command::Ack { .. });
                        let outcome = match &mode {
                            Mode::Primary { epoch, .. } => {
                                let (outcome, entry) = s.apply_logged(command, Some(*epoch));
                                entries.extend(entry);
                                outcome
                            }
                            Mode::Replica => Err(MomError::NotPrimary(
                                "this MOM node is a replica; send writes to the primary".into(),
                            )),
                            Mode::Off(why) => Err(MomError::NotPrimary(why.clone())),
                        };
                        stored |= stored_message(&outcome);
                        if is_ack {
                            early.push((tx, outcome));
                        } else {
                            answers.push((tx, outcome));
                        }
                    }
                    Job::List(kind, now, tx) => replies.push(Reply::List(tx, s.list(kind, now))),
                    Job::IsUser(id, tx) => replies.push(Reply::IsUser(tx, s.is_user(&id))),
                    Job::Entries(list, epoch, tx) => {
                        let r = apply_entries(s, &list, epoch);
                        stored |= r.is_ok();
                        replies.push(Reply::Entries(tx, r));
                    }
                    Job::Fetch(lsn, limit, tx) => {
                        replies.push(Reply::Fetch(tx, s.entries_after(lsn, limit, FETCH_BYTES)))
                    }
                    Job::EpochAt(lsn, tx) => replies.push(Reply::EpochAt(tx, s.epoch_at(lsn))),
                    Job::Reset(tx) => replies.push(Reply::Reset(tx, s.reset())),
                    Job::SetMode(m, tx) => {
                        if let Mode::Primary { epoch, .. } = &m
                            && let Err(e) = s.set_epoch_seen(*epoch)
                        {
                            tracing::error!(error = %e, "cannot record the epoch");
                        }
                        mode = m;
                        replies.push(Reply::Mode(tx));
                    }
                }
            }
        });
        if let Ok(p) = store.position() {
            *position.lock().unwrap_or_else(|e| e.into_inner()) = p;
        }
        match committed {
            Ok(()) => {
                for r in replies {
                    r.send(None);
                }
                for (tx, outcome) in early {
                    let _ = tx.send(outcome);
                }
                match (&mode, entries.is_empty()) {
                    (
                        Mode::Primary {
                            replicator: Some(tx),
                            ..
                        },
                        false,
                    ) => {
                        if let Err(back) = tx.send(Committed { entries, answers }) {
                            for (tx, _) in back.0.answers {
                                let _ = tx.send(Err(MomError::NotPrimary(
                                    "replication stopped; the write is not confirmed".into(),
                                )));
                            }
                        }
                    }
                    _ => {
                        for (tx, outcome) in answers {
                            let _ = tx.send(outcome);
                        }
                    }
                }
                if stored {
                    published.notify_waiters();
                }
            }
            // Nothing of the batch is on disk: every caller hears so.
            Err(err) => {
                tracing::error!(error = %err, "MOM commit failed");
                for r in replies {
                    r.send(Some(&err));
                }
                for (tx, _) in answers.into_iter().chain(early) {
                    let _ = tx.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Applies the primary's entries in order, skipping those already here.
fn apply_entries(s: &mut SqlStore, list: &[Entry], epoch: u64) -> Result<Position, MomError> {
    if epoch < s.epoch_seen()? {
        return Err(MomError::NotPrimary(format!(
            "fenced: entries of epoch {epoch}, but epoch {} has begun",
            s.epoch_seen()?
        )));
    }
    s.set_epoch_seen(epoch)?;
    for entry in list {
        let here = s.position()?;
        if entry.lsn <= here.lsn {
            continue;
        }
        if entry.lsn != here.lsn + 1 {
            return Err(MomError::BadRequest(format!(
                "gap: next entry is {} but this replica is at {}",
                entry.lsn, here.lsn
            )));
        }
        // The primary applied it successfully; so does the replica (same
        // state, same command). Its outcome is the primary's to report.
        let _ = s.apply_logged(entry.command.clone(), None);
        s.append_entry(entry)?;
    }
    s.position()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::mom::store::user_id;

    /// A primary's store after `commands`, and its log.
    fn primary(epoch: u64, commands: &[Command]) -> (SqlStore, Vec<Entry>) {
        let mut s = SqlStore::open_in_memory().unwrap();
        for c in commands {
            let (outcome, entry) = s.apply_logged(c.clone(), Some(epoch));
            outcome.unwrap();
            assert!(entry.is_some(), "{c:?} is logged");
        }
        let log = s.entries_after(0, 1000, usize::MAX).unwrap();
        (s, log)
    }

    fn script(n: usize) -> Vec<Command> {
        let a = user_id("a");
        let mut c = vec![
            Command::AddUser { key: a.clone() },
            Command::Create {
                kind: Kind::Queue,
                name: "q".into(),
                owner: a.clone(),
            },
            Command::Subscribe {
                kind: Kind::Queue,
                name: "q".into(),
                user: a.clone(),
            },
        ];
        for i in 0..n {
            c.push(Command::Publish {
                kind: Kind::Queue,
                name: "q".into(),
                body: format!("m{i}"),
                now_ms: i as u64,
            });
        }
        c
    }

    #[test]
    fn catch_up_in_pieces_reaches_the_primary_state() {
        let (p, log) = primary(1, &script(10));
        let mut r = SqlStore::open_in_memory().unwrap();
        for piece in log.chunks(4) {
            apply_entries(&mut r, piece, 1).unwrap();
        }
        assert_eq!(r.position().unwrap(), p.position().unwrap());
        assert_eq!(r.list(None, 0).unwrap(), p.list(None, 0).unwrap());
        // A rejoin sends entries the replica has: they are skipped.
        let again = apply_entries(&mut r, &log[5..], 1).unwrap();
        assert_eq!(again.lsn, log.len() as u64);
        assert_eq!(r.list(None, 0).unwrap(), p.list(None, 0).unwrap());
    }

    #[test]
    fn a_gap_is_refused() {
        let (_, log) = primary(1, &script(3));
        let mut r = SqlStore::open_in_memory().unwrap();
        apply_entries(&mut r, &log[..2], 1).unwrap();
        let err = apply_entries(&mut r, &log[3..], 1).unwrap_err();
        assert!(matches!(err, MomError::BadRequest(m) if m.contains("gap")));
    }

    #[test]
    fn entries_of_an_older_epoch_are_fenced() {
        let (_, log) = primary(1, &script(2));
        let mut r = SqlStore::open_in_memory().unwrap();
        r.set_epoch_seen(3).unwrap();
        let err = apply_entries(&mut r, &log, 2).unwrap_err();
        assert!(matches!(err, MomError::NotPrimary(m) if m.starts_with("fenced")));
        assert_eq!(r.position().unwrap().lsn, 0, "nothing applied");
    }

    #[test]
    fn a_diverged_replica_starts_over_and_matches_the_primary() {
        // The old primary wrote entries in epoch 1 that the new primary (epoch 2) never had.
        let (_, old_log) = primary(1, &script(5));
        let mut old = SqlStore::open_in_memory().unwrap();
        apply_entries(&mut old, &old_log, 1).unwrap();
        let mut new_script = script(2);
        new_script.push(Command::Publish {
            kind: Kind::Queue,
            name: "q".into(),
            body: "new".into(),
            now_ms: 9,
        });
        let (p, new_log) = primary(2, &new_script);
        // Its last entry is not the primary's: start over.
        let here = old.position().unwrap();
        assert_ne!(p.epoch_at(here.lsn).unwrap(), Some(here.epoch));
        old.reset().unwrap();
        apply_entries(&mut old, &new_log, 2).unwrap();
        assert_eq!(old.list(None, 0).unwrap(), p.list(None, 0).unwrap());
        assert_eq!(old.position().unwrap(), p.position().unwrap());
        // Same ids as the primary's, since ids restart with the log.
        let mut old = old;
        let d = old
            .consume(Kind::Queue, "q", &user_id("a"), 100, 10)
            .unwrap()
            .unwrap();
        assert_eq!((d.id, d.body.as_str()), (1, "m0"));
    }
}
