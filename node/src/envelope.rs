//! The one message format on the bus, and the topic names.
//!
//! Every payload is a JSON [`Envelope`], so any MQTT tool can read the traffic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

/// Milliseconds since the Unix epoch (wall clock; only for display and logs).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per sender: `<from>/<boot>/<seq>`.
    pub id: String,
    /// Node (or client) that sent it.
    pub from: String,
    /// What the body is: `presence`, `heartbeat`, `echo`, `reply`, `error`, …
    pub kind: String,
    /// For replies: the id of the request answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corr: Option<String>,
    /// Sender's wall clock when sent, in ms since the Unix epoch.
    pub sent_ms: u64,
    #[serde(default)]
    pub body: Body,
}

/// An envelope's body: JSON kept as text until a receiver asks for it as a
/// type, so a message is parsed once, straight into that type (no
/// intermediate tree; this matters for batches of readings).
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Body(Box<RawValue>);

impl Body {
    /// Serializes `value` into a body.
    pub fn new<T: Serialize + ?Sized>(value: &T) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("bodies are plain data"))
    }

    /// The body's JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The body as a JSON tree (for generic tools: printing, inspection).
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.as_str()).unwrap_or(Value::Null)
    }

    /// The body as a typed value.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.as_str())
    }
}

impl Default for Body {
    fn default() -> Self {
        Self(RawValue::from_string("null".to_owned()).expect("null is JSON"))
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Value> for Body {
    fn from(value: Value) -> Self {
        Self::new(&value)
    }
}

impl Envelope {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an envelope always serializes")
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The body as a typed value.
    pub fn body_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        self.body.parse()
    }
}

/// Makes envelopes with unique ids for one sender.
#[derive(Debug)]
pub struct EnvelopeFactory {
    from: String,
    boot: String,
    seq: AtomicU64,
}

impl EnvelopeFactory {
    pub fn new(from: &str) -> Self {
        Self {
            from: from.to_owned(),
            boot: format!("{:x}{:x}", now_ms(), std::process::id()),
            seq: AtomicU64::new(0),
        }
    }

    pub fn from(&self) -> &str {
        &self.from
    }

    pub fn make<B: Serialize>(&self, kind: &str, corr: Option<String>, body: B) -> Envelope {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        Envelope {
            id: format!("{}/{}/{}", self.from, self.boot, seq),
            from: self.from.clone(),
            kind: kind.to_owned(),
            corr,
            sent_ms: now_ms(),
            body: Body::new(&body),
        }
    }
}

/// Topic names of one cluster: everything lives under `distlab/<cluster>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(cluster: &str) -> Self {
        Self {
            prefix: format!("distlab/{cluster}"),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Retained presence of a node; its MQTT last will marks it down.
    pub fn presence(&self, node: &str) -> String {
        format!("{}/presence/{node}", self.prefix)
    }

    pub fn presence_all(&self) -> String {
        format!("{}/presence/+", self.prefix)
    }

    /// Periodic liveness beat of a node.
    pub fn heartbeat(&self, node: &str) -> String {
        format!("{}/heartbeat/{node}", self.prefix)
    }

    pub fn heartbeat_all(&self) -> String {
        format!("{}/heartbeat/+", self.prefix)
    }

    /// Periodic state snapshot of one service of a node.
    pub fn telemetry(&self, node: &str, service: &str) -> String {
        format!("{}/telemetry/{node}/{service}", self.prefix)
    }

    /// Requests to one instance of a service.
    pub fn rpc(&self, service: &str, instance: &str) -> String {
        format!("{}/rpc/{service}/{instance}", self.prefix)
    }

    /// Replies to requests a node made.
    pub fn reply(&self, node: &str) -> String {
        format!("{}/reply/{node}", self.prefix)
    }

    /// A service's own topics: `<service>/<name>` (e.g. `catalog/primary`).
    pub fn service(&self, service: &str, name: &str) -> String {
        format!("{}/{service}/{name}", self.prefix)
    }

    /// Fault rules for a node's bus shim.
    pub fn control(&self, node: &str) -> String {
        format!("{}/control/{node}", self.prefix)
    }

    /// Whether a topic is a control topic (never subject to fault rules).
    pub fn is_control(&self, topic: &str) -> bool {
        topic
            .strip_prefix(self.prefix.as_str())
            .is_some_and(|rest| rest.starts_with("/control/"))
    }

    /// The filter part of a subscription (`$share/<group>/` removed).
    pub fn match_filter(filter: &str) -> &str {
        filter
            .strip_prefix("$share/")
            .and_then(|rest| rest.split_once('/'))
            .map_or(filter, |(_, f)| f)
    }

    /// The last level of a topic (the node id for presence and heartbeat topics).
    pub fn last_level(topic: &str) -> &str {
        topic.rsplit('/').next().unwrap_or(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_as_json() {
        let f = EnvelopeFactory::new("n1");
        let e = f.make("echo", None, serde_json::json!({"x": 1}));
        let back = Envelope::from_bytes(&e.to_bytes()).unwrap();
        assert_eq!(e, back);
        let text = String::from_utf8(e.to_bytes()).unwrap();
        assert!(!text.contains("corr"), "absent corr is not written: {text}");
    }

    #[test]
    fn ids_are_unique_per_sender() {
        let f = EnvelopeFactory::new("n1");
        let a = f.make("k", None, Value::Null);
        let b = f.make("k", None, Value::Null);
        assert_ne!(a.id, b.id);
        assert!(a.id.starts_with("n1/"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [&b""[..], b"{", b"null", b"{\"id\":1}", &[0xff, 0xfe]] {
            assert!(Envelope::from_bytes(bytes).is_err());
        }
    }

    #[test]
    fn topics_have_the_cluster_prefix() {
        let t = Topics::new("lab");
        assert_eq!(t.presence("a"), "distlab/lab/presence/a");
        assert_eq!(t.rpc("echo", "a"), "distlab/lab/rpc/echo/a");
        assert_eq!(Topics::last_level(&t.heartbeat("n-1")), "n-1");
        assert!(rumqttc::matches(&t.presence("a"), &t.presence_all()));
        assert!(t.is_control(&t.control("a")));
        assert_eq!(t.service("mom", "http/a"), "distlab/lab/mom/http/a");
        assert_eq!(Topics::match_filter("a/+"), "a/+");
        assert!(!t.is_control(&t.rpc("control", "a")));
    }
}
