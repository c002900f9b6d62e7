//! The bus: one MQTT connection per node, carrying JSON [`Envelope`]s.
//!
//! [`Bus::start`] spawns the driver task that polls rumqttc's event loop. It
//! reconnects with exponential backoff (never spinning against a dead broker),
//! re-subscribes and re-announces retained state after every reconnect, routes
//! incoming messages to subscribers and RPC replies to their waiting callers,
//! and passes everything through the [`FaultShim`]. Malformed payloads are
//! counted, logged and dropped; they never stop the node.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerAddr;
use crate::envelope::{Envelope, EnvelopeFactory, Topics};
use crate::shim::{FaultRules, FaultShim, ShimReport, Verdict};

/// Largest payload a node sends or accepts. A MOM message of the largest
/// size allowed (512 KiB) must fit in a request forwarded to the leader, or
/// a consume's reply, as JSON even when every character is escaped (6 bytes
/// each). Raft frames are smaller (`replica::transport::MAX_FRAME_MESSAGE`).
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;
/// How many messages a subscriber may have queued before new ones are dropped.
const SUBSCRIBER_QUEUE: usize = 4096;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the bus is closed")]
    Closed,
    #[error("message of {size} bytes is larger than the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("MQTT client: {0}")]
    Client(#[from] rumqttc::ClientError),
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("no reply from {service}/{instance} within {deadline:?}; is the node up?")]
    Timeout {
        service: String,
        instance: String,
        deadline: Duration,
    },
    #[error("{service}/{instance} answered with an error: {message}")]
    Remote {
        service: String,
        instance: String,
        message: String,
    },
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// How to reach the broker and who we are.
#[derive(Debug, Clone)]
pub struct BusOptions {
    pub broker: BrokerAddr,
    /// Sender name in envelopes; replies come to `reply/<node>`.
    pub node: String,
    /// Cluster name (topic prefix).
    pub cluster: String,
    /// MQTT keep-alive; the broker declares us dead after 1.5 times this.
    pub keep_alive: Duration,
    /// Retained message the broker publishes if we vanish.
    pub last_will: Option<(String, Envelope)>,
    /// Larger incoming messages are dropped unread (counted as malformed).
    pub max_incoming: usize,
}

impl BusOptions {
    pub fn new(broker: BrokerAddr, node: &str, cluster: &str) -> Self {
        Self {
            broker,
            node: node.to_owned(),
            cluster: cluster.to_owned(),
            keep_alive: Duration::from_secs(5),
            last_will: None,
            max_incoming: MAX_PAYLOAD,
        }
    }
}

/// Options for a raw MQTT client of `broker` as `client_id`, with the
/// broker's credentials (for tools and tests that speak MQTT directly).
pub fn mqtt_options(broker: &BrokerAddr, client_id: &str) -> MqttOptions {
    let mut mqtt = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    if let Some(c) = &broker.credentials {
        mqtt.set_credentials(c.user.clone(), c.password.clone());
        if let Some(fp) = c.broker_fingerprint {
            mqtt.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(crate::tls::client_config(fp)),
            ));
        }
    }
    mqtt
}

/// A message delivered to a subscriber.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub topic: String,
    pub retained: bool,
    pub envelope: Envelope,
}

/// Counters a node reports about its bus.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BusStats {
    pub received: u64,
    pub malformed: u64,
    pub overflowed: u64,
    pub reconnects: u64,
}

struct Subscription {
    filter: String,
    tx: mpsc::Sender<Incoming>,
}

struct Inner {
    client: AsyncClient,
    factory: EnvelopeFactory,
    topics: Topics,
    broker: BrokerAddr,
    subs: Mutex<Vec<Subscription>>,
    /// Requests waiting for a reply, by id: the instance asked, and the waiter.
    pending: Mutex<HashMap<String, (String, oneshot::Sender<Envelope>)>>,
    /// Retained messages re-published after every (re)connect.
    announcements: Mutex<Vec<(String, Envelope)>>,
    /// Shared with this node's other connections (see [`Bus::lane`]).
    shim: Arc<Mutex<FaultShim>>,
    /// What this connection was made with (a lane copies it).
    options: BusOptions,
    connected: watch::Sender<bool>,
    /// Bumped at every connect and every connection loss, so a connect's
    /// late follow-up cannot mark a connection that is already gone.
    generation: AtomicU64,
    /// Whether the current connection has (or has queued) every filter in
    /// `subs`; read and written only under the `subs` lock, so a new
    /// subscription is either in the reconnect's list or sent by itself.
    subs_live: AtomicBool,
    closing: AtomicBool,
    driver_done: Notify,
    driver_finished: AtomicBool,
    stop_driver: CancellationToken,
    received: AtomicU64,
    malformed: AtomicU64,
    overflowed: AtomicU64,
    reconnects: AtomicU64,
}

/// A node's handle on the bus; cheap to clone.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl Bus {
    /// Creates the client and spawns its driver on the current tokio runtime.
    /// Returns at once; the connection comes up in the background.
    pub fn start(opts: BusOptions) -> Bus {
        Self::start_sharing(opts, Arc::new(Mutex::new(FaultShim::default())))
    }

    /// A second connection of this node to the broker, for traffic that
    /// must not queue behind the rest (raft: a burst of large messages on
    /// the node's other topics would hold its heartbeats back in the one
    /// TCP stream and the broker's one write buffer, and call elections
    /// for nothing). Same node name, same fault rules (one shim), no will;
    /// a message over `max_incoming` bytes is dropped before it is parsed,
    /// so a flood of oversized ones costs the lane little time.
    pub fn lane(&self, max_incoming: usize) -> Bus {
        let opts = BusOptions {
            last_will: None,
            max_incoming,
            ..self.inner.options.clone()
        };
        Self::start_sharing(opts, self.inner.shim.clone())
    }

    fn start_sharing(opts: BusOptions, shim: Arc<Mutex<FaultShim>>) -> Bus {
        // The client id is unique per connection so an old incarnation of the
        // same node (paused, say) never fights the new one for its session;
        // its random part keeps anyone from guessing it (a second client
        // with the same id would take the connection over).
        let mut secret = [0u8; 8];
        getrandom::fill(&mut secret).expect("the OS random source");
        let client_id = format!(
            "{}-{}-{:x}-{}",
            opts.node,
            std::process::id(),
            crate::envelope::now_ms(),
            hex::encode(secret)
        );
        let mut mqtt = mqtt_options(&opts.broker, &client_id);
        mqtt.set_keep_alive(opts.keep_alive)
            .set_clean_session(true)
            .set_max_packet_size(MAX_PAYLOAD + 1024, MAX_PAYLOAD + 1024);
        if let Some((topic, will)) = &opts.last_will {
            mqtt.set_last_will(LastWill::new(
                topic,
                will.to_bytes(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);
        // Small messages (replies, grants) go out at once instead of waiting
        // for the previous segment's ACK (Nagle + delayed ACK = ~40 ms).
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let inner = Arc::new(Inner {
            client,
            factory: EnvelopeFactory::new(&opts.node),
            topics: Topics::new(&opts.cluster),
            broker: opts.broker.clone(),
            subs: Mutex::new(Vec::new()),
            pending: Mutex::new(HashMap::new()),
            announcements: Mutex::new(Vec::new()),
            shim,
            options: opts.clone(),
            connected: watch::channel(false).0,
            generation: AtomicU64::new(0),
            subs_live: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            driver_done: Notify::new(),
            driver_finished: AtomicBool::new(false),
            stop_driver: CancellationToken::new(),
            received: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
        });
        tokio::spawn(drive(inner.clone(), eventloop));
        Bus { inner }
    }

    pub fn node(&self) -> &str {
        self.inner.factory.from()
    }

    pub fn topics(&self) -> &Topics {
        &self.inner.topics
    }

    pub fn broker(&self) -> &BrokerAddr {
        &self.inner.broker
    }

    /// A new envelope from this node.
    pub fn envelope<B: serde::Serialize>(&self, kind: &str, body: B) -> Envelope {
        self.inner.factory.make(kind, None, body)
    }

    /// Whether the broker connection is up now.
    pub fn is_connected(&self) -> bool {
        *self.inner.connected.borrow()
    }

    /// Waits until connected, or the timeout passes; returns whether connected.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.connected.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|c| *c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn stats(&self) -> BusStats {
        let i = &self.inner;
        BusStats {
            received: i.received.load(Ordering::Relaxed),
            malformed: i.malformed.load(Ordering::Relaxed),
            overflowed: i.overflowed.load(Ordering::Relaxed),
            reconnects: i.reconnects.load(Ordering::Relaxed),
        }
    }

    /// The fault rules in force and what they did (the `shim` telemetry).
    pub fn shim_report(&self) -> ShimReport {
        self.inner.shim.lock().report()
    }

    /// The same, with what the shim did to which message since the last
    /// call (for the dashboard's message-flow diagram).
    pub fn take_shim_report(&self) -> ShimReport {
        self.inner.shim.lock().take_report()
    }

    /// Subscribes to an MQTT filter; messages arrive on the returned channel.
    /// The subscription survives reconnects. If the receiver falls more than
    /// a few thousand messages behind, new ones are dropped and counted.
    pub async fn subscribe(&self, filter: &str) -> Result<mpsc::Receiver<Incoming>, BusError> {
        self.subscribe_all(&[filter.to_owned()]).await
    }

    /// Subscribes to several filters with one channel for all of them (keep
    /// the filters disjoint: a message matching two arrives twice).
    pub async fn subscribe_all(
        &self,
        filters: &[String],
    ) -> Result<mpsc::Receiver<Incoming>, BusError> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let connected = {
            let mut subs = self.inner.subs.lock();
            for filter in filters {
                subs.push(Subscription {
                    filter: filter.clone(),
                    tx: tx.clone(),
                });
            }
            self.inner.subs_live.load(Ordering::Acquire)
        };
        // Otherwise the driver subscribes when the connection comes up.
        if connected {
            for filter in filters {
                self.inner
                    .client
                    .subscribe(filter, QoS::AtLeastOnce)
                    .await?;
            }
        }
        Ok(rx)
    }

    /// Publishes an envelope (QoS 1).
    pub async fn publish(&self, topic: &str, envelope: &Envelope) -> Result<(), BusError> {
        self.publish_with(topic, envelope, QoS::AtLeastOnce, false)
            .await
    }

    /// Publishes a retained envelope and re-publishes it after every reconnect,
    /// replacing an earlier announcement on the same topic.
    pub async fn announce(&self, topic: &str, envelope: Envelope) -> Result<(), BusError> {
        {
            let mut list = self.inner.announcements.lock();
            list.retain(|(t, _)| t != topic);
            list.push((topic.to_owned(), envelope.clone()));
        }
        self.publish_with(topic, &envelope, QoS::AtLeastOnce, true)
            .await
    }

    /// Publishes a retained envelope once (not again after a reconnect: for
    /// state whose owner may have lost it meanwhile, like a primary record).
    pub async fn publish_retained(&self, topic: &str, envelope: &Envelope) -> Result<(), BusError> {
        self.publish_with(topic, envelope, QoS::AtLeastOnce, true)
            .await
    }

    /// Publishes without waiting (QoS 0); dropped if the client queue is full.
    /// For heartbeats and telemetry, where the next one replaces this one.
    pub fn publish_lossy(&self, topic: &str, envelope: &Envelope) {
        if self.is_connected() {
            let sent =
                self.inner
                    .client
                    .try_publish(topic, QoS::AtMostOnce, false, envelope.to_bytes());
            if let Err(e) = sent {
                tracing::trace!(error = %e, topic, "lossy publish dropped (client queue full)");
            }
        }
    }

    /// Publishes at QoS 0, waiting for room in the client queue. For
    /// high-rate data. While the broker is unreachable the message is dropped
    /// (`Ok(false)`): queued data would fill the client queue and crowd out
    /// the subscriptions a reconnect must send.
    pub async fn publish_qos0(&self, topic: &str, envelope: &Envelope) -> Result<bool, BusError> {
        if !self.is_connected() {
            return Ok(false);
        }
        self.publish_with(topic, envelope, QoS::AtMostOnce, false)
            .await
            .map(|()| true)
    }

    async fn publish_with(
        &self,
        topic: &str,
        envelope: &Envelope,
        qos: QoS,
        retain: bool,
    ) -> Result<(), BusError> {
        if self.inner.closing.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let bytes = envelope.to_bytes();
        // Refuse here: an oversized packet would make the client drop the connection.
        if bytes.len() > MAX_PAYLOAD {
            return Err(BusError::TooLarge {
                size: bytes.len(),
                max: MAX_PAYLOAD,
            });
        }
        self.inner.client.publish(topic, qos, retain, bytes).await?;
        Ok(())
    }

    /// Sends a request to `rpc/<service>/<instance>` and waits for its reply.
    pub async fn request<B: serde::Serialize>(
        &self,
        service: &str,
        instance: &str,
        kind: &str,
        body: B,
        deadline: Duration,
    ) -> Result<Envelope, RpcError> {
        let request = self.envelope(kind, body);
        let (tx, rx) = oneshot::channel();
        self.inner
            .pending
            .lock()
            .insert(request.id.clone(), (instance.to_owned(), tx));
        let topic = self.inner.topics.rpc(service, instance);
        let sent = async {
            self.publish(&topic, &request).await?;
            rx.await.map_err(|_| BusError::Closed)
        };
        let outcome = tokio::time::timeout(deadline, sent).await;
        self.inner.pending.lock().remove(&request.id);
        let reply = match outcome {
            Ok(reply) => reply?,
            Err(_) => {
                return Err(RpcError::Timeout {
                    service: service.to_owned(),
                    instance: instance.to_owned(),
                    deadline,
                });
            }
        };
        if reply.kind == "error" {
            #[derive(serde::Deserialize)]
            struct Failure {
                message: String,
            }
            let message = reply
                .body_as::<Failure>()
                .map(|f| f.message)
                .unwrap_or_else(|_| "unspecified error".to_owned());
            return Err(RpcError::Remote {
                service: service.to_owned(),
                instance: instance.to_owned(),
                message,
            });
        }
        Ok(reply)
    }

    /// Answers a request (to `reply/<requester>`).
    pub async fn reply<B: serde::Serialize>(
        &self,
        request: &Envelope,
        kind: &str,
        body: B,
    ) -> Result<(), BusError> {
        let reply = self
            .inner
            .factory
            .make(kind, Some(request.id.clone()), body);
        self.publish(&self.inner.topics.reply(&request.from), &reply)
            .await
    }

    /// Answers a request with an error the caller sees as [`RpcError::Remote`].
    pub async fn reply_error(&self, request: &Envelope, message: &str) -> Result<(), BusError> {
        self.reply(request, "error", serde_json::json!({ "message": message }))
            .await
    }

    /// Publishes `last_words` (retained), disconnects cleanly and stops the driver.
    pub async fn close(&self, last_words: Vec<(String, Envelope)>) {
        let inner = &self.inner;
        if self.is_connected() {
            for (topic, envelope) in &last_words {
                let sent = tokio::time::timeout(
                    Duration::from_millis(500),
                    self.publish_with(topic, envelope, QoS::AtLeastOnce, true),
                )
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    tracing::warn!(%topic, "could not send last words; the broker will publish the will");
                }
            }
            inner.closing.store(true, Ordering::Release);
            let done =
                tokio::time::timeout(Duration::from_millis(500), inner.client.disconnect()).await;
            if !matches!(done, Ok(Ok(()))) {
                tracing::warn!(
                    "could not queue a clean disconnect; the broker will publish the will"
                );
            }
            let done = inner.driver_done.notified();
            if !inner.driver_finished.load(Ordering::Acquire)
                && tokio::time::timeout(Duration::from_secs(2), done)
                    .await
                    .is_err()
            {
                tracing::warn!("the MQTT driver did not finish within 2 s of the disconnect");
            }
        } else if !last_words.is_empty() {
            tracing::warn!("not connected while closing; the broker will publish the will");
        }
        inner.closing.store(true, Ordering::Release);
        inner.stop_driver.cancel();
    }
}

async fn drive(inner: Arc<Inner>, mut eventloop: rumqttc::EventLoop) {
    let mut backoff = MIN_BACKOFF;
    let mut failures: u32 = 0;
    let mut ever_connected = false;
    // Set once DISCONNECT is written: read on until the broker closes.
    let mut disconnecting: Option<tokio::time::Instant> = None;
    loop {
        let event = tokio::select! {
            event = eventloop.poll() => event,
            _ = inner.stop_driver.cancelled() => break,
            _ = tokio::time::sleep_until(disconnecting.unwrap_or_else(tokio::time::Instant::now)),
                if disconnecting.is_some() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                if ever_connected {
                    inner.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(broker = %inner.broker, "reconnected to the broker");
                } else {
                    tracing::info!(broker = %inner.broker, "connected to the broker");
                }
                ever_connected = true;
                backoff = MIN_BACKOFF;
                failures = 0;
                let generation = inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
                on_connect(&inner, generation);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => route(&inner, publish),
            // Closing the socket now, with data from the broker unread,
            // would send a TCP reset, and a reset can discard the DISCONNECT
            // before the broker reads it: the broker would then publish the
            // will ("lost") over the last words. So drain until the broker
            // hangs up (an error, below), for at most a second.
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                disconnecting = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
            Ok(_) => {}
            Err(err) => {
                {
                    let _subs = inner.subs.lock();
                    inner.subs_live.store(false, Ordering::Release);
                }
                inner.generation.fetch_add(1, Ordering::AcqRel);
                inner.connected.send_replace(false);
                if inner.closing.load(Ordering::Acquire) {
                    break;
                }
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(
                        broker = %inner.broker,
                        error = %err,
                        retry_in = ?backoff,
                        "no connection to the broker; retrying"
                    );
                } else {
                    tracing::debug!(error = %err, "broker connection attempt failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = inner.stop_driver.cancelled() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    inner.connected.send_replace(false);
    inner.driver_finished.store(true, Ordering::Release);
    inner.driver_done.notify_waiters();
}

/// After (re)connecting: subscribe everything and re-announce retained state,
/// then report the connection up. Done by a spawned task that waits for room
/// in the client queue (the driver keeps polling meanwhile, so it drains): a
/// full queue at reconnect must not leave a node without its subscriptions.
/// The subscriptions are queued before anything sent after "connected", so a
/// request's reply subscription is in place before the request goes out.
fn on_connect(inner: &Arc<Inner>, generation: u64) {
    let reply = inner.topics.reply(inner.factory.from());
    let control = inner.topics.control(inner.factory.from());
    let mut filters: Vec<String> = vec![reply, control];
    {
        let mut subs = inner.subs.lock();
        subs.retain(|s| !s.tx.is_closed());
        for s in subs.iter() {
            if !filters.contains(&s.filter) {
                filters.push(s.filter.clone());
            }
        }
        // From here on a new subscription sends its own SUBSCRIBE.
        inner.subs_live.store(true, Ordering::Release);
    }
    let announcements = inner.announcements.lock().clone();
    let inner = inner.clone();
    tokio::spawn(async move {
        let client = &inner.client;
        for filter in filters {
            if let Err(err) = client.subscribe(&filter, QoS::AtLeastOnce).await {
                tracing::warn!(%filter, error = %err, "could not subscribe");
            }
        }
        inner.connected.send_if_modified(|up| {
            // Checked under the watch's lock, which a connection loss also takes.
            let current = inner.generation.load(Ordering::Acquire) == generation;
            let changed = current && !*up;
            if current {
                *up = true;
            }
            changed
        });
        for (topic, envelope) in announcements {
            if let Err(err) = client
                .publish(&topic, QoS::AtLeastOnce, true, envelope.to_bytes())
                .await
            {
                tracing::warn!(%topic, error = %err, "could not re-announce");
            }
        }
    });
}

fn route(inner: &Arc<Inner>, publish: rumqttc::Publish) {
    inner.received.fetch_add(1, Ordering::Relaxed);
    if publish.payload.is_empty() {
        // A cleared retained message: nothing to deliver.
        return;
    }
    if publish.payload.len() > inner.options.max_incoming {
        let n = inner.malformed.fetch_add(1, Ordering::Relaxed) + 1;
        if n <= 10 || n.is_multiple_of(1000) {
            tracing::warn!(
                topic = %publish.topic,
                bytes = publish.payload.len(),
                max = inner.options.max_incoming,
                "ignoring a message larger than this connection takes"
            );
        }
        return;
    }
    let envelope = match Envelope::from_bytes(&publish.payload) {
        Ok(envelope) => envelope,
        Err(err) => {
            let n = inner.malformed.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 10 || n.is_multiple_of(1000) {
                tracing::warn!(
                    topic = %publish.topic,
                    bytes = publish.payload.len(),
                    error = %err,
                    malformed_so_far = n,
                    "ignoring a message that is not a Distlab envelope"
                );
            }
            return;
        }
    };
    let topic = publish.topic;
    let retained = publish.retain;
    // This node's fault rules apply here, before the next message is routed:
    // a request sent right after "heal" must not meet the old rules.
    if topic == inner.topics.control(inner.factory.from()) {
        match envelope
            .body_as::<FaultRules>()
            .map_err(|e| e.to_string())
            .and_then(|rules| rules.checked().map_err(|e| e.to_string()))
        {
            Ok(rules) => {
                tracing::info!(?rules, "fault rules changed");
                inner.shim.lock().set_rules(rules);
            }
            Err(err) => tracing::warn!(error = %err, "ignoring malformed fault rules"),
        }
        return deliver(inner, topic, retained, envelope);
    }
    // Fault rules never cut the control plane that sets them.
    let verdict = if inner.topics.is_control(&topic) {
        Verdict::NOW
    } else {
        inner.shim.lock().inbound_id(&envelope.from, &envelope.id)
    };
    match verdict {
        Verdict::Drop => {}
        Verdict::Deliver { delay, copies } if delay.is_zero() => {
            for _ in 1..copies {
                deliver(inner, topic.clone(), retained, envelope.clone());
            }
            deliver(inner, topic, retained, envelope);
        }
        // A delayed message waits on a timer of its own: the messages after
        // it (from this peer with jitter, from every other peer) go on.
        Verdict::Deliver { delay, copies } => {
            let inner = inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                for _ in 1..copies {
                    deliver(&inner, topic.clone(), retained, envelope.clone());
                }
                deliver(&inner, topic, retained, envelope);
            });
        }
    }
}

/// Hands a message that passed the shim to its waiter or subscribers.
fn deliver(inner: &Inner, topic: String, retained: bool, envelope: Envelope) {
    if topic == inner.topics.reply(inner.factory.from()) {
        // Only the instance asked answers; another sender's "reply" is
        // ignored and the request keeps waiting for the real one.
        let waiter = envelope.corr.as_ref().and_then(|corr| {
            let mut pending = inner.pending.lock();
            match pending.get(corr) {
                Some((asked, _)) if *asked != envelope.from => {
                    tracing::warn!(from = %envelope.from, %asked, "a reply from another node than the one asked ignored");
                    None
                }
                Some(_) => pending.remove(corr).map(|(_, tx)| tx),
                None => None,
            }
        });
        match waiter {
            Some(tx) => {
                if tx.send(envelope).is_err() {
                    tracing::debug!("reply after its caller gave up");
                }
            }
            None => tracing::debug!(corr = ?envelope.corr, "reply for no waiting request (late?)"),
        }
        return;
    }
    let mut subs = inner.subs.lock();
    subs.retain(|s| !s.tx.is_closed());
    for sub in subs.iter() {
        if !rumqttc::matches(&topic, Topics::match_filter(&sub.filter)) {
            continue;
        }
        let incoming = Incoming {
            topic: topic.clone(),
            retained,
            envelope: envelope.clone(),
        };
        if sub.tx.try_send(incoming).is_err() {
            let n = inner.overflowed.fetch_add(1, Ordering::Relaxed) + 1;
            if n <= 10 || n.is_multiple_of(1000) {
                tracing::warn!(%topic, filter = %sub.filter, "subscriber is too slow; dropping a message");
            }
        }
    }
}
