//! The `users` role: a member of the raft group `users` (SQLite in its
//! data dir), serving `rpc/users/<node>` and HTTP (see [`super::http`]).
//!
//! Changes run on the leader (other members forward them; a forwarded
//! request is never forwarded again); reads are current on any member (a
//! raft ReadIndex). A take or free is accepted once the group holds it
//! (queued in its outbox) and answered when the lockers' reply comes back
//! through the MOM. Only the leader talks to the MOM:
//! - the sender publishes queued requests on `get_locker_id` /
//!   `free_locker_id`, each again after `[lockers] resend_ms` unanswered,
//!   and all of them when it starts leading (the lockers answer a request
//!   once, so a resend changes nothing);
//! - the reply consumer applies the answers on `locker_replies` to the
//!   group, then acks them (a crash in between: delivered again, applied
//!   once), and wakes the callers waiting for them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

use super::link::MomLink;
use super::model::{
    Answered, Done, FREE_QUEUE, Locker, LockerError, LockerReply, Op, REPLY_QUEUE, RequestState,
    TAKE_QUEUE, UsersCommand, UsersOutcome,
};
use super::sql::SqlUsers;
use super::state::UserTable;
use super::wire::{
    LockersAnswer, LockersReply, LockersRequest, USERS_SHOWN, UserView, UsersAnswer, UsersReply,
    UsersRequest, UsersStats,
};
use crate::config::{LockersSettings, Role};
use crate::envelope::now_ms;
use crate::replica::{Engine, Replicas};
use crate::runtime::{Counters, FORWARDED, NodeContext, serve_rpc};
use crate::services::StartError;
use crate::services::mom::model::Delivery;

/// The longest pause between two sends of an unanswered request.
const RESEND_MAX: Duration = Duration::from_secs(60);

/// When this leader last sent a request to the MOM, and how often.
struct Sent {
    at: Instant,
    times: u32,
}

/// How long a change may take to commit before the caller is told so.
const APPLY_DEADLINE: Duration = Duration::from_secs(5);

/// Forgets the waiters of a request that gave up, when dropped (also when
/// the caller's future is dropped: a client that went away).
struct Forget<'a>(&'a Users, String);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.prune(&self.1);
    }
}

/// How long a lockers replica may take to list the lockers.
const LOCKERS_DEADLINE: Duration = Duration::from_secs(1);

/// How long a replies window for p50/p99 lasts.
const WINDOW: Duration = Duration::from_secs(5);

/// A `users` node's service; cheap to clone.
#[derive(Clone)]
pub struct Users {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: NodeContext,
    engine: Engine<SqlUsers>,
    replicas: Replicas,
    settings: LockersSettings,
    link: Arc<MomLink>,
    /// Callers waiting for the answer to a request, by request id.
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Done>>>>,
    /// Request ids drawn here: `<node>.<boot>.<n>`.
    boot: u64,
    next: AtomicU64,
    answered: AtomicU64,
    granted: AtomicU64,
    latency: Mutex<Window>,
    counters: Counters,
    /// The lockers node that answered a list last.
    lockers_node: Mutex<Option<String>>,
}

/// Waits (accepted to answered) of the replies applied lately.
struct Window {
    current: Histogram<u64>,
    started: Instant,
    /// p50 and p99 of the window before, shown while the current is empty.
    last: (u64, u64),
}

impl Window {
    fn new() -> Self {
        Self {
            current: Histogram::new_with_bounds(1, 3_600_000, 2).expect("valid bounds"),
            started: Instant::now(),
            last: (0, 0),
        }
    }

    fn record(&mut self, ms: u64) {
        self.current.saturating_record(ms.max(1));
    }

    fn figures(&mut self) -> (u64, u64) {
        let h = &self.current;
        let (empty, now) = (
            h.is_empty(),
            (h.value_at_quantile(0.5), h.value_at_quantile(0.99)),
        );
        if self.started.elapsed() >= WINDOW {
            if !empty {
                self.last = now;
            }
            self.current.reset();
            self.started = Instant::now();
        }
        if empty { self.last } else { now }
    }
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let store = SqlUsers::open(&ctx.dir.join("users.db"))?;
    let nodes = ctx.config.nodes_with(Role::Users);
    let (engine, replicas) =
        crate::replica::shell::start(&ctx, tasks, "users", nodes.clone(), store).await?;
    let users = Users {
        inner: Arc::new(Inner {
            link: Arc::new(MomLink::new(&ctx)?),
            settings: ctx.config.lockers.clone(),
            ctx: ctx.clone(),
            engine,
            replicas,
            waiters: Mutex::new(HashMap::new()),
            boot: now_ms(),
            next: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            latency: Mutex::new(Window::new()),
            counters: Counters::default(),
            lockers_node: Mutex::new(None),
        }),
    };
    // The first users node takes the configured address, the others a
    // free port (any of them serves every request).
    let mut addr = ctx.config.lockers.http;
    if nodes.first().map(String::as_str) != Some(ctx.id()) {
        addr.set_port(0);
    }
    let bound = super::http::serve(&ctx, tasks, addr, users.clone()).await?;
    tasks.spawn(users.clone().send_loop());
    let acks = users.inner.link.acker(tasks, ctx.shutdown.clone());
    let (batches, rx) = tokio::sync::mpsc::channel(4);
    let leading = users.clone();
    tasks.spawn(users.inner.link.clone().feed(
        REPLY_QUEUE,
        move || leading.leading(),
        ctx.shutdown.clone(),
        batches,
    ));
    tasks.spawn(users.clone().reply_loop(rx, acks));
    tasks.spawn(users.clone().telemetry_loop(bound));
    serve_rpc(
        &ctx,
        tasks,
        "users",
        users.inner.counters.clone(),
        LockerError::BadRequest,
        move |request: UsersRequest, envelope| {
            let users = users.clone();
            async move { users.call(request, envelope.kind == FORWARDED).await }
        },
    )
    .await?;
    Ok(())
}

impl Users {
    pub fn settings(&self) -> &LockersSettings {
        &self.inner.settings
    }

    /// Who leads the group now, as this node knows it.
    pub fn leader(&self) -> Option<String> {
        self.inner.replicas.leader()
    }

    /// This member's place in the group.
    pub fn status(&self) -> crate::replica::shell::GroupStatus {
        self.inner.replicas.status()
    }

    /// Every locker, as of every allocation acknowledged before the call
    /// (a current read on a lockers replica; the one that answered last
    /// is asked first).
    pub async fn lockers(&self) -> Result<Vec<Locker>, LockerError> {
        let mut nodes = self.inner.ctx.config.nodes_with(Role::Lockers);
        if let Some(last) = self.inner.lockers_node.lock().clone() {
            nodes.sort_by_key(|n| *n != last);
        }
        let mut why = LockerError::Unavailable("the lab has no `lockers` node".into());
        for node in nodes {
            let asked = self
                .inner
                .ctx
                .bus
                .request(
                    "lockers",
                    &node,
                    "list",
                    &LockersRequest::List,
                    LOCKERS_DEADLINE,
                )
                .await;
            let answer = match asked {
                Ok(reply) => reply.body_as::<LockersAnswer>(),
                Err(e) => {
                    why = LockerError::Unavailable(format!("lockers node {node}: {e}"));
                    continue;
                }
            };
            match answer {
                Ok(Ok(LockersReply::Lockers { lockers })) => {
                    *self.inner.lockers_node.lock() = Some(node);
                    return Ok(lockers);
                }
                Ok(Err(e)) => why = e,
                Err(e) => why = LockerError::Storage(format!("bad answer from {node}: {e}")),
            }
        }
        Err(why)
    }

    /// Runs one request: reads here, changes on the leader.
    pub async fn call(&self, request: UsersRequest, forwarded: bool) -> UsersAnswer {
        match request {
            UsersRequest::User { name } => {
                super::model::check_name(&name)?;
                let user = self.read(move |s| s.user(&name).map(|u| (u, name))).await?;
                match user {
                    (Some(user), _) => Ok(UsersReply::User { user }),
                    (None, name) => Err(LockerError::UserNotExists(name)),
                }
            }
            UsersRequest::Users => Ok(UsersReply::Users {
                users: self.read(|s| s.users()).await?,
            }),
            change => match self.inner.replicas.leader() {
                Some(p) if p == self.inner.ctx.id() => self.change_here(change).await,
                Some(p) if !forwarded => self.forward(&p, &change).await,
                Some(p) => Err(LockerError::Unavailable(format!(
                    "{} is not the users leader ({p} is)",
                    self.inner.ctx.id()
                ))),
                None => Err(LockerError::Unavailable(
                    "no users leader right now (an election is in progress); try again".into(),
                )),
            },
        }
    }

    /// A read of everything acknowledged before it.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut SqlUsers) -> Result<T, LockerError> + Send + 'static,
    ) -> Result<T, LockerError> {
        self.inner
            .engine
            .read_current(f)
            .await
            .map_err(|e| match e {
                LockerError::Unavailable(why) => LockerError::Unavailable(format!(
                    "{} cannot serve a current read now ({why}); try another users node",
                    self.inner.ctx.id()
                )),
                other => other,
            })
    }

    async fn forward(&self, leader: &str, request: &UsersRequest) -> UsersAnswer {
        let wait = match request {
            UsersRequest::Take { wait_ms, .. } | UsersRequest::Free { wait_ms, .. } => *wait_ms,
            _ => 0,
        };
        let deadline = Duration::from_millis(wait.min(self.inner.settings.wait_ms) + 3000);
        let reply = self
            .inner
            .ctx
            .bus
            .request("users", leader, FORWARDED, request, deadline)
            .await
            .map_err(|e| {
                LockerError::Unavailable(format!("the users leader {leader} did not answer: {e}"))
            })?;
        reply
            .body_as::<UsersAnswer>()
            .map_err(|e| LockerError::Storage(format!("bad answer from {leader}: {e}")))?
    }

    async fn change_here(&self, request: UsersRequest) -> UsersAnswer {
        let now_ms = now_ms();
        match request {
            UsersRequest::Add { name } => {
                match self.apply(UsersCommand::Add { name, now_ms }).await? {
                    UsersOutcome::Added(user) => Ok(UsersReply::User { user }),
                    other => Err(unexpected(&other)),
                }
            }
            UsersRequest::Delete { name } => {
                let request = self.new_request();
                let command = UsersCommand::Delete {
                    name,
                    request,
                    now_ms,
                };
                match self.apply(command).await? {
                    UsersOutcome::Deleted(user) => Ok(UsersReply::Deleted { user }),
                    other => Err(unexpected(&other)),
                }
            }
            UsersRequest::Take {
                name,
                request,
                wait_ms,
            } => self.ask(name, Op::Take, request, wait_ms).await,
            UsersRequest::Free {
                name,
                request,
                wait_ms,
            } => self.ask(name, Op::Free, request, wait_ms).await,
            read => Err(LockerError::BadRequest(format!("{read:?} is no change"))),
        }
    }

    /// Queues a take or free and waits up to `wait_ms` for its answer.
    async fn ask(
        &self,
        name: String,
        op: Op,
        request: Option<String>,
        wait_ms: u64,
    ) -> UsersAnswer {
        // A caller's id only looks up an earlier request; a new one gets
        // an id drawn here, unique.
        let retry = request.is_some();
        let request = request.unwrap_or_else(|| self.new_request());
        let wait = Duration::from_millis(wait_ms.min(self.inner.settings.wait_ms));
        // Registered before the command: the answer may come right after.
        // (The guard is dropped after `rx`, so it forgets a closed waiter.)
        let _forget = Forget(self, request.clone());
        let rx = self.wait_for(&request);
        let command = UsersCommand::Request {
            name,
            request: request.clone(),
            op,
            now_ms: now_ms(),
            max_waiting: self.inner.settings.max_waiting,
            retry,
        };
        let state = match self.apply(command).await? {
            UsersOutcome::Requested(state) => state,
            other => return Err(unexpected(&other)),
        };
        let state = match state {
            RequestState::Pending { request: pending } if !wait.is_zero() => {
                // The user's request in progress may be an earlier one.
                let rx = if pending == request {
                    rx
                } else {
                    self.wait_for(&pending)
                };
                let _forget = Forget(self, pending.clone());
                match tokio::time::timeout(wait, rx).await {
                    Ok(Ok(done)) => RequestState::Done {
                        request: pending,
                        done,
                    },
                    _ => RequestState::Pending { request: pending },
                }
            }
            other => other,
        };
        Ok(UsersReply::Request { state })
    }

    /// Runs a command on the group, failing (Unavailable) if it is not
    /// committed within [`APPLY_DEADLINE`] (a leader cut off from the
    /// majority never commits; the caller must not hang on it).
    async fn apply(&self, command: UsersCommand) -> Result<UsersOutcome, LockerError> {
        match tokio::time::timeout(APPLY_DEADLINE, self.inner.engine.apply(command)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(LockerError::Unavailable(format!(
                "the users group did not commit within {APPLY_DEADLINE:?} (is a majority down?); \
                 try again"
            ))),
        }
    }

    fn new_request(&self) -> String {
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        format!("{}.{:x}.{n}", self.inner.ctx.id(), self.inner.boot)
    }

    fn wait_for(&self, request: &str) -> oneshot::Receiver<Done> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .waiters
            .lock()
            .entry(request.to_owned())
            .or_default()
            .push(tx);
        rx
    }

    /// Forgets the waiters of `request` that gave up.
    fn prune(&self, request: &str) {
        let mut waiters = self.inner.waiters.lock();
        if let Some(list) = waiters.get_mut(request) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiters.remove(request);
            }
        }
    }

    fn answer(&self, answered: &[Answered]) {
        let mut latency = self.inner.latency.lock();
        let mut waiters = self.inner.waiters.lock();
        for a in answered {
            latency.record(a.waited_ms);
            for tx in waiters.remove(&a.request).unwrap_or_default() {
                let _ = tx.send(a.done);
            }
        }
        self.inner
            .answered
            .fetch_add(answered.len() as u64, Ordering::Relaxed);
        let granted = answered
            .iter()
            .filter(|a| matches!(a.done, Done::Granted { .. }))
            .count();
        self.inner
            .granted
            .fetch_add(granted as u64, Ordering::Relaxed);
    }

    fn leading(&self) -> bool {
        self.inner.replicas.leader().as_deref() == Some(self.inner.ctx.id())
    }

    /// On the leader: publishes the queued requests for the lockers.
    async fn send_loop(self) {
        let resend = Duration::from_millis(self.inner.settings.resend_ms);
        let mut sent: HashMap<String, Sent> = HashMap::new();
        let mut was_leading = false;
        loop {
            let changed = self.inner.engine.changes().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let leading = self.leading();
            if leading != was_leading {
                // A new leader sends everything queued.
                sent.clear();
                was_leading = leading;
            }
            let mut failed = false;
            if leading {
                match self.inner.engine.read(|s| s.outbox()).await {
                    Ok(outbox) => failed = !self.send_due(&outbox, &mut sent, resend).await,
                    Err(e) => tracing::warn!(error = %e, "cannot read the outbox"),
                }
            }
            // After a failure, a pause before trying the MOM again.
            let wait = Duration::from_millis(if failed { 500 } else { 250 });
            tokio::select! {
                _ = changed, if !failed => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.ctx.shutdown.cancelled() => return,
            }
        }
    }

    /// Publishes what is due (never sent by this leader, or unanswered
    /// for `resend` doubling with each send, up to [`RESEND_MAX`]: a MOM
    /// or lockers group down for long does not fill the queue with
    /// copies); false if the MOM could not take it.
    async fn send_due(
        &self,
        outbox: &[super::model::Outgoing],
        sent: &mut HashMap<String, Sent>,
        resend: Duration,
    ) -> bool {
        let queued: HashSet<&str> = outbox.iter().map(|o| o.request.request.as_str()).collect();
        sent.retain(|r, _| queued.contains(r.as_str()));
        let now = Instant::now();
        let due = |o: &&super::model::Outgoing| {
            sent.get(&o.request.request).is_none_or(|s| {
                let backoff = resend.saturating_mul(1 << s.times.min(8)).min(RESEND_MAX);
                now.duration_since(s.at) >= backoff
            })
        };
        let batches = [(Op::Take, TAKE_QUEUE), (Op::Free, FREE_QUEUE)].map(|(op, queue)| {
            let batch: Vec<&super::model::Outgoing> = outbox
                .iter()
                .filter(|o| o.request.op == op)
                .filter(due)
                .collect();
            (queue, batch)
        });
        let mut ok = true;
        for (queue, batch) in batches {
            if batch.is_empty() {
                continue;
            }
            let messages = batch
                .iter()
                .map(|o| serde_json::to_string(&o.request).expect("a request serializes"))
                .collect();
            match self.inner.link.publish(queue, messages).await {
                Ok(()) => {
                    for o in batch {
                        let s = sent
                            .entry(o.request.request.clone())
                            .or_insert(Sent { at: now, times: 0 });
                        (s.at, s.times) = (now, s.times.saturating_add(1));
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, queue, "requests not sent to the MOM yet");
                    ok = false;
                }
            }
        }
        ok
    }

    /// On the leader: applies the lockers' answers as consumed, then acks
    /// them (not applied: not acked, delivered again, applied once).
    async fn reply_loop(
        self,
        mut batches: tokio::sync::mpsc::Receiver<Vec<Delivery>>,
        acks: tokio::sync::mpsc::UnboundedSender<Vec<u64>>,
    ) {
        while let Some(deliveries) = batches.recv().await {
            let mut replies = Vec::with_capacity(deliveries.len());
            for d in &deliveries {
                match serde_json::from_str::<LockerReply>(&d.body) {
                    Ok(r) => replies.push(r),
                    Err(e) => {
                        tracing::warn!(error = %e, body = %d.body, "not a locker reply; dropped")
                    }
                }
            }
            if !replies.is_empty() {
                let command = UsersCommand::Replies {
                    replies,
                    now_ms: now_ms(),
                };
                match self.inner.engine.apply(command).await {
                    Ok(UsersOutcome::Applied(answered)) => self.answer(&answered),
                    Ok(other) => tracing::error!(?other, "replies applied as something else"),
                    Err(e) => {
                        // Not acked: delivered again (and applied once).
                        tracing::warn!(error = %e, "replies not applied");
                        continue;
                    }
                }
            }
            // Applied: acked in the background.
            if acks
                .send(deliveries.iter().map(|d| d.id).collect())
                .is_err()
            {
                return;
            }
        }
    }

    async fn telemetry_loop(self, http: std::net::SocketAddr) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.ctx.shutdown.cancelled() => return,
            }
            let table = self
                .inner
                .engine
                .read(|s| Ok((s.users()?, s.outbox_len()?)))
                .await;
            let Ok((users, waiting)) = table else {
                continue;
            };
            let (p50_ms, p99_ms) = self.inner.latency.lock().figures();
            let (requests, failed) = self.inner.counters.get();
            let stats = UsersStats {
                http: Some(http),
                raft: self.inner.replicas.status(),
                users_total: users.len() as u64,
                users: users
                    .into_iter()
                    .take(USERS_SHOWN)
                    .map(|u| UserView {
                        name: u.name,
                        locker: u.locker,
                        pending: u.pending.map(|p| match p.op {
                            Op::Take => "take".into(),
                            Op::Free => "free".into(),
                        }),
                    })
                    .collect(),
                waiting,
                answered: self.inner.answered.load(Ordering::Relaxed),
                granted: self.inner.granted.load(Ordering::Relaxed),
                p50_ms,
                p99_ms,
                mom: self.inner.link.status(),
                requests,
                failed,
            };
            self.inner.ctx.telemetry("users", &stats);
        }
    }
}

fn unexpected(outcome: &UsersOutcome) -> LockerError {
    LockerError::Storage(format!("unexpected outcome {outcome:?}"))
}
