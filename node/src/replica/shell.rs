//! The async shell of replication for one group of nodes (e.g. `mom-a`,
//! `mom-b`), around an [`Engine`]:
//!
//! - the [`Replication`] state machine decides who leads (retained
//!   `<group>/primary`, presence, retained `<group>/state/<node>` positions);
//! - the primary's replicator sends every committed batch to the in-sync
//!   replica (`rpc/<group>-repl/<replica>` `append`) and answers the callers
//!   only once the replica has applied it; a replica that does not answer is
//!   dropped from `in_sync` (announced and seen back on the broker first);
//! - a replica catches up by pulling the primary's log (`check`, `fetch`),
//!   then asks to `join`; a replica whose log diverged starts over.
//!
//! Requests from clients are the service's business: it asks [`Replicas`]
//! who the primary is and forwards to it when that is not this node.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::{Committed, Engine, Mode};
use super::log::{Entry, LogStore};
use super::{Action, Position, PrimaryRecord, ReplError, Replication, Role};
use crate::bus::Bus;
use crate::envelope::{Topics, now_ms};
use crate::presence::{Presence, PresenceState};
use crate::runtime::NodeContext;
use crate::services::StartError;

/// How long a node listens for the record and its peers before a fresh
/// group elects.
const GRACE_MS: u64 = 1500;
/// How long the primary waits for the replica to apply a batch.
const APPEND_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a replica that joined waits to see itself in the primary's record.
const JOIN_CONFIRM: Duration = Duration::from_secs(3);
/// Entries per catch-up fetch.
const FETCH: usize = 2000;
/// Entries per append at most (merged from the batches waiting).
const MAX_APPEND: usize = 4000;
/// JSON per append message at most (estimated high; see [`LogStore::json_len`]).
const APPEND_BYTES: usize = crate::bus::MAX_PAYLOAD / 2;

/// Where a node of a group stands, for its service and its telemetry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub role: Role,
    pub epoch: u64,
    /// The node writes go to, if any.
    pub primary: Option<String>,
    /// Primary: the replicas in sync.
    pub in_sync: Vec<String>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            role: Role::Starting,
            epoch: 0,
            primary: None,
            in_sync: Vec::new(),
        }
    }
}

impl Status {
    /// `primary`, `replica`, `waiting` or `starting`, and why when waiting.
    pub fn describe(&self) -> (&'static str, Option<String>) {
        match &self.role {
            Role::Starting => ("starting", None),
            Role::Primary { .. } => ("primary", None),
            Role::Replica { .. } => ("replica", None),
            Role::Waiting { why } => ("waiting", Some(why.clone())),
        }
    }
}

/// This node's view of its group; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Replicas {
    status: Arc<Mutex<Status>>,
    /// A replica: caught up with the primary and in sync.
    joined: Arc<AtomicBool>,
}

impl Replicas {
    pub fn status(&self) -> Status {
        self.lock().clone()
    }

    /// Whether this node holds every acknowledged write now (the primary,
    /// or a replica that caught up and is in sync), so it may serve reads.
    pub fn serving(&self) -> bool {
        match self.lock().role {
            Role::Primary { .. } => true,
            Role::Replica { .. } => self.joined.load(Ordering::Acquire),
            _ => false,
        }
    }

    fn set_joined(&self, joined: bool) {
        self.joined.store(joined, Ordering::Release);
    }

    /// The node writes go to now, if any.
    pub fn primary(&self) -> Option<String> {
        self.lock().primary.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Requests between the nodes of a group on `rpc/<group>-repl/<node>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ReplRequest<C> {
    /// Primary → replica: apply these entries of `epoch`.
    Append { epoch: u64, entries: Vec<Entry<C>> },
    /// Replica → primary: is my entry `lsn` of `epoch` also yours?
    Check { lsn: u64, epoch: u64 },
    /// Replica → primary: entries after `lsn`.
    Fetch { after: u64, limit: usize },
    /// Replica → primary: I am at `lsn`; stream to me from now on.
    Join { node: String, lsn: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplReply<C> {
    Position { position: Position },
    Same { same: bool },
    Entries { entries: Vec<Entry<C>> },
    Joined { joined: bool, lsn: u64 },
}

type ReplAnswer<C> = Result<ReplReply<C>, ReplError>;

/// Messages to the control loop.
enum Control {
    /// Primary: drop `replica` from in_sync; answer once the broker has it.
    Lost(String, oneshot::Sender<bool>),
    /// Primary: `replica` joined.
    Joined(String),
}

/// A join asked of the replicator.
struct JoinAsk {
    node: String,
    lsn: u64,
    reply: oneshot::Sender<(bool, u64)>,
}

/// One group's names on the bus.
#[derive(Clone)]
struct Names {
    group: String,
    topics: Topics,
}

impl Names {
    fn record(&self) -> String {
        self.topics.service(&self.group, "primary")
    }
    fn state(&self, node: &str) -> String {
        self.topics.service(&self.group, &format!("state/{node}"))
    }
    fn repl(&self) -> String {
        format!("{}-repl", self.group)
    }
}

/// Which peers are alive: presence up, and a heartbeat heard within
/// `silence_ms`. A paused (SIGSTOP) primary keeps its connection, so its
/// presence says up until the broker's keep-alive gives up (several
/// seconds); its silence shows much sooner. Pure; changes are reported once.
#[derive(Debug)]
struct Liveness {
    silence_ms: u64,
    /// node → (presence up, last heartbeat ms, alive as last reported)
    peers: std::collections::HashMap<String, (bool, u64, bool)>,
    last_tick: Option<u64>,
}

impl Liveness {
    fn new(silence_ms: u64) -> Self {
        Self {
            silence_ms,
            peers: Default::default(),
            last_tick: None,
        }
    }

    fn alive(&self, node: &str) -> bool {
        self.peers.get(node).is_some_and(|p| p.2)
    }

    /// Recomputes `node`; returns its new state if it changed.
    fn update(&mut self, node: &str, now_ms: u64) -> Option<bool> {
        let silence = self.silence_ms;
        let p = self.peers.get_mut(node)?;
        let alive = p.0 && now_ms.saturating_sub(p.1) < silence;
        (alive != p.2).then(|| {
            p.2 = alive;
            alive
        })
    }

    fn on_presence(&mut self, node: &str, up: bool, now_ms: u64) -> Option<bool> {
        let p = self
            .peers
            .entry(node.to_owned())
            .or_insert((false, now_ms, false));
        if up && !p.0 {
            // A node (re)starting gets a full period before it counts as silent.
            p.1 = now_ms;
        }
        p.0 = up;
        self.update(node, now_ms)
    }

    fn on_heartbeat(&mut self, node: &str, now_ms: u64) -> Option<bool> {
        let p = self.peers.get_mut(node)?;
        p.1 = p.1.max(now_ms);
        self.update(node, now_ms)
    }

    /// Peers whose state changed with the passing of time.
    fn tick(&mut self, now_ms: u64) -> Vec<(String, bool)> {
        let stalled = self
            .last_tick
            .is_some_and(|t| now_ms.saturating_sub(t) > self.silence_ms / 2);
        self.last_tick = Some(now_ms);
        if stalled {
            // This node was not listening (paused itself, or starved): the
            // silence is ours; give every peer a fresh period.
            for p in self.peers.values_mut() {
                p.1 = p.1.max(now_ms);
            }
            return Vec::new();
        }
        let nodes: Vec<String> = self.peers.keys().cloned().collect();
        nodes
            .into_iter()
            .filter_map(|n| self.update(&n, now_ms).map(|a| (n, a)))
            .collect()
    }
}

/// Runs replication for this node in `group` (whose members, in lab.toml
/// order, are `nodes`), keeping `replicas` up to date.
pub async fn start<S: LogStore>(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    group: &str,
    nodes: Vec<String>,
    engine: Engine<S>,
    replicas: Replicas,
) -> Result<(), StartError> {
    let me = ctx.id().to_owned();
    let names = Names {
        group: group.to_owned(),
        topics: ctx.bus.topics().clone(),
    };
    let mut repl = Replication::new(&me, nodes.clone(), engine.position(), now_ms(), GRACE_MS);
    repl.set_position(Position {
        epoch: engine.epoch_seen().max(engine.position().epoch),
        ..engine.position()
    });
    let mut records = ctx.bus.subscribe(&names.record()).await?;
    let mut states = ctx.bus.subscribe(&names.state("+")).await?;
    let mut presence = ctx.bus.subscribe(&names.topics.presence_all()).await?;
    let mut heartbeats = ctx.bus.subscribe(&names.topics.heartbeat_all()).await?;
    // Silent for four heartbeat periods (at least 1.5 s): down.
    let silence_ms = (4 * ctx.config.lab.heartbeat_ms).max(1500);
    let mut repl_rpc = ctx
        .bus
        .subscribe(&names.topics.rpc(&names.repl(), &me))
        .await?;
    ctx.announce(
        &names.state(&me),
        &format!("{group}-state"),
        &engine.position(),
    )
    .await?;
    let (record_tx, record_rx) = watch::channel(None::<PrimaryRecord>);
    let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Control>();
    let (join_tx, join_rx) = mpsc::unbounded_channel::<JoinAsk>();
    let join_rx = Arc::new(tokio::sync::Mutex::new(join_rx));

    // Replication RPC: appends (as replica) and check/fetch/join (as primary).
    {
        let (ctx, engine, replicas, join_tx, inner) = (
            ctx.clone(),
            engine.clone(),
            replicas.clone(),
            join_tx.clone(),
            tasks.clone(),
        );
        tasks.spawn(async move {
            loop {
                let m = tokio::select! {
                    m = repl_rpc.recv() => m,
                    _ = ctx.shutdown.cancelled() => return,
                };
                let Some(m) = m else { return };
                let (ctx, engine, replicas, join_tx) = (
                    ctx.clone(),
                    engine.clone(),
                    replicas.clone(),
                    join_tx.clone(),
                );
                inner.spawn(async move {
                    let answer: ReplAnswer<S::Command> = match m
                        .envelope
                        .body_as::<ReplRequest<S::Command>>()
                    {
                        Ok(r) => answer(r, &m.envelope.from, &engine, &replicas, &join_tx).await,
                        Err(e) => Err(ReplError::BadRequest(format!(
                            "not a replication request: {e}"
                        ))),
                    };
                    let _ = ctx.bus.reply(&m.envelope, "reply", &answer).await;
                });
            }
        });
    }

    // The control loop: owns the state machine and acts on its decisions.
    let ctx = ctx.clone();
    let inner = tasks.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        // Announced records waiting to be seen back from the broker.
        let mut pending: Vec<(PrimaryRecord, oneshot::Sender<bool>)> = Vec::new();
        // Stops the current replicator or catch-up task.
        let mut current = CancellationToken::new();
        let mut live = Liveness::new(silence_ms);
        let group = names.group.clone();
        loop {
            let actions = tokio::select! {
                _ = ctx.shutdown.cancelled() => { current.cancel(); return; }
                _ = tick.tick() => {
                    pending.retain(|(_, tx)| !tx.is_closed());
                    repl.set_position(engine.position());
                    let mut acts = Vec::new();
                    for (node, alive) in live.tick(now_ms()) {
                        if !alive {
                            tracing::warn!(%group, %node, silence_ms, "no heartbeat from a peer; counting it down");
                        }
                        acts.extend(repl.on_peer(&node, alive, None, now_ms()));
                    }
                    acts.extend(repl.tick(now_ms()));
                    acts
                }
                Some(m) = heartbeats.recv() => {
                    let node = Topics::last_level(&m.topic).to_owned();
                    if !nodes.contains(&node) || node == me {
                        continue;
                    }
                    match live.on_heartbeat(&node, now_ms()) {
                        Some(alive) => repl.on_peer(&node, alive, None, now_ms()),
                        None => continue,
                    }
                }
                Some(m) = records.recv() => {
                    let record = m.envelope.body_as::<PrimaryRecord>().ok();
                    let acts = repl.on_record(record.clone(), now_ms());
                    if let Some(r) = &record {
                        let _ = record_tx.send(Some(r.clone()));
                        // Resolve every waiter whose record this is: confirmed
                        // only while this node still leads that epoch (an old
                        // primary's own record echoing back after a newer
                        // epoch began confirms nothing).
                        let current = repl.epoch() == r.epoch
                            && matches!(repl.role(), Role::Primary { epoch } if *epoch == r.epoch);
                        let mut keep = Vec::new();
                        for (want, tx) in pending.drain(..) {
                            if &want == r { let _ = tx.send(current); } else { keep.push((want, tx)); }
                        }
                        pending = keep;
                    }
                    acts
                }
                Some(m) = states.recv() => {
                    let node = Topics::last_level(&m.topic).to_owned();
                    let position = m.envelope.body_as::<Position>().ok();
                    let is_up = live.alive(&node);
                    repl.on_peer(&node, is_up, position, now_ms())
                }
                Some(m) = presence.recv() => {
                    let node = Topics::last_level(&m.topic).to_owned();
                    if !nodes.contains(&node) || node == me {
                        continue;
                    }
                    let is_up = m.envelope.body_as::<Presence>().is_ok_and(|p| p.state == PresenceState::Up);
                    match live.on_presence(&node, is_up, now_ms()) {
                        Some(alive) => repl.on_peer(&node, alive, None, now_ms()),
                        None => continue,
                    }
                }
                Some(c) = control_rx.recv() => match c {
                    Control::Lost(replica, done) => {
                        let acts = repl.replica_lost(&replica);
                        match acts.iter().find_map(|a| match a { Action::Announce(r) => Some(r.clone()), _ => None }) {
                            Some(r) => pending.push((r, done)),
                            None => { let _ = done.send(true); }
                        }
                        acts
                    }
                    Control::Joined(replica) => repl.replica_joined(&replica),
                },
            };
            for action in actions {
                let mut restart = || {
                    current.cancel();
                    current = CancellationToken::new();
                    replicas.set_joined(false);
                    current.clone()
                };
                match action {
                    Action::Announce(record) => {
                        // Retained, but not re-sent after a reconnect: a node
                        // that was cut off may no longer be the primary, and its
                        // old record must not overwrite the newer one.
                        let envelope = ctx.bus.envelope(&format!("{group}-primary"), serde_json::to_value(&record).unwrap_or_default());
                        if let Err(e) = ctx.bus.publish_retained(&names.record(), &envelope).await {
                            tracing::warn!(%group, error = %e, "cannot announce the primary record");
                        }
                    }
                    Action::Lead { epoch } => {
                        let stop = restart();
                        tracing::info!(%group, epoch, "leading as primary");
                        let (tx, rx) = mpsc::unbounded_channel::<Committed<S>>();
                        engine.set_mode(Mode::Primary { epoch, replicator: Some(tx) }).await;
                        inner.spawn(replicate(
                            ctx.bus.clone(), names.repl(), epoch, rx, join_rx.clone(), control_tx.clone(), engine.clone(), stop,
                        ));
                    }
                    Action::Follow { primary: p, epoch } => {
                        let stop = restart();
                        tracing::info!(%group, primary = %p, epoch, "following the primary");
                        engine.set_mode(Mode::Replica).await;
                        inner.spawn(catch_up(
                            ctx.bus.clone(), names.repl(), me.clone(), p, epoch, engine.clone(), record_rx.clone(), replicas.clone(), stop,
                        ));
                    }
                    Action::Stand { why } => {
                        restart();
                        tracing::warn!(%group, %why, "not serving");
                        engine.set_mode(Mode::Off(why)).await;
                    }
                }
            }
            *replicas.lock() = Status {
                role: repl.role().clone(),
                epoch: repl.epoch(),
                primary: repl.primary().map(str::to_owned),
                in_sync: repl
                    .record()
                    .filter(|r| r.primary == me)
                    .map(|r| r.in_sync.clone())
                    .unwrap_or_default(),
            };
        }
    });
    Ok(())
}

/// Answers a replication request.
async fn answer<S: LogStore>(
    request: ReplRequest<S::Command>,
    from: &str,
    engine: &Engine<S>,
    replicas: &Replicas,
    join_tx: &mpsc::UnboundedSender<JoinAsk>,
) -> ReplAnswer<S::Command> {
    let role = replicas.status().role;
    match request {
        ReplRequest::Append { epoch, entries } => match role {
            Role::Replica { primary, .. } if primary == from => {
                let position = engine.apply_entries(entries, epoch).await?;
                Ok(ReplReply::Position { position })
            }
            _ => Err(ReplError::Fenced(format!(
                "{from} is not the primary this node follows"
            ))),
        },
        ReplRequest::Check { lsn, epoch } => {
            let same = engine.epoch_at(lsn).await? == Some(epoch);
            Ok(ReplReply::Same { same })
        }
        ReplRequest::Fetch { after, limit } => {
            let entries = engine.fetch(after, limit.min(FETCH)).await?;
            Ok(ReplReply::Entries { entries })
        }
        ReplRequest::Join { node, lsn } => {
            if !matches!(role, Role::Primary { .. }) {
                return Err(ReplError::NotPrimary("this node is not the primary".into()));
            }
            let (tx, rx) = oneshot::channel();
            join_tx
                .send(JoinAsk {
                    node,
                    lsn,
                    reply: tx,
                })
                .map_err(|_| ReplError::NotPrimary("replication is not running".into()))?;
            let (joined, lsn) = rx
                .await
                .map_err(|_| ReplError::NotPrimary("replication stopped".into()))?;
            Ok(ReplReply::Joined { joined, lsn })
        }
    }
}

/// Primary: sends each committed batch to the in-sync replica and answers
/// the callers once it applied it (or once it is announced out of sync).
#[allow(clippy::too_many_arguments)]
async fn replicate<S: LogStore>(
    bus: Bus,
    service: String,
    epoch: u64,
    mut batches: mpsc::UnboundedReceiver<Committed<S>>,
    joins: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<JoinAsk>>>,
    control: mpsc::UnboundedSender<Control>,
    engine: Engine<S>,
    stop: CancellationToken,
) {
    let mut joins = joins.lock().await;
    let mut replica: Option<String> = None;
    // The last lsn whose callers were answered (everything up to it is
    // where a joining replica must be).
    let mut last = engine.position().lsn;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // Not the primary any more: nothing still queued is confirmed.
                while let Ok(c) = batches.try_recv() {
                    c.fail("this node stopped being the primary; the write is not confirmed");
                }
                return;
            }
            Some(ask) = joins.recv() => {
                let joined = ask.lsn >= last;
                if joined {
                    tracing::info!(%service, replica = %ask.node, lsn = ask.lsn, "replica in sync");
                    replica = Some(ask.node.clone());
                    let _ = control.send(Control::Joined(ask.node));
                }
                let _ = ask.reply.send((joined, last));
            }
            Some(mut batch) = batches.recv() => {
                // Everything committed meanwhile goes in the same append.
                while batch.entries.len() < MAX_APPEND {
                    match batches.try_recv() {
                        Ok(more) => batch.merge(more),
                        Err(_) => break,
                    }
                }
                let lsn = batch.entries.last().map(|e| e.lsn).unwrap_or(last);
                if let Some(r) = replica.clone() {
                    let applied = match send_entries::<S>(&bus, &service, &r, epoch, &batch.entries).await {
                        Sent::Applied => true,
                        Sent::Fenced(why) => {
                            // A newer primary exists: these writes are not ours to confirm.
                            tracing::warn!(%service, %why, "fenced by the replica");
                            batch.fail("fenced: another node is the primary now");
                            continue;
                        }
                        Sent::Missed => false,
                    };
                    if !applied {
                        tracing::warn!(%service, replica = %r, "the replica missed a batch; dropping it from in-sync");
                        let (tx, rx) = oneshot::channel();
                        let _ = control.send(Control::Lost(r, tx));
                        let seen = tokio::time::timeout(Duration::from_secs(3), rx).await;
                        if !matches!(seen, Ok(Ok(true))) {
                            batch.fail("cannot confirm the replica's state with the broker; the write is not confirmed");
                            continue;
                        }
                        replica = None;
                    }
                }
                last = lsn;
                batch.confirm();
            }
        }
    }
}

/// How an append went.
enum Sent {
    Applied,
    Missed,
    Fenced(String),
}

/// Sends `entries` to `replica` in appends that fit a bus message.
async fn send_entries<S: LogStore>(
    bus: &Bus,
    service: &str,
    replica: &str,
    epoch: u64,
    entries: &[Entry<S::Command>],
) -> Sent {
    for chunk in chunks(entries, APPEND_BYTES, S::json_len) {
        let want = chunk.last().map(|e| e.lsn).unwrap_or(0);
        let request = ReplRequest::Append {
            epoch,
            entries: chunk.to_vec(),
        };
        let sent = bus
            .request(service, replica, "append", &request, APPEND_TIMEOUT)
            .await;
        match sent.map(|reply| reply.body_as::<ReplAnswer<S::Command>>()) {
            Ok(Ok(Ok(ReplReply::Position { position }))) if position.lsn >= want => {}
            Ok(Ok(Err(ReplError::Fenced(why)))) => return Sent::Fenced(why),
            _ => return Sent::Missed,
        }
    }
    Sent::Applied
}

/// `entries` cut into runs whose JSON (bounded by `len`) stays under
/// `max_bytes` (a run of one may be larger: every entry goes somewhere).
fn chunks<C>(entries: &[Entry<C>], max_bytes: usize, len: fn(&C) -> usize) -> Vec<&[Entry<C>]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let n = len(&e.command);
        if i > start && size + n > max_bytes {
            out.push(&entries[start..i]);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

/// Replica: catch up from `primary`, join, and re-join whenever the
/// primary's record says we fell out of sync.
#[allow(clippy::too_many_arguments)]
async fn catch_up<S: LogStore>(
    bus: Bus,
    service: String,
    me: String,
    primary: String,
    epoch: u64,
    engine: Engine<S>,
    mut record: watch::Receiver<Option<PrimaryRecord>>,
    replicas: Replicas,
    stop: CancellationToken,
) {
    let ask = |r: ReplRequest<S::Command>| {
        let (bus, primary, service) = (bus.clone(), primary.clone(), service.clone());
        async move {
            let reply = bus
                .request(&service, &primary, "repl", &r, Duration::from_secs(5))
                .await
                .map_err(|e| ReplError::NotPrimary(e.to_string()))?;
            reply
                .body_as::<ReplAnswer<S::Command>>()
                .map_err(|e| ReplError::Storage(e.to_string()))?
        }
    };
    loop {
        if stop.is_cancelled() {
            return;
        }
        let step = async {
            // 1. Same history? Else start over from the primary's log.
            let here = engine.position();
            if here.lsn > 0 {
                let same = match ask(ReplRequest::Check {
                    lsn: here.lsn,
                    epoch: here.epoch,
                })
                .await?
                {
                    ReplReply::Same { same } => same,
                    _ => false,
                };
                if !same {
                    tracing::warn!(
                        %service,
                        lsn = here.lsn,
                        "this replica's log diverged from the primary's; starting over"
                    );
                    engine.reset().await?;
                }
            }
            // 2. Pull until nothing is left, then ask to join.
            loop {
                let after = engine.position().lsn;
                let entries = match ask(ReplRequest::Fetch {
                    after,
                    limit: FETCH,
                })
                .await?
                {
                    ReplReply::Entries { entries } => entries,
                    _ => Vec::new(),
                };
                if entries.is_empty() {
                    let lsn = engine.position().lsn;
                    if let ReplReply::Joined { joined: true, .. } = ask(ReplRequest::Join {
                        node: me.clone(),
                        lsn,
                    })
                    .await?
                    {
                        return Ok::<(), ReplError>(());
                    }
                    continue;
                }
                let batch_epoch = entries.last().map(|e| e.epoch).unwrap_or(epoch).max(epoch);
                engine.apply_entries(entries, batch_epoch).await?;
            }
        };
        let result = tokio::select! {
            r = step => r,
            _ = stop.cancelled() => return,
        };
        match result {
            Ok(()) => {
                tracing::info!(%service, %primary, lsn = engine.position().lsn, "replica caught up and joined");
                // In sync once the primary's record lists us (a record from
                // before the join may arrive after it: that is no drop); out
                // of sync when a later record leaves us out, then redo.
                let mut confirmed = false;
                loop {
                    let listed = record
                        .borrow_and_update()
                        .as_ref()
                        .and_then(|r| (r.primary == primary).then(|| r.in_sync.contains(&me)));
                    match listed {
                        Some(true) if !confirmed => {
                            confirmed = true;
                            replicas.set_joined(true);
                        }
                        Some(false) if confirmed => {
                            replicas.set_joined(false);
                            tracing::warn!(%service, "dropped from in-sync; catching up again");
                            break;
                        }
                        _ => {}
                    }
                    let wait = if confirmed {
                        Duration::MAX
                    } else {
                        JOIN_CONFIRM
                    };
                    tokio::select! {
                        changed = record.changed() => if changed.is_err() { return },
                        _ = tokio::time::sleep(wait) => {
                            tracing::warn!(%service, "the primary never listed this replica in sync; catching up again");
                            break;
                        }
                        _ = stop.cancelled() => return,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%service, error = %e, "catch-up failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(lsn: u64, body_len: usize) -> Entry<String> {
        Entry {
            lsn,
            epoch: 1,
            command: "\u{1}".repeat(body_len),
        }
    }

    /// A bound like the stores': fixed part plus 6 bytes per escaped char.
    #[allow(clippy::ptr_arg)] // it is a `fn(&C) -> usize` with C = String
    fn len(c: &String) -> usize {
        64 + 6 * c.len()
    }

    #[test]
    fn appends_are_cut_to_fit_a_bus_message() {
        let small: Vec<Entry<String>> = (1..=100).map(|i| entry(i, 100)).collect();
        assert_eq!(
            chunks(&small, APPEND_BYTES, len).len(),
            1,
            "small ones go together"
        );
        let big: Vec<Entry<String>> = (1..=5).map(|i| entry(i, 512 * 1024)).collect();
        let cut = chunks(&big, APPEND_BYTES, len);
        assert_eq!(cut.len(), 5, "one large entry per append");
        let lsns: Vec<u64> = cut.concat().iter().map(|e| e.lsn).collect();
        assert_eq!(lsns, [1, 2, 3, 4, 5], "all of them, in order");
        for chunk in cut {
            let json = serde_json::to_vec(&ReplRequest::Append {
                epoch: 1,
                entries: chunk.to_vec(),
            })
            .unwrap();
            assert!(json.len() < crate::bus::MAX_PAYLOAD, "{} bytes", json.len());
        }
        assert!(chunks::<String>(&[], APPEND_BYTES, len).is_empty());
    }

    #[test]
    fn a_peer_is_down_when_its_presence_says_so_or_its_heartbeats_stop() {
        let mut l = Liveness::new(1000);
        assert_eq!(l.on_heartbeat("b", 0), None, "unknown until its presence");
        assert_eq!(l.on_presence("b", true, 0), Some(true));
        assert_eq!(l.on_heartbeat("b", 500), None, "no change");
        for t in [250, 500, 750, 1000, 1250] {
            assert!(l.tick(t).is_empty());
        }
        assert!(l.tick(1400).is_empty(), "heard 900 ms ago");
        assert_eq!(
            l.tick(1600),
            vec![("b".to_owned(), false)],
            "silent 1.1 s: paused"
        );
        assert!(!l.alive("b"));
        assert!(l.tick(1700).is_empty(), "reported once");
        assert_eq!(l.on_heartbeat("b", 1800), Some(true), "it resumed");
        assert_eq!(l.on_presence("b", false, 1900), Some(false), "its will");
        assert_eq!(
            l.on_heartbeat("b", 1950),
            None,
            "a late heartbeat does not revive it"
        );
        // Back up after a restart: a full period before it can be silent.
        assert_eq!(l.on_presence("b", true, 5000), Some(true));
        assert!(
            l.tick(5200).is_empty(),
            "after our own long stall: no verdict"
        );
        assert!(l.tick(5900).is_empty());
        // We stall (paused ourselves) 10 s: b's silence is not b's fault.
        assert!(l.tick(15_900).is_empty());
        assert!(l.alive("b"));
        for t in [16_100, 16_350, 16_600, 16_850] {
            assert!(l.tick(t).is_empty());
        }
        assert_eq!(l.tick(17_000), vec![("b".to_owned(), false)], "now it is b");
    }

    #[test]
    fn errors_cross_the_wire_with_their_kind() {
        let fenced: ReplAnswer<String> = Err(ReplError::Fenced("old".into()));
        let back: ReplAnswer<String> =
            serde_json::from_str(&serde_json::to_string(&fenced).unwrap()).unwrap();
        assert!(matches!(back, Err(ReplError::Fenced(w)) if w == "old"));
    }
}
