//! The messages between nodes, as the dashboard sees them on the broker:
//! requests and replies, raft traffic, token grants and passes, heartbeats;
//! with what the receivers' shims did to them (dropped, delayed,
//! duplicated) from the shims' reports. The message-flow diagram draws
//! from this.
//!
//! Above [`SAMPLE_ABOVE`] messages a second it keeps 1 in k (by the
//! envelope id, so a request and its fate are kept together) and says so.

use std::collections::{HashMap, VecDeque};

use distlab_node::envelope::{Envelope, Topics};
use distlab_node::shim::{Fate as ShimFate, ShimReport};

use super::time::TimeBase;

/// Messages kept (the oldest go first).
pub const CAPACITY: usize = 20_000;
/// Above this rate (per second) only a sample is kept.
pub const SAMPLE_ABOVE: u64 = 1_000;
/// Envelope text kept per message, for the inspector.
const JSON_BYTES: usize = 2_048;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Request,
    Reply,
    Raft,
    Grant,
    Heartbeat,
}

/// What happened to a message at its receiver.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fate {
    /// Nothing said otherwise.
    Delivered,
    Dropped,
    Delayed {
        ms: u64,
    },
    Duplicated {
        ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// When sent (the sender's clock), s on the dashboard's time base.
    pub t: f64,
    pub from: String,
    /// The receiving node; `*` for a broadcast (a heartbeat).
    pub to: String,
    pub kind: Kind,
    /// The service (`mom`, `catalog`, `iot`, …).
    pub service: String,
    /// The envelope's kind (`request`, `reply`, `raft`, `grant`, …).
    pub label: String,
    pub id: String,
    pub fate: Fate,
    /// The envelope as JSON (cut at 2 KB).
    pub json: String,
}

pub struct FlowModel {
    time: TimeBase,
    messages: VecDeque<Message>,
    /// Sequence number of `messages[0]`.
    first: u64,
    by_id: HashMap<String, u64>,
    /// Fates reported before their message arrived here.
    early: HashMap<String, Fate>,
    /// Messages seen in the current second, and the second.
    window: (i64, u64),
    /// Keep 1 in this many (1: all).
    pub sample: u64,
    pub seen: u64,
}

impl FlowModel {
    pub fn new(time: TimeBase) -> Self {
        Self {
            time,
            messages: VecDeque::new(),
            first: 0,
            by_id: HashMap::new(),
            early: HashMap::new(),
            window: (i64::MIN, 0),
            sample: 1,
            seen: 0,
        }
    }

    pub fn messages(&self) -> &VecDeque<Message> {
        &self.messages
    }

    /// The messages sent from `from` to `to` seconds (sorted by send time
    /// as they arrive; a late one is placed where it arrived).
    pub fn between(&self, from: f64, to: f64) -> impl Iterator<Item = &Message> {
        let start = self.messages.partition_point(|m| m.t < from);
        self.messages.range(start..).take_while(move |m| m.t <= to)
    }

    /// Takes what it draws; never claims a message (others use them too).
    pub fn observe(&mut self, topics: &Topics, topic: &str, e: &Envelope) {
        let Some(parts) = super::levels(topics, topic) else {
            return;
        };
        let (to, kind, service) = match parts.as_slice() {
            ["rpc", service, instance] => {
                ((*instance).to_owned(), Kind::Request, (*service).to_owned())
            }
            ["reply", node] => ((*node).to_owned(), Kind::Reply, String::new()),
            [service, "raft", node] => ((*node).to_owned(), Kind::Raft, (*service).to_owned()),
            ["iot", "grant"] => {
                #[derive(serde::Deserialize)]
                struct Holder {
                    grant: HolderGrant,
                }
                #[derive(serde::Deserialize)]
                struct HolderGrant {
                    holder: String,
                }
                let Ok(h) = e.body_as::<Holder>() else { return };
                (h.grant.holder, Kind::Grant, "iot".to_owned())
            }
            ["heartbeat", _] => ("*".to_owned(), Kind::Heartbeat, String::new()),
            ["telemetry", _, "shim"] => {
                if let Ok(report) = e.body_as::<ShimReport>() {
                    self.fates(&report);
                }
                return;
            }
            _ => return,
        };
        self.add(e, to, kind, service);
    }

    fn add(&mut self, e: &Envelope, to: String, kind: Kind, service: String) {
        let t = self.time.seconds(e.sent_ms);
        self.seen += 1;
        let second = t.floor() as i64;
        if second != self.window.0 {
            // The rate of the last full second sets the sample for the next.
            let rate = self.window.1;
            self.sample = rate.div_ceil(SAMPLE_ABOVE).max(1);
            self.window = (second, 0);
        }
        self.window.1 += 1;
        if self.sample > 1 && !fnv(&e.id).is_multiple_of(self.sample) {
            return;
        }
        let mut json = String::from_utf8_lossy(&e.to_bytes()).into_owned();
        if json.len() > JSON_BYTES {
            let mut cut = JSON_BYTES;
            while !json.is_char_boundary(cut) {
                cut -= 1;
            }
            json.truncate(cut);
            json.push_str(" …");
        }
        let fate = self.early.remove(&e.id).unwrap_or(Fate::Delivered);
        let seq = self.first + self.messages.len() as u64;
        self.by_id.insert(e.id.clone(), seq);
        self.messages.push_back(Message {
            t,
            from: e.from.clone(),
            to,
            kind,
            service,
            label: e.kind.clone(),
            id: e.id.clone(),
            fate,
            json,
        });
        while self.messages.len() > CAPACITY {
            if let Some(old) = self.messages.pop_front() {
                self.by_id.remove(&old.id);
            }
            self.first += 1;
        }
        if self.early.len() > CAPACITY {
            self.early.clear();
        }
    }

    fn fates(&mut self, report: &ShimReport) {
        for ev in &report.recent {
            let fate = match ev.fate {
                ShimFate::Dropped => Fate::Dropped,
                ShimFate::Delayed { ms } => Fate::Delayed { ms },
                ShimFate::Duplicated { ms } => Fate::Duplicated { ms },
            };
            match self.by_id.get(&ev.id) {
                Some(seq) if *seq >= self.first => {
                    if let Some(m) = self.messages.get_mut((seq - self.first) as usize) {
                        m.fate = fate;
                    }
                }
                _ => {
                    self.early.insert(ev.id.clone(), fate);
                }
            }
        }
    }
}

/// A 64-bit FNV-1a hash: the same message is kept or skipped everywhere.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use distlab_node::envelope::EnvelopeFactory;
    use distlab_node::shim::{ShimEvent, ShimReport};
    use serde_json::json;

    use super::*;

    /// `n` requests a second for `seconds`, `a` → `b`, sent from `start_ms`.
    pub(crate) fn feed(m: &mut FlowModel, n: u64, seconds: u64, start_ms: u64) {
        let topics = Topics::new("lab");
        let f = EnvelopeFactory::new("a");
        for i in 0..n * seconds {
            let mut e = f.make("request", None, json!({"i": i}));
            e.sent_ms = start_ms + i * 1000 / n;
            m.observe(&topics, &topics.rpc("mom", "b"), &e);
        }
    }

    #[test]
    fn requests_replies_raft_and_grants_become_arrows() {
        let topics = Topics::new("lab");
        let mut m = FlowModel::new(TimeBase::at(0));
        let a = EnvelopeFactory::new("frontend");
        let b = EnvelopeFactory::new("catalog-a");
        let req = a.make("request", None, json!({}));
        m.observe(&topics, &topics.rpc("catalog", "catalog-a"), &req);
        let rep = b.make("reply", Some(req.id.clone()), json!({}));
        m.observe(&topics, &topics.reply("frontend"), &rep);
        let raft = b.make("raft", None, json!({}));
        m.observe(&topics, &topics.service("catalog", "raft/catalog-b"), &raft);
        let grant = EnvelopeFactory::new("coordinator").make(
            "grant",
            None,
            json!({"grant": {"holder": "receiver-2"}, "sig": ""}),
        );
        m.observe(&topics, &topics.service("iot", "grant"), &grant);
        let got: Vec<(&str, &str, Kind)> = m
            .messages()
            .iter()
            .map(|x| (x.from.as_str(), x.to.as_str(), x.kind))
            .collect();
        assert_eq!(
            got,
            vec![
                ("frontend", "catalog-a", Kind::Request),
                ("catalog-a", "frontend", Kind::Reply),
                ("catalog-a", "catalog-b", Kind::Raft),
                ("coordinator", "receiver-2", Kind::Grant),
            ]
        );
        assert!(m.messages()[0].json.contains("\"kind\":\"request\""));
    }

    #[test]
    fn the_shims_reports_mark_dropped_and_delayed_messages() {
        let topics = Topics::new("lab");
        let mut m = FlowModel::new(TimeBase::at(0));
        let a = EnvelopeFactory::new("a");
        let one = a.make("request", None, json!({}));
        let two = a.make("request", None, json!({}));
        let three = a.make("request", None, json!({}));
        m.observe(&topics, &topics.rpc("mom", "b"), &one);
        m.observe(&topics, &topics.rpc("mom", "b"), &two);
        let report = ShimReport {
            recent: vec![
                ShimEvent {
                    id: one.id.clone(),
                    from: "a".into(),
                    fate: ShimFate::Dropped,
                },
                ShimEvent {
                    id: two.id.clone(),
                    from: "a".into(),
                    fate: ShimFate::Delayed { ms: 300 },
                },
                ShimEvent {
                    id: three.id.clone(),
                    from: "a".into(),
                    fate: ShimFate::Dropped,
                },
            ],
            ..Default::default()
        };
        let e = EnvelopeFactory::new("b").make("telemetry", None, &report);
        m.observe(&topics, &topics.telemetry("b", "shim"), &e);
        // Its fate came first: applied when it arrives.
        m.observe(&topics, &topics.rpc("mom", "b"), &three);
        let fates: Vec<Fate> = m.messages().iter().map(|x| x.fate).collect();
        assert_eq!(
            fates,
            vec![Fate::Dropped, Fate::Delayed { ms: 300 }, Fate::Dropped]
        );
    }

    #[test]
    fn above_a_thousand_a_second_it_samples_and_keeps_a_bounded_number() {
        let mut m = FlowModel::new(TimeBase::at(0));
        feed(&mut m, 10_000, 3, 0);
        assert_eq!(m.seen, 30_000);
        assert_eq!(m.sample, 10, "1 in 10 of 10,000/s");
        // The first second is kept whole (no rate known yet), then a tenth.
        let kept = m.messages().len();
        assert!(
            (10_000 + 1_000..=10_000 + 3_000).contains(&kept),
            "{kept} kept"
        );
        let mut m = FlowModel::new(TimeBase::at(0));
        feed(&mut m, 500, 60, 0);
        assert_eq!(m.sample, 1);
        assert_eq!(m.messages().len(), CAPACITY, "capped");
        let in_view = m.between(59.0, 60.0).count();
        assert!((450..=550).contains(&in_view), "{in_view}");
    }
}
