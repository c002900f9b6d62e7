//! The store's RPC on `rpc/store/<store>`: [`StoreRequest`], one variant per
//! request kind. The envelope's `kind` names the variant and its body is the
//! variant's content: [`StoreRequest::from_envelope`] reads one off an
//! envelope, [`StoreRequest::to_wire`] gives the kind and body to send. The
//! bytes on the bus are the ones the store has always taken (`write` with a
//! [`WriteRequest`], `query` with `{"n": …}`).

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::receiver::WriteRequest;
use crate::envelope::{Body, Envelope};

/// Envelope kind of a write.
pub const WRITE: &str = "write";
/// Envelope kind of a query.
pub const QUERY: &str = "query";

/// A request to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreRequest {
    /// A holder's batch under its grant; answered `{duplicate, inserted}`.
    Write(WriteRequest),
    /// The newest rows; answered `{measurements: [...]}`.
    Query(Query),
    /// Any other kind (only ever received): answered with an error.
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

impl StoreRequest {
    /// The request an envelope carries. A kind the store does not know is
    /// [`StoreRequest::Unknown`]; an error means a known kind whose body does
    /// not fit it. The body is parsed once, straight into its type.
    pub fn from_envelope(envelope: &Envelope) -> Result<Self, serde_json::Error> {
        Ok(match envelope.kind.as_str() {
            WRITE => StoreRequest::Write(envelope.body_as()?),
            QUERY => StoreRequest::Query(envelope.body_as()?),
            _ => StoreRequest::Unknown,
        })
    }

    /// The envelope kind and body to send this request with (`Unknown` is
    /// never sent; it goes as an empty `unknown`).
    pub fn to_wire(&self) -> (&'static str, Body) {
        match self {
            StoreRequest::Write(w) => (WRITE, Body::new(w)),
            StoreRequest::Query(q) => (QUERY, Body::new(q)),
            StoreRequest::Unknown => ("unknown", Body::default()),
        }
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
        let envelope = EnvelopeFactory::new("r1").make(kind, None, &body);
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
        assert_eq!((kind, body.as_str()), ("query", r#"{"n":7}"#));
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
