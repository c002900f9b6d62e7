//! The store's RPC on `rpc/store/<store>`: [`StoreRequest`], one variant per
//! request kind. The envelope's `kind` names the variant and its body is the
//! variant's content, so the enum is read straight off an envelope
//! ([`StoreRequest::from_envelope`]) and split back into a kind and a body
//! to send ([`StoreRequest::to_wire`]): the bytes on the bus are the ones the
//! store has always taken (`write` with a [`WriteRequest`], `query` with
//! `{"n": …}`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::receiver::WriteRequest;
use crate::envelope::{Body, Envelope};

/// A request to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum StoreRequest {
    /// A holder's batch under its grant; answered `{duplicate, inserted}`.
    Write(WriteRequest),
    /// The newest rows; answered `{measurements: [...]}`.
    Query(Query),
    /// Any other kind (only ever received): answered with an error.
    #[serde(other)]
    Unknown,
}

/// Body of a `query`: how many of the newest rows. As the store always read
/// it, a body without a count (or with something else than one) asks for 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Query {
    pub n: usize,
}

impl Query {
    pub const DEFAULT_ROWS: usize = 10;
}

impl<'de> Deserialize<'de> for Query {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let body = Value::deserialize(d)?;
        let n = body
            .get("n")
            .and_then(Value::as_u64)
            .map_or(Query::DEFAULT_ROWS, |n| n as usize);
        Ok(Query { n })
    }
}

/// An RPC as the store reads it: the envelope's kind beside its body.
#[derive(Serialize)]
struct Tagged<'a> {
    kind: &'a str,
    body: &'a Body,
}

/// An RPC split back into the envelope's kind and body.
#[derive(Deserialize)]
struct Split {
    kind: String,
    #[serde(default)]
    body: Body,
}

impl StoreRequest {
    /// The request an envelope carries. A kind the store does not know is
    /// [`StoreRequest::Unknown`]; an error means a known kind whose body does
    /// not fit it.
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, serde_json::Error> {
        Self::parse(&envelope.kind, &envelope.body).or_else(|err| {
            // serde takes `Unknown` only with an empty body: whether the kind
            // is known is asked again without the body.
            match Self::parse(&envelope.kind, &Body::default()) {
                Ok(StoreRequest::Unknown) => Ok(StoreRequest::Unknown),
                _ => Err(err),
            }
        })
    }

    fn parse(kind: &str, body: &Body) -> Result<Self, serde_json::Error> {
        serde_json::from_str(&serde_json::to_string(&Tagged { kind, body })?)
    }

    /// The envelope kind and body to send this request with.
    pub fn to_wire(&self) -> (String, Body) {
        let text = serde_json::to_string(self).expect("requests are plain data");
        let split: Split = serde_json::from_str(&text).expect("a request serializes as an object");
        (split.kind, split.body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{grant, keys};
    use super::super::sensor::SensorSim;
    use super::*;
    use crate::envelope::EnvelopeFactory;
    use serde_json::json;

    fn write_request() -> WriteRequest {
        let mut sim = SensorSim::new("s1", 1, (10, 10));
        WriteRequest {
            grant: keys().0.sign(grant("r1", 2, 3, 1_000)),
            readings: (0..3).map(|t| sim.next(t)).collect(),
            proof: "ab".repeat(64),
        }
    }

    #[test]
    fn a_write_goes_on_the_wire_as_it_always_did() {
        let request = write_request();
        let (kind, body) = StoreRequest::Write(request.clone()).to_wire();
        assert_eq!(kind, "write");
        // What the receiver sent before the enum: the struct as the body.
        assert_eq!(body, Body::new(&request));
        let envelope = EnvelopeFactory::new("r1").make(&kind, None, &body);
        assert_eq!(
            StoreRequest::from_envelope(&envelope).unwrap(),
            StoreRequest::Write(request)
        );
    }

    #[test]
    fn queries_read_their_count_leniently_as_before() {
        let factory = EnvelopeFactory::new("app");
        let query =
            |body: Value| StoreRequest::from_envelope(&factory.make("query", None, body)).unwrap();
        assert_eq!(
            query(json!({ "n": 3 })),
            StoreRequest::Query(Query { n: 3 })
        );
        for body in [json!({}), json!({ "n": "lots" }), Value::Null] {
            assert_eq!(query(body), StoreRequest::Query(Query { n: 10 }));
        }
        let (kind, body) = StoreRequest::Query(Query { n: 7 }).to_wire();
        assert_eq!((kind.as_str(), body.as_str()), ("query", r#"{"n":7}"#));
    }

    #[test]
    fn an_unknown_kind_is_told_from_a_malformed_body() {
        let factory = EnvelopeFactory::new("x");
        for body in [json!({ "n": 1 }), Value::Null, json!([1, 2])] {
            let envelope = factory.make("frobnicate", None, body);
            assert_eq!(
                StoreRequest::from_envelope(&envelope).unwrap(),
                StoreRequest::Unknown
            );
        }
        let malformed = factory.make("write", None, json!({ "readings": [] }));
        let err = StoreRequest::from_envelope(&malformed).unwrap_err();
        assert!(err.to_string().contains("grant"), "{err}");
    }
}
