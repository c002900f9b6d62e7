//! The `mom-gateway` role: the MOM's one stable address. It serves the same
//! HTTP APIs as a MOM node (the seed's and `/api/v1`) on `[mom] http`, keeps
//! no state, and runs every request on the MOM's raft leader over MQTT RPC.
//! Killing any MOM replica never changes the address clients use: while the
//! group elects a new leader the gateway holds the request (up to
//! [`FAILOVER_WAIT`]) and sends it on to the new one.
//!
//! Requests go to the leader only; while none is known (an election, or
//! the first half second) they wait. Who leads comes from the replicas' own reports (`telemetry/<node>/raft`,
//! the newest term winning) and who is alive from presence and heartbeats
//! ([`Membership`]); [`LeaderView`] is that bookkeeping, without sockets.
//! A request in flight to a node that goes down (or stops beating) is sent
//! again to whoever leads then: a publish whose first copy was committed
//! just before the node died may then be stored twice (at least once,
//! never lost).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::model::MomError;
use super::node::MomHttp;
use super::service::{FAILOVER_WAIT, Reply, Request, Sealed};
use crate::bus::{Bus, RpcError};
use crate::config::{MomSettings, Role};
use crate::presence::{MemberState, Membership};
use crate::replica::{GroupStatus, RaftTelemetry};
use crate::runtime::NodeContext;
use crate::services::StartError;

/// Envelope kind of a request the gateway sends to a MOM node (which runs it
/// or forwards it to the leader it knows).
pub const GATEWAY: &str = "gateway";

/// The raft group the gateway fronts.
const GROUP: &str = "mom";

/// Who leads the MOM group and which members are reachable, from the
/// members' raft reports and their presence.
#[derive(Debug, Clone)]
pub struct LeaderView {
    members: Vec<String>,
    /// The newest report of each member: its term and the leader it names.
    claims: BTreeMap<String, (u64, Option<String>)>,
    membership: Membership,
}

impl LeaderView {
    pub fn new(members: Vec<String>, topics: crate::envelope::Topics) -> Self {
        Self {
            members,
            claims: BTreeMap::new(),
            membership: Membership::new(topics),
        }
    }

    /// The filters to subscribe to for [`LeaderView::observe_membership`].
    pub fn membership_filters(&self) -> [String; 2] {
        self.membership.filters()
    }

    /// Feeds a presence or heartbeat message.
    pub fn observe_membership(
        &mut self,
        topic: &str,
        envelope: &crate::envelope::Envelope,
        now: Instant,
    ) -> bool {
        self.membership.observe(topic, envelope, now)
    }

    /// Feeds one member's raft report (reports from non-members are ignored).
    pub fn observe_raft(&mut self, from: &str, status: &GroupStatus) {
        if self.members.iter().any(|m| m == from) {
            self.claims
                .insert(from.to_owned(), (status.term, status.leader.clone()));
        }
    }

    /// Whether `node` can be sent a request now: up (or starting), not
    /// down and not silent.
    pub fn reachable(&self, node: &str, now: Instant) -> bool {
        matches!(
            self.membership.state_of(node, now),
            Some(MemberState::Up | MemberState::Starting)
        )
    }

    /// The leader named in the newest term by a reachable member, if that
    /// leader is reachable too.
    pub fn leader(&self, now: Instant) -> Option<(String, u64)> {
        self.claims
            .iter()
            .filter(|(from, _)| self.reachable(from, now))
            .filter_map(|(_, (term, leader))| Some((leader.clone()?, *term)))
            .max_by_key(|(_, term)| *term)
            .filter(|(leader, _)| self.reachable(leader, now))
    }

    /// Where to send a request: the leader, if one is known and reachable.
    /// (Not a follower meanwhile: one that still names a dead leader would
    /// forward there and wait out its deadline, after a new leader is up.)
    pub fn target(&self, now: Instant) -> Option<String> {
        self.leader(now).map(|(l, _)| l)
    }

    /// Each member and whether it is reachable, in config order.
    pub fn members(&self, now: Instant) -> Vec<(String, bool)> {
        self.members
            .iter()
            .map(|m| (m.clone(), self.reachable(m, now)))
            .collect()
    }
}

/// Who leads, as `/api/v1/status` and `distlab-node status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderStatus {
    /// The node that answered.
    pub node: String,
    /// `mom` or `mom-gateway`.
    pub role: String,
    pub leader: Option<String>,
    pub term: u64,
    /// The MOM replicas and whether each is reachable (the gateway's view).
    #[serde(default)]
    pub members: Vec<MemberView>,
}

/// What the gateway reports on `telemetry/<node>/mom-gateway`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStats {
    /// The address clients use.
    pub http: SocketAddr,
    #[serde(flatten)]
    pub status: LeaderStatus,
    /// Requests run since start.
    pub requests: u64,
    /// Requests sent again to another node (the first went down, or was
    /// between leaders).
    pub resent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub node: String,
    pub reachable: bool,
}

/// The gateway: the view (shared with the task that feeds it) and the bus.
#[derive(Clone)]
pub struct Gateway {
    me: String,
    bus: Bus,
    settings: MomSettings,
    view: Arc<Mutex<LeaderView>>,
    /// Bumped whenever the view may have changed.
    changes: watch::Sender<u64>,
    requests: Arc<AtomicU64>,
    resent: Arc<AtomicU64>,
}

/// How long one RPC to a MOM node may take (plus a consume's wait).
const RPC_DEADLINE: Duration = Duration::from_secs(5);

impl Gateway {
    pub fn settings(&self) -> &MomSettings {
        &self.settings
    }

    pub fn status(&self) -> LeaderStatus {
        let now = Instant::now();
        let view = self.view.lock();
        let (leader, term) = match view.leader(now) {
            Some((l, t)) => (Some(l), t),
            None => (None, 0),
        };
        LeaderStatus {
            node: self.me.clone(),
            role: Role::MomGateway.as_str().to_owned(),
            leader,
            term,
            members: view
                .members(now)
                .into_iter()
                .map(|(node, reachable)| MemberView { node, reachable })
                .collect(),
        }
    }

    /// Runs `request` on the MOM's leader, riding over elections and dead
    /// nodes for up to [`FAILOVER_WAIT`] (plus a consume's wait).
    pub async fn call(&self, request: Request) -> Result<Reply, MomError> {
        // The key stays here: only its user id goes to the MOM.
        let (request, new_key) = request.seal()?;
        Sealed::answer(new_key, self.call_sealed(request).await)
    }

    async fn call_sealed(&self, request: Sealed) -> Result<Reply, MomError> {
        let wait = Duration::from_millis(request.0.wait_ms());
        let give_up = tokio::time::Instant::now() + FAILOVER_WAIT + wait;
        let mut changes = self.changes.subscribe();
        self.requests.fetch_add(1, Ordering::Relaxed);
        loop {
            let late = || tokio::time::Instant::now() >= give_up;
            let Some(target) = self.view.lock().target(Instant::now()) else {
                if late() {
                    return Err(MomError::NotPrimary(
                        "no MOM leader within reach of the gateway (a majority of the mom nodes must be up)".into(),
                    ));
                }
                // Until the view changes (or a beat of time passes).
                tokio::time::timeout(Duration::from_millis(200), changes.changed())
                    .await
                    .ok();
                continue;
            };
            let sent = self
                .bus
                .request("mom", &target, GATEWAY, &request, RPC_DEADLINE + wait);
            tokio::pin!(sent);
            let answer = loop {
                tokio::select! {
                    answer = &mut sent => break Some(answer),
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break Some(Err(RpcError::Bus(crate::bus::BusError::Closed)));
                        }
                        if !self.view.lock().reachable(&target, Instant::now()) {
                            tracing::info!(%target, "the MOM node went away mid-request; sending it again");
                            break None;
                        }
                    }
                }
            };
            let retry = match answer {
                None => true,
                Some(Ok(reply)) => match reply.body_as::<Result<Reply, MomError>>() {
                    Ok(Err(MomError::NotPrimary(_))) if !late() => true,
                    Ok(answer) => return answer,
                    Err(e) => {
                        return Err(MomError::Storage(format!("bad answer from {target}: {e}")));
                    }
                },
                Some(Err(RpcError::Remote { message, .. })) => {
                    return Err(MomError::BadRequest(message));
                }
                Some(Err(e)) if late() => {
                    return Err(MomError::NotPrimary(format!(
                        "the MOM did not answer in time: {e}"
                    )));
                }
                Some(Err(e)) => {
                    tracing::debug!(%target, error = %e, "no answer; trying again");
                    true
                }
            };
            if retry {
                self.resent.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn start(ctx: NodeContext, tasks: &TaskTracker) -> Result<(), StartError> {
    let members = ctx.config.nodes_with(Role::Mom);
    if members.is_empty() {
        return Err(StartError::Setup(
            "mom-gateway: the lab has no `mom` node to forward to",
        ));
    }
    let topics = ctx.bus.topics().clone();
    let view = Arc::new(Mutex::new(LeaderView::new(members, topics.clone())));
    let (changes, _) = watch::channel(0u64);
    let gateway = Gateway {
        me: ctx.id().to_owned(),
        bus: ctx.bus.clone(),
        settings: ctx.config.mom.clone(),
        view: view.clone(),
        changes: changes.clone(),
        requests: Arc::default(),
        resent: Arc::default(),
    };

    let mut membership = {
        let filters = view.lock().membership_filters();
        ctx.bus.subscribe_all(&filters).await?
    };
    let mut reports = ctx.bus.subscribe(&topics.telemetry("+", "raft")).await?;
    let stop = ctx.shutdown.clone();
    tasks.spawn(async move {
        // Heartbeats stopping is news too: look again now and then.
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(m) = membership.recv() => {
                    view.lock().observe_membership(&m.topic, &m.envelope, Instant::now());
                }
                Some(m) = reports.recv() => match m.envelope.body_as::<RaftTelemetry>() {
                    Ok(r) if r.group == GROUP => view.lock().observe_raft(&m.envelope.from, &r.status),
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(from = %m.envelope.from, error = %e, "malformed raft report ignored");
                        continue;
                    }
                },
                _ = tick.tick() => {}
            }
            changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    });

    let front = super::http::Front::Gateway(gateway.clone());
    let (listener, bound) = crate::runtime::bind_http("mom.http", ctx.config.mom.http).await?;
    tracing::info!(http = %bound, "MOM gateway serving HTTP");
    ctx.announce(
        &topics.service("mom", &format!("http/{}", ctx.id())),
        "mom-http",
        &MomHttp {
            node: ctx.id().to_owned(),
            addr: bound,
            gateway: true,
        },
    )
    .await?;
    let app = super::http::router(front);
    crate::runtime::spawn_http(&ctx, tasks, listener, app, "MOM gateway");
    let snapshot = gateway.clone();
    ctx.spawn_telemetry(
        tasks,
        "mom-gateway",
        Duration::from_millis(500),
        move || GatewayStats {
            http: bound,
            status: snapshot.status(),
            requests: snapshot.requests.load(Ordering::Relaxed),
            resent: snapshot.resent.load(Ordering::Relaxed),
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{EnvelopeFactory, Topics};
    use crate::presence::{Presence, PresenceState};
    use crate::replica::Role as RaftRole;

    fn view() -> LeaderView {
        let members = ["mom-a", "mom-b", "mom-c"].map(String::from).to_vec();
        LeaderView::new(members, Topics::new("lab"))
    }

    fn presence(v: &mut LeaderView, node: &str, state: PresenceState, now: Instant) {
        let p = Presence {
            node: node.into(),
            state,
            roles: vec!["mom".into()],
            pid: 1,
            host: "h".into(),
            version: "0".into(),
            started_ms: 1,
            heartbeat_ms: 100,
            reason: None,
        };
        let topic = Topics::new("lab").presence(node);
        let envelope = EnvelopeFactory::new(node).make("presence", None, &p);
        assert!(v.observe_membership(&topic, &envelope, now));
    }

    fn report(v: &mut LeaderView, from: &str, term: u64, leader: Option<&str>) {
        let status = GroupStatus {
            role: if leader == Some(from) {
                RaftRole::Leader
            } else {
                RaftRole::Follower
            },
            term,
            leader: leader.map(String::from),
            ..Default::default()
        };
        v.observe_raft(from, &status);
    }

    #[test]
    fn the_newest_term_names_the_leader() {
        let (mut v, now) = (view(), Instant::now());
        for n in ["mom-a", "mom-b", "mom-c"] {
            presence(&mut v, n, PresenceState::Up, now);
        }
        assert_eq!(v.leader(now), None);
        assert_eq!(v.target(now), None, "no leader known yet: wait for one");
        report(&mut v, "mom-a", 3, Some("mom-a"));
        report(&mut v, "mom-c", 3, Some("mom-a"));
        assert_eq!(v.leader(now), Some(("mom-a".into(), 3)));
        // A newer term wins over older claims, whoever reports it.
        report(&mut v, "mom-b", 4, Some("mom-b"));
        assert_eq!(v.leader(now), Some(("mom-b".into(), 4)));
        // A stranger's report counts for nothing.
        let stranger = GroupStatus {
            term: 99,
            leader: Some("evil".into()),
            ..Default::default()
        };
        v.observe_raft("evil", &stranger);
        assert_eq!(v.leader(now), Some(("mom-b".into(), 4)));
    }

    #[test]
    fn a_dead_leader_is_no_target_and_its_followers_claims_do_not_revive_it() {
        let (mut v, now) = (view(), Instant::now());
        for n in ["mom-a", "mom-b", "mom-c"] {
            presence(&mut v, n, PresenceState::Up, now);
        }
        report(&mut v, "mom-a", 5, Some("mom-a"));
        report(&mut v, "mom-b", 5, Some("mom-a"));
        presence(&mut v, "mom-a", PresenceState::Down, now);
        assert!(!v.reachable("mom-a", now));
        assert_eq!(
            v.leader(now),
            None,
            "mom-b still names mom-a, but it is down"
        );
        assert_ne!(v.target(now).as_deref(), Some("mom-a"));
        report(&mut v, "mom-c", 6, Some("mom-c"));
        assert_eq!(v.target(now).as_deref(), Some("mom-c"));
        // A silent node (paused: no heartbeat for three periods) is no target.
        let later = now + Duration::from_secs(2);
        assert!(!v.reachable("mom-c", later));
        assert_eq!(v.target(later), None);
    }
}
