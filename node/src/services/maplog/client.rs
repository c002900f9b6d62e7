//! The map's client: follows the view (retained on `maplog/view`),
//! computes the partition table from it, sends each operation over MQTT RPC
//! to the partition's owner, and tries again (following a newer view a
//! member names, or after a pause) until the deadline.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::model::{BATCH_MAX, MapAnswer, MapBatch, MapError, MapRequest};
use super::table::{Table, View, partition_of};
use crate::bus::{Bus, BusError};

/// RPC service of the members (`rpc/maplog/<node>`).
pub const SERVICE: &str = "maplog";
/// One way, member to member (`rpc/maplog-peer/<node>`).
pub const PEER_SERVICE: &str = "maplog-peer";
/// Many operations at once (`rpc/maplog-batch/<node>`): [`MapBatch`].
pub const BATCH_SERVICE: &str = "maplog-batch";

/// Batches one owner may have in flight at once; what comes meanwhile
/// waits and goes together in the next.
const IN_FLIGHT: usize = 4;
/// About how many bytes of keys and values one batch carries at most.
const BATCH_BYTES: usize = 1 << 20;

/// An operation waiting for its owner's next batch, and where its answer goes.
type Queued = (MapRequest, oneshot::Sender<Result<MapAnswer, String>>);

/// Where the master publishes the view.
pub fn view_topic(bus: &Bus) -> String {
    bus.topics().service("maplog", "view")
}

/// The latest view and its table.
#[derive(Clone)]
struct Current {
    view: View,
    table: Arc<Table>,
}

#[derive(Clone)]
pub struct MapClient {
    bus: Bus,
    partitions: u32,
    backup_count: usize,
    deadline: Duration,
    current: Arc<Mutex<Option<Current>>>,
    changed: watch::Sender<u64>,
    /// One batcher per owner asked lately.
    owners: Arc<Mutex<HashMap<String, mpsc::Sender<Queued>>>>,
}

impl MapClient {
    /// Starts following the view (a task on `tasks` until `stop`).
    pub async fn start(
        bus: Bus,
        partitions: u32,
        backup_count: usize,
        deadline: Duration,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> Result<MapClient, BusError> {
        let mut views = bus.subscribe(&view_topic(&bus)).await?;
        let client = MapClient {
            bus,
            partitions,
            backup_count,
            deadline,
            current: Arc::default(),
            changed: watch::channel(0).0,
            owners: Arc::default(),
        };
        let follower = client.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    m = views.recv() => match m {
                        None => return,
                        Some(m) => match m.envelope.body_as::<View>() {
                            Ok(v) => follower.follow(v),
                            Err(e) => tracing::debug!(error = %e, "malformed map view ignored"),
                        },
                    },
                }
            }
        });
        Ok(client)
    }

    /// Takes `view` if it is newer than the one it has.
    pub fn follow(&self, view: View) {
        let mut cur = self.current.lock();
        if cur.as_ref().is_some_and(|c| c.view.order() >= view.order()) {
            return;
        }
        let table = Table::compute(&view.nodes(), self.partitions, self.backup_count);
        *cur = Some(Current {
            view,
            table: Arc::new(table),
        });
        drop(cur);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub fn view(&self) -> Option<View> {
        self.current.lock().as_ref().map(|c| c.view.clone())
    }

    pub fn table(&self) -> Option<Arc<Table>> {
        self.current.lock().as_ref().map(|c| c.table.clone())
    }

    /// Waits up to `wait` for the first view.
    pub async fn wait_view(&self, wait: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let ready = rx.wait_for(|_| self.current.lock().is_some());
        tokio::time::timeout(wait, ready)
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stores `value` under `key`; Ok once the owner and its backups hold it.
    pub async fn put(&self, key: &str, value: &str) -> Result<(), MapError> {
        let request = MapRequest::Put {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        match self.to_owner(key, request).await? {
            MapAnswer::Stored => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, MapError> {
        let request = MapRequest::Get {
            key: key.to_owned(),
        };
        match self.to_owner(key, request).await? {
            MapAnswer::Value { value } => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// Every entry of the map: each member's owned partitions, all read at
    /// the same epoch, by key order within a partition's version order.
    pub async fn entries(&self) -> Result<Vec<(String, String)>, MapError> {
        let until = tokio::time::Instant::now() + self.deadline;
        let mut pause = Duration::from_millis(10);
        loop {
            let why = match self.scan_once().await {
                Ok(entries) => return Ok(entries),
                Err(why) => why,
            };
            if tokio::time::Instant::now() + pause >= until {
                return Err(MapError::Unavailable(why));
            }
            self.pause(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The values of [`MapClient::entries`].
    pub async fn values(&self) -> Result<Vec<String>, MapError> {
        Ok(self.entries().await?.into_iter().map(|(_, v)| v).collect())
    }

    async fn scan_once(&self) -> Result<Vec<(String, String)>, String> {
        let Some(cur) = self.current.lock().clone() else {
            return Err("no map view yet (are the loggers up?)".into());
        };
        let epoch = cur.view.epoch;
        let mut asks = tokio::task::JoinSet::new();
        for node in cur.view.nodes() {
            let me = self.clone();
            asks.spawn(async move {
                let answer = me.ask(&node, &MapRequest::Scan { epoch }).await;
                (node, answer)
            });
        }
        let mut all = Vec::new();
        while let Some(done) = asks.join_next().await {
            let (node, answer) = done.map_err(|e| e.to_string())?;
            match answer {
                Ok(MapAnswer::Scanned { entries, .. }) => all.extend(entries),
                Ok(MapAnswer::Retry { reason, view }) => {
                    if let Some(v) = view {
                        self.follow(v);
                    }
                    return Err(format!("{node}: {reason}"));
                }
                Ok(other) => return Err(format!("{node}: {other:?}")),
                Err(e) => return Err(format!("{node}: {e}")),
            }
        }
        Ok(all)
    }

    async fn pause(&self, pause: Duration) {
        // A new view ends the pause early.
        let mut rx = self.changed.subscribe();
        rx.mark_unchanged();
        let _ = tokio::time::timeout(pause, rx.changed()).await;
    }

    /// Sends `request` to the owner of `key`'s partition until it is
    /// answered for good or the deadline passes.
    async fn to_owner(&self, key: &str, request: MapRequest) -> Result<MapAnswer, MapError> {
        let until = tokio::time::Instant::now() + self.deadline;
        let p = partition_of(key, self.partitions);
        let mut pause = Duration::from_millis(5);
        loop {
            let owner = self
                .current
                .lock()
                .as_ref()
                .and_then(|c| c.table.owner(p).map(str::to_owned));
            let why = match owner {
                None => "no map view yet (are the loggers up?)".to_owned(),
                Some(owner) => match self.ask_batched(&owner, request.clone()).await {
                    Ok(MapAnswer::Retry { reason, view }) => {
                        if let Some(v) = view {
                            self.follow(v);
                        }
                        format!("{owner}: {reason}")
                    }
                    Ok(MapAnswer::Invalid { reason }) => return Err(MapError::BadRequest(reason)),
                    Ok(answer) => return Ok(answer),
                    Err(e) => format!("{owner}: {e}"),
                },
            };
            if tokio::time::Instant::now() + pause >= until {
                return Err(MapError::Unavailable(why));
            }
            self.pause(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    async fn ask(&self, node: &str, request: &MapRequest) -> Result<MapAnswer, String> {
        ask(
            &self.bus,
            &self.changed,
            self.deadline,
            SERVICE,
            node,
            request,
        )
        .await
    }

    /// Asks `node` through its batcher: `request` goes with the others
    /// waiting for that node.
    async fn ask_batched(&self, node: &str, request: MapRequest) -> Result<MapAnswer, String> {
        let (tx, rx) = oneshot::channel();
        let mut queued = (request, tx);
        for _ in 0..2 {
            let batcher = self
                .owners
                .lock()
                .entry(node.to_owned())
                .or_insert_with(|| self.batcher(node))
                .clone();
            match batcher.send(queued).await {
                Ok(()) => return rx.await.map_err(|_| "the batcher stopped".to_owned())?,
                // Its task ended (a runtime gone): a new one.
                Err(mpsc::error::SendError(back)) => {
                    queued = back;
                    self.owners.lock().remove(node);
                }
            }
        }
        Err("cannot start a batcher".into())
    }

    /// A task that sends what waits for `node` in batches, up to
    /// [`IN_FLIGHT`] at once; it ends when the client is dropped.
    fn batcher(&self, node: &str) -> mpsc::Sender<Queued> {
        let (tx, mut rx) = mpsc::channel::<Queued>(BATCH_MAX * IN_FLIGHT);
        let (bus, changed, deadline) = (self.bus.clone(), self.changed.clone(), self.deadline);
        let node = node.to_owned();
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else { return };
                let mut bytes = size(&first.0);
                let mut batch = vec![first];
                while batch.len() < BATCH_MAX && bytes < BATCH_BYTES {
                    let Ok(next) = rx.try_recv() else { break };
                    bytes += size(&next.0);
                    batch.push(next);
                }
                let (bus, changed, node) = (bus.clone(), changed.clone(), node.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    let (ops, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                    let n = ops.len();
                    let got = ask(
                        &bus,
                        &changed,
                        deadline,
                        BATCH_SERVICE,
                        &node,
                        &MapBatch { ops },
                    )
                    .await
                    .and_then(|a: Vec<MapAnswer>| {
                        if a.len() == n {
                            Ok(a)
                        } else {
                            Err(format!("{n} asked, {} answered", a.len()))
                        }
                    });
                    match got {
                        Ok(got) => {
                            for (tx, a) in answers.into_iter().zip(got) {
                                let _ = tx.send(Ok(a));
                            }
                        }
                        Err(e) => {
                            for tx in answers {
                                let _ = tx.send(Err(e.clone()));
                            }
                        }
                    }
                });
            }
        });
        tx
    }
}

/// About how many bytes `op` takes in a batch.
fn size(op: &MapRequest) -> usize {
    32 + match op {
        MapRequest::Put { key, value } => key.len() + value.len(),
        MapRequest::Get { key } => key.len(),
        MapRequest::Scan { .. } | MapRequest::View => 0,
    }
}

/// Sends `request` to `service` of `node` and waits for its answer: until
/// a put could have waited for its backups, or a new view (the node may be
/// gone, or not the owner any more).
async fn ask<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    bus: &Bus,
    changed: &watch::Sender<u64>,
    deadline: Duration,
    service: &str,
    node: &str,
    request: &Q,
) -> Result<A, String> {
    let wait = Duration::from_millis(super::member::PUT_TIMEOUT_MS + 1000).min(deadline);
    let mut changed = changed.subscribe();
    changed.mark_unchanged();
    let reply = tokio::select! {
        r = bus.request(service, node, "maplog", request, wait) => r.map_err(|e| e.to_string())?,
        _ = changed.changed() => return Err("the view changed while waiting".into()),
    };
    match reply.body_as::<Result<A, String>>() {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(format!("malformed answer: {e}")),
    }
}

fn unexpected(a: MapAnswer) -> MapError {
    MapError::Unavailable(format!("unexpected answer {a:?}"))
}
