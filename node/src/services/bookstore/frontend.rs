//! The `frontend` role: the seed's public API on `[bookstore] http`
//! (`GET /search?topic=`, `/lookup?id=`, `/buy?id=`, same JSON), a cache of
//! search and lookup answers invalidated on every change (its own buys at
//! once, everyone's through `bookstore/changed`), and calls to the catalog
//! and order replicas that the beats say are alive, round-robin, retried on
//! the other replica when one does not answer — so one replica crash costs
//! a client some latency, not an error. Each buy gets an order id here,
//! kept across retries, so a retried buy is sold and recorded once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_util::task::TaskTracker;

use super::api;
use super::cache::{Cache, Key};
use super::model::{Book, BookError};
use super::servers::{call, spawn_peer_watch};
use super::wire::{
    CatalogReply, CatalogRequest, Changed, OrderReply, OrderRequest, PeerView, Peers,
};
use crate::envelope::now_ms;
use crate::runtime::NodeContext;
use crate::services::StartError;

/// Cached answers at most, and their age at most (a backstop: changes
/// invalidate them at once).
const CACHE_CAPACITY: usize = 10_000;
const CACHE_MAX_AGE: Duration = Duration::from_secs(30);

/// Body of the retained `bookstore/http`: where the frontend serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendHttp {
    pub node: String,
    pub addr: SocketAddr,
}

/// One operation's figures over the last telemetry period.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpFigures {
    /// Since start.
    pub ok: u64,
    pub failed: u64,
    /// Over the last period.
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What the frontend reports on `telemetry/<node>/frontend`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrontendStats {
    /// Where it serves (none before it listens).
    pub http: Option<SocketAddr>,
    pub search: OpFigures,
    pub lookup: OpFigures,
    pub buy: OpFigures,
    pub cache_hit_ratio: f64,
    pub cache_entries: usize,
    pub cache_enabled: bool,
    /// The catalog and order replicas as this frontend sees them.
    pub replicas: Vec<PeerView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Search,
    Lookup,
    Buy,
}

struct OpStats {
    ok: u64,
    failed: u64,
    window: Histogram<u64>,
}

impl OpStats {
    fn new() -> Self {
        Self {
            ok: 0,
            failed: 0,
            window: Histogram::new_with_bounds(1, 120_000_000, 2).expect("valid bounds"),
        }
    }

    /// The figures since the last call, which starts a new window.
    fn take(&mut self, period: Duration) -> OpFigures {
        let h = &self.window;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let figures = OpFigures {
            ok: self.ok,
            failed: self.failed,
            per_sec: h.len() as f64 / period.as_secs_f64(),
            p50_ms: ms(0.5),
            p99_ms: ms(0.99),
        };
        self.window.reset();
        figures
    }
}

#[derive(Clone)]
struct Frontend {
    ctx: NodeContext,
    peers: Arc<Mutex<Peers>>,
    cache: Option<Arc<Mutex<Cache>>>,
    stats: Arc<Mutex<[OpStats; 3]>>,
    next_order: Arc<AtomicU64>,
    boot_ms: u64,
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let settings = ctx.config.bookstore.clone();
    let peers = Arc::new(Mutex::new(Peers::new(settings.timeout_ms)));
    spawn_peer_watch(&ctx, tasks, peers.clone()).await?;
    let front = Frontend {
        ctx: ctx.clone(),
        peers,
        cache: settings
            .cache
            .then(|| Arc::new(Mutex::new(Cache::new(CACHE_CAPACITY, CACHE_MAX_AGE)))),
        stats: Arc::new(Mutex::new([OpStats::new(), OpStats::new(), OpStats::new()])),
        next_order: Arc::new(AtomicU64::new(1)),
        boot_ms: now_ms(),
    };

    // Everyone's changes invalidate the cache.
    if let Some(cache) = front.cache.clone() {
        let mut changes = ctx
            .bus
            .subscribe(&ctx.bus.topics().service("bookstore", "changed"))
            .await?;
        let stop = ctx.shutdown.clone();
        tasks.spawn(async move {
            loop {
                let m = tokio::select! {
                    m = changes.recv() => m,
                    _ = stop.cancelled() => return,
                };
                let Some(m) = m else { return };
                if let Ok(c) = m.envelope.body_as::<Changed>() {
                    let mut cache = cache.lock();
                    for id in c.books {
                        cache.changed(id);
                    }
                }
            }
        });
    }

    let bound = serve_http(&ctx, tasks, &front).await?;
    let period = Duration::from_millis(500);
    let f = front.clone();
    ctx.spawn_telemetry(tasks, "frontend", period, move || {
        let [search, lookup, buy] = &mut *f.stats.lock();
        let (cache_hit_ratio, cache_entries) = f
            .cache
            .as_ref()
            .map(|c| {
                let c = c.lock();
                (c.hit_ratio(), c.len())
            })
            .unwrap_or_default();
        FrontendStats {
            http: Some(bound),
            search: search.take(period),
            lookup: lookup.take(period),
            buy: buy.take(period),
            cache_hit_ratio,
            cache_entries,
            cache_enabled: f.cache.is_some(),
            replicas: f.peers.lock().view(now_ms()),
        }
    });
    Ok(())
}

impl Frontend {
    fn per_try(&self) -> Duration {
        Duration::from_millis(self.ctx.config.bookstore.timeout_ms)
    }

    fn deadline(&self) -> Duration {
        Duration::from_millis(self.ctx.config.bookstore.deadline_ms)
    }

    /// Search or lookup: from the cache, else from a catalog replica.
    async fn read(&self, key: Key) -> Result<Vec<Book>, BookError> {
        let ticket = match &self.cache {
            Some(cache) => {
                let mut c = cache.lock();
                if let Some(books) = c.get(&key, Instant::now()) {
                    return Ok(books);
                }
                Some(c.ticket())
            }
            None => None,
        };
        let request = match &key {
            Key::Search(topic) => CatalogRequest::Search {
                topic: topic.clone(),
            },
            Key::Lookup(id) => CatalogRequest::Lookup { id: *id },
        };
        let reply: CatalogReply = call(
            &self.ctx,
            &self.peers,
            "catalog",
            &request,
            false,
            self.per_try(),
            self.deadline(),
        )
        .await?;
        let CatalogReply::Books { books } = reply else {
            return Err(BookError::Storage(format!(
                "unexpected catalog answer {reply:?}"
            )));
        };
        if let (Some(cache), Some(ticket)) = (&self.cache, ticket) {
            cache
                .lock()
                .fill(key, books.clone(), ticket, Instant::now());
        }
        Ok(books)
    }

    async fn buy(&self, id: u32) -> Result<Book, BookError> {
        let order_id = format!(
            "{}-{}-{}",
            self.ctx.id(),
            self.boot_ms,
            self.next_order.fetch_add(1, Ordering::Relaxed)
        );
        let request = OrderRequest::Buy { order_id, book: id };
        let reply: Result<OrderReply, BookError> = call(
            &self.ctx,
            &self.peers,
            "order",
            &request,
            true,
            // A buy crosses two services: give it the time of two tries.
            2 * self.per_try(),
            self.deadline(),
        )
        .await;
        // Whatever happened, the book may have changed.
        if let Some(cache) = &self.cache {
            cache.lock().changed(id);
        }
        match reply? {
            OrderReply::Bought { book, .. } => Ok(book),
            other => Err(BookError::Storage(format!(
                "unexpected order answer {other:?}"
            ))),
        }
    }

    fn record(&self, op: Op, started: Instant, ok: bool) {
        let mut stats = self.stats.lock();
        let s = &mut stats[op as usize];
        if ok {
            s.ok += 1;
            // Beyond the histogram's 120 s bound counts as 120 s.
            s.window
                .saturating_record(started.elapsed().as_micros().max(1) as u64);
        } else {
            s.failed += 1;
        }
    }
}

type Params = Query<HashMap<String, String>>;

fn router(front: Frontend) -> Router {
    Router::new()
        .route("/search", get(search))
        .route("/lookup", get(lookup))
        .route("/buy", get(buy))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async {
            failure(&BookError::NotFound(
                "no such path; the API is GET /search?topic=, /lookup?id=, /buy?id=".into(),
            ))
        })
        .with_state(front)
}

fn failure(e: &BookError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(api::failed(e))).into_response()
}

async fn search(State(f): State<Frontend>, Query(params): Params) -> Response {
    let started = Instant::now();
    let result = async {
        let topic = api::topic_param(&params)?;
        f.read(Key::Search(topic.to_lowercase())).await
    }
    .await;
    f.record(Op::Search, started, result.is_ok());
    match result {
        Ok(books) => axum::Json(api::items(books)).into_response(),
        Err(e) => failure(&e),
    }
}

async fn lookup(State(f): State<Frontend>, Query(params): Params) -> Response {
    let started = Instant::now();
    let result = async {
        let id = api::id_param(&params)?;
        f.read(Key::Lookup(id)).await
    }
    .await;
    f.record(Op::Lookup, started, result.is_ok());
    match result {
        Ok(books) => axum::Json(api::items(books)).into_response(),
        Err(e) => failure(&e),
    }
}

async fn buy(State(f): State<Frontend>, Query(params): Params) -> Response {
    let started = Instant::now();
    let result = async {
        let id = api::id_param(&params)?;
        f.buy(id).await
    }
    .await;
    f.record(Op::Buy, started, result.is_ok());
    match result {
        Ok(book) => axum::Json(api::bought(&book)).into_response(),
        Err(e) => failure(&e),
    }
}

async fn serve_http(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    front: &Frontend,
) -> Result<SocketAddr, StartError> {
    let (listener, bound) =
        crate::runtime::bind_http("bookstore.http", ctx.config.bookstore.http).await?;
    tracing::info!(http = %bound, "bookstore frontend serving HTTP");
    ctx.announce(
        &ctx.bus
            .topics()
            .service("bookstore", &format!("http/{}", ctx.id())),
        "bookstore-http",
        &FrontendHttp {
            node: ctx.id().to_owned(),
            addr: bound,
        },
    )
    .await?;
    let app = router(front.clone());
    crate::runtime::spawn_http(ctx, tasks, listener, app, "bookstore frontend");
    Ok(bound)
}
