//! What the bookstore's roles say to each other over MQTT: requests to the
//! catalog and order servers (`rpc/catalog/<node>`, `rpc/order/<node>`),
//! their heartbeats (`bookstore/beat/<node>`), change notices
//! (`bookstore/changed`), and [`Peers`]: which replicas a caller sees alive
//! (a pure state machine fed with beats and a clock).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::model::{Book, BookError, Command, Digest, Ledger, Order, Outcome};
use crate::liveness::Liveness;

pub use crate::runtime::FORWARDED;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CatalogRequest {
    /// Books on a topic (404 if none).
    Search {
        topic: String,
    },
    Lookup {
        id: u32,
    },
    /// Every book.
    Books,
    /// A change (served by the primary; others forward it).
    Apply {
        command: Command,
    },
    /// Every sale the catalog made, in order (for checks).
    Sales,
    Ledger,
    /// The sales after the first `after` (at most `limit`), each with its
    /// place in the sale order: the order leader's reconciler reads them.
    SalesAfter {
        after: u64,
        limit: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum CatalogReply {
    Books { books: Vec<Book> },
    Outcome { outcome: Outcome },
    Sales { orders: Vec<Order> },
    Ledger { ledger: Vec<Ledger> },
    Placed { sales: Vec<(u64, Order)> },
}

pub type CatalogAnswer = Result<CatalogReply, BookError>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OrderRequest {
    /// Sell one copy of `book` as `order_id` (the caller's id: a retry with
    /// the same id is the same order).
    Buy { order_id: String, book: u32 },
    /// Every order, in order (for checks).
    Orders,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum OrderReply {
    Bought { order: Order, book: Book },
    Orders { orders: Vec<Order> },
}

pub type OrderAnswer = Result<OrderReply, BookError>;

/// Body of `bookstore/changed`: the catalog primary changed these books.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changed {
    pub books: Vec<u32>,
}

/// A catalog or order server's heartbeat, every `bookstore.heartbeat_ms`
/// on `bookstore/beat/<node>` (also what the dashboard shows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub node: String,
    /// `catalog` or `order`.
    pub service: String,
    /// Its raft role: `leader`, `follower` or `candidate`.
    pub state: String,
    /// Knows a leader, so can serve current reads and forward writes.
    pub serving: bool,
    pub leader: Option<String>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// Orders (order servers) or sales (catalog servers), summarized.
    pub digest: Digest,
    /// Catalog: the books and their ledger.
    #[serde(default)]
    pub books: Vec<Book>,
    #[serde(default)]
    pub ledger: Vec<Ledger>,
    /// Requests answered and failed since start.
    pub requests: u64,
    pub failed: u64,
}

/// One replica as a caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub node: String,
    pub service: String,
    /// Age of its last beat, ms.
    pub age_ms: u64,
    pub alive: bool,
    pub serving: bool,
    pub primary: bool,
}

/// Which catalog and order replicas are alive, from their beats: a replica
/// is alive while its last beat is younger than the timeout, and is tried
/// first while it says it serves. Calls go round-robin over those.
#[derive(Debug, Clone)]
pub struct Peers {
    live: Liveness,
    beats: BTreeMap<String, (Beat, u64)>,
    /// A node that failed a call is tried last until it beats again.
    suspect: BTreeMap<String, u64>,
    turn: usize,
}

impl Peers {
    pub fn new(timeout_ms: u64) -> Self {
        Self {
            live: Liveness::new(std::time::Duration::from_millis(timeout_ms)),
            beats: BTreeMap::new(),
            suspect: BTreeMap::new(),
            turn: 0,
        }
    }

    pub fn on_beat(&mut self, beat: Beat, now_ms: u64) {
        if self.suspect.get(&beat.node).is_some_and(|&t| now_ms > t) {
            self.suspect.remove(&beat.node);
        }
        self.beats.insert(beat.node.clone(), (beat, now_ms));
    }

    /// A call to `node` failed (no answer): try it last for a while.
    pub fn failed(&mut self, node: &str, now_ms: u64) {
        self.suspect.insert(node.to_owned(), now_ms);
    }

    /// The nodes of `service` to try, in order: alive and serving ones
    /// (round-robin; the leader first when `primary_first`), then alive
    /// ones that do not serve yet, then suspects. Silent ones not at all.
    pub fn candidates(&mut self, service: &str, primary_first: bool, now_ms: u64) -> Vec<String> {
        let alive: Vec<&Beat> = self
            .beats
            .values()
            .filter(|(b, at)| {
                b.service == service && self.live.alive(Liveness::since_ms(*at, now_ms))
            })
            .map(|(b, _)| b)
            .collect();
        let good = |b: &&Beat| b.serving && !self.suspect.contains_key(&b.node);
        let mut first: Vec<&Beat> = alive.iter().copied().filter(good).collect();
        if !first.is_empty() {
            let k = self.turn % first.len();
            first.rotate_left(k);
            self.turn = self.turn.wrapping_add(1);
        }
        if primary_first && let Some(i) = first.iter().position(|b| b.state == "leader") {
            let p = first.remove(i);
            first.insert(0, p);
        }
        let mut out: Vec<String> = first.iter().map(|b| b.node.clone()).collect();
        let rest = alive
            .iter()
            .filter(|b| !good(b))
            .map(|b| (self.suspect.contains_key(&b.node), b.node.clone()));
        let mut rest: Vec<(bool, String)> = rest.collect();
        rest.sort();
        out.extend(rest.into_iter().map(|(_, n)| n));
        out
    }

    /// Every replica heard from, for display.
    pub fn view(&self, now_ms: u64) -> Vec<PeerView> {
        self.beats
            .values()
            .map(|(b, at)| {
                let silent = Liveness::since_ms(*at, now_ms);
                PeerView {
                    node: b.node.clone(),
                    service: b.service.clone(),
                    age_ms: silent.as_millis() as u64,
                    alive: self.live.alive(silent),
                    serving: b.serving,
                    primary: b.state == "leader",
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(node: &str, service: &str, state: &str, serving: bool) -> Beat {
        Beat {
            node: node.into(),
            service: service.into(),
            state: state.into(),
            serving,
            ..Default::default()
        }
    }

    #[test]
    fn calls_rotate_over_serving_replicas_and_skip_silent_ones() {
        let mut p = Peers::new(1000);
        p.on_beat(beat("catalog-a", "catalog", "leader", true), 0);
        p.on_beat(beat("catalog-b", "catalog", "replica", true), 0);
        p.on_beat(beat("order-a", "order", "leader", true), 0);
        let one = p.candidates("catalog", false, 10);
        let two = p.candidates("catalog", false, 20);
        assert_eq!(one.len(), 2);
        assert_ne!(one[0], two[0], "round-robin");
        // The primary first for writes.
        assert_eq!(p.candidates("catalog", true, 30)[0], "catalog-a");
        // catalog-a falls silent: after the timeout it is not tried at all.
        p.on_beat(beat("catalog-b", "catalog", "leader", true), 900);
        assert_eq!(p.candidates("catalog", false, 1200), vec!["catalog-b"]);
        assert!(p.candidates("nothing", false, 1200).is_empty());
        let view = p.view(1200);
        assert!(view.iter().any(|v| v.node == "catalog-a" && !v.alive));
    }

    #[test]
    fn a_replica_catching_up_or_failing_is_tried_last() {
        let mut p = Peers::new(1000);
        p.on_beat(beat("order-a", "order", "leader", true), 0);
        p.on_beat(beat("order-b", "order", "catching up", false), 0);
        for now in 1..5 {
            assert_eq!(
                p.candidates("order", false, now),
                vec!["order-a", "order-b"]
            );
        }
        p.on_beat(beat("order-b", "order", "replica", true), 5);
        p.failed("order-a", 6);
        assert_eq!(p.candidates("order", true, 7), vec!["order-b", "order-a"]);
        // It beats again: trusted again.
        p.on_beat(beat("order-a", "order", "leader", true), 8);
        assert_eq!(p.candidates("order", true, 9)[0], "order-a");
    }
}
