//! The `mom` role: the engine on `<data>/mom.db`, HTTP (seed API and
//! `/api/v1`) on `[mom] http`, MQTT RPC on `rpc/mom/<node>`, telemetry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

use super::engine::Engine;
use super::model::{ChannelInfo, MomError};
use super::service::{Mom, Reply, Request};
use super::sql::SqlStore;
use crate::envelope::now_ms;
use crate::runtime::NodeContext;
use crate::services::StartError;

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
}

/// The answer body of `rpc/mom/<node>`.
pub type RpcAnswer = Result<Reply, MomError>;

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let settings = ctx.config.mom.clone();
    let store = SqlStore::open(&ctx.dir.join("mom.db"))?;
    let mom = Mom::new(Engine::start_alone(store).await?, settings.clone());

    let wanted: SocketAddr = settings.http.parse()?;
    let listener = match tokio::net::TcpListener::bind(wanted).await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let any = SocketAddr::new(wanted.ip(), 0);
            tracing::warn!(%wanted, "MOM HTTP address in use; taking a free port");
            tokio::net::TcpListener::bind(any).await?
        }
        Err(e) => return Err(format!("cannot serve HTTP on {wanted}: {e}").into()),
    };
    let bound = listener.local_addr()?;
    tracing::info!(http = %bound, "MOM serving HTTP");
    let topics = ctx.bus.topics().clone();
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

    let requests = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let channels = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        // Refresh the channel table for telemetry off the telemetry closure.
        let (mom, channels, stop) = (mom.clone(), channels.clone(), ctx.shutdown.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                if let Ok(list) = mom_list(&mom).await
                    && let Ok(mut c) = channels.lock()
                {
                    *c = list;
                }
            }
        });
    }
    let (r, f, c, http) = (
        requests.clone(),
        failed.clone(),
        channels.clone(),
        bound.to_string(),
    );
    ctx.spawn_telemetry(tasks, "mom", Duration::from_millis(500), move || MomStats {
        http: http.clone(),
        channels: c.lock().map(|c| c.clone()).unwrap_or_default(),
        requests: r.load(Ordering::Relaxed),
        failed: f.load(Ordering::Relaxed),
    });

    let mut rpc = ctx.bus.subscribe(&topics.rpc("mom", ctx.id())).await?;
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
                        tokio::select! {
                            a = mom.call(request) => a,
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

async fn mom_list(mom: &Mom) -> Result<Vec<ChannelInfo>, MomError> {
    mom.engine().list(None, now_ms()).await
}
