//! What a request fired from the dashboard answered.
//!
//! An [`Outcome`] names the request it answers (one variant per kind of
//! [`crate::link::LinkCommand`]) and carries that request's own reply type or
//! a [`LinkError`]; panels match on it. The title a person reads above the
//! reply is [`Outcome::title`].

use std::fmt;
use std::time::Duration;

use distlab_node::bus::RpcError;
use distlab_node::services::bookstore::load::LoadReport;
use distlab_node::services::iot::keys::KeyError;
use distlab_node::services::iot::sensor::Reading;
use distlab_node::services::lockers::model::LockerError;
use distlab_node::services::lockers::wire::UsersReply;
use distlab_node::services::mom::model::{Kind, MomError};
use distlab_node::services::mom::service::{Reply as MomReply, Request as MomRequest};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::systems::maplog::LogReport;

/// The answer to a request, by the request it answers.
#[derive(Debug)]
pub enum Outcome {
    /// The store's newest `n` readings.
    StoreQuery {
        store: String,
        n: u64,
        result: Result<Vec<Reading>, LinkError>,
    },
    /// A write with a grant signed by a key that is not the coordinator's
    /// (the store should reject it).
    ForgedToken(Result<StoreWrite, LinkError>),
    /// An old grant sent again as its holder (the store should reject it).
    ReplayedToken {
        holder: String,
        epoch: u64,
        seq: u64,
        result: Result<StoreWrite, LinkError>,
    },
    Mom {
        ask: MomAsk,
        result: Result<MomReply, LinkError>,
    },
    /// `GET path` from the bookstore frontend.
    BookstoreGet {
        path: String,
        result: Result<HttpReply, LinkError>,
    },
    /// A load run ended (done or stopped); its final figures.
    LoadFinished(LoadReport),
    /// A users request (add, delete, take, free, look up).
    Users {
        ask: String,
        result: Result<UsersReply, LinkError>,
    },
    /// A lockers rush ended: its figures.
    Rush(RushReport),
    /// A map log run ended: what the facade answered.
    MapLogged(LogReport),
    /// `GET /polls/database` from the facade, for the check of the first
    /// `expected` messages this app logged.
    MapRead {
        expected: usize,
        result: Result<String, LinkError>,
    },
    /// A scenario run ended (its feed has the details).
    Scenario { name: String, passed: bool },
    /// Fault rules sent: how many nodes were told.
    Faults {
        what: String,
        result: Result<usize, LinkError>,
    },
}

/// What a lockers rush did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RushReport {
    pub users: usize,
    pub granted: u64,
    pub none_free: u64,
    pub freed: u64,
    pub failed: u64,
    pub secs: f64,
}

/// Where every bookstore title starts.
const BOOKSTORE: &str = "Bookstore: ";

impl Outcome {
    /// What the person reads, e.g. `store: get_measurements 10`,
    /// `MOM: publish to queue jobs`, `Bookstore: GET /buy?id=1: HTTP 200`.
    pub fn title(&self) -> String {
        match self {
            Outcome::StoreQuery { store, n, .. } => format!("{store}: get_measurements {n}"),
            Outcome::ForgedToken(_) => "Forged token".to_owned(),
            Outcome::ReplayedToken {
                holder, epoch, seq, ..
            } => format!("Replayed token of {holder} (epoch {epoch}, seq {seq})"),
            Outcome::Mom { ask, .. } => ask.to_string(),
            Outcome::BookstoreGet { .. } => {
                format!("{BOOKSTORE}{}", self.http_title().unwrap_or_default())
            }
            Outcome::LoadFinished(_) => format!("{BOOKSTORE}load finished"),
            Outcome::Users { ask, .. } => format!("Lockers: {ask}"),
            Outcome::Rush(r) => format!("Lockers: rush of {} users finished", r.users),
            Outcome::MapLogged(r) => format!("Map: logged {} messages", r.sent),
            Outcome::MapRead { .. } => "Map: read all back".to_owned(),
            Outcome::Faults { what, .. } => format!("Faults: {what}"),
            Outcome::Scenario { name, passed } => {
                format!(
                    "Scenario {name}: {}",
                    if *passed { "passed" } else { "failed" }
                )
            }
        }
    }

    /// For a frontend call, its title without the system's name:
    /// `GET /buy?id=1: HTTP 200`, or `GET /buy?id=1` when no status came back.
    pub fn http_title(&self) -> Option<String> {
        let Outcome::BookstoreGet { path, result } = self else {
            return None;
        };
        let status = match result {
            Ok(reply) => Some(reply.status),
            Err(LinkError::HttpStatus { status, .. }) => Some(*status),
            Err(_) => None,
        };
        Some(match status {
            Some(status) => format!("GET {path}: HTTP {status}"),
            None => format!("GET {path}"),
        })
    }
}

/// The store's answer to an accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreWrite {
    // In the order the JSON is shown (keys sorted, as a `serde_json::Value` has them).
    pub duplicate: bool,
    pub inserted: u64,
}

impl fmt::Display for StoreWrite {
    /// As JSON: `{"duplicate":false,"inserted":3}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string(self).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

/// The store's answer to a query.
#[derive(Debug, Deserialize)]
pub struct Measurements {
    pub measurements: Vec<Reading>,
}

/// A 2xx answer of the bookstore frontend.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpReply {
    pub status: u16,
    /// The body as JSON, or as a JSON string when it is not JSON.
    pub body: Value,
}

impl HttpReply {
    /// Reads a body: JSON when it parses, else its text.
    pub fn body_of(text: String) -> Value {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

/// A MOM request as its outcome names it: what it does and to which
/// channel, never its key or its messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MomAsk {
    CreateUser,
    WhoAmI,
    SetPrivate(Channel, bool),
    Grant(Channel),
    Create(Channel),
    Delete(Channel),
    List,
    Subscribe(Channel),
    Unsubscribe(Channel),
    Publish(Channel),
    PublishBatch(Channel, usize),
    Consume(Channel),
    ConsumeBatch(Channel, u32),
    Ack(u64),
    AckBatch(usize),
}

/// A topic or queue by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

impl From<&MomRequest> for MomAsk {
    fn from(request: &MomRequest) -> Self {
        let channel = |kind: &Kind, name: &String| Channel {
            kind: *kind,
            name: name.clone(),
        };
        match request {
            MomRequest::CreateUser | MomRequest::AddUser { .. } => MomAsk::CreateUser,
            MomRequest::WhoAmI { .. } => MomAsk::WhoAmI,
            MomRequest::SetPrivate {
                kind,
                name,
                private,
                ..
            } => MomAsk::SetPrivate(channel(kind, name), *private),
            MomRequest::Grant { kind, name, .. } => MomAsk::Grant(channel(kind, name)),
            MomRequest::Create { kind, name, .. } => MomAsk::Create(channel(kind, name)),
            MomRequest::Delete { kind, name, .. } => MomAsk::Delete(channel(kind, name)),
            MomRequest::List { .. } => MomAsk::List,
            MomRequest::Subscribe { kind, name, .. } => MomAsk::Subscribe(channel(kind, name)),
            MomRequest::Unsubscribe { kind, name, .. } => MomAsk::Unsubscribe(channel(kind, name)),
            MomRequest::Publish { kind, name, .. } => MomAsk::Publish(channel(kind, name)),
            MomRequest::PublishBatch {
                kind,
                name,
                messages,
                ..
            } => MomAsk::PublishBatch(channel(kind, name), messages.len()),
            MomRequest::Consume { kind, name, .. } => MomAsk::Consume(channel(kind, name)),
            MomRequest::ConsumeBatch {
                kind, name, max, ..
            } => MomAsk::ConsumeBatch(channel(kind, name), *max),
            MomRequest::Ack { id, .. } => MomAsk::Ack(*id),
            MomRequest::AckBatch { ids, .. } => MomAsk::AckBatch(ids.len()),
        }
    }
}

impl fmt::Display for MomAsk {
    /// The outcome's title, e.g. `MOM: publish to queue jobs`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MOM: ")?;
        match self {
            MomAsk::CreateUser => f.write_str("create user"),
            MomAsk::WhoAmI => f.write_str("who am I"),
            MomAsk::SetPrivate(c, true) => write!(f, "make {c} private"),
            MomAsk::SetPrivate(c, false) => write!(f, "make {c} public"),
            MomAsk::Grant(c) => write!(f, "grant access to {c}"),
            MomAsk::Create(c) => write!(f, "create {c}"),
            MomAsk::Delete(c) => write!(f, "delete {c}"),
            MomAsk::List => f.write_str("list"),
            MomAsk::Subscribe(c) => write!(f, "subscribe to {c}"),
            MomAsk::Unsubscribe(c) => write!(f, "unsubscribe from {c}"),
            MomAsk::Publish(c) => write!(f, "publish to {c}"),
            MomAsk::PublishBatch(c, n) => write!(f, "publish {n} messages to {c}"),
            MomAsk::Consume(c) => write!(f, "consume from {c}"),
            MomAsk::ConsumeBatch(c, max) => write!(f, "consume up to {max} from {c}"),
            MomAsk::Ack(id) => write!(f, "ack {id}"),
            MomAsk::AckBatch(n) => write!(f, "ack {n} messages"),
        }
    }
}

/// Why a request got no reply of its kind.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No reply on the bus in time, an error answer, or this node's fault rules.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// No key could be made to sign a forged grant.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The replay speaks as the grant's holder on a connection of its own.
    #[error("cannot reach the broker")]
    NoBroker,
    /// The MOM refused, with the HTTP status its API would answer.
    #[error("{0} ({status})", status = .0.status())]
    Mom(MomError),
    /// The users group refused, with the HTTP status its API would answer.
    #[error("{0} ({status})", status = .0.status())]
    Lockers(LockerError),
    /// A reply that is not of the request's kind.
    #[error("unexpected answer: {0}")]
    Unexpected(#[source] serde_json::Error),
    #[error("no reply from {addr} within {deadline:?}")]
    HttpTimeout {
        addr: std::net::SocketAddr,
        deadline: Duration,
    },
    #[error("cannot reach the frontend at {addr}: {}", causes(.source))]
    HttpUnreachable {
        addr: std::net::SocketAddr,
        source: reqwest::Error,
    },
    /// The frontend answered with a status other than 2xx; shown is its body.
    #[error("{body}")]
    HttpStatus { status: u16, body: Value },
}

/// An error and its causes, `outer: inner: …` (reqwest's own message
/// names only its outermost layer, e.g. "error sending request").
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        // hyper and reqwest sometimes repeat a layer's words.
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(kind: Kind, name: &str) -> Channel {
        Channel {
            kind,
            name: name.into(),
        }
    }

    #[test]
    fn titles_name_the_request() {
        let ok = || {
            Ok(StoreWrite {
                duplicate: false,
                inserted: 3,
            })
        };
        let cases = [
            (
                Outcome::StoreQuery {
                    store: "store".into(),
                    n: 10,
                    result: Ok(Vec::new()),
                },
                "store: get_measurements 10",
            ),
            (Outcome::ForgedToken(ok()), "Forged token"),
            (
                Outcome::ReplayedToken {
                    holder: "receiver-1".into(),
                    epoch: 4,
                    seq: 17,
                    result: Err(LinkError::NoBroker),
                },
                "Replayed token of receiver-1 (epoch 4, seq 17)",
            ),
            (
                Outcome::Mom {
                    ask: MomAsk::CreateUser,
                    result: Ok(MomReply::Key { key: "k".into() }),
                },
                "MOM: create user",
            ),
            (
                Outcome::LoadFinished(LoadReport::default()),
                "Bookstore: load finished",
            ),
        ];
        for (outcome, title) in cases {
            assert_eq!(outcome.title(), title);
            assert_eq!(outcome.http_title(), None);
        }
    }

    #[test]
    fn a_frontend_call_is_titled_with_its_status_when_one_came_back() {
        let get = |result| Outcome::BookstoreGet {
            path: "/buy?id=1".into(),
            result,
        };
        let ok = get(Ok(HttpReply {
            status: 200,
            body: Value::Null,
        }));
        assert_eq!(ok.title(), "Bookstore: GET /buy?id=1: HTTP 200");
        assert_eq!(ok.http_title().as_deref(), Some("GET /buy?id=1: HTTP 200"));
        let refused = get(Err(LinkError::HttpStatus {
            status: 503,
            body: Value::String("no order server".into()),
        }));
        assert_eq!(refused.title(), "Bookstore: GET /buy?id=1: HTTP 503");
        let silent = get(Err(LinkError::HttpTimeout {
            addr: "127.0.0.1:1".parse().unwrap(),
            deadline: Duration::from_secs(12),
        }));
        assert_eq!(silent.title(), "Bookstore: GET /buy?id=1");
    }

    #[test]
    fn mom_titles_leave_out_keys_and_messages() {
        let key = "secret-key".to_owned();
        let cases = [
            (MomRequest::CreateUser, "MOM: create user"),
            (
                MomRequest::Create {
                    kind: Kind::Queue,
                    name: "jobs".into(),
                    key: key.clone(),
                    subscribe: false,
                },
                "MOM: create queue jobs",
            ),
            (
                MomRequest::Delete {
                    kind: Kind::Topic,
                    name: "news".into(),
                    key: key.clone(),
                },
                "MOM: delete topic news",
            ),
            (
                MomRequest::List {
                    kind: None,
                    key: key.clone(),
                    mine: false,
                },
                "MOM: list",
            ),
            (
                MomRequest::Subscribe {
                    kind: Kind::Topic,
                    name: "news".into(),
                    key: key.clone(),
                },
                "MOM: subscribe to topic news",
            ),
            (
                MomRequest::Unsubscribe {
                    kind: Kind::Topic,
                    name: "news".into(),
                    key: key.clone(),
                },
                "MOM: unsubscribe from topic news",
            ),
            (
                MomRequest::Publish {
                    kind: Kind::Queue,
                    name: "jobs".into(),
                    key: key.clone(),
                    message: "hello".into(),
                    as_subscriber: false,
                },
                "MOM: publish to queue jobs",
            ),
            (
                MomRequest::PublishBatch {
                    kind: Kind::Queue,
                    name: "jobs".into(),
                    key: key.clone(),
                    messages: vec!["a".into(), "b".into()],
                },
                "MOM: publish 2 messages to queue jobs",
            ),
            (
                MomRequest::Consume {
                    kind: Kind::Queue,
                    name: "jobs".into(),
                    key: key.clone(),
                    wait_ms: 0,
                },
                "MOM: consume from queue jobs",
            ),
            (
                MomRequest::ConsumeBatch {
                    kind: Kind::Queue,
                    name: "jobs".into(),
                    key: key.clone(),
                    wait_ms: 0,
                    max: 5,
                },
                "MOM: consume up to 5 from queue jobs",
            ),
            (
                MomRequest::Ack {
                    key: key.clone(),
                    id: 9,
                },
                "MOM: ack 9",
            ),
            (
                MomRequest::AckBatch {
                    key: key.clone(),
                    ids: vec![1, 2, 3],
                },
                "MOM: ack 3 messages",
            ),
        ];
        for (request, title) in cases {
            let ask = MomAsk::from(&request);
            assert_eq!(ask.to_string(), title);
            assert!(!format!("{ask:?}").contains(&key), "{ask:?}");
            assert!(!format!("{ask:?}").contains("hello"), "{ask:?}");
        }
        assert_eq!(
            MomAsk::from(&MomRequest::Publish {
                kind: Kind::Queue,
                name: "jobs".into(),
                key,
                message: String::new(),
                as_subscriber: false,
            }),
            MomAsk::Publish(channel(Kind::Queue, "jobs"))
        );
    }

    #[test]
    fn errors_tell_what_happened() {
        let refused = LinkError::Mom(MomError::NotFound("no queue jobs".into()));
        assert_eq!(refused.to_string(), "no queue jobs (404)");
        let timeout = LinkError::HttpTimeout {
            addr: "127.0.0.1:8083".parse().unwrap(),
            deadline: Duration::from_secs(12),
        };
        assert_eq!(
            timeout.to_string(),
            "no reply from 127.0.0.1:8083 within 12s"
        );
        // A non-2xx body is shown as JSON (a text body as a JSON string).
        let status = LinkError::HttpStatus {
            status: 400,
            body: HttpReply::body_of("bad id".into()),
        };
        assert_eq!(status.to_string(), "\"bad id\"");
        let status = LinkError::HttpStatus {
            status: 404,
            body: HttpReply::body_of(r#"{"error": "no book 99"}"#.into()),
        };
        assert_eq!(status.to_string(), r#"{"error":"no book 99"}"#);
        let unexpected = serde_json::from_str::<Measurements>("{}").unwrap_err();
        assert!(
            LinkError::Unexpected(unexpected)
                .to_string()
                .starts_with("unexpected answer: missing field `measurements`")
        );
    }

    #[test]
    fn an_accepted_write_reads_as_the_stores_json() {
        let w: StoreWrite = serde_json::from_str(r#"{"inserted": 3, "duplicate": false}"#).unwrap();
        assert_eq!(w.to_string(), r#"{"duplicate":false,"inserted":3}"#);
        // The same text as the reply's JSON value (keys sorted).
        let v: Value = serde_json::from_str(r#"{"inserted": 3, "duplicate": false}"#).unwrap();
        assert_eq!(w.to_string(), v.to_string());
    }
}
