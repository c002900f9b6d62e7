//! The `messages` role: a competing consumer of the MOM queue
//! [`MESSAGES_QUEUE`] (every messages node consumes it; each message goes
//! to one of them), keeping what it gets in SQLite (`messages.db` in its
//! data dir) and serving it as the seed's `GET /messages/` (oldest first,
//! one a line).
//!
//! A batch is acked only after its transaction committed, so a crash in
//! between delivers it again; a message is stored once by its id (the
//! facade's uuid, or for a body that is not a facade [`Copied`] the MOM's
//! message id and publish time), so a redelivery or a publish the facade
//! retried changes nothing.
//!
//! HTTP: the first messages node in the config takes
//! `[maplog] messages_http`, the others (and it, if taken) a free port;
//! each reports its address in its telemetry (`messages`), where the
//! facade finds it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parking_lot::Mutex;
use rusqlite::{Connection, params};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::facade::{Copied, MESSAGES_QUEUE, QueueLink, backoff};
use crate::config::Role;
use crate::envelope::now_ms;
use crate::runtime::NodeContext;
use crate::services::StartError;
use crate::services::mom::model::Delivery;

/// Messages one consume takes at most.
const CONSUME_MAX: u32 = 100;
/// How long one consume waits for the first message, ms.
const CONSUME_WAIT_MS: u64 = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    msg TEXT NOT NULL,
    mom_id INTEGER NOT NULL,
    published_ms INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL
);
";

/// One message as it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// What makes it the same message when it comes again.
    pub id: String,
    pub msg: String,
    pub mom_id: u64,
    /// When the MOM took it (its place in the queue, with `mom_id`).
    pub published_ms: u64,
}

/// What a delivery holds: a facade's [`Copied`] (JSON), else the body
/// itself is the message (as the seed's queue held bare strings), known by
/// the MOM's id and publish time.
pub fn kept(d: &Delivery) -> Kept {
    match serde_json::from_str::<Copied>(&d.body) {
        Ok(c) if !c.uuid.is_empty() => Kept {
            id: c.uuid,
            msg: c.msg,
            mom_id: d.id,
            published_ms: d.published_ms,
        },
        _ => {
            tracing::debug!(id = d.id, "not a facade copy; kept as it is");
            Kept {
                id: format!("mom:{}:{}", d.id, d.published_ms),
                msg: d.body.clone(),
                mom_id: d.id,
                published_ms: d.published_ms,
            }
        }
    }
}

/// The messages this node holds, in SQLite.
pub struct Held {
    conn: Connection,
}

impl Held {
    /// The store at `path` (WAL, full sync), or in memory without one.
    pub fn open(path: Option<&Path>) -> rusqlite::Result<Self> {
        let conn = match path {
            Some(path) => {
                let conn = Connection::open(path)?;
                conn.pragma_update(None, "journal_mode", "WAL")?;
                conn.pragma_update(None, "synchronous", "FULL")?;
                conn
            }
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch(SCHEMA)?;
        Ok(Self { conn })
    }

    /// Stores `batch` in one transaction (a message already held is
    /// skipped); returns how many were new.
    pub fn store(&mut self, batch: &[Kept]) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction()?;
        let mut new = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages (id, msg, mom_id, published_ms, stored_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let now = now_ms() as i64;
            for k in batch {
                new += insert.execute(params![
                    k.id,
                    k.msg,
                    k.mom_id as i64,
                    k.published_ms as i64,
                    now
                ])?;
            }
        }
        tx.commit()?;
        Ok(new)
    }

    pub fn count(&self) -> rusqlite::Result<u64> {
        self.conn
            .query_row("SELECT COUNT(*) FROM messages", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
    }

    /// Every message held, oldest first: in the queue's order (a message
    /// delivered again after another consumer's loss comes in its place).
    pub fn all(&self) -> rusqlite::Result<Vec<String>> {
        let mut q = self
            .conn
            .prepare_cached("SELECT msg FROM messages ORDER BY published_ms, mom_id, seq")?;
        let rows = q.query_map([], |r| r.get::<_, String>(0))?;
        rows.collect()
    }
}

/// The seed's `GET /messages/` text: one message a line.
pub fn render(messages: &[String]) -> String {
    messages.join("\n")
}

#[derive(Clone)]
struct Messages {
    held: Arc<Mutex<Held>>,
    count: Arc<AtomicU64>,
    consumed: Arc<AtomicU64>,
    mom_up: Arc<AtomicBool>,
}

#[derive(Serialize)]
struct Telemetry {
    http: std::net::SocketAddr,
    /// Messages this node holds.
    held: u64,
    /// Deliveries stored and acked (a redelivery counts again).
    consumed: u64,
    /// Whether its last MOM call succeeded.
    mom_up: bool,
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let link = QueueLink::new(&ctx, MESSAGES_QUEUE, true).ok_or(StartError::Setup(
        "the messages nodes consume the MOM queue `messages`: the lab needs a node with role `mom`",
    ))?;
    let held = Held::open(Some(&ctx.dir.join("messages.db")))?;
    let node = Messages {
        count: Arc::new(AtomicU64::new(held.count()?)),
        held: Arc::new(Mutex::new(held)),
        consumed: Arc::default(),
        mom_up: Arc::default(),
    };
    tasks.spawn(consume(
        link,
        node.clone(),
        ctx.shutdown.clone(),
        ctx.id().to_owned(),
    ));

    // The first messages node takes the configured address, the others a
    // free port.
    let mut addr = ctx.config.maplog.messages_http;
    if ctx
        .config
        .nodes_with(Role::Messages)
        .first()
        .map(String::as_str)
        != Some(ctx.id())
    {
        addr.set_port(0);
    }
    let (listener, bound) = crate::runtime::bind_http("maplog.messages_http", addr).await?;
    tracing::info!(http = %bound, "messages serving HTTP");
    let app = axum::Router::new()
        .route("/messages/", get(list).fallback(unsupported))
        .route("/messages", get(list).fallback(unsupported))
        .fallback(not_found)
        .with_state(node.clone());
    crate::runtime::spawn_http(&ctx, tasks, listener, app, "messages");
    ctx.spawn_telemetry(tasks, "messages", Duration::from_millis(500), move || {
        Telemetry {
            http: bound,
            held: node.count.load(Ordering::Relaxed),
            consumed: node.consumed.load(Ordering::Relaxed),
            mom_up: node.mom_up.load(Ordering::Relaxed),
        }
    });
    Ok(())
}

async fn list(State(m): State<Messages>) -> Response {
    let held = m.held.clone();
    match tokio::task::spawn_blocking(move || held.lock().all()).await {
        Ok(Ok(all)) => render(&all).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the stored messages: {e}"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the stored messages: {e}"),
        )
            .into_response(),
    }
}

async fn unsupported() -> (StatusCode, &'static str) {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        "Unsupported request method: GET /messages/ lists the messages",
    )
}

async fn not_found() -> (StatusCode, &'static str) {
    (
        StatusCode::NOT_FOUND,
        "no such page; GET /messages/ lists the messages this node holds",
    )
}

/// Consumes the queue until shutdown: stores each batch, then acks it.
async fn consume(link: QueueLink, m: Messages, stop: CancellationToken, node: String) {
    let pause = |d: Duration| {
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => true,
                _ = stop.cancelled() => false,
            }
        }
    };
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let asked = Instant::now();
        let got = tokio::select! {
            g = link.consume(CONSUME_MAX, CONSUME_WAIT_MS) => g,
            _ = stop.cancelled() => return,
        };
        m.mom_up.store(link.is_up(), Ordering::Relaxed);
        let deliveries = match got {
            Ok(d) => d,
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, node, "cannot consume `{MESSAGES_QUEUE}`; retrying");
                } else {
                    tracing::debug!(error = %e, "cannot consume");
                }
                failures = failures.saturating_add(1);
                if !pause(backoff(failures - 1)).await {
                    return;
                }
                continue;
            }
        };
        if deliveries.is_empty() {
            failures = 0;
            // Nothing, and at once (a MOM that does not hold a consume
            // open): a pause, not a busy loop.
            if asked.elapsed() < Duration::from_millis(100)
                && !pause(Duration::from_millis(100)).await
            {
                return;
            }
            continue;
        }
        let batch: Vec<Kept> = deliveries.iter().map(kept).collect();
        let ids: Vec<u64> = deliveries.iter().map(|d| d.id).collect();
        let held = m.held.clone();
        let stored = tokio::task::spawn_blocking(move || {
            let mut h = held.lock();
            let new = h.store(&batch)?;
            Ok::<_, rusqlite::Error>((new, h.count()?))
        })
        .await;
        match stored {
            Ok(Ok((new, count))) => {
                failures = 0;
                m.count.store(count, Ordering::Relaxed);
                m.consumed.fetch_add(ids.len() as u64, Ordering::Relaxed);
                tracing::trace!(n = ids.len(), new, "stored");
                if let Err(e) = link.ack(&ids).await {
                    tracing::debug!(error = %e, "not acked (delivered again, stored once)");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot store messages; not acked, they come again");
                failures = failures.saturating_add(1);
                if !pause(backoff(failures - 1)).await {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the store task failed; not acked, they come again");
                if !pause(backoff(0)).await {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u64, body: &str) -> Delivery {
        Delivery {
            id,
            body: body.into(),
            deliveries: 1,
            published_ms: 1000 + id,
            visible_again_ms: 0,
        }
    }

    /// A kept message published at `mom_id` ms.
    fn k(id: &str, msg: &str, mom_id: u64) -> Kept {
        Kept {
            id: id.into(),
            msg: msg.into(),
            mom_id,
            published_ms: mom_id,
        }
    }

    #[test]
    fn a_copy_is_known_by_its_uuid_and_a_bare_body_by_its_mom_id() {
        let c = serde_json::to_string(&Copied {
            uuid: "u1".into(),
            msg: "hello".into(),
        })
        .unwrap();
        assert_eq!(
            kept(&delivery(7, &c)),
            Kept {
                id: "u1".into(),
                msg: "hello".into(),
                mom_id: 7,
                published_ms: 1007,
            }
        );
        for bare in [
            "plain text",
            "{\"msg\": \"no uuid\"}",
            "{\"uuid\":\"\",\"msg\":\"x\"}",
        ] {
            let k = kept(&delivery(8, bare));
            assert_eq!((k.id.as_str(), k.msg.as_str()), ("mom:8:1008", bare));
        }
    }

    #[test]
    fn a_message_is_stored_once_and_listed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("messages.db");
        {
            let mut h = Held::open(Some(&path)).unwrap();
            assert_eq!(
                h.store(&[k("a", "first", 1), k("c", "third", 3)]).unwrap(),
                2
            );
            // Delivered again (not acked), and a publish the facade retried.
            assert_eq!(
                h.store(&[k("c", "third", 3), k("a", "first", 9)]).unwrap(),
                0
            );
            // One another consumer lost, delivered here late: in its place.
            assert_eq!(h.store(&[k("b", "second", 2)]).unwrap(), 1);
        }
        // What was committed survives a restart.
        let h = Held::open(Some(&path)).unwrap();
        assert_eq!(h.count().unwrap(), 3);
        let all = h.all().unwrap();
        assert_eq!(all, ["first", "second", "third"]);
        assert_eq!(render(&all), "first\nsecond\nthird");
        assert_eq!(render(&[]), "");
    }

    #[test]
    fn a_failed_batch_stores_nothing() {
        let mut h = Held::open(None).unwrap();
        h.store(&[k("a", "kept", 1)]).unwrap();
        h.conn
            .execute_batch(
                "CREATE TRIGGER no_b BEFORE INSERT ON messages WHEN NEW.id = 'b' \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        assert!(h.store(&[k("c", "c", 3), k("b", "b", 2)]).is_err());
        assert_eq!(h.all().unwrap(), ["kept"], "all or nothing");
    }
}
