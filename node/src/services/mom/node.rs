//! The `mom` role: the engine on `<data>/mom.db`, HTTP (seed API and
//! `/api/v1`) on `[mom] http`, MQTT RPC on `rpc/mom/<node>`, and primary /
//! replica replication between the lab's `mom` nodes:
//!
//! - the [`Replication`] state machine decides who leads (retained
//!   `mom/primary`, presence, retained `mom/state/<node>` positions);
//! - the primary's replicator sends every committed batch to the in-sync
//!   replica (`rpc/mom-repl/<replica>` `append`) and answers the callers only
//!   once the replica has applied it; a replica that does not answer is
//!   dropped from `in_sync` (announced and seen back on the broker first);
//! - a replica catches up by pulling the primary's log (`check`, `fetch`),
//!   then asks to `join`; a replica whose log diverged starts over;
//! - a node that is not the primary forwards requests to it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::engine::{Committed, Engine, Mode};
use super::model::{ChannelInfo, MomError};
use super::replication::{Action, MomRole, Position, PrimaryRecord, Replication};
use super::service::{FORWARDED, Mom, Reply, Request, Route};
use super::sql::{Entry, SqlStore};
use crate::bus::Bus;
use crate::config::Role;
use crate::envelope::{Topics, now_ms};
use crate::presence::{Presence, PresenceState};
use crate::runtime::NodeContext;
use crate::services::StartError;

/// How long a node listens for the record and its peers before a fresh
/// cluster elects.
const GRACE_MS: u64 = 1500;
/// How long the primary waits for the replica to apply a batch.
const APPEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Entries per catch-up fetch.
const FETCH: usize = 2000;
/// Entries per append at most (merged from the batches waiting).
const MAX_APPEND: usize = 4000;
/// JSON per append message at most (estimated high; see `Command::max_json_len`).
const APPEND_BYTES: usize = crate::bus::MAX_PAYLOAD / 2;

/// Body of the retained `mom/http/<node>`: where a MOM node serves HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MomHttp {
    pub node: String,
    pub addr: String,
}

/// What a MOM node reports on `telemetry/<node>/mom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MomStats {
    pub http: String,
    pub channels: Vec<ChannelInfo>,
    /// Requests answered (all kinds) and failed, since start.
    pub requests: u64,
    pub failed: u64,
    /// `primary`, `replica`, `waiting`, `starting`.
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub primary: Option<String>,
    #[serde(default)]
    pub epoch: u64,
    /// Last log position of this node.
    #[serde(default)]
    pub lsn: u64,
    /// Primary: replicas in sync.
    #[serde(default)]
    pub in_sync: Vec<String>,
    #[serde(default)]
    pub why: Option<String>,
}

/// The answer body of `rpc/mom/<node>`.
pub type RpcAnswer = Result<Reply, MomError>;

/// Requests between MOM nodes on `rpc/mom-repl/<node>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ReplRequest {
    /// Primary → replica: apply these entries of `epoch`.
    Append { epoch: u64, entries: Vec<Entry> },
    /// Replica → primary: is my entry `lsn` of `epoch` also yours?
    Check { lsn: u64, epoch: u64 },
    /// Replica → primary: entries after `lsn`.
    Fetch { after: u64, limit: usize },
    /// Replica → primary: I am at `lsn`; stream to me from now on.
    Join { node: String, lsn: u64 },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReplReply {
    Position { position: Position },
    Same { same: bool },
    Entries { entries: Vec<Entry> },
    Joined { joined: bool, lsn: u64 },
}

type ReplAnswer = Result<ReplReply, MomError>;

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

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let settings = ctx.config.mom.clone();
    let store = SqlStore::open(&ctx.dir.join("mom.db"))?;
    let engine = Engine::start(store)?;
    let me = ctx.id().to_owned();
    let topics = ctx.bus.topics().clone();
    let primary = Arc::new(Mutex::new(None::<String>));
    let mom = Mom::new(engine.clone(), settings.clone()).with_route(Route {
        bus: ctx.bus.clone(),
        me: me.clone(),
        primary: primary.clone(),
    });

    let bound = serve_http(&ctx, tasks, &mom).await?;
    let stats = Arc::new(Mutex::new(MomStats {
        http: bound.to_string(),
        role: "starting".into(),
        ..Default::default()
    }));
    let requests = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    spawn_telemetry(
        &ctx,
        tasks,
        &mom,
        &engine,
        stats.clone(),
        requests.clone(),
        failed.clone(),
    );

    // Replication plumbing.
    let nodes = ctx.config.nodes_with(Role::Mom);
    let mut repl = Replication::new(&me, nodes.clone(), engine.position(), now_ms(), GRACE_MS);
    repl.set_position(Position {
        epoch: engine.epoch_seen().max(engine.position().epoch),
        ..engine.position()
    });
    let mut records = ctx.bus.subscribe(&topics.mom("primary")).await?;
    let mut states = ctx.bus.subscribe(&topics.mom("state/+")).await?;
    let mut presence = ctx.bus.subscribe(&topics.presence_all()).await?;
    let mut repl_rpc = ctx.bus.subscribe(&topics.rpc("mom-repl", &me)).await?;
    ctx.announce(
        &topics.mom(&format!("state/{me}")),
        "mom-state",
        &engine.position(),
    )
    .await?;
    let (record_tx, record_rx) = watch::channel(None::<PrimaryRecord>);
    let (control_tx, mut control_rx) = mpsc::unbounded_channel::<Control>();
    let (join_tx, join_rx) = mpsc::unbounded_channel::<JoinAsk>();
    let join_rx = Arc::new(tokio::sync::Mutex::new(join_rx));
    let role = Arc::new(Mutex::new(MomRole::Starting));

    // Replication RPC: appends (as replica) and check/fetch/join (as primary).
    {
        let (ctx, engine, role, join_tx, inner) = (
            ctx.clone(),
            engine.clone(),
            role.clone(),
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
                let (ctx, engine, role, join_tx) =
                    (ctx.clone(), engine.clone(), role.clone(), join_tx.clone());
                inner.spawn(async move {
                    let answer: ReplAnswer = match m.envelope.body_as::<ReplRequest>() {
                        Ok(r) => repl_answer(r, &m.envelope.from, &engine, &role, &join_tx).await,
                        Err(e) => Err(MomError::BadRequest(format!(
                            "not a replication request: {e}"
                        ))),
                    };
                    let _ = ctx.bus.reply(&m.envelope, "reply", &answer).await;
                });
            }
        });
    }

    // The control loop: owns the state machine and acts on its decisions.
    {
        let ctx = ctx.clone();
        let me = me.clone();
        let inner = tasks.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            // Announced records waiting to be seen back from the broker.
            let mut pending: Vec<(PrimaryRecord, oneshot::Sender<bool>)> = Vec::new();
            // Stops the current replicator or catch-up task.
            let mut current = CancellationToken::new();
            let mut up = Vec::<String>::new();
            loop {
                let actions = tokio::select! {
                    _ = ctx.shutdown.cancelled() => { current.cancel(); return; }
                    _ = tick.tick() => {
                        pending.retain(|(_, tx)| !tx.is_closed());
                        repl.set_position(engine.position());
                        repl.tick(now_ms())
                    }
                    Some(m) = records.recv() => {
                        let record = m.envelope.body_as::<PrimaryRecord>().ok();
                        if let Some(r) = &record {
                            let _ = record_tx.send(Some(r.clone()));
                            // Resolve every waiter whose record this is.
                            let mut keep = Vec::new();
                            for (want, tx) in pending.drain(..) {
                                if &want == r { let _ = tx.send(true); } else { keep.push((want, tx)); }
                            }
                            pending = keep;
                        }
                        repl.on_record(record, now_ms())
                    }
                    Some(m) = states.recv() => {
                        let node = Topics::last_level(&m.topic).to_owned();
                        let position = m.envelope.body_as::<Position>().ok();
                        let is_up = up.contains(&node);
                        repl.on_peer(&node, is_up, position, now_ms())
                    }
                    Some(m) = presence.recv() => {
                        let node = Topics::last_level(&m.topic).to_owned();
                        if !nodes.contains(&node) || node == me {
                            continue;
                        }
                        let is_up = m.envelope.body_as::<Presence>().is_ok_and(|p| p.state == PresenceState::Up);
                        up.retain(|n| n != &node);
                        if is_up { up.push(node.clone()); }
                        repl.on_peer(&node, is_up, None, now_ms())
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
                    match action {
                        Action::Announce(record) => {
                            if let Err(e) = ctx.announce(&ctx.bus.topics().mom("primary"), "mom-primary", &record).await {
                                tracing::warn!(error = %e, "cannot announce the MOM primary record");
                            }
                        }
                        Action::Lead { epoch } => {
                            current.cancel();
                            current = CancellationToken::new();
                            tracing::info!(epoch, "MOM: leading as primary");
                            let (tx, rx) = mpsc::unbounded_channel::<Committed>();
                            engine.set_mode(Mode::Primary { epoch, replicator: Some(tx) }).await;
                            set_primary(&primary, Some(me.clone()));
                            *lock(&role) = MomRole::Primary { epoch };
                            inner.spawn(replicate(
                                ctx.bus.clone(), epoch, rx, join_rx.clone(), control_tx.clone(), engine.clone(), current.clone(),
                            ));
                        }
                        Action::Follow { primary: p, epoch } => {
                            current.cancel();
                            current = CancellationToken::new();
                            tracing::info!(primary = %p, epoch, "MOM: following the primary");
                            engine.set_mode(Mode::Replica).await;
                            set_primary(&primary, Some(p.clone()));
                            *lock(&role) = MomRole::Replica { primary: p.clone(), epoch };
                            inner.spawn(catch_up(
                                ctx.bus.clone(), me.clone(), p, epoch, engine.clone(), record_rx.clone(), current.clone(),
                            ));
                        }
                        Action::Stand { why } => {
                            current.cancel();
                            current = CancellationToken::new();
                            tracing::warn!(%why, "MOM: not serving");
                            engine.set_mode(Mode::Off(why.clone())).await;
                            set_primary(&primary, None);
                            *lock(&role) = MomRole::Waiting { why };
                        }
                    }
                }
                let mut s = lock(&stats);
                s.epoch = repl.epoch();
                s.primary = repl.primary().map(str::to_owned);
                s.in_sync = repl.record().filter(|r| r.primary == me).map(|r| r.in_sync.clone()).unwrap_or_default();
                (s.role, s.why) = match repl.role() {
                    MomRole::Starting => ("starting".into(), None),
                    MomRole::Primary { .. } => ("primary".into(), None),
                    MomRole::Replica { .. } => ("replica".into(), None),
                    MomRole::Waiting { why } => ("waiting".into(), Some(why.clone())),
                };
            }
        });
    }

    // Client requests over MQTT.
    let mut rpc = ctx.bus.subscribe(&topics.rpc("mom", &me)).await?;
    let inner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let m = tokio::select! {
                m = rpc.recv() => m,
                _ = ctx.shutdown.cancelled() => return,
            };
            let Some(m) = m else { return };
            let (ctx, mom, requests, failed) =
                (ctx.clone(), mom.clone(), requests.clone(), failed.clone());
            inner.spawn(async move {
                let answer: RpcAnswer = match m.envelope.body_as::<Request>() {
                    Ok(request) => {
                        // A forwarded request runs here: never forward it twice.
                        let call = async {
                            if m.envelope.kind == FORWARDED {
                                mom.call_here(request).await
                            } else {
                                mom.call(request).await
                            }
                        };
                        tokio::select! {
                            a = call => a,
                            _ = ctx.shutdown.cancelled() => return,
                        }
                    }
                    Err(e) => Err(MomError::BadRequest(format!("not a MOM request: {e}"))),
                };
                requests.fetch_add(1, Ordering::Relaxed);
                if answer.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ctx.bus.reply(&m.envelope, "reply", &answer).await;
            });
        }
    });
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_primary(primary: &Mutex<Option<String>>, p: Option<String>) {
    *lock(primary) = p;
}

async fn serve_http(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    mom: &Mom,
) -> Result<SocketAddr, StartError> {
    let wanted: SocketAddr = ctx.config.mom.http.parse()?;
    let listener = match tokio::net::TcpListener::bind(wanted).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(%wanted, "MOM HTTP address in use; taking a free port");
            tokio::net::TcpListener::bind(SocketAddr::new(wanted.ip(), 0)).await?
        }
        Err(e) => return Err(format!("cannot serve HTTP on {wanted}: {e}").into()),
    };
    let bound = listener.local_addr()?;
    tracing::info!(http = %bound, "MOM serving HTTP");
    let topics = ctx.bus.topics();
    ctx.announce(
        &topics.mom(&format!("http/{}", ctx.id())),
        "mom-http",
        &MomHttp {
            node: ctx.id().to_owned(),
            addr: bound.to_string(),
        },
    )
    .await?;
    let app = super::http::router(mom.clone());
    let stop = ctx.shutdown.clone();
    tasks.spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %err, "MOM HTTP server stopped");
        }
    });
    Ok(bound)
}

fn spawn_telemetry(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    mom: &Mom,
    engine: &Engine,
    stats: Arc<Mutex<MomStats>>,
    requests: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    // The channel table is read off the telemetry closure (it needs the engine).
    let (mom, table, stop) = (mom.clone(), stats.clone(), ctx.shutdown.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Ok(list) = mom.engine().list(None, now_ms()).await {
                lock(&table).channels = list;
            }
        }
    });
    let engine = engine.clone();
    ctx.spawn_telemetry(tasks, "mom", Duration::from_millis(500), move || {
        let mut s = lock(&stats).clone();
        s.requests = requests.load(Ordering::Relaxed);
        s.failed = failed.load(Ordering::Relaxed);
        s.lsn = engine.position().lsn;
        s
    });
}

/// Answers a replication request.
async fn repl_answer(
    request: ReplRequest,
    from: &str,
    engine: &Engine,
    role: &Mutex<MomRole>,
    join_tx: &mpsc::UnboundedSender<JoinAsk>,
) -> ReplAnswer {
    let current = lock(role).clone();
    match request {
        ReplRequest::Append { epoch, entries } => match current {
            MomRole::Replica { primary, .. } if primary == from => {
                let position = engine.apply_entries(entries, epoch).await?;
                Ok(ReplReply::Position { position })
            }
            _ => Err(MomError::NotPrimary(format!(
                "fenced: {from} is not the primary this node follows"
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
            if !matches!(current, MomRole::Primary { .. }) {
                return Err(MomError::NotPrimary("this node is not the primary".into()));
            }
            let (tx, rx) = oneshot::channel();
            join_tx
                .send(JoinAsk {
                    node,
                    lsn,
                    reply: tx,
                })
                .map_err(|_| MomError::NotPrimary("replication is not running".into()))?;
            let (joined, lsn) = rx
                .await
                .map_err(|_| MomError::NotPrimary("replication stopped".into()))?;
            Ok(ReplReply::Joined { joined, lsn })
        }
    }
}

/// Primary: sends each committed batch to the in-sync replica and answers
/// the callers once it applied it (or once it is announced out of sync).
async fn replicate(
    bus: Bus,
    epoch: u64,
    mut batches: mpsc::UnboundedReceiver<Committed>,
    joins: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<JoinAsk>>>,
    control: mpsc::UnboundedSender<Control>,
    engine: Engine,
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
                    fail(c, "this node stopped being the primary; the write is not confirmed");
                }
                return;
            }
            Some(ask) = joins.recv() => {
                let joined = ask.lsn >= last;
                if joined {
                    tracing::info!(replica = %ask.node, lsn = ask.lsn, "MOM replica in sync");
                    replica = Some(ask.node.clone());
                    let _ = control.send(Control::Joined(ask.node));
                }
                let _ = ask.reply.send((joined, last));
            }
            Some(mut batch) = batches.recv() => {
                // Everything committed meanwhile goes in the same append.
                while batch.entries.len() < MAX_APPEND {
                    match batches.try_recv() {
                        Ok(more) => {
                            batch.entries.extend(more.entries);
                            batch.answers.extend(more.answers);
                        }
                        Err(_) => break,
                    }
                }
                let lsn = batch.entries.last().map(|e| e.lsn).unwrap_or(last);
                if let Some(r) = replica.clone() {
                    let applied = match send_entries(&bus, &r, epoch, &batch.entries).await {
                        Sent::Applied => true,
                        Sent::Fenced(why) => {
                            // A newer primary exists: these writes are not ours to confirm.
                            tracing::warn!(%why, "MOM: fenced by the replica");
                            fail(batch, "fenced: another node is the primary now");
                            continue;
                        }
                        Sent::Missed => false,
                    };
                    if !applied {
                        tracing::warn!(replica = %r, "MOM replica missed a batch; dropping it from in-sync");
                        let (tx, rx) = oneshot::channel();
                        let _ = control.send(Control::Lost(r, tx));
                        let seen = tokio::time::timeout(Duration::from_secs(3), rx).await;
                        if !matches!(seen, Ok(Ok(true))) {
                            fail(batch, "cannot confirm the replica's state with the broker; the write is not confirmed");
                            continue;
                        }
                        replica = None;
                    }
                }
                last = lsn;
                for (tx, outcome) in batch.answers {
                    let _ = tx.send(outcome);
                }
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
async fn send_entries(bus: &Bus, replica: &str, epoch: u64, entries: &[Entry]) -> Sent {
    for chunk in chunks(entries, APPEND_BYTES) {
        let want = chunk.last().map(|e| e.lsn).unwrap_or(0);
        let request = ReplRequest::Append {
            epoch,
            entries: chunk.to_vec(),
        };
        let t0 = std::time::Instant::now();
        let sent = bus
            .request("mom-repl", replica, "append", &request, APPEND_TIMEOUT)
            .await;
        tracing::debug!(
            entries = chunk.len(),
            ms = t0.elapsed().as_secs_f64() * 1e3,
            "append round trip"
        );
        match sent.map(|reply| reply.body_as::<ReplAnswer>()) {
            Ok(Ok(Ok(ReplReply::Position { position }))) if position.lsn >= want => {}
            Ok(Ok(Err(MomError::NotPrimary(why)))) if why.starts_with("fenced") => {
                return Sent::Fenced(why);
            }
            _ => return Sent::Missed,
        }
    }
    Sent::Applied
}

/// `entries` cut into runs whose JSON stays under `max_bytes` (a run of
/// one may be larger: every entry goes somewhere).
fn chunks(entries: &[Entry], max_bytes: usize) -> Vec<&[Entry]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let len = e.command.max_json_len();
        if i > start && size + len > max_bytes {
            out.push(&entries[start..i]);
            (start, size) = (i, 0);
        }
        size += len;
    }
    if start < entries.len() {
        out.push(&entries[start..]);
    }
    out
}

fn fail(batch: Committed, why: &str) {
    for (tx, _) in batch.answers {
        let _ = tx.send(Err(MomError::NotPrimary(why.to_owned())));
    }
}

/// Replica: catch up from `primary`, join, and re-join whenever the
/// primary's record says we fell out of sync.
async fn catch_up(
    bus: Bus,
    me: String,
    primary: String,
    epoch: u64,
    engine: Engine,
    mut record: watch::Receiver<Option<PrimaryRecord>>,
    stop: CancellationToken,
) {
    let ask = |r: ReplRequest| {
        let (bus, primary) = (bus.clone(), primary.clone());
        async move {
            let reply = bus
                .request("mom-repl", &primary, "repl", &r, Duration::from_secs(5))
                .await
                .map_err(|e| MomError::NotPrimary(e.to_string()))?;
            reply
                .body_as::<ReplAnswer>()
                .map_err(|e| MomError::Storage(e.to_string()))?
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
                        lsn = here.lsn,
                        "MOM: this replica's log diverged from the primary's; starting over"
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
                        return Ok::<(), MomError>(());
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
                tracing::info!(%primary, lsn = engine.position().lsn, "MOM: replica caught up and joined");
                // Wait until the record says we are out of sync, then redo.
                loop {
                    tokio::select! {
                        changed = record.changed() => if changed.is_err() { return },
                        _ = stop.cancelled() => return,
                    }
                    let out = record
                        .borrow()
                        .as_ref()
                        .is_some_and(|r| r.primary == primary && !r.in_sync.contains(&me));
                    if out {
                        tracing::warn!("MOM: dropped from in-sync; catching up again");
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "MOM catch-up failed; retrying");
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
    use crate::services::mom::model::{Command, Kind};

    fn entry(lsn: u64, body_len: usize) -> Entry {
        Entry {
            lsn,
            epoch: 1,
            command: Command::Publish {
                kind: Kind::Queue,
                name: "q".into(),
                body: "\u{1}".repeat(body_len),
                now_ms: 0,
            },
        }
    }

    #[test]
    fn appends_are_cut_to_fit_a_bus_message() {
        let small: Vec<Entry> = (1..=100).map(|i| entry(i, 100)).collect();
        assert_eq!(
            chunks(&small, APPEND_BYTES).len(),
            1,
            "small ones go together"
        );
        let big: Vec<Entry> = (1..=5).map(|i| entry(i, 512 * 1024)).collect();
        let cut = chunks(&big, APPEND_BYTES);
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
        assert!(chunks(&[], APPEND_BYTES).is_empty());
    }
}
