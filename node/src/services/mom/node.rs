//! The `mom` role: the engine on `<data>/mom.db`, HTTP (seed API and
//! `/api/v1`) on `[mom] http`, MQTT RPC on `rpc/mom/<node>`, and raft
//! replication between the lab's `mom` nodes (group `mom`, see
//! [`crate::replica`]); a node that does not lead forwards requests to the
//! leader.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

use super::engine::Engine;
use super::model::{ChannelInfo, MomError};
use super::service::{FORWARDED, Mom, Reply, Route, Sealed};
use super::sql::SqlStore;
use crate::config::Role;
use crate::envelope::now_ms;
use crate::replica::{GroupStatus, Replicas};
use crate::runtime::{Counters, NodeContext, serve_rpc};
use crate::services::StartError;

/// Body of the retained `mom/http/<node>`: where a MOM node serves HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MomHttp {
    pub node: String,
    pub addr: SocketAddr,
    /// The `mom-gateway` (the address clients use), not a replica.
    #[serde(default)]
    pub gateway: bool,
}

/// What a MOM node reports on `telemetry/<node>/mom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MomStats {
    /// Where it serves (none before it listens).
    pub http: Option<SocketAddr>,
    pub channels: Vec<ChannelInfo>,
    /// Requests answered (all kinds) and failed, since start.
    pub requests: u64,
    pub failed: u64,
    /// This node's place in the MOM's raft group.
    #[serde(default)]
    pub raft: GroupStatus,
    /// Consumes waiting on this node for a first message right now.
    #[serde(default)]
    pub waiting: usize,
}

/// The answer body of `rpc/mom/<node>`.
pub type RpcAnswer = Result<Reply, MomError>;

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let settings = ctx.config.mom.clone();
    let store = SqlStore::open(&ctx.dir.join("mom.db"))?;
    let me = ctx.id().to_owned();
    let (engine, replicas): (Engine, Replicas) =
        crate::replica::shell::start(&ctx, tasks, "mom", ctx.config.nodes_with(Role::Mom), store)
            .await?;
    let mom = Mom::new(engine.clone(), settings.clone()).with_route(Route {
        bus: ctx.bus.clone(),
        me: me.clone(),
        replicas: replicas.clone(),
    });

    let bound = serve_http(&ctx, tasks, &mom).await?;
    let stats = Arc::new(Mutex::new(MomStats {
        http: Some(bound),
        ..Default::default()
    }));
    let counters = Counters::default();
    spawn_telemetry(&ctx, tasks, &mom, &replicas, stats, counters.clone());

    // Client requests over MQTT; a forwarded request runs here (never
    // forwarded twice).
    serve_rpc(
        &ctx,
        tasks,
        "mom",
        counters,
        MomError::BadRequest,
        // Sealed: ids in place of keys (no key crosses the bus).
        move |request: Sealed, envelope| {
            let mom = mom.clone();
            async move {
                if envelope.kind == FORWARDED {
                    mom.call_here(request).await
                } else {
                    mom.call_sealed(request).await
                }
            }
        },
    )
    .await?;
    Ok(())
}

async fn serve_http(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    mom: &Mom,
) -> Result<SocketAddr, StartError> {
    // With a gateway in the lab, `[mom] http` is the gateway's: each replica
    // serves on a free port of the same host (announced below; tests and
    // benchmarks use it), so no replica takes the clients' address.
    let mut addr = ctx.config.mom.http;
    if !ctx.config.nodes_with(Role::MomGateway).is_empty() {
        addr.set_port(0);
    }
    let (listener, bound) = crate::runtime::bind_http("mom.http", addr).await?;
    tracing::info!(http = %bound, "MOM serving HTTP");
    let topics = ctx.bus.topics();
    ctx.announce(
        &topics.service("mom", &format!("http/{}", ctx.id())),
        "mom-http",
        &MomHttp {
            node: ctx.id().to_owned(),
            addr: bound,
            gateway: false,
        },
    )
    .await?;
    let app = super::http::router(super::http::Front::Node(mom.clone()));
    crate::runtime::spawn_http(ctx, tasks, listener, app, "MOM");
    Ok(bound)
}

fn spawn_telemetry(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    mom: &Mom,
    replicas: &Replicas,
    stats: Arc<Mutex<MomStats>>,
    counters: Counters,
) {
    // The channel table is read off the telemetry closure (it needs the engine).
    let (lister, table, stop) = (mom.clone(), stats.clone(), ctx.shutdown.clone());
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            if let Ok(list) = lister.engine().list_local(None, now_ms()).await {
                table.lock().channels = list;
            }
        }
    });
    let (replicas, mom) = (replicas.clone(), mom.clone());
    ctx.spawn_telemetry(tasks, "mom", Duration::from_millis(500), move || {
        let mut s = stats.lock().clone();
        (s.requests, s.failed) = counters.get();
        s.raft = replicas.status();
        s.waiting = mom.waiting();
        s
    });
}
