//! `store` role: the only writer of the `meas` table. A batch is committed
//! only when its grant passes the [`TokenGate`]; rejections are counted by
//! reason. Keeps the newest 500 rows in memory and serves them over HTTP:
//!
//! - `GET /get_measurements/<n>`: the seed's path and shape, byte for byte
//!   what its reader parses: `{"measurements": [[id, sensor, humidity,
//!   temperature, pressure, battery, "2026-11-23 05:43:21.452000"], ...]}`,
//!   newest first; `n` is a whole number (else 404, as Flask's `<int:n>`).
//! - `GET /api/v1/measurements?n=100`: the same rows as objects, oldest
//!   first (`n` defaults to 100; a bad `n` is a 400 with a JSON error).
//! - `GET /health`.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::task::TaskTracker;

use super::db::{Committed, MeasDb, Row, digest};
use super::gate::{Admission, Rejection, TokenGate};
use super::keys::{PIN_FILE, PinnedKey};
use super::receiver::WriteRequest;
use super::rpc::StoreRequest;
use super::sensor::Reading;
use super::token::{Grant, SignedGrant};
use crate::envelope::{Envelope, now_ms};
use crate::runtime::NodeContext;
use crate::services::StartError;

/// Rows kept in memory for HTTP (the seed's cache held as many).
pub const CACHE_ROWS: usize = 500;

/// Rows `/api/v1/measurements` returns when no `n` is given.
pub const DEFAULT_ROWS: usize = 100;

/// What the store reports on `telemetry/<store>/store`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreStats {
    pub rows: u64,
    pub epoch: u64,
    pub batches: u64,
    pub duplicates: u64,
    /// Rejected tokens by reason (`bad_signature`, `stale_epoch`, …).
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Where it serves (none before it listens).
    pub http: Option<std::net::SocketAddr>,
}

/// Why the store answered a request with an error (the message the caller
/// gets).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unknown request kind `{0}`; the store answers `write` and `query`")]
    UnknownKind(String),
    #[error("malformed {kind} request: {source}")]
    Malformed {
        kind: String,
        source: serde_json::Error,
    },
    #[error("token rejected: {0}")]
    Rejected(Rejection),
    #[error("the store could not commit: {0}")]
    Commit(#[from] rusqlite::Error),
    #[error("the store could not commit: {0}")]
    CommitTask(#[from] tokio::task::JoinError),
}

/// Body of the retained `iot/store-http` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHttp {
    pub store: String,
    pub addr: std::net::SocketAddr,
}

struct Shared {
    stats: Mutex<StoreStats>,
    db: Mutex<MeasDb>,
    gate: Mutex<TokenGate>,
    /// The newest rows, oldest first.
    cache: Mutex<VecDeque<Row>>,
}

impl Shared {
    fn reload_cache(&self) -> rusqlite::Result<()> {
        let rows = self.db.lock().latest(CACHE_ROWS)?;
        *self.cache.lock() = rows.into();
        Ok(())
    }

    /// The newest `n` rows, oldest first.
    fn latest(&self, n: usize) -> Vec<Row> {
        let cache = self.cache.lock();
        cache
            .iter()
            .skip(cache.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    /// The newest `n` rows in the seed's shape, newest first.
    fn latest_seed_rows(&self, n: usize) -> Vec<Value> {
        let cache = self.cache.lock();
        cache.iter().rev().take(n).map(Row::seed_shape).collect()
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
    shared.stats.lock().http = Some(bound);
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
        addr: bound,
    };
    ctx.announce(&topics.service("iot", "store-http"), "store-http", &http)
        .await?;
    let app = Router::new()
        .route("/get_measurements/{n}", get(get_measurements))
        .route("/api/v1/measurements", get(api_measurements))
        .route("/health", get(health))
        .with_state(shared.clone());
    crate::runtime::spawn_http(&ctx, tasks, listener, app, "IoT store");

    // The coordinator's key: pinned at first sight (see PinnedKey).
    let mut pin = PinnedKey::load(&ctx.dir.join(PIN_FILE));
    if let Some(key) = pin.key() {
        shared.gate.lock().set_key(key);
    }
    let coordinators = ctx.config.nodes_with(crate::config::Role::Coordinator);
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
                Some(m) = keys.recv() => match pin.take(&m.envelope, &coordinators) {
                    Ok(key) => shared.gate.lock().set_key(key),
                    Err(why) => tracing::warn!("{why}"),
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
                        // On failure the cache keeps the rows it has (HTTP
                        // still answers); the next refresh grant tries again.
                        match tokio::task::spawn_blocking(move || shared.reload_cache()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(err)) => tracing::warn!(error = %err, "cannot reload the HTTP cache from the database; serving the rows it has"),
                            Err(err) => tracing::warn!(error = %err, "the HTTP cache reload failed; serving the rows it has"),
                        }
                    }
                }
                Some(m) = requests.recv() => handle(&ctx, &shared, m.envelope).await,
            }
        }
    });
    Ok(())
}

async fn handle(ctx: &NodeContext, shared: &Arc<Shared>, request: Envelope) {
    let answer = match StoreRequest::from_envelope(&request) {
        Ok(StoreRequest::Write(body)) => write(shared, &request.from, body).await,
        Ok(StoreRequest::Query(query)) => Ok(json!({ "measurements": shared.latest(query.n) })),
        Ok(StoreRequest::Unknown) => Err(StoreError::UnknownKind(request.kind.clone())),
        Err(source) => Err(StoreError::Malformed {
            kind: request.kind.clone(),
            source,
        }),
    };
    let sent = match &answer {
        Ok(body) => ctx.bus.reply(&request, "reply", body).await,
        Err(err) => ctx.bus.reply_error(&request, &err.to_string()).await,
    };
    if let Err(err) = sent {
        // The caller times out: a receiver keeps its batch and sends it
        // again under its next grant (a committed one is then a duplicate).
        tracing::warn!(error = %err, from = %request.from, kind = %request.kind, "cannot answer a request");
    }
}

async fn write(shared: &Arc<Shared>, from: &str, body: WriteRequest) -> Result<Value, StoreError> {
    let batch_digest = digest(&body.readings);
    let grant = body.grant.grant.clone();
    let verdict = shared
        .gate
        .lock()
        .admit(&body.grant, from, batch_digest, &body.proof, now_ms());
    match verdict {
        Err(why) => {
            tracing::warn!(%from, reason = %why, epoch = grant.epoch, seq = grant.seq, "token rejected");
            Err(StoreError::Rejected(why))
        }
        Ok(Admission::Duplicate) => {
            shared.stats.lock().duplicates += 1;
            Ok(json!({ "inserted": 0, "duplicate": true }))
        }
        Ok(Admission::Fresh) => {
            let (epoch, seq) = (grant.epoch, grant.seq);
            match commit(shared, from, grant, batch_digest, body.readings).await {
                Ok(c) => Ok(json!({ "inserted": c.inserted, "duplicate": false })),
                Err(err) => {
                    // Admitted but not written: the holder's retry must be
                    // admitted as fresh, not acknowledged as a duplicate.
                    shared.gate.lock().forget(epoch, seq);
                    tracing::error!(error = %err, "commit failed");
                    Err(err)
                }
            }
        }
    }
}

/// Commits an admitted batch (off the async threads), then counts it and
/// adds it to the HTTP cache.
async fn commit(
    shared: &Arc<Shared>,
    holder: &str,
    grant: Grant,
    batch_digest: u64,
    readings: Vec<Reading>,
) -> Result<Committed, StoreError> {
    let shared = shared.clone();
    let holder = holder.to_owned();
    let committed = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        // The database stays locked until the cache has the batch too.
        let mut db = shared.db.lock();
        let c = db.commit(grant.epoch, grant.seq, &holder, batch_digest, &readings)?;
        tracing::debug!(
            rows = c.inserted,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "batch committed"
        );
        {
            let mut stats = shared.stats.lock();
            stats.rows += c.inserted as u64;
            stats.batches += 1;
        }
        let mut cache = shared.cache.lock();
        cache.extend(c.rows.iter().cloned());
        let excess = cache.len().saturating_sub(CACHE_ROWS);
        cache.drain(..excess);
        drop(db);
        Ok::<_, rusqlite::Error>(c)
    })
    .await??;
    Ok(committed)
}

/// The seed's `/get_measurements/<int:n>`: rows as lists, newest first. Like
/// Flask's `int` converter, only digits match; anything else is not found.
async fn get_measurements(State(shared): State<Arc<Shared>>, Path(n): Path<String>) -> Response {
    let count = (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse::<usize>().unwrap_or(usize::MAX));
    match count {
        Some(n) => Json(json!({ "measurements": shared.latest_seed_rows(n) })).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!(
                "Not Found: `{n}` is not a count; use /get_measurements/<n> with a whole number n \
                 (or /api/v1/measurements?n= for objects)\n"
            ),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct CountQuery {
    n: Option<usize>,
}

/// `/api/v1/measurements?n=`: rows as objects (with their ids), oldest first.
async fn api_measurements(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<CountQuery>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(q)) => {
            let n = q.n.unwrap_or(DEFAULT_ROWS);
            Json(json!({ "measurements": shared.latest(n) })).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": format!("{}; use /api/v1/measurements?n=<count> with a whole number", e.body_text()) })),
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
