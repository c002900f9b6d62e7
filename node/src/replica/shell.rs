//! The async shell of one replication group on the bus: it starts the
//! [`Engine`] for this node (member `i + 1` of the group's nodes in
//! lab.toml order), carries raft messages between the engine and
//! `<group>/raft/<node>` (cut into frames, see [`super::transport`]), and
//! gives the service a [`Replicas`] view (who leads, by name). No decision
//! is made here: raft makes them all, and nothing retained is read.

use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::ReplError;
use super::core::{RaftStatus, Role};
use super::engine::Engine;
use super::store::LogStore;
use super::transport::{Frame, Joiner, frames};
use crate::runtime::NodeContext;

/// A group member as the dashboards show it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
pub struct GroupStatus {
    pub role: Role,
    pub term: u64,
    pub leader: Option<String>,
    pub commit: u64,
    pub applied: u64,
    /// Leader only: how far each other member is behind the leader's log.
    pub lag: Vec<(String, u64)>,
}

/// What every group member reports on `telemetry/<node>/raft` twice a
/// second: its group and its place in it (the MOM gateway follows the
/// leader by these, and `distlab-node status` shows them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RaftTelemetry {
    pub group: String,
    #[serde(flatten)]
    pub status: GroupStatus,
}

/// This node's view of its group; cheap to clone.
#[derive(Clone, Debug)]
pub struct Replicas {
    names: Arc<Vec<String>>,
    /// The engine's status, as it publishes it after every Ready.
    status: Arc<Mutex<RaftStatus>>,
}

impl Replicas {
    /// The view of `engine`'s replica in a group of `names` (member `i + 1`
    /// is `names[i]`).
    pub fn new<S: LogStore>(names: Vec<String>, engine: &Engine<S>) -> Self {
        Self {
            names: Arc::new(names),
            status: engine.status_cell(),
        }
    }

    fn name(&self, id: u64) -> Option<String> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.names.get(i).cloned()
    }

    pub fn status(&self) -> GroupStatus {
        let s = self.raft();
        let last = s.last;
        GroupStatus {
            role: s.role,
            term: s.term,
            leader: s.leader.and_then(|l| self.name(l)),
            commit: s.commit,
            applied: s.applied,
            lag: s
                .matched
                .iter()
                .filter(|(id, _)| *id != s.id)
                .filter_map(|(id, m)| Some((self.name(*id)?, last.saturating_sub(*m))))
                .collect(),
        }
    }

    /// The node that leads now, as this node knows it.
    pub fn leader(&self) -> Option<String> {
        self.raft().leader.and_then(|l| self.name(l))
    }

    fn raft(&self) -> RaftStatus {
        self.status.lock().clone()
    }
}

/// Runs replication for this node in `group` (whose members, in lab.toml
/// order, are `nodes`) on `store`.
pub async fn start<S: LogStore>(
    ctx: &NodeContext,
    tasks: &TaskTracker,
    group: &str,
    nodes: Vec<String>,
    store: S,
) -> Result<(Engine<S>, Replicas), ReplError> {
    let me = ctx.id().to_owned();
    let Some(pos) = nodes.iter().position(|n| *n == me) else {
        return Err(ReplError::BadRequest(format!(
            "{me} is not a member of group {group}"
        )));
    };
    let id = pos as u64 + 1;
    let voters: Vec<u64> = (1..=nodes.len() as u64).collect();
    let topics = ctx.bus.topics().clone();
    // Raft has its own connection: its heartbeats must not wait behind
    // large messages on the node's other topics.
    let lane = ctx.bus.lane(super::transport::MAX_FRAME_MESSAGE);
    {
        let (lane, stop) = (lane.clone(), ctx.shutdown.clone());
        tasks.spawn(async move {
            stop.cancelled().await;
            lane.close(Vec::new()).await;
        });
    }
    let inbox = lane
        .subscribe(&topics.service(group, &format!("raft/{me}")))
        .await
        .map_err(|e| ReplError::Storage(format!("cannot subscribe: {e}")))?;
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let seed = crate::envelope::now_ms() ^ u64::from(std::process::id());
    let engine = Engine::start(
        store,
        &format!("{group}-raft"),
        id,
        &voters,
        Some(out_tx),
        seed,
    )
    .map_err(Into::into)?;
    let replicas = Replicas::new(nodes.clone(), &engine);
    {
        let (replicas, group) = (replicas.clone(), group.to_owned());
        ctx.spawn_telemetry(
            tasks,
            "raft",
            std::time::Duration::from_millis(500),
            move || RaftTelemetry {
                group: group.clone(),
                status: replicas.status(),
            },
        );
    }

    // Inbound: frames → messages → the engine. A message must come from
    // the member its envelope names (the bus's own authentication is the
    // bus's business; this keeps one member from speaking for another).
    {
        let (engine, stop, nodes, group) = (
            engine.clone(),
            ctx.shutdown.clone(),
            nodes.clone(),
            group.to_owned(),
        );
        let mut inbox = inbox;
        tasks.spawn(async move {
            let mut joiner = Joiner::default();
            loop {
                let m = tokio::select! {
                    m = inbox.recv() => m,
                    _ = stop.cancelled() => return,
                };
                let Some(m) = m else { return };
                let from = m.envelope.from.clone();
                let Some(from_id) = nodes.iter().position(|n| *n == from).map(|i| i as u64 + 1) else {
                    tracing::debug!(%group, %from, "raft frame from a non-member dropped");
                    continue;
                };
                let joined = m
                    .envelope
                    .body_as::<Frame>()
                    .map_err(|e| ReplError::BadRequest(e.to_string()))
                    .and_then(|f| joiner.push(&from, f));
                match joined {
                    Ok(Some(msgs)) => {
                        for msg in msgs {
                            if msg.from == from_id {
                                engine.step(msg);
                            } else {
                                tracing::debug!(%group, %from, claimed = msg.from, "raft message with a wrong sender dropped");
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(%group, %from, error = %e, "bad raft frame dropped"),
                }
            }
        });
    }

    // Outbound: the engine's messages → frames → `<group>/raft/<to>`.
    {
        let (bus, stop, group) = (lane, ctx.shutdown.clone(), group.to_owned());
        let mut out_rx = out_rx;
        tasks.spawn(async move {
            let mut seq = 0u64;
            loop {
                let batch = tokio::select! {
                    b = out_rx.recv() => b,
                    _ = stop.cancelled() => return,
                };
                let Some(mut batch) = batch else { return };
                while let Ok(more) = out_rx.try_recv() {
                    batch.extend(more);
                }
                for (to, msgs) in super::transport::batches(batch) {
                    let Some(to) = usize::try_from(to.wrapping_sub(1))
                        .ok()
                        .and_then(|i| nodes.get(i))
                    else {
                        continue;
                    };
                    seq = seq.wrapping_add(1);
                    let topic = topics.service(&group, &format!("raft/{to}"));
                    let Ok(list) = frames(&msgs, seq) else {
                        continue;
                    };
                    for f in list {
                        // Lost messages are raft's to resend; a closed bus
                        // means the node is stopping.
                        if let Err(e) = bus.publish(&topic, &bus.envelope("raft", &f)).await {
                            tracing::debug!(%group, %to, error = %e, "raft message not sent");
                        }
                    }
                }
            }
        });
    }
    Ok((engine, replicas))
}
