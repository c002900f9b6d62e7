//! Who is a replicated group's primary: a pure state machine (inputs: the retained
//! primary record, peers' presence and last log positions, ticks; outputs:
//! [`Action`]s), driven by [`super::shell`].
//!
//! Election rule:
//! - The retained `<group>/primary` record names the primary, its epoch, and the
//!   replicas that hold every write it acknowledged (`in_sync`).
//! - A live primary in the record is followed: the other nodes catch up from
//!   it and become replicas.
//! - When the recorded primary is down, a replica listed in sync takes over
//!   with the next epoch. A node not in sync never does: it waits for the
//!   primary (it may lack acknowledged writes).
//! - With no record at all (a fresh broker), after a short grace the live
//!   node with the newest log position `(epoch, lsn)` becomes primary, ties
//!   going to the first in lab.toml.
//! - Fencing: every epoch is higher than any before it; a node that sees a
//!   record with a newer epoch than its own steps down at once, and replicas
//!   refuse log entries from older epochs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Body of the retained `<group>/primary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryRecord {
    pub primary: String,
    pub epoch: u64,
    /// Replicas that applied every write the primary acknowledged.
    pub in_sync: Vec<String>,
}

/// A node's log position: entries are ordered by `(epoch, lsn)`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub lsn: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// Listening for the record and the peers (start-up grace).
    Starting,
    Primary {
        epoch: u64,
    },
    /// Catching up from, then following, the primary.
    Replica {
        primary: String,
        epoch: u64,
    },
    /// Cannot serve: says why.
    Waiting {
        why: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Publish this record (retained).
    Announce(PrimaryRecord),
    /// Serve writes as primary of `epoch`.
    Lead { epoch: u64 },
    /// Stop serving writes (if leading) and follow `primary`.
    Follow { primary: String, epoch: u64 },
    /// Stop serving writes (if leading) and wait.
    Stand { why: String },
}

pub struct Replication {
    me: String,
    /// Every node of the group in lab.toml order (me included).
    nodes: Vec<String>,
    /// Highest epoch this node has seen (persisted by the shell).
    epoch: u64,
    position: Position,
    record: Option<PrimaryRecord>,
    up: BTreeMap<String, bool>,
    positions: BTreeMap<String, Position>,
    started_ms: u64,
    grace_ms: u64,
    role: Role,
}

impl Replication {
    pub fn new(
        me: &str,
        nodes: Vec<String>,
        position: Position,
        now_ms: u64,
        grace_ms: u64,
    ) -> Self {
        Self {
            me: me.to_owned(),
            nodes,
            epoch: position.epoch,
            position,
            record: None,
            up: BTreeMap::new(),
            positions: BTreeMap::new(),
            started_ms: now_ms,
            grace_ms,
            role: Role::Starting,
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn record(&self) -> Option<&PrimaryRecord> {
        self.record.as_ref()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The node writes go to, if any.
    pub fn primary(&self) -> Option<&str> {
        match &self.role {
            Role::Primary { .. } => Some(&self.me),
            Role::Replica { primary, .. } => Some(primary),
            _ => None,
        }
    }

    /// This node's own log moved on.
    pub fn set_position(&mut self, position: Position) {
        self.position = position;
        self.epoch = self.epoch.max(position.epoch);
    }

    /// The retained record changed.
    pub fn on_record(&mut self, record: Option<PrimaryRecord>, now_ms: u64) -> Vec<Action> {
        if let Some(r) = &record {
            if r.epoch < self.epoch {
                // A stale record (e.g. published by an old primary that was
                // cut off and came back): a newer epoch has begun, so it
                // names nobody to follow or to succeed. A primary says its
                // own record again, so the broker holds the newest one.
                return match self.role {
                    Role::Primary { .. } => self
                        .record
                        .clone()
                        .map(Action::Announce)
                        .into_iter()
                        .collect(),
                    _ => Vec::new(),
                };
            }
            self.epoch = r.epoch;
        }
        self.record = record;
        self.decide(now_ms)
    }

    /// A peer's presence (and, when known, its log position).
    pub fn on_peer(
        &mut self,
        node: &str,
        up: bool,
        position: Option<Position>,
        now_ms: u64,
    ) -> Vec<Action> {
        if node == self.me || !self.nodes.iter().any(|n| n == node) {
            return Vec::new();
        }
        self.up.insert(node.to_owned(), up);
        if let Some(p) = position {
            self.positions.insert(node.to_owned(), p);
        }
        self.decide(now_ms)
    }

    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        self.decide(now_ms)
    }

    /// Primary: `replica` caught up and receives every write from now on.
    pub fn replica_joined(&mut self, replica: &str) -> Vec<Action> {
        self.change_in_sync(|s| {
            if !s.iter().any(|r| r == replica) {
                s.push(replica.to_owned());
            }
        })
    }

    /// Primary: `replica` missed a write (down or too slow): it is no longer
    /// in sync, and must not take over. Writes wait until this is announced.
    pub fn replica_lost(&mut self, replica: &str) -> Vec<Action> {
        self.change_in_sync(|s| s.retain(|r| r != replica))
    }

    fn change_in_sync(&mut self, f: impl FnOnce(&mut Vec<String>)) -> Vec<Action> {
        let Role::Primary { epoch } = self.role else {
            return Vec::new();
        };
        let mut record = self.record.clone().unwrap_or(PrimaryRecord {
            primary: self.me.clone(),
            epoch,
            in_sync: Vec::new(),
        });
        let before = record.in_sync.clone();
        f(&mut record.in_sync);
        if record.in_sync == before && self.record.is_some() {
            return Vec::new();
        }
        self.record = Some(record.clone());
        vec![Action::Announce(record)]
    }

    fn is_up(&self, node: &str) -> bool {
        node == self.me || self.up.get(node).copied().unwrap_or(false)
    }

    fn lead(&mut self) -> Vec<Action> {
        let epoch = self.epoch + 1;
        self.epoch = epoch;
        self.role = Role::Primary { epoch };
        let record = PrimaryRecord {
            primary: self.me.clone(),
            epoch,
            in_sync: Vec::new(),
        };
        self.record = Some(record.clone());
        vec![Action::Announce(record), Action::Lead { epoch }]
    }

    fn follow(&mut self, primary: &str, epoch: u64) -> Vec<Action> {
        let role = Role::Replica {
            primary: primary.to_owned(),
            epoch,
        };
        if self.role == role {
            return Vec::new();
        }
        self.role = role;
        vec![Action::Follow {
            primary: primary.to_owned(),
            epoch,
        }]
    }

    fn stand(&mut self, why: String) -> Vec<Action> {
        let role = Role::Waiting { why: why.clone() };
        if self.role == role {
            return Vec::new();
        }
        self.role = role;
        vec![Action::Stand { why }]
    }

    fn decide(&mut self, now_ms: u64) -> Vec<Action> {
        match self.record.clone() {
            Some(r) => {
                if let Role::Primary { epoch } = self.role {
                    if r.primary == self.me && r.epoch == epoch {
                        return Vec::new();
                    }
                    if r.epoch < epoch {
                        // An older record (e.g. retained before our claim): ours stands.
                        return Vec::new();
                    }
                    // A newer primary: fenced, step down and follow it.
                }
                if r.primary == self.me {
                    // We were primary and came back: lead again, in a new epoch.
                    return self.lead();
                }
                if self.is_up(&r.primary) {
                    return self.follow(&r.primary, r.epoch);
                }
                if r.in_sync.iter().any(|n| n == &self.me) {
                    tracing::warn!(old = %r.primary, "the primary is down; taking over");
                    return self.lead();
                }
                self.stand(format!(
                    "primary {} is down and this node is not in sync with it; waiting for it to return",
                    r.primary
                ))
            }
            None => {
                if matches!(self.role, Role::Primary { .. }) {
                    return Vec::new();
                }
                if now_ms < self.started_ms + self.grace_ms {
                    return Vec::new();
                }
                // No record: the live node with the newest log leads.
                let best = self
                    .nodes
                    .iter()
                    .filter(|n| self.is_up(n))
                    .max_by(|a, b| {
                        let pa = self.position_of(a);
                        let pb = self.position_of(b);
                        // Newest log first; on a tie the earlier node in lab.toml.
                        pa.cmp(&pb).then_with(|| self.index(b).cmp(&self.index(a)))
                    })
                    .cloned();
                match best {
                    Some(n) if n == self.me => self.lead(),
                    Some(n) => self.stand(format!("waiting for {n} to lead (its log is newer, or as new and it comes first in lab.toml)")),
                    None => Vec::new(),
                }
            }
        }
    }

    fn position_of(&self, node: &str) -> Position {
        if node == self.me {
            self.position
        } else {
            self.positions.get(node).copied().unwrap_or_default()
        }
    }

    fn index(&self, node: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n == node)
            .unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: u64 = 1000;

    fn nodes() -> Vec<String> {
        vec!["mom-a".into(), "mom-b".into()]
    }

    fn pos(epoch: u64, lsn: u64) -> Position {
        Position { epoch, lsn }
    }

    fn record(primary: &str, epoch: u64, in_sync: &[&str]) -> Option<PrimaryRecord> {
        Some(PrimaryRecord {
            primary: primary.into(),
            epoch,
            in_sync: in_sync.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn fresh_cluster_the_first_node_leads_after_the_grace() {
        let mut a = Replication::new("mom-a", nodes(), pos(0, 0), 0, GRACE);
        let mut b = Replication::new("mom-b", nodes(), pos(0, 0), 0, GRACE);
        assert!(a.on_record(None, 0).is_empty());
        a.on_peer("mom-b", true, Some(pos(0, 0)), 10);
        b.on_peer("mom-a", true, Some(pos(0, 0)), 10);
        assert!(a.tick(500).is_empty(), "still in the grace");
        let acts = a.tick(GRACE);
        assert_eq!(acts[1], Action::Lead { epoch: 1 });
        let Action::Announce(r) = &acts[0] else {
            panic!("{acts:?}")
        };
        assert!(
            matches!(b.tick(GRACE)[0], Action::Stand { .. }),
            "b waits for a"
        );
        assert_eq!(
            b.on_record(Some(r.clone()), GRACE + 5),
            vec![Action::Follow {
                primary: "mom-a".into(),
                epoch: 1
            }]
        );
        assert_eq!(b.primary(), Some("mom-a"));
    }

    #[test]
    fn with_no_record_the_newest_log_leads_not_the_first_node() {
        let mut a = Replication::new("mom-a", nodes(), pos(3, 10), 0, GRACE);
        a.on_record(None, 0);
        a.on_peer("mom-b", true, Some(pos(4, 2)), 0);
        assert!(matches!(a.tick(GRACE)[0], Action::Stand { .. }));
        let mut b = Replication::new("mom-b", nodes(), pos(4, 2), 0, GRACE);
        b.on_peer("mom-a", true, Some(pos(3, 10)), 0);
        assert_eq!(b.tick(GRACE)[1], Action::Lead { epoch: 5 });
    }

    #[test]
    fn an_in_sync_replica_takes_over_a_dead_primary_in_a_new_epoch() {
        let mut b = Replication::new("mom-b", nodes(), pos(1, 7), 0, GRACE);
        b.on_peer("mom-a", true, None, 0);
        b.on_record(record("mom-a", 1, &["mom-b"]), 0);
        assert_eq!(b.primary(), Some("mom-a"));
        let acts = b.on_peer("mom-a", false, None, 100);
        assert_eq!(acts[1], Action::Lead { epoch: 2 });
        assert_eq!(acts[0], Action::Announce(record("mom-b", 2, &[]).unwrap()));
    }

    #[test]
    fn a_replica_not_in_sync_waits_for_the_dead_primary() {
        let mut b = Replication::new("mom-b", nodes(), pos(1, 3), 0, GRACE);
        b.on_peer("mom-a", true, None, 0);
        b.on_record(record("mom-a", 1, &[]), 0);
        let acts = b.on_peer("mom-a", false, None, 100);
        assert!(
            matches!(&acts[0], Action::Stand { why } if why.contains("not in sync")),
            "{acts:?}"
        );
        assert_eq!(b.primary(), None);
        // The primary returns (and leads again): b follows.
        let acts = b.on_record(record("mom-a", 2, &[]), 200);
        assert!(acts.is_empty(), "a is still down");
        assert_eq!(
            b.on_peer("mom-a", true, None, 300),
            vec![Action::Follow {
                primary: "mom-a".into(),
                epoch: 2
            }]
        );
    }

    #[test]
    fn a_returning_old_primary_is_fenced_and_follows() {
        // a led epoch 1; b took over in epoch 2 while a was paused.
        let mut a = Replication::new("mom-a", nodes(), pos(0, 0), 0, GRACE);
        a.on_peer("mom-b", true, None, 0);
        a.on_record(None, 0);
        a.tick(GRACE);
        assert!(matches!(a.role(), Role::Primary { epoch: 1 }));
        let acts = a.on_record(record("mom-b", 2, &[]), 5000);
        assert_eq!(
            acts,
            vec![Action::Follow {
                primary: "mom-b".into(),
                epoch: 2
            }]
        );
        assert_eq!(a.epoch(), 2);
        // Its own older record arriving late changes nothing.
        assert!(a.on_record(record("mom-b", 2, &[]), 5001).is_empty());
    }

    #[test]
    fn an_older_record_replacing_the_primarys_is_answered_with_its_own() {
        let mut b = Replication::new("mom-b", nodes(), pos(1, 7), 0, GRACE);
        b.on_peer("mom-a", true, None, 0);
        b.on_record(record("mom-a", 1, &["mom-b"]), 0);
        b.on_peer("mom-a", false, None, 100);
        assert!(matches!(b.role(), Role::Primary { epoch: 2 }));
        // mom-a comes back and its stale record lands on the broker.
        b.on_peer("mom-a", true, None, 200);
        let acts = b.on_record(record("mom-a", 1, &["mom-b"]), 210);
        assert_eq!(
            acts,
            vec![Action::Announce(record("mom-b", 2, &[]).unwrap())]
        );
        assert!(
            matches!(b.role(), Role::Primary { epoch: 2 }),
            "still the primary"
        );
        // mom-a, seeing the newer record, follows, and its own stale record
        // (say, announced by its replicator as it gave mom-b up) arriving
        // after that does not make it lead again.
        let mut a = Replication::new("mom-a", nodes(), pos(1, 9), 0, GRACE);
        a.on_peer("mom-b", true, None, 0);
        assert_eq!(
            a.on_record(record("mom-b", 2, &[]), 220),
            vec![Action::Follow {
                primary: "mom-b".into(),
                epoch: 2
            }]
        );
        assert!(a.on_record(record("mom-a", 1, &[]), 230).is_empty());
        assert!(a.tick(5000).is_empty());
        assert_eq!(a.primary(), Some("mom-b"));
    }

    #[test]
    fn a_restarted_primary_leads_again_in_a_new_epoch() {
        let mut a = Replication::new("mom-a", nodes(), pos(4, 9), 0, GRACE);
        a.on_peer("mom-b", false, None, 0);
        let acts = a.on_record(record("mom-a", 4, &["mom-b"]), 0);
        assert_eq!(acts[1], Action::Lead { epoch: 5 });
    }

    #[test]
    fn the_primary_tracks_who_is_in_sync() {
        let mut a = Replication::new("mom-a", nodes(), pos(0, 0), 0, GRACE);
        a.on_record(None, 0);
        a.tick(GRACE);
        assert_eq!(
            a.replica_joined("mom-b"),
            vec![Action::Announce(record("mom-a", 1, &["mom-b"]).unwrap())]
        );
        assert!(
            a.replica_joined("mom-b").is_empty(),
            "no change, no announcement"
        );
        assert_eq!(
            a.replica_lost("mom-b"),
            vec![Action::Announce(record("mom-a", 1, &[]).unwrap())]
        );
        // Our own record coming back from the broker changes nothing.
        assert!(a.on_record(record("mom-a", 1, &[]), GRACE + 10).is_empty());
    }
}
