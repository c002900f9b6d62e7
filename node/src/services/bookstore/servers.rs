//! The `catalog` and `order` roles: each a raft group (groups `catalog`
//! and `order`, see [`crate::replica`]) on SQLite in its data dir.
//!
//! - catalog: books and stock; a buy takes one copy and records the sale
//!   (order id) in one transaction. Any member serves reads, each after a
//!   raft ReadIndex (so it holds every acknowledged write); changes go to
//!   the leader (others forward them), which announces them on
//!   `bookstore/changed`.
//! - order: records an order once the catalog sold the copy. A buy on the
//!   order leader records its intent, asks the catalog to sell (idempotent
//!   by order id), then records the order (idempotent too); so a buy retried
//!   after any crash sells once and is recorded once, and a buy its caller
//!   gave up on midway is finished by the leader (no sale without order).
//!
//! Both beat on `bookstore/beat/<node>` every `bookstore.heartbeat_ms`.

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::task::TaskTracker;

use super::model::{Book, BookError, CatalogFile, Command, Order, Outcome};
use super::orders::{OrderCommand, OrderStore};
use super::sql::SqlStore;
use super::store::BookStore;
use super::wire::{
    Beat, CatalogAnswer, CatalogReply, CatalogRequest, Changed, FORWARDED, OrderAnswer, OrderReply,
    OrderRequest, Peers,
};
use crate::config::Role;
use crate::envelope::{Envelope, now_ms};
use crate::replica::{Engine, LogStore, Replicas};
use crate::runtime::{Counters, NodeContext, serve_rpc};
use crate::services::StartError;

/// How long a forwarded request waits for the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn start_catalog(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let catalog = CatalogFile::built_in();
    let path = ctx.dir.join("catalog.db");
    let store = SqlStore::open(&path, &catalog)?;
    let reader = Arc::new(Mutex::new(SqlStore::open_reader(&path)?));
    let server = Server::start(&ctx, tasks, "catalog", Role::Catalog, store, |s| {
        Ok((s.digest()?, s.books()?, s.ledger()?))
    })
    .await?;
    let changes = spawn_changes(&ctx, tasks);
    serve_rpc(
        &ctx,
        tasks,
        "catalog",
        server.counters.clone(),
        BookError::BadRequest,
        move |req, env| {
            let (server, reader, changes) = (server.clone(), reader.clone(), changes.clone());
            async move { catalog_answer(&server, &reader, &changes, req, env).await }
        },
    )
    .await?;
    Ok(())
}

/// Where the catalog leader's changes go to be announced.
type Changes = tokio::sync::mpsc::UnboundedSender<u32>;

/// Announces changed books on `bookstore/changed`: the books changed while
/// the previous announcement was being sent go out together in the next
/// (one bus message for many buys under load, none delayed when idle).
fn spawn_changes(ctx: &NodeContext, tasks: &TaskTracker) -> Changes {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
    let (bus, stop) = (ctx.bus.clone(), ctx.shutdown.clone());
    tasks.spawn(async move {
        let topic = bus.topics().service("bookstore", "changed");
        loop {
            let first = tokio::select! {
                b = rx.recv() => b,
                _ = stop.cancelled() => return,
            };
            let Some(first) = first else { return };
            let mut books = std::collections::BTreeSet::from([first]);
            while let Ok(more) = rx.try_recv() {
                books.insert(more);
            }
            let body = Changed {
                books: books.into_iter().collect(),
            };
            // Frontends also drop cached answers on a max age, and a lost
            // announcement only delays that.
            if let Err(e) = bus.publish(&topic, &bus.envelope("changed", &body)).await {
                tracing::debug!(error = %e, "book changes not announced");
            }
        }
    });
    tx
}

pub async fn start_order(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let store = OrderStore::open(&ctx.dir.join("orders.db"))?;
    let server = Server::start(&ctx, tasks, "order", Role::Order, store, |s| {
        Ok((s.digest()?, Vec::new(), Vec::new()))
    })
    .await?;
    // The catalog replicas, as this node sees them (to sell through).
    let peers = Arc::new(Mutex::new(Peers::new(ctx.config.bookstore.timeout_ms)));
    spawn_peer_watch(&ctx, tasks, peers.clone()).await?;
    spawn_reconciler(tasks, server.clone(), peers.clone());
    serve_rpc(
        &ctx,
        tasks,
        "order",
        server.counters.clone(),
        BookError::BadRequest,
        move |req, env| {
            let (server, peers) = (server.clone(), peers.clone());
            async move { order_answer(&server, &peers, req, env).await }
        },
    )
    .await?;
    Ok(())
}

/// One catalog or order server.
struct Server<S: LogStore> {
    ctx: NodeContext,
    service: &'static str,
    engine: Engine<S>,
    replicas: Replicas,
    counters: Counters,
}

impl<S: LogStore> Clone for Server<S> {
    fn clone(&self) -> Self {
        Self {
            ctx: self.ctx.clone(),
            service: self.service,
            engine: self.engine.clone(),
            replicas: self.replicas.clone(),
            counters: self.counters.clone(),
        }
    }
}

/// Where a request that needs the leader runs.
enum Route {
    Here,
    /// On the leader, which is this other node.
    There(String),
}

impl<S: LogStore> Server<S> {
    /// The engine on `store`, replication in the group of `role`'s nodes,
    /// and beats (whose digest, books and ledger `snapshot` reads).
    async fn start(
        ctx: &NodeContext,
        tasks: &TaskTracker,
        service: &'static str,
        role: Role,
        store: S,
        snapshot: fn(&mut S) -> Result<Snapshot, S::Error>,
    ) -> Result<Self, StartError> {
        let nodes = ctx.config.nodes_with(role);
        let (engine, replicas) =
            crate::replica::shell::start(ctx, tasks, service, nodes, store).await?;
        let counters = Counters::default();
        spawn_beats(
            ctx,
            tasks,
            service,
            engine.clone(),
            replicas.clone(),
            counters.clone(),
            snapshot,
        );
        Ok(Self {
            ctx: ctx.clone(),
            service,
            engine,
            replicas,
            counters,
        })
    }

    /// Reads need a node holding every acknowledged write: waits until
    /// this one has applied all that the leader had committed (a raft
    /// ReadIndex; fails when no leader confirms in time).
    async fn check_serving(&self) -> Result<(), BookError> {
        self.engine.read_current(|_| Ok(())).await.map_err(|e| {
            BookError::Unavailable(format!(
                "{} cannot serve a current read now ({e}); try another replica",
                self.ctx.id()
            ))
        })
    }

    /// Writes run on the leader: here, or there (a forwarded request is
    /// never forwarded again).
    fn route(&self, forwarded: bool) -> Result<Route, BookError> {
        match self.replicas.leader() {
            Some(p) if p == self.ctx.id() => Ok(Route::Here),
            Some(p) if !forwarded => Ok(Route::There(p)),
            Some(p) => Err(BookError::Unavailable(format!(
                "{} is not the {} leader ({p} is)",
                self.ctx.id(),
                self.service
            ))),
            None => Err(BookError::Unavailable(format!(
                "no {} leader right now (failover in progress)",
                self.service
            ))),
        }
    }

    /// Runs `request` on the leader `p` and returns its answer.
    async fn forward<Q: Serialize, A: DeserializeOwned>(
        &self,
        p: &str,
        request: &Q,
    ) -> Result<A, BookError> {
        let reply = self
            .ctx
            .bus
            .request(self.service, p, FORWARDED, request, FORWARD_TIMEOUT)
            .await
            .map_err(|e| {
                BookError::Unavailable(format!(
                    "the {} leader {p} did not answer: {e}",
                    self.service
                ))
            })?;
        reply
            .body_as::<A>()
            .map_err(|e| BookError::Storage(format!("bad answer from {p}: {e}")))
    }
}

/// Every book, read on the reader connection (not queued behind commits).
async fn read_books(reader: &Arc<Mutex<SqlStore>>) -> Result<Vec<super::model::Book>, BookError> {
    let reader = reader.clone();
    tokio::task::spawn_blocking(move || reader.lock().books())
        .await
        .map_err(|e| BookError::Storage(format!("read task failed: {e}")))?
}

async fn catalog_answer(
    server: &Server<SqlStore>,
    reader: &Arc<Mutex<SqlStore>>,
    changes: &Changes,
    request: CatalogRequest,
    envelope: Envelope,
) -> CatalogAnswer {
    let forwarded = envelope.kind == FORWARDED;
    match request {
        CatalogRequest::Search { topic } => {
            server.check_serving().await?;
            let books = read_books(reader).await?;
            Ok(CatalogReply::Books {
                books: super::api::search(&books, &topic)?,
            })
        }
        CatalogRequest::Lookup { id } => {
            server.check_serving().await?;
            let books = read_books(reader).await?;
            let book = books.into_iter().find(|b| b.id == id);
            let book = book.ok_or(BookError::UnknownBook(id))?;
            Ok(CatalogReply::Books { books: vec![book] })
        }
        CatalogRequest::Books => {
            server.check_serving().await?;
            let books = read_books(reader).await?;
            Ok(CatalogReply::Books { books })
        }
        CatalogRequest::Sales => {
            server.check_serving().await?;
            let orders = server.engine.read(|s| s.orders()).await?;
            Ok(CatalogReply::Sales { orders })
        }
        CatalogRequest::Ledger => {
            server.check_serving().await?;
            let ledger = server.engine.read(|s| s.ledger()).await?;
            Ok(CatalogReply::Ledger { ledger })
        }
        CatalogRequest::SalesAfter { after, limit } => {
            server.check_serving().await?;
            let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(SALES_PAGE);
            let sales = server
                .engine
                .read(move |s| s.sales_after(after, limit))
                .await?;
            Ok(CatalogReply::Placed { sales })
        }
        CatalogRequest::Apply { command } => match server.route(forwarded)? {
            Route::There(p) => {
                let request = CatalogRequest::Apply { command };
                server.forward::<_, CatalogAnswer>(&p, &request).await?
            }
            Route::Here => {
                let outcome = server.engine.apply(command).await?;
                if !matches!(outcome, Outcome::Bought { repeat: true, .. }) {
                    let book = match &outcome {
                        Outcome::Bought { book, .. } | Outcome::Changed { book } => book.id,
                    };
                    if changes.send(book).is_err() {
                        tracing::debug!(book, "change not announced: the node is stopping");
                    }
                }
                Ok(CatalogReply::Outcome { outcome })
            }
        },
    }
}

async fn order_answer(
    server: &Server<OrderStore>,
    catalogs: &Mutex<Peers>,
    request: OrderRequest,
    envelope: Envelope,
) -> OrderAnswer {
    let forwarded = envelope.kind == FORWARDED;
    match request {
        OrderRequest::Orders => {
            server.check_serving().await?;
            let orders = server.engine.read(|s| s.orders()).await?;
            Ok(OrderReply::Orders { orders })
        }
        OrderRequest::Buy { order_id, book } => match server.route(forwarded)? {
            Route::There(p) => {
                let request = OrderRequest::Buy { order_id, book };
                server.forward::<_, OrderAnswer>(&p, &request).await?
            }
            Route::Here => {
                let (order, book) = buy(server, catalogs, order_id, book).await?;
                Ok(OrderReply::Bought { order, book })
            }
        },
    }
}

/// Sells the copy (once per order id) and records the order (once too). A
/// buy given up between the two (its caller gone, this leader replaced, the
/// broker paused) leaves a sale without its order for a while: the
/// [`spawn_reconciler`] of the order leader finds it among the catalog's
/// sales and records it.
async fn buy(
    server: &Server<OrderStore>,
    catalogs: &Mutex<Peers>,
    order_id: String,
    book: u32,
) -> Result<(Order, Book), BookError> {
    // 1. The catalog sells the copy (once per order id).
    let settings = &server.ctx.config.bookstore;
    let command = Command::Buy {
        order_id: order_id.clone(),
        book,
        restock: settings.restock,
        now_ms: now_ms(),
    };
    let deadline = Duration::from_millis(settings.deadline_ms / 2);
    let per_try = Duration::from_millis(settings.timeout_ms);
    let request = CatalogRequest::Apply { command };
    let sold = call(
        &server.ctx,
        catalogs,
        "catalog",
        &request,
        true,
        per_try,
        deadline,
    )
    .await?;
    let CatalogReply::Outcome {
        outcome: Outcome::Bought { order, book, .. },
    } = sold
    else {
        return Err(BookError::Storage(format!(
            "unexpected catalog answer {sold:?}"
        )));
    };
    // 2. Record the order (once per order id).
    let recorded = server.engine.apply(OrderCommand::Record { order }).await?;
    let recorded =
        recorded.ok_or_else(|| BookError::Storage("a record without its order".into()))?;
    Ok((recorded.order, book))
}

/// Sales read per call of the reconciler at most.
const SALES_PAGE: usize = 2000;

/// On the order leader, every second: read the catalog's sales after the
/// reconciled mark and record the order of each sale that has none —
/// unless that sale was seen only now (its buy is most likely finishing:
/// it gets one pass to do so; recording it twice would be harmless, as a
/// record is idempotent by order id and carries the sale's own order). The
/// mark then moves to just before the first sale still without its order,
/// replicated, so a new leader goes on from there.
///
/// So a sale never stays without its order, whoever gave up on the buy,
/// and the buy itself is two writes (the sale, the order), not three.
fn spawn_reconciler(tasks: &TaskTracker, server: Server<OrderStore>, catalogs: Arc<Mutex<Peers>>) {
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Sales seen without an order in the previous pass.
        let mut seen: std::collections::HashSet<String> = Default::default();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = server.ctx.shutdown.cancelled() => return,
            }
            if server.replicas.leader().as_deref() != Some(server.ctx.id()) {
                seen.clear();
                continue;
            }
            match reconcile(&server, &catalogs, &mut seen).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    orders = n,
                    "recorded the orders of sales whose buy was given up"
                ),
                Err(e) => tracing::debug!(error = %e, "cannot reconcile orders with sales now"),
            }
        }
    });
}

/// One pass of the reconciler; returns the orders it recorded.
async fn reconcile(
    server: &Server<OrderStore>,
    catalogs: &Mutex<Peers>,
    seen: &mut std::collections::HashSet<String>,
) -> Result<usize, BookError> {
    let settings = &server.ctx.config.bookstore;
    let per_try = Duration::from_millis(settings.timeout_ms);
    let mut recorded = 0;
    loop {
        let mark = server.engine.read(|s| s.reconciled()).await?;
        let request = CatalogRequest::SalesAfter {
            after: mark,
            limit: SALES_PAGE as u32,
        };
        let reply = call(
            &server.ctx,
            catalogs,
            "catalog",
            &request,
            false,
            per_try,
            per_try * 2,
        )
        .await?;
        let CatalogReply::Placed { sales } = reply else {
            return Err(BookError::Storage(format!(
                "unexpected catalog answer {reply:?}"
            )));
        };
        let full = sales.len() == SALES_PAGE;
        let ids: Vec<String> = sales.iter().map(|(_, o)| o.order_id.clone()).collect();
        let missing: std::collections::HashSet<String> = server
            .engine
            .read(move |s| s.missing(&ids))
            .await?
            .into_iter()
            .collect();
        let mut upto = mark;
        let mut waiting = false;
        let mut now_seen = std::collections::HashSet::new();
        for (place, order) in sales {
            if missing.contains(&order.order_id) {
                if seen.contains(&order.order_id) {
                    let id = order.order_id.clone();
                    server.engine.apply(OrderCommand::Record { order }).await?;
                    tracing::debug!(order = %id, "recorded the order of an abandoned buy");
                    recorded += 1;
                } else {
                    now_seen.insert(order.order_id);
                    waiting = true;
                }
            }
            if !waiting {
                upto = place;
            }
        }
        *seen = now_seen;
        if upto > mark {
            server
                .engine
                .apply(OrderCommand::Reconciled { upto })
                .await?;
        }
        if !full || waiting {
            return Ok(recorded);
        }
    }
}

/// Calls `service` on the replicas `peers` sees alive, in turn, until one
/// answers (an answer may be an error of the request itself, e.g. 404) or
/// `deadline` passes. A replica that does not answer within `per_try`, or
/// says it cannot serve, is skipped for the next one.
pub async fn call<Q, A>(
    ctx: &NodeContext,
    peers: &Mutex<Peers>,
    service: &str,
    request: &Q,
    primary_first: bool,
    per_try: Duration,
    deadline: Duration,
) -> Result<A, BookError>
where
    Q: Serialize,
    A: DeserializeOwned,
{
    let started = tokio::time::Instant::now();
    let give_up = started + deadline;
    let mut last = format!("no {service} replica is alive");
    // While no replica beats at all, wait one try's time for one, not the
    // whole deadline: with every replica down the answer is 503, soon.
    let mut none_since: Option<tokio::time::Instant> = None;
    loop {
        let candidates = peers.lock().candidates(service, primary_first, now_ms());
        if candidates.is_empty() {
            let since = *none_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= per_try {
                return Err(BookError::Unavailable(format!(
                    "no {service} replica is alive (none has sent a heartbeat lately)"
                )));
            }
        } else {
            none_since = None;
        }
        for node in candidates {
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match ctx
                .bus
                .request(service, &node, "request", request, per_try.min(left))
                .await
            {
                Ok(reply) => match reply.body_as::<Result<A, BookError>>() {
                    Ok(Err(BookError::Unavailable(why))) => last = format!("{node}: {why}"),
                    Ok(answer) => return answer,
                    Err(e) => last = format!("{node} answered nonsense: {e}"),
                },
                Err(e) => {
                    peers.lock().failed(&node, now_ms());
                    last = format!("{node}: {e}");
                }
            }
        }
        if tokio::time::Instant::now() >= give_up {
            return Err(BookError::Unavailable(format!(
                "no {service} replica could serve within {} ms (last: {last})",
                deadline.as_millis()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Feeds `peers` with the catalog and order servers' beats.
pub async fn spawn_peer_watch(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    peers: Arc<Mutex<Peers>>,
) -> Result<(), StartError> {
    let mut beats = ctx
        .bus
        .subscribe(&ctx.bus.topics().service("bookstore", "beat/+"))
        .await?;
    let stop = ctx.shutdown.clone();
    tasks.spawn(async move {
        loop {
            let m = tokio::select! {
                m = beats.recv() => m,
                _ = stop.cancelled() => return,
            };
            let Some(m) = m else { return };
            if let Ok(beat) = m.envelope.body_as::<Beat>() {
                peers.lock().on_beat(beat, now_ms());
            }
        }
    });
    Ok(())
}

type Snapshot = (
    super::model::Digest,
    Vec<super::model::Book>,
    Vec<super::model::Ledger>,
);

/// Beats every `bookstore.heartbeat_ms`; the digest and books are read
/// from the store at most every 500 ms (cheap, but not free).
fn spawn_beats<S: LogStore>(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    service: &'static str,
    engine: Engine<S>,
    replicas: Replicas,
    counters: Counters,
    read: fn(&mut S) -> Result<Snapshot, S::Error>,
) {
    let ctx = ctx.clone();
    let period = Duration::from_millis(ctx.config.bookstore.heartbeat_ms);
    let topic = ctx
        .bus
        .topics()
        .service("bookstore", &format!("beat/{}", ctx.id()));
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut snapshot: Option<(Snapshot, tokio::time::Instant)> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = ctx.shutdown.cancelled() => return,
            }
            let stale = snapshot
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() >= Duration::from_millis(500));
            if stale && let Ok(s) = engine.read(read).await {
                snapshot = Some((s, tokio::time::Instant::now()));
            }
            let status = replicas.status();
            let (digest, books, ledger) = snapshot
                .as_ref()
                .map(|(s, _)| s.clone())
                .unwrap_or_default();
            let beat = Beat {
                node: ctx.id().to_owned(),
                service: service.to_owned(),
                state: status.role.as_str().to_owned(),
                serving: status.leader.is_some(),
                leader: status.leader,
                term: status.term,
                commit: status.commit,
                applied: status.applied,
                digest,
                books,
                ledger,
                requests: counters.get().0,
                failed: counters.get().1,
            };
            ctx.bus.publish_lossy(
                &topic,
                &ctx.bus
                    .envelope("beat", serde_json::to_value(&beat).unwrap_or_default()),
            );
        }
    });
}
