//! The `facade` role: the seed's Django facade on `[maplog] http`.
//!
//! - `GET /polls/`: the message form; `POST /polls/` (field `msg`, at most
//!   100 characters): the message gets a unique id and goes to the loggers
//!   in random order until one answers `Logged` (the owner and its backups
//!   hold it); then a redirect to `/polls/thanks`, else `/polls/error`. The
//!   seed counted any reply, even "Message not logged", as logged.
//! - `GET /polls/database`: every logged message, from a logger tried in
//!   random order; `/polls/messages`: the messages service's text;
//!   `/polls/thanks`, `/polls/error`, `/polls/help`: the seed's texts.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio_util::task::TaskTracker;

use super::model::{LOGGER_SERVICE, LogAnswer, LogRequest};
use crate::config::Role;
use crate::presence::{MemberState, Membership};
use crate::runtime::NodeContext;
use crate::services::StartError;

/// The seed's form field was a `CharField(max_length=100)`.
pub const MAX_MSG: usize = 100;

pub const THANKS: &str = "Thank's for the message!";
pub const ERROR: &str = "Message was not logged...";
pub const HELP: &str =
    "Welcome! go to polls/message to store a message, polls/database to see all messages";
pub const NO_MESSAGES: &str = "Failed to connect to messages....";

#[derive(Clone)]
struct Facade {
    ctx: NodeContext,
    loggers: Arc<Vec<String>>,
    deadline: Duration,
    logged: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// Who is up, from presence and heartbeats: a dead logger is tried
    /// last (the bus cannot refuse a connection as the seed's HTTP did).
    membership: Arc<parking_lot::Mutex<Membership>>,
}

#[derive(Serialize)]
struct Telemetry {
    http: SocketAddr,
    logged: u64,
    failed: u64,
    queued_for_messages: u64,
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let loggers = ctx.config.nodes_with(Role::Logger);
    if loggers.is_empty() {
        return Err(StartError::Setup(
            "the facade needs logger nodes in the lab config",
        ));
    }
    let facade = Facade {
        loggers: Arc::new(loggers),
        deadline: Duration::from_millis(ctx.config.maplog.deadline_ms),
        logged: Arc::default(),
        failed: Arc::default(),
        membership: Arc::new(parking_lot::Mutex::new(Membership::new(
            ctx.bus.topics().clone(),
        ))),
        ctx: ctx.clone(),
    };
    let filters = facade.membership.lock().filters();
    let mut members = ctx.bus.subscribe_all(&filters).await?;
    let (membership, stop) = (facade.membership.clone(), ctx.shutdown.clone());
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                m = members.recv() => match m {
                    Some(m) => {
                        membership.lock().observe(&m.topic, &m.envelope, Instant::now());
                    }
                    None => return,
                },
            }
        }
    });
    let (listener, bound) =
        crate::runtime::bind_http("maplog.http", ctx.config.maplog.http).await?;
    tracing::info!(http = %bound, "facade serving HTTP");
    let app = axum::Router::new()
        .route("/polls/", get(form).post(post))
        .route("/polls", get(form).post(post))
        .route("/polls/thanks", get(|| async { THANKS }))
        .route("/polls/error", get(|| async { ERROR }))
        .route("/polls/help", get(|| async { HELP }))
        .route("/polls/database", get(database).fallback(unsupported))
        .route("/polls/messages", get(|| async { NO_MESSAGES }))
        .with_state(facade.clone());
    crate::runtime::spawn_http(&ctx, tasks, listener, app, "facade");
    let stats = facade.clone();
    ctx.spawn_telemetry(tasks, "facade", Duration::from_millis(500), move || {
        Telemetry {
            http: bound,
            logged: stats.logged.load(Ordering::Relaxed),
            failed: stats.failed.load(Ordering::Relaxed),
            queued_for_messages: 0,
        }
    });
    Ok(())
}

/// A unique id (128 random bits; the seed drew 31, so ids collided).
pub fn new_id() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The loggers in a random order (the seed shuffled its ports).
fn shuffled(loggers: &[String]) -> Vec<String> {
    let mut order = loggers.to_vec();
    fastrand::shuffle(&mut order);
    order
}

impl Facade {
    /// The loggers in a random order, those up first.
    fn order(&self) -> Vec<String> {
        let mut order = shuffled(&self.loggers);
        let m = self.membership.lock();
        let now = Instant::now();
        order.sort_by_key(|n| m.state_of(n, now) != Some(MemberState::Up));
        order
    }
}

/// The form's `msg`, checked as Django's form did.
pub fn check_msg(fields: &HashMap<String, String>) -> Result<String, String> {
    match fields.get("msg") {
        None => Err("invalid form: `msg` is required".into()),
        Some(m) if m.trim().is_empty() => Err("invalid form: `msg` is required".into()),
        Some(m) if m.chars().count() > MAX_MSG => Err(format!(
            "invalid form: `msg` has {} characters, at most {MAX_MSG} are allowed",
            m.chars().count()
        )),
        Some(m) => Ok(m.trim().to_owned()),
    }
}

async fn form() -> Html<String> {
    Html(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Message log</title></head><body>\n\
         <form action=\"/polls/\" method=\"post\">\n\
         <label for=\"id_msg\">Your message:</label>\n\
         <input type=\"text\" name=\"msg\" maxlength=\"{MAX_MSG}\" required id=\"id_msg\">\n\
         <input type=\"submit\" value=\"Submit\">\n</form>\n\
         <p><a href=\"/polls/database\">all messages</a> · <a href=\"/polls/messages\">messages service</a></p>\n\
         </body></html>\n"
    ))
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn post(State(f): State<Facade>, Form(fields): Form<HashMap<String, String>>) -> Response {
    let msg = match check_msg(&fields) {
        Ok(m) => m,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    let uuid = new_id();
    for logger in f.order() {
        let request = LogRequest::Log {
            uuid: uuid.clone(),
            msg: msg.clone(),
        };
        match ask(&f, &logger, &request).await {
            Ok(LogAnswer::Logged) => {
                f.logged.fetch_add(1, Ordering::Relaxed);
                return redirect("/polls/thanks");
            }
            Ok(other) => tracing::warn!(%logger, ?other, "unexpected answer"),
            Err(e) => tracing::warn!(%logger, error = %e, "message not logged there"),
        }
    }
    f.failed.fetch_add(1, Ordering::Relaxed);
    redirect("/polls/error")
}

async fn database(State(f): State<Facade>) -> Response {
    for logger in f.order() {
        match ask(&f, &logger, &LogRequest::All).await {
            Ok(LogAnswer::All { text }) => return text.into_response(),
            Ok(other) => tracing::warn!(%logger, ?other, "unexpected answer"),
            Err(e) => tracing::warn!(%logger, error = %e, "cannot read the messages there"),
        }
    }
    (StatusCode::SERVICE_UNAVAILABLE, "no logger answered").into_response()
}

async fn unsupported() -> &'static str {
    "Unsupported request method"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_form_is_checked_as_django_did() {
        assert_eq!(check_msg(&fields(&[("msg", " hi ")])), Ok("hi".into()));
        assert!(check_msg(&fields(&[])).unwrap_err().contains("required"));
        assert!(
            check_msg(&fields(&[("msg", "  ")]))
                .unwrap_err()
                .contains("required")
        );
        let long = "é".repeat(101);
        assert!(
            check_msg(&fields(&[("msg", &long)]))
                .unwrap_err()
                .contains("101")
        );
        assert!(check_msg(&fields(&[("msg", &"é".repeat(100))])).is_ok());
    }

    #[test]
    fn ids_are_unique_and_orders_are_shuffles() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let loggers: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..100 {
            let o = shuffled(&loggers);
            let mut sorted = o.clone();
            sorted.sort();
            assert_eq!(sorted, loggers);
            firsts.insert(o[0].clone());
        }
        assert_eq!(firsts.len(), 3, "each logger is tried first sometimes");
    }
}
