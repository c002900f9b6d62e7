//! Partitions and the partition table.
//!
//! A key lives in partition `fnv1a(key) % partitions`. Which members hold a
//! partition follows from the view's member list by rendezvous (highest
//! random weight) hashing: each member gets a score per partition from its
//! node id and the partition number, the highest is the owner, the next
//! `backup_count` are the backups. Every member and client computes the same
//! table from the same list, with nothing to publish or agree on beyond the
//! list itself, and a change of the list moves as little as possible:
//!
//! - a member that leaves loses its places; in each partition it held, the
//!   others move up one rank, so its backup becomes the owner (it already
//!   holds the data) and the next member becomes a backup;
//! - a member that joins takes only the places where its score ranks in the
//!   top `1 + backup_count`, about `(1 + backup_count) / n` of them; no other
//!   partition changes hands.
//!
//! Scores use the node id, not the incarnation, so a restarted member gets
//! its old partitions back (Hazelcast migrates them back the same way).

use serde::{Deserialize, Serialize};

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The finaliser of splitmix64: spreads nearby inputs over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The partition of a key.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    (fnv1a(key.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// A member's score for a partition (rendezvous hashing).
fn score(node: &str, partition: u32) -> u64 {
    mix(fnv1a(node.as_bytes()) ^ mix(u64::from(partition) + 1))
}

/// A member of the map: a node id and the start time of this run of it (a
/// restarted node is a new incarnation with empty memory).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation {
    pub node: String,
    pub started_ms: u64,
}

/// A membership view: its epoch, who published it, and the members, sorted
/// by node id. Views are ordered by `(epoch, master)`; every member moves
/// through them in that order only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub epoch: u64,
    pub master: String,
    pub members: Vec<Incarnation>,
}

impl View {
    pub fn order(&self) -> (u64, &str) {
        (self.epoch, &self.master)
    }

    pub fn nodes(&self) -> Vec<String> {
        self.members.iter().map(|m| m.node.clone()).collect()
    }

    pub fn contains(&self, node: &str) -> bool {
        self.members.iter().any(|m| m.node == node)
    }
}

/// Owner and backups of every partition, as indexes into the member list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub members: Vec<String>,
    /// Per partition: the owner first, then the backups, best score first.
    pub replicas: Vec<Vec<u16>>,
}

impl Table {
    /// The table for a member list (order does not matter).
    pub fn compute(members: &[String], partitions: u32, backup_count: usize) -> Table {
        let mut members = members.to_vec();
        members.sort();
        members.dedup();
        let keep = (1 + backup_count).min(members.len());
        let replicas = (0..partitions)
            .map(|p| {
                let mut ranked: Vec<(u64, u16)> = members
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (score(m, p), i as u16))
                    .collect();
                // Highest score first; ties (never seen) by member order.
                ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                ranked.into_iter().take(keep).map(|(_, i)| i).collect()
            })
            .collect();
        Table { members, replicas }
    }

    pub fn partitions(&self) -> u32 {
        self.replicas.len() as u32
    }

    pub fn owner(&self, partition: u32) -> Option<&str> {
        let i = *self.replicas.get(partition as usize)?.first()?;
        Some(&self.members[usize::from(i)])
    }

    pub fn backups(&self, partition: u32) -> impl Iterator<Item = &str> {
        self.replicas
            .get(partition as usize)
            .into_iter()
            .flat_map(|r| r.iter().skip(1))
            .map(|i| self.members[usize::from(*i)].as_str())
    }

    /// Owner and backups.
    pub fn holders(&self, partition: u32) -> impl Iterator<Item = &str> {
        self.replicas
            .get(partition as usize)
            .into_iter()
            .flatten()
            .map(|i| self.members[usize::from(*i)].as_str())
    }

    pub fn is_owner(&self, partition: u32, node: &str) -> bool {
        self.owner(partition) == Some(node)
    }

    pub fn is_backup(&self, partition: u32, node: &str) -> bool {
        self.backups(partition).any(|b| b == node)
    }

    pub fn holds(&self, partition: u32, node: &str) -> bool {
        self.holders(partition).any(|b| b == node)
    }

    /// The partitions a node owns.
    pub fn owned_by<'a>(&'a self, node: &'a str) -> impl Iterator<Item = u32> + 'a {
        (0..self.partitions()).filter(move |p| self.is_owner(*p, node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_table_depends_only_on_the_member_set() {
        let a = Table::compute(&names(&["l1", "l2", "l3"]), 271, 1);
        let b = Table::compute(&names(&["l3", "l1", "l2", "l1"]), 271, 1);
        assert_eq!(a, b);
        assert_eq!(a.partitions(), 271);
        for p in 0..271 {
            let holders: Vec<&str> = a.holders(p).collect();
            assert_eq!(holders.len(), 2, "owner and one backup");
            assert_ne!(holders[0], holders[1]);
        }
        // Spread: each of three members owns a fair share.
        for m in ["l1", "l2", "l3"] {
            let owned = a.owned_by(m).count();
            assert!((60..=120).contains(&owned), "{m} owns {owned}");
        }
    }

    #[test]
    fn fewer_members_than_copies_keeps_what_there_is() {
        let t = Table::compute(&names(&["l1", "l2"]), 10, 2);
        assert!((0..10).all(|p| t.holders(p).count() == 2));
        let t = Table::compute(&[], 10, 1);
        assert_eq!(t.owner(3), None);
    }

    #[test]
    fn a_join_moves_only_the_places_it_takes() {
        let before = Table::compute(&names(&["l1", "l2", "l3"]), 271, 1);
        let after = Table::compute(&names(&["l1", "l2", "l3", "l4"]), 271, 1);
        let mut moved = 0;
        for p in 0..271 {
            let old: Vec<&str> = before.holders(p).collect();
            let new: Vec<&str> = after.holders(p).collect();
            if old != new {
                moved += 1;
                // The only newcomer to any partition is l4; the others keep
                // their relative order.
                assert!(new.contains(&"l4"), "partition {p}: {old:?} -> {new:?}");
                let rest: Vec<&&str> = new.iter().filter(|n| **n != "l4").collect();
                assert!(rest.iter().all(|n| old.contains(n)));
            }
        }
        // About half the partitions get l4 as owner or backup (2 of 4 places).
        assert!((90..=180).contains(&moved), "moved {moved}");
    }

    #[test]
    fn a_leave_promotes_the_backup_and_restores_the_count() {
        let before = Table::compute(&names(&["l1", "l2", "l3"]), 271, 1);
        let after = Table::compute(&names(&["l1", "l3"]), 271, 1);
        for p in 0..271 {
            let old: Vec<&str> = before.holders(p).collect();
            let new: Vec<&str> = after.holders(p).collect();
            assert_eq!(new.len(), 2, "the backup count holds again");
            if old[0] == "l2" {
                assert_eq!(new[0], old[1], "partition {p}: its backup owns it now");
            } else {
                assert_eq!(new[0], old[0], "partition {p}: its owner stays");
            }
        }
    }

    #[test]
    fn keys_spread_over_partitions_stably() {
        assert_eq!(partition_of("a", 271), partition_of("a", 271));
        // Fixed values: a change of the hash would move every stored key.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut seen = std::collections::HashSet::new();
        for i in 0..2000 {
            seen.insert(partition_of(&i.to_string(), 271));
        }
        assert!(seen.len() > 260);
    }
}
