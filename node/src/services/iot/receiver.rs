//! `receiver` role: takes its share of all sensor streams through an MQTT
//! shared subscription (`$share/distlab-receivers/…/data/sensors/+`: the
//! broker hands each reading to one receiver, and a dead receiver's share
//! moves to the others), buffers at most `iot.buffer` readings (more are
//! dropped and counted, the receive loop never waits), and writes its buffer
//! to the store only while it holds a grant. A batch the store did not
//! confirm is kept and sent again under the next grant; the store ignores
//! readings it already has, so nothing is written twice.
//!
//! This is the async shell: what to write, when, and how to hand the token
//! on is decided by the [`Holder`] state machine; the shell feeds it the bus
//! and carries out its [`Step`]s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::task::TaskTracker;

use super::holder::{Holder, Step};
use super::keys::{KeyPair, PIN_FILE, PinnedKey};
use super::rpc::StoreRequest;
use super::sensor::{Reading, readings_of};
use super::token::SignedGrant;
use crate::bus::RpcError;
use crate::config::Role;
use crate::envelope::now_ms;
use crate::runtime::NodeContext;
use crate::services::StartError;

pub const SHARE_GROUP: &str = "distlab-receivers";

/// Body of a `write` request to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub grant: SignedGrant,
    pub readings: Vec<Reading>,
    /// The holder's signature over the grant and the batch digest.
    #[serde(default)]
    pub proof: String,
}

/// Body of the retained `iot/keys/<receiver>`: the receiver's public key,
/// which the coordinator puts into every grant it gives that receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverKey {
    pub receiver: String,
    pub public: String,
}

/// A receiver's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverStats {
    pub accepted: u64,
    pub dropped: u64,
    pub written: u64,
    /// In the buffer or in an unconfirmed batch.
    pub buffered: u64,
    pub capacity: u64,
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let store = ctx
        .config
        .nodes_with(Role::Store)
        .into_iter()
        .next()
        .ok_or(StartError::Setup(
            "the lab has no node with the `store` role for this receiver to write to",
        ))?;
    let iot = &ctx.config.iot;
    let keys = KeyPair::load_or_create(&ctx.dir.join("receiver.key"))?;
    let holder = Holder::new(ctx.id(), iot.mode, iot.lease_ms, iot.buffer, keys);
    let public = ReceiverKey {
        receiver: ctx.id().to_owned(),
        public: holder.public_hex(),
    };
    let holder = Arc::new(Mutex::new(holder));
    let topics = ctx.bus.topics().clone();
    let mut readings = ctx
        .bus
        .subscribe(&super::sensors_shared(&topics, SHARE_GROUP))
        .await?;
    // The coordinator's key: pinned at first sight (see PinnedKey).
    let mut pin = PinnedKey::load(&ctx.dir.join(PIN_FILE));
    if let Some(key) = pin.key() {
        holder.lock().set_coordinator_key(key);
    }
    let coordinators = ctx.config.nodes_with(Role::Coordinator);
    let mut coordinator_key = ctx.bus.subscribe(&topics.service("iot", "key")).await?;
    let mut roots = ctx.bus.subscribe(&topics.service("iot", "root")).await?;
    let mut grants = ctx.bus.subscribe(&topics.service("iot", "grant")).await?;
    // Only now tell the coordinator our key: it grants nobody without one, so
    // no grant can come before we listen for it.
    ctx.announce(
        &topics.service("iot", &format!("keys/{}", ctx.id())),
        "receiver-key",
        &public,
    )
    .await?;

    let snap = holder.clone();
    ctx.spawn_telemetry(tasks, "receiver", Duration::from_millis(250), move || {
        snap.lock().stats()
    });

    let intake = holder.clone();
    let stop = ctx.shutdown.clone();
    tasks.spawn(async move {
        loop {
            let m = tokio::select! {
                m = readings.recv() => m,
                _ = stop.cancelled() => return,
            };
            let Some(m) = m else { return };
            let Some(taken) = readings_of(&m.envelope) else {
                tracing::debug!(topic = %m.topic, "not a reading; ignored");
                continue;
            };
            intake.lock().received(taken);
        }
    });

    let turns = tasks.clone();
    tasks.spawn(async move {
        loop {
            let m = tokio::select! {
                // Biased: the coordinator's key before any grant it signed.
                biased;
                Some(k) = coordinator_key.recv() => {
                    match pin.take(&k.envelope, &coordinators) {
                        Ok(key) => holder.lock().set_coordinator_key(key),
                        Err(why) => tracing::warn!("{why}"),
                    }
                    continue;
                }
                Some(r) = roots.recv() => {
                    match r.envelope.body_as::<SignedGrant>() {
                        Ok(signed) => holder.lock().observe_root(&signed),
                        Err(err) => tracing::warn!(error = %err, "malformed root grant; ignored"),
                    }
                    continue;
                }
                m = grants.recv() => m,
                _ = ctx.shutdown.cancelled() => return,
            };
            let Some(m) = m else { return };
            let Ok(signed) = m.envelope.body_as::<SignedGrant>() else {
                tracing::debug!(from = %m.envelope.from, "malformed grant; ignored");
                continue;
            };
            match holder.lock().granted(signed, now_ms()) {
                Step::Idle => {}
                Step::NotGenuine { signer, epoch } => {
                    tracing::warn!(?signer, epoch, "ignoring a grant that is not genuine")
                }
                step => {
                    turns.spawn(take_turn(ctx.clone(), holder.clone(), store.clone(), step));
                }
            }
        }
    });
    Ok(())
}

/// Carries out one turn with the token, step by step, until it is handed on.
async fn take_turn(ctx: NodeContext, holder: Arc<Mutex<Holder>>, store: String, mut step: Step) {
    let bus = &ctx.bus;
    loop {
        step = match step {
            Step::Write {
                request,
                timeout_ms,
            } => {
                let started = Instant::now();
                let rows = request.readings.len();
                let (kind, body) = StoreRequest::Write(request).to_wire();
                let deadline = Duration::from_millis(timeout_ms);
                let reply = tokio::select! {
                    reply = bus.request("store", &store, kind, &body, deadline) => reply,
                    // Going down: the batch stays unconfirmed.
                    _ = ctx.shutdown.cancelled() => return,
                };
                match &reply {
                    Ok(_) => {
                        tracing::debug!(
                            rows,
                            ms = started.elapsed().as_secs_f64() * 1e3,
                            "batch written"
                        )
                    }
                    Err(RpcError::Remote { message, .. }) => {
                        tracing::warn!(%message, rows, "store refused the batch; keeping it for the next grant")
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, rows, "batch not confirmed; keeping it for the next grant")
                    }
                }
                holder.lock().written(reply.is_ok(), now_ms())
            }
            Step::Hold { until_ms, grant } => {
                let wait = Duration::from_millis(until_ms.saturating_sub(now_ms()));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ctx.shutdown.cancelled() => return,
                }
                holder.lock().hand_off(&grant, now_ms())
            }
            Step::Release(release) => {
                // As a JSON tree, as always (its keys sorted on the wire).
                let envelope = bus.envelope("release", json!(release));
                if let Err(err) = bus
                    .publish(&bus.topics().service("iot", "release"), &envelope)
                    .await
                {
                    // Not fatal: the grant lapses and the coordinator grants
                    // the next receiver in a new epoch.
                    tracing::warn!(error = %err, epoch = release.epoch, seq = release.seq, "release not sent; the grant will lapse");
                }
                return;
            }
            Step::Pass(pass) => {
                let envelope = bus.envelope("grant", json!(pass));
                if let Err(err) = bus
                    .publish(&bus.topics().service("iot", "grant"), &envelope)
                    .await
                {
                    // Not fatal: the coordinator sees no pass and roots a
                    // new epoch once the lease is over.
                    tracing::warn!(error = %err, to = %pass.grant.holder, epoch = pass.grant.epoch, seq = pass.grant.seq, "ring pass not sent; the coordinator re-roots at the lapse");
                }
                return;
            }
            Step::NoSuccessor { epoch } => {
                tracing::warn!(
                    epoch,
                    "not in this epoch's ring: nobody to pass to; the coordinator re-roots at the lapse"
                );
                return;
            }
            Step::Idle | Step::NotGenuine { .. } => return,
        };
    }
}
