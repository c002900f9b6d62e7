//! The `logger` role: a member of the map (the [`Member`] state machine
//! behind a thin shell), the master's duty when it is the oldest member,
//! and the seed's logger API: `POST /database/` and `GET /database/` on
//! HTTP, and the same over the bus (`rpc/logger/<node>`) for the facade.
//!
//! The view: the oldest live logger (by start time, then id) is the master,
//! as in Hazelcast. When the live loggers it sees differ from the view, it
//! publishes the next view (retained, `maplog/view`, epoch one
//! above the highest it has seen), and again every two seconds so a
//! restarted broker has it. Members and clients follow views in order
//! only. A dead member's last will tells the master at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::client::{BATCH_SERVICE, MapClient, PEER_SERVICE, SERVICE, view_topic};
use super::member::{Effect, Member, MemberStats};
use super::model::{
    BATCH_MAX, LOGGER_SERVICE, LogAnswer, LogRequest, MapAnswer, MapBatch, MapRequest, Peer,
};
use super::table::{Incarnation, View};
use crate::config::Role;
use crate::envelope::now_ms;
use crate::presence::{MemberRow, MemberState, Membership};
use crate::runtime::{Counters, NodeContext, serve_rpc};
use crate::services::StartError;

/// A live set must hold this long before the master publishes it (members
/// starting together make one view, not three).
const SETTLE: Duration = Duration::from_millis(150);
const REPUBLISH: Duration = Duration::from_secs(2);
/// Peer messages sent together: what is waiting, up to about this many
/// bytes of entries (a fill is up to 256 KiB; the bus takes 4 MiB) and
/// this many messages.
const PEER_BATCH_BYTES: usize = 1 << 20;
const PEER_BATCH: usize = 4096;

/// About how many bytes `msg` takes on the bus.
fn weight(msg: &Peer) -> usize {
    let entries = |parts: &[super::model::PartData]| -> usize {
        parts
            .iter()
            .flat_map(|p| &p.entries)
            .map(|e| e.key.len() + e.value.len() + 48)
            .sum()
    };
    64 + match msg {
        Peer::Backup { entry, .. } => entry.key.len() + entry.value.len(),
        Peer::Data { parts, .. } | Peer::Fill { parts, .. } => entries(parts),
        Peer::Digests { digests, .. } => digests.len() * 48,
        Peer::DataAsk { parts, .. } | Peer::FillAck { parts, .. } | Peer::Served { parts, .. } => {
            parts.len() * 6
        }
        Peer::DigestAsk { .. } | Peer::BackupAck { .. } => 0,
    }
}

/// The loggers a membership table shows up, sorted by node id.
pub fn live_loggers(rows: &[MemberRow]) -> Vec<Incarnation> {
    let mut live: Vec<Incarnation> = rows
        .iter()
        .filter(|r| r.state == MemberState::Up && r.roles.iter().any(|x| x == "logger"))
        .map(|r| Incarnation {
            node: r.node.clone(),
            started_ms: r.started_ms,
        })
        .collect();
    live.sort();
    live
}

/// The view `me` should publish now, if it is the master and the live set
/// differs from the current view.
pub fn next_view(
    me: &str,
    live: &[Incarnation],
    current: Option<&View>,
    highest: u64,
) -> Option<View> {
    let master = live
        .iter()
        .min_by(|a, b| (a.started_ms, &a.node).cmp(&(b.started_ms, &b.node)))?;
    if master.node != me {
        return None;
    }
    if current.is_some_and(|v| v.members == live) {
        return None;
    }
    Some(View {
        epoch: highest.max(current.map_or(0, |v| v.epoch)) + 1,
        master: me.to_owned(),
        members: live.to_vec(),
    })
}

struct Shell {
    ctx: NodeContext,
    member: Mutex<Member>,
    replies: Mutex<HashMap<u64, oneshot::Sender<MapAnswer>>>,
    next_token: AtomicU64,
    out: mpsc::Sender<(String, Peer)>,
}

impl Shell {
    /// Carries out what the member asked for.
    async fn run(&self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Send { to, msg } => {
                    if self.out.send((to, msg)).await.is_err() {
                        return;
                    }
                }
                Effect::Reply { token, answer } => {
                    if let Some(tx) = self.replies.lock().remove(&token) {
                        let _ = tx.send(answer);
                    }
                }
            }
        }
    }

    async fn request(&self, request: MapRequest) -> MapAnswer {
        let mut answers = self.batch(vec![request]).await;
        answers.pop().expect("one answer for one request")
    }

    /// Hands every request to the member at once (their backup writes
    /// leave together), then waits for each answer; answers in order.
    async fn batch(&self, ops: Vec<MapRequest>) -> Vec<MapAnswer> {
        let first = self
            .next_token
            .fetch_add(ops.len() as u64, Ordering::Relaxed);
        let tokens = first..first + ops.len() as u64;
        let mut waits = Vec::with_capacity(ops.len());
        {
            let mut replies = self.replies.lock();
            for token in tokens.clone() {
                let (tx, rx) = oneshot::channel();
                replies.insert(token, tx);
                waits.push((token, rx));
            }
        }
        let effects: Vec<Effect> = {
            let mut member = self.member.lock();
            let now = now_ms();
            tokens
                .zip(ops)
                .flat_map(|(token, op)| member.on_request(token, op, now))
                .collect()
        };
        self.run(effects).await;
        let until = tokio::time::Instant::now()
            + Duration::from_millis(super::member::PUT_TIMEOUT_MS + 500);
        let mut answers = Vec::with_capacity(waits.len());
        for (token, rx) in waits {
            let answer = tokio::time::timeout_at(until, rx).await;
            self.replies.lock().remove(&token);
            answers.push(match answer {
                Ok(Ok(a)) => a,
                _ => MapAnswer::Retry {
                    reason: "no answer in time".into(),
                    view: self.member.lock().view().cloned(),
                },
            });
        }
        answers
    }
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let settings = ctx.config.maplog.clone();
    let me = ctx.id().to_owned();
    let topics = ctx.bus.topics().clone();
    let (out, mut outgoing) = mpsc::channel::<(String, Peer)>(65_536);
    let shell = Arc::new(Shell {
        ctx: ctx.clone(),
        member: Mutex::new(Member::new(&me, settings.partitions, settings.backup_count)),
        replies: Mutex::default(),
        next_token: AtomicU64::new(1),
        out,
    });

    // Member to member, in order: what is waiting goes together, one
    // bus message per peer (under load a put's backup writes share one).
    let bus = ctx.bus.clone();
    let stop = ctx.shutdown.clone();
    tasks.spawn(async move {
        loop {
            let first = tokio::select! {
                m = outgoing.recv() => match m { Some(m) => m, None => return },
                _ = stop.cancelled() => return,
            };
            let mut bytes = weight(&first.1);
            let mut batches: HashMap<String, Vec<Peer>> = HashMap::new();
            batches.entry(first.0).or_default().push(first.1);
            for _ in 0..PEER_BATCH {
                if bytes >= PEER_BATCH_BYTES {
                    break;
                }
                let Ok((to, msg)) = outgoing.try_recv() else {
                    break;
                };
                bytes += weight(&msg);
                batches.entry(to).or_default().push(msg);
            }
            for (to, msgs) in batches {
                let topic = bus.topics().rpc(PEER_SERVICE, &to);
                let envelope = bus.envelope("maplog-peer", &msgs);
                if let Err(e) = bus.publish(&topic, &envelope).await {
                    tracing::debug!(error = %e, %to, "map messages not sent");
                }
            }
        }
    });

    let mut peers = ctx.bus.subscribe(&topics.rpc(PEER_SERVICE, &me)).await?;
    let view_at = view_topic(&ctx.bus);
    let mut views = ctx.bus.subscribe(&view_at).await?;
    let mut membership = Membership::new(topics.clone());
    let mut members = ctx.bus.subscribe_all(&membership.filters()).await?;
    let driver = shell.clone();
    let stop = ctx.shutdown.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut highest = 0u64;
        let mut live: Vec<Incarnation> = Vec::new();
        let mut live_since = Instant::now();
        let mut published: Option<(View, Instant)> = None;
        // A member that just started has not heard the others' heartbeats
        // yet: it would see itself alone and publish a view of one.
        let warmup = Duration::from_millis(3 * driver.ctx.config.lab.heartbeat_ms);
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(m) = peers.recv() => match m.envelope.body_as::<Vec<Peer>>() {
                    Ok(msgs) => {
                        let effects: Vec<Effect> = {
                            let mut member = driver.member.lock();
                            msgs.into_iter()
                                .flat_map(|msg| member.on_peer(&m.envelope.from, msg, now_ms()))
                                .collect()
                        };
                        driver.run(effects).await;
                    }
                    Err(e) => tracing::debug!(from = %m.envelope.from, error = %e, "malformed map message ignored"),
                },
                Some(m) = views.recv() => match m.envelope.body_as::<View>() {
                    Ok(view) => {
                        highest = highest.max(view.epoch);
                        let effects = driver.member.lock().on_view(view, now_ms());
                        driver.run(effects).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "malformed map view ignored"),
                },
                Some(m) = members.recv() => {
                    membership.observe(&m.topic, &m.envelope, Instant::now());
                }
                _ = tick.tick() => {
                    let effects = driver.member.lock().on_tick(now_ms());
                    driver.run(effects).await;
                    // The master's duty.
                    let now = Instant::now();
                    let seen = live_loggers(&membership.rows(now));
                    if seen != live {
                        live = seen;
                        live_since = now;
                    }
                    if now.duration_since(live_since) < SETTLE || now.duration_since(started) < warmup {
                        continue;
                    }
                    let current = driver.member.lock().view().cloned();
                    let newest = match (&current, &published) {
                        (Some(c), Some((p, _))) if p.order() > c.order() => Some(p.clone()),
                        (c, _) => c.clone(),
                    };
                    let next = next_view(driver.ctx.id(), &live, newest.as_ref(), highest);
                    let again = published.as_ref().is_some_and(|(p, at)| {
                        now.duration_since(*at) >= REPUBLISH
                            && newest.as_ref().is_some_and(|c| c == p)
                    });
                    let view = match (next, again) {
                        (Some(v), _) => v,
                        (None, true) => published.clone().expect("there").0,
                        (None, false) => continue,
                    };
                    highest = highest.max(view.epoch);
                    let envelope = driver.ctx.bus.envelope("maplog-view", &view);
                    match driver.ctx.bus.publish_retained(&view_at, &envelope).await {
                        Ok(()) => {
                            if published.as_ref().is_none_or(|(p, _)| *p != view) {
                                tracing::info!(epoch = view.epoch, members = ?view.nodes(), "map view published");
                            }
                            published = Some((view, now));
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot publish the map view"),
                    }
                }
            }
        }
    });

    let rpc = shell.clone();
    serve_rpc(
        &ctx,
        tasks,
        SERVICE,
        Counters::default(),
        |e| e,
        move |request: MapRequest, _| {
            let rpc = rpc.clone();
            async move { Ok::<_, String>(rpc.request(request).await) }
        },
    )
    .await?;
    let rpc = shell.clone();
    serve_rpc(
        &ctx,
        tasks,
        BATCH_SERVICE,
        Counters::default(),
        |e| e,
        move |batch: MapBatch, _| {
            let rpc = rpc.clone();
            async move {
                if batch.ops.len() > BATCH_MAX {
                    return Err(format!("a batch holds at most {BATCH_MAX} operations"));
                }
                Ok::<_, String>(rpc.batch(batch.ops).await)
            }
        },
    )
    .await?;

    // The logger's own client of the map, as the seed's logger was a
    // client of its Hazelcast member.
    let client = MapClient::start(
        ctx.bus.clone(),
        settings.partitions,
        settings.backup_count,
        Duration::from_millis(settings.deadline_ms),
        tasks,
        ctx.shutdown.clone(),
    )
    .await?;
    let logs = client.clone();
    serve_rpc(
        &ctx,
        tasks,
        LOGGER_SERVICE,
        Counters::default(),
        |e| e,
        move |request: LogRequest, _| {
            let logs = logs.clone();
            async move { log(&logs, request).await }
        },
    )
    .await?;

    // The first logger takes the configured address, the others a free port.
    let mut addr = settings.logger_http;
    if ctx
        .config
        .nodes_with(Role::Logger)
        .first()
        .map(String::as_str)
        != Some(ctx.id())
    {
        addr.set_port(0);
    }
    let (listener, bound) = crate::runtime::bind_http("maplog.logger_http", addr).await?;
    tracing::info!(http = %bound, "logger serving HTTP");
    let app = axum::Router::new()
        .route(
            "/database/",
            get(http_all).post(http_log).fallback(unsupported),
        )
        .route(
            "/database",
            get(http_all).post(http_log).fallback(unsupported),
        )
        .with_state(client);
    crate::runtime::spawn_http(&ctx, tasks, listener, app, "logger");

    let stats = shell.clone();
    let http = bound.to_string();
    ctx.spawn_telemetry(tasks, "maplog", Duration::from_millis(500), move || {
        MemberStats {
            http: http.clone(),
            ..stats.member.lock().stats()
        }
    });
    Ok(())
}

async fn log(client: &MapClient, request: LogRequest) -> Result<LogAnswer, String> {
    match request {
        LogRequest::Log { uuid, msg } => {
            tracing::debug!(%uuid, "logging a message");
            client.put(&uuid, &msg).await.map_err(|e| e.to_string())?;
            Ok(LogAnswer::Logged)
        }
        LogRequest::All => {
            let values = client.values().await.map_err(|e| e.to_string())?;
            Ok(LogAnswer::All {
                text: values.join("\n"),
            })
        }
    }
}

/// The seed's `GET /database/`: every value, newline-separated.
async fn http_all(State(client): State<MapClient>) -> axum::response::Response {
    match client.values().await {
        Ok(values) => values.join("\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Error occurred: {e}"),
        )
            .into_response(),
    }
}

/// The seed's `POST /database/` with `{"UUID": ..., "msg": ...}`: `OK`
/// once stored with its backups, else `Message not logged`.
async fn http_log(
    State(client): State<MapClient>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let (uuid, msg) = match parse_log(&body) {
        Ok(x) => x,
        Err(why) => return (StatusCode::BAD_REQUEST, why).into_response(),
    };
    match client.put(&uuid, &msg).await {
        Ok(()) => "OK".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "message not logged");
            (StatusCode::SERVICE_UNAVAILABLE, "Message not logged").into_response()
        }
    }
}

async fn unsupported() -> &'static str {
    "unsupported method"
}

/// The seed's body: `UUID` a number (the seed's facade sent an int) or a
/// string, `msg` a string (anything else as its JSON text, as Python's
/// `str()` would show it is not needed: the seed only sent strings).
pub fn parse_log(body: &[u8]) -> Result<(String, String), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let uuid = match v.get("UUID") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err("`UUID` (a number or a string) is missing".into()),
    };
    let msg = match v.get("msg") {
        Some(serde_json::Value::String(s)) => s.clone(),
        _ => return Err("`msg` (a string) is missing".into()),
    };
    Ok((uuid, msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(node: &str, started_ms: u64) -> Incarnation {
        Incarnation {
            node: node.into(),
            started_ms,
        }
    }

    #[test]
    fn the_oldest_member_publishes_the_next_view() {
        let live = vec![
            inc("logger-1", 30),
            inc("logger-2", 10),
            inc("logger-3", 20),
        ];
        assert_eq!(next_view("logger-1", &live, None, 0), None);
        let v = next_view("logger-2", &live, None, 4).expect("the master publishes");
        assert_eq!((v.epoch, v.master.as_str()), (5, "logger-2"));
        assert_eq!(
            next_view("logger-2", &live, Some(&v), 5),
            None,
            "no change, no view"
        );
        // A restarted member is a new incarnation: a new view.
        let again = vec![
            inc("logger-1", 99),
            inc("logger-2", 10),
            inc("logger-3", 20),
        ];
        let w = next_view("logger-2", &again, Some(&v), 5).expect("new incarnation");
        assert_eq!(w.epoch, 6);
        assert_eq!(next_view("logger-2", &[], Some(&w), 6), None);
    }

    #[test]
    fn the_seed_body_parses_and_bad_ones_say_why() {
        assert_eq!(
            parse_log(br#"{"UUID": 12345, "msg": "hi"}"#),
            Ok(("12345".into(), "hi".into()))
        );
        assert_eq!(
            parse_log(br#"{"UUID": "a-b", "msg": ""}"#),
            Ok(("a-b".into(), "".into()))
        );
        assert!(parse_log(b"nope").unwrap_err().contains("not JSON"));
        assert!(parse_log(br#"{"msg": "x"}"#).unwrap_err().contains("UUID"));
        assert!(parse_log(br#"{"UUID": 1}"#).unwrap_err().contains("msg"));
    }
}
