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

pub mod model;
pub mod sql;
pub mod store;
