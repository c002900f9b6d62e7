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
//! - [`services`]: one module per system (`echo` so far).
//! - [`status`]: the `distlab-node status` report.
//! - [`bench`]: `distlab-node bench iot` (figures, not tests).
//! - [`cli`]: the `distlab-node` command line.

pub mod bench;
pub mod broker;
pub mod bus;
pub mod cli;
pub mod config;
pub mod envelope;
pub mod liveness;
pub mod presence;
pub mod replica;
pub mod runtime;
pub mod services;
pub mod shim;
pub mod status;
