//! Distlab node library: everything a node process (and the dashboard) stands on.
//!
//! # Layout
//! - [`config`]: the lab file (TOML): cluster settings, nodes and their roles.
//! - [`envelope`]: the one JSON message format, and the topic names.
//! - [`bus`]: the MQTT connection: reconnects, subscriptions, RPC with deadlines.
//! - [`shim`]: the fault shim every message passes (drops by peer).
//! - [`broker`]: the embedded rumqttd broker and a broker probe.
//! - [`presence`]: presence, heartbeats, and the membership state machine.
//! - [`liveness`]: the one rule for "is a peer alive" (heard within a limit).
//! - [`runtime`]: runs one node: data dir, presence, heartbeats, services, shutdown.
//! - [`replica`]: Raft replication of a SQLite store (raft-rs, driven as a
//!   state machine; a deterministic simulator in its tests), shared by the
//!   replicated roles.
//! - [`services`]: one module per system (echo, IoT, MOM, bookstore, lockers).
//! - [`status`]: the `distlab-node status` report.
//! - [`http1`]: a tiny keep-alive HTTP/1.1 client for the load generators.
//! - [`pyjson`]: JSON written as Python's `json.dumps` writes it (the seeds' replies).
//!
//! The `distlab-node` command line and its benchmarks live in the binary
//! (`src/main.rs`, `cli.rs`, `bench/`), behind the default `cli` feature:
//! the library does not need clap or a log subscriber.

pub mod broker;
pub mod bus;
pub mod config;
pub mod credentials;
pub mod envelope;
pub mod front_door;
pub mod http1;
pub mod liveness;
pub mod presence;
pub mod pyjson;
pub mod replica;
pub mod runtime;
pub mod services;
pub mod shim;
pub mod status;
