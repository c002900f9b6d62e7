//! The engine: one thread owns a replica ([`Core`]) and its store. It takes
//! every job waiting (client writes, reads, peer messages), feeds them to
//! the core, then handles the core's Ready in one SQLite transaction — so
//! many writes share one fsync (group commit) — and only then sends the
//! messages and answers. A tick every [`TICK_MS`] drives raft's timers.
//!
//! The thread is the only place the store is touched; async callers wait
//! on oneshot channels. If the store fails to commit, the replica cannot
//! go on (raft's memory is ahead of its disk): the engine stops and every
//! later call fails with a storage error; a restart recovers from disk.

use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use raft::eraftpb::Message;
use tokio::sync::{Notify, oneshot};

use super::ReplError;
use super::core::{Core, RaftStatus, Role, TICK_MS, Timing};
use super::store::LogStore;

/// Most jobs fed to the core before its Ready is handled.
const MAX_GROUP: usize = 4096;

type Answer<S> = oneshot::Sender<Result<<S as LogStore>::Outcome, <S as LogStore>::Error>>;
/// Work on the store: given the store, or why it cannot run.
type RunJob<S> = Box<dyn FnOnce(Result<&mut S, ReplError>) + Send>;

/// Who waits on the core: a write's caller or a current read.
enum Waiter<S: LogStore> {
    Write(Answer<S>),
    Read(RunJob<S>),
}

impl<S: LogStore> Waiter<S> {
    fn fail(self, e: ReplError) {
        match self {
            Waiter::Write(tx) => {
                if tx.send(Err(e.into())).is_err() {
                    tracing::trace!("write failed after its caller gave up");
                }
            }
            Waiter::Read(f) => f(Err(e)),
        }
    }
}

enum Job<S: LogStore> {
    Propose(S::Command, Answer<S>),
    /// Runs on what this replica has applied, after the jobs before it.
    Read(RunJob<S>),
    /// Runs once this replica has applied all that was committed when it
    /// asked (a raft ReadIndex).
    ReadCurrent(RunJob<S>),
    Step(Message),
    Campaign,
}

/// Where the engine sends raft messages for peers.
pub type Outbox = tokio::sync::mpsc::UnboundedSender<Vec<Message>>;

/// Handle to the engine thread; cheap to clone. The thread ends when every
/// handle is dropped.
pub struct Engine<S: LogStore> {
    tx: mpsc::Sender<Job<S>>,
    /// Woken after every Ready that applied an outcome the store says wakes.
    changes: Arc<Notify>,
    status: Arc<Mutex<RaftStatus>>,
}

impl<S: LogStore> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            changes: self.changes.clone(),
            status: self.status.clone(),
        }
    }
}

impl<S: LogStore> Engine<S> {
    /// Starts the engine thread `name` for member `id` of `voters` on
    /// `store`; messages for peers go to `outbox`.
    pub fn start(
        store: S,
        name: &str,
        id: u64,
        voters: &[u64],
        outbox: Option<Outbox>,
        seed: u64,
    ) -> Result<Self, S::Error> {
        let core: Core<S, Waiter<S>> = Core::new(store, id, voters, seed, Timing::default())?;
        let (tx, rx) = mpsc::channel();
        let changes = Arc::new(Notify::new());
        let status = Arc::new(Mutex::new(core.status()));
        let shared = (changes.clone(), status.clone());
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(core, rx, outbox, shared))
            .map_err(|e| ReplError::Storage(format!("cannot start the engine: {e}")))?;
        Ok(Self {
            tx,
            changes,
            status,
        })
    }

    /// The engine on a store that is a group of its own (no peers: a write
    /// commits once it is on this disk), for tests, benchmarks and
    /// single-node use. Returns once it leads.
    pub async fn start_alone(store: S, name: &str) -> Result<Self, S::Error> {
        let engine = Self::start(store, name, 1, &[1], None, 1)?;
        engine.send(Job::Campaign)?;
        // Leading with its first entry committed. A ReadIndex before that
        // would wait for an append response, which a group of one never
        // gets (raft-rs releases such reads only there), so look at the
        // status instead; it changes with each Ready, within milliseconds.
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = engine.status();
            if s.role == Role::Leader && s.last > 0 && s.commit >= s.last {
                break;
            }
            if tokio::time::Instant::now() >= until {
                return Err(ReplError::NotLeader(format!(
                    "{name}: a group of one did not lead within 10 s"
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        engine.read_current(|_| Ok(())).await?;
        Ok(engine)
    }

    /// Where this replica stands now.
    pub fn status(&self) -> RaftStatus {
        self.status.lock().clone()
    }

    /// The shared cell the engine writes its status to.
    pub(crate) fn status_cell(&self) -> Arc<Mutex<RaftStatus>> {
        self.status.clone()
    }

    /// Runs a command (on the leader; elsewhere `NotLeader`). Answers once
    /// a majority holds it and it is applied here.
    pub async fn apply(&self, command: S::Command) -> Result<S::Outcome, S::Error> {
        let (tx, rx) = oneshot::channel();
        self.send(Job::Propose(command, tx))?;
        rx.await.map_err(|_| stopped::<S::Error>())?
    }

    /// Runs `f` on what this replica has applied (may be behind the
    /// leader: for telemetry, digests and local views).
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> Result<T, S::Error> + Send + 'static,
    ) -> Result<T, S::Error> {
        let (job, rx) = run_job(f);
        self.send(Job::Read(job))?;
        rx.await.map_err(|_| stopped::<S::Error>())?
    }

    /// Runs `f` once this replica holds every write acknowledged before the
    /// call (a raft ReadIndex confirmed by a quorum): a current read, on
    /// any member that can reach the leader.
    pub async fn read_current<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut S) -> Result<T, S::Error> + Send + 'static,
    ) -> Result<T, S::Error> {
        let (job, rx) = run_job(f);
        self.send(Job::ReadCurrent(job))?;
        rx.await.map_err(|_| stopped::<S::Error>())?
    }

    /// A raft message from a peer.
    pub fn step(&self, m: Message) {
        if self.tx.send(Job::Step(m)).is_err() {
            tracing::trace!("raft message for a stopped replica dropped");
        }
    }

    /// Resolves after the next Ready that applied an outcome that
    /// [`LogStore::wakes`].
    pub fn changes(&self) -> &Notify {
        &self.changes
    }

    fn send(&self, job: Job<S>) -> Result<(), S::Error> {
        self.tx.send(job).map_err(|_| stopped())
    }
}

fn run_job<S: LogStore, T: Send + 'static>(
    f: impl FnOnce(&mut S) -> Result<T, S::Error> + Send + 'static,
) -> (RunJob<S>, oneshot::Receiver<Result<T, S::Error>>) {
    let (tx, rx) = oneshot::channel();
    let job: RunJob<S> = Box::new(move |s| {
        let result = match s {
            Ok(s) => f(s),
            Err(e) => Err(e.into()),
        };
        if tx.send(result).is_err() {
            tracing::trace!("read done after its caller gave up");
        }
    });
    (job, rx)
}

/// Hands messages to the transport; it is gone only while the node stops.
fn send_out(outbox: &Outbox, msgs: Vec<Message>) {
    if outbox.send(msgs).is_err() {
        tracing::debug!("raft messages dropped: the transport has stopped");
    }
}

fn stopped<E: From<ReplError>>() -> E {
    ReplError::Storage("the replica has stopped (see its log)".into()).into()
}

fn run<S: LogStore>(
    mut core: Core<S, Waiter<S>>,
    rx: mpsc::Receiver<Job<S>>,
    outbox: Option<Outbox>,
    (changes, status): (Arc<Notify>, Arc<Mutex<RaftStatus>>),
) {
    let tick = Duration::from_millis(TICK_MS);
    let mut next_tick = Instant::now() + tick;
    let mut jobs = Vec::new();
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(job) => jobs.push(job),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let now = Instant::now();
        if now >= next_tick {
            // One tick however long we were away (paused): no burst of
            // elections on waking up.
            core.tick();
            next_tick = now + tick;
        }
        let mut local = Vec::new();
        let mut writes = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Job::Propose(command, tx) => writes.push((command, Waiter::Write(tx))),
                Job::Read(f) => local.push(f),
                Job::ReadCurrent(f) => {
                    if let Err((who, e)) = core.read_index(Waiter::Read(f)) {
                        who.fail(e);
                    }
                }
                Job::Step(m) => {
                    if let Err(e) = core.step(m) {
                        tracing::debug!(error = %e, "raft message refused");
                    }
                }
                Job::Campaign => {
                    if let Err(e) = core.campaign() {
                        tracing::warn!(error = %e, "cannot start an election");
                    }
                }
            }
        }
        // Every write waiting goes into as few log entries as fit.
        if !writes.is_empty()
            && let Err(failed) = core.propose_batch(writes)
        {
            for (who, e) in failed {
                who.fail(e);
            }
        }
        let mut early = |msgs: Vec<Message>| {
            if let Some(outbox) = &outbox {
                send_out(outbox, msgs);
            }
        };
        let out = match core.ready(&mut early) {
            Ok(out) => out,
            Err(e) => {
                tracing::error!(error = %e, "the replica cannot persist its state; stopping it");
                for f in local {
                    f(Err(e.clone()));
                }
                return;
            }
        };
        if !out.messages.is_empty()
            && let Some(outbox) = &outbox
        {
            send_out(outbox, out.messages);
        }
        for (who, outcome) in out.answers {
            match (who, outcome) {
                (Waiter::Write(tx), outcome) => {
                    if tx.send(outcome).is_err() {
                        tracing::trace!("write applied after its caller gave up");
                    }
                }
                (Waiter::Read(f), Ok(_)) => f(Ok(core.store())),
                (Waiter::Read(f), Err(e)) => f(Err(e.into())),
            }
        }
        for who in out.reads {
            if let Waiter::Read(f) = who {
                f(Ok(core.store()));
            }
        }
        for (who, e) in out.failed_reads {
            who.fail(e);
        }
        for f in local {
            f(Ok(core.store()));
        }
        if out.woke {
            changes.notify_waiters();
        }
        *status.lock() = core.status();
    }
}
