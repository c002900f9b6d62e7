//! Presence, heartbeats and the membership view built from them.
//!
//! Each node keeps a retained `presence/<node>` message (its MQTT last will
//! turns it to `down` if the node vanishes) and sends a heartbeat about every
//! 500 ms. [`Membership`] is a plain state machine over those messages with an
//! injected clock: the dashboard and `distlab-node status` both use it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, Topics};
use crate::liveness::Liveness;

/// Version of this build, shown in presence.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    Up,
    Down,
}

/// Body of a `presence` envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub node: String,
    pub state: PresenceState,
    pub roles: Vec<String>,
    pub pid: u32,
    pub host: String,
    pub version: String,
    /// Start time, ms since the Unix epoch.
    pub started_ms: u64,
    /// Heartbeat period the node uses, in ms.
    pub heartbeat_ms: u64,
    /// Why the node is down: `stopped` (clean) or `lost` (last will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Presence {
    pub fn down(&self, reason: &str) -> Presence {
        Presence {
            state: PresenceState::Down,
            reason: Some(reason.to_owned()),
            ..self.clone()
        }
    }
}

/// Body of a `heartbeat` envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub uptime_ms: u64,
}

/// What the cluster can tell about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Announced, no heartbeat yet.
    Starting,
    /// Heartbeats arrive.
    Up,
    /// Announced up, but heartbeats stopped (a paused or hung process).
    Paused,
    /// Said goodbye, or the broker reported it lost.
    Down,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Starting => "starting",
            MemberState::Up => "up",
            MemberState::Paused => "paused",
            MemberState::Down => "down",
        }
    }
}

#[derive(Debug, Clone)]
struct Member {
    presence: Presence,
    presence_at: Instant,
    heartbeat_at: Option<Instant>,
    heartbeat: Option<Heartbeat>,
}

/// One row of the membership table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberRow {
    pub node: String,
    pub state: MemberState,
    pub roles: Vec<String>,
    pub host: String,
    pub pid: u32,
    pub version: String,
    pub started_ms: u64,
    /// Time since the last heartbeat arrived (or since presence, before any).
    pub heartbeat_age: Option<Duration>,
    pub reason: Option<String>,
}

/// Membership of one cluster, from presence and heartbeat messages.
#[derive(Debug, Clone)]
pub struct Membership {
    topics: Topics,
    members: BTreeMap<String, Member>,
}

impl Membership {
    pub fn new(topics: Topics) -> Self {
        Self {
            topics,
            members: BTreeMap::new(),
        }
    }

    /// The filters to subscribe to for [`Membership::observe`].
    pub fn filters(&self) -> [String; 2] {
        [self.topics.presence_all(), self.topics.heartbeat_all()]
    }

    /// Feeds one message; returns whether it was a membership message.
    pub fn observe(&mut self, topic: &str, envelope: &Envelope, now: Instant) -> bool {
        let node = Topics::last_level(topic);
        // A node speaks for itself only (its last will too: the node made
        // it): another client's "down" or heartbeat for it is ignored.
        let own = envelope.from == node;
        if !own && (topic == self.topics.presence(node) || topic == self.topics.heartbeat(node)) {
            tracing::warn!(%topic, from = %envelope.from, "presence or heartbeat for a node sent by another; ignored");
            return false;
        }
        if topic == self.topics.presence(node) {
            match envelope.body_as::<Presence>() {
                Ok(presence) if presence.node == node => {
                    self.observe_presence(presence, now);
                    true
                }
                Ok(presence) => {
                    tracing::warn!(%topic, claimed = %presence.node, "presence for another node; ignored");
                    false
                }
                Err(err) => {
                    tracing::warn!(%topic, error = %err, "malformed presence; ignored");
                    false
                }
            }
        } else if topic == self.topics.heartbeat(node) {
            match envelope.body_as::<Heartbeat>() {
                Ok(beat) => {
                    self.observe_heartbeat(node, beat, now);
                    true
                }
                Err(err) => {
                    tracing::warn!(%topic, error = %err, "malformed heartbeat; ignored");
                    false
                }
            }
        } else {
            false
        }
    }

    pub fn observe_presence(&mut self, presence: Presence, now: Instant) {
        let node = presence.node.clone();
        match self.members.get_mut(&node) {
            Some(m) => {
                let restarted =
                    m.presence.pid != presence.pid || m.presence.started_ms != presence.started_ms;
                if restarted || presence.state == PresenceState::Down {
                    m.heartbeat_at = None;
                    m.heartbeat = None;
                }
                m.presence = presence;
                m.presence_at = now;
            }
            None => {
                self.members.insert(
                    node,
                    Member {
                        presence,
                        presence_at: now,
                        heartbeat_at: None,
                        heartbeat: None,
                    },
                );
            }
        }
    }

    pub fn observe_heartbeat(&mut self, node: &str, beat: Heartbeat, now: Instant) {
        // A heartbeat from a node we have no presence for is ignored: the
        // retained presence arrives first on subscribe.
        if let Some(m) = self.members.get_mut(node)
            && m.presence.state == PresenceState::Up
        {
            m.heartbeat_at = Some(now);
            m.heartbeat = Some(beat);
        }
    }

    /// A member is paused when no heartbeat came for three periods.
    fn liveness(m: &Member) -> Liveness {
        Liveness::periods(m.presence.heartbeat_ms, 3)
    }

    pub fn state_of(&self, node: &str, now: Instant) -> Option<MemberState> {
        self.members.get(node).map(|m| Self::state(m, now))
    }

    fn state(m: &Member, now: Instant) -> MemberState {
        if m.presence.state == PresenceState::Down {
            return MemberState::Down;
        }
        let live = Self::liveness(m);
        match m.heartbeat_at {
            None if live.alive(Liveness::since(m.presence_at, now)) => MemberState::Starting,
            None => MemberState::Paused,
            Some(at) if live.alive(Liveness::since(at, now)) => MemberState::Up,
            Some(_) => MemberState::Paused,
        }
    }

    /// Every known member, sorted by node id.
    pub fn rows(&self, now: Instant) -> Vec<MemberRow> {
        self.members
            .iter()
            .map(|(node, m)| {
                let state = Self::state(m, now);
                let since = m.heartbeat_at.unwrap_or(m.presence_at);
                MemberRow {
                    node: node.clone(),
                    state,
                    roles: m.presence.roles.clone(),
                    host: m.presence.host.clone(),
                    pid: m.presence.pid,
                    version: m.presence.version.clone(),
                    started_ms: m.presence.started_ms,
                    heartbeat_age: (state != MemberState::Down)
                        .then(|| Liveness::since(since, now)),
                    reason: m.presence.reason.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::EnvelopeFactory;

    fn presence(node: &str, state: PresenceState, pid: u32) -> Presence {
        Presence {
            node: node.to_owned(),
            state,
            roles: vec!["echo".to_owned()],
            pid,
            host: "h".to_owned(),
            version: VERSION.to_owned(),
            started_ms: 1000 + u64::from(pid),
            heartbeat_ms: 500,
            reason: None,
        }
    }

    /// What node `a` sends.
    fn env(kind: &str, body: impl Serialize) -> Envelope {
        EnvelopeFactory::new("a").make(kind, None, body)
    }

    #[test]
    fn lifecycle_starting_up_paused_up_down() {
        let topics = Topics::new("lab");
        let mut m = Membership::new(topics.clone());
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(m.observe(
            &topics.presence("a"),
            &env("presence", presence("a", PresenceState::Up, 7)),
            t0
        ));
        assert_eq!(m.state_of("a", t0), Some(MemberState::Starting));
        let beat = Heartbeat {
            seq: 1,
            uptime_ms: 10,
        };
        assert!(m.observe(
            &topics.heartbeat("a"),
            &env("heartbeat", beat),
            t0 + ms(100)
        ));
        assert_eq!(m.state_of("a", t0 + ms(600)), Some(MemberState::Up));
        // Silence past three periods: paused.
        assert_eq!(m.state_of("a", t0 + ms(1700)), Some(MemberState::Paused));
        let row = &m.rows(t0 + ms(1700))[0];
        assert_eq!(row.heartbeat_age, Some(ms(1600)));
        m.observe_heartbeat("a", beat, t0 + ms(1800));
        assert_eq!(m.state_of("a", t0 + ms(1900)), Some(MemberState::Up));
        m.observe_presence(
            presence("a", PresenceState::Up, 7).down("lost"),
            t0 + ms(2000),
        );
        assert_eq!(m.state_of("a", t0 + ms(2000)), Some(MemberState::Down));
        assert_eq!(m.rows(t0 + ms(2000))[0].heartbeat_age, None);
        assert_eq!(m.rows(t0 + ms(2000))[0].reason.as_deref(), Some("lost"));
    }

    #[test]
    fn restart_resets_heartbeats() {
        let mut m = Membership::new(Topics::new("lab"));
        let t0 = Instant::now();
        m.observe_presence(presence("a", PresenceState::Up, 1), t0);
        m.observe_heartbeat(
            "a",
            Heartbeat {
                seq: 5,
                uptime_ms: 0,
            },
            t0,
        );
        m.observe_presence(presence("a", PresenceState::Up, 2), t0);
        assert_eq!(m.state_of("a", t0), Some(MemberState::Starting));
        assert_eq!(m.rows(t0)[0].pid, 2);
    }

    #[test]
    fn a_never_beating_member_turns_paused() {
        let mut m = Membership::new(Topics::new("lab"));
        let t0 = Instant::now();
        m.observe_presence(presence("a", PresenceState::Up, 1), t0);
        assert_eq!(
            m.state_of("a", t0 + Duration::from_secs(2)),
            Some(MemberState::Paused)
        );
    }

    #[test]
    fn malformed_and_foreign_messages_are_ignored() {
        let topics = Topics::new("lab");
        let mut m = Membership::new(topics.clone());
        let t0 = Instant::now();
        assert!(!m.observe(&topics.presence("a"), &env("presence", "garbage"), t0));
        assert!(!m.observe(
            &topics.presence("a"),
            &env("presence", presence("b", PresenceState::Up, 1)),
            t0
        ));
        assert!(!m.observe(&topics.heartbeat("a"), &env("heartbeat", "beat"), t0));
        // Someone else speaking for `a`: a forged "down", a forged beat.
        let forged = EnvelopeFactory::new("mallory");
        let down = presence("a", PresenceState::Up, 1).down("forged");
        assert!(!m.observe(
            &topics.presence("a"),
            &forged.make("presence", None, &down),
            t0
        ));
        let beat = Heartbeat {
            seq: 1,
            uptime_ms: 1,
        };
        assert!(!m.observe(
            &topics.heartbeat("a"),
            &forged.make("heartbeat", None, beat),
            t0
        ));
        assert!(m.rows(t0).is_empty());
        assert!(!m.observe(
            "distlab/other/presence/a",
            &env("presence", presence("a", PresenceState::Up, 1)),
            t0
        ));
        // A heartbeat without presence does not invent a member.
        assert!(m.observe(
            &topics.heartbeat("z"),
            &EnvelopeFactory::new("z").make(
                "heartbeat",
                None,
                Heartbeat {
                    seq: 1,
                    uptime_ms: 1
                }
            ),
            t0
        ));
        assert!(m.rows(t0).is_empty());
    }
}
