//! The `facade` role: the seed's Django facade on `[maplog] http`.
//!
//! - `GET /polls/`: the message form; `POST /polls/` (field `msg`, at most
//!   100 characters): the message gets a unique id and goes to the loggers
//!   in random order until one answers `Logged` (the owner and its backups
//!   hold it); then a redirect to `/polls/thanks`, else `/polls/error`. The
//!   seed counted any reply, even "Message not logged", as logged; an
//!   invalid form is a 400 that says why (the seed's crashed).
//! - `GET /polls/database`: every logged message, from a logger tried in
//!   random order; `/polls/messages`: `GET /messages/` of a `messages` node
//!   at random (the others if it fails), found by their telemetry;
//!   `/polls/thanks`, `/polls/error`, `/polls/help`: the seed's texts.
//! - Each logged message is also copied to the MOM queue [`MESSAGES_QUEUE`]
//!   (durable, created if missing), off the request path: a bounded
//!   in-memory [`Outbox`] that a background task publishes in order,
//!   retrying with a back-off, so a MOM outage never slows or fails a POST.
//!   A copy may be published twice (a retried publish); the messages nodes
//!   store each id once. What is still in the outbox at shutdown is lost.
//!
//! [`QueueLink`] (one node's MOM user and one queue) serves the facade and
//! the `messages` nodes alike.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{any, get};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::model::{LOGGER_SERVICE, LogAnswer, LogRequest};
use crate::config::Role;
use crate::presence::{MemberState, Membership};
use crate::runtime::NodeContext;
use crate::services::StartError;
use crate::services::lockers::link::MomLink;
use crate::services::mom::client::ClientError;
use crate::services::mom::model::Delivery;

/// The seed's form field was a `CharField(max_length=100)`.
pub const MAX_MSG: usize = 100;

pub const THANKS: &str = "Thank's for the message!";
pub const ERROR: &str = "Message was not logged...";
pub const HELP: &str =
    "Welcome! go to polls/message to store a message, polls/database to see all messages";
pub const NO_MESSAGES: &str = "Failed to connect to messages....";
pub const UNSUPPORTED: &str = "Unsupported request method";

/// The MOM queue each logged message is copied to (a [`Copied`] as JSON).
pub const MESSAGES_QUEUE: &str = "messages";
/// Copies the outbox holds at most while the MOM is away; beyond, new
/// copies are dropped (and counted).
pub const OUTBOX_MAX: usize = 10_000;
/// Copies published in one request.
const PUBLISH_BATCH: usize = 200;
/// A messages node counts as there if it reported within this.
const MESSAGES_FRESH: Duration = Duration::from_secs(3);
/// How long one messages node may take to answer `GET /messages/`.
const MESSAGES_DEADLINE: Duration = Duration::from_secs(2);

/// A logged message as the facade copies it to [`MESSAGES_QUEUE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Copied {
    pub uuid: String,
    pub msg: String,
}

#[derive(Clone)]
struct Facade {
    ctx: NodeContext,
    loggers: Arc<Vec<String>>,
    deadline: Duration,
    logged: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Who is up, from presence and heartbeats: a dead logger is tried
    /// last (the bus cannot refuse a connection as the seed's HTTP did).
    membership: Arc<Mutex<Membership>>,
    /// The messages nodes' HTTP, from their telemetry.
    messages: Arc<Mutex<MessagesNodes>>,
    /// Copies waiting for the MOM; `None` without a MOM in the lab.
    outbox: Option<Arc<Mutex<Outbox>>>,
    wake: Arc<Notify>,
}

#[derive(Serialize)]
struct Telemetry {
    http: SocketAddr,
    logged: u64,
    failed: u64,
    /// Logged messages whose copy waits in the outbox for the MOM.
    queued_for_messages: u64,
    /// Copies dropped because the outbox was full.
    dropped_for_messages: u64,
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let loggers = ctx.config.nodes_with(Role::Logger);
    if loggers.is_empty() {
        return Err(StartError::Setup(
            "the facade needs logger nodes in the lab config",
        ));
    }
    let link = QueueLink::new(&ctx, MESSAGES_QUEUE, false);
    if link.is_none() {
        tracing::warn!(
            "the lab has no `mom` node: logged messages are not copied to the queue `{MESSAGES_QUEUE}`"
        );
    }
    let facade = Facade {
        loggers: Arc::new(loggers),
        deadline: Duration::from_millis(ctx.config.maplog.deadline_ms),
        logged: Arc::default(),
        failed: Arc::default(),
        membership: Arc::new(Mutex::new(Membership::new(ctx.bus.topics().clone()))),
        messages: Arc::default(),
        outbox: link
            .as_ref()
            .map(|_| Arc::new(Mutex::new(Outbox::new(OUTBOX_MAX)))),
        wake: Arc::default(),
        ctx: ctx.clone(),
    };
    let mut filters = facade.membership.lock().filters().to_vec();
    filters.push(ctx.bus.topics().telemetry("+", "messages"));
    let mut heard = ctx.bus.subscribe_all(&filters).await?;
    let (f, stop) = (facade.clone(), ctx.shutdown.clone());
    tasks.spawn(async move {
        loop {
            let m = tokio::select! {
                _ = stop.cancelled() => return,
                m = heard.recv() => m,
            };
            let Some(m) = m else { return };
            let now = Instant::now();
            if m.topic.contains("/telemetry/") {
                #[derive(Deserialize)]
                struct Reported {
                    http: SocketAddr,
                }
                if let Ok(r) = m.envelope.body_as::<Reported>() {
                    f.messages.lock().observe(&m.envelope.from, r.http, now);
                }
            } else {
                f.membership.lock().observe(&m.topic, &m.envelope, now);
            }
        }
    });
    if let (Some(link), Some(outbox)) = (link, facade.outbox.clone()) {
        let (wake, stop) = (facade.wake.clone(), ctx.shutdown.clone());
        tasks.spawn(copy_to_mom(link, outbox, wake, stop));
    }

    let (listener, bound) =
        crate::runtime::bind_http("maplog.http", ctx.config.maplog.http).await?;
    tracing::info!(http = %bound, "facade serving HTTP");
    crate::runtime::spawn_http(&ctx, tasks, listener, router(facade.clone()), "facade");
    let stats = facade;
    ctx.spawn_telemetry(tasks, "facade", Duration::from_millis(500), move || {
        let (queued, dropped) = stats.outbox.as_ref().map_or((0, 0), |o| {
            let o = o.lock();
            (o.len() as u64, o.dropped())
        });
        Telemetry {
            http: bound,
            logged: stats.logged.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            queued_for_messages: queued,
            dropped_for_messages: dropped,
        }
    });
    Ok(())
}

/// The seed's urls: `polls/` then `help`, ``, `thanks`, `error`,
/// `database`, `messages` (Django's views answer any method; `/polls`
/// without the slash, which Django redirects, is served as `/polls/`).
fn router(facade: Facade) -> axum::Router {
    axum::Router::new()
        .route("/polls/", get(form).post(post).fallback(form))
        .route("/polls", get(form).post(post).fallback(form))
        .route("/polls/thanks", any(|| async { THANKS }))
        .route("/polls/error", any(|| async { ERROR }))
        .route("/polls/help", any(|| async { HELP }))
        .route("/polls/database", get(database).fallback(unsupported))
        .route("/polls/messages", any(messages_page))
        .fallback(not_found)
        .with_state(facade)
}

/// A unique id, in the form of a random (version 4) UUID: 122 bits from
/// the OS's generator (the seed drew 31 bits, so ids collided).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        b = fastrand::u128(..).to_le_bytes();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The loggers in a random order (the seed shuffled its ports).
fn shuffled(loggers: &[String], rng: &mut fastrand::Rng) -> Vec<String> {
    let mut order = loggers.to_vec();
    rng.shuffle(&mut order);
    order
}

impl Facade {
    /// The loggers in a random order, those up first.
    fn order(&self) -> Vec<String> {
        let mut order = shuffled(&self.loggers, &mut fastrand::Rng::new());
        let m = self.membership.lock();
        let now = Instant::now();
        order.sort_by_key(|n| m.state_of(n, now) != Some(MemberState::Up));
        order
    }
}

/// The form's `msg`, cleaned as Django's `CharField(max_length=100)` does:
/// surrounding whitespace stripped, then required and at most 100
/// characters, no NUL.
pub fn check_msg(msg: Option<&str>) -> Result<String, String> {
    let msg = msg.map(str::trim).unwrap_or_default();
    let n = msg.chars().count();
    if n == 0 {
        Err("invalid form: the field `msg` is required (a message of 1 to 100 characters)".into())
    } else if n > MAX_MSG {
        Err(format!(
            "invalid form: `msg` has {n} characters, at most {MAX_MSG} are allowed"
        ))
    } else if msg.contains('\0') {
        Err("invalid form: `msg` may not contain NUL characters".into())
    } else {
        Ok(msg.to_owned())
    }
}

/// The message of a posted form (`msg=...`, URL-encoded as a browser
/// sends it; a repeated field counts by its last value, as in Django).
pub fn form_msg(content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
    if let Some(ct) = content_type {
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            return Err(format!(
                "invalid form: send it as application/x-www-form-urlencoded \
                 (e.g. `curl -d msg=hello`), not `{essence}`"
            ));
        }
    }
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| format!("invalid form: the body is not URL-encoded ({e})"))?;
    let msg = fields.iter().rev().find(|(k, _)| k == "msg");
    check_msg(msg.map(|(_, v)| v.as_str()))
}

/// The page of `GET /polls/`: Django's `{{ form }}` in a POST form.
pub fn form_page() -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Message log</title></head><body>\n\
         <form action=\"/polls/\" method=\"post\">\n\
         <label for=\"id_msg\">Your message:</label>\n\
         <input type=\"text\" name=\"msg\" maxlength=\"{MAX_MSG}\" required id=\"id_msg\">\n\
         <input type=\"submit\" value=\"Submit\">\n</form>\n\
         <p>Up to {MAX_MSG} characters; it is thanked only once the map holds it with its backups.\n\
         <a href=\"/polls/database\">All messages</a> · \
         <a href=\"/polls/messages\">the messages service's copy</a></p>\n\
         </body></html>\n"
    )
}

async fn form() -> Html<String> {
    Html(form_page())
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn post(State(f): State<Facade>, headers: HeaderMap, body: Bytes) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let msg = match form_msg(content_type, &body) {
        Ok(m) => m,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let uuid = new_id();
    let request = LogRequest::Log {
        uuid: uuid.clone(),
        msg: msg.clone(),
    };
    for logger in f.order() {
        match ask(&f, &logger, &request).await {
            Ok(LogAnswer::Logged) => {
                f.logged.fetch_add(1, Ordering::Relaxed);
                f.copy(Copied { uuid, msg });
                return redirect("/polls/thanks");
            }
            Ok(other) => tracing::warn!(%logger, ?other, "unexpected answer"),
            Err(e) => tracing::warn!(%logger, error = %e, "message not logged there"),
        }
    }
    f.failed.fetch_add(1, Ordering::Relaxed);
    redirect("/polls/error")
}

impl Facade {
    /// Queues the copy for the MOM (never waits).
    fn copy(&self, copied: Copied) {
        let Some(outbox) = &self.outbox else { return };
        let body = serde_json::to_string(&copied).unwrap_or_default();
        if outbox.lock().push(body) {
            self.wake.notify_one();
        } else {
            tracing::warn!(
                uuid = copied.uuid,
                "outbox full ({OUTBOX_MAX}): the messages service will not get this one"
            );
        }
    }
}

async fn database(State(f): State<Facade>) -> Response {
    for logger in f.order() {
        match ask(&f, &logger, &LogRequest::All).await {
            Ok(LogAnswer::All { text }) => return text.into_response(),
            Ok(other) => tracing::warn!(%logger, ?other, "unexpected answer"),
            Err(e) => tracing::warn!(%logger, error = %e, "cannot read the messages there"),
        }
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "no logger answered; try again when a logger is up",
    )
        .into_response()
}

async fn unsupported() -> &'static str {
    UNSUPPORTED
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "no such page; the facade serves /polls/ (the form), /polls/help, /polls/thanks, \
         /polls/error, /polls/database and /polls/messages",
    )
}

/// The seed's answer is 200 with its text, whatever happened.
async fn messages_page(State(f): State<Facade>) -> String {
    let order = f
        .messages
        .lock()
        .candidates(Instant::now(), &mut fastrand::Rng::new());
    for addr in order {
        match fetch_messages(addr).await {
            Ok(text) => return text,
            Err(e) => tracing::warn!(%addr, error = %e, "messages node did not answer"),
        }
    }
    NO_MESSAGES.to_owned()
}

async fn fetch_messages(addr: SocketAddr) -> Result<String, String> {
    let get = async {
        let mut c = crate::http1::Http1::connect(addr).await?;
        c.request("GET", "/messages/", None, None).await
    };
    match tokio::time::timeout(MESSAGES_DEADLINE, get).await {
        Err(_) => Err(format!("no answer within {MESSAGES_DEADLINE:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok((200, text))) => Ok(text),
        Ok(Ok((status, text))) => Err(format!("status {status}: {text}")),
    }
}

async fn ask(f: &Facade, logger: &str, request: &LogRequest) -> Result<LogAnswer, String> {
    let reply = f
        .ctx
        .bus
        .request(LOGGER_SERVICE, logger, "logger", request, f.deadline)
        .await
        .map_err(|e| e.to_string())?;
    reply
        .body_as::<Result<LogAnswer, String>>()
        .map_err(|e| format!("malformed answer: {e}"))?
}

/// The messages nodes' HTTP addresses, as their telemetry reports them.
#[derive(Debug, Default)]
pub struct MessagesNodes {
    seen: HashMap<String, (SocketAddr, Instant)>,
}

impl MessagesNodes {
    pub fn observe(&mut self, node: &str, http: SocketAddr, now: Instant) {
        self.seen.insert(node.to_owned(), (http, now));
    }

    /// The addresses of those heard from lately, in random order.
    pub fn candidates(&self, now: Instant, rng: &mut fastrand::Rng) -> Vec<SocketAddr> {
        let mut fresh: Vec<SocketAddr> = self
            .seen
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) <= MESSAGES_FRESH)
            .map(|(addr, _)| *addr)
            .collect();
        fresh.sort();
        rng.shuffle(&mut fresh);
        fresh
    }
}

/// Copies waiting for the MOM, oldest first, at most `max` of them.
#[derive(Debug)]
pub struct Outbox {
    waiting: VecDeque<String>,
    max: usize,
    dropped: u64,
}

impl Outbox {
    pub fn new(max: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            max,
            dropped: 0,
        }
    }

    /// Queues `body`; false (and counted) if the outbox is full.
    pub fn push(&mut self, body: String) -> bool {
        if self.waiting.len() >= self.max {
            self.dropped += 1;
            return false;
        }
        self.waiting.push_back(body);
        true
    }

    /// The oldest `n` copies (they stay until [`Outbox::sent`]).
    pub fn peek(&self, n: usize) -> Vec<String> {
        self.waiting.iter().take(n).cloned().collect()
    }

    /// The oldest `n` copies are durable in the MOM.
    pub fn sent(&mut self, n: usize) {
        self.waiting.drain(..n.min(self.waiting.len()));
    }

    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The pause after `failures` failed tries in a row: 200 ms doubling, at
/// most 5 s.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << failures.min(5)).min(5000))
}

/// Publishes the outbox's copies in order, in batches, until shutdown; a
/// failed publish is tried again after a back-off.
async fn copy_to_mom(
    link: QueueLink,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let batch = outbox.lock().peek(PUBLISH_BATCH);
        if batch.is_empty() {
            tokio::select! {
                _ = wake.notified() => continue,
                _ = stop.cancelled() => return,
            }
        }
        let n = batch.len();
        let published = tokio::select! {
            p = link.publish(batch) => p,
            _ = stop.cancelled() => return,
        };
        match published {
            Ok(()) => {
                tracing::trace!(n, "copies published to `{MESSAGES_QUEUE}`");
                outbox.lock().sent(n);
                failures = 0;
            }
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot copy messages to the MOM; retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures)) => {}
                    _ = stop.cancelled() => return,
                }
                failures = failures.saturating_add(1);
            }
        }
    }
}

/// A node's link to one durable MOM queue: the lockers' [`MomLink`] (its
/// own MOM user, the key in `<data dir>/mom-key-<queue>`; the queue created
/// if missing and, for a consumer, subscribed; set up again when the MOM
/// forgot either) for that one queue.
pub struct QueueLink {
    link: MomLink,
    queue: &'static str,
}

impl QueueLink {
    /// The link of this node to `queue`; `None` if the lab has no `mom` node.
    pub fn new(ctx: &NodeContext, queue: &'static str, consumer: bool) -> Option<Self> {
        let key_file = format!("mom-key-{queue}");
        Some(Self {
            link: MomLink::with_queues(ctx, &[queue], &key_file, consumer)?,
            queue,
        })
    }

    /// Whether the last call succeeded.
    pub fn is_up(&self) -> bool {
        self.link.status().up
    }

    /// Publishes `messages` in order; returns once durable.
    pub async fn publish(&self, messages: Vec<String>) -> Result<(), ClientError> {
        self.link.publish(self.queue, messages).await
    }

    /// Up to `max` messages, waiting up to `wait_ms` for the first.
    pub async fn consume(&self, max: u32, wait_ms: u64) -> Result<Vec<Delivery>, ClientError> {
        self.link.consume(self.queue, max, wait_ms).await
    }

    pub async fn ack(&self, ids: &[u64]) -> Result<(), ClientError> {
        self.link.ack(ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    #[test]
    fn the_form_is_cleaned_as_django_did() {
        assert_eq!(form_msg(FORM, b"msg=+hi+"), Ok("hi".into()));
        assert_eq!(form_msg(None, b"msg=a%26b%3Dc"), Ok("a&b=c".into()));
        assert_eq!(
            form_msg(
                Some("application/x-www-form-urlencoded; charset=UTF-8"),
                b"msg=x"
            ),
            Ok("x".into())
        );
        // The last of a repeated field, as Django's QueryDict.get.
        assert_eq!(form_msg(FORM, b"msg=a&msg=b"), Ok("b".into()));
        for empty in [&b""[..], b"other=1", b"msg=", b"msg=+++"] {
            let e = form_msg(FORM, empty).unwrap_err();
            assert!(e.contains("`msg` is required"), "{e}");
        }
        let long = "é".repeat(101);
        let e = check_msg(Some(&long)).unwrap_err();
        assert!(e.contains("101 characters"), "{e}");
        assert!(check_msg(Some(&"é".repeat(100))).is_ok());
        // Stripped before counting, as Django does.
        assert!(check_msg(Some(&format!("  {}  ", "a".repeat(100)))).is_ok());
        assert!(check_msg(Some("a\0b")).unwrap_err().contains("NUL"));
        let e = form_msg(Some("application/json"), br#"{"msg":"x"}"#).unwrap_err();
        assert!(e.contains("application/x-www-form-urlencoded"), "{e}");
        // Bytes that are not UTF-8 decode lossily, as browsers' forms do.
        assert_eq!(form_msg(FORM, b"msg=%FFa"), Ok("\u{FFFD}a".into()));
    }

    #[test]
    fn ids_are_unique_uuids() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = new_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{id}");
        assert!("89ab".contains(&parts[3][..1]), "{id}");
    }

    #[test]
    fn loggers_are_tried_in_random_orders() {
        let mut rng = fastrand::Rng::with_seed(7);
        let loggers: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..100 {
            let o = shuffled(&loggers, &mut rng);
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, loggers);
            firsts.insert(o[0].clone());
        }
        assert_eq!(firsts.len(), 3, "each logger is tried first sometimes");
    }

    #[test]
    fn messages_nodes_are_those_heard_from_lately_in_random_order() {
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:5001".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let mut m = MessagesNodes::default();
        let mut rng = fastrand::Rng::with_seed(1);
        assert!(m.candidates(t0, &mut rng).is_empty());
        m.observe("messages-1", a, t0);
        m.observe("messages-2", b, t0 + Duration::from_secs(2));
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..50 {
            let c = m.candidates(t0 + Duration::from_secs(3), &mut rng);
            assert_eq!(c.len(), 2);
            firsts.insert(c[0]);
        }
        assert_eq!(firsts.len(), 2);
        // messages-1 went quiet.
        assert_eq!(m.candidates(t0 + Duration::from_secs(4), &mut rng), [b]);
        // A restarted node reports its new address.
        let a2: SocketAddr = "127.0.0.1:5002".parse().unwrap();
        m.observe("messages-1", a2, t0 + Duration::from_secs(4));
        let mut c = m.candidates(t0 + Duration::from_secs(4), &mut rng);
        c.sort();
        assert_eq!(c, [a2, b]);
    }

    #[test]
    fn the_outbox_keeps_order_and_its_bound() {
        let mut o = Outbox::new(3);
        for m in ["a", "b", "c"] {
            assert!(o.push(m.into()));
        }
        assert!(!o.push("d".into()), "full");
        assert_eq!((o.len(), o.dropped()), (3, 1));
        assert_eq!(o.peek(2), ["a", "b"]);
        // A failed publish sends nothing: the same batch again.
        assert_eq!(o.peek(2), ["a", "b"]);
        o.sent(2);
        assert!(o.push("e".into()));
        assert_eq!(o.peek(10), ["c", "e"]);
        o.sent(10);
        assert!(o.is_empty());
    }

    #[test]
    fn the_backoff_doubles_up_to_five_seconds() {
        let b: Vec<u64> = (0..8).map(|f| backoff(f).as_millis() as u64).collect();
        assert_eq!(b, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(backoff(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn the_copy_is_json_with_the_id() {
        let c = Copied {
            uuid: "u-1".into(),
            msg: "hi \"you\"".into(),
        };
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(s, r#"{"uuid":"u-1","msg":"hi \"you\""}"#);
        assert_eq!(serde_json::from_str::<Copied>(&s).unwrap(), c);
    }

    #[test]
    fn the_form_page_has_the_field() {
        let p = form_page();
        assert!(p.contains("<form action=\"/polls/\" method=\"post\">"));
        assert!(p.contains("name=\"msg\" maxlength=\"100\""));
        assert!(p.contains("Your message:"));
    }
}
