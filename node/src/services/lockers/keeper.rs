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

#[derive(Clone)]
struct Keeper {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: NodeContext,
    engine: Engine<SqlLockers>,
    replicas: Replicas,
    link: MomLink,
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
            link: MomLink::new(&ctx)?,
            ctx: ctx.clone(),
            engine,
            replicas,
            handled: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }),
    };
    for queue in [TAKE_QUEUE, FREE_QUEUE] {
        tasks.spawn(keeper.clone().consume_loop(queue));
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

    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.inner.ctx.shutdown.cancelled() => false,
        }
    }

    /// On the leader: answers the requests on `queue`.
    async fn consume_loop(self, queue: &'static str) {
        loop {
            if self.inner.ctx.shutdown.is_cancelled() {
                return;
            }
            if !self.leading() {
                if !self.pause(Duration::from_millis(200)).await {
                    return;
                }
                continue;
            }
            let consumed = tokio::select! {
                c = self.inner.link.consume(queue, 500, 1000) => c,
                _ = self.inner.ctx.shutdown.cancelled() => return,
            };
            let deliveries = match consumed {
                Ok(d) => d,
                Err(e) => {
                    tracing::debug!(error = %e, queue, "cannot consume requests");
                    if !self.pause(Duration::from_millis(500)).await {
                        return;
                    }
                    continue;
                }
            };
            if deliveries.is_empty() {
                continue;
            }
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
            if !requests.is_empty() && !self.answer(requests).await {
                // Not acked: they come again after the MOM's visibility
                // time (or sooner, resent by the users), answered once.
                continue;
            }
            let ids: Vec<u64> = deliveries.iter().map(|d| d.id).collect();
            if let Err(e) = self.inner.link.ack(&ids).await {
                tracing::debug!(error = %e, queue, "requests answered but not acked (they come again)");
            }
        }
    }

    /// Commits the answers to `requests`, then publishes them; false if
    /// either failed.
    async fn answer(&self, requests: Vec<LockerRequest>) -> bool {
        let n = requests.len() as u64;
        let command = LockersCommand::Handle {
            requests,
            now_ms: now_ms(),
        };
        let replies = match self.inner.engine.apply(command).await {
            Ok(replies) => replies,
            Err(e) => {
                tracing::warn!(error = %e, "requests not committed");
                return false;
            }
        };
        let messages = replies
            .iter()
            .map(|r| serde_json::to_string(r).expect("a reply serializes"))
            .collect();
        if let Err(e) = self.inner.link.publish(REPLY_QUEUE, messages).await {
            tracing::warn!(error = %e, "answers committed but not published (they go out on redelivery)");
            return false;
        }
        self.inner.handled.fetch_add(n, Ordering::Relaxed);
        true
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
