//! `store` role: the only writer of the `meas` table. A batch is committed
//! only when its grant passes the [`TokenGate`]; rejections are counted by
//! reason. Keeps the newest 500 rows in memory and serves them over HTTP at
//! `GET /get_measurements/<n>` (`{"measurements": [...]}`, the seed's shape)
//! plus `GET /health`.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use super::coordinator::PublicKey;
use super::db::{MeasDb, digest};
use super::receiver::WriteRequest;
use super::sensor::Reading;
use super::token::{Admission, SignedGrant, TokenGate, public_key_from_hex};
use crate::envelope::{Envelope, now_ms};
use crate::runtime::NodeContext;
use crate::services::StartError;

/// Rows kept in memory for HTTP.
pub const CACHE_ROWS: usize = 500;

/// What the store reports on `telemetry/<store>/store`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStats {
    pub rows: u64,
    pub epoch: u64,
    pub batches: u64,
    pub duplicates: u64,
    /// Rejected tokens by reason (`bad_signature`, `stale_epoch`, …).
    pub rejected: std::collections::BTreeMap<String, u64>,
    pub http: String,
}

/// Body of the retained `iot/store-http` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHttp {
    pub store: String,
    pub addr: String,
}

struct Shared {
    stats: Mutex<StoreStats>,
    db: Mutex<MeasDb>,
    gate: Mutex<TokenGate>,
    cache: Mutex<VecDeque<Reading>>,
}

impl Shared {
    fn reload_cache(&self) -> rusqlite::Result<()> {
        let rows = self.db.lock().latest(CACHE_ROWS)?;
        *self.cache.lock() = rows.into();
        Ok(())
    }

    fn latest(&self, n: usize) -> Vec<Reading> {
        let cache = self.cache.lock();
        cache
            .iter()
            .skip(cache.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let db = MeasDb::open(&ctx.dir.join("meas.db"))?;
    let mut gate = TokenGate::new(None);
    let (epoch, used) = db.token_state()?;
    gate.restore(epoch, used);
    let rows = db.count()?;
    let shared = Arc::new(Shared {
        stats: Mutex::new(StoreStats {
            rows,
            epoch,
            ..Default::default()
        }),
        db: Mutex::new(db),
        gate: Mutex::new(gate),
        cache: Mutex::new(VecDeque::new()),
    });
    shared.reload_cache()?;
    tracing::info!(rows, epoch, "store opened");

    let (listener, bound) = crate::runtime::bind_http("iot.http", ctx.config.iot.http).await?;
    tracing::info!(http = %bound, "store serving HTTP");
    shared.stats.lock().http = bound.to_string();
    let snap = shared.clone();
    ctx.spawn_telemetry(
        tasks,
        "store",
        std::time::Duration::from_millis(250),
        move || {
            let gate = snap.gate.lock();
            let mut stats = snap.stats.lock().clone();
            stats.epoch = gate.epoch();
            stats.rejected = gate
                .rejected()
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            stats
        },
    );
    let topics = ctx.bus.topics().clone();
    let http = StoreHttp {
        store: ctx.id().to_owned(),
        addr: bound.to_string(),
    };
    ctx.announce(&topics.service("iot", "store-http"), "store-http", &http)
        .await?;
    let app = Router::new()
        .route("/get_measurements/{n}", get(get_measurements))
        .route("/health", get(health))
        .with_state(shared.clone());
    let stop = ctx.shutdown.clone();
    tasks.spawn(async move {
        if let Err(err) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %err, "HTTP server stopped");
        }
    });

    let mut keys = ctx.bus.subscribe(&topics.service("iot", "key")).await?;
    let mut roots = ctx.bus.subscribe(&topics.service("iot", "root")).await?;
    let mut grants = ctx.bus.subscribe(&topics.service("iot", "grant")).await?;
    let mut refresh = ctx.bus.subscribe(&topics.service("iot", "refresh")).await?;
    let mut requests = ctx.bus.subscribe(&topics.rpc("store", ctx.id())).await?;
    tasks.spawn(async move {
        loop {
            // Biased: the key and new epochs are taken in before any write
            // that arrived at the same time, or a valid write could be refused.
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return,
                Some(m) = keys.recv() => match m.envelope.body_as::<PublicKey>().ok().and_then(|k| public_key_from_hex(&k.public)) {
                    Some(key) => shared.gate.lock().set_key(key),
                    None => tracing::warn!("malformed coordinator key; ignored"),
                },
                Some(m) = roots.recv() => {
                    if let Ok(signed) = m.envelope.body_as::<SignedGrant>() {
                        shared.gate.lock().observe(&signed);
                    }
                }
                Some(m) = grants.recv() => {
                    if let Ok(signed) = m.envelope.body_as::<SignedGrant>() {
                        shared.gate.lock().observe(&signed);
                    }
                }
                Some(m) = refresh.recv() => {
                    let valid = m.envelope.body_as::<SignedGrant>()
                        .is_ok_and(|g| shared.gate.lock().valid_for(&g, ctx.id(), now_ms()));
                    if valid {
                        let shared = shared.clone();
                        let _ = tokio::task::spawn_blocking(move || shared.reload_cache()).await;
                    }
                }
                Some(m) = requests.recv() => handle(&ctx, &shared, m.envelope).await,
            }
        }
    });
    Ok(())
}

async fn handle(ctx: &NodeContext, shared: &Arc<Shared>, request: Envelope) {
    let answer = match request.kind.as_str() {
        "write" => write(shared, &request).await,
        "query" => {
            let n = request
                .body
                .to_value()
                .get("n")
                .and_then(Value::as_u64)
                .unwrap_or(10) as usize;
            Ok(json!({ "measurements": shared.latest(n) }))
        }
        other => Err(format!(
            "unknown request kind `{other}`; the store answers `write` and `query`"
        )),
    };
    let _ = match answer {
        Ok(body) => ctx.bus.reply(&request, "reply", body).await,
        Err(message) => ctx.bus.reply_error(&request, &message).await,
    };
}

async fn write(shared: &Arc<Shared>, request: &Envelope) -> Result<Value, String> {
    let body: WriteRequest = request
        .body_as()
        .map_err(|e| format!("malformed write request: {e}"))?;
    let batch_digest = digest(&body.readings);
    let grant = body.grant.grant.clone();
    let verdict = shared.gate.lock().admit(
        &body.grant,
        &request.from,
        batch_digest,
        &body.proof,
        now_ms(),
    );
    match verdict {
        Err(why) => {
            tracing::warn!(from = %request.from, reason = %why, epoch = grant.epoch, seq = grant.seq, "token rejected");
            Err(format!("token rejected: {why}"))
        }
        Ok(Admission::Duplicate) => {
            shared.stats.lock().duplicates += 1;
            Ok(json!({ "inserted": 0, "duplicate": true }))
        }
        Ok(Admission::Fresh) => {
            let shared2 = shared.clone();
            let holder = request.from.clone();
            let committed = tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let mut db = shared2.db.lock();
                let result = db.commit(
                    grant.epoch,
                    grant.seq,
                    &holder,
                    batch_digest,
                    &body.readings,
                );
                if let Ok(c) = &result {
                    tracing::debug!(
                        rows = c.inserted,
                        ms = started.elapsed().as_secs_f64() * 1e3,
                        "batch committed"
                    );
                    let mut stats = shared2.stats.lock();
                    stats.rows += c.inserted as u64;
                    stats.batches += 1;
                    drop(stats);
                    let mut cache = shared2.cache.lock();
                    cache.extend(body.readings);
                    let excess = cache.len().saturating_sub(CACHE_ROWS);
                    cache.drain(..excess);
                }
                result
            })
            .await;
            match committed {
                Ok(Ok(c)) => Ok(json!({ "inserted": c.inserted, "duplicate": false })),
                Ok(Err(err)) => {
                    shared
                        .gate
                        .lock()
                        .forget(body.grant.grant.epoch, body.grant.grant.seq);
                    tracing::error!(error = %err, "commit failed");
                    Err(format!("the store could not commit: {err}"))
                }
                Err(err) => {
                    shared
                        .gate
                        .lock()
                        .forget(body.grant.grant.epoch, body.grant.grant.seq);
                    Err(format!("the store could not commit: {err}"))
                }
            }
        }
    }
}

async fn get_measurements(State(shared): State<Arc<Shared>>, Path(n): Path<String>) -> Response {
    match n.parse::<usize>() {
        Ok(n) => Json(json!({ "measurements": shared.latest(n) })).into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("`{n}` is not a count; use /get_measurements/<n> with n >= 0") })),
        )
            .into_response(),
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let rows = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || shared.db.lock().count()).await
    };
    match rows {
        Ok(Ok(rows)) => {
            Json(json!({ "status": "ok", "rows": rows, "epoch": shared.gate.lock().epoch() }))
                .into_response()
        }
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "database unavailable" })),
        )
            .into_response(),
    }
}
