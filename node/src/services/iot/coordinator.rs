//! `coordinator` role: owns the signing key (made at first start in its data
//! dir, never in the repo), announces the public key, and runs the grant
//! [`Schedule`]: grants go out on `iot/grant`, releases come back on
//! `iot/release`, and a receiver's presence going down revokes its grant.
//! The first grant of each epoch is also kept retained on `iot/root`, so a
//! store or receiver that starts mid-epoch learns the epoch and (ring mode)
//! its ring; they only observe it, never act on it.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::task::TaskTracker;

use super::keys::KeyPair;
use super::receiver::ReceiverKey;
use super::schedule::{Event, Schedule};
use super::token::{Grant, SignedGrant};
use crate::config::Role;
use crate::config::TokenMode;
use crate::envelope::{Topics, now_ms};
use crate::presence::{Presence, PresenceState};
use crate::runtime::NodeContext;
use crate::services::StartError;

/// Body of `iot/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub holder: String,
    pub epoch: u64,
    pub seq: u64,
}

/// Body of `iot/key` (retained).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub coordinator: String,
    pub public: String,
}

/// What the coordinator reports on `telemetry/<node>/coordinator`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorStats {
    /// `central` or `ring`.
    #[serde(default)]
    pub mode: TokenMode,
    pub epoch: u64,
    pub holder: Option<String>,
    pub seq: u64,
    pub grants: u64,
    pub lapses: u64,
}

/// Reads the last epoch used, stores and returns the next one: a restarted
/// coordinator never reuses an epoch.
pub fn next_epoch(path: &Path) -> std::io::Result<u64> {
    let last = match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<u64>().unwrap_or(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    store_epoch(path, last + 1)?;
    Ok(last + 1)
}

fn store_epoch(path: &Path, epoch: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{epoch}")?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let key = KeyPair::load_or_create(&ctx.dir.join("coordinator.key"))?;
    let epoch_file = ctx.dir.join("epoch");
    let epoch = next_epoch(&epoch_file).map_err(|source| StartError::Io {
        what: "the coordinator's epoch file",
        source,
    })?;
    let receivers = ctx.config.nodes_with(Role::Receiver);
    let stores = ctx.config.nodes_with(Role::Store);
    let iot = ctx.config.iot.clone();
    let topics = ctx.bus.topics().clone();
    let public = PublicKey {
        coordinator: ctx.id().to_owned(),
        public: key.public_hex(),
    };
    ctx.announce(&topics.service("iot", "key"), "iot-key", &public)
        .await?;
    let mut releases = ctx.bus.subscribe(&topics.service("iot", "release")).await?;
    let mut presence = ctx.bus.subscribe(&topics.presence_all()).await?;
    let mut receiver_keys = ctx.bus.subscribe(&topics.service("iot", "keys/+")).await?;
    tracing::info!(epoch, ?receivers, public_key = %key.public_hex(), "coordinator granting");
    let mut schedule = Schedule::new(receivers.clone(), iot.lease_ms, epoch).with_mode(iot.mode);
    let mut passes = ctx.bus.subscribe(&topics.service("iot", "grant")).await?;
    // A receiver gets grants once its presence says it is up (the retained
    // presence arrives right after subscribing).
    for r in &receivers {
        schedule.set_down(r, true, now_ms());
    }
    let stats = std::sync::Arc::new(parking_lot::Mutex::new(CoordinatorStats {
        mode: iot.mode,
        epoch,
        ..Default::default()
    }));
    let snap = stats.clone();
    ctx.spawn_telemetry(
        tasks,
        "coordinator",
        Duration::from_millis(250),
        move || snap.lock().clone(),
    );
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut refresh = tokio::time::interval(Duration::from_millis(iot.refresh_ms));
        // The epoch whose first grant went out on the retained `iot/root`.
        let mut rooted = 0;
        loop {
            let events = tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tick.tick() => schedule.tick(now_ms()),
                Some(m) = releases.recv() => match m.envelope.body_as::<Release>() {
                    Ok(r) if r.holder == m.envelope.from => schedule.release(&r.holder, r.epoch, r.seq, now_ms()),
                    Ok(r) => {
                        tracing::warn!(claimed = %r.holder, from = %m.envelope.from, "release for someone else; ignored");
                        Vec::new()
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "malformed release; ignored");
                        Vec::new()
                    }
                },
                Some(m) = passes.recv() => {
                    // Ring mode: watch the token move (our own roots come back too).
                    if let Ok(pass) = m.envelope.body_as::<SignedGrant>()
                        && pass.signer.is_some()
                        && schedule.observe_pass(&pass.grant)
                    {
                        let mut s = stats.lock();
                        s.holder = Some(pass.grant.holder.clone());
                        s.seq = pass.grant.seq;
                        s.grants += 1;
                    }
                    Vec::new()
                }
                Some(m) = receiver_keys.recv() => {
                    let node = Topics::last_level(&m.topic).to_owned();
                    match m.envelope.body_as::<ReceiverKey>() {
                        Ok(k) if k.receiver == node && receivers.contains(&node) => schedule.set_key(&node, &k.public, now_ms()),
                        _ => {
                            tracing::warn!(topic = %m.topic, "malformed or foreign receiver key; ignored");
                            Vec::new()
                        }
                    }
                }
                Some(m) = presence.recv() => {
                    let node = Topics::last_level(&m.topic).to_owned();
                    match m.envelope.body_as::<Presence>() {
                        Ok(p) if receivers.contains(&node) => {
                            schedule.set_down(&node, p.state == PresenceState::Down, now_ms())
                        }
                        _ => Vec::new(),
                    }
                }
                _ = refresh.tick() => {
                    for store in &stores {
                        let now = now_ms();
                        let grant = Grant { holder: store.clone(), epoch: schedule.epoch(), seq: 0, issued_ms: now, expires_ms: now + iot.lease_ms, ..Default::default() };
                        let signed = key.sign(grant);
                        if let Err(err) = ctx.bus.publish(&topics.service("iot", "refresh"), &ctx.bus.envelope("refresh", json!(signed))).await {
                            // Only the store's HTTP cache waits for it: the
                            // next refresh tick sends another.
                            tracing::warn!(error = %err, %store, "cache refresh grant not sent");
                        }
                    }
                    Vec::new()
                }
            };
            for event in events {
                match event {
                    Event::Granted(grant) => {
                        {
                            let mut s = stats.lock();
                            s.epoch = grant.epoch;
                            s.holder = Some(grant.holder.clone());
                            s.seq = grant.seq;
                            s.grants += 1;
                        }
                        tracing::trace!(holder = %grant.holder, epoch = grant.epoch, seq = grant.seq, "grant");
                        let new_epoch = grant.epoch != rooted;
                        let signed = key.sign(grant);
                        if new_epoch {
                            // Retained, so a store or receiver that starts
                            // later learns the epoch (and its ring) too.
                            rooted = signed.grant.epoch;
                            if ctx.announce(&topics.service("iot", "root"), "root", &signed).await.is_err() {
                                return;
                            }
                        }
                        let envelope = ctx.bus.envelope("grant", json!(signed));
                        if ctx.bus.publish(&topics.service("iot", "grant"), &envelope).await.is_err() {
                            return;
                        }
                    }
                    Event::Expired { holder, new_epoch } => {
                        tracing::warn!(%holder, new_epoch, "grant lapsed; new epoch");
                        {
                            let mut s = stats.lock();
                            s.epoch = new_epoch;
                            s.holder = None;
                            s.lapses += 1;
                        }
                        if let Err(err) = store_epoch(&epoch_file, new_epoch) {
                            tracing::error!(error = %err, "cannot record the epoch; stopping grants");
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epoch");
        assert_eq!(next_epoch(&path).unwrap(), 1);
        assert_eq!(next_epoch(&path).unwrap(), 2);
        store_epoch(&path, 9).unwrap();
        assert_eq!(next_epoch(&path).unwrap(), 10);
    }
}
