//! What the dashboard knows of the bookstore, from the bus: each catalog and
//! order server's latest beat, the frontend's figures with short histories
//! (requests/s and latency per operation, cache hit ratio), where the
//! frontend serves, and the live checks computed from the beats.
//!
//! Times are seconds of the app's [`TimeBase`] (from the envelopes'
//! `sent_ms`); the checks take `now` on the same base, so they are plain
//! functions of their inputs.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use distlab_node::envelope::{Envelope, Topics};
use distlab_node::services::bookstore::frontend::{FrontendHttp, FrontendStats, OpFigures};
use distlab_node::services::bookstore::load::{LoadReport, Progress};
use distlab_node::services::bookstore::wire::Beat;
use tokio_util::sync::CancellationToken;

use super::time::{STALE_S, TimeBase};

/// History kept for the plots, seconds (10 min at 2 Hz: 1,200 points).
pub const HISTORY_S: f64 = 600.0;

/// Replicas (and the two primaries) may differ while their logs move: the
/// beat's digest and books are read at most every 500 ms, its applied index every
/// beat. A difference counts only once nothing changed for this long.
pub const SETTLE_S: f64 = 2.0;

/// The frontend's operations, in plot order.
pub const OPS: [&str; 3] = ["search", "lookup", "buy"];

/// A catalog or order server's latest beat.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// When it was sent.
    pub at: f64,
    pub beat: Beat,
    /// When its applied index, digest or books last changed (or it was first seen).
    pub changed_at: f64,
}

impl Seen {
    pub fn fresh(&self, now: f64) -> bool {
        now - self.at <= STALE_S
    }

    /// Nothing moved for [`SETTLE_S`]: its digest and books are of its applied index.
    pub fn settled(&self, now: f64) -> bool {
        now - self.changed_at >= SETTLE_S
    }
}

/// One operation at one report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpSample {
    pub t: f64,
    pub per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// A frontend's latest report and its recent history.
#[derive(Debug, Clone, Default)]
pub struct FrontendView {
    pub at: f64,
    pub stats: FrontendStats,
    /// Per operation, in [`OPS`] order.
    pub ops: [VecDeque<OpSample>; 3],
    /// (t, hit ratio 0..1)
    pub hit_ratio: VecDeque<(f64, f64)>,
}

impl FrontendView {
    fn record(&mut self, t: f64, stats: FrontendStats) {
        if self.ops[0].back().is_none_or(|s| t > s.t) {
            let figures: [&OpFigures; 3] = [&stats.search, &stats.lookup, &stats.buy];
            for (series, f) in self.ops.iter_mut().zip(figures) {
                series.push_back(OpSample {
                    t,
                    per_sec: f.per_sec,
                    p50_ms: f.p50_ms,
                    p99_ms: f.p99_ms,
                });
                while series.front().is_some_and(|s| t - s.t > HISTORY_S) {
                    series.pop_front();
                }
            }
            self.hit_ratio.push_back((t, stats.cache_hit_ratio));
            while self
                .hit_ratio
                .front()
                .is_some_and(|(t0, _)| t - t0 > HISTORY_S)
            {
                self.hit_ratio.pop_front();
            }
        }
        self.at = t;
        self.stats = stats;
    }
}

#[derive(Debug)]
pub struct BookstoreModel {
    /// Latest beat per catalog/order node.
    pub beats: BTreeMap<String, Seen>,
    /// Per frontend node.
    pub frontends: BTreeMap<String, FrontendView>,
    /// Where each frontend serves HTTP (the retained `bookstore/http/<node>`).
    pub http: BTreeMap<String, SocketAddr>,
    time: TimeBase,
}

impl BookstoreModel {
    pub fn new(time: TimeBase) -> Self {
        Self {
            beats: BTreeMap::new(),
            frontends: BTreeMap::new(),
            http: BTreeMap::new(),
            time,
        }
    }

    /// Feeds one bus message; returns whether it was the bookstore's.
    pub fn observe(&mut self, topics: &Topics, topic: &str, e: &Envelope) -> bool {
        let Some(parts) = super::levels(topics, topic) else {
            return false;
        };
        match parts.as_slice() {
            ["telemetry", node, "frontend"] => {
                let Ok(stats) = e.body_as::<FrontendStats>() else {
                    return false;
                };
                let t = self.time.seconds(e.sent_ms);
                if let Some(http) = stats.http {
                    self.http.insert((*node).to_owned(), http);
                }
                self.frontends
                    .entry((*node).to_owned())
                    .or_default()
                    .record(t, stats);
                true
            }
            ["bookstore", "beat", node] => {
                let Ok(beat) = e.body_as::<Beat>() else {
                    return false;
                };
                let t = self.time.seconds(e.sent_ms);
                let changed_at = match self.beats.get(*node) {
                    Some(old) if t < old.at => return true, // out of order
                    Some(old)
                        if old.beat.applied == beat.applied
                            && old.beat.digest == beat.digest
                            && old.beat.books == beat.books =>
                    {
                        old.changed_at
                    }
                    _ => t,
                };
                self.beats.insert(
                    (*node).to_owned(),
                    Seen {
                        at: t,
                        beat,
                        changed_at,
                    },
                );
                true
            }
            ["bookstore", "http", node] => {
                let Ok(h) = e.body_as::<FrontendHttp>() else {
                    return false;
                };
                self.http.insert((*node).to_owned(), h.addr);
                true
            }
            _ => false,
        }
    }

    /// The frontend to show: the one heard from last.
    pub fn frontend(&self) -> Option<(&str, &FrontendView)> {
        self.frontends
            .iter()
            .max_by(|a, b| a.1.at.total_cmp(&b.1.at))
            .map(|(n, v)| (n.as_str(), v))
    }

    /// Where to send HTTP requests: the shown frontend's address, else any
    /// announced one.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.frontend()
            .and_then(|(n, _)| self.http.get(n))
            .or_else(|| self.http.values().next())
            .copied()
    }

    /// The books as the catalog leader (else any catalog node) last said.
    pub fn books(&self, now: f64) -> Vec<distlab_node::services::bookstore::model::Book> {
        leader(&self.beats, "catalog", now)
            .or_else(|| {
                self.beats
                    .values()
                    .filter(|s| s.beat.service == "catalog" && !s.beat.books.is_empty())
                    .max_by(|a, b| a.at.total_cmp(&b.at))
            })
            .map(|s| s.beat.books.clone())
            .unwrap_or_default()
    }

    /// Every live check, in display order.
    pub fn checks(&self, now: f64) -> Vec<Check> {
        vec![
            stock_never_negative(&self.beats, now),
            ledger_balanced(&self.beats, now),
            replicas_agree(&self.beats, now),
            every_order_has_its_sale(&self.beats, now),
        ]
    }
}

/// The fresh node of `service` saying it leads, newest term first.
pub fn leader<'a>(beats: &'a BTreeMap<String, Seen>, service: &str, now: f64) -> Option<&'a Seen> {
    beats
        .values()
        .filter(|s| s.fresh(now) && s.beat.service == service && s.beat.state == "leader")
        .max_by_key(|s| s.beat.term)
}

/// How a check stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Not yet comparable: logs still moving.
    Settling,
    Fail,
    /// Nothing to check yet (no beats, no leader).
    Waiting,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

impl Check {
    fn new(name: &'static str, verdict: Verdict, detail: impl Into<String>) -> Self {
        Self {
            name,
            verdict,
            detail: detail.into(),
        }
    }
}

/// Fresh catalog beats that carry a ledger.
fn catalogs(beats: &BTreeMap<String, Seen>, now: f64) -> Vec<&Seen> {
    beats
        .values()
        .filter(|s| s.fresh(now) && s.beat.service == "catalog" && !s.beat.ledger.is_empty())
        .collect()
}

/// Stock never negative: a count is unsigned, so ask the ledger whether
/// more were sold than ever arrived.
pub fn stock_never_negative(beats: &BTreeMap<String, Seen>, now: f64) -> Check {
    const NAME: &str = "Stock never negative";
    let nodes = catalogs(beats, now);
    if nodes.is_empty() {
        return Check::new(NAME, Verdict::Waiting, "no catalog beat yet");
    }
    for s in &nodes {
        for l in &s.beat.ledger {
            let arrived = u64::from(l.initial) + l.restocked;
            if l.sold > arrived {
                return Check::new(
                    NAME,
                    Verdict::Fail,
                    format!(
                        "{}: book {} sold {} of {} copies",
                        s.beat.node, l.book, l.sold, arrived
                    ),
                );
            }
        }
    }
    let lowest = nodes
        .iter()
        .flat_map(|s| s.beat.ledger.iter().map(|l| l.count))
        .min()
        .unwrap_or(0);
    Check::new(
        NAME,
        Verdict::Pass,
        format!("lowest stock {lowest} on {} catalog node(s)", nodes.len()),
    )
}

/// initial + restocked = sold + count, per book, on every catalog node.
pub fn ledger_balanced(beats: &BTreeMap<String, Seen>, now: f64) -> Check {
    const NAME: &str = "Ledger balanced";
    let nodes = catalogs(beats, now);
    if nodes.is_empty() {
        return Check::new(NAME, Verdict::Waiting, "no catalog beat yet");
    }
    for s in &nodes {
        if let Some(l) = s.beat.ledger.iter().find(|l| !l.balanced()) {
            return Check::new(
                NAME,
                Verdict::Fail,
                format!(
                    "{}: book {}: {} initial + {} restocked is not {} sold + {} in stock",
                    s.beat.node, l.book, l.initial, l.restocked, l.sold, l.count
                ),
            );
        }
    }
    let books = nodes.iter().map(|s| s.beat.ledger.len()).max().unwrap_or(0);
    Check::new(
        NAME,
        Verdict::Pass,
        format!("{books} books on {} catalog node(s)", nodes.len()),
    )
}

/// Per service, fresh nodes at the same applied index hold the same orders (digest)
/// and, for the catalog, the same books.
pub fn replicas_agree(beats: &BTreeMap<String, Seen>, now: f64) -> Check {
    const NAME: &str = "Replicas agree";
    let fresh: Vec<&Seen> = beats.values().filter(|s| s.fresh(now)).collect();
    let mut compared = 0;
    let mut settling = None;
    for (i, a) in fresh.iter().enumerate() {
        for b in &fresh[i + 1..] {
            let (x, y) = (&a.beat, &b.beat);
            if x.service != y.service || x.applied != y.applied {
                continue;
            }
            let same = x.digest == y.digest && (x.service != "catalog" || x.books == y.books);
            if same {
                compared += 1;
            } else if a.settled(now) && b.settled(now) {
                let what = if x.digest != y.digest {
                    format!(
                        "{} orders vs {} (digest {:x} vs {:x})",
                        x.digest.orders, y.digest.orders, x.digest.sum, y.digest.sum
                    )
                } else {
                    "different books".to_owned()
                };
                return Check::new(
                    NAME,
                    Verdict::Fail,
                    format!(
                        "{} and {} at applied index {}: {what}",
                        x.node, y.node, x.applied
                    ),
                );
            } else {
                settling = Some(format!(
                    "{} and {} at applied index {}",
                    x.node, y.node, x.applied
                ));
            }
        }
    }
    match settling {
        Some(pair) => Check::new(NAME, Verdict::Settling, format!("{pair}: logs moving")),
        None if compared > 0 => Check::new(
            NAME,
            Verdict::Pass,
            format!("{compared} pair(s) at the same applied index agree"),
        ),
        None if fresh.len() < 2 => Check::new(NAME, Verdict::Waiting, "fewer than two replicas"),
        // Idle at different positions: a replica is behind (see the table).
        None if fresh.iter().all(|s| s.settled(now)) => Check::new(
            NAME,
            Verdict::Waiting,
            "no two replicas of a service at the same applied index",
        ),
        None => Check::new(
            NAME,
            Verdict::Settling,
            "no two replicas of a service at the same applied index yet",
        ),
    }
}

/// The order leader's orders are the catalog leader's sales: equal
/// digests once both are idle; while either moves, "settling".
pub fn every_order_has_its_sale(beats: &BTreeMap<String, Seen>, now: f64) -> Check {
    const NAME: &str = "Every order has its sale";
    let (Some(o), Some(c)) = (leader(beats, "order", now), leader(beats, "catalog", now)) else {
        return Check::new(NAME, Verdict::Waiting, "no order and catalog primaries yet");
    };
    let (od, cd) = (o.beat.digest, c.beat.digest);
    if od == cd {
        return Check::new(
            NAME,
            Verdict::Pass,
            format!("{} orders = {} sales", od.orders, cd.orders),
        );
    }
    let detail = format!(
        "{} orders on {}, {} sales on {}",
        od.orders, o.beat.node, cd.orders, c.beat.node
    );
    if o.settled(now) && c.settled(now) {
        Check::new(NAME, Verdict::Fail, detail)
    } else {
        Check::new(NAME, Verdict::Settling, detail)
    }
}

/// A load run started from the dashboard (runtime state, never saved): the
/// clients run on the link's runtime and record into `progress`; the panel
/// shows its snapshots and cancels `stop`.
#[derive(Default)]
pub struct LoadRun {
    progress: Progress,
    stop: Option<CancellationToken>,
}

/// What the panel needs of a load run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadView {
    /// Started and not finished (or about to start).
    pub active: bool,
    /// The figures of the current or last run; `None` before the first.
    pub report: Option<LoadReport>,
}

impl LoadRun {
    /// A fresh run's handles (an earlier run is stopped); the caller hands
    /// them to the link with the options.
    pub fn start(&mut self) -> (Progress, CancellationToken) {
        if let Some(old) = self.stop.take() {
            old.cancel();
        }
        self.progress = Progress::default();
        let stop = CancellationToken::new();
        self.stop = Some(stop.clone());
        (self.progress.clone(), stop)
    }

    pub fn stop(&mut self) {
        if let Some(s) = &self.stop {
            s.cancel();
        }
    }

    pub fn view(&self) -> LoadView {
        let Some(stop) = &self.stop else {
            return LoadView::default();
        };
        let report = self.progress.snapshot();
        // A fresh `Progress` reports no clients until the run starts.
        let starting = report.clients == 0 && !stop.is_cancelled();
        LoadView {
            active: report.running || starting,
            report: Some(report),
        }
    }
}

impl Drop for LoadRun {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use distlab_node::envelope::EnvelopeFactory;
    use distlab_node::services::bookstore::model::{Book, CatalogFile, Digest, Ledger};
    use distlab_node::services::bookstore::wire::PeerView;

    pub fn catalog_beat(node: &str, state: &str, lsn: u64, sold: u64) -> Beat {
        let books: Vec<Book> = CatalogFile::built_in()
            .initial_books()
            .into_iter()
            .map(|mut b| {
                if b.id == 1 {
                    b.count -= sold as u32;
                }
                b
            })
            .collect();
        let ledger = books
            .iter()
            .map(|b| Ledger {
                book: b.id,
                initial: 100,
                restocked: 0,
                sold: if b.id == 1 { sold } else { 0 },
                count: b.count,
            })
            .collect();
        Beat {
            node: node.into(),
            service: "catalog".into(),
            state: state.into(),
            serving: true,
            leader: Some("catalog-a".into()),
            term: 1,
            commit: lsn,
            applied: lsn,
            digest: Digest {
                orders: sold,
                sum: sold * 7,
            },
            books,
            ledger,
            requests: 10,
            failed: 0,
        }
    }

    pub fn order_beat(node: &str, state: &str, lsn: u64, orders: u64) -> Beat {
        Beat {
            node: node.into(),
            service: "order".into(),
            state: state.into(),
            serving: true,
            leader: Some("order-a".into()),
            term: 1,
            commit: lsn,
            applied: lsn,
            digest: Digest {
                orders,
                sum: orders * 7,
            },
            requests: 5,
            failed: 1,
            ..Default::default()
        }
    }

    pub fn frontend_stats(per_sec: f64) -> FrontendStats {
        let op = |k: f64| OpFigures {
            ok: 10,
            failed: 0,
            per_sec: per_sec * k,
            p50_ms: 1.5 * k,
            p99_ms: 4.0 * k,
        };
        FrontendStats {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8083))),
            search: op(1.0),
            lookup: op(2.0),
            buy: op(3.0),
            cache_hit_ratio: 0.75,
            cache_entries: 9,
            cache_enabled: true,
            replicas: vec![PeerView {
                node: "catalog-a".into(),
                service: "catalog".into(),
                age_ms: 120,
                alive: true,
                serving: true,
                primary: true,
            }],
        }
    }

    /// Feeds `beat` as sent at `ms`.
    pub fn feed_beat(m: &mut BookstoreModel, ms: u64, beat: &Beat) -> bool {
        let topics = Topics::new("lab");
        let mut e = EnvelopeFactory::new(&beat.node).make("beat", None, beat);
        e.sent_ms = ms;
        m.observe(
            &topics,
            &topics.service("bookstore", &format!("beat/{}", beat.node)),
            &e,
        )
    }

    pub fn feed_frontend(m: &mut BookstoreModel, ms: u64, stats: &FrontendStats) -> bool {
        let topics = Topics::new("lab");
        let mut e = EnvelopeFactory::new("frontend").make("telemetry", None, stats);
        e.sent_ms = ms;
        m.observe(&topics, &topics.telemetry("frontend", "frontend"), &e)
    }

    /// Four servers, idle for 3 s, agreeing: 5 orders, 5 sales.
    pub fn healthy() -> BookstoreModel {
        let mut m = BookstoreModel::new(TimeBase::at(0));
        for ms in (0..=3000).step_by(250) {
            feed_beat(&mut m, ms, &catalog_beat("catalog-a", "leader", 5, 5));
            feed_beat(&mut m, ms, &catalog_beat("catalog-b", "follower", 5, 5));
            feed_beat(&mut m, ms, &order_beat("order-a", "leader", 5, 5));
            feed_beat(&mut m, ms, &order_beat("order-b", "follower", 5, 5));
            if ms % 500 == 0 {
                feed_frontend(&mut m, ms, &frontend_stats(ms as f64 / 100.0));
            }
        }
        m
    }

    fn verdicts(m: &BookstoreModel, now: f64) -> Vec<Verdict> {
        m.checks(now).iter().map(|c| c.verdict).collect()
    }

    #[test]
    fn beats_frontend_figures_and_addresses_are_kept() {
        let m = healthy();
        assert_eq!(m.beats.len(), 4);
        assert_eq!(m.beats["order-b"].beat.applied, 5);
        assert_eq!(m.beats["order-b"].at, 3.0);
        assert_eq!(m.beats["order-b"].changed_at, 0.0, "nothing moved");
        let (node, f) = m.frontend().unwrap();
        assert_eq!(node, "frontend");
        assert_eq!(f.ops[2].len(), 7);
        let last = f.ops[2].back().unwrap();
        assert_eq!((last.t, last.per_sec, last.p99_ms), (3.0, 90.0, 12.0));
        assert_eq!(f.hit_ratio.back(), Some(&(3.0, 0.75)));
        assert_eq!(m.addr(), Some(SocketAddr::from(([127, 0, 0, 1], 8083))));
        assert_eq!(m.books(3.0).len(), 7);
        assert_eq!(m.books(3.0)[0].count, 95);

        // The retained address counts too; other topics are not ours.
        let topics = Topics::new("lab");
        let f = EnvelopeFactory::new("frontend");
        let mut m = BookstoreModel::new(TimeBase::at(0));
        let http = FrontendHttp {
            node: "frontend".into(),
            addr: "127.0.0.1:9999".parse().unwrap(),
        };
        assert!(m.observe(
            &topics,
            &topics.service("bookstore", "http/frontend"),
            &f.make("bookstore-http", None, &http)
        ));
        assert_eq!(m.addr(), Some(SocketAddr::from(([127, 0, 0, 1], 9999))));
        assert!(!m.observe(
            &topics,
            &topics.telemetry("mom-a", "mom"),
            &f.make("t", None, 1)
        ));
        assert!(!m.observe(
            &topics,
            &topics.service("bookstore", "beat/x"),
            &f.make("beat", None, "not a beat")
        ));
    }

    #[test]
    fn history_is_bounded_to_ten_minutes() {
        let mut m = BookstoreModel::new(TimeBase::at(0));
        for i in 0..2000u64 {
            feed_frontend(&mut m, i * 500, &frontend_stats(1.0));
        }
        let (_, f) = m.frontend().unwrap();
        let span = f.ops[0].back().unwrap().t - f.ops[0].front().unwrap().t;
        assert!(span <= HISTORY_S && span > HISTORY_S - 1.0, "{span}");
        assert!(f.ops[0].len() <= 1201);
        assert_eq!(f.hit_ratio.len(), f.ops[0].len());
    }

    #[test]
    fn a_healthy_idle_store_passes_every_check() {
        let m = healthy();
        assert_eq!(
            verdicts(&m, 3.1),
            vec![Verdict::Pass; 4],
            "{:?}",
            m.checks(3.1)
        );
    }

    #[test]
    fn nothing_heard_means_waiting() {
        let m = BookstoreModel::new(TimeBase::at(0));
        assert_eq!(verdicts(&m, 0.0), vec![Verdict::Waiting; 4]);
        // Silent beats are ignored: the same as nothing.
        let m = healthy();
        assert_eq!(verdicts(&m, 60.0), vec![Verdict::Waiting; 4]);
    }

    #[test]
    fn an_unbalanced_or_oversold_ledger_fails() {
        let mut m = healthy();
        let mut bad = catalog_beat("catalog-b", "follower", 5, 5);
        bad.ledger[3].count += 1;
        feed_beat(&mut m, 3250, &bad);
        let checks = m.checks(3.3);
        assert_eq!(checks[0].verdict, Verdict::Pass);
        assert_eq!(checks[1].verdict, Verdict::Fail);
        assert!(checks[1].detail.contains("catalog-b: book 4"), "{checks:?}");

        let mut oversold = catalog_beat("catalog-b", "follower", 5, 5);
        oversold.ledger[0].sold = 101;
        feed_beat(&mut m, 3500, &oversold);
        let checks = m.checks(3.6);
        assert_eq!(checks[0].verdict, Verdict::Fail);
        assert!(checks[0].detail.contains("sold 101 of 100"), "{checks:?}");
    }

    #[test]
    fn replicas_at_the_same_lsn_must_agree_once_settled() {
        let mut m = healthy();
        // order-b at the same applied index with another digest: at once, it may be
        // the beat's older snapshot.
        let mut other = order_beat("order-b", "follower", 5, 5);
        other.digest.sum += 1;
        feed_beat(&mut m, 3250, &other);
        assert_eq!(replicas_agree(&m.beats, 3.3).verdict, Verdict::Settling);
        // Two seconds on, nothing moved: a real disagreement.
        for ms in (3500..=5500).step_by(250) {
            feed_beat(&mut m, ms, &other);
            feed_beat(&mut m, ms, &order_beat("order-a", "leader", 5, 5));
            feed_beat(&mut m, ms, &catalog_beat("catalog-a", "leader", 5, 5));
            feed_beat(&mut m, ms, &catalog_beat("catalog-b", "follower", 5, 5));
        }
        let c = replicas_agree(&m.beats, 5.5);
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(
            c.detail.contains("order-a and order-b at applied index 5"),
            "{c:?}"
        );

        // Catalog replicas with different books fail too.
        let mut m = healthy();
        let mut books = catalog_beat("catalog-b", "follower", 5, 5);
        books.books[6].cost = 99;
        for ms in (3250..=5500).step_by(250) {
            feed_beat(&mut m, ms, &books);
            feed_beat(&mut m, ms, &catalog_beat("catalog-a", "leader", 5, 5));
        }
        let c = replicas_agree(&m.beats, 5.5);
        assert_eq!(c.verdict, Verdict::Fail, "{c:?}");
        assert!(c.detail.contains("different books"), "{c:?}");
    }

    #[test]
    fn replicas_at_different_lsns_are_not_compared() {
        let mut m = healthy();
        feed_beat(&mut m, 3250, &order_beat("order-a", "leader", 9, 9));
        feed_beat(&mut m, 3250, &catalog_beat("catalog-a", "leader", 9, 9));
        let c = replicas_agree(&m.beats, 3.3);
        assert_eq!(c.verdict, Verdict::Settling, "{c:?}");
    }

    #[test]
    fn orders_and_sales_settle_under_load_and_fail_when_idle() {
        let mut m = healthy();
        // Load: the order leader is ahead of the catalog for a moment.
        feed_beat(&mut m, 3250, &order_beat("order-a", "leader", 6, 6));
        let c = every_order_has_its_sale(&m.beats, 3.3);
        assert_eq!(c.verdict, Verdict::Settling, "{c:?}");
        assert!(
            c.detail
                .contains("6 orders on order-a, 5 sales on catalog-a")
        );
        // The catalog catches up: equal again.
        feed_beat(&mut m, 3500, &catalog_beat("catalog-a", "leader", 6, 6));
        assert_eq!(
            every_order_has_its_sale(&m.beats, 3.6).verdict,
            Verdict::Pass
        );
        // An order without its sale that stays so: fails after 2 s.
        for ms in (3750..=6000).step_by(250) {
            feed_beat(&mut m, ms, &order_beat("order-a", "leader", 7, 7));
            feed_beat(&mut m, ms, &catalog_beat("catalog-a", "leader", 6, 6));
        }
        assert_eq!(
            every_order_has_its_sale(&m.beats, 5.7).verdict,
            Verdict::Settling
        );
        assert_eq!(
            every_order_has_its_sale(&m.beats, 6.0).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn the_leader_with_the_newest_term_is_compared() {
        let mut m = healthy();
        let mut takeover = order_beat("order-b", "leader", 5, 5);
        takeover.term = 2;
        feed_beat(&mut m, 3250, &takeover);
        assert_eq!(
            leader(&m.beats, "order", 3.3).map(|s| s.beat.node.as_str()),
            Some("order-b")
        );
        // order-a falls silent: order-b still leads.
        assert_eq!(
            leader(&m.beats, "order", 5.1).map(|s| s.beat.node.as_str()),
            Some("order-b")
        );
    }

    #[test]
    fn a_load_run_is_active_until_stopped() {
        let mut run = LoadRun::default();
        assert_eq!(run.view(), LoadView::default());
        let (_progress, stop) = run.start();
        assert!(run.view().active, "starting counts as active");
        run.stop();
        assert!(stop.is_cancelled());
        assert!(!run.view().active);
        // A new run cancels nothing of its own and forgets the old figures.
        let (_, again) = run.start();
        assert!(!again.is_cancelled() && run.view().active);
        drop(run);
        assert!(again.is_cancelled(), "dropping the app stops its load");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            distlab_node::http1::query_value("graduate school"),
            "graduate%20school"
        );
        assert_eq!(distlab_node::http1::query_value("a&b=c"), "a%26b%3Dc");
    }
}
