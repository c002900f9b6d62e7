//! The `lockers` role: a member of the raft group `lockers` (SQLite in its
//! data dir), serving `rpc/lockers/<node>`. The leader consumes the take
//! and free queues; for each batch it commits the answers to the group
//! (one conditional update per take, in log order, so a locker goes to
//! one user), publishes them on `locker_replies`, and only then acks the
//! requests: a crash anywhere in between delivers them again, and a
//! request answered before gets the same answer again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::link::MomLink;
use super::model::{
    FREE_QUEUE, LockerError, LockerRequest, LockersCommand, REPLY_QUEUE, TAKE_QUEUE,
};
use super::sql::SqlLockers;
use super::state::LockerTable;
use super::wire::{LockersAnswer, LockersReply, LockersRequest, LockersStats};
use crate::config::Role;
use crate::envelope::now_ms;
use crate::replica::{Engine, Replicas};
use crate::runtime::{Counters, NodeContext, serve_rpc};
use crate::services::StartError;
use crate::services::mom::model::Delivery;

#[derive(Clone)]
struct Keeper {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: NodeContext,
    engine: Engine<SqlLockers>,
    replicas: Replicas,
    link: Arc<MomLink>,
    handled: AtomicU64,
    malformed: AtomicU64,
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let count = ctx.config.lockers.count;
    let store = SqlLockers::open(&ctx.dir.join("lockers.db"), count)?;
    let nodes = ctx.config.nodes_with(Role::Lockers);
    let (engine, replicas) =
        crate::replica::shell::start(&ctx, tasks, "lockers", nodes, store).await?;
    let keeper = Keeper {
        inner: Arc::new(Inner {
            link: Arc::new(MomLink::new(&ctx)?),
            ctx: ctx.clone(),
            engine,
            replicas,
            handled: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }),
    };
    for queue in [TAKE_QUEUE, FREE_QUEUE] {
        let acks = keeper.inner.link.acker(tasks, ctx.shutdown.clone());
        // Consuming, committing and publishing overlap: a batch is
        // committed while the next is consumed, published while the next
        // is committed.
        let (batches, rx) = tokio::sync::mpsc::channel(4);
        let leading = keeper.clone();
        tasks.spawn(keeper.inner.link.clone().feed(
            queue,
            move || leading.leading(),
            ctx.shutdown.clone(),
            batches,
        ));
        tasks.spawn(keeper.clone().answer_loop(queue, rx, acks, tasks.clone()));
    }
    tasks.spawn(keeper.clone().telemetry_loop());
    serve_rpc(
        &ctx,
        tasks,
        "lockers",
        Counters::default(),
        LockerError::BadRequest,
        move |request: LockersRequest, _| {
            let keeper = keeper.clone();
            async move { keeper.call(request).await }
        },
    )
    .await?;
    Ok(())
}

impl Keeper {
    async fn call(&self, request: LockersRequest) -> LockersAnswer {
        match request {
            LockersRequest::List => Ok(LockersReply::Lockers {
                lockers: self.inner.engine.read_current(|s| s.lockers()).await?,
            }),
        }
    }

    fn leading(&self) -> bool {
        self.inner.replicas.leader().as_deref() == Some(self.inner.ctx.id())
    }

    /// Commits each batch's answers, in the order consumed; then publishes
    /// them (up to four batches at once, so replies may go out in another
    /// order: harmless, a user has one request in flight) and acks the batch (a batch not committed or not published is
    /// not acked: it comes again after the MOM's visibility time, or sooner
    /// resent by the users, and is answered once).
    async fn answer_loop(
        self,
        queue: &'static str,
        mut batches: mpsc::Receiver<Vec<Delivery>>,
        acks: mpsc::UnboundedSender<Vec<u64>>,
        tasks: TaskTracker,
    ) {
        let publishing = Arc::new(tokio::sync::Semaphore::new(4));
        while let Some(deliveries) = batches.recv().await {
            let ids: Vec<u64> = deliveries.iter().map(|d| d.id).collect();
            let mut requests = Vec::with_capacity(deliveries.len());
            for d in &deliveries {
                match serde_json::from_str::<LockerRequest>(&d.body) {
                    Ok(r) => requests.push(r),
                    Err(e) => {
                        self.inner.malformed.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, queue, body = %d.body, "not a locker request; dropped");
                    }
                }
            }
            if requests.is_empty() {
                let _ = acks.send(ids);
                continue;
            }
            let n = requests.len() as u64;
            let command = LockersCommand::Handle {
                requests,
                now_ms: now_ms(),
            };
            let replies = match self.inner.engine.apply(command).await {
                Ok(replies) => replies,
                Err(e) => {
                    tracing::warn!(error = %e, queue, "requests not committed");
                    continue;
                }
            };
            let Ok(permit) = publishing.clone().acquire_owned().await else {
                return;
            };
            let (keeper, acks) = (self.clone(), acks.clone());
            tasks.spawn(async move {
                let _permit = permit;
                let messages = replies
                    .iter()
                    .map(|r| serde_json::to_string(r).expect("a reply serializes"))
                    .collect();
                match keeper.inner.link.publish(REPLY_QUEUE, messages).await {
                    Ok(()) => {
                        keeper.inner.handled.fetch_add(n, Ordering::Relaxed);
                        let _ = acks.send(ids);
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "answers committed but not published (they go out on redelivery)"
                    ),
                }
            });
        }
    }

    async fn telemetry_loop(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.inner.ctx.shutdown.cancelled() => return,
            }
            let Ok(lockers) = self.inner.engine.read(|s| s.lockers()).await else {
                continue;
            };
            let stats = LockersStats {
                raft: self.inner.replicas.status(),
                lockers,
                handled: self.inner.handled.load(Ordering::Relaxed),
                malformed: self.inner.malformed.load(Ordering::Relaxed),
                mom: self.inner.link.status(),
            };
            self.inner.ctx.telemetry("lockers", &stats);
        }
    }
}
