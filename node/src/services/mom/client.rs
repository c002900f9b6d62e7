//! A Rust client of the MOM over MQTT RPC (`rpc/mom/<node>`); the CLI's
//! `distlab-node mom …` commands stand on it.
//!
//! ```no_run
//! # async fn demo(bus: distlab_node::bus::Bus) -> Result<(), distlab_node::services::mom::client::ClientError> {
//! use distlab_node::services::mom::{client::Client, model::Kind};
//! let mom = Client::new(bus, "mom-a");
//! let key = mom.create_user().await?;
//! mom.create(Kind::Queue, "jobs", &key).await?;
//! mom.subscribe(Kind::Queue, "jobs", &key).await?;
//! mom.publish(Kind::Queue, "jobs", &key, "hello").await?;
//! if let Some(d) = mom.consume(Kind::Queue, "jobs", &key, 1000).await? {
//!     mom.ack(&key, d.id).await?;
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use super::model::{ChannelInfo, Delivery, Kind, MomError};
use super::node::MomStats;
use super::service::{FAILOVER_WAIT, Reply, Request, Sealed};
use crate::bus::{Bus, RpcError};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The MOM answered with an error.
    #[error("{0}")]
    Mom(#[from] MomError),
    /// No answer (node down, broker unreachable, deadline passed).
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

/// A MOM client. It sends each request to the current leader (as the MOM
/// nodes' telemetry names it, the newest term winning; before one is
/// known, to the node it was given — any MOM node forwards to the leader),
/// and when a node does not answer it retries on whichever node leads by
/// then, for up to [`FAILOVER_WAIT`] — so it rides over a takeover. A
/// retried publish may be stored twice (at least once).
pub struct Client {
    bus: Bus,
    node: String,
    primary: Arc<Mutex<Option<String>>>,
    deadline: Duration,
}

impl Client {
    /// A client that starts with the MOM node `node`, over a connected
    /// `bus`. Call it inside a tokio runtime (it follows the MOM's
    /// telemetry in a task).
    pub fn new(bus: Bus, node: &str) -> Self {
        let primary = Arc::new(Mutex::new(None));
        let (follow, seen) = (bus.clone(), primary.clone());
        tokio::spawn(async move {
            let filter = follow.topics().telemetry("+", "mom");
            let Ok(mut stats) = follow.subscribe(&filter).await else {
                return;
            };
            let mut term = 0;
            while let Some(m) = stats.recv().await {
                if let Ok(s) = m.envelope.body_as::<MomStats>()
                    && let Some(leader) = s.raft.leader
                    && s.raft.term >= term
                {
                    term = s.raft.term;
                    *seen.lock() = Some(leader);
                }
            }
        });
        Self {
            bus,
            node: node.to_owned(),
            primary,
            deadline: Duration::from_secs(5),
        }
    }

    /// Where requests go now.
    pub fn target(&self) -> String {
        self.primary
            .lock()
            .clone()
            .unwrap_or_else(|| self.node.clone())
    }

    /// Sends one request and waits for its answer (a consume's wait is added
    /// to the deadline); retries on the leader of the moment when a node
    /// does not answer.
    pub async fn call(&self, request: Request) -> Result<Reply, ClientError> {
        let wait = Duration::from_millis(request.wait_ms());
        let kind = op_name(&request);
        // The key stays here: only its user id crosses the bus.
        let (request, new_key) = request.seal()?;
        let give_up = tokio::time::Instant::now() + FAILOVER_WAIT;
        loop {
            let target = self.target();
            let sent = ask(&self.bus, &target, kind, &request, self.deadline + wait).await;
            match sent {
                // No answer from that node: again, on the leader of the moment.
                Err(ClientError::Rpc(e))
                    if !matches!(e, RpcError::Remote { .. })
                        && tokio::time::Instant::now() < give_up =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                sent => return Ok(Sealed::answer(new_key, sent?)?),
            }
        }
    }

    pub async fn create_user(&self) -> Result<String, ClientError> {
        match self.call(Request::CreateUser).await? {
            Reply::Key { key } => Ok(key),
            other => Err(unexpected(other)),
        }
    }

    pub async fn create(&self, kind: Kind, name: &str, key: &str) -> Result<(), ClientError> {
        let request = Request::Create {
            kind,
            name: name.into(),
            key: key.into(),
            subscribe: false,
        };
        self.call(request).await.map(drop)
    }

    pub async fn delete(&self, kind: Kind, name: &str, key: &str) -> Result<(), ClientError> {
        let request = Request::Delete {
            kind,
            name: name.into(),
            key: key.into(),
        };
        self.call(request).await.map(drop)
    }

    pub async fn list(
        &self,
        kind: Option<Kind>,
        key: &str,
        mine: bool,
    ) -> Result<Vec<ChannelInfo>, ClientError> {
        match self
            .call(Request::List {
                kind,
                key: key.into(),
                mine,
            })
            .await?
        {
            Reply::Channels { channels } => Ok(channels),
            other => Err(unexpected(other)),
        }
    }

    /// Whether `key`'s user was not subscribed before.
    pub async fn subscribe(&self, kind: Kind, name: &str, key: &str) -> Result<bool, ClientError> {
        let (name, key) = (name.into(), key.into());
        self.changed(Request::Subscribe { kind, name, key }).await
    }

    /// Whether `key`'s user was subscribed.
    pub async fn unsubscribe(
        &self,
        kind: Kind,
        name: &str,
        key: &str,
    ) -> Result<bool, ClientError> {
        let (name, key) = (name.into(), key.into());
        self.changed(Request::Unsubscribe { kind, name, key }).await
    }

    async fn changed(&self, request: Request) -> Result<bool, ClientError> {
        match self.call(request).await? {
            Reply::Changed { changed } => Ok(changed),
            other => Err(unexpected(other)),
        }
    }

    /// Publishes; returns once the message is durable (the ids of its copies).
    pub async fn publish(
        &self,
        kind: Kind,
        name: &str,
        key: &str,
        message: &str,
    ) -> Result<Vec<u64>, ClientError> {
        let request = Request::Publish {
            kind,
            name: name.into(),
            key: key.into(),
            message: message.into(),
            as_subscriber: false,
        };
        match self.call(request).await? {
            Reply::Published { ids } => Ok(ids),
            other => Err(unexpected(other)),
        }
    }

    /// Publishes several messages to one channel in one request (stored in
    /// order, all or none; up to [`super::service::BATCH_MESSAGES`]); returns
    /// once they are durable, with the copy ids of each.
    pub async fn publish_batch(
        &self,
        kind: Kind,
        name: &str,
        key: &str,
        messages: Vec<String>,
    ) -> Result<Vec<Vec<u64>>, ClientError> {
        let request = Request::PublishBatch {
            kind,
            name: name.into(),
            key: key.into(),
            messages,
        };
        match self.call(request).await? {
            Reply::PublishedBatch { batch } => Ok(batch),
            other => Err(unexpected(other)),
        }
    }

    /// One message, waiting up to `wait_ms` for it; ack it by its id.
    pub async fn consume(
        &self,
        kind: Kind,
        name: &str,
        key: &str,
        wait_ms: u64,
    ) -> Result<Option<Delivery>, ClientError> {
        let request = Request::Consume {
            kind,
            name: name.into(),
            key: key.into(),
            wait_ms,
        };
        match self.call(request).await? {
            Reply::Delivery { delivery } => Ok(delivery),
            other => Err(unexpected(other)),
        }
    }

    /// Up to `max` messages (1 to 1,000), oldest first, waiting up to
    /// `wait_ms` for the first; empty if none came.
    pub async fn consume_batch(
        &self,
        kind: Kind,
        name: &str,
        key: &str,
        max: u32,
        wait_ms: u64,
    ) -> Result<Vec<Delivery>, ClientError> {
        let request = Request::ConsumeBatch {
            kind,
            name: name.into(),
            key: key.into(),
            wait_ms,
            max,
        };
        match self.call(request).await? {
            Reply::Deliveries { deliveries } => Ok(deliveries),
            other => Err(unexpected(other)),
        }
    }

    pub async fn ack(&self, key: &str, id: u64) -> Result<(), ClientError> {
        self.call(Request::Ack {
            key: key.into(),
            id,
        })
        .await
        .map(drop)
    }

    /// Acks several messages in one write (1 to 1,000 ids); returns those
    /// acked (the others were not the caller's to ack any more).
    pub async fn ack_batch(&self, key: &str, ids: &[u64]) -> Result<Vec<u64>, ClientError> {
        let request = Request::AckBatch {
            key: key.into(),
            ids: ids.to_vec(),
        };
        match self.call(request).await? {
            Reply::Acked { acked } => Ok(acked),
            other => Err(unexpected(other)),
        }
    }
}

/// One request to the MOM node `node` (which runs it, or forwards it to
/// the leader), sealed here so its key stays here; no retry elsewhere.
pub async fn call_on(
    bus: &Bus,
    node: &str,
    request: Request,
    deadline: Duration,
) -> Result<Reply, ClientError> {
    let deadline = deadline + Duration::from_millis(request.wait_ms());
    let kind = op_name(&request);
    let (request, new_key) = request.seal()?;
    let answer = ask(bus, node, kind, &request, deadline).await?;
    Ok(Sealed::answer(new_key, answer)?)
}

/// Sends a sealed request to `node` once: the MOM's answer, or why none came.
async fn ask(
    bus: &Bus,
    node: &str,
    kind: &str,
    request: &Sealed,
    deadline: Duration,
) -> Result<Result<Reply, MomError>, ClientError> {
    let reply = bus.request("mom", node, kind, request, deadline).await?;
    reply
        .body_as()
        .map_err(|e| ClientError::Unexpected(format!("{e}: {}", reply.body.as_str())))
}

fn op_name(request: &Request) -> &'static str {
    match request {
        Request::CreateUser => "create_user",
        Request::AddUser { .. } => "add_user",
        Request::WhoAmI { .. } => "who_am_i",
        Request::SetPrivate { .. } => "set_private",
        Request::Grant { .. } => "grant",
        Request::Create { .. } => "create",
        Request::Delete { .. } => "delete",
        Request::List { .. } => "list",
        Request::Subscribe { .. } => "subscribe",
        Request::Unsubscribe { .. } => "unsubscribe",
        Request::Publish { .. } => "publish",
        Request::PublishBatch { .. } => "publish_batch",
        Request::Consume { .. } => "consume",
        Request::ConsumeBatch { .. } => "consume_batch",
        Request::Ack { .. } => "ack",
        Request::AckBatch { .. } => "ack_batch",
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Unexpected(format!("{reply:?}"))
}
