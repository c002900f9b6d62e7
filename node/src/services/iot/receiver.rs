//! `receiver` role: takes its share of all sensor streams through an MQTT
//! shared subscription (`$share/distlab-receivers/…/data/sensors/+`: the
//! broker hands each reading to one receiver, and a dead receiver's share
//! moves to the others), buffers at most `iot.buffer` readings (more are
//! dropped and counted, the receive loop never waits), and writes its buffer
//! to the store only while it holds a grant. A batch the store did not
//! confirm is kept and sent again under the next grant; the store ignores
//! readings it already has, so nothing is written twice.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::task::TaskTracker;

use super::coordinator::PublicKey;
use super::coordinator::Release;
use super::db::digest;
use super::sensor::{Reading, readings_of};
use super::token::{Grant, KeyPair, SignedGrant, TokenGate, public_key_from_hex, successor};
use crate::bus::RpcError;
use crate::config::Role;
use crate::config::TokenMode;
use crate::envelope::now_ms;
use crate::runtime::NodeContext;
use crate::services::StartError;

pub const SHARE_GROUP: &str = "distlab-receivers";
/// Readings written under one grant at most (keeps a write request well under
/// the bus's payload limit); the rest wait for the next grant.
pub const MAX_BATCH: usize = 4000;
/// Shortest turn of a holder that has no backlog.
const MIN_TURN: Duration = Duration::from_millis(20);
/// How long a holder waits for the store's answer at most.
const WRITE_TIMEOUT_MS: u64 = 2000;

/// Body of a `write` request to the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

#[derive(Debug, Default)]
struct State {
    buffer: VecDeque<Reading>,
    /// Taken from the buffer, not yet confirmed by the store.
    pending: Vec<Reading>,
    writing: bool,
    stats: ReceiverStats,
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let store = ctx
        .config
        .nodes_with(Role::Store)
        .into_iter()
        .next()
        .ok_or("the lab has no node with the `store` role for this receiver to write to")?;
    let capacity = ctx.config.iot.buffer;
    let topics = ctx.bus.topics().clone();
    let keys = Arc::new(KeyPair::load_or_create(&ctx.dir.join("receiver.key"))?);
    let state = Arc::new(Mutex::new(State::default()));
    state.lock().stats.capacity = capacity as u64;
    let mut readings = ctx
        .bus
        .subscribe(&super::sensors_shared(&topics, SHARE_GROUP))
        .await?;
    let mut coordinator_key = ctx.bus.subscribe(&topics.service("iot", "key")).await?;
    let mut roots = ctx.bus.subscribe(&topics.service("iot", "root")).await?;
    let mut grants = ctx.bus.subscribe(&topics.service("iot", "grant")).await?;
    // Only now tell the coordinator our key: it grants nobody without one, so
    // no grant can come before we listen for it.
    let public = ReceiverKey {
        receiver: ctx.id().to_owned(),
        public: keys.public_hex(),
    };
    ctx.announce(
        &topics.service("iot", &format!("keys/{}", ctx.id())),
        "receiver-key",
        &public,
    )
    .await?;

    let snap = state.clone();
    ctx.spawn_telemetry(tasks, "receiver", Duration::from_millis(250), move || {
        let s = snap.lock();
        ReceiverStats {
            buffered: (s.buffer.len() + s.pending.len()) as u64,
            ..s.stats
        }
    });

    let intake = state.clone();
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
            let mut s = intake.lock();
            let room = capacity.saturating_sub(s.buffer.len()).min(taken.len());
            s.stats.dropped += (taken.len() - room) as u64;
            s.stats.accepted += room as u64;
            s.buffer.extend(taken.into_iter().take(room));
        }
    });

    let me = ctx.id().to_owned();
    let inner = tasks.clone();
    let ring = ctx.config.iot.mode == TokenMode::Ring;
    let lease_ms = ctx.config.iot.lease_ms;
    // What this receiver knows of the token: the coordinator's key, the
    // current epoch and (ring mode) its ring.
    let gate = Arc::new(Mutex::new(TokenGate::new(None)));
    tasks.spawn(async move {
        loop {
            let m = tokio::select! {
                // Biased: the coordinator's key before any grant it signed.
                biased;
                Some(k) = coordinator_key.recv() => {
                    if let Some(key) = k.envelope.body_as::<PublicKey>().ok().and_then(|k| public_key_from_hex(&k.public)) {
                        gate.lock().set_key(key);
                    }
                    continue;
                }
                // The current epoch's root: learn the epoch and ring, never
                // act on it (it may be an old grant to us, already used).
                Some(r) = roots.recv() => {
                    if let Ok(signed) = r.envelope.body_as::<SignedGrant>() {
                        gate.lock().observe(&signed);
                    }
                    continue;
                }
                m = grants.recv() => m,
                _ = ctx.shutdown.cancelled() => return,
            };
            let Some(m) = m else { return };
            let Ok(signed) = m.envelope.body_as::<SignedGrant>() else { continue };
            {
                let mut g = gate.lock();
                g.observe(&signed);
                if signed.grant.holder != me {
                    continue;
                }
                if !g.is_authentic(&signed) {
                    tracing::warn!(signer = ?signed.signer, epoch = signed.grant.epoch, "ignoring a grant that is not genuine");
                    continue;
                }
            }
            let gate = gate.clone();
            let batch = {
                let mut s = state.lock();
                if s.writing {
                    continue;
                }
                s.writing = true;
                if s.pending.is_empty() {
                    let n = s.buffer.len().min(MAX_BATCH);
                    s.pending = s.buffer.drain(..n).collect();
                }
                s.pending.clone()
            };
            let ctx = ctx.clone();
            let state = state.clone();
            let store = store.clone();
            let keys = keys.clone();
            inner.spawn(async move {
                let started = std::time::Instant::now();
                let count = batch.len();
                let outcome = if batch.is_empty() {
                    Ok(())
                } else {
                    // Not the whole lease: a store that does not answer
                    // (down, or it missed the request) must not hold the
                    // token up; the batch is kept for the next turn.
                    let left = signed.grant.expires_ms.saturating_sub(now_ms()).clamp(100, WRITE_TIMEOUT_MS);
                    let proof = keys.prove(&signed.grant, digest(&batch));
                    let request = WriteRequest { grant: signed.clone(), readings: batch, proof };
                    let write = ctx.bus.request("store", &store, "write", &request, Duration::from_millis(left));
                    tokio::select! {
                        reply = write => reply.map(|_| ()),
                        // Going down: the batch stays unconfirmed.
                        _ = ctx.shutdown.cancelled() => return,
                    }
                };
                {
                    let mut s = state.lock();
                    s.writing = false;
                    match &outcome {
                        Ok(()) => {
                            tracing::debug!(rows = count, ms = started.elapsed().as_secs_f64() * 1e3, "batch written");
                            s.stats.written += count as u64;
                            s.pending.clear();
                        }
                        Err(RpcError::Remote { message, .. }) => {
                            tracing::warn!(%message, rows = count, "store refused the batch; keeping it for the next grant")
                        }
                        Err(err) => tracing::warn!(error = %err, rows = count, "batch not confirmed; keeping it for the next grant"),
                    }
                }
                // Unless there is a backlog, a turn lasts at least MIN_TURN:
                // an idle pipeline must not spin the token hundreds of times
                // a second for nothing.
                if count < MAX_BATCH {
                    tokio::select! {
                        _ = tokio::time::sleep_until((started + MIN_TURN).into()) => {}
                        _ = ctx.shutdown.cancelled() => return,
                    }
                }
                if ring {
                    // Pass the token to the next member of this epoch's ring.
                    let next = {
                        let g = gate.lock();
                        successor(g.ring(), ctx.id()).cloned()
                    };
                    if let Some(next) = next {
                        let now = now_ms();
                        let grant = Grant {
                            holder: next.name,
                            holder_key: next.key,
                            epoch: signed.grant.epoch,
                            seq: signed.grant.seq + 1,
                            issued_ms: now,
                            expires_ms: now + lease_ms,
                            ring: Vec::new(),
                        };
                        let pass = keys.pass(grant, ctx.id());
                        let _ = ctx
                            .bus
                            .publish(&ctx.bus.topics().service("iot", "grant"), &ctx.bus.envelope("grant", json!(pass)))
                            .await;
                    }
                    return;
                }
                let release = Release {
                    holder: ctx.id().to_owned(),
                    epoch: signed.grant.epoch,
                    seq: signed.grant.seq,
                };
                let _ = ctx
                    .bus
                    .publish(&ctx.bus.topics().service("iot", "release"), &ctx.bus.envelope("release", json!(release)))
                    .await;
            });
        }
    });
    Ok(())
}
