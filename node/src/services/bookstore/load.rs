//! The load client: N concurrent clients × R rounds of the seed's client
//! loop against a frontend over HTTP, with per-operation throughput and
//! latency quantiles.
//!
//! A round is the seed's: pick a topic at random and `GET /search` it, pick
//! one of the books found at random and `GET /lookup` it, then `GET /buy`
//! it. A request fails when the connection fails or times out, the status is
//! not 2xx, the body is not the expected JSON, or its `status` is not
//! `"Success"`; a client counts the failure and goes on (if the search
//! failed, it looks up and buys a random id in `1..=7`).
//!
//! [`run`] drives the clients (one keep-alive connection each, made again
//! after an I/O error) and records into a [`Progress`] that a dashboard can
//! [`snapshot`](Progress::snapshot) at any time while it runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::api::{Bought, Failed, Items};
use super::model::Book;
use crate::http1::Http1;

/// The seed's topics; a round searches one of them.
pub const TOPICS: [&str; 2] = ["distributed systems", "graduate school"];

/// The ids a round falls back on when its search failed (the seed's catalog).
const FALLBACK_IDS: std::ops::RangeInclusive<u32> = 1..=7;

/// How many distinct error messages a report keeps.
pub const MAX_ERRORS: usize = 5;

/// The longest piece of an unexpected reply quoted in an error message.
const MAX_QUOTE: usize = 120;

/// Pause after a failed connect, so a client facing a closed port does not
/// spin through its rounds.
const CONNECT_BACKOFF: Duration = Duration::from_millis(20);

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// The frontend's HTTP address.
    pub addr: SocketAddr,
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// Rounds (search → lookup → buy) per client.
    pub rounds: usize,
    /// Client `i` draws its choices from a generator seeded by `seed` and `i`.
    pub seed: u64,
    /// A request (connect included) taking longer fails, and its connection
    /// is dropped.
    pub timeout: Duration,
    /// Where to record every request as an operation (search, lookup, buy).
    pub history: Option<crate::history::History>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8083)),
            clients: 4,
            rounds: 100,
            seed: 1,
            timeout: Duration::from_secs(10),
            history: None,
        }
    }
}

/// One of the frontend's operations.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Search,
    Lookup,
    Buy,
}

impl Op {
    pub const ALL: [Op; 3] = [Op::Search, Op::Lookup, Op::Buy];

    pub fn name(self) -> &'static str {
        match self {
            Op::Search => "search",
            Op::Lookup => "lookup",
            Op::Buy => "buy",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One operation's figures. Latencies are of successful requests only, in
/// milliseconds (recorded in microseconds); `per_sec` = `ok` / elapsed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OpStats {
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub per_sec: f64,
}

/// A load run so far (or in the end).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadReport {
    pub clients: usize,
    /// Rounds per client.
    pub rounds: usize,
    /// Rounds finished, over all clients (failed requests included).
    pub rounds_done: u64,
    pub elapsed_s: f64,
    pub running: bool,
    pub search: OpStats,
    pub lookup: OpStats,
    pub buy: OpStats,
    /// The first [`MAX_ERRORS`] distinct error messages, `"<op>: <what>"`.
    pub errors: Vec<String>,
}

impl LoadReport {
    pub fn op(&self, op: Op) -> &OpStats {
        match op {
            Op::Search => &self.search,
            Op::Lookup => &self.lookup,
            Op::Buy => &self.buy,
        }
    }

    /// Failed requests over all operations.
    pub fn failed(&self) -> u64 {
        Op::ALL.iter().map(|&op| self.op(op).failed).sum()
    }

    /// A table for people: a summary line, one row per operation, then the
    /// errors kept.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let total = self.clients as u64 * self.rounds as u64;
        let state = if self.running { "running" } else { "finished" };
        let mut out = format!(
            "{} clients x {} rounds: {}/{} rounds in {:.2} s, {state}\n",
            self.clients, self.rounds, self.rounds_done, total, self.elapsed_s
        );
        writeln!(
            out,
            "{:<8}{:>9}{:>8}{:>10}{:>9}{:>9}{:>9}{:>9}",
            "op", "ok", "failed", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"
        )
        .expect("writing to a String");
        for op in Op::ALL {
            let s = self.op(op);
            writeln!(
                out,
                "{:<8}{:>9}{:>8}{:>10.1}{:>9.2}{:>9.2}{:>9.2}{:>9.2}",
                op.name(),
                s.ok,
                s.failed,
                s.per_sec,
                s.p50_ms,
                s.p90_ms,
                s.p99_ms,
                s.max_ms
            )
            .expect("writing to a String");
        }
        if !self.errors.is_empty() {
            writeln!(out, "errors (first {} distinct):", self.errors.len())
                .expect("writing to a String");
            for e in &self.errors {
                writeln!(out, "  {e}").expect("writing to a String");
            }
        }
        out
    }
}

/// Live progress of a run, shared with whoever shows it: clone it, pass one
/// clone to [`run`], and call [`snapshot`](Self::snapshot) on another from
/// any thread. Each request takes the lock once, briefly.
#[derive(Clone, Default)]
pub struct Progress {
    inner: Arc<parking_lot::Mutex<Tally>>,
}

#[derive(Default)]
struct Tally {
    clients: usize,
    rounds: usize,
    rounds_done: u64,
    started: Option<Instant>,
    /// Set when the run ended: the elapsed time stops there.
    finished: Option<Duration>,
    ops: [OpTally; 3],
    errors: Vec<String>,
}

struct OpTally {
    ok: u64,
    failed: u64,
    /// Microseconds, successful requests only.
    latency: Histogram<u64>,
}

impl Default for OpTally {
    fn default() -> Self {
        Self {
            ok: 0,
            failed: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }
}

impl OpTally {
    fn stats(&self, elapsed_s: f64) -> OpStats {
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &self.latency;
        OpStats {
            ok: self.ok,
            failed: self.failed,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            per_sec: if elapsed_s > 0.0 {
                self.ok as f64 / elapsed_s
            } else {
                0.0
            },
        }
    }
}

impl Progress {
    /// The figures now (while running: up to now).
    pub fn snapshot(&self) -> LoadReport {
        let t = self.lock();
        let elapsed = match (t.finished, t.started) {
            (Some(d), _) => d,
            (None, Some(s)) => s.elapsed(),
            (None, None) => Duration::ZERO,
        };
        let elapsed_s = elapsed.as_secs_f64();
        let [search, lookup, buy] = &t.ops;
        LoadReport {
            clients: t.clients,
            rounds: t.rounds,
            rounds_done: t.rounds_done,
            elapsed_s,
            running: t.started.is_some() && t.finished.is_none(),
            search: search.stats(elapsed_s),
            lookup: lookup.stats(elapsed_s),
            buy: buy.stats(elapsed_s),
            errors: t.errors.clone(),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Tally> {
        self.inner.lock()
    }

    /// Forgets any earlier run and starts the clock.
    fn start(&self, clients: usize, rounds: usize) {
        *self.lock() = Tally {
            clients,
            rounds,
            started: Some(Instant::now()),
            ..Tally::default()
        };
    }

    fn finish(&self) {
        let mut t = self.lock();
        let elapsed = t.started.map(|s| s.elapsed()).unwrap_or_default();
        t.finished = Some(elapsed);
    }

    fn ok(&self, op: Op, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut t = self.lock();
        let o = &mut t.ops[op.index()];
        o.ok += 1;
        o.latency.saturating_record(us);
    }

    fn failed(&self, op: Op, error: String) {
        let mut t = self.lock();
        t.ops[op.index()].failed += 1;
        if t.errors.len() < MAX_ERRORS && !t.errors.contains(&error) {
            t.errors.push(error);
        }
    }

    fn round_done(&self) {
        self.lock().rounds_done += 1;
    }
}

/// Runs `opts.clients` clients of `opts.rounds` rounds each against
/// `opts.addr`, recording into `progress` (reset first). Returns when every
/// client is done or `stop` is cancelled (requests in flight are then
/// abandoned, uncounted); the report has `running: false`.
pub async fn run(opts: LoadOptions, progress: Progress, stop: CancellationToken) -> LoadReport {
    progress.start(opts.clients, opts.rounds);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..opts.clients {
        let client = Client {
            addr: opts.addr,
            timeout: opts.timeout,
            conn: None,
            rng: fastrand::Rng::with_seed(client_seed(opts.seed, i)),
            progress: progress.clone(),
            history: opts.history.clone().map(|h| {
                let p = h.process();
                (h, p)
            }),
        };
        clients.spawn(client.run(opts.rounds, stop.clone()));
    }
    while let Some(done) = clients.join_next().await {
        if let Err(e) = done {
            tracing::warn!("a load client ended abnormally: {e}");
        }
    }
    progress.finish();
    progress.snapshot()
}

/// Distinct, well-spread seeds for the clients of one run.
fn client_seed(seed: u64, client: usize) -> u64 {
    seed ^ (client as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

struct Client {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<Http1>,
    rng: fastrand::Rng,
    progress: Progress,
    /// The history it records into, and its process there.
    history: Option<(crate::history::History, u64)>,
}

impl Client {
    async fn run(mut self, rounds: usize, stop: CancellationToken) {
        for _ in 0..rounds {
            tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                _ = self.round() => self.progress.round_done(),
            }
        }
    }

    async fn round(&mut self) {
        let topic = TOPICS[self.rng.usize(..TOPICS.len())];
        let found = self
            .call(
                Op::Search,
                &format!("/search?topic={}", crate::http1::query_value(topic)),
            )
            .await;
        let id = match found.as_deref() {
            Some(books) if !books.is_empty() => books[self.rng.usize(..books.len())].id,
            _ => self.rng.u32(FALLBACK_IDS),
        };
        self.call(Op::Lookup, &format!("/lookup?id={id}")).await;
        self.call(Op::Buy, &format!("/buy?id={id}")).await;
    }

    /// One request, counted; the books of a successful search or lookup.
    async fn call(&mut self, op: Op, path: &str) -> Option<Vec<Book>> {
        use crate::history::OpType;
        let start = Instant::now();
        let argument = path.split_once('=').map_or("", |(_, v)| v).to_owned();
        let pending = self
            .history
            .as_ref()
            .map(|(h, p)| h.invoke(*p, op.name(), serde_json::Value::String(argument.clone())));
        // A read that failed did nothing; a buy without a clear answer may
        // still have happened.
        let unsure = if op == Op::Buy {
            OpType::Info
        } else {
            OpType::Fail
        };
        let reply = match tokio::time::timeout(self.timeout, self.request(path)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.conn = None;
                self.progress.failed(op, format!("{op}: {e}"));
                self.record(pending, unsure, serde_json::Value::String(e.to_string()));
                return None;
            }
            Err(_) => {
                // The reply may still come: this connection is out of step.
                self.conn = None;
                let error = format!("{op}: no reply within {:?}", self.timeout);
                self.progress.failed(op, error);
                self.record(pending, unsure, serde_json::Value::Null);
                // Its request may still be in flight: a new process from now.
                if let Some((h, p)) = &mut self.history {
                    *p = h.process();
                }
                return None;
            }
        };
        let latency = start.elapsed();
        match check(op, reply.0, &reply.1) {
            Ok(books) => {
                self.progress.ok(op, latency);
                let ids: Vec<u32> = books.iter().map(|b| b.id).collect();
                self.record(pending, OpType::Ok, serde_json::json!(ids));
                Some(books)
            }
            Err(e) => {
                self.progress.failed(op, format!("{op}: {e}"));
                let kind = if reply.0 == 503 { unsure } else { OpType::Fail };
                self.record(pending, kind, serde_json::Value::String(e.to_string()));
                None
            }
        }
    }

    fn record(
        &self,
        pending: Option<crate::history::Pending>,
        kind: crate::history::OpType,
        value: serde_json::Value,
    ) {
        if let (Some((h, _)), Some(p)) = (&self.history, pending) {
            h.complete(p, kind, value);
        }
    }

    /// Sends on this client's connection, connecting first if it has none.
    async fn request(&mut self, path: &str) -> std::io::Result<(u16, String)> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => match Http1::connect(self.addr).await {
                Ok(c) => self.conn.insert(c),
                Err(e) => {
                    tokio::time::sleep(CONNECT_BACKOFF).await;
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot connect to {}: {e}", self.addr),
                    ));
                }
            },
        };
        conn.request("GET", path, None, None).await
    }
}

/// Why a reply counts as failed (recorded, as text, in the load report).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ReplyFailure {
    /// Not 2xx; the frontend's `message`, else the start of the body.
    #[error("HTTP {status}: {message}")]
    Status { status: u16, message: String },
    /// 2xx, but the seed's `status` field is not "Success".
    #[error("HTTP {status}: status `{field}`{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    NotSuccess {
        status: u16,
        field: String,
        message: String,
    },
    /// 2xx, but not the seed's shape.
    #[error("HTTP {status}: unexpected reply ({why}): {body}")]
    Shape {
        status: u16,
        why: String,
        body: String,
    },
}

/// Judges a reply: the books of a search or lookup (none for a buy), or why
/// it counts as failed.
fn check(op: Op, status: u16, body: &str) -> Result<Vec<Book>, ReplyFailure> {
    if !(200..300).contains(&status) {
        let message = match serde_json::from_str::<Failed>(body) {
            Ok(f) => f.message,
            Err(_) => quote(body),
        };
        return Err(ReplyFailure::Status { status, message });
    }
    let parsed = match op {
        Op::Search | Op::Lookup => {
            serde_json::from_str::<Items>(body).map(|r| (r.status, r.message, r.item))
        }
        Op::Buy => serde_json::from_str::<Bought>(body).map(|r| (r.status, r.message, Vec::new())),
    };
    match parsed {
        Ok((s, _, books)) if s == "Success" => Ok(books),
        Ok((field, message, _)) => Err(ReplyFailure::NotSuccess {
            status,
            field,
            message,
        }),
        Err(e) => Err(ReplyFailure::Shape {
            status,
            why: e.to_string(),
            body: quote(body),
        }),
    }
}

/// The start of `body`, on one line.
fn quote(body: &str) -> String {
    let one_line = body.trim().replace(['\r', '\n'], " ");
    match one_line.char_indices().nth(MAX_QUOTE) {
        Some((cut, _)) => format!("{}…", &one_line[..cut]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    use axum::Json;
    use axum::Router;
    use axum::extract::{Query, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use tokio::sync::Notify;

    use super::*;
    use crate::services::bookstore::api;
    use crate::services::bookstore::model::{BookError, CatalogFile};

    /// A frontend stand-in over the built-in catalog, with counters.
    #[derive(Clone, Default)]
    struct Stub {
        /// Every buy answers 503.
        fail_buy: bool,
        /// Every lookup answers 200 with a body that is not JSON.
        bad_lookup: bool,
        /// The n-th buy (1-based) and all later ones never answer.
        hang_buys_from: Option<u64>,
        seen: Arc<Seen>,
    }

    #[derive(Default)]
    struct Seen {
        searches: AtomicU64,
        lookups: AtomicU64,
        buys: AtomicU64,
        topics: Mutex<Vec<String>>,
        bought: Mutex<Vec<u32>>,
        hung: Notify,
    }

    fn books() -> Vec<Book> {
        CatalogFile::built_in().initial_books()
    }

    fn book(params: &HashMap<String, String>) -> Result<Book, BookError> {
        let id = api::id_param(params)?;
        books()
            .into_iter()
            .find(|b| b.id == id)
            .ok_or(BookError::UnknownBook(id))
    }

    fn reply<T: Serialize>(r: Result<T, BookError>) -> Response {
        match r {
            Ok(v) => (StatusCode::OK, Json(v)).into_response(),
            Err(e) => {
                let status = StatusCode::from_u16(e.status()).unwrap();
                (status, Json(api::failed(&e))).into_response()
            }
        }
    }

    async fn search(State(s): State<Stub>, Query(q): Query<HashMap<String, String>>) -> Response {
        s.seen.searches.fetch_add(1, Ordering::SeqCst);
        reply(api::topic_param(&q).and_then(|t| {
            s.seen.topics.lock().unwrap().push(t.clone());
            api::search(&books(), &t).map(api::items)
        }))
    }

    async fn lookup(State(s): State<Stub>, Query(q): Query<HashMap<String, String>>) -> Response {
        s.seen.lookups.fetch_add(1, Ordering::SeqCst);
        if s.bad_lookup {
            return (StatusCode::OK, "oops").into_response();
        }
        reply(book(&q).map(|b| api::items(vec![b])))
    }

    async fn buy(State(s): State<Stub>, Query(q): Query<HashMap<String, String>>) -> Response {
        let n = s.seen.buys.fetch_add(1, Ordering::SeqCst) + 1;
        if s.hang_buys_from.is_some_and(|from| n >= from) {
            s.seen.hung.notify_one();
            std::future::pending::<()>().await;
        }
        if s.fail_buy {
            return reply::<Bought>(Err(BookError::Unavailable(
                "no replica can serve the buy".into(),
            )));
        }
        reply(book(&q).map(|b| {
            s.seen.bought.lock().unwrap().push(b.id);
            api::bought(&b)
        }))
    }

    async fn serve(stub: Stub) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/search", get(search))
            .route("/lookup", get(lookup))
            .route("/buy", get(buy))
            .with_state(stub);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        addr
    }

    fn options(addr: SocketAddr, clients: usize, rounds: usize) -> LoadOptions {
        LoadOptions {
            addr,
            clients,
            rounds,
            seed: 7,
            timeout: Duration::from_secs(3600),
            history: None,
        }
    }

    #[tokio::test]
    async fn every_request_is_an_operation_of_the_history() {
        use crate::history::{Actor, History, OpType};
        let addr = serve(Stub::default()).await;
        let history = History::new();
        let opts = LoadOptions {
            history: Some(history.clone()),
            ..options(addr, 2, 5)
        };
        run(opts, Progress::default(), CancellationToken::new()).await;
        let ops = history.ops();
        assert_eq!(ops.len(), 2 * 5 * 3 * 2, "an invoke and an ok per request");
        let processes: std::collections::BTreeSet<Actor> = ops.iter().map(|o| o.process).collect();
        assert_eq!(processes.len(), 2, "one process per client");
        for f in ["search", "lookup", "buy"] {
            let of: Vec<_> = ops.iter().filter(|o| o.f == f).collect();
            assert_eq!(of.len(), 20, "{f}");
            assert_eq!(
                of.iter().filter(|o| o.kind == OpType::Ok).count(),
                10,
                "{f}"
            );
        }
        let buy = ops
            .iter()
            .find(|o| o.f == "buy" && o.kind == OpType::Ok)
            .unwrap();
        assert!(buy.value.is_array(), "{buy:?}");
    }

    #[tokio::test]
    async fn every_round_searches_looks_up_and_buys() {
        let stub = Stub::default();
        let addr = serve(stub.clone()).await;
        let progress = Progress::default();
        let report = run(
            options(addr, 4, 10),
            progress.clone(),
            CancellationToken::new(),
        )
        .await;
        for op in Op::ALL {
            let s = report.op(op);
            assert_eq!((s.ok, s.failed), (40, 0), "{op}: {report:?}");
            assert!(s.p50_ms <= s.p90_ms && s.p90_ms <= s.p99_ms && s.p99_ms <= s.max_ms);
            assert!(s.max_ms > 0.0 && s.per_sec > 0.0);
        }
        assert_eq!(report.rounds_done, 40);
        assert_eq!(report.failed(), 0);
        assert!(report.errors.is_empty());
        assert!(!report.running);
        assert_eq!(stub.seen.searches.load(Ordering::SeqCst), 40);
        assert_eq!(stub.seen.lookups.load(Ordering::SeqCst), 40);
        assert_eq!(stub.seen.buys.load(Ordering::SeqCst), 40);
        // The space in a topic arrived intact, and both topics came up.
        let topics = stub.seen.topics.lock().unwrap().clone();
        for t in TOPICS {
            assert!(topics.iter().any(|s| s == t), "{t} in {topics:?}");
        }
        assert!(
            stub.seen
                .bought
                .lock()
                .unwrap()
                .iter()
                .all(|id| FALLBACK_IDS.contains(id))
        );
        assert_eq!(progress.snapshot(), report);

        let table = report.render();
        for op in Op::ALL {
            assert!(table.contains(op.name()), "{table}");
        }
        assert!(table.contains("40/40 rounds"), "{table}");
    }

    #[tokio::test]
    async fn failed_buys_are_counted_and_their_message_kept() {
        let stub = Stub {
            fail_buy: true,
            ..Stub::default()
        };
        let addr = serve(stub.clone()).await;
        let report = run(
            options(addr, 2, 5),
            Progress::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!((report.buy.ok, report.buy.failed), (0, 10));
        assert_eq!((report.search.ok, report.lookup.ok), (10, 10));
        assert_eq!(report.failed(), 10);
        assert_eq!(report.rounds_done, 10);
        assert_eq!(
            report.errors,
            ["buy: HTTP 503: no replica can serve the buy"]
        );
        assert_eq!(report.buy.max_ms, 0.0);
        assert!(report.render().contains("no replica can serve the buy"));
    }

    #[tokio::test]
    async fn a_reply_that_is_not_json_fails() {
        let stub = Stub {
            bad_lookup: true,
            ..Stub::default()
        };
        let addr = serve(stub).await;
        let report = run(
            options(addr, 1, 3),
            Progress::default(),
            CancellationToken::new(),
        )
        .await;
        assert_eq!((report.lookup.ok, report.lookup.failed), (0, 3));
        assert_eq!((report.search.ok, report.buy.ok), (3, 3));
        assert_eq!(report.errors.len(), 1);
        assert!(report.errors[0].starts_with("lookup: HTTP 200: unexpected reply"));
        assert!(report.errors[0].ends_with("oops"));
    }

    #[tokio::test]
    async fn dropped_connections_fail_and_are_made_again() {
        // Accepts every connection and closes it at once.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                drop(socket);
            }
        });
        let report = run(
            options(addr, 2, 3),
            Progress::default(),
            CancellationToken::new(),
        )
        .await;
        for op in Op::ALL {
            assert_eq!((report.op(op).ok, report.op(op).failed), (0, 6), "{op}");
        }
        assert_eq!(report.rounds_done, 6);
        assert!(!report.errors.is_empty() && report.errors.len() <= MAX_ERRORS);
        // Every connect worked: each failure was on a connection made again.
        assert!(
            report.errors.iter().all(|e| !e.contains("cannot connect")),
            "{:?}",
            report.errors
        );
    }

    #[tokio::test]
    async fn cancelling_stops_early_and_keeps_what_was_done() {
        let stub = Stub {
            hang_buys_from: Some(5),
            ..Stub::default()
        };
        let addr = serve(stub.clone()).await;
        let progress = Progress::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(options(addr, 1, 1000), progress.clone(), stop.clone()));
        stub.seen.hung.notified().await;

        let live = progress.snapshot();
        assert!(live.running);
        assert_eq!((live.rounds_done, live.buy.ok), (4, 4));
        assert!(live.render().contains("running"));

        stop.cancel();
        let report = task.await.unwrap();
        assert!(!report.running);
        assert_eq!(report.rounds_done, 4);
        assert_eq!(
            (report.search.ok, report.lookup.ok, report.buy.ok),
            (5, 5, 4)
        );
        assert_eq!(report.failed(), 0);
        assert!(report.render().contains("finished"));
    }

    #[test]
    fn replies_are_judged() {
        let found = serde_json::to_string(&api::items(books())).unwrap();
        assert_eq!(check(Op::Search, 200, &found).unwrap().len(), 7);
        let not_success = found.replace("Success", "Pending");
        assert!(
            check(Op::Lookup, 200, &not_success)
                .unwrap_err()
                .to_string()
                .contains("status `Pending`")
        );
        let bought = serde_json::to_string(&api::bought(&books()[0])).unwrap();
        assert_eq!(check(Op::Buy, 200, &bought), Ok(Vec::new()));
        // A buy reply is not a search reply.
        assert!(check(Op::Search, 200, &bought).is_err());
        assert_eq!(
            check(Op::Buy, 502, "<html>\nBad Gateway\n</html>")
                .unwrap_err()
                .to_string(),
            "HTTP 502: <html> Bad Gateway </html>"
        );
        assert_eq!(quote(&"é".repeat(200)).chars().count(), MAX_QUOTE + 1);
        assert_eq!(
            crate::http1::query_value("distributed systems"),
            "distributed%20systems"
        );
    }

    #[test]
    fn a_report_is_empty_before_any_run() {
        let report = Progress::default().snapshot();
        assert_eq!(report, LoadReport::default());
        assert!(report.render().contains("0/0 rounds"));
    }
}
