//! System 2: a message-oriented middleware (the old "Chasqui"): users with
//! unguessable keys, topics (fan-out) and queues (competing consumers),
//! at-least-once delivery with acks and a visibility timeout, durable in
//! SQLite.
//!
//! - [`model`]: kinds, errors, deliveries, and the [`model::Command`]s that
//!   change a store (the unit of the replication log).
//! - [`store`]: the storage trait, the in-memory reference store, and the
//!   conformance suite run on every implementation.
//! - [`sql`]: the SQLite store.
//! - [`engine`]: one thread owning the store, group commit.
//! - [`service`]: the operations by access key (HTTP and RPC share them).
//! - [`http`]: the seed's REST API and the JSON API `/api/v1`.
//! - [`node`]: the `mom` role shell: HTTP, `rpc/mom/<node>`, telemetry.
//! - [`gateway`]: the `mom-gateway` role: the one stable HTTP address,
//!   forwarding to the raft leader over the bus.
//! - [`client`]: a Rust client over MQTT RPC (the CLI uses it).

pub mod client;
pub mod engine;
pub mod gateway;
pub mod http;
pub mod model;
pub mod node;
pub mod service;
pub mod sql;
pub mod store;
