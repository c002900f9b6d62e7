//! The MOM's operations as callers see them (by access key), shared by the
//! HTTP APIs and MQTT RPC: key checks, size limits, blocking consume.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::model::{CONSUME_MAX, ChannelInfo, Command, Delivery, Kind, MomError, Outcome};
use super::store::user_id;
use crate::config::{MAX_WAIT_MS, MomSettings};
use crate::envelope::now_ms;

/// One request, as the RPC body (`kind` of the envelope = the op name) and
/// the form of the client library's calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    CreateUser,
    /// The caller's user id (what an owner grants access to).
    WhoAmI {
        key: String,
    },
    /// The owner makes its channel private or public again.
    SetPrivate {
        kind: Kind,
        name: String,
        key: String,
        private: bool,
    },
    /// The owner lets `user` (an id, from `WhoAmI`) subscribe to its
    /// private channel.
    Grant {
        kind: Kind,
        name: String,
        key: String,
        user: String,
    },
    /// A new user made where the request arrived (its key never leaves that
    /// node): only the id travels. The sealed form of `CreateUser`.
    AddUser {
        user: String,
    },
    Create {
        kind: Kind,
        name: String,
        key: String,
        /// Subscribe the creator at once (the seed's API always does).
        #[serde(default, skip_serializing_if = "is_false")]
        subscribe: bool,
    },
    Delete {
        kind: Kind,
        name: String,
        key: String,
    },
    List {
        kind: Option<Kind>,
        key: String,
        #[serde(default)]
        mine: bool,
    },
    Subscribe {
        kind: Kind,
        name: String,
        key: String,
    },
    Unsubscribe {
        kind: Kind,
        name: String,
        key: String,
    },
    Publish {
        kind: Kind,
        name: String,
        key: String,
        message: String,
        /// Publish as a subscriber, the seed's rules: refused unless the
        /// caller is subscribed, and a topic makes no copy for the caller.
        #[serde(default, skip_serializing_if = "is_false")]
        as_subscriber: bool,
    },
    /// Several messages to one channel, stored in order, all or none.
    PublishBatch {
        kind: Kind,
        name: String,
        key: String,
        messages: Vec<String>,
    },
    Consume {
        kind: Kind,
        name: String,
        key: String,
        #[serde(default)]
        wait_ms: u64,
    },
    /// Up to `max` messages at once (waiting up to `wait_ms` for the first).
    ConsumeBatch {
        kind: Kind,
        name: String,
        key: String,
        #[serde(default)]
        wait_ms: u64,
        max: u32,
    },
    Ack {
        key: String,
        id: u64,
    },
    /// Several acks in one write; ids not held by the caller are skipped.
    AckBatch {
        key: String,
        ids: Vec<u64>,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Key {
        key: String,
    },
    /// A user's id.
    User {
        id: String,
    },
    Channels {
        channels: Vec<ChannelInfo>,
    },
    Published {
        ids: Vec<u64>,
    },
    /// A batch: the copy ids of each message, in order.
    PublishedBatch {
        batch: Vec<Vec<u64>>,
    },
    Changed {
        changed: bool,
    },
    Done {
        ok: bool,
    },
    /// A batch consume: what was handed out, oldest first.
    Deliveries {
        deliveries: Vec<Delivery>,
    },
    /// A batch ack: the ids acked.
    Acked {
        acked: Vec<u64>,
    },
    /// A consume: the delivery, or none within the wait. (Last: untagged,
    /// a missing `delivery` would read as none.)
    Delivery {
        delivery: Option<Delivery>,
    },
}

/// A request as it crosses the bus: every `key` replaced by its user id
/// (`user_id(key)`), so an access key never leaves the node (or CLI) that
/// received it; a `CreateUser` becomes an `AddUser` whose key stays with
/// the sender ([`Request::seal`]). Only bus requests are sealed: a node
/// accepts an id in place of a key only from the bus, whose clients hold
/// the lab's credentials, never from HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(pub Request);

impl Request {
    /// The caller's key, in every request that has one.
    fn key_mut(&mut self) -> Option<&mut String> {
        match self {
            Request::CreateUser | Request::AddUser { .. } => None,
            Request::WhoAmI { key }
            | Request::SetPrivate { key, .. }
            | Request::Grant { key, .. }
            | Request::Create { key, .. }
            | Request::Delete { key, .. }
            | Request::List { key, .. }
            | Request::Subscribe { key, .. }
            | Request::Unsubscribe { key, .. }
            | Request::Publish { key, .. }
            | Request::PublishBatch { key, .. }
            | Request::Consume { key, .. }
            | Request::ConsumeBatch { key, .. }
            | Request::Ack { key, .. }
            | Request::AckBatch { key, .. } => Some(key),
        }
    }

    /// The sealed form, and the key of a new user (kept by the caller).
    pub fn seal(self) -> Result<(Sealed, Option<String>), MomError> {
        let id = |key: String| match key.trim() {
            "" => String::new(),
            key => user_id(key),
        };
        let mut sealed = match self {
            Request::CreateUser => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes)
                    .map_err(|e| MomError::Storage(format!("no randomness for a key: {e}")))?;
                let key = hex::encode(bytes);
                let user = user_id(&key);
                return Ok((Sealed(Request::AddUser { user }), Some(key)));
            }
            other => other,
        };
        if let Some(key) = sealed.key_mut() {
            *key = id(std::mem::take(key));
        }
        Ok((Sealed(sealed), None))
    }
}

impl Sealed {
    /// What the caller of the unsealed request gets: a new user's key for
    /// the `AddUser` that made it (also when a retry finds it made).
    pub fn answer(
        new_key: Option<String>,
        result: Result<Reply, MomError>,
    ) -> Result<Reply, MomError> {
        match (new_key, result) {
            (Some(key), Ok(_) | Err(MomError::Exists(_))) => Ok(Reply::Key { key }),
            (_, result) => result,
        }
    }
}

#[derive(Clone)]
pub struct Mom {
    engine: Engine,
    settings: MomSettings,
    route: Option<Route>,
    known: Arc<Mutex<std::collections::HashSet<String>>>,
    /// Consumes waiting here for a message right now (telemetry; a test
    /// proves a consumer blocked before it publishes).
    waiting: Arc<AtomicUsize>,
}

/// Counts one waiting consume while it lives.
struct Waiting(Arc<AtomicUsize>);

impl Waiting {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Messages per batch publish at most.
pub const BATCH_MESSAGES: usize = 1000;
/// Bytes of message bodies per batch publish at most (with the 6-fold JSON
/// escaping bound, a batch fits in one replication append).
pub const BATCH_BYTES: usize = 512 * 1024;

/// Valid user ids remembered at most.
const KNOWN_USERS: usize = 100_000;

/// Where requests go when this node is not the primary.
#[derive(Clone)]
pub struct Route {
    pub bus: crate::bus::Bus,
    pub me: String,
    /// Who the primary is, as this node knows it.
    pub replicas: crate::replica::Replicas,
}

impl Route {
    fn primary(&self) -> Option<String> {
        self.replicas.leader()
    }
}

pub use crate::runtime::FORWARDED;

/// How long a request waits for a primary to appear before it fails.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(10);

/// Runs `request` on the primary `p` (no answer counts as "not primary", so
/// the caller retries once the primary changes).
async fn forward(route: &Route, p: &str, request: &Sealed) -> Result<Reply, MomError> {
    let wait = request.0.wait_ms();
    let deadline = Duration::from_millis(3000 + wait);
    let reply = route
        .bus
        .request("mom", p, FORWARDED, request, deadline)
        .await
        .map_err(|e| MomError::NotPrimary(format!("the primary ({p}) did not answer: {e}")))?;
    reply
        .body_as::<Result<Reply, MomError>>()
        .map_err(|e| MomError::Storage(format!("bad answer from {p}: {e}")))?
}

impl Mom {
    pub fn new(engine: Engine, settings: MomSettings) -> Self {
        Self {
            engine,
            settings,
            route: None,
            known: Arc::default(),
            waiting: Arc::default(),
        }
    }

    /// Requests this node cannot serve (it is not the primary) are
    /// forwarded to the primary over MQTT RPC.
    pub fn with_route(mut self, route: Route) -> Self {
        self.route = Some(route);
        self
    }

    /// Runs a request here if this node is the primary, else on the primary.
    /// While there is no primary (election, failover) it waits and retries
    /// for up to [`FAILOVER_WAIT`], so clients ride over a takeover.
    pub async fn call(&self, request: Request) -> Result<Reply, MomError> {
        let (sealed, new_key) = request.seal()?;
        Sealed::answer(new_key, self.call_sealed(sealed).await)
    }

    /// [`Mom::call`] for a request that came sealed over the bus.
    pub async fn call_sealed(&self, request: Sealed) -> Result<Reply, MomError> {
        let Some(route) = &self.route else {
            return self.call_here(request).await;
        };
        let deadline = tokio::time::Instant::now() + FAILOVER_WAIT;
        loop {
            let result = match route.primary() {
                Some(p) if p == route.me => self.call_here(request.clone()).await,
                Some(p) => forward(route, &p, &request).await,
                None => Err(MomError::NotPrimary(
                    "no MOM primary right now (election or failover in progress); try again shortly".into(),
                )),
            };
            match result {
                Err(MomError::NotPrimary(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Who leads the group, as this node knows it.
    pub fn leader_status(&self) -> super::gateway::LeaderStatus {
        let (node, status) = match &self.route {
            Some(route) => (route.me.clone(), route.replicas.status()),
            None => (String::new(), Default::default()),
        };
        super::gateway::LeaderStatus {
            node,
            role: crate::config::Role::Mom.as_str().to_owned(),
            leader: status.leader,
            term: status.term,
            members: Vec::new(),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn settings(&self) -> &MomSettings {
        &self.settings
    }

    /// Runs one request on this node.
    pub async fn call_here(&self, request: Sealed) -> Result<Reply, MomError> {
        match request.0 {
            Request::CreateUser => Err(MomError::BadRequest(
                "a new user is made where the request arrives (sealed as add_user)".into(),
            )),
            Request::WhoAmI { key } => Ok(Reply::User {
                id: self.user(&key).await?,
            }),
            Request::SetPrivate {
                kind,
                name,
                key,
                private,
            } => {
                let user = self.user(&key).await?;
                let command = Command::SetPrivate {
                    kind,
                    name,
                    user,
                    private,
                };
                self.apply(command).await?;
                Ok(Reply::Done { ok: true })
            }
            Request::Grant {
                kind,
                name,
                key,
                user: to,
            } => {
                let user = self.user(&key).await?;
                let command = Command::Grant {
                    kind,
                    name,
                    user,
                    to,
                };
                self.apply(command).await?;
                Ok(Reply::Done { ok: true })
            }
            Request::AddUser { user } => {
                if user.is_empty() {
                    return Err(MomError::BadRequest("add_user needs a user id".into()));
                }
                self.apply(Command::AddUser { key: user }).await?;
                Ok(Reply::Done { ok: true })
            }
            Request::Create {
                kind,
                name,
                key,
                subscribe,
            } => {
                let owner = self.user(&key).await?;
                let command = Command::Create {
                    kind,
                    name,
                    owner,
                    subscribe,
                };
                self.apply(command).await?;
                Ok(Reply::Done { ok: true })
            }
            Request::Delete { kind, name, key } => {
                let user = self.user(&key).await?;
                self.apply(Command::Delete { kind, name, user }).await?;
                Ok(Reply::Done { ok: true })
            }
            Request::List { kind, key, mine } => {
                let user = self.user(&key).await?;
                let mut channels = self.engine.list(kind, now_ms()).await?;
                if mine {
                    channels.retain(|c| c.owner == user);
                }
                Ok(Reply::Channels { channels })
            }
            Request::Subscribe { kind, name, key } => {
                let user = self.user(&key).await?;
                match self.apply(Command::Subscribe { kind, name, user }).await? {
                    Outcome::Changed { changed } => Ok(Reply::Changed { changed }),
                    other => Err(unexpected(other)),
                }
            }
            Request::Unsubscribe { kind, name, key } => {
                let user = self.user(&key).await?;
                match self
                    .apply(Command::Unsubscribe { kind, name, user })
                    .await?
                {
                    Outcome::Changed { changed } => Ok(Reply::Changed { changed }),
                    other => Err(unexpected(other)),
                }
            }
            Request::Publish {
                kind,
                name,
                key,
                message,
                as_subscriber,
            } => {
                // Any valid user may publish, unless it asks for the seed's
                // rules (subscribers only, no copy for oneself).
                let user = self.user(&key).await?;
                self.check_size(&message)?;
                let command = Command::Publish {
                    kind,
                    name,
                    body: message,
                    now_ms: now_ms(),
                    sender: as_subscriber.then_some(user),
                };
                match self.apply(command).await? {
                    Outcome::Published { ids } => Ok(Reply::Published { ids }),
                    other => Err(unexpected(other)),
                }
            }
            Request::PublishBatch {
                kind,
                name,
                key,
                messages,
            } => {
                self.user(&key).await?;
                if messages.is_empty() || messages.len() > BATCH_MESSAGES {
                    return Err(MomError::BadRequest(format!(
                        "a batch holds 1 to {BATCH_MESSAGES} messages, not {}",
                        messages.len()
                    )));
                }
                let total: usize = messages.iter().map(String::len).sum();
                if total > BATCH_BYTES {
                    return Err(MomError::Oversize(format!(
                        "a batch of {total} bytes is over the limit of {BATCH_BYTES} bytes"
                    )));
                }
                for m in &messages {
                    self.check_size(m)?;
                }
                let command = Command::PublishBatch {
                    kind,
                    name,
                    bodies: messages,
                    now_ms: now_ms(),
                };
                match self.apply(command).await? {
                    Outcome::PublishedBatch { ids } => Ok(Reply::PublishedBatch { batch: ids }),
                    other => Err(unexpected(other)),
                }
            }
            Request::Consume {
                kind,
                name,
                key,
                wait_ms,
            } => {
                let user = self.user(&key).await?;
                let wait = self.wait(wait_ms);
                let delivery = self.consume(kind, &name, &user, wait, 1).await?.pop();
                Ok(Reply::Delivery { delivery })
            }
            Request::ConsumeBatch {
                kind,
                name,
                key,
                wait_ms,
                max,
            } => {
                let user = self.user(&key).await?;
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                if !(1..=CONSUME_MAX).contains(&max) {
                    return Err(MomError::BadRequest(format!(
                        "a consume takes 1 to {CONSUME_MAX} messages, not {max}"
                    )));
                }
                let deliveries = self
                    .consume(kind, &name, &user, self.wait(wait_ms), max)
                    .await?;
                Ok(Reply::Deliveries { deliveries })
            }
            Request::Ack { key, id } => {
                let user = self.user(&key).await?;
                self.apply(Command::Ack { user, id }).await?;
                Ok(Reply::Done { ok: true })
            }
            Request::AckBatch { key, ids } => {
                let user = self.user(&key).await?;
                if ids.is_empty() || ids.len() > CONSUME_MAX {
                    return Err(MomError::BadRequest(format!(
                        "a batch ack takes 1 to {CONSUME_MAX} ids, not {}",
                        ids.len()
                    )));
                }
                match self.apply(Command::AckBatch { user, ids }).await? {
                    Outcome::Acked { ids } => Ok(Reply::Acked { acked: ids }),
                    other => Err(unexpected(other)),
                }
            }
        }
    }

    fn check_size(&self, message: &str) -> Result<(), MomError> {
        if message.len() > self.settings.max_message {
            return Err(MomError::TooLarge {
                size: message.len(),
                max: self.settings.max_message,
            });
        }
        Ok(())
    }

    /// `id` (a sealed request's `key`) if it is a user's, else `BadKey`.
    pub async fn user(&self, id: &str) -> Result<String, MomError> {
        if id.is_empty() {
            return Err(MomError::BadKey);
        }
        let id = id.to_owned();
        // Users are never removed, so a known id stays valid: remember it
        // (saves a trip to the engine on every call).
        if self.known.lock().contains(&id) {
            return Ok(id);
        }
        if !self.engine.is_user(&id).await? {
            return Err(MomError::BadKey);
        }
        let mut known = self.known.lock();
        if known.len() < KNOWN_USERS {
            known.insert(id.clone());
        }
        Ok(id)
    }

    /// Consumes waiting on this node for a first message right now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// How long a consume asking for `wait_ms` may wait.
    fn wait(&self, wait_ms: u64) -> Duration {
        Duration::from_millis(wait_ms.min(self.settings.max_wait_ms))
    }

    /// Consumes up to `max` messages, waiting up to `wait` for the first
    /// to arrive; none if nothing came within it.
    pub async fn consume(
        &self,
        kind: Kind,
        name: &str,
        user: &str,
        wait: Duration,
        max: usize,
    ) -> Result<Vec<Delivery>, MomError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waiting = None;
        let mut first = true;
        loop {
            // Registered before looking, so a publish in between is not missed.
            let published = self.engine.published().notified();
            tokio::pin!(published);
            published.as_mut().enable();
            // After the first try (which also checks the channel and the
            // subscription), look before writing: a consume that finds
            // nothing costs a read here, not an entry in the log.
            let look = first || self.engine.has_visible(kind, name, user, now_ms()).await?;
            first = false;
            if !look {
                let now = tokio::time::Instant::now();
                if now >= deadline {
                    return Ok(Vec::new());
                }
                waiting.get_or_insert_with(|| Waiting::new(&self.waiting));
                let nap = (deadline - now).min(Duration::from_millis(250));
                tokio::time::timeout(nap, published).await.ok();
                continue;
            }
            let command = Command::Consume {
                kind,
                name: name.to_owned(),
                user: user.to_owned(),
                now_ms: now_ms(),
                visibility_ms: self.settings.visibility_ms,
                max: u32::try_from(max).unwrap_or(u32::MAX),
            };
            let deliveries = match self.apply(command).await? {
                Outcome::Delivered { deliveries } => deliveries,
                other => return Err(unexpected(other)),
            };
            let now = tokio::time::Instant::now();
            if !deliveries.is_empty() || now >= deadline {
                return Ok(deliveries);
            }
            // Also look again now and then: an unacked message may come due.
            let nap = (deadline - now).min(Duration::from_millis(250));
            waiting.get_or_insert_with(|| Waiting::new(&self.waiting));
            // Either a publish woke it or the nap ended: look again.
            tokio::time::timeout(nap, published).await.ok();
        }
    }

    async fn apply(&self, command: Command) -> Result<Outcome, MomError> {
        self.engine.apply(command).await
    }
}

impl Request {
    /// How long the request may wait for a message (consumes), ms.
    /// How long a consume may wait, ms: what it asks, at most
    /// [`MAX_WAIT_MS`] (a node waits no longer however large the ask, and
    /// deadlines computed from it cannot overflow).
    pub fn wait_ms(&self) -> u64 {
        match self {
            Request::Consume { wait_ms, .. } | Request::ConsumeBatch { wait_ms, .. } => {
                (*wait_ms).min(MAX_WAIT_MS)
            }
            _ => 0,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn unexpected(outcome: Outcome) -> MomError {
    MomError::Storage(format!("unexpected outcome {outcome:?}"))
}
