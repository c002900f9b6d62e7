//! The coordinator's grant [`Schedule`]. Central mode: one grant at a time
//! to receivers with a known key, in config order; a release grants the
//! next. Ring mode: a root grant per epoch carrying the ring roster (names
//! and keys); receivers pass the token on themselves, the schedule watches
//! the passes, and a change of live members re-roots. Both: a lapse or the
//! holder going down starts a new epoch, so a dead holder never stalls the
//! token.

use std::collections::{BTreeMap, BTreeSet};

use super::token::{Grant, RingMember};
use crate::config::TokenMode;

/// The coordinator's grant schedule (central or ring mode).
#[derive(Debug)]
pub struct Schedule {
    receivers: Vec<String>,
    lease_ms: u64,
    epoch: u64,
    seq: u64,
    next: usize,
    current: Option<Grant>,
    /// Receivers known to be down are skipped.
    down: BTreeSet<String>,
    /// Public keys of receivers (hex); a receiver without one is not granted.
    keys: BTreeMap<String, String>,
    /// Ring mode: the coordinator only roots each epoch and watches passes.
    mode: TokenMode,
    /// Ring mode: the members of the current epoch's ring.
    members: Vec<String>,
}

/// Why the schedule started a new epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Granted(Grant),
    /// The holder let its grant expire (or died); a new epoch began.
    Expired {
        holder: String,
        new_epoch: u64,
    },
}

impl Schedule {
    /// `epoch` is the first epoch to use: one more than any epoch used before
    /// (a restarted coordinator must never reuse an epoch).
    pub fn new(receivers: Vec<String>, lease_ms: u64, epoch: u64) -> Self {
        Self {
            receivers,
            lease_ms: lease_ms.max(1),
            epoch,
            seq: 0,
            next: 0,
            current: None,
            down: Default::default(),
            keys: Default::default(),
            mode: TokenMode::Central,
            members: Vec::new(),
        }
    }

    /// Ring mode: when the live receivers differ from the current ring, the
    /// ring is rebuilt in a new epoch (a newcomer joins, a dead one leaves).
    fn rering(&mut self, now_ms: u64) -> Vec<Event> {
        if self.mode != TokenMode::Ring || self.current.is_none() {
            return self.tick(now_ms);
        }
        let live: Vec<String> = self.roster("").into_iter().map(|m| m.name).collect();
        let mut now_members = self.members.clone();
        now_members.sort();
        let mut sorted_live = live;
        sorted_live.sort();
        if sorted_live != now_members {
            return self.revoke(now_ms);
        }
        self.tick(now_ms)
    }

    /// The schedule in `mode`. Ring mode: grants are epoch roots carrying
    /// the ring; receivers pass the token on themselves and the schedule only
    /// watches ([`Schedule::observe_pass`]).
    pub fn with_mode(mut self, mode: TokenMode) -> Self {
        self.mode = mode;
        self
    }

    /// Ring mode: a pass seen on the bus moves the token (and its deadline)
    /// on; returns whether it did.
    pub fn observe_pass(&mut self, g: &Grant) -> bool {
        if self.mode == TokenMode::Ring
            && let Some(current) = &self.current
            && g.epoch == current.epoch
            && g.seq > current.seq
        {
            self.seq = g.seq;
            self.current = Some(g.clone());
            // A lapse skips the holder that let the token die.
            if let Some(i) = self.receivers.iter().position(|r| *r == g.holder) {
                self.next = i + 1;
            }
            return true;
        }
        false
    }

    /// The schedule with a receiver's key already known.
    pub fn with_key(mut self, receiver: &str, public_hex: &str) -> Self {
        self.keys.insert(receiver.to_owned(), public_hex.to_owned());
        self
    }

    /// Records a receiver's public key (from its retained announcement).
    pub fn set_key(&mut self, receiver: &str, public_hex: &str, now_ms: u64) -> Vec<Event> {
        self.keys.insert(receiver.to_owned(), public_hex.to_owned());
        self.rering(now_ms)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn current(&self) -> Option<&Grant> {
        self.current.as_ref()
    }

    /// Marks a receiver up or down (from presence). A holder that goes down
    /// loses the token at once, in a new epoch.
    pub fn set_down(&mut self, receiver: &str, down: bool, now_ms: u64) -> Vec<Event> {
        if down {
            self.down.insert(receiver.to_owned());
            if self.current.as_ref().is_some_and(|g| g.holder == receiver) {
                return self.revoke(now_ms);
            }
        } else {
            self.down.remove(receiver);
        }
        self.rering(now_ms)
    }

    /// The holder hands the token back (after writing, or with nothing to write).
    pub fn release(&mut self, holder: &str, epoch: u64, seq: u64, now_ms: u64) -> Vec<Event> {
        if self.mode == TokenMode::Ring {
            // In a ring the holder passes the token on instead.
            return Vec::new();
        }
        match &self.current {
            Some(g) if g.holder == holder && g.epoch == epoch && g.seq == seq => {
                self.current = None;
                self.tick(now_ms)
            }
            // A late or foreign release changes nothing.
            _ => Vec::new(),
        }
    }

    /// Advances time: expires an overdue grant, grants the next receiver.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        if self
            .current
            .as_ref()
            .is_some_and(|g| now_ms >= g.expires_ms)
        {
            events.extend(self.revoke(now_ms));
            return events;
        }
        if self.current.is_none()
            && let Some(holder) = self.pick_next()
        {
            self.seq += 1;
            let ring = if self.mode == TokenMode::Ring {
                self.roster(&holder)
            } else {
                Vec::new()
            };
            self.members = ring.iter().map(|m| m.name.clone()).collect();
            let grant = Grant {
                holder_key: self.keys.get(&holder).cloned().unwrap_or_default(),
                holder,
                epoch: self.epoch,
                seq: self.seq,
                issued_ms: now_ms,
                expires_ms: now_ms + self.lease_ms,
                ring,
            };
            self.current = Some(grant.clone());
            events.push(Event::Granted(grant));
        }
        events
    }

    fn revoke(&mut self, now_ms: u64) -> Vec<Event> {
        let Some(old) = self.current.take() else {
            return Vec::new();
        };
        self.epoch += 1;
        self.seq = 0;
        let mut events = vec![Event::Expired {
            holder: old.holder,
            new_epoch: self.epoch,
        }];
        events.extend(self.tick(now_ms));
        events
    }

    /// The live receivers with keys, in config order, starting at `first`.
    fn roster(&self, first: &str) -> Vec<RingMember> {
        let live: Vec<RingMember> = self
            .receivers
            .iter()
            .filter(|r| !self.down.contains(*r))
            .filter_map(|r| {
                self.keys.get(r).map(|k| RingMember {
                    name: r.clone(),
                    key: k.clone(),
                })
            })
            .collect();
        let start = live.iter().position(|m| m.name == first).unwrap_or(0);
        live[start..]
            .iter()
            .chain(&live[..start])
            .cloned()
            .collect()
    }

    fn pick_next(&mut self) -> Option<String> {
        for _ in 0..self.receivers.len() {
            let candidate = &self.receivers[self.next % self.receivers.len()];
            self.next = (self.next + 1) % self.receivers.len();
            if !self.down.contains(candidate) && self.keys.contains_key(candidate) {
                return Some(candidate.clone());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::holder_keys;
    use super::*;

    fn schedule(names: &[&str], lease: u64, epoch: u64) -> Schedule {
        names.iter().fold(
            Schedule::new(names.iter().map(|n| n.to_string()).collect(), lease, epoch),
            |s, n| s.with_key(n, &holder_keys(n).public_hex()),
        )
    }

    fn granted(events: &[Event]) -> Vec<(String, u64, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Granted(g) => Some((g.holder.clone(), g.epoch, g.seq)),
                Event::Expired { .. } => None,
            })
            .collect()
    }

    #[test]
    fn schedule_grants_in_turn() {
        let mut s = schedule(&["a", "b", "c"], 100, 1);
        assert_eq!(granted(&s.tick(0)), vec![("a".into(), 1, 1)]);
        // Only one holder at a time.
        assert!(s.tick(10).is_empty());
        assert_eq!(granted(&s.release("a", 1, 1, 20)), vec![("b".into(), 1, 2)]);
        assert_eq!(granted(&s.release("b", 1, 2, 30)), vec![("c".into(), 1, 3)]);
        assert_eq!(granted(&s.release("c", 1, 3, 40)), vec![("a".into(), 1, 4)]);
    }

    #[test]
    fn stale_or_foreign_releases_change_nothing() {
        let mut s = schedule(&["a", "b"], 100, 1);
        s.tick(0);
        assert!(s.release("b", 1, 1, 5).is_empty());
        assert!(s.release("a", 0, 1, 5).is_empty());
        assert!(s.release("a", 1, 9, 5).is_empty());
        assert_eq!(s.current().unwrap().holder, "a");
    }

    #[test]
    fn expiry_starts_a_new_epoch_and_moves_on() {
        let mut s = schedule(&["a", "b"], 100, 1);
        s.tick(0);
        assert!(s.tick(99).is_empty());
        let events = s.tick(100);
        assert_eq!(
            events[0],
            Event::Expired {
                holder: "a".into(),
                new_epoch: 2
            }
        );
        assert_eq!(granted(&events), vec![("b".into(), 2, 1)]);
    }

    #[test]
    fn a_dead_holder_loses_the_token_and_is_skipped() {
        let mut s = schedule(&["a", "b", "c"], 100, 7);
        s.tick(0);
        let events = s.set_down("a", true, 5);
        assert_eq!(granted(&events), vec![("b".into(), 8, 1)]);
        s.release("b", 8, 1, 6);
        s.release("c", 8, 2, 7);
        // a is still down: b again, not a.
        assert_eq!(s.current().unwrap().holder, "b");
        s.set_down("a", false, 8);
        s.release("b", 8, 3, 9);
        assert_eq!(s.current().unwrap().holder, "c");
        s.release("c", 8, 4, 10);
        assert_eq!(s.current().unwrap().holder, "a");
    }

    #[test]
    fn ring_roots_carry_the_ring_and_passes_move_the_token() {
        let mut s = schedule(&["a", "b", "c"], 100, 1).with_mode(TokenMode::Ring);
        let events = s.tick(0);
        let Event::Granted(root) = &events[0] else {
            panic!("{events:?}")
        };
        let names: Vec<&str> = root.ring.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        // Releases mean nothing in a ring; a pass from a to b moves the token.
        assert!(s.release("a", 1, 1, 10).is_empty());
        let pass = Grant {
            holder: "b".into(),
            holder_key: holder_keys("b").public_hex(),
            epoch: 1,
            seq: 2,
            issued_ms: 10,
            expires_ms: 110,
            ring: vec![],
        };
        s.observe_pass(&pass);
        assert_eq!(s.current().unwrap().holder, "b");
        // Nobody passes on: the coordinator roots a new epoch after the lease.
        assert!(s.tick(100).is_empty());
        let events = s.tick(110);
        assert!(matches!(&events[0], Event::Expired { holder, new_epoch: 2 } if holder == "b"));
        assert_eq!(granted(&events), vec![("c".into(), 2, 1)]);
    }

    #[test]
    fn a_receiver_joining_or_leaving_rebuilds_the_ring() {
        let mut s = Schedule::new(vec!["a".into(), "b".into()], 100, 1)
            .with_mode(TokenMode::Ring)
            .with_key("a", &holder_keys("a").public_hex());
        let events = s.tick(0);
        let Event::Granted(root) = &events[0] else {
            panic!()
        };
        assert_eq!(root.ring.len(), 1);
        let events = s.set_key("b", &holder_keys("b").public_hex(), 5);
        assert!(
            matches!(events[0], Event::Expired { new_epoch: 2, .. }),
            "{events:?}"
        );
        let Event::Granted(root) = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(root.ring.len(), 2);
        let events = s.set_down("a", true, 6);
        let Event::Granted(root) = events.last().unwrap() else {
            panic!("{events:?}")
        };
        assert_eq!((root.epoch, root.ring.len()), (3, 1));
    }

    #[test]
    fn receivers_without_a_key_are_not_granted() {
        let mut s = Schedule::new(vec!["a".into(), "b".into()], 100, 1);
        assert!(s.tick(0).is_empty());
        let events = s.set_key("b", &holder_keys("b").public_hex(), 1);
        assert_eq!(granted(&events), vec![("b".into(), 1, 1)]);
        assert_eq!(
            s.current().unwrap().holder_key,
            holder_keys("b").public_hex()
        );
    }

    #[test]
    fn nobody_alive_means_no_grant() {
        let mut s = schedule(&["a"], 100, 1);
        s.set_down("a", true, 0);
        assert!(s.tick(10).is_empty());
        assert!(s.current().is_none());
        assert_eq!(
            granted(&s.set_down("a", false, 20)),
            vec![("a".into(), 1, 1)]
        );
    }
}
