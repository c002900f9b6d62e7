//! What the dashboard knows of the lockers, from the `users` and `lockers`
//! nodes' telemetry: each group's raft view, the lockers grid and the
//! users (each as its group's leader reports it), allocations per second,
//! the wait percentiles, and the live check that no locker is held twice
//! and that users and lockers agree.

use std::collections::{BTreeMap, HashMap};

use distlab_node::envelope::{Envelope, Topics};
use distlab_node::replica::{GroupStatus, Role};
use distlab_node::services::lockers::model::Locker;
use distlab_node::services::lockers::wire::{LockersStats, UserView, UsersStats};

use super::time::{Rate, TimeBase};

#[derive(Debug)]
pub struct LockersModel {
    /// Latest telemetry per node, with when it was sent (s of `time`).
    pub users: BTreeMap<String, (f64, UsersStats)>,
    pub lockers: BTreeMap<String, (f64, LockersStats)>,
    /// Granted takes per users node (its own counter).
    granted: BTreeMap<String, Rate>,
    time: TimeBase,
}

/// The live check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Not both leaders report yet.
    Unknown,
    Ok,
    /// Requests are on their way: the two sides may differ for a moment.
    Settling,
    Broken(String),
}

fn leader<T>(
    nodes: &BTreeMap<String, (f64, T)>,
    raft: impl Fn(&T) -> &GroupStatus,
) -> Option<(&str, &T)> {
    nodes
        .iter()
        .filter(|(_, (_, s))| raft(s).role == Role::Leader)
        .max_by_key(|(_, (_, s))| raft(s).term)
        .map(|(n, (_, s))| (n.as_str(), s))
}

impl LockersModel {
    pub fn new(time: TimeBase) -> Self {
        Self {
            users: BTreeMap::new(),
            lockers: BTreeMap::new(),
            granted: BTreeMap::new(),
            time,
        }
    }

    /// Feeds one bus message; returns whether it was lockers telemetry.
    pub fn observe(&mut self, topics: &Topics, topic: &str, e: &Envelope) -> bool {
        let Some(parts) = super::levels(topics, topic) else {
            return false;
        };
        let t = self.time.seconds(e.sent_ms);
        match parts.as_slice() {
            ["telemetry", node, "users"] => {
                let Ok(s) = e.body_as::<UsersStats>() else {
                    return false;
                };
                self.granted
                    .entry((*node).to_owned())
                    .or_default()
                    .record(t, s.granted);
                self.users.insert((*node).to_owned(), (t, s));
                true
            }
            ["telemetry", node, "lockers"] => {
                let Ok(s) = e.body_as::<LockersStats>() else {
                    return false;
                };
                self.lockers.insert((*node).to_owned(), (t, s));
                true
            }
            _ => false,
        }
    }

    pub fn users_leader(&self) -> Option<(&str, &UsersStats)> {
        leader(&self.users, |s| &s.raft)
    }

    pub fn lockers_leader(&self) -> Option<(&str, &LockersStats)> {
        leader(&self.lockers, |s| &s.raft)
    }

    /// The lockers as the lockers leader (else any replica) reports them.
    pub fn grid(&self) -> Vec<Locker> {
        self.lockers_leader()
            .map(|(_, s)| s.lockers.clone())
            .or_else(|| self.lockers.values().next().map(|(_, s)| s.lockers.clone()))
            .unwrap_or_default()
    }

    /// The users as the users leader (else any replica) reports them.
    pub fn user_list(&self) -> (Vec<UserView>, u64) {
        self.users_leader()
            .map(|(_, s)| (s.users.clone(), s.users_total))
            .or_else(|| {
                self.users
                    .values()
                    .next()
                    .map(|(_, s)| (s.users.clone(), s.users_total))
            })
            .unwrap_or_default()
    }

    /// A wall-clock time (ms) in seconds of the model's time base.
    pub fn seconds(&self, ms: u64) -> f64 {
        self.time.seconds(ms)
    }

    /// Allocations per second (takes granted, on the users leader).
    pub fn allocations_per_s(&self) -> f64 {
        self.users_leader()
            .and_then(|(n, _)| self.granted.get(n))
            .map(Rate::per_second)
            .unwrap_or(0.0)
    }

    /// No locker held by two users; users and lockers agree (each user's
    /// locker is held by that user and each held locker by a user who
    /// has it), judged on the two leaders' reports.
    pub fn check(&self) -> Check {
        let (Some((_, users)), Some((_, keeper))) = (self.users_leader(), self.lockers_leader())
        else {
            return Check::Unknown;
        };
        let mut holders: HashMap<u64, u32> = HashMap::new();
        for l in &keeper.lockers {
            if let Some(h) = &l.holder
                && let Some(other) = holders.insert(h.user, l.id)
            {
                return Check::Broken(format!("{} holds lockers {other} and {}", h.name, l.id));
            }
        }
        if users.waiting > 0 || users.users.iter().any(|u| u.pending.is_some()) {
            return Check::Settling;
        }
        let held: HashMap<u32, &str> = keeper
            .lockers
            .iter()
            .filter_map(|l| l.holder.as_ref().map(|h| (l.id, h.name.as_str())))
            .collect();
        for u in &users.users {
            if let Some(l) = u.locker
                && held.get(&l) != Some(&u.name.as_str())
            {
                return Check::Broken(format!(
                    "{} has locker {l}, which the lockers give to {}",
                    u.name,
                    held.get(&l).copied().unwrap_or("nobody")
                ));
            }
        }
        // A long user list is reported in part: the reverse check needs all.
        let complete = users.users_total as usize == users.users.len();
        if complete {
            for (l, name) in &held {
                if !users
                    .users
                    .iter()
                    .any(|u| u.locker == Some(*l) && u.name == *name)
                {
                    return Check::Broken(format!(
                        "locker {l} is held by {name}, who does not have it"
                    ));
                }
            }
        }
        Check::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distlab_node::envelope::EnvelopeFactory;
    use distlab_node::services::lockers::model::Holder;

    fn feed(m: &mut LockersModel, node: &str, service: &str, body: impl serde::Serialize) {
        let topics = Topics::new("lab");
        let e = EnvelopeFactory::new(node).make("telemetry", None, &body);
        assert!(m.observe(&topics, &topics.telemetry(node, service), &e));
    }

    fn leading() -> GroupStatus {
        GroupStatus {
            role: Role::Leader,
            term: 1,
            ..Default::default()
        }
    }

    fn locker(id: u32, holder: Option<(u64, &str)>) -> Locker {
        Locker {
            id,
            holder: holder.map(|(user, name)| Holder {
                user,
                name: name.into(),
            }),
            changed_ms: 0,
        }
    }

    fn user(name: &str, locker: Option<u32>) -> UserView {
        UserView {
            name: name.into(),
            locker,
            pending: None,
        }
    }

    #[test]
    fn the_check_sees_agreement_and_each_kind_of_break() {
        let mut m = LockersModel::new(TimeBase::at(0));
        assert_eq!(m.check(), Check::Unknown);
        let users = |list: Vec<UserView>| UsersStats {
            raft: leading(),
            users_total: list.len() as u64,
            users: list,
            ..Default::default()
        };
        let lockers = |list: Vec<Locker>| LockersStats {
            raft: leading(),
            lockers: list,
            ..Default::default()
        };
        feed(
            &mut m,
            "users-a",
            "users",
            users(vec![user("ann", Some(1)), user("bo", None)]),
        );
        feed(
            &mut m,
            "lockers-a",
            "lockers",
            lockers(vec![locker(1, Some((1, "ann"))), locker(2, None)]),
        );
        assert_eq!(m.check(), Check::Ok);
        assert_eq!(m.grid().len(), 2);
        // The lockers give 2 to ann too.
        feed(
            &mut m,
            "lockers-a",
            "lockers",
            lockers(vec![
                locker(1, Some((1, "ann"))),
                locker(2, Some((1, "ann"))),
            ]),
        );
        assert!(matches!(m.check(), Check::Broken(w) if w.contains("holds lockers 1 and 2")));
        // bo thinks he has 2, which is free.
        feed(
            &mut m,
            "lockers-a",
            "lockers",
            lockers(vec![locker(1, Some((1, "ann"))), locker(2, None)]),
        );
        feed(
            &mut m,
            "users-a",
            "users",
            users(vec![user("ann", Some(1)), user("bo", Some(2))]),
        );
        assert!(matches!(m.check(), Check::Broken(w) if w.contains("bo has locker 2")));
        // A locker held by someone who does not know it.
        feed(
            &mut m,
            "users-a",
            "users",
            users(vec![user("ann", None), user("bo", None)]),
        );
        assert!(matches!(m.check(), Check::Broken(w) if w.contains("locker 1 is held by ann")));
        // While requests wait, differences are expected.
        let mut waiting = users(vec![user("ann", None), user("bo", None)]);
        waiting.waiting = 1;
        feed(&mut m, "users-a", "users", waiting);
        assert_eq!(m.check(), Check::Settling);
    }
}
